//! The history store against real PostgreSQL: migrations, publishing, offsets,
//! announcements, reads, gaps, retention and pruning. Each test has its own
//! schema (and so its own announcing channel), dropped at the end.
#![cfg(feature = "internals")]

use std::{collections::BTreeMap, time::Duration};

use crate::common::*;
use pgws::__bench::history::{
    HistoryError, Position, Read, Reference, Retention, SCHEMA_VERSION, Store,
};

/// A migrated store in a schema no other test uses; dropped with the fixture.
struct Fixture {
    store: Store,
    db: tokio_postgres::Client,
    /// Extra SQL run by `drop`, before the schema goes (roles to drop, …).
    cleanup: Vec<String>,
}

impl Fixture {
    async fn new() -> Fixture {
        Self::named(&unique("hist")).await
    }

    async fn named(schema: &str) -> Fixture {
        let fixture = Self::unmigrated(schema).await;
        let version = fixture.store.migrate(&fixture.db).await.unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        fixture
    }

    async fn unmigrated(schema: &str) -> Fixture {
        Fixture {
            store: Store::new(schema).unwrap(),
            db: db().await,
            cleanup: Vec::new(),
        }
    }

    /// The schema, quoted for SQL.
    fn s(&self) -> String {
        postgres_quote(self.store.schema())
    }

    async fn publish(&self, channel: &str, payload: &str) -> Position {
        self.store
            .publish(&self.db, channel, payload)
            .await
            .unwrap()
    }

    /// Publishes `m1` … `m<n>`; the epoch.
    async fn publish_numbered(&self, channel: &str, n: i64) -> String {
        let mut epoch = String::new();
        for i in 1..=n {
            let p = self.publish(channel, &format!("m{i}")).await;
            assert_eq!(p.offset, i);
            epoch = p.epoch;
        }
        epoch
    }

    async fn read_after(&self, channel: &str, after: &Position, retention: &Retention) -> Read {
        self.store
            .read_after(&self.db, channel, after, 10_000, retention)
            .await
            .unwrap()
    }

    /// The offsets stored for `channel`, whatever retention says.
    async fn stored(&self, channel: &str) -> Vec<i64> {
        let sql = format!(
            "select m.\"offset\" from {s}.messages m join {s}.channels c on c.id = m.channel_id \
             where c.channel = $1 order by 1",
            s = self.s()
        );
        let rows = self.db.query(&sql, &[&channel]).await.unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    }

    /// A LISTEN connection on the store's announcing channel.
    async fn listen(&self) -> Listen {
        Listen::start(self.store.notify_channel()).await
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let mut sql = vec![format!("drop schema if exists {} cascade", self.s())];
        sql.append(&mut self.cleanup);
        cleanup_sql(sql);
    }
}

fn at(epoch: &str, offset: i64) -> Position {
    Position {
        epoch: epoch.into(),
        offset,
    }
}

fn offsets(read: &Read) -> Vec<i64> {
    read.messages.iter().map(|m| m.offset).collect()
}

fn keep(max_count: i64) -> Retention {
    Retention {
        max_count,
        ..Retention::default()
    }
}

/// The next announcement, parsed.
async fn next_ref(listen: &mut Listen) -> Reference {
    let (_, payload) = listen.next().await;
    Reference::parse(&payload).unwrap_or_else(|e| panic!("{payload:?}: {e}"))
}

/// A fresh connection as `user` (trust authentication).
async fn db_as(user: &str) -> tokio_postgres::Client {
    let mut config: tokio_postgres::Config = db_uri().parse().unwrap();
    config.user(user);
    let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

#[tokio::test]
async fn migrating_twice_and_concurrently_is_safe() {
    let f = Fixture::unmigrated(&unique("hist")).await;
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(db().await);
    }
    let runs = clients.iter().map(|c| f.store.migrate(c));
    for result in futures_util::future::join_all(runs).await {
        assert_eq!(result.unwrap(), SCHEMA_VERSION);
    }
    assert_eq!(f.store.migrate(&f.db).await.unwrap(), SCHEMA_VERSION);
    assert_eq!(f.store.migrate(&f.db).await.unwrap(), SCHEMA_VERSION);
    let sql = format!("select count(*), max(version) from {}.migrations", f.s());
    let row = f.db.query_one(&sql, &[]).await.unwrap();
    assert_eq!(row.get::<_, i64>(0), i64::from(SCHEMA_VERSION));
    assert_eq!(row.get::<_, i32>(1), SCHEMA_VERSION);
    assert_eq!(f.publish("chat", "works").await.offset, 1);
}

