//! Database faults: restarts under live sockets, and a database that is down at
//! start-up (contract §5; each test runs its own throwaway cluster).

use std::time::Duration;

use crate::common::{cluster::Cluster, *};

async fn blocking<F: FnOnce() + Send + 'static>(f: F) {
    tokio::task::spawn_blocking(f).await.unwrap();
}

async fn notify_on(uri: &str, channel: &str, payload: &str) {
    let (client, conn) = tokio_postgres::connect(uri, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .execute("select pg_notify($1, $2)", &[&channel, &payload])
        .await
        .unwrap();
}

/// Retries the handshake until the layer accepts it again.
async fn connect_when_back(server: &TestServer, path: &str) -> Ws {
    for _ in 0..100 {
        if let Ok(ws) = server.try_connect(path).await {
            return ws;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the layer never accepted {path} again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_closes_readers_fails_writes_and_recovers() {
    let cluster = std::sync::Arc::new(Cluster::init());
    let c = cluster.clone();
    blocking(move || c.start()).await;
    let cfg = config()
        .database_url(cluster.uri())
        .subscribe_timeout(Duration::from_millis(500));
    let server = TestServer::start(cfg).await;
    let chan = unique("restart");
    let read_path = format!("/{}", token(claims("r", Some(&chan))));
    let write_path = format!("/{}", token(claims("w", Some(&chan))));
    let mut reader = server.connect(&read_path).await;
    let mut writer = server.connect(&write_path).await;
    send_text(&mut writer, "before").await;
    assert!(recv_text(&mut reader).await.contains("before"));

    let c = cluster.clone();
    blocking(move || c.stop()).await;
    let (code, _) = recv_close(&mut reader).await;
    assert_eq!(code, 1012);
    send_text(&mut writer, "during").await;
    let (code, reason) = recv_close(&mut writer).await;
    assert_eq!(code, 1013);
    assert!(reason.starts_with("Database unavailable"), "{reason}");
    let (status, body) = server.handshake(&read_path).await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (503, "Database unavailable")
    );

    let c = cluster.clone();
    blocking(move || c.start()).await;
    let mut reader = connect_when_back(&server, &read_path).await;
    let mut writer = server.connect(&write_path).await;
    notify_on(&cluster.uri(), &chan, "from sql").await;
    assert_eq!(recv_text(&mut reader).await, "from sql");
    send_text(&mut writer, "after").await;
    assert!(recv_text(&mut reader).await.contains("after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_starts_without_a_database_and_works_once_it_appears() {
    let cluster = std::sync::Arc::new(Cluster::init());
    let cfg = config()
        .database_url(cluster.uri())
        .subscribe_timeout(Duration::from_millis(300));
    let server = TestServer::start(cfg).await;
    let chan = unique("late");
    let read_path = format!("/{}", token(claims("r", Some(&chan))));
    let (status, _) = server.handshake(&read_path).await;
    assert_eq!(status, 503);
    assert!(!server.layer.is_listening());

    let c = cluster.clone();
    blocking(move || c.start()).await;
    let mut reader = connect_when_back(&server, &read_path).await;
    assert!(server.layer.is_listening());
    let mut writer = server
        .connect(&format!("/{}", token(claims("w", Some(&chan)))))
        .await;
    send_text(&mut writer, "hello late").await;
    assert!(recv_text(&mut reader).await.contains("hello late"));
}
