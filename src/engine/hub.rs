//! Channel → subscribers, owned by the listener task: joins, leaves, fan-out.
//!
//! Nothing here is shared: the listener task owns the [`Hub`]; each reader's
//! [`Outbox`] is what the hub and that reader share.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::Instant,
};

use tokio::sync::oneshot;

use super::{
    frame::Frame,
    outbox::{Ending, Offer, Outbox},
    pace::Pace,
};

/// The batch of a join that waits for something else than a `LISTEN`: while
/// offline, or until the listener knows where its history channels stand.
pub(crate) const HELD: u64 = u64::MAX;

/// A socket asking to read some channels.
pub(crate) struct Join {
    pub(crate) id: u64,
    /// Distinct channels (grants hold no repeats): a repeat is delivered twice.
    pub(crate) channels: Vec<String>,
    pub(crate) queue: Arc<Outbox>,
    pub(crate) ack: oneshot::Sender<()>,
}

/// One reader of one channel, as dispatch walks them.
struct Subscriber {
    id: u64,
    /// Where this channel sits in the member's `channels`, to update its index
    /// there when a leave moves this entry.
    slot: usize,
    queue: Arc<Outbox>,
}

struct Member {
    /// Each channel, with this member's index in that channel's subscriber list.
    channels: Vec<(String, usize)>,
    queue: Arc<Outbox>,
    /// The `LISTEN` batch this member waits for, and its ack; `None` once acked.
    waiting: Option<(u64, oneshot::Sender<()>)>,
}

/// The subscription table.
#[derive(Default)]
pub(crate) struct Hub {
    channels: HashMap<String, Vec<Subscriber>>,
    members: HashMap<u64, Member>,
    /// Members waiting for their ack, by `(batch, id)`: acks go out in batch order,
    /// and a member that leaves first is found in O(log n).
    pending: BTreeSet<(u64, u64)>,
    /// Frames the hub wrote to sockets itself, since [`take_written`](Self::take_written).
    written: u64,
    /// Whether dispatch writes to idle sockets itself, or queues for their tasks.
    pace: Pace,
}

impl Hub {
    /// Adds a socket; returns the channels that got their first reader. Its ack
    /// is sent by [`ack_through`](Self::ack_through) once batch `seq` is done.
    pub(crate) fn join(&mut self, join: Join, seq: u64) -> Vec<String> {
        let mut fresh = Vec::new();
        let mut channels: Vec<(String, usize)> = Vec::with_capacity(join.channels.len());
        for channel in join.channels {
            let subs = self.channels.entry(channel.clone()).or_default();
            if subs.is_empty() {
                fresh.push(channel.clone());
            }
            subs.push(Subscriber {
                id: join.id,
                slot: channels.len(),
                queue: join.queue.clone(),
            });
            channels.push((channel, subs.len() - 1));
        }
        self.pending.insert((seq, join.id));
        self.members.insert(
            join.id,
            Member {
                channels,
                queue: join.queue,
                waiting: Some((seq, join.ack)),
            },
        );
        fresh
    }

    /// Removes a socket, acknowledged or still waiting; returns the channels that
    /// lost their last reader. O(1) per channel of the socket, plus O(log n) for a
    /// waiting one.
    pub(crate) fn leave(&mut self, id: u64) -> Vec<String> {
        let Some(mut member) = self.members.remove(&id) else {
            return Vec::new();
        };
        if let Some((seq, _)) = member.waiting {
            self.pending.remove(&(seq, id));
        }
        // A session socket's channels are members of their own, sharing its outbox.
        if !member.queue.is_session() {
            member.queue.close();
        }
        let mut emptied = Vec::new();
        for slot in 0..member.channels.len() {
            let index = member.channels[slot].1;
            // Taken: the member goes, and only the indexes of its slots are read again.
            let channel = std::mem::take(&mut member.channels[slot].0);
            let Some(subs) = self.channels.get_mut(&channel) else {
                continue;
            };
            debug_assert_eq!(subs.get(index).map(|s| s.id), Some(id));
            if index < subs.len() {
                subs.swap_remove(index);
            }
            // The last entry moved into the hole: tell its member where it is now
            // (this member itself, should it hold a channel twice).
            if let Some(moved) = subs.get(index) {
                let moved_channels = if moved.id == id {
                    Some(&mut member.channels)
                } else {
                    self.members.get_mut(&moved.id).map(|m| &mut m.channels)
                };
                if let Some(channels) = moved_channels {
                    channels[moved.slot].1 = index;
                }
            }
            if subs.is_empty() {
                self.channels.remove(&channel);
                emptied.push(channel);
            }
        }
        emptied
    }

