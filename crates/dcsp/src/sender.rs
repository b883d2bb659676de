//! The sending half of a DCSP connection.
//!
//! The driver pushes whole blocks of file bytes ([`DcspSender::push_block`], or without a copy
//! [`DcspSender::push_shared_block`], while [`DcspSender::wants_block`]
//! says there is room), feeds it the receiver's datagrams and asks for datagrams to send. The sender computes
//! parity, paces datagrams at the controller's rate, keeps every block until the receiver reports it complete,
//! answers NACKs by re-sending the original shards the receiver lacks, and pings when ACKs stop coming.

use std::collections::{BTreeMap, VecDeque};
use std::ops::AddAssign;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ack::Ack;
use crate::crypto::{DirectionKeys, ReplayWindow};
use crate::fec::{encode_parity, ParityEncoder, ParityMode};
use crate::geometry::{BlockGeometry, BlockSpan};
use crate::packet::{Header, PacketType, ShardHeader, MAX_PACKET_NUMBER};
use crate::rate::{RateController, RateSample};
use crate::DcspError;

/// A NACKed block is re-sent once the receiver has seen a packet sent this long after the block's last shard
/// (or four RTT deviations, if more): less than that may be reordering, not loss.
const MIN_REORDER_WINDOW: Duration = Duration::from_millis(3);
/// A block with no later packet to overtake it (the tail) is re-sent this share of an RTT after its last shard.
const TAIL_TIME_FACTOR: f64 = 1.25;
/// The pacer may send this far ahead of schedule after an idle moment (lets drivers batch datagrams).
const PACING_BURST: Duration = Duration::from_millis(1);
/// Slack added to the probe timeout for the receiver's ACK delay.
const PTO_SLACK: Duration = Duration::from_millis(25);
/// Longest wait between probes while the path is silent.
const MAX_PTO: Duration = Duration::from_secs(1);
/// Longest wait between probes once the silence has been reported to the controller (an outage): a ping of
/// about 60 bytes three times a second, and the sender learns the link is back within this and one round trip.
const OUTAGE_PROBE_INTERVAL: Duration = Duration::from_millis(300);
/// Probe timeouts in a row that double the wait at most (64×); [`MAX_PTO`] caps it before that on most paths.
const MAX_PTO_DOUBLINGS: u32 = 6;
/// Probes in a row without an answer that tell the rate controller the path is down or badly congested: one
/// lost probe is just a loss.
const PTOS_FOR_TIMEOUT: u32 = 2;
/// The smoothed RTT before any sample: a guess on the long side, so the first probe does not fire before a
/// satellite link's first ACK can arrive.
const INITIAL_RTT: Duration = Duration::from_millis(300);
/// Smallest RTT sample: an ACK delay larger than the measured time must not make a zero (or negative) RTT.
const MIN_RTT_SAMPLE: Duration = Duration::from_micros(1);
/// RFC 6298's estimator: the smoothed RTT moves 1/8 of the way to each sample...
const SRTT_GAIN_DIVISOR: u32 = 8;
/// ...its mean deviation 1/4 of the way to the sample's distance, starting at half the first sample...
const RTTVAR_GAIN_DIVISOR: u32 = 4;
const FIRST_RTTVAR_DIVISOR: u32 = 2;
/// ...and a wait longer than the smoothed RTT plus this many deviations is more than jitter (RFC 6298's K).
const RTTVAR_WEIGHT: u32 = 4;
/// Block bytes held: this many round trips at the current rate (a block stays until the receiver reports it
/// complete, which takes one round trip and, when a repair is needed, another)...
const WINDOW_RTTS: f64 = 2.0;
/// ...plus this long at the current rate, so that short paths, whose round trips hold almost nothing, still
/// keep blocks ahead of the ACKs (bounded by `max_buffered`).
const WINDOW_SLACK: Duration = Duration::from_millis(100);
/// A datagram's bytes besides its shard, for estimating bytes in flight once the send-time ring has forgotten
/// a packet: DCSP's 40 ([`crate::DATA_OVERHEAD`]) rounded up, erring towards more in flight.
const DATAGRAM_OVERHEAD_ESTIMATE: u64 = 64;
/// Datagrams per loss measurement: enough that one lost datagram moves it by less than half a percent.
const LOSS_SAMPLE_PACKETS: u64 = 256;
/// Each loss measurement moves the estimate this share of the way: parity follows a changed path within a few
/// measurements, without jumping at one burst.
const LOSS_GAIN: f64 = 0.25;
/// In the tail, a repair carries spare shards for this many times the losses a block of
/// [`crate::fec::AUTO_DATA_SHARDS`] expects (plus one)...
const TAIL_SPARE_FACTOR: f64 = 2.0;
/// ...but at most this many, so a very lossy tail does not send its blocks over and over.
const MAX_TAIL_SPARES: f64 = 8.0;
/// Send-time records kept for RTT samples (a ring indexed by packet number): 65,536 packets, about 0.8 s of
/// 1,500-byte datagrams at 1 Gbit/s, more than a round trip holds, so an ACK's packet is still in it.
const SENT_RING: usize = 1 << 16;
/// Smallest amount of block data kept in flight, whatever the rate: about 22 blocks on a 1500-byte path, so
/// interleaving and parity have blocks to work with before the rate is known and on slow paths.
const MIN_WINDOW: usize = 2 * 1024 * 1024;
/// First transmissions take turns among this many queued blocks, one shard each (see [`ShardQueue`])...
pub const INTERLEAVE_BLOCKS: usize = 16;
/// ...or fewer, so that the blocks taking turns hold at most this many bytes: a block is complete only when
/// its last shard arrives, and large blocks (16 KiB datagrams on loopback) need no spreading to survive a
/// burst of a few datagrams.
pub const INTERLEAVE_BYTES: u64 = 1536 * 1024;

