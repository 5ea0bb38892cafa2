//! One client connection: HTTP/1.1 with upgrades and HTTP/2 (or HTTP/1.1 alone),
//! served until it ends, its deadline passes, or shutdown drains it.
//!
//! Every state of a connection has a deadline (PROTOCOL.md §12): until its first
//! request (the TLS handshake and the HTTP/2 preface included), between requests
//! on HTTP/1.1, and with no request in flight on HTTP/2. A request is in flight
//! from its head to the end of its answer's body, so event streams never expire;
//! an HTTP/1.1 WebSocket leaves the connection when it upgrades, and one over
//! HTTP/2 lives through the GOAWAY that an idle connection gets.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use http::{Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::Watcher},
    service::TowerToHyperService,
};
use pin_project_lite::pin_project;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::watch,
    time::Instant,
};

use super::{BoxError, logging::LoggedBody};

/// The longest wait a deadline allows: 365 days, far from overflowing a clock.
const LONGEST: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// How long a connection may wait in each state.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadlines {
    /// From the accept to the first request head, TLS handshake included.
    pub(crate) handshake: Duration,
    /// HTTP/1.1: from the end of an answer to the next request head.
    pub(crate) keep_alive: Duration,
    /// HTTP/2: from the end of the last request in flight to the next one.
    pub(crate) http2_idle: Duration,
    /// A write the client does not take (see [`WriteDeadline`](super::write_deadline)).
    pub(crate) write: Duration,
}

/// How connections are served.
#[derive(Clone)]
pub(crate) struct Http {
    protocols: Protocols,
    deadlines: Deadlines,
}

#[derive(Clone)]
enum Protocols {
    /// HTTP/1.1 and HTTP/2: over TLS through ALPN, in cleartext with prior
    /// knowledge (the connection preface tells them apart).
    Both(auto::Builder<TokioExecutor>),
    /// HTTP/1.1 alone (`PGWS_HTTP2_MAX_STREAMS=0`). hyper-util's auto builder
    /// ignores `http1_only` when it serves upgrades, so this is hyper's own.
    Http1(http1::Builder),
}

impl Http {
    /// HTTP/2 allows `http2_max_streams` streams per connection (`0`: no HTTP/2)
    /// and takes WebSockets as extended CONNECT streams (RFC 8441).
    pub(crate) fn new(deadlines: Deadlines, http2_max_streams: u32) -> Http {
        // Settings built by hand may hold any duration.
        let deadlines = Deadlines {
            handshake: deadlines.handshake.min(LONGEST),
            keep_alive: deadlines.keep_alive.min(LONGEST),
            http2_idle: deadlines.http2_idle.min(LONGEST),
            write: deadlines.write.min(LONGEST),
        };
        // The deadlines replace hyper's header timer: it would close an idle
        // keep-alive connection at the handshake deadline, not at its own.
        if http2_max_streams == 0 {
            let mut http = http1::Builder::new();
            http.timer(TokioTimer::new()).header_read_timeout(None);
            let protocols = Protocols::Http1(http);
            return Http {
                protocols,
                deadlines,
            };
        }
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(None);
        http.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(http2_max_streams)
            .enable_connect_protocol()
            // A peer that answers no PING (or reads nothing) is gone, streams or not.
            .keep_alive_interval(deadlines.http2_idle);
        Http {
            protocols: Protocols::Both(http),
            deadlines,
        }
    }

    /// When a connection accepted at `opened` must have sent its first request
    /// head; the TLS handshake counts against it.
    /// How long a write may stay blocked.
    pub(crate) fn write_deadline(&self) -> Duration {
        self.deadlines.write
    }

    pub(crate) fn first_request_deadline(&self, opened: Instant) -> Instant {
        opened + self.deadlines.handshake
    }
}

/// What shutdown needs of a connection: the watcher it drains with, and the
/// signal to start draining.
pub(crate) struct Drain {
    pub(crate) watcher: Watcher,
    pub(crate) stopping: watch::Receiver<bool>,
}