    /// Removes a session socket's channel (one member), then offers `answer` to
    /// its outbox: after every frame of the channel, and before none. Returns the
    /// channels that lost their last reader.
    pub(crate) fn part(&mut self, id: u64, answer: &Frame) -> Vec<String> {
        let Some(queue) = self.members.get(&id).map(|m| m.queue.clone()) else {
            return Vec::new();
        };
        let emptied = self.leave(id);
        Self::offer(&queue, answer);
        emptied
    }

    /// Offers one frame to one reader, queued behind what it was offered
    /// before; a full queue lets it go as a slow consumer (its channels go when
    /// the socket ends).
    pub(crate) fn offer(queue: &Outbox, frame: &Frame) {
        if queue.offer(frame, false) == Offer::Full {
            queue.end(Ending::SlowConsumer);
        }
    }

    /// Offers one shared frame to every reader of `channel`: written to idle
    /// sockets while the hub's own writes keep up ([`Pace`]), queued for the others.
    /// A reader whose queue is full is let go as a slow consumer; returns the
    /// channels that emptied.
    pub(crate) fn dispatch(&mut self, channel: &str, frame: &Frame) -> Vec<String> {
        let Some(subs) = self.channels.get(channel) else {
            return Vec::new();
        };
        let start = Instant::now();
        let write = self.pace.writes();
        let mut slow = Vec::new();
        for sub in subs {
            let frame = if sub.queue.is_session() {
                frame.session()
            } else {
                frame
            };
            match sub.queue.offer(frame, write) {
                Offer::Written => self.written += 1,
                Offer::Queued => {}
                Offer::Full => {
                    sub.queue.end(Ending::SlowConsumer);
                    slow.push(sub.id);
                }
            }
        }
        let now = Instant::now();
        self.pace.record(subs.len(), now - start, now);
        slow.into_iter().flat_map(|id| self.leave(id)).collect()
    }

    /// Replaces the pace (tests and benchmarks).
    #[cfg(any(test, feature = "internals"))]
    pub(crate) fn set_pace(&mut self, pace: Pace) {
        self.pace = pace;
    }

    /// How many frames dispatch wrote to sockets itself since the last call.
    pub(crate) fn take_written(&mut self) -> u64 {
        std::mem::take(&mut self.written)
    }

    /// Acknowledges every join whose `LISTEN` batch is done.
    pub(crate) fn ack_through(&mut self, seq: u64) {
        while let Some(&(s, id)) = self.pending.first() {
            if s > seq {
                break;
            }
            self.pending.pop_first();
            if let Some((_, ack)) = self.members.get_mut(&id).and_then(|m| m.waiting.take()) {
                let _ = ack.send(());
            }
        }
    }

    /// Hands every waiting join whose channels are all `ready` to batch `seq`
    /// (the first of a new connection); the others are [`HELD`].
    pub(crate) fn retag_pending(&mut self, seq: u64, ready: impl Fn(&str) -> bool) {
        for (_, id) in std::mem::take(&mut self.pending) {
            let Some(member) = self.members.get_mut(&id) else {
                continue;
            };
            let to = if member.channels.iter().all(|(c, _)| ready(c)) {
                seq
            } else {
                HELD
            };
            if let Some((s, _)) = member.waiting.as_mut() {
                *s = to;
            }
            self.pending.insert((to, id));
        }
    }

    /// Hands the [`HELD`] joins of `channel` whose channels are now all `ready`
    /// to batch `seq`.
    pub(crate) fn release(&mut self, channel: &str, seq: u64, ready: impl Fn(&str) -> bool) {
        let Some(subs) = self.channels.get(channel) else {
            return;
        };
        for sub in subs {
            let Some(member) = self.members.get_mut(&sub.id) else {
                continue;
            };
            let Some((s, _)) = member.waiting.as_mut().filter(|(s, _)| *s == HELD) else {
                continue;
            };
            if member.channels.iter().all(|(c, _)| ready(c)) {
                *s = seq;
                self.pending.remove(&(HELD, sub.id));
                self.pending.insert((seq, sub.id));
            }
        }
    }

    /// After a lost connection: lets go of every acknowledged socket (1012) but
    /// those whose channels all satisfy `kept` (history channels, caught up from
    /// the store); sockets still waiting for their ack stay for the next
    /// connection.
    /// Returns the channels that emptied.
    pub(crate) fn drop_live(&mut self, kept: impl Fn(&str) -> bool) -> Vec<String> {
        let live: Vec<u64> = self
            .members
            .iter()
            .filter(|(_, m)| m.waiting.is_none())
            .filter(|(_, m)| !m.channels.iter().all(|(c, _)| kept(c)))
            .map(|(id, _)| *id)
            .collect();
        let mut emptied = Vec::new();
        for id in live {
            if let Some(m) = self.members.get(&id) {
                m.queue.end(Ending::ListenerRestarted);
            }
            emptied.extend(self.leave(id));
        }
        emptied
    }

