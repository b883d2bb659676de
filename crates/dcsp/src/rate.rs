//! Rate control: how fast the sender paces datagrams, and how many it may have in flight.
//!
//! Controllers sit behind [`RateController`] so they can be swapped and compared, and the sender's driver gets
//! one per stream from a [`RateControllerFactory`] ([`DelayRateFactory`] today), where another controller or an
//! optimizer plugs in. The one controller today, [`DelayRate`], is FAST TCP's delay-based window control,
//! paced:
//!
//! - **State.** A window `w` (bytes the sender may have in flight: sent after the newest acknowledged
//!   packet), the minimum RTT `base` and the lowest mean RTT of a round `base_mean` (both over the last
//!   10-20 s). The sender paces at `1.25 × w / base` ([`PACING_GAIN`]), so the window, clocked by ACKs, is
//!   the real limit and a queue cannot grow past `w − rate × base`, but at most at 1.25× ([`BW_PACING_GAIN`];
//!   4× in startup, [`STARTUP_BW_PACING_GAIN`]) the highest delivery rate of the last 10 rounds (scaled up for
//!   the usual loss): on a short path `w / base` is many times the link (6-32 Gbit/s over 1 Gbit/s and
//!   0.1 ms), and the rate the sender reports should be the one it paces at. Before the first RTT sample there
//!   is no window and the pacing rate is [`INITIAL_RATE`] (16 Mbit/s). `--max-rate` caps the pacing rate (and
//!   the window at twice the capped rate's worth).
//! - **ACK clock.** Every window derived from a delivery rate (startup's exit, a loss cut) holds that rate
//!   over `base` plus twice the mean gap between ACKs, at most 4 ms ([`MAX_ACK_CLOCK`]): the window must last
//!   from one ACK to the next, and where the hosts batch ACKs a millisecond apart `rate × base` is less than
//!   one ACK's worth (a clean 1 Gbit/s link idled a quarter of the time).
//! - **Rounds.** The controller acts once per smoothed RTT, on what the ACKs of that round showed: the mean
//!   RTT, the loss (datagrams the receiver got against those sent) and the delivery rate (bytes received
//!   over the receiver's clock).
//! - **Startup.** The window starts as what the first RTT held at the initial rate and grows ×1.5 a round
//!   ([`STARTUP_GROWTH`]: the overshoot of the round that crosses the path's capacity mostly fits in a
//!   100 ms queue), a startup round lasting at least 20 ms; on paths shorter than that ×2 a round
//!   ([`SHORT_PATH_STARTUP_GROWTH`]: the queue check below ends startup within a few of the round's many
//!   round trips, so the overshoot is the step alone). Startup ends at once when the lowest of the last
//!   8 RTT samples exceeds `base_mean` by 8 ms (by `base_mean`, at least 1 ms, on shorter paths, whose
//!   buffers may hold less) or by 3 × the samples' mean deviation if more (jitter does not end it), or at a
//!   round's end on a loss spike; the window then becomes what the path delivered over one `base` and the
//!   ACK clock, `delivered / (1 − usual loss) × (base + clock)`, which drains the overshoot, and the three
//!   rounds after do not count as queue-less for the refill below (their empty queue is the drain's).
//! - **Steady (FAST).** Every round, with `q = round mean RTT − base_mean` (jitter adds to both terms, so it
//!   does not read as queue) and `rtt = base_mean + q`:
//!   `w ← min(2w, (1 − γ)·w + γ·(w·base/rtt + α))`, `γ = 0.5` ([`GAMMA`]),
//!   `α = 192 KiB + 2 ms × w/rtt` ([`ALPHA_BYTES`], [`ALPHA_DELAY`]). At equilibrium each flow keeps
//!   `rate × q ≈ α` of its own bytes queued, i.e. `rate = 192 KiB / (q − 2 ms)`: all flows through one
//!   bottleneck see the same `q` and so converge to equal rates, and a single flow holds about
//!   `2 ms + 192 KiB / capacity` of queue (10 ms at 200 Mbit/s, 34 ms at 50 Mbit/s, 3.6 ms at 1 Gbit/s,
//!   2.5 ms at 3 Gbit/s), inside a 100 ms buffer and even a 4 ms one. The fixed part sets how fast flows
//!   converge to fairness; the part that grows with the rate keeps the standing queue measurable on fast links.
//! - **Drain.** When the minimum-RTT window rolls over (every 10 s), the next steady round sets
//!   `w ← w·base/rtt`, the window that keeps none of this flow's queue, so the new window's samples see the
//!   path's real RTT (otherwise the minimum creeps up by α every window, FAST's base-RTT drift, until the
//!   buffer overflows); the three rounds after a drain do not count as queue-less for the refill below.
//! - **Refill.** FAST adds only `γα` a round when the queue is empty, slow on long fat paths: after
//!   [`EMPTY_ROUNDS`] (2) rounds in a row with `q` under 2 ms ([`QUEUE_EMPTY`]) the window also grows ×1.25
//!   ([`REFILL_GROWTH`]) every further such round. (Going back to startup instead overshot at its exit and
//!   drained again, over and over: 0.80 of a simulated 1 Gbit/s, 60 ms, 0.5% loss link against 0.90.)
//! - **Loss.** Random loss is not a congestion signal at all, so 1-5% of random loss costs 1-5% of goodput
//!   (FEC and NACKs repair it), not 90% as with TCP. Only a round whose loss exceeds the usual loss (its
//!   moving average) by 10 points ([`LOSS_SPIKE`]) reads as overflowing queues: the window becomes 0.9 × what
//!   the path delivered over one `base` and the ACK clock, at most once every three rounds (counting from
//!   startup's end).
//! - **Outages.** Two probe timeouts in a row (no ACK at all) tell the controller of a silence: it keeps its
//!   window and phase from before, halves the window and rate (at most twice per silence) and measures in
//!   startup until an ACK returns. If the first RTT sample after the silence is at most twice `base_mean`
//!   plus 8 ms ([`RESUME_RTT_FACTOR`]), the path is the same and no queue stood behind the silence: the link
//!   was down, not congested, and the window and phase from before come back at once (the sender, probing at
//!   most 0.3 s apart once silent, is at its previous rate within that and a round trip of the link's
//!   return). Otherwise the path is measured afresh from the cut window.

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
    /// Most datagram bytes the sender may have in flight (sent after the newest acknowledged packet), if the
    /// controller limits it; `None` (the default) for pacing alone.
    fn window(&self) -> Option<u64> {
        None
    }
    fn name(&self) -> &'static str;
    /// A new cap on the pacing rate (bytes per second of datagrams; `None`: no cap), while the transfer runs
    /// (`--max-rate` changed by a library user or, later, the orchestrator). The default ignores it: the
    /// driver's shared pacer still holds the transfer to the cap.
    fn set_max_rate(&mut self, _max_rate: Option<u64>) {}
    /// The controller's current phase, for traces and `--verbose`.
    fn phase(&self) -> &'static str {
        ""
    }
}

