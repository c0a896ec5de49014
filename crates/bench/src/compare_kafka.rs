//! The Kafka part of `ferrymq-bench compare`: FerryMQ alone (there is no Kafka broker on this
//! machine to compare with), at T1 and at T2, beside the machine's limits measured in the same
//! run ([`crate::limits`]): one loopback TCP stream, and the disk's raw group-commit bandwidth
//! for the bytes each T2 run put in one `fdatasync` (FerryMQ's own fsync count, from its
//! `/metrics`, over the run). Written as the "Kafka" section of `docs/benchmarks.md` between
//! its own markers.
//!
//! Two FerryMQ processes run for the whole matrix, one at `storage.durability=t1` and one at
//! `t2`, and the points alternate between them (the order reversed every other repeat), so the
//! machine's noise lands on both tiers alike.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::brokers::Broker;
use crate::compare::{fmt_stat, stat, Stat};
use crate::limits::{self, Bandwidth};
use crate::report::{micros, thousands};
use crate::run::{Ctx, RunResult, Scenario};

pub const START_MARKER: &str = "<!-- bench:kafka:start -->";
pub const END_MARKER: &str = "<!-- bench:kafka:end -->";
/// Record size of every point (issue #7: 1 KiB records).
pub const SIZE: usize = 1024;
/// Producer batching of every point: librdkafka's `linger.ms` and `batch.size`.
pub const LINGER_MS: u32 = 5;
pub const BATCH_BYTES: usize = 1_000_000;
/// Records the producer sends to one partition before moving on to the next: one
/// `batch.size` of them, as Kafka's Java producer partitions records without a key since 3.3
/// (the uniform sticky partitioner, KIP-794: a new partition once `batch.size` bytes went to
/// the current one; librdkafka's sticky partitioner does the same by time,
/// `sticky.partitioning.linger.ms`). Record-by-record round-robin, the Java client's default
/// before 2.4, measured librdkafka's own CPU per record 1.5x higher over 8 partitions, and this
/// load generator shares the broker's 2 cores (docs/benchmarks.md, session 11).
pub const PARTITION_RUN: usize = BATCH_BYTES / SIZE;
/// Consumer fetch size of every point: librdkafka's `max.partition.fetch.bytes`. Its default
/// (1 MiB) with one Fetch in flight per broker connection holds a single partition's consumer
/// to 1 MiB per round trip; a Kafka user tuning for throughput raises it, as the producer's
/// `batch.size` is raised above.
pub const FETCH_BYTES: usize = 8 << 20;
/// Issue #7: at T1, at least this many MB/s produced and consumed concurrently.
pub const T1_TARGET_MB_S: f64 = 500.0;
/// Issue #7: at T2, at least this share of the raw group-commit bandwidth.
pub const T2_TARGET_RATIO: f64 = 0.70;
/// How long each limit is measured.
const LIMIT_SECONDS: f64 = 2.0;

/// FerryMQ's durability tier for a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    T1,
    T2,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::T1 => "T1",
            Tier::T2 => "T2",
        }
    }
}

/// One point: 1 producer on one topic of `partitions` partitions, and 1 consumer reading them
/// all concurrently (or none: produce only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Point {
    pub partitions: usize,
    pub consume: bool,
    pub tier: Tier,
}

impl Point {
    pub fn label(&self) -> String {
        format!(
            "{}, {} partition{}",
            if self.consume {
                "produce + consume"
            } else {
                "produce only"
            },
            self.partitions,
            if self.partitions == 1 { "" } else { "s" }
        )
    }
}

/// The matrix: 1 and 8 partitions, produce only and produce + consume, T1 and T2 (tiers
/// innermost, so that they alternate). `--quick`: produce + consume only.
pub fn points(quick: bool) -> Vec<Point> {
    let mut v = Vec::new();
    for consume in [false, true] {
        if quick && !consume {
            continue;
        }
        for partitions in [1, 8] {
            for tier in [Tier::T1, Tier::T2] {
                v.push(Point {
                    partitions,
                    consume,
                    tier,
                });
            }
        }
    }
    v
}

