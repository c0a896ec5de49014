//! Kafka wire protocol against the real server binary, with kafka-protocol's client-side
//! codec over a plain socket: produce/fetch with keys and headers, offsets, idempotent
//! producers, bad input, long polls, kill -9 durability and AMQP stream interop.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{listening, serve, Server};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// A blocking Kafka client over one TCP connection.
struct Kc {
    s: TcpStream,
    corr: i32,
}

impl Kc {
    fn connect(addr: SocketAddr) -> Kc {
        let s = TcpStream::connect(addr).expect("connect to the Kafka listener");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Kc { s, corr: 0 }
    }

    fn send<R: Request>(&mut self, v: i16, req: &R) -> i32 {
        self.corr += 1;
        let key = ApiKey::try_from(R::KEY).unwrap();
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(v)
            .with_correlation_id(self.corr)
            .with_client_id(Some(StrBytes::from_static_str("kafka-wire-test")));
        let mut b = BytesMut::new();
        header
            .encode(&mut b, key.request_header_version(v))
            .unwrap();
        req.encode(&mut b, v).unwrap();
        self.raw(&(b.len() as i32).to_be_bytes());
        self.raw(&b);
        self.corr
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// The next response frame, or `None` if the server closed the connection.
    fn frame(&mut self) -> Option<Bytes> {
        let mut len = [0u8; 4];
        if self.s.read_exact(&mut len).is_err() {
            return None;
        }
        let mut b = vec![0u8; i32::from_be_bytes(len) as usize];
        self.s.read_exact(&mut b).ok()?;
        Some(Bytes::from(b))
    }

    fn recv<R: Request>(&mut self, v: i16, corr: i32) -> R::Response {
        let mut b = self.frame().expect("a response");
        let hv = <R::Response as HeaderVersion>::header_version(v);
        let h = ResponseHeader::decode(&mut b, hv).unwrap();
        assert_eq!(h.correlation_id, corr);
        R::Response::decode(&mut b, v).unwrap()
    }

    fn call<R: Request>(&mut self, v: i16, req: &R) -> R::Response {
        let corr = self.send(v, req);
        self.recv::<R>(v, corr)
    }

    /// Reads until the server closes the connection (true) or the read times out.
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1024];
        loop {
            match self.s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn rec(key: &str, value: &str, ts: i64, seq: i32) -> Record {
    let mut headers = IndexMap::new();
    headers.insert(
        StrBytes::from_static_str("h"),
        Some(Bytes::from(format!("hv-{key}"))),
    );
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: i64::from(seq.max(0)),
        sequence: seq,
        timestamp: ts,
        key: Some(Bytes::from(key.to_string())),
        value: Some(Bytes::from(value.to_string())),
        headers,
    }
}

fn batch(records: &[Record], compression: Compression) -> Bytes {
    let mut b = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut b,
        records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .unwrap();
    b.freeze()
}

fn produce_req(topic: &str, partition: i32, acks: i16, records: Bytes) -> ProduceRequest {
    let p = produce_request::PartitionProduceData::default()
        .with_index(partition)
        .with_records(Some(records));
    let t = produce_request::TopicProduceData::default()
        .with_name(name(topic))
        .with_partition_data(vec![p]);
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![t])
}

