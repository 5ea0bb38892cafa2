//! The multiplexed router on arbitrary payloads: a payload routes to its JSON
//! `channel` only when it is an object with a string `channel`; anything else
//! goes to the listen channel's own readers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgws::__bench::routed_channel;

fuzz_target!(|data: &[u8]| {
    let Ok(payload) = std::str::from_utf8(data) else { return };
    let routed = routed_channel("pgws", "pgws", payload).expect("the listen channel routes");
    let parsed: Option<serde_json::Value> = serde_json::from_str(payload).ok();
    let expected = parsed
        .as_ref()
        .and_then(|v| v.as_object())
        .and_then(|o| o.get("channel"))
        .and_then(|c| c.as_str());
    match expected {
        Some(channel) => assert_eq!(routed, channel),
        None => assert!(routed == "pgws" || parsed.is_none()),
    }
    assert!(routed_channel("pgws", "other", payload).is_none());
});
