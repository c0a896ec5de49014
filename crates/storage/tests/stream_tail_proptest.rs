//! Property test of the streams' tail cache: random appends (framed records and opaque
//! payloads of many sizes, some bigger than a stream's share of the cache), reads from random
//! offsets with random byte limits, waits for commits, segment-deleting retention and
//! restarts, at T1 and T2, on two streams sharing a small cache budget. Every read, whether the
//! cache or the file answers it, returns the batches a simple model holds: starting with the
//! one that holds the offset asked for (or the first after it), in order, without gaps.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use ferrymq_storage::{
    Batch, Commit, Durability, LogOptions, Retention, Storage, StorageConfig, StreamLog,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Stream, then either framed records or one opaque payload of that many bytes.
    Append(bool, Vec<Vec<u8>>, Option<u16>),
    /// Stream, a position among its offsets, the byte limit.
    Read(bool, u16, u16),
    /// Wait for every append so far.
    Wait,
    /// Keep at most this many messages (deletes whole sealed segments).
    Retain(bool, u16),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (
            any::<bool>(),
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 1..4),
            prop::option::weighted(0.5, 1u16..1500),
        )
            .prop_map(|(s, r, o)| Op::Append(s, r, o)),
        5 => (any::<bool>(), any::<u16>(), 1u16..3000).prop_map(|(s, f, m)| Op::Read(s, f, m)),
        2 => Just(Op::Wait),
        1 => (any::<bool>(), 1u16..200).prop_map(|(s, n)| Op::Retain(s, n)),
        1 => Just(Op::Restart),
    ]
}

/// What a stream holds, batch by batch: base offset, count, format and the bytes a read
/// returns (an opaque payload, or the records' bodies).
#[derive(Debug, Clone, PartialEq)]
struct MBatch {
    base: u64,
    count: u32,
    opaque: Option<Bytes>,
    recs: Vec<Bytes>,
}

fn config() -> StorageConfig {
    StorageConfig {
        segment_bytes: 2048,
        index_interval_bytes: 256,
        // Two streams share 2 KiB, 1 KiB each: eviction, refusal of big batches and the
        // shared budget are all exercised (and the trim that retention does).
        tail_cache_bytes: 2 << 10,
        ..Default::default()
    }
}

fn open(root: &Path, d: Durability) -> (Arc<Storage>, [Arc<StreamLog>; 2]) {
    let s = Storage::open(root, config()).unwrap();
    let st = |n: &str| {
        s.open_stream(
            n,
            LogOptions {
                durability: Some(d),
                segment_bytes: None,
            },
            Retention::default(),
        )
        .unwrap()
    };
    let streams = [st("a"), st("b")];
    (s, streams)
}

fn same(got: &Batch, want: &MBatch) -> bool {
    got.base_offset == want.base
        && got.record_count == want.count
        && match &want.opaque {
            Some(p) => got.is_opaque() && got.payload() == p,
            None => {
                !got.is_opaque() && got.records().map(|(_, b)| b).collect::<Vec<_>>() == want.recs
            }
        }
}

fn check_read(st: &StreamLog, model: &[MBatch], from: u64, max: usize) {
    let log = st.log();
    // A stream's reader sees what is on the file (at T2 the sync thread's round writes the
    // pending appends, meanwhile too): at least up to the readable end before the read, at
    // most up to the one after it.
    let visible = log.readable_next();
    let got = log.read(from, max).unwrap();
    let visible_after = log.readable_next();
    assert!(visible <= visible_after && visible_after <= log.next_offset());
    let start = log.start_offset();
    let from = from.max(start);
    let i = model.partition_point(|b| b.base + u64::from(b.count) <= from);
    // Batches below the log's start are gone from the disk: the model keeps them only until
    // retention removed their segment, which the log reports through start_offset.
    let live: Vec<&MBatch> = model[i..].iter().collect();
    if live.is_empty() {
        assert!(got.is_empty(), "read from {from} past the end: {got:?}");
        return;
    }
    if let Some(last) = got.last() {
        assert!(
            last.next_offset() <= visible_after,
            "read from {from} returned {} past the readable end {visible_after}",
            last.next_offset()
        );
    }
    if live[0].base + u64::from(live[0].count) > visible {
        // Not on the file yet when the read started: nothing, or what the round wrote since.
        if got.is_empty() {
            return;
        }
    }
    assert!(!got.is_empty(), "read from {from} returned nothing");
    assert!(got.len() <= live.len());
    for (g, w) in got.iter().zip(&live) {
        assert!(same(g, w), "read from {from}: got {g:?}, want {w:?}");
    }
    // The byte limit: batches are added while the total is below it.
    let before_last: usize = got[..got.len() - 1].iter().map(Batch::size_bytes).sum();
    assert!(
        before_last < max || got.len() == 1,
        "read past the limit {max}"
    );
}

