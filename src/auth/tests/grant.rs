//! What a grant carries.

use super::*;

#[test]
fn claims_json_keeps_every_claim() {
    let claims = json!({
        "mode": "rw",
        "channel": "chat",
        "channels": ["chat", "other"],
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
