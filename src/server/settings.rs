//! [`Settings`]: what the server is told by its `PGWS_*` variables.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs},
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use http::{HeaderValue, Uri};

use crate::{Config, ConfigBuilder, ConfigError};

use super::tls::tls_config;

/// The layer's database variable, which decides whether a development database
/// may start.
const DB_URI: &str = "PGWS_DB_URI";
/// How long a client has from connecting to its first request head.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an HTTP/1.1 connection waits for its next request head.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a write to a client may stay blocked.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an HTTP/2 connection is kept with no request in flight.
const HTTP2_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Streams one HTTP/2 connection may have open at once.
const HTTP2_MAX_STREAMS: u32 = 256;
/// How long a stopping instance keeps serving with `/ready` at 503: long enough
/// for a load balancer checking every second to take it out (HAProxy with
/// `inter 1s fall 2`), short enough that, with the 5 s the sockets then have to
/// flush their queues, it stays within the 10 s a container runtime waits
/// before SIGKILL.
const DRAIN_PERIOD: Duration = Duration::from_secs(5);

/// Everything [`run`](super::run) needs, read from the environment by
/// [`Settings::from_env`] or built by hand with [`Settings::new`]. Its `Debug`
/// output shows no secret, password or token.
#[derive(Clone)]
pub struct Settings {
    /// The layer's configuration.
    pub config: Config,
    /// Where [`launch`](super::launch) listens (`PGWS_HOST`, `PGWS_PORT`);
    /// [`run`](super::run) takes a bound listener.
    pub addr: SocketAddr,
    /// Static files (`PGWS_ROOT_PATH`).
    pub root_path: Option<PathBuf>,
    /// Reverse proxy target (`PGWS_UPSTREAM`).
    pub upstream: Option<Upstream>,
    /// The sample token signed with a generated secret, when `PGWS_JWT_SECRET` is unset.
    pub dev_token: Option<String>,
    /// TLS on the public port (`PGWS_CERTIFICATE_FILE`, `PGWS_KEY_FILE`). The
    /// server sets its ALPN protocols: `h2` and `http/1.1`, or `http/1.1` alone
    /// with HTTP/2 off.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Where [`launch`](super::launch) serves `/metrics`, `/health` and `/ready`
    /// (`PGWS_ADMIN_ADDR`); [`serve`](super::serve) takes a bound listener.
    pub admin_addr: Option<SocketAddr>,
    /// `PGWS_LOG_FORMAT`.
    pub log_format: LogFormat,
    /// How long a client has from connecting to its first request head, TLS
    /// handshake and HTTP/2 preface included (`PGWS_HANDSHAKE_TIMEOUT`, s).
    pub handshake_timeout: Duration,
    /// How long an HTTP/1.1 connection waits for its next request head, from the
    /// end of an answer (`PGWS_KEEPALIVE_TIMEOUT`, s).
    pub keepalive_timeout: Duration,
    /// How long a write to a client may stay blocked (it stopped reading) before
    /// the connection is dropped (`PGWS_WRITE_TIMEOUT`, s).
    pub write_timeout: Duration,
    /// How long an HTTP/2 connection with no request in flight is kept before it
    /// gets GOAWAY; WebSockets open on it go on (`PGWS_HTTP2_IDLE_TIMEOUT`, s).
    pub http2_idle_timeout: Duration,
    /// How many streams (requests and WebSockets) one HTTP/2 connection may have
    /// open at once (`PGWS_HTTP2_MAX_STREAMS`); `0` turns HTTP/2 off.
    pub http2_max_streams: u32,
    /// How long the server keeps serving once shutdown starts, `/ready` answering
    /// `503` so that load balancers stop sending clients, before it closes its
    /// sockets with `1001` (`PGWS_DRAIN_PERIOD`, s; `0`: no drain). Handshakes
    /// are still accepted meanwhile.
    pub drain_period: Duration,
    /// The private development database that [`launch`](super::launch) may start:
    /// `None` when `PGWS_DB_URI` is set or `PGWS_DEV_DB` is `off`. Only settings
    /// read by [`from_env`](Self::from_env) or [`from_vars`](Self::from_vars) can
    /// start one (they keep what it takes to point the layer at it).
    pub dev_db: Option<DevDbSettings>,
    /// The layer's builder, to point it at the development database once started.
    pub(crate) builder: Option<LayerBuilder>,
}

