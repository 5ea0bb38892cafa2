//! Table-driven tests: each row runs to its end or its panic, and the test fails
//! naming every row that panicked.

use std::{any::Any, fmt::Display, future::Future, panic::AssertUnwindSafe};

use futures_util::FutureExt;

/// Runs the rows in turn; then fails, if any row panicked, with each such row's
/// name and message.
pub async fn check_rows<N: Display, F: Future<Output = ()>>(
    rows: impl IntoIterator<Item = (N, F)>,
) {
    let mut failed = Vec::new();
    for (name, row) in rows {
        if let Err(panic) = AssertUnwindSafe(row).catch_unwind().await {
            failed.push(format!("{name}: {}", panic_message(&*panic)));
        }
    }
    assert!(
        failed.is_empty(),
        "{} row(s) failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

/// The message of a caught panic.
pub fn panic_message(panic: &(dyn Any + Send)) -> &str {
    match panic.downcast_ref::<String>() {
        Some(message) => message,
        None => panic.downcast_ref::<&str>().copied().unwrap_or("a panic"),
    }
}
