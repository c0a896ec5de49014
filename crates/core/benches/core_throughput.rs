//! In-process core throughput: publish → route → queue → deliver → ack, on one
//! core (a current-thread runtime), for 16 B and 1 KiB messages, 1 and 16 queues,
//! transient (T0) and persistent on durable queues at T1. With 16 queues, a publish batch
//! is either spread over all of them (one publisher round-robin) or meant for one queue,
//! the next batch for the next (one publisher per queue; name suffix `-pq`).
//!
//! Run: `cargo bench -p ferrymq-core --bench core_throughput` (set
//! `FERRYMQ_BENCH_MESSAGES` to change the message count, default 1,000,000, and
//! `FERRYMQ_BENCH_FILTER` to run only scenarios whose `size-queues-tier-batch`
//! name contains it, e.g. `16-1-t1-64`, or is it when it ends in `$`: `16-16-t1-64$`).

use std::time::Instant;

/// The `ferrymq` binary's allocator, so that the figures are the server's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use ferrymq_core::queue::{ConsumerOptions, QueueDecl};
use ferrymq_core::{Broker, BrokerConfig, ConsumerEvent, Message, QueueRef};
use ferrymq_storage::{Durability, StorageConfig};

/// CPU seconds (user + system) this process has used, from /proc (clock ticks of 10 ms).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ')'.
    (ticks(11) + ticks(12)) / 100.0
}

/// The queue of message `i`: round-robin per message, or per publish batch.
fn queue_of(i: usize, queues: usize, batch: usize, per_queue_batches: bool) -> usize {
    if per_queue_batches {
        (i / batch) % queues
    } else {
        i % queues
    }
}

async fn scenario(
    total: usize,
    size: usize,
    queues: usize,
    persistent: bool,
    batch: usize,
    per_queue_batches: bool,
) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = BrokerConfig {
        data_dir: dir.path().to_path_buf(),
        storage: StorageConfig {
            default_durability: Durability::T1,
            ..StorageConfig::default()
        },
        ..BrokerConfig::default()
    };
    let b = Broker::open(cfg).await.expect("open");
    let vh = b.vhost("/").expect("vhost");
    let mut consumers = Vec::new();
    let mut expected = vec![0usize; queues];
    for i in 0..total {
        expected[queue_of(i, queues, batch, per_queue_batches)] += 1;
    }
    for (i, &per_queue) in expected.iter().enumerate() {
        let name = format!("q{i}");
        let decl = if persistent {
            QueueDecl::durable(&name)
        } else {
            QueueDecl::transient(&name)
        };
        vh.declare_queue(decl, 1, false).expect("declare");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let opts = ConsumerOptions {
            tag: name.clone(),
            prefetch_count: 2000,
            ..Default::default()
        };
        let (_, q) = vh.consume(&name, opts, None, tx).expect("consume");
        let QueueRef::Classic(q) = q else {
            unreachable!()
        };
        consumers.push(tokio::spawn(async move {
            let mut got = 0;
            while got < per_queue {
                match rx.recv().await {
                    Some(ConsumerEvent::Deliver(batch)) => {
                        got += batch.len();
                        let ids: Vec<u64> = batch.iter().map(|d| d.id).collect();
                        q.ack(&ids, 0);
                    }
                    _ => break,
                }
            }
        }));
    }
    let body = bytes::Bytes::from(vec![b'x'; size]);
    let keys: Vec<String> = (0..queues).map(|i| format!("q{i}")).collect();
    let start = Instant::now();
    let cpu0 = cpu_seconds();
    let mut pending = Vec::with_capacity(batch);
    for i in 0..total {
        let q = queue_of(i, queues, batch, per_queue_batches);
        let mut m = Message::new(keys[q].clone(), body.clone());
        m.properties.persistent = persistent;
        pending.push(m);
        if pending.len() == batch || i + 1 == total {
            let msgs = std::mem::replace(&mut pending, Vec::with_capacity(batch));
            vh.publish_batch("", msgs).expect("publish");
        }
        if i % 1024 == 1023 {
            tokio::task::yield_now().await;
        }
    }
    for c in consumers {
        c.await.expect("consumer");
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    let cpu_rate = total as f64 / (cpu_seconds() - cpu0).max(0.01);
    b.shutdown().await.expect("shutdown");
    (rate, cpu_rate)
}

fn main() {
    let total: usize = std::env::var("FERRYMQ_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "| messages | size | queues | tier | publish batch | batch goes to | msgs/s (wall) | msgs per CPU-second |"
    );
    println!("|---:|---:|---:|---|---:|---|---:|---:|");
    for &(size, queues, persistent, batch, per_queue) in &[
        (16, 1, false, 1, false),
        (16, 1, false, 64, false),
        (16, 16, false, 64, false),
        (1024, 1, false, 64, false),
        (1024, 16, false, 64, false),
        (16, 1, true, 1, false),
        (16, 1, true, 64, false),
        (16, 16, true, 64, false),
        (16, 16, true, 64, true),
        (1024, 1, true, 64, false),
        (1024, 16, true, 64, false),
        (1024, 16, true, 64, true),
    ] {
        let tier_tag = if persistent { "t1" } else { "t0" };
        let pq = if per_queue { "-pq" } else { "" };
        let name = format!("{size}-{queues}-{tier_tag}-{batch}{pq}");
        // A filter ending in `$` must match the whole name (`16-16-t1-64$`: not the -pq row).
        let skip = std::env::var("FERRYMQ_BENCH_FILTER").is_ok_and(|f| match f.strip_suffix('$') {
            Some(exact) => name != exact,
            None => !name.contains(&f),
        });
        if skip {
            continue;
        }
        let n = if persistent && batch == 1 {
            total / 4
        } else {
            total
        };
        let (rate, cpu_rate) = rt.block_on(scenario(n, size, queues, persistent, batch, per_queue));
        let tier = if persistent {
            "T1 persistent"
        } else {
            "T0 transient"
        };
        let spread = match (queues, per_queue) {
            (1, _) => "the queue",
            (_, true) => "one queue, the next batch the next",
            (_, false) => "all queues, round-robin",
        };
        println!(
            "| {n} | {size} B | {queues} | {tier} | {batch} | {spread} | {rate:.0} | {cpu_rate:.0} |"
        );
    }
}
