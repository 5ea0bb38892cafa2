//! The `pgws` program itself, as `cargo install` puts it: spawned with the
//! variables a test gives, its start-up report read from stdout.

use std::{
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

/// A running `pgws`; killed on drop.
pub struct Program {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
    /// The start-up report as read so far.
    pub report: String,
}

impl Program {
    /// Starts `pgws` on 127.0.0.1 and a free port with `vars` and no other `PGWS_*`
    /// variable, then reads its report up to the line `last` says ends it. The
    /// program is this build's, or the one `PGWS_TEST_BIN` names (a release build).
    pub fn start(vars: &[(&str, &str)], last: impl Fn(&str) -> bool) -> Program {
        let exe = std::env::var_os("PGWS_TEST_BIN").unwrap_or(env!("CARGO_BIN_EXE_pgws").into());
        let mut cmd = Command::new(exe);
        for (name, _) in std::env::vars() {
            if name.starts_with("PGWS_") {
                cmd.env_remove(name);
            }
        }
        cmd.env("PGWS_HOST", "127.0.0.1")
            .env("PGWS_PORT", "0")
            .env("RUST_LOG", "info")
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("the pgws program starts");
        let (tx, lines) = mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut program = Program {
            child,
            lines,
            stderr,
            report: String::new(),
        };
        program.read_report(last);
        program
    }

    fn read_report(&mut self, last: impl Fn(&str) -> bool) {
        // Making a development database runs initdb: allow for a slow machine.
        let deadline = Instant::now() + super::WAIT * 6;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.report.push_str(&line);
                    self.report.push('\n');
                    if last(&line) {
                        return;
                    }
                }
                Err(_) => panic!(
                    "no complete start-up report; stdout:\n{}\nstderr:\n{}",
                    self.report,
                    self.stderr()
                ),
            }
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Where it listens, from the report's first line.
    pub fn addr(&self) -> SocketAddr {
        let rest = self
            .report
            .split("is listening on http://")
            .nth(1)
            .unwrap_or_else(|| panic!("no address in the report:\n{}", self.report));
        rest.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// The argument of the report's line `<label> <value>`.
    pub fn value_after(&self, label: &str) -> Option<String> {
        let line = self.report.lines().find(|l| l.starts_with(label))?;
        Some(line[label.len()..].trim().to_owned())
    }

    /// SIGTERM, then its exit status.
    pub fn terminate(mut self) -> ExitStatus {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill has no memory preconditions; the pid is our own child's.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        self.wait()
    }

    /// SIGKILL: no clean-up of any kind.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.wait();
    }

    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + super::WAIT * 3;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "pgws did not exit; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
