//! [`Config`], its builder and [`Config::from_env`].

use std::{sync::Arc, time::Duration};

use crate::{
    auth::{Keys, check_channel_name},
    database::{Database, DatabaseTls},
    error::ConfigError,
};

/// Everything [`PgWsLayer`](crate::PgWsLayer) needs to know, built with [`Config::builder`]
/// or read from the environment with [`Config::from_env`].
///
/// | setting | default | environment | on overflow |
/// |---|---|---|---|
/// | [`queue_length`](ConfigBuilder::queue_length) | 1024 notifications per socket | `PGWS_QUEUE_LENGTH` | `1008 Slow consumer` |
/// | [`max_message_bytes`](ConfigBuilder::max_message_bytes) | 65536 | `PGWS_MAX_MESSAGE_BYTES` | `1009` |
/// | [`max_channels`](ConfigBuilder::max_channels) | 100 per socket | `PGWS_MAX_CHANNELS` | `403 Too many channels` |
/// | [`max_sockets`](ConfigBuilder::max_sockets) | 100,000 | `PGWS_MAX_SOCKETS` | `503 Too many connections` |
/// | [`subscribe_timeout`](ConfigBuilder::subscribe_timeout) | 5 s | `PGWS_SUBSCRIBE_TIMEOUT` (ms) | `503 Database unavailable` |
/// | [`ping_interval`](ConfigBuilder::ping_interval) | 30 s | `PGWS_PING_INTERVAL` (s) | `1011 Ping timeout` |
/// | [`pool_size`](ConfigBuilder::pool_size) | 10 connections | `PGWS_POOL_SIZE` | writes wait up to 5 s, then `1013` |
/// | [`check_listener_interval`](ConfigBuilder::check_listener_interval) | 10 s | `PGWS_CHECK_LISTENER_INTERVAL` (ms) | `1012` to readers |
///
/// A NOTIFY payload must stay under 8000 bytes (PostgreSQL's limit): a bigger one
/// closes the socket with `1009 Message too big`.
///
/// [`build`](ConfigBuilder::build) refuses a setting that makes no sense, naming it:
/// a count of zero, a subscribe timeout of zero, or a duration over 365 days.
///
/// ```
/// use std::time::Duration;
///
/// let config = pgws::Config::builder()
///     .database_url("postgres://postgres@127.0.0.1:5432/postgres")
///     .jwt_secret("reallyreallyreallyreallyverysafe")
///     .meta_channel("server-info")
///     .ping_interval(Duration::from_secs(30))
///     .build()?;
/// # Ok::<(), pgws::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct Config {
    pub(crate) db: Database,
    pub(crate) keys: Arc<Keys>,
    pub(crate) listen_channel: Option<String>,
    pub(crate) meta_channel: Option<String>,
    pub(crate) path_prefix: String,
    pub(crate) audience: Option<String>,
    pub(crate) leeway: Duration,
    pub(crate) max_channels: usize,
    pub(crate) max_message_bytes: usize,
    pub(crate) queue_length: usize,
    pub(crate) subscribe_timeout: Duration,
    pub(crate) ping_interval: Option<Duration>,
    pub(crate) check_listener_interval: Option<Duration>,
    pub(crate) pool_size: usize,
    pub(crate) max_sockets: usize,
    pub(crate) allowed_origins: Option<Vec<String>>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret or the database password (tokio-postgres hides it).
        f.debug_struct("Config")
            .field("database", &self.db)
            .field("listen_channel", &self.listen_channel)
            .field("meta_channel", &self.meta_channel)
            .field("path_prefix", &self.path_prefix)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("max_channels", &self.max_channels)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("queue_length", &self.queue_length)
            .field("subscribe_timeout", &self.subscribe_timeout)
            .field("ping_interval", &self.ping_interval)
            .field("check_listener_interval", &self.check_listener_interval)
            .field("pool_size", &self.pool_size)
            .field("max_sockets", &self.max_sockets)
            .field("allowed_origins", &self.allowed_origins)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Starts a builder with the defaults of the wire contract.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// Reads the `PGWS_*` variables that concern the layer (see the README's
    /// configuration table). `PGWS_JWT_SECRET` is required here.
    pub fn from_env() -> Result<Config, ConfigError> {
        ConfigBuilder::from_env()?.build_from_env()
    }

    /// The multiplexed mapping's listen channel, when that mapping is on.
    pub fn listen_channel(&self) -> Option<&str> {
        self.listen_channel.as_deref()
    }

    /// The meta channel, when one is configured.
    pub fn meta_channel(&self) -> Option<&str> {
        self.meta_channel.as_deref()
    }

    /// The TLS in force on the database connections (the URI's `sslmode`, with
    /// `require` plus a root certificate counting as `verify-ca`, as in libpq).
    pub fn database_tls(&self) -> DatabaseTls {
        self.db.tls
    }

    /// The path prefix before `/<jwt>`, normalized (`""` or `/ws`).
    pub fn path_prefix(&self) -> &str {
        &self.path_prefix
    }

    /// The `Origin` allow-list, normalized, when one is configured.
    pub fn allowed_origins(&self) -> Option<&[String]> {
        self.allowed_origins.as_deref()
    }
}

