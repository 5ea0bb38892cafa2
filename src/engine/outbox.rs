//! [`Outbox`]: what one reader has yet to receive, the hub's side and the owner's,
//! and, for a WebSocket, the socket's write half.
//!
//! The hub offers each frame to every reader. A WebSocket that sends frames as
//! they are and has nothing waiting gets the frame written there and then, with
//! one non-blocking write of the frame's shared bytes: no task wakes, no queue
//! moves. Anything else (a socket still writing, one that renders frames itself, an
//! event stream) gets the frame queued and its task woken. The lock is per socket,
//! held for a non-blocking write or a queue operation, never across an `.await`;
//! only a socket's own task and the hub take it.

use std::{
    collections::VecDeque,
    future::{Future, poll_fn},
    io::{self, IoSlice},
    pin::{Pin, pin},
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker, ready},
};

use bytes::{Buf, Bytes};
use tokio::{io::AsyncWrite, task::coop::unconstrained};

use super::frame::Frame;

/// Frames coalesced into one write, at most.
pub(crate) const BATCH: usize = 16;
/// Bytes a write batch takes frames up to: it holds at most this much and one
/// frame more.
pub(crate) const BATCH_BYTES: usize = 64 * 1024;

/// A socket's write half, as the outbox holds it.
pub(crate) type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// What became of a frame offered to a reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Written to the socket by the hub (or started, and finished by the socket's
    /// task before anything else).
    Written,
    /// Queued for the reader's task.
    Queued,
    /// The queue is full: the reader is a slow consumer.
    Full,
}

/// Why the hub let go of a reader; a socket closes with the matching code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Its queue was full: 1008, at once.
    SlowConsumer,
    /// The listener lost its connection: 1012, once what is queued is sent.
    ListenerRestarted,
}

/// One reader's outbound frames. Bounded: at most `capacity` frames and
/// `max_bytes` of them wait (one frame always fits an empty queue), plus the one
/// batch being written (see the queue policy in PROTOCOL.md).
pub(crate) struct Outbox {
    state: Mutex<State>,
    capacity: usize,
    max_bytes: usize,
    /// A session socket's (PROTOCOL.md §17): it gets notifications as `message`
    /// frames, and several of the hub's members share it.
    session: bool,
}

#[derive(Default)]
struct State {
    /// Frames for the owner to take or render, oldest first.
    frames: VecDeque<Frame>,
    /// The bytes of `frames` (their shared wire encodings).
    queued: usize,
    /// Bytes for the wire, in order: the rest of a frame written in part, the
    /// codec's own frames (pongs, pings, closes, a replay), rendered frames.
    wire: VecDeque<Bytes>,
    writer: Option<Writer>,
    /// Whether the hub may write `frame.wire` itself.
    direct: bool,
    /// Bytes handed to the writer that it may still buffer (TLS): flush pending.
    unflushed: bool,
    /// The hub let go: once the queue is empty, readers see the end.
    closed: bool,
    /// Why the hub let go, when it said; the first reason wins.
    ending: Option<Ending>,
    /// The owner's task, parked with nothing to do.
    waker: Option<Waker>,
}

