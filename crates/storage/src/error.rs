//! `StorageError`: every failure the storage engine reports, as a typed enum.

use std::io;
use std::path::{Path, PathBuf};

/// Every error the storage engine returns. Disk faults are values, never panics.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An I/O error other than a full disk.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The device is full (ENOSPC / EDQUOT). The failed write was rolled back.
    #[error("no space left on device while writing {path}")]
    NoSpace { path: PathBuf },
    /// Data read from disk failed a check (checksum, magic, bounds).
    #[error("corrupt data in {path} at byte {position}: {reason}")]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },
    /// The log hit an unrecoverable fault (failed fsync, failed rollback) and refuses writes.
    #[error("log {path} has failed and refuses further writes: {reason}")]
    LogFailed { path: PathBuf, reason: String },
    /// The `Storage` (and its group-commit thread) has been shut down.
    #[error("storage is closed")]
    Closed,
    /// A size limit was exceeded; nothing was written or allocated.
    #[error("{what} of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        what: &'static str,
        size: u64,
        limit: u64,
    },
    /// A log, kind or consumer name was rejected.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// A caller-supplied argument was rejected (for example an empty batch).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An offset at or beyond the end of the log.
    #[error("offset {offset} is at or beyond the end of the log ({next_offset})")]
    OffsetOutOfRange { offset: u64, next_offset: u64 },
    /// The object is still open and cannot be removed.
    #[error("{what} {name:?} is open and cannot be removed")]
    InUse { what: &'static str, name: String },
    /// Another process holds the data directory lock.
    #[error("data directory {path} is locked by another process")]
    Locked { path: PathBuf },
    /// A JSON document (definitions) could not be encoded or decoded.
    #[error("JSON error in {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl StorageError {
    /// Maps an `io::Error` on `path`, distinguishing a full disk.
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        let full = matches!(
            source.raw_os_error(),
            Some(libc::ENOSPC) | Some(libc::EDQUOT)
        ) || source.kind() == io::ErrorKind::StorageFull;
        if full {
            StorageError::NoSpace {
                path: path.to_path_buf(),
            }
        } else {
            StorageError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }

    /// True for a full disk.
    pub fn is_no_space(&self) -> bool {
        matches!(self, StorageError::NoSpace { .. })
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Attaches a path to `io::Result`s.
pub(crate) trait IoContext<T> {
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|e| StorageError::io(path, e))
    }
}
