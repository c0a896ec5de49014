//! Issue #6: MQTT 3.1.1 and 5.0 against the real `ferrymq` binary with a raw-socket client
//! built on the codec: CONNECT/CONNACK, QoS 0/1/2 both directions, retained messages,
//! persistent sessions, takeover, wills, keep-alive, shared subscriptions, topic aliases.

mod common;
#[path = "common/mqtt.rs"]
mod mqtt;

use std::time::Duration;

use bytes::Bytes;
use common::{listening, serve};
use ferrymq_mqtt_codec::*;
use mqtt::{connect_packet, Client};

fn start() -> (tempfile::TempDir, common::Server, std::net::SocketAddr) {
    let tmp = tempfile::tempdir().unwrap();
    let server = serve(tmp.path(), &tmp.path().join("data"), &[]);
    let addr = listening(&server, "MQTT");
    (tmp, server, addr)
}

#[tokio::test]
async fn connack_v311_and_v5_advertise_limits_and_assign_ids() {
    let (_t, _s, addr) = start();
    let (_c, a) =
        Client::connect(addr, connect_packet(ProtocolVersion::V3_1_1, "c311", true)).await;
    assert_eq!(a.reason_code, ReasonCode::SUCCESS);
    assert!(!a.session_present);
    let (_c, a) = Client::connect(addr, connect_packet(ProtocolVersion::V5, "", true)).await;
    assert_eq!(a.reason_code, ReasonCode::SUCCESS);
    let p = &a.properties;
    assert!(p
        .assigned_client_identifier
        .as_deref()
        .is_some_and(|id| !id.is_empty()));
    assert_eq!(p.receive_maximum, Some(1024));
    assert_eq!(p.retain_available, Some(true));
    assert_eq!(p.maximum_packet_size, Some(1 << 20));
    assert_eq!(p.shared_subscription_available, Some(true));
    assert_eq!(p.wildcard_subscription_available, Some(true));
    assert_eq!(p.subscription_identifier_available, Some(true));
    assert!(p.topic_alias_maximum.is_some_and(|m| m > 0));
    // MQTT 3.1 ("MQIsdp"): publish and receive
    let mut c31 = Client::connect(addr, connect_packet(ProtocolVersion::V3_1, "c31", true))
        .await
        .0;
    c31.subscribe(1, "v31/#", QoS::AtLeastOnce).await;
    let mut other = Client::v311(addr, "other31", true).await;
    other
        .publish("v31/x", b"old", QoS::AtLeastOnce, false, 2)
        .await;
    assert_eq!(&c31.expect_publish().await.payload[..], b"old");
    let (_c, a) = Client::connect(addr, connect_packet(ProtocolVersion::V3_1, "", true)).await;
    assert_eq!(a.reason_code, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    // v3.1.1: an empty id with clean_session=0 is refused (return code 2)
    let (_c, a) = Client::connect(addr, connect_packet(ProtocolVersion::V3_1_1, "", false)).await;
    assert_eq!(a.reason_code, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    // bad password
    let mut c = connect_packet(ProtocolVersion::V5, "bad", true);
    c.username = Some("guest".into());
    c.password = Some(Bytes::from_static(b"wrong"));
    let (_c, a) = Client::connect(addr, c).await;
    assert_eq!(a.reason_code, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    let mut c = connect_packet(ProtocolVersion::V3_1_1, "bad3", true);
    c.username = Some("guest".into());
    c.password = Some(Bytes::from_static(b"wrong"));
    let (_c, a) = Client::connect(addr, c).await;
    assert_eq!(a.reason_code, ReasonCode::BAD_USER_NAME_OR_PASSWORD); // v3 code 4
                                                                      // good password
    let mut c = connect_packet(ProtocolVersion::V3_1_1, "good", true);
    c.username = Some("guest".into());
    c.password = Some(Bytes::from_static(b"guest"));
    let (_c, a) = Client::connect(addr, c).await;
    assert_eq!(a.reason_code, ReasonCode::SUCCESS);
    // AUTH method: refused cleanly
    let mut c = connect_packet(ProtocolVersion::V5, "auth", true);
    c.properties.authentication_method = Some("SCRAM-SHA-1".into());
    let (_c, a) = Client::connect(addr, c).await;
    assert_eq!(a.reason_code, ReasonCode::BAD_AUTHENTICATION_METHOD);
}

#[tokio::test]
async fn qos_0_1_2_both_directions() {
    let (_t, _s, addr) = start();
    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let mut sub = Client::connect(addr, connect_packet(v, "sub", true))
            .await
            .0;
        let mut publ = Client::connect(addr, connect_packet(v, "pub", true))
            .await
            .0;
        let s = sub.subscribe(1, "a/+/c", QoS::ExactlyOnce).await;
        assert_eq!(s.reason_codes, vec![ReasonCode::GRANTED_QOS_2]);
        publ.publish("a/b/c", b"q0", QoS::AtMostOnce, false, 0)
            .await;
        publ.publish("a/b/c", b"q1", QoS::AtLeastOnce, false, 1)
            .await;
        publ.publish("a/b/c", b"q2", QoS::ExactlyOnce, false, 2)
            .await;
        publ.publish("a/b/x", b"other", QoS::AtLeastOnce, false, 3)
            .await;
        for (body, qos) in [
            (&b"q0"[..], QoS::AtMostOnce),
            (b"q1", QoS::AtLeastOnce),
            (b"q2", QoS::ExactlyOnce),
        ] {
            let p = sub.expect_publish().await;
            assert_eq!(p.topic, "a/b/c");
            assert_eq!(&p.payload[..], body);
            assert_eq!(p.qos, qos);
            assert!(!p.retain && !p.dup);
        }
        // granted QoS caps the delivery
        let mut low = Client::connect(addr, connect_packet(v, "low", true))
            .await
            .0;
        low.subscribe(1, "z", QoS::AtLeastOnce).await;
        publ.publish("z", b"x", QoS::ExactlyOnce, false, 4).await;
        assert_eq!(low.expect_publish().await.qos, QoS::AtLeastOnce);
        assert!(
            sub.quiet(Duration::from_millis(200)).await,
            "a/b/x is not a/+/c"
        );
        sub.disconnect().await;
        publ.disconnect().await;
        low.disconnect().await;
    }
}

#[tokio::test]
async fn qos2_duplicates_are_suppressed_until_pubrel() {
    let (_t, _s, addr) = start();
    let mut sub = Client::v5(addr, "sub", true).await;
    sub.subscribe(1, "t", QoS::AtLeastOnce).await;
    let mut c = connect_packet(ProtocolVersion::V5, "pub", false);
    c.properties.session_expiry_interval = Some(60);
    let mut publ = Client::connect(addr, c.clone()).await.0;
    let p = Publish {
        qos: QoS::ExactlyOnce,
        topic: "t".into(),
        packet_id: Some(9),
        payload: Bytes::from_static(b"once"),
        ..Publish::default()
    };
    publ.send(Packet::Publish(p.clone())).await;
    assert!(matches!(publ.recv().await, Packet::Pubrec(r) if r.packet_id == 9));
    // resent with DUP before PUBREL, also after a reconnect of the persistent session
    publ.send(Packet::Publish(Publish {
        dup: true,
        ..p.clone()
    }))
    .await;
    assert!(matches!(publ.recv().await, Packet::Pubrec(r) if r.packet_id == 9));
    drop(publ);
    let (mut publ, a) = Client::connect(addr, c).await;
    assert!(a.session_present);
    publ.send(Packet::Publish(Publish {
        dup: true,
        ..p.clone()
    }))
    .await;
    assert!(matches!(publ.recv().await, Packet::Pubrec(r) if r.packet_id == 9));
    publ.send(Packet::Pubrel(PubResponse::new(9))).await;
    assert!(matches!(publ.recv().await, Packet::Pubcomp(r) if r.packet_id == 9));
    assert_eq!(&sub.expect_publish().await.payload[..], b"once");
    assert!(
        sub.quiet(Duration::from_millis(300)).await,
        "delivered exactly once"
    );
}

#[tokio::test]
async fn retained_set_clear_and_deliver() {
    let (_t, _s, addr) = start();
    let mut publ = Client::v311(addr, "pub", true).await;
    publ.publish("r/1", b"one", QoS::AtLeastOnce, true, 1).await;
    publ.publish("r/2", b"two", QoS::AtMostOnce, true, 0).await;
    publ.publish("r/3", b"three", QoS::AtLeastOnce, true, 2)
        .await;
    publ.publish("r/3", b"", QoS::AtLeastOnce, true, 3).await; // clears
    publ.publish("$SYS/r", b"sys", QoS::AtLeastOnce, true, 4)
        .await;
    publ.ping().await;
    let mut sub = Client::v311(addr, "sub", true).await;
    sub.subscribe(1, "r/#", QoS::AtLeastOnce).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let p = sub.expect_publish().await;
        assert!(p.retain, "retained flag set on subscribe");
        got.push((p.topic.clone(), p.payload.clone(), p.qos));
    }
    got.sort();
    assert_eq!(
        got[0],
        ("r/1".into(), Bytes::from_static(b"one"), QoS::AtLeastOnce)
    );
    assert_eq!(
        got[1],
        ("r/2".into(), Bytes::from_static(b"two"), QoS::AtMostOnce)
    );
    assert!(sub.quiet(Duration::from_millis(200)).await);
    // '#' does not match $ topics
    let mut all = Client::v311(addr, "all", true).await;
    all.subscribe(1, "#", QoS::AtMostOnce).await;
    let mut topics = vec![
        all.expect_publish().await.topic,
        all.expect_publish().await.topic,
    ];
    topics.sort();
    assert_eq!(topics, vec!["r/1", "r/2"]);
    assert!(all.quiet(Duration::from_millis(200)).await);
    // a live publish with retain is forwarded with retain=0 to existing subscribers
    publ.publish("r/1", b"new", QoS::AtLeastOnce, true, 5).await;
    let p = sub.expect_publish().await;
    assert_eq!(&p.payload[..], b"new");
    assert!(!p.retain);
    // v5 Retain Handling 2: nothing at subscribe
    let mut v5 = Client::v5(addr, "v5", true).await;
    let mut o = SubscriptionOptions::qos(QoS::AtLeastOnce);
    o.retain_handling = RetainHandling::DoNotSend;
    v5.subscribe_opts(1, "r/#", o, Properties::default()).await;
    assert!(v5.quiet(Duration::from_millis(200)).await);
}

#[tokio::test]
async fn persistent_session_keeps_subscriptions_and_queued_messages() {
    let (_t, _s, addr) = start();
    let mut sub = Client::v311(addr, "keeper", false).await;
    sub.subscribe(1, "p/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publ = Client::v311(addr, "pub", true).await;
    for i in 0..3u8 {
        publ.publish(
            "p/x",
            &[b'0' + i],
            QoS::AtLeastOnce,
            false,
            u16::from(i) + 1,
        )
        .await;
    }
    publ.publish("p/x", b"q0", QoS::AtMostOnce, false, 0).await;
    publ.ping().await;
    let (mut sub, a) = Client::connect(
        addr,
        connect_packet(ProtocolVersion::V3_1_1, "keeper", false),
    )
    .await;
    assert!(a.session_present);
    let mut got = Vec::new();
    for _ in 0..3 {
        let p = sub.expect_publish().await;
        assert_eq!(p.qos, QoS::AtLeastOnce);
        got.push(p.payload[0]);
    }
    assert_eq!(got, b"012");
    // a QoS 0 message for an offline session is not delivered (Mosquitto's default)
    assert!(sub.quiet(Duration::from_millis(200)).await);
    // but QoS 0 messages flow while connected
    publ.publish("p/z", b"live q0", QoS::AtMostOnce, false, 0)
        .await;
    assert_eq!(&sub.expect_publish().await.payload[..], b"live q0");
    // unacked deliveries come back with DUP after a reconnect
    publ.publish("p/y", b"unacked", QoS::AtLeastOnce, false, 9)
        .await;
    let p = match sub.recv().await {
        Packet::Publish(p) => p,
        p => panic!("{p:?}"),
    };
    assert_eq!(&p.payload[..], b"unacked");
    drop(sub);
    let (mut sub, a) = Client::connect(
        addr,
        connect_packet(ProtocolVersion::V3_1_1, "keeper", false),
    )
    .await;
    assert!(a.session_present);
    let p = sub.expect_publish().await;
    assert_eq!(&p.payload[..], b"unacked");
    assert!(p.dup, "redelivery carries DUP");
    // clean session ends it
    sub.disconnect().await;
    let (_c, a) = Client::connect(
        addr,
        connect_packet(ProtocolVersion::V3_1_1, "keeper", true),
    )
    .await;
    assert!(!a.session_present);
}

#[tokio::test]
async fn session_takeover_disconnects_the_first_connection() {
    let (_t, _s, addr) = start();
    let mut first = Client::v5(addr, "same", true).await;
    let _second = Client::v5(addr, "same", true).await;
    match first.next().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::SESSION_TAKEN_OVER),
        p => panic!("expected DISCONNECT 0x8E, got {p:?}"),
    }
    assert!(first.next().await.is_none(), "then closed");
}

