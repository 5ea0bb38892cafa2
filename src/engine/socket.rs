//! One connection's task: frames in, queue out, ping, expiry, close codes.

use std::{
    future::poll_fn,
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, future::Either, stream::SplitSink, stream::SplitStream};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadHalf},
    sync::{oneshot, watch},
    time::{Instant, sleep_until, timeout},
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Error as WsError, Message,
        error::ProtocolError,
        protocol::{Role, WebSocketConfig},
    },
};

use crate::{
    auth::Grant, close::Close, envelope::Event, mapping::Notify, stats::Counters, time::instant_at,
};

use super::{
    Engine, Place,
    codec_io::{BadHeader, CodecIo},
    frame::{Frame, text_frame},
    history::History,
    listener::Subscription,
    meta,
    outbox::{Ending, Outbox},
    resume::Resume,
    session::{Control, Handler, Outlet, Session},
};

/// How long a close waits for the peer's answer, and how long shutdown drains.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// NOTIFY payloads must stay under this many bytes.
const NOTIFY_LIMIT: usize = 8000;
/// The codec's read buffer to start with: it grows for a larger frame while that
/// frame is read. Small, since an idle socket holds it.
const READ_BUFFER: usize = 256;
/// What a failed socket reads and drops before the connection ends, at most.
const DISCARD_LIMIT: usize = 64 * 1024;

/// How the exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// We close with this, and wait for the answer.
    Close(Close),
    /// The peer broke the protocol: we close with this and end the connection
    /// without waiting for an answer.
    Fail(Close),
    /// The peer closed (the codec answers), or the stream failed.
    Ended,
}

const GOING_AWAY: Outcome = Outcome::Close(Close::GoingAway);

/// One accepted socket.
pub(crate) struct Socket {
    pub(crate) grant: Grant,
    pub(crate) subscription: Option<Subscription>,
    /// When the socket asked for positions: its replay and what it was sent.
    /// Boxed: most sockets never ask, and this struct lives in every socket's task.
    pub(crate) resume: Option<Box<Resume>>,
    /// A session socket's state (PROTOCOL.md §17); boxed, as `resume`.
    pub(crate) session: Option<Box<Session>>,
    pub(crate) engine: Arc<Engine>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Held while the socket lives: counts against the socket limits.
    pub(crate) _permit: Place,
}

/// The codec over the socket's read half and its [`Outbox`].
type Ws<S> = WebSocketStream<CodecIo<ReadHalf<S>>>;
type Sink<S> = SplitSink<Ws<S>, Message>;
type Stream<S> = SplitStream<Ws<S>>;

