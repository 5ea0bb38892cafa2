//! The store's SQL, run over any `tokio_postgres` client or transaction.

use std::{fmt, time::Duration};

use postgres_protocol::escape::{escape_identifier, escape_literal};
use tokio_postgres::{
    GenericClient, Row, SimpleQueryMessage, error::SqlState, types::ToSql, types::Type,
};

use super::position::{Position, Reference};
use crate::auth::check_channel_name;

/// The schema's SQL, applied by [`Store::migrate`] and shipped for DBAs.
const INSTALL: &str = include_str!("../../sql/history.sql");

/// The schema version this code expects (the last migration in the SQL file).
pub const SCHEMA_VERSION: i32 = 1;

/// The schema used unless configured otherwise.
pub const DEFAULT_SCHEMA: &str = "pgws";

/// The longest schema name: `<schema>.history` must be a channel name.
pub const MAX_SCHEMA_LEN: usize = 55;

/// Bytes of a replay page at most, both its payloads as read and its frames as
/// rendered, unless it is one message (which always goes).
pub const PAGE_BYTES: usize = 1 << 20;

/// Messages deleted per `prune()` call, each in its own statement.
pub const PRUNE_BATCH: i32 = 10_000;

/// The longest TTL used; longer ones count as this (100 years).
const MAX_TTL_SECS: f64 = 100.0 * 365.25 * 86_400.0;

/// How long messages are kept: a message is dropped when it is older than `ttl`
/// or beyond the newest `max_count` of its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The longest age (default 86400 s); more than 100 years counts as 100 years.
    pub ttl: Duration,
    /// How many messages each channel keeps (default 1000); below 0 counts as 0.
    pub max_count: i64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(86_400),
            max_count: 1000,
        }
    }
}

impl Retention {
    fn ttl_secs(&self) -> f64 {
        self.ttl.as_secs_f64().min(MAX_TTL_SECS)
    }

    fn count(&self) -> i64 {
        self.max_count.max(0)
    }
}

/// A kept message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its offset in the channel's epoch.
    pub offset: i64,
    /// What was published.
    pub payload: String,
}

/// What a read of one channel found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// The channel's current epoch.
    pub epoch: String,
    /// The channel's last offset when read (0: none yet in this epoch).
    pub last_offset: i64,
    /// When the asked position could not be honoured (older than what is kept,
    /// another epoch, or ahead of the channel): the offset of the next message
    /// the reader gets, the first of `messages` if any.
    pub gap: Option<i64>,
    /// Kept messages in offset order, consecutive from the asked position (or
    /// from `gap`). When the last one is below `last_offset`, the limit may
    /// have cut the read (see `cut`): read on after it.
    pub messages: Vec<Message>,
    /// A limit of the read (its count, or its bytes) left kept messages out
    /// after the last one.
    pub cut: bool,
}

/// A store operation that failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum HistoryError {
    /// The schema name is empty, longer than 55 bytes, or holds NUL or `$`.
    InvalidSchema(String),
    /// A channel name is empty, longer than 63 bytes or holds NUL.
    InvalidChannel(String),
    /// The store is missing or behind, or unreadable, and this role may not fix
    /// it; the text names what is missing and what to grant.
    Missing(String),
    /// The channel's counter row was deleted again while being read; retry.
    Vanished(String),
    /// The database failed the operation.
    Db(tokio_postgres::Error),
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidSchema(s) => write!(
                f,
                "invalid history schema name {s:?}: 1 to {MAX_SCHEMA_LEN} bytes without NUL or $"
            ),
            Self::InvalidChannel(c) => write!(
                f,
                "invalid history channel name {c:?}: 1 to 63 bytes without NUL"
            ),
            Self::Missing(what) => f.write_str(what),
            Self::Vanished(c) => write!(f, "history of channel {c:?} was reset while read"),
            Self::Db(e) => match e.as_db_error() {
                Some(db) => write!(f, "history store: {}", db.message()),
                None => write!(f, "history store: {e}"),
            },
        }
    }
}

impl std::error::Error for HistoryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Db(e) => Some(e),
            _ => None,
        }
    }
}

impl From<tokio_postgres::Error> for HistoryError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(e)
    }
}

/// The store in one schema: its SQL, written once with the schema quoted.
///
/// Every method takes a [`tokio_postgres::Client`] or [`Transaction`]
/// (`&**pooled` for a `deadpool-postgres` object) and, but for `prune`, sends
/// one statement in one round trip: `query_typed` parses, binds and executes an
/// unnamed statement with its parameter types given, so no per-connection
/// statement cache is needed; the plans are index lookups, and `publish`'s own
/// statements are cached by PL/pgSQL.
///
/// [`Transaction`]: tokio_postgres::Transaction
#[derive(Debug, Clone)]
pub struct Store {
    schema: String,
    notify_channel: String,
    sql: Statements,
}

