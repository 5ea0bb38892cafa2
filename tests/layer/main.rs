//! The layer in-process, against the shared PostgreSQL: one test binary for every
//! flow of a socket (one module each), so the crate is linked once for all of them.
//! Tests that need a process of their own (a global metrics recorder or log
//! subscriber) stay in binaries of their own.

#[path = "../common/mod.rs"]
mod common;

mod access;
mod delivery;
mod handshake;
mod history;
mod hostile;
mod limits;
mod listener;
mod meta;
mod protocol;
mod replay;
mod service;
mod session;
mod sse;
mod writes;
