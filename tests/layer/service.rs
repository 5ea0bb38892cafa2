//! The tower service in process, one table row per request: which requests the layer
//! takes (PROTOCOL.md §1) and every refusal before the upgrade (§5).
//!
//! No TCP: each request goes through `ServiceExt::oneshot` to a fresh layer around an
//! inner service that answers `200 inner` and records what it saw. The layer's
//! database URL points at a closed port: every refusal comes before the subscription,
//! a write-only token gets its `101` without a listener, and a reader waits for the
//! subscribe timeout, then gets `503 Database unavailable`.

use std::{
    convert::Infallible,
    future::Future,
    pin::{Pin, pin},
    task::Poll,
    time::Duration,
};

use crate::common::{SECRET, WAIT, now, token, token_with};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http::{
    HeaderMap, HeaderName, Method, Request, Response, StatusCode, Uri, Version, header,
    request::Builder,
};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use jsonwebtoken::Algorithm;
use pgws::{ConfigBuilder, PgWsLayer};
use serde_json::{Value, json};
use tower::{Layer, ServiceExt, service_fn};

/// Nothing listens here: the listener never connects.
const CLOSED_DB: &str = "postgres://postgres@127.0.0.1:1/postgres?connect_timeout=1";

/// RFC 6455 §1.3's sample key and its accept value.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const KEY_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// A second key, to show the accept value follows the key.
const OTHER_KEY: &str = "x3JJHMbDL1EzLkh9GBhXDw==";
const OTHER_ACCEPT: &str = "HSmrc0sMlYUkAGmm5OPpG2HaGWk=";

/// The first chunk of every request body; the body then never ends.
const FIRST_CHUNK: &[u8] = b"first chunk of a body that never ends";

type Body = BoxBody<Bytes, Infallible>;

/// What one row expects.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// `200 inner`: the wrapped service got the request unchanged, its body streamed.
    Pass,
    /// `101`, naming the `pgws` subprotocol or not.
    Accept { pgws: bool },
    /// Refused: status, body prefix, and the `Stats` refusal label counted once.
    Refuse(u16, &'static str, &'static str),
}

use Expect::{Accept, Pass, Refuse};

const OK: Expect = Accept { pgws: false };
const OK_PGWS: Expect = Accept { pgws: true };

type Row = (&'static str, Builder, Expect);

/// What the inner service saw of a request it was handed.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    first_chunk: Option<Bytes>,
}

/// Reads one frame of the body, never the rest, and answers `200 inner`.
async fn inner(req: Request<Body>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, mut body) = req.into_parts();
    let first_chunk = match body.frame().await {
        Some(Ok(frame)) => frame.into_data().ok(),
        _ => None,
    };
    let mut res = Response::new(Full::new(Bytes::from_static(b"inner")));
    res.extensions_mut().insert(Seen {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        first_chunk,
    });
    Ok(res)
}

/// One chunk, then a body that never ends: only a streamed body gets through.
fn endless_body() -> Body {
    let chunk = Ok(Frame::data(Bytes::from_static(FIRST_CHUNK)));
    let chunks = stream::iter([chunk]).chain(stream::pending());
    BodyExt::boxed(StreamBody::new(chunks))
}

/// What the layer answered.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
    /// What the inner service saw, when the request reached it.
    seen: Option<Seen>,
}

