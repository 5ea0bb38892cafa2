//! [`CodecIo`]: the transport the WebSocket codec runs on, between the socket's
//! read half and its [`Outbox`].

use std::{
    io::{self, Cursor, IoSlice},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker, ready},
};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::frame::{FrameHeader, coding::OpCode};

use super::outbox::Outbox;

/// The transport the WebSocket codec runs on: reads from the socket's read half,
/// writes into the [`Outbox`], so its frames (pongs, pings, closes, a replay) and
/// the hub's go out one after the other, never interleaved. Each write of the codec
/// is whole frames (it encodes a frame in full, then writes it), and goes on the
/// wire as one piece: written on its flush, or by [`Outbox::poll_flush_wire`] (the
/// codec's last write, its answer to a close, comes without a flush).
///
/// It also looks at each frame header as it passes (with the codec's own header
/// parser) for the two faults the codec lets by or finds late: a length not in its
/// minimal encoding, which the codec accepts, and a control frame over 125 bytes,
/// which the codec finds only once the whole payload is in. Either fails the read
/// with [`BadHeader`], once the frames before it are read.
pub(crate) struct CodecIo<R> {
    read: R,
    outbox: Arc<Outbox>,
    headers: Headers,
}

impl<R> CodecIo<R> {
    pub(crate) fn new(read: R, outbox: Arc<Outbox>) -> Self {
        Self {
            read,
            outbox,
            headers: Headers::default(),
        }
    }
}

impl<R: AsyncRead + Unpin> CodecIo<R> {
    /// Reads and drops what has already arrived (at most `limit` bytes), without
    /// waiting: a connection dropped with bytes unread ends with a reset, which may
    /// cost the peer the close frame just sent.
    pub(crate) fn discard_ready(&mut self, limit: usize) {
        let mut cx = Context::from_waker(Waker::noop());
        let mut chunk = [0; 1024];
        let mut left = limit;
        while left > 0 {
            let mut buf = ReadBuf::new(&mut chunk[..left.min(1024)]);
            match Pin::new(&mut self.read).poll_read(&mut cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => left -= buf.filled().len(),
                _ => return,
            }
        }
    }
}

/// A frame header that breaks RFC 6455 in a way the codec does not check (in time):
/// a non-minimal length, or a control frame over 125 bytes.
#[derive(Debug)]
pub(crate) struct BadHeader;

impl std::fmt::Display for BadHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a non-minimal length or a control frame over 125 bytes")
    }
}

impl std::error::Error for BadHeader {}

impl BadHeader {
    /// Whether a read failed on a bad header.
    pub(crate) fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|e| e.is::<BadHeader>())
    }

    fn error() -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, BadHeader)
    }
}

/// Where the incoming bytes are: in a header, or in a payload to skip.
#[derive(Default)]
struct Headers {
    /// Payload bytes of the current frame still to come.
    skip: u64,
    /// The start of a header that came in part.
    head: [u8; 14],
    held: u8,
    /// A bad header was found: the next read fails.
    bad: bool,
    /// The codec rejects what came (a reserved opcode): nothing more to check.
    off: bool,
}

