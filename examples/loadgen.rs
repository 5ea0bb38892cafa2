//! Load generator: drives a running pgws server from another process over loopback.
//!
//! ```text
//! cargo build --release --features server --bin pgws --example loadgen
//! target/release/examples/loadgen fanout --sockets 10000 --rates 20,50 \
//!     --spawn-server target/release/pgws
//! ```
//!
//! Modes (see BENCHMARKS.md for the figures and `benches/run-load.sh` for the runs):
//! - `fanout`: N sockets read one channel; notifications are published from SQL at
//!   each rate of `--rates` in turn, each carrying its send time and a sequence number.
//! - `channels`: each socket reads its own channel; notifications go to random ones.
//! - `publish`: the reverse path. Sockets (mode `w`) send messages, a `LISTEN`
//!   connection counts the NOTIFYs they become; with `--pgbench`, pgbench running
//!   `select pg_notify(...)` over `--pool` connections is measured first, same run.
//! - `handshakes`: workers open authenticated sockets as fast as the server takes
//!   them, then reset them (no TIME_WAIT), for `--duration`.
//!
//! Every mode reports the server's RSS (`VmRSS` of `/proc/<pid>/status`) idle,
//! connected and at the end, and the CPU it used. The server is either spawned
//! (`--spawn-server PATH`: env `PGWS_*` is passed on, `PGWS_JWT_SECRET` and
//! `PGWS_PORT` are set from `--secret` and `--addr`) or running (`--server-pid`).
//! Every run is bounded: each step by `--duration`, the whole run by `--deadline`
//! (then the spawned server is killed and the process exits with status 2).