/// A [`ConfigBuilder`] kept for later; its `Debug` shows no secret.
#[derive(Clone)]
pub(crate) struct LayerBuilder(pub(crate) ConfigBuilder);

impl fmt::Debug for LayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConfigBuilder { .. }")
    }
}

impl LayerBuilder {
    /// The layer's configuration with another database.
    pub(crate) fn with_database(&self, url: String) -> Result<Config, ConfigError> {
        self.0.clone().database_url(url).build_from_env()
    }
}

/// `PGWS_DEV_DB`: when [`launch`](super::launch) starts a private development
/// database. It never does when `PGWS_DB_URI` is set, nor with `PGWS_DEV_DB=off`;
/// a deployment (a service, a container, CI: no terminal) gets one only when it
/// asks for it with `on`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DevDbMode {
    /// `auto` (the default): only on an interactive start
    /// ([`DevDbSettings::interactive`]), and only when the default database
    /// ([`DevDbSettings::default_addr`]) plainly cannot work: nothing answers there
    /// (the connection is refused), or the PostgreSQL there asks user `postgres`
    /// for a password or turns it away, as a fresh Debian or Ubuntu install does.
    /// Otherwise pgws uses the default database and keeps trying it.
    #[default]
    Auto,
    /// `on`: whatever answers at the default address and whether or not there is a
    /// terminal.
    On,
}

/// The private development database: a PostgreSQL cluster of pgws's own, made
/// with the server programs found on this machine (`initdb`, `pg_ctl`), kept in
/// [`dir`](Self::dir) across restarts, started by [`launch`](super::launch) and
/// stopped with it.
///
/// It takes connections on a Unix socket only (no TCP), in a folder that only the
/// OS user running the cluster may enter (mode 0700): the user who started pgws,
/// or user `postgres` when that is root. No other user of the machine can reach
/// it. The start-up report and a WARN log line say when it runs, with the `psql`
/// command that reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevDbSettings {
    /// `PGWS_DEV_DB`.
    pub mode: DevDbMode,
    /// Where the cluster lives (`PGWS_DEV_DB_DIR`). By default
    /// `$XDG_DATA_HOME/pgws/devdb` or `~/.local/share/pgws/devdb`, and
    /// `/var/lib/pgws/devdb` for root; `None` when there is no home folder to put
    /// it in.
    pub dir: Option<PathBuf>,
    /// The address of the default database (`127.0.0.1:5432`), which `auto` tries
    /// first.
    pub default_addr: SocketAddr,
    /// Whether pgws was started by a person at a terminal (stdin and stderr are
    /// both terminals), which `auto` requires: a service, a container without a
    /// TTY or CI never gets a development database by accident.
    pub interactive: bool,
}

