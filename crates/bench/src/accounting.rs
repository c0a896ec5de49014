//! Message accounting: what was sent, confirmed and received, and from that the lost,
//! duplicated and out-of-order counts.
//!
//! Each producer keeps a [`Ledger`] (sequence numbers are dense from 0, so "sent" is a count
//! and "confirmed" a bit set). Each consumer keeps an [`RxTracker`] with one bit set per
//! producer. [`tally`] merges them: a message seen by two consumers (or twice by one) is a
//! duplicate; a message confirmed and never received is lost.

use serde::{Deserialize, Serialize};

/// A growable bit set indexed by sequence number.
#[derive(Debug, Clone, Default)]
pub struct BitSet {
    words: Vec<u64>,
    ones: u64,
}

impl BitSet {
    /// Sets `i`; returns whether it was already set.
    pub fn set(&mut self, i: u64) -> bool {
        let (w, b) = ((i / 64) as usize, i % 64);
        if w >= self.words.len() {
            // Grow geometrically: sequence numbers arrive roughly in order.
            let want = (w + 1).max(self.words.len() * 2);
            self.words.resize(want, 0);
        }
        let mask = 1u64 << b;
        let was = self.words[w] & mask != 0;
        if !was {
            self.words[w] |= mask;
            self.ones += 1;
        }
        was
    }

    pub fn get(&self, i: u64) -> bool {
        let (w, b) = ((i / 64) as usize, i % 64);
        self.words.get(w).is_some_and(|x| x & (1 << b) != 0)
    }

    /// Number of set bits.
    pub fn count(&self) -> u64 {
        self.ones
    }

    fn word(&self, w: usize) -> u64 {
        self.words.get(w).copied().unwrap_or(0)
    }

    /// ORs `other` into `self`; returns how many bits were set in both.
    pub fn merge(&mut self, other: &BitSet) -> u64 {
        if other.words.len() > self.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        let mut both = 0u64;
        for (i, o) in other.words.iter().enumerate() {
            both += u64::from((self.words[i] & o).count_ones());
            self.words[i] |= o;
        }
        self.ones = self.words.iter().map(|w| u64::from(w.count_ones())).sum();
        both
    }

    /// Bits in `0..n` that are set here and not in `other`.
    pub fn count_and_not(&self, other: &BitSet, n: u64) -> u64 {
        let full = (n / 64) as usize;
        let mut c: u64 = (0..full)
            .map(|w| u64::from((self.word(w) & !other.word(w)).count_ones()))
            .sum();
        let rest = n % 64;
        if rest > 0 {
            let mask = (1u64 << rest) - 1;
            c += u64::from((self.word(full) & !other.word(full) & mask).count_ones());
        }
        c
    }
}

/// One producer's side: how many it sent, which were confirmed or nacked.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    /// Messages handed to the client library; their sequence numbers are `0..sent`.
    pub sent: u64,
    pub confirmed: BitSet,
    pub nacked: u64,
    /// Publishes that failed in the client (connection lost...): never on the wire for sure.
    pub failed: u64,
}

/// One consumer's view of what arrived, per producer.
#[derive(Debug, Clone, Default)]
pub struct RxTracker {
    seen: Vec<BitSet>,
    /// Highest sequence seen per (producer, lane): `last[producer * lanes + seq % lanes]`.
    last: Vec<Option<u64>>,
    /// Ordering lanes per producer (0 or 1: one): see [`RxTracker::with_lanes`].
    lanes: u64,
    /// Deliveries, duplicates included.
    pub deliveries: u64,
    /// Deliveries of a sequence number this consumer had already seen.
    pub duplicates: u64,
    /// Deliveries with a lower sequence number than one seen before from the same producer.
    pub out_of_order: u64,
    /// Payloads that are not ours (too short, unknown producer).
    pub foreign: u64,
}

impl RxTracker {
    pub fn new(producers: usize) -> RxTracker {
        RxTracker::with_lanes(producers, 1)
    }

    /// A tracker for producers whose messages are ordered only within `lanes` lanes, message
    /// `seq` in lane `seq % lanes` (Kafka: a producer spreads its messages round-robin over the
    /// partitions, and order holds per partition only). A message is out of order when it
    /// comes after a higher sequence number of the same producer and lane.
    pub fn with_lanes(producers: usize, lanes: usize) -> RxTracker {
        let lanes = lanes.max(1);
        RxTracker {
            seen: vec![BitSet::default(); producers],
            last: vec![None; producers * lanes],
            lanes: lanes as u64,
            ..RxTracker::default()
        }
    }

