//! The session protocol (PROTOCOL.md §17), for sockets that offered `pgws.json`:
//! the frame codec, and the command handler the socket's task drives. The
//! handler answers publishes, subscribes, unsubscribes, refreshes and pings;
//! the socket's writer writes what it hands over ([`Control`]), in order.
//!
//! Each channel of a session socket is a member of the hub of its own, all
//! sharing the socket's outbox: a channel is joined and left like a socket's
//! channels at a handshake, with the same `LISTEN` bookkeeping.

pub(crate) mod codec;

use std::{
    collections::{HashSet, VecDeque},
    pin::Pin,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use serde_json::Value;
use tokio::{
    sync::mpsc,
    time::{Instant, sleep_until, timeout},
};

use crate::{
    auth::{Grant, Scope, check_channel_name},
    envelope::Event,
    mapping::Notify,
    time::instant_at,
};

use self::codec::{Code, Command};
use super::{Engine, frame::Frame, listener::Subscription, outbox::Outbox, resume::Start};

/// NOTIFY payloads must stay under this many bytes.
const NOTIFY_LIMIT: usize = 8000;
/// Answers waiting for the writer, at most: past it the handler waits, and so
/// stops reading the socket.
pub(crate) const CONTROL_QUEUE: usize = 16;
/// How long a `history` subscribe may take to read the channel's head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// What the handler hands the socket's writer, in order (boxed on the way: the
/// writer's future holds one, and is memory per socket).
#[derive(Debug)]
pub(crate) enum Control {
    /// An answer, written ahead of the notifications still queued.
    Answer(Bytes),
    /// A channel is listened to: its `subscribed` answer, then its replay (if
    /// any), then its live messages.
    Subscribed {
        answer: Bytes,
        channel: String,
        replay: Option<Start>,
    },
    /// A subscribe failed: the hub may write to the socket again.
    Direct,
    /// A new token: its expiry closes the socket from now on.
    Refreshed {
        /// `None` when the hub sends it, after the channels left.
        answer: Option<Bytes>,
        expires_at: Option<Instant>,
    },
}

/// A session socket's state, made at its handshake.
pub(crate) struct Session {
    /// The outbox every channel of the socket shares.
    pub(crate) queue: Arc<Outbox>,
    /// The channel of the URL, as it stands there (a refresh is checked for it).
    pub(crate) path_channel: Option<String>,
    pub(crate) scope: Scope,
    /// Each subscribed channel and its place in the hub.
    pub(crate) channels: Vec<(String, Subscription)>,
}

impl Session {
    /// The channels the writer delivers at the start.
    pub(crate) fn live(&self) -> HashSet<String> {
        self.channels.iter().map(|(c, _)| c.clone()).collect()
    }
}

/// The writer's side of a session: what the handler hands over, and the
/// channels whose messages it delivers (a channel being joined is not one yet:
/// its messages start after its `subscribed`).
pub(crate) struct Outlet {
    pub(crate) control: mpsc::Receiver<Box<Control>>,
    pub(crate) live: HashSet<String>,
    /// Channels whose replay could not be read, back to the handler (at most
    /// one per subscribe).
    failed: mpsc::UnboundedSender<String>,
}

impl Outlet {
    /// Whether a queued frame goes out: answers always, messages of live channels.
    pub(crate) fn admits(&self, frame: &Frame) -> bool {
        frame
            .origin
            .as_ref()
            .is_none_or(|o| self.live.contains(&o.channel))
    }

    /// A channel whose replay could not be read: delivered no more, and left
    /// by the handler. Its `unsubscribed` answer, reason `unavailable`.
    pub(crate) fn leave_unavailable(&mut self, channel: String) -> Bytes {
        self.live.remove(&channel);
        let answer = codec::channel_answer("unsubscribed", None, &channel, Some("unavailable"));
        let _ = self.failed.send(channel);
        answer
    }
}

/// A publish read and checked, waiting for its turn.
struct Publish {
    id: Option<String>,
    /// For a history channel: the WebSocket channel and the message to keep.
    stored: Option<(String, String)>,
    notifies: Vec<Notify>,
}

type Pending = Pin<Box<dyn Future<Output = Bytes> + Send>>;

/// What the handler waits for besides client frames.
pub(crate) enum Wake {
    /// The publish in flight was answered.
    Published(Bytes),
    /// The `expiring` notice is due.
    Notice,
    /// The writer left this channel: its replay could not be read.
    Failed(String),
}

/// The command handler of one session socket.
pub(crate) struct Handler {
    session: Session,
    engine: Arc<Engine>,
    grant: Grant,
    control: mpsc::Sender<Box<Control>>,
    failed: mpsc::UnboundedReceiver<String>,
    /// Publishes read, in order, and the one being committed.
    waiting: VecDeque<Publish>,
    in_flight: Option<Pending>,
    /// When the `expiring` notice is due, and for which `exp` one was sent.
    notice_at: Option<Instant>,
    noticed: Option<Value>,
}

impl Handler {
    /// The handler, and the writer's side of it.
    pub(crate) fn new(session: Session, engine: Arc<Engine>, grant: Grant) -> (Handler, Outlet) {
        let (control, rx) = mpsc::channel(CONTROL_QUEUE);
        let (failed_tx, failed) = mpsc::unbounded_channel();
        let outlet = Outlet {
            control: rx,
            live: session.live(),
            failed: failed_tx,
        };
        let mut handler = Handler {
            session,
            engine,
            grant,
            control,
            failed,
            waiting: VecDeque::new(),
            in_flight: None,
            notice_at: None,
            noticed: None,
        };
        handler.plan_notice();
        (handler, outlet)
    }

    /// Whether the socket may be read: fewer publishes unanswered than
    /// `PGWS_MAX_IN_FLIGHT`.
    pub(crate) fn may_read(&self) -> bool {
        self.waiting.len() + usize::from(self.in_flight.is_some())
            < self.engine.settings.max_in_flight
    }

    /// The next thing to do that is no client frame.
    pub(crate) async fn wake(&mut self) -> Wake {
        if self.in_flight.is_none()
            && let Some(publish) = self.waiting.pop_front()
        {
            self.in_flight = Some(Box::pin(commit(self.engine.clone(), publish)));
        }
        let notice = self.notice_at;
        let in_flight = &mut self.in_flight;
        tokio::select! {
            answer = async { in_flight.as_mut().expect("checked").await }, if in_flight.is_some() => {
                *in_flight = None;
                Wake::Published(answer)
            }
            () = sleep_until(notice.unwrap_or_else(Instant::now)), if notice.is_some() => Wake::Notice,
            Some(channel) = self.failed.recv() => Wake::Failed(channel),
            else => std::future::pending().await,
        }
    }

    /// Acts on what [`wake`](Self::wake) gave.
    pub(crate) async fn on_wake(&mut self, wake: Wake) {
        match wake {
            Wake::Published(answer) => self.send(Control::Answer(answer)).await,
            Wake::Failed(channel) => {
                // Answered by the writer already; dropping it leaves the hub.
                self.session.channels.retain(|(c, _)| *c != channel);
            }
            Wake::Notice => {
                self.notice_at = None;
                if let Some(exp) = self.session.scope.exp.clone() {
                    self.noticed = Some(exp.clone());
                    self.send(Control::Answer(codec::expiring(&exp))).await;
                }
            }
        }
    }

    /// Handles one client frame (a text frame; `None` for a binary one).
    pub(crate) async fn on_frame(&mut self, bytes: Option<&[u8]>) {
        let parsed = match bytes {
            Some(bytes) => codec::parse(bytes),
            None => codec::Parsed {
                id: None,
                command: Err("frames are text".into()),
            },
        };
        let id = parsed.id.as_deref();
        let answer = match parsed.command {
            Err(why) => Err((Code::BadRequest, why)),
            Ok(Command::Ping) => Ok(Some(codec::answer("pong", id))),
            Ok(Command::Publish { channel, payload }) => {
                self.publish(id, channel, &payload).map(|()| None)
            }
            Ok(Command::Subscribe {
                channel,
                since,
                history,
            }) => {
                let start = since.map(Start::After).or(history.map(Start::Last));
                self.subscribe(id, channel, start).await.map(|()| None)
            }
            Ok(Command::Unsubscribe { channel }) => Ok(self.unsubscribe(id, &channel)),
            Ok(Command::Refresh { token }) => self.refresh(id, &token).await.map(|()| None),
        };
        match answer {
            Ok(Some(answer)) => self.send(Control::Answer(answer)).await,
            Ok(None) => {}
            Err((code, why)) => {
                self.send(Control::Answer(codec::error(id, code, &why)))
                    .await
            }
        }
    }

    async fn send(&mut self, control: Control) {
        // The writer ends first only when the socket does.
        let _ = self.control.send(Box::new(control)).await;
    }

    /// Checks a publish and queues it behind the others.
    fn publish(
        &mut self,
        id: Option<&str>,
        channel: Option<String>,
        payload: &str,
    ) -> Result<(), (Code, String)> {
        let forbidden = |why: &str| (Code::Forbidden, why.to_owned());
        if !self.grant.mode.writes() {
            return Err(forbidden("Write not allowed"));
        }
        let channel = match channel {
            Some(channel) => channel,
            None => self.default_channel().ok_or((
                Code::BadRequest,
                "channel is required: the socket has no single channel".to_owned(),
            ))?,
        };
        check_channel_name(&channel).map_err(|_| {
            (
                Code::BadRequest,
                "Invalid channel name: 1 to 63 bytes of UTF-8 without NUL".to_owned(),
            )
        })?;
        if !self.session.scope.allowed.allows(&channel) {
            return Err(forbidden("Channel not granted"));
        }
        let engine = &self.engine;
        let mut notifies = engine.mapping.notifies(
            std::slice::from_ref(&channel),
            Event::Message,
            payload,
            &self.grant.claims,
            SystemTime::now(),
        );
        let kept = engine
            .history
            .as_ref()
            .is_some_and(|h| h.channels.matches(&channel));
        let too_big = (Code::TooBig, "Message too big".to_owned());
        let stored = if kept {
            if payload.len() > engine.settings.max_message_bytes {
                return Err(too_big);
            }
            let notify = notifies.pop().expect("one channel, one notify");
            Some((channel, notify.payload))
        } else {
            if notifies.iter().any(|n| n.payload.len() >= NOTIFY_LIMIT) {
                return Err(too_big);
            }
            None
        };
        self.waiting.push_back(Publish {
            id: id.map(str::to_owned),
            stored,
            notifies,
        });
        Ok(())
    }

    /// The channel a publish may leave out: the URL's, or the token's only one.
    fn default_channel(&self) -> Option<String> {
        match (&self.session.path_channel, self.grant.channels.as_slice()) {
            (Some(_), [channel]) => Some(channel.clone()),
            _ => self.session.scope.allowed.only().map(str::to_owned),
        }
    }

    async fn subscribe(
        &mut self,
        id: Option<&str>,
        channel: String,
        start: Option<Start>,
    ) -> Result<(), (Code, String)> {
        if !self.grant.mode.reads() {
            return Err((Code::Forbidden, "Read not allowed".into()));
        }
        check_channel_name(&channel).map_err(|_| {
            (
                Code::BadRequest,
                "Invalid channel name: 1 to 63 bytes of UTF-8 without NUL".to_owned(),
            )
        })?;
        if !self.session.scope.allowed.allows(&channel) {
            return Err((Code::Forbidden, "Channel not granted".into()));
        }
        let answer = codec::channel_answer("subscribed", id, &channel, None);
        if self.session.channels.iter().any(|(c, _)| *c == channel) {
            self.send(Control::Answer(answer)).await;
            return Ok(());
        }
        if self.session.channels.len() >= self.engine.settings.max_channels {
            return Err((Code::TooMany, "Too many channels".into()));
        }
        let history = self.engine.history.clone();
        let history = history.as_deref().filter(|h| h.channels.matches(&channel));
        let start = match (start, history) {
            (None, _) => None,
            (Some(_), None) => {
                return Err((Code::BadRequest, "The channel keeps no history".into()));
            }
            (Some(Start::Last(n)), Some(history)) => {
                let head = timeout(HEAD_TIMEOUT, history.head(&channel)).await;
                let Ok(Ok(head)) = head else {
                    return Err(unavailable());
                };
                Some(Start::window(head, n))
            }
            (Some(start), Some(_)) => Some(start),
        };
        // Until the writer has sent the answer, the hub queues: it would write
        // the channel's messages ahead of it.
        let queue = self.session.queue.clone();
        queue.set_direct(false);
        let listener = &self.engine.listener;
        let join = listener.join(vec![channel.clone()], queue);
        let subscription = match timeout(self.engine.settings.subscribe_timeout, join).await {
            Ok(Some(subscription)) => subscription,
            _ => {
                self.send(Control::Answer(codec::error(
                    id,
                    Code::Unavailable,
                    "Database unavailable",
                )))
                .await;
                self.send(Control::Direct).await;
                return Ok(());
            }
        };
        self.session.channels.push((channel.clone(), subscription));
        self.send(Control::Subscribed {
            answer,
            channel,
            replay: start,
        })
        .await;
        Ok(())
    }

    /// Leaves `channel`; its answer comes after the channel's last message.
    fn unsubscribe(&mut self, id: Option<&str>, channel: &str) -> Option<Bytes> {
        let answer = codec::channel_answer("unsubscribed", id, channel, None);
        match self.session.channels.iter().position(|(c, _)| c == channel) {
            Some(at) => {
                let (_, subscription) = self.session.channels.swap_remove(at);
                subscription.part(Frame::new(&answer, None));
                None
            }
            None => Some(answer),
        }
    }

    /// Checks a new token as at a handshake; once taken, leaves the channels
    /// it no longer grants. A refused one changes nothing.
    async fn refresh(&mut self, id: Option<&str>, token: &str) -> Result<(), (Code, String)> {
        let authorizer = &self.engine.authorizer;
        let (grant, scope) = authorizer
            .authorize_session(self.session.path_channel.as_deref(), token)
            .map_err(|refusal| (Code::Unauthorized, refusal.to_string()))?;
        if let Some(sub) = &self.session.scope.sub
            && scope.sub.as_ref() != Some(sub)
        {
            return Err((Code::Unauthorized, "Token sub differs".into()));
        }
        let reads = grant.mode.reads();
        let (kept, dropped): (Vec<_>, Vec<_>) = std::mem::take(&mut self.session.channels)
            .into_iter()
            .partition(|(c, _)| reads && scope.allowed.allows(c));
        self.session.channels = kept;
        let expires_at = grant.expires_at.and_then(instant_at);
        let mut answer = Some(codec::refreshed(id, scope.exp.as_ref()));
        // The answer follows the channels' `unsubscribed`, in the hub's order.
        if !dropped.is_empty() {
            for (channel, subscription) in dropped {
                let left =
                    codec::channel_answer("unsubscribed", None, &channel, Some("not granted"));
                subscription.part(Frame::new(&left, None));
            }
            let answer = answer.take().expect("made above");
            let queue = self.session.queue.clone();
            self.engine.listener.offer(queue, Frame::new(&answer, None));
        }
        self.grant = grant;
        self.session.scope = scope;
        self.plan_notice();
        self.send(Control::Refreshed { answer, expires_at }).await;
        Ok(())
    }

    /// Sets the `expiring` notice for the `exp` in force, unless off or sent.
    fn plan_notice(&mut self) {
        let notice = self.engine.settings.expiry_notice;
        let exp = self.session.scope.exp.as_ref();
        self.notice_at = match exp.and_then(Value::as_f64) {
            Some(_) if notice.is_zero() || self.noticed.as_ref() == exp => None,
            Some(exp) => {
                let at = Duration::try_from_secs_f64((exp - notice.as_secs_f64()).max(0.0))
                    .ok()
                    .and_then(|d| UNIX_EPOCH.checked_add(d));
                Some(at.and_then(instant_at).unwrap_or_else(Instant::now))
            }
            None => None,
        };
    }
}

fn unavailable() -> (Code, String) {
    (Code::Unavailable, "Database unavailable".into())
}

/// Commits one publish: its answer, `ack` once committed.
async fn commit(engine: Arc<Engine>, publish: Publish) -> Bytes {
    let Publish {
        id,
        stored,
        notifies,
    } = publish;
    let result = match (&engine.history, &stored) {
        (Some(history), Some((channel, payload))) => {
            history
                .publish(&[(channel.as_str(), payload.as_str())], &notifies)
                .await
        }
        _ => engine.publisher.publish(&notifies).await,
    };
    let id = id.as_deref();
    match result {
        Ok(()) => {
            engine.counters.message_notified();
            codec::answer("ack", id)
        }
        Err(e) => {
            engine.counters.notify_failed();
            tracing::warn!(error = %e.0, "publish failed");
            codec::error(id, Code::Unavailable, "Database unavailable")
        }
    }
}
