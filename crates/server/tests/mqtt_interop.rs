//! Issue #6: MQTT durability across `kill -9`, MQTT ⇄ AMQP (lapin) with properties mapped,
//! and MQTT over WebSocket (tungstenite) on the HTTP listener's `/mqtt`.

mod common;
#[path = "common/mqtt.rs"]
mod mqtt;

use bytes::{Bytes, BytesMut};
use common::{listening, serve};
use ferrymq_mqtt_codec::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use mqtt::{connect_packet, Client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_qos1_and_retained_messages_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    {
        let mut server = serve(tmp.path(), &data, &[]);
        let addr = listening(&server, "MQTT");
        let mut sub = Client::v311(addr, "durable-sub", false).await;
        sub.subscribe(1, "d/#", QoS::AtLeastOnce).await;
        sub.disconnect().await;
        let mut publ = Client::v311(addr, "pub", true).await;
        for i in 0..5u8 {
            // PUBACK comes after the fsync (T2), so these must survive.
            publ.publish(
                "d/x",
                &[b'0' + i],
                QoS::AtLeastOnce,
                false,
                u16::from(i) + 1,
            )
            .await;
        }
        publ.publish("d/ret", b"kept", QoS::AtLeastOnce, true, 10)
            .await;
        publ.publish("e/ret", b"also", QoS::AtLeastOnce, true, 11)
            .await;
        server.signal(libc::SIGKILL);
        server.wait_exit();
    }
    let server = serve(tmp.path(), &data, &[]);
    let addr = listening(&server, "MQTT");
    let (mut sub, a) = Client::connect(
        addr,
        connect_packet(ProtocolVersion::V3_1_1, "durable-sub", false),
    )
    .await;
    assert!(a.session_present, "the session survived");
    let mut got = Vec::new();
    for _ in 0..6 {
        let p = sub.expect_publish().await;
        got.push((p.topic, p.payload));
    }
    let bodies: Vec<&[u8]> = got.iter().map(|(_, b)| &b[..]).collect();
    assert_eq!(bodies, vec![&b"0"[..], b"1", b"2", b"3", b"4", b"kept"]);
    let mut fresh = Client::v5(addr, "fresh", true).await;
    fresh.subscribe(1, "+/ret", QoS::AtLeastOnce).await;
    let mut ret = [fresh.expect_publish().await, fresh.expect_publish().await];
    ret.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(ret[0].topic, "d/ret");
    assert_eq!(&ret[0].payload[..], b"kept");
    assert!(ret[0].retain);
    assert_eq!(ret[1].topic, "e/ret");
}

