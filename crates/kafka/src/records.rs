//! Kafka record batches (magic v2), pure: validating what producers send, walking the
//! records of a stored batch (decompressing with a bound), encoding neutral messages as
//! a batch, and the stored-batch decoder registered with the core.
//!
//! Layout of a v2 batch (big-endian), offsets in bytes:
//! `base_offset i64 @0 | batch_length i32 @8 | partition_leader_epoch i32 @12 | magic i8 @16 |
//! crc u32 @17 | attributes i16 @21 | last_offset_delta i32 @23 | base_timestamp i64 @27 |
//! max_timestamp i64 @35 | producer_id i64 @43 | producer_epoch i16 @51 | base_sequence i32 @53 |
//! record_count i32 @57 | records @61`. The CRC32C covers `attributes` to the end, so the
//! broker may rewrite the base offset and the leader epoch without recomputing it.

use std::io::Read;

use bytes::{BufMut, Bytes, BytesMut};
use ferrymq_core::{FieldTable, Message, Value};

/// Bytes before the records of a v2 batch.
pub const BATCH_HEADER_LEN: usize = 61;
/// Bytes of `base_offset` + `batch_length`, which `batch_length` does not count.
const LOG_OVERHEAD: usize = 12;
const ATTR_COMPRESSION_MASK: i16 = 0x07;
const ATTR_TIMESTAMP_TYPE: i16 = 0x08;
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;

/// Why a produced record set was refused; each maps to a Kafka error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// CORRUPT_MESSAGE (2): bad framing, CRC, lengths or counts.
    #[error("corrupt record batch: {0}")]
    Corrupt(String),
    /// INVALID_RECORD (87): well-formed but not acceptable (offset deltas, control records).
    #[error("invalid record batch: {0}")]
    Invalid(String),
    /// MESSAGE_TOO_LARGE (10).
    #[error("record batch of {size} bytes is larger than the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    /// UNSUPPORTED_FOR_MESSAGE_FORMAT (43): message format v0/v1.
    #[error("message format v{0} is not supported (only v2 record batches)")]
    OldFormat(i8),
    /// UNSUPPORTED_COMPRESSION_TYPE (76).
    #[error("unknown compression codec {0}")]
    Compression(i16),
    /// INVALID_TXN_STATE (48): transactional batches need transactions, which FerryMQ lacks.
    #[error("transactional produce is not supported")]
    Transactional,
}

impl RecordError {
    /// The Kafka error code.
    pub fn code(&self) -> i16 {
        match self {
            RecordError::Corrupt(_) => 2,
            RecordError::Invalid(_) => 87,
            RecordError::TooLarge { .. } => 10,
            RecordError::OldFormat(_) => 43,
            RecordError::Compression(_) => 76,
            RecordError::Transactional => 48,
        }
    }
}

/// Header fields of a validated batch and where it lies in the produced bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchInfo {
    /// The whole batch (header included), a slice of the request: stored as received.
    pub bytes: Bytes,
    pub record_count: u32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub compression: i16,
    /// The batch's CRC32C field, checked against its bytes from the attributes on.
    pub crc: u32,
}

impl BatchInfo {
    /// What the batch's CRC covers, for the storage checksum (which then reads only the
    /// 21 bytes before it).
    pub fn suffix_crc(&self) -> ferrymq_storage::SuffixCrc {
        ferrymq_storage::SuffixCrc {
            from: CRC_FROM,
            crc32c: self.crc,
        }
    }
}

/// Where a batch's CRC32C coverage starts: the attributes, after base offset (8), batch
/// length (4), partition leader epoch (4), magic (1) and the CRC itself (4).
const CRC_FROM: usize = 21;

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// The idempotence fields of a stored Kafka batch: `(producer id, producer epoch, base
/// sequence, record count)`, or `None` for a batch too short for its header or without a
/// producer id (not idempotent).
pub fn stored_producer(stored: &[u8]) -> Option<(i64, i16, i32, i32)> {
    if stored.len() < BATCH_HEADER_LEN {
        return None;
    }
    let producer_id = be_i64(stored, 43);
    (producer_id >= 0).then(|| {
        (
            producer_id,
            be_i16(stored, 51),
            be_i32(stored, 53),
            be_i32(stored, 57),
        )
    })
}

