//! A handshake request from arbitrary bytes: path, prefix and token headers.
//! The layer must sort it without panicking, and what it takes must have the
//! shape the contract describes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgws::__bench::{Auth, route_request};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\n');
    let (path, prefix, auth, protocol) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let mut req = http::Request::get("/");
    if let Ok(uri) = http::Uri::try_from(path) {
        req = req.uri(uri);
    }
    req = req
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    if let Ok(v) = http::HeaderValue::from_str(auth) {
        req = req.header("authorization", v);
    }
    if let Ok(v) = http::HeaderValue::from_str(protocol) {
        req = req.header("sec-websocket-protocol", v);
    }
    let Ok(req) = req.body(()) else { return };
    if let Some(Ok((channel, token))) = route_request(&req, prefix) {
        assert_eq!(token.split('.').count(), 3, "a taken token has three parts");
        let _ = authorizer().authorize(channel.as_deref(), &token);
    }
});

fn authorizer() -> &'static Auth {
    static AUTH: std::sync::OnceLock<Auth> = std::sync::OnceLock::new();
    AUTH.get_or_init(|| {
        let config = pgws::Config::builder()
            .jwt_secret("reallyreallyreallyreallyverysafe")
            .build()
            .unwrap();
        Auth::new(&config)
    })
}
