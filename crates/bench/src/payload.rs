//! The 16-byte header every benchmark payload starts with: producer, sequence number, send time.
//!
//! Layout (little-endian): `u64` = producer id in the top 16 bits and the sequence number in
//! the low 48 bits, then `u64` = the send time in nanoseconds since the run's clock base (the
//! *intended* send time in fixed-rate runs). The rest of the payload is filler. 16 bytes is the
//! smallest payload the tool sends, so a 16 B message is all header.

/// Bytes taken by the header; the smallest payload size.
pub const HEADER_BYTES: usize = 16;
/// Largest sequence number that fits (48 bits).
pub const SEQ_MAX: u64 = (1 << 48) - 1;
/// Largest producer id that fits (16 bits).
pub const PRODUCER_MAX: u32 = u16::MAX as u32;

/// What a payload header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub producer: u32,
    pub seq: u64,
    pub send_ns: u64,
}

/// A reusable payload buffer of a fixed size.
#[derive(Debug, Clone)]
pub struct Payload {
    buf: Vec<u8>,
}

impl Payload {
    /// # Panics
    /// If `size` < [`HEADER_BYTES`] (the CLI checks this first).
    pub fn new(size: usize) -> Payload {
        assert!(size >= HEADER_BYTES, "payload size below the header size");
        let mut buf = vec![0u8; size];
        // Filler that does not compress to nothing, same for every message.
        for (i, b) in buf.iter_mut().enumerate().skip(HEADER_BYTES) {
            *b = b'a' + (i % 26) as u8;
        }
        Payload { buf }
    }

    /// Writes the header and returns the whole payload.
    pub fn stamp(&mut self, h: Header) -> &[u8] {
        debug_assert!(h.seq <= SEQ_MAX && h.producer <= PRODUCER_MAX);
        let id = (u64::from(h.producer) << 48) | (h.seq & SEQ_MAX);
        self.buf[0..8].copy_from_slice(&id.to_le_bytes());
        self.buf[8..16].copy_from_slice(&h.send_ns.to_le_bytes());
        &self.buf
    }
}

/// Reads the header of a received payload; `None` if it is too short to be ours.
pub fn decode(bytes: &[u8]) -> Option<Header> {
    if bytes.len() < HEADER_BYTES {
        return None;
    }
    let id = u64::from_le_bytes(bytes[0..8].try_into().ok()?);
    let send_ns = u64::from_le_bytes(bytes[8..16].try_into().ok()?);
    Some(Header {
        producer: (id >> 48) as u32,
        seq: id & SEQ_MAX,
        send_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_at_the_limits() {
        for size in [16, 17, 1024] {
            let mut p = Payload::new(size);
            for h in [
                Header {
                    producer: 0,
                    seq: 0,
                    send_ns: 0,
                },
                Header {
                    producer: PRODUCER_MAX,
                    seq: SEQ_MAX,
                    send_ns: u64::MAX,
                },
                Header {
                    producer: 7,
                    seq: 123_456_789,
                    send_ns: 42,
                },
            ] {
                let bytes = p.stamp(h).to_vec();
                assert_eq!(bytes.len(), size);
                assert_eq!(decode(&bytes), Some(h));
            }
        }
    }

    #[test]
    fn short_payloads_are_not_ours() {
        assert_eq!(decode(&[0u8; 15]), None);
    }
}
