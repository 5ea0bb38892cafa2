//! The token check and the channel grant against PROTOCOL.md §2 to §4.

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;

use super::*;

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
    match Keys::from_secret(secret, base64) {
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

// ---- the refusal table: status and body ------------------------------------------------

#[test]
fn each_refusal_has_the_status_and_body_of_its_row() {
    let rows = [
        (
            Refusal::InvalidToken("bad signature".into()),
            401,
            "Invalid token",
        ),
        (Refusal::TokenExpired, 401, "Token expired"),
        (Refusal::NotYetValid, 401, "Token not yet valid"),
        (Refusal::MissingMode, 403, "Missing mode"),
        (Refusal::InvalidMode, 403, "Invalid mode"),
        (Refusal::InvalidChannelName, 400, "Invalid channel name"),
        (Refusal::NoAllowedChannels, 403, "No allowed channels"),
        (Refusal::TooManyChannels, 403, "Too many channels"),
    ];
    for (refusal, status, body) in rows {
        assert_eq!(refusal.status().as_u16(), status, "{refusal:?}");
        assert!(refusal.to_string().starts_with(body), "{refusal}");
    }
}

#[test]
fn a_good_token_is_accepted() {
    let grant = accepted(authorizer().authorize(None, &hs(&good())));
    assert_eq!(grant.mode, Mode::ReadWrite);
    assert_eq!(grant.channels, ["chat"]);
    assert!(grant.expires_at.is_some());
}

#[test]
fn modes_map_to_read_write_and_both() {
    for (mode, want, reads, writes) in [
        ("r", Mode::Read, true, false),
        ("w", Mode::Write, false, true),
        ("rw", Mode::ReadWrite, true, true),
    ] {
        let grant =
            accepted(authorizer().authorize(None, &hs(&with(good(), json!({"mode": mode})))));
        assert_eq!(grant.mode, want);
        assert_eq!(grant.mode.as_str(), mode);
        assert_eq!((grant.mode.reads(), grant.mode.writes()), (reads, writes));
    }
}

// Row 1: Invalid token.

#[test]
fn a_bad_signature_is_an_invalid_token() {
    let other = EncodingKey::from_secret(b"another secret entirely, not ours");
    let token = sign(Algorithm::HS256, None, &other, &good());
    assert_invalid(authorizer().authorize(None, &token));
}

#[test]
fn a_tampered_payload_is_an_invalid_token() {
    let token = hs(&good());
    let parts: Vec<&str> = token.split('.').collect();
    let forged = b64url(
        with(good(), json!({"channel": "admin"}))
            .to_string()
            .as_bytes(),
    );
    let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
    assert_invalid(authorizer().authorize(None, &tampered));
}

#[test]
fn malformed_tokens_are_invalid_tokens() {
    let header = json!({"alg": "HS256", "typ": "JWT"});
    let not_json = format!(
        "{}.{}.c2ln",
        b64url(header.to_string().as_bytes()),
        b64url(b"not json")
    );
    let not_an_object = hand_made(&header, &json!(["mode", "r"]), "c2ln");
    for token in [
        "abc.def.ghi",
        "eyJhbGciOiJIUzI1NiJ9.eyJtb2RlIjoiciJ9.c2ln",
        "a.b.",
        "garbage",
        "",
        &not_json,
        &not_an_object,
    ] {
        assert_invalid(authorizer().authorize(None, token));
    }
}

#[test]
fn an_empty_signature_is_an_invalid_token() {
    let token = hs(&good());
    let unsigned = &token[..=token.rfind('.').unwrap()];
    assert!(unsigned.ends_with('.'));
    assert_invalid(authorizer().authorize(None, unsigned));
}

#[test]
fn alg_none_is_an_invalid_token() {
    for header in [json!({"alg": "none"}), json!({"alg": "none", "typ": "JWT"})] {
        assert_invalid(authorizer().authorize(None, &hand_made(&header, &good(), "")));
        // Even with a signature that is right for HS256 over the same input.
        let real = hs(&good());
        let sig = real.rsplit('.').next().unwrap();
        assert_invalid(authorizer().authorize(None, &hand_made(&header, &good(), sig)));
    }
}

#[test]
fn an_unknown_kid_is_an_invalid_token() {
    let jwks = r#"{"keys":[{"kty":"oct","kid":"a","k":"c2VjcmV0LWE"}]}"#;
    let auth = authorizer_with(jwks, false);
    let key = EncodingKey::from_secret(b"secret-a");
    let token = sign(Algorithm::HS256, Some("zzz"), &key, &good());
    assert_eq!(
        refusal(auth.authorize(None, &token)),
        Refusal::InvalidToken("unknown kid".into())
    );
}

#[test]
fn non_numeric_times_are_invalid_tokens() {
    for claim in ["exp", "nbf", "iat"] {
        for value in [
            json!("1700000000"),
            json!(true),
            json!([1]),
            json!({"t": 1}),
            Value::Null,
        ] {
            let claims = with(without(good(), "exp"), json!({ claim: value }));
            let r = refusal(authorizer().authorize(None, &hs(&claims)));
            assert!(
                matches!(r, Refusal::InvalidToken(_)),
                "{claim}: {value}: {r:?}"
            );
            // Even with a passed exp or a future nbf beside it.
            let claims = with(claims, json!({"exp": now() - 10, "nbf": now() + 600}));
            let claims = with(claims, json!({ claim: value }));
            let r = refusal(authorizer().authorize(None, &hs(&claims)));
            assert!(
                matches!(r, Refusal::InvalidToken(_)),
                "{claim}: {value}: {r:?}"
            );
        }
    }
}

// Rows 2 and 3: times.

#[test]
fn a_passed_exp_is_expired() {
    let claims = with(good(), json!({"exp": now() - 10}));
    assert_eq!(
        refusal(authorizer().authorize(None, &hs(&claims))),
        Refusal::TokenExpired
    );
}

#[test]
fn a_future_nbf_or_iat_is_not_yet_valid() {
    for claim in ["nbf", "iat"] {
        let claims = with(good(), json!({ claim: now() + 600 }));
        assert_eq!(
            refusal(authorizer().authorize(None, &hs(&claims))),
            Refusal::NotYetValid,
            "{claim}"
        );
        let claims = with(good(), json!({ claim: now() - 600 }));
        accepted(authorizer().authorize(None, &hs(&claims)));
    }
}

#[test]
fn exp_is_optional() {
    let grant = accepted(authorizer().authorize(None, &hs(&without(good(), "exp"))));
    assert_eq!(grant.expires_at, None);
}

#[test]
fn now_equal_to_exp_is_refused() {
    let claims = json!({"exp": 1000});
    assert_eq!(times(0, claims.clone(), 1000.0), Err(Refusal::TokenExpired));
    assert_eq!(times(0, claims.clone(), 1000.5), Err(Refusal::TokenExpired));
    assert_eq!(times(0, claims, 999.999), Ok(Some(at(1000.0))));
}

#[test]
fn nbf_is_refused_only_before_it() {
    let claims = json!({"nbf": 1000});
    assert_eq!(times(0, claims.clone(), 999.5), Err(Refusal::NotYetValid));
    assert_eq!(times(0, claims.clone(), 1000.0), Ok(None));
    assert_eq!(times(0, claims, 5000.0), Ok(None));
}

#[test]
fn iat_is_refused_only_in_the_future() {
    let claims = json!({"iat": 1000});
    assert_eq!(times(0, claims.clone(), 999.5), Err(Refusal::NotYetValid));
    assert_eq!(times(0, claims.clone(), 1000.0), Ok(None));
    assert_eq!(times(0, claims, 5000.0), Ok(None));
}

#[test]
fn leeway_widens_exp_nbf_and_iat() {
    // exp: refused from exp + leeway on; the socket's deadline includes the leeway.
    let exp = json!({"exp": 1000});
    assert_eq!(times(10, exp.clone(), 1009.5), Ok(Some(at(1010.0))));
    assert_eq!(times(10, exp.clone(), 1010.0), Err(Refusal::TokenExpired));
    assert_eq!(times(10, exp, 1100.0), Err(Refusal::TokenExpired));
    // nbf: accepted from nbf - leeway on.
    let nbf = json!({"nbf": 1000});
    assert_eq!(times(10, nbf.clone(), 990.0), Ok(None));
    assert_eq!(times(10, nbf.clone(), 989.5), Err(Refusal::NotYetValid));
    // iat: accepted up to leeway in the future.
    let iat = json!({"iat": 1000});
    assert_eq!(times(10, iat.clone(), 990.0), Ok(None));
    assert_eq!(times(10, iat, 989.5), Err(Refusal::NotYetValid));
}

#[test]
fn leeway_applies_through_authorize() {
    let mut auth = authorizer();
    auth.leeway = Duration::from_secs(60);
    for claims in [
        with(good(), json!({"exp": now() - 10})),
        with(good(), json!({"nbf": now() + 10})),
        with(good(), json!({"iat": now() + 10})),
    ] {
        accepted(auth.authorize(None, &hs(&claims)));
    }
    let claims = with(good(), json!({"exp": now() - 120}));
    assert_eq!(
        refusal(auth.authorize(None, &hs(&claims))),
        Refusal::TokenExpired
    );
    let claims = with(good(), json!({"nbf": now() + 120}));
    assert_eq!(
        refusal(auth.authorize(None, &hs(&claims))),
        Refusal::NotYetValid
    );
}

#[test]
fn float_times_are_accepted() {
    let exp = now() as f64 + 3600.5;
    let claims = with(good(), json!({"exp": exp, "nbf": 1.5, "iat": 2.25}));
    let grant = accepted(authorizer().authorize(None, &hs(&claims)));
    assert_eq!(grant.expires_at, Some(at(exp)));
    assert_eq!(
        times(0, json!({"exp": 1000.5}), 1000.4),
        Ok(Some(at(1000.5)))
    );
    assert_eq!(
        times(0, json!({"exp": 1000.5}), 1000.5),
        Err(Refusal::TokenExpired)
    );
}

#[test]
fn a_far_future_exp_is_accepted() {
    // Past what a `SystemTime` or a `Duration` holds: such a token never expires.
    for exp in [json!(u64::MAX), json!(1e300), json!(9.3e18)] {
        let claims = with(good(), json!({ "exp": exp }));
        let grant = accepted(authorizer().authorize(None, &hs(&claims)));
        assert!(grant.expires_at.is_none_or(|t| t > SystemTime::now()));
    }
}

// Rows 4 and 5: mode.

#[test]
fn an_absent_or_non_string_mode_is_missing() {
    for mode in [None, Some(json!(1)), Some(Value::Null), Some(json!(["r"]))] {
        let claims = match &mode {
            None => without(good(), "mode"),
            Some(m) => with(good(), json!({ "mode": m })),
        };
        assert_eq!(
            refusal(authorizer().authorize(None, &hs(&claims))),
            Refusal::MissingMode,
            "{mode:?}"
        );
    }
}

#[test]
fn an_unknown_mode_is_invalid() {
    for mode in ["", "x", "R", "RW", "wr", "rwx", " r"] {
        let claims = with(good(), json!({ "mode": mode }));
        assert_eq!(
            refusal(authorizer().authorize(None, &hs(&claims))),
            Refusal::InvalidMode,
            "{mode:?}"
        );
    }
}

// Rows 6 to 9: channels.

#[test]
fn a_bad_path_channel_is_an_invalid_channel_name() {
    let long = "a".repeat(64);
    for path in ["", long.as_str(), "a%00b", "%FF", "%C3", "a%E9b"] {
        assert_eq!(
            channels(Some(path), claimed(json!({}))),
            Err(Refusal::InvalidChannelName),
            "{path:?}"
        );
    }
}

#[test]
fn a_bad_granted_channel_is_an_invalid_channel_name() {
    let long = "a".repeat(64);
    for name in ["", long.as_str(), "a\0b"] {
        assert_eq!(
            channels(None, claimed(json!({"channel": name}))),
            Err(Refusal::InvalidChannelName),
            "{name:?}"
        );
        assert_eq!(
            channels(None, claimed(json!({"channels": ["ok", name]}))),
            Err(Refusal::InvalidChannelName),
            "{name:?}"
        );
    }
}

#[test]
fn too_many_channels_are_refused() {
    let mut auth = authorizer();
    auth.max_channels = 2;
    let three = claimed(json!({"channels": ["a", "b", "c"]}));
    assert_eq!(
        refusal(auth.authorize(None, &hs(&three))),
        Refusal::TooManyChannels
    );
    let two = claimed(json!({"channels": ["a", "b"]}));
    assert_eq!(
        accepted(auth.authorize(None, &hs(&two))).channels,
        ["a", "b"]
    );
    // Duplicates count once.
    let dup = claimed(json!({"channel": "a", "channels": ["a", "b", "b"]}));
    assert_eq!(
        accepted(auth.authorize(None, &hs(&dup))).channels,
        ["a", "b"]
    );
    // A path channel grants one channel only, whatever is claimed.
    auth.max_channels = 1;
    assert_eq!(
        accepted(auth.authorize(Some("b"), &hs(&three))).channels,
        ["b"]
    );
}

// The first row wins.

#[test]
fn invalid_token_wins_over_every_later_row() {
    let other = EncodingKey::from_secret(b"another secret entirely, not ours");
    let everything_wrong = json!({"exp": now() - 10, "nbf": now() + 600, "mode": "x"});
    let token = sign(Algorithm::HS256, None, &other, &everything_wrong);
    assert_invalid(authorizer().authorize(Some(""), &token));
    // Non-numeric nbf with a passed exp: row 1, not row 2.
    let claims = json!({"exp": now() - 10, "nbf": "soon"});
    assert_invalid(authorizer().authorize(None, &hs(&claims)));
    // An aud mismatch with a passed exp.
    let mut auth = authorizer();
    auth.audience = Some("api".into());
    let claims = json!({"exp": now() - 10, "aud": "other"});
    assert_invalid(auth.authorize(None, &hs(&claims)));
}

#[test]
fn expired_wins_over_not_yet_valid_and_mode_and_channels() {
    let claims = json!({"exp": now() - 10, "nbf": now() + 600});
    assert_eq!(
        refusal(authorizer().authorize(None, &hs(&claims))),
        Refusal::TokenExpired
    );
    // An expired token without a mode.
    let claims = json!({"exp": now() - 10});
    assert_eq!(
        refusal(authorizer().authorize(Some(""), &hs(&claims))),
        Refusal::TokenExpired
    );
}

#[test]
fn not_yet_valid_wins_over_mode() {
    let claims = json!({"iat": now() + 600, "mode": 5});
    assert_eq!(
        refusal(authorizer().authorize(None, &hs(&claims))),
        Refusal::NotYetValid
    );
}

#[test]
fn mode_rows_win_over_channel_rows() {
    let long = "a".repeat(64);
    // Missing mode, bad path channel.
    let claims = json!({"exp": now() + 60});
    assert_eq!(
        refusal(authorizer().authorize(Some(&long), &hs(&claims))),
        Refusal::MissingMode
    );
    // Bad mode, bad path channel.
    let claims = json!({"mode": "x"});
    assert_eq!(
        refusal(authorizer().authorize(Some("%FF"), &hs(&claims))),
        Refusal::InvalidMode
    );
    // Bad mode, nothing granted.
    assert_eq!(
        refusal(authorizer().authorize(None, &hs(&claims))),
        Refusal::InvalidMode
    );
    // Bad mode, bad granted channel.
    let claims = json!({"mode": "x", "channel": ""});
    assert_eq!(
        refusal(authorizer().authorize(None, &hs(&claims))),
        Refusal::InvalidMode
    );
}

#[test]
fn a_bad_path_channel_wins_over_no_allowed_channels() {
    let long = "b".repeat(64);
    assert_eq!(
        channels(Some(&long), claimed(json!({"channel": "a"}))),
        Err(Refusal::InvalidChannelName)
    );
}

#[test]
fn a_bad_granted_channel_wins_over_too_many() {
    let mut auth = authorizer();
    auth.max_channels = 2;
    let claims = claimed(json!({"channels": ["a", "b", ""]}));
    assert_eq!(
        refusal(auth.authorize(None, &hs(&claims))),
        Refusal::InvalidChannelName
    );
}

// ---- §4: which channels ----------------------------------------------------------------

#[test]
fn a_path_channel_alone_is_granted() {
    assert_eq!(
        channels(Some("chat"), claimed(json!({}))),
        Ok(vec!["chat".into()])
    );
}

#[test]
fn a_path_channel_must_be_claimed_when_channels_are_claimed() {
    let claims = claimed(json!({"channel": "a", "channels": ["b", "c"]}));
    for path in ["a", "b", "c"] {
        assert_eq!(channels(Some(path), claims.clone()), Ok(vec![path.into()]));
    }
    assert_eq!(channels(Some("d"), claims), Err(Refusal::NoAllowedChannels));
    // Compared after decoding.
    let claims = claimed(json!({"channel": "a/b"}));
    assert_eq!(
        channels(Some("a%2Fb"), claims.clone()),
        Ok(vec!["a/b".into()])
    );
    assert_eq!(channels(Some("a%2fb"), claims), Ok(vec!["a/b".into()]));
}

#[test]
fn without_a_path_channel_every_claimed_channel_in_order() {
    assert_eq!(
        channels(
            None,
            claimed(json!({"channel": "b", "channels": ["c", "b", "a", "c"]}))
        ),
        Ok(vec!["b".into(), "c".into(), "a".into()])
    );
    assert_eq!(
        channels(None, claimed(json!({"channels": ["z", "y"]}))),
        Ok(vec!["z".into(), "y".into()])
    );
    assert_eq!(
        channels(None, claimed(json!({"channel": "solo"}))),
        Ok(vec!["solo".into()])
    );
}

#[test]
fn channels_holding_a_non_string_count_as_absent() {
    let bad = json!(["a", 1]);
    assert_eq!(
        channels(None, claimed(json!({"channel": "x", "channels": bad}))),
        Ok(vec!["x".into()])
    );
    assert_eq!(
        channels(None, claimed(json!({"channels": bad}))),
        Err(Refusal::NoAllowedChannels)
    );
    // Absent, so the path channel is granted even though "a" is not it.
    assert_eq!(
        channels(Some("q"), claimed(json!({"channels": bad}))),
        Ok(vec!["q".into()])
    );
    for other in [
        json!("a"),
        json!({"a": 1}),
        json!(7),
        Value::Null,
        json!([null]),
    ] {
        assert_eq!(
            channels(None, claimed(json!({"channels": other}))),
            Err(Refusal::NoAllowedChannels),
            "{other}"
        );
    }
}

#[test]
fn a_non_string_channel_counts_as_absent() {
    for bad in [
        json!(5),
        json!(["a"]),
        Value::Null,
        json!({"a": 1}),
        json!(true),
    ] {
        assert_eq!(
            channels(None, claimed(json!({"channel": bad, "channels": ["b"]}))),
            Ok(vec!["b".into()]),
            "{bad}"
        );
        assert_eq!(
            channels(None, claimed(json!({"channel": bad}))),
            Err(Refusal::NoAllowedChannels),
            "{bad}"
        );
        assert_eq!(
            channels(Some("p"), claimed(json!({"channel": bad}))),
            Ok(vec!["p".into()]),
            "{bad}"
        );
    }
}

#[test]
fn nothing_claimed_and_no_path_channel_is_refused() {
    assert_eq!(
        channels(None, claimed(json!({}))),
        Err(Refusal::NoAllowedChannels)
    );
    assert_eq!(
        channels(None, claimed(json!({"channels": []}))),
        Err(Refusal::NoAllowedChannels)
    );
}

#[test]
fn channel_names_are_1_to_63_bytes_without_nul() {
    let ascii63 = "a".repeat(63);
    let utf8_63 = format!("{}a", "é".repeat(31));
    let utf8_64 = "é".repeat(32);
    assert_eq!(utf8_63.len(), 63);
    assert_eq!(utf8_64.len(), 64);
    for ok in [
        ascii63.as_str(),
        utf8_63.as_str(),
        "x",
        "héllo wörld",
        "a b\"c'",
    ] {
        assert_eq!(
            channels(None, claimed(json!({"channel": ok}))),
            Ok(vec![ok.into()]),
            "{ok:?}"
        );
        assert_eq!(
            channels(Some(ok), claimed(json!({}))),
            Ok(vec![ok.into()]),
            "{ok:?}"
        );
    }
    let ascii64 = "a".repeat(64);
    for bad in [ascii64.as_str(), utf8_64.as_str(), "", "\0", "a\0"] {
        assert_eq!(
            channels(None, claimed(json!({"channel": bad}))),
            Err(Refusal::InvalidChannelName),
            "{bad:?}"
        );
    }
}

#[test]
fn path_channels_are_percent_decoded_as_utf8() {
    let cases = [
        ("a%2Fb", "a/b"),
        ("a%2fb", "a/b"),
        ("%C3%A9t%C3%A9", "été"),
        ("a%20b", "a b"),
        ("a+b", "a+b"),
        ("100%25", "100%"),
    ];
    for (raw, decoded) in cases {
        assert_eq!(
            channels(Some(raw), claimed(json!({}))),
            Ok(vec![decoded.into()]),
            "{raw}"
        );
    }
    // The length limit applies to the decoded name.
    let encoded63 = "%41".repeat(63);
    assert_eq!(
        channels(Some(&encoded63), claimed(json!({}))),
        Ok(vec!["A".repeat(63)])
    );
    let encoded64 = "%41".repeat(64);
    assert_eq!(
        channels(Some(&encoded64), claimed(json!({}))),
        Err(Refusal::InvalidChannelName)
    );
    for bad in ["%FF", "%C3%28", "%00", "a%00", "%ED%A0%80"] {
        assert_eq!(
            channels(Some(bad), claimed(json!({}))),
            Err(Refusal::InvalidChannelName),
            "{bad}"
        );
    }
}

// ---- aud -------------------------------------------------------------------------------

#[test]
fn without_a_configured_audience_any_aud_is_accepted() {
    for aud in [json!("anything"), json!(["x", "y"]), json!([]), json!(5)] {
        let claims = with(good(), json!({ "aud": aud }));
        accepted(authorizer().authorize(None, &hs(&claims)));
    }
}

#[test]
fn a_configured_audience_is_checked_as_postgrest_does() {
    let mut auth = authorizer();
    auth.audience = Some("api".into());
    accepted(auth.authorize(None, &hs(&good())));
    for aud in [
        json!("api"),
        json!(["x", "api"]),
        json!(["api"]),
        json!([1, "api"]),
    ] {
        let claims = with(good(), json!({ "aud": aud }));
        accepted(auth.authorize(None, &hs(&claims)));
    }
    for aud in [
        json!("other"),
        json!("API"),
        json!(["x", "y"]),
        json!([]),
        json!(5),
        json!({"api": true}),
    ] {
        let claims = with(good(), json!({ "aud": aud }));
        assert_eq!(
            refusal(auth.authorize(None, &hs(&claims))),
            Refusal::InvalidToken("aud mismatch".into()),
            "{aud}"
        );
    }
}

// ---- keys ------------------------------------------------------------------------------

#[test]
fn a_raw_secret_verifies_hs256_hs384_and_hs512() {
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let token = sign(alg, None, &hmac(), &good());
        accepted(authorizer().authorize(None, &token));
    }
}

