//! Streams: append-only partitioned logs with offsets, retention, non-destructive
//! consumers that start anywhere, and named consumer-group offsets.
//!
//! Reconfiguration is copy-on-write. A `Stream` is shared (`Arc<Stream>` held by
//! consumer tasks and adapters) and its `decl`/`args` are plain fields, so a changed
//! declaration (new retention, segment size, more partitions) builds a new `Stream`
//! ([`Stream::reconfigured`]) that shares the old one's partitions (`Arc<Partition>`: the
//! same logs and the same `appended` notifier), consumer map, round-robin counter and
//! counters, plus the logs of any added partitions; the vhost swaps it into its queue
//! map. Holders of the old object keep working: its consumer tasks read the shared
//! partitions, are woken by appends through the new object, and are cancelled through
//! the shared consumer map. What they do not see is what changed: an old object still
//! reports the old declaration and partition count (Kafka adapters look the stream up
//! per request, so they see the new one at once). Retention and segment size live in
//! the shared logs, so they apply to every holder.
//!
//! The log start offset ([`Stream::delete_records`], Kafka's DeleteRecords) is a floor
//! kept by the storage log: `bounds`, `resolve`, `read`, `read_batches` and consumer
//! tasks never start below it (a batch straddling it may still be returned whole).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::{Bytes, BytesMut};
use ferrymq_storage::{Batch, Commit, Retention, StreamLog};
use tokio::sync::{watch, Semaphore};

use crate::codec;
use crate::error::{CoreError, Result};
use crate::message::Message;
use crate::queue::{
    ConsumerEvent, ConsumerId, ConsumerOptions, ConsumerSink, Delivery, QueueArgs, QueueDecl,
};

/// Where a stream consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamOffset {
    /// The oldest retained message.
    First,
    /// The newest message (the last one written when the consumer attaches).
    Last,
    /// Only messages written after the consumer attaches.
    Next,
    /// A given offset (raised to the first retained one; past the end it waits for it).
    Offset(u64),
    /// The first message at or after this time (ms since the epoch).
    Timestamp(i64),
}

/// A batch format other than the core's own framed records, stored as one opaque
/// payload (for example a Kafka record batch kept as the producer sent it). Adapters
/// register the formats they write so that every reader of a stream (AMQP stream
/// consumers, HTTP reads, management) can turn such batches into neutral messages: the
/// core never sees the wire type, only this decoder.
pub trait RecordFormat: Send + Sync {
    /// A short name for logs ("kafka-record-batch-v2").
    fn name(&self) -> &'static str;
    /// The records of one opaque batch: `(offset, timestamp_ms, message)` for each record
    /// at or after `base_offset`, in offset order.
    ///
    /// # Errors
    /// A description of what is wrong with the payload.
    fn decode(
        &self,
        base_offset: u64,
        batch_timestamp_ms: i64,
        payload: &Bytes,
    ) -> std::result::Result<Vec<(u64, i64, Message)>, String>;
}

static FORMATS: RwLock<Vec<(u8, Arc<dyn RecordFormat>)>> = RwLock::new(Vec::new());

/// Registers the decoder of opaque batches in `format` (non-zero), for every stream of
/// the process. Registering the same id again replaces the decoder.
pub fn register_record_format(format: u8, decoder: Arc<dyn RecordFormat>) {
    if let Ok(mut f) = FORMATS.write() {
        f.retain(|(id, _)| *id != format);
        f.push((format, decoder));
    }
}

fn record_format(format: u8) -> Option<Arc<dyn RecordFormat>> {
    FORMATS
        .read()
        .ok()?
        .iter()
        .find(|(id, _)| *id == format)
        .map(|(_, d)| d.clone())
}