impl Socket {
    /// Waits for the upgrade, then runs the socket to its end. The returned future
    /// lives as long as the connection, so its size is memory per socket: it holds the
    /// socket once (an `async fn` taking `self` would keep a second copy, and a caller
    /// that awaits the upgrade first a third).
    pub(crate) fn serve(self, upgrade: OnUpgrade) -> impl Future<Output = ()> + Send + 'static {
        let mut socket = self;
        async move {
            match upgrade.await {
                Ok(upgraded) => socket.run(TokioIo::new(upgraded)).await,
                Err(e) => tracing::debug!(error = %e, "connection dropped before the upgrade"),
            }
        }
    }

    /// Runs the socket to its end, meta events included.
    async fn run<S>(&mut self, io: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let config = codec_config(self.engine.settings.max_message_bytes);
        let (read, write) = tokio::io::split(io);
        // Readers share their outbox with the hub; a socket that only writes has
        // one of its own, for the codec's frames.
        let outbox = match (&self.subscription, &self.session) {
            (_, Some(session)) => session.queue.clone(),
            (Some(sub), None) => sub.queue.clone(),
            (None, None) => Outbox::new(0),
        };
        // A socket with positions renders each frame itself: the hub only queues.
        outbox.attach(Box::new(write), self.resume.is_none());
        let codec = WebSocketStream::from_raw_socket(
            CodecIo::new(read, outbox.clone()),
            Role::Server,
            Some(config),
        )
        .await;
        let (mut sink, mut stream) = codec.split();
        let mode = self.grant.mode;
        self.engine.counters.socket_opened(mode);
        tracing::info!("socket open");
        // Published by the meta task, so a slow database does not hold up pings and
        // notifications; the first message waits for it to keep the order.
        let open = self.meta(Event::ConnectionOpen);
        let announced = open.is_some();
        let outcome = self.exchange(&mut sink, &mut stream, &outbox, open).await;
        match outcome {
            Outcome::Close(close) | Outcome::Fail(close) => {
                tracing::info!(
                    code = close.code(),
                    reason = close.reason(),
                    "socket closed"
                )
            }
            Outcome::Ended => tracing::info!("socket closed by the peer"),
        }
        finish(&mut sink, &mut stream, &outbox, outcome).await;
        if let Outcome::Fail(_) = outcome
            && let Ok(mut codec) = stream.reunite(sink)
        {
            codec.get_mut().discard_ready(DISCARD_LIMIT);
        }
        // The hub may hold the outbox a little longer: the connection ends now.
        drop(outbox.detach());
        // A Close only follows an Open, queued (and so published) after it.
        if announced && let Some(close) = self.meta(Event::ConnectionClose) {
            let _ = timeout(meta::WAIT, close).await;
        }
        self.engine.counters.socket_closed(mode);
        // A replay page cut short gives its budget back once the socket is gone.
        drop(self.resume.take());
    }

    async fn exchange<S>(
        &mut self,
        sink: &mut Sink<S>,
        stream: &mut Stream<S>,
        outbox: &Outbox,
        open: Option<oneshot::Receiver<()>>,
    ) -> Outcome
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let pong = AtomicBool::new(false);
        // Held to the end: dropping it leaves the hub.
        let _subscription = self.subscription.take();
        let expiry = self.grant.expires_at.and_then(instant_at);
        let ping = self.engine.settings.ping_interval();
        let mut resume = self.resume.take();
        // A session's handler reads the socket; its outlet goes to the writer.
        // Boxed: locals of this future are memory per socket, session or not.
        let (handler, mut outlet) = match self.session.take() {
            Some(session) => {
                let grant = self.grant.clone();
                let (handler, outlet) = Handler::new(*session, self.engine.clone(), grant);
                (Some(Box::new(handler)), Some(Box::new(outlet)))
            }
            None => (None, None),
        };
        let outcome = {
            let writer = Writer {
                sink,
                outbox,
                resume: resume.as_deref_mut(),
                session: outlet.as_deref_mut(),
                history: self.engine.history.as_deref(),
                pong: &pong,
                counters: &self.engine.counters,
            }
            .run(expiry, ping, self.shutdown.clone());
            // Boxed: the session's reader is large, and plain sockets never run it.
            let reader = match handler {
                None => Either::Left(self.read(stream, &pong, open)),
                Some(handler) => {
                    Either::Right(Box::pin(self.read_session(stream, &pong, open, handler)))
                }
            };
            tokio::pin!(reader, writer);
            // On shutdown the other half finishes its in-flight work, within the drain timeout.
            tokio::select! {
                o = &mut reader => {
                    if o == GOING_AWAY { let _ = timeout(CLOSE_TIMEOUT, writer).await; }
                    o
                }
                o = &mut writer => {
                    if o == GOING_AWAY { let _ = timeout(CLOSE_TIMEOUT, reader).await; }
                    o
                }
            }
        };
        // Kept to the connection's end: it may hold a page's budget.
        self.resume = resume;
        outcome
    }

    /// Reads messages and NOTIFYs them in order; stops between messages on shutdown.
    async fn read<S>(
        &self,
        stream: &mut Stream<S>,
        pong: &AtomicBool,
        mut open: Option<oneshot::Receiver<()>>,
    ) -> Outcome
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut shutdown = self.shutdown.clone();
        loop {
            let next = tokio::select! {
                biased;
                _ = shutting_down(&mut shutdown) => return GOING_AWAY,
                next = stream.next() => next,
            };
            let payload = match incoming(next, pong) {
                Incoming::Text(bytes) | Incoming::Binary(bytes) => bytes,
                Incoming::Control => continue,
                Incoming::End(outcome) => return outcome,
            };
            if let Some(open) = open.take() {
                let _ = timeout(meta::WAIT, open).await;
            }
            if let Err(outcome) = self.on_message(payload).await {
                return outcome;
            }
        }
    }

    /// A session socket's reading half: client frames to its command handler,
    /// read only while fewer publishes than `PGWS_MAX_IN_FLIGHT` are unanswered.
    async fn read_session<S>(
        &self,
        stream: &mut Stream<S>,
        pong: &AtomicBool,
        mut open: Option<oneshot::Receiver<()>>,
        mut handler: Box<Handler>,
    ) -> Outcome
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut shutdown = self.shutdown.clone();
        loop {
            let may_read = handler.may_read();
            let next = tokio::select! {
                biased;
                _ = shutting_down(&mut shutdown) => return GOING_AWAY,
                wake = handler.wake() => {
                    handler.on_wake(wake).await;
                    continue;
                }
                next = stream.next(), if may_read => next,
            };
            let text = match incoming(next, pong) {
                Incoming::Text(bytes) => Some(bytes),
                Incoming::Binary(_) => None,
                Incoming::Control => continue,
                Incoming::End(outcome) => return outcome,
            };
            if let Some(open) = open.take() {
                let _ = timeout(meta::WAIT, open).await;
            }
            handler.on_frame(text.as_deref()).await;
        }
    }

    /// Checks one data message (mode, UTF-8, NOTIFY size) and NOTIFYs it.
    async fn on_message(&self, payload: Bytes) -> Result<(), Outcome> {
        if !self.grant.mode.writes() {
            return Err(Outcome::Close(Close::WriteNotAllowed));
        }
        let text = std::str::from_utf8(&payload).map_err(|_| Outcome::Close(Close::InvalidUtf8))?;
        let notifies = self.engine.mapping.notifies(
            &self.grant.channels,
            Event::Message,
            text,
            &self.grant.claims,
            SystemTime::now(),
        );
        let (stored, notifies) = self.split_stored(notifies);
        if notifies.iter().any(|n| n.payload.len() >= NOTIFY_LIMIT) {
            return Err(Outcome::Close(Close::NotifyTooBig));
        }
        let counters = &self.engine.counters;
        let publisher = &self.engine.publisher;
        let published = match (&self.engine.history, stored.is_empty()) {
            (Some(history), false) => {
                let stored: Vec<(&str, &str)> = stored
                    .iter()
                    .map(|(c, n)| (c.as_str(), n.payload.as_str()))
                    .collect();
                history.publish(&stored, &notifies).await
            }
            _ => publisher.publish(&notifies).await,
        };
        match published {
            Ok(()) => {
                counters.message_notified();
                Ok(())
            }
            Err(e) => {
                counters.notify_failed();
                tracing::warn!(error = %e.0, "NOTIFY failed");
                Err(Outcome::Close(Close::DatabaseUnavailable))
            }
        }
    }

    /// Sets apart the messages for history channels, to be kept in the store
    /// (with the WebSocket channel they are for) rather than `NOTIFY`d.
    fn split_stored(&self, notifies: Vec<Notify>) -> (Vec<(String, Notify)>, Vec<Notify>) {
        let Some(history) = &self.engine.history else {
            return (Vec::new(), notifies);
        };
        // One notify per channel of the grant, in its order.
        let mut stored = Vec::new();
        let mut plain = Vec::new();
        for (channel, notify) in self.grant.channels.iter().zip(notifies) {
            if history.channels.matches(channel) {
                stored.push((channel.clone(), notify));
            } else {
                plain.push(notify);
            }
        }
        (stored, plain)
    }

    /// Queues the meta event, when a meta channel is configured; the receiver
    /// resolves once it is published (or lost). `None` when not queued.
    fn meta(&self, event: Event) -> Option<oneshot::Receiver<()>> {
        let meta = self.engine.meta.as_ref()?;
        meta.announce(&self.engine.mapping, &self.grant, event)
    }
}

