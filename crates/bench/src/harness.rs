//! The protocol-neutral part of a run: a [`Driver`] spawns producers and consumers for its
//! protocol, [`drive`] runs them on one measurement window (warm-up, measured time or a count,
//! drain), samples the broker, and merges what they hand back into a [`RunResult`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::accounting::{tally, tally_fanout, Ledger, RxTracker};
use crate::latency::Latency;
use crate::monitor;
use crate::rate::{per_producer, Schedule};
use crate::run::{BrokerUsage, Ctx, Protocol, RunResult, Scenario, Window, WindowCount};

/// One protocol's producers and consumers.
pub(crate) trait Driver {
    fn protocol(&self) -> Protocol;
    /// Producer `id`: publishes on `schedule` (at most `quota` messages) until the window ends.
    fn producer(
        &self,
        ctx: Arc<Ctx>,
        s: Arc<Scenario>,
        id: usize,
        schedule: Schedule,
        quota: Option<u64>,
    ) -> JoinHandle<Result<ProducerOut>>;
    /// Consumer `id`: says `ready` once subscribed, consumes until `stop`.
    fn consumer(
        &self,
        ctx: Arc<Ctx>,
        s: Arc<Scenario>,
        id: usize,
        ready: oneshot::Sender<()>,
        stop: watch::Receiver<bool>,
    ) -> JoinHandle<Result<ConsumerOut>>;
    /// Whether every consumer of a destination gets every message (MQTT topics: fan-out),
    /// rather than the consumers of a queue sharing its messages (AMQP, HTTP).
    fn fanout(&self) -> bool {
        false
    }
}

/// How many consumers get a copy of producer `p`'s messages: with fan-out, every consumer on
/// its destination (`p % queues`); else one (the consumers of a queue share it), if any.
pub fn copies_of(s: &Scenario, fanout: bool, p: usize) -> u64 {
    let on_dest = (0..s.consumers)
        .filter(|c| c % s.queues == p % s.queues)
        .count() as u64;
    if fanout {
        on_dest
    } else {
        on_dest.min(1)
    }
}

/// Waits until message `seq` is due on `schedule`; then how many messages (at most `max`, and
/// within `quota`) are due now. `None` once the producer must stop: the run is stopping, the
/// window ended (duration runs) or the quota is published.
pub(crate) async fn next_due(
    ctx: &Ctx,
    schedule: &Schedule,
    seq: u64,
    quota: Option<u64>,
    max: usize,
) -> Option<usize> {
    let w = ctx.window();
    loop {
        let now = ctx.now_ns();
        if ctx.stopping() || (quota.is_none() && now >= w.end_ns) || quota.is_some_and(|q| seq >= q)
        {
            return None;
        }
        let due = schedule.due(now);
        if due <= seq {
            let next = schedule.intended_ns(seq).unwrap_or(now);
            tokio::time::sleep_until(ctx.at(next).into()).await;
            continue;
        }
        let n = (due - seq).min(max as u64);
        return Some(quota.map_or(n, |q| n.min(q - seq)) as usize);
    }
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

    /// Records one delivery at `now_ns`: whose (its header, or a foreign message), its
    /// end-to-end latency if it was sent inside the window, and its count if it arrived in it.
    pub(crate) fn delivered(
        &mut self,
        s: &Scenario,
        w: &Window,
        header: Option<crate::payload::Header>,
        now_ns: u64,
    ) {
        match header {
            Some(h) => {
                self.rx.record(h.producer, h.seq);
                if w.contains(h.send_ns) {
                    self.latency(s, h.send_ns, now_ns);
                }
            }
            None => self.rx.foreign += 1,
        }
        if w.contains(now_ns) || (w.end_ns == u64::MAX && now_ns >= w.start_ns) {
            self.received.add(1, now_ns);
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

async fn spawn_consumers<D: Driver>(
    d: &D,
    ctx: &Arc<Ctx>,
    s: &Arc<Scenario>,
    stop: &watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<Result<ConsumerOut>>>> {
    let mut handles = Vec::new();
    let mut readies = Vec::new();
    for id in 0..s.consumers {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (ctx, s, stop) = (ctx.clone(), s.clone(), stop.clone());
        handles.push(d.consumer(ctx, s, id, tx, stop));
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

/// Runs a scenario whose queues or topics exist: consumers (unless they start after
/// publishing), producers on one window, the drain, then the tally.
///
/// # Errors
/// A producer or consumer that failed (the first error).
pub(crate) async fn drive<D: Driver>(
    d: &D,
    s: &Arc<Scenario>,
    ctx: &Arc<Ctx>,
    stop_tx: &watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
) -> Result<RunResult> {
    let (mon_tx, mon_rx) = watch::channel(false);
    let mut consumers = if s.consume_after_publish {
        Vec::new()
    } else {
        spawn_consumers(d, ctx, s, &stop_rx).await?
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
        producers.push(d.producer(ctx, s, id, schedule, quota));
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
        consumers = spawn_consumers(d, ctx, s, &stop_rx).await?;
    }

    // Drain: until every sent message arrived, or nothing arrives for `drain_idle`.
    // Every copy due: with fan-out each subscriber of a topic gets every message sent to it.
    let fanout = d.fanout();
    let sent: u64 = outs
        .iter()
        .enumerate()
        .map(|(p, o)| o.ledger.sent * copies_of(s, fanout, p))
        .sum();
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
    let t = if fanout {
        let q = s.queues;
        tally_fanout(&ledgers, &trackers, |p, c| p % q == c % q, s.consumers > 0)
    } else {
        tally(&ledgers, &trackers, s.consumers > 0)
    };
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
        protocol: d.protocol(),
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
