//! The peers' relay timers, sans-IO (every call takes `now`): when a DCSP socket (re-)sends its `Bind`, and
//! when a sender's stream counts its relay as lost.

use std::time::{Duration, Instant};

/// Until the relay answers `Bound`, a `Bind` goes out this often (the relay drops the stream's datagrams until
/// it has one, so this bounds what is lost to DCSP's repairs)...
const BIND_RETRY: Duration = Duration::from_millis(200);
/// ...for this long after the first one; then the relay is slow or gone and the retries slow down.
const BIND_FAST_FOR: Duration = Duration::from_secs(5);
/// Retries of an unanswered `Bind` after [`BIND_FAST_FOR`].
const BIND_SLOW_RETRY: Duration = Duration::from_secs(2);
/// Once bound, a `Bind` again this often: it keeps a NAT's mapping towards the relay alive (the shortest UDP
/// mapping timeouts seen in home routers are about 30 s) and re-binds a relay that restarted.
const BIND_KEEPALIVE: Duration = Duration::from_secs(5);

/// When one DCSP socket binds one connection id at one relay.
#[derive(Debug, Clone)]
pub(crate) struct BindTimer {
    started: Instant,
    next: Instant,
    bound: bool,
}

impl BindTimer {
    /// A binding whose first `Bind` is due at once.
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            started: now,
            next: now,
            bound: false,
        }
    }

    /// Whether a `Bind` is due at `now`; if so, the next one is scheduled (the caller sends it).
    pub(crate) fn poll(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        let every = if self.bound {
            BIND_KEEPALIVE
        } else if now.saturating_duration_since(self.started) < BIND_FAST_FOR {
            BIND_RETRY
        } else {
            BIND_SLOW_RETRY
        };
        self.next = now + every;
        true
    }

    /// The relay answered `Bound`: from now on only keep-alives.
    pub(crate) fn bound(&mut self, now: Instant) {
        if !self.bound {
            self.bound = true;
            self.next = now + BIND_KEEPALIVE;
        }
    }

    #[cfg(test)]
    fn is_bound(&self) -> bool {
        self.bound
    }

    /// When [`Self::poll`] will next say yes.
    #[cfg(test)]
    fn deadline(&self) -> Instant {
        self.next
    }
}

/// A sender's stream with blocks in flight through a relay and no ACK for this long counts its relay as lost
/// and moves to the standby. A direct path waits much longer (an outage may end); through a relay the
/// standby is a known good way round, and two seconds are many round trips on any path a relay serves.
pub(crate) const RELAY_SILENCE: Duration = Duration::from_secs(2);

/// Tells a relay that stopped forwarding (no ACKs while blocks are in flight) from a stream with nothing to
/// say (no blocks in flight: no ACKs are due, whatever the time since the last one).
#[derive(Debug, Clone, Default)]
pub(crate) struct SilenceWatch {
    /// Since when blocks have been in flight without a break.
    busy_since: Option<Instant>,
}

impl SilenceWatch {
    /// Whether the relay counts as lost at `now`: blocks in flight, and none of the last [`RELAY_SILENCE`]
    /// answered (`silence`: the time since the last ACK).
    pub(crate) fn lost(&mut self, now: Instant, in_flight: bool, silence: Duration) -> bool {
        if !in_flight {
            self.busy_since = None;
            return false;
        }
        let busy = now.saturating_duration_since(*self.busy_since.get_or_insert(now));
        silence.min(busy) > RELAY_SILENCE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn binds_retry_fast_then_slowly_then_keep_alive() {
        let t = Instant::now();
        let mut b = BindTimer::new(t);
        assert!(b.poll(t), "the first one at once");
        assert!(!b.poll(t + ms(199)));
        assert!(b.poll(t + ms(200)));
        assert_eq!(b.deadline(), t + ms(400));
        // Unanswered past the fast phase: every two seconds.
        assert!(b.poll(t + ms(5_000)));
        assert_eq!(b.deadline(), t + ms(7_000));
        b.bound(t + ms(5_100));
        assert!(b.is_bound());
        assert_eq!(b.deadline(), t + ms(10_100), "a keep-alive after the bind");
        assert!(!b.poll(t + ms(10_000)));
        assert!(b.poll(t + ms(10_100)));
        assert_eq!(b.deadline(), t + ms(15_100));
        // A second Bound (an answer to a keep-alive) does not move the schedule.
        b.bound(t + ms(10_200));
        assert_eq!(b.deadline(), t + ms(15_100));
    }

    #[test]
    fn a_relay_is_lost_only_after_a_silence_with_blocks_in_flight() {
        let t = Instant::now();
        let mut w = SilenceWatch::default();
        // Idle for a minute: no ACK is due, nothing is lost.
        assert!(!w.lost(t, false, ms(60_000)));
        // Blocks go out after the idle minute: the old silence does not count.
        assert!(!w.lost(t, true, ms(60_000)));
        assert!(!w.lost(t + ms(2_000), true, ms(62_000)));
        assert!(w.lost(t + ms(2_001), true, ms(62_001)));
        // ACKs keep coming: not lost, however long blocks stay in flight.
        let mut w = SilenceWatch::default();
        assert!(!w.lost(t, true, ms(0)));
        assert!(!w.lost(t + ms(30_000), true, ms(10)));
        assert!(w.lost(t + ms(32_100), true, ms(2_100)));
    }
}
