//! Which requests the layer takes and how it answers them (contract sections 1 to 3),
//! end to end through a real server.

use crate::common::{rows::check_rows, *};
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A handshake request for `path` with the usual headers, to be tweaked.
fn handshake_request(server: &TestServer, path: &str) -> http::request::Builder {
    Request::get(path)
        .header(header::HOST, server.addr.to_string())
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "upgrade")
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .header(header::SEC_WEBSOCKET_KEY, KEY)
}

fn empty() -> Full<Bytes> {
    Full::new(Bytes::new())
}

/// Like `TestServer::request`, with the response headers.
async fn send(server: &TestServer, req: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, String) {
    send_to(server.addr, req).await
}

/// A refusal: this status, a `text/plain` body starting with `prefix`.
async fn assert_refused(server: &TestServer, path: &str, status: u16, prefix: &str) {
    let req = handshake_request(server, path).body(empty()).unwrap();
    let (got, headers, body) = send(server, req).await;
    assert_eq!(got.as_u16(), status, "{path}: {body}");
    assert!(body.starts_with(prefix), "{path}: {body:?}");
    let content_type = headers[header::CONTENT_TYPE].to_str().unwrap();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert!(!headers.contains_key(header::SEC_WEBSOCKET_ACCEPT));
}

/// The request reached the inner service unchanged.
fn assert_inner((status, body): (StatusCode, String), path: &str) {
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    assert_eq!(body, format!("inner {path}"));
}

fn accept_for(key: &str) -> String {
    let mut sha1 = sha1_smol::Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha1.digest().bytes())
}

/// A write-only token (no listener needed) for a fresh channel.
fn writer() -> String {
    token(claims("w", Some(&unique("hs_w"))))
}

/// Sends raw bytes; the status code and the raw response head and body.
async fn raw(server: &TestServer, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("response timed out")
            .unwrap();
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        if n == 0 {
            break;
        }
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse::<usize>().unwrap());
            match length {
                Some(len) if out.len() >= end + 4 + len => break,
                None if head.starts_with("http/1.1 101") => break,
                _ => {}
            }
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text[9..12].parse().unwrap();
    (status, text)
}

// ---- section 2: every refusal row -------------------------------------------------------

/// Refusals on the default settings: every path of a row is refused with the row's
/// status and a body starting with its prefix.
struct Refusal {
    name: &'static str,
    status: u16,
    prefix: &'static str,
    paths: Vec<String>,
}

