//! Golden byte layouts: packets from the MQTT 3.1.1 / 5.0 specifications' non-normative
//! examples and from client captures, decoded to known packets and encoded back byte for byte;
//! the short forms of MQTT 5; the remaining-length table.

mod common;

use bytes::Bytes;
use common::*;
use ferrymq_mqtt_codec::*;

const V31: ProtocolVersion = ProtocolVersion::V3_1;
const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// Decodes `bytes` to `packet` and encodes `packet` to `bytes`.
fn golden(bytes: &[u8], version: ProtocolVersion, packet: Packet) {
    assert_eq!(
        decode_one(bytes, version).unwrap(),
        packet,
        "decode {bytes:02X?}"
    );
    assert_eq!(&encode(&packet, version)[..], bytes, "encode {packet:?}");
}

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

#[test]
fn connect_v311_client_capture() {
    // A plain MQTT 3.1.1 client's CONNECT: clean session, keep alive 60, client id "client1".
    let bytes = hex("10 13 00 04 4D 51 54 54 04 02 00 3C 00 07 63 6C 69 65 6E 74 31");
    let connect = Connect {
        protocol_version: V311,
        clean_start: true,
        keep_alive: 60,
        client_id: "client1".into(),
        ..Connect::default()
    };
    golden(&bytes, V311, Packet::Connect(Box::new(connect.clone())));
    let mut buf = bytes::BytesMut::from(&bytes[..]);
    assert_eq!(decode_connect(&mut buf, MAX).unwrap(), Some(connect));
}

#[test]
fn connect_v31_client_capture() {
    // An MQTT 3.1 client ("MQIsdp", level 3), client id "Mp".
    let bytes = hex("10 10 00 06 4D 51 49 73 64 70 03 02 00 3C 00 02 4D 70");
    golden(
        &bytes,
        V31,
        Packet::Connect(Box::new(Connect {
            protocol_version: V31,
            clean_start: true,
            keep_alive: 60,
            client_id: "Mp".into(),
            ..Connect::default()
        })),
    );
}

#[test]
fn connect_v5_client_capture() {
    // An MQTT 5 client: no flags, keep alive 0, property length 0, client id "abcde".
    let bytes = hex("10 12 00 04 4D 51 54 54 05 00 00 00 00 00 05 61 62 63 64 65");
    golden(
        &bytes,
        V5,
        Packet::Connect(Box::new(Connect {
            protocol_version: V5,
            clean_start: false,
            keep_alive: 0,
            client_id: "abcde".into(),
            ..Connect::default()
        })),
    );
}

fn spec_connect(version: ProtocolVersion) -> Connect {
    Connect {
        protocol_version: version,
        clean_start: true,
        keep_alive: 10,
        client_id: "c".into(),
        will: Some(Will {
            topic: "w".into(),
            payload: Bytes::from_static(b"m"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
        }),
        username: Some("u".into()),
        password: Some(Bytes::from_static(b"p")),
        properties: if version.is_v5() {
            Properties {
                session_expiry_interval: Some(10),
                ..Properties::default()
            }
        } else {
            Properties::default()
        },
    }
}

#[test]
fn connect_spec_variable_header_examples() {
    // 3.1.1 §3.1.2.10 example: "MQTT", level 4, flags 0xCE (user name, password, will QoS 1,
    // will, clean session), keep alive 10; then a small payload.
    let bytes = hex("10 19 00 04 4D 51 54 54 04 CE 00 0A \
         00 01 63 00 01 77 00 01 6D 00 01 75 00 01 70");
    golden(&bytes, V311, Packet::Connect(Box::new(spec_connect(V311))));
    // 5.0 §3.1.2.11 example: the same with level 5 and properties: length 5, Session Expiry
    // Interval (0x11) 10; the will has an empty property block.
    let bytes = hex("10 20 00 04 4D 51 54 54 05 CE 00 0A 05 11 00 00 00 0A \
         00 01 63 00 00 01 77 00 01 6D 00 01 75 00 01 70");
    golden(&bytes, V5, Packet::Connect(Box::new(spec_connect(V5))));
}

#[test]
fn publish_captures_and_spec_examples() {
    // QoS 0 capture: topic "/test/topic", payload "hello".
    let bytes = hex("30 12 00 0B 2F 74 65 73 74 2F 74 6F 70 69 63 68 65 6C 6C 6F");
    let qos0 = Packet::Publish(Publish {
        topic: "/test/topic".into(),
        payload: Bytes::from_static(b"hello"),
        ..Publish::default()
    });
    golden(&bytes, V311, qos0);
    // Spec example variable header: topic "a/b", packet identifier 10 (QoS 1), payload "hi".
    let qos1 = |properties| {
        Packet::Publish(Publish {
            qos: QoS::AtLeastOnce,
            topic: "a/b".into(),
            packet_id: Some(10),
            properties,
            payload: Bytes::from_static(b"hi"),
            ..Publish::default()
        })
    };
    golden(
        &hex("32 09 00 03 61 2F 62 00 0A 68 69"),
        V311,
        qos1(Properties::default()),
    );
    // 5.0 example: the same with a property length of 0.
    golden(
        &hex("32 0A 00 03 61 2F 62 00 0A 00 68 69"),
        V5,
        qos1(Properties::default()),
    );
    // QoS 2, DUP, RETAIN: flags 1101.
    golden(
        &hex("3D 07 00 01 61 FF FF 68 69"),
        V311,
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: "a".into(),
            packet_id: Some(0xFFFF),
            payload: Bytes::from_static(b"hi"),
            ..Publish::default()
        }),
    );
    // MQTT 5 with properties: Payload Format Indicator 1, Message Expiry Interval 10,
    // Topic Alias 2.
    golden(
        &hex("30 0F 00 01 61 0A 01 01 02 00 00 00 0A 23 00 02 78"),
        V5,
        Packet::Publish(Publish {
            topic: "a".into(),
            properties: Properties {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(10),
                topic_alias: Some(2),
                ..Properties::default()
            },
            payload: Bytes::from_static(b"x"),
            ..Publish::default()
        }),
    );
}

