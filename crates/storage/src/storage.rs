//! `Storage`: one per data directory. Owns the directory lock, the group-commit thread, the
//! shared index cache and metrics; opens, lists and removes logs, queues and streams.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;

use crate::definitions::DefinitionsStore;
use crate::error::IoContext;
use crate::index::IndexCache;
use crate::log::Log;
use crate::metrics::{Counters, StorageMetrics};
use crate::name;
use crate::queue::QueueLog;
use crate::stream::StreamLog;
use crate::sync::{lock, Syncer};
use crate::vfs::{sync_dir, StdVfs, Vfs};
use crate::{LogOptions, Result, Retention, StorageConfig, StorageError};

/// Directory of queue logs under the root.
pub const QUEUES_DIR: &str = "queues";
/// Directory of stream logs under the root.
pub const STREAMS_DIR: &str = "streams";
const LOCK_FILE: &str = "LOCK";
const DELETING_PREFIX: &str = ".del-";

/// What every log shares with its `Storage`.
pub(crate) struct Ctx {
    pub root: PathBuf,
    pub config: StorageConfig,
    pub vfs: Arc<dyn Vfs>,
    pub counters: Arc<Counters>,
    pub syncer: Syncer,
    pub cache: Mutex<IndexCache>,
    pub defs_lock: Mutex<()>,
    /// Bytes in every log's tail cache together (at most `config.tail_cache_bytes`).
    pub tail_cached: std::sync::atomic::AtomicUsize,
    /// Logs with a tail cache (open stream logs): the budget's divisor, up to eight.
    pub tail_logs: std::sync::atomic::AtomicUsize,
    /// Held (flock) as long as any log of this storage is alive.
    _lock_file: File,
}

/// The storage engine of one data directory. `Send + Sync`; share it as `Arc<Storage>`.
pub struct Storage {
    ctx: Arc<Ctx>,
    sync_thread: Mutex<Option<JoinHandle<()>>>,
    logs: Mutex<HashMap<(String, String), Weak<Log>>>,
    queues: Mutex<HashMap<String, Weak<QueueLog>>>,
    streams: Mutex<HashMap<String, Weak<StreamLog>>>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("root", &self.ctx.root)
            .finish()
    }
}

impl Storage {
    /// Opens (creating if needed) the data directory `root`.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad config, `Locked` if another process (or another live
    /// `Storage` in this process) has it open, `Io` on directory errors.
    pub fn open(root: &Path, config: StorageConfig) -> Result<Arc<Storage>> {
        Self::open_with_vfs(root, config, Arc::new(StdVfs))
    }

