//! Stream reconfiguration (copy-on-write swap: retention, segment size, added
//! partitions, persisted) and the log start offset (DeleteRecords), across restarts.

mod common;

use std::sync::Arc;

use common::*;
use ferrymq_core::policy::{ApplyTo, Policy};
use ferrymq_core::queue::QueueDecl;
use ferrymq_core::stream::Stream;
use ferrymq_core::{CoreError, FieldTable, QueueRef, StreamOffset, Value};
use ferrymq_storage::StorageError;

fn stream(vh: &ferrymq_core::VHost, name: &str) -> Arc<Stream> {
    match vh.queue(name).expect("stream exists") {
        QueueRef::Stream(s) => s,
        QueueRef::Classic(_) => panic!("not a stream"),
    }
}

fn stream_args(partitions: i64) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("x-queue-type", Value::String("stream".into()));
    t.insert("x-partitions", Value::Int(partitions));
    t
}

#[tokio::test]
async fn reconfigure_adds_partitions_applies_retention_keeps_consumers_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = open(dir.path()).await;
        let vh = vhost(&b);
        let mut decl = QueueDecl::durable("t");
        decl.arguments = stream_args(2);
        vh.declare_queue(decl, 0, false).unwrap();
        let old = stream(&vh, "t");
        // A consumer attached to the old object.
        let (sk, mut r) = sink();
        let (cid, _) = vh
            .consume("t", opts("c", 0), Some(StreamOffset::Next), sk)
            .unwrap();

        let mut args = stream_args(4);
        args.insert("x-max-length", Value::Int(10));
        args.insert("x-stream-max-segment-size-bytes", Value::Int(4096));
        let new = vh.reconfigure_stream("t", args).unwrap();
        assert!(!Arc::ptr_eq(&old, &new));
        assert!(
            Arc::ptr_eq(&new, &stream(&vh, "t")),
            "swapped into the vhost"
        );
        assert_eq!(new.partition_count(), 4);
        assert_eq!(old.partition_count(), 2, "the old object is unchanged");
        assert_eq!(new.retention().max_messages, Some(10));
        assert_eq!(old.retention().max_messages, Some(10), "logs are shared");
        assert_eq!(new.segment_bytes(), 4096);
        assert_eq!(new.consumer_count(), 1, "consumers are shared");
        // Per-partition state of adapters (Kafka's idempotent producers) is keyed on the
        // partition's log, which the reconfigured object shares.
        for p in 0..2 {
            assert!(old
                .partition_log(p)
                .unwrap()
                .ptr_eq(&new.partition_log(p).unwrap()));
        }
        assert!(!new
            .partition_log(0)
            .unwrap()
            .ptr_eq(&new.partition_log(2).unwrap()));

        // An append through the new object wakes the old object's consumer task.
        let _ = new.append(0, &[&msg("t", "after")], 1).unwrap();
        assert_eq!(bodies(&take(&mut r, 1).await), vec!["after"]);
        let (o, _) = new.append(3, &[&msg("t", "p3")], 1).unwrap();
        assert_eq!(o, 0);
        assert!(new.cancel(cid), "cancelled through the new object");

        // Refused changes leave everything as it was.
        let e = vh.reconfigure_stream("t", stream_args(3)).unwrap_err();
        assert!(matches!(e, CoreError::PreconditionFailed(_)), "{e}");
        let mut classic = FieldTable::default();
        classic.insert("x-partitions", Value::Int(4));
        assert!(matches!(
            vh.reconfigure_stream("t", classic),
            Err(CoreError::PreconditionFailed(_))
        ));
        let mut bad = stream_args(4);
        bad.insert("x-max-length", Value::Int(-1));
        assert!(matches!(
            vh.reconfigure_stream("t", bad),
            Err(CoreError::InvalidArgument(_))
        ));
        let mut tiny = stream_args(4);
        tiny.insert("x-stream-max-segment-size-bytes", Value::Int(10));
        assert!(matches!(
            vh.reconfigure_stream("t", tiny),
            Err(CoreError::InvalidArgument(_))
        ));
        assert!(matches!(
            vh.reconfigure_stream("nope", stream_args(1)),
            Err(CoreError::NotFound(_))
        ));
        assert_eq!(stream(&vh, "t").segment_bytes(), 4096);
        assert_eq!(stream(&vh, "t").partition_count(), 4);
        b.shutdown().await.unwrap();
    }
    let b = open(dir.path()).await;
    let s = stream(&vhost(&b), "t");
    assert_eq!(s.partition_count(), 4);
    assert_eq!(s.retention().max_messages, Some(10));
    assert_eq!(s.segment_bytes(), 4096);
    assert_eq!(s.bounds(3).unwrap(), (0, 1));
    assert_eq!(s.read(3, 0, 10).unwrap()[0].message.body.as_ref(), b"p3");
}

