//! The JSON envelopes of both mappings (section 4) and the meta events (section 7).

use std::time::{SystemTime, UNIX_EPOCH};

/// What happened, as the envelope's `event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    Message,
    ConnectionOpen,
    ConnectionClose,
}

impl Event {
    fn as_str(self) -> &'static str {
        match self {
            Event::Message => "WebsocketMessage",
            Event::ConnectionOpen => "ConnectionOpen",
            Event::ConnectionClose => "ConnectionClose",
        }
    }
}

/// `{"channel":…,"event":…,"payload":…,"userClaims":{…}}`; `claims_json` is already compact.
pub(crate) fn per_channel(channel: &str, event: Event, payload: &str, claims_json: &str) -> String {
    let mut out = head(channel, event, payload, claims_json.len());
    out.push_str(",\"userClaims\":");
    out.push_str(claims_json);
    out.push('}');
    out
}

/// `{"channel":…,"event":…,"payload":…,"claims":{…,"message_delivered_at":t}}`.
pub(crate) fn multiplexed(
    channel: &str,
    event: Event,
    payload: &str,
    claims_json: &str,
    delivered_at: SystemTime,
) -> String {
    let mut out = head(channel, event, payload, claims_json.len() + 40);
    out.push_str(",\"claims\":");
    let body = claims_json.trim_end_matches('}');
    out.push_str(body);
    if body.len() > 1 {
        out.push(',');
    }
    out.push_str("\"message_delivered_at\":");
    out.push_str(&unix_seconds(delivered_at));
    out.push_str("}}");
    out
}

fn head(channel: &str, event: Event, payload: &str, extra: usize) -> String {
    let mut out = String::with_capacity(64 + channel.len() + payload.len() + extra);
    out.push_str("{\"channel\":");
    push_json_string(&mut out, channel);
    out.push_str(",\"event\":\"");
    out.push_str(event.as_str());
    out.push_str("\",\"payload\":");
    push_json_string(&mut out, payload);
    out
}

fn push_json_string(out: &mut String, s: &str) {
    // serde_json writes non-ASCII as UTF-8 and escapes only what JSON requires.
    out.push_str(&serde_json::to_string(s).expect("a str always serializes"));
}

fn unix_seconds(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    serde_json::Number::from_f64(secs)
        .map(|n| n.to_string())
        .unwrap_or_else(|| "0.0".into())
}

/// Removes `message_delivered_at` from claims so the envelope's own value wins.
pub(crate) fn claims_for_multiplexed(
    claims: &serde_json::Map<String, serde_json::Value>,
) -> String {
    let mut claims = claims.clone();
    claims.remove("message_delivered_at");
    serde_json::Value::Object(claims).to_string()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn per_channel_envelope_is_compact_and_ordered() {
        let s = per_channel("chat", Event::Message, "Hi \"you\" é", r#"{"mode":"rw"}"#);
        assert_eq!(
            s,
            r#"{"channel":"chat","event":"WebsocketMessage","payload":"Hi \"you\" é","userClaims":{"mode":"rw"}}"#
        );
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["payload"], "Hi \"you\" é");
    }

    #[test]
    fn multiplexed_envelope_appends_delivery_time() {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
        let s = multiplexed("c", Event::ConnectionOpen, "a,b", r#"{"mode":"r"}"#, at);
        assert_eq!(
            s,
            r#"{"channel":"c","event":"ConnectionOpen","payload":"a,b","claims":{"mode":"r","message_delivered_at":1700000000.25}}"#
        );
        let empty = multiplexed("c", Event::Message, "", "{}", at);
        assert!(empty.ends_with(r#""claims":{"message_delivered_at":1700000000.25}}"#));
    }
}
