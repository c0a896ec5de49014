//! Storage throughput benchmark (harness = false): appends of 16 B, 1 KiB and 64 KiB records
//! with 1 and 64 writer threads at T1 and T2, small-batch T1 appends, and a sequential read of
//! a cold 1 GiB backlog; each next to the raw rate of the same disk for the same bytes.
//!
//! `cargo bench -p ferrymq-storage --bench throughput`. Environment:
//! `FERRYMQ_BENCH_SCALE` (default 1.0) scales durations and the backlog size;
//! `FERRYMQ_BENCH_DIR` chooses the data directory (default: Cargo's target tmp dir, on disk).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferrymq_storage::{Durability, LogOptions, Storage, StorageConfig};

struct Bench {
    dir: PathBuf,
    scale: f64,
    run: u64,
}

impl Bench {
    fn fresh(&mut self) -> PathBuf {
        self.run += 1;
        let d = self.dir.join(format!("run-{}", self.run));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("bench dir");
        d
    }
    fn dur(&self, secs: f64) -> Duration {
        Duration::from_secs_f64((secs * self.scale).max(0.05))
    }
}

fn encoded(record: usize, per_batch: usize) -> usize {
    32 + per_batch * (4 + record)
}

/// Raw disk: `rounds` of (pwrite `bytes` at the end + fdatasync), for `d`. Returns rounds/s.
fn raw_group_commit(dir: &Path, bytes: usize, d: Duration) -> f64 {
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.join("raw"))
        .expect("raw file");
    let buf = vec![0x5au8; bytes];
    let (mut pos, mut n) = (0u64, 0u64);
    let t = Instant::now();
    while t.elapsed() < d {
        f.write_all_at(&buf, pos).expect("raw write");
        f.sync_data().expect("raw fsync");
        pos += bytes as u64;
        n += 1;
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// Raw page-cache writes: one pwrite of `bytes` per call, no fsync. Returns calls/s.
fn raw_writes(dir: &Path, bytes: usize, d: Duration) -> f64 {
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.join("raw"))
        .expect("raw file");
    let buf = vec![0x5au8; bytes];
    let (mut pos, mut n) = (0u64, 0u64);
    let t = Instant::now();
    let cap = 2u64 << 30;
    while pos < cap {
        f.write_all_at(&buf, pos).expect("raw write");
        pos += bytes as u64;
        n += 1;
        if n % 256 == 0 && t.elapsed() >= d {
            break;
        }
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// Appends batches of `per_batch` records of `size` bytes from `writers` threads for `d`.
/// Returns records/s.
fn appends(
    dir: &Path,
    tier: Durability,
    size: usize,
    per_batch: usize,
    writers: usize,
    d: Duration,
) -> (f64, u64) {
    let s = Storage::open(dir, StorageConfig::default()).expect("open");
    let log = s
        .open_log(
            "bench",
            "log",
            LogOptions {
                durability: Some(tier),
                segment_bytes: None,
            },
        )
        .expect("log");
    let recs: Vec<Bytes> = (0..per_batch)
        .map(|i| Bytes::from(vec![i as u8; size]))
        .collect();
    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let byte_cap = 3u64 << 30; // keep disk use bounded at page-cache speed
    let t = Instant::now();
    std::thread::scope(|sc| {
        for _ in 0..writers {
            sc.spawn(|| {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let a = log.append(&recs, 0).expect("append");
                    a.commit.wait().expect("commit");
                    n += per_batch as u64;
                    if n % 1024 < per_batch as u64
                        && (t.elapsed() >= d || log.size_bytes() > byte_cap)
                    {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
                count.fetch_add(n, Ordering::Relaxed);
            });
        }
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(5));
            if t.elapsed() >= d {
                stop.store(true, Ordering::Relaxed);
            }
        }
    });
    let el = t.elapsed().as_secs_f64();
    let m = s.metrics();
    (count.load(Ordering::Relaxed) as f64 / el, m.fsync_count)
}

/// Writes back all dirty data (ours and earlier tests') before measuring.
fn settle_disk() {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
}

fn drop_caches() -> bool {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", b"1").is_ok()
}

fn main() {
    let scale: f64 = std::env::var("FERRYMQ_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let dir = std::env::var("FERRYMQ_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ferrymq-storage-bench")
        });
    // `cargo bench` passes `--bench`; ignore arguments.
    let mut b = Bench {
        dir: dir.clone(),
        scale,
        run: 0,
    };
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "# ferrymq-storage throughput (scale {scale}, dir {})",
        dir.display()
    );
    println!();
    println!("| test | tier | record | writers | records/s | MB/s | raw disk, same bytes | ratio | fsyncs |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let secs = 2.0;
    for &(size, per_batch) in &[(16usize, 1usize), (16, 10), (1024, 1), (65536, 1)] {
        for &writers in &[1usize, 64] {
            if per_batch > 1 && writers > 1 {
                continue;
            }
            for tier in [Durability::T1, Durability::T2] {
                let d = b.fresh();
                let bytes = encoded(size, per_batch);
                // Raw first, then ours, each after flushing all dirty data so that background
                // writeback of an earlier test does not land in this one.
                // Raw: T1 = one plain pwrite per batch; T2 = (pwrite of `writers` batches + fdatasync)
                // per round, the best group commit can do with `writers` outstanding appends.
                settle_disk();
                let (raw_rate, raw_desc) = if tier == Durability::T1 {
                    let calls = raw_writes(&d, bytes, b.dur(1.0));
                    (
                        calls * per_batch as f64,
                        format!("{:.0} rec/s (pwrite {bytes} B)", calls * per_batch as f64),
                    )
                } else {
                    let rounds = raw_group_commit(&d, bytes * writers, b.dur(1.0));
                    let r = rounds * (writers * per_batch) as f64;
                    (
                        r,
                        format!("{r:.0} rec/s (pwrite {} B + fdatasync)", bytes * writers),
                    )
                };
                let _ = std::fs::remove_file(d.join("raw"));
                settle_disk();
                let (rate, fsyncs) = appends(&d, tier, size, per_batch, writers, b.dur(secs));
                let _ = std::fs::remove_dir_all(&d);
                let label = if per_batch > 1 {
                    format!("append, batches of {per_batch}")
                } else {
                    "append".to_string()
                };
                println!(
                    "| {label} | {} | {size} B | {writers} | {rate:.0} | {:.1} | {raw_desc} | {:.0}% | {fsyncs} |",
                    if tier == Durability::T1 { "T1" } else { "T2" },
                    rate * size as f64 / 1e6,
                    100.0 * rate / raw_rate
                );
            }
        }
    }

    // Sequential read of a cold backlog.
    let d = b.fresh();
    let backlog = ((1u64 << 30) as f64 * scale.min(1.0)) as u64;
    let per_batch = 64;
    let rec = 1024;
    {
        let s = Storage::open(&d, StorageConfig::default()).expect("open");
        let log = s
            .open_log(
                "bench",
                "read",
                LogOptions {
                    durability: Some(Durability::T1),
                    segment_bytes: None,
                },
            )
            .expect("log");
        let recs: Vec<Bytes> = (0..per_batch)
            .map(|i| Bytes::from(vec![i as u8; rec]))
            .collect();
        while log.size_bytes() < backlog {
            let _ = log.append(&recs, 0).expect("append");
        }
        s.sync_all().expect("sync");
    }
    let dropped = drop_caches();
    let s = Storage::open(&d, StorageConfig::default()).expect("open");
    let log = s
        .open_log("bench", "read", LogOptions::default())
        .expect("log");
    let t = Instant::now();
    let (mut from, mut bytes, mut n) = (0u64, 0u64, 0u64);
    loop {
        let batches = log.read(from, 4 << 20).expect("read");
        if batches.is_empty() {
            break;
        }
        for bt in &batches {
            for (_, r) in bt.records() {
                bytes += r.len() as u64;
                n += 1;
            }
            from = bt.next_offset();
        }
    }
    let el = t.elapsed().as_secs_f64();
    let size = log.size_bytes();
    drop(log);
    drop(s);
    // Raw: pread 4 MiB chunks of the same segment files, cold again.
    let dropped2 = drop_caches();
    let mut files: Vec<PathBuf> = std::fs::read_dir(d.join("bench").join("read"))
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    files.sort();
    let t2 = Instant::now();
    let mut raw_bytes = 0u64;
    let mut buf = vec![0u8; 4 << 20];
    for p in &files {
        let f = File::open(p).expect("open seg");
        let mut pos = 0;
        loop {
            let k = f.read_at(&mut buf, pos).expect("read");
            if k == 0 {
                break;
            }
            pos += k as u64;
            raw_bytes += k as u64;
        }
    }
    let raw_el = t2.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&d);
    let gbs = size as f64 / el / 1e9;
    let raw_gbs = raw_bytes as f64 / raw_el / 1e9;
    println!(
        "| read {} MiB backlog (1 KiB records, 64/batch), cache dropped: {} | - | 1 KiB | 1 | {:.0} | {:.0} | {:.2} GB/s (pread 4 MiB, cache dropped: {}) | {:.0}% | - |",
        size >> 20,
        if dropped { "yes" } else { "no" },
        n as f64 / el,
        bytes as f64 / el / 1e6,
        raw_gbs,
        if dropped2 { "yes" } else { "no" },
        100.0 * gbs / raw_gbs
    );
    println!();
    println!(
        "read: {:.2} GB/s of segment bytes ({} records, {:.2} s)",
        gbs, n, el
    );
}
