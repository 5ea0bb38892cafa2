//! History channels: messages kept in PostgreSQL, resumable by position.
//!
//! This is the store and its types; the engine migrates it, fetches announced
//! messages, replays and catches up from it, and prunes it (`engine::history`,
//! `engine::resume`, `engine::catchup`).
//!
//! # Schema
//!
//! The store lives in one schema (`pgws` by default; 1 to 55 bytes, no `$`),
//! created and migrated by [`Store::migrate`] from `sql/history.sql`, the same
//! file a DBA may apply with `psql`. The file runs in one transaction under
//! `pg_advisory_xact_lock`, records each migration in `<schema>.migrations`, and
//! applies only the missing ones, so instances starting together are safe. A role
//! that finds the store missing or behind and may not create it gets
//! [`HistoryError::Missing`], whose text names the schema and the grant needed.
//!
//! - `<schema>.channels`: one counter row per history channel: `id`, `channel`
//!   (1 to 63 bytes), `epoch`, `last_offset`, `last_at`.
//! - `<schema>.messages`: `(channel_id, offset)` → `created_at`, `payload`.
//!
//! # Offsets
//!
//! Each channel's offsets are 1, 2, 3, … without gaps, in commit order, whoever
//! writes. A sequence cannot do that: `nextval` is not rolled back (a rolled-back
//! publish would leave a gap) and numbers follow call order, not commit order.
//! So `<schema>.publish(channel, payload)` increments the channel's counter row
//! in the caller's transaction. The row lock is held until the transaction ends:
//! writers to one channel take turns, each waiting for the previous one to commit
//! or roll back (a rollback frees the offset for the next writer), while writers
//! to different channels never wait for each other.
//!
//! The cost: one channel's publish rate is bounded by its transactions' commit
//! latency, and a long transaction that published to a channel holds up that
//! channel's other writers until it ends. Transactions publishing to several
//! channels must take them in one order or risk a deadlock error;
//! [`Store::publish_many`] (SQL `publish_many`) sorts them by name.
//!
//! # Epochs
//!
//! Each counter row carries an epoch, 12 random base64url characters (72 bits).
//! A new row gets a new one: the channel's first message, the first after its
//! row was deleted (which deletes its messages too), or a row inserted again by
//! a data-only restore. An old position can so never be taken for a new one.
//! After restoring the whole schema (full dump, physical or point-in-time
//! restore), `update <schema>.channels set epoch = default` renews them all.
//!
//! # Announcements
//!
//! `publish` also runs `pg_notify('<schema>.history', '<offset> <epoch> <channel>')`
//! ([`Store::notify_channel`], [`Reference`]): a reference, not the payload, so a
//! payload may be any text value (PostgreSQL caps one at 1 GB; the 8000-byte
//! `NOTIFY` limit does not apply) and a server listening to that one channel
//! fetches each payload once ([`Store::fetch`]), not once per socket. The offset
//! is decimal, the epoch has no space, and the channel is the rest of the text,
//! verbatim (spaces, quotes, any UTF-8). The store is the truth: a reference
//! whose message is not found (pruned, reset, or a forged `NOTIFY`) delivers
//! nothing. A plain `NOTIFY` on a history channel is not kept and has no offset.
//!
//! # Retention
//!
//! A message is dropped when it is older than the TTL (default 86400 s) or
//! beyond the newest `max_count` (default 1000) of its channel ([`Retention`]).
//! Every read applies both limits, so nothing beyond them is served even before
//! it is deleted; [`Store::prune`] deletes them in bounded batches, one pruning
//! session per store at a time (`pg_try_advisory_xact_lock`; others return at
//! once). A message's age counts from when `publish` took its offset; those times
//! never go down along a channel's offsets, so what is kept is always the newest
//! offsets, without holes.
//!
//! # Positions and gaps
//!
//! A [`Position`] is `<epoch>:<offset>` (0: before the first message); a
//! [`Since`] adds a percent-encoded channel (`<epoch>:<offset>:<channel>`).
//! [`Store::read_after`] honours a position when it is in the current epoch, not
//! ahead of the channel, and the next kept message follows it. Otherwise it sets
//! [`Read::gap`] to the next offset the reader will get and reads from the first
//! kept message.
//!
//! # Which channels
//!
//! [`HistoryChannels`] holds `PGWS_HISTORY`'s comma-separated patterns, where `*`
//! matches any run of characters.

// A few items of the store's API (`Store::publish`, `Position::new`, the
// limits' constants, …) serve the `internals` tests and benchmarks only.
#![cfg_attr(not(feature = "internals"), allow(dead_code, unused_imports))]

mod patterns;
mod position;
mod store;

pub use patterns::{HistoryChannels, PatternError};
pub use position::{MAX_EPOCH_LEN, ParseError, Position, Reference, Since};
pub use store::{
    DEFAULT_SCHEMA, HistoryError, MAX_SCHEMA_LEN, Message, PAGE_BYTES, PRUNE_BATCH, Read,
    Retention, SCHEMA_VERSION, Store,
};