#[derive(Debug, Clone)]
struct Statements {
    migrate_prefix: String,
    version: String,
    current_version: String,
    publish_many: String,
    head: String,
    ensure: String,
    read_after: String,
    last_n: String,
    fetch: String,
    prune: String,
}

impl Store {
    /// The store in `schema` (see [`DEFAULT_SCHEMA`]); nothing is sent yet.
    pub fn new(schema: &str) -> Result<Self, HistoryError> {
        // `$` would end the dollar quotes of the SQL file's function bodies.
        if schema.is_empty() || schema.len() > MAX_SCHEMA_LEN || schema.contains(['\0', '$']) {
            return Err(HistoryError::InvalidSchema(schema.to_owned()));
        }
        let s = escape_identifier(schema);
        let ttl = |param: &str| format!("now() - make_interval(secs => {param})");
        let sql = Statements {
            migrate_prefix: format!(
                "select set_config('pgws.history_schema', {}, true);\n",
                escape_literal(schema)
            ),
            version: format!(";\nselect coalesce(max(version), 0) from {s}.migrations"),
            current_version: format!("select coalesce(max(version), 0)::int4 from {s}.migrations"),
            publish_many: format!(
                "select ordinality, epoch, \"offset\" from {s}.publish_many($1, $2)"
            ),
            head: format!("select epoch, last_offset from {s}.channels where channel = $1"),
            ensure: format!(
                "insert into {s}.channels (channel) values ($1) on conflict (channel) do nothing"
            ),
            // The position counts only in the channel's epoch and up to its head;
            // otherwise the read starts from the first kept message.
            read_after: format!(
                "select c.epoch, c.last_offset, m.\"offset\", m.payload \
                 from {s}.channels c left join lateral ( \
                   select q.\"offset\", case when q.upto <= $7 or q.n = 1 then q.payload end \
                     as payload from ( \
                     select m.\"offset\", m.payload, \
                       sum(octet_length(m.payload)) over w as upto, row_number() over w as n \
                     from {s}.messages m \
                     where m.channel_id = c.id \
                       and m.\"offset\" > greatest( \
                         case when c.epoch = $2 and $3 <= c.last_offset then $3 else 0 end, \
                         c.last_offset - $5) \
                       and m.created_at > {ttl} \
                     window w as (order by m.\"offset\" rows unbounded preceding) \
                     order by m.\"offset\" limit $6 \
                   ) q order by q.\"offset\" \
                 ) m on true \
                 where c.channel = $1",
                ttl = ttl("$4")
            ),
            last_n: format!(
                "select c.epoch, c.last_offset, m.\"offset\", m.payload \
                 from {s}.channels c left join lateral ( \
                   select m.\"offset\", m.payload from {s}.messages m \
                   where m.channel_id = c.id \
                     and m.\"offset\" > c.last_offset - least($2, $4) \
                     and m.created_at > {ttl} \
                   order by m.\"offset\" \
                 ) m on true \
                 where c.channel = $1",
                ttl = ttl("$3")
            ),
            fetch: format!(
                "select r.i, m.payload \
                 from unnest($1::text[], $2::text[], $3::int8[]) with ordinality \
                   as r(channel, epoch, \"offset\", i) \
                 join {s}.channels c on c.channel = r.channel and c.epoch = r.epoch \
                 join {s}.messages m on m.channel_id = c.id and m.\"offset\" = r.\"offset\""
            ),
            prune: format!("select {s}.prune(make_interval(secs => $1), $2, $3)"),
        };
        Ok(Self {
            schema: schema.to_owned(),
            notify_channel: format!("{schema}.history"),
            sql,
        })
    }

    /// The schema's name.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The PostgreSQL channel that announces every stored message
    /// (`<schema>.history`), with [`Reference`] payloads.
    pub fn notify_channel(&self) -> &str {
        &self.notify_channel
    }