/// A block's file bytes, shared with the driver rather than copied: the sender only reads them, and drops its
/// share once the receiver has the block (a driver's pooled buffer then goes home).
pub type SharedBlock = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// What the sender needs.
#[derive(Debug)]
pub struct SenderConfig {
    pub conn_id: u64,
    pub keys: DirectionKeys,
    pub geometry: BlockGeometry,
    pub parity: ParityMode,
    pub controller: Box<dyn RateController>,
    /// Most block bytes held (sent or queued, not yet acknowledged): the sender's memory bound.
    pub max_buffered: usize,
}

/// Counters for the progress display and the summary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SenderStats {
    pub packets_sent: u64,
    pub bytes_sent: u64,
    pub data_packets: u64,
    pub parity_packets: u64,
    /// Original shards sent again after a NACK.
    pub packets_retransmitted: u64,
    pub pings: u64,
    pub acks_received: u64,
    /// Datagrams from the receiver that failed checks (forged, corrupted, replayed, malformed).
    pub packets_dropped: u64,
    pub blocks_acked: u64,
    /// Blocks the receiver rebuilt from parity (as it last reported).
    pub fec_recovered: u64,
    pub srtt: Option<Duration>,
    pub min_rtt: Option<Duration>,
    /// Pacing rate, bytes per second.
    pub rate: u64,
    /// Recent loss rate seen by the receiver, a fraction.
    pub loss: f64,
    /// Recovery shards per block now.
    pub parity: u8,
    pub data_shards: u8,
    pub probe_timeouts: u64,
    /// Pings sent after the last queued shard to learn the tail's losses early.
    pub tail_probes: u64,
    /// The rate controller's phase.
    pub phase: &'static str,
}

/// The streams of one transfer summed (`--streams`): counters and pacing rates add up; the path figures (RTT,
/// loss, parity, data shards, controller phase) stay those of the left-hand side, the first stream.
impl AddAssign for SenderStats {
    fn add_assign(&mut self, rhs: Self) {
        // Destructured, so that a new field cannot be left out without a decision here.
        let Self {
            packets_sent,
            bytes_sent,
            data_packets,
            parity_packets,
            packets_retransmitted,
            pings,
            acks_received,
            packets_dropped,
            blocks_acked,
            fec_recovered,
            srtt: _,
            min_rtt: _,
            rate,
            loss: _,
            parity: _,
            data_shards: _,
            probe_timeouts,
            tail_probes,
            phase: _,
        } = rhs;
        self.packets_sent += packets_sent;
        self.bytes_sent += bytes_sent;
        self.data_packets += data_packets;
        self.parity_packets += parity_packets;
        self.packets_retransmitted += packets_retransmitted;
        self.pings += pings;
        self.acks_received += acks_received;
        self.packets_dropped += packets_dropped;
        self.blocks_acked += blocks_acked;
        self.fec_recovered += fec_recovered;
        self.rate += rate;
        self.probe_timeouts += probe_timeouts;
        self.tail_probes += tail_probes;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ShardRef {
    Data(u8),
    Parity(u8),
}

/// A block whose first transmission is queued: shards `next..data + parity` are still to go. Its parity count
/// is decided when its first shard is about to go (see [`ShardQueue::unstarted`]).
#[derive(Debug, Clone, Copy)]
struct QueuedBlock {
    block: u32,
    next: u16,
    data: u8,
    parity: Option<u8>,
}

/// First transmissions, interleaved: the shards of the first [`INTERLEAVE_BLOCKS`] queued blocks take turns
/// (block a shard 0, block b shard 0, ..., block a shard 1, ...), and a finished block's place goes to the
/// next one queued. A burst of lost datagrams then takes one shard from each of several blocks, which their
/// parity repairs, instead of more shards from one block than its parity can (which costs a NACK round trip
/// and a re-send). Only the order changes: each block still goes whole, data shards before parity.
#[derive(Debug)]
struct ShardQueue {
    blocks: VecDeque<QueuedBlock>,
    /// How many blocks take turns.
    depth: usize,
    /// Position (within the first `depth`) of the block whose turn is next.
    turn: usize,
}

impl ShardQueue {
    /// A queue for blocks of `block_bytes` (see [`INTERLEAVE_BYTES`]).
    fn new(block_bytes: u64) -> Self {
        let depth = (INTERLEAVE_BYTES / block_bytes.max(1)).clamp(1, INTERLEAVE_BLOCKS as u64);
        Self {
            blocks: VecDeque::new(),
            depth: depth as usize,
            turn: 0,
        }
    }

    fn push(&mut self, block: u32, data: u8) {
        // A block pushed again (its chunk failed verification) goes afresh: forget what was left of it.
        self.blocks.retain(|b| b.block != block);
        self.blocks.push_back(QueuedBlock {
            block,
            next: 0,
            data,
            parity: None,
        });
    }

    /// Moves the turn into the interleaved blocks; the block whose turn it is.
    fn current(&mut self) -> Option<&mut QueuedBlock> {
        let depth = self.blocks.len().min(self.depth);
        if self.turn >= depth {
            self.turn = 0;
        }
        self.blocks.get_mut(self.turn)
    }

    /// The block whose turn it is, with its data shard count, if its parity count is still open: the caller
    /// decides it with [`ShardQueue::set_parity`] before [`ShardQueue::pop`].
    fn unstarted(&mut self) -> Option<(u32, u8)> {
        self.current()
            .filter(|q| q.parity.is_none())
            .map(|q| (q.block, q.data))
    }

    fn set_parity(&mut self, parity: u8) {
        if let Some(q) = self.current() {
            q.parity = Some(parity);
        }
    }

    fn pop(&mut self) -> Option<(u32, ShardRef)> {
        let q = self.current()?;
        let shard = match u8::try_from(q.next) {
            Ok(i) if i < q.data => ShardRef::Data(i),
            _ => ShardRef::Parity((q.next - u16::from(q.data)) as u8),
        };
        let block = q.block;
        q.next += 1;
        if q.next >= u16::from(q.data) + u16::from(q.parity.unwrap_or(0)) {
            // The next queued block moves into this place; the turn passes to the one after it.
            self.blocks.remove(self.turn);
        } else {
            self.turn += 1;
        }
        Some((block, shard))
    }

    fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}

struct BlockState {
    span: BlockSpan,
    /// The block's `span.len` bytes; the wire pads its last shard with zeros.
    data: SharedBlock,
    parity: Vec<u8>,
    parity_count: u8,
    first_pn: Option<u64>,
    last_pn: Option<u64>,
    last_sent: Option<Instant>,
    /// Shards of the first transmission still queued.
    unsent: u16,
    repairs_pending: u16,
}

impl std::fmt::Debug for BlockState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockState")
            .field("span", &self.span)
            .field("parity_count", &self.parity_count)
            .field("first_pn", &self.first_pn)
            .field("last_pn", &self.last_pn)
            .field("unsent", &self.unsent)
            .field("repairs_pending", &self.repairs_pending)
            .finish_non_exhaustive()
    }
}