/// The sending half: queued notifications and pings, until the hub lets go,
/// expiry, a ping timeout or shutdown.
struct Writer<'a, S> {
    sink: &'a mut Sink<S>,
    /// Frames the hub could not write itself, and the codec's bytes.
    outbox: &'a Outbox,
    /// Sockets that asked for positions: replayed first, then frames as JSON.
    resume: Option<&'a mut Resume>,
    /// A session socket's answers, and the channels it delivers.
    session: Option<&'a mut Outlet>,
    history: Option<&'a History>,
    pong: &'a AtomicBool,
    counters: &'a Counters,
}

impl<S> Writer<'_, S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async fn run(
        mut self,
        expiry: Option<Instant>,
        ping_every: Option<Duration>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Outcome {
        // The replay comes before live frames, which wait in the queue meanwhile.
        // Boxed: its history queries are large, and this future lives as long as
        // the socket (its size is memory per socket); most sockets never replay.
        if self.resume.as_ref().is_some_and(|r| !r.is_done())
            && let Err(outcome) = Box::pin(self.replay(ping_every)).await
        {
            return outcome;
        }
        // One timer for the socket's life, set to the next ping or the expiry.
        let mut clock = Clock::new(expiry, ping_every);
        let timer = sleep_until(clock.next().unwrap_or_else(Instant::now));
        tokio::pin!(timer);
        loop {
            tokio::select! {
                biased;
                ending = poll_fn(|cx| self.outbox.poll_ended(cx)) => {
                    return self.on_ending(ending).await;
                }
                _ = shutting_down(&mut shutdown) => {
                    let _ = timeout(CLOSE_TIMEOUT, self.drain()).await;
                    return GOING_AWAY;
                }
                _ = &mut timer, if clock.next().is_some() => {
                    if clock.expired() {
                        return Outcome::Close(Close::JwtExpired);
                    }
                    if clock.pinged && !self.pong.swap(false, Ordering::AcqRel) {
                        return PING_TIMEOUT;
                    }
                    let sent = within(ping_every, self.sink.send(Message::Ping(Bytes::new())));
                    if let Err(outcome) = written(sent.await) {
                        return outcome;
                    }
                    // The peer gets a whole interval from the moment the ping is out.
                    clock.ping_sent();
                    if let Some(next) = clock.next() {
                        timer.as_mut().reset(next);
                    }
                }
                control = poll_fn(|cx| poll_control(&mut self.session, cx)), if self.session.is_some() => {
                    if let Err(outcome) = Box::pin(self.on_control(control, &mut clock, ping_every)).await {
                        return outcome;
                    }
                    if let Some(next) = clock.next() {
                        timer.as_mut().reset(next);
                    }
                }
                work = poll_fn(|cx| self.outbox.poll_work(cx)) => {
                    if !work {
                        return self.on_ending(Ending::ListenerRestarted).await;
                    }
                    // A write blocked for a whole ping interval means a peer that reads
                    // nothing. A ping due meanwhile is only late: it goes next, and
                    // checks the pong of a peer that may well have answered.
                    if let Err(outcome) = written(within(ping_every, self.send_batch()).await) {
                        return outcome;
                    }
                }
            }
        }
    }

    /// Writes what a session's handler handed over.
    async fn on_control(
        &mut self,
        control: Box<Control>,
        clock: &mut Clock,
        ping_every: Option<Duration>,
    ) -> Result<(), Outcome> {
        let outbox = self.outbox;
        match *control {
            Control::Answer(answer) => outbox.push_answer(text_frame(&answer)),
            Control::Direct => outbox.unpause(self.resume.is_none()),
            Control::Refreshed { answer, expires_at } => {
                clock.expiry = expires_at;
                if let Some(answer) = answer {
                    outbox.push_answer(text_frame(&answer));
                }
            }
            Control::Subscribed {
                answer,
                channel,
                replay,
            } => {
                outbox.push_answer(text_frame(&answer));
                if let Some(session) = self.session.as_deref_mut() {
                    session.live.insert(channel.clone());
                }
                if let (Some(start), Some(resume)) = (replay, self.resume.as_deref_mut()) {
                    resume.push(channel, start);
                    self.replay(ping_every).await?;
                }
                outbox.unpause(self.resume.is_none());
            }
        }
        Ok(())
    }

    async fn on_ending(&mut self, ending: Ending) -> Outcome {
        match ending {
            Ending::SlowConsumer => {
                self.counters.slow_consumer_closed();
                Outcome::Close(Close::SlowConsumer)
            }
            Ending::ListenerRestarted => {
                // What was queued before the loss is still good: deliver it first.
                let _ = timeout(CLOSE_TIMEOUT, self.drain()).await;
                Outcome::Close(Close::ListenerRestarted)
            }
        }
    }

    /// Sends the replay of a socket that asked for positions, page by page, each
    /// page's write bounded like any other. A page goes straight to the wire
    /// (behind the codec's frames) and holds its budget until written. A slow
    /// consumer meanwhile is closed at once, rather than waiting for its turn
    /// under the budget to send what it will not get.
    async fn replay(&mut self, ping_every: Option<Duration>) -> Result<(), Outcome> {
        let (Some(resume), Some(history)) = (self.resume.as_deref_mut(), self.history) else {
            return Ok(());
        };
        let outbox = self.outbox;
        self.counters.history_replay();
        loop {
            let next = tokio::select! {
                biased;
                () = slow_consumer(outbox) => {
                    self.counters.slow_consumer_closed();
                    return Err(Outcome::Close(Close::SlowConsumer));
                }
                next = resume.next_page(history) => next,
            };
            let page = match next {
                Ok(Some(page)) => page,
                Ok(None) => return Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, "history replay failed");
                    // A session socket leaves the channel instead (never 1013).
                    match (self.session.as_deref_mut(), resume.take_failed()) {
                        (Some(session), Some(channel)) => {
                            outbox.push_answer(text_frame(&session.leave_unavailable(channel)));
                            continue;
                        }
                        _ => return Err(Outcome::Close(Close::DatabaseUnavailable)),
                    }
                }
            };
            self.counters.history_gaps(resume.take_gaps());
            let sent = page.frames.len() as u64;
            for frame in page.frames {
                outbox.push_wire(text_frame(&frame));
            }
            let flushed = within(ping_every, poll_fn(|cx| outbox.poll_flush_wire(cx))).await;
            if let Err(outcome) = written(flushed) {
                resume.hold(page.permit);
                return Err(outcome);
            }
            self.counters.frames_delivered(sent);
        }
    }

    /// Writes what is queued, up to a batch, in one write, and flushes. Being let go
    /// as a slow consumer meanwhile wins, since such a peer may never read.
    async fn send_batch(&mut self) -> io::Result<()> {
        let outbox = self.outbox;
        let resume = &mut self.resume;
        let session = self.session.as_deref();
        let mut sent = 0u64;
        let mut render = |frame: Frame| {
            let bytes = render(resume, session, frame)?;
            sent += 1;
            Some(bytes)
        };
        let result = tokio::select! {
            r = poll_fn(|cx| outbox.poll_send(cx, &mut render)) => r,
            _ = slow_consumer(outbox) => Ok(()),
        };
        self.counters.frames_delivered(sent);
        result
    }

    /// Sends everything still queued.
    async fn drain(&mut self) -> io::Result<()> {
        while !self.outbox.is_idle() {
            self.send_batch().await?;
        }
        Ok(())
    }
}

