//! `publish`: the write path. Sockets send, a `LISTEN` connection counts the
//! NOTIFYs they become; with `--pgbench`, pgbench's rate on as many connections first.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::SinkExt;
use tokio::task::JoinSet;
use tokio_postgres::{AsyncMessage, Connection, NoTls, Socket, tls::NoTlsStream};
use tokio_websockets::Message;

use crate::{
    BoxError, Run,
    proc::own_cpu_secs,
    report::{Latencies, now_nanos, summary},
};

impl Run {
    /// The write path: sockets send, a LISTEN connection counts the NOTIFYs.
    pub(crate) async fn publish(&self) -> Result<(), BoxError> {
        let o = &self.o;
        let idle = self.rss("idle");
        let (client, conn) = tokio_postgres::connect(&o.db, NoTls).await?;
        // NOTIFY payloads seen: count, and per-socket acks for the window.
        let seen = Arc::new(AtomicU64::new(0));
        let acks: Arc<Vec<AtomicU64>> =
            Arc::new((0..o.sockets).map(|_| AtomicU64::new(0)).collect());
        let lat = Arc::new(Latencies::new());
        tokio::spawn(count_notifies(
            conn,
            seen.clone(),
            acks.clone(),
            lat.clone(),
        ));
        client
            .batch_execute(&format!(
                "LISTEN {}",
                postgres_protocol::escape::escape_identifier(&o.channel)
            ))
            .await?;

        let baseline = if o.pgbench {
            Some(self.pgbench_baseline(&seen).await?)
        } else {
            None
        };

        let (sockets, hist, took, failed) = self.open_sockets(|_| o.channel.clone(), "w").await;
        let n = sockets.len();
        println!(
            "connect: {n} sockets in {:.3} s, {failed} failed; handshake {}",
            took.as_secs_f64(),
            summary(&hist)
        );
        let connected = self.rss("connected");
        let before = seen.load(Ordering::Relaxed);
        lat.take();
        let cpu0 = self.server.cpu_split();
        let own0 = own_cpu_secs();
        let started = Instant::now();
        let stop = started + o.duration;
        let sent = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        for (s, mut ws) in sockets.into_iter().enumerate() {
            let (acks, sent, window) = (acks.clone(), sent.clone(), o.window);
            let payload = o.payload;
            tasks.spawn(async move {
                let mut seq = 0u64;
                let mut ws_open = true;
                while Instant::now() < stop && ws_open {
                    if seq.saturating_sub(acks[s].load(Ordering::Acquire)) >= window {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                        continue;
                    }
                    let mut m = format!("{s} {seq} {} ", now_nanos());
                    m.extend(std::iter::repeat_n('x', payload.saturating_sub(m.len())));
                    ws_open = ws.send(Message::text(m)).await.is_ok();
                    seq += 1;
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                ws
            });
        }
        let mut kept = Vec::new();
        while let Some(r) = tasks.join_next().await {
            if let Ok(ws) = r {
                kept.push(ws);
            }
        }
        let sent_for = started.elapsed();
        let in_window = seen.load(Ordering::Relaxed) - before;
        let total_sent = sent.load(Ordering::Relaxed);
        let wait_until = Instant::now() + o.grace;
        while seen.load(Ordering::Relaxed) - before < total_sent && Instant::now() < wait_until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let counted = seen.load(Ordering::Relaxed) - before;
        let rate = in_window as f64 / sent_for.as_secs_f64();
        let cpu = self.server.cpu_since(cpu0, sent_for.as_secs_f64());
        println!(
            "sockets: {n} x window {}: sent {total_sent} in {:.2} s, NOTIFYs counted {counted} \
             (missing {}), {rate:.0}/s; server CPU {cpu}, loadgen CPU {:.2} cores",
            o.window,
            sent_for.as_secs_f64(),
            total_sent.saturating_sub(counted),
            (own_cpu_secs() - own0) / sent_for.as_secs_f64()
        );
        println!("  latency send->NOTIFY seen: {}", summary(&lat.take()));
        if let Some(base) = baseline {
            println!(
                "  RESULT write_path_per_s={rate:.0} pgbench_per_s={base:.0} ratio={:.3}",
                rate / base
            );
        } else {
            println!("  RESULT write_path_per_s={rate:.0}");
        }
        if let (Some(a), Some(b)) = (idle, connected)
            && n > 0
        {
            println!(
                "server RSS per socket (connected - idle): {:.2} KiB",
                (b as f64 - a as f64) / n as f64
            );
        }
        self.rss("end");
        drop(kept);
        Ok(())
    }

    /// pgbench running `select pg_notify(...)` with a payload of the socket
    /// messages' envelope size over `--pool` connections: NOTIFYs per second, the
    /// higher of pgbench's own figure and what `seen` counted.
    async fn pgbench_baseline(&self, seen: &AtomicU64) -> Result<f64, BoxError> {
        let o = &self.o;
        // The socket messages and the pgbench payload have the same envelope size.
        let message = |s: usize, seq: u64| {
            let mut m = format!("{s} {seq} {} ", now_nanos());
            m.extend(std::iter::repeat_n('x', o.payload.saturating_sub(m.len())));
            m
        };
        // Numbered past the last socket, so `count_notifies` counts these NOTIFYs but
        // takes none of them for a socket's acknowledgement.
        let envelope = format!(
            "{{\"channel\":\"{}\",\"event\":\"WebsocketMessage\",\"payload\":\"{}\",\"userClaims\":{{\"mode\":\"w\",\"role\":\"bench\",\"exp\":1700000000}}}}",
            o.channel,
            message(o.sockets, 0)
        );
        let script = format!(
            "select pg_notify('{}', '{}');\n",
            o.channel.replace('\'', "''"),
            envelope.replace('\'', "''")
        );
        let before = seen.load(Ordering::Relaxed);
        let started = Instant::now();
        let out = crate::proc::pgbench(o, "publish", &script).await?;
        let took = started.elapsed();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let counted = seen.load(Ordering::Relaxed) - before;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let tps = stdout
            .lines()
            .find(|l| l.starts_with("tps"))
            .unwrap_or("tps = ?")
            .to_owned();
        if !out.status.success() {
            return Err(format!("pgbench failed: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        let counted_rate = counted as f64 / took.as_secs_f64();
        // pgbench's own figure leaves out its start-up; the higher of the two is
        // the baseline, so the ratio is never flattered.
        let pgbench_tps: f64 = tps
            .split_whitespace()
            .nth(2)
            .and_then(|t| t.parse().ok())
            .unwrap_or(0.0);
        let rate = counted_rate.max(pgbench_tps);
        println!(
            "baseline pgbench -c {} ({} byte payload): {counted} NOTIFYs counted in {:.2} s = {counted_rate:.0}/s; pgbench {tps}",
            o.pool,
            envelope.len(),
            took.as_secs_f64()
        );
        Ok(rate)
    }
}

/// Counts the NOTIFYs seen on `conn`, acknowledges each socket's messages for its
/// window, and records send → NOTIFY latency.
async fn count_notifies(
    mut conn: Connection<Socket, NoTlsStream>,
    seen: Arc<AtomicU64>,
    acks: Arc<Vec<AtomicU64>>,
    lat: Arc<Latencies>,
) {
    while let Some(msg) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
        let Ok(AsyncMessage::Notification(n)) = msg else {
            continue;
        };
        seen.fetch_add(1, Ordering::Relaxed);
        // Envelope: ..."payload":"<socket> <seq> <ns> xxx"...
        let p = n.payload();
        let Some(at) = p.find("\"payload\":\"") else {
            continue;
        };
        let mut it = p[at + 11..].split(' ');
        let (Some(s), Some(_), Some(t)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if let (Ok(s), Ok(t)) = (s.parse::<usize>(), t.parse::<u64>())
            && let Some(a) = acks.get(s)
        {
            a.fetch_add(1, Ordering::Release);
            lat.record(s, now_nanos().saturating_sub(t) / 1000);
        }
    }
}