impl Outbox {
    /// An outbox holding at most `capacity` frames, whatever their size.
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Self::bounded(capacity, usize::MAX)
    }

    /// An outbox holding at most `capacity` frames and `max_bytes` of them.
    pub(crate) fn bounded(capacity: usize, max_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            capacity,
            max_bytes,
            session: false,
        })
    }

    /// A session socket's outbox, with the limits of [`bounded`](Self::bounded).
    pub(crate) fn session(capacity: usize, max_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            capacity,
            max_bytes,
            session: true,
        })
    }

    /// Whether this is a session socket's outbox.
    pub(crate) fn is_session(&self) -> bool {
        self.session
    }

    /// Lets the hub write frames as they are, or not (then it queues them).
    pub(crate) fn set_direct(&self, direct: bool) {
        self.lock().direct = direct;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned lock still holds good state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The hub's side: writes `frame` now if `write` allows it, the socket is idle
    /// and takes frames as they are; else queues it (waking the owner); else
    /// reports a full queue.
    pub(crate) fn offer(&self, frame: &Frame, write: bool) -> Offer {
        let mut s = self.lock();
        let was_idle = s.is_idle();
        let offer = if write && s.direct && was_idle {
            match s.write_now(&frame.wire) {
                Some(n) if n == frame.wire.len() => Offer::Written,
                Some(n) => {
                    // Started: the owner sends the rest before anything else.
                    s.wire.push_back(frame.wire.slice(n..));
                    Offer::Written
                }
                None => s.push(frame, self),
            }
        } else {
            s.push(frame, self)
        };
        // A busy owner looks for more work after each write: only an idle one waits.
        if was_idle && !s.is_idle() {
            wake(s);
        }
        offer
    }

    /// The hub lets go of this reader; it reads what is queued, then the end.
    pub(crate) fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        wake(s);
    }

    /// The hub lets go of this reader for `ending` (the first reason given wins),
    /// and wakes it; [`close`](Self::close) follows. A slow consumer's queue goes
    /// at once: it is never sent (1008 comes first), and its owner may not run
    /// again soon (an event stream waits for its connection to take data).
    pub(crate) fn end(&self, ending: Ending) {
        let mut s = self.lock();
        if *s.ending.get_or_insert(ending) == Ending::SlowConsumer {
            s.frames = VecDeque::new();
            s.queued = 0;
        }
        wake(s);
    }

    /// Why the hub let go, if it said.
    pub(crate) fn ending(&self) -> Option<Ending> {
        self.lock().ending
    }

    /// Ready once the hub said why it let go.
    pub(crate) fn poll_ended(&self, cx: &mut Context<'_>) -> Poll<Ending> {
        let mut s = self.lock();
        if let Some(ending) = s.ending {
            return Poll::Ready(ending);
        }
        s.park(cx);
        Poll::Pending
    }

    /// Hands the socket's write half over; `direct` lets the hub write frames as
    /// they are.
    pub(crate) fn attach(&self, writer: Writer, direct: bool) {
        let mut s = self.lock();
        s.writer = Some(writer);
        s.direct = direct;
    }

    /// Takes the write half back (to drop it: the connection closes once both
    /// halves are gone, whenever the hub drops its handle). What was still to be
    /// written goes with it, rather than when the hub lets go.
    pub(crate) fn detach(&self) -> Option<Writer> {
        let mut s = self.lock();
        s.direct = false;
        s.frames = VecDeque::new();
        s.queued = 0;
        s.wire = VecDeque::new();
        s.writer.take()
    }

    /// Whether everything is written: no frame queued, no byte waiting.
    pub(crate) fn is_idle(&self) -> bool {
        self.lock().is_idle()
    }

    /// The next queued frame, without waiting.
    pub(crate) fn try_recv(&self) -> Option<Frame> {
        self.lock().pop()
    }

    /// The next queued frame; `None` once the hub let go and the queue is empty.
    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        let mut s = self.lock();
        if let Some(frame) = s.pop() {
            return Poll::Ready(Some(frame));
        }
        if s.closed {
            return Poll::Ready(None);
        }
        s.park(cx);
        Poll::Pending
    }

    /// Ready with `true` when there is something to write, `false` once the hub let
    /// go and everything is written.
    pub(crate) fn poll_work(&self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut s = self.lock();
        if !s.is_idle() {
            return Poll::Ready(true);
        }
        if s.closed {
            return Poll::Ready(false);
        }
        s.park(cx);
        Poll::Pending
    }

    /// Writes up to a batch: what is on the wire already, then queued frames as
    /// `render` makes them (`None` skips a frame), up to [`BATCH`] frames and
    /// [`BATCH_BYTES`]. Ready once that batch is out and flushed; call again while
    /// [`poll_work`](Self::poll_work) is ready.
    pub(crate) fn poll_send(
        &self,
        cx: &mut Context<'_>,
        render: &mut dyn FnMut(Frame) -> Option<Bytes>,
    ) -> Poll<io::Result<()>> {
        let mut s = self.lock();
        let mut rendered = 0;
        while s.wire.len() < BATCH && rendered < BATCH_BYTES {
            let Some(frame) = s.pop() else {
                break;
            };
            if let Some(bytes) = render(frame) {
                rendered += bytes.len();
                s.wire.push_back(bytes);
            }
        }
        let done = s.poll_write_wire(cx);
        s.shrink();
        done
    }

    /// Writes what is on the wire (not the queued frames), then flushes.
    pub(crate) fn poll_flush_wire(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.lock().poll_write_wire(cx)
    }

    pub(crate) fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = self.lock();
        ready!(s.poll_write_wire(cx))?;
        match s.writer.as_mut() {
            Some(w) => Pin::new(w).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    pub(crate) fn push_wire(&self, bytes: Bytes) {
        let mut s = self.lock();
        s.wire.push_back(bytes);
    }

    /// Puts `bytes` on the wire ahead of the queued frames, and wakes the owner.
    pub(crate) fn push_answer(&self, bytes: Bytes) {
        let mut s = self.lock();
        s.wire.push_back(bytes);
        wake(s);
    }
}

