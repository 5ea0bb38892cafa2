//! The verification keys: a shared secret (raw or base64), a JWK or a JWKS.
//!
//! Two secrets that would quietly weaken every token are refused at start-up: a
//! PEM key (it would be taken as an HMAC secret, so anyone holding the public key
//! could sign tokens) and an HMAC key under [`MIN_HMAC_BYTES`], unless allowed.

use std::str::FromStr;

use base64::Engine as _;
use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk},
};
use serde_json::{Map, Value};

use crate::error::ConfigError;

/// Every usable key of the configured secret.
pub(crate) struct Keys {
    keys: Vec<Key>,
}

struct Key {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

const HMAC: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

/// The shortest HMAC key taken unless short keys are allowed: 32 bytes, PostgREST's
/// rule (and HS256's output size, RFC 7518 §3.2).
pub(crate) const MIN_HMAC_BYTES: usize = 32;

impl Keys {
    /// Parses the configured secret; a secret with no usable key is an error, and
    /// so are a PEM key and, unless `allow_short`, an HMAC key under
    /// [`MIN_HMAC_BYTES`].
    pub(crate) fn from_secret(
        secret: &str,
        base64: bool,
        allow_short: bool,
    ) -> Result<Keys, ConfigError> {
        if secret.trim_start().starts_with("-----BEGIN") {
            return Err(ConfigError::InvalidSecret(
                "a PEM key is not taken (it would be used as an HMAC secret): \
                 give the public key as a JWK, a JSON object with kty, or a JWKS"
                    .into(),
            ));
        }
        let keys = match json_object(secret) {
            Some(obj) if obj.contains_key("keys") => jwks(&obj, allow_short)?,
            Some(obj) if obj.contains_key("kty") => {
                jwk(Value::Object(obj), allow_short)?.into_iter().collect()
            }
            _ => vec![raw(secret, base64, allow_short)?],
        };
        if keys.is_empty() {
            return Err(ConfigError::InvalidSecret("no usable signing key".into()));
        }
        Ok(Keys { keys })
    }

    /// The keys that may verify a token with this `alg` and `kid`: a key without a
    /// `kid` serves any token, as in PostgREST.
    pub(crate) fn candidates<'a>(
        &'a self,
        alg: Algorithm,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a DecodingKey> + 'a {
        self.keys
            .iter()
            .filter(move |k| kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid)
            .filter(move |k| k.algorithms.contains(&alg))
            .map(|k| &k.key)
    }

    /// Whether some key may verify a token with this `kid`.
    pub(crate) fn knows_kid(&self, kid: &str) -> bool {
        self.keys
            .iter()
            .any(|k| k.kid.is_none() || k.kid.as_deref() == Some(kid))
    }
}

fn json_object(secret: &str) -> Option<Map<String, Value>> {
    match serde_json::from_str::<Value>(secret.trim()) {
        Ok(Value::Object(obj)) => Some(obj),
        _ => None,
    }
}

fn raw(secret: &str, base64: bool, allow_short: bool) -> Result<Key, ConfigError> {
    let bytes = if base64 {
        decode_base64(secret.trim())
            .ok_or_else(|| ConfigError::InvalidSecret("PGWS_JWT_SECRET is not base64".into()))?
    } else {
        secret.as_bytes().to_vec()
    };
    if bytes.is_empty() {
        return Err(ConfigError::InvalidSecret("the secret is empty".into()));
    }
    check_hmac_len(bytes.len(), allow_short)?;
    Ok(Key {
        kid: None,
        algorithms: HMAC.to_vec(),
        key: DecodingKey::from_secret(&bytes),
    })
}

/// Standard or URL-safe alphabet, padding optional.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let unpadded = text.trim_end_matches('=');
    let engine = base64::engine::general_purpose::STANDARD_NO_PAD;
    let normalized: String = unpadded
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    engine.decode(normalized).ok()
}

