//! Operations in the standalone server: the admin listener (`PGWS_ADMIN_ADDR`:
//! `/metrics`, `/health`, `/ready`), and logs that never hold a token.
//!
//! The Prometheus recorder is process-wide: the other tests of this binary count
//! into it too, so the figures asserted are lower bounds.

use pgws::server;

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::common::{running::Running, *};
use bytes::Bytes;
use futures_util::SinkExt;
use http::{Request, Response, StatusCode, header};
use http_body_util::{Empty, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_websockets::{ClientBuilder, Message};

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

async fn start(settings: server::Settings) -> Running {
    let serve = |listener, admin, stop| server::serve(listener, admin, settings, stop);
    Running::start(true, serve).await
}

/// The admin listener's address of a server started by [`start`].
fn admin(srv: &Running) -> SocketAddr {
    srv.admin.expect("started with an admin listener")
}

/// One request on a fresh connection: status, headers and body.
async fn send(
    addr: SocketAddr,
    req: Request<Full<Bytes>>,
) -> (StatusCode, http::HeaderMap, String) {
    send_to(addr, req).await
}

async fn get(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let (status, _, body) = send(addr, Request::get(path).body(Full::default()).unwrap()).await;
    (status, body)
}

/// Polls `path` until it answers `want`; the last answer otherwise.
async fn wait_for_status(addr: SocketAddr, path: &str, want: StatusCode) -> (StatusCode, String) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = get(addr, path).await;
        if status == want || tokio::time::Instant::now() >= deadline {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn settings(config: pgws::ConfigBuilder) -> server::Settings {
    server::Settings::new(config.build().unwrap())
}

/// A handshake request at `path` with extra headers, for refusals and header tokens.
fn handshake(path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    handshake_request(path, headers)
}

// ---------------------------------------------------------------------------
// /health, /ready, /metrics
// ---------------------------------------------------------------------------

#[tokio::test]
async fn health_answers_while_the_process_is_up() {
    let srv = start(settings(config())).await;
    let (status, body) = get(admin(&srv), "/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.trim(), "ok");
    let (status, _) = get(admin(&srv), "/nothing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = send(
        admin(&srv),
        Request::post("/health").body(Full::default()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    srv.stop().await;
}

#[tokio::test]
async fn admin_routes_are_not_on_the_public_port() {
    let srv = start(settings(config())).await;
    for path in ["/metrics", "/health", "/ready"] {
        let (status, _) = get(srv.addr, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path} on the public port");
    }
    srv.stop().await;
}

#[tokio::test]
async fn ready_when_the_listener_listens() {
    let srv = start(settings(config())).await;
    let (status, body) = wait_for_status(admin(&srv), "/ready", StatusCode::OK).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    srv.stop().await;
}

#[tokio::test]
async fn not_ready_while_the_database_is_unreachable() {
    // Nothing listens on port 1: the listener never connects.
    let dead = config().database_url("postgres://postgres@127.0.0.1:1/postgres?connect_timeout=1");
    let srv = start(settings(dead)).await;
    let (status, body) = get(admin(&srv), "/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("not ready"), "{body}");
    // The process itself is fine.
    assert_eq!(get(admin(&srv), "/health").await.0, StatusCode::OK);
    srv.stop().await;
}

#[tokio::test]
async fn ready_again_after_the_listener_backend_is_terminated() {
    // With an application_name of our own, the listener's backend can be found.
    // It reconnects by itself at once, so its 503 may be too short to see (the
    // unreachable-database test covers 503): what must hold is that /ready answers
    // 200 again and that the loss was counted as a listener reconnect.
    let app = unique("pgws_ready");
    let sep = if db_uri().contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}application_name={app}", db_uri());
    let srv = start(settings(config().database_url(url))).await;
    assert_eq!(
        wait_for_status(admin(&srv), "/ready", StatusCode::OK)
            .await
            .0,
        StatusCode::OK
    );
    let reconnects =
        |metrics: &str| sample(metrics, "pgws_listener_reconnects_total").unwrap_or(0.0);
    let before = reconnects(&get(admin(&srv), "/metrics").await.1);
    let killed = terminate_backends(&app).await;
    assert!(killed >= 1);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, metrics) = get(admin(&srv), "/metrics").await;
        if reconnects(&metrics) > before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reconnect counted:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = wait_for_status(admin(&srv), "/ready", StatusCode::OK).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    srv.stop().await;
}

/// The value of the first sample of `name` with these labels, if any.
fn sample(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name_and_labels)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

#[tokio::test]
async fn metrics_count_sockets_messages_and_refusals() {
    let srv = start(settings(config())).await;
    let chan = unique("admin_metrics");
    let uri: http::Uri = format!("ws://{}/{chan}/{}", srv.addr, token(claims("rw", None)))
        .parse()
        .unwrap();
    let (mut ws, _) = ClientBuilder::from_uri(uri).connect().await.unwrap();
    ws.send(Message::text("counted")).await.unwrap();
    recv_text(&mut ws).await;
    let forged = token_with(&claims("r", None), b"not the secret");
    let (status, _, _) = send(srv.addr, handshake(&format!("/{chan}/{forged}"), &[])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The echo can reach the client a moment before the writer counts its NOTIFY.
    let mut scrape = None;
    for _ in 0..100 {
        let got = send(
            admin(&srv),
            Request::get("/metrics").body(Full::default()).unwrap(),
        )
        .await;
        let counted = sample(&got.2, "pgws_messages_notified_total").is_some_and(|n| n >= 1.0);
        scrape = Some(got);
        if counted {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (status, headers, metrics) = scrape.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{headers:?}"
    );
    // Other tests of this binary share the recorder: at least ours.
    let open = sample(
        &metrics,
        "pgws_sockets_open{mode=\"rw\",transport=\"websocket\"}",
    );
    assert!(open.is_some_and(|n| n >= 1.0), "{metrics}");
    let notified = sample(&metrics, "pgws_messages_notified_total");
    assert!(notified.is_some_and(|n| n >= 1.0), "{metrics}");
    let refused = sample(
        &metrics,
        "pgws_handshake_refusals_total{reason=\"invalid_token\"}",
    );
    assert!(refused.is_some_and(|n| n >= 1.0), "{metrics}");
    assert!(metrics.contains("pgws_frames_delivered_total"), "{metrics}");
    drop(ws);
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------

#[tokio::test]
async fn admin_address_and_log_format_variables() {
    let s = server::Settings::from_vars(config(), vars(&[])).unwrap();
    assert_eq!(s.admin_addr, None);
    assert_eq!(s.log_format, server::LogFormat::Text);

    let s = server::Settings::from_vars(
        config(),
        vars(&[
            ("PGWS_ADMIN_ADDR", "127.0.0.1:9090"),
            ("PGWS_LOG_FORMAT", "JSON"),
        ]),
    )
    .unwrap();
    assert_eq!(s.admin_addr, Some("127.0.0.1:9090".parse().unwrap()));
    assert_eq!(s.log_format, server::LogFormat::Json);
    let s = server::Settings::from_vars(config(), vars(&[("PGWS_ADMIN_ADDR", "[::1]:9090")]));
    assert_eq!(s.unwrap().admin_addr, Some("[::1]:9090".parse().unwrap()));

    for (pairs, var) in [
        (&[("PGWS_ADMIN_ADDR", "9090")][..], "PGWS_ADMIN_ADDR"),
        (
            &[("PGWS_ADMIN_ADDR", "no such host.invalid:1")][..],
            "PGWS_ADMIN_ADDR",
        ),
        (&[("PGWS_LOG_FORMAT", "xml")][..], "PGWS_LOG_FORMAT"),
    ] {
        let err = server::Settings::from_vars(config(), vars(pairs)).unwrap_err();
        assert!(err.starts_with(var), "{err}");
    }
}

#[tokio::test]
async fn the_start_up_report_names_the_admin_routes() {
    let s = server::Settings::from_vars(config(), vars(&[])).unwrap();
    let addr = "127.0.0.1:3000".parse().unwrap();
    let report = server::startup_report(&s, addr, Some("0.0.0.0:9090".parse().unwrap()), None);
    assert!(
        report.contains("http://127.0.0.1:9090/metrics, http://127.0.0.1:9090/health, http://127.0.0.1:9090/ready"),
        "{report}"
    );
    let report = server::startup_report(&s, addr, None, None);
    assert!(
        report.contains("Admin:         off (PGWS_ADMIN_ADDR)"),
        "{report}"
    );
}

// ---------------------------------------------------------------------------
// No token in the logs
// ---------------------------------------------------------------------------

/// A log sink shared with the test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Runs `scenario` on a single-threaded runtime with the server's own log
/// subscriber (every level) writing into a buffer; the buffer's text.
fn capture_logs<F, Fut>(format: server::LogFormat, scenario: F) -> String
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = server::log_subscriber(
        format,
        tracing_subscriber::EnvFilter::new("trace"),
        move || sink.clone(),
        false,
    );
    // Every task of a current-thread runtime runs on this thread, under this default.
    tracing::subscriber::with_default(subscriber, || {
        // Other tests of this binary run without a subscriber on other threads:
        // make sure no callsite keeps an interest cached before this one existed.
        tracing::callsite::rebuild_interest_cache();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(scenario());
    });
    captured.text()
}

/// Handshakes taken and refused, tokens in every place, proxied requests (one to
/// an upstream that is down) and static files; the tokens used.
async fn token_scenario() -> Vec<String> {
    let chan = unique("admin_logs");
    let mut tokens = Vec::new();
    let mut fresh = |claims: Value| {
        let t = token(claims);
        tokens.push(t.clone());
        t
    };
    let path_token = fresh(claims("rw", None));
    let header_token = fresh(claims("r", Some(&chan)));
    let protocol_token = fresh(claims("r", None));
    let proxied_token = fresh(claims("rw", None));
    let static_token = fresh(claims("rw", None));
    let conflicting = fresh(json!({"mode": "r", "sub": "conflict"}));
    let expired = fresh(json!({"mode": "r", "exp": now() - 10}));
    let upstream_down = fresh(claims("r", None));
    let forged = token_with(&claims("rw", None), b"not the secret");
    tokens.push(forged.clone());

    let root = std::env::temp_dir().join(unique("pgws_admin_www"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("index.html"), "<h1>hi</h1>").unwrap();
    let upstream = start_upstream().await;
    let mut s = settings(config().meta_channel(unique("admin_logs_meta")));
    s.root_path = Some(root.clone());
    s.upstream = Some(format!("http://{upstream}").parse().unwrap());
    let srv = start(s).await;

    // Taken: path token, a message both ways.
    let uri: http::Uri = format!("ws://{}/{chan}/{path_token}", srv.addr)
        .parse()
        .unwrap();
    let (mut ws, _) = ClientBuilder::from_uri(uri).connect().await.unwrap();
    notify(&chan, "logged?").await;
    assert_eq!(recv_text(&mut ws).await, "logged?");
    send_text(&mut ws, "from the client").await;
    recv_text(&mut ws).await;
    ws.close().await.unwrap();

    // Taken: header and subprotocol tokens.
    let bearer = format!("Bearer {header_token}");
    let (status, _, _) = send(
        srv.addr,
        handshake(&format!("/{chan}"), &[("authorization", &bearer)]),
    )
    .await;
    assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS);
    let protocols = format!("pgws, pgws.bearer.{protocol_token}");
    let (status, _, _) = send(
        srv.addr,
        handshake(
            &format!("/{chan}"),
            &[("sec-websocket-protocol", &protocols)],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS);

    // Refused: bad signature, expired, conflicting sources.
    let (status, _, _) = send(srv.addr, handshake(&format!("/{chan}/{forged}"), &[])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let protocols = format!("pgws, pgws.bearer.{expired}");
    let (status, _, _) = send(
        srv.addr,
        handshake("/", &[("sec-websocket-protocol", &protocols)]),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let bearer = format!("Bearer {conflicting}");
    let (status, _, _) = send(
        srv.addr,
        handshake(&format!("/{path_token}"), &[("authorization", &bearer)]),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Proxied, with the token in the path, the query and a header.
    let req = Request::post(format!("/rpc/{proxied_token}?token={proxied_token}"))
        .header(header::AUTHORIZATION, format!("Bearer {proxied_token}"))
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let (status, _, _) = send(srv.addr, req).await;
    assert_eq!(status, StatusCode::OK);
    // Static files, with the token in the query (the chat page's `?token=`).
    let (status, _) = get(srv.addr, &format!("/?token={static_token}")).await;
    assert_eq!(status, StatusCode::OK);
    srv.stop().await;

    // An upstream that is down: 502, logged as a warning inside the request's span.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let mut s = settings(config());
    s.upstream = Some(format!("http://{dead}").parse().unwrap());
    let srv = start(s).await;
    let req = Request::get(format!("/items/{upstream_down}"))
        .header(header::AUTHORIZATION, format!("Bearer {upstream_down}"))
        .body(Full::default())
        .unwrap();
    let (status, _, _) = send(srv.addr, req).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    srv.stop().await;
    let _ = std::fs::remove_dir_all(root);
    tokens
}

fn assert_token_free(logs: &str, tokens: &[String]) {
    assert!(!logs.is_empty(), "nothing was logged");
    for t in tokens {
        // The signature alone is secret enough to look for; the header part is
        // the same in every HS256 token.
        let (_, signature) = t.rsplit_once('.').unwrap();
        assert!(!logs.contains(t.as_str()), "a token was logged:\n{logs}");
        assert!(
            !logs.contains(signature),
            "a token's signature was logged:\n{logs}"
        );
        let (_, rest) = t.split_once('.').unwrap();
        let (claims_part, _) = rest.split_once('.').unwrap();
        assert!(
            !logs.contains(claims_part),
            "a token's claims part was logged:\n{logs}"
        );
    }
    // The requests were logged, with their paths redacted.
    assert!(logs.contains("<redacted>"), "no redacted path:\n{logs}");
}

#[test]
fn no_token_reaches_the_text_logs() {
    let mut tokens = Vec::new();
    let logs = capture_logs(server::LogFormat::Text, || async {
        tokens = token_scenario().await;
    });
    assert_token_free(&logs, &tokens);
    if std::env::var_os("PGWS_SHOW_LOGS").is_some() {
        println!("{logs}");
    }
    assert!(logs.contains("/rpc/<redacted>"), "{logs}");
    assert!(logs.contains("upstream unreachable"), "{logs}");
}

#[test]
fn no_token_reaches_the_json_logs_and_each_line_is_json() {
    let mut tokens = Vec::new();
    let logs = capture_logs(server::LogFormat::Json, || async {
        tokens = token_scenario().await;
    });
    assert_token_free(&logs, &tokens);
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let parsed: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(parsed["level"].is_string(), "{line}");
    }
}

// ---------------------------------------------------------------------------
// An upstream that answers 200
// ---------------------------------------------------------------------------

async fn start_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| {
                    std::future::ready(Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

// ---------------------------------------------------------------------------
// The drain period
// ---------------------------------------------------------------------------

#[tokio::test]
async fn on_shutdown_ready_fails_first_while_sockets_are_served_then_they_get_1001() {
    let mut settings = settings(config());
    settings.drain_period = Duration::from_secs(2);
    let mut srv = start(settings).await;
    let (status, body) = wait_for_status(admin(&srv), "/ready", StatusCode::OK).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let chan = unique("adm_drain");
    let path = format!("/{}", token(claims("r", Some(&chan))));
    let open = |addr: SocketAddr, path: String| async move {
        let uri: http::Uri = format!("ws://{addr}{path}").parse().unwrap();
        let (ws, _) = tokio::time::timeout(WAIT, ClientBuilder::from_uri(uri).connect())
            .await
            .expect("handshake timed out")
            .expect("handshake refused");
        ws
    };
    let mut before = open(srv.addr, path.clone()).await;

    srv.stop.take().unwrap().send(()).unwrap();
    let (status, body) =
        wait_for_status(admin(&srv), "/ready", StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "not ready: shutting down, draining\n");
    // Still serving: a new handshake is taken, and both sockets get messages.
    let mut during = open(srv.addr, path).await;
    notify(&chan, "still here").await;
    assert_eq!(recv_text(&mut before).await, "still here");
    assert_eq!(recv_text(&mut during).await, "still here");
    for ws in [&mut before, &mut during] {
        let (code, _) = recv_close(ws).await;
        assert_eq!(code, 1001);
    }
    drop((before, during));
    tokio::time::timeout(WAIT * 3, srv.task)
        .await
        .expect("serve did not return")
        .unwrap();
}
