//! The `pgws` program (`cargo install pgws --features server`): started as a
//! process with `PGWS_*` variables, it serves WebSockets and stops on SIGTERM.

use crate::common::{program::Program, *};
use tokio_websockets::ClientBuilder;

#[tokio::test]
async fn the_pgws_program_serves_websockets_and_stops_on_sigterm() {
    let uri = db_uri();
    let vars = [
        ("PGWS_DB_URI", uri.as_str()),
        ("PGWS_JWT_SECRET", SECRET),
        ("PGWS_ADMIN_ADDR", "127.0.0.1:0"),
    ];
    let pgws = Program::start(&vars, |line| line.starts_with("  Admin:"));
    assert!(
        pgws.report.contains("Database:      reachable"),
        "{}",
        pgws.report
    );
    // A secret is set: no sample token, no development database.
    assert!(!pgws.report.contains("WARNING"), "{}", pgws.report);

    let chan = unique("program");
    let url = format!("ws://{}/{chan}/{}", pgws.addr(), token(claims("rw", None)));
    let (mut ws, _) = ClientBuilder::from_uri(url.parse().unwrap())
        .connect()
        .await
        .unwrap();
    notify(&chan, "from SQL").await;
    assert_eq!(recv_text(&mut ws).await, "from SQL");

    let status = pgws.terminate();
    assert!(status.success(), "{status}");
    // The socket was told: going away.
    assert_eq!(recv_close(&mut ws).await.0, 1001);
}

#[test]
fn a_bad_variable_ends_the_program_with_its_name() {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pgws"));
    let out = cmd
        .env("PGWS_DB_URI", db_uri())
        .env("PGWS_PORT", "http")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("pgws: PGWS_PORT"), "{stderr}");
}
