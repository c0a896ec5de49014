//! Primitive wire types: variable byte integers, and a bounds-checked `Reader` over a complete
//! packet with the matching writers (integers, UTF-8 strings, binary data).
//!
//! The reader only ever runs over a packet that is already complete, so running out of bytes
//! here is a malformed packet, never "need more bytes". Every length read from the wire is
//! checked against the bytes remaining before anything is sliced or allocated.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::Error;

/// The largest value a variable byte integer (and so the remaining length) can hold.
pub const VAR_INT_MAX: u32 = 268_435_455;
/// The longest UTF-8 string or binary data field: its length is a two-byte integer.
pub const STRING_LEN_MAX: usize = 65_535;

type Result<T> = std::result::Result<T, Error>;

const TRUNCATED: Error = Error::Malformed("field runs past the end of the packet");

/// The result of reading a variable byte integer from a possibly incomplete buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VarInt {
    /// The value and how many bytes (1..=4) it took.
    Complete(u32, usize),
    /// The buffer ends inside the integer; the value is at least `min`.
    Incomplete { min: u64 },
}

/// Reads a variable byte integer from the front of `buf` (MQTT 5 §1.5.5). More than four
/// bytes, or a non-minimal encoding (a last byte of 0 after a continuation), is an error.
pub(crate) fn read_var_int(buf: &[u8]) -> Result<VarInt> {
    let mut value: u32 = 0;
    for i in 0..4 {
        let Some(&byte) = buf.get(i) else {
            // Every byte read so far had its continuation bit set: at least one more follows.
            let min = u64::from(value) + (1u64 << (7 * i));
            return Ok(VarInt::Incomplete { min });
        };
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if i > 0 && byte == 0 {
                return Err(Error::MalformedVarInt);
            }
            return Ok(VarInt::Complete(value, i + 1));
        }
    }
    Err(Error::MalformedVarInt)
}

/// How many bytes `value` takes as a variable byte integer (values above [`VAR_INT_MAX`]
/// are never written; callers check).
pub(crate) fn var_int_len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes `value` (at most [`VAR_INT_MAX`]) as a variable byte integer.
pub(crate) fn put_var_int(out: &mut BytesMut, value: u32) {
    debug_assert!(value <= VAR_INT_MAX);
    let mut v = value;
    loop {
        let mut byte = (v & 0x7f) as u8;
        v >>= 7;
        if v > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if v == 0 {
            break;
        }
    }
}

/// Encodes a remaining length the way the spec's table shows it: useful for tests and tools.
pub fn encode_remaining_length(value: u32) -> Option<Vec<u8>> {
    if value > VAR_INT_MAX {
        return None;
    }
    let mut out = BytesMut::with_capacity(4);
    put_var_int(&mut out, value);
    Some(out.to_vec())
}

