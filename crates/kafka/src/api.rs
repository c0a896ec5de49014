//! One handler per Kafka API: decode the request, act on the core, build the response.
//! Work whose order matters (appends, commits, topic changes) happens synchronously in
//! `dispatch`, in request order; only the waiting (durability, long polls, rebalances)
//! is left to the returned future.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferrymq_core::stream::Stream;
use ferrymq_core::{Access, StreamOffset};
use ferrymq_storage::{Commit, StreamLog};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};
use kafka_protocol::ResponseError;

use crate::authz::Authz;
use crate::conn::{decode, encode, ready, Auth, Body, Close, ConnState, Pending};
use crate::idempotence::{Decision, PartitionProducers};
use crate::records::{self, RecordError};
use crate::sasl::{self, CredentialLookup, Mechanism, ScramCredential, ScramServer};
use crate::topics::{self, core_error};
use crate::{Kafka, KAFKA_BATCH_FORMAT};

/// The API versions FerryMQ serves, intersected with what the codec knows. Capped
/// below the versions that address topics by id only (Fetch v13, Produce v13,
/// DeleteTopics v6), since clients of the targeted generation all name topics.
const VERSIONS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    // v0 switches the connection to raw SASL tokens outside Kafka framing; only the
    // framed exchange (v1 + SaslAuthenticate) is served.
    (ApiKey::SaslHandshake, 1, 1),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 5),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
];

/// The versions of an API this broker serves, if any.
pub fn supported(key: ApiKey) -> Option<(i16, i16)> {
    let (_, min, max) = VERSIONS.iter().find(|(k, _, _)| *k == key)?;
    let codec = key.valid_versions();
    let (min, max) = ((*min).max(codec.min), (*max).min(codec.max));
    (min <= max).then_some((min, max))
}

fn api_list() -> Vec<api_versions_response::ApiVersion> {
    VERSIONS
        .iter()
        .filter_map(|(k, _, _)| {
            let (min, max) = supported(*k)?;
            let mut v = api_versions_response::ApiVersion::default();
            v.api_key = *k as i16;
            v.min_version = min;
            v.max_version = max;
            Some(v)
        })
        .collect()
}

/// The v0 answer to an ApiVersions request in a version we do not serve.
pub fn api_versions_fallback() -> BytesMut {
    let mut r = ApiVersionsResponse::default();
    r.error_code = ResponseError::UnsupportedVersion.code();
    r.api_keys = api_list();
    let mut b = BytesMut::new();
    if let Err(e) = r.encode(&mut b, 0) {
        tracing::error!(error = %e, "the ApiVersions v0 fallback does not encode");
        b.clear();
    }
    b
}

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

/// Runs one request. Synchronous work happens here, in request order.
pub(crate) fn dispatch(
    kafka: &Arc<Kafka>,
    state: &mut ConnState,
    key: ApiKey,
    v: i16,
    _header: &RequestHeader,
    body: Bytes,
) -> Result<Pending, Close> {
    // Who the request acts as: every handler below checks its permissions (the SASL gate
    // in `conn` lets only the handshake APIs through before a user is known).
    let az = Authz::new(kafka, state.user(kafka));
    let az = &az;
    Ok(match key {
        ApiKey::ApiVersions => {
            let _req: ApiVersionsRequest = decode(body, v)?;
            let mut r = ApiVersionsResponse::default();
            r.api_keys = api_list();
            ready(encode(&r, v))
        }
        ApiKey::Metadata => ready(encode(
            &metadata(kafka, az, decode(body, v)?, v, state.secure),
            v,
        )),
        ApiKey::Produce => produce(kafka, az, decode(body, v)?, v),
        ApiKey::Fetch => fetch(kafka.clone(), az, decode(body, v)?, v),
        ApiKey::ListOffsets => ready(encode(&list_offsets(kafka, az, decode(body, v)?, v), v)),
        ApiKey::FindCoordinator => ready(encode(
            &find_coordinator(kafka, decode(body, v)?, v, state.secure),
            v,
        )),
        ApiKey::OffsetCommit => offset_commit(kafka, az, decode(body, v)?, v),
        ApiKey::OffsetFetch => ready(encode(&offset_fetch(kafka, az, decode(body, v)?, v), v)),
        ApiKey::JoinGroup => {
            let req: JoinGroupRequest = decode(body, v)?;
            if !az.group(req.group_id.as_str()) {
                let mut r = JoinGroupResponse::default();
                r.error_code = ResponseError::GroupAuthorizationFailed.code();
                return Ok(ready(encode(&r, v)));
            }
            let (k, client, host) = (
                kafka.clone(),
                state.client_id.clone(),
                peer_host(&state.peer),
            );
            Box::pin(async move { encode(&k.groups.join_group(req, v, &client, &host).await, v) })
        }
        ApiKey::SyncGroup => {
            let req: SyncGroupRequest = decode(body, v)?;
            if !az.group(req.group_id.as_str()) {
                let mut r = SyncGroupResponse::default();
                r.error_code = ResponseError::GroupAuthorizationFailed.code();
                return Ok(ready(encode(&r, v)));
            }
            let k = kafka.clone();
            Box::pin(async move { encode(&k.groups.sync_group(req, v).await, v) })
        }
        ApiKey::Heartbeat => {
            let req: HeartbeatRequest = decode(body, v)?;
            if !az.group(req.group_id.as_str()) {
                let mut r = HeartbeatResponse::default();
                r.error_code = ResponseError::GroupAuthorizationFailed.code();
                return Ok(ready(encode(&r, v)));
            }
            ready(encode(&kafka.groups.heartbeat(req, v), v))
        }
        ApiKey::LeaveGroup => {
            let req: LeaveGroupRequest = decode(body, v)?;
            if !az.group(req.group_id.as_str()) {
                let mut r = LeaveGroupResponse::default();
                r.error_code = ResponseError::GroupAuthorizationFailed.code();
                return Ok(ready(encode(&r, v)));
            }
            ready(encode(&kafka.groups.leave_group(req, v), v))
        }
        ApiKey::DescribeGroups => {
            ready(encode(&describe_groups(kafka, az, decode(body, v)?, v), v))
        }
        ApiKey::ListGroups => {
            // Only the groups the user may read (Kafka lists those it may DESCRIBE).
            let mut r = kafka.groups.list_groups(decode(body, v)?, v);
            r.groups.retain(|g| az.group(g.group_id.as_str()));
            ready(encode(&r, v))
        }
        ApiKey::DeleteGroups => ready(encode(&delete_groups(kafka, az, decode(body, v)?, v), v)),
        ApiKey::InitProducerId => ready(encode(&init_producer_id(kafka, decode(body, v)?), v)),
        ApiKey::DescribeCluster => ready(encode(&describe_cluster(kafka, state.secure), v)),
        ApiKey::SaslHandshake => ready(encode(&sasl_handshake(kafka, state, decode(body, v)?), v)),
        ApiKey::SaslAuthenticate => {
            let (r, close) = sasl_authenticate(kafka, state, decode(body, v)?);
            let body = encode(&r, v);
            if let Some(why) = close {
                // Kafka answers the failure, then closes: the answer goes out first.
                tracing::info!(peer = %state.peer, reason = %why, "Kafka SASL authentication failed");
            }
            ready(body)
        }
        other => crate::admin::dispatch(kafka, az, other, v, body)?,
    })
}

fn peer_host(peer: &str) -> String {
    peer.rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_string())
        .unwrap_or_else(|| peer.to_string())
}

// ---------------------------------------------------------------- Metadata

