//! The Kafka admin APIs against the real binary over a raw socket (kafka-protocol's
//! client-side encoding): topic configs created, described, replaced and incrementally
//! changed; partitions added and produced to; records deleted below a low watermark;
//! all of it surviving a restart on the same data directory.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use bytes::{Bytes, BytesMut};
use common::{listening, serve, Server, TIMEOUT};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

const TOPIC: &str = "orders";

struct Client {
    sock: TcpStream,
    correlation: i32,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let sock = TcpStream::connect(addr).expect("connect to the Kafka listener");
        sock.set_read_timeout(Some(TIMEOUT)).unwrap();
        Client {
            sock,
            correlation: 0,
        }
    }

    /// One request, one response (size-prefixed, with headers for the API's version).
    fn call<Req: Encodable, Resp: Decodable>(&mut self, key: ApiKey, v: i16, req: &Req) -> Resp {
        self.correlation += 1;
        let mut h = RequestHeader::default();
        h.request_api_key = key as i16;
        h.request_api_version = v;
        h.correlation_id = self.correlation;
        h.client_id = Some(StrBytes::from_static_str("kafka-admin-test"));
        let mut body = BytesMut::new();
        h.encode(&mut body, key.request_header_version(v)).unwrap();
        req.encode(&mut body, v).unwrap();
        let mut frame = (body.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        self.sock.write_all(&frame).unwrap();
        let mut len = [0u8; 4];
        self.sock.read_exact(&mut len).expect("a response");
        let mut buf = vec![0u8; i32::from_be_bytes(len) as usize];
        self.sock.read_exact(&mut buf).unwrap();
        let mut b = Bytes::from(buf);
        let rh = ResponseHeader::decode(&mut b, key.response_header_version(v)).unwrap();
        assert_eq!(rh.correlation_id, self.correlation);
        Resp::decode(&mut b, v).unwrap_or_else(|e| panic!("{key:?} v{v} response: {e}"))
    }

    /// DescribeConfigs (v`v`) of the topic: `name -> (value, config_source)`.
    fn describe(&mut self, v: i16) -> Vec<(String, String, i8)> {
        let mut res = describe_configs_request::DescribeConfigsResource::default();
        res.resource_type = 2;
        res.resource_name = StrBytes::from_static_str(TOPIC);
        res.configuration_keys = None;
        let mut req = DescribeConfigsRequest::default();
        req.resources.push(res);
        req.include_synonyms = true;
        let r: DescribeConfigsResponse = self.call(ApiKey::DescribeConfigs, v, &req);
        assert_eq!(r.results.len(), 1);
        assert_eq!(
            r.results[0].error_code, 0,
            "{:?}",
            r.results[0].error_message
        );
        r.results[0]
            .configs
            .iter()
            .map(|c| {
                (
                    c.name.to_string(),
                    c.value.as_ref().map(|v| v.to_string()).unwrap_or_default(),
                    c.config_source,
                )
            })
            .collect()
    }

    fn config(&mut self, v: i16, name: &str) -> (String, i8) {
        let all = self.describe(v);
        let (_, value, source) = all
            .into_iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("{name} described"));
        (value, source)
    }

    fn partition_count(&mut self) -> usize {
        let mut t = metadata_request::MetadataRequestTopic::default();
        t.name = Some(TopicName(StrBytes::from_static_str(TOPIC)));
        let mut req = MetadataRequest::default();
        req.topics = Some(vec![t]);
        let r: MetadataResponse = self.call(ApiKey::Metadata, 9, &req);
        assert_eq!(r.topics[0].error_code, 0);
        r.topics[0].partitions.len()
    }

    fn produce(&mut self, partition: i32, value: &str) -> i64 {
        let rec = Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from(value.to_string())),
            headers: Default::default(),
        };
        let mut batch = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut batch,
            [&rec],
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .unwrap();
        let mut pd = produce_request::PartitionProduceData::default();
        pd.index = partition;
        pd.records = Some(batch.freeze());
        let mut td = produce_request::TopicProduceData::default();
        td.name = TopicName(StrBytes::from_static_str(TOPIC));
        td.partition_data.push(pd);
        let mut req = ProduceRequest::default();
        req.acks = -1;
        req.timeout_ms = 10_000;
        req.topic_data.push(td);
        let r: ProduceResponse = self.call(ApiKey::Produce, 8, &req);
        let p = &r.responses[0].partition_responses[0];
        assert_eq!(p.error_code, 0, "produce to partition {partition}");
        p.base_offset
    }

    /// ListOffsets v5: `(earliest, latest)` of a partition.
    fn offsets(&mut self, partition: i32) -> (i64, i64) {
        let at = |c: &mut Client, ts: i64| {
            let mut p = list_offsets_request::ListOffsetsPartition::default();
            p.partition_index = partition;
            p.timestamp = ts;
            let mut t = list_offsets_request::ListOffsetsTopic::default();
            t.name = TopicName(StrBytes::from_static_str(TOPIC));
            t.partitions.push(p);
            let mut req = ListOffsetsRequest::default();
            req.replica_id = BrokerId(-1);
            req.topics.push(t);
            let r: ListOffsetsResponse = c.call(ApiKey::ListOffsets, 5, &req);
            let p = &r.topics[0].partitions[0];
            assert_eq!(p.error_code, 0);
            p.offset
        };
        (at(self, -2), at(self, -1))
    }
}