/// Produces with acks=-1; returns (error code, base offset).
fn produce(kc: &mut Kc, topic: &str, partition: i32, records: Bytes) -> (i16, i64) {
    let r = kc.call(9, &produce_req(topic, partition, -1, records));
    let p = &r.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

fn fetch_req(topic: &str, partition: i32, offset: i64, wait_ms: i32) -> FetchRequest {
    let p = fetch_request::FetchPartition::default()
        .with_partition(partition)
        .with_fetch_offset(offset)
        .with_partition_max_bytes(1 << 20);
    let t = fetch_request::FetchTopic::default()
        .with_topic(name(topic))
        .with_partitions(vec![p]);
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(8 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![t])
}

/// Fetches once; returns (error code, high watermark, records).
fn fetch(kc: &mut Kc, topic: &str, partition: i32, offset: i64) -> (i16, i64, Vec<Record>) {
    let r = kc.call(11, &fetch_req(topic, partition, offset, 0));
    let p = &r.responses[0].partitions[0];
    let mut recs = Vec::new();
    if let Some(mut b) = p.records.clone() {
        for set in RecordBatchDecoder::decode_all(&mut b).unwrap() {
            recs.extend(set.records);
        }
    }
    (p.error_code, p.high_watermark, recs)
}

fn create_topic(kc: &mut Kc, topic: &str, partitions: i32) -> i16 {
    let t = create_topics_request::CreatableTopic::default()
        .with_name(name(topic))
        .with_num_partitions(partitions)
        .with_replication_factor(1);
    let r = kc.call(
        5,
        &CreateTopicsRequest::default()
            .with_topics(vec![t])
            .with_timeout_ms(10_000),
    );
    r.topics[0].error_code
}

fn list_offset(kc: &mut Kc, topic: &str, partition: i32, ts: i64) -> (i16, i64, i64) {
    let p = list_offsets_request::ListOffsetsPartition::default()
        .with_partition_index(partition)
        .with_timestamp(ts);
    let t = list_offsets_request::ListOffsetsTopic::default()
        .with_name(name(topic))
        .with_partitions(vec![p]);
    let r = kc.call(
        7,
        &ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![t]),
    );
    let p = &r.topics[0].partitions[0];
    (p.error_code, p.offset, p.timestamp)
}

fn kafka_server(tmp: &std::path::Path, data: &std::path::Path) -> (Server, SocketAddr) {
    let server = serve(tmp, data, &[]);
    let addr = listening(&server, "Kafka");
    (server, addr)
}

#[test]
fn produce_fetch_keys_headers_offsets_and_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, addr) = kafka_server(tmp.path(), &tmp.path().join("data"));
    let mut kc = Kc::connect(addr);

    let versions = kc.call(3, &ApiVersionsRequest::default());
    assert_eq!(versions.error_code, 0);
    let fetch_v = versions
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::Fetch as i16)
        .expect("Fetch is served");
    assert!(fetch_v.max_version >= 11);

    // Metadata auto-creates a topic; it advertises this very listener.
    let md = kc.call(
        9,
        &MetadataRequest::default()
            .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
            )
            .with_name(Some(name("auto")))]))
            .with_allow_auto_topic_creation(true),
    );
    assert_eq!(md.brokers[0].port, i32::from(addr.port()));
    assert_eq!(md.topics[0].error_code, 0);
    assert_eq!(md.topics[0].partitions.len(), 1);

    assert_eq!(create_topic(&mut kc, "t3", 3), 0);
    assert_eq!(create_topic(&mut kc, "t3", 3), 36, "TOPIC_ALREADY_EXISTS");
    assert_eq!(
        create_topic(&mut kc, "bad/name", 1),
        17,
        "INVALID_TOPIC_EXCEPTION"
    );

    let b1 = batch(
        &[
            rec("a", "one", 1000, 0),
            rec("b", "two", 1001, 1),
            rec("c", "three", 1002, 2),
        ],
        Compression::None,
    );
    assert_eq!(produce(&mut kc, "t3", 1, b1), (0, 0));
    let b2 = batch(
        &[rec("d", "four", 2000, 0), rec("e", "five", 2001, 1)],
        Compression::Zstd,
    );
    assert_eq!(produce(&mut kc, "t3", 1, b2), (0, 3));
    assert_eq!(
        produce(
            &mut kc,
            "t3",
            7,
            batch(&[rec("x", "y", 1, 0)], Compression::None)
        )
        .0,
        3
    );
    assert_eq!(
        produce(
            &mut kc,
            "nope",
            0,
            batch(&[rec("x", "y", 1, 0)], Compression::None)
        )
        .0,
        3
    );

    let (err, hw, recs) = fetch(&mut kc, "t3", 1, 0);
    assert_eq!((err, hw), (0, 5));
    let got: Vec<(i64, String, String)> = recs
        .iter()
        .map(|r| {
            (
                r.offset,
                String::from_utf8_lossy(r.key.as_deref().unwrap()).into_owned(),
                String::from_utf8_lossy(r.value.as_deref().unwrap()).into_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (0, "a".into(), "one".into()),
            (1, "b".into(), "two".into()),
            (2, "c".into(), "three".into()),
            (3, "d".into(), "four".into()),
            (4, "e".into(), "five".into()),
        ]
    );
    assert_eq!(
        recs[4].headers.get(&StrBytes::from_static_str("h")),
        Some(&Some(Bytes::from_static(b"hv-e")))
    );
    assert_eq!(recs[3].timestamp, 2000);
    // From the middle: the batch holding offset 4 comes back (clients skip offset 3).
    let (_, _, recs) = fetch(&mut kc, "t3", 1, 4);
    assert!(recs.iter().any(|r| r.offset == 4));
    // Out of range.
    assert_eq!(fetch(&mut kc, "t3", 1, 99).0, 1, "OFFSET_OUT_OF_RANGE");

    assert_eq!(list_offset(&mut kc, "t3", 1, -2), (0, 0, -1));
    assert_eq!(list_offset(&mut kc, "t3", 1, -1), (0, 5, -1));
    assert_eq!(list_offset(&mut kc, "t3", 1, 1001), (0, 1, 1001));
    assert_eq!(list_offset(&mut kc, "t3", 1, 2001), (0, 4, 2001));
    assert_eq!(list_offset(&mut kc, "t3", 1, 9999).1, -1);
    // The record with the largest timestamp, not the last one.
    let late = batch(&[rec("f", "six", 1500, 0)], Compression::None);
    assert_eq!(produce(&mut kc, "t3", 1, late), (0, 5));
    assert_eq!(list_offset(&mut kc, "t3", 1, -3), (0, 4, 2001));
    assert_eq!(list_offset(&mut kc, "t3", 0, -1), (0, 0, -1));
}

