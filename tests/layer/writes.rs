//! Sockets → database (contract sections 4 to 7).

use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_websockets::Message;

fn parse(payload: &str) -> Value {
    serde_json::from_str(payload).unwrap()
}

#[tokio::test]
async fn a_message_becomes_a_notify_with_the_per_channel_envelope() {
    let server = TestServer::start(config()).await;
    let chan = unique("env");
    let mut listen = Listen::start(&chan).await;
    let claims = json!({"mode": "w", "channel": chan, "name": "zoë"});
    let mut ws = server.connect(&format!("/{}", token(claims.clone()))).await;
    send_text(&mut ws, "Hi! ✓").await;
    let (channel, payload) = listen.next().await;
    assert_eq!(channel, chan);
    let expected = format!(
        r#"{{"channel":"{chan}","event":"WebsocketMessage","payload":"Hi! ✓","userClaims":{}}}"#,
        claims
    );
    assert_eq!(payload, expected);
}

#[tokio::test]
async fn a_message_for_several_channels_is_notified_to_each_in_order() {
    let server = TestServer::start(config()).await;
    let (a, b) = (unique("wa"), unique("wb"));
    let mut la = Listen::start(&a).await;
    let mut lb = Listen::start(&b).await;
    let mut ws = server
        .connect(&format!(
            "/{}",
            token(json!({"mode": "w", "channels": [a, b]}))
        ))
        .await;
    send_text(&mut ws, "both").await;
    assert_eq!(parse(&la.next().await.1)["channel"], a.as_str());
    assert_eq!(parse(&lb.next().await.1)["channel"], b.as_str());
}

#[tokio::test]
async fn multiplexed_writes_carry_claims_and_one_delivery_time() {
    let listen = unique("muxw");
    let server = TestServer::start(config().listen_channel(&listen)).await;
    let mut l = Listen::start(&listen).await;
    let (a, b) = (unique("ra"), unique("rb"));
    let t = token(json!({"mode": "w", "channels": [a, b], "sub": "u1"}));
    let mut ws = server.connect(&format!("/{t}")).await;
    send_text(&mut ws, "Hi!").await;
    let (ca, pa) = l.next().await;
    let (cb, pb) = l.next().await;
    assert_eq!(
        (ca.as_str(), cb.as_str()),
        (listen.as_str(), listen.as_str())
    );
    let (pa, pb) = (parse(&pa), parse(&pb));
    assert_eq!(pa["channel"], a.as_str());
    assert_eq!(pb["channel"], b.as_str());
    assert_eq!(pa["event"], "WebsocketMessage");
    assert_eq!(pa["payload"], "Hi!");
    assert_eq!(pa["claims"]["sub"], "u1");
    let at = pa["claims"]["message_delivered_at"].as_f64().unwrap();
    assert!(at > 1.7e9);
    assert_eq!(pb["claims"]["message_delivered_at"].as_f64().unwrap(), at);
}

#[tokio::test]
async fn writes_keep_their_order() {
    let server = TestServer::start(config()).await;
    let chan = unique("order");
    let mut listen = Listen::start(&chan).await;
    let mut ws = server
        .connect(&format!("/{}", token(claims("w", Some(&chan)))))
        .await;
    for i in 0..50 {
        ws.feed(Message::text(i.to_string())).await.unwrap();
    }
    ws.flush().await.unwrap();
    for i in 0..50 {
        assert_eq!(parse(&listen.next().await.1)["payload"], i.to_string());
    }
}

#[tokio::test]
async fn a_reading_writer_receives_its_own_message() {
    let server = TestServer::start(config()).await;
    let chan = unique("echo");
    let mut ws = server
        .connect(&format!("/{}", token(claims("rw", Some(&chan)))))
        .await;
    send_text(&mut ws, "me").await;
    assert_eq!(parse(&recv_text(&mut ws).await)["payload"], "me");
}

#[tokio::test]
async fn binary_frames_with_utf8_are_treated_as_text() {
    let server = TestServer::start(config()).await;
    let chan = unique("bin");
    let mut listen = Listen::start(&chan).await;
    let mut ws = server
        .connect(&format!("/{}", token(claims("w", Some(&chan)))))
        .await;
    ws.send(Message::binary(Bytes::from_static("bïn".as_bytes())))
        .await
        .unwrap();
    assert_eq!(parse(&listen.next().await.1)["payload"], "bïn");
}

