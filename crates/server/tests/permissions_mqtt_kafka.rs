//! Issue #9, permissions in MQTT and Kafka against the real binary: restricted users made
//! through the management API, then one refusal per operation (MQTT 5 and 3.1.1 reason
//! codes; Kafka TOPIC_ / GROUP_AUTHORIZATION_FAILED over SASL PLAIN), each next to the same
//! operation on a name the user may use, and refused publishes and produces store nothing.

mod common;
#[path = "common/mqtt.rs"]
mod mqtt;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use common::{listening, serve, Server};
use ferrymq_mqtt_codec::{Connect, Packet, ProtocolVersion, Publish, QoS, ReasonCode, Will};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use mqtt::{connect_packet, Client};

// ------------------------------------------------------------------ management API

/// `PUT path` with `body` as guest; the status code.
fn put(addr: SocketAddr, path: &str, body: &str) -> u16 {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("guest:guest");
    write!(
        s,
        "PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {out:?}"))
}

/// Creates user `name` (password `pw`) with these patterns on vhost `/`.
fn user(http: SocketAddr, name: &str, configure: &str, write: &str, read: &str) {
    let s = put(
        http,
        &format!("/api/users/{name}"),
        r#"{"password":"pw","tags":[]}"#,
    );
    assert!(s == 201 || s == 204 || s == 200, "PUT user: {s}");
    let body = format!(
        r#"{{"configure":{},"write":{},"read":{}}}"#,
        json(configure),
        json(write),
        json(read)
    );
    let s = put(http, &format!("/api/permissions/%2F/{name}"), &body);
    assert!((200..300).contains(&s), "PUT permission: {s}");
}

fn json(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\"))
}

// ------------------------------------------------------------------ MQTT

fn login(v: ProtocolVersion, id: &str, user: &str) -> Connect {
    let mut c = connect_packet(v, id, true);
    c.username = Some(user.into());
    c.password = Some(Bytes::from_static(b"pw"));
    c
}

async fn connected(addr: SocketAddr, c: Connect) -> Client {
    let (cl, a) = Client::connect(addr, c).await;
    assert_eq!(a.reason_code, ReasonCode::SUCCESS);
    cl
}

fn mqtt_server(tmp: &std::path::Path) -> (Server, SocketAddr) {
    let server = serve(tmp, &tmp.join("data"), &[]);
    let http = listening(&server, "http");
    // Session queues of client ids starting with "ok", shared groups starting with "ok".
    user(
        http,
        "app",
        r"^mqtt-(subscription|shared)-ok",
        r"^(amq\.topic$|mqtt-(subscription|shared)-ok)",
        r"^amq\.topic$",
    );
    // May subscribe, not publish (no write on amq.topic).
    user(http, "nopub", r"^mqtt-", r"^mqtt-", r"^amq\.topic$");
    // May publish, not subscribe (no read on amq.topic).
    user(http, "nosub", r"^mqtt-", r"^(amq\.topic$|mqtt-)", "");
    let addr = listening(&server, "MQTT");
    (server, addr)
}

const SHORT: Duration = Duration::from_millis(500);

