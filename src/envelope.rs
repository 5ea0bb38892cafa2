//! The JSON envelopes of both mappings (PROTOCOL.md §6, §7) and the meta events (§10).
//!
//! serde_json writes every envelope from borrowed parts; a socket's claims are
//! encoded once and embedded as raw JSON values, never spliced in as text.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer, ser::SerializeMap};
use serde_json::{Map, Value, value::RawValue};

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

/// The claim the multiplexed envelope sets itself, replacing the token's.
const DELIVERED_AT: &str = "message_delivered_at";

/// A socket's claims, encoded once in the form its mapping's envelope embeds.
/// Either form holds every claim, so either envelope can be written from either.
#[derive(Debug, Clone)]
pub(crate) enum Claims {
    /// One compact object: the per-channel envelope's `userClaims`, as is.
    Object(Box<RawValue>),
    /// Each value encoded, in map order: the multiplexed envelope writes them
    /// around its own `message_delivered_at`.
    Entries(Box<[(Box<str>, Box<RawValue>)]>),
}

impl Claims {
    /// The form of the per-channel mapping.
    pub(crate) fn object(claims: &Map<String, Value>) -> Self {
        Claims::Object(raw(claims))
    }

    /// The form of the multiplexed mapping.
    pub(crate) fn entries(claims: &Map<String, Value>) -> Self {
        let entries = claims.iter().map(|(k, v)| (k.as_str().into(), raw(v)));
        Claims::Entries(entries.collect())
    }
}

impl Claims {
    /// Only the claims named in `names`, in the same form.
    pub(crate) fn only(&self, names: &[String]) -> Claims {
        let named = |key: &str| names.iter().any(|n| n == key);
        match self {
            Claims::Object(raw) => {
                // Written by serde_json, so it parses.
                let all: Map<String, Value> = serde_json::from_str(raw.get()).unwrap_or_default();
                let kept: Map<String, Value> = all.into_iter().filter(|(k, _)| named(k)).collect();
                Claims::object(&kept)
            }
            Claims::Entries(entries) => {
                let kept = entries.iter().filter(|(k, _)| named(k)).cloned();
                Claims::Entries(kept.collect())
            }
        }
    }

    /// About how many bytes the claims take in an envelope.
    fn encoded_len(&self) -> usize {
        match self {
            Claims::Object(raw) => raw.get().len(),
            Claims::Entries(entries) => entries
                .iter()
                .map(|(k, v)| k.len() + v.get().len() + 4)
                .sum(),
        }
    }
}

fn raw<T: Serialize + ?Sized>(value: &T) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).expect("JSON values always serialize")
}

/// Every claim, as one object.
impl Serialize for Claims {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Claims::Object(raw) => raw.serialize(s),
            Claims::Entries(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    map.serialize_entry(key, value)?;
                }
                map.end()
            }
        }
    }
}

/// The claims with the envelope's own `message_delivered_at`, written last.
struct Stamped<'a> {
    claims: &'a Claims,
    at: f64,
}

impl Serialize for Stamped<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        match self.claims {
            Claims::Entries(entries) => {
                for (key, value) in entries.iter().filter(|(k, _)| &**k != DELIVERED_AT) {
                    map.serialize_entry(key, value)?;
                }
            }
            // Not the multiplexed mapping's form (the layer never pairs them): read
            // the object back. It was written by serde_json, so it parses.
            Claims::Object(raw) => {
                let claims: Map<String, Value> =
                    serde_json::from_str(raw.get()).map_err(serde::ser::Error::custom)?;
                for (key, value) in claims.iter().filter(|(k, _)| *k != DELIVERED_AT) {
                    map.serialize_entry(key, value)?;
                }
            }
        }
        map.serialize_entry(DELIVERED_AT, &self.at)?;
        map.end()
    }
}

/// `{"channel":…,"event":…,"payload":…,"userClaims":{…}}`.
#[derive(Serialize)]
struct PerChannel<'a> {
    channel: &'a str,
    event: &'static str,
    payload: &'a str,
    #[serde(rename = "userClaims")]
    user_claims: &'a Claims,
}

/// `{"channel":…,"event":…,"payload":…,"claims":{…,"message_delivered_at":t}}`.
#[derive(Serialize)]
struct Multiplexed<'a> {
    channel: &'a str,
    event: &'static str,
    payload: &'a str,
    claims: Stamped<'a>,
}

/// The per-channel envelope.
pub(crate) fn per_channel(channel: &str, event: Event, payload: &str, claims: &Claims) -> String {
    let len = estimate(channel, payload, claims);
    write(
        &PerChannel {
            channel,
            event: event.as_str(),
            payload,
            user_claims: claims,
        },
        len,
    )
}

