//! The token check and the channel grant (PROTOCOL.md §2 to §4).

mod keys;

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Validation, decode, decode_header, errors::ErrorKind};
use serde_json::{Map, Value};

pub(crate) use keys::Keys;

use crate::{
    mapping::{Claims, Mapping},
    refusal::Refusal,
};

/// What a token lets a socket do with its channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `r`: receive notifications.
    Read,
    /// `w`: send messages.
    Write,
    /// `rw`: both.
    ReadWrite,
}

impl Mode {
    /// Whether the socket receives notifications.
    pub fn reads(self) -> bool {
        matches!(self, Mode::Read | Mode::ReadWrite)
    }

    /// Whether the socket may send messages.
    pub fn writes(self) -> bool {
        matches!(self, Mode::Write | Mode::ReadWrite)
    }

    /// The claim's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Read => "r",
            Mode::Write => "w",
            Mode::ReadWrite => "rw",
        }
    }
}

/// What an accepted token grants.
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    pub(crate) mode: Mode,
    pub(crate) channels: Vec<String>,
    /// The claims, encoded once per socket for every envelope.
    pub(crate) claims: Claims,
    /// When the socket must close with 3001 (`exp` plus the leeway).
    pub(crate) expires_at: Option<SystemTime>,
}

/// The channels a token lets a session socket subscribe to (PROTOCOL.md §17).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Allowed {
    /// A token without a channel claim: only the channel of its path.
    Path(String),
    /// The token's claims: literal names, and the prefixes of `channels` entries
    /// that end in `*`.
    Claims {
        names: Vec<String>,
        prefixes: Vec<String>,
    },
}

impl Allowed {
    /// Whether `channel` is granted.
    pub(crate) fn allows(&self, channel: &str) -> bool {
        match self {
            Allowed::Path(path) => path == channel,
            Allowed::Claims { names, prefixes } => {
                names.iter().any(|n| n == channel)
                    || prefixes.iter().any(|p| channel.starts_with(p.as_str()))
            }
        }
    }

    /// The one channel granted, when there is exactly one and no pattern.
    pub(crate) fn only(&self) -> Option<&str> {
        match self {
            Allowed::Path(path) => Some(path),
            Allowed::Claims { names, prefixes } if prefixes.is_empty() && names.len() == 1 => {
                Some(&names[0])
            }
            Allowed::Claims { .. } => None,
        }
    }
}

/// What a session socket keeps of its token besides its [`Grant`].
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    pub(crate) allowed: Allowed,
    /// The `sub` claim: a refreshed token must carry the same.
    pub(crate) sub: Option<Value>,
    /// The `exp` claim, as given.
    pub(crate) exp: Option<Value>,
}

/// Checks tokens against the configured keys and rules.
pub(crate) struct Authorizer {
    keys: Arc<Keys>,
    audience: Option<String>,
    leeway: Duration,
    max_channels: usize,
    /// Encodes the claims in the form of the configured mapping's envelope.
    mapping: Mapping,
}

impl Authorizer {
    pub(crate) fn new(
        keys: Arc<Keys>,
        audience: Option<String>,
        leeway: Duration,
        max_channels: usize,
        mapping: Mapping,
    ) -> Self {
        Self {
            keys,
            audience,
            leeway,
            max_channels,
            mapping,
        }
    }

    /// The whole check, in the order of refusals of PROTOCOL.md §5.
    pub(crate) fn authorize(
        &self,
        path_channel: Option<&str>,
        token: &str,
    ) -> Result<Grant, Refusal> {
        self.authorize_for(path_channel, token, false)
            .map(|(grant, _)| grant)
    }

    /// The same check for a session socket, which may start with no channel
    /// (a token granting only patterns); with what the session keeps of it.
    pub(crate) fn authorize_session(
        &self,
        path_channel: Option<&str>,
        token: &str,
    ) -> Result<(Grant, Scope), Refusal> {
        self.authorize_for(path_channel, token, true)
    }

    fn authorize_for(
        &self,
        path_channel: Option<&str>,
        token: &str,
        session: bool,
    ) -> Result<(Grant, Scope), Refusal> {
        let claims = self.verify(token)?;
        let expires_at = self.check_times(&claims, SystemTime::now())?;
        let mode = mode(&claims)?;
        let (channels, allowed) =
            grant_channels(path_channel, &claims, self.max_channels, session)?;
        let scope = Scope {
            allowed,
            sub: claims.get("sub").cloned(),
            exp: claims.get("exp").cloned(),
        };
        let claims = self.mapping.claims(&claims);
        let grant = Grant {
            mode,
            channels,
            claims,
            expires_at,
        };
        Ok((grant, scope))
    }

