//! The listener's work on history channels that goes through the store: the
//! fetch of announced messages, each channel's last delivered position, and the
//! catch-up after a lost connection (PROTOCOL.md §15). Each piece of work is a
//! future whose result the listener applies in notification order.

use std::{collections::HashMap, future::Future, pin::Pin, sync::Arc};

use bytes::Bytes;
use tokio::sync::watch;

use super::{
    history::{History, PAGE},
    hub::{Frame, Origin},
    resume::NONE_YET,
};
use crate::history::{Position, Reference};

/// Work done off the listener's loop, applied in order.
pub(crate) type Delivery = Pin<Box<dyn Future<Output = Result<Done, String>> + Send>>;

/// What a [`Delivery`] found.
pub(crate) enum Done {
    /// Frames for a channel's readers, in order (none: the message is gone).
    Frames(String, Vec<Frame>),
    /// Where a channel's history stood when its readers started to count on
    /// it (`None`: it has none yet); `Err` when that could not be read.
    Baseline(String, Result<Position, String>),
    /// A channel's catch-up found messages no longer kept: its readers missed
    /// them.
    Missed(String),
}

/// A plain notification's frame, queued behind store work.
pub(crate) fn ready(channel: String, frame: Frame) -> Delivery {
    Box::pin(std::future::ready(Ok(Done::Frames(channel, vec![frame]))))
}

/// The fetch of an announced message: once per message, whatever the number of
/// readers.
pub(crate) fn fetch(history: Arc<History>, reference: Reference) -> Delivery {
    Box::pin(async move {
        let channel = reference.channel.clone();
        let origin = Arc::new(Origin {
            channel: channel.clone(),
            position: Some(reference.position()),
        });
        let found = history.fetch(reference).await?;
        let frames = found
            .map(|payload| Frame::new(payload, Some(origin)))
            .into_iter()
            .collect();
        Ok(Done::Frames(channel, frames))
    })
}

/// The head of `channel` once `listening` (the channel is listened to).
pub(crate) fn baseline(
    history: Arc<History>,
    channel: String,
    mut listening: watch::Receiver<bool>,
) -> Delivery {
    Box::pin(async move {
        let _ = listening.wait_for(|up| *up).await;
        let head = history.head(&channel).await;
        let head = head.map(|found| {
            found.unwrap_or(Position {
                epoch: NONE_YET.into(),
                offset: 0,
            })
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
                    Bytes::from(m.payload.clone()),
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
            Bytes::new(),
            Some(Arc::new(Origin {
                channel: channel.into(),
                position: Some(Position {
                    epoch: epoch.into(),
                    offset,
                }),
            })),
        )
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
        assert!(!seen.check("c", &Frame::from(Bytes::new())));
        seen.forget("c");
        assert!(!seen.knows("c"));
    }
}
