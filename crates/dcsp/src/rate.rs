//! Rate control: how fast the sender paces datagrams.
//!
//! Controllers sit behind [`RateController`] so they can be swapped and compared (`--congestion` in the CLI).
//! The default, [`DelayRate`], is delay-based in the way of FAST TCP (and of FASP): once per round trip it
//! moves the rate towards `rate × min_rtt / rtt + α / min_rtt`, which holds about `α` bytes of this transfer
//! in the bottleneck queue. Random loss is not a congestion signal at all (only a sudden rise of the loss rate
//! well above its usual level is), so 1-5% of random loss costs 1-5% of goodput, not 90% as with TCP. Flows
//! that share a bottleneck each keep `α` queued and so converge to equal rates. A startup phase doubles the
//! rate every round trip until queueing delay appears. [`FixedRate`] simply paces at a set rate.

use std::time::{Duration, Instant};

/// What the sender learned from one ACK.
#[derive(Debug, Clone, Copy)]
pub struct RateSample {
    pub now: Instant,
    /// Round-trip time measured on this ACK (ack delay removed), if it acknowledged a new packet.
    pub rtt: Option<Duration>,
    /// Smoothed RTT so far.
    pub srtt: Duration,
    /// Lowest RTT in the recent past (the path's propagation delay).
    pub min_rtt: Duration,
    /// The receiver's clock when it sent the ACK.
    pub receiver_time: Duration,
    /// Datagram bytes the receiver has accepted, in total.
    pub bytes_received: u64,
    /// Datagrams the receiver has accepted, in total.
    pub packets_received: u64,
    /// Datagrams sent up to the largest one this ACK acknowledges.
    pub packets_sent: u64,
}

/// A congestion controller. It only sees samples and timeouts and answers with a pacing rate.
pub trait RateController: Send + std::fmt::Debug {
    fn on_ack(&mut self, sample: &RateSample);
    /// No ACK for a probe timeout: the path may be down or badly congested.
    fn on_timeout(&mut self, now: Instant);
    /// Pacing rate in bytes per second (of datagrams).
    fn rate(&self) -> u64;
    fn name(&self) -> &'static str;
    /// The controller's current phase, for traces and `--verbose`.
    fn phase(&self) -> &'static str {
        ""
    }
}

/// Lowest rate any controller goes down to (bytes/s): 256 kbit/s.
pub const MIN_RATE: f64 = 32_000.0;
/// Starting rate: 16 Mbit/s, grown by [`STARTUP_GROWTH`] every round trip in startup.
pub const INITIAL_RATE: f64 = 2_000_000.0;
/// Startup's growth per round trip: 1.5 rather than 2, so the round that overshoots the bottleneck fits in
/// its queue (half a round trip of data) instead of overflowing it.
pub const STARTUP_GROWTH: f64 = 1.5;
/// Startup ends when the receiver gets less than this share of what was sent (the bottleneck is full).
pub const STARTUP_FULL: f64 = 0.85;
/// Bytes of this transfer the controller aims to keep queued at the bottleneck.
pub const QUEUE_TARGET_BYTES: f64 = 256.0 * 1024.0;
/// Queueing delay that ends startup at the end of a round.
pub const STARTUP_EXIT_DELAY: Duration = Duration::from_millis(4);
/// Queueing delay in any single RTT sample that ends startup at once (or a quarter of the minimum RTT, if
/// more: jitter should not end it).
pub const STARTUP_QUEUE_LIMIT: Duration = Duration::from_millis(10);
/// A round's loss this far above the usual loss reads as congestion (overflowing queues), not noise.
pub const LOSS_SPIKE: f64 = 0.10;
/// How long a minimum RTT stays valid before newer samples replace it (a changed path).
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
/// Shortest control round.
const MIN_ROUND: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Startup,
    Steady,
}

#[derive(Debug, Clone, Copy)]
struct RoundStart {
    at: Instant,
    receiver_time: Duration,
    bytes_received: u64,
    packets_received: u64,
    packets_sent: u64,
}

/// The default controller; see the module documentation.
#[derive(Debug)]
pub struct DelayRate {
    rate: f64,
    max_rate: Option<f64>,
    phase: Phase,
    round: Option<RoundStart>,
    round_min_rtt: Option<Duration>,
    /// Minimum RTT: current window's and previous window's, and when the current window started.
    min_rtt_now: Option<Duration>,
    min_rtt_prev: Option<Duration>,
    min_rtt_since: Option<Instant>,
    usual_loss: f64,
    timeouts: u32,
    /// The rate during the previous round: what the packets acknowledged in this round were sent at.
    previous_rate: f64,
    rounds_since_cut: u32,
    round_rtt_sum: Duration,
    round_rtt_count: u32,
    /// Lowest smoothed RTT during startup.
    startup_srtt: Option<Duration>,
    /// Highest delivery rate measured in a round (bytes/s).
    max_delivered: f64,
}

