//! The private development database (`PGWS_DEV_DB`): asked for, or on an
//! interactive start with no `PGWS_DB_URI` and nothing usable at the default
//! address, pgws starts a PostgreSQL of its own on a Unix socket that only its
//! owner reaches, says how to reach it, stops it on the way out and finds its data
//! again next time, even after being killed. Without a terminal and unasked, it
//! waits for the default database instead, however late that comes up.
//!
//! The default database of these tests is a throwaway cluster on a free port, named
//! through [`server::DevDbSettings::default_addr`] and the layer's builder, for the
//! real default (127.0.0.1:5432) is the machine's shared database.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::common::{cluster::Cluster, program::Program, *};
use pgws::server;
use tokio::sync::oneshot;
use tokio_websockets::ClientBuilder;

/// A folder for one test's development database, removed at the end.
struct DevDir(PathBuf);

impl DevDir {
    fn new() -> DevDir {
        DevDir::named("pgws_devdb")
    }

    /// In the temp folder: when root, user `postgres` runs the cluster and must
    /// reach it.
    fn named(prefix: &str) -> DevDir {
        DevDir(std::env::temp_dir().join(unique(prefix)))
    }

    fn pid_file(&self) -> PathBuf {
        self.0.join("data/postmaster.pid")
    }

    /// What the running cluster's `postmaster.pid` says.
    fn postmaster(&self) -> Postmaster {
        let text = std::fs::read_to_string(self.pid_file()).expect("the cluster runs");
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        Postmaster {
            pid: lines[0].parse().unwrap(),
            port: lines[3].parse().unwrap(),
            socket_dir: lines[4].to_owned(),
            listen_addresses: lines[5].to_owned(),
        }
    }

    /// A session on the running cluster, through the socket it names.
    async fn sql(&self) -> tokio_postgres::Client {
        let pm = self.postmaster();
        assert!(!pm.socket_dir.is_empty(), "the cluster has no Unix socket");
        let (client, conn) = tokio_postgres::Config::new()
            .host_path(&pm.socket_dir)
            .port(pm.port)
            .user("postgres")
            .dbname("postgres")
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }
}

