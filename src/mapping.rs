//! The two channel mappings of PROTOCOL.md §6: what to `LISTEN`, how to route a
//! notification, and which envelope a message gets. Everything that differs
//! between them is here.

use std::{borrow::Cow, time::SystemTime};

use serde::{
    Deserialize, Deserializer,
    de::{IgnoredAny, MapAccess, Visitor},
};

pub(crate) use crate::envelope::Claims;
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

    /// A socket's claims, encoded once in the form this mapping's envelope embeds.
    pub(crate) fn claims(&self, claims: &serde_json::Map<String, serde_json::Value>) -> Claims {
        match self {
            Mapping::PerChannel => Claims::object(claims),
            Mapping::Multiplexed { .. } => Claims::entries(claims),
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
                    payload: envelope::per_channel(channel, event, payload, claims),
                },
                Mapping::Multiplexed { listen_channel } => Notify {
                    channel: listen_channel.clone(),
                    payload: envelope::multiplexed(channel, event, payload, claims, at),
                },
            })
            .collect()
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
        let chans = vec!["a".to_string(), "b".to_string()];
        let now = SystemTime::now();
        let claims = Mapping::PerChannel.claims(&map);
        let per = Mapping::PerChannel.notifies(&chans, Event::Message, "hi", &claims, now);
        assert_eq!(per[0].channel, "a");
        assert_eq!(per[1].channel, "b");
        assert!(
            per[1]
                .payload
                .contains(r#""userClaims":{"message_delivered_at":1,"mode":"w"}"#)
        );
        let mapping = Mapping::new(Some("l"));
        let claims = mapping.claims(&map);
        let mux = mapping.notifies(&chans, Event::Message, "hi", &claims, now);
        assert!(mux.iter().all(|n| n.channel == "l"));
        assert!(mux[1].payload.starts_with(r#"{"channel":"b","#));
        assert_eq!(mux[0].payload.matches("message_delivered_at").count(), 1);
    }
}

#[cfg(test)]
mod envelope_props {
    //! Every envelope either mapping writes parses, and its fields round-trip.

    use std::time::{Duration, UNIX_EPOCH};

    use proptest::prelude::*;
    use serde_json::{Map, Value};

    use super::*;

    /// Any JSON value: nested objects and arrays, unicode, empty containers.
    /// Numbers are integers or exact binary fractions, which every parser reads back
    /// exactly.
    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1000i32..1000).prop_map(|n| Value::from(f64::from(n) / 8.0)),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn claims() -> impl Strategy<Value = Map<String, Value>> {
        let key = prop_oneof![
            Just("message_delivered_at".to_owned()),
            Just("mode".to_owned()),
            Just("zz".to_owned()),
            any::<String>(),
        ];
        prop::collection::btree_map(key, json(), 0..6).prop_map(|m| m.into_iter().collect())
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            Just(Event::Message),
            Just(Event::ConnectionOpen),
            Just(Event::ConnectionClose),
        ]
    }

    fn parse(payload: &str) -> Map<String, Value> {
        match serde_json::from_str(payload) {
            Ok(Value::Object(map)) => map,
            other => panic!("not a JSON object: {payload}: {other:?}"),
        }
    }

    proptest! {
        #[test]
        fn envelopes_parse_and_round_trip(
            claims in claims(),
            channels in prop::collection::vec(any::<String>(), 1..4),
            payload in any::<String>(),
            event in event(),
            millis in 0u64..4_102_444_800_000,
        ) {
            let at = UNIX_EPOCH + Duration::from_millis(millis);
            let name = serde_json::to_value(event_name(event)).unwrap();

            let encoded = Mapping::PerChannel.claims(&claims);
            let per = Mapping::PerChannel.notifies(&channels, event, &payload, &encoded, at);
            prop_assert_eq!(per.len(), channels.len());
            for (n, channel) in per.iter().zip(&channels) {
                prop_assert_eq!(&n.channel, channel);
                let env = parse(&n.payload);
                prop_assert_eq!(env.len(), 4);
                prop_assert_eq!(&env["channel"], channel.as_str());
                prop_assert_eq!(&env["event"], &name);
                prop_assert_eq!(&env["payload"], payload.as_str());
                prop_assert_eq!(&env["userClaims"], &Value::Object(claims.clone()));
            }

            let mux_mapping = Mapping::new(Some("pgws"));
            let encoded = mux_mapping.claims(&claims);
            let mux = mux_mapping.notifies(&channels, event, &payload, &encoded, at);
            prop_assert_eq!(mux.len(), channels.len());
            let mut expected = claims.clone();
            expected.remove("message_delivered_at");
            for (n, channel) in mux.iter().zip(&channels) {
                prop_assert_eq!(n.channel.as_str(), "pgws");
                let env = parse(&n.payload);
                prop_assert_eq!(env.len(), 4);
                prop_assert_eq!(&env["channel"], channel.as_str());
                prop_assert_eq!(&env["event"], &name);
                prop_assert_eq!(&env["payload"], payload.as_str());
                let Value::Object(mut got) = env["claims"].clone() else {
                    panic!("claims is not an object: {}", n.payload);
                };
                let stamp = got.remove("message_delivered_at").and_then(|v| v.as_f64());
                prop_assert_eq!(stamp, Some(millis as f64 / 1000.0));
                prop_assert_eq!(got, expected.clone());
            }
        }
    }

    fn event_name(event: Event) -> &'static str {
        match event {
            Event::Message => "WebsocketMessage",
            Event::ConnectionOpen => "ConnectionOpen",
            Event::ConnectionClose => "ConnectionClose",
        }
    }
}
