//! The listener's work on history channels that goes through the store: the
//! fetch of announced messages, each channel's last delivered position, and the
//! catch-up after a lost connection (PROTOCOL.md §15). Each piece of work is a
//! future whose result the listener applies in notification order.

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    pin::Pin,
    sync::Arc,
};

use tokio::sync::{oneshot, watch};

use super::{
    frame::{Frame, Origin},
    history::{History, PAGE},
    resume::NONE_YET,
};
use crate::history::{Position, Reference};

/// Work done off the listener's loop, applied in order.
pub(crate) type Delivery = Pin<Box<dyn Future<Output = Result<Done, String>> + Send>>;

/// What a [`Delivery`] found.
pub(crate) enum Done {
    /// Frames for a channel's readers, in order.
    Frames(String, Vec<Frame>),
    /// The announced messages of a [`Batches`] batch, in announcement order,
    /// each with its channel (those gone are left out), and how many there were.
    Fetched(Vec<(String, Frame)>, usize),
    /// Where a channel's history stood before its readers were told they are
    /// subscribed: [`NONE_YET`] while it has none.
    Baseline(String, Position),
    /// A channel's catch-up found messages no longer kept: its readers missed
    /// them.
    Missed(String),
}

/// A plain notification's frame, queued behind store work.
pub(crate) fn ready(channel: String, frame: Frame) -> Delivery {
    Box::pin(std::future::ready(Ok(Done::Frames(channel, vec![frame]))))
}

/// Batches of announced messages sent to the store at once, at most.
const MAX_IN_FLIGHT: usize = 2;
/// Announced messages in one batch, at most.
const MAX_BATCH: usize = 500;

/// The fetches of announced messages, once per message whatever the number of
/// readers, coalesced: the announcements read together make one batch, and
/// while [`MAX_IN_FLIGHT`] batches are at the store, those that follow join
/// one batch, fetched with one query when a batch comes back. With little
/// traffic each message is fetched at once, on its own; under load a query
/// brings many.
#[derive(Default)]
pub(crate) struct Batches {
    /// Batches in the pipe not sent to the store yet, oldest first.
    waiting: VecDeque<Batch>,
    in_flight: usize,
    /// Announced messages in batches not applied yet.
    pub(crate) messages: usize,
}

/// A batch waiting for its turn; its fetch is already in the pipe.
struct Batch {
    refs: Vec<Reference>,
    send: oneshot::Sender<Vec<Reference>>,
    /// Its place in the pipe: joined only while it is the last thing there.
    at: u64,
}

impl Batches {
    /// Adds an announced message, given the number of the last delivery pushed
    /// into the pipe: it joins the batch waiting there, or starts one, whose
    /// references are returned for its [`fetch`], to be pushed next.
    pub(crate) fn add(
        &mut self,
        reference: Reference,
        last: u64,
    ) -> Option<oneshot::Receiver<Vec<Reference>>> {
        self.messages += 1;
        if let Some(batch) = self.waiting.back_mut()
            && batch.at == last
            && batch.refs.len() < MAX_BATCH
        {
            batch.refs.push(reference);
            return None;
        }
        let (send, refs) = oneshot::channel();
        self.waiting.push_back(Batch {
            refs: vec![reference],
            send,
            at: last + 1,
        });
        Some(refs)
    }

    /// A batch of `n` messages was applied: the next one goes.
    pub(crate) fn done(&mut self, n: usize) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.messages = self.messages.saturating_sub(n);
        self.release();
    }

    /// Sends waiting batches to the store while fewer than [`MAX_IN_FLIGHT`]
    /// are there: after the notifications at hand were read.
    pub(crate) fn release(&mut self) {
        while self.in_flight < MAX_IN_FLIGHT {
            let Some(batch) = self.waiting.pop_front() else {
                return;
            };
            self.in_flight += 1;
            let _ = batch.send.send(batch.refs);
        }
    }
}

