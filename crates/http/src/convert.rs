//! Conversions at the HTTP boundary: JSON values ⇄ typed header values, JSON envelopes and
//! raw HTTP requests ⇄ the neutral `Message`.
//!
//! Header values map onto JSON naturally (null, bool, number, string, array, object); the types
//! JSON lacks are tagged objects with one key: `{"$bytes": "<base64>"}`,
//! `{"$timestamp": <ms>}`, `{"$decimal": {"scale": s, "value": v}}`.

use std::collections::BTreeMap;

use axum::http::HeaderMap;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use ferrymq_core::{FieldTable, Message, Properties, Value};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value as Json};
use utoipa::ToSchema;

use crate::error::ApiError;

/// Prefix of raw-publish request headers that become message headers.
pub const HEADER_PREFIX: &str = "x-ferrymq-header-";

/// A typed header value as JSON.
pub fn value_to_json(v: &Value) -> Json {
    match v {
        Value::Void => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::UInt(u) => Json::from(*u),
        Value::Float(f) => Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::Decimal { scale, value } => {
            let mut m = Map::new();
            m.insert(
                "$decimal".into(),
                serde_json::json!({"scale": scale, "value": value}),
            );
            Json::Object(m)
        }
        Value::String(s) => Json::String(s.clone()),
        Value::Bytes(b) => tagged("$bytes", Json::String(B64.encode(b))),
        Value::Timestamp(t) => tagged("$timestamp", Json::from(*t)),
        Value::Table(t) => Json::Object(table_to_json(t)),
        Value::Array(a) => Json::Array(a.iter().map(value_to_json).collect()),
    }
}

fn tagged(k: &str, v: Json) -> Json {
    let mut m = Map::new();
    m.insert(k.into(), v);
    Json::Object(m)
}

/// A field table as a JSON object (order kept).
pub fn table_to_json(t: &FieldTable) -> Map<String, Json> {
    t.iter()
        .map(|(k, v)| (k.to_string(), value_to_json(v)))
        .collect()
}

/// A JSON value as a typed header value.
///
/// # Errors
/// A malformed tagged object (`$bytes` that is not base64, …).
pub fn json_to_value(j: &Json) -> Result<Value, String> {
    Ok(match j {
        Json::Null => Value::Void,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::UInt(u)
            } else {
                Value::Float(n.as_f64().unwrap_or(0.0))
            }
        }
        Json::String(s) => Value::String(s.clone()),
        Json::Array(a) => Value::Array(a.iter().map(json_to_value).collect::<Result<_, _>>()?),
        Json::Object(m) => {
            if m.len() == 1 {
                if let Some((k, v)) = m.iter().next() {
                    match (k.as_str(), v) {
                        ("$bytes", Json::String(s)) => {
                            return B64
                                .decode(s)
                                .map(|b| Value::Bytes(Bytes::from(b)))
                                .map_err(|e| format!("$bytes is not base64: {e}"));
                        }
                        ("$timestamp", Json::Number(n)) => {
                            return n
                                .as_i64()
                                .map(Value::Timestamp)
                                .ok_or_else(|| "$timestamp must be an integer".to_string());
                        }
                        ("$decimal", Json::Object(d)) => {
                            let scale = d.get("scale").and_then(Json::as_u64);
                            let value = d.get("value").and_then(Json::as_i64);
                            return match (scale, value) {
                                (Some(s), Some(v)) if s <= 255 && i32::try_from(v).is_ok() => {
                                    Ok(Value::Decimal {
                                        scale: s as u8,
                                        value: v as i32,
                                    })
                                }
                                _ => Err("$decimal needs scale (0-255) and value (i32)".into()),
                            };
                        }
                        _ => {}
                    }
                }
            }
            Value::Table(json_to_table(m)?)
        }
    })
}

/// A JSON object as a field table.
///
/// # Errors
/// As [`json_to_value`], naming the key.
pub fn json_to_table(m: &Map<String, Json>) -> Result<FieldTable, String> {
    m.iter()
        .map(|(k, v)| {
            json_to_value(v)
                .map(|v| (k.clone(), v))
                .map_err(|e| format!("{k}: {e}"))
        })
        .collect()
}

/// How a payload (or key) is written in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PayloadEncoding {
    /// UTF-8 text.
    #[default]
    String,
    /// Base64 (standard alphabet, padded).
    Base64,
}

/// Message properties in JSON (the AMQP basic properties).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PropertiesJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_ms: Option<i64>,
    /// Per-message time to live in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// Stored on disk by durable queues (default true when publishing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent: Option<bool>,
    /// AMQP `type`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
}

