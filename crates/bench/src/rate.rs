//! Send scheduling: as fast as possible, or a fixed rate whose latency is measured from each
//! message's *intended* send time, so that a stalled broker cannot hide its stall by slowing
//! the producer down (no coordinated omission).
//!
//! Message `i` of a fixed-rate producer is due at `start + i / rate`. The producer sends every
//! message that is due (back to back when it is behind), stamping each with its intended time,
//! then sleeps until the next one is due.

/// When each message of one producer should go out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    /// No schedule: send as fast as the client and broker allow; stamp the actual time.
    Max,
    /// `rate` messages per second from `start_ns`.
    Fixed { start_ns: u64, rate: f64 },
}

impl Schedule {
    /// A fixed rate; `rate` must be positive and finite.
    pub fn fixed(start_ns: u64, rate: f64) -> Schedule {
        assert!(rate.is_finite() && rate > 0.0, "rate must be positive");
        Schedule::Fixed { start_ns, rate }
    }

    /// The intended send time of message `i`; `None` at maximum rate.
    pub fn intended_ns(&self, i: u64) -> Option<u64> {
        match *self {
            Schedule::Max => None,
            Schedule::Fixed { start_ns, rate } => {
                Some(start_ns + (i as f64 * 1e9 / rate).round() as u64)
            }
        }
    }

    /// How many messages (counted from 0) are due at `now_ns`; `u64::MAX` at maximum rate.
    pub fn due(&self, now_ns: u64) -> u64 {
        match *self {
            Schedule::Max => u64::MAX,
            Schedule::Fixed { start_ns, rate } => {
                if now_ns < start_ns {
                    0
                } else {
                    // Message i is due when start + i/rate <= now, i.e. i <= (now-start)*rate.
                    let mut n = ((now_ns - start_ns) as f64 * rate / 1e9).floor() as u64 + 1;
                    // Guard the float boundary against the rounding in `intended_ns`.
                    while n > 0 && self.intended_ns(n - 1).is_some_and(|t| t > now_ns) {
                        n -= 1;
                    }
                    while self.intended_ns(n).is_some_and(|t| t <= now_ns) {
                        n += 1;
                    }
                    n
                }
            }
        }
    }

    /// The stamp of message `i` sent at `now_ns`: the intended time, or now at maximum rate.
    pub fn stamp_ns(&self, i: u64, now_ns: u64) -> u64 {
        self.intended_ns(i).unwrap_or(now_ns)
    }
}

/// Splits a total rate over `n` producers; each gets an equal share.
pub fn per_producer(total: f64, n: usize) -> f64 {
    total / n.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_rate_intended_times_and_due_counts() {
        let s = Schedule::fixed(1_000, 1_000.0); // one per millisecond from t = 1 µs
        assert_eq!(s.intended_ns(0), Some(1_000));
        assert_eq!(s.intended_ns(3), Some(3_001_000));
        assert_eq!(s.due(0), 0);
        assert_eq!(s.due(1_000), 1);
        assert_eq!(s.due(1_000_999), 1);
        assert_eq!(s.due(1_001_000), 2);
        assert_eq!(s.due(1_000 + 1_000_000_000), 1_001);
    }

    #[test]
    fn a_late_producer_keeps_the_intended_stamps() {
        // The producer was stalled for 50 ms: 50 messages are due at once, and each carries
        // the time it should have gone out, so the stall shows up in the latency.
        let s = Schedule::fixed(0, 1_000.0);
        let now = 50_000_000;
        let due = s.due(now);
        assert_eq!(due, 51);
        let stamps: Vec<u64> = (0..due).map(|i| s.stamp_ns(i, now)).collect();
        assert_eq!(stamps[0], 0);
        assert_eq!(stamps[10], 10_000_000);
        assert!(stamps.windows(2).all(|w| w[0] < w[1]));
        assert!(stamps.iter().all(|t| *t <= now));
    }

    #[test]
    fn due_is_exact_for_awkward_rates() {
        for rate in [3.0, 7_777.7, 123_456.0, 0.5] {
            let s = Schedule::fixed(17, rate);
            for i in [0u64, 1, 2, 99, 12_345] {
                let t = s.intended_ns(i).unwrap();
                assert_eq!(s.due(t), i + 1, "rate {rate} i {i}");
                if t > 17 {
                    assert_eq!(s.due(t - 1), i, "rate {rate} i {i}");
                }
            }
        }
    }

    #[test]
    fn max_rate_stamps_the_actual_time() {
        assert_eq!(Schedule::Max.stamp_ns(5, 77), 77);
        assert_eq!(Schedule::Max.due(0), u64::MAX);
        assert_eq!(per_producer(1_000.0, 4), 250.0);
        assert_eq!(per_producer(1_000.0, 0), 1_000.0);
    }
}
