//! PostgreSQL clusters of the tests' own: a throwaway one on a free port, for tests
//! that stop and start the database or need other settings such as TLS (the shared
//! one is never touched), and the shared test cluster used when no database is
//! configured.

use std::{
    fs::File,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
    /// Extra `-c` settings for `postgres`.
    settings: Vec<String>,
}

impl Cluster {
    /// `initdb` in a fresh temp dir; not started yet.
    pub fn init() -> Cluster {
        Cluster::init_with(&[])
    }

    /// [`init`](Self::init) with more `initdb` arguments.
    pub fn init_with(extra: &[&str]) -> Cluster {
        let bin = bindir();
        let dir = std::env::temp_dir().join(super::unique("pgws_cluster"));
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir));
        }
        let port = free_port();
        let cluster = Cluster {
            dir,
            bin,
            port,
            settings: Vec::new(),
        };
        let data = cluster.data();
        cluster.pg(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ]
            .iter()
            .chain(extra)
            .copied()
            .collect::<Vec<_>>(),
        );
        cluster
    }

    /// Serves TLS (`ssl = on`) from the next start with this certificate and key,
    /// and trusts client certificates signed by `ca_pem`. The files are the cluster
    /// user's and the key is 0600, as PostgreSQL insists.
    pub fn with_tls(mut self, cert_pem: &str, key_pem: &str, ca_pem: &str) -> Cluster {
        for (name, pem, setting) in [
            ("server.crt", cert_pem, "ssl_cert_file"),
            ("server.key", key_pem, "ssl_key_file"),
            ("root.crt", ca_pem, "ssl_ca_file"),
        ] {
            let path = self.dir.join(name);
            std::fs::write(&path, pem).unwrap();
            set_mode_0600(&path);
            if is_root() {
                run(Command::new("chown").arg("postgres:postgres").arg(&path));
            }
            self.settings
                .push(format!("-c {setting}={}", path.display()));
        }
        self.settings.push("-c ssl=on".into());
        self
    }

    /// Puts these lines before the others in `pg_hba.conf` (read at start).
    pub fn hba_first(&self, lines: &[&str]) {
        let path = self.dir.join("data").join("pg_hba.conf");
        let old = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{}\n{old}", lines.join("\n"))).unwrap();
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    pub fn uri(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?connect_timeout=2",
            self.port
        )
    }

    pub fn start(&self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off {}",
            self.port,
            self.dir.display(),
            self.settings.join(" ")
        );
        let log = self.dir.join("log").display().to_string();
        self.pg(
            "pg_ctl",
            &["-D", &self.data(), "-o", &opts, "-l", &log, "-w", "start"],
        );
    }

    pub fn stop(&self) {
        self.pg("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    fn pg(&self, tool: &str, args: &[&str]) {
        run(pg_command(&self.bin, tool)
            .args(args)
            .current_dir(&self.dir));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = pg_command(&self.bin, "pg_ctl")
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One of the server programs, as the OS user `postgres` when root (PostgreSQL
/// refuses to run as root).
fn pg_command(bin: &Path, tool: &str) -> Command {
    let exe = bin.join(tool);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(exe);
        c
    } else {
        Command::new(exe)
    }
}

// ---------------------------------------------------------------------------
// The shared test cluster
// ---------------------------------------------------------------------------

/// The URI of the tests' own cluster, for a run with no `PGWS_TEST_DB_URI` and no
/// default database. One per checkout (`target/tmp/pgws-test-db`; for root, whose
/// checkout user `postgres` may not reach, `pgws-test-db` in the temp folder),
/// shared by all test binaries: the first that needs it makes and starts it, under a
/// file lock, and it is left running for the binaries and runs that follow
/// (`pg_ctl -D <folder>/data stop` stops it). `initdb` costs a few seconds once.
pub fn shared_uri() -> String {
    let dir = if is_root() {
        std::env::temp_dir().join("pgws-test-db")
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("pgws-test-db")
    };
    std::fs::create_dir_all(&dir).unwrap();
    let lock = File::create(dir.join("lock")).unwrap();
    lock.lock().unwrap();
    let port = running_port(&dir).unwrap_or_else(|| start_shared(&dir));
    drop(lock);
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

/// The port of the shared cluster when it is already up.
fn running_port(dir: &Path) -> Option<u16> {
    let pid = std::fs::read_to_string(dir.join("data/postmaster.pid")).ok()?;
    // Line 4 of postmaster.pid is the port.
    let port = pid.lines().nth(3)?.trim().parse().ok()?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    Some(port)
}

/// Makes the shared cluster when needed and starts it on a free port; the port.
fn start_shared(dir: &Path) -> u16 {
    let bin = bindir();
    if is_root() {
        run(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir));
    }
    let data = dir.join("data");
    let data_arg = data.display().to_string();
    if !data.join("PG_VERSION").exists() {
        run(pg_command(&bin, "initdb")
            .args(["-D", &data_arg, "-U", "postgres", "--auth=trust"])
            .args(["-E", "UTF8", "--no-sync"])
            .current_dir(dir));
    }
    // Whatever a crash left: the server is not answering (see `running_port`).
    let _ = std::fs::remove_file(data.join("postmaster.pid"));
    let port = free_port();
    // Loopback only, no Unix socket (a long checkout path would not fit one).
    let opts = format!(
        "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' \
         -c fsync=off -c max_connections=300"
    );
    let log = dir.join("log").display().to_string();
    run(pg_command(&bin, "pg_ctl")
        .args(["-D", &data_arg, "-o", &opts, "-l", &log, "-w", "start"])
        .current_dir(dir));
    port
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[cfg(unix)]
fn set_mode_0600(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[cfg(not(unix))]
fn set_mode_0600(_: &std::path::Path) {}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// PostgreSQL's server programs: `pg_config --bindir`, else the highest version
/// under `/usr/lib/postgresql`.
fn bindir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort_by_key(|p| version_key(p));
    found.pop().expect(
        "PostgreSQL's server programs (initdb, pg_ctl) are installed: apt install \
         postgresql, or set PGWS_TEST_DB_URI to a database for the tests",
    )
}

/// `/usr/lib/postgresql/9.6/bin` sorts before `/usr/lib/postgresql/16/bin`.
fn version_key(bin: &Path) -> Vec<u32> {
    let name = bin
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str());
    name.unwrap_or_default()
        .split('.')
        .filter_map(|n| n.parse().ok())
        .collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
