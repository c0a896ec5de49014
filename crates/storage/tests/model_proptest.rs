//! Property test: random sequences of appends, reads, settles, deliveries, delays, restarts
//! (drop + reopen), truncations, bit flips and index damage against a simple in-memory model.
//! After every recovery the log holds exactly the intact batches (a torn or corrupt tail is
//! cut and its offsets reused; a corrupt batch in the middle is skipped), and the queue's
//! delivery state matches the model.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use ferrymq_storage::{Durability, LogOptions, QueueLog, Storage, StorageConfig};
use proptest::prelude::*;
use std::sync::Arc;

const SEG_HEADER: u64 = 16;

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<Vec<u8>>, i64),
    Read(u16),
    Settle(Vec<u16>),
    Deliver(Vec<u16>),
    /// Settle / deliver up to n consecutive unsettled messages from the k-th (runs of
    /// consecutive offsets are journaled as range entries).
    SettleRun(u16, u8),
    DeliverRun(u16, u8),
    NotBefore(u16, i64),
    Restart,
    Truncate(u16, u16),
    BitFlip(u16, u16, u8),
    DamageIndex(u16, bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (prop::collection::vec(prop::collection::vec(any::<u8>(), 0..60), 1..5), 0i64..1000)
            .prop_map(|(r, t)| Op::Append(r, t)),
        2 => any::<u16>().prop_map(Op::Read),
        3 => prop::collection::vec(any::<u16>(), 1..6).prop_map(Op::Settle),
        2 => prop::collection::vec(any::<u16>(), 1..6).prop_map(Op::Deliver),
        2 => (any::<u16>(), 1u8..40).prop_map(|(k, n)| Op::SettleRun(k, n)),
        2 => (any::<u16>(), 1u8..40).prop_map(|(k, n)| Op::DeliverRun(k, n)),
        1 => (any::<u16>(), 0i64..1_000_000).prop_map(|(o, t)| Op::NotBefore(o, t)),
        1 => Just(Op::Restart),
        1 => (any::<u16>(), any::<u16>()).prop_map(|(s, p)| Op::Truncate(s, p)),
        1 => (any::<u16>(), any::<u16>(), 0u8..8).prop_map(|(b, p, bit)| Op::BitFlip(b, p, bit)),
        1 => (any::<u16>(), any::<bool>()).prop_map(|(s, d)| Op::DamageIndex(s, d)),
    ]
}

#[derive(Debug, Clone)]
struct MBatch {
    base: u64,
    ts: i64,
    recs: Vec<Bytes>,
    alive: bool,
    on_disk: bool,
    /// Base of the segment file the batch was written to.
    seg: u64,
}

impl MBatch {
    fn len(&self) -> u64 {
        32 + self.recs.iter().map(|r| 4 + r.len() as u64).sum::<u64>()
    }
    fn next(&self) -> u64 {
        self.base + self.recs.len() as u64
    }
}

#[derive(Default, Debug)]
struct Model {
    batches: Vec<MBatch>,
    next: u64,
    settled: BTreeSet<u64>,
    delivered: BTreeMap<u64, u32>,
    not_before: BTreeMap<u64, i64>,
}

impl Model {
    fn unsettled(&self) -> Vec<(u64, i64, Bytes)> {
        let mut v = Vec::new();
        for b in self.batches.iter().filter(|b| b.alive) {
            for (i, r) in b.recs.iter().enumerate() {
                let o = b.base + i as u64;
                if !self.settled.contains(&o) {
                    v.push((o, b.ts, r.clone()));
                }
            }
        }
        v
    }

    fn pick(&self, k: u16) -> Option<u64> {
        let u = self.unsettled();
        (!u.is_empty()).then(|| u[k as usize % u.len()].0)
    }
}

fn config() -> StorageConfig {
    StorageConfig {
        segment_bytes: 600,
        index_interval_bytes: 150,
        ..Default::default()
    }
}

fn open(root: &Path) -> (Arc<Storage>, Arc<QueueLog>) {
    let s = Storage::open(root, config()).unwrap();
    let q = s
        .open_queue(
            "model",
            LogOptions {
                durability: Some(Durability::T1),
                segment_bytes: None,
            },
        )
        .unwrap();
    (s, q)
}

