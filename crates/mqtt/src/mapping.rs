//! MQTT ⇄ core mapping, pure: topics and filters ⇄ `amq.topic` routing and binding keys
//! (RabbitMQ's convention), PUBLISH ⇄ [`Message`], subscription options ⇄ binding arguments.
//!
//! Topic `a/b/c` is routing key `a.b.c`; filter `a/+/#` is binding key `a.*.#`. The mapping
//! is lossy for a `.` inside a topic level (`v1.2/x` and `v1/2/x` share the key `v1.2.x`),
//! so MQTT publishes whose topic holds a `.` carry the original topic in the
//! [`HEADER_TOPIC`] header, and deliveries are matched against the session's MQTT filters
//! with MQTT's own rules: what the coarser key routing let through but the filter does not
//! match is dropped, so MQTT clients see Mosquitto's semantics.

use bytes::Bytes;
use ferrymq_core::{FieldTable, Message, Value};
use ferrymq_mqtt_codec::{Properties, Publish, QoS, RetainHandling, SubscriptionOptions};

/// Original MQTT topic, set only when the routing key cannot give it back (a `.` in a level).
pub const HEADER_TOPIC: &str = "x-mqtt-topic";
/// The publishing client's id (for No Local).
pub const HEADER_PUBLISHER: &str = "x-mqtt-publisher";
/// Set (true) when the message was published with RETAIN (for Retain As Published).
pub const HEADER_RETAIN: &str = "x-mqtt-retain";
/// Set (2) when the message was published at QoS 2 (QoS 1 is `persistent`).
pub const HEADER_QOS: &str = "x-mqtt-qos";
/// MQTT 5 payload format indicator (0 or 1).
pub const HEADER_PAYLOAD_FORMAT: &str = "x-mqtt-payload-format-indicator";
/// When an MQTT message with an expiry interval was published (ms since the epoch), so
/// that the interval sent on is what remains (MQTT 5 §3.3.2.3.3).
pub const HEADER_PUBLISHED_AT: &str = "x-mqtt-published-at";
/// Correlation data that is not a short UTF-8 string (RabbitMQ's header name).
pub const HEADER_CORRELATION: &str = "x-correlation-id";

/// Binding arguments that hold a subscription's options.
pub const ARG_FILTER: &str = "x-mqtt-filter";
pub const ARG_QOS: &str = "x-mqtt-qos";
pub const ARG_NO_LOCAL: &str = "x-mqtt-no-local";
pub const ARG_RAP: &str = "x-mqtt-retain-as-published";
pub const ARG_SUB_ID: &str = "x-mqtt-subscription-id";

/// An AMQP short string (correlation id) holds at most this many bytes.
const SHORT_STRING_MAX: usize = 255;

/// MQTT topic name → routing key (`/` → `.`).
pub fn topic_to_key(topic: &str) -> String {
    topic.replace('/', ".")
}

/// Routing key → MQTT topic (`.` → `/`).
pub fn key_to_topic(key: &str) -> String {
    key.replace('.', "/")
}

/// MQTT topic filter → binding key (`/` → `.`, `+` → `*`, `#` stays).
pub fn filter_to_key(filter: &str) -> String {
    filter
        .split('/')
        .map(|level| if level == "+" { "*" } else { level })
        .collect::<Vec<_>>()
        .join(".")
}

/// Longest queue name the adapter makes (storage names hold 255 bytes, with the vhost).
pub const QUEUE_NAME_MAX: usize = 200;

/// `prefix` + `id` as a queue name: as is when short enough, otherwise a prefix of `id`
/// (cut at a character boundary) and a stable 64-bit FNV-1a hash of the whole `id`, so that
/// long client ids and filters still get a distinct, stable name.
pub fn queue_name(prefix: &str, id: &str) -> String {
    if prefix.len() + id.len() <= QUEUE_NAME_MAX {
        return format!("{prefix}{id}");
    }
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let mut cut = QUEUE_NAME_MAX
        .saturating_sub(prefix.len() + 17)
        .min(id.len());
    while !id.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{prefix}{}~{hash:016x}", &id[..cut])
}

/// QoS as a number.
pub fn qos_u8(q: QoS) -> u8 {
    q as u8
}

