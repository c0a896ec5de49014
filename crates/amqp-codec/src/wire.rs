//! Primitive wire types: a bounds-checked `Reader` over a complete payload and the matching
//! writers (octets, big-endian integers, packed bits, shortstr, longstr).
//!
//! The reader only ever runs over a payload that is already complete, so running out of bytes
//! here is a syntax error, never "need more bytes". Every length read from the wire is checked
//! against the bytes remaining before anything is sliced or allocated.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::CodecError;

/// The longest shortstr the wire format can carry.
pub const SHORTSTR_LEN_MAX: usize = 255;

/// A cursor over a complete payload. Consecutive `bit` reads share an octet, as the spec packs
/// them; any other read ends the current bit octet.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    /// The octet the current run of bits is read from and the next bit's index in it
    /// (8 = no run in progress: the next bit starts a new octet).
    bits: u8,
    bit_index: u8,
}

type Result<T> = std::result::Result<T, CodecError>;

const TRUNCATED: CodecError = CodecError::Syntax("truncated arguments");

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader {
            buf,
            bits: 0,
            bit_index: 8,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Takes `n` bytes, or fails if fewer remain. Never allocates.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        self.bit_index = 8;
        if n > self.buf.len() {
            return Err(TRUNCATED);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let bytes = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16> {
        self.array().map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        self.array().map(u32::from_be_bytes)
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        self.array().map(u64::from_be_bytes)
    }

    /// Reads the next packed bit.
    pub(crate) fn bit(&mut self) -> Result<bool> {
        if self.bit_index >= 8 {
            self.bits = self.u8()?;
            self.bit_index = 0;
        }
        let bit = self.bits & (1 << self.bit_index) != 0;
        self.bit_index += 1;
        Ok(bit)
    }

    /// A shortstr's raw bytes (length octet, then the bytes).
    pub(crate) fn shortstr_bytes(&mut self) -> Result<&'a [u8]> {
        let len = self.u8()?;
        self.take(usize::from(len))
    }

    /// A shortstr as a `String`; invalid UTF-8 is a syntax error.
    pub(crate) fn shortstr(&mut self) -> Result<String> {
        let raw = self.shortstr_bytes()?;
        match std::str::from_utf8(raw) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(CodecError::Syntax("shortstr is not valid UTF-8")),
        }
    }

    /// A longstr's raw bytes (32-bit length, then the bytes), bounded by the bytes remaining.
    pub(crate) fn longstr_slice(&mut self) -> Result<&'a [u8]> {
        let len = self.u32()?;
        let len = usize::try_from(len).map_err(|_| TRUNCATED)?;
        self.take(len)
    }

    /// A longstr copied into `Bytes` (for opaque longstr fields and values).
    pub(crate) fn longstr(&mut self) -> Result<Bytes> {
        self.longstr_slice().map(Bytes::copy_from_slice)
    }
}

/// Writes method arguments. Consecutive `bit` writes share an octet; any other write ends it.
pub(crate) struct Writer<'a> {
    pub(crate) out: &'a mut BytesMut,
    /// Position of the octet the current run of bits is packed into, and the next bit's index
    /// in it (8 = no run in progress).
    bits_at: usize,
    bit_index: u8,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(out: &'a mut BytesMut) -> Self {
        Writer {
            out,
            bits_at: 0,
            bit_index: 8,
        }
    }

    /// Ends the current run of bits: the next bit starts a new octet.
    pub(crate) fn end_bits(&mut self) {
        self.bit_index = 8;
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.bit_index = 8;
        self.out.put_u8(v);
    }

    pub(crate) fn u16(&mut self, v: u16) {
        self.bit_index = 8;
        self.out.put_u16(v);
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.bit_index = 8;
        self.out.put_u32(v);
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.bit_index = 8;
        self.out.put_u64(v);
    }

    pub(crate) fn bit(&mut self, v: bool) {
        if self.bit_index >= 8 {
            self.bits_at = self.out.len();
            self.out.put_u8(0);
            self.bit_index = 0;
        }
        if v {
            self.out[self.bits_at] |= 1 << self.bit_index;
        }
        self.bit_index += 1;
    }

    pub(crate) fn shortstr(&mut self, s: &str) {
        self.bit_index = 8;
        put_shortstr(self.out, s);
    }

    pub(crate) fn longstr(&mut self, b: &[u8]) {
        self.bit_index = 8;
        put_longstr(self.out, b);
    }
}

