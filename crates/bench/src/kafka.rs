//! The Kafka driver, on `rdkafka` (librdkafka, linked dynamically: the `kafka` feature).
//!
//! A run creates its topics `<prefix>-<t>` with `--partitions` partitions each (CreateTopics;
//! deleted again afterwards unless `--keep-queues`). Producer `i` writes to topic `i % topics`,
//! message `n` to partition `(n / run + i) % partitions` with `run` = `--partition-run`
//! (explicit, so that every partition gets its share; out-of-order counting is per producer
//! and partition, [`crate::accounting::RxTracker::with_lanes`], by the partition each record
//! is consumed from). The consumers of a topic share its
//! partitions by manual assignment (consumer `r` of `k` on a topic reads the partitions
//! `p % k == r`, from the beginning), so no group rebalance delays the start and each message
//! is due to exactly one consumer, as with a queue.
//!
//! Every producer and consumer is one librdkafka client on a blocking thread of its own (the
//! client has its own I/O threads; the calling thread only enqueues and serves delivery
//! reports). With `acks` 1 or all, a message is *confirmed* by its successful delivery report,
//! and the confirm latency runs from its stamp to that report; with `acks=0` nothing is
//! confirmed (librdkafka reports success on send). A failed delivery report counts as nacked.
//! The publish rate counts acknowledged records (enqueued ones with `acks=0`): librdkafka
//! buffers up to 100,000 records, which an enqueue rate would count before the broker has them.
//! Fixed rates stamp each message with its intended send time (no coordinated omission), as
//! every driver does.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::accounting::{Ledger, RxTracker};
use crate::harness::{drive, ConsumerOut, Driver, ProducerOut};
use crate::latency::Latency;
use crate::payload::{self, Header, Payload};
use crate::rate::Schedule;
use crate::run::{Ctx, Protocol, RunResult, Scenario, Window, WindowCount};

/// Time allowed to create topics and to connect.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Most due messages a producer enqueues before serving delivery reports and the clock.
const BATCH: u64 = 256;

/// Where a `kafka://[user:password@]host:port[,host:port…]` URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaUrl {
    /// librdkafka's `bootstrap.servers`.
    pub bootstrap: String,
    /// SASL/PLAIN credentials, if given.
    pub user: Option<String>,
    pub password: Option<String>,
}

impl KafkaUrl {
    /// # Errors
    /// Not `kafka://`, no host, a path.
    pub fn parse(url: &str) -> Result<KafkaUrl> {
        let Some((scheme, rest)) = url.split_once("://") else {
            bail!("not a Kafka URL: {url:?} (kafka://host:port)");
        };
        if !scheme.eq_ignore_ascii_case("kafka") {
            bail!("{url:?}: only kafka:// (plain TCP) is supported");
        }
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            bail!("{url:?}: a Kafka URL has no path");
        }
        let (cred, hosts) = match rest.rsplit_once('@') {
            Some((c, h)) => (Some(c), h),
            None => (None, rest),
        };
        if hosts.is_empty() || hosts.split(',').any(str::is_empty) {
            bail!("{url:?}: no host");
        }
        let bootstrap = hosts
            .split(',')
            .map(|h| {
                if h.rsplit_once(':')
                    .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
                {
                    h.to_string()
                } else {
                    format!("{h}:9092")
                }
            })
            .collect::<Vec<_>>()
            .join(",");
        let (user, password) = match cred.map(|c| c.split_once(':').unwrap_or((c, ""))) {
            Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
            None => (None, None),
        };
        Ok(KafkaUrl {
            bootstrap,
            user,
            password,
        })
    }

    fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap)
            .set("socket.nagle.disable", "true");
        if let Some(u) = &self.user {
            c.set("security.protocol", "SASL_PLAINTEXT")
                .set("sasl.mechanism", "PLAIN")
                .set("sasl.username", u)
                .set("sasl.password", self.password.as_deref().unwrap_or(""));
        }
        c
    }
}

/// How long a client may take to learn its topic's metadata before the run starts.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Topic `t`'s name.
pub fn topic(s: &Scenario, t: usize) -> String {
    format!("{}-{}", s.queue_prefix, t % s.queues)
}

/// The partition of producer `id`'s message `seq`.
pub fn partition_of(s: &Scenario, id: usize, seq: u64) -> i32 {
    ((seq / s.partition_run.max(1) as u64 + id as u64) % s.partitions as u64) as i32
}

