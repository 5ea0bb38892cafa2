//! TLS in the standalone server: `PGWS_CERTIFICATE_FILE` and `PGWS_KEY_FILE` (PEM),
//! served with rustls; a certificate made here with rcgen, a client that trusts it.

use pgws::server;

use std::{convert::Infallible, net::SocketAddr, path::PathBuf, sync::Arc};

use crate::common::{running::Running, *};
use bytes::Bytes;
use futures_util::SinkExt;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsConnector, client::TlsStream};
use tokio_websockets::{ClientBuilder, Message, WebSocketStream};

// ---------------------------------------------------------------------------
// Certificates and files
// ---------------------------------------------------------------------------

/// A self-signed certificate for `localhost` and its key, as PEM files in a
/// directory of their own (removed on drop).
pub(crate) struct Pki {
    dir: PathBuf,
    cert_der: rustls::pki_types::CertificateDer<'static>,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let dir = std::env::temp_dir().join(unique("pgws_tls"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cert.pem"), made.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), made.signing_key.serialize_pem()).unwrap();
        Pki {
            dir,
            cert_der: made.cert.der().clone(),
        }
    }

    pub(crate) fn cert(&self) -> String {
        self.dir.join("cert.pem").display().to_string()
    }

    pub(crate) fn key(&self) -> String {
        self.dir.join("key.pem").display().to_string()
    }

    fn file(&self, name: &str, content: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    }

    /// A directory of static files (away from the key) with this `index.html`.
    pub(crate) fn www(&self, index: &str) -> String {
        let www = self.dir.join("www");
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(www.join("index.html"), index).unwrap();
        www.display().to_string()
    }

    /// A TLS client that trusts this certificate only, offering `alpn`.
    fn connector(&self, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert_der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Server variables from pairs, as `Settings::from_vars` reads them.
fn vars(pairs: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
    move |name| {
        pairs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    }
}

pub(crate) fn tls_settings(pki: &Pki, extra: Vec<(&'static str, String)>) -> server::Settings {
    let mut pairs = vec![
        ("PGWS_CERTIFICATE_FILE", pki.cert()),
        ("PGWS_KEY_FILE", pki.key()),
    ];
    pairs.extend(extra);
    server::Settings::from_vars(config(), vars(pairs)).unwrap()
}

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

async fn start(settings: server::Settings) -> Running {
    Running::start(false, |listener, _, stop| {
        server::run(listener, settings, stop)
    })
    .await
}

pub(crate) async fn tls_connect(
    pki: &Pki,
    addr: SocketAddr,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(WAIT, pki.connector(alpn).connect(name, tcp))
        .await
        .expect("TLS handshake timed out")
}

/// A `wss://` handshake at `path` over a TLS stream that trusts `pki`.
async fn wss(
    pki: &Pki,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (WebSocketStream<TlsStream<TcpStream>>, http::HeaderMap) {
    let tls = tls_connect(pki, addr, &[b"http/1.1"]).await.unwrap();
    let uri: http::Uri = format!("wss://localhost:{}{path}", addr.port())
        .parse()
        .unwrap();
    let mut client = ClientBuilder::from_uri(uri);
    for (name, value) in headers {
        client = client
            .add_header(name.parse().unwrap(), value.parse().unwrap())
            .unwrap();
    }
    let (ws, res) = tokio::time::timeout(WAIT, client.connect_on(tls))
        .await
        .expect("handshake timed out")
        .expect("handshake refused");
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    (ws, res.headers().clone())
}

/// One HTTP/1.1 request over TLS.
async fn https(pki: &Pki, addr: SocketAddr, path: &str) -> Response<hyper::body::Incoming> {
    let tls = tls_connect(pki, addr, &[b"http/1.1"]).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(header::HOST, format!("localhost:{}", addr.port()))
        .body(Empty::<Bytes>::new())
        .unwrap();
    tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("request timed out")
        .unwrap()
}

// ---------------------------------------------------------------------------
// End to end
// ---------------------------------------------------------------------------

#[tokio::test]
async fn wss_handshake_and_a_message_both_ways() {
    let pki = Pki::new();
    let srv = start(tls_settings(&pki, vec![])).await;
    let chan = unique("tls_ws");
    let jwt = token(claims("rw", Some(&chan)));
    let (mut ws, _) = wss(&pki, srv.addr, &format!("/{chan}/{jwt}"), &[]).await;

    // Server to client: a NOTIFY from SQL.
    notify(&chan, "over TLS").await;
    assert_eq!(recv_text(&mut ws).await, "over TLS");

    // Client to server: the message is NOTIFYed, seen by SQL and by the socket itself.
    let mut listen = Listen::start(&chan).await;
    ws.send(Message::text("Hi over wss")).await.unwrap();
    let (_, payload) = listen.next().await;
    let envelope: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(envelope["payload"], "Hi over wss");
    let echoed: Value = serde_json::from_str(&recv_text(&mut ws).await).unwrap();
    assert_eq!(echoed["payload"], "Hi over wss");

    drop(ws);
    srv.stop().await;
}

#[tokio::test]
async fn the_subprotocol_token_works_over_tls() {
    let pki = Pki::new();
    let srv = start(tls_settings(&pki, vec![])).await;
    let chan = unique("tls_proto");
    let jwt = token(claims("r", None));
    let protocols = format!("pgws, pgws.bearer.{jwt}");
    let (mut ws, headers) = wss(
        &pki,
        srv.addr,
        &format!("/{chan}"),
        &[("sec-websocket-protocol", &protocols)],
    )
    .await;
    assert_eq!(headers["sec-websocket-protocol"], "pgws");
    notify(&chan, "hello").await;
    assert_eq!(recv_text(&mut ws).await, "hello");
}

#[tokio::test]
async fn https_static_files_and_the_proxy_says_https() {
    let pki = Pki::new();
    let root = pki.www("<h1>secure</h1>");
    let upstream = start_upstream().await;
    let srv = start(tls_settings(
        &pki,
        vec![
            ("PGWS_ROOT_PATH", root),
            ("PGWS_UPSTREAM", format!("http://{upstream}")),
        ],
    ))
    .await;

    let res = https(&pki, srv.addr, "/").await;
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "<h1>secure</h1>");

    let res = https(&pki, srv.addr, "/api/items").await;
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let seen: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["path"], "/api/items");
}

#[tokio::test]
async fn http2_is_offered_over_tls() {
    let pki = Pki::new();
    let srv = start(tls_settings(&pki, vec![])).await;
    let tls = tls_connect(&pki, srv.addr, &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
}

#[tokio::test]
async fn plain_http_is_not_served_on_the_tls_port() {
    let pki = Pki::new();
    let srv = start(tls_settings(&pki, vec![])).await;
    let stream = TcpStream::connect(srv.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/")
        .header(header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("the TLS port neither answered nor hung up");
    assert!(res.is_err(), "plain HTTP got an answer: {res:?}");
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_certificate_is_refused() {
    let pki = Pki::new();
    let srv = start(tls_settings(&pki, vec![])).await;
    let stranger = Pki::new();
    let err = tls_connect(&stranger, srv.addr, &[b"http/1.1"]).await;
    assert!(err.is_err(), "a client trusting another certificate got in");
    // The server is still fine for the next client.
    let res = https(&pki, srv.addr, "/nothing-here").await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_start_up_report_shows_wss_and_https() {
    let pki = Pki::new();
    let root = pki.www("<h1>chat</h1>");
    let builder = pgws::Config::builder().database_url(db_uri());
    let settings = server::Settings::from_vars(
        builder,
        vars(vec![
            ("PGWS_CERTIFICATE_FILE", pki.cert()),
            ("PGWS_KEY_FILE", pki.key()),
            ("PGWS_ROOT_PATH", root),
        ]),
    )
    .unwrap();
    let addr: SocketAddr = "127.0.0.1:3443".parse().unwrap();
    let report = server::startup_report(&settings, addr, None, None);
    assert!(
        report.contains("listening on https://127.0.0.1:3443"),
        "{report}"
    );
    assert!(report.contains("wss://127.0.0.1:3443/chat/"), "{report}");
    assert!(
        report.contains("Chat page: https://127.0.0.1:3443/#token="),
        "{report}"
    );
    assert!(report.contains("TLS:           on"), "{report}");
}

// ---------------------------------------------------------------------------
// Start-up refusals
// ---------------------------------------------------------------------------

fn refusal(pairs: Vec<(&'static str, String)>) -> String {
    server::Settings::from_vars(config(), vars(pairs)).expect_err("start-up went on")
}

#[tokio::test]
async fn a_missing_or_unreadable_file_stops_start_up_naming_it() {
    let pki = Pki::new();
    let missing = pki.dir.join("no-such-cert.pem").display().to_string();
    let err = refusal(vec![
        ("PGWS_CERTIFICATE_FILE", missing.clone()),
        ("PGWS_KEY_FILE", pki.key()),
    ]);
    assert!(err.starts_with("PGWS_CERTIFICATE_FILE"), "{err}");
    assert!(err.contains(&missing), "{err}");

    let missing = pki.dir.join("no-such-key.pem").display().to_string();
    let err = refusal(vec![
        ("PGWS_CERTIFICATE_FILE", pki.cert()),
        ("PGWS_KEY_FILE", missing.clone()),
    ]);
    assert!(err.starts_with("PGWS_KEY_FILE"), "{err}");
    assert!(err.contains(&missing), "{err}");

    // A directory cannot be read as a file.
    let dir = pki.dir.display().to_string();
    let err = refusal(vec![
        ("PGWS_CERTIFICATE_FILE", dir.clone()),
        ("PGWS_KEY_FILE", pki.key()),
    ]);
    assert!(err.starts_with("PGWS_CERTIFICATE_FILE"), "{err}");
    assert!(err.contains(&dir), "{err}");
}

#[tokio::test]
async fn files_that_are_not_a_certificate_and_its_key_stop_start_up() {
    let pki = Pki::new();
    let junk = pki.file("junk.pem", "not PEM at all\n");
    let err = refusal(vec![
        ("PGWS_CERTIFICATE_FILE", junk.clone()),
        ("PGWS_KEY_FILE", pki.key()),
    ]);
    assert!(err.starts_with("PGWS_CERTIFICATE_FILE"), "{err}");
    assert!(err.contains(&junk), "{err}");

    let err = refusal(vec![
        ("PGWS_CERTIFICATE_FILE", pki.cert()),
        ("PGWS_KEY_FILE", junk.clone()),
    ]);
    assert!(err.starts_with("PGWS_KEY_FILE"), "{err}");
    assert!(err.contains(&junk), "{err}");

    // The key of another certificate.
    let other = Pki::new();
    let err = refusal(vec![
        ("PGWS_CERTIFICATE_FILE", pki.cert()),
        ("PGWS_KEY_FILE", other.key()),
    ]);
    assert!(err.starts_with("PGWS_KEY_FILE"), "{err}");
}

#[tokio::test]
async fn both_files_or_neither() {
    let pki = Pki::new();
    let err = refusal(vec![("PGWS_CERTIFICATE_FILE", pki.cert())]);
    assert!(err.starts_with("PGWS_CERTIFICATE_FILE"), "{err}");
    assert!(err.contains("PGWS_KEY_FILE"), "{err}");
    let err = refusal(vec![("PGWS_KEY_FILE", pki.key())]);
    assert!(err.starts_with("PGWS_KEY_FILE"), "{err}");
    assert!(err.contains("PGWS_CERTIFICATE_FILE"), "{err}");
    // Empty counts as unset: plain HTTP.
    let s = server::Settings::from_vars(
        config(),
        vars(vec![
            ("PGWS_CERTIFICATE_FILE", String::new()),
            ("PGWS_KEY_FILE", String::new()),
        ]),
    )
    .unwrap();
    assert!(s.tls.is_none());
}

// ---------------------------------------------------------------------------
// An upstream that answers what it saw
// ---------------------------------------------------------------------------

async fn start_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| {
                    let seen = json!({
                        "path": req.uri().path(),
                        "x-forwarded-proto": req.headers()
                            .get("x-forwarded-proto")
                            .and_then(|v| v.to_str().ok()),
                    });
                    std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                        seen.to_string(),
                    )))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}