impl DevDbSettings {
    /// `PGWS_DEV_DB` (`mode`) with the default folder; `None` when `PGWS_DB_URI`
    /// is set or `PGWS_DEV_DB` is `off`.
    fn from_vars(
        mode: Option<&str>,
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, String> {
        if var(DB_URI).is_some() {
            return Ok(None);
        }
        let mode = match mode.map(|v| v.trim().to_ascii_lowercase()) {
            None => DevDbMode::Auto,
            Some(v) if v == "auto" => DevDbMode::Auto,
            Some(v) if v == "on" => DevDbMode::On,
            Some(v) if v == "off" => return Ok(None),
            Some(v) => return Err(format!("{}: {v:?} is not auto, on or off", var::DEV_DB)),
        };
        Ok(Some(DevDbSettings {
            mode,
            dir: default_dev_db_dir(var),
            default_addr: default_db_addr(),
            interactive: interactive(),
        }))
    }
}

/// Whether a person started this process: stdin and stderr are terminals.
fn interactive() -> bool {
    use std::io::IsTerminal;
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Where the development database lives unless `PGWS_DEV_DB_DIR` says otherwise.
fn default_dev_db_dir(var: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    // Root's home is closed to user `postgres`, who runs the cluster for root.
    if super::devdb::is_root() {
        return Some(PathBuf::from("/var/lib/pgws/devdb"));
    }
    let data_home = var("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| var("HOME").map(|home| Path::new(&home).join(".local/share")))?;
    Some(data_home.join("pgws/devdb"))
}

/// The host and port of [`crate::DEFAULT_DATABASE_URL`].
fn default_db_addr() -> SocketAddr {
    let fallback = SocketAddr::from((Ipv4Addr::LOCALHOST, 5432));
    let Ok(config) = crate::DEFAULT_DATABASE_URL.parse::<tokio_postgres::Config>() else {
        return fallback;
    };
    let ip = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.parse().ok(),
        _ => None,
    };
    let port = config.get_ports().first().copied();
    match (ip, port) {
        (Some(ip), Some(port)) => SocketAddr::new(ip, port),
        _ => fallback,
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("config", &self.config)
            .field("addr", &self.addr)
            .field("root_path", &self.root_path)
            .field("upstream", &self.upstream)
            // The sample token opens any channel: a credential.
            .field("dev_token", &self.dev_token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls.is_some())
            .field("admin_addr", &self.admin_addr)
            .field("log_format", &self.log_format)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("keepalive_timeout", &self.keepalive_timeout)
            .field("http2_idle_timeout", &self.http2_idle_timeout)
            .field("http2_max_streams", &self.http2_max_streams)
            .field("drain_period", &self.drain_period)
            .field("dev_db", &self.dev_db)
            .field("builder", &self.builder)
            .finish()
    }
}

/// How [`launch`](super::launch) writes logs (`PGWS_LOG_FORMAT`).
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
            _ => Err(format!(
                "{}: {s:?} is neither text nor json",
                var::LOG_FORMAT
            )),
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
            handshake_timeout: HANDSHAKE_TIMEOUT,
            keepalive_timeout: KEEPALIVE_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
            http2_idle_timeout: HTTP2_IDLE_TIMEOUT,
            http2_max_streams: HTTP2_MAX_STREAMS,
            drain_period: DRAIN_PERIOD,
            dev_db: None,
            builder: None,
        }
    }

    /// Reads every `PGWS_*` variable; the error names the offending variable.
    pub fn from_env() -> Result<Settings, String> {
        let builder = ConfigBuilder::from_env().map_err(|e| e.to_string())?;
        Settings::from_vars(builder, |name| std::env::var(name).ok())
    }

    /// The server's own variables, looked up with `var`, over a layer `builder`
    /// (`PGWS_DB_URI` is looked up too, to know whether one was given). Split from
    /// [`from_env`](Self::from_env) so tests need not touch the process environment.
    pub fn from_vars(
        builder: ConfigBuilder,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, String> {
        settings_from(builder, var)
    }
}

/// A `PGWS_UPSTREAM` URL: `http://host[:port][/base]`.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub(crate) authority: http::uri::Authority,
    /// The base path without a trailing slash (`""` for none).
    pub(crate) base: String,
    pub(crate) host: HeaderValue,
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
    pub(crate) fn uri_for(&self, original: &Uri) -> Result<Uri, http::Error> {
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

/// How an entry of [`SETTINGS`] reads its variable into [`Settings`]: the value
/// (`None` when unset or empty) and the lookup, for settings read together.
type Read = fn(&mut Settings, Option<&str>, &dyn Fn(&str) -> Option<String>) -> Result<(), String>;

/// One variable of the standalone server, as [`SETTINGS`] lists it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ServerSetting {
    /// The `PGWS_*` environment variable.
    pub variable: &'static str,
    /// The default as PROTOCOL.md's table shows it, or `unset` or `ignored`.
    pub default: &'static str,
    /// What it does.
    pub doc: &'static str,
    /// Reads and checks the value; errors name the variable.
    pub(crate) read: Read,
}

/// Declares the server's settings: a constant per variable name, and [`SETTINGS`].
macro_rules! server_settings {
    ($($name:ident = $var:literal, $default:literal, $doc:literal, $read:expr;)*) => {
        /// The server's variable names, for the code and the start-up report.
        #[allow(dead_code, reason = "a name for every setting, read by name or not")]
        pub(crate) mod var {
            $(pub(crate) const $name: &str = $var;)*
        }

        /// Every variable of the standalone server besides the layer's
        /// ([`Config::SETTINGS`]), in the order [`Settings::from_vars`] reads them.
        /// PROTOCOL.md's table is checked against it.
        pub const SETTINGS: &[ServerSetting] = &[
            $(ServerSetting { variable: $var, default: $default, doc: $doc, read: $read },)*
        ];
    };
}

