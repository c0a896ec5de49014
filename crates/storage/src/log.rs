//! `Log`: an append-only, segmented log of CRC'd batches. Appends (one `pwrite` each at T1 and
//! Interval; written behind by the group-commit round at T2), segment rolling, zero-copy reads
//! by offset and by timestamp, segment deletion, and recovery on open.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};

use bytes::{Bytes, BytesMut};
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use crate::error::IoContext;
use crate::format::{
    self, BatchBody, IndexEntry, BATCH_HEADER_LEN, IDX_ENTRY_LEN, SEG_HEADER_LEN, TIX_ENTRY_LEN,
};
use crate::metrics::Counters;
use crate::pending::PendingBuf;
use crate::segment::{self, SealedHandle, SegMeta, SegPaths};
use crate::storage::Ctx;
use crate::sync::{lock, Commit, IntervalSync, LogHealth, WriteBehind};
use crate::vfs::{direct_zero_ahead, sync_dir, FileIo, DIRECT_ALIGN, DIRECT_ZERO_AHEAD_MAX};
use crate::{Durability, Result, StorageError};

static NEXT_LOG_ID: AtomicU64 = AtomicU64::new(1);

/// Smallest and largest read chunk.
const READ_CHUNK_MIN: usize = 64 << 10;
/// The tail cache budget is shared by up to this many stream logs (see `Log::tail_share`).
const TAIL_SHARES_MAX: usize = 8;
/// T2 appends leave their batches to the sync thread's round (many to a `pwrite`) until
/// this much is pending; the append that reaches it writes them itself (through the page
/// cache only: a log writing directly leaves it all to the round).
const EAGER_WRITE_BYTES: usize = 256 << 10;
const READ_CHUNK_MAX: usize = 16 << 20;
/// Chunks from this size on hint the next chunk to the kernel (`FileIo::will_need`).
const READ_AHEAD_MIN: usize = 1 << 20;

/// One batch as read back: header fields plus the record bytes, sliced without copying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub base_offset: u64,
    pub record_count: u32,
    pub timestamp_ms: i64,
    /// [`FORMAT_RECORDS`](crate::FORMAT_RECORDS) for framed records, else the format of an
    /// opaque batch (see [`Log::append_opaque`]).
    pub format: u8,
    payload: Bytes,
}

impl Batch {
    /// `(offset, body)` of every record; bodies are slices of one read buffer. An opaque
    /// batch has no framed records: this yields nothing for it (use [`Batch::payload`]).
    pub fn records(&self) -> impl Iterator<Item = (u64, Bytes)> + '_ {
        format::RecordIter {
            payload: &self.payload,
            at: 0,
            remaining: if self.is_opaque() {
                0
            } else {
                self.record_count
            },
            next_offset: self.base_offset,
        }
    }

    /// Whether this is an opaque batch (a payload in a format the layer above knows).
    pub fn is_opaque(&self) -> bool {
        self.format != format::FORMAT_RECORDS
    }

    /// The bytes after the batch header: an opaque batch's payload (a slice of the read
    /// buffer, not copied), or the framed records.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// One past the last offset of the batch.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }

    /// Encoded size on disk, header included.
    pub fn size_bytes(&self) -> usize {
        self.payload.len() + BATCH_HEADER_LEN
    }
}

/// Result of an append: the offsets given to the records and when they are durable.
#[derive(Debug)]
#[must_use = "the Commit says when the append is durable"]
pub struct Appended {
    pub base_offset: u64,
    pub next_offset: u64,
    pub commit: Commit,
}

struct Active {
    base: u64,
    paths: SegPaths,
    file: Arc<dyn FileIo>,
    idx: Arc<dyn FileIo>,
    tix: Arc<dyn FileIo>,
    entries: Vec<IndexEntry>,
    /// Logical end: written bytes plus the T2 appends still pending.
    len: u64,
    /// Bytes on the file (`len` minus the pending T2 appends).
    written: u64,
    /// Index entries on the index files (the rest are pending with their batches).
    entries_written: usize,
    max_ts: i64,
    last_index_pos: Option<u64>,
    /// T2 with direct writes: the segment's `O_DIRECT` handle (see [`Direct`]). Taken out
    /// while a write-behind runs without the lock.
    direct: Option<Box<Direct>>,
}

/// Direct (`O_DIRECT`) writing of a T2 segment. A direct write covers whole blocks of
/// [`DIRECT_ALIGN`] bytes, so each one starts at the block holding the end of the data and
/// writes that block's bytes before the end again (`head`, identical to what is on the file:
/// a write torn there leaves them intact), then the new batches, then zeros up to the next
/// block boundary.
///
/// A small write that reaches past the end of the file also writes zeros ahead of the data
/// ([`direct_zero_ahead`]; never past the segment's roll size; only in a group-commit round's
/// write, which an `fdatasync` follows): the writes after it land on
/// blocks the file already has, and their `fdatasync` only flushes the device instead of
/// also making a new file size and new blocks durable (a journal commit, or synchronous
/// metadata writes on a file system without a journal). On this project's test machines that
/// takes a round of 4-64 KiB from 190-290 µs to 105-160 µs (docs/benchmarks.md). Large
/// writes append plainly.
///
/// The file is thus longer than its data while it is the active segment; a roll, `sync` and
/// closing cut it back, and recovery drops zeros left at the end by a crash as the padding
/// and preallocation they are.
#[derive(Debug)]
struct Direct {
    file: Arc<dyn FileIo>,
    /// The file's bytes from the last block boundary up to the end of the data.
    head: Vec<u8>,
    /// The file's size: the end of the data, its padding and the zeros written ahead.
    file_end: u64,
    /// The disk had no room for zeros ahead: none until the next segment (or reopen).
    zeros_off: bool,
}

thread_local! {
    /// Each thread's aligned staging buffer for direct writes (the sync thread's rounds, or a
    /// reader, roll, `sync` or `Drop` writing the pending batches first): one allocation per
    /// thread, not per log.
    static DIRECT_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A staging buffer larger than this is given back after use.
const DIRECT_BUF_KEEP: usize = 16 << 20;

impl Direct {
    /// Opens `path` for direct writes (`None` where the file system has no direct I/O), its
    /// data ending at `len`; `head` is read from `file` (the buffered handle).
    fn open(
        vfs: &dyn crate::vfs::Vfs,
        path: &Path,
        file: &dyn FileIo,
        len: u64,
    ) -> Result<Option<Box<Direct>>> {
        let Some(d) = vfs.open_direct(path).at(path)? else {
            return Ok(None);
        };
        let keep = (len % DIRECT_ALIGN as u64) as usize;
        let mut head = vec![0u8; keep];
        file.read_exact_at(&mut head, len - keep as u64).at(path)?;
        let file_end = file.size().at(path)?.max(len);
        Ok(Some(Box::new(Direct {
            file: d,
            head,
            file_end,
            zeros_off: false,
        })))
    }

    /// Writes `data` at `pos` (the end of the data on the file); zeros written ahead, if any,
    /// end at or before `zeros_until` (the segment's roll size; 0 for none). Out of `data`'s
    /// own allocation where its layout allows ([`PendingBuf::in_place`]: a large write), else
    /// through the thread's aligned staging buffer (one copy).
    fn write(&mut self, data: &mut PendingBuf, pos: u64, zeros_until: u64) -> std::io::Result<()> {
        let start = pos - self.head.len() as u64;
        debug_assert_eq!(
            start % DIRECT_ALIGN as u64,
            0,
            "head reaches a block boundary"
        );
        let n = self.head.len() + data.len();
        let padded = n.next_multiple_of(DIRECT_ALIGN);
        let end = start + padded as u64;
        let ahead = if end > self.file_end && !self.zeros_off {
            let room = zeros_until.saturating_sub(end) as usize;
            direct_zero_ahead(padded).min(room - room % DIRECT_ALIGN)
        } else {
            0
        };
        let total = padded + ahead;
        let len = data.len();
        if let Some(buf) = data.in_place(&self.head, total) {
            // `buf` is owned by `data`, not borrowed from `self`: write it from there.
            let r = Self::write_blocks(&self.file, buf, start, padded, ahead, &mut self.zeros_off);
            let r = self.written(r, buf, n, end);
            data.restore(len);
            return r;
        }
        DIRECT_BUF.with_borrow_mut(|v| {
            if v.len() < total + DIRECT_ALIGN {
                v.resize(total + DIRECT_ALIGN, 0);
            }
            let off = v.as_ptr().align_offset(DIRECT_ALIGN);
            let buf = &mut v[off..off + total];
            buf[..self.head.len()].copy_from_slice(&self.head);
            buf[self.head.len()..n].copy_from_slice(data);
            buf[n..].fill(0);
            let r = Self::write_blocks(&self.file, buf, start, padded, ahead, &mut self.zeros_off);
            let r = self.written(r, buf, n, end);
            if v.len() > DIRECT_BUF_KEEP {
                *v = Vec::new();
            }
            r
        })
    }

    /// Writes the aligned `buf` (the head, the data, zeros to the block boundary at `padded`
    /// bytes, then `ahead` bytes of zeros) at `start`; returns the file's new size.
    fn write_blocks(
        file: &Arc<dyn FileIo>,
        buf: &[u8],
        start: u64,
        padded: usize,
        ahead: usize,
        zeros_off: &mut bool,
    ) -> std::io::Result<u64> {
        let end = start + padded as u64;
        let r = file.write_all_at(buf, start);
        if ahead > 0 && r.as_ref().is_err_and(is_out_of_space) {
            // The zeros are an optimisation: a disk too full for them may still take the
            // data. Whatever part of them was written is cut off again (it would take the
            // space other logs need), and no more are tried in this segment.
            *zeros_off = true;
            file.write_all_at(&buf[..padded], start)?;
            return Ok(match file.set_len(end) {
                Ok(()) => end,
                Err(_) => file.size().unwrap_or(end + ahead as u64).max(end),
            });
        }
        r.map(|()| end + ahead as u64)
    }

    /// After a write of `buf` (data ending at `n`, blocks ending at `end`): the new head and
    /// file size.
    fn written(
        &mut self,
        r: std::io::Result<u64>,
        buf: &[u8],
        n: usize,
        end: u64,
    ) -> std::io::Result<()> {
        let file_end = r?;
        let tail = n % DIRECT_ALIGN;
        self.head.clear();
        self.head.extend_from_slice(&buf[n - tail..n]);
        self.file_end = self.file_end.max(file_end).max(end);
        Ok(())
    }
}

/// Whether `e` is a failure for want of space (the file system's, a quota's or the file size limit).
fn is_out_of_space(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG)
    )
}

/// Writes `data` at `pos`, the end of the data of the active segment: directly when
/// `direct`, with zeros ahead up to at most `zeros_until` (see [`Direct::write`]).
fn write_data(
    file: &dyn FileIo,
    direct: Option<&mut Direct>,
    data: &mut PendingBuf,
    pos: u64,
    zeros_until: u64,
) -> std::io::Result<()> {
    match direct {
        Some(d) => d.write(data, pos, zeros_until),
        None => file.write_all_at(data, pos),
    }
}

struct State {
    sealed: Arc<Vec<SegMeta>>,
    sealed_bytes: u64,
    active: Active,
    next_offset: u64,
    buf: Vec<u8>,
    /// T2 write-behind: encoded batches appended but not yet written, to go at
    /// `active.written`, laid out for a direct write in place; the first of them has offset
    /// `pending_base`.
    pending: PendingBuf,
    pending_base: u64,
    /// The sync thread is writing pending appends it took out of `pending` (at
    /// `active.written`), without the lock: appends go on into a fresh `pending`, while
    /// whatever needs the file to hold everything appended (a reader, a roll, `sync`)
    /// waits on `Log::written_cv` for it to end.
    writing: bool,
    /// The first offset not on the file yet (the T2 appends still pending or being
    /// written start there); `next_offset` when everything is.
    file_next: u64,
    /// Tail cache (streams only, see [`Log::enable_tail_cache`]): the latest appended
    /// batches, a contiguous run ending at `next_offset`, as readers get them.
    tail: VecDeque<Batch>,
    /// Bytes of `tail` (batch sizes, headers included), counted in `Ctx::tail_cached`.
    tail_bytes: usize,
}

/// What a reader needs of the active segment, copied under the lock.
struct ActiveSnap {
    base: u64,
    file: Arc<dyn FileIo>,
    len: u64,
    start_pos: u64,
    max_ts: i64,
}

impl ActiveSnap {
    /// The first `len` bytes of `a`, for a read from offset `from`.
    fn of(a: &Active, len: u64, from: u64) -> ActiveSnap {
        let start_pos = if from > a.base {
            segment::lookup_offset(&a.entries, a.base, from)
        } else {
            SEG_HEADER_LEN
        };
        ActiveSnap {
            base: a.base,
            file: a.file.clone(),
            len,
            start_pos,
            max_ts: a.max_ts,
        }
    }
}

/// An append-only segmented log (one directory). Cheap to share: `Arc<Log>`; all methods
/// take `&self` and are thread-safe.
pub struct Log {
    /// This log, for handing the sync thread a reference with its T2 appends.
    me: Weak<Log>,
    id: u64,
    dir: PathBuf,
    durability: Durability,
    /// Roll threshold; changeable at runtime ([`Log::set_segment_bytes`]), read at each
    /// append, so a change applies from the next roll.
    segment_bytes: AtomicU64,
    /// A floor under [`Log::start_offset`] set by the layer above (a stream's log start
    /// offset, moved by DeleteRecords); 0 for logs that have none. Reads start at it.
    start_floor: AtomicU64,
    ctx: Arc<Ctx>,
    health: Arc<LogHealth>,
    state: Mutex<State>,
    /// Signalled when a write-behind done without the lock ends (`State::writing`).
    written_cv: Condvar,
    dirty: AtomicBool,
    /// Whether appends are kept in the tail cache (streams).
    tail_cache: AtomicBool,
    /// Streams: readers see only what is on the file ([`Log::readable_next`]) and never write
    /// pending T2 appends themselves; they wait on `readable` for the round's write instead.
    follow_file: AtomicBool,
    /// Signalled when [`Log::readable_next`] moves on (a stream's append at T1, a T2
    /// write-behind), for readers waiting at the end ([`Log::readable`]).
    readable: Notify,
    /// The durable half of a T2 segment roll, left to the sync thread (see [`RollJob`]).
    /// Held while the job runs, so that a second roll waits for the first to be finished.
    roll_job: Mutex<Option<RollJob>>,
}

/// What a T2 segment roll leaves to do before any append to the new segment may be
/// confirmed: make the sealed segment durable (its data and its seal in both indexes), then
/// give the new segment its name and make that durable. The new segment is written under a
/// `.tmp` name until then, so a segment file with a final name exists on disk only after
/// every segment before it is durable and sealed; a crash before the rename leaves a `.tmp`
/// file that opening the log removes, and none of its appends had been confirmed.
///
/// The sync thread runs it in the write-behind phase of the first group-commit round after
/// the roll, so the five fsyncs of a roll no longer stall the appending thread (a tokio
/// worker in the server) under the log's lock.
struct RollJob {
    /// The sealed segment and its two index files.
    sealed: [(Arc<dyn FileIo>, PathBuf); 3],
    tmp: PathBuf,
    seg: PathBuf,
}

impl RollJob {
    fn run(self, dir: &Path, counters: &Counters) -> Result<()> {
        for (f, p) in &self.sealed {
            f.sync_data().at(p)?;
            Counters::add(&counters.fsync_count, 1);
        }
        fs::rename(&self.tmp, &self.seg).at(&self.tmp)?;
        sync_dir(dir).at(dir)
    }
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").field("dir", &self.dir).finish()
    }
}