#[tokio::test]
async fn migrating_inside_a_transaction_rolls_back_with_it() {
    let mut f = Fixture::unmigrated(&unique("hist")).await;
    let tx = f.db.transaction().await.unwrap();
    f.store.migrate(&tx).await.unwrap();
    tx.rollback().await.unwrap();
    let sql = "select count(*) from pg_namespace where nspname = $1";
    let schema = f.store.schema().to_owned();
    let n: i64 = f.db.query_one(sql, &[&schema]).await.unwrap().get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn the_sql_file_applied_by_hand_is_what_migrate_expects() {
    const FILE: &str = include_str!("../../sql/history.sql");
    let f = Fixture::unmigrated(&unique("hist")).await;
    // As `PGOPTIONS='-c pgws.history_schema=…' psql -f sql/history.sql` would.
    let set = "select set_config('pgws.history_schema', $1, false)";
    f.db.execute(set, &[&f.store.schema()]).await.unwrap();
    f.db.batch_execute(FILE).await.unwrap();
    f.db.batch_execute(FILE).await.unwrap();
    assert_eq!(f.store.migrate(&f.db).await.unwrap(), SCHEMA_VERSION);
    assert_eq!(f.publish("chat", "by hand").await.offset, 1);

    // Names the file cannot hold are refused before anything is created.
    for bad in ["a$fn$b", &"x".repeat(56)] {
        f.db.execute(set, &[&bad]).await.unwrap();
        let err = f.db.batch_execute(FILE).await.unwrap_err();
        let db = err.as_db_error().unwrap();
        assert_eq!(db.code(), &tokio_postgres::error::SqlState::INVALID_NAME);
        assert!(db.message().contains("1 to 55 bytes without $"), "{db:?}");
        let sql = "select count(*) from pg_namespace where nspname = $1";
        let n: i64 = f.db.query_one(sql, &[&bad]).await.unwrap().get(0);
        assert_eq!(n, 0);
    }
}

#[tokio::test]
async fn hostile_schema_names_are_quoted() {
    let name = format!("{} \"q\" 'é' x.y", unique("Hist"));
    let f = Fixture::named(&name).await;
    assert_eq!(f.store.notify_channel(), format!("{name}.history"));
    let mut listen = f.listen().await;
    let p = f.publish("chat", "hi").await;
    let r = next_ref(&mut listen).await;
    assert_eq!((r.channel.as_str(), r.position()), ("chat", p));
    // The SQL function lives in that schema too.
    let sql = format!("select {}.publish('chat', 'again')", f.s());
    let offset: i64 = f.db.query_one(&sql, &[]).await.unwrap().get(0);
    assert_eq!(offset, 2);
}

#[tokio::test]
async fn a_role_that_may_not_create_the_store_is_told_what_is_missing() {
    let mut f = Fixture::unmigrated(&unique("hist")).await;
    let role = unique("hist_role");
    let r = postgres_quote(&role);
    f.db.batch_execute(&format!("create role {r} login"))
        .await
        .unwrap();
    f.cleanup.push(format!("drop owned by {r}"));
    f.cleanup.push(format!("drop role {r}"));
    let s = f.s();
    // Both names are plain identifiers, which PostgreSQL's messages leave unquoted.
    let (name, role) = (f.store.schema().to_owned(), role);
    let weak = db_as(&role).await;

    // Missing, and no CREATE on the database.
    let err = f.store.migrate(&weak).await.unwrap_err();
    let HistoryError::Missing(text) = &err else {
        panic!("{err:?}")
    };
    assert!(
        text.contains(&format!("schema {name} is missing")),
        "{text}"
    );
    assert!(
        text.contains(&format!("role {role} may not create it")),
        "{text}"
    );
    assert!(text.contains("sql/history.sql"), "{text}");

    // Present, but not readable by the role.
    f.store.migrate(&f.db).await.unwrap();
    let err = f.store.migrate(&weak).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, HistoryError::Missing(_)), "{err:?}");
    assert!(
        text.contains(&format!("may not read {name}.migrations")) && text.contains("grant usage"),
        "{text}"
    );

    // Readable: up to date, so nothing to create.
    f.db.batch_execute(&format!(
        "grant usage on schema {s} to {r}; grant select on {s}.migrations to {r}"
    ))
    .await
    .unwrap();
    assert_eq!(f.store.migrate(&weak).await.unwrap(), SCHEMA_VERSION);

    // Publishing needs the table grants the SQL file lists.
    let err = f.store.publish(&weak, "chat", "x").await.unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
    f.db.batch_execute(&format!(
        "grant select, insert, update, delete on {s}.channels, {s}.messages to {r}"
    ))
    .await
    .unwrap();
    assert_eq!(f.store.publish(&weak, "chat", "x").await.unwrap().offset, 1);

    // Behind (no migration recorded) and no CREATE on the schema.
    f.db.batch_execute(&format!("delete from {s}.migrations"))
        .await
        .unwrap();
    let err = f.store.migrate(&weak).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, HistoryError::Missing(_)), "{err:?}");
    assert!(
        text.contains(&format!(
            "schema {name} is at version 0 of {SCHEMA_VERSION}"
        )) && text.contains("may not migrate it"),
        "{text}"
    );
}