/// The partitions consumer `id` reads: consumers `j` with `j % topics == id % topics` share
/// the topic, the `r`-th of `k` taking partitions `p % k == r`.
pub fn partitions_of(s: &Scenario, id: usize) -> Vec<i32> {
    let on_topic: Vec<usize> = (0..s.consumers)
        .filter(|j| j % s.queues == id % s.queues)
        .collect();
    let k = on_topic.len().max(1);
    let r = on_topic.iter().position(|&j| j == id).unwrap_or(0);
    (0..s.partitions)
        .filter(|p| p % k == r)
        .map(|p| p as i32)
        .collect()
}

fn acks(s: &Scenario) -> &'static str {
    match s.acks {
        0 => "0",
        1 => "1",
        _ => "all",
    }
}

/// What a producer's delivery reports settle (served on the producer's own thread by `poll`).
struct Reports {
    ctx: Arc<Ctx>,
    window: Window,
    producer: u32,
    confirms: bool,
    /// The ledger, confirm latencies, and acknowledged records inside the window.
    state: Mutex<(Ledger, Latency, WindowCount)>,
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = ();

    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        let (ok, m) = match r {
            Ok(m) => (true, m),
            Err((_, m)) => (false, m),
        };
        let Some(h) = m.payload().and_then(payload::decode) else {
            return;
        };
        if h.producer != self.producer {
            return;
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !ok {
            st.0.nacked += 1;
        } else if self.confirms && !st.0.confirmed.set(h.seq) {
            self.ctx.confirmed.fetch_add(1, Ordering::Relaxed);
            let now = self.ctx.now_ns();
            if self.window.contains(h.send_ns) {
                st.1.record(now.saturating_sub(h.send_ns));
            }
            if self.window.contains(now) {
                st.2.add(1, now);
            }
        }
    }
}

fn sleep_until(ctx: &Ctx, ns: u64) {
    let now = ctx.now_ns();
    if ns > now {
        std::thread::sleep(Duration::from_nanos(ns - now));
    }
}

fn producer(
    ctx: Arc<Ctx>,
    s: Arc<Scenario>,
    id: usize,
    schedule: Schedule,
    quota: Option<u64>,
) -> Result<ProducerOut> {
    let what = format!("Kafka producer {id}");
    let url = KafkaUrl::parse(&s.url)?;
    let w = ctx.window();
    let reports = Reports {
        ctx: ctx.clone(),
        window: w,
        producer: id as u32,
        confirms: s.acks != 0,
        state: Mutex::new((Ledger::default(), Latency::new(), WindowCount::default())),
    };
    let mut cfg = url.config();
    cfg.set("acks", acks(&s))
        .set("enable.idempotence", "false")
        .set("compression.type", "none")
        .set(
            "message.max.bytes",
            (s.size + 1024).max(1_000_000).to_string(),
        );
    if let Some(l) = s.linger_ms {
        cfg.set("linger.ms", l.to_string());
    }
    if let Some(b) = s.batch_bytes {
        cfg.set("batch.size", b.to_string());
    }
    let p: BaseProducer<Reports> = cfg
        .create_with_context(reports)
        .with_context(|| format!("{what}: creating the client"))?;
    let topic = topic(&s, id);
    // Learn the partitions' leader before the first record: records for a partition whose
    // leader librdkafka does not know yet wait for its next metadata refresh.
    p.client()
        .fetch_metadata(Some(&topic), METADATA_TIMEOUT)
        .with_context(|| format!("{what}: metadata of {topic}"))?;
    let mut buf = Payload::new(s.size);
    let mut published = WindowCount::default();
    let mut seq = 0u64;
    if w.producers_start_ns != u64::MAX {
        sleep_until(&ctx, w.producers_start_ns);
    }
    let mut error = None;
    'run: loop {
        let now = ctx.now_ns();
        if ctx.stopping() || (quota.is_none() && now >= w.end_ns) || quota.is_some_and(|q| seq >= q)
        {
            break;
        }
        let due = schedule.due(now);
        if due <= seq {
            // Serve delivery reports while waiting for the next intended send time.
            let next = schedule.intended_ns(seq).unwrap_or(now);
            let wait =
                Duration::from_nanos(next.saturating_sub(now)).min(Duration::from_millis(50));
            if wait >= Duration::from_millis(1) {
                p.poll(wait);
            } else {
                p.poll(Duration::ZERO);
                std::thread::sleep(wait);
            }
            continue;
        }
        let mut n = (due - seq).min(BATCH);
        if let Some(q) = quota {
            n = n.min(q - seq);
        }
        for _ in 0..n {
            let stamp = schedule.stamp_ns(seq, ctx.now_ns());
            let body = buf.stamp(Header {
                producer: id as u32,
                seq,
                send_ns: stamp,
            });
            let mut rec = BaseRecord::<(), [u8]>::to(&topic)
                .payload(body)
                .partition(partition_of(&s, id, seq));
            loop {
                match p.send(rec) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        // librdkafka's queue is full: serve reports until there is room.
                        rec = r;
                        p.poll(Duration::from_millis(1));
                        if ctx.stopping() {
                            break 'run;
                        }
                    }
                    Err((e, _)) => {
                        error = Some(anyhow::Error::new(e));
                        break 'run;
                    }
                }
            }
            seq += 1;
            ctx.sent.fetch_add(1, Ordering::Relaxed);
        }
        let after = ctx.now_ns();
        if w.contains(after) {
            published.add(n, after);
        }
        p.poll(Duration::ZERO);
    }
    // Wait for the delivery reports (or `drain_idle` without progress).
    let mut last = (p.in_flight_count(), Instant::now());
    loop {
        p.poll(Duration::from_millis(10));
        let left = p.in_flight_count();
        if left == 0 {
            break;
        }
        if left != last.0 {
            last = (left, Instant::now());
        } else if last.1.elapsed() > s.drain_idle {
            break;
        }
    }
    let (mut ledger, confirm, acked) = {
        let mut st = p.context().state.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *st)
    };
    ledger.sent = seq;
    if let Some(e) = error {
        ctx.stop.store(true, Ordering::Relaxed);
        return Err(e.context(format!("{what} producing to {topic}")));
    }
    Ok(ProducerOut {
        ledger,
        confirm,
        // With acks, the rate of acknowledged records: librdkafka queues up to 100,000
        // records, so the rate of enqueued ones would run ahead of the broker.
        published: if s.acks != 0 { acked } else { published },
    })
}

