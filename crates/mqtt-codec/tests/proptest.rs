//! Property tests: arbitrary valid packets of every kind round-trip in every protocol version
//! (and every prefix of their encoding is "need more bytes"); arbitrary and mutated bytes
//! never panic the decoders, and whatever decodes re-encodes to the same packet (the fuzz
//! target's check, run on stable).

mod common;

use bytes::Bytes;
use common::*;
use ferrymq_mqtt_codec::*;
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9/ +#$é€\u{1F600}\u{7F}-]{0,12}"
}

fn topic_name() -> impl Strategy<Value = String> {
    "[a-z0-9/ $é]{1,12}"
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn packet_id() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

/// Every property set at random, then restricted to what `ctx` allows.
fn properties(ctx: PropertyContext) -> impl Strategy<Value = Properties> {
    use proptest::option::of as o;
    let a = (
        o(0..=1u8),
        o(any::<u32>()),
        o(text()),
        o(text()),
        o(bytes(8)),
        proptest::collection::vec(1..=VAR_INT_MAX, 0..3),
        o(any::<u32>()),
        o(text()),
        o(any::<u16>()),
        o(text()),
        o(bytes(8)),
        o(any::<bool>()),
    );
    let b = (
        o(any::<u32>()),
        o(any::<bool>()),
        o(text()),
        o(text()),
        o(text()),
        o(1..=u16::MAX),
        o(any::<u16>()),
        o(1..=u16::MAX),
        o(prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce)]),
        o(any::<bool>()),
        proptest::collection::vec((text(), text()), 0..3),
        o(1..=u32::MAX),
    );
    let c = (o(any::<bool>()), o(any::<bool>()), o(any::<bool>()));
    (a, b, c).prop_map(move |(a, b, c)| {
        let mut p = Properties {
            payload_format_indicator: a.0,
            message_expiry_interval: a.1,
            content_type: a.2,
            response_topic: a.3,
            correlation_data: a.4,
            subscription_identifiers: a.5,
            session_expiry_interval: a.6,
            assigned_client_identifier: a.7,
            server_keep_alive: a.8,
            authentication_method: a.9,
            authentication_data: a.10,
            request_problem_information: a.11,
            will_delay_interval: b.0,
            request_response_information: b.1,
            response_information: b.2,
            server_reference: b.3,
            reason_string: b.4,
            receive_maximum: b.5,
            topic_alias_maximum: b.6,
            topic_alias: b.7,
            maximum_qos: b.8,
            retain_available: b.9,
            user_properties: b.10,
            maximum_packet_size: b.11,
            wildcard_subscription_available: c.0,
            subscription_identifier_available: c.1,
            shared_subscription_available: c.2,
        };
        restrict(&mut p, ctx);
        p
    })
}

fn restrict(p: &mut Properties, ctx: PropertyContext) {
    macro_rules! keep {
        ($($field:ident: $id:expr),*) => {
            $(if !ctx.allows($id) { p.$field = Default::default(); })*
        };
    }
    use property_id as id;
    keep!(
        payload_format_indicator: id::PAYLOAD_FORMAT_INDICATOR,
        message_expiry_interval: id::MESSAGE_EXPIRY_INTERVAL,
        content_type: id::CONTENT_TYPE,
        response_topic: id::RESPONSE_TOPIC,
        correlation_data: id::CORRELATION_DATA,
        subscription_identifiers: id::SUBSCRIPTION_IDENTIFIER,
        session_expiry_interval: id::SESSION_EXPIRY_INTERVAL,
        assigned_client_identifier: id::ASSIGNED_CLIENT_IDENTIFIER,
        server_keep_alive: id::SERVER_KEEP_ALIVE,
        authentication_method: id::AUTHENTICATION_METHOD,
        authentication_data: id::AUTHENTICATION_DATA,
        request_problem_information: id::REQUEST_PROBLEM_INFORMATION,
        will_delay_interval: id::WILL_DELAY_INTERVAL,
        request_response_information: id::REQUEST_RESPONSE_INFORMATION,
        response_information: id::RESPONSE_INFORMATION,
        server_reference: id::SERVER_REFERENCE,
        reason_string: id::REASON_STRING,
        receive_maximum: id::RECEIVE_MAXIMUM,
        topic_alias_maximum: id::TOPIC_ALIAS_MAXIMUM,
        topic_alias: id::TOPIC_ALIAS,
        maximum_qos: id::MAXIMUM_QOS,
        retain_available: id::RETAIN_AVAILABLE,
        user_properties: id::USER_PROPERTY,
        maximum_packet_size: id::MAXIMUM_PACKET_SIZE,
        wildcard_subscription_available: id::WILDCARD_SUBSCRIPTION_AVAILABLE,
        subscription_identifier_available: id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        shared_subscription_available: id::SHARED_SUBSCRIPTION_AVAILABLE
    );
    if ctx != PropertyContext::Publish {
        p.subscription_identifiers.truncate(1);
    }
}

