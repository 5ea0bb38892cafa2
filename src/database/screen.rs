//! The listener's byte stream, screened: a notification whose channel or payload
//! is not UTF-8 is dropped (and counted) before tokio-postgres reads it.
//!
//! A `SQL_ASCII` database passes any bytes through `NOTIFY`. tokio-postgres fails
//! the whole connection on such a notification, and with it every reader of every
//! channel (`1012`), whenever anyone who may `NOTIFY` wants. So the listener's
//! stream frames the server's messages (a type byte and a length, PostgreSQL's
//! protocol) and hands on everything but a `NotificationResponse` that does not
//! decode. Under TLS the screen sits on the decrypted side, and the raw socket's
//! screen only watches the `SSLRequest` answer to know that it must stand aside.
//! Once the server names an encoding other than `SQL_ASCII` at start-up (the
//! only one that lets such bytes through), the screen stands aside too.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The `SSLRequest` a client sends before a TLS handshake.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
/// The first byte of a TLS record carrying a handshake (direct TLS).
const TLS_HANDSHAKE: u8 = 0x16;
/// A `NotificationResponse`.
const NOTIFICATION: u8 = b'A';
/// A `ParameterStatus`, which names the server's encoding at start-up.
const PARAMETER_STATUS: u8 = b'S';
/// Notifications are checked whole up to this size (PostgreSQL's payload limit
/// is 8000 bytes); a longer one is handed on as it is.
const MAX_CHECKED: usize = 64 * 1024;
const READ_CHUNK: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Nothing written yet: the first bytes tell whether TLS is asked for.
    Start,
    /// An `SSLRequest` went out: the server's one-byte answer decides.
    Answer,
    /// PostgreSQL messages: screened.
    Messages,
    /// TLS records (the screen is inside the TLS stream), or a broken stream.
    Through,
}

/// A stream whose non-UTF-8 notifications are dropped.
pub(crate) struct Screened<S> {
    inner: S,
    mode: Mode,
    /// Read from `inner`, not handed on yet.
    buf: BytesMut,
    /// Bytes at the front of `buf` cleared to be handed on.
    cleared: usize,
    /// Bytes of the current (unscreened) message still to come after `buf`.
    passing: usize,
    dropped: Arc<AtomicU64>,
}

impl<S> Screened<S> {
    /// The raw socket's stream: screens unless TLS is negotiated on it.
    pub(crate) fn socket(inner: S, dropped: Arc<AtomicU64>) -> Self {
        Self::new(inner, Mode::Start, dropped)
    }

    /// A TLS stream's decrypted side: always screens.
    pub(crate) fn messages(inner: S, dropped: Arc<AtomicU64>) -> Self {
        Self::new(inner, Mode::Messages, dropped)
    }

    fn new(inner: S, mode: Mode, dropped: Arc<AtomicU64>) -> Self {
        Screened {
            inner,
            mode,
            buf: BytesMut::new(),
            cleared: 0,
            passing: 0,
            dropped,
        }
    }

