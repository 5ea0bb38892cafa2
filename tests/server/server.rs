//! The standalone server, `pgws::server` (contract §8), and the layer inside
//! an axum router: proxying, static files, 404/502, WebSockets on the same port.

use pgws::server;

use std::{convert::Infallible, net::SocketAddr, path::PathBuf};

use crate::common::{running::Running, *};
use bytes::Bytes;
use futures_util::stream;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use pgws::PgWsLayer;
use serde_json::{Value, json};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

type TestBody = BoxBody<Bytes, Infallible>;

const BIG: usize = 1 << 20;

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// The standalone server on 127.0.0.1:0.
async fn start(settings: server::Settings) -> Running {
    Running::start(false, |listener, _, stop| {
        server::run(listener, settings, stop)
    })
    .await
}

fn settings() -> server::Settings {
    server::Settings::new(config().build().unwrap())
}

fn with_upstream(upstream: SocketAddr) -> server::Settings {
    let mut s = settings();
    s.upstream = Some(format!("http://{upstream}").parse().unwrap());
    s
}

fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into()).boxed()
}

fn get(path: &str) -> Request<TestBody> {
    Request::get(path).body(full("")).unwrap()
}

/// Sends one request over a fresh HTTP/1.1 connection (with `Host` set to `addr`).
async fn send(addr: SocketAddr, mut req: Request<TestBody>) -> Response<Incoming> {
    if !req.headers().contains_key(header::HOST) {
        let host = addr.to_string().parse().unwrap();
        req.headers_mut().insert(header::HOST, host);
    }
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("request timed out")
        .unwrap()
}

async fn body_bytes(res: Response<Incoming>) -> Bytes {
    tokio::time::timeout(WAIT, res.into_body().collect())
        .await
        .expect("body timed out")
        .unwrap()
        .to_bytes()
}

async fn text(res: Response<Incoming>) -> String {
    String::from_utf8(body_bytes(res).await.to_vec()).unwrap()
}

/// A request through the server to the echo upstream: what the upstream saw.
async fn echoed(addr: SocketAddr, req: Request<TestBody>) -> Value {
    let res = send(addr, req).await;
    assert_eq!(res.status(), StatusCode::OK);
    serde_json::from_slice(&body_bytes(res).await).unwrap()
}

/// The first value of a header the upstream saw, if any.
pub(crate) fn seen<'a>(echo: &'a Value, name: &str) -> Option<&'a str> {
    echo["headers"][name][0].as_str()
}

// ---------------------------------------------------------------------------
// The echo upstream
// ---------------------------------------------------------------------------