impl BlockState {
    /// Appends the `shard_size` bytes of `shard` (a short last data shard zero-padded, as the wire carries it).
    fn append_shard(&self, shard: ShardRef, shard_size: usize, out: &mut Vec<u8>) {
        let end = out.len() + shard_size;
        match shard {
            ShardRef::Data(i) => {
                let data = (*self.data).as_ref();
                let from = (usize::from(i) * shard_size).min(data.len());
                out.extend_from_slice(&data[from..data.len().min(from + shard_size)]);
            }
            ShardRef::Parity(j) => {
                out.extend_from_slice(&self.parity[usize::from(j) * shard_size..][..shard_size]);
            }
        }
        out.resize(end, 0);
    }
}

#[derive(Debug, Default)]
struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    min: Option<Duration>,
}

impl RttEstimator {
    fn sample(&mut self, rtt: Duration) {
        self.min = Some(self.min.map_or(rtt, |m| m.min(rtt)));
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / FIRST_RTTVAR_DIVISOR;
            }
            Some(s) => {
                let diff = s.abs_diff(rtt);
                self.rttvar =
                    (self.rttvar * (RTTVAR_GAIN_DIVISOR - 1) + diff) / RTTVAR_GAIN_DIVISOR;
                self.srtt = Some((s * (SRTT_GAIN_DIVISOR - 1) + rtt) / SRTT_GAIN_DIVISOR);
            }
        }
    }

    /// [`INITIAL_RTT`] before any sample.
    fn srtt(&self) -> Duration {
        self.srtt.unwrap_or(INITIAL_RTT)
    }
}

/// The sender state machine. See the module documentation.
#[derive(Debug)]
pub struct DcspSender {
    conn_id: u64,
    keys: DirectionKeys,
    geometry: BlockGeometry,
    parity: ParityMode,
    controller: Box<dyn RateController>,
    max_buffered: usize,

    blocks: BTreeMap<u32, BlockState>,
    queue: ShardQueue,
    repairs: VecDeque<(u32, u8)>,
    buffered: usize,
    /// Parity buffers of released blocks, reused for new ones. They only ever come from released blocks, so
    /// with the blocks in flight they never exceed the most blocks ever in flight (bounded by `max_buffered`):
    /// allocating afresh per block costs page faults and zeroing. (Data is the driver's, see [`SharedBlock`].)
    free_parity: Vec<Vec<u8>>,
    encoder: ParityEncoder,

    next_pn: u64,
    /// Per packet number (a ring): the packet number, when it was sent and the bytes sent up to and
    /// including it.
    sent_at: Vec<(u64, Option<Instant>, u64)>,
    replay: ReplayWindow,
    rtt: RttEstimator,
    largest_acked: Option<u64>,
    next_send: Instant,
    last_heard: Instant,
    last_probe: Option<Instant>,
    pto_count: u32,
    ping_pending: bool,
    /// When the last shard (data, parity or repair) went out, and whether a tail probe followed it.
    last_shard_sent: Option<Instant>,
    tail_probed: bool,

