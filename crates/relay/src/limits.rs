//! The relay's bounds and its token buckets: everything a relay holds has a ceiling, and every byte it
//! forwards passes a bucket.

use std::time::{Duration, Instant};

/// Every bound the relay enforces. [`Limits::default`] suits one relay on a small machine.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Sessions with a binding or a waiting or paired stream. More are refused as busy.
    pub max_sessions: usize,
    /// Bound connection ids in all. More are refused as busy.
    pub max_bindings: usize,
    /// Bound connection ids per session: a sender opens at most 64 DCSP streams (`--streams`).
    pub max_bindings_per_session: usize,
    /// Streams of one role waiting for their other end, per session: a receiver keeps one waiting and may
    /// briefly have a second (a reconnect racing the old one), so 4 leaves room without letting one session
    /// hoard the relay.
    pub max_waiting_per_session: usize,
    /// Waiting streams in all.
    pub max_waiting: usize,
    /// Paired streams being copied in all.
    pub max_streams: usize,
    /// How long a sender's stream waits for the receiver's (then `NoPeer`).
    pub sender_wait: Duration,
    /// How long a receiver's stream waits for a sender (then `NoPeer`, and the receiver dials again); never
    /// past its token's expiry.
    pub receiver_wait: Duration,
    /// A binding with no datagram either way for this long is forgotten (a peer re-binds every few seconds).
    pub idle_timeout: Duration,
    /// Cap on all forwarded bytes, per second (`--max-rate`); None: no cap.
    pub max_rate: Option<u64>,
    /// Cap on one session's forwarded bytes, per second; None: only the global cap.
    pub session_rate: Option<u64>,
    /// Token verifications per second (binds and hellos whose token is not the one already bound): Ed25519
    /// costs tens of microseconds, so a flood of forged binds must not eat the forwarding thread.
    pub verifications_per_sec: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_sessions: 4096,
            max_bindings: 65_536,
            max_bindings_per_session: 64,
            max_waiting_per_session: 4,
            max_waiting: 4096,
            max_streams: 8192,
            sender_wait: Duration::from_secs(10),
            receiver_wait: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(60),
            max_rate: None,
            session_rate: None,
            verifications_per_sec: 2000,
        }
    }
}

/// How much a bucket may hold beyond its steady rate: 20 ms of traffic, which covers a sender's GSO trains
/// and a scheduling hiccup, but at least 256 KiB so a slow cap still passes a few whole datagram trains.
const BURST_TIME: Duration = Duration::from_millis(20);
const MIN_BURST: f64 = 256.0 * 1024.0;

/// A token bucket: `rate` units per second, holding at most a small burst.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket for `rate` bytes per second, with the relay's byte burst.
    pub fn bytes_per_sec(rate: u64, now: Instant) -> Self {
        let rate = rate as f64;
        Self::new(rate, (rate * BURST_TIME.as_secs_f64()).max(MIN_BURST), now)
    }

    /// A full bucket for `rate` units per second holding at most `burst`.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Whether `amount` may pass at `now` (and if so takes it).
    pub fn take(&mut self, amount: u64, now: Instant) -> bool {
        self.refill(now);
        let amount = amount as f64;
        if self.tokens >= amount {
            self.tokens -= amount;
            true
        } else {
            false
        }
    }

    /// Whether `amount` would pass at `now`, without taking it.
    pub fn would_pass(&mut self, amount: u64, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= amount as f64
    }

    /// Takes `amount` at `now` even past empty (a stream cannot be dropped like a datagram), and returns how
    /// long the caller should wait before its next use so the rate holds; zero while there is credit.
    pub fn debit(&mut self, amount: u64, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= amount as f64;
        if self.tokens >= 0.0 || self.rate <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = self.last.max(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_passes_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(1000.0, 100.0, t0);
        assert!(bucket.take(100, t0));
        assert!(!bucket.take(1, t0));
        assert!(bucket.take(50, t0 + Duration::from_millis(50)));
        assert!(!bucket.take(10, t0 + Duration::from_millis(50)));
        // Idle for long: never more than the burst.
        assert!(!bucket.take(101, t0 + Duration::from_secs(10)));
        assert!(bucket.take(100, t0 + Duration::from_secs(10)));
    }

    #[test]
    fn a_debit_past_empty_says_how_long_to_wait() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(1000.0, 100.0, t0);
        assert_eq!(bucket.debit(100, t0), Duration::ZERO);
        assert_eq!(bucket.debit(500, t0), Duration::from_millis(500));
        assert!(!bucket.take(1, t0 + Duration::from_millis(400)));
        assert!(bucket.take(1, t0 + Duration::from_millis(502)));
    }

    #[test]
    fn byte_buckets_have_a_small_floor_burst() {
        let t0 = Instant::now();
        let mut slow = TokenBucket::bytes_per_sec(1000, t0);
        assert!(slow.take(256 * 1024, t0));
        assert!(!slow.take(2000, t0));
    }
}