#[tokio::test]
async fn will_is_published_on_abnormal_close_only() {
    let (_t, _s, addr) = start();
    let mut watcher = Client::v311(addr, "watcher", true).await;
    watcher.subscribe(1, "wills/#", QoS::AtLeastOnce).await;
    let will = |topic: &str| Will {
        topic: topic.into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::default(),
    };
    // clean DISCONNECT: no will
    let mut c = connect_packet(ProtocolVersion::V3_1_1, "polite", true);
    c.will = Some(will("wills/polite"));
    let (cl, _) = Client::connect(addr, c).await;
    cl.disconnect().await;
    // socket dropped: will
    let mut c = connect_packet(ProtocolVersion::V5, "rude", true);
    c.will = Some(will("wills/rude"));
    let (cl, _) = Client::connect(addr, c).await;
    drop(cl);
    let p = watcher.expect_publish().await;
    assert_eq!(p.topic, "wills/rude");
    assert_eq!(&p.payload[..], b"gone");
    assert!(watcher.quiet(Duration::from_millis(200)).await);
}

#[tokio::test]
async fn keep_alive_expiry_closes_the_connection() {
    let (_t, _s, addr) = start();
    let mut c = connect_packet(ProtocolVersion::V5, "sleepy", true);
    c.keep_alive = 1;
    let (mut cl, _) = Client::connect(addr, c).await;
    let started = std::time::Instant::now();
    match cl.next().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::KEEP_ALIVE_TIMEOUT),
        p => panic!("expected DISCONNECT 0x8D, got {p:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(1400));
    // pings keep a connection alive
    let mut c = connect_packet(ProtocolVersion::V3_1_1, "awake", true);
    c.keep_alive = 1;
    let (mut cl, _) = Client::connect(addr, c).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        cl.ping().await;
    }
}

