//! One connection's task: frames in, queue out, ping, expiry, close codes.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, stream::SplitSink, stream::SplitStream};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{OwnedSemaphorePermit, watch},
    task::JoinHandle,
    time::{Instant, Interval, MissedTickBehavior, interval_at, timeout},
};
use tokio_websockets::{CloseCode, Limits, Message, Payload, ServerBuilder, WebSocketStream};
use tracing::Instrument;

use crate::{
    auth::Grant,
    envelope::Event,
    hub::{Ending, Signal},
    layer::Shared,
    listener::Subscription,
    stats::Counters,
};

/// How long a close waits for the peer's answer, and how long shutdown drains.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// NOTIFY payloads must stay under this many bytes.
const NOTIFY_LIMIT: usize = 8000;
/// Frames coalesced into one flush.
const BATCH: usize = 64;

/// How the exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// We close with this code.
    Close(CloseCode, &'static str),
    /// The peer closed, or the stream failed; the codec already answered.
    Ended,
}

const GOING_AWAY: Outcome = Outcome::Close(CloseCode::GOING_AWAY, "Going away");

/// One accepted socket.
pub(crate) struct Socket {
    pub(crate) grant: Grant,
    pub(crate) subscription: Option<Subscription>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Held while the socket lives: counts against the socket limit.
    pub(crate) _permit: OwnedSemaphorePermit,
}

