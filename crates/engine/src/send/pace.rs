//! `--max-rate`. It counts what the link carries, IP headers included (what `tc`, a provider's meter or the
//! interface counters see); each data path paces its own bytes (TCP: TLS plaintext; DCSP: datagrams), which are
//! [`share_of_cap`] of it.
//!
//! [`RateCap`] is the cap itself, shared by everything that paces one transfer and changeable while it runs
//! (a library user's `set`; later the orchestrator's rate change). [`WireBudget`] turns it into when the next
//! bytes may go: one per transfer, shared by all its DCSP streams (so a stream the CPU holds back leaves its
//! share to the others), or the TCP connection's.
//!
//! Over TCP, [`Pacer`] says when the next bytes of a `Data` frame may go. A frame is written in parts of about
//! [`PART_TIME`] at the cap, so that at 10 Mbit/s the wire sees 64 KiB every 52 ms rather than a 1 MiB burst
//! every 0.84 s (which made a 5 s window read 0.84x the cap).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use trackshift_proto::frame::DATA_PIECE;

/// How much sending time one part stands for.
const PART_TIME: Duration = Duration::from_millis(5);
/// The smallest part (below it, the wakeups cost more than the smoothness is worth).
const MIN_PART: usize = 64 * 1024;
/// How far TCP pacing may lag behind before it stops catching up (so a stall is not followed by a burst at line
/// rate).
const TCP_SLACK: Duration = Duration::from_millis(50);
/// The same for the DCSP streams' shared budget: the planes' threads are often descheduled for a millisecond
/// or more on a busy machine, and each datagram's gap is microseconds.
pub(super) const DCSP_SLACK: Duration = Duration::from_millis(10);

/// A TLS 1.3 record: up to 16 KiB of plaintext with a 5-byte header, the content type and a 16-byte tag.
const TLS_RECORD: usize = 16 * 1024;
const TLS_RECORD_OVERHEAD: usize = 22;
/// IPv4 (20) or IPv6 (40), TCP (20) and its timestamp option (12): a segment's headers.
const TCP_IPV4_HEADERS: usize = 52;
const TCP_IPV6_HEADERS: usize = 72;
/// Segment payload to assume when the socket does not say (a 1500-byte path).
const TYPICAL_MSS: usize = 1448;

/// The part of `cap` (bytes per second on the wire) that is payload when every `payload` bytes travel with
/// `overhead` more.
pub(super) fn share_of_cap(cap: u64, payload: usize, overhead: usize) -> u64 {
    let whole = (payload + overhead).max(1) as u128;
    (u128::from(cap) * payload as u128 / whole) as u64
}

/// The TLS plaintext rate that puts `cap` on the wire, with segments of `mss` payload bytes.
pub(super) fn tcp_payload_rate(cap: u64, mss: Option<usize>, ipv4: bool) -> u64 {
    let headers = if ipv4 {
        TCP_IPV4_HEADERS
    } else {
        TCP_IPV6_HEADERS
    };
    let segments = share_of_cap(cap, mss.unwrap_or(TYPICAL_MSS), headers);
    share_of_cap(segments, TLS_RECORD, TLS_RECORD_OVERHEAD)
}

/// A transfer's `--max-rate` in bytes per second on the wire, shared by everything that paces it; a clone sees
/// and makes the same changes. `None`: no cap.
#[derive(Debug, Clone, Default)]
pub struct RateCap(Arc<AtomicU64>);

impl RateCap {
    pub fn new(bytes_per_second: Option<u64>) -> Self {
        let cap = RateCap::default();
        cap.set(bytes_per_second);
        cap
    }

    pub fn get(&self) -> Option<u64> {
        Some(self.0.load(Ordering::Relaxed)).filter(|&r| r > 0)
    }

    /// A new cap for the rest of the transfer: the data paths pick it up before their next bytes.
    pub fn set(&self, bytes_per_second: Option<u64>) {
        self.0
            .store(bytes_per_second.map_or(0, |r| r.max(1)), Ordering::Relaxed);
    }
}

/// When the next bytes may go at a rate, for any number of threads: the time the bytes charged so far are
/// paid off (as nanoseconds since `origin`), which lags `now` by at most a slack.
#[derive(Debug)]
pub(super) struct WireBudget {
    origin: Instant,
    paid_until: AtomicU64,
    slack: Duration,
}

impl WireBudget {
    pub(super) fn new(slack: Duration) -> Self {
        let origin = Instant::now();
        WireBudget {
            origin,
            paid_until: AtomicU64::new(0),
            slack,
        }
    }

    /// When bytes may go next: now, or once what was charged is paid off.
    pub(super) fn ready_at(&self) -> Instant {
        self.origin + Duration::from_nanos(self.paid_until.load(Ordering::Relaxed))
    }

    /// `bytes` went at `now`, at `rate` bytes per second.
    pub(super) fn charge(&self, now: Instant, bytes: usize, rate: u64) {
        let cost = (bytes as u128 * 1_000_000_000 / u128::from(rate.max(1))) as u64;
        let floor = now
            .saturating_duration_since(self.origin)
            .saturating_sub(self.slack)
            .as_nanos() as u64;
        let _ = self
            .paid_until
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.max(floor) + cost)
            });
    }
}