const PING_TIMEOUT: Outcome = Outcome::Close(Close::PingTimeout);

/// `write`'s result, or `None` when it took longer than `limit` (if any).
async fn within<F: Future>(limit: Option<Duration>, write: F) -> Option<F::Output> {
    match limit {
        Some(limit) => timeout(limit, write).await.ok(),
        None => Some(write.await),
    }
}

/// A bounded write's outcome: done, a failed stream, or a peer that read nothing.
fn written<E>(result: Option<Result<(), E>>) -> Result<(), Outcome> {
    match result {
        Some(Ok(())) => Ok(()),
        Some(Err(_)) => Err(Outcome::Ended),
        None => Err(PING_TIMEOUT),
    }
}

/// The codec for a socket: a small read buffer, no write buffer (what it writes
/// goes to the outbox at once), frames and messages up to `max_message_bytes`.
fn codec_config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}

/// What a failed read means: a peer that broke the protocol gets the close for it
/// (and the connection ends without waiting for its answer); a lost stream, nothing.
/// What the reading half got from the codec.
enum Incoming {
    Text(Bytes),
    Binary(Bytes),
    /// A ping or pong (pongs are noted in `pong`); the codec answers pings.
    Control,
    End(Outcome),
}

/// Sorts the codec's next item, for both the plain and the session reader.
fn incoming(next: Option<Result<Message, WsError>>, pong: &AtomicBool) -> Incoming {
    match next {
        Some(Ok(Message::Text(text))) => Incoming::Text(Bytes::from(text)),
        Some(Ok(Message::Binary(bytes))) => Incoming::Binary(bytes),
        Some(Ok(Message::Pong(_))) => {
            pong.store(true, Ordering::Release);
            Incoming::Control
        }
        // Answered by the codec on its next read or write.
        Some(Ok(Message::Ping(_) | Message::Frame(_))) => Incoming::Control,
        Some(Ok(Message::Close(_))) | None => Incoming::End(Outcome::Ended),
        Some(Err(e)) => Incoming::End(failed(e)),
    }
}

