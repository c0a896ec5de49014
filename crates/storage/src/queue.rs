//! `QueueLog`: a log plus per-message delivery state (settled bitmap, delivery counts,
//! not-before times), persisted in an append-only CRC'd journal per segment, compacted by
//! rewrite-and-rename; fully settled sealed segments are deleted.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::error::IoContext;
use crate::format::{self, JournalEntry, JournalOp, JOURNAL_ENTRY_LEN};
use crate::log::{remove_if_exists, Appended, Log};
use crate::metrics::Counters;
use crate::segment::{SegMeta, SegPaths};
use crate::sync::lock;
use crate::vfs::{sync_dir, FileIo};
use crate::{Durability, Result, StorageError};

/// Bytes read per chunk by `recover()`.
const RECOVER_CHUNK_BYTES: usize = 1 << 20;
/// Journal read chunk at open (a multiple of the entry size).
const JOURNAL_READ_BYTES: usize = JOURNAL_ENTRY_LEN * 4096;
/// Compact a journal once it holds more than `2 * live + this` entries.
const COMPACT_SLACK_ENTRIES: u64 = 1024;

/// A message to hand out again after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingMessage {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub delivery_count: u32,
    pub not_before_ms: Option<i64>,
    pub body: Bytes,
}

/// Hashes relative offsets (Fibonacci hashing): they come from the log, never from a
/// client, and SipHash showed up in profiles of the ack path.
#[derive(Default, Clone, Copy)]
struct RelHasher(u64);

impl std::hash::Hasher for RelHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type RelHash = std::hash::BuildHasherDefault<RelHasher>;

/// Delivery state of one segment: 1 bit per message plus small maps for the exceptions.
#[derive(Default)]
struct SegState {
    settled: Vec<u64>,
    settled_count: u64,
    delivery: HashMap<u32, u32, RelHash>,
    not_before: HashMap<u32, i64, RelHash>,
    journal: Option<Arc<dyn FileIo>>,
    journal_len: u64,
    journal_entries: u64,
}

impl SegState {
    fn is_settled(&self, rel: u32) -> bool {
        let (w, b) = (rel as usize / 64, rel % 64);
        self.settled.get(w).is_some_and(|x| x & (1 << b) != 0)
    }

    /// Applies an entry; returns false if it was a no-op.
    fn apply(&mut self, e: &JournalEntry) -> bool {
        match e.op {
            JournalOp::Settle => self.settle(e.rel),
            JournalOp::SettleRange => {
                let n = u32::try_from(e.value).unwrap_or(0);
                let mut any = false;
                for r in e.rel..e.rel.saturating_add(n) {
                    any |= self.settle(r);
                }
                any
            }
            JournalOp::Delivered => {
                if self.is_settled(e.rel) {
                    return false;
                }
                self.delivery
                    .insert(e.rel, u32::try_from(e.value).unwrap_or(u32::MAX));
                true
            }
            JournalOp::NotBefore => {
                if self.is_settled(e.rel) {
                    return false;
                }
                self.not_before.insert(e.rel, e.value);
                true
            }
            JournalOp::DeliveredRange => {
                let (n, count) = format::unpack_delivered_range(e.value);
                let mut any = false;
                for r in e.rel..e.rel.saturating_add(n) {
                    if !self.is_settled(r) {
                        self.delivery.insert(r, count);
                        any = true;
                    }
                }
                any
            }
        }
    }

    fn settle(&mut self, rel: u32) -> bool {
        if self.is_settled(rel) {
            return false;
        }
        let (w, b) = (rel as usize / 64, rel % 64);
        if self.settled.len() <= w {
            self.settled.resize(w + 1, 0);
        }
        self.settled[w] |= 1 << b;
        self.settled_count += 1;
        self.delivery.remove(&rel);
        self.not_before.remove(&rel);
        true
    }