fn refusals() -> Vec<Refusal> {
    let chan = unique("hs_refused");
    let claims = claims("r", Some(&chan));
    let good = token(claims.clone());
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let path = |claims: Value| format!("/{}", token(claims));
    let long = "a".repeat(64);
    let r = token(json!({"mode": "r"}));
    vec![
        Refusal {
            name: "invalid_tokens_are_401",
            status: 401,
            prefix: "Invalid token",
            paths: vec![
                format!(
                    "/{}",
                    token_with(&claims, b"some other secret, not the server's")
                ),
                // Empty signature: JWT-shaped, so ours, and refused.
                format!("/{}", &good[..=good.rfind('.').unwrap()]),
                // Garbage in the shape of a JWS.
                "/abc.def.ghi".to_owned(),
                // alg: none.
                format!("/{}.{}.", b64(&json!({"alg": "none"})), b64(&claims)),
                // Non-numeric exp.
                path(json!({"mode": "r", "channel": chan, "exp": "tomorrow"})),
            ],
        },
        Refusal {
            name: "an_expired_token_is_401",
            status: 401,
            prefix: "Token expired",
            paths: vec![
                path(json!({"mode": "r", "channel": chan, "exp": now() - 10})),
                // Expired and without a mode: the first row wins.
                path(json!({"channel": chan, "exp": now() - 10})),
            ],
        },
        Refusal {
            name: "a_token_not_yet_valid_is_401",
            status: 401,
            prefix: "Token not yet valid",
            paths: ["nbf", "iat"]
                .map(|claim| path(json!({"mode": "r", "channel": chan, claim: now() + 600})))
                .into(),
        },
        Refusal {
            name: "a_missing_mode_is_403",
            status: 403,
            prefix: "Missing mode",
            paths: vec![
                path(json!({"channel": chan})),
                path(json!({"channel": chan, "mode": 1})),
            ],
        },
        Refusal {
            name: "an_invalid_mode_is_403",
            status: 403,
            prefix: "Invalid mode",
            paths: vec![
                path(json!({"channel": chan, "mode": "rwx"})),
                // A bad mode and a bad path channel: the mode row wins.
                format!("/%FF/{}", token(json!({"mode": "admin"}))),
            ],
        },
        Refusal {
            name: "a_bad_path_channel_is_400",
            status: 400,
            prefix: "Invalid channel name",
            paths: [long.as_str(), "%FF", "a%00b", "%C3%28"]
                .map(|bad| format!("/{bad}/{r}"))
                .into_iter()
                // It wins over "No allowed channels" (the path channel is not claimed
                // either).
                .chain([format!(
                    "/{long}/{}",
                    token(json!({"mode": "r", "channel": chan}))
                )])
                .collect(),
        },
        Refusal {
            name: "a_channel_claim_of_another_type_is_403",
            status: 403,
            prefix: "Invalid channel claim",
            // Each shape for a path channel (which it must not grant) and alone.
            paths: [
                json!({"channel": ["a"]}),
                json!({"channel": 1}),
                json!({"channel": null}),
                json!({"channel": {}}),
                json!({"channels": "a"}),
                json!({"channels": ["a", 1]}),
                json!({"channels": null}),
                json!({"channel": "a", "channels": [["a"]]}),
            ]
            .into_iter()
            .flat_map(|mut claims| {
                claims["mode"] = json!("r");
                let t = token(claims);
                [
                    format!("/{}/{t}", unique("hs_cc")),
                    format!("/a/{t}"),
                    format!("/{t}"),
                ]
            })
            .collect(),
        },
        Refusal {
            name: "no_channel_granted_is_403",
            status: 403,
            prefix: "No allowed channels",
            paths: vec![
                // Nothing in the path, nothing claimed.
                format!("/{r}"),
                // An empty `channels` list grants nothing, with or without a path.
                path(json!({"mode": "r", "channels": []})),
                format!(
                    "/{}/{}",
                    unique("hs_na"),
                    token(json!({"mode": "r", "channels": []}))
                ),
                // A path channel that is not among the claimed ones.
                format!("/{}/{good}", unique("hs_na")),
            ],
        },
        Refusal {
            name: "a_bad_granted_channel_is_400",
            status: 400,
            prefix: "Invalid channel name",
            paths: [json!("b".repeat(64)), json!(""), json!("a\u{0}b")]
                .map(|bad| path(json!({"mode": "r", "channels": [unique("hs_bg"), bad]})))
                .into(),
        },
    ]
}

/// Every row of [`refusals`], against one server.
#[tokio::test]
async fn refusals_on_the_default_settings() {
    let server = TestServer::start(config()).await;
    let server = &server;
    check_rows(refusals().into_iter().map(|row| {
        let run = async move {
            for path in &row.paths {
                assert_refused(server, path, row.status, row.prefix).await;
            }
        };
        (row.name, run)
    }))
    .await;
}

#[tokio::test]
async fn an_aud_mismatch_is_401() {
    let server = TestServer::start(config().audience("pgws")).await;
    let chan = unique("hs_aud");
    let other = token(json!({"mode": "w", "channel": chan, "aud": "postgrest"}));
    assert_refused(&server, &format!("/{other}"), 401, "Invalid token").await;
    let ours = token(json!({"mode": "w", "channel": chan, "aud": ["x", "pgws"]}));
    assert_eq!(
        server.handshake(&format!("/{ours}")).await.0,
        StatusCode::SWITCHING_PROTOCOLS
    );
}

