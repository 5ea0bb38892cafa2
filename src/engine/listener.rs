//! The one `LISTEN` connection: commands in, notifications out, reconnect loop.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::{FutureExt, StreamExt, stream::FuturesOrdered};
use tokio::{
    sync::{mpsc, oneshot, watch},
    time::{Instant, timeout},
};
use tokio_postgres::{AsyncMessage, Client};

use crate::{
    database::{
        Database,
        listen::{self, ListenerConnection as Conn},
    },
    mapping::Mapping,
    stats::Counters,
    time::sleep_until_opt,
};

use super::{
    catchup::{self, Batches, Delivery, Done, Seen},
    frame::{Frame, Origin},
    history::History,
    hub::{HELD, Hub, Join},
    outbox::Outbox,
};
use crate::history::Reference;

type Query = Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + Send>>;

/// Deliveries waiting for their fetch, at most; beyond it the listener stops
/// reading notifications (PostgreSQL queues them) until some are done.
const MAX_DELIVERIES: usize = 1024;
/// Notifications already received that are handled in one go, at most.
const DRAIN: usize = 256;

/// What sockets ask of the listener.
pub(crate) enum Command {
    Join(Join),
    Leave(u64),
    /// A session socket leaves one channel: the hub offers the answer after it.
    Part(u64, Frame),
    /// A frame offered to a reader in the hub's order: after what came before.
    Offer(Arc<Outbox>, Frame),
    /// `pg_listening_channels()` of the listener's own session.
    Listening(oneshot::Sender<Vec<String>>),
}

/// The sockets' side: subscribe, and learn whether the listener is connected.
#[derive(Clone)]
pub(crate) struct ListenerHandle {
    commands: mpsc::UnboundedSender<Command>,
    connected: watch::Receiver<bool>,
    next_id: Arc<AtomicU64>,
}

/// A socket's place in the hub; leaving the hub when dropped.
pub(crate) struct Subscription {
    id: u64,
    pub(crate) queue: Arc<Outbox>,
    commands: mpsc::UnboundedSender<Command>,
}

impl Subscription {
    /// Leaves the hub with `answer` offered after the last frame of its
    /// channels (a session socket's `unsubscribed`).
    pub(crate) fn part(self, answer: Frame) {
        let _ = self.commands.send(Command::Part(self.id, answer));
        // The `Leave` of the drop that follows finds nothing more to do.
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Leave(self.id));
    }
}

impl ListenerHandle {
    /// Subscribes to `channels` with a queue of at most `frames` and `bytes`, and
    /// waits until they are listened to. Cancelling the wait (for a timeout)
    /// leaves the hub again.
    pub(crate) async fn subscribe(
        &self,
        channels: Vec<String>,
        frames: usize,
        bytes: usize,
    ) -> Option<Subscription> {
        self.join(channels, Outbox::bounded(frames, bytes)).await
    }

    /// Subscribes `queue` to `channels` (a session socket's outbox may be
    /// subscribed several times, once per channel) and waits until they are
    /// listened to. Cancelling the wait leaves the hub again.
    pub(crate) async fn join(
        &self,
        channels: Vec<String>,
        queue: Arc<Outbox>,
    ) -> Option<Subscription> {
        let (ack, acked) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let sub = Subscription {
            id,
            queue: queue.clone(),
            commands: self.commands.clone(),
        };
        let join = Join {
            id,
            channels,
            queue,
            ack,
        };
        self.commands.send(Command::Join(join)).ok()?;
        acked.await.ok()?;
        Some(sub)
    }

    /// Offers `frame` to `queue` after what the hub offered it before (a
    /// session socket's answer that follows its `unsubscribed` ones).
    pub(crate) fn offer(&self, queue: Arc<Outbox>, frame: Frame) {
        let _ = self.commands.send(Command::Offer(queue, frame));
    }

    /// Whether the listener's connection is up and listening.
    pub(crate) fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// The channels the listener's session is listening to, or `None` while
    /// disconnected or when it does not answer within [`LISTENING_TIMEOUT`].
    pub(crate) async fn listening(&self) -> Option<Vec<String>> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Listening(tx)).ok()?;
        timeout(LISTENING_TIMEOUT, rx).await.ok()?.ok()
    }
}