/// One request through a service of `layer`, in process.
async fn send(layer: &PgWsLayer, req: Request<Body>) -> Answer {
    let svc = layer.layer(service_fn(inner));
    let res = tokio::time::timeout(WAIT, svc.oneshot(req))
        .await
        .expect("no answer in time")
        .unwrap();
    let (mut parts, body) = res.into_parts();
    let body = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("no body in time")
        .unwrap()
        .to_bytes();
    Answer {
        status: parts.status,
        seen: parts.extensions.remove::<Seen>(),
        headers: parts.headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

/// Each row on a fresh layer built from `config`, so its refusal count is its own.
async fn run(config: ConfigBuilder, rows: Vec<Row>) {
    for (name, req, expect) in rows {
        let layer = PgWsLayer::new(config.clone().build().unwrap());
        try_row(&layer, name, req, expect).await;
        let counted: &[(&str, u64)] = match expect {
            Refuse(_, _, label) => &[(label, 1)],
            Pass | Accept { .. } => &[],
        };
        let refusals = layer.stats().handshake_refusals;
        assert_eq!(refusals, counted, "{name}: refusals counted");
    }
}

/// Sends one row's request, with a body that never ends, and checks the answer.
async fn try_row(layer: &PgWsLayer, name: &str, req: Builder, expect: Expect) {
    let req = req.body(endless_body()).unwrap();
    let sent = Seen {
        method: req.method().clone(),
        uri: req.uri().clone(),
        version: req.version(),
        headers: req.headers().clone(),
        first_chunk: Some(Bytes::from_static(FIRST_CHUNK)),
    };
    let answer = send(layer, req).await;
    check(name, &expect, &sent, &answer);
}

fn check(name: &str, expect: &Expect, sent: &Seen, answer: &Answer) {
    let Answer {
        status,
        headers,
        body,
        seen,
    } = answer;
    let content_type = headers.get(header::CONTENT_TYPE);
    match expect {
        Pass => {
            assert_eq!(*status, StatusCode::OK, "{name}: {body}");
            assert_eq!(body, "inner", "{name}");
            assert_eq!(seen.as_ref(), Some(sent), "{name}: passed unchanged");
        }
        Accept { pgws } => {
            assert_eq!(*status, StatusCode::SWITCHING_PROTOCOLS, "{name}: {body}");
            assert!(seen.is_none(), "{name}: reached the inner service");
            assert_eq!(body, "", "{name}");
            for (field, value) in [
                (header::UPGRADE, "websocket"),
                (header::CONNECTION, "upgrade"),
            ] {
                let got = headers[&field].to_str().unwrap();
                assert!(got.eq_ignore_ascii_case(value), "{name}: {field}: {got}");
            }
            let accept = match &sent.headers[header::SEC_WEBSOCKET_KEY] {
                k if k == KEY => KEY_ACCEPT,
                k if k == OTHER_KEY => OTHER_ACCEPT,
                k => panic!("{name}: no known accept value for {k:?}"),
            };
            assert_eq!(headers[header::SEC_WEBSOCKET_ACCEPT], accept, "{name}");
            let protocol = headers.get(header::SEC_WEBSOCKET_PROTOCOL);
            let protocol = protocol.map(|p| p.to_str().unwrap());
            assert_eq!(protocol, pgws.then_some("pgws"), "{name}");
            assert!(
                !headers.contains_key(header::SEC_WEBSOCKET_EXTENSIONS),
                "{name}"
            );
        }
        Refuse(code, prefix, _) => {
            assert_eq!(status.as_u16(), *code, "{name}: {body}");
            assert!(body.starts_with(prefix), "{name}: {body:?}");
            assert!(seen.is_none(), "{name}: reached the inner service");
            assert_eq!(
                content_type.map(|c| c.to_str().unwrap()),
                Some("text/plain; charset=utf-8"),
                "{name}"
            );
            assert!(
                !headers.contains_key(header::SEC_WEBSOCKET_ACCEPT),
                "{name}"
            );
        }
    }
}

// ---- requests and tokens ---------------------------------------------------------------

/// A layer whose database is unreachable, with the tests' secret.
fn config() -> ConfigBuilder {
    pgws::Config::builder()
        .database_url(CLOSED_DB)
        .jwt_secret(SECRET)
}

/// A WebSocket handshake for `path` (RFC 6455 §4.1), to be tweaked.
fn ws(path: &str) -> Builder {
    Request::get(path)
        .header(header::HOST, "example.com")
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "upgrade")
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .header(header::SEC_WEBSOCKET_KEY, KEY)
}

/// The builder with `name` set to `value`, replacing what it had.
fn set(mut req: Builder, name: HeaderName, value: &str) -> Builder {
    req.headers_mut()
        .unwrap()
        .insert(name, value.parse().unwrap());
    req
}

fn without(mut req: Builder, name: HeaderName) -> Builder {
    req.headers_mut().unwrap().remove(name);
    req
}

fn bearer(req: Builder, token: &str) -> Builder {
    req.header(header::AUTHORIZATION, format!("Bearer {token}"))
}

fn offer(req: Builder, protocols: &str) -> Builder {
    req.header(header::SEC_WEBSOCKET_PROTOCOL, protocols)
}

/// A write-only token: its handshake needs no listener.
fn writer(channel: &str) -> String {
    token(json!({"mode": "w", "channel": channel}))
}

/// The token with its signature cut off (the final dot stays).
fn unsigned(token: &str) -> &str {
    &token[..=token.rfind('.').unwrap()]
}

/// The three parts of a token.
fn split_token(token: &str) -> [&str; 3] {
    let mut p = token.split('.');
    [(); 3].map(|()| p.next().unwrap())
}

/// A token signed with the tests' secret, with this algorithm and `kid`.
fn token_with_header(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let header = jsonwebtoken::Header {
        alg,
        kid: kid.map(str::to_owned),
        ..Default::default()
    };
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// Polls once; a future that is not done stays where it got to.
async fn poll_once<F: Future>(mut fut: Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await
}

// ---- §1: which requests are ours --------------------------------------------------------

#[tokio::test]
async fn every_url_form_is_taken() {
    let w = writer("chat");
    let any = token(json!({"mode": "w"}));
    let room = writer("chat/room");
    let cafe = writer("café");
    let long = "a".repeat(63);
    let rows: Vec<Row> = vec![
        ("/<jwt>", ws(&format!("/{w}")), OK),
        ("/<channel>/<jwt>", ws(&format!("/chat/{w}")), OK),
        (
            "/<channel>/<jwt>, nothing claimed",
            ws(&format!("/chat/{any}")),
            OK,
        ),
        ("/ with Bearer", bearer(ws("/"), &w), OK),
        (
            "/ with lower-case bearer",
            ws("/").header(header::AUTHORIZATION, format!("bearer {w}")),
            OK,
        ),
        ("/<channel> with Bearer", bearer(ws("/chat"), &any), OK),
        (
            "/ with pgws.bearer",
            offer(ws("/"), &format!("pgws, pgws.bearer.{w}")),
            OK_PGWS,
        ),
        (
            "/<channel> with pgws.bearer",
            offer(ws("/chat"), &format!("pgws.bearer.{any}, pgws")),
            OK_PGWS,
        ),
        (
            "pgws and pgws.bearer on two header lines",
            offer(offer(ws("/"), "pgws"), &format!("pgws.bearer.{w}")),
            OK_PGWS,
        ),
        (
            "the same token in all three places",
            offer(
                bearer(ws(&format!("/{w}")), &w),
                &format!("pgws, pgws.bearer.{w}"),
            ),
            OK_PGWS,
        ),
        (
            "/<jwt> offering pgws",
            offer(ws(&format!("/{w}")), "pgws"),
            OK_PGWS,
        ),
        (
            "/<jwt> offering only other subprotocols",
            offer(ws(&format!("/{w}")), "chat, superchat"),
            OK,
        ),
        (
            "/<jwt> offering an extension",
            ws(&format!("/{w}")).header(header::SEC_WEBSOCKET_EXTENSIONS, "permessage-deflate"),
            OK,
        ),
        ("/<jwt>?query", ws(&format!("/{w}?v=2")), OK),
        ("/<jwt>?", ws(&format!("/{w}?")), OK),
        (
            "/<channel>/<jwt>?query",
            ws(&format!("/chat/{w}?token=abc&y")),
            OK,
        ),
        (
            "/<channel>?query with Bearer",
            bearer(ws("/chat?x=1"), &any),
            OK,
        ),
        (
            "/%2F decodes to a slash",
            ws(&format!("/chat%2Froom/{room}")),
            OK,
        ),
        ("/%2F with Bearer", bearer(ws("/chat%2Froom"), &room), OK),
        (
            "/%C3%A9 decodes as UTF-8",
            ws(&format!("/caf%C3%A9/{cafe}")),
            OK,
        ),
        ("a 63-byte path channel", ws(&format!("/{long}/{any}")), OK),
        (
            "the channel is compared decoded",
            ws(&format!("/chat%2Froom/{}", writer("chat%2Froom"))),
            Refuse(403, "No allowed channels", "no_allowed_channels"),
        ),
        (
            "header tokens compared case-insensitively",
            set(
                set(ws(&format!("/{w}")), header::UPGRADE, "WebSocket"),
                header::CONNECTION,
                "keep-alive, Upgrade",
            ),
            OK,
        ),
        (
            "another key, another accept value",
            set(ws(&format!("/{w}")), header::SEC_WEBSOCKET_KEY, OTHER_KEY),
            OK,
        ),
        (
            "an empty signature is ours, and refused",
            ws(&format!("/{}", unsigned(&w))),
            Refuse(401, "Invalid token", "invalid_token"),
        ),
    ];
    run(config(), rows).await;
}

#[tokio::test]
async fn under_a_prefix_only_the_prefix_is_taken() {
    let w = writer("chat");
    let room = writer("chat/room");
    let rows: Vec<Row> = vec![
        ("/ws/<jwt>", ws(&format!("/ws/{w}")), OK),
        ("/ws/<channel>/<jwt>", ws(&format!("/ws/chat/{w}")), OK),
        ("/ws/<jwt>?query", ws(&format!("/ws/{w}?v=2")), OK),
        ("/ws/%2F/<jwt>", ws(&format!("/ws/chat%2Froom/{room}")), OK),
        ("/ws with Bearer", bearer(ws("/ws"), &w), OK),
        ("/ws/ with Bearer", bearer(ws("/ws/"), &w), OK),
        ("/ws?query with Bearer", bearer(ws("/ws?x=1"), &w), OK),
        ("/ws/<channel> with Bearer", bearer(ws("/ws/chat"), &w), OK),
        (
            "/ws with pgws.bearer",
            offer(ws("/ws"), &format!("pgws, pgws.bearer.{w}")),
            OK_PGWS,
        ),
        (
            "a refusal under the prefix is ours",
            ws("/ws/abc.def.ghi"),
            Refuse(401, "Invalid token", "invalid_token"),
        ),
        ("/<jwt> outside the prefix", ws(&format!("/{w}")), Pass),
        ("/<channel>/<jwt> outside", ws(&format!("/chat/{w}")), Pass),
        ("/wsx/<jwt>", ws(&format!("/wsx/{w}")), Pass),
        ("/api/ws/<jwt>", ws(&format!("/api/ws/{w}")), Pass),
        ("/ws/a/b/<jwt>", ws(&format!("/ws/a/b/{w}")), Pass),
        ("/ with Bearer outside", bearer(ws("/"), &w), Pass),
        ("/wschat with Bearer", bearer(ws("/wschat"), &w), Pass),
        ("/ws/a/b with Bearer", bearer(ws("/ws/a/b"), &w), Pass),
    ];
    // `ws`, `/ws` and `/ws/` all mean `/ws`.
    for prefix in ["ws", "/ws", "/ws/"] {
        let rows = rows
            .iter()
            .map(|(name, req, expect)| (*name, clone_builder(req), *expect))
            .collect();
        run(config().path_prefix(prefix), rows).await;
    }
}

/// Builders are not `Clone`; these carry only method, URI and headers.
fn clone_builder(req: &Builder) -> Builder {
    let mut out = Request::builder()
        .method(req.method_ref().unwrap().clone())
        .uri(req.uri_ref().unwrap().clone())
        .version(*req.version_ref().unwrap());
    *out.headers_mut().unwrap() = req.headers_ref().unwrap().clone();
    out
}

#[tokio::test]
async fn everything_else_passes_through_untouched() {
    let w = writer("chat");
    let path = format!("/{w}");
    let [h, p, s] = split_token(&w);
    let rows: Vec<Row> = vec![
        ("a plain GET of a token path", Request::get(&path), Pass),
        (
            "a POST of a token path",
            Request::post(&path).header(header::CONTENT_TYPE, "text/plain"),
            Pass,
        ),
        ("a POST handshake", ws(&path).method(Method::POST), Pass),
        ("a HEAD handshake", ws(&path).method(Method::HEAD), Pass),
        ("no Upgrade", without(ws(&path), header::UPGRADE), Pass),
        (
            "no Connection",
            without(ws(&path), header::CONNECTION),
            Pass,
        ),
        (
            "Connection without upgrade",
            set(ws(&path), header::CONNECTION, "keep-alive"),
            Pass,
        ),
        ("Upgrade: h2c", set(ws(&path), header::UPGRADE, "h2c"), Pass),
        (
            "no Sec-WebSocket-Version",
            without(ws(&path), header::SEC_WEBSOCKET_VERSION),
            Pass,
        ),
        (
            "Sec-WebSocket-Version: 8",
            set(ws(&path), header::SEC_WEBSOCKET_VERSION, "8"),
            Pass,
        ),
        (
            "Sec-WebSocket-Version: 14",
            set(ws(&path), header::SEC_WEBSOCKET_VERSION, "14"),
            Pass,
        ),
        (
            "no Sec-WebSocket-Key",
            without(ws(&path), header::SEC_WEBSOCKET_KEY),
            Pass,
        ),
        ("HTTP/1.0", ws(&path).version(Version::HTTP_10), Pass),
        ("HTTP/2", ws(&path).version(Version::HTTP_2), Pass),
        ("/", ws("/"), Pass),
        ("/index.html", ws("/index.html"), Pass),
        ("/<channel> without a token", ws("/chat"), Pass),
        ("/<channel>/<not a jwt>", ws("/chat/room"), Pass),
        ("/<channel>/<opaque>", ws("/chat/not-a-jwt"), Pass),
        ("/a/b/<jwt>", ws(&format!("/a/b/{w}")), Pass),
        ("/<jwt>/", ws(&format!("/{w}/")), Pass),
        ("/<jwt>/x", ws(&format!("/{w}/x")), Pass),
        (
            "/<jwt>/ with Bearer",
            bearer(ws(&format!("/{w}/")), &w),
            Pass,
        ),
        ("/a/b with Bearer", bearer(ws("/a/b"), &w), Pass),
        ("two parts", ws(&format!("/{h}.{p}")), Pass),
        ("four parts", ws(&format!("/{h}.{p}.{s}.x")), Pass),
        ("an empty header part", ws(&format!("/.{p}.{s}")), Pass),
        ("an empty payload part", ws(&format!("/{h}..{s}")), Pass),
        ("a non-base64url part", ws(&format!("/{h}.{p}+.{s}")), Pass),
        (
            "an opaque bearer token",
            bearer(ws("/chat"), "not-a-jwt"),
            Pass,
        ),
        ("an opaque bearer on /", bearer(ws("/"), "abc.def"), Pass),
        (
            "a Basic scheme",
            ws("/chat").header(header::AUTHORIZATION, format!("Basic {w}")),
            Pass,
        ),
        (
            "an opaque pgws.bearer",
            offer(ws("/chat"), "pgws, pgws.bearer.opaque"),
            Pass,
        ),
        (
            "only pgws offered, no token",
            offer(ws("/chat"), "pgws"),
            Pass,
        ),
    ];
    run(config(), rows).await;
}

// ---- §5: every refusal, in the table's order ---------------------------------------------

#[tokio::test]
async fn malformed_handshakes_are_400_before_the_token() {
    let w = writer("chat");
    let other = writer("other");
    let path = format!("/{w}");
    let key = |k: &str| set(ws(&path), header::SEC_WEBSOCKET_KEY, k);
    let bad_key = Refuse(400, "Invalid Sec-WebSocket-Key", "bad_request");
    let bad_protocol = Refuse(400, "Invalid subprotocol", "bad_request");
    let conflict = Refuse(400, "Conflicting tokens", "bad_request");
    let rows: Vec<Row> = vec![
        ("a short key", key("c2hvcnQ="), bad_key),
        (
            "a key that is not base64",
            key("not base64 at all!"),
            bad_key,
        ),
        ("an empty key", key(""), bad_key),
        ("an 18-byte key", key("AAAAAAAAAAAAAAAAAAAAAAAA"), bad_key),
        (
            "a bad key before a bad token",
            set(ws("/abc.def.ghi"), header::SEC_WEBSOCKET_KEY, "c2hvcnQ="),
            bad_key,
        ),
        (
            "a bad key before a lone pgws.bearer",
            offer(key("c2hvcnQ="), &format!("pgws.bearer.{w}")),
            bad_key,
        ),
        (
            "pgws.bearer without pgws",
            offer(ws("/"), &format!("pgws.bearer.{w}")),
            bad_protocol,
        ),
        (
            "pgws.bearer without pgws, token in the path too",
            offer(ws(&path), &format!("pgws.bearer.{w}")),
            bad_protocol,
        ),
        (
            "a lone pgws.bearer before conflicting tokens",
            offer(ws(&path), &format!("pgws.bearer.{other}")),
            bad_protocol,
        ),
        (
            "path and Bearer disagree",
            bearer(ws(&path), &other),
            conflict,
        ),
        (
            "path and pgws.bearer disagree",
            offer(ws(&path), &format!("pgws, pgws.bearer.{other}")),
            conflict,
        ),
        (
            "Bearer and pgws.bearer disagree",
            offer(bearer(ws("/"), &w), &format!("pgws, pgws.bearer.{other}")),
            conflict,
        ),
        (
            "conflicting tokens before a bad signature",
            bearer(ws("/abc.def.ghi"), &w),
            conflict,
        ),
    ];
    run(config(), rows).await;
}

#[tokio::test]
async fn origins_outside_the_allow_list_are_403() {
    let path = format!("/{}", writer("chat"));
    let origin = |o: &str| ws(&path).header(header::ORIGIN, o);
    let refused = Refuse(403, "Origin not allowed", "origin_not_allowed");
    let rows: Vec<Row> = vec![
        (
            "another origin",
            origin("https://evil.example.com"),
            refused,
        ),
        ("the null origin", origin("null"), refused),
        (
            "another port",
            origin("https://app.example.com:8443"),
            refused,
        ),
        ("the allowed origin", origin("https://app.example.com"), OK),
        (
            "case and trailing slash",
            origin("HTTPS://App.Example.com/"),
            OK,
        ),
        ("no Origin (not a browser)", ws(&path), OK),
        (
            "a bad key comes first",
            set(
                origin("https://evil.example.com"),
                header::SEC_WEBSOCKET_KEY,
                "c2hvcnQ=",
            ),
            Refuse(400, "Invalid Sec-WebSocket-Key", "bad_request"),
        ),
        (
            "before the token",
            ws("/abc.def.ghi").header(header::ORIGIN, "https://evil.example.com"),
            refused,
        ),
        (
            "not ours: passes whatever its origin",
            Request::get(&path).header(header::ORIGIN, "https://evil.example.com"),
            Pass,
        ),
    ];
    let config = config().allowed_origins(["https://App.example.com/", "https://other.test"]);
    run(config, rows).await;
}

#[tokio::test]
async fn bad_tokens_are_401() {
    let claims = json!({"mode": "w", "channel": "chat"});
    let good = token(claims.clone());
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let alg_none = format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&claims));
    let invalid = Refuse(401, "Invalid token", "invalid_token");
    let expired = Refuse(401, "Token expired", "token_expired");
    let early = Refuse(401, "Token not yet valid", "token_not_yet_valid");
    let at = |claim: &str, value: Value| {
        let t = token(json!({"mode": "w", "channel": "chat", claim: value}));
        ws(&format!("/{t}"))
    };
    let rows: Vec<Row> = vec![
        (
            "a bad signature",
            ws(&format!(
                "/{}",
                token_with(&claims, b"not the server's secret")
            )),
            invalid,
        ),
        (
            "an empty signature",
            ws(&format!("/{}", unsigned(&good))),
            invalid,
        ),
        ("malformed", ws("/abc.def.ghi"), invalid),
        ("alg none", ws(&format!("/{alg_none}")), invalid),
        (
            "a bad signature via Bearer",
            bearer(ws("/"), "abc.def.ghi"),
            invalid,
        ),
        ("exp not a number", at("exp", json!("tomorrow")), invalid),
        ("nbf not a number", at("nbf", json!(null)), invalid),
        ("iat not a number", at("iat", json!([1])), invalid),
        ("exp passed", at("exp", json!(now() - 10)), expired),
        ("exp is now", at("exp", json!(now())), expired),
        ("nbf in the future", at("nbf", json!(now() + 600)), early),
        ("iat in the future", at("iat", json!(now() + 600)), early),
        (
            "exp ahead, fractional",
            at("exp", json!(now() as f64 + 600.5)),
            OK,
        ),
        ("nbf passed", at("nbf", json!(now() - 10)), OK),
        (
            "expired beats a missing mode",
            ws(&format!("/{}", token(json!({"exp": now() - 10})))),
            expired,
        ),
        (
            "an invalid token beats a bad path channel",
            ws("/%FF/abc.def.ghi"),
            invalid,
        ),
    ];
    run(config(), rows).await;
}