/// `--max-rate` over one TCP connection.
#[derive(Debug)]
pub(super) struct Pacer {
    cap: RateCap,
    /// The connection's segment payload (`TCP_MAXSEG`) and address family, to turn the cap into a TLS
    /// plaintext rate.
    mss: Option<usize>,
    ipv4: bool,
    budget: WireBudget,
}

impl Pacer {
    pub(super) fn new(cap: RateCap, mss: Option<usize>, ipv4: bool) -> Self {
        Pacer {
            cap,
            mss,
            ipv4,
            budget: WireBudget::new(TCP_SLACK),
        }
    }

    /// The TLS plaintext rate the cap allows now, if capped.
    fn rate(&self) -> Option<u64> {
        self.cap
            .get()
            .map(|cap| tcp_payload_rate(cap, self.mss, self.ipv4).max(1))
    }

    /// How many bytes to write between two waits (a whole frame when uncapped).
    pub(super) fn part_len(&self) -> usize {
        self.rate().map_or(DATA_PIECE, |rate| {
            ((rate as f64 * PART_TIME.as_secs_f64()) as usize).clamp(MIN_PART, DATA_PIECE)
        })
    }

    /// Waits until `bytes` more may go.
    pub(super) async fn wait(&mut self, bytes: usize) {
        let Some(rate) = self.rate() else {
            return;
        };
        tokio::time::sleep_until(self.budget.ready_at().into()).await;
        self.budget
            .charge(tokio::time::Instant::now().into_std(), bytes, rate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    /// A pacer whose plaintext rate is about `rate` (loopback's 64 KiB segments).
    fn pacer(rate: u64) -> Pacer {
        Pacer::new(RateCap::new(Some(rate)), Some(65_483), true)
    }

    async fn send(p: &mut Pacer, bytes: usize) {
        let mut sent = 0;
        while sent < bytes {
            p.wait(p.part_len()).await;
            sent += p.part_len();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ten_megabytes_at_one_megabyte_a_second_take_ten_seconds_in_small_parts() {
        let mut p = pacer(1_000_000);
        assert_eq!(p.part_len(), MIN_PART);
        let rate = p.rate().expect("capped") as f64;
        let start = Instant::now();
        send(&mut p, 10_000_000).await;
        let took = start.elapsed().as_secs_f64();
        // The last part waits for the ones before it only.
        let expected = 10_000_000.0 / rate;
        assert!(
            (took - expected).abs() < 0.1,
            "{took} s, expected {expected}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_is_made_up_for_only_by_the_slack() {
        let mut p = pacer(1_000_000);
        p.wait(1000).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let start = Instant::now();
        // About 100 KB may go at once (50 ms of slack is 50 KB, plus what is due now), not 5 s worth.
        let mut sent = 0;
        while start.elapsed() == Duration::ZERO {
            p.wait(10_000).await;
            sent += 10_000;
        }
        assert!(
            sent <= 70_000,
            "{sent} bytes went in a burst after the stall"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cap_changed_while_sending_applies_to_the_next_part() {
        let cap = RateCap::new(Some(1_000_000));
        let mut p = Pacer::new(cap.clone(), Some(65_483), true);
        let start = Instant::now();
        send(&mut p, 2_000_000).await;
        let slow = start.elapsed().as_secs_f64();
        cap.set(Some(10_000_000));
        let start = Instant::now();
        send(&mut p, 2_000_000).await;
        let fast = start.elapsed().as_secs_f64();
        assert!(slow > 1.9 && fast < 0.3, "{slow} s then {fast} s");
        cap.set(None);
        let start = Instant::now();
        send(&mut p, 100_000_000).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "uncapped, nothing waits");
        assert_eq!(p.part_len(), DATA_PIECE);
    }

    #[test]
    fn streams_sharing_a_budget_pay_for_each_other() {
        let budget = WireBudget::new(DCSP_SLACK);
        let now = std::time::Instant::now();
        // Four streams send 1 MB each at once, at 1 MB/s for all of them: the budget is paid 4 s later.
        for _ in 0..4 {
            budget.charge(now, 1_000_000, 1_000_000);
        }
        let paid = budget.ready_at().saturating_duration_since(now);
        assert!(
            paid > Duration::from_millis(3_980) && paid <= Duration::from_secs(4),
            "{paid:?}"
        );
        // After a long idle spell only the slack is made up for.
        let later = now + Duration::from_secs(60);
        budget.charge(later, 0, 1_000_000);
        assert!(budget.ready_at() >= later - DCSP_SLACK);
    }

    #[test]
    fn the_wire_cap_leaves_the_payload_its_share() {
        // 100 Mbit/s on a 1500-byte path: 1448 of every 1500 bytes, less the TLS records' 22 per 16 KiB.
        let r = tcp_payload_rate(12_500_000, Some(1448), true);
        assert_eq!(r, 12_050_484);
        // Loopback's 64 KiB segments cost almost nothing.
        assert!(tcp_payload_rate(12_500_000, Some(65_483), true) > 12_470_000);
        assert_eq!(share_of_cap(1000, 1400, 28), 980);
    }

    #[test]
    fn parts_grow_with_the_rate_up_to_a_piece() {
        assert_eq!(pacer(1_250_000).part_len(), MIN_PART);
        let mid = pacer(125_000_000).part_len();
        assert!((620_000..=625_000).contains(&mid), "{mid}");
        assert_eq!(pacer(625_000_000).part_len(), DATA_PIECE);
    }
}
