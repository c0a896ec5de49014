//! A fault-injecting `Vfs` for tests: a write budget that ends in a short write plus ENOSPC,
//! failing fsyncs, failing truncations and EIO on reads, switchable at run time.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::vfs::{FileIo, StdVfs, Vfs};

/// Shared switches; clone the `Arc` into the test and flip them while the engine runs.
#[derive(Debug)]
pub struct FaultPlan {
    /// Bytes that may still be written (across all files); a write beyond it is cut short
    /// and fails with ENOSPC. `u64::MAX` disables the fault.
    pub write_budget: AtomicU64,
    /// Every `sync_data` fails with EIO.
    pub fail_sync: AtomicBool,
    /// Every `set_len` fails with EIO.
    pub fail_set_len: AtomicBool,
    /// Every read fails with EIO.
    pub fail_read: AtomicBool,
    /// Only files whose name ends with this suffix are affected (e.g. ".seg"); empty = all.
    pub suffix: String,
}

impl FaultPlan {
    pub fn new(suffix: &str) -> Arc<FaultPlan> {
        Arc::new(FaultPlan {
            write_budget: AtomicU64::new(u64::MAX),
            fail_sync: AtomicBool::new(false),
            fail_set_len: AtomicBool::new(false),
            fail_read: AtomicBool::new(false),
            suffix: suffix.to_string(),
        })
    }
}

/// `StdVfs` with the faults of a `FaultPlan`.
#[derive(Debug, Clone)]
pub struct FaultyVfs {
    pub plan: Arc<FaultPlan>,
}

impl Vfs for FaultyVfs {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn FileIo>> {
        let inner = StdVfs.open(path, create)?;
        let name = path.to_string_lossy();
        // A segment still under its `.tmp` name (a T2 roll not yet durable) counts as one.
        let name = name.strip_suffix(".tmp").unwrap_or(&name);
        if name.ends_with(self.plan.suffix.as_str()) {
            Ok(Arc::new(FaultyFile {
                inner,
                plan: self.plan.clone(),
            }))
        } else {
            Ok(inner)
        }
    }
}

#[derive(Debug)]
struct FaultyFile {
    inner: Arc<dyn FileIo>,
    plan: Arc<FaultPlan>,
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

impl FileIo for FaultyFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        if self.plan.fail_read.load(Ordering::SeqCst) {
            return Err(eio());
        }
        self.inner.read_at(buf, pos)
    }
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<usize> {
        let budget = self.plan.write_budget.load(Ordering::SeqCst);
        if budget == u64::MAX {
            return self.inner.write_at(buf, pos);
        }
        if budget == 0 {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let n = usize::try_from(budget).unwrap_or(usize::MAX).min(buf.len());
        let written = self.inner.write_at(&buf[..n], pos)?;
        self.plan
            .write_budget
            .store(budget - written as u64, Ordering::SeqCst);
        Ok(written)
    }
    fn sync_data(&self) -> io::Result<()> {
        if self.plan.fail_sync.load(Ordering::SeqCst) {
            return Err(eio());
        }
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        if self.plan.fail_set_len.load(Ordering::SeqCst) {
            return Err(eio());
        }
        self.inner.set_len(len)
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
}