/// A cursor over a complete packet body. Slices of it (binary data, payloads) share the
/// packet's memory.
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Reader { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Takes `n` bytes, or fails if fewer remain. Never copies.
    pub(crate) fn take(&mut self, n: usize) -> Result<Bytes> {
        if n > self.buf.len() {
            return Err(TRUNCATED);
        }
        Ok(self.buf.split_to(n))
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        if self.buf.is_empty() {
            return Err(TRUNCATED);
        }
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16> {
        if self.buf.len() < 2 {
            return Err(TRUNCATED);
        }
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        if self.buf.len() < 4 {
            return Err(TRUNCATED);
        }
        Ok(self.buf.get_u32())
    }

    pub(crate) fn var_int(&mut self) -> Result<u32> {
        match read_var_int(&self.buf)? {
            VarInt::Complete(value, len) => {
                self.buf.advance(len);
                Ok(value)
            }
            VarInt::Incomplete { .. } => Err(TRUNCATED),
        }
    }

    /// Binary data: a two-byte length, then that many bytes.
    pub(crate) fn binary(&mut self) -> Result<Bytes> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A UTF-8 encoded string: well-formed UTF-8 without U+0000 (MQTT-1.5.4-1, -2).
    pub(crate) fn string(&mut self) -> Result<String> {
        let bytes = self.binary()?;
        check_utf8(&bytes).map(str::to_owned)
    }
}

/// Checks an MQTT UTF-8 string: well-formed and free of U+0000.
pub(crate) fn check_utf8(bytes: &[u8]) -> Result<&str> {
    let s = std::str::from_utf8(bytes).map_err(|_| Error::InvalidUtf8)?;
    if s.contains('\0') {
        return Err(Error::NullCharacter);
    }
    Ok(s)
}

/// Writes binary data (two-byte length, bytes). Longer than [`STRING_LEN_MAX`] is an error.
pub(crate) fn put_binary(out: &mut BytesMut, bytes: &[u8]) -> Result<()> {
    let len = u16::try_from(bytes.len())
        .map_err(|_| Error::Malformed("string or binary field longer than 65535 bytes"))?;
    out.put_u16(len);
    out.put_slice(bytes);
    Ok(())
}

/// Writes a UTF-8 string; one with U+0000 is refused, as the decoder would refuse it.
pub(crate) fn put_string(out: &mut BytesMut, s: &str) -> Result<()> {
    if s.contains('\0') {
        return Err(Error::NullCharacter);
    }
    put_binary(out, s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec's table of remaining length sizes (3.1.1 Table 2.4 / 5.0 §1.5.5).
    const SPEC_TABLE: &[(u32, &[u8])] = &[
        (0, &[0x00]),
        (127, &[0x7F]),
        (128, &[0x80, 0x01]),
        (16_383, &[0xFF, 0x7F]),
        (16_384, &[0x80, 0x80, 0x01]),
        (2_097_151, &[0xFF, 0xFF, 0x7F]),
        (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
        (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
    ];

    #[test]
    fn spec_table_round_trips() {
        for &(value, bytes) in SPEC_TABLE {
            assert_eq!(encode_remaining_length(value).unwrap(), bytes, "{value}");
            assert_eq!(var_int_len(value), bytes.len());
            assert_eq!(
                read_var_int(bytes).unwrap(),
                VarInt::Complete(value, bytes.len())
            );
            for cut in 0..bytes.len() {
                assert!(matches!(
                    read_var_int(&bytes[..cut]).unwrap(),
                    VarInt::Incomplete { .. }
                ));
            }
        }
        assert_eq!(encode_remaining_length(VAR_INT_MAX + 1), None);
    }

    #[test]
    fn incomplete_reports_a_lower_bound() {
        assert_eq!(read_var_int(&[]).unwrap(), VarInt::Incomplete { min: 1 });
        assert_eq!(
            read_var_int(&[0xFF]).unwrap(),
            VarInt::Incomplete { min: 127 + 128 }
        );
        assert_eq!(
            read_var_int(&[0x80, 0x80, 0x80]).unwrap(),
            VarInt::Incomplete { min: 1 << 21 }
        );
    }

    #[test]
    fn fifth_byte_and_overlong_forms_are_malformed() {
        assert_eq!(
            read_var_int(&[0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
            Err(Error::MalformedVarInt)
        );
        assert_eq!(
            read_var_int(&[0x80, 0x80, 0x80, 0x80]),
            Err(Error::MalformedVarInt)
        );
        assert_eq!(read_var_int(&[0x80, 0x00]), Err(Error::MalformedVarInt));
        assert_eq!(
            read_var_int(&[0xFF, 0x80, 0x00]),
            Err(Error::MalformedVarInt)
        );
    }

    #[test]
    fn strings() {
        let mut r = Reader::new(Bytes::from_static(b"\x00\x03abc\x00\x02\xC3\x28"));
        assert_eq!(r.string().unwrap(), "abc");
        assert_eq!(r.string(), Err(Error::InvalidUtf8));
        let mut r = Reader::new(Bytes::from_static(b"\x00\x03a\x00c"));
        assert_eq!(r.string(), Err(Error::NullCharacter));
        let mut r = Reader::new(Bytes::from_static(b"\x00\x05abc"));
        assert_eq!(r.string(), Err(TRUNCATED));
        // U+D800 encoded as UTF-8 (a surrogate) is not well-formed.
        let mut r = Reader::new(Bytes::from_static(b"\x00\x03\xED\xA0\x80"));
        assert_eq!(r.string(), Err(Error::InvalidUtf8));
        let mut out = BytesMut::new();
        assert_eq!(put_string(&mut out, "a\0"), Err(Error::NullCharacter));
        assert!(put_binary(&mut out, &vec![0; 65_536]).is_err());
        put_binary(&mut out, &vec![7; 65_535]).unwrap();
        assert_eq!(out.len(), 65_537);
    }
}
