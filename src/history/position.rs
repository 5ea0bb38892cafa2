//! Positions in a channel's history and their text forms: `<epoch>:<offset>` in
//! URLs, `<offset> <epoch> <channel>` in the store's notifications.

use std::{fmt, str::FromStr};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use crate::auth::check_channel_name;

/// The longest epoch accepted (the store makes 12-character ones).
pub const MAX_EPOCH_LEN: usize = 64;

/// What a query value keeps as is: RFC 3986's unreserved characters.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A place in one channel's history: its epoch and the offset of a message
/// (0 is before the first one). Written `<epoch>:<offset>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    /// The channel's epoch: 1 to 64 characters of `A-Z a-z 0-9 - _`.
    pub epoch: String,
    /// The offset of a message in that epoch, from 1; 0 is before the first.
    pub offset: i64,
}

/// A `since=` query value: a position, and, for one channel of a multi-channel
/// socket, that channel. Written `<epoch>:<offset>` or
/// `<epoch>:<offset>:<channel>` with the channel percent-encoded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Since {
    /// Where to resume: after this position.
    pub position: Position,
    /// The channel it is for, when given.
    pub channel: Option<String>,
}

/// The notification announcing a stored message: `<offset> <epoch> <channel>`,
/// the channel being the rest of the text, verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// The history channel the message was published to.
    pub channel: String,
    /// The channel's epoch when it was published.
    pub epoch: String,
    /// Its offset, from 1.
    pub offset: i64,
}

/// A position, `since` value or reference that does not parse. Each variant says
/// which part is wrong; the text is fit for a `400` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseError {
    /// A separator (`:` or a space) is missing.
    Shape,
    /// The epoch is empty, too long or has a character outside `A-Z a-z 0-9 - _`.
    Epoch,
    /// The offset is not a decimal number from 0 (from 1 in a reference) to 2^63-1.
    Offset,
    /// The channel is empty, over 63 bytes or holds NUL.
    Channel,
    /// The percent-encoding does not decode to UTF-8.
    Encoding,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Shape => {
                "Invalid position: expected <epoch>:<offset> or <epoch>:<offset>:<channel>"
            }
            Self::Epoch => "Invalid position: the epoch is 1 to 64 characters of A-Z a-z 0-9 - _",
            Self::Offset => "Invalid position: the offset is a decimal number from 0 to 2^63-1",
            Self::Channel => "Invalid position: the channel is 1 to 63 bytes of UTF-8 without NUL",
            Self::Encoding => "Invalid position: bad percent-encoding",
        })
    }
}

impl std::error::Error for ParseError {}

impl Position {
    /// A position after checking the epoch's form and that the offset is not negative.
    pub fn new(epoch: impl Into<String>, offset: i64) -> Result<Self, ParseError> {
        let epoch = epoch.into();
        check_epoch(&epoch)?;
        if offset < 0 {
            return Err(ParseError::Offset);
        }
        Ok(Self { epoch, offset })
    }
}

impl FromStr for Position {
    type Err = ParseError;

    /// Parses `<epoch>:<offset>` (already decoded).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (epoch, offset) = s.split_once(':').ok_or(ParseError::Shape)?;
        check_epoch(epoch)?;
        Ok(Self {
            epoch: epoch.to_owned(),
            offset: parse_offset(offset)?,
        })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

impl Since {
    /// Parses a `since` value as it stands in the query string, still encoded as
    /// `application/x-www-form-urlencoded` (`%XX` escapes, `+` for a space). The
    /// whole value is decoded once, so `abc:5:a%20b` and `abc%3A5%3Aa+b` are
    /// the same; the channel is everything after the second `:`.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let spaced = raw.replace('+', " ");
        let decoded = percent_decode_str(&spaced)
            .decode_utf8()
            .map_err(|_| ParseError::Encoding)?;
        let (epoch, rest) = decoded.split_once(':').ok_or(ParseError::Shape)?;
        check_epoch(epoch)?;
        let (offset, channel) = match rest.split_once(':') {
            Some((offset, channel)) => (offset, Some(channel)),
            None => (rest, None),
        };
        let offset = parse_offset(offset)?;
        if let Some(channel) = channel {
            check_channel_name(channel).map_err(|_| ParseError::Channel)?;
        }
        Ok(Self {
            position: Position {
                epoch: epoch.to_owned(),
                offset,
            },
            channel: channel.map(str::to_owned),
        })
    }
}

