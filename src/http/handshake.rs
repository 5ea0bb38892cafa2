//! The WebSocket handshake, RFC 6455 over HTTP/1.1 and RFC 8441 over HTTP/2: which
//! requests are ours, the accept key, the answers.

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use hyper::ext::Protocol;

use crate::refusal::Refusal;

/// What to do with a request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    /// Not ours: hand it to the wrapped service.
    Pass,
    /// Ours, but malformed: refused (`400`) before any token check.
    Refused(Refusal),
    /// Ours: a token from the path, `Authorization: Bearer` or the
    /// `pgws.bearer.<jwt>` subprotocol.
    Ours {
        /// The channel as it stands in the path, still percent-encoded.
        channel: Option<&'a str>,
        token: &'a str,
        /// The client offered the `pgws` subprotocol, so the answer names it.
        pgws_protocol: bool,
        /// The client offered `pgws.json`: a session socket (PROTOCOL.md §17),
        /// whose answer names `pgws.json`.
        session: bool,
    },
}

/// The subprotocol pgws answers when a client offers it.
pub(crate) const PROTOCOL: &str = "pgws";
/// The subprotocol of session sockets (PROTOCOL.md §17).
pub(crate) const SESSION_PROTOCOL: &str = "pgws.json";
const BEARER_PROTOCOL: &str = "pgws.bearer.";

/// Sorts a request as PROTOCOL.md §1 says (which requests are ours, where the token goes).
pub(crate) fn route<'a, B>(req: &'a Request<B>, prefix: &str) -> Route<'a> {
    let extended_connect = is_extended_connect(req);
    if !extended_connect && !is_handshake(req) {
        return Route::Pass;
    }
    let headers = req.headers();
    let protocols: Vec<&str> = header_tokens(headers, header::SEC_WEBSOCKET_PROTOCOL).collect();
    let pgws_protocol = protocols.contains(&PROTOCOL);
    let session = protocols.contains(&SESSION_PROTOCOL);
    // Only JWT-shaped tokens make a request ours: an opaque bearer token belongs to
    // the wrapped service.
    let from_protocol = protocols
        .iter()
        .find_map(|p| p.strip_prefix(BEARER_PROTOCOL))
        .filter(|t| looks_like_jws(t));
    let from_header = bearer(headers).filter(|t| looks_like_jws(t));
    let elsewhere = from_header.is_some() || from_protocol.is_some();
    let Some((channel, from_path)) = split_path(req.uri().path(), prefix, elsewhere) else {
        return Route::Pass;
    };
    // RFC 8441 §5: an extended CONNECT carries no key.
    if !extended_connect && !key_is_valid(headers) {
        return Route::Refused(Refusal::InvalidKey);
    }
    if from_protocol.is_some() && !pgws_protocol && !session {
        return Route::Refused(Refusal::InvalidSubprotocol);
    }
    let mut sources = [from_path, from_header, from_protocol]
        .into_iter()
        .flatten();
    let token = sources.next().expect("split_path needs a token");
    if sources.any(|other| other != token) {
        return Route::Refused(Refusal::ConflictingTokens);
    }
    Route::Ours {
        channel,
        token,
        pgws_protocol,
        session,
    }
}

/// The subprotocol a taken handshake's answer names: `pgws.json` for a session
/// socket, else `pgws` when offered, else none.
pub(crate) fn answered_protocol(pgws_protocol: bool, session: bool) -> Option<&'static str> {
    if session {
        Some(SESSION_PROTOCOL)
    } else {
        pgws_protocol.then_some(PROTOCOL)
    }
}

/// `Authorization: Bearer <jwt>`, the scheme compared case-insensitively.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// RFC 6455 §4.1: an HTTP/1.1 `GET` (hyper upgrades no other version, so a `101`
/// for HTTP/1.0 or HTTP/2 would never become a socket).
fn is_handshake<B>(req: &Request<B>) -> bool {
    let h = req.headers();
    req.method() == Method::GET
        && req.version() == Version::HTTP_11
        && has_token(h, header::UPGRADE, "websocket")
        && has_token(h, header::CONNECTION, "upgrade")
        && h.get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v == "13")
        && h.contains_key(header::SEC_WEBSOCKET_KEY)
}

