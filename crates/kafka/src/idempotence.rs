//! Idempotent-producer state for a partition leader, after Apache Kafka's `ProducerStateManager` (pure: no I/O, no clock).
//!
//! - [`ProducerIds`] hands out producer ids for InitProducerId (non-transactional:
//!   always a fresh id, epoch 0, as Kafka's coordinator does without a transactional id).
//! - [`PartitionProducers`] is one per topic-partition: per producer id, its epoch and
//!   its last [`BATCHES_RETAINED`] batches. Produce asks [`PartitionProducers::check`]
//!   before appending a batch, and calls [`PartitionProducers::record`] after.
//!
//! The rules are Kafka 4.x's for a client append of a non-transactional batch
//! (`UnifiedLog.analyzeAndValidateProducerState`, `ProducerAppendInfo.checkProducerEpoch`
//! and `checkSequence`, `ProducerStateEntry.findDuplicateBatch`):
//!
//! 1. A batch whose epoch and sequence range equal one of the producer's last five
//!    batches is a duplicate: answer success with the original base offset, no append.
//! 2. An epoch older than the producer's current one: INVALID_PRODUCER_EPOCH.
//! 3. A newer epoch must start at sequence 0, else OUT_OF_ORDER_SEQUENCE_NUMBER; the
//!    new epoch replaces the old one and its batches.
//! 4. The same epoch must continue at last sequence + 1 (after `i32::MAX` comes 0),
//!    else OUT_OF_ORDER_SEQUENCE_NUMBER. That includes a retry of a batch older than
//!    the five retained ones: Kafka brokers stopped answering DUPLICATE_SEQUENCE_NUMBER
//!    in 1.0 (KAFKA-5494) and answer OUT_OF_ORDER_SEQUENCE_NUMBER for it.
//! 5. A producer id the partition has no state for (never seen, or expired) is accepted
//!    at any sequence: since Kafka 2.5 (KIP-360) the broker no longer answers
//!    UNKNOWN_PRODUCER_ID, because state legitimately disappears with retention and
//!    expiry. [`UnknownProducerPolicy::RequireSequenceZero`] restores the pre-2.5
//!    answer for those who prefer a loud failure to a possible duplicate.
//!
//! State is kept in memory. After a restart the produce path rebuilds a partition's state
//! from the batch headers at the end of its log before its first idempotent append
//! (`api::rebuild_producers`), so retries of acknowledged batches stay duplicates; a
//! producer older than that window is unknown, which rule 5 accepts.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};

use kafka_protocol::ResponseError;

/// Batches remembered per producer for duplicate detection (Kafka's
/// `ProducerStateEntry.NUM_BATCHES_TO_RETAIN`; also the client's limit of in-flight
/// requests per connection with idempotence on).
pub const BATCHES_RETAINED: usize = 5;
/// Kafka's default `producer.id.expiration.ms`: one day.
pub const PRODUCER_ID_EXPIRATION_MS_DEFAULT: i64 = 86_400_000;
/// Default bound on producers remembered per partition; past it the least recently
/// used one is forgotten (Kafka has no such bound, only expiry).
pub const PRODUCERS_PER_PARTITION_MAX_DEFAULT: usize = 50_000;
/// Kafka's `RecordBatch.NO_PRODUCER_ID`: the batch is not idempotent.
pub const NO_PRODUCER_ID: i64 = -1;

/// Allocates producer ids for InitProducerId.
///
/// Ids are not persisted. Instead the broker seeds the allocator with the current
/// wall-clock time in milliseconds × 1000 ([`ProducerIds::from_clock_ms`]): a restarted
/// broker starts above every id the previous run gave out, unless that run allocated
/// more than 1000 ids per millisecond of its uptime on average or the clock stepped back.
/// Ids then stay below `i64::MAX` for the next ~290,000 years.
#[derive(Debug)]
pub struct ProducerIds {
    next: AtomicI64,
}

/// A producer id and epoch handed to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerIdAndEpoch {
    /// Non-negative producer id.
    pub producer_id: i64,
    /// Always 0 for a fresh id.
    pub epoch: i16,
}

impl ProducerIds {
    /// Ids from `seed` upwards (a negative seed counts as 0).
    pub fn new(seed: i64) -> Self {
        ProducerIds {
            next: AtomicI64::new(seed.max(0)),
        }
    }

