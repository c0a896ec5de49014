//! A queue: FIFO with competing consumers and credit, acks and requeues, TTL,
//! length limits, dead-lettering, priorities, delayed delivery and retry backoff.
//!
//! All state sits behind one mutex per queue (no global lock): publishers to
//! different queues never contend. Work that reaches other queues (dead-lettering,
//! deleting an auto-delete queue) is collected as [`Effects`] under the lock and
//! carried out after it is released, so queue locks never nest.

pub mod args;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use arc_swap::ArcSwap;
use bytes::BytesMut;
use ferrymq_storage::{Commit, QueueLog};
use tokio::sync::mpsc::UnboundedSender;

pub use args::{ConnectionId, Overflow, QueueArgs, QueueDecl, QueueType, RetryPolicy};

use crate::codec;
use crate::error::{CoreError, Result};
use crate::message::Message;
use crate::timer::{Timer, TimerTarget};
use crate::vhost::VHost;

/// Identifies a consumer within the broker.
pub type ConsumerId = u64;

/// Reserved consumer id for messages fetched by `get` (AMQP `basic.get`, HTTP pull).
pub const GET_CONSUMER: ConsumerId = 0;

/// Why a message was dead-lettered (RabbitMQ's `x-death` reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    Rejected,
    Expired,
    MaxLen,
    DeliveryLimit,
}

impl DeathReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::MaxLen => "maxlen",
            DeathReason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// A message handed to a consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The consumer it is for ([`GET_CONSUMER`] for `get`).
    pub consumer: ConsumerId,
    pub consumer_tag: Arc<str>,
    /// Identifies the message within its queue, for ack/nack (stream offset for streams).
    pub id: u64,
    pub message: Arc<Message>,
    /// True if the message was delivered before.
    pub redelivered: bool,
    /// Deliveries so far, this one included.
    pub delivery_count: u32,
}

/// What a consumer's sink receives.
#[derive(Debug)]
pub enum ConsumerEvent {
    /// A batch of deliveries, in queue order.
    Deliver(Vec<Delivery>),
    /// The server cancelled the consumer (queue deleted): AMQP's server-sent `basic.cancel`.
    Cancelled {
        consumer: ConsumerId,
        consumer_tag: Arc<str>,
    },
}

/// Where deliveries go. One sink may serve many consumers (e.g. all consumers on
/// one connection), so one wake-up moves many messages.
pub type ConsumerSink = UnboundedSender<ConsumerEvent>;

/// How a consumer wants to receive.
#[derive(Debug, Clone, Default)]
pub struct ConsumerOptions {
    pub tag: String,
    /// Messages are settled as they are sent. `prefetch_count` then acts as the
    /// send window, released with [`Queue::release`].
    pub no_ack: bool,
    /// Unacknowledged deliveries allowed at once (0 = unlimited).
    pub prefetch_count: u32,
    /// Unacknowledged body bytes allowed at once (0 = unlimited).
    pub prefetch_bytes: u64,
    /// Higher-priority consumers get messages while they have credit.
    pub priority: i32,
    /// Exclusive consumer: no other consumer may attach.
    pub exclusive: bool,
    /// Credit shared with other consumers (a channel-wide prefetch).
    pub shared_credit: Option<Arc<CreditPool>>,
    pub connection: ConnectionId,
    /// The adapter's channel on that connection (0 where the protocol has none).
    pub channel: u32,
}

/// A consumer as management sees it (`GET /api/consumers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerInfo {
    pub queue: String,
    pub tag: String,
    pub connection: ConnectionId,
    pub channel: u32,
    /// False for no-ack (auto-ack) consumers.
    pub ack_required: bool,
    pub prefetch_count: u32,
    /// Deliveries not yet acknowledged (no-ack: not yet released by the adapter).
    pub unacked: u32,
    pub priority: i32,
    pub exclusive: bool,
    /// False for the waiting consumers of a single-active-consumer queue.
    pub active: bool,
}

struct Entry {
    id: u64,
    msg: Arc<Message>,
    /// Log offset when persisted.
    offset: Option<u64>,
    delivery_count: u32,
    expires_at: Option<i64>,
    size: u64,
}

struct ConsumerState {
    id: ConsumerId,
    tag: Arc<str>,
    opts: ConsumerOptions,
    in_flight: u32,
    in_flight_bytes: u64,
    sink: ConsumerSink,
}

impl ConsumerState {
    fn can_take(&self, size: u64) -> bool {
        if !self.opts.no_ack
            && self
                .opts
                .shared_credit
                .as_ref()
                .is_some_and(|p| !p.has_credit())
        {
            return false;
        }
        let count_ok = self.opts.prefetch_count == 0 || self.in_flight < self.opts.prefetch_count;
        let bytes_ok = self.opts.prefetch_bytes == 0
            || self.in_flight_bytes == 0
            || self.in_flight_bytes + size <= self.opts.prefetch_bytes;
        count_ok && bytes_ok
    }
}

/// Hashes the queue's sequential message ids (Fibonacci hashing): far cheaper than
/// SipHash, and ids come from the queue, never from a client.
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ *b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdHash = std::hash::BuildHasherDefault<IdHasher>;

/// What `enqueue_batch` decided for one message of its batch.
struct Plan {
    /// Accepted (within the length limits, or drop-head).
    fits: bool,
    /// Goes to the disk-only tail (over the memory budget).
    tail: bool,
    /// Its log offset, once written.
    offset: Option<u64>,
}

struct Unacked {
    entry: Entry,
    consumer: ConsumerId,
    /// The shared credit this delivery holds, returned on ack or nack even if the
    /// consumer is gone by then.
    pool: Option<Arc<CreditPool>>,
}

/// Credit shared by several consumers (AMQP `basic.qos` with `global=true`: a limit
/// on unacknowledged deliveries across a channel's consumers, whatever their queue).
#[derive(Debug, Default)]
pub struct CreditPool {
    limit: std::sync::atomic::AtomicU32,
    in_flight: std::sync::atomic::AtomicU32,
}