/// RFC 8441 §4-5: an HTTP/2 `CONNECT` with `:protocol websocket` and
/// `Sec-WebSocket-Version: 13`; hyper hands over its stream when the answer is a `2xx`.
/// The server must have turned the extended CONNECT protocol on for a client to send it.
fn is_extended_connect<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT
        && req.version() == Version::HTTP_2
        && req
            .extensions()
            .get::<Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
        && req
            .headers()
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v == "13")
}

/// Whether a comma-separated header holds `token`, compared case-insensitively.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    header_tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// The items of a comma-separated header, trimmed.
fn header_tokens(headers: &HeaderMap, name: header::HeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn key_is_valid(headers: &HeaderMap) -> bool {
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|k| {
            base64::engine::general_purpose::STANDARD
                .decode(k.as_bytes())
                .ok()
        })
        .is_some_and(|k| k.len() == 16)
}

/// Splits the raw path after the prefix into an optional channel and an optional
/// JWT-shaped path token. Without a token elsewhere, the path must carry one.
pub(crate) fn split_path<'a>(
    path: &'a str,
    prefix: &str,
    token_elsewhere: bool,
) -> Option<(Option<&'a str>, Option<&'a str>)> {
    let rest = path.strip_prefix(prefix)?;
    if rest.is_empty() || rest == "/" {
        return token_elsewhere.then_some((None, None));
    }
    let rest = rest.strip_prefix('/')?;
    match rest.split_once('/') {
        Some((channel, token)) => looks_like_jws(token).then_some((Some(channel), Some(token))),
        None if looks_like_jws(rest) => Some((None, Some(rest))),
        None => token_elsewhere.then_some((Some(rest), None)),
    }
}

/// Three base64url parts joined by dots; only the signature may be empty.
pub(crate) fn looks_like_jws(token: &str) -> bool {
    let b64url = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) => {
            !h.is_empty() && !p.is_empty() && b64url(h) && b64url(p) && b64url(s)
        }
        _ => false,
    }
}

/// `Sec-WebSocket-Accept` for a client key.
pub(crate) fn accept_key(key: &[u8]) -> String {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut sha1 = sha1_smol::Sha1::new();
    sha1.update(key);
    sha1.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(sha1.digest().bytes())
}

/// The `Sec-WebSocket-Key` of a taken HTTP/1.1 handshake; `None` for an HTTP/2
/// extended CONNECT, whatever it carries, so that it is answered `200`.
pub(crate) fn key<B>(req: &Request<B>) -> Option<HeaderValue> {
    if is_extended_connect(req) {
        return None;
    }
    req.headers().get(header::SEC_WEBSOCKET_KEY).cloned()
}

/// The answer that accepts a taken handshake: `101` for an HTTP/1.1 one (with its
/// key), `200` for an HTTP/2 extended CONNECT (no key).
pub(crate) fn accepted(
    key: Option<&HeaderValue>,
    protocol: Option<&'static str>,
) -> Response<Bytes> {
    match key {
        Some(key) => switching_protocols(key, protocol),
        None => extended_connect_ok(protocol),
    }
}

