//! Database → sockets (contract sections 3 to 5).

mod common;

use common::*;

#[tokio::test]
async fn notify_reaches_a_reader_unchanged() {
    let server = TestServer::start(config()).await;
    let chan = unique("deliver");
    let mut ws = server.connect(&format!("/{}", token(claims("r", Some(&chan))))).await;
    notify(&chan, "héllo {\"x\":1}").await;
    assert_eq!(recv_text(&mut ws).await, "héllo {\"x\":1}");
}
