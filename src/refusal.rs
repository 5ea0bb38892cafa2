//! [`Refusal`]: every answer to a handshake that is not taken, before the upgrade
//! (PROTOCOL.md §5). One table gives each its status, its `text/plain` body and its
//! `reason` label in `pgws_handshake_refusals_total`.

use std::fmt;

use bytes::Bytes;
use http::{Response, StatusCode, header};

/// Builds [`Refusal`] and its lookups from one table: `Variant(field: Type)?  =>
/// STATUS, "label", "body text"` (the text may name the field).
macro_rules! refusals {
    ($(
        $(#[$doc:meta])*
        $variant:ident $(($field:ident: $ty:ty))? => $status:ident, $label:literal, $text:literal;
    )*) => {
        /// Why a handshake is refused before the upgrade.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub(crate) enum Refusal {
            $( $(#[$doc])* $variant $(($ty))?, )*
        }

        impl Refusal {
            /// Every label, in the table's order (a label may repeat).
            pub(crate) const LABELS: &[&str] = &[$($label),*];

            /// The answer's status.
            pub(crate) fn status(&self) -> StatusCode {
                match self {
                    $( Self::$variant $(($field))? => {
                        $(let _ = $field;)?
                        StatusCode::$status
                    } )*
                }
            }

            /// The `reason` label of `pgws_handshake_refusals_total`.
            pub(crate) fn label(&self) -> &'static str {
                match self {
                    $( Self::$variant $(($field))? => {
                        $(let _ = $field;)?
                        $label
                    } )*
                }
            }
        }

        impl fmt::Display for Refusal {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $( Self::$variant $(($field))? => write!(f, $text), )*
                }
            }
        }
    };
}

refusals! {
    /// A token that does not verify: bad signature, malformed, unknown `kid`, …
    InvalidToken(why: String) => UNAUTHORIZED, "invalid_token", "Invalid token: {why}";
    /// `exp` has passed (plus the leeway).
    TokenExpired => UNAUTHORIZED, "token_expired", "Token expired";
    /// `nbf` or `iat` in the future (beyond the leeway).
    NotYetValid => UNAUTHORIZED, "token_not_yet_valid", "Token not yet valid";
    /// No `mode` claim.
    MissingMode => FORBIDDEN, "missing_mode", "Missing mode claim";
    /// A `mode` other than `r`, `w`, `rw`.
    InvalidMode => FORBIDDEN, "invalid_mode", "Invalid mode claim: use r, w or rw";
    /// A `channel` claim that is not a string, or a `channels` claim that is not
    /// an array of strings.
    InvalidChannelClaim => FORBIDDEN, "invalid_channel_claim",
        "Invalid channel claim: channel must be a string, channels an array of strings";
    /// A channel that is no PostgreSQL identifier.
    InvalidChannelName => BAD_REQUEST, "invalid_channel",
        "Invalid channel name: 1 to 63 bytes of UTF-8 without NUL";
    /// The token grants no channel (for this path).
    NoAllowedChannels => FORBIDDEN, "no_allowed_channels", "No allowed channels";
    /// More channels than `max_channels`.
    TooManyChannels => FORBIDDEN, "too_many_channels", "Too many channels";
    /// A `Sec-WebSocket-Key` that is not 16 bytes of base64.
    InvalidKey => BAD_REQUEST, "bad_request", "Invalid Sec-WebSocket-Key";
    /// `pgws.bearer.<jwt>` offered without `pgws`.
    InvalidSubprotocol => BAD_REQUEST, "bad_request",
        "Invalid subprotocol: offer pgws next to pgws.bearer.<jwt>";
    /// Tokens in the path, header and subprotocol that differ.
    ConflictingTokens => BAD_REQUEST, "bad_request",
        "Conflicting tokens: the path, header and subprotocol disagree";
    /// An event stream for a token whose mode is `w`: streams only read.
    ReadNotAllowed => FORBIDDEN, "read_not_allowed",
        "Read not allowed: an event stream needs mode r or rw";
    /// An `Origin` outside the allow-list.
    OriginNotAllowed => FORBIDDEN, "origin_not_allowed", "Origin not allowed";
    /// `max_sockets` sockets already open.
    TooManySockets => SERVICE_UNAVAILABLE, "too_many_sockets", "Too many connections";
    /// `max_sockets_per_sub` sockets already open for the token's `sub`.
    TooManySocketsForSub => TOO_MANY_REQUESTS, "too_many_sockets_per_sub",
        "Too many connections for this user";
    /// `max_handshakes_per_second` handshakes already taken this second.
    TooManyHandshakes => SERVICE_UNAVAILABLE, "too_many_handshakes",
        "Too many handshakes: try again shortly";
    /// A `since=` or `history=` query value that does not parse or does not fit
    /// the socket (the text starts with `Invalid position`).
    InvalidPosition(why: String) => BAD_REQUEST, "invalid_position", "{why}";
    /// A `since=` position for a channel the token does not grant.
    PositionNotAllowed => FORBIDDEN, "no_allowed_channels",
        "No allowed channels: a since position names a channel the token does not grant";
    /// The channels were not listened to within the subscribe timeout.
    DatabaseUnavailable => SERVICE_UNAVAILABLE, "database_unavailable", "Database unavailable";
    /// The layer is shutting down.
    ShuttingDown => SERVICE_UNAVAILABLE, "shutting_down", "Server shutting down";
}

impl Refusal {
    /// The answer: its status and its text as `text/plain`.
    pub(crate) fn response(&self) -> Response<Bytes> {
        Response::builder()
            .status(self.status())
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Bytes::from(self.to_string()))
            .expect("static headers are valid")
    }

    /// Where this refusal's label stands in [`LABELS`](Self::LABELS) (its first place).
    pub(crate) fn label_index(&self) -> usize {
        let label = self.label();
        Self::LABELS
            .iter()
            .position(|l| *l == label)
            .expect("every label is in the table")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_is_plain_text_with_the_status_and_text_of_the_row() {
        let r = Refusal::InvalidToken("bad signature".into());
        let res = r.response();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(res.body().as_ref(), b"Invalid token: bad signature");
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
        assert_eq!(r.label(), "invalid_token");
        assert_eq!(
            Refusal::ConflictingTokens.label_index(),
            Refusal::InvalidKey.label_index()
        );
    }
}