impl Headers {
    /// Follows `bytes`, just read; where a bad header starts in them, if one does
    /// (0 when it started in an earlier read).
    fn scan(&mut self, mut bytes: &[u8]) -> Option<usize> {
        let total = bytes.len();
        loop {
            // Bounded by `bytes.len()`, so the cast back is lossless.
            let n = self.skip.min(bytes.len() as u64) as usize;
            self.skip -= n as u64;
            bytes = &bytes[n..];
            if bytes.is_empty() || self.off {
                return None;
            }
            let held = usize::from(self.held);
            let take = (self.head.len() - held).min(bytes.len());
            self.head[held..held + take].copy_from_slice(&bytes[..take]);
            let mut cursor = Cursor::new(&self.head[..held + take]);
            match FrameHeader::parse(&mut cursor) {
                // `take` was all of `bytes`: a header is never over 14 bytes.
                Ok(None) => {
                    self.held = (held + take) as u8;
                    return None;
                }
                Ok(Some((header, len))) => {
                    // Within `head`, so the cast is lossless.
                    let size = cursor.position() as usize;
                    let control = matches!(header.opcode, OpCode::Control(_));
                    if size != header.len(len) || (control && len > 125) {
                        self.bad = true;
                        return Some((total - bytes.len()).saturating_sub(held));
                    }
                    self.held = 0;
                    self.skip = len;
                    bytes = &bytes[size - held..];
                }
                Err(_) => {
                    self.off = true;
                    return None;
                }
            }
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for CodecIo<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.headers.bad {
            return Poll::Ready(Err(BadHeader::error()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.read).poll_read(cx, buf))?;
        match self.headers.scan(&buf.filled()[before..]) {
            None => Poll::Ready(Ok(())),
            // Nothing before the bad header in this read: fail now.
            Some(0) => Poll::Ready(Err(BadHeader::error())),
            // The frames before it first; the next read fails.
            Some(at) => {
                buf.set_filled(before + at);
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl<R: Unpin> AsyncWrite for CodecIo<R> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if !buf.is_empty() {
            self.outbox.push_wire(Bytes::copy_from_slice(buf));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut all = BytesMut::new();
        for buf in bufs {
            all.extend_from_slice(buf);
        }
        let n = all.len();
        if n > 0 {
            self.outbox.push_wire(all.freeze());
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.outbox.poll_flush_wire(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.outbox.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::duplex;
    use tokio_tungstenite::{
        WebSocketStream,
        tungstenite::{Message as ServerMessage, protocol::Role},
    };
    use tokio_websockets::{ClientBuilder, Message};

    use super::*;
    use crate::engine::{frame::Frame, outbox::Offer};

    /// A masked client frame with `len` in the 7-bit, 16-bit or 64-bit form.
    fn frame_with(first: u8, len: usize, form: u8) -> Vec<u8> {
        let mut bytes = vec![first];
        match form {
            7 => bytes.push(0x80 | len as u8),
            16 => {
                bytes.push(0x80 | 126);
                bytes.extend((len as u16).to_be_bytes());
            }
            _ => {
                bytes.push(0x80 | 127);
                bytes.extend((len as u64).to_be_bytes());
            }
        }
        bytes.extend([0; 4]);
        bytes.extend(std::iter::repeat_n(b'x', len));
        bytes
    }

    #[test]
    fn headers_are_followed_across_reads_and_a_bad_one_is_found_where_it_starts() {
        let good = [
            frame_with(0x81, 5, 7),
            frame_with(0x81, 300, 16),
            frame_with(0x82, 70_000, 64),
            frame_with(0x89, 125, 7),
        ]
        .concat();
        for bad in [
            frame_with(0x81, 5, 16),
            frame_with(0x81, 5, 64),
            frame_with(0x81, 300, 64),
            frame_with(0x89, 126, 16),
        ] {
            let bytes = [good.clone(), bad].concat();
            // In one read, and in reads of 1 and 7 bytes.
            for chunk in [bytes.len(), 1, 7] {
                let mut headers = Headers::default();
                let mut found = None;
                for (i, part) in bytes.chunks(chunk).enumerate() {
                    if let Some(at) = headers.scan(part) {
                        found = Some(i * chunk + at);
                        break;
                    }
                }
                let found = found.expect("the bad header is found") - good.len();
                // Where it starts, or (begun in an earlier read) at the start of the
                // read that completes it.
                if chunk == bytes.len() {
                    assert_eq!(found, 0);
                } else {
                    assert!(found < 14, "{found}");
                }
            }
        }
        let mut headers = Headers::default();
        assert_eq!(headers.scan(&good), None);
    }

    #[tokio::test]
    async fn the_codec_frames_go_between_whole_frames() {
        let (server, client) = duplex(1 << 16);
        let (read, write) = tokio::io::split(server);
        let outbox = Outbox::new(4);
        outbox.attach(Box::new(write), true);
        let io = CodecIo::new(read, outbox.clone());
        let mut server = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
        let mut client = ClientBuilder::new().take_over(client);
        assert_eq!(outbox.offer(&Frame::from("one"), true), Offer::Written);
        server.send(ServerMessage::text("two")).await.unwrap();
        assert_eq!(outbox.offer(&Frame::from("three"), true), Offer::Written);
        for want in ["one", "two", "three"] {
            let msg = client.next().await.unwrap().unwrap();
            assert_eq!(msg.as_text(), Some(want));
        }
        // A ping is answered through the outbox.
        client.send(Message::ping("p")).await.unwrap();
        client.send(Message::text("after")).await.unwrap();
        let ping = server.next().await.unwrap().unwrap();
        assert!(ping.is_ping());
        assert_eq!(
            server.next().await.unwrap().unwrap().to_text().unwrap(),
            "after"
        );
        let pong = client.next().await.unwrap().unwrap();
        assert!(pong.is_pong());
    }
}
