//! Group commit: one sync thread per `Storage` that fdatasyncs every file with pending
//! writes as soon as the previous round returns, then resolves the `Commit`s of that round;
//! it also runs the periodic fsync of `Durability::Interval` logs.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::metrics::Counters;
use crate::vfs::FileIo;
use crate::{Result, StorageError};

/// Locks a mutex, ignoring poisoning: every critical section in this crate leaves its data
/// consistent before anything that can panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Health of one log, shared with the sync thread. Once failed, never healthy again
/// (after a failed fsync the kernel may have dropped the dirty pages: "fsyncgate").
#[derive(Debug)]
pub(crate) struct LogHealth {
    pub path: PathBuf,
    failed: AtomicBool,
    /// The failure was a full disk (a T2 write-behind that got ENOSPC): reported as `NoSpace`.
    no_space: AtomicBool,
    reason: Mutex<String>,
}

impl LogHealth {
    pub fn new(path: PathBuf) -> Arc<Self> {
        Arc::new(LogHealth {
            path,
            failed: AtomicBool::new(false),
            no_space: AtomicBool::new(false),
            reason: Mutex::new(String::new()),
        })
    }

    pub fn fail(&self, reason: String) {
        self.fail_with(reason, false);
    }

    /// Fails the log; with `no_space`, its error is `NoSpace` rather than `LogFailed`.
    pub fn fail_with(&self, reason: String, no_space: bool) {
        let mut r = lock(&self.reason);
        if !self.failed.load(Ordering::SeqCst) {
            tracing::error!(log = %self.path.display(), %reason, "log marked failed");
            *r = reason;
            self.no_space.store(no_space, Ordering::SeqCst);
            self.failed.store(true, Ordering::SeqCst);
        }
    }

    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    pub fn check(&self) -> Result<()> {
        if self.is_failed() {
            Err(self.error())
        } else {
            Ok(())
        }
    }

    pub fn error(&self) -> StorageError {
        if self.no_space.load(Ordering::SeqCst) {
            return StorageError::NoSpace {
                path: self.path.clone(),
            };
        }
        StorageError::LogFailed {
            path: self.path.clone(),
            reason: lock(&self.reason).clone(),
        }
    }
}

enum CommitState {
    Ready(Result<()>),
    Pending(Pending),
    Done,
}

/// A T2 commit waiting for group-commit round `round`. No per-commit allocation: it shares the
/// sync thread's round counter and wake-up lists, and its outcome is read from the log's health
/// once the round is done.
struct Pending {
    shared: Arc<Shared>,
    round: u64,
    health: Arc<LogHealth>,
    /// The waker last registered for this commit (to avoid registering it twice).
    waker: Option<Waker>,
}

impl Pending {
    fn is_done(&self) -> bool {
        self.shared.done.load(Ordering::Acquire) > self.round
    }

    /// The outcome once the round is done. A later fsync can succeed after an earlier one
    /// failed and dropped pages, so the log's health (sticky), not one fsync result, decides;
    /// a failure after the round only makes this conservative.
    fn outcome(&self) -> Result<()> {
        self.health.check()
    }
}

/// Resolves once the write it belongs to is durable at its log's tier: immediately for T1
/// and Interval, after the covering group-commit `fdatasync` for T2.
///
/// Use `.await` from async code or `wait()` from blocking code. Dropping it is harmless
/// (cancel-safe): the write still happens and becomes durable; only the notification is lost.
#[must_use = "a Commit says when the write is durable; wait for it or drop it explicitly"]
pub struct Commit(CommitState);

impl std::fmt::Debug for Commit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match &self.0 {
            CommitState::Ready(_) => "ready",
            CommitState::Pending(_) => "pending",
            CommitState::Done => "done",
        };
        f.debug_tuple("Commit").field(&s).finish()
    }
}

impl Commit {
    /// An already successful commit.
    pub fn ready() -> Commit {
        Commit(CommitState::Ready(Ok(())))
    }

