//! Issue #8: a short smoke run of the load generator against the real `ferrymq` server
//! binary, with each AMQP client (`native`, the default, and `lapin`), over MQTT with each
//! MQTT client (`native`, the default, and `rumqttc`), over the HTTP API and,
//! in a build with `--features kafka`, over Kafka (librdkafka): messages flow and the
//! accounting adds up. Never asserts a speed.
//!
//! The server binary is another package's, so it is found in this test's target directory
//! (`target/debug/ferrymq`); `./scripts/test` (`cargo test --workspace`) builds it before any
//! test runs.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ferrymq_bench::brokers::Broker;
use ferrymq_bench::run::{Client, Ctx, MqttClient, Scenario};
use ferrymq_bench::run_scenario;

/// `target/<profile>/ferrymq`, beside this test's `deps/` directory.
fn ferrymq_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRYMQ_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join("ferrymq");
    assert!(
        bin.is_file(),
        "{} not found: build the server first (`cargo build -p ferrymq`, or run ./scripts/test, which builds every binary of the workspace), or set FERRYMQ_BIN",
        bin.display()
    );
    bin
}

fn start() -> (Broker, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let b = Broker::ferrymq(&ferrymq_bin(), tmp.path(), &[]).expect("ferrymq starts");
    (b, tmp)
}

