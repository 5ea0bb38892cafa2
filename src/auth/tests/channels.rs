//! §4: which channels a socket gets, channel names, percent-decoded path channels.

use super::*;

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

/// Every claim of the wrong type, each with and without a path channel, alone and
/// next to a good claim of the other name.
#[test]
fn a_channel_claim_of_another_type_is_refused() {
    let bad_channel = [
        json!(["a"]),
        json!(1),
        Value::Null,
        json!({}),
        json!({"a": 1}),
        json!(true),
    ];
    let bad_channels = [
        json!("a"),
        json!(["a", 1]),
        json!([null]),
        json!(["a", ["b"]]),
        json!({"a": 1}),
        json!(7),
        Value::Null,
    ];
    let cases = bad_channel
        .iter()
        .flat_map(|bad| {
            [
                json!({"channel": bad}),
                json!({"channel": bad, "channels": ["a"]}),
            ]
        })
        .chain(bad_channels.iter().flat_map(|bad| {
            [
                json!({"channels": bad}),
                json!({"channel": "a", "channels": bad}),
            ]
        }));
    for extra in cases {
        for path in [None, Some("a"), Some("q")] {
            assert_eq!(
                channels(path, claimed(extra.clone())),
                Err(Refusal::InvalidChannelClaim),
                "{extra} on {path:?}"
            );
        }
    }
}

#[test]
fn an_empty_channels_list_grants_no_channel() {
    for path in [None, Some("a")] {
        assert_eq!(
            channels(path, claimed(json!({"channels": []}))),
            Err(Refusal::NoAllowedChannels),
            "{path:?}"
        );
    }
    // Next to a `channel`, that one only.
    let claims = claimed(json!({"channel": "a", "channels": []}));
    assert_eq!(channels(Some("a"), claims.clone()), Ok(vec!["a".into()]));
    assert_eq!(
        channels(Some("b"), claims.clone()),
        Err(Refusal::NoAllowedChannels)
    );
    assert_eq!(channels(None, claims), Ok(vec!["a".into()]));
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

#[test]
fn a_channels_entry_ending_in_a_star_grants_its_prefix_only() {
    let claims = claimed(json!({"channels": ["lit", "room-*"]}));
    for path in ["room-7", "room-", "room-*", "lit"] {
        assert_eq!(channels(Some(path), claims.clone()), Ok(vec![path.into()]));
    }
    for path in ["room", "roo", "xroom-7", "lit2", "ROOM-7"] {
        assert_eq!(
            channels(Some(path), claims.clone()),
            Err(Refusal::NoAllowedChannels)
        );
    }
    // A claims-only URL starts with the names; patterns alone grant it nothing.
    assert_eq!(channels(None, claims), Ok(vec!["lit".into()]));
    let only = claimed(json!({"channels": ["room-*"]}));
    assert_eq!(
        channels(None, only.clone()),
        Err(Refusal::NoAllowedChannels)
    );
    // A session socket may start with no channel, and keeps what it may join.
    let (grant, scope) = authorizer().authorize_session(None, &hs(&only)).unwrap();
    assert!(grant.channels.is_empty());
    assert!(scope.allowed.allows("room-1") && !scope.allowed.allows("room"));
    assert_eq!(scope.allowed.only(), None);
}

#[test]
fn the_channel_claim_is_always_a_literal_name() {
    let claims = claimed(json!({"channel": "room-*"}));
    assert_eq!(
        channels(Some("room-7"), claims.clone()),
        Err(Refusal::NoAllowedChannels)
    );
    assert_eq!(channels(None, claims), Ok(vec!["room-*".into()]));
    // `*` alone grants every channel; a star inside an entry is part of it.
    let every = claimed(json!({"channels": ["*"]}));
    assert_eq!(
        channels(Some("anything"), every),
        Ok(vec!["anything".into()])
    );
    let inner = claimed(json!({"channels": ["a*b"]}));
    assert_eq!(
        channels(Some("aXb"), inner),
        Err(Refusal::NoAllowedChannels)
    );
}