/// The multiplexed envelope, delivered at `delivered_at`.
pub(crate) fn multiplexed(
    channel: &str,
    event: Event,
    payload: &str,
    claims: &Claims,
    delivered_at: SystemTime,
) -> String {
    let len = estimate(channel, payload, claims) + DELIVERED_AT.len() + 24;
    write(
        &Multiplexed {
            channel,
            event: event.as_str(),
            payload,
            claims: Stamped {
                claims,
                at: unix_seconds(delivered_at),
            },
        },
        len,
    )
}

/// Room for an envelope, so that writing it rarely grows the buffer.
fn estimate(channel: &str, payload: &str, claims: &Claims) -> usize {
    // Field names and quotes, plus some room for escapes.
    80 + channel.len() + payload.len() + payload.len() / 8 + claims.encoded_len()
}

fn write<T: Serialize>(envelope: &T, len: usize) -> String {
    let mut out = Vec::with_capacity(len);
    // Every part is a string, a float or JSON that serde_json wrote itself.
    serde_json::to_writer(&mut out, envelope).expect("an envelope always serializes");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn map(json: &str) -> Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn per_channel_envelope_is_compact_and_ordered() {
        let claims = Claims::object(&map(r#"{"mode":"rw"}"#));
        let s = per_channel("chat", Event::Message, "Hi \"you\" é", &claims);
        assert_eq!(
            s,
            r#"{"channel":"chat","event":"WebsocketMessage","payload":"Hi \"you\" é","userClaims":{"mode":"rw"}}"#
        );
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["payload"], "Hi \"you\" é");
    }

    #[test]
    fn multiplexed_envelope_appends_delivery_time() {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
        let claims = Claims::entries(&map(r#"{"mode":"r"}"#));
        let s = multiplexed("c", Event::ConnectionOpen, "a,b", &claims, at);
        assert_eq!(
            s,
            r#"{"channel":"c","event":"ConnectionOpen","payload":"a,b","claims":{"mode":"r","message_delivered_at":1700000000.25}}"#
        );
        let empty = multiplexed("c", Event::Message, "", &Claims::entries(&Map::new()), at);
        assert!(empty.ends_with(r#""claims":{"message_delivered_at":1700000000.25}}"#));
    }

    #[test]
    fn claims_ending_in_an_object_stay_valid_json() {
        let at = UNIX_EPOCH + Duration::from_secs(1);
        for json in [
            r#"{"user_metadata":{"name":"x"}}"#,
            r#"{"x":{}}"#,
            r#"{"a":[{}],"z":{"y":{"}":"}}"}}}"#,
        ] {
            let s = multiplexed("c", Event::Message, "p", &Claims::entries(&map(json)), at);
            let v: Value = serde_json::from_str(&s).unwrap_or_else(|e| panic!("{s}: {e}"));
            let mut expected = map(json);
            expected.insert(DELIVERED_AT.into(), 1.0.into());
            assert_eq!(v["claims"], Value::Object(expected), "{s}");
        }
    }

    #[test]
    fn only_keeps_the_named_claims_in_either_form() {
        let claims = map(r#"{"email":"a@b","mode":"r","sub":"42","o":{"k":1}}"#);
        let names = ["sub".to_owned(), "o".to_owned(), "absent".to_owned()];
        let at = UNIX_EPOCH + Duration::from_secs(2);
        let object = Claims::object(&claims).only(&names);
        assert_eq!(
            per_channel("c", Event::ConnectionOpen, "c", &object),
            r#"{"channel":"c","event":"ConnectionOpen","payload":"c","userClaims":{"o":{"k":1},"sub":"42"}}"#
        );
        let entries = Claims::entries(&claims).only(&names);
        assert!(
            multiplexed("c", Event::ConnectionOpen, "c", &entries, at)
                .ends_with(r#""claims":{"o":{"k":1},"sub":"42","message_delivered_at":2.0}}"#)
        );
        let none = Claims::object(&claims).only(&[]);
        assert!(
            per_channel("c", Event::ConnectionClose, "c", &none).ends_with(r#""userClaims":{}}"#)
        );
    }

    #[test]
    fn either_form_writes_either_envelope() {
        let claims = map(r#"{"mode":"w","message_delivered_at":1,"o":{"k":[1]}}"#);
        let (object, entries) = (Claims::object(&claims), Claims::entries(&claims));
        let at = UNIX_EPOCH + Duration::from_secs(2);
        assert_eq!(
            per_channel("c", Event::Message, "p", &object),
            per_channel("c", Event::Message, "p", &entries)
        );
        let mux = multiplexed("c", Event::Message, "p", &entries, at);
        assert_eq!(mux, multiplexed("c", Event::Message, "p", &object, at));
        assert!(mux.ends_with(r#""mode":"w","o":{"k":[1]},"message_delivered_at":2.0}}"#));
    }
}
