//! Kafka admin APIs over streams: CreateTopics, DeleteTopics, OffsetForLeaderEpoch,
//! CreatePartitions, DescribeConfigs, AlterConfigs, IncrementalAlterConfigs and
//! DeleteRecords.
//!
//! Topic configs map onto stream arguments through `topics::apply_config` and
//! `topics::config_value` (one mapping for every API); a change goes through
//! `VHost::reconfigure_stream`, which persists it and applies it at once. Broker configs
//! are reported read-only: they come from the server's configuration file.
//!
//! Permissions (`authz`): creating, deleting, repartitioning and reconfiguring a topic and
//! deleting its records need configure on it (Kafka's CREATE, DELETE, ALTER, ALTER_CONFIGS;
//! DeleteRecords is Kafka's DELETE); describing its configs and OffsetForLeaderEpoch need
//! read. Refusals are TOPIC_AUTHORIZATION_FAILED, for that topic alone. Broker configs are
//! described to anyone and altered by no one.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use ferrymq_core::{Access, FieldTable, Value};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::authz::Authz;
use crate::conn::{decode, encode, ready, Close, Pending};
use crate::topics;
use crate::Kafka;

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

/// Runs an admin request.
pub(crate) fn dispatch(
    kafka: &Arc<Kafka>,
    az: &Authz,
    key: ApiKey,
    v: i16,
    body: Bytes,
) -> Result<Pending, Close> {
    Ok(match key {
        ApiKey::CreateTopics => ready(encode(&create_topics(kafka, az, decode(body, v)?, v), v)),
        ApiKey::DeleteTopics => ready(encode(&delete_topics(kafka, az, decode(body, v)?, v), v)),
        ApiKey::OffsetForLeaderEpoch => ready(encode(
            &offset_for_leader_epoch(kafka, az, decode(body, v)?),
            v,
        )),
        ApiKey::CreatePartitions => {
            ready(encode(&create_partitions(kafka, az, decode(body, v)?), v))
        }
        ApiKey::DescribeConfigs => {
            ready(encode(&describe_configs(kafka, az, decode(body, v)?, v), v))
        }
        ApiKey::AlterConfigs => ready(encode(&alter_configs(kafka, az, decode(body, v)?), v)),
        ApiKey::IncrementalAlterConfigs => ready(encode(
            &incremental_alter_configs(kafka, az, decode(body, v)?),
            v,
        )),
        ApiKey::DeleteRecords => ready(encode(&delete_records(kafka, az, decode(body, v)?), v)),
        other => return Err(Close(format!("{other:?} is not implemented"))),
    })
}

/// TOPIC_AUTHORIZATION_FAILED for `access` on `name`, in Kafka's wording.
fn check(az: &Authz, access: Access, name: &str) -> Result<(), Failure> {
    if az.topic(access, name) {
        Ok(())
    } else {
        Err((
            ResponseError::TopicAuthorizationFailed,
            format!("{} access to topic '{name}' refused", access.as_str()),
        ))
    }
}

fn create_topics(
    kafka: &Kafka,
    az: &Authz,
    req: CreateTopicsRequest,
    v: i16,
) -> CreateTopicsResponse {
    let mut r = CreateTopicsResponse::default();
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut res = create_topics_response::CreatableTopicResult::default();
        res.name = t.name.clone();
        // Manual assignment: one node, so only the partition count matters.
        let partitions = if t.num_partitions == -1 && !t.assignments.is_empty() {
            t.assignments.len() as i32
        } else {
            t.num_partitions
        };
        let rf_ok = t.replication_factor == -1 || t.replication_factor == 1;
        let configs: Vec<(String, Option<String>)> = t
            .configs
            .iter()
            .map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string())))
            .collect();
        let outcome = if let Err(denied) = check(az, Access::Configure, &name) {
            Err(denied)
        } else if !rf_ok {
            Err((
                ResponseError::InvalidReplicationFactor,
                format!(
                    "Replication factor: {} larger than available brokers: 1.",
                    t.replication_factor
                ),
            ))
        } else {
            kafka.create_topic(&name, partitions, &configs, req.validate_only)
        };
        match outcome {
            Ok(Some(st)) => {
                res.topic_id = topics::topic_id(&kafka.config.vhost, &name);
                res.num_partitions = st.partition_count() as i32;
                res.replication_factor = 1;
            }
            // validate_only: everything checked, nothing created.
            Ok(None) => {
                res.num_partitions = if partitions == -1 {
                    kafka.config.default_partitions as i32
                } else {
                    partitions
                };
                res.replication_factor = 1;
            }
            Err((e, msg)) => {
                res.error_code = e.code();
                if v >= 1 {
                    res.error_message = Some(s(msg));
                }
                res.num_partitions = -1;
                res.replication_factor = -1;
            }
        }
        r.topics.push(res);
    }
    r
}

