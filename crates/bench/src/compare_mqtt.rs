//! The MQTT part of `ferrymq-bench compare`: the same MQTT scenarios, with the same client
//! (the native one by default, `--mqtt-client rumqttc` for `rumqttc`), against FerryMQ and
//! Mosquitto, repeated and interleaved: first at the maximum rate, then the 1 → 1 points at a
//! fixed rate of half Mosquitto's maximum (latency at equal load); medians, ranges and ratios
//! written as the "MQTT: FerryMQ vs Mosquitto" section of `docs/benchmarks.md` (between its own
//! markers) plus an SVG chart; and the brokers' memory per idle connection.
//!
//! FerryMQ's MQTT listener may be missing (a build without it, or one that does not log
//! `MQTT listening on`): then Mosquitto is measured alone and the section says why FerryMQ's
//! side is empty.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::brokers::{Broker, Kind};
use crate::compare::{
    equal_load_table, fmt_ratio, fmt_stat, p99_verdict, ratio, stat, tail, target_line,
    EqualLoadRow, Stat,
};
use crate::mqtt::IdleResult;
use crate::report::{mib, micros, thousands};
use crate::run::{MqttClient, RunResult, Scenario};
use crate::svg::{self, Bar, Group};

pub const START_MARKER: &str = "<!-- bench:mqtt:start -->";
pub const END_MARKER: &str = "<!-- bench:mqtt:end -->";
/// The chart, written beside the markdown file.
pub const SVG_NAME: &str = "benchmarks-mqtt.svg";
/// Subscribers of the fan-out points (the 1 → 100; 10 with `--quick`).
pub const FANOUT: usize = 100;
pub const FANOUT_QUICK: usize = 10;
/// Idle connections measured per broker (the issue #6 target is stated per connection).
pub const IDLE: usize = 10_000;
pub const IDLE_QUICK: usize = 1_000;
/// Issue #6: a FerryMQ MQTT connection costs less than this much resident memory.
pub const IDLE_TARGET_BYTES: f64 = 20.0 * 1024.0;

/// One point of the matrix: 1 producer → `subscribers` on one topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Point {
    pub size: usize,
    pub qos: u8,
    pub subscribers: usize,
}

impl Point {
    pub fn label(&self) -> String {
        let size = if self.size >= 1024 {
            format!("{} KiB", self.size / 1024)
        } else {
            format!("{} B", self.size)
        };
        format!("1 → {}, {size}, QoS {}", self.subscribers, self.qos)
    }
}

/// The matrix: 1 → 1 and 1 → `fanout`, QoS 0 and 1, 16 B and 1 KiB.
pub fn points(fanout: usize) -> Vec<Point> {
    let mut v = Vec::new();
    for subscribers in [1, fanout] {
        for qos in [0, 1] {
            for size in [16, 1024] {
                v.push(Point {
                    size,
                    qos,
                    subscribers,
                });
            }
        }
    }
    v
}

/// The points also run at a fixed rate for latency at equal load: every one (1 → 1 and
/// fan-out).
pub fn fixed_rate_points(fanout: usize) -> Vec<Point> {
    points(fanout)
}

/// The fixed total publish rate for latency at equal load: half of Mosquitto's median
/// delivered rate at the maximum, per subscriber (copies/s ÷ subscribers), rounded.
pub fn half_rate(mosquitto_delivered: f64, subscribers: usize) -> Option<f64> {
    let r = (mosquitto_delivered / subscribers.max(1) as f64 / 2.0).round();
    (r.is_finite() && r >= 1.0).then_some(r)
}

/// One run of the matrix.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measured {
    pub point: Point,
    pub broker: String,
    /// `None` = maximum rate; else the fixed total rate (reports from before: maximum).
    #[serde(default)]
    pub rate: Option<f64>,
    pub repeat: usize,
    pub result: Option<RunResult>,
    pub error: Option<String>,
}

/// One broker's idle-connection measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Idle {
    pub broker: String,
    pub result: Option<IdleResult>,
    pub error: Option<String>,
}

