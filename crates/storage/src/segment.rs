//! One segment on disk: file naming, the chunked scanner that verifies batches, resync past
//! corruption, tail recovery of the active segment, sealing, and index (re)building.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::IoContext;
use crate::format::{
    self, BatchHeader, IndexEntry, BATCH_HEADER_LEN, IDX_ENTRY_LEN, SEG_HEADER_LEN, TIX_ENTRY_LEN,
};
use crate::metrics::Counters;
use crate::vfs::{FileIo, Vfs, DIRECT_ALIGN};
use crate::Result;

/// Read window of the scanner.
const SCAN_WINDOW_BYTES: usize = 1 << 20;

/// Read size when checking that a region is all zeros.
///
/// (The zeros direct writes put ahead are at most `vfs::DIRECT_ZERO_AHEAD_MAX`.)
const ZERO_CHECK_CHUNK: usize = 64 << 10;

/// File names of one segment.
#[derive(Debug, Clone)]
pub(crate) struct SegPaths {
    pub seg: PathBuf,
    pub idx: PathBuf,
    pub tix: PathBuf,
    pub state: PathBuf,
}

impl SegPaths {
    pub fn new(dir: &Path, base: u64) -> SegPaths {
        let stem = format!("{base:020}");
        SegPaths {
            seg: dir.join(format!("{stem}.seg")),
            idx: dir.join(format!("{stem}.idx")),
            tix: dir.join(format!("{stem}.tix")),
            state: dir.join(format!("{stem}.state")),
        }
    }
}

/// Parses `00000000000000000042.seg`-style names: `(base, extension)`.
pub(crate) fn parse_file_name(name: &str) -> Option<(u64, &str)> {
    let (stem, ext) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stem.parse().ok()?, ext))
}

/// What is known about a sealed segment without loading its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegMeta {
    pub base: u64,
    /// One past the last offset stored in the segment.
    pub end: u64,
    /// File size in bytes.
    pub size: u64,
    /// Largest batch timestamp (i64::MIN if empty).
    pub max_ts: i64,
}

/// Reads a file through a sliding window so small batches cost no syscall each.
pub(crate) struct Scanner<'a> {
    file: &'a dyn FileIo,
    pub limit: u64,
    batch_max: u32,
    start: u64,
    data: Vec<u8>,
    /// `last_nonzero` of the whole file, once computed (the limit does not change).
    last_nonzero: Option<Option<u64>>,
}

impl<'a> Scanner<'a> {
    pub fn new(file: &'a dyn FileIo, limit: u64, batch_max: u32) -> Self {
        Scanner {
            file,
            limit,
            batch_max,
            start: 0,
            data: Vec::new(),
            last_nonzero: None,
        }
    }

    /// Bytes `pos..pos+len`, or `None` if past `limit`.
    fn get(&mut self, pos: u64, len: usize) -> std::io::Result<Option<&[u8]>> {
        let end = match pos.checked_add(len as u64) {
            Some(e) if e <= self.limit => e,
            _ => return Ok(None),
        };
        if pos < self.start || end > self.start + self.data.len() as u64 {
            let want = (len.max(SCAN_WINDOW_BYTES) as u64).min(self.limit - pos) as usize;
            self.data.resize(want, 0);
            self.start = pos;
            if let Err(e) = self.file.read_exact_at(&mut self.data, pos) {
                self.data.clear();
                return Err(e);
            }
        }
        let at = (pos - self.start) as usize;
        Ok(Some(&self.data[at..at + len]))
    }

    /// The verified batch at `pos` with base offset >= `min_offset`, if any.
    pub fn probe(&mut self, pos: u64, min_offset: u64) -> std::io::Result<Option<BatchHeader>> {
        let batch_max = self.batch_max;
        let h = match self.get(pos, BATCH_HEADER_LEN)? {
            Some(b) => match format::parse_header(b, batch_max) {
                Some(h) => h,
                None => return Ok(None),
            },
            None => return Ok(None),
        };
        if h.base_offset < min_offset {
            return Ok(None);
        }
        Ok(match self.get(pos, h.len as usize)? {
            Some(full) => format::verify_batch(full, batch_max).filter(|v| *v == h),
            None => None,
        })
    }