#[test]
fn bad_input_closes_only_that_connection_and_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, addr) = kafka_server(tmp.path(), &tmp.path().join("data"));
    let mut good = Kc::connect(addr);
    assert_eq!(create_topic(&mut good, "safe", 1), 0);

    // A size prefix over socket.request.max.bytes: closed before anything is read.
    let mut c = Kc::connect(addr);
    c.raw(&i32::MAX.to_be_bytes());
    assert!(c.closed());
    // A negative size.
    let mut c = Kc::connect(addr);
    c.raw(&(-5i32).to_be_bytes());
    assert!(c.closed());
    // An unknown API key.
    let mut c = Kc::connect(addr);
    c.raw(&8i32.to_be_bytes());
    c.raw(&[0x7f, 0x00, 0, 0, 0, 0, 0, 1]);
    assert!(c.closed());
    // A body that does not decode (Metadata v9 with a truncated topic array).
    let mut c = Kc::connect(addr);
    let mut b = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(ApiKey::Metadata as i16)
        .with_request_api_version(9)
        .with_correlation_id(1)
        .encode(&mut b, 2)
        .unwrap();
    b.extend_from_slice(&[0x05, 0x00]);
    c.raw(&(b.len() as i32).to_be_bytes());
    c.raw(&b);
    assert!(c.closed());
    // ApiVersions in a version from the future: the v0 fallback with UNSUPPORTED_VERSION.
    let mut c = Kc::connect(addr);
    // Header v1 by hand (the client codec refuses to encode v99): key, version, id, client.
    let mut req = Vec::new();
    req.extend_from_slice(&(ApiKey::ApiVersions as i16).to_be_bytes());
    req.extend_from_slice(&99i16.to_be_bytes());
    req.extend_from_slice(&42i32.to_be_bytes());
    req.extend_from_slice(&(-1i16).to_be_bytes());
    c.raw(&(req.len() as i32).to_be_bytes());
    c.raw(&req);
    let mut f = c.frame().unwrap();
    let h = ResponseHeader::decode(&mut f, 0).unwrap();
    assert_eq!(h.correlation_id, 42);
    let r = ApiVersionsResponse::decode(&mut f, 0).unwrap();
    assert_eq!(r.error_code, 35);
    assert!(r
        .api_keys
        .iter()
        .any(|k| k.api_key == ApiKey::Produce as i16));

    // A corrupt batch (CRC) is refused with CORRUPT_MESSAGE and nothing is stored.
    let mut b = BytesMut::from(&batch(&[rec("k", "v", 5, 0)], Compression::None)[..]);
    let last = b.len() - 1;
    b[last] ^= 0x55;
    let (code, _) = produce(&mut good, "safe", 0, b.freeze());
    assert_eq!(code, 2, "CORRUPT_MESSAGE");
    // A good batch after all that is stored as the first record.
    let r = good.call(
        9,
        &produce_req(
            "safe",
            0,
            -1,
            batch(&[rec("k", "ok", 5, 0)], Compression::None),
        ),
    );
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    assert_eq!(list_offset(&mut good, "safe", 0, -1).1, 1);
    // The good connection and the server are fine.
    assert_eq!(fetch(&mut good, "safe", 0, 0).2.len(), 1);
}