#[tokio::test]
async fn shared_subscriptions_balance_across_members() {
    let (_t, _s, addr) = start();
    let mut a = Client::v5(addr, "a", true).await;
    let mut b = Client::v5(addr, "b", true).await;
    a.subscribe(1, "$share/g/jobs/+", QoS::AtLeastOnce).await;
    b.subscribe(1, "$share/g/jobs/+", QoS::AtLeastOnce).await;
    let mut publ = Client::v5(addr, "p", true).await;
    for i in 0..20u16 {
        publ.publish("jobs/x", &i.to_be_bytes(), QoS::AtLeastOnce, false, i + 1)
            .await;
    }
    let (mut na, mut nb) = (0, 0);
    while na + nb < 20 {
        tokio::select! {
            p = a.expect_publish() => { assert_eq!(p.topic, "jobs/x"); na += 1; }
            p = b.expect_publish() => { assert_eq!(p.topic, "jobs/x"); nb += 1; }
        }
    }
    assert!(na > 0 && nb > 0, "both members got work: {na} / {nb}");
    assert!(a.quiet(Duration::from_millis(200)).await && b.quiet(Duration::from_millis(10)).await);
}

#[tokio::test]
async fn v5_properties_aliases_and_no_local() {
    let (_t, _s, addr) = start();
    let mut c = connect_packet(ProtocolVersion::V5, "me", true);
    c.properties.topic_alias_maximum = Some(5);
    let (mut me, _) = Client::connect(addr, c).await;
    let mut o = SubscriptionOptions::qos(QoS::AtLeastOnce);
    o.no_local = true;
    let props = Properties {
        subscription_identifiers: vec![42],
        ..Properties::default()
    };
    me.subscribe_opts(1, "n/#", o, props).await;
    let mut other = Client::v5(addr, "other", true).await;
    other.subscribe(1, "n/#", QoS::AtLeastOnce).await;
    let props = Properties {
        user_properties: vec![("k".into(), "v".into())],
        content_type: Some("text/plain".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01")),
        response_topic: Some("n/reply".into()),
        payload_format_indicator: Some(1),
        topic_alias: Some(1),
        ..Properties::default()
    };
    me.publish_props("n/a", b"from me", QoS::AtLeastOnce, false, 1, props)
        .await;
    // alias only
    let alias = Properties {
        topic_alias: Some(1),
        ..Properties::default()
    };
    me.publish_props("", b"again", QoS::AtLeastOnce, false, 2, alias)
        .await;
    let p = other.expect_publish().await;
    assert_eq!(p.topic, "n/a");
    assert_eq!(
        p.properties.user_properties,
        vec![("k".to_string(), "v".to_string())]
    );
    assert_eq!(p.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        p.properties.correlation_data.as_deref(),
        Some(&b"\x00\x01"[..])
    );
    assert_eq!(p.properties.response_topic.as_deref(), Some("n/reply"));
    assert_eq!(p.properties.payload_format_indicator, Some(1));
    assert_eq!(&other.expect_publish().await.payload[..], b"again");
    assert!(me.quiet(Duration::from_millis(200)).await, "No Local");
    let mut third = Client::v5(addr, "third", true).await;
    third.publish("n/b", b"x", QoS::AtLeastOnce, false, 1).await;
    third.publish("n/b", b"y", QoS::AtLeastOnce, false, 2).await;
    let p1 = me.expect_publish().await;
    assert_eq!(p1.properties.subscription_identifiers, vec![42]);
    assert_eq!(p1.topic, "n/b");
    assert_eq!(p1.properties.topic_alias, Some(1));
    let p2 = me.expect_publish().await;
    assert_eq!(p2.topic, "", "second delivery uses the alias alone");
    assert_eq!(p2.properties.topic_alias, Some(1));
    // invalid UTF-8 with payload format 1: PUBACK 0x99
    me.send(Packet::Publish(Publish {
        qos: QoS::AtLeastOnce,
        topic: "n/bad".into(),
        packet_id: Some(7),
        properties: Properties {
            payload_format_indicator: Some(1),
            ..Properties::default()
        },
        payload: Bytes::from_static(b"\xff\xfe"),
        ..Publish::default()
    }))
    .await;
    match me.recv().await {
        Packet::Puback(a) => assert_eq!(a.reason_code, ReasonCode::PAYLOAD_FORMAT_INVALID),
        p => panic!("{p:?}"),
    }
    // an alias above the maximum is a protocol violation: DISCONNECT 0x94
    let bad = Properties {
        topic_alias: Some(1000),
        ..Properties::default()
    };
    me.send(Packet::Publish(Publish {
        topic: "n/z".into(),
        properties: bad,
        ..Publish::default()
    }))
    .await;
    match me.recv().await {
        Packet::Disconnect(d) => assert_eq!(d.reason_code, ReasonCode::TOPIC_ALIAS_INVALID),
        p => panic!("{p:?}"),
    }
}

#[tokio::test]
async fn malformed_input_is_refused_and_the_server_keeps_serving() {
    let (_t, _s, addr) = start();
    // v5: a PUBLISH with QoS 3 → DISCONNECT 0x81 then close
    let mut c = Client::v5(addr, "bad", true).await;
    c.send_raw(&[0x36, 0x03, 0x00, 0x01, b't']).await;
    match c.next().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::MALFORMED_PACKET),
        p => panic!("expected DISCONNECT 0x81, got {p:?}"),
    }
    assert!(c.next().await.is_none());
    // v3: closed without an answer
    let mut c = Client::v311(addr, "bad3", true).await;
    c.send_raw(&[0x36, 0x03, 0x00, 0x01, b't']).await;
    assert!(c.next().await.is_none());
    // first packet not CONNECT: closed
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raw.write_all(&[0xC0, 0x00]).await.unwrap();
    let mut b = [0u8; 8];
    assert_eq!(raw.read(&mut b).await.unwrap(), 0);
    // an oversized remaining length is refused from the fixed header alone
    let mut c = Client::v5(addr, "big", true).await;
    let mut header = vec![0x30];
    header.extend(encode_remaining_length(200 << 20).unwrap());
    c.send_raw(&header).await;
    match c.next().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::PACKET_TOO_LARGE),
        p => panic!("expected DISCONNECT 0x95, got {p:?}"),
    }
    // unsupported protocol level: CONNACK 1
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    raw.write_all(&[
        0x10, 0x0A, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x09, 0x02, 0x00, 0x00,
    ])
    .await
    .unwrap();
    let mut b = [0u8; 4];
    raw.read_exact(&mut b).await.unwrap();
    assert_eq!(b, [0x20, 0x02, 0x00, 0x01]);
    // still serving
    let mut ok = Client::v311(addr, "fine", true).await;
    ok.ping().await;
}