/// Builds a [`Config`]; each method names one setting and [`build`](Self::build) checks them all.
///
/// Its `Debug` output hides the JWT secret and the database password.
#[derive(Clone)]
pub struct ConfigBuilder {
    database_url: String,
    secret: Option<String>,
    secret_is_base64: bool,
    listen_channel: Option<String>,
    meta_channel: Option<String>,
    path_prefix: String,
    audience: Option<String>,
    leeway: Duration,
    max_channels: usize,
    max_message_bytes: usize,
    queue_length: usize,
    subscribe_timeout: Duration,
    ping_interval: Duration,
    check_listener_interval: Duration,
    pool_size: usize,
    max_sockets: usize,
    allowed_origins: Option<Vec<String>>,
}

impl std::fmt::Debug for ConfigBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigBuilder")
            .field("database", &RedactedDatabase(&self.database_url))
            .field("secret", &self.secret.as_ref().map(|_| Redacted))
            .field("secret_is_base64", &self.secret_is_base64)
            .field("listen_channel", &self.listen_channel)
            .field("meta_channel", &self.meta_channel)
            .field("path_prefix", &self.path_prefix)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("max_channels", &self.max_channels)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("queue_length", &self.queue_length)
            .field("subscribe_timeout", &self.subscribe_timeout)
            .field("ping_interval", &self.ping_interval)
            .field("check_listener_interval", &self.check_listener_interval)
            .field("pool_size", &self.pool_size)
            .field("max_sockets", &self.max_sockets)
            .field("allowed_origins", &self.allowed_origins)
            .finish()
    }
}

/// Stands for a secret in `Debug` output.
struct Redacted;

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A database URL in `Debug` output: parsed, which hides its password (a URL
/// that does not parse is not shown at all).
struct RedactedDatabase<'a>(&'a str);

impl std::fmt::Debug for RedactedDatabase<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.parse::<tokio_postgres::Config>() {
            Ok(db) => db.fmt(f),
            Err(_) => f.write_str("<a URL that does not parse>"),
        }
    }
}

/// The database used when none is configured.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

impl Default for ConfigBuilder {
    fn default() -> Self {
        Self {
            database_url: DEFAULT_DATABASE_URL.to_owned(),
            secret: None,
            secret_is_base64: false,
            listen_channel: None,
            meta_channel: None,
            path_prefix: String::new(),
            audience: None,
            leeway: Duration::ZERO,
            max_channels: 100,
            max_message_bytes: 65536,
            queue_length: 1024,
            subscribe_timeout: Duration::from_millis(5000),
            ping_interval: Duration::from_secs(30),
            check_listener_interval: Duration::from_millis(10_000),
            pool_size: 10,
            max_sockets: 100_000,
            allowed_origins: None,
        }
    }
}

impl ConfigBuilder {
    /// The PostgreSQL URI (or key=value string) for both the listener and the write
    /// pool. Its TLS parameters (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`) mean
    /// what they mean to `psql`; files they name are read by [`build`](Self::build).
    pub fn database_url(mut self, url: impl Into<String>) -> Self {
        self.database_url = url.into();
        self
    }

    /// The JWT secret: raw text, a JWK (JSON object with `kty`) or a JWKS (JSON object
    /// with `keys`).
    pub fn jwt_secret(mut self, secret: impl Into<String>) -> Self {
        self.secret = Some(secret.into());
        self
    }

    /// Whether a raw-text secret is base64 (standard or URL-safe, padding optional).
    pub fn jwt_secret_is_base64(mut self, yes: bool) -> Self {
        self.secret_is_base64 = yes;
        self
    }

    /// Turns on the multiplexed mapping: one `LISTEN` on this channel, routing by the
    /// payload's `channel` field (postgres-websockets' behaviour).
    pub fn listen_channel(mut self, channel: impl Into<String>) -> Self {
        self.listen_channel = Some(channel.into());
        self
    }