#[test]
fn oversized_batches_get_message_too_large() {
    let tmp = tempfile::tempdir().unwrap();
    let server = serve(
        tmp.path(),
        &tmp.path().join("data"),
        &["--set", "limits.message_size_max_bytes=1000"],
    );
    let mut kc = Kc::connect(listening(&server, "Kafka"));
    assert_eq!(create_topic(&mut kc, "small", 1), 0);
    let big = "x".repeat(2000);
    let (code, _) = produce(
        &mut kc,
        "small",
        0,
        batch(&[rec("k", &big, 5, 0)], Compression::None),
    );
    assert_eq!(code, 10, "MESSAGE_TOO_LARGE");
    assert_eq!(list_offset(&mut kc, "small", 0, -1).1, 0);
    // Counted as a refusal by the message size limit (issue #9).
    let mut h = TcpStream::connect(listening(&server, "http")).unwrap();
    h.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    h.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    let _ = h.read_to_string(&mut text);
    assert!(
        text.lines()
            .any(|l| l
                == "ferrymq_limit_refusals_total{limit=\"message_size\",protocol=\"kafka\"} 1"),
        "{text}"
    );
}

/// The value of a metric line without labels in the server's `/metrics`.
fn metric(server: &Server, name: &str) -> u64 {
    let mut h = TcpStream::connect(listening(server, "http")).unwrap();
    h.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    h.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    let _ = h.read_to_string(&mut text);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[test]
fn fetches_at_the_head_are_served_from_the_tail_cache_and_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut want = Vec::new();
    {
        let server = serve(tmp.path(), &data, &[]);
        let mut kc = Kc::connect(listening(&server, "Kafka"));
        assert_eq!(create_topic(&mut kc, "tail", 1), 0);
        let hits = metric(&server, "ferrymq_storage_tail_cache_hits_total");
        for i in 0..20 {
            let recs: Vec<Record> = (0..5)
                .map(|j| rec(&format!("k{i}-{j}"), &format!("v{i}-{j}"), 100 + i, j))
                .collect();
            let (code, base) = produce(&mut kc, "tail", 0, batch(&recs, Compression::None));
            assert_eq!((code, base), (0, i * 5));
            want.extend(recs.into_iter().map(|r| (r.key, r.value)));
        }
        // Acknowledged at the default tier (fsynced): a consumer at the head reads memory.
        let mut got = Vec::new();
        while got.len() < want.len() {
            let (code, _, recs) = fetch(&mut kc, "tail", 0, got.len() as i64);
            assert_eq!(code, 0);
            assert!(!recs.is_empty());
            got.extend(recs.into_iter().map(|r| (r.key, r.value)));
        }
        assert_eq!(got, want);
        assert!(metric(&server, "ferrymq_storage_tail_cache_hits_total") > hits);
        assert!(metric(&server, "ferrymq_storage_tail_cache_bytes") > 0);
        // The server is killed: what it served from memory is what the disk holds.
    }
    let server = serve(tmp.path(), &data, &[]);
    let mut kc = Kc::connect(listening(&server, "Kafka"));
    assert_eq!(metric(&server, "ferrymq_storage_tail_cache_bytes"), 0);
    let mut got = Vec::new();
    while got.len() < want.len() {
        let (code, _, recs) = fetch(&mut kc, "tail", 0, got.len() as i64);
        assert_eq!(code, 0);
        got.extend(recs.into_iter().map(|r| (r.key, r.value)));
    }
    assert_eq!(got, want);
}

