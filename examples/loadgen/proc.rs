//! The server process: starting it, and its figures from `/proc`; this process's own.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tokio::net::TcpStream;

use crate::{BoxError, opts::Opts};

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub(crate) fn raise_nofile() -> u64 {
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

pub(crate) fn spawn_server(path: &str, o: &Opts) -> std::io::Result<Child> {
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

pub(crate) async fn wait_for_port(addr: SocketAddr, limit: Duration) -> Result<(), BoxError> {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("the server did not listen on {addr} within {limit:?}").into())
}

/// The server's figures from /proc.
#[derive(Clone, Copy)]
pub(crate) struct Server {
    pub(crate) pid: Option<u32>,
}

impl Server {
    pub(crate) fn rss_kib(self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// CPU seconds used so far (user + system).
    pub(crate) fn cpu_secs(self) -> Option<f64> {
        self.cpu_split().map(|(user, system)| user + system)
    }

    /// CPU seconds used so far in user space and in the kernel.
    pub(crate) fn cpu_split(self) -> Option<(f64, f64)> {
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
    pub(crate) fn cpu_since(self, from: Option<(f64, f64)>, secs: f64) -> String {
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

    pub(crate) fn threads(self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("Threads:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

pub(crate) fn own_cpu_secs() -> f64 {
    // SAFETY: getrusage fills a local struct.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        t(ru.ru_utime) + t(ru.ru_stime)
    }
}

/// The machine's 1, 5 and 15 minute load averages: other work skews the figures.
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// pgbench running `script` over `--pool` connections for `--duration` against
/// `--db`; its output. The script goes through a temporary file named after `name`.
pub(crate) async fn pgbench(
    o: &Opts,
    name: &str,
    script: &str,
) -> std::io::Result<std::process::Output> {
    let path = std::env::temp_dir().join(format!("pgws-loadgen-{name}-{}.sql", std::process::id()));
    std::fs::write(&path, script)?;
    let out = tokio::process::Command::new("pgbench")
        .args(["-n", "-M", "prepared", "-c"])
        .arg(o.pool.to_string())
        .args(["-j", &o.pool.min(2).to_string(), "-T"])
        .arg(o.duration.as_secs().max(1).to_string())
        .arg("-f")
        .arg(&path)
        .arg(&o.db)
        .output()
        .await;
    let _ = std::fs::remove_file(&path);
    out
}
