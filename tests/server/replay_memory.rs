//! The history replay attack of issue 21, at a reduced scale, against the `pgws`
//! program: a token stores large messages that escaping doubles, then sockets
//! and event streams ask for all of them and never read. The process's peak
//! memory must stay within the bound of PROTOCOL.md §12, and a client that
//! reads must still get every message, in order, once the others are gone.

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::Value;
use tokio_websockets::{ClientBuilder, Message};

use crate::common::{program::Program, stalled::*, *};

/// 150 messages of 65,000 `"`: stored as 130 KB (the envelope escapes them),
/// replayed as 260 KB frames (and the replay's JSON again), 39 MB per replay.
const MESSAGES: usize = 150;
const QUOTES: usize = 65_000;
const SOCKETS: usize = 10;
const STREAMS: usize = 5;
/// A replayed frame, at most: each `"` is 4 bytes once escaped twice.
const FRAME: usize = 4 * QUOTES + 1024;
/// `PGWS_REPLAY_BUDGET` here, and the page it is taken by.
const BUDGET: usize = 8 << 20;
const PAGE: usize = 1 << 20;
/// `PGWS_QUEUE_BYTES` here, and a write batch (64 KiB and one frame).
const QUEUE: usize = 64 << 10;
const BATCH: usize = (64 << 10) + FRAME;
/// What the HTTP server (hyper) holds for an event stream's connection, at most:
/// its write buffer (8 KiB + 400 KiB) and the chunk that passed it (64 KiB).
const HTTP_BUFFER: usize = (8 + 400 + 64) << 10;
/// What the bound does not count: the allocator's own overhead and the memory it
/// keeps after a free, the database connections' buffers, the runtime's.
const MARGIN: usize = 32 << 20;

/// PROTOCOL.md §12's worst case with this test's settings: ⌊B / P⌋ pages of
/// at most 2 × P each (no frame is larger than a page), a queue and a write
/// batch per client, and the HTTP server's buffer of each event stream.
fn documented_bound() -> usize {
    let replays = BUDGET / PAGE * 2 * PAGE.max(FRAME);
    replays + (SOCKETS + STREAMS) * (QUEUE + BATCH) + STREAMS * HTTP_BUFFER
}

/// A field of `/proc/<pid>/status`, in bytes.
fn status_bytes(pid: u32, field: &str) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in {status}"));
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_to_clients_that_never_read_stay_within_the_documented_bound() {
    let schema = unique("replay_mem");
    let _drop = SchemaGuard(schema.clone());
    let pgws = start(schema.clone()).await;
    let pid = pgws.pid();
    let chan = unique("mem");
    let count = format!("select count(*) from {}.messages", postgres_quote(&schema));
    let db = db().await;
    until(async || db.query_one(&count, &[]).await.is_ok()).await;

    // The attack's writes, through a socket.
    let url = format!("ws://{}/{}", pgws.addr(), token(claims("w", Some(&chan))));
    let (mut writer, _) = ClientBuilder::from_uri(url.parse().unwrap())
        .connect()
        .await
        .unwrap();
    let quotes = "\"".repeat(QUOTES);
    for _ in 0..MESSAGES {
        writer.send(Message::text(quotes.clone())).await.unwrap();
    }
    until(async || {
        let n: i64 = db.query_one(&count, &[]).await.unwrap().get(0);
        n == MESSAGES as i64
    })
    .await;

    // Then clients that ask for all of it and never read.
    let before = status_bytes(pid, "VmRSS:");
    let path = format!("/{}?history={MESSAGES}", token(claims("r", Some(&chan))));
    let mut hogs = Vec::new();
    for _ in 0..STREAMS {
        hogs.push(stream_that_never_reads(pgws.addr(), &path).await);
    }
    for _ in 0..SOCKETS {
        hogs.push(socket_that_never_reads(pgws.addr(), &path).await);
    }
    // Long enough for every replay to get pages under the budget, for the first
    // ones to be let go at their write deadline (2 s) and the next to start.
    let mut sampled = 0;
    let until_then = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until_then {
        sampled = sampled.max(status_bytes(pid, "VmRSS:"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let peak = status_bytes(pid, "VmHWM:").max(sampled);
    let grown = peak.saturating_sub(before);
    let bound = documented_bound();
    eprintln!(
        "RSS {} MiB before, peak {} MiB: grown {} MiB; bound {} MiB + margin {} MiB",
        before >> 20,
        peak >> 20,
        grown >> 20,
        bound >> 20,
        MARGIN >> 20
    );
    assert!(
        grown <= bound + MARGIN,
        "RSS grew by {} MiB, over the bound of {} MiB and the margin of {} MiB",
        grown >> 20,
        bound >> 20,
        MARGIN >> 20
    );

    // Nothing was refused for good: once the others are gone, a reader gets
    // every message, in order.
    drop(hogs);
    let url = format!("ws://{}{path}", pgws.addr());
    let (mut reader, _) = ClientBuilder::from_uri(url.parse().unwrap())
        .connect()
        .await
        .unwrap();
    for offset in 1..=MESSAGES as i64 {
        let text = tokio::time::timeout(WAIT * 2, recv_text(&mut reader))
            .await
            .expect("the replay never came");
        let frame: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(frame["offset"], offset);
        let payload: Value = serde_json::from_str(frame["payload"].as_str().unwrap()).unwrap();
        assert_eq!(payload["payload"].as_str(), Some(quotes.as_str()));
    }
}

/// The program with history on `mem_*` in `schema`, a budget of 8 pages, queues
/// of 64 KiB and write deadlines (pings) every 2 s.
async fn start(schema: String) -> Program {
    tokio::task::spawn_blocking(move || {
        let uri = db_uri();
        let (budget, queue) = (BUDGET.to_string(), QUEUE.to_string());
        let vars = [
            ("PGWS_DB_URI", uri.as_str()),
            ("PGWS_JWT_SECRET", SECRET),
            ("PGWS_HISTORY", "mem_*"),
            ("PGWS_HISTORY_SCHEMA", schema.as_str()),
            ("PGWS_REPLAY_BUDGET", budget.as_str()),
            ("PGWS_QUEUE_BYTES", queue.as_str()),
            ("PGWS_PING_INTERVAL", "2"),
            ("RUST_LOG", "warn"),
        ];
        Program::start(&vars, |line| line.starts_with("  Admin:"))
    })
    .await
    .unwrap()
}

/// Polls `ok` until it holds, within [`WAIT`] times 3.
async fn until(mut ok: impl AsyncFnMut() -> bool) {
    tokio::time::timeout(WAIT * 3, async {
        while !ok().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("never");
}

/// Drops the test's store at the end, even after a panic.
struct SchemaGuard(String);

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let schema = postgres_quote(&self.0);
        cleanup_sql(vec![format!("drop schema if exists {schema} cascade")]);
    }
}
