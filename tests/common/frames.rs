//! Raw WebSocket for protocol tests: an upgrade written by hand on a `TcpStream`, a
//! client frame encoder that masks, and a reader of the server's (unmasked) frames.

use std::{net::SocketAddr, time::Duration};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

pub const CONT: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;
pub const FIN: u8 = 0x80;
pub const RSV1: u8 = 0x40;
pub const RSV2: u8 = 0x20;
pub const RSV3: u8 = 0x10;

/// The longest any single read waits.
pub const READ_WAIT: Duration = Duration::from_secs(5);

const MASK: [u8; 4] = [0x5a, 0x3c, 0xe1, 0x07];

/// A masked frame; `head` is the first byte (FIN, RSV bits, opcode).
pub fn masked(head: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = header(head, payload.len() as u64);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

/// A whole (FIN) masked frame.
pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    masked(FIN | opcode, payload)
}

/// A masked close frame with a code and a reason.
pub fn close(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    frame(CLOSE, &payload)
}

/// A frame without a mask, which a client must never send.
pub fn unmasked(head: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![head];
    push_len(&mut out, 0, payload.len() as u64);
    out.extend_from_slice(payload);
    out
}

/// Only the header and mask of a masked frame announcing `len` payload bytes.
pub fn header(head: u8, len: u64) -> Vec<u8> {
    let mut out = vec![head];
    push_len(&mut out, 0x80, len);
    out.extend_from_slice(&MASK);
    out
}

/// The shortest length encoding, as RFC 6455 §5.2 requires.
fn push_len(out: &mut Vec<u8>, mask_bit: u8, len: u64) {
    if len <= 125 {
        out.push(mask_bit | len as u8);
    } else if len <= 0xFFFF {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

/// A frame from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// `(frame, bytes used)` when `buf` starts with a whole server frame.
fn parse(buf: &[u8]) -> Option<(Frame, usize)> {
    let [b0, b1, ..] = *buf else { return None };
    assert_eq!(b1 & 0x80, 0, "the server masked a frame");
    let (len, mut at) = match b1 & 0x7F {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().unwrap()) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().unwrap()) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let payload = buf.get(at..at + len)?.to_vec();
    at += len;
    let frame = Frame {
        fin: b0 & FIN != 0,
        rsv: b0 & (RSV1 | RSV2 | RSV3),
        opcode: b0 & 0x0F,
        payload,
    };
    Some((frame, at))
}

/// A client socket speaking raw frames.
pub struct RawWs {
    tcp: TcpStream,
    /// Bytes read and not yet parsed.
    buf: Vec<u8>,
}

impl RawWs {
    /// Upgrades a fresh TCP connection at `path`; panics unless the answer is a valid `101`.
    pub async fn connect(addr: SocketAddr, path: &str) -> RawWs {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let key = STANDARD.encode(rand::random::<[u8; 16]>());
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut ws = RawWs {
            tcp,
            buf: Vec::new(),
        };
        let end = loop {
            if let Some(i) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                ws.fill().await > 0,
                "connection closed during the handshake"
            );
        };
        let rest = ws.buf.split_off(end);
        let head = String::from_utf8(std::mem::replace(&mut ws.buf, rest)).unwrap();
        assert!(head.starts_with("HTTP/1.1 101 "), "not upgraded: {head}");
        let accept = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-accept")
                .then(|| value.trim().to_owned())
        });
        assert_eq!(accept, Some(accept_key(&key)), "{head}");
        ws
    }

    /// Writes `bytes` in one write.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.unwrap();
    }

    /// Writes `bytes` one byte per write, letting the server read in between.
    pub async fn send_bytewise(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.tcp.write_all(&[*b]).await.unwrap();
            tokio::task::yield_now().await;
        }
    }

    /// Reads more bytes into the buffer; 0 at the end of the stream.
    async fn fill(&mut self) -> usize {
        let mut chunk = [0; 4096];
        let n = timeout(READ_WAIT, self.tcp.read(&mut chunk))
            .await
            .expect("nothing from the server in time")
            .expect("read failed");
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// The next frame, or `None` when the server ended the TCP connection.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some((frame, used)) = parse(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            if self.fill().await == 0 {
                assert!(self.buf.is_empty(), "connection ended mid-frame");
                return None;
            }
        }
    }

    /// The server's close frame: its code (none for an empty payload) and reason.
    /// Data frames before it (a `rw` socket gets its own writes back) are skipped.
    pub async fn expect_close(&mut self) -> (Option<u16>, String) {
        loop {
            let frame = self
                .next_frame()
                .await
                .expect("connection ended without a close frame");
            assert_eq!(frame.rsv, 0, "{frame:?}");
            match frame.opcode {
                CLOSE => {
                    assert!(frame.fin);
                    let p = frame.payload;
                    assert_ne!(p.len(), 1, "a 1-byte close payload");
                    if p.is_empty() {
                        return (None, String::new());
                    }
                    let code = u16::from_be_bytes([p[0], p[1]]);
                    return (Some(code), String::from_utf8(p[2..].to_vec()).unwrap());
                }
                TEXT | BINARY | PING => {}
                _ => panic!("unexpected frame before the close: {frame:?}"),
            }
        }
    }

    /// The payload of the next pong; data frames and pings before it are skipped.
    pub async fn expect_pong(&mut self) -> Vec<u8> {
        loop {
            let frame = self
                .next_frame()
                .await
                .expect("connection ended without a pong");
            match frame.opcode {
                PONG => return frame.payload,
                TEXT | BINARY | PING => {}
                _ => panic!("unexpected frame before the pong: {frame:?}"),
            }
        }
    }

    /// The server ends the TCP connection (a read returns 0) with nothing more sent.
    pub async fn expect_eof(&mut self) {
        assert!(self.buf.is_empty(), "bytes after the close: {:?}", self.buf);
        let n = self.fill().await;
        assert_eq!(n, 0, "bytes after the close: {:?}", self.buf);
    }
}

/// `Sec-WebSocket-Accept` for `key` (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    STANDARD.encode(sha.digest().bytes())
}
