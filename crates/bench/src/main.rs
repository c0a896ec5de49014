//! The `ferrymq-bench` binary: `run` one scenario against any broker, or `compare` FerryMQ
//! with RabbitMQ and write the results into `docs/benchmarks.md`.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use ferrymq_bench::compare::{self, CompareOptions, Matrix};
use ferrymq_bench::run::{Client, Ctx, MqttClient, Protocol, Scenario};
use ferrymq_bench::{report, run_scenario};

#[derive(Parser)]
#[command(
    name = "ferrymq-bench",
    version,
    about = "FerryMQ's load generator: the same client against any broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one scenario against a broker and report throughput, latency and accounting.
    Run(RunArgs),
    /// Start FerryMQ and RabbitMQ (AMQP) and Mosquitto (MQTT), run each protocol's matrix
    /// against FerryMQ and its peer, write docs/benchmarks.md.
    Compare(CompareArgs),
}

/// A duration: `10s`, `500ms`, `2m`, or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" | "min" => v * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m)")),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `--client native|lapin`.
fn parse_client(s: &str) -> Result<Client, String> {
    match s {
        "native" => Ok(Client::Native),
        "lapin" => Ok(Client::Lapin),
        _ => Err(format!("unknown client {s:?}: native or lapin")),
    }
}

/// `--mqtt-client native|rumqttc`.
fn parse_mqtt_client(s: &str) -> Result<MqttClient, String> {
    match s {
        "native" => Ok(MqttClient::Native),
        "rumqttc" => Ok(MqttClient::Rumqttc),
        _ => Err(format!("unknown MQTT client {s:?}: native or rumqttc")),
    }
}

fn parse_acks(s: &str) -> Result<i16, String> {
    match s {
        "0" => Ok(0),
        "1" => Ok(1),
        "all" | "-1" => Ok(-1),
        _ => Err(format!("unknown acks {s:?}: 0, 1 or all")),
    }
}