#[tokio::test]
async fn session_expiry_ends_a_persistent_session() {
    let (_t, _s, addr) = start();
    let mut c = connect_packet(ProtocolVersion::V5, "brief", true);
    c.properties.session_expiry_interval = Some(1);
    let (mut cl, _) = Client::connect(addr, c.clone()).await;
    cl.subscribe(1, "brief/#", QoS::AtLeastOnce).await;
    cl.disconnect().await;
    // Within the interval the session is there...
    c.clean_start = false;
    let (cl, a) = Client::connect(addr, c.clone()).await;
    assert!(a.session_present);
    cl.disconnect().await;
    // ...and after it, gone. Polled no faster than the interval: a reconnect resumes the
    // session and restarts its expiry.
    let deadline = std::time::Instant::now() + mqtt::WAIT;
    loop {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (cl, a) = Client::connect(addr, c.clone()).await;
        if !a.session_present {
            break;
        }
        cl.disconnect().await;
        assert!(
            std::time::Instant::now() < deadline,
            "session never expired"
        );
    }
}

#[tokio::test]
async fn will_delay_is_cancelled_by_a_reconnect() {
    let (_t, _s, addr) = start();
    let mut watcher = Client::v5(addr, "watcher", true).await;
    watcher.subscribe(1, "lw/#", QoS::AtLeastOnce).await;
    let mut c = connect_packet(ProtocolVersion::V5, "flaky", false);
    c.properties.session_expiry_interval = Some(60);
    c.will = Some(Will {
        topic: "lw/flaky".into(),
        payload: Bytes::from_static(b"offline"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties {
            will_delay_interval: Some(2),
            ..Properties::default()
        },
    });
    let (cl, _) = Client::connect(addr, c.clone()).await;
    drop(cl);
    // back within the delay: no will
    let (cl, a) = Client::connect(addr, c.clone()).await;
    assert!(a.session_present);
    assert!(
        watcher.quiet(Duration::from_millis(2500)).await,
        "will cancelled"
    );
    // gone for longer than the delay: the will comes
    drop(cl);
    let p = watcher.expect_publish().await;
    assert_eq!(p.topic, "lw/flaky");
}

#[tokio::test]
async fn outbound_window_respects_the_client_receive_maximum() {
    let (_t, _s, addr) = start();
    let mut publ = Client::v5(addr, "pub", true).await;
    for i in 0..4u16 {
        publ.publish(&format!("rm/{i}"), b"r", QoS::AtLeastOnce, true, i + 1)
            .await;
    }
    let mut c = connect_packet(ProtocolVersion::V5, "small", true);
    c.properties.receive_maximum = Some(2);
    let (mut cl, _) = Client::connect(addr, c).await;
    cl.subscribe(1, "rm/#", QoS::AtLeastOnce).await;
    let first = cl.recv().await;
    let second = cl.recv().await;
    assert!(
        cl.quiet(Duration::from_millis(300)).await,
        "two in flight at most"
    );
    // live messages queue behind the window too
    publ.publish("rm/live", b"l", QoS::AtLeastOnce, false, 9)
        .await;
    assert!(cl.quiet(Duration::from_millis(300)).await);
    let mut seen = 2;
    for p in [first, second] {
        let Packet::Publish(p) = p else {
            panic!("{p:?}")
        };
        cl.ack(&p).await;
    }
    while seen < 5 {
        let p = cl.expect_publish().await;
        assert_eq!(p.qos, QoS::AtLeastOnce);
        seen += 1;
    }
}

#[tokio::test]
async fn invalid_filters_close_the_connection() {
    let (_t, _s, addr) = start();
    let mut c = Client::v5(addr, "f5", true).await;
    c.send(Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        subscriptions: vec![Subscription {
            filter: "a/#/b".into(),
            options: SubscriptionOptions::qos(QoS::AtLeastOnce),
        }],
    }))
    .await;
    match c.next().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::MALFORMED_PACKET),
        p => panic!("expected DISCONNECT 0x81, got {p:?}"),
    }
    let mut c = Client::v311(addr, "f3", true).await;
    c.send(Packet::Unsubscribe(Unsubscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec!["x+/y".into()],
    }))
    .await;
    assert!(c.next().await.is_none(), "MQTT 3: closed");
}