fn failed(e: WsError) -> Outcome {
    let close = match &e {
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Protocol(_) => Some(Close::ProtocolError),
        WsError::Utf8(_) => Some(Close::InvalidUtf8),
        WsError::Capacity(_) => Some(Close::MessageTooBig),
        WsError::Io(io) if BadHeader::is(io) => Some(Close::ProtocolError),
        _ => None,
    };
    tracing::debug!(error = %e, "socket stream error");
    close.map_or(Outcome::Ended, Outcome::Fail)
}

/// A queued frame as this socket sends it, on the wire: its payload, or, for a
/// socket that asked for positions, a JSON object (`None` for an offset already
/// sent).
fn render(
    resume: &mut Option<&mut Resume>,
    session: Option<&Outlet>,
    frame: Frame,
) -> Option<Bytes> {
    // A session socket's frames are rendered already, shared with its peers.
    if let Some(session) = session {
        let fresh = session.admits(&frame) && resume.as_mut().is_none_or(|r| r.fresh(&frame));
        return fresh.then(|| frame.wire.clone());
    }
    match resume {
        Some(resume) => resume.live(&frame).map(|json| text_frame(&json)),
        None => Some(frame.wire.clone()),
    }
}

/// Sends our close (if any) and, unless the peer broke the protocol, waits for its
/// answer; then writes out what the codec left (its answer to the peer's close).
/// All within [`CLOSE_TIMEOUT`].
async fn finish<S>(sink: &mut Sink<S>, stream: &mut Stream<S>, outbox: &Outbox, outcome: Outcome)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = timeout(CLOSE_TIMEOUT, async {
        // Refused once the peer closed: the codec answers that one.
        if let Outcome::Close(close) | Outcome::Fail(close) = outcome {
            let _ = sink.send(Message::Close(Some(close.frame()))).await;
        }
        if !matches!(outcome, Outcome::Fail(_)) {
            while stream.next().await.is_some() {}
        }
        let _ = poll_fn(|cx| outbox.poll_flush_wire(cx)).await;
    })
    .await;
}