fn consumer(
    ctx: Arc<Ctx>,
    s: Arc<Scenario>,
    id: usize,
    ready: oneshot::Sender<()>,
    stop: watch::Receiver<bool>,
) -> Result<ConsumerOut> {
    let what = format!("Kafka consumer {id}");
    let url = KafkaUrl::parse(&s.url)?;
    let mut cfg = url.config();
    cfg.set("group.id", format!("{}-g", s.queue_prefix))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest");
    if let Some(b) = s.fetch_bytes {
        // librdkafka refuses a fetch.max.bytes below max.partition.fetch.bytes; its default
        // is 50 MiB.
        cfg.set("max.partition.fetch.bytes", b.to_string())
            .set("fetch.max.bytes", b.max(52_428_800).to_string());
    }
    let c: BaseConsumer = cfg
        .create()
        .with_context(|| format!("{what}: creating the client"))?;
    let topic = topic(&s, id);
    // Learn the partitions' leader before assigning them: librdkafka puts off the offset
    // lookup of a partition without a known leader by 500 ms, and meanwhile the producers
    // would run that far ahead (at full rate, hundreds of MB of backlog that this consumer
    // then reads from disk instead of the broker's tail cache).
    c.fetch_metadata(Some(&topic), METADATA_TIMEOUT)
        .with_context(|| format!("{what}: metadata of {topic}"))?;
    let mut tpl = TopicPartitionList::new();
    for p in partitions_of(&s, id) {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)
            .with_context(|| format!("{what}: partition {p}"))?;
    }
    c.assign(&tpl)
        .with_context(|| format!("{what}: assigning {topic}"))?;
    let _ = ready.send(());
    let mut out = ConsumerOut {
        rx: RxTracker::with_lanes(s.producers, s.partitions),
        ..ConsumerOut::new(&s)
    };
    let mut w: Option<Window> = None;
    let mut errors = 0u64;
    let mut first_error = None;
    while !*stop.borrow() {
        let m = match c.poll(Duration::from_millis(50)) {
            None => continue,
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                // librdkafka reports transient errors (a connection lost) and goes on.
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
                continue;
            }
        };
        let now = ctx.now_ns();
        let w = *w.get_or_insert_with(|| ctx.window());
        ctx.received.fetch_add(1, Ordering::Relaxed);
        match m.payload().and_then(payload::decode) {
            Some(h) => {
                out.rx
                    .record_in(h.producer, h.seq, m.partition().max(0) as usize);
                if w.contains(h.send_ns) {
                    out.latency(&s, h.send_ns, now);
                }
            }
            None => out.rx.foreign += 1,
        }
        if w.contains(now) || (w.end_ns == u64::MAX && now >= w.start_ns) {
            out.received.add(1, now);
        }
    }
    if let Some(e) = first_error {
        eprintln!("{what}: {errors} consumer error(s), the first: {e}");
    }
    Ok(out)
}