#[tokio::test]
async fn the_leeway_widens_every_time_check() {
    let at = |claim: &str, value: u64| {
        let t = token(json!({"mode": "w", "channel": "chat", claim: value}));
        ws(&format!("/{t}"))
    };
    let rows: Vec<Row> = vec![
        ("exp passed within the leeway", at("exp", now() - 30), OK),
        (
            "exp passed beyond it",
            at("exp", now() - 600),
            Refuse(401, "Token expired", "token_expired"),
        ),
        ("nbf ahead within the leeway", at("nbf", now() + 30), OK),
        ("iat ahead within the leeway", at("iat", now() + 30), OK),
        (
            "iat ahead beyond it",
            at("iat", now() + 600),
            Refuse(401, "Token not yet valid", "token_not_yet_valid"),
        ),
    ];
    run(config().leeway(Duration::from_secs(120)), rows).await;
}

#[tokio::test]
async fn tokens_the_keys_do_not_accept_are_401() {
    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET);
    let jwks = json!({"keys": [{"kty": "oct", "k": k, "kid": "one", "alg": "HS384"}]});
    let claims = json!({"mode": "w", "channel": "chat"});
    let path = |alg, kid| ws(&format!("/{}", token_with_header(alg, kid, &claims)));
    let invalid = Refuse(401, "Invalid token", "invalid_token");
    let rows: Vec<Row> = vec![
        (
            "a kid no key has",
            path(Algorithm::HS384, Some("two")),
            invalid,
        ),
        (
            "an algorithm the key does not allow",
            path(Algorithm::HS256, Some("one")),
            invalid,
        ),
        (
            "the key's kid and algorithm",
            path(Algorithm::HS384, Some("one")),
            OK,
        ),
        ("no kid", path(Algorithm::HS384, None), OK),
    ];
    run(config().jwt_secret(jwks.to_string()), rows).await;
}

