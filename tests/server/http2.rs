//! HTTP/2 in the standalone server: h2 over TLS through ALPN and cleartext h2 with
//! prior knowledge, with hyper's own HTTP/2 client; the proxy, static files and
//! WebSockets over HTTP/2 (RFC 8441 extended CONNECT), many of them on one
//! connection; HTTP/1.1 on the same port; `PGWS_HTTP2_MAX_STREAMS`.

use pgws::server;

use std::{convert::Infallible, future::Future, net::SocketAddr, pin::Pin};

use bytes::Bytes;
use futures_util::{SinkExt, Stream, StreamExt, future::join_all};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{body::Incoming, client::conn::http2::SendRequest, ext::Protocol, upgrade::Upgraded};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_websockets::{ClientBuilder, Message, WebSocketStream};

use crate::{
    common::{running::Running, *},
    server::{seen, start_upstream},
    tls::{Pki, tls_connect, tls_settings},
};

pub(crate) type TestBody = BoxBody<Bytes, Infallible>;
/// One HTTP/2 connection: every request sent through it (or a clone) is a stream on it.
pub(crate) type H2 = SendRequest<TestBody>;
/// A WebSocket over one HTTP/2 stream.
pub(crate) type H2Ws = WebSocketStream<TokioIo<Upgraded>>;

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

async fn start(settings: server::Settings) -> Running {
    Running::start(false, |listener, _, stop| {
        server::run(listener, settings, stop)
    })
    .await
}

fn settings_with(pairs: &'static [(&'static str, &'static str)]) -> server::Settings {
    server::Settings::from_vars(config(), vars(pairs)).unwrap()
}

fn with_upstream(mut s: server::Settings, upstream: SocketAddr) -> server::Settings {
    s.upstream = Some(format!("http://{upstream}").parse().unwrap());
    s
}

fn empty() -> TestBody {
    Full::new(Bytes::new()).boxed()
}

/// HTTP/2 over `io`, the connection driven in the background.
async fn h2_handshake<I>(io: I) -> hyper::Result<H2>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(io))
        .await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Cleartext HTTP/2 with prior knowledge (`curl --http2-prior-knowledge`).
async fn h2c(addr: SocketAddr) -> H2 {
    let tcp = TcpStream::connect(addr).await.unwrap();
    h2_handshake(tcp).await.unwrap()
}

/// HTTP/2 over TLS, chosen through ALPN (`curl --http2`).
async fn h2_tls(pki: &Pki, addr: SocketAddr) -> H2 {
    let tls = tls_connect(pki, addr, &[b"h2", b"http/1.1"]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    h2_handshake(tls).await.unwrap()
}

/// One request on the connection; `uri` is absolute (`http://localhost/...`), as
/// HTTP/2 sends the scheme and authority as pseudo-headers.
pub(crate) async fn request(h2: &H2, req: Request<TestBody>) -> Response<Incoming> {
    let mut h2 = h2.clone();
    tokio::time::timeout(WAIT, async {
        h2.ready().await?;
        h2.send_request(req).await
    })
    .await
    .expect("request timed out")
    .expect("request failed")
}

async fn body_bytes(res: Response<Incoming>) -> Bytes {
    tokio::time::timeout(WAIT, res.into_body().collect())
        .await
        .expect("body timed out")
        .unwrap()
        .to_bytes()
}

async fn get(h2: &H2, uri: &str) -> Response<Incoming> {
    let res = request(h2, Request::get(uri).body(empty()).unwrap()).await;
    assert_eq!(res.version(), Version::HTTP_2);
    res
}

/// What the echo upstream saw of a request sent over `h2`.
async fn echoed(h2: &H2, req: Request<TestBody>) -> Value {
    let res = request(h2, req).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.version(), Version::HTTP_2);
    serde_json::from_slice(&body_bytes(res).await).unwrap()
}

/// An RFC 8441 extended CONNECT for a WebSocket at `uri`: `:protocol websocket`,
/// `Sec-WebSocket-Version: 13`, no key.
fn extended_connect(uri: &str, headers: &[(&str, &str)]) -> Request<TestBody> {
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .version(Version::HTTP_2)
        .uri(uri)
        .header(header::SEC_WEBSOCKET_VERSION, "13");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let mut req = req.body(empty()).unwrap();
    req.extensions_mut()
        .insert(Protocol::from_static("websocket"));
    req
}

