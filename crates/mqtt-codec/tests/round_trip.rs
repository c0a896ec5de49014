//! Round trips of every packet kind in each protocol version, every truncation of each
//! encoding (always "need more bytes"), streams of packets, zero-copy payloads, and what MQTT 3
//! encoding leaves out.

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use ferrymq_mqtt_codec::*;

#[test]
fn every_packet_round_trips_in_every_version() {
    for version in VERSIONS {
        let samples = samples(version);
        let kinds: std::collections::HashSet<_> =
            samples.iter().map(|p| p.packet_type() as u8).collect();
        let expected_kinds = if version.is_v5() { 15 } else { 14 };
        assert_eq!(kinds.len(), expected_kinds, "{version:?} covers every kind");
        for packet in samples {
            let bytes = encode(&packet, version);
            let decoded = decode_one(&bytes, version)
                .unwrap_or_else(|e| panic!("{version:?} {packet:?}: {e}"));
            assert_eq!(decoded, packet, "{version:?}");
            assert_eq!(
                encode(&decoded, version),
                bytes,
                "{version:?} stable encoding"
            );
            let (sliced, used) = decode_slice(&bytes, version, MAX).unwrap().unwrap();
            assert_eq!(sliced, packet);
            assert_eq!(used, bytes.len());
        }
    }
}

#[test]
fn every_truncation_is_incomplete() {
    for version in VERSIONS {
        for packet in samples(version) {
            let bytes = encode(&packet, version);
            for cut in 0..bytes.len() {
                let mut buf = BytesMut::from(&bytes[..cut]);
                assert_eq!(
                    decode(&mut buf, version, MAX),
                    Ok(None),
                    "{version:?} {packet:?} cut at {cut}"
                );
                assert_eq!(buf.len(), cut, "nothing consumed");
                assert_eq!(decode_slice(&bytes[..cut], version, MAX), Ok(None));
                if let Packet::Connect(_) = packet {
                    let mut buf = BytesMut::from(&bytes[..cut]);
                    assert_eq!(decode_connect(&mut buf, MAX), Ok(None));
                }
            }
        }
    }
}

#[test]
fn a_stream_of_packets_decodes_in_order_whatever_the_chunking() {
    for version in VERSIONS {
        let packets = samples(version);
        let mut stream = BytesMut::new();
        for p in &packets {
            p.encode(version, &mut stream).unwrap();
        }
        for chunk in [1, 3, 7, 64, stream.len()] {
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(p) = decode(&mut buf, version, MAX).unwrap() {
                    got.push(p);
                }
            }
            assert!(buf.is_empty());
            assert_eq!(got, packets, "{version:?} chunk {chunk}");
        }
    }
}

#[test]
fn connect_decodes_before_the_version_is_known() {
    for version in VERSIONS {
        let packet = connect(version);
        let mut buf = encode(&Packet::Connect(Box::new(packet.clone())), version);
        buf.extend_from_slice(&[0xC0, 0x00]); // a PINGREQ right behind it
        let got = decode_connect(&mut buf, MAX).unwrap().unwrap();
        assert_eq!(got, packet);
        assert_eq!(got.protocol_version, version);
        assert_eq!(&buf[..], [0xC0, 0x00]);
    }
    // Anything else first is a protocol error, from its first byte.
    let mut buf = BytesMut::from(&[0x30u8][..]);
    assert!(matches!(
        decode_connect(&mut buf, MAX),
        Err(Error::Protocol(_))
    ));
    // A CONNECT is read by its own version whatever the connection's version says.
    let bytes = encode(
        &Packet::Connect(Box::new(connect(ProtocolVersion::V5))),
        ProtocolVersion::V5,
    );
    assert_eq!(
        decode_one(&bytes, ProtocolVersion::V3_1_1).unwrap(),
        Packet::Connect(Box::new(connect(ProtocolVersion::V5)))
    );
}

