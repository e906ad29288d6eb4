//! Per-user token buckets for sends.

use chorus_core::UserId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

const SHARDS: usize = 16;

/// Buckets idle this long are full again and can be forgotten.
const FORGET_AFTER_SECS: f64 = 60.0;

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Allows `rate` sends per second per user with bursts of up to `burst`.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    shards: Vec<Mutex<HashMap<UserId, Bucket>>>,
}

impl RateLimiter {
    /// A limiter refilling `rate` tokens a second into buckets of `burst`.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// Takes one token for `user`, or says in how many milliseconds one will be there.
    pub fn check(&self, user: UserId) -> Result<(), u64> {
        self.check_at(user, Instant::now())
    }

    fn check_at(&self, user: UserId, now: Instant) -> Result<(), u64> {
        let shard = (user.0.as_u128() % SHARDS as u128) as usize;
        let mut map = self.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, b| now.duration_since(b.last).as_secs_f64() < FORGET_AFTER_SECS);
        }
        let bucket = map.entry(user).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.last = now;
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
        let user = UserId::new();
        let t0 = Instant::now();
        for _ in 0..500 {
            limiter.check_at(user, t0).unwrap();
        }
        let wait = limiter.check_at(user, t0).unwrap_err();
        assert_eq!(wait, 10, "one token every 10 ms at 100/s");
        let later = t0 + Duration::from_millis(100);
        for _ in 0..10 {
            limiter.check_at(user, later).unwrap();
        }
        assert!(limiter.check_at(user, later).is_err());
        assert!(limiter.check_at(UserId::new(), later).is_ok(), "per user");
    }
}