    /// The position of the last non-zero byte before `limit`, if any.
    fn find_last_nonzero(&self) -> std::io::Result<Option<u64>> {
        let mut b = vec![0u8; ZERO_CHECK_CHUNK];
        let mut end = self.limit;
        while end > 0 {
            let n = (end as usize).min(ZERO_CHECK_CHUNK);
            let at = end - n as u64;
            self.file.read_exact_at(&mut b[..n], at)?;
            if let Some(i) = b[..n].iter().rposition(|&x| x != 0) {
                return Ok(Some(at + i as u64));
            }
            end = at;
        }
        Ok(None)
    }

    /// After a bad batch at `pos`: the position of the next verifiable batch, trying the
    /// length claimed by the bad header first, then a byte-wise search. `None` = nothing
    /// valid follows (a torn tail).
    pub fn resync(&mut self, pos: u64, min_offset: u64) -> std::io::Result<Option<u64>> {
        let claimed = self
            .get(pos, BATCH_HEADER_LEN)?
            .and_then(|b| format::parse_header(b, u32::MAX))
            .map(|h| pos + u64::from(h.len));
        if let Some(q) = claimed {
            if self.probe(q, min_offset)?.is_some() {
                return Ok(Some(q));
            }
        }
        // No batch starts in the zeros at the end (direct writes' padding and preallocation,
        // or blocks a crash left unwritten): its length is never zero.
        let last = match self.last_nonzero {
            Some(l) => l,
            None => *self.last_nonzero.insert(self.find_last_nonzero()?),
        };
        let Some(last) = last.filter(|&l| l > pos) else {
            return Ok(None);
        };
        let mut q = pos + 1;
        while q <= last && q + BATCH_HEADER_LEN as u64 <= self.limit {
            if self.probe(q, min_offset)?.is_some() {
                return Ok(Some(q));
            }
            q += 1;
        }
        Ok(None)
    }
}

/// Outcome of scanning a segment region.
#[derive(Debug, Default)]
pub(crate) struct ScanResult {
    pub new_entries: Vec<IndexEntry>,
    pub end_pos: u64,
    pub next_offset: u64,
    pub max_ts: i64,
    pub last_index_pos: Option<u64>,
    /// Start of a torn/corrupt tail (nothing valid after it).
    pub torn_at: Option<u64>,
}

/// Where a scan starts and what is known up to there.
pub(crate) struct ScanStart {
    pub pos: u64,
    pub offset: u64,
    pub max_ts: i64,
    pub last_index_pos: Option<u64>,
}

/// Verifies batches from `start` to `limit`, building index entries every
/// `interval` bytes, skipping (and reporting) corrupt batches that have valid data after them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn scan(
    file: &dyn FileIo,
    path: &Path,
    base: u64,
    start: ScanStart,
    limit: u64,
    interval: u32,
    batch_max: u32,
    counters: &Counters,
) -> Result<ScanResult> {
    let mut sc = Scanner::new(file, limit, batch_max);
    let mut r = ScanResult {
        next_offset: start.offset,
        max_ts: start.max_ts,
        last_index_pos: start.last_index_pos,
        ..Default::default()
    };
    let mut pos = start.pos;
    while pos < limit {
        match sc.probe(pos, r.next_offset).at(path)? {
            Some(h) => {
                if r.last_index_pos
                    .is_none_or(|l| pos - l >= u64::from(interval))
                {
                    r.new_entries.push(IndexEntry {
                        rel: rel_of(base, h.base_offset),
                        pos: pos_u32(pos),
                        max_ts_before: r.max_ts,
                    });
                    r.last_index_pos = Some(pos);
                }
                r.max_ts = r.max_ts.max(h.timestamp_ms);
                r.next_offset = h.next_offset();
                pos += u64::from(h.len);
            }
            None => match sc.resync(pos, r.next_offset).at(path)? {
                Some(q) => {
                    Counters::add(&counters.corrupt_batches_total, 1);
                    tracing::warn!(file = %path.display(), position = pos, skipped_bytes = q - pos,
                        "corrupt batch in the middle of a segment: skipped");
                    pos = q;
                }
                None => {
                    r.torn_at = Some(pos);
                    break;
                }
            },
        }
    }
    r.end_pos = r.torn_at.unwrap_or(pos);
    Ok(r)
}

