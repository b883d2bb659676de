//! The sans-IO impairment core: one [`LinkModel`] per direction decides, for each packet and the current
//! time, whether it is dropped (and why) or when it leaves the link. No sockets, no clocks of its own:
//! tests drive it with virtual time (`base + Duration`), the emulator with `Instant::now()`.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Bits per byte and nanoseconds per second, for the serialization delay at a rate in bits per second.
const BITS_PER_BYTE: u128 = 8;
const NANOS_PER_SEC: u128 = 1_000_000_000;
/// Packet buffers kept for reuse: a full default queue (100 ms) of 1,500-byte packets at a few hundred Mbit/s,
/// without a pool that grows without bound.
const MAX_POOLED_BUFFERS: usize = 4096;

// What finding a TCP or UDP checksum needs of the headers (RFC 791, RFC 8200, RFC 768, RFC 9293).
/// The IP version, the high nibble of the first byte.
const IP_V4: u8 = 4;
const IP_V6: u8 = 6;
/// IPv4's header length is its low nibble, in 32-bit words; 20 bytes at least.
const IPV4_IHL_MASK: u8 = 0x0f;
const HEADER_WORD: usize = 4;
const IPV4_MIN_HEADER: usize = 20;
/// IPv4 fields: total length (u16), flags and fragment offset (u16, a whole packet has no MF flag and
/// offset 0 in its low 14 bits), protocol.
const IPV4_TOTAL_LEN_AT: usize = 2;
const IPV4_FRAGMENT_AT: usize = 6;
const IPV4_MF_AND_OFFSET: u16 = 0x3fff;
const IPV4_PROTOCOL_AT: usize = 9;
/// IPv6's fixed header, with the payload length (u16) and the next header.
const IPV6_HEADER: usize = 40;
const IPV6_PAYLOAD_LEN_AT: usize = 4;
const IPV6_NEXT_HEADER_AT: usize = 6;
/// The source and destination addresses, which the checksum's pseudo-header covers.
const IPV4_ADDRS: std::ops::Range<usize> = 12..20;
const IPV6_ADDRS: std::ops::Range<usize> = 8..40;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const UDP_HEADER: usize = 8;
const TCP_MIN_HEADER: usize = 20;
/// TCP's header length is the high nibble of this byte, in 32-bit words.
const TCP_DATA_OFFSET_AT: usize = 12;
const UDP_CHECKSUM_AT: usize = 6;
const TCP_CHECKSUM_AT: usize = 16;
/// A UDP checksum that computes to zero is sent as all ones (zero means "no checksum" over IPv4).
const UDP_ZERO_CHECKSUM: u16 = 0xffff;

/// Gilbert-Elliott two-state burst loss. Per packet: lose it with `loss_bad` (bad state) or `loss_good`
/// (good state), then move good->bad with probability `p`, bad->good with probability `r`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GilbertElliott {
    /// P(good -> bad) per packet.
    pub p: f64,
    /// P(bad -> good) per packet.
    pub r: f64,
    /// Loss probability in the bad state (1.0 = classic Gilbert model).
    pub loss_bad: f64,
    /// Loss probability in the good state (usually 0).
    pub loss_good: f64,
}

impl GilbertElliott {
    /// Parameters from a mean loss rate and a mean stay in the bad state, in packets, with the given
    /// loss in the bad state and none in the good state: `r = 1/burst`, `pi_bad = mean/loss_bad`,
    /// `p = r * pi_bad / (1 - pi_bad)`. With `loss_bad = 1` the mean burst of consecutive losses is `burst`.
    pub fn from_mean(mean_loss: f64, mean_burst_len: f64, loss_bad: f64) -> Result<Self, String> {
        if !(0.0..1.0).contains(&mean_loss) {
            return Err(format!("burst loss {mean_loss} must be in [0, 1)"));
        }
        if mean_burst_len.is_nan() || mean_burst_len < 1.0 {
            return Err(format!(
                "mean burst length {mean_burst_len} must be >= 1 packet"
            ));
        }
        if !(loss_bad > 0.0 && loss_bad <= 1.0) {
            return Err(format!(
                "loss in the bad state {loss_bad} must be in (0, 1]"
            ));
        }
        let pi_bad = mean_loss / loss_bad;
        if pi_bad >= 1.0 {
            return Err(format!(
                "mean loss {mean_loss} is not reachable with loss {loss_bad} in the bad state"
            ));
        }
        let r = 1.0 / mean_burst_len;
        let p = r * pi_bad / (1.0 - pi_bad);
        Ok(Self {
            p,
            r,
            loss_bad,
            loss_good: 0.0,
        })
    }