#[tokio::test]
async fn leeway_is_configurable() {
    let server = TestServer::start(config().leeway(std::time::Duration::from_secs(120))).await;
    let t = token(json!({"mode": "w", "channel": unique("hs_lee"), "exp": now() - 30}));
    assert_eq!(
        server.handshake(&format!("/{t}")).await.0,
        StatusCode::SWITCHING_PROTOCOLS
    );
    let t = token(json!({"mode": "w", "channel": unique("hs_lee"), "exp": now() - 600}));
    assert_refused(&server, &format!("/{t}"), 401, "Token expired").await;
}

#[tokio::test]
async fn an_empty_path_channel_is_400() {
    // `//<jwt>`: an empty channel, sent raw since clients may normalize the path.
    let server = TestServer::start(config()).await;
    let t = token(json!({"mode": "r"}));
    let request = format!(
        "GET //{t} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n",
        server.addr
    );
    let (status, text) = raw(&server, &request).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("\r\n\r\nInvalid channel name"), "{text}");
}

#[tokio::test]
async fn too_many_channels_are_403() {
    let server = TestServer::start(config().max_channels(2)).await;
    let three: Vec<String> = (0..3).map(|_| unique("hs_many")).collect();
    let t = token(json!({"mode": "w", "channels": three}));
    assert_refused(&server, &format!("/{t}"), 403, "Too many channels").await;
    let two = &three[..2];
    let t = token(json!({"mode": "w", "channels": two}));
    assert_eq!(
        server.handshake(&format!("/{t}")).await.0,
        StatusCode::SWITCHING_PROTOCOLS
    );
}

// ---- section 1: which requests are ours -------------------------------------------------

#[tokio::test]
async fn a_malformed_key_is_400_before_the_token() {
    let server = TestServer::start(config()).await;
    let garbage = "/abc.def.ghi";
    let good = format!("/{}", writer());
    let expired = format!(
        "/{}",
        token(json!({"mode": "w", "channel": unique("hs_key"), "exp": now() - 10}))
    );
    for path in [garbage, good.as_str(), expired.as_str()] {
        for key in [
            "c2hvcnQ=",
            "not base64 at all!",
            "",
            "AAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            let mut req = handshake_request(&server, path).body(empty()).unwrap();
            req.headers_mut()
                .insert(header::SEC_WEBSOCKET_KEY, key.parse().unwrap());
            let (status, headers, body) = send(&server, req).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {key:?}: {body}");
            assert!(!body.starts_with("inner"), "{body}");
            assert!(!body.starts_with("Invalid token"), "{body}");
            assert!(!body.starts_with("Token expired"), "{body}");
            let content_type = headers[header::CONTENT_TYPE].to_str().unwrap();
            assert!(content_type.starts_with("text/plain"), "{content_type}");
        }
    }
}

#[tokio::test]
async fn requests_that_are_not_handshakes_go_to_the_inner_service() {
    let server = TestServer::start(config()).await;
    let path = format!("/{}", writer());
    // A plain GET of a JWT path.
    let req = Request::get(&path)
        .header(header::HOST, server.addr.to_string())
        .body(empty())
        .unwrap();
    assert_inner(server.request(req).await, &path);
    // A POST with a body.
    let req = Request::post(&path)
        .header(header::HOST, server.addr.to_string())
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    assert_inner(server.request(req).await, &path);
    // Handshakes missing one piece each.
    for drop_header in [
        header::UPGRADE,
        header::CONNECTION,
        header::SEC_WEBSOCKET_VERSION,
        header::SEC_WEBSOCKET_KEY,
    ] {
        let mut req = handshake_request(&server, &path).body(empty()).unwrap();
        req.headers_mut().remove(&drop_header);
        assert_inner(server.request(req).await, &path);
    }
    // Not a GET.
    let mut req = handshake_request(&server, &path).body(empty()).unwrap();
    *req.method_mut() = Method::POST;
    assert_inner(server.request(req).await, &path);
    // Another upgrade.
    let mut req = handshake_request(&server, &path).body(empty()).unwrap();
    req.headers_mut()
        .insert(header::UPGRADE, "h2c".parse().unwrap());
    assert_inner(server.request(req).await, &path);
}