pub(crate) fn rel_of(base: u64, offset: u64) -> u32 {
    let rel = offset - base;
    assert!(
        rel <= u64::from(u32::MAX),
        "segment holds more than 2^32 offsets"
    );
    rel as u32
}

pub(crate) fn pos_u32(pos: u64) -> u32 {
    assert!(pos <= u64::from(u32::MAX), "segment position beyond 4 GiB");
    pos as u32
}

/// Rewrites both index files with `entries` (plus an optional seal).
pub(crate) fn write_index_files(
    idx: &dyn FileIo,
    tix: &dyn FileIo,
    paths: &SegPaths,
    entries: &[IndexEntry],
    seal: Option<IndexEntry>,
) -> Result<()> {
    let mut ib = Vec::with_capacity((entries.len() + 1) * IDX_ENTRY_LEN);
    let mut tb = Vec::with_capacity((entries.len() + 1) * TIX_ENTRY_LEN);
    for e in entries.iter().chain(seal.iter()) {
        ib.extend_from_slice(&format::encode_idx(e));
        tb.extend_from_slice(&format::encode_tix(e));
    }
    idx.set_len(0).at(&paths.idx)?;
    idx.write_all_at(&ib, 0).at(&paths.idx)?;
    tix.set_len(0).at(&paths.tix)?;
    tix.write_all_at(&tb, 0).at(&paths.tix)?;
    Ok(())
}

/// Reads the longest valid lockstep prefix of the index files of a segment of `seg_size`
/// bytes. Returns the entries and whether anything was discarded.
pub(crate) fn read_index_files(
    idx: &dyn FileIo,
    tix: &dyn FileIo,
    paths: &SegPaths,
    seg_size: u64,
) -> Result<(Vec<IndexEntry>, bool)> {
    let ilen = idx.size().at(&paths.idx)?;
    let tlen = tix.size().at(&paths.tix)?;
    // One entry per batch at most (a batch is at least 36 bytes), plus the seal.
    let max_entries = seg_size / (BATCH_HEADER_LEN as u64 + 4) + 2;
    let mut damaged = ilen % IDX_ENTRY_LEN as u64 != 0 || tlen % TIX_ENTRY_LEN as u64 != 0;
    let n = (ilen / IDX_ENTRY_LEN as u64)
        .min(tlen / TIX_ENTRY_LEN as u64)
        .min(max_entries);
    damaged |= n != ilen / IDX_ENTRY_LEN as u64 || n != tlen / TIX_ENTRY_LEN as u64;
    let mut ib = vec![0u8; n as usize * IDX_ENTRY_LEN];
    let mut tb = vec![0u8; n as usize * TIX_ENTRY_LEN];
    idx.read_exact_at(&mut ib, 0).at(&paths.idx)?;
    tix.read_exact_at(&mut tb, 0).at(&paths.tix)?;
    let mut out: Vec<IndexEntry> = Vec::with_capacity(n as usize);
    for (i, t) in ib
        .chunks_exact(IDX_ENTRY_LEN)
        .zip(tb.chunks_exact(TIX_ENTRY_LEN))
    {
        let ok = match (format::decode_index_pair(i, t), out.last()) {
            (Some(e), Some(p)) => {
                e.rel > p.rel
                    && e.pos > p.pos
                    && e.max_ts_before >= p.max_ts_before
                    && u64::from(e.pos) <= seg_size
            }
            (Some(e), None) => u64::from(e.pos) >= SEG_HEADER_LEN && u64::from(e.pos) <= seg_size,
            (None, _) => false,
        };
        match format::decode_index_pair(i, t) {
            Some(e) if ok => out.push(e),
            _ => {
                damaged = true;
                break;
            }
        }
    }
    Ok((out, damaged))
}

