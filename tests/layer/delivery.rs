//! Database → sockets (contract sections 3 to 5).

use std::time::Duration;

use crate::common::*;
use serde_json::json;

#[tokio::test]
async fn notify_reaches_a_reader_unchanged() {
    let server = TestServer::start(config()).await;
    let chan = unique("deliver");
    let mut ws = server
        .connect(&format!("/{}", token(claims("r", Some(&chan)))))
        .await;
    notify(&chan, "héllo {\"x\":1}").await;
    assert_eq!(recv_text(&mut ws).await, "héllo {\"x\":1}");
}

#[tokio::test]
async fn a_notify_right_after_the_handshake_is_delivered() {
    // Subscribe before accept: the 101 means the channel is already listened to.
    let server = TestServer::start(config()).await;
    for i in 0..20 {
        let chan = unique("sba");
        let mut ws = server
            .connect(&format!("/{}", token(claims("r", Some(&chan)))))
            .await;
        notify(&chan, &format!("n{i}")).await;
        assert_eq!(recv_text(&mut ws).await, format!("n{i}"));
    }
}

#[tokio::test]
async fn every_reader_of_a_channel_gets_every_notification_in_order() {
    let server = TestServer::start(config()).await;
    let chan = unique("fanout");
    let path = format!("/{}", token(claims("r", Some(&chan))));
    let mut a = server.connect(&path).await;
    let mut b = server.connect(&path).await;
    let db = db().await;
    for i in 0..100 {
        db.execute("select pg_notify($1, $2)", &[&chan, &i.to_string()])
            .await
            .unwrap();
    }
    for ws in [&mut a, &mut b] {
        for i in 0..100 {
            assert_eq!(recv_text(ws).await, i.to_string());
        }
    }
}

#[tokio::test]
async fn a_token_with_channels_reads_each_of_them() {
    let server = TestServer::start(config()).await;
    let (one, two) = (unique("multi_a"), unique("multi_b"));
    let t = token(json!({"mode": "r", "channels": [one, two]}));
    let mut ws = server.connect(&format!("/{t}")).await;
    notify(&two, "to two").await;
    assert_eq!(recv_text(&mut ws).await, "to two");
    notify(&one, "to one").await;
    assert_eq!(recv_text(&mut ws).await, "to one");
}

#[tokio::test]
async fn a_path_channel_narrows_the_claimed_channels() {
    let server = TestServer::start(config()).await;
    let (one, two) = (unique("narrow_a"), unique("narrow_b"));
    let t = token(json!({"mode": "r", "channels": [one, two]}));
    let mut ws = server.connect(&format!("/{two}/{t}")).await;
    notify(&one, "not for you").await;
    notify(&two, "for you").await;
    assert_eq!(recv_text(&mut ws).await, "for you");
}

#[tokio::test]
async fn other_channels_do_not_leak_in() {
    let server = TestServer::start(config()).await;
    let (mine, other) = (unique("mine"), unique("other"));
    let mut ws = server
        .connect(&format!("/{}", token(claims("r", Some(&mine)))))
        .await;
    let _other = server
        .connect(&format!("/{}", token(claims("r", Some(&other)))))
        .await;
    notify(&other, "other").await;
    notify(&mine, "mine").await;
    assert_eq!(recv_text(&mut ws).await, "mine");
}

#[tokio::test]
async fn a_channel_is_unlistened_when_its_last_reader_leaves() {
    let server = TestServer::start(config()).await;
    let chan = unique("unlisten");
    let path = format!("/{}", token(claims("r", Some(&chan))));
    let a = server.connect(&path).await;
    let b = server.connect(&path).await;
    assert!(listening(&server).await.contains(&chan));
    drop(a);
    // One reader left: still listened to after the first socket's leave is processed.
    let probe = unique("probe");
    let probe_ws = server
        .connect(&format!("/{}", token(claims("r", Some(&probe)))))
        .await;
    assert!(listening(&server).await.contains(&chan));
    drop(b);
    drop(probe_ws);
    wait_until(|| async { !listening(&server).await.contains(&chan) }).await;
}

