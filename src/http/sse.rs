//! Server-sent events (PROTOCOL.md §16): a `GET` on a pgws URL that accepts
//! `text/event-stream` reads its token's channels as an event stream, over any
//! HTTP version. The response body is the stream's whole state: it polls the
//! subscription itself, with no task or channel of its own.

use std::{
    collections::VecDeque,
    fmt,
    pin::Pin,
    sync::{Arc, Mutex, Weak},
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use pin_project_lite::pin_project;
use tokio::{
    sync::OwnedSemaphorePermit,
    task::JoinHandle,
    time::{Duration, Instant, Sleep, sleep, sleep_until},
};

use crate::{
    auth::{Grant, Mode},
    close::Close,
    engine::{
        Engine,
        frame::Frame,
        history::History,
        listener::Subscription,
        outbox::{Ending, Outbox},
        resume::{self, Format, Json, Page, Resume, Sent},
    },
    envelope::Event,
    history::{Position, Since},
    refusal::Refusal,
    stats::{Counters, Transport},
    time::instant_at,
};

use super::{
    handshake::{self, Route},
    positions,
};

/// What a browser is told to wait before reconnecting, in milliseconds.
pub(crate) const RETRY_MS: u64 = 2000;
/// Queued notifications written in one chunk, at most.
const BATCH: usize = 64;
/// The bytes a chunk of the body takes events up to (a replay page goes in
/// chunks of this size): the connection holds what it was given, so a client
/// that stops reading pins at most its buffer and one chunk, or one larger event.
const CHUNK: usize = 64 * 1024;
/// No limit to [`write_queued`]: at shutdown, everything queued goes first.
const ALL: (usize, usize) = (usize::MAX, usize::MAX);
/// The keep-alive comment.
const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// Whether the request is an event stream on a pgws URL (PROTOCOL.md §16):
/// a `GET` accepting `text/event-stream`, not a WebSocket handshake, its token
/// in the path or in `Authorization: Bearer`.
pub(crate) fn route<'a, B>(req: &'a Request<B>, prefix: &str) -> Route<'a> {
    let headers = req.headers();
    if req.method() != Method::GET
        || !accepts_event_stream(headers)
        || headers.contains_key(header::UPGRADE)
    {
        return Route::Pass;
    }
    let from_header = handshake::bearer(headers).filter(|t| handshake::looks_like_jws(t));
    let Some((channel, from_path)) =
        handshake::split_path(req.uri().path(), prefix, from_header.is_some())
    else {
        return Route::Pass;
    };
    let token = match (from_path, from_header) {
        (Some(a), Some(b)) if a != b => return Route::Refused(Refusal::ConflictingTokens),
        (Some(t), _) | (None, Some(t)) => t,
        (None, None) => return Route::Pass,
    };
    Route::Ours {
        channel,
        token,
        pgws_protocol: false,
        session: false,
    }
}

/// `Accept` names `text/event-stream` (parameters and case aside).
fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let media = range.split(';').next().unwrap_or_default().trim();
            media.eq_ignore_ascii_case("text/event-stream")
        })
}

/// What opening a stream needs once the request is taken.
pub(crate) struct Opening {
    pub(crate) channel: Option<String>,
    pub(crate) token: String,
    /// The query string, with history on.
    pub(crate) query: Option<String>,
    /// The `Last-Event-ID` header, with history on.
    pub(crate) last_event_id: Option<String>,
}

/// The answer to a stream request: the stream, or a refusal.
pub(crate) type Opened = Result<Response<Box<EventStream>>, Response<Bytes>>;

/// The same checks as a handshake, in the same order, then `200` and the stream.
pub(crate) async fn open(engine: Arc<Engine>, req: Opening) -> Opened {
    let refuse = |refusal: Refusal| {
        engine.counters.refused(&refusal);
        tracing::debug!(reason = refusal.label(), "event stream refused");
        refusal.response()
    };
    let (permit, grant) = engine
        .admit(req.channel.as_deref(), &req.token)
        .map_err(&refuse)?;
    if !grant.mode.reads() {
        return Err(refuse(Refusal::ReadNotAllowed));
    }
    let starts = starts(&engine, &req, &grant).await.map_err(&refuse)?;
    let sub = engine.subscribe(&grant).await.map_err(&refuse)?;
    let format = Sse {
        multi: grant.channels.len() > 1,
    };
    tracing::info!(
        channels = grant.channels.join(",").as_str(),
        mode = grant.mode.as_str(),
        "event stream open"
    );
    // With a meta channel, announced like a socket: open now, closed on drop.
    let announced = engine.meta.as_ref().map(|meta| {
        meta.announce(&engine.mapping, &grant, Event::ConnectionOpen);
        Box::new(grant.clone())
    });
    let open = Open {
        engine: engine.clone(),
        mode: grant.mode,
        announced,
        _permit: permit,
    };
    let stream = EventStream::new(open, &grant, sub, Resume::with_format(starts, format));
    engine.counters.opened(Transport::EventStream, grant.mode);
    Ok(answer(Box::new(stream)))
}