    /// Records one delivery (in lane `seq % lanes`).
    pub fn record(&mut self, producer: u32, seq: u64) {
        self.record_in(producer, seq, (seq % self.lanes.max(1)) as usize);
    }

    /// Records one delivery in a lane the caller knows (Kafka: the partition it came from);
    /// a lane out of range counts as foreign.
    pub fn record_in(&mut self, producer: u32, seq: u64, lane: usize) {
        self.deliveries += 1;
        let p = producer as usize;
        let lanes = self.lanes.max(1) as usize;
        if p >= self.seen.len() || lane >= lanes {
            self.foreign += 1;
            return;
        }
        if self.seen[p].set(seq) {
            self.duplicates += 1;
            return;
        }
        let l = p * lanes + lane;
        match self.last[l] {
            Some(last) if seq < last => self.out_of_order += 1,
            _ => self.last[l] = Some(seq),
        }
    }
}

/// The run's accounting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub sent: u64,
    pub confirmed: u64,
    pub nacked: u64,
    pub failed: u64,
    /// Distinct messages received.
    pub received: u64,
    /// Deliveries of a message already received (by any consumer).
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Confirmed and never received.
    pub lost: u64,
    /// Sent without a confirm (none asked, or none came) and never received: not a loss by
    /// any guarantee, but reported.
    pub unconfirmed_not_received: u64,
    pub foreign: u64,
    /// Fan-out runs (MQTT topics) only: copies due, the sum over producers of messages sent
    /// times subscribers of their topic. Then `received`, `lost` and
    /// `unconfirmed_not_received` count copies (one per subscriber), and
    /// `received + lost + unconfirmed_not_received == copies_expected`.
    #[serde(default)]
    pub copies_expected: u64,
}

/// Merges every producer's ledger and every consumer's tracker.
/// With `consumers_ran` false (a publish-only run) nothing counts as lost.
pub fn tally(ledgers: &[Ledger], trackers: &[RxTracker], consumers_ran: bool) -> Tally {
    let mut t = Tally::default();
    for tr in trackers {
        t.duplicated += tr.duplicates;
        t.out_of_order += tr.out_of_order;
        t.foreign += tr.foreign;
    }
    for (p, l) in ledgers.iter().enumerate() {
        t.sent += l.sent;
        t.confirmed += l.confirmed.count();
        t.nacked += l.nacked;
        t.failed += l.failed;
        let mut got = BitSet::default();
        for tr in trackers {
            if let Some(s) = tr.seen.get(p) {
                t.duplicated += got.merge(s);
            }
        }
        // Sequence numbers beyond `sent` cannot be ours.
        let beyond = got.count() - got.count_and_not(&BitSet::default(), l.sent);
        t.foreign += beyond;
        t.received += got.count() - beyond;
        if consumers_ran {
            t.lost += l.confirmed.count_and_not(&got, l.sent);
            let mut either = got.clone();
            either.merge(&l.confirmed);
            t.unconfirmed_not_received += l.sent - either.count_and_not(&BitSet::default(), l.sent);
        }
    }
    t
}