impl fmt::Display for Since {
    /// The query value, the channel percent-encoded: `Since::parse` reads it back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.position)?;
        if let Some(channel) = &self.channel {
            write!(f, ":{}", utf8_percent_encode(channel, QUERY_VALUE))?;
        }
        Ok(())
    }
}

impl Reference {
    /// Parses a notification of the store's announcing channel.
    pub fn parse(payload: &str) -> Result<Self, ParseError> {
        let (offset, rest) = payload.split_once(' ').ok_or(ParseError::Shape)?;
        let (epoch, channel) = rest.split_once(' ').ok_or(ParseError::Shape)?;
        let offset = parse_offset(offset)?;
        if offset == 0 {
            return Err(ParseError::Offset);
        }
        check_epoch(epoch)?;
        check_channel_name(channel).map_err(|_| ParseError::Channel)?;
        Ok(Self {
            channel: channel.to_owned(),
            epoch: epoch.to_owned(),
            offset,
        })
    }

    /// The message's position.
    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch.clone(),
            offset: self.offset,
        }
    }
}

impl fmt::Display for Reference {
    /// The notification's payload, as `publish()` writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.offset, self.epoch, self.channel)
    }
}

fn check_epoch(epoch: &str) -> Result<(), ParseError> {
    let ok = !epoch.is_empty()
        && epoch.len() <= MAX_EPOCH_LEN
        && epoch
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok { Ok(()) } else { Err(ParseError::Epoch) }
}

