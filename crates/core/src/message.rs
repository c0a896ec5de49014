//! The protocol-neutral message: typed header values, properties, key and body.
//!
//! Every protocol adapter converts its wire representation into [`Message`] at its
//! boundary; nothing in the core knows where a message came from.

use bytes::Bytes;

/// A typed header value. Covers the union of AMQP field-table types, MQTT 5 user
/// properties (strings) and Kafka record headers (bytes).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Value {
    /// No value (AMQP `V`).
    Void,
    Bool(bool),
    /// Any signed integer; adapters pick the narrowest wire type that fits.
    Int(i64),
    /// An unsigned integer too large for `i64` would not fit AMQP anyway; kept for
    /// u32/u64 wire types so their sign survives a round trip.
    UInt(u64),
    Float(f64),
    /// AMQP decimal: `value / 10^scale`.
    Decimal {
        scale: u8,
        value: i32,
    },
    String(String),
    Bytes(Bytes),
    /// Milliseconds since the Unix epoch.
    Timestamp(i64),
    Table(FieldTable),
    Array(Vec<Value>),
}

impl Value {
    /// The value as a string slice, if it is a string (or UTF-8 bytes).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            Value::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer, if it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::UInt(u) => i64::try_from(*u).ok(),
            _ => None,
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

/// An ordered table of named values (AMQP field table, message headers, arguments).
/// Lookups are linear: tables are small, and order is kept for faithful round trips.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct FieldTable(pub Vec<(String, Value)>);

impl FieldTable {
    pub fn new() -> Self {
        FieldTable(Vec::new())
    }
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    /// Sets `key`, replacing an existing entry in place.
    pub fn insert(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let pos = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(pos).1)
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// An integer argument, accepting any integer width.
    pub fn get_i64(&self, key: &str) -> Option<i64> {
        self.get(key).and_then(Value::as_i64)
    }
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }
}

impl FromIterator<(String, Value)> for FieldTable {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(iter: I) -> Self {
        FieldTable(iter.into_iter().collect())
    }
}

/// Standard message properties (the AMQP basic properties, which MQTT 5, Kafka and
/// HTTP map onto).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Properties {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    pub message_id: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: Option<i64>,
    /// Per-message time to live in milliseconds (AMQP `expiration`, MQTT message expiry).
    pub expiration_ms: Option<u64>,
    pub priority: Option<u8>,
    /// AMQP delivery mode 2 / MQTT QoS > 0 on a durable destination.
    pub persistent: bool,
    /// AMQP `type`.
    pub kind: Option<String>,
    pub user_id: Option<String>,
    pub app_id: Option<String>,
}

/// A message as the core routes, stores and delivers it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Message {
    /// The exchange it was published to ("" for the default exchange).
    pub exchange: String,
    pub routing_key: String,
    pub headers: FieldTable,
    pub properties: Properties,
    /// Partitioning key (Kafka record key, MQTT has none).
    pub key: Option<Bytes>,
    pub body: Bytes,
}

impl Message {
    /// A message with just a routing key and body.
    pub fn new(routing_key: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Message {
            routing_key: routing_key.into(),
            body: body.into(),
            ..Default::default()
        }
    }

    /// Bytes this message counts for in queue byte limits and prefetch by size: the
    /// body, as RabbitMQ counts it.
    pub fn body_size(&self) -> u64 {
        self.body.len() as u64
    }
}
