//! Small helpers for optional deadlines.

use std::time::SystemTime;

use tokio::time::Instant;

/// Sleeps until `at`, or forever when there is no deadline.
pub(crate) async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `t` as an `Instant`; `None` when too far away to represent (never reached).
pub(crate) fn instant_at(t: SystemTime) -> Option<Instant> {
    let left = t.duration_since(SystemTime::now()).unwrap_or_default();
    Instant::now().checked_add(left)
}
