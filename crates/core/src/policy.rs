//! Policies, RabbitMQ's model: a named, per-vhost rule whose `pattern` (a regular
//! expression over names) selects queues, streams and/or exchanges, and whose
//! `definition` supplies their arguments (`max-length`, `message-ttl`,
//! `dead-letter-exchange`, `alternate-exchange`, `max-age`, …).
//!
//! Rules:
//! - Of the policies of a vhost matching an entity, the one with the highest
//!   `priority` applies (ties: the smallest name); policies never merge.
//! - **Explicit arguments win**: a key the queue or exchange was declared with
//!   (`x-max-length`, `alternate-exchange`, …) is never overridden by a policy. This
//!   is RabbitMQ's rule for most keys; FerryMQ applies it to all of them (RabbitMQ's
//!   "lower value wins" is for operator policies, which FerryMQ does not have).
//! - Policies apply to existing entities when created, changed or deleted, and to
//!   entities declared later. Arguments fixed at creation (queue type, priorities,
//!   partitions, single active consumer) are never policy keys.
//!
//! The queue's hot path is untouched: the effective arguments are swapped into the
//! queue as a whole (`Queue::set_args`), read there as before.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as JsonValue};

use crate::broker::Shared;
use crate::error::{CoreError, Result};
use crate::exchange::Exchange;
use crate::message::{FieldTable, Value};
use crate::queue::{QueueArgs, QueueDecl, QueueType};
use crate::stream::Stream;
use crate::vhost::QueueRef;

/// Policies a broker may hold, across vhosts.
pub const POLICIES_MAX: usize = 1000;
/// Longest policy pattern, in bytes.
pub const POLICY_PATTERN_BYTES_MAX: usize = 1024;
/// Longest policy name, in bytes.
pub const POLICY_NAME_BYTES_MAX: usize = 255;

/// Which entities a policy applies to (RabbitMQ's `apply-to`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyTo {
    /// Queues of every type and streams, and exchanges.
    #[default]
    All,
    /// Queues of every type, streams included (as RabbitMQ's `queues`).
    Queues,
    /// Classic queues only.
    ClassicQueues,
    /// Quorum queues only.
    QuorumQueues,
    /// Streams only.
    Streams,
    /// Exchanges only.
    Exchanges,
}

impl ApplyTo {
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyTo::All => "all",
            ApplyTo::Queues => "queues",
            ApplyTo::ClassicQueues => "classic_queues",
            ApplyTo::QuorumQueues => "quorum_queues",
            ApplyTo::Streams => "streams",
            ApplyTo::Exchanges => "exchanges",
        }
    }

    fn covers(self, kind: Kind) -> bool {
        matches!(
            (self, kind),
            (ApplyTo::All, _)
                | (ApplyTo::Queues, Kind::Queue(_))
                | (ApplyTo::ClassicQueues, Kind::Queue(QueueType::Classic))
                | (ApplyTo::QuorumQueues, Kind::Queue(QueueType::Quorum))
                | (ApplyTo::Streams, Kind::Queue(QueueType::Stream))
                | (ApplyTo::Exchanges, Kind::Exchange)
        )
    }
}

/// What a policy is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Queue(QueueType),
    Exchange,
}

/// A policy, as stored in the definitions and shown by management (RabbitMQ's JSON
/// shape: `apply-to`, `definition` with unprefixed keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub vhost: String,
    pub name: String,
    /// A regular expression over entity names (unanchored, as RabbitMQ's).
    pub pattern: String,
    #[serde(rename = "apply-to", default)]
    pub apply_to: ApplyTo,
    #[serde(default)]
    pub priority: i32,
    pub definition: Map<String, JsonValue>,
}