/// Starts the listener task; it ends when every handle and subscription is gone.
pub(crate) fn spawn(
    mut db: Database,
    mapping: Mapping,
    probe: Option<Duration>,
    counters: Arc<Counters>,
    history: Option<Arc<History>>,
) -> ListenerHandle {
    let (commands, rx) = mpsc::unbounded_channel();
    let (connected_tx, connected) = watch::channel(false);
    db.config = listener_config(db.config);
    let listener = Listener {
        db,
        mapping,
        commands: rx,
        hub: Hub::default(),
        seq: 0,
        probe,
        connected: connected_tx,
        counters,
        pending_reported: 0,
        acked: 0,
        history,
        seen: Seen::default(),
        undecodable: Arc::default(),
        undecodable_reported: 0,
        preamble: None,
    };
    tokio::spawn(listener.run());
    ListenerHandle {
        commands,
        connected,
        next_id: Arc::new(AtomicU64::new(1)),
    }
}

/// Keepalives and a connect timeout, unless the URI sets its own.
fn listener_config(mut db: tokio_postgres::Config) -> tokio_postgres::Config {
    db.keepalives(true);
    if db.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        db.keepalives_idle(Duration::from_secs(30));
        db.keepalives_interval(Duration::from_secs(10));
        db.keepalives_retries(3);
    }
    if db.get_connect_timeout().is_none() {
        db.connect_timeout(CONNECT_TIMEOUT);
    }
    if db.get_application_name().is_none() {
        db.application_name("pgws-listener");
    }
    db
}

struct Listener {
    db: Database,
    mapping: Mapping,
    commands: mpsc::UnboundedReceiver<Command>,
    hub: Hub,
    /// Number of the newest `LISTEN`/`UNLISTEN` batch; joins are acked by it.
    seq: u64,
    probe: Option<Duration>,
    connected: watch::Sender<bool>,
    counters: Arc<Counters>,
    /// The last `pending_joins` figure reported.
    pending_reported: usize,
    /// The newest `LISTEN`/`UNLISTEN` batch done.
    acked: u64,
    /// History channels: their announcements are listened to always.
    history: Option<Arc<History>>,
    /// The last position delivered on each history channel with readers.
    seen: Seen,
    /// Notifications the connection's screen dropped for not being UTF-8, and
    /// how many of them were reported.
    undecodable: Arc<AtomicU64>,
    undecodable_reported: u64,
    /// SQL run before the next batch's statements, in the same round trip.
    preamble: Option<&'static str>,
}

/// Work on history channels waiting to be applied, in notification order.
struct Pipe {
    deliveries: FuturesOrdered<Delivery>,
    /// Deliveries pushed at the back so far: the number of the last one.
    pushed: u64,
    /// The fetches of announced messages, coalesced.
    batches: Batches,
    /// Whether this connection's first `LISTEN` batch is done: reads of the
    /// store that must not miss a notification wait for it.
    listening: watch::Sender<bool>,
}

impl Pipe {
    fn push(&mut self, work: Delivery) {
        self.pushed += 1;
        self.deliveries.push_back(work);
    }

    /// Deliveries and announced messages waiting, about: what bounds reading.
    fn load(&self) -> usize {
        self.deliveries.len() + self.batches.messages
    }
}

/// What a batch does to its channels.
enum Verb {
    Listen,
    Unlisten,
}

/// Why a connection's service ended.
enum End {
    Lost,
    Stopped,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `pg_listening_channels()` may take before the answer is `None`.
pub(crate) const LISTENING_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

impl Listener {
    async fn run(mut self) {
        let mut backoff = BACKOFF_START;
        let mut lost = false;
        loop {
            let Some((client, conn)) = self.connect(&mut backoff).await else {
                return;
            };
            backoff = BACKOFF_START;
            if lost {
                self.counters.listener_reconnected();
            }
            let end = self.serve(client, conn).await;
            lost = true;
            self.connected.send_replace(false);
            self.counters.channels_listened(0);
            let history = self.history.clone();
            let kept = |c: &str| history.as_ref().is_some_and(|h| h.channels.matches(c));
            for channel in self.hub.drop_live(kept) {
                self.seen.forget(&channel);
            }
            match end {
                End::Stopped => return,
                End::Lost => tracing::warn!("listener connection lost; reconnecting"),
            }
        }
    }