fn start(dir: &std::path::Path, data: &std::path::Path) -> (Server, Client) {
    let server = serve(dir, data, &["--set", "kafka.port=0"]);
    let addr = listening(&server, "Kafka");
    (server, Client::connect(addr))
}

fn stop(mut server: Server) {
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit().success(), "{}", server.log());
}

fn config(name: &str, value: &str) -> create_topics_request::CreatableTopicConfig {
    let mut c = create_topics_request::CreatableTopicConfig::default();
    c.name = StrBytes::from_string(name.into());
    c.value = Some(StrBytes::from_string(value.into()));
    c
}

#[test]
fn topic_configs_partitions_and_deleted_records_survive_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    {
        let (server, mut c) = start(tmp.path(), &data);
        // Create with configs (and a read-only one at its fixed value).
        let mut t = create_topics_request::CreatableTopic::default();
        t.name = TopicName(StrBytes::from_static_str(TOPIC));
        t.num_partitions = 2;
        t.replication_factor = 1;
        t.configs = vec![
            config("retention.ms", "3600000"),
            config("retention.bytes", "1000000"),
            config("min.insync.replicas", "1"),
        ];
        let mut req = CreateTopicsRequest::default();
        req.topics.push(t);
        req.timeout_ms = 10_000;
        let r: CreateTopicsResponse = c.call(ApiKey::CreateTopics, 5, &req);
        assert_eq!(r.topics[0].error_code, 0, "{:?}", r.topics[0].error_message);
        assert_eq!(c.config(4, "retention.ms"), ("3600000".into(), 1));
        assert_eq!(c.config(4, "retention.bytes"), ("1000000".into(), 1));
        assert_eq!(c.config(4, "cleanup.policy"), ("delete".into(), 5));
        assert_eq!(c.config(4, "message.timestamp.type").0, "CreateTime");
        assert_eq!(c.config(1, "min.insync.replicas").0, "1");

        // AlterConfigs replaces the set: retention.bytes goes back to its default.
        let mut ac = alter_configs_request::AlterableConfig::default();
        ac.name = StrBytes::from_static_str("retention.ms");
        ac.value = Some(StrBytes::from_static_str("7200000"));
        let mut res = alter_configs_request::AlterConfigsResource::default();
        res.resource_type = 2;
        res.resource_name = StrBytes::from_static_str(TOPIC);
        res.configs.push(ac);
        let mut req = AlterConfigsRequest::default();
        req.resources.push(res);
        let r: AlterConfigsResponse = c.call(ApiKey::AlterConfigs, 1, &req);
        assert_eq!(
            r.responses[0].error_code, 0,
            "{:?}",
            r.responses[0].error_message
        );
        assert_eq!(c.config(2, "retention.ms"), ("7200000".into(), 1));
        assert_eq!(c.config(2, "retention.bytes"), ("-1".into(), 5));

        // IncrementalAlterConfigs: SET two, APPEND refused.
        let op = |name: &'static str, op: i8, value: &'static str| {
            let mut x = incremental_alter_configs_request::AlterableConfig::default();
            x.name = StrBytes::from_static_str(name);
            x.config_operation = op;
            x.value = Some(StrBytes::from_static_str(value));
            x
        };
        let mut res = incremental_alter_configs_request::AlterConfigsResource::default();
        res.resource_type = 2;
        res.resource_name = StrBytes::from_static_str(TOPIC);
        res.configs = vec![
            op("segment.bytes", 0, "1048576"),
            op("retention.bytes", 0, "2000000"),
        ];
        let mut req = IncrementalAlterConfigsRequest::default();
        req.resources.push(res.clone());
        let r: IncrementalAlterConfigsResponse = c.call(ApiKey::IncrementalAlterConfigs, 1, &req);
        assert_eq!(
            r.responses[0].error_code, 0,
            "{:?}",
            r.responses[0].error_message
        );
        res.configs = vec![op("retention.ms", 2, "1")];
        let mut req = IncrementalAlterConfigsRequest::default();
        req.resources.push(res);
        let r: IncrementalAlterConfigsResponse = c.call(ApiKey::IncrementalAlterConfigs, 0, &req);
        assert_eq!(r.responses[0].error_code, 40, "APPEND: INVALID_CONFIG");
        assert_eq!(c.config(4, "segment.bytes"), ("1048576".into(), 1));
        assert_eq!(c.config(4, "retention.bytes"), ("2000000".into(), 1));
        assert_eq!(c.config(4, "retention.ms"), ("7200000".into(), 1));

        // CreatePartitions 2 → 4; equal is refused.
        let grow = |c: &mut Client, count: i32| {
            let mut t = create_partitions_request::CreatePartitionsTopic::default();
            t.name = TopicName(StrBytes::from_static_str(TOPIC));
            t.count = count;
            t.assignments = None;
            let mut req = CreatePartitionsRequest::default();
            req.topics.push(t);
            req.timeout_ms = 10_000;
            let r: CreatePartitionsResponse = c.call(ApiKey::CreatePartitions, 2, &req);
            r.results[0].error_code
        };
        assert_eq!(c.partition_count(), 2);
        assert_eq!(grow(&mut c, 4), 0);
        assert_eq!(grow(&mut c, 4), 37, "INVALID_PARTITIONS");
        assert_eq!(c.partition_count(), 4);
        for i in 0..4 {
            assert_eq!(c.produce(3, &format!("v{i}")), i);
        }

        // DeleteRecords below offset 2 of partition 3.
        let mut p = delete_records_request::DeleteRecordsPartition::default();
        p.partition_index = 3;
        p.offset = 2;
        let mut t = delete_records_request::DeleteRecordsTopic::default();
        t.name = TopicName(StrBytes::from_static_str(TOPIC));
        t.partitions.push(p.clone());
        p.partition_index = 0;
        p.offset = 5;
        t.partitions.push(p);
        let mut req = DeleteRecordsRequest::default();
        req.topics.push(t);
        req.timeout_ms = 10_000;
        let r: DeleteRecordsResponse = c.call(ApiKey::DeleteRecords, 2, &req);
        let ps = &r.topics[0].partitions;
        assert_eq!((ps[0].error_code, ps[0].low_watermark), (0, 2));
        assert_eq!(ps[1].error_code, 1, "OFFSET_OUT_OF_RANGE beyond the end");
        assert_eq!(c.offsets(3), (2, 4));
        stop(server);
    }
    let (server, mut c) = start(tmp.path(), &data);
    assert_eq!(c.config(4, "retention.ms"), ("7200000".into(), 1));
    assert_eq!(c.config(4, "retention.bytes"), ("2000000".into(), 1));
    assert_eq!(c.config(4, "segment.bytes"), ("1048576".into(), 1));
    assert_eq!(c.partition_count(), 4);
    assert_eq!(c.offsets(3), (2, 4));
    assert_eq!(c.produce(3, "after restart"), 4);
    stop(server);
}
