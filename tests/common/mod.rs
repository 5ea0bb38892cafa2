//! Shared helpers: a real server on loopback, a real WebSocket client, the real
//! PostgreSQL of [`db_uri`].
#![allow(dead_code)]

pub mod blackhole;
pub mod cluster;
pub mod frames;
pub mod latency;
#[cfg(feature = "server")]
pub mod program;
pub mod rows;
pub mod running;
pub mod stalled;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use pgws::{ConfigBuilder, PgWsLayer};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};
use tower::{Layer, service_fn};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub const SECRET: &str = "reallyreallyreallyreallyverysafe";
pub const WAIT: Duration = Duration::from_secs(10);

/// The tests' database: `PGWS_TEST_DB_URI`, else the default database when user
/// `postgres` gets in there without a password, else the tests' own cluster
/// ([`cluster::shared_uri`], also chosen by `PGWS_TEST_DB_URI=cluster`). Decided
/// once per test binary.
pub fn db_uri() -> String {
    static URI: OnceLock<String> = OnceLock::new();
    URI.get_or_init(|| {
        let configured = std::env::var("PGWS_TEST_DB_URI").ok();
        match configured.as_deref() {
            None | Some("") => {}
            Some("cluster") => return cluster::shared_uri(),
            Some(uri) => return uri.to_owned(),
        }
        if default_database_lets_us_in() {
            return pgws::DEFAULT_DATABASE_URL.to_owned();
        }
        cluster::shared_uri()
    })
    .clone()
}

/// Whether [`pgws::DEFAULT_DATABASE_URL`] connects, tried on a thread of its own:
/// `db_uri` may be called inside or outside a runtime.
fn default_database_lets_us_in() -> bool {
    std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let connect =
                tokio_postgres::connect(pgws::DEFAULT_DATABASE_URL, tokio_postgres::NoTls);
            matches!(tokio::time::timeout(WAIT, connect).await, Ok(Ok(_)))
        })
    })
    .join()
    .unwrap()
}

/// A channel name no other test uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token over `claims` with [`SECRET`].
pub fn token(claims: Value) -> String {
    token_with(&claims, SECRET.as_bytes())
}

pub fn token_with(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// A builder with the test database and [`SECRET`].
pub fn config() -> ConfigBuilder {
    pgws::Config::builder()
        .database_url(db_uri())
        .jwt_secret(SECRET)
}

/// A layer over an inner service that answers `200 inner <path>`, on loopback.
pub struct TestServer {
    pub addr: SocketAddr,
    pub layer: PgWsLayer,
}

impl TestServer {
    pub async fn start(config: ConfigBuilder) -> TestServer {
        let layer = PgWsLayer::new(config.build().unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let svc_layer = layer.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let svc = svc_layer.layer(service_fn(inner));
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(
                            TokioIo::new(stream),
                            TowerToHyperService::new(svc),
                        )
                        .await;
                });
            }
        });
        TestServer { addr, layer }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Opens a socket at `path`; panics on a refusal.
    pub async fn connect(&self, path: &str) -> Ws {
        match self.try_connect(path).await {
            Ok(ws) => ws,
            Err(e) => panic!("handshake for {path} failed: {e}"),
        }
    }

    pub async fn try_connect(&self, path: &str) -> Result<Ws, tokio_websockets::Error> {
        let uri: http::Uri = self.url(path).parse().unwrap();
        let (ws, _) = tokio::time::timeout(WAIT, ClientBuilder::from_uri(uri).connect())
            .await
            .expect("handshake timed out")?;
        Ok(ws)
    }

    /// A handshake over plain HTTP/1.1, for refusals: status and body.
    pub async fn handshake(&self, path: &str) -> (StatusCode, String) {
        self.request(handshake_request(path, &[])).await
    }

    /// Any request; status and body.
    pub async fn request(&self, req: Request<Full<Bytes>>) -> (StatusCode, String) {
        let (status, _, body) = send_to(self.addr, req).await;
        (status, body)
    }
}

/// A WebSocket handshake request for `path`, with extra headers.
pub fn handshake_request(path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut req = Request::get(path)
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(Full::default()).unwrap()
}