    loss_base: Option<(u64, u64)>,
    loss: f64,
    stats: SenderStats,
}

impl DcspSender {
    pub fn new(cfg: SenderConfig, now: Instant) -> Self {
        let data_shards = cfg.geometry.data_shards();
        Self {
            conn_id: cfg.conn_id,
            keys: cfg.keys,
            geometry: cfg.geometry,
            parity: cfg.parity,
            controller: cfg.controller,
            max_buffered: cfg.max_buffered.max(MIN_WINDOW),
            blocks: BTreeMap::new(),
            queue: ShardQueue::new(cfg.geometry.block_bytes()),
            repairs: VecDeque::new(),
            buffered: 0,
            free_parity: Vec::new(),
            encoder: ParityEncoder::default(),
            next_pn: 0,
            sent_at: vec![(u64::MAX, None, 0); SENT_RING],
            replay: ReplayWindow::new(),
            rtt: RttEstimator::default(),
            largest_acked: None,
            next_send: now,
            last_heard: now,
            last_probe: None,
            pto_count: 0,
            ping_pending: false,
            last_shard_sent: None,
            tail_probed: false,
            loss_base: None,
            loss: 0.0,
            stats: SenderStats {
                data_shards,
                ..SenderStats::default()
            },
        }
    }

    pub fn geometry(&self) -> &BlockGeometry {
        &self.geometry
    }

    /// How many block bytes the sender holds at most right now: about two round trips at the current rate,
    /// plus the blocks being interleaved (a block is complete only when its last shard arrives).
    fn window(&self) -> usize {
        let rtt = self.rtt.srtt().as_secs_f64() * WINDOW_RTTS + WINDOW_SLACK.as_secs_f64();
        let interleaved = self.queue.depth * self.geometry.block_bytes() as usize;
        ((self.controller.rate() as f64 * rtt) as usize + interleaved)
            .clamp(MIN_WINDOW, self.max_buffered)
    }

    /// Whether the driver should push another block now.
    pub fn wants_block(&self) -> bool {
        self.buffered < self.window()
    }

    /// Blocks pushed and not yet complete at the receiver. No driver reads it; `tests/sim.rs` (a test crate of
    /// its own) prints it in its traces.
    pub fn blocks_in_flight(&self) -> usize {
        self.blocks.len()
    }