server_settings! {
    CERTIFICATE_FILE = "PGWS_CERTIFICATE_FILE", "unset",
        "a PEM certificate chain for TLS on the public port, with PGWS_KEY_FILE",
        |s, cert, var| {
            s.tls = match (cert, var(var::KEY_FILE)) {
                (None, None) => None,
                (Some(_), None) => return Err(format!(
                    "{} is set but {} is not: set both for TLS, or neither",
                    var::CERTIFICATE_FILE, var::KEY_FILE
                )),
                (None, Some(_)) => return Err(format!(
                    "{} is set but {} is not: set both for TLS, or neither",
                    var::KEY_FILE, var::CERTIFICATE_FILE
                )),
                (Some(cert), Some(key)) => Some(tls_config(Path::new(cert), Path::new(&key))?),
            };
            Ok(())
        };
    KEY_FILE = "PGWS_KEY_FILE", "unset",
        "the PEM private key for PGWS_CERTIFICATE_FILE (read with it)",
        |_, _, _| Ok(());
    PORT = "PGWS_PORT", "3000", "the public port",
        |s, port, _| {
            if let Some(p) = port {
                let port = p.trim().parse::<u16>().map_err(|_| {
                    format!("{}: {p:?} is not a port number (0 to 65535)", var::PORT)
                })?;
                s.addr.set_port(port);
            }
            Ok(())
        };
    HOST = "PGWS_HOST", "127.0.0.1",
        "an address or a host name; *, *4, !4 all IPv4 addresses, *6, !6 all IPv6 ones",
        |s, host, _| {
            if let Some(host) = host {
                s.addr.set_ip(listen_ip(host, s.addr.port())?);
            }
            Ok(())
        };
    ADMIN_ADDR = "PGWS_ADMIN_ADDR", "unset",
        "host:port of the admin listener (/metrics, /health, /ready)",
        |s, v, _| {
            s.admin_addr = v.map(admin_addr).transpose()?;
            Ok(())
        };
    LOG_FORMAT = "PGWS_LOG_FORMAT", "text", "text or json",
        |s, v, _| {
            s.log_format = v.map(str::parse).transpose()?.unwrap_or_default();
            Ok(())
        };
    HANDSHAKE_TIMEOUT = "PGWS_HANDSHAKE_TIMEOUT", "10",
        "seconds a client has from connecting to its first request head (TLS handshake and HTTP/2 preface included), 1 to 31536000",
        |s, v, _| seconds(var::HANDSHAKE_TIMEOUT, v, &mut s.handshake_timeout);
    KEEPALIVE_TIMEOUT = "PGWS_KEEPALIVE_TIMEOUT", "10",
        "seconds an HTTP/1.1 connection waits for its next request head, 1 to 31536000",
        |s, v, _| seconds(var::KEEPALIVE_TIMEOUT, v, &mut s.keepalive_timeout);
    WRITE_TIMEOUT = "PGWS_WRITE_TIMEOUT", "30",
        "seconds a write to a client may stay blocked (it stopped reading) before the connection is dropped, 1 to 31536000",
        |s, v, _| seconds(var::WRITE_TIMEOUT, v, &mut s.write_timeout);
    HTTP2_IDLE_TIMEOUT = "PGWS_HTTP2_IDLE_TIMEOUT", "60",
        "seconds an HTTP/2 connection with no request in flight is kept, 1 to 31536000",
        |s, v, _| seconds(var::HTTP2_IDLE_TIMEOUT, v, &mut s.http2_idle_timeout);
    HTTP2_MAX_STREAMS = "PGWS_HTTP2_MAX_STREAMS", "256",
        "streams (requests and WebSockets) one HTTP/2 connection may have open at once; 0 turns HTTP/2 off",
        |s, v, _| {
            if let Some(v) = v {
                s.http2_max_streams = v.trim().parse::<u32>().map_err(|_| format!(
                    "{}: {v:?} is not a whole number (0 turns HTTP/2 off)",
                    var::HTTP2_MAX_STREAMS
                ))?;
            }
            Ok(())
        };
    DRAIN_PERIOD = "PGWS_DRAIN_PERIOD", "5",
        "seconds a stopping instance keeps serving with /ready at 503 before it closes its sockets (1001), 0 to 31536000",
        |s, v, _| {
            if let Some(v) = v {
                s.drain_period = match v.trim().parse::<u64>() {
                    Ok(secs) if secs <= MAX_SECONDS => Duration::from_secs(secs),
                    _ => return Err(format!(
                        "{}: {v:?} is not a whole number of seconds from 0 to {MAX_SECONDS} (365 days)",
                        var::DRAIN_PERIOD
                    )),
                };
            }
            Ok(())
        };
    ROOT_PATH = "PGWS_ROOT_PATH", "unset", "a directory of static files",
        |s, v, _| {
            s.root_path = v.map(root_dir).transpose()?;
            Ok(())
        };
    UPSTREAM = "PGWS_UPSTREAM", "unset", "http://host[:port][/base], the reverse proxy",
        |s, v, _| {
            s.upstream = v
                .map(|v| v.parse().map_err(|e| format!("{}: {e}", var::UPSTREAM)))
                .transpose()?;
            Ok(())
        };
    // Accepted and ignored: the layer retries forever.
    RETRIES = "PGWS_RETRIES", "ignored", "accepted for compatibility", |_, _, _| Ok(());
    DEV_DB = "PGWS_DEV_DB", "auto",
        "auto (on an interactive start only), on or off: the development database",
        |s, v, var| {
            s.dev_db = DevDbSettings::from_vars(v, var)?;
            Ok(())
        };
    DEV_DB_DIR = "PGWS_DEV_DB_DIR",
        "$XDG_DATA_HOME/pgws/devdb, else ~/.local/share/pgws/devdb; /var/lib/pgws/devdb for root",
        "where the development database keeps its data",
        |s, v, _| {
            if let (Some(dev_db), Some(dir)) = (&mut s.dev_db, v) {
                dev_db.dir = Some(PathBuf::from(dir));
            }
            Ok(())
        };
}

