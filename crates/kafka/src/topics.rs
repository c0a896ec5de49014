//! Kafka topics as FerryMQ streams: lookup, creation with partitions and configs, and the
//! mapping of Kafka topic configs to stream arguments.

use std::sync::Arc;

use ferrymq_core::queue::args::STREAM_PARTITIONS_MAX;
use ferrymq_core::queue::QueueArgs;
use ferrymq_core::stream::Stream;
use ferrymq_core::{CoreError, FieldTable, QueueDecl, QueueRef, VHost, Value};
use kafka_protocol::ResponseError;

use crate::Kafka;

/// Kafka's limit on topic name length.
pub const TOPIC_NAME_MAX: usize = 249;

/// Kafka's topic name rule: 1 to 249 of `[a-zA-Z0-9._-]`, not "." or "..".
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= TOPIC_NAME_MAX
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// A stable topic id (Metadata v10+): derived from the vhost and topic name, so it
/// stays the same across restarts without being stored.
pub fn topic_id(vhost: &str, name: &str) -> uuid::Uuid {
    let h = |seed: u64| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
        for b in vhost.bytes().chain([0u8]).chain(name.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    };
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&h(1).to_be_bytes());
    b[8..].copy_from_slice(&h(2).to_be_bytes());
    uuid::Builder::from_random_bytes(b).into_uuid()
}

/// A Kafka topic config with the stream argument it stands for.
pub struct TopicConfig {
    pub name: &'static str,
    pub argument: Option<&'static str>,
    /// Kafka's config type code in DescribeConfigs v3+ (3 INT, 5 LONG, 7 LIST).
    pub config_type: i8,
    /// The broker config Kafka would fall back to (a synonym in DescribeConfigs).
    pub broker_synonym: &'static str,
}

/// The configs FerryMQ understands and can change, as Kafka names them.
pub const CONFIGS: &[TopicConfig] = &[
    TopicConfig {
        name: "retention.ms",
        argument: Some("x-max-age"),
        config_type: 5,
        broker_synonym: "log.retention.ms",
    },
    TopicConfig {
        name: "retention.bytes",
        argument: Some("x-max-length-bytes"),
        config_type: 5,
        broker_synonym: "log.retention.bytes",
    },
    TopicConfig {
        name: "segment.bytes",
        argument: Some("x-stream-max-segment-size-bytes"),
        config_type: 3,
        broker_synonym: "log.segment.bytes",
    },
    TopicConfig {
        name: "cleanup.policy",
        argument: None,
        config_type: 7,
        broker_synonym: "log.cleanup.policy",
    },
];

/// Topic configs FerryMQ reports but cannot change: `(name, value, Kafka config type)`.
/// Setting one to the value it has is accepted (clients that send Kafka's defaults at
/// topic creation keep working); any other value is INVALID_CONFIG.
pub fn read_only_configs(message_max_bytes: usize) -> Vec<(&'static str, String, i8)> {
    vec![
        ("compression.type", "producer".into(), 2),
        ("max.message.bytes", message_max_bytes.to_string(), 3),
        ("message.timestamp.type", "CreateTime".into(), 2),
        ("min.insync.replicas", "1".into(), 3),
        ("unclean.leader.election.enable", "false".into(), 1),
    ]
}

/// Whether `name` is one of the configs [`apply_config`] changes.
pub fn is_alterable(name: &str) -> bool {
    CONFIGS.iter().any(|c| c.name == name)
}

fn invalid_value(name: &str, v: &str, why: impl std::fmt::Display) -> (ResponseError, String) {
    (
        ResponseError::InvalidConfig,
        format!("Invalid value {v} for configuration {name}: {why}"),
    )
}