/// Queue keys of a definition and the declare argument each stands for.
const QUEUE_KEYS: [&str; 13] = [
    "message-ttl",
    "expires",
    "max-length",
    "max-length-bytes",
    "overflow",
    "dead-letter-exchange",
    "dead-letter-routing-key",
    "delivery-limit",
    "max-age",
    "retry-initial-delay-ms",
    "retry-max-delay-ms",
    "retry-multiplier",
    "retry-jitter",
];
/// Keys that apply to streams (retention).
const STREAM_KEYS: [&str; 3] = ["max-age", "max-length-bytes", "max-length"];
/// Exchange keys.
const EXCHANGE_KEYS: [&str; 1] = ["alternate-exchange"];
/// Keys RabbitMQ defines that FerryMQ accepts and ignores (nothing to configure on
/// one node), so that RabbitMQ definitions import.
const IGNORED_KEYS: [&str; 5] = [
    "queue-mode",
    "queue-version",
    "ha-mode",
    "ha-params",
    "ha-sync-mode",
];

fn json_to_value(v: &JsonValue) -> Option<Value> {
    match v {
        JsonValue::Bool(b) => Some(Value::Bool(*b)),
        JsonValue::Number(n) => n
            .as_i64()
            .map(Value::Int)
            .or_else(|| n.as_f64().map(Value::Float)),
        JsonValue::String(s) => Some(Value::String(s.clone())),
        _ => None,
    }
}

/// A validated policy with its compiled pattern.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) policy: Policy,
    regex: regex_lite::Regex,
}

impl Compiled {
    /// Validates a policy: name, pattern, keys and values (each value is parsed as
    /// the declare argument it stands for).
    ///
    /// # Errors
    /// `InvalidArgument` naming what is wrong.
    pub(crate) fn new(policy: Policy) -> Result<Compiled> {
        let what = format!(
            "invalid policy '{}' in vhost '{}'",
            policy.name, policy.vhost
        );
        let bad = |why: String| CoreError::InvalidArgument(format!("{what}: {why}"));
        if policy.name.is_empty() || policy.name.len() > POLICY_NAME_BYTES_MAX {
            return Err(bad(format!(
                "the name must be 1 to {POLICY_NAME_BYTES_MAX} bytes"
            )));
        }
        if policy.pattern.len() > POLICY_PATTERN_BYTES_MAX {
            return Err(bad(format!(
                "the pattern is longer than {POLICY_PATTERN_BYTES_MAX} bytes"
            )));
        }
        let regex = regex_lite::Regex::new(&policy.pattern)
            .map_err(|e| bad(format!("the pattern is not a regular expression: {e}")))?;
        if policy.definition.is_empty() {
            return Err(bad("the definition is empty".into()));
        }
        for (k, v) in &policy.definition {
            let known = QUEUE_KEYS.contains(&k.as_str())
                || EXCHANGE_KEYS.contains(&k.as_str())
                || IGNORED_KEYS.contains(&k.as_str());
            if !known {
                return Err(bad(format!("unknown key '{k}'")));
            }
            if json_to_value(v).is_none() {
                return Err(bad(format!(
                    "the value of '{k}' must be a string, number or boolean"
                )));
            }
        }
        if let Some(v) = policy.definition.get("alternate-exchange") {
            if !v.is_string() {
                return Err(bad("'alternate-exchange' must be a string".into()));
            }
        }
        let compiled = Compiled { policy, regex };
        // The queue keys must parse as the arguments they stand for.
        let table = compiled.queue_table(QueueType::Classic);
        QueueArgs::parse(&compiled.policy.name, &compiled.policy.vhost, &table)
            .map_err(|e| bad(e.to_string()))?;
        Ok(compiled)
    }

    fn matches(&self, name: &str, kind: Kind) -> bool {
        self.policy.apply_to.covers(kind) && self.regex.is_match(name)
    }