fn delete_topics(
    kafka: &Kafka,
    az: &Authz,
    req: DeleteTopicsRequest,
    v: i16,
) -> DeleteTopicsResponse {
    let mut r = DeleteTopicsResponse::default();
    let names: Vec<TopicName> = if v >= 6 {
        req.topics.into_iter().filter_map(|t| t.name).collect()
    } else {
        req.topic_names
    };
    for name in names {
        let n = name.0.to_string();
        let mut res = delete_topics_response::DeletableTopicResult::default();
        res.name = Some(name);
        if let Err((e, msg)) = check(az, Access::Configure, &n) {
            res.error_code = e.code();
            if v >= 5 {
                res.error_message = Some(s(msg));
            }
            r.responses.push(res);
            continue;
        }
        match (kafka.stream(&n), kafka.vhost()) {
            (Some(_), Some(vh)) => {
                if let Err(e) = vh.delete_queue(&n, false, false, 0) {
                    res.error_code = topics::core_error(&e).code();
                    if v >= 5 {
                        res.error_message = Some(s(e.to_string()));
                    }
                } else {
                    res.topic_id = topics::topic_id(&kafka.config.vhost, &n);
                }
            }
            _ => res.error_code = ResponseError::UnknownTopicOrPartition.code(),
        }
        r.responses.push(res);
    }
    r
}

/// One node, leader epoch 0 forever: the end offset of epoch 0 is the log end.
fn offset_for_leader_epoch(
    kafka: &Kafka,
    az: &Authz,
    req: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let mut r = OffsetForLeaderEpochResponse::default();
    for t in req.topics {
        let denied = !az.topic(Access::Read, t.topic.0.as_str());
        let st = if denied {
            None
        } else {
            kafka.stream(t.topic.0.as_str())
        };
        let mut tr = offset_for_leader_epoch_response::OffsetForLeaderTopicResult::default();
        tr.topic = t.topic;
        for p in t.partitions {
            let mut e = offset_for_leader_epoch_response::EpochEndOffset::default();
            e.partition = p.partition;
            match (&st, u32::try_from(p.partition)) {
                (Some(st), Ok(idx)) if idx < st.partition_count() => {
                    if p.current_leader_epoch > 0 {
                        e.error_code = ResponseError::UnknownLeaderEpoch.code();
                    } else if p.leader_epoch < 0 {
                        e.leader_epoch = -1;
                        e.end_offset = -1;
                    } else {
                        e.leader_epoch = 0;
                        e.end_offset = st.bounds(idx).map_or(-1, |(_, n)| n as i64);
                    }
                }
                _ => {
                    e.error_code = if denied {
                        ResponseError::TopicAuthorizationFailed.code()
                    } else {
                        ResponseError::UnknownTopicOrPartition.code()
                    };
                    e.leader_epoch = -1;
                    e.end_offset = -1;
                }
            }
            tr.partitions.push(e);
        }
        r.topics.push(tr);
    }
    r
}

/// Kafka's config resource types.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// Kafka's config sources (DescribeConfigs v1+).
const SOURCE_TOPIC: i8 = 1;
const SOURCE_DYNAMIC_DEFAULT_BROKER: i8 = 3;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;
/// IncrementalAlterConfigs operations.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

type Failure = (ResponseError, String);

fn unknown_topic(name: &str) -> Failure {
    (
        ResponseError::UnknownTopicOrPartition,
        format!("The topic '{name}' does not exist."),
    )
}

fn create_partitions(
    kafka: &Kafka,
    az: &Authz,
    req: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut r = CreatePartitionsResponse::default();
    let mut seen = HashSet::new();
    let dups: HashSet<String> = req
        .topics
        .iter()
        .filter(|t| !seen.insert(t.name.0.to_string()))
        .map(|t| t.name.0.to_string())
        .collect();
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut res = create_partitions_response::CreatePartitionsTopicResult::default();
        res.name = t.name.clone();
        let outcome = if dups.contains(&name) {
            Err((
                ResponseError::InvalidRequest,
                "Duplicate topic in request.".to_string(),
            ))
        } else {
            check(az, Access::Configure, &name)
                .and_then(|()| add_partitions(kafka, &name, &t, req.validate_only))
        };
        if let Err((e, msg)) = outcome {
            res.error_code = e.code();
            res.error_message = Some(s(msg));
        }
        r.results.push(res);
    }
    r
}

fn add_partitions(
    kafka: &Kafka,
    name: &str,
    t: &create_partitions_request::CreatePartitionsTopic,
    validate_only: bool,
) -> Result<(), Failure> {
    let st = kafka.stream(name).ok_or_else(|| unknown_topic(name))?;
    let cur = st.partition_count() as i32;
    let invalid = |m: String| Err((ResponseError::InvalidPartitions, m));
    if t.count == cur {
        return invalid(format!("Topic already has {cur} partitions."));
    }
    if t.count < cur {
        return invalid(format!(
            "Topic currently has {cur} partitions, which is higher than the requested {}.",
            t.count
        ));
    }
    let max = ferrymq_core::queue::args::STREAM_PARTITIONS_MAX;
    if t.count as u32 > max {
        return invalid(format!(
            "The number of partitions {} is above FerryMQ's limit of {max} per topic.",
            t.count
        ));
    }
    // Null (or empty, which kafka-protocol's default is): the broker assigns.
    if let Some(a) = t.assignments.as_ref().filter(|a| !a.is_empty()) {
        let bad = |m: String| Err((ResponseError::InvalidReplicaAssignment, m));
        let added = t.count - cur;
        if a.len() as i32 != added {
            return bad(format!(
                "Increasing the number of partitions by {added} but {} assignments provided.",
                a.len()
            ));
        }
        let node = kafka.config.node_id;
        if a.iter()
            .any(|x| x.broker_ids.is_empty() || x.broker_ids.iter().any(|b| b.0 != node))
        {
            return bad(format!(
                "Replica assignments must name broker {node} only: this is a single-node cluster."
            ));
        }
    }
    let mut args = st.decl.arguments.clone();
    args.insert("x-partitions", Value::Int(i64::from(t.count)));
    kafka.reconfigure_topic(name, args, validate_only)
}

