//! The standalone pgws server (PROTOCOL.md §13), configured by `PGWS_*` variables:
//! the `pgws` program, behind the `server` feature.
//!
//! ```text
//! cargo install pgws --features server
//! PGWS_JWT_SECRET=reallyreallyreallyreallyverysafe pgws
//! ```
//!
//! WebSocket handshakes with a token (in the path, `Authorization: Bearer` or the
//! `pgws.bearer.<jwt>` subprotocol) go to [`PgWsLayer`]; every other request goes to
//! static files (`PGWS_ROOT_PATH`), then to a reverse proxy (`PGWS_UPSTREAM`,
//! typically PostgREST).
//!
//! Besides the layer's variables ([`Config::SETTINGS`](crate::Config::SETTINGS)),
//! the server reads those of [`SETTINGS`], among them:
//! - `PGWS_CERTIFICATE_FILE` and `PGWS_KEY_FILE` (PEM) serve `https:`/`wss:` with
//!   rustls;
//! - HTTP/1.1 and HTTP/2 share the public port: `h2` through ALPN over TLS, `h2c`
//!   with prior knowledge in cleartext, WebSockets over HTTP/2 as RFC 8441
//!   extended CONNECT streams; `PGWS_HTTP2_MAX_STREAMS` caps the streams of one
//!   connection, `0` turns HTTP/2 off;
//! - `PGWS_ADMIN_ADDR` (e.g. `127.0.0.1:9090`) serves `/metrics` (Prometheus text),
//!   `/health` and `/ready` on a separate address, never on the public port;
//! - `PGWS_LOG_FORMAT` is `text` (default) or `json`; `RUST_LOG` filters as usual.
//!   Logged request paths have every JWT-shaped segment replaced by `<redacted>` and
//!   no query string; header values are never logged; text lines escape every
//!   control character of their fields (`\n`, `\u{1b}`), so a line is one event;
//! - `PGWS_DEV_DB` (`auto`, `on`, `off`) and `PGWS_DEV_DB_DIR`: a private
//!   development database when `PGWS_DB_URI` is not set, on a Unix socket only its
//!   owner reaches; unasked, only on an interactive start (see [`DevDbSettings`]).
//!
//! Try the browser chat:
//!
//! ```text
//! PGWS_ROOT_PATH=examples/chat pgws
//! ```
//!
//! The program is [`main`]; [`launch`] is the same with the shutdown signal and the
//! start-up report's destination given. To embed the server instead, build
//! [`Settings`] and call [`run`] (or [`serve`], with the admin listener) on a bound
//! listener:
//!
//! ```no_run
//! # async fn embed() -> Result<(), Box<dyn std::error::Error>> {
//! let settings = pgws::server::Settings::from_env()?;
//! let listener = tokio::net::TcpListener::bind(settings.addr).await?;
//! pgws::server::run(listener, settings, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await;
//! # Ok(())
//! # }
//! ```

mod admin;
mod connection;
mod devdb;
mod launch;
mod logging;
mod proxy;
mod report;
mod routes;
mod settings;
mod tls;
mod write_deadline;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::{rt::TokioIo, server::graceful::GracefulShutdown};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_rustls::TlsAcceptor;
use tower::{Layer, service_fn};

use crate::PgWsLayer;

pub use self::{
    launch::{launch, main},
    logging::log_subscriber,
    report::{DATABASE_CHECK_TIMEOUT, database_reachable, startup_report},
    settings::{DevDbMode, DevDbSettings, LogFormat, SETTINGS, ServerSetting, Settings, Upstream},
    tls::tls_config,
};

use admin::{Admin, prometheus, serve_admin};
use connection::{Deadlines, Drain, Http, serve_connection};
use logging::request_log;
use proxy::upstream_client;
use routes::{Routes, StaticFiles, fallback};
use write_deadline::WriteDeadline;

/// How long in-flight HTTP requests may take to finish once shutdown starts.
const HTTP_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every answer that is not the layer's own.
pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;

// ---------------------------------------------------------------------------
// Serving
// ---------------------------------------------------------------------------

/// What every connection shares.
struct App {
    layer: PgWsLayer,
    routes: Arc<Routes>,
    http: Http,
    tls: Option<TlsAcceptor>,
}

/// Serves `listener` until `shutdown` resolves, then for
/// [`Settings::drain_period`] more (`/ready` answering `503`), then closes the
/// sockets (1001) and lets in-flight HTTP requests finish, for a bounded time.
/// No admin listener.
pub async fn run(listener: TcpListener, settings: Settings, shutdown: impl Future<Output = ()>) {
    serve(listener, None, settings, shutdown).await;
}

/// [`run`], with `/metrics`, `/health` and `/ready` on `admin` when given.
pub async fn serve(
    listener: TcpListener,
    admin: Option<TcpListener>,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) {
    Server::new(settings, admin.is_some())
        .serve(listener, admin, shutdown)
        .await;
}