/// Cuts `s` to at most 255 bytes, at a char boundary, so it fits a shortstr.
///
/// The wire format cannot carry a longer shortstr. Encoders never fail, so an over-long value
/// (a reply text built from a user-supplied name, say) is truncated rather than written with a
/// wrapped length octet that would desynchronise the peer.
pub fn truncate_shortstr(s: &str) -> &str {
    if s.len() <= SHORTSTR_LEN_MAX {
        return s;
    }
    let mut end = SHORTSTR_LEN_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Writes a shortstr, truncated to 255 bytes at a char boundary (see [`truncate_shortstr`]).
pub(crate) fn put_shortstr(out: &mut BytesMut, s: &str) {
    let s = truncate_shortstr(s);
    // `truncate_shortstr` guarantees the length fits an octet.
    out.put_u8(s.len() as u8);
    out.put_slice(s.as_bytes());
}

/// Writes a longstr. A value longer than `u32::MAX` bytes (not reachable within any frame) is
/// cut to `u32::MAX` bytes so that the length prefix always matches what follows.
pub(crate) fn put_longstr(out: &mut BytesMut, b: &[u8]) {
    let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
    out.put_u32(len);
    out.put_slice(&b[..len as usize]);
}

/// Overwrites the 32-bit big-endian length at `at` with the number of bytes written after it.
pub(crate) fn patch_len_u32(out: &mut BytesMut, at: usize) {
    let len = out.len() - at - 4;
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_pack_into_shared_octets() {
        let mut out = BytesMut::new();
        let mut w = Writer::new(&mut out);
        w.bit(true);
        w.bit(false);
        w.bit(true);
        w.u8(7);
        w.bit(false);
        w.bit(true);
        for i in 0..9 {
            w.bit(i % 2 == 0);
        }
        // 1,0,1 -> 0b101; 7; then 0,1,1,0,1,0,1,0 (low bit first) fill an octet; 1,0,1 start a new one
        assert_eq!(&out[..], &[0b101, 7, 0b0101_0110, 0b0000_0101][..]);
        let mut r = Reader::new(&out);
        assert!(r.bit().unwrap());
        assert!(!r.bit().unwrap());
        assert!(r.bit().unwrap());
        assert_eq!(r.u8().unwrap(), 7);
        assert!(!r.bit().unwrap());
        assert!(r.bit().unwrap());
        for i in 0..9 {
            assert_eq!(r.bit().unwrap(), i % 2 == 0);
        }
        assert!(r.is_empty());
    }

    #[test]
    fn shortstr_truncates_at_char_boundary() {
        let ascii = "a".repeat(300);
        assert_eq!(truncate_shortstr(&ascii).len(), 255);
        // 'é' is 2 bytes: 128 of them are 256 bytes; the cut must not split the last one.
        let accented = "é".repeat(128);
        let cut = truncate_shortstr(&accented);
        assert_eq!(cut.len(), 254);
        assert_eq!(cut.chars().count(), 127);
        let mut out = BytesMut::new();
        put_shortstr(&mut out, &accented);
        assert_eq!(out[0], 254);
        assert_eq!(Reader::new(&out).shortstr().unwrap(), cut);
        assert_eq!(truncate_shortstr("short"), "short");
    }

    #[test]
    fn reads_are_bounded() {
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 1, 2]);
        assert_eq!(r.longstr(), Err(TRUNCATED));
        let mut r = Reader::new(&[5, b'a']);
        assert_eq!(r.shortstr(), Err(TRUNCATED));
        let mut r = Reader::new(&[2, 0xff, 0xfe]);
        assert!(matches!(r.shortstr(), Err(CodecError::Syntax(_))));
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u32(), Err(TRUNCATED));
        assert_eq!(r.u8(), Ok(1), "a failed read consumes nothing");
    }
}