/// One DescribeConfigs entry.
struct Entry {
    name: String,
    value: String,
    read_only: bool,
    source: i8,
    config_type: i8,
    /// `(name, value, source)`, most specific first.
    synonyms: Vec<(String, String, i8)>,
    doc: &'static str,
}

impl Entry {
    fn build(
        self,
        synonyms: bool,
        docs: bool,
        v: i16,
    ) -> describe_configs_response::DescribeConfigsResourceResult {
        let mut e = describe_configs_response::DescribeConfigsResourceResult::default();
        e.name = s(self.name);
        e.value = Some(s(self.value));
        e.read_only = self.read_only;
        e.config_source = self.source;
        e.is_sensitive = false;
        if synonyms {
            e.synonyms = self
                .synonyms
                .into_iter()
                .map(|(n, val, src)| {
                    let mut y = describe_configs_response::DescribeConfigsSynonym::default();
                    y.name = s(n);
                    y.value = Some(s(val));
                    y.source = src;
                    y
                })
                .collect();
        }
        if v >= 3 {
            e.config_type = self.config_type;
            if docs {
                e.documentation = Some(s(self.doc));
            }
        }
        e
    }
}

fn topic_doc(name: &str) -> &'static str {
    match name {
        "retention.ms" => "Age after which whole old segments are deleted (-1: no limit).",
        "retention.bytes" => {
            "Size above which the oldest whole segments are deleted (-1: no limit)."
        }
        "segment.bytes" => "Segment file size; a change applies from each partition's next roll.",
        "cleanup.policy" => "Only 'delete': FerryMQ does not compact.",
        _ => "Fixed by FerryMQ (read-only).",
    }
}

/// The configs of a topic, as Kafka reports them.
fn topic_entries(kafka: &Kafka, st: &ferrymq_core::stream::Stream) -> Vec<Entry> {
    let seg_default = kafka.broker.storage().config().segment_bytes;
    let effective = st.retention();
    let mut out = Vec::new();
    for c in topics::CONFIGS {
        let Some((value, is_default)) =
            topics::config_value(&st.decl.arguments, c.name, seg_default)
        else {
            continue;
        };
        let default_value = topics::config_value(&FieldTable::default(), c.name, seg_default)
            .map_or_else(|| value.clone(), |(d, _)| d);
        let default_syn = (c.broker_synonym.to_string(), default_value, SOURCE_DEFAULT);
        // A policy's retention, when the topic sets none: a cluster-wide dynamic default.
        let from_policy = match c.name {
            "retention.ms" => effective.max_age_ms,
            "retention.bytes" => effective.max_bytes,
            _ => None,
        };
        let (value, source, synonyms) = if !is_default {
            (
                value.clone(),
                SOURCE_TOPIC,
                vec![(c.name.to_string(), value, SOURCE_TOPIC), default_syn],
            )
        } else if let Some(p) = from_policy {
            (
                p.to_string(),
                SOURCE_DYNAMIC_DEFAULT_BROKER,
                vec![
                    (
                        c.broker_synonym.to_string(),
                        p.to_string(),
                        SOURCE_DYNAMIC_DEFAULT_BROKER,
                    ),
                    default_syn,
                ],
            )
        } else {
            (value, SOURCE_DEFAULT, vec![default_syn])
        };
        out.push(Entry {
            name: c.name.to_string(),
            value,
            read_only: false,
            source,
            config_type: c.config_type,
            synonyms,
            doc: topic_doc(c.name),
        });
    }
    for (name, value, config_type) in topics::read_only_configs(kafka.config.message_max_bytes) {
        let (source, syn) = if name == "max.message.bytes" {
            (SOURCE_STATIC_BROKER, "message.max.bytes")
        } else {
            (SOURCE_DEFAULT, name)
        };
        out.push(Entry {
            name: name.to_string(),
            synonyms: vec![(syn.to_string(), value.clone(), source)],
            value,
            read_only: true,
            source,
            config_type,
            doc: topic_doc(name),
        });
    }
    out
}

