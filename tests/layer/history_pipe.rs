//! The listener's pipe of store work: what it does to a channel whose readers left
//! and came back while a fetch for it was still on its way (found by the delivery
//! hunter, tests/hunt).

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;

use crate::common::*;
use crate::history::{Schema, history_server_with};

/// A fetched message of a channel that emptied while the fetch waited, applied
/// once a new reader joined and before its baseline, is older than that reader's
/// `101`. Delivered, it became the channel's last position: the next message
/// then looked like one after a hole, and the catch-up for it came after plain
/// notifications committed later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_that_outlived_its_readers_does_not_reorder_the_next_ones() {
    let schema = Schema::new();
    let (h, blocker, plain) = (unique("pipe_h"), unique("pipe_hb"), unique("pipe_p"));
    // One pool connection: a write stuck on a row lock holds every store read back.
    let cfg = config().history(format!("{h},{blocker}")).pool_size(1);
    let server = history_server_with(&schema, cfg).await;
    let q = schema.q();
    let db = db().await;
    let publish = format!("select {q}.publish($1, $2)");
    for (channel, payload) in [(&blocker, "first"), (&h, "h1")] {
        db.execute(&publish, &[channel, &payload]).await.unwrap();
    }
    let reader = |channels: Vec<&String>| token(json!({"mode": "r", "channels": channels}));
    let mut first = server.connect(&format!("/{}", reader(vec![&h]))).await;
    db.execute(&publish, &[&h, &"h2"]).await.unwrap();
    // h1 may come too: it was committed just before the 101.
    let mut seen = recv_text(&mut first).await;
    if seen == "h1" {
        seen = recv_text(&mut first).await;
    }
    assert_eq!(seen, "h2");

    let (locker, _writer) = hold_the_pool(&server, &schema, &blocker).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // h3's fetch waits for the pool; its only reader leaves meanwhile, and h4 is
    // announced while the channel has none.
    db.execute(&publish, &[&h, &"h3"]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(first);
    wait_for(|| server.layer.stats().open_read_sockets == 0).await;
    db.execute(&publish, &[&h, &"h4"]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A new reader of h and a plain channel: held until h's baseline is read,
    // which waits behind h3's fetch.
    let path = format!("/{}", reader(vec![&h, &plain]));
    let url = server.url(&path);
    let joining = tokio::spawn(async move {
        let uri: http::Uri = url.parse().unwrap();
        tokio_websockets::ClientBuilder::from_uri(uri)
            .connect()
            .await
            .unwrap()
            .0
    });
    wait_for(|| server.layer.stats().pending_joins == 1).await;
    locker.batch_execute("commit").await.unwrap();
    let mut second = tokio::time::timeout(WAIT, joining).await.unwrap().unwrap();

    // After its 101: a plain notification, then a stored message.
    notify(&plain, "p1").await;
    db.execute(&publish, &[&h, &"h5"]).await.unwrap();
    let mut got = Vec::new();
    while got.last().map(String::as_str) != Some("h5") {
        let msg = tokio::time::timeout(WAIT, second.next()).await.unwrap();
        let msg = msg.unwrap().unwrap();
        got.extend(msg.as_text().map(str::to_owned));
        assert!(got.len() < 10, "{got:?}");
    }
    // h3 and h4 were committed before this socket's 101: they may come first, but
    // never after p1.
    let p1 = got.iter().position(|m| m == "p1").unwrap();
    assert!(
        got[p1..] == ["p1", "h5"],
        "committed before the 101, delivered after a later notification: {got:?}"
    );
}

/// Holds a server's only pool connection: a socket's message to `blocker` waits
/// for the channel's row, which the returned client's open transaction holds
/// until it commits. The writer must outlive the hold.
async fn hold_the_pool(
    server: &TestServer,
    schema: &Schema,
    blocker: &str,
) -> (tokio_postgres::Client, Ws) {
    let locker = crate::common::db().await;
    let lock = format!(
        "begin; select 1 from {}.channels where channel = {} for update",
        schema.q(),
        postgres_protocol::escape::escape_literal(blocker)
    );
    locker.batch_execute(&lock).await.unwrap();
    let w = token(json!({"mode": "w", "channel": blocker}));
    let mut writer = server.connect(&format!("/{w}")).await;
    send_text(&mut writer, "stuck").await;
    (locker, writer)
}

async fn wait_for(mut ok: impl FnMut() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("never happened");
}

/// While more announced messages wait for the store than the listener takes at
/// once, it stops reading its connection, and so its own queries wait too: its
/// liveness probe must not take that for a dead connection (it closed every
/// plain reader with `1012`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_waits_for_the_store_is_not_taken_for_dead() {
    const BACKLOG: i32 = 1500;
    let schema = Schema::new();
    let (h, blocker, plain) = (unique("pipe_h"), unique("pipe_hb"), unique("pipe_p"));
    let cfg = config()
        .history(format!("{h},{blocker}"))
        .pool_size(1)
        .check_listener_interval(Duration::from_millis(200));
    let server = history_server_with(&schema, cfg).await;
    let q = schema.q();
    let db = db().await;
    let publish = format!("select {q}.publish($1, $2)");
    db.execute(&publish, &[&blocker, &"first"]).await.unwrap();
    let reader = token(json!({"mode": "r", "channels": [&h, &plain]}));
    let mut ws = server.connect(&format!("/{reader}")).await;

    // Store reads wait behind the stuck write, for longer than a probe.
    let (locker, _writer) = hold_the_pool(&server, &schema, &blocker).await;
    let many = format!("select count({q}.publish($1, 'm' || g)) from generate_series(1, $2) g");
    db.execute(&many, &[&h, &BACKLOG]).await.unwrap();
    notify(&plain, "after the backlog").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    locker.batch_execute("commit").await.unwrap();

    for g in 1..=BACKLOG {
        assert_eq!(recv_text(&mut ws).await, format!("m{g}"));
    }
    assert_eq!(recv_text(&mut ws).await, "after the backlog");
    assert_eq!(server.layer.stats().listener_reconnects, 0);
}