#[test]
fn a_raw_secret_refuses_asymmetric_algorithms() {
    for (alg, key) in [
        (Algorithm::RS256, rsa()),
        (Algorithm::PS256, rsa()),
        (Algorithm::ES256, ec()),
        (Algorithm::EdDSA, ed()),
    ] {
        assert_invalid(authorizer().authorize(None, &sign(alg, None, &key, &good())));
    }
}

#[test]
fn a_base64_secret_in_any_alphabet_with_or_without_padding() {
    // Bytes whose encoding uses `+`/`/` (standard) or `-`/`_` (URL-safe) and needs padding.
    let secret: Vec<u8> = (0..34u8).map(|i| 0xf8 | (i % 8)).collect();
    let standard = base64::engine::general_purpose::STANDARD.encode(&secret);
    let url_safe = base64::engine::general_purpose::URL_SAFE.encode(&secret);
    assert!(standard.contains('+') || standard.contains('/'));
    assert!(url_safe.contains('-') || url_safe.contains('_'));
    assert!(standard.ends_with('='));
    let key = EncodingKey::from_secret(&secret);
    for encoded in [
        standard.clone(),
        url_safe.clone(),
        standard.trim_end_matches('=').to_owned(),
        url_safe.trim_end_matches('=').to_owned(),
    ] {
        let auth = authorizer_with(&encoded, true);
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            accepted(auth.authorize(None, &sign(alg, None, &key, &good())));
        }
        // The encoded text itself is not the key.
        let text_key = EncodingKey::from_secret(encoded.as_bytes());
        let token = sign(Algorithm::HS256, None, &text_key, &good());
        assert_invalid(auth.authorize(None, &token));
    }
    // Without the flag, the text is the key.
    let auth = authorizer_with(&standard, false);
    assert_invalid(auth.authorize(None, &sign(Algorithm::HS256, None, &key, &good())));
    let text_key = EncodingKey::from_secret(standard.as_bytes());
    accepted(auth.authorize(None, &sign(Algorithm::HS256, None, &text_key, &good())));
}