    /// Creates or migrates the schema (the SQL of `sql/history.sql`) in one
    /// transaction under an advisory lock, so concurrent callers are safe;
    /// returns the schema's version. [`HistoryError::Missing`] when something
    /// is missing and this role may not create it.
    pub async fn migrate<C: GenericClient>(&self, client: &C) -> Result<i32, HistoryError> {
        let batch = format!("{}{INSTALL}{}", self.sql.migrate_prefix, self.sql.version);
        let messages = client.simple_query(&batch).await.map_err(missing)?;
        let version = messages
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(row) => row.get(0).and_then(|v| v.parse().ok()),
                _ => None,
            })
            .unwrap_or(0);
        if version > SCHEMA_VERSION {
            tracing::warn!(
                schema = %self.schema,
                version,
                expected = SCHEMA_VERSION,
                "history store is newer than this pgws"
            );
        }
        Ok(version)
    }

    /// Whether the store is there and current, in one cheap read: `false` when its
    /// schema or its `migrations` table is gone (dropped, or a database restored
    /// without it) or behind, so that [`migrate`](Self::migrate) has work to do.
    pub async fn is_current<C: GenericClient>(&self, client: &C) -> Result<bool, HistoryError> {
        match client.query_typed_one(&self.sql.current_version, &[]).await {
            Ok(row) => Ok(row.try_get::<_, i32>(0)? >= SCHEMA_VERSION),
            Err(e)
                if e.code().is_some_and(|c| {
                    c == &SqlState::UNDEFINED_TABLE || c == &SqlState::INVALID_SCHEMA_NAME
                }) =>
            {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Keeps `payload` on `channel` and announces it, in the client's
    /// transaction (see [`Store::publish_many`]); its position.
    pub async fn publish<C: GenericClient>(
        &self,
        client: &C,
        channel: &str,
        payload: &str,
    ) -> Result<Position, HistoryError> {
        let mut positions = self.publish_many(client, &[(channel, payload)]).await?;
        Ok(positions.pop().expect("one position per message"))
    }

    /// Keeps and announces several `(channel, payload)` messages in one
    /// statement: all or nothing. Their positions, in the same order. Counter
    /// rows are taken in name order, so concurrent callers never deadlock.
    pub async fn publish_many<C: GenericClient>(
        &self,
        client: &C,
        messages: &[(&str, &str)],
    ) -> Result<Vec<Position>, HistoryError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        for (channel, _) in messages {
            check(channel)?;
        }
        let channels: Vec<&str> = messages.iter().map(|m| m.0).collect();
        let payloads: Vec<&str> = messages.iter().map(|m| m.1).collect();
        let rows = client
            .query_typed(
                &self.sql.publish_many,
                &[(&channels, Type::TEXT_ARRAY), (&payloads, Type::TEXT_ARRAY)],
            )
            .await?;
        let mut positions = vec![None; messages.len()];
        for row in rows {
            let i: i64 = row.try_get(0)?;
            let slot = usize::try_from(i - 1)
                .ok()
                .and_then(|i| positions.get_mut(i));
            if let Some(slot) = slot {
                *slot = Some(Position {
                    epoch: row.try_get(1)?,
                    offset: row.try_get(2)?,
                });
            }
        }
        Ok(positions
            .into_iter()
            .map(|p| p.expect("publish_many returns one row per message"))
            .collect())
    }

    /// The channel's epoch and last offset, if it has a history.
    pub async fn head<C: GenericClient>(
        &self,
        client: &C,
        channel: &str,
    ) -> Result<Option<Position>, HistoryError> {
        check(channel)?;
        let row = client
            .query_typed_opt(&self.sql.head, &[(&channel, Type::TEXT)])
            .await?;
        row.map(|row| {
            Ok(Position {
                epoch: row.try_get(0)?,
                offset: row.try_get(1)?,
            })
        })
        .transpose()
    }

    /// Up to `limit` (at least 1) kept messages after `after`, in offset order.
    ///
    /// When `after` cannot be honoured (older than what is kept, another epoch,
    /// or ahead of the channel), [`Read::gap`] is set and the read starts at the
    /// first kept message. A channel without a history gets its counter row
    /// here, so the answer always has the epoch its next messages will carry.
    pub async fn read_after<C: GenericClient>(
        &self,
        client: &C,
        channel: &str,
        after: &Position,
        limit: i64,
        retention: &Retention,
    ) -> Result<Read, HistoryError> {
        self.read_page(client, channel, after, limit, i64::MAX, retention)
            .await
    }

    /// [`Store::read_after`], stopping before the payloads read would pass
    /// `max_bytes`: the messages hold at most that many bytes, or are one
    /// message. The bytes are counted in the database, so what is left out is
    /// never sent.
    pub async fn read_page<C: GenericClient>(
        &self,
        client: &C,
        channel: &str,
        after: &Position,
        limit: i64,
        max_bytes: i64,
        retention: &Retention,
    ) -> Result<Read, HistoryError> {
        check(channel)?;
        let (ttl, count, limit) = (retention.ttl_secs(), retention.count(), limit.max(1));
        let params: [(&(dyn ToSql + Sync), Type); 7] = [
            (&channel, Type::TEXT),
            (&after.epoch, Type::TEXT),
            (&after.offset, Type::INT8),
            (&ttl, Type::FLOAT8),
            (&count, Type::INT8),
            (&limit, Type::INT8),
            (&max_bytes, Type::INT8),
        ];
        for attempt in 0..2 {
            let rows = client.query_typed(&self.sql.read_after, &params).await?;
            if let Some(mut read) = to_read(&rows)? {
                let first = read.messages.first().map(|m| m.offset);
                read.gap = gap(after, &read.epoch, read.last_offset, first);
                let last = read.messages.last().map_or(0, |m| m.offset);
                read.cut |= read.messages.len() as i64 >= limit && last < read.last_offset;
                return Ok(read);
            }
            if attempt == 0 {
                client
                    .execute_typed(&self.sql.ensure, &[(&channel, Type::TEXT)])
                    .await?;
            }
        }
        Err(HistoryError::Vanished(channel.to_owned()))
    }

    /// Up to the last `n` kept messages of the channel, in offset order; `None`
    /// when the channel has no history.
    pub async fn last_n<C: GenericClient>(
        &self,
        client: &C,
        channel: &str,
        n: i64,
        retention: &Retention,
    ) -> Result<Option<Read>, HistoryError> {
        check(channel)?;
        let (ttl, count, n) = (retention.ttl_secs(), retention.count(), n.max(0));
        let rows = client
            .query_typed(
                &self.sql.last_n,
                &[
                    (&channel, Type::TEXT),
                    (&n, Type::INT8),
                    (&ttl, Type::FLOAT8),
                    (&count, Type::INT8),
                ],
            )
            .await?;
        to_read(&rows)
    }

    /// The payloads of the referenced messages, in the same order; `None` for
    /// one that is gone (pruned, or its channel's epoch changed). No retention
    /// applies: this serves announcements of messages just committed.
    pub async fn fetch<C: GenericClient>(
        &self,
        client: &C,
        refs: &[Reference],
    ) -> Result<Vec<Option<String>>, HistoryError> {
        let mut payloads = vec![None; refs.len()];
        if refs.is_empty() {
            return Ok(payloads);
        }
        let channels: Vec<&str> = refs.iter().map(|r| r.channel.as_str()).collect();
        let epochs: Vec<&str> = refs.iter().map(|r| r.epoch.as_str()).collect();
        let offsets: Vec<i64> = refs.iter().map(|r| r.offset).collect();
        let rows = client
            .query_typed(
                &self.sql.fetch,
                &[
                    (&channels, Type::TEXT_ARRAY),
                    (&epochs, Type::TEXT_ARRAY),
                    (&offsets, Type::INT8_ARRAY),
                ],
            )
            .await?;
        for row in rows {
            let i: i64 = row.try_get(0)?;
            if let Some(slot) = usize::try_from(i - 1)
                .ok()
                .and_then(|i| payloads.get_mut(i))
            {
                *slot = Some(row.try_get(1)?);
            }
        }
        Ok(payloads)
    }

    /// Deletes the messages beyond `retention`, [`PRUNE_BATCH`] per statement,
    /// until none is left; how many. Another session pruning the same store at
    /// the same time makes this one return early (it is doing the work).
    pub async fn prune<C: GenericClient>(
        &self,
        client: &C,
        retention: &Retention,
    ) -> Result<u64, HistoryError> {
        self.prune_batches(client, retention, PRUNE_BATCH).await
    }

    /// [`Store::prune`] with another batch size (at least 1).
    pub async fn prune_batches<C: GenericClient>(
        &self,
        client: &C,
        retention: &Retention,
        batch: i32,
    ) -> Result<u64, HistoryError> {
        let (ttl, count, batch) = (retention.ttl_secs(), retention.count(), batch.max(1));
        let mut total = 0;
        loop {
            let row = client
                .query_typed_one(
                    &self.sql.prune,
                    &[
                        (&ttl, Type::FLOAT8),
                        (&count, Type::INT8),
                        (&batch, Type::INT4),
                    ],
                )
                .await?;
            let deleted: i64 = row.try_get(0)?;
            total += u64::try_from(deleted).unwrap_or(0);
            if deleted < i64::from(batch) {
                return Ok(total);
            }
        }
    }
}

fn check(channel: &str) -> Result<(), HistoryError> {
    check_channel_name(channel).map_err(|_| HistoryError::InvalidChannel(channel.to_owned()))
}

/// The store's own "missing" errors name what is missing; other errors stay
/// database errors.
fn missing(e: tokio_postgres::Error) -> HistoryError {
    match e.as_db_error() {
        Some(db)
            if db.code() == &SqlState::INSUFFICIENT_PRIVILEGE
                && db.message().starts_with("pgws history store:") =>
        {
            let hint = db.hint().map(|h| format!(" ({h})")).unwrap_or_default();
            HistoryError::Missing(format!("{}{hint}", db.message()))
        }
        _ => HistoryError::Db(e),
    }
}

/// Rows of `(epoch, last_offset, offset?, payload?)`; `None` without any (no
/// counter row). A message without its payload was left out by a byte limit,
/// and so is every one after it.
fn to_read(rows: &[Row]) -> Result<Option<Read>, HistoryError> {
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let mut messages = Vec::with_capacity(rows.len());
    let mut cut = false;
    for row in rows {
        let Some(offset) = row.try_get::<_, Option<i64>>(2)? else {
            continue;
        };
        let Some(payload) = row.try_get::<_, Option<String>>(3)? else {
            cut = true;
            break;
        };
        messages.push(Message { offset, payload });
    }
    Ok(Some(Read {
        epoch: first.try_get(0)?,
        last_offset: first.try_get(1)?,
        gap: None,
        messages,
        cut,
    }))
}

/// The gap rule: a position is honoured when it is in the current epoch, not
/// ahead of the channel, and the next kept message follows it. Otherwise the
/// reader is told the next offset it gets: the first kept message read, or the
/// head's successor when nothing is kept.
fn gap(after: &Position, epoch: &str, last_offset: i64, first_read: Option<i64>) -> Option<i64> {
    let next = first_read.unwrap_or(last_offset + 1);
    let honoured = after.epoch == epoch
        && after.offset <= last_offset
        && Some(next) == after.offset.checked_add(1);
    (!honoured).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(epoch: &str, offset: i64) -> Position {
        Position {
            epoch: epoch.into(),
            offset,
        }
    }

    #[test]
    fn the_gap_rule() {
        // Honoured: next kept follows, or caught up with the head.
        assert_eq!(gap(&at("e", 4), "e", 9, Some(5)), None);
        assert_eq!(gap(&at("e", 9), "e", 9, None), None);
        assert_eq!(gap(&at("e", 0), "e", 0, None), None);
        // Older than kept: from the first kept one, or past the head.
        assert_eq!(gap(&at("e", 2), "e", 9, Some(6)), Some(6));
        assert_eq!(gap(&at("e", 2), "e", 9, None), Some(10));
        // Another epoch, even with the same offsets.
        assert_eq!(gap(&at("old", 4), "e", 9, Some(5)), Some(5));
        assert_eq!(gap(&at("old", 0), "e", 0, None), Some(1));
        // Ahead of the channel.
        assert_eq!(gap(&at("e", 12), "e", 9, Some(3)), Some(3));
        assert_eq!(gap(&at("e", i64::MAX), "e", 9, None), Some(10));
    }

    #[test]
    fn schema_names_are_checked_and_quoted() {
        for bad in ["", "a\0b", "a$fn$b", &"s".repeat(56)] {
            assert!(matches!(
                Store::new(bad),
                Err(HistoryError::InvalidSchema(_))
            ));
        }
        let store = Store::new(&"s".repeat(55)).unwrap();
        assert_eq!(store.notify_channel().len(), 63);
        let store = Store::new("we\"ird 'one'").unwrap();
        assert_eq!(store.notify_channel(), "we\"ird 'one'.history");
        assert!(store.sql.head.contains("from \"we\"\"ird 'one'\".channels"));
        assert!(
            store
                .sql
                .migrate_prefix
                .contains("set_config('pgws.history_schema', 'we\"ird ''one''', true)")
        );
    }

    #[test]
    fn retention_is_clamped() {
        let r = Retention {
            ttl: Duration::MAX,
            max_count: -5,
        };
        assert_eq!(r.ttl_secs(), MAX_TTL_SECS);
        assert_eq!(r.count(), 0);
        assert_eq!(Retention::default().ttl, Duration::from_secs(86_400));
        assert_eq!(Retention::default().max_count, 1000);
    }

    #[test]
    fn bad_channels_are_refused_before_any_round_trip() {
        let e = check(&"x".repeat(64)).unwrap_err();
        assert!(matches!(e, HistoryError::InvalidChannel(_)));
        assert!(e.to_string().contains("1 to 63 bytes"));
        assert!(check("").is_err() && check("a\0").is_err() && check("é").is_ok());
    }
}
