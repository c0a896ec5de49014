//! The AMQP 0-9-1 run (one connection and channel per producer and per consumer, the default
//! exchange, one queue per `--queues`) and its `lapin` driver (`--client lapin`); the default
//! driver is [`crate::native`]. Both hand the same [`ProducerOut`] / [`ConsumerOut`] back.
//!
//! With `lapin`:
//! Producers publish in batches of up to [`BATCH`] due messages: every `basic_publish` of a
//! batch is started before any is awaited, so the client writes them together, and each
//! producer keeps at most `confirm_window` messages unconfirmed. Confirms are awaited in
//! order by a per-producer task. Consumers ack every `ack_every` deliveries with `multiple`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use futures_util::future::join_all;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use lapin::{Confirmation, PublisherConfirm};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::accounting::{tally, Ledger, RxTracker};
use crate::latency::Latency;
use crate::monitor;
use crate::native;
use crate::payload::{self, Header, Payload};
use crate::rate::{per_producer, Schedule};
use crate::run::{BrokerUsage, Client, Ctx, Protocol, RunResult, Scenario, Window, WindowCount};

/// Most messages started together by one producer.
pub const BATCH: usize = 64;
/// Time allowed to connect and declare.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

async fn connect(url: &str) -> Result<Connection> {
    tokio::time::timeout(
        SETUP_TIMEOUT,
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .with_context(|| format!("connecting to {url}: timed out"))?
    .with_context(|| format!("connecting to {url}"))
}

pub(crate) fn queue_name(s: &Scenario, i: usize) -> String {
    format!("{}-{}", s.queue_prefix, i % s.queues)
}

/// What a producer hands back.
pub(crate) struct ProducerOut {
    pub(crate) ledger: Ledger,
    pub(crate) confirm: Latency,
    pub(crate) published: WindowCount,
}

/// What a consumer hands back.
pub(crate) struct ConsumerOut {
    pub(crate) rx: RxTracker,
    pub(crate) e2e: Latency,
    pub(crate) received: WindowCount,
    /// (send stamp, end-to-end latency) of deliveries slower than `slow_log_ms`, at most
    /// [`SLOW_LOG_MAX`].
    pub(crate) slow: Vec<(u64, u64)>,
}

/// Most slow deliveries kept per consumer for `--slow-log-ms`.
pub(crate) const SLOW_LOG_MAX: usize = 1_000_000;

impl ConsumerOut {
    pub(crate) fn new(s: &Scenario) -> ConsumerOut {
        ConsumerOut {
            rx: RxTracker::new(s.producers),
            e2e: Latency::new(),
            received: WindowCount::default(),
            slow: Vec::new(),
        }
    }

    /// Records one delivery's end-to-end latency.
    pub(crate) fn latency(&mut self, s: &Scenario, send_ns: u64, now_ns: u64) {
        let lat = now_ns.saturating_sub(send_ns);
        self.e2e.record(lat);
        if let Some(ms) = s.slow_log_ms {
            if lat >= ms * 1_000_000 && self.slow.len() < SLOW_LOG_MAX {
                self.slow.push((send_ns, lat));
            }
        }
    }
}

/// Groups slow deliveries into episodes (sends less than 100 ms apart) and prints them.
fn print_slow(ctx: &Ctx, s: &Scenario, slow: &mut [(u64, u64)]) {
    let Some(ms) = s.slow_log_ms else { return };
    slow.sort_unstable();
    eprintln!(
        "deliveries with end-to-end latency >= {ms} ms: {} (episodes: by send time, run clock and UTC)",
        slow.len()
    );
    let mut i = 0;
    while i < slow.len() {
        let mut j = i + 1;
        while j < slow.len() && slow[j].0 - slow[j - 1].0 < 100_000_000 {
            j += 1;
        }
        let ep = &slow[i..j];
        let (first, last) = (ep[0].0, ep[ep.len() - 1].0);
        let max = ep.iter().map(|e| e.1).max().unwrap_or(0);
        eprintln!(
            "  sent {:>9.3}–{:>9.3} s ({} UTC): {:>6} messages, max e2e {:>8.1} ms",
            first as f64 / 1e9,
            last as f64 / 1e9,
            ctx.wall(first),
            ep.len(),
            max as f64 / 1e6
        );
        i = j;
    }
}

async fn producer(
    ctx: Arc<Ctx>,
    s: Arc<Scenario>,
    id: usize,
    schedule: Schedule,
    quota: Option<u64>,
) -> Result<ProducerOut> {
    let conn = connect(&s.url).await?;
    let ch = conn.create_channel().await?;
    if s.confirms {
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
    }
    let queue = queue_name(&s, id);
    let props = BasicProperties::default().with_delivery_mode(if s.persistent { 2 } else { 1 });
    let window = Arc::new(Semaphore::new(s.confirm_window));
    let (tx, rx) = mpsc::unbounded_channel::<(u64, u64, PublisherConfirm, OwnedSemaphorePermit)>();
    let confirmer: JoinHandle<(Ledger, Latency)> = tokio::spawn(confirm_tracker(ctx.clone(), rx));
    let mut buffers: Vec<Payload> = (0..BATCH).map(|_| Payload::new(s.size)).collect();
    let mut published = WindowCount::default();
    let (mut seq, mut failed) = (0u64, 0u64);
    let w = ctx.window();
    let mut error = None;
    // Producers start together at the window's start (a fast handshake must not stamp
    // messages before it: they would fall outside the window).
    if w.producers_start_ns != u64::MAX {
        tokio::time::sleep_until(ctx.at(w.producers_start_ns).into()).await;
    }
    loop {
        let now = ctx.now_ns();
        if ctx.stopping() || (quota.is_none() && now >= w.end_ns) || quota.is_some_and(|q| seq >= q)
        {
            break;
        }
        let due = schedule.due(now);
        if due <= seq {
            let next = schedule.intended_ns(seq).unwrap_or(now);
            tokio::time::sleep_until(ctx.at(next).into()).await;
            continue;
        }
        let mut n = (due - seq).min(BATCH as u64) as usize;
        if let Some(q) = quota {
            n = n.min((q - seq) as usize);
        }
        let mut permits = Vec::with_capacity(n);
        if s.confirms {
            // Block for the first free slot, then take what else is free now.
            permits.push(window.clone().acquire_owned().await.expect("never closed"));
            while permits.len() < n {
                match window.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            n = permits.len();
        }
        let mut stamps = Vec::with_capacity(n);
        let futs: Vec<_> = buffers[..n]
            .iter_mut()
            .enumerate()
            .map(|(k, buf)| {
                let i = seq + k as u64;
                let stamp = schedule.stamp_ns(i, ctx.now_ns());
                stamps.push(stamp);
                let body = buf.stamp(Header {
                    producer: id as u32,
                    seq: i,
                    send_ns: stamp,
                });
                ch.basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    body,
                    props.clone(),
                )
            })
            .collect();
        let results = join_all(futs).await;
        let after = ctx.now_ns();
        let mut permits = permits.into_iter();
        for (k, r) in results.into_iter().enumerate() {
            match r {
                Ok(pc) => match permits.next() {
                    Some(p) => {
                        let _ = tx.send((seq + k as u64, stamps[k], pc, p));
                    }
                    // Already resolved (`NotRequested`); awaited so that lapin does not keep
                    // it in its list of dropped confirms.
                    None => {
                        let _ = pc.await;
                    }
                },
                Err(e) => {
                    failed += 1;
                    error.get_or_insert(e);
                }
            }
        }
        let ok = (n as u64).saturating_sub(failed);
        ctx.sent.fetch_add(ok, Ordering::Relaxed);
        if w.contains(after) {
            published.add(ok, after);
        }
        seq += n as u64;
        if error.is_some() {
            break;
        }
    }
    drop(tx);
    let (mut ledger, confirm) = confirmer.await?;
    ledger.sent = seq;
    ledger.failed = failed;
    let _ = conn.close(200, "bench done".into()).await;
    if let Some(e) = error {
        ctx.stop.store(true, Ordering::Relaxed);
        return Err(anyhow::Error::new(e).context(format!("producer {id} publishing to {queue}")));
    }
    Ok(ProducerOut {
        ledger,
        confirm,
        published,
    })
}

async fn confirm_tracker(
    ctx: Arc<Ctx>,
    mut rx: mpsc::UnboundedReceiver<(u64, u64, PublisherConfirm, OwnedSemaphorePermit)>,
) -> (Ledger, Latency) {
    let mut ledger = Ledger::default();
    let mut lat = Latency::new();
    let w = ctx.window();
    while let Some((seq, stamp, pc, permit)) = rx.recv().await {
        match pc.await {
            Ok(Confirmation::Ack(_)) => {
                let now = ctx.now_ns();
                ledger.confirmed.set(seq);
                ctx.confirmed.fetch_add(1, Ordering::Relaxed);
                if w.contains(stamp) {
                    lat.record(now.saturating_sub(stamp));
                }
            }
            Ok(Confirmation::Nack(_)) => ledger.nacked += 1,
            Ok(Confirmation::NotRequested) | Err(_) => {}
        }
        drop(permit);
    }
    (ledger, lat)
}

async fn consumer(
    ctx: Arc<Ctx>,
    s: Arc<Scenario>,
    id: usize,
    ready: tokio::sync::oneshot::Sender<()>,
    mut stop: watch::Receiver<bool>,
) -> Result<ConsumerOut> {
    let conn = connect(&s.url).await?;
    let ch = conn.create_channel().await?;
    if s.prefetch > 0 {
        ch.basic_qos(s.prefetch, BasicQosOptions::default()).await?;
    }
    let queue = queue_name(&s, id);
    let no_ack = s.ack_every == 0;
    let mut c = ch
        .basic_consume(
            queue.as_str().into(),
            format!("bench-consumer-{id}").as_str().into(),
            BasicConsumeOptions {
                no_ack,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("consuming from {queue}"))?;
    let _ = ready.send(());
    let mut out = ConsumerOut::new(&s);
    let (mut unacked, mut last_tag) = (0u32, 0u64);
    let mut w: Option<Window> = None;
    loop {
        let d = tokio::select! {
            biased;
            d = c.next() => d,
            _ = stop.changed() => break,
        };
        let d = match d {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(anyhow::Error::new(e).context(format!("consumer {id}"))),
            None => break,
        };
        let now = ctx.now_ns();
        let w = *w.get_or_insert_with(|| ctx.window());
        ctx.received.fetch_add(1, Ordering::Relaxed);
        match payload::decode(&d.data) {
            Some(h) => {
                out.rx.record(h.producer, h.seq);
                if w.contains(h.send_ns) {
                    out.latency(&s, h.send_ns, now);
                }
            }
            None => out.rx.foreign += 1,
        }
        if w.contains(now) || (w.end_ns == u64::MAX && now >= w.start_ns) {
            out.received.add(1, now);
        }
        if !no_ack {
            unacked += 1;
            last_tag = d.delivery_tag;
            if unacked >= s.ack_every {
                ch.basic_ack(last_tag, BasicAckOptions { multiple: true })
                    .await?;
                unacked = 0;
            }
        }
    }
    if unacked > 0 {
        let _ = ch
            .basic_ack(last_tag, BasicAckOptions { multiple: true })
            .await;
    }
    let _ = conn.close(200, "bench done".into()).await;
    Ok(out)
}

/// The connection that declares the queues and deletes them at the end.
enum Setup {
    Lapin(Connection),
    Native(native::Session),
}

/// Declares the queues (durable when persistent) on a setup connection of the scenario's client.
async fn declare(s: &Scenario) -> Result<Setup> {
    match s.client {
        Client::Lapin => declare_lapin(s).await.map(Setup::Lapin),
        Client::Native => {
            let mut session = native::open(&s.url).await?;
            for q in 0..s.queues {
                session
                    .declare_queue(&queue_name(s, q), s.persistent)
                    .await?;
            }
            Ok(Setup::Native(session))
        }
    }
}

/// Deletes the queues (unless kept) and closes the setup connection.
async fn teardown(s: &Scenario, setup: Setup) {
    match setup {
        Setup::Lapin(conn) => {
            if !s.keep_queues {
                if let Ok(ch) = conn.create_channel().await {
                    for q in 0..s.queues {
                        let _ = ch
                            .queue_delete(
                                queue_name(s, q).as_str().into(),
                                QueueDeleteOptions::default(),
                            )
                            .await;
                    }
                }
            }
            let _ = conn.close(200, "bench done".into()).await;
        }
        Setup::Native(mut session) => {
            if !s.keep_queues {
                for q in 0..s.queues {
                    if session.delete_queue(&queue_name(s, q)).await.is_err() {
                        break;
                    }
                }
            }
            session.close().await;
        }
    }
}

async fn declare_lapin(s: &Scenario) -> Result<Connection> {
    let conn = connect(&s.url).await?;
    let ch = conn.create_channel().await?;
    for q in 0..s.queues {
        let name = queue_name(s, q);
        ch.queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                durable: s.persistent,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("declaring queue {name}"))?;
    }
    Ok(conn)
}

async fn spawn_consumers(
    ctx: &Arc<Ctx>,
    s: &Arc<Scenario>,
    stop: &watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<Result<ConsumerOut>>>> {
    let mut handles = Vec::new();
    let mut readies = Vec::new();
    for id in 0..s.consumers {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (ctx, s, stop) = (ctx.clone(), s.clone(), stop.clone());
        handles.push(match s.client {
            Client::Native => tokio::spawn(native::consumer(ctx, s, id, tx, stop)),
            Client::Lapin => tokio::spawn(consumer(ctx, s, id, tx, stop)),
        });
        readies.push(rx);
    }
    for (id, r) in readies.into_iter().enumerate() {
        if r.await.is_err() {
            // The consumer failed before it was ready: surface its error.
            let h = handles.remove(id);
            for h in handles {
                h.abort();
            }
            return Err(match h.await {
                Ok(Err(e)) => e,
                Ok(Ok(_)) => anyhow::anyhow!("consumer {id} ended early"),
                Err(e) => anyhow::Error::new(e),
            });
        }
    }
    Ok(handles)
}

/// Runs one AMQP scenario to the end.
///
/// # Errors
/// Connection, declaration or publish failures; the queues are deleted anyway when possible.
pub async fn run(scenario: Scenario, ctx: Arc<Ctx>) -> Result<RunResult> {
    scenario.validate()?;
    let s = Arc::new(scenario);
    let setup = declare(&s).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let result = run_declared(&s, &ctx, &stop_tx, stop_rx).await;
    let _ = stop_tx.send(true);
    teardown(&s, setup).await;
    result
}

async fn run_declared(
    s: &Arc<Scenario>,
    ctx: &Arc<Ctx>,
    stop_tx: &watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
) -> Result<RunResult> {
    let (mon_tx, mon_rx) = watch::channel(false);
    let mut consumers = if s.consume_after_publish {
        Vec::new()
    } else {
        spawn_consumers(ctx, s, &stop_rx).await?
    };
    let sampler = s
        .broker_pid
        .map(|pid| monitor::sampler(ctx.clone(), pid, mon_rx.clone()));
    let progress = if s.progress {
        monitor::progress(ctx.clone(), mon_rx.clone())
    } else {
        None
    };

    // The window starts now: warm-up, then the measured duration.
    let p0 = ctx.now_ns() + 1_000_000;
    let start = p0 + s.warmup.as_nanos() as u64;
    let end = if s.count.is_some() {
        u64::MAX
    } else {
        start + s.duration.as_nanos() as u64
    };
    let window = Window {
        producers_start_ns: p0,
        start_ns: start,
        end_ns: end,
    };
    ctx.window.set(window).expect("one window per run");
    // The load generator's own CPU over the window (duration runs only).
    let client_cpu = (s.count.is_none()).then(|| {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(ctx.at(window.start_ns).into()).await;
            let a = crate::procstat::self_cpu_s()?;
            tokio::time::sleep_until(ctx.at(window.end_ns).into()).await;
            let b = crate::procstat::self_cpu_s()?;
            let secs = (window.end_ns - window.start_ns) as f64 / 1e9;
            Some((b - a).max(0.0) / secs * 100.0)
        })
    });
    let mut producers = Vec::new();
    for id in 0..s.producers {
        let schedule = match s.rate {
            Some(r) => Schedule::fixed(p0, per_producer(r, s.producers)),
            None => Schedule::Max,
        };
        let quota = s
            .count
            .map(|n| n / s.producers as u64 + u64::from((id as u64) < n % s.producers as u64));
        let (ctx, s) = (ctx.clone(), s.clone());
        producers.push(match s.client {
            Client::Native => tokio::spawn(native::producer(ctx, s, id, schedule, quota)),
            Client::Lapin => tokio::spawn(producer(ctx, s, id, schedule, quota)),
        });
    }
    let mut outs = Vec::new();
    let mut first_err = None;
    for p in producers {
        match p.await? {
            Ok(o) => outs.push(o),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    let publish_end = ctx.now_ns();
    if let Some(e) = first_err {
        let _ = stop_tx.send(true);
        let _ = mon_tx.send(true);
        return Err(e);
    }
    let consume_start = ctx.now_ns();
    if s.consume_after_publish {
        consumers = spawn_consumers(ctx, s, &stop_rx).await?;
    }

    // Drain: until every sent message arrived, or nothing arrives for `drain_idle`.
    let sent = ctx.sent.load(Ordering::Relaxed);
    let mut drain_incomplete = false;
    if s.consumers > 0 {
        let mut last = (ctx.received.load(Ordering::Relaxed), ctx.now_ns());
        loop {
            let got = ctx.received.load(Ordering::Relaxed);
            if got >= sent {
                break;
            }
            let now = ctx.now_ns();
            if got != last.0 {
                last = (got, now);
            } else if now - last.1 > s.drain_idle.as_nanos() as u64
                || (ctx.stopping() && now - publish_end > 1_000_000_000)
            {
                drain_incomplete = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let consume_end = ctx.now_ns();
    let _ = stop_tx.send(true);
    let mut cons = Vec::new();
    for c in consumers {
        cons.push(c.await??);
    }

    // Broker usage over the window.
    let _ = mon_tx.send(true);
    if let Some(p) = progress {
        let _ = p.await;
    }
    let broker = match sampler {
        Some(h) => {
            let samples = h.await?;
            let last = if s.count.is_some() {
                publish_end.max(consume_end)
            } else {
                window.end_ns
            };
            Some(broker_usage(
                s.broker_pid.unwrap_or_default(),
                &samples,
                &window,
                last,
            ))
        }
        None => None,
    };

    let client_cpu_percent = match client_cpu {
        Some(h) => h.await.ok().flatten(),
        None => None,
    };
    let ledgers: Vec<Ledger> = outs.iter().map(|o| o.ledger.clone()).collect();
    let trackers: Vec<RxTracker> = cons.iter().map(|c| c.rx.clone()).collect();
    let t = tally(&ledgers, &trackers, s.consumers > 0);
    let (mut published, mut received) = (WindowCount::default(), WindowCount::default());
    let (mut confirm, mut e2e) = (Latency::new(), Latency::new());
    for o in &outs {
        published.merge(&o.published);
        confirm.merge(&o.confirm);
    }
    for c in &cons {
        received.merge(&c.received);
        e2e.merge(&c.e2e);
    }
    let mut slow: Vec<(u64, u64)> = cons.iter().flat_map(|c| c.slow.iter().copied()).collect();
    print_slow(ctx, s, &mut slow);
    Ok(RunResult {
        protocol: Protocol::Amqp,
        scenario: (**s).clone(),
        tally: t,
        publish: published.rate(&window, p0, s.size),
        consume: received.rate(
            &window,
            if s.consume_after_publish {
                consume_start
            } else {
                p0
            },
            s.size,
        ),
        end_to_end: e2e.summary(),
        confirm: confirm.summary(),
        broker,
        client_cpu_percent,
        elapsed_s: (ctx.now_ns() - p0) as f64 / 1e9,
        drain_incomplete,
    })
}

/// CPU over `[w.start_ns, end_ns)` and memory over the whole run, from the samples.
fn broker_usage(pid: u32, samples: &monitor::Samples, w: &Window, end_ns: u64) -> BrokerUsage {
    let cpu_s = match (samples.cpu_at(w.start_ns), samples.cpu_at(end_ns)) {
        (Some(a), Some(b)) => (b - a).max(0.0),
        _ => 0.0,
    };
    let secs = end_ns.saturating_sub(w.start_ns) as f64 / 1e9;
    BrokerUsage {
        pid,
        cpu_s,
        cpu_percent: if secs > 0.0 {
            cpu_s / secs * 100.0
        } else {
            0.0
        },
        peak_rss_bytes: samples.peak_rss,
        end_rss_bytes: samples.points.last().map_or(0, |p| p.1.rss_bytes),
        rss_curve: samples.rss_curve(w.producers_start_ns),
    }
}
