//! The request-decoding path of a connection as one pure function, for the fuzz target
//! and the stable random-input test: header, version check, the body of every served
//! API, and record-batch validation of Produce requests. No I/O, no broker.

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::Decodable;

use crate::api;
use crate::records;

/// What the decoding path made of one frame (the bytes after the size prefix).
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    /// Decoded (for Produce: with this many valid record batches in all).
    Request {
        key: ApiKey,
        version: i16,
        batches: usize,
    },
    /// An ApiVersions request in an unserved version: answered with the v0 fallback.
    ApiVersionsFallback,
    /// The connection would be closed, with this reason.
    Closed(String),
}

fn body<T: Decodable>(mut b: Bytes, v: i16) -> Result<T, String> {
    T::decode(&mut b, v).map_err(|e| e.to_string())
}

/// Runs one request frame through the decoders the connection uses.
pub fn check_request(frame: Bytes, max_batch: usize, max_decompressed: usize) -> Checked {
    if frame.len() < 8 {
        return Checked::Closed("frame shorter than a request header".into());
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let Ok(api_key) = ApiKey::try_from(key) else {
        return Checked::Closed(format!("unknown API key {key}"));
    };
    let Some((min, max)) = api::supported(api_key) else {
        return Checked::Closed(format!("{api_key:?} is not served"));
    };
    if version < min || version > max {
        return if api_key == ApiKey::ApiVersions {
            Checked::ApiVersionsFallback
        } else {
            Checked::Closed(format!("{api_key:?} v{version} is not served"))
        };
    }
    let mut buf = frame;
    if let Err(e) = RequestHeader::decode(&mut buf, api_key.request_header_version(version)) {
        return Checked::Closed(format!("header: {e}"));
    }
    let v = version;
    let r: Result<usize, String> = match api_key {
        ApiKey::Produce => body::<ProduceRequest>(buf, v).map(|req| {
            req.topic_data
                .iter()
                .flat_map(|t| t.partition_data.iter())
                .filter_map(|p| p.records.as_ref())
                .filter_map(|r| records::validate(r, max_batch, max_decompressed).ok())
                .map(|b| b.len())
                .sum()
        }),
        ApiKey::Fetch => body::<FetchRequest>(buf, v).map(|_| 0),
        ApiKey::ListOffsets => body::<ListOffsetsRequest>(buf, v).map(|_| 0),
        ApiKey::Metadata => body::<MetadataRequest>(buf, v).map(|_| 0),
        ApiKey::OffsetCommit => body::<OffsetCommitRequest>(buf, v).map(|_| 0),
        ApiKey::OffsetFetch => body::<OffsetFetchRequest>(buf, v).map(|_| 0),
        ApiKey::FindCoordinator => body::<FindCoordinatorRequest>(buf, v).map(|_| 0),
        ApiKey::JoinGroup => body::<JoinGroupRequest>(buf, v).map(|_| 0),
        ApiKey::Heartbeat => body::<HeartbeatRequest>(buf, v).map(|_| 0),
        ApiKey::LeaveGroup => body::<LeaveGroupRequest>(buf, v).map(|_| 0),
        ApiKey::SyncGroup => body::<SyncGroupRequest>(buf, v).map(|_| 0),
        ApiKey::DescribeGroups => body::<DescribeGroupsRequest>(buf, v).map(|_| 0),
        ApiKey::ListGroups => body::<ListGroupsRequest>(buf, v).map(|_| 0),
        ApiKey::SaslHandshake => body::<SaslHandshakeRequest>(buf, v).map(|_| 0),
        ApiKey::ApiVersions => body::<ApiVersionsRequest>(buf, v).map(|_| 0),
        ApiKey::CreateTopics => body::<CreateTopicsRequest>(buf, v).map(|_| 0),
        ApiKey::DeleteTopics => body::<DeleteTopicsRequest>(buf, v).map(|_| 0),
        ApiKey::DeleteRecords => body::<DeleteRecordsRequest>(buf, v).map(|_| 0),
        ApiKey::InitProducerId => body::<InitProducerIdRequest>(buf, v).map(|_| 0),
        ApiKey::OffsetForLeaderEpoch => body::<OffsetForLeaderEpochRequest>(buf, v).map(|_| 0),
        ApiKey::DescribeConfigs => body::<DescribeConfigsRequest>(buf, v).map(|_| 0),
        ApiKey::AlterConfigs => body::<AlterConfigsRequest>(buf, v).map(|_| 0),
        ApiKey::SaslAuthenticate => body::<SaslAuthenticateRequest>(buf, v).map(|_| 0),
        ApiKey::CreatePartitions => body::<CreatePartitionsRequest>(buf, v).map(|_| 0),
        ApiKey::DeleteGroups => body::<DeleteGroupsRequest>(buf, v).map(|_| 0),
        ApiKey::IncrementalAlterConfigs => {
            body::<IncrementalAlterConfigsRequest>(buf, v).map(|_| 0)
        }
        ApiKey::DescribeCluster => body::<DescribeClusterRequest>(buf, v).map(|_| 0),
        other => Err(format!("{other:?} has no decoder here")),
    };
    match r {
        Ok(batches) => Checked::Request {
            key: api_key,
            version,
            batches,
        },
        Err(e) => Checked::Closed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::protocol::{Encodable, Request, StrBytes};

    fn frame<R: Request>(v: i16, req: &R) -> Bytes {
        let key = ApiKey::try_from(R::KEY).unwrap();
        let mut b = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(v)
            .with_correlation_id(7)
            .with_client_id(Some(StrBytes::from_static_str("seed")))
            .encode(&mut b, key.request_header_version(v))
            .unwrap();
        req.encode(&mut b, v).unwrap();
        b.freeze()
    }

    /// Frames of several request kinds: seeds for mutation here and for the fuzz corpus.
    pub(crate) fn seeds() -> Vec<(&'static str, Bytes)> {
        let mut batch = BytesMut::new();
        let m = ferrymq_core::Message::new("", "value");
        records::encode_messages(&mut batch, 0, &[(5, &m), (6, &m)], 5);
        let produce = ProduceRequest::default()
            .with_acks(-1)
            .with_topic_data(vec![produce_request::TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partition_data(vec![
                    produce_request::PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(batch.freeze())),
                ])]);
        let fetch = FetchRequest::default().with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str("t")))
            .with_partitions(vec![fetch_request::FetchPartition::default()])]);
        let metadata = MetadataRequest::default()
            .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
            )
            .with_name(Some(TopicName(StrBytes::from_static_str("t"))))]));
        let join = JoinGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("g")))
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default(
            )
            .with_name(StrBytes::from_static_str("range"))
            .with_metadata(Bytes::from_static(b"\x00\x01"))]);
        vec![
            ("produce_v9", frame(9, &produce)),
            ("produce_v3", frame(3, &produce)),
            ("fetch_v11", frame(11, &fetch)),
            ("fetch_v4", frame(4, &fetch)),
            ("metadata_v9", frame(9, &metadata)),
            ("metadata_v1", frame(1, &metadata)),
            ("join_group_v5", frame(5, &join)),
            ("api_versions_v3", frame(3, &ApiVersionsRequest::default())),
        ]
    }

    #[test]
    fn seeds_decode() {
        for (name, f) in seeds() {
            match check_request(f, 1 << 20, 1 << 20) {
                Checked::Request { batches, .. } => {
                    if name.starts_with("produce") {
                        assert_eq!(batches, 1, "{name}");
                    }
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    /// The fuzz target's property on stable: mutated and truncated requests never panic or
    /// abort (e.g. through an allocation sized by an untrusted count).
    #[test]
    fn mutated_requests_never_panic() {
        let mut rng = fastrand::Rng::with_seed(0x4b61666b61);
        let seeds = seeds();
        for _ in 0..20_000 {
            let (_, seed) = &seeds[rng.usize(..seeds.len())];
            let mut b = BytesMut::from(&seed[..]);
            for _ in 0..rng.usize(1..6) {
                let i = rng.usize(..b.len());
                b[i] = match rng.u8(..4) {
                    0 => 0xff,
                    1 => 0x7f,
                    2 => 0,
                    _ => rng.u8(..),
                };
            }
            let cut = rng.usize(..=b.len());
            let _ = check_request(b.freeze().slice(..cut), 1 << 20, 1 << 20);
        }
    }

    /// Writes the seeds as the fuzz corpus when FERRYMQ_FUZZ_SEED_DIR is set.
    #[test]
    fn write_fuzz_seeds() {
        let Some(dir) = std::env::var_os("FERRYMQ_FUZZ_SEED_DIR") else {
            return;
        };
        std::fs::create_dir_all(&dir).unwrap();
        for (name, f) in seeds() {
            std::fs::write(std::path::Path::new(&dir).join(name), &f).unwrap();
        }
    }
}
