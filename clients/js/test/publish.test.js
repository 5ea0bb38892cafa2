// Publishing: `ack` once committed, `error` codes as rejections, the queue
// while disconnected, and nothing ever sent twice.

import { test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { PgWs, PgWsError } from "../src/index.js";
import { Server, dropSchema, sign, sql, unique, until } from "./helpers.js";

async function start(t) {
  const schema = unique("pgws_js");
  const server = await new Server({ PGWS_HISTORY: "hist", PGWS_HISTORY_SCHEMA: schema }).start();
  t.after(async () => {
    await server.stop();
    dropSchema(schema);
  });
  return { server, schema };
}

function client(t, url, claims, options = {}) {
  const c = new PgWs(url, { getToken: () => sign(claims, 3600), WebSocket, transport: "websocket", backoff: { base: 100, max: 500 }, ...options });
  t.after(() => c.close());
  return c;
}

const rejection = (code) => (err) => err instanceof PgWsError && err.code === code;

test("publish resolves on ack, after the commit, and rejects with the server's code", { timeout: 30000 }, async (t) => {
  const { server, schema } = await start(t);
  const writer = client(t, server.ws + "/", { mode: "rw", channels: ["hist", "plain"] });
  const reader = client(t, server.ws + "/", { mode: "r", channels: ["plain"] });
  const heard = [];
  const plain = reader.subscribe("plain");
  plain.on("message", (m) => void heard.push(m.payload));
  await until(() => plain.state === "subscribed", 10000, "reader subscribed");

  await writer.publish("hist", "kept");
  // Acked means committed: the store has it now, not later.
  assert.equal(sql(`select count(*) from ${schema}.messages where payload like '%kept%'`).trim(), "1");
  await writer.publish("plain", { n: 1 });
  await until(() => heard.length === 1, 5000, "the plain message");
  // The envelope of PROTOCOL.md §7, with the object as its compact JSON text.
  assert.equal(JSON.parse(heard[0]).payload, '{"n":1}');

  await assert.rejects(writer.publish("elsewhere", "x"), rejection("forbidden"));
  await assert.rejects(writer.publish("hist", "x".repeat(70000)), rejection("too_big"));
  await assert.rejects(writer.publish("plain", "x".repeat(7990)), rejection("too_big"));
  await assert.rejects(reader.publish("plain", "x"), rejection("forbidden"), "a read-only token");
  // The socket stayed open through the refusals, and nothing of them arrived.
  await writer.publish("plain", "after");
  await until(() => heard.length === 2, 5000, "the message after the refusals");
  assert.equal(JSON.parse(heard[1]).payload, "after");
  assert.equal(writer.state, "connected");
});

test("while disconnected: a bounded queue, or rejection at once", { timeout: 30000 }, async (t) => {
  const { server, schema } = await start(t);
  await server.stop();
  const c = client(t, server.ws + "/", { mode: "rw", channels: ["hist"] }, { publishQueue: 2 });
  const first = c.publish("hist", "q1");
  const second = c.publish("hist", "q2");
  await assert.rejects(c.publish("hist", "q3"), rejection("queue_full"));
  await assert.rejects(c.publish("hist", "now", { queue: false }), rejection("disconnected"));
  await server.start(); // same port
  await Promise.all([first, second]);
  const kept = sql(`select string_agg(payload, ',' order by "offset") from ${schema}.messages`).trim();
  assert.match(kept, /q1.*q2/);
  assert.doesNotMatch(kept, /q3|now/);

  const closed = new PgWs(server.ws + "/", { token: sign({ mode: "rw", channels: ["hist"] }, 3600), WebSocket });
  await server.stop();
  const waiting = closed.publish("hist", "never");
  closed.close();
  await assert.rejects(waiting, rejection("closed"));
});

test("publishes in flight when pgws dies are rejected, never sent again", { timeout: 30000 }, async (t) => {
  const { server, schema } = await start(t);
  const c = client(t, server.ws + "/", { mode: "rw", channels: ["hist"] });
  await c.publish("hist", "warm-up");
  const results = [];
  for (let i = 0; i < 200; i++) results.push(c.publish("hist", `m${i}`).then(() => "ack", (e) => e.code));
  await new Promise((r) => setTimeout(r, 5));
  await server.stop("SIGKILL");
  await server.start();
  // In flight at the kill: rejected; still queued then: sent on the new socket.
  const outcomes = await Promise.all(results);
  await until(() => c.state === "connected", 10000, "reconnected");
  await c.publish("hist", "after");
  const rows = sql(`select payload from ${schema}.messages`).trim().split("\n").map((r) => JSON.parse(r));
  const counts = new Map();
  for (const { payload } of rows) counts.set(payload, (counts.get(payload) ?? 0) + 1);
  const acked = outcomes.filter((o) => o === "ack").length;
  assert.ok(outcomes.includes("disconnected"), "some were in flight at the kill");
  t.diagnostic(`acked ${acked}, rejected ${outcomes.length - acked} (${[...new Set(outcomes)]}), kept ${rows.length}`);
  assert.ok(outcomes.every((o) => o === "ack" || o === "disconnected" || o === "queue_full"), String(new Set(outcomes)));
  // Rejected ones were not sent again after the reconnect: beyond the acked,
  // only those the server had read but not answered (PGWS_MAX_IN_FLIGHT and
  // its answer queue, 16 each) may have committed.
  const keptM = rows.filter((r) => /^m\d+$/.test(r.payload)).length;
  assert.ok(keptM <= acked + 32, `kept ${keptM} of ${acked} acked`);
  assert.ok(acked < 200, "some publishes were still in flight at the kill");
  for (const [i, o] of outcomes.entries()) {
    const n = counts.get(`m${i}`) ?? 0;
    assert.ok(n <= 1, `m${i} kept ${n} times`);
    if (o === "ack") assert.equal(n, 1, `acked m${i} is kept`);
  }
});
