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