    /// Entries that reproduce the current state.
    fn snapshot_entries(&self) -> Vec<JournalEntry> {
        let mut out = Vec::new();
        let mut run: Option<(u32, u32)> = None;
        let bits = self.settled.len() as u64 * 64;
        for r in 0..bits.min(u64::from(u32::MAX)) as u32 {
            if self.is_settled(r) {
                run = Some(match run {
                    Some((s, n)) => (s, n + 1),
                    None => (r, 1),
                });
            } else if let Some((s, n)) = run.take() {
                out.push(JournalEntry {
                    op: JournalOp::SettleRange,
                    rel: s,
                    value: i64::from(n),
                });
            }
        }
        if let Some((s, n)) = run {
            out.push(JournalEntry {
                op: JournalOp::SettleRange,
                rel: s,
                value: i64::from(n),
            });
        }
        let mut d: Vec<_> = self.delivery.iter().collect();
        d.sort_unstable();
        out.extend(d.into_iter().map(|(&rel, &c)| JournalEntry {
            op: JournalOp::Delivered,
            rel,
            value: i64::from(c),
        }));
        let mut nb: Vec<_> = self.not_before.iter().collect();
        nb.sort_unstable();
        out.extend(nb.into_iter().map(|(&rel, &v)| JournalEntry {
            op: JournalOp::NotBefore,
            rel,
            value: v,
        }));
        out
    }

    /// Journal entries beyond which it is rewritten. The slack grows with the segment
    /// (16 entries per bitmap word, i.e. a quarter entry per message), so that a busy
    /// segment is compacted a logarithmic number of times, each costing two fsyncs,
    /// instead of every 1024 entries.
    fn compact_threshold(&self) -> u64 {
        2 * self.live_estimate() + COMPACT_SLACK_ENTRIES.max(16 * self.settled.len() as u64)
    }

    fn live_estimate(&self) -> u64 {
        // Settled runs are not counted exactly (that needs a pass over the bitmap).
        (self.delivery.len() + self.not_before.len()) as u64 + self.settled.len() as u64
    }
}

struct QState {
    segs: BTreeMap<u64, SegState>,
    /// Number of sealed segments when fully-settled segments were last swept.
    swept_sealed: usize,
}

/// A queue: a `Log` plus delivery state.
///
/// Journal writes (`settle`, `record_delivery`, `set_not_before`) are T1 (one `pwrite`
/// per touched segment per call); under T2 they are queued for the log's next fsync round
/// without waiting. Each segment's journal is a sequence of CRC'd entries read up to the
/// first bad one, so after a crash a segment's state is a prefix of what was written: a lost
/// settle means a redelivery (allowed by at-least-once), never a lost message. On a journal
/// write error the in-memory state keeps the change (so it is not redelivered before a
/// restart) and the error is returned.
pub struct QueueLog {
    log: Arc<Log>,
    state: Mutex<QState>,
}

impl std::fmt::Debug for QueueLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueLog").field("log", &self.log).finish()
    }
}

/// The segment holding `offset`, if it is stored.
fn seg_of(sealed: &[SegMeta], active_base: u64, offset: u64) -> Option<(u64, u64)> {
    if offset >= active_base {
        return Some((active_base, u64::MAX));
    }
    let i = sealed.partition_point(|m| m.end <= offset);
    sealed
        .get(i)
        .filter(|m| m.base <= offset)
        .map(|m| (m.base, m.end))
}

