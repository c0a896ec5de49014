//! On-disk byte layouts: segment header, batch header and encoding, index entries, state
//! journal entries. All integers little-endian; every structure carries a CRC32C or a magic.

use bytes::Bytes;

/// Segment file header: magic, format version, reserved, base offset.
pub(crate) const SEG_MAGIC: [u8; 4] = *b"FMQL";
pub(crate) const SEG_VERSION: u8 = 1;
pub(crate) const SEG_HEADER_LEN: u64 = 16;

/// Batch header:
/// `len u32 | crc u32 | version u8 | flags u8 | reserved u16 | count u32 | base_offset u64 | timestamp_ms i64`,
/// followed by `count` records, each `len u32 | body`. `len` is the whole batch, header
/// included. The CRC32C covers the `len` field and bytes 8..len.
///
/// `flags` is the batch's *format*: 0 is the framing above; any other value marks an
/// *opaque* batch whose payload is one blob in a format the storage engine does not
/// interpret (a layer above registers what it means), standing for `count` offsets.
pub(crate) const BATCH_HEADER_LEN: usize = 32;
pub(crate) const BATCH_VERSION: u8 = 1;
pub(crate) const RECORD_OVERHEAD: usize = 4;
/// The framed-records format (`flags` = 0).
pub const FORMAT_RECORDS: u8 = 0;

pub(crate) fn segment_header(base: u64) -> [u8; SEG_HEADER_LEN as usize] {
    let mut h = [0u8; SEG_HEADER_LEN as usize];
    h[0..4].copy_from_slice(&SEG_MAGIC);
    h[4] = SEG_VERSION;
    h[8..16].copy_from_slice(&base.to_le_bytes());
    h
}

pub(crate) fn check_segment_header(h: &[u8], base: u64) -> bool {
    h.len() >= SEG_HEADER_LEN as usize
        && h[0..4] == SEG_MAGIC
        && h[4] == SEG_VERSION
        && h[8..16] == base.to_le_bytes()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Encoded size of a batch of `records`, or `None` on overflow.
pub(crate) fn batch_len(records: &[Bytes]) -> Option<u64> {
    records.iter().try_fold(BATCH_HEADER_LEN as u64, |acc, r| {
        acc.checked_add(RECORD_OVERHEAD as u64 + r.len() as u64)
    })
}

/// The CRC32C of an opaque payload's bytes from `from` to its end, already computed (and
/// checked) by the caller, such as the CRC a Kafka record batch carries over its bytes from
/// the attributes on: the batch's own checksum then costs one pass over the rest only
/// (CRC32C combination), not a second pass over the whole payload.
///
/// A wrong value is not unsafe, only wasteful: the stored batch would fail verification
/// on read and be skipped as corrupt (debug builds assert it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuffixCrc {
    pub from: usize,
    pub crc32c: u32,
}

/// What a batch holds: framed records, or one opaque payload standing for `count` offsets.
#[derive(Debug, Clone, Copy)]
pub(crate) enum BatchBody<'a> {
    Records(&'a [Bytes]),
    Opaque {
        format: u8,
        count: u32,
        payload: &'a [u8],
        /// The payload's suffix CRC, when the caller has it.
        known: Option<SuffixCrc>,
    },
}

impl BatchBody<'_> {
    /// Encoded size, header included, or `None` on overflow.
    pub fn len(&self) -> Option<u64> {
        match self {
            BatchBody::Records(r) => batch_len(r),
            BatchBody::Opaque { payload, .. } => {
                (BATCH_HEADER_LEN as u64).checked_add(payload.len() as u64)
            }
        }
    }

    /// Offsets the batch takes.
    pub fn count(&self) -> u64 {
        match self {
            BatchBody::Records(r) => r.len() as u64,
            BatchBody::Opaque { count, .. } => u64::from(*count),
        }
    }
}

/// Encodes a batch into `buf` (cleared first). `len` must be `body.len()` and fit u32.
pub(crate) fn encode_batch(
    buf: &mut Vec<u8>,
    len: u32,
    base_offset: u64,
    timestamp_ms: i64,
    body: BatchBody<'_>,
) {
    buf.clear();
    append_batch(buf, len, base_offset, timestamp_ms, body);
}

