//! The `aud` claim against the configured audience.

use super::*;

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
