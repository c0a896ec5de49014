//! Translation between AMQP wire values (field tables, basic properties) and the
//! core's neutral message model. The only place the two type systems meet.

use bytes::Bytes;
use ferrymq_amqp_codec::{AmqpValue, BasicProperties, FieldTable as AmqpTable};
use ferrymq_core::{FieldTable, Message, Properties, Value};

/// Nesting deeper than this is cut (the codec bounds depth on decode too).
const DEPTH_MAX: usize = 64;

/// AMQP value → core value.
pub fn value_in(v: &AmqpValue, depth: usize) -> Value {
    match v {
        AmqpValue::Bool(b) => Value::Bool(*b),
        AmqpValue::I8(i) => Value::Int(*i as i64),
        AmqpValue::I16(i) => Value::Int(*i as i64),
        AmqpValue::I32(i) => Value::Int(*i as i64),
        AmqpValue::I64(i) => Value::Int(*i),
        AmqpValue::U8(u) => Value::UInt(*u as u64),
        AmqpValue::U16(u) => Value::UInt(*u as u64),
        AmqpValue::U32(u) => Value::UInt(*u as u64),
        AmqpValue::F32(f) => Value::Float(*f as f64),
        AmqpValue::F64(f) => Value::Float(*f),
        AmqpValue::Decimal { scale, value } => Value::Decimal {
            scale: *scale,
            value: *value as i32,
        },
        AmqpValue::LongString(b) => match std::str::from_utf8(b) {
            Ok(s) => Value::String(s.to_owned()),
            Err(_) => Value::Bytes(b.clone()),
        },
        AmqpValue::ByteArray(b) => Value::Bytes(b.clone()),
        AmqpValue::Timestamp(secs) => Value::Timestamp((*secs as i64).saturating_mul(1000)),
        AmqpValue::Table(t) if depth < DEPTH_MAX => Value::Table(table_in_depth(t, depth + 1)),
        AmqpValue::Array(a) if depth < DEPTH_MAX => {
            Value::Array(a.iter().map(|v| value_in(v, depth + 1)).collect())
        }
        AmqpValue::Table(_) | AmqpValue::Array(_) | AmqpValue::Void => Value::Void,
    }
}

/// Core value → AMQP value. Integers go out as signed 64-bit (`l`), as RabbitMQ
/// sends `x-death` counts; unsigned values that fit go out as `i` (u32).
pub fn value_out(v: &Value, depth: usize) -> AmqpValue {
    match v {
        Value::Void => AmqpValue::Void,
        Value::Bool(b) => AmqpValue::Bool(*b),
        Value::Int(i) => AmqpValue::I64(*i),
        Value::UInt(u) => match u32::try_from(*u) {
            Ok(u) => AmqpValue::U32(u),
            Err(_) => AmqpValue::I64(i64::try_from(*u).unwrap_or(i64::MAX)),
        },
        Value::Float(f) => AmqpValue::F64(*f),
        Value::Decimal { scale, value } => AmqpValue::Decimal {
            scale: *scale,
            value: *value as u32,
        },
        Value::String(s) => AmqpValue::LongString(Bytes::copy_from_slice(s.as_bytes())),
        Value::Bytes(b) => AmqpValue::ByteArray(b.clone()),
        Value::Timestamp(ms) => AmqpValue::Timestamp((*ms / 1000).max(0) as u64),
        Value::Table(t) if depth < DEPTH_MAX => AmqpValue::Table(table_out_depth(t, depth + 1)),
        Value::Array(a) if depth < DEPTH_MAX => {
            AmqpValue::Array(a.iter().map(|v| value_out(v, depth + 1)).collect())
        }
        Value::Table(_) | Value::Array(_) => AmqpValue::Void,
    }
}

fn table_in_depth(t: &AmqpTable, depth: usize) -> FieldTable {
    t.0.iter()
        .map(|(k, v)| (k.clone(), value_in(v, depth)))
        .collect()
}

fn table_out_depth(t: &FieldTable, depth: usize) -> AmqpTable {
    AmqpTable(
        t.iter()
            .map(|(k, v)| (k.to_owned(), value_out(v, depth)))
            .collect(),
    )
}