/// Encodes a batch at the end of `out` (which keeps what it held). `len` must be
/// `body.len()` and fit u32.
pub(crate) fn append_batch(
    out: &mut Vec<u8>,
    len: u32,
    base_offset: u64,
    timestamp_ms: i64,
    body: BatchBody<'_>,
) {
    out.reserve(len as usize);
    match body {
        BatchBody::Records(records) => {
            let start = out.len();
            let h = header(
                len,
                base_offset,
                timestamp_ms,
                FORMAT_RECORDS,
                records.len() as u32,
            );
            out.extend_from_slice(&h);
            for r in records {
                out.extend_from_slice(&(r.len() as u32).to_le_bytes());
                out.extend_from_slice(r);
            }
            assert_eq!(out.len() - start, len as usize, "batch length accounting");
            let crc = batch_crc(&out[start..]);
            out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        }
        BatchBody::Opaque {
            format,
            count,
            payload,
            known,
        } => {
            let h = opaque_header(
                len,
                base_offset,
                timestamp_ms,
                format,
                count,
                payload,
                known,
            );
            out.extend_from_slice(&h);
            out.extend_from_slice(payload);
        }
    }
}

/// The header (CRC included) of an opaque batch (the fields of [`BatchBody::Opaque`]),
/// whose payload is written after it as is.
pub(crate) fn opaque_header(
    len: u32,
    base_offset: u64,
    timestamp_ms: i64,
    format: u8,
    count: u32,
    payload: &[u8],
    known: Option<SuffixCrc>,
) -> [u8; BATCH_HEADER_LEN] {
    debug_assert_eq!(len as usize, BATCH_HEADER_LEN + payload.len());
    let mut h = header(len, base_offset, timestamp_ms, format, count);
    let head = crc32c::crc32c_append(crc32c::crc32c(&h[0..4]), &h[8..]);
    let crc = match known.filter(|k| k.from <= payload.len()) {
        Some(k) => {
            debug_assert_eq!(
                crc32c::crc32c(&payload[k.from..]),
                k.crc32c,
                "the caller's suffix CRC"
            );
            let with_prefix = crc32c::crc32c_append(head, &payload[..k.from]);
            crate::crc::combine(with_prefix, k.crc32c, payload.len() - k.from)
        }
        None => crc32c::crc32c_append(head, payload),
    };
    h[4..8].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A batch header with a zero CRC field.
fn header(
    len: u32,
    base_offset: u64,
    timestamp_ms: i64,
    format: u8,
    count: u32,
) -> [u8; BATCH_HEADER_LEN] {
    let mut h = [0u8; BATCH_HEADER_LEN];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[8] = BATCH_VERSION;
    h[9] = format;
    h[12..16].copy_from_slice(&count.to_le_bytes());
    h[16..24].copy_from_slice(&base_offset.to_le_bytes());
    h[24..32].copy_from_slice(&timestamp_ms.to_le_bytes());
    h
}

fn batch_crc(b: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&b[0..4]), &b[8..])
}

/// A parsed batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchHeader {
    pub len: u32,
    /// 0 = framed records, else an opaque payload's format.
    pub format: u8,
    pub count: u32,
    pub base_offset: u64,
    pub timestamp_ms: i64,
}

impl BatchHeader {
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.count)
    }
}

/// Structural checks of a header only (no CRC): version, bounds, non-empty.
pub(crate) fn parse_header(b: &[u8], batch_bytes_max: u32) -> Option<BatchHeader> {
    if b.len() < BATCH_HEADER_LEN || b[8] != BATCH_VERSION {
        return None;
    }
    let len = u32_at(b, 0);
    let format = b[9];
    let count = u32_at(b, 12);
    let min_len = if format == FORMAT_RECORDS {
        (BATCH_HEADER_LEN as u64) + u64::from(count) * RECORD_OVERHEAD as u64
    } else {
        BATCH_HEADER_LEN as u64 + 1
    };
    if count == 0 || u64::from(len) < min_len || len > batch_bytes_max {
        return None;
    }
    let base_offset = u64_at(b, 16);
    base_offset.checked_add(u64::from(count))?;
    Some(BatchHeader {
        len,
        format,
        count,
        base_offset,
        timestamp_ms: u64_at(b, 24) as i64,
    })
}

/// Full verification of a complete batch `b` (exactly `len` bytes): header, CRC and record framing.
pub(crate) fn verify_batch(b: &[u8], batch_bytes_max: u32) -> Option<BatchHeader> {
    let h = parse_header(b, batch_bytes_max)?;
    if b.len() != h.len as usize || u32_at(b, 4) != batch_crc(b) {
        return None;
    }
    if h.format != FORMAT_RECORDS {
        return Some(h);
    }
    let mut at = BATCH_HEADER_LEN;
    for _ in 0..h.count {
        if at + RECORD_OVERHEAD > b.len() {
            return None;
        }
        let n = u32_at(b, at) as usize;
        at += RECORD_OVERHEAD;
        if n > b.len() - at {
            return None;
        }
        at += n;
    }
    (at == b.len()).then_some(h)
}

