//! Queue declaration and its arguments (`x-message-ttl`, `x-max-length`, …), parsed
//! and validated once at declare time.

use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};
use crate::message::{FieldTable, Value};

/// Identifies a client connection (0 = the broker itself or the management API).
pub type ConnectionId = u64;

/// What a queue does when a publish would exceed its length or byte limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest ready message.
    #[default]
    DropHead,
    /// Refuse the new message (publisher gets a nack).
    RejectPublish,
    /// Refuse the new message and dead-letter it.
    RejectPublishDlx,
}

/// The kind of queue, as AMQP's `x-queue-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum QueueType {
    #[default]
    Classic,
    /// Accepted for compatibility; stored and served like a durable classic queue
    /// (single node: there is nothing to replicate yet).
    Quorum,
    /// An append-only stream.
    Stream,
}

/// Server-side retry: a message nacked with requeue is made ready again only after
/// `initial_delay_ms * multiplier^(deliveries-1)` (capped, with ± jitter).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub initial_delay_ms: u64,
    pub max_delay_ms: u64,
    pub multiplier: f64,
    /// Fraction (0..=1) of the delay randomly added or removed.
    pub jitter: f64,
}

impl RetryPolicy {
    /// The delay before the retry that follows the `delivery_count`-th delivery.
    pub fn delay_ms(&self, delivery_count: u32, random_unit: f64) -> u64 {
        let exp = delivery_count.saturating_sub(1).min(64) as i32;
        let base = (self.initial_delay_ms as f64) * self.multiplier.powi(exp);
        let base = base.min(self.max_delay_ms as f64);
        let jitter = base * self.jitter * (random_unit * 2.0 - 1.0);
        (base + jitter).max(0.0) as u64
    }
}

/// Parsed queue arguments.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueueArgs {
    pub queue_type: QueueType,
    pub message_ttl_ms: Option<u64>,
    pub expires_ms: Option<u64>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    pub dead_letter_exchange: Option<String>,
    pub dead_letter_routing_key: Option<String>,
    pub max_priority: Option<u8>,
    pub delivery_limit: Option<u32>,
    pub single_active_consumer: bool,
    pub retry: Option<RetryPolicy>,
    /// Streams only: partitions (FerryMQ extension `x-partitions`, default 1).
    pub partitions: u32,
    /// Streams only: retention (`x-max-age` as RabbitMQ's "7D"/"1h" strings or ms,
    /// `x-max-length-bytes`, `x-max-length`).
    pub max_age_ms: Option<u64>,
    /// Streams only: segment size (`x-stream-max-segment-size-bytes`, as RabbitMQ).
    pub segment_bytes: Option<u64>,
}

/// Most partitions a stream may have (`x-partitions`).
pub const STREAM_PARTITIONS_MAX: u32 = 1024;

/// `queue` is the queue as RabbitMQ names it in errors: `'q' in vhost '/'`.
fn invalid(queue: &str, arg: &str, why: impl std::fmt::Display) -> CoreError {
    CoreError::InvalidArgument(format!("invalid arg '{arg}' for queue {queue}: {why}"))
}

fn non_negative(queue: &str, args: &FieldTable, key: &str) -> Result<Option<u64>> {
    match args.get(key) {
        None => Ok(None),
        Some(v) => match v.as_i64() {
            Some(i) if i >= 0 => Ok(Some(i as u64)),
            Some(i) => Err(invalid(queue, key, format!("{{value_negative,{i}}}"))),
            None => Err(invalid(queue, key, format!("{{unacceptable_type,{v:?}}}"))),
        },
    }
}

fn string_arg<'a>(queue: &str, args: &'a FieldTable, key: &str) -> Result<Option<&'a str>> {
    match args.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| invalid(queue, key, format!("{{unacceptable_type,{v:?}}}"))),
    }
}

fn float_arg(queue: &str, args: &FieldTable, key: &str) -> Result<Option<f64>> {
    match args.get(key) {
        None => Ok(None),
        Some(Value::Float(f)) if f.is_finite() => Ok(Some(*f)),
        Some(v) => v
            .as_i64()
            .map(|i| Some(i as f64))
            .ok_or_else(|| invalid(queue, key, format!("{{unacceptable_type,{v:?}}}"))),
    }
}

/// Parses a RabbitMQ stream `x-max-age` value: "7D", "12h", "30m", "10s", "1Y", "1M".
fn parse_age(s: &str) -> Option<u64> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    let ms = match unit {
        "Y" => 365 * 86_400_000,
        "M" => 30 * 86_400_000,
        "D" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        "s" => 1000,
        _ => return None,
    };
    n.checked_mul(ms)
}