#[tokio::test]
async fn a_rolled_back_publish_keeps_nothing_announces_nothing_and_frees_its_offset() {
    let mut f = Fixture::new().await;
    let mut listen = f.listen().await;
    let chan = "chat";

    let tx = f.db.transaction().await.unwrap();
    assert_eq!(f.store.publish(&tx, chan, "lost").await.unwrap().offset, 1);
    tx.rollback().await.unwrap();
    assert_eq!(f.store.head(&f.db, chan).await.unwrap(), None);
    assert_eq!(
        f.store
            .last_n(&f.db, chan, 10, &Retention::default())
            .await
            .unwrap(),
        None
    );

    let first = f.publish(chan, "kept 1").await;
    assert_eq!(first.offset, 1);

    // From SQL too, in the caller's transaction.
    let s = f.s();
    f.db.batch_execute(&format!(
        "begin; select {s}.publish('chat', 'lost 2'); rollback"
    ))
    .await
    .unwrap();
    let tx = f.db.transaction().await.unwrap();
    assert_eq!(
        f.store.publish(&tx, chan, "lost 3").await.unwrap().offset,
        2
    );
    drop(tx); // rolled back
    let second = f.publish(chan, "kept 2").await;
    assert_eq!(second, at(&first.epoch, 2));

    // Only the committed messages were announced, in order.
    for (want, payload) in [(&first, "kept 1"), (&second, "kept 2")] {
        let r = next_ref(&mut listen).await;
        assert_eq!((&r.channel[..], &r.position()), (chan, want));
        let fetched = f.store.fetch(&f.db, &[r]).await.unwrap();
        assert_eq!(fetched, vec![Some(payload.to_owned())]);
    }
    assert!(listen.quiet_for(Duration::from_millis(300)).await);

    let read = f.read_after(chan, &at(&first.epoch, 0), &keep(100)).await;
    let payloads: Vec<&str> = read.messages.iter().map(|m| &m.payload[..]).collect();
    assert_eq!(payloads, ["kept 1", "kept 2"]);
    assert_eq!(read.gap, None);
}

#[tokio::test]
async fn offsets_are_gapless_and_in_commit_order_with_concurrent_writers() {
    const WRITERS: i64 = 8;
    const EACH: i64 = 200;
    let f = Fixture::new().await;
    let mut listen = f.listen().await;
    let chan = "busy";
    let s = f.s();

    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = f.store.clone();
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = db().await;
            let mut mine = Vec::new();
            for i in 0..EACH {
                let payload = format!("w{w}-{i}");
                // Every tenth publish is rolled back first; half the writers go
                // through SQL, half through the Rust API.
                if i % 10 == 3 {
                    let tx = client.transaction().await.unwrap();
                    store.publish(&tx, chan, "rolled back").await.unwrap();
                    tx.rollback().await.unwrap();
                }
                let offset = if w % 2 == 0 {
                    store.publish(&client, chan, &payload).await.unwrap().offset
                } else {
                    let tx = client.transaction().await.unwrap();
                    let sql = format!("select {s}.publish($1, $2)");
                    let row = tx.query_one(&sql, &[&chan, &payload]).await.unwrap();
                    tx.commit().await.unwrap();
                    row.get(0)
                };
                mine.push((offset, payload));
            }
            mine
        }));
    }
    let mut sent = BTreeMap::new();
    for task in tasks {
        let mine = task.await.unwrap();
        // Each writer sees its own offsets increase.
        assert!(mine.windows(2).all(|w| w[0].0 < w[1].0));
        for (offset, payload) in mine {
            assert!(
                sent.insert(offset, payload).is_none(),
                "offset {offset} twice"
            );
        }
    }
    let total = WRITERS * EACH;
    assert_eq!(
        sent.keys().copied().collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );

    // Announcements arrive in commit order: exactly 1, 2, 3, …
    let epoch = f.store.head(&f.db, chan).await.unwrap().unwrap().epoch;
    for want in 1..=total {
        let r = next_ref(&mut listen).await;
        assert_eq!(
            (r.offset, &r.epoch[..], &r.channel[..]),
            (want, &epoch[..], chan)
        );
    }
    assert!(listen.quiet_for(Duration::from_millis(300)).await);

    // Read back in pages: every message once, with its payload.
    let mut after = at(&epoch, 0);
    let mut read_back = Vec::new();
    loop {
        let read = f
            .store
            .read_after(&f.db, chan, &after, 500, &keep(10_000))
            .await
            .unwrap();
        assert_eq!(read.gap, None);
        let Some(last) = read.messages.last() else {
            break;
        };
        after.offset = last.offset;
        read_back.extend(read.messages.into_iter().map(|m| (m.offset, m.payload)));
    }
    assert_eq!(read_back, sent.into_iter().collect::<Vec<_>>());
}

