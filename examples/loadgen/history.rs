//! `history-*` modes: history channels. The server must keep the history of
//! `--channel`* (`PGWS_HISTORY='bench*'`) in `PGWS_HISTORY_SCHEMA` (default
//! `pgws`), with room for what a mode publishes (`PGWS_HISTORY_SIZE`). Each run
//! uses channels of its own, named after `--channel` and the process id.
//!
//! - `history-catchup`: one socket `--behind` messages behind (10,000) resumes;
//!   the time to get them all, against the same rows read by a SQL client;
//!   then as many committed at once while a socket reads live (the listener's
//!   fetches of announced messages): the time from the commit to the last
//!   frame, and the server's CPU (give the server a `PGWS_QUEUE_LENGTH` above
//!   `--behind`, or the socket is a slow consumer).
//! - `history-resume`: `--sockets` sockets, each `--behind` behind (100), resume
//!   at once; the time until all have caught up, against the same number of
//!   plain handshakes.
//! - `history-fanout`: half the sockets read a history channel, half a plain
//!   one; messages at `--rates` (first rate, from four connections) to each in
//!   turn, twice: the server's CPU per delivery, history against plain.
//! - `history-publish`: pgbench running `select <schema>.publish(...)` against a
//!   hand-written outbox (insert + `pg_notify` in one transaction), `--pool`
//!   connections, `--duration` each, twice in turn.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{StreamExt, stream};
use postgres_protocol::escape::{escape_identifier, escape_literal};
use tokio::{net::TcpStream, task::JoinSet};
use tokio_postgres::NoTls;
use tokio_websockets::ClientBuilder;

use crate::{
    BoxError, Run,
    client::{Ws, token},
};

/// Connections publishing at once in `history-fanout`, sharing the rate.
const PUBLISHERS: usize = 4;

/// A channel of this run: `--channel`, a tag and the process id.
fn channel(base: &str, tag: &str) -> String {
    format!("{base}-{tag}-{}", std::process::id())
}

/// The store's schema, quoted: `PGWS_HISTORY_SCHEMA`, as the server has it.
fn schema() -> String {
    let name = std::env::var("PGWS_HISTORY_SCHEMA")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "pgws".into());
    escape_identifier(&name)
}

impl Run {
    /// The `history-*` mode `mode`.
    pub(crate) async fn history(&self, mode: &str) -> Result<(), BoxError> {
        let (db, conn) = tokio_postgres::connect(&self.o.db, NoTls).await?;
        tokio::spawn(conn);
        self.wait_ready().await?;
        match mode {
            "history-catchup" => self.catchup(&db).await,
            "history-resume" => self.resume(&db).await,
            "history-fanout" => self.history_fanout().await,
            _ => self.outbox(&db).await,
        }
    }