/// The `200` that carries a stream.
fn answer(stream: Box<EventStream>) -> Response<Box<EventStream>> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        // nginx: pass each event on as it comes rather than buffering the body.
        .header("x-accel-buffering", HeaderValue::from_static("no"))
        .body(stream)
        .expect("static headers are valid")
}

/// Where each history channel of the stream starts: every one of them gets a
/// position, so that every event id covers them all.
async fn starts(
    engine: &Engine,
    req: &Opening,
    grant: &Grant,
) -> Result<Vec<(String, resume::Start)>, Refusal> {
    let Some(history) = &engine.history else {
        return Ok(Vec::new());
    };
    let asked = positions::for_stream(req.query.as_deref(), req.last_event_id.as_deref())?;
    let starts = asked.starts(&grant.channels, &history.channels)?;
    positions::windows(history, starts).await
}

/// The events of a stream (PROTOCOL.md §16).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sse {
    /// More than one channel: each event's data says which one.
    multi: bool,
}

impl Sse {
    /// The stream's position on each history channel, as its `Last-Event-ID`
    /// will give it back: one `since` value (with its channel on a stream of
    /// several), joined by `,` in channel order. `None` before any.
    fn id(&self, sent: &Sent) -> Option<String> {
        let mut positions: Vec<_> = sent.iter().collect();
        positions.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let values: Vec<String> = positions
            .into_iter()
            .map(|(channel, position)| {
                Since {
                    position: position.clone(),
                    channel: self.multi.then(|| channel.clone()),
                }
                .to_string()
            })
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }
}

impl Format for Sse {
    fn raw(&self, payload: &Bytes, sent: &Sent) -> Bytes {
        event(
            None,
            self.id(sent).as_deref(),
            &String::from_utf8_lossy(payload),
        )
    }

    fn message(
        &self,
        channel: &str,
        position: Option<&Position>,
        payload: &str,
        sent: &Sent,
    ) -> Bytes {
        let id = self.id(sent);
        if self.multi {
            let json = Json::default().message(channel, position, payload, sent);
            event(None, id.as_deref(), &String::from_utf8_lossy(&json))
        } else {
            event(None, id.as_deref(), payload)
        }
    }

    fn gap(&self, channel: &str, epoch: &str, from: i64, sent: &Sent) -> Bytes {
        let json = Json::default().gap(channel, epoch, from, sent);
        let id = self.id(sent);
        event(Some("gap"), id.as_deref(), &String::from_utf8_lossy(&json))
    }
}

/// One event: its type (the default, `message`, when `None`), its id, and its
/// data, one `data:` line per line (CR, LF and CRLF all end a line).
fn event(kind: Option<&str>, id: Option<&str>, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 16 + id.map_or(0, |i| i.len() + 5));
    if let Some(kind) = kind {
        out.push_str("event: ");
        out.push_str(kind);
        out.push('\n');
    }
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(id);
        out.push('\n');
    }
    let mut rest = data;
    loop {
        let end = rest.find(['\r', '\n']).unwrap_or(rest.len());
        out.push_str("data: ");
        out.push_str(&rest[..end]);
        out.push('\n');
        if end == rest.len() {
            break;
        }
        let skip = if rest[end..].starts_with("\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
    }
    out.push('\n');
    Bytes::from(out)
}

/// The event that ends a stream: the close code and reason a WebSocket would get.
fn ending(close: Close) -> Bytes {
    let data = format!(
        r#"{{"code":{},"reason":{}}}"#,
        close.code(),
        resume::quoted(close.reason())
    );
    event(Some("close"), None, &data)
}

type Replay = Pin<Box<dyn Future<Output = (Resume<Sse>, Result<Option<Page>, String>)> + Send>>;

/// The next page of a replay, the resume handed back with it.
fn replay(mut resume: Resume<Sse>, history: Arc<History>) -> Replay {
    Box::pin(async move {
        let page = resume.next_page(&history).await;
        (resume, page)
    })
}

