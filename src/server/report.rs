//! The start-up report: where the server listens, what it serves, whether the
//! database answered, and in development mode a sample token and URLs.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use crate::{DatabaseTls, PgWsLayer};

use super::{Settings, settings::var};

/// How long the start-up check waits for the listener's first connection.
pub const DATABASE_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether the listener connected to the database and is listening within `within`.
/// The listener starts connecting when the layer is made and never gives up, so
/// this only decides what the start-up report says.
pub async fn database_reachable(layer: &PgWsLayer, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while !layer.is_listening() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// What the start-up report says of the database check.
fn database_text(reachable: bool) -> String {
    if reachable {
        "reachable (the listener is connected and listening)".into()
    } else {
        format!(
            "NOT reachable within {} s (the log says why; check PGWS_DB_URI). pgws \
             keeps trying; until then handshakes that read get 503 and /ready 503.",
            DATABASE_CHECK_TIMEOUT.as_secs()
        )
    }
}

/// The `sslmode` in force and what it means (the URI itself, with its password,
/// is never shown).
fn database_tls_text(tls: DatabaseTls) -> String {
    let meaning = match tls {
        DatabaseTls::Disable => "no TLS",
        DatabaseTls::Prefer => "TLS when the server offers it, unverified",
        DatabaseTls::Require => "TLS, certificate not verified",
        DatabaseTls::VerifyCa => "TLS, chain verified against sslrootcert",
        DatabaseTls::VerifyFull => "TLS, chain and host name verified",
    };
    format!("sslmode={tls}: {meaning} (PGWS_DB_URI)")
}

/// What the server prints at start-up: where it listens, how it maps channels,
/// what else it serves, whether the database answered (`database`, when checked),
/// and in development mode a sample token and URLs.
pub fn startup_report(
    settings: &Settings,
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    database: Option<bool>,
) -> String {
    let (http, ws) = if settings.tls.is_some() {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    let shown = browsable(addr);
    let config = &settings.config;
    let prefix = config.path_prefix();
    let mut out = String::new();
    let mut line = |label: &str, text: &str| {
        let _ = writeln!(out, "  {:<14} {text}", format!("{label}:"));
    };
    let mapping = match config.listen_channel() {
        None => "per channel: a WebSocket channel is the PostgreSQL channel of the \
                 same name (NOTIFY chat, 'hi' reaches /chat)"
            .to_owned(),
        Some(listen) => format!(
            "multiplexed: one LISTEN on {listen:?}; a payload's \"channel\" field \
             picks the WebSocket channel (PGWS_LISTEN_CHANNEL)"
        ),
    };
    let header = format!(
        "pgws {} is listening on {http}://{shown}{}\n",
        env!("CARGO_PKG_VERSION"),
        if addr != shown {
            format!(" (all addresses, {addr})")
        } else {
            String::new()
        }
    );
    line(
        "WebSockets",
        &format!(
            "{ws}://{shown}{prefix}/<channel>/<jwt>, or {prefix}/<channel> with the \
             token in Authorization: Bearer or the pgws.bearer.<jwt> subprotocol"
        ),
    );
    if let Some(reachable) = database {
        line("Database", &database_text(reachable));
    }
    line("Database TLS", &database_tls_text(config.database_tls()));
    line("Mapping", &mapping);
    line(
        "Meta channel",
        config.meta_channel().unwrap_or("off (PGWS_META_CHANNEL)"),
    );
    let off = |var: &str| format!("off ({var})");
    let root = settings.root_path.as_ref().map(|p| p.display().to_string());
    line("Static files", &root.unwrap_or_else(|| off(var::ROOT_PATH)));
    let upstream = settings
        .upstream
        .as_ref()
        .map(|u| format!("http://{}{}", u.authority, u.base));
    let upstream = upstream.unwrap_or_else(|| off(var::UPSTREAM) + "; other requests get 404");
    line("Upstream", &upstream);
    let origins = config.allowed_origins().map(|o| {
        format!(
            "{} (PGWS_ALLOWED_ORIGINS; handshakes from other origins get 403)",
            o.join(", ")
        )
    });
    line(
        "Origins",
        origins.as_deref().unwrap_or("any (PGWS_ALLOWED_ORIGINS)"),
    );
    let tls_vars = format!("({}, {})", var::CERTIFICATE_FILE, var::KEY_FILE);
    let on = if settings.tls.is_some() { "on" } else { "off" };
    line("TLS", &format!("{on} {tls_vars}"));
    line("HTTP/2", &http2_text(settings));
    let admin = admin_addr.map(|a| {
        let a = browsable(a);
        format!("http://{a}/metrics, http://{a}/health, http://{a}/ready")
    });
    line("Admin", &admin.unwrap_or_else(|| off(var::ADMIN_ADDR)));
    let mut out = header + &out;
    if let Some(token) = &settings.dev_token {
        let _ = writeln!(
            out,
            "\nWARNING: PGWS_JWT_SECRET is not set; a random secret was generated.\n\
             WARNING: this is for development only. Tokens die with this process.\n\
             Sample token (mode rw, any channel, no exp): {token}\n\
             WebSocket URL: {ws}://{shown}{prefix}/chat/{token}"
        );
        if settings.root_path.is_some() {
            let _ = writeln!(out, "Chat page: {}", chat_url(settings, http, shown, token));
        }
    }
    out
}

/// How HTTP/2 is reached, if at all.
fn http2_text(settings: &Settings) -> String {
    let max = settings.http2_max_streams;
    if max == 0 {
        return format!("off ({}=0)", var::HTTP2_MAX_STREAMS);
    }
    let how = if settings.tls.is_some() {
        "h2 through ALPN"
    } else {
        "h2c with prior knowledge"
    };
    format!(
        "on ({how}), WebSockets over it (RFC 8441), {max} streams per connection ({})",
        var::HTTP2_MAX_STREAMS
    )
}

/// The chat page's URL with the token in the fragment (never sent to the server).
fn chat_url(settings: &Settings, http: &str, shown: SocketAddr, token: &str) -> String {
    let mut url = format!("{http}://{shown}/#token={token}");
    let prefix = settings.config.path_prefix();
    if !prefix.is_empty() {
        url.push_str("&prefix=");
        url.push_str(
            &percent_encoding::utf8_percent_encode(prefix, percent_encoding::NON_ALPHANUMERIC)
                .to_string(),
        );
    }
    if let Some(meta) = settings.config.meta_channel() {
        url.push_str("&meta=");
        url.push_str(
            &percent_encoding::utf8_percent_encode(meta, percent_encoding::NON_ALPHANUMERIC)
                .to_string(),
        );
    }
    url
}

/// A wildcard address is not something to type into a browser: its loopback twin.
fn browsable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}