impl QueueLog {
    pub(crate) fn open(log: Arc<Log>) -> Result<Arc<QueueLog>> {
        let (sealed, active_base, next) = log.segments();
        let mut segs = BTreeMap::new();
        let ends = sealed
            .iter()
            .map(|m| (m.base, m.end))
            .chain(std::iter::once((active_base, next)));
        for (base, end) in ends {
            let paths = SegPaths::new(log.dir(), base);
            if !paths.state.exists() {
                continue;
            }
            let ss = load_journal(&log, &paths, base, end)?;
            segs.insert(base, ss);
        }
        let q = Arc::new(QueueLog {
            log,
            state: Mutex::new(QState {
                segs,
                swept_sealed: usize::MAX,
            }),
        });
        {
            let mut st = lock(&q.state);
            q.sweep(&mut st, None)?;
        }
        Ok(q)
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Appends one batch (see `Log::append`).
    pub fn append(&self, records: &[Bytes], timestamp_ms: i64) -> Result<Appended> {
        self.log.append(records, timestamp_ms)
    }

    /// Applies `make(segment state, rel)` to every offset, journals the resulting entries.
    fn update(
        &self,
        offsets: &[u64],
        mut make: impl FnMut(&SegState, u32) -> Option<JournalEntry>,
    ) -> Result<Vec<u64>> {
        let (sealed, active_base, next) = self.log.segments();
        if let Some(&bad) = offsets.iter().find(|&&o| o >= next) {
            return Err(StorageError::OffsetOutOfRange {
                offset: bad,
                next_offset: next,
            });
        }
        let mut st = lock(&self.state);
        // Consecutive offsets that get the same change (an ack or a dispatch of a run of
        // messages, the common case) are journaled as one range entry.
        let mut runs: Vec<(u64, JournalEntry, u32)> = Vec::new();
        for &o in offsets {
            let Some((base, _)) = seg_of(&sealed, active_base, o) else {
                continue;
            };
            let ss = st.segs.entry(base).or_default();
            let rel = crate::segment::rel_of(base, o);
            if let Some(e) = make(ss, rel) {
                if ss.apply(&e) {
                    match runs.last_mut() {
                        Some((b, last, n))
                            if *b == base
                                && last.op == e.op
                                && last.value == e.value
                                && matches!(e.op, JournalOp::Settle | JournalOp::Delivered)
                                && last.rel.checked_add(*n) == Some(e.rel) =>
                        {
                            *n += 1;
                        }
                        _ => runs.push((base, e, 1)),
                    }
                }
            }
        }
        // Entries by segment, in offset order (almost always one segment).
        let mut pending: Vec<(u64, Vec<u8>)> = Vec::new();
        for (base, e, n) in runs {
            let e = match (e.op, n) {
                (JournalOp::Settle, 2..) => JournalEntry {
                    op: JournalOp::SettleRange,
                    rel: e.rel,
                    value: i64::from(n),
                },
                (JournalOp::Delivered, 2..) => JournalEntry {
                    op: JournalOp::DeliveredRange,
                    rel: e.rel,
                    value: format::pack_delivered_range(
                        n,
                        u32::try_from(e.value).unwrap_or(u32::MAX),
                    ),
                },
                _ => e,
            };
            let i = match pending.iter().position(|(b, _)| *b == base) {
                Some(i) => i,
                None => {
                    pending.push((base, Vec::with_capacity(2 * JOURNAL_ENTRY_LEN)));
                    pending.len() - 1
                }
            };
            format::encode_journal(&e, &mut pending[i].1);
        }
        pending.sort_unstable_by_key(|(b, _)| *b);
        let touched: Vec<u64> = pending.iter().map(|(b, _)| *b).collect();
        let mut first_err = None;
        for (base, bytes) in pending {
            if let Err(e) = self.write_journal(&mut st, base, &bytes) {
                first_err.get_or_insert(e);
            }
        }
        // Nothing was sealed when this update began, nor at the last sweep: nothing to
        // delete (a segment sealed meanwhile is seen by the next sweep).
        if !(sealed.is_empty() && st.swept_sealed == 0) {
            self.sweep(&mut st, Some(&touched))?;
        }
        first_err.map_or(Ok(touched), Err)
    }

    fn write_journal(&self, st: &mut QState, base: u64, bytes: &[u8]) -> Result<()> {
        let Some(ss) = st.segs.get_mut(&base) else {
            return Ok(());
        };
        let file = match &ss.journal {
            Some(f) => f.clone(),
            None => {
                let paths = SegPaths::new(self.log.dir(), base);
                let f = self
                    .log
                    .ctx()
                    .vfs
                    .open(&paths.state, true)
                    .at(&paths.state)?;
                ss.journal_len = f.size().at(&paths.state)?;
                ss.journal_len -= ss.journal_len % JOURNAL_ENTRY_LEN as u64;
                if self.log.durability() == Durability::T2 {
                    sync_dir(self.log.dir()).at(self.log.dir())?;
                }
                ss.journal = Some(f.clone());
                f
            }
        };
        if let Err(e) = file.write_all_at(bytes, ss.journal_len) {
            // Later writes go to journal_len again and overwrite a partial entry.
            let _ = file.set_len(ss.journal_len);
            return Err(StorageError::io(
                &SegPaths::new(self.log.dir(), base).state,
                e,
            ));
        }
        ss.journal_len += bytes.len() as u64;
        ss.journal_entries += (bytes.len() / JOURNAL_ENTRY_LEN) as u64;
        if self.log.durability() == Durability::T2 {
            let _ = self.log.ctx().syncer.submit(file, self.log.health(), false);
        }
        if ss.journal_entries > ss.compact_threshold() {
            compact(&self.log, &SegPaths::new(self.log.dir(), base), ss)?;
        }
        Ok(())
    }

    /// Deletes sealed segments whose messages are all settled: those in `touched`, or all of
    /// them if segments were sealed since the last sweep (or `touched` is `None`).
    fn sweep(&self, st: &mut QState, touched: Option<&[u64]>) -> Result<()> {
        let (sealed, _, _) = self.log.segments();
        if sealed.is_empty() {
            // Nothing sealed (the active segment is never deleted).
            st.swept_sealed = 0;
            return Ok(());
        }
        let all = touched.is_none() || sealed.len() != st.swept_sealed;
        let mut doomed = Vec::new();
        for m in sealed.iter() {
            if !all && !touched.is_some_and(|t| t.contains(&m.base)) {
                continue;
            }
            let settled = st.segs.get(&m.base).map_or(0, |s| s.settled_count);
            if settled >= m.end - m.base {
                doomed.push(m.base);
            }
        }
        let deleted = !doomed.is_empty();
        for base in doomed {
            self.log.delete_sealed(base)?;
            st.segs.remove(&base);
            remove_if_exists(&SegPaths::new(self.log.dir(), base).state)?;
        }
        st.swept_sealed = if deleted {
            self.log.segments().0.len()
        } else {
            sealed.len()
        };
        Ok(())
    }

    /// Marks messages settled (acked, expired or dead-lettered): they are never delivered
    /// again. Offsets already gone are ignored; fully settled sealed segments are deleted.
    ///
    /// # Errors
    /// `OffsetOutOfRange` (nothing changed) if an offset was never assigned; I/O errors
    /// from the journal.
    pub fn settle(&self, offsets: &[u64]) -> Result<()> {
        self.update(offsets, |_, rel| {
            Some(JournalEntry {
                op: JournalOp::Settle,
                rel,
                value: 0,
            })
        })
        .map(|_| ())
    }

    /// Increments the delivery count of each (unsettled) message.
    pub fn record_delivery(&self, offsets: &[u64]) -> Result<()> {
        self.update(offsets, |ss, rel| {
            let c = ss
                .delivery
                .get(&rel)
                .copied()
                .unwrap_or(0)
                .saturating_add(1);
            Some(JournalEntry {
                op: JournalOp::Delivered,
                rel,
                value: i64::from(c),
            })
        })
        .map(|_| ())
    }

    /// Sets the time before which the message must not be delivered.
    pub fn set_not_before(&self, offset: u64, not_before_ms: i64) -> Result<()> {
        self.update(&[offset], |_, rel| {
            Some(JournalEntry {
                op: JournalOp::NotBefore,
                rel,
                value: not_before_ms,
            })
        })
        .map(|_| ())
    }

    /// Settles `[start, end)` as lost (their batches failed verification).
    fn settle_lost(&self, start: u64, end: u64) -> Result<()> {
        let (sealed, active_base, _) = self.log.segments();
        let mut st = lock(&self.state);
        let mut o = start;
        let mut touched = Vec::new();
        while o < end {
            let Some((base, seg_end)) = seg_of(&sealed, active_base, o) else {
                // In a hole: jump to the next segment.
                o = sealed
                    .iter()
                    .map(|m| m.base)
                    .chain(std::iter::once(active_base))
                    .find(|&b| b > o)
                    .unwrap_or(end);
                continue;
            };
            let stop = end.min(seg_end);
            let rel = crate::segment::rel_of(base, o);
            let n = stop - o;
            tracing::warn!(dir = %self.log.dir().display(), first = o, count = n, "messages lost to corruption settled");
            let e = JournalEntry {
                op: JournalOp::SettleRange,
                rel,
                value: n as i64,
            };
            let ss = st.segs.entry(base).or_default();
            if ss.apply(&e) {
                let mut b = Vec::new();
                format::encode_journal(&e, &mut b);
                self.write_journal(&mut st, base, &b)?;
                touched.push(base);
            }
            o = stop;
        }
        self.sweep(&mut st, Some(&touched))
    }

    /// The unsettled messages in offset order with their delivery state, streamed from disk
    /// in chunks of about 1 MiB. Messages whose batch failed verification are settled as lost.
    pub fn recover(&self) -> impl Iterator<Item = Result<PendingMessage>> + '_ {
        self.recover_from(0)
    }

