//! The machine's own limits, measured in the same run as the Kafka figures they frame:
//! - [`loopback_tcp`]: one TCP stream over loopback, a writer thread pumping 256 KiB writes to a
//!   reader thread (what one producer connection could carry with no broker in between);
//! - [`raw_group_commit`]: rounds of one `pwrite` of `round_bytes` at the end of a file plus
//!   `fdatasync`, one after the other, in the broker's data directory (the storage benchmark's
//!   "fair raw" baseline: the disk's bandwidth when every round carries that many bytes);
//! - [`page_cache_write`]: `pwrite`s at the end of a new file with no fsync, one thread (what
//!   a T1 append costs before any broker work: the kernel's copy into fresh page-cache pages).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Bytes per `write` of the TCP pump.
const PUMP_WRITE: usize = 256 * 1024;

/// A measured bandwidth.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bandwidth {
    pub bytes: u64,
    pub seconds: f64,
    /// 10^6 bytes per second.
    pub mb_per_s: f64,
    /// Rounds (fsyncs) or writes done.
    pub ops: u64,
}

impl Bandwidth {
    fn new(bytes: u64, ops: u64, seconds: f64) -> Bandwidth {
        Bandwidth {
            bytes,
            seconds,
            mb_per_s: if seconds > 0.0 {
                bytes as f64 / seconds / 1e6
            } else {
                0.0
            },
            ops,
        }
    }
}

/// One loopback TCP stream for `d`: a writer thread, a reader thread.
///
/// # Errors
/// Socket failures.
pub fn loopback_tcp(d: Duration) -> Result<Bandwidth> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
    let addr = l.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = l.accept()?;
        let mut buf = vec![0u8; PUMP_WRITE];
        let mut n = 0u64;
        loop {
            match s.read(&mut buf)? {
                0 => return Ok(n),
                k => n += k as u64,
            }
        }
    });
    let mut w = TcpStream::connect(addr).context("connecting over loopback")?;
    let buf = vec![0x5au8; PUMP_WRITE];
    let (t0, mut sent, mut writes) = (Instant::now(), 0u64, 0u64);
    while t0.elapsed() < d {
        w.write_all(&buf)?;
        sent += PUMP_WRITE as u64;
        writes += 1;
    }
    drop(w);
    let got = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the pump's reader panicked"))??;
    let secs = t0.elapsed().as_secs_f64();
    Ok(Bandwidth::new(got.min(sent), writes, secs))
}

/// Rounds of (`pwrite` of `round_bytes` at the end of a file + `fdatasync`) for `d`, in `dir`;
/// the file is removed afterwards.
///
/// # Errors
/// File failures.
pub fn raw_group_commit(dir: &Path, round_bytes: usize, d: Duration) -> Result<Bandwidth> {
    appends(
        dir,
        "raw",
        &vec![0xa5u8; round_bytes.max(1)],
        true,
        false,
        d,
    )
}

/// Rounds of (direct `pwrite`, `O_DIRECT`, of `round_bytes` rounded up to 4 KiB blocks at
/// the end of a file + `fdatasync`) for `d`, in `dir`: how the broker writes T2 batches where
/// the file system allows (`storage.direct_writes`). `None` where it has no direct I/O. The
/// bandwidth counts `round_bytes` per round (the padding is not credited). The file is removed
/// afterwards.
///
/// # Errors
/// File failures other than direct I/O being unsupported.
pub fn raw_group_commit_direct(
    dir: &Path,
    round_bytes: usize,
    d: Duration,
) -> Result<Option<Bandwidth>> {
    const ALIGN: usize = 4096;
    let len = round_bytes.max(1).next_multiple_of(ALIGN);
    let v = vec![0xa5u8; len + ALIGN];
    let off = v.as_ptr().align_offset(ALIGN);
    match appends(dir, "raw-direct", &v[off..off + len], true, true, d) {
        Ok(b) => Ok(Some(Bandwidth::new(
            b.ops * round_bytes as u64,
            b.ops,
            b.seconds,
        ))),
        Err(e) if is_einval(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether `e` comes from an `EINVAL` (a file system refusing `O_DIRECT`).
fn is_einval(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EINVAL))
    })
}

/// `pwrite`s of `chunk` bytes at the end of a new file in `dir` for `d`, with no fsync: the
/// page cache's write bandwidth from one thread. The file is removed afterwards (its dirty
/// pages with it, so little of it reaches the disk).
///
/// # Errors
/// File failures.
pub fn page_cache_write(dir: &Path, chunk: usize, d: Duration) -> Result<Bandwidth> {
    appends(dir, "cache", &vec![0xa5u8; chunk.max(1)], false, false, d)
}

/// `pwrite`s of `buf` at the end of a new file in `dir` for `d` (with `O_DIRECT` when
/// `direct`: `buf` is then aligned), each followed by an `fdatasync` when `sync`; the file is
/// removed afterwards.
fn appends(
    dir: &Path,
    name: &str,
    buf: &[u8],
    sync: bool,
    direct: bool,
    d: Duration,
) -> Result<Bandwidth> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(format!("ferrymq-bench-{name}-{}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .custom_flags(if direct { libc::O_DIRECT } else { 0 })
        .open(&path);
    let f = match f {
        Ok(f) => f,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(e).with_context(|| format!("creating {}", path.display()));
        }
    };
    let (t0, mut pos, mut ops) = (Instant::now(), 0u64, 0u64);
    let r = (|| -> std::io::Result<()> {
        while t0.elapsed() < d {
            f.write_all_at(buf, pos)?;
            if sync {
                f.sync_data()?;
            }
            pos += buf.len() as u64;
            ops += 1;
        }
        Ok(())
    })();
    let secs = t0.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    r.with_context(|| format!("writing {}", path.display()))?;
    Ok(Bandwidth::new(pos, ops, secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_pump_moves_bytes() {
        let b = loopback_tcp(Duration::from_millis(50)).unwrap();
        assert!(b.bytes > 0 && b.ops > 0 && b.mb_per_s > 0.0, "{b:?}");
        assert!(b.bytes <= b.ops * PUMP_WRITE as u64);
    }

    #[test]
    fn raw_direct_rounds_write_and_clean_up() {
        let d = tempfile::tempdir().unwrap();
        // 5000 B rounds go out as two 4 KiB blocks each, and are credited as 5000 B.
        let b = raw_group_commit_direct(d.path(), 5000, Duration::from_millis(30))
            .unwrap()
            .expect("the test directory's file system does direct I/O");
        assert!(b.ops >= 1, "{b:?}");
        assert_eq!(b.bytes, b.ops * 5000);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn raw_rounds_write_and_clean_up() {
        let d = tempfile::tempdir().unwrap();
        let b = raw_group_commit(d.path(), 4096, Duration::from_millis(30)).unwrap();
        assert!(b.ops >= 1, "{b:?}");
        assert_eq!(b.bytes, b.ops * 4096);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn page_cache_writes_and_cleans_up() {
        let d = tempfile::tempdir().unwrap();
        let b = page_cache_write(d.path(), 8192, Duration::from_millis(30)).unwrap();
        assert!(b.ops >= 1 && b.mb_per_s > 0.0, "{b:?}");
        assert_eq!(b.bytes, b.ops * 8192);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