    /// Publishes `ConnectionOpen`/`ConnectionClose` events on this channel.
    pub fn meta_channel(mut self, channel: impl Into<String>) -> Self {
        self.meta_channel = Some(channel.into());
        self
    }

    /// A path prefix before `/<jwt>`, such as `/ws`.
    pub fn path_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.path_prefix = prefix.into();
        self
    }

    /// Requires tokens that carry `aud` to name this audience.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Clock leeway for `exp`, `nbf` and `iat` (whole seconds count); at most 365 days.
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// The most channels one socket may be granted (default 100).
    pub fn max_channels(mut self, n: usize) -> Self {
        self.max_channels = n;
        self
    }

    /// The largest message a client may send, reassembled (default 65536 bytes).
    pub fn max_message_bytes(mut self, n: usize) -> Self {
        self.max_message_bytes = n;
        self
    }

    /// Notifications queued per socket before it is closed as a slow consumer (default 1024).
    pub fn queue_length(mut self, n: usize) -> Self {
        self.queue_length = n;
        self
    }

    /// How long a handshake waits for its channels to be listened to (default 5 s);
    /// above zero and at most 365 days.
    pub fn subscribe_timeout(mut self, timeout: Duration) -> Self {
        self.subscribe_timeout = timeout;
        self
    }

    /// How often sockets are pinged (default 30 s); zero turns pings off. At most
    /// 365 days.
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval;
        self
    }

    /// How often the listener probes its connection (default 10 s); zero turns the probe
    /// off (TCP keepalives stay on). At most 365 days.
    pub fn check_listener_interval(mut self, interval: Duration) -> Self {
        self.check_listener_interval = interval;
        self
    }

    /// Connections in the write pool (default 10).
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n;
        self
    }

    /// The most sockets open at once (default 100,000); beyond it a handshake gets `503`.
    pub fn max_sockets(mut self, n: usize) -> Self {
        self.max_sockets = n;
        self
    }

    /// Only handshakes whose `Origin` is one of these are taken (compared
    /// case-insensitively); others get `403 Origin not allowed`. A handshake without
    /// `Origin` (not from a browser) is not affected. Unset: any origin.
    pub fn allowed_origins<I, O>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = O>,
        O: Into<String>,
    {
        let list = origins.into_iter().map(|o| normalize_origin(&o.into()));
        self.allowed_origins = Some(list.collect());
        self
    }

    /// Checks every setting and parses the keys.
    pub fn build(self) -> Result<Config, ConfigError> {
        let secret = self.secret.as_deref().ok_or(ConfigError::MissingSecret)?;
        let keys = Keys::from_secret(secret, self.secret_is_base64)?;
        let db = Database::parse(&self.database_url)?;
        for (setting, name) in [
            ("listen_channel", &self.listen_channel),
            ("meta_channel", &self.meta_channel),
        ] {
            if let Some(name) = name {
                check_channel_name(name).map_err(|_| ConfigError::InvalidChannel {
                    setting,
                    name: name.clone(),
                })?;
            }
        }
        positive("pool_size", self.pool_size)?;
        positive("queue_length", self.queue_length)?;
        positive("max_message_bytes", self.max_message_bytes)?;
        positive("max_channels", self.max_channels)?;
        positive("max_sockets", self.max_sockets)?;
        if self.subscribe_timeout.is_zero() {
            return Err(ConfigError::InvalidValue {
                setting: "subscribe_timeout",
                reason: "must be above 0".into(),
            });
        }
        for (setting, d) in [
            ("leeway", self.leeway),
            ("subscribe_timeout", self.subscribe_timeout),
            ("ping_interval", self.ping_interval),
            ("check_listener_interval", self.check_listener_interval),
        ] {
            at_most_max(setting, d)?;
        }
        Ok(Config {
            db,
            keys: Arc::new(keys),
            listen_channel: self.listen_channel,
            meta_channel: self.meta_channel,
            path_prefix: normalize_prefix(&self.path_prefix),
            audience: self.audience,
            leeway: self.leeway,
            max_channels: self.max_channels,
            max_message_bytes: self.max_message_bytes,
            queue_length: self.queue_length,
            subscribe_timeout: self.subscribe_timeout,
            ping_interval: nonzero(self.ping_interval),
            check_listener_interval: nonzero(self.check_listener_interval),
            pool_size: self.pool_size,
            max_sockets: self.max_sockets.min(tokio::sync::Semaphore::MAX_PERMITS),
            allowed_origins: self.allowed_origins,
        })
    }

    /// Reads the `PGWS_*` variables that concern the layer over the defaults; an
    /// empty value counts as unset. The secret may be left unset here.
    pub fn from_env() -> Result<ConfigBuilder, ConfigError> {
        let mut b = ConfigBuilder::default();
        if let Some(v) = env_file_or_value("PGWS_DB_URI")? {
            b.database_url = v;
        }
        b.secret = env_file_or_value("PGWS_JWT_SECRET")?;
        if let Some(v) = env_var("PGWS_JWT_SECRET_BASE64") {
            b.secret_is_base64 = parse_bool("PGWS_JWT_SECRET_BASE64", &v)?;
        }
        b.listen_channel = env_var("PGWS_LISTEN_CHANNEL");
        b.meta_channel = env_var("PGWS_META_CHANNEL");
        b.path_prefix = env_var("PGWS_PATH_PREFIX").unwrap_or_default();
        b.audience = env_var("PGWS_JWT_AUD");
        if let Some(v) = env_parse::<u64>("PGWS_JWT_LEEWAY")? {
            b.leeway = Duration::from_secs(v);
        }
        if let Some(v) = env_parse("PGWS_MAX_CHANNELS")? {
            b.max_channels = v;
        }
        if let Some(v) = env_parse("PGWS_MAX_MESSAGE_BYTES")? {
            b.max_message_bytes = v;
        }
        if let Some(v) = env_parse("PGWS_QUEUE_LENGTH")? {
            b.queue_length = v;
        }
        if let Some(v) = env_parse("PGWS_SUBSCRIBE_TIMEOUT")? {
            b.subscribe_timeout = Duration::from_millis(v);
        }
        if let Some(v) = env_parse("PGWS_PING_INTERVAL")? {
            b.ping_interval = Duration::from_secs(v);
        }
        if let Some(v) = env_parse("PGWS_CHECK_LISTENER_INTERVAL")? {
            b.check_listener_interval = Duration::from_millis(v);
        }
        if let Some(v) = env_parse("PGWS_POOL_SIZE")? {
            b.pool_size = v;
        }
        if let Some(v) = env_parse("PGWS_MAX_SOCKETS")? {
            b.max_sockets = v;
        }
        if let Some(v) = env_var("PGWS_ALLOWED_ORIGINS") {
            b = b.allowed_origins(v.split(',').map(str::trim).filter(|o| !o.is_empty()));
        }
        Ok(b)
    }

    /// [`build`](Self::build) for a builder read with [`from_env`](Self::from_env):
    /// every error names its `PGWS_*` variable.
    pub fn build_from_env(self) -> Result<Config, ConfigError> {
        self.build().map_err(ConfigError::in_env)
    }

    /// Whether a secret has been set (the standalone server makes one when not).
    pub fn has_secret(&self) -> bool {
        self.secret.is_some()
    }
}