impl Log {
    /// Opens (creating if needed) the log in `dir` and recovers it.
    pub(crate) fn open(
        ctx: Arc<Ctx>,
        dir: PathBuf,
        durability: Durability,
        segment_bytes: u64,
    ) -> Result<Arc<Log>> {
        let cfg = &ctx.config;
        fs::create_dir_all(&dir).at(&dir)?;
        let mut bases = Vec::new();
        let mut others = Vec::new();
        for ent in fs::read_dir(&dir).at(&dir)? {
            let ent = ent.at(&dir)?;
            let name = ent.file_name();
            let Some(name) = name.to_str() else { continue };
            match segment::parse_file_name(name) {
                Some((b, "seg")) => bases.push(b),
                Some((b, ext)) if ext.ends_with(".tmp") => others.push((b, ent.path(), true)),
                Some((b, _)) => others.push((b, ent.path(), false)),
                None => {}
            }
        }
        bases.sort_unstable();
        for (b, path, tmp) in others {
            if tmp || bases.binary_search(&b).is_err() {
                tracing::info!(file = %path.display(), "removing orphan file");
                fs::remove_file(&path).at(&path)?;
            }
        }
        if bases.is_empty() {
            bases.push(0);
            let p = SegPaths::new(&dir, 0);
            let f = ctx.vfs.open(&p.seg, true).at(&p.seg)?;
            f.write_all_at(&format::segment_header(0), 0).at(&p.seg)?;
            f.sync_data().at(&p.seg)?;
            sync_dir(&dir).at(&dir)?;
        }
        let (active_base, sealed_bases) = match bases.split_last() {
            Some((a, s)) => (*a, s),
            None => unreachable!("bases is non-empty"),
        };
        let mut sealed = Vec::with_capacity(sealed_bases.len());
        let mut sealed_bytes = 0;
        for &b in sealed_bases {
            let m = segment::open_sealed_meta(
                ctx.vfs.as_ref(),
                &SegPaths::new(&dir, b),
                b,
                cfg.index_interval_bytes,
                cfg.batch_bytes_max,
                &ctx.counters,
            )?;
            sealed_bytes += m.size;
            sealed.push(m);
        }
        for w in sealed.windows(2) {
            if w[0].end > w[1].base {
                return Err(StorageError::Corrupt {
                    path: SegPaths::new(&dir, w[1].base).seg,
                    position: 0,
                    reason: format!("segment overlaps its predecessor ending at {}", w[0].end),
                });
            }
        }
        if let Some(last) = sealed.last() {
            if last.end > active_base {
                return Err(StorageError::Corrupt {
                    path: SegPaths::new(&dir, active_base).seg,
                    position: 0,
                    reason: format!("segment overlaps its predecessor ending at {}", last.end),
                });
            }
        }
        let paths = SegPaths::new(&dir, active_base);
        // Zeros a crash may leave after the data: a block's padding, and the zeros ahead of a
        // log that writes directly.
        let zeros_max = if durability == Durability::T2 && cfg.direct_writes {
            (DIRECT_ALIGN + DIRECT_ZERO_AHEAD_MAX) as u64
        } else {
            DIRECT_ALIGN as u64
        };
        let r = segment::recover_active(
            ctx.vfs.as_ref(),
            &paths,
            active_base,
            cfg.index_interval_bytes,
            cfg.batch_bytes_max,
            zeros_max,
            &ctx.counters,
        )?;
        let direct = if durability == Durability::T2 && cfg.direct_writes {
            Direct::open(ctx.vfs.as_ref(), &paths.seg, r.file.as_ref(), r.len)?
        } else {
            None
        };
        let state = State {
            sealed: Arc::new(sealed),
            sealed_bytes,
            next_offset: r.next_offset,
            buf: Vec::new(),
            pending: PendingBuf::default(),
            pending_base: r.next_offset,
            writing: false,
            file_next: r.next_offset,
            tail: VecDeque::new(),
            tail_bytes: 0,
            active: Active {
                base: active_base,
                paths,
                file: r.file,
                idx: r.idx,
                tix: r.tix,
                entries_written: r.entries.len(),
                entries: r.entries,
                len: r.len,
                written: r.len,
                max_ts: r.max_ts,
                last_index_pos: r.last_index_pos,
                direct,
            },
        };
        let log = Arc::new_cyclic(|me| Log {
            me: me.clone(),
            id: NEXT_LOG_ID.fetch_add(1, Ordering::Relaxed),
            health: LogHealth::new(dir.clone()),
            dir,
            durability,
            segment_bytes: AtomicU64::new(segment_bytes),
            start_floor: AtomicU64::new(0),
            ctx: ctx.clone(),
            state: Mutex::new(state),
            written_cv: Condvar::new(),
            dirty: AtomicBool::new(false),
            tail_cache: AtomicBool::new(false),
            follow_file: AtomicBool::new(false),
            readable: Notify::new(),
            roll_job: Mutex::new(None),
        });
        if let Durability::Interval(p) = durability {
            let weak: std::sync::Weak<dyn IntervalSync> = Arc::downgrade(&log) as _;
            ctx.syncer
                .register_interval(weak, p.max(crate::config::INTERVAL_MIN));
        }
        tracing::debug!(dir = %log.dir.display(), next_offset = log.next_offset(), "log opened");
        Ok(log)
    }

    /// Appends one batch: all records share one CRC'd header and get consecutive offsets.
    /// At T1 and Interval it costs one `pwrite` (plus one per index file every
    /// `index_interval_bytes`). At T2 the batch is written behind: it is copied to the log's
    /// pending buffer and the group-commit round writes all pending batches with one `pwrite`
    /// right before its fdatasync (a reader that reaches pending data writes it first).
    ///
    /// # Errors
    /// `InvalidArgument` for an empty batch, `TooLarge` above `batch_bytes_max`, `NoSpace`/`Io`
    /// if the write failed (it was rolled back), `LogFailed` if the log is failed. At T2 a
    /// failed write-behind is reported by the `Commit` (`NoSpace` for a full disk) and fails
    /// the log until it is reopened: its pending records already had offsets.
    pub fn append(&self, records: &[Bytes], timestamp_ms: i64) -> Result<Appended> {
        if records.is_empty() {
            return Err(StorageError::InvalidArgument("empty batch".into()));
        }
        self.append_body(BatchBody::Records(records), None, timestamp_ms)
    }

    /// Appends one *opaque* batch: `payload` is stored as one blob in `format` (non-zero,
    /// meaningful to the layer above) and takes `count` offsets. Reads return it whole
    /// ([`Batch::format`], [`Batch::payload`]); it has no framed records. Same durability,
    /// limits and errors as [`Log::append`].
    ///
    /// # Errors
    /// As [`Log::append`]; `InvalidArgument` for format 0, a zero count or an empty payload.
    pub fn append_opaque(
        &self,
        format: u8,
        count: u32,
        payload: &[u8],
        timestamp_ms: i64,
    ) -> Result<Appended> {
        self.append_body(
            BatchBody::Opaque {
                format,
                count,
                payload,
                known: None,
            },
            None,
            timestamp_ms,
        )
    }

    /// [`Log::append_opaque`] for a payload whose suffix CRC32C the caller already has
    /// (see [`crate::SuffixCrc`]): the batch checksum then reads the rest of it only.
    ///
    /// # Errors
    /// As [`Log::append_opaque`].
    ///
    /// The payload is a `Bytes`: a stream's tail cache keeps it as readers will get it,
    /// without a copy.
    pub fn append_opaque_with(
        &self,
        format: u8,
        count: u32,
        payload: &Bytes,
        known: Option<format::SuffixCrc>,
        timestamp_ms: i64,
    ) -> Result<Appended> {
        self.append_body(
            BatchBody::Opaque {
                format,
                count,
                payload,
                known,
            },
            Some(payload),
            timestamp_ms,
        )
    }

    /// `shared` is an opaque body's payload as a `Bytes`, for the tail cache.
    fn append_body(
        &self,
        body: BatchBody<'_>,
        shared: Option<&Bytes>,
        timestamp_ms: i64,
    ) -> Result<Appended> {
        if let BatchBody::Opaque {
            format,
            count,
            payload,
            ..
        } = body
        {
            if format == format::FORMAT_RECORDS || count == 0 || payload.is_empty() {
                return Err(StorageError::InvalidArgument(
                    "an opaque batch needs a non-zero format, a count and a payload".into(),
                ));
            }
        }
        let limit = self.ctx.config.batch_bytes_max;
        let len = match body.len() {
            Some(l) if l <= u64::from(limit) && body.count() <= u64::from(u32::MAX) => l as u32,
            l => {
                return Err(StorageError::TooLarge {
                    what: "batch",
                    size: l.unwrap_or(u64::MAX),
                    limit: u64::from(limit),
                })
            }
        };
        let mut guard = lock(&self.state);
        self.health.check()?;
        let segment_bytes = self.segment_bytes.load(Ordering::Relaxed);
        if guard.active.len > SEG_HEADER_LEN && guard.active.len + u64::from(len) > segment_bytes {
            guard = self.idle(guard);
            self.health.check()?;
            self.roll(&mut guard)?;
        }
        let st = &mut *guard;
        let base_offset = st.next_offset;
        let behind = self.durability == Durability::T2;
        let a = &mut st.active;
        let pos = a.len;
        // Each batch's bytes are copied once in user space at most: into the pending buffer
        // (T2), into `buf` (framed records), or not at all (an opaque payload goes to the
        // file from the caller's buffer, after its header, in one `pwritev`).
        let pending_from = st.pending.len();
        let written = if behind {
            if st.pending.is_empty() {
                st.pending_base = base_offset;
                // The allocation a finished write-behind left in `buf`, reused; the batches
                // go at `pos` once the write in flight (if any) has ended.
                st.buf = st.pending.start(pos, std::mem::take(&mut st.buf));
            }
            st.pending.reserve(len as usize);
            format::append_batch(st.pending.vec(), len, base_offset, timestamp_ms, body);
            Ok(())
        } else if let BatchBody::Opaque {
            format,
            count,
            payload,
            known,
        } = body
        {
            let h = format::opaque_header(
                len,
                base_offset,
                timestamp_ms,
                format,
                count,
                payload,
                known,
            );
            a.file.write_all_vectored_at(&[&h, payload], pos)
        } else {
            format::encode_batch(&mut st.buf, len, base_offset, timestamp_ms, body);
            a.file.write_all_at(&st.buf, pos)
        };
        if let Err(e) = written {
            return Err(self.write_failed(a, pos, &a.paths.seg.clone(), e));
        }
        let index_due = a
            .last_index_pos
            .is_none_or(|l| pos - l >= u64::from(self.ctx.config.index_interval_bytes));
        if index_due && behind {
            // Written with the batch by `write_pending_locked`.
            a.entries.push(IndexEntry {
                rel: segment::rel_of(a.base, base_offset),
                pos: segment::pos_u32(pos),
                max_ts_before: a.max_ts,
            });
            a.last_index_pos = Some(pos);
        } else if index_due {
            let e = IndexEntry {
                rel: segment::rel_of(a.base, base_offset),
                pos: segment::pos_u32(pos),
                max_ts_before: a.max_ts,
            };
            let n = a.entries.len() as u64;
            let r = a
                .idx
                .write_all_at(&format::encode_idx(&e), n * IDX_ENTRY_LEN as u64)
                .at(&a.paths.idx)
                .and_then(|_| {
                    a.tix
                        .write_all_at(&format::encode_tix(&e), n * TIX_ENTRY_LEN as u64)
                        .at(&a.paths.tix)
                });
            if let Err(err) = r {
                // Undo the batch so that data and index stay in step.
                let _ = a.idx.set_len(n * IDX_ENTRY_LEN as u64);
                let _ = a.tix.set_len(n * TIX_ENTRY_LEN as u64);
                self.rollback(a, pos);
                Counters::add(&self.ctx.counters.append_errors, 1);
                return Err(err);
            }
            a.entries.push(e);
            a.entries_written = a.entries.len();
            a.last_index_pos = Some(pos);
        }
        a.len += u64::from(len);
        if !behind {
            a.written = a.len;
        }
        a.max_ts = a.max_ts.max(timestamp_ms);
        st.next_offset += body.count();
        let next_offset = st.next_offset;
        if !behind {
            st.file_next = next_offset;
        }
        if self.tail_cache.load(Ordering::Relaxed) {
            let (format, count) = match body {
                BatchBody::Records(r) => (format::FORMAT_RECORDS, r.len() as u32),
                BatchBody::Opaque { format, count, .. } => (format, count),
            };
            // The bytes after the header, as a read would return them: the caller's
            // payload, the frame just encoded (given up by `buf`, which allocates anew), or
            // a copy out of the pending buffer.
            let payload = match (body, shared) {
                (BatchBody::Opaque { .. }, Some(p)) => p.clone(),
                (BatchBody::Opaque { payload, .. }, None) => Bytes::copy_from_slice(payload),
                (BatchBody::Records(_), _) if behind => {
                    Bytes::copy_from_slice(&st.pending[pending_from + BATCH_HEADER_LEN..])
                }
                (BatchBody::Records(_), _) => {
                    Bytes::from(std::mem::take(&mut st.buf)).slice(BATCH_HEADER_LEN..)
                }
            };
            self.cache_tail(
                st,
                Batch {
                    base_offset,
                    record_count: count,
                    timestamp_ms,
                    format,
                    payload,
                },
            );
        }
        let sync_file = behind.then(|| st.active.file.clone());
        // Enough is pending for a large `pwrite`: this appender writes it now (without the
        // lock), so that its copy into the page cache overlaps the fsync of the round in
        // progress instead of lengthening the next one. Not with direct writes: there is no
        // copy to overlap, the appender (a tokio worker) would wait for the device, and
        // Kafka T2 over one partition measured 5-20% more without it (A/B alternated).
        let write_now = behind
            && !st.writing
            && st.active.direct.is_none()
            && st.pending.len() >= EAGER_WRITE_BYTES;
        drop(guard);
        if !behind && self.follow_file.load(Ordering::Relaxed) {
            self.readable.notify_waiters();
        }
        Counters::add(&self.ctx.counters.bytes_written, u64::from(len));
        Counters::add(&self.ctx.counters.batches_written, 1);
        if write_now {
            // A failure fails the log: this append's commit then reports it.
            let _ = self.write_pending_unlocked(false);
        }
        let commit = match sync_file {
            Some(f) => {
                let me: Option<Arc<dyn WriteBehind>> = self.me.upgrade().map(|l| l as _);
                self.ctx
                    .syncer
                    .submit_with(f, &self.health, true, me)
                    .unwrap_or_else(Commit::failed)
            }
            None => {
                if matches!(self.durability, Durability::Interval(_)) {
                    self.dirty.store(true, Ordering::Relaxed);
                }
                Commit::ready()
            }
        };
        Ok(Appended {
            base_offset,
            next_offset,
            commit,
        })
    }

    /// Makes this log a stream's: readers see what is on the file ([`Log::readable_next`],
    /// signalled by [`Log::readable`]), so a reader at the head never writes the pending T2
    /// appends itself (a small direct write, then a `pread` from the device, on the reader's
    /// thread, for every fetch of a caught-up consumer); and appended batches are kept in
    /// memory for readers at the head: they get them without a `pread` and without
    /// verifying their checksum again (the bytes never left memory). Off for queues, whose
    /// messages the core holds.
    pub(crate) fn enable_stream_reads(&self) {
        self.follow_file.store(true, Ordering::Relaxed);
        self.enable_tail_cache();
    }

