//! History channels through the layer, against real PostgreSQL: the store's
//! migration at start-up, readiness, and live delivery of stored messages.
//! Each test has its own schema (and so its own announcing channel), dropped
//! at the end.

mod common;

use std::time::Duration;

use common::*;

/// A history schema no other test uses, dropped (with the roles made for the
/// test) at the end, even after a panic.
struct Schema {
    name: String,
    cleanup: Vec<String>,
}

impl Schema {
    fn new() -> Schema {
        Schema {
            name: unique("hist"),
            cleanup: Vec::new(),
        }
    }

    /// The schema, quoted for SQL.
    fn q(&self) -> String {
        postgres_quote(&self.name)
    }

    /// `select <schema>.publish(channel, payload)` on `db`: the offset.
    async fn publish(&self, db: &tokio_postgres::Client, channel: &str, payload: &str) -> i64 {
        let sql = format!("select {}.publish($1, $2)", self.q());
        db.query_one(&sql, &[&channel, &payload])
            .await
            .unwrap()
            .get(0)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let mut sql = vec![format!("drop schema if exists {} cascade", self.q())];
        sql.append(&mut self.cleanup);
        // A runtime of its own: this also runs when the test panicked.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let client = db().await;
                for statement in sql {
                    let _ = client.batch_execute(&statement).await;
                }
            });
        })
        .join()
        .unwrap();
    }
}

/// A server keeping the history of channels matching `patterns` in `schema`,
/// once ready (store migrated, announcements listened to).
async fn history_server(schema: &Schema, patterns: &str) -> TestServer {
    let server = TestServer::start(
        config()
            .history(patterns)
            .history_schema(schema.name.clone()),
    )
    .await;
    wait_ready(&server).await;
    server
}

async fn wait_ready(server: &TestServer) {
    tokio::time::timeout(WAIT, async {
        while !server.layer.is_listening() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the server never got ready");
}

async fn reader(server: &TestServer, channel: &str) -> Ws {
    server
        .connect(&format!("/{}", token(claims("r", Some(channel)))))
        .await
}

#[tokio::test]
async fn start_up_migrates_the_store_and_listens_to_its_announcements() {
    let schema = Schema::new();
    let server = history_server(&schema, "chat*").await;
    let version: i32 = db()
        .await
        .query_one(
            &format!("select max(version) from {}.migrations", schema.q()),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 1);
    let listening = server.layer.listening_channels().await.unwrap();
    assert!(
        listening.contains(&format!("{}.history", schema.name)),
        "{listening:?}"
    );
}

#[tokio::test]
async fn without_history_no_announcements_are_listened_to() {
    let server = TestServer::start(config()).await;
    let chan = unique("plain");
    let _ws = reader(&server, &chan).await;
    let listening = server.layer.listening_channels().await.unwrap();
    assert_eq!(listening, vec![chan]);
}

#[tokio::test]
async fn a_message_published_from_sql_reaches_every_reader_in_commit_order() {
    let schema = Schema::new();
    let server = history_server(&schema, "chat*").await;
    let chan = unique("chat");
    let mut a = reader(&server, &chan).await;
    let mut b = reader(&server, &chan).await;
    let db = db().await;
    assert_eq!(schema.publish(&db, &chan, "one").await, 1);
    // A plain NOTIFY on a history channel is delivered live, in its turn.
    notify(&chan, "plain").await;
    assert_eq!(schema.publish(&db, &chan, "two").await, 2);
    for ws in [&mut a, &mut b] {
        assert_eq!(recv_text(ws).await, "one");
        assert_eq!(recv_text(ws).await, "plain");
        assert_eq!(recv_text(ws).await, "two");
    }
}

#[tokio::test]
async fn a_rolled_back_publish_delivers_nothing() {
    let schema = Schema::new();
    let server = history_server(&schema, "chat*").await;
    let chan = unique("chat");
    let mut ws = reader(&server, &chan).await;
    let mut db = db().await;
    let tx = db.transaction().await.unwrap();
    let sql = format!("select {}.publish($1, $2)", schema.q());
    tx.query_one(&sql, &[&chan, &"never"]).await.unwrap();
    tx.rollback().await.unwrap();
    // The rolled-back offset is used again: the next message is 1.
    assert_eq!(schema.publish(&db, &chan, "kept").await, 1);
    assert_eq!(recv_text(&mut ws).await, "kept");
}

#[tokio::test]
async fn a_64_kib_payload_published_from_sql_is_delivered_whole() {
    let schema = Schema::new();
    let server = history_server(&schema, "chat*").await;
    let chan = unique("chat");
    let mut ws = reader(&server, &chan).await;
    let big: String = (0..65_536)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    schema.publish(&db().await, &chan, &big).await;
    assert_eq!(recv_text(&mut ws).await, big);
}

#[tokio::test]
async fn an_announcement_of_a_message_not_in_the_store_delivers_nothing() {
    let schema = Schema::new();
    let server = history_server(&schema, "chat*").await;
    let chan = unique("chat");
    let mut ws = reader(&server, &chan).await;
    let db = db().await;
    // Forged: no such message (the channel has no history yet).
    let announcements = format!("{}.history", schema.name);
    notify(&announcements, &format!("1 AAAAAAAAAAAA {chan}")).await;
    schema.publish(&db, &chan, "real").await;
    assert_eq!(recv_text(&mut ws).await, "real");
    // Forged again, now with the channel's real epoch and an offset ahead.
    let epoch: String = db
        .query_one(
            &format!(
                "select epoch from {}.channels where channel = $1",
                schema.q()
            ),
            &[&chan],
        )
        .await
        .unwrap()
        .get(0);
    notify(&announcements, &format!("7 {epoch} {chan}")).await;
    notify(&chan, "after").await;
    assert_eq!(recv_text(&mut ws).await, "after");
}

#[tokio::test]
async fn a_role_that_may_not_create_the_store_is_not_ready_until_it_exists() {
    let mut schema = Schema::new();
    let role = unique("hist_role");
    let r = postgres_quote(&role);
    let admin = db().await;
    admin
        .batch_execute(&format!("create role {r} login"))
        .await
        .unwrap();
    schema.cleanup.push(format!("drop owned by {r}"));
    schema.cleanup.push(format!("drop role {r}"));
    let uri = db_uri();
    assert!(uri.contains("://postgres@"), "this test needs a URI: {uri}");
    let weak_uri = uri.replacen("://postgres@", &format!("://{role}@"), 1);
    let server = TestServer::start(
        config()
            .database_url(weak_uri)
            .history("chat*")
            .history_schema(schema.name.clone()),
    )
    .await;
    // The listener connects and listens, but the store cannot be made.
    tokio::time::timeout(WAIT, async {
        while server.layer.listening_channels().await.is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert!(!server.layer.is_listening());
    assert!(!server.layer.stats().listening);

    // A DBA applies the SQL and grants what the role needs: it gets ready.
    let store = pgws_store(&schema.name);
    let s = schema.q();
    admin
        .batch_execute(&format!(
            "{store}; grant usage on schema {s} to {r}; grant select on {s}.migrations to {r}; \
             grant select, insert, update, delete on {s}.channels, {s}.messages to {r}"
        ))
        .await
        .unwrap();
    wait_ready(&server).await;
}

/// The SQL file, as a DBA would apply it to `schema`.
fn pgws_store(schema: &str) -> String {
    let sql = include_str!("../sql/history.sql");
    format!(
        "select set_config('pgws.history_schema', '{}', false);\n{sql}",
        schema.replace('\'', "''")
    )
}
