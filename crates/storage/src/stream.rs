//! `StreamLog`: a log plus retention (by age, bytes, message count; whole sealed segments)
//! and named consumer offsets in a small CRC'd journal, compacted by rewrite-and-rename.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::error::IoContext;
use crate::format;
use crate::log::{Appended, Log};
use crate::metrics::Counters;
use crate::sync::{lock, Commit};
use crate::vfs::{sync_dir, FileIo};
use crate::{Result, Retention, StorageError};

/// File of the consumer offsets journal inside the stream's directory.
pub(crate) const OFFSETS_FILE: &str = "consumer-offsets.journal";
/// Largest offsets journal read at open.
pub const OFFSETS_FILE_BYTES_MAX: u64 = 64 << 20;
/// The offset a tombstone entry carries: the consumer's offset was removed.
const OFFSET_TOMBSTONE: u64 = u64::MAX;
/// Compact once the journal holds more than `2 * consumers + this` entries.
const COMPACT_SLACK_ENTRIES: u64 = 256;

struct Offsets {
    map: BTreeMap<String, u64>,
    file: Arc<dyn FileIo>,
    len: u64,
    entries: u64,
    buf: Vec<u8>,
}

/// A stream: an append-only log with retention and durable named consumer offsets.
pub struct StreamLog {
    log: Arc<Log>,
    retention: Mutex<Retention>,
    offsets: Mutex<Offsets>,
    offsets_path: PathBuf,
}

impl std::fmt::Debug for StreamLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamLog").field("log", &self.log).finish()
    }
}