    /// Like [`QueueLog::recover`], from offset `from` on: how a queue pages the part of its
    /// backlog it does not keep in memory back in.
    pub fn recover_from(&self, from: u64) -> impl Iterator<Item = Result<PendingMessage>> + '_ {
        RecoverIter {
            q: self,
            next: from,
            buf: VecDeque::new(),
            done: false,
        }
    }

    /// The body of one message, if still stored (settled or not).
    pub fn read_message(&self, offset: u64) -> Result<Option<Bytes>> {
        for b in self.log.read(offset, 1)? {
            if b.base_offset > offset {
                break;
            }
            if let Some((_, body)) = b.records().find(|(o, _)| *o == offset) {
                return Ok(Some(body));
            }
        }
        Ok(None)
    }

    /// Messages stored and not settled.
    pub fn unsettled_count(&self) -> u64 {
        let (sealed, active_base, next) = self.log.segments();
        let st = lock(&self.state);
        sealed
            .iter()
            .map(|m| (m.base, m.end))
            .chain(std::iter::once((active_base, next)))
            .map(|(b, e)| (e - b).saturating_sub(st.segs.get(&b).map_or(0, |s| s.settled_count)))
            .sum()
    }

    pub fn size_bytes(&self) -> u64 {
        self.log.size_bytes()
    }

    /// fdatasyncs every journal (graceful shutdown).
    pub fn sync_journals(&self) -> Result<()> {
        let files: Vec<_> = lock(&self.state)
            .segs
            .iter()
            .filter_map(|(b, s)| s.journal.clone().map(|f| (*b, f)))
            .collect();
        for (b, f) in files {
            f.sync_data().at(&SegPaths::new(self.log.dir(), b).state)?;
        }
        Ok(())
    }
}