/// Splits a produced record set into v2 batches and validates each: framing, magic,
/// CRC32C, record count and offset deltas, every record's framing (after decompressing,
/// bounded by `max_decompressed`), and the size limit `max_batch` (Kafka's
/// `message.max.bytes`, checked on the batch as sent).
///
/// # Errors
/// The first problem found; the whole record set is refused.
pub fn validate(
    records: &Bytes,
    max_batch: usize,
    max_decompressed: usize,
) -> Result<Vec<BatchInfo>, RecordError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    if records.is_empty() {
        return Err(RecordError::Corrupt("empty record set".into()));
    }
    while at < records.len() {
        let rest = &records[at..];
        if rest.len() < 17 {
            return Err(RecordError::Corrupt("truncated batch header".into()));
        }
        let magic = rest[16] as i8;
        if magic != 2 {
            return Err(RecordError::OldFormat(magic));
        }
        if rest.len() < BATCH_HEADER_LEN {
            return Err(RecordError::Corrupt("truncated batch header".into()));
        }
        let batch_length = be_i32(rest, 8);
        let total = usize::try_from(batch_length)
            .ok()
            .and_then(|l| l.checked_add(LOG_OVERHEAD))
            .filter(|t| *t >= BATCH_HEADER_LEN)
            .ok_or_else(|| RecordError::Corrupt(format!("bad batch length {batch_length}")))?;
        if total > max_batch {
            return Err(RecordError::TooLarge {
                size: total,
                limit: max_batch,
            });
        }
        if total > rest.len() {
            return Err(RecordError::Corrupt(format!(
                "batch length {batch_length} runs past the end of the record set"
            )));
        }
        let b = &rest[..total];
        let crc = be_u32(b, 17);
        if crc32c::crc32c(&b[CRC_FROM..]) != crc {
            return Err(RecordError::Corrupt("CRC32C mismatch".into()));
        }
        let attributes = be_i16(b, 21);
        if attributes & ATTR_TRANSACTIONAL != 0 {
            return Err(RecordError::Transactional);
        }
        if attributes & ATTR_CONTROL != 0 {
            return Err(RecordError::Invalid(
                "control batches may not be produced".into(),
            ));
        }
        let compression = attributes & ATTR_COMPRESSION_MASK;
        let count = be_i32(b, 57);
        if count <= 0 {
            return Err(RecordError::Corrupt(format!("record count {count}")));
        }
        if be_i32(b, 23) != count - 1 {
            return Err(RecordError::Invalid(format!(
                "last offset delta {} does not match {count} records",
                be_i32(b, 23)
            )));
        }
        let body = records.slice(at + BATCH_HEADER_LEN..at + total);
        let plain = decompress(compression, &body, max_decompressed)?;
        let mut n = 0u32;
        walk_records(&plain, count as u32, |r| {
            if r.offset_delta != n as i64 {
                return Err(RecordError::Invalid(format!(
                    "record {n} has offset delta {}",
                    r.offset_delta
                )));
            }
            n += 1;
            Ok(())
        })?;
        out.push(BatchInfo {
            bytes: records.slice(at..at + total),
            record_count: count as u32,
            base_timestamp: be_i64(b, 27),
            max_timestamp: be_i64(b, 35),
            producer_id: be_i64(b, 43),
            producer_epoch: be_i16(b, 51),
            base_sequence: be_i32(b, 53),
            compression,
            crc,
        });
        at += total;
    }
    Ok(out)
}

