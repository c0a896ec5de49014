//! Latency histograms (HdrHistogram, nanoseconds, 3 significant digits) and their summary.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency recorded exactly: 10 minutes. Larger values are clamped to it.
const HIGHEST_NS: u64 = 600_000_000_000;

/// A latency histogram in nanoseconds.
#[derive(Debug, Clone)]
pub struct Latency {
    h: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl Latency {
    pub fn new() -> Latency {
        Latency {
            h: Histogram::new_with_bounds(1_000, HIGHEST_NS, 3).expect("valid histogram bounds"),
        }
    }

    /// Records one latency; values above the range are clamped, never dropped.
    pub fn record(&mut self, ns: u64) {
        self.h.saturating_record(ns.clamp(1_000, HIGHEST_NS));
    }

    /// Adds another histogram's counts to this one.
    pub fn merge(&mut self, other: &Latency) {
        self.h.add(&other.h).expect("same bounds, cannot fail");
    }

    pub fn count(&self) -> u64 {
        self.h.len()
    }

    pub fn summary(&self) -> Summary {
        let us = |ns: u64| ns as f64 / 1_000.0;
        if self.h.is_empty() {
            return Summary::default();
        }
        Summary {
            count: self.h.len(),
            p50_us: us(self.h.value_at_quantile(0.50)),
            p99_us: us(self.h.value_at_quantile(0.99)),
            p999_us: us(self.h.value_at_quantile(0.999)),
            max_us: us(self.h.max()),
            mean_us: self.h.mean() / 1_000.0,
        }
    }
}

/// Percentiles in microseconds (1 µs resolution floor; 3 significant digits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= b * 0.001 + 1.0
    }

    #[test]
    fn percentiles_of_a_uniform_range() {
        let mut l = Latency::new();
        for us in 1..=10_000u64 {
            l.record(us * 1_000);
        }
        let s = l.summary();
        assert_eq!(s.count, 10_000);
        assert!(close(s.p50_us, 5_000.0), "{s:?}");
        assert!(close(s.p99_us, 9_900.0), "{s:?}");
        assert!(close(s.p999_us, 9_990.0), "{s:?}");
        assert!(close(s.max_us, 10_000.0), "{s:?}");
    }

    #[test]
    fn merging_equals_recording_into_one() {
        let (mut a, mut b, mut both) = (Latency::new(), Latency::new(), Latency::new());
        for i in 0..1_000u64 {
            let v = 10_000 + i * i * 37;
            if i % 3 == 0 {
                a.record(v)
            } else {
                b.record(v)
            }
            both.record(v);
        }
        a.merge(&b);
        assert_eq!(a.summary(), both.summary());
    }

    #[test]
    fn out_of_range_values_are_clamped_not_lost() {
        let mut l = Latency::new();
        l.record(0);
        l.record(u64::MAX);
        let s = l.summary();
        assert_eq!(s.count, 2);
        assert!(s.max_us >= 599_000_000.0);
        assert_eq!(Latency::new().summary(), Summary::default());
    }
}
