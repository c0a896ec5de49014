//! Configuration types: durability tiers, storage-wide limits, per-log options, stream retention.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// When an append counts as done.
///
/// Serialized as `"t1"`, `"t2"` or `{"interval_ms": N}` (JSON; the same shapes in TOML).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(from = "DurabilityRepr", into = "DurabilityRepr")]
pub enum Durability {
    /// Done once written to the page cache: survives a process crash, not a power loss.
    T1,
    /// Done once an `fdatasync` covering the write has returned (group commit). The default.
    #[default]
    T2,
    /// T1, plus a background `fdatasync` of dirty logs every period.
    Interval(Duration),
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Tier {
    T1,
    T2,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum DurabilityRepr {
    Tier(Tier),
    Interval { interval_ms: u64 },
}

impl From<DurabilityRepr> for Durability {
    fn from(r: DurabilityRepr) -> Self {
        match r {
            DurabilityRepr::Tier(Tier::T1) => Durability::T1,
            DurabilityRepr::Tier(Tier::T2) => Durability::T2,
            DurabilityRepr::Interval { interval_ms } => {
                Durability::Interval(Duration::from_millis(interval_ms))
            }
        }
    }
}

impl From<Durability> for DurabilityRepr {
    fn from(d: Durability) -> Self {
        match d {
            Durability::T1 => DurabilityRepr::Tier(Tier::T1),
            Durability::T2 => DurabilityRepr::Tier(Tier::T2),
            Durability::Interval(p) => DurabilityRepr::Interval {
                interval_ms: u64::try_from(p.as_millis()).unwrap_or(u64::MAX),
            },
        }
    }
}

/// Smallest allowed segment size.
pub const SEGMENT_BYTES_MIN: u64 = 512;
/// Largest allowed segment size (positions in index entries are `u32`; a segment may
/// exceed `segment_bytes` by one batch).
pub const SEGMENT_BYTES_MAX: u64 = 2 << 30;
/// Largest allowed `batch_bytes_max`.
pub const BATCH_BYTES_MAX_LIMIT: u32 = 1 << 30;
/// Shortest background fsync period for `Durability::Interval`.
pub const INTERVAL_MIN: Duration = Duration::from_millis(1);

/// Storage-wide configuration. Serialized with defaults for every missing field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageConfig {
    /// Tier of logs whose `LogOptions::durability` is `None`.
    pub default_durability: Durability,
    /// A segment is rolled before an append would make it exceed this size (unless it is empty).
    pub segment_bytes: u64,
    /// One sparse index entry per this many bytes of batches.
    pub index_interval_bytes: u32,
    /// Largest encoded batch, header included; checked before any allocation on read and write.
    pub batch_bytes_max: u32,
    /// How many sealed segments' indexes (and open file handles) the shared cache keeps.
    pub index_cache_segments: usize,
    /// Bytes of recently appended stream batches kept in memory, all streams together, so
    /// that a consumer at the head of a stream is served without a `pread` and a second
    /// checksum pass (0 = none). One stream keeps at most an eighth of it.
    pub tail_cache_bytes: usize,
    /// T2 logs write their batches with direct I/O (`O_DIRECT`, aligned blocks) where the
    /// file system has it, instead of copying them into the page cache: the group commit's
    /// `fdatasync` then has no dirty pages to write back, and the copy's CPU is saved. Reads
    /// still go through the page cache (which then holds no copy of the newest batches).
    pub direct_writes: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            default_durability: Durability::T2,
            segment_bytes: 64 << 20,
            index_interval_bytes: 4096,
            batch_bytes_max: (128 << 20) + (64 << 10),
            index_cache_segments: 256,
            tail_cache_bytes: 64 << 20,
            direct_writes: true,
        }
    }
}

impl StorageConfig {
    pub(crate) fn validate(&self) -> crate::Result<()> {
        let bad = |m: String| Err(crate::StorageError::InvalidArgument(m));
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return bad(format!(
                "segment_bytes must be in {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX}"
            ));
        }
        if self.index_interval_bytes == 0 {
            return bad("index_interval_bytes must be > 0".into());
        }
        if !(64..=BATCH_BYTES_MAX_LIMIT).contains(&self.batch_bytes_max) {
            return bad(format!(
                "batch_bytes_max must be in 64..={BATCH_BYTES_MAX_LIMIT}"
            ));
        }
        if self.index_cache_segments == 0 {
            return bad("index_cache_segments must be > 0".into());
        }
        Ok(())
    }
}

/// Per-log options; `None` means "use the storage default".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogOptions {
    pub durability: Option<Durability>,
    pub segment_bytes: Option<u64>,
}

/// Stream retention: whole sealed segments are deleted once any limit is exceeded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Retention {
    /// Delete a sealed segment once its newest batch timestamp is older than this.
    pub max_age_ms: Option<u64>,
    /// Delete the oldest sealed segments while the log stays at or above this size without them.
    pub max_bytes: Option<u64>,
    /// Delete the oldest sealed segments while the log keeps at least this many messages without them.
    pub max_messages: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_serde_shapes() {
        assert_eq!(
            serde_json::to_string(&Durability::T1).ok().as_deref(),
            Some("\"t1\"")
        );
        assert_eq!(
            serde_json::to_string(&Durability::T2).ok().as_deref(),
            Some("\"t2\"")
        );
        let i = Durability::Interval(Duration::from_millis(250));
        assert_eq!(
            serde_json::to_string(&i).ok().as_deref(),
            Some("{\"interval_ms\":250}")
        );
        let back: Durability = serde_json::from_str("{\"interval_ms\":250}").unwrap();
        assert_eq!(back, i);
        let t1: Durability = serde_json::from_str("\"t1\"").unwrap();
        assert_eq!(t1, Durability::T1);
        assert!(serde_json::from_str::<Durability>("\"t3\"").is_err());
    }

    #[test]
    fn default_config_is_valid() {
        assert!(StorageConfig::default().validate().is_ok());
        let c: StorageConfig = serde_json::from_str("{\"segment_bytes\": 8192}").unwrap();
        assert_eq!(c.segment_bytes, 8192);
        assert_eq!(c.index_interval_bytes, 4096);
    }
}
