//! Restarting the core over the same data directory: definitions, persistent
//! messages, delivery state, delays and stream offsets survive.

mod common;

use common::*;
use ferrymq_core::queue::QueueDecl;
use ferrymq_core::{
    Binding, Destination, ExchangeDecl, ExchangeKind, FieldTable, QueueRef, StreamOffset, Value,
};

fn classic(vh: &ferrymq_core::VHost, name: &str) -> std::sync::Arc<ferrymq_core::queue::Queue> {
    match vh.queue(name).expect("queue exists") {
        QueueRef::Classic(q) => q,
        QueueRef::Stream(_) => panic!("not a classic queue"),
    }
}

#[tokio::test]
async fn definitions_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = open(dir.path()).await;
        let vh = vhost(&b);
        vh.declare_exchange(ExchangeDecl::new("orders", ExchangeKind::Topic), false)
            .unwrap();
        let mut transient_x = ExchangeDecl::new("tmpx", ExchangeKind::Direct);
        transient_x.durable = false;
        vh.declare_exchange(transient_x, false).unwrap();
        vh.declare_queue(
            QueueDecl::durable("audit").arg("x-max-length", 100i64),
            1,
            false,
        )
        .unwrap();
        vh.declare_queue(QueueDecl::transient("scratch"), 1, false)
            .unwrap();
        vh.bind(
            Binding {
                source: "orders".into(),
                destination: Destination::Queue("audit".into()),
                routing_key: "order.#".into(),
                arguments: FieldTable::new(),
            },
            0,
        )
        .unwrap();
        b.add_vhost("v2").unwrap();
        b.shutdown().await.unwrap();
    }
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    assert!(vh.exchange("orders").is_some());
    assert!(vh.exchange("tmpx").is_none(), "transient exchange is gone");
    assert!(vh.queue("scratch").is_none(), "transient queue is gone");
    assert_eq!(classic(&vh, "audit").args().max_length, Some(100));
    assert!(b.vhost("v2").is_some());
    assert_eq!(
        vh.publish("orders", msg("order.created", "x"))
            .unwrap()
            .routed,
        1,
        "binding restored"
    );
    let defs = b.export_definitions();
    assert_eq!(defs.bindings.len(), 1);
}

#[tokio::test]
async fn persistent_messages_and_acks_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = open(dir.path()).await;
        let vh = vhost(&b);
        vh.declare_queue(QueueDecl::durable("jobs"), 1, false)
            .unwrap();
        for i in 0..5 {
            vh.publish("", persistent("jobs", &format!("p{i}")))
                .unwrap()
                .durable()
                .await
                .unwrap();
        }
        vh.publish("", msg("jobs", "transient")).unwrap();
        let (s, mut r) = sink();
        let (cid, _) = vh.consume("jobs", opts("c", 3), None, s).unwrap();
        let ds = take(&mut r, 3).await;
        // Ack p0 and p2; p1 stays unacked across the "crash" (no shutdown).
        let q = classic(&vh, "jobs");
        assert!(
            q.cancel(cid, 0),
            "cancel first so the acks release no more deliveries"
        );
        q.ack(&[ds[0].id, ds[2].id], 0);
        drop(b);
    }
    {
        let b = open(dir.path()).await;
        let vh = vhost(&b);
        let q = classic(&vh, "jobs");
        assert_eq!(
            q.message_count(),
            3,
            "p1 (unacked), p3, p4; the transient one is lost"
        );
        let (s, mut r) = sink();
        vh.consume("jobs", opts("c", 0), None, s).unwrap();
        let ds = take(&mut r, 3).await;
        assert_eq!(bodies(&ds), vec!["p1", "p3", "p4"]);
        assert!(ds[0].redelivered, "delivered before the restart");
        assert!(!ds[1].redelivered);
        q.ack(&ds.iter().map(|d| d.id).collect::<Vec<_>>(), 0);
        b.shutdown().await.unwrap();
    }
    let b = open(dir.path()).await;
    assert_eq!(
        classic(&vhost(&b), "jobs").message_count(),
        0,
        "acked messages are not delivered again"
    );
}