/// The address clients are sent back to: that of the listener the connection came in on
/// (the SSL listener's for a TLS connection, as Kafka's per-listener advertised.listeners).
fn broker_host_port(kafka: &Kafka, secure: bool) -> (StrBytes, i32) {
    let port = if secure {
        kafka.config.advertised_tls_port
    } else {
        kafka.config.advertised_port
    };
    (s(kafka.config.advertised_host.clone()), i32::from(port))
}

/// A topic's metadata entry (error set by the caller when there is no stream).
pub(crate) fn topic_metadata(
    kafka: &Kafka,
    name: &str,
    stream: &Stream,
) -> metadata_response::MetadataResponseTopic {
    let mut t = metadata_response::MetadataResponseTopic::default();
    t.name = Some(TopicName(s(name)));
    t.topic_id = topics::topic_id(&kafka.config.vhost, name);
    t.partitions = (0..stream.partition_count())
        .map(|p| {
            let mut m = metadata_response::MetadataResponsePartition::default();
            m.partition_index = p as i32;
            m.leader_id = BrokerId(kafka.config.node_id);
            m.leader_epoch = 0;
            m.replica_nodes = vec![BrokerId(kafka.config.node_id)];
            m.isr_nodes = vec![BrokerId(kafka.config.node_id)];
            m
        })
        .collect();
    t
}

fn metadata(
    kafka: &Kafka,
    az: &Authz,
    req: MetadataRequest,
    v: i16,
    secure: bool,
) -> MetadataResponse {
    let mut r = MetadataResponse::default();
    let (host, port) = broker_host_port(kafka, secure);
    let mut b = metadata_response::MetadataResponseBroker::default();
    b.node_id = BrokerId(kafka.config.node_id);
    b.host = host;
    b.port = port;
    r.brokers = vec![b];
    r.cluster_id = Some(s(kafka.config.cluster_id.clone()));
    r.controller_id = BrokerId(kafka.config.node_id);
    if (8..=10).contains(&v) && req.include_cluster_authorized_operations {
        r.cluster_authorized_operations = az.cluster_operations();
    }
    let topic_ops = v >= 8 && req.include_topic_authorized_operations;
    let auto = kafka.config.auto_create_topics && (v < 4 || req.allow_auto_topic_creation);
    match req.topics {
        // v0: an empty list means all topics; v1+: null means all.
        None => {
            r.topics = all_topics(kafka, az);
        }
        Some(list) if list.is_empty() && v == 0 => {
            r.topics = all_topics(kafka, az);
        }
        Some(list) => {
            for t in list {
                let Some(name) = t.name.map(|n| n.0.to_string()) else {
                    let mut e = metadata_response::MetadataResponseTopic::default();
                    e.topic_id = t.topic_id;
                    e.error_code = ResponseError::UnknownTopicId.code();
                    r.topics.push(e);
                    continue;
                };
                // Kafka's rules: a topic the user may not describe (no permission at all
                // here) is TOPIC_AUTHORIZATION_FAILED whether it exists or not; creating
                // one needs configure, and without it a describable missing topic is
                // UNKNOWN_TOPIC_OR_PARTITION.
                let entry = match kafka.stream(&name) {
                    _ if !az.describe_topic(&name) => {
                        error_topic(&name, ResponseError::TopicAuthorizationFailed)
                    }
                    Some(st) => topic_metadata(kafka, &name, &st),
                    None if auto
                        && topics::valid_topic_name(&name)
                        && az.topic(Access::Configure, &name) =>
                    {
                        match kafka.create_topic(&name, -1, &[], false) {
                            Ok(Some(st)) => topic_metadata(kafka, &name, &st),
                            Ok(None) => error_topic(&name, ResponseError::UnknownTopicOrPartition),
                            Err((ResponseError::TopicAlreadyExists, _)) => {
                                match kafka.stream(&name) {
                                    Some(st) => topic_metadata(kafka, &name, &st),
                                    None => {
                                        error_topic(&name, ResponseError::InvalidTopicException)
                                    }
                                }
                            }
                            Err((e, _)) => error_topic(&name, e),
                        }
                    }
                    None if !topics::valid_topic_name(&name) => {
                        error_topic(&name, ResponseError::InvalidTopicException)
                    }
                    None => error_topic(&name, ResponseError::UnknownTopicOrPartition),
                };
                r.topics.push(entry);
            }
        }
    }
    if topic_ops {
        for t in r.topics.iter_mut().filter(|t| t.error_code == 0) {
            if let Some(name) = &t.name {
                t.topic_authorized_operations = az.topic_operations(name.0.as_str());
            }
        }
    }
    r
}

fn error_topic(name: &str, e: ResponseError) -> metadata_response::MetadataResponseTopic {
    let mut t = metadata_response::MetadataResponseTopic::default();
    t.name = Some(TopicName(s(name)));
    t.error_code = e.code();
    t
}

/// Every topic the user has a permission on (Kafka lists those it may DESCRIBE).
fn all_topics(kafka: &Kafka, az: &Authz) -> Vec<metadata_response::MetadataResponseTopic> {
    kafka
        .topic_streams()
        .iter()
        .filter(|st| az.describe_topic(st.name()))
        .map(|st| topic_metadata(kafka, st.name(), st))
        .collect()
}

fn describe_cluster(kafka: &Kafka, secure: bool) -> DescribeClusterResponse {
    let mut r = DescribeClusterResponse::default();
    let (host, port) = broker_host_port(kafka, secure);
    let mut b = describe_cluster_response::DescribeClusterBroker::default();
    b.broker_id = BrokerId(kafka.config.node_id);
    b.host = host;
    b.port = port;
    r.brokers = vec![b];
    r.cluster_id = s(kafka.config.cluster_id.clone());
    r.controller_id = BrokerId(kafka.config.node_id);
    r
}

fn find_coordinator(
    kafka: &Kafka,
    req: FindCoordinatorRequest,
    v: i16,
    secure: bool,
) -> FindCoordinatorResponse {
    let (host, port) = broker_host_port(kafka, secure);
    let mut r = FindCoordinatorResponse::default();
    let answer = |key_type: i8| -> (i16, Option<StrBytes>) {
        if key_type == 0 {
            (0, None)
        } else {
            (
                ResponseError::CoordinatorNotAvailable.code(),
                Some(s("FerryMQ does not support Kafka transactions")),
            )
        }
    };
    if v >= 4 {
        for key in req.coordinator_keys {
            let (code, msg) = answer(req.key_type);
            let mut c = find_coordinator_response::Coordinator::default();
            c.key = key;
            c.node_id = BrokerId(kafka.config.node_id);
            c.host = host.clone();
            c.port = port;
            c.error_code = code;
            c.error_message = msg;
            r.coordinators.push(c);
        }
    } else {
        let (code, msg) = answer(req.key_type);
        r.error_code = code;
        if v >= 1 {
            r.error_message = msg;
        }
        r.node_id = BrokerId(kafka.config.node_id);
        r.host = host;
        r.port = port;
    }
    r
}

// ---------------------------------------------------------------- Produce

/// Outcome of appending one partition's record set.
struct PartAppend {
    index: i32,
    error: Option<ResponseError>,
    message: Option<String>,
    base_offset: i64,
    log_start: i64,
    commits: Vec<Commit>,
}