/// Properties for `ctx` in MQTT 5, none before.
fn props(version: ProtocolVersion, ctx: PropertyContext) -> BoxedStrategy<Properties> {
    if version.is_v5() {
        properties(ctx).boxed()
    } else {
        Just(Properties::default()).boxed()
    }
}

/// A reason code `ctx` allows; MQTT 3 packets carry none (Success), except the ones mapped.
fn reason(version: ProtocolVersion, ctx: ReasonCodeContext) -> BoxedStrategy<ReasonCode> {
    let allowed: Vec<u8> = match (version.is_v5(), ctx) {
        (true, _) => ctx.allowed().to_vec(),
        (false, ReasonCodeContext::Connack) => vec![0x00, 0x84, 0x85, 0x86, 0x87, 0x88],
        (false, ReasonCodeContext::Suback) => vec![0x00, 0x01, 0x02, 0x80],
        (false, _) => vec![0x00],
    };
    proptest::sample::select(allowed)
        .prop_map(ReasonCode)
        .boxed()
}

fn will(version: ProtocolVersion) -> impl Strategy<Value = Will> {
    (
        topic_name(),
        bytes(16),
        qos(),
        any::<bool>(),
        props(version, PropertyContext::Will),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        })
}

fn connect(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        any::<u16>(),
        text(),
        proptest::option::of(will(version)),
        proptest::option::of(text()),
        proptest::option::of(bytes(8)),
        props(version, PropertyContext::Connect),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                // MQTT 3 allows a password only with a user name.
                let username = if !version.is_v5() && password.is_some() {
                    Some(username.unwrap_or_default())
                } else {
                    username
                };
                Packet::Connect(Box::new(Connect {
                    protocol_version: version,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }))
            },
        )
}

fn publish(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic_name(),
        packet_id(),
        props(version, PropertyContext::Publish),
        bytes(64),
        any::<bool>(),
    )
        .prop_map(
            move |(dup, qos, retain, topic, id, properties, payload, aliased)| {
                let qos0 = qos == QoS::AtMostOnce;
                // MQTT 5: an empty topic name with a topic alias.
                let topic = if aliased && properties.topic_alias.is_some() {
                    String::new()
                } else {
                    topic
                };
                Packet::Publish(Publish {
                    dup: dup && !qos0,
                    qos,
                    retain,
                    topic,
                    packet_id: (!qos0).then_some(id),
                    properties,
                    payload,
                })
            },
        )
}

fn pub_response(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let kinds = [
        (ReasonCodeContext::Puback, PropertyContext::Puback),
        (ReasonCodeContext::Pubrec, PropertyContext::Pubrec),
        (ReasonCodeContext::Pubrel, PropertyContext::Pubrel),
        (ReasonCodeContext::Pubcomp, PropertyContext::Pubcomp),
    ];
    proptest::sample::select(kinds.to_vec()).prop_flat_map(move |(rc, pc)| {
        (packet_id(), reason(version, rc), props(version, pc)).prop_map(
            move |(packet_id, reason_code, properties)| {
                let r = PubResponse {
                    packet_id,
                    reason_code,
                    properties,
                };
                match rc {
                    ReasonCodeContext::Puback => Packet::Puback(r),
                    ReasonCodeContext::Pubrec => Packet::Pubrec(r),
                    ReasonCodeContext::Pubrel => Packet::Pubrel(r),
                    _ => Packet::Pubcomp(r),
                }
            },
        )
    })
}