#[tokio::test]
async fn handshakes_whose_path_is_not_jwt_shaped_go_to_the_inner_service() {
    let server = TestServer::start(config()).await;
    let t = writer();
    let (h, p, s) = {
        let mut parts = t.split('.');
        (
            parts.next().unwrap().to_owned(),
            parts.next().unwrap().to_owned(),
            parts.next().unwrap().to_owned(),
        )
    };
    let paths = [
        "/".to_owned(),
        "/index.html".to_owned(),
        "/chat".to_owned(),
        format!("/{h}.{p}"),
        format!("/{h}.{p}.{s}.x"),
        format!("/.{p}.{s}"),
        format!("/{h}..{s}"),
        format!("/{h}.{p}+.{s}"),
        format!("/a/b/{t}"),
        format!("/{t}/"),
        format!("/{t}/x"),
    ];
    for path in paths {
        assert_inner(server.handshake(&path).await, &path);
    }
}

#[tokio::test]
async fn a_query_string_is_not_part_of_the_token() {
    let server = TestServer::start(config()).await;
    let chan = unique("hs_query");
    let t = token(claims("w", Some(&chan)));
    for path in [
        format!("/{t}?x=1"),
        format!("/{t}?"),
        format!("/{chan}/{t}?token=abc&y"),
    ] {
        assert_eq!(
            server.handshake(&path).await.0,
            StatusCode::SWITCHING_PROTOCOLS,
            "{path}"
        );
    }
    // The query string does not make a refused token acceptable, nor the reverse.
    let expired = token(json!({"mode": "w", "channel": chan, "exp": now() - 10}));
    assert_refused(&server, &format!("/{expired}?{t}"), 401, "Token expired").await;
}

#[tokio::test]
async fn header_tokens_are_compared_case_insensitively() {
    let server = TestServer::start(config()).await;
    for (upgrade, connection) in [
        ("WebSocket", "keep-alive, Upgrade"),
        ("WEBSOCKET", "UPGRADE"),
        ("websocket", "Upgrade, keep-alive"),
        ("websocket", "keep-alive,upgrade"),
    ] {
        let mut req = handshake_request(&server, &format!("/{}", writer()))
            .body(empty())
            .unwrap();
        req.headers_mut()
            .insert(header::UPGRADE, upgrade.parse().unwrap());
        req.headers_mut()
            .insert(header::CONNECTION, connection.parse().unwrap());
        let (status, _, body) = send(&server, req).await;
        assert_eq!(
            status,
            StatusCode::SWITCHING_PROTOCOLS,
            "{upgrade} / {connection}: {body}"
        );
    }
}

#[tokio::test]
async fn other_websocket_versions_go_to_the_inner_service() {
    let server = TestServer::start(config()).await;
    let path = format!("/{}", writer());
    for version in ["8", "12", "14"] {
        let mut req = handshake_request(&server, &path).body(empty()).unwrap();
        req.headers_mut()
            .insert(header::SEC_WEBSOCKET_VERSION, version.parse().unwrap());
        assert_inner(server.request(req).await, &path);
    }
}

