//! A benchmark run's description ([`Scenario`]), its shared state while running ([`Ctx`]),
//! and its outcome ([`RunResult`]); protocol drivers fill them in.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::accounting::Tally;
use crate::latency::Summary;

/// The wire protocol of a target broker, from its URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Amqp,
    Mqtt,
    Kafka,
    Http,
}

impl Protocol {
    /// The protocol of `url` (`amqp://`, `mqtt://`, `kafka://`, `http://`).
    ///
    /// # Errors
    /// An unknown scheme.
    pub fn of_url(url: &str) -> anyhow::Result<Protocol> {
        let scheme = url
            .split("://")
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        Ok(match scheme.as_str() {
            "amqp" | "amqps" => Protocol::Amqp,
            "mqtt" | "mqtts" | "tcp" => Protocol::Mqtt,
            "kafka" => Protocol::Kafka,
            "http" | "https" => Protocol::Http,
            _ => anyhow::bail!(
                "unknown URL scheme in {url:?}: expected amqp://, mqtt://, kafka:// or http://"
            ),
        })
    }
}

/// Which AMQP 0-9-1 client library drives the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Client {
    /// The bench's own driver on `ferrymq-amqp-codec` (module `native`): pipelined, cheap.
    #[default]
    Native,
    /// The `lapin` crate.
    Lapin,
}

impl Client {
    /// Reports written before the client was selectable all used `lapin`.
    pub fn legacy() -> Client {
        Client::Lapin
    }

    pub fn name(self) -> &'static str {
        match self {
            Client::Native => "native",
            Client::Lapin => "lapin",
        }
    }
}

/// Which MQTT 3.1.1 client drives the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MqttClient {
    /// The bench's own driver on `ferrymq-mqtt-codec` (module `mqtt_native`): batched, cheap.
    #[default]
    Native,
    /// The `rumqttc` crate.
    Rumqttc,
}

impl MqttClient {
    /// Reports written before the client was selectable all used `rumqttc`.
    pub fn legacy() -> MqttClient {
        MqttClient::Rumqttc
    }

    pub fn name(self) -> &'static str {
        match self {
            MqttClient::Native => "native",
            MqttClient::Rumqttc => "rumqttc",
        }
    }
}

/// What to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scenario {
    pub url: String,
    /// The AMQP client (absent in reports from before it existed: `lapin`).
    #[serde(default = "Client::legacy")]
    pub client: Client,
    /// The MQTT client (absent in reports from before it existed: `rumqttc`).
    #[serde(default = "MqttClient::legacy")]
    pub mqtt_client: MqttClient,
    pub producers: usize,
    pub consumers: usize,
    /// Payload bytes per message, header included (at least 16).
    pub size: usize,
    /// Queues; producer `i` publishes to queue `i % queues`, consumer `j` reads queue `j % queues`.
    pub queues: usize,
    /// Measured time (after the warm-up); ignored when `count` is set.
    pub duration: Duration,
    pub warmup: Duration,
    /// Publish exactly this many messages in all (split over producers) instead of a duration.
    pub count: Option<u64>,
    /// Durable queues and persistent (delivery mode 2) messages.
    pub persistent: bool,
    /// Publisher confirms, with at most `confirm_window` unconfirmed messages per producer.
    pub confirms: bool,
    pub confirm_window: usize,
    /// Consumer prefetch (AMQP basic.qos).
    pub prefetch: u16,
    /// Ack every N deliveries with `multiple`; 0 = automatic acknowledgement (no acks).
    pub ack_every: u32,
    /// Total publish rate in messages/s over all producers; `None` = as fast as possible.
    pub rate: Option<f64>,
    /// Start consumers only once every message has been published (and confirmed): builds a
    /// backlog, then drains it.
    pub consume_after_publish: bool,
    /// After publishing stops, how long consumers may go without a delivery before the run
    /// ends with what it has.
    pub drain_idle: Duration,
    /// Queue names are `<prefix>-<n>`.
    pub queue_prefix: String,
    /// Keep the queues after the run (default: delete them).
    pub keep_queues: bool,
    /// Broker process to measure (with its descendants).
    pub broker_pid: Option<u32>,
    /// A progress line on stderr while running (only when stderr is a terminal).
    pub progress: bool,
    /// Print, at the end, the episodes in which end-to-end latency exceeded this many ms
    /// (when the slow messages were sent, wall clock included, to match with broker traces).
    #[serde(default)]
    pub slow_log_ms: Option<u64>,
    /// MQTT: the QoS of publishes and subscriptions (0 or 1; 1 = confirm latency to PUBACK).
    #[serde(default)]
    pub qos: u8,
    /// HTTP: messages per publish request (1 = `…/publish`, more = `…/publish/batch`).
    #[serde(default = "one")]
    pub http_batch: usize,
    /// Kafka: partitions of each topic (created by the run); producer `i` writes message `n` to
    /// partition `(n + i) % partitions`, and the consumers of a topic share its partitions.
    #[serde(default = "one")]
    pub partitions: usize,
    /// Kafka: records a producer sends to one partition before it moves on to the next
    /// (round-robin): 1 = record by record; more = sticky runs, as Kafka's Java producer
    /// (KIP-480, KIP-794) and librdkafka (`sticky.partitioning.linger.ms`) partition records
    /// without a key.
    #[serde(default = "one")]
    pub partition_run: usize,
    /// Kafka: the producers' `acks` (0, 1, or -1 = all).
    #[serde(default = "acks_all")]
    pub acks: i16,
    /// Kafka: the producers' `linger.ms` (`None` = librdkafka's default, 5 ms).
    #[serde(default)]
    pub linger_ms: Option<u32>,
    /// Kafka: the producers' `batch.size` in bytes (`None` = librdkafka's default, 1,000,000).
    #[serde(default)]
    pub batch_bytes: Option<usize>,
    /// Kafka: the consumers' `max.partition.fetch.bytes` (and `fetch.max.bytes`, at least
    /// that), i.e. how much one Fetch may return per partition (`None` = librdkafka's
    /// default, 1 MiB).
    #[serde(default)]
    pub fetch_bytes: Option<usize>,
}