#[tokio::test]
async fn outbound_qos2_resumes_mid_flow_after_a_reconnect() {
    let (_t, _s, addr) = start();
    let mut c = connect_packet(ProtocolVersion::V5, "q2sub", false);
    c.properties.session_expiry_interval = Some(60);
    let (mut sub, _) = Client::connect(addr, c.clone()).await;
    sub.subscribe(1, "q2/#", QoS::ExactlyOnce).await;
    let mut publ = Client::v5(addr, "q2pub", true).await;
    publ.publish("q2/a", b"first", QoS::ExactlyOnce, false, 1)
        .await;
    // PUBLISH received, connection lost before PUBREC: resent with DUP.
    let p = match sub.recv().await {
        Packet::Publish(p) => p,
        p => panic!("{p:?}"),
    };
    assert_eq!((p.qos, p.dup), (QoS::ExactlyOnce, false));
    drop(sub);
    let (mut sub, a) = Client::connect(addr, c.clone()).await;
    assert!(a.session_present);
    let p = match sub.recv().await {
        Packet::Publish(p) => p,
        p => panic!("{p:?}"),
    };
    assert_eq!((&p.payload[..], p.dup), (&b"first"[..], true));
    let pid = p.packet_id.unwrap();
    // PUBREC sent, PUBREL received, connection lost before PUBCOMP: PUBREL again.
    sub.send(Packet::Pubrec(PubResponse::new(pid))).await;
    assert!(matches!(sub.recv().await, Packet::Pubrel(r) if r.packet_id == pid));
    drop(sub);
    let (mut sub, a) = Client::connect(addr, c.clone()).await;
    assert!(a.session_present);
    assert!(matches!(sub.recv().await, Packet::Pubrel(r) if r.packet_id == pid));
    sub.send(Packet::Pubcomp(PubResponse::new(pid))).await;
    assert!(
        sub.quiet(Duration::from_millis(300)).await,
        "delivered once"
    );
    // the flow's packet id is free again; new messages keep flowing
    publ.publish("q2/b", b"second", QoS::ExactlyOnce, false, 2)
        .await;
    assert_eq!(&sub.expect_publish().await.payload[..], b"second");
}