/// Segment files (base, path), sorted.
fn segments(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            let n = p.file_name()?.to_str()?.to_string();
            let base = n.strip_suffix(".seg")?.parse().ok()?;
            Some((base, p))
        })
        .collect();
    v.sort();
    v
}

/// Indices of model batches stored in the segment with `base`, with their positions.
fn batches_in(m: &Model, base: u64) -> Vec<(usize, u64)> {
    let mut pos = SEG_HEADER;
    let mut v = Vec::new();
    for (i, b) in m.batches.iter().enumerate() {
        if b.seg == base && b.on_disk {
            v.push((i, pos));
            pos += b.len();
        }
    }
    v
}

/// After a recovery: the trailing run of dead batches in the last segment is cut, and its
/// offsets (and their delivery state) are reused.
fn apply_recovery(m: &mut Model, last_base: u64) {
    while let Some(b) = m.batches.last() {
        if b.base >= last_base && !b.alive {
            m.next = b.base;
            m.batches.pop();
        } else {
            break;
        }
    }
    let next = m.next;
    m.settled.retain(|&o| o < next);
    m.delivered.retain(|&o, _| o < next);
    m.not_before.retain(|&o, _| o < next);
}

fn check(q: &QueueLog, m: &Model) {
    let log = q.log();
    assert_eq!(log.next_offset(), m.next, "next offset");
    // Every record read is an intact record of a live batch; every live batch with an
    // unsettled message is read in full.
    let by_base: BTreeMap<u64, &MBatch> = m.batches.iter().map(|b| (b.base, b)).collect();
    let mut seen = BTreeSet::new();
    let mut from = 0;
    loop {
        let bs = log.read(from, 300).unwrap();
        if bs.is_empty() {
            break;
        }
        for b in &bs {
            let mb = by_base
                .get(&b.base_offset)
                .unwrap_or_else(|| panic!("unknown batch {}", b.base_offset));
            assert!(mb.alive, "dead batch {} returned", b.base_offset);
            let recs: Vec<Bytes> = b.records().map(|r| r.1).collect();
            assert_eq!(recs, mb.recs);
            assert_eq!(b.timestamp_ms, mb.ts);
            seen.insert(b.base_offset);
            assert!(b.next_offset() > from);
            from = b.next_offset();
        }
    }
    let want = m.unsettled();
    for (o, _, _) in &want {
        let b = m
            .batches
            .iter()
            .find(|b| b.base <= *o && *o < b.next())
            .unwrap();
        assert!(
            seen.contains(&b.base),
            "live batch {} with unsettled messages not read",
            b.base
        );
    }
    let got: Vec<_> = q.recover().map(|r| r.unwrap()).collect();
    assert_eq!(got.len(), want.len(), "recover() count");
    for (p, (o, ts, body)) in got.iter().zip(&want) {
        assert_eq!(p.offset, *o);
        assert_eq!(p.timestamp_ms, *ts);
        assert_eq!(&p.body, body);
        assert_eq!(
            p.delivery_count,
            m.delivered.get(o).copied().unwrap_or(0),
            "delivery count of {o}"
        );
        assert_eq!(
            p.not_before_ms,
            m.not_before.get(o).copied(),
            "not-before of {o}"
        );
    }
    assert_eq!(q.unsettled_count(), want.len() as u64, "unsettled_count");
}

