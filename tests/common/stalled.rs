//! Clients that never read: a WebSocket or an event stream that sends its
//! request, reads the answer's head, and then reads nothing, with a small receive
//! buffer so that it holds up the server soon.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

/// A WebSocket at `path` (with the query) that never reads past the `101`.
pub async fn socket_that_never_reads(addr: SocketAddr, path: &str) -> TcpStream {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    let (tcp, head) = never_reading(addr, request).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp
}

/// An event stream at `path` (with the query) that never reads past the `200`.
pub async fn stream_that_never_reads(addr: SocketAddr, path: &str) -> TcpStream {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    let (tcp, head) = never_reading(addr, request).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tcp
}

/// Sends `request` and reads the answer's head, a byte at a time so that nothing
/// after it is read.
async fn never_reading(addr: SocketAddr, request: String) -> (TcpStream, String) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0];
        let n = tokio::time::timeout(super::WAIT, tcp.read(&mut byte))
            .await
            .expect("no answer in time")
            .unwrap();
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    (tcp, String::from_utf8(head).unwrap())
}