/// Makes the rate controller of each stream of a transfer, like quinn's `ControllerFactory`: the sender's driver
/// asks it for one controller per stream (`--streams`), so another controller, or an optimizer that tunes each
/// stream, plugs in here without touching the driver.
pub trait RateControllerFactory: Send + Sync + std::fmt::Debug {
    /// The controller of stream `stream` (counted from 0) of the `streams` that carry one transfer.
    fn build(&self, stream: u8, streams: u8) -> Box<dyn RateController>;
}

/// Builds [`DelayRate`] controllers, each capped at the whole `--max-rate`: the driver holds the streams' sum
/// to the cap with one pacer they share (so a stream the CPU or its path holds back leaves its share to the
/// others; an even split delivered 0.93x of a 2 Gbit/s cap with 4 streams on loopback), and the cap only bounds
/// each stream's rate and window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DelayRateFactory {
    max_rate: Option<u64>,
}

impl DelayRateFactory {
    /// `max_rate` in bytes per second (of datagrams) caps each stream.
    pub fn new(max_rate: Option<u64>) -> Self {
        Self { max_rate }
    }
}

impl RateControllerFactory for DelayRateFactory {
    fn build(&self, _stream: u8, _streams: u8) -> Box<dyn RateController> {
        Box::new(DelayRate::new(self.max_rate))
    }
}

/// Lowest rate any controller goes down to (bytes/s): 256 kbit/s.
pub const MIN_RATE: f64 = 32_000.0;
/// Rate of the first round trip, before any RTT is known: 16 Mbit/s.
pub const INITIAL_RATE: f64 = 2_000_000.0;
/// Startup's window growth per round trip...
pub const STARTUP_GROWTH: f64 = 1.5;
/// ...and per [`STARTUP_MIN_ROUND`] on paths shorter than that: there a round spans many RTT samples, and
/// startup's queue check, made on every one, ends it within a few round trips of the queue's start, so a
/// round's step overshoots the path by the step alone (a doubled window that held under 1 ms of queue adds
/// about 1 ms more), not by a round trip's worth of growth as on long paths.
pub const SHORT_PATH_STARTUP_GROWTH: f64 = 2.0;