#[tokio::test]
async fn an_audience_mismatch_is_401() {
    let with_aud = |aud: Value| {
        let t = token(json!({"mode": "w", "channel": "chat", "aud": aud}));
        ws(&format!("/{t}"))
    };
    let invalid = Refuse(401, "Invalid token", "invalid_token");
    let rows: Vec<Row> = vec![
        ("another audience", with_aud(json!("postgrest")), invalid),
        ("a list without ours", with_aud(json!(["a", "b"])), invalid),
        ("aud not a string", with_aud(json!(5)), invalid),
        ("ours", with_aud(json!("pgws")), OK),
        ("a list with ours", with_aud(json!(["x", "pgws"])), OK),
        (
            "no aud (PostgREST's rule)",
            ws(&format!("/{}", writer("chat"))),
            OK,
        ),
    ];
    run(config().audience("pgws"), rows).await;
}

#[tokio::test]
async fn a_missing_or_invalid_mode_is_403() {
    let missing = Refuse(403, "Missing mode", "missing_mode");
    let invalid = Refuse(403, "Invalid mode", "invalid_mode");
    let with_mode = |mode: Value| {
        let t = token(json!({"mode": mode, "channel": "chat"}));
        ws(&format!("/{t}"))
    };
    let rows: Vec<Row> = vec![
        (
            "no mode",
            ws(&format!("/{}", token(json!({"channel": "chat"})))),
            missing,
        ),
        ("mode null", with_mode(json!(null)), missing),
        ("mode a number", with_mode(json!(1)), missing),
        ("mode an array", with_mode(json!(["r"])), missing),
        ("mode rwx", with_mode(json!("rwx")), invalid),
        ("mode R", with_mode(json!("R")), invalid),
        ("mode empty", with_mode(json!("")), invalid),
        (
            "a bad mode beats a bad path channel",
            ws(&format!("/%FF/{}", token(json!({"mode": "admin"})))),
            invalid,
        ),
    ];
    run(config(), rows).await;
}