#[tokio::test]
async fn delayed_message_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = ferrymq_core::clock::now_ms();
    {
        let b = open(dir.path()).await;
        let vh = vhost(&b);
        vh.declare_queue(QueueDecl::durable("later"), 1, false)
            .unwrap();
        let mut m = persistent("later", "tick");
        m.headers.insert("x-delay", Value::Int(300));
        vh.publish("", m).unwrap().durable().await.unwrap();
        drop(b);
    }
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    let (s, mut r) = sink();
    vh.consume("later", opts("c", 0), None, s).unwrap();
    let d = take(&mut r, 1).await;
    assert_eq!(bodies(&d), vec!["tick"]);
    assert!(
        ferrymq_core::clock::now_ms() - t0 >= 300,
        "the not-before time survived the restart"
    );
}

#[tokio::test]
async fn streams_offsets_partitions_and_group_offsets() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = open(dir.path()).await;
        let vh = vhost(&b);
        vh.declare_queue(
            QueueDecl::durable("events").arg("x-queue-type", "stream"),
            1,
            false,
        )
        .unwrap();
        for i in 0..10 {
            vh.publish("", persistent("events", &format!("e{i}")))
                .unwrap()
                .durable()
                .await
                .unwrap();
        }
        let QueueRef::Stream(s) = vh.queue("events").unwrap() else {
            panic!("stream")
        };
        assert_eq!(s.message_count(), 10);
        // First: everything; consuming does not remove.
        let (sk, mut r) = sink();
        vh.consume("events", opts("a", 0), Some(StreamOffset::First), sk)
            .unwrap();
        let ds = take(&mut r, 10).await;
        assert_eq!(ds[0].id, 0);
        assert_eq!(bodies(&ds)[9], "e9");
        // Offset 7 and Last.
        let (sk, mut r) = sink();
        vh.consume("events", opts("b", 0), Some(StreamOffset::Offset(7)), sk)
            .unwrap();
        assert_eq!(bodies(&take(&mut r, 3).await), vec!["e7", "e8", "e9"]);
        let (sk, mut r) = sink();
        vh.consume("events", opts("c", 0), Some(StreamOffset::Last), sk)
            .unwrap();
        assert_eq!(bodies(&take(&mut r, 1).await), vec!["e9"]);
        // Next: only new messages, with credit limiting flow.
        let (sk, mut r) = sink();
        let (cid, _) = vh
            .consume("events", opts("d", 1), Some(StreamOffset::Next), sk)
            .unwrap();
        vh.publish("", persistent("events", "new1")).unwrap();
        vh.publish("", persistent("events", "new2")).unwrap();
        let d = take(&mut r, 1).await;
        assert_eq!(bodies(&d), vec!["new1"]);
        assert_idle(&mut r);
        s.credit(cid, 1);
        assert_eq!(bodies(&take(&mut r, 1).await), vec!["new2"]);
        // Timestamp: everything is after t=0.
        assert_eq!(s.resolve(0, StreamOffset::Timestamp(0)).unwrap(), 0);
        s.commit_offset("group-1", 0, 5).unwrap().await.unwrap();
        b.shutdown().await.unwrap();
    }
    let b = open(dir.path()).await;
    let QueueRef::Stream(s) = vhost(&b).queue("events").unwrap() else {
        panic!("stream")
    };
    assert_eq!(s.message_count(), 12);
    assert_eq!(s.committed_offset("group-1", 0).unwrap(), Some(5));
    let recs = s.read(0, 5, 2).unwrap();
    assert_eq!(
        recs.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![5, 6]
    );
}