fn run(t2: bool, ops: Vec<Op>) {
    let d = if t2 { Durability::T2 } else { Durability::T1 };
    let dir = tempfile::tempdir().unwrap();
    let (mut s, mut streams) = open(dir.path(), d);
    let mut models: [Vec<MBatch>; 2] = [Vec::new(), Vec::new()];
    let mut commits: Vec<Commit> = Vec::new();
    for op in ops {
        match op {
            Op::Append(which, recs, opaque) => {
                let k = usize::from(which);
                let log = streams[k].log();
                let next = log.next_offset();
                let (a, m) = match opaque {
                    Some(n) => {
                        let p: Bytes = (0..n).map(|i| (i as u8) ^ (next as u8)).collect();
                        let count = recs.len() as u32;
                        let a = log.append_opaque_with(9, count, &p, None, 1).unwrap();
                        let m = MBatch {
                            base: next,
                            count,
                            opaque: Some(p),
                            recs: Vec::new(),
                        };
                        (a, m)
                    }
                    None => {
                        let recs: Vec<Bytes> = recs.into_iter().map(Bytes::from).collect();
                        let a = log.append(&recs, 1).unwrap();
                        let m = MBatch {
                            base: next,
                            count: recs.len() as u32,
                            opaque: None,
                            recs,
                        };
                        (a, m)
                    }
                };
                assert_eq!(a.base_offset, next);
                commits.push(a.commit);
                models[k].push(m);
            }
            Op::Read(which, pick, max) => {
                let k = usize::from(which);
                let end = streams[k].log().next_offset();
                let from = u64::from(pick) % (end + 2);
                check_read(&streams[k], &models[k], from, usize::from(max));
            }
            Op::Wait => {
                for c in commits.drain(..) {
                    c.wait().unwrap();
                }
                // A committed append is on the file: readable.
                for st in &streams {
                    assert_eq!(st.log().readable_next(), st.log().next_offset());
                }
            }
            Op::Retain(which, n) => {
                let k = usize::from(which);
                streams[k].set_retention(Retention {
                    max_messages: Some(u64::from(n)),
                    ..Default::default()
                });
                streams[k].apply_retention(0).unwrap();
                let start = streams[k].log().start_offset();
                models[k].retain(|b| b.base + u64::from(b.count) > start);
            }
            Op::Restart => {
                for c in commits.drain(..) {
                    c.wait().unwrap();
                }
                drop(streams);
                drop(s);
                (s, streams) = open(dir.path(), d);
                assert_eq!(s.metrics().tail_cache_bytes, 0, "a reopened cache is empty");
                for k in 0..2 {
                    let start = streams[k].log().start_offset();
                    models[k].retain(|b| b.base + u64::from(b.count) > start);
                }
            }
        }
        assert!(
            s.metrics().tail_cache_bytes <= config().tail_cache_bytes as u64,
            "within the budget"
        );
    }
    for c in commits.drain(..) {
        c.wait().unwrap();
    }
    // Everything, read in steps, from the start of each stream.
    for k in 0..2 {
        let mut at = 0;
        let mut n = 0;
        loop {
            let got = streams[k].log().read(at, 1).unwrap();
            let Some(b) = got.first() else { break };
            let start = streams[k].log().start_offset();
            let i = models[k].partition_point(|m| m.base + u64::from(m.count) <= at.max(start));
            assert!(same(b, &models[k][i]), "final read at {at}");
            at = b.next_offset();
            n += 1;
        }
        let start = streams[k].log().start_offset();
        let live = models[k]
            .iter()
            .filter(|m| m.base + u64::from(m.count) > start)
            .count();
        assert_eq!(n, live, "stream {k}: every batch once");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, max_shrink_iters: 2000, ..ProptestConfig::default() })]
    #[test]
    fn stream_reads_match_the_model_with_the_tail_cache(t2 in any::<bool>(), ops in prop::collection::vec(op(), 1..150)) {
        run(t2, ops);
    }
}
