//! Issue #8: a short smoke run of the MQTT drivers (the native one, the default, and
//! `rumqttc`) against Mosquitto (Debian's package, started by the test on a free loopback
//! port): messages flow, 1 → 1 and fan-out, QoS 0 and 1, and the accounting adds up. Never
//! asserts a speed. Skipped, with a message, when `mosquitto`
//! is not installed (`apt-get install mosquitto`).

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ferrymq_bench::brokers::Broker;
use ferrymq_bench::run::{Ctx, MqttClient, Protocol, Scenario};
use ferrymq_bench::run_scenario;

fn installed() -> bool {
    let ok = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .iter()
        .any(|p| std::path::Path::new(p).is_file());
    if !ok {
        eprintln!("SKIPPED: mosquitto is not installed (apt-get install mosquitto)");
    }
    ok
}

async fn start() -> (Broker, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let b = Broker::mosquitto(tmp.path(), false)
        .await
        .expect("mosquitto starts");
    (b, tmp)
}

/// QoS 1, 1 → 1 and 1 → 3 on one topic: every copy arrives once and in order, every publish
/// is confirmed by its PUBACK. The fan-out runs at a fixed rate so that no subscriber falls
/// 1,000 messages behind (Mosquitto's `max_queued_messages`, beyond which it drops).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_one_to_one_and_fan_out_deliver_every_copy_once_in_order() {
    if !installed() {
        return;
    }
    let (broker, _tmp) = start().await;
    let cases = [(1, None), (3, Some(2_000.0))];
    for (client, (consumers, rate)) in [MqttClient::Native, MqttClient::Rumqttc]
        .into_iter()
        .flat_map(|c| cases.map(|x| (c, x)))
    {
        let mut s = Scenario::new(&broker.url);
        s.mqtt_client = client;
        s.qos = 1;
        s.consumers = consumers;
        s.rate = rate;
        s.size = 1024;
        s.count = Some(1_000);
        s.warmup = Duration::ZERO;
        s.broker_pid = Some(broker.pid);
        let r = run_scenario(s, Arc::new(Ctx::new()))
            .await
            .unwrap_or_else(|e| panic!("{client:?} 1 → {consumers}: {e:#}"));
        let t = &r.tally;
        assert_eq!(r.protocol, Protocol::Mqtt);
        assert_eq!((t.sent, t.confirmed), (1_000, 1_000), "{t:?}");
        assert_eq!(t.copies_expected, 1_000 * consumers as u64, "{t:?}");
        assert_eq!(t.received, t.copies_expected, "{t:?}");
        assert_eq!(
            (t.lost, t.duplicated, t.out_of_order, t.failed, t.foreign),
            (0, 0, 0, 0, 0),
            "{client:?} 1 → {consumers}: {t:?}"
        );
        assert_eq!(r.confirm.count, 1_000);
        assert_eq!(r.end_to_end.count, t.received);
        assert!(!r.drain_incomplete);
        let usage = r.broker.expect("broker usage");
        assert!(usage.peak_rss_bytes > 0 && usage.pid == broker.pid);
    }
}

/// QoS 0 at the maximum rate over two topics with two publishers and four subscribers:
/// whatever QoS 0 drops, every copy due is either received or counted missing, nothing is
/// duplicated, and nothing is "lost" (no QoS 0 message is ever confirmed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_over_two_topics_accounts_for_every_copy() {
    if !installed() {
        return;
    }
    let (broker, _tmp) = start().await;
    for client in [MqttClient::Native, MqttClient::Rumqttc] {
        let mut s = Scenario::new(&broker.url);
        s.mqtt_client = client;
        s.producers = 2;
        s.consumers = 4;
        s.queues = 2;
        s.duration = Duration::from_millis(700);
        s.warmup = Duration::from_millis(200);
        let r = run_scenario(s, Arc::new(Ctx::new())).await.expect("run");
        let t = &r.tally;
        assert!(t.sent > 0 && t.received > 0, "{client:?}: {t:?}");
        assert_eq!(t.confirmed, 0);
        assert_eq!(t.copies_expected, 2 * t.sent, "{client:?}: {t:?}");
        assert_eq!(
            t.received + t.unconfirmed_not_received,
            t.copies_expected,
            "{client:?}: {t:?}"
        );
        assert_eq!(
            (t.lost, t.duplicated, t.foreign),
            (0, 0, 0),
            "{client:?}: {t:?}"
        );
        assert!(r.client_cpu_percent.is_some());
    }
}