/// One run of one point.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measured {
    pub point: Point,
    pub repeat: usize,
    pub result: Option<RunResult>,
    pub error: Option<String>,
    /// 1-minute load average when the run started (`/proc/loadavg`).
    pub load1: Option<f64>,
    /// FerryMQ's fsyncs during the run (its `ferrymq_fsync_duration_seconds_count`).
    pub fsyncs: Option<u64>,
    /// T2: payload bytes produced per fsync over the run.
    pub bytes_per_fsync: Option<f64>,
    /// T2: the raw group-commit bandwidth for rounds of `bytes_per_fsync`, measured right after.
    pub fair_raw: Option<Bandwidth>,
    /// T2: the same with direct writes (`O_DIRECT`), as the broker writes T2 batches where the
    /// file system allows; measured right after `fair_raw`.
    #[serde(default)]
    pub fair_raw_direct: Option<Bandwidth>,
}

impl Measured {
    /// Produced MB/s over the fair raw bandwidth (T2 runs).
    pub fn raw_ratio(&self) -> Option<f64> {
        let r = self.result.as_ref()?;
        let raw = self.fair_raw?;
        (raw.mb_per_s > 0.0).then(|| r.publish.mb_per_s / raw.mb_per_s)
    }

    /// Produced MB/s over the fair raw bandwidth with direct writes (T2 runs).
    pub fn raw_direct_ratio(&self) -> Option<f64> {
        let r = self.result.as_ref()?;
        let raw = self.fair_raw_direct?;
        (raw.mb_per_s > 0.0).then(|| r.publish.mb_per_s / raw.mb_per_s)
    }
}

/// Everything the section is written from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub generated: String,
    pub command: String,
    pub machine: Vec<(String, String)>,
    pub versions: Vec<(String, String)>,
    pub repeats: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub quick: bool,
    pub runs: Vec<Measured>,
    /// One loopback TCP stream, once per repeat.
    pub tcp: Vec<Bandwidth>,
    /// Raw group commit in rounds of `BATCH_BYTES`, once per repeat (for reference).
    pub raw_batch: Vec<Bandwidth>,
    /// Page-cache writes of `BATCH_BYTES` with no fsync, once per repeat (the T1 limit).
    #[serde(default)]
    pub page_cache: Vec<Bandwidth>,
    /// Why nothing was measured, if nothing was.
    pub skipped: Option<String>,
    pub elapsed_s: f64,
    /// The whole `compare` run's wall time, all matrices (reports from before: unknown).
    #[serde(default)]
    pub total_s: Option<f64>,
}

impl Report {
    fn values(&self, p: Point, f: impl Fn(&Measured) -> Option<f64>) -> Vec<f64> {
        self.runs
            .iter()
            .filter(|m| m.point == p)
            .filter_map(f)
            .collect()
    }

    fn stat_of(&self, p: Point, f: impl Fn(&RunResult) -> f64) -> Option<Stat> {
        stat(&self.values(p, |m| m.result.as_ref().map(&f)))
    }
}

/// The scenario of a point.
pub fn scenario(url: &str, pid: u32, p: Point, duration: Duration, warmup: Duration) -> Scenario {
    let mut s = Scenario::new(url);
    s.size = SIZE;
    s.producers = 1;
    s.consumers = usize::from(p.consume);
    s.partitions = p.partitions;
    s.partition_run = PARTITION_RUN;
    s.acks = -1;
    s.linger_ms = Some(LINGER_MS);
    s.batch_bytes = Some(BATCH_BYTES);
    s.fetch_bytes = Some(FETCH_BYTES);
    s.duration = duration;
    s.warmup = warmup;
    s.broker_pid = Some(pid);
    s.drain_idle = Duration::from_secs(3);
    s
}

/// The 1-minute load average.
pub fn load1() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A Prometheus text exposition's value of the sample named exactly `name` (no labels).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// FerryMQ's fsync count so far, from `http://<addr>/metrics`.
fn fsyncs(http_url: &str) -> Option<u64> {
    let addr = http_url.rsplit_once('@').map_or(http_url, |(_, a)| a);
    let addr = addr.trim_start_matches("http://");
    let mut r = ureq::get(format!("http://{addr}/metrics")).call().ok()?;
    let text = r.body_mut().read_to_string().ok()?;
    metric(&text, "ferrymq_fsync_duration_seconds_count").map(|v| v as u64)
}