/// Both clients, one after the other, against the same broker.
async fn persistent_confirmed_messages_all_arrive_once_in_order(client: Client) {
    let (broker, _tmp) = start();
    let mut s = Scenario::amqp(&broker.url);
    s.client = client;
    s.size = 1024;
    s.persistent = true;
    s.confirms = true;
    s.count = Some(3_000);
    s.warmup = Duration::ZERO;
    s.broker_pid = Some(broker.pid);
    let r = run_scenario(s, Arc::new(Ctx::new()))
        .await
        .unwrap_or_else(|e| panic!("{client:?}: {e:#}"));
    let t = &r.tally;
    assert_eq!(t.sent, 3_000, "{t:?}");
    assert_eq!(t.confirmed, 3_000, "{t:?}");
    assert_eq!(t.received, 3_000, "{t:?}");
    assert_eq!(
        (
            t.lost,
            t.duplicated,
            t.out_of_order,
            t.nacked,
            t.failed,
            t.foreign
        ),
        (0, 0, 0, 0, 0, 0),
        "{t:?}"
    );
    assert_eq!(r.end_to_end.count, 3_000);
    assert_eq!(r.confirm.count, 3_000);
    assert!(r.end_to_end.p50_us > 0.0 && r.end_to_end.p50_us <= r.end_to_end.max_us);
    assert!(r.publish.msgs_per_s > 0.0 && r.consume.msgs_per_s > 0.0);
    let usage = r.broker.expect("broker usage");
    assert!(
        usage.peak_rss_bytes > 0 && usage.pid == broker.pid,
        "{usage:?}"
    );
    assert!(!r.drain_incomplete);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_client_persistent_confirmed_messages_all_arrive_once_in_order() {
    persistent_confirmed_messages_all_arrive_once_in_order(Client::Native).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_client_persistent_confirmed_messages_all_arrive_once_in_order() {
    persistent_confirmed_messages_all_arrive_once_in_order(Client::Lapin).await;
}

/// A short maximum-rate duration run per client, transient, with automatic and manual acks;
/// checks the accounting, never the speed.
async fn max_rate_transient(client: Client, ack_every: u32) {
    let (broker, _tmp) = start();
    let mut s = Scenario::amqp(&broker.url);
    s.client = client;
    s.duration = Duration::from_millis(700);
    s.warmup = Duration::from_millis(200);
    s.ack_every = ack_every;
    s.size = 100;
    s.broker_pid = Some(broker.pid);
    let r = run_scenario(s, Arc::new(Ctx::new()))
        .await
        .unwrap_or_else(|e| panic!("{client:?}: {e:#}"));
    let t = &r.tally;
    assert!(t.sent > 0, "{client:?}: {t:?}");
    assert_eq!(t.received, t.sent, "{client:?}: {t:?}");
    assert_eq!(
        (t.lost, t.duplicated, t.out_of_order, t.foreign, t.failed),
        (0, 0, 0, 0, 0),
        "{client:?}: {t:?}"
    );
    assert!(!r.drain_incomplete, "{client:?}");
    assert!(r.client_cpu_percent.is_some(), "{client:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_clients_at_maximum_rate_account_for_every_message() {
    for client in [Client::Native, Client::Lapin] {
        max_rate_transient(client, 50).await;
    }
    max_rate_transient(Client::Native, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_rate_over_several_queues_accounts_for_every_message() {
    let (broker, _tmp) = start();
    let mut s = Scenario::amqp(&broker.url);
    s.producers = 2;
    s.consumers = 2;
    s.queues = 2;
    s.rate = Some(1_000.0);
    s.duration = Duration::from_secs(1);
    s.warmup = Duration::from_millis(200);
    let r = run_scenario(s, Arc::new(Ctx::new())).await.expect("run");
    let t = &r.tally;
    // 1.2 s at 1,000/s; the producer may be a little late, never early.
    assert!(t.sent > 300 && t.sent <= 1_202, "{t:?}");
    assert_eq!(t.received, t.sent, "{t:?}");
    assert_eq!(t.confirmed, 0);
    assert_eq!(
        (
            t.lost,
            t.duplicated,
            t.out_of_order,
            t.unconfirmed_not_received
        ),
        (0, 0, 0, 0),
        "{t:?}"
    );
    assert!(r.end_to_end.count > 0 && r.end_to_end.count <= t.received);
}

/// FerryMQ with its MQTT listener on a free port; its `mqtt://` URL.
fn start_mqtt() -> (Broker, tempfile::TempDir, String) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let b = Broker::ferrymq(
        &ferrymq_bin(),
        tmp.path(),
        &["mqtt.enabled=true", "mqtt.port=0"],
    )
    .expect("ferrymq starts");
    let url = b.mqtt_url.clone().expect("FerryMQ logs its MQTT listener");
    (b, tmp, url)
}

/// Each MQTT client for a few seconds at the maximum rate, QoS 0 and 1, 1 → 1 and 1 → 3:
/// messages flow, every QoS 1 publish is acked and every confirmed copy arrives once and in
/// order, and every QoS 0 copy is received or counted missing. Never asserts a speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_clients_account_for_every_copy() {
    let (broker, _tmp, url) = start_mqtt();
    for client in [MqttClient::Native, MqttClient::Rumqttc] {
        for (qos, consumers) in [(1u8, 1usize), (0, 1), (1, 3)] {
            let what = format!("{client:?} QoS {qos} 1 → {consumers}");
            let mut s = Scenario::new(&url);
            s.mqtt_client = client;
            s.qos = qos;
            s.consumers = consumers;
            s.size = 100;
            s.duration = Duration::from_millis(if client == MqttClient::Native {
                2_000
            } else {
                700
            });
            s.warmup = Duration::from_millis(300);
            s.broker_pid = Some(broker.pid);
            let r = run_scenario(s, Arc::new(Ctx::new()))
                .await
                .unwrap_or_else(|e| panic!("{what}: {e:#}"));
            let t = &r.tally;
            assert!(t.sent > 0 && t.received > 0, "{what}: {t:?}");
            assert_eq!(
                t.copies_expected,
                t.sent * consumers as u64,
                "{what}: {t:?}"
            );
            assert_eq!(
                (t.lost, t.duplicated, t.out_of_order, t.failed, t.foreign),
                (0, 0, 0, 0, 0),
                "{what}: {t:?}"
            );
            assert_eq!(
                t.received + t.unconfirmed_not_received,
                t.copies_expected,
                "{what}: {t:?}"
            );
            if qos == 1 {
                assert_eq!(t.confirmed, t.sent, "{what}: {t:?}");
                assert_eq!(t.received, t.copies_expected, "{what}: {t:?}");
            } else {
                assert_eq!(t.confirmed, 0, "{what}: {t:?}");
            }
            assert!(r.end_to_end.count > 0, "{what}");
            assert!(r.client_cpu_percent.is_some(), "{what}");
        }
    }
}

#[test]
fn the_binary_prints_json_and_refuses_protocols_it_cannot_drive() {
    let (broker, _tmp) = start();
    for client in ["native", "lapin"] {
        let out = Command::new(env!("CARGO_BIN_EXE_ferrymq-bench"))
            .args([
                "run",
                "--url",
                &broker.url,
                "--client",
                client,
                "--count",
                "500",
                "--size",
                "100",
                "--json",
            ])
            .args(["--broker-pid", &broker.pid.to_string()])
            .output()
            .expect("run ferrymq-bench");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{client}: {stderr}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
        assert_eq!(v["scenario"]["client"], client);
        assert_eq!(v["tally"]["sent"], 500);
        assert_eq!(v["tally"]["received"], 500);
        assert_eq!(v["tally"]["lost"], 0);
        assert_eq!(v["protocol"], "amqp");
        assert!(v["broker"]["peak_rss_bytes"].as_u64().unwrap_or(0) > 0);
    }

    // A build without the Kafka driver says so instead of faking a result.
    if !ferrymq_bench::HAS_KAFKA {
        let url = "kafka://127.0.0.1:9092";
        let out = Command::new(env!("CARGO_BIN_EXE_ferrymq-bench"))
            .args(["run", "--url", url, "--duration", "1s"])
            .output()
            .expect("run ferrymq-bench");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url}: must fail, not fake a result");
        assert!(
            stderr.contains("built without its Kafka driver"),
            "{url}: {stderr}"
        );
        assert!(out.stdout.is_empty());
    }
}

/// FerryMQ with its HTTP listener on a free port.
fn start_http() -> (Broker, tempfile::TempDir, String) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let b = Broker::ferrymq(
        &ferrymq_bin(),
        tmp.path(),
        &["http.enabled=true", "http.port=0"],
    )
    .expect("ferrymq starts");
    let url = b
        .http_url
        .clone()
        .expect("FerryMQ logged `http listening on`");
    (b, tmp, url)
}

/// HTTP: single raw publishes (persistent, T2) and JSON batches (transient, auto-ack pulls),
/// each consumed by long-poll pulls; every message arrives once, in order, and every publish
/// answer counts as its confirm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_single_and_batched_publishes_all_arrive_once_in_order() {
    let (broker, _tmp, url) = start_http();
    for (batch, persistent, ack_every) in [(1, true, 50), (50, false, 0)] {
        let mut s = Scenario::new(&url);
        s.http_batch = batch;
        s.persistent = persistent;
        s.ack_every = ack_every;
        s.size = 200;
        s.count = Some(1_000);
        s.warmup = Duration::ZERO;
        s.broker_pid = Some(broker.pid);
        let r = run_scenario(s, Arc::new(Ctx::new()))
            .await
            .unwrap_or_else(|e| panic!("batch {batch}: {e:#}"));
        let t = &r.tally;
        assert_eq!(r.protocol, ferrymq_bench::run::Protocol::Http);
        assert_eq!(
            (t.sent, t.confirmed, t.received),
            (1_000, 1_000, 1_000),
            "{t:?}"
        );
        assert_eq!(
            (t.lost, t.duplicated, t.out_of_order, t.failed, t.foreign),
            (0, 0, 0, 0, 0),
            "batch {batch}: {t:?}"
        );
        assert_eq!(r.confirm.count, 1_000);
        assert_eq!(r.end_to_end.count, 1_000);
        assert!(!r.drain_incomplete);
        assert!(r.broker.is_some_and(|b| b.peak_rss_bytes > 0));
    }
}