/// Sends a PUBLISH without waiting for its acknowledgement.
async fn send_publish(c: &mut Client, topic: &str, qos: QoS, retain: bool, pid: u16) {
    c.send(Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: topic.into(),
        packet_id: (qos != QoS::AtMostOnce).then_some(pid),
        properties: Default::default(),
        payload: Bytes::from_static(b"x"),
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_connect_needs_configure_on_a_new_session_queue_and_write_for_a_will() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, addr) = mqtt_server(tmp.path());
    for v in [ProtocolVersion::V5, ProtocolVersion::V3_1_1] {
        let (_, a) = Client::connect(addr, login(v, "bad-client", "app")).await;
        assert_eq!(a.reason_code, ReasonCode::NOT_AUTHORIZED, "{v:?}");
        connected(addr, login(v, "ok-client", "app"))
            .await
            .disconnect()
            .await;
        // A will needs write on the exchange.
        let mut c = login(v, "mqtt-will", "nopub");
        c.will = Some(Will {
            topic: "w/t".into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
        });
        let (_, a) = Client::connect(addr, c.clone()).await;
        assert_eq!(a.reason_code, ReasonCode::NOT_AUTHORIZED, "{v:?}");
        c.username = Some("nosub".into());
        connected(addr, c).await.disconnect().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_subscribe_needs_read_on_the_exchange_and_write_on_the_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, addr) = mqtt_server(tmp.path());
    // A retained message that refused subscriptions must not deliver.
    let mut g = Client::v5(addr, "guest-pub", true).await;
    g.publish("r/t", b"kept", QoS::AtLeastOnce, true, 1).await;

    for (v, refused) in [(ProtocolVersion::V5, 0x87), (ProtocolVersion::V3_1_1, 0x80)] {
        // No read on amq.topic.
        let mut c = connected(addr, login(v, "mqtt-nosub", "nosub")).await;
        let a = c.subscribe(1, "r/#", QoS::AtLeastOnce).await;
        assert_eq!(a.reason_codes, vec![ReasonCode(refused)], "{v:?}");
        assert!(
            c.quiet(SHORT).await,
            "no retained message on a refused subscription"
        );
        c.disconnect().await;
        // Allowed: read on amq.topic, write on its session queue; the retained message comes.
        let mut c = connected(addr, login(v, "ok-sub", "app")).await;
        let a = c.subscribe(1, "r/#", QoS::AtLeastOnce).await;
        assert_eq!(a.reason_codes, vec![ReasonCode(1)], "{v:?}");
        let p = c.expect_publish().await;
        assert_eq!(&p.payload[..], b"kept");
        // Shared subscriptions: write (and configure) on the group's queue.
        let a = c.subscribe(2, "$share/nogroup/s/t", QoS::AtMostOnce).await;
        assert_eq!(a.reason_codes, vec![ReasonCode(refused)], "{v:?}");
        let a = c.subscribe(3, "$share/okgroup/s/t", QoS::AtMostOnce).await;
        assert_eq!(a.reason_codes, vec![ReasonCode(0)], "{v:?}");
        c.disconnect().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_publish_needs_write_on_the_exchange() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, addr) = mqtt_server(tmp.path());
    // Sees everything published on p/#.
    let mut watcher = Client::v5(addr, "watcher", true).await;
    watcher.subscribe(1, "p/#", QoS::AtLeastOnce).await;

    // MQTT 5: QoS 0 dropped silently, QoS 1 PUBACK 0x87, QoS 2 PUBREC 0x87; retained
    // messages not stored.
    let mut c = connected(addr, login(ProtocolVersion::V5, "mqtt-np5", "nopub")).await;
    send_publish(&mut c, "p/0", QoS::AtMostOnce, true, 0).await;
    send_publish(&mut c, "p/1", QoS::AtLeastOnce, true, 1).await;
    match c.recv().await {
        Packet::Puback(a) => assert_eq!(
            (a.packet_id, a.reason_code),
            (1, ReasonCode::NOT_AUTHORIZED)
        ),
        p => panic!("expected PUBACK, got {p:?}"),
    }
    send_publish(&mut c, "p/2", QoS::ExactlyOnce, false, 2).await;
    match c.recv().await {
        Packet::Pubrec(a) => assert_eq!(
            (a.packet_id, a.reason_code),
            (2, ReasonCode::NOT_AUTHORIZED)
        ),
        p => panic!("expected PUBREC, got {p:?}"),
    }
    // The connection stays usable.
    c.ping().await;
    c.disconnect().await;

    // MQTT 3.1.1: QoS 0 dropped, the connection stays; QoS 1 closes it (no failure code).
    let mut c = connected(addr, login(ProtocolVersion::V3_1_1, "mqtt-np3", "nopub")).await;
    send_publish(&mut c, "p/3", QoS::AtMostOnce, false, 0).await;
    c.ping().await;
    send_publish(&mut c, "p/4", QoS::AtLeastOnce, false, 4).await;
    assert!(
        c.next().await.is_none(),
        "closed after a refused QoS 1 publish"
    );

    // Nothing was routed, nothing retained.
    assert!(
        watcher.quiet(SHORT).await,
        "a refused publish was delivered"
    );
    let mut late = Client::v5(addr, "late", true).await;
    late.subscribe(1, "p/#", QoS::AtLeastOnce).await;
    assert!(
        late.quiet(SHORT).await,
        "a refused retained publish was stored"
    );

    // Allowed: a user with write on amq.topic.
    let mut c = connected(addr, login(ProtocolVersion::V5, "mqtt-pub", "nosub")).await;
    c.publish("p/ok", b"yes", QoS::AtLeastOnce, false, 1).await;
    let p: Publish = watcher.expect_publish().await;
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("p/ok", &b"yes"[..]));
}

