//! The two channel mappings of section 4: what to `LISTEN`, how to route a
//! notification, and which envelope a message gets. Everything that differs
//! between them is here.

use std::{borrow::Cow, time::SystemTime};

use serde::{
    Deserialize, Deserializer,
    de::{IgnoredAny, MapAccess, Visitor},
};

use crate::envelope::{self, Event};

/// How WebSocket channels map onto PostgreSQL channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mapping {
    /// A WebSocket channel is a PostgreSQL channel (postgrest-ws).
    PerChannel,
    /// One `LISTEN` on `listen_channel`; payloads route by their `channel` field
    /// (postgres-websockets).
    Multiplexed { listen_channel: String },
}

/// One `pg_notify(channel, payload)` to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Notify {
    pub(crate) channel: String,
    pub(crate) payload: String,
}

impl Mapping {
    pub(crate) fn new(listen_channel: Option<&str>) -> Self {
        match listen_channel {
            None => Mapping::PerChannel,
            Some(c) => Mapping::Multiplexed {
                listen_channel: c.to_owned(),
            },
        }
    }

    /// Whether each WebSocket channel is `LISTEN`ed on its own.
    pub(crate) fn listens_per_channel(&self) -> bool {
        matches!(self, Mapping::PerChannel)
    }

    /// The one channel listened to in the multiplexed mapping.
    pub(crate) fn fixed_listen(&self) -> Option<&str> {
        match self {
            Mapping::PerChannel => None,
            Mapping::Multiplexed { listen_channel } => Some(listen_channel),
        }
    }

    /// The WebSocket channel a notification goes to, if any.
    pub(crate) fn route<'a>(&self, pg_channel: &'a str, payload: &'a str) -> Option<Cow<'a, str>> {
        match self {
            Mapping::PerChannel => Some(Cow::Borrowed(pg_channel)),
            Mapping::Multiplexed { listen_channel } if listen_channel == pg_channel => {
                Some(routed_channel(payload).unwrap_or(Cow::Borrowed(pg_channel)))
            }
            Mapping::Multiplexed { .. } => None,
        }
    }

    /// The NOTIFYs for one event of a socket, one per channel, in order.
    pub(crate) fn notifies(
        &self,
        channels: &[String],
        event: Event,
        payload: &str,
        claims: &Claims,
        at: SystemTime,
    ) -> Vec<Notify> {
        channels
            .iter()
            .map(|channel| match self {
                Mapping::PerChannel => Notify {
                    channel: channel.clone(),
                    payload: envelope::per_channel(channel, event, payload, claims.json()),
                },
                Mapping::Multiplexed { listen_channel } => Notify {
                    channel: listen_channel.clone(),
                    payload: envelope::multiplexed(
                        channel,
                        event,
                        payload,
                        claims.for_multiplexed(),
                        at,
                    ),
                },
            })
            .collect()
    }
}

/// A socket's claims, encoded once for the envelopes.
#[derive(Debug, Clone)]
pub(crate) struct Claims {
    /// Compact JSON of every claim.
    plain: String,
    /// The same without `message_delivered_at`, which the multiplexed envelope
    /// sets itself; only made for the rare token that carries one.
    multiplexed: Option<String>,
}

impl Claims {
    pub(crate) fn new(claims: &serde_json::Map<String, serde_json::Value>) -> Self {
        let multiplexed = claims
            .contains_key("message_delivered_at")
            .then(|| envelope::claims_for_multiplexed(claims));
        Self {
            plain: serde_json::to_string(claims).expect("a JSON map always serializes"),
            multiplexed,
        }
    }

    /// The compact JSON of every claim.
    pub(crate) fn json(&self) -> &str {
        &self.plain
    }

    fn for_multiplexed(&self) -> &str {
        self.multiplexed.as_deref().unwrap_or(&self.plain)
    }
}

/// The string `channel` of a JSON object payload (the last one, as JSON parsers
/// read duplicate keys), without building the rest of the document.
fn routed_channel(payload: &str) -> Option<Cow<'_, str>> {
    let mut de = serde_json::Deserializer::from_str(payload);
    let probe = de.deserialize_map(ChannelProbe).ok()?;
    de.end().ok()?;
    probe
}

struct ChannelProbe;

impl<'de> Visitor<'de> for ChannelProbe {
    type Value = Option<Cow<'de, str>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Channel<'a> {
            Text(#[serde(borrow)] Cow<'a, str>),
            Other(IgnoredAny),
        }
        let mut channel = None;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key == "channel" {
                channel = match map.next_value()? {
                    Channel::Text(c) => Some(c),
                    Channel::Other(_) => None,
                };
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiplexed_routes_by_payload_channel() {
        let m = Mapping::new(Some("pgws"));
        assert_eq!(
            m.route("pgws", r#"{"channel":"chat","x":[1]}"#).unwrap(),
            "chat"
        );
        assert_eq!(m.route("pgws", r#"{"channel":1}"#).unwrap(), "pgws");
        assert_eq!(m.route("pgws", r#"["chat"]"#).unwrap(), "pgws");
        assert_eq!(m.route("pgws", "plain text").unwrap(), "pgws");
        assert_eq!(m.route("pgws", r#"{"channel":"a\"b"}"#).unwrap(), "a\"b");
        assert_eq!(
            m.route("pgws", r#"{"channel":"a","channel":"b"}"#).unwrap(),
            "b"
        );
        assert_eq!(
            m.route("pgws", r#"{"channel":"a","channel":null}"#)
                .unwrap(),
            "pgws"
        );
        assert_eq!(
            m.route("pgws", r#"{"channel":"a"} trailing"#).unwrap(),
            "pgws"
        );
        assert_eq!(
            m.route("pgws", r#"{"x":{"channel":"deep"}}"#).unwrap(),
            "pgws"
        );
        assert!(m.route("other", "{}").is_none());
    }

    #[test]
    fn per_channel_routes_by_notification_channel() {
        assert_eq!(Mapping::PerChannel.route("chat", "x").unwrap(), "chat");
    }

    #[test]
    fn notifies_follow_the_mapping() {
        let map = serde_json::from_str(r#"{"mode":"w","message_delivered_at":1}"#).unwrap();
        let claims = Claims::new(&map);
        let chans = vec!["a".to_string(), "b".to_string()];
        let now = SystemTime::now();
        let per = Mapping::PerChannel.notifies(&chans, Event::Message, "hi", &claims, now);
        assert_eq!(per[0].channel, "a");
        assert_eq!(per[1].channel, "b");
        assert!(
            per[1]
                .payload
                .contains(r#""userClaims":{"message_delivered_at":1,"mode":"w"}"#)
        );
        let mux = Mapping::new(Some("l")).notifies(&chans, Event::Message, "hi", &claims, now);
        assert!(mux.iter().all(|n| n.channel == "l"));
        assert!(mux[1].payload.starts_with(r#"{"channel":"b","#));
        assert_eq!(mux[0].payload.matches("message_delivered_at").count(), 1);
    }
}
