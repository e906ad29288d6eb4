//! Token buckets by key: what every rate in chorus uses (sends per user, typing and
//! read notices per user, sign-ups and failed sign-ins per client address or name).
//!
//! A limiter allows `burst` actions at once per key, refilled at a steady rate; each
//! action takes one token. Buckets live in a few mutex-guarded shards, so callers on
//! many threads rarely meet. Keys may come from clients (usernames tried at sign-in),
//! so a shard never holds more than [`MAX_KEYS_PER_SHARD`] buckets: past that, it
//! forgets the full ones (the same as new ones) and, if that is not enough, the
//! fullest of the rest, down to three quarters, so that the next sweep is a quarter of
//! the shard's inserts away however many keys are active.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

/// Buckets a shard holds at most.
const MAX_KEYS_PER_SHARD: usize = 10_000;

/// What a full shard keeps after a sweep.
const KEPT_AFTER_SWEEP: usize = MAX_KEYS_PER_SHARD * 3 / 4;

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Allows `burst` actions at once per key, refilled at a steady rate.
pub struct RateLimiter<K> {
    /// One token comes back every this many milliseconds (kept in milliseconds so that
    /// whole windows give exact waits).
    ms_per_token: f64,
    burst: f64,
    shard_of: RandomState,
    shards: Vec<Mutex<HashMap<K, Bucket>>>,
}