impl Drop for DevDir {
    fn drop(&mut self) {
        // A failed test may leave the cluster running.
        if self.pid_file().exists() {
            let mut cmd = if is_root() {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--", "pg_ctl"]);
                c
            } else {
                Command::new("pg_ctl")
            };
            let _ = cmd
                .arg("-D")
                .arg(self.0.join("data"))
                .args(["-m", "immediate", "stop"])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Lines 1, 4, 5 and 6 of `postmaster.pid`.
struct Postmaster {
    pid: u32,
    port: u16,
    socket_dir: String,
    listen_addresses: String,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The report's `psql` command.
fn psql_command(report: &str) -> String {
    let line = report
        .lines()
        .find_map(|l| l.strip_prefix("psql: "))
        .unwrap_or_else(|| panic!("no psql command in the report:\n{report}"));
    line.trim().to_owned()
}

/// Runs the report's `psql` command in a shell, as printed, with `-Atqc <sql>`.
fn run_psql_command(report: &str, sql: &str) -> std::process::Output {
    let cmd = format!("{} -Atqc '{sql}'", psql_command(report));
    Command::new("sh").arg("-c").arg(cmd).output().unwrap()
}

/// Where the server listens, from the report.
fn listening(report: &str) -> SocketAddr {
    let rest = report.split("is listening on http://").nth(1).unwrap();
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

/// How a test starts [`server::launch`]: no `PGWS_DB_URI`, the default database at
/// `default_addr` (and the layer pointed at `database` when given, as the default
/// URI would be), interactive or not.
struct Start<'a> {
    dir: &'a Path,
    default_addr: SocketAddr,
    interactive: bool,
    database: Option<String>,
}

/// One run of [`server::launch`]: its report, and the switch and task that stop it.
async fn launch(
    start: Start<'_>,
) -> (
    String,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), String>>,
) {
    let dir = start.dir.display().to_string();
    let var = move |name: &str| match name {
        "PGWS_DEV_DB_DIR" => Some(dir.clone()),
        "PGWS_PORT" => Some("0".to_owned()),
        _ => None,
    };
    let mut builder = pgws::Config::builder().jwt_secret(SECRET);
    if let Some(uri) = start.database {
        builder = builder.database_url(uri);
    }
    let mut settings = server::Settings::from_vars(builder, var).unwrap();
    let dev_db = settings
        .dev_db
        .as_mut()
        .expect("no PGWS_DB_URI: a dev db plan");
    assert_eq!(dev_db.mode, server::DevDbMode::Auto);
    dev_db.default_addr = start.default_addr;
    dev_db.interactive = start.interactive;
    let (stop, stopped) = oneshot::channel::<()>();
    let (report_tx, report_rx) = oneshot::channel();
    let shutdown = async {
        let _ = stopped.await;
    };
    let task = tokio::spawn(server::launch(settings, shutdown, move |report| {
        let _ = report_tx.send(report);
    }));
    let report = tokio::time::timeout(WAIT * 6, report_rx)
        .await
        .expect("no start-up report")
        .expect("launch ended before its report");
    (report, stop, task)
}

/// A port that was just free: nothing answers there.
fn refusing_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nothing_at_the_default_address_an_interactive_start_runs_its_own_database() {
    let dir = DevDir::new();
    let default_addr = refusing_addr();
    let start = || Start {
        dir: &dir.0,
        default_addr,
        interactive: true,
        database: None,
    };

    let (report, stop, task) = launch(start()).await;
    assert!(
        report.contains(&format!(
            "WARNING: development database: PGWS_DB_URI is not set and nothing answers at {default_addr}"
        )),
        "{report}"
    );
    assert!(report.contains("Database:      reachable"), "{report}");
    let db = dir.sql().await;
    db.batch_execute("create table kept (note text); insert into kept values ('run 1')")
        .await
        .unwrap();
    // NOTIFY through the database the report names reaches a socket.
    let chan = unique("devdb");
    let url = format!(
        "ws://{}/{chan}/{}",
        listening(&report),
        token(claims("r", None))
    );
    let (mut ws, _) = ClientBuilder::from_uri(url.parse().unwrap())
        .connect()
        .await
        .unwrap();
    db.execute("select pg_notify($1, 'via the dev db')", &[&chan])
        .await
        .unwrap();
    assert_eq!(recv_text(&mut ws).await, "via the dev db");
    drop(db);

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert!(!dir.pid_file().exists(), "the cluster outlived the server");

    // As an earlier pgws left its data folder: TCP with trust, no Unix socket.
    let data = dir.0.join("data");
    let conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
    let conf: String = conf
        .lines()
        .filter(|l| !l.contains("pgws.conf"))
        .map(|l| format!("{l}\n"))
        .collect();
    let old = "listen_addresses = '127.0.0.1'\nunix_socket_directories = ''\n";
    std::fs::write(data.join("postgresql.conf"), conf + old).unwrap();
    let hba = "host all all 127.0.0.1/32 trust\n";
    std::fs::write(data.join("pg_hba.conf"), hba).unwrap();

    // Started again, it finds its data, and takes no TCP connection any more.
    let (report, stop, task) = launch(start()).await;
    let out = run_psql_command(&report, "select note from kept");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "run 1",
        "{out:?}"
    );
    assert_eq!(dir.postmaster().listen_addresses, "");
    let hba = std::fs::read_to_string(data.join("pg_hba.conf")).unwrap();
    assert!(!hba.contains("host"), "{hba}");
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert!(!dir.pid_file().exists(), "the cluster outlived the server");
}

#[tokio::test]
async fn a_default_database_that_wants_a_password_gets_a_dev_db_instead() {
    // As after `apt install postgresql`: a server on the default address that asks
    // user postgres for a password over TCP.
    let asks = Cluster::init_with(&["--auth-host=scram-sha-256"]);
    asks.start();
    let addr: SocketAddr = format!("127.0.0.1:{}", asks.port).parse().unwrap();
    let dir = DevDir::new();
    let (report, stop, task) = launch(Start {
        dir: &dir.0,
        default_addr: addr,
        interactive: true,
        database: None,
    })
    .await;
    assert!(
        report.contains(&format!(
            "development database: PGWS_DB_URI is not set and the database at {addr} \
             does not let user postgres in without a password"
        )),
        "{report}"
    );
    assert!(report.contains("Database:      reachable"), "{report}");
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_default_address_that_answers_is_left_alone() {
    // Something answers there, even if it is not PostgreSQL: no cluster is made.
    let answering = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dir = DevDir::new();
    let (report, stop, task) = launch(Start {
        dir: &dir.0,
        default_addr: answering.local_addr().unwrap(),
        interactive: true,
        database: None,
    })
    .await;
    assert!(
        !report.contains("WARNING: development database"),
        "{report}"
    );
    assert!(!dir.0.exists(), "a dev db folder was made");
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_terminal_pgws_waits_for_a_default_database_that_comes_up_late() {
    // The default database, not started yet: its port refuses, as when pgws comes
    // up a moment before the real PostgreSQL in a deployment.
    let real = Cluster::init();
    let default_addr: SocketAddr = format!("127.0.0.1:{}", real.port).parse().unwrap();
    let dir = DevDir::new();
    let (report, stop, task) = launch(Start {
        dir: &dir.0,
        default_addr,
        interactive: false,
        database: Some(real.uri()),
    })
    .await;
    assert!(
        !report.contains("WARNING: development database"),
        "{report}"
    );
    assert!(!dir.0.exists(), "a dev db folder was made");
    assert!(report.contains("Database:      NOT reachable"), "{report}");
    assert!(
        report.contains(&format!(
            "uses the default database at {default_addr} and keeps trying it"
        )),
        "{report}"
    );

    real.start();
    // Handshakes get 503 until the listener is connected to the real database.
    let chan = unique("late");
    let url = format!(
        "ws://{}/{chan}/{}",
        listening(&report),
        token(claims("r", None))
    );
    let deadline = Instant::now() + WAIT * 3;
    let mut ws = loop {
        match ClientBuilder::from_uri(url.parse().unwrap())
            .connect()
            .await
        {
            Ok((ws, _)) => break ws,
            Err(e) => {
                assert!(Instant::now() < deadline, "pgws never served it: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let (db, conn) = tokio_postgres::connect(&real.uri(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    db.execute("select pg_notify($1, 'from the real one')", &[&chan])
        .await
        .unwrap();
    assert_eq!(recv_text(&mut ws).await, "from the real one");
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[test]
fn a_set_but_empty_db_uri_stops_start_up_with_its_name() {
    let dir = DevDir::new();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgws"));
    for (name, _) in std::env::vars() {
        if name.starts_with("PGWS_") {
            cmd.env_remove(name);
        }
    }
    let mut child = cmd
        .env("PGWS_DB_URI", "")
        .env("PGWS_PORT", "0")
        .env("PGWS_JWT_SECRET", SECRET)
        .env("PGWS_DEV_DB_DIR", &dir.0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("with PGWS_DB_URI= (empty), pgws started");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success());
    assert!(
        stderr.starts_with("pgws: PGWS_DB_URI is set but empty"),
        "{stderr}"
    );
    assert!(!dir.0.exists(), "a dev db folder was made");
}

/// `psql -Atqc 'select 1'` with `args`, as OS user `nobody`.
fn psql_as_nobody(args: &[&str]) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", "nobody", "--", "psql", "-w"])
        .args(args)
        .args(["-Atqc", "select 1"])
        .current_dir("/")
        .output()
        .unwrap()
}

/// The TCP ports process `pid` listens on, and whether it has a PostgreSQL Unix
/// socket (`.s.PGSQL.<port>`), from `/proc`.
#[cfg(target_os = "linux")]
fn listening_sockets(pid: u32) -> (Vec<u16>, bool) {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| {
            let link = std::fs::read_link(fd.ok()?.path()).ok()?;
            let link = link.to_str()?;
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for row in text.lines().skip(1) {
            let f: Vec<&str> = row.split_whitespace().collect();
            // 0A: LISTEN.
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                let port = f[1].rsplit(':').next().unwrap();
                ports.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    let unix = std::fs::read_to_string("/proc/net/unix").unwrap();
    let has_unix = unix.lines().skip(1).any(|row| {
        let f: Vec<&str> = row.split_whitespace().collect();
        // The path, last, may hold spaces.
        f.len() > 7 && inodes.iter().any(|i| i == f[6]) && row.contains("/.s.PGSQL.")
    });
    (ports, has_unix)
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_db_asked_for_admits_only_the_user_who_started_it() {
    use std::os::unix::fs::MetadataExt;

    // A space and a quote in the folder: the socket's path and the psql command
    // must keep them.
    let dir = DevDir::named("pgws dev'db");
    let dir_text = dir.0.display().to_string();
    // Asked for, without a terminal (the program's stdin is /dev/null), next to a
    // usable default database: it starts all the same.
    let vars = [
        ("PGWS_DEV_DB", "on"),
        ("PGWS_DEV_DB_DIR", dir_text.as_str()),
        ("PGWS_JWT_SECRET", SECRET),
    ];
    let pgws = Program::start(&vars, |line| line.starts_with("psql: "));
    assert!(
        pgws.report
            .contains("development database: PGWS_DEV_DB is on"),
        "{}",
        pgws.report
    );

    // Every way in that its server offers, tried as another OS user.
    let pm = dir.postmaster();
    let (tcp_ports, has_unix) = listening_sockets(pm.pid);
    if is_root() {
        // User nobody can run psql and reach a database that admits it...
        let control = psql_as_nobody(&[&db_uri()]);
        assert_eq!(
            String::from_utf8_lossy(&control.stdout).trim(),
            "1",
            "{control:?}"
        );
        // ...but not this one: over no TCP port of its server...
        for port in &tcp_ports {
            let port = port.to_string();
            let out = psql_as_nobody(&["-h", "127.0.0.1", "-p", &port, "-U", "postgres"]);
            assert!(
                !out.status.success(),
                "user nobody connected over TCP port {port}: {out:?}"
            );
        }
        // ...and not through its socket.
        if !pm.socket_dir.is_empty() {
            let port = pm.port.to_string();
            let out = psql_as_nobody(&["-h", &pm.socket_dir, "-p", &port, "-U", "postgres"]);
            assert!(!out.status.success(), "user nobody got in: {out:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("Permission denied"), "{stderr}");
        }
    } else {
        eprintln!("not root: user nobody's attempts need runuser, skipped");
    }
    assert_eq!(tcp_ports, Vec::<u16>::new(), "the cluster listens on TCP");
    assert_eq!(pm.listen_addresses, "");
    assert!(has_unix, "the postmaster's Unix socket was not found");
    // The socket's folder is the cluster user's alone.
    let meta = std::fs::metadata(&pm.socket_dir).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o700, "{}", pm.socket_dir);
    let owner = if is_root() {
        // User postgres runs the cluster for root.
        std::fs::metadata(dir.0.join("data")).unwrap().uid()
    } else {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() }
    };
    assert_eq!(meta.uid(), owner);

    // pgws serves through it.
    let chan = unique("devdb_on");
    let url = format!("ws://{}/{chan}/{}", pgws.addr(), token(claims("r", None)));
    let (mut ws, _) = ClientBuilder::from_uri(url.parse().unwrap())
        .connect()
        .await
        .unwrap();
    let db = dir.sql().await;
    db.execute("select pg_notify($1, 'only mine')", &[&chan])
        .await
        .unwrap();
    assert_eq!(recv_text(&mut ws).await, "only mine");
    // The report's psql command works, as printed, for the user who started it.
    let out = run_psql_command(&pgws.report, "select 1");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1", "{out:?}");
    drop(db);
    let status = pgws.terminate();
    assert!(status.success(), "{status}");
}

#[test]
fn a_killed_pgws_leaves_nothing_that_blocks_the_next_start() {
    let dir = DevDir::new();
    let dir_text = dir.0.display().to_string();
    let vars = [
        ("PGWS_DEV_DB", "on"),
        ("PGWS_DEV_DB_DIR", dir_text.as_str()),
        ("PGWS_JWT_SECRET", SECRET),
    ];
    let psql_line = |line: &str| line.starts_with("psql: ");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let pgws = Program::start(&vars, psql_line);
    assert!(
        pgws.report
            .contains("development database: PGWS_DEV_DB is on"),
        "{}",
        pgws.report
    );
    rt.block_on(async {
        dir.sql()
            .await
            .batch_execute("create table kept (note text); insert into kept values ('before')")
            .await
            .unwrap();
    });
    // Killed, pgws cannot stop its cluster, which keeps running.
    pgws.kill();
    assert!(dir.pid_file().exists());

    let pgws = Program::start(&vars, psql_line);
    assert!(
        pgws.stderr()
            .contains("stopping the cluster an earlier pgws left running"),
        "{}",
        pgws.stderr()
    );
    let note: String = rt.block_on(async {
        dir.sql()
            .await
            .query_one("select note from kept", &[])
            .await
            .unwrap()
            .get(0)
    });
    assert_eq!(note, "before");
    let status = pgws.terminate();
    assert!(status.success(), "{status}");
    assert!(!dir.pid_file().exists(), "SIGTERM did not stop the cluster");

    // A postmaster.pid naming a live process that is no PostgreSQL (a crash, then
    // the pid reused): pgws clears it rather than refusing to start.
    let data = dir.0.join("data").display().to_string();
    let stale = format!(
        "{}\n{data}\n0\n1\n\n127.0.0.1\n0 0\nstopped\n",
        std::process::id()
    );
    std::fs::write(dir.pid_file(), stale).unwrap();
    let pgws = Program::start(&vars, psql_line);
    let status = pgws.terminate();
    assert!(status.success(), "{status}");
}
