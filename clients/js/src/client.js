// The client: one session WebSocket (or, read-only, one event stream per
// channel), reconnected with full-jitter backoff, its subscriptions resumed
// from what the application was given, its token renewed in place.

import { Backoff } from "./backoff.js";
import { Connection } from "./connection.js";
import { Emitter } from "./emitter.js";
import { PgWsError } from "./errors.js";
import { PublishQueue } from "./publish-queue.js";
import { Stream, streamUrl } from "./sse.js";
import { Subscription } from "./subscription.js";
import { Timers } from "./timers.js";
import { expiresAt, fetchToken, refreshAt } from "./token.js";

/** Close codes after which reconnecting would fail the same way (PROTOCOL.md §9). */
const FATAL = new Set([1002, 1007, 1009]);
/** Our own close codes (4000–4999 are the application's in RFC 6455). */
const CLIENT_CLOSE = 4000;
const REFRESH_REFUSED = 4001;

const DEFAULTS = {
  transport: "auto",
  fallbackAfter: 3,
  backoff: { base: 500, max: 30000 },
  stableAfter: 5000,
  connectTimeout: 10000,
  pingInterval: 20000,
  pingTimeout: 10000,
  refreshBefore: 30000,
  tokenRetries: 3,
  publishQueue: 100,
  maxPending: 10000,
  maxMessageBytes: 65536,
  maxInFlight: 16,
  probeInterval: 60000,
};

export class PgWs extends Emitter {
  #url;
  #o;
  #timers = new Timers();
  #backoff;
  #subs = new Map();
  #queue;
  #conn = null;
  #streams = new Map();
  #token = null;
  #tokenFetch = null;
  #forceToken = false;
  #failures = 0;
  #retry = null;
  #stable = null;
  #refreshTimer = null;
  #refreshing = false;
  #inFlight = 0;