/// RFC 8441 §5: `200`, no `Sec-WebSocket-Accept`, the stream becomes the socket.
fn extended_connect_ok(protocol: Option<&'static str>) -> Response<Bytes> {
    let mut res = Response::builder().status(StatusCode::OK);
    if let Some(protocol) = protocol {
        res = res.header(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    res.body(Bytes::new()).expect("static headers are valid")
}

/// The `101` answer for this request's key, naming `protocol`, if any.
pub(crate) fn switching_protocols(
    key: &HeaderValue,
    protocol: Option<&'static str>,
) -> Response<Bytes> {
    let accept = accept_key(key.as_bytes());
    let mut res = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(protocol) = protocol {
        res = res.header(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    res.body(Bytes::new()).expect("static headers are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJtb2RlIjoiciJ9.c2ln";

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn paths_split_into_channel_and_token() {
        fn split<'a>(p: &'a str, prefix: &str) -> Option<(Option<&'a str>, Option<&'a str>)> {
            split_path(p, prefix, false)
        }
        assert_eq!(split(&format!("/{JWT}"), ""), Some((None, Some(JWT))));
        let p = format!("/chat%2Fx/{JWT}");
        assert_eq!(split(&p, ""), Some((Some("chat%2Fx"), Some(JWT))));
        assert_eq!(split(&format!("/ws/{JWT}"), "/ws"), Some((None, Some(JWT))));
        let p = format!("/ws/c/{JWT}");
        assert_eq!(split(&p, "/ws"), Some((Some("c"), Some(JWT))));
        assert_eq!(split(&format!("/{JWT}"), "/ws"), None);
        assert_eq!(split(&format!("/wsx/{JWT}"), "/ws"), None);
        assert_eq!(split(&format!("/a/b/{JWT}"), ""), None);
        assert_eq!(split(&format!("/{JWT}/"), ""), None);
        assert_eq!(split("/index.html", ""), None);
        assert_eq!(split("/", ""), None);
    }

    #[test]
    fn with_a_token_elsewhere_the_path_may_name_just_a_channel() {
        fn split<'a>(p: &'a str, prefix: &str) -> Option<(Option<&'a str>, Option<&'a str>)> {
            split_path(p, prefix, true)
        }
        assert_eq!(split("/", ""), Some((None, None)));
        assert_eq!(split("/ws", "/ws"), Some((None, None)));
        assert_eq!(split("/ws/", "/ws"), Some((None, None)));
        assert_eq!(split("/chat", ""), Some((Some("chat"), None)));
        assert_eq!(split(&format!("/{JWT}"), ""), Some((None, Some(JWT))));
        assert_eq!(split("/a/b", ""), None);
    }

    #[test]
    fn token_shape_allows_only_an_empty_signature() {
        assert!(looks_like_jws("a.b.c"));
        assert!(looks_like_jws("a.b."));
        assert!(!looks_like_jws(".b.c"));
        assert!(!looks_like_jws("a..c"));
        assert!(!looks_like_jws("a.b"));
        assert!(!looks_like_jws("a.b.c.d"));
        assert!(!looks_like_jws("a.b+.c"));
    }

    fn request(key: &str) -> Request<()> {
        Request::get(format!("/{JWT}"))
            .header("upgrade", "WebSocket")
            .header("connection", "keep-alive, Upgrade")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", key)
            .body(())
            .unwrap()
    }

    #[test]
    fn handshakes_are_recognized_case_insensitively() {
        let req = request("dGhlIHNhbXBsZSBub25jZQ==");
        assert!(matches!(route(&req, ""), Route::Ours { channel: None, .. }));
        assert!(matches!(
            route(&request("c2hvcnQ="), ""),
            Route::Refused(Refusal::InvalidKey)
        ));
        let mut plain_get = request("dGhlIHNhbXBsZSBub25jZQ==");
        plain_get.headers_mut().remove("upgrade");
        assert_eq!(route(&plain_get, ""), Route::Pass);
    }

    fn with(mut req: Request<()>, name: &'static str, value: &str) -> Request<()> {
        req.headers_mut().append(name, value.parse().unwrap());
        req
    }

    #[test]
    fn tokens_come_from_header_or_subprotocol_and_must_agree() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let mut bare = request(key);
        *bare.uri_mut() = "/chat".parse().unwrap();
        assert_eq!(route(&bare, ""), Route::Pass);
        let opaque = with(bare.clone(), "authorization", "Bearer not-a-jwt");
        assert_eq!(route(&opaque, ""), Route::Pass);

        let req = with(bare, "authorization", &format!("Bearer {JWT}"));
        assert_eq!(
            route(&req, ""),
            Route::Ours {
                channel: Some("chat"),
                token: JWT,
                pgws_protocol: false,
                session: false
            }
        );
        let req = with(
            request(key),
            "sec-websocket-protocol",
            &format!("pgws, pgws.bearer.{JWT}"),
        );
        assert_eq!(
            route(&req, ""),
            Route::Ours {
                channel: None,
                token: JWT,
                pgws_protocol: true,
                session: false
            }
        );
        let lone = with(
            request(key),
            "sec-websocket-protocol",
            &format!("pgws.bearer.{JWT}"),
        );
        assert!(route(&lone, "") == Route::Refused(Refusal::InvalidSubprotocol));
        let other = JWT.replace("c2ln", "b3Ro");
        let conflict = with(request(key), "authorization", &format!("bearer {other}"));
        assert!(route(&conflict, "") == Route::Refused(Refusal::ConflictingTokens));
    }

    fn extended_connect(path: &str) -> Request<()> {
        let mut req = Request::connect(path)
            .version(Version::HTTP_2)
            .header("sec-websocket-version", "13")
            .body(())
            .unwrap();
        req.extensions_mut()
            .insert(Protocol::from_static("websocket"));
        req
    }

    #[test]
    fn an_http2_extended_connect_is_a_handshake_without_a_key() {
        let req = extended_connect(&format!("/chat/{JWT}"));
        assert_eq!(
            route(&req, ""),
            Route::Ours {
                channel: Some("chat"),
                token: JWT,
                pgws_protocol: false,
                session: false
            }
        );
        assert_eq!(key(&req), None);
        // A key sent anyway is not used: the answer is still 200, not 101.
        let keyed = with(req, "sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(key(&keyed), None);
        assert_eq!(
            accepted(key(&keyed).as_ref(), None).status(),
            StatusCode::OK
        );
        let upgrade = request("dGhlIHNhbXBsZSBub25jZQ==");
        let res = accepted(key(&upgrade).as_ref(), None);
        assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    }

    #[test]
    fn the_extended_connect_answer_names_pgws_only_when_offered() {
        let req = with(
            extended_connect("/chat"),
            "sec-websocket-protocol",
            &format!("pgws, pgws.bearer.{JWT}"),
        );
        assert!(matches!(
            route(&req, ""),
            Route::Ours {
                pgws_protocol: true,
                ..
            }
        ));
        let res = accepted(None, Some(PROTOCOL));
        assert_eq!(res.headers()["sec-websocket-protocol"], PROTOCOL);
        assert!(!res.headers().contains_key(header::SEC_WEBSOCKET_ACCEPT));
        assert!(
            !accepted(None, None)
                .headers()
                .contains_key(header::SEC_WEBSOCKET_PROTOCOL)
        );
    }

    #[test]
    fn only_a_websocket_extended_connect_over_http2_is_ours() {
        let path = format!("/{JWT}");
        let mut http11 = extended_connect(&path);
        *http11.version_mut() = Version::HTTP_11;
        let mut other_protocol = extended_connect(&path);
        other_protocol
            .extensions_mut()
            .insert(Protocol::from_static("webtransport"));
        let mut no_protocol = extended_connect(&path);
        no_protocol.extensions_mut().clear();
        let mut old_version = extended_connect(&path);
        old_version
            .headers_mut()
            .insert("sec-websocket-version", "8".parse().unwrap());
        let mut get = extended_connect(&path);
        *get.method_mut() = Method::GET;
        for req in [http11, other_protocol, no_protocol, old_version, get] {
            assert_eq!(route(&req, ""), Route::Pass, "{req:?}");
        }
        let mut upper = extended_connect(&path);
        upper
            .extensions_mut()
            .insert(Protocol::from_static("WebSocket"));
        assert!(matches!(route(&upper, ""), Route::Ours { .. }));
    }
}