    /// Keeps appended batches in memory (see [`Log::enable_stream_reads`]).
    fn enable_tail_cache(&self) {
        if self.ctx.config.tail_cache_bytes > 0 && !self.tail_cache.swap(true, Ordering::Relaxed) {
            self.ctx.tail_logs.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// This log's share of the tail cache budget: an equal part for each open stream log,
    /// but never less than an eighth (beyond eight streams, the first to append take the
    /// budget). One busy partition alone may so hold the whole budget: a consumer fetching
    /// megabytes at a time from it lags by more than an eighth of 64 MiB.
    fn tail_share(&self) -> usize {
        let logs = self
            .ctx
            .tail_logs
            .load(Ordering::Relaxed)
            .clamp(1, TAIL_SHARES_MAX);
        self.ctx.config.tail_cache_bytes / logs
    }

    /// Gives back what this log caches beyond its share, which shrinks as more streams
    /// open. Appends do so too; retention calls this so that idle streams do as well.
    pub(crate) fn trim_tail(&self) {
        if !self.tail_cache.load(Ordering::Relaxed) {
            return;
        }
        let share = self.tail_share();
        let mut st = lock(&self.state);
        while st.tail_bytes > share && self.drop_tail_front(&mut st) {}
    }

    /// Adds the batch just appended to the tail cache, within this log's share and the
    /// storage's budget (oldest batches go first). The cache stays a contiguous run up to
    /// `next_offset`: a batch that cannot be kept empties it.
    fn cache_tail(&self, st: &mut State, b: Batch) {
        let budget = self.ctx.config.tail_cache_bytes;
        let share = self.tail_share();
        let size = b.size_bytes();
        let global = &self.ctx.tail_cached;
        if size > share {
            while self.drop_tail_front(st) {}
            return;
        }
        while st.tail_bytes + size > share && self.drop_tail_front(st) {}
        loop {
            let cur = global.load(Ordering::Relaxed);
            if cur + size <= budget {
                if global
                    .compare_exchange_weak(cur, cur + size, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    break;
                }
                continue;
            }
            if !self.drop_tail_front(st) {
                // Other logs hold the budget: this one keeps nothing.
                return;
            }
        }
        st.tail_bytes += size;
        st.tail.push_back(b);
    }

    /// Drops the oldest cached batch; false if there was none.
    fn drop_tail_front(&self, st: &mut State) -> bool {
        match st.tail.pop_front() {
            Some(old) => {
                st.tail_bytes -= old.size_bytes();
                self.ctx
                    .tail_cached
                    .fetch_sub(old.size_bytes(), Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Empties the tail cache (the log's end moved back, or the log goes).
    fn clear_tail(&self, st: &mut State) {
        st.tail.clear();
        self.ctx
            .tail_cached
            .fetch_sub(std::mem::take(&mut st.tail_bytes), Ordering::Relaxed);
    }

    /// Batches from the tail cache for a read from `from` (see [`Log::read`]), or `None`
    /// when the batch holding `from` is not cached or not on the file yet.
    fn read_tail(&self, from: u64, max_bytes: usize) -> Option<Vec<Batch>> {
        if !self.tail_cache.load(Ordering::Relaxed) {
            // Queues and plain logs: no cache, and no second lock of the state per read.
            return None;
        }
        let st = lock(&self.state);
        let first = st.tail.front()?;
        if from < first.base_offset {
            return None;
        }
        if from >= st.next_offset {
            return Some(Vec::new());
        }
        let i = st.tail.partition_point(|b| b.next_offset() <= from);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for b in st.tail.range(i..) {
            // Readers see what is on the file only (see `snapshot`).
            if b.next_offset() > st.file_next || (!out.is_empty() && bytes >= max_bytes) {
                break;
            }
            bytes += b.size_bytes();
            out.push(b.clone());
        }
        (!out.is_empty()).then_some(out)
    }

    fn write_failed(&self, a: &Active, pos: u64, path: &Path, e: std::io::Error) -> StorageError {
        Counters::add(&self.ctx.counters.append_errors, 1);
        tracing::warn!(file = %path.display(), position = pos, error = %e, "append failed; rolling back");
        self.rollback(a, pos);
        StorageError::io(path, e)
    }

    /// Cuts the active segment back to `pos`; if even that fails, the log is failed so that a
    /// half-written batch can never be followed by acknowledged ones.
    fn rollback(&self, a: &Active, pos: u64) {
        if let Err(e) = a.file.set_len(pos) {
            self.health.fail(format!(
                "could not truncate {} back to {pos} after a failed write: {e}",
                a.paths.seg.display()
            ));
        }
    }

    /// Waits until no write-behind is in flight outside the lock (`State::writing`): after
    /// this, the file holds everything appended but `pending`.
    fn idle<'a>(&self, mut g: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        while g.writing {
            g = self
                .written_cv
                .wait(g)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        g
    }

    /// Writes the T2 appends still pending (one `pwrite`) and their index entries, under
    /// the lock (the caller made sure no write is in flight: [`Log::idle`]). On a failure
    /// see [`Log::pending_write_failed`].
    fn write_pending_locked(&self, st: &mut State) -> Result<()> {
        debug_assert!(!st.writing, "write-behind in flight");
        if !st.pending.is_empty() {
            let a = &mut st.active;
            if let Err(e) = write_data(
                a.file.as_ref(),
                a.direct.as_deref_mut(),
                &mut st.pending,
                a.written,
                // No zeros ahead: this write is not a round's (whose fsync they speed up),
                // but a reader's, a roll's, `sync`'s or `Drop`'s.
                0,
            ) {
                let (pos, from, base) = (a.written, a.entries_written, st.pending_base);
                return Err(self.pending_write_failed(st, pos, from, base, e));
            }
            st.active.written += st.pending.len() as u64;
            st.pending.clear();
        }
        if st.file_next != st.next_offset && self.follow_file.load(Ordering::Relaxed) {
            self.readable.notify_waiters();
        }
        st.file_next = st.next_offset;
        let a = &mut st.active;
        let to = a.entries.len();
        if a.entries_written < to {
            let r = write_index(a, a.entries_written);
            self.index_written(a, to, r)?;
        }
        Ok(())
    }

    /// A write of pending appends (taken at `pos`, the first of them with offset `base`, index
    /// entries from `from`) failed: the partial write is cut off, the log's end goes back to
    /// what is on the file (so readers never see the lost batches, nor those appended since),
    /// and the log is failed: the lost records had offsets that the caller may hold, so none
    /// may be given out again.
    fn pending_write_failed(
        &self,
        st: &mut State,
        pos: u64,
        from: usize,
        base: u64,
        e: std::io::Error,
    ) -> StorageError {
        let a = &mut st.active;
        let err = StorageError::io(&a.paths.seg, e);
        Counters::add(&self.ctx.counters.append_errors, 1);
        tracing::warn!(file = %a.paths.seg.display(), position = pos, error = %err,
            "write-behind failed; cutting the segment back and failing the log");
        let _ = a.file.set_len(pos);
        if let Some(d) = a.direct.as_deref_mut() {
            d.file_end = pos;
        }
        a.written = pos;
        a.len = pos;
        a.entries.truncate(from);
        a.entries_written = a.entries_written.min(from);
        a.last_index_pos = a.entries.last().map(|e| u64::from(e.pos));
        st.next_offset = base;
        st.file_next = st.file_next.min(base);
        st.pending.clear();
        self.clear_tail(st);
        self.health
            .fail_with(format!("write-behind failed: {err}"), err.is_no_space());
        self.health.error()
    }

    /// Records the outcome of writing the index entries up to `to`; a failure fails the log
    /// (the batches are on the file, and a damaged index is rebuilt at open).
    fn index_written(&self, a: &mut Active, to: usize, r: Result<()>) -> Result<()> {
        match r {
            Ok(()) => {
                a.entries_written = a.entries_written.max(to);
                Ok(())
            }
            Err(err) => {
                self.health
                    .fail_with(format!("index write failed: {err}"), err.is_no_space());
                Err(self.health.error())
            }
        }
    }

    /// The write-behind of the sync thread, and of an append that left enough pending: takes
    /// the pending appends and their index entries under the lock and writes them without
    /// it, so that appends (which only copy into a fresh `pending`) are not held up for the
    /// length of a large `pwrite`. With a write already in flight, waits for it if `wait`,
    /// else leaves the rest to it and the next round.
    fn write_pending_unlocked(&self, wait: bool) -> Result<()> {
        let g = lock(&self.state);
        if g.writing && !wait {
            return Ok(());
        }
        let mut g = self.idle(g);
        let st = &mut *g;
        let a = &st.active;
        let (from, to) = (a.entries_written, a.entries.len());
        if st.pending.is_empty() && from == to {
            return Ok(());
        }
        let mut data = std::mem::take(&mut st.pending);
        let (pos, base, end) = (a.written, st.pending_base, st.next_offset);
        let (file, idx_file, tix_file) = (a.file.clone(), a.idx.clone(), a.tix.clone());
        let (seg_path, idx_path, tix_path) = (
            a.paths.seg.clone(),
            a.paths.idx.clone(),
            a.paths.tix.clone(),
        );
        let (idx, tix) = encode_index(&a.entries[from..to]);
        let mut direct = st.active.direct.take();
        st.writing = true;
        drop(g);
        let data_r = write_data(
            file.as_ref(),
            direct.as_deref_mut(),
            &mut data,
            pos,
            self.segment_bytes.load(Ordering::Relaxed),
        );
        let index_r = match data_r {
            Ok(()) => idx_file
                .write_all_at(&idx, (from * IDX_ENTRY_LEN) as u64)
                .at(&idx_path)
                .and_then(|()| {
                    tix_file
                        .write_all_at(&tix, (from * TIX_ENTRY_LEN) as u64)
                        .at(&tix_path)
                }),
            Err(_) => Ok(()),
        };
        let mut g = lock(&self.state);
        let st = &mut *g;
        st.writing = false;
        st.active.direct = direct;
        // The active segment is the same: a roll waits for this write to end.
        debug_assert_eq!(st.active.paths.seg, seg_path);
        let r = match data_r {
            Err(e) => Err(self.pending_write_failed(st, pos, from, base, e)),
            Ok(()) => {
                st.active.written = pos + data.len() as u64;
                st.file_next = end;
                if self.follow_file.load(Ordering::Relaxed) {
                    self.readable.notify_waiters();
                }
                if st.buf.capacity() < data.capacity() {
                    // Reuse the allocation for the next batches (`buf` becomes `pending`).
                    st.buf = data.into_vec();
                }
                self.index_written(&mut st.active, to, index_r)
            }
        };
        drop(g);
        self.written_cv.notify_all();
        r
    }

    /// Seals the active segment and starts a new one at `next_offset`.
    fn roll(&self, st: &mut State) -> Result<()> {
        debug_assert!(!st.writing, "roll while a write-behind is in flight");
        self.write_pending_locked(st)?;
        self.trim_padding(&mut st.active)?;
        let t2 = self.durability == Durability::T2;
        if t2 {
            // Two rolls before a group-commit round (tiny segments): the first is finished
            // here, so that the segment sealed now already has its final name.
            self.finish_roll()?;
        }
        let a = &st.active;
        let seal = IndexEntry {
            rel: segment::rel_of(a.base, st.next_offset),
            pos: segment::pos_u32(a.len),
            max_ts_before: a.max_ts,
        };
        let n = a.entries.len() as u64;
        a.idx
            .write_all_at(&format::encode_idx(&seal), n * IDX_ENTRY_LEN as u64)
            .at(&a.paths.idx)?;
        a.tix
            .write_all_at(&format::encode_tix(&seal), n * TIX_ENTRY_LEN as u64)
            .at(&a.paths.tix)?;
        if !t2 {
            // T1/Interval: make the sealed segment durable in the background.
            for f in [&a.file, &a.idx, &a.tix] {
                let _ = self.ctx.syncer.submit(f.clone(), &self.health, false);
            }
        }
        let base = st.next_offset;
        let paths = SegPaths::new(&self.dir, base);
        // T2: the new segment is named by its `RollJob` once the sealed one is durable.
        let at = if t2 {
            tmp_path(&paths.seg)
        } else {
            paths.seg.clone()
        };
        let created = (|| -> Result<_> {
            let file = self.ctx.vfs.open(&at, true).at(&at)?;
            file.set_len(0).at(&at)?;
            file.write_all_at(&format::segment_header(base), 0)
                .at(&at)?;
            let (idx, tix) = segment::open_index_files(self.ctx.vfs.as_ref(), &paths)?;
            idx.set_len(0).at(&paths.idx)?;
            tix.set_len(0).at(&paths.tix)?;
            Ok((file, idx, tix))
        })();
        let (file, idx, tix) = match created {
            Ok(x) => x,
            Err(e) => {
                let _ = fs::remove_file(&at);
                return Err(e);
            }
        };
        let seg_path = paths.seg.clone();
        let direct = if t2 && self.ctx.config.direct_writes {
            match Direct::open(self.ctx.vfs.as_ref(), &at, file.as_ref(), SEG_HEADER_LEN) {
                Ok(d) => d,
                Err(e) => {
                    let _ = fs::remove_file(&at);
                    return Err(e);
                }
            }
        } else {
            None
        };
        let old = std::mem::replace(
            &mut st.active,
            Active {
                base,
                paths,
                file,
                idx,
                tix,
                entries: Vec::new(),
                entries_written: 0,
                len: SEG_HEADER_LEN,
                written: SEG_HEADER_LEN,
                max_ts: i64::MIN,
                last_index_pos: None,
                direct,
            },
        );
        if t2 {
            *lock(&self.roll_job) = Some(RollJob {
                sealed: [
                    (old.file.clone(), old.paths.seg.clone()),
                    (old.idx.clone(), old.paths.idx.clone()),
                    (old.tix.clone(), old.paths.tix.clone()),
                ],
                tmp: at,
                seg: seg_path,
            });
        }

        let meta = SegMeta {
            base: old.base,
            end: base,
            size: old.len,
            max_ts: old.max_ts,
        };
        Arc::make_mut(&mut st.sealed).push(meta);
        st.sealed_bytes += old.len;
        Counters::add(&self.ctx.counters.segments_created, 1);
        tracing::debug!(dir = %self.dir.display(), base, "segment rolled");
        Ok(())
    }

    /// Cuts the zeros that direct writes left after the data of `a` (a roll seals it, or the
    /// log is synced or closed), so that the file ends where its data does.
    fn trim_padding(&self, a: &mut Active) -> Result<()> {
        if let Some(d) = a.direct.as_deref_mut() {
            if d.file_end > a.written {
                a.file.set_len(a.written).at(&a.paths.seg)?;
                d.file_end = a.written;
            }
        }
        Ok(())
    }

    /// Runs the durable half of the last T2 roll if it is still to do (see [`RollJob`]). A
    /// failure fails the log: appends to the new segment must not be confirmed.
    fn finish_roll(&self) -> Result<()> {
        let mut job = lock(&self.roll_job);
        let Some(j) = job.take() else {
            return Ok(());
        };
        if self.health.is_failed() {
            // Removed or failed: nothing of the new segment will be confirmed.
            return Err(self.health.error());
        }
        if let Err(e) = j.run(&self.dir, &self.ctx.counters) {
            Counters::add(&self.ctx.counters.fsync_errors, 1);
            self.health.fail(format!("segment roll failed: {e}"));
            return Err(self.health.error());
        }
        Ok(())
    }

    /// What a read from `from` sees of the log: the sealed segments, the active one and the
    /// end. A stream's reader (`all` false) sees what is on the file; every other read, and a
    /// stream's lookup that must see everything appended (`all`: a timestamp lookup), first
    /// writes the pending T2 appends.
    fn snapshot(&self, from: u64, all: bool) -> (Arc<Vec<SegMeta>>, ActiveSnap, u64) {
        if !all && self.follow_file.load(Ordering::Relaxed) {
            // A stream: what is on the file, as of now. A write in flight moves `written`
            // and `file_next` together when it ends; the pending appends are the round's to
            // write (readers wait for it on `readable`).
            let st = lock(&self.state);
            let snap = ActiveSnap::of(&st.active, st.active.written, from);
            return (st.sealed.clone(), snap, st.file_next);
        }
        let mut st = self.idle(lock(&self.state));
        if !st.pending.is_empty() {
            // Readers see only what is on the file: write the pending appends now. A failure
            // fails the log and takes its end back to the file's.
            let _ = self.write_pending_locked(&mut st);
        }
        let snap = ActiveSnap::of(&st.active, st.active.len, from);
        (st.sealed.clone(), snap, st.next_offset)
    }

    /// The open file and index of a sealed segment (from the shared cache); `None` if it has
    /// been deleted meanwhile.
    fn sealed_handle(&self, m: &SegMeta) -> Result<Option<Arc<SealedHandle>>> {
        let key = (self.id, m.base);
        if let Some(h) = lock(&self.ctx.cache).get(key) {
            Counters::add(&self.ctx.counters.index_cache_hits, 1);
            return Ok(Some(h));
        }
        Counters::add(&self.ctx.counters.index_cache_misses, 1);
        let paths = SegPaths::new(&self.dir, m.base);
        let cfg = &self.ctx.config;
        match segment::load_sealed(
            self.ctx.vfs.as_ref(),
            &paths,
            *m,
            cfg.index_interval_bytes,
            cfg.batch_bytes_max,
            &self.ctx.counters,
        ) {
            Ok(h) => {
                let h = Arc::new(h);
                lock(&self.ctx.cache).insert(key, h.clone());
                Ok(Some(h))
            }
            Err(StorageError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads batches starting with the one that holds `from_offset` (or the first one after
    /// it, if that offset is gone), until `max_bytes` are collected. Returns at least one
    /// batch if any exists at or after `from_offset`, even one bigger than `max_bytes`;
    /// the first may start before `from_offset`. Corrupt batches are skipped (and counted).
    ///
    /// Reads start at the start floor (see [`Log::start_offset`]) when `from_offset` is
    /// below it: the first batch returned may still hold records below the floor.
    pub fn read(&self, from_offset: u64, max_bytes: usize) -> Result<Vec<Batch>> {
        let from_offset = from_offset.max(self.start_floor.load(Ordering::Acquire));
        if let Some(cached) = self.read_tail(from_offset, max_bytes) {
            // A read at the end (nothing to return) is no hit.
            if !cached.is_empty() {
                Counters::add(&self.ctx.counters.tail_cache_hits, 1);
            }
            return Ok(cached);
        }
        let (sealed, active, next) = self.snapshot(from_offset, false);
        let mut out = Vec::new();
        if from_offset >= next {
            return Ok(out);
        }
        let mut acc = Acc {
            out: &mut out,
            bytes: 0,
            max_bytes,
        };
        let first = sealed.partition_point(|m| m.end <= from_offset);
        for m in &sealed[first..] {
            if m.end == m.base {
                continue;
            }
            let Some(h) = self.sealed_handle(m)? else {
                continue;
            };
            let pos = if from_offset > m.base {
                segment::lookup_offset(&h.entries, m.base, from_offset)
            } else {
                SEG_HEADER_LEN
            };
            let path = SegPaths::new(&self.dir, m.base).seg;
            self.read_range(
                h.file.as_ref(),
                &path,
                pos,
                h.meta.size,
                m.base..m.end,
                from_offset,
                &mut acc,
            )?;
            if acc.full() {
                return Ok(out);
            }
        }
        let path = SegPaths::new(&self.dir, active.base).seg;
        self.read_range(
            active.file.as_ref(),
            &path,
            active.start_pos,
            active.len,
            active.base..next,
            from_offset,
            &mut acc,
        )?;
        Ok(out)
    }

    /// Reads verified batches from `pos` to `limit` into `acc`, in chunks: one `pread` into one
    /// buffer, frozen, with every batch a slice of it. `offsets` is what the segment holds: a
    /// batch outside it, or below the end of the batch before, is corrupt (a damaged sealed
    /// segment whose index claims less than its bytes hold must not hand out offsets that
    /// belong to the next segment, out of order).
    #[allow(clippy::too_many_arguments)]
    fn read_range(
        &self,
        file: &dyn FileIo,
        path: &Path,
        mut pos: u64,
        limit: u64,
        offsets: std::ops::Range<u64>,
        from: u64,
        acc: &mut Acc<'_>,
    ) -> Result<()> {
        let batch_max = self.ctx.config.batch_bytes_max;
        let mut expected = offsets.start;
        while pos < limit && !acc.full() {
            let want = (acc.max_bytes.saturating_sub(acc.bytes) + BATCH_HEADER_LEN)
                .clamp(READ_CHUNK_MIN, READ_CHUNK_MAX) as u64;
            let n = want.min(limit - pos) as usize;
            let mut buf = BytesMut::new();
            file.read_exact_into(&mut buf, n, pos).at(path)?;
            Counters::add(&self.ctx.counters.bytes_read, n as u64);
            // A first batch bigger than the chunk: read exactly that batch instead.
            if let Some(h) = format::parse_header(&buf, batch_max) {
                let len = h.len as usize;
                if len > n && u64::from(h.len) <= limit - pos {
                    file.read_exact_into(&mut buf, len - n, pos + n as u64)
                        .at(path)?;
                    Counters::add(&self.ctx.counters.bytes_read, (len - n) as u64);
                }
            }
            let n = buf.len();
            // A big sequential read: let the disk fetch the next chunk while this one is
            // verified and handed out.
            if n >= READ_AHEAD_MIN && pos + (n as u64) < limit {
                let next = pos + n as u64;
                file.will_need(next, (n as u64).min(limit - next));
            }
            let chunk = buf.freeze();
            let mut off = 0usize;
            let mut bad = false;
            while off + BATCH_HEADER_LEN <= chunk.len() && !acc.full() {
                let Some(h) = format::parse_header(&chunk[off..], batch_max) else {
                    bad = true;
                    break;
                };
                let end = off + h.len as usize;
                if end > chunk.len() {
                    if pos + end as u64 > limit {
                        bad = true;
                    }
                    break;
                }
                if h.base_offset < expected
                    || h.next_offset() > offsets.end
                    || format::verify_batch(&chunk[off..end], batch_max).is_none()
                {
                    bad = true;
                    break;
                }
                expected = h.next_offset();
                if h.next_offset() > from {
                    acc.bytes += h.len as usize;
                    acc.out.push(Batch {
                        base_offset: h.base_offset,
                        record_count: h.count,
                        format: h.format,
                        timestamp_ms: h.timestamp_ms,
                        payload: chunk.slice(off + BATCH_HEADER_LEN..end),
                    });
                }
                off = end;
            }
            if !bad
                && off + BATCH_HEADER_LEN > chunk.len()
                && pos + (off + BATCH_HEADER_LEN) as u64 > limit
                && pos + (off as u64) < limit
            {
                bad = true; // trailing bytes too short for a header
            }
            pos += off as u64;
            if bad && !acc.full() {
                Counters::add(&self.ctx.counters.corrupt_batches_total, 1);
                let mut sc = segment::Scanner::new(file, limit, batch_max);
                match sc.resync(pos, expected).at(path)? {
                    Some(q) => {
                        tracing::warn!(file = %path.display(), position = pos, skipped_bytes = q - pos,
                            "corrupt batch skipped on read");
                        pos = q;
                    }
                    None => {
                        tracing::warn!(file = %path.display(), position = pos,
                            "corrupt data up to the end of the segment skipped on read");
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// First offset whose batch timestamp is >= `timestamp_ms` (the batch's base offset),
    /// or `None` if every batch is older.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<u64>> {
        let floor = self.start_floor.load(Ordering::Acquire);
        Ok(self
            .stored_offset_for_timestamp(timestamp_ms)?
            .map(|o| o.max(floor)))
    }

    fn stored_offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<u64>> {
        // Every batch appended, pending ones too: a consumer starting at a time just past the
        // last round must not start after the records of the next one.
        let (sealed, active, next) = self.snapshot(0, true);
        let batch_max = self.ctx.config.batch_bytes_max;
        for m in sealed
            .iter()
            .filter(|m| m.max_ts >= timestamp_ms && m.end > m.base)
        {
            let Some(h) = self.sealed_handle(m)? else {
                continue;
            };
            let pos = segment::lookup_time(&h.entries, timestamp_ms);
            let path = SegPaths::new(&self.dir, m.base).seg;
            if let Some(o) = scan_for_time(
                h.file.as_ref(),
                &path,
                (pos, h.meta.size),
                m.base..m.end,
                timestamp_ms,
                batch_max,
            )? {
                return Ok(Some(o));
            }
        }
        if active.max_ts >= timestamp_ms {
            let pos = {
                let st = lock(&self.state);
                if st.active.base == active.base {
                    segment::lookup_time(&st.active.entries, timestamp_ms)
                } else {
                    SEG_HEADER_LEN
                }
            };
            let path = SegPaths::new(&self.dir, active.base).seg;
            return scan_for_time(
                active.file.as_ref(),
                &path,
                (pos, active.len),
                active.base..next,
                timestamp_ms,
                batch_max,
            );
        }
        Ok(None)
    }

    /// First offset still readable: the first stored one, raised to the start floor
    /// (never beyond the next offset).
    pub fn start_offset(&self) -> u64 {
        let st = lock(&self.state);
        let stored = st
            .sealed
            .iter()
            .find(|m| m.end > m.base)
            .map_or(st.active.base.min(st.next_offset), |m| m.base);
        stored
            .max(self.start_floor.load(Ordering::Acquire))
            .min(st.next_offset)
    }

    /// Sets the floor under [`Log::start_offset`] and reads (it only ever rises; the
    /// caller persists it). Segments below it are not deleted here.
    pub(crate) fn raise_start_floor(&self, offset: u64) {
        self.start_floor.fetch_max(offset, Ordering::AcqRel);
    }

    /// The start floor (0 if none was set).
    pub fn start_floor(&self) -> u64 {
        self.start_floor.load(Ordering::Acquire)
    }

    /// The size at which the active segment is rolled.
    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes.load(Ordering::Relaxed)
    }

    /// Changes the roll size: it applies at the next append that would exceed it (the
    /// active segment is not rewritten). Not persisted: the owner passes it again at open.
    ///
    /// # Errors
    /// `InvalidArgument` outside `SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX`.
    pub fn set_segment_bytes(&self, segment_bytes: u64) -> Result<()> {
        use crate::config::{SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN};
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&segment_bytes) {
            return Err(StorageError::InvalidArgument(format!(
                "segment_bytes must be in {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX}, got {segment_bytes}"
            )));
        }
        self.segment_bytes.store(segment_bytes, Ordering::Relaxed);
        Ok(())
    }

    /// The offset the next appended record will get.
    pub fn next_offset(&self) -> u64 {
        lock(&self.state).next_offset
    }

    /// The end of what [`Log::read`] returns now: `next_offset`, except for a stream's T2
    /// appends that are not on the file yet (the group-commit round writes them; readers
    /// do not). Wait for it to move with [`Log::readable`].
    pub fn readable_next(&self) -> u64 {
        let st = lock(&self.state);
        if self.follow_file.load(Ordering::Relaxed) {
            st.file_next
        } else {
            st.next_offset
        }
    }

    /// Writes a stream's pending T2 appends now (as a roll does), so that reads see everything
    /// appended: for the rare reader that must (a rebuild from the log's end). Readers at the
    /// head wait for the group-commit round instead ([`Log::readable`]).
    ///
    /// # Errors
    /// The write's failure (the log is failed then, its end back to the file's).
    pub fn make_readable(&self) -> Result<()> {
        let mut st = self.idle(lock(&self.state));
        if st.pending.is_empty() {
            return Ok(());
        }
        self.write_pending_locked(&mut st)
    }

    /// A wake-up for when [`Log::readable_next`] moves on (streams only: other logs never
    /// signal it). `enable()` it before checking `readable_next`, so that no move is missed.
    pub fn readable(&self) -> Notified<'_> {
        self.readable.notified()
    }

    /// Bytes of all segment files.
    pub fn size_bytes(&self) -> u64 {
        let st = lock(&self.state);
        st.sealed_bytes + st.active.len
    }

    /// Number of segments, the active one included.
    pub fn segment_count(&self) -> usize {
        lock(&self.state).sealed.len() + 1
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// The directory of this log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True once a fault made the log refuse writes.
    pub fn is_failed(&self) -> bool {
        self.health.is_failed()
    }

    pub(crate) fn health(&self) -> &Arc<LogHealth> {
        &self.health
    }

    pub(crate) fn ctx(&self) -> &Arc<Ctx> {
        &self.ctx
    }

    /// Sealed segments plus `(active base, next offset)`.
    /// The largest batch timestamp in the log and the offset range of the (last) segment
    /// holding it: `(max_ts, from, to)`, for a search by maximum timestamp that reads one
    /// segment instead of the log. `None` when the log is empty.
    pub fn max_timestamp_segment(&self) -> Option<(i64, u64, u64)> {
        let start = self.start_offset();
        let mut st = self.idle(lock(&self.state));
        if self.follow_file.load(Ordering::Relaxed) && !st.pending.is_empty() {
            // A stream's readers see what is on the file: the range returned must be readable
            // (a failure fails the log and takes its end back to the file's).
            let _ = self.write_pending_locked(&mut st);
        }
        let mut best: Option<(i64, u64, u64)> = None;
        for m in st
            .sealed
            .iter()
            .filter(|m| m.end > start && m.max_ts != i64::MIN)
        {
            if best.is_none_or(|(ts, _, _)| m.max_ts >= ts) {
                best = Some((m.max_ts, m.base.max(start), m.end));
            }
        }
        if st.next_offset > st.active.base.max(start)
            && st.active.max_ts != i64::MIN
            && best.is_none_or(|(ts, _, _)| st.active.max_ts >= ts)
        {
            best = Some((st.active.max_ts, st.active.base.max(start), st.next_offset));
        }
        best
    }

    pub(crate) fn segments(&self) -> (Arc<Vec<SegMeta>>, u64, u64) {
        let st = lock(&self.state);
        (st.sealed.clone(), st.active.base, st.next_offset)
    }

    /// Queues `file` for this log's next fsync round: a Commit for T2, ready otherwise.
    pub(crate) fn sync_file_at_tier(&self, file: Arc<dyn FileIo>) -> Commit {
        match self.durability {
            Durability::T2 => self
                .ctx
                .syncer
                .submit(file, &self.health, true)
                .unwrap_or_else(Commit::failed),
            _ => Commit::ready(),
        }
    }

    /// fdatasyncs the active segment now (graceful shutdown); a failure fails the log.
    pub fn sync(&self) -> Result<()> {
        self.health.check()?;
        self.finish_roll()?;
        let (file, path) = {
            let mut st = self.idle(lock(&self.state));
            self.write_pending_locked(&mut st)?;
            self.trim_padding(&mut st.active)?;
            (st.active.file.clone(), st.active.paths.seg.clone())
        };
        if let Err(e) = file.sync_data() {
            self.health.fail(format!("fdatasync failed: {e}"));
            return Err(StorageError::io(&path, e));
        }
        Counters::add(&self.ctx.counters.fsync_count, 1);
        Ok(())
    }

    /// Deletes a sealed segment (never the active one). Returns false if it was not there.
    pub(crate) fn delete_sealed(&self, base: u64) -> Result<bool> {
        {
            let mut st = lock(&self.state);
            assert!(base != st.active.base, "never delete the active segment");
            let Some(i) = st.sealed.iter().position(|m| m.base == base) else {
                return Ok(false);
            };
            let m = Arc::make_mut(&mut st.sealed).remove(i);
            st.sealed_bytes -= m.size;
            // Cached batches of the segment (and any before it) go with it.
            while st.tail.front().is_some_and(|b| b.base_offset < m.end) {
                self.drop_tail_front(&mut st);
            }
        }
        lock(&self.ctx.cache).remove((self.id, base));
        let p = SegPaths::new(&self.dir, base);
        remove_if_exists(&p.seg)?;
        sync_dir(&self.dir).at(&self.dir)?;
        remove_if_exists(&p.idx)?;
        remove_if_exists(&p.tix)?;
        Counters::add(&self.ctx.counters.segments_deleted, 1);
        tracing::debug!(dir = %self.dir.display(), base, "segment deleted");
        Ok(true)
    }
}

/// The index and time-index bytes of `entries`, each written with one `pwrite`.
fn encode_index(entries: &[IndexEntry]) -> (Vec<u8>, Vec<u8>) {
    let mut idx = Vec::with_capacity(entries.len() * IDX_ENTRY_LEN);
    let mut tix = Vec::with_capacity(entries.len() * TIX_ENTRY_LEN);
    for e in entries {
        idx.extend_from_slice(&format::encode_idx(e));
        tix.extend_from_slice(&format::encode_tix(e));
    }
    (idx, tix)
}

/// Writes the active segment's index entries from `from` on (one `pwrite` per file).
fn write_index(a: &Active, from: usize) -> Result<()> {
    let (idx, tix) = encode_index(&a.entries[from..]);
    a.idx
        .write_all_at(&idx, (from * IDX_ENTRY_LEN) as u64)
        .at(&a.paths.idx)?;
    a.tix
        .write_all_at(&tix, (from * TIX_ENTRY_LEN) as u64)
        .at(&a.paths.tix)
}

/// `x.seg` -> `x.seg.tmp`: a name that opening the log removes.
fn tmp_path(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

pub(crate) fn remove_if_exists(p: &Path) -> Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StorageError::io(p, e)),
        _ => Ok(()),
    }
}

struct Acc<'a> {
    out: &'a mut Vec<Batch>,
    bytes: usize,
    max_bytes: usize,
}

impl Acc<'_> {
    fn full(&self) -> bool {
        !self.out.is_empty() && self.bytes >= self.max_bytes
    }
}

/// The first batch from byte `pos` to `limit` with a timestamp >= `ts`. Batches outside the
/// segment's `offsets` are corrupt and skipped, as on reads.
fn scan_for_time(
    file: &dyn FileIo,
    path: &Path,
    (mut pos, limit): (u64, u64),
    offsets: std::ops::Range<u64>,
    ts: i64,
    batch_max: u32,
) -> Result<Option<u64>> {
    let mut sc = segment::Scanner::new(file, limit, batch_max);
    let mut expected = offsets.start;
    while pos < limit {
        let probed = sc.probe(pos, expected).at(path)?;
        match probed.filter(|h| h.next_offset() <= offsets.end) {
            Some(h) if h.timestamp_ms >= ts => return Ok(Some(h.base_offset)),
            Some(h) => {
                expected = h.next_offset();
                pos += u64::from(h.len);
            }
            None => match sc.resync(pos, expected).at(path)? {
                Some(q) => pos = q,
                None => break,
            },
        }
    }
    Ok(None)
}

impl IntervalSync for Log {
    fn background_sync(&self) {
        if self.dirty.swap(false, Ordering::Relaxed) && !self.health.is_failed() {
            let _ = self.sync();
        }
    }
}

impl WriteBehind for Log {
    fn write_pending(&self) {
        // A roll's durable half comes first: the round's fsyncs then confirm appends to the
        // new segment only once it has its name. A failure fails the log (its commits say so).
        let _ = self.finish_roll();
        let _ = self.write_pending_unlocked(true);
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        // Pending T2 appends whose submission failed (storage shutting down) still reach
        // the file; queued ones hold the log alive until their round has written them.
        let _ = self.finish_roll();
        let mut st = self.idle(lock(&self.state));
        if self.write_pending_locked(&mut st).is_ok() && !self.health.is_failed() {
            let _ = self.trim_padding(&mut st.active);
        }
        self.clear_tail(&mut st);
        drop(st);
        if self.tail_cache.load(Ordering::Relaxed) {
            self.ctx.tail_logs.fetch_sub(1, Ordering::Relaxed);
        }
        lock(&self.ctx.cache).remove_log(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::{FaultPlan, FaultyVfs};
    use crate::{LogOptions, Storage, StorageConfig};

    fn cfg() -> StorageConfig {
        StorageConfig {
            segment_bytes: 4096,
            index_interval_bytes: 256,
            ..Default::default()
        }
    }

    /// `cfg()` with segments of `segment_bytes`.
    fn cfg_segments(segment_bytes: u64) -> StorageConfig {
        StorageConfig {
            segment_bytes,
            ..cfg()
        }
    }

    /// Options of a T2 log.
    fn t2() -> LogOptions {
        LogOptions {
            durability: Some(Durability::T2),
            segment_bytes: None,
        }
    }

    fn recs(n: usize, tag: u64) -> Vec<Bytes> {
        (0..n)
            .map(|i| Bytes::from(format!("rec-{tag}-{i}")))
            .collect()
    }

    fn all(log: &Log) -> Vec<(u64, Bytes)> {
        let mut out = Vec::new();
        let mut from = 0;
        loop {
            let b = log.read(from, 1000).unwrap();
            if b.is_empty() {
                return out;
            }
            for batch in &b {
                for (o, r) in batch.records() {
                    if o >= from {
                        out.push((o, r));
                    }
                }
                from = from.max(batch.next_offset());
            }
        }
    }

    #[test]
    fn append_read_roll_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut expect = Vec::new();
        {
            let s = Storage::open(dir.path(), cfg()).unwrap();
            let log = s.open_log("logs", "a/b", LogOptions::default()).unwrap();
            for i in 0..200u64 {
                let r = recs(3, i);
                let a = log.append(&r, i as i64 * 10).unwrap();
                assert_eq!(a.base_offset, i * 3);
                assert_eq!(a.next_offset, i * 3 + 3);
                a.commit.wait().unwrap();
                expect.extend(
                    r.into_iter()
                        .enumerate()
                        .map(|(j, b)| (i * 3 + j as u64, b)),
                );
            }
            assert!(log.segment_count() > 3, "rolled");
            assert_eq!(all(&log), expect);
            // Reads from the middle start at the batch holding the offset.
            let b = log.read(301, 1).unwrap();
            assert_eq!(b[0].base_offset, 300);
            assert_eq!(b.len(), 1);
            assert_eq!(log.offset_for_timestamp(0).unwrap(), Some(0));
            assert_eq!(log.offset_for_timestamp(995).unwrap(), Some(300));
            assert_eq!(log.offset_for_timestamp(1990).unwrap(), Some(597));
            assert_eq!(log.offset_for_timestamp(1991).unwrap(), None);
            assert!(s.metrics().fsync_count > 0);
        }
        let s = Storage::open(dir.path(), cfg()).unwrap();
        let log = s.open_log("logs", "a/b", LogOptions::default()).unwrap();
        assert_eq!(log.next_offset(), 600);
        assert_eq!(all(&log), expect);
        assert_eq!(log.offset_for_timestamp(995).unwrap(), Some(300));
        let a = log.append(&recs(1, 999), 5).unwrap();
        assert_eq!(a.base_offset, 600);
        assert_eq!(s.list_logs("logs").unwrap(), vec!["a/b".to_string()]);
    }

    /// Files that count the `fdatasync`s made on one thread (the test's, which appends), and
    /// the writes through direct handles made on it; direct writes stop at the file position
    /// `direct_end_max` with ENOSPC (a disk with no room beyond it), after writing what fits.
    #[derive(Debug)]
    struct SyncWatch {
        thread: std::thread::ThreadId,
        on_thread: AtomicU64,
        elsewhere: AtomicU64,
        direct_on_thread: AtomicU64,
        direct_end_max: AtomicU64,
        /// Direct writes made through the writing thread's staging buffer (it is borrowed
        /// during the write), and out of the pending buffer itself.
        direct_staged: AtomicU64,
        direct_in_place: AtomicU64,
    }

    impl SyncWatch {
        /// Watches the calling thread.
        fn here() -> Arc<SyncWatch> {
            Arc::new(SyncWatch {
                thread: std::thread::current().id(),
                on_thread: AtomicU64::new(0),
                elsewhere: AtomicU64::new(0),
                direct_on_thread: AtomicU64::new(0),
                direct_end_max: AtomicU64::new(u64::MAX),
                direct_staged: AtomicU64::new(0),
                direct_in_place: AtomicU64::new(0),
            })
        }
    }

    #[derive(Debug)]
    struct WatchedVfs(Arc<SyncWatch>);

    /// Appends `r` as one batch, waits for its commit and adds its records to `expect`.
    fn append_committed(log: &Log, r: Vec<Bytes>, expect: &mut Vec<(u64, Bytes)>) {
        let c = log.append(&r, 0).unwrap();
        c.commit.wait().unwrap();
        let base = c.base_offset;
        expect.extend(r.into_iter().enumerate().map(|(j, b)| (base + j as u64, b)));
    }

    /// A T2 log `name` that writes directly, in a storage of `segment_bytes` segments on a
    /// `WatchedVfs` watching the calling thread.
    fn watched_direct_log(
        dir: &Path,
        segment_bytes: u64,
        name: &str,
    ) -> (Arc<SyncWatch>, Arc<Storage>, Arc<Log>) {
        let watch = SyncWatch::here();
        let vfs = Arc::new(WatchedVfs(watch.clone()));
        let config = StorageConfig {
            segment_bytes,
            ..cfg()
        };
        let s = Storage::open_with_vfs(dir, config, vfs).unwrap();
        let opts = t2();
        let log = s.open_log("logs", name, opts).unwrap();
        assert!(lock(&log.state).active.direct.is_some(), "direct I/O here");
        (watch, s, log)
    }

    /// A watched file; `direct` for a direct-write handle.
    #[derive(Debug)]
    struct WatchedFile {
        inner: Arc<dyn FileIo>,
        watch: Arc<SyncWatch>,
        direct: bool,
    }

    impl crate::vfs::Vfs for WatchedVfs {
        fn open(&self, path: &Path, create: bool) -> std::io::Result<Arc<dyn FileIo>> {
            let inner = crate::vfs::StdVfs.open(path, create)?;
            let watch = self.0.clone();
            Ok(Arc::new(WatchedFile {
                inner,
                watch,
                direct: false,
            }))
        }
        fn open_direct(&self, path: &Path) -> std::io::Result<Option<Arc<dyn FileIo>>> {
            let d = crate::vfs::StdVfs.open_direct(path)?;
            Ok(d.map(|inner| {
                let watch = self.0.clone();
                Arc::new(WatchedFile {
                    inner,
                    watch,
                    direct: true,
                }) as Arc<dyn FileIo>
            }))
        }
    }

    impl FileIo for WatchedFile {
        fn read_at(&self, buf: &mut [u8], pos: u64) -> std::io::Result<usize> {
            self.inner.read_at(buf, pos)
        }
        fn write_at(&self, buf: &[u8], pos: u64) -> std::io::Result<usize> {
            if self.direct && std::thread::current().id() == self.watch.thread {
                self.watch.direct_on_thread.fetch_add(1, Ordering::SeqCst);
            }
            if self.direct {
                let staged = DIRECT_BUF.with(|v| v.try_borrow().is_err());
                let n = if staged {
                    &self.watch.direct_staged
                } else {
                    &self.watch.direct_in_place
                };
                n.fetch_add(1, Ordering::SeqCst);
            }
            let end_max = self.watch.direct_end_max.load(Ordering::SeqCst);
            if self.direct && pos + buf.len() as u64 > end_max {
                let fits = end_max.saturating_sub(pos) as usize;
                if fits == 0 {
                    return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
                }
                return self.inner.write_at(&buf[..fits], pos);
            }
            self.inner.write_at(buf, pos)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            let w = &self.watch;
            let n = if std::thread::current().id() == w.thread {
                &w.on_thread
            } else {
                &w.elsewhere
            };
            n.fetch_add(1, Ordering::SeqCst);
            self.inner.sync_data()
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.inner.set_len(len)
        }
        fn size(&self) -> std::io::Result<u64> {
            self.inner.size()
        }
    }

    /// Copies a log directory's files as they are now, as a crash would leave them.
    fn crash_image(from: &Path, to: &Path) {
        fs::create_dir_all(to).unwrap();
        for f in fs::read_dir(from).unwrap() {
            let f = f.unwrap().path();
            fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
        }
    }

    fn file_names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = walk(dir)
            .into_iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        v.sort();
        v
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn a_t2_roll_leaves_its_fsyncs_to_the_sync_thread() {
        let dir = tempfile::tempdir().unwrap();
        let watch = SyncWatch::here();
        let mut expect = Vec::new();
        {
            let vfs = Arc::new(WatchedVfs(watch.clone()));
            let s = Storage::open_with_vfs(dir.path(), cfg(), vfs).unwrap();
            let opts = t2();
            let log = s.open_log("logs", "t2", opts).unwrap();
            let before = watch.on_thread.load(Ordering::SeqCst);
            for i in 0..400u64 {
                let r = recs(4, i);
                let a = log.append(&r, 0).unwrap();
                a.commit.wait().unwrap();
                expect.extend(
                    r.into_iter()
                        .enumerate()
                        .map(|(j, b)| (i * 4 + j as u64, b)),
                );
                // Once confirmed, the new segment has its final name.
                assert!(
                    !file_names(dir.path()).iter().any(|n| n.ends_with(".tmp")),
                    "a confirmed append sits in a segment still named .tmp"
                );
            }
            assert!(log.segment_count() > 5, "rolled");
            assert_eq!(
                watch.on_thread.load(Ordering::SeqCst),
                before,
                "the appending thread made no fdatasync, rolls included"
            );
            // Three per roll (the sealed segment and its indexes), plus the rounds.
            assert!(watch.elsewhere.load(Ordering::SeqCst) > 3 * 5);
        }
        let s = Storage::open(dir.path(), cfg()).unwrap();
        let log = s.open_log("logs", "t2", LogOptions::default()).unwrap();
        assert_eq!(all(&log), expect);
    }

    #[test]
    fn with_direct_writes_a_large_append_leaves_the_write_to_the_round() {
        let dir = tempfile::tempdir().unwrap();
        let (watch, _s, log) = watched_direct_log(dir.path(), 16 << 20, "big");
        let big = Bytes::from(vec![7u8; 2 * EAGER_WRITE_BYTES]);
        for i in 0..4 {
            let a = log.append(std::slice::from_ref(&big), i).unwrap();
            a.commit.wait().unwrap();
        }
        assert_eq!(
            watch.direct_on_thread.load(Ordering::SeqCst),
            0,
            "the appending thread never waited for a direct write"
        );
        // Large rounds go out of the pending buffer itself, without a staging copy.
        assert_eq!(watch.direct_in_place.load(Ordering::SeqCst), 4);
        assert_eq!(watch.direct_staged.load(Ordering::SeqCst), 0);
        let got = all(&log);
        assert_eq!(got.len(), 4);
        assert!(got.iter().all(|(_, b)| b == &big));
        // And the file holds exactly that.
        drop(log);
        drop(_s);
        let s = Storage::open(dir.path(), cfg_segments(16 << 20)).unwrap();
        let log = s.open_log("logs", "big", t2()).unwrap();
        assert_eq!(all(&log), got);
    }

    #[test]
    fn small_direct_writes_land_on_zeros_written_ahead_and_large_ones_append() {
        let dir = tempfile::tempdir().unwrap();
        let (watch, _s, log) = watched_direct_log(dir.path(), 16 << 20, "z");
        let seg = dir.path().join("logs/z").join(format!("{:020}.seg", 0));
        let on_file = || fs::metadata(&seg).unwrap().len();
        let mut expect = Vec::new();
        let mut append = |r: Vec<Bytes>| append_committed(&log, r, &mut expect);
        append(recs(2, 1));
        let first = on_file();
        let size = log.size_bytes();
        assert!(first >= size + (64 << 10), "zeros ahead: {first} {size}");
        // The next small writes land on those zeros: the file keeps its size (and blocks).
        let staged = watch.direct_staged.load(Ordering::SeqCst);
        assert!(staged >= 1, "the zeros ahead do not fit the pending buffer");
        for i in 0..20 {
            append(recs(2, 10 + i));
            assert!(log.size_bytes() < first);
            assert_eq!(on_file(), first, "write {i} stayed within the zeros ahead");
        }
        // Writes onto the zeros need no more than their padding: they go out in place.
        assert_eq!(watch.direct_staged.load(Ordering::SeqCst), staged);
        assert!(watch.direct_in_place.load(Ordering::SeqCst) >= 20);
        // Once past them, a small write puts more ahead.
        while log.size_bytes() < first {
            append(recs(3, 7));
        }
        let second = on_file();
        assert!(second >= log.size_bytes() + (64 << 10));
        // A large write appends plainly: only its padding to a block follows it.
        append(vec![Bytes::from(vec![5u8; 3 << 20])]);
        let size = log.size_bytes();
        assert_eq!(on_file(), size.next_multiple_of(DIRECT_ALIGN as u64));
        // A roll right after a round that put zeros ahead: the sealed segment ends at its data.
        append(vec![Bytes::from(vec![6u8; 5000])]);
        let size = log.size_bytes();
        assert!(on_file() >= size + (64 << 10));
        log.set_segment_bytes(4096).unwrap();
        append(recs(1, 8));
        assert_eq!(log.segment_count(), 2);
        assert_eq!(on_file(), size, "the roll cut the zeros");
        assert_eq!(all(&log), expect);
    }

    #[test]
    fn only_a_rounds_write_puts_zeros_ahead_not_a_readers() {
        let dir = tempfile::tempdir().unwrap();
        let config = cfg_segments(16 << 20);
        let s = Storage::open(dir.path(), config).unwrap();
        let opts = t2();
        let log = s.open_log("logs", "r", opts).unwrap();
        assert!(lock(&log.state).active.direct.is_some(), "direct I/O here");
        let seg = dir.path().join("logs/r").join(format!("{:020}.seg", 0));
        // The sync thread's round starts with `finish_roll`: holding the roll job keeps the
        // round from writing, so the reader (the test, as `snapshot` does) writes first.
        let held = lock(&log.roll_job);
        let a = log.append(&recs(2, 1), 0).unwrap();
        {
            let mut st = log.idle(lock(&log.state));
            assert!(!st.pending.is_empty());
            log.write_pending_locked(&mut st).unwrap();
            let size = st.active.written;
            assert_eq!(
                fs::metadata(&seg).unwrap().len(),
                size.next_multiple_of(DIRECT_ALIGN as u64),
                "a reader's write puts no zeros ahead"
            );
        }
        drop(held);
        a.commit.wait().unwrap();
        // The round's own write, past the file's end, does.
        let b = log.append(&[Bytes::from(vec![3u8; 5000])], 0).unwrap();
        b.commit.wait().unwrap();
        assert!(fs::metadata(&seg).unwrap().len() >= log.size_bytes() + (64 << 10));
        assert_eq!(all(&log).len(), 3);
    }

    #[test]
    fn a_disk_without_room_for_the_zeros_ahead_still_takes_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let (watch, s, log) = watched_direct_log(dir.path(), 1 << 20, "full");
        let seg = dir.path().join("logs/full").join(format!("{:020}.seg", 0));
        let on_file = || fs::metadata(&seg).unwrap().len();
        // Room for 32 KiB of the segment: the first round's zeros get part of the way.
        watch.direct_end_max.store(32 << 10, Ordering::SeqCst);
        let mut expect = Vec::new();
        let mut append = |r: Vec<Bytes>| append_committed(&log, r, &mut expect);
        append(recs(3, 0));
        let size = log.size_bytes();
        assert_eq!(
            on_file(),
            size.next_multiple_of(DIRECT_ALIGN as u64),
            "the zeros written before the disk filled up are cut off again"
        );
        // The disk has room again, but this segment tries no more zeros; its rounds past the
        // last block still go through, without any.
        watch.direct_end_max.store(u64::MAX, Ordering::SeqCst);
        for i in 1..4u64 {
            append(vec![Bytes::from(vec![i as u8; 5000])]);
            let size = log.size_bytes();
            assert_eq!(on_file(), size.next_multiple_of(DIRECT_ALIGN as u64));
        }
        assert_eq!(all(&log), expect);
        assert!(!log.health.is_failed());
        assert_eq!(s.metrics().append_errors, 0);
        let size = log.size_bytes();
        drop(log);
        assert_eq!(on_file(), size, "closing cuts the padding");
        drop(s);
        // Reopened, the data is all there, and a new round puts zeros ahead again.
        let config = cfg_segments(1 << 20);
        let s = Storage::open(dir.path(), config).unwrap();
        let opts = t2();
        let log = s.open_log("logs", "full", opts).unwrap();
        assert_eq!(all(&log), expect);
        assert_eq!(s.metrics().truncated_tail_bytes, 0);
        let c = log.append(&[Bytes::from(vec![9u8; 5000])], 0).unwrap();
        c.commit.wait().unwrap();
        assert!(on_file() >= log.size_bytes() + (64 << 10));
    }

    #[test]
    fn recovery_truncates_a_torn_write_followed_by_the_zeros_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let opts = t2;
        let s = Storage::open(&a, cfg()).unwrap();
        let log = s.open_log("logs", "t", opts()).unwrap();
        log.set_segment_bytes(1 << 20).unwrap();
        let mut expect = Vec::new();
        for i in 0..4u64 {
            let r = recs(2, i);
            let c = log.append(&r, 0).unwrap();
            c.commit.wait().unwrap();
            expect.extend(
                r.into_iter()
                    .enumerate()
                    .map(|(j, b)| (i * 2 + j as u64, b)),
            );
        }
        let size = log.size_bytes();
        let seg = |root: &Path| root.join("logs/t").join(format!("{:020}.seg", 0));
        // A crash image in which the next write was torn: half a batch's worth of bytes
        // after the data, then the zeros written ahead.
        crash_image(&a.join("logs/t"), &b.join("logs/t"));
        let mut bytes = fs::read(seg(&b)).unwrap();
        assert!(bytes.len() as u64 >= size + (64 << 10), "zeros ahead");
        bytes[size as usize..size as usize + 700].fill(0x5a);
        fs::write(seg(&b), &bytes).unwrap();
        drop(log);
        let s = Storage::open(&b, cfg()).unwrap();
        let log = s.open_log("logs", "t", opts()).unwrap();
        assert_eq!(all(&log), expect);
        assert_eq!(fs::metadata(seg(&b)).unwrap().len(), size);
        assert_eq!(
            s.metrics().truncated_tail_bytes,
            bytes.len() as u64 - size,
            "a torn tail, not padding"
        );
        assert_eq!(s.metrics().corrupt_batches_total, 0);
    }

    #[test]
    fn recovery_counts_longer_zeros_as_torn_and_keeps_batches_after_a_corrupt_one() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let opts = t2;
        let s = Storage::open(&a, cfg()).unwrap();
        let log = s.open_log("logs", "t", opts()).unwrap();
        log.set_segment_bytes(4 << 20).unwrap();
        let mut expect = Vec::new();
        let mut ends = Vec::new();
        for i in 0..6u64 {
            let r = vec![Bytes::from(vec![i as u8 + 1; 3000])];
            let c = log.append(&r, 0).unwrap();
            c.commit.wait().unwrap();
            expect.push((i, r[0].clone()));
            ends.push(log.size_bytes());
        }
        let size = log.size_bytes();
        let seg = |root: &Path| root.join("logs/t").join(format!("{:020}.seg", 0));
        let image = |name: &str, edit: &dyn Fn(&mut Vec<u8>)| -> PathBuf {
            let b = dir.path().join(name);
            crash_image(&a.join("logs/t"), &b.join("logs/t"));
            let mut bytes = fs::read(seg(&b)).unwrap();
            edit(&mut bytes);
            fs::write(seg(&b), &bytes).unwrap();
            // No index: recovery scans the whole segment.
            fs::remove_file(b.join("logs/t").join(format!("{:020}.idx", 0))).unwrap();
            b
        };
        // More zeros than direct writes ever put ahead: not theirs, so counted as torn.
        let long = image("long", &|b| b.resize(size as usize + (3 << 20), 0));
        // A batch in the middle damaged, the zeros ahead after the last one: the batches after
        // the damaged one are kept (the resync finds them before the zeros), the zeros cut.
        let third = ends[1] as usize + 40;
        let mid = image("mid", &|b| b[third] ^= 0xff);
        drop(log);
        drop(s);
        let s = Storage::open(&long, cfg()).unwrap();
        let log = s.open_log("logs", "t", opts()).unwrap();
        assert_eq!(all(&log), expect);
        assert_eq!(s.metrics().truncated_tail_bytes, 3 << 20);
        drop(log);
        drop(s);
        let s = Storage::open(&mid, cfg()).unwrap();
        let log = s.open_log("logs", "t", opts()).unwrap();
        let mut want = expect.clone();
        want.remove(2);
        assert_eq!(all(&log), want);
        // Counted by recovery, and again by the read that skips it.
        assert!(s.metrics().corrupt_batches_total >= 1);
        assert_eq!(
            s.metrics().truncated_tail_bytes,
            0,
            "zeros ahead are no torn tail"
        );
        assert_eq!(fs::metadata(seg(&mid)).unwrap().len(), size);
    }

    #[test]
    fn direct_writes_pad_to_a_block_and_recovery_cuts_the_padding_quietly() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let config = || cfg_segments(1 << 20);
        let opts = t2;
        let s = Storage::open(&a, config()).unwrap();
        let log = s.open_log("logs", "d", opts()).unwrap();
        assert!(
            lock(&log.state).active.direct.is_some(),
            "the test directory's file system does direct I/O"
        );
        let mut expect = Vec::new();
        // Batches of every size around a block, so that writes start and end anywhere in one.
        for i in 0..60u64 {
            let r: Vec<Bytes> = (0..3)
                .map(|j| {
                    Bytes::from(vec![
                        (i * 3 + j) as u8;
                        (i as usize * 97 + j as usize * 13) % 5000
                    ])
                })
                .collect();
            let c = log.append(&r, i as i64).unwrap();
            c.commit.wait().unwrap();
            expect.extend(
                r.into_iter()
                    .enumerate()
                    .map(|(j, b)| (i * 3 + j as u64, b)),
            );
            assert_eq!(all(&log)[..], expect[..], "read back after batch {i}");
        }
        let seg = |root: &Path| root.join("logs/d").join(format!("{:020}.seg", 0));
        let on_file = fs::metadata(seg(&a)).unwrap().len();
        let size = log.size_bytes();
        assert_eq!(on_file % DIRECT_ALIGN as u64, 0, "padded to a block");
        // Small writes put 64 KiB to 1 MiB of zeros ahead of the data.
        assert!(
            on_file - size > (64 << 10) - DIRECT_ALIGN as u64
                && on_file - size <= (DIRECT_ALIGN + crate::vfs::DIRECT_ZERO_AHEAD_MAX) as u64,
            "{on_file} {size}"
        );
        let bytes = fs::read(seg(&a)).unwrap();
        assert!(bytes[size as usize..].iter().all(|&b| b == 0));
        // A crash image: the log's files as they are now, padding included.
        crash_image(&a.join("logs/d"), &b.join("logs/d"));
        drop(log);
        assert_eq!(
            fs::metadata(seg(&a)).unwrap().len(),
            size,
            "closing cuts the padding"
        );
        let s = Storage::open(&b, config()).unwrap();
        let log = s.open_log("logs", "d", opts()).unwrap();
        assert_eq!(all(&log), expect);
        assert_eq!(
            s.metrics().truncated_tail_bytes,
            0,
            "padding is no torn tail"
        );
        assert_eq!(fs::metadata(seg(&b)).unwrap().len(), size);
        // Appends go on from the data's end, directly again.
        let c = log.append(&recs(2, 99), 0).unwrap();
        c.commit.wait().unwrap();
        expect.extend(
            recs(2, 99)
                .into_iter()
                .enumerate()
                .map(|(j, r)| (180 + j as u64, r)),
        );
        assert_eq!(all(&log), expect);
        drop(log);
        drop(s);
        let s = Storage::open(&b, config()).unwrap();
        let log = s.open_log("logs", "d", opts()).unwrap();
        assert_eq!(all(&log), expect);
    }

    #[test]
    fn a_failed_roll_fails_the_appends_to_the_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        // Only the index files fail to sync: the rounds (segment files) succeed, the roll's
        // durable half (which syncs the sealed segment's indexes) does not.
        let plan = FaultPlan::new(".idx");
        let opts = t2;
        let mut expect = Vec::new();
        {
            let vfs = Arc::new(FaultyVfs { plan: plan.clone() });
            let s = Storage::open_with_vfs(dir.path(), cfg(), vfs).unwrap();
            let log = s.open_log("logs", "t2", opts()).unwrap();
            plan.fail_sync.store(true, Ordering::SeqCst);
            let mut i = 0u64;
            let failed = loop {
                let r = recs(4, i);
                let rolls = log.segment_count();
                let a = log.append(&r, 0).unwrap();
                let res = a.commit.wait();
                if log.segment_count() == rolls {
                    res.unwrap();
                    expect.extend(
                        r.into_iter()
                            .enumerate()
                            .map(|(j, b)| (i * 4 + j as u64, b)),
                    );
                    i += 1;
                    continue;
                }
                break res;
            };
            assert!(
                matches!(failed, Err(StorageError::LogFailed { .. })),
                "{failed:?}"
            );
            assert!(log.append(&recs(1, 0), 0).is_err(), "the log stays failed");
            assert!(
                file_names(dir.path())
                    .iter()
                    .any(|n| n.ends_with(".seg.tmp")),
                "the new segment never got its name"
            );
        }
        // Reopened: the unnamed segment is gone with the append it held (never confirmed),
        // and the log goes on from the sealed segment's end.
        let s = Storage::open(dir.path(), cfg()).unwrap();
        let log = s.open_log("logs", "t2", opts()).unwrap();
        assert!(!file_names(dir.path()).iter().any(|n| n.ends_with(".tmp")));
        assert_eq!(all(&log), expect);
        assert_eq!(log.next_offset(), expect.len() as u64);
        let a = log.append(&recs(1, 7), 0).unwrap();
        a.commit.wait().unwrap();
        assert_eq!(a.base_offset, expect.len() as u64);
    }

    #[test]
    fn opaque_batches_mix_with_records_roll_and_recover() {
        let dir = tempfile::tempdir().unwrap();
        // (base offset, format, count, payload) of every batch written.
        let mut expect: Vec<(u64, u8, u32, Bytes)> = Vec::new();
        {
            let s = Storage::open(dir.path(), cfg()).unwrap();
            let log = s.open_log("logs", "mixed", LogOptions::default()).unwrap();
            assert!(matches!(
                log.append_opaque(0, 1, b"x", 0),
                Err(StorageError::InvalidArgument(_))
            ));
            assert!(log.append_opaque(7, 0, b"x", 0).is_err());
            assert!(log.append_opaque(7, 1, b"", 0).is_err());
            let x = Bytes::from_static(b"x");
            assert!(matches!(
                log.append_opaque_with(0, 1, &x, None, 0),
                Err(StorageError::InvalidArgument(_))
            ));
            assert!(log.append_opaque_with(7, 0, &x, None, 0).is_err());
            assert!(log
                .append_opaque_with(7, 1, &Bytes::new(), None, 0)
                .is_err());
            assert_eq!(log.next_offset(), 0, "nothing refused was stored");
            for i in 0..120u32 {
                let a = if i % 3 == 0 {
                    let r = recs(2, u64::from(i));
                    let a = log.append(&r, i64::from(i)).unwrap();
                    let mut framed = Vec::new();
                    for b in &r {
                        framed.extend_from_slice(&(b.len() as u32).to_le_bytes());
                        framed.extend_from_slice(b);
                    }
                    expect.push((a.base_offset, 0, 2, Bytes::from(framed)));
                    a
                } else {
                    let payload = Bytes::from(format!("opaque-{i}-").repeat(i as usize % 7 + 4));
                    let count = i % 5 + 1;
                    let a = log.append_opaque(9, count, &payload, i64::from(i)).unwrap();
                    assert_eq!(a.next_offset - a.base_offset, u64::from(count));
                    expect.push((a.base_offset, 9, count, payload));
                    a
                };
                a.commit.wait().unwrap();
            }
            assert!(log.segment_count() > 2, "rolled");
        }
        let s = Storage::open(dir.path(), cfg()).unwrap();
        let log = s.open_log("logs", "mixed", LogOptions::default()).unwrap();
        let (last_base, _, last_count, _) = expect[expect.len() - 1];
        assert_eq!(log.next_offset(), last_base + u64::from(last_count));
        let mut got = Vec::new();
        let mut from = 0;
        loop {
            let b = log.read(from, 1000).unwrap();
            if b.is_empty() {
                break;
            }
            for batch in b {
                from = batch.next_offset();
                if batch.is_opaque() {
                    assert_eq!(batch.records().count(), 0, "opaque batches have no records");
                } else {
                    assert_eq!(batch.records().count(), 2);
                }
                got.push((
                    batch.base_offset,
                    batch.format,
                    batch.record_count,
                    batch.payload().clone(),
                ));
            }
        }
        assert_eq!(got, expect);
        // A read from inside an opaque batch returns that whole batch.
        let (base, _, count, _) = expect[2];
        assert!(count > 1);
        let b = log.read(base + 1, 1).unwrap();
        assert_eq!(b[0].base_offset, base);
    }

    #[test]
    fn torn_tail_is_truncated_and_middle_corruption_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg_segments(1 << 20);
        let seg;
        {
            let s = Storage::open(dir.path(), c.clone()).unwrap();
            let log = s
                .open_log(
                    "logs",
                    "x",
                    LogOptions {
                        durability: Some(Durability::T1),
                        ..Default::default()
                    },
                )
                .unwrap();
            for i in 0..50u64 {
                let _ = log.append(&recs(2, i), 0).unwrap();
            }
            seg = SegPaths::new(log.dir(), 0).seg;
        }
        let len = fs::metadata(&seg).unwrap().len();
        // Tear the last batch.
        let f = fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - 3).unwrap();
        // Flip a bit in the 10th batch's body.
        let data = fs::read(&seg).unwrap();
        let mut pos = SEG_HEADER_LEN as usize;
        for _ in 0..10 {
            pos += u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
        }
        let mut d = data.clone();
        d[pos + 40] ^= 0x10;
        fs::write(&seg, &d).unwrap();
        let s = Storage::open(dir.path(), c).unwrap();
        let log = s.open_log("logs", "x", LogOptions::default()).unwrap();
        assert_eq!(log.next_offset(), 98, "torn last batch removed");
        let got = all(&log);
        let offs: Vec<u64> = got.iter().map(|x| x.0).collect();
        let want: Vec<u64> = (0..98).filter(|o| !(20..22).contains(o)).collect();
        assert_eq!(offs, want);
        let m = s.metrics();
        assert!(m.corrupt_batches_total >= 1);
        assert!(m.truncated_tail_bytes > 0);
        assert_eq!(log.append(&recs(1, 7), 0).unwrap().base_offset, 98);
    }

    #[test]
    fn damaged_or_missing_indexes_are_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let mut expect = Vec::new();
        let logdir;
        {
            let s = Storage::open(dir.path(), cfg()).unwrap();
            let log = s
                .open_log(
                    "logs",
                    "i",
                    LogOptions {
                        durability: Some(Durability::T1),
                        ..Default::default()
                    },
                )
                .unwrap();
            for i in 0..300u64 {
                let r = recs(1, i);
                let _ = log.append(&r, i as i64).unwrap();
                expect.push((i, r[0].clone()));
            }
            logdir = log.dir().to_path_buf();
        }
        for (n, e) in fs::read_dir(&logdir).unwrap().enumerate() {
            let p = e.unwrap().path();
            match p.extension().and_then(|x| x.to_str()) {
                Some("idx") if n % 2 == 0 => fs::remove_file(&p).unwrap(),
                Some("idx") | Some("tix") => {
                    let mut d = fs::read(&p).unwrap();
                    if !d.is_empty() {
                        let k = d.len() / 2;
                        d[k] ^= 0xff;
                        fs::write(&p, d).unwrap();
                    }
                }
                _ => {}
            }
        }
        let s = Storage::open(dir.path(), cfg()).unwrap();
        let log = s.open_log("logs", "i", LogOptions::default()).unwrap();
        assert_eq!(all(&log), expect);
        for o in [0u64, 57, 123, 299] {
            assert_eq!(log.read(o, 1).unwrap()[0].base_offset, o);
            assert_eq!(log.offset_for_timestamp(o as i64).unwrap(), Some(o));
        }
        assert!(s.metrics().index_rebuilds > 0);
    }

    #[test]
    fn limits_and_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(
            dir.path(),
            StorageConfig {
                batch_bytes_max: 100,
                ..cfg()
            },
        )
        .unwrap();
        let log = s.open_log("logs", "l", LogOptions::default()).unwrap();
        assert!(matches!(
            log.append(&[], 0),
            Err(StorageError::InvalidArgument(_))
        ));
        assert!(matches!(
            log.append(&[Bytes::from(vec![0u8; 100])], 0),
            Err(StorageError::TooLarge { .. })
        ));
        assert!(log.read(0, 10).unwrap().is_empty());
        assert!(matches!(
            Storage::open(dir.path(), cfg()),
            Err(StorageError::Locked { .. })
        ));
    }