fn produce(kafka: &Arc<Kafka>, az: &Authz, req: ProduceRequest, v: i16) -> Pending {
    let acks = req.acks;
    let now = ferrymq_core::clock::now_ms();
    let mut topics_out: Vec<(TopicName, Vec<PartAppend>)> = Vec::new();
    // Record sets are slices of the request's buffer, and the stream's tail cache keeps the
    // stored batches as they are: one that is a small part of its request would keep the
    // whole request alive in the cache. Those are copied out first (see `compact`).
    let request_bytes: usize = req
        .topic_data
        .iter()
        .flat_map(|t| t.partition_data.iter())
        .filter_map(|p| p.records.as_ref().map(Bytes::len))
        .sum();
    for t in req.topic_data {
        let name = t.name.0.to_string();
        let stream = kafka.stream(&name);
        let writable = az.topic(Access::Write, &name);
        let mut parts = Vec::new();
        for p in t.partition_data {
            let mut pa = PartAppend {
                index: p.index,
                error: None,
                message: None,
                base_offset: -1,
                log_start: -1,
                commits: Vec::new(),
            };
            if !matches!(acks, -1..=1) {
                pa.error = Some(ResponseError::InvalidRequiredAcks);
            } else if req.transactional_id.is_some() {
                pa.error = Some(ResponseError::TransactionalIdAuthorizationFailed);
                pa.message = Some("FerryMQ does not support Kafka transactions".into());
            } else if !writable {
                // Nothing of a refused partition is validated or stored.
                pa.error = Some(ResponseError::TopicAuthorizationFailed);
            } else {
                match (&stream, u32::try_from(p.index)) {
                    (Some(st), Ok(idx)) if idx < st.partition_count() => {
                        let recs = compact(p.records, request_bytes);
                        append_partition(kafka, st, &name, idx, recs, now, &mut pa);
                    }
                    _ => pa.error = Some(ResponseError::UnknownTopicOrPartition),
                }
            }
            parts.push(pa);
        }
        topics_out.push((t.name, parts));
    }
    Box::pin(async move {
        // Acknowledged only once durable at the partitions' tier (acks 1 and -1 alike: a
        // single node is all the replicas there are).
        for (_, parts) in topics_out.iter_mut() {
            for pa in parts.iter_mut() {
                for c in pa.commits.drain(..) {
                    if let Err(e) = c.await {
                        tracing::warn!(error = %e, "Kafka produce not durable");
                        pa.error = Some(ResponseError::KafkaStorageError);
                        pa.message = Some(e.to_string());
                    }
                }
            }
        }
        if acks == 0 {
            return None;
        }
        let mut r = ProduceResponse::default();
        for (name, parts) in topics_out {
            let mut tr = produce_response::TopicProduceResponse::default();
            tr.name = name;
            for pa in parts {
                let mut pr = produce_response::PartitionProduceResponse::default();
                pr.index = pa.index;
                pr.error_code = pa.error.map_or(0, |e| e.code());
                pr.base_offset = pa.base_offset;
                pr.log_append_time_ms = -1;
                pr.log_start_offset = pa.log_start;
                if v >= 8 {
                    pr.error_message = pa.message.map(s);
                }
                tr.partition_responses.push(pr);
            }
            r.responses.push(tr);
        }
        encode(&r, v)
    })
}

/// A record set that is less than half of its request's records, copied into a buffer of
/// its own (so that what the tail cache keeps of a request is bounded by twice its budget);
/// the larger ones as they are (a request for one partition is stored without a copy).
fn compact(recs: Option<Bytes>, request_bytes: usize) -> Option<Bytes> {
    recs.map(|r| {
        if r.len().saturating_mul(2) < request_bytes {
            Bytes::copy_from_slice(&r)
        } else {
            r
        }
    })
}

fn append_partition(
    kafka: &Kafka,
    st: &Arc<Stream>,
    topic: &str,
    partition: u32,
    recs: Option<Bytes>,
    now: i64,
    pa: &mut PartAppend,
) {
    let Some(recs) = recs else {
        pa.error = Some(ResponseError::CorruptMessage);
        return;
    };
    let batches = match records::validate(
        &recs,
        kafka.config.message_max_bytes,
        kafka.config.max_decompressed_bytes,
    ) {
        Ok(b) => b,
        Err(e) => {
            if matches!(e, records::RecordError::TooLarge { .. }) {
                kafka
                    .broker
                    .admission()
                    .refused(ferrymq_core::Limit::MessageSize, crate::conn::PROTOCOL);
            }
            pa.error = Some(record_error(&e));
            pa.message = Some(e.to_string());
            return;
        }
    };
    let idempotent = batches.iter().any(|b| b.producer_id >= 0);
    let key = (topic.to_string(), partition);
    let log = st.partition_log(partition).unwrap_or_default();
    if idempotent && !producer_state_current(kafka, &key, &log) {
        // First idempotent produce to this partition in this process (or to a new stream
        // under the name): rebuild from the log's tail, outside the lock (reads from disk).
        // A reconfigured stream (AlterConfigs, CreatePartitions) shares its partitions' logs
        // and keeps the state, with the batches still waiting for their round.
        let rebuilt = ProducerState {
            log: log.clone(),
            producers: rebuild_producers(st, partition, now),
        };
        let mut map = kafka.producers.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&key) {
            Some(cur) if cur.log.ptr_eq(&rebuilt.log) => {} // another request won
            _ => {
                map.insert(key.clone(), rebuilt);
            }
        }
    }
    let mut producers =
        idempotent.then(|| kafka.producers.lock().unwrap_or_else(|p| p.into_inner()));
    // Stored as received; the batch's own CRC (checked) spares the storage a second pass.
    let append = |b: &records::BatchInfo, ts: i64| {
        st.append_opaque(
            partition,
            KAFKA_BATCH_FORMAT,
            b.record_count,
            &b.bytes,
            Some(b.suffix_crc()),
            ts,
        )
    };
    for b in batches {
        let ts = if b.max_timestamp >= 0 {
            b.max_timestamp
        } else {
            now
        };
        if b.producer_id >= 0 {
            let Some(map) = producers.as_mut() else {
                break;
            };
            let state = &mut map
                .entry(key.clone())
                .or_insert_with(|| ProducerState {
                    log: log.clone(),
                    producers: PartitionProducers::default(),
                })
                .producers;
            match state.check(
                b.producer_id,
                b.producer_epoch,
                b.base_sequence,
                b.record_count as i32,
            ) {
                Decision::Append => {}
                Decision::Duplicate { base_offset } => {
                    if pa.base_offset < 0 {
                        pa.base_offset = base_offset;
                    }
                    continue;
                }
                other => {
                    pa.error = Some(other.error().unwrap_or(ResponseError::UnknownServerError));
                    return;
                }
            }
            match append(&b, ts) {
                Ok((base, commit)) => {
                    state.record(
                        b.producer_id,
                        b.producer_epoch,
                        b.base_sequence,
                        b.record_count as i32,
                        base as i64,
                        now,
                    );
                    if pa.base_offset < 0 {
                        pa.base_offset = base as i64;
                    }
                    pa.commits.push(commit);
                }
                Err(e) => {
                    pa.error = Some(core_error(&e));
                    pa.message = Some(e.to_string());
                    return;
                }
            }
        } else {
            match append(&b, ts) {
                Ok((base, commit)) => {
                    if pa.base_offset < 0 {
                        pa.base_offset = base as i64;
                    }
                    pa.commits.push(commit);
                }
                Err(e) => {
                    pa.error = Some(core_error(&e));
                    pa.message = Some(e.to_string());
                    return;
                }
            }
        }
    }
    pa.log_start = st.bounds(partition).map(|(s, _)| s as i64).unwrap_or(-1);
}

/// Idempotent-producer state of one partition and the partition's log it belongs to.
#[derive(Debug)]
pub(crate) struct ProducerState {
    log: Weak<StreamLog>,
    producers: PartitionProducers,
}

