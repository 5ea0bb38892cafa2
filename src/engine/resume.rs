//! A socket that asked for positions (`since=`, `history=`): its replay from the
//! store, then its live frames as JSON objects, without the offsets it already
//! sent.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;

use super::{
    frame::Frame,
    history::{History, PAGE_BYTES},
};
use crate::history::{Message, Position, Read};

/// Where a channel's replay starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Start {
    /// After this position (`since=`).
    After(Position),
    /// With up to the last n kept messages (`history=`); made a
    /// [`Start::Window`] before the socket subscribes.
    Last(i64),
    /// After this position, the head before subscribing less n: every message
    /// after it is replayed or queued live, and a position older than what is
    /// kept is no gap (the client asked for at most n).
    Window(Position),
}

/// The epoch of the position before any history: matches no real epoch.
pub(crate) const NONE_YET: &str = "-";

impl Start {
    /// A `history=n` start as a window after `head` (`None`: no history yet),
    /// read before subscribing, so that nothing committed after the
    /// subscription falls outside the replay.
    pub(crate) fn window(head: Option<Position>, n: i64) -> Start {
        let position = match head {
            Some(head) => Position {
                offset: head.offset.saturating_sub(n).max(0),
                epoch: head.epoch,
            },
            None => Position {
                epoch: NONE_YET.into(),
                offset: 0,
            },
        };
        Start::Window(position)
    }
}

/// The last position sent on each channel.
pub(crate) type Sent = HashMap<String, Position>;

/// How a socket's frames are written out: JSON objects for a WebSocket, events
/// for an event stream. `sent` already holds the frame's own position.
pub(crate) trait Format {
    /// A frame that says nothing of where it comes from.
    fn raw(&self, payload: &Bytes, sent: &Sent) -> Bytes;
    /// A notification of `channel`; `position` for a stored message.
    fn message(
        &self,
        channel: &str,
        position: Option<&Position>,
        payload: &str,
        sent: &Sent,
    ) -> Bytes;
    /// A position that could not be honoured: the next message is `epoch:from`.
    fn gap(&self, channel: &str, epoch: &str, from: i64, sent: &Sent) -> Bytes;
}

/// The WebSocket's frames: JSON objects (PROTOCOL.md §15), or a session
/// socket's `message` and `gap` frames (§17).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Json {
    pub(crate) session: bool,
}

impl Format for Json {
    fn raw(&self, payload: &Bytes, _: &Sent) -> Bytes {
        payload.clone()
    }

    fn message(
        &self,
        channel: &str,
        position: Option<&Position>,
        payload: &str,
        _: &Sent,
    ) -> Bytes {
        if self.session {
            return super::session::codec::message(channel, position, payload);
        }
        match position {
            Some(p) => stored(channel, &p.epoch, p.offset, payload),
            None => Bytes::from(format!(
                r#"{{"channel":{},"payload":{}}}"#,
                quoted(channel),
                quoted(payload)
            )),
        }
    }

    fn gap(&self, channel: &str, epoch: &str, from: i64, _: &Sent) -> Bytes {
        if self.session {
            return super::session::codec::gap(channel, epoch, from);
        }
        gap(channel, epoch, from)
    }
}

/// The replay still to do, and the last position sent on each channel.
#[derive(Debug, Default)]
pub(crate) struct Resume<F = Json> {
    todo: VecDeque<(String, Start)>,
    sent: Sent,
    /// Gap frames sent.
    gaps: u64,
    format: F,
    /// The budget of a page whose write was cut short: its bytes are still
    /// queued for the connection, until the connection ends.
    held: Option<OwnedSemaphorePermit>,
    /// The channel whose read failed last, until taken.
    failed: Option<String>,
}

/// One page of a replay: its frames, in order, and their place under the
/// replay budget, given back when the page is dropped (once written).
#[derive(Debug)]
pub(crate) struct Page {
    pub(crate) frames: Vec<Bytes>,
    pub(crate) permit: OwnedSemaphorePermit,
}

impl Resume<Json> {
    /// Replays `starts`, in order, before any live frame.
    pub(crate) fn new(starts: Vec<(String, Start)>) -> Self {
        Self::with_format(starts, Json::default())
    }