/// The broker's configs (read-only: they come from the server's configuration).
fn broker_entries(kafka: &Kafka) -> Vec<Entry> {
    let c = &kafka.config;
    let protocol = if c.sasl_mechanisms.is_empty() {
        "PLAINTEXT"
    } else {
        "SASL_PLAINTEXT"
    };
    let mechanisms: Vec<&str> = c.sasl_mechanisms.iter().map(|m| m.name()).collect();
    let list: Vec<(&str, String, i8)> = vec![
        ("broker.id", c.node_id.to_string(), 3),
        ("node.id", c.node_id.to_string(), 3),
        (
            "advertised.listeners",
            {
                let mut l = format!("{protocol}://{}:{}", c.advertised_host, c.advertised_port);
                if c.advertised_tls_port != 0 {
                    let ssl = if c.sasl_mechanisms.is_empty() {
                        "SSL"
                    } else {
                        "SASL_SSL"
                    };
                    l.push_str(&format!(
                        ",{ssl}://{}:{}",
                        c.advertised_host, c.advertised_tls_port
                    ));
                }
                l
            },
            2,
        ),
        (
            "auto.create.topics.enable",
            c.auto_create_topics.to_string(),
            1,
        ),
        ("num.partitions", c.default_partitions.to_string(), 3),
        ("default.replication.factor", "1".into(), 3),
        ("min.insync.replicas", "1".into(), 3),
        ("offsets.topic.replication.factor", "1".into(), 4),
        ("transaction.state.log.replication.factor", "1".into(), 4),
        ("message.max.bytes", c.message_max_bytes.to_string(), 3),
        (
            "socket.request.max.bytes",
            c.max_request_bytes.to_string(),
            3,
        ),
        (
            "log.segment.bytes",
            kafka.broker.storage().config().segment_bytes.to_string(),
            3,
        ),
        ("log.retention.ms", "-1".into(), 5),
        ("log.retention.bytes", "-1".into(), 5),
        ("log.cleanup.policy", "delete".into(), 7),
        ("log.message.timestamp.type", "CreateTime".into(), 2),
        ("compression.type", "producer".into(), 2),
        ("unclean.leader.election.enable", "false".into(), 1),
        (
            "group.min.session.timeout.ms",
            c.group.session_timeout_min_ms.to_string(),
            3,
        ),
        (
            "group.max.session.timeout.ms",
            c.group.session_timeout_max_ms.to_string(),
            3,
        ),
        (
            "group.initial.rebalance.delay.ms",
            c.group.initial_rebalance_delay_ms.to_string(),
            3,
        ),
        ("sasl.enabled.mechanisms", mechanisms.join(","), 7),
    ];
    list.into_iter()
        .map(|(name, value, config_type)| Entry {
            name: name.to_string(),
            synonyms: vec![(name.to_string(), value.clone(), SOURCE_STATIC_BROKER)],
            value,
            read_only: true,
            source: SOURCE_STATIC_BROKER,
            config_type,
            doc: "Set in FerryMQ's configuration file; read-only over Kafka.",
        })
        .collect()
}

/// Kafka accepts this node's id or "" (the cluster default) as a broker resource name.
fn check_broker(kafka: &Kafka, name: &str) -> Result<(), Failure> {
    let id = kafka.config.node_id;
    if name.is_empty() || name == id.to_string() {
        Ok(())
    } else {
        Err((
            ResponseError::InvalidRequest,
            format!("Unexpected broker id, expected {id} or empty string, but received {name}"),
        ))
    }
}

fn unsupported_resource(t: i8) -> Failure {
    (
        ResponseError::InvalidRequest,
        format!("Unsupported resource type {t}: FerryMQ serves topic (2) and broker (4) configs"),
    )
}

fn describe_configs(
    kafka: &Kafka,
    az: &Authz,
    req: DescribeConfigsRequest,
    v: i16,
) -> DescribeConfigsResponse {
    let mut r = DescribeConfigsResponse::default();
    for res in req.resources {
        let name = res.resource_name.to_string();
        let mut rr = describe_configs_response::DescribeConfigsResult::default();
        rr.resource_type = res.resource_type;
        rr.resource_name = res.resource_name.clone();
        let entries = match res.resource_type {
            RESOURCE_TOPIC => check(az, Access::Read, &name).and_then(|()| {
                kafka
                    .stream(&name)
                    .map(|st| topic_entries(kafka, &st))
                    .ok_or_else(|| unknown_topic(&name))
            }),
            RESOURCE_BROKER => check_broker(kafka, &name).map(|()| broker_entries(kafka)),
            t => Err(unsupported_resource(t)),
        };
        match entries {
            Ok(entries) => {
                // Null or empty: every config (as Kafka does).
                let keys: Option<Vec<String>> = res
                    .configuration_keys
                    .filter(|k| !k.is_empty())
                    .map(|k| k.iter().map(|x| x.to_string()).collect());
                rr.configs = entries
                    .into_iter()
                    .filter(|e| keys.as_ref().is_none_or(|k| k.contains(&e.name)))
                    .map(|e| e.build(req.include_synonyms, req.include_documentation, v))
                    .collect();
            }
            Err((e, msg)) => {
                rr.error_code = e.code();
                rr.error_message = Some(s(msg));
            }
        }
        r.results.push(rr);
    }
    r
}

/// Checks a config list for duplicate names (Kafka refuses the resource).
fn no_duplicates<'a>(names: impl Iterator<Item = &'a str>) -> Result<(), Failure> {
    let mut seen = HashSet::new();
    for n in names {
        if !seen.insert(n) {
            return Err((
                ResponseError::InvalidRequest,
                format!("Error due to duplicate config keys: {n}"),
            ));
        }
    }
    Ok(())
}

fn broker_read_only() -> Failure {
    (
        ResponseError::InvalidConfig,
        "FerryMQ's broker configs are read-only over Kafka: set them in the server's configuration file".into(),
    )
}