#[test]
fn publish_payload_is_zero_copy() {
    let packet = Packet::Publish(Publish {
        topic: "t".into(),
        payload: Bytes::from(vec![7u8; 1000]),
        ..Publish::default()
    });
    for version in VERSIONS {
        let mut buf = encode(&packet, version);
        let start = buf.as_ptr() as usize;
        let end = start + buf.len();
        let Some(Packet::Publish(p)) = decode(&mut buf, version, MAX).unwrap() else {
            panic!("not a publish");
        };
        let at = p.payload.as_ptr() as usize;
        assert!(
            at >= start && at + p.payload.len() <= end,
            "payload was copied"
        );
    }
}

#[test]
fn mqtt3_encoding_leaves_out_what_mqtt3_cannot_carry() {
    let v3 = ProtocolVersion::V3_1_1;
    let puback = Packet::Puback(PubResponse {
        packet_id: 5,
        reason_code: ReasonCode::NO_MATCHING_SUBSCRIBERS,
        properties: Properties {
            reason_string: Some("x".into()),
            ..Properties::default()
        },
    });
    assert_eq!(&encode(&puback, v3)[..], [0x40, 0x02, 0x00, 0x05]);
    assert_eq!(
        decode_one(&[0x40, 0x02, 0x00, 0x05], v3).unwrap(),
        Packet::Puback(PubResponse::new(5))
    );
    let disconnect = Packet::Disconnect(Disconnect {
        reason_code: ReasonCode::SERVER_SHUTTING_DOWN,
        properties: Properties::default(),
    });
    assert_eq!(&encode(&disconnect, v3)[..], [0xE0, 0x00]);
    let publish = Packet::Publish(Publish {
        topic: "t".into(),
        properties: Properties {
            message_expiry_interval: Some(1),
            ..Properties::default()
        },
        ..Publish::default()
    });
    assert_eq!(&encode(&publish, v3)[..], [0x30, 0x03, 0x00, 0x01, b't']);
    // CONNACK codes map to v3 return codes; SUBACK failures become 0x80.
    let connack = Packet::Connack(Connack {
        session_present: false,
        reason_code: ReasonCode::BANNED,
        properties: Properties::default(),
    });
    assert_eq!(&encode(&connack, v3)[..], [0x20, 0x02, 0x00, 0x05]);
    let suback = Packet::Suback(Suback {
        packet_id: 1,
        properties: Properties::default(),
        reason_codes: vec![ReasonCode::QUOTA_EXCEEDED, ReasonCode::GRANTED_QOS_1],
    });
    assert_eq!(
        &encode(&suback, v3)[..],
        [0x90, 0x04, 0x00, 0x01, 0x80, 0x01]
    );
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        subscriptions: vec![Subscription {
            filter: "a".into(),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::DoNotSend,
            },
        }],
    });
    assert_eq!(
        &encode(&subscribe, v3)[..],
        [0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x01]
    );
    // AUTH does not exist before MQTT 5.
    assert!(matches!(
        Packet::Auth(Auth::default()).to_bytes(v3),
        Err(Error::Protocol(_))
    ));
}