    #[test]
    fn batches_larger_than_a_read_chunk_and_long_sequential_reads() {
        let dir = tempfile::tempdir().unwrap();
        let c = StorageConfig {
            segment_bytes: 8 << 20,
            ..StorageConfig::default()
        };
        let s = Storage::open(dir.path(), c).unwrap();
        let opts = LogOptions {
            durability: Some(Durability::T1),
            ..Default::default()
        };
        let log = s.open_log("logs", "big", opts).unwrap();
        // Small, bigger than READ_CHUNK_MIN, small, then enough for multi-MiB reads.
        let big = Bytes::from(vec![7u8; 3 * READ_CHUNK_MIN]);
        let _ = log.append(&recs(1, 0), 0).unwrap();
        let _ = log.append(std::slice::from_ref(&big), 0).unwrap();
        let _ = log.append(&recs(1, 2), 0).unwrap();
        let filler: Vec<Bytes> = (0..64).map(|i| Bytes::from(vec![i as u8; 1024])).collect();
        for _ in 0..100 {
            let _ = log.append(&filler, 0).unwrap();
        }
        // A small read that starts at the big batch returns it whole.
        let b = log.read(1, 1).unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].records().next(), Some((1, big)));
        // Large reads (read-ahead hints) return every record once, in order.
        let mut from = 0;
        let mut n = 0u64;
        loop {
            let batches = log.read(from, 2 << 20).unwrap();
            if batches.is_empty() {
                break;
            }
            for bt in &batches {
                for (o, _) in bt.records().filter(|(o, _)| *o >= from) {
                    assert_eq!(o, n);
                    n += 1;
                }
                from = bt.next_offset();
            }
        }
        assert_eq!(n, 3 + 6400);
    }

    #[test]
    fn t2_appends_are_written_behind_and_visible_to_readers_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), cfg()).unwrap();
        let log = s.open_log("logs", "wb", LogOptions::default()).unwrap();
        assert_eq!(log.durability(), Durability::T2);
        let seg = dir.path().join("logs/wb").join(format!("{:020}.seg", 0));
        // Not waiting for the commit: a reader writes the pending batch itself.
        let a = log.append(&recs(2, 0), 1).unwrap();
        assert_eq!(
            all(&log),
            vec![(0, recs(2, 0)[0].clone()), (1, recs(2, 0)[1].clone())]
        );
        a.commit.wait().unwrap();
        // Once the commit resolved, the batch is on the file (and was fsynced after that).
        let b = log.append(&recs(1, 1), 2).unwrap();
        b.commit.wait().unwrap();
        // Direct writes pad the file to a block boundary with zeros and write zeros ahead;
        // `sync` cuts them.
        let on_file = std::fs::metadata(&seg).unwrap().len();
        let size = log.size_bytes();
        assert!(
            on_file >= size
                && on_file - size <= (DIRECT_ALIGN + crate::vfs::DIRECT_ZERO_AHEAD_MAX) as u64,
            "{on_file} {size}"
        );
        log.sync().unwrap();
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), size);
        assert_eq!(all(&log).len(), 3);
    }

    #[test]
    fn t2_appends_write_what_is_pending_once_it_is_large_unless_a_write_is_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let (s, gate) = gated_storage(dir.path(), 16 << 20);
        let log = s.open_log("logs", "big", LogOptions::default()).unwrap();
        let seg = dir.path().join("logs/big").join(format!("{:020}.seg", 0));
        let on_file = || std::fs::metadata(&seg).unwrap().len();
        let big = |tag: u8| Bytes::from(vec![tag; EAGER_WRITE_BYTES]);
        // Nothing pending: the large batch is on the file when `append` returns.
        let a = log.append(&[big(1)], 1).unwrap();
        assert_eq!(on_file(), log.size_bytes());
        a.commit.wait().unwrap();
        // With the sync thread's writes held: a small batch is written behind, and so is a
        // large one appended while that write is in flight (`append` would block at the
        // gate if it wrote it).
        *gate.closed.lock().unwrap() = true;
        let b = log.append(&recs(1, 2), 2).unwrap();
        gate.wait_blocked();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|sc| {
            sc.spawn(|| tx.send(log.append(&[big(3)], 3)).unwrap());
            let c = rx.recv_timeout(std::time::Duration::from_secs(30));
            assert!(on_file() < log.size_bytes());
            *gate.closed.lock().unwrap() = false;
            gate.cv.notify_all();
            let c = c.expect("an append wrote while a write-behind was in flight");
            b.commit.wait().unwrap();
            c.unwrap().commit.wait().unwrap();
        });
        assert_eq!(on_file(), log.size_bytes());
        let want = vec![(0, big(1)), (1, recs(1, 2)[0].clone()), (2, big(3))];
        assert_eq!(all(&log), want);
        drop(log);
        drop(s);
        let s = Storage::open(dir.path(), cfg()).unwrap();
        let log = s.open_log("logs", "big", LogOptions::default()).unwrap();
        assert_eq!(all(&log), want);
    }

    #[test]
    fn t2_concurrent_writers_rolls_and_reopen_keep_every_record_once() {
        let dir = tempfile::tempdir().unwrap();
        let (writers, per_writer) = (8u64, 150u64);
        {
            let s = Storage::open(dir.path(), cfg()).unwrap();
            let log = s.open_log("logs", "cw", LogOptions::default()).unwrap();
            std::thread::scope(|sc| {
                for w in 0..writers {
                    let log = &log;
                    sc.spawn(move || {
                        // Several appends in flight per writer, then wait for them all.
                        let mut commits = Vec::new();
                        for i in 0..per_writer {
                            let a = log.append(&recs(1, w * 1000 + i), 0).unwrap();
                            commits.push(a.commit);
                            if commits.len() == 4 {
                                commits.drain(..).try_for_each(Commit::wait).unwrap();
                            }
                        }
                        commits.into_iter().try_for_each(Commit::wait).unwrap();
                    });
                }
            });
            assert!(log.segment_count() > 3, "rolled while appends were pending");
            assert_eq!(all(&log).len() as u64, writers * per_writer);
        }
        let s = Storage::open(dir.path(), cfg()).unwrap();
        let log = s.open_log("logs", "cw", LogOptions::default()).unwrap();
        let got = all(&log);
        assert_eq!(got.len() as u64, writers * per_writer);
        // Offsets are dense and every writer's records are there once, in its order.
        assert!(got.iter().enumerate().all(|(i, (o, _))| *o == i as u64));
        for w in 0..writers {
            // Records are "rec-{tag}-0" with tag = writer * 1000 + i.
            let tag = |b: &Bytes| -> u64 {
                let t = std::str::from_utf8(b).unwrap();
                t[4..t.rfind('-').unwrap()].parse().unwrap()
            };
            let mine: Vec<Bytes> = got
                .iter()
                .map(|(_, b)| b.clone())
                .filter(|b| tag(b) / 1000 == w)
                .collect();
            let want: Vec<Bytes> = (0..per_writer)
                .map(|i| recs(1, w * 1000 + i)[0].clone())
                .collect();
            assert_eq!(mine, want, "writer {w}");
        }
    }

    /// Segment files whose writes of more than a header block while the gate is closed.
    #[derive(Debug, Default)]
    struct Gate {
        closed: std::sync::Mutex<bool>,
        cv: std::sync::Condvar,
        /// Writes that reached the closed gate.
        blocked: std::sync::atomic::AtomicUsize,
    }

    impl Gate {
        /// Waits until a write is held at the closed gate.
        fn wait_blocked(&self) {
            let mut closed = self.closed.lock().unwrap();
            while self.blocked.load(Ordering::SeqCst) == 0 {
                closed = self.cv.wait(closed).unwrap();
            }
        }
    }

    #[derive(Debug)]
    struct GatedVfs(Arc<Gate>);

    #[derive(Debug)]
    struct GatedFile(Arc<dyn FileIo>, Arc<Gate>);

    impl crate::vfs::Vfs for GatedVfs {
        fn open(&self, path: &Path, create: bool) -> std::io::Result<Arc<dyn FileIo>> {
            let f = crate::vfs::StdVfs.open(path, create)?;
            Ok(if path.extension().is_some_and(|e| e == "seg") {
                Arc::new(GatedFile(f, self.0.clone()))
            } else {
                f
            })
        }
    }

    impl FileIo for GatedFile {
        fn read_at(&self, buf: &mut [u8], pos: u64) -> std::io::Result<usize> {
            self.0.read_at(buf, pos)
        }
        fn write_at(&self, buf: &[u8], pos: u64) -> std::io::Result<usize> {
            if pos > 0 {
                let mut closed = self.1.closed.lock().unwrap();
                if *closed {
                    self.1.blocked.fetch_add(1, Ordering::SeqCst);
                    self.1.cv.notify_all();
                }
                while *closed {
                    closed = self.1.cv.wait(closed).unwrap();
                }
            }
            self.0.write_at(buf, pos)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            self.0.sync_data()
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.0.set_len(len)
        }
        fn size(&self) -> std::io::Result<u64> {
            self.0.size()
        }
    }

    /// A storage at T2 whose segment writes can be held (`Gate`).
    fn gated_storage(dir: &Path, segment_bytes: u64) -> (Arc<Storage>, Arc<Gate>) {
        let gate = Arc::new(Gate::default());
        let config = StorageConfig {
            segment_bytes,
            ..cfg()
        };
        let s = Storage::open_with_vfs(dir, config, Arc::new(GatedVfs(gate.clone()))).unwrap();
        (s, gate)
    }

    #[test]
    fn the_tail_cache_serves_t2_appends_only_once_they_are_on_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (s, gate) = gated_storage(dir.path(), 1 << 20);
        let st = s
            .open_stream(
                "s",
                LogOptions {
                    durability: Some(Durability::T2),
                    ..Default::default()
                },
                crate::Retention::default(),
            )
            .unwrap();
        let log = st.log();
        let first = log
            .append_opaque_with(7, 2, &Bytes::from_static(b"first batch"), None, 5)
            .unwrap();
        first.commit.wait().unwrap();
        assert_eq!(log.read_tail(0, 1 << 20).map(|v| v.len()), Some(1));
        // The next write-behind is held: its batch is cached but not on the file.
        *gate.closed.lock().unwrap() = true;
        let second = log
            .append_opaque_with(7, 3, &Bytes::from_static(b"second batch"), None, 6)
            .unwrap();
        gate.wait_blocked();
        assert_eq!(lock(&log.state).tail.len(), 2);
        assert!(log.read_tail(2, 1 << 20).is_none(), "not on the file yet");
        let only_first = log.read_tail(0, 1 << 20).unwrap();
        assert_eq!(only_first.len(), 1, "what is on the file");
        assert_eq!(only_first[0].payload(), &Bytes::from_static(b"first batch"));
        *gate.closed.lock().unwrap() = false;
        gate.cv.notify_all();
        second.commit.wait().unwrap();
        let both = log.read_tail(0, 1 << 20).unwrap();
        assert_eq!(both.len(), 2);
        assert_eq!(both[1].payload(), &Bytes::from_static(b"second batch"));
        assert_eq!(both[1].base_offset, 2);
        // And the file agrees, once the cache is gone.
        drop(st);
        drop(s);
        let s = Storage::open(dir.path(), StorageConfig::default()).unwrap();
        let st = s
            .open_stream("s", LogOptions::default(), crate::Retention::default())
            .unwrap();
        assert_eq!(st.log().read(0, 1 << 20).unwrap(), both);
    }

    #[test]
    fn a_stream_reader_at_the_head_waits_for_the_round_and_writes_nothing() {
        use std::future::Future as _;
        let dir = tempfile::tempdir().unwrap();
        let (s, gate) = gated_storage(dir.path(), 1 << 20);
        let st = s
            .open_stream("s", t2(), crate::Retention::default())
            .unwrap();
        let log = st.log();
        let batch = |n: &'static [u8]| Bytes::from_static(n);
        let first = log
            .append_opaque_with(7, 2, &batch(b"first"), None, 5)
            .unwrap();
        first.commit.wait().unwrap();
        assert_eq!(log.readable_next(), 2);
        // The round's write of the second batch is held; the third stays pending.
        *gate.closed.lock().unwrap() = true;
        let second = log
            .append_opaque_with(7, 3, &batch(b"second"), None, 6)
            .unwrap();
        gate.wait_blocked();
        let third = log
            .append_opaque_with(7, 1, &batch(b"third"), None, 7)
            .unwrap();
        assert_eq!((log.readable_next(), log.next_offset()), (2, 6));
        let mut readable = std::pin::pin!(log.readable());
        readable.as_mut().enable();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(readable.as_mut().poll(&mut cx).is_pending());
        // Readers get what is on the file at once: they neither wait for the write in
        // flight nor write the pending batch themselves (the gate would hold that too).
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|sc| {
            sc.spawn(|| {
                let r = (
                    log.read(0, 1 << 20),
                    log.read(2, 1 << 20),
                    log.read(5, 1 << 20),
                );
                let _ = tx.send(r);
            });
            let (r0, r2, r5) = rx
                .recv_timeout(std::time::Duration::from_secs(30))
                .expect("a reader waited for the held write");
            let r0 = r0.unwrap();
            assert_eq!(r0.len(), 1);
            assert_eq!(r0[0].payload(), &batch(b"first"));
            assert!(
                r2.unwrap().is_empty(),
                "the second batch is not on the file yet"
            );
            assert!(r5.unwrap().is_empty(), "the third batch is only pending");
            assert_eq!(gate.blocked.load(Ordering::SeqCst), 1, "no reader write");
            assert!(readable.as_mut().poll(&mut cx).is_pending());
            *gate.closed.lock().unwrap() = false;
            gate.cv.notify_all();
        });
        second.commit.wait().unwrap();
        third.commit.wait().unwrap();
        // The rounds' writes woke the readers, and the cache serves the batches now.
        assert!(readable.as_mut().poll(&mut cx).is_ready());
        assert_eq!(log.readable_next(), 6);
        let hits = s.metrics().tail_cache_hits;
        let rest = log.read(2, 1 << 20).unwrap();
        assert_eq!(s.metrics().tail_cache_hits, hits + 1);
        assert!(log.read(6, 1 << 20).unwrap().is_empty());
        assert_eq!(
            s.metrics().tail_cache_hits,
            hits + 1,
            "a read at the end is no hit"
        );
        let payloads: Vec<&Bytes> = rest.iter().map(Batch::payload).collect();
        assert_eq!(payloads, [&batch(b"second"), &batch(b"third")]);
        assert_eq!(s.metrics().bytes_read, 0, "nothing read back from the file");
    }

    #[test]
    fn a_streams_timestamp_lookups_see_the_pending_batches() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), cfg()).unwrap();
        let st = s
            .open_stream("s", t2(), crate::Retention::default())
            .unwrap();
        let log = st.log();
        let old = log
            .append_opaque_with(7, 2, &Bytes::from_static(b"old"), None, 5)
            .unwrap();
        old.commit.wait().unwrap();
        // The sync thread's round starts with the roll job: holding it keeps the next batch
        // pending.
        let held = lock(&log.roll_job);
        let new = log
            .append_opaque_with(7, 3, &Bytes::from_static(b"new"), None, 100)
            .unwrap();
        assert_eq!((log.readable_next(), log.next_offset()), (2, 5));
        // A consumer starting at time 50 starts at the pending batch, not after it.
        assert_eq!(log.offset_for_timestamp(50).unwrap(), Some(2));
        assert_eq!(log.readable_next(), 5, "the lookup wrote it");
        let got = log.read(2, 1 << 20).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].payload(), &Bytes::from_static(b"new"));
        // The newest timestamp's range is readable too.
        let more = log
            .append_opaque_with(7, 1, &Bytes::from_static(b"newest"), None, 200)
            .unwrap();
        assert_eq!(log.max_timestamp_segment(), Some((200, 0, 6)));
        assert_eq!(log.readable_next(), 6);
        // And a rebuild from the log's end may ask for everything at once.
        let last = log
            .append_opaque_with(7, 1, &Bytes::from_static(b"last"), None, 300)
            .unwrap();
        assert_eq!(log.readable_next(), 6);
        log.make_readable().unwrap();
        assert_eq!(log.readable_next(), 7);
        drop(held);
        for c in [new, more, last] {
            c.commit.wait().unwrap();
        }
    }

    #[test]
    fn t2_appends_go_on_while_the_sync_thread_writes_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (s, gate) = gated_storage(dir.path(), 1 << 20);
        let log = s.open_log("logs", "gw", LogOptions::default()).unwrap();
        *gate.closed.lock().unwrap() = true;
        // The sync thread takes this batch and blocks in its `pwrite`.
        let first = log.append(&recs(3, 0), 1).unwrap();
        gate.wait_blocked();
        // Appends do not wait for that write: they go to a fresh pending buffer.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|sc| {
            sc.spawn(|| {
                let a = log.append(&recs(2, 1), 2);
                tx.send(a.map(|a| (a.base_offset, a.commit))).unwrap();
            });
            let second = rx.recv_timeout(std::time::Duration::from_secs(30));
            if second.is_err() {
                *gate.closed.lock().unwrap() = false;
                gate.cv.notify_all();
                panic!("an append waited for the write-behind of earlier batches");
            }
            let (base, commit) = second.unwrap().unwrap();
            assert_eq!(base, 3);
            assert!(!first.commit.is_complete());
            *gate.closed.lock().unwrap() = false;
            gate.cv.notify_all();
            first.commit.wait().unwrap();
            commit.wait().unwrap();
        });
        let want: Vec<(u64, Bytes)> = recs(3, 0)
            .into_iter()
            .chain(recs(2, 1))
            .enumerate()
            .map(|(i, b)| (i as u64, b))
            .collect();
        assert_eq!(all(&log), want);
        drop(log);
        drop(s);
        let s = Storage::open(dir.path(), cfg()).unwrap();
        let log = s.open_log("logs", "gw", LogOptions::default()).unwrap();
        assert_eq!(all(&log), want);
    }
}

