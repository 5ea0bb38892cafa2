//! The listener connection: loss, 1012, reconnect and re-subscribe (contract §5, §6).

use std::time::Duration;

use crate::common::*;

/// A config whose connections carry a unique application_name, so this test can
/// kill its own listener without touching other tests' connections.
fn tagged() -> (pgws::ConfigBuilder, String) {
    let app = unique("pgws_app");
    let sep = if db_uri().contains('?') { '&' } else { '?' };
    let uri = format!("{}{sep}application_name={app}", db_uri());
    (config().database_url(uri), app)
}

#[tokio::test]
async fn losing_the_listener_closes_readers_with_1012_and_it_comes_back() {
    let (cfg, app) = tagged();
    let server = TestServer::start(cfg).await;
    let chan = unique("loss");
    let path = format!("/{}", token(claims("r", Some(&chan))));
    let mut reader = server.connect(&path).await;
    let mut writer = server
        .connect(&format!("/{}", token(claims("w", Some(&chan)))))
        .await;
    assert!(terminate_backends(&app).await >= 1);
    let (code, reason) = recv_close(&mut reader).await;
    assert_eq!(code, 1012);
    assert!(reason.starts_with("Listener restarted"), "{reason}");

    // A new socket is accepted once the listener is back, and receives again.
    let mut again = server.connect(&path).await;
    notify(&chan, "back").await;
    assert_eq!(recv_text(&mut again).await, "back");
    assert!(server.layer.is_listening());
    assert!(
        server
            .layer
            .listening_channels()
            .await
            .unwrap()
            .contains(&chan)
    );

    // Write-only sockets need no listener and are not closed by its loss.
    send_text(&mut writer, "still writing").await;
    let payload = recv_text(&mut again).await;
    assert!(payload.contains("still writing"), "{payload}");
}

#[tokio::test]
async fn channels_are_listened_again_after_a_reconnect() {
    let (cfg, app) = tagged();
    let server = TestServer::start(cfg).await;
    let (a, b) = (unique("re_a"), unique("re_b"));
    let _a = server
        .connect(&format!("/{}", token(claims("r", Some(&a)))))
        .await;
    terminate_backends(&app).await;
    let mut b_ws = server
        .connect(&format!("/{}", token(claims("r", Some(&b)))))
        .await;
    notify(&b, "b after reconnect").await;
    assert_eq!(recv_text(&mut b_ws).await, "b after reconnect");
    // `a`'s socket was closed with 1012, so `a` is no longer listened to.
    for _ in 0..100 {
        let chans = server.layer.listening_channels().await.unwrap_or_default();
        if chans.contains(&b) && !chans.contains(&a) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("listened channels never settled");
}

#[tokio::test]
async fn the_liveness_probe_notices_a_silently_dead_connection() {
    // A forwarder that stops passing bytes without closing: no error ever reaches
    // the listener, only its probe can tell.
    let hole = crate::common::blackhole::Blackhole::start().await;
    let cfg = config()
        .database_url(format!("postgres://postgres@{}/postgres", hole.addr))
        .check_listener_interval(Duration::from_millis(300));
    let server = TestServer::start(cfg).await;
    let chan = unique("probe");
    let mut ws = server
        .connect(&format!("/{}", token(claims("r", Some(&chan)))))
        .await;
    hole.stall();
    let (code, _) = recv_close(&mut ws).await;
    assert_eq!(code, 1012);
}

#[tokio::test]
async fn readiness_follows_the_listener_through_an_outage() {
    let hole = crate::common::blackhole::Blackhole::start().await;
    let uri = format!(
        "postgres://postgres@{}/postgres?connect_timeout=1",
        hole.addr
    );
    let cfg = config()
        .database_url(uri)
        .check_listener_interval(Duration::from_millis(300));
    let server = TestServer::start(cfg).await;
    let chan = unique("outage");
    let path = format!("/{}", token(claims("r", Some(&chan))));
    let _ws = server.connect(&path).await;
    assert!(server.layer.is_listening());
    hole.stall();
    until(|| !server.layer.is_listening()).await;
    hole.resume();
    until(|| server.layer.is_listening()).await;
    let mut ws = server.connect(&path).await;
    notify(&chan, "after the outage").await;
    assert_eq!(recv_text(&mut ws).await, "after the outage");
}

#[tokio::test]
async fn handshakes_that_time_out_during_an_outage_leave_nothing_behind() {
    // Nothing listens on this port: the listener keeps failing to connect.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = config()
        .database_url(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
        .subscribe_timeout(Duration::from_millis(1000));
    let server = std::sync::Arc::new(TestServer::start(cfg).await);
    let path = format!("/{}", token(claims("r", Some(&unique("outage_joins")))));
    let handshakes: Vec<_> = (0..200)
        .map(|_| {
            let (server, path) = (server.clone(), path.clone());
            tokio::spawn(async move { server.handshake(&path).await })
        })
        .collect();
    until(|| server.layer.stats().pending_joins > 0).await;
    for h in handshakes {
        let (status, body) = h.await.unwrap();
        assert_eq!(
            (status.as_u16(), body.as_str()),
            (503, "Database unavailable")
        );
    }
    // Each gave up; none may stay queued for a reconnect that may never come.
    until(|| server.layer.stats().pending_joins == 0).await;
    assert!(!server.layer.is_listening());
}

#[tokio::test]
async fn listening_channels_gives_up_on_a_listener_that_does_not_answer() {
    let hole = crate::common::blackhole::Blackhole::start().await;
    // No probe: the listener keeps believing in its connection.
    let cfg = config()
        .database_url(format!("postgres://postgres@{}/postgres", hole.addr))
        .check_listener_interval(Duration::ZERO);
    let server = TestServer::start(cfg).await;
    until(|| server.layer.is_listening()).await;
    hole.stall();
    let answer = tokio::time::timeout(Duration::from_secs(30), server.layer.listening_channels())
        .await
        .expect("listening_channels() never returned");
    assert_eq!(answer, None);
    assert!(server.layer.is_listening());
}

async fn until(mut cond: impl FnMut() -> bool) {
    for _ in 0..400 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("state never reached");
}