// ------------------------------------------------------------------ Kafka

/// A blocking Kafka client over one TCP connection.
struct Kc {
    s: TcpStream,
    corr: i32,
}

impl Kc {
    /// Connects and authenticates with SASL PLAIN (SaslHandshake v1, SaslAuthenticate v2).
    fn login(addr: SocketAddr, user: &str, password: &str) -> Kc {
        let s = TcpStream::connect(addr).expect("connect to the Kafka listener");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut kc = Kc { s, corr: 0 };
        let h = kc.call(
            1,
            &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
        );
        assert_eq!(h.error_code, 0);
        let a = kc.call(
            2,
            &SaslAuthenticateRequest::default()
                .with_auth_bytes(Bytes::from(format!("\0{user}\0{password}"))),
        );
        assert_eq!(a.error_code, 0, "{:?}", a.error_message);
        kc
    }

    fn call<R: Request>(&mut self, v: i16, req: &R) -> R::Response {
        self.corr += 1;
        let key = ApiKey::try_from(R::KEY).unwrap();
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(v)
            .with_correlation_id(self.corr)
            .with_client_id(Some(StrBytes::from_static_str("permissions-test")));
        let mut b = BytesMut::new();
        header
            .encode(&mut b, key.request_header_version(v))
            .unwrap();
        req.encode(&mut b, v).unwrap();
        self.s.write_all(&(b.len() as i32).to_be_bytes()).unwrap();
        self.s.write_all(&b).unwrap();
        let mut len = [0u8; 4];
        self.s.read_exact(&mut len).expect("a response");
        let mut r = vec![0u8; i32::from_be_bytes(len) as usize];
        self.s.read_exact(&mut r).expect("a response");
        let mut r = Bytes::from(r);
        let hv = <R::Response as HeaderVersion>::header_version(v);
        let h = ResponseHeader::decode(&mut r, hv).unwrap();
        assert_eq!(h.correlation_id, self.corr);
        R::Response::decode(&mut r, v).unwrap()
    }
}

const TOPIC_DENIED: i16 = 29;
const GROUP_DENIED: i16 = 30;

fn tn(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn gid(s: &str) -> GroupId {
    GroupId(StrBytes::from_string(s.to_string()))
}

fn one_record() -> Bytes {
    let r = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: 1000,
        key: None,
        value: Some(Bytes::from_static(b"v")),
        headers: Default::default(),
    };
    let mut b = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut b,
        &[r],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    b.freeze()
}

fn produce(kc: &mut Kc, topic: &str) -> i16 {
    let p = produce_request::PartitionProduceData::default()
        .with_index(0)
        .with_records(Some(one_record()));
    let t = produce_request::TopicProduceData::default()
        .with_name(tn(topic))
        .with_partition_data(vec![p]);
    let r = kc.call(
        9,
        &ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![t]),
    );
    r.responses[0].partition_responses[0].error_code
}

fn fetch(kc: &mut Kc, topic: &str) -> i16 {
    let p = fetch_request::FetchPartition::default()
        .with_partition(0)
        .with_fetch_offset(0)
        .with_partition_max_bytes(1 << 20);
    let t = fetch_request::FetchTopic::default()
        .with_topic(tn(topic))
        .with_partitions(vec![p]);
    let r = kc.call(
        11,
        &FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(0)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_session_epoch(-1)
            .with_topics(vec![t]),
    );
    r.responses[0].partitions[0].error_code
}

