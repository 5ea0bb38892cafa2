//! The standalone pgws server (wire contract §8), configured by `PGWS_*` variables.
//!
//! ```text
//! PGWS_JWT_SECRET=reallyreallyreallyreallyverysafe cargo run --example server
//! ```
//!
//! WebSocket handshakes with a token in the path go to [`PgWsLayer`]; every other
//! request goes to static files (`PGWS_ROOT_PATH`), then to a reverse proxy
//! (`PGWS_UPSTREAM`, typically PostgREST).
//!
//! Tests include this file as a module (`#[path = "../examples/server.rs"]`) and
//! call [`run`] directly, so not every item is used by every includer.
#![allow(dead_code)]

use std::{
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs},
    path::PathBuf,
    process::ExitCode,
    str::FromStr,
    sync::Arc,
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
use pgws::{Config, ConfigBuilder, ConfigError, PgWsLayer};
use tokio::net::{TcpListener, TcpStream};
use tower::{Layer, ServiceExt, service_fn};
use tower_http::services::ServeDir;

/// How long in-flight HTTP requests may take to finish once shutdown starts.
const HTTP_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the proxy waits for a TCP connection to the upstream.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every answer that is not the layer's own.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;
type UpstreamClient = Client<HttpConnector, Incoming>;

/// Everything [`run`] needs, read from the environment by [`settings_from_env`] or
/// built by hand with [`Settings::new`].
#[derive(Debug)]
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
    let builder = ConfigBuilder::from_env().map_err(env_error)?;
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
    for name in ["PGWS_CERTIFICATE_FILE", "PGWS_KEY_FILE"] {
        if var(name).is_some() {
            return Err(format!(
                "{name}: TLS is not supported yet; unset PGWS_CERTIFICATE_FILE and \
                 PGWS_KEY_FILE and terminate TLS in front of pgws"
            ));
        }
    }
    // PGWS_RETRIES is accepted and ignored: the layer retries forever.
    let addr = listen_addr(var("PGWS_HOST").as_deref(), var("PGWS_PORT").as_deref())?;
    let root_path = var("PGWS_ROOT_PATH").map(root_dir).transpose()?;
    let upstream = var("PGWS_UPSTREAM")
        .map(|v| v.parse().map_err(|e| format!("PGWS_UPSTREAM: {e}")))
        .transpose()?;
    let (builder, dev_token) = ensure_secret(builder)?;
    let config = builder.build().map_err(env_error)?;
    Ok(Settings {
        config,
        addr,
        root_path,
        upstream,
        dev_token,
    })
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

/// A layer configuration error, prefixed with the variable it comes from.
fn env_error(e: ConfigError) -> String {
    match &e {
        ConfigError::MissingSecret | ConfigError::InvalidSecret(_) => {
            format!("PGWS_JWT_SECRET: {e}")
        }
        ConfigError::InvalidDatabaseUrl(_) => format!("PGWS_DB_URI: {e}"),
        // Builder settings are named like their variables: `pool_size` → PGWS_POOL_SIZE.
        ConfigError::InvalidChannel { setting, .. } | ConfigError::InvalidValue { setting, .. } => {
            format!("PGWS_{}: {e}", setting.to_ascii_uppercase())
        }
        // `ConfigError::Env` already names its variable.
        _ => e.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Serving
// ---------------------------------------------------------------------------

/// What every connection shares.
struct App {
    layer: PgWsLayer,
    routes: Arc<Routes>,
    http: auto::Builder<TokioExecutor>,
}

/// The fallback for requests the layer does not take.
struct Routes {
    static_files: Option<ServeDir>,
    upstream: Option<Upstream>,
    client: UpstreamClient,
}

/// Serves `listener` until `shutdown` resolves, then closes the sockets (1001) and
/// lets in-flight HTTP requests finish, for a bounded time.
pub async fn run(listener: TcpListener, settings: Settings, shutdown: impl Future<Output = ()>) {
    let app = App {
        layer: PgWsLayer::new(settings.config),
        routes: Arc::new(Routes {
            static_files: settings.root_path.map(ServeDir::new),
            upstream: settings.upstream,
            client: upstream_client(),
        }),
        http: auto::Builder::new(TokioExecutor::new()),
    };
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
    let drain_http = async {
        if tokio::time::timeout(HTTP_DRAIN_TIMEOUT, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("some HTTP connections did not finish in time");
        }
    };
    tokio::join!(app.layer.shutdown(), drain_http);
    tracing::info!("stopped");
}

impl App {
    fn spawn_connection(&self, stream: TcpStream, peer: SocketAddr, watcher: Watcher) {
        // Small WebSocket frames should leave at once.
        let _ = stream.set_nodelay(true);
        let routes = self.routes.clone();
        let fallback = service_fn(move |req| fallback(routes.clone(), req, peer));
        let svc = TowerToHyperService::new(self.layer.layer(fallback));
        let conn = self
            .http
            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
            .into_owned();
        tokio::spawn(async move {
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
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
    Ok(proxy(&routes.client, upstream, req, peer).await)
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
) -> Response<Body> {
    let req = match upstream_request(req, upstream, peer) {
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
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
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
    init_tracing();
    let settings = match settings_from_env() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("pgws: {e}");
            return ExitCode::FAILURE;
        }
    };
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
    let addr = listener.local_addr().unwrap_or(settings.addr);
    tracing::info!(%addr, "listening");
    if let Some(token) = &settings.dev_token {
        print_dev_banner(addr, token, settings.root_path.is_some());
    }
    run(listener, settings, shutdown_signal()).await;
    ExitCode::SUCCESS
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs on stderr, so stdout holds only the development banner.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Printed, not logged, so it shows whatever the log level.
fn print_dev_banner(addr: SocketAddr, token: &str, has_root: bool) {
    // A wildcard address is not something to type into a browser.
    let shown = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    };
    println!("WARNING: PGWS_JWT_SECRET is not set; a random secret was generated.");
    println!("WARNING: this is for development only. Tokens die with this process.");
    println!("Sample token (mode rw, no channel claim, no exp): {token}");
    println!("WebSocket URL: ws://{shown}/chat/{token}");
    if has_root {
        println!("Chat page: http://{shown}/#token={token}");
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