    pub(crate) fn failed(e: StorageError) -> Commit {
        Commit(CommitState::Ready(Err(e)))
    }

    /// True once the outcome is known (`wait` would not block).
    pub fn is_complete(&self) -> bool {
        match &self.0 {
            CommitState::Pending(p) => p.is_done(),
            _ => true,
        }
    }

    /// Blocks the calling thread until durable.
    ///
    /// # Errors
    /// `LogFailed` if the covering fsync failed (the data must be considered lost),
    /// `Closed` if the storage shut down first.
    pub fn wait(mut self) -> Result<()> {
        match std::mem::replace(&mut self.0, CommitState::Done) {
            CommitState::Ready(r) => r,
            CommitState::Done => Ok(()),
            CommitState::Pending(p) => {
                p.shared.wait_round(p.round);
                p.outcome()
            }
        }
    }
}

impl Future for Commit {
    type Output = Result<()>;

    /// # Panics
    /// If polled again after it returned `Ready`.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = &mut self.0;
        let r = match this {
            CommitState::Ready(_) => match std::mem::replace(this, CommitState::Done) {
                CommitState::Ready(r) => r,
                _ => unreachable!("matched Ready above"),
            },
            CommitState::Pending(p) => {
                if !p.is_done() {
                    if !p.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        let w = cx.waker().clone();
                        lock(&p.shared.wakers[(p.round & 1) as usize]).push(w.clone());
                        p.waker = Some(w);
                    }
                    // The sync thread marks a round done before it takes that round's wakers,
                    // so either it sees the waker just pushed or this sees the round done.
                    if !p.is_done() {
                        return Poll::Pending;
                    }
                }
                p.outcome()
            }
            CommitState::Done => panic!("Commit polled after completion"),
        };
        *this = CommitState::Done;
        Poll::Ready(r)
    }
}

/// A log that the sync thread fsyncs periodically (`Durability::Interval`).
pub(crate) trait IntervalSync: Send + Sync {
    fn background_sync(&self);
}

/// A log whose T2 appends are written behind: the sync thread writes what they left pending
/// (one `pwrite` for all of a round's appends) right before it fdatasyncs the file.
pub(crate) trait WriteBehind: Send + Sync {
    /// Writes the pending bytes; a failure fails the log (its commits then report it).
    fn write_pending(&self);
}

/// A file with pending writes, queued once per round however many appends it received.
struct Item {
    file: Arc<dyn FileIo>,
    health: Arc<LogHealth>,
    /// Written before the fsync (T2 appends of a log).
    flush: Option<Arc<dyn WriteBehind>>,
}

struct IntervalEntry {
    target: Weak<dyn IntervalSync>,
    period: Duration,
    due: Instant,
}

#[derive(Default)]
struct State {
    /// Distinct files to fsync in the open round.
    queue: Vec<Item>,
    /// Id of the round now collecting submissions (rounds are numbered from 0, run in order).
    open_round: u64,
    /// Commits handed out for the open round.
    open_commits: u64,
    /// While the sync thread lingers: wake it once `open_commits` reaches this (0 = not).
    linger_target: u64,
    intervals: Vec<IntervalEntry>,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
    counters: Arc<Counters>,
    /// Rounds completed: a commit of round `r` is done once `done > r`.
    done: AtomicU64,
    /// Low 32 bits of `done`: the futex word threads blocked in `Commit::wait` sleep on.
    done_word: AtomicU32,
    /// Threads blocked (or about to block) on `done_word`.
    sleepers: AtomicU32,
    /// Wakers of tasks awaiting a commit, by round parity: only the round in flight and the
    /// open one can have waiters, so each round's list is taken whole when it completes.
    wakers: [Mutex<Vec<Waker>>; 2],
    #[cfg(not(target_os = "linux"))]
    fallback: (Mutex<()>, Condvar),
}