    /// Everything pushed has been acknowledged. No driver needs it (theirs end on the receiver's verdicts);
    /// `tests/sim.rs` and the scenarios' `e2e_dcsp_peer`, which drive a `DcspSender` by hand, wait for it.
    pub fn is_idle(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Hands the sender a copy of one block of file bytes (exactly the block's length, see
    /// [`BlockGeometry::span`]). Pushing a block again (the receiver found its chunk corrupt) sends it afresh.
    pub fn push_block(&mut self, block: u32, bytes: &[u8]) -> Result<(), DcspError> {
        self.push_shared_block(block, Arc::new(bytes.to_vec()))
    }

    /// Like [`Self::push_block`], without a copy: the sender keeps a share of `bytes` until the receiver has
    /// the block.
    pub fn push_shared_block(&mut self, block: u32, bytes: SharedBlock) -> Result<(), DcspError> {
        let span = self.geometry.require(block)?;
        let got = (*bytes).as_ref().len();
        if got != span.len as usize {
            return Err(DcspError::BlockLength {
                block,
                expected: span.len as usize,
                got,
            });
        }
        if let Some(old) = self.blocks.remove(&block) {
            self.release(old);
        }
        let k = span.data_shards;
        let mut parity = self.free_parity.pop().unwrap_or_default();
        parity.clear();
        self.queue.push(block, k);
        self.buffered += span.len as usize;
        self.blocks.insert(
            block,
            BlockState {
                span,
                data: bytes,
                parity,
                parity_count: 0,
                first_pn: None,
                last_pn: None,
                last_sent: None,
                unsent: u16::from(k),
                repairs_pending: 0,
            },
        );
        Ok(())
    }

    /// Decides the parity of a block about to send its first shard, from the loss seen until now, and
    /// computes it. Returns the number of parity shards.
    fn start_block(&mut self, block: u32, k: u8) -> u8 {
        let Some(state) = self.blocks.get_mut(&block) else {
            return 0; // acknowledged meanwhile: its entry is skipped
        };
        let s = self.geometry.shard_size() as usize;
        let m = self.parity.parity_for(k, self.loss);
        let data = (*state.data).as_ref();
        encode_parity(&mut self.encoder, data, k, m, s, &mut state.parity);
        let m = (state.parity.len() / s) as u8;
        state.parity_count = m;
        state.unsent += u16::from(m);
        self.stats.parity = m;
        m
    }

    /// The next shard of a first transmission, in [`ShardQueue`]'s order; a block about to send its first
    /// shard gets its parity now.
    fn next_first_transmission(&mut self) -> Option<(u32, ShardRef)> {
        if let Some((block, k)) = self.queue.unstarted() {
            let m = self.start_block(block, k);
            self.queue.set_parity(m);
        }
        self.queue.pop()
    }

    fn release(&mut self, b: BlockState) {
        self.buffered -= b.span.len as usize;
        self.free_parity.push(b.parity);
    }

    fn has_work(&self) -> bool {
        self.ping_pending || !self.repairs.is_empty() || !self.queue.is_empty()
    }

    /// Datagram bytes sent after the newest packet the receiver acknowledged (everything before it arrived
    /// or was lost).
    fn bytes_in_flight(&self) -> u64 {
        let Some(largest) = self.largest_acked else {
            return self.stats.bytes_sent;
        };
        match self.sent_at[(largest as usize) % SENT_RING] {
            (pn, _, upto) if pn == largest => self.stats.bytes_sent.saturating_sub(upto),
            // Overwritten in the ring: estimate from the packet count.
            _ => {
                let packets = self.next_pn.saturating_sub(largest + 1);
                packets.saturating_mul(
                    u64::from(self.geometry.shard_size()) + DATAGRAM_OVERHEAD_ESTIMATE,
                )
            }
        }
    }

    /// A new `--max-rate` for this stream's controller (bytes per second of datagrams), while it runs.
    pub fn set_max_rate(&mut self, max_rate: Option<u64>) {
        self.controller.set_max_rate(max_rate);
        self.stats.rate = self.controller.rate();
    }

    /// Whether the controller's window keeps new datagrams (other than pings) back until more are acknowledged.
    fn window_full(&self) -> bool {
        self.controller
            .window()
            .is_some_and(|w| self.bytes_in_flight() >= w)
    }

    /// Writes the next datagram into `out` (cleared first) if one is due at `now`. Returns whether it did.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        out.clear();
        self.poll_transmit_into(now, out).is_some()
    }

    /// Like [`Self::poll_transmit`], but appends the datagram to what `out` already holds: a driver builds a
    /// batch back to back and sends it from there, each datagram sealed in place and its shard copied once.
    /// Returns the datagram's length.
    pub fn poll_transmit_into(&mut self, now: Instant, out: &mut Vec<u8>) -> Option<usize> {
        if self.next_pn > MAX_PACKET_NUMBER {
            return None;
        }
        let start = out.len();
        let pn = if self.ping_pending {
            self.write_ping(now, out)
        } else if now < self.next_send || self.window_full() {
            return None;
        } else {
            self.write_next_shard(now, out)?
        };
        let len = out.len() - start;
        self.count_sent(pn, len);
        // A probe's bytes count against the pacing rate too: at a 1 kB/s cap a probe goes between most
        // datagrams, and unpaced they added 12% to it.
        self.pace_after(now, len);
        Some(len)
    }

    /// Appends a PING; its packet number.
    fn write_ping(&mut self, now: Instant, out: &mut Vec<u8>) -> u64 {
        self.ping_pending = false;
        let pn = self.take_pn(now);
        let start = out.len();
        let header = Header {
            packet_type: PacketType::Ping,
            flags: 0,
            conn_id: self.conn_id,
            packet_number: pn,
            shard: None,
        };
        header.encode(out);
        self.keys.seal.seal_at(pn, start, header.len(), out);
        self.stats.pings += 1;
        pn
    }

    /// Appends the next shard due, a repair before any first transmission; its packet number, or None when
    /// nothing is queued.
    fn write_next_shard(&mut self, now: Instant, out: &mut Vec<u8>) -> Option<u64> {
        loop {
            let (block, shard, repair) = match self.repairs.pop_front() {
                Some((b, i)) => (b, ShardRef::Data(i), true),
                None => {
                    let (b, r) = self.next_first_transmission()?;
                    (b, r, false)
                }
            };
            // None: acknowledged meanwhile, on to the next.
            if let Some(pn) = self.write_shard(now, block, shard, repair, out) {
                return Some(pn);
            }
        }
    }

    /// Appends shard `shard` of `block`, sealed, if the sender still holds the block; its packet number.
    fn write_shard(
        &mut self,
        now: Instant,
        block: u32,
        shard: ShardRef,
        repair: bool,
        out: &mut Vec<u8>,
    ) -> Option<u64> {
        let state = self.blocks.get_mut(&block)?;
        let pn = self.next_pn;
        let (packet_type, index) = match shard {
            ShardRef::Data(i) => (PacketType::Data, i),
            ShardRef::Parity(j) => (PacketType::Parity, j),
        };
        let header = Header {
            packet_type,
            flags: 0,
            conn_id: self.conn_id,
            packet_number: pn,
            shard: Some(ShardHeader {
                block,
                index,
                parity_count: state.parity_count,
            }),
        };
        let start = out.len();
        header.encode(out);
        state.append_shard(shard, self.geometry.shard_size() as usize, out);
        self.keys.seal.seal_at(pn, start, header.len(), out);
        state.first_pn.get_or_insert(pn);
        state.last_pn = Some(pn);
        state.last_sent = Some(now);
        if repair {
            state.repairs_pending = state.repairs_pending.saturating_sub(1);
        } else {
            state.unsent = state.unsent.saturating_sub(1);
        }
        self.take_pn(now);
        self.last_shard_sent = Some(now);
        self.tail_probed = false;
        match (repair, packet_type) {
            (true, _) => self.stats.packets_retransmitted += 1,
            (false, PacketType::Parity) => self.stats.parity_packets += 1,
            _ => self.stats.data_packets += 1,
        }
        Some(pn)
    }

    /// `len` bytes went at `now`: the next datagram waits its share of the pacing rate.
    fn pace_after(&mut self, now: Instant, len: usize) {
        let rate = self.controller.rate().max(1) as f64;
        let gap = Duration::from_secs_f64(len as f64 / rate);
        let earliest = now.checked_sub(PACING_BURST).unwrap_or(now);
        self.next_send = self.next_send.max(earliest) + gap;
    }

    fn take_pn(&mut self, now: Instant) -> u64 {
        let pn = self.next_pn;
        self.next_pn += 1;
        self.sent_at[(pn as usize) % SENT_RING] = (pn, Some(now), self.stats.bytes_sent);
        pn
    }

    fn count_sent(&mut self, pn: u64, len: usize) {
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += len as u64;
        if let Some(entry) = self.sent_at.get_mut((pn as usize) % SENT_RING) {
            if entry.0 == pn {
                entry.2 = self.stats.bytes_sent;
            }
        }
    }

    /// Shorter gaps between a shard and a later packet's arrival may be reordering, not loss.
    fn reorder_window(&self) -> Duration {
        (self.rtt.rttvar * RTTVAR_WEIGHT).max(MIN_REORDER_WINDOW)
    }

    /// When to send a tail probe: a ping one reorder window after the last shard, once nothing else is queued
    /// and blocks are outstanding. Its ACK shows the receiver's state of every block sent before it, so the
    /// tail's losses are repaired one round trip after the last shard instead of after a probe timeout (no
    /// later data packets come to reveal them).
    fn tail_probe_at(&self) -> Option<Instant> {
        if self.tail_probed || self.blocks.is_empty() || self.has_work() {
            return None;
        }
        self.last_shard_sent.map(|t| t + self.reorder_window())
    }

    /// When to probe for an ACK that is overdue: a probe timeout after the last one heard (or probe sent),
    /// while blocks are outstanding. Not while everything sent is answered and more is queued: the next datagram
    /// goes when the pacer allows and its ACK says all a probe's would. A sender that only waited for its pacer
    /// (at a 1 kB/s cap, a datagram every 0.36 s) sent a probe in every gap, which ate half the cap on a 50 ms
    /// path and, with the probes paced, starved the data (the `dcsp_sender` fuzz target's first 10-minute run).
    fn probe_at(&self) -> Option<Instant> {
        if self.blocks.is_empty() || (self.has_work() && self.bytes_in_flight() == 0) {
            return None;
        }
        let since = self
            .last_heard
            .max(self.last_probe.unwrap_or(self.last_heard));
        Some(since + self.pto())
    }

    /// The probe timeout: the smoothed RTT and its deviations, doubled for each probe in a row unanswered, at
    /// most [`MAX_PTO`]; once the controller has been told of the silence, at most [`OUTAGE_PROBE_INTERVAL`],
    /// so a link that comes back is heard within that and a round trip.
    fn pto(&self) -> Duration {
        let base = self.rtt.srtt() + self.rtt.rttvar * RTTVAR_WEIGHT + PTO_SLACK;
        let pto = (base * 2u32.saturating_pow(self.pto_count.min(MAX_PTO_DOUBLINGS))).min(MAX_PTO);
        if self.pto_count >= PTOS_FOR_TIMEOUT {
            pto.min(OUTAGE_PROBE_INTERVAL)
        } else {
            pto
        }
    }

    /// When the driver should call [`DcspSender::handle_timeout`] or [`DcspSender::poll_transmit`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        // Held back by the window, the sender waits for an ACK (or the probe timer), not the pacer.
        let send = (self.ping_pending || (self.has_work() && !self.window_full()))
            .then_some(self.next_send);
        let probe = self.probe_at();
        [send, probe, self.tail_probe_at()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Fires the probe timer when ACKs stopped coming while blocks are outstanding.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.blocks.is_empty() {
            return;
        }
        if self.tail_probe_at().is_some_and(|t| now >= t) {
            self.ping_pending = true;
            self.tail_probed = true;
            self.stats.tail_probes += 1;
        }
        if self.probe_at().is_some_and(|t| now >= t) {
            self.ping_pending = true;
            self.last_probe = Some(now);
            self.pto_count += 1;
            self.stats.probe_timeouts += 1;
            if self.pto_count >= PTOS_FOR_TIMEOUT && self.largest_acked.is_some() {
                // Two probes in a row unanswered: the path is down or badly congested.
                self.controller.on_timeout(now);
                self.stats.rate = self.controller.rate();
            }
        }
    }

    /// How long the receiver has been silent.
    pub fn silence(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_heard)
    }