    /// Waits until the server takes sockets on history channels (its store is
    /// ready), for up to 30 s.
    async fn wait_ready(&self) -> Result<(), BoxError> {
        let (chan, token) = (
            channel(&self.o.channel, "ready"),
            token(&self.o.secret, "r"),
        );
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            match connect(self.o.addr, &chan, &token, "history=0").await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > until => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Publishes `n` messages of `--payload` bytes to `chan` in one statement;
    /// its epoch.
    async fn fill(
        &self,
        db: &tokio_postgres::Client,
        chan: &str,
        n: u64,
    ) -> Result<String, BoxError> {
        let s = schema();
        db.execute(
            &format!("select count({s}.publish($1, repeat('x', $2))) from generate_series(1, $3)"),
            &[&chan, &(self.o.payload as i32), &(n as i32)],
        )
        .await?;
        let row = db
            .query_one(
                &format!("select epoch from {s}.channels where channel = $1"),
                &[&chan],
            )
            .await?;
        Ok(row.get(0))
    }

    async fn catchup(&self, db: &tokio_postgres::Client) -> Result<(), BoxError> {
        let behind = self.o.behind.unwrap_or(10_000);
        let chan = channel(&self.o.channel, "catchup");
        let epoch = self.fill(db, &chan, behind).await?;
        let s = schema();
        let read = format!(
            "select m.\"offset\", m.payload from {s}.messages m \
             join {s}.channels c on c.id = m.channel_id \
             where c.channel = $1 and m.\"offset\" > 0 order by m.\"offset\""
        );
        let token = token(&self.o.secret, "r");
        for round in 1..=3 {
            let started = Instant::now();
            let rows = db.query(&read, &[&chan]).await?;
            let sql = started.elapsed().as_secs_f64();
            let started = Instant::now();
            let mut ws = connect(self.o.addr, &chan, &token, &format!("since={epoch}:0")).await?;
            let got = read_frames(&mut ws, behind).await;
            let took = started.elapsed().as_secs_f64();
            println!(
                "round {round}: {got}/{behind} caught up in {took:.3} s; SQL read of {} rows {sql:.3} s",
                rows.len()
            );
            println!(
                "  RESULT catchup_s={took:.3} sql_read_s={sql:.3} ratio_to_sql={:.2} ratio_to_1s_target={:.2}",
                took / sql,
                took
            );
        }
        // The same number committed at once while a socket reads live: the
        // listener fetches every announced message.
        for round in 1..=3 {
            let chan = channel(&self.o.channel, &format!("burst{round}"));
            let mut ws = connect(self.o.addr, &chan, &token, "").await?;
            let cpu0 = self.server.cpu_secs();
            let started = Instant::now();
            let fill = async {
                let r = self.fill(db, &chan, behind).await;
                (r, Instant::now())
            };
            let (got, (filled, committed)) = tokio::join!(read_frames(&mut ws, behind), fill);
            filled?;
            // From the commit to the last frame.
            let took = (started.elapsed() - (committed - started)).as_secs_f64();
            let cpu = self
                .server
                .cpu_secs()
                .zip(cpu0)
                .map_or(f64::NAN, |(b, a)| b - a);
            println!(
                "burst {round}: {got}/{behind} committed in one transaction, all delivered {took:.3} s after the commit; server CPU {cpu:.3} s"
            );
            println!("  RESULT burst_s={took:.3} burst_server_cpu_s={cpu:.3}");
        }
        Ok(())
    }

    async fn resume(&self, db: &tokio_postgres::Client) -> Result<(), BoxError> {
        let behind = self.o.behind.unwrap_or(100);
        let n = self.o.sockets;
        let chan = channel(&self.o.channel, "resume");
        let epoch = self.fill(db, &chan, behind).await?;
        let token = token(&self.o.secret, "r");
        for round in 1..=2 {
            // Baseline: as many plain handshakes, nothing to replay.
            let started = Instant::now();
            let plain = self.many(n, &chan, &token, "", 0).await;
            let plain_s = started.elapsed().as_secs_f64();
            let started = Instant::now();
            let resumed = self
                .many(n, &chan, &token, &format!("since={epoch}:0"), behind)
                .await;
            let took = started.elapsed().as_secs_f64();
            println!(
                "round {round}: {resumed}/{n} sockets caught up {behind} each in {took:.3} s; \
                 {plain}/{n} plain handshakes {plain_s:.3} s"
            );
            println!(
                "  RESULT resume_s={took:.3} handshakes_s={plain_s:.3} ratio_to_handshakes={:.2} ratio_to_3s_target={:.2}",
                took / plain_s,
                took / 3.0
            );
        }
        Ok(())
    }

    /// Opens `n` sockets to `chan` with `query`, `--concurrency` at once, each
    /// reading `frames` frames; how many got them all. All are closed at the end.
    async fn many(&self, n: usize, chan: &str, token: &str, query: &str, frames: u64) -> usize {
        let addr = self.o.addr;
        let done: Vec<Option<Ws>> = stream::iter(0..n)
            .map(|_| async move {
                let mut ws = connect(addr, chan, token, query).await.ok()?;
                (read_frames(&mut ws, frames).await == frames).then_some(ws)
            })
            .buffer_unordered(self.o.concurrency)
            .collect()
            .await;
        done.iter().filter(|w| w.is_some()).count()
    }

    async fn history_fanout(&self) -> Result<(), BoxError> {
        let rate = self.o.rates.first().copied().unwrap_or(100.0);
        let half = self.o.sockets / 2;
        let hist = channel(&self.o.channel, "fanout");
        // Not a history channel: outside `--channel`*.
        let plain = format!("plain-fanout-{}", std::process::id());
        let token = token(&self.o.secret, "r");
        let mut figures = Vec::new();
        for (chan, stored) in [
            (&hist, true),
            (&plain, false),
            (&hist, true),
            (&plain, false),
        ] {
            let delivered = Arc::new(AtomicU64::new(0));
            let mut readers = JoinSet::new();
            for _ in 0..half {
                let mut ws = connect(self.o.addr, chan, &token, "").await?;
                let delivered = delivered.clone();
                readers.spawn(async move {
                    while let Some(Ok(msg)) = ws.next().await {
                        if msg.is_text() {
                            delivered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
            let sql = if stored {
                format!("select {}.publish($1, $2)", schema())
            } else {
                "select pg_notify($1, $2)".to_owned()
            };
            let cpu0 = self.server.cpu_secs();
            let started = Instant::now();
            // Several publishers, as several application servers would be.
            let mut publishers = JoinSet::new();
            for _ in 0..PUBLISHERS {
                let (db_uri, sql, chan) = (self.o.db.clone(), sql.clone(), chan.clone());
                let (payload, duration) = ("x".repeat(self.o.payload), self.o.duration);
                publishers.spawn(async move {
                    let (db, conn) = tokio_postgres::connect(&db_uri, NoTls).await?;
                    tokio::spawn(conn);
                    let statement = db.prepare(&sql).await?;
                    let every = Duration::from_secs_f64(PUBLISHERS as f64 / rate);
                    let mut tick = tokio::time::interval(every);
                    let mut sent = 0u64;
                    while started.elapsed() < duration {
                        tick.tick().await;
                        db.execute(&statement, &[&chan, &payload]).await?;
                        sent += 1;
                    }
                    Ok::<u64, tokio_postgres::Error>(sent)
                });
            }
            let mut sent = 0;
            while let Some(n) = publishers.join_next().await {
                sent += n??;
            }
            let want = sent * half as u64;
            let until = Instant::now() + self.o.grace;
            while delivered.load(Ordering::Relaxed) < want && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let got = delivered.load(Ordering::Relaxed);
            let cpu = self.server.cpu_secs().zip(cpu0).map(|(b, a)| b - a);
            let per = cpu.map(|c| c * 1e6 / got.max(1) as f64);
            println!(
                "{}: {sent} messages x {half} sockets: {got}/{want} delivered; server CPU {:.2} s, {} µs per delivery",
                if stored { "history" } else { "plain  " },
                cpu.unwrap_or(f64::NAN),
                per.map_or("?".into(), |p| format!("{p:.2}"))
            );
            figures.push((stored, per));
            readers.abort_all();
        }
        let mean = |stored: bool| {
            let v: Vec<f64> = figures
                .iter()
                .filter(|(s, _)| *s == stored)
                .filter_map(|(_, p)| *p)
                .collect();
            v.iter().sum::<f64>() / v.len().max(1) as f64
        };
        let (h, p) = (mean(true), mean(false));
        println!(
            "  RESULT history_us_per_delivery={h:.2} plain_us_per_delivery={p:.2} ratio={:.2}",
            h / p
        );
        Ok(())
    }

    async fn outbox(&self, db: &tokio_postgres::Client) -> Result<(), BoxError> {
        let chan = channel(&self.o.channel, "publish");
        let table = format!("pgws_bench_outbox_{}", std::process::id());
        db.batch_execute(&format!(
            "create table {table} (id bigserial primary key, channel text not null, \
             payload text not null, created_at timestamptz not null default now())"
        ))
        .await?;
        let (c, p) = (
            escape_literal(&chan),
            escape_literal(&"x".repeat(self.o.payload)),
        );
        let publish = format!("select {}.publish({c}, {p});\n", schema());
        let outbox = format!(
            "begin;\ninsert into {table} (channel, payload) values ({c}, {p});\n\
             select pg_notify({c}, {p});\ncommit;\n"
        );
        let mut figures = (Vec::new(), Vec::new());
        for round in 1..=2 {
            let o = self.pgbench("outbox", &outbox).await;
            let h = self.pgbench("publish", &publish).await;
            println!("round {round}: outbox {o:.0} tx/s, publish {h:.0} tx/s");
            figures.0.push(o);
            figures.1.push(h);
        }
        db.batch_execute(&format!("drop table {table}")).await?;
        let o: f64 = figures.0.iter().sum::<f64>() / 2.0;
        let h: f64 = figures.1.iter().sum::<f64>() / 2.0;
        println!(
            "  RESULT publish_per_s={h:.0} outbox_per_s={o:.0} ratio={:.2}",
            h / o
        );
        Ok(())
    }

    /// pgbench running `script` over `--pool` connections for `--duration`: tx/s.
    async fn pgbench(&self, name: &str, script: &str) -> f64 {
        let out = crate::proc::pgbench(&self.o, name, script).await;
        let Ok(out) = out else {
            return f64::NAN;
        };
        if !out.status.success() {
            eprintln!("pgbench {name}: {}", String::from_utf8_lossy(&out.stderr));
            return f64::NAN;
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with("tps"))
            .and_then(|l| l.split_whitespace().nth(2)?.parse().ok())
            .unwrap_or(f64::NAN)
    }
}

/// One socket reading `chan`, with `query` (`since=…`) when not empty.
async fn connect(
    addr: std::net::SocketAddr,
    chan: &str,
    token: &str,
    query: &str,
) -> Result<Ws, BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let q = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    let uri = format!("ws://{addr}/{chan}/{token}{q}");
    let (ws, _) = ClientBuilder::new().uri(&uri)?.connect_on(tcp).await?;
    Ok(ws)
}

/// Reads up to `n` text frames (within 30 s); how many came.
async fn read_frames(ws: &mut Ws, n: u64) -> u64 {
    let mut got = 0;
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    while got < n {
        match tokio::time::timeout_at(until, ws.next()).await {
            Ok(Some(Ok(msg))) if msg.is_text() => got += 1,
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    got
}