impl Shared {
    /// Blocks the calling thread until round `round` is done.
    fn wait_round(&self, round: u64) {
        if self.done.load(Ordering::Acquire) > round {
            return;
        }
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        loop {
            let word = self.done_word.load(Ordering::SeqCst);
            if self.done.load(Ordering::SeqCst) > round {
                break;
            }
            self.sleep_while(word);
        }
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
    }

    /// Marks `round` done and wakes everything waiting for it: one broadcast for all blocked
    /// threads, then each task's waker.
    fn finish_round(&self, round: u64, spare: &mut Vec<Waker>) {
        self.done.store(round + 1, Ordering::SeqCst);
        self.done_word.store((round + 1) as u32, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            self.wake_sleepers();
        }
        std::mem::swap(&mut *lock(&self.wakers[(round & 1) as usize]), spare);
        for w in spare.drain(..) {
            w.wake();
        }
    }

    #[cfg(target_os = "linux")]
    fn sleep_while(&self, word: u32) {
        // SAFETY: FUTEX_WAIT on a live, aligned u32 owned by `self`; it returns at once if the
        // word no longer equals `word`, and spurious returns are handled by the caller's loop.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.done_word.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                word,
                std::ptr::null::<libc::timespec>(),
            );
        }
    }

    #[cfg(target_os = "linux")]
    fn wake_sleepers(&self) {
        // SAFETY: FUTEX_WAKE on a live, aligned u32; wakes every thread sleeping on it.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.done_word.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                i32::MAX,
            );
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn sleep_while(&self, word: u32) {
        let g = lock(&self.fallback.0);
        if self.done_word.load(Ordering::SeqCst) == word {
            drop(self.fallback.1.wait(g));
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn wake_sleepers(&self) {
        drop(lock(&self.fallback.0));
        self.fallback.1.notify_all();
    }
}

/// Handle to the sync thread; cheap to clone.
#[derive(Clone)]
pub(crate) struct Syncer {
    shared: Arc<Shared>,
}

impl Syncer {
    pub fn start(counters: Arc<Counters>) -> std::io::Result<(Syncer, JoinHandle<()>)> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
            counters,
            done: AtomicU64::new(0),
            done_word: AtomicU32::new(0),
            sleepers: AtomicU32::new(0),
            wakers: [Mutex::new(Vec::new()), Mutex::new(Vec::new())],
            #[cfg(not(target_os = "linux"))]
            fallback: (Mutex::new(()), Condvar::new()),
        });
        let s2 = shared.clone();
        let h = thread::Builder::new()
            .name("ferrymq-sync".into())
            .spawn(move || run(&s2))?;
        Ok((Syncer { shared }, h))
    }

    /// Queues `file` for the next fsync round; with `want_commit`, returns a Commit resolved
    /// by that round. Allocates nothing once the queue has grown to the number of files.
    pub fn submit(
        &self,
        file: Arc<dyn FileIo>,
        health: &Arc<LogHealth>,
        want_commit: bool,
    ) -> Result<Commit> {
        self.submit_with(file, health, want_commit, None)
    }

    /// `submit`, plus a log whose pending writes the round makes before the fsync.
    pub fn submit_with(
        &self,
        file: Arc<dyn FileIo>,
        health: &Arc<LogHealth>,
        want_commit: bool,
        flush: Option<Arc<dyn WriteBehind>>,
    ) -> Result<Commit> {
        let round = {
            let mut st = lock(&self.shared.state);
            if st.shutdown {
                return Err(StorageError::Closed);
            }
            let was_empty = st.queue.is_empty();
            // Most rounds carry one or a few files: look for this one among the latest.
            let queued = st
                .queue
                .iter_mut()
                .rev()
                .take(8)
                .find(|i| Arc::ptr_eq(&i.file, &file));
            match queued {
                Some(item) => {
                    if item.flush.is_none() && flush.is_some() {
                        item.flush = flush;
                    }
                }
                None => st.queue.push(Item {
                    file,
                    health: health.clone(),
                    flush,
                }),
            }
            if want_commit {
                st.open_commits += 1;
            }
            if was_empty || (st.linger_target != 0 && st.open_commits == st.linger_target) {
                self.shared.cv.notify_one();
            }
            st.open_round
        };
        Ok(if want_commit {
            Commit(CommitState::Pending(Pending {
                shared: self.shared.clone(),
                round,
                health: health.clone(),
                waker: None,
            }))
        } else {
            Commit::ready()
        })
    }

    pub fn register_interval(&self, target: Weak<dyn IntervalSync>, period: Duration) {
        let mut st = lock(&self.shared.state);
        st.intervals.push(IntervalEntry {
            target,
            period,
            due: Instant::now() + period,
        });
        self.shared.cv.notify_one();
    }

    pub fn shutdown(&self) {
        lock(&self.shared.state).shutdown = true;
        self.shared.cv.notify_all();
    }
}