/// A fresh idempotent producer id and epoch (InitProducerId without a transactional id).
fn init_producer(kc: &mut Kc) -> (i64, i16) {
    let init = kc.call(
        4,
        &InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    );
    assert_eq!(init.error_code, 0);
    (init.producer_id.0, init.producer_epoch)
}

/// An idempotent batch of `n` records from sequence `seq`.
fn idem_batch(pid: i64, epoch: i16, seq: i32, n: i32, compression: Compression) -> Bytes {
    let recs: Vec<Record> = (0..n)
        .map(|i| {
            let mut r = rec(&format!("k{}", seq + i), "v", 10, seq + i);
            r.producer_id = pid;
            r.producer_epoch = epoch;
            r
        })
        .collect();
    batch(&recs, compression)
}

#[test]
fn idempotent_producers_deduplicate_retries_and_refuse_gaps() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, addr) = kafka_server(tmp.path(), &tmp.path().join("data"));
    let mut kc = Kc::connect(addr);
    assert_eq!(create_topic(&mut kc, "idem", 1), 0);
    let (pid, epoch) = init_producer(&mut kc);
    let idem = |seq: i32, n: i32| idem_batch(pid, epoch, seq, n, Compression::None);
    assert_eq!(produce(&mut kc, "idem", 0, idem(0, 2)), (0, 0));
    assert_eq!(produce(&mut kc, "idem", 0, idem(2, 3)), (0, 2));
    // A retry of the first batch: success with its original offset, no second append.
    assert_eq!(produce(&mut kc, "idem", 0, idem(0, 2)), (0, 0));
    assert_eq!(list_offset(&mut kc, "idem", 0, -1).1, 5);
    // A gap in the sequence.
    assert_eq!(
        produce(&mut kc, "idem", 0, idem(9, 1)).0,
        45,
        "OUT_OF_ORDER_SEQUENCE_NUMBER"
    );
    assert_eq!(produce(&mut kc, "idem", 0, idem(5, 1)), (0, 5));
}

#[test]
fn idempotent_retries_across_a_kill_9_are_not_appended_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (pid, epoch);
    let idem = |pid, epoch, seq, n| idem_batch(pid, epoch, seq, n, Compression::Lz4);
    {
        let (server, addr) = kafka_server(tmp.path(), &data);
        let mut kc = Kc::connect(addr);
        assert_eq!(create_topic(&mut kc, "idem-restart", 1), 0);
        (pid, epoch) = init_producer(&mut kc);
        // A non-idempotent batch in between, as other producers write.
        assert_eq!(
            produce(
                &mut kc,
                "idem-restart",
                0,
                batch(&[rec("plain", "v", 1, 0)], Compression::None)
            ),
            (0, 0)
        );
        assert_eq!(
            produce(&mut kc, "idem-restart", 0, idem(pid, epoch, 0, 3)),
            (0, 1)
        );
        assert_eq!(
            produce(&mut kc, "idem-restart", 0, idem(pid, epoch, 3, 2)),
            (0, 4)
        );
        server.signal(libc::SIGKILL);
        let mut server = server;
        server.wait_exit();
    }
    // The producer did not see the answers (the broker died) and retries both batches
    // against the restarted broker: each is answered with its original offset.
    let (_server, addr) = kafka_server(tmp.path(), &data);
    let mut kc = Kc::connect(addr);
    assert_eq!(
        produce(&mut kc, "idem-restart", 0, idem(pid, epoch, 0, 3)),
        (0, 1)
    );
    assert_eq!(
        produce(&mut kc, "idem-restart", 0, idem(pid, epoch, 3, 2)),
        (0, 4)
    );
    assert_eq!(list_offset(&mut kc, "idem-restart", 0, -1).1, 6);
    // The sequence continues where it was, and a gap is still refused.
    assert_eq!(
        produce(&mut kc, "idem-restart", 0, idem(pid, epoch, 9, 1)).0,
        45,
        "OUT_OF_ORDER_SEQUENCE_NUMBER"
    );
    assert_eq!(
        produce(&mut kc, "idem-restart", 0, idem(pid, epoch, 5, 1)),
        (0, 6)
    );
    assert_eq!(list_offset(&mut kc, "idem-restart", 0, -1).1, 7);
}

