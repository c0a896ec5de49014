//! The fixed header and the entry points: [`decode`], [`decode_slice`], [`decode_connect`]
//! and [`Packet::encode`].
//!
//! Fixed header layout: one byte of packet type (high nibble) and flags (low nibble), then
//! the remaining length as a variable byte integer of 1..=4 bytes. Decoding is two steps:
//! first "is a whole packet buffered?" (no → `Ok(None)`, nothing consumed), then "does it
//! parse?". The type, the flags and the total size (against `max_packet_size`) are checked as
//! soon as the fixed header is in, before waiting for (and so before anyone buffers) the rest.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::Error;
use crate::packet::{Connect, Packet, PacketType, ProtocolVersion};
use crate::wire::{put_var_int, read_var_int, var_int_len, VarInt, VAR_INT_MAX};

type Result<T> = std::result::Result<T, Error>;

/// The largest packet the protocol can express: a 5-byte fixed header with the largest
/// remaining length. Pass it as `max_packet_size` for "no limit of our own".
pub const PROTOCOL_MAX_PACKET_SIZE: u32 = 1 + 4 + VAR_INT_MAX;

/// A decoded fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    pub packet_type: PacketType,
    /// The low nibble of the first byte (already checked for the type).
    pub flags: u8,
    /// The size of everything after the fixed header.
    pub remaining_length: u32,
    /// The fixed header's own size: 2..=5.
    pub header_len: usize,
}

impl FixedHeader {
    /// The whole packet's size: fixed header plus remaining length.
    pub fn packet_len(&self) -> usize {
        self.header_len + self.remaining_length as usize
    }
}

/// Checks the first byte of a packet: a type that exists in `version` and the flags that
/// type requires (PUBLISH: QoS not 3, no DUP with QoS 0; PUBREL, SUBSCRIBE, UNSUBSCRIBE:
/// 0b0010; every other type 0).
fn check_first_byte(byte: u8, version: ProtocolVersion) -> Result<PacketType> {
    let value = byte >> 4;
    let flags = byte & 0x0F;
    let packet_type = match PacketType::from_u8(value) {
        Some(PacketType::Auth) if !version.is_v5() => None,
        other => other,
    }
    .ok_or(Error::InvalidPacketType(value))?;
    let ok = match packet_type {
        PacketType::Publish => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                return Err(Error::InvalidQos);
            }
            // DUP must be 0 for QoS 0 (MQTT-3.3.1-2).
            !(qos == 0 && flags & 0b1000 != 0)
        }
        PacketType::Pubrel | PacketType::Subscribe | PacketType::Unsubscribe => flags == 0b0010,
        _ => flags == 0,
    };
    if !ok {
        return Err(Error::InvalidFlags {
            packet_type: value,
            flags,
        });
    }
    Ok(packet_type)
}

/// Decodes the fixed header at the front of `buf`, if it is all there.
///
/// Returns `Ok(None)` when more bytes are needed. The first byte is checked as soon as it
/// arrives; the packet size as soon as the remaining length is known, and even before that
/// when the length bytes seen so far already imply a packet over `max_packet_size`
/// (the total size of the packet, fixed header included, as MQTT 5's Maximum Packet Size).
///
/// # Errors
/// `InvalidPacketType`, `InvalidFlags`, `InvalidQos`, `MalformedVarInt` and `PacketTooLarge`.
pub fn decode_fixed_header(
    buf: &[u8],
    version: ProtocolVersion,
    max_packet_size: u32,
) -> Result<Option<FixedHeader>> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let packet_type = check_first_byte(first, version)?;
    let too_large = |size: u64| Error::PacketTooLarge {
        size,
        max: u64::from(max_packet_size),
    };
    let len_bytes = &buf[1..];
    match read_var_int(len_bytes)? {
        VarInt::Incomplete { min } => {
            // At least one more length byte follows the ones present.
            let header_min = 1 + len_bytes.len() as u64 + 1;
            let size = header_min + min;
            if size > u64::from(max_packet_size) {
                return Err(too_large(size));
            }
            Ok(None)
        }
        VarInt::Complete(remaining_length, n) => {
            let header_len = 1 + n;
            let size = header_len as u64 + u64::from(remaining_length);
            if size > u64::from(max_packet_size) {
                return Err(too_large(size));
            }
            Ok(Some(FixedHeader {
                packet_type,
                flags: first & 0x0F,
                remaining_length,
                header_len,
            }))
        }
    }
}