fn run(shared: &Shared) {
    let mut batch: Vec<Item> = Vec::new();
    let mut spare: Vec<Waker> = Vec::new();
    let mut round = (0u64, 0u64);
    // After a round, wait (at most `deadline`) for this many commits before the next fsync.
    let mut linger: Option<(u64, Instant)> = None;
    loop {
        let mut due_targets: Vec<Arc<dyn IntervalSync>> = Vec::new();
        let exit = {
            let mut st = lock(&shared.state);
            loop {
                if !st.queue.is_empty() {
                    if let Some((target, deadline)) = linger {
                        let now = Instant::now();
                        if st.open_commits < target && now < deadline && !st.shutdown {
                            st.linger_target = target;
                            st = shared
                                .cv
                                .wait_timeout(st, deadline - now)
                                .map(|r| r.0)
                                .unwrap_or_else(|p| p.into_inner().0);
                            continue;
                        }
                    }
                    st.linger_target = 0;
                    linger = None;
                    std::mem::swap(&mut st.queue, &mut batch);
                    round = (st.open_round, std::mem::take(&mut st.open_commits));
                    st.open_round += 1;
                    break;
                }
                if st.shutdown {
                    break;
                }
                st.intervals.retain(|e| e.target.strong_count() > 0);
                let now = Instant::now();
                let next_due = st.intervals.iter().map(|e| e.due).min();
                match next_due {
                    Some(d) if d <= now => break,
                    Some(d) => {
                        st = shared
                            .cv
                            .wait_timeout(st, d - now)
                            .map(|r| r.0)
                            .unwrap_or_else(|p| p.into_inner().0)
                    }
                    None => st = shared.cv.wait(st).unwrap_or_else(|p| p.into_inner()),
                }
            }
            let now = Instant::now();
            for e in st.intervals.iter_mut().filter(|e| e.due <= now) {
                e.due = now + e.period;
                if let Some(t) = e.target.upgrade() {
                    due_targets.push(t);
                }
            }
            st.shutdown && st.queue.is_empty() && batch.is_empty()
        };
        for t in due_targets {
            t.background_sync();
        }
        if !batch.is_empty() {
            let t0 = Instant::now();
            sync_round(shared, &mut batch);
            let took = t0.elapsed();
            Counters::add(&shared.counters.commits_completed, round.1);
            shared.finish_round(round.0, &mut spare);
            linger = linger_after(shared, round.1, took);
        }
        if exit {
            return;
        }
    }
}

/// Longest wait for writers to come back after a round, and its fraction of the last round.
const LINGER_MAX: Duration = Duration::from_millis(1);