/// Everything the MQTT section is written from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub generated: String,
    pub command: String,
    /// The client every run used (reports from before the choice existed: `rumqttc`).
    #[serde(default = "MqttClient::legacy")]
    pub client: MqttClient,
    pub machine: Vec<(String, String)>,
    pub versions: Vec<(String, String)>,
    pub repeats: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub fanout: usize,
    pub runs: Vec<Measured>,
    pub idle: Vec<Idle>,
    /// Why FerryMQ was not measured (no MQTT listener), if it was not.
    pub ferrymq_skipped: Option<String>,
    pub elapsed_s: f64,
    /// The whole `compare` run's wall time, all matrices (reports from before: unknown).
    #[serde(default)]
    pub total_s: Option<f64>,
}

impl Report {
    /// A statistic over the maximum-rate runs of a point and broker.
    fn stat(&self, p: Point, broker: Kind, f: impl Fn(&RunResult) -> f64) -> Option<Stat> {
        self.stat_at(p, broker, false, f)
    }

    /// A statistic over the maximum-rate (`fixed` false) or fixed-rate runs.
    fn stat_at(
        &self,
        p: Point,
        broker: Kind,
        fixed: bool,
        f: impl Fn(&RunResult) -> f64,
    ) -> Option<Stat> {
        let v: Vec<f64> = self
            .runs
            .iter()
            .filter(|m| m.point == p && m.broker == broker.name() && m.rate.is_some() == fixed)
            .filter_map(|m| m.result.as_ref().map(&f))
            .collect();
        stat(&v)
    }

    /// The fixed rate a point ran at.
    fn rate_of(&self, p: Point) -> Option<f64> {
        self.runs
            .iter()
            .find(|m| m.point == p && m.rate.is_some())
            .and_then(|m| m.rate)
    }
}

fn scenario(
    client: MqttClient,
    url: &str,
    pid: u32,
    p: Point,
    duration: Duration,
    warmup: Duration,
) -> Scenario {
    let mut s = Scenario::new(url);
    s.mqtt_client = client;
    s.size = p.size;
    s.qos = p.qos;
    s.consumers = p.subscribers;
    s.duration = duration;
    s.warmup = warmup;
    s.broker_pid = Some(pid);
    // A broker that dropped copies (Mosquitto beyond `max_queued_messages`) must not hold
    // every point for the default 5 s: on loopback, a second without a delivery means the
    // rest is gone.
    s.drain_idle = Duration::from_secs(1);
    s
}

/// `v`, or NaN (shown as `–`) when the summary has no samples (no message was stamped inside
/// the window: a publisher held back by the broker for the whole window).
fn sampled(l: &crate::latency::Summary, v: f64) -> f64 {
    if l.count == 0 {
        f64::NAN
    } else {
        v
    }
}

/// Starts FerryMQ with its MQTT listener on a free port; `Err(reason)` when it has none.
fn ferrymq_with_mqtt(bin: &Path, data_root: &Path) -> Result<Broker, String> {
    match Broker::ferrymq(bin, data_root, &["mqtt.enabled=true", "mqtt.port=0"]) {
        Ok(b) if b.mqtt_url.is_some() => Ok(b),
        Ok(_) => Err(
            "FerryMQ started but logged no `MQTT listening on <addr>`: it has no MQTT listener yet"
                .into(),
        ),
        Err(e) => {
            let e = format!("{e:#}");
            if e.contains("mqtt") && e.contains("unknown key") {
                Err("this FerryMQ build has no MQTT listener: its configuration has no `mqtt` section (`--set mqtt.port=0` is an unknown key)".into())
            } else {
                let first = e.lines().next().unwrap_or_default();
                Err(format!(
                    "FerryMQ did not start with `--set mqtt.port=0`: {first}"
                ))
            }
        }
    }
}

