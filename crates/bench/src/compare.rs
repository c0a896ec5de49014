//! `ferrymq-bench compare`: the same AMQP scenarios, with the same client, against FerryMQ and
//! RabbitMQ on this machine, repeated and interleaved; medians, ranges and ratios written as the
//! "AMQP 0-9-1: FerryMQ vs RabbitMQ" section of `docs/benchmarks.md` (between its markers) plus
//! an SVG chart beside it.
//!
//! Both brokers run for the whole matrix (RabbitMQ's schedulers set not to spin, so an idle
//! broker costs next to nothing) and the runs alternate between them point by point, so that the
//! machine's noise (other tenants, compiles) lands on both sides alike.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::brokers::{Broker, Kind};
use crate::report::{mib, micros, thousands};
use crate::run::{Client, Ctx, RunResult, Scenario};
use crate::svg::{self, Bar, Group};

pub const START_MARKER: &str = "<!-- bench:amqp:start -->";
pub const END_MARKER: &str = "<!-- bench:amqp:end -->";
/// The chart, written beside the markdown file.
pub const SVG_NAME: &str = "benchmarks-amqp.svg";

/// What `compare` was asked to do.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    pub quick: bool,
    /// The AMQP client used against both brokers.
    pub client: Client,
    /// The MQTT client used against both brokers.
    pub mqtt_client: crate::run::MqttClient,
    pub ferrymq_bin: Option<PathBuf>,
    pub out: PathBuf,
    pub repeats: Option<usize>,
    pub duration: Option<Duration>,
    pub backlog: Option<u64>,
    pub install: bool,
    pub json_out: Option<PathBuf>,
    /// Rewrite the section from a report saved with `json_out`, without running anything.
    pub from_json: Option<PathBuf>,
    /// Which matrices to run (default: all).
    pub protocols: Vec<Matrix>,
    /// Idle MQTT connections measured per broker (default 10,000; 1,000 with `--quick`).
    pub idle_connections: Option<usize>,
}

/// A matrix's default measured time and warm-up per point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    pub duration_s: f64,
    pub warmup_s: f64,
}

/// The defaults, chosen so that the whole default `compare` (every matrix, 3 repeats) takes
/// under 15 minutes on a 2-core machine and `--quick` (1 repeat, smaller matrices) under 2
/// (see ARCHITECTURE.md, `crates/bench`). `--duration` overrides the measured time of all.
pub fn timing(m: Matrix, quick: bool) -> Timing {
    let (duration_s, warmup_s) = match (m, quick) {
        (Matrix::Amqp, false) => (4.0, 1.0),
        (Matrix::Amqp, true) => (1.0, 0.5),
        (Matrix::Mqtt, false) => (2.0, 0.5),
        (Matrix::Mqtt, true) => (1.0, 0.25),
        (Matrix::Kafka, false) => (3.0, 0.5),
        (Matrix::Kafka, true) => (1.0, 0.5),
    };
    Timing {
        duration_s,
        warmup_s,
    }
}

/// How many runs a default matrix makes (every broker, point, repeat and phase).
pub fn runs_planned(m: Matrix, quick: bool) -> usize {
    let repeats = if quick { 1 } else { 3 };
    match m {
        // Two brokers, each point at the maximum and at a fixed rate.
        Matrix::Amqp => POINTS.len() * 2 * 2 * repeats,
        Matrix::Mqtt => {
            let fanout = if quick {
                crate::compare_mqtt::FANOUT_QUICK
            } else {
                crate::compare_mqtt::FANOUT
            };
            (crate::compare_mqtt::points(fanout).len()
                + crate::compare_mqtt::fixed_rate_points(fanout).len())
                * 2
                * repeats
        }
        Matrix::Kafka => crate::compare_kafka::points(quick).len() * repeats,
    }
}

/// A protocol matrix of `compare`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Matrix {
    /// AMQP 0-9-1, FerryMQ vs RabbitMQ.
    Amqp,
    /// MQTT 3.1.1, FerryMQ vs Mosquitto.
    Mqtt,
    /// Kafka, FerryMQ at T1 and T2 beside the machine's limits.
    Kafka,
}

impl Matrix {
    pub const ALL: [Matrix; 3] = [Matrix::Amqp, Matrix::Mqtt, Matrix::Kafka];

    pub fn name(self) -> &'static str {
        match self {
            Matrix::Amqp => "amqp",
            Matrix::Mqtt => "mqtt",
            Matrix::Kafka => "kafka",
        }
    }

    /// `amqp,mqtt` → the list (duplicates dropped).
    ///
    /// # Errors
    /// An unknown name, or none.
    pub fn parse_list(s: &str) -> Result<Vec<Matrix>, String> {
        let mut v = Vec::new();
        for n in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let m = match n.to_ascii_lowercase().as_str() {
                "amqp" => Matrix::Amqp,
                "mqtt" => Matrix::Mqtt,
                "kafka" => Matrix::Kafka,
                _ => {
                    return Err(format!(
                        "unknown protocol {n:?}: amqp, mqtt or kafka (HTTP has no compare matrix)"
                    ))
                }
            };
            if !v.contains(&m) {
                v.push(m);
            }
        }
        if v.is_empty() {
            return Err("no protocol given: amqp, mqtt, kafka".into());
        }
        Ok(v)
    }
}

/// One point of the matrix: 1 producer → 1 consumer, one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Point {
    pub size: usize,
    /// Durable queue, persistent messages and publisher confirms; else transient, no confirms.
    pub persistent: bool,
}