#[test]
fn fetch_responses_are_capped_by_the_broker_whatever_the_client_asks() {
    let tmp = tempfile::tempdir().unwrap();
    let server = serve(
        tmp.path(),
        &tmp.path().join("data"),
        &["--set", "kafka.fetch_max_bytes=4096"],
    );
    let mut kc = Kc::connect(listening(&server, "Kafka"));
    assert_eq!(create_topic(&mut kc, "capped", 1), 0);
    let big = "v".repeat(1500);
    for i in 0..10 {
        let (code, _) = produce(
            &mut kc,
            "capped",
            0,
            batch(&[rec(&format!("k{i}"), &big, 1, i)], Compression::None),
        );
        assert_eq!(code, 0);
    }
    // The request allows 8 MiB (1 MiB for the partition); the broker sends at most 4 KiB of
    // whole batches: two of the ~1.6 KB batches, never all ten.
    let r = kc.call(11, &fetch_req("capped", 0, 0, 0));
    let p = &r.responses[0].partitions[0];
    assert_eq!((p.error_code, p.high_watermark), (0, 10));
    let bytes = p.records.as_ref().map_or(0, |b| b.len());
    assert!(bytes > 0 && bytes <= 4096, "{bytes} record bytes");
    let mut b = p.records.clone().unwrap_or_default();
    let n: usize = RecordBatchDecoder::decode_all(&mut b)
        .unwrap()
        .iter()
        .map(|s| s.records.len())
        .sum();
    assert_eq!(n, 2, "whole batches within the cap");
    // A first batch larger than the cap still goes out whole (KIP-74).
    let huge = "h".repeat(6000);
    assert_eq!(
        produce(
            &mut kc,
            "capped",
            0,
            batch(&[rec("h", &huge, 1, 10)], Compression::None)
        ),
        (0, 10)
    );
    let (err, _, recs) = fetch(&mut kc, "capped", 0, 10);
    assert_eq!((err, recs.len()), (0, 1));
}

#[test]
fn a_long_poll_fetch_returns_when_records_arrive() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, addr) = kafka_server(tmp.path(), &tmp.path().join("data"));
    let mut kc = Kc::connect(addr);
    assert_eq!(create_topic(&mut kc, "poll", 1), 0);
    let mut poller = Kc::connect(addr);
    // Waits up to 30 s for a record at offset 0.
    let corr = poller.send(11, &fetch_req("poll", 0, 0, 30_000));
    let waiter = std::thread::spawn(move || {
        let r = poller.recv::<FetchRequest>(11, corr);
        let mut b = r.responses[0].partitions[0]
            .records
            .clone()
            .unwrap_or_default();
        RecordBatchDecoder::decode_all(&mut b)
            .unwrap()
            .into_iter()
            .flat_map(|s| s.records)
            .count()
    });
    assert_eq!(
        produce(
            &mut kc,
            "poll",
            0,
            batch(&[rec("k", "v", 1, 0)], Compression::None)
        ),
        (0, 0)
    );
    assert_eq!(
        waiter.join().unwrap(),
        1,
        "the waiting fetch got the record"
    );
}