#[test]
fn base64_applies_to_raw_text_only() {
    let jwk = json!({"kty": "oct", "k": b64url(SECRET.as_bytes())}).to_string();
    let auth = authorizer_with(&jwk, true);
    accepted(auth.authorize(None, &hs(&good())));
}

#[test]
fn an_oct_jwk_without_alg_verifies_every_hmac() {
    let jwk = json!({"kty": "oct", "k": b64url(SECRET.as_bytes())}).to_string();
    let auth = authorizer_with(&jwk, false);
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        accepted(auth.authorize(None, &sign(alg, None, &hmac(), &good())));
    }
}

#[test]
fn an_oct_jwk_with_alg_verifies_that_algorithm_only() {
    let jwk = json!({"kty": "oct", "alg": "HS256", "k": b64url(SECRET.as_bytes())}).to_string();
    let auth = authorizer_with(&jwk, false);
    accepted(auth.authorize(None, &sign(Algorithm::HS256, None, &hmac(), &good())));
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        assert_invalid(auth.authorize(None, &sign(alg, None, &hmac(), &good())));
    }
}

#[test]
fn a_jwks_chooses_the_key_by_kid() {
    let jwks = json!({"keys": [
        {"kty": "oct", "kid": "a", "k": b64url(b"secret number a")},
        {"kty": "oct", "kid": "b", "k": b64url(b"secret number b")},
    ]})
    .to_string();
    let auth = authorizer_with(&jwks, false);
    let key_a = EncodingKey::from_secret(b"secret number a");
    let key_b = EncodingKey::from_secret(b"secret number b");
    accepted(auth.authorize(None, &sign(Algorithm::HS256, Some("a"), &key_a, &good())));
    accepted(auth.authorize(None, &sign(Algorithm::HS512, Some("b"), &key_b, &good())));
    // The right kid, the wrong key: b's kid does not let a's key verify.
    assert_invalid(auth.authorize(None, &sign(Algorithm::HS256, Some("b"), &key_a, &good())));
    // Unknown kid, even when signed by a key of the set.
    assert_eq!(
        refusal(auth.authorize(None, &sign(Algorithm::HS256, Some("c"), &key_a, &good()))),
        Refusal::InvalidToken("unknown kid".into())
    );
}