pub const POINTS: [Point; 4] = [
    Point {
        size: 16,
        persistent: false,
    },
    Point {
        size: 1024,
        persistent: false,
    },
    Point {
        size: 16,
        persistent: true,
    },
    Point {
        size: 1024,
        persistent: true,
    },
];

impl Point {
    pub fn label(&self) -> String {
        let size = if self.size >= 1024 {
            format!("{} KiB", self.size / 1024)
        } else {
            format!("{} B", self.size)
        };
        if self.persistent {
            format!("{size} persistent + confirms")
        } else {
            format!("{size} transient, no confirms")
        }
    }
}

/// The median and range of some repeats.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

/// Median (mean of the middle two for an even count), min and max; `None` when empty.
pub fn stat(values: &[f64]) -> Option<Stat> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Stat {
        median,
        min: v[0],
        max: v[n - 1],
        n,
    })
}

/// One run of the matrix.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measured {
    pub point: Point,
    pub broker: String,
    /// `None` = maximum rate; else the fixed total rate.
    pub rate: Option<f64>,
    pub repeat: usize,
    pub result: Option<RunResult>,
    pub error: Option<String>,
}

/// Everything the section is written from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub generated: String,
    /// The client every run used (reports from before the choice existed: `lapin`).
    #[serde(default = "Client::legacy")]
    pub client: Client,
    pub command: String,
    pub machine: Vec<(String, String)>,
    pub versions: Vec<(String, String)>,
    pub repeats: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub runs: Vec<Measured>,
    pub backlog: Option<RunResult>,
    pub elapsed_s: f64,
    /// Whether the AMQP matrix ran (reports from before `--protocols`: it did).
    #[serde(default = "yes")]
    pub amqp: bool,
    /// The MQTT matrix, when it ran.
    #[serde(default)]
    pub mqtt: Option<crate::compare_mqtt::Report>,
    /// The Kafka matrix, when it ran.
    #[serde(default)]
    pub kafka: Option<crate::compare_kafka::Report>,
}

fn yes() -> bool {
    true
}

impl Report {
    fn values(
        &self,
        p: Point,
        broker: Kind,
        fixed: bool,
        f: impl Fn(&RunResult) -> f64,
    ) -> Vec<f64> {
        self.runs
            .iter()
            .filter(|m| m.point == p && m.broker == broker.name() && m.rate.is_some() == fixed)
            .filter_map(|m| m.result.as_ref().map(&f))
            .collect()
    }

    fn stat(
        &self,
        p: Point,
        broker: Kind,
        fixed: bool,
        f: impl Fn(&RunResult) -> f64,
    ) -> Option<Stat> {
        stat(&self.values(p, broker, fixed, f))
    }

    fn rate_of(&self, p: Point) -> Option<f64> {
        self.runs
            .iter()
            .find(|m| m.point == p && m.rate.is_some())
            .and_then(|m| m.rate)
    }
}

#[allow(clippy::too_many_arguments)]
fn scenario(
    client: Client,
    url: &str,
    pid: u32,
    p: Point,
    duration: Duration,
    warmup: Duration,
    rate: Option<f64>,
) -> Scenario {
    let mut s = Scenario::amqp(url);
    s.client = client;
    s.size = p.size;
    s.persistent = p.persistent;
    s.confirms = p.persistent;
    s.duration = duration;
    s.warmup = warmup;
    s.rate = rate;
    s.broker_pid = Some(pid);
    s
}