/// Loads a segment's journal, truncating it at the first bad entry; entries beyond the
/// segment's end (its tail was truncated by recovery) are dropped by a compaction.
fn load_journal(log: &Log, paths: &SegPaths, base: u64, end: u64) -> Result<SegState> {
    let f = log.ctx().vfs.open(&paths.state, false).at(&paths.state)?;
    let size = f.size().at(&paths.state)?;
    let count = end - base;
    let mut ss = SegState::default();
    let mut pos = 0u64;
    let mut stale = false;
    let mut buf = vec![0u8; JOURNAL_READ_BYTES];
    'outer: while pos < size {
        let n = (size - pos).min(JOURNAL_READ_BYTES as u64) as usize;
        f.read_exact_at(&mut buf[..n], pos).at(&paths.state)?;
        for chunk in buf[..n].chunks(JOURNAL_ENTRY_LEN) {
            match format::decode_journal(chunk) {
                Some(mut e) => {
                    // Entries beyond the segment's end (its tail was cut by recovery and
                    // those offsets will be reused) are dropped; ranges are clipped.
                    if u64::from(e.rel) >= count {
                        stale = true;
                    } else {
                        let room = count - u64::from(e.rel);
                        if e.op == JournalOp::SettleRange && e.value > room as i64 {
                            e.value = room as i64;
                            stale = true;
                        }
                        if e.op == JournalOp::DeliveredRange {
                            let (n, c) = format::unpack_delivered_range(e.value);
                            if u64::from(n) > room {
                                e.value = format::pack_delivered_range(room as u32, c);
                                stale = true;
                            }
                        }
                        ss.apply(&e);
                    }
                    ss.journal_entries += 1;
                    pos += JOURNAL_ENTRY_LEN as u64;
                }
                None => break 'outer,
            }
        }
    }
    if pos < size {
        if size - pos >= JOURNAL_ENTRY_LEN as u64 {
            Counters::add(&log.ctx().counters.corrupt_batches_total, 1);
            tracing::warn!(file = %paths.state.display(), position = pos, "corrupt state journal entry: journal truncated");
        }
        f.set_len(pos).at(&paths.state)?;
    }
    ss.journal_len = pos;
    ss.journal = Some(f);
    if stale || ss.journal_entries > ss.compact_threshold() {
        compact(log, paths, &mut ss)?;
    }
    Ok(ss)
}

