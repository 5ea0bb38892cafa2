//! A TCP forwarder to the test database that delays every byte by a fixed time in
//! each direction: a database some way off across a network.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::mpsc,
    time::{Instant, sleep_until},
};

/// Forwards to the database, `delay` late each way.
pub struct Latency {
    pub addr: SocketAddr,
}

impl Latency {
    pub async fn start(delay: Duration) -> Latency {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = super::blackhole::pg_addr();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&target).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(delayed(cr, sw, delay));
                tokio::spawn(delayed(sr, cw, delay));
            }
        });
        Latency { addr }
    }

    /// A database URI through this forwarder.
    pub fn uri(&self) -> String {
        format!("postgres://postgres@{}/postgres", self.addr)
    }
}

/// Copies `from` to `to`, each chunk written `delay` after it was read; chunks
/// stay in flight together, as on a link.
async fn delayed(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes)>(1024);
    tokio::spawn(async move {
        while let Some((at, chunk)) = rx.recv().await {
            sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            return;
        }
        let chunk = Bytes::copy_from_slice(&buf[..n]);
        if tx.send((Instant::now() + delay, chunk)).await.is_err() {
            return;
        }
    }
}