/// The records of a stored batch as neutral messages: `(offset, timestamp_ms, message)`.
/// Framed batches are the core's own encoding; opaque ones go through their registered
/// [`RecordFormat`].
///
/// # Errors
/// `Internal` for a batch that does not decode or whose format nobody registered.
pub fn decode_batch(b: &Batch) -> Result<Vec<(u64, i64, Message)>> {
    if !b.is_opaque() {
        return b
            .records()
            .map(|(off, body)| Ok((off, b.timestamp_ms, codec::decode(body)?)))
            .collect();
    }
    let f = record_format(b.format).ok_or_else(|| {
        CoreError::Internal(format!(
            "stream batch at offset {} has format {} and no decoder is registered for it",
            b.base_offset, b.format
        ))
    })?;
    f.decode(b.base_offset, b.timestamp_ms, b.payload())
        .map_err(|e| {
            CoreError::Internal(format!(
                "{} batch at offset {} does not decode: {e}",
                f.name(),
                b.base_offset
            ))
        })
}

/// Send window for consumers that ask for no limit, so memory stays bounded.
const DEFAULT_WINDOW: u32 = 1000;
/// Bytes read from a log per turn of a consumer.
const READ_CHUNK_BYTES: usize = 1 << 20;

struct Partition {
    log: Arc<StreamLog>,
}

struct ConsumerCtl {
    id: ConsumerId,
    /// How it consumes (for management).
    opts: ConsumerOptions,
    window: u32,
    credit: Arc<Semaphore>,
    stop: watch::Sender<bool>,
    tag: Arc<str>,
    sink: ConsumerSink,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// What a stream consumer's task needs.
struct ConsumerTask {
    partition: u32,
    next: u64,
    credit: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
    tag: Arc<str>,
    sink: ConsumerSink,
    id: ConsumerId,
}

/// A message read back from a stream.
#[derive(Debug, Clone)]
pub struct StreamRecord {
    pub partition: u32,
    pub offset: u64,
    pub timestamp_ms: i64,
    pub message: Message,
}

/// Counters for management and metrics.
#[derive(Debug, Default)]
pub struct StreamCounters {
    pub published: AtomicU64,
    pub delivered: AtomicU64,
}

/// A stream, declared as a queue with `x-queue-type: stream`.
pub struct Stream {
    pub decl: QueueDecl,
    pub args: QueueArgs,
    /// Shared with the objects this one replaces or is replaced by (see module docs).
    partitions: Vec<Arc<Partition>>,
    consumers: Arc<Mutex<HashMap<ConsumerId, ConsumerCtl>>>,
    round_robin: Arc<AtomicU64>,
    pub counters: Arc<StreamCounters>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("name", &self.decl.name)
            .finish()
    }
}

