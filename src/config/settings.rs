//! The one table of the layer's settings. Each line gives a setting's name (the
//! builder method), its kind (which says its type, how its `PGWS_*` variable is
//! read and how `Debug` shows it), its default, its variable, the default as the
//! docs show it, its bounds and its doc. From it come the builder's fields,
//! setters and defaults, [`ConfigBuilder::from_env`], the bound checks of
//! [`ConfigBuilder::build`], the `Debug` output, [`Config::SETTINGS`] and the table
//! in [`Config`]'s docs.
//!
//! Adding a setting: one line here, and the code that uses it
//! (`config.values.<name>`).

use std::{fmt, sync::Arc, time::Duration};

use super::{
    ConfigBuilder, Redacted, RedactedDatabase, env_file_or_value, env_parse, env_var,
    normalize_origin, parse_bool,
};
use crate::{
    DEFAULT_DATABASE_URL,
    auth::Keys,
    auth::check_channel_name,
    database::Database,
    error::ConfigError,
    history::{DEFAULT_SCHEMA, HistoryChannels, PAGE_BYTES, Store},
};

/// One setting of the layer, as [`Config::SETTINGS`] lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SettingInfo {
    /// The [`ConfigBuilder`] method that sets it.
    pub name: &'static str,
    /// The `PGWS_*` environment variable that sets it.
    pub variable: &'static str,
    /// The default as the variable would spell it, or `unset` or `required`.
    pub default: &'static str,
    /// What the variable takes: `count`, `seconds`, `milliseconds`, `true or false`, …
    pub unit: &'static str,
    /// What it does.
    pub doc: &'static str,
}

