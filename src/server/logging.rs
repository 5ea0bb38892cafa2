//! Logs: the global subscriber (`PGWS_LOG_FORMAT`, `RUST_LOG`) and the request log,
//! which never carries a token, a query string or a header value.

use std::net::SocketAddr;

use http::Request;
use hyper::body::Incoming;
use tower_http::{
    classify::{
        NeverClassifyEos, ServerErrorsAsFailures, ServerErrorsFailureClass, SharedClassifier,
    },
    trace::{DefaultOnFailure, ResponseBody, TraceLayer},
};
use tracing::Level;
use tracing_subscriber::EnvFilter;

use super::{Body, LogFormat};
use crate::PgWsBody;

/// The global subscriber: `RUST_LOG` (default `info`), on stderr so that stdout
/// holds only the start-up report.
pub(crate) fn init(format: LogFormat) {
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal, not for a log file or collector.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    if let Err(e) = log_subscriber(format, filter, std::io::stderr, ansi).try_init() {
        eprintln!("pgws: cannot set up logging: {e}");
    }
}

/// A subscriber writing `format` lines to `writer`, with ANSI colours in text when
/// `ansi`: the one the `pgws` program installs, for embedders and tests that want
/// the same lines elsewhere.
pub fn log_subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
        LogFormat::Json => Box::new(builder.json().finish()),
    }
}

/// The answer body of every public request, as the request log wraps it.
pub(crate) type LoggedBody =
    ResponseBody<PgWsBody<Body>, NeverClassifyEos<ServerErrorsFailureClass>>;

/// One span per request with the method, the redacted path and the peer; the
/// answer's status at DEBUG, server errors at WARN. Never the query or a header.
pub(crate) fn request_log(
    peer: SocketAddr,
) -> TraceLayer<
    SharedClassifier<ServerErrorsAsFailures>,
    impl Fn(&Request<Incoming>) -> tracing::Span + Clone,
> {
    TraceLayer::new_for_http()
        .make_span_with(move |req: &Request<Incoming>| {
            tracing::info_span!(
                "request",
                method = %req.method(),
                path = %redacted_path(req.uri().path()),
                %peer,
            )
        })
        .on_failure(DefaultOnFailure::new().level(Level::WARN))
}

/// A request path fit for logs: every segment that is, or percent-decodes to,
/// something shaped like a JWT becomes `<redacted>`. The query is never part of it.
fn redacted_path(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            if segment_may_be_token(segment) {
                "<redacted>"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn segment_may_be_token(segment: &str) -> bool {
    let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
    // `eyJ` is base64url for `{"`, the start of every JWT header pgws has seen;
    // any other header JSON (`{ "`, `{\n`) still starts with `e`. File names such as
    // `app.min.js` are too short to be mistaken for one.
    let b64url = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let parts: Vec<&str> = decoded.split('.').collect();
    let jws_shaped = parts.len() == 3
        && !parts[0].is_empty()
        && !parts[1].is_empty()
        && parts.iter().all(|p| b64url(p));
    decoded.starts_with("eyJ") || (jws_shaped && decoded.starts_with('e') && decoded.len() >= 24)
}

#[cfg(test)]
mod tests {
    use super::redacted_path;

    fn jwt() -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &serde_json::json!({ "mode": "rw", "exp": 4_000_000_000u64 }),
            &jsonwebtoken::EncodingKey::from_secret(b"reallyreallyreallyreallyverysafe"),
        )
        .unwrap()
    }

    #[test]
    fn paths_are_redacted_for_logs() {
        let jwt = jwt();
        assert_eq!(redacted_path(&format!("/{jwt}")), "/<redacted>");
        assert_eq!(
            redacted_path(&format!("/ws/chat/{jwt}")),
            "/ws/chat/<redacted>"
        );
        // Even a mangled or percent-encoded one.
        let encoded = jwt.replace('.', "%2E");
        assert_eq!(
            redacted_path(&format!("/chat/{encoded}/x")),
            "/chat/<redacted>/x"
        );
        let unsigned = jwt.rsplit_once('.').unwrap().0.to_owned() + ".";
        assert_eq!(redacted_path(&format!("/{unsigned}")), "/<redacted>");
        // Ordinary paths stay readable.
        for path in ["/", "/chat", "/app.min.js", "/rpc/get_items", "/a/b.c.d/e"] {
            assert_eq!(redacted_path(path), path);
        }
    }
}