/// The fetch of one batch of announced messages, once [`Batches`] sends it.
pub(crate) fn fetch(history: Arc<History>, refs: oneshot::Receiver<Vec<Reference>>) -> Delivery {
    Box::pin(async move {
        let refs = refs.await.map_err(|_| "batch dropped".to_owned())?;
        let found = history.fetch(&refs).await?;
        let n = refs.len();
        let frames = refs
            .into_iter()
            .zip(found)
            .filter_map(|(reference, payload)| {
                let origin = Arc::new(Origin {
                    channel: reference.channel.clone(),
                    position: Some(reference.position()),
                });
                let frame = Frame::new(&payload?, Some(origin));
                Some((reference.channel, frame))
            })
            .collect();
        Ok(Done::Fetched(frames, n))
    })
}

/// The head of `channel` once `listening` (announcements are listened to on
/// this connection): every message after it is announced here or caught up.
pub(crate) fn baseline(
    history: Arc<History>,
    channel: String,
    mut listening: watch::Receiver<bool>,
) -> Delivery {
    Box::pin(async move {
        let _ = listening.wait_for(|up| *up).await;
        let head = history.head(&channel).await?.unwrap_or(Position {
            epoch: NONE_YET.into(),
            offset: 0,
        });
        Ok(Done::Baseline(channel, head))
    })
}

/// Every kept message of `channel` after `after`, once `listening`: what its
/// readers missed while the listener was away. Live messages queued behind it
/// that it already holds are dropped by [`Seen`].
pub(crate) fn catch_up(
    history: Arc<History>,
    channel: String,
    after: Position,
    mut listening: watch::Receiver<bool>,
) -> Delivery {
    Box::pin(async move {
        let _ = listening.wait_for(|up| *up).await;
        let mut frames = Vec::new();
        let mut after = after;
        loop {
            let read = history.read_after(&channel, &after).await?;
            if read.gap.is_some() && after.epoch != NONE_YET {
                return Ok(Done::Missed(channel));
            }
            let Some(last) = read.messages.last().map(|m| m.offset) else {
                break;
            };
            for m in read.messages.iter() {
                frames.push(Frame::new(
                    m.payload.as_bytes(),
                    Some(Arc::new(Origin {
                        channel: channel.clone(),
                        position: Some(Position {
                            epoch: read.epoch.clone(),
                            offset: m.offset,
                        }),
                    })),
                ));
            }
            let done = (read.messages.len() as i64) < PAGE || last >= read.last_offset;
            after = Position {
                epoch: read.epoch.clone(),
                offset: last,
            };
            if done {
                break;
            }
        }
        Ok(Done::Frames(channel, frames))
    })
}

/// The last position delivered on each history channel that has readers: a
/// stored message at or before it is not delivered again, and a lost
/// connection is caught up from it (from the channel's baseline, the head
/// when it got its first reader, while nothing was delivered).
#[derive(Default)]
pub(crate) struct Seen {
    last: HashMap<String, Position>,
    /// Only where to catch up from: a baseline read while messages were being
    /// committed may be ahead of what is still on its way, so it drops nothing.
    baselines: HashMap<String, Position>,
}

impl Seen {
    /// Whether `frame` was delivered already; records it otherwise.
    pub(crate) fn check(&mut self, channel: &str, frame: &Frame) -> bool {
        let Some(position) = frame.origin.as_ref().and_then(|o| o.position.as_ref()) else {
            return false;
        };
        match self.last.get_mut(channel) {
            Some(last) if last.epoch == position.epoch && position.offset <= last.offset => true,
            Some(last) => {
                *last = position.clone();
                false
            }
            None => {
                self.last.insert(channel.to_owned(), position.clone());
                false
            }
        }
    }

    /// The last delivered position when `frame` comes after a hole: a stored
    /// message of the same epoch more than one offset ahead.
    pub(crate) fn skipped(&self, channel: &str, frame: &Frame) -> Option<Position> {
        let position = frame.origin.as_ref()?.position.as_ref()?;
        let last = self.last.get(channel)?;
        (last.epoch == position.epoch && position.offset > last.offset.saturating_add(1))
            .then(|| last.clone())
    }

