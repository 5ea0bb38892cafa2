//! Hostile names and tokens end to end.

use crate::common::*;
use serde_json::json;

fn encode(channel: &str) -> String {
    percent_encoding::utf8_percent_encode(channel, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[tokio::test]
async fn odd_channel_names_are_listened_notified_and_unlistened_exactly() {
    let server = TestServer::start(config()).await;
    let base = unique("odd");
    let names = [
        format!("{base}\"quote"),
        format!("{base}'apos"),
        format!("{base}; DROP TABLE x; --"),
        format!("{base}.dots.in.it"),
        format!("{base} chät 🦀"),
        format!("{base}UPPER"),
        format!("{base}\\back"),
        format!("{base}/slash"),
    ];
    for name in &names {
        let path = format!("/{}/{}", encode(name), token(claims("r", None)));
        let mut ws = server.connect(&path).await;
        notify(name, "odd").await;
        assert_eq!(recv_text(&mut ws).await, "odd", "channel {name:?}");
        // The same name folded to lower case is another channel.
        if name.ends_with("UPPER") {
            notify(&name.to_lowercase(), "folded").await;
            notify(name, "exact").await;
            assert_eq!(recv_text(&mut ws).await, "exact");
        }
    }
    // Every name was UNLISTENed, quoted exactly, once its socket left.
    for _ in 0..200 {
        let listened = server.layer.listening_channels().await.unwrap();
        if listened.iter().all(|c| !c.starts_with(&base)) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("some odd channel stayed listened");
}

#[tokio::test]
async fn channel_names_at_and_over_the_identifier_limit() {
    let server = TestServer::start(config()).await;
    let prefix = unique("len");
    // 63 bytes, ending in a 2-byte character.
    let fits = format!("{prefix}{}", "é".repeat((63 - prefix.len()) / 2));
    let fits = format!("{fits}{}", "x".repeat(63 - fits.len()));
    assert_eq!(fits.len(), 63);
    let mut ws = server
        .connect(&format!("/{}/{}", encode(&fits), token(claims("r", None))))
        .await;
    notify(&fits, "63").await;
    assert_eq!(recv_text(&mut ws).await, "63");
    let over = format!("{fits}y");
    let (status, body) = server
        .handshake(&format!("/{}/{}", encode(&over), token(claims("r", None))))
        .await;
    assert_eq!(status, 400);
    assert!(body.starts_with("Invalid channel name"));
    let nul = token(json!({"mode": "r", "channel": "a\u{0}b"}));
    assert_eq!(server.handshake(&format!("/{nul}")).await.0, 400);
}

#[tokio::test]
async fn forged_and_confused_tokens_are_refused() {
    let server = TestServer::start(config()).await;
    let chan = unique("forged");
    let b64 = |v: serde_json::Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let claims = b64(json!({"mode": "rw", "channel": chan}));
    let none = format!("{}.{claims}.", b64(json!({"alg": "none", "typ": "JWT"})));
    let rs = format!("{}.{claims}.c2ln", b64(json!({"alg": "RS256"})));
    let huge_header = format!(
        "{}.{claims}.c2ln",
        b64(json!({"alg": "HS256", "x": "h".repeat(20_000)}))
    );
    for t in [none, rs, huge_header] {
        let (status, body) = server.handshake(&format!("/{t}")).await;
        assert_eq!(status, 401, "{body}");
        assert!(body.starts_with("Invalid token"), "{body}");
    }
}