#[cfg(test)]
mod interval_tests {
    use super::*;
    use crate::{LogOptions, Storage, StorageConfig};
    use std::time::{Duration, Instant};

    #[test]
    fn interval_logs_are_fsynced_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), StorageConfig::default()).unwrap();
        let opts = LogOptions {
            durability: Some(Durability::Interval(Duration::from_millis(10))),
            segment_bytes: None,
        };
        let log = s.open_log("logs", "iv", opts).unwrap();
        let before = s.metrics().fsync_count;
        let a = log.append(&[Bytes::from_static(b"x")], 0).unwrap();
        assert!(a.commit.is_complete(), "Interval appends complete at once");
        let t = Instant::now();
        while s.metrics().fsync_count == before {
            assert!(t.elapsed() < Duration::from_secs(5), "no background fsync");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(matches!(log.durability(), Durability::Interval(_)));
    }
}

#[cfg(test)]
mod tail_cache_tests {
    //! The tail cache of stream logs: reads it serves are those the file would serve, it
    //! stays within its budget, and a failed write-behind empties it.
    use super::*;
    use crate::fault::{FaultPlan, FaultyVfs};
    use crate::{LogOptions, Retention, Storage, StorageConfig, StreamLog};

    fn cfg(tail_cache_bytes: usize) -> StorageConfig {
        StorageConfig {
            segment_bytes: 64 << 10,
            index_interval_bytes: 256,
            tail_cache_bytes,
            ..Default::default()
        }
    }

