//! The standalone pgws server; see [`pgws::server`] for its variables.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    pgws::server::main().await
}