    /// Connects, retrying forever with capped exponential backoff while still
    /// taking commands. `None` once every handle is gone.
    async fn connect(&mut self, backoff: &mut Duration) -> Option<(Client, Conn)> {
        loop {
            let (db, dropped) = (self.db.clone(), self.undecodable.clone());
            // A server that accepts and then says nothing must not hold the
            // listener, so the timeout bounds the whole start-up.
            let limit = db
                .config
                .get_connect_timeout()
                .copied()
                .unwrap_or(CONNECT_TIMEOUT);
            let attempt = async move {
                match timeout(limit, listen::connect(&db, &dropped)).await {
                    Ok(result) => result,
                    Err(_) => Err(format!("no answer within {limit:?}")),
                }
            };
            tokio::pin!(attempt);
            let result = loop {
                tokio::select! {
                    r = &mut attempt => break r,
                    cmd = self.commands.recv() => self.apply_offline(cmd?),
                }
            };
            match result {
                Ok(pair) => return Some(pair),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "listener cannot connect")
                }
            }
            let until = Instant::now() + *backoff;
            *backoff = (*backoff * 2).min(BACKOFF_MAX);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    cmd = self.commands.recv() => self.apply_offline(cmd?),
                }
            }
        }
    }

    fn apply_offline(&mut self, cmd: Command) {
        match cmd {
            Command::Join(join) => {
                self.hub.join(join, HELD);
            }
            Command::Leave(id) => {
                self.hub.leave(id);
            }
            Command::Part(id, answer) => {
                self.hub.part(id, &answer);
            }
            Command::Offer(queue, frame) => Hub::offer(&queue, &frame),
            Command::Listening(reply) => drop(reply),
        }
        self.report_pending();
    }

    /// Counts (and logs) the notifications dropped since the last report.
    fn report_undecodable(&mut self) {
        let total = self.undecodable.load(Ordering::Relaxed);
        let new = total - self.undecodable_reported;
        if new > 0 {
            self.undecodable_reported = total;
            self.counters.notifications_undecodable(new);
            tracing::warn!(
                dropped = new,
                total,
                "notifications that are not UTF-8 were dropped"
            );
        }
    }

    /// Reports how many joins wait for their ack, when that changed.
    fn report_pending(&mut self) {
        let n = self.hub.pending_count();
        if n != self.pending_reported {
            self.pending_reported = n;
            self.counters.pending_joins(n);
        }
    }

    async fn serve(&mut self, client: Client, mut conn: Conn) -> End {
        let client = Arc::new(client);
        let mut queries = FuturesOrdered::<Query>::new();
        // Store work of a lost connection is dropped: the catch-up reads those
        // messages again from the last one delivered, and delivering one of them
        // first would make the catch-up skip the others.
        let mut pipe = Pipe {
            deliveries: FuturesOrdered::new(),
            pushed: 0,
            batches: Batches::default(),
            listening: watch::channel(false).0,
        };
        let pipe = &mut pipe;
        let first = self.initial_listens();
        self.preamble = raw_encoding(&conn);
        // Joins that waited while offline are acked by this first batch, or,
        // on a history channel whose baseline is not known, once it is.
        let known = ready(self.history.as_deref(), &self.seen);
        self.hub.retag_pending(self.seq + 1, known);
        self.push(&mut queries, &client, Verb::Listen, first);
        self.catch_up(pipe);
        let mut probe: Option<Pin<Box<dyn Future<Output = Option<f64>> + Send>>> = None;
        let mut next_probe = self.probe.map(|p| Instant::now() + p);
        loop {
            tokio::select! {
                // Until the first batch is done, catch-ups wait for it: read on.
                msg = std::future::poll_fn(|cx| conn.poll_message(cx)),
                    if pipe.load() < MAX_DELIVERIES || !*pipe.listening.borrow() => {
                    // With those already received: their announcements make one batch.
                    // A message is taken only when this round will handle it.
                    let mut msg = msg;
                    let mut handled = 0;
                    loop {
                        match msg {
                            Some(Ok(AsyncMessage::Notification(n))) => {
                                let emptied = self.deliver(n.channel(), n.payload(), pipe);
                                self.unlisten(&mut queries, &client, emptied);
                            }
                            Some(Ok(_)) => {}
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "listener connection failed");
                                return End::Lost;
                            }
                            None => return End::Lost,
                        }
                        handled += 1;
                        if handled == DRAIN || pipe.load() >= MAX_DELIVERIES {
                            break;
                        }
                        match std::future::poll_fn(|cx| conn.poll_message(cx)).now_or_never() {
                            Some(next) => msg = next,
                            None => break,
                        }
                    }
                    pipe.batches.release();
                    self.report_undecodable();
                }
                Some(done) = pipe.deliveries.next(), if !pipe.deliveries.is_empty() => match done {
                    Ok(done) => {
                        let emptied = self.apply_done(done, pipe);
                        self.unlisten(&mut queries, &client, emptied);
                    }
                    Err(e) => {
                        // Its readers would miss messages: as for a lost connection.
                        tracing::warn!(error = %e, "history store read failed");
                        return End::Lost;
                    }
                },
                cmd = self.commands.recv() => match cmd {
                    None => return End::Stopped,
                    Some(cmd) => {
                        self.apply(cmd, &mut queries, &client, pipe);
                        self.report_pending();
                    }
                },
                Some(done) = queries.next(), if !queries.is_empty() => match done {
                    Ok(seq) => {
                        // The first batch to finish is the re-LISTEN of everything.
                        if !*self.connected.borrow() {
                            self.connected.send_replace(true);
                            pipe.listening.send_replace(true);
                        }
                        self.acked = seq;
                        self.hub.ack_through(seq);
                        self.report_pending();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN/UNLISTEN failed");
                        return End::Lost;
                    }
                },
                _ = sleep_until_opt(next_probe), if probe.is_none() => {
                    let client = client.clone();
                    let limit = self.probe.unwrap_or(BACKOFF_MAX);
                    probe = Some(Box::pin(async move {
                        let usage = client.query_one("select pg_notification_queue_usage()", &[]);
                        match timeout(limit, usage).await {
                            Ok(Ok(row)) => row.try_get(0).ok(),
                            _ => None,
                        }
                    }));
                }
                usage = poll_opt(&mut probe) => {
                    probe = None;
                    next_probe = self.probe.map(|p| Instant::now() + p);
                    if let Some(usage) = usage {
                        self.counters.queue_usage(usage);
                    } else {
                        tracing::warn!("listener probe failed");
                        return End::Lost;
                    }
                }
            }
        }
    }

    fn initial_listens(&self) -> Vec<String> {
        let mut channels: Vec<String> = match self.mapping.fixed_listen() {
            Some(c) => vec![c.to_owned()],
            None => self.hub.channels().map(str::to_owned).collect(),
        };
        if let Some(announced) = self.announcements()
            && !channels.iter().any(|c| c == announced)
        {
            channels.push(announced.to_owned());
        }
        channels
    }

    /// The channel announcing stored messages, with history.
    fn announcements(&self) -> Option<&str> {
        self.history.as_ref().map(|h| h.store.notify_channel())
    }

    fn apply(
        &mut self,
        cmd: Command,
        queries: &mut FuturesOrdered<Query>,
        client: &Arc<Client>,
        pipe: &mut Pipe,
    ) {
        match cmd {
            Command::Join(join) => {
                // Acked once its channels are listened to and, for history
                // channels, once the listener knows where to catch them up from.
                let known = ready(self.history.as_deref(), &self.seen);
                let seq = if join.channels.iter().all(|c| known(c)) {
                    self.seq + 1
                } else {
                    HELD
                };
                drop(known);
                let fresh = self.hub.join(join, seq);
                self.baselines(&fresh, pipe);
                let fresh = self.per_channel(fresh);
                self.push(queries, client, Verb::Listen, fresh);
            }
            Command::Leave(id) => {
                let emptied = self.hub.leave(id);
                self.unlisten(queries, client, emptied);
            }
            Command::Part(id, answer) => {
                let emptied = self.hub.part(id, &answer);
                self.unlisten(queries, client, emptied);
            }
            Command::Offer(queue, frame) => Hub::offer(&queue, &frame),
            Command::Listening(reply) => {
                let client = client.clone();
                tokio::spawn(async move {
                    let query = client.query("select pg_listening_channels()", &[]);
                    // A stuck connection gets no answer: no reply, and no task left behind.
                    if let Ok(Ok(rows)) = timeout(LISTENING_TIMEOUT, query).await {
                        let _ = reply.send(rows.iter().map(|r| r.get(0)).collect());
                    }
                });
            }
        }
    }

    fn per_channel(&self, channels: Vec<String>) -> Vec<String> {
        if self.mapping.listens_per_channel() {
            channels
        } else {
            Vec::new()
        }
    }

    /// UNLISTENs channels that lost their last reader; nothing waits on this, so
    /// nothing is queued when no channel emptied (the common case on delivery).
    fn unlisten(
        &mut self,
        queries: &mut FuturesOrdered<Query>,
        client: &Arc<Client>,
        emptied: Vec<String>,
    ) {
        for channel in &emptied {
            self.seen.forget(channel);
        }
        let mut emptied = self.per_channel(emptied);
        // Announcements stay listened to, even when a socket read that channel too.
        if let Some(announced) = self.announcements() {
            emptied.retain(|c| c != announced);
        }
        if !emptied.is_empty() {
            self.push(queries, client, Verb::Unlisten, emptied);
        }
    }

    /// Queues one batch, numbered; an empty batch still takes its turn so acks stay
    /// in order.
    fn push(
        &mut self,
        queries: &mut FuturesOrdered<Query>,
        client: &Arc<Client>,
        verb: Verb,
        channels: Vec<String>,
    ) {
        self.seq += 1;
        let seq = self.seq;
        let listened = match self.mapping.fixed_listen() {
            Some(_) => 1,
            None => self.hub.channel_count(),
        };
        self.counters.channels_listened(listened);
        let preamble = self.preamble.take();
        if channels.is_empty() && preamble.is_none() {
            queries.push_back(Box::pin(std::future::ready(Ok(seq))));
            return;
        }
        let verb = match verb {
            Verb::Listen => "LISTEN",
            Verb::Unlisten => "UNLISTEN",
        };
        let sql: String = preamble
            .into_iter()
            .map(str::to_owned)
            .chain(channels.iter().map(|c| {
                format!(
                    "{verb} {};",
                    postgres_protocol::escape::escape_identifier(c)
                )
            }))
            .collect();
        let client = client.clone();
        queries.push_back(Box::pin(async move {
            client.batch_execute(&sql).await.map(|_| seq)
        }));
    }

    /// Hands a notification to its readers: now, or, behind a stored message
    /// being fetched, in turn.
    fn deliver(&mut self, pg_channel: &str, payload: &str, pipe: &mut Pipe) -> Vec<String> {
        if self.announcements() == Some(pg_channel) {
            self.fetch(payload, pipe);
            return Vec::new();
        }
        let Some(channel) = self.mapping.route(pg_channel, payload) else {
            return Vec::new();
        };
        self.counters.notification_received();
        // The channel goes with the frame (once, shared by all readers): sockets
        // with positions and event streams on several channels say where it is from.
        let origin = Arc::new(Origin {
            channel: channel.clone().into_owned(),
            position: None,
        });
        let frame = Frame::new(payload.as_bytes(), Some(origin));
        if pipe.deliveries.is_empty() {
            let emptied = self.hub.dispatch(&channel, &frame);
            self.counters.frames_delivered(self.hub.take_written());
            return emptied;
        }
        let channel = channel.into_owned();
        pipe.push(catchup::ready(channel, frame));
        Vec::new()
    }

    /// Queues the fetch of an announced message whose channel has readers: once
    /// per message, whatever the number of readers, off the listener's loop.
    fn fetch(&mut self, announcement: &str, pipe: &mut Pipe) {
        let (Some(history), Ok(reference)) = (&self.history, Reference::parse(announcement)) else {
            return;
        };
        if !self.hub.has_readers(&reference.channel) {
            return;
        }
        self.counters.notification_received();
        if let Some(refs) = pipe.batches.add(reference, pipe.pushed) {
            pipe.push(catchup::fetch(history.clone(), refs));
        }
    }

    /// Reads where the history of channels that got their first reader stands,
    /// so that a lost connection can be caught up from there.
    fn baselines(&mut self, fresh: &[String], pipe: &mut Pipe) {
        let Some(history) = &self.history else {
            return;
        };
        for channel in fresh {
            if history.channels.matches(channel) && !self.seen.knows(channel) {
                let listening = pipe.listening.subscribe();
                let work = catchup::baseline(history.clone(), channel.clone(), listening);
                pipe.push(work);
            }
        }
    }

    /// On a new connection: catches up each history channel that has readers
    /// from its last delivered position, once this connection listens, and
    /// reads the baselines of those that have none yet.
    fn catch_up(&mut self, pipe: &mut Pipe) {
        let Some(history) = self.history.clone() else {
            return;
        };
        let hub = &self.hub;
        self.seen.retain(|channel| hub.has_readers(channel));
        for (channel, after) in self.seen.positions() {
            self.counters.history_caught_up();
            let listening = pipe.listening.subscribe();
            let work =
                catchup::catch_up(history.clone(), channel.clone(), after.clone(), listening);
            pipe.push(work);
        }
        let fresh: Vec<String> = self.hub.channels().map(str::to_owned).collect();
        self.baselines(&fresh, pipe);
    }

    /// Applies finished store work, in order; returns the channels that emptied.
    fn apply_done(&mut self, done: Done, pipe: &mut Pipe) -> Vec<String> {
        match done {
            Done::Frames(channel, frames) => {
                self.apply_frames(frames.iter().map(|f| (channel.as_str(), f)), pipe)
            }
            Done::Fetched(frames, n) => {
                pipe.batches.done(n);
                self.apply_frames(frames.iter().map(|(c, f)| (c.as_str(), f)), pipe)
            }
            Done::Baseline(channel, head) => {
                if self.hub.has_readers(&channel) {
                    self.seen.baseline(channel.clone(), head);
                    // Its held readers are subscribed with the newest batch.
                    let known = ready(self.history.as_deref(), &self.seen);
                    self.hub.release(&channel, self.seq, known);
                    self.hub.ack_through(self.acked);
                    self.report_pending();
                }
                Vec::new()
            }
            Done::Missed(channel) => {
                tracing::warn!(channel, "history catch-up found messages no longer kept");
                self.hub.end_channel(&channel)
            }
        }
    }
}

