// Close codes and resume details: 1009 is not retried, a token that cannot be
// renewed ends in 3001 and a reconnect, a Gap is reported, plain channels say
// they may have missed messages.

import { test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { PgWs } from "../src/index.js";
import { Server, dropSchema, publishFromSql, sign, sql, unique, until } from "./helpers.js";

async function historyServer(t, env = {}) {
  const schema = unique("pgws_js");
  const server = await new Server({ PGWS_HISTORY: "hist", PGWS_HISTORY_SCHEMA: schema, PGWS_EXPIRY_NOTICE: "0", ...env }).start();
  t.after(async () => {
    await server.stop();
    dropSchema(schema);
  });
  return { server, schema };
}

test("1009 from pgws is not retried: the client closes and says why", { timeout: 30000 }, async (t) => {
  const { server } = await historyServer(t);
  // A client told a wrong limit sends a frame pgws refuses with 1009.
  const c = new PgWs(server.ws + "/", { token: sign({ mode: "rw", channels: ["plain"] }, 3600), WebSocket, maxMessageBytes: 1 << 20 });
  t.after(() => c.close());
  const states = [];
  const errors = [];
  c.on("state", (e) => states.push(e.state));
  c.on("error", (e) => errors.push(e));
  await c.publish("plain", "small");
  await assert.rejects(c.publish("plain", "x".repeat(70000)), (e) => e.code === "disconnected" && e.closeCode === 1009);
  await until(() => c.state === "closed", 5000, "closed");
  await new Promise((r) => setTimeout(r, 1500)); // a retry would show by now
  assert.deepEqual(states, ["connecting", "connected", "closed"]);
  assert.equal(errors[0]?.code, "fatal");
  assert.equal(errors[0]?.closeCode, 1009);
});

test("getToken failing at renewal: retried, then 3001 and a reconnect with a new token", { timeout: 60000 }, async (t) => {
  const { server, schema } = await historyServer(t);
  let calls = 0;
  const getToken = () => {
    calls += 1;
    if (calls >= 2 && calls <= 4) throw new Error("token service down");
    return sign({ mode: "r", channels: ["hist"] }, 3);
  };
  const c = new PgWs(server.ws + "/", { getToken, WebSocket, refreshBefore: 1500, tokenRetries: 3, backoff: { base: 100, max: 300 } });
  t.after(() => c.close());
  const states = [];
  const errors = [];
  c.on("state", (e) => states.push(e.state));
  c.on("error", (e) => errors.push(e.code));
  const sub = c.subscribe("hist", { history: 0 });
  const got = [];
  sub.on("message", (m) => void got.push(m.payload));
  await until(() => sub.state === "subscribed", 10000, "subscribed");
  const publisher = publishFromSql(schema, "hist", 200, 20);
  t.after(() => publisher.child.kill());
  await publisher.done;
  await until(() => got.length >= 200, 20000, "every message");
  t.diagnostic(`getToken calls ${calls}, states ${states}, errors ${errors}`);
  assert.equal(errors[0], "token", "the failed renewal is reported once its retries are spent");
  assert.deepEqual(states.slice(0, 5), ["connecting", "connected", "disconnected", "connecting", "connected"]);
  assert.ok(calls >= 5, "three tries at renewal, then a new token to reconnect");
  assert.deepEqual(got, Array.from({ length: 200 }, (_, i) => String(i + 1)));
});

test("a position pgws cannot honour gives a gap, then the kept messages", { timeout: 30000 }, async (t) => {
  const { server, schema } = await historyServer(t);
  for (let i = 1; i <= 3; i++) sql(`select ${schema}.publish('hist', 'k${i}')`);
  const c = new PgWs(server.ws + "/", { token: sign({ mode: "r", channels: ["hist"] }, 3600), WebSocket });
  t.after(() => c.close());
  const events = [];
  const sub = c.subscribe("hist", { since: "AnOldEpoch00:42" });
  sub.on("gap", (g) => void events.push(`gap ${g.from}`));
  sub.on("message", (m) => void events.push(m.payload));
  await until(() => events.length >= 4, 10000, "gap and messages");
  const epoch = sql(`select epoch from ${schema}.channels`).trim();
  assert.deepEqual(events, ["gap 1", "k1", "k2", "k3"]);
  assert.equal(sub.position, `${epoch}:3`);
});

test("a plain channel says it may have missed messages after a reconnect", { timeout: 30000 }, async (t) => {
  const { server } = await historyServer(t);
  const c = new PgWs(server.ws + "/", { token: sign({ mode: "r", channels: ["plain"] }, 3600), WebSocket, backoff: { base: 100, max: 300 } });
  t.after(() => c.close());
  const seen = [];
  const sub = c.subscribe("plain");
  sub.on("subscribed", (e) => void seen.push(e));
  await until(() => seen.length === 1, 10000, "subscribed");
  await server.restart();
  await until(() => seen.length === 2, 10000, "subscribed again");
  assert.deepEqual(seen.map((e) => [e.resumed, e.mayHaveMissed]), [[false, false], [true, true]]);
});

test("no WebSocket to be had: the client closes with a fatal error", () => {
  const c = new PgWs("ws://127.0.0.1:9/", { token: sign({ mode: "r", channels: ["x"] }, 60), WebSocket: undefined });
  const errors = [];
  c.on("error", (e) => errors.push(e.code));
  const saved = globalThis.WebSocket;
  globalThis.WebSocket = undefined;
  try {
    c.connect();
  } finally {
    globalThis.WebSocket = saved;
  }
  return until(() => c.state === "closed", 2000, "closed").then(() => assert.deepEqual(errors, ["fatal"]));
});

test("a payload that is no JSON is rejected before anything is sent", async () => {
  const c = new PgWs("ws://127.0.0.1:9/", { token: sign({ mode: "rw", channels: ["x"] }, 60), WebSocket, transport: "websocket" });
  const cyclic = {};
  cyclic.self = cyclic;
  for (const bad of [undefined, cyclic, 1n]) {
    await assert.rejects(c.publish("x", bad), (e) => e.code === "bad_request");
  }
  assert.equal(c.state, "idle", "nothing was even connected for them");
  c.close();
});

test("a token granting only a pattern: the socket starts empty, the client subscribes and resumes", { timeout: 60000 }, async (t) => {
  const { server, schema } = await historyServer(t);
  const c = new PgWs(server.ws + "/", { getToken: () => sign({ mode: "r", channels: ["hi*"] }, 3600), WebSocket, backoff: { base: 100, max: 300 } });
  t.after(() => c.close());
  const got = [];
  const sub = c.subscribe("hist", { history: 0 });
  sub.on("message", (m) => void got.push(m.payload));
  await until(() => sub.state === "subscribed", 10000, "subscribed");
  const publisher = publishFromSql(schema, "hist", 150, 15);
  t.after(() => publisher.child.kill());
  await until(() => got.length >= 50, 20000, "messages before the restart");
  await server.restart();
  await publisher.done;
  await until(() => got.length >= 150, 20000, "every message");
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(got, Array.from({ length: 150 }, (_, i) => String(i + 1)));
});

test("a fixed token that expired, and no getToken: the client closes and says why", async () => {
  const c = new PgWs("ws://127.0.0.1:9/", { token: sign({ mode: "r", channels: ["x"] }, -10), WebSocket });
  const errors = [];
  c.on("error", (e) => errors.push(e.code));
  c.connect();
  await until(() => c.state === "closed", 2000, "closed");
  assert.deepEqual(errors, ["token_expired"]);
});
