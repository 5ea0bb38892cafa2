//! Thin wrappers over crate internals for `benches/`. **Not part of the API**:
//! hidden from the docs, unstable, and free to change or vanish in any release.
//!
//! Each wrapper only forwards to the internal item it names, so a benchmark
//! measures the code the layer runs.

use std::{collections::HashMap, sync::Arc, time::SystemTime};

use tokio::sync::oneshot;

use crate::{
    auth::Authorizer,
    config::Config,
    engine::{
        frame::Frame,
        hub::{Hub, Join},
        outbox::{Offer, Outbox},
        pace::Pace,
    },
    envelope::{self, Claims, Event},
    http::handshake::{self, Route},
    mapping::Mapping,
};

/// The token check and channel grant (`Authorizer::authorize`).
pub struct Auth(Authorizer);

impl Auth {
    /// An authorizer with `config`'s keys and rules.
    pub fn new(config: &Config) -> Self {
        Self(Authorizer::new(
            config.keys.clone(),
            config.values.audience.clone(),
            config.values.leeway,
            config.values.max_channels,
            Mapping::new(config.listen_channel()),
        ))
    }

    /// Checks `token` (with an optional, still percent-encoded path channel); returns
    /// the number of granted channels, or the refusal's text.
    pub fn authorize(&self, path_channel: Option<&str>, token: &str) -> Result<usize, String> {
        self.0
            .authorize(path_channel, token)
            .map(|grant| grant.channels.len())
            .map_err(|refusal| refusal.to_string())
    }
}

/// A socket's claims encoded once, in the form of each mapping (`envelope::Claims`).
pub struct EnvelopeClaims {
    per_channel: Claims,
    multiplexed: Claims,
}

impl EnvelopeClaims {
    /// Encodes the claims of a JSON object; `None` when `claims_json` is not one.
    pub fn new(claims_json: &str) -> Option<Self> {
        let claims = serde_json::from_str(claims_json).ok()?;
        Some(Self {
            per_channel: Mapping::PerChannel.claims(&claims),
            multiplexed: Mapping::new(Some("pgws")).claims(&claims),
        })
    }
}

/// The per-channel envelope of a socket's message (`envelope::per_channel`).
pub fn envelope_per_channel(channel: &str, payload: &str, claims: &EnvelopeClaims) -> String {
    envelope::per_channel(channel, Event::Message, payload, &claims.per_channel)
}

/// The multiplexed envelope of a socket's message (`envelope::multiplexed`).
pub fn envelope_multiplexed(
    channel: &str,
    payload: &str,
    claims: &EnvelopeClaims,
    at: SystemTime,
) -> String {
    envelope::multiplexed(channel, Event::Message, payload, &claims.multiplexed, at)
}

/// Routes a notification as the multiplexed mapping does (`Mapping::route`); returns
/// the WebSocket channel's length, or `None` when the notification is not ours.
pub fn route_multiplexed(listen_channel: &str, pg_channel: &str, payload: &str) -> Option<usize> {
    Mapping::new(Some(listen_channel))
        .route(pg_channel, payload)
        .map(|c| c.len())
}

/// A hub (`Hub`) with the receiving ends of its subscribers' queues, so a benchmark can
/// dispatch into it and drain the queues outside its measurement.
#[derive(Default)]
pub struct BenchHub {
    hub: Hub,
    receivers: HashMap<u64, Arc<Outbox>>,
    next_id: u64,
}

impl BenchHub {
    /// An empty hub that writes to idle sockets whatever the load (back-to-back
    /// dispatches would otherwise read as a busy hub, which queues).
    pub fn new() -> Self {
        let mut hub = Self::default();
        hub.hub.set_pace(Pace::fixed(true));
        hub
    }

    /// Joins one socket reading `channels` with a queue of `queue` frames, acked at
    /// once; returns its id and how many channels got their first reader (the
    /// `LISTEN`s the listener would send).
    pub fn join(&mut self, channels: &[&str], queue: usize) -> (u64, usize) {
        self.next_id += 1;
        let id = self.next_id;
        let rx = Outbox::new(queue);
        let (ack, _) = oneshot::channel();
        let fresh = self.hub.join(
            Join {
                id,
                channels: channels.iter().map(|c| (*c).to_owned()).collect(),
                queue: rx.clone(),
                ack,
            },
            id,
        );
        self.hub.ack_through(id);
        self.receivers.insert(id, rx);
        (id, fresh.len())
    }