/// The outcome of altering one resource, as both alter APIs report it.
fn alter_result<T: Default>(
    res_type: i8,
    res_name: StrBytes,
    outcome: Result<(), Failure>,
    set: impl FnOnce(&mut T, i16, Option<StrBytes>, i8, StrBytes),
) -> T {
    let mut out = T::default();
    let (code, msg) = match outcome {
        Ok(()) => (0, None),
        Err((e, m)) => (e.code(), Some(s(m))),
    };
    set(&mut out, code, msg, res_type, res_name);
    out
}

/// AlterConfigs: the given configs replace the topic's whole set (the others go back
/// to their defaults).
fn alter_configs(kafka: &Kafka, az: &Authz, req: AlterConfigsRequest) -> AlterConfigsResponse {
    let mut r = AlterConfigsResponse::default();
    for res in req.resources {
        let name = res.resource_name.to_string();
        let outcome = no_duplicates(res.configs.iter().map(|c| c.name.as_str())).and_then(|()| {
            match res.resource_type {
                RESOURCE_TOPIC => {
                    check(az, Access::Configure, &name)?;
                    let st = kafka.stream(&name).ok_or_else(|| unknown_topic(&name))?;
                    let mut args = st.decl.arguments.clone();
                    topics::clear_configs(&mut args);
                    for c in &res.configs {
                        topics::apply_config(
                            &mut args,
                            c.name.as_str(),
                            c.value.as_deref(),
                            kafka.config.message_max_bytes,
                        )?;
                    }
                    kafka.reconfigure_topic(&name, args, req.validate_only)
                }
                RESOURCE_BROKER => {
                    check_broker(kafka, &name)?;
                    if res.configs.is_empty() {
                        Ok(())
                    } else {
                        Err(broker_read_only())
                    }
                }
                t => Err(unsupported_resource(t)),
            }
        });
        r.responses.push(alter_result(
            res.resource_type,
            res.resource_name,
            outcome,
            |o: &mut alter_configs_response::AlterConfigsResourceResponse, code, msg, t, n| {
                o.error_code = code;
                o.error_message = msg;
                o.resource_type = t;
                o.resource_name = n;
            },
        ));
    }
    r
}

/// IncrementalAlterConfigs: SET and DELETE single configs; APPEND and SUBTRACT only
/// apply to list configs, and FerryMQ's alterable configs are not lists.
fn incremental_alter_configs(
    kafka: &Kafka,
    az: &Authz,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut r = IncrementalAlterConfigsResponse::default();
    for res in req.resources {
        let name = res.resource_name.to_string();
        let outcome = no_duplicates(res.configs.iter().map(|c| c.name.as_str())).and_then(|()| {
            match res.resource_type {
                RESOURCE_TOPIC => {
                    check(az, Access::Configure, &name)?;
                    let st = kafka.stream(&name).ok_or_else(|| unknown_topic(&name))?;
                    let mut args = st.decl.arguments.clone();
                    for c in &res.configs {
                        let value = match c.config_operation {
                            OP_SET => c.value.as_deref(),
                            OP_DELETE => None,
                            op @ (OP_APPEND | OP_SUBTRACT) => {
                                let what = if op == OP_APPEND {
                                    "append"
                                } else {
                                    "subtract"
                                };
                                return Err((
                                    ResponseError::InvalidConfig,
                                    format!(
                                        "Config value {what} is not allowed for config key: {}",
                                        c.name
                                    ),
                                ));
                            }
                            op => {
                                return Err((
                                    ResponseError::InvalidRequest,
                                    format!("Unknown config operation {op} for {}", c.name),
                                ))
                            }
                        };
                        topics::apply_config(
                            &mut args,
                            c.name.as_str(),
                            value,
                            kafka.config.message_max_bytes,
                        )?;
                    }
                    kafka.reconfigure_topic(&name, args, req.validate_only)
                }
                RESOURCE_BROKER => {
                    check_broker(kafka, &name)?;
                    if res.configs.is_empty() {
                        Ok(())
                    } else {
                        Err(broker_read_only())
                    }
                }
                t => Err(unsupported_resource(t)),
            }
        });
        r.responses.push(alter_result(
            res.resource_type,
            res.resource_name,
            outcome,
            |o: &mut incremental_alter_configs_response::AlterConfigsResourceResponse,
             code,
             msg,
             t,
             n| {
                o.error_code = code;
                o.error_message = msg;
                o.resource_type = t;
                o.resource_name = n;
            },
        ));
    }
    r
}

