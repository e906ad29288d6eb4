//! Shared measurements: counters (atomics), latency histograms (sharded so that the
//! readers rarely meet on a lock; merged at the end) and the measured window.

use crate::codec::Phase;
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// Largest recorded value: 60 s in microseconds.
pub(crate) const MAX_US: u64 = 60_000_000;

/// A histogram of microseconds, 1 µs ..= 60 s, three significant digits.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

/// Histograms split in shards; a recorder picks its shard by a stable hint (its
/// connection's index), so two readers seldom wait on the same lock.
pub(crate) struct Sharded {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Sharded {
    /// `n` empty shards (at least one).
    pub(crate) fn new(n: usize) -> Self {
        Self {
            shards: (0..n.max(1)).map(|_| Mutex::new(new_histogram())).collect(),
        }
    }

    /// Records `us` microseconds (clamped to 1 µs ..= 60 s).
    pub(crate) fn record(&self, hint: usize, us: u64) {
        let shard = &self.shards[hint % self.shards.len()];
        let mut h = shard.lock().unwrap_or_else(|e| e.into_inner());
        h.saturating_record(us.clamp(1, MAX_US));
    }

    /// All shards added together.
    pub(crate) fn merged(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for shard in &self.shards {
            let h = shard.lock().unwrap_or_else(|e| e.into_inner());
            all.add(&*h).expect("same bounds");
        }
        all
    }
}

/// The measured window in [`crate::codec::now_ns`] time; empty until set.
pub(crate) struct Window {
    start: AtomicU64,
    end: AtomicU64,
}

impl Window {
    /// A window that measures nothing yet.
    pub(crate) fn unset() -> Self {
        Self {
            start: AtomicU64::new(u64::MAX),
            end: AtomicU64::new(u64::MAX),
        }
    }

    /// Measure sends with `start <= ts < end`.
    pub(crate) fn set(&self, start: u64, end: u64) {
        self.end.store(end, Relaxed);
        self.start.store(start, Relaxed);
    }

    /// Start of the window.
    pub(crate) fn start(&self) -> u64 {
        self.start.load(Relaxed)
    }

    /// End of the window.
    pub(crate) fn end(&self) -> u64 {
        self.end.load(Relaxed)
    }

    /// The phase of a send made at `ts`.
    pub(crate) fn phase(&self, ts: u64) -> Phase {
        if ts < self.start.load(Relaxed) {
            Phase::Warmup
        } else if ts < self.end.load(Relaxed) {
            Phase::Measured
        } else {
            Phase::After
        }
    }
}

/// Every counter of a run. "Measured" counts are of messages sent in the window.
#[derive(Default)]
pub(crate) struct Counters {
    /// Open loop: sends the scheduler issued in the window (the offered load).
    pub scheduled: AtomicU64,
    /// Send commands handed to writers and not written yet.
    pub queued: AtomicI64,
    /// Measured sends written to a socket.
    pub sent: AtomicU64,
    /// All sends written (warm-up included).
    pub sent_total: AtomicU64,
    /// Deliveries expected for the measured sends: members of the conversation each.
    pub expected: AtomicU64,
    /// `accepted` frames for measured sends.
    pub accepted: AtomicU64,
    /// `message` frames received for measured sends (first copy per session).
    pub delivered: AtomicU64,
    /// All first copies of benchmark messages received (warm-up included).
    pub delivered_total: AtomicU64,
    /// Messages a session received twice (same `seq`).
    pub duplicates: AtomicU64,
    /// `seq`s a session never received before a later one (server gap filling failed).
    pub seq_gaps: AtomicU64,
    /// Messages delivered by a `sync` replay after a reconnect.
    pub replayed: AtomicU64,
    /// Unconfirmed sends sent again after a reconnect (same `client_msg_id`).
    pub resent: AtomicU64,
    /// Errors answering warm-up sends.
    pub warmup_errors: AtomicU64,
    /// Connections open now.
    pub open: AtomicI64,
    /// Successful reconnects.
    pub reconnects: AtomicU64,
    /// Clients that could not reconnect.
    pub reconnect_failures: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    /// Counts one error under `code`.
    pub(crate) fn error(&self, code: &str) {
        let mut e = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        match e.get_mut(code) {
            Some(n) => *n += 1,
            None => {
                e.insert(code.to_owned(), 1);
            }
        }
    }

    /// Errors by code.
    pub(crate) fn errors(&self) -> BTreeMap<String, u64> {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Errors in total.
    pub(crate) fn error_count(&self) -> u64 {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .sum()
    }
}

/// Reads a relaxed counter.
pub(crate) fn get(a: &AtomicU64) -> u64 {
    a.load(Relaxed)
}

/// Adds to a relaxed counter.
pub(crate) fn add(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_merge_into_one_histogram() {
        let s = Sharded::new(4);
        for i in 0..100u64 {
            s.record(i as usize, i * 1000);
        }
        s.record(0, u64::MAX);
        let h = s.merged();
        assert_eq!(h.len(), 101);
        assert_eq!(h.min(), 1);
        assert!(h.max() >= MAX_US && h.max() <= MAX_US + MAX_US / 1000);
    }

    #[test]
    fn the_window_classifies_send_times() {
        let w = Window::unset();
        assert_eq!(w.phase(5), Phase::Warmup);
        w.set(10, 20);
        assert_eq!(w.phase(9), Phase::Warmup);
        assert_eq!(w.phase(10), Phase::Measured);
        assert_eq!(w.phase(19), Phase::Measured);
        assert_eq!(w.phase(20), Phase::After);
    }

    #[test]
    fn errors_are_counted_by_code() {
        let c = Counters::default();
        c.error("rate_limited");
        c.error("rate_limited");
        c.error("closed_1008");
        assert_eq!(c.error_count(), 3);
        assert_eq!(c.errors()["rate_limited"], 2);
    }
}