/// Records at the end of a partition read to rebuild its producers' state after a restart:
/// a producer's retries are of its last (at most five) batches, which sit at the end of
/// the log; 100,000 records hold five batches of 20,000 records (librdkafka's default
/// batch holds at most 10,000) for one producer, or of 1,000 for twenty.
const PRODUCER_REBUILD_RECORDS: u64 = 100_000;
/// Bytes read at most for one rebuild (large records: fewer of them are read).
const PRODUCER_REBUILD_BYTES: usize = 256 << 20;

/// Whether the state held for `key` was built for this very stream object.
fn producer_state_current(kafka: &Kafka, key: &(String, u32), log: &Weak<StreamLog>) -> bool {
    let map = kafka.producers.lock().unwrap_or_else(|p| p.into_inner());
    map.get(key).is_some_and(|cur| cur.log.ptr_eq(log))
}

/// The idempotent producers of a partition as its stored Kafka batches show them (Kafka
/// rebuilds `ProducerStateManager` from the log the same way): the producer id, epoch and
/// sequences in each batch header, at their stored offsets, for the last
/// [`PRODUCER_REBUILD_RECORDS`] records. Retries of batches acknowledged before a restart
/// are then answered as duplicates instead of being appended twice.
fn rebuild_producers(st: &Stream, partition: u32, now: i64) -> PartitionProducers {
    let mut state = PartitionProducers::default();
    // The newest batches may still wait for the group-commit round: they count most here.
    if let Err(e) = st.make_readable(partition) {
        tracing::warn!(stream = %st.name(), partition, error = %e,
            "cannot write the pending batches to rebuild idempotent producers");
    }
    let Ok((start, next)) = st.bounds(partition) else {
        return state;
    };
    let mut from = next.saturating_sub(PRODUCER_REBUILD_RECORDS).max(start);
    let mut read = 0usize;
    while from < next && read < PRODUCER_REBUILD_BYTES {
        let batches = match st.read_batches(partition, from, 8 << 20) {
            Ok(b) if !b.is_empty() => b,
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(stream = %st.name(), partition, error = %e,
                    "cannot read the log to rebuild idempotent producers; they start unknown");
                break;
            }
        };
        for b in &batches {
            read += b.size_bytes();
            from = from.max(b.next_offset());
            if !(b.is_opaque() && b.format == KAFKA_BATCH_FORMAT) {
                continue;
            }
            let Some((pid, epoch, seq, count)) = records::stored_producer(b.payload()) else {
                continue;
            };
            // Batches of an older epoch than one already seen predate a bump: ignored.
            let newer = state.last_sequence(pid).is_none_or(|(e, _)| epoch >= e);
            if seq >= 0 && count >= 1 && newer {
                state.record(pid, epoch, seq, count, b.base_offset as i64, now);
            }
        }
    }
    state
}

fn record_error(e: &RecordError) -> ResponseError {
    ResponseError::try_from_code(e.code()).unwrap_or(ResponseError::CorruptMessage)
}

// ---------------------------------------------------------------- Fetch

struct FetchPart {
    topic: usize,
    partition: i32,
    fetch_offset: i64,
    max_bytes: usize,
    stream: Option<Arc<Stream>>,
    /// No read permission on the topic: TOPIC_AUTHORIZATION_FAILED, nothing read.
    denied: bool,
}

fn fetch(kafka: Arc<Kafka>, az: &Authz, req: FetchRequest, v: i16) -> Pending {
    let mut names = Vec::new();
    let mut parts = Vec::new();
    for (ti, t) in req.topics.into_iter().enumerate() {
        let name = t.topic.0.to_string();
        let denied = !az.topic(Access::Read, &name);
        let stream = if denied { None } else { kafka.stream(&name) };
        names.push(t.topic);
        for p in t.partitions {
            parts.push(FetchPart {
                topic: ti,
                partition: p.partition,
                fetch_offset: p.fetch_offset,
                max_bytes: usize::try_from(p.partition_max_bytes).unwrap_or(0),
                stream: stream.clone(),
                denied,
            });
        }
    }
    let max_wait = Duration::from_millis(u64::try_from(req.max_wait_ms).unwrap_or(0).min(60_000));
    let min_bytes = usize::try_from(req.min_bytes).unwrap_or(0);
    // The client's limit, within the broker's (Kafka's fetch.max.bytes).
    let max_bytes = usize::try_from(req.max_bytes)
        .unwrap_or(usize::MAX)
        .min(kafka.config.fetch_max_bytes)
        .max(1);
    Box::pin(async move {
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            // Register for what becomes readable before reading, so nothing is missed
            // between the two.
            let waits: Vec<_> = parts
                .iter()
                .filter_map(|p| {
                    let st = p.stream.as_ref()?;
                    let n = st.readable(u32::try_from(p.partition).ok()?).ok()?;
                    Some(Box::pin(n))
                })
                .collect();
            let mut waits = waits;
            for w in waits.iter_mut() {
                w.as_mut().enable();
            }
            let (resp, records, bytes) = fetch_once(&names, &parts, max_bytes);
            let now = tokio::time::Instant::now();
            if bytes >= min_bytes.max(1) || now >= deadline || waits.is_empty() {
                return Some(encode_fetch(&resp, records, v));
            }
            let _ =
                tokio::time::timeout_at(deadline, futures_util::future::select_all(waits)).await;
        }
    })
}

/// The record sets of a Fetch answer, per topic and partition in response order (`None`:
/// null records), kept out of the [`FetchResponse`] so that
/// [`encode_fetch`] can hand stored batches to the socket without copying them.
type FetchRecords = Vec<Vec<Option<Vec<Bytes>>>>;

fn fetch_once(
    names: &[TopicName],
    parts: &[FetchPart],
    max_bytes: usize,
) -> (FetchResponse, FetchRecords, usize) {
    let mut r = FetchResponse::default();
    let mut topics: Vec<fetch_response::FetchableTopicResponse> = names
        .iter()
        .map(|n| {
            let mut t = fetch_response::FetchableTopicResponse::default();
            t.topic = n.clone();
            t
        })
        .collect();
    let mut records: FetchRecords = vec![Vec::new(); names.len()];
    let mut total = 0usize;
    for p in parts {
        // Every path below pushes exactly one partition answer and one record set (empty
        // for an error answer, as Kafka sends); the records travel apart (encode_fetch).
        records[p.topic].push(Some(Vec::new()));
        let mut pd = fetch_response::PartitionData::default();
        pd.records = None;
        pd.partition_index = p.partition;
        pd.aborted_transactions = Some(Vec::new());
        let (Some(st), Ok(idx)) = (&p.stream, u32::try_from(p.partition)) else {
            pd.error_code = if p.denied {
                ResponseError::TopicAuthorizationFailed.code()
            } else {
                ResponseError::UnknownTopicOrPartition.code()
            };
            pd.high_watermark = -1;
            pd.last_stable_offset = -1;
            pd.log_start_offset = -1;
            topics[p.topic].partitions.push(pd);
            continue;
        };
        let (start, next) = match st.bounds(idx) {
            Ok(b) => b,
            Err(_) => {
                pd.error_code = ResponseError::UnknownTopicOrPartition.code();
                topics[p.topic].partitions.push(pd);
                continue;
            }
        };
        pd.high_watermark = next as i64;
        pd.last_stable_offset = next as i64;
        pd.log_start_offset = start as i64;
        if p.fetch_offset < start as i64 || p.fetch_offset > next as i64 {
            pd.error_code = ResponseError::OffsetOutOfRange.code();
            topics[p.topic].partitions.push(pd);
            continue;
        }
        let from = p.fetch_offset as u64;
        let budget = p.max_bytes.min(max_bytes.saturating_sub(total));
        let mut set = RecordSet::default();
        if from < next && (budget > 0 || total == 0) {
            if let Err(e) = read_records(st, idx, from, budget.max(1), total == 0, &mut set) {
                tracing::warn!(stream = %st.name(), partition = idx, error = %e, "Kafka fetch read failed");
                pd.error_code = ResponseError::KafkaStorageError.code();
            }
        }
        total += set.len;
        if let Some(slot) = records[p.topic].last_mut() {
            *slot = Some(set.finish());
        }
        topics[p.topic].partitions.push(pd);
    }
    r.responses = topics;
    (r, records, total)
}

