//! Shared helpers for the integration tests: sample packets of every kind for each protocol
//! version, and encode / decode shorthands.
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use ferrymq_mqtt_codec::*;

pub const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

pub const MAX: u32 = PROTOCOL_MAX_PACKET_SIZE;

pub fn encode(packet: &Packet, version: ProtocolVersion) -> BytesMut {
    packet.to_bytes(version).expect("sample packet encodes")
}

/// Decodes exactly one packet that must fill `bytes`.
pub fn decode_one(bytes: &[u8], version: ProtocolVersion) -> Result<Packet, Error> {
    let mut buf = BytesMut::from(bytes);
    let packet = decode(&mut buf, version, MAX)?.expect("complete packet");
    assert!(buf.is_empty(), "bytes left after the packet");
    Ok(packet)
}

fn user_props() -> Vec<(String, String)> {
    vec![
        ("k".into(), "v".into()),
        ("k".into(), "v2".into()),
        ("é".into(), String::new()),
    ]
}

fn reason_props() -> Properties {
    Properties {
        reason_string: Some("because".into()),
        user_properties: user_props(),
        ..Properties::default()
    }
}

pub fn connect(version: ProtocolVersion) -> Connect {
    let v5 = version.is_v5();
    Connect {
        protocol_version: version,
        clean_start: false,
        keep_alive: 30,
        client_id: "client-1".into(),
        will: Some(Will {
            topic: "clients/client-1/status".into(),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: if v5 {
                Properties {
                    payload_format_indicator: Some(1),
                    message_expiry_interval: Some(3600),
                    content_type: Some("text/plain".into()),
                    response_topic: Some("replies".into()),
                    correlation_data: Some(Bytes::from_static(&[1, 2, 3])),
                    will_delay_interval: Some(5),
                    user_properties: user_props(),
                    ..Properties::default()
                }
            } else {
                Properties::default()
            },
        }),
        username: Some("user".into()),
        password: Some(Bytes::from_static(b"p\x00ss")),
        properties: if v5 {
            Properties {
                session_expiry_interval: Some(120),
                receive_maximum: Some(100),
                maximum_packet_size: Some(1 << 20),
                topic_alias_maximum: Some(10),
                request_response_information: Some(true),
                request_problem_information: Some(false),
                authentication_method: Some("SCRAM-SHA-1".into()),
                authentication_data: Some(Bytes::from_static(b"client-first")),
                user_properties: user_props(),
                ..Properties::default()
            }
        } else {
            Properties::default()
        },
    }
}