/// Runs the MQTT matrix and the idle-connection measurement; `brokers` holds what was started
/// so that the caller stops it whatever happens.
///
/// # Errors
/// Mosquitto cannot start (FerryMQ without an MQTT listener is not an error).
pub async fn matrix(
    bin: &Path,
    data_root: &Path,
    install: bool,
    idle_n: usize,
    brokers: &Mutex<Vec<Broker>>,
    report: &mut Report,
) -> Result<()> {
    // Brokers inherit this limit: raise it before they start.
    crate::mqtt::raise_nofile(idle_n as u64 + 1024);
    report.machine = crate::compare::machine(data_root);
    eprintln!("MQTT: starting FerryMQ ({}) and Mosquitto…", bin.display());
    let f = tokio::task::spawn_blocking({
        let (bin, root) = (bin.to_path_buf(), data_root.to_path_buf());
        move || ferrymq_with_mqtt(&bin, &root)
    })
    .await?;
    match f {
        Ok(f) => {
            report.versions.push((
                "FerryMQ".into(),
                format!(
                    "{} (release build `{}`, MQTT listener on a free port, defaults otherwise)",
                    f.version,
                    bin.display()
                ),
            ));
            brokers.lock().unwrap_or_else(|e| e.into_inner()).push(f);
        }
        Err(why) => {
            eprintln!("MQTT: FerryMQ skipped: {why}");
            report.ferrymq_skipped = Some(why);
        }
    }
    let m = Broker::mosquitto(data_root, install).await?;
    report.versions.push((
        "Mosquitto".into(),
        format!(
            "{}, configuration: `listener <port> 127.0.0.1`, `allow_anonymous true`, `persistence false` (the default), other limits stock (`max_inflight_messages 20`, `max_queued_messages 1000` per client)",
            m.version
        ),
    ));
    brokers.lock().unwrap_or_else(|e| e.into_inner()).push(m);
    let targets: Vec<(Kind, String, u32)> = brokers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(|b| b.mqtt_url.clone().map(|u| (b.kind, u, b.pid)))
        .collect();

    // Idle connections first, on fresh brokers: memory freed by the matrix would hide
    // what new connections cost.
    for (kind, url, pid) in targets.clone() {
        eprintln!(
            "MQTT: {} idle connections to {}…",
            thousands(idle_n as f64),
            kind.name()
        );
        let (result, error) = match crate::mqtt::idle(&url, idle_n, pid).await {
            Ok(r) => {
                eprint!("  {}", crate::report::idle(&r));
                (Some(r), None)
            }
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        report.idle.push(Idle {
            broker: kind.name().to_string(),
            result,
            error,
        });
    }
    let duration = Duration::from_secs_f64(report.duration_s);
    let warmup = Duration::from_secs_f64(report.warmup_s);
    let pts = points(report.fanout);
    let fixed = fixed_rate_points(report.fanout);
    let total = (pts.len() + fixed.len()) * targets.len() * report.repeats;
    let mut done = 0;
    // Phase 0: every point at the maximum rate; phase 1: the fixed-rate points at half of
    // Mosquitto's median maximum, for latency at equal load.
    for phase in 0..2 {
        for repeat in 0..report.repeats {
            for p in if phase == 0 { &pts } else { &fixed } {
                let rate = if phase == 0 {
                    None
                } else {
                    match report
                        .stat(*p, Kind::Mosquitto, |x| x.consume.msgs_per_s)
                        .and_then(|s| half_rate(s.median, p.subscribers))
                    {
                        Some(r) => Some(r),
                        None => continue,
                    }
                };
                let mut order = targets.clone();
                if (repeat + phase) % 2 == 1 {
                    order.reverse();
                }
                for (kind, url, pid) in order {
                    done += 1;
                    let mut s = scenario(report.client, &url, pid, *p, duration, warmup);
                    s.rate = rate;
                    let (result, error) = crate::compare::run_one(s).await;
                    let at = rate.map_or(String::new(), |r| format!(" at {} msg/s", thousands(r)));
                    match (&result, &error) {
                        (Some(r), _) => eprintln!(
                            "[{done:>3}/{total}] {:<9} {:<24}{at} {:>10} msg/s published, {:>10} copies/s delivered, e2e p99 {}, lost {} dup {} reorder {} unconfirmed+missing {}",
                            kind.name(),
                            p.label(),
                            thousands(r.publish.msgs_per_s),
                            thousands(r.consume.msgs_per_s),
                            if r.end_to_end.count == 0 {
                                "–".to_string()
                            } else {
                                micros(r.end_to_end.p99_us)
                            },
                            r.tally.lost,
                            r.tally.duplicated,
                            r.tally.out_of_order,
                            r.tally.unconfirmed_not_received
                        ),
                        (_, Some(e)) => eprintln!(
                            "[{done:>3}/{total}] {} {}{at}: FAILED: {e}",
                            kind.name(),
                            p.label()
                        ),
                        _ => {}
                    }
                    report.runs.push(Measured {
                        point: *p,
                        broker: kind.name().to_string(),
                        rate,
                        repeat,
                        result,
                        error,
                    });
                }
            }
        }
    }
    Ok(())
}

/// How the client is described in the Method text.
fn client_description(c: MqttClient) -> &'static str {
    match c {
        MqttClient::Native => "`--mqtt-client native`, the bench's own MQTT 3.1.1 driver on the project's codec `ferrymq-mqtt-codec` over a tokio `TcpStream`: the publisher encodes up to 256 due publishes into one buffer and writes it with one `write_all`, a reader task settles PUBACKs; a subscriber decodes every packet a read returned and writes the PUBACKs of that read together; keep-alive 0, TCP_NODELAY",
        MqttClient::Rumqttc => "`--mqtt-client rumqttc`, the `rumqttc` 0.25 crate, MQTT 3.1.1, keep-alive 30 s, TCP_NODELAY; it costs more CPU per message than the native driver and was the bottleneck of the 1 → 1 QoS 0 points",
    }
}