/// The native client for a few seconds at the maximum rate, QoS 1 and 0, 1 → 1: messages
/// flow, every QoS 1 publish is acked, nothing arrives twice or out of order, and every copy
/// due is received, lost or counted missing. At the maximum rate Mosquitto may drop even
/// acknowledged QoS 1 messages for a subscriber more than `max_queued_messages` (1,000)
/// behind, so *lost* is counted here, not required to be 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_native_client_runs_a_few_seconds_at_maximum_rate() {
    if !installed() {
        return;
    }
    let (broker, _tmp) = start().await;
    for qos in [1, 0] {
        let mut s = Scenario::new(&broker.url);
        s.mqtt_client = MqttClient::Native;
        s.qos = qos;
        s.size = 100;
        s.duration = Duration::from_secs(2);
        s.warmup = Duration::from_millis(500);
        s.broker_pid = Some(broker.pid);
        let r = run_scenario(s, Arc::new(Ctx::new()))
            .await
            .unwrap_or_else(|e| panic!("QoS {qos}: {e:#}"));
        let t = &r.tally;
        assert!(t.sent > 0 && t.received > 0, "QoS {qos}: {t:?}");
        assert!(r.publish.msgs_per_s > 0.0 && r.consume.msgs_per_s > 0.0);
        assert_eq!(
            (t.duplicated, t.out_of_order, t.failed, t.foreign),
            (0, 0, 0, 0),
            "QoS {qos}: {t:?}"
        );
        if qos == 1 {
            assert_eq!(t.confirmed, t.sent, "QoS 1: {t:?}");
            assert!(r.confirm.count > 0);
        } else {
            assert_eq!(t.confirmed, 0);
        }
        assert_eq!(
            t.received + t.lost + t.unconfirmed_not_received,
            t.copies_expected,
            "QoS {qos}: {t:?}"
        );
        assert!(r.end_to_end.count > 0 && r.end_to_end.count <= t.received);
    }
}

/// The binary picks MQTT from the URL, prints JSON, and measures idle connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_mqtt_urls_and_idle_connections() {
    if !installed() {
        return;
    }
    let (broker, _tmp) = start().await;
    let (url, pid) = (broker.url.clone(), broker.pid.to_string());
    let out = tokio::task::spawn_blocking(move || {
        let run = Command::new(env!("CARGO_BIN_EXE_ferrymq-bench"))
            .args(["run", "--url", &url, "--qos", "1", "--count", "500"])
            .args(["--consumers", "2", "--json"])
            .output()
            .expect("run ferrymq-bench");
        let idle = Command::new(env!("CARGO_BIN_EXE_ferrymq-bench"))
            .args(["run", "--url", &url, "--idle-connections", "300"])
            .args(["--broker-pid", &pid, "--json"])
            .output()
            .expect("run ferrymq-bench");
        (run, idle)
    })
    .await
    .expect("join");
    let (run, idle) = out;
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).expect("JSON on stdout");
    assert_eq!(v["protocol"], "mqtt");
    assert_eq!(v["tally"]["sent"], 500);
    assert_eq!(v["tally"]["copies_expected"], 1000);
    assert_eq!(v["tally"]["received"], 1000);
    assert_eq!(v["tally"]["lost"], 0);
    assert!(
        idle.status.success(),
        "{}",
        String::from_utf8_lossy(&idle.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&idle.stdout).expect("JSON on stdout");
    assert_eq!(v["connections"], 300);
    assert_eq!(v["connected"], 300, "{v}");
    assert!(v["rss_after_bytes"].as_u64().unwrap_or(0) > 0);
}