    /// Whether any ACK has arrived yet (a path that never answers may block UDP).
    pub fn heard_from_peer(&self) -> bool {
        self.largest_acked.is_some()
    }

    /// Takes a datagram from the receiver. Anything that fails a check is dropped and counted.
    pub fn handle_datagram(&mut self, now: Instant, datagram: &mut [u8]) {
        match self.open(datagram) {
            Some(ack) => self.on_ack(now, &ack),
            None => self.stats.packets_dropped += 1,
        }
    }

    fn open(&mut self, datagram: &mut [u8]) -> Option<Ack> {
        let header = Header::decode(datagram).ok()?;
        if header.conn_id != self.conn_id || header.packet_type != PacketType::Ack {
            return None;
        }
        let pn = header.packet_number;
        self.replay.check(pn).ok()?;
        let len = self.keys.open.open(pn, header.len(), datagram).ok()?;
        let ack = Ack::decode(&datagram[header.len()..header.len() + len], &self.geometry).ok()?;
        self.replay.insert(pn);
        Some(ack)
    }

    fn on_ack(&mut self, now: Instant, ack: &Ack) {
        self.stats.acks_received += 1;
        self.last_heard = now;
        self.last_probe = None;
        self.pto_count = 0;
        if ack.largest_pn >= self.next_pn {
            return; // acknowledges something never sent: ignore
        }
        let mut rtt_sample = None;
        if self.largest_acked.is_none_or(|l| ack.largest_pn > l) {
            self.largest_acked = Some(ack.largest_pn);
            if let (pn, Some(at), _) = self.sent_at[(ack.largest_pn as usize) % SENT_RING] {
                if pn == ack.largest_pn {
                    let rtt = now
                        .saturating_duration_since(at)
                        .saturating_sub(Duration::from_micros(u64::from(ack.ack_delay_us)));
                    let rtt = rtt.max(MIN_RTT_SAMPLE);
                    self.rtt.sample(rtt);
                    rtt_sample = Some(rtt);
                }
            }
        }
        let sent = ack.largest_pn + 1;
        match self.loss_base {
            None => self.loss_base = Some((sent, ack.packets_received)),
            Some((s0, r0)) if sent >= s0 + LOSS_SAMPLE_PACKETS => {
                let l = 1.0 - (ack.packets_received.saturating_sub(r0)) as f64 / (sent - s0) as f64;
                self.loss = (1.0 - LOSS_GAIN) * self.loss + LOSS_GAIN * l.clamp(0.0, 1.0);
                self.loss_base = Some((sent, ack.packets_received));
            }
            Some(_) => {}
        }
        self.stats.fec_recovered = u64::from(ack.fec_recovered);
        self.controller.on_ack(&RateSample {
            now,
            rtt: rtt_sample,
            srtt: self.rtt.srtt(),
            min_rtt: self.rtt.min.unwrap_or(self.rtt.srtt()),
            receiver_time: Duration::from_micros(ack.receiver_time_us),
            bytes_received: ack.bytes_received,
            packets_received: ack.packets_received,
            packets_sent: sent,
        });

        // Complete blocks: below the cumulative mark and in the ranges. A block pushed again after this ACK
        // was written (its first packet number is above everything the ACK saw) is not complete yet.
        let done: Vec<u32> = self
            .blocks
            .range(..ack.cumulative_block)
            .map(|(b, _)| *b)
            .chain(ack.ranges.iter().flat_map(|&(first, count)| {
                self.blocks
                    .range(first..first.saturating_add(count))
                    .map(|(b, _)| *b)
            }))
            .collect();
        for b in done {
            let fresh = self
                .blocks
                .get(&b)
                .is_some_and(|s| s.first_pn.is_some_and(|f| f <= ack.largest_pn));
            if fresh {
                if let Some(state) = self.blocks.remove(&b) {
                    self.release(state);
                    self.stats.blocks_acked += 1;
                }
            }
        }

        let srtt = self.rtt.srtt();
        let reorder_window = self.reorder_window();
        let largest_sent_at = match self.sent_at[(ack.largest_pn as usize) % SENT_RING] {
            (pn, at, _) if pn == ack.largest_pn => at,
            _ => None,
        };
        let overdue = |state: &BlockState| -> bool {
            match (state.last_pn, state.last_sent) {
                (Some(last_pn), Some(last_sent)) => {
                    let overtaken = largest_sent_at
                        .is_some_and(|t| t.saturating_duration_since(last_sent) >= reorder_window);
                    let tail = now.saturating_duration_since(last_sent)
                        >= srtt.mul_f64(TAIL_TIME_FACTOR) + reorder_window;
                    state.unsent == 0
                        && state.repairs_pending == 0
                        && ack.largest_pn >= last_pn
                        && (overtaken || tail)
                }
                _ => false,
            }
        };
        let mut repairs: Vec<(u32, u8, Option<&crate::ack::Nack>)> = Vec::new();
        for nack in &ack.nacks {
            if let Some(state) = self.blocks.get(&nack.block) {
                if nack.needed > 0 && overdue(state) {
                    repairs.push((nack.block, nack.needed, Some(nack)));
                }
            }
        }
        // Blocks above the highest one the receiver has seen any shard of were lost whole.
        let above = ack.highest_block.map_or(0, |h| h.saturating_add(1));
        for (b, state) in self.blocks.range(above..) {
            if overdue(state) {
                repairs.push((*b, state.span.data_shards, None));
            }
        }
        // In the tail (no first transmissions left to send) a lost repair costs a whole round trip with the
        // link idle, so repairs there carry spares: one more shard than needed, and more on lossier paths.
        let spare = if self.queue.is_empty() {
            1 + (TAIL_SPARE_FACTOR * self.loss * f64::from(crate::fec::AUTO_DATA_SHARDS))
                .ceil()
                .min(MAX_TAIL_SPARES) as u16
        } else {
            0
        };
        for (block, needed, nack) in repairs {
            let Some(state) = self.blocks.get_mut(&block) else {
                continue;
            };
            let mut queued = 0u16;
            let wanted = u16::from(needed) + if needed > 0 { spare } else { 0 };
            for i in (0..state.span.data_shards).filter(|i| !nack.is_some_and(|n| n.has(*i))) {
                if queued >= wanted {
                    break;
                }
                self.repairs.push_back((block, i));
                queued += 1;
            }
            state.repairs_pending = queued;
        }
        self.stats.rate = self.controller.rate();
    }