/// A tiny upstream on 127.0.0.1:0: `/big` answers 1 MiB, `/duplex` streams the
/// request body back, anything else answers what it received as JSON.
pub(crate) async fn start_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(upstream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

type UpstreamBody = BoxBody<Bytes, hyper::Error>;

async fn upstream(req: Request<Incoming>) -> Result<Response<UpstreamBody>, Infallible> {
    Ok(match req.uri().path() {
        "/big" => big_response(),
        "/duplex" => Response::new(req.into_body().boxed()),
        _ => echo_response(req).await,
    })
}

fn big_byte(i: usize) -> u8 {
    (i % 251) as u8
}

/// 1 MiB in 64 KiB chunks, no Content-Length (so it is streamed chunked).
fn big_response() -> Response<UpstreamBody> {
    let chunks = (0..16).map(|c| {
        let chunk: Vec<u8> = (c * 65536..(c + 1) * 65536).map(big_byte).collect();
        Ok::<_, hyper::Error>(Frame::data(Bytes::from(chunk)))
    });
    Response::new(StreamBody::new(stream::iter(chunks)).boxed())
}

async fn echo_response(req: Request<Incoming>) -> Response<UpstreamBody> {
    let (parts, body) = req.into_parts();
    let mut headers = serde_json::Map::new();
    for name in parts.headers.keys() {
        let values: Vec<Value> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| json!(v.to_str().unwrap_or("<binary>")))
            .collect();
        headers.insert(name.as_str().to_owned(), Value::Array(values));
    }
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let echo = json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        // Hop-by-hop headers the proxy must not pass back.
        .header(header::CONNECTION, "x-upstream-hop")
        .header("x-upstream-hop", "1")
        .header("keep-alive", "timeout=5")
        .header(header::PROXY_AUTHENTICATE, "Basic")
        .header("x-upstream-end", "kept")
        .body(
            Full::new(Bytes::from(echo.to_string()))
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap()
}

// ---------------------------------------------------------------------------
// (a) The proxy
// ---------------------------------------------------------------------------

#[tokio::test]
async fn methods_path_query_and_body_reach_the_upstream() {
    let up = start_upstream().await;
    let srv = start(with_upstream(up)).await;
    for method in [Method::GET, Method::POST, Method::PUT, Method::DELETE] {
        let req = Request::builder()
            .method(method.clone())
            .uri("/items/1?select=id,name&order=id.desc")
            .body(full(format!("body of {method}")))
            .unwrap();
        let echo = echoed(srv.addr, req).await;
        assert_eq!(echo["method"], method.as_str());
        assert_eq!(echo["path"], "/items/1");
        assert_eq!(echo["query"], "select=id,name&order=id.desc");
        assert_eq!(echo["body"], format!("body of {method}"));
    }
}

#[tokio::test]
async fn upstream_base_path_is_kept() {
    let up = start_upstream().await;
    let mut s = settings();
    s.upstream = Some(format!("http://{up}/api/").parse().unwrap());
    let srv = start(s).await;
    let echo = echoed(srv.addr, get("/items?id=eq.1")).await;
    assert_eq!(echo["path"], "/api/items");
    assert_eq!(echo["query"], "id=eq.1");
}

#[tokio::test]
async fn forwarding_headers_are_set_and_hop_by_hop_removed() {
    let up = start_upstream().await;
    let srv = start(with_upstream(up)).await;
    let req = Request::get("/h")
        .header(header::HOST, "pgws.example:8080")
        .header(header::CONNECTION, "keep-alive, x-client-hop")
        .header("x-client-hop", "1")
        .header("keep-alive", "timeout=5")
        .header(header::TE, "trailers")
        .header(header::TRAILER, "x-checksum")
        .header(header::PROXY_AUTHORIZATION, "Basic eDp5")
        .header(header::UPGRADE, "foo/1")
        .header("x-forwarded-for", "10.0.0.1")
        .header("x-end-to-end", "kept")
        .body(full(""))
        .unwrap();
    let res = send(srv.addr, req).await;
    let headers = res.headers().clone();
    let echo: Value = serde_json::from_slice(&body_bytes(res).await).unwrap();

    for hop in [
        "connection",
        "x-client-hop",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "upgrade",
    ] {
        assert_eq!(seen(&echo, hop), None, "{hop} was forwarded");
    }
    assert_eq!(seen(&echo, "x-end-to-end"), Some("kept"));
    assert_eq!(seen(&echo, "host"), Some(up.to_string().as_str()));
    assert_eq!(seen(&echo, "x-forwarded-host"), Some("pgws.example:8080"));
    // What the client claims of earlier hops is dropped (tests/server/proxy.rs).
    assert_eq!(seen(&echo, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen(&echo, "x-forwarded-proto"), Some("http"));

    // And on the way back.
    for hop in ["x-upstream-hop", "keep-alive", "proxy-authenticate"] {
        assert!(!headers.contains_key(hop), "{hop} came back");
    }
    assert_eq!(headers["x-upstream-end"], "kept");
}

#[tokio::test]
async fn a_chunked_request_body_arrives_whole() {
    let up = start_upstream().await;
    let srv = start(with_upstream(up)).await;
    let chunks: Vec<String> = (0..200).map(|i| format!("chunk {i};")).collect();
    let frames = chunks
        .clone()
        .into_iter()
        .map(|c| Ok::<_, Infallible>(Frame::data(Bytes::from(c))));
    let body = StreamBody::new(stream::iter(frames)).boxed();
    let req = Request::post("/upload").body(body).unwrap();
    let echo = echoed(srv.addr, req).await;
    assert_eq!(echo["body"], chunks.concat());
}

/// A request body fed piece by piece through a channel; it ends when `tx` drops.
fn channel_body() -> (mpsc::Sender<Bytes>, TestBody) {
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let frames = stream::unfold(rx, |mut rx| async move {
        let data = rx.recv().await?;
        Some((Ok(Frame::data(data)), rx))
    });
    (tx, StreamBody::new(frames).boxed())
}

#[tokio::test]
async fn bodies_stream_both_ways_without_buffering() {
    let up = start_upstream().await;
    let srv = start(with_upstream(up)).await;
    let (tx, body) = channel_body();
    let req = Request::post("/duplex").body(body).unwrap();
    tx.send(Bytes::from_static(b"ping 1")).await.unwrap();
    let res = send(srv.addr, req).await;
    let mut body = res.into_body();
    // Each piece comes back before the next is sent: nothing waits for the whole body.
    for i in 1..=3 {
        if i > 1 {
            tx.send(Bytes::from(format!("ping {i}"))).await.unwrap();
        }
        let frame = tokio::time::timeout(WAIT, body.frame())
            .await
            .expect("piece did not come back")
            .expect("body ended")
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), format!("ping {i}"));
    }
    drop(tx);
    let rest = tokio::time::timeout(WAIT, body.collect())
        .await
        .unwrap()
        .unwrap();
    assert!(rest.to_bytes().is_empty());
}