/// One HTTP/1.1 request on a fresh connection (upgrades allowed): status,
/// headers and body. A missing `Host` is set to `addr`.
pub async fn send_to(
    addr: SocketAddr,
    mut req: Request<Full<Bytes>>,
) -> (StatusCode, http::HeaderMap, String) {
    if !req.headers().contains_key(http::header::HOST) {
        let host = addr.to_string().parse().unwrap();
        req.headers_mut().insert(http::header::HOST, host);
    }
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    let res = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("request timed out")
        .unwrap();
    let (parts, body) = res.into_parts();
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        return (parts.status, parts.headers, String::new());
    }
    let body = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("body timed out")
        .unwrap()
        .to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    (parts.status, parts.headers, text)
}

async fn inner(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = format!("inner {}", req.uri().path());
    Ok(Response::new(Full::new(Bytes::from(body))))
}

/// Environment variables for `server::Settings::from_vars`, without touching the
/// process environment (tests run in parallel).
pub fn vars(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |name| {
        pairs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

/// A claims object with a mode and optional channel claim, expiring in an hour.
pub fn claims(mode: &str, channel: Option<&str>) -> Value {
    let mut c = json!({"mode": mode, "exp": now() + 3600});
    if let Some(ch) = channel {
        c["channel"] = json!(ch);
    }
    c
}

/// `NOTIFY` from SQL on a fresh connection.
pub async fn notify(channel: &str, payload: &str) {
    let client = db().await;
    client
        .execute("select pg_notify($1, $2)", &[&channel, &payload])
        .await
        .unwrap();
}

/// Runs `statements` on the test database from a thread and runtime of its own, so
/// that a `Drop` can clean up, also while a test panics. Errors are ignored.
pub fn cleanup_sql(statements: Vec<String>) {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let client = db().await;
                for statement in statements {
                    let _ = client.batch_execute(&statement).await;
                }
            });
    })
    .join()
    .unwrap();
}

/// A fresh client whose connection is driven in the background.
pub async fn db() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&db_uri(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// Ends every backend whose `application_name` is `app` (a test's own pgws
/// connections); how many there were.
pub async fn terminate_backends(app: &str) -> i64 {
    db().await
        .query_one(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity \
             where application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .get(0)
}

/// A LISTEN connection that collects notifications of `channel`.
pub struct Listen {
    _client: tokio_postgres::Client,
    rx: tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
}

impl Listen {
    pub async fn start(channel: &str) -> Listen {
        let (client, mut conn) = tokio_postgres::connect(&db_uri(), tokio_postgres::NoTls)
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                if let tokio_postgres::AsyncMessage::Notification(n) = msg {
                    let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
                }
            }
        });
        let sql = format!("LISTEN {}", postgres_quote(channel));
        client.batch_execute(&sql).await.unwrap();
        Listen {
            _client: client,
            rx,
        }
    }

    /// The next notification's payload.
    pub async fn next(&mut self) -> (String, String) {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("no notification in time")
            .expect("listen connection ended")
    }

    /// Nothing more arrives within `d`.
    pub async fn quiet_for(&mut self, d: Duration) -> bool {
        tokio::time::timeout(d, self.rx.recv()).await.is_err()
    }
}

pub fn postgres_quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The next text message, over any transport (plain or TLS).
pub async fn recv_text<S>(ws: &mut WebSocketStream<S>) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no message in time")
            .expect("socket ended")
            .expect("socket failed");
        if let Some(text) = msg.as_text() {
            return text.to_owned();
        }
        assert!(!msg.is_close(), "closed: {:?}", msg.as_close());
    }
}

/// Reads until the close frame; its code and reason.
pub async fn recv_close<S>(ws: &mut tokio_websockets::WebSocketStream<S>) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no close in time")
            .expect("socket ended without a close frame")
            .expect("socket failed");
        if let Some((code, reason)) = msg.as_close() {
            return (code.into(), reason.to_owned());
        }
    }
}

pub async fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text.to_owned())).await.unwrap();
}

/// `GET <target>` sent as is (`curl --path-as-is`): the status and the body.
pub async fn get_as_is(addr: SocketAddr, target: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let head = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer))
        .await
        .expect("no answer in time")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer[9..12].parse().unwrap();
    let body = answer.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}
