//! Error types that say what went wrong.

use std::fmt;

/// A configuration that cannot be used, found when building a [`Config`](crate::Config).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// No JWT secret was given.
    MissingSecret,
    /// The JWT secret holds no usable key (bad base64, bad JWK, a JWKS with only
    /// encryption keys, …).
    InvalidSecret(String),
    /// The database URI does not parse.
    InvalidDatabaseUrl(String),
    /// A channel name in the configuration is empty, longer than 63 bytes or holds NUL.
    InvalidChannel {
        /// Which setting holds it.
        setting: &'static str,
        /// The offending name.
        name: String,
    },
    /// A setting is out of its range.
    InvalidValue {
        /// Which setting.
        setting: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// An environment variable has a value that cannot be used.
    Env {
        /// The variable's name.
        var: &'static str,
        /// Why it is refused.
        reason: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingSecret => f.write_str("no JWT secret configured"),
            Self::InvalidSecret(why) => write!(f, "invalid JWT secret: {why}"),
            Self::InvalidDatabaseUrl(why) => write!(f, "invalid database URI: {why}"),
            Self::InvalidChannel { setting, name } => {
                write!(f, "invalid channel name {name:?} in {setting}")
            }
            Self::InvalidValue { setting, reason } => write!(f, "invalid {setting}: {reason}"),
            Self::Env { var, reason } => write!(f, "{var}: {reason}"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// The `PGWS_*` variable behind this error, when it came from one.
    pub fn variable(&self) -> Option<&'static str> {
        Some(match self {
            Self::MissingSecret | Self::InvalidSecret(_) => "PGWS_JWT_SECRET",
            Self::InvalidDatabaseUrl(_) => "PGWS_DB_URI",
            Self::InvalidChannel { setting, .. } | Self::InvalidValue { setting, .. } => {
                setting_variable(setting)?
            }
            Self::Env { var, .. } => var,
        })
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

fn setting_variable(setting: &str) -> Option<&'static str> {
    Some(match setting {
        "listen_channel" => "PGWS_LISTEN_CHANNEL",
        "meta_channel" => "PGWS_META_CHANNEL",
        "pool_size" => "PGWS_POOL_SIZE",
        "queue_length" => "PGWS_QUEUE_LENGTH",
        "max_message_bytes" => "PGWS_MAX_MESSAGE_BYTES",
        "max_channels" => "PGWS_MAX_CHANNELS",
        "max_sockets" => "PGWS_MAX_SOCKETS",
        "subscribe_timeout" => "PGWS_SUBSCRIBE_TIMEOUT",
        "ping_interval" => "PGWS_PING_INTERVAL",
        "check_listener_interval" => "PGWS_CHECK_LISTENER_INTERVAL",
        "leeway" => "PGWS_JWT_LEEWAY",
        _ => return None,
    })
}

/// An error and its causes, `a: b: c`. tokio-postgres's own text leaves the cause
/// out ("error performing TLS handshake", "db error"), and the cause is what says
/// what to fix. A cause already ending the text (as deadpool repeats it) is not
/// added twice.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}
