//! [`PgWsLayer`]: the tower layer, and the state its services share.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use http::HeaderValue;
use tokio::{
    sync::{Semaphore, watch},
    time::timeout,
};
use tower::Layer;

use crate::{
    Config,
    auth::Authorizer,
    listener::{self, ListenerHandle},
    mapping::Mapping,
    meta::Meta,
    publisher::Publisher,
    service::PgWsService,
    socket::CLOSE_TIMEOUT,
    stats::{Counters, Stats},
};

/// A tower layer that takes WebSocket handshakes whose path carries a JWT and
/// bridges them to PostgreSQL `LISTEN`/`NOTIFY`; every other request goes to the
/// wrapped service untouched.
///
/// Cloning is cheap: clones share one listener connection, one write pool and the
/// open sockets. See the [crate docs](crate) for a full example.
#[derive(Clone)]
pub struct PgWsLayer {
    shared: Arc<Shared>,
}

/// What every service and socket of one layer shares.
pub(crate) struct Shared {
    pub(crate) authorizer: Authorizer,
    pub(crate) listener: ListenerHandle,
    pub(crate) publisher: Publisher,
    pub(crate) mapping: Mapping,
    /// The meta task, when a meta channel is configured.
    pub(crate) meta: Option<Meta>,
    pub(crate) prefix: String,
    pub(crate) subscribe_timeout: Duration,
    pub(crate) queue_length: usize,
    pub(crate) ping_interval: Option<Duration>,
    pub(crate) max_message_bytes: usize,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) counters: Arc<Counters>,
    /// One permit per open socket (or handshake in progress).
    pub(crate) sockets: Arc<Semaphore>,
    pub(crate) allowed_origins: Option<Vec<String>>,
    pub(crate) socket_ids: AtomicU64,
}

impl Shared {
    /// A number for the socket's log span.
    pub(crate) fn next_socket_id(&self) -> u64 {
        self.socket_ids.fetch_add(1, Ordering::Relaxed)
    }

    /// No list allows any origin; a request without `Origin` (not a browser) passes.
    pub(crate) fn origin_allowed(&self, origin: Option<&HeaderValue>) -> bool {
        let (Some(list), Some(origin)) = (&self.allowed_origins, origin) else {
            return true;
        };
        let origin = origin.to_str().unwrap_or_default();
        list.iter()
            .any(|allowed| allowed == &normalize_origin(origin))
    }
}

/// Origins compare case-insensitively and without a trailing slash.
pub(crate) fn normalize_origin(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

impl PgWsLayer {
    /// Starts the listener task and the write pool. Neither needs the database
    /// to be up: the listener retries forever and the pool connects on demand.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, since the listener task is spawned here.
    pub fn new(config: Config) -> Self {
        let mapping = Mapping::new(config.listen_channel.as_deref());
        let counters = Arc::new(Counters::default());
        let listener = listener::spawn(
            config.db.clone(),
            mapping.clone(),
            config.check_listener_interval,
            counters.clone(),
        );
        let publisher = Publisher::new(config.db.clone(), config.pool_size);
        let meta = config
            .meta_channel
            .clone()
            .map(|channel| Meta::spawn(channel, publisher.clone(), counters.clone()));
        let shared = Shared {
            authorizer: Authorizer::new(&config),
            listener,
            publisher,
            mapping,
            meta,
            prefix: config.path_prefix,
            subscribe_timeout: config.subscribe_timeout,
            queue_length: config.queue_length,
            ping_interval: config.ping_interval,
            max_message_bytes: config.max_message_bytes,
            shutdown: watch::channel(false).0,
            counters,
            sockets: Arc::new(Semaphore::new(config.max_sockets)),
            allowed_origins: config.allowed_origins,
            socket_ids: AtomicU64::new(1),
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// Closes every socket with `1001 Going away` after flushing what is queued for
    /// it and finishing its in-flight writes, and refuses new handshakes with `503`.
    /// Resolves when every socket has ended, or after about 15 s at most.
    pub async fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
        let _ = timeout(CLOSE_TIMEOUT * 3, self.shared.shutdown.closed()).await;
    }

    /// This layer's figures now: open sockets, channels, deliveries, refusals, the
    /// listener's state. The same figures go to the `metrics` facade.
    pub fn stats(&self) -> Stats {
        self.shared
            .counters
            .snapshot(self.shared.listener.is_connected())
    }

    /// Whether the listener is connected and listening.
    pub fn is_listening(&self) -> bool {
        self.shared.listener.is_connected()
    }

    /// `pg_listening_channels()` of the listener's own session, or `None` while it is
    /// disconnected or when the answer takes over 5 s. Meant for health checks and tests.
    pub async fn listening_channels(&self) -> Option<Vec<String>> {
        self.shared.listener.listening().await
    }
}

impl<S> Layer<S> for PgWsLayer {
    type Service = PgWsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PgWsService::new(inner, self.shared.clone())
    }
}

impl fmt::Debug for PgWsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgWsLayer")
            .field("mapping", &self.shared.mapping)
            .field("prefix", &self.shared.prefix)
            .finish_non_exhaustive()
    }
}