/// Creates the run's topics (an existing one is fine).
async fn create_topics(s: &Scenario) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = KafkaUrl::parse(&s.url)?
        .config()
        .create()
        .context("creating the Kafka admin client")?;
    let names: Vec<String> = (0..s.queues).map(|t| topic(s, t)).collect();
    let new: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| NewTopic::new(n, s.partitions as i32, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(SETUP_TIMEOUT));
    let res = tokio::time::timeout(SETUP_TIMEOUT, admin.create_topics(&new, &opts))
        .await
        .context("CreateTopics: no answer")?
        .context("CreateTopics")?;
    for r in res {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => bail!("creating topic {t}: {e}"),
        }
    }
    Ok(())
}

async fn delete_topics(s: &Scenario) {
    let Ok(url) = KafkaUrl::parse(&s.url) else {
        return;
    };
    let Ok(admin): Result<AdminClient<DefaultClientContext>, _> = url.config().create() else {
        return;
    };
    let names: Vec<String> = (0..s.queues).map(|t| topic(s, t)).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let _ = tokio::time::timeout(Duration::from_secs(15), admin.delete_topics(&refs, &opts)).await;
}

struct KafkaDriver;

impl Driver for KafkaDriver {
    fn protocol(&self) -> Protocol {
        Protocol::Kafka
    }

    fn producer(
        &self,
        ctx: Arc<Ctx>,
        s: Arc<Scenario>,
        id: usize,
        schedule: Schedule,
        quota: Option<u64>,
    ) -> JoinHandle<Result<ProducerOut>> {
        tokio::task::spawn_blocking(move || producer(ctx, s, id, schedule, quota))
    }

    fn consumer(
        &self,
        ctx: Arc<Ctx>,
        s: Arc<Scenario>,
        id: usize,
        ready: oneshot::Sender<()>,
        stop: watch::Receiver<bool>,
    ) -> JoinHandle<Result<ConsumerOut>> {
        tokio::task::spawn_blocking(move || consumer(ctx, s, id, ready, stop))
    }
}

/// Runs one Kafka scenario to the end.
///
/// # Errors
/// Topic creation, client creation or produce failures.
pub async fn run(scenario: Scenario, ctx: Arc<Ctx>) -> Result<RunResult> {
    scenario.validate()?;
    KafkaUrl::parse(&scenario.url)?;
    let s = Arc::new(scenario);
    create_topics(&s).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let result = drive(&KafkaDriver, &s, &ctx, &stop_tx, stop_rx).await;
    let _ = stop_tx.send(true);
    if !s.keep_queues {
        delete_topics(&s).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = KafkaUrl::parse("kafka://127.0.0.1:9092").unwrap();
        assert_eq!(u.bootstrap, "127.0.0.1:9092");
        assert_eq!(u.user, None);
        let u = KafkaUrl::parse("kafka://bob:secret@a:1,b/").unwrap();
        assert_eq!(u.bootstrap, "a:1,b:9092");
        assert_eq!(
            (u.user.as_deref(), u.password.as_deref()),
            (Some("bob"), Some("secret"))
        );
        assert!(KafkaUrl::parse("amqp://x").is_err());
        assert!(KafkaUrl::parse("kafka://").is_err());
        assert!(KafkaUrl::parse("kafka://h:1/topic").is_err());
    }

    #[test]
    fn partitions_spread_and_shared() {
        let mut s = Scenario::new("kafka://h:1");
        s.partitions = 8;
        s.consumers = 3;
        // Producer 1: messages 0.. go to partitions 1, 2, …, 7, 0, 1.
        let ps: Vec<i32> = (0..9).map(|n| partition_of(&s, 1, n)).collect();
        assert_eq!(ps, [1, 2, 3, 4, 5, 6, 7, 0, 1]);
        // Three consumers on one topic: every partition read by exactly one.
        let mut all: Vec<i32> = (0..3).flat_map(|c| partitions_of(&s, c)).collect();
        all.sort_unstable();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
        assert_eq!(partitions_of(&s, 1), [1, 4, 7]);
        // Two topics: consumers 0 and 2 share topic 0, consumer 1 has topic 1 alone.
        s.queues = 2;
        assert_eq!(partitions_of(&s, 1), (0..8).collect::<Vec<_>>());
        assert_eq!(partitions_of(&s, 2), [1, 3, 5, 7]);
        // Sticky runs of 3 records, from partition 1 for producer 1.
        s.partition_run = 3;
        let ps: Vec<i32> = (0..7).map(|n| partition_of(&s, 1, n)).collect();
        assert_eq!(ps, [1, 1, 1, 2, 2, 2, 3]);
    }
}
