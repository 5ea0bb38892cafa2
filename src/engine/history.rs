//! History channels in the engine: the store's keeper (migration at start-up, and
//! again whenever the store is found gone), the fetch of announced messages for the
//! listener, and writes from sockets.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use bytes::Bytes;
use tokio::{
    sync::{Notify, OwnedSemaphorePermit, Semaphore, watch},
    time::{Instant, MissedTickBehavior, interval, interval_at, timeout},
};

use super::publisher::{PublishError, Publisher};
use crate::{
    config::Values,
    error::error_chain,
    history::{HistoryChannels, HistoryError, Position, Read, Reference, Retention, Store},
    mapping::Notify as PgNotify,
    stats::Counters,
};

/// What the engine knows of history: which channels, the store, the pool.
pub(crate) struct History {
    /// The channels whose messages are kept (`PGWS_HISTORY`).
    pub(crate) channels: HistoryChannels,
    pub(crate) store: Store,
    pub(crate) retention: Retention,
    publisher: Publisher,
    counters: Arc<Counters>,
    /// Whether the store has been migrated (or found current), and not found
    /// gone since.
    ready: watch::Receiver<bool>,
    /// Asks the keeper to look at the store now: a call to it failed.
    check: Arc<Notify>,
    /// Bytes of replay pages in flight (`PGWS_REPLAY_BUDGET`): a page takes
    /// [`PAGE_BYTES`] before it is read and gives them back once written.
    budget: Arc<Semaphore>,
}

/// How long one fetch of announced messages may take before the listener
/// counts its database as lost.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages read from the store at once for a replay.
pub(crate) const PAGE: i64 = 500;
pub(crate) use crate::history::PAGE_BYTES;
/// How often expired history messages are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How often the keeper looks whether a ready store is still there.
const CHECK_EVERY: Duration = Duration::from_secs(10);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

impl History {
    /// `None` when `PGWS_HISTORY` is unset. Starts the keeper, which migrates the
    /// store (retrying until it is current), then watches it and migrates it again
    /// when it is gone.
    pub(crate) fn start(
        values: &Values,
        publisher: &Publisher,
        counters: &Arc<Counters>,
    ) -> Option<Arc<Self>> {
        let channels = HistoryChannels::parse(values.history.as_deref()?)
            .expect("checked by the configuration");
        let store = Store::new(&values.history_schema).expect("checked by the configuration");
        let retention = Retention {
            ttl: values.history_ttl,
            max_count: i64::try_from(values.history_size).unwrap_or(i64::MAX),
        };
        let (ready_tx, ready) = watch::channel(false);
        let check = Arc::new(Notify::new());
        tokio::spawn(keep(
            store.clone(),
            publisher.clone(),
            ready_tx,
            check.clone(),
        ));
        let history = Arc::new(Self {
            channels,
            store,
            retention,
            publisher: publisher.clone(),
            counters: counters.clone(),
            ready,
            check,
            budget: Arc::new(Semaphore::new(
                values.replay_budget.min(Semaphore::MAX_PERMITS),
            )),
        });
        tokio::spawn(prune(Arc::downgrade(&history)));
        Some(history)
    }

    /// Whether the store is ready for use.
    pub(crate) fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Up to [`PAGE`] kept messages of `channel` after `after` (see
    /// [`Store::read_after`]).
    pub(crate) async fn read_after(&self, channel: &str, after: &Position) -> Result<Read, String> {
        self.with_client(async |client| {
            self.store
                .read_after(client, channel, after, PAGE, &self.retention)
                .await
        })
        .await
    }

    /// A replay page's read: up to [`PAGE`] kept messages of `channel` after
    /// `after`, within [`PAGE_BYTES`] of payloads unless it is one message.
    pub(crate) async fn read_page(&self, channel: &str, after: &Position) -> Result<Read, String> {
        let max_bytes = PAGE_BYTES as i64;
        self.with_client(async |client| {
            self.store
                .read_page(client, channel, after, PAGE, max_bytes, &self.retention)
                .await
        })
        .await
    }

    /// Waits for room for one page under the replay budget: replays beyond it
    /// wait their turn (first come, first served), none is refused.
    pub(crate) async fn page_permit(&self) -> OwnedSemaphorePermit {
        // The budget holds at least a page (checked by the configuration).
        self.budget
            .clone()
            .acquire_many_owned(PAGE_BYTES as u32)
            .await
            .expect("the replay budget is never closed")
    }

    /// The channel's epoch and last offset; `None` without a history.
    pub(crate) async fn head(&self, channel: &str) -> Result<Option<Position>, String> {
        self.with_client(async |client| self.store.head(client, channel).await)
            .await
    }

    /// Runs `work` on a pooled connection within [`FETCH_TIMEOUT`].
    async fn with_client<T>(
        &self,
        work: impl AsyncFnOnce(&tokio_postgres::Client) -> Result<T, HistoryError>,
    ) -> Result<T, String> {
        let run = async {
            let client = self.publisher.client().await?;
            let started = Instant::now();
            let result = work(&client).await.map_err(|e| error_chain(&e));
            self.counters
                .history_store_call(started.elapsed().as_secs_f64());
            result
        };
        let result = match timeout(FETCH_TIMEOUT, run).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {FETCH_TIMEOUT:?}")),
        };
        if result.is_err() {
            self.check.notify_one();
        }
        result
    }

