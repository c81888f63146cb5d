//! `usage_nano_cores`: the CPU rate over the last interval, from two
//! readings of a cumulative core-nanosecond counter.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Remembers the last CPU reading of each object (container or sandbox id)
/// and turns the next one into a rate.
///
/// Thread-safe; its lock is a `std` mutex held only for a map lookup,
/// never across an `.await`. Memory stays bounded: an id not sampled for
/// `max_idle` is dropped (sampling it again starts over), and
/// [`CpuRateKeeper::forget`] drops one at once.
#[derive(Debug)]
pub struct CpuRateKeeper {
    max_idle: Duration,
    min_interval: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, Entry>,
    last_sweep: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The reading the next rate is measured from.
    at: Instant,
    usage_core_ns: u64,
    /// The rate over the interval that ended at `at`.
    rate: Option<u64>,
    /// The latest sample of any kind, for eviction.
    seen: Instant,
}

impl CpuRateKeeper {
    /// A keeper that forgets ids not sampled for `max_idle` and measures
    /// over intervals of at least one second (see
    /// [`CpuRateKeeper::with_min_interval`]).
    pub fn new(max_idle: Duration) -> CpuRateKeeper {
        CpuRateKeeper::with_min_interval(max_idle, Duration::from_secs(1))
    }

    /// A keeper whose intervals are at least `min_interval` long: a sample
    /// that comes sooner after the last one (two clients asking at once)
    /// gets the last rate again instead of a noisy rate over a few
    /// milliseconds, and does not move the start of the next interval.
    pub fn with_min_interval(max_idle: Duration, min_interval: Duration) -> CpuRateKeeper {
        CpuRateKeeper {
            max_idle,
            min_interval,
            state: Mutex::new(State::default()),
        }
    }

    /// Records that `id` had used `usage_core_ns` core-nanoseconds at
    /// `at` and returns its usage in nano-cores (10⁹ = one core busy) over
    /// the last interval.
    ///
    /// `None` when there is no interval yet: the first sample of an id
    /// (or the first since it was forgotten), a second one sooner than the
    /// minimum interval, and the first after the counter went backwards
    /// (the cgroup was recreated; the new reading starts over).
    pub fn sample(&self, id: &str, usage_core_ns: u64, at: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        self.sweep(&mut state, at);
        let fresh = Entry {
            at,
            usage_core_ns,
            rate: None,
            seen: at,
        };
        let Some(entry) = state.entries.get_mut(id) else {
            state.entries.insert(id.to_string(), fresh);
            return None;
        };
        entry.seen = entry.seen.max(at);
        // A reading taken before the stored one, finished later by another
        // thread: it says nothing about the last interval.
        let Some(interval) = at.checked_duration_since(entry.at).filter(|d| !d.is_zero()) else {
            return entry.rate;
        };
        if usage_core_ns < entry.usage_core_ns {
            *entry = fresh;
            return None;
        }
        if interval < self.min_interval {
            return entry.rate;
        }
        let used = u128::from(usage_core_ns - entry.usage_core_ns);
        let rate = used * 1_000_000_000 / interval.as_nanos();
        let rate = u64::try_from(rate).unwrap_or(u64::MAX);
        *entry = Entry {
            rate: Some(rate),
            ..fresh
        };
        Some(rate)
    }