/// Wakes the owner, if parked, once the lock is let go.
fn wake(mut s: MutexGuard<'_, State>) {
    let waker = s.waker.take();
    drop(s);
    if let Some(waker) = waker {
        waker.wake();
    }
}

impl State {
    /// Queues `frame`, or reports the queue full: by count, by bytes (but for
    /// its first frame), or once let go as a slow consumer.
    fn push(&mut self, frame: &Frame, limits: &Outbox) -> Offer {
        let len = frame.wire.len();
        let over_bytes = !self.frames.is_empty() && self.queued + len > limits.max_bytes;
        if self.frames.len() >= limits.capacity
            || over_bytes
            || self.ending == Some(Ending::SlowConsumer)
        {
            return Offer::Full;
        }
        self.queued += len;
        self.frames.push_back(frame.clone());
        Offer::Queued
    }

    /// The oldest queued frame.
    fn pop(&mut self) -> Option<Frame> {
        let frame = self.frames.pop_front()?;
        self.queued -= frame.wire.len();
        Some(frame)
    }

    /// Nothing to write: neither frames nor bytes waiting, nothing to flush.
    fn is_idle(&self) -> bool {
        self.frames.is_empty() && self.wire.is_empty() && !self.unflushed
    }

    fn park(&mut self, cx: &mut Context<'_>) {
        match &mut self.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
    }

    /// One non-blocking write (and flush) of `bytes`; how much went, or `None`
    /// when nothing did.
    fn write_now(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut writer = Pin::new(self.writer.as_mut()?);
        let mut cx = Context::from_waker(Waker::noop());
        // Outside tokio's per-task budget: the hub writes to many sockets in one
        // poll of the listener, and a spent budget would make every write after the
        // 128th report "not ready" and fall back to the queue.
        let write = poll_fn(|cx| match writer.as_mut().poll_write(cx, bytes) {
            Poll::Ready(Ok(n)) if n > 0 => {
                // A TLS writer may keep some of it: the owner flushes that.
                Poll::Ready(Some((n, writer.as_mut().poll_flush(cx).is_pending())))
            }
            _ => Poll::Ready(None),
        });
        let Poll::Ready(written) = pin!(unconstrained(write)).poll(&mut cx) else {
            unreachable!("the write above is always ready")
        };
        let (n, unflushed) = written?;
        self.unflushed = unflushed;
        Some(n)
    }