#[test]
fn a_jwks_tries_each_key_for_a_token_without_kid() {
    let jwks = json!({"keys": [
        {"kty": "oct", "kid": "a", "k": b64url(b"secret number a")},
        {"kty": "oct", "k": b64url(b"secret number b")},
        serde_json::from_str::<Value>(RSA_JWK).unwrap(),
        serde_json::from_str::<Value>(EC_JWK).unwrap(),
        serde_json::from_str::<Value>(ED_JWK).unwrap(),
    ]})
    .to_string();
    let auth = authorizer_with(&jwks, false);
    for (alg, key) in [
        (
            Algorithm::HS256,
            EncodingKey::from_secret(b"secret number a"),
        ),
        (
            Algorithm::HS384,
            EncodingKey::from_secret(b"secret number b"),
        ),
        (Algorithm::RS256, rsa()),
        (Algorithm::PS512, rsa()),
        (Algorithm::ES256, ec()),
        (Algorithm::EdDSA, ed()),
    ] {
        accepted(auth.authorize(None, &sign(alg, None, &key, &good())));
    }
    let stranger = EncodingKey::from_secret(b"secret number c");
    assert_invalid(auth.authorize(None, &sign(Algorithm::HS256, None, &stranger, &good())));
}

#[test]
fn an_rsa_jwk_verifies_rs_and_ps_tokens() {
    let auth = authorizer_with(RSA_JWK, false);
    for alg in [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ] {
        accepted(auth.authorize(None, &sign(alg, None, &rsa(), &good())));
    }
    // Another key type's signature.
    assert_invalid(auth.authorize(None, &sign(Algorithm::ES256, None, &ec(), &good())));
    assert_invalid(auth.authorize(None, &sign(Algorithm::HS256, None, &hmac(), &good())));
}