fn start(bin: &Path, data_root: &Path, tier: Tier) -> Result<Broker> {
    let durability = match tier {
        Tier::T1 => "storage.durability=t1",
        Tier::T2 => "storage.durability=t2",
    };
    let b = Broker::ferrymq(
        bin,
        data_root,
        &[
            "kafka.enabled=true",
            "kafka.port=0",
            "http.enabled=true",
            "http.port=0",
            durability,
        ],
    )?;
    anyhow::ensure!(
        b.kafka_url.is_some(),
        "FerryMQ started but logged no `Kafka listening on <addr>`"
    );
    Ok(b)
}

/// Runs the Kafka matrix; `brokers` holds what was started so that the caller stops it
/// whatever happens.
///
/// # Errors
/// FerryMQ cannot start with its Kafka listener.
pub async fn matrix(
    bin: &Path,
    data_root: &Path,
    brokers: &Mutex<Vec<Broker>>,
    report: &mut Report,
) -> Result<()> {
    report.machine = crate::compare::machine(data_root);
    if !crate::HAS_KAFKA {
        eprintln!("Kafka: skipped: {}", crate::KAFKA_MISSING);
        report.skipped = Some(crate::KAFKA_MISSING.into());
        return Ok(());
    }
    eprintln!(
        "Kafka: starting FerryMQ at T1 and at T2 ({})…",
        bin.display()
    );
    let mut targets = Vec::new();
    for tier in [Tier::T1, Tier::T2] {
        let b = tokio::task::spawn_blocking({
            let (bin, root) = (bin.to_path_buf(), data_root.to_path_buf());
            move || start(&bin, &root, tier)
        })
        .await?
        .with_context(|| format!("starting FerryMQ at {}", tier.name()))?;
        if tier == Tier::T1 {
            report.versions.push((
                "FerryMQ".into(),
                format!(
                    "{} (release build `{}`; two processes, `--set storage.durability=t1` and `=t2`, Kafka and HTTP listeners on free ports, defaults otherwise)",
                    b.version,
                    bin.display()
                ),
            ));
        }
        targets.push((
            tier,
            b.kafka_url.clone().unwrap_or_default(),
            b.http_url.clone(),
            b.pid,
        ));
        brokers.lock().unwrap_or_else(|e| e.into_inner()).push(b);
    }
    report.versions.push((
        "client".into(),
        format!(
            "librdkafka {} (Debian's `librdkafka1`, through the `rdkafka` crate, linked dynamically)",
            librdkafka_version()
        ),
    ));
    let duration = Duration::from_secs_f64(report.duration_s);
    let warmup = Duration::from_secs_f64(report.warmup_s);
    let limit = Duration::from_secs_f64(if report.quick { 1.0 } else { LIMIT_SECONDS });
    let pts = points(report.quick);
    let total = pts.len() * report.repeats;
    let mut done = 0;
    for repeat in 0..report.repeats {
        // The limits, once per repeat, between the points.
        let root = data_root.to_path_buf();
        let (tcp, raw, cache) = tokio::task::spawn_blocking(move || {
            (
                limits::loopback_tcp(limit),
                limits::raw_group_commit(&root, BATCH_BYTES, limit),
                limits::page_cache_write(&root, BATCH_BYTES, limit),
            )
        })
        .await?;
        let (tcp, raw, cache) = (tcp?, raw?, cache?);
        eprintln!(
            "Kafka: limits: loopback TCP {:.0} MB/s, raw group commit of {} B rounds {:.0} MB/s ({} fsyncs), page-cache write {:.0} MB/s",
            tcp.mb_per_s, BATCH_BYTES, raw.mb_per_s, raw.ops, cache.mb_per_s
        );
        report.tcp.push(tcp);
        report.raw_batch.push(raw);
        report.page_cache.push(cache);
        let mut order = pts.clone();
        if repeat % 2 == 1 {
            order.reverse();
        }
        for p in order {
            done += 1;
            let Some((_, url, http, pid)) = targets.iter().find(|t| t.0 == p.tier).cloned() else {
                continue;
            };
            let load = load1();
            let f0 = http.as_deref().and_then(fsyncs);
            let s = scenario(&url, pid, p, duration, warmup);
            let res = crate::run_scenario(s, Arc::new(Ctx::new())).await;
            let f1 = http.as_deref().and_then(fsyncs);
            let mut m = Measured {
                point: p,
                repeat,
                result: None,
                error: None,
                load1: load,
                fsyncs: f0.zip(f1).map(|(a, b)| b.saturating_sub(a)),
                bytes_per_fsync: None,
                fair_raw: None,
                fair_raw_direct: None,
            };
            match res {
                Ok(r) if r.tally.sent > 0 => m.result = Some(r),
                Ok(_) => m.error = Some("nothing was sent".into()),
                Err(e) => m.error = Some(format!("{e:#}")),
            }
            if let (Some(r), Some(n), Tier::T2) = (&m.result, m.fsyncs, p.tier) {
                if n > 0 {
                    let per = (r.tally.sent * SIZE as u64) as f64 / n as f64;
                    m.bytes_per_fsync = Some(per);
                    let root = data_root.to_path_buf();
                    let round = per.round().max(1.0) as usize;
                    (m.fair_raw, m.fair_raw_direct) = tokio::task::spawn_blocking(move || {
                        (
                            limits::raw_group_commit(&root, round, limit).ok(),
                            limits::raw_group_commit_direct(&root, round, limit)
                                .ok()
                                .flatten(),
                        )
                    })
                    .await?;
                }
            }
            match (&m.result, &m.error) {
                (Some(r), _) => eprintln!(
                    "[{done:>3}/{total}] {} {:<32} produced {:>7.1} MB/s, consumed {:>7.1} MB/s, confirm p99 {}, e2e p99 {}, lost {} dup {} reorder {}{}",
                    p.tier.name(),
                    p.label(),
                    r.publish.mb_per_s,
                    r.consume.mb_per_s,
                    micros(r.confirm.p99_us),
                    if r.end_to_end.count == 0 { "–".into() } else { micros(r.end_to_end.p99_us) },
                    r.tally.lost,
                    r.tally.duplicated,
                    r.tally.out_of_order,
                    match (m.bytes_per_fsync, m.fair_raw) {
                        (Some(b), Some(raw)) => format!(
                            ", {:.0} KiB/fsync, fair raw {:.0} MB/s ({:.0}%){}",
                            b / 1024.0,
                            raw.mb_per_s,
                            r.publish.mb_per_s / raw.mb_per_s * 100.0,
                            m.fair_raw_direct.map_or(String::new(), |d| format!(
                                ", O_DIRECT {:.0} MB/s ({:.0}%)",
                                d.mb_per_s,
                                r.publish.mb_per_s / d.mb_per_s * 100.0
                            ))
                        ),
                        _ => String::new(),
                    }
                ),
                (_, Some(e)) => eprintln!("[{done:>3}/{total}] {} {}: FAILED: {e}", p.tier.name(), p.label()),
                _ => {}
            }
            report.runs.push(m);
        }
    }
    Ok(())
}