    fn opts(d: Durability) -> LogOptions {
        LogOptions {
            durability: Some(d),
            ..Default::default()
        }
    }

    fn payload(i: u64, len: usize) -> Bytes {
        Bytes::from(
            (0..len)
                .map(|j| (i as usize * 31 + j) as u8)
                .collect::<Vec<u8>>(),
        )
    }

    /// Appends opaque batches and framed records, alternately, across several segments.
    fn fill(log: &Log, n: u64) -> Vec<Commit> {
        let mut commits = Vec::new();
        for i in 0..n {
            let a = if i % 2 == 0 {
                log.append_opaque_with(7, 3, &payload(i, 700), None, i as i64)
            } else {
                log.append(&[payload(i, 100), payload(i + 1, 50)], i as i64)
            };
            commits.push(a.unwrap().commit);
        }
        commits
    }

    fn read_all(log: &Log, from: u64, max: usize) -> Vec<Batch> {
        let mut out = Vec::new();
        let mut at = from;
        loop {
            let got = log.read(at, max).unwrap();
            let Some(last) = got.last() else {
                return out;
            };
            at = last.next_offset();
            out.extend(got);
        }
    }

    #[test]
    fn cached_reads_return_what_the_file_holds() {
        for d in [Durability::T1, Durability::T2] {
            let dir = tempfile::tempdir().unwrap();
            let (cached, commits) = {
                let s = Storage::open(dir.path(), cfg(128 << 10)).unwrap();
                let st = s.open_stream("s", opts(d), Retention::default()).unwrap();
                let commits = fill(st.log(), 300);
                let n = commits.len();
                for c in commits {
                    c.wait().unwrap();
                }
                let hits = s.metrics().tail_cache_hits;
                // From the start (not cached any more: the only stream's share is the
                // whole budget, 128 KiB), from the
                // middle of the cached run, and in small and large steps.
                let mut reads = Vec::new();
                for (from, max) in [(0, 1), (0, 1 << 20), (700, 1), (750, 5000), (899, 1)] {
                    reads.push(read_all(st.log(), from, max));
                }
                assert!(
                    s.metrics().tail_cache_hits > hits,
                    "{d:?}: reads at the head hit"
                );
                let share = s.config().tail_cache_bytes;
                let tail_bytes = lock(&st.log().state).tail_bytes;
                assert!(
                    tail_bytes > 0 && tail_bytes <= share,
                    "{d:?}: {tail_bytes} cached"
                );
                (reads, n)
            };
            assert_eq!(commits, 300);
            // The same reads from the file alone, after a reopen without the cache.
            let s = Storage::open(dir.path(), cfg(0)).unwrap();
            let st = s.open_stream("s", opts(d), Retention::default()).unwrap();
            let points = [(0, 1), (0, 1 << 20), (700, 1), (750, 5000), (899, 1)];
            for (i, (from, max)) in points.into_iter().enumerate() {
                assert_eq!(
                    read_all(st.log(), from, max),
                    cached[i],
                    "{d:?} from {from}"
                );
            }
            assert_eq!(s.metrics().tail_cache_hits, 0, "no cache, no hits");
            assert_eq!(cached[1].last().unwrap().next_offset(), 150 * 3 + 150 * 2);
        }
    }