/// Applies Kafka topic configs to stream arguments. `None` removes a config (back to
/// its default). Kafka's "-1" (unlimited) for retention removes the limit. A read-only
/// config (see [`read_only_configs`]) given its fixed value changes nothing.
///
/// # Errors
/// `(INVALID_CONFIG, message)` for an unknown config, a bad value, a read-only config
/// given another value, or `cleanup.policy=compact` (FerryMQ does not compact logs).
pub fn apply_config(
    args: &mut FieldTable,
    name: &str,
    value: Option<&str>,
    message_max_bytes: usize,
) -> Result<(), (ResponseError, String)> {
    let invalid = |m: String| (ResponseError::InvalidConfig, m);
    let Some(cfg) = CONFIGS.iter().find(|c| c.name == name) else {
        if let Some((_, fixed, _)) = read_only_configs(message_max_bytes)
            .into_iter()
            .find(|(n, _, _)| *n == name)
        {
            return match value {
                None => Ok(()),
                Some(v) if v.trim() == fixed => Ok(()),
                Some(v) => Err(invalid_value(
                    name,
                    v,
                    format!("FerryMQ fixes it at {fixed}"),
                )),
            };
        }
        return Err(invalid(format!(
            "Unknown topic config name: {name} (FerryMQ supports retention.ms, retention.bytes, segment.bytes, cleanup.policy)"
        )));
    };
    let Some(arg) = cfg.argument else {
        // cleanup.policy
        return match value {
            None | Some("delete") => Ok(()),
            Some(v) => Err(invalid_value(
                name,
                v,
                "FerryMQ streams delete whole segments by retention and do not compact",
            )),
        };
    };
    let Some(v) = value else {
        args.remove(arg);
        return Ok(());
    };
    let n: i64 = v
        .trim()
        .parse()
        .map_err(|_| invalid_value(name, v, "Not a number of type LONG"))?;
    let seg_min = ferrymq_storage::SEGMENT_BYTES_MIN as i64;
    let seg_max = (ferrymq_storage::SEGMENT_BYTES_MAX as i64).min(i64::from(i32::MAX));
    match (name, n) {
        (_, -1) if name != "segment.bytes" => {
            args.remove(arg);
            Ok(())
        }
        ("segment.bytes", n) if !(seg_min..=seg_max).contains(&n) => Err(invalid_value(
            name,
            v,
            format!("Value must be in {seg_min}..={seg_max}"),
        )),
        // Kafka takes 0 as "delete at once"; a stream keeps its active segment anyway,
        // so the smallest limit FerryMQ stores is 1.
        ("retention.ms", 0) => {
            args.insert(arg.to_string(), Value::Int(1));
            Ok(())
        }
        (_, n) if n < 0 => Err(invalid_value(name, v, "Value must be -1 or at least 0")),
        (_, n) => {
            args.insert(arg.to_string(), Value::Int(n));
            Ok(())
        }
    }
}

/// Removes every config [`apply_config`] sets (AlterConfigs replaces the whole set).
pub fn clear_configs(args: &mut FieldTable) {
    for c in CONFIGS {
        if let Some(a) = c.argument {
            args.remove(a);
        }
    }
}

/// The value of a config in a stream's declared arguments (as Kafka would report it)
/// and whether it is the default. `segment_bytes_default` is the storage default.
/// Arguments declared by other protocols (`x-max-age` as "7D") are read as parsed.
pub fn config_value(
    args: &FieldTable,
    name: &str,
    segment_bytes_default: u64,
) -> Option<(String, bool)> {
    let cfg = CONFIGS.iter().find(|c| c.name == name)?;
    if cfg.argument.is_none() {
        return Some(("delete".into(), true));
    }
    let parsed = QueueArgs::parse("", "", args).unwrap_or_default();
    let v = match name {
        "retention.ms" => parsed.max_age_ms,
        "retention.bytes" => parsed.max_length_bytes,
        _ => parsed.segment_bytes,
    };
    Some(match v {
        Some(n) => (n.to_string(), false),
        None if name == "segment.bytes" => (segment_bytes_default.to_string(), true),
        None => ("-1".into(), true),
    })
}