#[tokio::test]
async fn payloads_of_64_kib_and_1_mib_round_trip() {
    let f = Fixture::new().await;
    let mut listen = f.listen().await;
    let chan = "big";
    let kib64 = "é€😀x".repeat(64 * 1024 / 10 + 1);
    let mib = "0123456789abcdef".repeat(64 * 1024);
    assert!(kib64.len() >= 64 * 1024 && mib.len() == 1024 * 1024);

    let p1 = f.publish(chan, &kib64).await;
    let sql = format!("select {}.publish($1, $2)", f.s());
    let o2: i64 = f.db.query_one(&sql, &[&chan, &mib]).await.unwrap().get(0);
    assert_eq!((p1.offset, o2), (1, 2));

    let refs = vec![next_ref(&mut listen).await, next_ref(&mut listen).await];
    let fetched = f.store.fetch(&f.db, &refs).await.unwrap();
    assert_eq!(fetched, vec![Some(kib64.clone()), Some(mib.clone())]);

    let read = f.read_after(chan, &at(&p1.epoch, 0), &keep(10)).await;
    assert_eq!(read.messages[0].payload, kib64);
    assert_eq!(read.messages[1].payload, mib);
}

#[tokio::test]
async fn fetch_serves_references_in_order_and_only_real_ones() {
    let f = Fixture::new().await;
    let mut listen = f.listen().await;
    let a = f.publish("a", "a1").await;
    f.publish("b", "b1").await;
    f.publish("a", "a2").await;
    let mut refs = Vec::new();
    for _ in 0..3 {
        refs.push(next_ref(&mut listen).await);
    }
    let wrong_epoch = Reference {
        epoch: "AAAAAAAAAAAA".into(),
        ..refs[0].clone()
    };
    let missing_offset = Reference {
        offset: 99,
        ..refs[0].clone()
    };
    let unknown_channel = Reference {
        channel: "nobody".into(),
        ..refs[0].clone()
    };
    let asked = [
        refs[2].clone(),
        wrong_epoch,
        refs[0].clone(),
        missing_offset,
        unknown_channel,
        refs[1].clone(),
        refs[2].clone(),
    ];
    let got = f.store.fetch(&f.db, &asked).await.unwrap();
    let want = [
        Some("a2"),
        None,
        Some("a1"),
        None,
        None,
        Some("b1"),
        Some("a2"),
    ];
    assert_eq!(got, want.map(|w| w.map(str::to_owned)).to_vec());
    assert_eq!(f.store.fetch(&f.db, &[]).await.unwrap(), vec![]);
    assert_eq!(refs[0].position(), a);
}

#[tokio::test]
async fn reads_page_across_the_seam_while_publishing_goes_on() {
    const TOTAL: i64 = 300;
    let f = Fixture::new().await;
    let chan = "seam";
    let epoch = f.publish(chan, "m1").await.epoch;
    let store = f.store.clone();
    let publisher = tokio::spawn(async move {
        let client = db().await;
        for i in 2..=TOTAL {
            store
                .publish(&client, chan, &format!("m{i}"))
                .await
                .unwrap();
        }
    });

    let mut after = at(&epoch, 0);
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while after.offset < TOTAL {
            let read = f
                .store
                .read_after(&f.db, chan, &after, 7, &keep(10_000))
                .await
                .unwrap();
            assert_eq!(read.gap, None, "after {after}");
            assert_eq!(read.epoch, epoch);
            assert!(read.messages.len() <= 7);
            for m in read.messages {
                assert_eq!(m.offset, after.offset + 1);
                assert_eq!(m.payload, format!("m{}", m.offset));
                after.offset = m.offset;
                seen.push(m.offset);
            }
        }
    })
    .await
    .expect("the reader caught up");
    publisher.await.unwrap();
    assert_eq!(seen, (1..=TOTAL).collect::<Vec<_>>());
    let read = f.read_after(chan, &after, &keep(10_000)).await;
    assert_eq!(
        (read.gap, read.messages.len(), read.last_offset),
        (None, 0, TOTAL)
    );
}

