//! Per-client rate limiting: one token bucket per client key (a token's role and subject, or the peer's IP
//! address for requests without a valid token).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The default sustained rate per client: twice the 1,000 chunk updates per second one fast sender makes.
pub const DEFAULT_PER_SECOND: u32 = 2_000;
/// Past this many clients, buckets that are full again (idle clients) are dropped, so a scan from many
/// addresses cannot grow the table without bound.
const PRUNE_ABOVE: usize = 10_000;

/// How many requests a client may make.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_second: u32,
    /// Requests allowed at once after a quiet time.
    pub burst: u32,
}

impl RateLimit {
    /// `per_second` sustained, with a burst of one second's worth.
    pub fn per_second(per_second: u32) -> Self {
        let per_second = per_second.max(1);
        Self {
            per_second,
            burst: per_second,
        }
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::per_second(DEFAULT_PER_SECOND)
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The buckets of every client.
#[derive(Debug)]
pub struct Limiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `key`'s bucket at `now`; `Err(wait)` if it is empty, with how long until it
    /// holds one again.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(self.limit.per_second);
        let burst = f64::from(self.limit.burst.max(1));
        // A poisoned lock only means another request panicked mid-update; the counts are still usable.
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > PRUNE_ABOVE {
            buckets
                .retain(|_, b| b.tokens + now.duration_since(b.last).as_secs_f64() * rate < burst);
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let refill = now.saturating_duration_since(bucket.last).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refill).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_sustained_rate_and_clients_apart() {
        let limiter = Limiter::new(RateLimit {
            per_second: 10,
            burst: 5,
        });
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(limiter.check("a", t0).is_ok());
        }
        let wait = limiter.check("a", t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert!(
            limiter.check("b", t0).is_ok(),
            "another client has its own bucket"
        );
        assert!(limiter.check("a", t0 + Duration::from_millis(100)).is_ok());
    }
}
