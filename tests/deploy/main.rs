//! pgws behind real load balancers (feature `server`): HAProxy and nginx from the
//! system's packages, each run with the configuration a user copies
//! (`examples/deploy/`, only its ports and paths changed), on loopback, as child
//! processes killed on drop.
//!
//! Without `haproxy` or `nginx` a test prints a notice and passes, unless `CI` is
//! set: then it fails (`.ci/run` installs both).

#[path = "../common/mod.rs"]
mod common;

mod clients;
mod haproxy;
mod nginx;
mod proxies;