#[tokio::test]
async fn a_large_response_comes_back_whole() {
    let up = start_upstream().await;
    let srv = start(with_upstream(up)).await;
    let res = send(srv.addr, get("/big")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body = body_bytes(res).await;
    assert_eq!(body.len(), BIG);
    assert!(body.iter().enumerate().all(|(i, b)| *b == big_byte(i)));
}

#[tokio::test]
async fn a_non_token_handshake_is_proxied_as_plain_http() {
    let up = start_upstream().await;
    let srv = start(with_upstream(up)).await;
    let echo = echoed(srv.addr, handshake("/not-a-token")).await;
    assert_eq!(echo["path"], "/not-a-token");
    assert_eq!(seen(&echo, "upgrade"), None);
    assert_eq!(
        seen(&echo, "sec-websocket-key"),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );
}

// ---------------------------------------------------------------------------
// (b), (c) 502 and 404
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_unreachable_upstream_is_502() {
    // A port that was just free: nothing listens there any more.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let srv = start(with_upstream(addr)).await;
    let res = send(srv.addr, get("/anything")).await;
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn no_upstream_and_no_static_match_is_404() {
    let srv = start(settings()).await;
    let res = send(srv.addr, get("/anything")).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    let root = TempDir::new(&[("index.html", "<h1>home</h1>")]);
    let mut s = settings();
    s.root_path = Some(root.0.clone());
    let srv = start(s).await;
    let res = send(srv.addr, get("/missing.txt")).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

// ---------------------------------------------------------------------------
// (d) Static files
// ---------------------------------------------------------------------------

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(files: &[(&str, &str)]) -> TempDir {
        let dir = std::env::temp_dir().join(unique("pgws_static"));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, content) in files {
            std::fs::write(dir.join(name), content).unwrap();
        }
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn static_files_first_then_the_upstream() {
    let root = TempDir::new(&[("index.html", "<h1>home</h1>"), ("app.js", "let x = 1;")]);
    let up = start_upstream().await;
    let mut s = with_upstream(up);
    s.root_path = Some(root.0.clone());
    let srv = start(s).await;

    let res = send(srv.addr, get("/")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(text(res).await, "<h1>home</h1>");

    let res = send(srv.addr, get("/app.js")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(text(res).await, "let x = 1;");

    let head = Request::head("/").body(full("")).unwrap();
    let res = send(srv.addr, head).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_LENGTH], "13");
    assert_eq!(text(res).await, "");

    // Not in the directory: the upstream answers.
    let echo = echoed(srv.addr, get("/rpc/thing?a=1")).await;
    assert_eq!(echo["path"], "/rpc/thing");
    // Static files are for GET and HEAD only.
    let post = Request::post("/").body(full("data")).unwrap();
    let echo = echoed(srv.addr, post).await;
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body"], "data");
}

// ---------------------------------------------------------------------------
// (e) WebSockets and HTTP on one port; shutdown
// ---------------------------------------------------------------------------

fn ws_url(addr: SocketAddr, path: &str) -> http::Uri {
    format!("ws://{addr}{path}").parse().unwrap()
}

async fn connect(addr: SocketAddr, path: &str) -> Ws {
    let client = tokio_websockets::ClientBuilder::from_uri(ws_url(addr, path));
    let (ws, res) = tokio::time::timeout(WAIT, client.connect())
        .await
        .expect("handshake timed out")
        .expect("handshake refused");
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws
}

#[tokio::test]
async fn the_layer_takes_token_handshakes_and_the_rest_is_proxied() {
    let up = start_upstream().await;
    let srv = start(with_upstream(up)).await;
    let chan = unique("srv_ws");
    let jwt = token(json!({"mode": "rw", "channel": chan}));
    let mut ws = connect(srv.addr, &format!("/{chan}/{jwt}")).await;

    notify(&chan, "from the database").await;
    assert_eq!(recv_text(&mut ws).await, "from the database");
    send_text(&mut ws, "Hi!").await;
    let envelope: Value = serde_json::from_str(&recv_text(&mut ws).await).unwrap();
    assert_eq!(envelope["payload"], "Hi!");

    let echo = echoed(srv.addr, get("/items")).await;
    assert_eq!(echo["path"], "/items");
}

/// A WebSocket handshake request at `path`, for refusals.
fn handshake(path: &str) -> Request<TestBody> {
    Request::get(path)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "upgrade")
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
        .body(full(""))
        .unwrap()
}

#[tokio::test]
async fn a_bad_token_is_refused_by_the_layer_not_proxied() {
    let up = start_upstream().await;
    let srv = start(with_upstream(up)).await;
    let chan = unique("srv_bad");
    let jwt = token_with(&json!({"mode": "rw"}), b"not the secret");
    let res = send(srv.addr, handshake(&format!("/{chan}/{jwt}"))).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(text(res).await.starts_with("Invalid token"));
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1001_and_run_returns() {
    let mut srv = start(settings()).await;
    let chan = unique("srv_down");
    let mut ws = connect(srv.addr, &format!("/{}", token(claims("r", Some(&chan))))).await;
    srv.stop.take().unwrap().send(()).unwrap();
    let (code, _) = recv_close(&mut ws).await;
    assert_eq!(code, 1001);
    // Hanging up spares the server its wait for our close answer.
    drop(ws);
    tokio::time::timeout(WAIT * 3, srv.task)
        .await
        .expect("run did not return")
        .unwrap();
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_request_finish() {
    // HTTP/1.1 and HTTP/2 are served by hyper-util's auto builder; HTTP/1.1 alone
    // by hyper's own, with its own way to drain.
    for http2_max_streams in [256, 0] {
        let up = start_upstream().await;
        let mut settings = with_upstream(up);
        settings.http2_max_streams = http2_max_streams;
        shutdown_with_a_request_in_flight(settings).await;
    }
}

async fn shutdown_with_a_request_in_flight(settings: server::Settings) {
    let mut srv = start(settings).await;
    let (tx, body) = channel_body();
    tx.send(Bytes::from_static(b"before")).await.unwrap();
    let res = send(srv.addr, Request::post("/duplex").body(body).unwrap()).await;
    let mut body = res.into_body();
    let first = tokio::time::timeout(WAIT, body.frame()).await.unwrap();
    assert_eq!(first.unwrap().unwrap().into_data().unwrap(), "before");

    srv.stop.take().unwrap().send(()).unwrap();
    tx.send(Bytes::from_static(b"after")).await.unwrap();
    drop(tx);
    let rest = tokio::time::timeout(WAIT, body.collect()).await.unwrap();
    assert_eq!(rest.unwrap().to_bytes(), "after");
    tokio::time::timeout(WAIT * 2, srv.task)
        .await
        .expect("run did not return")
        .unwrap();
}

// ---------------------------------------------------------------------------
// Settings from variables (no process environment: tests run in parallel)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn settings_defaults_and_host_forms() {
    let s = server::Settings::from_vars(config(), vars(&[])).unwrap();
    assert_eq!(s.addr, "127.0.0.1:3000".parse().unwrap());
    assert!(s.dev_token.is_none() && s.root_path.is_none() && s.upstream.is_none());

    for (host, want) in [
        ("*", "0.0.0.0:3000"),
        ("*4", "0.0.0.0:3000"),
        ("!4", "0.0.0.0:3000"),
        ("*6", "[::]:3000"),
        ("!6", "[::]:3000"),
        ("::1", "[::1]:3000"),
        ("[::1]", "[::1]:3000"),
        ("10.1.2.3", "10.1.2.3:3000"),
    ] {
        let var = |name: &str| (name == "PGWS_HOST").then(|| host.to_owned());
        let got = server::Settings::from_vars(config(), var).unwrap().addr;
        assert_eq!(got, want.parse::<SocketAddr>().unwrap(), "{host}");
    }
    let s =
        server::Settings::from_vars(config(), vars(&[("PGWS_HOST", ""), ("PGWS_PORT", "8080")]));
    assert_eq!(s.unwrap().addr, "127.0.0.1:8080".parse().unwrap());
}

#[tokio::test]
async fn bad_values_name_their_variable() {
    for (pairs, var) in [
        (&[("PGWS_PORT", "http")][..], "PGWS_PORT"),
        (&[("PGWS_PORT", "70000")][..], "PGWS_PORT"),
        (&[("PGWS_HOST", "no such host.invalid")][..], "PGWS_HOST"),
        (&[("PGWS_UPSTREAM", "https://x")][..], "PGWS_UPSTREAM"),
        (&[("PGWS_UPSTREAM", "not a url")][..], "PGWS_UPSTREAM"),
        (
            &[("PGWS_ROOT_PATH", "/no/such/dir/pgws")][..],
            "PGWS_ROOT_PATH",
        ),
        (
            &[("PGWS_CERTIFICATE_FILE", "cert.pem")][..],
            "PGWS_CERTIFICATE_FILE",
        ),
        (&[("PGWS_KEY_FILE", "key.pem")][..], "PGWS_KEY_FILE"),
        (&[("PGWS_DRAIN_PERIOD", "-1")][..], "PGWS_DRAIN_PERIOD"),
        (
            &[("PGWS_DRAIN_PERIOD", "31536001")][..],
            "PGWS_DRAIN_PERIOD",
        ),
    ] {
        let err = server::Settings::from_vars(config(), vars(pairs)).unwrap_err();
        assert!(err.starts_with(var), "{err}");
    }
    let err = server::Settings::from_vars(config().pool_size(0), vars(&[])).unwrap_err();
    assert!(err.starts_with("PGWS_POOL_SIZE"), "{err}");
    // Empty counts as unset; PGWS_RETRIES is accepted and ignored.
    let ok = vars(&[("PGWS_CERTIFICATE_FILE", ""), ("PGWS_RETRIES", "5")]);
    assert!(server::Settings::from_vars(config(), ok).is_ok());
    // The drain may be turned off.
    for (value, secs) in [("0", 0), ("12", 12)] {
        let set = vars(if secs == 0 {
            &[("PGWS_DRAIN_PERIOD", "0")]
        } else {
            &[("PGWS_DRAIN_PERIOD", "12")]
        });
        let s = server::Settings::from_vars(config(), set).unwrap();
        assert_eq!(s.drain_period.as_secs(), secs, "{value}");
    }
}

#[tokio::test]
async fn without_a_secret_a_dev_token_is_made_and_accepted() {
    let builder = pgws::Config::builder().database_url(db_uri());
    let s = server::Settings::from_vars(builder, vars(&[])).unwrap();
    let jwt = s.dev_token.clone().expect("no sample token");
    let srv = start(s).await;
    let chan = unique("srv_dev");
    let mut ws = connect(srv.addr, &format!("/{chan}/{jwt}")).await;
    notify(&chan, "dev").await;
    assert_eq!(recv_text(&mut ws).await, "dev");
}

#[test]
fn settings_debug_shows_no_secret_password_or_token() {
    let secret = "s3cret-that-must-not-show-up-anywhere";
    let url = "postgres://app:hunter2pw@127.0.0.1:5432/postgres";
    let with_secret = pgws::Config::builder().database_url(url).jwt_secret(secret);
    let s = server::Settings::from_vars(with_secret, vars(&[])).unwrap();
    let shown = format!("{s:?} {s:#?}");
    assert!(
        !shown.contains(secret) && !shown.contains("hunter2pw"),
        "{shown}"
    );
    let dev =
        server::Settings::from_vars(pgws::Config::builder().database_url(url), vars(&[])).unwrap();
    let jwt = dev.dev_token.clone().expect("no sample token");
    let shown = format!("{dev:?} {dev:#?}");
    assert!(
        !shown.contains(&jwt) && !shown.contains("hunter2pw"),
        "{shown}"
    );
}

// ---------------------------------------------------------------------------
// (f) The layer in an axum router
// ---------------------------------------------------------------------------

#[tokio::test]
async fn axum_routes_and_websockets_share_a_router() {
    use axum::{Router, routing::get as axum_get};
    let layer = PgWsLayer::new(config().build().unwrap());
    let app = Router::new()
        .route("/", axum_get(|| async { "home" }))
        .layer(layer.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let res = send(addr, get("/")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(text(res).await, "home");
    assert_eq!(
        send(addr, get("/nope")).await.status(),
        StatusCode::NOT_FOUND
    );

    let chan = unique("axum");
    let mut ws = connect(addr, &format!("/{chan}/{}", token(claims("r", None)))).await;
    notify(&chan, "via axum").await;
    assert_eq!(recv_text(&mut ws).await, "via axum");
}

// ---------------------------------------------------------------------------
// The start-up report
// ---------------------------------------------------------------------------

fn report_for(builder: pgws::ConfigBuilder, pairs: &'static [(&str, &str)]) -> String {
    let s = server::Settings::from_vars(builder, vars(pairs)).unwrap();
    server::startup_report(&s, "0.0.0.0:3000".parse().unwrap(), None, None)
}

#[tokio::test]
async fn the_start_up_report_says_where_and_how() {
    let report = report_for(config(), &[("PGWS_HOST", "*")]);
    // A wildcard address is shown as something a browser can open.
    assert!(
        report.contains("listening on http://127.0.0.1:3000 (all addresses, 0.0.0.0:3000)"),
        "{report}"
    );
    assert!(
        report.contains("ws://127.0.0.1:3000/<channel>/<jwt>"),
        "{report}"
    );
    assert!(report.contains("Mapping:       per channel"), "{report}");
    assert!(report.contains("Origins:       any"), "{report}");
    // With a secret configured there is no sample token.
    assert!(!report.contains("WARNING"), "{report}");

    let report = report_for(
        config()
            .listen_channel("postgres-websockets-listener")
            .meta_channel("server-info")
            .allowed_origins(["https://a.example", "https://b.example"]),
        &[("PGWS_UPSTREAM", "http://127.0.0.1:3001")],
    );
    assert!(
        report.contains("multiplexed: one LISTEN on \"postgres-websockets-listener\""),
        "{report}"
    );
    assert!(report.contains("Meta channel:  server-info"), "{report}");
    assert!(
        report.contains("Origins:       https://a.example, https://b.example"),
        "{report}"
    );
    assert!(
        report.contains("Upstream:      http://127.0.0.1:3001"),
        "{report}"
    );
}

#[tokio::test]
async fn the_report_names_the_database_sslmode_and_never_the_password() {
    let uri = "postgres://postgres:hunter2@127.0.0.1:5432/postgres";
    let report = report_for(config().database_url(uri), &[]);
    assert!(
        report.contains("Database TLS:  sslmode=prefer: TLS when the server offers it"),
        "{report}"
    );
    let report = report_for(config().database_url(format!("{uri}?sslmode=require")), &[]);
    assert!(
        report.contains("Database TLS:  sslmode=require: TLS, certificate not verified"),
        "{report}"
    );
    assert!(!report.contains("hunter2"), "{report}");
}

#[tokio::test]
async fn in_dev_mode_the_report_has_a_token_and_the_chat_url() {
    let root = TempDir::new(&[("index.html", "<h1>chat</h1>")]);
    let dir = root.0.display().to_string();
    let var = move |name: &str| match name {
        "PGWS_ROOT_PATH" => Some(dir.clone()),
        _ => None,
    };
    // The layer's own settings come with the builder (`ConfigBuilder::from_env`).
    let builder = pgws::Config::builder()
        .database_url(db_uri())
        .path_prefix("ws/")
        .meta_channel("who");
    let s = server::Settings::from_vars(builder, var).unwrap();
    let jwt = s.dev_token.clone().unwrap();
    let report = server::startup_report(&s, "127.0.0.1:3000".parse().unwrap(), None, None);
    assert!(
        report.contains("WARNING: PGWS_JWT_SECRET is not set"),
        "{report}"
    );
    assert!(
        report.contains(&format!("ws://127.0.0.1:3000/ws/chat/{jwt}")),
        "{report}"
    );
    // The token in the fragment, which browsers never send.
    assert!(
        report.contains(&format!(
            "Chat page: http://127.0.0.1:3000/#token={jwt}&prefix=%2Fws&meta=who"
        )),
        "{report}"
    );
}

#[tokio::test]
async fn the_report_says_whether_the_database_answered() {
    let layer = PgWsLayer::new(config().build().unwrap());
    assert!(server::database_reachable(&layer, WAIT).await);
    let s = settings();
    let report = server::startup_report(&s, "127.0.0.1:3000".parse().unwrap(), None, Some(true));
    assert!(report.contains("Database:      reachable"), "{report}");

    let dead = config().database_url("postgres://postgres@127.0.0.1:1/postgres?connect_timeout=1");
    let layer = PgWsLayer::new(dead.build().unwrap());
    assert!(!server::database_reachable(&layer, std::time::Duration::from_millis(300)).await);
    let report = server::startup_report(&s, "127.0.0.1:3000".parse().unwrap(), None, Some(false));
    assert!(report.contains("Database:      NOT reachable"), "{report}");
    assert!(report.contains("PGWS_DB_URI"), "{report}");
}

#[tokio::test]
async fn a_client_that_never_finishes_its_request_head_is_dropped() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut settings = settings();
    settings.handshake_timeout = Duration::from_secs(1);
    let running = start(settings).await;
    let mut tcp = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    tcp.write_all(b"GET /chat HTTP/1.1\r\nUpgrade: websocket\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    // hyper answers 408 or just closes; either way the connection ends.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the half-sent request was never dropped");
}

#[test]
fn the_handshake_timeout_is_read_from_the_environment() {
    use std::time::Duration;
    let vars = |name: &str| (name == "PGWS_HANDSHAKE_TIMEOUT").then(|| "3".to_owned());
    let settings = server::Settings::from_vars(config(), vars).unwrap();
    assert_eq!(settings.handshake_timeout, Duration::from_secs(3));
    let bad = |name: &str| (name == "PGWS_HANDSHAKE_TIMEOUT").then(|| "soon".to_owned());
    let err = server::Settings::from_vars(config(), bad).unwrap_err();
    assert!(err.starts_with("PGWS_HANDSHAKE_TIMEOUT"), "{err}");
}

#[test]
fn the_development_database_is_planned_only_without_pgws_db_uri() {
    let plan = |pairs: &'static [(&'static str, &'static str)]| {
        server::Settings::from_vars(config(), vars(pairs)).map(|s| s.dev_db)
    };
    let dev_db = plan(&[("HOME", "/home/ada")]).unwrap().unwrap();
    assert_eq!(dev_db.mode, server::DevDbMode::Auto);
    assert_eq!(dev_db.default_addr, "127.0.0.1:5432".parse().unwrap());
    let home_default = std::path::Path::new("/home/ada/.local/share/pgws/devdb");
    let xdg = plan(&[("HOME", "/home/ada"), ("XDG_DATA_HOME", "/data")]).unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // User postgres, who runs the cluster for root, cannot reach root's home.
        let root_default = std::path::Path::new("/var/lib/pgws/devdb");
        assert_eq!(dev_db.dir.as_deref(), Some(root_default));
        assert_eq!(xdg.unwrap().dir.as_deref(), Some(root_default));
    } else {
        assert_eq!(dev_db.dir.as_deref(), Some(home_default));
        let xdg_default = std::path::Path::new("/data/pgws/devdb");
        assert_eq!(xdg.unwrap().dir.as_deref(), Some(xdg_default));
    }
    let on = plan(&[("PGWS_DEV_DB", "ON"), ("PGWS_DEV_DB_DIR", "/srv/db")]);
    let on = on.unwrap().unwrap();
    assert_eq!(on.mode, server::DevDbMode::On);
    assert_eq!(on.dir.as_deref(), Some(std::path::Path::new("/srv/db")));

    // A set PGWS_DB_URI always wins; off is off.
    let uri_set = &[
        ("PGWS_DB_URI", "postgres://app@db.example/app"),
        ("PGWS_DEV_DB", "on"),
    ];
    assert_eq!(plan(uri_set).unwrap(), None);
    assert_eq!(plan(&[("PGWS_DEV_DB", "off")]).unwrap(), None);
    let err = plan(&[("PGWS_DEV_DB", "yes")]).unwrap_err();
    assert!(err.starts_with("PGWS_DEV_DB"), "{err}");
}
