//! Helpers shared by the core's in-process tests: opening a broker over a temp
//! directory and awaiting deliveries with a deadline.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferrymq_core::queue::ConsumerSink;
use ferrymq_core::{
    Broker, BrokerConfig, ConsumerEvent, ConsumerOptions, Delivery, Message, VHost,
};
use ferrymq_storage::{Durability, StorageConfig};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// Generous deadline for anything awaited in tests (never a sleep-and-hope).
pub const DEADLINE: Duration = Duration::from_secs(10);

pub fn config(dir: &Path) -> BrokerConfig {
    BrokerConfig {
        data_dir: dir.to_path_buf(),
        storage: StorageConfig {
            default_durability: Durability::T1,
            ..StorageConfig::default()
        },
        resource_check_interval_ms: 50,
        ..BrokerConfig::default()
    }
}

pub async fn open(dir: &Path) -> Arc<Broker> {
    Broker::open(config(dir)).await.expect("broker opens")
}

pub fn vhost(b: &Broker) -> Arc<VHost> {
    b.vhost("/").expect("default vhost")
}

pub fn msg(key: &str, body: &str) -> Message {
    Message::new(key, body.as_bytes().to_vec())
}

pub fn persistent(key: &str, body: &str) -> Message {
    let mut m = msg(key, body);
    m.properties.persistent = true;
    m
}

pub fn sink() -> (ConsumerSink, UnboundedReceiver<ConsumerEvent>) {
    unbounded_channel()
}

pub fn opts(tag: &str, prefetch: u32) -> ConsumerOptions {
    ConsumerOptions {
        tag: tag.into(),
        prefetch_count: prefetch,
        ..Default::default()
    }
}

/// Awaits exactly `n` deliveries (in order), failing after the deadline.
pub async fn take(rx: &mut UnboundedReceiver<ConsumerEvent>, n: usize) -> Vec<Delivery> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(DEADLINE, rx.recv()).await {
            Ok(Some(ConsumerEvent::Deliver(batch))) => out.extend(batch),
            Ok(Some(ConsumerEvent::Cancelled { consumer_tag, .. })) => {
                panic!("consumer {consumer_tag} cancelled")
            }
            Ok(None) => panic!("sink closed after {} deliveries", out.len()),
            Err(_) => panic!("timed out after {} of {n} deliveries", out.len()),
        }
    }
    assert_eq!(out.len(), n, "more deliveries than expected");
    out
}

/// Asserts nothing is pending on the sink right now (after the queue had a
/// chance to dispatch synchronously: dispatch happens inside the calls).
pub fn assert_idle(rx: &mut UnboundedReceiver<ConsumerEvent>) {
    if let Ok(ev) = rx.try_recv() {
        panic!("unexpected event: {ev:?}");
    }
}

pub fn bodies(ds: &[Delivery]) -> Vec<String> {
    ds.iter()
        .map(|d| String::from_utf8_lossy(&d.message.body).into_owned())
        .collect()
}

/// Polls a condition until true or the deadline (for timer-driven behaviour).
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