    /// A session socket's: replays `starts`, and those of later subscribes.
    pub(crate) fn session(starts: Vec<(String, Start)>) -> Self {
        Self::with_format(starts, Json { session: true })
    }
}

impl<F: Format> Resume<F> {
    /// Replays `starts`, in order, before any live frame, in `format`.
    /// Each channel counts as sent up to where it starts, so that a frame
    /// written during the replay of another already has every position.
    pub(crate) fn with_format(starts: Vec<(String, Start)>, format: F) -> Self {
        let sent = starts
            .iter()
            .filter_map(|(channel, start)| match start {
                Start::After(p) | Start::Window(p) => Some((channel.clone(), p.clone())),
                Start::Last(_) => None,
            })
            .collect();
        Self {
            todo: starts.into(),
            sent,
            gaps: 0,
            format,
            held: None,
            failed: None,
        }
    }

    /// Replays `channel` from `start` next, before its live frames (a
    /// session socket's subscribe).
    pub(crate) fn push(&mut self, channel: String, start: Start) {
        if let Start::After(p) | Start::Window(p) = &start {
            self.sent.insert(channel.clone(), p.clone());
        }
        self.todo.push_back((channel, start));
    }

    /// The channel whose replay failed last (the others are still to do).
    pub(crate) fn take_failed(&mut self) -> Option<String> {
        self.failed.take()
    }

    fn fail(&mut self, channel: String, error: String) -> String {
        self.failed = Some(channel);
        error
    }

    /// Whether nothing is left to replay.
    pub(crate) fn is_done(&self) -> bool {
        self.todo.is_empty()
    }

    /// The last position sent on each channel.
    pub(crate) fn sent(&self) -> &Sent {
        &self.sent
    }

    /// The format frames are written in.
    pub(crate) fn format(&self) -> &F {
        &self.format
    }

    /// How many Gap frames the replay made since last asked.
    pub(crate) fn take_gaps(&mut self) -> u64 {
        std::mem::take(&mut self.gaps)
    }

    /// Keeps a page's budget until this replay is dropped: its write was cut
    /// short, and its bytes go only with the connection.
    pub(crate) fn hold(&mut self, permit: OwnedSemaphorePermit) {
        self.held = Some(permit);
    }

    /// The next frames of the replay, in order; `None` once it is done. A Gap
    /// frame comes first when a position cannot be honoured. Waits for room
    /// under the replay budget before it reads.
    pub(crate) async fn next_page(&mut self, history: &History) -> Result<Option<Page>, String> {
        if self.todo.is_empty() {
            return Ok(None);
        }
        let permit = history.page_permit().await;
        while let Some((channel, start)) = self.todo.pop_front() {
            let (position, gaps) = match start {
                // Handshakes make windows before they subscribe; this one is late.
                Start::Last(n) => {
                    let head = match history.head(&channel).await {
                        Ok(head) => head,
                        Err(e) => return Err(self.fail(channel, e)),
                    };
                    self.todo.push_front((channel, Start::window(head, n)));
                    continue;
                }
                Start::After(position) => (position, true),
                Start::Window(position) => (position, false),
            };
            let read = match history.read_page(&channel, &position).await {
                Ok(read) => read,
                Err(e) => return Err(self.fail(channel, e)),
            };
            let frames = self.page(&channel, read, Some(&position), gaps);
            if frames.is_empty() {
                continue;
            }
            return Ok(Some(Page { frames, permit }));
        }
        Ok(None)
    }

