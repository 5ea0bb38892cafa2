// One channel the application reads: its listeners, its position and the
// ordered hand-over of messages to the application.
//
// The position of a history channel moves only once every `message` listener
// has returned (and a promise it returned has settled): a resume starts after
// what the application has been given, never after what was only received.

import { Emitter } from "./emitter.js";

/** Parses `<epoch>:<offset>`; null when it is not one. */
export function parsePosition(text) {
  if (typeof text !== "string") return null;
  const at = text.lastIndexOf(":");
  if (at <= 0) return null;
  const offset = Number(text.slice(at + 1));
  if (!Number.isSafeInteger(offset) || offset < 0) return null;
  return { epoch: text.slice(0, at), offset };
}

export class Subscription extends Emitter {
  #client;
  #queue = [];
  #draining = false;
  /** The last position the application has been given. */
  #delivered = null;
  /** The last position accepted into the queue (ahead of #delivered). */
  #accepted = null;
  /** The position of the message being handed over now, if any. */
  #inHand = null;

  constructor(client, channel, options) {
    super();
    this.#client = client;
    this.channel = channel;
    /** @type {"subscribing" | "subscribed" | "unsubscribed"} */
    this.state = "subscribing";
    this.history = options.history;
    this.maxPending = options.maxPending;
    const since = options.since === undefined ? null : parsePosition(options.since);
    if (options.since !== undefined && !since) throw new TypeError("since must be <epoch>:<offset>");
    this.#delivered = since;
    this.#accepted = since;
    /** Whether the channel keeps history (told by the option or by a message). */
    this.keepsHistory = since !== null || options.history !== undefined;
    /** How many times it was subscribed (a second one is a resume). */
    this.times = 0;
  }

  /** The last position handed to the application, `<epoch>:<offset>`, or null. */
  get position() {
    const p = this.#delivered;
    return p ? `${p.epoch}:${p.offset}` : null;
  }

  /** Leaves the channel. */
  unsubscribe() {
    this.#client._unsubscribe(this);
  }

  /** What to ask the server for when (re)subscribing. */
  _start() {
    if (this.#delivered) return { since: this.position };
    if (this.history !== undefined) return { history: this.history };
    return {};
  }

  /** Whether a subscribe must first leave the channel (to replay it). */
  _needsReplay() {
    const start = this._start();
    return start.since !== undefined || start.history !== undefined;
  }

  /** The connection is gone: undelivered history messages will be replayed. */
  _disconnected() {
    if (this.keepsHistory) {
      this.#queue = this.#queue.filter((item) => item.kind !== "message" || item.value.offset === undefined);
      this.#accepted = this.#inHand ?? this.#delivered;
    }
    if (this.state === "subscribed") this.state = "subscribing";
  }

  _subscribed(info) {
    this.state = "subscribed";
    this.times += 1;
    this.#push("subscribed", info);
  }

  _ended(reason) {
    this.state = "unsubscribed";
    this.#queue = [];
    this.emit("unsubscribed", { channel: this.channel, reason });
  }

  _error(err) {
    this.emit("error", err);
  }

  /** A message from the server; returns false when the queue is full. */
  _message(msg) {
    if (msg.offset !== undefined && msg.epoch !== undefined) {
      this.keepsHistory = true;
      const last = this.#accepted;
      // A replay or a race may bring what was already taken: never twice.
      if (last && last.epoch === msg.epoch && msg.offset <= last.offset) return true;
      this.#accepted = { epoch: msg.epoch, offset: msg.offset };
    }
    return this.#push("message", msg);
  }

  _gap(gap) {
    this.keepsHistory = true;
    this.#accepted = { epoch: gap.epoch, offset: gap.from - 1 };
    return this.#push("gap", gap);
  }

  #push(kind, value) {
    if (this.#queue.length >= this.maxPending) return false;
    this.#queue.push({ kind, value });
    if (!this.#draining) this.#drain();
    return true;
  }

  /** Hands the queue over in order, waiting for listeners' promises. */
  async #drain() {
    this.#draining = true;
    try {
      while (this.#queue.length > 0 && this.state !== "unsubscribed") {
        const { kind, value } = this.#queue.shift();
        if (kind === "message" && value.offset !== undefined) this.#inHand = { epoch: value.epoch, offset: value.offset };
        const results = this.emit(kind, value, (err) => this.emit("error", err));
        const waits = results.filter((r) => r && typeof r.then === "function");
        if (waits.length > 0) {
          await Promise.allSettled(waits);
        }
        if (kind === "message" && value.offset !== undefined) {
          this.#delivered = { epoch: value.epoch, offset: value.offset };
        } else if (kind === "gap") {
          this.#delivered = { epoch: value.epoch, offset: value.from - 1 };
        }
        this.#inHand = null;
      }
    } finally {
      this.#draining = false;
    }
  }
}
