//! One broker-wide timer: queues ask to be woken at a time (TTL expiry, delayed
//! messages, retry backoff, queue expiry) and a single task wakes them.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

use crate::clock::now_ms;

/// Something the timer can wake.
pub(crate) trait TimerTarget: Send + Sync {
    /// Called from the timer task when a scheduled time has passed.
    fn on_timer(&self, now_ms: i64);
}

struct Entry {
    at_ms: i64,
    seq: u64,
    target: Weak<dyn TimerTarget>,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.at_ms, self.seq) == (o.at_ms, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at_ms, self.seq).cmp(&(o.at_ms, o.seq))
    }
}

#[derive(Default)]
struct State {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
}

/// The shared timer. Cheap to schedule; targets are held weakly so a deleted
/// queue is simply skipped.
#[derive(Default)]
pub(crate) struct Timer {
    state: Mutex<State>,
    notify: Notify,
}

impl Timer {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Timer::default())
    }

    /// Wakes `target` at or shortly after `at_ms`.
    pub(crate) fn schedule(&self, at_ms: i64, target: Weak<dyn TimerTarget>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let earliest = st.heap.peek().map(|e| e.0.at_ms);
        st.seq += 1;
        let seq = st.seq;
        st.heap.push(Reverse(Entry { at_ms, seq, target }));
        drop(st);
        if earliest.is_none_or(|e| at_ms < e) {
            self.notify.notify_one();
        }
    }

    fn take_due(&self, now: i64) -> (Vec<Weak<dyn TimerTarget>>, Option<i64>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut due = Vec::new();
        while st.heap.peek().is_some_and(|e| e.0.at_ms <= now) {
            if let Some(Reverse(e)) = st.heap.pop() {
                due.push(e.target);
            }
        }
        (due, st.heap.peek().map(|e| e.0.at_ms))
    }

    /// Runs until `shutdown` is notified. Spawned once per broker.
    pub(crate) async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            let now = now_ms();
            let (due, next) = self.take_due(now);
            for t in due {
                if let Some(t) = t.upgrade() {
                    t.on_timer(now);
                }
            }
            if self.take_due_peek(now_ms()) {
                continue;
            }
            let sleep = match next {
                Some(at) => std::time::Duration::from_millis((at - now_ms()).max(1) as u64),
                None => std::time::Duration::from_secs(3600),
            };
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.notify.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    fn take_due_peek(&self, now: i64) -> bool {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.heap.peek().is_some_and(|e| e.0.at_ms <= now)
    }
}