fn positive(setting: &'static str, n: usize) -> Result<(), ConfigError> {
    if n == 0 {
        return Err(ConfigError::InvalidValue {
            setting,
            reason: "must be at least 1".into(),
        });
    }
    Ok(())
}

/// The longest duration a setting takes: 365 days, far from overflowing a clock.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

fn at_most_max(setting: &'static str, d: Duration) -> Result<(), ConfigError> {
    if d > MAX_DURATION {
        return Err(ConfigError::InvalidValue {
            setting,
            reason: format!("must be at most {} s (365 days)", MAX_DURATION.as_secs()),
        });
    }
    Ok(())
}

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// Origins compare case-insensitively and without a trailing slash.
pub(crate) fn normalize_origin(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// `""`, `"/"` → `""`; `"ws/"` → `"/ws"`.
fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("/{trimmed}")
    }
}

/// A variable's value, with an empty value counting as unset.
pub(crate) fn env_var(var: &'static str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.is_empty())
}

/// A variable whose value may be `@path`, read from that file with one trailing
/// newline removed.
pub(crate) fn env_file_or_value(var: &'static str) -> Result<Option<String>, ConfigError> {
    let Some(value) = env_var(var) else {
        return Ok(None);
    };
    let Some(path) = value.strip_prefix('@') else {
        return Ok(Some(value));
    };
    let mut text = std::fs::read_to_string(path).map_err(|e| ConfigError::Env {
        var,
        reason: format!("cannot read {path}: {e}"),
    })?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(Some(text))
}

pub(crate) fn env_parse<T: std::str::FromStr>(var: &'static str) -> Result<Option<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    env_var(var)
        .map(|v| {
            v.trim().parse::<T>().map_err(|e| ConfigError::Env {
                var,
                reason: format!("{v:?} is not a valid value: {e}"),
            })
        })
        .transpose()
}