/// Iterates the records of a verified batch payload (the bytes after the header).
pub(crate) struct RecordIter<'a> {
    pub payload: &'a Bytes,
    pub at: usize,
    pub remaining: u32,
    pub next_offset: u64,
}

impl Iterator for RecordIter<'_> {
    type Item = (u64, Bytes);
    fn next(&mut self) -> Option<(u64, Bytes)> {
        if self.remaining == 0 || self.at + RECORD_OVERHEAD > self.payload.len() {
            return None;
        }
        let n = u32_at(self.payload, self.at) as usize;
        let start = self.at + RECORD_OVERHEAD;
        if n > self.payload.len() - start {
            return None;
        }
        self.at = start + n;
        self.remaining -= 1;
        let off = self.next_offset;
        self.next_offset += 1;
        Some((off, self.payload.slice(start..start + n)))
    }
}

/// Offset index entry (`.idx`, 12 bytes): `rel_offset u32 | position u32 | crc u32`.
/// Time index entry (`.tix`, 16 bytes): `max_ts_before i64 | rel_offset u32 | crc u32`, where
/// `max_ts_before` is the largest batch timestamp in the segment before that position.
/// Entries are written in lockstep; the last pair of a sealed segment is the *seal*:
/// position = segment size, rel_offset = end offset - base, max_ts_before = segment max.
pub(crate) const IDX_ENTRY_LEN: usize = 12;
pub(crate) const TIX_ENTRY_LEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub rel: u32,
    pub pos: u32,
    pub max_ts_before: i64,
}

pub(crate) fn encode_idx(e: &IndexEntry) -> [u8; IDX_ENTRY_LEN] {
    let mut b = [0u8; IDX_ENTRY_LEN];
    b[0..4].copy_from_slice(&e.rel.to_le_bytes());
    b[4..8].copy_from_slice(&e.pos.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..8]);
    b[8..12].copy_from_slice(&crc.to_le_bytes());
    b
}

pub(crate) fn encode_tix(e: &IndexEntry) -> [u8; TIX_ENTRY_LEN] {
    let mut b = [0u8; TIX_ENTRY_LEN];
    b[0..8].copy_from_slice(&e.max_ts_before.to_le_bytes());
    b[8..12].copy_from_slice(&e.rel.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..12]);
    b[12..16].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes a lockstep pair; `None` if either CRC fails or they disagree.
pub(crate) fn decode_index_pair(idx: &[u8], tix: &[u8]) -> Option<IndexEntry> {
    if idx.len() != IDX_ENTRY_LEN || tix.len() != TIX_ENTRY_LEN {
        return None;
    }
    if u32_at(idx, 8) != crc32c::crc32c(&idx[0..8])
        || u32_at(tix, 12) != crc32c::crc32c(&tix[0..12])
    {
        return None;
    }
    let rel = u32_at(idx, 0);
    (rel == u32_at(tix, 8)).then(|| IndexEntry {
        rel,
        pos: u32_at(idx, 4),
        max_ts_before: u64_at(tix, 0) as i64,
    })
}

/// Queue state journal entry (`.state`, 20 bytes): `kind u8 | reserved [u8;3] | rel u32 | value i64 | crc u32`.
pub(crate) const JOURNAL_ENTRY_LEN: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JournalOp {
    /// Message `rel` settled.
    Settle,
    /// Messages `rel .. rel + value` settled (written by compaction and for lost ranges).
    SettleRange,
    /// Delivery count of `rel` is now `value`.
    Delivered,
    /// Not-before time of `rel` is `value` (ms).
    NotBefore,
    /// Delivery count of `rel .. rel + n` is now `c`, with `value = c << 32 | n` (a run of
    /// consecutive messages delivered together, as a dispatch hands them out).
    DeliveredRange,
}

/// Packs a `DeliveredRange` value: `count << 32 | n`.
pub(crate) fn pack_delivered_range(n: u32, count: u32) -> i64 {
    ((u64::from(count) << 32) | u64::from(n)) as i64
}

/// Unpacks a `DeliveredRange` value into `(n, count)`.
pub(crate) fn unpack_delivered_range(value: i64) -> (u32, u32) {
    let v = value as u64;
    (v as u32, (v >> 32) as u32)
}

