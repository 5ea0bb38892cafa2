//! The pass-through baseline: the same trivial inner service, bare or wrapped in
//! [`PgWsLayer`], behind the same hyper server, for `wrk` (BENCHMARKS.md, target 6).
//!
//! ```text
//! target/release/examples/passthrough bare 127.0.0.1:3100
//! target/release/examples/passthrough layer 127.0.0.1:3101
//! wrk -t1 -c64 -d10s http://127.0.0.1:3100/
//! ```
//!
//! The layer needs a secret and a database URL (`PGWS_JWT_SECRET`, `PGWS_DB_URI`);
//! plain requests never touch the database.

use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use pgws::{Config, PgWsLayer};
use tokio::net::TcpListener;
use tower::{Layer, service_fn};

async fn inner(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"ok\n"))))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_default();
    let addr: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:3100").parse()?;
    let layer = match which.as_str() {
        "bare" => None,
        "layer" => {
            let secret = std::env::var("PGWS_JWT_SECRET")
                .unwrap_or_else(|_| "reallyreallyreallyreallyverysafe".into());
            let db =
                std::env::var("PGWS_DB_URI").unwrap_or_else(|_| pgws::DEFAULT_DATABASE_URL.into());
            let config = Config::builder()
                .jwt_secret(secret)
                .database_url(db)
                .build()?;
            Some(PgWsLayer::new(config))
        }
        _ => return Err("usage: passthrough <bare|layer> [HOST:PORT]".into()),
    };
    let listener = TcpListener::bind(addr).await?;
    println!("passthrough {which} on {addr}");
    let http = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        let http = http.clone();
        match &layer {
            None => {
                let svc = TowerToHyperService::new(service_fn(inner));
                tokio::spawn(async move {
                    let _ = http.serve_connection_with_upgrades(io, svc).await;
                });
            }
            Some(layer) => {
                let svc = TowerToHyperService::new(layer.layer(service_fn(inner)));
                tokio::spawn(async move {
                    let _ = http.serve_connection_with_upgrades(io, svc).await;
                });
            }
        }
    }
}