#[test]
fn an_rsa_jwk_with_alg_verifies_that_algorithm_only() {
    let mut jwk: Value = serde_json::from_str(RSA_JWK).unwrap();
    jwk["alg"] = json!("RS256");
    let auth = authorizer_with(&jwk.to_string(), false);
    accepted(auth.authorize(None, &sign(Algorithm::RS256, None, &rsa(), &good())));
    assert_invalid(auth.authorize(None, &sign(Algorithm::PS256, None, &rsa(), &good())));
    assert_invalid(auth.authorize(None, &sign(Algorithm::RS512, None, &rsa(), &good())));
}

#[test]
fn an_ec_jwk_verifies_es256_tokens() {
    let auth = authorizer_with(EC_JWK, false);
    accepted(auth.authorize(None, &sign(Algorithm::ES256, None, &ec(), &good())));
    assert_invalid(auth.authorize(None, &sign(Algorithm::RS256, None, &rsa(), &good())));
    assert_invalid(auth.authorize(None, &sign(Algorithm::EdDSA, None, &ed(), &good())));
}

#[test]
fn an_okp_jwk_verifies_eddsa_tokens() {
    let auth = authorizer_with(ED_JWK, false);
    accepted(auth.authorize(None, &sign(Algorithm::EdDSA, None, &ed(), &good())));
    assert_invalid(auth.authorize(None, &sign(Algorithm::ES256, None, &ec(), &good())));
}

