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
//! Tests include this file as a module (`#[path = "../examples/server.rs"]`) and
//! call [`run`] directly, so not every item is used by every includer.
#![allow(dead_code)]

use std::{
    convert::Infallible,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs},
    path::{Path, PathBuf},
    process::ExitCode,
    str::FromStr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header,
};
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{
        conn::auto,
        graceful::{GracefulShutdown, Watcher},
    },
    service::TowerToHyperService,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use pgws::{Config, ConfigBuilder, PgWsLayer};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_rustls::TlsAcceptor;
use tower::{Layer, ServiceExt, service_fn};
use tower_http::{
    services::ServeDir,
    trace::{DefaultOnFailure, TraceLayer},
};
use tracing::Level;

/// How long in-flight HTTP requests may take to finish once shutdown starts.
const HTTP_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the proxy waits for a TCP connection to the upstream.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take over its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to send a request head, the WebSocket handshake included.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the start-up check waits for the listener's first connection.
pub const DATABASE_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every answer that is not the layer's own.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;
type UpstreamClient = Client<HttpConnector, Incoming>;

/// Everything [`run`] needs, read from the environment by [`settings_from_env`] or
/// built by hand with [`Settings::new`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// The layer's configuration.
    pub config: Config,
    /// Where `main` listens (`PGWS_HOST`, `PGWS_PORT`); [`run`] takes a bound listener.
    pub addr: SocketAddr,
    /// Static files (`PGWS_ROOT_PATH`).
    pub root_path: Option<PathBuf>,
    /// Reverse proxy target (`PGWS_UPSTREAM`).
    pub upstream: Option<Upstream>,
    /// The sample token signed with a generated secret, when `PGWS_JWT_SECRET` is unset.
    pub dev_token: Option<String>,
    /// TLS on the public port (`PGWS_CERTIFICATE_FILE`, `PGWS_KEY_FILE`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Where `main` serves `/metrics`, `/health` and `/ready` (`PGWS_ADMIN_ADDR`);
    /// [`serve`] takes a bound listener.
    pub admin_addr: Option<SocketAddr>,
    /// `PGWS_LOG_FORMAT`.
    pub log_format: LogFormat,
    /// How long a client has to send its request head (`PGWS_HANDSHAKE_TIMEOUT`, s).
    pub handshake_timeout: Duration,
}

/// How `main` writes logs (`PGWS_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("PGWS_LOG_FORMAT: {s:?} is neither text nor json")),
        }
    }
}

impl Settings {
    /// The defaults: 127.0.0.1:3000, no static files, no upstream.
    pub fn new(config: Config) -> Self {
        Settings {
            config,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 3000)),
            root_path: None,
            upstream: None,
            dev_token: None,
            tls: None,
            admin_addr: None,
            log_format: LogFormat::Text,
            handshake_timeout: HEADER_READ_TIMEOUT,
        }
    }
}

/// A `PGWS_UPSTREAM` URL: `http://host[:port][/base]`.
#[derive(Debug, Clone)]
pub struct Upstream {
    authority: http::uri::Authority,
    /// The base path without a trailing slash (`""` for none).
    base: String,
    host: HeaderValue,
}

impl FromStr for Upstream {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let uri: Uri = s.parse().map_err(|e| format!("{s:?} is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err("https upstreams are not supported; use http://".into()),
            _ => return Err(format!("{s:?} must start with http://")),
        }
        let authority = uri
            .authority()
            .filter(|a| !a.host().is_empty() && !a.as_str().contains('@'))
            .ok_or_else(|| format!("{s:?} needs a host and no user name"))?
            .clone();
        if uri.query().is_some() {
            return Err(format!("{s:?} must not have a query string"));
        }
        let host = HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?;
        let base = uri.path().trim_end_matches('/').to_owned();
        Ok(Upstream {
            authority,
            base,
            host,
        })
    }
}

impl Upstream {
    /// The upstream URI for a request's path and query, under the base path.
    fn uri_for(&self, original: &Uri) -> Result<Uri, http::Error> {
        let pq = original.path_and_query().map_or("/", |pq| pq.as_str());
        // `OPTIONS *` has no leading slash and no place under a base path.
        let pq = if pq.starts_with('/') {
            format!("{}{pq}", self.base)
        } else {
            pq.to_owned()
        };
        Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
    }
}

// ---------------------------------------------------------------------------
// Settings from the environment
// ---------------------------------------------------------------------------

/// Reads every `PGWS_*` variable; the error names the offending variable.
pub fn settings_from_env() -> Result<Settings, String> {
    let builder = ConfigBuilder::from_env().map_err(|e| e.to_string())?;
    settings_from(builder, |name| std::env::var(name).ok())
}

