//! The figures of `PgWsLayer::stats()` and the `metrics` facade after a scripted
//! scenario. One test only: the metrics recorder is global to the process.

mod common;

use std::time::Duration;

use common::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// What changed since the last call: the debugging recorder drains on each read.
struct Deltas(Vec<Row>);

/// A metric's name, labels and change.
type Row = (String, Vec<(String, String)>, f64);

impl Deltas {
    fn take(snapshotter: &Snapshotter) -> Deltas {
        let rows = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, v)| {
                let key = key.key();
                let labels = key
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                let value = match v {
                    DebugValue::Counter(c) => c as f64,
                    DebugValue::Gauge(g) => g.into_inner(),
                    DebugValue::Histogram(_) => 0.0,
                };
                (key.name().to_owned(), labels, value)
            });
        Deltas(rows.collect())
    }

    fn get(&self, name: &str, label: Option<(&str, &str)>) -> f64 {
        self.0
            .iter()
            .filter(|(n, labels, _)| {
                n == name
                    && label.is_none_or(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }
}

async fn until(mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("figure never reached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_scenario_shows_in_stats_and_metrics() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let app = unique("stats_app");
    let uri = format!("{}?application_name={app}", db_uri());
    let server = TestServer::start(config().database_url(uri)).await;
    let layer = &server.layer;
    let chan = unique("stats");
    let mut reader = server
        .connect(&format!("/{}", token(claims("r", Some(&chan)))))
        .await;
    let mut writer = server
        .connect(&format!("/{}", token(claims("w", Some(&chan)))))
        .await;
    until(|| layer.stats().open_sockets == 2).await;
    let s = layer.stats();
    assert!(s.listening);
    assert_eq!((s.open_read_sockets, s.open_write_sockets), (1, 1));
    assert_eq!(s.channels_listened, 1);
    let d = Deltas::take(&snapshotter);
    assert_eq!(d.get("pgws_sockets_open", Some(("mode", "r"))), 1.0);
    assert_eq!(d.get("pgws_sockets_open", Some(("mode", "w"))), 1.0);
    assert_eq!(d.get("pgws_channels_listened", None), 1.0);

    send_text(&mut writer, "hi").await;
    recv_text(&mut reader).await;
    until(|| layer.stats().frames_delivered == 1 && layer.stats().messages_notified == 1).await;
    let s = layer.stats();
    assert_eq!(s.messages_notified, 1);
    assert_eq!(s.notifications_received, 1);
    let d = Deltas::take(&snapshotter);
    assert_eq!(d.get("pgws_messages_notified_total", None), 1.0);
    assert_eq!(d.get("pgws_notifications_received_total", None), 1.0);
    assert_eq!(d.get("pgws_frames_delivered_total", None), 1.0);

    let (status, _) = server
        .handshake(&format!("/{}", token(claims("x", Some(&chan)))))
        .await;
    assert_eq!(status, 403);
    assert_eq!(layer.stats().handshake_refusals, vec![("invalid_mode", 1)]);
    let d = Deltas::take(&snapshotter);
    let reason = Some(("reason", "invalid_mode"));
    assert_eq!(d.get("pgws_handshake_refusals_total", reason), 1.0);

    assert!(terminate_backends(&app).await >= 1);
    assert_eq!(recv_close(&mut reader).await.0, 1012);
    until(|| layer.stats().listener_reconnects == 1 && layer.stats().listening).await;
    let d = Deltas::take(&snapshotter);
    assert_eq!(d.get("pgws_listener_reconnects_total", None), 1.0);
    drop(reader);
    drop(writer);
    until(|| layer.stats().open_sockets == 0).await;
    let d = Deltas::take(&snapshotter);
    assert_eq!(d.get("pgws_sockets_open", Some(("mode", "r"))), -1.0);
    assert_eq!(d.get("pgws_sockets_open", Some(("mode", "w"))), -1.0);
}
