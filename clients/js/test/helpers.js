// Test harness: the real `pgws` program (this repository's build) against the
// real PostgreSQL on 127.0.0.1:5432, tokens signed here, messages published
// from SQL with psql. Loopback only; every wait has a deadline.

import { spawn, execFileSync } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { once } from "node:events";

export const SECRET = "a-test-secret-of-at-least-32-bytes-for-pgws-js";
// The Rust tests' setting, when it names a database (not their own `cluster`).
const configured = process.env.PGWS_TEST_DB_URI;
export const DB = configured && configured !== "cluster" ? configured : "postgres://postgres@127.0.0.1:5432/test";
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
export const BIN = process.env.PGWS_TEST_BIN ?? path.join(ROOT, "target/debug/pgws");

/** A unique name for this run (schemas, channels). */
export function unique(prefix) {
  return `${prefix}_${process.pid}_${randomBytes(3).toString("hex")}`;
}

/** An HS256 JWT with `claims` (exp in seconds from now, when `ttl` is given). */
export function sign(claims, ttl) {
  const body = { ...claims };
  if (ttl !== undefined) body.exp = Date.now() / 1000 + ttl;
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const head = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(body)}`;
  return `${head}.${createHmac("sha256", SECRET).update(head).digest("base64url")}`;
}

/** Runs SQL with psql on the test database; returns its output. */
export function sql(text) {
  return execFileSync("psql", [DB, "-qAt", "-c", "set client_min_messages=warning", "-v", "ON_ERROR_STOP=1", "-c", text], { encoding: "utf8" });
}

/** Resolves when `check()` is truthy; rejects after `ms`. */
export async function until(check, ms, what = "condition") {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * A running pgws. `env` adds to the base settings; `port` 0 takes a free
 * one (restart() reuses it).
 */
export class Server {
  constructor(env = {}) {
    this.env = {
      PGWS_DB_URI: DB,
      PGWS_JWT_SECRET: SECRET,
      PGWS_HOST: "127.0.0.1",
      PGWS_PORT: "0",
      PGWS_DEV_DB: "off",
      RUST_LOG: "warn",
      ...env,
    };
    this.log = "";
  }

  async start() {
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("PGWS_")));
    Object.assign(env, this.env, this.port ? { PGWS_PORT: String(this.port) } : {});
    const child = spawn(BIN, [], { env, stdio: ["ignore", "pipe", "pipe"] });
    this.child = child;
    // Whatever happens to the test, no pgws outlives it.
    const reap = () => child.kill("SIGKILL");
    process.once("exit", reap);
    child.once("exit", () => process.off("exit", reap));
    child.stderr.on("data", (d) => {
      this.log = (this.log + d).slice(-20000);
    });
    let out = "";
    const listening = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`pgws did not start:\n${out}\n${this.log}`)), 30000);
      child.stdout.on("data", (d) => {
        out += d;
        const m = /is listening on (http:\/\/[^\s/]+)/.exec(out);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]);
        }
      });
      child.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`pgws exited (${code}):\n${out}\n${this.log}`));
      });
    });
    const http = await listening;
    child.stdout.resume();
    this.port = Number(new URL(http).port);
    this.http = http;
    this.ws = http.replace(/^http/, "ws");
    return this;
  }

  /** Stops pgws (SIGTERM: it closes its sockets with 1001) and waits for it. */
  async stop(signal = "SIGTERM") {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, "exit");
    child.kill(signal);
    const timer = setTimeout(() => child.kill("SIGKILL"), 10000);
    await exited;
    clearTimeout(timer);
  }

  async restart() {
    await this.stop();
    // The port may linger for a moment: try again briefly.
    for (let i = 0; ; i++) {
      try {
        return await this.start();
      } catch (err) {
        if (i >= 20) throw err;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }
}

/**
 * Publishes `count` messages "1".."count" to a history channel from SQL, one
 * commit each, every `pauseMs`: a psql process that runs until done.
 */
export function publishFromSql(schema, channel, count, pauseMs) {
  const body = `do $$ begin for i in 1..${count} loop perform ${schema}.publish('${channel}', i::text); commit; perform pg_sleep(${pauseMs / 1000}); end loop; end $$;`;
  const child = spawn("psql", [DB, "-qAt", "-v", "ON_ERROR_STOP=1", "-c", body], { stdio: ["ignore", "ignore", "pipe"] });
  let err = "";
  child.stderr.on("data", (d) => (err += d));
  const done = new Promise((resolve, reject) => {
    child.once("exit", (code) => (code === 0 ? resolve() : reject(new Error(`publisher failed: ${err}`))));
  });
  return { child, done };
}

/** Drops a test's history schema. */
export function dropSchema(schema) {
  sql(`drop schema if exists ${schema} cascade`);
}