impl StreamLog {
    pub(crate) fn open(log: Arc<Log>, retention: Retention) -> Result<Arc<StreamLog>> {
        let path = log.dir().join(OFFSETS_FILE);
        let _ = fs::remove_file(path.with_extension("journal.tmp"));
        let file = log.ctx().vfs.open(&path, true).at(&path)?;
        let size = file.size().at(&path)?;
        if size > OFFSETS_FILE_BYTES_MAX {
            return Err(StorageError::TooLarge {
                what: "consumer offsets journal",
                size,
                limit: OFFSETS_FILE_BYTES_MAX,
            });
        }
        let mut data = vec![0u8; size as usize];
        file.read_exact_at(&mut data, 0).at(&path)?;
        let mut map = BTreeMap::new();
        let mut at = 0usize;
        let mut entries = 0;
        while let Some((name, off, n)) = format::decode_offset_entry(&data[at..]) {
            if off == OFFSET_TOMBSTONE {
                map.remove(&name);
            } else {
                map.insert(name, off);
            }
            at += n;
            entries += 1;
        }
        if at < data.len() {
            Counters::add(&log.ctx().counters.corrupt_batches_total, 1);
            tracing::warn!(file = %path.display(), position = at, "bad consumer offset entry: journal truncated");
            file.set_len(at as u64).at(&path)?;
        }
        let s = Arc::new(StreamLog {
            log,
            retention: Mutex::new(retention),
            offsets: Mutex::new(Offsets {
                map,
                file,
                len: at as u64,
                entries,
                buf: Vec::new(),
            }),
            offsets_path: path,
        });
        Ok(s)
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Appends one batch (see `Log::append`).
    pub fn append(&self, records: &[Bytes], timestamp_ms: i64) -> Result<Appended> {
        self.log.append(records, timestamp_ms)
    }

    /// Appends one opaque batch (see `Log::append_opaque`).
    pub fn append_opaque(
        &self,
        format: u8,
        count: u32,
        payload: &[u8],
        timestamp_ms: i64,
    ) -> Result<Appended> {
        self.log.append_opaque(format, count, payload, timestamp_ms)
    }

    pub fn set_retention(&self, r: Retention) {
        *lock(&self.retention) = r;
    }

    pub fn retention(&self) -> Retention {
        *lock(&self.retention)
    }

    /// Deletes the oldest sealed segments (never the active one) while any limit says so:
    /// all of a segment's batches older than `now_ms - max_age_ms`; or the log keeps at
    /// least `max_bytes` / `max_messages` without it. Returns how many were deleted.
    pub fn apply_retention(&self, now_ms: i64) -> Result<u64> {
        let r = self.retention();
        let (sealed, active_base, next) = self.log.segments();
        let mut bytes = self.log.size_bytes();
        let mut msgs = next - sealed.first().map_or(active_base, |m| m.base).min(next);
        let mut deleted = 0;
        for m in sealed.iter() {
            let count = m.end - m.base;
            let by_age = r.max_age_ms.is_some_and(|a| {
                m.max_ts < now_ms.saturating_sub(i64::try_from(a).unwrap_or(i64::MAX))
            });
            let by_bytes = r
                .max_bytes
                .is_some_and(|b| bytes.saturating_sub(m.size) >= b);
            let by_count = r
                .max_messages
                .is_some_and(|c| msgs.saturating_sub(count) >= c);
            if !(by_age || by_bytes || by_count) {
                break;
            }
            if self.log.delete_sealed(m.base)? {
                deleted += 1;
                bytes = bytes.saturating_sub(m.size);
                msgs = msgs.saturating_sub(count);
            }
        }
        if deleted > 0 {
            tracing::debug!(dir = %self.log.dir().display(), deleted, "retention deleted segments");
        }
        Ok(deleted)
    }

    /// Stores `consumer`'s offset. The returned Commit resolves when it is durable at the
    /// log's tier (it is written to the page cache before this returns).
    pub fn commit_offset(&self, consumer: &str, offset: u64) -> Result<Commit> {
        crate::name::check_name(consumer)?;
        if offset == OFFSET_TOMBSTONE {
            return Err(StorageError::InvalidArgument(
                "offset u64::MAX is reserved".into(),
            ));
        }
        self.write_offset(consumer, offset)
    }

    /// Forgets `consumer`'s offset (a tombstone entry); false if it had none.
    pub fn remove_offset(&self, consumer: &str) -> Result<bool> {
        if self.committed_offset(consumer).is_none() {
            return Ok(false);
        }
        self.write_offset(consumer, OFFSET_TOMBSTONE)?.wait()?;
        Ok(true)
    }

    fn write_offset(&self, consumer: &str, offset: u64) -> Result<Commit> {
        let mut o = lock(&self.offsets);
        let o = &mut *o;
        o.buf.clear();
        format::encode_offset_entry(consumer, offset, &mut o.buf);
        if let Err(e) = o.file.write_all_at(&o.buf, o.len) {
            let _ = o.file.set_len(o.len);
            return Err(StorageError::io(&self.offsets_path, e));
        }
        o.len += o.buf.len() as u64;
        o.entries += 1;
        if offset == OFFSET_TOMBSTONE {
            o.map.remove(consumer);
        } else {
            o.map.insert(consumer.to_string(), offset);
        }
        if o.entries > 2 * o.map.len() as u64 + COMPACT_SLACK_ENTRIES {
            self.compact(o)?;
            return Ok(Commit::ready());
        }
        Ok(self.log.sync_file_at_tier(o.file.clone()))
    }

    /// Rewrite-and-rename; the new file is fsynced, so the Commit is immediately complete.
    fn compact(&self, o: &mut Offsets) -> Result<()> {
        let mut bytes = Vec::new();
        for (n, off) in &o.map {
            format::encode_offset_entry(n, *off, &mut bytes);
        }
        let tmp = self.offsets_path.with_extension("journal.tmp");
        let f = self.log.ctx().vfs.open(&tmp, true).at(&tmp)?;
        f.set_len(0).at(&tmp)?;
        f.write_all_at(&bytes, 0).at(&tmp)?;
        f.sync_data().at(&tmp)?;
        fs::rename(&tmp, &self.offsets_path).at(&self.offsets_path)?;
        sync_dir(self.log.dir()).at(self.log.dir())?;
        o.file = f;
        o.len = bytes.len() as u64;
        o.entries = o.map.len() as u64;
        Counters::add(&self.log.ctx().counters.journal_compactions, 1);
        Ok(())
    }

    pub fn committed_offset(&self, consumer: &str) -> Option<u64> {
        lock(&self.offsets).map.get(consumer).copied()
    }

    /// All consumers and their offsets, sorted by name.
    pub fn committed_offsets(&self) -> Vec<(String, u64)> {
        lock(&self.offsets)
            .map
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// fdatasyncs the offsets journal (graceful shutdown).
    pub fn sync_offsets(&self) -> Result<()> {
        let f = lock(&self.offsets).file.clone();
        f.sync_data().at(&self.offsets_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LogOptions, Storage, StorageConfig};

    fn cfg() -> StorageConfig {
        StorageConfig {
            segment_bytes: 4096,
            index_interval_bytes: 512,
            ..Default::default()
        }
    }

    #[test]
    fn retention_by_count_bytes_and_age() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), cfg()).unwrap();
        let st = s
            .open_stream(
                "s",
                LogOptions {
                    durability: Some(crate::Durability::T1),
                    ..Default::default()
                },
                Retention::default(),
            )
            .unwrap();
        let rec = Bytes::from(vec![7u8; 200]);
        for i in 0..200i64 {
            let _ = st.append(std::slice::from_ref(&rec), i * 1000).unwrap();
        }
        let segs = st.log().segment_count();
        assert!(segs > 8);
        assert_eq!(st.apply_retention(1_000_000).unwrap(), 0, "no limits");
        st.set_retention(Retention {
            max_messages: Some(150),
            ..Default::default()
        });
        assert!(st.apply_retention(0).unwrap() > 0);
        let held = st.log().next_offset() - st.log().start_offset();
        assert!((150..170).contains(&held), "{held}");
        st.set_retention(Retention {
            max_bytes: Some(10_000),
            ..Default::default()
        });
        st.apply_retention(0).unwrap();
        assert!(st.log().size_bytes() >= 10_000 && st.log().size_bytes() < 10_000 + 4096 + 300);
        st.set_retention(Retention {
            max_age_ms: Some(10_000),
            ..Default::default()
        });
        st.apply_retention(200_000).unwrap();
        assert_eq!(
            st.log().segment_count(),
            1,
            "everything old but the active segment"
        );
        let first = st.log().read(0, 1).unwrap();
        assert_eq!(first[0].base_offset, st.log().start_offset());
    }

