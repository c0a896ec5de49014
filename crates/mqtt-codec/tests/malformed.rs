//! Malformed and protocol-violating input: each case is rejected with the right error (and
//! so the right MQTT 5 reason code), and fixed-header errors are found before the rest of the
//! packet arrives.

mod common;

use bytes::BytesMut;
use common::*;
use ferrymq_mqtt_codec::*;

const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

fn err(bytes: &str, version: ProtocolVersion) -> Error {
    let bytes = hex(bytes);
    let e = decode_one(&bytes, version).expect_err("must be rejected");
    // decode_slice agrees.
    assert_eq!(decode_slice(&bytes, version, MAX).unwrap_err(), e);
    e
}

#[test]
fn oversized_packet_is_rejected_from_the_fixed_header_alone() {
    // Remaining length 16,383 against a limit of 100: only the 3 header bytes are present.
    let mut buf = BytesMut::from(&hex("30 FF 7F")[..]);
    let e = decode(&mut buf, V311, 100).unwrap_err();
    assert_eq!(
        e,
        Error::PacketTooLarge {
            size: 16_386,
            max: 100
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::PACKET_TOO_LARGE);
    assert_eq!(buf.len(), 3, "nothing consumed");
    // Even before the remaining length is complete, once its bytes so far imply too much.
    let mut buf = BytesMut::from(&hex("30 80 80")[..]);
    assert!(matches!(
        decode(&mut buf, V311, 1000),
        Err(Error::PacketTooLarge { .. })
    ));
    let mut buf = BytesMut::from(&hex("30 80 80")[..]);
    assert_eq!(decode(&mut buf, V311, MAX), Ok(None));
    // The limit is on the whole packet, fixed header included (MQTT 5 Maximum Packet Size).
    let publish = hex("30 08 00 01 61 68 65 6C 6C 6F"); // 10 bytes
    let mut buf = BytesMut::from(&publish[..]);
    assert!(decode(&mut buf, V311, 10).unwrap().is_some());
    let mut buf = BytesMut::from(&publish[..2]);
    assert_eq!(
        decode(&mut buf, V311, 9),
        Err(Error::PacketTooLarge { size: 10, max: 9 })
    );
    assert!(matches!(
        decode_connect(&mut BytesMut::from(&hex("10 FF FF 7F")[..]), 1 << 16),
        Err(Error::PacketTooLarge { .. })
    ));
}

#[test]
fn malformed_remaining_length() {
    // A fifth length byte; found once the fourth byte says "continue".
    assert_eq!(err("30 FF FF FF FF 7F", V311), Error::MalformedVarInt);
    let mut buf = BytesMut::from(&hex("30 80 80 80 80")[..]);
    assert_eq!(decode(&mut buf, V311, MAX), Err(Error::MalformedVarInt));
    // Not the shortest form.
    assert_eq!(err("30 80 00", V311), Error::MalformedVarInt);
    assert_eq!(
        Error::MalformedVarInt.reason_code(),
        ReasonCode::MALFORMED_PACKET
    );
}

#[test]
fn bad_packet_types_and_fixed_header_flags() {
    assert_eq!(err("00 00", V311), Error::InvalidPacketType(0));
    assert_eq!(err("F0 00", V311), Error::InvalidPacketType(15));
    let flags = |s: &str, packet_type, flags| {
        assert_eq!(
            err(s, V5),
            Error::InvalidFlags { packet_type, flags },
            "{s}"
        );
    };
    flags("11 00", 1, 1);
    flags("28 02 00 00", 2, 8);
    flags("41 02 00 01", 4, 1);
    flags("60 02 00 01", 6, 0);
    flags("80 06 00 01 00 01 61 00", 8, 0);
    flags("A0 05 00 01 00 01 61", 10, 0);
    flags("C1 00", 12, 1);
    flags("D2 00", 13, 2);
    flags("E4 00", 14, 4);
    flags("F1 00", 15, 1);
    // PUBLISH: DUP on QoS 0.
    flags("38 03 00 01 61", 3, 8);
    // Errors in the first byte consume nothing and need no more bytes.
    let mut buf = BytesMut::from(&[0x61u8][..]);
    assert!(decode(&mut buf, V311, MAX).is_err());
    assert_eq!(buf.len(), 1);
}

#[test]
fn qos_3() {
    // PUBLISH flags 0110: found from the first byte alone.
    let mut buf = BytesMut::from(&[0x36u8][..]);
    assert_eq!(decode(&mut buf, V311, MAX), Err(Error::InvalidQos));
    assert_eq!(err("36 05 00 01 61 00 01", V311), Error::InvalidQos);
    // Will QoS 3 (flags 0x1E: will, QoS 3, clean).
    assert_eq!(
        err(
            "10 11 00 04 4D 51 54 54 04 1E 00 00 00 00 00 01 77 00 00",
            V311
        ),
        Error::InvalidQos
    );
    // Subscription option QoS 3.
    assert_eq!(err("82 06 00 01 00 01 61 03", V311), Error::InvalidQos);
    assert_eq!(err("82 07 00 01 00 00 01 61 03", V5), Error::InvalidQos);
    assert_eq!(
        Error::InvalidQos.reason_code(),
        ReasonCode::MALFORMED_PACKET
    );
}

#[test]
fn invalid_utf8_and_null_characters() {
    // Topic "\xC3\x28" (a broken two-byte sequence).
    assert_eq!(err("30 04 00 02 C3 28", V311), Error::InvalidUtf8);
    // Overlong encoding of U+0000 ("\xC0\x80") is not UTF-8 either.
    assert_eq!(err("30 04 00 02 C0 80", V311), Error::InvalidUtf8);
    // A surrogate (U+D800).
    assert_eq!(err("30 05 00 03 ED A0 80", V311), Error::InvalidUtf8);
    // U+0000 in a topic name, a client id, a user property, a topic filter.
    assert_eq!(err("30 04 00 02 61 00", V311), Error::NullCharacter);
    assert_eq!(
        err("10 0E 00 04 4D 51 54 54 04 02 00 00 00 02 61 00", V311),
        Error::NullCharacter
    );
    assert_eq!(
        err("30 0C 00 01 61 08 26 00 01 00 00 01 62 00", V5),
        Error::NullCharacter
    );
    assert_eq!(err("A2 05 00 01 00 01 00", V311), Error::NullCharacter);
    assert_eq!(
        Error::InvalidUtf8.reason_code(),
        ReasonCode::MALFORMED_PACKET
    );
    assert_eq!(
        Error::NullCharacter.reason_code(),
        ReasonCode::MALFORMED_PACKET
    );
}

#[test]
fn duplicate_and_misplaced_properties() {
    // PUBLISH with Message Expiry Interval twice.
    let e = err("30 0E 00 01 61 0A 02 00 00 00 01 02 00 00 00 02", V5);
    assert_eq!(e, Error::DuplicateProperty(0x02));
    assert_eq!(e.reason_code(), ReasonCode::PROTOCOL_ERROR);
    // CONNECT with Receive Maximum twice.
    assert_eq!(
        err(
            "10 13 00 04 4D 51 54 54 05 02 00 00 06 21 00 01 21 00 02 00 00",
            V5
        ),
        Error::DuplicateProperty(0x21)
    );
    // Two subscription identifiers in SUBSCRIBE.
    assert_eq!(
        err("82 0B 00 01 04 0B 01 0B 02 00 01 61 00", V5),
        Error::DuplicateProperty(0x0B)
    );
    // Session Expiry Interval in PUBLISH.
    let e = err("30 09 00 01 61 05 11 00 00 00 01", V5);
    assert_eq!(
        e,
        Error::PropertyNotAllowed {
            id: 0x11,
            packet: "PUBLISH"
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
    // Reason String in SUBSCRIBE.
    assert!(matches!(
        err("82 0B 00 01 04 1F 00 01 78 00 01 61 00", V5),
        Error::PropertyNotAllowed { id: 0x1F, .. }
    ));
    // Topic Alias in the will properties.
    assert!(matches!(
        err(
            "10 16 00 04 4D 51 54 54 05 06 00 00 00 00 00 03 23 00 01 00 01 77 00 00",
            V5
        ),
        Error::PropertyNotAllowed {
            id: 0x23,
            packet: "will properties"
        }
    ));
    // An identifier MQTT 5 does not define.
    assert_eq!(
        err("30 06 00 01 61 02 05 00", V5),
        Error::UnknownProperty(0x05)
    );
    // A property block longer than the packet.
    assert!(matches!(
        err("30 05 00 01 61 09 01", V5),
        Error::Malformed(_)
    ));
    // Invalid values: Topic Alias 0, Receive Maximum 0, Payload Format Indicator 2.
    assert_eq!(
        err("30 07 00 01 61 03 23 00 00", V5),
        Error::InvalidPropertyValue(0x23)
    );
    assert_eq!(
        err("20 06 00 00 03 21 00 00", V5),
        Error::InvalidPropertyValue(0x21)
    );
    assert_eq!(
        err("30 06 00 01 61 02 01 02", V5),
        Error::InvalidPropertyValue(0x01)
    );
}

#[test]
fn packet_identifier_zero() {
    for (bytes, version) in [
        ("32 05 00 01 61 00 00", V311),
        ("34 06 00 01 61 00 00 00", V5),
        ("40 02 00 00", V311),
        ("50 02 00 00", V5),
        ("62 02 00 00", V311),
        ("70 02 00 00", V5),
        ("82 06 00 00 00 01 61 00", V311),
        ("90 03 00 00 00", V311),
        ("A2 05 00 00 00 01 61", V311),
        ("B0 02 00 00", V311),
    ] {
        let e = err(bytes, version);
        assert_eq!(e, Error::ZeroPacketId, "{bytes}");
        assert_eq!(e.reason_code(), ReasonCode::PROTOCOL_ERROR);
    }
}

#[test]
fn empty_subscribe_unsubscribe_suback() {
    for (bytes, version) in [
        ("82 02 00 01", V311),
        ("82 03 00 01 00", V5),
        ("A2 02 00 01", V311),
        ("A2 03 00 01 00", V5),
        ("90 02 00 01", V311),
    ] {
        let e = err(bytes, version);
        assert!(matches!(e, Error::Protocol(_)), "{bytes}: {e:?}");
        assert_eq!(e.reason_code(), ReasonCode::PROTOCOL_ERROR);
    }
}

#[test]
fn subscription_options() {
    // Reserved bits 6-7 in MQTT 5, bits 2-7 in MQTT 3.
    assert!(matches!(
        err("82 07 00 01 00 00 01 61 40", V5),
        Error::Malformed(_)
    ));
    assert!(matches!(
        err("82 06 00 01 00 01 61 04", V311),
        Error::Malformed(_)
    ));
    // Retain Handling 3.
    assert!(matches!(
        err("82 07 00 01 00 00 01 61 30", V5),
        Error::Protocol(_)
    ));
    // No Local on a shared subscription ("$share/g/a", options 0x04).
    assert!(matches!(
        err("82 10 00 01 00 00 0A 24 73 68 61 72 65 2F 67 2F 61 04", V5),
        Error::Protocol(_)
    ));
    assert!(decode_one(
        &hex("82 10 00 01 00 00 0A 24 73 68 61 72 65 2F 67 2F 61 00"),
        V5
    )
    .is_ok());
    // A filter without its options byte.
    assert!(matches!(
        err("82 05 00 01 00 01 61", V311),
        Error::Malformed(_)
    ));
}

#[test]
fn trailing_bytes_inside_a_packet() {
    for (bytes, version) in [
        ("C0 01 00", V311),
        ("D0 01 00", V5),
        ("E0 01 00", V311),
        ("40 03 00 01 00", V311),
        ("B0 03 00 01 00", V311),
        ("20 03 00 00 00", V311),
        ("20 04 00 00 00 00", V5),
        ("10 0E 00 04 4D 51 54 54 04 02 00 00 00 00 FF FF", V311),
        ("40 05 00 01 00 00 FF", V5),
        ("E0 03 00 00 FF", V5),
    ] {
        let e = err(bytes, version);
        assert!(matches!(e, Error::Malformed(_)), "{bytes}: {e:?}");
        assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
    }
    // A field that runs past the end of the packet.
    assert!(matches!(err("30 03 00 05 61", V311), Error::Malformed(_)));
    assert!(matches!(
        err("32 04 00 01 61 00", V311),
        Error::Malformed(_)
    ));
}

#[test]
fn connect_rules() {
    // Protocol name and level.
    let e = err("10 0C 00 04 4D 51 54 58 04 02 00 00 00 00", V311);
    assert_eq!(e, Error::InvalidProtocolName);
    let e = err("10 0C 00 04 4D 51 54 54 06 02 00 00 00 00", V311);
    assert_eq!(e, Error::UnsupportedProtocolVersion(6));
    assert_eq!(e.reason_code(), ReasonCode::UNSUPPORTED_PROTOCOL_VERSION);
    assert_eq!(
        err("10 0E 00 06 4D 51 49 73 64 70 04 02 00 00 00 00", V311),
        Error::UnsupportedProtocolVersion(4)
    );
    assert_eq!(
        err("10 0C 00 04 4D 51 54 54 03 02 00 00 00 00", V311),
        Error::UnsupportedProtocolVersion(3)
    );
    // Reserved flag bit 0.
    assert!(matches!(
        err("10 0C 00 04 4D 51 54 54 04 03 00 00 00 00", V311),
        Error::Malformed(_)
    ));
    // Will QoS / will retain without the will flag.
    assert!(matches!(
        err("10 0C 00 04 4D 51 54 54 04 0A 00 00 00 00", V311),
        Error::Malformed(_)
    ));
    assert!(matches!(
        err("10 0C 00 04 4D 51 54 54 04 22 00 00 00 00", V311),
        Error::Malformed(_)
    ));
    // MQTT 3.1.1: password without a user name.
    assert!(matches!(
        err(
            "10 10 00 04 4D 51 54 54 04 42 00 00 00 00 00 02 70 77",
            V311
        ),
        Error::Malformed(_)
    ));
    // ... which MQTT 5 allows.
    assert!(decode_one(
        &hex("10 11 00 04 4D 51 54 54 05 42 00 00 00 00 00 00 02 70 77"),
        V5
    )
    .is_ok());
    // A will topic with a wildcard.
    let e = err(
        "10 11 00 04 4D 51 54 54 04 06 00 00 00 00 00 01 23 00 00",
        V311,
    );
    assert_eq!(e, Error::TopicNameInvalid);
    assert_eq!(e.reason_code(), ReasonCode::TOPIC_NAME_INVALID);
    // A missing user name, announced by the flags.
    assert!(matches!(
        err("10 0C 00 04 4D 51 54 54 04 82 00 00 00 00", V311),
        Error::Malformed(_)
    ));
}

#[test]
fn reason_codes_and_connack_rules() {
    // CONNACK reserved flag bits; v3 return code 6; session present with a failure.
    assert!(matches!(err("20 02 02 00", V311), Error::Malformed(_)));
    assert!(matches!(
        err("20 02 00 06", V311),
        Error::InvalidReasonCode { code: 6, .. }
    ));
    assert!(matches!(err("20 02 01 05", V311), Error::Protocol(_)));
    assert!(matches!(err("20 03 01 87 00", V5), Error::Protocol(_)));
    // Reason codes the packet type may not carry.
    for (bytes, code) in [
        ("20 03 00 04 00", 0x04),
        ("40 03 00 01 92", 0x92),
        ("62 03 00 01 10", 0x10),
        ("90 04 00 01 00 11", 0x11),
        ("90 04 00 01 00 03", 0x03),
        ("B0 04 00 01 00 02", 0x02),
        ("E0 01 05", 0x05),
        ("F0 01 01", 0x01),
    ] {
        let version = V5;
        let e = err(bytes, version);
        assert!(
            matches!(e, Error::InvalidReasonCode { code: c, .. } if c == code),
            "{bytes}: {e:?}"
        );
        assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
    }
    // MQTT 3 SUBACK: only 0, 1, 2 and 0x80.
    assert!(matches!(
        err("90 03 00 01 87", V311),
        Error::InvalidReasonCode { code: 0x87, .. }
    ));
}

#[test]
fn publish_topic_rules() {
    let e = err("30 05 00 03 61 2F 2B", V311);
    assert_eq!(e, Error::TopicNameInvalid);
    assert_eq!(err("30 04 00 01 23 00", V5), Error::TopicNameInvalid);
    // Empty topic: MQTT 3 never; MQTT 5 only with a topic alias.
    assert_eq!(err("30 02 00 00", V311), Error::TopicNameInvalid);
    assert!(matches!(err("30 03 00 00 00", V5), Error::Protocol(_)));
    assert!(decode_one(&hex("30 06 00 00 03 23 00 01"), V5).is_ok());
}

#[test]
fn fixed_header_errors_leave_the_buffer_alone_and_content_errors_consume_the_packet() {
    let mut buf = BytesMut::from(&hex("00 00 C0 00")[..]);
    assert!(decode(&mut buf, V311, MAX).is_err());
    assert_eq!(buf.len(), 4);
    let mut buf = BytesMut::from(&hex("C0 01 00 C0 00")[..]);
    assert!(decode(&mut buf, V311, MAX).is_err());
    assert_eq!(&buf[..], [0xC0, 0x00]);
}
