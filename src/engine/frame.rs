//! [`Frame`]: one notification for a channel's readers, encoded once as the
//! WebSocket text frame every plain reader receives.

use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};

use crate::history::Position;

/// One notification for a channel's readers, shared by all of them. One pointer
/// wide: a socket's queue holds frames, so the size of a queued frame is memory per
/// socket once frames back up.
#[derive(Debug, Clone)]
pub(crate) struct Frame(Arc<FrameData>);

/// What a [`Frame`] shares; its fields are read through the frame.
#[derive(Debug)]
pub(crate) struct FrameData {
    /// The payload, as sent (a slice of `wire`).
    pub(crate) payload: Bytes,
    /// The payload as a server's WebSocket text frame: what the hub writes to an
    /// idle socket, the same bytes for every reader.
    pub(crate) wire: Bytes,
    /// Where it comes from: its channel and, for a stored message, its position.
    pub(crate) origin: Option<Arc<Origin>>,
    /// The same notification as a session socket's `message` frame, made by
    /// the first session reader and shared by the others.
    session: OnceLock<Frame>,
}

impl Frame {
    /// One allocation for the bytes and one for the frame per notification, however
    /// many sockets it goes to.
    pub(crate) fn new(payload: &[u8], origin: Option<Arc<Origin>>) -> Self {
        let wire = text_frame(payload);
        let payload = wire.slice(wire.len() - payload.len()..);
        Self(Arc::new(FrameData {
            payload,
            wire,
            origin,
            session: OnceLock::new(),
        }))
    }

    /// This notification as session sockets get it (PROTOCOL.md §17), rendered
    /// once for all of them; its origin is this frame's.
    pub(crate) fn session(&self) -> &Frame {
        self.session.get_or_init(|| {
            let json = match &self.origin {
                Some(origin) => crate::engine::session::codec::message(
                    &origin.channel,
                    origin.position.as_ref(),
                    &String::from_utf8_lossy(&self.payload),
                ),
                None => Bytes::copy_from_slice(&self.payload),
            };
            Frame::new(&json, self.origin.clone())
        })
    }
}

impl std::ops::Deref for Frame {
    type Target = FrameData;

    fn deref(&self) -> &FrameData {
        &self.0
    }
}

impl From<&str> for Frame {
    fn from(payload: &str) -> Self {
        Self::new(payload.as_bytes(), None)
    }
}

/// The channel of a notification and, for a stored message, its position.
#[derive(Debug)]
pub(crate) struct Origin {
    pub(crate) channel: String,
    pub(crate) position: Option<Position>,
}

/// `payload` as one unmasked, final text frame (RFC 6455 §5.2), as a server sends
/// it: the codec cannot hand out its encoding, and this one is written by the hub
/// to many sockets, so it is made here once.
pub(crate) fn text_frame(payload: &[u8]) -> Bytes {
    const FIN_TEXT: u8 = 0x81;
    let len = payload.len();
    let mut out = BytesMut::with_capacity(len + 10);
    out.put_u8(FIN_TEXT);
    match len {
        0..=125 => out.put_u8(len as u8),
        126..=0xFFFF => {
            out.put_u8(126);
            out.put_u16(len as u16);
        }
        _ => {
            out.put_u8(127);
            out.put_u64(len as u64);
        }
    }
    out.put_slice(payload);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    use tokio_websockets::ClientBuilder;

    use super::*;

    /// Every length form, read back by a real client's codec.
    #[tokio::test]
    async fn a_client_reads_every_length_form() {
        let lengths = [0, 1, 125, 126, 127, 0xFFFF, 0x1_0000, 70_000];
        let (mut server, client) = tokio::io::duplex(1 << 20);
        let mut client = ClientBuilder::new().take_over(client);
        for len in lengths {
            let payload = "é".repeat(len / 2) + &"x".repeat(len % 2);
            let frame = Frame::from(payload.as_str());
            assert_eq!(&frame.payload[..], payload.as_bytes());
            server.write_all(&frame.wire).await.unwrap();
            let msg = client.next().await.unwrap().unwrap();
            assert_eq!(msg.as_text(), Some(payload.as_str()), "length {len}");
        }
    }
}