#[test]
fn encode_refuses_what_decode_would_refuse_and_leaves_out_untouched() {
    let v5 = ProtocolVersion::V5;
    type Check = fn(&Error) -> bool;
    let bad: Vec<(Packet, Check)> = vec![
        (
            Packet::Publish(Publish {
                qos: QoS::AtLeastOnce,
                topic: "t".into(),
                ..Publish::default()
            }),
            |e| matches!(e, Error::Protocol(_)),
        ),
        (
            Packet::Publish(Publish {
                qos: QoS::AtLeastOnce,
                topic: "t".into(),
                packet_id: Some(0),
                ..Publish::default()
            }),
            |e| *e == Error::ZeroPacketId,
        ),
        (
            Packet::Publish(Publish {
                topic: "t".into(),
                packet_id: Some(1),
                ..Publish::default()
            }),
            |e| matches!(e, Error::Protocol(_)),
        ),
        (
            Packet::Publish(Publish {
                topic: "a/+".into(),
                ..Publish::default()
            }),
            |e| *e == Error::TopicNameInvalid,
        ),
        (
            Packet::Publish(Publish {
                dup: true,
                topic: "a".into(),
                ..Publish::default()
            }),
            |e| matches!(e, Error::Protocol(_)),
        ),
        (
            Packet::Publish(Publish {
                topic: "a\0b".into(),
                ..Publish::default()
            }),
            |e| *e == Error::TopicNameInvalid,
        ),
        (
            Packet::Subscribe(Subscribe {
                packet_id: 1,
                properties: Properties::default(),
                subscriptions: vec![],
            }),
            |e| matches!(e, Error::Protocol(_)),
        ),
        (
            Packet::Puback(PubResponse {
                packet_id: 1,
                reason_code: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
                properties: Properties::default(),
            }),
            |e| matches!(e, Error::InvalidReasonCode { code: 0x92, .. }),
        ),
        (Packet::Pubrel(PubResponse::new(0)), |e| {
            *e == Error::ZeroPacketId
        }),
        (
            Packet::Disconnect(Disconnect {
                reason_code: ReasonCode::SUCCESS,
                properties: Properties {
                    topic_alias: Some(1),
                    ..Properties::default()
                },
            }),
            |e| matches!(e, Error::PropertyNotAllowed { id: 0x23, .. }),
        ),
        (
            Packet::Connack(Connack {
                session_present: true,
                reason_code: ReasonCode::NOT_AUTHORIZED,
                properties: Properties::default(),
            }),
            |e| matches!(e, Error::Protocol(_)),
        ),
        (
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 1,
                properties: Properties::default(),
                filters: vec!["x".repeat(65_536)],
            }),
            |e| matches!(e, Error::Malformed(_)),
        ),
    ];
    for (packet, expected) in bad {
        let mut out = BytesMut::from(&b"keep"[..]);
        let e = packet.encode(v5, &mut out).unwrap_err();
        assert!(expected(&e), "{packet:?}: {e:?}");
        assert_eq!(&out[..], b"keep");
    }
    // MQTT 3 has no password without a user name; MQTT 5 does.
    let c = Connect {
        protocol_version: ProtocolVersion::V3_1_1,
        password: Some(Bytes::from_static(b"pw")),
        ..Connect::default()
    };
    assert!(Packet::Connect(Box::new(c.clone()))
        .to_bytes(ProtocolVersion::V3_1_1)
        .is_err());
    let c5 = Connect {
        protocol_version: ProtocolVersion::V5,
        ..c
    };
    let bytes = encode(&Packet::Connect(Box::new(c5.clone())), ProtocolVersion::V5);
    assert_eq!(
        decode_one(&bytes, ProtocolVersion::V5).unwrap(),
        Packet::Connect(Box::new(c5))
    );
}

#[test]
fn largest_packet_encodes_and_one_more_byte_does_not() {
    // topic "t" (3 bytes) + payload: remaining length exactly 268,435,455.
    let payload = Bytes::from(vec![0u8; VAR_INT_MAX as usize - 3]);
    let packet = Packet::Publish(Publish {
        topic: "t".into(),
        payload,
        ..Publish::default()
    });
    let mut out = BytesMut::new();
    let n = packet.encode(ProtocolVersion::V3_1_1, &mut out).unwrap();
    assert_eq!(n as u32, PROTOCOL_MAX_PACKET_SIZE);
    assert_eq!(&out[..5], [0x30, 0xFF, 0xFF, 0xFF, 0x7F]);
    let header = decode_fixed_header(&out, ProtocolVersion::V3_1_1, MAX)
        .unwrap()
        .unwrap();
    assert_eq!(header.remaining_length, VAR_INT_MAX);
    assert_eq!(header.header_len, 5);
    drop(out);
    let too_big = Packet::Publish(Publish {
        topic: "t".into(),
        payload: Bytes::from(vec![0u8; VAR_INT_MAX as usize - 2]),
        ..Publish::default()
    });
    assert!(matches!(
        too_big.to_bytes(ProtocolVersion::V3_1_1),
        Err(Error::PacketTooLarge { .. })
    ));
}