#[tokio::test]
async fn partitioned_stream_routes_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    vh.declare_queue(
        QueueDecl::durable("parts")
            .arg("x-queue-type", "stream")
            .arg("x-partitions", 4i64),
        1,
        false,
    )
    .unwrap();
    let QueueRef::Stream(s) = vh.queue("parts").unwrap() else {
        panic!("stream")
    };
    let mut seen = std::collections::HashMap::new();
    for i in 0..40 {
        let mut m = persistent("parts", "v");
        m.key = Some(bytes::Bytes::from(format!("key-{}", i % 5)));
        let p = s.partition_for(&m);
        assert_eq!(
            *seen.entry(i % 5).or_insert(p),
            p,
            "same key, same partition"
        );
        vh.publish("", m).unwrap();
    }
    let total: u64 = (0..4)
        .map(|p| {
            let (a, b) = s.bounds(p).unwrap();
            b - a
        })
        .sum();
    assert_eq!(total, 40);
}

#[tokio::test]
async fn stream_retention_deletes_whole_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    vh.declare_queue(
        QueueDecl::durable("logs")
            .arg("x-queue-type", "stream")
            .arg("x-max-length", 20i64)
            .arg("x-stream-max-segment-size-bytes", 4096i64),
        1,
        false,
    )
    .unwrap();
    let QueueRef::Stream(s) = vh.queue("logs").unwrap() else {
        panic!("stream")
    };
    let body = "x".repeat(200);
    for _ in 0..200 {
        vh.publish("", persistent("logs", &body)).unwrap();
    }
    assert_eq!(s.message_count(), 200);
    let deleted = s.apply_retention(ferrymq_core::clock::now_ms()).unwrap();
    assert!(deleted > 0, "old segments deleted");
    let (start, next) = s.bounds(0).unwrap();
    assert_eq!(next, 200, "offsets never move back");
    assert!(
        next - start >= 20,
        "at least the limit is kept (whole segments only)"
    );
    assert!(
        next - start < 60,
        "no more than the limit plus about one segment: kept {}",
        next - start
    );
    let first = s.read(0, 0, 1).unwrap();
    assert_eq!(
        first[0].offset, start,
        "reads before the start begin at the first retained record"
    );
}

#[tokio::test]
async fn deleting_durable_queues_streams_and_vhosts_while_referenced() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    vh.declare_queue(QueueDecl::durable("dq"), 1, false)
        .unwrap();
    vh.declare_queue(
        QueueDecl::durable("ds").arg("x-queue-type", "stream"),
        1,
        false,
    )
    .unwrap();
    vh.publish("", persistent("dq", "old"))
        .unwrap()
        .durable()
        .await
        .unwrap();
    vh.publish("", persistent("ds", "old"))
        .unwrap()
        .durable()
        .await
        .unwrap();
    // Handles held elsewhere (an adapter's consumer map) must not block deletion.
    let held_q = vh.queue("dq").unwrap();
    let held_s = vh.queue("ds").unwrap();
    assert_eq!(vh.delete_queue("dq", false, false, 1).unwrap(), 1);
    assert_eq!(vh.delete_queue("ds", false, false, 1).unwrap(), 1);
    vh.declare_queue(QueueDecl::durable("dq"), 1, false)
        .unwrap();
    assert_eq!(classic(&vh, "dq").message_count(), 0, "a new, empty queue");
    vh.publish("", persistent("dq", "new"))
        .unwrap()
        .durable()
        .await
        .unwrap();
    drop((held_q, held_s));
    assert_eq!(classic(&vh, "dq").message_count(), 1);
    let v2 = b.add_vhost("gone").unwrap();
    v2.declare_queue(QueueDecl::durable("q"), 1, false).unwrap();
    v2.publish("", persistent("q", "x"))
        .unwrap()
        .durable()
        .await
        .unwrap();
    b.delete_vhost("gone").unwrap();
    assert!(b.vhost("gone").is_none());
    b.shutdown().await.unwrap();
    drop(vh);
    drop(v2);
    drop(b);
    let b = open(dir.path()).await;
    assert_eq!(
        classic(&vhost(&b), "dq").message_count(),
        1,
        "only the new message survives"
    );
    assert!(b.vhost("gone").is_none());
}