  /**
   * @param {string} url  the pgws endpoint: `ws(s)://host[:port][/prefix]`
   * @param {object} options  see README.md
   */
  constructor(url, options = {}) {
    super();
    new URL(url); // throws on a bad URL, now rather than at connect
    this.#url = url;
    this.#o = { ...DEFAULTS, ...options, backoff: { ...DEFAULTS.backoff, ...options.backoff } };
    if (typeof this.#o.getToken !== "function" && typeof this.#o.token !== "string") {
      throw new TypeError("give getToken (a function returning a token) or token");
    }
    if (!["auto", "websocket", "sse"].includes(this.#o.transport)) throw new TypeError("transport: auto, websocket or sse");
    this.#token = this.#o.token ?? null;
    this.#backoff = new Backoff({ ...this.#o.backoff, random: this.#o.random });
    this.#queue = new PublishQueue(this.#o.publishQueue);
    /** @type {"idle" | "connecting" | "connected" | "disconnected" | "closed"} */
    this.state = "idle";
    /** @type {"websocket" | "sse"} */
    this.transport = this.#o.transport === "sse" ? "sse" : "websocket";
  }

  /** Starts connecting (subscribe and publish do too). */
  connect() {
    if (this.state === "closed") throw new PgWsError("closed", "client closed");
    if (this.state !== "idle") return;
    this.#attempt();
  }

  /** The subscription of `channel` (made on the first call). */
  subscribe(channel, options = {}) {
    if (this.state === "closed") throw new PgWsError("closed", "client closed");
    if (typeof channel !== "string" || channel === "") throw new TypeError("channel must be a non-empty string");
    const known = this.#subs.get(channel);
    if (known) return known;
    const sub = new Subscription(this, channel, { maxPending: this.#o.maxPending, ...options });
    this.#subs.set(channel, sub);
    if (this.state === "idle") this.#attempt();
    else if (this.transport === "sse") this.#openStream(sub);
    else if (this.#conn?.opened) this.#subscribeOn(this.#conn, sub);
    return sub;
  }

  /** The subscription of `channel`, if any. */
  subscription(channel) {
    return this.#subs.get(channel);
  }

  /**
   * Publishes `payload` (a string as it is, anything else as JSON) to
   * `channel`. Resolves once the server acked the commit; rejects with a
   * PgWsError whose `code` is the server's or the client's.
   */
  publish(channel, payload, { queue = this.#o.publishQueue > 0 } = {}) {
    if (this.state === "closed") return Promise.reject(new PgWsError("closed", "client closed"));
    if (this.transport === "sse") return Promise.reject(new PgWsError("read_only", "event streams cannot publish"));
    const frame = { type: "publish", channel, payload };
    let text;
    try {
      text = payload === undefined ? undefined : JSON.stringify(frame);
    } catch (err) {
      text = undefined;
    }
    if (text === undefined) return Promise.reject(new PgWsError("bad_request", "the payload is not JSON (undefined, a cycle, a BigInt)"));
    // pgws closes a socket with 1009 on a frame over its limit: refuse it here.
    const size = new TextEncoder().encode(text).length + 24;
    if (size > this.#o.maxMessageBytes) {
      return Promise.reject(new PgWsError("too_big", `publish of ${size} bytes over maxMessageBytes`));
    }
    return new Promise((resolve, reject) => {
      const item = { frame, resolve, reject };
      const open = this.#conn?.opened;
      if (open && this.#inFlight < this.#o.maxInFlight && this.#queue.length === 0) return this.#send(this.#conn, item);
      if (!open && !queue) return reject(new PgWsError("disconnected", "not connected"));
      if (!this.#queue.push(item)) return reject(new PgWsError("queue_full", "publish queue full"));
      if (this.state === "idle") this.#attempt();
    });
  }

  /** Closes the client for good: every timer stops, waiting publishes reject. */
  close() {
    if (this.state === "closed") return;
    this.#timers.clearAll();
    const conn = this.#conn;
    this.#conn = null;
    conn?.close(1000, "");
    for (const stream of this.#streams.values()) stream.close();
    this.#streams.clear();
    this.#queue.rejectAll("closed", "client closed");
    for (const sub of this.#subs.values()) sub._ended("closed");
    this.#subs.clear();
    this.#setState("closed");
  }

  /** Called by Subscription.unsubscribe(). */
  _unsubscribe(sub) {
    if (this.#subs.get(sub.channel) !== sub) return;
    this.#subs.delete(sub.channel);
    this.#streams.get(sub.channel)?.close();
    this.#streams.delete(sub.channel);
    if (this.#conn?.opened) this.#conn.request({ type: "unsubscribe", channel: sub.channel }).catch(() => {});
    sub._ended("unsubscribed");
  }

  #setState(state) {
    if (this.state === state) return;
    const previous = this.state;
    this.state = state;
    this.emit("state", { state, previous, transport: this.transport });
  }

  #live() {
    return this.state !== "closed";
  }

  // ---- tokens -------------------------------------------------------------

  /** A token to connect with: the current one while it is fresh, else a new one. */
  #connectToken() {
    const exp = expiresAt(this.#token);
    const fresh = this.#token && (exp === null || exp - Date.now() > Math.min(this.#o.refreshBefore, 5000));
    if (fresh && (!this.#forceToken || !this.#o.getToken)) return Promise.resolve(this.#token);
    if (!this.#o.getToken) return Promise.reject(new PgWsError("token_expired", "the token expired and there is no getToken"));
    return this.#newToken();
  }

  /** One getToken() round (with its retries) at a time, shared by all who ask. */
  #newToken() {
    this.#tokenFetch ??= fetchToken(this.#o.getToken, {
      tries: this.#o.tokenRetries,
      delay: () => new Backoff(this.#o.backoff).next() + this.#o.backoff.base,
      sleep: (ms) => this.#timers.sleep(ms),
      live: () => this.#live(),
    }).finally(() => {
      this.#tokenFetch = null;
    });
    return this.#tokenFetch;
  }

  #scheduleRefresh(conn) {
    this.#timers.clear(this.#refreshTimer);
    const at = refreshAt(this.#token, this.#o.refreshBefore);
    if (at === null) return;
    this.#refreshTimer = this.#timers.after(at - Date.now(), () => this.#refresh(conn));
  }

  /** Renews the token in place; a refused one ends the socket for a new one. */
  async #refresh(conn) {
    if (this.#refreshing || conn !== this.#conn) return;
    this.#refreshing = true;
    try {
      const old = expiresAt(this.#token);
      let token;
      try {
        token = await this.#newToken();
      } catch (err) {
        // The socket goes on with its token and closes with 3001 at its exp.
        this.emit("error", new PgWsError("token", `getToken failed: ${err?.message ?? err}`));
        return;
      }
      if (conn !== this.#conn || !conn.opened) {
        this.#token = token;
        return;
      }
      const answer = await conn.request({ type: "refresh", token }).catch(() => null);
      if (!answer) return;
      if (answer.type === "refreshed") {
        this.#token = token;
        this.emit("refreshed", { exp: answer.exp ?? null });
        const exp = expiresAt(token);
        if (exp !== null && (old === null || exp > old)) this.#scheduleRefresh(conn);
      } else {
        this.emit("error", new PgWsError(answer.code ?? "unauthorized", `refresh refused: ${answer.message ?? ""}`));
        this.#forceToken = true;
        conn.close(REFRESH_REFUSED, "Refresh refused");
      }
    } finally {
      this.#refreshing = false;
    }
  }

  // ---- connecting ---------------------------------------------------------

  async #attempt() {
    this.#retry = null;
    if (!this.#live()) return;
    this.#setState("connecting");
    let token;
    try {
      token = await this.#connectToken();
    } catch (err) {
      if (!this.#live()) return;
      if (err instanceof PgWsError && err.code === "token_expired") {
        // A fixed token that has expired can never connect again.
        this.emit("error", err);
        this.close();
        return;
      }
      this.emit("error", new PgWsError("token", `getToken failed: ${err?.message ?? err}`));
      this.#scheduleRetry(this.#backoff.next());
      return;
    }
    if (!this.#live()) return;
    this.#token = token;
    this.#forceToken = false;
    if (this.transport === "sse") {
      for (const sub of this.#subs.values()) if (!this.#streams.has(sub.channel)) this.#openStream(sub, token);
      if (this.#subs.size === 0) this.#setState("connected");
      return;
    }
    let conn;
    try {
      conn = new Connection({
        url: this.#url,
        token,
        WebSocket: this.#o.WebSocket ?? globalThis.WebSocket,
        timers: this.#timers,
        connectTimeout: this.#o.connectTimeout,
        pingInterval: this.#o.pingInterval,
        pingTimeout: this.#o.pingTimeout,
      });
    } catch (err) {
      // No WebSocket here, or one that refuses the URL: nothing to retry.
      this.emit("error", new PgWsError("fatal", `cannot open a WebSocket: ${err?.message ?? err}`));
      this.close();
      return;
    }
    this.#conn = conn;
    conn.on("open", () => this.#onOpen(conn));
    conn.on("frame", (frame) => this.#onFrame(conn, frame));
    conn.on("close", (info) => this.#onClose(conn, info));
  }

  #scheduleRetry(delay) {
    if (!this.#live() || this.#retry) return;
    this.#retry = this.#timers.after(delay, () => this.#attempt());
  }

  #onOpen(conn) {
    this.#failures = 0;
    this.#stable = this.#timers.after(this.#o.stableAfter, () => this.#backoff.reset());
    this.#setState("connected");
    for (const sub of this.#subs.values()) this.#subscribeOn(conn, sub);
    this.#pump(conn);
    this.#scheduleRefresh(conn);
  }

  #subscribeOn(conn, sub) {
    const start = sub._start();
    sub.replaying = sub._needsReplay();
    sub.live = false;
    // A channel the socket started with would answer `subscribed` and replay
    // nothing: leave it first (harmless when it was not joined).
    if (sub.replaying) conn.request({ type: "unsubscribe", channel: sub.channel }).catch(() => {});
    const onAnswer = (answer) => {
      if (conn !== this.#conn || this.#subs.get(sub.channel) !== sub) return;
      if (answer.type === "subscribed") {
        sub.live = true;
        const resumed = sub.times > 0;
        sub._subscribed({ channel: sub.channel, resumed, mayHaveMissed: resumed && !sub.keepsHistory, position: sub.position });
      } else {
        this.#subscribeFailed(conn, sub, answer);
      }
    };
    // The socket may close first: the next one subscribes again.
    conn.request({ type: "subscribe", channel: sub.channel, ...start }, onAnswer).catch(() => {});
  }

  #subscribeFailed(conn, sub, answer) {
    const err = new PgWsError(answer.code ?? "error", answer.message ?? "subscribe failed");
    sub._error(err);
    if (answer.code === "unavailable") {
      this.#timers.after(this.#backoff.next(), () => {
        if (conn === this.#conn && conn.opened && this.#subs.get(sub.channel) === sub) this.#subscribeOn(conn, sub);
      });
      return;
    }
    this.#subs.delete(sub.channel);
    sub._ended(err.code);
  }

  /** Sends waiting publishes while fewer than maxInFlight are unanswered. */
  #pump(conn) {
    while (conn === this.#conn && conn.opened && this.#inFlight < this.#o.maxInFlight) {
      const item = this.#queue.shift();
      if (!item) return;
      this.#send(conn, item);
    }
  }

  #send(conn, item) {
    this.#inFlight += 1;
    conn
      .request(item.frame)
      .then((answer) => {
        if (answer.type === "ack") item.resolve();
        else item.reject(new PgWsError(answer.code ?? "error", answer.message ?? "publish failed"));
      }, item.reject) // lost with the socket: its outcome is unknown, it is not sent again
      .finally(() => {
        this.#inFlight -= 1;
        if (this.#conn) this.#pump(this.#conn);
      });
  }

  #onFrame(conn, frame) {
    const sub = typeof frame.channel === "string" ? this.#subs.get(frame.channel) : undefined;
    switch (frame.type) {
      case "message": {
        const msg = { channel: frame.channel, payload: frame.payload };
        if (frame.epoch !== undefined) Object.assign(msg, { epoch: frame.epoch, offset: frame.offset });
        if (!sub) return void this.emit("message", msg);
        // Until its `subscribed`, a replaying channel's messages come again after it.
        if (sub.replaying && !sub.live) return;
        if (!sub._message(msg)) conn.close(CLIENT_CLOSE, "Client queue full");
        return;
      }
      case "gap":
        if (sub && sub.live && !sub._gap({ channel: frame.channel, epoch: frame.epoch, from: frame.from })) {
          conn.close(CLIENT_CLOSE, "Client queue full");
        }
        return;
      case "unsubscribed":
        if (sub) {
          this.#subs.delete(sub.channel);
          sub._ended(frame.reason ?? "unsubscribed");
        }
        return;
      case "expiring": {
        // Not before half the token's life: a server whose notice window is
        // longer than our tokens live would otherwise make us renew in a loop.
        const half = refreshAt(this.#token, Infinity);
        this.#timers.clear(this.#refreshTimer);
        this.#refreshTimer = this.#timers.after(half === null ? 0 : half - Date.now(), () => this.#refresh(conn));
        return;
      }
      case "error":
        this.emit("error", new PgWsError(frame.code ?? "error", frame.message ?? ""));
        return;
      default:
        return;
    }
  }

  #onClose(conn, { code, reason, opened }) {
    if (conn !== this.#conn) return;
    this.#conn = null;
    this.#timers.clear(this.#refreshTimer);
    this.#timers.clear(this.#stable);
    for (const sub of this.#subs.values()) sub._disconnected();
    if (!this.#live()) return;
    if (FATAL.has(code)) {
      this.emit("error", new PgWsError("fatal", `closed with ${code} ${reason}: not retried`, { closeCode: code }));
      this.close();
      return;
    }
    if (!opened) {
      this.#failures += 1;
      this.#forceToken = true; // a refusal may have been the token's
    }
    if (code === 3001) this.#forceToken = true;
    this.#setState("disconnected");
    if (this.#o.transport === "auto" && this.#failures >= this.#o.fallbackAfter) {
      this.#fallBack();
      return;
    }
    // After a working socket the first retry is within one base delay.
    const delay = opened && (code === 3001 || code === REFRESH_REFUSED) ? Math.floor(this.#random() * this.#o.backoff.base) : this.#backoff.next();
    this.#scheduleRetry(delay);
  }

  #random() {
    return (this.#o.random ?? Math.random)();
  }

  // ---- event streams ------------------------------------------------------

  /** WebSockets keep failing: read over event streams from now on. */
  #fallBack() {
    this.transport = "sse";
    this.#queue.rejectAll("read_only", "fell back to event streams, which cannot publish");
    this.emit("fallback", { transport: "sse", failures: this.#failures });
    this.#backoff.reset();
    this.#scheduleRetry(0);
    this.#scheduleProbe();
  }

  /** While on event streams, tries a WebSocket now and then (the server may just have been down). */
  #scheduleProbe() {
    if (!this.#live() || !this.#o.probeInterval) return;
    this.#timers.after(this.#o.probeInterval, () => this.#probe());
  }

  #probe() {
    if (!this.#live() || this.transport !== "sse" || !this.#token) return;
    let conn;
    try {
      conn = new Connection({
        url: this.#url,
        token: this.#token,
        WebSocket: this.#o.WebSocket ?? globalThis.WebSocket,
        timers: this.#timers,
        connectTimeout: this.#o.connectTimeout,
        pingInterval: this.#o.pingInterval,
        pingTimeout: this.#o.pingTimeout,
      });
    } catch {
      return;
    }
    conn.on("open", () => this.#switchBack(conn));
    conn.on("frame", (frame) => this.#onFrame(conn, frame));
    conn.on("close", (info) => {
      if (this.#conn === conn) this.#onClose(conn, info);
      else this.#scheduleProbe();
    });
  }

  /** A WebSocket works again: the streams give way to it, each resuming from its position. */
  #switchBack(conn) {
    if (!this.#live() || this.transport !== "sse") return conn.close(1000, "");
    for (const [channel, stream] of this.#streams) {
      stream.close();
      this.#subs.get(channel)?._disconnected();
    }
    this.#streams.clear();
    this.transport = "websocket";
    this.#failures = 0;
    this.#timers.clear(this.#retry);
    this.#retry = null;
    this.#conn = conn;
    this.emit("fallback", { transport: "websocket", failures: 0 });
    this.#onOpen(conn);
  }

  async #openStream(sub, token) {
    if (!token) {
      try {
        token = await this.#connectToken();
      } catch (err) {
        this.emit("error", new PgWsError("token", `getToken failed: ${err?.message ?? err}`));
        return this.#streamRetry(sub);
      }
      this.#token = token;
      this.#forceToken = false;
    }
    if (!this.#live() || this.#subs.get(sub.channel) !== sub || this.#streams.has(sub.channel)) return;
    let stream;
    try {
      stream = new Stream({
        url: streamUrl(this.#url, sub.channel, token, sub._start()),
        EventSource: this.#o.EventSource ?? globalThis.EventSource,
        timers: this.#timers,
        connectTimeout: this.#o.connectTimeout,
      });
    } catch (err) {
      this.emit("error", new PgWsError("fatal", `cannot open an event stream: ${err?.message ?? err}`));
      this.close();
      return;
    }
    this.#streams.set(sub.channel, stream);
    stream.on("open", () => {
      sub.live = true;
      const resumed = sub.times > 0;
      sub._subscribed({ channel: sub.channel, resumed, mayHaveMissed: resumed && !sub.keepsHistory, position: sub.position });
      this.#stable = this.#timers.after(this.#o.stableAfter, () => this.#backoff.reset());
      if ([...this.#streams.values()].every((s) => s.opened)) this.#setState("connected");
    });
    stream.on("message", (m) => {
      if (!sub._message({ channel: sub.channel, ...m })) stream.close(), this.#streamClosed(sub, stream, { code: CLIENT_CLOSE, opened: true });
    });
    stream.on("gap", (g) => sub._gap({ channel: sub.channel, ...g }));
    stream.on("close", (info) => this.#streamClosed(sub, stream, info));
  }

  #streamClosed(sub, stream, { code, opened }) {
    if (this.#streams.get(sub.channel) !== stream) return;
    this.#streams.delete(sub.channel);
    sub._disconnected();
    if (!this.#live()) return;
    if (!opened || code === 3001) this.#forceToken = true;
    this.#setState("disconnected");
    this.#streamRetry(sub);
  }

  #streamRetry(sub) {
    this.#timers.after(this.#backoff.next(), () => {
      if (this.#live() && this.transport === "sse" && this.#subs.get(sub.channel) === sub) this.#openStream(sub);
    });
  }
}
