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

/// A PEM key or a short HMAC secret stops the program before it listens, saying
/// what to give instead; a short one is taken only when allowed.
#[tokio::test]
async fn a_pem_key_or_a_short_secret_ends_the_program() {
    let pem = include_str!("../fixtures/keys/rsa_public.pem");
    let refused = |secret: &str| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pgws"));
        for (name, _) in std::env::vars() {
            if name.starts_with("PGWS_") {
                cmd.env_remove(name);
            }
        }
        let mut child = cmd
            .env("PGWS_DB_URI", db_uri())
            .env("PGWS_HOST", "127.0.0.1")
            .env("PGWS_PORT", "0")
            .env("PGWS_JWT_SECRET", secret)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A program that took the secret serves on: stopped, and the test fails.
        let deadline = std::time::Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(
            status.is_some_and(|s| !s.success()),
            "{secret:?} was taken: {stderr}"
        );
        assert!(stderr.starts_with("pgws: PGWS_JWT_SECRET"), "{stderr}");
        stderr
    };
    let stderr = refused(pem);
    assert!(stderr.contains("PEM") && stderr.contains("JWK"), "{stderr}");
    for short in ["x", &"x".repeat(31)] {
        let stderr = refused(short);
        assert!(stderr.contains("PGWS_JWT_SECRET_ALLOW_SHORT"), "{stderr}");
    }
    // Allowed, a one-byte secret signs tokens the program takes.
    let uri = db_uri();
    let vars = [
        ("PGWS_DB_URI", uri.as_str()),
        ("PGWS_JWT_SECRET", "x"),
        ("PGWS_JWT_SECRET_ALLOW_SHORT", "true"),
        ("PGWS_ADMIN_ADDR", "127.0.0.1:0"),
    ];
    let pgws = Program::start(&vars, |line| line.starts_with("  Admin:"));
    let chan = unique("short");
    let jwt = token_with(&claims("r", None), b"x");
    let url = format!("ws://{}/{chan}/{jwt}", pgws.addr());
    let (mut ws, _) = ClientBuilder::from_uri(url.parse().unwrap())
        .connect()
        .await
        .unwrap();
    notify(&chan, "short but allowed").await;
    assert_eq!(recv_text(&mut ws).await, "short but allowed");
}

/// A text log line per event, whatever a client puts in its URL: a path channel
/// with a line feed, a line of its own and an escape sequence stays on its line,
/// escaped; a token whose header JSON starts with a space is taken, and redacted.
#[tokio::test]
async fn text_logs_escape_what_clients_send_and_redact_every_token() {
    use base64::Engine as _;
    let uri = db_uri();
    let vars = [("PGWS_DB_URI", uri.as_str()), ("PGWS_JWT_SECRET", SECRET)];
    let pgws = Program::start(&vars, |line| line.starts_with("  Admin:"));

    let b64url = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let header = b64url(br#" {"alg":"HS256","typ":"JWT"}"#);
    assert!(header.starts_with("IHsi"), "{header}");
    let signed = format!(
        "{header}.{}",
        b64url(claims("r", None).to_string().as_bytes())
    );
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let signature =
        jsonwebtoken::crypto::sign(signed.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
            .unwrap();
    let jwt = format!("{signed}.{signature}");

    let forged = "2030-01-01  INFO pgws: forged";
    let channel = format!("{}\n{forged}\u{1b}[2J", unique("lf"));
    let encoded =
        percent_encoding::utf8_percent_encode(&channel, percent_encoding::NON_ALPHANUMERIC);
    let url = format!("ws://{}/{encoded}/{jwt}", pgws.addr());
    let (mut ws, _) = ClientBuilder::from_uri(url.parse().unwrap())
        .connect()
        .await
        .unwrap();
    notify(&channel, "through").await;
    assert_eq!(recv_text(&mut ws).await, "through");
    futures_util::SinkExt::close(&mut ws).await.unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while !pgws.stderr().contains("socket closed") {
        assert!(std::time::Instant::now() < deadline, "{}", pgws.stderr());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let logs = pgws.stderr();
    assert!(!logs.contains(&signature), "the token was logged:\n{logs}");
    assert!(!logs.contains(&header), "the token was logged:\n{logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "a raw escape was logged:\n{logs:?}"
    );
    assert!(
        logs.lines().all(|l| !l.starts_with(forged)),
        "a line was forged:\n{logs}"
    );
    let open = logs.lines().find(|l| l.contains("socket open")).unwrap();
    assert!(open.contains(&format!(r"\n{forged}\u{{1b}}[2J")), "{open}");
}
