//! An arbitrary token and path channel against a JWKS with several key types:
//! every input is either granted or refused with a contract text, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgws::__bench::Auth;

const JWKS: &str = r#"{"keys":[
  {"kty":"oct","k":"cmVhbGx5cmVhbGx5cmVhbGx5cmVhbGx5dmVyeXNhZmU","kid":"hs"},
  {"kty":"oct","k":"YSBzZWNvbmQga2V5LCBvZiB0aGlydHktdHdvIGJ5dGVz"},
  {"kty":"EC","crv":"P-256","kid":"ec","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
]}"#;

const REFUSALS: [&str; 9] = [
    "Invalid token",
    "Token expired",
    "Token not yet valid",
    "Missing mode",
    "Invalid mode",
    "Invalid channel claim",
    "Invalid channel name",
    "No allowed channels",
    "Too many channels",
];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (channel, token) = match text.split_once('\n') {
        Some((c, t)) => (Some(c), t),
        None => (None, text.as_ref()),
    };
    match auth().authorize(channel, token) {
        Ok(granted) => assert!(granted >= 1),
        Err(why) => assert!(REFUSALS.iter().any(|r| why.starts_with(r)), "{why}"),
    }
});

fn auth() -> &'static Auth {
    static AUTH: std::sync::OnceLock<Auth> = std::sync::OnceLock::new();
    AUTH.get_or_init(|| {
        let config = pgws::Config::builder().jwt_secret(JWKS).build().unwrap();
        Auth::new(&config)
    })
}