    #[test]
    fn the_budget_holds_across_logs_and_is_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let budget = 64 << 10;
        let s = Storage::open(dir.path(), cfg(budget)).unwrap();
        let mut streams = Vec::new();
        let cached = |st: &Arc<StreamLog>| lock(&st.log().state).tail_bytes;
        for i in 0..12 {
            let st = s
                .open_stream(&format!("s{i}"), opts(Durability::T1), Retention::default())
                .unwrap();
            if i == 1 {
                // The first stream, alone, took more than an eighth.
                assert!(cached(&streams[0]) > budget / 2);
            }
            // Idle streams give back what is beyond their share when retention runs.
            for old in &streams {
                old.apply_retention(0).unwrap();
                assert!(cached(old) <= budget / (i + 1).min(8));
            }
            fill(st.log(), 200);
            let total = s.metrics().tail_cache_bytes as usize;
            assert!(total <= budget, "{total} cached with {} logs", i + 1);
            let share = budget / (i + 1).min(8);
            assert!(cached(&st) <= share, "{} > {share}", cached(&st));
            assert!(cached(&st) > 0 || i >= 8, "stream {i} got its share");
            streams.push(st);
        }

        let sum: usize = streams
            .iter()
            .map(|st| lock(&st.log().state).tail_bytes)
            .sum();
        assert_eq!(sum, s.metrics().tail_cache_bytes as usize);
        // The first eight took the budget; the later ones keep nothing but still read.
        assert_eq!(lock(&streams[11].log().state).tail_bytes, 0);
        assert_eq!(read_all(streams[11].log(), 0, 1 << 20).len(), 200);
        // A batch bigger than a log's share is not kept, and empties that log's cache.
        let big = streams[0]
            .log()
            .append_opaque_with(7, 1, &payload(9, budget / 8), None, 0)
            .unwrap();
        drop(big);
        assert_eq!(lock(&streams[0].log().state).tail_bytes, 0);
        drop(streams);
        assert_eq!(
            s.metrics().tail_cache_bytes as usize,
            0,
            "given back on close"
        );
        // Queues and plain logs keep nothing.
        let plain = s.open_log("logs", "p", opts(Durability::T1)).unwrap();
        fill(&plain, 10);
        assert_eq!(lock(&plain.state).tail_bytes, 0);
    }

    #[test]
    fn a_failed_write_behind_empties_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let plan = FaultPlan::new(".seg");
        let s = Storage::open_with_vfs(
            dir.path(),
            cfg(1 << 20),
            Arc::new(FaultyVfs { plan: plan.clone() }),
        )
        .unwrap();
        let st = s
            .open_stream("s", opts(Durability::T2), Retention::default())
            .unwrap();
        let log = st.log();
        for c in fill(log, 4) {
            c.wait().unwrap();
        }
        let before = read_all(log, 0, 1 << 20);
        assert_eq!(before.len(), 4);
        plan.write_budget.store(10, Ordering::SeqCst);
        let lost = log
            .append_opaque_with(7, 3, &payload(50, 400), None, 9)
            .unwrap();
        assert!(lost.commit.wait().is_err(), "the write-behind failed");
        assert_eq!(lock(&log.state).tail_bytes, 0, "emptied");
        assert_eq!(s.metrics().tail_cache_bytes as usize, 0);
        // Readers never see the lost batch, and still see the others (from the file).
        plan.write_budget.store(u64::MAX, Ordering::SeqCst);
        assert_eq!(read_all(log, 0, 1 << 20), before);
    }
}
