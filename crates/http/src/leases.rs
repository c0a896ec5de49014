//! Leases: messages pulled over HTTP and not yet settled, by receipt handle, with their ack
//! deadline (SQS's visibility timeout).
//!
//! A pulled message sits in its queue's unacked set (`Queue::get(no_ack = false)`); the lease
//! says which queue and message id a receipt handle stands for and until when. One reaper
//! task sleeps until the earliest deadline (woken early when an earlier one is added) and
//! returns expired messages to their queue with `nack(requeue)` — so they are delivered again,
//! counting toward `x-delivery-limit`, exactly as an AMQP consumer's unacked messages are when
//! its channel closes.
//!
//! Architecture Invariant: a message id is in at most one lease, and a lease is removed
//! (under the lock) before its message is acked, nacked or returned, so each is settled once.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrymq_core::queue::Queue;
use tokio::sync::{watch, Notify};

/// Leases held at once, across all queues; a pull beyond it answers 429.
pub const LEASES_MAX: usize = 100_000;

/// One pulled message.
#[derive(Clone)]
pub struct Lease {
    pub vhost: String,
    pub queue_name: String,
    pub queue: Arc<Queue>,
    pub id: u64,
    pub deadline_ms: i64,
}

#[derive(Default)]
struct Map {
    by_handle: HashMap<String, Lease>,
    by_deadline: BTreeSet<(i64, String)>,
    seq: u64,
}

/// All leases, and the reaper's wake-up.
#[derive(Default)]
pub struct Leases {
    map: Mutex<Map>,
    wake: Notify,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, Map> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Room for `n` more leases.
    pub fn has_room(&self, n: usize) -> bool {
        self.lock().by_handle.len() + n <= LEASES_MAX
    }

    pub fn len(&self) -> usize {
        self.lock().by_handle.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a lease; returns its receipt handle.
    pub fn add(&self, lease: Lease) -> String {
        let deadline = lease.deadline_ms;
        let mut m = self.lock();
        m.seq += 1;
        let handle = format!("{:x}-{:016x}", m.seq, fastrand::u64(..));
        let earliest = m.by_deadline.first().is_none_or(|(d, _)| deadline < *d);
        m.by_deadline.insert((deadline, handle.clone()));
        m.by_handle.insert(handle.clone(), lease);
        drop(m);
        if earliest {
            self.wake.notify_one();
        }
        handle
    }

    /// Removes and returns the leases of `handles` that belong to `vhost`/`queue`; the rest
    /// are returned as unknown.
    pub fn take(&self, vhost: &str, queue: &str, handles: &[String]) -> (Vec<Lease>, Vec<String>) {
        let mut m = self.lock();
        let mut found = Vec::new();
        let mut unknown = Vec::new();
        for h in handles {
            let ok = m
                .by_handle
                .get(h)
                .is_some_and(|l| l.vhost == vhost && l.queue_name == queue);
            match ok.then(|| m.by_handle.remove(h)).flatten() {
                Some(l) => {
                    m.by_deadline.remove(&(l.deadline_ms, h.clone()));
                    found.push(l);
                }
                None => unknown.push(h.clone()),
            }
        }
        (found, unknown)
    }

    /// Moves the deadline of the given leases to `deadline_ms`; returns (extended, unknown).
    pub fn extend(
        &self,
        vhost: &str,
        queue: &str,
        handles: &[String],
        deadline_ms: i64,
    ) -> (Vec<String>, Vec<String>) {
        let mut m = self.lock();
        let mut done = Vec::new();
        let mut unknown = Vec::new();
        for h in handles {
            let old = match m.by_handle.get_mut(h) {
                Some(l) if l.vhost == vhost && l.queue_name == queue => {
                    let old = l.deadline_ms;
                    l.deadline_ms = deadline_ms;
                    old
                }
                _ => {
                    unknown.push(h.clone());
                    continue;
                }
            };
            m.by_deadline.remove(&(old, h.clone()));
            m.by_deadline.insert((deadline_ms, h.clone()));
            done.push(h.clone());
        }
        drop(m);
        self.wake.notify_one();
        (done, unknown)
    }

    /// Removes the leases whose deadline has passed.
    fn expired(&self, now: i64) -> (Vec<Lease>, Option<i64>) {
        let mut m = self.lock();
        let mut out = Vec::new();
        while let Some((d, h)) = m.by_deadline.first().cloned() {
            if d > now {
                break;
            }
            m.by_deadline.pop_first();
            if let Some(l) = m.by_handle.remove(&h) {
                out.push(l);
            }
        }
        let next = m.by_deadline.first().map(|(d, _)| *d);
        (out, next)
    }

    /// Returns expired messages to their queues until `stop` turns true.
    pub async fn run_reaper(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            let now = now_ms();
            let (expired, next) = self.expired(now);
            if !expired.is_empty() {
                tracing::debug!(
                    count = expired.len(),
                    "ack deadlines passed; returning messages"
                );
                settle(expired, |q, ids| q.nack(ids, true, now));
            }
            let sleep = next.map_or(Duration::from_secs(3600), |d| {
                Duration::from_millis(d.saturating_sub(now).max(1) as u64)
            });
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.wake.notified() => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// Groups leases by queue and applies `f` to each queue's message ids once.
pub fn settle(leases: Vec<Lease>, f: impl Fn(&Queue, &[u64])) {
    let mut groups: Vec<(Arc<Queue>, Vec<u64>)> = Vec::new();
    for l in leases {
        match groups.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &l.queue)) {
            Some((_, ids)) => ids.push(l.id),
            None => groups.push((l.queue, vec![l.id])),
        }
    }
    for (q, ids) in groups {
        f(&q, &ids);
    }
}