/// Stored batches at least this large are sent as slices of the storage read buffer;
/// smaller ones are copied together into one buffer (fewer, larger socket writes).
const ZERO_COPY_MIN: usize = 16 << 10;

/// A partition's record set being gathered: buffers in order, and their total length.
#[derive(Default)]
struct RecordSet {
    parts: Vec<Bytes>,
    small: BytesMut,
    len: usize,
}

impl RecordSet {
    /// A stored Kafka batch with its base offset set (and partition leader epoch 0): the
    /// 16 patched header bytes are copied, the rest of a large batch is not.
    fn push_stored(&mut self, stored: &Bytes, base_offset: u64) {
        self.len += stored.len();
        if stored.len() < ZERO_COPY_MIN {
            records::put_stored_batch(&mut self.small, stored, base_offset);
            return;
        }
        // As put_stored_batch patches them: base offset, then (after the batch length)
        // the partition leader epoch.
        let at = self.small.len();
        self.small.extend_from_slice(&stored[..16]);
        self.small[at..at + 8].copy_from_slice(&(base_offset as i64).to_be_bytes());
        self.small[at + 12..at + 16].copy_from_slice(&0i32.to_be_bytes());
        self.parts.push(self.small.split().freeze());
        self.parts.push(stored.slice(16..));
    }

    fn push_encoded(&mut self, encoded: &[u8]) {
        self.len += encoded.len();
        self.small.extend_from_slice(encoded);
    }

    fn finish(mut self) -> Vec<Bytes> {
        if !self.small.is_empty() {
            self.parts.push(self.small.freeze());
        }
        self.parts
    }
}

/// Encodes a Fetch response whose partitions' record sets are in `records` (their
/// `records` fields are left `None`): byte for byte what kafka-protocol encodes with the
/// record sets in place, but with large stored batches as buffers of their own. Each
/// partition is encoded by kafka-protocol with null records, whose trailing null marker is
/// then replaced by the record set's length and buffers (records is the last field of a
/// partition before v12's tagged fields, and FerryMQ sets none of those).
fn encode_fetch(resp: &FetchResponse, records: FetchRecords, v: i16) -> Body {
    match encode_fetch_parts(resp, records, v) {
        Ok(body) => body,
        Err(e) => {
            tracing::error!(error = %e, version = v, "Kafka Fetch response does not encode");
            Body::default()
        }
    }
}

fn encode_fetch_parts(resp: &FetchResponse, records: FetchRecords, v: i16) -> Result<Body, String> {
    use bytes::BufMut;
    let flexible = v >= 12;
    let mut parts: Vec<Bytes> = Vec::new();
    let mut cur = BytesMut::with_capacity(256);
    let put_count = |cur: &mut BytesMut, n: usize| -> Result<(), String> {
        if flexible {
            put_uvarint(cur, u32::try_from(n + 1).map_err(|_| "array too long")?);
        } else {
            cur.put_i32(i32::try_from(n).map_err(|_| "array too long")?);
        }
        Ok(())
    };
    if !resp.node_endpoints.is_empty() || !resp.unknown_tagged_fields.is_empty() {
        return Err("tagged fields are not encoded here".into());
    }
    cur.put_i32(resp.throttle_time_ms);
    if v >= 7 {
        cur.put_i16(resp.error_code);
        cur.put_i32(resp.session_id);
    }
    put_count(&mut cur, resp.responses.len())?;
    if records.len() != resp.responses.len() {
        return Err("record sets do not match the topics".into());
    }
    for (topic, sets) in resp.responses.iter().zip(records) {
        if !topic.unknown_tagged_fields.is_empty() || sets.len() != topic.partitions.len() {
            return Err("record sets do not match the partitions".into());
        }
        let name = topic.topic.0.as_bytes();
        if flexible {
            put_uvarint(
                &mut cur,
                u32::try_from(name.len() + 1).map_err(|_| "name too long")?,
            );
        } else {
            cur.put_i16(i16::try_from(name.len()).map_err(|_| "name too long")?);
        }
        cur.put_slice(name);
        put_count(&mut cur, topic.partitions.len())?;
        for (pd, set) in topic.partitions.iter().zip(sets) {
            if pd.records.is_some() {
                return Err("partition records must be passed separately".into());
            }
            pd.encode(&mut cur, v).map_err(|e| e.to_string())?;
            let Some(set) = set else {
                continue; // null records, as encoded
            };
            // Replace the null marker (and v12's empty tagged fields) by the record set.
            let trailer: &[u8] = if flexible { &[0, 0] } else { &[0xff; 4] };
            if !cur.ends_with(trailer) {
                return Err("unexpected partition encoding".into());
            }
            cur.truncate(cur.len() - trailer.len());
            let len: usize = set.iter().map(Bytes::len).sum();
            if flexible {
                put_uvarint(
                    &mut cur,
                    u32::try_from(len + 1).map_err(|_| "records too long")?,
                );
            } else {
                cur.put_i32(i32::try_from(len).map_err(|_| "records too long")?);
            }
            for b in set {
                if b.len() >= ZERO_COPY_MIN {
                    parts.push(cur.split().freeze());
                    parts.push(b);
                } else {
                    cur.put_slice(&b);
                }
            }
            if flexible {
                cur.put_u8(0); // the partition's tagged fields: none
            }
        }
        if flexible {
            cur.put_u8(0); // the topic's tagged fields: none
        }
    }
    if flexible {
        cur.put_u8(0); // the response's tagged fields: none
    }
    parts.push(cur.freeze());
    parts.retain(|b| !b.is_empty());
    Ok(Body(parts))
}

