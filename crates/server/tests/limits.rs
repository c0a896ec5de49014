//! Issue #9 (limits): connection limits (global, per source address, per user), queues
//! per vhost and handshake timeouts, each reached and refused with the protocol's own
//! error over raw sockets, with the server still serving other clients afterwards and
//! the refusal counted in `/metrics`.

mod common;
#[path = "common/mqtt.rs"]
mod mqtt;

use std::net::SocketAddr;
use std::time::Duration;

use common::{listening, serve, Server};
use ferrymq_mqtt_codec::{ProtocolVersion, ReasonCode};
use mqtt::{connect_packet, Client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

const WAIT: Duration = Duration::from_secs(30);
const AMQP_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
/// ApiVersions v0: size 10, api key 18, version 0, correlation id 1, null client id.
const KAFKA_API_VERSIONS: &[u8] = &[0, 0, 0, 10, 0, 18, 0, 0, 0, 0, 0, 1, 0xff, 0xff];

fn start(args: &[&str]) -> (tempfile::TempDir, Server) {
    let tmp = tempfile::tempdir().unwrap();
    let mut full = Vec::new();
    for a in args {
        full.push("--set");
        full.push(*a);
    }
    let server = serve(tmp.path(), &tmp.path().join("data"), &full);
    (tmp, server)
}

/// Reads until the server closes the socket (or `WAIT` passes: a failure).
async fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("the server closes the connection")
        .ok();
    out
}

/// An AMQP connection that got `connection.start` (admitted and served).
async fn amqp_admitted(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(AMQP_HEADER).await.unwrap();
    let mut head = [0u8; 11];
    timeout(WAIT, s.read_exact(&mut head))
        .await
        .expect("connection.start in time")
        .expect("connection.start");
    assert_eq!(&head[7..11], &[0, 10, 0, 10], "connection.start");
    s
}

/// The reply code of the connection.close an AMQP client gets after its header.
async fn amqp_refused(addr: SocketAddr) -> u16 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(AMQP_HEADER).await.unwrap();
    let bytes = read_to_end(&mut s).await;
    assert!(bytes.len() >= 13, "a connection.close frame: {bytes:?}");
    assert_eq!(&bytes[7..11], &[0, 10, 0, 50], "connection.close");
    u16::from_be_bytes([bytes[11], bytes[12]])
}

/// A Kafka connection answers ApiVersions.
async fn kafka_served(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return false;
    };
    if s.write_all(KAFKA_API_VERSIONS).await.is_err() {
        return false;
    }
    let mut len = [0u8; 4];
    matches!(timeout(WAIT, s.read_exact(&mut len)).await, Ok(Ok(_)))
}

/// Waits until a Kafka connection is served again (a slot is released once the server
/// has seen the previous connection close).
async fn kafka_when_admitted(addr: SocketAddr) {
    let deadline = Instant::now() + WAIT;
    while !kafka_served(addr).await {
        assert!(Instant::now() < deadline, "Kafka never served again");
        tokio::task::yield_now().await;
    }
}

/// One HTTP/1.1 request on a fresh connection: (status, whole response).
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let text = String::from_utf8_lossy(&read_to_end(&mut s).await).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// `/metrics`, once an HTTP connection is admitted again (a released connection is
/// counted down once the server has seen it close; until then the request may itself be
/// refused, which counts as an HTTP refusal).
async fn metrics_when_served(addr: SocketAddr) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, text) = http(addr, "GET", "/metrics", "").await;
        if status == 200 {
            return text;
        }
        assert!(Instant::now() < deadline, "/metrics never served: {text}");
        tokio::task::yield_now().await;
    }
}

