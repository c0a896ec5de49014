//! Disk faults: a really full disk (a 2 MiB tmpfs when running as root and mount works,
//! else an injected ENOSPC), an injected short write, a failed rollback and a failed fsync
//! (fsyncgate); and a corrupted or missing index. Errors are typed, nothing panics, and
//! recovery never accepts a half-written batch.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use ferrymq_storage::fault::{FaultPlan, FaultyVfs};
use ferrymq_storage::{Durability, Log, LogOptions, Storage, StorageConfig, StorageError};

fn cfg() -> StorageConfig {
    StorageConfig {
        segment_bytes: 256 << 10,
        index_interval_bytes: 1024,
        ..Default::default()
    }
}

fn rec(i: u64) -> Bytes {
    let mut v = format!("record-{i}-").into_bytes();
    v.resize(1000, (i % 251) as u8);
    Bytes::from(v)
}

fn read_all(log: &Log) -> Vec<(u64, Bytes)> {
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let b = log.read(from, 1 << 20).unwrap();
        if b.is_empty() {
            return out;
        }
        for batch in &b {
            out.extend(batch.records().filter(|(o, _)| *o >= from));
            from = batch.next_offset();
        }
    }
}

fn tier(durability: Durability) -> LogOptions {
    LogOptions {
        durability: Some(durability),
        ..Default::default()
    }
}

/// Appends until the disk is full; checks the error, then that everything acknowledged is
/// intact after a reopen and that appends work again once space is freed.
///
/// At T1 the failed `pwrite` is the append's own: it is rolled back and the log stays usable.
/// At T2 appends are written behind by the group-commit round, so the full disk is usually
/// reported by the `Commit`, and the log then refuses appends (as `NoSpace`) until reopened,
/// because the lost records already had offsets.
fn fill_until_full(
    root: &Path,
    storage: Arc<Storage>,
    durability: Durability,
    free_space: impl FnOnce(),
) {
    let log = storage.open_log("logs", "full", tier(durability)).unwrap();
    let mut acked = Vec::new();
    let err = loop {
        let i = acked.len() as u64;
        match log.append(&[rec(i)], 0) {
            Ok(a) => match a.commit.wait() {
                Ok(()) => acked.push((a.base_offset, rec(i))),
                Err(e) => break e,
            },
            Err(e) => break e,
        }
        assert!(acked.len() < 1_000_000, "disk never filled");
    };
    assert!(err.is_no_space(), "expected NoSpace, got {err:?}");
    if durability == Durability::T1 {
        assert!(
            !log.is_failed(),
            "a rolled-back ENOSPC does not fail the log"
        );
    }
    let again = log.append(&[rec(0)], 0).and_then(|a| a.commit.wait());
    assert!(
        again.as_ref().is_err_and(StorageError::is_no_space),
        "still full: {again:?}"
    );
    assert_eq!(read_all(&log), acked);
    drop(log);
    drop(storage);
    free_space();
    let storage = Storage::open(root, cfg()).unwrap();
    let log = storage.open_log("logs", "full", tier(durability)).unwrap();
    assert_eq!(
        log.next_offset(),
        acked.len() as u64,
        "no half-written batch survived"
    );
    assert_eq!(read_all(&log), acked);
    let a = log.append(&[rec(7)], 0).unwrap();
    a.commit.wait().unwrap();
}

fn try_mount_tmpfs(dir: &Path) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return false;
    }
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn full_disk_is_a_typed_error_and_recoverable() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mnt");
    std::fs::create_dir_all(&root).unwrap();
    if try_mount_tmpfs(&root) {
        eprintln!("using a real 2 MiB tmpfs");
        for durability in [Durability::T1, Durability::T2] {
            let data = root.join("data");
            let filler = root.join("filler");
            std::fs::write(&filler, vec![0u8; 200 << 10]).unwrap();
            let s = Storage::open(&data, cfg()).unwrap();
            fill_until_full(&data, s, durability, || {
                std::fs::remove_file(&filler).unwrap()
            });
            std::fs::remove_dir_all(&data).unwrap();
        }
        let _ = Command::new("umount").arg(&root).status();
    } else {
        eprintln!("tmpfs not available (not root or mount failed): injected ENOSPC only");
        injected_full_disk(&root.join("t1"), Durability::T1);
        injected_full_disk(&root.join("t2"), Durability::T2);
    }
}

fn injected_full_disk(root: &Path, durability: Durability) {
    let plan = FaultPlan::new("");
    plan.write_budget.store(300_000, Ordering::SeqCst);
    let s =
        Storage::open_with_vfs(root, cfg(), Arc::new(FaultyVfs { plan: plan.clone() })).unwrap();
    fill_until_full(root, s, durability, || {
        plan.write_budget.store(u64::MAX, Ordering::SeqCst)
    });
}

#[test]
fn injected_full_disk_is_a_typed_error_and_recoverable() {
    for durability in [Durability::T1, Durability::T2] {
        let dir = tempfile::tempdir().unwrap();
        injected_full_disk(dir.path(), durability);
    }
}

