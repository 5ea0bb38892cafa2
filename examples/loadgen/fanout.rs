//! `fanout` (N sockets on one channel) and `channels` (a channel per socket):
//! notifications from SQL at each rate, latency and losses at the sockets.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio_postgres::NoTls;

use crate::{
    BoxError, Run,
    client::{Ws, connect_sse},
    proc::own_cpu_secs,
    report::{Latencies, now_nanos, summary},
};

/// What every reading socket shares.
#[derive(Default)]
struct Counts {
    received: AtomicU64,
    out_of_order: AtomicU64,
    closed: AtomicU64,
    errors: AtomicU64,
    open: AtomicUsize,
    /// Close codes received from the server.
    codes: Mutex<HashMap<u16, u64>>,
    /// Highest sequence number sent; frames with a smaller one are late stragglers.
    step_first_seq: AtomicI64,
}

/// Where one client's deliveries are counted and timed.
struct Tally {
    idx: usize,
    last_seq: i64,
    counts: Arc<Counts>,
    lat: Arc<Latencies>,
}

impl Tally {
    /// One delivery: `<seq> <send time in ns> <padding>`.
    fn delivery(&mut self, text: &str) {
        let now = now_nanos();
        let mut parts = text.split(' ');
        let seq: i64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(-1);
        let sent: u64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(now);
        if seq <= self.last_seq {
            self.counts.out_of_order.fetch_add(1, Ordering::Relaxed);
        }
        self.last_seq = seq;
        self.counts.received.fetch_add(1, Ordering::Relaxed);
        if seq >= self.counts.step_first_seq.load(Ordering::Relaxed) {
            self.lat.record(self.idx, now.saturating_sub(sent) / 1000);
        }
    }