impl CreditPool {
    /// A pool allowing `limit` unacknowledged deliveries (0 = unlimited).
    pub fn new(limit: u32) -> Arc<Self> {
        let p = CreditPool::default();
        p.limit.store(limit, Ordering::Relaxed);
        Arc::new(p)
    }

    pub fn set_limit(&self, limit: u32) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    fn has_credit(&self) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        limit == 0 || self.in_flight.load(Ordering::Relaxed) < limit
    }

    fn take(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    fn give_back(&self) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(1))
            });
    }
}

struct State {
    next_id: u64,
    /// Ready messages by priority level (index = priority).
    levels: Vec<VecDeque<Entry>>,
    ready_count: u64,
    ready_bytes: u64,
    /// Waiting for their not-before time, keyed by (time, id).
    delayed: BTreeMap<(i64, u64), Entry>,
    delayed_bytes: u64,
    unacked: HashMap<u64, Unacked, IdHash>,
    unacked_bytes: u64,
    consumers: Vec<ConsumerState>,
    rr: usize,
    had_consumer: bool,
    last_used_ms: i64,
    timer_at: Option<i64>,
    deleted: bool,
    /// The part of the backlog kept on disk only (see [`Tail`]).
    tail: Tail,
}

/// Messages of a durable queue beyond its memory budget stay in the log only: every
/// unsettled message at an offset `>= from` that is not `pinned` (held in memory
/// elsewhere, e.g. delayed) and comes after every in-memory ready message. They are
/// paged back in, in order, when the in-memory part runs dry.
#[derive(Default)]
struct Tail {
    from: u64,
    count: u64,
    bytes: u64,
    pinned: std::collections::BTreeSet<u64>,
    /// Transient messages below this offset were written before the last restart:
    /// they are dropped, not delivered, when paged in.
    restart_offset: u64,
}

/// How much of a queue's backlog stays in memory; the rest is read back from disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    pub bytes: u64,
    pub messages: u64,
}

impl Default for MemoryBudget {
    fn default() -> Self {
        MemoryBudget {
            bytes: 64 << 20,
            messages: 100_000,
        }
    }
}

/// Counters for management and metrics.
#[derive(Debug, Default)]
pub struct QueueCounters {
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    pub redelivered: AtomicU64,
    pub acked: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub expired: AtomicU64,
    pub dropped: AtomicU64,
    pub rejected_publishes: AtomicU64,
}

/// A point-in-time view of a queue for management.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    pub name: String,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub ready: u64,
    pub unacked: u64,
    pub delayed: u64,
    pub consumers: usize,
    pub bytes_ready: u64,
    pub bytes_unacked: u64,
    pub published: u64,
    pub delivered: u64,
    pub acked: u64,
    pub redelivered: u64,
    pub dead_lettered: u64,
}

/// Side effects computed under the queue lock, carried out after it is released.
#[derive(Default)]
pub(crate) struct Effects {
    dead: Vec<(Arc<Message>, DeathReason)>,
    delete_queue: bool,
}

/// What happened to one message offered to a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enqueued {
    /// Accepted (durable once the batch's commit resolves).
    Accepted,
    /// Refused by `x-overflow: reject-publish(-dlx)`.
    Rejected,
    /// The queue was deleted meanwhile.
    Gone,
}

/// The arguments fixed at declaration (policies never set them).
#[derive(Debug, Clone, Copy)]
struct FixedArgs {
    max_priority: Option<u8>,
    single_active_consumer: bool,
}

/// A classic (or quorum-compatible) queue.
pub struct Queue {
    pub decl: QueueDecl,
    /// The arguments in effect: the declared ones over a policy's (swapped as a whole
    /// when a policy changes, see `crate::policy`).
    args: ArcSwap<QueueArgs>,
    /// Arguments no policy changes, read per message without loading `args`.
    fixed: FixedArgs,
    /// Set for exclusive queues.
    pub owner: Option<ConnectionId>,
    vhost: Weak<VHost>,
    me: Weak<Queue>,
    log: Option<Arc<QueueLog>>,
    timer: Arc<Timer>,
    budget: MemoryBudget,
    state: Mutex<State>,
    pub counters: QueueCounters,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.decl.name)
            .finish()
    }
}

impl TimerTarget for Queue {
    fn on_timer(&self, now_ms: i64) {
        self.tick(now_ms);
    }
}

