//! Storage metrics: lock-free counters updated on the hot paths, and the `StorageMetrics`
//! snapshot (with an fsync latency histogram shaped for a Prometheus exporter).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (inclusive, microseconds) of the fsync latency buckets; a last bucket is +Inf.
pub const FSYNC_BUCKETS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub fsync_count: AtomicU64,
    pub fsync_errors: AtomicU64,
    pub fsync_us_total: AtomicU64,
    pub fsync_buckets: [AtomicU64; FSYNC_BUCKETS_US.len() + 1],
    pub sync_rounds: AtomicU64,
    pub commits_completed: AtomicU64,
    pub bytes_written: AtomicU64,
    pub batches_written: AtomicU64,
    pub append_errors: AtomicU64,
    pub bytes_read: AtomicU64,
    pub corrupt_batches_total: AtomicU64,
    pub truncated_tail_bytes: AtomicU64,
    pub index_rebuilds: AtomicU64,
    pub index_cache_hits: AtomicU64,
    pub index_cache_misses: AtomicU64,
    pub tail_cache_hits: AtomicU64,
    pub segments_created: AtomicU64,
    pub segments_deleted: AtomicU64,
    pub journal_compactions: AtomicU64,
}

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn record_fsync(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        Self::add(&self.fsync_count, 1);
        Self::add(&self.fsync_us_total, us);
        let i = FSYNC_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(FSYNC_BUCKETS_US.len());
        Self::add(&self.fsync_buckets[i], 1);
    }

    pub fn snapshot(&self) -> StorageMetrics {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StorageMetrics {
            fsync_count: g(&self.fsync_count),
            fsync_errors: g(&self.fsync_errors),
            fsync_seconds_total: g(&self.fsync_us_total) as f64 / 1e6,
            fsync_latency_buckets: FSYNC_BUCKETS_US
                .iter()
                .map(|&b| Some(b as f64 / 1e6))
                .chain(std::iter::once(None))
                .zip(self.fsync_buckets.iter().map(g))
                .collect(),
            sync_rounds: g(&self.sync_rounds),
            commits_completed: g(&self.commits_completed),
            bytes_written: g(&self.bytes_written),
            batches_written: g(&self.batches_written),
            append_errors: g(&self.append_errors),
            bytes_read: g(&self.bytes_read),
            corrupt_batches_total: g(&self.corrupt_batches_total),
            truncated_tail_bytes: g(&self.truncated_tail_bytes),
            index_rebuilds: g(&self.index_rebuilds),
            index_cache_hits: g(&self.index_cache_hits),
            index_cache_misses: g(&self.index_cache_misses),
            tail_cache_hits: g(&self.tail_cache_hits),
            // A gauge the storage fills in (`Storage::metrics`).
            tail_cache_bytes: 0,
            segments_created: g(&self.segments_created),
            segments_deleted: g(&self.segments_deleted),
            journal_compactions: g(&self.journal_compactions),
        }
    }
}

/// A point-in-time copy of the storage counters (monotonic since `Storage::open`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StorageMetrics {
    /// `fdatasync` calls on data, index and journal files.
    pub fsync_count: u64,
    pub fsync_errors: u64,
    pub fsync_seconds_total: f64,
    /// Non-cumulative counts per bucket: `(upper bound in seconds, None = +Inf; count)`.
    pub fsync_latency_buckets: Vec<(Option<f64>, u64)>,
    /// Group-commit rounds run by the sync thread.
    pub sync_rounds: u64,
    /// T2 commits resolved (successfully or not).
    pub commits_completed: u64,
    /// Batch bytes appended to segments.
    pub bytes_written: u64,
    pub batches_written: u64,
    pub append_errors: u64,
    pub bytes_read: u64,
    /// Batches that failed verification (skipped on read or found during recovery).
    pub corrupt_batches_total: u64,
    /// Bytes cut from torn log tails during recovery.
    pub truncated_tail_bytes: u64,
    pub index_rebuilds: u64,
    pub index_cache_hits: u64,
    pub index_cache_misses: u64,
    /// Reads served from a stream's tail cache (no `pread`).
    pub tail_cache_hits: u64,
    /// Bytes the streams' tail caches hold now (a gauge).
    pub tail_cache_bytes: u64,
    pub segments_created: u64,
    pub segments_deleted: u64,
    pub journal_compactions: u64,
}