/// Decides whether the next round should wait for the writers just released.
///
/// With many writers each waiting for its commit, the writers split into cohorts: those
/// released by the last round re-append while the next fsync already covers only the others,
/// so every round carries about half of them. When commits were released (`released`) and
/// others queued up meanwhile, the next round waits until three quarters of the commits that
/// were outstanding (`released` + queued) are queued again, or for at most the duration of
/// the last round (capped at `LINGER_MAX`), whichever comes first. Waiting for the last
/// stragglers too cost more than they bring: with 64 tokio-task writers of 1 KiB, waiting
/// for all of them gave 48 appends per fsync and 70 k appends/s, waiting for 3/4 (or 7/8)
/// gave 56 per fsync and 105-122 k appends/s (A/B alternated on the same disk, same minutes). A single writer never waits (nothing is
/// queued while its fsync runs), and the durability rule is unchanged: a commit still
/// resolves only after an fsync that started after its write.
fn linger_after(shared: &Shared, released: u64, took: Duration) -> Option<(u64, Instant)> {
    let queued = lock(&shared.state).open_commits;
    (released > 0 && queued > 0).then(|| {
        let target = ((released + queued) * 3).div_ceil(4).max(queued);
        (target, Instant::now() + took.min(LINGER_MAX))
    })
}

/// One group-commit round: fdatasync each distinct file once; a failure fails its log. The
/// caller then marks the round done, which resolves its commits.
fn sync_round(shared: &Shared, batch: &mut Vec<Item>) {
    Counters::add(&shared.counters.sync_rounds, 1);
    batch.sort_by_key(|i| Arc::as_ptr(&i.file) as *const () as usize);
    batch.dedup_by(|later, kept| {
        let same = Arc::ptr_eq(&later.file, &kept.file);
        if same && kept.flush.is_none() {
            kept.flush = later.flush.take();
        }
        same
    });
    // Write-behind first: every pending append of the round reaches the file before the
    // fsyncs, so each fsync covers them (the writes happen after the appends returned).
    for item in batch.iter() {
        if let Some(f) = &item.flush {
            f.write_pending();
        }
    }
    for item in batch.iter() {
        let t0 = Instant::now();
        let res = item.file.sync_data();
        shared.counters.record_fsync(t0.elapsed());
        if let Err(e) = res {
            Counters::add(&shared.counters.fsync_errors, 1);
            item.health.fail(format!("fdatasync failed: {e}"));
        }
    }
    batch.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::{StdVfs, Vfs};

    #[test]
    fn commits_resolve_after_sync_and_failures_stick() {
        let dir = tempfile::tempdir().unwrap();
        let counters = Arc::new(Counters::default());
        let (syncer, h) = Syncer::start(counters.clone()).unwrap();
        let f = StdVfs.open(&dir.path().join("f"), true).unwrap();
        let health = LogHealth::new(dir.path().to_path_buf());
        let commits: Vec<_> = (0..10)
            .map(|_| syncer.submit(f.clone(), &health, true).unwrap())
            .collect();
        for c in commits {
            c.wait().unwrap();
        }
        assert!(counters.snapshot().fsync_count >= 1);
        health.fail("test".into());
        let c = syncer.submit(f, &health, true).unwrap();
        assert!(matches!(c.wait(), Err(StorageError::LogFailed { .. })));
        syncer.shutdown();
        h.join().unwrap();
        let f2 = StdVfs.open(&dir.path().join("g"), true).unwrap();
        assert!(matches!(
            syncer.submit(f2, &health, true),
            Err(StorageError::Closed)
        ));
    }
}

