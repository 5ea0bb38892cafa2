// Type declarations of the pgws client (written by hand; checked by `tsc --noEmit`).

/** Removes the listener it was returned for. */
export type Off = () => void;

/** A typed event emitter: `on(name, listener)` with the events of `Events`. */
declare class Emitter<Events extends Record<string, unknown>> {
  on<K extends keyof Events & string>(event: K, listener: (value: Events[K]) => unknown): Off;
  once<K extends keyof Events & string>(event: K, listener: (value: Events[K]) => unknown): Off;
  off<K extends keyof Events & string>(event: K, listener?: (value: Events[K]) => unknown): void;
}

/** The client's state. */
export type State = "idle" | "connecting" | "connected" | "disconnected" | "closed";
export type Transport = "websocket" | "sse";

/** Error codes: the server's (`forbidden`, `too_big`, `unavailable`, `bad_request`, `too_many`, `unauthorized`) or the client's. */
export type ErrorCode =
  | "forbidden" | "too_big" | "unavailable" | "bad_request" | "too_many" | "unauthorized"
  | "disconnected" | "queue_full" | "read_only" | "closed" | "token" | "token_expired" | "fatal" | "error";

export declare class PgWsError extends Error {
  constructor(code: string, message: string, extra?: { closeCode?: number });
  readonly name: "PgWsError";
  readonly code: ErrorCode | string;
  /** The WebSocket close code, when a close caused it. */
  readonly closeCode?: number;
}

/** A WebSocket constructor as in browsers (Node: the `ws` package's). */
export interface WebSocketLike {
  readonly protocol: string;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string, protocols: string[]) => WebSocketLike;

/** An EventSource constructor as in browsers (Node: the `eventsource` package's). */
export interface EventSourceLike {
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: string; lastEventId: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  addEventListener(type: string, listener: (event: { data: string; lastEventId: string }) => void): void;
  close(): void;
}
export type EventSourceConstructor = new (url: string) => EventSourceLike;

export interface BackoffOptions {
  /** First ceiling, ms (default 500). */
  base?: number;
  /** Largest ceiling, ms (default 30000). */
  max?: number;
}

export interface PgWsOptions {
  /** Returns a fresh JWT; called to connect and before the token expires. */
  getToken?: () => string | Promise<string>;
  /** A first token (or the only one, without getToken). */
  token?: string;
  /** Default `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor;
  /** Default `globalThis.EventSource`. */
  EventSource?: EventSourceConstructor;
  /** `auto` (default): WebSocket, event streams after `fallbackAfter` failed attempts in a row. */
  transport?: "auto" | Transport;
  /** Default 3. */
  fallbackAfter?: number;
  backoff?: BackoffOptions;
  /** ms a socket must stay open before the backoff starts over (default 5000). */
  stableAfter?: number;
  /** ms to open a socket or stream in (default 10000). */
  connectTimeout?: number;
  /** ms of silence before a ping (default 20000; 0: none). */
  pingInterval?: number;
  /** ms to wait for its pong before reconnecting (default 10000). */
  pingTimeout?: number;
  /** ms before `exp` to renew the token (default 30000; never before half its life). */
  refreshBefore?: number;
  /** getToken() calls per renewal before giving up (default 3). */
  tokenRetries?: number;
  /** Publishes that may wait for a socket (default 100; 0: reject while disconnected). */
  publishQueue?: number;
  /** Messages per subscription waiting for its listeners (default 10000); past it, reconnect and resume. */
  maxPending?: number;
  /** The server's PGWS_MAX_MESSAGE_BYTES (default 65536): a bigger publish frame rejects with too_big, unsent. */
  maxMessageBytes?: number;
  /** Publishes written and not answered yet, at most (default 16, pgws's PGWS_MAX_IN_FLIGHT); the next ones wait in the queue. */
  maxInFlight?: number;
  /** ms between WebSocket probes while fallen back to event streams (default 60000; 0: none). */
  probeInterval?: number;
  /** For tests: the random source of the backoff (default Math.random). */
  random?: () => number;
}

export interface StateEvent { state: State; previous: State; transport: Transport }

export interface Message {
  channel: string;
  /** The payload exactly as it was sent. */
  payload: string;
  /** On history channels: the channel's epoch and the message's offset. */
  epoch?: string;
  offset?: number;
}

export interface Gap { channel: string; epoch: string; from: number }

export interface SubscribedEvent {
  channel: string;
  /** A second or later subscribe (after a reconnect). */
  resumed: boolean;
  /** A plain channel after a reconnect: what was published meanwhile is lost. */
  mayHaveMissed: boolean;
  /** The position it resumed from, if any. */
  position: string | null;
}

export interface ClientEvents extends Record<string, unknown> {
  state: StateEvent;
  error: PgWsError;
  /** A message of a channel the socket got from its token without a subscription. */
  message: Message;
  refreshed: { exp: number | null };
  /** `sse` when "auto" moved to event streams; `websocket` when a later probe found WebSockets working again. */
  fallback: { transport: Transport; failures: number };
}

export interface SubscriptionEvents extends Record<string, unknown> {
  message: Message;
  gap: Gap;
  subscribed: SubscribedEvent;
  unsubscribed: { channel: string; reason: string };
  error: PgWsError;
}

export interface SubscribeOptions {
  /** On a history channel: start with up to the last n kept messages. */
  history?: number;
  /** On a history channel: start after `<epoch>:<offset>`. */
  since?: string;
  /** Overrides the client's maxPending. */
  maxPending?: number;
}

export declare class Subscription extends Emitter<SubscriptionEvents> {
  readonly channel: string;
  readonly state: "subscribing" | "subscribed" | "unsubscribed";
  /** The last position handed to the application, `<epoch>:<offset>`. */
  readonly position: string | null;
  /** Whether the channel keeps history (from the options or a message). */
  readonly keepsHistory: boolean;
  unsubscribe(): void;
}

export interface PublishOptions {
  /** Wait in the queue while disconnected (default: publishQueue > 0) or reject at once. */
  queue?: boolean;
}

export declare class PgWs extends Emitter<ClientEvents> {
  constructor(url: string, options: PgWsOptions);
  readonly state: State;
  readonly transport: Transport;
  connect(): void;
  subscribe(channel: string, options?: SubscribeOptions): Subscription;
  subscription(channel: string): Subscription | undefined;
  publish(channel: string, payload: unknown, options?: PublishOptions): Promise<void>;
  close(): void;
}

export declare class Backoff {
  constructor(options?: BackoffOptions & { random?: () => number });
  attempt: number;
  next(): number;
  reset(): void;
}

export declare function parsePosition(text: string): { epoch: string; offset: number } | null;