#[tokio::test]
async fn reconfigured_streams_keep_following_policies() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    let mut decl = QueueDecl::durable("ev");
    decl.arguments = stream_args(1);
    vh.declare_queue(decl, 0, false).unwrap();
    b.put_policy(Policy {
        vhost: "/".into(),
        name: "age".into(),
        pattern: "^ev$".into(),
        apply_to: ApplyTo::Streams,
        priority: 0,
        definition: serde_json::json!({"max-age": "1D", "max-length": 5})
            .as_object()
            .cloned()
            .unwrap(),
    })
    .unwrap();
    let mut args = stream_args(1);
    args.insert("x-max-length", Value::Int(7));
    let s = vh.reconfigure_stream("ev", args).unwrap();
    assert_eq!(s.retention().max_age_ms, Some(86_400_000), "policy value");
    assert_eq!(s.retention().max_messages, Some(7), "declared value wins");
    b.delete_policy("/", "age").unwrap();
    assert_eq!(stream(&vh, "ev").retention().max_age_ms, None);
    assert_eq!(stream(&vh, "ev").retention().max_messages, Some(7));
}

#[tokio::test]
async fn delete_records_moves_the_start_for_every_reader_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = open(dir.path()).await;
        let vh = vhost(&b);
        let mut decl = QueueDecl::durable("d");
        decl.arguments = stream_args(1);
        vh.declare_queue(decl, 0, false).unwrap();
        let s = stream(&vh, "d");
        for i in 0..10 {
            let _ = s.append(0, &[&msg("d", &format!("m{i}"))], i).unwrap();
        }
        assert_eq!(s.delete_records(0, 4).unwrap(), 4);
        assert_eq!(s.bounds(0).unwrap(), (4, 10));
        assert_eq!(s.message_count(), 6);
        assert_eq!(s.resolve(0, StreamOffset::First).unwrap(), 4);
        assert_eq!(s.resolve(0, StreamOffset::Offset(1)).unwrap(), 4);
        assert_eq!(s.resolve(0, StreamOffset::Timestamp(0)).unwrap(), 4);
        assert_eq!(s.read(0, 0, 100).unwrap()[0].offset, 4);
        assert_eq!(s.read_batches(0, 0, 1).unwrap()[0].base_offset, 4);
        let (sk, mut r) = sink();
        vh.consume("d", opts("c", 0), Some(StreamOffset::First), sk)
            .unwrap();
        let ids: Vec<u64> = take(&mut r, 6).await.iter().map(|d| d.id).collect();
        assert_eq!(ids, (4..10).collect::<Vec<_>>());
        // Lower: nothing changes. Beyond the end: out of range.
        assert_eq!(s.delete_records(0, 2).unwrap(), 4);
        assert!(matches!(
            s.delete_records(0, 11),
            Err(CoreError::Storage(StorageError::OffsetOutOfRange { .. }))
        ));
        assert!(matches!(
            s.delete_records(1, 0),
            Err(CoreError::NotFound(_))
        ));
        b.shutdown().await.unwrap();
    }
    let b = open(dir.path()).await;
    let s = stream(&vhost(&b), "d");
    assert_eq!(s.bounds(0).unwrap(), (4, 10));
    assert_eq!(s.read(0, 0, 1).unwrap()[0].message.body.as_ref(), b"m4");
}
