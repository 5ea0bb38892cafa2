//! A throwaway PostgreSQL cluster on a free port, for tests that stop and start
//! the database or need other settings, such as TLS (the shared one is never touched).

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Command, Output},
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
            ],
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
        let exe = self.bin.join(tool);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        run(cmd.args(args).current_dir(&self.dir));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
        let exe = self.bin.join("pg_ctl");
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        let _ = cmd.args(["-D", &data, "-m", "immediate", "stop"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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

fn bindir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries are installed")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().expect("an initdb under /usr/lib/postgresql")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