    /// Forgets `id` (its object was removed).
    pub fn forget(&self, id: &str) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.entries.remove(id);
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.entries.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops idle entries, at most once per `max_idle / 2` so a sample
    /// costs no scan of the map.
    fn sweep(&self, state: &mut State, now: Instant) {
        let due = match state.last_sweep {
            None => true,
            Some(last) => now.saturating_duration_since(last) >= self.max_idle / 2,
        };
        if !due {
            return;
        }
        state.last_sweep = Some(now);
        let max_idle = self.max_idle;
        state
            .entries
            .retain(|_, e| now.saturating_duration_since(e.seen) <= max_idle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn rate_over_the_last_interval() {
        let keeper = CpuRateKeeper::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(keeper.sample("a", 1_000_000_000, t0), None);
        // 1 core-second over 2 seconds: half a core.
        assert_eq!(
            keeper.sample("a", 2_000_000_000, t0 + 2 * SECOND),
            Some(500_000_000)
        );
        // The next interval starts where the last one ended: 3 cores busy.
        assert_eq!(
            keeper.sample("a", 5_000_000_000, t0 + 3 * SECOND),
            Some(3_000_000_000)
        );
        // Idle: zero, not None.
        assert_eq!(keeper.sample("a", 5_000_000_000, t0 + 4 * SECOND), Some(0));
        // Ids are independent.
        assert_eq!(keeper.sample("b", 5, t0 + 4 * SECOND), None);
    }

    #[test]
    fn rate_keeps_sub_second_precision() {
        let keeper = CpuRateKeeper::with_min_interval(Duration::from_secs(60), Duration::ZERO);
        let t0 = Instant::now();
        keeper.sample("a", 0, t0);
        // 1 ms of CPU over 3 ms of wall time.
        assert_eq!(
            keeper.sample("a", 1_000_000, t0 + Duration::from_millis(3)),
            Some(333_333_333)
        );
    }

    #[test]
    fn samples_closer_than_the_minimum_interval_get_the_last_rate() {
        let keeper = CpuRateKeeper::new(Duration::from_secs(60));
        let t0 = Instant::now();
        keeper.sample("a", 0, t0);
        // Too soon after the first sample: still no rate.
        let soon = t0 + Duration::from_millis(10);
        assert_eq!(keeper.sample("a", 10_000_000, soon), None);
        assert_eq!(
            keeper.sample("a", 1_000_000_000, t0 + SECOND),
            Some(1_000_000_000)
        );
        // A second client asking 5 ms later sees the same rate...
        let t1 = t0 + SECOND + Duration::from_millis(5);
        assert_eq!(keeper.sample("a", 1_005_000_000, t1), Some(1_000_000_000));
        // ...and the next interval is measured from t0 + 1 s, not from t1.
        assert_eq!(
            keeper.sample("a", 1_500_000_000, t0 + 2 * SECOND),
            Some(500_000_000)
        );
    }

    #[test]
    fn counter_going_backwards_starts_over() {
        let keeper = CpuRateKeeper::new(Duration::from_secs(60));
        let t0 = Instant::now();
        keeper.sample("a", 5_000_000_000, t0);
        assert_eq!(keeper.sample("a", 100, t0 + SECOND), None);
        assert_eq!(
            keeper.sample("a", 250_000_100, t0 + 2 * SECOND),
            Some(250_000_000)
        );
    }

    #[test]
    fn a_reading_older_than_the_stored_one_changes_nothing() {
        let keeper = CpuRateKeeper::new(Duration::from_secs(60));
        let t0 = Instant::now();
        keeper.sample("a", 0, t0);
        assert_eq!(
            keeper.sample("a", 2_000_000_000, t0 + 2 * SECOND),
            Some(1_000_000_000)
        );
        // Read before the last sample, stored after it.
        assert_eq!(
            keeper.sample("a", 1_000_000_000, t0 + SECOND),
            Some(1_000_000_000)
        );
        assert_eq!(
            keeper.sample("a", 2_000_000_000, t0 + 2 * SECOND),
            Some(1_000_000_000)
        );
        assert_eq!(
            keeper.sample("a", 4_000_000_000, t0 + 3 * SECOND),
            Some(2_000_000_000)
        );
    }

    #[test]
    fn huge_counters_do_not_overflow() {
        let keeper = CpuRateKeeper::with_min_interval(Duration::from_secs(60), Duration::ZERO);
        let t0 = Instant::now();
        keeper.sample("a", 0, t0);
        assert_eq!(
            keeper.sample("a", u64::MAX, t0 + Duration::from_nanos(1)),
            Some(u64::MAX)
        );
    }

    #[test]
    fn idle_ids_are_dropped_and_forget_drops_one() {
        let max_idle = Duration::from_secs(60);
        let keeper = CpuRateKeeper::new(max_idle);
        let t0 = Instant::now();
        keeper.sample("old", 0, t0);
        keeper.sample("kept", 0, t0);
        keeper.sample("kept", 0, t0 + max_idle / 2);
        assert_eq!(keeper.len(), 2);
        let later = t0 + max_idle + SECOND;
        keeper.sample("new", 0, later);
        assert_eq!(
            keeper.len(),
            2,
            "\"old\" is gone, \"kept\" and \"new\" remain"
        );
        // A dropped id starts over.
        assert_eq!(keeper.sample("old", 1_000_000_000, later), None);
        keeper.forget("old");
        keeper.forget("kept");
        keeper.forget("new");
        assert!(keeper.is_empty());
    }

    #[test]
    fn shared_between_threads() {
        let keeper = std::sync::Arc::new(CpuRateKeeper::new(Duration::from_secs(60)));
        let t0 = Instant::now();
        let threads: Vec<_> = (0..8u64)
            .map(|n| {
                let keeper = std::sync::Arc::clone(&keeper);
                std::thread::spawn(move || {
                    let id = format!("c{n}");
                    keeper.sample(&id, 0, t0);
                    keeper.sample(&id, n * 1_000_000_000, t0 + SECOND)
                })
            })
            .collect();
        for (n, thread) in (0..8u64).zip(threads) {
            assert_eq!(thread.join().expect("thread"), Some(n * 1_000_000_000));
        }
        assert_eq!(keeper.len(), 8);
    }
}