    /// The frames of one read, up to [`PAGE_BYTES`] of them (at least one
    /// message); queues the next page when the read or the page was cut. Each
    /// payload is dropped once rendered.
    fn page(
        &mut self,
        channel: &str,
        read: Read,
        after: Option<&Position>,
        gaps: bool,
    ) -> Vec<Bytes> {
        let Read {
            epoch,
            last_offset,
            gap,
            messages,
            cut,
        } = read;
        let read_count = messages.len();
        let mut frames = Vec::with_capacity(read_count + 1);
        // Each frame is written with the positions sent up to and including it.
        let at = |sent: &mut Sent, offset: i64| {
            let position = Position {
                epoch: epoch.clone(),
                offset,
            };
            sent.insert(channel.to_owned(), position.clone());
            position
        };
        // After "before any history", reading from offset 1 misses nothing.
        let from_scratch = |from: &i64| *from == 1 && after.is_some_and(|a| a.epoch == NONE_YET);
        if let Some(from) = gap.filter(|from| gaps && !from_scratch(from)) {
            at(&mut self.sent, from - 1);
            frames.push(self.format.gap(channel, &epoch, from, &self.sent));
            self.gaps += 1;
        }
        // A page holds what fits in PAGE_BYTES, and at least one message.
        let (mut bytes, mut taken, mut last_taken) = (0, 0, None);
        for Message { offset, payload } in messages {
            let position = at(&mut self.sent, offset);
            let frame = self
                .format
                .message(channel, Some(&position), &payload, &self.sent);
            if taken > 0 && bytes + frame.len() > PAGE_BYTES {
                break;
            }
            bytes += frame.len();
            taken += 1;
            last_taken = Some(offset);
            frames.push(frame);
        }
        // What the client has now: live offsets up to here are not sent again.
        let last = match (last_taken, gap, after) {
            (Some(offset), _, _) => offset,
            (None, Some(from), _) => from - 1,
            (None, None, Some(after)) => after.offset,
            // `history=`: nothing kept, so nothing before the head is wanted.
            (None, None, None) => last_offset,
        };
        let position = Position {
            epoch: epoch.clone(),
            offset: last,
        };
        let cut = after.is_some() && last < last_offset && (cut || taken < read_count);
        if cut {
            self.todo
                .push_front((channel.to_owned(), Start::After(position.clone())));
        }
        self.sent.insert(channel.to_owned(), position);
        frames
    }

    /// A live frame as this socket gets it; `None` for an offset already sent.
    pub(crate) fn live(&mut self, frame: &Frame) -> Option<Bytes> {
        let Some(origin) = &frame.origin else {
            return Some(self.format.raw(&frame.payload, &self.sent));
        };
        let payload = String::from_utf8_lossy(&frame.payload);
        let Some(position) = &origin.position else {
            return Some(
                self.format
                    .message(&origin.channel, None, &payload, &self.sent),
            );
        };
        if !self.fresh(frame) {
            return None;
        }
        Some(
            self.format
                .message(&origin.channel, Some(position), &payload, &self.sent),
        )
    }

    /// Whether a live frame is new to this socket (not replayed already); a
    /// stored message's position then counts as sent.
    pub(crate) fn fresh(&mut self, frame: &Frame) -> bool {
        let Some((channel, position)) = frame
            .origin
            .as_ref()
            .and_then(|o| Some((&o.channel, o.position.as_ref()?)))
        else {
            return true;
        };
        if let Some(sent) = self.sent.get(channel)
            && sent.epoch == position.epoch
            && position.offset <= sent.offset
        {
            return false;
        }
        self.sent.insert(channel.clone(), position.clone());
        true
    }
}

fn stored(channel: &str, epoch: &str, offset: i64, payload: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"channel":{},"epoch":{},"offset":{offset},"payload":{}}}"#,
        quoted(channel),
        quoted(epoch),
        quoted(payload)
    ))
}

fn gap(channel: &str, epoch: &str, from: i64) -> Bytes {
    Bytes::from(format!(
        r#"{{"channel":{},"event":"Gap","epoch":{},"from":{from}}}"#,
        quoted(channel),
        quoted(epoch)
    ))
}