fn acks_all() -> i16 {
    -1
}

fn one() -> usize {
    1
}

impl Scenario {
    /// A 1 → 1 AMQP scenario with the defaults of the CLI.
    pub fn amqp(url: &str) -> Scenario {
        Scenario {
            url: url.to_string(),
            client: Client::default(),
            mqtt_client: MqttClient::default(),
            producers: 1,
            consumers: 1,
            size: 16,
            queues: 1,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            count: None,
            persistent: false,
            confirms: false,
            confirm_window: 1000,
            prefetch: 1000,
            ack_every: 50,
            rate: None,
            consume_after_publish: false,
            drain_idle: Duration::from_secs(5),
            queue_prefix: format!("ferrymq-bench-{}", std::process::id()),
            keep_queues: false,
            broker_pid: None,
            progress: false,
            slow_log_ms: None,
            qos: 0,
            http_batch: 1,
            partitions: 1,
            partition_run: 1,
            acks: -1,
            linger_ms: None,
            batch_bytes: None,
            fetch_bytes: None,
        }
    }

    /// A scenario for `url` with the CLI's defaults (whatever its protocol).
    pub fn new(url: &str) -> Scenario {
        Scenario::amqp(url)
    }

    /// # Errors
    /// Options that cannot work together.
    pub fn validate(&self) -> anyhow::Result<()> {
        use anyhow::ensure;
        ensure!(
            self.size >= crate::payload::HEADER_BYTES,
            "--size must be at least 16 bytes (the header: producer, sequence number, send time)"
        );
        ensure!(self.producers >= 1, "--producers must be at least 1");
        ensure!(
            self.producers <= crate::payload::PRODUCER_MAX as usize + 1,
            "too many producers"
        );
        ensure!(self.queues >= 1, "--queues must be at least 1");
        ensure!(
            self.confirm_window >= 1,
            "--confirm-window must be at least 1"
        );
        ensure!(
            self.count.is_some() || !self.duration.is_zero(),
            "--duration must be positive"
        );
        ensure!(self.count != Some(0), "--count must be positive");
        if let Some(r) = self.rate {
            ensure!(r.is_finite() && r > 0.0, "--rate must be positive");
        }
        if self.ack_every > 0 && self.prefetch > 0 {
            ensure!(
                u32::from(self.prefetch) >= self.ack_every,
                "--ack-every ({}) must not exceed --prefetch ({}), or consumers stall",
                self.ack_every,
                self.prefetch
            );
        }
        ensure!(
            !self.consume_after_publish || self.count.is_some(),
            "--consume-after-publish needs --count"
        );
        ensure!(
            self.qos <= 1,
            "--qos must be 0 or 1 (QoS 2 is not driven by ferrymq-bench)"
        );
        ensure!(
            (1..=1000).contains(&self.http_batch),
            "--http-batch must be 1 to 1000"
        );
        ensure!(
            (1..=10_000).contains(&self.partitions),
            "--partitions must be 1 to 10000"
        );
        ensure!(
            matches!(self.acks, -1..=1),
            "--acks must be 0, 1 or all (-1)"
        );
        Ok(())
    }

