//! [`Config`], its builder and [`Config::from_env`].

mod settings;

use std::{sync::Arc, time::Duration};

use crate::{
    auth::Keys,
    database::{Database, DatabaseTls},
    error::ConfigError,
};

pub(crate) use settings::Values;
pub use settings::{Config, SettingInfo};

impl Config {
    /// Starts a builder with the defaults of PROTOCOL.md §13.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// Reads the `PGWS_*` variables that concern the layer (see
    /// [`SETTINGS`](Self::SETTINGS)). `PGWS_JWT_SECRET` is required here.
    pub fn from_env() -> Result<Config, ConfigError> {
        ConfigBuilder::from_env()?.build_from_env()
    }

    /// The multiplexed mapping's listen channel, when that mapping is on.
    pub fn listen_channel(&self) -> Option<&str> {
        self.values.listen_channel.as_deref()
    }

    /// The meta channel, when one is configured.
    pub fn meta_channel(&self) -> Option<&str> {
        self.values.meta_channel.as_deref()
    }

    /// The TLS in force on the database connections (the URI's `sslmode`, with
    /// `require` plus a root certificate counting as `verify-ca`, as in libpq).
    pub fn database_tls(&self) -> DatabaseTls {
        self.db.tls
    }

    /// The path prefix before `/<jwt>`, normalized (`""` or `/ws`).
    pub fn path_prefix(&self) -> &str {
        &self.values.path_prefix
    }

    /// The `Origin` allow-list, normalized, when one is configured.
    pub fn allowed_origins(&self) -> Option<&[String]> {
        self.values.allowed_origins.as_deref()
    }
}

impl Values {
    /// The ping interval, `None` when pings are off.
    pub(crate) fn ping_interval(&self) -> Option<Duration> {
        nonzero(self.ping_interval)
    }

    /// The listener's probe interval, `None` when the probe is off.
    pub(crate) fn check_listener_interval(&self) -> Option<Duration> {
        nonzero(self.check_listener_interval)
    }

    /// The event streams' keep-alive interval, `None` when off.
    pub(crate) fn sse_keep_alive(&self) -> Option<Duration> {
        nonzero(self.sse_keep_alive)
    }
}

/// Builds a [`Config`]; each method names one setting and [`build`](Self::build) checks them all.
///
/// Its `Debug` output hides the JWT secret and the database password.
#[derive(Clone, Default)]
pub struct ConfigBuilder {
    values: Values,
}

/// Stands for a secret in `Debug` output.
pub(crate) struct Redacted;

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A database URL in `Debug` output: parsed, which hides its password (a URL
/// that does not parse is not shown at all).
pub(crate) struct RedactedDatabase<'a>(pub(crate) &'a str);

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

impl ConfigBuilder {
    /// Checks every setting and parses the keys.
    pub fn build(self) -> Result<Config, ConfigError> {
        let values = self.values;
        let secret = values
            .jwt_secret
            .as_deref()
            .ok_or(ConfigError::MissingSecret)?;
        let keys = Keys::from_secret(
            secret,
            values.jwt_secret_is_base64,
            values.jwt_secret_allow_short,
        )?;
        let db = Database::parse(&values.database_url)?;
        let mut values = values.checked()?;
        values.path_prefix = normalize_prefix(&values.path_prefix);
        values.max_sockets = values.max_sockets.min(tokio::sync::Semaphore::MAX_PERMITS);
        Ok(Config {
            values,
            db,
            keys: Arc::new(keys),
        })
    }

    /// [`build`](Self::build) for a builder read with [`from_env`](Self::from_env):
    /// every error names its `PGWS_*` variable.
    pub fn build_from_env(self) -> Result<Config, ConfigError> {
        self.build().map_err(ConfigError::in_env)
    }

    /// Whether a secret has been set (the standalone server makes one when not).
    pub fn has_secret(&self) -> bool {
        self.values.jwt_secret.is_some()
    }
}

impl ConfigError {
    /// The `PGWS_*` variable behind this error, when it came from one.
    pub fn variable(&self) -> Option<&'static str> {
        match self {
            Self::MissingSecret | Self::InvalidSecret(_) => settings::variable_of("jwt_secret"),
            Self::InvalidDatabaseUrl(_) => settings::variable_of("database_url"),
            Self::InvalidChannel { setting, .. } | Self::InvalidValue { setting, .. } => {
                settings::variable_of(setting)
            }
            Self::Env { var, .. } => Some(var),
        }
    }

    /// The same error, naming its variable (for settings read from the environment).
    pub(crate) fn in_env(self) -> Self {
        match (&self, self.variable()) {
            (Self::Env { .. }, _) | (_, None) => self,
            (_, Some(var)) => Self::Env {
                var,
                reason: self.to_string(),
            },
        }
    }
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
    use super::{settings::MAX_DURATION, *};

    const SECRET: &str = "reallyreallyreallyreallyverysafe";

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
            .jwt_secret(SECRET)
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
        let b = || Config::builder().jwt_secret(SECRET);
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
        let b = || Config::builder().jwt_secret(SECRET);
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