    /// The definition's queue keys as declare arguments (`x-…`), for a queue type.
    fn queue_table(&self, qt: QueueType) -> FieldTable {
        let keys: &[&str] = if qt == QueueType::Stream {
            &STREAM_KEYS
        } else {
            &QUEUE_KEYS
        };
        self.policy
            .definition
            .iter()
            .filter(|(k, _)| keys.contains(&k.as_str()))
            .filter_map(|(k, v)| Some((format!("x-{k}"), json_to_value(v)?)))
            .collect()
    }
}

/// The policies of a broker, ordered by (vhost, name).
#[derive(Debug, Default)]
pub(crate) struct Policies {
    list: Vec<Arc<Compiled>>,
}

impl Policies {
    pub(crate) fn all(&self) -> Vec<Policy> {
        self.list.iter().map(|c| c.policy.clone()).collect()
    }

    pub(crate) fn get(&self, vhost: &str, name: &str) -> Option<Policy> {
        self.list
            .iter()
            .find(|c| c.policy.vhost == vhost && c.policy.name == name)
            .map(|c| c.policy.clone())
    }

    /// Adds or replaces a policy.
    ///
    /// # Errors
    /// `LimitReached` past [`POLICIES_MAX`].
    pub(crate) fn put(&mut self, c: Compiled) -> Result<()> {
        let key = (c.policy.vhost.clone(), c.policy.name.clone());
        match self
            .list
            .binary_search_by(|p| (&p.policy.vhost, &p.policy.name).cmp(&(&key.0, &key.1)))
        {
            Ok(i) => self.list[i] = Arc::new(c),
            Err(i) => {
                if self.list.len() >= POLICIES_MAX {
                    return Err(CoreError::LimitReached(format!(
                        "cannot add policy '{}': the broker holds {POLICIES_MAX} policies",
                        key.1
                    )));
                }
                self.list.insert(i, Arc::new(c));
            }
        }
        Ok(())
    }

    pub(crate) fn remove(&mut self, vhost: &str, name: &str) -> bool {
        let before = self.list.len();
        self.list
            .retain(|c| !(c.policy.vhost == vhost && c.policy.name == name));
        self.list.len() != before
    }

    pub(crate) fn remove_vhost(&mut self, vhost: &str) {
        self.list.retain(|c| c.policy.vhost != vhost);
    }

    /// The policy that applies to an entity: highest priority, then smallest name.
    pub(crate) fn effective(&self, vhost: &str, name: &str, kind: Kind) -> Option<Arc<Compiled>> {
        let mut best: Option<&Arc<Compiled>> = None;
        for c in self
            .list
            .iter()
            .filter(|c| c.policy.vhost == vhost && c.matches(name, kind))
        {
            // The list is sorted by name, so the first of equal priority is kept.
            if best.is_none_or(|b| c.policy.priority > b.policy.priority) {
                best = Some(c);
            }
        }
        best.cloned()
    }
}

/// The arguments a queue runs with: its declared arguments over the policy's.
/// Arguments fixed at creation keep their declared values. Falls back to the declared
/// arguments (which were validated at declare) if the combination does not parse.
pub(crate) fn queue_args(
    decl: &QueueDecl,
    declared: &QueueArgs,
    policy: Option<&Compiled>,
) -> QueueArgs {
    let Some(p) = policy else {
        return declared.clone();
    };
    let mut table = p.queue_table(declared.queue_type);
    for (k, v) in decl.arguments.iter() {
        table.insert(k, v.clone());
    }
    match QueueArgs::parse(&decl.name, &p.policy.vhost, &table) {
        Ok(mut a) => {
            a.queue_type = declared.queue_type;
            a.max_priority = declared.max_priority;
            a.single_active_consumer = declared.single_active_consumer;
            a.partitions = declared.partitions;
            a.segment_bytes = declared.segment_bytes;
            a
        }
        Err(e) => {
            tracing::warn!(queue = %decl.name, policy = %p.policy.name, error = %e,
                "policy does not combine with the queue's arguments; not applied");
            declared.clone()
        }
    }
}