/// Where a stream stands.
enum State {
    /// Nothing written yet.
    Start(Resume<Sse>),
    /// Reading the next page of the replay.
    Replay(Replay),
    /// Handing a page of the replay to the connection, a chunk at a time.
    Page(Resume<Sse>, Handout),
    /// Writing notifications as they come.
    Live(Resume<Sse>),
    /// The ending event is out.
    Done,
}

/// A replay page on its way to the connection. The connection asks for a chunk
/// only when it has room, so a client that stops reading stops asking: the
/// page's deadline then takes it back, with its place under the replay budget,
/// and lets the stream go as a slow consumer, as a WebSocket whose write blocks
/// for a ping interval is let go. It needs a task: nothing polls the stream
/// meanwhile.
struct Handout {
    /// `None` once the deadline took it.
    page: Arc<Mutex<Option<Pending>>>,
    deadline: Option<JoinHandle<()>>,
}

struct Pending {
    frames: VecDeque<Bytes>,
    _permit: OwnedSemaphorePermit,
}

/// What the stream gets from its page next.
enum Handed {
    Chunk(Bytes),
    /// The page's last chunk: the page is given up, and its budget back.
    Last(Bytes),
    /// The deadline took it.
    Lost,
}

impl Handout {
    fn new(
        page: Page,
        within: Option<Duration>,
        queue: &Arc<Outbox>,
        counters: &Arc<Counters>,
    ) -> Self {
        let pending = Pending {
            frames: page.frames.into(),
            _permit: page.permit,
        };
        let page = Arc::new(Mutex::new(Some(pending)));
        let deadline = within.map(|within| {
            let (weak, queue, counters) = (Arc::downgrade(&page), queue.clone(), counters.clone());
            tokio::spawn(take_back(weak, within, queue, counters))
        });
        Self { page, deadline }
    }

    /// The next chunk: up to [`CHUNK`] bytes, copied so that the connection never
    /// holds on to a whole frame through a slice of it.
    fn next(&mut self) -> Handed {
        let mut slot = self.page.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pending) = slot.as_mut() else {
            return Handed::Lost;
        };
        let mut chunk = BytesMut::new();
        while chunk.len() < CHUNK {
            let Some(front) = pending.frames.front_mut() else {
                break;
            };
            let n = front.len().min(CHUNK - chunk.len());
            chunk.extend_from_slice(&front.split_to(n));
            if front.is_empty() {
                pending.frames.pop_front();
            }
        }
        if pending.frames.is_empty() {
            *slot = None;
            return Handed::Last(chunk.freeze());
        }
        Handed::Chunk(chunk.freeze())
    }
}

impl Drop for Handout {
    fn drop(&mut self) {
        if let Some(deadline) = &self.deadline {
            deadline.abort();
        }
    }
}

/// The page's deadline: what is left of it goes, the stream is let go.
async fn take_back(
    page: Weak<Mutex<Option<Pending>>>,
    within: Duration,
    queue: Arc<Outbox>,
    counters: Arc<Counters>,
) {
    sleep(within).await;
    let Some(page) = page.upgrade() else {
        return;
    };
    let lost = page.lock().unwrap_or_else(|e| e.into_inner()).take();
    if lost.is_some() {
        tracing::info!("event stream did not take its replay within the ping interval");
        counters.slow_consumer_closed();
        queue.end(Ending::SlowConsumer);
    }
    // Its budget goes last: whatever waited for it sees the stream let go.
    drop(lost);
}

/// Held while a stream lives: its place under the socket limit and in the figures.
struct Open {
    engine: Arc<Engine>,
    mode: Mode,
    /// With a meta channel: the grant, for the `ConnectionClose` event.
    announced: Option<Box<Grant>>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Open {
    fn drop(&mut self) {
        let engine = &self.engine;
        if let (Some(meta), Some(grant)) = (&engine.meta, &self.announced) {
            meta.announce(&engine.mapping, grant, Event::ConnectionClose);
        }
        engine.counters.closed(Transport::EventStream, self.mode);
        tracing::info!("event stream closed");
    }
}

pin_project! {
    /// An open event stream: the response body, polled by the connection.
    pub(crate) struct EventStream {
        // Keep-alive and expiry in one timer: the earlier of the two.
        #[pin]
        timer: Sleep,
        state: State,
        sub: Subscription,
        shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
        expiry: Option<Instant>,
        keep_alive: Option<Duration>,
        open: Open,
    }
}

/// A year: "never" for a timer that must hold some deadline.
const FAR: Duration = Duration::from_secs(365 * 24 * 3600);

impl EventStream {
    fn new(open: Open, grant: &Grant, sub: Subscription, resume: Resume<Sse>) -> Self {
        let engine = &open.engine;
        let mut shutdown = engine.shutdown.subscribe();
        let keep_alive = engine.settings.sse_keep_alive();
        let expiry = grant.expires_at.and_then(instant_at);
        Self {
            timer: sleep_until(deadline(Instant::now(), expiry, keep_alive)),
            state: State::Start(resume),
            sub,
            shutdown: Box::pin(async move {
                // A dropped sender (the engine is gone) is no shutdown signal.
                if shutdown.wait_for(|down| *down).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }),
            expiry,
            keep_alive,
            open,
        }
    }

