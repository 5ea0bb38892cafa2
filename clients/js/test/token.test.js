// Token renewal in place (the session `refresh`), driven by the token's own
// `exp` or by the server's `expiring` notice, and a refused renewal.

import { test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { PgWs } from "../src/index.js";
import { Server, dropSchema, publishFromSql, sign, unique, until } from "./helpers.js";

const LIFETIME = 4; // seconds

async function historyServer(t, env = {}) {
  const schema = unique("pgws_js");
  const server = await new Server({ PGWS_HISTORY: "hist", PGWS_HISTORY_SCHEMA: schema, ...env }).start();
  t.after(async () => {
    await server.stop();
    dropSchema(schema);
  });
  return { server, schema };
}

/** A client reading `hist`, with what it saw. */
function reader(t, server, getToken, options = {}) {
  const client = new PgWs(server.ws + "/", { getToken, WebSocket, backoff: { base: 100, max: 1000 }, ...options });
  t.after(() => client.close());
  const seen = { got: [], states: [], errors: [], refreshed: [] };
  client.on("state", (e) => seen.states.push(e.state));
  client.on("error", (e) => seen.errors.push(e));
  client.on("refreshed", (e) => seen.refreshed.push(e.exp));
  const sub = client.subscribe("hist", { history: 0 });
  sub.on("message", (m) => void seen.got.push(m.payload));
  return { client, sub, seen };
}

for (const [how, env, options] of [
  ["from the token's exp", { PGWS_EXPIRY_NOTICE: "0" }, { refreshBefore: 1500 }],
  ["on the expiring notice", { PGWS_EXPIRY_NOTICE: "2" }, { refreshBefore: 0 }],
]) {
  test(`refresh ${how}: three token lifetimes on one socket`, { timeout: 60000 }, async (t) => {
    const { server, schema } = await historyServer(t, env);
    let calls = 0;
    const getToken = () => {
      calls += 1;
      return sign({ mode: "r", channels: ["hist"], sub: "alice" }, LIFETIME);
    };
    const { sub, seen } = reader(t, server, getToken, options);
    await until(() => sub.state === "subscribed", 10000, "subscribed");
    const total = Math.round((3 * LIFETIME * 1000 + 1000) / 20);
    const publisher = publishFromSql(schema, "hist", total, 20);
    t.after(() => publisher.child.kill());
    await publisher.done;
    await until(() => seen.got.length >= total, 20000, "every message");
    t.diagnostic(`getToken calls ${calls}, refreshed ${seen.refreshed.length}, states ${seen.states}`);
    assert.deepEqual(seen.states, ["connecting", "connected"], "never reconnected");
    assert.ok(seen.refreshed.length >= 3, `renewed at least three times (${seen.refreshed.length})`);
    assert.deepEqual(seen.got, Array.from({ length: total }, (_, i) => String(i + 1)));
    assert.deepEqual(seen.errors, []);
  });
}

test("a refused refresh ends in a clean reconnect with a new token", { timeout: 60000 }, async (t) => {
  const { server, schema } = await historyServer(t, { PGWS_EXPIRY_NOTICE: "0" });
  // The first token is alice's; the next ones are bob's: a refresh must keep
  // the `sub`, so the server refuses it, and bob has to connect anew.
  const issued = [];
  const getToken = () => {
    const token = sign({ mode: "r", channels: ["hist"], sub: issued.length === 0 ? "alice" : "bob" }, LIFETIME);
    issued.push(token);
    return token;
  };
  const { sub, seen } = reader(t, server, getToken, { refreshBefore: 2000 });
  await until(() => sub.state === "subscribed", 10000, "subscribed");
  const total = 150;
  const publisher = publishFromSql(schema, "hist", total, 20);
  t.after(() => publisher.child.kill());
  await publisher.done;
  await until(() => seen.got.length >= total, 20000, "every message");
  t.diagnostic(`tokens ${issued.length}, states ${seen.states}, errors ${seen.errors.map((e) => e.code)}`);
  assert.equal(seen.errors[0]?.code, "unauthorized", "the refusal is reported");
  assert.deepEqual(seen.states.slice(0, 5), ["connecting", "connected", "disconnected", "connecting", "connected"]);
  assert.equal(seen.states.filter((s) => s === "connected").length, 2, "one reconnect, no more");
  assert.ok(issued.length >= 3, "a new token for the reconnect after the refused one");
  assert.deepEqual(seen.got, Array.from({ length: total }, (_, i) => String(i + 1)));
});