fn subscription(version: ProtocolVersion) -> impl Strategy<Value = Subscription> {
    let v5 = version.is_v5();
    (
        text(),
        qos(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![
            Just(RetainHandling::SendAtSubscribe),
            Just(RetainHandling::SendAtSubscribeIfNew),
            Just(RetainHandling::DoNotSend)
        ],
    )
        .prop_map(move |(filter, qos, nl, rap, rh)| Subscription {
            // No Local is a protocol error on a shared subscription.
            options: SubscriptionOptions {
                qos,
                no_local: nl && v5 && !filter.starts_with(SHARED_PREFIX),
                retain_as_published: rap && v5,
                retain_handling: if v5 {
                    rh
                } else {
                    RetainHandling::SendAtSubscribe
                },
            },
            filter,
        })
}

fn packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = version.is_v5();
    let mut kinds = vec![
        connect(version).boxed(),
        (
            any::<bool>(),
            reason(version, ReasonCodeContext::Connack),
            props(version, PropertyContext::Connack),
        )
            .prop_map(move |(sp, reason_code, properties)| {
                Packet::Connack(Connack {
                    session_present: sp
                        && !reason_code.is_error()
                        && version != ProtocolVersion::V3_1,
                    reason_code,
                    properties,
                })
            })
            .boxed(),
        publish(version).boxed(),
        pub_response(version).boxed(),
        (
            packet_id(),
            props(version, PropertyContext::Subscribe),
            proptest::collection::vec(subscription(version), 1..4),
        )
            .prop_map(|(packet_id, properties, subscriptions)| {
                Packet::Subscribe(Subscribe {
                    packet_id,
                    properties,
                    subscriptions,
                })
            })
            .boxed(),
        (
            packet_id(),
            props(version, PropertyContext::Suback),
            proptest::collection::vec(reason(version, ReasonCodeContext::Suback), 1..4),
        )
            .prop_map(|(packet_id, properties, reason_codes)| {
                Packet::Suback(Suback {
                    packet_id,
                    properties,
                    reason_codes,
                })
            })
            .boxed(),
        (
            packet_id(),
            props(version, PropertyContext::Unsubscribe),
            proptest::collection::vec(text(), 1..4),
        )
            .prop_map(|(packet_id, properties, filters)| {
                Packet::Unsubscribe(Unsubscribe {
                    packet_id,
                    properties,
                    filters,
                })
            })
            .boxed(),
        (
            packet_id(),
            props(version, PropertyContext::Unsuback),
            proptest::collection::vec(reason(version, ReasonCodeContext::Unsuback), 0..4),
        )
            .prop_map(move |(packet_id, properties, reason_codes)| {
                Packet::Unsuback(Unsuback {
                    packet_id,
                    properties,
                    reason_codes: if v5 { reason_codes } else { vec![] },
                })
            })
            .boxed(),
        Just(Packet::Pingreq).boxed(),
        Just(Packet::Pingresp).boxed(),
        (
            reason(version, ReasonCodeContext::Disconnect),
            props(version, PropertyContext::Disconnect),
        )
            .prop_map(|(reason_code, properties)| {
                Packet::Disconnect(Disconnect {
                    reason_code,
                    properties,
                })
            })
            .boxed(),
    ];
    if v5 {
        kinds.push(
            (
                reason(version, ReasonCodeContext::Auth),
                props(version, PropertyContext::Auth),
            )
                .prop_map(|(reason_code, properties)| {
                    Packet::Auth(Auth {
                        reason_code,
                        properties,
                    })
                })
                .boxed(),
        );
    }
    proptest::strategy::Union::new(kinds).boxed()
}

