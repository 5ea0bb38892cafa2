//! One client connection: HTTP/1.1 with upgrades and HTTP/2 (or HTTP/1.1 alone),
//! served until it ends or shutdown drains it.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use http::{Request, Response};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::Watcher},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::watch,
};

use super::logging::LoggedBody;

/// How connections are served.
#[derive(Clone)]
pub(crate) enum Http {
    /// HTTP/1.1 and HTTP/2: over TLS through ALPN, in cleartext with prior
    /// knowledge (the connection preface tells them apart).
    Both(auto::Builder<TokioExecutor>),
    /// HTTP/1.1 alone (`PGWS_HTTP2_MAX_STREAMS=0`). hyper-util's auto builder
    /// ignores `http1_only` when it serves upgrades, so this is hyper's own.
    Http1(http1::Builder),
}

impl Http {
    /// An HTTP/1 client gets `head_timeout` to send its request head (a handshake
    /// included), so idle half-opened connections do not pile up. HTTP/2 allows
    /// `http2_max_streams` streams per connection (`0`: no HTTP/2) and takes
    /// WebSockets as extended CONNECT streams (RFC 8441).
    pub(crate) fn new(head_timeout: Duration, http2_max_streams: u32) -> Http {
        if http2_max_streams == 0 {
            let mut http = http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(head_timeout);
            return Http::Http1(http);
        }
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(head_timeout);
        http.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(http2_max_streams)
            .enable_connect_protocol();
        Http::Both(http)
    }
}

/// What shutdown needs of a connection: the watcher it drains with, and the
/// signal for the HTTP/1.1-only connections, which it cannot watch.
pub(crate) struct Drain {
    pub(crate) watcher: Watcher,
    pub(crate) stopping: watch::Receiver<bool>,
}

/// One connection, upgrades included, watched for shutdown.
pub(crate) async fn serve_connection<I, S>(
    http: Http,
    io: TokioIo<I>,
    svc: S,
    peer: SocketAddr,
    drain: Drain,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = Response<LoggedBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let svc = TowerToHyperService::new(svc);
    let ended = match http {
        Http::Both(http) => {
            let conn = http.serve_connection_with_upgrades(io, svc).into_owned();
            drain.watcher.watch(conn).await
        }
        Http::Http1(http) => {
            let conn = http.serve_connection(io, svc).with_upgrades();
            tokio::pin!(conn);
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
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            // Held until now: shutdown waits for it.
            drop(watcher);
            ended.map_err(Into::into)
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