    /// The next chunk of the body; `None` once the ending event is out.
    pub(crate) fn poll_chunk(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let mut this = self.project();
        let engine = this.open.engine.clone();
        let counters = &engine.counters;
        loop {
            // Done unless a branch puts the stream back.
            let chunk = match std::mem::replace(this.state, State::Done) {
                State::Done => return Poll::Ready(None),
                State::Start(resume) => {
                    *this.state = match &engine.history {
                        Some(history) => {
                            counters.history_replay();
                            State::Replay(replay(resume, history.clone()))
                        }
                        None => State::Live(resume),
                    };
                    Bytes::from(format!("retry: {RETRY_MS}\n\n"))
                }
                State::Replay(mut page) => {
                    if this.sub.queue.ending() == Some(Ending::SlowConsumer) {
                        counters.slow_consumer_closed();
                        end(Close::SlowConsumer, BytesMut::new())
                    } else if this.shutdown.as_mut().poll(cx).is_ready() {
                        end(Close::GoingAway, BytesMut::new())
                    } else if let Poll::Ready((mut resume, read)) = page.as_mut().poll(cx) {
                        match read {
                            Ok(Some(page)) => {
                                counters.history_gaps(resume.take_gaps());
                                counters.frames_delivered(page.frames.len() as u64);
                                let within = engine.settings.ping_interval();
                                let handout =
                                    Handout::new(page, within, &this.sub.queue, &engine.counters);
                                *this.state = State::Page(resume, handout);
                                continue;
                            }
                            // The positions after the replay, in an event without data:
                            // it sets the client's last event id and fires nothing.
                            Ok(None) => {
                                let id = resume.format().id(resume.sent());
                                *this.state = State::Live(resume);
                                match id {
                                    Some(id) => Bytes::from(format!("id: {id}\n\n")),
                                    None => continue,
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "history replay failed");
                                end(Close::DatabaseUnavailable, BytesMut::new())
                            }
                        }
                    } else {
                        *this.state = State::Replay(page);
                        return Poll::Pending;
                    }
                }
                State::Page(resume, mut handout) => {
                    if this.shutdown.as_mut().poll(cx).is_ready() {
                        end(Close::GoingAway, BytesMut::new())
                    } else {
                        match handout.next() {
                            Handed::Chunk(chunk) => {
                                *this.state = State::Page(resume, handout);
                                chunk
                            }
                            Handed::Last(chunk) => {
                                let history = engine.history.clone().expect("replays need history");
                                *this.state = State::Replay(replay(resume, history));
                                chunk
                            }
                            // Counted when the deadline took it.
                            Handed::Lost => end(Close::SlowConsumer, BytesMut::new()),
                        }
                    }
                }
                State::Live(mut resume) => {
                    // In the WebSocket's order: hub signal, shutdown, expiry, frames.
                    if this.sub.queue.ending() == Some(Ending::SlowConsumer) {
                        counters.slow_consumer_closed();
                        end(Close::SlowConsumer, BytesMut::new())
                    } else if this.shutdown.as_mut().poll(cx).is_ready() {
                        // What is queued already is delivered first.
                        let mut out = BytesMut::new();
                        let sub = &mut *this.sub;
                        let sent =
                            write_queued(&mut out, &mut resume, None, ALL, || sub.queue.try_recv());
                        counters.frames_delivered(sent);
                        end(Close::GoingAway, out)
                    } else if this.timer.as_mut().poll(cx).is_ready() {
                        let now = Instant::now();
                        if this.expiry.is_some_and(|at| at <= now) {
                            end(Close::JwtExpired, BytesMut::new())
                        } else {
                            let next = deadline(now, *this.expiry, *this.keep_alive);
                            this.timer.as_mut().reset(next);
                            *this.state = State::Live(resume);
                            Bytes::from_static(KEEP_ALIVE)
                        }
                    } else {
                        match this.sub.queue.poll_recv(cx) {
                            Poll::Pending => {
                                *this.state = State::Live(resume);
                                return Poll::Pending;
                            }
                            // The hub let go: a full queue, or the listener lost its
                            // connection (what was queued before is delivered).
                            Poll::Ready(None) => match this.sub.queue.ending() {
                                Some(Ending::SlowConsumer) => {
                                    counters.slow_consumer_closed();
                                    end(Close::SlowConsumer, BytesMut::new())
                                }
                                _ => end(Close::ListenerRestarted, BytesMut::new()),
                            },
                            Poll::Ready(Some(first)) => {
                                let mut out = BytesMut::new();
                                let sub = &mut *this.sub;
                                let sent = write_queued(
                                    &mut out,
                                    &mut resume,
                                    Some(first),
                                    (BATCH, CHUNK),
                                    || sub.queue.try_recv(),
                                );
                                counters.frames_delivered(sent);
                                *this.state = State::Live(resume);
                                if out.is_empty() {
                                    continue;
                                }
                                out.freeze()
                            }
                        }
                    }
                }
            };
            return Poll::Ready(Some(chunk));
        }
    }
}

/// Writes `first` and what else is queued, up to `most` frames and `bytes` (and
/// one event more); how many events.
fn write_queued(
    out: &mut BytesMut,
    resume: &mut Resume<Sse>,
    first: Option<Frame>,
    (most, bytes): (usize, usize),
    mut next: impl FnMut() -> Option<Frame>,
) -> u64 {
    let mut sent = 0;
    let mut frame = first.or_else(&mut next);
    let mut taken = 0;
    while let Some(f) = frame {
        if let Some(event) = resume.live(&f) {
            out.extend_from_slice(&event);
            sent += 1;
        }
        taken += 1;
        if taken >= most || out.len() >= bytes {
            break;
        }
        frame = next();
    }
    sent
}

/// `out`, then the ending event; logged like a WebSocket's close.
fn end(close: Close, mut out: BytesMut) -> Bytes {
    tracing::info!(
        code = close.code(),
        reason = close.reason(),
        "event stream ended"
    );
    out.extend_from_slice(&ending(close));
    out.freeze()
}

/// The timer's next deadline: the next keep-alive or the expiry, whichever is first.
fn deadline(now: Instant, expiry: Option<Instant>, keep_alive: Option<Duration>) -> Instant {
    let keep_alive = now + keep_alive.unwrap_or(FAR);
    expiry.map_or(keep_alive, |at| at.min(keep_alive))
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: Bytes) -> String {
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn every_line_break_starts_a_data_line() {
        assert_eq!(text(event(None, None, "one")), "data: one\n\n");
        assert_eq!(text(event(None, None, "")), "data: \n\n");
        assert_eq!(
            text(event(Some("gap"), Some("E:3"), "a\r\nb\rc\nd\n")),
            "event: gap\nid: E:3\ndata: a\ndata: b\ndata: c\ndata: d\ndata: \n\n"
        );
        assert_eq!(text(event(None, None, " x")), "data:  x\n\n");
    }

    #[test]
    fn ids_are_since_values_joined_by_commas() {
        let at = |epoch: &str, offset| Position {
            epoch: epoch.into(),
            offset,
        };
        let mut sent = Sent::new();
        assert_eq!(Sse { multi: false }.id(&sent), None);
        sent.insert("b,c".into(), at("F", 2));
        assert_eq!(Sse { multi: false }.id(&sent).unwrap(), "F:2");
        sent.insert("a".into(), at("E", 9));
        assert_eq!(Sse { multi: true }.id(&sent).unwrap(), "E:9:a,F:2:b%2Cc");
    }

    #[test]
    fn the_ending_event_carries_the_close_code_and_reason() {
        assert_eq!(
            text(ending(Close::JwtExpired)),
            "event: close\ndata: {\"code\":3001,\"reason\":\"JWT expired\"}\n\n"
        );
    }

    #[test]
    fn only_get_requests_accepting_event_streams_are_taken() {
        let req = |method: &str, accept: &str| {
            Request::builder()
                .method(method)
                .uri("/a.b.c")
                .header("accept", accept)
                .body(())
                .unwrap()
        };
        let ours = |r: &Request<()>| matches!(route(r, ""), Route::Ours { .. });
        assert!(ours(&req("GET", "text/event-stream")));
        assert!(ours(&req("GET", "text/html, Text/Event-Stream;q=0.9")));
        assert!(!ours(&req("GET", "text/html")));
        assert!(!ours(&req("POST", "text/event-stream")));
    }

    #[test]
    fn a_stream_is_small() {
        // Per-connection memory: the body, boxed once (plus the resume's tables).
        let size = std::mem::size_of::<EventStream>();
        assert!(size <= 384, "{size} bytes");
    }
}