/// Digits only: `i64::from_str` would also take a sign.
fn parse_offset(text: &str) -> Result<i64, ParseError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::Offset);
    }
    text.parse().map_err(|_| ParseError::Offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn since(epoch: &str, offset: i64, channel: Option<&str>) -> Since {
        Since {
            position: Position {
                epoch: epoch.into(),
                offset,
            },
            channel: channel.map(Into::into),
        }
    }

    #[test]
    fn positions_parse_and_format() {
        let p: Position = "k3J9-xQ_2aZb:42".parse().unwrap();
        assert_eq!(p, Position::new("k3J9-xQ_2aZb", 42).unwrap());
        assert_eq!(p.to_string(), "k3J9-xQ_2aZb:42");
        assert_eq!("e:0".parse::<Position>().unwrap().offset, 0);
        let max = format!("e:{}", i64::MAX);
        assert_eq!(max.parse::<Position>().unwrap().offset, i64::MAX);
    }

    #[test]
    fn bad_positions_get_typed_errors() {
        let long_epoch = format!("{}:1", "a".repeat(MAX_EPOCH_LEN + 1));
        let too_big = format!("e:{}", u64::MAX);
        for (text, err) in [
            ("", ParseError::Shape),
            ("abc", ParseError::Shape),
            (":1", ParseError::Epoch),
            ("a b:1", ParseError::Epoch),
            ("é:1", ParseError::Epoch),
            ("a%41:1", ParseError::Epoch),
            (long_epoch.as_str(), ParseError::Epoch),
            ("e:", ParseError::Offset),
            ("e:-1", ParseError::Offset),
            ("e:+1", ParseError::Offset),
            ("e: 1", ParseError::Offset),
            ("e:1.0", ParseError::Offset),
            ("e:0x10", ParseError::Offset),
            ("e:1:chat", ParseError::Offset),
            (too_big.as_str(), ParseError::Offset),
        ] {
            assert_eq!(text.parse::<Position>(), Err(err.clone()), "{text:?}");
        }
        assert_eq!(Position::new("e", -1), Err(ParseError::Offset));
        assert_eq!(Position::new("e:", 1), Err(ParseError::Epoch));
    }

    #[test]
    fn since_values_parse_with_and_without_a_channel() {
        assert_eq!(Since::parse("abc:5"), Ok(since("abc", 5, None)));
        assert_eq!(
            Since::parse("abc:5:chat"),
            Ok(since("abc", 5, Some("chat")))
        );
        // The whole value is decoded once, as a browser's URLSearchParams encodes it.
        assert_eq!(
            Since::parse("abc%3A5%3Achat+room"),
            Ok(since("abc", 5, Some("chat room")))
        );
        assert_eq!(
            Since::parse("abc:5:a%3Ab:c%2B%25"),
            Ok(since("abc", 5, Some("a:b:c+%")))
        );
        assert_eq!(
            Since::parse("abc:5:%C3%A9t%C3%A9"),
            Ok(since("abc", 5, Some("été")))
        );
    }

    #[test]
    fn hostile_since_values_get_typed_errors() {
        let long = format!("e:1:{}", "a".repeat(64));
        for (raw, err) in [
            ("", ParseError::Shape),
            ("%", ParseError::Shape),
            ("e:1:", ParseError::Channel),
            ("e:1:%00", ParseError::Channel),
            (long.as_str(), ParseError::Channel),
            ("e:1:%FF", ParseError::Encoding),
            ("e:1:%C3", ParseError::Encoding),
            ("e:%2D1", ParseError::Offset),
            ("e:99999999999999999999", ParseError::Offset),
            ("e%20x:1", ParseError::Epoch),
            ("e:1%00", ParseError::Offset),
        ] {
            assert_eq!(Since::parse(raw), Err(err), "{raw:?}");
        }
    }

    #[test]
    fn since_values_round_trip_hostile_channels() {
        let unicode63 = format!("{}a", "é".repeat(31));
        for channel in [
            "chat",
            "a b",
            "a+b",
            "100%",
            "x:y",
            "it's \"quoted\"",
            "a&since=b:2#frag",
            "日本語 チャンネル",
            "🦀",
            "\\",
            unicode63.as_str(),
        ] {
            let value = since("EPOCH_-1", 7, Some(channel));
            let text = value.to_string();
            assert!(
                text.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.~:%".contains(&b)),
                "{text}"
            );
            assert_eq!(Since::parse(&text), Ok(value), "{channel:?}");
        }
    }

    #[test]
    fn references_parse_with_hostile_channels() {
        let unicode63 = format!("{}a", "é".repeat(31));
        for channel in [
            "chat",
            " leading and trailing ",
            "two  spaces",
            "it's \"quoted\"",
            "x:1 y 2",
            "日本語",
            unicode63.as_str(),
        ] {
            let r = Reference {
                channel: channel.into(),
                epoch: "k3J9-xQ_2aZb".into(),
                offset: 12,
            };
            assert_eq!(
                Reference::parse(&r.to_string()),
                Ok(r.clone()),
                "{channel:?}"
            );
            assert_eq!(r.position(), Position::new("k3J9-xQ_2aZb", 12).unwrap());
        }
    }

    #[test]
    fn bad_references_get_typed_errors() {
        let long = format!("1 e {}", "a".repeat(64));
        for (payload, err) in [
            ("", ParseError::Shape),
            ("1", ParseError::Shape),
            ("1 e", ParseError::Shape),
            ("1 e ", ParseError::Channel),
            ("0 e chat", ParseError::Offset),
            ("-1 e chat", ParseError::Offset),
            ("x e chat", ParseError::Offset),
            (" 1 e chat", ParseError::Offset),
            ("1  e chat", ParseError::Epoch),
            ("1 e:x chat", ParseError::Epoch),
            ("1 e a\0b", ParseError::Channel),
            (long.as_str(), ParseError::Channel),
        ] {
            assert_eq!(Reference::parse(payload), Err(err), "{payload:?}");
        }
    }

    #[test]
    fn errors_read_as_sentences() {
        assert!(ParseError::Channel.to_string().contains("63 bytes"));
        assert!(ParseError::Shape.to_string().contains("<epoch>:<offset>"));
    }
}
