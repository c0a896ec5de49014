//! `ferrymq-bench`: FerryMQ's load generator. It drives a broker over its wire protocol with
//! the same client whichever broker it is, and accounts for every message.
//!
//! Layers, one job each:
//! - [`payload`]: the 16-byte header every message carries (producer, sequence, send time).
//! - [`accounting`]: sent / confirmed / received bit sets; lost, duplicated, out of order.
//! - [`latency`]: HdrHistogram wrapper and percentile summaries.
//! - [`rate`]: maximum or fixed-rate scheduling without coordinated omission.
//! - [`procstat`]: a broker process tree's CPU time and resident memory from `/proc`.
//! - [`run`]: scenario, shared run state, measurement window, results.
//! - [`monitor`]: progress line and broker sampler tasks.
//! - [`harness`]: the protocol-neutral run: one window, drain, tally ([`harness::Driver`]).
//! - [`amqp`]: the AMQP 0-9-1 run and its `lapin` driver (`--client lapin`).
//! - [`native`]: the default AMQP 0-9-1 driver, on `ferrymq-amqp-codec` (`--client native`).
//! - [`mqtt`]: the MQTT 3.1.1 run (topics, fan-out, QoS 0/1), its `rumqttc` driver
//!   (`--mqtt-client rumqttc`), idle connections.
//! - [`mqtt_native`]: the default MQTT 3.1.1 driver, on `ferrymq-mqtt-codec` (`--mqtt-client native`).
//! - [`http`]: the FerryMQ HTTP API driver on `ureq`: raw or batched publishes, long-poll pull + ack.
//! - `kafka` (feature `kafka`): the Kafka driver on `rdkafka` (librdkafka): topics × partitions, acks, batching.
//! - [`limits`]: the machine's limits beside the Kafka figures: loopback TCP and raw group commit.
//! - [`report`]: the human table.
//! - [`brokers`]: starting and stopping FerryMQ, RabbitMQ and Mosquitto for `compare`.
//! - [`compare`]: the scenario matrix, medians and ratios, the markdown section.
//! - [`compare_mqtt`]: the MQTT matrix (FerryMQ vs Mosquitto) and idle connections.
//! - [`compare_kafka`]: the Kafka matrix (FerryMQ at T1 and T2, beside the machine's limits).
//! - [`svg`]: a hand-written SVG bar chart.

pub mod accounting;
pub mod amqp;
pub mod brokers;
pub mod compare;
pub mod compare_kafka;
pub mod compare_mqtt;
pub mod harness;
pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod latency;
pub mod limits;
pub mod monitor;
pub mod mqtt;
pub mod mqtt_native;
pub mod native;
pub mod payload;
pub mod procstat;
pub mod rate;
pub mod report;
pub mod run;
pub mod svg;

use std::sync::Arc;

use run::{Ctx, Protocol, RunResult, Scenario};

/// Runs one scenario against the broker its URL names.
///
/// # Errors
/// Kafka in a build without the `kafka` feature, connection and publish failures.
pub async fn run_scenario(s: Scenario, ctx: Arc<Ctx>) -> anyhow::Result<RunResult> {
    match Protocol::of_url(&s.url)? {
        Protocol::Amqp => amqp::run(s, ctx).await,
        Protocol::Mqtt => mqtt::run(s, ctx).await,
        Protocol::Http => http::run(s, ctx).await,
        #[cfg(feature = "kafka")]
        Protocol::Kafka => kafka::run(s, ctx).await,
        #[cfg(not(feature = "kafka"))]
        Protocol::Kafka => anyhow::bail!("{KAFKA_MISSING}"),
    }
}

/// Why a build without the `kafka` feature cannot drive Kafka.
pub const KAFKA_MISSING: &str = "this ferrymq-bench was built without its Kafka driver: rebuild with `--features kafka` (it links the system's librdkafka: apt-get install librdkafka-dev)";

/// Whether this build has the Kafka driver.
pub const HAS_KAFKA: bool = cfg!(feature = "kafka");