    /// The long-run mean loss rate of these parameters.
    pub fn mean_loss(&self) -> f64 {
        if self.p + self.r == 0.0 {
            return self.loss_good;
        }
        let pi_bad = self.p / (self.p + self.r);
        pi_bad * self.loss_bad + (1.0 - pi_bad) * self.loss_good
    }
}

/// Scheduled outage: the link is down (both directions, every packet dropped at entry) for `down`
/// starting at every multiple of `every` after the start (first outage at `every`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outage {
    pub down: Duration,
    pub every: Duration,
}

impl Outage {
    /// Whether the link is down `elapsed` after the start.
    pub fn is_down(&self, elapsed: Duration) -> bool {
        if self.every.is_zero() || self.down.is_zero() || elapsed < self.every {
            return false;
        }
        let phase = elapsed.as_nanos() % self.every.as_nanos();
        phase < self.down.as_nanos()
    }
}

/// Default queue limit, in time at the link rate: 100 ms. See the README ("Queue") for why.
pub const DEFAULT_QUEUE: Duration = Duration::from_millis(100);
/// Default extra delay of a reordered packet.
pub const DEFAULT_REORDER_DELAY: Duration = Duration::from_millis(10);

/// Impairments of one direction of the link. Probabilities are fractions in `[0, 1]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkConfig {
    /// Rate limit in bits per second (`None`: no limit, no serialization delay).
    pub rate_bps: Option<u64>,
    /// Drop-tail queue limit, as waiting time at `rate_bps` (bytes = queue * rate / 8).
    pub queue: Duration,
    /// One-way propagation delay.
    pub delay: Duration,
    /// Jitter: a uniform extra in `[-jitter, +jitter]` around `delay` (never below zero).
    pub jitter: Duration,
    /// Let jitter reorder packets. Off by default: a packet never leaves before the previous one.
    pub jitter_reorders: bool,
    /// Independent random loss.
    pub loss: f64,
    /// Gilbert-Elliott burst loss.
    pub burst: Option<GilbertElliott>,
    /// Fraction of packets held back by `reorder_delay`, so later packets overtake them.
    pub reorder: f64,
    pub reorder_delay: Duration,
    /// Fraction of packets sent twice.
    pub duplicate: f64,
    /// Fraction of packets with one bit flipped in the IP payload.
    pub corrupt: f64,
    /// Recompute the UDP/TCP checksum after corrupting, so the damage reaches the application.
    pub fix_checksum: bool,
    /// Scheduled outages.
    pub outage: Option<Outage>,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            rate_bps: None,
            queue: DEFAULT_QUEUE,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            jitter_reorders: false,
            loss: 0.0,
            burst: None,
            reorder: 0.0,
            reorder_delay: DEFAULT_REORDER_DELAY,
            duplicate: 0.0,
            corrupt: 0.0,
            fix_checksum: false,
            outage: None,
        }
    }
}

impl LinkConfig {
    /// Checks ranges; returns a message naming the bad value.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("loss", self.loss),
            ("reorder", self.reorder),
            ("duplicate", self.duplicate),
            ("corrupt", self.corrupt),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} {v} must be between 0% and 100%"));
            }
        }
        if let Some(ge) = &self.burst {
            for (name, v) in [
                ("p", ge.p),
                ("r", ge.r),
                ("loss_bad", ge.loss_bad),
                ("loss_good", ge.loss_good),
            ] {
                if !(0.0..=1.0).contains(&v) {
                    return Err(format!("Gilbert-Elliott {name} {v} must be in [0, 1]"));
                }
            }
        }
        if self.rate_bps == Some(0) {
            return Err("rate 0 is not a rate (omit it for no limit)".into());
        }
        if let Some(o) = &self.outage {
            if o.down >= o.every {
                return Err(format!(
                    "outage of {:?} every {:?} leaves the link never up",
                    o.down, o.every
                ));
            }
        }
        Ok(())
    }

    /// The queue limit in bytes at the configured rate (`None` without a rate limit).
    pub fn queue_bytes(&self) -> Option<u64> {
        self.rate_bps
            .map(|r| (r as u128 * self.queue.as_nanos() / BITS_PER_BYTE / NANOS_PER_SEC) as u64)
    }
}

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropCause {
    /// Independent random loss.
    Random,
    /// Gilbert-Elliott burst loss.
    Burst,
    /// The rate limiter's queue was full.
    Queue,
    /// A scheduled outage.
    Outage,
}

/// A packet that goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    /// When it leaves the link (is written to the other side).
    pub release: Instant,
    /// Send a second copy at the same time.
    pub duplicate: bool,
    /// One bit was flipped (the buffer was modified in place).
    pub corrupted: bool,
    /// It was held back by the reorder delay.
    pub reordered: bool,
}