impl QueueArgs {
    /// Parses and validates declare arguments. Unknown arguments are ignored, as
    /// RabbitMQ does.
    ///
    /// # Errors
    /// `InvalidArgument` naming the argument when a value has the wrong type or range.
    pub fn parse(name: &str, vhost: &str, args: &FieldTable) -> Result<Self> {
        let queue = &format!("'{name}' in vhost '{vhost}'");
        let queue = queue.as_str();
        let queue_type = match string_arg(queue, args, "x-queue-type")? {
            None | Some("classic") => QueueType::Classic,
            Some("quorum") => QueueType::Quorum,
            Some("stream") => QueueType::Stream,
            Some(other) => {
                return Err(invalid(
                    queue,
                    "x-queue-type",
                    format!("unknown type {other}"),
                ))
            }
        };
        let expires_ms = non_negative(queue, args, "x-expires")?;
        if expires_ms == Some(0) {
            return Err(invalid(queue, "x-expires", "{value_zero,0}"));
        }
        let overflow = match string_arg(queue, args, "x-overflow")? {
            None | Some("drop-head") => Overflow::DropHead,
            Some("reject-publish") => Overflow::RejectPublish,
            Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
            Some(other) => {
                return Err(invalid(
                    queue,
                    "x-overflow",
                    format!("unknown value {other}"),
                ))
            }
        };
        let dead_letter_exchange =
            string_arg(queue, args, "x-dead-letter-exchange")?.map(str::to_owned);
        let dead_letter_routing_key =
            string_arg(queue, args, "x-dead-letter-routing-key")?.map(str::to_owned);
        if dead_letter_routing_key.is_some() && dead_letter_exchange.is_none() {
            return Err(invalid(
                queue,
                "x-dead-letter-routing-key",
                "routing key set without x-dead-letter-exchange",
            ));
        }
        let max_priority = match non_negative(queue, args, "x-max-priority")? {
            None => None,
            Some(p) if p <= 255 => Some(p as u8),
            Some(p) => {
                return Err(invalid(
                    queue,
                    "x-max-priority",
                    format!("{{max_value_exceeded,{p}}}"),
                ))
            }
        };
        let delivery_limit =
            non_negative(queue, args, "x-delivery-limit")?.map(|d| d.min(u32::MAX as u64) as u32);
        let single_active_consumer = match args.get("x-single-active-consumer") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(v) => {
                return Err(invalid(
                    queue,
                    "x-single-active-consumer",
                    format!("{{unacceptable_type,{v:?}}}"),
                ))
            }
        };
        let retry = match non_negative(queue, args, "x-retry-initial-delay-ms")? {
            None => None,
            Some(initial) => {
                let max = non_negative(queue, args, "x-retry-max-delay-ms")?
                    .unwrap_or(initial.saturating_mul(1024).max(initial));
                let multiplier = float_arg(queue, args, "x-retry-multiplier")?.unwrap_or(2.0);
                if !(1.0..=100.0).contains(&multiplier) {
                    return Err(invalid(
                        queue,
                        "x-retry-multiplier",
                        "must be between 1 and 100",
                    ));
                }
                let jitter = float_arg(queue, args, "x-retry-jitter")?.unwrap_or(0.1);
                if !(0.0..=1.0).contains(&jitter) {
                    return Err(invalid(queue, "x-retry-jitter", "must be between 0 and 1"));
                }
                Some(RetryPolicy {
                    initial_delay_ms: initial,
                    max_delay_ms: max,
                    multiplier,
                    jitter,
                })
            }
        };
        let partitions = match non_negative(queue, args, "x-partitions")? {
            None => 1,
            Some(p) if (1..=u64::from(STREAM_PARTITIONS_MAX)).contains(&p) => p as u32,
            Some(p) => {
                return Err(invalid(
                    queue,
                    "x-partitions",
                    format!("must be 1..={STREAM_PARTITIONS_MAX}, got {p}"),
                ))
            }
        };
        let max_age_ms = match args.get("x-max-age") {
            None => None,
            Some(v) => match (v.as_str(), v.as_i64()) {
                (Some(s), _) => Some(
                    parse_age(s)
                        .ok_or_else(|| invalid(queue, "x-max-age", format!("cannot parse {s}")))?,
                ),
                (None, Some(i)) if i > 0 => Some(i as u64),
                _ => {
                    return Err(invalid(
                        queue,
                        "x-max-age",
                        format!("{{unacceptable_type,{v:?}}}"),
                    ))
                }
            },
        };
        Ok(QueueArgs {
            queue_type,
            message_ttl_ms: non_negative(queue, args, "x-message-ttl")?,
            expires_ms,
            max_length: non_negative(queue, args, "x-max-length")?,
            max_length_bytes: non_negative(queue, args, "x-max-length-bytes")?,
            overflow,
            dead_letter_exchange,
            dead_letter_routing_key,
            max_priority,
            delivery_limit,
            single_active_consumer,
            retry,
            partitions,
            max_age_ms,
            segment_bytes: non_negative(queue, args, "x-stream-max-segment-size-bytes")?,
        })
    }
}