#[derive(Args)]
struct RunArgs {
    /// AMQP client: `native` (the bench's own, on ferrymq-amqp-codec) or `lapin`.
    #[arg(long, default_value = "native", value_parser = parse_client)]
    client: Client,
    /// MQTT client: `native` (the bench's own, on ferrymq-mqtt-codec) or `rumqttc`.
    #[arg(long, default_value = "native", value_parser = parse_mqtt_client)]
    mqtt_client: MqttClient,
    /// Broker URL; its scheme picks the driver: amqp://user:pass@host:port/vhost (AMQP 0-9-1),
    /// mqtt://[user:pass@]host:port (MQTT 3.1.1, --mqtt-client), http://user:pass@host:port[/vhost]
    /// (FerryMQ's HTTP API), kafka://[user:pass@]host:port (Kafka, librdkafka; a build with
    /// `--features kafka`).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    url: String,
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Consumers. MQTT: subscribers; consumer j subscribes to topic j % --topics and gets its
    /// own copy of every message there (one topic, N consumers = a 1 → N fan-out).
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// MQTT: QoS of publishes and subscriptions, 0 or 1 (1: confirm latency is PUBLISH → PUBACK).
    #[arg(long, default_value_t = 0)]
    qos: u8,
    /// HTTP: messages per publish request (1: raw body to …/messages; more: JSON …/publish/batch).
    #[arg(long, default_value_t = 1)]
    http_batch: usize,
    /// Kafka: partitions of each topic the run creates (producers spread their records over
    /// them round-robin; the consumers of a topic share them).
    #[arg(long, default_value_t = 1)]
    partitions: usize,
    /// Kafka: records a producer sends to one partition before the next: 1 = round-robin
    /// record by record; N = sticky runs of N records, as the Java producer's and
    /// librdkafka's sticky partitioners send records without a key.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    partition_run: u32,
    /// Kafka: the producers' acks: 0, 1 or all (0: nothing is confirmed).
    #[arg(long, default_value = "all", value_parser = parse_acks)]
    acks: i16,
    /// Kafka: the producers' linger.ms (default: librdkafka's, 5).
    #[arg(long)]
    linger_ms: Option<u32>,
    /// Kafka: the producers' batch.size in bytes (default: librdkafka's, 1000000).
    #[arg(long)]
    batch_bytes: Option<usize>,
    /// Kafka: the consumers' max.partition.fetch.bytes, the most one Fetch returns per
    /// partition (default: librdkafka's, 1048576); fetch.max.bytes is raised to match.
    #[arg(long)]
    fetch_bytes: Option<usize>,
    /// MQTT: instead of traffic, open N idle connections and report the broker's resident
    /// memory per connection (needs --broker-pid; raises the open-file limit as needed).
    #[arg(long)]
    idle_connections: Option<usize>,
    /// Payload bytes per message (at least 16: producer, sequence number, send time).
    #[arg(long, default_value_t = 16)]
    size: usize,
    /// Number of queues (MQTT: topics, `--topics`); producers and consumers are spread over
    /// them round-robin.
    #[arg(long, visible_alias = "topics", default_value_t = 1)]
    queues: usize,
    /// Measured duration (after the warm-up).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Publish exactly N messages in all instead of running for a duration.
    #[arg(long)]
    count: Option<u64>,
    /// Durable queues and persistent messages (AMQP delivery mode 2, HTTP `persistent`);
    /// MQTT: persistent sessions (clean session off), discarded after the run.
    #[arg(long)]
    persistent: bool,
    /// AMQP publisher confirms (MQTT: QoS 1 is confirmed; HTTP: every answer is a confirm).
    #[arg(long)]
    confirms: bool,
    /// Most unconfirmed messages per producer (MQTT: the client's in-flight window).
    #[arg(long, default_value_t = 1000)]
    confirm_window: usize,
    /// Consumer prefetch (basic.qos); 0 = unlimited. HTTP: messages per pull (1 to 1000).
    #[arg(long, default_value_t = 1000)]
    prefetch: u16,
    /// Ack every N deliveries (multiple); 0 = automatic acknowledgement. HTTP: 0 = `auto_ack`,
    /// else every pull is acked with one request.
    #[arg(long, default_value_t = 50)]
    ack_every: u32,
    /// Total publish rate in messages/s (latency from each message's intended send time); default: maximum.
    #[arg(long)]
    rate: Option<f64>,
    /// With --count: publish everything first (a backlog), then consume it.
    #[arg(long)]
    consume_after_publish: bool,
    /// End the drain after this long without a delivery.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain_idle: Duration,
    /// Queue name prefix (default: ferrymq-bench-<pid>); queues are <prefix>-<n>. MQTT: topics
    /// are <prefix>/<n>, client ids <prefix>-p<i> and <prefix>-c<j>.
    #[arg(long)]
    queue_prefix: Option<String>,
    /// Keep the queues after the run.
    #[arg(long)]
    keep_queues: bool,
    /// Broker pid: report its (and its children's) CPU time and peak resident memory.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Print the episodes in which end-to-end latency reached this many ms (when those
    /// messages were sent, on the run's clock and in UTC) on stderr.
    #[arg(long)]
    slow_log_ms: Option<u64>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// No progress line.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Args)]
struct CompareArgs {
    /// AMQP client for both brokers: `native` (the bench's own, on ferrymq-amqp-codec) or `lapin`.
    #[arg(long, default_value = "native", value_parser = parse_client)]
    client: Client,
    /// MQTT client for both brokers: `native` (the bench's own, on ferrymq-mqtt-codec) or `rumqttc`.
    #[arg(long, default_value = "native", value_parser = parse_mqtt_client)]
    mqtt_client: MqttClient,
    /// The small matrices (1 repeat, 1 s points, 1 → 10 fan-out, 1,000 idle connections): under 2 minutes.
    #[arg(long)]
    quick: bool,
    /// The FerryMQ binary; default: `ferrymq` beside this binary, built with `cargo build --release -p ferrymq` if missing.
    #[arg(long)]
    ferrymq_bin: Option<PathBuf>,
    /// The markdown file whose AMQP and MQTT sections are written (between their markers).
    #[arg(long, default_value = "docs/benchmarks.md")]
    out: PathBuf,
    /// Repeats of each point (default 3; 1 with --quick).
    #[arg(long)]
    repeats: Option<usize>,
    /// Measured seconds per point (default 4 s AMQP, 2 s MQTT, 3 s Kafka, after 1 s, 0.5 s and
    /// 0.5 s of warm-up; --quick: 1 s each): the default run takes under 15 minutes.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Also build a backlog of N persistent 1 KiB messages in FerryMQ and report its RSS (issue #4 asks 10,000,000).
    #[arg(long)]
    backlog: Option<u64>,
    /// Install RabbitMQ and Mosquitto with apt-get when missing (default: yes).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    install: bool,
    /// Also write every run's result as JSON here.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Only rewrite the section and chart from a report saved with --json-out (runs nothing).
    #[arg(long)]
    from_json: Option<PathBuf>,
    /// Matrices to run, comma-separated: amqp (vs RabbitMQ), mqtt (vs Mosquitto), kafka
    /// (FerryMQ at T1 and T2 beside loopback TCP and raw group commit; needs `--features kafka`).
    #[arg(long, default_value = "amqp,mqtt,kafka", value_parser = Matrix::parse_list)]
    protocols: std::vec::Vec<Matrix>,
    /// Idle MQTT connections opened per broker to measure memory per connection
    /// (default 10,000; 1,000 with --quick).
    #[arg(long)]
    idle_connections: Option<usize>,
}

fn scenario(a: &RunArgs) -> Scenario {
    let mut s = Scenario::new(&a.url);
    s.client = a.client;
    s.mqtt_client = a.mqtt_client;
    s.qos = a.qos;
    s.http_batch = a.http_batch;
    s.partitions = a.partitions;
    s.partition_run = a.partition_run as usize;
    s.acks = a.acks;
    s.linger_ms = a.linger_ms;
    s.batch_bytes = a.batch_bytes;
    s.fetch_bytes = a.fetch_bytes;
    s.producers = a.producers;
    s.consumers = a.consumers;
    s.size = a.size;
    s.queues = a.queues;
    s.duration = a.duration;
    s.warmup = if a.count.is_some() && a.warmup == Duration::from_secs(2) {
        Duration::ZERO
    } else {
        a.warmup
    };
    s.count = a.count;
    s.persistent = a.persistent;
    s.confirms = a.confirms;
    s.confirm_window = a.confirm_window;
    s.prefetch = a.prefetch;
    s.ack_every = a.ack_every;
    s.rate = a.rate;
    s.consume_after_publish = a.consume_after_publish;
    s.drain_idle = a.drain_idle;
    if let Some(p) = &a.queue_prefix {
        s.queue_prefix = p.clone();
    }
    s.keep_queues = a.keep_queues;
    s.broker_pid = a.broker_pid;
    s.slow_log_ms = a.slow_log_ms;
    s.progress = !a.no_progress && !a.json;
    s
}

async fn run(a: RunArgs) -> Result<()> {
    let s = scenario(&a);
    s.validate()?;
    if let Some(n) = a.idle_connections {
        let pid = a.broker_pid.context(
            "--idle-connections needs --broker-pid (the memory measured is the broker's)",
        )?;
        if Protocol::of_url(&a.url)? != Protocol::Mqtt {
            anyhow::bail!("--idle-connections is for mqtt:// URLs");
        }
        let r = ferrymq_bench::mqtt::idle(&a.url, n, pid).await?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            print!("{}", report::idle(&r));
        }
        return Ok(());
    }
    let ctx = Arc::new(Ctx::new());
    let c2 = ctx.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\ninterrupted: stopping producers, draining");
            c2.stop.store(true, Ordering::Relaxed);
        }
    });
    let r = run_scenario(s, ctx).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", report::human(&r));
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    match cli.command {
        Command::Run(a) => rt.block_on(run(a)),
        Command::Compare(a) => {
            let opts = CompareOptions {
                quick: a.quick,
                client: a.client,
                mqtt_client: a.mqtt_client,
                ferrymq_bin: a.ferrymq_bin,
                out: a.out,
                repeats: a.repeats,
                duration: a.duration,
                backlog: a.backlog,
                install: a.install,
                json_out: a.json_out,
                from_json: a.from_json,
                protocols: a.protocols,
                idle_connections: a.idle_connections,
            };
            rt.block_on(compare::compare(opts))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn clients() {
        assert_eq!(parse_client("native"), Ok(Client::Native));
        assert_eq!(parse_client("lapin"), Ok(Client::Lapin));
        assert!(parse_client("amqprs").is_err());
        let cli = Cli::try_parse_from(["ferrymq-bench", "run"]).unwrap();
        match cli.command {
            Command::Run(a) => assert_eq!(a.client, Client::Native),
            Command::Compare(_) => unreachable!(),
        }
    }

    #[test]
    fn mqtt_clients() {
        assert_eq!(parse_mqtt_client("native"), Ok(MqttClient::Native));
        assert_eq!(parse_mqtt_client("rumqttc"), Ok(MqttClient::Rumqttc));
        assert!(parse_mqtt_client("paho").is_err());
        let cli = Cli::try_parse_from(["ferrymq-bench", "compare"]).unwrap();
        match cli.command {
            Command::Compare(a) => assert_eq!(a.mqtt_client, MqttClient::Native),
            Command::Run(_) => unreachable!(),
        }
        let cli =
            Cli::try_parse_from(["ferrymq-bench", "run", "--mqtt-client", "rumqttc"]).unwrap();
        match cli.command {
            Command::Run(a) => assert_eq!(scenario(&a).mqtt_client, MqttClient::Rumqttc),
            Command::Compare(_) => unreachable!(),
        }
    }

    #[test]
    fn kafka_options() {
        assert_eq!(parse_acks("all"), Ok(-1));
        assert_eq!(parse_acks("0"), Ok(0));
        assert!(parse_acks("2").is_err());
        let cli = Cli::try_parse_from([
            "ferrymq-bench",
            "run",
            "--url",
            "kafka://127.0.0.1:9092",
            "--partitions",
            "8",
            "--acks",
            "1",
            "--linger-ms",
            "10",
            "--fetch-bytes",
            "4194304",
        ])
        .unwrap();
        match cli.command {
            Command::Run(a) => {
                let s = scenario(&a);
                assert_eq!((s.partitions, s.acks, s.linger_ms), (8, 1, Some(10)));
                assert_eq!(s.batch_bytes, None);
                assert_eq!(s.fetch_bytes, Some(4 << 20));
            }
            Command::Compare(_) => unreachable!(),
        }
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
