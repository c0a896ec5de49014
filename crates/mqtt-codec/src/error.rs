//! `Error`: why bytes could not be decoded (or a packet could not be encoded), and the MQTT 5
//! reason code that says so.

use crate::reason::ReasonCode;

/// Why a packet could not be decoded or encoded.
///
/// "Need more bytes" is not an error: the decoders return `Ok(None)` for that. Every decode
/// error is fatal for the connection: an MQTT 5 server answers it with a DISCONNECT carrying
/// [`Error::reason_code`] (or a CONNACK with it, for the first packet) and closes the socket;
/// an MQTT 3 server just closes it.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// The packet (fixed header included) is larger than the maximum packet size. Found from
    /// the fixed header alone, before the rest of the packet is waited for. `size` is the
    /// total packet size (at least that size, if the remaining length was still incomplete).
    #[error("packet of {size} bytes exceeds the maximum packet size {max}")]
    PacketTooLarge { size: u64, max: u64 },
    /// The remaining length (or another variable byte integer) has a fifth byte, or is not in
    /// its shortest form.
    #[error("malformed variable byte integer")]
    MalformedVarInt,
    /// Control packet type 0 (reserved), or 15 (AUTH) before MQTT 5.
    #[error("invalid packet type {0}")]
    InvalidPacketType(u8),
    /// The fixed header's flag bits are not the ones the packet type requires (PUBLISH: QoS 3,
    /// or DUP with QoS 0).
    #[error("invalid fixed header flags {flags:#06b} for packet type {packet_type}")]
    InvalidFlags { packet_type: u8, flags: u8 },
    /// A QoS field (PUBLISH, will, subscription options) holds 3.
    #[error("invalid QoS 3")]
    InvalidQos,
    /// A UTF-8 string field is not well-formed UTF-8.
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    /// A UTF-8 string field contains U+0000 (MQTT-1.5.4-2).
    #[error("string contains U+0000")]
    NullCharacter,
    /// A CONNECT whose protocol name is neither "MQTT" nor "MQIsdp".
    #[error("invalid protocol name")]
    InvalidProtocolName,
    /// A CONNECT with a protocol level (or a name/level pair) this codec does not speak.
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolVersion(u8),
    /// A property identifier MQTT 5 does not define.
    #[error("unknown property identifier {0:#04x}")]
    UnknownProperty(u8),
    /// A property that may not appear in this packet (MQTT 5 §2.2.2.2: malformed).
    #[error("property {id:#04x} is not allowed in {packet}")]
    PropertyNotAllowed { id: u8, packet: &'static str },
    /// A property that may appear only once appeared more than once (a protocol error).
    #[error("property {0:#04x} appears more than once")]
    DuplicateProperty(u8),
    /// A property with a value the spec forbids (receive maximum 0, a boolean byte other than
    /// 0/1, subscription identifier 0, ...): a protocol error.
    #[error("property {0:#04x} has an invalid value")]
    InvalidPropertyValue(u8),
    /// A reason code that this packet type may not carry.
    #[error("reason code {code:#04x} is not valid in {packet}")]
    InvalidReasonCode { code: u8, packet: &'static str },
    /// A packet identifier of 0 where a non-zero one is required (MQTT-2.3.1-1).
    #[error("packet identifier 0")]
    ZeroPacketId,
    /// A PUBLISH topic name (or will topic) with a wildcard, or empty where that is not allowed.
    #[error("invalid topic name")]
    TopicNameInvalid,
    /// Any other malformed packet: truncated fields inside a complete packet, trailing bytes,
    /// reserved bits set, a string too long to encode, ...
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// A well-formed packet that breaks a protocol rule (SUBSCRIBE without filters, retain
    /// handling 3, a packet that needs a newer protocol version, ...).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
}

impl Error {
    /// The MQTT 5 reason code for the DISCONNECT (or CONNACK) that answers this error.
    ///
    /// - `PacketTooLarge` → 0x95 Packet too large.
    /// - `UnsupportedProtocolVersion`, `InvalidProtocolName` → 0x84 Unsupported Protocol
    ///   Version (for an MQTT 3 client: CONNACK return code 1, see
    ///   [`crate::ConnectReturnCode::from_reason_code`]).
    /// - `DuplicateProperty`, `InvalidPropertyValue`, `ZeroPacketId`, `Protocol` → 0x82
    ///   Protocol Error.
    /// - `TopicNameInvalid` → 0x90 Topic Name invalid.
    /// - everything else → 0x81 Malformed Packet.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            Error::PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            Error::UnsupportedProtocolVersion(_) | Error::InvalidProtocolName => {
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
            }
            Error::DuplicateProperty(_)
            | Error::InvalidPropertyValue(_)
            | Error::ZeroPacketId
            | Error::Protocol(_) => ReasonCode::PROTOCOL_ERROR,
            Error::TopicNameInvalid => ReasonCode::TOPIC_NAME_INVALID,
            Error::MalformedVarInt
            | Error::InvalidPacketType(_)
            | Error::InvalidFlags { .. }
            | Error::InvalidQos
            | Error::InvalidUtf8
            | Error::NullCharacter
            | Error::UnknownProperty(_)
            | Error::PropertyNotAllowed { .. }
            | Error::InvalidReasonCode { .. }
            | Error::Malformed(_) => ReasonCode::MALFORMED_PACKET,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes() {
        let cases: &[(Error, u8)] = &[
            (Error::PacketTooLarge { size: 10, max: 5 }, 0x95),
            (Error::MalformedVarInt, 0x81),
            (Error::InvalidPacketType(0), 0x81),
            (
                Error::InvalidFlags {
                    packet_type: 3,
                    flags: 6,
                },
                0x81,
            ),
            (Error::InvalidQos, 0x81),
            (Error::InvalidUtf8, 0x81),
            (Error::NullCharacter, 0x81),
            (Error::InvalidProtocolName, 0x84),
            (Error::UnsupportedProtocolVersion(6), 0x84),
            (Error::UnknownProperty(0x7f), 0x81),
            (
                Error::PropertyNotAllowed {
                    id: 0x23,
                    packet: "CONNECT",
                },
                0x81,
            ),
            (Error::DuplicateProperty(0x11), 0x82),
            (Error::InvalidPropertyValue(0x21), 0x82),
            (
                Error::InvalidReasonCode {
                    code: 0x99,
                    packet: "AUTH",
                },
                0x81,
            ),
            (Error::ZeroPacketId, 0x82),
            (Error::TopicNameInvalid, 0x90),
            (Error::Malformed("x"), 0x81),
            (Error::Protocol("x"), 0x82),
        ];
        for (e, code) in cases {
            assert_eq!(e.reason_code(), ReasonCode(*code), "{e}");
        }
    }

    #[test]
    fn messages() {
        assert_eq!(
            Error::PacketTooLarge { size: 10, max: 5 }.to_string(),
            "packet of 10 bytes exceeds the maximum packet size 5"
        );
        assert_eq!(
            Error::InvalidFlags {
                packet_type: 8,
                flags: 0
            }
            .to_string(),
            "invalid fixed header flags 0b0000 for packet type 8"
        );
    }
}
