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
//! - [`mqtt`]: the MQTT 3.1.1 driver on `rumqttc` (topics, fan-out, QoS 0/1), idle connections.
//! - [`http`]: the FerryMQ HTTP API driver on `ureq`: raw or batched publishes, long-poll pull + ack.
//! - [`report`]: the human table.
//! - [`brokers`]: starting and stopping FerryMQ, RabbitMQ and Mosquitto for `compare`.
//! - [`compare`]: the scenario matrix, medians and ratios, the markdown section.
//! - [`compare_mqtt`]: the MQTT matrix (FerryMQ vs Mosquitto) and idle connections.
//! - [`svg`]: a hand-written SVG bar chart.

pub mod accounting;
pub mod amqp;
pub mod brokers;
pub mod compare;
pub mod compare_mqtt;
pub mod harness;
pub mod http;
pub mod latency;
pub mod monitor;
pub mod mqtt;
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
/// Protocols without a driver yet (Kafka), connection and publish failures.
pub async fn run_scenario(s: Scenario, ctx: Arc<Ctx>) -> anyhow::Result<RunResult> {
    match Protocol::of_url(&s.url)? {
        Protocol::Amqp => amqp::run(s, ctx).await,
        Protocol::Mqtt => mqtt::run(s, ctx).await,
        Protocol::Http => http::run(s, ctx).await,
        Protocol::Kafka => anyhow::bail!(
            "Kafka is not supported by ferrymq-bench yet: AMQP 0-9-1, MQTT and HTTP have drivers (issue #8 tracks Kafka)"
        ),
    }
}
