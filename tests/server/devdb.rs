//! The private development database (`PGWS_DEV_DB`): with no `PGWS_DB_URI` and
//! nothing at the default address, pgws starts a PostgreSQL of its own, says how to
//! reach it, stops it on the way out and finds its data again next time, even after
//! being killed.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use crate::common::{cluster::Cluster, program::Program, *};
use pgws::server;
use tokio::sync::oneshot;
use tokio_websockets::ClientBuilder;

/// A folder for one test's development database, removed at the end.
struct DevDir(PathBuf);

impl DevDir {
    fn new() -> DevDir {
        // In the temp folder: when root, user `postgres` runs the cluster and must
        // reach it.
        DevDir(std::env::temp_dir().join(unique("pgws_devdb")))
    }

    fn pid_file(&self) -> PathBuf {
        self.0.join("data/postmaster.pid")
    }
}

impl Drop for DevDir {
    fn drop(&mut self) {
        // A failed test may leave the cluster running.
        if self.pid_file().exists() {
            let mut cmd = if is_root() {
                let mut c = std::process::Command::new("runuser");
                c.args(["-u", "postgres", "--", "pg_ctl"]);
                c
            } else {
                std::process::Command::new("pg_ctl")
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

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The URI of the report's `psql` command.
fn psql_uri(report: &str) -> String {
    let line = report
        .lines()
        .find_map(|l| l.strip_prefix("psql: psql "))
        .unwrap_or_else(|| panic!("no psql command in the report:\n{report}"));
    line.trim().to_owned()
}

async fn sql(uri: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(uri, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// Where the server listens, from the report.
fn listening(report: &str) -> SocketAddr {
    let rest = report.split("is listening on http://").nth(1).unwrap();
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

/// One run of [`server::launch`] with no `PGWS_DB_URI`, the default address at
/// `default_addr` and the development database in `dir`: its report, and the
/// switch and task that stop it.
async fn launch(
    dir: &Path,
    default_addr: SocketAddr,
) -> (
    String,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), String>>,
) {
    let dir = dir.display().to_string();
    let var = move |name: &str| match name {
        "PGWS_DEV_DB_DIR" => Some(dir.clone()),
        "PGWS_PORT" => Some("0".to_owned()),
        _ => None,
    };
    let builder = pgws::Config::builder().jwt_secret(SECRET);
    let mut settings = server::Settings::from_vars(builder, var).unwrap();
    let dev_db = settings
        .dev_db
        .as_mut()
        .expect("no PGWS_DB_URI: a dev db plan");
    assert_eq!(dev_db.mode, server::DevDbMode::Auto);
    dev_db.default_addr = default_addr;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nothing_at_the_default_address_pgws_runs_its_own_database() {
    let dir = DevDir::new();
    // A port that was just free: nothing answers there.
    let default_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();

    let (report, stop, task) = launch(&dir.0, default_addr).await;
    assert!(
        report.contains(&format!(
            "WARNING: development database: PGWS_DB_URI is not set and nothing answers at {default_addr}"
        )),
        "{report}"
    );
    assert!(report.contains("Database:      reachable"), "{report}");
    let uri = psql_uri(&report);
    let db = sql(&uri).await;
    db.batch_execute("create table kept (note text); insert into kept values ('run 1')")
        .await
        .unwrap();
    // NOTIFY through the address the report names reaches a socket.
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

    // Started again, it finds its data.
    let (report, stop, task) = launch(&dir.0, default_addr).await;
    let db = sql(&psql_uri(&report)).await;
    let row = db.query_one("select note from kept", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "run 1");
    drop(db);
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
    let (report, stop, task) = launch(&dir.0, addr).await;
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
    let (report, stop, task) = launch(&dir.0, answering.local_addr().unwrap()).await;
    assert!(
        !report.contains("WARNING: development database"),
        "{report}"
    );
    assert!(!dir.0.exists(), "a dev db folder was made");
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
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
    let uri = psql_uri(&pgws.report);
    rt.block_on(async {
        sql(&uri)
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
    let uri = psql_uri(&pgws.report);
    let note: String = rt.block_on(async {
        sql(&uri)
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
