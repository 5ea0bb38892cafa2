// Event streams: the fallback when a proxy refuses WebSocket upgrades, resuming
// across a restart; and streams renewing an expired token.

import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { EventSource } from "eventsource";
import WebSocket from "ws";
import { PgWs } from "../src/index.js";
import { Server, dropSchema, publishFromSql, sign, unique, until } from "./helpers.js";

/** A proxy in front of pgws that passes HTTP through and refuses every upgrade. */
async function upgradeBlockingProxy(t, target) {
  const proxy = http.createServer((req, res) => {
    const up = http.request({ host: "127.0.0.1", port: target.port, path: req.url, method: req.method, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode ?? 502, r.headers);
      r.pipe(res);
    });
    up.on("error", () => res.destroy());
    res.on("close", () => up.destroy());
    req.pipe(up);
  });
  let refused = 0;
  proxy.on("upgrade", (_req, socket) => {
    refused += 1;
    socket.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  });
  await new Promise((r) => proxy.listen(0, "127.0.0.1", r));
  t.after(() => new Promise((r) => {
    proxy.closeAllConnections();
    proxy.close(r);
  }));
  return { url: `ws://127.0.0.1:${proxy.address().port}/`, refused: () => refused };
}

async function historyServer(t) {
  const schema = unique("pgws_js");
  const server = await new Server({ PGWS_HISTORY: "hist", PGWS_HISTORY_SCHEMA: schema }).start();
  t.after(async () => {
    await server.stop();
    dropSchema(schema);
  });
  return { server, schema };
}

test("WebSocket upgrades blocked: falls back to an event stream, resumes across a restart", { timeout: 60000 }, async (t) => {
  const { server, schema } = await historyServer(t);
  const proxy = await upgradeBlockingProxy(t, server);
  const client = new PgWs(proxy.url, {
    getToken: () => sign({ mode: "r", channels: ["hist"] }, 3600),
    WebSocket,
    EventSource,
    fallbackAfter: 3,
    backoff: { base: 100, max: 500 },
  });
  t.after(() => client.close());
  const fellBack = [];
  client.on("fallback", (e) => fellBack.push(e));
  const sub = client.subscribe("hist", { history: 0 });
  const got = [];
  let subscribed = 0;
  sub.on("subscribed", () => void subscribed++);
  sub.on("message", (m) => void got.push(m.payload));
  await until(() => sub.state === "subscribed", 20000, "subscribed over SSE");
  assert.equal(client.transport, "sse");
  assert.equal(fellBack.length, 1);
  assert.equal(proxy.refused(), 3, "three refused upgrades, then streams");
  await assert.rejects(client.publish("hist", "x"), (e) => e.code === "read_only");

  const total = 200;
  const publisher = publishFromSql(schema, "hist", total, 15);
  t.after(() => publisher.child.kill());
  await until(() => got.length >= 60, 20000, "messages before the restart");
  await server.restart();
  await publisher.done;
  await until(() => got.length >= total, 20000, "every message");
  await new Promise((r) => setTimeout(r, 200));
  assert.ok(subscribed >= 2, "the stream was opened again");
  assert.deepEqual(got, Array.from({ length: total }, (_, i) => String(i + 1)));
});

test("an event stream whose token expires reopens with a new one, exactly once", { timeout: 60000 }, async (t) => {
  const { server, schema } = await historyServer(t);
  let tokens = 0;
  const client = new PgWs(server.ws, {
    getToken: () => (tokens++, sign({ mode: "r", channels: ["hist"] }, 3)),
    EventSource,
    transport: "sse",
    backoff: { base: 100, max: 500 },
  });
  t.after(() => client.close());
  const sub = client.subscribe("hist", { history: 0 });
  const got = [];
  sub.on("message", (m) => void got.push(m.payload));
  await until(() => sub.state === "subscribed", 10000, "subscribed");
  const total = 400;
  const publisher = publishFromSql(schema, "hist", total, 20);
  t.after(() => publisher.child.kill());
  await publisher.done;
  await until(() => got.length >= total, 20000, "every message");
  t.diagnostic(`tokens ${tokens}`);
  assert.ok(tokens >= 3, "a new token for each expiry");
  assert.deepEqual(got, Array.from({ length: total }, (_, i) => String(i + 1)));
});