#[test]
fn asymmetric_keys_chosen_by_kid() {
    let mut rsa_jwk: Value = serde_json::from_str(RSA_JWK).unwrap();
    rsa_jwk["kid"] = json!("rsa-1");
    let mut ec_jwk: Value = serde_json::from_str(EC_JWK).unwrap();
    ec_jwk["kid"] = json!("ec-1");
    let auth = authorizer_with(&json!({"keys": [rsa_jwk, ec_jwk]}).to_string(), false);
    accepted(auth.authorize(
        None,
        &sign(Algorithm::PS256, Some("rsa-1"), &rsa(), &good()),
    ));
    accepted(auth.authorize(None, &sign(Algorithm::ES256, Some("ec-1"), &ec(), &good())));
    // An EC token naming the RSA key.
    assert_invalid(auth.authorize(None, &sign(Algorithm::ES256, Some("rsa-1"), &ec(), &good())));
}

#[test]
fn keys_for_encryption_are_skipped() {
    let mut rsa_enc: Value = serde_json::from_str(RSA_JWK).unwrap();
    rsa_enc["use"] = json!("enc");
    let mut ec_sig: Value = serde_json::from_str(EC_JWK).unwrap();
    ec_sig["use"] = json!("sig");
    let oct_enc = json!({"kty": "oct", "use": "enc", "k": b64url(SECRET.as_bytes())});
    let auth = authorizer_with(
        &json!({"keys": [rsa_enc.clone(), ec_sig, oct_enc.clone()]}).to_string(),
        false,
    );
    accepted(auth.authorize(None, &sign(Algorithm::ES256, None, &ec(), &good())));
    assert_invalid(auth.authorize(None, &sign(Algorithm::RS256, None, &rsa(), &good())));
    assert_invalid(auth.authorize(None, &hs(&good())));
    // A lone encryption key leaves no usable key.
    assert!(Keys::from_secret(&rsa_enc.to_string(), false).is_err());
    assert!(Keys::from_secret(&oct_enc.to_string(), false).is_err());
}

