// 500 clients lose pgws at once (a restart): their reconnects spread over the
// backoff window instead of arriving together, and all of them come back.

import { test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { Backoff, PgWs } from "../src/index.js";
import { Server, sign, until } from "./helpers.js";

test("full-jitter backoff: every delay within its ceiling, the ceiling bounded", () => {
  const b = new Backoff({ base: 100, max: 1000 });
  const ceilings = [100, 200, 400, 800, 1000, 1000, 1000];
  for (const ceiling of ceilings) {
    const d = b.next();
    assert.ok(d >= 0 && d < ceiling, `${d} < ${ceiling}`);
  }
  assert.equal(new Backoff({ base: 100, max: 1000, random: () => 0.999999 }).next(), 99);
  b.reset();
  assert.equal(b.attempt, 0);
});

test("500 clients reconnecting after a restart spread their reconnects", { timeout: 120000 }, async (t) => {
  const server = await new Server({ PGWS_PING_INTERVAL: "0" }).start();
  t.after(() => server.stop());
  const N = 500;
  const base = 1000;
  const token = sign({ mode: "r", channels: ["spread"] }, 3600);
  const clients = [];
  const attempts = []; // ms from each client's close to its first attempt
  const at = []; // ms from the restart to that attempt
  const lost = [];
  let closedAt = 0;
  for (let i = 0; i < N; i++) {
    const c = new PgWs(server.ws + "/", { token, WebSocket, backoff: { base, max: 8000 }, pingInterval: 0 });
    c.on("state", ({ state, previous }) => {
      if (!closedAt) return;
      if (state === "disconnected" && lost[i] === undefined) lost[i] = Date.now();
      if (state === "connecting" && previous === "disconnected" && attempts[i] === undefined) {
        attempts[i] = Date.now() - lost[i];
        at[i] = Date.now() - closedAt;
      }
    });
    c.subscribe("spread");
    clients.push(c);
  }
  t.after(() => clients.forEach((c) => c.close()));
  await until(() => clients.every((c) => c.state === "connected"), 60000, "all connected");

  // Stop pgws (1001 Going away to each) and start it again at once on its port.
  closedAt = Date.now();
  await server.restart();
  await until(() => clients.every((c) => c.state === "connected" && c.subscription("spread").state === "subscribed"), 60000, "all reconnected");
  const backAt = Date.now() - closedAt;

  const first = attempts.filter((a) => a !== undefined);
  assert.equal(first.length, N, "each client tried again");
  const buckets = new Array(10).fill(0);
  let late = 0; // past the window only by the event loop's lag (500 clients in one process)
  for (const a of first) {
    if (a >= base) late += 1;
    else buckets[Math.floor(a / (base / 10))] += 1;
  }
  t.diagnostic(`first reconnect attempt after the close, per ${base / 10} ms: ${buckets.join(" ")} (and ${late} later)`);
  t.diagnostic(`min ${Math.min(...first)} ms, max ${Math.max(...first)} ms after each close`);
  t.diagnostic(`attempts from ${Math.min(...at)} to ${Math.max(...at)} ms after the restart began; all back after ${backAt} ms`);
  // Uniform over [0, base): about N/10 per bucket. Together, they would all be in one.
  assert.ok(Math.max(...buckets) < N / 4, `no bucket holds a quarter: ${buckets}`);
  assert.ok(buckets.filter((b) => b > 0).length >= 8, `spread over the window: ${buckets}`);
});
