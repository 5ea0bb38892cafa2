//! History channels through the layer, against real PostgreSQL: the store's
//! migration at start-up, readiness, and live delivery of stored messages.
//! Each test has its own schema (and so its own announcing channel), dropped
//! at the end.

use std::time::Duration;

use crate::common::*;

/// A history schema no other test uses, dropped (with the roles made for the
/// test) at the end, even after a panic.
pub(crate) struct Schema {
    pub(crate) name: String,
    cleanup: Vec<String>,
}

impl Schema {
    pub(crate) fn new() -> Schema {
        Schema {
            name: unique("hist"),
            cleanup: Vec::new(),
        }
    }

    /// The schema, quoted for SQL.
    pub(crate) fn q(&self) -> String {
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
        cleanup_sql(sql);
    }
}

/// A server keeping the history of channels matching `patterns` in `schema`,
/// once ready (store migrated, announcements listened to).
async fn history_server(schema: &Schema, patterns: &str) -> TestServer {
    history_server_with(schema, config().history(patterns)).await
}

/// The same with more settings on `builder`, which names the history channels.
pub(crate) async fn history_server_with(
    schema: &Schema,
    builder: pgws::ConfigBuilder,
) -> TestServer {
    let server = TestServer::start(builder.history_schema(schema.name.clone())).await;
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

/// `drop schema … cascade` under a running server: it is not ready while the store
/// is gone, creates it again (here once a held migration lock lets it), and is
/// ready with history working again, for a socket opened before and one after.
#[tokio::test]
async fn a_dropped_store_is_not_ready_and_is_created_again() {
    let schema = Schema::new();
    let server = history_server(&schema, "chat*").await;
    let chan = unique("chat");
    let mut before = reader(&server, &chan).await;
    let mut lock = db().await;
    let db = db().await;
    assert_eq!(schema.publish(&db, &chan, "one").await, 1);
    assert_eq!(recv_text(&mut before).await, "one");

    // The migration's own lock, held: the store cannot come back before we look.
    let held = lock.transaction().await.unwrap();
    held.execute(
        "select pg_advisory_xact_lock(hashtext('pgws.history'), hashtext($1))",
        &[&schema.name],
    )
    .await
    .unwrap();
    let mut writer = server
        .connect(&format!("/{}", token(claims("w", Some(&chan)))))
        .await;
    db.batch_execute(&format!("drop schema {} cascade", schema.q()))
        .await
        .unwrap();
    // A write finds it gone (and tells the keeper at once).
    send_text(&mut writer, "lost").await;
    assert_eq!(recv_close(&mut writer).await.0, 1013);
    tokio::time::timeout(WAIT, async {
        while server.layer.is_listening() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("still ready with the store gone");
    assert!(!server.layer.stats().listening);
    let t = token(claims("r", Some(&chan)));
    let (status, body) = server.handshake(&format!("/{t}?history=1")).await;
    assert_eq!(status, 503, "{body}");

    held.commit().await.unwrap();
    wait_ready(&server).await;
    let exists: bool = db
        .query_one(
            "select exists (select from pg_namespace where nspname = $1)",
            &[&schema.name],
        )
        .await
        .unwrap()
        .get(0);
    assert!(exists, "the schema was not created again");
    let mut after = resumed(&server, &chan, "history=5").await;
    // A new history: offset 1 of a new epoch, for both sockets.
    assert_eq!(schema.publish(&db, &chan, "two").await, 1);
    assert_eq!(recv_text(&mut before).await, "two");
    assert_eq!(recv_json(&mut after).await["payload"], "two");
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
    let sql = include_str!("../../sql/history.sql");
    format!(
        "select set_config('pgws.history_schema', '{}', false);\n{sql}",
        schema.replace('\'', "''")
    )
}

/// A socket for `channel` asking for positions with `query`.
async fn resumed(server: &TestServer, channel: &str, query: &str) -> Ws {
    server
        .connect(&format!("/{}?{query}", token(claims("r", Some(channel)))))
        .await
}

/// The next frame, as JSON.
async fn recv_json(ws: &mut Ws) -> serde_json::Value {
    let text = recv_text(ws).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

pub(crate) async fn epoch_of(schema: &Schema, channel: &str) -> String {
    db().await
        .query_one(
            &format!(
                "select epoch from {}.channels where channel = $1",
                schema.q()
            ),
            &[&channel],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_positioned_socket_gets_json_frames_with_positions() {
    let schema = Schema::new();
    let server = history_server(&schema, "chat*").await;
    let chan = unique("chat");
    let mut ws = resumed(&server, &chan, "history=0").await;
    let mut plain = reader(&server, &chan).await;
    let db = db().await;
    schema.publish(&db, &chan, "one \"quoted\"").await;
    notify(&chan, "plain").await;
    let epoch = epoch_of(&schema, &chan).await;
    assert_eq!(
        recv_json(&mut ws).await,
        serde_json::json!({"channel": chan, "epoch": epoch, "offset": 1, "payload": "one \"quoted\""})
    );
    assert_eq!(
        recv_json(&mut ws).await,
        serde_json::json!({"channel": chan, "payload": "plain"})
    );
    // A socket that asked for nothing gets the payloads as they are.
    assert_eq!(recv_text(&mut plain).await, "one \"quoted\"");
    assert_eq!(recv_text(&mut plain).await, "plain");
}

#[tokio::test]
async fn since_replays_what_follows_the_position_then_live_messages() {
    let schema = Schema::new();
    let server = history_server(&schema, "chat*").await;
    let chan = unique("chat");
    let db = db().await;
    for i in 1..=5 {
        schema.publish(&db, &chan, &format!("m{i}")).await;
    }
    let epoch = epoch_of(&schema, &chan).await;
    let mut ws = resumed(&server, &chan, &format!("since={epoch}:2")).await;
    let mut last = resumed(&server, &chan, "history=2").await;
    // The replay reads the store after the 101: publish once both are read.
    for offset in 4..=5 {
        assert_eq!(recv_json(&mut last).await["offset"], offset);
    }
    for offset in 3..=5 {
        let frame = recv_json(&mut ws).await;
        assert_eq!(frame["offset"], offset, "{frame}");
        assert_eq!(frame["payload"], format!("m{offset}"));
        assert_eq!(frame["epoch"], epoch.as_str());
    }
    schema.publish(&db, &chan, "m6").await;
    assert_eq!(recv_json(&mut ws).await["offset"], 6);
    assert_eq!(recv_json(&mut last).await["offset"], 6);
}

#[tokio::test]
async fn since_on_a_multi_channel_socket_names_its_channel() {
    let schema = Schema::new();
    let server = history_server(&schema, "room*").await;
    let (a, b) = (unique("room a"), unique("room_b"));
    let db = db().await;
    schema.publish(&db, &a, "a1").await;
    schema.publish(&db, &a, "a2").await;
    schema.publish(&db, &b, "b1").await;
    let epoch = epoch_of(&schema, &a).await;
    let encoded = a.replace(' ', "%20");
    let t = token(serde_json::json!({"mode": "r", "channels": [a, b], "exp": now() + 3600}));
    let mut ws = server
        .connect(&format!("/{t}?since={epoch}:1:{encoded}&history=1"))
        .await;
    // Replays in the grant's order: a after offset 1, then the last one of b.
    let first = recv_json(&mut ws).await;
    assert_eq!(
        (first["channel"].as_str(), first["offset"].as_i64()),
        (Some(a.as_str()), Some(2))
    );
    let second = recv_json(&mut ws).await;
    assert_eq!(
        (second["channel"].as_str(), second["offset"].as_i64()),
        (Some(b.as_str()), Some(1))
    );
}

#[tokio::test]
async fn replay_and_live_meet_without_gap_or_duplicate_under_continuous_publishing() {
    let schema = Schema::new();
    let server = history_server(&schema, "chat*").await;
    let chan = unique("chat");
    schema.publish(&db().await, &chan, "1").await;
    let epoch = epoch_of(&schema, &chan).await;
    const TOTAL: i64 = 300;
    let publisher = {
        let (chan, sql) = (
            chan.clone(),
            format!("select {}.publish($1, $2)", schema.q()),
        );
        tokio::spawn(async move {
            let db = db().await;
            for i in 2..=TOTAL {
                db.query_one(&sql, &[&chan, &i.to_string()]).await.unwrap();
            }
        })
    };
    // Sockets resuming from the start while the publisher runs.
    let mut sockets = Vec::new();
    for i in 0..6 {
        let query = if i % 2 == 0 {
            format!("since={epoch}:0")
        } else {
            "history=1000".to_owned()
        };
        sockets.push(resumed(&server, &chan, &query).await);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    publisher.await.unwrap();
    for ws in &mut sockets {
        for offset in 1..=TOTAL {
            let frame = recv_json(ws).await;
            assert_eq!(frame["offset"], offset, "{frame}");
            assert_eq!(frame["payload"], offset.to_string());
        }
    }
}

#[tokio::test]
async fn a_position_that_cannot_be_honoured_gets_a_gap_first() {
    let schema = Schema::new();
    let server = history_server_with(&schema, config().history("chat*").history_size(3)).await;
    let chan = unique("chat");
    let db = db().await;
    for i in 1..=10 {
        schema.publish(&db, &chan, &format!("m{i}")).await;
    }
    let epoch = epoch_of(&schema, &chan).await;
    // Older than what is kept (3 messages: 8, 9, 10), another epoch, ahead.
    for since in [
        format!("{epoch}:2"),
        "AAAAAAAAAAAA:9".to_owned(),
        format!("{epoch}:99"),
    ] {
        let mut ws = resumed(&server, &chan, &format!("since={since}")).await;
        assert_eq!(
            recv_json(&mut ws).await,
            serde_json::json!({"channel": chan, "event": "Gap", "epoch": epoch, "from": 8}),
            "since={since}"
        );
        for offset in 8..=10 {
            assert_eq!(recv_json(&mut ws).await["offset"], offset);
        }
    }
    // Kept in full: no gap.
    let mut ws = resumed(&server, &chan, &format!("since={epoch}:7")).await;
    assert_eq!(recv_json(&mut ws).await["offset"], 8);

    // The history starts over: an old position is told the new epoch.
    db.execute(
        &format!("delete from {}.channels where channel = $1", schema.q()),
        &[&chan],
    )
    .await
    .unwrap();
    schema.publish(&db, &chan, "new").await;
    let renewed = epoch_of(&schema, &chan).await;
    assert_ne!(renewed, epoch);
    let mut ws = resumed(&server, &chan, &format!("since={epoch}:10")).await;
    assert_eq!(
        recv_json(&mut ws).await,
        serde_json::json!({"channel": chan, "event": "Gap", "epoch": renewed, "from": 1})
    );
    assert_eq!(recv_json(&mut ws).await["payload"], "new");
    // Counted before they are sent: 5 replays, 4 of them with a Gap.
    let stats = server.layer.stats();
    assert_eq!((stats.history_replays, stats.history_gaps), (5, 4));
    assert!(stats.history_store_calls >= 5, "{stats:?}");
}

#[tokio::test]
async fn positions_are_checked_against_the_grant_and_their_form() {
    let schema = Schema::new();
    let server = history_server(&schema, "chat*").await;
    let chan = unique("chat");
    let t = token(claims("r", Some(&chan)));
    let (status, body) = server
        .handshake(&format!(
            "/{t}?since=AAAAAAAAAAAA:1:{}",
            unique("chat_other")
        ))
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.starts_with("No allowed channels"), "{body}");
    // Malformed, and a position for a granted channel that keeps no history.
    let plain = unique("plain");
    for (query, channel) in [
        ("since=nope", &chan),
        ("history=-2", &chan),
        ("since=A:1", &plain),
    ] {
        let t = token(claims("r", Some(channel)));
        let (status, body) = server.handshake(&format!("/{t}?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.starts_with("Invalid position"), "{body}");
    }
}

#[tokio::test]
async fn without_history_position_parameters_are_ignored() {
    let server = TestServer::start(config()).await;
    let chan = unique("plain");
    let mut ws = resumed(&server, &chan, "since=garbage&history=x").await;
    notify(&chan, "as today").await;
    assert_eq!(recv_text(&mut ws).await, "as today");
}

#[tokio::test]
async fn a_socket_write_to_a_history_channel_is_kept_and_may_pass_8000_bytes() {
    let schema = Schema::new();
    let server = history_server_with(
        &schema,
        config().history("chat*").max_message_bytes(100_000),
    )
    .await;
    let (chat, plain) = (unique("chat"), unique("plain"));
    let t =
        token(serde_json::json!({"mode": "rw", "channels": [chat, plain], "exp": now() + 3600}));
    let mut writer = server.connect(&format!("/{t}")).await;
    let mut chat_reader = resumed(&server, &chat, "history=0").await;
    let mut plain_reader = reader(&server, &plain).await;

    // One message to both channels: kept on the history one, NOTIFYd on the other.
    send_text(&mut writer, "hello").await;
    let frame = recv_json(&mut chat_reader).await;
    assert_eq!(frame["offset"], 1, "{frame}");
    let envelope: serde_json::Value =
        serde_json::from_str(frame["payload"].as_str().unwrap()).unwrap();
    assert_eq!(envelope["payload"], "hello");
    assert_eq!(envelope["channel"], chat.as_str());
    let envelope: serde_json::Value =
        serde_json::from_str(&recv_text(&mut plain_reader).await).unwrap();
    assert_eq!(envelope["payload"], "hello");
    let kept: i64 = db()
        .await
        .query_one(
            &format!(
                "select count(*) from {s}.messages m join {s}.channels c on c.id = m.channel_id \
                 where c.channel = $1",
                s = schema.q()
            ),
            &[&chat],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1);

    // 64 KiB to the history channel alone: past NOTIFY's 8000 bytes.
    let only_chat = token(serde_json::json!({"mode": "w", "channel": chat, "exp": now() + 3600}));
    let mut big_writer = server.connect(&format!("/{only_chat}")).await;
    let big = "x".repeat(65_536);
    send_text(&mut big_writer, &big).await;
    let frame = recv_json(&mut chat_reader).await;
    assert_eq!(frame["offset"], 2);
    let envelope: serde_json::Value =
        serde_json::from_str(frame["payload"].as_str().unwrap()).unwrap();
    assert_eq!(envelope["payload"], big.as_str());
    // A big one to a plain channel is still refused as before.
    send_text(&mut writer, &big).await;
    assert_eq!(recv_close(&mut writer).await.0, 1009);
}

#[tokio::test]
async fn a_lost_listener_is_caught_up_for_history_only_sockets_and_others_get_1012() {
    let schema = Schema::new();
    // Connections tagged for this test alone, so it kills only its own listener.
    let app = unique("pgws_app");
    let sep = if db_uri().contains('?') { '&' } else { '?' };
    let uri = format!("{}{sep}application_name={app}", db_uri());
    let server = history_server_with(&schema, config().database_url(uri).history("chat*")).await;
    let (chan, plain) = (unique("chat"), unique("plain"));
    let mut raw = reader(&server, &chan).await;
    let mut positioned = resumed(&server, &chan, "history=0").await;
    let t = token(serde_json::json!({"mode": "r", "channels": [chan, plain], "exp": now() + 3600}));
    let mut mixed = server.connect(&format!("/{t}")).await;

    const TOTAL: i64 = 400;
    let publisher = {
        let (chan, sql) = (
            chan.clone(),
            format!("select {}.publish($1, $2)", schema.q()),
        );
        tokio::spawn(async move {
            let db = db().await;
            for i in 1..=TOTAL {
                db.query_one(&sql, &[&chan, &i.to_string()]).await.unwrap();
            }
        })
    };
    // Mid-stream: the listener goes while messages keep coming.
    for i in 1..=50 {
        assert_eq!(recv_text(&mut raw).await, i.to_string());
    }
    assert!(terminate_backends(&app).await >= 1);
    publisher.await.unwrap();

    for i in 51..=TOTAL {
        assert_eq!(recv_text(&mut raw).await, i.to_string());
    }
    for offset in 1..=TOTAL {
        let frame = recv_json(&mut positioned).await;
        assert_eq!(frame["offset"], offset, "{frame}");
    }
    // Nothing more: the next frame is the next message.
    schema.publish(&db().await, &chan, "after").await;
    assert_eq!(recv_text(&mut raw).await, "after");
    assert_eq!(recv_json(&mut positioned).await["offset"], TOTAL + 1);

    // A socket that also reads a plain channel may have missed NOTIFYs: 1012.
    let (code, reason) = recv_close(&mut mixed).await;
    assert_eq!(code, 1012, "{reason}");
    assert!(server.layer.stats().history_catch_ups >= 1);
}

#[tokio::test]
async fn a_message_committed_right_after_the_101_reaches_a_socket_asking_for_history() {
    let schema = Schema::new();
    let server = history_server(&schema, "chat*").await;
    let db = db().await;
    for n in [0_i64, 1, 5] {
        for i in 0..10 {
            let chan = unique("chat");
            for m in 1..=3 {
                schema.publish(&db, &chan, &format!("m{m}")).await;
            }
            let mut ws = resumed(&server, &chan, &format!("history={n}")).await;
            schema.publish(&db, &chan, &format!("x{i}")).await;
            // The last n before the 101 (at most the 3 there are), then the new one.
            for offset in (4 - n.min(3))..=4 {
                let frame = recv_json(&mut ws).await;
                assert_eq!(frame["offset"], offset, "history={n}: {frame}");
            }
        }
    }
}

#[tokio::test]
async fn messages_beyond_the_retention_are_deleted_once_the_store_is_ready() {
    let schema = Schema::new();
    let db = db().await;
    db.batch_execute(&pgws_store(&schema.name)).await.unwrap();
    let chan = unique("chat");
    for i in 1..=5 {
        schema.publish(&db, &chan, &format!("m{i}")).await;
    }
    let kept = async || -> i64 {
        db.query_one(
            &format!("select count(*) from {}.messages", schema.q()),
            &[],
        )
        .await
        .unwrap()
        .get(0)
    };
    assert_eq!(kept().await, 5);
    let _server = history_server_with(&schema, config().history("chat*").history_size(2)).await;
    tokio::time::timeout(WAIT, async {
        while kept().await != 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the retention was not applied");
}

#[tokio::test]
async fn an_announcement_that_skips_ahead_is_preceded_by_what_it_skipped() {
    let schema = Schema::new();
    let server = history_server(&schema, "chat*").await;
    let chan = unique("chat");
    let mut raw = reader(&server, &chan).await;
    let mut positioned = resumed(&server, &chan, "history=0").await;
    let db = db().await;
    schema.publish(&db, &chan, "m1").await;
    assert_eq!(recv_text(&mut raw).await, "m1");
    assert_eq!(recv_json(&mut positioned).await["offset"], 1);
    // Kept without its announcement, as if the NOTIFY had been lost.
    let s = schema.q();
    db.execute(
        &format!(
            "with c as (update {s}.channels set last_offset = last_offset + 1 \
               where channel = $1 returning id, last_offset) \
             insert into {s}.messages (channel_id, \"offset\", created_at, payload) \
             select id, last_offset, now(), 'm2' from c"
        ),
        &[&chan],
    )
    .await
    .unwrap();
    schema.publish(&db, &chan, "m3").await;
    assert_eq!(recv_text(&mut raw).await, "m2");
    assert_eq!(recv_text(&mut raw).await, "m3");
    for offset in 2..=3 {
        assert_eq!(recv_json(&mut positioned).await["offset"], offset);
    }
}

/// The window this closes: a first reader of a history channel was told it was
/// subscribed (its 101) before the listener had read where the channel's
/// history stood; the listener's connection was lost before a message
/// committed after the 101 was delivered, and the next connection started from
/// a head read after that message: lost. The store is held up here (one pooled
/// connection, busy with a write the test blocks) so the window stays open.
#[tokio::test]
async fn a_message_committed_after_the_101_survives_a_listener_lost_before_the_baseline() {
    let schema = Schema::new();
    let app = unique("pgws_app");
    let sep = if db_uri().contains('?') { '&' } else { '?' };
    let uri = format!("{}{sep}application_name={app}", db_uri());
    let builder = config().database_url(uri).history("chat*").pool_size(1);
    let server = history_server_with(&schema, builder).await;
    let (chan, blocked, plain) = (unique("chat"), unique("chat"), unique("plain"));
    let db = db().await;
    schema.publish(&db, &blocked, "first").await;

    // The only pooled connection waits on a row this transaction holds.
    let mut hold = crate::common::db().await;
    let tx = hold.transaction().await.unwrap();
    let lock = format!(
        "select 1 from {}.channels where channel = $1 for update",
        schema.q()
    );
    tx.execute(&lock, &[&blocked]).await.unwrap();
    let mut writer = server
        .connect(&format!("/{}", token(claims("w", Some(&blocked)))))
        .await;
    send_text(&mut writer, "held").await;
    let waiting = "select count(*) from pg_stat_activity \
                   where application_name = $1 and wait_event_type = 'Lock'";
    until(async || {
        db.query_one(waiting, &[&app])
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    })
    .await;

    // The first reader of `chan`; a later join is acked by a later batch.
    let url: http::Uri = server
        .url(&format!("/{}", token(claims("r", Some(&chan)))))
        .parse()
        .unwrap();
    let first = tokio::spawn(async move {
        tokio_websockets::ClientBuilder::from_uri(url)
            .connect()
            .await
    });
    until(async || first.is_finished() || server.layer.stats().pending_joins >= 1).await;
    let _later = reader(&server, &plain).await;
    // Still waiting, it is not owed what comes next before its 101: the store
    // is let go so the listener can learn where the channel stands. Told it is
    // subscribed, it is: the store stays held while the listener is lost.
    let held = server.layer.stats().pending_joins >= 1;
    let tx = if held {
        tx.rollback().await.unwrap();
        None
    } else {
        Some(tx)
    };
    let (mut ws, _) = tokio::time::timeout(WAIT, first)
        .await
        .expect("no 101 in time")
        .unwrap()
        .unwrap();

    assert_eq!(schema.publish(&db, &chan, "m1").await, 1);
    let kill = "select count(pg_terminate_backend(pid)) from pg_stat_activity \
                where application_name = $1 and query ilike 'LISTEN %'";
    let reconnects = server.layer.stats().listener_reconnects;
    assert_eq!(
        db.query_one(kill, &[&app]).await.unwrap().get::<_, i64>(0),
        1
    );
    if let Some(tx) = tx {
        tx.rollback().await.unwrap();
    }
    until(async || {
        server.layer.stats().listener_reconnects > reconnects && server.layer.is_listening()
    })
    .await;
    schema.publish(&db, &chan, "m2").await;
    assert_eq!(recv_text(&mut ws).await, "m1");
    assert_eq!(recv_text(&mut ws).await, "m2");
}

/// Polls `done` until it holds, within [`WAIT`].
async fn until(mut done: impl AsyncFnMut() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !done().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("never came to pass");
}

#[tokio::test]
async fn a_burst_of_announcements_is_fetched_in_few_queries_in_order_once_each() {
    let schema = Schema::new();
    let server = history_server(&schema, "chat*").await;
    let chans: Vec<String> = (0..3).map(|_| unique("chat")).collect();
    // Two readers per channel: fetched once per message, not per socket.
    let mut readers = Vec::new();
    for chan in &chans {
        for _ in 0..2 {
            readers.push((chan.clone(), resumed(&server, chan, "history=0").await));
        }
    }
    const EACH: i64 = 100;
    let db = db().await;
    let before = server.layer.stats().history_store_calls;
    // One commit: 300 announcements arrive together.
    let publish = format!("select {}.publish($1, $2)", schema.q());
    let mut sql = String::from("begin;");
    for i in 1..=EACH {
        for chan in &chans {
            sql.push_str(
                &publish
                    .replace("$1", &format!("'{chan}'"))
                    .replace("$2", &format!("'{i}'")),
            );
            sql.push(';');
        }
    }
    sql.push_str("commit;");
    db.batch_execute(&sql).await.unwrap();
    for (chan, ws) in &mut readers {
        for offset in 1..=EACH {
            let frame = recv_json(ws).await;
            assert_eq!(frame["channel"], chan.as_str(), "{frame}");
            assert_eq!(frame["offset"], offset, "{frame}");
            assert_eq!(frame["payload"], offset.to_string(), "{frame}");
        }
    }
    let calls = server.layer.stats().history_store_calls - before;
    // Batched: a query brings many (each alone would be 300).
    assert!(calls <= (3 * EACH as u64) / 4, "{calls} store calls");
}