use std::{
    collections::HashMap,
    fmt::Write as _,
    net::SocketAddr,
    process::{Child, Command, ExitCode, Stdio},
    str::FromStr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures_util::{SinkExt, StreamExt, stream};
use hdrhistogram::Histogram;
use tokio::{net::TcpStream, task::JoinSet};
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_websockets::{ClientBuilder, Message, WebSocketStream};

type Ws = WebSocketStream<TcpStream>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "\
usage: loadgen <fanout|channels|publish|handshakes> [options]
  --addr HOST:PORT        server address (default 127.0.0.1:3000)
  --secret S              JWT secret (default $PGWS_JWT_SECRET or reallyreallyreallyreallyverysafe)
  --db URI                PostgreSQL for publishing/listening (default $PGWS_DB_URI or postgres://postgres@127.0.0.1:5432/postgres)
  --sockets N             sockets to open (default 1000)
  --concurrency N         handshakes in flight while connecting (default 256)
  --channel NAME          channel of fanout/publish/handshakes (default bench)
  --rates R[,R...]        notifications/s, one step each (fanout default 20; channels default 1000)
  --duration S            seconds per step (default 10)
  --grace S               seconds to wait for stragglers after a step (default 3)
  --deadline S            seconds for the whole run, then exit 2 (default 300)
  --payload BYTES         notification payload size (default 64)
  --window N              publish: messages in flight per socket (default 4)
  --pool N                publish: pgbench connections, = the server's PGWS_POOL_SIZE (default 10)
  --pgbench               publish: measure pgbench first, same run
  --workers N             handshakes: concurrent workers (default 64)
  --spawn-server PATH     start this server binary (and stop it at the end)
  --server-pid PID        the running server, for RSS and CPU
  --stop-on-fail          fanout: stop after the first step with losses or p99 over --p99-limit
  --p99-limit MS          fanout: the p99 that fails a step (default 100)";

#[derive(Debug, Clone)]
struct Opts {
    mode: String,
    addr: SocketAddr,
    secret: String,
    db: String,
    sockets: usize,
    concurrency: usize,
    channel: String,
    rates: Vec<f64>,
    duration: Duration,
    grace: Duration,
    deadline: Duration,
    payload: usize,
    window: u64,
    pool: usize,
    pgbench: bool,
    workers: usize,
    spawn_server: Option<String>,
    server_pid: Option<u32>,
    stop_on_fail: bool,
    p99_limit_ms: f64,
}

fn parse_args() -> Result<Opts, String> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().ok_or("missing mode")?;
    if !["fanout", "channels", "publish", "handshakes"].contains(&mode.as_str()) {
        return Err(format!("unknown mode {mode:?}"));
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let mut o = Opts {
        rates: if mode == "channels" {
            vec![1000.0]
        } else {
            vec![20.0]
        },
        mode,
        addr: "127.0.0.1:3000".parse().unwrap(),
        secret: env("PGWS_JWT_SECRET").unwrap_or_else(|| "reallyreallyreallyreallyverysafe".into()),
        db: env("PGWS_DB_URI")
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into()),
        sockets: 1000,
        concurrency: 256,
        channel: "bench".into(),
        duration: Duration::from_secs(10),
        grace: Duration::from_secs(3),
        deadline: Duration::from_secs(300),
        payload: 64,
        window: 4,
        pool: 10,
        pgbench: false,
        workers: 64,
        spawn_server: None,
        server_pid: None,
        stop_on_fail: false,
        p99_limit_ms: 100.0,
    };
    fn num<T: FromStr>(name: &str, v: Option<String>) -> Result<T, String> {
        let v = v.ok_or(format!("{name} needs a value"))?;
        v.parse().map_err(|_| format!("{name}: bad value {v:?}"))
    }
    let secs = |name: &str, v: Option<String>| num::<f64>(name, v).map(Duration::from_secs_f64);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--addr" => o.addr = num(&a, args.next())?,
            "--secret" => o.secret = args.next().ok_or("--secret needs a value")?,
            "--db" => o.db = args.next().ok_or("--db needs a value")?,
            "--sockets" => o.sockets = num(&a, args.next())?,
            "--concurrency" => o.concurrency = num(&a, args.next())?,
            "--channel" => o.channel = args.next().ok_or("--channel needs a value")?,
            "--rates" => {
                o.rates = args
                    .next()
                    .ok_or("--rates needs a value")?
                    .split(',')
                    .map(|r| r.trim().parse().map_err(|_| format!("--rates: bad {r:?}")))
                    .collect::<Result<_, _>>()?
            }
            "--duration" => o.duration = secs(&a, args.next())?,
            "--grace" => o.grace = secs(&a, args.next())?,
            "--deadline" => o.deadline = secs(&a, args.next())?,
            "--payload" => o.payload = num(&a, args.next())?,
            "--window" => o.window = num(&a, args.next())?,
            "--pool" => o.pool = num(&a, args.next())?,
            "--pgbench" => o.pgbench = true,
            "--workers" => o.workers = num(&a, args.next())?,
            "--spawn-server" => o.spawn_server = args.next(),
            "--server-pid" => o.server_pid = Some(num(&a, args.next())?),
            "--stop-on-fail" => o.stop_on_fail = true,
            "--p99-limit" => o.p99_limit_ms = num(&a, args.next())?,
            "-h" | "--help" => return Err(String::new()),
            _ => return Err(format!("unknown option {a:?}")),
        }
    }
    if o.payload < 48 || o.payload >= 8000 {
        return Err("--payload: 48 to 7999 bytes".into());
    }
    Ok(o)
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("loadgen: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    let files = raise_nofile();
    println!(
        "mode: {}  loadgen RLIMIT_NOFILE: {files}  load average: {}",
        opts.mode,
        loadavg()
    );
    let mut server = match &opts.spawn_server {
        Some(path) => match spawn_server(path, &opts) {
            Ok(child) => Some(child),
            Err(e) => {
                eprintln!("loadgen: cannot start {path}: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let pid = server.as_ref().map(Child::id).or(opts.server_pid);
    // The overall deadline: whatever happens, the run ends.
    let deadline = opts.deadline;
    let server_pid = server.as_ref().map(Child::id);
    std::thread::spawn(move || {
        std::thread::sleep(deadline);
        eprintln!("loadgen: deadline of {deadline:?} reached; stopping");
        if let Some(pid) = server_pid {
            // SAFETY: signalling the child this process started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        std::process::exit(2);
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let result = rt.block_on(async {
        if server.is_some() {
            wait_for_port(opts.addr, Duration::from_secs(15)).await?;
        }
        let run = Run::new(opts.clone(), pid);
        match opts.mode.as_str() {
            "fanout" => run.fanout(false).await,
            "channels" => run.fanout(true).await,
            "publish" => run.publish().await,
            "handshakes" => run.handshakes().await,
            _ => unreachable!("checked by parse_args"),
        }
    });
    if let Some(child) = &mut server {
        // SAFETY: signalling the child this process started; SIGTERM lets it drain.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    println!("load average at the end: {}", loadavg());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
fn raise_nofile() -> u64 {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur
    }
}

fn spawn_server(path: &str, o: &Opts) -> std::io::Result<Child> {
    let mut cmd = Command::new(path);
    cmd.env("PGWS_JWT_SECRET", &o.secret)
        .env("PGWS_HOST", o.addr.ip().to_string())
        .env("PGWS_PORT", o.addr.port().to_string())
        .env("PGWS_DB_URI", &o.db)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "warn");
    }
    cmd.spawn()
}

async fn wait_for_port(addr: SocketAddr, limit: Duration) -> Result<(), BoxError> {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("the server did not listen on {addr} within {limit:?}").into())
}

// ---------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

/// Latencies in microseconds, sharded so thousands of tasks can record at once.
struct Latencies {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Latencies {
    fn new() -> Self {
        let shards = (0..64)
            .map(|_| Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3).unwrap()))
            .collect();
        Self { shards }
    }

    fn record(&self, shard: usize, micros: u64) {
        let mut h = self.shards[shard % self.shards.len()].lock().unwrap();
        h.saturating_record(micros.max(1));
    }

    fn take(&self) -> Histogram<u64> {
        let mut all = Histogram::new_with_bounds(1, 120_000_000, 3).unwrap();
        for s in &self.shards {
            let mut h = s.lock().unwrap();
            all.add(&*h).unwrap();
            h.reset();
        }
        all
    }
}

fn summary(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no samples".into();
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  (n={})",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0,
        h.len()
    )
}

/// The server's figures from /proc.
#[derive(Clone, Copy)]
struct Server {
    pid: Option<u32>,
}

impl Server {
    fn rss_kib(self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// CPU seconds used so far (user + system).
    fn cpu_secs(self) -> Option<f64> {
        self.cpu_split().map(|(user, system)| user + system)
    }

    /// CPU seconds used so far in user space and in the kernel.
    fn cpu_split(self) -> Option<(f64, f64)> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid?)).ok()?;
        let after = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let user = f.get(11)?.parse::<f64>().ok()? / hz;
        let system = f.get(12)?.parse::<f64>().ok()? / hz;
        Some((user, system))
    }

    /// "x.xx cores (yy% in the kernel)" since `from`, over `secs`.
    fn cpu_since(self, from: Option<(f64, f64)>, secs: f64) -> String {
        match (from, self.cpu_split()) {
            (Some((u0, s0)), Some((u1, s1))) => {
                let (u, s) = (u1 - u0, s1 - s0);
                format!(
                    "{:.2} cores ({:.0}% in the kernel)",
                    (u + s) / secs,
                    100.0 * s / (u + s).max(1e-9)
                )
            }
            _ => "?".into(),
        }
    }

    fn threads(self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("Threads:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

fn own_cpu_secs() -> f64 {
    // SAFETY: getrusage fills a local struct.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        t(ru.ru_utime) + t(ru.ru_stime)
    }
}

/// The machine's 1, 5 and 15 minute load averages: other work skews the figures.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn kib(v: Option<u64>) -> String {
    v.map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

// ---------------------------------------------------------------------------
// Sockets
// ---------------------------------------------------------------------------

fn token(secret: &str, mode: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({ "mode": mode, "role": "bench", "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signs")
}

/// Opens one authenticated socket reading or writing `channel`.
async fn connect(addr: SocketAddr, channel: &str, token: &str) -> Result<Ws, BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let uri = format!("ws://{addr}/{channel}/{token}");
    let (ws, _) = ClientBuilder::new().uri(&uri)?.connect_on(tcp).await?;
    Ok(ws)
}

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

/// Reads frames until the socket ends: `<seq> <send time in ns> <padding>`.
async fn read_socket(mut ws: Ws, idx: usize, counts: Arc<Counts>, lat: Arc<Latencies>) {
    let mut last_seq: i64 = -1;
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(m) if m.is_text() => {
                let now = now_nanos();
                let Some(text) = m.as_text() else { continue };
                let mut parts = text.split(' ');
                let seq: i64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(-1);
                let sent: u64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(now);
                if seq <= last_seq {
                    counts.out_of_order.fetch_add(1, Ordering::Relaxed);
                }
                last_seq = seq;
                counts.received.fetch_add(1, Ordering::Relaxed);
                if seq >= counts.step_first_seq.load(Ordering::Relaxed) {
                    lat.record(idx, now.saturating_sub(sent) / 1000);
                }
            }
            Ok(m) if m.is_close() => {
                if let Some((code, _)) = m.as_close() {
                    *counts.codes.lock().unwrap().entry(code.into()).or_default() += 1;
                }
                counts.closed.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Ok(_) => {}
            Err(_) => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
    counts.open.fetch_sub(1, Ordering::Relaxed);
}

struct Run {
    o: Opts,
    server: Server,
}

impl Run {
    fn new(o: Opts, pid: Option<u32>) -> Self {
        Self {
            o,
            server: Server { pid },
        }
    }

    fn rss(&self, label: &str) -> Option<u64> {
        let rss = self.server.rss_kib();
        println!(
            "server RSS {label}: {}  threads: {}",
            kib(rss),
            self.server.threads().map_or("?".into(), |t| t.to_string())
        );
        rss
    }

    /// Opens `self.o.sockets` sockets, `concurrency` handshakes at a time.
    async fn open_sockets(
        &self,
        channel_of: impl Fn(usize) -> String,
        mode: &str,
    ) -> (Vec<Ws>, Histogram<u64>, Duration, usize) {
        let token = token(&self.o.secret, mode);
        let addr = self.o.addr;
        let started = Instant::now();
        let results: Vec<(usize, Result<Ws, BoxError>, u64)> =
            stream::iter((0..self.o.sockets).map(|i| {
                let channel = channel_of(i);
                let token = token.clone();
                async move {
                    let t = Instant::now();
                    let r = connect(addr, &channel, &token).await;
                    (i, r, t.elapsed().as_micros() as u64)
                }
            }))
            .buffered(self.o.concurrency)
            .collect()
            .await;
        let took = started.elapsed();
        let mut hist = Histogram::new_with_bounds(1, 120_000_000, 3).unwrap();
        let mut sockets = Vec::with_capacity(results.len());
        let mut failed = 0;
        let mut first_error = None;
        for (_, r, us) in results {
            hist.saturating_record(us.max(1));
            match r {
                Ok(ws) => sockets.push(ws),
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
        if let Some(e) = first_error {
            eprintln!("{failed} handshakes failed; the first: {e}");
        }
        (sockets, hist, took, failed)
    }

    /// `fanout` (one channel) or `channels` (a channel per socket).
    async fn fanout(&self, own_channels: bool) -> Result<(), BoxError> {
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
        let (sockets, hist, took, failed) = self.open_sockets(&channel_of, "r").await;
        let n = sockets.len();
        println!(
            "connect: {n} sockets in {:.3} s ({:.0}/s), {failed} failed; handshake {}",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64(),
            summary(&hist)
        );
        if let (Some(a), Some(b)) = (cpu0, self.server.cpu_secs()) {
            println!("server CPU while connecting: {:.2} s", b - a);
        }
        let counts = Arc::new(Counts::default());
        let lat = Arc::new(Latencies::new());
        counts.open.store(n, Ordering::Relaxed);
        for (i, ws) in sockets.into_iter().enumerate() {
            tokio::spawn(read_socket(ws, i, counts.clone(), lat.clone()));
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
            println!(
                "step rate {rate}/s x {open_before} sockets: published {published} in {:.2} s; \
                 deliveries expected {expected} received {received} missing {missing}; \
                 {:.0} deliveries/s; server CPU {cpu}, loadgen CPU {:.2} cores",
                sent_for.as_secs_f64(),
                received as f64 / sent_for.as_secs_f64(),
                (own_cpu_secs() - own0) / sent_for.as_secs_f64(),
            );
            println!("  latency NOTIFY->receipt: {}", summary(&h));
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

    /// The write path: sockets send, a LISTEN connection counts the NOTIFYs.
    async fn publish(&self) -> Result<(), BoxError> {
        let o = &self.o;
        let idle = self.rss("idle");
        let (client, mut conn) = tokio_postgres::connect(&o.db, NoTls).await?;
        // NOTIFY payloads seen: count, and per-socket acks for the window.
        let seen = Arc::new(AtomicU64::new(0));
        let acks: Arc<Vec<AtomicU64>> =
            Arc::new((0..o.sockets).map(|_| AtomicU64::new(0)).collect());
        let lat = Arc::new(Latencies::new());
        {
            let (seen, acks, lat) = (seen.clone(), acks.clone(), lat.clone());
            tokio::spawn(async move {
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
            });
        }
        client
            .batch_execute(&format!(
                "LISTEN {}",
                postgres_protocol::escape::escape_identifier(&o.channel)
            ))
            .await?;

        // The socket messages and the pgbench payload have the same envelope size.
        let message = |s: usize, seq: u64| {
            let mut m = format!("{s} {seq} {} ", now_nanos());
            m.extend(std::iter::repeat_n('x', o.payload.saturating_sub(m.len())));
            m
        };
        let mut baseline = None;
        if o.pgbench {
            let envelope = format!(
                "{{\"channel\":\"{}\",\"event\":\"WebsocketMessage\",\"payload\":\"{}\",\"userClaims\":{{\"mode\":\"w\",\"role\":\"bench\",\"exp\":1700000000}}}}",
                o.channel,
                message(0, 0)
            );
            let script =
                std::env::temp_dir().join(format!("pgws-loadgen-{}.sql", std::process::id()));
            std::fs::write(
                &script,
                format!(
                    "select pg_notify('{}', '{}');\n",
                    o.channel.replace('\'', "''"),
                    envelope.replace('\'', "''")
                ),
            )?;
            let before = seen.load(Ordering::Relaxed);
            let started = Instant::now();
            let out = tokio::process::Command::new("pgbench")
                .args(["-n", "-M", "prepared", "-c"])
                .arg(o.pool.to_string())
                .args(["-j", &o.pool.min(2).to_string(), "-T"])
                .arg(o.duration.as_secs().max(1).to_string())
                .arg("-f")
                .arg(&script)
                .arg(&o.db)
                .output()
                .await?;
            let took = started.elapsed();
            let _ = std::fs::remove_file(&script);
            tokio::time::sleep(Duration::from_millis(500)).await;
            let counted = seen.load(Ordering::Relaxed) - before;
            let stdout = String::from_utf8_lossy(&out.stdout);
            let tps = stdout
                .lines()
                .find(|l| l.starts_with("tps"))
                .unwrap_or("tps = ?")
                .to_owned();
            if !out.status.success() {
                return Err(
                    format!("pgbench failed: {}", String::from_utf8_lossy(&out.stderr)).into(),
                );
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
            baseline = Some(rate);
        }

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
                    if seq - acks[s].load(Ordering::Acquire) >= window {
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

    /// New authenticated sockets per second, each reset once it is open.
    async fn handshakes(&self) -> Result<(), BoxError> {
        let o = &self.o;
        let token = token(&self.o.secret, "r");
        // One socket holds the channel, so the churn does not LISTEN/UNLISTEN it.
        let _anchor = connect(o.addr, &o.channel, &token).await?;
        self.rss("idle (1 anchor socket)");
        let done = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let errors: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        let lat = Arc::new(Latencies::new());
        let cpu0 = self.server.cpu_split();
        let own0 = own_cpu_secs();
        let started = Instant::now();
        let stop = started + o.duration;
        let mut tasks = JoinSet::new();
        for w in 0..o.workers {
            let (done, failed, errors, lat, token) = (
                done.clone(),
                failed.clone(),
                errors.clone(),
                lat.clone(),
                token.clone(),
            );
            let (addr, channel) = (o.addr, o.channel.clone());
            tasks.spawn(async move {
                while Instant::now() < stop {
                    let t = Instant::now();
                    match connect(addr, &channel, &token).await {
                        Ok(ws) => {
                            lat.record(w, t.elapsed().as_micros() as u64);
                            done.fetch_add(1, Ordering::Relaxed);
                            // A reset, not a close: no TIME_WAIT to run out of ports.
                            let tcp = ws.into_inner();
                            let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
                            drop(tcp);
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            *errors.lock().unwrap().entry(e.to_string()).or_default() += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let took = started.elapsed();
        let n = done.load(Ordering::Relaxed);
        let cpu = self.server.cpu_since(cpu0, took.as_secs_f64());
        println!(
            "handshakes: {n} in {:.2} s = {:.0}/s with {} workers, {} failed; server CPU {cpu}, loadgen CPU {:.2} cores",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64(),
            o.workers,
            failed.load(Ordering::Relaxed),
            (own_cpu_secs() - own0) / took.as_secs_f64()
        );
        println!("  handshake latency: {}", summary(&lat.take()));
        let mut report = String::new();
        for (e, c) in errors.lock().unwrap().iter() {
            let _ = writeln!(report, "  error x{c}: {e}");
        }
        print!("{report}");
        println!(
            "  RESULT handshakes_per_s={:.0}",
            n as f64 / took.as_secs_f64()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.rss("end");
        Ok(())
    }
}