/// Decompresses a batch's records, refusing output larger than `limit`.
///
/// # Errors
/// `Compression` for an unknown codec, `Corrupt` for data that does not decompress,
/// `TooLarge` above the limit.
pub fn decompress(codec: i16, data: &Bytes, limit: usize) -> Result<Bytes, RecordError> {
    let bounded = |r: &mut dyn Read| -> Result<Bytes, RecordError> {
        let mut out = Vec::new();
        let n = r
            .take(limit as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| RecordError::Corrupt(format!("decompression failed: {e}")))?;
        if n > limit {
            return Err(RecordError::TooLarge { size: n, limit });
        }
        Ok(Bytes::from(out))
    };
    match codec {
        0 => Ok(data.clone()),
        1 => bounded(&mut flate2::read::GzDecoder::new(&data[..])),
        2 => snappy_xerial(data, limit),
        3 => bounded(
            &mut lz4::Decoder::new(&data[..])
                .map_err(|e| RecordError::Corrupt(format!("lz4 frame: {e}")))?,
        ),
        4 => bounded(
            &mut zstd::stream::read::Decoder::new(&data[..])
                .map_err(|e| RecordError::Corrupt(format!("zstd frame: {e}")))?,
        ),
        c => Err(RecordError::Compression(c)),
    }
}

/// Snappy as Kafka clients write it: the xerial framing (magic, then length-prefixed
/// raw snappy blocks) or, from some clients, one raw block.
fn snappy_xerial(data: &[u8], limit: usize) -> Result<Bytes, RecordError> {
    const MAGIC: &[u8] = b"\x82SNAPPY\x00";
    let raw = |block: &[u8], out: &mut Vec<u8>| -> Result<(), RecordError> {
        let n = snap::raw::decompress_len(block)
            .map_err(|e| RecordError::Corrupt(format!("snappy: {e}")))?;
        if out.len() + n > limit {
            return Err(RecordError::TooLarge {
                size: out.len() + n,
                limit,
            });
        }
        let start = out.len();
        out.resize(start + n, 0);
        snap::raw::Decoder::new()
            .decompress(block, &mut out[start..])
            .map_err(|e| RecordError::Corrupt(format!("snappy: {e}")))?;
        Ok(())
    };
    let mut out = Vec::new();
    if data.len() >= 16 && &data[..8] == MAGIC {
        let mut at = 16;
        while at < data.len() {
            if data.len() - at < 4 {
                return Err(RecordError::Corrupt("truncated snappy block".into()));
            }
            let n = be_u32(data, at) as usize;
            at += 4;
            if n > data.len() - at {
                return Err(RecordError::Corrupt("truncated snappy block".into()));
            }
            raw(&data[at..at + n], &mut out)?;
            at += n;
        }
    } else {
        raw(data, &mut out)?;
    }
    Ok(Bytes::from(out))
}

/// One record of a batch, borrowed from the (decompressed) record bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    pub timestamp_delta: i64,
    pub offset_delta: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(Bytes, Option<Bytes>)>,
}

/// Reads a zigzag varint (at most 10 bytes) at `*at`.
fn varlong(b: &[u8], at: &mut usize) -> Result<i64, RecordError> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let byte = *b
            .get(*at)
            .ok_or_else(|| RecordError::Corrupt("truncated varint".into()))?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(((v >> 1) as i64) ^ -((v & 1) as i64));
        }
    }
    Err(RecordError::Corrupt("varint longer than 10 bytes".into()))
}

fn bytes_field(b: &Bytes, at: &mut usize, end: usize) -> Result<Option<Bytes>, RecordError> {
    let n = varlong(b, at)?;
    if n == -1 {
        return Ok(None);
    }
    let n = usize::try_from(n).map_err(|_| RecordError::Corrupt(format!("length {n}")))?;
    if n > end.saturating_sub(*at) {
        return Err(RecordError::Corrupt("field runs past its record".into()));
    }
    let v = b.slice(*at..*at + n);
    *at += n;
    Ok(Some(v))
}

