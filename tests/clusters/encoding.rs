//! A `SQL_ASCII` database lets any bytes through `NOTIFY`: a notification that is
//! not UTF-8 is dropped and counted, and the listener and every reader go on
//! (PROTOCOL.md §8).

use std::time::Duration;

use crate::common::{cluster::Cluster, *};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_that_is_not_utf8_is_skipped_and_readers_carry_on() {
    let cluster = std::sync::Arc::new(Cluster::init_with(&["-E", "SQL_ASCII", "--locale=C"]));
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start())
        .await
        .unwrap();
    let (db, conn) = tokio_postgres::connect(&cluster.uri(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let encoding: String = db
        .query_one("show server_encoding", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(encoding, "SQL_ASCII");

    let server = TestServer::start(config().database_url(cluster.uri())).await;
    let (chan, other) = (unique("ascii"), unique("ascii_other"));
    let mut reader = server
        .connect(&format!("/{}", token(claims("r", Some(&chan)))))
        .await;
    let mut bystander = server
        .connect(&format!("/{}", token(claims("r", Some(&other)))))
        .await;
    // Byte 0xff is no UTF-8 anywhere; a valid one follows in the same transaction.
    db.batch_execute(&format!(
        "select pg_notify('{chan}', E'bad \\xff byte'); \
         begin; select pg_notify('{chan}', E'\\xc3('); select pg_notify('{chan}', 'after'); commit; \
         select pg_notify('{other}', 'for the other')"
    ))
    .await
    .unwrap();
    assert_eq!(recv_text(&mut reader).await, "after");
    assert_eq!(recv_text(&mut bystander).await, "for the other");
    // Counted once the listener's round is over, which may be after the frames.
    for _ in 0..100 {
        if server.layer.stats().notifications_undecodable == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = server.layer.stats();
    assert_eq!(stats.notifications_undecodable, 2);
    assert_eq!(stats.listener_reconnects, 0);
    // Still the same connection, still delivering.
    notify_on(&db, &chan, "later").await;
    assert_eq!(recv_text(&mut reader).await, "later");
    assert!(server.layer.is_listening());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(server.layer.stats().listener_reconnects, 0);
}

async fn notify_on(db: &tokio_postgres::Client, channel: &str, payload: &str) {
    db.execute("select pg_notify($1, $2)", &[&channel, &payload])
        .await
        .unwrap();
}
