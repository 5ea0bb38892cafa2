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

/// How long a client has to send a request head, the WebSocket handshake included.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// TLS on the public port (`PGWS_CERTIFICATE_FILE`, `PGWS_KEY_FILE`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Where [`launch`](super::launch) serves `/metrics`, `/health` and `/ready`
    /// (`PGWS_ADMIN_ADDR`); [`serve`](super::serve) takes a bound listener.
    pub admin_addr: Option<SocketAddr>,
    /// `PGWS_LOG_FORMAT`.
    pub log_format: LogFormat,
    /// How long a client has to send its request head (`PGWS_HANDSHAKE_TIMEOUT`, s).
    pub handshake_timeout: Duration,
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
/// database. It never does when `PGWS_DB_URI` is set, nor with `PGWS_DEV_DB=off`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DevDbMode {
    /// `auto` (the default): only when the default database
    /// ([`DevDbSettings::default_addr`]) plainly cannot work: nothing answers there
    /// (the connection is refused), or the PostgreSQL there asks user `postgres`
    /// for a password or turns it away, as a fresh Debian or Ubuntu install does.
    #[default]
    Auto,
    /// `on`: even when something answers there, for instance a system PostgreSQL
    /// that asks for a password.
    On,
}

/// The private development database: a PostgreSQL cluster of pgws's own, made
/// with the server programs found on this machine (`initdb`, `pg_ctl`), kept in
/// [`dir`](Self::dir) across restarts, listening on 127.0.0.1 only with `trust`
/// for user `postgres`, started by [`launch`](super::launch) and stopped with it.
///
/// For development only: any user of this machine may connect to it. The start-up
/// report and a WARN log line say when it runs, with the `psql` command that
/// reaches it.
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
}

impl DevDbSettings {
    /// `PGWS_DEV_DB` and `PGWS_DEV_DB_DIR` as looked up with `var`; `None` when
    /// `PGWS_DB_URI` is set or `PGWS_DEV_DB` is `off`.
    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, String> {
        if var("PGWS_DB_URI").is_some() {
            return Ok(None);
        }
        let mode = match var("PGWS_DEV_DB").map(|v| v.trim().to_ascii_lowercase()) {
            None => DevDbMode::Auto,
            Some(v) if v == "auto" => DevDbMode::Auto,
            Some(v) if v == "on" => DevDbMode::On,
            Some(v) if v == "off" => return Ok(None),
            Some(v) => return Err(format!("PGWS_DEV_DB: {v:?} is not auto, on or off")),
        };
        let dir = match var("PGWS_DEV_DB_DIR") {
            Some(dir) => Some(PathBuf::from(dir)),
            None => default_dev_db_dir(&var),
        };
        Ok(Some(DevDbSettings {
            mode,
            dir,
            default_addr: default_db_addr(),
        }))
    }
}

/// Where the development database lives unless `PGWS_DEV_DB_DIR` says otherwise.
fn default_dev_db_dir(var: &impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
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

fn settings_from(
    builder: ConfigBuilder,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Settings, String> {
    // An empty value counts as unset (PROTOCOL.md §13).
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
    let dev_db = DevDbSettings::from_vars(var)?;
    let (builder, dev_token) = ensure_secret(builder)?;
    let config = builder
        .clone()
        .build_from_env()
        .map_err(|e| e.to_string())?;
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
        builder: dev_db.is_some().then_some(LayerBuilder(builder)),
        dev_db,
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

/// `PGWS_HOST` and `PGWS_PORT` as a socket address.
fn listen_addr(host: Option<&str>, port: Option<&str>) -> Result<SocketAddr, String> {
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