#[tokio::test]
async fn bad_and_missing_channels_are_refused() {
    let bad_name = Refuse(400, "Invalid channel name", "invalid_channel");
    let none = Refuse(403, "No allowed channels", "no_allowed_channels");
    let bad_claim = Refuse(403, "Invalid channel claim", "invalid_channel_claim");
    let unclaimed = token(json!({"mode": "r"}));
    let claims_chat = token(json!({"mode": "r", "channel": "chat"}));
    let long = "a".repeat(64);
    let path_channel = |c: &str| ws(&format!("/{c}/{unclaimed}"));
    let claimed = |c: Value| {
        let t = token(json!({"mode": "r", "channels": ["chat", c]}));
        ws(&format!("/{t}"))
    };
    let rows: Vec<Row> = vec![
        (
            "an empty path channel",
            ws(&format!("//{unclaimed}")),
            bad_name,
        ),
        ("a 64-byte path channel", path_channel(&long), bad_name),
        ("NUL in the path channel", path_channel("a%00b"), bad_name),
        ("%FF in the path channel", path_channel("%FF"), bad_name),
        (
            "bad UTF-8 in the path channel",
            path_channel("%C3%28"),
            bad_name,
        ),
        (
            "// with Bearer: two empty segments",
            bearer(ws("//"), &unclaimed),
            Pass,
        ),
        (
            "a bad path channel beats an unclaimed one",
            ws(&format!("/{long}/{claims_chat}")),
            bad_name,
        ),
        (
            "nothing in the path, nothing claimed",
            ws(&format!("/{unclaimed}")),
            none,
        ),
        (
            "/ with Bearer, nothing claimed",
            bearer(ws("/"), &unclaimed),
            none,
        ),
        (
            "a path channel not claimed",
            ws(&format!("/other/{claims_chat}")),
            none,
        ),
        (
            "a path channel not claimed, via Bearer",
            bearer(ws("/other"), &claims_chat),
            none,
        ),
        (
            "channels holding a non-string",
            ws(&format!(
                "/{}",
                token(json!({"mode": "r", "channels": ["chat", 5]}))
            )),
            bad_claim,
        ),
        (
            "channel not a string, with a path channel",
            ws(&format!(
                "/chat/{}",
                token(json!({"mode": "r", "channel": 5}))
            )),
            bad_claim,
        ),
        (
            "an empty channels list, with a path channel",
            ws(&format!(
                "/chat/{}",
                token(json!({"mode": "r", "channels": []}))
            )),
            none,
        ),
        ("a 64-byte claimed channel", claimed(json!(long)), bad_name),
        ("an empty claimed channel", claimed(json!("")), bad_name),
        (
            "NUL in a claimed channel",
            claimed(json!("a\u{0}b")),
            bad_name,
        ),
        (
            "a bad claimed channel not granted is not looked at",
            ws(&format!(
                "/chat/{}",
                token(json!({"mode": "w", "channels": ["chat", ""]}))
            )),
            OK,
        ),
    ];
    run(config(), rows).await;
}