/// Walks exactly `count` records of (decompressed) record bytes, calling `f` for each.
///
/// # Errors
/// `Corrupt` for bad framing, too few or too many records; whatever `f` returns.
pub fn walk_records(
    b: &Bytes,
    count: u32,
    mut f: impl FnMut(RawRecord) -> Result<(), RecordError>,
) -> Result<(), RecordError> {
    let mut at = 0usize;
    for _ in 0..count {
        let len = varlong(b, &mut at)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= b.len() - at && *l > 0)
            .ok_or_else(|| RecordError::Corrupt(format!("record length {len}")))?;
        let end = at + len;
        at += 1; // attributes (unused in v2)
        let timestamp_delta = varlong(b, &mut at)?;
        let offset_delta = varlong(b, &mut at)?;
        let key = bytes_field(b, &mut at, end)?;
        let value = bytes_field(b, &mut at, end)?;
        let n = varlong(b, &mut at)?;
        let n = usize::try_from(n)
            .ok()
            .filter(|n| *n <= end.saturating_sub(at))
            .ok_or_else(|| RecordError::Corrupt(format!("header count {n}")))?;
        let mut headers = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            let k = bytes_field(b, &mut at, end)?
                .ok_or_else(|| RecordError::Corrupt("null header key".into()))?;
            let v = bytes_field(b, &mut at, end)?;
            headers.push((k, v));
        }
        if at != end {
            return Err(RecordError::Corrupt(
                "record length does not match its fields".into(),
            ));
        }
        f(RawRecord {
            timestamp_delta,
            offset_delta,
            key,
            value,
            headers,
        })?;
    }
    if at != b.len() {
        return Err(RecordError::Corrupt(
            "bytes after the last record of the batch".into(),
        ));
    }
    Ok(())
}

/// A stored batch as a client must see it: the base offset the log gave it and leader
/// epoch 0 (both outside the CRC), appended to `out`.
pub fn put_stored_batch(out: &mut BytesMut, stored: &[u8], base_offset: u64) {
    let start = out.len();
    out.extend_from_slice(stored);
    if stored.len() >= BATCH_HEADER_LEN {
        out[start..start + 8].copy_from_slice(&(base_offset as i64).to_be_bytes());
        out[start + 12..start + 16].copy_from_slice(&0i32.to_be_bytes());
    }
}

/// The records of a stored Kafka batch as neutral messages:
/// `(offset, timestamp_ms, message)`.
///
/// # Errors
/// As [`validate`] finds them (stored batches were validated when produced).
pub fn decode_stored(
    base_offset: u64,
    stored: &Bytes,
    max_decompressed: usize,
) -> Result<Vec<(u64, i64, Message)>, RecordError> {
    if stored.len() < BATCH_HEADER_LEN {
        return Err(RecordError::Corrupt("truncated batch header".into()));
    }
    let attributes = be_i16(stored, 21);
    let base_ts = be_i64(stored, 27);
    let max_ts = be_i64(stored, 35);
    let count = u32::try_from(be_i32(stored, 57))
        .map_err(|_| RecordError::Corrupt("negative record count".into()))?;
    let body = stored.slice(BATCH_HEADER_LEN..);
    let plain = decompress(attributes & ATTR_COMPRESSION_MASK, &body, max_decompressed)?;
    let log_append_time = attributes & ATTR_TIMESTAMP_TYPE != 0;
    // Every record takes at least 7 bytes: never reserve more than the bytes allow.
    let mut out = Vec::with_capacity((count as usize).min(plain.len() / 7));
    walk_records(&plain, count, |r| {
        let ts = if log_append_time {
            max_ts
        } else {
            base_ts.saturating_add(r.timestamp_delta)
        };
        let offset = base_offset + u64::try_from(r.offset_delta).unwrap_or(0);
        out.push((offset, ts, record_to_message(r, ts)));
        Ok(())
    })?;
    Ok(out)
}

/// A Kafka record as a neutral message: key → `key`, value → body (a null value, a
/// tombstone, becomes an empty body with header `x-kafka-null-value`), headers →
/// byte-valued headers (a null header value → `Void`), timestamp → `timestamp_ms`.
pub fn record_to_message(r: RawRecord, timestamp_ms: i64) -> Message {
    let mut headers = FieldTable::default();
    for (k, v) in r.headers {
        let key = String::from_utf8_lossy(&k).into_owned();
        headers.insert(key, v.map_or(Value::Void, Value::Bytes));
    }
    if r.value.is_none() {
        headers.insert(NULL_VALUE_HEADER.to_string(), Value::Bool(true));
    }
    let mut m = Message {
        key: r.key,
        body: r.value.unwrap_or_default(),
        headers,
        ..Default::default()
    };
    m.properties.timestamp_ms = Some(timestamp_ms);
    m
}