#[test]
fn subscribe_suback_unsubscribe_spec_examples() {
    // 3.1.1 §3.8.3 example: packet id 10, "a/b" QoS 1, "c/d" QoS 2.
    golden(
        &hex("82 0E 00 0A 00 03 61 2F 62 01 00 03 63 2F 64 02"),
        V311,
        Packet::Subscribe(Subscribe {
            packet_id: 10,
            properties: Properties::default(),
            subscriptions: vec![
                Subscription {
                    filter: "a/b".into(),
                    options: SubscriptionOptions::qos(QoS::AtLeastOnce),
                },
                Subscription {
                    filter: "c/d".into(),
                    options: SubscriptionOptions::qos(QoS::ExactlyOnce),
                },
            ],
        }),
    );
    // 3.1.1 §3.9.3 example: granted QoS 0, granted QoS 2, failure.
    golden(
        &hex("90 05 00 0A 00 02 80"),
        V311,
        Packet::Suback(Suback {
            packet_id: 10,
            properties: Properties::default(),
            reason_codes: vec![
                ReasonCode::GRANTED_QOS_0,
                ReasonCode::GRANTED_QOS_2,
                ReasonCode::UNSPECIFIED_ERROR,
            ],
        }),
    );
    // 3.1.1 §3.10.3 example: "a/b", "c/d".
    golden(
        &hex("A2 0C 00 0A 00 03 61 2F 62 00 03 63 2F 64"),
        V311,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 10,
            properties: Properties::default(),
            filters: vec!["a/b".into(), "c/d".into()],
        }),
    );
    golden(
        &hex("B0 02 00 0A"),
        V311,
        Packet::Unsuback(Unsuback {
            packet_id: 10,
            properties: Properties::default(),
            reason_codes: vec![],
        }),
    );
    // MQTT 5 options byte: QoS 1, No Local, Retain As Published, Retain Handling 2 = 0x2D;
    // with a Subscription Identifier of 300 (variable byte integer AC 02).
    golden(
        &hex("82 0A 00 01 03 0B AC 02 00 01 61 2D"),
        V5,
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties {
                subscription_identifiers: vec![300],
                ..Properties::default()
            },
            subscriptions: vec![Subscription {
                filter: "a".into(),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
            }],
        }),
    );
    golden(
        &hex("B0 05 00 01 00 00 11"),
        V5,
        Packet::Unsuback(Unsuback {
            packet_id: 1,
            properties: Properties::default(),
            reason_codes: vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED],
        }),
    );
}

#[test]
fn fixed_size_packets() {
    for version in VERSIONS {
        golden(&[0xC0, 0x00], version, Packet::Pingreq);
        golden(&[0xD0, 0x00], version, Packet::Pingresp);
        golden(
            &[0xE0, 0x00],
            version,
            Packet::Disconnect(Disconnect::default()),
        );
        golden(
            &hex("40 02 00 0A"),
            version,
            Packet::Puback(PubResponse::new(10)),
        );
        golden(
            &hex("50 02 00 0A"),
            version,
            Packet::Pubrec(PubResponse::new(10)),
        );
        golden(
            &hex("62 02 00 0A"),
            version,
            Packet::Pubrel(PubResponse::new(10)),
        );
        golden(
            &hex("70 02 00 0A"),
            version,
            Packet::Pubcomp(PubResponse::new(10)),
        );
    }
    golden(
        &hex("20 02 01 00"),
        V311,
        Packet::Connack(Connack {
            session_present: true,
            ..Connack::default()
        }),
    );
    golden(
        &hex("20 02 00 04"),
        V311,
        Packet::Connack(Connack {
            session_present: false,
            reason_code: ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            properties: Properties::default(),
        }),
    );
    // MQTT 3.1: the first byte is reserved; Session Present does not exist.
    assert_eq!(
        decode_one(&hex("20 02 01 00"), V31).unwrap(),
        Packet::Connack(Connack::default())
    );
    let present = Packet::Connack(Connack {
        session_present: true,
        ..Connack::default()
    });
    assert_eq!(&encode(&present, V31)[..], hex("20 02 00 00"));
    golden(
        &hex("20 03 00 00 00"),
        V5,
        Packet::Connack(Connack::default()),
    );
    golden(
        &hex("20 08 00 00 05 22 00 0A 24 01"),
        V5,
        Packet::Connack(Connack {
            properties: Properties {
                topic_alias_maximum: Some(10),
                maximum_qos: Some(QoS::AtLeastOnce),
                ..Properties::default()
            },
            ..Connack::default()
        }),
    );
}