#[tokio::test]
async fn a_read_only_socket_may_not_write() {
    let server = TestServer::start(config()).await;
    let chan = unique("ro");
    let mut listen = Listen::start(&chan).await;
    let mut ws = server
        .connect(&format!("/{}", token(claims("r", Some(&chan)))))
        .await;
    send_text(&mut ws, "nope").await;
    let (code, reason) = recv_close(&mut ws).await;
    assert_eq!(code, 1008);
    assert!(reason.starts_with("Write not allowed"), "{reason}");
    assert!(listen.quiet_for(Duration::from_millis(300)).await);
}

#[tokio::test]
async fn invalid_utf8_is_closed_with_1007() {
    let server = TestServer::start(config()).await;
    let chan = unique("utf8");
    let path = format!("/{}", token(claims("w", Some(&chan))));
    let mut ws = server.connect(&path).await;
    ws.send(Message::binary(Bytes::from_static(b"\xff\xfe")))
        .await
        .unwrap();
    let (code, reason) = recv_close(&mut ws).await;
    assert_eq!(code, 1007);
    assert!(reason.starts_with("Invalid UTF-8"), "{reason}");
    // A text frame with invalid UTF-8 is caught by the codec: same code.
    let mut ws = server.connect(&path).await;
    ws.send(Message::text(Bytes::from_static(b"ok\xc3")))
        .await
        .unwrap();
    assert_eq!(recv_close(&mut ws).await.0, 1007);
}

#[tokio::test]
async fn oversized_messages_are_closed_with_1009() {
    let server = TestServer::start(config().max_message_bytes(1000)).await;
    let chan = unique("big");
    let path = format!("/{}", token(claims("w", Some(&chan))));
    let mut ws = server.connect(&path).await;
    send_text(&mut ws, &"x".repeat(1001)).await;
    assert_eq!(recv_close(&mut ws).await.0, 1009);

    let server = TestServer::start(config()).await;
    let mut listen = Listen::start(&chan).await;
    let mut ws = server.connect(&path).await;
    send_text(&mut ws, &"y".repeat(7990)).await;
    let (code, reason) = recv_close(&mut ws).await;
    assert_eq!(code, 1009);
    assert!(reason.starts_with("Message too big"), "{reason}");
    assert!(listen.quiet_for(Duration::from_millis(300)).await);
}

#[tokio::test]
async fn a_message_just_under_the_notify_limit_goes_through() {
    let server = TestServer::start(config()).await;
    let chan = unique("fits");
    let mut listen = Listen::start(&chan).await;
    let t = token(json!({"mode": "w", "channel": chan}));
    let mut ws = server.connect(&format!("/{t}")).await;
    let envelope_len = format!(
        r#"{{"channel":"{chan}","event":"WebsocketMessage","payload":"","userClaims":{{"channel":"{chan}","mode":"w"}}}}"#
    )
    .len();
    let text = "z".repeat(7999 - envelope_len);
    send_text(&mut ws, &text).await;
    assert_eq!(listen.next().await.1.len(), 7999);
}

#[tokio::test]
async fn writes_with_the_database_down_close_with_1013_and_readers_get_503() {
    let down = config()
        .database_url("postgres://postgres@127.0.0.1:1/postgres?connect_timeout=1")
        .subscribe_timeout(Duration::from_millis(300));
    let server = TestServer::start(down).await;
    let chan = unique("down");
    let (status, body) = server
        .handshake(&format!("/{}", token(claims("r", Some(&chan)))))
        .await;
    assert_eq!(status, 503);
    assert!(body.starts_with("Database unavailable"), "{body}");
    let mut ws = server
        .connect(&format!("/{}", token(claims("w", Some(&chan)))))
        .await;
    send_text(&mut ws, "lost?").await;
    let (code, reason) = recv_close(&mut ws).await;
    assert_eq!(code, 1013);
    assert!(reason.starts_with("Database unavailable"), "{reason}");
}

#[tokio::test]
async fn a_write_stuck_on_a_dead_database_closes_with_1013() {
    let hole = crate::common::blackhole::Blackhole::start().await;
    let cfg = config().database_url(format!("postgres://postgres@{}/postgres", hole.addr));
    let server = TestServer::start(cfg).await;
    let chan = unique("stuck");
    let mut listen = Listen::start(&chan).await;
    let mut ws = server
        .connect(&format!("/{}", token(claims("w", Some(&chan)))))
        .await;
    send_text(&mut ws, "before").await;
    assert!(listen.next().await.1.contains("before"));
    hole.stall();
    send_text(&mut ws, "stuck").await;
    let (code, reason) = recv_close(&mut ws).await;
    assert_eq!(code, 1013);
    assert!(reason.starts_with("Database unavailable"), "{reason}");
}