/// ListOffsets latest: (error code, offset).
fn latest(kc: &mut Kc, topic: &str) -> (i16, i64) {
    let p = list_offsets_request::ListOffsetsPartition::default()
        .with_partition_index(0)
        .with_timestamp(-1);
    let t = list_offsets_request::ListOffsetsTopic::default()
        .with_name(tn(topic))
        .with_partitions(vec![p]);
    let r = kc.call(
        7,
        &ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![t]),
    );
    let p = &r.topics[0].partitions[0];
    (p.error_code, p.offset)
}

fn create(kc: &mut Kc, topic: &str) -> i16 {
    let t = create_topics_request::CreatableTopic::default()
        .with_name(tn(topic))
        .with_num_partitions(1)
        .with_replication_factor(1);
    let r = kc.call(
        5,
        &CreateTopicsRequest::default()
            .with_topics(vec![t])
            .with_timeout_ms(10_000),
    );
    r.topics[0].error_code
}

/// Metadata v9 for `topics` (None: all), with authorized operations: (name, error, ops).
fn metadata(kc: &mut Kc, topics: Option<&[&str]>, auto: bool) -> Vec<(String, i16, i32)> {
    let req = MetadataRequest::default()
        .with_topics(topics.map(|ts| {
            ts.iter()
                .map(|t| metadata_request::MetadataRequestTopic::default().with_name(Some(tn(t))))
                .collect()
        }))
        .with_allow_auto_topic_creation(auto)
        .with_include_topic_authorized_operations(true);
    let r = kc.call(9, &req);
    r.topics
        .into_iter()
        .map(|t| {
            (
                t.name.map(|n| n.0.to_string()).unwrap_or_default(),
                t.error_code,
                t.topic_authorized_operations,
            )
        })
        .collect()
}

/// Starts the server with SASL PLAIN, the topics `ok-t`, `ro-t`, `wo-t` and `secret`, and
/// user `app`: configure on `ok-*`, write on `ok-*` and `wo-*`, read on `ok-*`, `ro-*` and
/// the group `grp-ok`.
fn kafka_server(tmp: &std::path::Path) -> (Server, SocketAddr) {
    let server = serve(
        tmp,
        &tmp.join("data"),
        &["--set", "kafka.sasl_mechanisms=PLAIN"],
    );
    let http = listening(&server, "http");
    user(http, "app", r"^ok-", r"^(ok-|wo-)", r"^(ok-|ro-|grp-ok$)");
    let addr = listening(&server, "Kafka");
    let mut guest = Kc::login(addr, "guest", "guest");
    for t in ["ok-t", "ro-t", "wo-t", "secret"] {
        assert_eq!(create(&mut guest, t), 0);
    }
    (server, addr)
}

#[test]
fn kafka_produce_fetch_and_offsets_need_write_and_read() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, addr) = kafka_server(tmp.path());
    let mut kc = Kc::login(addr, "app", "pw");
    let mut guest = Kc::login(addr, "guest", "guest");

    // Produce: write.
    assert_eq!(produce(&mut kc, "ro-t"), TOPIC_DENIED);
    assert_eq!(
        latest(&mut guest, "ro-t"),
        (0, 0),
        "a refused produce stored nothing"
    );
    assert_eq!(produce(&mut kc, "ok-t"), 0);
    assert_eq!(produce(&mut kc, "wo-t"), 0);
    assert_eq!(latest(&mut guest, "ok-t"), (0, 1));

    // Fetch and ListOffsets: read.
    assert_eq!(fetch(&mut kc, "wo-t"), TOPIC_DENIED);
    assert_eq!(fetch(&mut kc, "ok-t"), 0);
    assert_eq!(latest(&mut kc, "wo-t").0, TOPIC_DENIED);
    assert_eq!(latest(&mut kc, "ro-t"), (0, 0));

    // OffsetForLeaderEpoch: read.
    let epoch = |kc: &mut Kc, topic: &str| {
        let p = offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
            .with_partition(0)
            .with_leader_epoch(0)
            .with_current_leader_epoch(-1);
        let t = offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
            .with_topic(tn(topic))
            .with_partitions(vec![p]);
        let r = kc.call(
            4,
            &OffsetForLeaderEpochRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![t]),
        );
        r.topics[0].partitions[0].error_code
    };
    assert_eq!(epoch(&mut kc, "wo-t"), TOPIC_DENIED);
    assert_eq!(epoch(&mut kc, "ok-t"), 0);
}