pub(crate) fn parse_bool(var: &'static str, v: &str) -> Result<bool, ConfigError> {
    match v {
        "true" | "True" | "TRUE" => Ok(true),
        "false" | "False" | "FALSE" => Ok(false),
        _ => Err(ConfigError::Env {
            var,
            reason: format!("{v:?} is neither true nor false"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_normalized() {
        assert_eq!(normalize_prefix(""), "");
        assert_eq!(normalize_prefix("/"), "");
        assert_eq!(normalize_prefix("ws/"), "/ws");
        assert_eq!(normalize_prefix("/a/b/"), "/a/b");
    }

    #[test]
    fn errors_from_the_environment_name_their_variable() {
        let e = Config::builder()
            .jwt_secret("s")
            .pool_size(0)
            .build_from_env()
            .unwrap_err();
        assert_eq!(e.variable(), Some("PGWS_POOL_SIZE"));
        assert!(e.to_string().starts_with("PGWS_POOL_SIZE: "), "{e}");
        let e = Config::builder().build_from_env().unwrap_err();
        assert!(e.to_string().starts_with("PGWS_JWT_SECRET: "), "{e}");
    }

    #[test]
    fn build_requires_a_secret() {
        assert_eq!(
            Config::builder().build().unwrap_err(),
            ConfigError::MissingSecret
        );
    }

    #[test]
    fn build_refuses_bad_channels_and_zero_limits() {
        let b = || Config::builder().jwt_secret("s");
        assert!(matches!(
            b().meta_channel("").build(),
            Err(ConfigError::InvalidChannel { .. })
        ));
        assert!(matches!(
            b().queue_length(0).build(),
            Err(ConfigError::InvalidValue { .. })
        ));
        assert!(b().build().is_ok());
    }

    #[test]
    fn debug_output_hides_the_secret_and_the_database_password() {
        let secret = "s3cret-that-must-not-show-up-anywhere";
        for url in [
            "postgres://app:hunter2pw@db.example:5433/chat",
            "postgres://app@db.example:5433/chat?password=hunter2pw",
            "host=db.example port=5433 user=app password=hunter2pw dbname=chat",
            "postgres://app:hunter2pw@db.example:notaport/chat",
        ] {
            let builder = Config::builder().database_url(url).jwt_secret(secret);
            let shown = format!("{builder:?} {builder:#?}");
            assert!(
                !shown.contains("hunter2pw") && !shown.contains(secret),
                "{shown}"
            );
            if let Ok(config) = builder.build() {
                let shown = format!("{config:?} {config:#?}");
                assert!(
                    !shown.contains("hunter2pw") && !shown.contains(secret),
                    "{shown}"
                );
                assert!(shown.contains("db.example"), "{shown}");
            }
        }
    }

    #[test]
    fn build_refuses_a_zero_subscribe_timeout_and_durations_past_the_bound() {
        let b = || Config::builder().jwt_secret("s");
        let huge = Duration::from_secs(u64::MAX);
        let cases: [(ConfigBuilder, &str, &str); 5] = [
            (
                b().subscribe_timeout(Duration::ZERO),
                "subscribe_timeout",
                "PGWS_SUBSCRIBE_TIMEOUT",
            ),
            (
                b().subscribe_timeout(huge),
                "subscribe_timeout",
                "PGWS_SUBSCRIBE_TIMEOUT",
            ),
            (
                b().ping_interval(huge),
                "ping_interval",
                "PGWS_PING_INTERVAL",
            ),
            (
                b().check_listener_interval(huge),
                "check_listener_interval",
                "PGWS_CHECK_LISTENER_INTERVAL",
            ),
            (b().leeway(huge), "leeway", "PGWS_JWT_LEEWAY"),
        ];
        for (builder, setting, var) in cases {
            let e = builder.clone().build().unwrap_err();
            assert!(
                matches!(&e, ConfigError::InvalidValue { setting: s, .. } if *s == setting),
                "{e:?}"
            );
            assert!(e.to_string().contains(setting), "{e}");
            let e = builder.build_from_env().unwrap_err();
            assert_eq!(e.variable(), Some(var), "{e}");
            assert!(e.to_string().starts_with(&format!("{var}: ")), "{e}");
        }
        let longest = b()
            .subscribe_timeout(MAX_DURATION)
            .ping_interval(MAX_DURATION)
            .check_listener_interval(MAX_DURATION)
            .leeway(MAX_DURATION);
        assert!(longest.build().is_ok());
        assert!(b().ping_interval(Duration::ZERO).build().is_ok());
    }
}