/// The session handler's next hand-over; never, once the handler is gone (the
/// socket is ending). A poll, not a future with state: the writer's future is
/// memory per socket.
fn poll_control(session: &mut Option<&mut Outlet>, cx: &mut Context<'_>) -> Poll<Box<Control>> {
    match session.as_mut().map(|o| o.control.poll_recv(cx)) {
        Some(Poll::Ready(Some(control))) => Poll::Ready(control),
        _ => Poll::Pending,
    }
}

/// Resolves once the hub lets go of the socket as a slow consumer. Other endings
/// let the write go on: what was queued is still good.
async fn slow_consumer(outbox: &Outbox) {
    if poll_fn(|cx| outbox.poll_ended(cx)).await != Ending::SlowConsumer {
        std::future::pending::<()>().await;
    }
}

/// The writer's deadlines: the token's expiry and the next ping.
struct Clock {
    expiry: Option<Instant>,
    every: Option<Duration>,
    ping: Option<Instant>,
    /// A ping is out: the next one first checks that it was answered.
    pinged: bool,
}

impl Clock {
    fn new(expiry: Option<Instant>, every: Option<Duration>) -> Self {
        let ping = every.map(|every| Instant::now() + every);
        Self {
            expiry,
            every,
            ping,
            pinged: false,
        }
    }