    fn verify(&self, token: &str) -> Result<Map<String, Value>, Refusal> {
        let header = decode_header(token).map_err(|e| invalid(&e))?;
        if let Some(kid) = header.kid.as_deref()
            && !self.keys.knows_kid(kid)
        {
            return Err(Refusal::InvalidToken("unknown kid".into()));
        }
        let mut validation = Validation::new(header.alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let mut error = Refusal::InvalidToken("algorithm not allowed by the key".into());
        for key in self.keys.candidates(header.alg, header.kid.as_deref()) {
            match decode::<Map<String, Value>>(token, key, &validation) {
                Ok(data) => return self.check_audience(data.claims),
                Err(e) => error = invalid(&e),
            }
        }
        Err(error)
    }

    /// PostgREST's rule: a token without `aud` passes; one with `aud` must name ours.
    fn check_audience(&self, claims: Map<String, Value>) -> Result<Map<String, Value>, Refusal> {
        let (Some(ours), Some(aud)) = (&self.audience, claims.get("aud")) else {
            return Ok(claims);
        };
        let matches = match aud {
            Value::String(s) => s == ours,
            Value::Array(items) => items.iter().any(|i| i.as_str() == Some(ours)),
            _ => false,
        };
        if matches {
            Ok(claims)
        } else {
            Err(Refusal::InvalidToken("aud mismatch".into()))
        }
    }

    fn check_times(
        &self,
        claims: &Map<String, Value>,
        now: SystemTime,
    ) -> Result<Option<SystemTime>, Refusal> {
        let (exp, nbf, iat) = (
            numeric(claims, "exp")?,
            numeric(claims, "nbf")?,
            numeric(claims, "iat")?,
        );
        let now = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let leeway = self.leeway.as_secs_f64();
        if exp.is_some_and(|exp| now >= exp + leeway) {
            return Err(Refusal::TokenExpired);
        }
        if nbf.is_some_and(|nbf| now < nbf - leeway) || iat.is_some_and(|iat| iat > now + leeway) {
            return Err(Refusal::NotYetValid);
        }
        // An `exp` too far away for a `SystemTime` never closes the socket.
        Ok(exp.and_then(|exp| {
            Duration::try_from_secs_f64((exp + leeway).max(0.0))
                .ok()
                .and_then(|d| UNIX_EPOCH.checked_add(d))
        }))
    }
}

fn invalid(e: &jsonwebtoken::errors::Error) -> Refusal {
    let why = match e.kind() {
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => "algorithm not allowed",
        ErrorKind::InvalidAudience => "aud mismatch",
        _ => "malformed token",
    };
    Refusal::InvalidToken(why.into())
}

fn numeric(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, Refusal> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err(Refusal::InvalidToken(format!("non-numeric {name}"))),
    }
}

fn mode(claims: &Map<String, Value>) -> Result<Mode, Refusal> {
    match claims.get("mode").and_then(Value::as_str) {
        None => Err(Refusal::MissingMode),
        Some("r") => Ok(Mode::Read),
        Some("w") => Ok(Mode::Write),
        Some("rw") => Ok(Mode::ReadWrite),
        Some(_) => Err(Refusal::InvalidMode),
    }
}

/// `channel` first, then `channels`, duplicates removed; `None` when neither is
/// claimed. A `channels` entry ending in `*` is a pattern, kept as its prefix; the
/// `channel` claim is always a name. A claim of another shape is refused: taking
/// it as absent would grant any path channel.
fn claimed_channels(claims: &Map<String, Value>) -> Result<Option<Allowed>, Refusal> {
    let channel = match claims.get("channel") {
        None => None,
        Some(Value::String(c)) => Some(c.as_str()),
        Some(_) => return Err(Refusal::InvalidChannelClaim),
    };
    let channels = match claims.get("channels") {
        None => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|i| i.as_str().ok_or(Refusal::InvalidChannelClaim))
                .collect::<Result<Vec<&str>, Refusal>>()?,
        ),
        Some(_) => return Err(Refusal::InvalidChannelClaim),
    };
    if channel.is_none() && channels.is_none() {
        return Ok(None);
    }
    let mut names: Vec<String> = Vec::new();
    let mut prefixes: Vec<String> = Vec::new();
    let entries = channels.into_iter().flatten();
    for (c, literal) in channel
        .map(|c| (c, true))
        .into_iter()
        .chain(entries.map(|c| (c, false)))
    {
        let (list, c) = match c.strip_suffix('*') {
            Some(prefix) if !literal => (&mut prefixes, prefix),
            _ => (&mut names, c),
        };
        if !list.iter().any(|o| o == c) {
            list.push(c.to_owned());
        }
    }
    Ok(Some(Allowed::Claims { names, prefixes }))
}

/// PROTOCOL.md §4: an absent claim lets the path name any channel; a present one,
/// an empty list included, must name it or match one of its patterns. A URL
/// without a channel starts with the claimed names (none, for a session socket
/// whose token claims only patterns).
fn grant_channels(
    path_channel: Option<&str>,
    claims: &Map<String, Value>,
    max_channels: usize,
    session: bool,
) -> Result<(Vec<String>, Allowed), Refusal> {
    let claimed = claimed_channels(claims)?;
    let (granted, allowed) = match (path_channel, claimed) {
        (Some(raw), claimed) => {
            let channel = decode_path_channel(raw)?;
            let allowed = match claimed {
                Some(claimed) if !claimed.allows(&channel) => {
                    return Err(Refusal::NoAllowedChannels);
                }
                Some(claimed) => claimed,
                None => Allowed::Path(channel.clone()),
            };
            (vec![channel], allowed)
        }
        (None, Some(Allowed::Claims { names, prefixes }))
            if !names.is_empty() || (session && !prefixes.is_empty()) =>
        {
            let allowed = Allowed::Claims {
                names: names.clone(),
                prefixes,
            };
            (names, allowed)
        }
        (None, _) => return Err(Refusal::NoAllowedChannels),
    };
    for channel in &granted {
        check_channel_name(channel).map_err(|_| Refusal::InvalidChannelName)?;
    }
    if granted.len() > max_channels {
        return Err(Refusal::TooManyChannels);
    }
    Ok((granted, allowed))
}

fn decode_path_channel(raw: &str) -> Result<String, Refusal> {
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| Refusal::InvalidChannelName)?;
    check_channel_name(&decoded).map_err(|_| Refusal::InvalidChannelName)?;
    Ok(decoded.into_owned())
}

/// A PostgreSQL identifier: 1 to 63 bytes, no NUL.
pub(crate) fn check_channel_name(name: &str) -> Result<(), ()> {
    if name.is_empty() || name.len() > 63 || name.contains('\0') {
        Err(())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