    /// Ids from `now_ms * 1000` upwards: unique across restarts without persistence
    /// (see the type's documentation).
    pub fn from_clock_ms(now_ms: i64) -> Self {
        Self::new(now_ms.saturating_mul(1000))
    }

    /// A fresh producer id with epoch 0; one more than the previous one.
    pub fn allocate(&self) -> ProducerIdAndEpoch {
        // At i64::MAX (unreachable in practice, see above) start again from 0 rather
        // than hand out negative ids, which mean "no producer id" on the wire.
        let prev = self
            .next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |id| {
                Some(id.checked_add(1).unwrap_or(0))
            })
            .unwrap_or_else(|id| id);
        ProducerIdAndEpoch {
            producer_id: prev,
            epoch: 0,
        }
    }
}

/// What to do with an idempotent batch, per [`PartitionProducers::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Append the batch, then call [`PartitionProducers::record`].
    Append,
    /// A retry of an appended batch: answer success with this base offset, do not append.
    Duplicate {
        /// Offset of the first record of the original append.
        base_offset: i64,
    },
    /// A gap, a repeat outside the retained window, or a new epoch not at sequence 0.
    OutOfOrder,
    /// The epoch is older than the producer's current one.
    InvalidEpoch,
    /// Unknown producer with a non-zero sequence, under
    /// [`UnknownProducerPolicy::RequireSequenceZero`] only.
    UnknownProducer,
    /// Negative base sequence or a batch without records.
    InvalidBatch,
}

impl Decision {
    /// The Kafka error for the Produce response, `None` for success
    /// ([`Decision::Append`] once appended, and [`Decision::Duplicate`]).
    pub fn error(self) -> Option<ResponseError> {
        match self {
            Decision::Append | Decision::Duplicate { .. } => None,
            Decision::OutOfOrder => Some(ResponseError::OutOfOrderSequenceNumber),
            Decision::InvalidEpoch => Some(ResponseError::InvalidProducerEpoch),
            Decision::UnknownProducer => Some(ResponseError::UnknownProducerId),
            Decision::InvalidBatch => Some(ResponseError::InvalidRecord),
        }
    }
}

/// How to treat a batch from a producer id the partition has no state for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownProducerPolicy {
    /// Accept any sequence (Kafka ≥ 2.5).
    #[default]
    AcceptAnySequence,
    /// Accept sequence 0 only; others get UNKNOWN_PRODUCER_ID (Kafka 0.11 to 2.4).
    RequireSequenceZero,
}

/// Limits and rules of a [`PartitionProducers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotenceConfig {
    /// Forget a producer idle this long (Kafka's `producer.id.expiration.ms`).
    pub producer_id_expiration_ms: i64,
    /// Producers remembered per partition; the least recently used one goes first.
    pub producers_max: usize,
    /// See [`UnknownProducerPolicy`].
    pub unknown_producer: UnknownProducerPolicy,
}