fn settings_from(
    builder: ConfigBuilder,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Settings, String> {
    refuse_empty_db_uri(&var)?;
    // An empty value counts as unset (PROTOCOL.md §13).
    let var = |name: &str| var(name).filter(|v| !v.is_empty());
    let (builder, dev_token) = ensure_secret(builder)?;
    let config = builder
        .clone()
        .build_from_env()
        .map_err(|e| e.to_string())?;
    let mut settings = Settings::new(config);
    for setting in SETTINGS {
        (setting.read)(&mut settings, var(setting.variable).as_deref(), &var)?;
    }
    settings.dev_token = dev_token;
    if settings.dev_db.is_some() {
        settings.builder = Some(LayerBuilder(builder));
    }
    Ok(settings)
}

/// `PGWS_DB_URI=` (set, but empty) is a mistake, such as an unset variable in a
/// compose file, not a request for the default database or a development one.
fn refuse_empty_db_uri(var: &impl Fn(&str) -> Option<String>) -> Result<(), String> {
    match var(DB_URI) {
        Some(v) if v.trim().is_empty() => Err(format!(
            "{DB_URI} is set but empty: set it to your database's URI, or unset it \
             (PGWS_DEV_DB=on starts a private development database)"
        )),
        _ => Ok(()),
    }
}

/// The longest deadline: 365 days, far from overflowing a clock.
const MAX_SECONDS: u64 = 365 * 24 * 60 * 60;

/// A whole number of seconds, 1 to [`MAX_SECONDS`], into `to` when `value` is set.
fn seconds(variable: &str, value: Option<&str>, to: &mut Duration) -> Result<(), String> {
    if let Some(v) = value {
        *to = match v.trim().parse::<u64>() {
            Ok(secs) if (1..=MAX_SECONDS).contains(&secs) => Duration::from_secs(secs),
            _ => {
                return Err(format!(
                    "{variable}: {v:?} is not a whole number of seconds above 0 \
                     and at most {MAX_SECONDS} (365 days)"
                ));
            }
        };
    }
    Ok(())
}

/// `PGWS_ADMIN_ADDR`: `host:port`, an IPv6 address in brackets.
fn admin_addr(value: &str) -> Result<SocketAddr, String> {
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
                "{}: {value:?} is not an address with a port (like 127.0.0.1:9090)",
                var::ADMIN_ADDR
            )
        })
}

