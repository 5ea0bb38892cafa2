// Event streams: the fallback when a proxy refuses WebSocket upgrades, resuming
// across a restart; and streams renewing an expired token.

import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import net from "node:net";
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
  let allow = false;
  proxy.on("upgrade", (req, socket, head) => {
    if (!allow) {
      refused += 1;
      socket.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
      return;
    }
    // Unblocked: the handshake and the frames pass through as bytes.
    const up = net.connect(target.port, "127.0.0.1", () => {
      const lines = [`${req.method} ${req.url} HTTP/1.1`];
      for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
      up.write(lines.join("\r\n") + "\r\n\r\n");
      up.write(head);
      up.pipe(socket).pipe(up);
    });
    up.on("error", () => socket.destroy());
    socket.on("error", () => up.destroy());
  });
  await new Promise((r) => proxy.listen(0, "127.0.0.1", r));
  t.after(() => new Promise((r) => {
    proxy.closeAllConnections();
    proxy.close(r);
  }));
  return { url: `ws://127.0.0.1:${proxy.address().port}/`, refused: () => refused, unblock: () => (allow = true) };
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

test("fallen back: a WebSocket probe that gets through switches back and resumes", { timeout: 60000 }, async (t) => {
  const { server, schema } = await historyServer(t);
  const proxy = await upgradeBlockingProxy(t, server);
  const client = new PgWs(proxy.url, {
    getToken: () => sign({ mode: "rw", channels: ["hist"] }, 3600),
    WebSocket,
    EventSource,
    fallbackAfter: 2,
    probeInterval: 500,
    backoff: { base: 100, max: 500 },
  });
  t.after(() => client.close());
  const transports = [];
  client.on("fallback", (e) => transports.push(e.transport));
  const sub = client.subscribe("hist", { history: 0 });
  const got = [];
  sub.on("message", (m) => void got.push(JSON.parse(m.payload).payload ?? m.payload));
  await until(() => client.transport === "sse" && sub.state === "subscribed", 20000, "on event streams");
  const publisher = publishFromSql(schema, "hist", 150, 15);
  t.after(() => publisher.child.kill());
  await until(() => got.length >= 40, 20000, "messages over SSE");
  proxy.unblock();
  await until(() => client.transport === "websocket" && client.state === "connected", 20000, "back on a WebSocket");
  await publisher.done;
  await client.publish("hist", "over the websocket"); // acked: the socket writes again
  await until(() => got.length >= 151, 20000, "every message");
  assert.deepEqual(transports, ["sse", "websocket"]);
  assert.deepEqual(got, [...Array.from({ length: 150 }, (_, i) => String(i + 1)), "over the websocket"]);
});
