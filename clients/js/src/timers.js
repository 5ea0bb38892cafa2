// Every timer the client sets goes through one Timers, so close() cancels them all.

export class Timers {
  #handles = new Set();

  /** Runs `fn` after `ms` milliseconds; returns a handle for `clear`. */
  after(ms, fn) {
    const handle = setTimeout(() => {
      this.#handles.delete(handle);
      fn();
    }, Math.max(0, ms));
    this.#handles.add(handle);
    return handle;
  }

  /** Resolves after `ms` milliseconds, or never once `clearAll` ran. */
  sleep(ms) {
    return new Promise((resolve) => this.after(ms, resolve));
  }

  clear(handle) {
    if (handle === undefined || handle === null) return;
    clearTimeout(handle);
    this.#handles.delete(handle);
  }

  clearAll() {
    for (const handle of this.#handles) clearTimeout(handle);
    this.#handles.clear();
  }

  /** Timers pending (for tests). */
  get size() {
    return this.#handles.size;
  }
}