/// The server's own variables, looked up with `var`, over a layer `builder`.
/// Split from [`settings_from_env`] so tests need not touch the process environment.
pub fn settings_from(
    builder: ConfigBuilder,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Settings, String> {
    // An empty value counts as unset (§8).
    let var = |name: &str| var(name).filter(|v| !v.is_empty());
    let tls = match (var("PGWS_CERTIFICATE_FILE"), var("PGWS_KEY_FILE")) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(
                "PGWS_CERTIFICATE_FILE is set but PGWS_KEY_FILE is not: set both \
                 for TLS, or neither"
                    .into(),
            );
        }
        (None, Some(_)) => {
            return Err(
                "PGWS_KEY_FILE is set but PGWS_CERTIFICATE_FILE is not: set both \
                 for TLS, or neither"
                    .into(),
            );
        }
        (Some(cert), Some(key)) => Some(tls_config(Path::new(&cert), Path::new(&key))?),
    };
    // PGWS_RETRIES is accepted and ignored: the layer retries forever.
    let addr = listen_addr(var("PGWS_HOST").as_deref(), var("PGWS_PORT").as_deref())?;
    let admin_addr = var("PGWS_ADMIN_ADDR").map(admin_addr).transpose()?;
    let log_format = var("PGWS_LOG_FORMAT")
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or_default();
    let handshake_timeout = match var("PGWS_HANDSHAKE_TIMEOUT") {
        None => HEADER_READ_TIMEOUT,
        Some(v) => match v.trim().parse::<u64>() {
            Ok(secs) if secs > 0 => Duration::from_secs(secs),
            _ => {
                return Err(format!(
                    "PGWS_HANDSHAKE_TIMEOUT: {v:?} is not a whole number of seconds above 0"
                ));
            }
        },
    };
    let root_path = var("PGWS_ROOT_PATH").map(root_dir).transpose()?;
    let upstream = var("PGWS_UPSTREAM")
        .map(|v| v.parse().map_err(|e| format!("PGWS_UPSTREAM: {e}")))
        .transpose()?;
    let (builder, dev_token) = ensure_secret(builder)?;
    let config = builder.build_from_env().map_err(|e| e.to_string())?;
    Ok(Settings {
        config,
        addr,
        root_path,
        upstream,
        dev_token,
        tls,
        admin_addr,
        log_format,
        handshake_timeout,
    })
}

/// `PGWS_ADMIN_ADDR`: `host:port`, an IPv6 address in brackets.
fn admin_addr(value: String) -> Result<SocketAddr, String> {
    if let Ok(addr) = value.trim().parse() {
        return Ok(addr);
    }
    value
        .trim()
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| {
            format!(
                "PGWS_ADMIN_ADDR: {value:?} is not an address with a port (like 127.0.0.1:9090)"
            )
        })
}

/// The rustls configuration for a PEM certificate chain and private key, with the
/// `ring` crypto provider chosen explicitly. Errors name the variable and the file.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let read = |var: &str, path: &Path| {
        std::fs::read(path).map_err(|e| format!("{var}: cannot read {}: {e}", path.display()))
    };
    let cert_pem = read("PGWS_CERTIFICATE_FILE", cert)?;
    let key_pem = read("PGWS_KEY_FILE", key)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "PGWS_CERTIFICATE_FILE: {} is not a PEM certificate: {e}",
                cert.display()
            )
        })?;
    if chain.is_empty() {
        return Err(format!(
            "PGWS_CERTIFICATE_FILE: no PEM certificate (BEGIN CERTIFICATE) in {}",
            cert.display()
        ));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        format!(
            "PGWS_KEY_FILE: no PEM private key in {}: {e}",
            key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("PGWS_CERTIFICATE_FILE: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            format!(
                "PGWS_KEY_FILE: {} does not go with the certificate in {}: {e}",
                key.display(),
                cert.display()
            )
        })?;
    // HTTP/2 for plain requests; browsers open WebSockets over HTTP/1.1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// `PGWS_HOST` and `PGWS_PORT` as a socket address.
pub fn listen_addr(host: Option<&str>, port: Option<&str>) -> Result<SocketAddr, String> {
    let port = match port {
        None => 3000,
        Some(p) => p
            .trim()
            .parse::<u16>()
            .map_err(|_| format!("PGWS_PORT: {p:?} is not a port number (0 to 65535)"))?,
    };
    let ip = match host {
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some("*" | "*4" | "!4") => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Some("*6" | "!6") => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        Some(h) => resolve_host(h, port)?,
    };
    Ok(SocketAddr::new(ip, port))
}

