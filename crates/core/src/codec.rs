//! The core's binary encoding of a [`Message`] for storage in logs.
//!
//! Pure: bytes in, typed value out, and back; no I/O. [`decode`] is zero-copy for the
//! body, the key and [`Value::Bytes`] header values: they are slices of the input
//! buffer (`Bytes::slice`), so a message read from a segment shares its memory.
//! Stored data can be damaged, so decoding validates everything and never panics;
//! the storage layer's checksums catch damage first, this is the second line.
//!
//! # Format, version 1
//!
//! All fixed-width integers are little-endian. `varint` is unsigned LEB128 of a
//! `u64`: at most 10 bytes, canonical (no redundant trailing zero groups).
//!
//! ```text
//! record  = version:u8 (= 1) flags:u16 exchange:str routing_key:str
//!           props headers:table [key:bytes] body:bytes
//! flags   : bit 0 persistent, bit 1 key present, then one bit per optional property,
//!           set when present: 2 content_type, 3 content_encoding, 4 correlation_id,
//!           5 reply_to, 6 message_id, 7 timestamp_ms, 8 expiration_ms, 9 priority,
//!           10 kind, 11 user_id, 12 app_id; bits 13-15 must be 0.
//! props   : the present properties in bit order: strings as str, timestamp_ms as
//!           i64, expiration_ms as u64, priority as u8.
//! str     = len:varint utf8-bytes
//! bytes   = len:varint bytes
//! table   = count:varint (name:str value){count}
//! value   = tag:u8 payload:
//!           0 Void | 1 Bool false | 2 Bool true | 3 Int zigzag-varint
//!           | 4 UInt varint | 5 Float f64 bits as u64 | 6 Decimal scale:u8 value:i32
//!           | 7 String str | 8 Bytes bytes | 9 Timestamp i64 | 10 Table table
//!           | 11 Array count:varint value{count}
//! ```
//!
//! The record must be consumed exactly: trailing bytes are an error, so a record
//! cut short or run into the next one is reported, never misread. Every length and
//! count is checked against the remaining input before anything is allocated.
//! Tables and arrays nest at most [`DEPTH_MAX`] levels (the headers table is level
//! 1), so a crafted record cannot exhaust the stack; adapters must not build deeper
//! messages (see [`check_depth`]), or the stored record will not decode.
//!
//! Floats round-trip bit for bit (NaN payloads included).

use bytes::{BufMut, Bytes, BytesMut};

use crate::message::{FieldTable, Message, Properties, Value};

/// The format version written by [`encode`].
pub const VERSION: u8 = 1;