/// DeleteRecords: moves each partition's low watermark up to the given offset (-1: the
/// high watermark). Durable when answered.
fn delete_records(kafka: &Kafka, az: &Authz, req: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let mut r = DeleteRecordsResponse::default();
    for t in req.topics {
        let denied = !az.topic(Access::Configure, t.name.0.as_str());
        let st = if denied {
            None
        } else {
            kafka.stream(t.name.0.as_str())
        };
        let mut tr = delete_records_response::DeleteRecordsTopicResult::default();
        tr.name = t.name;
        for p in t.partitions {
            let mut pr = delete_records_response::DeleteRecordsPartitionResult::default();
            pr.partition_index = p.partition_index;
            pr.low_watermark = -1;
            match (&st, u32::try_from(p.partition_index)) {
                (Some(st), Ok(idx)) if idx < st.partition_count() => {
                    let next = st.bounds(idx).map_or(0, |(_, n)| n);
                    let target = match p.offset {
                        -1 => Some(next),
                        o => u64::try_from(o).ok().filter(|o| *o <= next),
                    };
                    match target.map(|o| st.delete_records(idx, o)) {
                        None => pr.error_code = ResponseError::OffsetOutOfRange.code(),
                        Some(Ok(low)) => pr.low_watermark = low as i64,
                        Some(Err(ferrymq_core::CoreError::Storage(
                            ferrymq_storage::StorageError::OffsetOutOfRange { .. },
                        ))) => pr.error_code = ResponseError::OffsetOutOfRange.code(),
                        Some(Err(e)) => {
                            tracing::warn!(topic = %tr.name.0, partition = idx, error = %e, "DeleteRecords failed");
                            pr.error_code = topics::core_error(&e).code();
                        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use ferrymq_core::{Broker, BrokerConfig};
    use kafka_protocol::protocol::Encodable;

    /// The default user, with every permission on the vhost.
    fn guest(k: &Kafka) -> Authz {
        Authz::new(k, Some("guest".into()))
    }

    async fn kafka(dir: &std::path::Path) -> Arc<Kafka> {
        let mut cfg = BrokerConfig {
            data_dir: dir.to_path_buf(),
            ..BrokerConfig::default()
        };
        cfg.storage.default_durability = ferrymq_storage::Durability::T1;
        let broker = Broker::open(cfg).await.unwrap();
        Kafka::new(broker, crate::KafkaConfig::default())
    }

    fn configs(c: &[(&str, &str)]) -> Vec<(String, Option<String>)> {
        c.iter()
            .map(|(k, v)| (k.to_string(), Some(v.to_string())))
            .collect()
    }

    fn describe(
        k: &Kafka,
        topic: &str,
        v: i16,
    ) -> describe_configs_response::DescribeConfigsResult {
        let mut req = DescribeConfigsRequest::default();
        let mut res = describe_configs_request::DescribeConfigsResource::default();
        res.resource_type = RESOURCE_TOPIC;
        res.resource_name = s(topic);
        req.resources.push(res);
        req.include_synonyms = true;
        describe_configs(k, &guest(k), req, v).results.remove(0)
    }

    fn value(r: &describe_configs_response::DescribeConfigsResult, name: &str) -> (String, i8) {
        let e = r
            .configs
            .iter()
            .find(|c| c.name.as_str() == name)
            .unwrap_or_else(|| panic!("{name} reported"));
        (e.value.as_ref().unwrap().to_string(), e.config_source)
    }

    fn alterable(name: &str, value: Option<&str>) -> alter_configs_request::AlterableConfig {
        let mut c = alter_configs_request::AlterableConfig::default();
        c.name = s(name);
        c.value = value.map(s);
        c
    }

    fn alter(k: &Kafka, topic: &str, c: &[(&str, Option<&str>)], validate_only: bool) -> i16 {
        let mut req = AlterConfigsRequest::default();
        let mut res = alter_configs_request::AlterConfigsResource::default();
        res.resource_type = RESOURCE_TOPIC;
        res.resource_name = s(topic);
        res.configs = c.iter().map(|(n, v)| alterable(n, *v)).collect();
        req.resources.push(res);
        req.validate_only = validate_only;
        alter_configs(k, &guest(k), req).responses[0].error_code
    }

    fn incremental(k: &Kafka, topic: &str, c: &[(&str, i8, Option<&str>)]) -> i16 {
        let mut req = IncrementalAlterConfigsRequest::default();
        let mut res = incremental_alter_configs_request::AlterConfigsResource::default();
        res.resource_type = RESOURCE_TOPIC;
        res.resource_name = s(topic);
        res.configs = c
            .iter()
            .map(|(n, op, v)| {
                let mut x = incremental_alter_configs_request::AlterableConfig::default();
                x.name = s(*n);
                x.config_operation = *op;
                x.value = v.map(s);
                x
            })
            .collect();
        req.resources.push(res);
        incremental_alter_configs(k, &guest(k), req).responses[0].error_code
    }

    fn grow(k: &Kafka, topic: &str, count: i32, validate_only: bool) -> (i16, Option<String>) {
        let mut req = CreatePartitionsRequest::default();
        let mut t = create_partitions_request::CreatePartitionsTopic::default();
        t.name = TopicName(s(topic));
        t.count = count;
        req.topics.push(t);
        req.validate_only = validate_only;
        let r = create_partitions(k, &guest(k), req).results.remove(0);
        (r.error_code, r.error_message.map(|m| m.to_string()))
    }

    fn delete(k: &Kafka, topic: &str, p: i32, offset: i64) -> (i16, i64) {
        let mut req = DeleteRecordsRequest::default();
        let mut t = delete_records_request::DeleteRecordsTopic::default();
        t.name = TopicName(s(topic));
        let mut dp = delete_records_request::DeleteRecordsPartition::default();
        dp.partition_index = p;
        dp.offset = offset;
        t.partitions.push(dp);
        req.topics.push(t);
        let r = delete_records(k, &guest(k), req)
            .topics
            .remove(0)
            .partitions
            .remove(0);
        (r.error_code, r.low_watermark)
    }

    const INVALID_CONFIG: i16 = 40;

    #[tokio::test]
    async fn configs_are_described_altered_replaced_and_incrementally_changed() {
        let dir = tempfile::tempdir().unwrap();
        let k = kafka(dir.path()).await;
        k.create_topic(
            "t",
            1,
            &configs(&[("retention.ms", "60000"), ("segment.bytes", "1048576")]),
            false,
        )
        .unwrap();
        let r = describe(&k, "t", 4);
        assert_eq!(r.error_code, 0);
        assert_eq!(value(&r, "retention.ms"), ("60000".into(), SOURCE_TOPIC));
        assert_eq!(value(&r, "retention.bytes"), ("-1".into(), SOURCE_DEFAULT));
        assert_eq!(value(&r, "segment.bytes"), ("1048576".into(), SOURCE_TOPIC));
        assert_eq!(
            value(&r, "cleanup.policy"),
            ("delete".into(), SOURCE_DEFAULT)
        );
        assert_eq!(value(&r, "min.insync.replicas").0, "1");
        assert_eq!(value(&r, "message.timestamp.type").0, "CreateTime");
        let ms = r
            .configs
            .iter()
            .find(|c| c.name.as_str() == "retention.ms")
            .unwrap();
        assert_eq!(ms.synonyms.len(), 2, "topic value, then the default");
        assert_eq!(ms.synonyms[1].name.as_str(), "log.retention.ms");

        // AlterConfigs replaces the set: segment.bytes goes back to the default.
        assert_eq!(
            alter(&k, "t", &[("retention.bytes", Some("5000000"))], false),
            0
        );
        let r = describe(&k, "t", 1);
        assert_eq!(
            value(&r, "retention.bytes"),
            ("5000000".into(), SOURCE_TOPIC)
        );
        assert_eq!(value(&r, "retention.ms"), ("-1".into(), SOURCE_DEFAULT));
        let seg_default = k.broker.storage().config().segment_bytes.to_string();
        assert_eq!(value(&r, "segment.bytes"), (seg_default, SOURCE_DEFAULT));
        let st = k.stream("t").unwrap();
        assert_eq!(st.retention().max_bytes, Some(5_000_000));
        assert_eq!(st.retention().max_age_ms, None);
        assert_eq!(st.partition_count(), 1, "partitions kept");

        // validate_only and refused values change nothing.
        assert_eq!(alter(&k, "t", &[("retention.ms", Some("1000"))], true), 0);
        assert_eq!(
            alter(&k, "t", &[("cleanup.policy", Some("compact"))], false),
            INVALID_CONFIG
        );
        assert_eq!(
            alter(
                &k,
                "t",
                &[("retention.ms", Some("1")), ("retention.ms", Some("2"))],
                false
            ),
            ResponseError::InvalidRequest.code()
        );
        assert_eq!(
            alter(&k, "nope", &[], false),
            ResponseError::UnknownTopicOrPartition.code()
        );
        assert_eq!(k.stream("t").unwrap().retention().max_age_ms, None);

        // Incremental: SET and DELETE; APPEND/SUBTRACT refused.
        assert_eq!(
            incremental(&k, "t", &[("retention.ms", OP_SET, Some("7200000"))]),
            0
        );
        assert_eq!(
            incremental(&k, "t", &[("retention.bytes", OP_DELETE, None)]),
            0
        );
        let r = describe(&k, "t", 2);
        assert_eq!(value(&r, "retention.ms"), ("7200000".into(), SOURCE_TOPIC));
        assert_eq!(value(&r, "retention.bytes"), ("-1".into(), SOURCE_DEFAULT));
        assert_eq!(
            incremental(&k, "t", &[("retention.ms", OP_APPEND, Some("1"))]),
            INVALID_CONFIG
        );
        assert_eq!(
            incremental(&k, "t", &[("cleanup.policy", OP_SUBTRACT, Some("delete"))]),
            INVALID_CONFIG
        );
        assert_eq!(
            incremental(&k, "t", &[("min.insync.replicas", OP_SET, Some("2"))]),
            INVALID_CONFIG
        );
        // Unknown topic, broker resources.
        assert_eq!(
            describe(&k, "nope", 4).error_code,
            ResponseError::UnknownTopicOrPartition.code()
        );
        let mut req = DescribeConfigsRequest::default();
        let mut res = describe_configs_request::DescribeConfigsResource::default();
        res.resource_type = RESOURCE_BROKER;
        res.resource_name = s("0");
        res.configuration_keys = Some(vec![s("num.partitions"), s("nope")]);
        req.resources.push(res.clone());
        res.resource_name = s("7");
        res.configuration_keys = None;
        req.resources.push(res);
        let r = describe_configs(&k, &guest(&k), req, 4);
        assert_eq!(r.results[0].configs.len(), 1);
        assert!(r.results[0].configs[0].read_only);
        assert_eq!(
            r.results[1].error_code,
            ResponseError::InvalidRequest.code()
        );
    }

    #[tokio::test]
    async fn partitions_grow_only_and_records_are_deleted_below_a_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let k = kafka(dir.path()).await;
        k.create_topic("p", 2, &[], false).unwrap();
        let (e, m) = grow(&k, "p", 2, false);
        assert_eq!(e, ResponseError::InvalidPartitions.code());
        assert_eq!(m.as_deref(), Some("Topic already has 2 partitions."));
        assert_eq!(
            grow(&k, "p", 1, false).0,
            ResponseError::InvalidPartitions.code()
        );
        assert_eq!(
            grow(&k, "p", 5000, false).0,
            ResponseError::InvalidPartitions.code()
        );
        assert_eq!(
            grow(&k, "nope", 3, false).0,
            ResponseError::UnknownTopicOrPartition.code()
        );
        assert_eq!(grow(&k, "p", 4, true).0, 0);
        assert_eq!(k.stream("p").unwrap().partition_count(), 2, "validate only");
        assert_eq!(grow(&k, "p", 4, false).0, 0);
        let st = k.stream("p").unwrap();
        assert_eq!(st.partition_count(), 4);

        for i in 0..5 {
            let m = ferrymq_core::Message::new("p", format!("m{i}").into_bytes());
            let _ = st.append(3, &[&m], i).unwrap();
        }
        assert_eq!(delete(&k, "p", 3, 2), (0, 2));
        assert_eq!(st.bounds(3).unwrap(), (2, 5));
        assert_eq!(
            delete(&k, "p", 3, 1),
            (0, 2),
            "below the watermark: no change"
        );
        assert_eq!(
            delete(&k, "p", 3, 6).0,
            ResponseError::OffsetOutOfRange.code()
        );
        assert_eq!(
            delete(&k, "p", 3, -5).0,
            ResponseError::OffsetOutOfRange.code()
        );
        assert_eq!(delete(&k, "p", 3, -1), (0, 5), "-1: the high watermark");
        assert_eq!(
            delete(&k, "p", 9, 0).0,
            ResponseError::UnknownTopicOrPartition.code()
        );
        assert_eq!(
            delete(&k, "nope", 0, 0).0,
            ResponseError::UnknownTopicOrPartition.code()
        );
    }

    fn encodes_at_every_version<T: Encodable>(key: ApiKey, r: &T) {
        let (min, max) = crate::api::supported(key).unwrap_or_else(|| panic!("{key:?} served"));
        for v in min..=max {
            let mut b = bytes::BytesMut::new();
            r.encode(&mut b, v)
                .unwrap_or_else(|e| panic!("{key:?} v{v} does not encode: {e}"));
        }
    }

    #[tokio::test]
    async fn every_admin_response_encodes_at_every_advertised_version() {
        let dir = tempfile::tempdir().unwrap();
        let k = kafka(dir.path()).await;
        k.create_topic("e", 1, &configs(&[("retention.ms", "1000")]), false)
            .unwrap();
        // Full responses: successes and errors, synonyms and documentation.
        let mut req = DescribeConfigsRequest::default();
        for (t, n) in [
            (RESOURCE_TOPIC, "e"),
            (RESOURCE_TOPIC, "nope"),
            (RESOURCE_BROKER, "0"),
            (9, "x"),
        ] {
            let mut res = describe_configs_request::DescribeConfigsResource::default();
            res.resource_type = t;
            res.resource_name = s(n);
            req.resources.push(res);
        }
        req.include_synonyms = true;
        req.include_documentation = true;
        for v in 1..=4 {
            let r = describe_configs(&k, &guest(&k), req.clone(), v);
            let mut b = bytes::BytesMut::new();
            r.encode(&mut b, v)
                .unwrap_or_else(|e| panic!("DescribeConfigs v{v}: {e}"));
        }
        encodes_at_every_version(
            ApiKey::DescribeConfigs,
            &describe_configs(&k, &guest(&k), req, 1),
        );
        let mut req = AlterConfigsRequest::default();
        let mut res = alter_configs_request::AlterConfigsResource::default();
        res.resource_type = RESOURCE_TOPIC;
        res.resource_name = s("e");
        res.configs.push(alterable("retention.ms", Some("x")));
        req.resources.push(res);
        encodes_at_every_version(ApiKey::AlterConfigs, &alter_configs(&k, &guest(&k), req));
        let mut req = IncrementalAlterConfigsRequest::default();
        let mut res = incremental_alter_configs_request::AlterConfigsResource::default();
        res.resource_type = RESOURCE_BROKER;
        res.resource_name = s("0");
        res.configs
            .push(incremental_alter_configs_request::AlterableConfig::default());
        req.resources.push(res);
        encodes_at_every_version(
            ApiKey::IncrementalAlterConfigs,
            &incremental_alter_configs(&k, &guest(&k), req),
        );
        let mut req = CreatePartitionsRequest::default();
        for (n, c) in [("e", 1), ("e", 3), ("nope", 2)] {
            let mut t = create_partitions_request::CreatePartitionsTopic::default();
            t.name = TopicName(s(n));
            t.count = c;
            req.topics.push(t);
        }
        encodes_at_every_version(
            ApiKey::CreatePartitions,
            &create_partitions(&k, &guest(&k), req),
        );
        let mut req = DeleteRecordsRequest::default();
        let mut t = delete_records_request::DeleteRecordsTopic::default();
        t.name = TopicName(s("e"));
        for (p, o) in [(0, 0), (0, 99), (4, 0)] {
            let mut dp = delete_records_request::DeleteRecordsPartition::default();
            dp.partition_index = p;
            dp.offset = o;
            t.partitions.push(dp);
        }
        req.topics.push(t);
        encodes_at_every_version(ApiKey::DeleteRecords, &delete_records(&k, &guest(&k), req));
    }
}