impl<K: Hash + Eq> RateLimiter<K> {
    /// A limiter refilling `rate` tokens a second into buckets of `burst`.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self::with_period(1000.0 / f64::from(rate.max(1)), burst)
    }

    /// Buckets of `count` tokens, refilled from empty to full over `window`: `count`
    /// actions at once, then one every `window / count`.
    pub fn per_window(count: u32, window: Duration) -> Self {
        let count = count.max(1);
        Self::with_period(window.as_secs_f64() * 1000.0 / f64::from(count), count)
    }

    fn with_period(ms_per_token: f64, burst: u32) -> Self {
        Self {
            ms_per_token,
            burst: f64::from(burst.max(1)),
            shard_of: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// Takes one token for `key`, or says in how many milliseconds one will be there.
    pub fn check(&self, key: K) -> Result<(), u64> {
        self.check_at(key, Instant::now())
    }

    /// [`RateLimiter::check`] at `now` (tests bring their own clock).
    pub fn check_at(&self, key: K, now: Instant) -> Result<(), u64> {
        let mut map = self.shard(&key);
        if map.len() >= MAX_KEYS_PER_SHARD && !map.contains_key(&key) {
            self.make_room(&mut map, now);
        }
        let bucket = map.entry(key).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        self.refill(bucket, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait_ms = (1.0 - bucket.tokens) * self.ms_per_token;
            Err((wait_ms.ceil() as u64).max(1))
        }
    }

    /// Puts back a token [`RateLimiter::check_at`] took for `key` (the action it was
    /// taken for did not count after all).
    pub fn give_back(&self, key: &K, now: Instant) {
        let mut map = self.shard(key);
        if let Some(bucket) = map.get_mut(key) {
            self.refill(bucket, now);
            bucket.tokens = (bucket.tokens + 1.0).min(self.burst);
        }
    }

    fn shard(&self, key: &K) -> MutexGuard<'_, HashMap<K, Bucket>> {
        let shard = (self.shard_of.hash_one(key) % SHARDS as u64) as usize;
        self.shards[shard].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed_ms = now.saturating_duration_since(bucket.last).as_secs_f64() * 1000.0;
        bucket.tokens = (bucket.tokens + elapsed_ms / self.ms_per_token).min(self.burst);
        bucket.last = now.max(bucket.last);
    }

    /// Forgets full buckets and, when that leaves more than three quarters of the
    /// shard, the fullest of the rest: the keys closest to being forgotten anyway, so
    /// that the most throttled stay.
    fn make_room(&self, map: &mut HashMap<K, Bucket>, now: Instant) {
        map.retain(|_, b| {
            self.refill(b, now);
            b.tokens < self.burst
        });
        if map.len() > KEPT_AFTER_SWEEP {
            let excess = map.len() - KEPT_AFTER_SWEEP;
            let mut tokens: Vec<f64> = map.values().map(|b| b.tokens).collect();
            let first_of_fullest = tokens.len() - excess;
            let (_, threshold, _) = tokens.select_nth_unstable_by(first_of_fullest, f64::total_cmp);
            let threshold = *threshold;
            // Ties at the threshold go only as far as the excess needs.
            let above = tokens.iter().filter(|t| **t > threshold).count();
            let mut ties_to_drop = excess - above;
            map.retain(|_, b| {
                if b.tokens > threshold {
                    false
                } else if b.tokens == threshold && ties_to_drop > 0 {
                    ties_to_drop -= 1;
                    false
                } else {
                    true
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills_at_the_rate() {
        let limiter = RateLimiter::new(100, 500);
        let t0 = Instant::now();
        for _ in 0..500 {
            limiter.check_at("ada", t0).unwrap();
        }
        let wait = limiter.check_at("ada", t0).unwrap_err();
        assert_eq!(wait, 10, "one token every 10 ms at 100/s");
        let later = t0 + Duration::from_millis(100);
        for _ in 0..10 {
            limiter.check_at("ada", later).unwrap();
        }
        assert!(limiter.check_at("ada", later).is_err());
        assert!(limiter.check_at("bob", later).is_ok(), "per key");
    }

    #[test]
    fn a_window_allows_its_count_then_one_per_share_of_it() {
        let limiter = RateLimiter::per_window(3, Duration::from_secs(900));
        let t0 = Instant::now();
        for _ in 0..3 {
            limiter.check_at("ada", t0).unwrap();
        }
        assert_eq!(limiter.check_at("ada", t0), Err(300_000), "one every 300 s");
        limiter.give_back(&"ada", t0);
        limiter.check_at("ada", t0).unwrap();
        assert!(
            limiter
                .check_at("ada", t0 + Duration::from_secs(299))
                .is_err()
        );
        limiter
            .check_at("ada", t0 + Duration::from_secs(300))
            .unwrap();
    }

    #[test]
    fn a_moment_older_than_the_last_one_takes_no_tokens_back() {
        let limiter = RateLimiter::new(1, 1);
        let t1 = Instant::now() + Duration::from_secs(5);
        limiter.check_at(1, t1).unwrap();
        assert!(limiter.check_at(1, t1 - Duration::from_secs(5)).is_err());
        assert!(limiter.check_at(1, t1).is_err());
    }

    #[test]
    fn made_up_keys_cannot_grow_the_maps_without_bound_nor_free_a_throttled_key() {
        let limiter = RateLimiter::per_window(2, Duration::from_secs(60));
        let t0 = Instant::now();
        limiter.check_at(u64::MAX, t0).unwrap();
        limiter.check_at(u64::MAX, t0).unwrap();
        for key in 0..(SHARDS * MAX_KEYS_PER_SHARD * 2) as u64 {
            let _ = limiter.check_at(key, t0);
        }
        let held: usize = limiter.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(held <= SHARDS * MAX_KEYS_PER_SHARD, "{held} buckets");
        assert!(
            limiter.check_at(u64::MAX, t0).is_err(),
            "the emptied bucket was kept"
        );
    }

    #[test]
    fn full_buckets_are_forgotten_first() {
        let limiter = RateLimiter::new(1000, 1);
        let t0 = Instant::now();
        let old = SHARDS * MAX_KEYS_PER_SHARD / 2;
        for key in 0..old {
            limiter.check_at(key, t0).unwrap();
        }
        // A second later every one of those buckets is full again: the first sweep of
        // each shard forgets them and keeps the newcomers.
        let later = t0 + Duration::from_secs(1);
        for key in old..old * 3 {
            limiter.check_at(key, later).unwrap();
        }
        for shard in &limiter.shards {
            let shard = shard.lock().unwrap();
            assert!(
                shard.keys().all(|key| *key >= old),
                "an old bucket was kept"
            );
        }
    }
}
