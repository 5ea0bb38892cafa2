//! pgws inside an axum app: the layer takes WebSocket handshakes whose path carries
//! a JWT (`/<jwt>` or `/<channel>/<jwt>`); every other request reaches the routes.
//!
//! ```text
//! PGWS_JWT_SECRET=reallyreallyreallyreallyverysafe cargo run --example axum
//! ```

use axum::{Router, extract::State, http::StatusCode, routing::get};
use pgws::{Config, PgWsLayer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The same PGWS_* variables as the standalone server; PGWS_JWT_SECRET is required.
    let layer = PgWsLayer::new(Config::from_env()?);

    let app = Router::new()
        .route(
            "/",
            get(|| async { "Hello from axum; WebSockets live at /<channel>/<jwt>" }),
        )
        .route("/health", get(health))
        .with_state(layer.clone())
        // Outermost, so handshakes are taken before routing.
        .layer(layer.clone());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            // Close every socket with 1001 Going away before axum drains HTTP.
            layer.shutdown().await;
        })
        .await?;
    Ok(())
}

/// 200 while the listener connection is up, 503 otherwise.
async fn health(State(layer): State<PgWsLayer>) -> StatusCode {
    if layer.is_listening() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}