/// The fate of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Forward(Forward),
    Drop(DropCause),
}

/// Counters of one direction, per cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Packets read from the sending side.
    pub packets_in: u64,
    /// Packets that went through (duplicate copies not included).
    pub forwarded: u64,
    /// IP bytes of the forwarded packets.
    pub bytes: u64,
    /// IP bytes of every packet read from the sending side, dropped ones included: what the sender put on
    /// the wire.
    #[serde(default)]
    pub bytes_in: u64,
    pub dropped_random: u64,
    pub dropped_burst: u64,
    pub dropped_queue: u64,
    pub dropped_outage: u64,
    /// Extra copies sent.
    pub duplicated: u64,
    pub corrupted: u64,
    pub reordered: u64,
    /// Writes to the receiving TUN that failed (emulator only; not a link impairment).
    #[serde(default)]
    pub write_errors: u64,
}

impl Counters {
    /// All drops, whatever the cause.
    pub fn dropped(&self) -> u64 {
        self.dropped_random + self.dropped_burst + self.dropped_queue + self.dropped_outage
    }

    /// `(name, value)` pairs in a fixed order, for tables.
    pub fn fields(&self) -> [(&'static str, u64); 11] {
        [
            ("packets_in", self.packets_in),
            ("forwarded", self.forwarded),
            ("bytes", self.bytes),
            ("dropped_random", self.dropped_random),
            ("dropped_burst", self.dropped_burst),
            ("dropped_queue", self.dropped_queue),
            ("dropped_outage", self.dropped_outage),
            ("duplicated", self.duplicated),
            ("corrupted", self.corrupted),
            ("reordered", self.reordered),
            ("write_errors", self.write_errors),
        ]
    }
}

/// One direction of the emulated link.
#[derive(Debug)]
pub struct LinkModel {
    cfg: LinkConfig,
    rng: StdRng,
    start: Instant,
    /// When the transmitter finishes serializing everything accepted so far.
    link_free_at: Instant,
    /// Release time of the last in-order packet (FIFO constraint).
    last_release: Instant,
    ge_bad: bool,
    counters: Counters,
}

impl LinkModel {
    /// A model whose outage schedule starts at `start`, with a deterministic RNG from `seed`.
    pub fn new(cfg: LinkConfig, seed: u64, start: Instant) -> Self {
        Self {
            cfg,
            rng: StdRng::seed_from_u64(seed),
            start,
            link_free_at: start,
            last_release: start,
            ge_bad: false,
            counters: Counters::default(),
        }
    }