/// What a core error means to a Kafka client.
pub fn core_error(e: &CoreError) -> ResponseError {
    match e {
        CoreError::NotFound(_) => ResponseError::UnknownTopicOrPartition,
        CoreError::AccessRefused(_) => ResponseError::TopicAuthorizationFailed,
        CoreError::InvalidArgument(_) | CoreError::PreconditionFailed(_) => {
            ResponseError::InvalidConfig
        }
        CoreError::LimitReached(_) => ResponseError::PolicyViolation,
        CoreError::ShuttingDown => ResponseError::NotLeaderOrFollower,
        CoreError::Storage(s) if s.is_no_space() => ResponseError::KafkaStorageError,
        CoreError::Storage(_) => ResponseError::KafkaStorageError,
        _ => ResponseError::UnknownServerError,
    }
}

impl Kafka {
    pub(crate) fn vhost(&self) -> Option<Arc<VHost>> {
        self.broker.vhost(&self.config.vhost)
    }

    /// The stream behind a topic (a classic queue of that name is not a topic).
    pub(crate) fn stream(&self, topic: &str) -> Option<Arc<Stream>> {
        match self.vhost()?.queue(topic)? {
            QueueRef::Stream(s) => Some(s),
            QueueRef::Classic(_) => None,
        }
    }

    /// Every stream of the Kafka vhost, by name.
    pub(crate) fn topic_streams(&self) -> Vec<Arc<Stream>> {
        let Some(vh) = self.vhost() else {
            return Vec::new();
        };
        let mut v: Vec<Arc<Stream>> = vh
            .queues()
            .into_iter()
            .filter_map(|q| match q {
                QueueRef::Stream(s) => Some(s),
                QueueRef::Classic(_) => None,
            })
            .collect();
        v.sort_by(|a, b| a.name().cmp(b.name()));
        v
    }

    /// Replaces a topic's stream arguments (configs, partition count); with
    /// `validate_only`, only checks them.
    ///
    /// # Errors
    /// UNKNOWN_TOPIC_OR_PARTITION, INVALID_CONFIG (arguments refused), storage errors.
    pub(crate) fn reconfigure_topic(
        &self,
        name: &str,
        args: FieldTable,
        validate_only: bool,
    ) -> Result<(), (ResponseError, String)> {
        let vh = self.vhost().ok_or_else(|| {
            (
                ResponseError::UnknownTopicOrPartition,
                format!("vhost '{}' does not exist", self.config.vhost),
            )
        })?;
        let r = if validate_only {
            QueueArgs::parse(name, &vh.name, &args).map(|_| ())
        } else {
            vh.reconfigure_stream(name, args).map(|_| ())
        };
        r.map_err(|e| (core_error(&e), e.to_string()))
    }