/// Startup's growth per round on a path whose smoothed RTT is `srtt`.
fn startup_growth(srtt: Duration) -> f64 {
    if srtt < STARTUP_MIN_ROUND {
        SHORT_PATH_STARTUP_GROWTH
    } else {
        STARTUP_GROWTH
    }
}
/// Startup ends when the lowest of the last few RTT samples exceeds the lowest mean RTT of a round by this
/// much, or by [`STARTUP_JITTER_FACTOR`] times the samples' mean deviation if more (so jitter does not end it).
pub const STARTUP_QUEUE_LIMIT: Duration = Duration::from_millis(8);
/// See [`STARTUP_QUEUE_LIMIT`].
pub const STARTUP_JITTER_FACTOR: f64 = 3.0;
/// The fixed part of α, the bytes of this transfer FAST keeps queued at the bottleneck.
pub const ALPHA_BYTES: f64 = 192.0 * 1024.0;
/// The part of α that grows with the rate: this much time's worth of data (bytes = rate × this).
pub const ALPHA_DELAY: Duration = Duration::from_millis(2);
/// FAST's gain: the window moves this share of the way to its target every round.
pub const GAMMA: f64 = 0.5;
/// A round whose lowest RTT is within this of the minimum saw no standing queue.
pub const QUEUE_EMPTY: Duration = Duration::from_millis(2);
/// Steady rounds in a row without a standing queue that send the controller back to startup (FAST alone
/// adds only γα per round).
pub const EMPTY_ROUNDS: u32 = 2;
/// After [`EMPTY_ROUNDS`] without a standing queue, the window grows by this much each further such round.
pub const REFILL_GROWTH: f64 = 1.25;
/// Pacing rate over the window's rate (window / minimum RTT): keeps the pacer from being the limit.
pub const PACING_GAIN: f64 = 1.25;
/// A round's loss this far above the usual loss reads as congestion (overflowing queues), not noise.
pub const LOSS_SPIKE: f64 = 0.10;
/// What a window holds beyond one base RTT at the path's rate is twice the mean gap between ACKs (the window
/// counts bytes sent after the newest acknowledged packet, so it must last from one ACK to the next), at most
/// this: on a short path `rate × base` (12.5 KB at 1 Gbit/s over 0.1 ms) is less than one ACK's worth when
/// hosts batch them, and the link idled between ACKs (a clean 1 Gbit/s link got 0.75 of its rate).
pub const MAX_ACK_CLOCK: Duration = Duration::from_millis(4);
/// See [`MAX_ACK_CLOCK`]: the window's room is this many mean ACK gaps.
const ACK_CLOCK_GAPS: f64 = 2.0;
/// Each gap between two ACKs moves the mean gap this share of the way.
const ACK_GAP_GAIN: f64 = 1.0 / 16.0;
/// Delivery rates of this many rounds (the highest of them) bound the pacing rate: about two seconds on long
/// paths, 50-200 ms on short ones.
const BW_ROUNDS: usize = 10;
/// In steady state the pacing rate is at most this much above the highest recent delivery rate: room for FAST
/// to grow the rate by a quarter a round, while the rate reported is the one paced (on a short path
/// `PACING_GAIN × w / base` is many times the link).
pub const BW_PACING_GAIN: f64 = 1.25;
/// In startup, at most this much above it: startup doubles its window a round, and a round's delivery rate
/// shows the rate of the round before.
pub const STARTUP_BW_PACING_GAIN: f64 = 4.0;
/// Smallest window, bytes: a few datagrams.
pub const MIN_WINDOW_BYTES: f64 = 16.0 * 1024.0;
/// How long a minimum RTT stays valid before newer samples replace it (a changed path).
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
/// Shortest control round.
const MIN_ROUND: Duration = Duration::from_millis(5);
/// Shortest startup round: on paths of a few milliseconds or less, ×1.5 a round trip would outrun every
/// signal (and a short queue overflows before a standing delay shows), so startup grows at most ×1.5 per this.
const STARTUP_MIN_ROUND: Duration = Duration::from_millis(20);
/// Lowest queueing delay that ends startup (on short paths the limit is the path's own RTT, down to this).
const STARTUP_QUEUE_FLOOR: Duration = Duration::from_millis(1);
/// Rounds after a cut (or the end of startup) before a loss spike may cut again.
const CUT_ROUNDS: u32 = 3;
/// Rounds after a drain (see `DelayRate::drain_due`) in which an empty queue is what the drain made, not room
/// to probe for.
const DRAIN_ROUNDS: u32 = 3;
/// ACKs over which startup's exit measures the delivery rate.
const RECENT_ACKS: usize = 16;
/// RTT samples whose minimum is compared with [`STARTUP_QUEUE_LIMIT`].
const STARTUP_SAMPLES: usize = 8;
/// RTT samples startup takes before its queue check may end it: the samples' ring filled twice over, so the
/// jitter it is compared with has settled.
const STARTUP_WARMUP_SAMPLES: usize = 2 * STARTUP_SAMPLES;
/// After the first 64 RTT samples (a plain mean until then), the RTT mean and mean deviation (the jitter
/// startup allows for) move 1/64 of the way to each new sample: they follow the path over a few round trips of
/// ACKs, not one outlier.
const JITTER_GAIN: f64 = 1.0 / 64.0;
/// Shortest stretch of the receiver's clock a delivery rate is measured over: ACKs closer together than this
/// (they often come in bursts) say little about a rate.
const MIN_DELIVERY_SPAN: Duration = Duration::from_millis(2);
/// A delivered rate is scaled up for the usual loss (`delivered / (1 − loss)`) as if at least this share
/// arrived, so a very lossy estimate can at most double it.
const MIN_DELIVERED_SHARE: f64 = 0.5;
/// Shortest base RTT the window is divided by (100 µs, below loopback's): keeps the pacing rate finite before
/// any sample and on the fastest paths.
const MIN_BASE_RTT_SECS: f64 = 1e-4;
/// Under `--max-rate`, the window leaves room for this many base RTTs at the capped rate...
const CAPPED_WINDOW_RTTS: f64 = 2.0;
/// ...plus this long at the capped rate: the receiver acknowledges every 32 datagrams or 2 ms, and on a short
/// path a window of two base RTTs holds less than one ACK's worth, so the sender waited for the ACK timer
/// instead of pacing (`--max-rate 400Mbit` delivered 117 Mbit/s on loopback). 10 ms covers the ACK delay and a
/// loaded receiver's scheduling with room to spare; on long paths the RTT term dominates.
const CAPPED_WINDOW_SLACK_SECS: f64 = 0.010;
/// A loss spike cuts the window to this share of what the path delivered over one base RTT: a little under
/// it, so the queue that overflowed drains.
const LOSS_CUT: f64 = 0.9;
/// FAST's bound on a steady round's growth: the window at most doubles.
const MAX_ROUND_GROWTH: f64 = 2.0;
/// Each round without a spike moves the usual loss this share of the way to the round's loss: it learns a
/// path's random loss within a few rounds, and a spike (left out) does not raise it.
const USUAL_LOSS_GAIN: f64 = 0.2;
/// Probe timeouts of one silence that cut the rate and window; later ones only wait, since an outage says
/// nothing about the path's capacity and startup measures it afresh when ACKs return.
const MAX_TIMEOUT_CUTS: u32 = 2;
/// What each of those cuts keeps of the rate and window.
const TIMEOUT_CUT: f64 = 0.5;
/// The first RTT sample after a silence shows the same path if it is at most this many times the path's lowest
/// round-mean RTT, plus [`STARTUP_QUEUE_LIMIT`].
pub const RESUME_RTT_FACTOR: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Startup,
    Steady,
}