/// The markdown section.
pub fn markdown(r: &Report) -> String {
    let (f, q) = (Kind::FerryMq, Kind::Mosquitto);
    let pts = points(r.fanout);
    let mut o = String::new();
    let _ = writeln!(o, "## MQTT: FerryMQ vs Mosquitto\n");
    let _ = writeln!(
        o,
        "Generated by `{}` (crate `ferrymq-bench`, {}), {} repeat(s) per point, {} s measured after {} s of warm-up; the MQTT part took {:.0} s{}. Do not edit by hand: rerun the command.\n",
        r.command,
        r.generated,
        r.repeats,
        r.duration_s,
        r.warmup_s,
        r.elapsed_s,
        crate::compare::total_note(r.total_s)
    );
    if let Some(why) = &r.ferrymq_skipped {
        let _ = writeln!(
            o,
            "> **FerryMQ was not measured: {why}.** Only Mosquitto was measured; FerryMQ's columns say `not measured`. Rerun the command once FerryMQ has its MQTT listener.\n"
        );
    }
    let _ = writeln!(o, "**Machine** (shared with other engineers' compiles and tests while it ran: noisy; read the ratios, which come from runs interleaved point by point):\n");
    for (k, v) in &r.machine {
        let _ = writeln!(o, "- {k}: {v}");
    }
    for (k, v) in &r.versions {
        let _ = writeln!(o, "- {k}: {v}");
    }
    let _ = writeln!(
        o,
        "\n**Method.** One load generator process on the same 2 cores as the broker, the same client for both brokers ({}; one connection per publisher and per subscriber): 1 publisher on one topic, and 1 subscriber (1 → 1) or {} subscribers (1 → {}, fan-out: every subscriber is due its own copy of every message, and *delivered* counts copies). \
QoS 0: publishes are fire-and-forget, subscriptions QoS 0. QoS 1: subscriptions QoS 1 (the client acks every delivery), publishes QoS 1 with at most 1,000 awaiting their PUBACK; the confirm latency runs from the stamp to the PUBACK. \
Clean sessions throughout, so nothing is durable on either side (tier **T0**): Mosquitto runs with `persistence false` (its default: QoS 1 messages are kept in memory), and FerryMQ maps a clean session's subscription onto a transient queue bound to `amq.topic`; FerryMQ's T2 path (persistent sessions, durable session queues, `--persistent` in `ferrymq-bench run`) is not in this matrix. \
Every payload carries publisher id, sequence number and send time; *lost* = confirmed (QoS 1 PUBACK) and never received by a subscriber, *unconfirmed + missing* = QoS 0 copies that never arrived (MQTT allows dropping them; Mosquitto drops messages beyond `max_queued_messages` for a slow subscriber). The first tables run every point at the maximum rate, so their latencies include queueing; a publisher that the broker holds back (TCP backpressure) for the whole window publishes nothing in it, and its latency is `–`. Broker CPU is the process tree's user + system time over the window (100% = one core); RSS the peak resident set, sampled every 250 ms. \
The *latency at equal load* table then runs every point on both brokers at the same fixed rate, half of Mosquitto's median delivered rate at that point's maximum (rounded), with latency measured from each message's intended send time (no coordinated omission).\n",
        client_description(r.client),
        r.fanout,
        r.fanout
    );

    let _ = writeln!(o, "### Throughput at maximum rate (median and range)\n");
    let _ = writeln!(
        o,
        "Published messages/s, and copies/s delivered to all subscribers together.\n"
    );
    let _ = writeln!(o, "| scenario | tier (both) | FerryMQ published | Mosquitto published | FerryMQ delivered | Mosquitto delivered | delivered FerryMQ / Mosquitto |");
    let _ = writeln!(o, "|---|---|---|---|---|---|---|");
    let skipped = r.ferrymq_skipped.is_some();
    let fs = |st: Option<Stat>, g: fn(f64) -> String| {
        if skipped {
            "not measured".to_string()
        } else {
            fmt_stat(st, g)
        }
    };
    for p in &pts {
        let pa = r.stat(*p, f, |x| x.publish.msgs_per_s);
        let pb = r.stat(*p, q, |x| x.publish.msgs_per_s);
        let a = r.stat(*p, f, |x| x.consume.msgs_per_s);
        let b = r.stat(*p, q, |x| x.consume.msgs_per_s);
        let _ = writeln!(
            o,
            "| {} | T0 | {} | {} | {} | {} | {} |",
            p.label(),
            fs(pa, thousands),
            fmt_stat(pb, thousands),
            fs(a, thousands),
            fmt_stat(b, thousands),
            fmt_ratio(ratio(a, b)),
        );
    }
    let _ = writeln!(
        o,
        "\n![MQTT throughput, FerryMQ and Mosquitto]({SVG_NAME})\n"
    );

    let _ = writeln!(o, "Same runs, medians: latency, broker CPU, load generator CPU, the broker's peak RSS, and the accounting.\n");
    let _ = writeln!(o, "| scenario | broker | e2e p50 | e2e p99 | PUBACK p99 | broker CPU | load generator CPU | peak RSS | lost | unconfirmed + missing | dup | reorder |");
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    let kinds: &[Kind] = if skipped { &[q] } else { &[f, q] };
    for p in &pts {
        for &k in kinds {
            let med = |g: fn(&RunResult) -> f64| r.stat(*p, k, g).map(|s| s.median);
            let sum = |g: fn(&crate::accounting::Tally) -> u64| {
                r.runs
                    .iter()
                    .filter(|m| m.point == *p && m.broker == k.name())
                    .filter_map(|m| m.result.as_ref())
                    .map(|x| g(&x.tally))
                    .sum::<u64>()
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                p.label(),
                k.name(),
                med(|x| sampled(&x.end_to_end, x.end_to_end.p50_us)).map_or("–".into(), micros),
                med(|x| sampled(&x.end_to_end, x.end_to_end.p99_us)).map_or("–".into(), micros),
                if p.qos == 1 {
                    med(|x| sampled(&x.confirm, x.confirm.p99_us)).map_or("–".into(), micros)
                } else {
                    "–".into()
                },
                med(|x| x.broker.as_ref().map_or(f64::NAN, |b| b.cpu_percent))
                    .map_or("–".into(), |v| format!("{v:.0}%")),
                med(|x| x.client_cpu_percent.unwrap_or(f64::NAN))
                    .map_or("–".into(), |v| format!("{v:.0}%")),
                med(|x| x
                    .broker
                    .as_ref()
                    .map_or(f64::NAN, |b| b.peak_rss_bytes as f64))
                .map_or("–".into(), |v| mib(v as u64)),
                sum(|t| t.lost),
                thousands(sum(|t| t.unconfirmed_not_received) as f64),
                sum(|t| t.duplicated),
                sum(|t| t.out_of_order),
            );
        }
    }
    let _ = writeln!(o);
    for m in r.runs.iter().filter(|m| m.error.is_some()) {
        let _ = writeln!(
            o,
            "- failed: {} {} (repeat {}): {}",
            m.broker,
            m.point.label(),
            m.repeat + 1,
            m.error.as_deref().unwrap_or_default().replace('\n', " ")
        );
    }

    let _ = writeln!(
        o,
        "\n### End-to-end latency at equal load: half of Mosquitto's maximum rate\n"
    );
    let fixed = fixed_rate_points(r.fanout);
    let rows: Vec<EqualLoadRow> = fixed
        .iter()
        .map(|&p| EqualLoadRow {
            label: p.label(),
            rate: r.rate_of(p),
            a: tail(|g| r.stat_at(p, f, true, g)),
            b: tail(|g| r.stat_at(p, q, true, g)),
        })
        .collect();
    equal_load_table(&mut o, "FerryMQ", "Mosquitto", &rows);

    let _ = writeln!(o, "\n### Issue #6's targets\n");
    for p in &pts {
        let rt = ratio(
            r.stat(*p, f, |x| x.consume.msgs_per_s),
            r.stat(*p, q, |x| x.consume.msgs_per_s),
        );
        target_line(
            &mut o,
            &format!("≥ 2× Mosquitto's delivered throughput, {}", p.label()),
            rt.map(|x| x >= 2.0),
            &rt.map_or("no data".into(), |x| format!("{x:.2}×")),
        );
    }
    for p in &fixed {
        let (met, why) = p99_verdict(
            r.stat_at(*p, f, true, |x| x.end_to_end.p99_us),
            r.stat_at(*p, q, true, |x| x.end_to_end.p99_us),
        );
        let rate = r
            .rate_of(*p)
            .map_or(String::new(), |v| format!(" at {} msg/s", thousands(v)));
        target_line(
            &mut o,
            &format!("p99 FerryMQ ≤ Mosquitto at equal load{rate}, {}", p.label()),
            met,
            &why,
        );
    }

    let _ = writeln!(o, "\n### Idle connections\n");
    let _ = writeln!(o, "N MQTT connections opened (CONNECT with clean session and keep-alive 0, 64 at a time) and held idle; the broker's resident memory (process tree) before, and 2 s after the last CONNACK. The delta over N is what one idle connection costs, buffers included (socket buffers in the kernel are not in RSS).\n");
    let _ = writeln!(
        o,
        "| broker | connections open | RSS before | RSS with them open | per connection |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|");
    for i in &r.idle {
        match (&i.result, &i.error) {
            (Some(x), _) => {
                let _ = writeln!(
                    o,
                    "| {} | {} of {}{} | {} | {} | **{:.1} KiB** |",
                    i.broker,
                    thousands(x.connected as f64),
                    thousands(x.connections as f64),
                    x.error
                        .as_ref()
                        .map_or(String::new(), |e| format!(" (first failure: {e})")),
                    mib(x.rss_before_bytes),
                    mib(x.rss_after_bytes),
                    x.bytes_per_connection / 1024.0
                );
            }
            (_, e) => {
                let _ = writeln!(
                    o,
                    "| {} | failed: {} | – | – | – |",
                    i.broker,
                    e.as_deref().unwrap_or_default()
                );
            }
        }
    }
    let ferry = r
        .idle
        .iter()
        .find(|i| i.broker == f.name())
        .and_then(|i| i.result.as_ref());
    let _ = writeln!(
        o,
        "\n- Issue #6's target, an idle FerryMQ MQTT connection under 20 KiB of resident memory: {}",
        match ferry {
            Some(x) if x.connected > 0 => format!(
                "{} ({:.1} KiB over {} connections)",
                if x.bytes_per_connection < IDLE_TARGET_BYTES {
                    "**met**"
                } else {
                    "**missed**"
                },
                x.bytes_per_connection / 1024.0,
                thousands(x.connected as f64)
            ),
            _ => "not measured".into(),
        }
    );
    o
}