    /// Writes `wire` out, a batch of slices per write, then flushes.
    fn poll_write_wire(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(writer) = self.writer.as_mut() else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        while !self.wire.is_empty() {
            let mut slices = [IoSlice::new(&[]); BATCH];
            let count = self.wire.len().min(BATCH);
            for (slice, bytes) in slices.iter_mut().zip(&self.wire) {
                *slice = IoSlice::new(bytes);
            }
            let n = ready!(Pin::new(&mut *writer).poll_write_vectored(cx, &slices[..count]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            advance(&mut self.wire, n);
            self.unflushed = true;
        }
        ready!(Pin::new(writer).poll_flush(cx))?;
        self.unflushed = false;
        Poll::Ready(Ok(()))
    }

    /// Gives back what a burst grew, once it is over: an idle socket holds no queue.
    fn shrink(&mut self) {
        if self.frames.is_empty() && self.frames.capacity() > BATCH {
            self.frames = VecDeque::new();
        }
        if self.wire.is_empty() && self.wire.capacity() > BATCH {
            self.wire = VecDeque::new();
        }
    }
}

/// Drops the first `n` bytes of `wire`.
fn advance(wire: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let Some(front) = wire.front_mut() else {
            return;
        };
        if n < front.len() {
            front.advance(n);
            return;
        }
        n -= front.len();
        wire.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, duplex};
    use tokio_websockets::ClientBuilder;

    use super::*;

    fn attached(pipe: usize) -> (Arc<Outbox>, tokio::io::DuplexStream) {
        let (server, client) = duplex(pipe);
        let outbox = Outbox::new(4);
        outbox.attach(Box::new(server), true);
        (outbox, client)
    }

    #[tokio::test]
    async fn an_idle_socket_gets_the_frame_written_by_the_offer() {
        let (outbox, mut client) = attached(1024);
        assert_eq!(outbox.offer(&Frame::from("hi"), true), Offer::Written);
        let mut got = [0; 4];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"\x81\x02hi");
    }

    /// tokio's per-task budget (128 I/O operations a poll) does not hold up the
    /// hub: every idle socket of a large channel is written in the same poll.
    #[tokio::test]
    async fn one_poll_writes_to_more_sockets_than_the_task_budget() {
        let sockets: Vec<_> = (0..300).map(|_| attached(1024)).collect();
        let frame = Frame::from("hi");
        let written = sockets
            .iter()
            .filter(|(outbox, _)| outbox.offer(&frame, true) == Offer::Written)
            .count();
        assert_eq!(written, 300);
    }

    #[tokio::test]
    async fn a_blocked_socket_queues_in_order_then_reports_full() {
        // Room for one 100-byte frame and part of the next.
        let (outbox, mut client) = attached(150);
        let frames: Vec<Frame> = (0..7)
            .map(|i| Frame::from(format!("{i}").repeat(100).as_str()))
            .collect();
        assert_eq!(outbox.offer(&frames[0], true), Offer::Written);
        // Partly written: the rest waits on the wire, not in the queue.
        assert_eq!(outbox.offer(&frames[1], true), Offer::Written);
        for frame in &frames[2..6] {
            assert_eq!(outbox.offer(frame, true), Offer::Queued);
        }
        assert_eq!(outbox.offer(&frames[6], true), Offer::Full);
        let writer = {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                while std::future::poll_fn(|cx| outbox.poll_work(cx)).await {
                    let mut render = |f: Frame| Some(f.wire.clone());
                    std::future::poll_fn(|cx| outbox.poll_send(cx, &mut render))
                        .await
                        .unwrap();
                }
            })
        };
        let mut client = ClientBuilder::new().take_over(&mut client);
        for i in 0..6 {
            let msg = client.next().await.unwrap().unwrap();
            assert_eq!(msg.as_text().unwrap(), format!("{i}").repeat(100));
        }
        outbox.close();
        writer.await.unwrap();
    }
}