    pub fn stats(&self) -> SenderStats {
        let mut s = self.stats.clone();
        s.srtt = self.rtt.srtt;
        s.min_rtt = self.rtt.min;
        s.rate = self.controller.rate();
        s.phase = self.controller.phase();
        s.loss = self.loss;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_streams_add_up_and_keep_the_first_streams_path() {
        let first = SenderStats {
            packets_sent: 10,
            bytes_sent: 1000,
            data_packets: 8,
            parity_packets: 2,
            packets_retransmitted: 1,
            pings: 3,
            acks_received: 4,
            packets_dropped: 5,
            blocks_acked: 6,
            fec_recovered: 7,
            srtt: Some(Duration::from_millis(20)),
            min_rtt: Some(Duration::from_millis(18)),
            rate: 1_000_000,
            loss: 0.01,
            parity: 3,
            data_shards: 64,
            probe_timeouts: 1,
            tail_probes: 2,
            phase: "steady",
        };
        let second = SenderStats {
            packets_sent: 1,
            bytes_sent: 100,
            data_packets: 1,
            parity_packets: 1,
            packets_retransmitted: 1,
            pings: 1,
            acks_received: 1,
            packets_dropped: 1,
            blocks_acked: 1,
            fec_recovered: 1,
            srtt: Some(Duration::from_millis(90)),
            min_rtt: Some(Duration::from_millis(80)),
            rate: 500_000,
            loss: 0.2,
            parity: 9,
            data_shards: 32,
            probe_timeouts: 1,
            tail_probes: 1,
            phase: "startup",
        };
        let mut total = first.clone();
        total += second;
        assert_eq!(
            total,
            SenderStats {
                packets_sent: 11,
                bytes_sent: 1100,
                data_packets: 9,
                parity_packets: 3,
                packets_retransmitted: 2,
                pings: 4,
                acks_received: 5,
                packets_dropped: 6,
                blocks_acked: 7,
                fec_recovered: 8,
                rate: 1_500_000,
                probe_timeouts: 2,
                tail_probes: 3,
                ..first
            }
        );
        let mut from_nothing = SenderStats::default();
        from_nothing += SenderStats::default();
        assert_eq!(from_nothing, SenderStats::default());
    }

    /// Pops everything, giving block `b` `b % 3` parity shards.
    fn drain(q: &mut ShardQueue) -> Vec<(u32, ShardRef)> {
        std::iter::from_fn(|| {
            if let Some((b, _)) = q.unstarted() {
                q.set_parity((b % 3) as u8);
            }
            q.pop()
        })
        .collect()
    }

    #[test]
    fn shards_of_queued_blocks_take_turns_and_each_block_goes_whole_in_order() {
        let mut q = ShardQueue::new(64 * 1432);
        q.push(7, 2);
        q.push(8, 3);
        use ShardRef::{Data, Parity};
        assert_eq!(
            drain(&mut q),
            [
                (7, Data(0)),
                (8, Data(0)),
                (7, Data(1)),
                (8, Data(1)),
                (7, Parity(0)),
                (8, Data(2)),
                (8, Parity(0)),
                (8, Parity(1)),
            ]
        );
        assert!(q.is_empty());
    }

    #[test]
    fn a_burst_of_lost_datagrams_takes_at_most_one_shard_from_each_block() {
        let mut q = ShardQueue::new(64 * 1432);
        for b in 0..40 {
            q.push(b, 64);
        }
        let order = drain(&mut q);
        assert_eq!(
            order.len(),
            40 * 64 + (0..40).map(|b| b % 3).sum::<u32>() as usize
        );
        // While at least INTERLEAVE_BLOCKS blocks are queued.
        for burst in order[..(40 - INTERLEAVE_BLOCKS) * 64].windows(INTERLEAVE_BLOCKS) {
            let mut blocks: Vec<u32> = burst.iter().map(|(b, _)| *b).collect();
            blocks.sort_unstable();
            blocks.dedup();
            assert_eq!(blocks.len(), INTERLEAVE_BLOCKS, "{burst:?}");
        }
    }

    #[test]
    fn large_blocks_take_turns_among_fewer() {
        assert_eq!(ShardQueue::new(64 * 1432).depth, INTERLEAVE_BLOCKS);
        assert_eq!(ShardQueue::new(64 * 16 * 1024).depth, 1);
        let mut q = ShardQueue::new(INTERLEAVE_BYTES / 2);
        q.push(1, 2);
        q.push(2, 2);
        q.push(3, 2);
        let blocks: Vec<u32> = drain(&mut q).iter().map(|(b, _)| *b).collect();
        assert_eq!(blocks, [1, 2, 1, 2, 1, 2, 3, 2, 3]);
    }

    #[test]
    fn a_block_pushed_again_is_queued_afresh_once() {
        let mut q = ShardQueue::new(64 * 1432);
        q.push(3, 2);
        q.set_parity(0);
        assert_eq!(q.pop(), Some((3, ShardRef::Data(0))));
        q.push(3, 2);
        assert_eq!(
            drain(&mut q),
            [(3, ShardRef::Data(0)), (3, ShardRef::Data(1))]
        );
    }
}
