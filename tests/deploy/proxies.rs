//! HAProxy and nginx as child processes, with `examples/deploy/`'s files.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::common::{WAIT, unique};

/// A proxy's program (`variable` names another), or `None` (with a notice) on a
/// machine without it. Under CI its absence fails the test.
pub fn find(program: &str, variable: &str) -> Option<PathBuf> {
    // The variable, when set, is the only place looked at.
    let found = match std::env::var_os(variable) {
        Some(path) => Some(PathBuf::from(path)).filter(|p| p.is_file()),
        None => ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
            .iter()
            .map(|dir| Path::new(dir).join(program))
            .find(|p| p.is_file()),
    };
    if found.is_none() {
        let help = format!("{program} is needed for this test: apt-get install {program}");
        if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
            panic!("{help} (CI is set, so this is a failure)");
        }
        eprintln!("NOTICE: skipping a test behind {program}. {help}");
    }
    found
}

/// A port free on 127.0.0.1 now, for an instance that must come back on it.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One pgws instance's addresses, as the proxy's configuration names them.
#[derive(Debug, Clone, Copy)]
pub struct Backend {
    pub public: SocketAddr,
    pub admin: SocketAddr,
}

impl Backend {
    pub fn free() -> Backend {
        let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
        Backend {
            public: at(free_port()),
            admin: at(free_port()),
        }
    }
}

/// A running proxy; stopped on drop, its folder removed.
pub struct Proxy {
    child: Child,
    /// Where clients connect.
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Proxy {
    /// HAProxy with `examples/deploy/haproxy.cfg`, its frontend and servers moved
    /// to `addr` and `backends`.
    pub fn haproxy(program: &Path, backends: &[Backend]) -> Proxy {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cfg = example("haproxy.cfg").replace("127.0.0.1:8080", &addr.to_string());
        for (i, b) in backends.iter().enumerate() {
            let n = i + 1;
            cfg = cfg
                .replace(&format!("127.0.0.1:300{n} "), &format!("{} ", b.public))
                .replace(&format!("port 909{n}"), &format!("port {}", b.admin.port()));
        }
        let dir = folder("haproxy");
        let file = dir.join("haproxy.cfg");
        std::fs::write(&file, cfg).unwrap();
        // The test's own window on HAProxy's counters, in a file of its own.
        let stats = dir.join("stats.cfg");
        let socket = dir.join("stats.sock");
        std::fs::write(
            &stats,
            format!("global\n    stats socket {}\n", socket.display()),
        )
        .unwrap();
        let mut cmd = Command::new(program);
        // -db: in the foreground, no daemon.
        cmd.arg("-db").arg("-f").arg(&file).arg("-f").arg(&stats);
        Proxy::spawn(cmd, addr, dir)
    }

    /// nginx with `examples/deploy/nginx.conf`, its listener and upstream servers
    /// moved to `addr` and `backends`, its log in a folder of its own.
    pub fn nginx(program: &Path, backends: &[Backend]) -> Proxy {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dir = folder("nginx");
        let mut cfg = example("nginx.conf")
            .replace("127.0.0.1:8080", &addr.to_string())
            .replace("/var/log/nginx/", &format!("{}/", dir.display()));
        for (i, b) in backends.iter().enumerate() {
            cfg = cfg.replace(
                &format!("127.0.0.1:300{} ", i + 1),
                &format!("{} ", b.public),
            );
        }
        let file = dir.join("nginx.conf");
        std::fs::write(&file, cfg).unwrap();
        let global = format!(
            "daemon off; pid {}/nginx.pid; error_log stderr notice;",
            dir.display()
        );
        let mut cmd = Command::new(program);
        cmd.arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&file)
            .arg("-g")
            .arg(global);
        Proxy::spawn(cmd, addr, dir)
    }

    fn spawn(mut cmd: Command, addr: SocketAddr, dir: PathBuf) -> Proxy {
        let log = std::fs::File::create(dir.join("stderr")).unwrap();
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        let child = cmd.spawn().unwrap_or_else(|e| {
            let _ = std::fs::remove_dir_all(&dir);
            panic!("the proxy does not start: {e}")
        });
        let proxy = Proxy { child, addr, dir };
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "the proxy did not listen on {addr}:\n{}",
                proxy.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        proxy
    }

    /// HAProxy's `show stat` for the servers of backend `pgws`: one map of
    /// counter names to values per server.
    pub fn server_stats(&self) -> Vec<HashMap<String, String>> {
        let mut socket = UnixStream::connect(self.dir.join("stats.sock")).unwrap();
        socket.write_all(b"show stat\n").unwrap();
        let mut csv = String::new();
        socket.read_to_string(&mut csv).unwrap();
        let mut lines = csv.lines();
        let names: Vec<&str> = lines
            .next()
            .unwrap()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        lines
            .map(|line| {
                let row = names.iter().zip(line.split(','));
                row.map(|(n, v)| ((*n).to_owned(), v.to_owned()))
                    .collect::<HashMap<_, _>>()
            })
            .filter(|row| row["pxname"] == "pgws" && row["svname"].starts_with("pgws"))
            .collect()
    }

    /// What the proxy wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // SIGTERM first: nginx's workers end with their master only then.
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill has no memory preconditions; the pid is our own child's.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + WAIT;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A checked-in file of `examples/deploy/`.
pub fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/deploy")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn folder(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(&format!("pgws-{what}")));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