/// A WebSocket over a new stream of `h2`, or the refusal.
async fn h2_websocket(
    h2: &H2,
    uri: &str,
    headers: &[(&str, &str)],
) -> Result<(H2Ws, HeaderMap), Response<Incoming>> {
    let mut res = request(h2, extended_connect(uri, headers)).await;
    if res.status() != StatusCode::OK {
        return Err(res);
    }
    let headers = res.headers().clone();
    let upgraded = tokio::time::timeout(WAIT, hyper::upgrade::on(&mut res))
        .await
        .expect("no stream in time")
        .expect("the stream did not become a socket");
    Ok((
        ClientBuilder::new().take_over(TokioIo::new(upgraded)),
        headers,
    ))
}

pub(crate) async fn h2_ws(h2: &H2, uri: &str) -> H2Ws {
    match h2_websocket(h2, uri, &[]).await {
        Ok((ws, _)) => ws,
        Err(res) => panic!("refused: {}", res.status()),
    }
}

/// The status and body of a refused extended CONNECT.
async fn h2_refusal(h2: &H2, uri: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
    let res = match h2_websocket(h2, uri, headers).await {
        Ok(_) => panic!("{uri} was accepted"),
        Err(res) => res,
    };
    let status = res.status();
    let body = String::from_utf8(body_bytes(res).await.to_vec()).unwrap();
    (status, body)
}

// ---------------------------------------------------------------------------
// Many long-lived streams on one connection
// ---------------------------------------------------------------------------

/// A long-lived stream on an HTTP/2 connection, as the texts it receives.
pub(crate) type Texts = Pin<Box<dyn Stream<Item = String> + Send>>;

/// The texts of a WebSocket (pings and pongs are the codec's business).
pub(crate) fn ws_texts(ws: H2Ws) -> Texts {
    Box::pin(ws.filter_map(|msg| {
        let text = msg.ok().and_then(|m| m.as_text().map(str::to_owned));
        std::future::ready(text)
    }))
}

/// The `data` of each event of a server-sent event stream (comments, `retry`
/// and id-only events carry none).
pub(crate) async fn sse_texts(h2: &H2, uri: &str) -> Texts {
    let req = Request::get(uri)
        .header(header::ACCEPT, "text/event-stream")
        .body(empty())
        .unwrap();
    let res = request(h2, req).await;
    assert_eq!(res.status(), StatusCode::OK);
    let chunks = res.into_body().into_data_stream();
    let events = futures_util::stream::unfold(
        (chunks, String::new()),
        |(mut chunks, mut buf)| async move {
            loop {
                if let Some(end) = buf.find("\n\n") {
                    let event: String = buf.drain(..end + 2).collect();
                    return Some((event, (chunks, buf)));
                }
                let chunk = chunks.next().await?.ok()?;
                buf.push_str(std::str::from_utf8(&chunk).ok()?);
            }
        },
    );
    Box::pin(events.filter_map(|event| {
        let data: Vec<&str> = event
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        std::future::ready((!data.is_empty()).then(|| data.join("\n")))
    }))
}

/// Opens `n` long-lived streams on the one connection `h2`, stream `i` reading
/// channel `<base>_<i>` (`open(h2, channel)` makes one: a WebSocket or an event
/// stream). While they are all open, requests to the proxy are
/// answered on the same connection; then every channel gets a NOTIFY, and every
/// stream must receive its own.
async fn many_streams_on_one_connection<F, Fut>(h2: &H2, n: usize, open: F)
where
    F: Fn(H2, String) -> Fut,
    Fut: Future<Output = Texts>,
{
    let base = unique("h2_many");
    let channels: Vec<String> = (0..n).map(|i| format!("{base}_{i}")).collect();
    let mut streams = join_all(channels.iter().map(|c| open(h2.clone(), c.clone()))).await;

    let proxied = join_all((0..20).map(|i| async move {
        let req = Request::post(format!("http://localhost/api/{i}"))
            .body(Full::new(Bytes::from(format!("body {i}"))).boxed())
            .unwrap();
        echoed(h2, req).await
    }))
    .await;
    for (i, echo) in proxied.iter().enumerate() {
        assert_eq!(echo["path"], format!("/api/{i}"));
        assert_eq!(echo["body"], format!("body {i}"));
    }

    db().await
        .execute(
            "select pg_notify(c, 'to ' || c) from unnest($1::text[]) c",
            &[&channels],
        )
        .await
        .unwrap();
    let received = join_all(streams.iter_mut().map(|s| async {
        tokio::time::timeout(WAIT, s.next())
            .await
            .expect("no message in time")
            .expect("stream ended")
    }))
    .await;
    for (channel, text) in channels.iter().zip(received) {
        assert_eq!(text, format!("to {channel}"));
    }
}