#[tokio::test]
async fn multiplexed_mapping_routes_by_the_payload_channel() {
    let listen = unique("mux");
    let server = TestServer::start(config().listen_channel(&listen)).await;
    let chan = unique("room");
    let mut room = server
        .connect(&format!("/{}", token(claims("r", Some(&chan)))))
        .await;
    let mut fallback = server
        .connect(&format!("/{}", token(claims("r", Some(&listen)))))
        .await;
    let routed = json!({"channel": chan, "event": "x", "payload": "hi"}).to_string();
    notify(&listen, &routed).await;
    assert_eq!(recv_text(&mut room).await, routed);
    notify(&listen, "not json").await;
    notify(&listen, r#"{"channel": 5}"#).await;
    assert_eq!(recv_text(&mut fallback).await, "not json");
    assert_eq!(recv_text(&mut fallback).await, r#"{"channel": 5}"#);
    // A NOTIFY straight on the room's name is not listened to in this mapping.
    notify(&chan, "direct").await;
    notify(&listen, &routed).await;
    assert_eq!(recv_text(&mut room).await, routed);
}

#[tokio::test]
async fn a_slow_consumer_is_closed_and_the_others_get_everything() {
    // The default queue (1024) leaves a busy CI machine's fast reader plenty of room.
    let server = TestServer::start(config()).await;
    let chan = unique("slow");
    let path = format!("/{}", token(claims("r", Some(&chan))));
    let mut slow = server.connect(&path).await;
    let mut fast = server.connect(&path).await;
    let payload = "x".repeat(7000);
    let db = db().await;
    // More than the slow socket's queue and kernel buffers can hold.
    let total = 5000;
    let reader = tokio::spawn(async move {
        for i in 0..total {
            let text = recv_text(&mut fast).await;
            assert!(text.starts_with(&format!("{i}:")), "out of order at {i}");
        }
    });
    let flood = tokio::spawn(async move {
        for i in 0..total {
            let msg = format!("{i}:{payload}");
            db.execute("select pg_notify($1, $2)", &[&chan, &msg])
                .await
                .unwrap();
        }
    });
    // Once it is let go, the slow client catches up and finds the close frame
    // (the server waits 5 s for that before it drops the connection).
    for _ in 0..1200 {
        if server.layer.stats().slow_consumer_closes == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let (code, reason) = recv_close(&mut slow).await;
    assert_eq!(code, 1008);
    assert!(reason.starts_with("Slow consumer"), "{reason}");
    flood.await.unwrap();
    reader.await.unwrap();
    assert_eq!(server.layer.stats().slow_consumer_closes, 1);
}

async fn listening(server: &TestServer) -> Vec<String> {
    server
        .layer
        .listening_channels()
        .await
        .expect("listener connected")
}

async fn wait_until<F, Fut>(mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not reached");
}

/// More notifications than the listener handles in one go, committed together so
/// that they arrive in a few reads: none of them may be dropped between rounds.
#[tokio::test]
async fn a_transaction_of_thousands_of_notifications_arrives_whole() {
    const N: i32 = 3000;
    let server = TestServer::start(config()).await;
    let chan = unique("burst");
    let path = format!("/{}", token(claims("r", Some(&chan))));
    let mut readers = Vec::new();
    for _ in 0..3 {
        readers.push(server.connect(&path).await);
    }
    db().await
        .execute(
            "select count(pg_notify($1, g::text)) from generate_series(1, $2) g",
            &[&chan, &N],
        )
        .await
        .unwrap();
    for ws in &mut readers {
        for i in 1..=N {
            assert_eq!(
                recv_text(ws).await,
                i.to_string(),
                "notification {i} of {N}"
            );
        }
    }
}