/// The `ferrymq` release binary: the given one, or beside this binary, or built now.
fn locate_ferrymq(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = given {
        if !p.is_file() {
            bail!("--ferrymq-bin {} does not exist", p.display());
        }
        return Ok(p);
    }
    let exe = std::env::current_exe().context("locating ferrymq-bench")?;
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let beside = dir.join("ferrymq");
    if beside.is_file() && dir.ends_with("release") {
        return Ok(beside);
    }
    eprintln!("building FerryMQ: cargo build --release -p ferrymq");
    let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "-p", "ferrymq"])
        .status()
        .context("running cargo build --release -p ferrymq")?;
    if !st.success() {
        bail!("cargo build --release -p ferrymq failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    for c in [beside, target.join("release/ferrymq")] {
        if c.is_file() {
            return Ok(c);
        }
    }
    bail!(
        "built, but found no release ferrymq binary beside {} or in {}",
        exe.display(),
        target.display()
    )
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// nproc, CPU model, memory, kernel and the disk under `data_root`.
pub fn machine(data_root: &Path) -> Vec<(String, String)> {
    let lscpu = sh("lscpu", &[]);
    let field = |k: &str| {
        lscpu
            .lines()
            .find(|l| l.trim_start().starts_with(k))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_default();
    let root = data_root.display().to_string();
    let mount = sh("findmnt", &["-no", "SOURCE,FSTYPE,OPTIONS", "-T", &root]);
    let dev = mount
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let disk = if dev.starts_with("/dev/") {
        sh("lsblk", &["-dno", "NAME,SIZE,ROTA,MODEL", &dev])
    } else {
        String::new()
    };
    let hv = field("Hypervisor vendor");
    vec![
        (
            "nproc".into(),
            std::thread::available_parallelism()
                .map(|n| n.to_string())
                .unwrap_or_default(),
        ),
        (
            "CPU (lscpu)".into(),
            format!(
                "{}{}",
                field("Model name"),
                if hv.is_empty() {
                    String::new()
                } else {
                    format!(", {hv} guest")
                }
            ),
        ),
        ("memory".into(), mem),
        ("kernel".into(), sh("uname", &["-r"])),
        ("data directories".into(), format!("`{root}` on {mount}")),
        ("disk (lsblk: name size rotational model)".into(), disk),
    ]
}

fn one_line(b: &str, p: Point, r: &RunResult) -> String {
    format!(
        "{b:<8} {:<28} {:>10} msg/s delivered ({:>10} published), e2e p99 {}, lost {} dup {} reorder {}",
        p.label(),
        thousands(r.consume.msgs_per_s),
        thousands(r.publish.msgs_per_s),
        micros(r.end_to_end.p99_us),
        r.tally.lost,
        r.tally.duplicated,
        r.tally.out_of_order
    )
}

/// Runs one point of a matrix: its result, or why it has none (an error, or no message
/// arrived).
pub(crate) async fn run_one(s: Scenario) -> (Option<RunResult>, Option<String>) {
    match crate::run_scenario(s, Arc::new(Ctx::new())).await {
        Ok(r) if r.tally.received > 0 => (Some(r), None),
        Ok(_) => (None, Some("no message arrived".to_string())),
        Err(e) => (None, Some(format!("{e:#}"))),
    }
}

/// ", the whole `compare` run N s" for a section header, when the total is known.
pub(crate) fn total_note(total_s: Option<f64>) -> String {
    total_s.map_or(String::new(), |t| {
        format!(", the whole `compare` run {t:.0} s")
    })
}

/// Runs the matrix; `brokers` holds what was started so that the caller stops it whatever happens.
async fn matrix(
    o: &CompareOptions,
    bin: &Path,
    data_root: &Path,
    brokers: &Mutex<Vec<Broker>>,
    report: &mut Report,
) -> Result<()> {
    let (bin, data_root) = (bin.to_path_buf(), data_root.to_path_buf());
    report.machine = machine(&data_root);
    eprintln!("starting FerryMQ ({}) and RabbitMQ…", bin.display());
    let f = tokio::task::spawn_blocking({
        let (bin, root) = (bin.clone(), data_root.clone());
        move || Broker::ferrymq(&bin, &root, &[])
    })
    .await??;
    report.versions.push((
        "FerryMQ".into(),
        format!(
            "{} (release build `{}`, storage.durability = t2, the default)",
            f.version,
            bin.display()
        ),
    ));
    brokers.lock().unwrap_or_else(|e| e.into_inner()).push(f);
    let r = Broker::rabbitmq(&data_root, o.install).await?;
    report.versions.push((
        "RabbitMQ".into(),
        format!(
            "{}, classic queues, stock configuration but `+sbwt none +sbwtdcpu none +sbwtdio none`",
            r.version
        ),
    ));
    brokers.lock().unwrap_or_else(|e| e.into_inner()).push(r);
    let targets: Vec<(Kind, String, u32)> = brokers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|b| (b.kind, b.url.clone(), b.pid))
        .collect();

    let duration = Duration::from_secs_f64(report.duration_s);
    let warmup = Duration::from_secs_f64(report.warmup_s);
    let total = POINTS.len() * targets.len() * report.repeats * 2;
    let mut done = 0;
    for phase in 0..2 {
        for repeat in 0..report.repeats {
            for p in POINTS {
                let rate = if phase == 0 {
                    None
                } else {
                    // Half of RabbitMQ's median delivered rate at this point.
                    match report.stat(p, Kind::RabbitMq, false, |r| r.consume.msgs_per_s) {
                        Some(s) if s.median > 0.0 => Some((s.median / 2.0).round().max(1.0)),
                        _ => continue,
                    }
                };
                let mut order = targets.clone();
                if (repeat + phase) % 2 == 1 {
                    order.reverse();
                }
                for (kind, url, pid) in order {
                    done += 1;
                    let s = scenario(report.client, &url, pid, p, duration, warmup, rate);
                    let (result, error) = run_one(s).await;
                    match (&result, &error) {
                        (Some(r), _) => {
                            eprintln!("[{done:>3}/{total}] {}", one_line(kind.name(), p, r))
                        }
                        (_, Some(e)) => eprintln!(
                            "[{done:>3}/{total}] {} {}: FAILED: {e}",
                            kind.name(),
                            p.label()
                        ),
                        _ => {}
                    }
                    report.runs.push(Measured {
                        point: p,
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

    if let Some(n) = o.backlog {
        // A fresh FerryMQ alone, so that its memory is the backlog's and not the matrix's.
        let old: Vec<Broker> =
            std::mem::take(&mut *brokers.lock().unwrap_or_else(|e| e.into_inner()));
        tokio::task::spawn_blocking(move || drop(old)).await?;
        let fresh = tokio::task::spawn_blocking({
            let (bin, root) = (bin.clone(), data_root.clone());
            move || Broker::ferrymq(&bin, &root, &[])
        })
        .await??;
        let (url, pid) = (fresh.url.clone(), fresh.pid);
        brokers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(fresh);
        eprintln!("backlog: publishing {} persistent 1 KiB messages into one FerryMQ queue, then draining it", thousands(n as f64));
        let mut s = scenario(
            report.client,
            &url,
            pid,
            Point {
                size: 1024,
                persistent: true,
            },
            duration,
            Duration::ZERO,
            None,
        );
        s.count = Some(n);
        s.consume_after_publish = true;
        s.drain_idle = Duration::from_secs(30);
        s.progress = true;
        let r = crate::run_scenario(s, Arc::new(Ctx::new()))
            .await
            .context("backlog run")?;
        eprintln!("{}", crate::report::human(&r));
        report.backlog = Some(r);
    }
    Ok(())
}

/// Runs everything, stops the brokers, writes the section.
///
/// # Errors
/// A broker that cannot start, an interrupt, or the output file.
pub async fn compare(o: CompareOptions) -> Result<()> {
    if let Some(j) = &o.from_json {
        let text =
            std::fs::read_to_string(j).with_context(|| format!("reading {}", j.display()))?;
        let report: Report =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", j.display()))?;
        return write_all(&report, &o.out);
    }
    let amqp = o.protocols.contains(&Matrix::Amqp);
    let mqtt = o.protocols.contains(&Matrix::Mqtt);
    let kafka = o.protocols.contains(&Matrix::Kafka);
    let t0 = Instant::now();
    let mut report = Report {
        generated: sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        client: o.client,
        command: command_line(&o),
        machine: Vec::new(),
        versions: Vec::new(),
        repeats: o.repeats.unwrap_or(if o.quick { 1 } else { 3 }).max(1),
        duration_s: o
            .duration
            .map_or(timing(Matrix::Amqp, o.quick).duration_s, |d| {
                d.as_secs_f64()
            }),
        warmup_s: timing(Matrix::Amqp, o.quick).warmup_s,
        runs: Vec::new(),
        backlog: None,
        elapsed_s: 0.0,
        amqp,
        mqtt: None,
        kafka: None,
    };
    let mut kafka_report = crate::compare_kafka::Report {
        generated: report.generated.clone(),
        command: report.command.clone(),
        machine: Vec::new(),
        versions: Vec::new(),
        repeats: report.repeats,
        duration_s: o
            .duration
            .map_or(timing(Matrix::Kafka, o.quick).duration_s, |d| {
                d.as_secs_f64()
            }),
        warmup_s: timing(Matrix::Kafka, o.quick).warmup_s,
        quick: o.quick,
        runs: Vec::new(),
        tcp: Vec::new(),
        raw_batch: Vec::new(),
        page_cache: Vec::new(),
        skipped: None,
        elapsed_s: 0.0,
        total_s: None,
    };
    let mut mqtt_report = crate::compare_mqtt::Report {
        generated: report.generated.clone(),
        command: report.command.clone(),
        client: o.mqtt_client,
        machine: Vec::new(),
        versions: Vec::new(),
        repeats: report.repeats,
        duration_s: o
            .duration
            .map_or(timing(Matrix::Mqtt, o.quick).duration_s, |d| {
                d.as_secs_f64()
            }),
        warmup_s: timing(Matrix::Mqtt, o.quick).warmup_s,
        fanout: if o.quick {
            crate::compare_mqtt::FANOUT_QUICK
        } else {
            crate::compare_mqtt::FANOUT
        },
        runs: Vec::new(),
        idle: Vec::new(),
        ferrymq_skipped: None,
        elapsed_s: 0.0,
        total_s: None,
    };
    let brokers = Mutex::new(Vec::new());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let idle_n = o.idle_connections.unwrap_or(if o.quick {
        crate::compare_mqtt::IDLE_QUICK
    } else {
        crate::compare_mqtt::IDLE
    });
    let all = async {
        let bin = tokio::task::spawn_blocking({
            let b = o.ferrymq_bin.clone();
            move || locate_ferrymq(b)
        })
        .await??;
        let data_root = bin
            .parent()
            .map(|d| d.join("bench-data"))
            .unwrap_or_else(|| PathBuf::from("bench-data"));
        std::fs::create_dir_all(&data_root)
            .with_context(|| format!("creating {}", data_root.display()))?;
        if amqp {
            matrix(&o, &bin, &data_root, &brokers, &mut report).await?;
            // Each matrix has the machine to itself.
            let old: Vec<Broker> =
                std::mem::take(&mut *brokers.lock().unwrap_or_else(|e| e.into_inner()));
            tokio::task::spawn_blocking(move || drop(old)).await?;
        }
        let mut mqtt_err = None;
        if mqtt {
            let t = Instant::now();
            // A failing MQTT matrix (Mosquitto not installable...) keeps the AMQP results.
            if let Err(e) = crate::compare_mqtt::matrix(
                &bin,
                &data_root,
                o.install,
                idle_n,
                &brokers,
                &mut mqtt_report,
            )
            .await
            {
                mqtt_err = Some(e.context("the MQTT matrix"));
            }
            mqtt_report.elapsed_s = t.elapsed().as_secs_f64();
        }
        let mut kafka_err = None;
        if kafka {
            let old: Vec<Broker> =
                std::mem::take(&mut *brokers.lock().unwrap_or_else(|e| e.into_inner()));
            tokio::task::spawn_blocking(move || drop(old)).await?;
            let t = Instant::now();
            if let Err(e) =
                crate::compare_kafka::matrix(&bin, &data_root, &brokers, &mut kafka_report).await
            {
                kafka_err = Some(e.context("the Kafka matrix"));
            }
            kafka_report.elapsed_s = t.elapsed().as_secs_f64();
        }
        Ok::<_, anyhow::Error>((mqtt_err, kafka_err))
    };
    let outcome = tokio::select! {
        r = all => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted (Ctrl-C)")),
        _ = term.recv() => Err(anyhow!("terminated (SIGTERM)")),
    };
    eprintln!("stopping brokers…");
    let stopping: Vec<Broker> =
        std::mem::take(&mut *brokers.lock().unwrap_or_else(|e| e.into_inner()));
    tokio::task::spawn_blocking(move || drop(stopping)).await?;
    let (mqtt_failed, kafka_failed) = outcome?;
    report.elapsed_s = t0.elapsed().as_secs_f64();
    mqtt_report.total_s = Some(report.elapsed_s);
    kafka_report.total_s = Some(report.elapsed_s);
    if mqtt && mqtt_failed.is_none() {
        report.mqtt = Some(mqtt_report);
    }
    // A build without the Kafka driver leaves the Kafka section as it was.
    if kafka && kafka_failed.is_none() && kafka_report.skipped.is_none() {
        report.kafka = Some(kafka_report);
    }
    if let Some(j) = &o.json_out {
        std::fs::write(j, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", j.display()))?;
    }
    write_all(&report, &o.out)?;
    match mqtt_failed.or(kafka_failed) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Writes the section of every matrix the report holds.
fn write_all(report: &Report, out: &Path) -> Result<()> {
    if report.amqp {
        write_outputs(report, out)?;
    }
    if let Some(m) = &report.mqtt {
        crate::compare_mqtt::write_outputs(m, out)?;
    }
    if let Some(k) = &report.kafka {
        crate::compare_kafka::write_outputs(k, out)?;
    }
    Ok(())
}

/// Writes the markdown section into `out` and the chart beside it.
fn write_outputs(report: &Report, out: &Path) -> Result<()> {
    write_section(out, &markdown(report))?;
    let svg_path = out.with_file_name(SVG_NAME);
    std::fs::write(&svg_path, chart(report))
        .with_context(|| format!("writing {}", svg_path.display()))?;
    eprintln!(
        "wrote {} and {} (run took {:.0} s)",
        out.display(),
        svg_path.display(),
        report.elapsed_s
    );
    Ok(())
}

fn command_line(o: &CompareOptions) -> String {
    let mut c = String::from("ferrymq-bench compare");
    if o.client != Client::Native {
        let _ = write!(c, " --client {}", o.client.name());
    }
    if o.mqtt_client != crate::run::MqttClient::Native {
        let _ = write!(c, " --mqtt-client {}", o.mqtt_client.name());
    }
    if o.quick {
        c.push_str(" --quick");
    }
    if let Some(r) = o.repeats {
        let _ = write!(c, " --repeats {r}");
    }
    if let Some(d) = o.duration {
        let _ = write!(c, " --duration {}s", d.as_secs_f64());
    }
    if let Some(n) = o.backlog {
        let _ = write!(c, " --backlog {n}");
    }
    if o.protocols != Matrix::ALL {
        let names: Vec<&str> = o.protocols.iter().map(|m| m.name()).collect();
        let _ = write!(c, " --protocols {}", names.join(","));
    }
    if let Some(n) = o.idle_connections {
        let _ = write!(c, " --idle-connections {n}");
    }
    c
}

/// Replaces the text between the markers (inclusive) with `section`, or appends it.
///
/// # Errors
/// Reading or writing the file; an end marker without a start marker.
pub fn write_section(path: &Path, section: &str) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let new = replace_section(&old, section)?;
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

/// The file's text with its marked section replaced by (or appended with) `section`.
///
/// # Errors
/// Markers out of order.
pub fn replace_section(old: &str, section: &str) -> Result<String> {
    replace_between(old, section, START_MARKER, END_MARKER)
}

/// The file's text with the section between `start` and `end` (inclusive) replaced by (or
/// appended with) `section`.
///
/// # Errors
/// Markers out of order.
pub fn replace_between(old: &str, section: &str, start: &str, end: &str) -> Result<String> {
    let block = format!("{start}\n{}\n{end}", section.trim_end());
    match (old.find(start), old.find(end)) {
        (Some(a), Some(b)) if b > a => Ok(format!("{}{block}{}", &old[..a], &old[b + end.len()..])),
        (None, None) => {
            let mut s = old.trim_end().to_string();
            if !s.is_empty() {
                s.push_str("\n\n");
            }
            s.push_str(&block);
            s.push('\n');
            Ok(s)
        }
        _ => bail!("the markers {start} / {end} are out of order"),
    }
}

pub(crate) fn fmt_stat(s: Option<Stat>, f: impl Fn(f64) -> String) -> String {
    match s {
        Some(s) if s.n > 1 => format!("{} ({}–{})", f(s.median), f(s.min), f(s.max)),
        Some(s) => f(s.median),
        None => "failed".into(),
    }
}

pub(crate) fn ratio(a: Option<Stat>, b: Option<Stat>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b.median > 0.0 => Some(a.median / b.median),
        _ => None,
    }
}

/// One side of an equal-load row: end-to-end p50, p99, p99.9 and max (µs) over the repeats.
pub(crate) type Tail = [Option<Stat>; 4];

/// The [`Tail`] of one broker at one point, from a statistic of its fixed-rate runs.
pub(crate) fn tail(stat: impl Fn(fn(&RunResult) -> f64) -> Option<Stat>) -> Tail {
    [
        stat(|x| x.end_to_end.p50_us),
        stat(|x| x.end_to_end.p99_us),
        stat(|x| x.end_to_end.p999_us),
        stat(|x| x.end_to_end.max_us),
    ]
}

/// One point of an equal-load latency table.
pub(crate) struct EqualLoadRow {
    pub(crate) label: String,
    /// The fixed total publish rate both brokers ran at.
    pub(crate) rate: Option<f64>,
    /// FerryMQ's and the peer's tails.
    pub(crate) a: Tail,
    pub(crate) b: Tail,
}

/// The table of end-to-end latency at the same fixed rate on both brokers (AMQP and MQTT
/// sections): p50 / p99 / p99.9 / max side by side, and the ratio of the p99s.
pub(crate) fn equal_load_table(o: &mut String, a: &str, b: &str, rows: &[EqualLoadRow]) {
    let _ = writeln!(o, "| scenario | rate (msg/s) | {a} p50 | {a} p99 | {a} p99.9 | {a} max | {b} p50 | {b} p99 | {b} p99.9 | {b} max | p99 {a} / {b} |");
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let cells: Vec<String> =
            r.a.iter()
                .chain(&r.b)
                .map(|s| fmt_stat(*s, micros))
                .collect();
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} |",
            r.label,
            r.rate.map_or("–".into(), thousands),
            cells.join(" | "),
            ratio(r.a[1], r.b[1]).map_or("–".into(), |v| format!("{v:.2}")),
        );
    }
}

/// Whether FerryMQ's median p99 (`a`) is no worse than the peer's (`b`), and the figures.
pub(crate) fn p99_verdict(a: Option<Stat>, b: Option<Stat>) -> (Option<bool>, String) {
    match (a, b) {
        (Some(x), Some(y)) => (
            ratio(a, b).map(|r| r <= 1.0),
            format!("p99 {} vs {}", micros(x.median), micros(y.median)),
        ),
        _ => (None, "no data".into()),
    }
}

/// One line of a section's list of targets: met, missed or not measured, and why.
pub(crate) fn target_line(o: &mut String, name: &str, met: Option<bool>, why: &str) {
    let v = match met {
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "not measured",
    };
    let _ = writeln!(o, "- {name}: {v} ({why})");
}

pub(crate) fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or("–".into(), |r| format!("**{r:.2}×**"))
}

fn client_description(c: Client) -> &'static str {
    match c {
        Client::Native => "`--client native`, the bench's own AMQP 0-9-1 driver on the project's codec `ferrymq-amqp-codec` over a tokio `TcpStream`: the producer encodes up to 256 due messages into one buffer and writes it with one `write_all`, a reader task settles `basic.ack`s (with `multiple`) as they come; the consumer decodes every frame a read returned and writes the acks of that read together",
        Client::Lapin => "the `lapin` 4 crate, `--client lapin`",
    }
}

fn client_caveat(c: Client) -> &'static str {
    match c {
        Client::Native => "the native client was written so that it is not the bottleneck: `lapin` cost about 9 µs of CPU per message published and consumed, and capped the 16 B transient point at ~44,000 delivered msg/s",
        Client::Lapin => "`lapin` costs about 9 µs of CPU per message published and consumed, ~90% of a core at 50,000 msg/s, so at the maximum rate the load generator is often the bottleneck; `--client native` (the default) costs far less",
    }
}

/// The markdown section.
pub fn markdown(r: &Report) -> String {
    let (f, q) = (Kind::FerryMq, Kind::RabbitMq);
    let mut o = String::new();
    let _ = writeln!(o, "## AMQP 0-9-1: FerryMQ vs RabbitMQ\n");
    let _ = writeln!(
        o,
        "Generated by `{}` (crate `ferrymq-bench`, {}), {} repeat(s) per point, {:.0} s measured after {:.0} s of warm-up; the whole run took {:.0} s. Do not edit by hand: rerun the command.\n",
        r.command, r.generated, r.repeats, r.duration_s, r.warmup_s, r.elapsed_s
    );
    let _ = writeln!(o, "**Command** (from a clone; `./scripts/bench` installs librdkafka-dev if missing and builds both binaries in release; `compare` installs RabbitMQ and Mosquitto from Debian's packages if missing, starts and stops every broker):\n```sh\n./scripts/bench {}\n```\n", r.command.strip_prefix("ferrymq-bench compare").unwrap_or("").trim());
    let _ = writeln!(o, "**Machine** (shared with other engineers' compiles and tests while it ran: noisy; read the ratios, which come from runs interleaved point by point, rather than the absolute figures):\n");
    for (k, v) in &r.machine {
        let _ = writeln!(o, "- {k}: {v}");
    }
    for (k, v) in &r.versions {
        let _ = writeln!(o, "- {k}: {v}");
    }
    let _ = writeln!(
        o,
        "\n**Method.** One load generator process on the same 2 cores as the broker, the same client for both brokers ({}): 1 producer → 1 consumer, each on its own connection, one queue, default exchange. \
Transient points: non-durable queue, delivery mode 1, no confirms (tier T0 on both sides). Persistent points: durable queue, delivery mode 2, publisher confirms with at most 1,000 unconfirmed messages per producer (T2 on both sides: FerryMQ confirms after the group-commit `fdatasync`; RabbitMQ confirms persistent messages once its message store has synced them). \
Consumers: prefetch 1,000, `basic.ack` with `multiple` every 50 deliveries. Every payload carries producer id, sequence number and send time; *delivered* = distinct messages received in the measured window; latency is from send to delivery (*e2e*) or to confirm, HdrHistogram, 3 significant digits. \
The second table runs each point at a fixed rate of half RabbitMQ's median delivered rate, with latency measured from each message's intended send time (no coordinated omission). Broker CPU is the process tree's user + system time over the window (100% = one core); RSS is the peak resident set, sampled every 250 ms. \
Caveat: the client shares the 2 cores with the broker ({}), so at the maximum rate the two compete for CPU (see the broker and load generator CPU columns); that compresses the ratios rather than inflating them. \
MQTT against Mosquitto and Kafka beside the machine's limits have their own sections (below), and HTTP (FerryMQ only, `ferrymq-bench run --url http://…`) no comparison peer.\n",
        client_description(r.client),
        client_caveat(r.client),
    );

    let _ = writeln!(
        o,
        "### Throughput at maximum rate (delivered messages/s, median and range)\n"
    );
    let _ = writeln!(o, "| scenario | tier (both) | FerryMQ msg/s | RabbitMQ msg/s | FerryMQ / RabbitMQ | FerryMQ MB/s | RabbitMQ MB/s |");
    let _ = writeln!(o, "|---|---|---|---|---|---|---|");
    for p in POINTS {
        let a = r.stat(p, f, false, |x| x.consume.msgs_per_s);
        let b = r.stat(p, q, false, |x| x.consume.msgs_per_s);
        let am = r.stat(p, f, false, |x| x.consume.mb_per_s);
        let bm = r.stat(p, q, false, |x| x.consume.mb_per_s);
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} |",
            p.label(),
            if p.persistent { "T2" } else { "T0" },
            fmt_stat(a, thousands),
            fmt_stat(b, thousands),
            fmt_ratio(ratio(a, b)),
            fmt_stat(am, |v| format!("{v:.1}")),
            fmt_stat(bm, |v| format!("{v:.1}")),
        );
    }
    let _ = writeln!(
        o,
        "\n![AMQP throughput, FerryMQ and RabbitMQ]({SVG_NAME})\n"
    );

    let _ = writeln!(o, "Same runs, medians: publish rate, latency at maximum rate (queues may grow when the publisher outruns the consumer, so these latencies include queueing), broker CPU, and the broker's peak RSS during the run (each broker serves the whole matrix, so this includes memory kept from earlier points). At maximum rate without confirms FerryMQ accepts publishes faster than this client consumes them, and a transient queue keeps its backlog in memory, so its RSS grows with that backlog; RabbitMQ's credit flow slows the publisher down instead.\n");
    let _ = writeln!(o, "| scenario | broker | published msg/s | e2e p50 | e2e p99 | confirm p99 | broker CPU | load generator CPU | peak RSS |");
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|");
    for p in POINTS {
        for k in [f, q] {
            let med = |g: fn(&RunResult) -> f64| r.stat(p, k, false, g).map(|s| s.median);
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                p.label(),
                k.name(),
                med(|x| x.publish.msgs_per_s).map_or("–".into(), thousands),
                med(|x| x.end_to_end.p50_us).map_or("–".into(), micros),
                med(|x| x.end_to_end.p99_us).map_or("–".into(), micros),
                if p.persistent {
                    med(|x| x.confirm.p99_us).map_or("–".into(), micros)
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
            );
        }
    }

    let _ = writeln!(
        o,
        "\n### End-to-end latency at half of RabbitMQ's maximum rate\n"
    );
    let rows: Vec<EqualLoadRow> = POINTS
        .iter()
        .map(|&p| EqualLoadRow {
            label: p.label(),
            rate: r.rate_of(p),
            a: tail(|g| r.stat(p, f, true, g)),
            b: tail(|g| r.stat(p, q, true, g)),
        })
        .collect();
    equal_load_table(&mut o, "FerryMQ", "RabbitMQ", &rows);
    let _ = writeln!(o, "\n### Accounting over all runs\n");
    let _ = writeln!(o, "| broker | runs | failed runs | sent | received | lost (confirmed, never received) | duplicated | out of order |");
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|");
    for k in [f, q] {
        let runs: Vec<&Measured> = r.runs.iter().filter(|m| m.broker == k.name()).collect();
        let sum = |g: fn(&crate::accounting::Tally) -> u64| {
            runs.iter()
                .filter_map(|m| m.result.as_ref())
                .map(|x| g(&x.tally))
                .sum::<u64>()
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            k.name(),
            runs.len(),
            runs.iter().filter(|m| m.result.is_none()).count(),
            thousands(sum(|t| t.sent) as f64),
            thousands(sum(|t| t.received) as f64),
            sum(|t| t.lost),
            sum(|t| t.duplicated),
            sum(|t| t.out_of_order),
        );
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

    if let Some(b) = &r.backlog {
        let _ = writeln!(
            o,
            "\n### Backlog: FerryMQ's memory with a deep durable queue\n"
        );
        let n = b.scenario.count.unwrap_or_default();
        let peak = b.broker.as_ref().map_or(0, |u| u.peak_rss_bytes);
        let _ = writeln!(
            o,
            "{} persistent 1 KiB messages published with confirms (T2) by one producer into one durable queue of a freshly started FerryMQ (RabbitMQ stopped) with no consumer, then drained by one consumer. \
Publish: {} msg/s over {:.0} s; drain: {} msg/s over {:.0} s; received {} of {} confirmed, lost {}, duplicated {}. **Peak RSS of FerryMQ: {}**.\n",
            thousands(n as f64),
            thousands(b.publish.msgs_per_s),
            b.publish.seconds,
            thousands(b.consume.msgs_per_s),
            b.consume.seconds,
            thousands(b.tally.received as f64),
            thousands(b.tally.confirmed as f64),
            b.tally.lost,
            b.tally.duplicated,
            mib(peak)
        );
        if let Some(u) = &b.broker {
            let c = &u.rss_curve;
            let step = (c.len() / 16).max(1);
            let pts: Vec<String> = c
                .iter()
                .step_by(step)
                .map(|(t, v)| format!("{t:.0} s: {:.0}", *v as f64 / 1048576.0))
                .collect();
            let _ = writeln!(o, "RSS curve (seconds since the first publish: MiB; the drain starts at about {:.0} s): {}.\n", b.publish.seconds, pts.join(", "));
        }
    }

    let _ = writeln!(o, "\n### Issue #4's targets\n");
    let mut target =
        |name: String, met: Option<bool>, why: String| target_line(&mut o, &name, met, &why);
    for p in POINTS {
        let rt = ratio(
            r.stat(p, f, false, |x| x.consume.msgs_per_s),
            r.stat(p, q, false, |x| x.consume.msgs_per_s),
        );
        target(
            format!("≥ 2× RabbitMQ's throughput, {}", p.label()),
            rt.map(|x| x >= 2.0),
            rt.map_or("no data".into(), |x| format!("{x:.2}×")),
        );
    }
    for p in POINTS {
        let (a, b) = (
            r.stat(p, f, true, |x| x.end_to_end.p99_us),
            r.stat(p, q, true, |x| x.end_to_end.p99_us),
        );
        let (met, why) = p99_verdict(a, b);
        target(
            format!(
                "p99 no worse than RabbitMQ's at half its maximum rate, {}",
                p.label()
            ),
            met,
            why,
        );
    }
    match &r.backlog {
        Some(b) => {
            let peak = b.broker.as_ref().map_or(0, |u| u.peak_rss_bytes);
            let n = b.scenario.count.unwrap_or_default();
            target(
                format!(
                    "backlog of {} 1 KiB persistent messages: RSS < 500 MiB",
                    thousands(n as f64)
                ),
                Some(peak < 500 * 1024 * 1024 && n >= 10_000_000),
                format!(
                    "peak {}{}",
                    mib(peak),
                    if n < 10_000_000 {
                        "; fewer than the 10 M the issue asks"
                    } else {
                        ""
                    }
                ),
            );
        }
        None => target(
            "backlog of 10 M 1 KiB persistent messages: RSS < 500 MiB".into(),
            None,
            "run with `--backlog 10000000`".into(),
        ),
    }
    o
}

/// The chart: delivered msg/s per point, FerryMQ beside RabbitMQ.
pub fn chart(r: &Report) -> String {
    let groups: Vec<Group> = POINTS
        .iter()
        .map(|p| Group {
            label: p.label(),
            bars: [Kind::FerryMq, Kind::RabbitMq]
                .iter()
                .map(|k| {
                    r.stat(*p, *k, false, |x| x.consume.msgs_per_s)
                        .map(|s| Bar {
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
            "AMQP 0-9-1, 1 producer → 1 consumer ({} client)",
            r.client.name()
        ),
        "delivered messages/s",
        &["FerryMQ", "RabbitMQ"],
        &groups,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_lists() {
        assert_eq!(
            Matrix::parse_list("amqp,mqtt,kafka"),
            Ok(Matrix::ALL.to_vec())
        );
        assert_eq!(Matrix::parse_list("kafka"), Ok(vec![Matrix::Kafka]));
        assert_eq!(Matrix::parse_list(" MQTT "), Ok(vec![Matrix::Mqtt]));
        assert_eq!(Matrix::parse_list("mqtt,mqtt"), Ok(vec![Matrix::Mqtt]));
        assert!(Matrix::parse_list("http").is_err());
        assert!(Matrix::parse_list(",").is_err());
    }

    /// The default matrices' measured windows (warm-up included) leave most of the 15-minute
    /// (`--quick`: 2-minute) budget for what each run adds: connections, drains, broker starts.
    #[test]
    fn default_matrices_fit_their_time_budget() {
        for (quick, budget_s) in [(false, 900.0), (true, 120.0)] {
            let windows: f64 = Matrix::ALL
                .iter()
                .map(|&m| {
                    let t = timing(m, quick);
                    runs_planned(m, quick) as f64 * (t.duration_s + t.warmup_s)
                })
                .sum();
            // 65%: a full default run measured 659 s of 900 with 540 s of windows planned
            // (2026-12-07), so connections, drains and broker starts add about a fifth.
            assert!(
                windows <= budget_s * 0.65,
                "quick {quick}: {windows} s of windows for a {budget_s} s budget"
            );
        }
        assert_eq!(runs_planned(Matrix::Mqtt, false), (8 + 8) * 2 * 3);
    }

    #[test]
    fn medians_and_ranges() {
        assert_eq!(
            stat(&[3.0, 1.0, 2.0]),
            Some(Stat {
                median: 2.0,
                min: 1.0,
                max: 3.0,
                n: 3
            })
        );
        assert_eq!(stat(&[4.0, 1.0]).map(|s| s.median), Some(2.5));
        assert_eq!(stat(&[f64::NAN]), None);
        assert_eq!(stat(&[]), None);
    }

    #[test]
    fn section_is_appended_then_replaced_in_place() {
        let doc = "# Benchmarks\n\n## Storage engine\n\nfigures\n";
        let once = replace_section(doc, "## AMQP\n\nv1\n").unwrap();
        assert!(once.starts_with(doc.trim_end()));
        assert!(once.contains(&format!("{START_MARKER}\n## AMQP\n\nv1\n{END_MARKER}\n")));
        let mut edited = once.clone();
        edited.push_str("\n## HTTP\n\nother\n");
        let twice = replace_section(&edited, "## AMQP\n\nv2").unwrap();
        assert!(twice.contains("v2") && !twice.contains("v1"));
        assert!(
            twice.contains("## Storage engine\n\nfigures") && twice.ends_with("## HTTP\n\nother\n")
        );
        assert_eq!(twice.matches(START_MARKER).count(), 1);
        assert!(replace_section(&format!("{END_MARKER}{START_MARKER}"), "x").is_err());
    }

    #[test]
    fn markdown_of_an_empty_report_says_what_is_missing() {
        let r = Report {
            generated: "now".into(),
            client: Client::Native,
            command: "ferrymq-bench compare --quick".into(),
            machine: vec![("nproc".into(), "2".into())],
            versions: vec![],
            repeats: 1,
            duration_s: 2.0,
            warmup_s: 1.0,
            runs: vec![],
            backlog: None,
            elapsed_s: 1.0,
            amqp: true,
            mqtt: None,
            kafka: None,
        };
        let md = markdown(&r);
        assert!(md.starts_with("## AMQP 0-9-1: FerryMQ vs RabbitMQ"));
        assert!(md.contains("./scripts/bench --quick"), "{md}");
        assert!(md.contains("not measured"));
        assert!(chart(&r).contains("not measured"));
    }
}