// ---------------------------------------------------------------------------
// Cleartext and TLS
// ---------------------------------------------------------------------------

#[tokio::test]
async fn h2c_with_prior_knowledge_reaches_static_files_the_upstream_and_the_layer() {
    let pki = Pki::new();
    let mut settings = with_upstream(settings_with(&[]), start_upstream().await);
    settings.root_path = Some(pki.www("<h1>h2c</h1>").into());
    let srv = start(settings).await;
    let h2 = h2c(srv.addr).await;

    let res = get(&h2, "http://localhost/").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(body_bytes(res).await, "<h1>h2c</h1>");

    let req = Request::put("http://pgws.example/items/1?x=1")
        .body(Full::new(Bytes::from("a body over h2")).boxed())
        .unwrap();
    let echo = echoed(&h2, req).await;
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/items/1");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(echo["body"], "a body over h2");
    // `:authority` stands in for `Host`; the upstream gets its own Host.
    assert_eq!(seen(&echo, "x-forwarded-host"), Some("pgws.example"));
    assert_eq!(seen(&echo, "host"), Some(&*up_host(&echo)));
    assert_eq!(seen(&echo, "x-forwarded-proto"), Some("http"));

    let chan = unique("h2c_ws");
    let jwt = token(claims("rw", Some(&chan)));
    let mut ws = h2_ws(&h2, &format!("http://localhost/{chan}/{jwt}")).await;
    notify(&chan, "over h2c").await;
    assert_eq!(recv_text(&mut ws).await, "over h2c");
    srv.stop().await;
}

/// The `Host` the proxy set: the upstream's own address, not the client's.
fn up_host(echo: &Value) -> String {
    let host = seen(echo, "host").unwrap();
    assert!(host.starts_with("127.0.0.1:"), "{host}");
    host.to_owned()
}