#[tokio::test]
async fn a_gap_when_the_position_is_older_than_what_is_kept() {
    let f = Fixture::new().await;
    let chan = "old";
    let epoch = f.publish_numbered(chan, 10).await;
    let retention = keep(4);
    assert_eq!(f.store.prune(&f.db, &retention).await.unwrap(), 6);
    assert_eq!(f.stored(chan).await, vec![7, 8, 9, 10]);

    let read = f.read_after(chan, &at(&epoch, 2), &retention).await;
    assert_eq!((read.gap, offsets(&read)), (Some(7), vec![7, 8, 9, 10]));
    assert_eq!(read.messages[0].payload, "m7");
    // Right before the first kept one is still honoured.
    let read = f.read_after(chan, &at(&epoch, 6), &retention).await;
    assert_eq!((read.gap, offsets(&read)), (None, vec![7, 8, 9, 10]));
    let read = f.read_after(chan, &at(&epoch, 8), &retention).await;
    assert_eq!((read.gap, offsets(&read)), (None, vec![9, 10]));
    // Everything expired: the gap says where the next message will be.
    let read = f.read_after(chan, &at(&epoch, 2), &keep(0)).await;
    assert_eq!((read.gap, offsets(&read)), (Some(11), vec![]));
}

#[tokio::test]
async fn a_gap_after_the_history_was_reset() {
    let f = Fixture::new().await;
    let chan = "reset";
    let s = f.s();
    let old = f.publish_numbered(chan, 3).await;

    // Deleting the counter row drops the messages and starts a new epoch.
    f.db.execute(
        &format!("delete from {s}.channels where channel = $1"),
        &[&chan],
    )
    .await
    .unwrap();
    assert_eq!(f.stored(chan).await, Vec::<i64>::new());
    let read = f.read_after(chan, &at(&old, 3), &keep(100)).await;
    assert_ne!(read.epoch, old);
    assert_eq!(
        (read.gap, read.last_offset, offsets(&read)),
        (Some(1), 0, vec![])
    );
    // The next message carries the epoch that read announced.
    let next = f.publish(chan, "new 1").await;
    assert_eq!(next, at(&read.epoch, 1));
    let read = f.read_after(chan, &at(&old, 3), &keep(100)).await;
    assert_eq!((read.gap, offsets(&read)), (Some(1), vec![1]));
    assert_eq!(read.messages[0].payload, "new 1");

    // After a restore, renewing the epochs keeps the messages but not the positions.
    f.publish(chan, "new 2").await;
    f.db.batch_execute(&format!("update {s}.channels set epoch = default"))
        .await
        .unwrap();
    let renewed = f.store.head(&f.db, chan).await.unwrap().unwrap();
    assert_ne!(renewed.epoch, next.epoch);
    let read = f.read_after(chan, &at(&next.epoch, 2), &keep(100)).await;
    assert_eq!((read.gap, offsets(&read)), (Some(1), vec![1, 2]));

    // TRUNCATE empties the store as well.
    f.db.batch_execute(&format!("truncate {s}.channels"))
        .await
        .unwrap();
    assert_eq!(f.stored(chan).await, Vec::<i64>::new());
    assert_eq!(f.publish(chan, "again").await.offset, 1);
}

#[tokio::test]
async fn a_gap_when_ahead_of_the_channel_or_in_another_epoch() {
    let f = Fixture::new().await;
    let chan = "ahead";
    let epoch = f.publish_numbered(chan, 3).await;
    for after in [at(&epoch, 4), at(&epoch, i64::MAX), at("AAAAAAAAAAAA", 2)] {
        let read = f.read_after(chan, &after, &keep(100)).await;
        assert_eq!(
            (read.gap, offsets(&read)),
            (Some(1), vec![1, 2, 3]),
            "{after}"
        );
        assert_eq!(read.epoch, epoch);
    }
    // Caught up exactly: nothing to read, nothing missed.
    let read = f.read_after(chan, &at(&epoch, 3), &keep(100)).await;
    assert_eq!(
        (read.gap, offsets(&read), read.last_offset),
        (None, vec![], 3)
    );
}

#[tokio::test]
async fn a_position_on_a_channel_without_history_gets_a_gap_and_the_coming_epoch() {
    let f = Fixture::new().await;
    let chan = "fresh";
    assert_eq!(f.store.head(&f.db, chan).await.unwrap(), None);
    let read = f.read_after(chan, &at("AAAAAAAAAAAA", 5), &keep(100)).await;
    assert_eq!(
        (read.gap, read.last_offset, offsets(&read)),
        (Some(1), 0, vec![])
    );
    let head = f.store.head(&f.db, chan).await.unwrap().unwrap();
    assert_eq!(head, at(&read.epoch, 0));
    assert_eq!(f.publish(chan, "first").await, at(&read.epoch, 1));
}