fn run(ops: Vec<Op>) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut m = Model::default();
    let (mut s, mut q) = open(root);
    let dir = q.log().dir().to_path_buf();
    for op in ops {
        // A run is the same operation on the k-th, (k+1)-th, … unsettled messages.
        let run = |k: u16, n: u8| (0..u16::from(n)).map(|i| k.wrapping_add(i)).collect();
        let op = match op {
            Op::SettleRun(k, n) => Op::Settle(run(k, n)),
            Op::DeliverRun(k, n) => Op::Deliver(run(k, n)),
            op => op,
        };
        match op {
            Op::Append(recs, ts) => {
                let recs: Vec<Bytes> = recs.into_iter().map(Bytes::from).collect();
                let a = q.append(&recs, ts).unwrap();
                assert_eq!(a.base_offset, m.next);
                let seg = segments(&dir).last().map_or(0, |x| x.0);
                m.batches.push(MBatch {
                    seg,
                    base: m.next,
                    ts,
                    recs,
                    alive: true,
                    on_disk: true,
                });
                m.next = a.next_offset;
            }
            Op::SettleRun(..) | Op::DeliverRun(..) => unreachable!("rewritten above"),
            Op::Read(k) => {
                if let Some(o) = m.pick(k) {
                    let bs = q.log().read(o, 1).unwrap();
                    assert!(bs[0].base_offset <= o && o < bs[0].next_offset());
                    let body = m.unsettled().into_iter().find(|x| x.0 == o).unwrap().2;
                    assert_eq!(q.read_message(o).unwrap(), Some(body));
                }
            }
            Op::Settle(ks) => {
                let offs: Vec<u64> = ks.iter().filter_map(|&k| m.pick(k)).collect();
                q.settle(&offs).unwrap();
                for o in offs {
                    m.settled.insert(o);
                    m.delivered.remove(&o);
                    m.not_before.remove(&o);
                }
            }
            Op::Deliver(ks) => {
                let offs: Vec<u64> = ks.iter().filter_map(|&k| m.pick(k)).collect();
                q.record_delivery(&offs).unwrap();
                for o in offs {
                    *m.delivered.entry(o).or_default() += 1;
                }
            }
            Op::NotBefore(k, t) => {
                if let Some(o) = m.pick(k) {
                    q.set_not_before(o, t).unwrap();
                    m.not_before.insert(o, t);
                }
            }
            Op::Restart | Op::Truncate(..) | Op::BitFlip(..) | Op::DamageIndex(..) => {
                drop(q);
                drop(s);
                let segs = segments(&dir);
                let last_base = segs.last().map_or(0, |x| x.0);
                match op {
                    Op::Truncate(si, p) if !segs.is_empty() => {
                        let i = si as usize % segs.len();
                        let len = std::fs::metadata(&segs[i].1).unwrap().len();
                        let cut = SEG_HEADER + u64::from(p) % (len - SEG_HEADER + 1);
                        let f = std::fs::OpenOptions::new()
                            .write(true)
                            .open(&segs[i].1)
                            .unwrap();
                        f.set_len(cut).unwrap();
                        for (bi, pos) in batches_in(&m, segs[i].0) {
                            if pos + m.batches[bi].len() > cut {
                                m.batches[bi].alive = false;
                                m.batches[bi].on_disk = false;
                            }
                        }
                    }
                    Op::BitFlip(bk, p, bit) => {
                        let on_disk: Vec<(usize, u64, PathBuf)> = segs
                            .iter()
                            .flat_map(|(b, path)| {
                                batches_in(&m, *b)
                                    .into_iter()
                                    // Flipping a dead batch again could restore it.
                                    .filter(|(bi, _)| m.batches[*bi].alive)
                                    .map(move |(bi, pos)| (bi, pos, path.clone()))
                            })
                            .collect();
                        if !on_disk.is_empty() {
                            let (bi, pos, path) = &on_disk[bk as usize % on_disk.len()];
                            let at = pos + u64::from(p) % m.batches[*bi].len();
                            let mut data = std::fs::read(path).unwrap();
                            data[at as usize] ^= 1 << bit;
                            std::fs::write(path, data).unwrap();
                            m.batches[*bi].alive = false;
                        }
                    }
                    Op::DamageIndex(si, delete) if !segs.is_empty() => {
                        let (b, _) = segs[si as usize % segs.len()];
                        for ext in ["idx", "tix"] {
                            let p = dir.join(format!("{b:020}.{ext}"));
                            if delete {
                                let _ = std::fs::remove_file(&p);
                            } else if let Ok(mut d) = std::fs::read(&p) {
                                if !d.is_empty() {
                                    let k = d.len() / 3;
                                    d[k] ^= 0x5a;
                                    std::fs::write(&p, d).unwrap();
                                }
                            }
                        }
                    }
                    _ => {}
                }
                apply_recovery(&mut m, last_base);
                (s, q) = open(root);
                check(&q, &m);
            }
        }
    }
    check(&q, &m);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 2000, ..ProptestConfig::default() })]
    #[test]
    fn log_and_queue_state_match_the_model(ops in prop::collection::vec(op(), 1..120)) {
        run(ops);
    }
}