/// An HMAC key of `len` bytes is long enough, or short keys are allowed.
fn check_hmac_len(len: usize, allow_short: bool) -> Result<(), ConfigError> {
    if len < MIN_HMAC_BYTES && !allow_short {
        return Err(ConfigError::InvalidSecret(format!(
            "an HMAC key of {len} bytes is too short: give at least {MIN_HMAC_BYTES} \
             (or allow short keys with jwt_secret_allow_short, PGWS_JWT_SECRET_ALLOW_SHORT)"
        )));
    }
    Ok(())
}

fn jwks(obj: &Map<String, Value>, allow_short: bool) -> Result<Vec<Key>, ConfigError> {
    let Some(Value::Array(keys)) = obj.get("keys") else {
        return Err(ConfigError::InvalidSecret("`keys` is not an array".into()));
    };
    let mut usable = Vec::new();
    for key in keys {
        usable.extend(jwk(key.clone(), allow_short)?);
    }
    Ok(usable)
}

/// One JWK, or `None` when it cannot verify signatures here (it is then skipped);
/// a short `oct` key is an error, not skipped, so that it is not missed.
fn jwk(value: Value, allow_short: bool) -> Result<Option<Key>, ConfigError> {
    let Some((jwk, declared)) = signing_jwk(value) else {
        return Ok(None);
    };
    if let AlgorithmParameters::OctetKey(oct) = &jwk.algorithm {
        let len = decode_base64(&oct.value).map_or(0, |k| k.len());
        check_hmac_len(len, allow_short)?;
    }
    let Ok(key) = DecodingKey::from_jwk(&jwk) else {
        return Ok(None);
    };
    let algorithms = match declared {
        Some(alg) => vec![alg],
        None => match family_algorithms(&jwk.algorithm) {
            Some(algorithms) => algorithms,
            None => return Ok(None),
        },
    };
    Ok(Some(Key {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key,
    }))
}

/// A JWK for signatures and its declared `alg`, or `None` for one to skip.
fn signing_jwk(value: Value) -> Option<(Jwk, Option<Algorithm>)> {
    if value.get("use").and_then(Value::as_str) == Some("enc") {
        return None;
    }
    let declared = match value.get("alg") {
        None => None,
        Some(alg) => Some(Algorithm::from_str(alg.as_str()?).ok()?),
    };
    let jwk: Jwk = serde_json::from_value(value).ok()?;
    Some((jwk, declared))
}

fn family_algorithms(params: &AlgorithmParameters) -> Option<Vec<Algorithm>> {
    use Algorithm::*;
    Some(match params {
        AlgorithmParameters::OctetKey(_) => HMAC.to_vec(),
        AlgorithmParameters::RSA(_) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![ES256],
            EllipticCurve::P384 => vec![ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(_) => vec![EdDSA],
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_accepts_both_alphabets_and_missing_padding() {
        assert_eq!(decode_base64("aGk/Pz8+").unwrap(), b"hi???>");
        assert_eq!(decode_base64("aGk_Pz8-").unwrap(), b"hi???>");
        assert_eq!(decode_base64("aGk").unwrap(), b"hi");
        assert_eq!(decode_base64("aGk=").unwrap(), b"hi");
        assert!(decode_base64("not base64!").is_none());
    }

    #[test]
    fn jwks_skips_encryption_and_unknown_keys() {
        let jwks = r#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0","use":"enc"},
            {"kty":"XYZ","k":"c2VjcmV0"},
            {"kty":"oct","k":"c2VjcmV0","kid":"a","alg":"HS384"}]}"#;
        let keys = Keys::from_secret(jwks, false, true).unwrap();
        assert_eq!(keys.keys.len(), 1);
        assert_eq!(keys.keys[0].algorithms, vec![Algorithm::HS384]);
        assert!(keys.knows_kid("a"));
    }

    #[test]
    fn a_secret_without_usable_keys_is_refused() {
        let only_enc = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","use":"enc"}]}"#;
        assert!(Keys::from_secret(only_enc, false, true).is_err());
        assert!(Keys::from_secret("", false, true).is_err());
        assert!(Keys::from_secret("%%%", true, true).is_err());
    }
}