    fn closed(&self, code: Option<u16>) {
        if let Some(code) = code {
            *self.counts.codes.lock().unwrap().entry(code).or_default() += 1;
        }
        self.counts.closed.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.counts.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Reads frames until the socket ends.
async fn read_socket(mut ws: Ws, mut tally: Tally) {
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(m) if m.is_text() => {
                let Some(text) = m.as_text() else { continue };
                tally.delivery(text);
            }
            Ok(m) if m.is_close() => {
                tally.closed(m.as_close().map(|(code, _)| code.into()));
                break;
            }
            Ok(_) => {}
            Err(_) => {
                tally.counts.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
}

/// Reads an event stream until it ends: each `data:` line of a default event is a
/// delivery, the data of an `event: close` its close code (PROTOCOL.md §16).
async fn read_stream(mut body: Incoming, mut tally: Tally) {
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    let mut closing = false;
    loop {
        let chunk = match body.frame().await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
            Some(Err(_)) => {
                tally.counts.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
            None => break,
        };
        buf.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(len) = buf[start..].iter().position(|&b| b == b'\n') {
            let line = buf[start..start + len]
                .strip_suffix(b"\r")
                .unwrap_or(&buf[start..start + len]);
            start += len + 1;
            let line = std::str::from_utf8(line).unwrap_or("");
            if line.is_empty() {
                closing = false;
            } else if line == "event: close" {
                closing = true;
            } else if let Some(data) = line.strip_prefix("data: ") {
                if closing {
                    let code = serde_json::from_str::<serde_json::Value>(data)
                        .ok()
                        .and_then(|v| v["code"].as_u64())
                        .map(|c| c as u16);
                    tally.closed(code);
                    return;
                }
                tally.delivery(data);
            }
        }
        buf.drain(..start);
    }
    // The body ended without a close event.
    tally.counts.errors.fetch_add(1, Ordering::Relaxed);
}

impl Run {
    /// `fanout` (one channel) or `channels` (a channel per socket).
    pub(crate) async fn fanout(&self, own_channels: bool) -> Result<(), BoxError> {
        let o = &self.o;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle = self.rss("idle");
        let base = o.channel.clone();
        let channel_of = move |i: usize| {
            if own_channels {
                format!("{base}{i}")
            } else {
                base.clone()
            }
        };
        let cpu0 = self.server.cpu_secs();
        let counts = Arc::new(Counts::default());
        let lat = Arc::new(Latencies::new());
        let tally = |idx| Tally {
            idx,
            last_seq: -1,
            counts: counts.clone(),
            lat: lat.clone(),
        };
        let (n, hist, took, failed) = if o.sse {
            let (streams, hist, took, failed) = self
                .open_many(&channel_of, "r", |addr, channel, token| async move {
                    connect_sse(addr, &channel, &token).await
                })
                .await;
            counts.open.store(streams.len(), Ordering::Relaxed);
            let n = streams.len();
            for (i, body) in streams.into_iter().enumerate() {
                tokio::spawn(read_stream(body, tally(i)));
            }
            (n, hist, took, failed)
        } else {
            let (sockets, hist, took, failed) = self.open_sockets(&channel_of, "r").await;
            counts.open.store(sockets.len(), Ordering::Relaxed);
            let n = sockets.len();
            for (i, ws) in sockets.into_iter().enumerate() {
                tokio::spawn(read_socket(ws, tally(i)));
            }
            (n, hist, took, failed)
        };
        let kind = if o.sse { "event streams" } else { "sockets" };
        println!(
            "connect: {n} {kind} in {:.3} s ({:.0}/s), {failed} failed; handshake {}",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64(),
            summary(&hist)
        );
        if let (Some(a), Some(b)) = (cpu0, self.server.cpu_secs()) {
            println!("server CPU while connecting: {:.2} s", b - a);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let connected = self.rss("connected");
        if let (Some(a), Some(b)) = (idle, connected)
            && n > 0
        {
            println!(
                "server RSS per socket (connected - idle): {:.2} KiB",
                (b as f64 - a as f64) / n as f64
            );
        }

        let (client, conn) = tokio_postgres::connect(&o.db, NoTls).await?;
        tokio::spawn(conn);
        let stmt = client.prepare("select pg_notify($1, $2)").await?;
        let mut seq: u64 = 0;
        let mut rng_state: u64 = 0x9E37_79B9_7F4A_7C15;
        for &rate in &o.rates {
            let open_before = counts.open.load(Ordering::Relaxed);
            let received0 = counts.received.load(Ordering::Relaxed);
            counts.step_first_seq.store(seq as i64, Ordering::Relaxed);
            lat.take();
            let cpu0 = self.server.cpu_split();
            let own0 = own_cpu_secs();
            let started = Instant::now();
            let mut published: u64 = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while started.elapsed() < o.duration {
                tick.tick().await;
                let due = (started.elapsed().as_secs_f64() * rate) as u64;
                let mut batch = Vec::new();
                while published < due {
                    let channel = if own_channels {
                        rng_state ^= rng_state << 13;
                        rng_state ^= rng_state >> 7;
                        rng_state ^= rng_state << 17;
                        channel_of((rng_state % n.max(1) as u64) as usize)
                    } else {
                        channel_of(0)
                    };
                    let mut payload = format!("{seq} {} ", now_nanos());
                    payload.extend(std::iter::repeat_n('x', o.payload - payload.len()));
                    batch.push((channel, payload));
                    seq += 1;
                    published += 1;
                }
                // Pipelined on the one connection, committed one by one.
                let results = futures_util::future::join_all(batch.iter().map(|(c, p)| {
                    let (client, stmt) = (&client, &stmt);
                    async move { client.execute(stmt, &[c, p]).await }
                }))
                .await;
                if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                    return Err(format!("pg_notify failed: {e}").into());
                }
            }
            let sent_for = started.elapsed();
            let expected = if own_channels {
                published
            } else {
                published * open_before as u64
            };
            let wait_until = Instant::now() + o.grace;
            while counts.received.load(Ordering::Relaxed) - received0 < expected
                && Instant::now() < wait_until
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let received = counts.received.load(Ordering::Relaxed) - received0;
            let h = lat.take();
            let missing = expected.saturating_sub(received);
            let cpu = self.server.cpu_since(cpu0, sent_for.as_secs_f64());
            let cpu_per_delivery = match (cpu0, self.server.cpu_split()) {
                (Some((u0, s0)), Some((u1, s1))) if received > 0 => {
                    format!("{:.2}", (u1 + s1 - u0 - s0) * 1e6 / received as f64)
                }
                _ => "?".into(),
            };
            println!(
                "step rate {rate}/s x {open_before} sockets: published {published} in {:.2} s; \
                 deliveries expected {expected} received {received} missing {missing}; \
                 {:.0} deliveries/s; server CPU {cpu}, loadgen CPU {:.2} cores",
                sent_for.as_secs_f64(),
                received as f64 / sent_for.as_secs_f64(),
                (own_cpu_secs() - own0) / sent_for.as_secs_f64(),
            );
            println!("  latency NOTIFY->receipt: {}", summary(&h));
            println!("  server CPU per delivery: {cpu_per_delivery} µs");
            println!(
                "  sockets open {}, closed by server {} {:?}, errors {}, out of order {}",
                counts.open.load(Ordering::Relaxed),
                counts.closed.load(Ordering::Relaxed),
                counts.codes.lock().unwrap(),
                counts.errors.load(Ordering::Relaxed),
                counts.out_of_order.load(Ordering::Relaxed)
            );
            let p99_ms = h.value_at_quantile(0.99) as f64 / 1000.0;
            let ok = missing == 0 && p99_ms <= o.p99_limit_ms;
            println!(
                "  RESULT rate={rate} sockets={open_before} deliveries_per_s={:.0} missing={missing} p99_ms={p99_ms:.2} ok={ok}",
                received as f64 / sent_for.as_secs_f64()
            );
            if o.stop_on_fail && !ok {
                break;
            }
        }
        let end = self.rss("end");
        if let (Some(a), Some(b)) = (idle, end)
            && n > 0
        {
            println!(
                "server RSS per socket (end - idle): {:.2} KiB",
                (b as f64 - a as f64) / n as f64
            );
        }
        Ok(())
    }
}