/// Decodes one packet from the front of `buf`, advancing `buf` past it.
///
/// `version` is the connection's negotiated protocol version; a CONNECT is decoded by its
/// own protocol name and level whatever `version` says (before the CONNECT, use
/// [`decode_connect`]). `max_packet_size` bounds the whole packet, fixed header included;
/// see [`decode_fixed_header`].
///
/// Returns `Ok(None)`, consuming nothing, while `buf` holds less than a whole packet.
/// The PUBLISH payload and binary fields are zero-copy: they share `buf`'s memory.
///
/// # Errors
/// Any [`Error`]; the packet's bytes are consumed on an error in its content (the connection
/// is expected to close). Errors found in the fixed header consume nothing.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: u32,
) -> Result<Option<Packet>> {
    let Some(header) = decode_fixed_header(buf, version, max_packet_size)? else {
        return Ok(None);
    };
    if buf.len() < header.packet_len() {
        return Ok(None);
    }
    let mut packet = buf.split_to(header.packet_len()).freeze();
    packet.advance(header.header_len);
    Packet::decode_body(header.packet_type, header.flags, packet, version).map(Some)
}

/// Like [`decode`] for a borrowed buffer: returns the packet and how many bytes it took.
/// The packet's bytes are copied once (payloads share that copy).
pub fn decode_slice(
    buf: &[u8],
    version: ProtocolVersion,
    max_packet_size: u32,
) -> Result<Option<(Packet, usize)>> {
    let Some(header) = decode_fixed_header(buf, version, max_packet_size)? else {
        return Ok(None);
    };
    let Some(packet) = buf.get(header.header_len..header.packet_len()) else {
        return Ok(None);
    };
    let body = Bytes::copy_from_slice(packet);
    Packet::decode_body(header.packet_type, header.flags, body, version)
        .map(|p| Some((p, header.packet_len())))
}

/// Decodes the first packet of a connection, which must be a CONNECT, before the protocol
/// version is known (it is in the CONNECT: [`Connect::protocol_version`]).
///
/// # Errors
/// `Protocol` if the first byte is not CONNECT's, and whatever [`decode`] reports.
pub fn decode_connect(buf: &mut BytesMut, max_packet_size: u32) -> Result<Option<Connect>> {
    if let Some(&first) = buf.first() {
        if first >> 4 != PacketType::Connect as u8 {
            return Err(Error::Protocol("the first packet must be CONNECT"));
        }
    }
    // The version only matters for types other than CONNECT, excluded above.
    match decode(buf, ProtocolVersion::V5, max_packet_size)? {
        Some(Packet::Connect(c)) => Ok(Some(*c)),
        Some(_) => Err(Error::Protocol("the first packet must be CONNECT")),
        None => Ok(None),
    }
}

impl Packet {
    /// Appends this packet, encoded for `version`, to `out`; returns the bytes written.
    ///
    /// A CONNECT is written for its own [`Connect::protocol_version`]. For MQTT 3 what MQTT 3
    /// cannot carry is left out: properties, PUBACK/PUBREC/PUBREL/PUBCOMP/UNSUBACK/DISCONNECT
    /// reason codes, MQTT 5 subscription options; CONNACK and SUBACK codes are mapped to
    /// their MQTT 3 counterparts. MQTT 5's short forms are used where the spec allows them.
    ///
    /// # Errors
    /// Encoding checks what decoding checks, so whatever encodes also decodes: packet ids,
    /// QoS / packet id consistency, topic names, reason codes and properties allowed for the
    /// packet, strings over 65,535 bytes or with U+0000, AUTH for MQTT 3, a packet over
    /// [`PROTOCOL_MAX_PACKET_SIZE`]. On an error `out` is left as it was.
    pub fn encode(&self, version: ProtocolVersion, out: &mut BytesMut) -> Result<usize> {
        let mut body = BytesMut::new();
        let payload = self.encode_body(version, &mut body)?;
        let payload_len = payload.map_or(0, |p| p.len());
        let remaining = body.len() as u64 + payload_len as u64;
        let remaining = u32::try_from(remaining)
            .ok()
            .filter(|&r| r <= VAR_INT_MAX)
            .ok_or(Error::PacketTooLarge {
                size: remaining + 5,
                max: u64::from(PROTOCOL_MAX_PACKET_SIZE),
            })?;
        let total = 1 + var_int_len(remaining) + remaining as usize;
        out.reserve(total);
        out.put_u8(((self.packet_type() as u8) << 4) | self.flags());
        put_var_int(out, remaining);
        out.put_slice(&body);
        if let Some(p) = payload {
            out.put_slice(p);
        }
        Ok(total)
    }

    /// [`Packet::encode`] into a new buffer.
    pub fn to_bytes(&self, version: ProtocolVersion) -> Result<BytesMut> {
        let mut out = BytesMut::new();
        self.encode(version, &mut out)?;
        Ok(out)
    }
}