fn s(v: &str) -> ShortString {
    v.into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_and_amqp_exchange_messages_with_properties() {
    let tmp = tempfile::tempdir().unwrap();
    let server = serve(tmp.path(), &tmp.path().join("data"), &[]);
    let maddr = listening(&server, "MQTT");
    let aaddr = listening(&server, "AMQP");
    let conn = Connection::connect(
        &format!("amqp://guest:guest@{aaddr}/%2f"),
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        s("from-mqtt"),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        s("from-mqtt"),
        s("amq.topic"),
        s("sensors.#"),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    // MQTT → AMQP
    let mut m = Client::v5(maddr, "dev", true).await;
    let props = Properties {
        user_properties: vec![("room".into(), "kitchen".into())],
        content_type: Some("application/json".into()),
        correlation_data: Some(Bytes::from_static(b"corr-1")),
        response_topic: Some("replies/dev".into()),
        message_expiry_interval: Some(60),
        ..Properties::default()
    };
    m.publish_props(
        "sensors/1/temp",
        b"{\"t\":21}",
        QoS::AtLeastOnce,
        false,
        1,
        props,
    )
    .await;
    let mut consumer = ch
        .basic_consume(
            s("from-mqtt"),
            s("c"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let d = tokio::time::timeout(mqtt::WAIT, consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(d.routing_key.as_str(), "sensors.1.temp");
    assert_eq!(d.data, b"{\"t\":21}");
    let p = &d.properties;
    assert_eq!(
        p.content_type().as_ref().map(|v| v.as_str()),
        Some("application/json")
    );
    assert_eq!(
        p.correlation_id().as_ref().map(|v| v.as_str()),
        Some("corr-1")
    );
    assert_eq!(
        p.reply_to().as_ref().map(|v| v.as_str()),
        Some("replies.dev")
    );
    assert_eq!(p.expiration().as_ref().map(|v| v.as_str()), Some("60000"));
    assert_eq!(*p.delivery_mode(), Some(2), "QoS 1 is persistent");
    let headers = p.headers().clone().unwrap_or_default();
    let room = headers.inner().get("room").cloned();
    assert!(
        matches!(&room, Some(AMQPValue::LongString(v)) if v.to_string() == "kitchen"),
        "{room:?}"
    );
    d.ack(BasicAckOptions::default()).await.unwrap();
    // AMQP → MQTT
    let mut sub = Client::v5(maddr, "app", true).await;
    sub.subscribe(1, "cmd/+", QoS::AtLeastOnce).await;
    let mut h = FieldTable::default();
    h.insert(s("op"), AMQPValue::LongString("reboot".into()));
    ch.basic_publish(
        s("amq.topic"),
        s("cmd.dev1"),
        BasicPublishOptions::default(),
        b"now",
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(s("text/plain"))
            .with_correlation_id(s("c-9"))
            .with_reply_to(s("acks.dev1"))
            .with_headers(h),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let p = sub.expect_publish().await;
    assert_eq!(p.topic, "cmd/dev1");
    assert_eq!(&p.payload[..], b"now");
    assert_eq!(p.qos, QoS::AtLeastOnce);
    assert_eq!(p.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(p.properties.correlation_data.as_deref(), Some(&b"c-9"[..]));
    assert_eq!(p.properties.response_topic.as_deref(), Some("acks/dev1"));
    assert_eq!(
        p.properties.user_properties,
        vec![("op".to_string(), "reboot".to_string())]
    );
    // a transient AMQP message arrives at QoS 0
    ch.basic_publish(
        s("amq.topic"),
        s("cmd.dev2"),
        BasicPublishOptions::default(),
        b"t",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    assert_eq!(sub.expect_publish().await.qos, QoS::AtMostOnce);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_websocket() {
    use tungstenite::client::IntoClientRequest;
    let tmp = tempfile::tempdir().unwrap();
    let server = serve(tmp.path(), &tmp.path().join("data"), &[]);
    let maddr = listening(&server, "MQTT");
    let haddr = listening(&server, "http");
    let ws = tokio::task::spawn_blocking(move || {
        let stream = std::net::TcpStream::connect(haddr).unwrap();
        stream.set_read_timeout(Some(mqtt::WAIT)).unwrap();
        let mut req = format!("ws://{haddr}/mqtt").into_client_request().unwrap();
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
        let (mut ws, resp) = tungstenite::client(req, stream).expect("handshake");
        assert_eq!(
            resp.headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some("mqtt")
        );
        let v = ProtocolVersion::V3_1_1;
        let send = |ws: &mut tungstenite::WebSocket<std::net::TcpStream>, p: Packet| {
            let b = p.to_bytes(v).unwrap().freeze();
            ws.send(tungstenite::Message::Binary(b)).unwrap();
        };
        let mut buf = BytesMut::new();
        let mut recv = |ws: &mut tungstenite::WebSocket<std::net::TcpStream>| loop {
            if let Some(p) = decode(&mut buf, v, PROTOCOL_MAX_PACKET_SIZE).unwrap() {
                return p;
            }
            match ws.read().unwrap() {
                tungstenite::Message::Binary(b) => buf.extend_from_slice(&b),
                m => panic!("unexpected {m:?}"),
            }
        };
        send(
            &mut ws,
            Packet::Connect(Box::new(connect_packet(v, "ws", true))),
        );
        assert!(
            matches!(recv(&mut ws), Packet::Connack(a) if a.reason_code == ReasonCode::SUCCESS)
        );
        send(
            &mut ws,
            Packet::Subscribe(Subscribe {
                packet_id: 1,
                properties: Properties::default(),
                subscriptions: vec![Subscription {
                    filter: "web/#".into(),
                    options: SubscriptionOptions::qos(QoS::AtLeastOnce),
                }],
            }),
        );
        assert!(matches!(recv(&mut ws), Packet::Suback(_)));
        (ws, buf)
    })
    .await
    .unwrap();
    let (mut ws, mut buf) = ws;
    let mut publ = Client::v311(maddr, "tcp", true).await;
    publ.publish("web/page", b"hello browser", QoS::AtLeastOnce, false, 1)
        .await;
    let p = tokio::task::spawn_blocking(move || loop {
        if let Some(p) =
            decode(&mut buf, ProtocolVersion::V3_1_1, PROTOCOL_MAX_PACKET_SIZE).unwrap()
        {
            return p;
        }
        match ws.read().unwrap() {
            tungstenite::Message::Binary(b) => buf.extend_from_slice(&b),
            m => panic!("unexpected {m:?}"),
        }
    })
    .await
    .unwrap();
    match p {
        Packet::Publish(p) => {
            assert_eq!(p.topic, "web/page");
            assert_eq!(&p.payload[..], b"hello browser");
        }
        p => panic!("{p:?}"),
    }
}

/// A blocking call to the management API as guest: `body` makes it a JSON POST.
fn call(
    http: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    use base64::Engine;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("http://{http}{path}");
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("guest:guest")
    );
    let r = match (method, body) {
        ("GET", _) => agent.get(&url).header("authorization", &auth).call(),
        (_, Some(body)) => agent
            .post(&url)
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .send(body.to_string()),
        _ => agent.delete(&url).header("authorization", &auth).call(),
    };
    let mut r = r.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

fn api(http: std::net::SocketAddr, method: &str, path: &str) -> (u16, serde_json::Value) {
    call(http, method, path, None)
}

fn api_post(
    http: std::net::SocketAddr,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    call(http, "POST", path, Some(body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_lists_and_closes_mqtt_connections() {
    let tmp = tempfile::tempdir().unwrap();
    let server = serve(tmp.path(), &tmp.path().join("data"), &[]);
    let maddr = listening(&server, "MQTT");
    let haddr = listening(&server, "http");
    let mut c = Client::v5(maddr, "managed", true).await;
    let (_, conns) = tokio::task::spawn_blocking(move || api(haddr, "GET", "/api/connections"))
        .await
        .unwrap();
    let conn = conns
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["protocol"] == "mqtt")
        .unwrap_or_else(|| panic!("no mqtt connection in {conns}"))
        .clone();
    assert_eq!(conn["user"], "guest");
    let id = conn["id"].clone();
    let id = id
        .as_u64()
        .map_or_else(|| id.to_string(), |n| n.to_string());
    let (status, _) = tokio::task::spawn_blocking(move || {
        api(haddr, "DELETE", &format!("/api/connections/{id}"))
    })
    .await
    .unwrap();
    assert!(status < 300, "close answered {status}");
    match c.next().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::ADMINISTRATIVE_ACTION),
        p => panic!("expected DISCONNECT 0x98, got {p:?}"),
    }
    assert!(c.next().await.is_none());
    // Deleting a session's queue ends its connection too.
    let mut cp = connect_packet(ProtocolVersion::V5, "doomed", false);
    cp.properties.session_expiry_interval = Some(60);
    let (mut c, _) = Client::connect(maddr, cp).await;
    let (status, _) = tokio::task::spawn_blocking(move || {
        api(haddr, "DELETE", "/api/queues/%2F/mqtt-subscription-doomed")
    })
    .await
    .unwrap();
    assert!(status < 300, "queue delete answered {status}");
    match c.next().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::ADMINISTRATIVE_ACTION),
        p => panic!("expected DISCONNECT 0x98, got {p:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_are_not_acknowledged_under_a_resource_alarm() {
    let tmp = tempfile::tempdir().unwrap();
    // No disk has this much free space: the disk alarm is raised at once.
    let server = serve(
        tmp.path(),
        &tmp.path().join("data"),
        &["--set", "limits.disk_free_limit_bytes=9000000000000000000"],
    );
    let maddr = listening(&server, "MQTT");
    let haddr = listening(&server, "http");
    let deadline = std::time::Instant::now() + mqtt::WAIT;
    loop {
        let (_, o) = tokio::task::spawn_blocking(move || api(haddr, "GET", "/api/overview"))
            .await
            .unwrap();
        if o["disk_alarm"] == true {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no disk alarm: {o}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mut c = Client::v5(maddr, "blocked", true).await;
    c.send(Packet::Publish(Publish {
        qos: QoS::AtLeastOnce,
        topic: "t".into(),
        packet_id: Some(1),
        payload: Bytes::from_static(b"x"),
        ..Publish::default()
    }))
    .await;
    // The first PUBLISH is read (it is what marks a publisher), later input is not.
    let _ = c.next_within(std::time::Duration::from_millis(500)).await;
    c.send(Packet::Pingreq).await;
    assert!(
        c.quiet(std::time::Duration::from_millis(500)).await,
        "a blocked publisher's socket is not read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_and_http_exchange_messages() {
    use serde_json::json;
    let tmp = tempfile::tempdir().unwrap();
    let server = serve(tmp.path(), &tmp.path().join("data"), &[]);
    let maddr = listening(&server, "MQTT");
    let haddr = listening(&server, "http");
    // HTTP → MQTT
    let mut sub = Client::v5(maddr, "web", true).await;
    sub.subscribe(1, "orders/+", QoS::AtLeastOnce).await;
    let (status, r) = tokio::task::spawn_blocking(move || {
        api_post(
            haddr,
            "/api/exchanges/%2F/amq.topic/publish",
            json!({"routing_key": "orders.42", "payload": "from http",
                   "headers": {"src": "http"},
                   "properties": {"persistent": true, "content_type": "text/plain"}}),
        )
    })
    .await
    .unwrap();
    assert_eq!((status, &r["routed"]), (200, &json!(true)), "{r}");
    let p = sub.expect_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("orders/42", &b"from http"[..])
    );
    assert_eq!(p.qos, QoS::AtLeastOnce);
    assert_eq!(p.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        p.properties.user_properties,
        vec![("src".to_string(), "http".to_string())]
    );
    // MQTT → HTTP pull from a queue bound to amq.topic
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        use base64::Engine;
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("guest:guest")
        );
        let r = agent
            .put(&format!("http://{haddr}/api/queues/%2F/inbox"))
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .send(json!({"durable": true}).to_string())
            .unwrap();
        assert!(r.status().as_u16() < 300);
        let (s, _) = api_post(
            haddr,
            "/api/bindings/%2F/e/amq.topic/q/inbox",
            json!({"routing_key": "devices.#"}),
        );
        assert!(s < 300, "bind answered {s}");
    })
    .await
    .unwrap();
    let mut dev = Client::v311(maddr, "dev", true).await;
    dev.publish("devices/7/state", b"on", QoS::AtLeastOnce, false, 1)
        .await;
    let (_, got) = tokio::task::spawn_blocking(move || {
        api_post(
            haddr,
            "/api/queues/%2F/inbox/get",
            json!({"max_messages": 1, "wait_ms": 5000}),
        )
    })
    .await
    .unwrap();
    let m = &got["messages"][0]["message"];
    assert_eq!(m["routing_key"], "devices.7.state", "{got}");
    assert_eq!(m["payload"], "on", "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscriptions_of_persistent_sessions_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut c = connect_packet(ProtocolVersion::V5, "worker", false);
    c.properties.session_expiry_interval = Some(300);
    {
        let mut server = serve(tmp.path(), &data, &[]);
        let addr = listening(&server, "MQTT");
        let (mut w, _) = Client::connect(addr, c.clone()).await;
        w.subscribe(1, "$share/pool/jobs/#", QoS::AtLeastOnce).await;
        w.subscribe(2, "plain/#", QoS::AtLeastOnce).await;
        w.disconnect().await;
        server.signal(libc::SIGKILL);
        server.wait_exit();
    }
    let server = serve(tmp.path(), &data, &[]);
    let addr = listening(&server, "MQTT");
    let (mut w, a) = Client::connect(addr, c).await;
    assert!(a.session_present);
    let mut p = Client::v5(addr, "boss", true).await;
    p.publish("jobs/1", b"job", QoS::AtLeastOnce, false, 1)
        .await;
    p.publish("plain/1", b"plain", QoS::AtLeastOnce, false, 2)
        .await;
    let mut got = [w.expect_publish().await, w.expect_publish().await];
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(
        (got[0].topic.as_str(), &got[0].payload[..]),
        ("jobs/1", &b"job"[..])
    );
    assert_eq!(got[1].topic, "plain/1");
}

/// Sends a QoS 2 PUBLISH (no flow) and waits for its PUBREC.
async fn publish_qos2_until_pubrec(c: &mut Client, topic: &str, body: &[u8], pid: u16, dup: bool) {
    c.send(Packet::Publish(Publish {
        dup,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: topic.into(),
        packet_id: Some(pid),
        properties: Properties::default(),
        payload: Bytes::copy_from_slice(body),
    }))
    .await;
    match c.recv().await {
        Packet::Pubrec(r) => {
            assert_eq!(r.packet_id, pid);
            assert!(!r.reason_code.is_error(), "{:?}", r.reason_code);
        }
        p => panic!("expected PUBREC, got {p:?}"),
    }
}

async fn pubrel_until_pubcomp(c: &mut Client, pid: u16) -> ReasonCode {
    c.send(Packet::Pubrel(PubResponse::new(pid))).await;
    match c.recv().await {
        Packet::Pubcomp(r) => {
            assert_eq!(r.packet_id, pid);
            r.reason_code
        }
        p => panic!("expected PUBCOMP, got {p:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_publish_resent_across_kill_9_is_delivered_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    {
        let mut server = serve(tmp.path(), &data, &[]);
        let addr = listening(&server, "MQTT");
        let mut sub = Client::v311(addr, "once-sub", false).await;
        sub.subscribe(1, "once/#", QoS::AtLeastOnce).await;
        sub.disconnect().await;
        let mut publ = Client::v311(addr, "once-pub", false).await;
        // PUBREC: the message and its packet id are durable. No PUBREL before the crash.
        publish_qos2_until_pubrec(&mut publ, "once/x", b"once", 7, false).await;
        server.signal(libc::SIGKILL);
        server.wait_exit();
    }
    {
        let mut server = serve(tmp.path(), &data, &[]);
        let addr = listening(&server, "MQTT");
        let (mut publ, a) = Client::connect(
            addr,
            connect_packet(ProtocolVersion::V3_1_1, "once-pub", false),
        )
        .await;
        assert!(a.session_present);
        // A client that lost the PUBREC in the crash resends with DUP: answered, not
        // published.
        publish_qos2_until_pubrec(&mut publ, "once/x", b"once", 7, true).await;
        // PUBCOMP: the id's removal is durable.
        assert_eq!(
            pubrel_until_pubcomp(&mut publ, 7).await,
            ReasonCode::SUCCESS
        );
        server.signal(libc::SIGKILL);
        server.wait_exit();
    }
    let server = serve(tmp.path(), &data, &[]);
    let addr = listening(&server, "MQTT");
    let (mut publ, a) = Client::connect(
        addr,
        connect_packet(ProtocolVersion::V3_1_1, "once-pub", false),
    )
    .await;
    assert!(a.session_present);
    // After PUBCOMP the id is free again, a crash notwithstanding: a new message with it is
    // published.
    publish_qos2_until_pubrec(&mut publ, "once/x", b"again", 7, false).await;
    pubrel_until_pubcomp(&mut publ, 7).await;
    publ.publish("once/x", b"marker", QoS::AtLeastOnce, false, 8)
        .await;
    let (mut sub, a) = Client::connect(
        addr,
        connect_packet(ProtocolVersion::V3_1_1, "once-sub", false),
    )
    .await;
    assert!(a.session_present);
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(sub.expect_publish().await.payload);
    }
    // A second copy of "once" would come before the marker (one queue, FIFO).
    assert_eq!(got, vec![&b"once"[..], b"again", b"marker"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubrel_pending_outbound_id_survives_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let pid;
    {
        let mut server = serve(tmp.path(), &data, &[]);
        let addr = listening(&server, "MQTT");
        let mut sub = Client::v311(addr, "rel-sub", false).await;
        sub.subscribe(1, "rel/#", QoS::ExactlyOnce).await;
        let mut publ = Client::v311(addr, "rel-pub", true).await;
        publ.publish("rel/x", b"one", QoS::ExactlyOnce, false, 1)
            .await;
        let p = match sub.recv().await {
            Packet::Publish(p) => p,
            p => panic!("expected PUBLISH, got {p:?}"),
        };
        assert_eq!(&p.payload[..], b"one");
        pid = p.packet_id.unwrap();
        sub.send(Packet::Pubrec(PubResponse::new(pid))).await;
        // PUBREL: the id is durable (and the message acked in the core). No PUBCOMP.
        match sub.recv().await {
            Packet::Pubrel(r) => assert_eq!(r.packet_id, pid),
            p => panic!("expected PUBREL, got {p:?}"),
        }
        server.signal(libc::SIGKILL);
        server.wait_exit();
    }
    let server = serve(tmp.path(), &data, &[]);
    let addr = listening(&server, "MQTT");
    let (mut sub, a) = Client::connect(
        addr,
        connect_packet(ProtocolVersion::V3_1_1, "rel-sub", false),
    )
    .await;
    assert!(a.session_present);
    // The PUBREL is resent, and the message is not delivered again.
    match sub.recv().await {
        Packet::Pubrel(r) => assert_eq!(r.packet_id, pid),
        p => panic!("expected the PUBREL again, got {p:?}"),
    }
    sub.send(Packet::Pubcomp(PubResponse::new(pid))).await;
    let mut publ = Client::v311(addr, "rel-pub", true).await;
    publ.publish("rel/x", b"two", QoS::AtLeastOnce, false, 1)
        .await;
    let p = sub.expect_publish().await;
    assert_eq!(&p.payload[..], b"two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_start_leaves_no_qos2_state_behind_across_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let connect = |clean: bool| {
        let mut c = connect_packet(ProtocolVersion::V5, "cs-pub", clean);
        c.properties.session_expiry_interval = Some(300);
        c
    };
    {
        let mut server = serve(tmp.path(), &data, &[]);
        let addr = listening(&server, "MQTT");
        let (mut publ, _) = Client::connect(addr, connect(false)).await;
        // Id 9 persisted, awaiting PUBREL; the connection ends.
        publish_qos2_until_pubrec(&mut publ, "cs/x", b"old", 9, false).await;
        publ.disconnect().await;
        // Clean start, persistent again: the old session and its ids are gone.
        let (publ, a) = Client::connect(addr, connect(true)).await;
        assert!(!a.session_present);
        publ.disconnect().await;
        server.signal(libc::SIGKILL);
        server.wait_exit();
    }
    let server = serve(tmp.path(), &data, &[]);
    let addr = listening(&server, "MQTT");
    let mut sub = Client::v5(addr, "cs-sub", true).await;
    sub.subscribe(1, "cs/#", QoS::AtLeastOnce).await;
    let (mut publ, a) = Client::connect(addr, connect(false)).await;
    assert!(a.session_present, "the clean-started session persisted");
    // A stale id 9 would answer this new message as a duplicate and drop it.
    publish_qos2_until_pubrec(&mut publ, "cs/x", b"new", 9, false).await;
    pubrel_until_pubcomp(&mut publ, 9).await;
    publ.publish("cs/x", b"marker", QoS::AtLeastOnce, false, 10)
        .await;
    assert_eq!(&sub.expect_publish().await.payload[..], b"new");
    assert_eq!(&sub.expect_publish().await.payload[..], b"marker");
}