/// What each kind of setting is: its field type, its setter, how its variable is
/// read, how `Debug` shows it and what the docs call its unit.
macro_rules! kind {
    (ty database) => { String };
    (ty secret) => { Option<String> };
    (ty text) => { String };
    (ty opt_text) => { Option<String> };
    (ty flag) => { bool };
    (ty count) => { usize };
    (ty secs) => { Duration };
    (ty millis) => { Duration };
    (ty origins) => { Option<Vec<String>> };

    (unit database) => { "URI or key=value string; @path reads a file" };
    (unit secret) => { "secret; @path reads a file" };
    (unit text) => { "text" };
    (unit opt_text) => { "text" };
    (unit flag) => { "true or false" };
    (unit count) => { "count" };
    (unit secs) => { "seconds" };
    (unit millis) => { "milliseconds" };
    (unit origins) => { "comma-separated list" };

    (env database, $var:literal) => { env_file_or_value($var)? };
    (env secret, $var:literal) => { env_file_or_value($var)? };
    (env text, $var:literal) => { env_var($var) };
    (env opt_text, $var:literal) => { env_var($var) };
    (env flag, $var:literal) => { env_var($var).map(|v| parse_bool($var, &v)).transpose()? };
    (env count, $var:literal) => { env_parse::<usize>($var)? };
    (env secs, $var:literal) => { env_parse::<u64>($var)?.map(Duration::from_secs) };
    (env millis, $var:literal) => { env_parse::<u64>($var)?.map(Duration::from_millis) };
    (env origins, $var:literal) => {
        env_var($var).map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
    };

    (show database, $v:expr) => { &RedactedDatabase($v) };
    (show secret, $v:expr) => { &$v.as_ref().map(|_| Redacted) };
    (show $other:ident, $v:expr) => { $v };

    (setter database, $name:ident, $($doc:literal)*) => { kind!(@into $name, $($doc)*); };
    (setter text, $name:ident, $($doc:literal)*) => { kind!(@into $name, $($doc)*); };
    (setter secret, $name:ident, $($doc:literal)*) => { kind!(@into_some $name, $($doc)*); };
    (setter opt_text, $name:ident, $($doc:literal)*) => { kind!(@into_some $name, $($doc)*); };
    (setter flag, $name:ident, $($doc:literal)*) => { kind!(@plain $name: bool, $($doc)*); };
    (setter count, $name:ident, $($doc:literal)*) => { kind!(@plain $name: usize, $($doc)*); };
    (setter secs, $name:ident, $($doc:literal)*) => { kind!(@plain $name: Duration, $($doc)*); };
    (setter millis, $name:ident, $($doc:literal)*) => { kind!(@plain $name: Duration, $($doc)*); };
    (setter origins, $name:ident, $($doc:literal)*) => {
        $(#[doc = $doc])*
        pub fn $name<I, O>(mut self, origins: I) -> Self
        where
            I: IntoIterator<Item = O>,
            O: Into<String>,
        {
            let list = origins.into_iter().map(|o| normalize_origin(&o.into()));
            self.values.$name = Some(list.collect());
            self
        }
    };
    (@into $name:ident, $($doc:literal)*) => {
        $(#[doc = $doc])*
        pub fn $name(mut self, value: impl Into<String>) -> Self {
            self.values.$name = value.into();
            self
        }
    };
    (@into_some $name:ident, $($doc:literal)*) => {
        $(#[doc = $doc])*
        pub fn $name(mut self, value: impl Into<String>) -> Self {
            self.values.$name = Some(value.into());
            self
        }
    };
    (@plain $name:ident: $ty:ty, $($doc:literal)*) => {
        $(#[doc = $doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.values.$name = value;
            self
        }
    };
}

/// Generates everything a setting needs from the table below.
macro_rules! settings {
    (
        $(#[doc = $before:literal])*
        table;
        $(#[doc = $after:literal])*
        pub struct Config;
        $(
            $(#[doc = $doc:literal])*
            $name:ident: $kind:ident = $default:expr, $var:literal, $shown:literal
                $(, $check:ident)*;
        )*
    ) => {
        /// The settings' values: the builder's, then (checked) the configuration's.
        #[derive(Clone)]
        pub(crate) struct Values {
            $( pub(crate) $name: kind!(ty $kind), )*
        }

        impl Default for Values {
            fn default() -> Self {
                Self { $( $name: $default, )* }
            }
        }

        impl Values {
            /// Every bound of the table, in its order.
            fn check(&self) -> Result<(), ConfigError> {
                $( $( $check(stringify!($name), &self.$name)?; )* )*
                Ok(())
            }

            /// Every field, secrets redacted.
            fn debug_fields(&self, d: &mut fmt::DebugStruct<'_, '_>) {
                $( d.field(stringify!($name), kind!(show $kind, &self.$name)); )*
            }
        }

        impl ConfigBuilder {
            $( kind!(setter $kind, $name, $($doc)*); )*

            /// Reads the `PGWS_*` variables that concern the layer over the defaults
            /// (see [`Config::SETTINGS`]); an empty value counts as unset. The secret
            /// may be left unset here.
            pub fn from_env() -> Result<ConfigBuilder, ConfigError> {
                let mut b = ConfigBuilder::default();
                $(
                    if let Some(v) = kind!(env $kind, $var) {
                        b = b.$name(v);
                    }
                )*
                Ok(b)
            }
        }

        $(#[doc = $before])*
        ///
        /// | setting | default | environment | meaning |
        /// |---|---|---|---|
        $(
            #[doc = concat!(
                "| [`", stringify!($name), "`](ConfigBuilder::", stringify!($name), ") | ",
                $shown, " | `", $var, "` (", kind!(unit $kind), ") |",
                $($doc),*, " |"
            )]
        )*
        ///
        $(#[doc = $after])*
        #[derive(Clone)]
        pub struct Config {
            pub(crate) values: Values,
            pub(crate) db: Database,
            pub(crate) keys: Arc<Keys>,
        }

        impl Config {
            /// Every setting of the layer: its builder method, its `PGWS_*` variable,
            /// its default, its unit and what it does. The README and PROTOCOL.md
            /// tables are checked against it.
            pub const SETTINGS: &'static [SettingInfo] = &[
                $(
                    SettingInfo {
                        name: stringify!($name),
                        variable: $var,
                        default: $shown,
                        unit: kind!(unit $kind),
                        doc: concat!($($doc),*).trim_ascii(),
                    },
                )*
            ];
        }
    };
}

settings! {
    /// Everything [`PgWsLayer`](crate::PgWsLayer) needs to know, built with
    /// [`Config::builder`] or read from the environment with [`Config::from_env`].
    table;
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
    pub struct Config;

    /// The PostgreSQL URI (or key=value string) for both the listener and the write
    /// pool. Its TLS parameters (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`) mean
    /// what they mean to `psql`; files they name are read by [`build`](ConfigBuilder::build).
    database_url: database = DEFAULT_DATABASE_URL.to_owned(), "PGWS_DB_URI",
        "postgres://postgres@127.0.0.1:5432/postgres";
    /// The JWT secret: raw text, a JWK (JSON object with `kty`) or a JWKS (JSON object
    /// with `keys`).
    jwt_secret: secret = None, "PGWS_JWT_SECRET", "required";
    /// Whether a raw-text secret is base64 (standard or URL-safe, padding optional).
    jwt_secret_is_base64: flag = false, "PGWS_JWT_SECRET_BASE64", "false";
    /// Takes HMAC keys (raw, base64 or `oct` JWK) shorter than 32 bytes, which are
    /// refused otherwise: a short secret can be guessed offline from one token.
    jwt_secret_allow_short: flag = false, "PGWS_JWT_SECRET_ALLOW_SHORT", "false";
    /// Requires tokens that carry `aud` to name this audience.
    audience: opt_text = None, "PGWS_JWT_AUD", "unset";
    /// Clock leeway for `exp`, `nbf` and `iat` (whole seconds count); at most 365 days.
    leeway: secs = Duration::ZERO, "PGWS_JWT_LEEWAY", "0", at_most_a_year;
    /// Turns on the multiplexed mapping: one `LISTEN` on this channel, routing by the
    /// payload's `channel` field (postgres-websockets' behaviour).
    listen_channel: opt_text = None, "PGWS_LISTEN_CHANNEL", "unset", channel_name;
    /// Publishes `ConnectionOpen`/`ConnectionClose` events on this channel.
    meta_channel: opt_text = None, "PGWS_META_CHANNEL", "unset", channel_name;
    /// The token claims copied into meta events, comma-separated (such as `sub`);
    /// `*` copies every claim. Unset: none, since every reader of the meta channel
    /// sees them.
    meta_claims: opt_text = None, "PGWS_META_CLAIMS", "unset";
    /// A path prefix before `/<jwt>`, such as `/ws`.
    path_prefix: text = String::new(), "PGWS_PATH_PREFIX", "unset";
    /// Only handshakes whose `Origin` is one of these are taken (compared
    /// case-insensitively); others get `403 Origin not allowed`. A handshake without
    /// `Origin` (not from a browser) is not affected. Unset: any origin.
    allowed_origins: origins = None, "PGWS_ALLOWED_ORIGINS", "unset";
    /// The most channels one socket may be granted (default 100); more get
    /// `403 Too many channels`.
    max_channels: count = 100, "PGWS_MAX_CHANNELS", "100", at_least_one;
    /// The largest message a client may send, reassembled (default 65536 bytes);
    /// a bigger one closes the socket with `1009`.
    max_message_bytes: count = 65536, "PGWS_MAX_MESSAGE_BYTES", "65536", at_least_one;
    /// Notifications queued per socket before it is closed as a slow consumer
    /// (default 1024, then `1008 Slow consumer`).
    queue_length: count = 1024, "PGWS_QUEUE_LENGTH", "1024", at_least_one;
    /// Bytes of notifications queued per socket before it is closed as a slow
    /// consumer (default 8388608, 8 MiB, then `1008 Slow consumer`); a socket with
    /// nothing queued always takes one, whatever its size.
    queue_bytes: count = 8 << 20, "PGWS_QUEUE_BYTES", "8388608", at_least_one;
    /// The most sockets open at once (default 100,000); beyond it a handshake gets
    /// `503 Too many connections`.
    max_sockets: count = 100_000, "PGWS_MAX_SOCKETS", "100000", at_least_one;
    /// How long a handshake waits for its channels to be listened to (default 5 s,
    /// then `503 Database unavailable`); above zero and at most 365 days.
    subscribe_timeout: millis = Duration::from_millis(5000), "PGWS_SUBSCRIBE_TIMEOUT", "5000",
        above_zero, at_most_a_year;
    /// How often sockets are pinged (default 30 s; no pong within one interval is
    /// `1011 Ping timeout`); zero turns pings off. At most 365 days.
    ping_interval: secs = Duration::from_secs(30), "PGWS_PING_INTERVAL", "30", at_most_a_year;
    /// How often an idle event stream gets a comment line, so that proxies and
    /// clients keep it open (default 15 s); zero turns them off. At most 365 days.
    sse_keep_alive: millis = Duration::from_millis(15_000), "PGWS_SSE_KEEP_ALIVE", "15000",
        at_most_a_year;
    /// How often the listener probes its connection (default 10 s; a failed probe
    /// reconnects, `1012` to readers); zero turns the probe off (TCP keepalives stay
    /// on). At most 365 days.
    check_listener_interval: millis = Duration::from_millis(10_000),
        "PGWS_CHECK_LISTENER_INTERVAL", "10000", at_most_a_year;
    /// Connections in the write pool (default 10); writes wait up to 5 s for one,
    /// then `1013`.
    pool_size: count = 10, "PGWS_POOL_SIZE", "10", at_least_one;
    /// History channels: comma-separated channel patterns (`*` matches any run of
    /// characters) whose messages are kept in PostgreSQL and can be resumed. Unset:
    /// no history, and nothing of it is started.
    history: opt_text = None, "PGWS_HISTORY", "unset", history_patterns;
    /// How long history messages are kept (default 86400 s); above zero.
    history_ttl: secs = Duration::from_secs(86_400), "PGWS_HISTORY_TTL", "86400", above_zero;
    /// How many messages each history channel keeps (default 1000).
    history_size: count = 1000, "PGWS_HISTORY_SIZE", "1000", at_least_one;
    /// The schema of the history store, created and migrated at start-up when the
    /// role may (1 to 55 bytes, no `$`).
    history_schema: text = DEFAULT_SCHEMA.to_owned(), "PGWS_HISTORY_SCHEMA", "pgws",
        history_schema_name;
    /// Bytes of history replay pages in flight at once, over all sockets and event
    /// streams (default 67108864, 64 MiB): a page takes 1 MiB of it before it is
    /// read and gives it back once written, and a replay beyond it waits its turn.
    /// At least 1048576 (one page).
    replay_budget: count = 64 << 20, "PGWS_REPLAY_BUDGET", "67108864", at_least_a_page;
    /// Publishes of one session socket (subprotocol `pgws.json`) read but not
    /// answered yet, at most (default 16); past it the socket is not read until
    /// one is answered.
    max_in_flight: count = 16, "PGWS_MAX_IN_FLIGHT", "16", at_least_one;
    /// How long before its token's `exp` a session socket gets an `expiring`
    /// notice (default 30 s); zero turns the notice off. At most 365 days.
    expiry_notice: secs = Duration::from_secs(30), "PGWS_EXPIRY_NOTICE", "30", at_most_a_year;
}

impl fmt::Debug for ConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ConfigBuilder");
        self.values.debug_fields(&mut d);
        d.finish()
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret, nor the database password (tokio-postgres hides it).
        let mut d = f.debug_struct("Config");
        d.field("database", &self.db);
        self.values.debug_fields(&mut d);
        d.finish_non_exhaustive()
    }
}

impl Values {
    /// Checks every bound; the caller has parsed the secret and the database.
    pub(super) fn checked(self) -> Result<Values, ConfigError> {
        self.check()?;
        Ok(self)
    }
}

/// The `PGWS_*` variable of a setting (a builder method's name).
pub(crate) fn variable_of(setting: &str) -> Option<&'static str> {
    Config::SETTINGS
        .iter()
        .find(|s| s.name == setting)
        .map(|s| s.variable)
}

// The bounds a line may name.

fn at_least_one(setting: &'static str, n: &usize) -> Result<(), ConfigError> {
    if *n == 0 {
        return Err(ConfigError::InvalidValue {
            setting,
            reason: "must be at least 1".into(),
        });
    }
    Ok(())
}

fn at_least_a_page(setting: &'static str, n: &usize) -> Result<(), ConfigError> {
    if *n < PAGE_BYTES {
        return Err(ConfigError::InvalidValue {
            setting,
            reason: format!("must be at least {PAGE_BYTES} (one replay page)"),
        });
    }
    Ok(())
}

fn above_zero(setting: &'static str, d: &Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(ConfigError::InvalidValue {
            setting,
            reason: "must be above 0".into(),
        });
    }
    Ok(())
}