    /// One line describing the scenario.
    pub fn describe(&self) -> String {
        let rate = match self.rate {
            Some(r) => format!("{r:.0} msg/s"),
            None => "max rate".into(),
        };
        let length = match self.count {
            Some(n) => format!("{n} messages"),
            None => format!("{:?} (+{:?} warm-up)", self.duration, self.warmup),
        };
        let proto = Protocol::of_url(&self.url).unwrap_or(Protocol::Amqp);
        match proto {
            Protocol::Mqtt => {
                return format!(
                    "{} MQTT client, {} → {} over {} topic(s), {} B, QoS {}, {} session, {}, {}",
                    self.mqtt_client.name(),
                    self.producers,
                    self.consumers,
                    self.queues,
                    self.size,
                    self.qos,
                    if self.persistent { "persistent" } else { "clean" },
                    rate,
                    length
                )
            }
            Protocol::Http => {
                return format!(
                    "ureq, {} → {} over {} queue(s), {} B, {}, {} per publish request, pull up to {} per request, {}, {}",
                    self.producers,
                    self.consumers,
                    self.queues,
                    self.size,
                    if self.persistent { "persistent" } else { "transient" },
                    self.http_batch,
                    crate::http::pull_max(self.prefetch),
                    rate,
                    length
                )
            }
            Protocol::Kafka => {
                let opt = |v: Option<String>| v.unwrap_or_else(|| "default".into());
                return format!(
                    "librdkafka, {} → {} over {} topic(s) × {} partition(s) (runs of {} record(s)), {} B, acks={}, linger.ms {}, batch.size {}, max.partition.fetch.bytes {}, {}, {}",
                    self.producers,
                    self.consumers,
                    self.queues,
                    self.partitions,
                    self.partition_run,
                    self.size,
                    if self.acks < 0 { "all".to_string() } else { self.acks.to_string() },
                    opt(self.linger_ms.map(|v| v.to_string())),
                    opt(self.batch_bytes.map(|v| v.to_string())),
                    opt(self.fetch_bytes.map(|v| v.to_string())),
                    rate,
                    length
                );
            }
            Protocol::Amqp => {}
        }
        format!(
            "{} client, {} → {} over {} queue(s), {} B, {}, {}, {}, prefetch {}, {}",
            self.client.name(),
            self.producers,
            self.consumers,
            self.queues,
            self.size,
            if self.persistent {
                "persistent"
            } else {
                "transient"
            },
            if self.confirms {
                format!("confirms (window {})", self.confirm_window)
            } else {
                "no confirms".into()
            },
            rate,
            self.prefetch,
            length
        )
    }
}

/// The measurement window, fixed when producers start: events in `[start_ns, end_ns)` count
/// towards rates and latencies (`end_ns` = `u64::MAX` for count-bounded runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub producers_start_ns: u64,
    pub start_ns: u64,
    pub end_ns: u64,
}

impl Window {
    pub fn contains(&self, ns: u64) -> bool {
        ns >= self.start_ns && ns < self.end_ns
    }
}

/// Events counted inside the window by one task; merged over tasks into a rate.
#[derive(Debug, Clone, Copy, Default)]
pub struct WindowCount {
    pub messages: u64,
    pub first_ns: Option<u64>,
    pub last_ns: u64,
}

impl WindowCount {
    pub fn add(&mut self, n: u64, now_ns: u64) {
        self.messages += n;
        self.first_ns.get_or_insert(now_ns);
        self.last_ns = self.last_ns.max(now_ns);
    }

    pub fn merge(&mut self, o: &WindowCount) {
        self.messages += o.messages;
        self.first_ns = match (self.first_ns, o.first_ns) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_ns = self.last_ns.max(o.last_ns);
    }

    /// The rate over the window: the full window for duration runs; for count runs, from the
    /// later of the window start and `side_start_ns` to the last event.
    pub fn rate(&self, w: &Window, side_start_ns: u64, size: usize) -> Rate {
        let start = w.start_ns.max(side_start_ns);
        let end = if w.end_ns == u64::MAX {
            self.last_ns
        } else {
            w.end_ns
        };
        let secs = end.saturating_sub(start) as f64 / 1e9;
        let per_s = if secs > 0.0 {
            self.messages as f64 / secs
        } else {
            0.0
        };
        Rate {
            messages: self.messages,
            seconds: secs,
            msgs_per_s: per_s,
            mb_per_s: per_s * size as f64 / 1e6,
        }
    }
}

/// A throughput figure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    pub messages: u64,
    pub seconds: f64,
    pub msgs_per_s: f64,
    /// Payload megabytes (10^6 bytes) per second.
    pub mb_per_s: f64,
}