/// Opens (creating if needed) the index files of a segment.
pub(crate) fn open_index_files(
    vfs: &dyn Vfs,
    paths: &SegPaths,
) -> Result<(Arc<dyn FileIo>, Arc<dyn FileIo>)> {
    Ok((
        vfs.open(&paths.idx, true).at(&paths.idx)?,
        vfs.open(&paths.tix, true).at(&paths.tix)?,
    ))
}

/// Reads the header of a segment file; repairs it if missing or damaged (it is redundant with
/// the file name).
pub(crate) fn check_or_repair_header(file: &dyn FileIo, path: &Path, base: u64) -> Result<()> {
    let size = file.size().at(path)?;
    let mut h = [0u8; SEG_HEADER_LEN as usize];
    if size >= SEG_HEADER_LEN {
        file.read_exact_at(&mut h, 0).at(path)?;
        if format::check_segment_header(&h, base) {
            return Ok(());
        }
        tracing::warn!(file = %path.display(), "segment header damaged: rewritten from the file name");
    }
    file.write_all_at(&format::segment_header(base), 0)
        .at(path)?;
    Ok(())
}

/// Everything needed to continue appending to the last segment after recovery.
pub(crate) struct ActiveRecovery {
    pub file: Arc<dyn FileIo>,
    pub idx: Arc<dyn FileIo>,
    pub tix: Arc<dyn FileIo>,
    pub entries: Vec<IndexEntry>,
    pub len: u64,
    pub next_offset: u64,
    pub max_ts: i64,
    pub last_index_pos: Option<u64>,
}

/// Recovers the active segment: validates from the last index entry whose batch verifies
/// (so the work is proportional to the unindexed tail), skips corrupt batches that have
/// valid data after them, truncates a torn tail, and brings the index files up to date. A
/// tail of zeros that ends on a block boundary and is shorter than `zeros_max` is cut as the
/// padding (and zeros ahead) of direct writes, without counting it as torn.
pub(crate) fn recover_active(
    vfs: &dyn Vfs,
    paths: &SegPaths,
    base: u64,
    interval: u32,
    batch_max: u32,
    zeros_max: u64,
    counters: &Counters,
) -> Result<ActiveRecovery> {
    let file = vfs.open(&paths.seg, true).at(&paths.seg)?;
    check_or_repair_header(file.as_ref(), &paths.seg, base)?;
    let size = file.size().at(&paths.seg)?;
    let (idx, tix) = open_index_files(vfs, paths)?;
    let (mut entries, mut damaged) = read_index_files(idx.as_ref(), tix.as_ref(), paths, size)?;
    // Drop entries whose batch does not verify (a seal entry has no batch: dropped too).
    {
        let mut sc = Scanner::new(file.as_ref(), size, batch_max);
        while let Some(e) = entries.last() {
            let ok = sc
                .probe(u64::from(e.pos), base + u64::from(e.rel))
                .at(&paths.seg)?
                .is_some_and(|h| h.base_offset == base + u64::from(e.rel));
            if ok {
                break;
            }
            entries.pop();
            damaged = true;
        }
    }
    let start = match entries.last() {
        Some(e) => ScanStart {
            pos: u64::from(e.pos),
            offset: base + u64::from(e.rel),
            max_ts: e.max_ts_before,
            last_index_pos: None,
        },
        None => ScanStart {
            pos: SEG_HEADER_LEN,
            offset: base,
            max_ts: i64::MIN,
            last_index_pos: None,
        },
    };
    let had = entries.len();
    let skip_first = !entries.is_empty();
    let r = scan(
        file.as_ref(),
        &paths.seg,
        base,
        start,
        size,
        interval,
        batch_max,
        counters,
    )?;
    // The first scanned batch re-creates the entry we started from.
    let mut fresh = r.new_entries.into_iter();
    if skip_first {
        fresh.next();
    }
    let appended: Vec<IndexEntry> = fresh.collect();
    if let Some(t) = r.torn_at {
        if is_direct_padding(file.as_ref(), t, size, zeros_max).at(&paths.seg)? {
            // Zeros up to a block boundary: what direct writes pad the data with.
            tracing::debug!(file = %paths.seg.display(), position = t, bytes = size - t,
                "direct-write padding cut");
        } else {
            Counters::add(&counters.truncated_tail_bytes, size - t);
            tracing::warn!(file = %paths.seg.display(), position = t, bytes = size - t,
                "torn or corrupt tail truncated");
        }
        file.set_len(t).at(&paths.seg)?;
    }
    entries.extend(appended.iter().copied());
    if damaged || !appended.is_empty() || had != entries.len() {
        if damaged {
            Counters::add(&counters.index_rebuilds, 1);
        }
        write_index_files(idx.as_ref(), tix.as_ref(), paths, &entries, None)?;
    }
    Ok(ActiveRecovery {
        file,
        idx,
        tix,
        len: r.end_pos,
        next_offset: r.next_offset,
        max_ts: r.max_ts,
        last_index_pos: entries.last().map(|e| u64::from(e.pos)),
        entries,
    })
}