/// One connection accepted at `opened`, upgrades included, until it ends, its
/// deadline passes or shutdown drains it.
pub(crate) async fn serve_connection<I, S>(
    http: Http,
    io: TokioIo<I>,
    svc: S,
    peer: SocketAddr,
    drain: Drain,
    opened: Instant,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = Response<LoggedBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let (load, _) = watch::channel(Load::default());
    let load = Arc::new(load);
    let clock = Clock {
        load: load.subscribe(),
        deadlines: http.deadlines,
        opened,
    };
    let svc = TowerToHyperService::new(Tracked { inner: svc, load });
    let ended = match http.protocols {
        Protocols::Both(http) => {
            let conn = http.serve_connection_with_upgrades(io, svc);
            tokio::pin!(conn);
            drive(conn, |conn| conn.graceful_shutdown(), clock, drain, peer).await
        }
        Protocols::Http1(http) => {
            let conn = http.serve_connection(io, svc).with_upgrades();
            tokio::pin!(conn);
            drive(conn, |conn| conn.graceful_shutdown(), clock, drain, peer).await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Polls `conn` to its end; on shutdown or once idle past its deadline, shuts it
/// down gracefully. One that never sent a request is dropped at its deadline:
/// there is nothing to finish.
async fn drive<C, E>(
    mut conn: Pin<&mut C>,
    graceful: fn(Pin<&mut C>),
    clock: Clock,
    drain: Drain,
    peer: SocketAddr,
) -> Result<(), BoxError>
where
    C: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
{
    let Drain {
        watcher,
        mut stopping,
    } = drain;
    let stopped = async move {
        // A closed sender means the server is gone: stop as well.
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        () = stopped => {
            graceful(conn.as_mut());
            conn.await
        }
        waited = clock.expired() => match waited {
            Waited::ForTheFirstRequest => {
                tracing::debug!(%peer, "no request before the handshake deadline");
                Ok(())
            }
            Waited::Idle => {
                tracing::debug!(%peer, "idle past its deadline");
                graceful(conn.as_mut());
                conn.await
            }
        },
    };
    // Held until now: shutdown waits for it.
    drop(watcher);
    ended.map_err(Into::into)
}

// ---------------------------------------------------------------------------
// The clock
// ---------------------------------------------------------------------------

/// What the deadlines see of a connection's requests.
#[derive(Debug, Default, Clone, Copy)]
struct Load {
    in_flight: usize,
    /// Whether a request has come.
    served: bool,
    /// Whether they come over HTTP/2.
    http2: bool,
}

/// Which deadline passed.
enum Waited {
    ForTheFirstRequest,
    Idle,
}

struct Clock {
    load: watch::Receiver<Load>,
    deadlines: Deadlines,
    opened: Instant,
}

impl Clock {
    /// Resolves once the connection has waited past the deadline of its state.
    async fn expired(mut self) -> Waited {
        loop {
            let load = *self.load.borrow_and_update();
            if load.in_flight > 0 {
                self.changed().await;
                continue;
            }
            let deadline = match (load.served, load.http2) {
                (false, _) => self.opened + self.deadlines.handshake,
                (true, false) => Instant::now() + self.deadlines.keep_alive,
                (true, true) => Instant::now() + self.deadlines.http2_idle,
            };
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    // A request that came as the deadline passed wins.
                    if self.load.has_changed().unwrap_or(false) {
                        continue;
                    }
                    return match load.served {
                        false => Waited::ForTheFirstRequest,
                        true => Waited::Idle,
                    };
                }
                () = self.changed() => {}
            }
        }
    }

    /// The next change of load; never, once the connection is gone.
    async fn changed(&mut self) {
        if self.load.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A request in flight until dropped, with the future of its answer, then
/// with the answer's body.
struct InFlight(Arc<watch::Sender<Load>>);

impl InFlight {
    fn start(load: Arc<watch::Sender<Load>>, http2: bool) -> InFlight {
        load.send_modify(|load| {
            load.in_flight += 1;
            load.served = true;
            load.http2 = http2;
        });
        InFlight(load)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|load| load.in_flight -= 1);
    }
}

/// The connection's service, counting the requests in flight.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    load: Arc<watch::Sender<Load>>,
}

impl<S, B> tower::Service<Request<Incoming>> for Tracked<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::start(self.load.clone(), req.version() == Version::HTTP_2);
        TrackedFuture {
            inner: self.inner.call(req),
            in_flight: Some(in_flight),
        }
    }
}

pin_project! {
    /// An answer on its way, in flight.
    struct TrackedFuture<F> {
        #[pin]
        inner: F,
        in_flight: Option<InFlight>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.inner.poll(cx));
        let in_flight = this.in_flight.take();
        Poll::Ready(res.map(|res| {
            res.map(|inner| TrackedBody {
                inner,
                _in_flight: in_flight,
            })
        }))
    }
}

pin_project! {
    /// An answer's body, in flight until hyper drops it.
    struct TrackedBody<B> {
        #[pin]
        inner: B,
        _in_flight: Option<InFlight>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
