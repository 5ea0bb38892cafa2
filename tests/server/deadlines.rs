//! Connection deadlines of the standalone server (PROTOCOL.md §12): a connection
//! that sends nothing, half a preface, or nothing more after a request is closed
//! after its deadline, over TCP, TLS and HTTP/2; live WebSockets and event
//! streams are not. Every deadline is 1 s here, the others long, so that each
//! test sees the one it names.

use pgws::server;

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::json;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinHandle,
};

use crate::{
    common::{running::Running, *},
    http2::{H2, h2_ws, request, sse_texts, ws_texts},
    tls::{Pki, tls_connect, tls_settings},
};

/// Long enough for a 1 s deadline to pass, well short of the 10 s defaults and
/// of the 30 s that the other deadlines get in these tests.
const CLOSED_WITHIN: Duration = Duration::from_secs(5);
/// How long the live streams are left alone: past every 1 s deadline.
const PAST_THE_DEADLINES: Duration = Duration::from_millis(2500);

/// HTTP/2's connection preface (RFC 9113 §3.4) and an empty SETTINGS frame.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

async fn start(pairs: Vec<(&'static str, String)>) -> Running {
    let settings = server::Settings::from_vars(config(), move |name| {
        pairs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    })
    .unwrap();
    start_with(settings).await
}

async fn start_with(settings: server::Settings) -> Running {
    Running::start(false, |listener, _, stop| {
        server::run(listener, settings, stop)
    })
    .await
}

/// Every deadline at 30 s but `only`, at 1 s.
fn only(only: &'static str) -> Vec<(&'static str, String)> {
    [
        "PGWS_HANDSHAKE_TIMEOUT",
        "PGWS_KEEPALIVE_TIMEOUT",
        "PGWS_HTTP2_IDLE_TIMEOUT",
    ]
    .into_iter()
    .map(|var| (var, if var == only { "1" } else { "30" }.to_owned()))
    .collect()
}

/// Every deadline at 1 s.
fn all_short() -> Vec<(&'static str, String)> {
    let mut pairs = only("PGWS_HANDSHAKE_TIMEOUT");
    for (_, v) in &mut pairs {
        *v = "1".to_owned();
    }
    pairs
}

/// Whether the server closes `io` within [`CLOSED_WITHIN`]; what it sends is read
/// and dropped.
async fn closed<I: AsyncRead + Unpin>(io: &mut I) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(CLOSED_WITHIN, async {
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// A raw TCP connection to `addr` that has sent `bytes`.
async fn sent(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    tcp
}

// ---------------------------------------------------------------------------
// Before the first request
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed() {
    let srv = start(only("PGWS_HANDSHAKE_TIMEOUT")).await;
    let mut tcp = sent(srv.addr, b"").await;
    assert!(closed(&mut tcp).await, "a silent connection stayed open");
}

#[tokio::test]
async fn half_an_http2_preface_is_closed() {
    let srv = start(only("PGWS_HANDSHAKE_TIMEOUT")).await;
    let mut tcp = sent(srv.addr, &PREFACE[..10]).await;
    assert!(closed(&mut tcp).await, "half a preface stayed open");
}

#[tokio::test]
async fn an_http2_preface_and_settings_then_silence_is_closed() {
    let srv = start(only("PGWS_HANDSHAKE_TIMEOUT")).await;
    let mut tcp = sent(srv.addr, &[PREFACE, &EMPTY_SETTINGS].concat()).await;
    assert!(closed(&mut tcp).await, "preface and SETTINGS stayed open");
}

#[tokio::test]
async fn the_handshake_deadline_holds_with_http2_off() {
    let mut pairs = only("PGWS_HANDSHAKE_TIMEOUT");
    pairs.push(("PGWS_HTTP2_MAX_STREAMS", "0".to_owned()));
    let srv = start(pairs).await;
    let mut tcp = sent(srv.addr, b"").await;
    assert!(closed(&mut tcp).await, "a silent connection stayed open");
}

#[tokio::test]
async fn a_tls_client_that_never_says_hello_is_closed() {
    let pki = Pki::new();
    let srv = start_with(tls_settings(&pki, only("PGWS_HANDSHAKE_TIMEOUT"))).await;
    let mut tcp = sent(srv.addr, b"").await;
    assert!(closed(&mut tcp).await, "a silent TLS client stayed open");
}

#[tokio::test]
async fn a_tls_client_silent_after_its_handshake_is_closed() {
    let pki = Pki::new();
    let srv = start_with(tls_settings(&pki, only("PGWS_HANDSHAKE_TIMEOUT"))).await;
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let mut tls = tls_connect(&pki, srv.addr, &[alpn]).await.unwrap();
        assert!(closed(&mut tls).await, "silent after the TLS handshake");
    }
}

// ---------------------------------------------------------------------------
// Between requests
// ---------------------------------------------------------------------------

const GET_404: &[u8] = b"GET /nothing HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// Reads one `404 Not Found` answer (its body is `Not Found`) off `tcp`.
async fn read_404(tcp: &mut TcpStream) {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(WAIT, async {
        while !got.ends_with(b"\r\n\r\nNot Found") {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the answer");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("no answer in time");
    assert!(got.starts_with(b"HTTP/1.1 404"));
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let srv = start(only("PGWS_KEEPALIVE_TIMEOUT")).await;
    let mut tcp = sent(srv.addr, GET_404).await;
    read_404(&mut tcp).await;
    // Within the deadline, the connection takes the next request.
    tokio::time::sleep(Duration::from_millis(300)).await;
    tcp.write_all(GET_404).await.unwrap();
    read_404(&mut tcp).await;
    assert!(
        closed(&mut tcp).await,
        "an idle keep-alive connection stayed open"
    );
}

#[tokio::test]
async fn half_a_second_request_head_is_closed_by_the_keep_alive_deadline() {
    let srv = start(only("PGWS_KEEPALIVE_TIMEOUT")).await;
    let mut tcp = sent(srv.addr, GET_404).await;
    read_404(&mut tcp).await;
    tcp.write_all(b"GET /nothing HTTP/1.1\r\nHost:")
        .await
        .unwrap();
    assert!(closed(&mut tcp).await, "half a request head stayed open");
}

/// An HTTP/2 connection whose driver task ends when the server closes it.
async fn h2c_watched(addr: SocketAddr) -> (H2, JoinHandle<hyper::Result<()>>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    (sender, tokio::spawn(conn))
}

fn h2_get(uri: &str) -> Request<crate::http2::TestBody> {
    Request::get(uri)
        .body(
            Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap()
}

#[tokio::test]
async fn an_http2_connection_with_no_open_stream_is_closed() {
    let srv = start(only("PGWS_HTTP2_IDLE_TIMEOUT")).await;
    let (h2, conn) = h2c_watched(srv.addr).await;
    for _ in 0..2 {
        let res = request(&h2, h2_get("http://localhost/nothing")).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        res.into_body().collect().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let ended = tokio::time::timeout(CLOSED_WITHIN, conn).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection stayed open");
}

// ---------------------------------------------------------------------------
// Live streams
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_websocket_and_an_event_stream_outlive_every_deadline() {
    let srv = start(all_short()).await;
    let chan = unique("deadline_h1");
    let jwt = token(json!({"mode": "rw", "channel": chan}));
    let uri: http::Uri = format!("ws://{}/{chan}/{jwt}", srv.addr).parse().unwrap();
    let (mut ws, _) = tokio::time::timeout(
        WAIT,
        tokio_websockets::ClientBuilder::from_uri(uri).connect(),
    )
    .await
    .unwrap()
    .unwrap();

    let tcp = TcpStream::connect(srv.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("/{chan}/{jwt}"))
        .header(header::HOST, "localhost")
        .header(header::ACCEPT, "text/event-stream")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut events = res.into_body().into_data_stream();

    tokio::time::sleep(PAST_THE_DEADLINES).await;
    notify(&chan, "still here").await;
    assert_eq!(recv_text(&mut ws).await, "still here");
    let mut seen = String::new();
    tokio::time::timeout(WAIT, async {
        while !seen.contains("data: still here") {
            let chunk = events.next().await.expect("stream ended").unwrap();
            seen.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    })
    .await
    .expect("the event stream did not get the notification");
    send_text(&mut ws, "and talking").await;
    assert!(recv_text(&mut ws).await.contains("and talking"));
}

#[tokio::test]
async fn http2_websockets_and_event_streams_outlive_every_deadline() {
    let srv = start(all_short()).await;
    let chan = unique("deadline_h2");
    let jwt = token(claims("r", Some(&chan)));
    let uri = format!("http://localhost/{chan}/{jwt}");
    // One connection each: the event stream alone would keep a connection busy.
    let (ws_conn, _ws_driver) = h2c_watched(srv.addr).await;
    let mut ws = ws_texts(h2_ws(&ws_conn, &uri).await);
    let (sse_conn, _sse_driver) = h2c_watched(srv.addr).await;
    let mut events = sse_texts(&sse_conn, &uri).await;

    tokio::time::sleep(PAST_THE_DEADLINES).await;
    notify(&chan, "still here").await;
    for texts in [&mut ws, &mut events] {
        let text = tokio::time::timeout(WAIT, texts.next()).await;
        assert_eq!(text.unwrap().as_deref(), Some("still here"));
    }
}

// ---------------------------------------------------------------------------
// A client that stops reading
// ---------------------------------------------------------------------------

/// An event stream whose client takes nothing more is dropped once a write has
/// been blocked for `PGWS_WRITE_TIMEOUT`: it gives its place under
/// `PGWS_MAX_SOCKETS` back (it kept it until TCP gave up).
#[tokio::test]
async fn an_event_stream_that_stops_reading_is_dropped_at_the_write_timeout() {
    let mut pairs = only("PGWS_HANDSHAKE_TIMEOUT");
    pairs.push(("PGWS_WRITE_TIMEOUT", "1".to_owned()));
    pairs.push(("PGWS_MAX_SOCKETS", "1".to_owned()));
    let srv = start(pairs).await;
    let chan = unique("stalled");
    let path = format!("/{}", token(claims("r", Some(&chan))));
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(srv.addr).await.unwrap();
    let head =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n");
    stalled.write_all(head.as_bytes()).await.unwrap();
    let mut first = [0u8; 12];
    stalled.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    // More than the socket buffers hold (the server's grows to megabytes), and
    // it reads no more.
    let payload = "x".repeat(7000);
    let db = db().await;
    let burst = "select count(pg_notify($1, $2 || g)) from generate_series(1, 1000) g";
    for _ in 0..3 {
        db.execute(burst, &[&chan, &payload]).await.unwrap();
    }
    // Past the write timeout with nothing taken: the server lets go of it.
    tokio::time::sleep(PAST_THE_DEADLINES).await;
    let (status, body) = handshake_at(srv.addr, &path).await;
    assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS, "{body}");
    assert!(
        closed(&mut stalled).await,
        "the stalled connection stayed open"
    );
}

async fn handshake_at(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let (status, _, body) = send_to(addr, handshake_request(path, &[])).await;
    (status, body)
}