impl JournalOp {
    fn code(self) -> u8 {
        match self {
            JournalOp::Settle => 1,
            JournalOp::SettleRange => 2,
            JournalOp::Delivered => 3,
            JournalOp::NotBefore => 4,
            JournalOp::DeliveredRange => 5,
        }
    }
    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => JournalOp::Settle,
            2 => JournalOp::SettleRange,
            3 => JournalOp::Delivered,
            4 => JournalOp::NotBefore,
            5 => JournalOp::DeliveredRange,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JournalEntry {
    pub op: JournalOp,
    pub rel: u32,
    pub value: i64,
}

pub(crate) fn encode_journal(e: &JournalEntry, out: &mut Vec<u8>) {
    let start = out.len();
    out.push(e.op.code());
    out.extend_from_slice(&[0u8; 3]);
    out.extend_from_slice(&e.rel.to_le_bytes());
    out.extend_from_slice(&e.value.to_le_bytes());
    let crc = crc32c::crc32c(&out[start..start + 16]);
    out.extend_from_slice(&crc.to_le_bytes());
}

pub(crate) fn decode_journal(b: &[u8]) -> Option<JournalEntry> {
    if b.len() != JOURNAL_ENTRY_LEN || u32_at(b, 16) != crc32c::crc32c(&b[0..16]) {
        return None;
    }
    Some(JournalEntry {
        op: JournalOp::from_code(b[0])?,
        rel: u32_at(b, 4),
        value: u64_at(b, 8) as i64,
    })
}

/// Consumer offset journal entry: `crc u32 | name_len u8 | offset u64 | name`, CRC over the rest.
pub(crate) fn encode_offset_entry(name: &str, offset: u64, out: &mut Vec<u8>) {
    assert!(name.len() <= 255, "consumer name length checked by caller");
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]);
    out.push(name.len() as u8);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    let crc = crc32c::crc32c(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes one offset entry at the start of `b`: `(name, offset, entry length)`.
pub(crate) fn decode_offset_entry(b: &[u8]) -> Option<(String, u64, usize)> {
    if b.len() < 13 {
        return None;
    }
    let n = b[4] as usize;
    let total = 13 + n;
    if b.len() < total || u32_at(b, 0) != crc32c::crc32c(&b[4..total]) {
        return None;
    }
    let name = std::str::from_utf8(&b[13..total]).ok()?.to_string();
    Some((name, u64_at(b, 5), total))
}

/// Length of the stream start-offset file.
pub(crate) const START_OFFSET_LEN: usize = 16;
const START_OFFSET_VERSION: u8 = 1;

/// Encodes a stream's log start offset: `crc32c u32 | version u8 = 1 | 3 reserved |
/// offset u64`; the CRC covers bytes 4..16.
pub(crate) fn encode_start_offset(offset: u64) -> [u8; START_OFFSET_LEN] {
    let mut b = [0u8; START_OFFSET_LEN];
    b[4] = START_OFFSET_VERSION;
    b[8..16].copy_from_slice(&offset.to_le_bytes());
    let crc = crc32c::crc32c(&b[4..]);
    b[..4].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes a start-offset file; `None` unless it is exactly one valid entry.
pub(crate) fn decode_start_offset(b: &[u8]) -> Option<u64> {
    if b.len() != START_OFFSET_LEN
        || b[4] != START_OFFSET_VERSION
        || u32_at(b, 0) != crc32c::crc32c(&b[4..])
    {
        return None;
    }
    Some(u64_at(b, 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trip_and_golden_layout() {
        let recs = [Bytes::from_static(b"ab"), Bytes::from_static(b"")];
        let len = batch_len(&recs).unwrap() as u32;
        assert_eq!(len, 32 + 4 + 2 + 4);
        let mut buf = Vec::new();
        encode_batch(&mut buf, len, 7, -3, BatchBody::Records(&recs));
        assert_eq!(&buf[0..4], &42u32.to_le_bytes());
        assert_eq!(buf[8], BATCH_VERSION);
        assert_eq!(&buf[12..16], &2u32.to_le_bytes());
        assert_eq!(&buf[16..24], &7u64.to_le_bytes());
        assert_eq!(&buf[24..32], &(-3i64).to_le_bytes());
        assert_eq!(&buf[32..38], &[2, 0, 0, 0, b'a', b'b']);
        let h = verify_batch(&buf, 1 << 20).unwrap();
        assert_eq!(h.base_offset, 7);
        assert_eq!(h.count, 2);
        assert_eq!(h.timestamp_ms, -3);
        let payload = Bytes::copy_from_slice(&buf[BATCH_HEADER_LEN..]);
        let it = RecordIter {
            payload: &payload,
            at: 0,
            remaining: 2,
            next_offset: 7,
        };
        let v: Vec<_> = it.collect();
        assert_eq!(v, vec![(7, Bytes::from_static(b"ab")), (8, Bytes::new())]);
    }

    #[test]
    fn an_opaque_batch_with_a_known_suffix_crc_encodes_as_without() {
        let payload: Vec<u8> = (0..5000u32).map(|i| (i * 7 + 3) as u8).collect();
        let len = (BATCH_HEADER_LEN + payload.len()) as u32;
        let body = |known| BatchBody::Opaque {
            format: 9,
            count: 3,
            payload: &payload,
            known,
        };
        let mut plain = Vec::new();
        encode_batch(&mut plain, len, 40, 1234, body(None));
        for from in [0, 1, 21, 4999, 5000] {
            let known = SuffixCrc {
                from,
                crc32c: crc32c::crc32c(&payload[from..]),
            };
            let mut with = b"kept".to_vec();
            append_batch(&mut with, len, 40, 1234, body(Some(known)));
            assert_eq!(&with[..4], b"kept", "append_batch keeps what `out` held");
            assert_eq!(&with[4..], &plain[..], "suffix from {from}");
            assert_eq!(
                opaque_header(len, 40, 1234, 9, 3, &payload, Some(known)),
                plain[..BATCH_HEADER_LEN]
            );
        }
        let h = verify_batch(&plain, 1 << 20).unwrap();
        assert_eq!((h.base_offset, h.count, h.format), (40, 3, 9));
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let recs = [Bytes::from_static(b"hello"), Bytes::from_static(b"world!")];
        let len = batch_len(&recs).unwrap() as u32;
        let mut buf = Vec::new();
        encode_batch(&mut buf, len, 100, 5, BatchBody::Records(&recs));
        for bit in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            let n = (u32_at(&b, 0) as usize).min(b.len());
            assert!(verify_batch(&b[..n], 1 << 20).is_none(), "bit {bit}");
        }
        assert!(verify_batch(&buf[..buf.len() - 1], 1 << 20).is_none());
        assert!(verify_batch(&buf, 40).is_none(), "limit enforced");
    }

    #[test]
    fn delivered_range_value_packs_count_and_length() {
        for (n, c) in [(1, 1), (64, 1), (u32::MAX, u32::MAX), (7, 0), (0, 9)] {
            let v = pack_delivered_range(n, c);
            assert_eq!(unpack_delivered_range(v), (n, c));
            let e = JournalEntry {
                op: JournalOp::DeliveredRange,
                rel: 5,
                value: v,
            };
            let mut out = Vec::new();
            encode_journal(&e, &mut out);
            assert_eq!(decode_journal(&out), Some(e));
        }
    }

    #[test]
    fn index_and_journal_round_trip() {
        let e = IndexEntry {
            rel: 5,
            pos: 4096,
            max_ts_before: -9,
        };
        assert_eq!(decode_index_pair(&encode_idx(&e), &encode_tix(&e)), Some(e));
        let mut bad = encode_idx(&e);
        bad[0] ^= 1;
        assert_eq!(decode_index_pair(&bad, &encode_tix(&e)), None);
        let j = JournalEntry {
            op: JournalOp::NotBefore,
            rel: 9,
            value: 1234,
        };
        let mut out = Vec::new();
        encode_journal(&j, &mut out);
        assert_eq!(out.len(), JOURNAL_ENTRY_LEN);
        assert_eq!(decode_journal(&out), Some(j));
        out[10] ^= 4;
        assert_eq!(decode_journal(&out), None);
        let mut o = Vec::new();
        encode_offset_entry("c1", 77, &mut o);
        assert_eq!(
            decode_offset_entry(&o),
            Some(("c1".to_string(), 77, o.len()))
        );
        assert_eq!(decode_offset_entry(&o[..o.len() - 1]), None);
    }

    #[test]
    fn start_offset_round_trip_golden_and_bit_flips() {
        let b = encode_start_offset(0x0102_0304_0506_0708);
        assert_eq!(b[4], 1);
        assert_eq!(&b[8..], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(decode_start_offset(&b), Some(0x0102_0304_0506_0708));
        for i in 0..b.len() * 8 {
            let mut c = b;
            c[i / 8] ^= 1 << (i % 8);
            assert_eq!(decode_start_offset(&c), None, "bit {i}");
        }
        assert_eq!(decode_start_offset(&b[..15]), None);
        assert_eq!(decode_start_offset(&[]), None);
    }
}
