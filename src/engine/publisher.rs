//! The write pool and `pg_notify`.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

use crate::{database::Database, error::error_chain, history::Store, mapping::Notify};

/// Runs NOTIFYs through a `deadpool-postgres` pool.
#[derive(Clone)]
pub(crate) struct Publisher {
    pool: Pool,
}

/// A NOTIFY that did not happen: the database is down or the pool timed out.
#[derive(Debug)]
pub(crate) struct PublishError(pub(crate) String);

const ONE: &str = "select pg_notify($1, $2)";
/// One statement, so several channels are notified all or nothing, in order.
const MANY: &str = "select pg_notify(c, p) from unnest($1::text[], $2::text[]) as t(c, p)";
const POOL_TIMEOUT: Duration = Duration::from_secs(5);

impl Publisher {
    pub(crate) fn new(database: Database, size: usize) -> Self {
        let mut db = database.config;
        if db.get_connect_timeout().is_none() {
            db.connect_timeout(POOL_TIMEOUT);
        }
        if db.get_application_name().is_none() {
            db.application_name("pgws-writer");
        }
        let manager = Manager::from_config(
            db,
            database.connector,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .build()
            .expect("a runtime and a size are set");
        Self { pool }
    }

    /// A connection of the pool, for the history store.
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, String> {
        self.pool.get().await.map_err(|e| error_chain(&e))
    }

    /// Runs the NOTIFYs in one statement: all or nothing. Waiting for a connection
    /// and running the statement take at most 5 s together, so a stuck database
    /// is answered like a down one.
    pub(crate) async fn publish(&self, notifies: &[Notify]) -> Result<(), PublishError> {
        // Boxed: this future is large (pool wait, prepare, execute) and would otherwise
        // be inlined into every socket's task, which is allocated for the socket's life.
        match Box::pin(tokio::time::timeout(POOL_TIMEOUT, self.run(notifies))).await {
            Ok(result) => result,
            Err(_) => Err(PublishError("timed out".into())),
        }
    }

    /// Keeps `stored` `(channel, payload)` messages in the history store and
    /// runs the other NOTIFYs, all in one transaction: all or nothing. Bounded
    /// like [`publish`](Self::publish).
    pub(crate) async fn publish_stored(
        &self,
        store: &Store,
        stored: &[(&str, &str)],
        notifies: &[Notify],
    ) -> Result<(), PublishError> {
        let run = async {
            let mut client = self
                .pool
                .get()
                .await
                .map_err(|e| PublishError(error_chain(&e)))?;
            let failed = |e: &(dyn std::error::Error + 'static)| PublishError(error_chain(e));
            if notifies.is_empty() {
                // One statement is a transaction of its own.
                return store
                    .publish_many(&**client, stored)
                    .await
                    .map(drop)
                    .map_err(|e| failed(&e));
            }
            let tx = client.transaction().await.map_err(|e| failed(&e))?;
            store
                .publish_many(&*tx, stored)
                .await
                .map_err(|e| failed(&e))?;
            notify(&tx, notifies).await.map_err(|e| failed(&e))?;
            tx.commit().await.map_err(|e| failed(&e))
        };
        match Box::pin(tokio::time::timeout(POOL_TIMEOUT, run)).await {
            Ok(result) => result,
            Err(_) => Err(PublishError("timed out".into())),
        }
    }

    async fn run(&self, notifies: &[Notify]) -> Result<(), PublishError> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| PublishError(error_chain(&e)))?;
        notify(&client, notifies)
            .await
            .map_err(|e| PublishError(error_chain(&e)))
    }
}

/// Runs the NOTIFYs in one statement, with statements cached per connection.
async fn notify<C: deadpool_postgres::GenericClient>(
    client: &C,
    notifies: &[Notify],
) -> Result<(), tokio_postgres::Error> {
    let result = match notifies {
        [] => return Ok(()),
        [one] => {
            let stmt = client.prepare_cached(ONE).await;
            match stmt {
                Ok(stmt) => client.execute(&stmt, &[&one.channel, &one.payload]).await,
                Err(e) => Err(e),
            }
        }
        many => {
            let channels: Vec<&str> = many.iter().map(|n| n.channel.as_str()).collect();
            let payloads: Vec<&str> = many.iter().map(|n| n.payload.as_str()).collect();
            match client.prepare_cached(MANY).await {
                Ok(stmt) => client.execute(&stmt, &[&channels, &payloads]).await,
                Err(e) => Err(e),
            }
        }
    };
    result.map(drop)
}