    /// Lets go of every reader of `channel` (1012: they missed messages);
    /// returns the channels that emptied.
    pub(crate) fn end_channel(&mut self, channel: &str) -> Vec<String> {
        let ids: Vec<u64> = match self.channels.get(channel) {
            Some(subs) => subs.iter().map(|s| s.id).collect(),
            None => return Vec::new(),
        };
        let mut emptied = Vec::new();
        for id in ids {
            if let Some(m) = self.members.get(&id) {
                m.queue.end(Ending::ListenerRestarted);
            }
            emptied.extend(self.leave(id));
        }
        emptied
    }

    /// The channels that have readers.
    pub(crate) fn channels(&self) -> impl Iterator<Item = &str> {
        self.channels.keys().map(String::as_str)
    }

    /// Whether `channel` has readers.
    pub(crate) fn has_readers(&self, channel: &str) -> bool {
        self.channels.contains_key(channel)
    }

    /// How many channels have readers.
    pub(crate) fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// How many sockets wait for their ack (their channels to be listened to).
    pub(crate) fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// How many sockets are subscribed.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.members.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(hub: &mut Hub, id: u64, chans: &[&str], cap: usize, seq: u64) -> Parts {
        let rx = Outbox::new(cap);
        let (ack, ack_rx) = oneshot::channel();
        let fresh = hub.join(
            Join {
                id,
                channels: chans.iter().map(|c| c.to_string()).collect(),
                queue: rx.clone(),
                ack,
            },
            seq,
        );
        Parts { rx, ack_rx, fresh }
    }

    struct Parts {
        rx: Arc<Outbox>,
        ack_rx: oneshot::Receiver<()>,
        fresh: Vec<String>,
    }

    #[test]
    fn first_and_last_readers_are_reported() {
        let mut hub = Hub::default();
        let a = join(&mut hub, 1, &["x", "y"], 4, 1);
        let b = join(&mut hub, 2, &["y"], 4, 2);
        assert_eq!(a.fresh, ["x", "y"]);
        assert!(b.fresh.is_empty());
        assert_eq!(hub.leave(2), Vec::<String>::new());
        let mut emptied = hub.leave(1);
        emptied.sort();
        assert_eq!(emptied, ["x", "y"]);
        assert_eq!(hub.channels().count(), 0);
    }

    #[test]
    fn acks_follow_batches_in_order() {
        let mut hub = Hub::default();
        let mut a = join(&mut hub, 1, &["x"], 4, 1);
        let mut b = join(&mut hub, 2, &["x"], 4, 2);
        hub.ack_through(1);
        assert!(a.ack_rx.try_recv().is_ok());
        assert!(b.ack_rx.try_recv().is_err());
        hub.ack_through(2);
        assert!(b.ack_rx.try_recv().is_ok());
    }

    #[test]
    fn dispatch_shares_one_frame_and_drops_slow_readers() {
        let mut hub = Hub::default();
        let fast = join(&mut hub, 1, &["x"], 4, 1);
        let slow = join(&mut hub, 2, &["x"], 1, 1);
        let frame = Frame::from("hello");
        assert!(hub.dispatch("x", &frame).is_empty());
        assert!(hub.dispatch("x", &frame).is_empty());
        assert_eq!(slow.rx.ending(), Some(Ending::SlowConsumer));
        assert_eq!(
            fast.rx.try_recv().unwrap().payload.as_ptr(),
            frame.payload.as_ptr()
        );
        assert_eq!(fast.rx.ending(), None);
        assert_eq!(hub.len(), 1);
    }

    #[test]
    fn dispatch_writes_to_idle_sockets_unless_pace_says_queue() {
        let mut hub = Hub::default();
        let writing = join(&mut hub, 1, &["x"], 4, 1);
        writing.rx.attach(Box::new(tokio::io::sink()), true);
        let rendering = join(&mut hub, 2, &["x"], 4, 1);
        rendering.rx.attach(Box::new(tokio::io::sink()), false);
        let frame = Frame::from("hello");
        hub.dispatch("x", &frame);
        assert_eq!(hub.take_written(), 1);
        assert!(writing.rx.is_idle());
        assert!(rendering.rx.try_recv().is_some());
        hub.set_pace(Pace::fixed(false));
        hub.dispatch("x", &frame);
        assert_eq!(hub.take_written(), 0);
        assert!(writing.rx.try_recv().is_some());
    }

    #[test]
    fn losing_the_connection_ends_live_members_only() {
        let mut hub = Hub::default();
        let live = join(&mut hub, 1, &["x"], 4, 1);
        let waiting = join(&mut hub, 2, &["x"], 4, 2);
        hub.ack_through(1);
        hub.drop_live(|_| false);
        assert_eq!(live.rx.ending(), Some(Ending::ListenerRestarted));
        assert_eq!(waiting.rx.ending(), None);
        assert_eq!(hub.channels().collect::<Vec<_>>(), ["x"]);
    }

    #[test]
    fn a_waiting_join_that_leaves_is_no_longer_pending() {
        let mut hub = Hub::default();
        // Offline joins wait for the next connection's first batch.
        let parts: Vec<Parts> = (1..=100)
            .map(|id| join(&mut hub, id, &["x"], 4, HELD))
            .collect();
        assert_eq!(hub.pending_count(), 100);
        for id in 1..=99 {
            hub.leave(id);
        }
        assert_eq!(hub.pending_count(), 1);
        hub.retag_pending(7, |_| true);
        hub.ack_through(7);
        assert_eq!(hub.pending_count(), 0);
        let mut last = parts.into_iter().last().unwrap();
        assert!(last.ack_rx.try_recv().is_ok());
        hub.leave(100);
        assert_eq!((hub.len(), hub.channel_count()), (0, 0));
    }

    #[test]
    fn a_held_join_is_acked_once_released_and_its_batch_is_done() {
        let mut hub = Hub::default();
        let mut held = join(&mut hub, 1, &["h", "p"], 4, HELD);
        let mut plain = join(&mut hub, 2, &["p"], 4, 3);
        // A held join does not stop the acks of later batches.
        hub.ack_through(3);
        assert!(plain.ack_rx.try_recv().is_ok());
        assert!(held.ack_rx.try_recv().is_err());
        // A new connection keeps it held while "h" is not ready.
        hub.retag_pending(4, |c| c != "h");
        hub.ack_through(4);
        assert!(held.ack_rx.try_recv().is_err());
        // Released through another channel: not while "h" is not ready.
        hub.release("p", 5, |c| c != "h");
        hub.ack_through(5);
        assert!(held.ack_rx.try_recv().is_err());
        hub.release("h", 6, |_| true);
        hub.ack_through(5);
        assert!(held.ack_rx.try_recv().is_err());
        hub.ack_through(6);
        assert!(held.ack_rx.try_recv().is_ok());
        assert_eq!(hub.pending_count(), 0);
    }

    /// Every member's recorded index points at its own entry.
    fn assert_indexes_hold(hub: &Hub) {
        for (id, member) in &hub.members {
            for (slot, (channel, index)) in member.channels.iter().enumerate() {
                let sub = &hub.channels[channel][*index];
                assert_eq!((sub.id, sub.slot), (*id, slot));
            }
        }
        let entries: usize = hub.channels.values().map(Vec::len).sum();
        let memberships: usize = hub.members.values().map(|m| m.channels.len()).sum();
        assert_eq!(entries, memberships);
    }

    #[test]
    fn leaves_in_any_order_keep_every_index_true() {
        let mut hub = Hub::default();
        let chans = ["a", "b", "c", "d"];
        let mut parts = HashMap::new();
        for id in 0..60u64 {
            let mine: Vec<&str> = (0..4)
                .filter(|c| (id + c) % 3 != 0)
                .map(|c| chans[c as usize])
                .collect();
            parts.insert(id, join(&mut hub, id, &mine, 64, 1));
        }
        hub.ack_through(1);
        assert_indexes_hold(&hub);
        // A fixed shuffle: 37 is coprime with 60.
        for step in 0..60u64 {
            let id = (step * 37) % 60;
            hub.leave(id);
            parts.remove(&id);
            assert_indexes_hold(&hub);
            let frame = Frame::from(format!("after {step}").as_str());
            hub.dispatch("a", &frame);
            for (id, p) in &mut parts {
                let reads_a = id % 3 != 0;
                assert_eq!(
                    p.rx.try_recv().is_some(),
                    reads_a,
                    "socket {id} at step {step}"
                );
            }
        }
        assert_eq!((hub.len(), hub.channel_count()), (0, 0));
    }

    #[test]
    fn a_member_holding_a_channel_twice_leaves_cleanly() {
        // Grants never repeat a channel; the table stays sound if one did.
        let mut hub = Hub::default();
        let _a = join(&mut hub, 1, &["x", "x", "y"], 4, 1);
        let _b = join(&mut hub, 2, &["x"], 4, 1);
        let _c = join(&mut hub, 3, &["x", "y", "x"], 4, 1);
        // Last in `x` twice: its first leave moves its own second entry.
        let _d = join(&mut hub, 4, &["x", "x"], 4, 1);
        assert_indexes_hold(&hub);
        assert!(hub.leave(4).is_empty());
        assert_indexes_hold(&hub);
        assert!(hub.leave(1).is_empty());
        assert_indexes_hold(&hub);
        assert!(hub.leave(3).contains(&"y".to_owned()));
        assert_indexes_hold(&hub);
        assert_eq!(hub.leave(2), ["x"]);
        assert_eq!(hub.channel_count(), 0);
    }
}
