//! Kafka admin APIs over streams: CreateTopics, DeleteTopics, OffsetForLeaderEpoch (and,
//! as they land, the config and partition APIs).

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::conn::{decode, encode, ready, Close, Pending};
use crate::topics;
use crate::Kafka;

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

/// Runs an admin request.
pub(crate) fn dispatch(
    kafka: &Arc<Kafka>,
    key: ApiKey,
    v: i16,
    body: Bytes,
) -> Result<Pending, Close> {
    Ok(match key {
        ApiKey::CreateTopics => ready(encode(&create_topics(kafka, decode(body, v)?, v), v)),
        ApiKey::DeleteTopics => ready(encode(&delete_topics(kafka, decode(body, v)?, v), v)),
        ApiKey::OffsetForLeaderEpoch => {
            ready(encode(&offset_for_leader_epoch(kafka, decode(body, v)?), v))
        }
        other => return Err(Close(format!("{other:?} is not implemented"))),
    })
}

fn create_topics(kafka: &Kafka, req: CreateTopicsRequest, v: i16) -> CreateTopicsResponse {
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
        let outcome = if !rf_ok {
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

fn delete_topics(kafka: &Kafka, req: DeleteTopicsRequest, v: i16) -> DeleteTopicsResponse {
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
    req: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let mut r = OffsetForLeaderEpochResponse::default();
    for t in req.topics {
        let st = kafka.stream(t.topic.0.as_str());
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
                    e.error_code = ResponseError::UnknownTopicOrPartition.code();
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
