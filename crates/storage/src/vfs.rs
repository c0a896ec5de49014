//! The file layer: `FileIo` and `Vfs` traits the engine does all data-file I/O through, so that
//! tests (and a future deterministic simulator) can plug in a fault-injecting implementation.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// Positional I/O on one open file. All methods take `&self`: implementations must be
/// safe to call from several threads (reads run concurrently with appends).
pub trait FileIo: Send + Sync + fmt::Debug {
    /// `pread`: reads up to `buf.len()` bytes at `pos`; 0 means end of file.
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;
    /// `pwrite`: writes up to `buf.len()` bytes at `pos`.
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<usize>;
    /// `fdatasync`.
    fn sync_data(&self) -> io::Result<()>;
    /// `ftruncate`.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Current file size.
    fn size(&self) -> io::Result<u64>;
    /// Hint that `len` bytes at `pos` will be read soon (sequential readers ask for the next
    /// chunk before verifying the current one, so the disk works while the CPU does).
    fn will_need(&self, _pos: u64, _len: u64) {}

    /// Reads exactly `buf.len()` bytes at `pos`; `UnexpectedEof` if the file is shorter.
    fn read_exact_at(&self, mut buf: &mut [u8], mut pos: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, pos) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    pos += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes all of `buf` at `pos` (normally one `pwrite`).
    fn write_all_at(&self, mut buf: &[u8], mut pos: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.write_at(buf, pos) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    buf = &buf[n..];
                    pos += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Opens data files. Directory operations (create, list, rename, remove, fsync of a
/// directory) go straight to `std::fs`.
pub trait Vfs: Send + Sync + fmt::Debug {
    /// Opens `path` for reading and writing, creating it if `create` is set.
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn FileIo>>;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdVfs;

impl Vfs for StdVfs {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn FileIo>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .open(path)?;
        Ok(Arc::new(StdFile(f)))
    }
}

/// A `std::fs::File` as `FileIo`.
#[derive(Debug)]
pub struct StdFile(pub File);

impl FileIo for StdFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        FileExt::read_at(&self.0, buf, pos)
    }
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<usize> {
        FileExt::write_at(&self.0, buf, pos)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    #[cfg(target_os = "linux")]
    fn will_need(&self, pos: u64, len: u64) {
        use std::os::fd::AsRawFd;
        let (Ok(pos), Ok(len)) = (i64::try_from(pos), i64::try_from(len)) else {
            return;
        };
        // SAFETY: posix_fadvise only reads its integer arguments; the fd is owned by self.
        // A failure only means no read-ahead, so the result is ignored.
        unsafe {
            libc::posix_fadvise(self.0.as_raw_fd(), pos, len, libc::POSIX_FADV_WILLNEED);
        }
    }
}

/// Fsyncs a directory so that entries created, renamed or removed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