#[test]
fn kafka_metadata_lists_what_the_user_may_use_and_creates_only_with_configure() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, addr) = kafka_server(tmp.path());
    let mut kc = Kc::login(addr, "app", "pw");

    let mut all: Vec<String> = metadata(&mut kc, None, false)
        .into_iter()
        .map(|t| t.0)
        .collect();
    all.sort();
    assert_eq!(all, ["ok-t", "ro-t", "wo-t"], "no permission on 'secret'");

    let named = metadata(&mut kc, Some(&["secret", "ro-t", "ok-t"]), false);
    assert_eq!(named[0].1, TOPIC_DENIED);
    // ro-t: READ (3), DESCRIBE (8), DESCRIBE_CONFIGS (10); ok-t everything.
    assert_eq!(
        (named[1].1, named[1].2),
        (0, (1 << 3) | (1 << 8) | (1 << 10))
    );
    let ok_ops = named[2].2;
    for op in [3, 4, 5, 6, 7, 8, 10, 11] {
        assert!(ok_ops & (1 << op) != 0, "op {op} in {ok_ops:#x}");
    }

    // Auto-creation needs configure: ro-new is describable but not creatable.
    let r = metadata(&mut kc, Some(&["ro-new", "ok-new", "zz-new"]), true);
    assert_eq!(r[0].1, 3, "UNKNOWN_TOPIC_OR_PARTITION, not created");
    assert_eq!(r[1].1, 0, "created");
    assert_eq!(r[2].1, TOPIC_DENIED);
    let mut guest = Kc::login(addr, "guest", "guest");
    let seen = metadata(&mut guest, Some(&["ro-new", "ok-new"]), false);
    assert_eq!((seen[0].1, seen[1].1), (3, 0));
}