/// AMQP field table → core table (arguments, headers).
pub fn table_in(t: &AmqpTable) -> FieldTable {
    table_in_depth(t, 0)
}

/// Core table → AMQP field table.
pub fn table_out(t: &FieldTable) -> AmqpTable {
    table_out_depth(t, 0)
}

/// Why a publish's properties were refused (406 PRECONDITION_FAILED in RabbitMQ).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropertyError(pub String);

/// Builds the neutral message from a basic.publish and its content.
///
/// # Errors
/// An `expiration` that is not a non-negative integer, or a `user_id` other than
/// the authenticated user (RabbitMQ's validated user-id).
pub fn message_in(
    routing_key: &str,
    p: &BasicProperties,
    body: Bytes,
    user: &str,
) -> Result<Message, PropertyError> {
    let expiration_ms = match &p.expiration {
        None => None,
        Some(e) => Some(
            e.parse::<u64>()
                .map_err(|_| PropertyError(format!("invalid expiration '{e}'")))?,
        ),
    };
    if let Some(u) = &p.user_id {
        if u != user {
            return Err(PropertyError(format!(
                "user_id property set to '{u}' but authenticated user was '{user}'"
            )));
        }
    }
    let mut headers = p.headers.as_ref().map(table_in).unwrap_or_default();
    let key = match headers.get(KEY_HEADER) {
        Some(Value::Bytes(b)) => {
            let k = b.clone();
            headers.remove(KEY_HEADER);
            Some(k)
        }
        Some(Value::String(s)) => {
            let k = Bytes::from(s.clone().into_bytes());
            headers.remove(KEY_HEADER);
            Some(k)
        }
        _ => None,
    };
    Ok(Message {
        exchange: String::new(),
        routing_key: routing_key.to_owned(),
        headers,
        properties: Properties {
            content_type: p.content_type.clone(),
            content_encoding: p.content_encoding.clone(),
            correlation_id: p.correlation_id.clone(),
            reply_to: p.reply_to.clone(),
            message_id: p.message_id.clone(),
            timestamp_ms: p.timestamp.map(|s| (s as i64).saturating_mul(1000)),
            expiration_ms,
            priority: p.priority,
            persistent: p.delivery_mode == Some(2),
            kind: p.kind.clone(),
            user_id: p.user_id.clone(),
            app_id: p.app_id.clone(),
        },
        key,
        body,
    })
}

/// The AMQP header that carries a message's key (a Kafka record key, the partitioning
/// key of streams), both ways: set it on a publish to give the message a key; deliveries
/// of keyed messages carry it as a long string.
pub const KEY_HEADER: &str = "x-message-key";