#[tokio::test]
async fn h2_over_tls_through_alpn_reaches_static_files_the_upstream_and_the_layer() {
    let pki = Pki::new();
    let root = pki.www("<h1>h2</h1>");
    let upstream = start_upstream().await;
    let srv = start(tls_settings(
        &pki,
        vec![
            ("PGWS_ROOT_PATH", root),
            ("PGWS_UPSTREAM", format!("http://{upstream}")),
        ],
    ))
    .await;
    let h2 = h2_tls(&pki, srv.addr).await;
    let origin = format!("https://localhost:{}", srv.addr.port());

    let res = get(&h2, &format!("{origin}/")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(body_bytes(res).await, "<h1>h2</h1>");

    let echo = echoed(
        &h2,
        Request::get(format!("{origin}/api/items"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(echo["path"], "/api/items");
    assert_eq!(seen(&echo, "x-forwarded-proto"), Some("https"));
    let forwarded_host = format!("localhost:{}", srv.addr.port());
    assert_eq!(seen(&echo, "x-forwarded-host"), Some(&*forwarded_host));

    // Both ways over one stream: a NOTIFY in, a message out (NOTIFYed and echoed).
    let chan = unique("h2_tls_ws");
    let jwt = token(claims("rw", Some(&chan)));
    let mut ws = h2_ws(&h2, &format!("{origin}/{chan}/{jwt}")).await;
    notify(&chan, "over h2").await;
    assert_eq!(recv_text(&mut ws).await, "over h2");
    let mut listen = Listen::start(&chan).await;
    ws.send(Message::text("Hi over h2")).await.unwrap();
    let (_, payload) = listen.next().await;
    let envelope: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(envelope["payload"], "Hi over h2");
    let echoed: Value = serde_json::from_str(&recv_text(&mut ws).await).unwrap();
    assert_eq!(echoed["payload"], "Hi over h2");
    drop(ws);
    srv.stop().await;
}

/// A `HEAD` answer over HTTP/2 carries no body (a client resets a stream that has
/// one), whoever answers: the 404, the proxy, the static files.
#[tokio::test]
async fn head_answers_have_no_body_over_http2() {
    let pki = Pki::new();
    let root = pki.www("<h1>head</h1>");
    let srv = start(settings_with(&[])).await;
    let h2 = h2c(srv.addr).await;
    let head = |uri: &str| Request::head(uri).body(empty()).unwrap();
    let res = request(&h2, head("http://localhost/nothing")).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(body_bytes(res).await, "");

    let mut settings = with_upstream(settings_with(&[]), start_upstream().await);
    settings.root_path = Some(root.into());
    let srv = start(settings).await;
    let h2 = h2c(srv.addr).await;
    for (uri, status) in [
        ("http://localhost/", StatusCode::OK),
        ("http://localhost/api/items", StatusCode::OK),
    ] {
        let res = request(&h2, head(uri)).await;
        assert_eq!(res.status(), status, "{uri}");
        assert_eq!(body_bytes(res).await, "", "{uri}");
    }
    // The connection is still good.
    let res = get(&h2, "http://localhost/").await;
    assert_eq!(body_bytes(res).await, "<h1>head</h1>");
}

// ---------------------------------------------------------------------------
// Many WebSockets on one connection
// ---------------------------------------------------------------------------

/// Which long-lived streams a hundred-on-one-connection test opens.
#[derive(Clone, Copy)]
enum Kind {
    WebSocket,
    EventStream,
}

/// A hundred streams of `kind` on one connection, over TLS or h2c, with a proxy.
async fn a_hundred_on_one_connection(kind: Kind, tls: bool) {
    let pki = Pki::new();
    let upstream = start_upstream().await;
    let settings = if tls {
        tls_settings(&pki, vec![("PGWS_UPSTREAM", format!("http://{upstream}"))])
    } else {
        with_upstream(settings_with(&[]), upstream)
    };
    let srv = start(settings).await;
    let (h2, base) = if tls {
        let port = srv.addr.port();
        (
            h2_tls(&pki, srv.addr).await,
            format!("https://localhost:{port}"),
        )
    } else {
        (h2c(srv.addr).await, "http://localhost".to_owned())
    };
    let jwt = token(claims("r", None));
    many_streams_on_one_connection(&h2, 100, |h2, channel| {
        let uri = format!("{base}/{channel}/{jwt}");
        async move {
            match kind {
                Kind::WebSocket => ws_texts(h2_ws(&h2, &uri).await),
                Kind::EventStream => sse_texts(&h2, &uri).await,
            }
        }
    })
    .await;
    srv.stop().await;
}

#[tokio::test]
async fn a_hundred_websockets_share_one_connection_with_proxied_requests() {
    a_hundred_on_one_connection(Kind::WebSocket, false).await;
}

#[tokio::test]
async fn a_hundred_websockets_share_one_tls_connection() {
    a_hundred_on_one_connection(Kind::WebSocket, true).await;
}

#[tokio::test]
async fn a_hundred_event_streams_share_one_connection_with_proxied_requests() {
    a_hundred_on_one_connection(Kind::EventStream, false).await;
}

#[tokio::test]
async fn a_hundred_event_streams_share_one_tls_connection() {
    a_hundred_on_one_connection(Kind::EventStream, true).await;
}

/// A socket whose client stops reading fills its own stream's window, not the
/// connection: the other socket and the proxy on the same connection go on.
#[tokio::test]
async fn a_stalled_socket_does_not_hold_up_its_connection() {
    let srv = start(with_upstream(settings_with(&[]), start_upstream().await)).await;
    let h2 = h2c(srv.addr).await;
    let jwt = token(claims("r", None));
    let (stalled, live) = (unique("h2_stalled"), unique("h2_live"));
    let _never_read = h2_ws(&h2, &format!("http://localhost/{stalled}/{jwt}")).await;
    let mut ws = h2_ws(&h2, &format!("http://localhost/{live}/{jwt}")).await;
    // About 4.7 MB for the stalled socket: more than its stream window (hyper's
    // client: 2 MiB), less than the connection's (5 MiB).
    db().await
        .execute(
            "select pg_notify($1, g || repeat('x', 7900)) from generate_series(1, 600) g",
            &[&stalled],
        )
        .await
        .unwrap();
    notify(&live, "still flowing").await;
    assert_eq!(recv_text(&mut ws).await, "still flowing");
    let echo = echoed(
        &h2,
        Request::get("http://localhost/x").body(empty()).unwrap(),
    )
    .await;
    assert_eq!(echo["path"], "/x");
}

// ---------------------------------------------------------------------------
// The RFC 8441 handshake: token sources, subprotocol, refusals
// ---------------------------------------------------------------------------

#[tokio::test]
async fn extended_connect_takes_the_same_token_sources_and_names_the_subprotocol() {
    let srv = start(settings_with(&[])).await;
    let h2 = h2c(srv.addr).await;
    let chan = unique("h2_sources");
    let jwt = token(claims("r", None));

    let protocols = format!("pgws, pgws.bearer.{jwt}");
    let uri = format!("http://localhost/{chan}");
    let (mut by_protocol, headers) =
        h2_websocket(&h2, &uri, &[("sec-websocket-protocol", &protocols)])
            .await
            .unwrap_or_else(|res| panic!("refused: {}", res.status()));
    assert_eq!(headers["sec-websocket-protocol"], "pgws");
    assert!(!headers.contains_key(header::SEC_WEBSOCKET_ACCEPT));

    let bearer = format!("Bearer {jwt}");
    let (mut by_header, headers) = h2_websocket(&h2, &uri, &[("authorization", &bearer)])
        .await
        .unwrap_or_else(|res| panic!("refused: {}", res.status()));
    assert!(!headers.contains_key(header::SEC_WEBSOCKET_PROTOCOL));

    // A key, which RFC 8441 does not use, changes nothing: still 200, not 101.
    let key = [("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")];
    let (mut with_key, _) = h2_websocket(&h2, &format!("{uri}/{jwt}"), &key)
        .await
        .unwrap_or_else(|res| panic!("refused: {}", res.status()));

    notify(&chan, "all three").await;
    for ws in [&mut by_protocol, &mut by_header, &mut with_key] {
        assert_eq!(recv_text(ws).await, "all three");
    }
}

#[tokio::test]
async fn extended_connect_refusals_are_the_http1_ones() {
    let srv = start(settings_with(&[])).await;
    let h2 = h2c(srv.addr).await;
    let chan = unique("h2_refused");
    let jwt = token(claims("r", None));
    let uri = format!("http://localhost/{chan}");

    let bad = token_with(&json!({"mode": "r"}), b"not the secret");
    let (status, body) = h2_refusal(&h2, &format!("{uri}/{bad}"), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.starts_with("Invalid token"), "{body}");

    let lone = format!("pgws.bearer.{jwt}");
    let (status, body) = h2_refusal(&h2, &uri, &[("sec-websocket-protocol", &lone)]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.starts_with("Invalid subprotocol"), "{body}");

    let other = token(claims("rw", None));
    let bearer = format!("Bearer {other}");
    let (status, body) =
        h2_refusal(&h2, &format!("{uri}/{jwt}"), &[("authorization", &bearer)]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.starts_with("Conflicting tokens"), "{body}");

    let (status, _) = h2_refusal(&h2, &format!("{uri}/{}", token(json!({}))), &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The connection is still good for the next socket.
    let mut ws = h2_ws(&h2, &format!("{uri}/{jwt}")).await;
    notify(&chan, "still here").await;
    assert_eq!(recv_text(&mut ws).await, "still here");
}

#[tokio::test]
async fn a_connect_the_layer_does_not_take_is_501_never_proxied() {
    let up = start_upstream().await;
    let srv = start(with_upstream(settings_with(&[]), up)).await;
    let h2 = h2c(srv.addr).await;
    let jwt = token(claims("r", None));
    // No token anywhere, a path with no place for one, another version: not ours.
    for uri in [
        "http://localhost/chat".to_owned(),
        format!("http://localhost/a/b/{jwt}"),
    ] {
        let (status, body) = h2_refusal(&h2, &uri, &[]).await;
        assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{uri}");
        assert_eq!(body, "Not Implemented");
    }
    let mut req = extended_connect(&format!("http://localhost/{jwt}"), &[]);
    req.headers_mut()
        .insert(header::SEC_WEBSOCKET_VERSION, "8".parse().unwrap());
    assert_eq!(
        request(&h2, req).await.status(),
        StatusCode::NOT_IMPLEMENTED
    );
    // A plain CONNECT too (no :protocol).
    let req = Request::connect("localhost:5432").body(empty()).unwrap();
    assert_eq!(
        request(&h2, req).await.status(),
        StatusCode::NOT_IMPLEMENTED
    );
    // Meanwhile the proxy answers plain requests on the same connection.
    let echo = echoed(
        &h2,
        Request::get("http://localhost/x").body(empty()).unwrap(),
    )
    .await;
    assert_eq!(echo["path"], "/x");
}

// ---------------------------------------------------------------------------
// HTTP/1.1 on the same port; shutdown; HTTP/2 off
// ---------------------------------------------------------------------------

#[tokio::test]
async fn http1_websockets_and_http2_ones_share_the_port() {
    let srv = start(settings_with(&[])).await;
    let chan = unique("h2_and_h1");
    let jwt = token(claims("r", Some(&chan)));
    let h2 = h2c(srv.addr).await;
    let mut over_h2 = h2_ws(&h2, &format!("http://localhost/{chan}/{jwt}")).await;
    let uri: http::Uri = format!("ws://{}/{chan}/{jwt}", srv.addr).parse().unwrap();
    let (mut over_h1, res) = tokio::time::timeout(WAIT, ClientBuilder::from_uri(uri).connect())
        .await
        .expect("handshake timed out")
        .expect("handshake refused");
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    notify(&chan, "to both").await;
    assert_eq!(recv_text(&mut over_h2).await, "to both");
    assert_eq!(recv_text(&mut over_h1).await, "to both");
}

#[tokio::test]
async fn shutdown_closes_http2_websockets_with_1001_and_run_returns() {
    let mut srv = start(settings_with(&[])).await;
    let h2 = h2c(srv.addr).await;
    let chan = unique("h2_down");
    let jwt = token(claims("r", Some(&chan)));
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(h2_ws(&h2, &format!("http://localhost/{chan}/{jwt}")).await);
    }
    srv.stop.take().unwrap().send(()).unwrap();
    for ws in &mut sockets {
        assert_eq!(recv_close(ws).await.0, 1001);
    }
    drop(sockets);
    tokio::time::timeout(WAIT * 3, srv.task)
        .await
        .expect("run did not return")
        .unwrap();
}

#[tokio::test]
async fn http2_max_streams_0_turns_http2_off() {
    let srv = start(settings_with(&[("PGWS_HTTP2_MAX_STREAMS", "0")])).await;
    let tcp = TcpStream::connect(srv.addr).await.unwrap();
    let h2 = tokio::time::timeout(WAIT, async {
        let mut h2 = h2_handshake(tcp).await?;
        h2.ready().await?;
        h2.send_request(Request::get("http://localhost/").body(empty()).unwrap())
            .await
    })
    .await
    .expect("the server neither answered nor hung up");
    assert!(h2.is_err(), "HTTP/2 got an answer: {h2:?}");
    // HTTP/1.1 WebSockets still work.
    let chan = unique("h2_off");
    let jwt = token(claims("r", Some(&chan)));
    let uri: http::Uri = format!("ws://{}/{chan}/{jwt}", srv.addr).parse().unwrap();
    let (mut ws, _) = tokio::time::timeout(WAIT, ClientBuilder::from_uri(uri).connect())
        .await
        .expect("handshake timed out")
        .expect("handshake refused");
    notify(&chan, "h1 only").await;
    assert_eq!(recv_text(&mut ws).await, "h1 only");

    // Over TLS, ALPN then offers http/1.1 alone.
    let pki = Pki::new();
    let off = ("PGWS_HTTP2_MAX_STREAMS", "0".to_owned());
    let srv = start(tls_settings(&pki, vec![off])).await;
    let tls = tls_connect(&pki, srv.addr, &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[test]
fn http2_max_streams_is_read_and_checked() {
    let s = settings_with(&[]);
    assert_eq!(s.http2_max_streams, 256);
    assert_eq!(
        settings_with(&[("PGWS_HTTP2_MAX_STREAMS", "1000")]).http2_max_streams,
        1000
    );
    for bad in ["-1", "lots", "4294967296"] {
        let var = |name: &str| (name == "PGWS_HTTP2_MAX_STREAMS").then(|| bad.to_owned());
        let err = server::Settings::from_vars(config(), var).unwrap_err();
        assert!(err.starts_with("PGWS_HTTP2_MAX_STREAMS"), "{err}");
    }
}

#[test]
fn the_start_up_report_says_how_http2_is_reached() {
    let addr: SocketAddr = "127.0.0.1:3000".parse().unwrap();
    let report = server::startup_report(&settings_with(&[]), addr, None, None);
    assert!(
        report.contains("HTTP/2:        on (h2c with prior knowledge)"),
        "{report}"
    );
    let pki = Pki::new();
    let report = server::startup_report(&tls_settings(&pki, vec![]), addr, None, None);
    assert!(report.contains("on (h2 through ALPN)"), "{report}");
    let off = settings_with(&[("PGWS_HTTP2_MAX_STREAMS", "0")]);
    let report = server::startup_report(&off, addr, None, None);
    assert!(
        report.contains("HTTP/2:        off (PGWS_HTTP2_MAX_STREAMS=0)"),
        "{report}"
    );
}