    pub(crate) fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Clears what may be handed on from the front of `buf`, dropping bad
    /// notifications; `false` when a message needs more bytes first.
    fn screen(&mut self) -> bool {
        while self.cleared == 0 {
            if self.buf.is_empty() {
                return false;
            }
            if self.passing > 0 {
                self.cleared = self.passing.min(self.buf.len());
                self.passing -= self.cleared;
                return true;
            }
            let Some(header) = self.buf.get(..5) else {
                return false;
            };
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            let total = len.saturating_add(1);
            let kind = header[0];
            let inspected = kind == NOTIFICATION || kind == PARAMETER_STATUS;
            if !inspected || total > MAX_CHECKED || len < 4 {
                self.cleared = total.min(self.buf.len());
                self.passing = total - self.cleared;
                return true;
            }
            if self.buf.len() < total {
                return false;
            }
            if kind == PARAMETER_STATUS {
                // Only a `SQL_ASCII` database sends bytes that are not UTF-8:
                // elsewhere the rest of the stream is handed on unread.
                if names_utf8_server(&self.buf[5..total]) {
                    self.mode = Mode::Through;
                }
                self.cleared = total;
            } else if decodes(&self.buf[5..total]) {
                self.cleared = total;
            } else {
                self.buf.advance(total);
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        true
    }
}

/// Whether a `ParameterStatus` body says `server_encoding` is not `SQL_ASCII`.
fn names_utf8_server(body: &[u8]) -> bool {
    let mut parts = body.split(|&b| b == 0);
    match (parts.next(), parts.next()) {
        (Some(b"server_encoding"), Some(value)) => value != b"SQL_ASCII",
        _ => false,
    }
}

/// Whether a `NotificationResponse` body (process id, channel, payload, each
/// string ending in NUL) holds UTF-8; a body of another shape is left for
/// tokio-postgres to refuse.
fn decodes(body: &[u8]) -> bool {
    let Some(strings) = body.get(4..) else {
        return true;
    };
    let mut parts = strings.split(|&b| b == 0);
    match (parts.next(), parts.next()) {
        (Some(channel), Some(payload)) => {
            std::str::from_utf8(channel).is_ok() && std::str::from_utf8(payload).is_ok()
        }
        _ => true,
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Screened<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.cleared > 0 {
                let n = this.cleared.min(out.remaining());
                out.put_slice(&this.buf[..n]);
                this.buf.advance(n);
                this.cleared -= n;
                return Poll::Ready(Ok(()));
            }
            match this.mode {
                Mode::Through if this.buf.is_empty() => {
                    return Pin::new(&mut this.inner).poll_read(cx, out);
                }
                Mode::Through => this.cleared = this.buf.len(),
                Mode::Start | Mode::Answer => return this.poll_answer(cx, out),
                Mode::Messages => {
                    if this.screen() {
                        continue;
                    }
                    if ready!(this.poll_fill(cx))? == 0 {
                        // The end of the stream: what is left goes as it is.
                        this.mode = Mode::Through;
                        if this.buf.is_empty() {
                            return Poll::Ready(Ok(()));
                        }
                    }
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> Screened<S> {
    /// The answer to an `SSLRequest` (or the first read before any write): `S`
    /// means TLS follows on this stream, anything else PostgreSQL messages.
    fn poll_answer(&mut self, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.mode == Mode::Start {
            self.mode = Mode::Messages;
            return Pin::new(self).poll_read(cx, out);
        }
        let before = out.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, out))?;
        if let Some(&answer) = out.filled().get(before) {
            self.mode = if answer == b'S' {
                Mode::Through
            } else {
                Mode::Messages
            };
        }
        Poll::Ready(Ok(()))
    }

    /// Reads more into `buf`; how many bytes came (0 at the end of the stream).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut chunk = [0u8; READ_CHUNK];
        let mut read = ReadBuf::new(&mut chunk);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut read))?;
        self.buf.extend_from_slice(read.filled());
        Poll::Ready(Ok(read.filled().len()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Screened<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.mode == Mode::Start && !data.is_empty() {
            self.mode = if data.starts_with(&SSL_REQUEST) {
                Mode::Answer
            } else if data[0] == TLS_HANDSHAKE {
                Mode::Through
            } else {
                Mode::Messages
            };
        }
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn notification(channel: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut body = 7u32.to_be_bytes().to_vec();
        for s in [channel, payload] {
            body.extend_from_slice(s);
            body.push(0);
        }
        message(NOTIFICATION, &body)
    }

    /// What a screened stream hands on of `server`'s bytes, fed `chunk` at a time.
    async fn through(mode: Mode, server: Vec<u8>, chunk: usize) -> (Vec<u8>, u64) {
        let (mut near, far) = tokio::io::duplex(64);
        let dropped = Arc::new(AtomicU64::new(0));
        let mut screened = Screened::new(far, mode, dropped.clone());
        let feed = tokio::spawn(async move {
            for part in server.chunks(chunk) {
                near.write_all(part).await.unwrap();
            }
        });
        let mut got = Vec::new();
        screened.read_to_end(&mut got).await.unwrap();
        feed.await.unwrap();
        (got, dropped.load(Ordering::Relaxed))
    }

    #[tokio::test]
    async fn a_notification_that_is_not_utf8_is_dropped_and_counted() {
        let good = notification(b"chat", "héllo".as_bytes());
        let row = message(b'D', &[0u8; 20_000]);
        let mut server = good.clone();
        server.extend(notification(b"chat", b"\xff\xfe"));
        server.extend(&row);
        server.extend(notification(b"\xc3(", b"ok"));
        server.extend(&good);
        let mut want = good.clone();
        want.extend(&row);
        want.extend(&good);
        for chunk in [1, 3, 7, 4096, usize::MAX] {
            let (got, dropped) = through(Mode::Messages, server.clone(), chunk).await;
            assert_eq!(got, want, "chunks of {chunk}");
            assert_eq!(dropped, 2, "chunks of {chunk}");
        }
    }

    fn parameter(name: &str, value: &str) -> Vec<u8> {
        message(PARAMETER_STATUS, format!("{name}\0{value}\0").as_bytes())
    }

    #[tokio::test]
    async fn outside_sql_ascii_the_stream_is_handed_on_unscreened() {
        let mut server = parameter("server_encoding", "SQL_ASCII");
        server.extend(notification(b"chat", b"\xff"));
        let (got, dropped) = through(Mode::Messages, server, 3).await;
        assert_eq!(
            (got, dropped),
            (parameter("server_encoding", "SQL_ASCII"), 1)
        );
        let mut server = parameter("server_encoding", "UTF8");
        server.extend(notification(b"chat", b"\xff"));
        let (got, dropped) = through(Mode::Messages, server.clone(), 3).await;
        assert_eq!((got, dropped), (server, 0));
    }

    #[tokio::test]
    async fn a_stream_that_ends_mid_message_hands_on_what_it_had() {
        let mut server = notification(b"chat", b"whole");
        let partial = notification(b"chat", b"cut short");
        server.extend_from_slice(&partial[..9]);
        let (got, dropped) = through(Mode::Messages, server.clone(), 5).await;
        assert_eq!((got, dropped), (server, 0));
    }

    #[tokio::test]
    async fn tls_answered_yes_leaves_the_socket_alone() {
        let (mut near, far) = tokio::io::duplex(64);
        let mut screened = Screened::socket(far, Arc::default());
        screened.write_all(&SSL_REQUEST).await.unwrap();
        let mut tls_bytes = vec![b'S'];
        tls_bytes.extend(notification(b"x", b"\xff"));
        near.write_all(&tls_bytes).await.unwrap();
        drop(near);
        let mut got = Vec::new();
        screened.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, tls_bytes);
    }

    #[tokio::test]
    async fn tls_answered_no_screens_what_follows() {
        let (mut near, far) = tokio::io::duplex(64);
        let dropped = Arc::new(AtomicU64::new(0));
        let mut screened = Screened::socket(far, dropped.clone());
        screened.write_all(&SSL_REQUEST).await.unwrap();
        near.write_all(b"N").await.unwrap();
        let mut answer = [0u8; 1];
        screened.read_exact(&mut answer).await.unwrap();
        near.write_all(&notification(b"x", b"\xff")).await.unwrap();
        drop(near);
        let mut got = Vec::new();
        screened.read_to_end(&mut got).await.unwrap();
        assert_eq!(
            (answer, got, dropped.load(Ordering::Relaxed)),
            (*b"N", vec![], 1)
        );
    }
}