/// Basic properties for delivering a neutral message, with extra headers (e.g.
/// `x-stream-offset`) appended.
pub fn properties_out(m: &Message, extra: Option<(&str, AmqpValue)>) -> BasicProperties {
    let p = &m.properties;
    let mut headers = if m.headers.is_empty() {
        None
    } else {
        Some(table_out(&m.headers))
    };
    if let Some((k, v)) = extra {
        headers.get_or_insert_with(AmqpTable::default).insert(k, v);
    }
    if let Some(key) = &m.key {
        headers
            .get_or_insert_with(AmqpTable::default)
            .insert(KEY_HEADER, AmqpValue::LongString(key.clone()));
    }
    BasicProperties {
        content_type: p.content_type.clone(),
        content_encoding: p.content_encoding.clone(),
        headers,
        // Transient is the default: it travels as an absent delivery mode.
        delivery_mode: p.persistent.then_some(2),
        priority: p.priority,
        correlation_id: p.correlation_id.clone(),
        reply_to: p.reply_to.clone(),
        expiration: p.expiration_ms.map(|e| e.to_string()),
        message_id: p.message_id.clone(),
        timestamp: p.timestamp_ms.map(|ms| (ms / 1000).max(0) as u64),
        kind: p.kind.clone(),
        user_id: p.user_id.clone(),
        app_id: p.app_id.clone(),
        cluster_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_travels_as_the_x_message_key_header() {
        let mut h = AmqpTable::default();
        h.insert(
            KEY_HEADER,
            AmqpValue::LongString(Bytes::from_static(b"k-1")),
        );
        h.insert("other", AmqpValue::I64(1));
        let p = BasicProperties {
            headers: Some(h),
            ..Default::default()
        };
        let m = message_in("rk", &p, Bytes::from_static(b"body"), "guest").unwrap();
        assert_eq!(m.key.as_deref(), Some(&b"k-1"[..]));
        assert!(m.headers.get(KEY_HEADER).is_none(), "moved to the key");
        let out = properties_out(&m, None);
        let h = out.headers.unwrap();
        assert_eq!(
            h.get(KEY_HEADER),
            Some(&AmqpValue::LongString(Bytes::from_static(b"k-1")))
        );
        // No key, no header.
        let plain = message_in("rk", &BasicProperties::default(), Bytes::new(), "guest").unwrap();
        assert!(properties_out(&plain, None).headers.is_none());
    }

    #[test]
    fn values_round_trip_through_the_core() {
        let mut inner = AmqpTable::default();
        inner.insert("n", AmqpValue::I64(-5));
        let vals = vec![
            AmqpValue::Bool(true),
            AmqpValue::I64(42),
            AmqpValue::U32(7),
            AmqpValue::F64(1.5),
            AmqpValue::Decimal {
                scale: 2,
                value: 1234,
            },
            AmqpValue::LongString(Bytes::from_static(b"text")),
            AmqpValue::ByteArray(Bytes::from_static(&[0, 255])),
            AmqpValue::Timestamp(1_700_000_000),
            AmqpValue::Table(inner),
            AmqpValue::Array(vec![AmqpValue::I64(1), AmqpValue::Void]),
            AmqpValue::Void,
        ];
        for v in vals {
            assert_eq!(value_out(&value_in(&v, 0), 0), v, "{v:?}");
        }
        // Narrow integers widen, keeping their value.
        assert_eq!(
            value_out(&value_in(&AmqpValue::I16(-3), 0), 0),
            AmqpValue::I64(-3)
        );
        // A non-UTF-8 long string keeps its bytes.
        let raw = AmqpValue::LongString(Bytes::from_static(&[0xff, 0xfe]));
        assert_eq!(
            value_out(&value_in(&raw, 0), 0),
            AmqpValue::ByteArray(Bytes::from_static(&[0xff, 0xfe]))
        );
    }

    #[test]
    fn properties_map_both_ways() {
        let mut headers = AmqpTable::default();
        headers.insert("h", AmqpValue::LongString(Bytes::from_static(b"v")));
        let p = BasicProperties {
            content_type: Some("application/json".into()),
            content_encoding: Some("gzip".into()),
            headers: Some(headers),
            delivery_mode: Some(2),
            priority: Some(5),
            correlation_id: Some("c".into()),
            reply_to: Some("r".into()),
            expiration: Some("60000".into()),
            message_id: Some("m".into()),
            timestamp: Some(1_700_000_000),
            kind: Some("t".into()),
            user_id: Some("guest".into()),
            app_id: Some("a".into()),
            cluster_id: None,
        };
        let m = message_in("rk", &p, Bytes::from_static(b"body"), "guest").unwrap();
        assert!(m.properties.persistent);
        assert_eq!(m.properties.expiration_ms, Some(60000));
        assert_eq!(m.properties.timestamp_ms, Some(1_700_000_000_000));
        assert_eq!(m.headers.get_str("h"), Some("v"));
        assert_eq!(properties_out(&m, None), p);
    }

    #[test]
    fn invalid_properties_are_refused() {
        let p = BasicProperties {
            expiration: Some("soon".into()),
            ..Default::default()
        };
        assert!(message_in("k", &p, Bytes::new(), "guest").is_err());
        let p = BasicProperties {
            user_id: Some("admin".into()),
            ..Default::default()
        };
        let e = message_in("k", &p, Bytes::new(), "guest").unwrap_err();
        assert!(e.0.contains("authenticated user was 'guest'"));
    }
}