/// Like [`tally`], for fan-out (MQTT topics): each consumer `c` with `subscribed(p, c)` is due
/// its own copy of every message of producer `p`. A copy is lost when the message was confirmed
/// and that subscriber never got it; a duplicate is a second delivery to the same subscriber;
/// a delivery to a consumer not subscribed to the producer's topic is foreign.
pub fn tally_fanout(
    ledgers: &[Ledger],
    trackers: &[RxTracker],
    subscribed: impl Fn(usize, usize) -> bool,
    consumers_ran: bool,
) -> Tally {
    let mut t = Tally::default();
    for tr in trackers {
        t.duplicated += tr.duplicates;
        t.out_of_order += tr.out_of_order;
        t.foreign += tr.foreign;
    }
    let none = BitSet::default();
    for (p, l) in ledgers.iter().enumerate() {
        t.sent += l.sent;
        t.confirmed += l.confirmed.count();
        t.nacked += l.nacked;
        t.failed += l.failed;
        for (c, tr) in trackers.iter().enumerate() {
            let got = tr.seen.get(p).unwrap_or(&none);
            let mine = got.count_and_not(&none, l.sent);
            let beyond = got.count() - mine;
            if !subscribed(p, c) {
                t.foreign += got.count();
                continue;
            }
            t.foreign += beyond;
            t.received += mine;
            t.copies_expected += l.sent;
            if consumers_ran {
                t.lost += l.confirmed.count_and_not(got, l.sent);
                let mut either = got.clone();
                either.merge(&l.confirmed);
                t.unconfirmed_not_received += l.sent - either.count_and_not(&none, l.sent);
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_given_by_the_caller() {
        // Runs of two records per lane (Kafka sticky partitioning over 2 partitions):
        // 0, 1 in lane 0; 2, 3 in lane 1; 4, 5 in lane 0.
        let mut t = RxTracker::with_lanes(1, 2);
        for (seq, lane) in [(2, 1), (0, 0), (3, 1), (1, 0), (4, 0), (5, 0)] {
            t.record_in(0, seq, lane);
        }
        assert_eq!((t.deliveries, t.out_of_order, t.duplicates), (6, 0, 0));
        // Lane 0 going back is out of order; an unknown lane is foreign.
        t.record_in(0, 3, 0);
        assert_eq!(t.duplicates, 1, "3 was seen in lane 1");
        t.record_in(0, 7, 0);
        t.record_in(0, 6, 0);
        assert_eq!(t.out_of_order, 1);
        t.record_in(0, 8, 2);
        assert_eq!(t.foreign, 1);
    }

    #[test]
    fn lanes_order_per_lane_only() {
        // Producer 0 over 3 lanes (Kafka partitions): lane 0 = 0, 3, 6; lane 1 = 1, 4; lane 2 = 2, 5.
        // Lanes drained one after the other: no reordering within a lane.
        let mut t = RxTracker::with_lanes(1, 3);
        for seq in [0, 3, 6, 1, 4, 2, 5] {
            t.record(0, seq);
        }
        assert_eq!((t.deliveries, t.out_of_order, t.duplicates), (7, 0, 0));
        // Within lane 1, 7 before 4: one out of order; a redelivery of 3: one duplicate.
        t.record(0, 7);
        t.record(0, 3);
        let mut u = RxTracker::with_lanes(1, 3);
        for seq in [1, 7, 4] {
            u.record(0, seq);
        }
        assert_eq!((u.out_of_order, t.duplicates), (1, 1));
        // One lane is the plain tracker: any lower sequence is out of order.
        let mut v = RxTracker::with_lanes(1, 1);
        for seq in [0, 3, 1] {
            v.record(0, seq);
        }
        assert_eq!(v.out_of_order, 1);
        // The tally of lane trackers is the usual one.
        let l = ledger(8, 0..8);
        let tl = tally(&[l], &[t], true);
        assert_eq!((tl.received, tl.lost, tl.duplicated), (8, 0, 1));
    }

    fn ledger(sent: u64, confirmed: impl IntoIterator<Item = u64>) -> Ledger {
        let mut l = Ledger {
            sent,
            ..Ledger::default()
        };
        for s in confirmed {
            l.confirmed.set(s);
        }
        l
    }

    #[test]
    fn bitset_set_get_merge_and_difference() {
        let mut a = BitSet::default();
        assert!(!a.set(3));
        assert!(a.set(3));
        assert!(!a.set(1000));
        assert!(a.get(3) && a.get(1000) && !a.get(4) && !a.get(1_000_000));
        assert_eq!(a.count(), 2);
        let mut b = BitSet::default();
        b.set(3);
        b.set(64);
        assert_eq!(a.merge(&b), 1);
        assert_eq!(a.count(), 3);
        assert_eq!(a.count_and_not(&b, 2000), 1); // 1000
        assert_eq!(a.count_and_not(&b, 1000), 0); // 1000 is outside 0..1000
        assert_eq!(a.count_and_not(&BitSet::default(), 65), 2);
    }

    #[test]
    fn everything_received_once_in_order() {
        let mut rx = RxTracker::new(2);
        for s in 0..100 {
            rx.record(0, s);
            rx.record(1, s);
        }
        let t = tally(&[ledger(100, 0..100), ledger(100, 0..100)], &[rx], true);
        assert_eq!(t.sent, 200);
        assert_eq!(t.confirmed, 200);
        assert_eq!(t.received, 200);
        assert_eq!(
            (t.lost, t.duplicated, t.out_of_order, t.foreign),
            (0, 0, 0, 0)
        );
        assert_eq!(t.unconfirmed_not_received, 0);
    }

    #[test]
    fn loss_is_confirmed_and_never_received() {
        let mut rx = RxTracker::new(1);
        for s in (0..10).filter(|s| *s != 4 && *s != 8) {
            rx.record(0, s);
        }
        // 8 was never confirmed: missing, but not a loss.
        let t = tally(&[ledger(10, (0..10).filter(|s| *s != 8))], &[rx], true);
        assert_eq!(t.received, 8);
        assert_eq!(t.lost, 1);
        assert_eq!(t.unconfirmed_not_received, 1);
    }

    #[test]
    fn duplicates_within_and_across_consumers() {
        let mut a = RxTracker::new(1);
        let mut b = RxTracker::new(1);
        for s in 0..5 {
            a.record(0, s);
        }
        a.record(0, 2); // redelivered to the same consumer
        b.record(0, 3); // and another to a second consumer
        b.record(0, 5);
        let t = tally(&[ledger(6, 0..6)], &[a, b], true);
        assert_eq!(t.received, 6);
        assert_eq!(t.duplicated, 2);
        assert_eq!(t.lost, 0);
        assert_eq!(t.out_of_order, 0);
    }

    #[test]
    fn reorder_counts_messages_that_arrive_after_a_later_one() {
        let mut rx = RxTracker::new(1);
        for s in [0, 1, 3, 2, 4, 6, 5] {
            rx.record(0, s);
        }
        let t = tally(&[ledger(7, 0..7)], &[rx], true);
        assert_eq!(t.out_of_order, 2);
        assert_eq!(t.duplicated, 0);
        assert_eq!(t.received, 7);
    }

    #[test]
    fn foreign_payloads_and_publish_only_runs() {
        let mut rx = RxTracker::new(1);
        rx.record(5, 0); // unknown producer
        rx.record(0, 99); // beyond what producer 0 sent
        rx.record(0, 0);
        let t = tally(&[ledger(3, 0..3)], &[rx], true);
        assert_eq!(t.foreign, 2);
        assert_eq!(t.received, 1);
        assert_eq!(t.lost, 2);
        let t = tally(&[ledger(3, 0..3)], &[], false);
        assert_eq!((t.received, t.lost, t.unconfirmed_not_received), (0, 0, 0));
    }

    #[test]
    fn fanout_counts_one_copy_per_subscriber() {
        // Producer 0 → topic 0 (consumers 0 and 2), producer 1 → topic 1 (consumer 1).
        let sub = |p: usize, c: usize| p % 2 == c % 2;
        let (mut c0, mut c1, mut c2) = (RxTracker::new(2), RxTracker::new(2), RxTracker::new(2));
        for s in 0..10 {
            c0.record(0, s);
            if s != 7 {
                c2.record(0, s); // consumer 2 misses message 7 of producer 0
            }
        }
        c2.record(0, 3); // and gets 3 twice
        for s in [0, 2, 1, 3] {
            c1.record(1, s); // out of order
        }
        c1.record(0, 0); // a message of a topic it never subscribed to
        let ledgers = [ledger(10, 0..10), ledger(5, 0..4)];
        let t = tally_fanout(&ledgers, &[c0, c1, c2], sub, true);
        assert_eq!(t.sent, 15);
        assert_eq!(t.copies_expected, 10 * 2 + 5);
        assert_eq!(t.received, 10 + 9 + 4);
        assert_eq!(t.lost, 1);
        assert_eq!(t.unconfirmed_not_received, 1); // producer 1's message 4
        assert_eq!(t.duplicated, 1);
        assert_eq!(t.out_of_order, 1);
        assert_eq!(t.foreign, 1);
        assert_eq!(
            t.received + t.lost + t.unconfirmed_not_received,
            t.copies_expected
        );
        // Publish only: nothing is lost.
        let t = tally_fanout(&ledgers, &[], sub, false);
        assert_eq!((t.received, t.lost, t.copies_expected), (0, 0, 0));
    }
}
