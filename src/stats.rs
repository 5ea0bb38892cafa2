//! Counters: kept in atomics for [`PgWsLayer::stats`](crate::PgWsLayer::stats) and
//! reported through the `metrics` facade for whatever exporter the user installs.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use metrics::{counter, gauge, histogram};

use crate::{auth::Mode, refusal::Refusal};

/// The live counters of one layer. Each event reaches the `metrics` facade before
/// the atomics, so a figure seen in [`Stats`] is already in the exporter too.
#[derive(Default)]
pub(crate) struct Counters {
    /// By [`Transport`], then mode.
    open: [[AtomicI64; 3]; 2],
    channels_listened: AtomicI64,
    pending_joins: AtomicI64,
    notifications_received: AtomicU64,
    notifications_undecodable: AtomicU64,
    frames_delivered: AtomicU64,
    slow_consumer_closes: AtomicU64,
    messages_notified: AtomicU64,
    notify_failures: AtomicU64,
    meta_failures: AtomicU64,
    /// By [`Refusal::label_index`].
    refusals: [AtomicU64; Refusal::LABELS.len()],
    listener_reconnects: AtomicU64,
    queue_usage_bits: AtomicU64,
    history_replays: AtomicU64,
    history_gaps: AtomicU64,
    history_catch_ups: AtomicU64,
    history_store_calls: AtomicU64,
}

fn mode_index(mode: Mode) -> usize {
    match mode {
        Mode::Read => 0,
        Mode::Write => 1,
        Mode::ReadWrite => 2,
    }
}

/// How a reader is connected: the `transport` label of `pgws_sockets_open`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// A WebSocket.
    WebSocket = 0,
    /// A server-sent event stream.
    EventStream = 1,
}

impl Transport {
    /// The label value.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::EventStream => "sse",
        }
    }
}

impl Counters {
    pub(crate) fn socket_opened(&self, mode: Mode) {
        self.opened(Transport::WebSocket, mode);
    }

    pub(crate) fn socket_closed(&self, mode: Mode) {
        self.closed(Transport::WebSocket, mode);
    }

    /// A socket or event stream opens.
    pub(crate) fn opened(&self, transport: Transport, mode: Mode) {
        gauge!("pgws_sockets_open", "mode" => mode.as_str(), "transport" => transport.as_str())
            .increment(1.0);
        self.open[transport as usize][mode_index(mode)].fetch_add(1, Relaxed);
    }

    /// A socket or event stream is closed.
    pub(crate) fn closed(&self, transport: Transport, mode: Mode) {
        gauge!("pgws_sockets_open", "mode" => mode.as_str(), "transport" => transport.as_str())
            .decrement(1.0);
        self.open[transport as usize][mode_index(mode)].fetch_sub(1, Relaxed);
    }

    pub(crate) fn open_sockets(&self) -> u64 {
        self.open
            .iter()
            .flatten()
            .map(|o| o.load(Relaxed).max(0) as u64)
            .sum()
    }

    fn open_of(&self, transport: Transport) -> u64 {
        self.open[transport as usize]
            .iter()
            .map(|o| o.load(Relaxed).max(0) as u64)
            .sum()
    }

    pub(crate) fn channels_listened(&self, n: usize) {
        gauge!("pgws_channels_listened").set(n as f64);
        self.channels_listened.store(n as i64, Relaxed);
    }

    pub(crate) fn pending_joins(&self, n: usize) {
        gauge!("pgws_pending_joins").set(n as f64);
        self.pending_joins.store(n as i64, Relaxed);
    }

    pub(crate) fn notification_received(&self) {
        counter!("pgws_notifications_received_total").increment(1);
        self.notifications_received.fetch_add(1, Relaxed);
    }

    /// Notifications dropped for a channel or payload that is not UTF-8.
    pub(crate) fn notifications_undecodable(&self, n: u64) {
        counter!("pgws_notifications_undecodable_total").increment(n);
        self.notifications_undecodable.fetch_add(n, Relaxed);
    }

    pub(crate) fn frames_delivered(&self, n: u64) {
        counter!("pgws_frames_delivered_total").increment(n);
        self.frames_delivered.fetch_add(n, Relaxed);
    }

    pub(crate) fn slow_consumer_closed(&self) {
        counter!("pgws_slow_consumer_closes_total").increment(1);
        self.slow_consumer_closes.fetch_add(1, Relaxed);
    }

    pub(crate) fn message_notified(&self) {
        counter!("pgws_messages_notified_total").increment(1);
        self.messages_notified.fetch_add(1, Relaxed);
    }

    pub(crate) fn notify_failed(&self) {
        counter!("pgws_notify_failures_total").increment(1);
        self.notify_failures.fetch_add(1, Relaxed);
    }

    pub(crate) fn meta_failed(&self) {
        counter!("pgws_meta_failures_total").increment(1);
        self.meta_failures.fetch_add(1, Relaxed);
    }

    pub(crate) fn refused(&self, refusal: &Refusal) {
        counter!("pgws_handshake_refusals_total", "reason" => refusal.label()).increment(1);
        self.refusals[refusal.label_index()].fetch_add(1, Relaxed);
    }

    pub(crate) fn listener_reconnected(&self) {
        counter!("pgws_listener_reconnects_total").increment(1);
        self.listener_reconnects.fetch_add(1, Relaxed);
    }