type Sink<S> = SplitSink<WebSocketStream<S>, Message>;
type Stream<S> = SplitStream<WebSocketStream<S>>;

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
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let limits = Limits::default().max_payload_len(Some(self.shared.max_message_bytes));
        let (mut sink, mut stream) = ServerBuilder::new().limits(limits).serve(io).split();
        let mode = self.grant.mode;
        self.shared.counters.socket_opened(mode);
        tracing::info!("socket open");
        // Published alongside, so a slow database does not hold up pings and
        // notifications; the first message waits for it to keep the order.
        let open = self
            .meta(Event::ConnectionOpen)
            .map(|open| tokio::spawn(open.in_current_span()));
        let outcome = self.exchange(&mut sink, &mut stream, open).await;
        match outcome {
            Outcome::Close(code, reason) => {
                tracing::info!(code = u16::from(code), reason, "socket closed")
            }
            Outcome::Ended => tracing::info!("socket closed by the peer"),
        }
        finish(&mut sink, &mut stream, outcome).await;
        if let Some(close) = self.meta(Event::ConnectionClose) {
            close.await;
        }
        self.shared.counters.socket_closed(mode);
    }

    async fn exchange<S>(
        &mut self,
        sink: &mut Sink<S>,
        stream: &mut Stream<S>,
        open: Option<JoinHandle<()>>,
    ) -> Outcome
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let pong = AtomicBool::new(false);
        let mut subscription = self.subscription.take();
        let expiry = self.grant.expires_at.map(instant_at);
        let ping = self.shared.ping_interval;
        let writer = Writer {
            sink,
            signal: subscription.as_ref().map(|s| s.signal.clone()),
            sub: subscription.as_mut(),
            pong: &pong,
            counters: &self.shared.counters,
        }
        .run(expiry, ping, self.shutdown.clone());
        let reader = self.read(stream, &pong, open);
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
    }

    /// Reads messages and NOTIFYs them in order; stops between messages on shutdown.
    async fn read<S>(
        &self,
        stream: &mut Stream<S>,
        pong: &AtomicBool,
        mut open: Option<JoinHandle<()>>,
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
            let msg = match next {
                Some(Ok(msg)) => msg,
                // Too long once reassembled: the codec leaves that answer to us.
                Some(Err(tokio_websockets::Error::PayloadTooLong { .. })) => {
                    return Outcome::Close(CloseCode::MESSAGE_TOO_BIG, "Message too big");
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "socket stream error");
                    return Outcome::Ended;
                }
                None => return Outcome::Ended,
            };
            if msg.is_close() {
                return Outcome::Ended;
            } else if msg.is_pong() {
                pong.store(true, Ordering::Release);
            } else if msg.is_text() || msg.is_binary() {
                if let Some(open) = open.take() {
                    let _ = open.await;
                }
                if let Err(outcome) = self.on_message(msg).await {
                    return outcome;
                }
            }
        }
    }

    /// Checks one data message (mode, UTF-8, NOTIFY size) and NOTIFYs it.
    async fn on_message(&self, msg: Message) -> Result<(), Outcome> {
        if !self.grant.mode.writes() {
            return Err(Outcome::Close(
                CloseCode::POLICY_VIOLATION,
                "Write not allowed: this token's mode is r",
            ));
        }
        let payload = msg.into_payload();
        let text = std::str::from_utf8(&payload)
            .map_err(|_| Outcome::Close(CloseCode::INVALID_FRAME_PAYLOAD_DATA, "Invalid UTF-8"))?;
        let notifies = self.shared.mapping.notifies(
            &self.grant.channels,
            Event::Message,
            text,
            &self.grant.claims,
            SystemTime::now(),
        );
        if notifies.iter().any(|n| n.payload.len() >= NOTIFY_LIMIT) {
            return Err(Outcome::Close(
                CloseCode::MESSAGE_TOO_BIG,
                "Message too big: the NOTIFY payload would reach 8000 bytes",
            ));
        }
        let counters = &self.shared.counters;
        match self.shared.publisher.publish(&notifies).await {
            Ok(()) => {
                counters.message_notified();
                Ok(())
            }
            Err(e) => {
                counters.notify_failed();
                tracing::warn!(error = %e.0, "NOTIFY failed");
                Err(Outcome::Close(
                    CloseCode::SERVICE_OVERLOAD,
                    "Database unavailable",
                ))
            }
        }
    }

    /// The meta event, when a meta channel is configured: best effort, a failure is
    /// logged and counted, never a reason to close.
    fn meta(&self, event: Event) -> Option<impl Future<Output = ()> + Send + 'static> {
        let meta = self.shared.meta_channel.as_ref()?;
        let channels = self.grant.channels.join(",");
        let notifies = self.shared.mapping.notifies(
            std::slice::from_ref(meta),
            event,
            &channels,
            &self.grant.claims,
            SystemTime::now(),
        );
        let shared = self.shared.clone();
        Some(async move {
            if let Err(e) = shared.publisher.publish(&notifies).await {
                shared.counters.meta_failed();
                tracing::warn!(error = %e.0, ?event, "meta event not published");
            }
        })
    }
}

