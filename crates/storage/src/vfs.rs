//! The file layer: `FileIo` and `Vfs` traits the engine does all data-file I/O through, so that
//! tests (and a future deterministic simulator) can plug in a fault-injecting implementation.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};

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

    /// Appends exactly `n` bytes read at `pos` to `buf`; `UnexpectedEof` if the file is
    /// shorter (then `buf` keeps its old length). Implementations may read straight into
    /// `buf`'s spare capacity, so that a large read does not first zero its buffer.
    fn read_exact_into(&self, buf: &mut BytesMut, n: usize, pos: u64) -> io::Result<()> {
        let old = buf.len();
        buf.resize(old + n, 0);
        let r = self.read_exact_at(&mut buf[old..], pos);
        if r.is_err() {
            buf.truncate(old);
        }
        r
    }

    /// Writes `bufs` one after the other from `pos`, all of them (a `pwritev` where the
    /// implementation has one; by default one `write_all_at` each).
    fn write_all_vectored_at(&self, bufs: &[&[u8]], mut pos: u64) -> io::Result<()> {
        for b in bufs {
            self.write_all_at(b, pos)?;
            pos += b.len() as u64;
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

/// What direct (`O_DIRECT`) writes are aligned to: their file offset, their length and their
/// buffer's address. 4096 covers devices with 512-byte and 4 KiB logical blocks.
pub const DIRECT_ALIGN: usize = 4096;

/// The most zeros a direct write puts ahead of the data of a T2 segment (see `log::Direct`):
/// a crash leaves at most this much plus a block after the data, which recovery cuts as
/// the preallocation it is.
pub const DIRECT_ZERO_AHEAD_MAX: usize = 1 << 20;

/// The largest direct write (padding included) that writes zeros ahead of its data.
pub const DIRECT_ZERO_AHEAD_WRITE_MAX: usize = 96 << 10;

/// How many zeros a direct write of `padded` bytes that extends its file writes after its
/// data: 16 times its size, 64 KiB to [`DIRECT_ZERO_AHEAD_MAX`], for writes up to
/// [`DIRECT_ZERO_AHEAD_WRITE_MAX`]; none for larger ones, whose transfer (not the fsync's
/// fixed cost) dominates and would double.
pub fn direct_zero_ahead(padded: usize) -> usize {
    if padded > DIRECT_ZERO_AHEAD_WRITE_MAX {
        0
    } else {
        (padded * 16).clamp(64 << 10, DIRECT_ZERO_AHEAD_MAX)
    }
}

/// Opens data files. Directory operations (create, list, rename, remove, fsync of a
/// directory) go straight to `std::fs`.
pub trait Vfs: Send + Sync + fmt::Debug {
    /// Opens `path` for reading and writing, creating it if `create` is set.
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn FileIo>>;

    /// Opens the existing `path` for direct writes (`O_DIRECT`: no page-cache copy), which
    /// must be aligned to [`DIRECT_ALIGN`]; `None` where the file system (or this `Vfs`)
    /// has none. By default none.
    fn open_direct(&self, _path: &Path) -> io::Result<Option<Arc<dyn FileIo>>> {
        Ok(None)
    }
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

    #[cfg(target_os = "linux")]
    fn open_direct(&self, path: &Path) -> io::Result<Option<Arc<dyn FileIo>>> {
        use std::os::unix::fs::OpenOptionsExt;
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(f) => Ok(Some(Arc::new(StdFile(f)))),
            // The file system does not do direct I/O.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
            Err(e) => Err(e),
        }
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
    fn write_all_vectored_at(&self, bufs: &[&[u8]], pos: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let fd = self.0.as_raw_fd();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut done = 0usize;
        while done < total {
            // The parts not yet written, the first one cut where the last write stopped.
            let mut skip = done;
            let mut iov: Vec<libc::iovec> = Vec::with_capacity(bufs.len());
            for b in bufs {
                if skip >= b.len() {
                    skip -= b.len();
                    continue;
                }
                let rest = &b[skip..];
                skip = 0;
                iov.push(libc::iovec {
                    iov_base: rest.as_ptr() as *mut libc::c_void,
                    iov_len: rest.len(),
                });
            }
            let at = i64::try_from(pos + done as u64)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            let cnt = libc::c_int::try_from(iov.len().min(1024)).unwrap_or(1024);
            // SAFETY: every iovec points into a live borrowed slice for the call's duration.
            let r = unsafe { libc::pwritev(fd, iov.as_ptr(), cnt, at) };
            match r {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n if n > 0 => done += n as usize,
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }
    fn read_exact_into(&self, buf: &mut BytesMut, n: usize, pos: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let old = buf.len();
        buf.reserve(n);
        let (mut done, fd) = (0usize, self.0.as_raw_fd());
        while done < n {
            let at = i64::try_from(pos + done as u64)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            let spare = buf.spare_capacity_mut();
            let want = n - done;
            debug_assert!(spare.len() >= want);
            // SAFETY: `spare` is writable memory owned by `buf` of at least `want` bytes
            // (reserved above; `done` bytes of it were already committed with `set_len`),
            // and pread writes at most `want` bytes into it.
            let r = unsafe { libc::pread(fd, spare.as_mut_ptr().cast(), want, at) };
            match r {
                0 => {
                    buf.truncate(old);
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                r if r > 0 => {
                    let got = r as usize;
                    // SAFETY: pread initialised exactly `got` (≤ `want`) bytes past the old length.
                    unsafe { buf.advance_mut(got) };
                    done += got;
                }
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        buf.truncate(old);
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, Arc<dyn FileIo>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, bytes).unwrap();
        let f = StdVfs.open(&path, false).unwrap();
        (dir, f)
    }

    #[test]
    fn read_exact_into_appends_exactly_the_bytes_asked_for() {
        let data: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        let (_dir, f) = file_with(&data);
        let mut buf = BytesMut::from(&b"head"[..]);
        f.read_exact_into(&mut buf, 70_000, 1_000).unwrap();
        assert_eq!(&buf[..4], b"head");
        assert_eq!(&buf[4..], &data[1_000..71_000]);
        // A second read appends after the first, reallocating if it must.
        f.read_exact_into(&mut buf, 29_000, 71_000).unwrap();
        assert_eq!(&buf[4..], &data[1_000..100_000]);
    }

    #[test]
    fn vectored_writes_put_the_parts_one_after_the_other() {
        let (_dir, f) = file_with(b"0123456789");
        let big: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
        f.write_all_vectored_at(&[b"ab", b"", &big, b"z"], 4)
            .unwrap();
        let mut back = vec![0u8; 4 + 2 + big.len() + 1];
        f.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(&back[..6], b"0123ab");
        assert_eq!(&back[6..6 + big.len()], &big[..]);
        assert_eq!(back[6 + big.len()], b'z');
        assert_eq!(f.size().unwrap(), back.len() as u64);
        // The default (one write per part), as fault-injecting files use it.
        #[derive(Debug)]
        struct ByParts(Arc<dyn FileIo>);
        impl FileIo for ByParts {
            fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
                self.0.read_at(buf, pos)
            }
            fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<usize> {
                // At most 1000 bytes at a time: short writes are continued.
                self.0.write_at(&buf[..buf.len().min(1000)], pos)
            }
            fn sync_data(&self) -> io::Result<()> {
                self.0.sync_data()
            }
            fn set_len(&self, len: u64) -> io::Result<()> {
                self.0.set_len(len)
            }
            fn size(&self) -> io::Result<u64> {
                self.0.size()
            }
        }
        let p = ByParts(f.clone());
        p.write_all_vectored_at(&[&big[..5000], b"", b"xy"], 1)
            .unwrap();
        let mut back = vec![0u8; 5003];
        f.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back[0], b'0');
        assert_eq!(&back[1..5001], &big[..5000]);
        assert_eq!(&back[5001..], b"xy");
    }

    #[test]
    fn read_exact_into_past_the_end_is_eof_and_keeps_the_buffer() {
        let (_dir, f) = file_with(b"0123456789");
        let mut buf = BytesMut::from(&b"ab"[..]);
        let e = f.read_exact_into(&mut buf, 11, 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(&buf[..], b"ab");
        f.read_exact_into(&mut buf, 4, 6).unwrap();
        assert_eq!(&buf[..], b"ab6789");
    }

    #[test]
    fn zeros_ahead_scale_with_small_writes_and_stop_at_large_ones() {
        assert_eq!(direct_zero_ahead(DIRECT_ALIGN), 64 << 10);
        assert_eq!(direct_zero_ahead(16 << 10), 256 << 10);
        assert_eq!(direct_zero_ahead(64 << 10), DIRECT_ZERO_AHEAD_MAX);
        assert_eq!(
            direct_zero_ahead(DIRECT_ZERO_AHEAD_WRITE_MAX),
            DIRECT_ZERO_AHEAD_MAX
        );
        assert_eq!(
            direct_zero_ahead(DIRECT_ZERO_AHEAD_WRITE_MAX + DIRECT_ALIGN),
            0
        );
    }
}