/// What the controller had before a silence (see [`RateController::on_timeout`]), to go back to when the first
/// ACK after it shows the same path.
#[derive(Debug, Clone, Copy)]
struct Resume {
    window: Option<f64>,
    phase: Phase,
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
    /// Congestion window, bytes in flight; `None` until the first RTT sample.
    window: Option<f64>,
    /// Pacing rate, bytes/s.
    rate: f64,
    max_rate: Option<f64>,
    phase: Phase,
    round: Option<RoundStart>,
    round_rtt_sum: Duration,
    round_rtt_count: u32,
    /// Lowest mean RTT of a round: current window's and previous window's (see `min_rtt_now`).
    base_mean_now: Option<Duration>,
    base_mean_prev: Option<Duration>,
    /// Minimum RTT: current window's and previous window's, and when the current window started.
    min_rtt_now: Option<Duration>,
    min_rtt_prev: Option<Duration>,
    min_rtt_since: Option<Instant>,
    usual_loss: f64,
    timeouts: u32,
    rounds_since_cut: u32,
    /// Steady rounds in a row that saw no standing queue.
    empty_rounds: u32,
    /// A new minimum-RTT window began: the next steady round drains the queue this flow keeps (FAST's α), so
    /// the window's samples include the path's real RTT. Without it the minimum would be re-learned over a
    /// standing queue every window and creep up by α each time (FAST's known base-RTT drift) until the
    /// bottleneck's buffer overflows.
    drain_due: bool,
    /// Rounds left after a drain in which an empty queue does not send the controller back to startup.
    drain_rounds: u32,
    /// The last few RTT samples (startup's queue check).
    recent: [Duration; STARTUP_SAMPLES],
    recent_len: usize,
    /// Mean RTT lately and the samples' mean deviation from it (seconds): jitter, for startup's queue check.
    startup_mean: f64,
    jitter: f64,
    /// Highest delivery rate measured in a round (bytes/s).
    max_delivered: f64,
    /// The receiver's clock and byte count of the last few ACKs: the delivery rate right now.
    recent_acks: [(Duration, u64); RECENT_ACKS],
    recent_acks_len: usize,
    /// Delivery rates of the last [`BW_ROUNDS`] rounds (bytes/s, scaled up for the usual loss): the pacing
    /// rate's bound.
    bw: [f64; BW_ROUNDS],
    bw_len: usize,
    /// The state before the current silence, restored when it ends on the same path.
    resume: Option<Resume>,
    /// When the previous ACK came, and the mean gap between ACKs (seconds): the window's room for the ACK clock.
    last_ack_at: Option<Instant>,
    ack_gap: f64,
}