/// An IP address (IPv6 optionally in brackets) or a host name resolved once, now.
fn resolve_host(host: &str, port: u16) -> Result<IpAddr, String> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse() {
        return Ok(ip);
    }
    (bare, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .map(|a| a.ip())
        .ok_or_else(|| format!("PGWS_HOST: {host:?} is not an address or a known host name"))
}

fn root_dir(path: String) -> Result<PathBuf, String> {
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => Ok(PathBuf::from(path)),
        Ok(_) => Err(format!("PGWS_ROOT_PATH: {path:?} is not a directory")),
        Err(e) => Err(format!("PGWS_ROOT_PATH: cannot read {path:?}: {e}")),
    }
}

/// Without a secret, makes a random one and a sample token signed with it.
fn ensure_secret(builder: ConfigBuilder) -> Result<(ConfigBuilder, Option<String>), String> {
    if builder.has_secret() {
        return Ok((builder, None));
    }
    use rand::{Rng, distr::Alphanumeric};
    let secret: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(48)
        .map(char::from)
        .collect();
    // No `exp`: the token dies with the secret, when the process exits.
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({ "mode": "rw" }),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("PGWS_JWT_SECRET: cannot sign the sample token: {e}"))?;
    // The generated secret is raw text, whatever PGWS_JWT_SECRET_BASE64 says.
    let builder = builder.jwt_secret(secret).jwt_secret_is_base64(false);
    Ok((builder, Some(token)))
}

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

/// The fallback for requests the layer does not take.
struct Routes {
    static_files: Option<ServeDir>,
    upstream: Option<Upstream>,
    client: UpstreamClient,
    /// `X-Forwarded-Proto` for the upstream: `https` under TLS.
    scheme: &'static str,
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
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                Ok(Ok(stream)) => {
                    serve_connection(http, TokioIo::new(stream), svc, peer, watcher).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// One HTTP/1.1 or HTTP/2 connection, upgrades included, watched for shutdown.
/// HTTP/1 and HTTP/2; a client gets `head_timeout` to send its request head (a
/// handshake included), so idle half-opened connections do not pile up.
fn http_builder(head_timeout: Duration) -> auto::Builder<TokioExecutor> {
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(head_timeout);
    http
}

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
// The admin listener (PGWS_ADMIN_ADDR)
// ---------------------------------------------------------------------------

/// The process-wide Prometheus recorder, installed on first use. An error when
/// another `metrics` recorder was installed first.
fn prometheus() -> Result<PrometheusHandle, String> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                .map_err(|e| format!("cannot install the Prometheus recorder: {e}"))
        })
        .clone()
}

struct Admin {
    layer: PgWsLayer,
    metrics: Result<PrometheusHandle, String>,
}