/// The broker's resource use during the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BrokerUsage {
    pub pid: u32,
    /// CPU seconds (user + system, process tree) inside the measurement window.
    pub cpu_s: f64,
    /// `cpu_s` over the window length: 100 = one core busy.
    pub cpu_percent: f64,
    /// Highest resident set seen over the whole run (sampled every 250 ms).
    pub peak_rss_bytes: u64,
    pub end_rss_bytes: u64,
    /// (seconds since producers started, resident bytes), one sample a second.
    pub rss_curve: Vec<(f64, u64)>,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub protocol: Protocol,
    pub scenario: Scenario,
    pub tally: Tally,
    pub publish: Rate,
    pub consume: Rate,
    /// End-to-end latency: from the stamp (intended send time at a fixed rate) to delivery.
    pub end_to_end: Summary,
    /// From the stamp to the publisher confirm.
    pub confirm: Summary,
    pub broker: Option<BrokerUsage>,
    /// CPU of the load generator itself (this process, all threads, without child processes)
    /// over the measurement window, 100 = one core; `None` for count-bounded runs.
    #[serde(default)]
    pub client_cpu_percent: Option<f64>,
    /// Wall time of the whole run, drain included.
    pub elapsed_s: f64,
    /// Whether the run ended before every sent message was received (drain timeout, Ctrl-C).
    pub drain_incomplete: bool,
}

/// State shared by the tasks of one run.
#[derive(Debug)]
pub struct Ctx {
    pub base: Instant,
    pub window: OnceLock<Window>,
    pub sent: AtomicU64,
    pub confirmed: AtomicU64,
    pub received: AtomicU64,
    /// Set by Ctrl-C or a failing task: producers stop at once, consumers after a short drain.
    pub stop: AtomicBool,
}

impl Ctx {
    pub fn new() -> Ctx {
        Ctx {
            base: Instant::now(),
            window: OnceLock::new(),
            sent: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            received: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// Wall-clock time of `ns` on this run's clock, as `HH:MM:SS.mmm` UTC.
    pub fn wall(&self, ns: u64) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let t = now.as_nanos() as i128 - i128::from(self.now_ns()) + i128::from(ns);
        let ms = (t / 1_000_000).rem_euclid(86_400_000) as u64;
        format!(
            "{:02}:{:02}:{:02}.{:03}",
            ms / 3_600_000,
            ms / 60_000 % 60,
            ms / 1000 % 60,
            ms % 1000
        )
    }

    pub fn at(&self, ns: u64) -> Instant {
        self.base + Duration::from_nanos(ns)
    }

    pub fn window(&self) -> Window {
        self.window.get().copied().unwrap_or(Window {
            producers_start_ns: u64::MAX,
            start_ns: u64::MAX,
            end_ns: u64::MAX,
        })
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

impl Default for Ctx {
    fn default() -> Self {
        Ctx::new()
    }
}

impl Scenario {
    /// The URL without its password.
    pub fn url_redacted(&self) -> String {
        redact(&self.url)
    }
}

/// `amqp://user:pass@host` → `amqp://user:***@host`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((cred, host)) => match cred.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_by_scheme() {
        assert_eq!(
            Protocol::of_url("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap(),
            Protocol::Amqp
        );
        assert_eq!(
            Protocol::of_url("mqtt://127.0.0.1:1883").unwrap(),
            Protocol::Mqtt
        );
        assert_eq!(
            Protocol::of_url("kafka://127.0.0.1:9092").unwrap(),
            Protocol::Kafka
        );
        assert_eq!(
            Protocol::of_url("http://127.0.0.1:15672").unwrap(),
            Protocol::Http
        );
        assert!(Protocol::of_url("gopher://x").is_err());
    }

    #[test]
    fn rates_over_duration_and_count_windows() {
        let w = Window {
            producers_start_ns: 0,
            start_ns: 1_000_000_000,
            end_ns: 3_000_000_000,
        };
        let mut a = WindowCount::default();
        a.add(100, 1_500_000_000);
        let mut b = WindowCount::default();
        b.add(300, 2_500_000_000);
        a.merge(&b);
        let r = a.rate(&w, 0, 1000);
        assert_eq!(r.messages, 400);
        assert_eq!(r.msgs_per_s, 200.0);
        assert_eq!(r.mb_per_s, 0.2);
        // Count-bounded: until the last event, from when that side started.
        let w = Window {
            end_ns: u64::MAX,
            ..w
        };
        let r = a.rate(&w, 2_000_000_000, 16);
        assert_eq!(r.seconds, 0.5);
        assert_eq!(r.msgs_per_s, 800.0);
    }

    #[test]
    fn scenario_validation() {
        let mut s = Scenario::amqp("amqp://x");
        s.validate().unwrap();
        s.size = 15;
        assert!(s.validate().is_err());
        s.size = 16;
        s.ack_every = 2000;
        assert!(s.validate().is_err());
        s.ack_every = 0;
        s.consume_after_publish = true;
        assert!(s.validate().is_err());
        s.count = Some(10);
        s.validate().unwrap();
    }
}