#[tokio::test]
async fn retention_by_count_is_exact_on_read_before_any_prune() {
    let f = Fixture::new().await;
    let chan = "count";
    let epoch = f.publish_numbered(chan, 20).await;
    let five = keep(5);

    let last = f
        .store
        .last_n(&f.db, chan, 100, &five)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (offsets(&last), last.epoch.as_str(), last.gap),
        (vec![16, 17, 18, 19, 20], epoch.as_str(), None)
    );
    let last = f
        .store
        .last_n(&f.db, chan, 2, &five)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(offsets(&last), vec![19, 20]);
    let last = f
        .store
        .last_n(&f.db, chan, 0, &five)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((offsets(&last), last.last_offset), (vec![], 20));

    let read = f.read_after(chan, &at(&epoch, 0), &five).await;
    assert_eq!(
        (read.gap, offsets(&read)),
        (Some(16), vec![16, 17, 18, 19, 20])
    );
    let read = f.read_after(chan, &at(&epoch, 17), &five).await;
    assert_eq!((read.gap, offsets(&read)), (None, vec![18, 19, 20]));
    // Nothing was deleted: the limit is applied by the read itself.
    assert_eq!(f.stored(chan).await.len(), 20);
}

#[tokio::test]
async fn retention_by_age_is_exact_on_read_before_any_prune() {
    let f = Fixture::new().await;
    let chan = "age";
    let epoch = f.publish_numbered(chan, 20).await;
    // Offsets 1-10 were published two hours ago.
    let sql = format!(
        "update {s}.messages m set created_at = m.created_at - interval '2 hours' \
         from {s}.channels c where c.id = m.channel_id and c.channel = $1 and m.\"offset\" <= 10",
        s = f.s()
    );
    f.db.execute(&sql, &[&chan]).await.unwrap();
    let hour = Retention {
        ttl: Duration::from_secs(3600),
        max_count: 1000,
    };
    let last = f
        .store
        .last_n(&f.db, chan, 100, &hour)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(offsets(&last), (11..=20).collect::<Vec<_>>());
    let read = f.read_after(chan, &at(&epoch, 3), &hour).await;
    assert_eq!((read.gap, offsets(&read)), (Some(11), (11..=20).collect()));
    // Both limits at once: whichever drops more.
    let both = Retention {
        max_count: 4,
        ..hour
    };
    let read = f.read_after(chan, &at(&epoch, 3), &both).await;
    assert_eq!((read.gap, offsets(&read)), (Some(17), vec![17, 18, 19, 20]));
    // A day's TTL keeps them all; three hours ago nothing was published.
    let read = f.read_after(chan, &at(&epoch, 0), &keep(1000)).await;
    assert_eq!((read.gap, read.messages.len()), (None, 20));
    assert_eq!(f.stored(chan).await.len(), 20);
}

#[tokio::test]
async fn pruning_from_two_connections_deletes_exactly_what_is_beyond_retention() {
    let f = Fixture::new().await;
    let s = f.s();
    // Five channels of 30 messages; in channel k, offsets up to aged[k] are two
    // hours old. Keep an hour and 20 messages.
    let aged = [0, 5, 15, 30, 25];
    for (k, upto) in aged.iter().enumerate() {
        let chan = format!("c{k}");
        f.publish_numbered(&chan, 30).await;
        let sql = format!(
            "update {s}.messages m set created_at = m.created_at - interval '2 hours' \
             from {s}.channels c where c.id = m.channel_id and c.channel = $1 \
             and m.\"offset\" <= $2"
        );
        f.db.execute(&sql, &[&chan, upto]).await.unwrap();
    }
    let retention = Retention {
        ttl: Duration::from_secs(3600),
        max_count: 20,
    };
    let kept_from = |upto: i64| upto.max(10) + 1;
    let expected: i64 = aged.iter().map(|&u| kept_from(u) - 1).sum();

    let (one, two) = (db().await, db().await);
    let (a, b) = tokio::join!(
        f.store.prune_batches(&one, &retention, 7),
        f.store.prune_batches(&two, &retention, 7),
    );
    assert_eq!(a.unwrap() + b.unwrap(), expected as u64);
    for (k, &upto) in aged.iter().enumerate() {
        let want: Vec<i64> = (kept_from(upto)..=30).collect();
        assert_eq!(f.stored(&format!("c{k}")).await, want, "c{k}");
    }
    assert_eq!(f.store.prune(&f.db, &retention).await.unwrap(), 0);
    // The counters are untouched: the next offsets follow on.
    assert_eq!(f.publish("c3", "after").await.offset, 31);

    // From SQL, as a DBA's scheduled job would.
    let sql = format!("select {s}.prune(interval '1 hour', 1)");
    let n: i64 = f.db.query_one(&sql, &[]).await.unwrap().get(0);
    // Each channel keeps its newest: c0, c1 and c2 lose 19, 19 and 14, c3 has
    // only its new message, c4 loses 4.
    assert_eq!(n, 19 + 19 + 14 + 4);
}