#[tokio::test]
async fn long_client_ids_get_persistent_sessions() {
    let (_t, _s, addr) = start();
    let id = "device-".repeat(3000); // 21,000 bytes
    let mut c = Client::v311(addr, &id, false).await;
    c.subscribe(1, "long/#", QoS::AtLeastOnce).await;
    c.disconnect().await;
    let mut p = Client::v311(addr, "p", true).await;
    p.publish("long/x", b"kept", QoS::AtLeastOnce, false, 1)
        .await;
    let (mut c, a) =
        Client::connect(addr, connect_packet(ProtocolVersion::V3_1_1, &id, false)).await;
    assert!(a.session_present);
    assert_eq!(&c.expect_publish().await.payload[..], b"kept");
}

#[tokio::test]
async fn sigterm_disconnects_mqtt_clients_and_exits_cleanly() {
    let (_t, mut server, addr) = start();
    let mut c = Client::v5(addr, "bye", false).await;
    let mut old = Client::v311(addr, "bye3", true).await;
    server.signal(libc::SIGTERM);
    match c.next().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::SERVER_SHUTTING_DOWN),
        p => panic!("expected DISCONNECT 0x8B, got {p:?}"),
    }
    assert!(old.next().await.is_none(), "MQTT 3: closed");
    let status = tokio::task::spawn_blocking(move || {
        let st = server.wait_exit();
        (st, server.count("FerryMQ stopped"))
    })
    .await
    .unwrap();
    assert!(status.0.success(), "{:?}", status.0);
    assert_eq!(status.1, 1);
}
