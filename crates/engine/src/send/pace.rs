//! `--max-rate`. It counts what the link carries, IP headers included (what `tc`, a provider's meter or the
//! interface counters see); each data path paces its own bytes (TCP: TLS plaintext; DCSP: datagrams), which are
//! [`share_of_cap`] of it.
//!
//! Over TCP, [`Pacer`] says when the next bytes of a `Data` frame may go. A frame is written in parts of about
//! [`PART_TIME`] at the cap, so that at 10 Mbit/s the wire sees 64 KiB every 52 ms rather than a 1 MiB burst
//! every 0.84 s (which made a 5 s window read 0.84x the cap).

use std::time::Duration;

use tokio::time::Instant;
use trackshift_proto::frame::DATA_PIECE;

/// How much sending time one part stands for.
const PART_TIME: Duration = Duration::from_millis(5);
/// The smallest part (below it, the wakeups cost more than the smoothness is worth).
const MIN_PART: usize = 64 * 1024;
/// How far pacing may lag behind before it stops catching up (so a stall is not followed by a burst at line
/// rate).
const SLACK: Duration = Duration::from_millis(50);

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

#[derive(Debug)]
pub(super) struct Pacer {
    /// Bytes per second.
    rate: u64,
    next: Instant,
}

impl Pacer {
    /// A pacer at `rate` bytes per second (at least 1).
    pub(super) fn new(rate: u64) -> Self {
        Pacer {
            rate: rate.max(1),
            next: Instant::now(),
        }
    }

    /// How many bytes to write between two waits.
    pub(super) fn part_len(&self) -> usize {
        let at_rate = (self.rate as f64 * PART_TIME.as_secs_f64()) as usize;
        at_rate.clamp(MIN_PART, DATA_PIECE)
    }

    /// Waits until `bytes` more may go.
    pub(super) async fn wait(&mut self, bytes: usize) {
        tokio::time::sleep_until(self.next).await;
        self.next = self.next.max(Instant::now() - SLACK)
            + Duration::from_secs_f64(bytes as f64 / self.rate as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ten_megabytes_at_one_megabyte_a_second_take_ten_seconds_in_small_parts() {
        let mut p = Pacer::new(1_000_000);
        assert_eq!(p.part_len(), MIN_PART);
        let start = Instant::now();
        let mut sent = 0;
        while sent < 10_000_000 {
            p.wait(p.part_len()).await;
            sent += p.part_len();
        }
        let took = start.elapsed().as_secs_f64();
        // The last part waits for the ones before it only.
        assert!((9.9..10.1).contains(&took), "{took}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_is_made_up_for_only_by_the_slack() {
        let mut p = Pacer::new(1_000_000);
        p.wait(1000).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let start = Instant::now();
        // 100 KB may go at once (50 ms of slack is 50 KB, plus what is due now), not 5 s worth.
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
        assert_eq!(Pacer::new(1_250_000).part_len(), MIN_PART);
        assert_eq!(Pacer::new(125_000_000).part_len(), 625_000);
        assert_eq!(Pacer::new(625_000_000).part_len(), DATA_PIECE);
    }
}