impl Listener {
    /// Delivers frames of stored messages (and plain notifications queued
    /// behind them), each once; returns the channels that emptied.
    fn apply_frames<'a>(
        &mut self,
        frames: impl Iterator<Item = (&'a str, &'a Frame)>,
        pipe: &mut Pipe,
    ) -> Vec<String> {
        let mut emptied = Vec::new();
        // Channels whose next messages a catch-up now brings.
        let mut skipping: Vec<&str> = Vec::new();
        for (channel, frame) in frames {
            if skipping.contains(&channel) || !self.hub.has_readers(channel) {
                continue;
            }
            if let (Some(after), Some(history)) = (self.seen.skipped(channel, frame), &self.history)
            {
                // A lost announcement: read what it skipped (and this one, and
                // on) from the store before anything else.
                let listening = pipe.listening.subscribe();
                let work = catchup::catch_up(history.clone(), channel.to_owned(), after, listening);
                pipe.deliveries.push_front(work);
                skipping.push(channel);
                continue;
            }
            if !self.seen.check(channel, frame) {
                emptied.extend(self.hub.dispatch(channel, frame));
                self.counters.frames_delivered(self.hub.take_written());
            }
        }
        emptied
    }
}

/// Whether a socket reading `channel` can be told it is subscribed as soon as
/// the channel is listened to: a history channel needs its baseline (or a
/// delivered position) first, so that a connection lost right after the
/// socket's ack is caught up from a position no later than the ack.
fn ready<'a>(history: Option<&'a History>, seen: &'a Seen) -> impl Fn(&str) -> bool + 'a {
    move |channel| history.is_none_or(|h| !h.channels.matches(channel)) || seen.knows(channel)
}

/// In a `SQL_ASCII` database, the listener asks for the bytes as they are: with
/// `UTF8` the server checks each notification as it sends it, and one that is not
/// UTF-8 ends the session (`FATAL`, SQLSTATE 22021). Raw, such a notification
/// reaches the connection's screen, which drops it.
fn raw_encoding(conn: &Conn) -> Option<&'static str> {
    (conn.parameter("server_encoding") == Some("SQL_ASCII"))
        .then_some("SET client_encoding TO 'SQL_ASCII';")
}

async fn poll_opt<F: Future + Unpin>(fut: &mut Option<F>) -> F::Output {
    match fut {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}
