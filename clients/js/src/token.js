// Reading a token's own claims (never verifying them: that is the server's job)
// and deciding when to fetch the next one.

/** The claims of a compact JWT, or null when it has none readable. */
export function claims(token) {
  if (typeof token !== "string") return null;
  const part = token.split(".")[1];
  if (!part) return null;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
    const text = new TextDecoder().decode(Uint8Array.from(atob(padded), (c) => c.charCodeAt(0)));
    const value = JSON.parse(text);
    return value && typeof value === "object" ? value : null;
  } catch {
    return null;
  }
}

/** The token's `exp` in milliseconds since the epoch, or null. */
export function expiresAt(token) {
  const exp = claims(token)?.exp;
  return typeof exp === "number" && Number.isFinite(exp) ? exp * 1000 : null;
}

/**
 * When to fetch the next token: `before` ms ahead of `exp`, but never earlier
 * than half way through the token's life (a short-lived token is not renewed
 * at once). Null for a token without `exp`.
 */
export function refreshAt(token, before, now = Date.now()) {
  const exp = expiresAt(token);
  if (exp === null) return null;
  const iat = claims(token)?.iat;
  const issued = typeof iat === "number" ? Math.min(iat * 1000, now) : now;
  const half = issued + (exp - issued) / 2;
  return Math.max(exp - before, Math.min(half, exp));
}

/**
 * Calls `getToken` up to `tries` times, waiting `delay(n)` ms between tries
 * through `sleep`; rejects with the last error.
 */
export async function fetchToken(getToken, { tries, delay, sleep, live }) {
  let last;
  for (let n = 0; n < tries; n++) {
    if (n > 0) await sleep(delay(n));
    if (!live()) throw new Error("client closed");
    try {
      const token = await getToken();
      if (typeof token !== "string" || token === "") throw new TypeError("getToken() must return a token string");
      return token;
    } catch (err) {
      last = err;
    }
  }
  throw last;
}
