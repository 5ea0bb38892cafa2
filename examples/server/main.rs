//! The standalone pgws server (wire contract §8), configured by `PGWS_*` variables.
//!
//! ```text
//! PGWS_JWT_SECRET=reallyreallyreallyreallyverysafe cargo run --example server
//! ```
//!
//! WebSocket handshakes with a token (in the path, `Authorization: Bearer` or the
//! `pgws.bearer.<jwt>` subprotocol) go to [`PgWsLayer`]; every other request goes to
//! static files (`PGWS_ROOT_PATH`), then to a reverse proxy (`PGWS_UPSTREAM`,
//! typically PostgREST).
//!
//! Besides the variables of the wire contract (§8):
//! - `PGWS_CERTIFICATE_FILE` and `PGWS_KEY_FILE` (PEM) serve `https:`/`wss:` with
//!   rustls;
//! - `PGWS_ADMIN_ADDR` (e.g. `127.0.0.1:9090`) serves `/metrics` (Prometheus text),
//!   `/health` and `/ready` on a separate address, never on the public port;
//! - `PGWS_LOG_FORMAT` is `text` (default) or `json`; `RUST_LOG` filters as usual.
//!   Logged request paths have every JWT-shaped segment replaced by `<redacted>` and
//!   no query string; header values are never logged.
//!
//! Try the browser chat:
//!
//! ```text
//! PGWS_ROOT_PATH=examples/chat cargo run --example server
//! ```
//!
//! Tests include this file as a module (`#[path = "../examples/server/main.rs"]`) and
//! call [`run`] directly, so not every item is used by every includer.
#![allow(dead_code)]

mod admin;
mod proxy;
mod report;
mod routes;
mod settings;
mod tls;

use std::{convert::Infallible, net::SocketAddr, process::ExitCode, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{
        conn::auto,
        graceful::{GracefulShutdown, Watcher},
    },
    service::TowerToHyperService,
};
use metrics_exporter_prometheus::PrometheusHandle;
use pgws::PgWsLayer;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_rustls::TlsAcceptor;
use tower::{Layer, service_fn};
use tower_http::{
    services::ServeDir,
    trace::{DefaultOnFailure, TraceLayer},
};
use tracing::Level;

// What the tests reach as `server::Settings`, `server::tls_config` and so on; not
// every includer uses every one.
#[allow(unused_imports)]
pub use self::{
    report::{DATABASE_CHECK_TIMEOUT, database_reachable, startup_report},
    settings::{LogFormat, Settings, Upstream, listen_addr, settings_from, settings_from_env},
    tls::tls_config,
};

use admin::{Admin, prometheus, serve_admin};
use proxy::upstream_client;
use routes::{Routes, fallback};

/// How long in-flight HTTP requests may take to finish once shutdown starts.
const HTTP_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every answer that is not the layer's own.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

// ---------------------------------------------------------------------------
// Serving
// ---------------------------------------------------------------------------

/// What every connection shares.
struct App {
    layer: PgWsLayer,
    routes: Arc<Routes>,
    http: auto::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
}

/// Serves `listener` until `shutdown` resolves, then closes the sockets (1001) and
/// lets in-flight HTTP requests finish, for a bounded time. No admin listener.
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

/// The server before it serves: `main` reaches its layer for the start-up checks.
pub struct Server {
    app: App,
    metrics: Option<Result<PrometheusHandle, String>>,
}

impl Server {
    /// Builds the layer (the listener starts connecting now). With `admin_metrics`,
    /// the Prometheus recorder is installed first, so every figure is counted.
    pub fn new(settings: Settings, admin_metrics: bool) -> Server {
        let metrics = admin_metrics.then(prometheus);
        let scheme = if settings.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let app = App {
            layer: PgWsLayer::new(settings.config),
            routes: Arc::new(Routes {
                static_files: settings.root_path.map(ServeDir::new),
                upstream: settings.upstream,
                client: upstream_client(),
                scheme,
            }),
            http: http_builder(settings.handshake_timeout),
            tls: settings.tls.map(TlsAcceptor::from),
        };
        Server { app, metrics }
    }

    /// The layer, for [`database_reachable`] and health checks.
    pub fn layer(&self) -> &PgWsLayer {
        &self.app.layer
    }