impl DelayRate {
    /// `max_rate` in bytes per second caps the rate (`--max-rate`).
    pub fn new(max_rate: Option<u64>) -> Self {
        let max_rate = max_rate.map(|r| r as f64);
        Self {
            window: None,
            rate: max_rate.map_or(INITIAL_RATE, |m| m.min(INITIAL_RATE)),
            max_rate,
            phase: Phase::Startup,
            round: None,
            round_rtt_sum: Duration::ZERO,
            round_rtt_count: 0,
            base_mean_now: None,
            base_mean_prev: None,
            min_rtt_now: None,
            min_rtt_prev: None,
            min_rtt_since: None,
            usual_loss: 0.0,
            timeouts: 0,
            rounds_since_cut: u32::MAX,
            empty_rounds: 0,
            drain_due: false,
            drain_rounds: 0,
            recent: [Duration::ZERO; STARTUP_SAMPLES],
            recent_len: 0,
            startup_mean: 0.0,
            jitter: 0.0,
            max_delivered: 0.0,
            recent_acks: [(Duration::ZERO, 0); RECENT_ACKS],
            recent_acks_len: 0,
            bw: [0.0; BW_ROUNDS],
            bw_len: 0,
            resume: None,
            last_ack_at: None,
            ack_gap: 0.0,
        }
    }