/// A JSON string.
pub(crate) fn quoted(text: &str) -> String {
    serde_json::to_string(text).expect("a string always serializes")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::{frame::Origin, history::PAGE};

    fn frame(channel: &str, position: Option<(&str, i64)>, payload: &str) -> Frame {
        Frame::new(
            payload.as_bytes(),
            Some(Arc::new(Origin {
                channel: channel.into(),
                position: position.map(|(epoch, offset)| Position {
                    epoch: epoch.into(),
                    offset,
                }),
            })),
        )
    }

    fn read(epoch: &str, last: i64, gap: Option<i64>, offsets: &[i64]) -> Read {
        Read {
            epoch: epoch.into(),
            last_offset: last,
            gap,
            messages: offsets
                .iter()
                .map(|&offset| Message {
                    offset,
                    payload: format!("m{offset}"),
                })
                .collect(),
            cut: false,
        }
    }

    fn text(b: Option<Bytes>) -> Option<String> {
        b.map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    #[test]
    fn live_frames_already_replayed_are_dropped_and_the_rest_are_json() {
        let mut r = Resume::<Json>::default();
        let after = Position {
            epoch: "E".into(),
            offset: 1,
        };
        let frames = r.page("c\"x", read("E", 3, None, &[2, 3]), Some(&after), true);
        assert_eq!(frames.len(), 2);
        assert_eq!(
            std::str::from_utf8(&frames[0]).unwrap(),
            r#"{"channel":"c\"x","epoch":"E","offset":2,"payload":"m2"}"#
        );
        assert_eq!(text(r.live(&frame("c\"x", Some(("E", 3)), "m3"))), None);
        assert_eq!(
            text(r.live(&frame("c\"x", Some(("E", 4)), "m4"))).unwrap(),
            r#"{"channel":"c\"x","epoch":"E","offset":4,"payload":"m4"}"#
        );
        assert_eq!(
            text(r.live(&frame("c\"x", None, "plain"))).unwrap(),
            r#"{"channel":"c\"x","payload":"plain"}"#
        );
        // Another epoch: the history started over, so offsets start over too.
        assert!(r.live(&frame("c\"x", Some(("F", 1)), "n1")).is_some());
    }

    #[test]
    fn a_gap_comes_first_and_counts_as_sent_up_to_before_it() {
        let mut r = Resume::<Json>::default();
        let after = Position {
            epoch: "OLD".into(),
            offset: 9,
        };
        let frames = r.page("c", read("E", 5, Some(6), &[]), Some(&after), true);
        assert_eq!(
            std::str::from_utf8(&frames[0]).unwrap(),
            r#"{"channel":"c","event":"Gap","epoch":"E","from":6}"#
        );
        assert_eq!(r.live(&frame("c", Some(("E", 5)), "m5")), None);
        assert!(r.live(&frame("c", Some(("E", 6)), "m6")).is_some());
    }

    #[test]
    fn a_cut_read_queues_the_next_page() {
        let mut r = Resume::<Json>::default();
        let offsets: Vec<i64> = (1..=PAGE).collect();
        let after = Position {
            epoch: "E".into(),
            offset: 0,
        };
        let mut cut = read("E", PAGE + 3, None, &offsets);
        cut.cut = true;
        r.page("c", cut, Some(&after), true);
        assert_eq!(
            r.todo.front(),
            Some(&(
                "c".to_owned(),
                Start::After(Position {
                    epoch: "E".into(),
                    offset: PAGE
                })
            ))
        );
    }

    #[test]
    fn a_page_holds_a_mebibyte_of_frames_or_one_message() {
        let mut r = Resume::<Json>::default();
        let after = Position {
            epoch: "E".into(),
            offset: 0,
        };
        let big = |offsets: &[i64], size: usize| {
            let mut read = read("E", 9, None, offsets);
            for m in &mut read.messages {
                m.payload = "x".repeat(size);
            }
            read
        };
        // Two 400 KiB frames fit, the third starts the next page.
        let frames = r.page("c", big(&[1, 2, 3], 400 << 10), Some(&after), true);
        assert_eq!(frames.len(), 2);
        assert!(frames.iter().map(Bytes::len).sum::<usize>() <= PAGE_BYTES);
        let next = Start::After(Position {
            epoch: "E".into(),
            offset: 2,
        });
        assert_eq!(r.todo.pop_front(), Some(("c".to_owned(), next)));
        assert_eq!(r.sent()["c"].offset, 2);
        // A message larger than a page goes alone.
        let frames = r.page("c", big(&[3, 4], 2 << 20), Some(&after), true);
        assert_eq!(frames.len(), 1);
        assert!(frames[0].len() > PAGE_BYTES);
        assert_eq!(r.sent()["c"].offset, 3);
    }
}