/// Marks a message that came from a Kafka record with a null value (a tombstone).
pub const NULL_VALUE_HEADER: &str = "x-kafka-null-value";

/// A header value as Kafka header bytes: bytes as they are, strings as UTF-8, numbers,
/// booleans and timestamps in their decimal text, `Void` as null; tables and arrays
/// have no Kafka form and are left out (`None`).
fn header_bytes(v: &Value) -> Option<Option<Bytes>> {
    Some(Some(match v {
        Value::Void => return Some(None),
        Value::Bytes(b) => b.clone(),
        Value::String(s) => Bytes::from(s.clone().into_bytes()),
        Value::Bool(b) => Bytes::from(b.to_string()),
        Value::Int(i) => Bytes::from(i.to_string()),
        Value::UInt(i) => Bytes::from(i.to_string()),
        Value::Float(f) => Bytes::from(f.to_string()),
        Value::Timestamp(t) => Bytes::from(t.to_string()),
        Value::Decimal { scale, value } => {
            let d = f64::from(*value) / 10f64.powi(i32::from(*scale));
            Bytes::from(d.to_string())
        }
        Value::Table(_) | Value::Array(_) => return None,
    }))
}

fn put_varlong(out: &mut BytesMut, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        let byte = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.put_u8(byte);
            return;
        }
        out.put_u8(byte | 0x80);
    }
}