#[cfg(feature = "kafka")]
fn librdkafka_version() -> String {
    rdkafka::util::get_rdkafka_version().1
}

#[cfg(not(feature = "kafka"))]
fn librdkafka_version() -> String {
    "(not linked)".into()
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

fn mb(x: f64) -> String {
    format!("{x:.1}")
}

/// The markdown section.
pub fn markdown(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "## Kafka: FerryMQ at T1 and T2, beside the machine's limits\n"
    );
    let _ = writeln!(
        o,
        "Generated by `{}` (crate `ferrymq-bench`, built with `--features kafka`; {}), {} repeat(s) per point, {} s measured after {} s of warm-up; the Kafka part took {:.0} s{}. Do not edit by hand: rerun the command.\n",
        r.command,
        r.generated,
        r.repeats,
        r.duration_s,
        r.warmup_s,
        r.elapsed_s,
        crate::compare::total_note(r.total_s)
    );
    if let Some(why) = &r.skipped {
        let _ = writeln!(o, "> **Not measured: {why}.**\n");
        return o;
    }
    let _ = writeln!(o, "**Machine** (2 vCPUs shared by the broker, the load generator and, while it ran, other engineers' compiles and tests: the 1-minute load average at the start of each run is in the last column; read the ratios, whose limits were measured minutes apart in the same run):\n");
    for (k, v) in r.machine.iter().chain(&r.versions) {
        let _ = writeln!(o, "- {k}: {v}");
    }
    let tcp = stat(&r.tcp.iter().map(|b| b.mb_per_s).collect::<Vec<_>>());
    let raw = stat(&r.raw_batch.iter().map(|b| b.mb_per_s).collect::<Vec<_>>());
    let cache = stat(&r.page_cache.iter().map(|b| b.mb_per_s).collect::<Vec<_>>());
    let _ = writeln!(
        o,
        "\n**Method.** The same load generator process on the same 2 cores: 1 producer (librdkafka, `acks=all`, `linger.ms={LINGER_MS}`, `batch.size={BATCH_BYTES}`, no compression, {SIZE} B records, each carrying its sequence number and send time; records spread over the partitions in runs of {PARTITION_RUN}, one `batch.size`, round-robin: the uniform sticky partitioning of Kafka's Java producer for records without a key) on one topic created for the run with 1 or 8 partitions, and for *produce + consume* 1 consumer (librdkafka, `max.partition.fetch.bytes={FETCH_BYTES}`, all partitions assigned, from the beginning) reading concurrently. *Produced* counts records whose produce was acknowledged (at T2: fsynced), *consumed* records delivered to the consumer, both in payload MB/s (10^6 B) over the measured window. *Broker CPU* and *bench CPU* are the broker's and the load generator's CPU over the window (100% = one core of the two). Every run's accounting (sent, confirmed, received, lost, duplicated, out of order per partition) is checked; the *loss* column sums lost, duplicated and reordered records over the repeats. **Limits**, measured in the same run: *loopback TCP* = one TCP stream over 127.0.0.1 with 256 KiB writes (an in-tool pump, {} per repeat); *raw group commit* = rounds of one `pwrite` + `fdatasync` in the broker's data directory's file system, one after the other; for a T2 run, of the payload bytes that FerryMQ put in each of its fsyncs during that run (its `/metrics` fsync count over the run), measured right after the run (the storage benchmark's \"fair raw\" baseline, and the issue's \"plain write + fdatasync\"; FerryMQ also writes batch and record headers that the ratio does not credit); *fair raw O_DIRECT* = the same rounds written with direct I/O (`O_DIRECT`, rounded up to 4 KiB blocks, only the payload credited), measured right after: how FerryMQ itself writes T2 batches where the file system allows (`storage.direct_writes`), so the ratio to it says how much of that faster path FerryMQ gets; *page-cache write* = `pwrite`s of {BATCH_BYTES} B at the end of a new file there, with no fsync, from one thread (the kernel's share of every T1 append; on this virtual machine the first touch of each fresh page-cache page is slow, see the hand-written notes below). For reference, rounds of {BATCH_BYTES} B (one full producer batch): {} MB/s; loopback TCP: {} MB/s; page-cache write: {} MB/s.\n",
        if r.quick { "1 s" } else { "2 s" },
        fmt_stat(raw, mb),
        fmt_stat(tcp, mb),
        fmt_stat(cache, mb),
    );
    let _ = writeln!(
        o,
        "| tier | scenario | produced MB/s | consumed MB/s | produced msg/s | confirm p99 | e2e p99 | KiB per fsync | fair raw MB/s | produced / limit | fair raw O_DIRECT MB/s: produced / it | broker CPU | bench CPU | loss | load |"
    );
    let _ = writeln!(
        o,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for p in points(r.quick) {
        let prod = r.stat_of(p, |x| x.publish.mb_per_s);
        let cons = r.stat_of(p, |x| x.consume.mb_per_s);
        let msgs = r.stat_of(p, |x| x.publish.msgs_per_s);
        let confirm = r.stat_of(p, |x| x.confirm.p99_us);
        let e2e = stat(&r.values(p, |m| {
            m.result
                .as_ref()
                .filter(|x| x.end_to_end.count > 0)
                .map(|x| x.end_to_end.p99_us)
        }));
        let cpu = stat(&r.values(p, |m| {
            m.result
                .as_ref()
                .and_then(|x| x.broker.as_ref())
                .map(|b| b.cpu_percent)
        }));
        let bench = stat(&r.values(p, |m| m.result.as_ref()?.client_cpu_percent));
        let kib = stat(&r.values(p, |m| m.bytes_per_fsync.map(|b| b / 1024.0)));
        let fair = stat(&r.values(p, |m| m.fair_raw.map(|b| b.mb_per_s)));
        let direct = stat(&r.values(p, |m| m.fair_raw_direct.map(|b| b.mb_per_s)));
        let direct_ratio = stat(&r.values(p, Measured::raw_direct_ratio));
        let ratio = match p.tier {
            Tier::T2 => stat(&r.values(p, Measured::raw_ratio)),
            Tier::T1 => stat(&r.values(p, |m| {
                let t = r.tcp.get(m.repeat)?;
                Some(m.result.as_ref()?.publish.mb_per_s / t.mb_per_s)
            })),
        };
        let limit_name = match p.tier {
            Tier::T2 => "of fair raw",
            Tier::T1 => "of loopback TCP",
        };
        let loss: u64 = r
            .runs
            .iter()
            .filter(|m| m.point == p)
            .filter_map(|m| m.result.as_ref())
            .map(|x| x.tally.lost + x.tally.duplicated + x.tally.out_of_order)
            .sum();
        let failed = r
            .runs
            .iter()
            .filter(|m| m.point == p && m.result.is_none())
            .count();
        let load = stat(&r.values(p, |m| m.load1));
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} {limit_name} | {} | {} | {} | {}{} | {} |",
            p.tier.name(),
            p.label(),
            fmt_stat(prod, mb),
            if p.consume {
                fmt_stat(cons, mb)
            } else {
                "–".into()
            },
            fmt_stat(msgs, thousands),
            fmt_stat(confirm, micros),
            if p.consume {
                fmt_stat(e2e, micros)
            } else {
                "–".into()
            },
            if p.tier == Tier::T2 {
                fmt_stat(kib, |x| format!("{x:.0}"))
            } else {
                "–".into()
            },
            if p.tier == Tier::T2 {
                fmt_stat(fair, |x| format!("{x:.0}"))
            } else {
                "–".into()
            },
            fmt_stat(ratio, pct),
            match (direct, direct_ratio) {
                (Some(d), Some(q)) if p.tier == Tier::T2 => format!(
                    "{}: {}",
                    fmt_stat(Some(d), |x| format!("{x:.0}")),
                    fmt_stat(Some(q), pct)
                ),
                _ => "–".into(),
            },
            fmt_stat(cpu, |x| format!("{x:.0}%")),
            fmt_stat(bench, |x| format!("{x:.0}%")),
            loss,
            if failed > 0 {
                format!(", {failed} run(s) failed")
            } else {
                String::new()
            },
            fmt_stat(load, |x| format!("{x:.1}")),
        );
    }
    // The targets of issue #7.
    // The targets of issue #7: T1 on the lesser of the two directions of each run.
    let t1_best = points(r.quick)
        .into_iter()
        .filter(|p| p.tier == Tier::T1 && p.consume)
        .filter_map(|p| r.stat_of(p, |x| x.consume.mb_per_s.min(x.publish.mb_per_s)))
        .map(|s| s.median)
        .fold(f64::NAN, f64::max);
    let t2: Vec<(Point, Stat)> = points(r.quick)
        .into_iter()
        .filter(|p| p.tier == Tier::T2)
        .filter_map(|p| Some((p, stat(&r.values(p, Measured::raw_ratio))?)))
        .collect();
    let t2_direct: Vec<String> = points(r.quick)
        .into_iter()
        .filter(|p| p.tier == Tier::T2)
        .filter_map(|p| {
            let s = stat(&r.values(p, Measured::raw_direct_ratio))?;
            Some(format!("{} {}", p.label(), fmt_stat(Some(s), pct)))
        })
        .collect();
    let t2_met: Vec<String> = t2
        .iter()
        .filter(|(_, s)| s.median >= T2_TARGET_RATIO)
        .map(|(p, s)| format!("{}: {}", p.label(), fmt_stat(Some(*s), pct)))
        .collect();
    let verdict = |ok: bool| if ok { "**met**" } else { "**not met**" };
    let _ = writeln!(o, "\n**Targets (issue #7)**, judged on the medians:\n");
    let _ = writeln!(
        o,
        "- T1: at least {T1_TARGET_MB_S:.0} MB/s produced and consumed concurrently: {} (best produce + consume point: {} MB/s both ways; loopback TCP {} MB/s; page-cache write from one thread {} MB/s).",
        verdict(t1_best >= T1_TARGET_MB_S),
        mb(t1_best),
        fmt_stat(tcp, mb),
        fmt_stat(cache, mb)
    );
    let _ = writeln!(
        o,
        "- T2: at least {:.0}% of the raw group-commit bandwidth (`pwrite` + `fdatasync`): {} at {} of {} points{}.{}",
        T2_TARGET_RATIO * 100.0,
        if !t2.is_empty() && t2_met.len() == t2.len() {
            "**met**"
        } else if t2_met.is_empty() {
            "**not met**"
        } else {
            "**met only in part**"
        },
        t2_met.len(),
        t2.len(),
        if t2_met.is_empty() {
            String::new()
        } else {
            format!(" ({})", t2_met.join("; "))
        },
        if t2_direct.is_empty() {
            String::new()
        } else {
            format!(
                " Against the raw rate with direct writes instead: {}.",
                t2_direct.join("; ")
            )
        }
    );
    let errors: Vec<&Measured> = r.runs.iter().filter(|m| m.error.is_some()).collect();
    if !errors.is_empty() {
        let _ = writeln!(o, "\n**Failed runs:**\n");
        for m in errors {
            let _ = writeln!(
                o,
                "- {} {}, repeat {}: {}",
                m.point.tier.name(),
                m.point.label(),
                m.repeat + 1,
                m.error.as_deref().unwrap_or_default()
            );
        }
    }
    o
}

