//! The client side: tokens, one socket or event stream, many of them.

use std::{
    net::SocketAddr,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures_util::{StreamExt, stream};
use hdrhistogram::Histogram;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_websockets::{ClientBuilder, WebSocketStream};

use crate::{BoxError, Run};

/// One client socket.
pub(crate) type Ws = WebSocketStream<TcpStream>;

/// An HS256 token for `mode`, valid for an hour.
pub(crate) fn token(secret: &str, mode: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({ "mode": mode, "role": "bench", "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signs")
}

/// Opens one authenticated socket reading or writing `channel`.
pub(crate) async fn connect(addr: SocketAddr, channel: &str, token: &str) -> Result<Ws, BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let uri = format!("ws://{addr}/{channel}/{token}");
    let (ws, _) = ClientBuilder::new().uri(&uri)?.connect_on(tcp).await?;
    Ok(ws)
}

/// Opens one event stream (HTTP/1.1, `Accept: text/event-stream`) on `channel`:
/// the body of a `200`, whose connection is driven by a task of its own.
pub(crate) async fn connect_sse(
    addr: SocketAddr,
    channel: &str,
    token: &str,
) -> Result<Incoming, BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = http::Request::get(format!("/{channel}/{token}"))
        .header(http::header::HOST, addr.to_string())
        .header(http::header::ACCEPT, "text/event-stream")
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let res = send.send_request(req).await?;
    if res.status() != http::StatusCode::OK {
        return Err(format!("event stream refused: {}", res.status()).into());
    }
    Ok(res.into_body())
}

impl Run {
    /// Opens `self.o.sockets` sockets, `concurrency` handshakes at a time.
    pub(crate) async fn open_sockets(
        &self,
        channel_of: impl Fn(usize) -> String,
        mode: &str,
    ) -> (Vec<Ws>, Histogram<u64>, Duration, usize) {
        self.open_many(channel_of, mode, |addr, channel, token| async move {
            connect(addr, &channel, &token).await
        })
        .await
    }

    /// Opens `self.o.sockets` clients with `open`, `concurrency` at a time.
    pub(crate) async fn open_many<T, F>(
        &self,
        channel_of: impl Fn(usize) -> String,
        mode: &str,
        open: impl Fn(SocketAddr, String, String) -> F,
    ) -> (Vec<T>, Histogram<u64>, Duration, usize)
    where
        F: Future<Output = Result<T, BoxError>>,
    {
        let token = token(&self.o.secret, mode);
        let addr = self.o.addr;
        let started = Instant::now();
        let results: Vec<(usize, Result<T, BoxError>, u64)> =
            stream::iter((0..self.o.sockets).map(|i| {
                let channel = channel_of(i);
                let token = token.clone();
                let opening = open(addr, channel, token);
                async move {
                    let t = Instant::now();
                    let r = opening.await;
                    (i, r, t.elapsed().as_micros() as u64)
                }
            }))
            .buffered(self.o.concurrency)
            .collect()
            .await;
        let took = started.elapsed();
        let mut hist = Histogram::new_with_bounds(1, 120_000_000, 3).unwrap();
        let mut sockets = Vec::with_capacity(results.len());
        let mut failed = 0;
        let mut first_error = None;
        for (_, r, us) in results {
            hist.saturating_record(us.max(1));
            match r {
                Ok(ws) => sockets.push(ws),
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
        if let Some(e) = first_error {
            eprintln!("{failed} handshakes failed; the first: {e}");
        }
        (sockets, hist, took, failed)
    }
}
