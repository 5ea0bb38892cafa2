//! The HTTP face: the tower layer, its service, response future and body, and the
//! RFC 6455 handshake, and server-sent event streams. Everything that runs after the `101` is in
//! [`engine`](crate::engine).

pub(crate) mod body;
pub(crate) mod future;
pub(crate) mod handshake;
pub(crate) mod layer;
pub(crate) mod positions;
pub(crate) mod service;
pub(crate) mod sse;