/// Writes the section into `out` (between its markers).
///
/// # Errors
/// Reading or writing the file.
pub fn write_outputs(r: &Report, out: &Path) -> Result<()> {
    let old = std::fs::read_to_string(out).unwrap_or_default();
    let new = crate::compare::replace_between(&old, &markdown(r), START_MARKER, END_MARKER)?;
    std::fs::write(out, new).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("wrote the Kafka section of {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_alternates_tiers_and_quick_is_short() {
        let full = points(false);
        assert_eq!(full.len(), 8);
        assert!(full.windows(2).all(|w| w[0].tier != w[1].tier));
        let quick = points(true);
        assert_eq!(quick.len(), 4);
        assert!(quick.iter().all(|p| p.consume));
    }

    #[test]
    fn metric_lines() {
        let text = "# HELP x\nferrymq_fsync_duration_seconds_bucket{le=\"0.001\"} 3\nferrymq_fsync_duration_seconds_count 42\nferrymq_fsync_duration_seconds_sum 0.5\n";
        assert_eq!(
            metric(text, "ferrymq_fsync_duration_seconds_count"),
            Some(42.0)
        );
        assert_eq!(metric(text, "ferrymq_nothing"), None);
    }

    #[test]
    fn skipped_section_says_why() {
        let r = Report {
            generated: "now".into(),
            command: "ferrymq-bench compare --protocols kafka".into(),
            machine: vec![],
            versions: vec![],
            repeats: 1,
            duration_s: 1.0,
            warmup_s: 0.5,
            quick: true,
            runs: vec![],
            tcp: vec![],
            raw_batch: vec![],
            page_cache: vec![],
            skipped: Some("no driver".into()),
            elapsed_s: 0.0,
            total_s: None,
        };
        let md = markdown(&r);
        assert!(md.contains("Not measured: no driver"), "{md}");
    }
}
