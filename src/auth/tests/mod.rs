//! The token check and the channel grant against PROTOCOL.md §2 to §4.

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;

use super::*;

mod audience;
mod channels;
mod grant;
mod keys;
mod refusals;
mod times;

const SECRET: &str = "reallyreallyreallyreallyverysafe";

const RSA_PRIVATE: &str = include_str!("../../../tests/fixtures/keys/rsa_private.pem");
const RSA_PUBLIC_PEM: &str = include_str!("../../../tests/fixtures/keys/rsa_public.pem");
const RSA_JWK: &str = include_str!("../../../tests/fixtures/keys/rsa_public.jwk.json");
const EC_PRIVATE: &str = include_str!("../../../tests/fixtures/keys/ec_private.pem");
const EC_JWK: &str = include_str!("../../../tests/fixtures/keys/ec_public.jwk.json");
const ED_PRIVATE: &str = include_str!("../../../tests/fixtures/keys/ed25519_private.pem");
const ED_JWK: &str = include_str!("../../../tests/fixtures/keys/ed25519_public.jwk.json");

// ---- helpers ---------------------------------------------------------------------------

fn keys(secret: &str, base64: bool) -> Arc<Keys> {
    match Keys::from_secret(secret, base64, false) {
        Ok(keys) => Arc::new(keys),
        Err(e) => panic!("secret refused: {e}"),
    }
}

fn authorizer_with(secret: &str, base64: bool) -> Authorizer {
    Authorizer {
        keys: keys(secret, base64),
        audience: None,
        leeway: Duration::ZERO,
        max_channels: 100,
        mapping: crate::mapping::Mapping::PerChannel,
    }
}

fn authorizer() -> Authorizer {
    authorizer_with(SECRET, false)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hmac() -> EncodingKey {
    EncodingKey::from_secret(SECRET.as_bytes())
}

fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap()
}

fn ec() -> EncodingKey {
    EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap()
}

fn ed() -> EncodingKey {
    EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap()
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).unwrap()
}

/// An HS256 token with [`SECRET`].
fn hs(claims: &Value) -> String {
    sign(Algorithm::HS256, None, &hmac(), claims)
}

/// `rw` on `chat`, valid for an hour.
fn good() -> Value {
    json!({"mode": "rw", "channel": "chat", "exp": now() + 3600})
}

fn with(mut claims: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

fn refusal(result: Result<Grant, Refusal>) -> Refusal {
    match result {
        Ok(grant) => panic!("accepted: {grant:?}"),
        Err(refusal) => refusal,
    }
}

fn accepted(result: Result<Grant, Refusal>) -> Grant {
    match result {
        Ok(grant) => grant,
        Err(refusal) => panic!("refused: {refusal}"),
    }
}

fn assert_invalid(result: Result<Grant, Refusal>) {
    let r = refusal(result);
    assert!(matches!(r, Refusal::InvalidToken(_)), "{r:?}");
}

/// The channels granted to an HS256 token with these claims and path channel.
fn channels(path: Option<&str>, claims: Value) -> Result<Vec<String>, Refusal> {
    authorizer()
        .authorize(path, &hs(&claims))
        .map(|grant| grant.channels)
}

fn claimed(extra: Value) -> Value {
    with(json!({"mode": "r"}), extra)
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A token assembled by hand from a header and claims, with a given signature part.
fn hand_made(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

fn at(secs: f64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs_f64(secs)
}

fn times(leeway: u64, claims: Value, now: f64) -> Result<Option<SystemTime>, Refusal> {
    let mut auth = authorizer();
    auth.leeway = Duration::from_secs(leeway);
    auth.check_times(claims.as_object().unwrap(), at(now))
}
