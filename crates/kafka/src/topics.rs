//! Kafka topics as FerryMQ streams: lookup, creation with partitions and configs, and the
//! mapping of Kafka topic configs to stream arguments.

use std::sync::Arc;

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
}

/// The configs FerryMQ understands, as Kafka names them.
pub const CONFIGS: &[TopicConfig] = &[
    TopicConfig {
        name: "retention.ms",
        argument: Some("x-max-age"),
    },
    TopicConfig {
        name: "retention.bytes",
        argument: Some("x-max-length-bytes"),
    },
    TopicConfig {
        name: "segment.bytes",
        argument: Some("x-stream-max-segment-size-bytes"),
    },
    TopicConfig {
        name: "cleanup.policy",
        argument: None,
    },
];

/// Applies Kafka topic configs to stream arguments. `None` removes a config (back to
/// its default). Kafka's "-1" (unlimited) for retention removes the limit.
///
/// # Errors
/// `(INVALID_CONFIG, message)` for an unknown config, a bad value, or
/// `cleanup.policy=compact` (FerryMQ does not compact logs).
pub fn apply_config(
    args: &mut FieldTable,
    name: &str,
    value: Option<&str>,
) -> Result<(), (ResponseError, String)> {
    let invalid = |m: String| (ResponseError::InvalidConfig, m);
    let Some(cfg) = CONFIGS.iter().find(|c| c.name == name) else {
        return Err(invalid(format!(
            "unknown or unsupported topic config '{name}' (supported: retention.ms, retention.bytes, segment.bytes, cleanup.policy)"
        )));
    };
    let Some(arg) = cfg.argument else {
        // cleanup.policy
        return match value {
            None | Some("delete") => Ok(()),
            Some(v) => Err(invalid(format!(
                "cleanup.policy '{v}' is not supported: FerryMQ streams delete whole segments by retention and do not compact"
            ))),
        };
    };
    let Some(v) = value else {
        args.remove(arg);
        return Ok(());
    };
    let n: i64 = v
        .trim()
        .parse()
        .map_err(|_| invalid(format!("{name} must be an integer, got '{v}'")))?;
    match (name, n) {
        (_, -1) if name != "segment.bytes" => {
            args.remove(arg);
            Ok(())
        }
        ("segment.bytes", n) if n < 14 => Err(invalid(format!(
            "segment.bytes must be at least 14, got {n}"
        ))),
        (_, n) if n < 0 => Err(invalid(format!("{name} must be -1 or positive, got {n}"))),
        (_, n) => {
            args.insert(arg.to_string(), Value::Int(n));
            Ok(())
        }
    }
}

/// The value of a config for a stream (as Kafka would report it) and whether it is the
/// default.
pub fn config_value(args: &FieldTable, name: &str) -> Option<(String, bool)> {
    let cfg = CONFIGS.iter().find(|c| c.name == name)?;
    let Some(arg) = cfg.argument else {
        return Some(("delete".into(), true));
    };
    Some(match args.get_i64(arg) {
        Some(n) => (n.to_string(), false),
        None if name == "segment.bytes" => ((1u64 << 30).to_string(), true),
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
            n if (1..=10_000).contains(&n) => n as u32,
            n => {
                return Err((
                    ResponseError::InvalidPartitions,
                    format!("number of partitions must be 1 to 10000, got {n}"),
                ))
            }
        };
        let mut args = FieldTable::default();
        args.insert("x-queue-type", Value::String("stream".into()));
        args.insert("x-partitions", Value::Int(i64::from(partitions)));
        for (k, v) in configs {
            apply_config(&mut args, k, v.as_deref())?;
        }
        if validate_only {
            return Ok(None);
        }
        let mut decl = QueueDecl::durable(name);
        decl.arguments = args;
        vh.declare_queue(decl, 0, false)
            .map_err(|e| (core_error(&e), e.to_string()))?;
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
        let mut a = FieldTable::default();
        apply_config(&mut a, "retention.ms", Some("60000")).unwrap();
        apply_config(&mut a, "retention.bytes", Some("1000000")).unwrap();
        apply_config(&mut a, "segment.bytes", Some("1048576")).unwrap();
        apply_config(&mut a, "cleanup.policy", Some("delete")).unwrap();
        assert_eq!(a.get_i64("x-max-age"), Some(60000));
        assert_eq!(
            config_value(&a, "retention.bytes"),
            Some(("1000000".into(), false))
        );
        apply_config(&mut a, "retention.ms", Some("-1")).unwrap();
        assert_eq!(config_value(&a, "retention.ms"), Some(("-1".into(), true)));
        apply_config(&mut a, "retention.bytes", None).unwrap();
        assert_eq!(a.get_i64("x-max-length-bytes"), None);
        let e = apply_config(&mut a, "cleanup.policy", Some("compact")).unwrap_err();
        assert_eq!(e.0, ResponseError::InvalidConfig);
        assert!(apply_config(&mut a, "retention.ms", Some("soon")).is_err());
        assert!(apply_config(&mut a, "min.insync.replicas", Some("2")).is_err());
    }

    #[test]
    fn topic_ids_are_stable_and_distinct() {
        assert_eq!(topic_id("/", "a"), topic_id("/", "a"));
        assert_ne!(topic_id("/", "a"), topic_id("/", "b"));
        assert_ne!(topic_id("/", "a"), uuid::Uuid::nil());
    }
}