    #[test]
    fn consumer_offsets_are_durable_and_compacted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Storage::open(dir.path(), cfg()).unwrap();
            let st = s
                .open_stream("s", LogOptions::default(), Retention::default())
                .unwrap();
            for i in 0..1000u64 {
                st.commit_offset(if i % 2 == 0 { "even" } else { "odd" }, i)
                    .unwrap()
                    .wait()
                    .unwrap();
            }
            assert!(s.metrics().journal_compactions > 0);
            assert!(st.commit_offset("", 1).is_err());
        }
        let s = Storage::open(dir.path(), cfg()).unwrap();
        let st = s
            .open_stream("s", LogOptions::default(), Retention::default())
            .unwrap();
        assert_eq!(st.committed_offset("even"), Some(998));
        assert_eq!(
            st.committed_offsets(),
            vec![("even".to_string(), 998), ("odd".to_string(), 999)]
        );
        assert_eq!(st.committed_offset("none"), None);
    }

    #[test]
    fn removed_offsets_stay_removed_across_reopen_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Storage::open(dir.path(), cfg()).unwrap();
            let st = s
                .open_stream("s", LogOptions::default(), Retention::default())
                .unwrap();
            st.commit_offset("keep", 5).unwrap().wait().unwrap();
            st.commit_offset("gone", 7).unwrap().wait().unwrap();
            assert!(st.commit_offset("x", u64::MAX).is_err());
            assert!(st.remove_offset("gone").unwrap());
            assert!(!st.remove_offset("gone").unwrap());
            assert_eq!(st.committed_offset("gone"), None);
        }
        let s = Storage::open(dir.path(), cfg()).unwrap();
        let st = s
            .open_stream("s", LogOptions::default(), Retention::default())
            .unwrap();
        assert_eq!(st.committed_offsets(), vec![("keep".to_string(), 5)]);
        // Enough entries to compact: the removed one does not come back.
        for i in 0..600u64 {
            st.commit_offset("keep", i).unwrap().wait().unwrap();
        }
        drop(st);
        drop(s);
        let s = Storage::open(dir.path(), cfg()).unwrap();
        let st = s
            .open_stream("s", LogOptions::default(), Retention::default())
            .unwrap();
        assert_eq!(st.committed_offsets(), vec![("keep".to_string(), 599)]);
    }
}