#[test]
fn mqtt5_short_forms() {
    // PUBACK: Success without properties is remaining length 2; a reason code without
    // properties is length 3; the long forms decode to the same packets.
    golden(&hex("40 02 00 01"), V5, Packet::Puback(PubResponse::new(1)));
    assert_eq!(
        decode_one(&hex("40 03 00 01 00"), V5).unwrap(),
        Packet::Puback(PubResponse::new(1))
    );
    assert_eq!(
        decode_one(&hex("40 04 00 01 00 00"), V5).unwrap(),
        Packet::Puback(PubResponse::new(1))
    );
    let no_match = PubResponse {
        packet_id: 1,
        reason_code: ReasonCode::NO_MATCHING_SUBSCRIBERS,
        properties: Properties::default(),
    };
    golden(&hex("40 03 00 01 10"), V5, Packet::Puback(no_match.clone()));
    assert_eq!(
        decode_one(&hex("40 04 00 01 10 00"), V5).unwrap(),
        Packet::Puback(no_match)
    );
    golden(
        &hex("62 08 00 01 92 04 1F 00 01 78"),
        V5,
        Packet::Pubrel(PubResponse {
            packet_id: 1,
            reason_code: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
            properties: Properties {
                reason_string: Some("x".into()),
                ..Properties::default()
            },
        }),
    );
    // DISCONNECT: length 0 is Normal disconnection, length 1 a reason code alone.
    golden(
        &hex("E0 01 04"),
        V5,
        Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::DISCONNECT_WITH_WILL_MESSAGE,
            properties: Properties::default(),
        }),
    );
    assert_eq!(
        decode_one(&hex("E0 02 00 00"), V5).unwrap(),
        Packet::Disconnect(Disconnect::default())
    );
    golden(
        &hex("E0 07 00 05 11 00 00 00 00"),
        V5,
        Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::NORMAL_DISCONNECTION,
            properties: Properties {
                session_expiry_interval: Some(0),
                ..Properties::default()
            },
        }),
    );
    // AUTH: length 0 is Success without properties.
    golden(&hex("F0 00"), V5, Packet::Auth(Auth::default()));
    golden(
        &hex("F0 0A 18 08 15 00 05 53 43 52 41 4D"),
        V5,
        Packet::Auth(Auth {
            reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
            properties: Properties {
                authentication_method: Some("SCRAM".into()),
                ..Properties::default()
            },
        }),
    );
}

#[test]
fn remaining_length_spec_table() {
    // 3.1.1 Table 2.4 / 5.0 §1.5.5: the boundaries of each encoded size.
    let table: &[(u32, &[u8])] = &[
        (0, &[0x00]),
        (127, &[0x7F]),
        (128, &[0x80, 0x01]),
        (16_383, &[0xFF, 0x7F]),
        (16_384, &[0x80, 0x80, 0x01]),
        (2_097_151, &[0xFF, 0xFF, 0x7F]),
        (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
        (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
    ];
    for &(value, bytes) in table {
        assert_eq!(encode_remaining_length(value).unwrap(), bytes);
        let mut header = vec![0x30];
        header.extend_from_slice(bytes);
        let h = decode_fixed_header(&header, V311, MAX).unwrap().unwrap();
        assert_eq!(h.remaining_length, value);
        assert_eq!(h.header_len, 1 + bytes.len());
        assert_eq!(h.packet_len(), 1 + bytes.len() + value as usize);
        assert_eq!(h.packet_type, PacketType::Publish);
        // Encoded packets use the same lengths: a QoS 0 PUBLISH with topic "t" has a
        // remaining length of 3 + payload.
        if (3..=16_384).contains(&value) {
            let p = Packet::Publish(Publish {
                topic: "t".into(),
                payload: Bytes::from(vec![1u8; value as usize - 3]),
                ..Publish::default()
            });
            let out = encode(&p, V311);
            assert_eq!(&out[1..1 + bytes.len()], bytes);
            assert_eq!(decode_one(&out, V311).unwrap(), p);
        }
    }
}