#[tokio::test]
async fn an_expiring_token_closes_the_socket_with_3001() {
    let server = TestServer::start(config()).await;
    let chan = unique("exp");
    let t = token(json!({"mode": "r", "channel": chan, "exp": now() + 2}));
    let mut ws = server.connect(&format!("/{t}")).await;
    let (code, reason) = recv_close(&mut ws).await;
    assert_eq!(code, 3001);
    assert!(reason.starts_with("JWT expired"), "{reason}");
}

#[tokio::test]
async fn a_peer_that_does_not_answer_pings_is_closed_with_1011() {
    let server = TestServer::start(config().ping_interval(Duration::from_secs(1))).await;
    let chan = unique("ping");
    let mut ws = server
        .connect(&format!("/{}", token(claims("r", Some(&chan)))))
        .await;
    // Not polling the socket means not answering its pings.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (code, reason) = recv_close(&mut ws).await;
    assert_eq!(code, 1011);
    assert!(reason.starts_with("Ping timeout"), "{reason}");
    // Its resources go with it: the socket, its subscription and its channel.
    drop(ws);
    for _ in 0..200 {
        let gone = server.layer.stats().open_sockets == 0
            && !server
                .layer
                .listening_channels()
                .await
                .unwrap()
                .contains(&chan);
        if gone {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the socket's resources were not freed");
}

#[tokio::test]
async fn a_peer_that_answers_pings_stays_open() {
    let server = TestServer::start(config().ping_interval(Duration::from_millis(300))).await;
    let chan = unique("pong");
    let mut ws = server
        .connect(&format!("/{}", token(claims("r", Some(&chan)))))
        .await;
    let reader = async {
        // recv_text answers pings while it waits.
        recv_text(&mut ws).await
    };
    let sender = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        notify(&chan, "still here").await;
    };
    let (text, ()) = tokio::join!(reader, sender);
    assert_eq!(text, "still here");
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1001_after_what_was_queued() {
    let server = TestServer::start(config()).await;
    let chan = unique("bye");
    let mut ws = server
        .connect(&format!("/{}", token(claims("r", Some(&chan)))))
        .await;
    notify(&chan, "last words").await;
    // Let the notification reach the socket's queue before shutting down.
    assert_eq!(recv_text(&mut ws).await, "last words");
    let layer = server.layer.clone();
    let shutdown = tokio::spawn(async move { layer.shutdown().await });
    let (code, reason) = recv_close(&mut ws).await;
    assert_eq!(code, 1001);
    assert!(reason.starts_with("Going away"), "{reason}");
    drop(ws);
    shutdown.await.unwrap();
    let (status, _) = server
        .handshake(&format!("/{}", token(claims("r", Some(&chan)))))
        .await;
    assert_eq!(status, 503);
}

#[tokio::test]
async fn meta_channel_announces_open_and_close() {
    let meta = unique("meta");
    let server = TestServer::start(config().meta_channel(&meta)).await;
    let mut l = Listen::start(&meta).await;
    let (a, b) = (unique("ma"), unique("mb"));
    let t = token(json!({"mode": "r", "channels": [a, b], "sub": "u"}));
    let mut ws = server.connect(&format!("/{t}")).await;
    let open = parse(&l.next().await.1);
    assert_eq!(open["channel"], meta.as_str());
    assert_eq!(open["event"], "ConnectionOpen");
    assert_eq!(open["payload"], format!("{a},{b}"));
    // No claim by default: see `meta_events_carry_the_claims_named_and_no_other`.
    assert_eq!(open["userClaims"], json!({}));
    ws.close().await.unwrap();
    let close = parse(&l.next().await.1);
    assert_eq!(close["event"], "ConnectionClose");
    assert_eq!(close["payload"], format!("{a},{b}"));
}

#[tokio::test]
async fn meta_events_use_the_multiplexed_envelope_when_multiplexed() {
    let (listen, meta) = (unique("mmux"), unique("mmeta"));
    let server = TestServer::start(config().listen_channel(&listen).meta_channel(&meta)).await;
    let mut l = Listen::start(&listen).await;
    let chan = unique("mc");
    let _ws = server
        .connect(&format!("/{}", token(claims("w", Some(&chan)))))
        .await;
    let open = parse(&l.next().await.1);
    assert_eq!(open["channel"], meta.as_str());
    assert_eq!(open["event"], "ConnectionOpen");
    assert!(open["claims"]["message_delivered_at"].is_number());
}
