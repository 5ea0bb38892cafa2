// One WebSocket in the session protocol (`pgws.json`), from opening to close:
// it numbers requests, matches answers to them, and pings. It never reconnects;
// the client makes a new one.

import { Emitter } from "./emitter.js";
import { PgWsError } from "./errors.js";

export const SESSION_PROTOCOL = "pgws.json";

export class Connection extends Emitter {
  #ws;
  #timers;
  #pending = new Map();
  #nextId = 1;
  #pingTimer = null;
  #pongTimer = null;
  #openTimer = null;
  #closed = false;

  /**
   * @param {object} o
   * @param {string} o.url
   * @param {string} o.token
   * @param {typeof WebSocket} o.WebSocket
   * @param {import("./timers.js").Timers} o.timers
   * @param {number} o.connectTimeout  ms to open in
   * @param {number} o.pingInterval  ms between pings (0: none)
   * @param {number} o.pingTimeout  ms to wait for a pong
   */
  constructor({ url, token, WebSocket, timers, connectTimeout, pingInterval, pingTimeout }) {
    super();
    this.#timers = timers;
    this.pingInterval = pingInterval;
    this.pingTimeout = pingTimeout;
    this.opened = false;
    this.#ws = new WebSocket(url, [SESSION_PROTOCOL, "pgws.bearer." + token]);
    this.#openTimer = timers.after(connectTimeout, () => this.close(4000, "Connect timeout"));
    this.#ws.onopen = () => this.#onOpen();
    this.#ws.onmessage = (e) => this.#onMessage(e.data);
    this.#ws.onclose = (e) => this.#end(e.code, e.reason);
    this.#ws.onerror = () => {}; // a close event follows
  }

  #onOpen() {
    this.#timers.clear(this.#openTimer);
    if (this.#ws.protocol !== SESSION_PROTOCOL) {
      // A server without the session protocol: it would take our frames as messages.
      this.close(4000, "No session protocol");
      return;
    }
    this.opened = true;
    this.#schedulePing();
    this.emit("open");
  }

  #onMessage(data) {
    if (typeof data !== "string") return;
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (!frame || typeof frame.type !== "string") return;
    this.#schedulePing();
    if (frame.id !== undefined && this.#pending.has(frame.id)) {
      const { resolve, now } = this.#pending.get(frame.id);
      this.#pending.delete(frame.id);
      // Synchronously: the frames after an answer (a replay after `subscribed`)
      // may be dispatched before any promise callback runs.
      now?.(frame);
      resolve(frame);
      return;
    }
    this.emit("frame", frame);
  }

  /** Any frame resets the ping clock: the socket is known to work. */
  #schedulePing() {
    if (!this.pingInterval || this.#closed) return;
    this.#timers.clear(this.#pingTimer);
    this.#timers.clear(this.#pongTimer);
    this.#pingTimer = this.#timers.after(this.pingInterval, () => {
      this.request({ type: "ping" }).catch(() => {});
      this.#pongTimer = this.#timers.after(this.pingTimeout, () => this.close(4000, "Ping timeout"));
    });
  }

  /**
   * Sends a frame with a fresh id; resolves with the answer carrying it.
   * `now`, if given, is called with the answer before the next frame is read.
   */
  request(frame, now) {
    if (!this.opened || this.#closed) {
      return Promise.reject(new PgWsError("disconnected", "not connected"));
    }
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, now });
      this.#ws.send(JSON.stringify({ ...frame, id }));
    });
  }

  /** Closes the socket; `close` is emitted once it is gone. */
  close(code = 1000, reason = "") {
    if (this.#closed) return;
    try {
      this.#ws.close(code, reason);
    } catch {
      this.#ws.close();
    }
    // Do not wait for the server's answer: the socket may be dead.
    this.#end(code, reason);
  }

  #end(code, reason) {
    if (this.#closed) return;
    this.#closed = true;
    this.#timers.clear(this.#openTimer);
    this.#timers.clear(this.#pingTimer);
    this.#timers.clear(this.#pongTimer);
    this.#ws.onopen = this.#ws.onmessage = this.#ws.onclose = null;
    const lost = new PgWsError("disconnected", `connection closed (${code})`, { closeCode: code });
    for (const { reject } of this.#pending.values()) reject(lost);
    this.#pending.clear();
    this.emit("close", { code, reason: reason ?? "", opened: this.opened });
  }
}