#[test]
fn unsupported_keys_are_skipped() {
    let jwks = json!({"keys": [
        {"kty": "EC", "crv": "secp256k1", "x": "AAAA", "y": "AAAA"},
        {"kty": "oct", "alg": "A256GCM", "k": b64url(SECRET.as_bytes())},
        {"kty": "oct", "alg": 5, "k": b64url(SECRET.as_bytes())},
        {"kty": "RSA"},
        serde_json::from_str::<Value>(ED_JWK).unwrap(),
    ]})
    .to_string();
    let auth = authorizer_with(&jwks, false);
    accepted(auth.authorize(None, &sign(Algorithm::EdDSA, None, &ed(), &good())));
    assert_invalid(auth.authorize(None, &hs(&good())));
}

#[test]
fn an_hs256_token_signed_with_the_rsa_public_key_is_refused() {
    // The classic key-confusion attack: the public key's bytes used as an HMAC secret.
    let n = serde_json::from_str::<Value>(RSA_JWK).unwrap()["n"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut forgeries = Vec::new();
    for bytes in [
        RSA_PUBLIC_PEM.as_bytes(),
        RSA_PUBLIC_PEM.trim_end().as_bytes(),
        RSA_JWK.as_bytes(),
        n.as_bytes(),
    ] {
        let key = EncodingKey::from_secret(bytes);
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            forgeries.push(sign(alg, None, &key, &good()));
        }
    }
    let mut rsa_jwk: Value = serde_json::from_str(RSA_JWK).unwrap();
    let plain = authorizer_with(RSA_JWK, false);
    rsa_jwk["alg"] = json!("RS256");
    let with_alg = authorizer_with(&rsa_jwk.to_string(), false);
    let in_set = authorizer_with(&json!({"keys": [rsa_jwk]}).to_string(), false);
    for token in &forgeries {
        for auth in [&plain, &with_alg, &in_set] {
            assert_invalid(auth.authorize(None, token));
        }
    }
}

// ---- what a grant carries --------------------------------------------------------------

#[test]
fn claims_json_keeps_every_claim() {
    let claims = json!({
        "mode": "rw",
        "channel": "chat",
        "channels": ["chat", "other", 3],
        "exp": now() + 3600,
        "nbf": 1.5,
        "aud": ["a", "b"],
        "role": "web_user",
        "sub": "42",
        "nested": {"a": [1, 2, {"b": null}], "ünï": "cödé ✓"},
        "flag": false,
        "big": 12345678901234567u64,
        "neg": -7,
    });
    let grant = accepted(authorizer().authorize(None, &hs(&claims)));
    let json = serde_json::to_string(&grant.claims).unwrap();
    let back: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(back, claims);
    // Compact, UTF-8 as is.
    assert!(!json.contains(": "));
    assert!(json.contains("cödé ✓"));
}