#[tokio::test]
async fn too_many_channels_are_403() {
    let channels = |n: usize| {
        let names: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
        ws(&format!(
            "/{}",
            token(json!({"mode": "w", "channels": names}))
        ))
    };
    let rows: Vec<Row> = vec![
        (
            "three claimed",
            channels(3),
            Refuse(403, "Too many channels", "too_many_channels"),
        ),
        ("two claimed", channels(2), OK),
        (
            "duplicates count once",
            ws(&format!(
                "/{}",
                token(json!({"mode": "w", "channel": "a", "channels": ["a", "b", "b"]}))
            )),
            OK,
        ),
        (
            "a path channel is one",
            ws(&format!(
                "/c0/{}",
                token(json!({"mode": "w", "channels": ["c0", "c1", "c2"]}))
            )),
            OK,
        ),
    ];
    run(config().max_channels(2), rows).await;
}

#[tokio::test]
async fn a_reader_without_a_database_is_503() {
    let reader = |mode: &str| {
        let t = token(json!({"mode": mode, "channel": "chat"}));
        ws(&format!("/{t}"))
    };
    let unavailable = Refuse(503, "Database unavailable", "database_unavailable");
    let rows: Vec<Row> = vec![
        ("mode r", reader("r"), unavailable),
        ("mode rw", reader("rw"), unavailable),
        ("mode w needs no listener", reader("w"), OK),
    ];
    run(config().subscribe_timeout(Duration::from_millis(100)), rows).await;
}