#[tokio::test]
async fn hostile_channel_names_round_trip() {
    let f = Fixture::new().await;
    let mut listen = f.listen().await;
    let unicode63 = format!("{}a", "é".repeat(31));
    let channels = [
        "a b",
        " ",
        "it's \"quoted\"",
        "x:1 y 2",
        "100%",
        "'); drop table x; --",
        "\\",
        "日本語 チャンネル",
        unicode63.as_str(),
    ];
    for (i, chan) in channels.iter().enumerate() {
        let p = if i % 2 == 0 {
            f.publish(chan, chan).await
        } else {
            let sql = format!("select {}.publish($1, $1)", f.s());
            let offset: i64 = f.db.query_one(&sql, &[chan]).await.unwrap().get(0);
            f.store
                .head(&f.db, chan)
                .await
                .unwrap()
                .map(|h| at(&h.epoch, offset))
                .unwrap()
        };
        assert_eq!(p.offset, 1);
        let r = next_ref(&mut listen).await;
        assert_eq!((&r.channel[..], r.position()), (*chan, p.clone()));
        assert_eq!(
            f.store.fetch(&f.db, &[r]).await.unwrap(),
            vec![Some(chan.to_string())]
        );
        let read = f.read_after(chan, &at(&p.epoch, 0), &keep(10)).await;
        assert_eq!(read.messages[0].payload, *chan);
    }

    let long = "x".repeat(64);
    for bad in ["", long.as_str(), "a\0b"] {
        let err = f.store.publish(&f.db, bad, "x").await.unwrap_err();
        assert!(matches!(err, HistoryError::InvalidChannel(_)), "{err:?}");
        let err = f
            .store
            .read_after(&f.db, bad, &at("e", 0), 1, &keep(1))
            .await
            .unwrap_err();
        assert!(matches!(err, HistoryError::InvalidChannel(_)), "{err:?}");
    }
    // The table refuses them from SQL too.
    for bad in ["", long.as_str()] {
        let sql = format!("select {}.publish($1, 'x')", f.s());
        let err = f.db.query_one(&sql, &[&bad]).await.unwrap_err();
        assert!(
            err.as_db_error()
                .unwrap()
                .message()
                .contains("check constraint"),
            "{err}"
        );
    }
    // A payload PostgreSQL cannot hold is an error, not a panic.
    let err = f.store.publish(&f.db, "nul", "a\0b").await.unwrap_err();
    assert!(matches!(err, HistoryError::Db(_)), "{err:?}");
    assert_eq!(f.store.head(&f.db, "nul").await.unwrap(), None);
}

#[tokio::test]
async fn publish_many_is_all_or_nothing_and_does_not_deadlock() {
    let f = Fixture::new().await;
    let s = f.s();
    let got = f
        .store
        .publish_many(&f.db, &[("b", "b1"), ("a", "a1"), ("b", "b2")])
        .await
        .unwrap();
    let (a, b) = (
        f.store.head(&f.db, "a").await.unwrap().unwrap().epoch,
        f.store.head(&f.db, "b").await.unwrap().unwrap().epoch,
    );
    assert_eq!(got, vec![at(&b, 1), at(&a, 1), at(&b, 2)]);
    let read = f.read_after("b", &at(&b, 0), &keep(10)).await;
    assert_eq!(read.messages[1].payload, "b2");

    // One bad message undoes the others.
    let sql = format!("select * from {s}.publish_many(array['a', 'c'], array['a2', null])");
    assert!(f.db.query(&sql, &[]).await.is_err());
    let err = f
        .store
        .publish_many(&f.db, &[("a", "a2"), ("c", "bad\0")])
        .await
        .unwrap_err();
    assert!(matches!(err, HistoryError::Db(_)), "{err:?}");
    assert_eq!(f.store.head(&f.db, "a").await.unwrap(), Some(at(&a, 1)));
    assert_eq!(f.store.head(&f.db, "c").await.unwrap(), None);
    let sql = format!("select * from {s}.publish_many(array['a'], array['x', 'y'])");
    let err = f.db.query(&sql, &[]).await.unwrap_err();
    let message = err.as_db_error().unwrap().message();
    assert!(message.contains("one payload per channel"), "{message}");

    // Opposite orders from two connections, in explicit transactions: no deadlock.
    let run = |order: [&'static str; 2]| {
        let store = f.store.clone();
        tokio::spawn(async move {
            let mut client = db().await;
            for i in 0..50 {
                let tx = client.transaction().await.unwrap();
                let msgs = [(order[0], "x"), (order[1], "y")];
                store.publish_many(&tx, &msgs).await.unwrap();
                if i % 5 == 0 {
                    tokio::task::yield_now().await;
                }
                tx.commit().await.unwrap();
            }
        })
    };
    let (x, y) = tokio::join!(run(["d", "e"]), run(["e", "d"]));
    x.unwrap();
    y.unwrap();
    assert_eq!(f.store.head(&f.db, "d").await.unwrap().unwrap().offset, 100);
    assert_eq!(f.store.head(&f.db, "e").await.unwrap().unwrap().offset, 100);
}