    /// The earlier deadline, if any.
    fn next(&self) -> Option<Instant> {
        self.expiry.into_iter().chain(self.ping).min()
    }

    fn expired(&self) -> bool {
        self.expiry.is_some_and(|at| at <= Instant::now())
    }

    fn ping_sent(&mut self) {
        self.pinged = true;
        self.ping = self.every.map(|every| Instant::now() + every);
    }
}

async fn shutting_down(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|down| *down).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    //! The writer against a real client over an in-memory transport, in paused time.

    use tokio::{
        io::{DuplexStream, duplex},
        task::JoinHandle,
        time::sleep_until,
    };
    use tokio_websockets::ClientBuilder;

    use super::*;
    use crate::engine::{codec_io::CodecIo, outbox::Offer};

    const EVERY: Duration = Duration::from_secs(10);
    /// Smaller than a frame, so a frame's write waits for the client to read.
    const PIPE: usize = 4096;

    type Client = tokio_websockets::WebSocketStream<DuplexStream>;

    struct Setup {
        client: Client,
        queue: Arc<Outbox>,
        shutdown: watch::Sender<bool>,
        writer: JoinHandle<Outcome>,
    }

    /// A writer pinging every [`EVERY`], and next to it the reading half doing
    /// what [`Socket::read`] does with pongs.
    fn start() -> Setup {
        let (server_io, client_io) = duplex(PIPE);
        let client = ClientBuilder::new().take_over(client_io);
        let queue = Outbox::new(16);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let outbox = queue.clone();
        let writer = tokio::spawn(async move {
            let (read, write) = tokio::io::split(server_io);
            outbox.attach(Box::new(write), true);
            let io = CodecIo::new(read, outbox.clone());
            let (mut sink, mut stream) = WebSocketStream::from_raw_socket(io, Role::Server, None)
                .await
                .split();
            let pong = AtomicBool::new(false);
            let counters = Counters::default();
            let writer = Writer {
                sink: &mut sink,
                outbox: &outbox,
                resume: None,
                session: None,
                history: None,
                pong: &pong,
                counters: &counters,
            }
            .run(None, Some(EVERY), shutdown_rx);
            let reader = async {
                while let Some(Ok(msg)) = stream.next().await {
                    if msg.is_pong() {
                        pong.store(true, Ordering::Release);
                    }
                }
                std::future::pending::<()>().await;
            };
            tokio::select! {
                outcome = writer => outcome,
                _ = reader => unreachable!("the reader never ends"),
            }
        });
        Setup {
            client,
            queue,
            shutdown,
            writer,
        }
    }

    /// Reads (and so answers pings) until `until`; how many texts came.
    async fn read_until(client: &mut Client, until: Instant) -> usize {
        let mut texts = 0;
        loop {
            tokio::select! {
                msg = client.next() => match msg {
                    Some(Ok(msg)) if msg.is_text() => texts += 1,
                    Some(Ok(_)) => {}
                    _ => return texts,
                },
                _ = sleep_until(until) => return texts,
            }
        }
    }

    fn big_frame() -> Frame {
        Frame::from("x".repeat(4 * PIPE).as_str())
    }

    #[tokio::test(start_paused = true)]
    async fn a_tick_during_a_slow_write_does_not_end_a_peer_that_answers() {
        let mut s = start();
        let t0 = Instant::now();
        // The first ping goes out at 10 s and is answered at once.
        read_until(&mut s.client, t0 + Duration::from_secs(19)).await;
        // The client stops reading from 19 s to 20.5 s; a frame queued at 19.5 s
        // is still being written when the 20 s tick is due.
        sleep_until(t0 + Duration::from_millis(19_500)).await;
        assert_ne!(s.queue.offer(&big_frame(), true), Offer::Full);
        sleep_until(t0 + Duration::from_millis(20_500)).await;
        assert_eq!(
            read_until(&mut s.client, t0 + Duration::from_secs(45)).await,
            1
        );
        assert!(
            !s.writer.is_finished(),
            "the writer ended: {:?}",
            s.writer.await
        );
        s.shutdown.send_replace(true);
        let _ = read_until(&mut s.client, t0 + Duration::from_secs(46)).await;
        assert_eq!(s.writer.await.unwrap(), GOING_AWAY);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_blocked_for_a_whole_interval_is_a_ping_timeout() {
        let mut s = start();
        let t0 = Instant::now();
        read_until(&mut s.client, t0 + Duration::from_secs(11)).await;
        // The client reads nothing more: the frame's write never finishes.
        assert_ne!(s.queue.offer(&big_frame(), true), Offer::Full);
        assert_eq!(s.writer.await.unwrap(), PING_TIMEOUT);
        assert!(Instant::now() <= t0 + Duration::from_secs(11) + EVERY);
    }

    /// Let go after the listener's loss while its peer reads nothing, the writer
    /// tries to send what was queued for the drain timeout, then closes 1012. (It
    /// once never gave up: the wait that cuts a slow consumer's write short also
    /// woke for this ending. Two threads, real time: a loop that never yields
    /// must not stop the test's own clock.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blocked_write_at_listener_loss_gives_up_after_the_drain_timeout() {
        let s = start();
        assert_ne!(s.queue.offer(&big_frame(), true), Offer::Full);
        s.queue.end(Ending::ListenerRestarted);
        s.queue.close();
        let outcome = timeout(2 * CLOSE_TIMEOUT, s.writer).await;
        assert_eq!(
            outcome.expect("the writer did not give up").unwrap(),
            Outcome::Close(Close::ListenerRestarted)
        );
        drop(s.client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_answering_pings_is_a_ping_timeout() {
        let mut s = start();
        let t0 = Instant::now();
        read_until(&mut s.client, t0 + Duration::from_secs(5)).await;
        // Nothing is read, so the ping at 10 s is never answered.
        assert_eq!(s.writer.await.unwrap(), PING_TIMEOUT);
        assert_eq!(Instant::now(), t0 + 2 * EVERY);
    }
}

#[cfg(test)]
mod sizes {
    //! The socket's task lives as long as the connection, so its size is memory per
    //! socket: a large future inlined into it (a history replay, say) costs every
    //! socket, replaying or not. `--nocapture` prints the parts.

    use hyper::upgrade::Upgraded;

    use super::*;

    type Io = TokioIo<Upgraded>;

    /// Measured in a debug build: 3,696 bytes with the replay inlined, 2,496 with it
    /// boxed (a release build's task took 3,838 bytes of heap with it inlined);
    /// 1,720 with one timer, no hub signal and the socket's positions boxed.
    const TASK_LIMIT: usize = 2 * 1024;

    fn returned<A, B, R>(_: impl FnOnce(A, B) -> R) -> usize {
        size_of::<R>()
    }

    fn returned1<A, R>(_: impl FnOnce(A) -> R) -> usize {
        size_of::<R>()
    }

    fn returned3<A, B, C, R>(_: impl FnOnce(A, B, C) -> R) -> usize {
        size_of::<R>()
    }

    #[test]
    fn the_socket_task_stays_small() {
        let serve = returned(Socket::serve);
        let read = returned3(|s: &Socket, st: &mut Stream<Io>, p: &AtomicBool| s.read(st, p, None));
        let writer = returned3(
            |w: Writer<'_, Io>, e: Option<Instant>, r: watch::Receiver<bool>| w.run(e, None, r),
        );
        let batch = returned1(|w: &mut Writer<'_, Io>| w.send_batch());
        let replay = returned(|w: &mut Writer<'_, Io>, p: Option<Duration>| w.replay(p));
        eprintln!(
            "socket task: {serve} bytes; reader {read}, writer {writer} (send_batch {batch}), \
             replay (boxed) {replay}"
        );
        assert!(serve <= TASK_LIMIT, "the socket's task is {serve} bytes");
    }
}