/// Serves the admin routes over HTTP/1.1 until `stop` turns true.
async fn serve_admin(listener: TcpListener, admin: Arc<Admin>, mut stop: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let admin = admin.clone();
                    let svc = hyper::service::service_fn(move |req| {
                        std::future::ready(Ok::<_, Infallible>(admin_route(&admin, &req)))
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc);
                    let watched = graceful.watch(conn);
                    tokio::spawn(async move {
                        let _ = watched.await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = stopped(&mut stop) => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(HTTP_DRAIN_TIMEOUT, graceful.shutdown()).await;
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // A closed sender means the server is gone: stop as well.
    let _ = stop.wait_for(|stop| *stop).await;
}

/// `/health`: the process is up. `/ready`: the listener is connected and listening.
/// `/metrics`: Prometheus text.
fn admin_route<B>(admin: &Admin, req: &Request<B>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return admin_text(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method Not Allowed\n".into(),
        );
    }
    match req.uri().path() {
        "/health" => admin_text(StatusCode::OK, "ok\n".into()),
        "/ready" if admin.layer.is_listening() => admin_text(StatusCode::OK, "ready\n".into()),
        "/ready" => admin_text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the listener is not connected to the database\n".into(),
        ),
        "/metrics" => match &admin.metrics {
            Ok(handle) => {
                handle.run_upkeep();
                let mut res = admin_text(StatusCode::OK, handle.render());
                res.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                res
            }
            Err(e) => admin_text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
        },
        _ => admin_text(StatusCode::NOT_FOUND, "Not Found\n".into()),
    }
}

fn admin_text(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(text)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

fn upstream_client() -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(UPSTREAM_CONNECT_TIMEOUT));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// Static files first, then the upstream; `404` when neither answers.
async fn fallback(
    routes: Arc<Routes>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, Infallible> {
    let req = match serve_static(&routes, req).await {
        Ok(res) => return Ok(res),
        Err(req) => req,
    };
    let Some(upstream) = &routes.upstream else {
        return Ok(plain(StatusCode::NOT_FOUND, "Not Found"));
    };
    Ok(proxy(&routes.client, upstream, req, peer, routes.scheme).await)
}

/// The static file for a GET or HEAD, or the request back when there is none.
async fn serve_static(
    routes: &Routes,
    req: Request<Incoming>,
) -> Result<Response<Body>, Request<Incoming>> {
    let Some(dir) = &routes.static_files else {
        return Err(req);
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(req);
    }
    // ServeDir consumes its request; give it a bodiless copy to keep ours for the proxy.
    let mut probe = Request::new(Empty::<Bytes>::new());
    *probe.method_mut() = req.method().clone();
    *probe.uri_mut() = req.uri().clone();
    *probe.version_mut() = req.version();
    *probe.headers_mut() = req.headers().clone();
    let Ok(res) = dir.clone().oneshot(probe).await;
    if res.status() == StatusCode::NOT_FOUND {
        return Err(req);
    }
    Ok(res.map(|b| b.map_err(BoxError::from).boxed_unsync()))
}

// ---------------------------------------------------------------------------
// The reverse proxy
// ---------------------------------------------------------------------------

/// Hop-by-hop headers (RFC 9110 §7.6.1), besides those named in `Connection`.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

async fn proxy(
    client: &UpstreamClient,
    upstream: &Upstream,
    req: Request<Incoming>,
    peer: SocketAddr,
    scheme: &'static str,
) -> Response<Body> {
    let req = match upstream_request(req, upstream, peer, scheme) {
        Ok(req) => req,
        Err(e) => {
            tracing::warn!(error = %e, "cannot build the upstream request");
            return plain(StatusCode::BAD_GATEWAY, "Bad Gateway");
        }
    };
    match client.request(req).await {
        Ok(res) => downstream_response(res),
        Err(e) => {
            tracing::warn!(error = %e, "upstream unreachable");
            plain(StatusCode::BAD_GATEWAY, "Bad Gateway")
        }
    }
}

/// The request as the upstream should see it; the body is moved, not read.
fn upstream_request(
    mut req: Request<Incoming>,
    upstream: &Upstream,
    peer: SocketAddr,
    scheme: &'static str,
) -> Result<Request<Incoming>, http::Error> {
    // HTTP/2 clients send `:authority` instead of `Host`.
    let original_host = req.headers().get(header::HOST).cloned().or_else(|| {
        let authority = req.uri().authority()?;
        HeaderValue::from_str(authority.as_str()).ok()
    });
    *req.uri_mut() = upstream.uri_for(req.uri())?;
    // The client speaks HTTP/1.1 to the upstream whatever the client spoke to us.
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    remove_hop_by_hop(headers);
    headers.insert(header::HOST, upstream.host.clone());
    match original_host {
        Some(host) => headers.insert(X_FORWARDED_HOST, host),
        None => headers.remove(X_FORWARDED_HOST),
    };
    append_forwarded_for(headers, peer.ip().to_canonical());
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
    Ok(req)
}

fn downstream_response(mut res: Response<Incoming>) -> Response<Body> {
    remove_hop_by_hop(res.headers_mut());
    res.map(|b| b.map_err(BoxError::from).boxed_unsync())
}

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// `X-Forwarded-For: <what came in>, <peer>`.
fn append_forwarded_for(headers: &mut HeaderMap, peer: IpAddr) {
    let mut chain: Vec<String> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect();
    chain.push(peer.to_string());
    if let Ok(value) = HeaderValue::from_str(&chain.join(", ")) {
        headers.insert(X_FORWARDED_FOR, value);
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let body = Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut res = Response::new(body);
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
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
    let listener = match TcpListener::bind(settings.addr).await {
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

/// Whether the listener connected to the database and is listening within `within`.
/// The listener starts connecting when the layer is made and never gives up, so
/// this only decides what the start-up report says.
pub async fn database_reachable(layer: &PgWsLayer, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while !layer.is_listening() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// What the start-up report says of the database check.
fn database_text(reachable: bool) -> String {
    if reachable {
        "reachable (the listener is connected and listening)".into()
    } else {
        format!(
            "NOT reachable within {} s (the log says why; check PGWS_DB_URI). pgws \
             keeps trying; until then handshakes that read get 503 and /ready 503.",
            DATABASE_CHECK_TIMEOUT.as_secs()
        )
    }
}

/// What the server prints at start-up: where it listens, how it maps channels,
/// what else it serves, whether the database answered (`database`, when checked),
/// and in development mode a sample token and URLs.
pub fn startup_report(
    settings: &Settings,
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    database: Option<bool>,
) -> String {
    let (http, ws) = if settings.tls.is_some() {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    let shown = browsable(addr);
    let config = &settings.config;
    let prefix = config.path_prefix();
    let mut out = String::new();
    let mut line = |label: &str, text: &str| {
        let _ = writeln!(out, "  {:<14} {text}", format!("{label}:"));
    };
    let mapping = match config.listen_channel() {
        None => "per channel: a WebSocket channel is the PostgreSQL channel of the \
                 same name (NOTIFY chat, 'hi' reaches /chat)"
            .to_owned(),
        Some(listen) => format!(
            "multiplexed: one LISTEN on {listen:?}; a payload's \"channel\" field \
             picks the WebSocket channel (PGWS_LISTEN_CHANNEL)"
        ),
    };
    let header = format!(
        "pgws {} is listening on {http}://{shown}{}\n",
        env!("CARGO_PKG_VERSION"),
        if addr != shown {
            format!(" (all addresses, {addr})")
        } else {
            String::new()
        }
    );
    line(
        "WebSockets",
        &format!(
            "{ws}://{shown}{prefix}/<channel>/<jwt>, or {prefix}/<channel> with the \
             token in Authorization: Bearer or the pgws.bearer.<jwt> subprotocol"
        ),
    );
    if let Some(reachable) = database {
        line("Database", &database_text(reachable));
    }
    line("Mapping", &mapping);
    line(
        "Meta channel",
        config.meta_channel().unwrap_or("off (PGWS_META_CHANNEL)"),
    );
    let root = settings.root_path.as_ref().map(|p| p.display().to_string());
    line(
        "Static files",
        root.as_deref().unwrap_or("off (PGWS_ROOT_PATH)"),
    );
    let upstream = settings
        .upstream
        .as_ref()
        .map(|u| format!("http://{}{}", u.authority, u.base));
    line(
        "Upstream",
        upstream
            .as_deref()
            .unwrap_or("off (PGWS_UPSTREAM); other requests get 404"),
    );
    let origins = config.allowed_origins().map(|o| {
        format!(
            "{} (PGWS_ALLOWED_ORIGINS; handshakes from other origins get 403)",
            o.join(", ")
        )
    });
    line(
        "Origins",
        origins.as_deref().unwrap_or("any (PGWS_ALLOWED_ORIGINS)"),
    );
    line(
        "TLS",
        if settings.tls.is_some() {
            "on (PGWS_CERTIFICATE_FILE, PGWS_KEY_FILE)"
        } else {
            "off (PGWS_CERTIFICATE_FILE, PGWS_KEY_FILE)"
        },
    );
    let admin = admin_addr.map(|a| {
        let a = browsable(a);
        format!("http://{a}/metrics, http://{a}/health, http://{a}/ready")
    });
    line("Admin", admin.as_deref().unwrap_or("off (PGWS_ADMIN_ADDR)"));
    let mut out = header + &out;
    if let Some(token) = &settings.dev_token {
        let _ = writeln!(
            out,
            "\nWARNING: PGWS_JWT_SECRET is not set; a random secret was generated.\n\
             WARNING: this is for development only. Tokens die with this process.\n\
             Sample token (mode rw, any channel, no exp): {token}\n\
             WebSocket URL: {ws}://{shown}{prefix}/chat/{token}"
        );
        if settings.root_path.is_some() {
            let _ = writeln!(out, "Chat page: {}", chat_url(settings, http, shown, token));
        }
    }
    out
}

/// The chat page's URL with the token in the fragment (never sent to the server).
fn chat_url(settings: &Settings, http: &str, shown: SocketAddr, token: &str) -> String {
    let mut url = format!("{http}://{shown}/#token={token}");
    let prefix = settings.config.path_prefix();
    if !prefix.is_empty() {
        url.push_str("&prefix=");
        url.push_str(
            &percent_encoding::utf8_percent_encode(prefix, percent_encoding::NON_ALPHANUMERIC)
                .to_string(),
        );
    }
    if let Some(meta) = settings.config.meta_channel() {
        url.push_str("&meta=");
        url.push_str(
            &percent_encoding::utf8_percent_encode(meta, percent_encoding::NON_ALPHANUMERIC)
                .to_string(),
        );
    }
    url
}

/// A wildcard address is not something to type into a browser: its loopback twin.
fn browsable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
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
