//! What the reverse proxy lets through to `PGWS_UPSTREAM` (PROTOCOL.md §13): no
//! path out of the upstream's base path, in any spelling, and no header a proxy
//! must not forward; the forwarding headers come from the real peer.

use pgws::server;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};

use crate::{
    common::{running::Running, *},
    server::{seen, start_upstream},
};

async fn start(upstream: String) -> Running {
    let mut settings = server::Settings::new(config().build().unwrap());
    settings.upstream = Some(upstream.parse().unwrap());
    Running::start(false, |listener, _, stop| {
        server::run(listener, settings, stop)
    })
    .await
}

// ---------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------

/// Every request path an upstream saw, as it came.
type Seen = Arc<Mutex<Vec<String>>>;

/// An upstream on 127.0.0.1:0 that records each path it is asked for and
/// answers `200` with the path.
async fn recording_upstream() -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = record.clone();
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let path = req.uri().path().to_owned();
                record.lock().unwrap().push(path.clone());
                let res = Response::new(Full::new(Bytes::from(path)));
                std::future::ready(Ok::<_, Infallible>(res))
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn no_spelling_of_a_dot_segment_leaves_the_base_path() {
    let (up, seen) = recording_upstream().await;
    let srv = start(format!("http://{up}/public")).await;
    for target in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/.%2E/secret.txt",
        "/%2e./secret.txt",
        "/a/../../secret.txt",
        "/a/./../../secret.txt",
        "/..",
        "/./secret.txt",
        "/..%2fsecret.txt",
        "/..%2Fsecret.txt",
        "/..%5csecret.txt",
        "/a%2f..%2f..%2fsecret.txt",
        "/..?q=1",
    ] {
        let (status, body) = get_as_is(srv.addr, target).await;
        assert_eq!(status, 400, "{target}: {body}");
        assert_eq!(body, "Bad Request: a path segment is . or ..", "{target}");
    }
    assert_eq!(*seen.lock().unwrap(), Vec::<String>::new());

    // Dots that are no segment of their own go through as they came.
    for target in [
        "/file.txt",
        "/a..b/...",
        "/.well-known/x",
        "/v1.2/%2e%2ex",
        "/q?path=../../etc",
    ] {
        let (status, _) = get_as_is(srv.addr, target).await;
        assert_eq!(status, 200, "{target}");
    }
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "/public/file.txt",
            "/public/a..b/...",
            "/public/.well-known/x",
            "/public/v1.2/%2e%2ex",
            "/public/q",
        ]
    );
}

// ---------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------

/// What the echo upstream saw of a request with `headers`, sent over HTTP/1.1.
async fn echoed(addr: SocketAddr, headers: &[(&str, &str)]) -> Value {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::get("/h");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let res = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("no answer in time")
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn what_the_client_says_of_earlier_hops_never_reaches_the_upstream() {
    let up = start_upstream().await;
    let srv = start(format!("http://{up}")).await;
    let echo = echoed(
        srv.addr,
        &[
            (header::HOST.as_str(), "pgws.example:8080"),
            ("forwarded", "for=10.0.0.1;proto=https;host=admin.example"),
            ("x-real-ip", "10.0.0.2"),
            ("x-forwarded-for", "10.0.0.3"),
            ("x-forwarded-host", "admin.example"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-prefix", "/admin"),
            ("proxy-connection", "keep-alive"),
            ("connection", "x-named-hop"),
            ("x-named-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("proxy-authorization", "Basic eDp5"),
            ("upgrade", "websocket"),
            ("x-end-to-end", "kept"),
        ],
    )
    .await;
    for name in [
        "x-real-ip",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "proxy-connection",
        "connection",
        "x-named-hop",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "upgrade",
    ] {
        assert_eq!(seen(&echo, name), None, "{name} was forwarded");
    }
    assert_eq!(seen(&echo, "x-end-to-end"), Some("kept"));
    // One value each, from what pgws knows of the client.
    for (name, value) in [
        (
            "forwarded",
            r#"for=127.0.0.1;proto=http;host="pgws.example:8080""#,
        ),
        ("x-forwarded-for", "127.0.0.1"),
        ("x-forwarded-host", "pgws.example:8080"),
        ("x-forwarded-proto", "http"),
    ] {
        assert_eq!(echo["headers"][name], serde_json::json!([value]), "{name}");
    }
}

#[tokio::test]
async fn forwarded_quotes_an_ipv6_peer() {
    let Ok(listener) = TcpListener::bind("[::1]:0").await else {
        eprintln!("no IPv6 loopback here: skipped");
        return;
    };
    let up = start_upstream().await;
    let mut settings = server::Settings::new(config().build().unwrap());
    settings.upstream = Some(format!("http://{up}").parse().unwrap());
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::run(listener, settings, async {
        let _ = stopped.await;
    }));
    let echo = echoed(addr, &[(header::HOST.as_str(), "[::1]")]).await;
    assert_eq!(
        echo["headers"]["forwarded"],
        serde_json::json!([r#"for="[::1]";proto=http;host="[::1]""#])
    );
    assert_eq!(seen(&echo, "x-forwarded-for"), Some("::1"));
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT * 3, task).await.unwrap().unwrap();
}