/// Kafka's unsigned varint.
fn put_uvarint(out: &mut BytesMut, mut v: u32) {
    use bytes::BufMut;
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

/// Appends whole batches from `from` to `out` while they fit in `budget` (the first one
/// always when `first` is set, so a batch larger than the limits still gets through, as
/// KIP-74 asks). Kafka batches are copied as stored with their offset set; batches of
/// other protocols are encoded as uncompressed Kafka batches.
fn read_records(
    st: &Stream,
    partition: u32,
    from: u64,
    budget: usize,
    first: bool,
    out: &mut RecordSet,
) -> ferrymq_core::Result<()> {
    let batches = st.read_batches(partition, from, budget)?;
    for b in batches {
        if b.is_opaque() && b.format == KAFKA_BATCH_FORMAT {
            if out.len + b.payload().len() > budget && !(first && out.len == 0) {
                break;
            }
            out.push_stored(b.payload(), b.base_offset);
        } else {
            let msgs = ferrymq_core::decode_batch(&b)?;
            let refs: Vec<(i64, &ferrymq_core::Message)> =
                msgs.iter().map(|(_, ts, m)| (*ts, m)).collect();
            let mut enc = BytesMut::new();
            records::encode_messages(&mut enc, b.base_offset, &refs, b.timestamp_ms);
            if out.len + enc.len() > budget && !(first && out.len == 0) {
                break;
            }
            out.push_encoded(&enc);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- ListOffsets

fn list_offsets(kafka: &Kafka, az: &Authz, req: ListOffsetsRequest, v: i16) -> ListOffsetsResponse {
    let mut r = ListOffsetsResponse::default();
    for t in req.topics {
        let name = t.name.0.to_string();
        let denied = !az.topic(Access::Read, &name);
        let stream = if denied { None } else { kafka.stream(&name) };
        let mut tr = list_offsets_response::ListOffsetsTopicResponse::default();
        tr.name = t.name;
        for p in t.partitions {
            let mut pr = list_offsets_response::ListOffsetsPartitionResponse::default();
            pr.partition_index = p.partition_index;
            pr.timestamp = -1;
            pr.offset = -1;
            match (&stream, u32::try_from(p.partition_index)) {
                (Some(st), Ok(idx)) if idx < st.partition_count() => {
                    match offset_for(st, idx, p.timestamp) {
                        Ok((off, ts)) => {
                            pr.offset = off;
                            pr.timestamp = ts;
                            if v >= 4 {
                                pr.leader_epoch = 0;
                            }
                        }
                        Err(e) => pr.error_code = core_error(&e).code(),
                    }
                }
                _ if denied => pr.error_code = ResponseError::TopicAuthorizationFailed.code(),
                _ => pr.error_code = ResponseError::UnknownTopicOrPartition.code(),
            }
            tr.partitions.push(pr);
        }
        r.topics.push(tr);
    }
    r
}

/// Kafka's ListOffsets semantics: -1 latest (the next offset), -2 earliest, -3 the
/// record with the largest timestamp, else the first record whose timestamp is at
/// least the one given (offset -1 if none).
fn offset_for(st: &Stream, p: u32, ts: i64) -> ferrymq_core::Result<(i64, i64)> {
    let (start, next) = st.bounds(p)?;
    Ok(match ts {
        -1 => (next as i64, -1),
        -2 => (start as i64, -1),
        -3 => {
            // KIP-734: the first record with the largest timestamp. Only the segment holding
            // the largest batch timestamp is read.
            let Some((max, from, to)) = st.max_timestamp_range(p)? else {
                return Ok((-1, -1));
            };
            let mut at = from;
            let mut found = (-1, -1);
            'scan: while at < to {
                let batches = st.read_batches(p, at, 1 << 20)?;
                if batches.is_empty() {
                    break;
                }
                for b in &batches {
                    if b.timestamp_ms == max {
                        let recs = ferrymq_core::decode_batch(b)?;
                        if let Some((off, ts, _)) = recs.iter().find(|(_, ts, _)| *ts == max) {
                            found = (*off as i64, *ts);
                            break 'scan;
                        }
                    }
                    at = at.max(b.next_offset());
                }
            }
            found
        }
        t if t < 0 => (-1, -1),
        t => {
            let mut at = st.resolve(p, StreamOffset::Timestamp(t))?;
            // The time index points at the first batch that may hold it; find the record.
            loop {
                if at >= next {
                    break (-1, -1);
                }
                let recs = st.read(p, at, 500)?;
                if recs.is_empty() {
                    break (-1, -1);
                }
                if let Some(r) = recs.iter().find(|r| r.timestamp_ms >= t) {
                    break (r.offset as i64, r.timestamp_ms);
                }
                at = recs.last().map_or(next, |r| r.offset + 1);
            }
        }
    })
}

// ---------------------------------------------------------------- Offsets

fn offset_commit(kafka: &Arc<Kafka>, az: &Authz, req: OffsetCommitRequest, v: i16) -> Pending {
    let group = req.group_id.0.to_string();
    // Read on the group, then (per topic, as Kafka does) read on the topic.
    // Authorization comes before the group's own checks, as in Kafka.
    let group_ok = az.group(&group);
    let check = if group_ok {
        kafka.groups.validate_commit(
            &group,
            req.generation_id_or_member_epoch,
            req.member_id.as_str(),
            req.group_instance_id.as_ref().map(|g| g.as_str()),
        )
    } else {
        Err(ResponseError::GroupAuthorizationFailed)
    };
    let mut commits: Vec<(usize, usize, Commit)> = Vec::new();
    let mut r = OffsetCommitResponse::default();
    for (ti, t) in req.topics.into_iter().enumerate() {
        let name = t.name.0.to_string();
        let readable = az.topic(Access::Read, &name);
        let stream = kafka.stream(&name);
        let mut tr = offset_commit_response::OffsetCommitResponseTopic::default();
        tr.name = t.name;
        for (pi, p) in t.partitions.into_iter().enumerate() {
            let mut pr = offset_commit_response::OffsetCommitResponsePartition::default();
            pr.partition_index = p.partition_index;
            let code = match (
                &check,
                &stream,
                u32::try_from(p.partition_index),
                u64::try_from(p.committed_offset),
            ) {
                _ if group_ok && !readable => ResponseError::TopicAuthorizationFailed.code(),
                (Err(e), _, _, _) => e.code(),
                (Ok(()), Some(st), Ok(idx), Ok(off)) if idx < st.partition_count() => {
                    match st.commit_offset(&group, idx, off) {
                        Ok(c) => {
                            commits.push((ti, pi, c));
                            0
                        }
                        Err(e) => core_error(&e).code(),
                    }
                }
                (Ok(()), Some(_), Ok(_), Err(_)) => ResponseError::InvalidCommitOffsetSize.code(),
                _ => ResponseError::UnknownTopicOrPartition.code(),
            };
            pr.error_code = code;
            tr.partitions.push(pr);
        }
        r.topics.push(tr);
    }
    if check.is_ok() && !group.is_empty() {
        let _ = kafka.groups.register_group(&group);
    }
    Box::pin(async move {
        for (ti, pi, c) in commits {
            if c.await.is_err() {
                r.topics[ti].partitions[pi].error_code = ResponseError::KafkaStorageError.code();
            }
        }
        encode(&r, v)
    })
}

/// A topic's committed offsets for a group: `(partition, offset or -1, error code)`.
type TopicOffsets = (TopicName, Vec<(i32, i64, i16)>);

/// Committed offsets of `group` for `topics` (all topics with one when `None`).
fn group_offsets(
    kafka: &Kafka,
    group: &str,
    topics: Option<Vec<(TopicName, Vec<i32>)>>,
) -> Vec<TopicOffsets> {
    match topics {
        None => kafka
            .topic_streams()
            .iter()
            .filter_map(|st| {
                let parts: Vec<(i32, i64, i16)> = (0..st.partition_count())
                    .filter_map(|p| {
                        let o = st.committed_offset(group, p).ok()??;
                        Some((p as i32, o as i64, 0))
                    })
                    .collect();
                (!parts.is_empty()).then(|| (TopicName(s(st.name())), parts))
            })
            .collect(),
        Some(list) => list
            .into_iter()
            .map(|(name, parts)| {
                let st = kafka.stream(name.0.as_str());
                let out = parts
                    .into_iter()
                    .map(|p| match (&st, u32::try_from(p)) {
                        (Some(st), Ok(idx)) if idx < st.partition_count() => {
                            let o = st.committed_offset(group, idx).ok().flatten();
                            (p, o.map_or(-1, |o| o as i64), 0)
                        }
                        // Kafka answers -1 without an error for unknown partitions here.
                        _ => (p, -1, 0),
                    })
                    .collect();
                (name, out)
            })
            .collect(),
    }
}

fn offset_fetch(kafka: &Kafka, az: &Authz, req: OffsetFetchRequest, v: i16) -> OffsetFetchResponse {
    let mut r = OffsetFetchResponse::default();
    let denied = ResponseError::GroupAuthorizationFailed.code();
    if v >= 8 {
        for g in req.groups {
            let group = g.group_id.0.to_string();
            if !az.group(&group) {
                let mut gr = offset_fetch_response::OffsetFetchResponseGroup::default();
                gr.group_id = g.group_id;
                gr.error_code = denied;
                r.groups.push(gr);
                continue;
            }
            let topics = g.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| (t.name, t.partition_indexes))
                    .collect()
            });
            let mut gr = offset_fetch_response::OffsetFetchResponseGroup::default();
            gr.group_id = g.group_id;
            for (name, parts) in group_offsets(kafka, &group, topics) {
                let mut tr = offset_fetch_response::OffsetFetchResponseTopics::default();
                tr.name = name;
                for (p, off, code) in parts {
                    let mut pr = offset_fetch_response::OffsetFetchResponsePartitions::default();
                    pr.partition_index = p;
                    pr.committed_offset = off;
                    pr.committed_leader_epoch = -1;
                    pr.metadata = Some(StrBytes::default());
                    pr.error_code = code;
                    tr.partitions.push(pr);
                }
                gr.topics.push(tr);
            }
            r.groups.push(gr);
        }
    } else {
        let group = req.group_id.0.to_string();
        if !az.group(&group) {
            // v2+ has a top-level error code; v1 only the partitions' codes.
            if v >= 2 {
                r.error_code = denied;
            } else {
                for t in req.topics.unwrap_or_default() {
                    let mut tr = offset_fetch_response::OffsetFetchResponseTopic::default();
                    tr.name = t.name;
                    for p in t.partition_indexes {
                        let mut pr = offset_fetch_response::OffsetFetchResponsePartition::default();
                        pr.partition_index = p;
                        pr.committed_offset = -1;
                        pr.committed_leader_epoch = -1;
                        pr.metadata = Some(StrBytes::default());
                        pr.error_code = denied;
                        tr.partitions.push(pr);
                    }
                    r.topics.push(tr);
                }
            }
            return r;
        }
        let topics = req.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (t.name, t.partition_indexes))
                .collect()
        });
        for (name, parts) in group_offsets(kafka, &group, topics) {
            let mut tr = offset_fetch_response::OffsetFetchResponseTopic::default();
            tr.name = name;
            for (p, off, code) in parts {
                let mut pr = offset_fetch_response::OffsetFetchResponsePartition::default();
                pr.partition_index = p;
                pr.committed_offset = off;
                pr.committed_leader_epoch = -1;
                pr.metadata = Some(StrBytes::default());
                pr.error_code = code;
                tr.partitions.push(pr);
            }
            r.topics.push(tr);
        }
    }
    r
}