#[test]
fn acknowledged_records_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut acked = 0i64;
    {
        let (server, addr) = kafka_server(tmp.path(), &data);
        let mut kc = Kc::connect(addr);
        assert_eq!(create_topic(&mut kc, "durable", 2), 0);
        for i in 0..40 {
            let recs: Vec<Record> = (0..5)
                .map(|j| rec(&format!("k{i}-{j}"), &format!("v{i}-{j}"), 100 + i, j))
                .collect();
            let (code, _) = produce(
                &mut kc,
                "durable",
                (i % 2) as i32,
                batch(&recs, Compression::Lz4),
            );
            assert_eq!(code, 0);
            acked += 5;
        }
        server.signal(libc::SIGKILL);
        let mut server = server;
        server.wait_exit();
    }
    let (_server, addr) = kafka_server(tmp.path(), &data);
    let mut kc = Kc::connect(addr);
    let mut total = 0i64;
    for p in 0..2 {
        let mut next = 0;
        loop {
            let (err, hw, recs) = fetch(&mut kc, "durable", p, next);
            assert_eq!(err, 0);
            let fresh: Vec<_> = recs.iter().filter(|r| r.offset >= next).collect();
            total += fresh.len() as i64;
            next = fresh.last().map_or(hw, |r| r.offset + 1);
            if next >= hw {
                break;
            }
        }
    }
    assert_eq!(
        total, acked,
        "every acknowledged record is back after kill -9"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_cross_between_kafka_and_amqp_streams() {
    use futures_lite::StreamExt;
    use lapin::options::*;
    use lapin::types::{AMQPValue, FieldTable, LongString};
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    let tmp = tempfile::tempdir().unwrap();
    let (server, addr) = kafka_server(tmp.path(), &tmp.path().join("data"));
    let amqp = listening(&server, "AMQP");
    let (code, base) = tokio::task::spawn_blocking(move || {
        let mut kc = Kc::connect(addr);
        assert_eq!(create_topic(&mut kc, "bridge", 1), 0);
        produce(
            &mut kc,
            "bridge",
            0,
            batch(
                &[rec("key-1", "from kafka", 1_700_000_000_000, 0)],
                Compression::Gzip,
            ),
        )
    })
    .await
    .unwrap();
    assert_eq!((code, base), (0, 0));

    let conn = Connection::connect(
        &format!("amqp://guest:guest@{amqp}/%2f"),
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let mut consumer = ch
        .basic_consume(
            "bridge".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(30), consumer.next())
        .await
        .expect("a delivery")
        .unwrap()
        .unwrap();
    assert_eq!(d.data, b"from kafka");
    let headers = d.properties.headers().clone().unwrap_or_default();
    let h = headers.inner();
    assert_eq!(
        h.get("x-message-key"),
        Some(&AMQPValue::LongString(LongString::from("key-1")))
    );
    // Kafka header values are bytes: AMQP byte arrays.
    assert!(
        matches!(h.get("h"), Some(AMQPValue::ByteArray(v)) if v.as_slice() == b"hv-key-1"),
        "{:?}",
        h.get("h")
    );
    assert_eq!(d.properties.timestamp(), &Some(1_700_000_000));
    d.ack(BasicAckOptions::default()).await.unwrap();

    // AMQP into the stream, read over Kafka with its key and headers.
    let mut headers = FieldTable::default();
    headers.insert(
        "x-message-key".into(),
        AMQPValue::LongString("amqp-key".into()),
    );
    headers.insert("origin".into(), AMQPValue::LongString("amqp".into()));
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.basic_publish(
        "".into(),
        "bridge".into(),
        BasicPublishOptions::default(),
        b"from amqp",
        BasicProperties::default()
            .with_headers(headers)
            .with_timestamp(1_700_000_001),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let recs = tokio::task::spawn_blocking(move || fetch(&mut Kc::connect(addr), "bridge", 0, 1).2)
        .await
        .unwrap();
    let r = recs
        .iter()
        .find(|r| r.offset == 1)
        .expect("the AMQP message at offset 1");
    assert_eq!(r.value.as_deref(), Some(&b"from amqp"[..]));
    assert_eq!(r.key.as_deref(), Some(&b"amqp-key"[..]));
    assert_eq!(
        r.headers.get(&StrBytes::from_static_str("origin")),
        Some(&Some(Bytes::from_static(b"amqp")))
    );
    assert_eq!(r.timestamp, 1_700_000_001_000);
    conn.close(200, "bye".into()).await.unwrap();
}
