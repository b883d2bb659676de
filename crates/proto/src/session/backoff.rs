//! Exponential backoff with jitter for reconnecting a dropped control channel.

use std::time::{Duration, Instant};

/// First retry delay: short, so a brief hiccup costs little.
const BASE: Duration = Duration::from_millis(250);
/// Longest delay between attempts: a returning link is noticed within this.
const CAP: Duration = Duration::from_secs(10);
/// Doublings counted at most: 250 ms × 2^16 is far past [`CAP`] already; the bound only keeps the shift from
/// overflowing on a very long outage.
const MAX_DOUBLINGS: u32 = 16;
/// Share of each delay that is fixed; the rest is random ("full jitter" over [delay/2, delay]), so senders
/// cut off together do not come back in step, yet none retries at once.
const FIXED_SHARE: f64 = 0.5;

/// Delays between connection attempts: doubling from 250 ms up to 10 s, each with "full jitter" in
/// [delay/2, delay], until `give_up_after` has passed since the first failure.
#[derive(Debug, Clone)]
pub struct Backoff {
    give_up_after: Duration,
    first_failure: Option<Instant>,
    attempt: u32,
}

impl Backoff {
    pub fn new(give_up_after: Duration) -> Self {
        Self {
            give_up_after,
            first_failure: None,
            attempt: 0,
        }
    }

    /// Forget past failures (after a successful connection made progress).
    pub fn reset(&mut self) {
        self.first_failure = None;
        self.attempt = 0;
    }

    /// After a failure at `now`: how long to wait before the next attempt, or `None` to give up.
    /// `jitter` is a random number in [0, 1).
    pub fn next_delay(&mut self, now: Instant, jitter: f64) -> Option<Duration> {
        let first = *self.first_failure.get_or_insert(now);
        let elapsed = now.saturating_duration_since(first);
        if elapsed >= self.give_up_after {
            return None;
        }
        let exp = BASE
            .saturating_mul(1u32 << self.attempt.min(MAX_DOUBLINGS))
            .min(CAP);
        self.attempt += 1;
        let delay = exp.mul_f64(FIXED_SHARE + (1.0 - FIXED_SHARE) * jitter.clamp(0.0, 1.0));
        Some(delay.min(self.give_up_after - elapsed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_gives_up() {
        let t0 = Instant::now();
        let mut b = Backoff::new(Duration::from_secs(60));
        let d: Vec<_> = (0..8)
            .map(|_| b.next_delay(t0, 0.999_999).unwrap())
            .collect();
        assert!(d[0] <= Duration::from_millis(250) && d[0] >= Duration::from_millis(240));
        assert!(d[1] > d[0] && d[2] > d[1]);
        assert!(d[7] <= CAP);
        assert!(b.next_delay(t0 + Duration::from_secs(61), 0.5).is_none());
        b.reset();
        assert!(
            b.next_delay(t0 + Duration::from_secs(61), 0.0).unwrap() >= Duration::from_millis(125)
        );
    }
}
