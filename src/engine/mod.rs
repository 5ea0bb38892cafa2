//! The running bridge: the listener task and its hub, the write pool, the meta
//! task and the socket tasks, and [`Engine`], the state they share; with history
//! channels, the store's tasks (migration, pruning), the listener's store work
//! (`catchup`) and the sockets' replays (`resume`).

pub(crate) mod catchup;
pub(crate) mod codec_io;
pub(crate) mod frame;
pub(crate) mod history;
pub(crate) mod hub;
pub(crate) mod limits;
pub(crate) mod listener;
pub(crate) mod meta;
pub(crate) mod outbox;
pub(crate) mod pace;
pub(crate) mod publisher;
pub(crate) mod resume;
pub(crate) mod session;
pub(crate) mod socket;

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use http::HeaderValue;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    time::timeout,
};

use crate::{
    auth::{Authorizer, Grant, Scope},
    config::{Config, Values, normalize_origin},
    mapping::Mapping,
    refusal::Refusal,
    stats::{Counters, Stats},
};

use self::{
    history::History,
    limits::{Handshakes, PerSub, SubPlace},
    listener::{ListenerHandle, Subscription},
    meta::{Meta, MetaClaims},
    publisher::Publisher,
    socket::CLOSE_TIMEOUT,
};

/// What an admitted socket or event stream holds while it lives: its place
/// under `max_sockets` and under its `sub`'s limit.
pub(crate) struct Place {
    _socket: OwnedSemaphorePermit,
    /// Boxed: one pointer in every socket's state while the limit is off.
    _sub: Option<Box<SubPlace>>,
}

/// What every service and socket of one layer shares.
pub(crate) struct Engine {
    pub(crate) authorizer: Authorizer,
    pub(crate) listener: ListenerHandle,
    pub(crate) publisher: Publisher,
    pub(crate) mapping: Mapping,
    /// History channels, when `PGWS_HISTORY` is set.
    pub(crate) history: Option<Arc<History>>,
    /// The meta task, when a meta channel is configured.
    pub(crate) meta: Option<Meta>,
    /// The checked settings.
    pub(crate) settings: Values,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) counters: Arc<Counters>,
    /// One permit per open socket (or handshake in progress).
    pub(crate) sockets: Arc<Semaphore>,
    /// `max_sockets_per_sub`, when set.
    pub(crate) per_sub: Option<PerSub>,
    /// `max_handshakes_per_second`, when set.
    pub(crate) handshakes: Option<Handshakes>,
    pub(crate) socket_ids: AtomicU64,
}

impl Engine {
    /// Starts the listener task and the write pool. Neither needs the database
    /// to be up: the listener retries forever and the pool connects on demand.
    pub(crate) fn start(config: Config) -> Self {
        let Config { values, db, keys } = config;
        let mapping = Mapping::new(values.listen_channel.as_deref());
        let counters = Arc::new(Counters::default());
        let publisher = Publisher::new(db.clone(), values.pool_size);
        let history = History::start(&values, &publisher, &counters);
        let listener = listener::spawn(
            db,
            mapping.clone(),
            values.check_listener_interval(),
            counters.clone(),
            history.clone(),
        );
        let meta = values.meta_channel.clone().map(|channel| {
            let claims = MetaClaims::parse(values.meta_claims.as_deref());
            Meta::spawn(channel, claims, publisher.clone(), counters.clone())
        });
        Engine {
            authorizer: Authorizer::new(
                keys,
                values.audience.clone(),
                values.leeway,
                values.max_channels,
                mapping.clone(),
            ),
            listener,
            publisher,
            history,
            mapping,
            meta,
            shutdown: watch::channel(false).0,
            counters,
            sockets: Arc::new(Semaphore::new(values.max_sockets)),
            per_sub: PerSub::new(values.max_sockets_per_sub),
            handshakes: Handshakes::new(values.max_handshakes_per_second),
            settings: values,
            socket_ids: AtomicU64::new(1),
        }
    }

    /// A number for the socket's log span.
    pub(crate) fn next_socket_id(&self) -> u64 {
        self.socket_ids.fetch_add(1, Ordering::Relaxed)
    }

    /// No list allows any origin; a request without `Origin` (not a browser) passes.
    pub(crate) fn origin_allowed(&self, origin: Option<&HeaderValue>) -> bool {
        let (Some(list), Some(origin)) = (&self.settings.allowed_origins, origin) else {
            return true;
        };
        let origin = origin.to_str().unwrap_or_default();
        list.iter()
            .any(|allowed| allowed == &normalize_origin(origin))
    }

    /// What every socket and event stream passes first, in this order: not
    /// shutting down, a place under the socket limit, a token, a place under
    /// its `sub`'s limit, then a share of the handshakes of this second. The
    /// places are held while it lives. A client refused for its own sockets
    /// spends nothing of the handshake rate, so one user's flood leaves the
    /// others their share.
    pub(crate) fn admit(
        &self,
        channel: Option<&str>,
        token: &str,
    ) -> Result<(Place, Grant), Refusal> {
        self.admit_with(|a| a.authorize(channel, token), |grant| grant)
    }

    /// The same for a session socket (PROTOCOL.md §17), which keeps its scope.
    pub(crate) fn admit_session(
        &self,
        channel: Option<&str>,
        token: &str,
    ) -> Result<(Place, (Grant, Scope)), Refusal> {
        self.admit_with(|a| a.authorize_session(channel, token), |(grant, _)| grant)
    }

    fn admit_with<T>(
        &self,
        authorize: impl FnOnce(&Authorizer) -> Result<T, Refusal>,
        grant_of: impl Fn(&T) -> &Grant,
    ) -> Result<(Place, T), Refusal> {
        if *self.shutdown.borrow() {
            return Err(Refusal::ShuttingDown);
        }
        let socket = self
            .sockets
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::TooManySockets)?;
        let granted = authorize(&self.authorizer)?;
        let sub = match (&self.per_sub, &grant_of(&granted).sub) {
            (Some(per_sub), Some(sub)) => Some(Box::new(per_sub.take(sub)?)),
            _ => None,
        };
        if let Some(handshakes) = &self.handshakes {
            handshakes.take()?;
        }
        let place = Place {
            _socket: socket,
            _sub: sub,
        };
        Ok((place, granted))
    }

    /// The grant's channels, listened to within the subscribe timeout.
    pub(crate) async fn subscribe(&self, grant: &Grant) -> Result<Subscription, Refusal> {
        let settings = &self.settings;
        let subscribe = self.listener.subscribe(
            grant.channels.clone(),
            settings.queue_length,
            settings.queue_bytes,
        );
        match timeout(self.settings.subscribe_timeout, subscribe).await {
            Ok(Some(sub)) => Ok(sub),
            _ => Err(Refusal::DatabaseUnavailable),
        }
    }

    /// Tells every socket to close, and waits (within a bound) for them to end.
    pub(crate) async fn shutdown(&self) {
        self.shutdown.send_replace(true);
        let _ = timeout(CLOSE_TIMEOUT * 3, self.shutdown.closed()).await;
    }

    /// The figures now.
    pub(crate) fn stats(&self) -> Stats {
        self.counters.snapshot(self.is_listening())
    }

    /// Whether the listener is listening and, with history, the store is ready.
    pub(crate) fn is_listening(&self) -> bool {
        self.listener.is_connected() && self.history.as_ref().is_none_or(|h| h.is_ready())
    }
}