#[tokio::test]
async fn a_path_prefix_is_required_when_configured() {
    let server = TestServer::start(config().path_prefix("/ws")).await;
    let chan = unique("hs_prefix");
    let t = token(claims("w", Some(&chan)));
    for path in [format!("/ws/{t}"), format!("/ws/{chan}/{t}")] {
        assert_eq!(
            server.handshake(&path).await.0,
            StatusCode::SWITCHING_PROTOCOLS,
            "{path}"
        );
    }
    for path in [
        format!("/{t}"),
        format!("/{chan}/{t}"),
        format!("/wsx/{t}"),
        format!("/api/ws/{t}"),
    ] {
        assert_inner(server.handshake(&path).await, &path);
    }
    // Refusals under the prefix are ours.
    assert_refused(&server, "/ws/abc.def.ghi", 401, "Invalid token").await;
}

#[tokio::test]
async fn an_encoded_slash_in_the_path_channel_is_a_slash() {
    let server = TestServer::start(config()).await;
    let base = unique("hs_slash");
    let chan = format!("{base}/b");
    let encoded = format!("{base}%2Fb");
    // Nothing claimed: the path channel.
    let mut ws = server
        .connect(&format!("/{encoded}/{}", token(json!({"mode": "r"}))))
        .await;
    // Claimed as `a/b`, compared after decoding.
    let mut claimed = server
        .connect(&format!(
            "/{encoded}/{}",
            token(json!({"mode": "r", "channel": chan}))
        ))
        .await;
    notify(&chan, "through the slash").await;
    assert_eq!(recv_text(&mut ws).await, "through the slash");
    assert_eq!(recv_text(&mut claimed).await, "through the slash");
}

#[tokio::test]
async fn a_percent_encoded_utf8_path_channel_reaches_its_listeners() {
    let server = TestServer::start(config()).await;
    let base = unique("hs_utf8");
    let chan = format!("{base}é");
    let mut ws = server
        .connect(&format!("/{base}%C3%A9/{}", token(json!({"mode": "r"}))))
        .await;
    notify(&chan, "accent").await;
    assert_eq!(recv_text(&mut ws).await, "accent");
}

#[tokio::test]
async fn a_successful_handshake_negotiates_nothing() {
    let server = TestServer::start(config()).await;
    let chan = unique("hs_ok");
    let path = format!("/{chan}/{}", token(json!({"mode": "rw"})));
    for key in [KEY.to_owned(), "x3JJHMbDL1EzLkh9GBhXDw==".to_owned()] {
        let mut req = handshake_request(&server, &path)
            .header(header::SEC_WEBSOCKET_PROTOCOL, "chat, superchat")
            .header(
                header::SEC_WEBSOCKET_EXTENSIONS,
                "permessage-deflate; client_max_window_bits",
            )
            .body(empty())
            .unwrap();
        req.headers_mut()
            .insert(header::SEC_WEBSOCKET_KEY, key.parse().unwrap());
        let (status, headers, _) = send(&server, req).await;
        assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(headers[header::SEC_WEBSOCKET_ACCEPT], accept_for(&key));
        assert!(
            headers[header::UPGRADE]
                .to_str()
                .unwrap()
                .eq_ignore_ascii_case("websocket")
        );
        assert!(
            headers[header::CONNECTION]
                .to_str()
                .unwrap()
                .eq_ignore_ascii_case("upgrade")
        );
        assert!(!headers.contains_key(header::SEC_WEBSOCKET_PROTOCOL));
        assert!(!headers.contains_key(header::SEC_WEBSOCKET_EXTENSIONS));
    }
    assert_eq!(accept_for(KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

#[tokio::test]
async fn an_accepted_socket_carries_notifications() {
    // The same request through a real WebSocket client.
    let server = TestServer::start(config()).await;
    let chan = unique("hs_client");
    let mut ws = server
        .connect(&format!("/{}?ignored=1", token(claims("r", Some(&chan)))))
        .await;
    notify(&chan, "hello").await;
    assert_eq!(recv_text(&mut ws).await, "hello");
    // A refused handshake is an error for the client.
    let refused = server.try_connect("/abc.def.ghi").await;
    assert!(refused.is_err());
}