#[test]
fn short_write_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new(".seg");
    let vfs = Arc::new(FaultyVfs { plan: plan.clone() });
    let s = Storage::open_with_vfs(dir.path(), cfg(), vfs).unwrap();
    let log = s
        .open_log(
            "logs",
            "w",
            LogOptions {
                durability: Some(Durability::T1),
                ..Default::default()
            },
        )
        .unwrap();
    for i in 0..10 {
        let _ = log.append(&[rec(i)], 0).unwrap();
    }
    let size = log.size_bytes();
    plan.write_budget.store(500, Ordering::SeqCst); // half a batch, then ENOSPC
    assert!(log.append(&[rec(10)], 0).unwrap_err().is_no_space());
    assert_eq!(log.size_bytes(), size);
    let seg = log.dir().join(format!("{:020}.seg", 0));
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        size,
        "partial batch truncated"
    );
    plan.write_budget.store(u64::MAX, Ordering::SeqCst);
    assert_eq!(log.append(&[rec(10)], 0).unwrap().base_offset, 10);
    assert_eq!(read_all(&log).len(), 11);
}

#[test]
fn failed_rollback_fails_the_log() {
    for durability in [Durability::T1, Durability::T2] {
        let dir = tempfile::tempdir().unwrap();
        let plan = FaultPlan::new(".seg");
        let s = Storage::open_with_vfs(
            dir.path(),
            cfg(),
            Arc::new(FaultyVfs { plan: plan.clone() }),
        )
        .unwrap();
        let log = s.open_log("logs", "r", tier(durability)).unwrap();
        log.append(&[rec(0)], 0).unwrap().commit.wait().unwrap();
        plan.write_budget.store(100, Ordering::SeqCst);
        plan.fail_set_len.store(true, Ordering::SeqCst);
        // T1 reports the failed write from `append`, T2 (written behind) from the commit.
        assert!(log
            .append(&[rec(1)], 0)
            .and_then(|a| a.commit.wait())
            .is_err());
        assert!(log.is_failed());
        plan.write_budget.store(u64::MAX, Ordering::SeqCst);
        plan.fail_set_len.store(false, Ordering::SeqCst);
        let later = log.append(&[rec(2)], 0);
        match durability {
            Durability::T1 => assert!(matches!(later, Err(StorageError::LogFailed { .. }))),
            // A write-behind that hit the (injected) full disk keeps reporting it.
            _ => assert!(later.is_err_and(|e| e.is_no_space())),
        }
        // Readers never see the lost batch, before or after recovery.
        assert_eq!(read_all(&log), vec![(0, rec(0))]);
        drop(log);
        drop(s);
        // Recovery cuts the half batch.
        let s = Storage::open(dir.path(), cfg()).unwrap();
        let log = s.open_log("logs", "r", tier(durability)).unwrap();
        assert_eq!(log.next_offset(), 1);
        assert_eq!(read_all(&log), vec![(0, rec(0))]);
    }
}

#[test]
fn failed_fsync_is_never_reported_as_success() {
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new(".seg");
    let s = Storage::open_with_vfs(
        dir.path(),
        cfg(),
        Arc::new(FaultyVfs { plan: plan.clone() }),
    )
    .unwrap();
    let log = s.open_log("logs", "f", LogOptions::default()).unwrap();
    log.append(&[rec(0)], 0).unwrap().commit.wait().unwrap();
    plan.fail_sync.store(true, Ordering::SeqCst);
    let c = log.append(&[rec(1)], 0).unwrap().commit;
    assert!(matches!(c.wait(), Err(StorageError::LogFailed { .. })));
    plan.fail_sync.store(false, Ordering::SeqCst);
    // fsyncgate: a later fsync may "succeed" after the kernel dropped the dirty pages.
    assert!(matches!(
        log.append(&[rec(2)], 0),
        Err(StorageError::LogFailed { .. })
    ));
    assert!(s.metrics().fsync_errors >= 1);
    // Another log of the same storage is unaffected.
    let other = s.open_log("logs", "g", LogOptions::default()).unwrap();
    other.append(&[rec(0)], 0).unwrap().commit.wait().unwrap();
}

#[test]
fn corrupted_and_missing_index_files_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let small = StorageConfig {
        segment_bytes: 16 << 10,
        index_interval_bytes: 2048,
        ..Default::default()
    };
    let mut expect = Vec::new();
    let logdir = {
        let s = Storage::open(dir.path(), small.clone()).unwrap();
        let log = s.open_log("logs", "idx", LogOptions::default()).unwrap();
        for i in 0..200 {
            let a = log.append(&[rec(i)], i as i64).unwrap();
            a.commit.wait().unwrap();
            expect.push((i, rec(i)));
        }
        log.dir().to_path_buf()
    };
    let mut files: Vec<_> = std::fs::read_dir(&logdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for (k, p) in files.iter().enumerate() {
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext == "idx" && k % 3 == 0 {
            std::fs::remove_file(p).unwrap();
        } else if ext == "tix" || ext == "idx" {
            std::fs::write(p, b"garbage that is not an index").unwrap();
        }
    }
    let s = Storage::open(dir.path(), small).unwrap();
    let log = s.open_log("logs", "idx", LogOptions::default()).unwrap();
    assert_eq!(read_all(&log), expect);
    for o in [0u64, 33, 100, 150, 199] {
        assert_eq!(log.read(o, 1).unwrap()[0].base_offset, o);
        assert_eq!(log.offset_for_timestamp(o as i64).unwrap(), Some(o));
    }
    assert!(s.metrics().index_rebuilds > 0);
}