/// The value of `ferrymq_limit_refusals_total{limit, protocol}` (0 when absent).
fn refusals(metrics: &str, limit: &str, protocol: &str) -> u64 {
    let key = format!("ferrymq_limit_refusals_total{{limit=\"{limit}\",protocol=\"{protocol}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// An MQTT 5 session, retried while the connection limit is still reached.
async fn mqtt_when_admitted(addr: SocketAddr, id: &str) -> Client {
    let deadline = Instant::now() + WAIT;
    loop {
        let (c, ack) = Client::connect(addr, connect_packet(ProtocolVersion::V5, id, true)).await;
        if ack.reason_code == ReasonCode::SUCCESS {
            return c;
        }
        assert_eq!(ack.reason_code, ReasonCode::QUOTA_EXCEEDED);
        assert!(Instant::now() < deadline, "never admitted again");
        tokio::task::yield_now().await;
    }
}

/// A lapin connection as guest to the default vhost.
async fn amqp_connect(addr: SocketAddr) -> Result<lapin::Connection, lapin::Error> {
    let uri = format!("amqp://guest:guest@{addr}/%2f");
    lapin::Connection::connect(&uri, lapin::ConnectionProperties::default()).await
}

/// A lapin connection and a channel on it.
async fn amqp_channel(addr: SocketAddr) -> (lapin::Connection, lapin::Channel) {
    let conn = amqp_connect(addr).await.expect("AMQP connection");
    let ch = conn.create_channel().await.expect("AMQP channel");
    (conn, ch)
}

fn addrs(server: &Server) -> [SocketAddr; 4] {
    [
        listening(server, "AMQP"),
        listening(server, "MQTT"),
        listening(server, "Kafka"),
        listening(server, "http"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_connection_limit_is_refused_by_every_protocol() {
    let (_tmp, server) = start(&["limits.connections_max=2"]);
    let [amqp, mqtt, kafka, http_addr] = addrs(&server);
    let a = amqp_admitted(amqp).await;
    let b = amqp_admitted(amqp).await;
    // AMQP: connection.close 530 NOT_ALLOWED after the protocol header.
    assert_eq!(amqp_refused(amqp).await, 530);
    // MQTT 5: CONNACK 0x97 Quota exceeded; MQTT 3.1.1: 0x03 Server unavailable.
    let (_c, ack) = Client::connect(mqtt, connect_packet(ProtocolVersion::V5, "g5", true)).await;
    assert_eq!(ack.reason_code, ReasonCode::QUOTA_EXCEEDED);
    let (_c, ack) =
        Client::connect(mqtt, connect_packet(ProtocolVersion::V3_1_1, "g3", true)).await;
    assert_eq!(ack.reason_code, ReasonCode::SERVER_UNAVAILABLE);
    // Kafka: closed without an answer.
    assert!(!kafka_served(kafka).await);
    // HTTP: 503 with the JSON error body.
    let (status, text) = http(http_addr, "GET", "/health/live", "").await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("\"limit_reached\""), "{text}");
    // One connection ends: the others are served again.
    drop(a);
    let text = metrics_when_served(http_addr).await;
    assert_eq!(refusals(&text, "connections", "mqtt"), 2, "{text}");
    assert_eq!(refusals(&text, "connections", "amqp"), 1, "{text}");
    assert_eq!(refusals(&text, "connections", "kafka"), 1, "{text}");
    assert!(refusals(&text, "connections", "http") >= 1, "{text}");
    kafka_when_admitted(kafka).await;
    // The Kafka probe's slot is released once the server has seen it close.
    let mut c = mqtt_when_admitted(mqtt, "after").await;
    c.ping().await;
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_source_limit_counts_every_listener() {
    let (_tmp, server) = start(&["limits.connections_per_source_max=2"]);
    let [amqp, mqtt, kafka, http_addr] = addrs(&server);
    let a = Client::v5(mqtt, "s1", true).await;
    let _b = amqp_admitted(amqp).await;
    let (_c, ack) = Client::connect(mqtt, connect_packet(ProtocolVersion::V5, "s3", true)).await;
    assert_eq!(ack.reason_code, ReasonCode::QUOTA_EXCEEDED);
    assert_eq!(amqp_refused(amqp).await, 530);
    assert!(!kafka_served(kafka).await);
    assert_eq!(http(http_addr, "GET", "/health/live", "").await.0, 503);
    a.disconnect().await;
    let text = metrics_when_served(http_addr).await;
    assert_eq!(
        refusals(&text, "connections_per_source", "mqtt"),
        1,
        "{text}"
    );
    assert_eq!(
        refusals(&text, "connections_per_source", "amqp"),
        1,
        "{text}"
    );
    assert_eq!(
        refusals(&text, "connections_per_source", "kafka"),
        1,
        "{text}"
    );
    assert!(
        refusals(&text, "connections_per_source", "http") >= 1,
        "{text}"
    );
    kafka_when_admitted(kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_limit_is_checked_after_login() {
    let (_tmp, server) = start(&["limits.connections_per_user_max=1"]);
    let [amqp, mqtt, _kafka, http_addr] = addrs(&server);
    let login = |id: &str, v| {
        let mut c = connect_packet(v, id, true);
        c.username = Some("guest".into());
        c.password = Some(bytes::Bytes::from_static(b"guest"));
        c
    };
    let (held, ack) = Client::connect(mqtt, login("u1", ProtocolVersion::V5)).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    let (_c, ack) = Client::connect(mqtt, login("u2", ProtocolVersion::V5)).await;
    assert_eq!(ack.reason_code, ReasonCode::QUOTA_EXCEEDED);
    let (_c, ack) = Client::connect(mqtt, login("u3", ProtocolVersion::V3_1_1)).await;
    assert_eq!(ack.reason_code, ReasonCode::SERVER_UNAVAILABLE);
    // AMQP: connection.close 530 NOT_ALLOWED at connection.open, as RabbitMQ does.
    let err = amqp_connect(amqp)
        .await
        .expect_err("over the per-user limit");
    let text = err.to_string();
    assert!(
        text.contains("NOT_ALLOWED") || text.contains("530"),
        "{text}"
    );
    held.disconnect().await;
    let text = metrics_when_served(http_addr).await;
    assert_eq!(refusals(&text, "connections_per_user", "mqtt"), 2, "{text}");
    assert_eq!(refusals(&text, "connections_per_user", "amqp"), 1, "{text}");
    // The user's slot is free again.
    let deadline = Instant::now() + WAIT;
    loop {
        let (c, ack) = Client::connect(mqtt, login("u4", ProtocolVersion::V5)).await;
        if ack.reason_code == ReasonCode::SUCCESS {
            c.disconnect().await;
            break;
        }
        assert!(Instant::now() < deadline, "the user's slot is never freed");
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_at_the_per_user_limit_takes_its_session_over() {
    let (_tmp, server) = start(&["limits.connections_per_user_max=1"]);
    let [_amqp, mqtt, _kafka, http_addr] = addrs(&server);
    let login = |id: &str| {
        let mut c = connect_packet(ProtocolVersion::V5, id, false);
        c.properties.session_expiry_interval = Some(60);
        c.username = Some("guest".into());
        c.password = Some(bytes::Bytes::from_static(b"guest"));
        c
    };
    // The device's first connection holds the user's only slot (as a half-open TCP
    // connection the device has given up on would).
    let (mut old, ack) = Client::connect(mqtt, login("device")).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    // Another client id of the same user is still refused...
    let (_c, ack) = Client::connect(mqtt, login("other")).await;
    assert_eq!(ack.reason_code, ReasonCode::QUOTA_EXCEEDED);
    // ...but the device coming back under its client id takes its session over.
    let (mut new, ack) = Client::connect(mqtt, login("device")).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert!(ack.session_present, "the persistent session is resumed");
    match old.next_within(WAIT).await {
        Some(ferrymq_mqtt_codec::Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, ReasonCode::SESSION_TAKEN_OVER)
        }
        p => panic!("expected DISCONNECT 0x8E, got {p:?}"),
    }
    // The new connection holds the slot now: it works, and others are still refused.
    new.ping().await;
    let (_c, ack) = Client::connect(mqtt, login("other")).await;
    assert_eq!(ack.reason_code, ReasonCode::QUOTA_EXCEEDED);
    let text = metrics_when_served(http_addr).await;
    assert_eq!(refusals(&text, "connections_per_user", "mqtt"), 2, "{text}");
    new.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_per_vhost_limit_is_refused_by_every_protocol() {
    let (_tmp, server) = start(&["limits.queues_per_vhost_max=3"]);
    let [amqp, mqtt, kafka, http_addr] = addrs(&server);
    // Fill the default vhost over HTTP up to the limit.
    let mut declared = 0;
    let status = loop {
        let (status, text) = http(
            http_addr,
            "PUT",
            &format!("/api/queues/%2F/q{declared}"),
            "{\"durable\":true}",
        )
        .await;
        if status != 201 {
            assert!(text.contains("queue limit"), "{text}");
            break status;
        }
        declared += 1;
        assert!(declared <= 3, "more queues than the limit");
    };
    assert_eq!(status, 429);
    // AMQP: queue.declare → channel.close 406 PRECONDITION_FAILED.
    let (conn, ch) = amqp_channel(amqp).await;
    let err = ch
        .queue_declare(
            "over".into(),
            lapin::options::QueueDeclareOptions::default(),
            Default::default(),
        )
        .await
        .expect_err("over the queue limit");
    assert!(err.to_string().contains("PRECONDITION_FAILED"), "{err}");
    // MQTT: the session queue does not fit → CONNACK 0x97.
    let (_c, ack) = Client::connect(mqtt, connect_packet(ProtocolVersion::V5, "q", true)).await;
    assert_eq!(ack.reason_code, ReasonCode::QUOTA_EXCEEDED);
    // Kafka: CreateTopics → POLICY_VIOLATION (44).
    assert_eq!(kafka_create_topic(kafka, "t").await, 44);
    let text = metrics_when_served(http_addr).await;
    for p in ["amqp", "mqtt", "kafka", "http"] {
        assert_eq!(refusals(&text, "queues_per_vhost", p), 1, "{p} in\n{text}");
    }
    // Still serving: after a delete, a declaration fits again.
    let (status, _) = http(http_addr, "DELETE", "/api/queues/%2F/q0", "").await;
    assert!((200..300).contains(&status), "{status}");
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "fits".into(),
        lapin::options::QueueDeclareOptions::default(),
        Default::default(),
    )
    .await
    .expect("room for one queue");
    conn.close(200, "bye".into()).await.ok();
}

/// CreateTopics v4 for one topic with one partition; returns its error code.
async fn kafka_create_topic(addr: SocketAddr, topic: &str) -> i16 {
    use bytes::BytesMut;
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    use kafka_protocol::messages::{
        ApiKey, CreateTopicsRequest, CreateTopicsResponse, RequestHeader, TopicName,
    };
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
    let version = 4;
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::CreateTopics as i16)
        .with_request_api_version(version)
        .with_correlation_id(7);
    let req = CreateTopicsRequest::default()
        .with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.into())))
            .with_num_partitions(1)
            .with_replication_factor(1)])
        .with_timeout_ms(5000);
    let mut body = BytesMut::new();
    header
        .encode(
            &mut body,
            ApiKey::CreateTopics.request_header_version(version),
        )
        .unwrap();
    req.encode(&mut body, version).unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&(body.len() as i32).to_be_bytes())
        .await
        .unwrap();
    s.write_all(&body).await.unwrap();
    let mut len = [0u8; 4];
    timeout(WAIT, s.read_exact(&mut len))
        .await
        .unwrap()
        .unwrap();
    let mut resp = vec![0u8; i32::from_be_bytes(len) as usize];
    timeout(WAIT, s.read_exact(&mut resp))
        .await
        .unwrap()
        .unwrap();
    // Response header v0: the correlation id.
    let mut buf = bytes::Bytes::from(resp).split_off(4);
    let r = CreateTopicsResponse::decode(&mut buf, version).unwrap();
    r.topics[0].error_code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handshakes_are_closed_after_the_configured_time() {
    let (_tmp, server) = start(&[
        "amqp.handshake_timeout_ms=300",
        "mqtt.connect_timeout_ms=300",
        "kafka.handshake_timeout_ms=300",
        "http.handshake_timeout_ms=300",
    ]);
    let [amqp, mqtt, kafka, http_addr] = addrs(&server);
    // Half a handshake each: the server closes every one of them by itself.
    let halves: [(SocketAddr, &[u8]); 4] = [
        (amqp, b"AMQP"),
        (mqtt, &[0x10, 0x20, 0x00]),
        (kafka, &[0, 0, 0, 10, 0, 18]),
        (http_addr, b"GET /health/live HTTP/1.1\r\nHost: x\r\n"),
    ];
    let mut socks = Vec::new();
    for (addr, half) in halves {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(half).await.unwrap();
        socks.push(s);
    }
    // And one that sends nothing at all.
    let mut silent = TcpStream::connect(kafka).await.unwrap();
    for s in &mut socks {
        assert!(read_to_end(s).await.is_empty(), "closed without an answer");
    }
    assert!(read_to_end(&mut silent).await.is_empty());
    // Everyone else is still served, and the closes are counted.
    drop(amqp_admitted(amqp).await);
    Client::v5(mqtt, "ok", true).await.disconnect().await;
    assert!(kafka_served(kafka).await);
    let text = metrics_when_served(http_addr).await;
    for (p, n) in [("amqp", 1), ("mqtt", 1), ("kafka", 2), ("http", 1)] {
        assert_eq!(refusals(&text, "handshake_timeout", p), n, "{p} in\n{text}");
    }
}

/// `(ready, unacked)` of a queue of the default vhost, from the HTTP API.
async fn queue_counts(addr: SocketAddr, queue: &str) -> (u64, u64) {
    let (status, text) = http(addr, "GET", &format!("/api/queues/%2F/{queue}"), "").await;
    assert_eq!(status, 200, "{text}");
    let body = &text[text.find("\r\n\r\n").map_or(0, |i| i + 4)..];
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (
        v["messages_ready"].as_u64().unwrap_or(u64::MAX),
        v["messages_unacked"].as_u64().unwrap_or(u64::MAX),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_window_bounds_bytes_waiting_for_a_client() {
    use futures_lite::StreamExt;
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
    // Two 4000-byte messages fit in the window, a third does not.
    let (_tmp, server) = start(&["limits.consumer_window_max_bytes=10000"]);
    let [amqp, _mqtt, _kafka, http_addr] = addrs(&server);
    let (conn, ch) = amqp_channel(amqp).await;
    ch.queue_declare("w".into(), Default::default(), Default::default())
        .await
        .unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    for _ in 0..5 {
        ch.basic_publish(
            "".into(),
            "w".into(),
            BasicPublishOptions::default(),
            &[7u8; 4000],
            Default::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    // Unlimited prefetch: only the byte window holds deliveries back.
    let mut consumer = ch
        .basic_consume(
            "w".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let first = timeout(WAIT, consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let _second = timeout(WAIT, consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while queue_counts(http_addr, "w").await != (3, 2) {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            queue_counts(http_addr, "w").await
        );
        tokio::task::yield_now().await;
    }
    // An ack makes room for exactly one more.
    first.ack(BasicAckOptions::default()).await.unwrap();
    let _third = timeout(WAIT, consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while queue_counts(http_addr, "w").await != (2, 2) {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            queue_counts(http_addr, "w").await
        );
        tokio::task::yield_now().await;
    }
    conn.close(200, "bye".into()).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_per_channel_and_message_size_are_refused_and_counted() {
    use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
    let (_tmp, server) = start(&[
        "amqp.consumers_per_channel_max=1",
        "limits.message_size_max_bytes=1000",
    ]);
    let [amqp, _mqtt, _kafka, http_addr] = addrs(&server);
    let (conn, ch) = amqp_channel(amqp).await;
    ch.queue_declare("c".into(), Default::default(), Default::default())
        .await
        .unwrap();
    let consume = |tag: &'static str| {
        ch.basic_consume(
            "c".into(),
            tag.into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
    };
    // Kept: lapin cancels a consumer when its handle is dropped, and that cancel would race
    // the second consume.
    let _one = consume("one").await.unwrap();
    let err = consume("two").await.expect_err("one consumer per channel");
    assert!(err.to_string().contains("PRECONDITION_FAILED"), "{err}");
    // Message size: channel.close 406 on the publishing channel.
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let published = ch
        .basic_publish(
            "".into(),
            "c".into(),
            BasicPublishOptions::default(),
            &[0u8; 2000],
            Default::default(),
        )
        .await;
    let refused = match published {
        Ok(confirm) => confirm.await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a 2000-byte message over a 1000-byte limit");
    // The connection still serves other channels.
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare("d".into(), Default::default(), Default::default())
        .await
        .unwrap();
    let text = metrics_when_served(http_addr).await;
    assert_eq!(
        refusals(&text, "consumers_per_channel", "amqp"),
        1,
        "{text}"
    );
    assert_eq!(refusals(&text, "message_size", "amqp"), 1, "{text}");
    conn.close(200, "bye".into()).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sasl_must_complete_within_the_handshake_timeout() {
    let (_tmp, server) = start(&[
        "kafka.sasl_mechanisms=PLAIN",
        "kafka.handshake_timeout_ms=300",
    ]);
    let [_amqp, _mqtt, kafka, http_addr] = addrs(&server);
    // ApiVersions is answered (allowed before SASL), then nothing: closed in time.
    let mut s = TcpStream::connect(kafka).await.unwrap();
    s.write_all(KAFKA_API_VERSIONS).await.unwrap();
    let mut len = [0u8; 4];
    timeout(WAIT, s.read_exact(&mut len))
        .await
        .unwrap()
        .unwrap();
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    timeout(WAIT, s.read_exact(&mut body))
        .await
        .unwrap()
        .unwrap();
    assert!(read_to_end(&mut s).await.is_empty(), "closed without more");
    let text = metrics_when_served(http_addr).await;
    assert_eq!(refusals(&text, "handshake_timeout", "kafka"), 1, "{text}");
    // Others are still served (checked last: this probe does not authenticate either).
    assert!(kafka_served(kafka).await);
}

/// CONNECT over MQTT-over-WebSocket (`/mqtt` on the HTTP listener) as guest; the CONNACK's
/// reason code.
fn ws_connect_reason(http_addr: SocketAddr, v: ProtocolVersion) -> ReasonCode {
    use ferrymq_mqtt_codec::{decode, Packet, PROTOCOL_MAX_PACKET_SIZE};
    use tungstenite::client::IntoClientRequest;
    let stream = std::net::TcpStream::connect(http_addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut req = format!("ws://{http_addr}/mqtt")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
    let (mut ws, _) = tungstenite::client(req, stream).expect("WebSocket handshake");
    let mut c = connect_packet(v, "ws", true);
    c.username = Some("guest".into());
    c.password = Some(bytes::Bytes::from_static(b"guest"));
    let b = Packet::Connect(Box::new(c)).to_bytes(v).unwrap().freeze();
    ws.send(tungstenite::Message::Binary(b)).unwrap();
    let mut buf = bytes::BytesMut::new();
    loop {
        if let Some(p) = decode(&mut buf, v, PROTOCOL_MAX_PACKET_SIZE).unwrap() {
            match p {
                Packet::Connack(a) => return a.reason_code,
                p => panic!("expected CONNACK, got {p:?}"),
            }
        }
        match ws.read().expect("a CONNACK") {
            tungstenite::Message::Binary(b) => buf.extend_from_slice(&b),
            m => panic!("unexpected {m:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_websocket_counts_for_its_user() {
    let (_tmp, server) = start(&["limits.connections_per_user_max=1"]);
    let [_amqp, mqtt, _kafka, http_addr] = addrs(&server);
    let mut c = connect_packet(ProtocolVersion::V5, "tcp", true);
    c.username = Some("guest".into());
    c.password = Some(bytes::Bytes::from_static(b"guest"));
    let (held, ack) = Client::connect(mqtt, c).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    let reason =
        tokio::task::spawn_blocking(move || ws_connect_reason(http_addr, ProtocolVersion::V5))
            .await
            .unwrap();
    assert_eq!(reason, ReasonCode::QUOTA_EXCEEDED);
    held.disconnect().await;
    let text = metrics_when_served(http_addr).await;
    assert_eq!(refusals(&text, "connections_per_user", "mqtt"), 1, "{text}");
    // The user's slot is free: the WebSocket session is accepted now.
    let deadline = Instant::now() + WAIT;
    loop {
        let reason =
            tokio::task::spawn_blocking(move || ws_connect_reason(http_addr, ProtocolVersion::V5))
                .await
                .unwrap();
        if reason == ReasonCode::SUCCESS {
            break;
        }
        assert!(Instant::now() < deadline, "never accepted: {reason:?}");
    }
}

/// A TCP connection whose receive buffer is small, so that what the server sends and the
/// client does not read stays in the server's buffer.
async fn small_window(addr: SocketAddr) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(addr).await.unwrap()
}

/// The consumers of a queue in the default vhost, per the management API.
async fn consumers(addr: SocketAddr, queue: &str) -> u64 {
    let (status, text) = http(addr, "GET", &format!("/api/queues/%2F/{queue}"), "").await;
    assert_eq!(status, 200, "{text}");
    let body = &text[text.find("\r\n\r\n").map_or(0, |i| i + 4)..];
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["consumers"].as_u64().unwrap_or(u64::MAX)
}

/// Waits until `/metrics` counts `n` refusals of `limit` for `protocol`.
async fn refusals_reach(http_addr: SocketAddr, limit: &str, protocol: &str, n: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = metrics_when_served(http_addr).await;
        if refusals(&text, limit, protocol) >= n {
            return;
        }
        assert!(Instant::now() < deadline, "no {limit} refusal: {text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_connection_buffer_refuses_a_flood_and_paces_a_slow_reader() {
    use ferrymq_mqtt_codec::{Packet, QoS};
    const N: u32 = 200;
    let (_tmp, server) = start(&["limits.connection_buffer_max_bytes=262144"]);
    let [_amqp, mqtt_addr, _kafka, http_addr] = addrs(&server);
    let body = |i: u32| {
        let mut b = vec![0u8; 64 * 1024];
        b[..4].copy_from_slice(&i.to_be_bytes());
        b
    };
    // 128 retained messages of 64 KiB: 8 MiB sent at once to whoever subscribes to r/#
    // (more than loopback TCP buffers take from a client that does not read).
    let mut publisher = Client::v311(mqtt_addr, "pub", true).await;
    for i in 0..128u32 {
        publisher
            .publish(&format!("r/{i}"), &body(i), QoS::AtLeastOnce, true, 1)
            .await;
    }
    // A persistent session that subscribes over a small TCP window and does not read on.
    let mut c = connect_packet(ProtocolVersion::V5, "slow", false);
    c.properties.session_expiry_interval = Some(3600);
    let (mut slow, ack) = Client::connect_over(small_window(mqtt_addr).await, c.clone()).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    slow.subscribe(1, "r/#", QoS::AtLeastOnce).await;
    refusals_reach(http_addr, "connection_buffer", "mqtt", 1).await;
    // What was owed, then DISCONNECT "quota exceeded", then the end.
    let mut last = None;
    while let Some(p) = slow.next().await {
        last = Some(p);
    }
    match last {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::QUOTA_EXCEEDED),
        p => panic!("expected DISCONNECT 0x97 last, got {p:?}"),
    }
    // The session survives; a reader slower than the broker is paced by its window
    // (half the connection buffer), not refused: every message arrives.
    let (mut back, ack) = Client::connect(mqtt_addr, c).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert!(ack.session_present);
    for i in 0..N {
        publisher
            .publish("r/live", &body(i), QoS::AtLeastOnce, false, 1)
            .await;
    }
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < N as usize {
        let p = back.expect_publish().await;
        if p.topic == "r/live" {
            seen.insert(u32::from_be_bytes([
                p.payload[0],
                p.payload[1],
                p.payload[2],
                p.payload[3],
            ]));
        }
    }
    assert_eq!(seen, (0..N).collect());
    let text = metrics_when_served(http_addr).await;
    assert_eq!(refusals(&text, "connection_buffer", "mqtt"), 1, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_consumer_that_does_not_read_is_closed_with_resource_error() {
    use ferrymq_amqp_codec::{
        decode_frame, encode_frame, BasicConsume, ChannelOpen, ConnectionOpen, ConnectionStartOk,
        ConnectionTuneOk, Frame, Method,
    };
    use futures_lite::StreamExt;
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
    // 4 MiB: loopback TCP buffers alone take a few MiB that the client does not read.
    let (_tmp, server) = start(&["limits.connection_buffer_max_bytes=4194304"]);
    let [amqp, _mqtt, _kafka, http_addr] = addrs(&server);
    let (conn, ch) = amqp_channel(amqp).await;
    // Six queues, one consumer each on one connection that does not read. One consumer
    // may hold half the connection buffer (2 MiB, 32 messages of 64 KiB): six hold 12 MiB.
    const QUEUES: usize = 6;
    const PER_QUEUE: usize = 32;
    ch.confirm_select(Default::default()).await.unwrap();
    for q in 0..QUEUES {
        ch.queue_declare(
            format!("slow{q}").as_str().into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
    }
    // A raw client (prefetch unlimited, acks on) that never reads after basic.consume.
    let mut s = small_window(amqp).await;
    let mut buf = bytes::BytesMut::new();
    async fn next(s: &mut TcpStream, buf: &mut bytes::BytesMut) -> Option<Frame> {
        loop {
            if let Some(f) = decode_frame(buf, 1 << 20).expect("a well-formed frame") {
                return Some(f);
            }
            match timeout(WAIT, s.read_buf(buf))
                .await
                .expect("a frame in time")
            {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }
    async fn send(s: &mut TcpStream, channel: u16, method: Method) {
        let mut out = bytes::BytesMut::new();
        encode_frame(&Frame::Method { channel, method }, &mut out);
        s.write_all(&out).await.unwrap();
    }
    s.write_all(AMQP_HEADER).await.unwrap();
    next(&mut s, &mut buf).await; // connection.start
    send(
        &mut s,
        0,
        Method::ConnectionStartOk(ConnectionStartOk {
            client_properties: Default::default(),
            mechanism: "PLAIN".into(),
            response: bytes::Bytes::from_static(b"\0guest\0guest"),
            locale: "en_US".into(),
        }),
    )
    .await;
    next(&mut s, &mut buf).await; // connection.tune
    send(
        &mut s,
        0,
        Method::ConnectionTuneOk(ConnectionTuneOk {
            channel_max: 16,
            frame_max: 131072,
            heartbeat: 0,
        }),
    )
    .await;
    send(
        &mut s,
        0,
        Method::ConnectionOpen(ConnectionOpen {
            virtual_host: "/".into(),
        }),
    )
    .await;
    next(&mut s, &mut buf).await; // connection.open-ok
    send(&mut s, 1, Method::ChannelOpen(ChannelOpen {})).await;
    next(&mut s, &mut buf).await; // channel.open-ok
    for q in 0..QUEUES {
        send(
            &mut s,
            1,
            Method::BasicConsume(BasicConsume {
                queue: format!("slow{q}"),
                consumer_tag: format!("c{q}"),
                no_local: false,
                no_ack: false,
                exclusive: false,
                no_wait: false,
                arguments: Default::default(),
            }),
        )
        .await;
    }
    for q in 0..QUEUES {
        let deadline = Instant::now() + WAIT;
        while consumers(http_addr, &format!("slow{q}")).await != 1 {
            assert!(Instant::now() < deadline, "consumer on slow{q}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // 32 messages of 64 KiB per queue, from another connection.
    for q in 0..QUEUES {
        for _ in 0..PER_QUEUE {
            ch.basic_publish(
                "".into(),
                format!("slow{q}").as_str().into(),
                BasicPublishOptions::default(),
                &[1u8; 64 * 1024],
                Default::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
    }
    refusals_reach(http_addr, "connection_buffer", "amqp", 1).await;
    // What was owed, then connection.close 506.
    let mut close = None;
    while let Some(f) = next(&mut s, &mut buf).await {
        if let Frame::Method {
            method: Method::ConnectionClose(c),
            ..
        } = f
        {
            close = Some(c);
        }
    }
    assert_eq!(close.expect("connection.close").reply_code, 506);
    // Nothing was lost: every delivery went back to its queue.
    for q in 0..QUEUES {
        let name = format!("slow{q}");
        let deadline = Instant::now() + WAIT;
        while queue_counts(http_addr, &name).await != (PER_QUEUE as u64, 0) {
            assert!(
                Instant::now() < deadline,
                "{:?}",
                queue_counts(http_addr, &name).await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // A client that reads gets them all on one connection, windowed, not refused.
    let mut got = 0;
    for q in 0..QUEUES {
        let mut consumer = ch
            .basic_consume(
                format!("slow{q}").as_str().into(),
                format!("r{q}").as_str().into(),
                BasicConsumeOptions::default(),
                Default::default(),
            )
            .await
            .unwrap();
        for _ in 0..PER_QUEUE {
            let d = timeout(WAIT, consumer.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(d.data.len(), 64 * 1024);
            d.ack(BasicAckOptions::default()).await.unwrap();
            got += 1;
        }
    }
    assert_eq!(got, QUEUES * PER_QUEUE);
    let text = metrics_when_served(http_addr).await;
    assert_eq!(refusals(&text, "connection_buffer", "amqp"), 1, "{text}");
    conn.close(200, "bye".into()).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_requests_past_the_connection_buffer_are_refused() {
    let (_tmp, server) = start(&["limits.connection_buffer_max_bytes=65536"]);
    let [_amqp, _mqtt, kafka, http_addr] = addrs(&server);
    // A request of 100,000 bytes (under kafka.max_request_bytes) would take the
    // connection past 64 KiB: closed before its body is read.
    let mut s = TcpStream::connect(kafka).await.unwrap();
    s.write_all(&100_000i32.to_be_bytes()).await.unwrap();
    assert!(
        read_to_end(&mut s).await.is_empty(),
        "closed without an answer"
    );
    refusals_reach(http_addr, "connection_buffer", "kafka", 1).await;
    let text = metrics_when_served(http_addr).await;
    assert_eq!(refusals(&text, "message_size", "kafka"), 0, "{text}");
    assert!(kafka_served(kafka).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_kafka_connections_are_closed() {
    let (_tmp, server) = start(&["kafka.connections_max_idle_ms=300"]);
    let [_, _, kafka, _] = addrs(&server);
    let mut s = TcpStream::connect(kafka).await.unwrap();
    // Requests are answered; then the client sends nothing and the broker closes the
    // connection by itself.
    for _ in 0..2 {
        s.write_all(KAFKA_API_VERSIONS).await.unwrap();
        let mut len = [0u8; 4];
        timeout(WAIT, s.read_exact(&mut len))
            .await
            .expect("an answer in time")
            .unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).await.unwrap();
        assert_eq!(&body[..4], &[0, 0, 0, 1], "the request's correlation id");
    }
    assert!(
        read_to_end(&mut s).await.is_empty(),
        "closed, nothing more sent"
    );
    // New connections are served as before.
    assert!(kafka_served(kafka).await);
}

/// `ferrymq_connections{protocol="kafka"}` (0 when absent).
fn kafka_connections(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("ferrymq_connections{protocol=\"kafka\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_answers_the_client_does_not_read_end_the_connection() {
    let (_tmp, server) = start(&["kafka.connections_max_idle_ms=300"]);
    let [_, _, kafka, http_addr] = addrs(&server);
    let mut s = TcpStream::connect(kafka).await.unwrap();
    // 100,000 pipelined requests (1.4 MB) whose answers (~25 MB) fill both sockets' buffers;
    // then the client sends nothing more and reads nothing.
    const N: usize = 100_000;
    s.write_all(&KAFKA_API_VERSIONS.repeat(N)).await.unwrap();
    let deadline = Instant::now() + WAIT;
    let mut seen = false;
    loop {
        let open = kafka_connections(&metrics_when_served(http_addr).await);
        seen |= open == 1;
        if seen && open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the broker never gave up on the connection (open: {open})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // It closed before answering everything: what was sent is whole answers, then the end.
    let got = read_to_end(&mut s).await;
    let (mut answers, mut at) = (0, 0);
    while at + 4 <= got.len() {
        at += 4 + u32::from_be_bytes(got[at..at + 4].try_into().unwrap()) as usize;
        answers += 1;
    }
    assert!(answers > 0 && answers < N, "{answers} answers");
    // Not the buffer limit: the idle limit on unread answers.
    let text = metrics_when_served(http_addr).await;
    assert_eq!(refusals(&text, "connection_buffer", "kafka"), 0, "{text}");
    assert!(kafka_served(kafka).await);
}
