// pgws chat: plain JavaScript, no build step, no third-party code.
//
// The page connects to the server that served it (ws: or wss: to match the page),
// to `<prefix>/<channel>`, offering the subprotocols `pgws` and `pgws.bearer.<jwt>`:
// the token never appears in a URL. Settings may be prefilled from the address:
// `#token=…&channel=…&meta=…&prefix=…` (or the same as a query string).
"use strict";

(function () {
  // ---------------------------------------------------------------------------
  // Close codes in words (wire contract §6, plus the codes browsers report)
  // ---------------------------------------------------------------------------

  const CLOSE_WORDS = {
    1000: "The connection was closed normally.",
    1001: "The server is shutting down or restarting.",
    1005: "The connection was closed without a reason.",
    1006: "The connection was lost: a network problem, or the server stopped abruptly.",
    1007: "A message was not valid UTF-8 text, so the server closed the connection.",
    1008: "The server closed the connection: this was not allowed.",
    1009: "The message was too big: with its envelope a NOTIFY must stay under 8000 bytes.",
    1011: "The connection stopped answering the server's pings.",
    1012: "The server lost its connection to PostgreSQL and is reconnecting.",
    1013: "The database was unavailable, so the message could not be sent.",
    3001: "The token expired. Get a new token to go on.",
  };

  // The 1008 reasons of §6, which say more than the code.
  const REASON_WORDS = {
    "Write not allowed": "This token may only read (mode r), so sending closed the connection.",
    "Slow consumer": "Messages came faster than this page could take them, so the server closed the connection.",
  };

  // Closes after which trying again makes sense (and messages may have been missed).
  const RECONNECT_CODES = new Set([1001, 1006, 1011, 1012, 1013]);
  const BACKOFF_START_MS = 1000;
  const BACKOFF_MAX_MS = 30000;
  const MAX_FAILED_RETRIES = 10;
  const NOTIFY_LIMIT = 8000;
  const CHANNEL_LIMIT = 63;
  // Kept messages shown on connecting, when the channel keeps history (§15).
  const HISTORY_ON_LOAD = 50;

  function closeInWords(code, reason) {
    let words = CLOSE_WORDS[code] || "The connection closed.";
    for (const [start, text] of Object.entries(REASON_WORDS)) {
      if (reason && reason.startsWith(start)) words = text;
    }
    const detail = reason ? `code ${code}: ${reason}` : `code ${code}`;
    return `${words} (${detail})`;
  }

  // ---------------------------------------------------------------------------
  // Small helpers
  // ---------------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);
  const utf8Length = (s) => new TextEncoder().encode(s).length;
  const timeOf = (d) => d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });

  /** The claims of a JWT, without checking it (the server does), or null. */
  function claimsOf(token) {
    const parts = token.split(".");
    if (parts.length !== 3) return null;
    try {
      const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
      const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
      const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
      const claims = JSON.parse(new TextDecoder().decode(bytes));
      return claims && typeof claims === "object" && !Array.isArray(claims) ? claims : null;
    } catch (_) {
      return null;
    }
  }

  const looksLikeJwt = (t) => /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(t);

  /**
   * The channels a token claims (`channel` first, then `channels`): null for "any"
   * (neither claim), "invalid" for a claim of another type, which the server refuses.
   */
  function claimedChannels(claims) {
    const hasChannel = "channel" in claims;
    const hasChannels = "channels" in claims;
    if (!hasChannel && !hasChannels) return null;
    if (hasChannel && typeof claims.channel !== "string") return "invalid";
    const items = hasChannels ? claims.channels : [];
    if (!Array.isArray(items) || !items.every((c) => typeof c === "string")) return "invalid";
    const list = hasChannel ? [claims.channel] : [];
    for (const c of items) if (!list.includes(c)) list.push(c);
    return list;
  }

  /** A display name from claims: the usual identity claims, else "someone". */
  function nameOf(claims) {
    if (!claims || typeof claims !== "object") return "someone";
    for (const key of ["name", "preferred_username", "nickname", "email", "sub", "user", "username", "role"]) {
      if (typeof claims[key] === "string" && claims[key]) return claims[key];
    }
    return "someone";
  }

  /** Claims compared without the per-message `message_delivered_at`. */
  function sameClaims(a, b) {
    const norm = (c) => {
      const copy = Object.assign({}, c);
      delete copy.message_delivered_at;
      return JSON.stringify(Object.keys(copy).sort().map((k) => [k, copy[k]]));
    };
    return !!a && !!b && norm(a) === norm(b);
  }

  /** What the token says about itself, in words; also why the server may refuse it. */
  function describeToken(token, channel) {
    const problems = [];
    const notes = [];
    if (!token) return { problems: ["Paste a token first."], notes, claims: null };
    if (!looksLikeJwt(token)) {
      problems.push("This is not a JWT: a token is three base64url parts joined by dots.");
      return { problems, notes, claims: null };
    }
    const claims = claimsOf(token);
    if (!claims) {
      problems.push("The token's middle part is not a JSON object of claims.");
      return { problems, notes, claims: null };
    }
    const now = Date.now() / 1000;
    const mode = claims.mode;
    if (typeof mode !== "string") {
      problems.push("The token has no mode claim (r, w or rw), so the server refuses it (403 Missing mode).");
    } else if (!["r", "w", "rw"].includes(mode)) {
      problems.push(`The token's mode "${mode}" is not r, w or rw (403 Invalid mode).`);
    } else {
      notes.push({ r: "mode r: read only", w: "mode w: write only", rw: "mode rw: read and write" }[mode]);
    }
    const channels = claimedChannels(claims);
    if (channels === "invalid") {
      problems.push("The token's channel claim must be a string and its channels claim an array of strings (403 Invalid channel claim).");
    } else if (channels === null) {
      notes.push("any channel");
    } else if (!channels.length) {
      problems.push("The token's channels list is empty: it grants no channel (403 No allowed channels).");
    } else {
      notes.push(`channels: ${channels.join(", ")}`);
      if (channel && !channels.includes(channel)) {
        problems.push(`The token does not grant the channel "${channel}" (403 No allowed channels); it grants ${channels.join(", ")}.`);
      }
    }
    if (typeof claims.exp === "number") {
      const at = new Date(claims.exp * 1000);
      if (now >= claims.exp) problems.push(`The token expired at ${at.toLocaleString()} (401 Token expired).`);
      else notes.push(`expires ${at.toLocaleString()}`);
    } else {
      notes.push("no expiry");
    }
    if (typeof claims.nbf === "number" && now < claims.nbf) {
      problems.push(`The token is not valid before ${new Date(claims.nbf * 1000).toLocaleString()} (401 Token not yet valid).`);
    }
    return { problems, notes, claims };
  }

  function channelProblem(name, what) {
    if (!name) return `Enter a ${what}.`;
    if (utf8Length(name) > CHANNEL_LIMIT) return `The ${what} is longer than ${CHANNEL_LIMIT} bytes.`;
    if (name.includes("\0")) return `The ${what} contains a NUL character.`;
    return null;
  }

  // ---------------------------------------------------------------------------
  // One socket that reconnects with backoff
  // ---------------------------------------------------------------------------

  /** A positioned frame of a history channel (§15), a Gap frame, or null. */
  function positioned(data) {
    if (!data.startsWith("{")) return null;
    let v;
    try {
      v = JSON.parse(data);
    } catch (_) {
      return null;
    }
    if (!v || typeof v !== "object" || typeof v.epoch !== "string") return null;
    if (v.event === "Gap" && Number.isInteger(v.from)) return v;
    if (Number.isInteger(v.offset) && typeof v.payload === "string") return v;
    return null;
  }

  /**
   * A socket to one channel. `handlers`: onStatus(state, text), onMessage(text),
   * onReopen(since), onOpen(), onGap(). With `history`, it asks for the last
   * `history` kept messages, then resumes after the last position it got (§15); a
   * server without history ignores both.
   */
  class Channel {
    constructor(url, token, handlers, history) {
      this.url = url;
      this.token = token;
      this.h = handlers;
      this.history = history || 0;
      // The last {epoch, offset} received; `positioned` once any frame had one.
      this.position = null;
      this.positioned = false;
      this.ws = null;
      this.everOpened = false;
      this.failedRetries = 0;
      this.backoff = BACKOFF_START_MS;
      this.timer = null;
      this.stopped = false;
      this.lostAt = null;
    }

    start() {
      this.stopped = false;
      this.open();
    }

    open() {
      this.timer = null;
      let ws;
      try {
        ws = new WebSocket(this.urlNow(), ["pgws", "pgws.bearer." + this.token]);
      } catch (e) {
        this.h.onStatus("error", `Cannot open a WebSocket: ${e.message}`);
        return;
      }
      this.ws = ws;
      let opened = false;
      this.h.onStatus("connecting", this.everOpened ? "Reconnecting…" : "Connecting…");
      ws.onopen = () => {
        opened = true;
        const wasLost = this.lostAt;
        this.everOpened = true;
        this.failedRetries = 0;
        this.backoff = BACKOFF_START_MS;
        this.lostAt = null;
        this.h.onOpen();
        // A history channel replays what was missed: nothing to warn about.
        if (wasLost && !this.positioned) this.h.onReopen(wasLost);
      };
      ws.onmessage = (ev) => {
        if (typeof ev.data === "string") this.frame(ev.data);
      };
      ws.onclose = (ev) => {
        if (this.ws === ws) this.ws = null;
        if (this.stopped) return;
        if (opened) this.closedAfterOpen(ev.code, ev.reason);
        else this.failedToOpen();
      };
    }

    /** The URL with `since=` after a position, else `history=`. */
    urlNow() {
      if (!this.history) return this.url;
      const query = this.position
        ? `since=${encodeURIComponent(this.position.epoch)}:${this.position.offset}`
        : `history=${this.history}`;
      return `${this.url}?${query}`;
    }

    /** Unwraps positioned frames, dropping one already shown. */
    frame(data) {
      const p = this.history ? positioned(data) : null;
      if (!p) {
        // Such a socket gets a plain NOTIFY as {"channel","payload"}.
        if (this.positioned) {
          try {
            const v = JSON.parse(data);
            const keys = v && typeof v === "object" ? Object.keys(v).sort().join(",") : "";
            if (keys === "channel,payload" && typeof v.payload === "string") {
              this.h.onMessage(v.payload);
              return;
            }
          } catch (_) {
            /* not JSON: shown as it is */
          }
        }
        this.h.onMessage(data);
        return;
      }
      this.positioned = true;
      if (p.event === "Gap") {
        this.position = { epoch: p.epoch, offset: p.from - 1 };
        this.h.onGap();
        return;
      }
      const last = this.position;
      if (last && last.epoch === p.epoch && p.offset <= last.offset) return;
      this.position = { epoch: p.epoch, offset: p.offset };
      this.h.onMessage(p.payload);
    }

    closedAfterOpen(code, reason) {
      const words = closeInWords(code, reason);
      if (!RECONNECT_CODES.has(code)) {
        this.h.onStatus("closed", words);
        this.h.onEnd();
        return;
      }
      this.lostAt = this.lostAt || new Date();
      this.retry(`${words} Reconnecting`);
    }

    failedToOpen() {
      if (this.everOpened && this.failedRetries < MAX_FAILED_RETRIES) {
        this.failedRetries += 1;
        this.retry("Cannot reconnect yet. Trying again");
        return;
      }
      // Browsers hide the HTTP answer to a refused handshake: explain what we can.
      this.h.onRefused(this.everOpened);
    }

    retry(prefix) {
      const delay = Math.round(this.backoff * (0.75 + Math.random() * 0.5));
      this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX_MS);
      const seconds = Math.max(1, Math.round(delay / 1000));
      const missed = this.positioned ? "" : " Messages sent while disconnected may have been missed.";
      this.h.onStatus("reconnecting", `${prefix} in ${seconds} s.${missed}`);
      this.timer = setTimeout(() => this.open(), delay);
    }

    send(text) {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
      this.ws.send(text);
      return true;
    }

    stop() {
      this.stopped = true;
      if (this.timer) clearTimeout(this.timer);
      this.timer = null;
      if (this.ws) this.ws.close(1000, "Bye");
      this.ws = null;
    }
  }

  // ---------------------------------------------------------------------------
  // The page
  // ---------------------------------------------------------------------------

  const el = {
    connection: $("connection"),
    connectionSummary: $("connection-summary"),
    form: $("connect-form"),
    channel: $("channel"),
    token: $("token"),
    showToken: $("show-token"),
    tokenInfo: $("token-info"),
    meta: $("meta"),
    prefix: $("prefix"),
    connect: $("connect"),
    disconnect: $("disconnect"),
    status: $("status"),
    statusText: $("status-text"),
    channelName: $("channel-name"),
    messages: $("messages"),
    empty: $("empty"),
    sendForm: $("send-form"),
    message: $("message"),
    send: $("send"),
    sendHelp: $("send-help"),
    metaPanel: $("meta-panel"),
    metaStatus: $("meta-status"),
    metaStatusText: $("meta-status-text"),
    metaLog: $("meta-log"),
  };

  const TOKEN_HELP = el.tokenInfo.textContent;
  const state = { main: null, meta: null, token: "", claims: null, channel: "", pending: [] };

  function setStatus(node, textNode, kind, text) {
    node.dataset.state = kind;
    textNode.textContent = text;
  }

  function wsBase(prefix) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    let p = (prefix || "").trim().replace(/^\/+|\/+$/g, "");
    p = p ? "/" + p.split("/").map(encodeURIComponent).join("/") : "";
    return `${scheme}//${location.host}${p}`;
  }

  /** Appends a list item, keeping the view at the bottom if it was there. */
  function append(list, item) {
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.appendChild(item);
    if (list === el.messages) el.empty.hidden = true;
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  function entry(kind, who, body, when) {
    const li = document.createElement("li");
    li.className = `entry ${kind}`;
    if (who !== null) {
      const w = document.createElement("span");
      w.className = "who";
      w.textContent = who;
      li.appendChild(w);
      li.appendChild(document.createTextNode(": "));
    }
    li.appendChild(body);
    const t = document.createElement("time");
    const at = when || new Date();
    t.dateTime = at.toISOString();
    t.textContent = timeOf(at);
    li.appendChild(t);
    return li;
  }

  function textNode(text, cls) {
    const span = document.createElement("span");
    span.className = cls || "text";
    span.textContent = text;
    return span;
  }

  function notice(list, kind, text) {
    append(list, entry(`notice ${kind}`, null, textNode(text)));
  }

  /** One frame of the channel: an envelope as "name: text", JSON pretty, or raw text. */
  function showFrame(data) {
    let value;
    try {
      value = JSON.parse(data);
    } catch (_) {
      value = undefined;
    }
    if (value && typeof value === "object" && !Array.isArray(value) && typeof value.event === "string") {
      const claims = value.userClaims || value.claims;
      if (value.event === "WebsocketMessage" && "payload" in value) {
        const text = typeof value.payload === "string" ? value.payload : JSON.stringify(value.payload);
        const mine = state.pending.length > 0 && state.pending[0] === text && sameClaims(claims, state.claims);
        if (mine) state.pending.shift();
        append(el.messages, entry(mine ? "message mine" : "message", mine ? "you" : nameOf(claims), textNode(text)));
        return;
      }
      if (value.event === "ConnectionOpen" || value.event === "ConnectionClose") {
        showMeta(data);
        return;
      }
    }
    if (value !== undefined && value !== null && typeof value === "object") {
      const pre = document.createElement("pre");
      pre.textContent = JSON.stringify(value, null, 2);
      append(el.messages, entry("notification json", "notification", pre));
      return;
    }
    append(el.messages, entry("notification", "notification", textNode(data)));
  }

  /** One frame of the meta channel: who joined or left which channels. */
  function showMeta(data) {
    let value = null;
    try {
      value = JSON.parse(data);
    } catch (_) {
      /* shown raw below */
    }
    if (!value || typeof value !== "object" || typeof value.event !== "string") {
      append(el.metaLog, entry("meta", null, textNode(data)));
      return;
    }
    const who = nameOf(value.userClaims || value.claims);
    const where = typeof value.payload === "string" && value.payload ? value.payload : "no channel";
    const text = value.event === "ConnectionOpen" ? `${who} joined (${where})`
      : value.event === "ConnectionClose" ? `${who} left (${where})`
      : `${value.event}: ${typeof value.payload === "string" ? value.payload : JSON.stringify(value.payload)}`;
    append(el.metaLog, entry(`meta ${value.event === "ConnectionOpen" ? "joined" : "left"}`, null, textNode(text)));
  }

  function canWrite() {
    return !!state.claims && (state.claims.mode === "w" || state.claims.mode === "rw");
  }

  function setConnected(connected) {
    const writable = connected && canWrite();
    el.message.disabled = !writable;
    el.send.disabled = !writable;
    if (connected && !canWrite()) el.sendHelp.textContent = "This token may only read (mode r): sending is off.";
    else if (!connected) el.sendHelp.textContent = "";
  }

  /** Why the server refused the handshake, in words, as far as the page can tell. */
  async function explainRefusal(node, textNode_, channel, reconnecting) {
    const { problems } = describeToken(state.token, channel);
    let serverUp = true;
    try {
      const res = await fetch(location.pathname, { method: "HEAD", cache: "no-store" });
      serverUp = res.ok || res.status < 500;
    } catch (_) {
      serverUp = false;
    }
    let text;
    if (!serverUp) {
      text = reconnecting
        ? "Gave up reconnecting: the server does not answer. Reload or press Connect when it is back."
        : "The server does not answer. Is it running?";
    } else if (problems.length) {
      text = `The server refused the connection. ${problems.join(" ")}`;
    } else {
      text = "The server refused the connection (the browser does not show why). Most likely the " +
        "token is not signed with the server's secret (401 Invalid token), its audience does not " +
        "match, or the database is unavailable (503). Check the token and the server's log.";
      if (reconnecting) text = "Gave up reconnecting. " + text;
    }
    setStatus(node, textNode_, "refused", text);
  }

  function showConnection() {
    el.connection.open = true;
  }

  function stopAll() {
    if (state.main) state.main.stop();
    if (state.meta) {
      state.meta.stop();
      // Keep a refusal's explanation; anything else is stale now.
      if (el.metaStatus.dataset.state !== "refused") {
        setStatus(el.metaStatus, el.metaStatusText, "idle", "Not connected.");
      }
    }
    state.main = null;
    state.meta = null;
    state.pending = [];
    setConnected(false);
    el.disconnect.disabled = true;
  }

  function connect() {
    stopAll();
    const channel = el.channel.value.trim();
    const token = el.token.value.trim();
    const meta = el.meta.value.trim();
    const prefix = el.prefix.value.trim();
    const problem = channelProblem(channel, "channel") || (meta && channelProblem(meta, "meta channel"));
    if (problem) {
      setStatus(el.status, el.statusText, "error", problem);
      el.channel.focus();
      return;
    }
    const described = describeToken(token, channel);
    if (!described.claims) {
      setStatus(el.status, el.statusText, "error", described.problems.join(" "));
      el.token.focus();
      return;
    }
    try {
      sessionStorage.setItem("pgws.token", token);
    } catch (_) {
      /* storage may be off: then a reload asks again */
    }
    if (channel !== state.channel) {
      // Another channel: the old one's messages would mislead under the new title.
      el.messages.replaceChildren();
      el.empty.hidden = false;
    }
    state.token = token;
    state.claims = described.claims;
    state.channel = channel;
    el.channelName.textContent = channel;
    el.empty.querySelector("code").textContent = `NOTIFY "${channel}", 'hello'`;
    el.disconnect.disabled = false;

    const base = wsBase(prefix);
    let opened = false;
    state.main = new Channel(`${base}/${encodeURIComponent(channel)}`, token, {
      onStatus: (kind, text) => {
        setStatus(el.status, el.statusText, kind, text);
        if (kind !== "connected") setConnected(false);
      },
      onOpen: () => {
        setStatus(el.status, el.statusText, "connected", `Connected to "${channel}".`);
        setConnected(true);
        if (!opened) {
          // Make room for the conversation; the summary says what is connected.
          opened = true;
          el.connectionSummary.textContent = `${channel}${meta ? " + " + meta : ""} as ${nameOf(state.claims)}`;
          el.connection.open = false;
        }
      },
      onReopen: (since) => notice(el.messages, "warning",
        `Reconnected. Messages published since ${timeOf(since)} may have been missed.`),
      onMessage: showFrame,
      onGap: () => notice(el.messages, "warning",
        "Some messages were too old to replay: the oldest kept ones follow."),
      onEnd: () => {
        setConnected(false);
        showConnection();
        state.pending = [];
      },
      onRefused: (reconnecting) => {
        stopAll();
        showConnection();
        explainRefusal(el.status, el.statusText, channel, reconnecting);
      },
    }, HISTORY_ON_LOAD);
    state.main.start();

    el.metaPanel.hidden = !meta;
    if (meta) {
      el.metaLog.replaceChildren();
      state.meta = new Channel(`${base}/${encodeURIComponent(meta)}`, token, {
        onStatus: (kind, text) => setStatus(el.metaStatus, el.metaStatusText, kind, text),
        onOpen: () => setStatus(el.metaStatus, el.metaStatusText, "connected", `Watching "${meta}".`),
        onReopen: (since) => notice(el.metaLog, "warning",
          `Reconnected. Events since ${timeOf(since)} may have been missed.`),
        onMessage: showMeta,
        onEnd: () => {},
        onRefused: (reconnecting) => explainRefusal(el.metaStatus, el.metaStatusText, meta, reconnecting),
      });
      state.meta.start();
    }
  }

  function sendMessage() {
    const text = el.message.value;
    if (!text.trim() || !state.main) return;
    const envelope = JSON.stringify({
      channel: state.channel,
      event: "WebsocketMessage",
      payload: text,
      userClaims: state.claims,
      message_delivered_at: Date.now() / 1000,
    });
    const size = utf8Length(envelope);
    if (size >= NOTIFY_LIMIT) {
      el.sendHelp.textContent = `Too long: with its envelope this message takes about ${size} bytes, ` +
        `and a NOTIFY must stay under ${NOTIFY_LIMIT}. Nothing was sent.`;
      return;
    }
    if (!state.main.send(text)) {
      el.sendHelp.textContent = "Not connected: nothing was sent.";
      return;
    }
    state.pending.push(text);
    if (state.pending.length > 100) state.pending.shift();
    el.sendHelp.textContent = "";
    el.message.value = "";
    el.message.focus();
  }

  function showTokenInfo() {
    const token = el.token.value.trim();
    if (!token) {
      el.tokenInfo.textContent = TOKEN_HELP;
      return;
    }
    const { problems, notes, claims } = describeToken(token, el.channel.value.trim());
    const who = claims ? `${nameOf(claims)}; ` : "";
    el.tokenInfo.textContent = problems.length ? problems.join(" ") : `Token for ${who}${notes.join("; ")}.`;
  }

  // ---------------------------------------------------------------------------
  // Start-up: settings from the address, then connect if a token came with it
  // ---------------------------------------------------------------------------

  function settingsFromAddress() {
    const query = new URLSearchParams(location.search);
    const hash = new URLSearchParams(location.hash.replace(/^#/, ""));
    const pick = (k) => hash.get(k) || query.get(k);
    const found = { token: pick("token"), channel: pick("channel"), meta: pick("meta"), prefix: pick("prefix") };
    if (found.token) {
      // Keep the token out of the history and of anything copied from the address bar.
      query.delete("token");
      hash.delete("token");
      const q = query.toString();
      const h = hash.toString();
      history.replaceState(null, "", location.pathname + (q ? "?" + q : "") + (h ? "#" + h : ""));
    }
    return found;
  }

  /** Fills the form from the address; whether a token came with it. */
  function applyAddress() {
    const found = settingsFromAddress();
    if (found.channel) el.channel.value = found.channel;
    if (found.meta) el.meta.value = found.meta;
    if (found.prefix) el.prefix.value = found.prefix;
    if (found.meta || found.prefix) el.form.querySelector("details").open = true;
    if (found.token) el.token.value = found.token;
    el.channelName.textContent = el.channel.value;
    showTokenInfo();
    return !!found.token;
  }

  const tokenInAddress = applyAddress();
  if (!tokenInAddress) {
    try {
      el.token.value = sessionStorage.getItem("pgws.token") || "";
    } catch (_) {
      /* storage may be off */
    }
    showTokenInfo();
  }

  el.form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    connect();
  });
  el.disconnect.addEventListener("click", () => {
    stopAll();
    showConnection();
    setStatus(el.status, el.statusText, "idle", "Disconnected.");
    setStatus(el.metaStatus, el.metaStatusText, "idle", "Disconnected.");
  });
  el.sendForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    sendMessage();
  });
  el.token.addEventListener("input", showTokenInfo);
  el.channel.addEventListener("input", showTokenInfo);
  el.showToken.addEventListener("click", () => {
    const show = el.token.type === "password";
    el.token.type = show ? "text" : "password";
    el.showToken.textContent = show ? "Hide" : "Show";
    el.showToken.setAttribute("aria-pressed", String(show));
  });

  // A new link pasted into the address bar of an open page.
  window.addEventListener("hashchange", () => {
    if (applyAddress()) {
      el.connection.open = true;
      connect();
    }
  });

  if (el.token.value) connect();
  else el.token.focus();
})();
