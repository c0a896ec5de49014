//! The connection registry's channels and the consumer listing management shows.

mod common;

use common::*;
use ferrymq_core::queue::QueueDecl;
use ferrymq_core::{ConnectionInfo, ConsumerOptions, StreamOffset};

#[tokio::test]
async fn channels_register_and_unregister_with_their_guard() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let conn = b
        .register_connection(ConnectionInfo {
            protocol: "test".into(),
            peer: "here".into(),
            user: "guest".into(),
            vhost: "/".into(),
        })
        .unwrap();
    let one = conn.register_channel(1);
    let two = conn.register_channel(2);
    one.prefetch_count
        .store(10, std::sync::atomic::Ordering::Relaxed);
    let listed = conn.channels();
    assert_eq!(listed.iter().map(|c| c.number).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(
        listed[0]
            .prefetch_count
            .load(std::sync::atomic::Ordering::Relaxed),
        10
    );
    assert_eq!(listed[0].connection, conn.id);
    // A number reused before the old guard drops stays registered.
    let two_again = conn.register_channel(2);
    drop(two);
    assert_eq!(conn.channels().len(), 2);
    drop(two_again);
    drop(one);
    assert!(conn.channels().is_empty());
}

#[tokio::test]
async fn consumers_are_listed_with_channel_prefetch_and_unacked() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    vh.declare_queue(QueueDecl::durable("q"), 0, false).unwrap();
    vh.declare_queue(
        QueueDecl::durable("sac").arg("x-single-active-consumer", true),
        0,
        false,
    )
    .unwrap();
    vh.declare_queue(
        QueueDecl::durable("s").arg("x-queue-type", "stream"),
        0,
        false,
    )
    .unwrap();
    for i in 0..3 {
        vh.publish("", msg("q", &i.to_string())).unwrap();
    }
    let (tx, mut rx) = sink();
    let o = |tag: &str, prefetch, channel| ConsumerOptions {
        tag: tag.into(),
        prefetch_count: prefetch,
        connection: 7,
        channel,
        ..Default::default()
    };
    vh.consume("q", o("c1", 2, 3), None, tx.clone()).unwrap();
    take(&mut rx, 2).await;
    vh.consume("sac", o("first", 1, 3), None, tx.clone())
        .unwrap();
    vh.consume("sac", o("second", 1, 4), None, tx.clone())
        .unwrap();
    vh.consume(
        "s",
        ConsumerOptions {
            no_ack: true,
            ..o("reader", 5, 5)
        },
        Some(StreamOffset::First),
        tx,
    )
    .unwrap();
    let all = b.consumers(None);
    let tags: Vec<_> = all.iter().map(|(_, c)| c.tag.as_str()).collect();
    assert_eq!(tags, ["c1", "reader", "first", "second"]);
    let c1 = &all[0].1;
    assert_eq!(
        (
            c1.queue.as_str(),
            c1.channel,
            c1.prefetch_count,
            c1.unacked,
            c1.ack_required
        ),
        ("q", 3, 2, 2, true)
    );
    assert!(
        all[2].1.active && !all[3].1.active,
        "single active consumer"
    );
    assert!(!all[1].1.ack_required);
    assert!(b.consumers(Some("other")).is_empty());
    assert_eq!(b.consumers(Some("/")).len(), 4);
}