/// The sending half: queued notifications and pings, until a hub signal, expiry,
/// a ping timeout or shutdown.
struct Writer<'a, S> {
    sink: &'a mut Sink<S>,
    sub: Option<&'a mut Subscription>,
    signal: Option<Arc<Signal>>,
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
        let mut ping = ping_every.map(|every| {
            let mut i = interval_at(Instant::now() + every, every);
            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
            i
        });
        let mut pinged = false;
        loop {
            tokio::select! {
                biased;
                ending = ended(self.signal.as_deref()) => return self.on_ending(ending).await,
                _ = shutting_down(&mut shutdown) => {
                    let _ = timeout(CLOSE_TIMEOUT, self.drain()).await;
                    return GOING_AWAY;
                }
                _ = sleep_until_opt(expiry) => return Outcome::Close(jwt_expired(), "JWT expired"),
                _ = tick(&mut ping) => {
                    if pinged && !self.pong.swap(false, Ordering::AcqRel) {
                        return PING_TIMEOUT;
                    }
                    pinged = true;
                    if self.sink.send(Message::ping(Bytes::new())).await.is_err() {
                        return Outcome::Ended;
                    }
                }
                frame = recv(self.sub.as_deref_mut()) => {
                    let Some(frame) = frame else {
                        return self.on_ending(Ending::ListenerRestarted).await;
                    };
                    // A peer that reads nothing for a whole ping interval is not answering.
                    tokio::select! {
                        r = self.send_batch(frame) => if r.is_err() { return Outcome::Ended },
                        _ = tick(&mut ping) => return PING_TIMEOUT,
                    }
                }
            }
        }
    }

    async fn on_ending(&mut self, ending: Ending) -> Outcome {
        match ending {
            Ending::SlowConsumer => {
                self.counters.slow_consumer_closed();
                Outcome::Close(
                    CloseCode::POLICY_VIOLATION,
                    "Slow consumer: the outbound queue is full",
                )
            }
            Ending::ListenerRestarted => {
                // What was queued before the loss is still good: deliver it first.
                let _ = timeout(CLOSE_TIMEOUT, self.drain()).await;
                Outcome::Close(
                    CloseCode::SERVICE_RESTART,
                    "Listener restarted: notifications may have been missed",
                )
            }
        }
    }

    /// Feeds a frame and whatever else is queued (up to a batch), then flushes once.
    /// A hub signal arriving meanwhile wins, since a slow consumer may never flush.
    async fn send_batch(&mut self, first: Bytes) -> Result<(), tokio_websockets::Error> {
        let sub = self
            .sub
            .as_deref_mut()
            .expect("frames come from a subscription");
        let signal = self.signal.as_deref();
        let counters = self.counters;
        let sink = &mut *self.sink;
        let send = async {
            let mut sent = 1u64;
            sink.feed(text(first)).await?;
            while sent < BATCH as u64 {
                let Ok(frame) = sub.queue.try_recv() else {
                    break;
                };
                sink.feed(text(frame)).await?;
                sent += 1;
            }
            sink.flush().await?;
            counters.frames_delivered(sent);
            Ok(())
        };
        tokio::select! {
            r = send => r,
            _ = ended(signal) => Ok(()),
        }
    }

    /// Sends everything still queued.
    async fn drain(&mut self) -> Result<(), tokio_websockets::Error> {
        let Some(sub) = self.sub.as_deref_mut() else {
            return Ok(());
        };
        let mut sent = 0;
        while let Ok(frame) = sub.queue.try_recv() {
            self.sink.feed(text(frame)).await?;
            sent += 1;
        }
        self.sink.flush().await?;
        self.counters.frames_delivered(sent);
        Ok(())
    }
}

const PING_TIMEOUT: Outcome = Outcome::Close(CloseCode::INTERNAL_SERVER_ERROR, "Ping timeout");

fn jwt_expired() -> CloseCode {
    CloseCode::try_from(3001).expect("3001 is a valid code")
}

fn text(frame: Bytes) -> Message {
    Message::text(Payload::from(frame))
}

/// Sends our close (if any) and waits at most [`CLOSE_TIMEOUT`] for the peer's answer.
async fn finish<S>(sink: &mut Sink<S>, stream: &mut Stream<S>, outcome: Outcome)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = timeout(CLOSE_TIMEOUT, async {
        if let Outcome::Close(code, reason) = outcome {
            // Refused when the codec already queued its own close; reading on
            // flushes that one.
            let _ = sink.send(Message::close(Some(code), reason)).await;
        }
        while stream.next().await.is_some() {}
    })
    .await;
}

async fn ended(signal: Option<&Signal>) -> Ending {
    match signal {
        Some(signal) => signal.ended().await,
        None => std::future::pending().await,
    }
}

async fn recv(sub: Option<&mut Subscription>) -> Option<Bytes> {
    match sub {
        Some(sub) => sub.queue.recv().await,
        None => std::future::pending().await,
    }
}

async fn tick(ping: &mut Option<Interval>) {
    match ping {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

pub(crate) async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn shutting_down(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|down| *down).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn instant_at(t: SystemTime) -> Instant {
    let left = t.duration_since(SystemTime::now()).unwrap_or_default();
    Instant::now() + left
}
