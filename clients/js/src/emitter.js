// A small typed event emitter: listeners per event name, in the order added.

export class Emitter {
  #listeners = new Map();

  /** Adds `fn` for `event`; returns a function that removes it. */
  on(event, fn) {
    if (typeof fn !== "function") throw new TypeError("listener must be a function");
    let set = this.#listeners.get(event);
    if (!set) this.#listeners.set(event, (set = new Set()));
    set.add(fn);
    return () => this.off(event, fn);
  }

  /** Adds `fn` for the next `event` only. */
  once(event, fn) {
    const off = this.on(event, (...args) => {
      off();
      return fn(...args);
    });
    return off;
  }

  /** Removes `fn` (or, without it, every listener of `event`). */
  off(event, fn) {
    if (fn === undefined) this.#listeners.delete(event);
    else this.#listeners.get(event)?.delete(fn);
  }

  /** Whether `event` has a listener. */
  listens(event) {
    return (this.#listeners.get(event)?.size ?? 0) > 0;
  }

  /**
   * Calls every listener of `event` with `value`. Returns what they returned
   * (so a caller may wait for promises); a listener that throws is reported
   * through `onThrow`, and the others still run.
   */
  emit(event, value, onThrow) {
    const results = [];
    for (const fn of [...(this.#listeners.get(event) ?? [])]) {
      try {
        results.push(fn(value));
      } catch (err) {
        if (onThrow) onThrow(err);
        else queueMicrotask(() => { throw err; });
      }
    }
    return results;
  }
}