/// The server before it serves: [`launch`] reaches its layer for the start-up check.
pub(crate) struct Server {
    app: App,
    metrics: Option<Result<PrometheusHandle, String>>,
    drain_period: Duration,
}

impl Server {
    /// Builds the layer (the listener starts connecting now). With `admin_metrics`,
    /// the Prometheus recorder is installed first, so every figure is counted.
    pub(crate) fn new(settings: Settings, admin_metrics: bool) -> Server {
        let metrics = admin_metrics.then(prometheus);
        let scheme = if settings.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let app = App {
            layer: PgWsLayer::new(settings.config),
            routes: Arc::new(Routes {
                static_files: settings.root_path.map(StaticFiles::new),
                upstream: settings.upstream,
                client: upstream_client(),
                scheme,
            }),
            http: Http::new(
                Deadlines {
                    handshake: settings.handshake_timeout,
                    keep_alive: settings.keepalive_timeout,
                    http2_idle: settings.http2_idle_timeout,
                    write: settings.write_timeout,
                },
                settings.http2_max_streams,
            ),
            tls: settings
                .tls
                .map(|tls| tls::acceptor(tls, settings.http2_max_streams > 0)),
        };
        Server {
            app,
            metrics,
            drain_period: settings.drain_period,
        }
    }

    /// The layer, for [`database_reachable`] and health checks.
    pub(crate) fn layer(&self) -> &PgWsLayer {
        &self.app.layer
    }

    /// Serves until `shutdown` resolves; see [`run`].
    pub(crate) async fn serve(
        self,
        listener: TcpListener,
        admin: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) {
        let app = self.app;
        let (stopping, stop_signal) = watch::channel(false);
        let draining = Arc::new(AtomicBool::new(false));
        let admin_task = admin.map(|admin| {
            let state = Admin {
                layer: app.layer.clone(),
                metrics: self.metrics.clone().unwrap_or_else(prometheus),
                draining: draining.clone(),
            };
            tokio::spawn(serve_admin(admin, Arc::new(state), stop_signal.clone()))
        });
        let graceful = GracefulShutdown::new();
        app.accept_until(&listener, &graceful, &stop_signal, shutdown)
            .await;
        if !self.drain_period.is_zero() {
            // Load balancers see `/ready` fail and stop sending clients; those
            // that still come are served, and get 1001 with everyone else.
            draining.store(true, Ordering::Relaxed);
            tracing::info!(period = ?self.drain_period, "draining: /ready answers 503");
            let drained = tokio::time::sleep(self.drain_period);
            app.accept_until(&listener, &graceful, &stop_signal, drained)
                .await;
        }
        drop(listener);
        tracing::info!("shutting down");
        stopping.send_replace(true);
        let drain_http = async {
            if tokio::time::timeout(HTTP_DRAIN_TIMEOUT, graceful.shutdown())
                .await
                .is_err()
            {
                tracing::warn!("some HTTP connections did not finish in time");
            }
        };
        tokio::join!(app.layer.shutdown(), drain_http);
        if let Some(task) = admin_task {
            let _ = task.await;
        }
        tracing::info!("stopped");
    }
}

impl App {
    /// Accepts connections until `until` resolves.
    async fn accept_until(
        &self,
        listener: &TcpListener,
        graceful: &GracefulShutdown,
        stopping: &watch::Receiver<bool>,
        until: impl Future<Output = ()>,
    ) {
        tokio::pin!(until);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let drain = Drain {
                            watcher: graceful.watcher(),
                            stopping: stopping.clone(),
                        };
                        self.spawn_connection(stream, peer, drain);
                    }
                    Err(e) => {
                        // Usually out of file descriptors: wait rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                () = &mut until => return,
            }
        }
    }

    fn spawn_connection(&self, stream: TcpStream, peer: SocketAddr, drain: Drain) {
        let opened = tokio::time::Instant::now();
        // Small WebSocket frames should leave at once.
        let _ = stream.set_nodelay(true);
        let routes = self.routes.clone();
        let fallback = service_fn(move |req| fallback(routes.clone(), req, peer));
        let svc = request_log(peer).layer(self.layer.layer(fallback));
        let http = self.http.clone();
        let stream = WriteDeadline::new(stream, http.write_deadline());
        let Some(tls) = self.tls.clone() else {
            tokio::spawn(serve_connection(
                http,
                TokioIo::new(stream),
                svc,
                peer,
                drain,
                opened,
            ));
            return;
        };
        tokio::spawn(async move {
            let deadline = http.first_request_deadline(opened);
            if let Some(stream) = tls::accept(&tls, stream, peer, deadline).await {
                serve_connection(http, TokioIo::new(stream), svc, peer, drain, opened).await;
            }
        });
    }
}
