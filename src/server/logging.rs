//! Logs: the global subscriber (`PGWS_LOG_FORMAT`, `RUST_LOG`) and the request log,
//! which never carries a token, a query string or a header value. Text lines have
//! every control character of every field escaped, so that nothing a client sends
//! (a channel name is percent-decoded) can forge a line or reach a terminal raw.

use std::{fmt, net::SocketAddr};

use http::Request;
use hyper::body::Incoming;
use tower_http::{
    classify::{
        NeverClassifyEos, ServerErrorsAsFailures, ServerErrorsFailureClass, SharedClassifier,
    },
    trace::{DefaultOnFailure, ResponseBody, TraceLayer},
};
use tracing::{
    Level,
    field::{Field, Visit},
};
use tracing_subscriber::{
    EnvFilter,
    field::RecordFields,
    fmt::{FormatFields, format::Writer},
};

use super::{Body, LogFormat};
use crate::{PgWsBody, http::handshake::looks_like_jws};

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
        LogFormat::Text => Box::new(builder.fmt_fields(EscapedFields).with_ansi(ansi).finish()),
        LogFormat::Json => Box::new(builder.json().finish()),
    }
}

/// The text format's fields as tracing-subscriber writes them (`name=value`, the
/// message bare, `?` values as `Debug`, `%` values as `Display`), with every control
/// character escaped, Rust's way (`\n`, `\u{1b}`). JSON lines escape them anyway.
struct EscapedFields;

impl<'w> FormatFields<'w> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = EscapingVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Visit for EscapingVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.write(field, format_args!("{value}"));
        } else {
            self.write(field, format_args!("{value:?}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, format_args!("{value:?}"));
    }
}

impl EscapingVisitor<'_> {
    fn write(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        let name = field.name();
        // Metadata of `log` records, shown elsewhere on the line.
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let separator = if self.first { "" } else { " " };
        self.first = false;
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.result = if name == "message" {
            self.writer.write_str(separator)
        } else {
            write!(self.writer, "{separator}{name}=")
        }
        .and_then(|()| fmt::write(&mut Escaping(&mut self.writer), value));
    }
}

/// Writes through, with control characters (and the Unicode line and paragraph
/// separators, which some viewers break lines at) escaped.
struct Escaping<'a, W>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let needs_escape = |c: char| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}');
        let mut rest = s;
        while let Some(at) = rest.find(needs_escape) {
            let c = rest[at..].chars().next().expect("found at a char boundary");
            self.0.write_str(&rest[..at])?;
            write!(self.0, "{}", c.escape_default())?;
            rest = &rest[at + c.len_utf8()..];
        }
        self.0.write_str(rest)
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

/// A token by its shape, as the handshake takes one (three base64url parts), whose
/// header decodes to what a JSON parser reads as an object: any whitespace, then
/// `{`. File names such as `app.min.js` have no such header. A segment starting
/// with `eyJ` (`{"`) counts too, for tokens mangled out of shape.
fn segment_may_be_token(segment: &str) -> bool {
    let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
    if decoded.starts_with("eyJ") {
        return true;
    }
    let header = decoded.split('.').next().unwrap_or_default();
    looks_like_jws(&decoded) && decodes_to_json_object(header)
}

/// Decoded leniently (padding and trailing bits as they come), so that every
/// header the token check would read is caught.
fn decodes_to_json_object(part: &str) -> bool {
    use base64::{
        Engine as _,
        engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
    };
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let Ok(bytes) = LENIENT.decode(part) else {
        return false;
    };
    // JSON's whitespace, as serde_json skips it.
    bytes.iter().find(|b| !b" \t\n\r".contains(b)) == Some(&b'{')
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::redacted_path;

    fn b64(part: &str) -> Vec<u8> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap()
    }

    fn b64url(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

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
        // A header whose JSON starts with whitespace (`IHsi` is ` {"`), which the
        // token check takes: redacted by its shape, whatever its first bytes.
        for spaced in [" {", "\n\t{", "\r {"] {
            let (header, rest) = jwt.split_once('.').unwrap();
            let json = String::from_utf8(b64(header)).unwrap();
            let header = b64url(format!("{spaced}{}", &json[1..]).as_bytes());
            let token = format!("{header}.{rest}");
            assert!(!token.starts_with('e'), "{token}");
            assert_eq!(redacted_path(&format!("/chat/{token}")), "/chat/<redacted>");
            let encoded = token.replace('-', "%2D").replace('.', "%2e");
            assert_eq!(redacted_path(&format!("/{encoded}")), "/<redacted>");
        }
        // Ordinary paths stay readable.
        for path in [
            "/",
            "/chat",
            "/app.min.js",
            "/rpc/get_items",
            "/a/b.c.d/e",
            "/IHsi.x",
            "/e30.e30",
        ] {
            assert_eq!(redacted_path(path), path);
        }
    }
}