    /// Keeps `stored` `(channel, payload)` messages and runs the other NOTIFYs,
    /// all or nothing ([`Publisher::publish_stored`]).
    pub(crate) async fn publish(
        &self,
        stored: &[(&str, &str)],
        notifies: &[PgNotify],
    ) -> Result<(), PublishError> {
        let result = self
            .publisher
            .publish_stored(&self.store, stored, notifies)
            .await;
        if result.is_err() {
            self.check.notify_one();
        }
        result
    }

    /// The payloads of announced messages, in order, in one query; `None` for
    /// one that is gone (pruned, reset, or the announcement was forged). `Err`
    /// when the database did not answer.
    pub(crate) async fn fetch(&self, refs: &[Reference]) -> Result<Vec<Option<Bytes>>, String> {
        let found = self
            .with_client(async |client| self.store.fetch(client, refs).await)
            .await?;
        Ok(found.into_iter().map(|p| p.map(Bytes::from)).collect())
    }
}

/// The store's keeper: the store is ready once migrated, until it is found gone
/// (its schema dropped, say), and then migrated again. Ends with the engine.
async fn keep(store: Store, publisher: Publisher, ready: watch::Sender<bool>, check: Arc<Notify>) {
    while migrate(&store, &publisher, &ready).await {
        ready.send_replace(true);
        if !watch_store(&store, &publisher, &ready, &check).await {
            return;
        }
        ready.send_replace(false);
    }
}

/// Waits until the store is gone or behind, looking every [`CHECK_EVERY`] and
/// whenever a call to it failed; `false` when the engine is gone first. A
/// database that does not answer is the listener's business, not the store's.
async fn watch_store(
    store: &Store,
    publisher: &Publisher,
    ready: &watch::Sender<bool>,
    check: &Notify,
) -> bool {
    let mut every = interval_at(Instant::now() + CHECK_EVERY, CHECK_EVERY);
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = check.notified() => {}
            () = ready.closed() => return false,
        }
        let look = async {
            let client = publisher.client().await.ok()?;
            store.is_current(&**client).await.ok()
        };
        if let Ok(Some(false)) = timeout(FETCH_TIMEOUT, look).await {
            tracing::warn!(
                schema = store.schema(),
                "history store gone or behind; not ready until it is migrated again"
            );
            return true;
        }
    }
}

/// Migrates the store, retrying while the database is down or the store is
/// missing and this role may not create it (a DBA may apply the SQL file
/// meanwhile). `true` once done, `false` when the engine is gone.
async fn migrate(store: &Store, publisher: &Publisher, ready: &watch::Sender<bool>) -> bool {
    let mut backoff = BACKOFF_START;
    let mut missing_reported = false;
    loop {
        let attempt = async {
            let client = publisher.client().await.map_err(Failure::Down)?;
            store.migrate(&**client).await.map_err(Failure::Store)
        };
        let result = tokio::select! {
            r = attempt => r,
            () = ready.closed() => return false,
        };
        match result {
            Ok(version) => {
                tracing::info!(schema = store.schema(), version, "history store ready");
                return true;
            }
            Err(Failure::Store(HistoryError::Missing(what))) => {
                // Once as an error: the operator must act. Then quietly retried.
                if !missing_reported {
                    tracing::error!(schema = store.schema(), "history store unusable: {what}");
                    missing_reported = true;
                }
                backoff = BACKOFF_MAX;
            }
            Err(Failure::Store(e)) => {
                tracing::warn!(error = %error_chain(&e), retry_in = ?backoff, "history store migration failed")
            }
            Err(Failure::Down(e)) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "history store unreachable")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = ready.closed() => return false,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Deletes what the retention drops, once the store is ready and then every
/// [`PRUNE_EVERY`], until the engine is gone. The store's prune works in
/// bounded batches and lets one instance at a time do it.
async fn prune(history: Weak<History>) {
    let Some(mut ready) = history.upgrade().map(|h| h.ready.clone()) else {
        return;
    };
    if ready.wait_for(|r| *r).await.is_err() {
        return;
    }
    let mut every = interval(PRUNE_EVERY);
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(history) = history.upgrade() else {
            return;
        };
        // A store found gone waits for the keeper.
        if !history.is_ready() {
            continue;
        }
        // Not bounded like a read: a backlog is deleted batch after batch.
        let result = async {
            let client = history.publisher.client().await?;
            let started = Instant::now();
            let result = history.store.prune(&**client, &history.retention).await;
            history
                .counters
                .history_store_call(started.elapsed().as_secs_f64());
            result.map_err(|e| error_chain(&e))
        };
        match result.await {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "history pruned"),
            Err(e) => {
                history.check.notify_one();
                tracing::warn!(error = %e, "history pruning failed; retried later")
            }
        }
    }
}

enum Failure {
    Down(String),
    Store(HistoryError),
}
