//! A latency histogram made of atomics: recording is two relaxed
//! `fetch_add`s and a binary search over 17 bounds, with no lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::exposition::HistogramSnapshot;

/// Upper bounds of the latency buckets, in nanoseconds: from 0.5 ms (a
/// list from memory) to 2 min (a pull of a large image, a StopContainer
/// that waits out a long grace period). Anything slower lands in `+Inf`.
pub const LATENCY_BOUNDS_NS: [u64; 17] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
    120_000_000_000,
];

const SLOTS: usize = LATENCY_BOUNDS_NS.len() + 1;

/// Durations counted into [`LATENCY_BOUNDS_NS`] buckets.
///
/// Each observation lands in one slot (not cumulative: one add per
/// observation); a snapshot sums the slots up. A snapshot taken while
/// observations are recorded may miss the newest ones' sum or count, never
/// show a count that disagrees with its own buckets.
#[derive(Debug)]
pub struct Histogram {
    /// Observations per bucket; the last slot is above every bound.
    slots: [AtomicU64; SLOTS],
    /// Sum of the observations in nanoseconds (wraps after 584 years).
    sum_ns: AtomicU64,
}

impl Histogram {
    /// An empty histogram (usable in a `static`).
    pub const fn new() -> Self {
        Self {
            slots: [const { AtomicU64::new(0) }; SLOTS],
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Counts one duration.
    pub fn observe(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        // The first bound at or above the value: buckets are `le`.
        let slot = LATENCY_BOUNDS_NS.partition_point(|&bound| bound < ns);
        self.slots[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// How many durations were counted.
    pub fn count(&self) -> u64 {
        self.slots.iter().map(|s| s.load(Ordering::Relaxed)).sum()
    }

    /// The cumulative buckets, in seconds.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let mut buckets = Vec::with_capacity(LATENCY_BOUNDS_NS.len());
        for (bound, slot) in LATENCY_BOUNDS_NS.iter().zip(&self.slots) {
            running += slot.load(Ordering::Relaxed);
            buckets.push((*bound as f64 / 1e9, running));
        }
        let count = running + self.slots[SLOTS - 1].load(Ordering::Relaxed);
        HistogramSnapshot {
            buckets,
            count,
            sum: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_increase() {
        assert!(LATENCY_BOUNDS_NS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn bounds_are_written_as_round_seconds() {
        let h = Histogram::new();
        let les: Vec<String> = h
            .snapshot()
            .buckets
            .iter()
            .map(|(le, _)| super::super::exposition::Value::Float(*le).to_string())
            .collect();
        assert_eq!(
            les,
            [
                "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25",
                "0.5", "1", "2.5", "5", "10", "30", "60", "120"
            ]
        );
    }

    #[test]
    fn observations_land_in_le_buckets() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(100)); // <= 0.5 ms
        h.observe(Duration::from_micros(500)); // exactly on the bound: le
        h.observe(Duration::from_micros(501)); // next bucket, <= 1 ms
        h.observe(Duration::from_millis(300)); // <= 0.5 s
        h.observe(Duration::from_secs(600)); // above every bound
        let s = h.snapshot();
        let at = |le: f64| {
            s.buckets
                .iter()
                .find(|(b, _)| *b == le)
                .map(|(_, c)| *c)
                .unwrap_or_else(|| panic!("no bucket {le}"))
        };
        assert_eq!(at(0.0005), 2);
        assert_eq!(at(0.001), 3);
        assert_eq!(at(0.25), 3);
        assert_eq!(at(0.5), 4);
        assert_eq!(at(120.0), 4);
        assert_eq!(s.count, 5, "+Inf holds everything");
        assert_eq!(h.count(), 5);
        let expected = 0.0001 + 0.0005 + 0.000501 + 0.3 + 600.0;
        assert!((s.sum - expected).abs() < 1e-9, "{}", s.sum);
    }

    #[test]
    fn buckets_are_cumulative_and_monotonic() {
        let h = Histogram::new();
        for ms in [0, 3, 3, 70, 2_000, 45_000] {
            h.observe(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        assert!(s.buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{s:?}");
        assert_eq!(s.buckets.last().map(|b| b.1), Some(6));
        assert_eq!(s.count, 6);
    }

    #[test]
    fn concurrent_observations_are_all_counted() {
        let h = std::sync::Arc::new(Histogram::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        h.observe(Duration::from_micros(i));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("observer thread");
        }
        assert_eq!(h.snapshot().count, 40_000);
    }
}
