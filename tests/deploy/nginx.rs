//! The README's nginx snippet, as `examples/deploy/nginx.conf` holds it, with
//! WebSockets and event streams through it.