impl DelayRate {
    /// `max_rate` in bytes per second caps the rate (`--max-rate`).
    pub fn new(max_rate: Option<u64>) -> Self {
        let max_rate = max_rate.map(|r| r as f64);
        Self {
            rate: max_rate.map_or(INITIAL_RATE, |m| m.min(INITIAL_RATE)),
            max_rate,
            phase: Phase::Startup,
            round: None,
            round_min_rtt: None,
            min_rtt_now: None,
            min_rtt_prev: None,
            min_rtt_since: None,
            usual_loss: 0.0,
            timeouts: 0,
            previous_rate: 0.0,
            rounds_since_cut: u32::MAX,
            startup_srtt: None,
            max_delivered: 0.0,
            round_rtt_sum: Duration::ZERO,
            round_rtt_count: 0,
        }
    }

    fn min_rtt(&self) -> Option<Duration> {
        match (self.min_rtt_now, self.min_rtt_prev) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn note_rtt(&mut self, now: Instant, rtt: Duration) {
        if self
            .min_rtt_since
            .is_none_or(|s| now.saturating_duration_since(s) >= MIN_RTT_WINDOW)
        {
            self.min_rtt_prev = self.min_rtt_now;
            self.min_rtt_now = None;
            self.min_rtt_since = Some(now);
        }
        self.min_rtt_now = Some(self.min_rtt_now.map_or(rtt, |m| m.min(rtt)));
        self.round_min_rtt = Some(self.round_min_rtt.map_or(rtt, |m| m.min(rtt)));
        self.round_rtt_sum += rtt;
        self.round_rtt_count += 1;
    }

    fn clamp(&mut self) {
        self.rate = self.rate.max(MIN_RATE);
        if let Some(m) = self.max_rate {
            self.rate = self.rate.min(m);
        }
    }
}

impl RateController for DelayRate {
    fn on_ack(&mut self, s: &RateSample) {
        self.timeouts = 0;
        if let Some(rtt) = s.rtt {
            self.note_rtt(s.now, rtt);
            // Startup ends as soon as the smoothed RTT shows a queue building up, without waiting for the
            // round to end: growing for one more round trip could overflow it. (Smoothed, so jitter does not
            // end it.)
            if self.phase == Phase::Startup {
                let base = *self.startup_srtt.get_or_insert(s.srtt);
                self.startup_srtt = Some(base.min(s.srtt));
                if s.srtt > base + STARTUP_QUEUE_LIMIT.max(base / 8) {
                    self.phase = Phase::Steady;
                    self.rate = (self.rate / STARTUP_GROWTH).min(self.max_delivered.max(MIN_RATE));
                    self.rounds_since_cut = 0;
                    self.clamp();
                }
            }
        }
        let start = RoundStart {
            at: s.now,
            receiver_time: s.receiver_time,
            bytes_received: s.bytes_received,
            packets_received: s.packets_received,
            packets_sent: s.packets_sent,
        };
        let Some(round) = self.round else {
            self.round = Some(start);
            return;
        };
        let round_len = s.srtt.max(MIN_ROUND);
        if s.now.saturating_duration_since(round.at) < round_len {
            return;
        }
        let (Some(min_rtt), Some(round_min_rtt)) = (self.min_rtt(), self.round_min_rtt) else {
            return;
        };
        // FAST uses the round's mean RTT: it reacts to a queue building within the round, and jitter averages out.
        let round_rtt = self.round_rtt_sum / self.round_rtt_count.max(1);
        let recv_dt = s.receiver_time.saturating_sub(round.receiver_time);
        let sent = s.packets_sent.saturating_sub(round.packets_sent);
        if recv_dt.is_zero() || sent == 0 {
            return;
        }
        let delivered =
            s.bytes_received.saturating_sub(round.bytes_received) as f64 / recv_dt.as_secs_f64();
        self.max_delivered = self.max_delivered.max(delivered);
        let got = s.packets_received.saturating_sub(round.packets_received);
        let loss = (1.0 - got as f64 / sent as f64).clamp(0.0, 1.0);
        let queueing = round_min_rtt.saturating_sub(min_rtt);
        let loss_spike = loss > self.usual_loss + LOSS_SPIKE;
        let min_s = min_rtt.as_secs_f64().max(1e-4);
        let sent_rate = std::mem::replace(&mut self.previous_rate, self.rate);
        self.rounds_since_cut = self.rounds_since_cut.saturating_add(1);
        match self.phase {
            Phase::Startup => {
                let full = sent_rate > 0.0
                    && delivered < STARTUP_FULL * sent_rate * (1.0 - self.usual_loss);
                if loss_spike || full || queueing > STARTUP_EXIT_DELAY.max(min_rtt / 10) {
                    self.phase = Phase::Steady;
                    self.rate = self.rate.min(delivered.max(MIN_RATE));
                    self.rounds_since_cut = 0;
                } else {
                    self.rate *= STARTUP_GROWTH;
                }
            }
            Phase::Steady => {
                if loss_spike {
                    // Overflowing queues: back off once, then give the cut a couple of rounds to show.
                    if self.rounds_since_cut >= 2 {
                        self.rate = self.rate.min(delivered) * 0.9;
                        self.rounds_since_cut = 0;
                    }
                } else {
                    let target = self.rate * min_s / round_rtt.as_secs_f64().max(min_s)
                        + QUEUE_TARGET_BYTES / min_s;
                    self.rate = (0.5 * self.rate + 0.5 * target).min(2.0 * self.rate);
                }
            }
        }
        if !loss_spike {
            self.usual_loss = 0.8 * self.usual_loss + 0.2 * loss;
        }
        self.clamp();
        self.round = Some(start);
        self.round_min_rtt = None;
        self.round_rtt_sum = Duration::ZERO;
        self.round_rtt_count = 0;
    }

