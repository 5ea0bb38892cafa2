//! TODO crate docs
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

mod auth;
mod body;
mod config;
mod envelope;
mod error;
mod future;
mod handshake;
mod hub;
mod layer;
mod listener;
mod mapping;
mod publisher;
mod service;
mod socket;

pub use auth::Mode;
pub use body::PgWsBody;
pub use config::{Config, ConfigBuilder, DEFAULT_DATABASE_URL};
pub use error::ConfigError;
pub use future::ResponseFuture;
pub use layer::PgWsLayer;
pub use service::PgWsService;
