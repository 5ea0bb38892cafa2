// Full-jitter exponential backoff (AWS architecture blog, "Exponential Backoff
// and Jitter"): the n-th retry waits a uniform random time in
// [0, min(max, base * 2^n)], so clients that lost the server together come back
// spread over the whole window instead of all at once.

export class Backoff {
  /**
   * @param {{base?: number, max?: number, random?: () => number}} [options]
   *   base and max in milliseconds (defaults 500 and 30000).
   */
  constructor({ base = 500, max = 30000, random = Math.random } = {}) {
    if (!(base > 0) || !(max >= base)) throw new RangeError("backoff needs 0 < base <= max");
    this.base = base;
    this.max = max;
    this.random = random;
    this.attempt = 0;
  }

  /** The delay before the next attempt, in milliseconds; counts the attempt. */
  next() {
    const ceiling = Math.min(this.max, this.base * 2 ** Math.min(this.attempt, 30));
    this.attempt += 1;
    return Math.floor(this.random() * ceiling);
  }

  reset() {
    this.attempt = 0;
  }
}