/// DescribeGroups: groups the user may not read get GROUP_AUTHORIZATION_FAILED, in the
/// request's order.
fn describe_groups(
    kafka: &Kafka,
    az: &Authz,
    mut req: DescribeGroupsRequest,
    v: i16,
) -> DescribeGroupsResponse {
    let order: Vec<GroupId> = req.groups.clone();
    req.groups.retain(|g| az.group(g.as_str()));
    let mut r = kafka.groups.describe_groups(req, v);
    let mut described = std::mem::take(&mut r.groups);
    for g in order {
        match described.iter().position(|d| d.group_id == g) {
            Some(i) => r.groups.push(described.swap_remove(i)),
            None => {
                let mut d = describe_groups_response::DescribedGroup::default();
                d.group_id = g;
                d.error_code = ResponseError::GroupAuthorizationFailed.code();
                r.groups.push(d);
            }
        }
    }
    r
}

/// DeleteGroups: groups the user may not read get GROUP_AUTHORIZATION_FAILED and stay.
fn delete_groups(
    kafka: &Kafka,
    az: &Authz,
    mut req: DeleteGroupsRequest,
    v: i16,
) -> DeleteGroupsResponse {
    let refused: Vec<GroupId> = req
        .groups_names
        .iter()
        .filter(|g| !az.group(g.as_str()))
        .cloned()
        .collect();
    req.groups_names.retain(|g| !refused.contains(g));
    let mut r = kafka.groups.delete_groups(req, v);
    for g in refused {
        let mut res = delete_groups_response::DeletableGroupResult::default();
        res.group_id = g;
        res.error_code = ResponseError::GroupAuthorizationFailed.code();
        r.results.push(res);
    }
    for res in r.results.iter_mut() {
        if res.error_code == 0 {
            let g = res.group_id.0.to_string();
            for st in kafka.topic_streams() {
                if let Err(e) = st.remove_offsets(&g) {
                    tracing::warn!(group = %g, stream = %st.name(), error = %e, "removing group offsets failed");
                    res.error_code = ResponseError::KafkaStorageError.code();
                }
            }
        }
    }
    r
}

// ---------------------------------------------------------------- Producers

fn init_producer_id(kafka: &Kafka, req: InitProducerIdRequest) -> InitProducerIdResponse {
    let mut r = InitProducerIdResponse::default();
    if req.transactional_id.is_some() {
        r.error_code = ResponseError::TransactionalIdAuthorizationFailed.code();
        r.producer_id = ProducerId(-1);
        r.producer_epoch = -1;
        return r;
    }
    if req.producer_id.0 >= 0 && req.producer_epoch >= 0 {
        // KIP-360: an idempotent producer bumps its epoch to recover from an error.
        if req.producer_epoch == i16::MAX {
            let id = kafka.producer_ids.allocate();
            r.producer_id = ProducerId(id.producer_id);
            r.producer_epoch = id.epoch;
        } else {
            r.producer_id = req.producer_id;
            r.producer_epoch = req.producer_epoch + 1;
        }
        return r;
    }
    let id = kafka.producer_ids.allocate();
    r.producer_id = ProducerId(id.producer_id);
    r.producer_epoch = id.epoch;
    r
}

// ---------------------------------------------------------------- SASL

/// SCRAM credentials from the core's users: the stored keys derived when each password
/// was set (a user imported with only a hash has none, and cannot use SCRAM).
#[derive(Clone)]
pub(crate) struct UserCredentials(pub Arc<Kafka>);

impl CredentialLookup for UserCredentials {
    fn scram_sha256(&self, user: &str) -> Option<ScramCredential> {
        let u = self.0.broker.user(user)?;
        let (salt, iterations, stored_key, server_key) = u.scram_sha256?.decode()?;
        Some(ScramCredential {
            salt,
            iterations,
            stored_key,
            server_key,
        })
    }
}

fn sasl_handshake(
    kafka: &Kafka,
    state: &mut ConnState,
    req: SaslHandshakeRequest,
) -> SaslHandshakeResponse {
    let mut r = SaslHandshakeResponse::default();
    r.mechanisms = kafka
        .config
        .sasl_mechanisms
        .iter()
        .map(|m| s(m.name()))
        .collect();
    match Mechanism::from_name(req.mechanism.as_str()) {
        Some(m)
            if kafka.config.sasl_mechanisms.contains(&m)
                && matches!(state.auth, Auth::Required) =>
        {
            state.auth = Auth::Handshake(m);
        }
        Some(m) if kafka.config.sasl_mechanisms.contains(&m) => {
            r.error_code = ResponseError::IllegalSaslState.code();
        }
        _ => r.error_code = ResponseError::UnsupportedSaslMechanism.code(),
    }
    r
}