    /// Serves until `shutdown` resolves; see [`run`].
    pub async fn serve(
        self,
        listener: TcpListener,
        admin: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) {
        let app = self.app;
        let (stop_admin, admin_stopped) = watch::channel(false);
        let admin_task = admin.map(|admin| {
            let state = Admin {
                layer: app.layer.clone(),
                metrics: self.metrics.clone().unwrap_or_else(prometheus),
            };
            tokio::spawn(serve_admin(admin, Arc::new(state), admin_stopped))
        });
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => app.spawn_connection(stream, peer, graceful.watcher()),
                    Err(e) => {
                        // Usually out of file descriptors: wait rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        tracing::info!("shutting down");
        stop_admin.send_replace(true);
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
    fn spawn_connection(&self, stream: TcpStream, peer: SocketAddr, watcher: Watcher) {
        // Small WebSocket frames should leave at once.
        let _ = stream.set_nodelay(true);
        let routes = self.routes.clone();
        let fallback = service_fn(move |req| fallback(routes.clone(), req, peer));
        let svc = request_log(peer).layer(self.layer.layer(fallback));
        let http = self.http.clone();
        let Some(tls) = self.tls.clone() else {
            tokio::spawn(serve_connection(
                http,
                TokioIo::new(stream),
                svc,
                peer,
                watcher,
            ));
            return;
        };
        tokio::spawn(async move {
            if let Some(stream) = tls::accept(&tls, stream, peer).await {
                serve_connection(http, TokioIo::new(stream), svc, peer, watcher).await;
            }
        });
    }
}

/// HTTP/1 and HTTP/2; a client gets `head_timeout` to send its request head (a
/// handshake included), so idle half-opened connections do not pile up.
fn http_builder(head_timeout: Duration) -> auto::Builder<TokioExecutor> {
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(head_timeout);
    http
}

/// One HTTP/1.1 or HTTP/2 connection, upgrades included, watched for shutdown.
async fn serve_connection<I, S>(
    http: auto::Builder<TokioExecutor>,
    io: TokioIo<I>,
    svc: S,
    peer: SocketAddr,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = Response<LoggedBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = http
        .serve_connection_with_upgrades(io, TowerToHyperService::new(svc))
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// The answer body of every public request, as the request log wraps it.
type LoggedBody = tower_http::trace::ResponseBody<
    pgws::PgWsBody<Body>,
    tower_http::classify::NeverClassifyEos<tower_http::classify::ServerErrorsFailureClass>,
>;

/// One span per request with the method, the redacted path and the peer; the
/// answer's status at DEBUG, server errors at WARN. Never the query or a header.
fn request_log(
    peer: SocketAddr,
) -> TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>,
    impl Fn(&Request<Incoming>) -> tracing::Span + Clone,
> {
    TraceLayer::new_for_http()
        .make_span_with(move |req: &Request<Incoming>| {
            tracing::info_span!(
                "request",
                method = %req.method(),
                path = %redacted_path(req.uri().path()),
                %peer,
            )
        })
        .on_failure(DefaultOnFailure::new().level(Level::WARN))
}

/// A request path fit for logs: every segment that is, or percent-decodes to,
/// something shaped like a JWT becomes `<redacted>`. The query is never part of it.
pub fn redacted_path(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            if segment_may_be_token(segment) {
                "<redacted>"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn segment_may_be_token(segment: &str) -> bool {
    let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
    // `eyJ` is base64url for `{"`, the start of every JWT header pgws has seen;
    // any other header JSON (`{ "`, `{\n`) still starts with `e`. File names such as
    // `app.min.js` are too short to be mistaken for one.
    let b64url = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let parts: Vec<&str> = decoded.split('.').collect();
    let jws_shaped = parts.len() == 3
        && !parts[0].is_empty()
        && !parts[1].is_empty()
        && parts.iter().all(|p| b64url(p));
    decoded.starts_with("eyJ") || (jws_shaped && decoded.starts_with('e') && decoded.len() >= 24)
}

// ---------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------

#[tokio::main]
async fn main() -> ExitCode {
    let settings = match settings_from_env() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("pgws: {e}");
            return ExitCode::FAILURE;
        }
    };
    init_tracing(settings.log_format);
    let listener = match bind(settings.addr) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!(
                "pgws: PGWS_HOST/PGWS_PORT: cannot listen on {}: {e}",
                settings.addr
            );
            return ExitCode::FAILURE;
        }
    };
    let admin = match settings.admin_addr {
        None => None,
        Some(addr) => match TcpListener::bind(addr).await {
            Ok(admin) => Some(admin),
            Err(e) => {
                eprintln!("pgws: PGWS_ADMIN_ADDR: cannot listen on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let addr = listener.local_addr().unwrap_or(settings.addr);
    let admin_addr = admin.as_ref().and_then(|a| a.local_addr().ok());
    let admin_shown = admin_addr.map_or_else(|| "off".to_owned(), |a| a.to_string());
    tracing::info!(%addr, admin = %admin_shown, "listening");
    let server = Server::new(settings.clone(), admin.is_some());
    let layer = server.layer().clone();
    tokio::spawn(async move {
        let reachable = database_reachable(&layer, DATABASE_CHECK_TIMEOUT).await;
        // Printed, not logged, so it shows whatever the log level.
        print!(
            "{}",
            startup_report(&settings, addr, admin_addr, Some(reachable))
        );
    });
    server.serve(listener, admin, shutdown_signal()).await;
    ExitCode::SUCCESS
}

/// The global subscriber: `RUST_LOG` (default `info`), on stderr so that stdout
/// holds only the start-up report.
fn init_tracing(format: LogFormat) {
    use tracing_subscriber::{EnvFilter, util::SubscriberInitExt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal, not for a log file or collector.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    if let Err(e) = log_subscriber(format, filter, std::io::stderr, ansi).try_init() {
        eprintln!("pgws: cannot set up logging: {e}");
    }
}

/// A subscriber writing `format` lines to `writer`, with ANSI colours in text when
/// `ansi`; tests capture logs with it.
pub fn log_subscriber<W>(
    format: LogFormat,
    filter: tracing_subscriber::EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
        LogFormat::Json => Box::new(builder.json().finish()),
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
/// The public listener, with a backlog for bursts of handshakes: the default 128
/// makes clients beyond it wait out a 1 s SYN retry.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

const LISTEN_BACKLOG: u32 = 1024;

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