    pub fn config(&self) -> &LinkConfig {
        &self.cfg
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Counts a failed write on the receiving side.
    pub fn note_write_error(&mut self) {
        self.counters.write_errors += 1;
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (p >= 1.0 || self.rng.gen::<f64>() < p)
    }

    /// Decides the fate of `packet` (a whole IP packet) arriving at `now`. May flip a bit in it.
    pub fn process(&mut self, packet: &mut [u8], now: Instant) -> Verdict {
        self.counters.packets_in += 1;
        self.counters.bytes_in += packet.len() as u64;
        let v = self.decide(packet, now);
        match v {
            Verdict::Forward(f) => {
                self.counters.forwarded += 1;
                self.counters.bytes += packet.len() as u64;
                self.counters.duplicated += f.duplicate as u64;
                self.counters.corrupted += f.corrupted as u64;
                self.counters.reordered += f.reordered as u64;
            }
            Verdict::Drop(DropCause::Random) => self.counters.dropped_random += 1,
            Verdict::Drop(DropCause::Burst) => self.counters.dropped_burst += 1,
            Verdict::Drop(DropCause::Queue) => self.counters.dropped_queue += 1,
            Verdict::Drop(DropCause::Outage) => self.counters.dropped_outage += 1,
        }
        v
    }

    fn decide(&mut self, packet: &mut [u8], now: Instant) -> Verdict {
        // 1. Link down: nothing enters.
        if let Some(o) = self.cfg.outage {
            if o.is_down(now.saturating_duration_since(self.start)) {
                return Verdict::Drop(DropCause::Outage);
            }
        }
        // 2. Rate limit: drop-tail queue bounded in time, then serialization.
        let depart = match self.cfg.rate_bps {
            Some(rate) => {
                let begin = self.link_free_at.max(now);
                if begin - now > self.cfg.queue {
                    return Verdict::Drop(DropCause::Queue);
                }
                let bits = packet.len() as u128 * BITS_PER_BYTE;
                let ser = Duration::from_nanos((bits * NANOS_PER_SEC / rate.max(1) as u128) as u64);
                self.link_free_at = begin + ser;
                self.link_free_at
            }
            None => now,
        };
        // 3. Loss on the wire (the packet used its share of the rate).
        if self.chance(self.cfg.loss) {
            return Verdict::Drop(DropCause::Random);
        }
        if let Some(ge) = self.cfg.burst {
            let p_loss = if self.ge_bad {
                ge.loss_bad
            } else {
                ge.loss_good
            };
            let lost = self.chance(p_loss);
            self.ge_bad = if self.ge_bad {
                !self.chance(ge.r)
            } else {
                self.chance(ge.p)
            };
            if lost {
                return Verdict::Drop(DropCause::Burst);
            }
        }
        // 4. Damage.
        let duplicate = self.chance(self.cfg.duplicate);
        let corrupted = self.chance(self.cfg.corrupt) && {
            let fix = self.cfg.fix_checksum;
            corrupt_packet(packet, &mut self.rng, fix)
        };
        // 5. Propagation delay, jitter, reordering.
        let mut release = depart + self.cfg.delay;
        if !self.cfg.jitter.is_zero() {
            let j = self.cfg.jitter.as_nanos() as i128;
            let off = self.rng.gen_range(-j..=j);
            release = if off >= 0 {
                release + Duration::from_nanos(off as u64)
            } else {
                release
                    .checked_sub(Duration::from_nanos((-off) as u64))
                    .unwrap_or(depart)
                    .max(depart)
            };
        }
        let reordered = self.chance(self.cfg.reorder);
        if reordered {
            // Held back; later packets are not held behind it, so they overtake it.
            release += self.cfg.reorder_delay;
        } else if !self.cfg.jitter_reorders {
            release = release.max(self.last_release);
            self.last_release = release;
        }
        Verdict::Forward(Forward {
            release,
            duplicate,
            corrupted,
            reordered,
        })
    }
}

/// Flips one random bit in the IP payload of `packet`: in the TCP/UDP payload when there is one (so the
/// packet still reaches the same socket), else anywhere after the IP header. With `fix_checksum`, the
/// TCP/UDP checksum is recomputed afterwards (IPv4 and IPv6, unfragmented), and only a TCP/UDP payload is
/// damaged: a header with a flipped bit and a valid checksum is something no real link delivers, and it
/// wedges the kernel's TCP (a flipped timestamp poisons PAWS, which then drops every later segment of the
/// connection until TCP_USER_TIMEOUT). Returns false if the packet has nothing to damage.
pub fn corrupt_packet<R: Rng>(packet: &mut [u8], rng: &mut R, fix_checksum: bool) -> bool {
    let Some(info) = parse_l4(packet) else {
        return false;
    };
    let (from, to) = match info.l4 {
        Some((_, payload_at)) if payload_at < info.end => (payload_at, info.end),
        _ if fix_checksum => return false,
        _ => (info.ip_payload, info.end),
    };
    if from >= to {
        return false;
    }
    let byte = rng.gen_range(from..to);
    packet[byte] ^= 1 << rng.gen_range(0..8);
    if fix_checksum {
        fix_l4_checksum(packet);
    }
    true
}

struct L4Info {
    /// Offset of the IP payload.
    ip_payload: usize,
    /// End of the IP packet (total length, bounded by the buffer).
    end: usize,
    /// (protocol, offset of the transport payload) for unfragmented TCP/UDP.
    l4: Option<(u8, usize)>,
}

fn parse_l4(p: &[u8]) -> Option<L4Info> {
    let version = p.first()? >> 4;
    let u16_at = |at: usize| u16::from_be_bytes([p[at], p[at + 1]]);
    let (ip_payload, end, proto, whole) = match version {
        IP_V4 => {
            let ihl = usize::from(p[0] & IPV4_IHL_MASK) * HEADER_WORD;
            if ihl < IPV4_MIN_HEADER || p.len() < ihl {
                return None;
            }
            let total = usize::from(u16_at(IPV4_TOTAL_LEN_AT));
            let whole = u16_at(IPV4_FRAGMENT_AT) & IPV4_MF_AND_OFFSET == 0;
            (ihl, total.min(p.len()).max(ihl), p[IPV4_PROTOCOL_AT], whole)
        }
        IP_V6 => {
            if p.len() < IPV6_HEADER {
                return None;
            }
            let plen = usize::from(u16_at(IPV6_PAYLOAD_LEN_AT));
            let end = (IPV6_HEADER + plen).min(p.len());
            (IPV6_HEADER, end, p[IPV6_NEXT_HEADER_AT], true)
        }
        _ => return None,
    };
    let l4 = if !whole {
        None
    } else {
        match proto {
            PROTO_UDP if end >= ip_payload + UDP_HEADER => {
                Some((PROTO_UDP, ip_payload + UDP_HEADER))
            }
            PROTO_TCP if end >= ip_payload + TCP_MIN_HEADER => {
                let off = usize::from(p[ip_payload + TCP_DATA_OFFSET_AT] >> 4) * HEADER_WORD;
                (off >= TCP_MIN_HEADER && ip_payload + off <= end)
                    .then_some((PROTO_TCP, ip_payload + off))
            }
            _ => None,
        }
    };
    Some(L4Info {
        ip_payload,
        end,
        l4,
    })
}

/// Where the checksum sits in the header of `proto` (TCP or UDP).
fn checksum_at(proto: u8) -> usize {
    if proto == PROTO_UDP {
        UDP_CHECKSUM_AT
    } else {
        TCP_CHECKSUM_AT
    }
}

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        acc += (*last as u32) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Recomputes the TCP or UDP checksum of an unfragmented IPv4/IPv6 packet. Returns false if it is
/// neither (or a UDP/IPv4 packet without checksum, which stays without one).
pub fn fix_l4_checksum(p: &mut [u8]) -> bool {
    let Some(info) = parse_l4(p) else {
        return false;
    };
    let Some((proto, _)) = info.l4 else {
        return false;
    };
    let seg = info.ip_payload..info.end;
    let ck_at = info.ip_payload + checksum_at(proto);
    let v4 = p[0] >> 4 == IP_V4;
    if proto == PROTO_UDP && v4 && p[ck_at] == 0 && p[ck_at + 1] == 0 {
        return false;
    }
    p[ck_at] = 0;
    p[ck_at + 1] = 0;
    let len = (seg.end - seg.start) as u32;
    let mut acc = if v4 {
        sum16(&p[IPV4_ADDRS], 0)
    } else {
        sum16(&p[IPV6_ADDRS], 0)
    };
    acc += proto as u32 + (len >> 16) + (len & 0xffff);
    acc = sum16(&p[seg], acc);
    let mut ck = fold(acc);
    if proto == PROTO_UDP && ck == 0 {
        ck = UDP_ZERO_CHECKSUM;
    }
    p[ck_at..ck_at + 2].copy_from_slice(&ck.to_be_bytes());
    true
}

/// Packets waiting for their release time: a min-heap on (release, arrival order), so packets with the
/// same release time keep their order.
#[derive(Debug, Default)]
pub struct DelayLine {
    heap: BinaryHeap<Held>,
    seq: u64,
    pool: Vec<Vec<u8>>,
}

#[derive(Debug)]
struct Held {
    at: Instant,
    seq: u64,
    data: Vec<u8>,
}

impl PartialEq for Held {
    fn eq(&self, o: &Self) -> bool {
        self.at == o.at && self.seq == o.seq
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Held {
    fn cmp(&self, o: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap.
        o.at.cmp(&self.at).then(o.seq.cmp(&self.seq))
    }
}

impl DelayLine {
    pub fn new() -> Self {
        Self::default()
    }

    /// Holds a copy of `data` until `at`.
    pub fn push(&mut self, at: Instant, data: &[u8]) {
        let mut buf = self.pool.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(data);
        self.seq += 1;
        self.heap.push(Held {
            at,
            seq: self.seq,
            data: buf,
        });
    }

    /// The earliest release time held.
    pub fn next_release(&self) -> Option<Instant> {
        self.heap.peek().map(|h| h.at)
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Calls `f` on every packet due at `now`, in release order; returns how many.
    pub fn release_due(&mut self, now: Instant, mut f: impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        while self.heap.peek().is_some_and(|h| h.at <= now) {
            if let Some(h) = self.heap.pop() {
                f(&h.data);
                n += 1;
                if self.pool.len() < MAX_POOLED_BUFFERS {
                    self.pool.push(h.data);
                }
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PKT: usize = 1250;

    /// Verifies the TCP/UDP checksum: `Some(true)` if it is right.
    fn l4_checksum_ok(p: &[u8]) -> Option<bool> {
        let mut copy = p.to_vec();
        let info = parse_l4(p)?;
        let (proto, _) = info.l4?;
        let ck_at = info.ip_payload + checksum_at(proto);
        fix_l4_checksum(&mut copy);
        Some(copy[ck_at..ck_at + 2] == p[ck_at..ck_at + 2])
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Feeds `n` packets of `size` bytes, one every `gap`, returning the verdicts with arrival times.
    fn run(
        cfg: LinkConfig,
        n: usize,
        gap: Duration,
        size: usize,
    ) -> (LinkModel, Vec<(Instant, Verdict)>) {
        let t0 = Instant::now();
        let mut m = LinkModel::new(cfg, 42, t0);
        let mut buf = vec![0u8; size];
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let now = t0 + gap * i as u32;
            out.push((now, m.process(&mut buf, now)));
        }
        (m, out)
    }

    fn releases(v: &[(Instant, Verdict)]) -> Vec<Instant> {
        v.iter()
            .filter_map(|(_, v)| match v {
                Verdict::Forward(f) => Some(f.release),
                Verdict::Drop(_) => None,
            })
            .collect()
    }

    #[test]
    fn plain_delay_is_exact() {
        let (_, v) = run(
            LinkConfig {
                delay: ms(50),
                ..Default::default()
            },
            100,
            ms(1),
            PKT,
        );
        for (now, v) in v {
            assert_eq!(
                v,
                Verdict::Forward(Forward {
                    release: now + ms(50),
                    duplicate: false,
                    corrupted: false,
                    reordered: false
                })
            );
        }
    }

    #[test]
    fn random_loss_rate_within_tolerance() {
        let (m, _) = run(
            LinkConfig {
                loss: 0.05,
                ..Default::default()
            },
            200_000,
            Duration::from_micros(10),
            100,
        );
        let c = m.counters();
        let rate = c.dropped_random as f64 / c.packets_in as f64;
        assert!((0.048..0.052).contains(&rate), "loss {rate}");
        assert_eq!(c.forwarded + c.dropped(), c.packets_in);
    }

    /// Mean length of runs of consecutive drops.
    fn mean_run(v: &[(Instant, Verdict)]) -> f64 {
        let (mut runs, mut drops, mut prev) = (0u64, 0u64, false);
        for (_, v) in v {
            let d = matches!(v, Verdict::Drop(_));
            if d {
                drops += 1;
                if !prev {
                    runs += 1;
                }
            }
            prev = d;
        }
        drops as f64 / runs as f64
    }

    #[test]
    fn gilbert_elliott_mean_and_burstiness() {
        let ge = GilbertElliott::from_mean(0.03, 5.0, 1.0).unwrap();
        assert!((ge.mean_loss() - 0.03).abs() < 1e-12);
        let (m, v) = run(
            LinkConfig {
                burst: Some(ge),
                ..Default::default()
            },
            500_000,
            Duration::from_micros(10),
            100,
        );
        let c = m.counters();
        let rate = c.dropped_burst as f64 / c.packets_in as f64;
        assert!((0.027..0.033).contains(&rate), "GE loss {rate}");
        let burst = mean_run(&v);
        assert!((4.5..5.5).contains(&burst), "mean burst {burst}");
        // The same mean loss drawn independently comes in runs of ~1.03.
        let (_, v) = run(
            LinkConfig {
                loss: 0.03,
                ..Default::default()
            },
            500_000,
            Duration::from_micros(10),
            100,
        );
        let random = mean_run(&v);
        assert!(random < 1.1, "random loss runs {random}");
    }

    #[test]
    fn gilbert_elliott_parameters() {
        let ge = GilbertElliott::from_mean(0.02, 4.0, 0.5).unwrap();
        assert!((ge.r - 0.25).abs() < 1e-12);
        assert!((ge.mean_loss() - 0.02).abs() < 1e-12);
        assert!(GilbertElliott::from_mean(0.6, 4.0, 0.5).is_err());
        assert!(GilbertElliott::from_mean(0.01, 0.5, 1.0).is_err());
    }

    #[test]
    fn serialization_delay_at_rate() {
        // 8 Mbit/s: a 1000-byte packet takes 1 ms on the wire.
        let t0 = Instant::now();
        let cfg = LinkConfig {
            rate_bps: Some(8_000_000),
            delay: ms(10),
            ..Default::default()
        };
        let mut m = LinkModel::new(cfg, 1, t0);
        let mut p = vec![0u8; 1000];
        for i in 1..=10u64 {
            match m.process(&mut p, t0) {
                Verdict::Forward(f) => assert_eq!(f.release, t0 + ms(10) + ms(i)),
                v => panic!("{v:?}"),
            }
        }
    }

    #[test]
    fn queue_drops_at_rate() {
        // Offer 20 Mbit/s to a 10 Mbit/s link with a 50 ms queue, for 10 s of virtual time.
        let cfg = LinkConfig {
            rate_bps: Some(10_000_000),
            queue: ms(50),
            ..Default::default()
        };
        let gap = Duration::from_micros(500); // 1250 B every 0.5 ms = 20 Mbit/s
        let (m, v) = run(cfg, 20_000, gap, PKT);
        let c = m.counters();
        let delivered_mbit = c.bytes as f64 * 8.0 / 10.0 / 1e6;
        assert!(
            (9.9..10.2).contains(&delivered_mbit),
            "goodput {delivered_mbit} Mbit/s"
        );
        assert!(c.dropped_queue > 9_000 && c.dropped_queue < 10_200, "{c:?}");
        // Nobody waits more than the queue limit plus its own serialization (1 ms).
        for (now, v) in &v {
            if let Verdict::Forward(f) = v {
                assert!(f.release - *now <= ms(51), "{:?}", f.release - *now);
            }
        }
        // Under the rate: no queue drops.
        let cfg = LinkConfig {
            rate_bps: Some(10_000_000),
            queue: ms(50),
            ..Default::default()
        };
        let (m, _) = run(cfg, 5_000, Duration::from_micros(1100), PKT);
        assert_eq!(m.counters().dropped_queue, 0);
    }

    #[test]
    fn outages_drop_everything_on_schedule() {
        let o = Outage {
            down: Duration::from_secs(3),
            every: Duration::from_secs(20),
        };
        let cfg = LinkConfig {
            outage: Some(o),
            ..Default::default()
        };
        let (m, v) = run(cfg, 60_000, ms(1), 100);
        assert_eq!(m.counters().dropped_outage, 6_000);
        for (i, (_, v)) in v.iter().enumerate() {
            let s = i / 1000;
            let down = (20..23).contains(&s) || (40..43).contains(&s);
            assert_eq!(
                matches!(v, Verdict::Drop(DropCause::Outage)),
                down,
                "at {i} ms"
            );
        }
    }

    fn in_order(r: &[Instant]) -> bool {
        r.windows(2).all(|w| w[0] <= w[1])
    }

    #[test]
    fn jitter_does_not_reorder_by_default() {
        let cfg = LinkConfig {
            delay: ms(100),
            jitter: ms(10),
            rate_bps: Some(100_000_000),
            ..Default::default()
        };
        let (m, v) = run(cfg.clone(), 20_000, Duration::from_micros(200), PKT);
        let r = releases(&v);
        assert!(in_order(&r));
        assert_eq!(m.counters().reordered, 0);
        // Delays spread over [90, 110] ms (plus serialization), pushed up by the FIFO rule only.
        let d: Vec<_> = v
            .iter()
            .map(|(n, v)| {
                if let Verdict::Forward(f) = v {
                    f.release - *n
                } else {
                    ms(0)
                }
            })
            .collect();
        assert!(d.iter().all(|d| *d >= ms(90) && *d <= ms(111)));
        let mean = d.iter().sum::<Duration>() / d.len() as u32;
        assert!(mean > ms(100) && mean < ms(108), "{mean:?}");
        // Allowed explicitly, jitter does reorder.
        let (_, v) = run(
            LinkConfig {
                jitter_reorders: true,
                ..cfg
            },
            20_000,
            Duration::from_micros(200),
            PKT,
        );
        assert!(!in_order(&releases(&v)));
    }

    #[test]
    fn reorder_holds_some_packets_back() {
        let cfg = LinkConfig {
            delay: ms(20),
            reorder: 0.02,
            reorder_delay: ms(5),
            ..Default::default()
        };
        let (m, v) = run(cfg, 50_000, Duration::from_micros(100), PKT);
        let c = m.counters();
        let f = c.reordered as f64 / c.packets_in as f64;
        assert!((0.018..0.022).contains(&f), "{f}");
        assert!(!in_order(&releases(&v)));
        // The in-order packets alone stay in order.
        let normal: Vec<_> = v
            .iter()
            .filter_map(|(_, v)| match v {
                Verdict::Forward(f) if !f.reordered => Some(f.release),
                _ => None,
            })
            .collect();
        assert!(in_order(&normal));
    }

    #[test]
    fn duplication_rate() {
        let (m, _) = run(
            LinkConfig {
                duplicate: 0.01,
                ..Default::default()
            },
            100_000,
            Duration::from_micros(10),
            100,
        );
        let f = m.counters().duplicated as f64 / 100_000.0;
        assert!((0.009..0.011).contains(&f), "{f}");
    }

    #[test]
    fn same_seed_same_fate() {
        let cfg = LinkConfig {
            loss: 0.1,
            jitter: ms(5),
            delay: ms(10),
            reorder: 0.05,
            ..Default::default()
        };
        let t0 = Instant::now();
        let mut a = LinkModel::new(cfg.clone(), 7, t0);
        let mut b = LinkModel::new(cfg, 7, t0);
        let mut p = vec![0u8; 200];
        for i in 0..10_000u32 {
            let now = t0 + Duration::from_micros(50) * i;
            assert_eq!(a.process(&mut p, now), b.process(&mut p.clone(), now));
        }
    }

    fn udp_packet(payload: &[u8]) -> Vec<u8> {
        let total = 20 + 8 + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[198, 18, 0, 1]);
        p[16..20].copy_from_slice(&[198, 18, 1, 1]);
        p[20..22].copy_from_slice(&4000u16.to_be_bytes());
        p[22..24].copy_from_slice(&5000u16.to_be_bytes());
        p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p[26] = 1; // non-zero placeholder so the checksum gets computed
        p[28..].copy_from_slice(payload);
        assert!(fix_l4_checksum(&mut p));
        p
    }

    fn tcp_packet(payload: &[u8]) -> Vec<u8> {
        let total = 20 + 20 + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[9] = 6;
        p[12..16].copy_from_slice(&[198, 18, 0, 1]);
        p[16..20].copy_from_slice(&[198, 18, 1, 1]);
        p[32] = 5 << 4;
        p[40..].copy_from_slice(payload);
        assert!(fix_l4_checksum(&mut p));
        p
    }

    #[test]
    fn checksum_matches_known_value() {
        // RFC 1071 style check: a checksummed packet sums to 0xffff over pseudo-header + segment.
        let p = udp_packet(b"hello, trackshift");
        assert_eq!(l4_checksum_ok(&p), Some(true));
        let mut q = p.clone();
        q[30] ^= 1;
        assert_eq!(l4_checksum_ok(&q), Some(false));
    }

    #[test]
    fn corruption_flips_one_payload_bit() {
        let mut rng = StdRng::seed_from_u64(3);
        for make in [udp_packet as fn(&[u8]) -> Vec<u8>, tcp_packet] {
            for fix in [false, true] {
                let orig = make(&[0xAA; 1000]);
                let mut p = orig.clone();
                assert!(corrupt_packet(&mut p, &mut rng, fix));
                let hdr = if orig[9] == 17 { 28 } else { 40 };
                let flipped: u32 = orig[hdr..]
                    .iter()
                    .zip(&p[hdr..])
                    .map(|(a, b)| (a ^ b).count_ones())
                    .sum();
                assert_eq!(flipped, 1);
                assert_eq!(l4_checksum_ok(&p), Some(fix), "fix={fix}");
            }
        }
        // Through the model, counted.
        let cfg = LinkConfig {
            corrupt: 0.5,
            fix_checksum: true,
            ..Default::default()
        };
        let mut m = LinkModel::new(cfg, 9, Instant::now());
        let mut bad = 0;
        for _ in 0..1000 {
            let mut p = udp_packet(&[7; 100]);
            if let Verdict::Forward(f) = m.process(&mut p, Instant::now()) {
                bad += f.corrupted as u32;
                assert_eq!(l4_checksum_ok(&p), Some(true));
            }
        }
        assert_eq!(m.counters().corrupted, bad as u64);
        assert!((400..600).contains(&bad));
    }

    #[test]
    fn with_the_checksum_fixed_only_payloads_are_corrupted() {
        // A pure ACK (a TCP header, no payload) stays whole: with a valid checksum a flipped bit in its
        // timestamp would poison the receiving kernel's PAWS check and wedge the connection. Without the fix
        // the checksum catches the damage, as on a real link.
        let mut rng = StdRng::seed_from_u64(5);
        let ack = tcp_packet(&[]);
        for _ in 0..100 {
            let mut p = ack.clone();
            assert!(!corrupt_packet(&mut p, &mut rng, true));
            assert_eq!(p, ack);
            assert!(corrupt_packet(&mut p, &mut rng, false));
            assert_ne!(p, ack);
            // Invalid, or (a flipped data offset) no longer parsed as TCP at all.
            assert_ne!(l4_checksum_ok(&p), Some(true));
        }
    }

    #[test]
    fn delay_line_releases_in_time_order() {
        let t0 = Instant::now();
        let mut d = DelayLine::new();
        d.push(t0 + ms(3), b"c");
        d.push(t0 + ms(1), b"a");
        d.push(t0 + ms(3), b"d");
        d.push(t0 + ms(2), b"b");
        assert_eq!(d.next_release(), Some(t0 + ms(1)));
        let mut got = Vec::new();
        assert_eq!(d.release_due(t0 + ms(2), |p| got.push(p.to_vec())), 2);
        assert_eq!(d.release_due(t0 + ms(9), |p| got.push(p.to_vec())), 2);
        assert_eq!(
            got,
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]
        );
        assert!(d.is_empty());
    }
}