fn put_bytes_field(out: &mut BytesMut, b: Option<&[u8]>) {
    match b {
        None => put_varlong(out, -1),
        Some(b) => {
            put_varlong(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}

/// Encodes messages at consecutive offsets from `base_offset` as one uncompressed v2
/// batch (CreateTime), appended to `out`. Each message's timestamp is its
/// `timestamp_ms` property or `default_ts`. The inverse of [`record_to_message`].
pub fn encode_messages(
    out: &mut BytesMut,
    base_offset: u64,
    messages: &[(i64, &Message)],
    default_ts: i64,
) {
    if messages.is_empty() {
        return;
    }
    let ts_of =
        |(ts, m): &(i64, &Message)| m.properties.timestamp_ms.unwrap_or(*ts.max(&default_ts));
    let base_ts = messages.iter().map(ts_of).min().unwrap_or(default_ts);
    let max_ts = messages.iter().map(ts_of).max().unwrap_or(default_ts);
    let mut recs = BytesMut::new();
    let mut rec = BytesMut::new();
    for (i, m) in messages.iter().enumerate() {
        rec.clear();
        rec.put_u8(0);
        put_varlong(&mut rec, ts_of(m) - base_ts);
        put_varlong(&mut rec, i as i64);
        let msg = m.1;
        put_bytes_field(&mut rec, msg.key.as_deref());
        let null_value = msg.body.is_empty() && msg.headers.get(NULL_VALUE_HEADER).is_some();
        put_bytes_field(&mut rec, (!null_value).then_some(&msg.body[..]));
        let headers: Vec<(&str, Option<Bytes>)> = msg
            .headers
            .iter()
            .filter(|(k, _)| *k != NULL_VALUE_HEADER)
            .filter_map(|(k, v)| header_bytes(v).map(|b| (k, b)))
            .collect();
        put_varlong(&mut rec, headers.len() as i64);
        for (k, v) in &headers {
            put_bytes_field(&mut rec, Some(k.as_bytes()));
            put_bytes_field(&mut rec, v.as_deref());
        }
        put_varlong(&mut recs, rec.len() as i64);
        recs.extend_from_slice(&rec);
    }
    let total = BATCH_HEADER_LEN + recs.len();
    let start = out.len();
    out.reserve(total);
    out.put_i64(base_offset as i64);
    out.put_i32((total - LOG_OVERHEAD) as i32);
    out.put_i32(0); // partition leader epoch
    out.put_i8(2);
    out.put_u32(0); // CRC, below
    out.put_i16(0); // attributes: no compression, CreateTime
    out.put_i32(messages.len() as i32 - 1);
    out.put_i64(base_ts);
    out.put_i64(max_ts);
    out.put_i64(-1); // producer id
    out.put_i16(-1);
    out.put_i32(-1);
    out.put_i32(messages.len() as i32);
    out.extend_from_slice(&recs);
    let crc = crc32c::crc32c(&out[start + 21..]);
    out[start + 17..start + 21].copy_from_slice(&crc.to_be_bytes());
}

/// The core's decoder for stored Kafka batches (see [`crate::register_record_format`]).
pub struct KafkaBatchFormat {
    pub max_decompressed: usize,
}

impl ferrymq_core::RecordFormat for KafkaBatchFormat {
    fn name(&self) -> &'static str {
        "kafka-record-batch-v2"
    }

    fn decode(
        &self,
        base_offset: u64,
        _batch_timestamp_ms: i64,
        payload: &Bytes,
    ) -> Result<Vec<(u64, i64, Message)>, String> {
        decode_stored(base_offset, payload, self.max_decompressed).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn stored_producer_reads_the_idempotence_fields() {
        let mut b = vec![0u8; BATCH_HEADER_LEN];
        b[43..51].copy_from_slice(&77i64.to_be_bytes());
        b[51..53].copy_from_slice(&3i16.to_be_bytes());
        b[53..57].copy_from_slice(&40i32.to_be_bytes());
        b[57..61].copy_from_slice(&5i32.to_be_bytes());
        assert_eq!(stored_producer(&b), Some((77, 3, 40, 5)));
        b[43..51].copy_from_slice(&(-1i64).to_be_bytes());
        assert_eq!(stored_producer(&b), None, "no producer id: not idempotent");
        assert_eq!(stored_producer(&b[..60]), None, "short header");
    }

    use super::*;

    fn msg(key: &str, body: &str, ts: i64) -> Message {
        let mut m = Message::new("", body.to_string());
        m.key = Some(Bytes::from(key.to_string()));
        m.headers
            .insert("h".to_string(), Value::Bytes(Bytes::from_static(b"v")));
        m.headers
            .insert("s".to_string(), Value::String("str".into()));
        m.properties.timestamp_ms = Some(ts);
        m
    }

    fn batch(n: usize) -> Bytes {
        let msgs: Vec<Message> = (0..n)
            .map(|i| msg(&format!("k{i}"), &format!("v{i}"), 1000 + i as i64))
            .collect();
        let refs: Vec<(i64, &Message)> = msgs.iter().map(|m| (0, m)).collect();
        let mut out = BytesMut::new();
        encode_messages(&mut out, 0, &refs, 0);
        out.freeze()
    }

    #[test]
    fn encoded_batches_validate_and_decode_back() {
        let b = batch(3);
        let infos = validate(&b, 1 << 20, 1 << 20).unwrap();
        assert_eq!(infos.len(), 1);
        assert_eq!(infos[0].record_count, 3);
        assert_eq!(infos[0].max_timestamp, 1002);
        let got = decode_stored(40, &b, 1 << 20).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[2].0, 42);
        assert_eq!(got[2].1, 1002);
        let m = &got[1].2;
        assert_eq!(m.key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(&m.body[..], b"v1");
        assert_eq!(
            m.headers.get("s"),
            Some(&Value::Bytes(Bytes::from_static(b"str")))
        );
        // The kafka-protocol crate's decoder (what clients use) agrees.
        let mut buf = b.clone();
        let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf).unwrap();
        assert_eq!(set.records.len(), 3);
        assert_eq!(set.records[1].value.as_deref(), Some(&b"v1"[..]));
    }

    #[test]
    fn two_batches_in_one_record_set() {
        let mut two = BytesMut::from(&batch(2)[..]);
        two.extend_from_slice(&batch(1));
        let infos = validate(&two.freeze(), 1 << 20, 1 << 20).unwrap();
        assert_eq!(
            infos.iter().map(|i| i.record_count).collect::<Vec<_>>(),
            vec![2, 1]
        );
    }

    #[test]
    fn crc_length_count_and_size_errors() {
        let good = batch(2);
        let mut bad = BytesMut::from(&good[..]);
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert!(matches!(
            validate(&bad.freeze(), 1 << 20, 1 << 20),
            Err(RecordError::Corrupt(_))
        ));
        assert!(matches!(
            validate(&good, 10, 1 << 20),
            Err(RecordError::TooLarge { .. })
        ));
        let truncated = good.slice(..good.len() - 3);
        assert_eq!(
            validate(&truncated, 1 << 20, 1 << 20).unwrap_err().code(),
            2
        );
        let mut old = BytesMut::from(&good[..]);
        old[16] = 1;
        assert_eq!(
            validate(&old.freeze(), 1 << 20, 1 << 20)
                .unwrap_err()
                .code(),
            43
        );
        // A count that disagrees with the records (CRC recomputed so only the count is wrong).
        let mut wrong = BytesMut::from(&good[..]);
        wrong[57..61].copy_from_slice(&3i32.to_be_bytes());
        wrong[23..27].copy_from_slice(&2i32.to_be_bytes());
        let crc = crc32c::crc32c(&wrong[21..]);
        wrong[17..21].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(
            validate(&wrong.freeze(), 1 << 20, 1 << 20)
                .unwrap_err()
                .code(),
            2
        );
    }

    #[test]
    fn compressed_batches_from_the_client_encoder_validate() {
        use kafka_protocol::records::{
            Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
        };
        for compression in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let records: Vec<Record> = (0..5)
                .map(|i| Record {
                    transactional: false,
                    control: false,
                    delete_horizon: false,
                    partition_leader_epoch: -1,
                    producer_id: -1,
                    producer_epoch: -1,
                    timestamp_type: TimestampType::Creation,
                    offset: i,
                    // The crate's encoder starts a new batch when offset - sequence changes.
                    sequence: i as i32,
                    timestamp: 5000 + i,
                    key: Some(Bytes::from(format!("key-{i}"))),
                    value: Some(Bytes::from("x".repeat(100))),
                    headers: Default::default(),
                })
                .collect();
            let mut buf = BytesMut::new();
            RecordBatchEncoder::encode(
                &mut buf,
                &records,
                &RecordEncodeOptions {
                    version: 2,
                    compression,
                },
            )
            .unwrap();
            let b = buf.freeze();
            let infos = validate(&b, 1 << 20, 1 << 20).unwrap();
            assert_eq!(infos[0].record_count, 5, "{compression:?}");
            let got = decode_stored(0, &b, 1 << 20).unwrap();
            assert_eq!(got.len(), 5);
            assert_eq!(got[4].1, 5004);
            assert_eq!(got[4].2.key.as_deref(), Some(&b"key-4"[..]));
            // The decompression bound holds.
            assert!(matches!(
                validate(&b, 1 << 20, 100),
                Err(RecordError::TooLarge { .. })
            ));
        }
    }

    #[test]
    fn stored_batches_get_the_log_offset() {
        let b = batch(2);
        let mut out = BytesMut::new();
        put_stored_batch(&mut out, &b, 77);
        let mut buf = out.freeze();
        let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf).unwrap();
        assert_eq!(set.records[0].offset, 77);
        assert_eq!(set.records[1].offset, 78);
    }

    #[test]
    fn null_values_round_trip_as_tombstones() {
        let mut m = Message::new("", Bytes::new());
        m.headers
            .insert(NULL_VALUE_HEADER.to_string(), Value::Bool(true));
        let mut out = BytesMut::new();
        encode_messages(&mut out, 0, &[(5, &m)], 5);
        let got = decode_stored(0, &out.freeze(), 1 << 20).unwrap();
        assert!(got[0].2.headers.get(NULL_VALUE_HEADER).is_some());
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = fastrand::Rng::with_seed(7);
        let good = batch(3);
        for _ in 0..5000 {
            let mut b = BytesMut::from(&good[..]);
            for _ in 0..rng.usize(1..4) {
                let i = rng.usize(..b.len());
                b[i] = rng.u8(..);
            }
            let cut = rng.usize(..=b.len());
            let b = b.freeze().slice(..cut);
            let _ = validate(&b, 1 << 20, 1 << 20);
            let _ = decode_stored(0, &b, 1 << 20);
        }
    }
}
