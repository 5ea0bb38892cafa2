//! Tests that bring databases of their own: database faults, each on a throwaway
//! cluster, and the history store's internals, each in a schema of its own.

#[path = "../common/mod.rs"]
mod common;

mod encoding;
mod faults;
mod history_store;