/// The alternate exchange a policy gives an exchange (its own argument wins when read).
pub(crate) fn exchange_alternate(policy: Option<&Compiled>) -> Option<String> {
    policy?
        .policy
        .definition
        .get("alternate-exchange")?
        .as_str()
        .map(str::to_owned)
}

/// The kind a queue or stream is matched as.
pub(crate) fn kind_of(q: &QueueRef) -> Kind {
    match q {
        QueueRef::Classic(c) => Kind::Queue(c.args().queue_type),
        QueueRef::Stream(_) => Kind::Queue(QueueType::Stream),
    }
}

/// The management view of what applies to an entity: the policy's name and the part of
/// its definition in effect (keys the entity's own arguments set are left out).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AppliedPolicy {
    pub name: Option<String>,
    pub definition: Map<String, JsonValue>,
}

pub(crate) fn applied(c: Option<Arc<Compiled>>, own: &FieldTable, kind: Kind) -> AppliedPolicy {
    let Some(c) = c else {
        return AppliedPolicy::default();
    };
    let keys: &[&str] = match kind {
        Kind::Exchange => &EXCHANGE_KEYS,
        Kind::Queue(QueueType::Stream) => &STREAM_KEYS,
        Kind::Queue(_) => &QUEUE_KEYS,
    };
    let prefix = if kind == Kind::Exchange { "" } else { "x-" };
    let definition = c
        .policy
        .definition
        .iter()
        .filter(|(k, _)| keys.contains(&k.as_str()))
        .filter(|(k, _)| own.get(&format!("{prefix}{k}")).is_none())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    AppliedPolicy {
        name: Some(c.policy.name.clone()),
        definition,
    }
}

/// Recomputes a queue's or stream's arguments from its declaration and the policy that
/// applies now (a no-op when nothing changed).
pub(crate) fn reapply(shared: &Shared, vhost: &str, q: &QueueRef, now: i64) {
    let kind = kind_of(q);
    let p = shared.policy_for(vhost, q.name(), kind);
    let Ok(declared) = QueueArgs::parse(q.name(), vhost, &q.decl().arguments) else {
        return;
    };
    let args = queue_args(q.decl(), &declared, p.as_deref());
    match q {
        QueueRef::Classic(c) => c.set_args(args, now),
        QueueRef::Stream(s) => s.set_retention(Stream::retention_of(&args)),
    }
}