/// Whether `from..size` is what direct writes leave after the data: zeros up to a block
/// boundary, shorter than `zeros_max` (a block, plus [`DIRECT_ZERO_AHEAD_MAX`] for a log that
/// writes zeros ahead).
fn is_direct_padding(
    file: &dyn FileIo,
    from: u64,
    size: u64,
    zeros_max: u64,
) -> std::io::Result<bool> {
    if !size.is_multiple_of(DIRECT_ALIGN as u64) || size - from >= zeros_max {
        return Ok(false);
    }
    let mut b = vec![0u8; ((size - from) as usize).min(ZERO_CHECK_CHUNK)];
    let mut pos = from;
    while pos < size {
        let n = ((size - pos) as usize).min(b.len());
        file.read_exact_at(&mut b[..n], pos)?;
        if b[..n].iter().any(|&x| x != 0) {
            return Ok(false);
        }
        pos += n as u64;
    }
    Ok(true)
}

/// A sealed segment's open file and full index (without the seal).
#[derive(Debug)]
pub(crate) struct SealedHandle {
    pub file: Arc<dyn FileIo>,
    pub entries: Vec<IndexEntry>,
    pub meta: SegMeta,
}

/// Meta of a sealed segment from its seal entries, or by rebuilding its index if the seal
/// is missing or inconsistent with the file.
pub(crate) fn open_sealed_meta(
    vfs: &dyn Vfs,
    paths: &SegPaths,
    base: u64,
    interval: u32,
    batch_max: u32,
    counters: &Counters,
) -> Result<SegMeta> {
    let file = vfs.open(&paths.seg, false).at(&paths.seg)?;
    let size = file.size().at(&paths.seg)?;
    if let Some(meta) = read_seal(vfs, paths, base, size)? {
        return Ok(meta);
    }
    Ok(rebuild_sealed(
        vfs,
        paths,
        file.as_ref(),
        base,
        interval,
        batch_max,
        counters,
    )?
    .1)
}

fn read_seal(vfs: &dyn Vfs, paths: &SegPaths, base: u64, size: u64) -> Result<Option<SegMeta>> {
    let (Ok(idx), Ok(tix)) = (vfs.open(&paths.idx, false), vfs.open(&paths.tix, false)) else {
        return Ok(None);
    };
    let il = idx.size().at(&paths.idx)?;
    let tl = tix.size().at(&paths.tix)?;
    if il < IDX_ENTRY_LEN as u64
        || tl < TIX_ENTRY_LEN as u64
        || il % IDX_ENTRY_LEN as u64 != 0
        || tl % TIX_ENTRY_LEN as u64 != 0
    {
        return Ok(None);
    }
    let mut ib = [0u8; IDX_ENTRY_LEN];
    let mut tb = [0u8; TIX_ENTRY_LEN];
    idx.read_exact_at(&mut ib, il - IDX_ENTRY_LEN as u64)
        .at(&paths.idx)?;
    tix.read_exact_at(&mut tb, tl - TIX_ENTRY_LEN as u64)
        .at(&paths.tix)?;
    Ok(format::decode_index_pair(&ib, &tb)
        .filter(|e| u64::from(e.pos) == size)
        .map(|e| SegMeta {
            base,
            end: base + u64::from(e.rel),
            size,
            max_ts: e.max_ts_before,
        }))
}