/// The binary drives HTTP from its URL scheme and prints JSON.
#[test]
fn the_binary_runs_http_urls() {
    let (broker, _tmp, url) = start_http();
    let out = Command::new(env!("CARGO_BIN_EXE_ferrymq-bench"))
        .args([
            "run",
            "--url",
            &url,
            "--count",
            "300",
            "--http-batch",
            "10",
            "--json",
        ])
        .output()
        .expect("run ferrymq-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["protocol"], "http");
    assert_eq!(v["tally"]["sent"], 300);
    assert_eq!(v["tally"]["received"], 300);
    assert_eq!(v["tally"]["lost"], 0);
    drop(broker);
}

/// FerryMQ with its Kafka listener on a free port, at `durability`.
#[cfg(feature = "kafka")]
fn start_kafka(durability: &str) -> (Broker, tempfile::TempDir, String) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let b = Broker::ferrymq(
        &ferrymq_bin(),
        tmp.path(),
        &["kafka.enabled=true", "kafka.port=0", durability],
    )
    .expect("ferrymq starts");
    let url = b
        .kafka_url
        .clone()
        .expect("FerryMQ logged `Kafka listening on`");
    (b, tmp, url)
}

/// Kafka (librdkafka): a count run over 4 partitions with two producers and two consumers
/// sharing them (acks=all, T2), and a short duration run at T1 with acks=1 and one partition:
/// records flow, every one is confirmed and received once, in order per partition, and the
/// accounting adds up. Never asserts a speed.
#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_records_all_arrive_once_in_partition_order() {
    let (broker, _tmp, url) = start_kafka("storage.durability=t2");
    let mut s = Scenario::new(&url);
    s.producers = 2;
    s.consumers = 2;
    s.partitions = 4;
    s.size = 1024;
    s.linger_ms = Some(2);
    s.count = Some(4_000);
    s.warmup = Duration::ZERO;
    s.broker_pid = Some(broker.pid);
    let r = run_scenario(s, Arc::new(Ctx::new()))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let t = &r.tally;
    assert_eq!(r.protocol, ferrymq_bench::run::Protocol::Kafka);
    assert_eq!(
        (t.sent, t.confirmed, t.received),
        (4_000, 4_000, 4_000),
        "{t:?}"
    );
    assert_eq!(
        (
            t.lost,
            t.duplicated,
            t.out_of_order,
            t.nacked,
            t.failed,
            t.foreign
        ),
        (0, 0, 0, 0, 0, 0),
        "{t:?}"
    );
    assert_eq!(r.confirm.count, 4_000);
    assert_eq!(r.end_to_end.count, 4_000);
    assert!(r.publish.mb_per_s > 0.0 && r.consume.mb_per_s > 0.0);
    assert!(!r.drain_incomplete);
    assert!(r.broker.is_some_and(|b| b.peak_rss_bytes > 0));
    drop(broker);

    let (broker, _tmp, url) = start_kafka("storage.durability=t1");
    let mut s = Scenario::new(&url);
    s.size = 512;
    s.acks = 1;
    // The rate asserted below is of records acknowledged inside the measured window. In
    // about one run in four, this second librdkafka producer of the process gets its first
    // acknowledgement only ~850 ms after it starts (every record of the first 850 ms is then
    // acknowledged at once; seen at 5,000 records/s and at the maximum rate alike), which
    // left no acknowledgement inside a window that began 200 ms after the start. The window
    // now begins after 2 s, well past that start-up, and the rate is fixed and low, so that
    // librdkafka's queue never fills.
    s.rate = Some(5_000.0);
    s.duration = Duration::from_millis(800);
    s.warmup = Duration::from_secs(2);
    s.broker_pid = Some(broker.pid);
    let r = run_scenario(s, Arc::new(Ctx::new()))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let t = &r.tally;
    assert!(t.sent > 0, "{t:?}");
    assert_eq!((t.confirmed, t.received), (t.sent, t.sent), "{t:?}");
    assert_eq!(
        (
            t.lost,
            t.duplicated,
            t.out_of_order,
            t.unconfirmed_not_received
        ),
        (0, 0, 0, 0),
        "{t:?}"
    );
    assert!(
        r.publish.msgs_per_s > 0.0,
        "{:?} {t:?} {:?} {:?}",
        r.publish,
        r.confirm,
        r.end_to_end
    );
    assert!(r.client_cpu_percent.is_some());
    assert!(!r.drain_incomplete);
}

/// acks=0: nothing is confirmed, and what was sent still arrives (fixed rate, so that the
/// client cannot outrun the socket).
#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_acks_zero_confirms_nothing_and_records_still_flow() {
    let (broker, _tmp, url) = start_kafka("storage.durability=t1");
    let mut s = Scenario::new(&url);
    s.acks = 0;
    s.partitions = 2;
    s.rate = Some(2_000.0);
    s.duration = Duration::from_millis(700);
    s.warmup = Duration::from_millis(100);
    let r = run_scenario(s, Arc::new(Ctx::new()))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let t = &r.tally;
    assert!(t.sent > 200 && t.sent <= 1_602, "{t:?}");
    assert_eq!((t.confirmed, t.lost), (0, 0), "{t:?}");
    assert_eq!(t.received + t.unconfirmed_not_received, t.sent, "{t:?}");
    assert!(t.received > 0, "{t:?}");
    assert_eq!(r.confirm.count, 0);
    drop(broker);
}
