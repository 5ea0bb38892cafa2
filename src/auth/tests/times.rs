//! Rows 2 and 3 of the refusal table: `exp`, `nbf` and `iat`, with and without leeway.

use super::*;

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