/// Rewrites a journal with only the live state: write tmp, fsync, rename, fsync dir.
fn compact(log: &Log, paths: &SegPaths, ss: &mut SegState) -> Result<()> {
    let entries = ss.snapshot_entries();
    let mut bytes = Vec::with_capacity(entries.len() * JOURNAL_ENTRY_LEN);
    for e in &entries {
        format::encode_journal(e, &mut bytes);
    }
    let tmp = paths.state.with_extension("state.tmp");
    let f = log.ctx().vfs.open(&tmp, true).at(&tmp)?;
    f.set_len(0).at(&tmp)?;
    f.write_all_at(&bytes, 0).at(&tmp)?;
    f.sync_data().at(&tmp)?;
    fs::rename(&tmp, &paths.state).at(&paths.state)?;
    sync_dir(log.dir()).at(log.dir())?;
    ss.journal = Some(f);
    ss.journal_len = bytes.len() as u64;
    ss.journal_entries = entries.len() as u64;
    Counters::add(&log.ctx().counters.journal_compactions, 1);
    Ok(())
}

struct RecoverIter<'a> {
    q: &'a QueueLog,
    next: u64,
    buf: VecDeque<PendingMessage>,
    done: bool,
}

impl RecoverIter<'_> {
    fn fill(&mut self) -> Result<()> {
        while self.buf.is_empty() && !self.done {
            let batches = self.q.log.read(self.next, RECOVER_CHUNK_BYTES)?;
            if batches.is_empty() {
                self.done = true;
                // Offsets below the end that no batch holds were lost to corruption.
                let end = self.q.log.next_offset();
                if self.next < end {
                    self.q.settle_lost(self.next, end)?;
                }
                break;
            }
            let mut gaps = Vec::new();
            {
                let (sealed, active_base, _) = self.q.log.segments();
                let st = lock(&self.q.state);
                for b in &batches {
                    if b.next_offset() <= self.next {
                        continue;
                    }
                    if b.base_offset > self.next {
                        gaps.push((self.next, b.base_offset));
                    }
                    let seg = seg_of(&sealed, active_base, b.base_offset).map(|(base, _)| base);
                    let ss = seg.and_then(|base| st.segs.get(&base).map(|s| (base, s)));
                    for (off, body) in b.records().filter(|(o, _)| *o >= self.next) {
                        let (dc, nb) = match ss {
                            Some((base, s)) => {
                                let rel = crate::segment::rel_of(base, off);
                                if s.is_settled(rel) {
                                    continue;
                                }
                                (
                                    s.delivery.get(&rel).copied().unwrap_or(0),
                                    s.not_before.get(&rel).copied(),
                                )
                            }
                            None => (0, None),
                        };
                        self.buf.push_back(PendingMessage {
                            offset: off,
                            timestamp_ms: b.timestamp_ms,
                            delivery_count: dc,
                            not_before_ms: nb,
                            body,
                        });
                    }
                    self.next = b.next_offset();
                }
            }
            for (s, e) in gaps {
                self.q.settle_lost(s, e)?;
            }
        }
        Ok(())
    }
}