/// What declares a queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueDecl {
    pub name: String,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    #[serde(default)]
    pub arguments: FieldTable,
}

impl QueueDecl {
    /// A durable, non-exclusive queue without arguments.
    pub fn durable(name: impl Into<String>) -> Self {
        QueueDecl {
            name: name.into(),
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments: FieldTable::new(),
        }
    }

    /// A transient queue: lost on restart.
    pub fn transient(name: impl Into<String>) -> Self {
        QueueDecl {
            durable: false,
            ..QueueDecl::durable(name)
        }
    }

    /// Sets an argument (builder style).
    pub fn arg(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.arguments.insert(key, value.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_argument() {
        let d = QueueDecl::durable("q")
            .arg("x-message-ttl", 1000i64)
            .arg("x-expires", 5000i64)
            .arg("x-max-length", 10i64)
            .arg("x-max-length-bytes", 100i64)
            .arg("x-overflow", "reject-publish-dlx")
            .arg("x-dead-letter-exchange", "dlx")
            .arg("x-dead-letter-routing-key", "dead")
            .arg("x-max-priority", 10i64)
            .arg("x-delivery-limit", 3i64)
            .arg("x-single-active-consumer", true)
            .arg("x-retry-initial-delay-ms", 100i64);
        let a = QueueArgs::parse("q", "/", &d.arguments).unwrap();
        assert_eq!(a.message_ttl_ms, Some(1000));
        assert_eq!(a.expires_ms, Some(5000));
        assert_eq!(a.max_length, Some(10));
        assert_eq!(a.max_length_bytes, Some(100));
        assert_eq!(a.overflow, Overflow::RejectPublishDlx);
        assert_eq!(a.dead_letter_exchange.as_deref(), Some("dlx"));
        assert_eq!(a.dead_letter_routing_key.as_deref(), Some("dead"));
        assert_eq!(a.max_priority, Some(10));
        assert_eq!(a.delivery_limit, Some(3));
        assert!(a.single_active_consumer);
        assert_eq!(a.retry.as_ref().map(|r| r.initial_delay_ms), Some(100));
    }

    #[test]
    fn rejects_bad_values_naming_the_argument() {
        for (k, v) in [
            ("x-message-ttl", Value::Int(-1)),
            ("x-max-length", Value::String("ten".into())),
            ("x-overflow", Value::String("explode".into())),
            ("x-max-priority", Value::Int(256)),
            ("x-expires", Value::Int(0)),
            ("x-queue-type", Value::String("lazy".into())),
        ] {
            let mut t = FieldTable::new();
            t.insert(k, v);
            let e = QueueArgs::parse("q", "/", &t).unwrap_err().to_string();
            assert!(e.contains(k), "{e} should name {k}");
        }
    }

    #[test]
    fn stream_max_age_strings() {
        assert_eq!(parse_age("7D"), Some(7 * 86_400_000));
        assert_eq!(parse_age("10s"), Some(10_000));
        assert_eq!(parse_age("10x"), None);
        assert_eq!(parse_age("h"), None);
    }

    #[test]
    fn retry_delay_grows_and_caps() {
        let r = RetryPolicy {
            initial_delay_ms: 100,
            max_delay_ms: 1000,
            multiplier: 2.0,
            jitter: 0.0,
        };
        assert_eq!(r.delay_ms(1, 0.5), 100);
        assert_eq!(r.delay_ms(2, 0.5), 200);
        assert_eq!(r.delay_ms(3, 0.5), 400);
        assert_eq!(r.delay_ms(10, 0.5), 1000);
        let j = RetryPolicy { jitter: 0.5, ..r };
        assert_eq!(j.delay_ms(1, 0.0), 50);
        assert_eq!(j.delay_ms(1, 1.0), 150);
    }
}