impl PropertiesJson {
    pub fn from_core(p: &Properties) -> Self {
        PropertiesJson {
            content_type: p.content_type.clone(),
            content_encoding: p.content_encoding.clone(),
            correlation_id: p.correlation_id.clone(),
            reply_to: p.reply_to.clone(),
            message_id: p.message_id.clone(),
            timestamp_ms: p.timestamp_ms,
            expiration_ms: p.expiration_ms,
            priority: p.priority,
            persistent: Some(p.persistent),
            kind: p.kind.clone(),
            user_id: p.user_id.clone(),
            app_id: p.app_id.clone(),
        }
    }

    pub fn into_core(self) -> Properties {
        Properties {
            content_type: self.content_type,
            content_encoding: self.content_encoding,
            correlation_id: self.correlation_id,
            reply_to: self.reply_to,
            message_id: self.message_id,
            timestamp_ms: self.timestamp_ms,
            expiration_ms: self.expiration_ms,
            priority: self.priority,
            persistent: self.persistent.unwrap_or(true),
            kind: self.kind,
            user_id: self.user_id,
            app_id: self.app_id,
        }
    }
}

/// A message to publish, as a JSON envelope.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishMessage {
    /// Routing key (ignored when publishing straight to a queue or stream).
    #[serde(default)]
    pub routing_key: String,
    /// The body: text, or base64 with `payload_encoding: "base64"`.
    #[serde(default)]
    pub payload: String,
    #[serde(default)]
    pub payload_encoding: PayloadEncoding,
    /// Message headers; see the document for the typed forms (`{"$bytes": …}`).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub headers: Map<String, Json>,
    #[serde(default)]
    pub properties: PropertiesJson,
    /// Partitioning key for streams (encoded as `payload_encoding` says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

fn decode(s: &str, enc: PayloadEncoding, what: &str) -> Result<Bytes, ApiError> {
    match enc {
        PayloadEncoding::String => Ok(Bytes::copy_from_slice(s.as_bytes())),
        PayloadEncoding::Base64 => B64
            .decode(s)
            .map(Bytes::from)
            .map_err(|e| ApiError::invalid(format!("{what} is not valid base64: {e}"))),
    }
}

impl PublishMessage {
    /// The neutral message.
    ///
    /// # Errors
    /// 422 for a bad base64 payload or header value.
    pub fn into_message(self) -> Result<Message, ApiError> {
        let body = decode(&self.payload, self.payload_encoding, "payload")?;
        let key = self
            .key
            .as_deref()
            .map(|k| decode(k, self.payload_encoding, "key"))
            .transpose()?;
        let headers =
            json_to_table(&self.headers).map_err(|e| ApiError::invalid(format!("header {e}")))?;
        Ok(Message {
            exchange: String::new(),
            routing_key: self.routing_key,
            headers,
            properties: self.properties.into_core(),
            key,
            body,
        })
    }
}

/// A message as the API returns it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MessageJson {
    /// The exchange it was published to ("" is the default exchange).
    pub exchange: String,
    pub routing_key: String,
    #[schema(value_type = Object)]
    pub headers: Map<String, Json>,
    pub properties: PropertiesJson,
    /// Text when the body and the key are UTF-8 (and base64 was not asked for), else base64.
    pub payload: String,
    pub payload_encoding: PayloadEncoding,
    /// Body size in bytes.
    pub payload_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl MessageJson {
    pub fn from_core(m: &Message, force_base64: bool) -> Self {
        // One encoding covers the payload and the key: text only when both are UTF-8, so
        // that a binary key with a text body is not mangled.
        let key_is_text = m
            .key
            .as_ref()
            .is_none_or(|k| std::str::from_utf8(k).is_ok());
        let text = if force_base64 || !key_is_text {
            None
        } else {
            std::str::from_utf8(&m.body).ok()
        };
        let (payload, payload_encoding) = match text {
            Some(s) => (s.to_string(), PayloadEncoding::String),
            None => (B64.encode(&m.body), PayloadEncoding::Base64),
        };
        let key = m.key.as_ref().map(|k| match payload_encoding {
            PayloadEncoding::String => String::from_utf8_lossy(k).into_owned(),
            PayloadEncoding::Base64 => B64.encode(k),
        });
        MessageJson {
            exchange: m.exchange.clone(),
            routing_key: m.routing_key.clone(),
            headers: table_to_json(&m.headers),
            properties: PropertiesJson::from_core(&m.properties),
            payload,
            payload_encoding,
            payload_bytes: m.body.len() as u64,
            key,
        }
    }
}

