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
//! - `--transport sse` (fanout, channels): event streams (HTTP/1.1,
//!   `Accept: text/event-stream`) instead of WebSockets, for a comparison in one run.
//! - `publish`: the reverse path. Sockets (mode `w`) send messages, a `LISTEN`
//!   connection counts the NOTIFYs they become; with `--pgbench`, pgbench running
//!   `select pg_notify(...)` over `--pool` connections is measured first, same run.
//! - `handshakes`: workers open authenticated sockets as fast as the server takes
//!   them, then reset them (no TIME_WAIT), for `--duration`.
//! - `history-catchup`, `history-resume`, `history-fanout`, `history-publish`:
//!   history channels (see the `history` module).
//!
//! Every mode reports the server's RSS (`VmRSS` of `/proc/<pid>/status`) idle,
//! connected and at the end, and the CPU it used. The server is either spawned
//! (`--spawn-server PATH`: env `PGWS_*` is passed on, `PGWS_JWT_SECRET` and
//! `PGWS_PORT` are set from `--secret` and `--addr`) or running (`--server-pid`).
//! Every run is bounded: each step by `--duration`, the whole run by `--deadline`
//! (then the spawned server is killed and the process exits with status 2).
//!
//! Modules: `opts` (the command line), `proc` (the server process and `/proc`
//! figures), `report` (clock, latency histograms, formatting), `client` (tokens and
//! sockets), and one per mode: `fanout` (also `channels`), `publish`, `handshakes`,
//! `history` (the `history-*` modes).

mod client;
mod fanout;
mod handshakes;
mod history;
mod opts;
mod proc;
mod publish;
mod report;

use std::{
    process::{Child, ExitCode},
    time::Duration,
};

use opts::{Opts, USAGE, parse_args};
use proc::{Server, loadavg, raise_nofile, spawn_server, wait_for_port};
use report::kib;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
            mode if mode.starts_with("history-") => run.history(mode).await,
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

/// One run: its options and the server it measures; each mode adds its method
/// in its own module.
pub(crate) struct Run {
    pub(crate) o: Opts,
    pub(crate) server: Server,
}

impl Run {
    pub(crate) fn new(o: Opts, pid: Option<u32>) -> Self {
        Self {
            o,
            server: Server { pid },
        }
    }

    /// Prints the server's RSS (and thread count) now, under `label`.
    pub(crate) fn rss(&self, label: &str) -> Option<u64> {
        let rss = self.server.rss_kib();
        println!(
            "server RSS {label}: {}  threads: {}",
            kib(rss),
            self.server.threads().map_or("?".into(), |t| t.to_string())
        );
        rss
    }
}