fn sasl_authenticate(
    kafka: &Arc<Kafka>,
    state: &mut ConnState,
    req: SaslAuthenticateRequest,
) -> (SaslAuthenticateResponse, Option<String>) {
    let mut r = SaslAuthenticateResponse::default();
    let fail = |r: &mut SaslAuthenticateResponse, e: ResponseError, msg: String| {
        r.error_code = e.code();
        r.error_message = Some(s(msg.clone()));
        Some(msg)
    };
    let auth = std::mem::replace(&mut state.auth, Auth::Required);
    let close = match auth {
        Auth::Handshake(Mechanism::Plain) => match sasl::parse_plain(&req.auth_bytes) {
            Ok(c) => match kafka.broker.authenticate(c.username, c.password, state.peer_ip()) {
                Ok(u) => {
                    state.auth = Auth::Done(u.name);
                    None
                }
                Err(_) => fail(
                    &mut r,
                    ResponseError::SaslAuthenticationFailed,
                    "Authentication failed: Invalid username or password".into(),
                ),
            },
            Err(e) => fail(&mut r, e.response_error(), e.to_string()),
        },
        Auth::Handshake(Mechanism::ScramSha256) => {
            let mut server = ScramServer::new(UserCredentials(kafka.clone()));
            match server.handle_client_first(&req.auth_bytes) {
                Ok(out) => {
                    r.auth_bytes = Bytes::from(out);
                    state.auth = Auth::Scram(Box::new(server));
                    None
                }
                Err(e) => fail(&mut r, e.response_error(), e.to_string()),
            }
        }
        Auth::Scram(mut server) => match server.handle_client_final(&req.auth_bytes) {
            Ok((out, user)) => match kafka.broker.check_loopback(&user, state.peer_ip()) {
                Ok(()) => {
                    r.auth_bytes = Bytes::from(out);
                    state.auth = Auth::Done(user);
                    None
                }
                Err(e) => fail(&mut r, ResponseError::SaslAuthenticationFailed, e.to_string()),
            },
            Err(e) => fail(
                &mut r,
                e.response_error(),
                "Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-256".into(),
            ),
        },
        other => {
            state.auth = other;
            fail(
                &mut r,
                ResponseError::IllegalSaslState,
                "SaslAuthenticate without a SaslHandshake".into(),
            )
        }
    };
    (r, close)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Fetch answer of two topics whose partitions cover null, empty, small and large
    /// record sets, error codes and aborted-transaction lists, and the record sets apart.
    #[test]
    fn small_record_sets_are_copied_out_of_their_request() {
        let request = Bytes::from(vec![7u8; 1000]);
        let big = request.slice(0..600);
        let kept = compact(Some(big.clone()), 1000).unwrap();
        assert_eq!(kept.as_ptr(), big.as_ptr(), "more than half: not copied");
        let small = request.slice(600..1000);
        let copied = compact(Some(small.clone()), 1000).unwrap();
        assert_eq!(copied, small);
        assert_ne!(
            copied.as_ptr(),
            small.as_ptr(),
            "less than half: a buffer of its own"
        );
        assert_eq!(compact(None, 1000), None);
    }

    fn fetch_answer() -> (FetchResponse, FetchRecords) {
        let big: Bytes = (0..ZERO_COPY_MIN as u32 + 3000)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>()
            .into();
        let sets: Vec<Vec<Option<Vec<Bytes>>>> = vec![
            vec![
                None,
                Some(vec![]),
                Some(vec![Bytes::from_static(b"small batch bytes")]),
            ],
            vec![Some(vec![
                Bytes::from_static(b"0123456789abcdef"),
                big.slice(16..),
                Bytes::from_static(b"tail"),
                big.clone(),
            ])],
        ];
        let mut r = FetchResponse::default();
        r.throttle_time_ms = 7;
        r.session_id = 0;
        for (t, parts) in sets.iter().enumerate() {
            let mut topic = fetch_response::FetchableTopicResponse::default();
            topic.topic = TopicName(s(format!("topic-{t}")));
            for (i, _) in parts.iter().enumerate() {
                let mut pd = fetch_response::PartitionData::default();
                pd.records = None;
                pd.partition_index = i as i32;
                pd.error_code = if i == 0 && t == 0 { 3 } else { 0 };
                pd.high_watermark = 1000 + i as i64;
                pd.last_stable_offset = 1000 + i as i64;
                pd.log_start_offset = 5;
                pd.aborted_transactions = match i {
                    0 => None,
                    1 => Some(Vec::new()),
                    _ => Some(vec![fetch_response::AbortedTransaction::default()
                        .with_producer_id(ProducerId(9))
                        .with_first_offset(42)]),
                };
                topic.partitions.push(pd);
            }
            r.responses.push(topic);
        }
        (r, sets)
    }

    #[test]
    fn fetch_bodies_match_the_codec_byte_for_byte_at_every_version() {
        for v in 4..=12 {
            let (resp, sets) = fetch_answer();
            let mut whole = resp.clone();
            for (topic, parts) in whole.responses.iter_mut().zip(&sets) {
                for (pd, set) in topic.partitions.iter_mut().zip(parts) {
                    pd.records = set.as_ref().map(|b| b.concat().into());
                }
            }
            let mut expected = BytesMut::new();
            whole.encode(&mut expected, v).unwrap();
            let body = encode_fetch_parts(&resp, sets, v).unwrap_or_else(|e| panic!("v{v}: {e}"));
            let got = body.concat();
            // Compared as lengths and a first difference, not printed whole (large).
            let first_diff = got.iter().zip(expected.iter()).position(|(a, b)| a != b);
            assert_eq!(
                (got.len(), first_diff),
                (expected.len(), None),
                "Fetch v{v}"
            );
            // The large batches went out as buffers of their own, not copied.
            assert!(
                body.0.iter().filter(|b| b.len() >= ZERO_COPY_MIN).count() >= 2,
                "v{v}: {:?}",
                body.0.iter().map(Bytes::len).collect::<Vec<_>>()
            );
            // And the whole decodes as a Fetch response with the same record sets.
            let mut b = body.concat();
            let back =
                <FetchResponse as kafka_protocol::protocol::Decodable>::decode(&mut b, v).unwrap();
            let sets_of = |r: &FetchResponse| -> Vec<Option<Bytes>> {
                r.responses
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(|p| p.records.clone()))
                    .collect()
            };
            assert!(sets_of(&back) == sets_of(&whole), "Fetch v{v} decodes back");
        }
    }

    #[test]
    fn stored_batches_are_patched_whether_copied_or_sliced() {
        for size in [100usize, ZERO_COPY_MIN + 100] {
            let stored: Bytes = (0..size)
                .map(|i| (i % 7) as u8 + 1)
                .collect::<Vec<u8>>()
                .into();
            let mut set = RecordSet::default();
            set.push_stored(&stored, 77);
            set.push_stored(&stored, 78);
            assert_eq!(set.len, 2 * size);
            let mut expected = BytesMut::new();
            records::put_stored_batch(&mut expected, &stored, 77);
            records::put_stored_batch(&mut expected, &stored, 78);
            let parts = set.finish();
            assert_eq!(parts.concat(), expected.to_vec(), "size {size}");
        }
    }

    #[test]
    fn every_served_api_has_a_codec_range() {
        for (k, min, max) in VERSIONS {
            let (a, b) = supported(*k).unwrap_or_else(|| panic!("{k:?}"));
            assert!(a >= *min && b <= *max && a <= b, "{k:?}");
        }
        // The fallback answer decodes as an ApiVersions v0 response.
        let mut b = api_versions_fallback().freeze();
        let r = <ApiVersionsResponse as kafka_protocol::protocol::Decodable>::decode(&mut b, 0)
            .unwrap();
        assert_eq!(r.error_code, ResponseError::UnsupportedVersion.code());
        assert!(r.api_keys.iter().any(|k| k.api_key == ApiKey::Fetch as i16));
    }
}
