//! The RFC 6455 handshake: which requests are ours, the accept key, the answers.

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};

/// What to do with a request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    /// Not ours: hand it to the wrapped service.
    Pass,
    /// Ours, but the `Sec-WebSocket-Key` is not 16 bytes of base64.
    BadKey,
    /// Ours: `/<jwt>` or `/<channel>/<jwt>` after the prefix.
    Ours {
        /// The channel as it stands in the path, still percent-encoded.
        channel: Option<&'a str>,
        token: &'a str,
    },
}

/// Sorts a request by the contract's section 1.
pub(crate) fn route<'a, B>(req: &'a Request<B>, prefix: &str) -> Route<'a> {
    if !is_handshake(req) {
        return Route::Pass;
    }
    let Some((channel, token)) = split_path(req.uri().path(), prefix) else {
        return Route::Pass;
    };
    if !key_is_valid(req.headers()) {
        return Route::BadKey;
    }
    Route::Ours { channel, token }
}

fn is_handshake<B>(req: &Request<B>) -> bool {
    let h = req.headers();
    req.method() == Method::GET
        && has_token(h, header::UPGRADE, "websocket")
        && has_token(h, header::CONNECTION, "upgrade")
        && h.get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v == "13")
        && h.contains_key(header::SEC_WEBSOCKET_KEY)
}

/// Whether a comma-separated header holds `token`, compared case-insensitively.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
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

/// Splits the raw path after the prefix into an optional channel and a JWT-shaped token.
pub(crate) fn split_path<'a>(path: &'a str, prefix: &str) -> Option<(Option<&'a str>, &'a str)> {
    let rest = path.strip_prefix(prefix)?.strip_prefix('/')?;
    let (channel, token) = match rest.split_once('/') {
        None => (None, rest),
        Some((channel, token)) => (Some(channel), token),
    };
    looks_like_jws(token).then_some((channel, token))
}

/// Three base64url parts joined by dots; only the signature may be empty.
fn looks_like_jws(token: &str) -> bool {
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

/// The `101` answer for this request's key.
pub(crate) fn switching_protocols(key: &HeaderValue) -> Response<Bytes> {
    let accept = accept_key(key.as_bytes());
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Bytes::new())
        .expect("static headers are valid")
}

/// A refusal as `text/plain`.
pub(crate) fn plain(status: StatusCode, text: impl Into<String>) -> Response<Bytes> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Bytes::from(text.into()))
        .expect("static headers are valid")
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
        assert_eq!(split_path(&format!("/{JWT}"), ""), Some((None, JWT)));
        let p = format!("/chat%2Fx/{JWT}");
        assert_eq!(split_path(&p, ""), Some((Some("chat%2Fx"), JWT)));
        assert_eq!(split_path(&format!("/ws/{JWT}"), "/ws"), Some((None, JWT)));
        assert_eq!(
            split_path(&format!("/ws/c/{JWT}"), "/ws"),
            Some((Some("c"), JWT))
        );
        assert_eq!(split_path(&format!("/{JWT}"), "/ws"), None);
        assert_eq!(split_path(&format!("/wsx/{JWT}"), "/ws"), None);
        assert_eq!(split_path(&format!("/a/b/{JWT}"), ""), None);
        assert_eq!(split_path(&format!("/{JWT}/"), ""), None);
        assert_eq!(split_path("/index.html", ""), None);
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
        assert_eq!(route(&request("c2hvcnQ="), ""), Route::BadKey);
        let mut plain_get = request("dGhlIHNhbXBsZSBub25jZQ==");
        plain_get.headers_mut().remove("upgrade");
        assert_eq!(route(&plain_get, ""), Route::Pass);
    }
}