#[test]
fn kafka_admin_apis_need_configure_and_describe_configs_needs_read() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, addr) = kafka_server(tmp.path());
    let mut kc = Kc::login(addr, "app", "pw");

    // CreateTopics.
    assert_eq!(create(&mut kc, "ro-x"), TOPIC_DENIED);
    assert_eq!(create(&mut kc, "ok-x"), 0);

    // CreatePartitions.
    let grow = |kc: &mut Kc, topic: &str| {
        let t = create_partitions_request::CreatePartitionsTopic::default()
            .with_name(tn(topic))
            .with_count(2);
        let r = kc.call(
            1,
            &CreatePartitionsRequest::default()
                .with_topics(vec![t])
                .with_timeout_ms(10_000),
        );
        r.results[0].error_code
    };
    assert_eq!(grow(&mut kc, "ro-t"), TOPIC_DENIED);
    assert_eq!(grow(&mut kc, "ok-t"), 0);

    // AlterConfigs and IncrementalAlterConfigs.
    let alter = |kc: &mut Kc, topic: &str| {
        let c = alter_configs_request::AlterableConfig::default()
            .with_name(StrBytes::from_static_str("retention.ms"))
            .with_value(Some(StrBytes::from_static_str("3600000")));
        let res = alter_configs_request::AlterConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_string(topic.into()))
            .with_configs(vec![c]);
        let r = kc.call(1, &AlterConfigsRequest::default().with_resources(vec![res]));
        r.responses[0].error_code
    };
    assert_eq!(alter(&mut kc, "ro-t"), TOPIC_DENIED);
    assert_eq!(alter(&mut kc, "ok-t"), 0);
    let incremental = |kc: &mut Kc, topic: &str| {
        let c = incremental_alter_configs_request::AlterableConfig::default()
            .with_name(StrBytes::from_static_str("retention.ms"))
            .with_config_operation(0)
            .with_value(Some(StrBytes::from_static_str("7200000")));
        let res = incremental_alter_configs_request::AlterConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_string(topic.into()))
            .with_configs(vec![c]);
        let r = kc.call(
            1,
            &IncrementalAlterConfigsRequest::default().with_resources(vec![res]),
        );
        r.responses[0].error_code
    };
    assert_eq!(incremental(&mut kc, "ro-t"), TOPIC_DENIED);
    assert_eq!(incremental(&mut kc, "ok-t"), 0);

    // DescribeConfigs: read.
    let describe = |kc: &mut Kc, topic: &str| {
        let res = describe_configs_request::DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_string(topic.into()));
        let r = kc.call(
            4,
            &DescribeConfigsRequest::default().with_resources(vec![res]),
        );
        r.results[0].error_code
    };
    assert_eq!(describe(&mut kc, "wo-t"), TOPIC_DENIED);
    assert_eq!(describe(&mut kc, "ro-t"), 0);

    // DeleteRecords: configure (Kafka's DELETE).
    let mut guest = Kc::login(addr, "guest", "guest");
    assert_eq!(produce(&mut guest, "ro-t"), 0);
    assert_eq!(produce(&mut guest, "ok-t"), 0);
    let delete_records = |kc: &mut Kc, topic: &str| {
        let p = delete_records_request::DeleteRecordsPartition::default()
            .with_partition_index(0)
            .with_offset(-1);
        let t = delete_records_request::DeleteRecordsTopic::default()
            .with_name(tn(topic))
            .with_partitions(vec![p]);
        let r = kc.call(
            2,
            &DeleteRecordsRequest::default()
                .with_topics(vec![t])
                .with_timeout_ms(10_000),
        );
        r.topics[0].partitions[0].error_code
    };
    assert_eq!(delete_records(&mut kc, "ro-t"), TOPIC_DENIED);
    assert_eq!(delete_records(&mut kc, "ok-t"), 0);

    // DeleteTopics: configure; the refused topic is still there.
    let delete = |kc: &mut Kc, topic: &str| {
        let r = kc.call(
            4,
            &DeleteTopicsRequest::default()
                .with_topic_names(vec![tn(topic)])
                .with_timeout_ms(10_000),
        );
        r.responses[0].error_code
    };
    assert_eq!(delete(&mut kc, "ro-t"), TOPIC_DENIED);
    assert_eq!(
        latest(&mut guest, "ro-t"),
        (0, 1),
        "still there, records kept"
    );
    assert_eq!(delete(&mut kc, "ok-x"), 0);
}

