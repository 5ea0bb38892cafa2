//! Meta events under load: `ConnectionOpen` always before `ConnectionClose`, and
//! meta traffic never takes the write pool from client messages (contract §7).

use std::{collections::HashMap, sync::Arc, time::Duration};

use crate::common::*;
use futures_util::{SinkExt, future::join_all};
use serde_json::{Value, json};

fn parse(payload: &str) -> Value {
    serde_json::from_str(payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_is_published_before_close_for_sockets_that_close_at_once() {
    const SOCKETS: usize = 200;
    let meta = unique("meta_order");
    let mut l = Listen::start(&meta).await;
    let cfg = config().meta_channel(&meta).meta_claims("sub").pool_size(4);
    let server = Arc::new(TestServer::start(cfg).await);
    let chan = unique("mo");
    let opened = join_all((0..SOCKETS).map(|i| {
        let server = server.clone();
        let t = token(json!({"mode": "w", "channel": chan, "sub": i.to_string()}));
        tokio::spawn(async move {
            let mut ws = server.connect(&format!("/{t}")).await;
            ws.close().await.unwrap();
        })
    }))
    .await;
    assert!(opened.into_iter().all(|r| r.is_ok()));
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    for _ in 0..2 * SOCKETS {
        let event = parse(&l.next().await.1);
        let sub = event["userClaims"]["sub"].as_str().unwrap().to_owned();
        seen.entry(sub)
            .or_default()
            .push(event["event"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen.len(), SOCKETS);
    for (sub, events) in &seen {
        assert_eq!(
            events,
            &["ConnectionOpen", "ConnectionClose"],
            "socket {sub}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_sockets_does_not_starve_client_writes() {
    const BURST: usize = 300;
    const MESSAGES: usize = 10;
    // A database 200 ms away (round trip): 300 meta events one at a time on a pool
    // of 2 would hold it for 30 s, far longer than a write waits for a connection.
    let far = latency::Latency::start(Duration::from_millis(100)).await;
    let meta = unique("meta_burst");
    let chan = unique("mb");
    let mut l = Listen::start(&chan).await;
    let cfg = config()
        .database_url(far.uri())
        .meta_channel(&meta)
        .pool_size(2);
    let server = Arc::new(TestServer::start(cfg).await);
    let mut writer = server
        .connect(&format!("/{}", token(claims("w", Some(&chan)))))
        .await;
    let burst_path = format!("/{}", token(claims("w", Some(&unique("mb_other")))));
    let burst = join_all((0..BURST).map(|_| {
        let (server, path) = (server.clone(), burst_path.clone());
        tokio::spawn(async move { server.connect(&path).await })
    }))
    .await;
    assert!(burst.iter().all(|s| s.is_ok()));
    for i in 0..MESSAGES {
        send_text(&mut writer, &format!("message {i}")).await;
        let (_, payload) = l.next().await;

        assert_eq!(parse(&payload)["payload"], format!("message {i}"));
    }
    // Committed, and answered: the socket counts each message once the NOTIFY returns.
    for _ in 0..200 {
        if server.layer.stats().messages_notified == MESSAGES as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = server.layer.stats();
    assert_eq!(
        (stats.messages_notified, stats.notify_failures),
        (MESSAGES as u64, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn like_sockets_each_get_their_own_event() {
    // Same token, same channels: identical payloads, which PostgreSQL would fold
    // into one if they shared a transaction.
    const SOCKETS: usize = 40;
    let meta = unique("meta_like");
    let mut l = Listen::start(&meta).await;
    let server = Arc::new(TestServer::start(config().meta_channel(&meta)).await);
    let path = format!("/{}", token(json!({"mode": "w", "channel": unique("ml")})));
    let sockets = join_all((0..SOCKETS).map(|_| {
        let (server, path) = (server.clone(), path.clone());
        tokio::spawn(async move { server.connect(&path).await })
    }))
    .await;
    assert!(sockets.iter().all(|s| s.is_ok()));
    for _ in 0..SOCKETS {
        assert_eq!(parse(&l.next().await.1)["event"], "ConnectionOpen");
    }
    assert_eq!(server.layer.stats().meta_failures, 0);
}

/// What a socket reading the meta channel learns of another socket's token: no
/// claim by default, the named ones when `meta_claims` names some, every claim
/// with `*`. In both mappings.
#[tokio::test]
async fn meta_events_carry_the_claims_named_and_no_other() {
    let claims = json!({
        "mode": "w",
        "channel": unique("mcl"),
        "sub": "42",
        "email": "alice@example.com",
        "role": "admin",
    });
    let only = |names: &[&str]| {
        let kept: serde_json::Map<String, Value> = claims
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| names.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Value::Object(kept)
    };
    let cases = [
        (None, json!({})),
        (Some(" sub, name"), only(&["sub"])),
        (Some("sub,email"), only(&["sub", "email"])),
        (Some("*"), claims.clone()),
    ];
    for (setting, expected) in cases {
        for multiplexed in [false, true] {
            let meta = unique("meta_claims");
            let mut cfg = config().meta_channel(&meta);
            if multiplexed {
                cfg = cfg.listen_channel(unique("mcl_listen"));
            }
            if let Some(names) = setting {
                cfg = cfg.meta_claims(names);
            }
            let server = TestServer::start(cfg).await;
            let mut reader = server
                .connect(&format!("/{}", token(claims_for_reader(&meta))))
                .await;
            // The reader's own ConnectionOpen comes first.
            let own = parse(&recv_text(&mut reader).await);
            assert_eq!(own["event"], "ConnectionOpen");
            let mut other = server.connect(&format!("/{}", token(claims.clone()))).await;
            let open = parse(&recv_text(&mut reader).await);
            assert_eq!(open["event"], "ConnectionOpen", "{open}");
            assert_eq!(open["payload"], claims["channel"], "{open}");
            let mut got = if multiplexed {
                open["claims"].clone()
            } else {
                open["userClaims"].clone()
            };
            if multiplexed {
                let at = got.as_object_mut().unwrap().remove("message_delivered_at");
                assert!(at.is_some_and(|t| t.is_number()), "{open}");
            }
            assert_eq!(got, expected, "{setting:?}, multiplexed {multiplexed}");
            other.close().await.unwrap();
            let close = parse(&recv_text(&mut reader).await);
            assert_eq!(close["event"], "ConnectionClose", "{close}");
            let text = close.to_string();
            assert_eq!(
                text.contains("alice@example.com"),
                expected.get("email").is_some(),
                "{text}"
            );
        }
    }
}

/// A socket that reads the meta channel (in the multiplexed mapping too: the
/// envelope names the meta channel).
fn claims_for_reader(meta: &str) -> Value {
    json!({"mode": "r", "channel": meta})
}