/// One or more packets of every kind that exists in `version`, with every field the
/// version can carry set somewhere.
pub fn samples(version: ProtocolVersion) -> Vec<Packet> {
    let v5 = version.is_v5();
    let props = |p: Properties| if v5 { p } else { Properties::default() };
    let mut out = vec![
        Packet::Connect(Box::new(connect(version))),
        Packet::Connect(Box::new(Connect {
            protocol_version: version,
            client_id: String::new(),
            ..Connect::default()
        })),
        Packet::Connack(Connack {
            session_present: version != ProtocolVersion::V3_1,
            reason_code: ReasonCode::SUCCESS,
            properties: props(Properties {
                session_expiry_interval: Some(0),
                assigned_client_identifier: Some("auto-1".into()),
                server_keep_alive: Some(20),
                authentication_method: Some("SCRAM-SHA-1".into()),
                authentication_data: Some(Bytes::from_static(b"server-final")),
                response_information: Some("resp/".into()),
                server_reference: Some("other:1883".into()),
                reason_string: Some("welcome".into()),
                receive_maximum: Some(65_535),
                topic_alias_maximum: Some(0),
                maximum_qos: Some(QoS::AtLeastOnce),
                retain_available: Some(false),
                user_properties: user_props(),
                maximum_packet_size: Some(268_435_460),
                wildcard_subscription_available: Some(true),
                subscription_identifier_available: Some(false),
                shared_subscription_available: Some(true),
                ..Properties::default()
            }),
        }),
        Packet::Connack(Connack {
            session_present: false,
            reason_code: ReasonCode::NOT_AUTHORIZED,
            properties: Properties::default(),
        }),
        Packet::Publish(Publish {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"hello"),
            ..Publish::default()
        }),
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "sensors/1/temp".into(),
            packet_id: Some(1),
            properties: props(Properties {
                payload_format_indicator: Some(0),
                message_expiry_interval: Some(60),
                topic_alias: Some(3),
                response_topic: Some("r/1".into()),
                correlation_data: Some(Bytes::from_static(b"corr")),
                user_properties: user_props(),
                subscription_identifiers: vec![1, 268_435_455, 7],
                content_type: Some("application/json".into()),
                ..Properties::default()
            }),
            payload: Bytes::from(vec![0xAB; 300]),
        }),
        Packet::Publish(Publish {
            qos: QoS::ExactlyOnce,
            topic: "x".into(),
            packet_id: Some(65_535),
            payload: Bytes::new(),
            ..Publish::default()
        }),
        Packet::Puback(PubResponse::new(1)),
        Packet::Pubrec(PubResponse::new(2)),
        Packet::Pubrel(PubResponse::new(3)),
        Packet::Pubcomp(PubResponse::new(65_535)),
        Packet::Subscribe(Subscribe {
            packet_id: 10,
            properties: props(Properties {
                subscription_identifiers: vec![42],
                user_properties: user_props(),
                ..Properties::default()
            }),
            subscriptions: vec![
                Subscription {
                    filter: "a/b".into(),
                    options: SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: v5,
                        ..SubscriptionOptions::default()
                    },
                },
                Subscription {
                    filter: "$share/g/c/+/#".into(),
                    options: SubscriptionOptions {
                        qos: QoS::ExactlyOnce,
                        no_local: false,
                        retain_as_published: v5,
                        retain_handling: if v5 {
                            RetainHandling::DoNotSend
                        } else {
                            RetainHandling::SendAtSubscribe
                        },
                    },
                },
                Subscription {
                    filter: "#".into(),
                    options: SubscriptionOptions {
                        retain_handling: if v5 {
                            RetainHandling::SendAtSubscribeIfNew
                        } else {
                            RetainHandling::SendAtSubscribe
                        },
                        ..SubscriptionOptions::default()
                    },
                },
            ],
        }),
        Packet::Suback(Suback {
            packet_id: 10,
            properties: props(reason_props()),
            reason_codes: vec![
                ReasonCode::GRANTED_QOS_1,
                ReasonCode::GRANTED_QOS_2,
                ReasonCode::GRANTED_QOS_0,
                ReasonCode::UNSPECIFIED_ERROR,
            ],
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 11,
            properties: props(Properties {
                user_properties: user_props(),
                ..Properties::default()
            }),
            filters: vec!["a/b".into(), "c/#".into()],
        }),
        Packet::Unsuback(Unsuback {
            packet_id: 11,
            properties: props(reason_props()),
            reason_codes: if v5 {
                vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED]
            } else {
                vec![]
            },
        }),
        Packet::Pingreq,
        Packet::Pingresp,
        Packet::Disconnect(Disconnect::default()),
    ];
    if v5 {
        out.extend([
            Packet::Connack(Connack {
                session_present: false,
                reason_code: ReasonCode::BANNED,
                properties: reason_props(),
            }),
            Packet::Publish(Publish {
                qos: QoS::AtLeastOnce,
                topic: String::new(),
                packet_id: Some(9),
                properties: Properties {
                    topic_alias: Some(3),
                    ..Properties::default()
                },
                payload: Bytes::from_static(b"aliased"),
                ..Publish::default()
            }),
            Packet::Puback(PubResponse {
                packet_id: 1,
                reason_code: ReasonCode::NO_MATCHING_SUBSCRIBERS,
                properties: Properties::default(),
            }),
            Packet::Pubrec(PubResponse {
                packet_id: 2,
                reason_code: ReasonCode::QUOTA_EXCEEDED,
                properties: reason_props(),
            }),
            Packet::Pubrel(PubResponse {
                packet_id: 3,
                reason_code: ReasonCode::SUCCESS,
                properties: reason_props(),
            }),
            Packet::Pubcomp(PubResponse {
                packet_id: 4,
                reason_code: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
                properties: Properties::default(),
            }),
            Packet::Suback(Suback {
                packet_id: 12,
                properties: Properties::default(),
                reason_codes: vec![
                    ReasonCode::TOPIC_FILTER_INVALID,
                    ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
                    ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
                ],
            }),
            Packet::Disconnect(Disconnect {
                reason_code: ReasonCode::DISCONNECT_WITH_WILL_MESSAGE,
                properties: Properties::default(),
            }),
            Packet::Disconnect(Disconnect {
                reason_code: ReasonCode::SERVER_MOVED,
                properties: Properties {
                    session_expiry_interval: Some(0),
                    server_reference: Some("elsewhere:1883".into()),
                    reason_string: Some("moved".into()),
                    user_properties: user_props(),
                    ..Properties::default()
                },
            }),
            Packet::Disconnect(Disconnect {
                reason_code: ReasonCode::NORMAL_DISCONNECTION,
                properties: reason_props(),
            }),
            Packet::Auth(Auth::default()),
            Packet::Auth(Auth {
                reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
                properties: Properties {
                    authentication_method: Some("SCRAM-SHA-1".into()),
                    authentication_data: Some(Bytes::from_static(b"client-final")),
                    reason_string: Some("go on".into()),
                    user_properties: user_props(),
                    ..Properties::default()
                },
            }),
            Packet::Auth(Auth {
                reason_code: ReasonCode::RE_AUTHENTICATE,
                properties: Properties::default(),
            }),
        ]);
    }
    out
}

/// The fuzz target's body (`fuzz/fuzz_targets/mqtt_packet.rs`), kept in step with it so that
/// it runs on stable: decode `data` in a loop under each version; every packet that decodes
/// must re-encode, decode to the same packet and re-encode to the same bytes. The same for
/// `decode_connect`. Returns how many packets decoded.
pub fn fuzz_check(data: &[u8], max: u32) -> usize {
    let mut decoded = 0;
    for version in VERSIONS {
        let mut buf = BytesMut::from(data);
        while let Ok(Some(packet)) = decode(&mut buf, version, max) {
            fuzz_check_one(&packet, version);
            decoded += 1;
        }
        let _ = decode_slice(data, version, max);
    }
    let mut buf = BytesMut::from(data);
    if let Ok(Some(connect)) = decode_connect(&mut buf, max) {
        let version = connect.protocol_version;
        fuzz_check_one(&Packet::Connect(Box::new(connect)), version);
    }
    decoded
}

fn fuzz_check_one(packet: &Packet, version: ProtocolVersion) {
    let first = packet
        .to_bytes(version)
        .expect("a decoded packet re-encodes");
    let mut reread = first.clone();
    let again = decode(&mut reread, version, PROTOCOL_MAX_PACKET_SIZE)
        .expect("a re-encoded packet decodes")
        .expect("a re-encoded packet is complete");
    assert!(reread.is_empty(), "re-encoded packet has trailing bytes");
    assert_eq!(&again, packet);
    assert_eq!(
        again.to_bytes(version).unwrap(),
        first,
        "encoding is not stable"
    );
}