    /// Like `open`, with a custom file layer (fault injection, simulation).
    pub fn open_with_vfs(
        root: &Path,
        config: StorageConfig,
        vfs: Arc<dyn Vfs>,
    ) -> Result<Arc<Storage>> {
        config.validate()?;
        fs::create_dir_all(root).at(root)?;
        let lock_path = root.join(LOCK_FILE);
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .at(&lock_path)?;
        // SAFETY: flock on a valid, owned file descriptor.
        if unsafe { libc::flock(lock_file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                StorageError::Locked {
                    path: root.to_path_buf(),
                }
            } else {
                StorageError::io(&lock_path, e)
            });
        }
        for kind in [QUEUES_DIR, STREAMS_DIR] {
            let d = root.join(kind);
            fs::create_dir_all(&d).at(&d)?;
            for ent in fs::read_dir(&d).at(&d)? {
                let ent = ent.at(&d)?;
                if ent
                    .file_name()
                    .to_string_lossy()
                    .starts_with(DELETING_PREFIX)
                {
                    fs::remove_dir_all(ent.path()).at(&ent.path())?;
                }
            }
        }
        let counters = Arc::new(Counters::default());
        let (syncer, handle) = Syncer::start(counters.clone()).at(root)?;
        let ctx = Arc::new(Ctx {
            root: root.to_path_buf(),
            cache: Mutex::new(IndexCache::new(config.index_cache_segments)),
            config,
            vfs,
            counters,
            syncer,
            defs_lock: Mutex::new(()),
            tail_cached: std::sync::atomic::AtomicUsize::new(0),
            tail_logs: std::sync::atomic::AtomicUsize::new(0),
            _lock_file: lock_file,
        });
        tracing::info!(root = %root.display(), "storage opened");
        Ok(Arc::new(Storage {
            ctx,
            sync_thread: Mutex::new(Some(handle)),
            logs: Mutex::new(HashMap::new()),
            queues: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
        }))
    }

    pub fn root(&self) -> &Path {
        &self.ctx.root
    }

    pub fn config(&self) -> &StorageConfig {
        &self.ctx.config
    }

    /// Directory of log `name` of `kind`, creating it (and the `NAME` file of hashed names).
    fn log_dir(&self, kind: &str, name: &str, create: bool) -> Result<PathBuf> {
        name::check_kind(kind)?;
        name::check_name(name)?;
        let (dn, hashed) = name::dir_name(name);
        let dir = self.ctx.root.join(kind).join(dn);
        assert!(
            dir.starts_with(&self.ctx.root),
            "log directory escapes the root"
        );
        if create {
            let fresh = !dir.exists();
            fs::create_dir_all(&dir).at(&dir)?;
            if hashed {
                let nf = dir.join(name::NAME_FILE);
                match fs::read(&nf) {
                    Ok(stored) if stored != name.as_bytes() => {
                        return Err(StorageError::InvalidName {
                            name: name.chars().take(64).collect(),
                            reason: "directory hash collision with another name",
                        })
                    }
                    Ok(_) => {}
                    Err(_) => {
                        let tmp = dir.join("NAME.tmp");
                        fs::write(&tmp, name.as_bytes()).at(&tmp)?;
                        File::open(&tmp).and_then(|f| f.sync_all()).at(&tmp)?;
                        fs::rename(&tmp, &nf).at(&nf)?;
                    }
                }
            }
            if fresh {
                sync_dir(&dir).at(&dir)?;
                let parent = self.ctx.root.join(kind);
                sync_dir(&parent).at(&parent)?;
            }
        }
        Ok(dir)
    }

    fn durability_of(&self, opts: &LogOptions) -> crate::Durability {
        opts.durability
            .unwrap_or(self.ctx.config.default_durability)
    }

    /// Opens (creating) a log. `kind` is a fixed directory such as "queues"; `name` any
    /// UTF-8 string of 1..=255 bytes. Opening a log that is already open returns the same
    /// `Arc` (its options stay those of the first open).
    pub fn open_log(&self, kind: &str, name: &str, opts: LogOptions) -> Result<Arc<Log>> {
        let mut logs = lock(&self.logs);
        let key = (kind.to_string(), name.to_string());
        if let Some(l) = logs.get(&key).and_then(Weak::upgrade) {
            return Ok(l);
        }
        let dir = self.log_dir(kind, name, true)?;
        let seg = match opts.segment_bytes {
            Some(s) => {
                let mut c = self.ctx.config.clone();
                c.segment_bytes = s;
                c.validate()?;
                s
            }
            None => self.ctx.config.segment_bytes,
        };
        let log = Log::open(self.ctx.clone(), dir, self.durability_of(&opts), seg)?;
        logs.retain(|_, w| w.strong_count() > 0);
        logs.insert(key, Arc::downgrade(&log));
        Ok(log)
    }

    /// Opens (creating) a queue: a log plus delivery state.
    pub fn open_queue(&self, name: &str, opts: LogOptions) -> Result<Arc<QueueLog>> {
        let mut qs = lock(&self.queues);
        if let Some(q) = qs.get(name).and_then(Weak::upgrade) {
            return Ok(q);
        }
        let log = self.open_log(QUEUES_DIR, name, opts)?;
        let q = QueueLog::open(log)?;
        qs.retain(|_, w| w.strong_count() > 0);
        qs.insert(name.to_string(), Arc::downgrade(&q));
        Ok(q)
    }

    /// Opens (creating) a stream: a log plus retention and consumer offsets.
    pub fn open_stream(
        &self,
        name: &str,
        opts: LogOptions,
        retention: Retention,
    ) -> Result<Arc<StreamLog>> {
        let mut ss = lock(&self.streams);
        if let Some(s) = ss.get(name).and_then(Weak::upgrade) {
            s.set_retention(retention);
            return Ok(s);
        }
        let log = self.open_log(STREAMS_DIR, name, opts)?;
        log.enable_stream_reads();
        let s = StreamLog::open(log, retention)?;
        ss.retain(|_, w| w.strong_count() > 0);
        ss.insert(name.to_string(), Arc::downgrade(&s));
        Ok(s)
    }

    fn remove(&self, kind: &str, name: &str) -> Result<()> {
        let key = (kind.to_string(), name.to_string());
        // Still open somewhere (a deleted queue whose last handle has not been dropped
        // yet): fence it, so that no later write through it can succeed, and forget it,
        // so that opening the name again starts a new, empty log.
        if let Some(log) = lock(&self.logs).remove(&key).and_then(|w| w.upgrade()) {
            log.health().fail(format!("{kind} '{name}' was removed"));
        }
        match kind {
            QUEUES_DIR => {
                lock(&self.queues).remove(name);
            }
            STREAMS_DIR => {
                lock(&self.streams).remove(name);
            }
            _ => {}
        }
        let dir = self.log_dir(kind, name, false)?;
        if !dir.exists() {
            return Ok(());
        }
        let (dn, _) = name::dir_name(name);
        let parent = self.ctx.root.join(kind);
        let doomed = parent.join(format!("{DELETING_PREFIX}{dn}"));
        // Rename first: a crash mid-removal never leaves a half log that looks valid.
        fs::rename(&dir, &doomed).at(&dir)?;
        sync_dir(&parent).at(&parent)?;
        fs::remove_dir_all(&doomed).at(&doomed)?;
        tracing::info!(kind, name, "log removed");
        Ok(())
    }

    /// Deletes a plain log's directory (one opened with [`Storage::open_log`]). A handle
    /// still open is fenced: its writes fail.
    pub fn remove_log(&self, kind: &str, name: &str) -> Result<()> {
        name::check_kind(kind)?;
        self.remove(kind, name)
    }

    /// Deletes a queue's directory. A handle still open is fenced: its writes fail.
    pub fn remove_queue(&self, name: &str) -> Result<()> {
        self.remove(QUEUES_DIR, name)
    }

    /// Deletes a stream's directory. A handle still open is fenced: its writes fail.
    pub fn remove_stream(&self, name: &str) -> Result<()> {
        self.remove(STREAMS_DIR, name)
    }

    /// Decoded names of the logs of `kind`, sorted.
    pub fn list_logs(&self, kind: &str) -> Result<Vec<String>> {
        name::check_kind(kind)?;
        let d = self.ctx.root.join(kind);
        let mut out = Vec::new();
        let rd = match fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(StorageError::io(&d, e)),
        };
        for ent in rd {
            let ent = ent.at(&d)?;
            let f = ent.file_name();
            let Some(f) = f.to_str() else { continue };
            if !name::is_log_dir_name(f) || !ent.path().is_dir() {
                continue;
            }
            let decoded = if f.contains('~') {
                let nf = ent.path().join(name::NAME_FILE);
                match fs::read(&nf) {
                    Ok(b) if b.len() <= name::NAME_BYTES_MAX => String::from_utf8(b).ok(),
                    _ => None,
                }
            } else {
                name::unescape(f)
            };
            match decoded {
                Some(n) => out.push(n),
                None => {
                    tracing::warn!(dir = %ent.path().display(), "cannot decode log directory name")
                }
            }
        }
        out.sort();
        Ok(out)
    }

    pub fn list_queues(&self) -> Result<Vec<String>> {
        self.list_logs(QUEUES_DIR)
    }

    pub fn list_streams(&self) -> Result<Vec<String>> {
        self.list_logs(STREAMS_DIR)
    }

    /// The definitions document (`definitions.json` under the root).
    pub fn definitions(&self) -> DefinitionsStore {
        DefinitionsStore::new(self.ctx.clone())
    }

    pub fn metrics(&self) -> StorageMetrics {
        let mut m = self.ctx.counters.snapshot();
        m.tail_cache_bytes = self
            .ctx
            .tail_cached
            .load(std::sync::atomic::Ordering::Relaxed) as u64;
        m
    }

    /// Free bytes available to unprivileged users on the root's file system (statvfs).
    pub fn disk_free_bytes(&self) -> Result<u64> {
        use std::os::unix::ffi::OsStrExt;
        let root = &self.ctx.root;
        let c = std::ffi::CString::new(root.as_os_str().as_bytes())
            .map_err(|_| StorageError::InvalidArgument("root path contains NUL".into()))?;
        // SAFETY: statvfs writes into a zeroed struct we own; `c` is a valid C string.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
            return Err(StorageError::io(root, std::io::Error::last_os_error()));
        }
        Ok((s.f_bavail as u64).saturating_mul(s.f_frsize as u64))
    }

    /// fdatasyncs every open log, queue journal and consumer-offset journal (shutdown).
    pub fn sync_all(&self) -> Result<()> {
        let logs: Vec<_> = lock(&self.logs)
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        let queues: Vec<_> = lock(&self.queues)
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        let streams: Vec<_> = lock(&self.streams)
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        let mut first_err = None;
        for r in logs
            .iter()
            .map(|l| l.sync())
            .chain(queues.iter().map(|q| q.sync_journals()))
            .chain(streams.iter().map(|s| s.sync_offsets()))
        {
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        self.ctx.syncer.shutdown();
        if let Some(h) = lock(&self.sync_thread).take() {
            let _ = h.join();
        }
    }
}