    pub(crate) fn queue_usage(&self, usage: f64) {
        gauge!("pgws_notification_queue_usage").set(usage);
        self.queue_usage_bits.store(usage.to_bits(), Relaxed);
    }

    /// A socket's replay from the store starts.
    pub(crate) fn history_replay(&self) {
        counter!("pgws_history_replays_total").increment(1);
        self.history_replays.fetch_add(1, Relaxed);
    }

    /// Gap frames about to be sent.
    pub(crate) fn history_gaps(&self, gaps: u64) {
        if gaps > 0 {
            counter!("pgws_history_gaps_total").increment(gaps);
            self.history_gaps.fetch_add(gaps, Relaxed);
        }
    }

    /// A history channel is being caught up after the listener was away.
    pub(crate) fn history_caught_up(&self) {
        counter!("pgws_history_catch_ups_total").increment(1);
        self.history_catch_ups.fetch_add(1, Relaxed);
    }

    /// One call to the history store took `seconds`.
    pub(crate) fn history_store_call(&self, seconds: f64) {
        histogram!("pgws_history_store_seconds").record(seconds);
        self.history_store_calls.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self, listening: bool) -> Stats {
        let open = |m: Mode| {
            self.open
                .iter()
                .map(|t| t[mode_index(m)].load(Relaxed).max(0) as u64)
                .sum()
        };
        Stats {
            listening,
            open_sockets: self.open_sockets(),
            open_event_streams: self.open_of(Transport::EventStream),
            open_read_sockets: open(Mode::Read),
            open_write_sockets: open(Mode::Write),
            open_read_write_sockets: open(Mode::ReadWrite),
            channels_listened: self.channels_listened.load(Relaxed).max(0) as u64,
            pending_joins: self.pending_joins.load(Relaxed).max(0) as u64,
            notifications_received: self.notifications_received.load(Relaxed),
            notifications_undecodable: self.notifications_undecodable.load(Relaxed),
            frames_delivered: self.frames_delivered.load(Relaxed),
            slow_consumer_closes: self.slow_consumer_closes.load(Relaxed),
            messages_notified: self.messages_notified.load(Relaxed),
            notify_failures: self.notify_failures.load(Relaxed),
            meta_failures: self.meta_failures.load(Relaxed),
            // A repeated label counts at its first place only, so shows once.
            handshake_refusals: Refusal::LABELS
                .iter()
                .zip(&self.refusals)
                .map(|(label, n)| (*label, n.load(Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            listener_reconnects: self.listener_reconnects.load(Relaxed),
            notification_queue_usage: f64::from_bits(self.queue_usage_bits.load(Relaxed)),
            history_replays: self.history_replays.load(Relaxed),
            history_gaps: self.history_gaps.load(Relaxed),
            history_catch_ups: self.history_catch_ups.load(Relaxed),
            history_store_calls: self.history_store_calls.load(Relaxed),
        }
    }
}

/// A snapshot of one layer's figures, from [`PgWsLayer::stats`](crate::PgWsLayer::stats).
///
/// The same figures are reported through the [`metrics`] facade under the names
/// in the README, for any exporter the application installs.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// The listener is connected and listening (and, with history channels, the
    /// history store is ready).
    pub listening: bool,
    /// Sockets open now, all modes, event streams included.
    pub open_sockets: u64,
    /// Of those, server-sent event streams.
    pub open_event_streams: u64,
    /// Sockets open now in mode `r`.
    pub open_read_sockets: u64,
    /// Sockets open now in mode `w`.
    pub open_write_sockets: u64,
    /// Sockets open now in mode `rw`.
    pub open_read_write_sockets: u64,
    /// PostgreSQL channels the listener is `LISTEN`ing to.
    pub channels_listened: u64,
    /// Handshakes waiting for their channels to be listened to. While the database
    /// is down these wait for the listener to reconnect, each until its subscribe
    /// timeout; the figure falls back as they give up.
    pub pending_joins: u64,
    /// Notifications the listener received.
    pub notifications_received: u64,
    /// Notifications dropped because their channel or payload is not UTF-8 (only
    /// a `SQL_ASCII` database lets such a `NOTIFY` through).
    pub notifications_undecodable: u64,
    /// Text frames written to sockets, and events written to event streams.
    pub frames_delivered: u64,
    /// Sockets (and event streams) closed with `1008 Slow consumer`.
    pub slow_consumer_closes: u64,
    /// Client messages NOTIFYed.
    pub messages_notified: u64,
    /// Client messages that could not be NOTIFYed (the socket closed with 1013).
    pub notify_failures: u64,
    /// Meta events that could not be published: dropped because the meta queue was
    /// full, or refused by the database.
    pub meta_failures: u64,
    /// Handshake refusals by reason label (only reasons seen so far).
    pub handshake_refusals: Vec<(&'static str, u64)>,
    /// Times the listener connected again after losing its connection.
    pub listener_reconnects: u64,
    /// The last sampled `pg_notification_queue_usage()` (0 to 1).
    pub notification_queue_usage: f64,
    /// Sockets that got a replay from the history store (`since=`, `history=`).
    pub history_replays: u64,
    /// Gap frames sent: positions that could not be honoured.
    pub history_gaps: u64,
    /// History channels caught up from the store after the listener was away.
    pub history_catch_ups: u64,
    /// Calls to the history store (fetches, reads, heads, prunes); their
    /// durations go to the `pgws_history_store_seconds` histogram.
    pub history_store_calls: u64,
}
