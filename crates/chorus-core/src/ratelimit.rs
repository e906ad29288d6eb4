//! Token buckets by key: what every per-user (or per-anything) rate in chorus uses.
//!
//! A limiter refills `rate` tokens a second into a bucket of `burst` per key; each
//! action takes one. Buckets live in a few mutex-guarded shards, so callers on many
//! threads rarely meet; a bucket idle long enough to be full again is forgotten when
//! its shard grows large, which bounds memory whatever the keys. A sweep runs when a
//! shard has doubled since the last one, so its cost is spread over the inserts that
//! made it necessary, however many keys are active.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
use std::sync::Mutex;
use std::time::Instant;

const SHARDS: usize = 16;

/// Buckets a shard holds before its first sweep for full ones.
const SHARD_KEYS: usize = 10_000;

struct Bucket {
    tokens: f64,
    last: Instant,
}

struct Shard<K> {
    buckets: HashMap<K, Bucket>,
    /// Size at which the next sweep runs.
    sweep_at: usize,
}

impl<K> Default for Shard<K> {
    fn default() -> Self {
        Self {
            buckets: HashMap::new(),
            sweep_at: SHARD_KEYS,
        }
    }
}

/// Allows `rate` actions per second per key, with bursts of up to `burst`.
pub struct RateLimiter<K> {
    rate: f64,
    burst: f64,
    hasher: RandomState,
    shards: Vec<Mutex<Shard<K>>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// A limiter refilling `rate` tokens a second into buckets of `burst`.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self::per_second(f64::from(rate), burst)
    }

    /// A limiter refilling `rate` tokens a second (fractions allowed: 0.1 is one every
    /// ten seconds) into buckets of `burst`.
    pub fn per_second(rate: f64, burst: u32) -> Self {
        Self {
            rate: if rate > 0.0 { rate } else { 1.0 },
            burst: f64::from(burst.max(1)),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// Takes one token for `key`, or says in how many milliseconds one will be there.
    pub fn check(&self, key: &K) -> Result<(), u64> {
        self.check_at(key, Instant::now())
    }

    /// [`RateLimiter::check`] at a given moment (for tests with a clock of their own).
    pub fn check_at(&self, key: &K, now: Instant) -> Result<(), u64> {
        let shard = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        let mut shard = self.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        if shard.buckets.len() >= shard.sweep_at {
            let full_after = self.burst / self.rate;
            shard
                .buckets
                .retain(|_, b| now.saturating_duration_since(b.last).as_secs_f64() < full_after);
            shard.sweep_at = (shard.buckets.len() * 2).max(SHARD_KEYS);
        }
        let bucket = shard.buckets.entry(key.clone()).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.last = bucket.last.max(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.rate;
            Err(((wait * 1000.0).ceil() as u64).max(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_then_refills_at_the_rate() {
        let limiter = RateLimiter::new(100, 500);
        let t0 = Instant::now();
        for _ in 0..500 {
            limiter.check_at(&"ada", t0).unwrap();
        }
        let wait = limiter.check_at(&"ada", t0).unwrap_err();
        assert_eq!(wait, 10, "one token every 10 ms at 100/s");
        let later = t0 + Duration::from_millis(100);
        for _ in 0..10 {
            limiter.check_at(&"ada", later).unwrap();
        }
        assert!(limiter.check_at(&"ada", later).is_err());
        assert!(limiter.check_at(&"bob", later).is_ok(), "per key");
    }

    #[test]
    fn fractional_rates_refill_slowly() {
        let limiter = RateLimiter::per_second(0.5, 1);
        let t0 = Instant::now();
        limiter.check_at(&1, t0).unwrap();
        assert_eq!(limiter.check_at(&1, t0), Err(2000));
        limiter
            .check_at(&1, t0 + Duration::from_secs(2))
            .expect("a token every two seconds");
    }

    #[test]
    fn a_moment_older_than_the_last_one_takes_no_tokens_back() {
        let limiter = RateLimiter::new(1, 1);
        let t1 = Instant::now() + Duration::from_secs(5);
        limiter.check_at(&1, t1).unwrap();
        assert!(limiter.check_at(&1, t1 - Duration::from_secs(5)).is_err());
        assert!(limiter.check_at(&1, t1).is_err());
    }

    #[test]
    fn full_buckets_are_forgotten_when_a_shard_grows() {
        let limiter = RateLimiter::new(1000, 1);
        let old = SHARD_KEYS * SHARDS * 2;
        let t0 = Instant::now();
        for key in 0..old {
            limiter.check_at(&key, t0).unwrap();
        }
        // A second later every one of those buckets is full again: the next sweep of
        // each shard, due once it has doubled, forgets them and keeps the newcomers.
        let later = t0 + Duration::from_secs(1);
        let new = old * 2;
        for key in old..old + new {
            limiter.check_at(&key, later).unwrap();
        }
        let total: usize = limiter
            .shards
            .iter()
            .map(|s| s.lock().unwrap().buckets.len())
            .sum();
        assert_eq!(total, new);
    }
}
