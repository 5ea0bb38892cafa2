//! Thousands of channels come and go; a flood to a client that never reads keeps
//! the server's memory bounded.

use std::time::Duration;

use crate::common::*;
use serde_json::json;

async fn listened_with_prefix(server: &TestServer, prefix: &str) -> usize {
    let all = server.layer.listening_channels().await.unwrap();
    all.iter().filter(|c| c.starts_with(prefix)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_channels_are_listened_and_all_unlistened() {
    let server = TestServer::start(config()).await;
    let prefix = unique("many");
    let mut sockets = Vec::new();
    for s in 0..30 {
        let channels: Vec<String> = (0..100).map(|c| format!("{prefix}_{s}_{c}")).collect();
        let t = token(json!({"mode": "r", "channels": channels}));
        sockets.push(server.connect(&format!("/{t}")).await);
    }
    assert_eq!(listened_with_prefix(&server, &prefix).await, 3000);
    notify(&format!("{prefix}_29_99"), "last").await;
    assert_eq!(recv_text(sockets.last_mut().unwrap()).await, "last");

    // Churn: half leave, the same channels come back on new sockets, all leave.
    sockets.truncate(15);
    for s in 15..30 {
        let channels: Vec<String> = (0..100).map(|c| format!("{prefix}_{s}_{c}")).collect();
        let t = token(json!({"mode": "r", "channels": channels}));
        sockets.push(server.connect(&format!("/{t}")).await);
    }
    assert_eq!(listened_with_prefix(&server, &prefix).await, 3000);
    sockets.clear();
    for _ in 0..200 {
        if listened_with_prefix(&server, &prefix).await == 0 {
            assert_eq!(server.layer.stats().open_sockets, 0);
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("channels left listened after their last reader left");
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_costs_a_bounded_amount_of_memory() {
    let server = TestServer::start(config()).await;
    let chan = unique("flood");
    let _slow = server
        .connect(&format!("/{}", token(claims("r", Some(&chan)))))
        .await;
    let before = rss_bytes();
    // 20,000 notifications of 7 KB: 140 MB, far more than the queue may hold
    // (1024 frames) plus the socket buffers.
    let db = db().await;
    db.execute(
        "select pg_notify($1, repeat('x', 7000) || g) from generate_series(1, 20000) g",
        &[&chan],
    )
    .await
    .unwrap();
    // Measure once the listener has taken in the whole flood.
    for _ in 0..600 {
        if server.layer.stats().notifications_received == 20_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = server.layer.stats();
    assert_eq!(stats.notifications_received, 20_000);
    assert_eq!(stats.slow_consumer_closes, 1);
    let grown = rss_bytes().saturating_sub(before);
    assert!(grown < 64 << 20, "RSS grew by {} MiB", grown >> 20);
}
