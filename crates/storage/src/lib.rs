//! FerryMQ storage engine: append-only segmented logs with group commit, recovery, queue
//! delivery state, stream retention and consumer offsets, and a definitions store.
//!
//! Layers, bottom up (one file each):
//! - `vfs`: the file layer all data-file I/O goes through (`fault` injects faults in tests).
//! - `format`: on-disk byte layouts (segment header, batches, index and journal entries).
//! - `segment`: one segment: scanning, resync past corruption, tail recovery, index rebuild.
//! - `index`: the bounded cache of sealed segments' indexes and file handles.
//! - `sync`: the group-commit thread and `Commit`.
//! - `log`: `Log`, appends, rolls, reads by offset and time.
//! - `queue`: `QueueLog`, delivery state journals.
//! - `stream`: `StreamLog`, retention and consumer offsets.
//! - `definitions`: `DefinitionsStore`, an atomically replaced JSON document.
//! - `storage`: `Storage`, the entry point: one per data directory.
//! - `name`: log names to safe directory names; `config`, `error`, `metrics`.
//!
//! Durability tiers (see `Durability`): T1 = page cache, T2 = fdatasync (group commit),
//! Interval = T1 plus a periodic fdatasync.

mod config;
mod crc;
mod definitions;
mod error;
pub mod fault;
mod format;
/// The recovery check of the `storage_recovery` fuzz target (feature `fuzzing`, and tests).
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod index;
mod log;
mod metrics;
mod name;
mod pending;
mod queue;
mod segment;
mod storage;
mod stream;
mod sync;
pub mod vfs;

pub use config::{
    Durability, LogOptions, Retention, StorageConfig, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN,
};
pub use definitions::{DefinitionsStore, DEFINITIONS_BYTES_MAX, DEFINITIONS_FILE};
pub use error::{Result, StorageError};
pub use format::{SuffixCrc, FORMAT_RECORDS};
pub use log::{Appended, Batch, Log};
pub use metrics::{StorageMetrics, FSYNC_BUCKETS_US};
pub use name::NAME_BYTES_MAX;
pub use queue::{PendingMessage, QueueLog};
pub use storage::{Storage, QUEUES_DIR, STREAMS_DIR};
pub use stream::{StreamLog, OFFSETS_FILE_BYTES_MAX};
pub use sync::Commit;
