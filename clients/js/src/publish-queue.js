// Publishes made while no socket is open (or while `maxInFlight` are already
// unanswered on it) wait here, bounded, in order. A
// publish leaves the queue once, when it is written; it is never written again
// (after a lost connection its outcome is unknown and it is rejected instead).

import { PgWsError } from "./errors.js";

export class PublishQueue {
  #items = [];

  /** @param {number} limit  publishes that may wait; 0 rejects at once */
  constructor(limit) {
    this.limit = limit;
  }

  get length() {
    return this.#items.length;
  }

  /** Queues a publish; returns false when the queue is full. */
  push(item) {
    if (this.#items.length >= this.limit) return false;
    this.#items.push(item);
    return true;
  }

  /** Takes the oldest waiting publish, if any. */
  shift() {
    return this.#items.shift();
  }

  /** Takes every waiting publish, oldest first. */
  drain() {
    const items = this.#items;
    this.#items = [];
    return items;
  }

  /** Rejects every waiting publish with `code`. */
  rejectAll(code, message) {
    for (const item of this.drain()) item.reject(new PgWsError(code, message));
  }
}
