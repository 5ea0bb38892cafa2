//! History replays under the replay budget (`PGWS_REPLAY_BUDGET`) and queues
//! bounded by bytes (`PGWS_QUEUE_BYTES`), against clients that never read: a
//! replay waits for the budget they hold (it is not refused), and gets every
//! message in order once they are let go.

use std::time::Duration;

use serde_json::Value;

use crate::common::{stalled::*, *};
use crate::history::{Schema, history_server_with};

/// Stored messages of 65,000 `"`: the JSON of a replayed frame doubles them,
/// so 100 of them (13 MB) are far more than the socket buffers of a client
/// that never reads.
const MESSAGES: usize = 100;
const QUOTES: usize = 65_000;

/// A server with history on `replay_*`, a budget of one page and pings (and so
/// write deadlines) every 2 s.
async fn server(schema: &Schema) -> TestServer {
    let builder = config()
        .history("replay_*")
        .replay_budget(1 << 20)
        .ping_interval(Duration::from_secs(2));
    history_server_with(schema, builder).await
}

/// [`MESSAGES`] large messages on `chan`, from SQL in one statement.
async fn publish_large(schema: &Schema, chan: &str) {
    let sql = format!(
        "select {}.publish($1, repeat('\"', {QUOTES})) from generate_series(1, {MESSAGES})",
        schema.q()
    );
    db().await.execute(&sql, &[&chan]).await.unwrap();
}

fn history_path(chan: &str) -> String {
    format!("/{}?history={MESSAGES}", token(claims("r", Some(chan))))
}

/// Waits until the replays in progress are stuck: nothing delivered for 300 ms.
async fn until_stuck(server: &TestServer) {
    let mut last = server.layer.stats().frames_delivered;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = server.layer.stats().frames_delivered;
        if now == last && now > 0 {
            return;
        }
        last = now;
    }
    panic!("the replay never got stuck");
}

/// Reads the whole replay: every message, in order, whole. `first` checks the
/// server's figures when the first one comes.
async fn read_everything(ws: &mut Ws, first: impl FnOnce()) {
    let mut first = Some(first);
    for offset in 1..=MESSAGES as i64 {
        // Waits for the budget: up to a ping interval and the close timeout.
        let text = tokio::time::timeout(WAIT * 2, recv_text(ws))
            .await
            .expect("the replay never came");
        if let Some(first) = first.take() {
            first();
        }
        let frame: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(frame["offset"], offset, "{}", &text[..100]);
        let payload = frame["payload"].as_str().unwrap();
        assert_eq!(payload.len(), QUOTES);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_waits_for_the_budget_a_socket_that_never_reads_holds() {
    let schema = Schema::new();
    let server = server(&schema).await;
    let chan = unique("replay_ws");
    publish_large(&schema, &chan).await;
    let _hog = socket_that_never_reads(server.addr, &history_path(&chan)).await;
    until_stuck(&server).await;
    // Accepted at once, then its replay waits for the hog's page.
    let mut reader = server.connect(&history_path(&chan)).await;
    read_everything(&mut reader, || {
        assert_eq!(
            server.layer.stats().open_sockets,
            1,
            "the replay did not wait for the budget"
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_waits_for_the_budget_a_stream_that_never_reads_holds() {
    let schema = Schema::new();
    let server = server(&schema).await;
    let chan = unique("replay_sse");
    publish_large(&schema, &chan).await;
    let _hog = stream_that_never_reads(server.addr, &history_path(&chan)).await;
    until_stuck(&server).await;
    // The stream's page goes back at its deadline: it is let go as a slow
    // consumer, though its connection takes nothing more.
    let mut reader = server.connect(&history_path(&chan)).await;
    read_everything(&mut reader, || {
        assert_eq!(
            server.layer.stats().slow_consumer_closes,
            1,
            "the replay did not wait for the budget"
        )
    })
    .await;
    assert_eq!(server.layer.stats().open_event_streams, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_is_bounded_by_its_bytes_as_well_as_its_length() {
    let server = TestServer::start(config().queue_length(4096).queue_bytes(1 << 20)).await;
    let chan = unique("qbytes");
    let mut slow = server
        .connect(&format!("/{}", token(claims("r", Some(&chan)))))
        .await;
    // 2000 notifications of 7 KB: within the queue's length, but 14 MB, far more
    // than its bytes plus the socket buffers.
    db().await
        .execute(
            "select pg_notify($1, repeat('x', 7000) || g) from generate_series(1, 2000) g",
            &[&chan],
        )
        .await
        .unwrap();
    for _ in 0..400 {
        if server.layer.stats().slow_consumer_closes == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(server.layer.stats().slow_consumer_closes, 1);
    // Reading again: what was written before, then the close.
    let (code, reason) = recv_close(&mut slow).await;
    assert_eq!(code, 1008);
    assert!(reason.starts_with("Slow consumer"), "{reason}");
}