impl Default for IdempotenceConfig {
    fn default() -> Self {
        IdempotenceConfig {
            producer_id_expiration_ms: PRODUCER_ID_EXPIRATION_MS_DEFAULT,
            producers_max: PRODUCERS_PER_PARTITION_MAX_DEFAULT,
            unknown_producer: UnknownProducerPolicy::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchMeta {
    first_seq: i32,
    last_seq: i32,
    base_offset: i64,
}

#[derive(Debug)]
struct ProducerEntry {
    epoch: i16,
    /// Oldest first; at most [`BATCHES_RETAINED`], all of `epoch`.
    batches: VecDeque<BatchMeta>,
    last_used_ms: i64,
}

/// Idempotent-producer state of one topic-partition (the leader's view).
#[derive(Debug, Default)]
pub struct PartitionProducers {
    config: IdempotenceConfig,
    producers: HashMap<i64, ProducerEntry>,
}

/// The sequence of a batch's last record: Kafka's `DefaultRecordBatch.incrementSequence`,
/// wrapping from `i32::MAX` to 0. `base_sequence >= 0` and `record_count >= 1`.
fn last_sequence(base_sequence: i32, record_count: i32) -> i32 {
    let last = i64::from(base_sequence) + i64::from(record_count) - 1;
    let wrapped = if last > i64::from(i32::MAX) {
        last - i64::from(i32::MAX) - 1
    } else {
        last
    };
    // Both inputs are below 2^31, so `wrapped` is below 2^31 as well.
    i32::try_from(wrapped).unwrap_or(i32::MAX)
}

/// Kafka's `ProducerAppendInfo.inSequence`.
fn in_sequence(last_seq: i32, next_seq: i32) -> bool {
    i64::from(next_seq) == i64::from(last_seq) + 1 || (next_seq == 0 && last_seq == i32::MAX)
}

impl PartitionProducers {
    /// Empty state with the given limits.
    pub fn new(config: IdempotenceConfig) -> Self {
        PartitionProducers {
            config,
            producers: HashMap::new(),
        }
    }

    /// Producers currently remembered.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// Whether no producer is remembered.
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// The producer's current epoch and last appended sequence, if it is known.
    pub fn last_sequence(&self, producer_id: i64) -> Option<(i16, i32)> {
        let entry = self.producers.get(&producer_id)?;
        let last = entry.batches.back().map_or(-1, |b| b.last_seq);
        Some((entry.epoch, last))
    }

    /// Decides what to do with a batch of `record_count` records from `producer_id`
    /// at `epoch` starting at `base_sequence`. A batch without a producer id
    /// ([`NO_PRODUCER_ID`] or any negative id) is not idempotent: always [`Decision::Append`].
    pub fn check(
        &self,
        producer_id: i64,
        epoch: i16,
        base_sequence: i32,
        record_count: i32,
    ) -> Decision {
        if producer_id < 0 {
            return Decision::Append;
        }
        // Kafka's LogValidator: a batch with a producer id needs a sequence.
        if base_sequence < 0 || record_count < 1 {
            return Decision::InvalidBatch;
        }
        let Some(entry) = self.producers.get(&producer_id) else {
            return match self.config.unknown_producer {
                UnknownProducerPolicy::AcceptAnySequence => Decision::Append,
                UnknownProducerPolicy::RequireSequenceZero if base_sequence == 0 => {
                    Decision::Append
                }
                UnknownProducerPolicy::RequireSequenceZero => Decision::UnknownProducer,
            };
        };
        if epoch == entry.epoch {
            let last_seq = last_sequence(base_sequence, record_count);
            if let Some(dup) = entry
                .batches
                .iter()
                .find(|b| b.first_seq == base_sequence && b.last_seq == last_seq)
            {
                return Decision::Duplicate {
                    base_offset: dup.base_offset,
                };
            }
        }
        if epoch < entry.epoch {
            return Decision::InvalidEpoch;
        }
        if epoch > entry.epoch {
            return if base_sequence == 0 {
                Decision::Append
            } else {
                Decision::OutOfOrder
            };
        }
        let current_last = entry.batches.back().map_or(-1, |b| b.last_seq);
        if in_sequence(current_last, base_sequence) {
            Decision::Append
        } else {
            Decision::OutOfOrder
        }
    }

    /// Records a batch appended after [`Decision::Append`] at `base_offset`, at time
    /// `now_ms` (the broker's clock; used for expiry). A newer epoch replaces the
    /// producer's epoch and forgets its batches. No-op for a negative producer id.
    pub fn record(
        &mut self,
        producer_id: i64,
        epoch: i16,
        base_sequence: i32,
        record_count: i32,
        base_offset: i64,
        now_ms: i64,
    ) {
        if producer_id < 0 {
            return;
        }
        debug_assert!(
            base_sequence >= 0 && record_count >= 1,
            "record() after a Decision other than Append"
        );
        if !self.producers.contains_key(&producer_id)
            && self.producers.len() >= self.config.producers_max.max(1)
        {
            self.evict_least_recently_used();
        }
        let entry = self.producers.entry(producer_id).or_insert(ProducerEntry {
            epoch,
            batches: VecDeque::with_capacity(BATCHES_RETAINED),
            last_used_ms: now_ms,
        });
        debug_assert!(epoch >= entry.epoch, "record() with an older epoch");
        if epoch != entry.epoch {
            entry.epoch = epoch;
            entry.batches.clear();
        }
        if entry.batches.len() >= BATCHES_RETAINED {
            entry.batches.pop_front();
        }
        entry.batches.push_back(BatchMeta {
            first_seq: base_sequence.max(0),
            last_seq: last_sequence(base_sequence.max(0), record_count.max(1)),
            base_offset,
        });
        entry.last_used_ms = now_ms;
    }

    /// Forgets producers whose last append is `producer_id_expiration_ms` or more
    /// before `now_ms` (Kafka's `ProducerStateManager.removeExpiredProducers`).
    /// Returns how many were forgotten.
    pub fn expire(&mut self, now_ms: i64) -> usize {
        let before = self.producers.len();
        let ttl = self.config.producer_id_expiration_ms;
        self.producers
            .retain(|_, p| now_ms.saturating_sub(p.last_used_ms) < ttl);
        before - self.producers.len()
    }

    /// O(n), and only when a new producer arrives at the limit.
    fn evict_least_recently_used(&mut self) {
        let oldest = self
            .producers
            .iter()
            .min_by_key(|(_, p)| p.last_used_ms)
            .map(|(id, _)| *id);
        if let Some(id) = oldest {
            self.producers.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PID: i64 = 1000;

    fn producers() -> PartitionProducers {
        PartitionProducers::new(IdempotenceConfig::default())
    }

    /// check + record when Append; returns the decision.
    fn produce(
        p: &mut PartitionProducers,
        epoch: i16,
        seq: i32,
        count: i32,
        offset: i64,
    ) -> Decision {
        let d = p.check(PID, epoch, seq, count);
        if d == Decision::Append {
            p.record(PID, epoch, seq, count, offset, 0);
        }
        d
    }

    #[test]
    fn producer_ids_count_up_from_the_seed() {
        let ids = ProducerIds::from_clock_ms(1_700_000_000_000);
        let a = ids.allocate();
        let b = ids.allocate();
        assert_eq!(
            a,
            ProducerIdAndEpoch {
                producer_id: 1_700_000_000_000_000,
                epoch: 0
            }
        );
        assert_eq!(b.producer_id, a.producer_id + 1);
        assert_eq!(b.epoch, 0);
        assert_eq!(ProducerIds::new(-5).allocate().producer_id, 0);
        let top = ProducerIds::new(i64::MAX);
        assert_eq!(top.allocate().producer_id, i64::MAX);
        assert_eq!(top.allocate().producer_id, 0);
        assert_eq!(
            ProducerIds::from_clock_ms(i64::MAX).allocate().producer_id,
            i64::MAX
        );
    }

    #[test]
    fn in_order_batches_append() {
        let mut p = producers();
        assert_eq!(produce(&mut p, 0, 0, 3, 0), Decision::Append);
        assert_eq!(produce(&mut p, 0, 3, 1, 3), Decision::Append);
        assert_eq!(produce(&mut p, 0, 4, 10, 4), Decision::Append);
        assert_eq!(p.last_sequence(PID), Some((0, 13)));
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn gap_is_out_of_order() {
        let mut p = producers();
        produce(&mut p, 0, 0, 3, 0);
        assert_eq!(p.check(PID, 0, 4, 1), Decision::OutOfOrder);
        assert_eq!(
            p.check(PID, 0, 2, 1),
            Decision::OutOfOrder,
            "overlap, not an exact retry"
        );
        assert_eq!(
            p.check(PID, 0, 0, 2),
            Decision::OutOfOrder,
            "same start, other length"
        );
        assert_eq!(
            Decision::OutOfOrder.error(),
            Some(ResponseError::OutOfOrderSequenceNumber)
        );
    }

    #[test]
    fn each_of_the_last_five_batches_is_a_duplicate() {
        let mut p = producers();
        for i in 0..7 {
            assert_eq!(
                produce(&mut p, 0, i * 2, 2, 100 + i64::from(i) * 10),
                Decision::Append
            );
        }
        // Batches 2..=6 are retained.
        for i in 2..7 {
            assert_eq!(
                p.check(PID, 0, i * 2, 2),
                Decision::Duplicate {
                    base_offset: 100 + i64::from(i) * 10
                }
            );
        }
        assert_eq!(Decision::Duplicate { base_offset: 1 }.error(), None);
        // A retry of a batch older than the window: Kafka answers OUT_OF_ORDER_SEQUENCE_NUMBER.
        assert_eq!(p.check(PID, 0, 2, 2), Decision::OutOfOrder);
        assert_eq!(p.check(PID, 0, 0, 2), Decision::OutOfOrder);
        // A duplicate does not change the state.
        assert_eq!(p.check(PID, 0, 14, 1), Decision::Append);
    }

    #[test]
    fn duplicate_needs_the_same_epoch() {
        let mut p = producers();
        produce(&mut p, 3, 0, 2, 50);
        assert_eq!(
            p.check(PID, 3, 0, 2),
            Decision::Duplicate { base_offset: 50 }
        );
        assert_eq!(p.check(PID, 2, 0, 2), Decision::InvalidEpoch);
        assert_eq!(p.check(PID, 4, 0, 2), Decision::Append, "new epoch at 0");
    }

    #[test]
    fn older_epoch_is_invalid() {
        let mut p = producers();
        produce(&mut p, 5, 0, 1, 0);
        assert_eq!(p.check(PID, 4, 1, 1), Decision::InvalidEpoch);
        assert_eq!(p.check(PID, 4, 0, 1), Decision::InvalidEpoch);
        assert_eq!(p.check(PID, -1, 1, 1), Decision::InvalidEpoch);
        assert_eq!(
            Decision::InvalidEpoch.error(),
            Some(ResponseError::InvalidProducerEpoch)
        );
    }

    #[test]
    fn epoch_bump_must_start_at_zero_and_resets_sequences() {
        let mut p = producers();
        for i in 0..5 {
            produce(&mut p, 0, i, 1, i64::from(i));
        }
        assert_eq!(
            p.check(PID, 1, 5, 1),
            Decision::OutOfOrder,
            "new epoch must restart at 0"
        );
        assert_eq!(produce(&mut p, 1, 0, 2, 10), Decision::Append);
        assert_eq!(p.last_sequence(PID), Some((1, 1)));
        // The old epoch's batches are forgotten and the old epoch is fenced.
        assert_eq!(p.check(PID, 0, 4, 1), Decision::InvalidEpoch);
        assert_eq!(
            p.check(PID, 1, 0, 2),
            Decision::Duplicate { base_offset: 10 }
        );
        assert_eq!(produce(&mut p, 1, 2, 1, 12), Decision::Append);
        // Epochs may jump by more than one.
        assert_eq!(produce(&mut p, 7, 0, 1, 13), Decision::Append);
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        let mut p = producers();
        let start = i32::MAX - 4;
        assert_eq!(produce(&mut p, 0, start, 3, 0), Decision::Append);
        assert_eq!(p.last_sequence(PID), Some((0, i32::MAX - 2)));
        // A batch spanning the wrap: MAX-1, MAX, 0, 1.
        assert_eq!(produce(&mut p, 0, i32::MAX - 1, 4, 3), Decision::Append);
        assert_eq!(p.last_sequence(PID), Some((0, 1)));
        assert_eq!(
            p.check(PID, 0, i32::MAX - 1, 4),
            Decision::Duplicate { base_offset: 3 }
        );
        assert_eq!(produce(&mut p, 0, 2, 1, 7), Decision::Append);

        // A batch ending exactly at MAX is followed by 0.
        let mut p = producers();
        assert_eq!(produce(&mut p, 0, i32::MAX - 1, 2, 0), Decision::Append);
        assert_eq!(p.last_sequence(PID), Some((0, i32::MAX)));
        assert_eq!(p.check(PID, 0, 1, 1), Decision::OutOfOrder);
        assert_eq!(produce(&mut p, 0, 0, 1, 2), Decision::Append);
    }

    #[test]
    fn last_sequence_arithmetic() {
        assert_eq!(last_sequence(0, 1), 0);
        assert_eq!(last_sequence(10, 5), 14);
        assert_eq!(last_sequence(i32::MAX, 1), i32::MAX);
        assert_eq!(last_sequence(i32::MAX, 2), 0);
        assert_eq!(last_sequence(i32::MAX, i32::MAX), i32::MAX - 2);
        assert!(in_sequence(-1, 0));
        assert!(in_sequence(i32::MAX, 0));
        assert!(!in_sequence(i32::MAX - 1, 0));
    }

    #[test]
    fn unknown_producer_accepts_any_sequence_like_kafka_2_5() {
        let mut p = producers();
        assert_eq!(p.check(PID, 0, 42, 1), Decision::Append);
        assert_eq!(p.check(PID, 3, 0, 1), Decision::Append);
        p.record(PID, 3, 42, 1, 0, 0);
        assert_eq!(p.check(PID, 3, 43, 1), Decision::Append);
    }

    #[test]
    fn unknown_producer_strict_policy() {
        let p = PartitionProducers::new(IdempotenceConfig {
            unknown_producer: UnknownProducerPolicy::RequireSequenceZero,
            ..IdempotenceConfig::default()
        });
        assert_eq!(p.check(PID, 0, 42, 1), Decision::UnknownProducer);
        assert_eq!(p.check(PID, 0, 0, 1), Decision::Append);
        assert_eq!(
            Decision::UnknownProducer.error(),
            Some(ResponseError::UnknownProducerId)
        );
    }

    #[test]
    fn non_idempotent_and_invalid_batches() {
        let mut p = producers();
        assert_eq!(p.check(NO_PRODUCER_ID, -1, -1, 5), Decision::Append);
        p.record(NO_PRODUCER_ID, -1, -1, 5, 0, 0);
        assert!(p.is_empty());
        assert_eq!(p.check(PID, 0, -1, 1), Decision::InvalidBatch);
        assert_eq!(p.check(PID, 0, 0, 0), Decision::InvalidBatch);
        assert_eq!(p.check(PID, 0, 0, -3), Decision::InvalidBatch);
        assert_eq!(
            Decision::InvalidBatch.error(),
            Some(ResponseError::InvalidRecord)
        );
        assert_eq!(Decision::Append.error(), None);
    }

    #[test]
    fn producers_are_independent() {
        let mut p = producers();
        p.record(1, 0, 0, 1, 0, 0);
        p.record(2, 4, 7, 1, 1, 0);
        assert_eq!(p.check(1, 0, 1, 1), Decision::Append);
        assert_eq!(p.check(2, 4, 8, 1), Decision::Append);
        assert_eq!(p.check(1, 0, 8, 1), Decision::OutOfOrder);
        assert_eq!(p.check(2, 0, 1, 1), Decision::InvalidEpoch);
    }

    #[test]
    fn expiry_forgets_idle_producers() {
        let mut p = PartitionProducers::new(IdempotenceConfig {
            producer_id_expiration_ms: 1000,
            ..IdempotenceConfig::default()
        });
        p.record(1, 0, 0, 1, 0, 0);
        p.record(2, 0, 0, 1, 1, 500);
        assert_eq!(p.expire(999), 0);
        assert_eq!(
            p.expire(1000),
            1,
            "idle for exactly the expiration time: expired, as in Kafka"
        );
        assert_eq!(p.last_sequence(1), None);
        assert_eq!(p.last_sequence(2), Some((0, 0)));
        // Appending refreshes the last-use time; a duplicate check does not.
        p.record(2, 0, 1, 1, 2, 1400);
        assert_eq!(p.check(2, 0, 1, 1), Decision::Duplicate { base_offset: 2 });
        assert_eq!(p.expire(2399), 0);
        assert_eq!(p.expire(2400), 1);
        assert!(p.is_empty());
        // An expired producer is unknown again: accepted at any sequence.
        assert_eq!(p.check(2, 0, 9, 1), Decision::Append);
        assert_eq!(p.expire(i64::MAX), 0);
        p.record(3, 0, 0, 1, 0, i64::MIN);
        assert_eq!(p.expire(i64::MAX), 1, "no overflow in now - last_used");
        assert_eq!(PartitionProducers::default().expire(0), 0);
        assert_eq!(
            IdempotenceConfig::default().producer_id_expiration_ms,
            86_400_000
        );
    }

    #[test]
    fn producer_limit_evicts_least_recently_used() {
        let mut p = PartitionProducers::new(IdempotenceConfig {
            producers_max: 2,
            ..IdempotenceConfig::default()
        });
        p.record(1, 0, 0, 1, 0, 10);
        p.record(2, 0, 0, 1, 1, 5);
        p.record(1, 0, 1, 1, 2, 20);
        p.record(3, 0, 0, 1, 3, 30);
        assert_eq!(p.len(), 2);
        assert_eq!(p.last_sequence(2), None, "least recently used goes first");
        assert_eq!(p.last_sequence(1), Some((0, 1)));
        assert_eq!(p.last_sequence(3), Some((0, 0)));
        // An existing producer never triggers an eviction.
        p.record(3, 0, 1, 1, 4, 40);
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn random_sequences_never_panic() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut p = PartitionProducers::new(IdempotenceConfig {
            producers_max: 8,
            ..IdempotenceConfig::default()
        });
        for now in 0..20_000 {
            let pid = rng.i64(-2..12);
            let epoch = rng.i16(-2..4);
            let seq = if rng.bool() {
                rng.i32(..)
            } else {
                rng.i32(-1..8)
            };
            let count = if rng.bool() {
                rng.i32(..)
            } else {
                rng.i32(0..4)
            };
            if p.check(pid, epoch, seq, count) == Decision::Append {
                p.record(pid, epoch, seq, count, now, now);
            }
            if now % 1000 == 0 {
                p.expire(now);
            }
            assert!(p.len() <= 8);
        }
    }
}
