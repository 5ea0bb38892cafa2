// pgws: the JavaScript client of the pgws session protocol.
export { PgWs } from "./client.js";
export { PgWsError } from "./errors.js";
export { Backoff } from "./backoff.js";
export { Subscription, parsePosition } from "./subscription.js";