#[tokio::test]
async fn a_handshake_in_progress_holds_a_socket_slot() {
    let config = config()
        .max_sockets(1)
        .subscribe_timeout(Duration::from_millis(200));
    let layer = PgWsLayer::new(config.build().unwrap());
    let with_mode = |mode: &str| {
        ws(&format!(
            "/{}",
            token(json!({"mode": mode, "channel": "chat"}))
        ))
    };
    // One poll takes the only slot; the reader then waits for a listener that
    // never connects, until the subscribe timeout.
    let mut first = pin!(try_row(
        &layer,
        "the reader in progress",
        with_mode("r"),
        Refuse(503, "Database unavailable", "database_unavailable"),
    ));
    assert!(poll_once(first.as_mut()).await.is_pending());
    let full = Refuse(503, "Too many connections", "too_many_sockets");
    try_row(&layer, "a writer meanwhile", with_mode("w"), full).await;
    try_row(&layer, "not ours meanwhile", Request::get("/"), Pass).await;
    first.await;
    try_row(&layer, "the slot given back", with_mode("w"), OK).await;
    let mut refusals = layer.stats().handshake_refusals;
    refusals.sort();
    assert_eq!(
        refusals,
        [("database_unavailable", 1), ("too_many_sockets", 1)]
    );
}