/// The QoS for a number (values above 2 clamp to 2).
pub fn qos_from(n: i64) -> QoS {
    match n {
        i64::MIN..=0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// A PUBLISH (topic already resolved from any alias) as the core's message.
pub fn publish_to_message(p: &Publish, client_id: &str) -> Message {
    let mut m = Message::new(topic_to_key(&p.topic), p.payload.clone());
    m.properties.persistent = p.qos != QoS::AtMostOnce;
    let h = &mut m.headers;
    if p.topic.contains('.') {
        h.insert(HEADER_TOPIC, Value::String(p.topic.clone()));
    }
    h.insert(HEADER_PUBLISHER, Value::String(client_id.to_owned()));
    if p.retain {
        h.insert(HEADER_RETAIN, Value::Bool(true));
    }
    if p.qos == QoS::ExactlyOnce {
        h.insert(HEADER_QOS, Value::Int(2));
    }
    props_to_message(&p.properties, &mut m);
    m
}

/// MQTT 5 PUBLISH / will properties onto a message.
pub fn props_to_message(pr: &Properties, m: &mut Message) {
    for (k, v) in &pr.user_properties {
        m.headers.0.push((k.clone(), Value::String(v.clone())));
    }
    if let Some(f) = pr.payload_format_indicator {
        m.headers
            .insert(HEADER_PAYLOAD_FORMAT, Value::Int(i64::from(f)));
    }
    m.properties.content_type = pr.content_type.clone();
    m.properties.reply_to = pr.response_topic.as_deref().map(topic_to_key);
    if let Some(e) = pr.message_expiry_interval {
        m.properties.expiration_ms = Some(u64::from(e) * 1000);
        m.headers.insert(
            HEADER_PUBLISHED_AT,
            Value::Int(ferrymq_core::clock::now_ms()),
        );
    }
    if let Some(c) = &pr.correlation_data {
        match std::str::from_utf8(c) {
            Ok(s) if c.len() <= SHORT_STRING_MAX => m.properties.correlation_id = Some(s.into()),
            _ => m
                .headers
                .insert(HEADER_CORRELATION, Value::Bytes(c.clone())),
        }
    }
}

/// The MQTT topic of a delivered message: the original topic when the message carries one
/// that still maps to its routing key, the mapped routing key otherwise.
pub fn message_topic(m: &Message) -> String {
    if let Some(t) = m.headers.get_str(HEADER_TOPIC) {
        if topic_to_key(t) == m.routing_key {
            return t.to_owned();
        }
    }
    key_to_topic(&m.routing_key)
}

/// The QoS a message was published with.
pub fn message_qos(m: &Message) -> QoS {
    if m.headers.get_i64(HEADER_QOS) == Some(2) {
        QoS::ExactlyOnce
    } else if m.properties.persistent {
        QoS::AtLeastOnce
    } else {
        QoS::AtMostOnce
    }
}

/// True when the message was published with RETAIN by an MQTT client.
pub fn message_retained(m: &Message) -> bool {
    matches!(m.headers.get(HEADER_RETAIN), Some(Value::Bool(true)))
}

fn header_string(v: &Value) -> Option<String> {
    Some(match v {
        Value::String(s) => s.clone(),
        Value::Bytes(b) => std::str::from_utf8(b).ok()?.to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Timestamp(t) => t.to_string(),
        Value::Decimal { .. } | Value::Void | Value::Table(_) | Value::Array(_) => return None,
    })
}

/// MQTT 5 PUBLISH properties for a delivered message at `now_ms` (subscription identifiers
/// and topic alias are the connection's to add).
pub fn message_to_props(m: &Message, now_ms: i64) -> Properties {
    let mut pr = Properties::default();
    for (k, v) in m.headers.iter() {
        match k {
            HEADER_TOPIC | HEADER_PUBLISHER | HEADER_RETAIN | HEADER_QOS | HEADER_PUBLISHED_AT => {}
            HEADER_PAYLOAD_FORMAT => {
                pr.payload_format_indicator = v.as_i64().and_then(|f| u8::try_from(f).ok())
            }
            HEADER_CORRELATION => {
                if let Value::Bytes(b) = v {
                    pr.correlation_data = Some(b.clone());
                } else if let Some(s) = v.as_str() {
                    pr.correlation_data = Some(Bytes::copy_from_slice(s.as_bytes()));
                }
            }
            _ => {
                if let Some(s) = header_string(v) {
                    if !k.contains('\0') && !s.contains('\0') {
                        pr.user_properties.push((k.to_owned(), s));
                    }
                }
            }
        }
    }
    if pr.payload_format_indicator.is_some_and(|f| f > 1) {
        pr.payload_format_indicator = None;
    }
    if pr.correlation_data.is_none() {
        pr.correlation_data = m
            .properties
            .correlation_id
            .as_ref()
            .map(|c| Bytes::copy_from_slice(c.as_bytes()));
    }
    pr.content_type = m.properties.content_type.clone();
    pr.response_topic = m
        .properties
        .reply_to
        .as_deref()
        .map(key_to_topic)
        .filter(|t| ferrymq_mqtt_codec::validate_topic_name(t).is_ok());
    pr.message_expiry_interval = m.properties.expiration_ms.map(|ms| {
        let waited = m.headers.get_i64(HEADER_PUBLISHED_AT).map_or(0, |at| {
            u64::try_from(now_ms.saturating_sub(at)).unwrap_or(0)
        });
        // Whole seconds left, as Mosquitto counts them.
        let left = (ms.saturating_sub(waited) / 1000).max(1);
        u32::try_from(left).unwrap_or(u32::MAX)
    });
    pr
}

/// A subscription as the session keeps it (and stores in binding arguments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sub {
    pub filter: String,
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub id: Option<u32>,
}

impl Sub {
    pub fn new(filter: &str, o: &SubscriptionOptions, id: Option<u32>) -> Sub {
        Sub {
            filter: filter.to_owned(),
            qos: o.qos,
            no_local: o.no_local,
            retain_as_published: o.retain_as_published,
            id,
        }
    }

    /// The binding arguments that persist this subscription with the definitions.
    pub fn to_args(&self) -> FieldTable {
        let mut a = FieldTable::new();
        a.insert(ARG_FILTER, Value::String(self.filter.clone()));
        a.insert(ARG_QOS, Value::Int(i64::from(qos_u8(self.qos))));
        if self.no_local {
            a.insert(ARG_NO_LOCAL, Value::Bool(true));
        }
        if self.retain_as_published {
            a.insert(ARG_RAP, Value::Bool(true));
        }
        if let Some(id) = self.id {
            a.insert(ARG_SUB_ID, Value::Int(i64::from(id)));
        }
        a
    }

    /// A subscription from a binding's arguments (None if they are not the adapter's).
    pub fn from_args(a: &FieldTable) -> Option<Sub> {
        let filter = a.get_str(ARG_FILTER)?.to_owned();
        let flag = |k| matches!(a.get(k), Some(Value::Bool(true)));
        Some(Sub {
            filter,
            qos: qos_from(a.get_i64(ARG_QOS).unwrap_or(0)),
            no_local: flag(ARG_NO_LOCAL),
            retain_as_published: flag(ARG_RAP),
            id: a
                .get_i64(ARG_SUB_ID)
                .and_then(|i| u32::try_from(i).ok())
                .filter(|&i| i > 0),
        })
    }
}

/// Whether retained messages are sent for a (re)subscription.
pub fn send_retained(h: RetainHandling, existed: bool) -> bool {
    match h {
        RetainHandling::SendAtSubscribe => true,
        RetainHandling::SendAtSubscribeIfNew => !existed,
        RetainHandling::DoNotSend => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_filters_map_as_rabbitmq() {
        assert_eq!(topic_to_key("a/b/c"), "a.b.c");
        assert_eq!(key_to_topic("a.b.c"), "a/b/c");
        assert_eq!(filter_to_key("a/+/#"), "a.*.#");
        assert_eq!(filter_to_key("#"), "#");
        assert_eq!(filter_to_key("+"), "*");
        assert_eq!(filter_to_key("/a//b"), ".a..b");
        assert_eq!(topic_to_key("/a//b"), ".a..b");
        assert_eq!(key_to_topic(".a..b"), "/a//b");
        // a "+" inside a level is no wildcard in MQTT filters (the codec refuses it anyway)
        assert_eq!(filter_to_key("a/b+/c"), "a.b+.c");
    }

    #[test]
    fn long_ids_get_short_stable_queue_names() {
        assert_eq!(
            queue_name("mqtt-subscription-", "c1"),
            "mqtt-subscription-c1"
        );
        let long = "é".repeat(300);
        let a = queue_name("mqtt-subscription-", &long);
        assert!(a.len() <= QUEUE_NAME_MAX, "{}", a.len());
        assert_eq!(a, queue_name("mqtt-subscription-", &long));
        let other = format!("{}x", "é".repeat(299));
        assert_ne!(a, queue_name("mqtt-subscription-", &other));
    }

    #[test]
    fn dotted_topics_keep_their_original_form() {
        let p = Publish {
            topic: "v1.2/x".into(),
            payload: Bytes::from_static(b"p"),
            ..Publish::default()
        };
        let m = publish_to_message(&p, "c1");
        assert_eq!(m.routing_key, "v1.2.x");
        assert_eq!(message_topic(&m), "v1.2/x");
        // republished under another key: the header no longer applies
        let mut m2 = m.clone();
        m2.routing_key = "other.key".into();
        assert_eq!(message_topic(&m2), "other/key");
        let plain = publish_to_message(
            &Publish {
                topic: "a/b".into(),
                ..Publish::default()
            },
            "c1",
        );
        assert!(plain.headers.get(HEADER_TOPIC).is_none());
    }

    #[test]
    fn properties_round_trip() {
        let pr = Properties {
            user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
            content_type: Some("text/plain".into()),
            response_topic: Some("reply/here".into()),
            correlation_data: Some(Bytes::from_static(b"corr")),
            message_expiry_interval: Some(30),
            payload_format_indicator: Some(1),
            ..Properties::default()
        };
        let p = Publish {
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: "t".into(),
            packet_id: Some(1),
            properties: pr.clone(),
            payload: Bytes::from_static(b"x"),
            ..Publish::default()
        };
        let m = publish_to_message(&p, "me");
        assert!(m.properties.persistent);
        assert_eq!(m.properties.reply_to.as_deref(), Some("reply.here"));
        assert_eq!(m.properties.correlation_id.as_deref(), Some("corr"));
        assert_eq!(m.properties.expiration_ms, Some(30_000));
        assert_eq!(message_qos(&m), QoS::ExactlyOnce);
        assert!(message_retained(&m));
        let back = message_to_props(&m, ferrymq_core::clock::now_ms());
        assert_eq!(back.user_properties, pr.user_properties);
        assert_eq!(back.content_type, pr.content_type);
        assert_eq!(back.response_topic, pr.response_topic);
        assert_eq!(back.correlation_data, pr.correlation_data);
        assert_eq!(back.message_expiry_interval, Some(30));
        assert_eq!(back.payload_format_indicator, Some(1));
    }

    #[test]
    fn expiry_sent_on_is_what_remains() {
        let p = Publish {
            topic: "t".into(),
            properties: Properties {
                message_expiry_interval: Some(100),
                ..Properties::default()
            },
            ..Publish::default()
        };
        let m = publish_to_message(&p, "c");
        let at = m.headers.get_i64(HEADER_PUBLISHED_AT).unwrap();
        assert_eq!(
            message_to_props(&m, at + 1500).message_expiry_interval,
            Some(98)
        );
        assert_eq!(message_to_props(&m, at).message_expiry_interval, Some(100));
        assert_eq!(
            message_to_props(&m, at + 500_000).message_expiry_interval,
            Some(1)
        );
        assert!(message_to_props(&m, at)
            .user_properties
            .iter()
            .all(|(k, _)| !k.starts_with("x-mqtt-")));
    }

    #[test]
    fn binary_correlation_data_is_lossless() {
        let data = Bytes::from_static(&[0xff, 0x00, 0x01]);
        let mut m = Message::default();
        props_to_message(
            &Properties {
                correlation_data: Some(data.clone()),
                ..Properties::default()
            },
            &mut m,
        );
        assert!(m.properties.correlation_id.is_none());
        assert_eq!(message_to_props(&m, 0).correlation_data, Some(data));
    }

    #[test]
    fn subscription_options_survive_binding_arguments() {
        let s = Sub {
            filter: "a/+".into(),
            qos: QoS::ExactlyOnce,
            no_local: true,
            retain_as_published: true,
            id: Some(7),
        };
        assert_eq!(Sub::from_args(&s.to_args()), Some(s));
        assert_eq!(Sub::from_args(&FieldTable::new()), None);
    }
}