/// The chart: delivered copies/s per point, FerryMQ beside Mosquitto.
pub fn chart(r: &Report) -> String {
    let groups: Vec<Group> = points(r.fanout)
        .iter()
        .map(|p| Group {
            label: p.label(),
            bars: [Kind::FerryMq, Kind::Mosquitto]
                .iter()
                .map(|k| {
                    r.stat(*p, *k, |x| x.consume.msgs_per_s).map(|s| Bar {
                        median: s.median,
                        min: s.min,
                        max: s.max,
                    })
                })
                .collect(),
        })
        .collect();
    svg::bar_chart(
        &format!(
            "MQTT 3.1.1, 1 publisher → N subscribers ({} client)",
            r.client.name()
        ),
        "delivered copies/s",
        &["FerryMQ", "Mosquitto"],
        &groups,
    )
}

/// Writes the section into `out` and the chart beside it.
///
/// # Errors
/// Reading or writing the files; markers out of order.
pub fn write_outputs(r: &Report, out: &Path) -> Result<()> {
    let old = std::fs::read_to_string(out).unwrap_or_default();
    let new = crate::compare::replace_between(&old, &markdown(r), START_MARKER, END_MARKER)?;
    std::fs::write(out, new).with_context(|| format!("writing {}", out.display()))?;
    let svg_path = out.with_file_name(SVG_NAME);
    std::fs::write(&svg_path, chart(r))
        .with_context(|| format!("writing {}", svg_path.display()))?;
    eprintln!(
        "wrote the MQTT section of {} and {}",
        out.display(),
        svg_path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty(skipped: Option<&str>) -> Report {
        Report {
            generated: "now".into(),
            command: "ferrymq-bench compare --quick --protocols mqtt".into(),
            client: MqttClient::Native,
            machine: vec![("nproc".into(), "2".into())],
            versions: vec![],
            repeats: 1,
            duration_s: 2.0,
            warmup_s: 1.0,
            fanout: FANOUT_QUICK,
            runs: vec![],
            idle: vec![],
            ferrymq_skipped: skipped.map(Into::into),
            elapsed_s: 1.0,
            total_s: Some(2.0),
        }
    }

    #[test]
    fn the_matrix_covers_fan_out_qos_and_size() {
        let p = points(100);
        assert_eq!(p.len(), 8);
        assert!(p
            .iter()
            .any(|p| p.subscribers == 100 && p.qos == 1 && p.size == 1024));
        assert!(p
            .iter()
            .any(|p| p.subscribers == 1 && p.qos == 0 && p.size == 16));
        assert_eq!(p[0].label(), "1 → 1, 16 B, QoS 0");
    }

    #[test]
    fn a_missing_ferrymq_listener_is_said_not_hidden() {
        let md = markdown(&empty(Some("FerryMQ logged no `MQTT listening on`")));
        assert!(md.starts_with("## MQTT: FerryMQ vs Mosquitto"));
        assert!(
            md.contains("FerryMQ was not measured: FerryMQ logged no"),
            "{md}"
        );
        assert!(md.contains("target, an idle FerryMQ MQTT connection under 20 KiB"));
        assert!(md.contains("not measured"));
        assert!(chart(&empty(None)).contains("not measured"));
        assert!(!markdown(&empty(None)).contains("was not measured:"));
    }

    #[test]
    fn its_section_leaves_the_amqp_section_alone() {
        let doc = format!(
            "# B\n\n{}\n## AMQP\n{}\n",
            crate::compare::START_MARKER,
            crate::compare::END_MARKER
        );
        let once =
            crate::compare::replace_between(&doc, "## MQTT v1", START_MARKER, END_MARKER).unwrap();
        let twice =
            crate::compare::replace_between(&once, "## MQTT v2", START_MARKER, END_MARKER).unwrap();
        assert!(twice.contains("## AMQP") && twice.contains("## MQTT v2"));
        assert!(!twice.contains("v1"));
        assert_eq!(twice.matches(START_MARKER).count(), 1);
    }
}
