//! The standalone server (feature `server`): settings, serving, TLS, the admin
//! listener, the development database and the `pgws` program itself, one module
//! each, in one test binary.

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod deadlines;
mod devdb;
mod http2;
mod program;
mod proxy;
mod replay_memory;
mod rolling;
mod server;
mod static_files;
mod tls;