#[tokio::test]
async fn after_shutdown_handshakes_are_503() {
    let layer = PgWsLayer::new(
        config()
            .allowed_origins(["https://app.example.com"])
            .build()
            .unwrap(),
    );
    layer.shutdown().await;
    let w = writer("chat");
    let path = format!("/{w}");
    let rows: Vec<Row> = vec![
        (
            "a writer",
            ws(&path),
            Refuse(503, "Server shutting down", "shutting_down"),
        ),
        (
            "before the token",
            ws("/abc.def.ghi"),
            Refuse(503, "Server shutting down", "shutting_down"),
        ),
        (
            "after the origin",
            ws(&path).header(header::ORIGIN, "https://evil.example.com"),
            Refuse(403, "Origin not allowed", "origin_not_allowed"),
        ),
        (
            "after the key",
            set(ws(&path), header::SEC_WEBSOCKET_KEY, "c2hvcnQ="),
            Refuse(400, "Invalid Sec-WebSocket-Key", "bad_request"),
        ),
        ("not ours: still passes", Request::get(&path), Pass),
    ];
    // One layer for all rows: it is shut down once, and counts add up.
    let mut counted: Vec<(&str, u64)> = Vec::new();
    for (name, req, expect) in rows {
        try_row(&layer, name, req, expect).await;
        if let Refuse(_, _, label) = expect {
            match counted.iter_mut().find(|(l, _)| *l == label) {
                Some((_, n)) => *n += 1,
                None => counted.push((label, 1)),
            }
        }
    }
    let mut refusals = layer.stats().handshake_refusals;
    refusals.sort();
    counted.sort();
    assert_eq!(refusals, counted);
}