fn version() -> impl Strategy<Value = ProtocolVersion> {
    proptest::sample::select(VERSIONS.to_vec())
}

fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(at, value, op) in edits {
        if bytes.is_empty() {
            bytes.push(value);
            continue;
        }
        let i = at % bytes.len();
        match op % 4 {
            0 => bytes[i] = value,
            1 => bytes[i] ^= 1 << (value % 8),
            2 => bytes.insert(i, value),
            _ => {
                bytes.remove(i);
            }
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_packets_round_trip(
        (version, packet) in version().prop_flat_map(|v| (Just(v), packet(v)))
    ) {
        let bytes = packet.to_bytes(version).unwrap();
        let mut buf = bytes.clone();
        let decoded = decode(&mut buf, version, PROTOCOL_MAX_PACKET_SIZE).unwrap();
        prop_assert_eq!(decoded.as_ref(), Some(&packet));
        prop_assert!(buf.is_empty());
        prop_assert_eq!(packet.to_bytes(version).unwrap(), bytes.clone());
        for cut in 0..bytes.len() {
            prop_assert_eq!(decode_slice(&bytes[..cut], version, PROTOCOL_MAX_PACKET_SIZE), Ok(None));
        }
        // The size limit: exactly the packet's size passes, one byte less is refused.
        let len = bytes.len() as u32;
        prop_assert!(decode_slice(&bytes, version, len).unwrap().is_some());
        let too_large = matches!(
            decode_slice(&bytes, version, len - 1),
            Err(Error::PacketTooLarge { .. })
        );
        prop_assert!(too_large);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        data in proptest::collection::vec(any::<u8>(), 0..256),
        max in prop_oneof![Just(PROTOCOL_MAX_PACKET_SIZE), 0..300u32],
    ) {
        fuzz_check(&data, max);
    }

    #[test]
    fn plausible_headers_never_panic(
        first in any::<u8>(),
        body in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        // A correct remaining length in front of random bytes reaches the body parsers.
        let mut data = vec![first];
        data.extend_from_slice(&encode_remaining_length(body.len() as u32).unwrap());
        data.extend_from_slice(&body);
        fuzz_check(&data, PROTOCOL_MAX_PACKET_SIZE);
    }

    #[test]
    fn mutated_packets_never_panic(
        (version, packet) in version().prop_flat_map(|v| (Just(v), packet(v))),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..4),
    ) {
        let bytes = packet.to_bytes(version).unwrap().to_vec();
        fuzz_check(&mutate(bytes, &edits), PROTOCOL_MAX_PACKET_SIZE);
    }

    #[test]
    fn topic_matching_agrees_with_a_reference(
        filter in proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just(""), Just("+"), Just("$x")], 1..4),
        hash in any::<bool>(),
        topic in proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just(""), Just("$x")], 1..5),
    ) {
        let mut filter = filter.join("/");
        if hash {
            filter.push_str(if filter.is_empty() { "#" } else { "/#" });
        }
        let topic = topic.join("/");
        if validate_topic_filter(&filter).is_err() || validate_topic_name(&topic).is_err() {
            return Ok(());
        }
        prop_assert_eq!(topic_matches(&filter, &topic), reference_match(&filter, &topic));
    }
}

/// A slow, obviously-correct matcher: recursive over levels.
fn reference_match(filter: &str, topic: &str) -> bool {
    fn go(f: &[&str], t: &[&str]) -> bool {
        match (f.first(), t.first()) {
            (Some(&"#"), _) => true,
            (Some(&"+"), Some(_)) => go(&f[1..], &t[1..]),
            (Some(a), Some(b)) => a == b && go(&f[1..], &t[1..]),
            (None, None) => true,
            _ => false,
        }
    }
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    go(&f, &t)
}

#[test]
fn fuzz_check_accepts_every_sample() {
    for version in VERSIONS {
        let mut all = Vec::new();
        for p in samples(version) {
            all.extend_from_slice(&encode(&p, version));
        }
        assert!(fuzz_check(&all, PROTOCOL_MAX_PACKET_SIZE) > 0);
    }
}