    fn min_rtt(&self) -> Option<Duration> {
        match (self.min_rtt_now, self.min_rtt_prev) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The lowest mean RTT of a round lately: the path's RTT with its usual jitter but no queue.
    fn base_mean(&self) -> Option<Duration> {
        match (self.base_mean_now, self.base_mean_prev) {
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
            self.base_mean_prev = self.base_mean_now;
            self.base_mean_now = None;
            self.drain_due = self.min_rtt_since.is_some();
            self.min_rtt_since = Some(now);
        }
        self.min_rtt_now = Some(self.min_rtt_now.map_or(rtt, |m| m.min(rtt)));
        self.round_rtt_sum += rtt;
        self.round_rtt_count += 1;
        let x = rtt.as_secs_f64();
        let weight = (1.0 / (self.recent_len + 1) as f64).max(JITTER_GAIN);
        self.startup_mean += weight * (x - self.startup_mean);
        self.jitter += weight * ((x - self.startup_mean).abs() - self.jitter);
        self.recent[self.recent_len % STARTUP_SAMPLES] = rtt;
        self.recent_len += 1;
    }

    /// The bottleneck's rate now: `round_rate` (a round's delivery rate) or, if higher, the rate over the last
    /// ACKs. When a queue is building the latest ACKs show the bottleneck's own rate, while the round's may
    /// still reflect slower packets of the round before.
    fn bottleneck_rate(&self, round_rate: f64) -> f64 {
        round_rate.max(self.recent_delivery_rate())
    }

    /// Delivery rate over the last [`RECENT_ACKS`] ACKs (bytes/s of the receiver's clock), 0 if too few.
    fn recent_delivery_rate(&self) -> f64 {
        if self.recent_acks_len < RECENT_ACKS {
            return 0.0;
        }
        let newest = self.recent_acks[(self.recent_acks_len - 1) % RECENT_ACKS];
        let oldest = self.recent_acks[self.recent_acks_len % RECENT_ACKS];
        let dt = newest.0.saturating_sub(oldest.0);
        if dt < MIN_DELIVERY_SPAN {
            return 0.0;
        }
        newest.1.saturating_sub(oldest.1) as f64 / dt.as_secs_f64()
    }

    /// The window that keeps a path that delivers `delivered` (bytes/s, after the usual loss) busy: one base
    /// RTT of it, plus [`ACK_CLOCK`].
    fn bdp(&self, delivered: f64, base: Duration) -> f64 {
        let clock = (ACK_CLOCK_GAPS * self.ack_gap).min(MAX_ACK_CLOCK.as_secs_f64());
        delivered / (1.0 - self.usual_loss).max(MIN_DELIVERED_SHARE) * (base.as_secs_f64() + clock)
    }

    /// Follows the mean gap between ACKs (seconds; gaps over a round trip, silences, left out).
    fn note_ack_gap(&mut self, now: Instant, srtt: Duration) {
        if let Some(last) = self.last_ack_at {
            let gap = now.saturating_duration_since(last);
            if gap <= srtt.max(MAX_ACK_CLOCK) {
                self.ack_gap += ACK_GAP_GAIN * (gap.as_secs_f64() - self.ack_gap);
            }
        }
        self.last_ack_at = Some(now);
    }

    /// Records a round's delivery rate for the pacing bound.
    fn note_bw(&mut self, delivered: f64) {
        let sent = delivered / (1.0 - self.usual_loss).max(MIN_DELIVERED_SHARE);
        self.bw[self.bw_len % BW_ROUNDS] = sent;
        self.bw_len += 1;
    }

    /// The highest delivery rate of the last [`BW_ROUNDS`] rounds, if a round has ended.
    fn bw_max(&self) -> Option<f64> {
        (self.bw_len > 0).then(|| self.bw.iter().copied().fold(0.0, f64::max))
    }

    /// Ends startup: the window becomes what the path delivers in one minimum RTT (plus the ACK clock).
    fn leave_startup(&mut self, delivered: f64, base: Duration) {
        self.phase = Phase::Steady;
        self.empty_rounds = 0;
        self.rounds_since_cut = 0;
        // The window just drained startup's queue, and a round's RTTs show the window of the round before: the
        // next rounds' empty queue is the drain's, not room to probe for.
        self.drain_rounds = DRAIN_ROUNDS;
        let bdp = self.bdp(delivered, base);
        if let Some(w) = self.window.as_mut() {
            *w = w.min(bdp);
        }
    }

    /// The first RTT sample after a silence: if it is what the path had (no queue built up, no longer path),
    /// the link was down, not congested, and the window and phase before the silence come back at once; else
    /// the path is measured afresh from the cut window, in startup.
    fn end_silence(&mut self, resume: Resume, rtt: Duration) {
        let same_path = self
            .base_mean()
            .or(self.min_rtt())
            .is_some_and(|b| rtt <= b * RESUME_RTT_FACTOR + STARTUP_QUEUE_LIMIT);
        if same_path {
            self.window = resume.window.or(self.window);
            self.phase = resume.phase;
            self.update_rate();
        } else {
            self.bw_len = 0;
        }
    }

    /// Keeps the window and rate within bounds and derives the pacing rate from the window.
    fn update_rate(&mut self) {
        let base = self
            .min_rtt()
            .unwrap_or(MIN_ROUND)
            .as_secs_f64()
            .max(MIN_BASE_RTT_SECS);
        if let Some(w) = self.window.as_mut() {
            let mut hi = f64::MAX;
            if let Some(m) = self.max_rate {
                // Room for twice the capped rate over the base RTT and the receiver's ACK cadence: the cap, not
                // the window, limits.
                hi = m * (CAPPED_WINDOW_RTTS * base + CAPPED_WINDOW_SLACK_SECS) + MIN_WINDOW_BYTES;
            }
            *w = w.clamp(
                (MIN_RATE * base).max(MIN_WINDOW_BYTES),
                hi.max(MIN_WINDOW_BYTES),
            );
            self.rate = PACING_GAIN * *w / base;
        }
        if let Some(bw) = self.bw_max() {
            let gain = match self.phase {
                Phase::Startup => STARTUP_BW_PACING_GAIN,
                Phase::Steady => BW_PACING_GAIN,
            };
            self.rate = self.rate.min(gain * bw);
        }
        self.rate = self.rate.max(MIN_RATE);
        if let Some(m) = self.max_rate {
            self.rate = self.rate.min(m);
        }
    }
}

impl RateController for DelayRate {
    fn on_ack(&mut self, s: &RateSample) {
        self.timeouts = 0;
        self.note_ack_gap(s.now, s.srtt);
        self.recent_acks[self.recent_acks_len % RECENT_ACKS] = (s.receiver_time, s.bytes_received);
        self.recent_acks_len += 1;
        if let Some(rtt) = s.rtt {
            if let Some(resume) = self.resume.take() {
                self.end_silence(resume, rtt);
            }
            self.note_rtt(s.now, rtt);
            if self.window.is_none() {
                // The first RTT: what has been in flight at the initial rate.
                self.window = Some(self.rate * rtt.as_secs_f64());
                self.update_rate();
            }
            // Startup ends as soon as a few RTT samples in a row show a queue, without waiting for the round
            // to end: growing for the rest of the round could overflow it.
            if self.phase == Phase::Startup && self.recent_len >= STARTUP_WARMUP_SAMPLES {
                if let (Some(base), Some(reference)) = (self.min_rtt(), self.base_mean()) {
                    let lowest = self.recent.iter().min().copied().unwrap_or_default();
                    // A queue of 8 ms, or of one RTT on shorter paths (whose short buffers may hold less).
                    let limit = STARTUP_QUEUE_LIMIT
                        .min(reference.max(STARTUP_QUEUE_FLOOR))
                        .as_secs_f64()
                        .max(STARTUP_JITTER_FACTOR * self.jitter);
                    if lowest.as_secs_f64() > reference.as_secs_f64() + limit {
                        let delivered = self.round.map_or(0.0, |r| {
                            let dt = s.receiver_time.saturating_sub(r.receiver_time);
                            if dt >= MIN_ROUND {
                                s.bytes_received.saturating_sub(r.bytes_received) as f64
                                    / dt.as_secs_f64()
                            } else {
                                0.0
                            }
                        });
                        let delivered = self.bottleneck_rate(delivered);
                        self.leave_startup(delivered.max(self.max_delivered), base);
                        self.update_rate();
                    }
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
        let round_len = s.srtt.max(match self.phase {
            Phase::Startup => STARTUP_MIN_ROUND,
            Phase::Steady => MIN_ROUND,
        });
        if s.now.saturating_duration_since(round.at) < round_len {
            return;
        }
        let (Some(base), Some(w)) = (self.min_rtt(), self.window) else {
            return;
        };
        if self.round_rtt_count == 0 {
            return;
        }
        let round_rtt = self.round_rtt_sum / self.round_rtt_count;
        self.base_mean_now = Some(self.base_mean_now.map_or(round_rtt, |m| m.min(round_rtt)));
        let base_mean = self.base_mean().unwrap_or(round_rtt);
        let recv_dt = s.receiver_time.saturating_sub(round.receiver_time);
        let sent = s.packets_sent.saturating_sub(round.packets_sent);
        if recv_dt.is_zero() || sent == 0 {
            return;
        }
        let delivered =
            s.bytes_received.saturating_sub(round.bytes_received) as f64 / recv_dt.as_secs_f64();
        self.max_delivered = self.max_delivered.max(delivered);
        self.note_bw(delivered);
        let got = s.packets_received.saturating_sub(round.packets_received);
        let loss = (1.0 - got as f64 / sent as f64).clamp(0.0, 1.0);
        // The round's mean RTT over the lowest round mean lately: jitter adds as much to both, so it does not
        // count as queue.
        let queueing = round_rtt.saturating_sub(base_mean);
        let loss_spike = loss > self.usual_loss + LOSS_SPIKE;
        self.rounds_since_cut = self.rounds_since_cut.saturating_add(1);
        match self.phase {
            Phase::Startup => {
                if loss_spike {
                    self.leave_startup(delivered, base);
                } else {
                    self.window = Some(w * startup_growth(s.srtt));
                }
            }
            Phase::Steady => {
                let rtt = (base + queueing).as_secs_f64();
                // The window that keeps none of this flow's bytes queued.
                let queue_free = w * base.as_secs_f64() / rtt;
                if loss_spike {
                    // Overflowing queues: back off once to what got through (the bottleneck's rate, as the
                    // latest ACKs show it), then give the cut a few rounds to show. Losses of the round that
                    // ended startup arrive a round or two later and were already answered by its exit.
                    if self.rounds_since_cut >= CUT_ROUNDS {
                        let bdp = self.bdp(self.bottleneck_rate(delivered), base);
                        self.window = Some(w.min(bdp) * LOSS_CUT);
                        self.rounds_since_cut = 0;
                    }
                } else if self.drain_due {
                    // Keep no queue of ours: the link stays busy while the queue drains.
                    self.window = Some(queue_free);
                    self.drain_due = false;
                    self.drain_rounds = DRAIN_ROUNDS;
                    self.empty_rounds = 0;
                } else {
                    let alpha = ALPHA_BYTES + ALPHA_DELAY.as_secs_f64() * w / rtt;
                    let target = queue_free + alpha;
                    self.window =
                        Some(((1.0 - GAMMA) * w + GAMMA * target).min(MAX_ROUND_GROWTH * w));
                    if self.drain_rounds > 0 {
                        self.drain_rounds -= 1;
                    } else if queueing < QUEUE_EMPTY {
                        self.empty_rounds += 1;
                        if self.empty_rounds >= EMPTY_ROUNDS {
                            // The path has room FAST would take many rounds to fill: grow by a share a round
                            // (with no startup exit to overshoot).
                            self.window = self.window.map(|w| w * REFILL_GROWTH);
                        }
                    } else {
                        self.empty_rounds = 0;
                    }
                }
            }
        }
        if !loss_spike {
            self.usual_loss = (1.0 - USUAL_LOSS_GAIN) * self.usual_loss + USUAL_LOSS_GAIN * loss;
        }
        self.update_rate();
        self.round = Some(start);
        self.round_rtt_sum = Duration::ZERO;
        self.round_rtt_count = 0;
    }

    fn on_timeout(&mut self, _now: Instant) {
        self.timeouts += 1;
        if self.resume.is_none() {
            self.resume = Some(Resume {
                window: self.window,
                phase: self.phase,
            });
        }
        if self.timeouts <= MAX_TIMEOUT_CUTS {
            self.rate *= TIMEOUT_CUT;
            if let Some(w) = self.window.as_mut() {
                *w *= TIMEOUT_CUT;
            }
            self.update_rate();
        }
        // Until an ACK shows the path is the same (see `end_silence`), it is measured afresh.
        self.phase = Phase::Startup;
        self.max_delivered = 0.0;
        self.recent_len = 0;
        self.round = None;
        self.round_rtt_sum = Duration::ZERO;
        self.round_rtt_count = 0;
    }

    fn rate(&self) -> u64 {
        self.rate as u64
    }

    fn window(&self) -> Option<u64> {
        self.window.map(|w| w as u64)
    }

    fn set_max_rate(&mut self, max_rate: Option<u64>) {
        self.max_rate = max_rate.map(|r| r as f64);
        self.update_rate();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_factory_caps_every_stream_at_the_whole_cap() {
        let capped = DelayRateFactory::new(Some(1_000_000));
        for s in 0..4 {
            let c = capped.build(s, 4);
            assert_eq!(c.name(), "delay");
            assert_eq!(c.rate(), 1_000_000, "stream {s}");
        }
        let free = DelayRateFactory::new(None).build(1, 2);
        assert_eq!(free.rate(), INITIAL_RATE as u64);
    }

    #[test]
    fn a_new_cap_applies_at_once_and_lifting_it_lets_the_rate_grow() {
        let mut c = DelayRate::new(Some(10_000_000));
        feed(&mut c, 40, 20, 20, 0.0, f64::MAX);
        assert_eq!(c.rate(), 10_000_000, "held at the first cap");
        c.set_max_rate(Some(1_000_000));
        assert_eq!(c.rate(), 1_000_000, "a lower cap applies at once");
        c.set_max_rate(None);
        feed(&mut c, 40, 20, 20, 0.0, f64::MAX);
        assert!(
            c.rate() > 2_000_000,
            "uncapped, the rate grows again: {c:?}"
        );
    }

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
    fn a_capped_window_holds_the_acks_cadence_on_a_short_path() {
        // Loopback: 50 µs round trips, a 50 MB/s (400 Mbit/s) cap.
        let cap = 50_000_000u64;
        let mut c = DelayRate::new(Some(cap));
        let start = Instant::now();
        let rtt = Duration::from_micros(50);
        let mut bytes = 0u64;
        // Half a second of ACKs: startup's rounds are at least 20 ms.
        for i in 0..10_000u32 {
            bytes += 64 * 1024;
            c.on_ack(&RateSample {
                now: start + rtt * i,
                rtt: Some(rtt),
                srtt: rtt,
                min_rtt: rtt,
                receiver_time: rtt * i,
                bytes_received: bytes,
                packets_received: u64::from(i + 1) * 4,
                packets_sent: u64::from(i + 1) * 4,
            });
        }
        assert_eq!(c.rate(), cap);
        let w = c.window().unwrap_or_default() as f64;
        assert!(
            w >= cap as f64 * CAPPED_WINDOW_SLACK_SECS,
            "a window of {w} bytes makes the sender wait for the receiver's ACK timer"
        );
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
