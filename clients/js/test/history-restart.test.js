// A history channel under continuous publishing while pgws is restarted three
// times: the application gets every message exactly once, in order.

import { test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { PgWs } from "../src/index.js";
import { Server, dropSchema, publishFromSql, sign, unique, until } from "./helpers.js";

test("history channel: three restarts, every message exactly once, in order", { timeout: 120000 }, async (t) => {
  const schema = unique("pgws_js");
  const channel = "hist";
  const server = await new Server({ PGWS_HISTORY: "hist", PGWS_HISTORY_SCHEMA: schema }).start();
  t.after(async () => {
    await server.stop();
    dropSchema(schema);
  });
  const getToken = () => sign({ mode: "r", channels: [channel] }, 3600);
  const client = new PgWs(server.ws + "/", { getToken, WebSocket, backoff: { base: 100, max: 1000 } });
  t.after(() => client.close());
  const got = [];
  let opens = 0;
  client.on("state", ({ state }) => state === "connected" && opens++);
  const sub = client.subscribe(channel, { history: 0 });
  const events = [];
  sub.on("subscribed", (e) => events.push(`subscribed ${e.position} after ${got.at(-1)}`));
  sub.on("gap", (g) => events.push(`gap ${JSON.stringify(g)}`));
  sub.on("message", (m) => {
    got.push(m.payload);
  });
  await until(() => sub.state === "subscribed", 10000, "subscribed");

  const total = 400;
  const publisher = publishFromSql(schema, channel, total, 15);
  t.after(() => publisher.child.kill());
  for (let i = 1; i <= 3; i++) {
    await until(() => got.length >= (i * total) / 5, 30000, `messages before restart ${i}`);
    await server.restart();
    await until(() => opens > i, 30000, `reconnect ${i}`);
  }
  await publisher.done;
  await until(() => got.length >= total, 30000, "every message").catch((e) => {
    const missing = [];
    for (let i = 1; i <= total; i++) if (!got.includes(String(i))) missing.push(i);
    t.diagnostic(`missing ${missing} events ${events.join("; ")}`);
    t.diagnostic(`got ${got.length}, last ${got.slice(-5)}, position ${sub.position}, state ${client.state}/${sub.state}\n${server.log}`);
    throw e;
  });
  await new Promise((r) => setTimeout(r, 300)); // a duplicate would show up by now
  assert.equal(opens, 4, "one connect and three reconnects");
  assert.deepEqual(got, Array.from({ length: total }, (_, i) => String(i + 1)));
});

test("a slow async handler: positions follow what it finished, restarts lose and repeat nothing", { timeout: 120000 }, async (t) => {
  const schema = unique("pgws_js");
  const server = await new Server({ PGWS_HISTORY: "hist", PGWS_HISTORY_SCHEMA: schema }).start();
  t.after(async () => {
    await server.stop();
    dropSchema(schema);
  });
  const client = new PgWs(server.ws + "/", { getToken: () => sign({ mode: "r", channels: ["hist"] }, 3600), WebSocket, backoff: { base: 100, max: 1000 } });
  t.after(() => client.close());
  const got = [];
  const sub = client.subscribe("hist", { history: 0 });
  sub.on("message", async (m) => {
    await new Promise((r) => setTimeout(r, 8)); // slower than the publisher
    got.push(m.payload);
  });
  const seen = () => Number(sub.position?.split(":")[1] ?? 0);
  await until(() => sub.state === "subscribed", 10000, "subscribed");
  const total = 300;
  const publisher = publishFromSql(schema, "hist", total, 2);
  t.after(() => publisher.child.kill());
  for (let i = 1; i <= 2; i++) {
    await until(() => got.length >= (i * total) / 4, 30000, `messages before restart ${i}`);
    assert.ok(seen() <= got.length, "the position never runs ahead of the handler");
    await server.restart();
  }
  await publisher.done;
  await until(() => got.length >= total, 60000, "every message");
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(got, Array.from({ length: total }, (_, i) => String(i + 1)));
});