/// The longest duration a setting takes: 365 days, far from overflowing a clock.
pub(super) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

fn at_most_a_year(setting: &'static str, d: &Duration) -> Result<(), ConfigError> {
    if *d > MAX_DURATION {
        return Err(ConfigError::InvalidValue {
            setting,
            reason: format!("must be at most {} s (365 days)", MAX_DURATION.as_secs()),
        });
    }
    Ok(())
}

fn channel_name(setting: &'static str, name: &Option<String>) -> Result<(), ConfigError> {
    match name {
        Some(name) => check_channel_name(name).map_err(|_| ConfigError::InvalidChannel {
            setting,
            name: name.clone(),
        }),
        None => Ok(()),
    }
}

fn history_patterns(setting: &'static str, text: &Option<String>) -> Result<(), ConfigError> {
    match text {
        Some(text) => {
            HistoryChannels::parse(text)
                .map(drop)
                .map_err(|e| ConfigError::InvalidValue {
                    setting,
                    reason: e.to_string(),
                })
        }
        None => Ok(()),
    }
}

fn history_schema_name(setting: &'static str, schema: &str) -> Result<(), ConfigError> {
    Store::new(schema)
        .map(drop)
        .map_err(|e| ConfigError::InvalidValue {
            setting,
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default column of a doc's table row for `var` (`| \`VAR\` | … |`).
    fn default_in(doc: &str, var: &str) -> Option<String> {
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `{var}` |")))?;
        // | variable | builder method | default | meaning |
        row.split('|').nth(3).map(|c| c.trim().to_owned())
    }

    #[test]
    fn every_setting_is_in_the_protocol_with_its_default() {
        let doc = include_str!("../../PROTOCOL.md");
        for s in Config::SETTINGS {
            let shown = default_in(doc, s.variable)
                .unwrap_or_else(|| panic!("{} is not in PROTOCOL.md's table", s.variable));
            let same = if matches!(s.default, "unset" | "required") {
                shown.starts_with(s.default)
            } else {
                shown == format!("`{}`", s.default)
            };
            assert!(
                same,
                "PROTOCOL.md: {} defaults to {shown}, not {}",
                s.variable, s.default
            );
        }
    }

    #[test]
    fn the_readme_shows_the_same_defaults_where_it_names_a_setting() {
        // The README's table is a short selection: each row it has must agree.
        let readme = include_str!("../../README.md");
        for s in Config::SETTINGS {
            let prefix = format!("| `{}` |", s.variable);
            if let Some(row) = readme.lines().find(|l| l.starts_with(&prefix)) {
                let default = row.split('|').nth(2).unwrap_or_default().trim();
                assert!(
                    default.contains(s.default),
                    "README.md: {} defaults to {default}, not {}",
                    s.variable,
                    s.default
                );
            }
        }
    }

    #[test]
    fn names_and_variables_are_unique_and_the_builder_has_each_name() {
        let builder = format!("{:?}", ConfigBuilder::default());
        for (i, s) in Config::SETTINGS.iter().enumerate() {
            assert!(s.variable.starts_with("PGWS_"), "{s:?}");
            assert!(!s.doc.is_empty() && !s.doc.starts_with(' '), "{s:?}");
            assert!(builder.contains(s.name), "{builder}");
            for other in &Config::SETTINGS[..i] {
                assert_ne!(s.name, other.name);
                assert_ne!(s.variable, other.variable);
            }
        }
    }

    #[test]
    fn the_defaults_shown_are_the_defaults_read() {
        // What the table shows, read back as the variable would be.
        let d = Values::default();
        let shown = |name: &str| {
            Config::SETTINGS
                .iter()
                .find(|s| s.name == name)
                .unwrap()
                .default
        };
        assert_eq!(shown("database_url"), d.database_url);
        assert_eq!(shown("max_channels"), d.max_channels.to_string());
        assert_eq!(shown("max_message_bytes"), d.max_message_bytes.to_string());
        assert_eq!(shown("queue_length"), d.queue_length.to_string());
        assert_eq!(shown("queue_bytes"), d.queue_bytes.to_string());
        assert_eq!(shown("replay_budget"), d.replay_budget.to_string());
        assert_eq!(shown("max_sockets"), d.max_sockets.to_string());
        assert_eq!(shown("pool_size"), d.pool_size.to_string());
        assert_eq!(shown("leeway"), d.leeway.as_secs().to_string());
        assert_eq!(
            shown("ping_interval"),
            d.ping_interval.as_secs().to_string()
        );
        assert_eq!(
            shown("subscribe_timeout"),
            d.subscribe_timeout.as_millis().to_string()
        );
        assert_eq!(
            shown("check_listener_interval"),
            d.check_listener_interval.as_millis().to_string()
        );
        assert_eq!(shown("history_size"), d.history_size.to_string());
        assert_eq!(shown("history_schema"), d.history_schema);
        assert_eq!(shown("history_ttl"), d.history_ttl.as_secs().to_string());
        assert_eq!(
            shown("jwt_secret_is_base64"),
            d.jwt_secret_is_base64.to_string()
        );
        assert_eq!(
            shown("jwt_secret_allow_short"),
            d.jwt_secret_allow_short.to_string()
        );
    }
}