    /// Joins one socket reading `channels` whose write half takes every write whole,
    /// as an idle socket with room does: the hub writes frames to it itself.
    pub fn join_writing(&mut self, channels: &[&str], queue: usize) -> (u64, usize) {
        let joined = self.join(channels, queue);
        self.receivers[&joined.0].attach(Box::new(tokio::io::sink()), true);
        joined
    }

    /// Removes socket `id` and drops its queue; returns how many channels lost their
    /// last reader (the `UNLISTEN`s the listener would send).
    pub fn leave(&mut self, id: u64) -> usize {
        self.receivers.remove(&id);
        self.hub.leave(id).len()
    }

    /// What the listener does after losing its connection (`Hub::drop_live`): lets
    /// go of every acknowledged socket; returns how many channels still have readers.
    /// The sockets' queue ends stay with this hub, as a socket drops its own later.
    pub fn drop_live(&mut self) -> usize {
        self.hub.drop_live(|_| false);
        self.hub.channel_count()
    }

    /// Queues one shared frame for every reader of `channel` (`Hub::dispatch`);
    /// returns how many channels emptied because of slow consumers.
    pub fn dispatch(&mut self, channel: &str, frame: &BenchFrame) -> usize {
        self.hub.dispatch(channel, &frame.0).len()
    }

    /// What the listener does per notification: encode the payload into one shared
    /// frame and dispatch it to the readers of `channel`.
    pub fn deliver(&mut self, channel: &str, payload: &str) -> usize {
        let frame = Frame::from(payload);
        self.hub.dispatch(channel, &frame).len()
    }

    /// Empties every subscriber's queue; returns the number of frames taken.
    pub fn drain(&mut self) -> usize {
        let mut taken = 0;
        for rx in self.receivers.values_mut() {
            while rx.try_recv().is_some() {
                taken += 1;
            }
        }
        taken
    }

    /// How many channels have readers.
    pub fn channel_count(&self) -> usize {
        self.hub.channel_count()
    }
}

/// One socket's outbox (`Outbox`) with `writer` as its write half, for the backlog
/// path: frames queued by the hub, then written by the socket's task, up to 16 a
/// write.
pub struct BenchOutbox(Arc<Outbox>);

impl BenchOutbox {
    /// An outbox of `queue` frames writing to `writer`.
    pub fn new(queue: usize, writer: impl tokio::io::AsyncWrite + Send + Unpin + 'static) -> Self {
        let outbox = Outbox::new(queue);
        outbox.attach(Box::new(writer), true);
        Self(outbox)
    }

    /// Queues `frame`, as the hub does for a socket that is still writing; `false`
    /// when the queue is full.
    pub fn queue(&self, frame: &BenchFrame) -> bool {
        self.0.offer(&frame.0, false) != Offer::Full
    }

    /// Writes everything queued, as the socket's task does; returns the frames
    /// written (fewer if the writer is not ready).
    pub fn send_all(&self) -> usize {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut sent = 0;
        while !self.0.is_idle() {
            let mut render = |frame: Frame| {
                sent += 1;
                Some(frame.wire.clone())
            };
            if !matches!(
                self.0.poll_send(&mut cx, &mut render),
                std::task::Poll::Ready(Ok(()))
            ) {
                break;
            }
        }
        sent
    }
}

/// A notification encoded once (`Frame::new`), as the listener makes it.
pub struct BenchFrame(Frame);

impl BenchFrame {
    /// The frame of `payload`.
    pub fn new(payload: &str) -> Self {
        Self(Frame::from(payload))
    }
}

/// How the layer sorts a request (`handshake::route`), for the fuzz targets:
/// `None` when it passes to the wrapped service, else the channel as it stands in
/// the path and the token, or the `400` text.
pub fn route_request<B>(
    req: &http::Request<B>,
    prefix: &str,
) -> Option<Result<(Option<String>, String), String>> {
    match handshake::route(req, prefix) {
        Route::Pass => None,
        Route::Refused(refusal) => Some(Err(refusal.to_string())),
        Route::Ours { channel, token, .. } => {
            Some(Ok((channel.map(str::to_owned), token.to_owned())))
        }
    }
}

/// The WebSocket channel a multiplexed notification goes to (`Mapping::route`).
pub fn routed_channel(listen_channel: &str, pg_channel: &str, payload: &str) -> Option<String> {
    Mapping::new(Some(listen_channel))
        .route(pg_channel, payload)
        .map(|c| c.into_owned())
}
