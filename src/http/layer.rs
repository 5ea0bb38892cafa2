//! [`PgWsLayer`]: the tower layer; the state its services share is the [`Engine`].

use std::{fmt, sync::Arc};

use tower::Layer;

use crate::{config::Config, engine::Engine, stats::Stats};

use super::service::PgWsService;

/// A tower layer that takes WebSocket handshakes whose path carries a JWT and
/// bridges them to PostgreSQL `LISTEN`/`NOTIFY`; every other request goes to the
/// wrapped service untouched.
///
/// Cloning is cheap: clones share one listener connection, one write pool and the
/// open sockets. See the [crate docs](crate) for a full example.
#[derive(Clone)]
pub struct PgWsLayer {
    engine: Arc<Engine>,
}

impl PgWsLayer {
    /// Starts the listener task and the write pool. Neither needs the database
    /// to be up: the listener retries forever and the pool connects on demand.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, since the listener task is spawned here.
    pub fn new(config: Config) -> Self {
        Self {
            engine: Arc::new(Engine::start(config)),
        }
    }

    /// Closes every socket with `1001 Going away` after flushing what is queued for
    /// it and finishing its in-flight writes, and refuses new handshakes with `503`.
    /// Resolves when every socket has ended, or after about 15 s at most.
    pub async fn shutdown(&self) {
        self.engine.shutdown().await;
    }

    /// This layer's figures now: open sockets, channels, deliveries, refusals, the
    /// listener's state. The same figures go to the `metrics` facade.
    pub fn stats(&self) -> Stats {
        self.engine.stats()
    }

    /// Whether the listener is connected and listening, and, with history
    /// channels, the history store is ready (migrated, or found current when
    /// this role may not migrate it).
    pub fn is_listening(&self) -> bool {
        self.engine.is_listening()
    }

    /// `pg_listening_channels()` of the listener's own session, or `None` while it is
    /// disconnected or when the answer takes over 5 s. Meant for health checks and tests.
    pub async fn listening_channels(&self) -> Option<Vec<String>> {
        self.engine.listener.listening().await
    }
}

impl<S> Layer<S> for PgWsLayer {
    type Service = PgWsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PgWsService::new(inner, self.engine.clone())
    }
}

impl fmt::Debug for PgWsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgWsLayer")
            .field("mapping", &self.engine.mapping)
            .field("prefix", &self.engine.settings.path_prefix)
            .finish_non_exhaustive()
    }
}