    /// Creates a topic: a durable stream with `partitions` partitions (-1: the default)
    /// and `configs`. With `validate_only`, checks everything and returns `None`.
    ///
    /// # Errors
    /// Kafka's error and message: TOPIC_ALREADY_EXISTS, INVALID_TOPIC_EXCEPTION,
    /// INVALID_PARTITIONS, INVALID_CONFIG, and storage errors.
    pub(crate) fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: &[(String, Option<String>)],
        validate_only: bool,
    ) -> Result<Option<Arc<Stream>>, (ResponseError, String)> {
        if !valid_topic_name(name) {
            return Err((
                ResponseError::InvalidTopicException,
                format!("'{name}' is not a valid topic name: 1 to 249 of [a-zA-Z0-9._-]"),
            ));
        }
        let vh = self.vhost().ok_or_else(|| {
            (
                ResponseError::UnknownServerError,
                format!("vhost '{}' does not exist", self.config.vhost),
            )
        })?;
        if vh.queue(name).is_some() {
            return Err((
                ResponseError::TopicAlreadyExists,
                format!("Topic '{name}' already exists."),
            ));
        }
        let partitions = match partitions {
            -1 => self.config.default_partitions,
            n if n >= 1 && n as u32 <= STREAM_PARTITIONS_MAX => n as u32,
            n => {
                return Err((
                    ResponseError::InvalidPartitions,
                    format!("number of partitions must be 1 to {STREAM_PARTITIONS_MAX}, got {n}"),
                ))
            }
        };
        let mut args = FieldTable::default();
        args.insert("x-queue-type", Value::String("stream".into()));
        args.insert("x-partitions", Value::Int(i64::from(partitions)));
        for (k, v) in configs {
            apply_config(&mut args, k, v.as_deref(), self.config.message_max_bytes)?;
        }
        if validate_only {
            return Ok(None);
        }
        let mut decl = QueueDecl::durable(name);
        decl.arguments = args;
        vh.declare_queue(decl, 0, false).map_err(|e| {
            if matches!(e, CoreError::LimitReached(_)) {
                self.broker
                    .admission()
                    .refused(ferrymq_core::Limit::QueuesPerVhost, crate::conn::PROTOCOL);
            }
            (core_error(&e), e.to_string())
        })?;
        self.stream(name).map(Some).ok_or_else(|| {
            (
                ResponseError::TopicAlreadyExists,
                format!("'{name}' exists and is not a stream"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert!(valid_topic_name("orders.eu-1_x"));
        assert!(!valid_topic_name(""));
        assert!(!valid_topic_name("."));
        assert!(!valid_topic_name("a/b"));
        assert!(!valid_topic_name(&"a".repeat(250)));
    }

    #[test]
    fn configs_map_to_stream_arguments() {
        let apply = |a: &mut FieldTable, n: &str, v: Option<&str>| apply_config(a, n, v, 1000);
        let mut a = FieldTable::default();
        apply(&mut a, "retention.ms", Some("60000")).unwrap();
        apply(&mut a, "retention.bytes", Some("1000000")).unwrap();
        apply(&mut a, "segment.bytes", Some("1048576")).unwrap();
        apply(&mut a, "cleanup.policy", Some("delete")).unwrap();
        assert_eq!(a.get_i64("x-max-age"), Some(60000));
        assert_eq!(
            config_value(&a, "retention.bytes", 7),
            Some(("1000000".into(), false))
        );
        assert_eq!(
            config_value(&a, "segment.bytes", 7),
            Some(("1048576".into(), false))
        );
        apply(&mut a, "retention.ms", Some("-1")).unwrap();
        assert_eq!(
            config_value(&a, "retention.ms", 7),
            Some(("-1".into(), true))
        );
        apply(&mut a, "retention.bytes", None).unwrap();
        assert_eq!(a.get_i64("x-max-length-bytes"), None);
        let e = apply(&mut a, "cleanup.policy", Some("compact")).unwrap_err();
        assert_eq!(e.0, ResponseError::InvalidConfig);
        assert!(apply(&mut a, "retention.ms", Some("soon")).is_err());
        assert!(apply(&mut a, "retention.ms", Some("-2")).is_err());
        assert!(apply(&mut a, "segment.bytes", Some("100")).is_err());
        assert!(apply(&mut a, "nope", Some("1")).is_err());
        // Read-only facts: their own value is accepted, another is not.
        apply(&mut a, "min.insync.replicas", Some("1")).unwrap();
        apply(&mut a, "max.message.bytes", Some("1000")).unwrap();
        assert!(apply(&mut a, "min.insync.replicas", Some("2")).is_err());
        assert!(apply(&mut a, "max.message.bytes", Some("5")).is_err());
        clear_configs(&mut a);
        assert_eq!(
            config_value(&a, "segment.bytes", 7),
            Some(("7".into(), true))
        );
        // Arguments declared over AMQP.
        let mut amqp = FieldTable::default();
        amqp.insert("x-max-age", Value::String("1h".into()));
        assert_eq!(
            config_value(&amqp, "retention.ms", 7),
            Some(("3600000".into(), false))
        );
    }

    #[test]
    fn topic_ids_are_stable_and_distinct() {
        assert_eq!(topic_id("/", "a"), topic_id("/", "a"));
        assert_ne!(topic_id("/", "a"), topic_id("/", "b"));
        assert_ne!(topic_id("/", "a"), uuid::Uuid::nil());
    }
}
