// One event stream for one read-only subscription (PROTOCOL.md §16), opened on
// `/<channel>/<jwt>` with the subscription's delivered position as `since=`
// (what `Last-Event-ID` would carry, but from what the application has been
// given rather than what the browser last received). It never reconnects by
// itself: the client opens a new one with its own backoff and token.

import { Emitter } from "./emitter.js";
import { parsePosition } from "./subscription.js";

/** The HTTP(S) URL of a channel's stream under a ws(s):// or http(s):// base. */
export function streamUrl(base, channel, token, start) {
  const url = new URL(base);
  url.protocol = url.protocol === "wss:" ? "https:" : url.protocol === "ws:" ? "http:" : url.protocol;
  const prefix = url.pathname.replace(/\/+$/, "");
  url.pathname = `${prefix}/${encodeURIComponent(channel)}/${token}`;
  url.search = "";
  if (start.since !== undefined) url.searchParams.set("since", start.since);
  else if (start.history !== undefined) url.searchParams.set("history", String(start.history));
  return url.toString();
}

export class Stream extends Emitter {
  #es;
  #timers;
  #openTimer;
  #closed = false;

  constructor({ url, EventSource, timers, connectTimeout }) {
    super();
    this.#timers = timers;
    this.opened = false;
    this.#es = new EventSource(url);
    this.#openTimer = timers.after(connectTimeout, () => this.#end({ code: 4000, reason: "Connect timeout" }));
    this.#es.onopen = () => {
      this.#timers.clear(this.#openTimer);
      this.opened = true;
      this.emit("open");
    };
    this.#es.onmessage = (e) => {
      const at = parsePosition(e.lastEventId);
      this.emit("message", at ? { payload: e.data, epoch: at.epoch, offset: at.offset } : { payload: e.data });
    };
    this.#es.addEventListener("gap", (e) => {
      try {
        const gap = JSON.parse(e.data);
        this.emit("gap", { epoch: gap.epoch, from: gap.from });
      } catch {
        /* not a gap pgws wrote */
      }
    });
    this.#es.addEventListener("close", (e) => {
      let info = { code: 1006, reason: "" };
      try {
        info = JSON.parse(e.data);
      } catch {
        /* keep 1006 */
      }
      this.#end(info);
    });
    // A refusal or a lost connection: the client decides what comes next.
    this.#es.onerror = () => this.#end({ code: 1006, reason: "Stream error" });
  }

  close() {
    this.#end({ code: 1000, reason: "" }, true);
  }

  #end(info, quiet = false) {
    if (this.#closed) return;
    this.#closed = true;
    this.#timers.clear(this.#openTimer);
    this.#es.onopen = this.#es.onmessage = this.#es.onerror = null;
    this.#es.close();
    if (!quiet) this.emit("close", { ...info, opened: this.opened });
  }
}
