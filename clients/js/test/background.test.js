// A page frozen like a background tab (its process stopped) while messages are
// published and pgws drops its socket: once it runs again it has every message
// of its history channel exactly once, in order.

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { Server, dropSchema, publishFromSql, sign, unique, until } from "./helpers.js";

test("a frozen tab wakes up with every history message exactly once", { timeout: 60000 }, async (t) => {
  const schema = unique("pgws_js");
  // Pings every second: pgws gives up on the frozen socket after about two.
  const server = await new Server({ PGWS_HISTORY: "hist", PGWS_HISTORY_SCHEMA: schema, PGWS_PING_INTERVAL: "1" }).start();
  t.after(async () => {
    await server.stop();
    dropSchema(schema);
  });
  const tab = spawn(process.execPath, [fileURLToPath(new URL("./fixtures/tab.js", import.meta.url)), server.ws + "/", sign({ mode: "r", channels: ["hist"] }, 3600)], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  t.after(() => {
    tab.kill("SIGCONT");
    tab.kill("SIGTERM");
  });
  const lines = [];
  let rest = "";
  tab.stdout.on("data", (d) => {
    const parts = (rest + d).split("\n");
    rest = parts.pop();
    lines.push(...parts);
  });
  const got = () => lines.filter((l) => l.startsWith("message ")).map((l) => l.slice(8));
  await until(() => lines.includes("subscribed"), 10000, "the tab subscribed");

  const total = 300;
  const publisher = publishFromSql(schema, "hist", total, 20);
  t.after(() => publisher.child.kill());
  await until(() => got().length >= 50, 10000, "messages before the freeze");
  tab.kill("SIGSTOP");
  await publisher.done; // about five seconds asleep while the rest is published
  tab.kill("SIGCONT");
  await until(() => got().length >= total, 20000, "every message after waking");
  await new Promise((r) => setTimeout(r, 300));
  t.diagnostic(lines.filter((l) => !l.startsWith("message ")).join(", "));
  assert.ok(lines.filter((l) => l === "state connected").length >= 2, "the dead socket was replaced");
  assert.deepEqual(got(), Array.from({ length: total }, (_, i) => String(i + 1)));
});
