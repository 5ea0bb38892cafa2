//! The refusal table (PROTOCOL.md §2): status and body of each row, which tokens
//! fall under which row, and which row wins when several apply.

use super::*;

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
        (Refusal::InvalidChannelClaim, 403, "Invalid channel claim"),
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
    let jwks = json!({"keys": [{"kty": "oct", "kid": "a", "k": b64url(SECRET.as_bytes())}]});
    let auth = authorizer_with(&jwks.to_string(), false);
    let key = hmac();
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

// Rows 2 and 3 (times) are in `times.rs`.

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
fn the_mode_rows_win_over_a_bad_channel_claim_which_wins_over_the_channel_rows() {
    let claims = json!({"channel": 1});
    assert_eq!(
        refusal(authorizer().authorize(Some("a"), &hs(&claims))),
        Refusal::MissingMode
    );
    let claims = json!({"mode": "x", "channels": "a"});
    assert_eq!(
        refusal(authorizer().authorize(Some("a"), &hs(&claims))),
        Refusal::InvalidMode
    );
    // A bad path channel, a bad claim, a claim that does not name the path channel.
    let claims = claimed(json!({"channel": null, "channels": ["b"]}));
    assert_eq!(
        channels(Some("%FF"), claims),
        Err(Refusal::InvalidChannelClaim)
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
