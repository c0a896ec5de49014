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

use crate::accounting::Ledger;
use crate::harness::{drive, ConsumerOut, Driver, ProducerOut};
use crate::latency::Latency;
use crate::native;
use crate::payload::{self, Header, Payload};
use crate::rate::Schedule;
use crate::run::{Client, Ctx, Protocol, RunResult, Scenario, Window, WindowCount};

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

/// Runs one AMQP scenario to the end.
///
/// # Errors
/// Connection, declaration or publish failures; the queues are deleted anyway when possible.
pub async fn run(scenario: Scenario, ctx: Arc<Ctx>) -> Result<RunResult> {
    scenario.validate()?;
    let s = Arc::new(scenario);
    let setup = declare(&s).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let driver = AmqpDriver { client: s.client };
    let result = drive(&driver, &s, &ctx, &stop_tx, stop_rx).await;
    let _ = stop_tx.send(true);
    teardown(&s, setup).await;
    result
}

/// The AMQP producers and consumers of the scenario's client.
struct AmqpDriver {
    client: Client,
}

impl Driver for AmqpDriver {
    fn protocol(&self) -> Protocol {
        Protocol::Amqp
    }

    fn producer(
        &self,
        ctx: Arc<Ctx>,
        s: Arc<Scenario>,
        id: usize,
        schedule: Schedule,
        quota: Option<u64>,
    ) -> JoinHandle<Result<ProducerOut>> {
        match self.client {
            Client::Native => tokio::spawn(native::producer(ctx, s, id, schedule, quota)),
            Client::Lapin => tokio::spawn(producer(ctx, s, id, schedule, quota)),
        }
    }

    fn consumer(
        &self,
        ctx: Arc<Ctx>,
        s: Arc<Scenario>,
        id: usize,
        ready: tokio::sync::oneshot::Sender<()>,
        stop: watch::Receiver<bool>,
    ) -> JoinHandle<Result<ConsumerOut>> {
        match self.client {
            Client::Native => tokio::spawn(native::consumer(ctx, s, id, ready, stop)),
            Client::Lapin => tokio::spawn(consumer(ctx, s, id, ready, stop)),
        }
    }
}