/// The deepest nesting of tables and arrays a record may have; the headers table
/// is level 1.
pub const DEPTH_MAX: usize = 64;

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The input ended inside a field, or a length runs past its end.
    #[error("record truncated")]
    Truncated,
    /// The leading version byte is not one this build reads.
    #[error("unknown record format version {0}")]
    UnknownVersion(u8),
    /// A field holds a value the format does not allow.
    #[error("invalid record: {what}")]
    Invalid { what: &'static str },
    /// A string field is not UTF-8.
    #[error("invalid UTF-8 in {what}")]
    InvalidUtf8 { what: &'static str },
    /// Tables and arrays nest deeper than [`DEPTH_MAX`].
    #[error("tables nested deeper than {DEPTH_MAX} levels")]
    TooDeep,
}

const F_PERSISTENT: u16 = 1 << 0;
const F_KEY: u16 = 1 << 1;
const F_CONTENT_TYPE: u16 = 1 << 2;
const F_CONTENT_ENCODING: u16 = 1 << 3;
const F_CORRELATION_ID: u16 = 1 << 4;
const F_REPLY_TO: u16 = 1 << 5;
const F_MESSAGE_ID: u16 = 1 << 6;
const F_TIMESTAMP: u16 = 1 << 7;
const F_EXPIRATION: u16 = 1 << 8;
const F_PRIORITY: u16 = 1 << 9;
const F_KIND: u16 = 1 << 10;
const F_USER_ID: u16 = 1 << 11;
const F_APP_ID: u16 = 1 << 12;
const F_ALL: u16 = (1 << 13) - 1;

const T_VOID: u8 = 0;
const T_FALSE: u8 = 1;
const T_TRUE: u8 = 2;
const T_INT: u8 = 3;
const T_UINT: u8 = 4;
const T_FLOAT: u8 = 5;
const T_DECIMAL: u8 = 6;
const T_STRING: u8 = 7;
const T_BYTES: u8 = 8;
const T_TIMESTAMP: u8 = 9;
const T_TABLE: u8 = 10;
const T_ARRAY: u8 = 11;

/// Initial capacity limit for decoded tables and arrays, so that a count claiming
/// many elements reserves little until the elements are actually there.
const PREALLOC_MAX: usize = 64;

// ---------------------------------------------------------------------------
// Encoding

fn flags(msg: &Message) -> u16 {
    let p = &msg.properties;
    let bit = |present: bool, f: u16| if present { f } else { 0 };
    bit(p.persistent, F_PERSISTENT)
        | bit(msg.key.is_some(), F_KEY)
        | bit(p.content_type.is_some(), F_CONTENT_TYPE)
        | bit(p.content_encoding.is_some(), F_CONTENT_ENCODING)
        | bit(p.correlation_id.is_some(), F_CORRELATION_ID)
        | bit(p.reply_to.is_some(), F_REPLY_TO)
        | bit(p.message_id.is_some(), F_MESSAGE_ID)
        | bit(p.timestamp_ms.is_some(), F_TIMESTAMP)
        | bit(p.expiration_ms.is_some(), F_EXPIRATION)
        | bit(p.priority.is_some(), F_PRIORITY)
        | bit(p.kind.is_some(), F_KIND)
        | bit(p.user_id.is_some(), F_USER_ID)
        | bit(p.app_id.is_some(), F_APP_ID)
}

/// Appends the encoding of `msg` to `out` (exactly [`encoded_len`] bytes).
///
/// Infallible: any `Message` encodes. One that nests tables deeper than
/// [`DEPTH_MAX`] encodes but will not decode; see [`check_depth`].
pub fn encode(msg: &Message, out: &mut BytesMut) {
    out.reserve(encoded_len(msg));
    encode_unreserved(msg, out);
}

/// [`encode`] without reserving space first: for callers that sized `out` for a
/// whole batch already (the buffer still grows if it must).
pub fn encode_unreserved(msg: &Message, out: &mut BytesMut) {
    let p = &msg.properties;
    out.put_u8(VERSION);
    out.put_u16_le(flags(msg));
    put_str(out, &msg.exchange);
    put_str(out, &msg.routing_key);
    for s in [&p.content_type, &p.content_encoding, &p.correlation_id]
        .into_iter()
        .chain([&p.reply_to, &p.message_id])
        .flatten()
    {
        put_str(out, s);
    }
    if let Some(t) = p.timestamp_ms {
        out.put_i64_le(t);
    }
    if let Some(e) = p.expiration_ms {
        out.put_u64_le(e);
    }
    if let Some(pr) = p.priority {
        out.put_u8(pr);
    }
    for s in [&p.kind, &p.user_id, &p.app_id].into_iter().flatten() {
        put_str(out, s);
    }
    put_table(out, &msg.headers);
    if let Some(k) = &msg.key {
        put_bytes(out, k);
    }
    put_bytes(out, &msg.body);
}

/// The exact number of bytes [`encode`] appends for `msg`.
pub fn encoded_len(msg: &Message) -> usize {
    let p = &msg.properties;
    let opt_str = |s: &Option<String>| s.as_deref().map_or(0, str_len);
    1 + 2
        + str_len(&msg.exchange)
        + str_len(&msg.routing_key)
        + opt_str(&p.content_type)
        + opt_str(&p.content_encoding)
        + opt_str(&p.correlation_id)
        + opt_str(&p.reply_to)
        + opt_str(&p.message_id)
        + p.timestamp_ms.map_or(0, |_| 8)
        + p.expiration_ms.map_or(0, |_| 8)
        + p.priority.map_or(0, |_| 1)
        + opt_str(&p.kind)
        + opt_str(&p.user_id)
        + opt_str(&p.app_id)
        + table_len(&msg.headers)
        + msg.key.as_ref().map_or(0, |k| bytes_len(k))
        + bytes_len(&msg.body)
}

fn varint_len(v: u64) -> usize {
    // 1 byte per started group of 7 bits; 0 takes one byte.
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

fn put_varint(out: &mut BytesMut, mut v: u64) {
    if v < 0x80 {
        out.put_u8(v as u8);
        return;
    }
    let mut buf = [0u8; 10];
    let mut n = 0;
    while v >= 0x80 {
        buf[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    buf[n] = v as u8;
    out.put_slice(&buf[..=n]);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn str_len(s: &str) -> usize {
    bytes_len(s.as_bytes())
}

fn bytes_len(b: &[u8]) -> usize {
    varint_len(b.len() as u64) + b.len()
}

fn put_str(out: &mut BytesMut, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.put_slice(b);
}

fn table_len(t: &FieldTable) -> usize {
    varint_len(t.len() as u64)
        + t.iter()
            .map(|(k, v)| str_len(k) + value_len(v))
            .sum::<usize>()
}

fn put_table(out: &mut BytesMut, t: &FieldTable) {
    put_varint(out, t.len() as u64);
    for (k, v) in t.iter() {
        put_str(out, k);
        put_value(out, v);
    }
}

fn value_len(v: &Value) -> usize {
    1 + match v {
        Value::Void | Value::Bool(_) => 0,
        Value::Int(i) => varint_len(zigzag(*i)),
        Value::UInt(u) => varint_len(*u),
        Value::Float(_) | Value::Timestamp(_) => 8,
        Value::Decimal { .. } => 5,
        Value::String(s) => str_len(s),
        Value::Bytes(b) => bytes_len(b),
        Value::Table(t) => table_len(t),
        Value::Array(a) => varint_len(a.len() as u64) + a.iter().map(value_len).sum::<usize>(),
    }
}

fn put_value(out: &mut BytesMut, v: &Value) {
    match v {
        Value::Void => out.put_u8(T_VOID),
        Value::Bool(false) => out.put_u8(T_FALSE),
        Value::Bool(true) => out.put_u8(T_TRUE),
        Value::Int(i) => {
            out.put_u8(T_INT);
            put_varint(out, zigzag(*i));
        }
        Value::UInt(u) => {
            out.put_u8(T_UINT);
            put_varint(out, *u);
        }
        Value::Float(f) => {
            out.put_u8(T_FLOAT);
            out.put_u64_le(f.to_bits());
        }
        Value::Decimal { scale, value } => {
            out.put_u8(T_DECIMAL);
            out.put_u8(*scale);
            out.put_i32_le(*value);
        }
        Value::String(s) => {
            out.put_u8(T_STRING);
            put_str(out, s);
        }
        Value::Bytes(b) => {
            out.put_u8(T_BYTES);
            put_bytes(out, b);
        }
        Value::Timestamp(t) => {
            out.put_u8(T_TIMESTAMP);
            out.put_i64_le(*t);
        }
        Value::Table(t) => {
            out.put_u8(T_TABLE);
            put_table(out, t);
        }
        Value::Array(a) => {
            out.put_u8(T_ARRAY);
            put_varint(out, a.len() as u64);
            for v in a {
                put_value(out, v);
            }
        }
    }
}

/// Checks that `msg`'s headers nest tables and arrays at most [`DEPTH_MAX`] levels
/// deep, so that its encoding will decode. Iterative: safe on any depth.
///
/// # Errors
///
/// [`CodecError::TooDeep`] if they nest deeper.
pub fn check_depth(msg: &Message) -> Result<(), CodecError> {
    // (value, its level); the headers table is level 1, its values' children 2...
    let mut stack: Vec<(&Value, usize)> = msg.headers.iter().map(|(_, v)| (v, 1)).collect();
    while let Some((v, level)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Table(t) => Box::new(t.iter().map(|(_, v)| v)),
            Value::Array(a) => Box::new(a.iter()),
            _ => continue,
        };
        if level + 1 > DEPTH_MAX {
            return Err(CodecError::TooDeep);
        }
        stack.extend(children.map(|c| (c, level + 1)));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Decoding

/// Decodes a record written by [`encode`]. The body, the key and `Value::Bytes`
/// header values are slices of `buf` (no copy).
///
/// # Errors
///
/// [`CodecError`] if `buf` is not exactly one valid record: truncated, trailing
/// bytes, an unknown version, an invalid field, invalid UTF-8, or too deep.
pub fn decode(buf: Bytes) -> Result<Message, CodecError> {
    let mut r = Reader { src: &buf, pos: 0 };
    let version = r.u8()?;
    if version != VERSION {
        return Err(CodecError::UnknownVersion(version));
    }
    let flags = r.u16()?;
    if flags & !F_ALL != 0 {
        return Err(CodecError::Invalid {
            what: "unknown flag bits",
        });
    }
    let has = |f: u16| flags & f != 0;
    let exchange = r.string("exchange")?;
    let routing_key = r.string("routing key")?;
    let mut opt_str = |f: u16, what: &'static str| -> Result<Option<String>, CodecError> {
        if has(f) {
            r.string(what).map(Some)
        } else {
            Ok(None)
        }
    };
    let content_type = opt_str(F_CONTENT_TYPE, "content type")?;
    let content_encoding = opt_str(F_CONTENT_ENCODING, "content encoding")?;
    let correlation_id = opt_str(F_CORRELATION_ID, "correlation id")?;
    let reply_to = opt_str(F_REPLY_TO, "reply to")?;
    let message_id = opt_str(F_MESSAGE_ID, "message id")?;
    let timestamp_ms = if has(F_TIMESTAMP) {
        Some(r.i64()?)
    } else {
        None
    };
    let expiration_ms = if has(F_EXPIRATION) {
        Some(r.u64()?)
    } else {
        None
    };
    let priority = if has(F_PRIORITY) { Some(r.u8()?) } else { None };
    let mut opt_str = |f: u16, what: &'static str| -> Result<Option<String>, CodecError> {
        if has(f) {
            r.string(what).map(Some)
        } else {
            Ok(None)
        }
    };
    let kind = opt_str(F_KIND, "type")?;
    let user_id = opt_str(F_USER_ID, "user id")?;
    let app_id = opt_str(F_APP_ID, "app id")?;
    let headers = r.table(1)?;
    let key = if has(F_KEY) { Some(r.bytes()?) } else { None };
    let body = r.bytes()?;
    if r.pos != buf.len() {
        return Err(CodecError::Invalid {
            what: "trailing bytes",
        });
    }
    Ok(Message {
        exchange,
        routing_key,
        headers,
        properties: Properties {
            content_type,
            content_encoding,
            correlation_id,
            reply_to,
            message_id,
            timestamp_ms,
            expiration_ms,
            priority,
            persistent: has(F_PERSISTENT),
            kind,
            user_id,
            app_id,
        },
        key,
        body,
    })
}

/// A cursor over the input record.
struct Reader<'a> {
    src: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.src.len() - self.pos
    }

    /// The next `n` bytes' range, checked against the input.
    fn take(&mut self, n: usize) -> Result<std::ops::Range<usize>, CodecError> {
        if n > self.remaining() {
            return Err(CodecError::Truncated);
        }
        let start = self.pos;
        self.pos += n;
        Ok(start..self.pos)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let range = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&self.src[range]);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        let b = *self.src.get(self.pos).ok_or(CodecError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn u16(&mut self) -> Result<u16, CodecError> {
        self.array().map(u16::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, CodecError> {
        self.array().map(u64::from_le_bytes)
    }

    fn i64(&mut self) -> Result<i64, CodecError> {
        self.array().map(i64::from_le_bytes)
    }

    fn varint(&mut self) -> Result<u64, CodecError> {
        let first = self.u8()?;
        if first < 0x80 {
            return Ok(u64::from(first));
        }
        let mut v = u64::from(first & 0x7f);
        for shift in (7..64).step_by(7) {
            let b = self.u8()?;
            // The 10th byte (shift 63) may only carry the top bit of a u64.
            if shift == 63 && b > 1 {
                return Err(CodecError::Invalid {
                    what: "varint overflows u64",
                });
            }
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                if b == 0 {
                    return Err(CodecError::Invalid {
                        what: "non-canonical varint",
                    });
                }
                return Ok(v);
            }
        }
        unreachable_varint()
    }

    /// A length or count of items taking at least `min_size` bytes each, checked
    /// against the remaining input.
    fn count(&mut self, min_size: usize) -> Result<usize, CodecError> {
        let n = self.varint()?;
        match usize::try_from(n) {
            Ok(n) if n.saturating_mul(min_size) <= self.remaining() => Ok(n),
            _ => Err(CodecError::Truncated),
        }
    }

    fn bytes(&mut self) -> Result<Bytes, CodecError> {
        let n = self.count(1)?;
        let range = self.take(n)?;
        Ok(self.src.slice(range))
    }

    fn string(&mut self, what: &'static str) -> Result<String, CodecError> {
        let n = self.count(1)?;
        let range = self.take(n)?;
        match std::str::from_utf8(&self.src[range]) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(CodecError::InvalidUtf8 { what }),
        }
    }

    /// A table at nesting `level` (the headers are level 1).
    fn table(&mut self, level: usize) -> Result<FieldTable, CodecError> {
        if level > DEPTH_MAX {
            return Err(CodecError::TooDeep);
        }
        // An entry is at least a name length and a tag.
        let n = self.count(2)?;
        let mut entries = Vec::with_capacity(n.min(PREALLOC_MAX));
        for _ in 0..n {
            let name = self.string("header name")?;
            let value = self.value(level)?;
            entries.push((name, value));
        }
        Ok(FieldTable(entries))
    }

    /// A value inside a table or array at nesting `level`.
    fn value(&mut self, level: usize) -> Result<Value, CodecError> {
        Ok(match self.u8()? {
            T_VOID => Value::Void,
            T_FALSE => Value::Bool(false),
            T_TRUE => Value::Bool(true),
            T_INT => Value::Int(unzigzag(self.varint()?)),
            T_UINT => Value::UInt(self.varint()?),
            T_FLOAT => Value::Float(f64::from_bits(self.u64()?)),
            T_DECIMAL => {
                let [scale, a, b, c, d] = self.array()?;
                Value::Decimal {
                    scale,
                    value: i32::from_le_bytes([a, b, c, d]),
                }
            }
            T_STRING => Value::String(self.string("header string")?),
            T_BYTES => Value::Bytes(self.bytes()?),
            T_TIMESTAMP => Value::Timestamp(self.i64()?),
            T_TABLE => Value::Table(self.table(level + 1)?),
            T_ARRAY => {
                if level + 1 > DEPTH_MAX {
                    return Err(CodecError::TooDeep);
                }
                // An element is at least a tag.
                let n = self.count(1)?;
                let mut items = Vec::with_capacity(n.min(PREALLOC_MAX));
                for _ in 0..n {
                    items.push(self.value(level + 1)?);
                }
                Value::Array(items)
            }
            _ => {
                return Err(CodecError::Invalid {
                    what: "unknown value tag",
                })
            }
        })
    }
}

/// The varint loop returns on or before its 10th byte.
#[cold]
fn unreachable_varint() -> Result<u64, CodecError> {
    Err(CodecError::Invalid {
        what: "varint too long",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(msg: &Message) -> Bytes {
        let mut out = BytesMut::new();
        encode(msg, &mut out);
        assert_eq!(out.len(), encoded_len(msg));
        out.freeze()
    }

    /// Equality that treats floats bitwise (NaN round-trips too).
    fn same_value(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
            (Value::Table(x), Value::Table(y)) => same_table(x, y),
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_value(a, b))
            }
            _ => a == b,
        }
    }

    fn same_table(a: &FieldTable, b: &FieldTable) -> bool {
        a.len() == b.len()
            && a.0
                .iter()
                .zip(&b.0)
                .all(|((k1, v1), (k2, v2))| k1 == k2 && same_value(v1, v2))
    }

    fn same_message(a: &Message, b: &Message) -> bool {
        same_table(&a.headers, &b.headers)
            && Message {
                headers: FieldTable::new(),
                ..a.clone()
            } == Message {
                headers: FieldTable::new(),
                ..b.clone()
            }
    }

    fn full_message() -> Message {
        let nested: FieldTable = [
            ("t".to_owned(), Value::Timestamp(-5)),
            (
                "arr".to_owned(),
                Value::Array(vec![Value::Void, Value::Bool(true), Value::Array(vec![])]),
            ),
        ]
        .into_iter()
        .collect();
        let headers: FieldTable = [
            ("void", Value::Void),
            ("f", Value::Bool(false)),
            ("t", Value::Bool(true)),
            ("i", Value::Int(i64::MIN)),
            ("u", Value::UInt(u64::MAX)),
            ("fl", Value::Float(-0.0)),
            ("nan", Value::Float(f64::NAN)),
            (
                "d",
                Value::Decimal {
                    scale: 3,
                    value: -12345,
                },
            ),
            ("s", Value::from("ünïcode")),
            ("b", Value::Bytes(Bytes::from_static(b"\x00\xff"))),
            ("ts", Value::Timestamp(1_700_000_000_000)),
            ("tab", Value::Table(nested)),
            ("", Value::Array(vec![Value::Int(1), Value::from("x")])),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        Message {
            exchange: "amq.topic".into(),
            routing_key: "a.b.c".into(),
            headers,
            properties: Properties {
                content_type: Some("application/json".into()),
                content_encoding: Some("gzip".into()),
                correlation_id: Some("corr".into()),
                reply_to: Some("amq.rabbitmq.reply-to".into()),
                message_id: Some(String::new()),
                timestamp_ms: Some(-1),
                expiration_ms: Some(u64::MAX),
                priority: Some(255),
                persistent: true,
                kind: Some("kind".into()),
                user_id: Some("guest".into()),
                app_id: Some("app".into()),
            },
            key: Some(Bytes::from_static(b"partition-key")),
            body: Bytes::from_static(b"hello body"),
        }
    }

    #[test]
    fn round_trip_full_and_default() {
        for msg in [full_message(), Message::default(), Message::new("rk", "x")] {
            let bytes = enc(&msg);
            let back = decode(bytes.clone()).unwrap();
            assert!(same_message(&msg, &back), "{msg:?}\n{back:?}");
            // Re-encoding reproduces the bytes.
            assert_eq!(enc(&back), bytes);
        }
    }

    #[test]
    fn empty_key_differs_from_no_key() {
        let mut msg = Message::new("rk", "x");
        msg.key = Some(Bytes::new());
        assert_eq!(decode(enc(&msg)).unwrap().key, Some(Bytes::new()));
        msg.key = None;
        assert_eq!(decode(enc(&msg)).unwrap().key, None);
    }

    #[test]
    fn golden_layout() {
        let msg = Message {
            exchange: "x".into(),
            routing_key: "k".into(),
            headers: [
                ("n".to_owned(), Value::Int(-2)),
                ("s".to_owned(), Value::from("v")),
            ]
            .into_iter()
            .collect(),
            properties: Properties {
                content_type: Some("t".into()),
                priority: Some(5),
                persistent: true,
                ..Default::default()
            },
            key: Some(Bytes::from_static(b"K")),
            body: Bytes::from_static(b"hi"),
        };
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0x01,                   // version
            0x07, 0x02,             // flags: persistent | key | content_type | priority
            0x01, b'x',             // exchange
            0x01, b'k',             // routing key
            0x01, b't',             // content_type
            0x05,                   // priority
            0x02,                   // headers: 2 entries
            0x01, b'n', 0x03, 0x03, // "n" = Int zigzag(-2) = 3
            0x01, b's', 0x07, 0x01, b'v', // "s" = String "v"
            0x01, b'K',             // key
            0x02, b'h', b'i',       // body
        ];
        assert_eq!(&enc(&msg)[..], expected);
        assert_eq!(decode(Bytes::from_static(expected)).unwrap(), msg);

        // The smallest record: default message.
        assert_eq!(&enc(&Message::default())[..], &[1, 0, 0, 0, 0, 0, 0]);

        // Fixed-width fields and multi-byte varints.
        let mut msg = Message::new("", Bytes::from(vec![7u8; 200]));
        msg.properties.timestamp_ms = Some(0x0102);
        msg.properties.expiration_ms = Some(3);
        msg.headers.insert("u", Value::UInt(300));
        msg.headers.insert("f", Value::Float(1.0));
        msg.headers.insert(
            "d",
            Value::Decimal {
                scale: 2,
                value: -1,
            },
        );
        msg.headers.insert("ts", Value::Timestamp(-1));
        let bytes = enc(&msg);
        #[rustfmt::skip]
        let head: &[u8] = &[
            0x01, 0x80, 0x01,       // version, flags: timestamp | expiration
            0x00, 0x00,             // exchange, routing key
            0x02, 0x01, 0, 0, 0, 0, 0, 0, // timestamp_ms
            0x03, 0, 0, 0, 0, 0, 0, 0,    // expiration_ms
            0x04,                   // 4 headers
            0x01, b'u', 0x04, 0xac, 0x02, // UInt 300
            0x01, b'f', 0x05, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, // Float 1.0
            0x01, b'd', 0x06, 0x02, 0xff, 0xff, 0xff, 0xff, // Decimal
            0x02, b't', b's', 0x09, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xc8, 0x01,             // body length 200
        ];
        assert_eq!(&bytes[..head.len()], head);
        assert_eq!(bytes.len(), head.len() + 200);
    }

    #[test]
    fn zero_copy() {
        let msg = full_message();
        let bytes = enc(&msg);
        let range = bytes.as_ptr() as usize..bytes.as_ptr() as usize + bytes.len();
        let back = decode(bytes.clone()).unwrap();
        let inside = |b: &Bytes| {
            range.contains(&(b.as_ptr() as usize))
                && range.contains(&(b.as_ptr() as usize + b.len() - 1))
        };
        assert!(inside(&back.body));
        assert!(inside(back.key.as_ref().unwrap()));
        let Some(Value::Bytes(hb)) = back.headers.get("b") else {
            panic!("no bytes header")
        };
        assert!(inside(hb));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = enc(&full_message());
        for n in 0..bytes.len() {
            let r = decode(bytes.slice(..n));
            assert!(r.is_err(), "prefix of {n} bytes decoded");
            if n > 0 {
                // Cut at a field boundary (e.g. inside a string length), a truncated
                // record can read as invalid UTF-8 or a bad tag; never as success.
                assert!(
                    !matches!(r, Err(CodecError::UnknownVersion(_))),
                    "prefix of {n}: {r:?}"
                );
            }
        }
        assert_eq!(decode(Bytes::new()), Err(CodecError::Truncated));
    }

    #[test]
    fn trailing_bytes_and_bad_fields() {
        let mut v = enc(&Message::new("rk", "x")).to_vec();
        v.push(0);
        assert_eq!(
            decode(Bytes::from(v)),
            Err(CodecError::Invalid {
                what: "trailing bytes"
            })
        );
        assert_eq!(
            decode(Bytes::from_static(&[2, 0, 0])),
            Err(CodecError::UnknownVersion(2))
        );
        assert!(matches!(
            decode(Bytes::from_static(&[1, 0, 0x20, 0, 0, 0, 0])),
            Err(CodecError::Invalid { .. })
        ));
        // Invalid UTF-8 in the routing key.
        assert_eq!(
            decode(Bytes::from_static(&[1, 0, 0, 0, 1, 0xff, 0, 0])),
            Err(CodecError::InvalidUtf8 {
                what: "routing key"
            })
        );
        // Non-canonical varint (0 encoded in two bytes) as the exchange length.
        assert!(matches!(
            decode(Bytes::from_static(&[1, 0, 0, 0x80, 0x00, 0, 0, 0])),
            Err(CodecError::Invalid { .. })
        ));
        // Varint longer than a u64.
        let mut v = vec![1, 0, 0];
        v.extend([0xff; 9]);
        v.push(0x02);
        assert!(matches!(
            decode(Bytes::from(v)),
            Err(CodecError::Invalid { .. })
        ));
        // Unknown value tag.
        assert!(matches!(
            decode(Bytes::from_static(&[1, 0, 0, 0, 0, 1, 0, 12, 0])),
            Err(CodecError::Invalid { .. })
        ));
        // A huge count with little input: refused before allocating.
        assert_eq!(
            decode(Bytes::from_static(&[
                1, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f, 0
            ])),
            Err(CodecError::Truncated)
        );
        assert_eq!(
            decode(Bytes::from_static(&[
                1, 0, 0, 0, 0, 1, 0, 11, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
            ])),
            Err(CodecError::Truncated)
        );
    }

    #[test]
    fn varints() {
        for v in [
            0,
            1,
            127,
            128,
            255,
            16383,
            16384,
            u32::MAX as u64,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut out = BytesMut::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
            let src = out.freeze();
            let mut r = Reader { src: &src, pos: 0 };
            assert_eq!(r.varint(), Ok(v));
            assert_eq!(r.pos, src.len());
        }
        for i in [0, 1, -1, 63, -64, 64, i64::MIN, i64::MAX] {
            assert_eq!(unzigzag(zigzag(i)), i);
        }
    }

    fn nested(depth: usize) -> Message {
        // Headers (level 1) holding a chain of tables and arrays.
        let mut v = Value::Int(1);
        for i in 1..depth {
            v = if i % 2 == 0 {
                Value::Array(vec![v])
            } else {
                Value::Table([("n".to_owned(), v)].into_iter().collect())
            };
        }
        let mut msg = Message::new("rk", "b");
        msg.headers.insert("deep", v);
        msg
    }

    #[test]
    fn depth_limit() {
        let ok = nested(DEPTH_MAX);
        assert_eq!(check_depth(&ok), Ok(()));
        assert_eq!(decode(enc(&ok)).unwrap(), ok);
        let deep = nested(DEPTH_MAX + 1);
        assert_eq!(check_depth(&deep), Err(CodecError::TooDeep));
        assert_eq!(decode(enc(&deep)), Err(CodecError::TooDeep));
        // A crafted record of 100k nested arrays is refused, not a stack overflow.
        let mut v = vec![1, 0, 0, 0, 0, 1, 0];
        for _ in 0..100_000 {
            v.extend([T_ARRAY, 1]);
        }
        assert_eq!(decode(Bytes::from(v)), Err(CodecError::TooDeep));
    }

    fn value_strategy() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Void),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            any::<u64>().prop_map(Value::UInt),
            any::<u64>().prop_map(|b| Value::Float(f64::from_bits(b))),
            (any::<u8>(), any::<i32>()).prop_map(|(scale, value)| Value::Decimal { scale, value }),
            ".{0,8}".prop_map(Value::String),
            prop::collection::vec(any::<u8>(), 0..8).prop_map(|b| Value::Bytes(b.into())),
            any::<i64>().prop_map(Value::Timestamp),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((".{0,4}", inner), 0..4)
                    .prop_map(|v| Value::Table(FieldTable(v))),
            ]
        })
    }

    fn opt_string() -> impl Strategy<Value = Option<String>> {
        prop::option::of(".{0,12}")
    }

    fn message_strategy() -> impl Strategy<Value = Message> {
        let props = (
            (
                opt_string(),
                opt_string(),
                opt_string(),
                opt_string(),
                opt_string(),
            ),
            (
                any::<Option<i64>>(),
                any::<Option<u64>>(),
                any::<Option<u8>>(),
                any::<bool>(),
            ),
            (opt_string(), opt_string(), opt_string()),
        )
            .prop_map(
                |(
                    (content_type, content_encoding, correlation_id, reply_to, message_id),
                    (timestamp_ms, expiration_ms, priority, persistent),
                    (kind, user_id, app_id),
                )| Properties {
                    content_type,
                    content_encoding,
                    correlation_id,
                    reply_to,
                    message_id,
                    timestamp_ms,
                    expiration_ms,
                    priority,
                    persistent,
                    kind,
                    user_id,
                    app_id,
                },
            );
        (
            ".{0,10}",
            ".{0,20}",
            prop::collection::vec((".{0,6}", value_strategy()), 0..6),
            props,
            prop::option::of(prop::collection::vec(any::<u8>(), 0..16)),
            prop::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(
                |(exchange, routing_key, headers, properties, key, body)| Message {
                    exchange,
                    routing_key,
                    headers: FieldTable(headers),
                    properties,
                    key: key.map(Bytes::from),
                    body: Bytes::from(body),
                },
            )
    }

    proptest! {
        #[test]
        fn round_trip(msg in message_strategy()) {
            let bytes = enc(&msg);
            let back = decode(bytes.clone()).unwrap();
            prop_assert!(same_message(&msg, &back), "{:?}\n{:?}", msg, back);
            prop_assert_eq!(enc(&back), bytes);
        }

        #[test]
        fn truncations_and_corruptions_never_panic(
            msg in message_strategy(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let bytes = enc(&msg);
            for n in 0..bytes.len() {
                prop_assert!(decode(bytes.slice(..n)).is_err());
            }
            let mut damaged = bytes.to_vec();
            for (i, x) in flips {
                let i = i.index(damaged.len());
                damaged[i] ^= x;
            }
            // Either an error or some message: never a panic.
            let _ = decode(Bytes::from(damaged));
        }

        #[test]
        fn random_bytes_never_panic(v in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(Bytes::from(v.clone()));
            // And with a valid version byte, to get past the first check.
            let mut w = vec![VERSION];
            w.extend(v);
            let _ = decode(Bytes::from(w));
        }
    }
}