#[test]
fn kafka_group_apis_need_read_on_the_group() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, addr) = kafka_server(tmp.path());
    let mut kc = Kc::login(addr, "app", "pw");

    let join = |kc: &mut Kc, group: &str| {
        let p = join_group_request::JoinGroupRequestProtocol::default()
            .with_name(StrBytes::from_static_str("range"))
            .with_metadata(Bytes::from_static(b"m"));
        kc.call(
            3,
            &JoinGroupRequest::default()
                .with_group_id(gid(group))
                .with_session_timeout_ms(10_000)
                .with_rebalance_timeout_ms(10_000)
                .with_protocol_type(StrBytes::from_static_str("consumer"))
                .with_protocols(vec![p]),
        )
    };
    assert_eq!(join(&mut kc, "grp-no").error_code, GROUP_DENIED);
    let joined = join(&mut kc, "grp-ok");
    assert_eq!(joined.error_code, 0);

    let sync = |kc: &mut Kc, group: &str, gen: i32, member: &StrBytes| {
        kc.call(
            3,
            &SyncGroupRequest::default()
                .with_group_id(gid(group))
                .with_generation_id(gen)
                .with_member_id(member.clone()),
        )
        .error_code
    };
    assert_eq!(sync(&mut kc, "grp-no", 1, &joined.member_id), GROUP_DENIED);
    assert_eq!(
        sync(&mut kc, "grp-ok", joined.generation_id, &joined.member_id),
        0
    );

    let heartbeat = |kc: &mut Kc, group: &str, gen: i32, member: &StrBytes| {
        kc.call(
            3,
            &HeartbeatRequest::default()
                .with_group_id(gid(group))
                .with_generation_id(gen)
                .with_member_id(member.clone()),
        )
        .error_code
    };
    assert_eq!(
        heartbeat(&mut kc, "grp-no", 1, &joined.member_id),
        GROUP_DENIED
    );
    assert_eq!(
        heartbeat(&mut kc, "grp-ok", joined.generation_id, &joined.member_id),
        0
    );

    // OffsetCommit: read on the group and on the topic.
    let commit = |kc: &mut Kc, group: &str, topic: &str| {
        let p = offset_commit_request::OffsetCommitRequestPartition::default()
            .with_partition_index(0)
            .with_committed_offset(0);
        let t = offset_commit_request::OffsetCommitRequestTopic::default()
            .with_name(tn(topic))
            .with_partitions(vec![p]);
        let r = kc.call(
            2,
            &OffsetCommitRequest::default()
                .with_group_id(gid(group))
                .with_generation_id_or_member_epoch(-1)
                .with_topics(vec![t]),
        );
        r.topics[0].partitions[0].error_code
    };
    assert_eq!(commit(&mut kc, "grp-no", "ok-t"), GROUP_DENIED);
    assert_eq!(commit(&mut kc, "grp-ok2", "wo-t"), GROUP_DENIED);
    assert_eq!(commit(&mut kc, "grp-ok", "wo-t"), TOPIC_DENIED);

    // OffsetFetch (v5: top-level error; v8: per group).
    let r = kc.call(
        5,
        &OffsetFetchRequest::default().with_group_id(gid("grp-no")),
    );
    assert_eq!(r.error_code, GROUP_DENIED);
    let r = kc.call(
        5,
        &OffsetFetchRequest::default().with_group_id(gid("grp-ok")),
    );
    assert_eq!(r.error_code, 0);
    let g = |name: &str| {
        offset_fetch_request::OffsetFetchRequestGroup::default().with_group_id(gid(name))
    };
    let r = kc.call(
        8,
        &OffsetFetchRequest::default().with_groups(vec![g("grp-no"), g("grp-ok")]),
    );
    assert_eq!(
        (r.groups[0].error_code, r.groups[1].error_code),
        (GROUP_DENIED, 0)
    );

    // DescribeGroups, in the request's order.
    let r = kc.call(
        5,
        &DescribeGroupsRequest::default().with_groups(vec![gid("grp-no"), gid("grp-ok")]),
    );
    assert_eq!(r.groups[0].group_id, gid("grp-no"));
    assert_eq!(r.groups[0].error_code, GROUP_DENIED);
    assert_eq!(r.groups[1].error_code, 0);

    // ListGroups shows only readable groups.
    let mut guest = Kc::login(addr, "guest", "guest");
    assert_eq!(join(&mut guest, "grp-no").error_code, 0);
    let listed = |kc: &mut Kc| -> Vec<String> {
        let r = kc.call(4, &ListGroupsRequest::default());
        let mut v: Vec<String> = r
            .groups
            .into_iter()
            .map(|g| g.group_id.0.to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(listed(&mut guest), ["grp-no", "grp-ok"]);
    assert_eq!(listed(&mut kc), ["grp-ok"]);

    // LeaveGroup, then DeleteGroups.
    let leave = |kc: &mut Kc, group: &str, member: &StrBytes| {
        kc.call(
            2,
            &LeaveGroupRequest::default()
                .with_group_id(gid(group))
                .with_member_id(member.clone()),
        )
        .error_code
    };
    assert_eq!(leave(&mut kc, "grp-no", &joined.member_id), GROUP_DENIED);
    assert_eq!(leave(&mut kc, "grp-ok", &joined.member_id), 0);
    let r = kc.call(
        2,
        &DeleteGroupsRequest::default().with_groups_names(vec![gid("grp-no"), gid("grp-ok")]),
    );
    let code = |g: &str| {
        r.results
            .iter()
            .find(|x| x.group_id == gid(g))
            .map(|x| x.error_code)
    };
    assert_eq!(code("grp-no"), Some(GROUP_DENIED));
    assert_eq!(code("grp-ok"), Some(0));
    assert_eq!(
        listed(&mut guest),
        ["grp-no"],
        "the refused group was not deleted"
    );
}