/// Builds a message from a raw request: the body as is, `Content-Type` and
/// `Content-Encoding` as properties, `x-ferrymq-<property>` headers as the other properties
/// and `x-ferrymq-header-<name>` headers as message headers (names lowercased, values strings).
///
/// # Errors
/// 422 for a property header whose value does not parse.
pub fn message_from_raw(headers: &HeaderMap, body: Bytes) -> Result<Message, ApiError> {
    let get = |name: &str| -> Result<Option<String>, ApiError> {
        match headers.get(name) {
            None => Ok(None),
            Some(v) => v
                .to_str()
                .map(|s| Some(s.to_string()))
                .map_err(|_| ApiError::invalid(format!("header {name} is not visible ASCII"))),
        }
    };
    fn num<T: std::str::FromStr>(name: &str, v: Option<String>) -> Result<Option<T>, ApiError> {
        v.map(|s| {
            s.trim()
                .parse::<T>()
                .map_err(|_| ApiError::invalid(format!("header {name}: cannot parse {s:?}")))
        })
        .transpose()
    }
    let persistent = match get("x-ferrymq-persistent")?.as_deref() {
        None | Some("true") | Some("1") => true,
        Some("false") | Some("0") => false,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "header x-ferrymq-persistent must be true or false, got {other:?}"
            )))
        }
    };
    let properties = Properties {
        content_type: get("content-type")?,
        content_encoding: get("content-encoding")?,
        correlation_id: get("x-ferrymq-correlation-id")?,
        reply_to: get("x-ferrymq-reply-to")?,
        message_id: get("x-ferrymq-message-id")?,
        timestamp_ms: num("x-ferrymq-timestamp-ms", get("x-ferrymq-timestamp-ms")?)?,
        expiration_ms: num("x-ferrymq-expiration-ms", get("x-ferrymq-expiration-ms")?)?,
        priority: num("x-ferrymq-priority", get("x-ferrymq-priority")?)?,
        persistent,
        kind: get("x-ferrymq-type")?,
        user_id: get("x-ferrymq-user-id")?,
        app_id: get("x-ferrymq-app-id")?,
    };
    let mut table = FieldTable::new();
    let mut sorted: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        if let Some(h) = name.as_str().strip_prefix(HEADER_PREFIX) {
            let v = value
                .to_str()
                .map_err(|_| ApiError::invalid(format!("header {name} is not visible ASCII")))?;
            sorted.entry(h).or_default().push(v.to_string());
        }
    }
    for (k, mut vs) in sorted {
        let v = if vs.len() == 1 {
            Value::String(vs.remove(0))
        } else {
            Value::Array(vs.into_iter().map(Value::String).collect())
        };
        table.insert(k, v);
    }
    Ok(Message {
        exchange: String::new(),
        routing_key: String::new(),
        headers: table,
        properties,
        key: get("x-ferrymq-key")?.map(Bytes::from),
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_json() {
        let t: FieldTable = vec![
            ("a".to_string(), Value::Int(-3)),
            ("b".into(), Value::String("x".into())),
            ("c".into(), Value::Bytes(Bytes::from_static(b"\x00\xff"))),
            ("d".into(), Value::Timestamp(17)),
            (
                "e".into(),
                Value::Decimal {
                    scale: 2,
                    value: 314,
                },
            ),
            (
                "f".into(),
                Value::Array(vec![Value::Bool(true), Value::Void]),
            ),
            (
                "g".into(),
                Value::Table(
                    vec![("h".to_string(), Value::UInt(u64::MAX))]
                        .into_iter()
                        .collect(),
                ),
            ),
        ]
        .into_iter()
        .collect();
        let j = table_to_json(&t);
        assert_eq!(json_to_table(&j).unwrap(), t);
    }

    #[test]
    fn bad_tagged_values_are_errors() {
        assert!(json_to_value(&serde_json::json!({"$bytes": "%%%"})).is_err());
        assert!(
            json_to_value(&serde_json::json!({"$decimal": {"scale": 999, "value": 1}})).is_err()
        );
    }

    #[test]
    fn raw_request_headers_map_to_properties_and_headers() {
        let mut h = HeaderMap::new();
        h.insert("content-type", "text/plain".parse().unwrap());
        h.insert("x-ferrymq-correlation-id", "c1".parse().unwrap());
        h.insert("x-ferrymq-priority", "5".parse().unwrap());
        h.insert("x-ferrymq-header-Trace", "t".parse().unwrap());
        let m = message_from_raw(&h, Bytes::from_static(b"hi")).unwrap();
        assert_eq!(m.properties.content_type.as_deref(), Some("text/plain"));
        assert_eq!(m.properties.correlation_id.as_deref(), Some("c1"));
        assert_eq!(m.properties.priority, Some(5));
        assert!(m.properties.persistent);
        assert_eq!(m.headers.get_str("trace"), Some("t"));
        h.insert("x-ferrymq-priority", "500".parse().unwrap());
        assert_eq!(message_from_raw(&h, Bytes::new()).unwrap_err().status, 422);
    }
}