    /// A channel's head when its readers started to count on it; a delivered
    /// position, if any, is newer or the same.
    pub(crate) fn baseline(&mut self, channel: String, head: Position) {
        self.baselines.insert(channel, head);
    }

    /// The channel has no readers any more.
    pub(crate) fn forget(&mut self, channel: &str) {
        self.last.remove(channel);
        self.baselines.remove(channel);
    }

    /// Keeps the channels `keep` says yes to.
    pub(crate) fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.last.retain(|channel, _| keep(channel));
        self.baselines.retain(|channel, _| keep(channel));
    }

    /// Whether the channel has a baseline or a delivered position.
    pub(crate) fn knows(&self, channel: &str) -> bool {
        self.last.contains_key(channel) || self.baselines.contains_key(channel)
    }

    /// Each channel and where its catch-up starts: the last delivered
    /// position, else the baseline.
    pub(crate) fn positions(&self) -> impl Iterator<Item = (&String, &Position)> {
        let baselines = self
            .baselines
            .iter()
            .filter(|(channel, _)| !self.last.contains_key(*channel));
        self.last.iter().chain(baselines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(channel: &str, epoch: &str, offset: i64) -> Frame {
        Frame::new(
            b"",
            Some(Arc::new(Origin {
                channel: channel.into(),
                position: Some(Position {
                    epoch: epoch.into(),
                    offset,
                }),
            })),
        )
    }

    fn reference(offset: i64) -> Reference {
        Reference::parse(&format!("{offset} E c")).unwrap()
    }

    #[test]
    fn announcements_join_a_waiting_batch_while_enough_are_at_the_store() {
        let mut batches = Batches::default();
        // What is read together goes together; two batches at the store at once.
        let mut first = batches.add(reference(1), 0).unwrap();
        assert!(batches.add(reference(1), 1).is_none());
        batches.release();
        let mut second = batches.add(reference(2), 1).unwrap();
        batches.release();
        assert_eq!(first.try_recv().unwrap().len(), 2);
        assert_eq!(second.try_recv().unwrap().len(), 1);
        // The third waits; the fourth joins it, the fifth too.
        let mut third = batches.add(reference(3), 2).unwrap();
        assert!(batches.add(reference(4), 3).is_none());
        batches.release();
        assert!(batches.add(reference(5), 3).is_none());
        assert!(third.try_recv().is_err());
        // Something else was pushed after it: the sixth starts a batch.
        let mut sixth = batches.add(reference(6), 4).unwrap();
        batches.release();
        assert_eq!(batches.messages, 7);
        batches.done(2);
        let offsets: Vec<i64> = third.try_recv().unwrap().iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [3, 4, 5]);
        assert!(sixth.try_recv().is_err());
        batches.done(1);
        assert_eq!(sixth.try_recv().unwrap().len(), 1);
        assert_eq!(batches.messages, 4);
    }

    #[test]
    fn a_position_at_or_before_the_last_one_is_seen() {
        let mut seen = Seen::default();
        seen.baseline(
            "c".into(),
            Position {
                epoch: "E".into(),
                offset: 3,
            },
        );
        // A baseline drops nothing: it may be ahead of messages on their way.
        assert!(!seen.check("c", &stored("c", "E", 3)));
        assert!(seen.check("c", &stored("c", "E", 3)));
        assert_eq!(seen.skipped("c", &stored("c", "E", 4)), None);
        assert_eq!(
            seen.skipped("c", &stored("c", "E", 5)).map(|p| p.offset),
            Some(3)
        );
        assert_eq!(seen.skipped("c", &stored("c", "F", 5)), None);
        assert!(!seen.check("c", &stored("c", "E", 4)));
        assert!(seen.check("c", &stored("c", "E", 4)));
        // A new epoch starts over.
        assert!(!seen.check("c", &stored("c", "F", 1)));
        // Plain notifications are never seen.
        assert!(!seen.check("c", &Frame::from("")));
        seen.forget("c");
        assert!(!seen.knows("c"));
    }
}