    fn on_timeout(&mut self, _now: Instant) {
        self.timeouts += 1;
        if self.timeouts <= 2 {
            self.rate *= 0.5;
            self.clamp();
        }
        // The path may come back different: measure it afresh.
        self.phase = Phase::Startup;
        self.previous_rate = 0.0;
        self.startup_srtt = None;
        self.max_delivered = 0.0;
        self.round = None;
        self.round_min_rtt = None;
    }

    fn rate(&self) -> u64 {
        self.rate as u64
    }

    fn name(&self) -> &'static str {
        "delay"
    }

    fn phase(&self) -> &'static str {
        match self.phase {
            Phase::Startup => "startup",
            Phase::Steady => "steady",
        }
    }
}

/// Paces at one fixed rate whatever happens (like uftp with a hand-set rate); for comparisons and links
/// whose rate is known and dedicated.
#[derive(Debug)]
pub struct FixedRate {
    rate: u64,
}

impl FixedRate {
    pub fn new(rate: u64) -> Self {
        Self {
            rate: rate.max(MIN_RATE as u64),
        }
    }
}

impl RateController for FixedRate {
    fn on_ack(&mut self, _: &RateSample) {}
    fn on_timeout(&mut self, _: Instant) {}
    fn rate(&self) -> u64 {
        self.rate
    }
    fn name(&self) -> &'static str {
        "fixed"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(c: &mut DelayRate, rounds: u32, rtt_ms: u64, base_ms: u64, loss: f64, cap: f64) {
        let start = Instant::now();
        let (mut recv, mut sent, mut bytes) = (0u64, 0u64, 0u64);
        for i in 0..rounds {
            let now = start + Duration::from_millis(rtt_ms * u64::from(i));
            let rate = (c.rate() as f64).min(cap);
            let pkts = (rate * rtt_ms as f64 / 1000.0 / 1400.0) as u64 + 1;
            sent += pkts;
            let got = (pkts as f64 * (1.0 - loss)) as u64;
            recv += got;
            bytes += got * 1400;
            c.on_ack(&RateSample {
                now,
                rtt: Some(Duration::from_millis(rtt_ms)),
                srtt: Duration::from_millis(rtt_ms),
                min_rtt: Duration::from_millis(base_ms),
                receiver_time: Duration::from_millis(rtt_ms * u64::from(i)),
                bytes_received: bytes,
                packets_received: recv,
                packets_sent: sent,
            });
        }
    }

    #[test]
    fn random_loss_does_not_stop_startup() {
        let mut c = DelayRate::new(None);
        feed(&mut c, 8, 100, 100, 0.05, f64::MAX);
        assert!(c.rate() as f64 > INITIAL_RATE * 10.0, "{}", c.rate());
    }

    #[test]
    fn max_rate_caps() {
        let mut c = DelayRate::new(Some(1_000_000));
        feed(&mut c, 20, 50, 50, 0.0, f64::MAX);
        assert_eq!(c.rate(), 1_000_000);
    }

    #[test]
    fn queueing_delay_brings_the_rate_down() {
        let mut c = DelayRate::new(None);
        feed(&mut c, 10, 100, 100, 0.0, f64::MAX);
        let high = c.rate();
        // Now every round sees twice the base RTT.
        c.phase = Phase::Steady;
        let base = Instant::now();
        c.min_rtt_now = Some(Duration::from_millis(100));
        c.min_rtt_since = Some(base);
        c.round = None;
        feed(&mut c, 10, 200, 100, 0.0, f64::MAX);
        assert!(c.rate() < high, "{} !< {high}", c.rate());
    }
}
