//! `StreamLog`: a log plus retention (by age, bytes, message count; whole sealed segments),
//! named consumer offsets in a small CRC'd journal, compacted by rewrite-and-rename, and a
//! durable log start offset (Kafka's DeleteRecords): a 16-byte CRC'd file replaced by
//! write-tmp, fsync, rename, fsync-dir. The start offset is a floor under the log's
//! `start_offset()` and reads; sealed segments wholly below it are deleted.

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
/// File of the log start offset inside the stream's directory (absent: none was set).
pub(crate) const START_OFFSET_FILE: &str = "log-start-offset";
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
    /// Serializes start-offset changes (file replacement and segment deletion).
    start_lock: Mutex<()>,
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
            start_lock: Mutex::new(()),
        });
        s.load_start_offset()?;
        Ok(s)
    }

    fn start_offset_path(&self) -> PathBuf {
        self.log.dir().join(START_OFFSET_FILE)
    }

    /// Reads the start-offset file at open. A damaged file is reported and ignored (the
    /// start goes back to the first stored offset: records are shown again, none is lost
    /// or invented). A start beyond the recovered end (a torn tail took records it
    /// covered) is lowered to the end, so offsets given to new records are never hidden.
    fn load_start_offset(&self) -> Result<()> {
        let path = self.start_offset_path();
        let _ = fs::remove_file(path.with_extension("tmp"));
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StorageError::io(&path, e)),
        };
        let Some(start) = format::decode_start_offset(&data) else {
            Counters::add(&self.log.ctx().counters.corrupt_batches_total, 1);
            tracing::warn!(file = %path.display(), "bad log start offset file: ignored");
            return Ok(());
        };
        let next = self.log.next_offset();
        if start > next {
            tracing::warn!(file = %path.display(), start, next, "log start offset beyond the recovered end: lowered to it");
            self.write_start_offset(next)?;
            self.log.raise_start_floor(next);
        } else {
            self.log.raise_start_floor(start);
        }
        self.delete_below_start()?;
        Ok(())
    }

    fn write_start_offset(&self, offset: u64) -> Result<()> {
        let path = self.start_offset_path();
        let tmp = path.with_extension("tmp");
        let f = self.log.ctx().vfs.open(&tmp, true).at(&tmp)?;
        f.set_len(0).at(&tmp)?;
        f.write_all_at(&format::encode_start_offset(offset), 0)
            .at(&tmp)?;
        f.sync_data().at(&tmp)?;
        fs::rename(&tmp, &path).at(&path)?;
        sync_dir(self.log.dir()).at(self.log.dir())?;
        Ok(())
    }

    /// Deletes the sealed segments whose every offset is below the start floor.
    fn delete_below_start(&self) -> Result<u64> {
        let floor = self.log.start_floor();
        let (sealed, _, _) = self.log.segments();
        let mut deleted = 0;
        for m in sealed.iter().take_while(|m| m.end <= floor) {
            if self.log.delete_sealed(m.base)? {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Moves the log start offset up to `offset` (Kafka's DeleteRecords): records below
    /// it are never read again, and sealed segments wholly below it are deleted. Durable
    /// (fsynced) before it returns. An offset at or below the current start changes
    /// nothing. Returns the new start offset (the low watermark).
    ///
    /// # Errors
    /// `OffsetOutOfRange` beyond the next offset; I/O errors writing the file.
    pub fn set_start_offset(&self, offset: u64) -> Result<u64> {
        let _g = lock(&self.start_lock);
        let next = self.log.next_offset();
        if offset > next {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                next_offset: next,
            });
        }
        if offset <= self.log.start_offset() {
            return Ok(self.log.start_offset());
        }
        self.write_start_offset(offset)?;
        self.log.raise_start_floor(offset);
        let deleted = self.delete_below_start()?;
        tracing::debug!(dir = %self.log.dir().display(), offset, deleted, "log start offset moved");
        Ok(self.log.start_offset())
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Appends one batch (see `Log::append`).
    pub fn append(&self, records: &[Bytes], timestamp_ms: i64) -> Result<Appended> {
        self.log.append(records, timestamp_ms)
    }

    /// Appends one opaque batch (see `Log::append_opaque_with`; `known`: the payload's
    /// suffix CRC, when the caller has it). The tail cache keeps `payload` as it is.
    pub fn append_opaque_with(
        &self,
        format: u8,
        count: u32,
        payload: &Bytes,
        known: Option<crate::SuffixCrc>,
        timestamp_ms: i64,
    ) -> Result<Appended> {
        self.log
            .append_opaque_with(format, count, payload, known, timestamp_ms)
    }

    pub fn set_retention(&self, r: Retention) {
        *lock(&self.retention) = r;
    }

    pub fn retention(&self) -> Retention {
        *lock(&self.retention)
    }

    /// Deletes the oldest sealed segments (never the active one) while any limit says so:
    /// all of a segment's batches older than `now_ms - max_age_ms`; or the log keeps at
    /// least `max_bytes` / `max_messages` without it. Returns how many were deleted. Also
    /// gives back the tail cache this log holds beyond its share (an idle stream's, after
    /// others opened).
    pub fn apply_retention(&self, now_ms: i64) -> Result<u64> {
        self.log.trim_tail();
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
            let by_start = m.end <= self.log.start_floor();
            if !(by_age || by_bytes || by_count || by_start) {
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

    fn open_t1(s: &Storage) -> Arc<StreamLog> {
        s.open_stream(
            "s",
            LogOptions {
                durability: Some(crate::Durability::T1),
                ..Default::default()
            },
            Retention::default(),
        )
        .unwrap()
    }

    #[test]
    fn start_offset_hides_records_deletes_segments_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Bytes::from(vec![7u8; 200]);
        {
            let s = Storage::open(dir.path(), cfg()).unwrap();
            let st = open_t1(&s);
            for i in 0..100i64 {
                let _ = st.append(std::slice::from_ref(&rec), i).unwrap();
            }
            let segs = st.log().segment_count();
            assert!(segs > 4, "{segs}");
            assert_eq!(st.set_start_offset(0).unwrap(), 0, "no-op at the start");
            assert!(matches!(
                st.set_start_offset(101),
                Err(StorageError::OffsetOutOfRange {
                    offset: 101,
                    next_offset: 100
                })
            ));
            assert_eq!(st.set_start_offset(57).unwrap(), 57);
            assert_eq!(st.log().start_offset(), 57);
            assert!(
                st.log().segment_count() < segs,
                "segments below were deleted"
            );
            // Reads from below the start begin at the batch holding it.
            let b = st.log().read(0, 1).unwrap();
            assert_eq!(b[0].base_offset, 57);
            assert_eq!(st.log().offset_for_timestamp(0).unwrap(), Some(57));
            // Lower offsets change nothing.
            assert_eq!(st.set_start_offset(10).unwrap(), 57);
        }
        let s = Storage::open(dir.path(), cfg()).unwrap();
        let st = open_t1(&s);
        assert_eq!(st.log().start_offset(), 57);
        assert_eq!(st.log().read(3, 1).unwrap()[0].base_offset, 57);
        // Up to the end: nothing readable, new records are.
        assert_eq!(st.set_start_offset(100).unwrap(), 100);
        assert!(st.log().read(0, 1 << 20).unwrap().is_empty());
        let a = st.append(std::slice::from_ref(&rec), 1000).unwrap();
        assert_eq!(a.base_offset, 100);
        assert_eq!(st.log().read(0, 1).unwrap()[0].base_offset, 100);
    }

    #[test]
    fn start_offset_beyond_a_torn_tail_is_lowered_and_damage_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path;
        {
            let s = Storage::open(dir.path(), cfg()).unwrap();
            let st = open_t1(&s);
            for i in 0..5i64 {
                let _ = st.append(&[Bytes::from_static(b"x")], i).unwrap();
            }
            st.set_start_offset(5).unwrap();
            path = st.log().dir().join(START_OFFSET_FILE);
        }
        // As if records 3..5 were lost: the file claims more than the log holds.
        fs::write(&path, format::encode_start_offset(9)).unwrap();
        {
            let s = Storage::open(dir.path(), cfg()).unwrap();
            let st = open_t1(&s);
            assert_eq!(st.log().start_offset(), 5);
            assert_eq!(st.log().start_floor(), 5);
        }
        assert_eq!(
            format::decode_start_offset(&fs::read(&path).unwrap()),
            Some(5)
        );
        fs::write(&path, b"garbage").unwrap();
        let s = Storage::open(dir.path(), cfg()).unwrap();
        let st = open_t1(&s);
        assert_eq!(st.log().start_offset(), 0, "a damaged file is ignored");
        assert!(s.metrics().corrupt_batches_total > 0);
    }

    #[test]
    fn segment_size_changes_at_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), cfg()).unwrap();
        let st = open_t1(&s);
        let rec = Bytes::from(vec![7u8; 200]);
        assert_eq!(st.log().segment_bytes(), 4096);
        assert!(st.log().set_segment_bytes(100).is_err());
        st.log().set_segment_bytes(1 << 20).unwrap();
        for i in 0..100i64 {
            let _ = st.append(std::slice::from_ref(&rec), i).unwrap();
        }
        assert_eq!(st.log().segment_count(), 1, "the larger size applies");
        st.log().set_segment_bytes(1024).unwrap();
        for i in 0..20i64 {
            let _ = st.append(std::slice::from_ref(&rec), i).unwrap();
        }
        assert!(
            st.log().segment_count() > 3,
            "the smaller size applies from the next roll"
        );
    }
}
