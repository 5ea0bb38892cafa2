// Compiled by `tsc --noEmit` only: the README's usage type-checks against index.d.ts.
import { PgWs, PgWsError, type Message } from "../src/index.js";

declare const WS: import("../src/index.js").WebSocketConstructor;
const client = new PgWs("wss://example.com/ws", { getToken: async () => "a.b.c", WebSocket: WS });
const room = client.subscribe("room-7", { history: 50 });
room.on("message", (m: Message) => console.log(m.payload, m.offset ?? null));
room.on("gap", (g) => console.log(g.epoch, g.from));
room.on("subscribed", (s) => s.mayHaveMissed);
room.on("error", (e: PgWsError) => e.code);
client.on("state", ({ state }) => state === "connected");
client.publish("room-7", { text: "hi" }).catch((e: PgWsError) => e.code);
client.close();