impl Iterator for RecoverIter<'_> {
    type Item = Result<PendingMessage>;
    fn next(&mut self) -> Option<Self::Item> {
        if let Err(e) = self.fill() {
            self.done = true;
            return Some(Err(e));
        }
        self.buf.pop_front().map(Ok)
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

    fn body(i: u64) -> Bytes {
        Bytes::from(format!("message-{i:05}-{}", "x".repeat(40)))
    }

    #[test]
    fn delivery_state_survives_restart_and_settled_segments_go() {
        let dir = tempfile::tempdir().unwrap();
        let n = 400u64;
        {
            let s = Storage::open(dir.path(), cfg()).unwrap();
            let q = s.open_queue("/vh/q1", LogOptions::default()).unwrap();
            for i in 0..n {
                q.append(&[body(i)], i as i64)
                    .unwrap()
                    .commit
                    .wait()
                    .unwrap();
            }
            let segs = q.log().segment_count();
            assert!(segs > 4);
            // Settle the first 150, deliver 150..160 twice, delay 170.
            q.settle(&(0..150).collect::<Vec<_>>()).unwrap();
            q.record_delivery(&(150..160).collect::<Vec<_>>()).unwrap();
            q.record_delivery(&(150..160).collect::<Vec<_>>()).unwrap();
            q.set_not_before(170, 12345).unwrap();
            q.settle(&[155, 155, 399]).unwrap();
            assert!(
                q.log().segment_count() < segs,
                "fully settled sealed segments deleted"
            );
            assert_eq!(q.unsettled_count(), n - 152);
            assert!(matches!(
                q.settle(&[n]),
                Err(StorageError::OffsetOutOfRange { .. })
            ));
            assert_eq!(q.read_message(200).unwrap(), Some(body(200)));
        }
        let s = Storage::open(dir.path(), cfg()).unwrap();
        let q = s.open_queue("/vh/q1", LogOptions::default()).unwrap();
        assert_eq!(q.unsettled_count(), n - 152);
        let pending: Vec<_> = q.recover().collect::<Result<_>>().unwrap();
        let offs: Vec<u64> = pending.iter().map(|p| p.offset).collect();
        let want: Vec<u64> = (150..399).filter(|&o| o != 155).collect();
        assert_eq!(offs, want);
        for p in &pending {
            assert_eq!(p.body, body(p.offset));
            assert_eq!(p.timestamp_ms, p.offset as i64);
            assert_eq!(p.delivery_count, if p.offset < 160 { 2 } else { 0 });
            assert_eq!(p.not_before_ms, (p.offset == 170).then_some(12345));
        }
        assert_eq!(s.list_queues().unwrap(), vec!["/vh/q1".to_string()]);
        // Removing an open queue fences the handle: its writes fail from then on.
        s.remove_queue("/vh/q1").unwrap();
        assert!(s.list_queues().unwrap().is_empty());
        assert!(
            q.append(&[body(1)], 1).is_err(),
            "a removed queue takes no writes"
        );
        assert!(q.settle(&[150]).is_err() || q.log().is_failed());
        drop(q);
        // The name opens again as a new, empty queue.
        let q = s.open_queue("/vh/q1", LogOptions::default()).unwrap();
        assert_eq!(q.unsettled_count(), 0);
        assert_eq!(q.log().next_offset(), 0);
    }

    #[test]
    fn journal_compaction_keeps_state() {
        let dir = tempfile::tempdir().unwrap();
        let c = StorageConfig {
            segment_bytes: 1 << 20,
            ..cfg()
        };
        {
            let s = Storage::open(dir.path(), c.clone()).unwrap();
            let q = s
                .open_queue(
                    "q",
                    LogOptions {
                        durability: Some(Durability::T1),
                        ..Default::default()
                    },
                )
                .unwrap();
            let recs: Vec<Bytes> = (0..100).map(body).collect();
            let _ = q.append(&recs, 0).unwrap();
            // Descending offsets do not form runs: one journal entry per message.
            for _ in 0..40 {
                q.record_delivery(&(0..100).rev().collect::<Vec<_>>())
                    .unwrap();
            }
            q.settle(&(0..50).rev().collect::<Vec<_>>()).unwrap();
            assert!(s.metrics().journal_compactions > 0);
        }
        let s = Storage::open(dir.path(), c).unwrap();
        let q = s.open_queue("q", LogOptions::default()).unwrap();
        let pending: Vec<_> = q.recover().collect::<Result<_>>().unwrap();
        assert_eq!(pending.len(), 50);
        assert!(pending
            .iter()
            .all(|p| p.delivery_count == 40 && p.offset >= 50));
    }

    #[test]
    fn consecutive_offsets_are_journaled_as_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let journal_len = |dir: &std::path::Path| -> u64 {
            let qdir = std::fs::read_dir(dir.join("queues"))
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path();
            std::fs::metadata(qdir.join(format!("{:020}.state", 0)))
                .unwrap()
                .len()
        };
        {
            let s = Storage::open(dir.path(), cfg()).unwrap();
            let q = s
                .open_queue(
                    "q",
                    LogOptions {
                        durability: Some(Durability::T1),
                        ..Default::default()
                    },
                )
                .unwrap();
            let recs: Vec<Bytes> = (0..100).map(body).collect();
            let _ = q.append(&recs, 0).unwrap();
            // Two runs of first deliveries (0..60, 70..100) and a redelivery of 10..20.
            let mut first: Vec<u64> = (0..60).collect();
            first.extend(70..100);
            q.record_delivery(&first).unwrap();
            q.record_delivery(&(10..20).collect::<Vec<_>>()).unwrap();
            // Settles: a run 0..10 and two singles (30, 32).
            q.settle(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 30, 32]).unwrap();
            // Six entries: 2 + 1 delivered ranges, 1 settle range, 2 single settles.
            assert_eq!(journal_len(dir.path()), 6 * JOURNAL_ENTRY_LEN as u64);
        }
        let s = Storage::open(dir.path(), cfg()).unwrap();
        let q = s.open_queue("q", LogOptions::default()).unwrap();
        let pending: Vec<_> = q.recover().collect::<Result<_>>().unwrap();
        let offsets: Vec<u64> = pending.iter().map(|p| p.offset).collect();
        let expected: Vec<u64> = (10..100).filter(|o| *o != 30 && *o != 32).collect();
        assert_eq!(offsets, expected);
        for p in &pending {
            let want = match p.offset {
                10..20 => 2,
                20..60 | 70..100 => 1,
                _ => 0,
            };
            assert_eq!(p.delivery_count, want, "offset {}", p.offset);
        }
    }

    #[test]
    fn bitmap_state_is_compact() {
        // 1 bit per message: a million settled messages cost about 128 KiB.
        let mut ss = SegState::default();
        for r in 0..1_000_000u32 {
            ss.settle(r);
        }
        assert_eq!(ss.settled.len() * 8, 125_000);
        assert!(ss.delivery.is_empty());
        assert_eq!(ss.snapshot_entries().len(), 1);
    }
}
