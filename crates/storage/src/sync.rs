//! Group commit: one sync thread per `Storage` that fdatasyncs every file with pending
//! writes as soon as the previous round returns, then resolves the `Commit`s of that round;
//! it also runs the periodic fsync of `Durability::Interval` logs.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::thread::{self, JoinHandle, Thread};
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
    reason: Mutex<String>,
}

impl LogHealth {
    pub fn new(path: PathBuf) -> Arc<Self> {
        Arc::new(LogHealth {
            path,
            failed: AtomicBool::new(false),
            reason: Mutex::new(String::new()),
        })
    }

    pub fn fail(&self, reason: String) {
        let mut r = lock(&self.reason);
        if !self.failed.load(Ordering::SeqCst) {
            tracing::error!(log = %self.path.display(), %reason, "log marked failed");
            *r = reason;
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
        StorageError::LogFailed {
            path: self.path.clone(),
            reason: lock(&self.reason).clone(),
        }
    }
}

enum Waiter {
    None,
    Thread(Thread),
    Task(Waker),
}

struct SlotInner {
    result: Option<Result<()>>,
    waiter: Waiter,
}

/// Where the sync thread drops the outcome of one `Commit`.
pub(crate) struct CommitSlot {
    inner: Mutex<SlotInner>,
}

impl CommitSlot {
    pub fn new() -> Arc<Self> {
        Arc::new(CommitSlot {
            inner: Mutex::new(SlotInner {
                result: None,
                waiter: Waiter::None,
            }),
        })
    }

    pub fn complete(&self, r: Result<()>) {
        let waiter = {
            let mut g = lock(&self.inner);
            g.result = Some(r);
            std::mem::replace(&mut g.waiter, Waiter::None)
        };
        match waiter {
            Waiter::None => {}
            Waiter::Thread(t) => t.unpark(),
            Waiter::Task(w) => w.wake(),
        }
    }
}

enum CommitState {
    Ready(Result<()>),
    Pending(Arc<CommitSlot>),
    Done,
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

    pub(crate) fn pending(slot: Arc<CommitSlot>) -> Commit {
        Commit(CommitState::Pending(slot))
    }

    /// True once the outcome is known (`wait` would not block).
    pub fn is_complete(&self) -> bool {
        match &self.0 {
            CommitState::Pending(s) => lock(&s.inner).result.is_some(),
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
            CommitState::Pending(slot) => loop {
                {
                    let mut g = lock(&slot.inner);
                    if let Some(r) = g.result.take() {
                        return r;
                    }
                    g.waiter = Waiter::Thread(thread::current());
                }
                thread::park();
            },
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
            CommitState::Pending(slot) => {
                let mut g = lock(&slot.inner);
                match g.result.take() {
                    Some(r) => r,
                    None => {
                        match &g.waiter {
                            Waiter::Task(w) if w.will_wake(cx.waker()) => {}
                            _ => g.waiter = Waiter::Task(cx.waker().clone()),
                        }
                        return Poll::Pending;
                    }
                }
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

struct Item {
    file: Arc<dyn FileIo>,
    health: Arc<LogHealth>,
    slot: Option<Arc<CommitSlot>>,
}

struct IntervalEntry {
    target: Weak<dyn IntervalSync>,
    period: Duration,
    due: Instant,
}

#[derive(Default)]
struct State {
    queue: Vec<Item>,
    intervals: Vec<IntervalEntry>,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
    counters: Arc<Counters>,
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
        });
        let s2 = shared.clone();
        let h = thread::Builder::new()
            .name("ferrymq-sync".into())
            .spawn(move || run(&s2))?;
        Ok((Syncer { shared }, h))
    }

    /// Queues `file` for the next fsync round; with `want_commit`, returns a Commit resolved
    /// by that round.
    pub fn submit(
        &self,
        file: Arc<dyn FileIo>,
        health: &Arc<LogHealth>,
        want_commit: bool,
    ) -> Result<Commit> {
        let slot = want_commit.then(CommitSlot::new);
        {
            let mut st = lock(&self.shared.state);
            if st.shutdown {
                return Err(StorageError::Closed);
            }
            let was_empty = st.queue.is_empty();
            st.queue.push(Item {
                file,
                health: health.clone(),
                slot: slot.clone(),
            });
            if was_empty {
                self.shared.cv.notify_one();
            }
        }
        Ok(match slot {
            Some(s) => Commit::pending(s),
            None => Commit::ready(),
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
    loop {
        let mut due_targets: Vec<Arc<dyn IntervalSync>> = Vec::new();
        let exit = {
            let mut st = lock(&shared.state);
            loop {
                if !st.queue.is_empty() {
                    std::mem::swap(&mut st.queue, &mut batch);
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
            sync_round(shared, &mut batch);
        }
        if exit {
            return;
        }
    }
}

/// One group-commit round: fdatasync each distinct file once, then resolve all slots.
fn sync_round(shared: &Shared, batch: &mut Vec<Item>) {
    Counters::add(&shared.counters.sync_rounds, 1);
    batch.sort_by_key(|i| Arc::as_ptr(&i.file) as *const () as usize);
    let mut i = 0;
    while i < batch.len() {
        let key = Arc::as_ptr(&batch[i].file) as *const () as usize;
        let mut j = i;
        while j < batch.len() && Arc::as_ptr(&batch[j].file) as *const () as usize == key {
            j += 1;
        }
        let item = &batch[i];
        let t0 = Instant::now();
        let res = item.file.sync_data();
        shared.counters.record_fsync(t0.elapsed());
        if let Err(e) = res {
            Counters::add(&shared.counters.fsync_errors, 1);
            item.health.fail(format!("fdatasync failed: {e}"));
        }
        for it in &batch[i..j] {
            if let Some(slot) = &it.slot {
                // A later fsync can succeed after an earlier one failed and dropped pages,
                // so health (not just this fsync's result) decides.
                let r = if it.health.is_failed() {
                    Err(it.health.error())
                } else {
                    Ok(())
                };
                slot.complete(r);
                Counters::add(&shared.counters.commits_completed, 1);
            }
        }
        i = j;
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
    use std::task::Wake;

    struct CountWake(AtomicUsize);
    impl Wake for CountWake {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn commit_is_a_future_woken_by_completion_and_cancel_safe() {
        let slot = CommitSlot::new();
        let mut c = Commit::pending(slot.clone());
        let w = Arc::new(CountWake(AtomicUsize::new(0)));
        let waker = Waker::from(w.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut c).poll(&mut cx).is_pending());
        assert!(!c.is_complete());
        slot.complete(Ok(()));
        assert_eq!(w.0.load(Ordering::SeqCst), 1);
        assert!(matches!(
            Pin::new(&mut c).poll(&mut cx),
            Poll::Ready(Ok(()))
        ));
        // Dropping a pending Commit is harmless; completing it later too.
        let slot2 = CommitSlot::new();
        drop(Commit::pending(slot2.clone()));
        slot2.complete(Ok(()));
        assert!(Commit::ready().is_complete());
    }
}