#[cfg(test)]
mod future_tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;
    use std::task::Wake;

    struct CountWake(AtomicUsize);
    impl Wake for CountWake {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A file whose fdatasync blocks until the test lets it through.
    #[derive(Debug)]
    struct GatedFile(Mutex<mpsc::Receiver<()>>);
    impl FileIo for GatedFile {
        fn read_at(&self, _: &mut [u8], _: u64) -> std::io::Result<usize> {
            Ok(0)
        }
        fn write_at(&self, b: &[u8], _: u64) -> std::io::Result<usize> {
            Ok(b.len())
        }
        fn sync_data(&self) -> std::io::Result<()> {
            lock(&self.0).recv().map_err(std::io::Error::other)
        }
        fn set_len(&self, _: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn size(&self) -> std::io::Result<u64> {
            Ok(0)
        }
    }

    #[test]
    fn commit_is_a_future_woken_by_completion_and_cancel_safe() {
        let counters = Arc::new(Counters::default());
        let (syncer, h) = Syncer::start(counters.clone()).unwrap();
        let (tx, rx) = mpsc::channel();
        let f: Arc<dyn FileIo> = Arc::new(GatedFile(Mutex::new(rx)));
        let health = LogHealth::new(PathBuf::from("gated"));
        let mut c = syncer.submit(f.clone(), &health, true).unwrap();
        let w = Arc::new(CountWake(AtomicUsize::new(0)));
        let waker = Waker::from(w.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut c).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut c).poll(&mut cx).is_pending(), "re-poll");
        assert!(!c.is_complete());
        tx.send(()).unwrap();
        let t = Instant::now();
        while w.0.load(Ordering::SeqCst) == 0 {
            assert!(t.elapsed() < Duration::from_secs(5), "never woken");
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            w.0.load(Ordering::SeqCst),
            1,
            "one wake for a waker polled twice"
        );
        assert!(c.is_complete());
        assert!(matches!(
            Pin::new(&mut c).poll(&mut cx),
            Poll::Ready(Ok(()))
        ));
        // Dropping a pending Commit is harmless; completing its round later too.
        drop(syncer.submit(f.clone(), &health, true).unwrap());
        tx.send(()).unwrap();
        let c3 = syncer.submit(f, &health, true).unwrap();
        tx.send(()).unwrap();
        c3.wait().unwrap();
        assert!(Commit::ready().is_complete());
        assert_eq!(counters.snapshot().commits_completed, 3);
        syncer.shutdown();
        drop(tx);
        h.join().unwrap();
    }

    #[test]
    fn many_tasks_awaiting_commits_on_two_workers_all_complete() {
        let dir = tempfile::tempdir().unwrap();
        let counters = Arc::new(Counters::default());
        let (syncer, h) = Syncer::start(counters.clone()).unwrap();
        let f = crate::vfs::Vfs::open(&crate::vfs::StdVfs, &dir.path().join("f"), true).unwrap();
        let health = LogHealth::new(dir.path().to_path_buf());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        rt.block_on(async {
            let tasks: Vec<_> = (0..32)
                .map(|_| {
                    let (syncer, f, health) = (syncer.clone(), f.clone(), health.clone());
                    tokio::spawn(async move {
                        for _ in 0..50 {
                            syncer
                                .submit(f.clone(), &health, true)
                                .unwrap()
                                .await
                                .unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        });
        assert_eq!(counters.snapshot().commits_completed, 32 * 50);
        syncer.shutdown();
        h.join().unwrap();
    }

    #[test]
    fn many_blocked_threads_are_all_released_round_after_round() {
        let dir = tempfile::tempdir().unwrap();
        let counters = Arc::new(Counters::default());
        let (syncer, h) = Syncer::start(counters.clone()).unwrap();
        let f = crate::vfs::Vfs::open(&crate::vfs::StdVfs, &dir.path().join("f"), true).unwrap();
        let health = LogHealth::new(dir.path().to_path_buf());
        thread::scope(|sc| {
            for _ in 0..16 {
                sc.spawn(|| {
                    for _ in 0..50 {
                        syncer
                            .submit(f.clone(), &health, true)
                            .unwrap()
                            .wait()
                            .unwrap();
                    }
                });
            }
        });
        let m = counters.snapshot();
        assert_eq!(m.commits_completed, 800);
        assert!(m.sync_rounds <= 800);
        syncer.shutdown();
        h.join().unwrap();
    }
}