impl Queue {
    pub(crate) fn new(
        decl: QueueDecl,
        args: QueueArgs,
        owner: Option<ConnectionId>,
        vhost: Weak<VHost>,
        log: Option<Arc<QueueLog>>,
        (timer, budget): (Arc<Timer>, MemoryBudget),
        now: i64,
    ) -> Arc<Queue> {
        let levels = args.max_priority.map_or(1, |p| p as usize + 1);
        Arc::new_cyclic(|me| Queue {
            decl,
            fixed: FixedArgs {
                max_priority: args.max_priority,
                single_active_consumer: args.single_active_consumer,
            },
            args: ArcSwap::from_pointee(args),
            owner,
            vhost,
            me: me.clone(),
            log,
            timer,
            budget,
            state: Mutex::new(State {
                next_id: 1,
                levels: (0..levels).map(|_| VecDeque::new()).collect(),
                ready_count: 0,
                ready_bytes: 0,
                delayed: BTreeMap::new(),
                delayed_bytes: 0,
                unacked: HashMap::default(),
                unacked_bytes: 0,
                consumers: Vec::new(),
                rr: 0,
                had_consumer: false,
                last_used_ms: now,
                timer_at: None,
                deleted: false,
                tail: Tail::default(),
            }),
            counters: QueueCounters::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.decl.name
    }

    /// The arguments in effect (declared arguments over the applicable policy's).
    pub fn args(&self) -> Arc<QueueArgs> {
        self.args.load_full()
    }

    /// Replaces the arguments in effect (a policy was set, changed or deleted): new
    /// length limits trim the queue at once (oldest first, dead-lettered as `maxlen`),
    /// and the timer is re-armed for a changed `x-expires`. Messages already queued keep
    /// the expiry they were given.
    pub(crate) fn set_args(&self, args: QueueArgs, now: i64) {
        if *self.args.load_full() == args {
            return;
        }
        self.args.store(Arc::new(args));
        let mut fx = Effects::default();
        {
            let mut st = self.lock();
            if st.deleted {
                return;
            }
            let a = self.args.load();
            let over = |n: u64, b: u64| {
                a.max_length.is_some_and(|m| n > m) || a.max_length_bytes.is_some_and(|m| b > m)
            };
            while over(
                st.ready_count + st.delayed.len() as u64 + st.tail.count,
                st.ready_bytes + st.delayed_bytes + st.tail.bytes,
            ) {
                let Some(head) = self.pop_paged(&mut st, now) else {
                    break;
                };
                self.discard(head, DeathReason::MaxLen, &mut fx);
            }
            self.reschedule(&mut st, now);
        }
        self.apply(fx);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether messages published persistent are written to disk.
    pub fn is_persistent(&self) -> bool {
        self.log.is_some()
    }

    /// Restores messages recovered from the queue's log (at open).
    pub(crate) fn recover(&self, now: i64) -> Result<u64> {
        let Some(log) = self.log.clone() else {
            return Ok(0);
        };
        let mut st = self.lock();
        st.tail.restart_offset = log.log().next_offset();
        let loaded = self.load_from_log(&mut st, &log, 0, now, true)?;
        if st.tail.count > 0 {
            // Counted, not read: the rest of the backlog stays on disk.
            let unsettled = log.unsettled_count();
            let in_memory = st.ready_count + st.delayed.len() as u64;
            st.tail.count = unsettled.saturating_sub(in_memory).max(1);
            let avg = st.ready_bytes.checked_div(st.ready_count).unwrap_or(0);
            st.tail.bytes = avg.saturating_mul(st.tail.count);
        }
        let mut fx = Effects::default();
        self.expire_heads(&mut st, now, &mut fx);
        self.reschedule(&mut st, now);
        drop(st);
        self.apply(fx);
        Ok(loaded)
    }

    /// Whether this queue may keep part of its backlog on disk only. Priority queues
    /// keep everything in memory (one order per level would need one tail per level).
    fn pageable(&self, st: &State) -> bool {
        self.log.is_some() && st.levels.len() == 1
    }

    /// Reads unsettled messages from the log at `from` on into memory until the
    /// budget is half full (or, at start-up, full). Transient messages written only
    /// because the queue was paging are dropped at start-up. Returns messages loaded.
    fn load_from_log(
        &self,
        st: &mut State,
        log: &Arc<QueueLog>,
        from: u64,
        now: i64,
        startup: bool,
    ) -> Result<u64> {
        let (max_n, max_b) = if startup {
            (self.budget.messages, self.budget.bytes)
        } else {
            (self.budget.messages / 2 + 1, self.budget.bytes / 2 + 1)
        };
        let mut n = 0;
        let mut drop_offsets = Vec::new();
        let mut exhausted = true;
        let queue_ttl_ms = self.args.load().message_ttl_ms;
        for pending in log.recover_from(from) {
            let p = pending?;
            if st.tail.pinned.remove(&p.offset) {
                st.tail.from = p.offset + 1;
                continue;
            }
            if n > 0 && self.pageable(st) && (st.ready_count >= max_n || st.ready_bytes >= max_b) {
                st.tail.from = p.offset;
                st.tail.count = st.tail.count.max(1);
                exhausted = false;
                break;
            }
            st.tail.from = p.offset + 1;
            let msg = match codec::decode(p.body.clone()) {
                Ok(m) if !m.properties.persistent && p.offset < st.tail.restart_offset => {
                    // Written to disk only to page it out; transient messages do not survive a restart.
                    drop_offsets.push(p.offset);
                    continue;
                }
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(queue = %self.decl.name, offset = p.offset, error = %e, "skipping undecodable stored message");
                    drop_offsets.push(p.offset);
                    continue;
                }
            };
            let id = st.next_id;
            st.next_id += 1;
            let size = msg.body_size();
            if !startup {
                st.tail.count = st.tail.count.saturating_sub(1);
                st.tail.bytes = st.tail.bytes.saturating_sub(size);
            }
            let entry = Entry {
                id,
                expires_at: Self::expiry_of(queue_ttl_ms, &msg, p.timestamp_ms),
                msg: Arc::new(msg),
                offset: Some(p.offset),
                delivery_count: p.delivery_count,
                size,
            };
            match p.not_before_ms {
                Some(nb) if nb > now => {
                    st.delayed_bytes += size;
                    st.delayed.insert((nb, id), entry);
                }
                _ => self.push_ready_back(st, entry),
            }
            n += 1;
        }
        if !drop_offsets.is_empty() {
            log.settle(&drop_offsets)?;
        }
        if exhausted {
            st.tail.count = 0;
            st.tail.bytes = 0;
            st.tail.pinned.clear();
        } else if !drop_offsets.is_empty() && !startup {
            st.tail.count = st
                .tail
                .count
                .saturating_sub(drop_offsets.len() as u64)
                .max(1);
        }
        Ok(n)
    }

    /// Pages the disk-only part of the backlog back in once memory runs dry.
    fn page_in(&self, st: &mut State, now: i64) {
        if st.tail.count == 0 || st.ready_count > 0 {
            return;
        }
        let Some(log) = self.log.clone() else { return };
        let from = st.tail.from;
        if let Err(e) = self.load_from_log(st, &log, from, now, false) {
            tracing::error!(queue = %self.decl.name, error = %e, "paging messages in failed");
        }
    }

    fn expiry_of(queue_ttl_ms: Option<u64>, msg: &Message, enqueued_ms: i64) -> Option<i64> {
        let ttl = match (queue_ttl_ms, msg.properties.expiration_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }?;
        Some(enqueued_ms.saturating_add(ttl.min(i64::MAX as u64) as i64))
    }

    fn level_of(&self, msg: &Message) -> usize {
        match self.fixed.max_priority {
            None => 0,
            Some(max) => msg.properties.priority.unwrap_or(0).min(max) as usize,
        }
    }

    fn push_ready_back(&self, st: &mut State, e: Entry) {
        let l = self.level_of(&e.msg);
        st.ready_count += 1;
        st.ready_bytes += e.size;
        st.levels[l].push_back(e);
    }

    fn push_ready_front(&self, st: &mut State, e: Entry) {
        let l = self.level_of(&e.msg);
        st.ready_count += 1;
        st.ready_bytes += e.size;
        st.levels[l].push_front(e);
    }

    fn pop_ready(&self, st: &mut State) -> Option<Entry> {
        let e = st.levels.iter_mut().rev().find_map(|l| l.pop_front())?;
        st.ready_count -= 1;
        st.ready_bytes -= e.size;
        Some(e)
    }

    /// Pops the head, paging the disk-only tail in when memory is empty.
    fn pop_paged(&self, st: &mut State, now: i64) -> Option<Entry> {
        if st.ready_count == 0 {
            self.page_in(st, now);
        }
        self.pop_ready(st)
    }

    fn peek_ready(st: &State) -> Option<&Entry> {
        st.levels.iter().rev().find_map(|l| l.front())
    }

    /// Offers a batch of messages (in publish order); called by the vhost for each
    /// queue a publish routes to. Persistent messages of the batch are written as
    /// one log batch (one write, one commit), and dispatch runs once for the batch.
    ///
    /// # Errors
    /// Storage errors from the log append; nothing of the batch is enqueued then.
    pub(crate) fn enqueue_batch(
        &self,
        msgs: &[Arc<Message>],
        now: i64,
    ) -> Result<(Vec<Enqueued>, Option<Commit>)> {
        let mut fx = Effects::default();
        let out = {
            let mut st = self.lock();
            if st.deleted {
                return Ok((msgs.iter().map(|_| Enqueued::Gone).collect(), None));
            }
            let args = self.args.load();
            // Length limits count ready and delayed messages, as RabbitMQ counts ready ones.
            let over = |n: u64, b: u64| {
                args.max_length.is_some_and(|m| n > m)
                    || args.max_length_bytes.is_some_and(|m| b > m)
            };
            // 1. Decide acceptance. Reject modes refuse what does not fit; drop-head
            //    accepts everything that fits in an empty queue.
            let (mut n, mut b) = (
                st.ready_count + st.delayed.len() as u64 + st.tail.count,
                st.ready_bytes + st.delayed_bytes + st.tail.bytes,
            );
            // Per message: accepted, whether it goes to the disk-only tail (memory budget),
            // and its log offset (one allocation for the three).
            let mut plan: Vec<Plan> = Vec::with_capacity(msgs.len());
            let pageable = self.pageable(&st);
            let (mut mem_n, mut mem_b, mut tail_active) =
                (st.ready_count, st.ready_bytes, st.tail.count > 0);
            for m in msgs {
                let size = m.body_size();
                let fits = match args.overflow {
                    Overflow::DropHead => !over(1, size),
                    _ => !over(n + 1, b + size),
                };
                let mut tail = false;
                if fits {
                    n += 1;
                    b += size;
                    if m.headers.get_i64("x-delay").is_none_or(|d| d <= 0) {
                        if pageable
                            && (tail_active
                                || mem_n + 1 > self.budget.messages
                                || mem_b + size > self.budget.bytes)
                        {
                            tail = true;
                            tail_active = true;
                        } else {
                            mem_n += 1;
                            mem_b += size;
                        }
                    }
                }
                plan.push(Plan {
                    fits,
                    tail,
                    offset: None,
                });
            }
            // 2. Persist the accepted persistent messages as one batch.
            let mut commit = None;
            if let Some(log) = &self.log {
                // One allocation for the whole batch; each record is a slice of it.
                let stored =
                    |i: usize| plan[i].fits && (msgs[i].properties.persistent || plan[i].tail);
                let total: usize = (0..msgs.len())
                    .filter(|&i| stored(i))
                    .map(|i| codec::encoded_len(&msgs[i]))
                    .sum();
                let mut buf = BytesMut::with_capacity(total);
                let records: Vec<bytes::Bytes> = (0..msgs.len())
                    .filter(|&i| stored(i))
                    .map(|i| {
                        codec::encode_unreserved(&msgs[i], &mut buf);
                        buf.split().freeze()
                    })
                    .collect();
                if !records.is_empty() {
                    let appended = log.append(&records, now)?;
                    let mut next = appended.base_offset;
                    for (p, m) in plan.iter_mut().zip(msgs) {
                        if p.fits && (m.properties.persistent || p.tail) {
                            p.offset = Some(next);
                            next += 1;
                        }
                    }
                    commit = Some(appended.commit);
                }
            }
            // 3. The tail part first: it follows every in-memory message in order.
            for (p, m) in plan.iter().zip(msgs) {
                if let (true, Some(off)) = (p.tail, p.offset) {
                    if st.tail.count == 0 {
                        st.tail.from = off;
                    }
                    st.tail.count += 1;
                    st.tail.bytes += m.body_size();
                    self.counters.published.fetch_add(1, Ordering::Relaxed);
                }
            }
            // 4. Enqueue in order, applying drop-head and refusals.
            let mut result = Vec::with_capacity(msgs.len());
            for (i, m) in msgs.iter().enumerate() {
                let size = m.body_size();
                if plan[i].tail {
                    while over(
                        st.ready_count + st.delayed.len() as u64 + st.tail.count,
                        st.ready_bytes + st.delayed_bytes + st.tail.bytes,
                    ) {
                        let Some(head) = self.pop_paged(&mut st, now) else {
                            break;
                        };
                        self.discard(head, DeathReason::MaxLen, &mut fx);
                    }
                    result.push(Enqueued::Accepted);
                    continue;
                }
                if !plan[i].fits {
                    self.counters
                        .rejected_publishes
                        .fetch_add(1, Ordering::Relaxed);
                    match args.overflow {
                        Overflow::RejectPublish => result.push(Enqueued::Rejected),
                        Overflow::RejectPublishDlx => {
                            fx.dead.push((m.clone(), DeathReason::MaxLen));
                            result.push(Enqueued::Rejected);
                        }
                        Overflow::DropHead => {
                            // Larger than the limit on its own: RabbitMQ drops it.
                            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                            if args.dead_letter_exchange.is_some() {
                                fx.dead.push((m.clone(), DeathReason::MaxLen));
                            }
                            result.push(Enqueued::Accepted);
                        }
                    }
                    continue;
                }
                while over(
                    st.ready_count + st.delayed.len() as u64 + st.tail.count + 1,
                    st.ready_bytes + st.delayed_bytes + st.tail.bytes + size,
                ) {
                    let Some(head) = self.pop_paged(&mut st, now) else {
                        break;
                    };
                    self.discard(head, DeathReason::MaxLen, &mut fx);
                }
                let id = st.next_id;
                st.next_id += 1;
                let entry = Entry {
                    id,
                    msg: m.clone(),
                    offset: plan[i].offset,
                    delivery_count: 0,
                    expires_at: Self::expiry_of(args.message_ttl_ms, m, now),
                    size,
                };
                self.counters.published.fetch_add(1, Ordering::Relaxed);
                if let Some(delay) = m.headers.get_i64("x-delay").filter(|d| *d > 0) {
                    // Delayed delivery: ready only from `now + x-delay`.
                    let at = now.saturating_add(delay);
                    if let (Some(log), Some(off)) = (&self.log, entry.offset) {
                        log.set_not_before(off, at)?;
                        if st.tail.count > 0 && off >= st.tail.from {
                            // In the log among tail messages, but held in memory.
                            st.tail.pinned.insert(off);
                        }
                    }
                    st.delayed_bytes += entry.size;
                    st.delayed.insert((at, entry.id), entry);
                } else if entry.expires_at.is_some_and(|t| t <= now) && st.consumers.is_empty() {
                    // TTL 0 and nobody to take it right now: expire at once.
                    self.discard(entry, DeathReason::Expired, &mut fx);
                } else {
                    self.push_ready_back(&mut st, entry);
                }
                result.push(Enqueued::Accepted);
            }
            self.dispatch(&mut st, now, &mut fx);
            self.reschedule(&mut st, now);
            (result, commit)
        };
        self.apply(fx);
        Ok(out)
    }

    /// Settles a message that leaves the queue without being acked: dead-letters it
    /// when the queue has a dead-letter exchange, else drops it.
    fn discard(&self, e: Entry, reason: DeathReason, fx: &mut Effects) {
        if let (Some(log), Some(off)) = (&self.log, e.offset) {
            if let Err(err) = log.settle(&[off]) {
                tracing::error!(queue = %self.decl.name, error = %err, "settle failed");
            }
        }
        match reason {
            DeathReason::Expired => self.counters.expired.fetch_add(1, Ordering::Relaxed),
            _ => self.counters.dropped.fetch_add(1, Ordering::Relaxed),
        };
        if self.args.load().dead_letter_exchange.is_some() {
            self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
            fx.dead.push((e.msg, reason));
        }
    }

    /// Expires messages at the heads of the ready levels (RabbitMQ expires at the head).
    /// A message whose expiry is the current millisecond is still deliverable, so that
    /// a TTL of 0 reaches consumers that can take it at once (as RabbitMQ's does).
    fn expire_heads(&self, st: &mut State, now: i64, fx: &mut Effects) {
        for l in 0..st.levels.len() {
            while st.levels[l]
                .front()
                .is_some_and(|e| e.expires_at.is_some_and(|t| t < now))
            {
                if let Some(e) = st.levels[l].pop_front() {
                    st.ready_count -= 1;
                    st.ready_bytes -= e.size;
                    self.discard(e, DeathReason::Expired, fx);
                }
            }
        }
    }

    /// Moves ready messages to consumers with credit, one batch per consumer.
    fn dispatch(&self, st: &mut State, now: i64, fx: &mut Effects) {
        if st.consumers.is_empty() {
            return;
        }
        self.page_in(st, now);
        if st.ready_count == 0 {
            return;
        }
        let mut batches: Vec<Vec<Delivery>> = (0..st.consumers.len()).map(|_| Vec::new()).collect();
        let mut delivered_offsets = Vec::new();
        let mut settled_offsets = Vec::new();
        loop {
            self.expire_heads(st, now, fx);
            self.page_in(st, now);
            let Some(size) = Self::peek_ready(st).map(|e| e.size) else {
                break;
            };
            let Some(ci) = Self::pick_consumer(st, self.fixed.single_active_consumer, size) else {
                break;
            };
            let Some(mut e) = self.pop_ready(st) else {
                break;
            };
            let redelivered = e.delivery_count > 0;
            e.delivery_count += 1;
            if redelivered {
                self.counters.redelivered.fetch_add(1, Ordering::Relaxed);
            }
            self.counters.delivered.fetch_add(1, Ordering::Relaxed);
            let c = &mut st.consumers[ci];
            c.in_flight += 1;
            c.in_flight_bytes += e.size;
            batches[ci].push(Delivery {
                consumer: c.id,
                consumer_tag: c.tag.clone(),
                id: e.id,
                message: e.msg.clone(),
                redelivered,
                delivery_count: e.delivery_count,
            });
            if c.opts.no_ack {
                self.counters.acked.fetch_add(1, Ordering::Relaxed);
                if let Some(off) = e.offset {
                    settled_offsets.push(off);
                }
            } else {
                if let Some(off) = e.offset {
                    delivered_offsets.push(off);
                }
                let cid = c.id;
                let pool = c.opts.shared_credit.clone();
                if let Some(p) = &pool {
                    p.take();
                }
                st.unacked_bytes += e.size;
                st.unacked.insert(
                    e.id,
                    Unacked {
                        entry: e,
                        consumer: cid,
                        pool,
                    },
                );
            }
        }
        if let Some(log) = &self.log {
            if !delivered_offsets.is_empty() {
                if let Err(err) = log.record_delivery(&delivered_offsets) {
                    tracing::error!(queue = %self.decl.name, error = %err, "recording deliveries failed");
                }
            }
            if !settled_offsets.is_empty() {
                if let Err(err) = log.settle(&settled_offsets) {
                    tracing::error!(queue = %self.decl.name, error = %err, "settle failed");
                }
            }
        }
        let mut dead_consumers = Vec::new();
        for (ci, batch) in batches.into_iter().enumerate() {
            if batch.is_empty() {
                continue;
            }
            if let Err(failed) = st.consumers[ci].sink.send(ConsumerEvent::Deliver(batch)) {
                dead_consumers.push((st.consumers[ci].id, failed.0));
            }
        }
        for (cid, ev) in dead_consumers {
            // The receiving side is gone: undo the deliveries and drop the consumer.
            if let ConsumerEvent::Deliver(batch) = ev {
                for d in batch.into_iter().rev() {
                    if let Some(u) = st.unacked.remove(&d.id) {
                        st.unacked_bytes -= u.entry.size;
                        let mut e = u.entry;
                        e.delivery_count -= 1;
                        self.push_ready_front(st, e);
                    }
                }
            }
            st.consumers.retain(|c| c.id != cid);
        }
    }

    fn pick_consumer(st: &mut State, single_active: bool, size: u64) -> Option<usize> {
        let n = st.consumers.len();
        if n == 0 {
            return None;
        }
        if single_active {
            return st.consumers[0].can_take(size).then_some(0);
        }
        let mut best: Option<usize> = None;
        for k in 0..n {
            let i = (st.rr + k) % n;
            let c = &st.consumers[i];
            if c.can_take(size)
                && best.is_none_or(|b| c.opts.priority > st.consumers[b].opts.priority)
            {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            st.rr = (b + 1) % n;
        }
        best
    }

    /// Earliest time this queue needs the timer, and asks for it if not yet asked.
    fn reschedule(&self, st: &mut State, now: i64) {
        let mut next: Option<i64> = None;
        let mut consider = |t: i64| next = Some(next.map_or(t, |n: i64| n.min(t)));
        for l in &st.levels {
            if let Some(t) = l.front().and_then(|e| e.expires_at) {
                // A message expiring at t may still be delivered during t.
                consider(t.saturating_add(1));
            }
        }
        if let Some(((t, _), _)) = st.delayed.iter().next() {
            consider(*t);
        }
        if let Some(exp) = self.args.load().expires_ms {
            if st.consumers.is_empty() {
                consider(st.last_used_ms.saturating_add(exp as i64));
            }
        }
        if let Some(t) = next {
            let t = t.max(now);
            if st.timer_at.is_none_or(|s| t < s) {
                st.timer_at = Some(t);
                let weak: Weak<dyn TimerTarget> = self.me.clone();
                self.timer.schedule(t, weak);
            }
        }
    }

    /// Timer callback: expiry, delayed messages becoming ready, queue expiry.
    pub(crate) fn tick(&self, now: i64) {
        let mut fx = Effects::default();
        {
            let mut st = self.lock();
            if st.deleted {
                return;
            }
            if st.timer_at.is_some_and(|t| t <= now) {
                st.timer_at = None;
            }
            while let Some(entry) = st.delayed.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let e = entry.remove();
                st.delayed_bytes -= e.size;
                self.push_ready_back(&mut st, e);
            }
            self.expire_heads(&mut st, now, &mut fx);
            if let Some(exp) = self.args.load().expires_ms {
                if st.consumers.is_empty() && now >= st.last_used_ms.saturating_add(exp as i64) {
                    fx.delete_queue = true;
                }
            }
            self.dispatch(&mut st, now, &mut fx);
            self.reschedule(&mut st, now);
        }
        self.apply(fx);
    }

    /// Carries out effects after the lock is released.
    fn apply(&self, fx: Effects) {
        if fx.dead.is_empty() && !fx.delete_queue {
            return;
        }
        let Some(vhost) = self.vhost.upgrade() else {
            return;
        };
        if !fx.dead.is_empty() {
            vhost.dead_letter(self, fx.dead);
        }
        if fx.delete_queue {
            if let Err(e) = vhost.delete_queue_internal(&self.decl.name) {
                tracing::warn!(queue = %self.decl.name, error = %e, "automatic queue deletion failed");
            }
        }
    }

    /// Attaches a consumer. Returns its id.
    ///
    /// # Errors
    /// `AccessRefused` if an exclusive consumer is attached or this one asks for
    /// exclusivity while others are attached.
    pub fn consume(
        &self,
        id: ConsumerId,
        opts: ConsumerOptions,
        sink: ConsumerSink,
        now: i64,
    ) -> Result<()> {
        let mut fx = Effects::default();
        {
            let mut st = self.lock();
            if st.deleted {
                return Err(CoreError::NotFound(format!(
                    "no queue '{}'",
                    self.decl.name
                )));
            }
            if st.consumers.iter().any(|c| c.opts.exclusive)
                || (opts.exclusive && !st.consumers.is_empty())
            {
                let vhost = self
                    .vhost
                    .upgrade()
                    .map(|v| v.name.clone())
                    .unwrap_or_default();
                return Err(CoreError::AccessRefused(format!(
                    "queue '{}' in vhost '{vhost}' in exclusive use",
                    self.decl.name
                )));
            }
            st.consumers.push(ConsumerState {
                id,
                tag: opts.tag.as_str().into(),
                opts,
                in_flight: 0,
                in_flight_bytes: 0,
                sink,
            });
            st.had_consumer = true;
            st.last_used_ms = now;
            self.dispatch(&mut st, now, &mut fx);
            self.reschedule(&mut st, now);
        }
        self.apply(fx);
        Ok(())
    }

    /// Detaches a consumer. Its unacked messages stay unacked until acked or
    /// returned (as AMQP requires). Returns false if it was not attached.
    pub fn cancel(&self, id: ConsumerId, now: i64) -> bool {
        let mut fx = Effects::default();
        let found = {
            let mut st = self.lock();
            let before = st.consumers.len();
            st.consumers.retain(|c| c.id != id);
            let found = st.consumers.len() != before;
            if found {
                st.last_used_ms = now;
                if st.consumers.is_empty() && st.had_consumer && self.decl.auto_delete {
                    fx.delete_queue = true;
                }
                // A single active consumer's successor takes over.
                self.dispatch(&mut st, now, &mut fx);
                self.reschedule(&mut st, now);
            }
            found
        };
        self.apply(fx);
        found
    }

    /// Returns send-window credit to a no-ack consumer once it has written `n` messages.
    pub fn release(&self, consumer: ConsumerId, n: u32, bytes: u64, now: i64) {
        let mut fx = Effects::default();
        {
            let mut st = self.lock();
            if let Some(c) = st.consumers.iter_mut().find(|c| c.id == consumer) {
                c.in_flight = c.in_flight.saturating_sub(n);
                c.in_flight_bytes = c.in_flight_bytes.saturating_sub(bytes);
            }
            self.dispatch(&mut st, now, &mut fx);
        }
        self.apply(fx);
    }

    /// Acknowledges deliveries. Unknown ids are ignored (the adapter validates them).
    pub fn ack(&self, ids: &[u64], now: i64) {
        let mut fx = Effects::default();
        {
            let mut st = self.lock();
            let mut offsets = Vec::new();
            for id in ids {
                if let Some(u) = st.unacked.remove(id) {
                    st.unacked_bytes -= u.entry.size;
                    Self::return_credit(&mut st, &u);
                    if let Some(off) = u.entry.offset {
                        offsets.push(off);
                    }
                    self.counters.acked.fetch_add(1, Ordering::Relaxed);
                }
            }
            if let (Some(log), false) = (&self.log, offsets.is_empty()) {
                if let Err(err) = log.settle(&offsets) {
                    tracing::error!(queue = %self.decl.name, error = %err, "settle failed");
                }
            }
            self.dispatch(&mut st, now, &mut fx);
        }
        self.apply(fx);
    }

    fn return_credit(st: &mut State, u: &Unacked) {
        if let Some(p) = &u.pool {
            p.give_back();
        }
        if let Some(c) = st.consumers.iter_mut().find(|c| c.id == u.consumer) {
            c.in_flight = c.in_flight.saturating_sub(1);
            c.in_flight_bytes = c.in_flight_bytes.saturating_sub(u.entry.size);
        }
    }

    /// Dispatches again: after credit shared with other queues' consumers came back.
    pub fn kick(&self, now: i64) {
        let mut fx = Effects::default();
        {
            let mut st = self.lock();
            self.dispatch(&mut st, now, &mut fx);
        }
        self.apply(fx);
    }

    /// Negatively acknowledges deliveries (AMQP nack/reject, channel close, HTTP
    /// nack). With `requeue`, messages go back to the head of the queue (after a
    /// backoff if the queue has a retry policy), or are dead-lettered once past the
    /// delivery limit; without it they are dead-lettered (or dropped).
    pub fn nack(&self, ids: &[u64], requeue: bool, now: i64) {
        self.nack_with_delay(ids, requeue, None, now);
    }

    /// Like [`Queue::nack`] with requeue, but the messages become ready again only
    /// after `delay_ms` (HTTP "requeue after a delay").
    pub fn nack_with_delay(&self, ids: &[u64], requeue: bool, delay_ms: Option<u64>, now: i64) {
        let mut fx = Effects::default();
        {
            let mut st = self.lock();
            let mut back = Vec::new();
            for id in ids {
                let Some(u) = st.unacked.remove(id) else {
                    continue;
                };
                st.unacked_bytes -= u.entry.size;
                Self::return_credit(&mut st, &u);
                let e = u.entry;
                if !requeue {
                    self.discard(e, DeathReason::Rejected, &mut fx);
                } else if self
                    .args
                    .load()
                    .delivery_limit
                    .is_some_and(|l| e.delivery_count > l)
                {
                    self.discard(e, DeathReason::DeliveryLimit, &mut fx);
                } else {
                    back.push(e);
                }
            }
            back.sort_by_key(|e| e.id);
            for e in back.into_iter().rev() {
                let delay = delay_ms.or_else(|| {
                    self.args
                        .load()
                        .retry
                        .as_ref()
                        .map(|r| r.delay_ms(e.delivery_count, fastrand::f64()))
                });
                match delay {
                    Some(d) if d > 0 => {
                        let at = now.saturating_add(d.min(i64::MAX as u64) as i64);
                        if let (Some(log), Some(off)) = (&self.log, e.offset) {
                            if let Err(err) = log.set_not_before(off, at) {
                                tracing::error!(queue = %self.decl.name, error = %err, "persisting retry time failed");
                            }
                        }
                        st.delayed_bytes += e.size;
                        st.delayed.insert((at, e.id), e);
                    }
                    _ => self.push_ready_front(&mut st, e),
                }
            }
            self.dispatch(&mut st, now, &mut fx);
            self.reschedule(&mut st, now);
        }
        self.apply(fx);
    }

    /// Fetches one message (AMQP `basic.get`). Returns it with the number of ready
    /// messages left.
    pub fn get(&self, no_ack: bool, now: i64) -> Option<(Delivery, u64)> {
        let mut fx = Effects::default();
        let out = {
            let mut st = self.lock();
            st.last_used_ms = now;
            self.expire_heads(&mut st, now, &mut fx);
            let mut e = self.pop_paged(&mut st, now)?;
            let redelivered = e.delivery_count > 0;
            e.delivery_count += 1;
            self.counters.delivered.fetch_add(1, Ordering::Relaxed);
            let d = Delivery {
                consumer: GET_CONSUMER,
                consumer_tag: "".into(),
                id: e.id,
                message: e.msg.clone(),
                redelivered,
                delivery_count: e.delivery_count,
            };
            if let (Some(log), Some(off)) = (&self.log, e.offset) {
                let r = if no_ack {
                    log.settle(&[off])
                } else {
                    log.record_delivery(&[off])
                };
                if let Err(err) = r {
                    tracing::error!(queue = %self.decl.name, error = %err, "persisting get failed");
                }
            }
            if no_ack {
                self.counters.acked.fetch_add(1, Ordering::Relaxed);
            } else {
                st.unacked_bytes += e.size;
                st.unacked.insert(
                    e.id,
                    Unacked {
                        entry: e,
                        consumer: GET_CONSUMER,
                        pool: None,
                    },
                );
            }
            self.reschedule(&mut st, now);
            Some((d, st.ready_count + st.tail.count))
        };
        self.apply(fx);
        out
    }

    /// Copies of up to `max` ready messages from the head, without consuming them
    /// (management "browse"), with their delivery counts.
    pub fn browse(&self, max: usize) -> Vec<(Arc<Message>, u32)> {
        let st = self.lock();
        st.levels
            .iter()
            .rev()
            .flat_map(|l| l.iter())
            .take(max)
            .map(|e| (e.msg.clone(), e.delivery_count))
            .collect()
    }

    /// Removes all ready and delayed messages; returns how many.
    pub fn purge(&self) -> u64 {
        let mut st = self.lock();
        let mut offsets = Vec::new();
        let mut n = 0;
        for l in st.levels.iter_mut() {
            for e in l.drain(..) {
                offsets.extend(e.offset);
                n += 1;
            }
        }
        for (_, e) in std::mem::take(&mut st.delayed) {
            offsets.extend(e.offset);
            n += 1;
        }
        st.ready_count = 0;
        st.ready_bytes = 0;
        st.delayed_bytes = 0;
        if let Some(log) = &self.log {
            let tail = std::mem::take(&mut st.tail);
            if tail.count > 0 {
                // The disk-only part: settle it in chunks as it is read.
                for p in log.recover_from(tail.from) {
                    match p {
                        Ok(p) => {
                            if !tail.pinned.contains(&p.offset) {
                                n += 1;
                            }
                            offsets.push(p.offset);
                            if offsets.len() >= 4096 {
                                self.settle_logged(log, &std::mem::take(&mut offsets));
                            }
                        }
                        Err(e) => {
                            tracing::error!(queue = %self.decl.name, error = %e, "reading the paged backlog failed");
                            break;
                        }
                    }
                }
            }
            if !offsets.is_empty() {
                self.settle_logged(log, &offsets);
            }
        }
        n
    }

    fn settle_logged(&self, log: &QueueLog, offsets: &[u64]) {
        if let Err(err) = log.settle(offsets) {
            tracing::error!(queue = %self.decl.name, error = %err, "settle failed");
        }
    }

    /// Marks the queue deleted and tells its consumers. Returns the message count.
    pub(crate) fn mark_deleted(&self) -> u64 {
        let mut st = self.lock();
        st.deleted = true;
        for c in st.consumers.drain(..) {
            let _ = c.sink.send(ConsumerEvent::Cancelled {
                consumer: c.id,
                consumer_tag: c.tag.clone(),
            });
        }
        st.ready_count + st.delayed.len() as u64 + st.tail.count
    }

    /// Asks the timer for the queue's first deadline (`x-expires`, recovered TTLs).
    pub(crate) fn arm(&self, now: i64) {
        let mut st = self.lock();
        self.reschedule(&mut st, now);
    }

    /// Records use of the queue (redeclare), postponing `x-expires`.
    pub(crate) fn touch(&self, now: i64) {
        let mut st = self.lock();
        st.last_used_ms = now;
    }

    /// Messages in the queue, not counting those delivered and not yet acked.
    pub fn message_count(&self) -> u64 {
        let st = self.lock();
        st.ready_count + st.delayed.len() as u64 + st.tail.count
    }

    pub fn consumer_count(&self) -> usize {
        self.lock().consumers.len()
    }

    /// A snapshot for management.
    /// Its consumers, for management.
    pub fn consumer_infos(&self) -> Vec<ConsumerInfo> {
        let single_active = self.fixed.single_active_consumer;
        let st = self.lock();
        st.consumers
            .iter()
            .enumerate()
            .map(|(i, c)| ConsumerInfo {
                queue: self.decl.name.clone(),
                tag: c.tag.to_string(),
                connection: c.opts.connection,
                channel: c.opts.channel,
                ack_required: !c.opts.no_ack,
                prefetch_count: c.opts.prefetch_count,
                unacked: c.in_flight,
                priority: c.opts.priority,
                exclusive: c.opts.exclusive,
                active: !single_active || i == 0,
            })
            .collect()
    }

    pub fn info(&self) -> QueueInfo {
        let st = self.lock();
        let c = &self.counters;
        QueueInfo {
            name: self.decl.name.clone(),
            durable: self.decl.durable,
            exclusive: self.decl.exclusive,
            auto_delete: self.decl.auto_delete,
            ready: st.ready_count + st.tail.count,
            unacked: st.unacked.len() as u64,
            delayed: st.delayed.len() as u64,
            consumers: st.consumers.len(),
            bytes_ready: st.ready_bytes + st.delayed_bytes + st.tail.bytes,
            bytes_unacked: st.unacked_bytes,
            published: c.published.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            acked: c.acked.load(Ordering::Relaxed),
            redelivered: c.redelivered.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
        }
    }
}
