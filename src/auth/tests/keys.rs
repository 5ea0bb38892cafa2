//! Verification keys: raw and base64 secrets, JWK and JWKS (oct, RSA, EC, OKP).

use super::*;

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
        {"kty": "oct", "kid": "a", "k": b64url(b"secret number a, thirty-two bytes")},
        {"kty": "oct", "kid": "b", "k": b64url(b"secret number b, thirty-two bytes")},
    ]})
    .to_string();
    let auth = authorizer_with(&jwks, false);
    let key_a = EncodingKey::from_secret(b"secret number a, thirty-two bytes");
    let key_b = EncodingKey::from_secret(b"secret number b, thirty-two bytes");
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
        {"kty": "oct", "kid": "a", "k": b64url(b"secret number a, thirty-two bytes")},
        {"kty": "oct", "k": b64url(b"secret number b, thirty-two bytes")},
        serde_json::from_str::<Value>(RSA_JWK).unwrap(),
        serde_json::from_str::<Value>(EC_JWK).unwrap(),
        serde_json::from_str::<Value>(ED_JWK).unwrap(),
    ]})
    .to_string();
    let auth = authorizer_with(&jwks, false);
    for (alg, key) in [
        (
            Algorithm::HS256,
            EncodingKey::from_secret(b"secret number a, thirty-two bytes"),
        ),
        (
            Algorithm::HS384,
            EncodingKey::from_secret(b"secret number b, thirty-two bytes"),
        ),
        (Algorithm::RS256, rsa()),
        (Algorithm::PS512, rsa()),
        (Algorithm::ES256, ec()),
        (Algorithm::EdDSA, ed()),
    ] {
        accepted(auth.authorize(None, &sign(alg, None, &key, &good())));
    }
    let stranger = EncodingKey::from_secret(b"secret number c, thirty-two bytes");
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
    assert!(Keys::from_secret(&rsa_enc.to_string(), false, false).is_err());
    assert!(Keys::from_secret(&oct_enc.to_string(), false, false).is_err());
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

#[test]
fn a_pem_key_is_refused_with_a_pointer_to_jwk() {
    for pem in [
        RSA_PUBLIC_PEM,
        RSA_PRIVATE,
        EC_PRIVATE,
        &format!("\n  {RSA_PUBLIC_PEM}"),
    ] {
        for (base64, allow_short) in [(false, false), (true, false), (false, true)] {
            let Err(e) = Keys::from_secret(pem, base64, allow_short) else {
                panic!("a PEM key was taken");
            };
            let text = e.to_string();
            assert!(text.contains("PEM") && text.contains("JWK"), "{text}");
        }
    }
}

#[test]
fn hmac_keys_under_32_bytes_are_refused_unless_allowed() {
    let b64 = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![7u8; n]);
    let oct = |n: usize| json!({"kty": "oct", "k": b64url(&vec![7u8; n])}).to_string();
    let in_set = |n: usize| {
        json!({"keys": [
            serde_json::from_str::<Value>(RSA_JWK).unwrap(),
            {"kty": "oct", "kid": "short", "k": b64url(&vec![7u8; n])},
        ]})
        .to_string()
    };
    // (secret, base64): its key is `n` bytes.
    let secrets = |n: usize| {
        [
            ("x".repeat(n), false),
            (b64(n), true),
            (oct(n), false),
            (in_set(n), false),
        ]
    };
    for n in [1, 31] {
        for (secret, base64) in secrets(n) {
            let Err(e) = Keys::from_secret(&secret, base64, false) else {
                panic!("a {n}-byte key was taken: {secret}");
            };
            let text = e.to_string();
            assert!(text.contains(&format!("{n} bytes")), "{text}");
            assert!(text.contains("PGWS_JWT_SECRET_ALLOW_SHORT"), "{text}");
            assert!(Keys::from_secret(&secret, base64, true).is_ok(), "{secret}");
        }
    }
    for (secret, base64) in secrets(32) {
        assert!(
            Keys::from_secret(&secret, base64, false).is_ok(),
            "{secret}"
        );
    }
    // Allowed, a one-byte secret verifies its tokens.
    let keys = Arc::new(Keys::from_secret("k", false, true).unwrap());
    let mut auth = authorizer();
    auth.keys = keys;
    let token = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(b"k"),
        &good(),
    );
    accepted(auth.authorize(None, &token));
}
