//! [`Close`]: every close frame pgws sends, with its code and reason in one table
//! (PROTOCOL.md §9).

use tokio_tungstenite::tungstenite::protocol::{
    CloseFrame,
    frame::{Utf8Bytes, coding::CloseCode},
};

/// A close pgws sends to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Close {
    /// A message from a socket whose mode is `r`.
    WriteNotAllowed,
    /// The outbound queue filled up.
    SlowConsumer,
    /// A frame that breaks RFC 6455 (reserved bits or opcodes, a bad continuation, an
    /// unmasked frame, a control frame fragmented or over 125 bytes, a non-minimal
    /// length, a 1-byte close): the connection ends without waiting for an answer.
    ProtocolError,
    /// A message that is not UTF-8 (a text frame or close reason the codec rejects,
    /// or a binary message pgws checks).
    InvalidUtf8,
    /// A message over `max_message_bytes` once its fragments are put together.
    MessageTooBig,
    /// A message whose `NOTIFY` payload would reach PostgreSQL's 8000 bytes.
    NotifyTooBig,
    /// A message that could not be `NOTIFY`d.
    DatabaseUnavailable,
    /// The listener lost its connection: notifications may have been missed.
    ListenerRestarted,
    /// No pong within a ping interval, or a write blocked that long.
    PingTimeout,
    /// The token's `exp` (plus the leeway) has passed.
    JwtExpired,
    /// The layer is shutting down.
    GoingAway,
}

impl Close {
    /// The table: every close's code and reason.
    const fn code_and_reason(self) -> (u16, &'static str) {
        match self {
            Self::WriteNotAllowed => (1008, "Write not allowed: this token's mode is r"),
            Self::SlowConsumer => (1008, "Slow consumer: the outbound queue is full"),
            Self::ProtocolError => (1002, "Protocol error"),
            Self::InvalidUtf8 => (1007, "Invalid UTF-8"),
            Self::MessageTooBig => (1009, "Message too big"),
            Self::NotifyTooBig => (
                1009,
                "Message too big: the NOTIFY payload would reach 8000 bytes",
            ),
            Self::DatabaseUnavailable => (1013, "Database unavailable"),
            Self::ListenerRestarted => (
                1012,
                "Listener restarted: notifications may have been missed",
            ),
            Self::PingTimeout => (1011, "Ping timeout"),
            Self::JwtExpired => (3001, "JWT expired"),
            Self::GoingAway => (1001, "Going away"),
        }
    }

    /// The close code.
    pub(crate) const fn code(self) -> u16 {
        self.code_and_reason().0
    }

    /// The close reason.
    pub(crate) const fn reason(self) -> &'static str {
        self.code_and_reason().1
    }

    /// The code as the codec takes it.
    pub(crate) fn close_code(self) -> CloseCode {
        CloseCode::from(self.code())
    }

    /// The close frame, as the codec sends it.
    pub(crate) fn frame(self) -> CloseFrame {
        CloseFrame {
            code: self.close_code(),
            reason: Utf8Bytes::from_static(self.reason()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_may_be_sent_and_every_reason_fits_a_close_frame() {
        for close in [
            Close::WriteNotAllowed,
            Close::SlowConsumer,
            Close::ProtocolError,
            Close::InvalidUtf8,
            Close::MessageTooBig,
            Close::NotifyTooBig,
            Close::DatabaseUnavailable,
            Close::ListenerRestarted,
            Close::PingTimeout,
            Close::JwtExpired,
            Close::GoingAway,
        ] {
            assert!(close.close_code().is_allowed(), "{close:?}");
            assert_eq!(u16::from(close.close_code()), close.code());
            // A close frame's payload is at most 125 bytes, 2 of them the code.
            assert!(close.reason().len() <= 123, "{close:?}");
        }
    }
}