/// Scans a whole sealed segment, truncates a torn tail, rewrites and fsyncs its index files.
pub(crate) fn rebuild_sealed(
    vfs: &dyn Vfs,
    paths: &SegPaths,
    file: &dyn FileIo,
    base: u64,
    interval: u32,
    batch_max: u32,
    counters: &Counters,
) -> Result<(Vec<IndexEntry>, SegMeta)> {
    tracing::warn!(file = %paths.seg.display(), "rebuilding index of sealed segment");
    Counters::add(&counters.index_rebuilds, 1);
    check_or_repair_header(file, &paths.seg, base)?;
    let size = file.size().at(&paths.seg)?;
    let start = ScanStart {
        pos: SEG_HEADER_LEN,
        offset: base,
        max_ts: i64::MIN,
        last_index_pos: None,
    };
    let r = scan(
        file, &paths.seg, base, start, size, interval, batch_max, counters,
    )?;
    if let Some(t) = r.torn_at {
        Counters::add(&counters.truncated_tail_bytes, size - t);
        tracing::warn!(file = %paths.seg.display(), position = t, "corrupt tail of sealed segment truncated");
        file.set_len(t).at(&paths.seg)?;
        file.sync_data().at(&paths.seg)?;
    }
    let meta = SegMeta {
        base,
        end: r.next_offset,
        size: r.end_pos,
        max_ts: r.max_ts,
    };
    let seal = IndexEntry {
        rel: rel_of(base, r.next_offset),
        pos: pos_u32(r.end_pos),
        max_ts_before: r.max_ts,
    };
    let (idx, tix) = open_index_files(vfs, paths)?;
    write_index_files(
        idx.as_ref(),
        tix.as_ref(),
        paths,
        &r.new_entries,
        Some(seal),
    )?;
    idx.sync_data().at(&paths.idx)?;
    tix.sync_data().at(&paths.tix)?;
    Ok((r.new_entries, meta))
}

/// Loads the full index of a sealed segment for reads (rebuilding it if damaged).
pub(crate) fn load_sealed(
    vfs: &dyn Vfs,
    paths: &SegPaths,
    meta: SegMeta,
    interval: u32,
    batch_max: u32,
    counters: &Counters,
) -> Result<SealedHandle> {
    let file = vfs.open(&paths.seg, false).at(&paths.seg)?;
    let size = file.size().at(&paths.seg)?;
    let loaded = match open_index_files(vfs, paths) {
        Ok((idx, tix)) => {
            let (mut entries, damaged) = read_index_files(idx.as_ref(), tix.as_ref(), paths, size)?;
            let seal = entries.pop();
            let good = !damaged
                && seal.is_some_and(|s| {
                    u64::from(s.pos) == size && base_plus(meta.base, s.rel) == meta.end
                })
                && entries.iter().all(|e| u64::from(e.pos) < size);
            good.then_some(entries)
        }
        Err(_) => None,
    };
    let (entries, meta) = match loaded {
        Some(e) if size == meta.size => (e, meta),
        _ => rebuild_sealed(
            vfs,
            paths,
            file.as_ref(),
            meta.base,
            interval,
            batch_max,
            counters,
        )?,
    };
    Ok(SealedHandle {
        file,
        entries,
        meta,
    })
}

fn base_plus(base: u64, rel: u32) -> u64 {
    base + u64::from(rel)
}

/// Index lookup: position of the last indexed batch starting at or before `offset`.
pub(crate) fn lookup_offset(entries: &[IndexEntry], base: u64, offset: u64) -> u64 {
    let i = entries.partition_point(|e| base + u64::from(e.rel) <= offset);
    if i == 0 {
        SEG_HEADER_LEN
    } else {
        u64::from(entries[i - 1].pos)
    }
}

/// Time lookup: a position before which every batch has timestamp < `ts`.
pub(crate) fn lookup_time(entries: &[IndexEntry], ts: i64) -> u64 {
    let i = entries.partition_point(|e| e.max_ts_before < ts);
    if i == 0 {
        SEG_HEADER_LEN
    } else {
        u64::from(entries[i - 1].pos)
    }
}
