//! Durable queues keep only a budget of their backlog in memory; the rest stays on
//! disk and is paged back in, in order, across restarts, purges and length limits.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use common::*;
use ferrymq_core::queue::{MemoryBudget, Queue, QueueDecl};
use ferrymq_core::{Broker, QueueRef, Value};

async fn open_small(dir: &Path) -> Arc<Broker> {
    let mut c = config(dir);
    c.queue_memory = MemoryBudget {
        bytes: 1 << 20,
        messages: 10,
    };
    Broker::open(c).await.expect("open")
}

fn classic(b: &Broker, name: &str) -> Arc<Queue> {
    match vhost(b).queue(name).expect("queue") {
        QueueRef::Classic(q) => q,
        QueueRef::Stream(_) => panic!("not classic"),
    }
}

fn drain(q: &Queue) -> Vec<String> {
    std::iter::from_fn(|| q.get(true, ferrymq_core::clock::now_ms()))
        .map(|(d, _)| String::from_utf8_lossy(&d.message.body).into_owned())
        .collect()
}

#[tokio::test]
async fn a_backlog_larger_than_the_budget_is_delivered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let b = open_small(dir.path()).await;
    vhost(&b)
        .declare_queue(QueueDecl::durable("big"), 1, false)
        .unwrap();
    for i in 0..100 {
        vhost(&b)
            .publish("", persistent("big", &i.to_string()))
            .unwrap();
    }
    let q = classic(&b, "big");
    assert_eq!(q.message_count(), 100);
    assert_eq!(q.info().ready, 100);
    let (s, mut r) = sink();
    vhost(&b).consume("big", opts("c", 7), None, s).unwrap();
    let mut got = Vec::new();
    while got.len() < 100 {
        let ev = tokio::time::timeout(DEADLINE, r.recv())
            .await
            .expect("deliveries in time");
        let Some(ferrymq_core::ConsumerEvent::Deliver(ds)) = ev else {
            panic!("unexpected {ev:?}")
        };
        q.ack(&ds.iter().map(|d| d.id).collect::<Vec<_>>(), 0);
        got.extend(bodies(&ds));
    }
    assert_eq!(got, (0..100).map(|i| i.to_string()).collect::<Vec<_>>());
    assert_eq!(q.message_count(), 0);
}

#[tokio::test]
async fn paged_backlog_survives_restart_and_transient_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = open_small(dir.path()).await;
        vhost(&b)
            .declare_queue(QueueDecl::durable("mixed"), 1, false)
            .unwrap();
        for i in 0..60 {
            let m = if i % 3 == 0 {
                msg("mixed", &format!("t{i}"))
            } else {
                persistent("mixed", &format!("p{i}"))
            };
            vhost(&b).publish("", m).unwrap().durable().await.unwrap();
        }
        // Before the restart everything is there, in order.
        let q = classic(&b, "mixed");
        assert_eq!(q.message_count(), 60);
        let first: Vec<_> = (0..5).map(|_| q.get(false, 0).unwrap().0).collect();
        assert_eq!(String::from_utf8_lossy(&first[1].message.body), "p1");
        b.shutdown().await.unwrap();
    }
    let b = open_small(dir.path()).await;
    let q = classic(&b, "mixed");
    let got = drain(&q);
    let want: Vec<String> = (0..60)
        .filter(|i| i % 3 != 0)
        .map(|i| format!("p{i}"))
        .collect();
    assert_eq!(
        got, want,
        "persistent messages in order; transient ones gone"
    );
    let ids: HashSet<_> = got.iter().collect();
    assert_eq!(ids.len(), got.len(), "no duplicates");
}

#[tokio::test]
async fn purge_and_drop_head_reach_the_disk_only_part() {
    let dir = tempfile::tempdir().unwrap();
    let b = open_small(dir.path()).await;
    vhost(&b)
        .declare_queue(QueueDecl::durable("p"), 1, false)
        .unwrap();
    vhost(&b)
        .declare_queue(
            QueueDecl::durable("lim").arg("x-max-length", 50i64),
            1,
            false,
        )
        .unwrap();
    for i in 0..100 {
        vhost(&b)
            .publish("", persistent("p", &i.to_string()))
            .unwrap();
        vhost(&b)
            .publish("", persistent("lim", &i.to_string()))
            .unwrap();
    }
    assert_eq!(classic(&b, "p").purge(), 100);
    assert_eq!(classic(&b, "p").message_count(), 0);
    let lim = classic(&b, "lim");
    assert_eq!(lim.message_count(), 50);
    let got = drain(&lim);
    assert_eq!(got, (50..100).map(|i| i.to_string()).collect::<Vec<_>>());
    b.shutdown().await.unwrap();
    drop(lim);
    drop(b);
    let b = open_small(dir.path()).await;
    assert_eq!(
        classic(&b, "p").message_count(),
        0,
        "purged messages stay purged"
    );
    assert_eq!(classic(&b, "lim").message_count(), 0);
}

#[tokio::test]
async fn a_delayed_message_among_paged_ones_is_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    let b = open_small(dir.path()).await;
    vhost(&b)
        .declare_queue(QueueDecl::durable("d"), 1, false)
        .unwrap();
    for i in 0..30 {
        vhost(&b)
            .publish("", persistent("d", &i.to_string()))
            .unwrap();
    }
    let mut m = persistent("d", "late");
    m.headers.insert("x-delay", Value::Int(50));
    vhost(&b).publish("", m).unwrap();
    for i in 30..40 {
        vhost(&b)
            .publish("", persistent("d", &i.to_string()))
            .unwrap();
    }
    let q = classic(&b, "d");
    let (s, mut r) = sink();
    vhost(&b).consume("d", opts("c", 0), None, s).unwrap();
    let ds = take(&mut r, 41).await;
    let got = bodies(&ds);
    assert_eq!(got.iter().filter(|b| *b == "late").count(), 1);
    assert_eq!(
        got.last().map(String::as_str),
        Some("late"),
        "the delayed one comes after its delay"
    );
    q.ack(&ds.iter().map(|d| d.id).collect::<Vec<_>>(), 0);
    assert_eq!(q.message_count(), 0);
}
