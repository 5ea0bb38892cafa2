//! The session protocol's frames (PROTOCOL.md §17): client frames parsed into
//! [`Command`]s, server frames rendered as compact JSON with `type` first.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::{engine::resume::quoted, history::Position};

/// A client frame, checked for the fields its type needs.
#[derive(Debug)]
pub(crate) enum Command {
    Ping,
    Publish {
        channel: Option<String>,
        /// The payload as published: a string as it is, any other value as its
        /// compact JSON text.
        payload: String,
    },
    Subscribe {
        channel: String,
        since: Option<Position>,
        history: Option<i64>,
    },
    Unsubscribe {
        channel: String,
    },
    Refresh {
        token: String,
    },
}

/// A client frame: its `id` (a string or a number, rendered) and its command,
/// or why it is a bad request.
pub(crate) struct Parsed {
    pub(crate) id: Option<String>,
    pub(crate) command: Result<Command, String>,
}

/// Reads one client frame.
pub(crate) fn parse(bytes: &[u8]) -> Parsed {
    let mut object = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(object)) => object,
        _ => return bad(None, "a frame is one JSON object"),
    };
    let id = match object.remove("id") {
        None => None,
        Some(id @ (Value::String(_) | Value::Number(_))) => Some(id.to_string()),
        Some(_) => return bad(None, "id must be a string or a number"),
    };
    let command = command(&mut object);
    Parsed { id, command }
}

fn bad(id: Option<String>, why: &str) -> Parsed {
    Parsed {
        id,
        command: Err(why.to_owned()),
    }
}

fn command(object: &mut Map<String, Value>) -> Result<Command, String> {
    let kind = match object.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        _ => return Err("type must be a string".into()),
    };
    match kind {
        "ping" => Ok(Command::Ping),
        "publish" => {
            let channel = optional_string(object, "channel")?;
            let payload = match object.remove("payload") {
                None => return Err("publish needs a payload".into()),
                Some(Value::String(text)) => text,
                Some(other) => other.to_string(),
            };
            Ok(Command::Publish { channel, payload })
        }
        "subscribe" => {
            let channel = required_string(object, "channel")?;
            let since = optional_string(object, "since")?
                .map(|s| s.parse::<Position>().map_err(|e| format!("since: {e}")))
                .transpose()?;
            let history = match object.get("history") {
                None => None,
                Some(n) => match n.as_i64() {
                    Some(n) if n >= 0 => Some(n),
                    _ => return Err("history must be a whole number, 0 or more".into()),
                },
            };
            if since.is_some() && history.is_some() {
                return Err("give since or history, not both".into());
            }
            Ok(Command::Subscribe {
                channel,
                since,
                history,
            })
        }
        "unsubscribe" => Ok(Command::Unsubscribe {
            channel: required_string(object, "channel")?,
        }),
        "refresh" => Ok(Command::Refresh {
            token: required_string(object, "token")?,
        }),
        _ => Err("unknown type".into()),
    }
}

fn optional_string(object: &mut Map<String, Value>, field: &str) -> Result<Option<String>, String> {
    match object.remove(field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{field} must be a string")),
    }
}

fn required_string(object: &mut Map<String, Value>, field: &str) -> Result<String, String> {
    optional_string(object, field)?.ok_or_else(|| format!("{field} is required"))
}

/// The codes of `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Code {
    BadRequest,
    Forbidden,
    TooBig,
    TooMany,
    Unavailable,
    Unauthorized,
}

impl Code {
    fn as_str(self) -> &'static str {
        match self {
            Code::BadRequest => "bad_request",
            Code::Forbidden => "forbidden",
            Code::TooBig => "too_big",
            Code::TooMany => "too_many",
            Code::Unavailable => "unavailable",
            Code::Unauthorized => "unauthorized",
        }
    }
}

/// `{"type":…` with the `id`, when there is one, then `rest` (fields with
/// their leading commas).
fn frame(kind: &str, id: Option<&str>, rest: &str) -> Bytes {
    let id = id.map(|id| format!(r#","id":{id}"#)).unwrap_or_default();
    Bytes::from(format!(r#"{{"type":"{kind}"{id}{rest}}}"#))
}

/// An answer that says only its type: `pong`, `ack`.
pub(crate) fn answer(kind: &str, id: Option<&str>) -> Bytes {
    frame(kind, id, "")
}

pub(crate) fn error(id: Option<&str>, code: Code, message: &str) -> Bytes {
    let rest = format!(
        r#","code":"{}","message":{}"#,
        code.as_str(),
        quoted(message)
    );
    frame("error", id, &rest)
}

/// `subscribed` or `unsubscribed`, with a `reason` when the server left on its own.
pub(crate) fn channel_answer(
    kind: &str,
    id: Option<&str>,
    channel: &str,
    reason: Option<&str>,
) -> Bytes {
    let reason = reason
        .map(|r| format!(r#","reason":{}"#, quoted(r)))
        .unwrap_or_default();
    frame(
        kind,
        id,
        &format!(r#","channel":{}{reason}"#, quoted(channel)),
    )
}

pub(crate) fn refreshed(id: Option<&str>, exp: Option<&Value>) -> Bytes {
    let exp = exp.map_or_else(|| "null".to_owned(), Value::to_string);
    frame("refreshed", id, &format!(r#","exp":{exp}"#))
}

pub(crate) fn expiring(exp: &Value) -> Bytes {
    frame("expiring", None, &format!(r#","exp":{exp}"#))
}

/// A notification: the payload as a JSON string, with its position on a
/// history channel.
pub(crate) fn message(channel: &str, position: Option<&Position>, payload: &str) -> Bytes {
    let at = position
        .map(|p| format!(r#","epoch":{},"offset":{}"#, quoted(&p.epoch), p.offset))
        .unwrap_or_default();
    let rest = format!(
        r#","channel":{}{at},"payload":{}"#,
        quoted(channel),
        quoted(payload)
    );
    frame("message", None, &rest)
}

pub(crate) fn gap(channel: &str, epoch: &str, from: i64) -> Bytes {
    let rest = format!(
        r#","channel":{},"epoch":{},"from":{from}"#,
        quoted(channel),
        quoted(epoch)
    );
    frame("gap", None, &rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_echoed_as_given_and_bad_frames_say_why() {
        let p = parse(br#"{"type":"ping","id":"a\"b"}"#);
        assert_eq!(p.id.as_deref(), Some(r#""a\"b""#));
        assert_eq!(
            answer("pong", p.id.as_deref()),
            r#"{"type":"pong","id":"a\"b"}"#
        );
        assert!(parse(b"[1]").command.is_err());
        assert!(parse(br#"{"type":"nope","id":1}"#).command.is_err());
        assert!(parse(br#"{"type":"ping","id":{}}"#).command.is_err());
        let p = parse(br#"{"type":"publish","id":7,"payload":{"a":[1, 2]}}"#);
        assert_eq!(p.id.as_deref(), Some("7"));
        match p.command {
            Ok(Command::Publish {
                channel: None,
                payload,
            }) => assert_eq!(payload, r#"{"a":[1,2]}"#),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn messages_carry_their_position_on_history_channels() {
        let p = Position::new("E", 3).unwrap();
        assert_eq!(
            message("c", Some(&p), "x\n"),
            r#"{"type":"message","channel":"c","epoch":"E","offset":3,"payload":"x\n"}"#
        );
        assert_eq!(
            message("c", None, ""),
            r#"{"type":"message","channel":"c","payload":""}"#
        );
    }
}
