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