/// `PGWS_HOST` as an address (`port` only helps resolve a host name).
fn listen_ip(host: &str, port: u16) -> Result<IpAddr, String> {
    Ok(match host {
        "*" | "*4" | "!4" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        "*6" | "!6" => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        h => resolve_host(h, port)?,
    })
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
        .ok_or_else(|| {
            format!(
                "{}: {host:?} is not an address or a known host name",
                var::HOST
            )
        })
}

fn root_dir(path: &str) -> Result<PathBuf, String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(PathBuf::from(path)),
        Ok(_) => Err(format!("{}: {path:?} is not a directory", var::ROOT_PATH)),
        Err(e) => Err(format!("{}: cannot read {path:?}: {e}", var::ROOT_PATH)),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// PROTOCOL.md's "Settings of the standalone server" table: (variables, default).
    fn protocol_rows() -> Vec<(String, String)> {
        let doc = include_str!("../../PROTOCOL.md");
        let start = doc
            .find("### Settings of the standalone server")
            .expect("no server settings in PROTOCOL.md");
        let section = &doc[start..];
        let end = section[4..].find("\n#").map_or(section.len(), |i| i + 4);
        section[..end]
            .lines()
            .filter(|l| l.starts_with("| `PGWS_"))
            .map(|row| {
                let cells: Vec<&str> = row.split('|').map(str::trim).collect();
                (cells[1].to_owned(), cells[2].replace('`', ""))
            })
            .collect()
    }

    #[test]
    fn every_server_setting_is_in_the_protocol_with_its_default() {
        let rows = protocol_rows();
        for s in SETTINGS {
            let name = format!("`{}`", s.variable);
            let (_, shown) = rows
                .iter()
                .find(|(vars, _)| vars.split(", ").any(|v| v == name))
                .unwrap_or_else(|| panic!("{} is not in PROTOCOL.md's table", s.variable));
            assert_eq!(shown, s.default, "PROTOCOL.md: {}", s.variable);
        }
    }

    #[test]
    fn every_server_variable_in_the_protocol_is_in_the_table() {
        for (vars, _) in protocol_rows() {
            for v in vars.split(", ") {
                let v = v.split('`').nth(1).unwrap_or_default();
                let known = SETTINGS.iter().any(|s| s.variable == v)
                    || Config::SETTINGS.iter().any(|s| s.variable == v);
                assert!(known, "PROTOCOL.md names {v}, which SETTINGS lacks");
            }
        }
    }

    #[test]
    fn variables_are_unique_and_documented() {
        for (i, s) in SETTINGS.iter().enumerate() {
            assert!(s.variable.starts_with("PGWS_"), "{s:?}");
            assert!(!s.doc.is_empty(), "{s:?}");
            assert!(SETTINGS[..i].iter().all(|o| o.variable != s.variable));
            assert!(Config::SETTINGS.iter().all(|o| o.variable != s.variable));
        }
    }

    #[test]
    fn a_set_but_empty_database_uri_is_refused_with_its_name() {
        for empty in ["", " "] {
            let builder = Config::builder().jwt_secret("reallyreallyreallyreallyverysafe");
            let err =
                Settings::from_vars(builder, |name| (name == DB_URI).then(|| empty.to_owned()))
                    .unwrap_err();
            assert!(err.starts_with("PGWS_DB_URI is set but empty"), "{err}");
        }
    }

    #[test]
    fn the_defaults_shown_are_the_defaults_read() {
        let builder = || {
            Config::builder()
                .database_url("postgres://postgres@127.0.0.1:5432/postgres")
                .jwt_secret("reallyreallyreallyreallyverysafe")
        };
        let unset = Settings::from_vars(builder(), |_| None).unwrap();
        let shown = |s: &Settings| format!("{s:?}");
        let mut checked = 0;
        // Defaults that are values, not descriptions: read back as the variable.
        for s in SETTINGS
            .iter()
            .filter(|s| !matches!(s.default, "unset" | "ignored") && !s.default.starts_with('$'))
        {
            let set = Settings::from_vars(builder(), |name| {
                (name == s.variable).then(|| s.default.to_owned())
            })
            .unwrap_or_else(|e| panic!("{}={}: {e}", s.variable, s.default));
            assert_eq!(shown(&set), shown(&unset), "{}", s.variable);
            checked += 1;
        }
        assert!(checked >= 5, "only {checked} defaults checked");
    }
}
