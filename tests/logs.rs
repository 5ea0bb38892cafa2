//! Logs never carry a token. Alone in its binary: tracing caches which callsites
//! are enabled, and other tests' threads without a subscriber would disturb that.

mod common;

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use common::*;
use serde_json::json;

/// A writer that keeps everything the subscriber prints.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_log_line_carries_a_token() {
    // The default test runtime has one thread, so the thread-local subscriber sees
    // every task of this test, at every level.
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = TestServer::start(config().meta_channel(unique("logmeta"))).await;
    let chan = unique("logs");
    let good = token(claims("rw", Some(&chan)));
    let bad = token(json!({"mode": "nope", "channel": chan}));
    let mut ws = server.connect(&format!("/{good}")).await;
    send_text(&mut ws, "hello").await;
    recv_text(&mut ws).await;
    assert_eq!(server.handshake(&format!("/{bad}")).await.0, 403);
    drop(ws);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("socket open"), "the capture works: {logs}");
    for t in [&good, &bad] {
        let signature = t.rsplit('.').next().unwrap();
        assert!(!logs.contains(signature), "a token reached the logs");
    }
}
