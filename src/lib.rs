//! PostgreSQL `LISTEN`/`NOTIFY` over WebSockets, as a [tower] layer.
//!
//! [`PgWsLayer`] takes WebSocket handshakes whose path carries a JWT
//! (`/<jwt>` or `/<channel>/<jwt>`) and passes every other request, untouched
//! and streamed, to the service it wraps: an axum router, a reverse proxy to
//! PostgREST, anything that speaks `http`. Handshakes come as HTTP/1.1 upgrades
//! or, when the server turns on HTTP/2's extended CONNECT, as RFC 8441 streams.
//!
//! - The token's `mode` claim (`r`, `w` or `rw`) and its `channel`/`channels`
//!   claims say what a socket may do.
//! - Every `NOTIFY` on a channel reaches every socket reading it, in commit order.
//!   The `101` is sent only once the channel is being listened to, so nothing
//!   committed after the handshake is missed.
//! - Every text a socket sends becomes a `NOTIFY` carrying a JSON envelope with the
//!   message and the token's claims.
//! - One background task owns the single `LISTEN` connection, reconnects forever
//!   and re-subscribes; writes go through a `deadpool-postgres` pool.
//! - Nothing is dropped silently: every failure closes the socket with a
//!   documented code ([`Config`] lists the limits).
//!
//! # Example
//!
//! An axum app that serves its own routes and pgws on the same port:
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use pgws::{Config, PgWsLayer};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let config = Config::builder()
//!         .database_url("postgres://postgres@127.0.0.1:5432/postgres")
//!         .jwt_secret("reallyreallyreallyreallyverysafe")
//!         .build()?;
//!     let pgws = PgWsLayer::new(config);
//!
//!     let app = Router::new()
//!         .route("/", get(|| async { "plain HTTP still works" }))
//!         .layer(pgws.clone());
//!
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     axum::serve(listener, app)
//!         .with_graceful_shutdown(async move {
//!             let _ = tokio::signal::ctrl_c().await;
//!             // Every socket gets `1001 Going away` after its queue is flushed.
//!             pgws.shutdown().await;
//!         })
//!         .await?;
//!     Ok(())
//! }
//! ```
//!
//! A client then connects to `ws://127.0.0.1:3000/chat/<jwt>` with a token such as
//! `{"mode": "rw"}` signed by the secret, and `NOTIFY chat, 'hi'` reaches it.
//!
//! # The standalone server
//!
//! With the `server` feature, `pgws::server` is a complete server around the layer
//! (static files, a reverse proxy, TLS, metrics), configured by `PGWS_*`
//! variables, and the `pgws` program runs it: `cargo install pgws --features
//! server`. Without the feature, none of its dependencies are built.
//!
//! # Wire contract
//!
//! `PROTOCOL.md`, next to the README, states the contract users rely on: URL forms,
//! token rules, status and close codes, envelopes and guarantees. In short:
//!
//! | refusal before the upgrade | status |
//! |---|---|
//! | bad signature, malformed token, `exp` passed, `nbf`/`iat` in the future | 401 |
//! | `mode` missing or invalid, a malformed channel claim, no allowed channel, too many channels | 403 |
//! | invalid channel name, malformed `Sec-WebSocket-Key`, invalid `since`/`history` | 400 |
//! | channels not listened to within the subscribe timeout | 503 |
//!
//! | close | code |
//! |---|---|
//! | write from a read-only socket, slow consumer | 1008 |
//! | invalid UTF-8 | 1007 |
//! | message too big | 1009 |
//! | database unavailable for a write | 1013 |
//! | listener restarted | 1012 |
//! | ping timeout | 1011 |
//! | token expired | 3001 |
//! | shutdown | 1001 |
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

mod auth;
#[cfg(feature = "internals")]
mod bench_api;
mod close;
mod config;
mod database;
mod engine;
mod envelope;
mod error;
mod history;
mod http;
mod mapping;
mod refusal;
mod stats;
mod time;

#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub mod server;

pub use auth::Mode;
pub use config::{Config, ConfigBuilder, DEFAULT_DATABASE_URL, SettingInfo};
pub use database::DatabaseTls;
pub use error::ConfigError;
pub use http::{body::PgWsBody, future::ResponseFuture, layer::PgWsLayer, service::PgWsService};
pub use stats::Stats;

/// The README's Rust example, compiled as a doctest so it stays true to the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// Internals re-exported for the crate's own benchmarks (`benches/`), fuzz
/// targets (`fuzz/`) and tests (`tests/`), with the `internals` feature only. Not
/// part of the API: hidden from the docs, exempt from semver, and may change in any
/// release.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod __bench {
    pub use crate::bench_api::*;

    /// The history store.
    pub mod history {
        pub use crate::history::*;
    }
}