/// Sets an exchange's policy-given alternate exchange.
pub(crate) fn apply_to_exchange(x: &Exchange, policy: Option<&Compiled>) {
    x.set_policy_alternate(exchange_alternate(policy));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(name: &str, pattern: &str, priority: i32, def: JsonValue) -> Policy {
        Policy {
            vhost: "/".into(),
            name: name.into(),
            pattern: pattern.into(),
            apply_to: ApplyTo::All,
            priority,
            definition: def.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn highest_priority_applies_then_smallest_name() {
        let mut ps = Policies::default();
        let q = Kind::Queue(QueueType::Classic);
        ps.put(Compiled::new(policy("b", "^jobs", 1, json!({"max-length": 5}))).unwrap())
            .unwrap();
        ps.put(Compiled::new(policy("a", "^jobs", 1, json!({"max-length": 6}))).unwrap())
            .unwrap();
        assert_eq!(ps.effective("/", "jobs.x", q).unwrap().policy.name, "a");
        ps.put(Compiled::new(policy("c", "x$", 9, json!({"max-length": 7}))).unwrap())
            .unwrap();
        assert_eq!(ps.effective("/", "jobs.x", q).unwrap().policy.name, "c");
        assert!(ps.effective("/", "other", q).is_none());
        assert!(ps.effective("/other", "jobs", q).is_none());
        assert!(ps.remove("/", "c"));
        assert_eq!(ps.effective("/", "jobs.x", q).unwrap().policy.name, "a");
    }

    #[test]
    fn apply_to_selects_kinds() {
        let mut p = policy("p", ".*", 0, json!({"max-length": 1}));
        p.apply_to = ApplyTo::Exchanges;
        let c = Compiled::new(p).unwrap();
        assert!(c.matches("x", Kind::Exchange));
        assert!(!c.matches("x", Kind::Queue(QueueType::Classic)));
        let mut p = policy("p", ".*", 0, json!({"max-age": "1D"}));
        p.apply_to = ApplyTo::Streams;
        let c = Compiled::new(p).unwrap();
        assert!(c.matches("s", Kind::Queue(QueueType::Stream)));
        assert!(!c.matches("s", Kind::Queue(QueueType::Classic)));
        let mut p = policy("p", ".*", 0, json!({"max-length": 1}));
        p.apply_to = ApplyTo::Queues;
        let c = Compiled::new(p).unwrap();
        assert!(c.matches("s", Kind::Queue(QueueType::Stream)));
        assert!(c.matches("q", Kind::Queue(QueueType::Quorum)));
        assert!(!c.matches("x", Kind::Exchange));
    }

    #[test]
    fn invalid_policies_are_refused_naming_the_problem() {
        for (p, needle) in [
            (
                policy("p", "(", 0, json!({"max-length": 1})),
                "regular expression",
            ),
            (policy("p", ".*", 0, json!({"max-lenght": 1})), "max-lenght"),
            (
                policy("p", ".*", 0, json!({"max-length": -1})),
                "x-max-length",
            ),
            (
                policy("p", ".*", 0, json!({"overflow": "explode"})),
                "x-overflow",
            ),
            (
                policy("p", ".*", 0, json!({"max-length": [1]})),
                "max-length",
            ),
            (policy("p", ".*", 0, json!({})), "empty"),
            (policy("", ".*", 0, json!({"max-length": 1})), "name"),
            (
                policy("p", ".*", 0, json!({"alternate-exchange": 1})),
                "alternate-exchange",
            ),
        ] {
            let e = Compiled::new(p).unwrap_err().to_string();
            assert!(e.contains(needle), "{e} should mention {needle}");
        }
    }

    #[test]
    fn declared_arguments_win_and_fixed_ones_stay() {
        let c = Compiled::new(policy(
            "p",
            ".*",
            0,
            json!({"max-length": 5, "message-ttl": 1000, "dead-letter-exchange": "dlx"}),
        ))
        .unwrap();
        let decl = QueueDecl::durable("q")
            .arg("x-max-length", 10i64)
            .arg("x-max-priority", 3i64);
        let declared = QueueArgs::parse("q", "/", &decl.arguments).unwrap();
        let a = queue_args(&decl, &declared, Some(&c));
        assert_eq!(a.max_length, Some(10));
        assert_eq!(a.message_ttl_ms, Some(1000));
        assert_eq!(a.dead_letter_exchange.as_deref(), Some("dlx"));
        assert_eq!(a.max_priority, Some(3));
        assert_eq!(queue_args(&decl, &declared, None), declared);
        let shown = applied(
            Some(Arc::new(c)),
            &decl.arguments,
            Kind::Queue(QueueType::Classic),
        );
        assert_eq!(shown.name.as_deref(), Some("p"));
        assert!(!shown.definition.contains_key("max-length"));
        assert_eq!(shown.definition.get("message-ttl"), Some(&json!(1000)));
    }

    #[test]
    fn serde_uses_rabbitmq_names() {
        let p: Policy = serde_json::from_value(json!({
            "vhost": "/", "name": "p", "pattern": "^a", "apply-to": "queues",
            "priority": 2, "definition": {"max-length": 1}
        }))
        .unwrap();
        assert_eq!(p.apply_to, ApplyTo::Queues);
        let back = serde_json::to_value(&p).unwrap();
        assert_eq!(back["apply-to"], "queues");
    }
}
