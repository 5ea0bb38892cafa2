//! The command line: modes, options and their defaults.

use std::{net::SocketAddr, str::FromStr, time::Duration};

pub(crate) const USAGE: &str = "\
usage: loadgen <fanout|channels|publish|handshakes|history-catchup|history-resume|history-fanout|history-publish> [options]
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
  --transport ws|sse      fanout/channels: WebSockets or event streams (HTTP/1.1 SSE) (default ws)
  --payload BYTES         notification payload size (default 64)
  --window N              publish: messages in flight per socket (default 4)
  --pool N                publish: pgbench connections, = the server's PGWS_POOL_SIZE (default 10)
  --pgbench               publish: measure pgbench first, same run
  --workers N             handshakes: concurrent workers (default 64)
  --behind N              history-catchup/-resume: messages to catch up (default 10000/100)
  --spawn-server PATH     start this server binary (and stop it at the end)
  --server-pid PID        the running server, for RSS and CPU
  --stop-on-fail          fanout: stop after the first step with losses or p99 over --p99-limit
  --p99-limit MS          fanout: the p99 that fails a step (default 100)";

/// What the command line asks for.
#[derive(Debug, Clone)]
pub(crate) struct Opts {
    pub(crate) mode: String,
    pub(crate) addr: SocketAddr,
    pub(crate) secret: String,
    pub(crate) db: String,
    pub(crate) sockets: usize,
    pub(crate) concurrency: usize,
    pub(crate) channel: String,
    pub(crate) rates: Vec<f64>,
    pub(crate) duration: Duration,
    pub(crate) grace: Duration,
    pub(crate) deadline: Duration,
    pub(crate) payload: usize,
    /// `--transport sse`: fanout/channels read event streams instead of WebSockets.
    pub(crate) sse: bool,
    pub(crate) window: u64,
    pub(crate) pool: usize,
    pub(crate) pgbench: bool,
    pub(crate) workers: usize,
    pub(crate) behind: Option<u64>,
    pub(crate) spawn_server: Option<String>,
    pub(crate) server_pid: Option<u32>,
    pub(crate) stop_on_fail: bool,
    pub(crate) p99_limit_ms: f64,
}

/// The mode and options from `std::env::args`; an empty error asks for the usage.
pub(crate) fn parse_args() -> Result<Opts, String> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().ok_or("missing mode")?;
    let history = mode.starts_with("history-")
        && ["catchup", "resume", "fanout", "publish"].contains(&&mode["history-".len()..]);
    if !history && !["fanout", "channels", "publish", "handshakes"].contains(&mode.as_str()) {
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
        sse: false,
        window: 4,
        pool: 10,
        pgbench: false,
        workers: 64,
        behind: None,
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
            "--transport" => {
                o.sse = match args.next().as_deref() {
                    Some("ws") => false,
                    Some("sse") => true,
                    v => return Err(format!("--transport: ws or sse, not {v:?}")),
                }
            }
            "--window" => o.window = num(&a, args.next())?,
            "--pool" => o.pool = num(&a, args.next())?,
            "--pgbench" => o.pgbench = true,
            "--workers" => o.workers = num(&a, args.next())?,
            "--behind" => o.behind = Some(num(&a, args.next())?),
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