#[tokio::test]
async fn publish_works_from_a_trigger_in_the_writing_transaction() {
    let mut f = Fixture::new().await;
    let mut listen = f.listen().await;
    let s = f.s();
    f.db.batch_execute(&format!(
        "create table {s}.orders (id int primary key, note text not null);
         create function {s}.announce_order() returns trigger language plpgsql as $$
         begin perform {s}.publish('orders', new.note); return new; end $$;
         create trigger announce after insert on {s}.orders
             for each row execute function {s}.announce_order();"
    ))
    .await
    .unwrap();
    let insert = format!("insert into {s}.orders values ($1, $2)");
    let tx = f.db.transaction().await.unwrap();
    tx.execute(&insert, &[&1, &"rolled back"]).await.unwrap();
    tx.rollback().await.unwrap();
    f.db.execute(&insert, &[&2, &"first order"]).await.unwrap();

    let r = next_ref(&mut listen).await;
    assert_eq!((r.channel.as_str(), r.offset), ("orders", 1));
    let fetched = f.store.fetch(&f.db, &[r]).await.unwrap();
    assert_eq!(fetched, vec![Some("first order".to_owned())]);
    assert!(listen.quiet_for(Duration::from_millis(300)).await);
}

#[tokio::test]
async fn a_plain_notify_on_a_history_channel_is_not_kept() {
    let f = Fixture::new().await;
    notify("plain", "not kept").await;
    assert_eq!(f.store.head(&f.db, "plain").await.unwrap(), None);
    let last = f.store.last_n(&f.db, "plain", 10, &keep(10)).await.unwrap();
    assert_eq!(last, None);
}

#[tokio::test]
async fn a_page_read_stops_before_its_bytes_and_says_it_was_cut() {
    let f = Fixture::new().await;
    let chan = "bytes";
    let sizes = [300_000, 300_000, 300_000, 2_000_000, 10, 10];
    let mut epoch = String::new();
    for (i, size) in sizes.iter().enumerate() {
        let payload = format!("{i}").repeat(*size);
        epoch = f.publish(chan, &payload).await.epoch;
    }
    let page = async |from: i64, limit: i64| {
        f.store
            .read_page(&f.db, chan, &at(&epoch, from), limit, 1 << 20, &keep(100))
            .await
            .unwrap()
    };
    // Three fit in 1 MiB; the fourth is left out, and nothing of it is read.
    let read = page(0, 500).await;
    assert_eq!((offsets(&read), read.cut), (vec![1, 2, 3], true));
    assert!(read.messages.iter().all(|m| m.payload.len() == 300_000));
    // A message larger than the page comes alone.
    let read = page(3, 500).await;
    assert_eq!((offsets(&read), read.cut), (vec![4], true));
    assert_eq!(read.messages[0].payload.len(), 2_000_000);
    // What is left fits: not cut. The count cuts too, unless nothing is left.
    let read = page(4, 500).await;
    assert_eq!((offsets(&read), read.cut), (vec![5, 6], false));
    let read = page(4, 1).await;
    assert_eq!((offsets(&read), read.cut), (vec![5], true));
    let read = page(5, 1).await;
    assert_eq!((offsets(&read), read.cut), (vec![6], false));
    // Without a byte limit, everything.
    let read = f.read_after(chan, &at(&epoch, 0), &keep(100)).await;
    assert_eq!((offsets(&read), read.cut), (vec![1, 2, 3, 4, 5, 6], false));
}
