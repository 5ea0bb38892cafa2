import WebSocket from "ws";
import { Server, sign, sql, unique, dropSchema, publishFromSql } from "./helpers.js";
const schema = unique("pgws_js");
const server = await new Server({ PGWS_HISTORY: "hist", PGWS_HISTORY_SCHEMA: schema }).start();
sql(`select ${schema}.publish('hist', '0')`);
const epoch = sql(`select epoch from ${schema}.channels where channel='hist'`).trim();
const pub = publishFromSql(schema, "hist", 300, 15);
for (const unsub of [true, false, true, false]) {
  await new Promise((r) => setTimeout(r, 700)); if (process.env.RESTART) await server.restart();
  const head = Number(sql(`select max("offset") from ${schema}.messages`).trim() || 0);
  const since = head - 10;
  const ws = new WebSocket(server.ws + "/", ["pgws.json", "pgws.bearer." + sign({ mode: "r", channels: unsub ? ["hist"] : ["hist*"] }, 60)]);
  await new Promise((r) => ws.on("open", r));
  const got = [];
  let answered = false;
  ws.on("message", (d) => { const f = JSON.parse(d); if (f.type === "subscribed") answered = true; else if (answered && f.type === "message") got.push(f.offset); });
  if (unsub) ws.send(JSON.stringify({ type: "unsubscribe", id: 1, channel: "hist" }));
  ws.send(JSON.stringify({ type: "subscribe", id: 2, channel: "hist", since: `${epoch}:${since}` }));
  await new Promise((r) => setTimeout(r, 600));
  ws.close();
  const holes = got.filter((o, i) => i > 0 && o !== got[i - 1] + 1);
  console.log(unsub ? "start channel" : "pattern grant", "since", since, "first", got[0], "n", got.length, "holes at", holes);
}
pub.child.kill();
await server.stop(); dropSchema(schema);