/// FNV-1a: a stable hash for partitioning by key.
fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Stream {
    pub(crate) fn new(decl: QueueDecl, args: QueueArgs, logs: Vec<Arc<StreamLog>>) -> Arc<Stream> {
        assert!(!logs.is_empty(), "a stream has at least one partition");
        Arc::new(Stream {
            decl,
            args,
            partitions: logs
                .into_iter()
                .map(|log| Arc::new(Partition { log }))
                .collect(),
            consumers: Arc::new(Mutex::new(HashMap::new())),
            round_robin: Arc::new(AtomicU64::new(0)),
            counters: Arc::new(StreamCounters::default()),
        })
    }

    /// A copy of this stream with a new declaration and arguments, sharing its
    /// partitions, consumers and counters, plus `added` partitions' logs after them.
    /// Retention and segment size are set on every partition (the logs are shared, so
    /// this stream sees them too).
    ///
    /// # Errors
    /// `InvalidArgument` for a segment size storage refuses (nothing is changed then).
    pub(crate) fn reconfigured(
        &self,
        decl: QueueDecl,
        args: QueueArgs,
        added: Vec<Arc<StreamLog>>,
        segment_bytes: u64,
    ) -> Result<Arc<Stream>> {
        assert_eq!(
            args.partitions as usize,
            self.partitions.len() + added.len(),
            "partitions are only ever added"
        );
        let partitions: Vec<Arc<Partition>> = self
            .partitions
            .iter()
            .cloned()
            .chain(added.into_iter().map(|log| Arc::new(Partition { log })))
            .collect();
        let retention = Self::retention_of(&args);
        // The same check for every partition: if the first refuses, nothing changed.
        for p in &partitions {
            p.log
                .log()
                .set_segment_bytes(segment_bytes)
                .map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
            p.log.set_retention(retention);
        }
        Ok(Arc::new(Stream {
            decl,
            args,
            partitions,
            consumers: self.consumers.clone(),
            round_robin: self.round_robin.clone(),
            counters: self.counters.clone(),
        }))
    }

    /// Moves a partition's log start offset up to `offset` (Kafka's DeleteRecords):
    /// records below it are never read again and whole segments below it are deleted.
    /// Durable when it returns. Returns the new start offset (an offset at or below the
    /// current start changes nothing).
    ///
    /// # Errors
    /// `NotFound` for a partition out of range; `Storage(OffsetOutOfRange)` beyond the
    /// next offset; storage errors.
    pub fn delete_records(&self, partition: u32, offset: u64) -> Result<u64> {
        Ok(self.partition(partition)?.log.set_start_offset(offset)?)
    }

    /// The segment size of the partitions' logs (what a new segment may grow to).
    pub fn segment_bytes(&self) -> u64 {
        self.partitions
            .first()
            .map_or(0, |p| p.log.log().segment_bytes())
    }

    pub fn name(&self) -> &str {
        &self.decl.name
    }

    /// Retention from the declaration's arguments.
    pub(crate) fn retention_of(args: &QueueArgs) -> Retention {
        Retention {
            max_age_ms: args.max_age_ms,
            max_bytes: args.max_length_bytes,
            max_messages: args.max_length,
        }
    }

    /// Sets every partition's retention (a policy changed).
    pub(crate) fn set_retention(&self, r: Retention) {
        for p in &self.partitions {
            p.log.set_retention(r);
        }
    }

    /// Retention in effect (the first partition's; all partitions share it).
    pub fn retention(&self) -> Retention {
        self.partitions
            .first()
            .map(|p| p.log.retention())
            .unwrap_or_default()
    }

    pub fn partition_count(&self) -> u32 {
        self.partitions.len() as u32
    }

    fn partition(&self, p: u32) -> Result<&Partition> {
        self.partitions
            .get(p as usize)
            .map(|p| &**p)
            .ok_or_else(|| {
                CoreError::NotFound(format!("stream '{}' has no partition {p}", self.decl.name))
            })
    }

    /// The partition a message goes to: by key hash, else round-robin.
    pub fn partition_for(&self, msg: &Message) -> u32 {
        let n = self.partitions.len() as u64;
        if n == 1 {
            return 0;
        }
        match &msg.key {
            Some(k) => (fnv1a(k) % n) as u32,
            None => (self.round_robin.fetch_add(1, Ordering::Relaxed) % n) as u32,
        }
    }

    /// Appends messages to one partition as one batch; returns the first offset
    /// and the durability commit.
    ///
    /// # Errors
    /// Storage errors, or `NotFound` for a partition out of range.
    pub fn append(&self, partition: u32, msgs: &[&Message], now: i64) -> Result<(u64, Commit)> {
        let part = self.partition(partition)?;
        let records: Vec<bytes::Bytes> = msgs
            .iter()
            .map(|m| {
                let mut b = BytesMut::with_capacity(codec::encoded_len(m));
                codec::encode(m, &mut b);
                b.freeze()
            })
            .collect();
        let appended = part.log.append(&records, now)?;
        self.counters
            .published
            .fetch_add(msgs.len() as u64, Ordering::Relaxed);
        Ok((appended.base_offset, appended.commit))
    }

    /// Appends one opaque batch in a registered [`RecordFormat`] to one partition; it
    /// takes `count` offsets. Returns the first offset and the durability commit.
    ///
    /// # Errors
    /// Storage errors, or `NotFound` for a partition out of range.
    pub fn append_opaque(
        &self,
        partition: u32,
        format: u8,
        count: u32,
        payload: &Bytes,
        suffix_crc: Option<ferrymq_storage::SuffixCrc>,
        timestamp_ms: i64,
    ) -> Result<(u64, Commit)> {
        let part = self.partition(partition)?;
        let appended =
            part.log
                .append_opaque_with(format, count, payload, suffix_crc, timestamp_ms)?;
        self.counters
            .published
            .fetch_add(u64::from(count), Ordering::Relaxed);
        Ok((appended.base_offset, appended.commit))
    }

    /// Stored batches of a partition from the one holding `from`, up to about `max_bytes`
    /// (at least one batch when there is one), as stored: opaque batches keep their
    /// payload, for adapters that serve them without re-encoding. [`decode_batch`] turns
    /// any of them into messages.
    ///
    /// # Errors
    /// Storage errors, `NotFound` for a partition out of range.
    pub fn read_batches(&self, partition: u32, from: u64, max_bytes: usize) -> Result<Vec<Batch>> {
        Ok(self.partition(partition)?.log.log().read(from, max_bytes)?)
    }

    /// A handle on `partition`'s log that stays the same across reconfigurations of this
    /// stream (which share the logs) and differs for a stream deleted and created again: for
    /// state an adapter keeps per partition (Kafka's idempotent producers).
    ///
    /// # Errors
    /// `NotFound` for a partition out of range.
    pub fn partition_log(&self, partition: u32) -> Result<std::sync::Weak<StreamLog>> {
        Ok(Arc::downgrade(&self.partition(partition)?.log))
    }

    /// Makes everything appended to `partition` readable now (see `Log::make_readable`): for
    /// a reader that must see the newest batches at once, not at the next round.
    ///
    /// # Errors
    /// `NotFound` for a partition out of range; storage errors.
    pub fn make_readable(&self, partition: u32) -> Result<()> {
        Ok(self.partition(partition)?.log.log().make_readable()?)
    }

    /// A future that completes when more of `partition` becomes readable (long polls): at
    /// an append, or for T2 appends when the group-commit round writes them to the file
    /// (see `Log::readable_next`). Create it, `enable()` it, then read, then await it, so
    /// that no move is missed.
    ///
    /// # Errors
    /// `NotFound` for a partition out of range.
    pub fn readable(&self, partition: u32) -> Result<tokio::sync::futures::Notified<'_>> {
        Ok(self.partition(partition)?.log.log().readable())
    }

    /// Forgets a consumer group's offset on every partition (a group was deleted);
    /// returns whether any partition had one.
    ///
    /// # Errors
    /// Storage errors.
    pub fn remove_offsets(&self, group: &str) -> Result<bool> {
        let mut any = false;
        for p in &self.partitions {
            any |= p.log.remove_offset(group)?;
        }
        Ok(any)
    }

    /// The groups with a committed offset on any partition, sorted.
    pub fn offset_groups(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .partitions
            .iter()
            .flat_map(|p| p.log.committed_offsets().into_iter().map(|(g, _)| g))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The largest batch timestamp of a partition and the offset range of the segment
    /// holding it (see `Log::max_timestamp_segment`).
    ///
    /// # Errors
    /// `NotFound` for a partition out of range.
    pub fn max_timestamp_range(&self, partition: u32) -> Result<Option<(i64, u64, u64)>> {
        Ok(self.partition(partition)?.log.log().max_timestamp_segment())
    }

    /// Resolves a start position to an offset.
    pub fn resolve(&self, partition: u32, at: StreamOffset) -> Result<u64> {
        let log = self.partition(partition)?.log.log();
        let (start, next) = (log.start_offset(), log.next_offset());
        Ok(match at {
            StreamOffset::First => start,
            StreamOffset::Last => next.saturating_sub(1).max(start),
            StreamOffset::Next => next,
            StreamOffset::Offset(o) => o.max(start),
            StreamOffset::Timestamp(ts) => log.offset_for_timestamp(ts)?.unwrap_or(next),
        })
    }

    /// Reads up to `max_records` records from `from` (HTTP and Kafka reads).
    pub fn read(&self, partition: u32, from: u64, max_records: usize) -> Result<Vec<StreamRecord>> {
        let log = self.partition(partition)?.log.log();
        let mut out = Vec::new();
        let mut next = from.max(log.start_offset());
        while out.len() < max_records && next < log.readable_next() {
            let batches = log.read(next, READ_CHUNK_BYTES)?;
            if batches.is_empty() {
                break;
            }
            for b in &batches {
                for (off, ts, message) in decode_batch(b)? {
                    if off < next || out.len() >= max_records {
                        continue;
                    }
                    out.push(StreamRecord {
                        partition,
                        offset: off,
                        timestamp_ms: ts,
                        message,
                    });
                    next = off + 1;
                }
            }
            let last = batches
                .last()
                .map(|b| b.base_offset + b.record_count as u64)
                .unwrap_or(next);
            next = next.max(last);
        }
        Ok(out)
    }

    /// First and next offsets of a partition.
    pub fn bounds(&self, partition: u32) -> Result<(u64, u64)> {
        let log = self.partition(partition)?.log.log();
        Ok((log.start_offset(), log.next_offset()))
    }

    /// Messages retained across partitions.
    pub fn message_count(&self) -> u64 {
        self.partitions
            .iter()
            .map(|p| p.log.log().next_offset() - p.log.log().start_offset())
            .sum()
    }

    pub fn size_bytes(&self) -> u64 {
        self.partitions
            .iter()
            .map(|p| p.log.log().size_bytes())
            .sum()
    }

    pub fn consumer_count(&self) -> usize {
        self.consumers.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Stores a consumer group's offset for a partition (the next offset to read).
    pub fn commit_offset(&self, group: &str, partition: u32, offset: u64) -> Result<Commit> {
        Ok(self
            .partition(partition)?
            .log
            .commit_offset(group, offset)?)
    }

    pub fn committed_offset(&self, group: &str, partition: u32) -> Result<Option<u64>> {
        Ok(self.partition(partition)?.log.committed_offset(group))
    }

    /// Applies retention to every partition; returns segments deleted.
    pub fn apply_retention(&self, now: i64) -> Result<u64> {
        let mut n = 0;
        for p in &self.partitions {
            n += p.log.apply_retention(now)?;
        }
        Ok(n)
    }

    /// Attaches a consumer reading `partition` from `at`. Deliveries carry the
    /// offset as their id; [`Stream::credit`] (called on ack, or as no-ack messages
    /// are written out) lets more flow.
    ///
    /// Must be called within a tokio runtime: a task per consumer reads the log.
    pub fn consume(
        self: &Arc<Self>,
        id: ConsumerId,
        opts: ConsumerOptions,
        partition: u32,
        at: StreamOffset,
        sink: ConsumerSink,
    ) -> Result<()> {
        let start = self.resolve(partition, at)?;
        let window = if opts.prefetch_count == 0 {
            DEFAULT_WINDOW
        } else {
            opts.prefetch_count
        };
        let credit = Arc::new(Semaphore::new(window as usize));
        let (stop_tx, stop_rx) = watch::channel(false);
        let tag: Arc<str> = opts.tag.as_str().into();
        let me = self.clone();
        let (task_tag, task_sink, task_credit) = (tag.clone(), sink.clone(), credit.clone());
        let mut consumers = self.consumers.lock().map_err(|_| CoreError::ShuttingDown)?;
        let task = tokio::spawn(async move {
            let r = me
                .run_consumer(ConsumerTask {
                    partition,
                    next: start,
                    credit: task_credit,
                    stop: stop_rx,
                    tag: task_tag.clone(),
                    sink: task_sink.clone(),
                    id,
                })
                .await;
            if let Err(e) = r {
                tracing::warn!(stream = %me.decl.name, consumer = %task_tag, error = %e, "stream consumer stopped");
                me.consumers.lock().map(|mut c| c.remove(&id)).ok();
                let _ = task_sink.send(ConsumerEvent::Cancelled {
                    consumer: id,
                    consumer_tag: task_tag,
                });
            }
        });
        consumers.insert(
            id,
            ConsumerCtl {
                id,
                opts,
                window,
                credit,
                stop: stop_tx,
                tag,
                sink,
                task: Some(task),
            },
        );
        Ok(())
    }

    async fn run_consumer(&self, task: ConsumerTask) -> Result<()> {
        let ConsumerTask {
            partition,
            mut next,
            credit,
            mut stop,
            tag,
            sink,
            id,
        } = task;
        let part = self.partition(partition)?;
        loop {
            // Wait for at least one unit of credit.
            tokio::select! {
                p = credit.acquire() => match p {
                    Ok(p) => p.forget(),
                    Err(_) => return Ok(()),
                },
                _ = stop.changed() => return Ok(()),
            }
            let mut budget = 1 + credit.available_permits();
            loop {
                let log = part.log.log();
                let readable = log.readable();
                tokio::pin!(readable);
                readable.as_mut().enable();
                next = next.max(log.start_offset());
                if next < log.readable_next() {
                    break;
                }
                tokio::select! {
                    _ = readable => {}
                    _ = stop.changed() => return Ok(()),
                }
            }
            let batches = part.log.log().read(next, READ_CHUNK_BYTES)?;
            let mut deliveries = Vec::new();
            for b in &batches {
                for (off, _ts, message) in decode_batch(b)? {
                    if off < next || budget == 0 {
                        continue;
                    }
                    deliveries.push(Delivery {
                        consumer: id,
                        consumer_tag: tag.clone(),
                        id: off,
                        message: Arc::new(message),
                        redelivered: false,
                        delivery_count: 1,
                    });
                    next = off + 1;
                    budget -= 1;
                }
            }
            // Take the extra credit used beyond the first unit; return what is unused.
            let used = deliveries.len();
            if used == 0 {
                credit.add_permits(1);
                continue;
            }
            if used > 1 {
                if let Ok(p) = credit.try_acquire_many((used - 1) as u32) {
                    p.forget();
                }
            }
            self.counters
                .delivered
                .fetch_add(used as u64, Ordering::Relaxed);
            if sink.send(ConsumerEvent::Deliver(deliveries)).is_err() {
                return Ok(());
            }
        }
    }

    /// Its consumers, for management: `unacked` is the used part of each send window.
    pub fn consumer_infos(&self) -> Vec<crate::queue::ConsumerInfo> {
        let Ok(cs) = self.consumers.lock() else {
            return Vec::new();
        };
        let mut v: Vec<_> = cs
            .values()
            .map(|c| crate::queue::ConsumerInfo {
                queue: self.decl.name.clone(),
                tag: c.tag.to_string(),
                connection: c.opts.connection,
                channel: c.opts.channel,
                ack_required: !c.opts.no_ack,
                prefetch_count: c.opts.prefetch_count,
                unacked: c
                    .window
                    .saturating_sub(c.credit.available_permits().min(u32::MAX as usize) as u32),
                priority: c.opts.priority,
                exclusive: c.opts.exclusive,
                active: true,
            })
            .collect();
        v.sort_by(|a, b| a.tag.cmp(&b.tag));
        v
    }

    /// Gives a consumer credit for `n` more messages.
    pub fn credit(&self, consumer: ConsumerId, n: u32) {
        if let Ok(c) = self.consumers.lock() {
            if let Some(ctl) = c.get(&consumer) {
                ctl.credit.add_permits(n as usize);
            }
        }
    }

    /// Detaches a consumer; returns false if unknown.
    pub fn cancel(&self, consumer: ConsumerId) -> bool {
        let removed = self
            .consumers
            .lock()
            .ok()
            .and_then(|mut c| c.remove(&consumer));
        match removed {
            Some(ctl) => {
                let _ = ctl.stop.send(true);
                true
            }
            None => false,
        }
    }

    /// Stops every consumer; with `notify`, tells each it was cancelled (stream
    /// deleted). Returns the consumer tasks, to await their end.
    pub(crate) fn stop_all(&self, notify: bool) -> Vec<tokio::task::JoinHandle<()>> {
        let all: Vec<ConsumerCtl> = self
            .consumers
            .lock()
            .map(|mut c| c.drain().map(|(_, v)| v).collect())
            .unwrap_or_default();
        let mut tasks = Vec::new();
        for mut ctl in all {
            tasks.extend(ctl.task.take());
            let _ = ctl.stop.send(true);
            ctl.credit.close();
            if notify {
                let _ = ctl.sink.send(ConsumerEvent::Cancelled {
                    consumer: ctl.id,
                    consumer_tag: ctl.tag,
                });
            }
        }
        tasks
    }
}
