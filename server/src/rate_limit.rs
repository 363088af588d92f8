//! Token-bucket rate limits, keyed by IP address or device, on the server's clock.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

/// A rate: `burst` requests at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Bucket size.
    pub burst: f64,
    /// Tokens added per second.
    pub per_second: f64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated_ms: u64,
}

/// Most keys tracked per limiter; beyond it, full buckets are forgotten.
const MAX_KEYS: usize = 100_000;

/// One limiter over many keys.
#[derive(Debug)]
pub struct RateLimiter<K> {
    rate: Rate,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Eq + Hash + Clone> RateLimiter<K> {
    /// A limiter allowing `rate` per key.
    pub fn new(rate: Rate) -> Self {
        RateLimiter {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key` at `now_ms`; `Err(retry_after_ms)` if none is left.
    pub fn check(&self, key: &K, now_ms: u64) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_KEYS {
            let rate = self.rate;
            buckets.retain(|_, b| refill(rate, *b, now_ms).tokens < rate.burst);
        }
        let bucket = buckets.entry(key.clone()).or_insert(Bucket {
            tokens: self.rate.burst,
            updated_ms: now_ms,
        });
        *bucket = refill(self.rate, *bucket, now_ms);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - bucket.tokens;
            let wait_ms = (missing / self.rate.per_second * 1000.0).ceil();
            Err(if wait_ms.is_finite() && wait_ms > 0.0 {
                wait_ms as u64
            } else {
                1000
            })
        }
    }
}

fn refill(rate: Rate, bucket: Bucket, now_ms: u64) -> Bucket {
    let elapsed = now_ms.saturating_sub(bucket.updated_ms) as f64 / 1000.0;
    Bucket {
        tokens: (bucket.tokens + elapsed * rate.per_second).min(rate.burst),
        updated_ms: now_ms.max(bucket.updated_ms),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_a_refill() {
        let limiter = RateLimiter::new(Rate {
            burst: 3.0,
            per_second: 2.0,
        });
        for _ in 0..3 {
            limiter.check(&"ip", 0).unwrap();
        }
        let wait = limiter.check(&"ip", 0).unwrap_err();
        assert_eq!(wait, 500);
        assert!(limiter.check(&"other", 0).is_ok(), "keys are independent");
        limiter.check(&"ip", 500).unwrap();
        assert!(limiter.check(&"ip", 500).is_err());
    }
}
