//! The receiving half of a DCSP connection.
//!
//! The driver hands it every datagram with the address it came from; it checks and decrypts, rebuilds blocks
//! (from original shards, or with parity), and returns complete blocks as [`ReceiverEvent::Block`] for the
//! driver to write at their offset. It answers with ACKs (cumulative block, complete ranges, NACKs for
//! blocks missing shards) at a bounded rate, to the address the latest authentic packet came from (roaming).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::AddAssign;
use std::time::{Duration, Instant};

use crate::ack::{Ack, Nack, MAX_NACKS, MAX_RANGES};
use crate::crypto::{DirectionKeys, Replay, ReplayWindow};
use crate::fec::{BlockAssembly, ParityDecoder, ShardReject};
use crate::geometry::BlockGeometry;
use crate::packet::{Header, PacketType, WireError, MAX_PACKET_NUMBER};

/// Acknowledge after this many datagrams (about 45 KiB on a 1500-byte path): the sender's window and RTT
/// samples advance often, while ACKs stay a small share of the reverse path...
const ACK_EVERY: u32 = 32;
/// ...or this long after the first unacknowledged one, so a slow flow is still answered promptly (the sender's
/// probe timeout allows for it with `PTO_SLACK`).
const ACK_DELAY: Duration = Duration::from_millis(2);
/// Most recycled block buffers kept: enough to reuse one for each block completed between two turns of the
/// driver, without holding many idle blocks (at most 2 MiB each).
const MAX_SPARE: usize = 8;
/// Never more often than this (except to answer a PING): at most 4,000 ACKs a second per connection, whatever
/// the data rate, which bounds the receiver's sending work on fast links.
const MIN_ACK_INTERVAL: Duration = Duration::from_micros(250);
/// Blocks per word of the complete-blocks bitmap.
const WORD_BITS: u32 = u64::BITS;

/// What the receiver needs.
#[derive(Debug)]
pub struct ReceiverConfig {
    pub conn_id: u64,
    pub keys: DirectionKeys,
    pub geometry: BlockGeometry,
    /// Chunks already verified (from an earlier connection): their blocks will not come.
    pub skip_chunks: Vec<u32>,
    /// Most bytes held in incomplete blocks; shards of blocks beyond it are dropped (and NACKed later).
    pub max_assembly_bytes: usize,
    /// Which share of the blocks this connection carries (`--streams`).
    pub stream: StreamShare,
}

/// With `--streams N`, stream `index` of `count` carries the blocks whose number is `index` modulo `count`;
/// the others count as complete for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamShare {
    pub index: u8,
    pub count: u8,
}

impl Default for StreamShare {
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

impl StreamShare {
    pub fn owns(&self, block: u32) -> bool {
        self.count <= 1 || block % u32::from(self.count) == u32::from(self.index)
    }
}

/// The connection id of stream `s` of a transfer whose first stream is `conn_id`: with `--streams N` the streams
/// are the connections `conn_id`, `conn_id + 1`, …, `conn_id + N − 1` (wrapping), each with its own keys
/// (PROTOCOL.md §6.1).
pub fn stream_conn_id(conn_id: u64, s: u8) -> u64 {
    conn_id.wrapping_add(u64::from(s))
}

/// What the receiver asks of its driver.
#[derive(Debug, PartialEq, Eq)]
pub enum ReceiverEvent {
    /// A complete block: write `data` at `offset` of the file.
    Block {
        block: u32,
        chunk: u32,
        offset: u64,
        data: Vec<u8>,
    },
    /// Authentic packets now come from another address (the sender roamed); ACKs follow it.
    PathChanged {
        from: Option<SocketAddr>,
        to: SocketAddr,
    },
}

/// A datagram to send: its bytes are in the buffer given to `poll_transmit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    pub destination: SocketAddr,
}

/// Counters for the summary and for tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// Authentic datagrams taken (each packet number once).
    pub packets_received: u64,
    /// Datagrams the sender numbered up to the highest one received (its largest packet number + 1): with
    /// `packets_received`, the loss this receiver saw.
    pub packets_numbered: u64,
    pub bytes_received: u64,
    pub blocks_completed: u64,
    pub fec_recovered: u64,
    pub duplicate_shards: u64,
    pub acks_sent: u64,
    pub path_changes: u64,
    /// Dropped: not DCSP or malformed header.
    pub dropped_malformed: u64,
    /// Dropped: another wire version (see `last_version_seen`).
    pub dropped_version: u64,
    /// Dropped: another connection id.
    pub dropped_unknown_connection: u64,
    /// Dropped: failed authentication (forged, corrupted, truncated).
    pub dropped_unauthentic: u64,
    /// Dropped: a packet number seen before (duplicate or replay).
    pub dropped_replayed: u64,
    /// Dropped: a packet number too old to check.
    pub dropped_stale: u64,
    /// Dropped: authentic but inconsistent (bad block number or shard).
    pub dropped_invalid: u64,
    /// Dropped: block too far ahead of what is complete (memory bound).
    pub dropped_window: u64,
    /// The version of the last datagram refused for its version.
    pub last_version_seen: Option<u8>,
}

impl ReceiverStats {
    /// The share of the sender's numbered datagrams that never arrived (0 to 1).
    pub fn loss(&self) -> f64 {
        if self.packets_numbered == 0 {
            return 0.0;
        }
        1.0 - (self.packets_received.min(self.packets_numbered) as f64
            / self.packets_numbered as f64)
    }

    /// Every datagram dropped for any reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_malformed
            + self.dropped_version
            + self.dropped_unknown_connection
            + self.dropped_unauthentic
            + self.dropped_replayed
            + self.dropped_stale
            + self.dropped_invalid
            + self.dropped_window
    }
}

/// The streams of one transfer summed (`--streams`): counters add up; `path_changes` is the most any stream saw
/// (every stream follows the same sender, so one move shows in each), and `last_version_seen` is the left-hand
/// side's if it has one.
impl AddAssign for ReceiverStats {
    fn add_assign(&mut self, rhs: Self) {
        // Destructured, so that a new field cannot be left out without a decision here.
        let Self {
            packets_received,
            packets_numbered,
            bytes_received,
            blocks_completed,
            fec_recovered,
            duplicate_shards,
            acks_sent,
            path_changes,
            dropped_malformed,
            dropped_version,
            dropped_unknown_connection,
            dropped_unauthentic,
            dropped_replayed,
            dropped_stale,
            dropped_invalid,
            dropped_window,
            last_version_seen,
        } = rhs;
        self.packets_received += packets_received;
        self.packets_numbered += packets_numbered;
        self.bytes_received += bytes_received;
        self.blocks_completed += blocks_completed;
        self.fec_recovered += fec_recovered;
        self.duplicate_shards += duplicate_shards;
        self.acks_sent += acks_sent;
        self.path_changes = self.path_changes.max(path_changes);
        self.dropped_malformed += dropped_malformed;
        self.dropped_version += dropped_version;
        self.dropped_unknown_connection += dropped_unknown_connection;
        self.dropped_unauthentic += dropped_unauthentic;
        self.dropped_replayed += dropped_replayed;
        self.dropped_stale += dropped_stale;
        self.dropped_invalid += dropped_invalid;
        self.dropped_window += dropped_window;
        self.last_version_seen = self.last_version_seen.or(last_version_seen);
    }
}

/// The receiver state machine. See the module documentation.
#[derive(Debug)]
pub struct DcspReceiver {
    conn_id: u64,
    keys: DirectionKeys,
    geometry: BlockGeometry,
    max_assembly_bytes: usize,
    stream: StreamShare,
    epoch: Instant,
    /// Block buffers handed back by the driver ([`DcspReceiver::recycle`]) for new assemblies.
    spare: Vec<Vec<u8>>,

    replay: ReplayWindow,
    done: Vec<u64>,
    cumulative: u32,
    highest_block: Option<u32>,
    assemblies: HashMap<u32, BlockAssembly>,
    assembly_bytes: usize,
    decoder: ParityDecoder,
    events: VecDeque<ReceiverEvent>,

    peer: Option<SocketAddr>,
    largest_pn: Option<(u64, Instant)>,
    unacked: u32,
    first_unacked: Option<Instant>,
    ack_now: bool,
    last_ack: Option<Instant>,
    nack_cursor: u32,
    ack_pn: u64,
    stats: ReceiverStats,
}

impl DcspReceiver {
    pub fn new(cfg: ReceiverConfig, now: Instant) -> Self {
        let limit = cfg.geometry.block_limit();
        let mut r = Self {
            conn_id: cfg.conn_id,
            keys: cfg.keys,
            geometry: cfg.geometry,
            max_assembly_bytes: cfg.max_assembly_bytes,
            stream: cfg.stream,
            epoch: now,
            spare: Vec::new(),
            replay: ReplayWindow::new(),
            done: vec![0; limit.div_ceil(WORD_BITS) as usize],
            cumulative: 0,
            highest_block: None,
            assemblies: HashMap::new(),
            assembly_bytes: 0,
            decoder: ParityDecoder::default(),
            events: VecDeque::new(),
            peer: None,
            largest_pn: None,
            unacked: 0,
            first_unacked: None,
            ack_now: false,
            last_ack: None,
            nack_cursor: 0,
            ack_pn: 0,
            stats: ReceiverStats::default(),
        };
        // Unused block numbers, the blocks of verified chunks and other streams' blocks count as complete
        // from the start.
        let skip_chunks: std::collections::HashSet<u32> = cfg.skip_chunks.iter().copied().collect();
        for b in 0..limit {
            let skip = match r.geometry.span(b) {
                None => true,
                Some(s) => skip_chunks.contains(&s.chunk) || !cfg.stream.owns(b),
            };
            if skip {
                r.set_done(b, true);
            }
        }
        r.advance_cumulative();
        r
    }

    /// Chunks the receiver holds the start of (protocol version 2 resumes inside a chunk): `(chunk, restart)`
    /// with `restart` from [`BlockGeometry::resume_point`]; the blocks before it will not come, and count as
    /// complete.
    pub fn resume_chunks(&mut self, resume: &[(u32, u64)]) {
        for &(chunk, restart) in resume {
            let start = self.geometry.chunk_offset(chunk);
            for b in self.geometry.blocks_of_chunk(chunk) {
                if self
                    .geometry
                    .span(b)
                    .is_some_and(|s| s.offset < start + restart)
                {
                    self.set_done(b, true);
                }
            }
        }
        self.advance_cumulative();
    }

    /// Gives back the buffer of a block the driver is done with, to assemble a later block in (saves
    /// allocating and zeroing one per block). Keeps at most [`MAX_SPARE`].
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if self.spare.len() < MAX_SPARE {
            self.spare.push(buf);
        }
    }

    /// Whether [`DcspReceiver::recycle`] would keep another buffer.
    pub fn wants_spare(&self) -> bool {
        self.spare.len() < MAX_SPARE
    }

    fn is_done(&self, b: u32) -> bool {
        self.done
            .get((b / WORD_BITS) as usize)
            .is_some_and(|w| w & (1 << (b % WORD_BITS)) != 0)
    }

    fn set_done(&mut self, b: u32, v: bool) {
        if let Some(w) = self.done.get_mut((b / WORD_BITS) as usize) {
            if v {
                *w |= 1 << (b % WORD_BITS);
            } else {
                *w &= !(1 << (b % WORD_BITS));
            }
        }
    }

    fn advance_cumulative(&mut self) {
        let limit = self.geometry.block_limit();
        while self.cumulative < limit {
            let word = self.done[(self.cumulative / WORD_BITS) as usize];
            if self.cumulative.is_multiple_of(WORD_BITS) && word == u64::MAX {
                self.cumulative += WORD_BITS;
            } else if self.is_done(self.cumulative) {
                self.cumulative += 1;
            } else {
                break;
            }
        }
        self.cumulative = self.cumulative.min(limit);
    }

    /// Every block of the file is complete (the driver still verifies chunk hashes).
    pub fn is_complete(&self) -> bool {
        self.cumulative >= self.geometry.block_limit()
    }

    /// The chunk failed its hash: forget its blocks so they are asked for and accepted again.
    pub fn reset_chunk(&mut self, chunk: u32) {
        for b in self.geometry.blocks_of_chunk(chunk) {
            if !self.stream.owns(b) {
                continue;
            }
            self.set_done(b, false);
            if self.assemblies.remove(&b).is_some() {
                self.assembly_bytes = self
                    .assembly_bytes
                    .saturating_sub(self.geometry.block_bytes() as usize);
            }
        }
        self.cumulative = self
            .cumulative
            .min(self.geometry.blocks_of_chunk(chunk).start);
        // Past the blocks that stay complete (other streams' blocks of the chunk, or a chunk with none of ours).
        self.advance_cumulative();
        self.ack_now = true;
    }

    /// Where ACKs go now.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    pub fn stats(&self) -> &ReceiverStats {
        &self.stats
    }

    /// The next thing for the driver to do.
    pub fn poll_event(&mut self) -> Option<ReceiverEvent> {
        self.events.pop_front()
    }

    /// Takes one datagram from `from`. Whatever fails a check is dropped and counted, never delivered.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &mut [u8]) {
        let header = match Header::decode(datagram) {
            Ok(h) => h,
            Err(WireError::Version(v)) => {
                self.stats.dropped_version += 1;
                self.stats.last_version_seen = Some(v);
                return;
            }
            Err(_) => {
                self.stats.dropped_malformed += 1;
                return;
            }
        };
        if header.conn_id != self.conn_id {
            self.stats.dropped_unknown_connection += 1;
            return;
        }
        if header.packet_type == PacketType::Ack {
            self.stats.dropped_invalid += 1;
            return;
        }
        let pn = header.packet_number;
        match self.replay.check(pn) {
            Ok(()) => {}
            Err(Replay::Duplicate) => {
                self.stats.dropped_replayed += 1;
                return;
            }
            Err(Replay::Stale) => {
                self.stats.dropped_stale += 1;
                return;
            }
        }
        let Ok(len) = self.keys.open.open(pn, header.len(), datagram) else {
            self.stats.dropped_unauthentic += 1;
            return;
        };
        // Authentic from here on.
        if self.replay.insert(pn) {
            self.largest_pn = Some((pn, now));
            self.stats.packets_numbered = self.stats.packets_numbered.max(pn + 1);
            if self.peer != Some(from) {
                if self.peer.is_some() {
                    self.stats.path_changes += 1;
                }
                self.events.push_back(ReceiverEvent::PathChanged {
                    from: self.peer,
                    to: from,
                });
                self.peer = Some(from);
            }
        }
        self.stats.packets_received += 1;
        self.stats.bytes_received += datagram.len() as u64;
        self.unacked += 1;
        self.first_unacked.get_or_insert(now);
        let Some(shard) = header.shard else {
            // PING: answer at once.
            self.ack_now = true;
            return;
        };
        let payload = &datagram[header.len()..header.len() + len];
        let Some(span) = self.geometry.span(shard.block) else {
            self.stats.dropped_invalid += 1;
            return;
        };
        if self.is_done(shard.block) {
            self.stats.duplicate_shards += 1;
            return;
        }
        let block_bytes = self.geometry.block_bytes() as usize;
        if !self.assemblies.contains_key(&shard.block)
            && self.assembly_bytes + block_bytes > self.max_assembly_bytes
        {
            self.stats.dropped_window += 1;
            return;
        }
        self.highest_block = Some(
            self.highest_block
                .map_or(shard.block, |h| h.max(shard.block)),
        );
        let shard_size = self.geometry.shard_size() as usize;
        let assembly = self.assemblies.entry(shard.block).or_insert_with(|| {
            self.assembly_bytes += block_bytes;
            BlockAssembly::with_buffer(
                span.data_shards,
                shard_size,
                self.spare.pop().unwrap_or_default(),
            )
        });
        let added = match header.packet_type {
            PacketType::Data => assembly.add_data(shard.index, payload),
            _ => assembly.add_parity(shard.index, shard.parity_count, payload),
        };
        match added {
            Ok(()) => {}
            Err(ShardReject::Duplicate) => {
                self.stats.duplicate_shards += 1;
                return;
            }
            Err(ShardReject::Malformed) => {
                self.stats.dropped_invalid += 1;
                return;
            }
        }
        if let Some((mut data, recovered)) = assembly.finish(&mut self.decoder) {
            self.assemblies.remove(&shard.block);
            self.assembly_bytes = self.assembly_bytes.saturating_sub(block_bytes);
            data.truncate(span.len as usize);
            self.set_done(shard.block, true);
            self.advance_cumulative();
            self.stats.blocks_completed += 1;
            if recovered {
                self.stats.fec_recovered += 1;
            }
            self.events.push_back(ReceiverEvent::Block {
                block: shard.block,
                chunk: span.chunk,
                offset: span.offset,
                data,
            });
        } else if assembly.needed() == 0 {
            // Enough shards but they did not decode (inconsistent parity): start the block over.
            self.assemblies.remove(&shard.block);
            self.assembly_bytes = self.assembly_bytes.saturating_sub(block_bytes);
            self.stats.dropped_invalid += 1;
        }
    }

    fn ack_due(&self, now: Instant) -> bool {
        if self.peer.is_none() || self.largest_pn.is_none() {
            return false;
        }
        if self.ack_now {
            return true;
        }
        if self.unacked == 0 {
            return false;
        }
        let spaced = self
            .last_ack
            .is_none_or(|t| now.saturating_duration_since(t) >= MIN_ACK_INTERVAL);
        spaced
            && (self.unacked >= ACK_EVERY
                || self
                    .first_unacked
                    .is_some_and(|t| now.saturating_duration_since(t) >= ACK_DELAY))
    }

    /// When the driver should call `poll_transmit` again for a delayed ACK.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.ack_now && self.peer.is_some() {
            return self.first_unacked.or(self.last_ack);
        }
        let t = self.first_unacked? + ACK_DELAY;
        Some(match self.last_ack {
            Some(l) => t.max(l + MIN_ACK_INTERVAL),
            None => t,
        })
    }

    /// Writes an ACK into `out` (cleared first) if one is due; returns where to send it.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> Option<Transmit> {
        out.clear();
        if !self.ack_due(now) || self.ack_pn > MAX_PACKET_NUMBER {
            return None;
        }
        let destination = self.peer?;
        let (largest, at) = self.largest_pn?;
        let ack = Ack {
            largest_pn: largest,
            ack_delay_us: now
                .saturating_duration_since(at)
                .as_micros()
                .min(u32::MAX as u128) as u32,
            receiver_time_us: now.saturating_duration_since(self.epoch).as_micros() as u64,
            packets_received: self.stats.packets_received,
            bytes_received: self.stats.bytes_received,
            fec_recovered: self.stats.fec_recovered.min(u64::from(u32::MAX)) as u32,
            cumulative_block: self.cumulative,
            highest_block: self.highest_block,
            ranges: self.complete_ranges(),
            nacks: self.nacks(),
        };
        let pn = self.ack_pn;
        self.ack_pn += 1;
        let header = Header {
            packet_type: PacketType::Ack,
            flags: 0,
            conn_id: self.conn_id,
            packet_number: pn,
            shard: None,
        };
        header.encode(out);
        ack.encode(out);
        self.keys.seal.seal(pn, header.len(), out);
        self.unacked = 0;
        self.first_unacked = None;
        self.ack_now = false;
        self.last_ack = Some(now);
        self.stats.acks_sent += 1;
        Some(Transmit { destination })
    }

    /// Runs of complete blocks above the cumulative mark, up to the highest block seen.
    fn complete_ranges(&self) -> Vec<(u32, u32)> {
        let mut ranges = Vec::new();
        let Some(high) = self.highest_block else {
            return ranges;
        };
        let mut b = self.cumulative;
        while b <= high && ranges.len() < MAX_RANGES {
            if self.is_done(b) {
                let start = b;
                while b <= high && self.is_done(b) {
                    b += 1;
                }
                ranges.push((start, b - start));
            } else {
                b += 1;
            }
        }
        ranges
    }

    /// Incomplete blocks up to the highest block seen, oldest first, taking turns when there are more than one
    /// ACK can carry. (The sender decides which of them are overdue.)
    fn nacks(&mut self) -> Vec<Nack> {
        let mut nacks = Vec::new();
        let Some(high) = self.highest_block else {
            return nacks;
        };
        if high < self.cumulative {
            return nacks;
        }
        let span = high - self.cumulative + 1;
        let start = if self.nack_cursor > self.cumulative && self.nack_cursor <= high {
            self.nack_cursor
        } else {
            self.cumulative
        };
        let mut last = start;
        for i in 0..span {
            let b = self.cumulative + (start - self.cumulative + i) % span;
            if self.is_done(b) {
                continue;
            }
            let Some(s) = self.geometry.span(b) else {
                continue;
            };
            let mut have = Vec::new();
            let needed = match self.assemblies.get(&b) {
                Some(a) => {
                    a.have_bitmap(&mut have);
                    a.needed()
                }
                None => {
                    have.resize(usize::from(s.data_shards).div_ceil(u8::BITS as usize), 0);
                    s.data_shards
                }
            };
            nacks.push(Nack {
                block: b,
                needed,
                have,
            });
            last = b;
            if nacks.len() >= MAX_NACKS {
                break;
            }
        }
        self.nack_cursor = last + 1;
        nacks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream's counters: each field a different multiple of `k`.
    fn counters(k: u64, path_changes: u64) -> ReceiverStats {
        ReceiverStats {
            packets_received: k,
            packets_numbered: 15 * k,
            bytes_received: 2 * k,
            blocks_completed: 3 * k,
            fec_recovered: 4 * k,
            duplicate_shards: 5 * k,
            acks_sent: 6 * k,
            path_changes,
            dropped_malformed: 7 * k,
            dropped_version: 8 * k,
            dropped_unknown_connection: 9 * k,
            dropped_unauthentic: 10 * k,
            dropped_replayed: 11 * k,
            dropped_stale: 12 * k,
            dropped_invalid: 13 * k,
            dropped_window: 14 * k,
            last_version_seen: None,
        }
    }

    #[test]
    fn stats_of_streams_add_up_with_the_most_path_changes() {
        let mut total = ReceiverStats::default();
        total += counters(1, 2);
        total += counters(10, 1);
        assert_eq!(total, counters(11, 2));
        assert_eq!(total.dropped(), (7..=14).sum::<u64>() * 11);

        let mut versions = ReceiverStats::default();
        versions += ReceiverStats {
            last_version_seen: Some(9),
            ..ReceiverStats::default()
        };
        versions += ReceiverStats {
            last_version_seen: Some(3),
            ..ReceiverStats::default()
        };
        assert_eq!(versions.last_version_seen, Some(9));
    }

    #[test]
    fn loss_is_the_share_of_numbered_datagrams_that_never_came() {
        let none = ReceiverStats::default();
        assert_eq!(none.loss(), 0.0);
        let s = ReceiverStats {
            packets_received: 90,
            packets_numbered: 100,
            ..ReceiverStats::default()
        };
        assert!((s.loss() - 0.1).abs() < 1e-12);
    }

    #[test]
    fn resume_points_fall_on_block_boundaries_and_those_blocks_count_as_complete() {
        let plan = trackshift_proto::ChunkPlan::new(12 << 20, 5 << 20).unwrap();
        let g = BlockGeometry::for_plan(&plan, 1024, 64).unwrap();
        let block = g.block_bytes();
        assert_eq!(g.resume_point(1, 0), 0);
        assert_eq!(
            g.resume_point(1, block - 1),
            0,
            "a block not whole goes again"
        );
        assert_eq!(g.resume_point(1, 3 * block + 5), 3 * block);
        assert_eq!(
            g.resume_point(2, u64::MAX),
            (2 << 20) / block * block,
            "never beyond the chunk"
        );
        let mut r = DcspReceiver::new(
            ReceiverConfig {
                conn_id: 1,
                keys: DirectionKeys::derive(&[0; 32], 1, crate::Role::Receiver),
                geometry: g,
                skip_chunks: vec![0, 2],
                max_assembly_bytes: 1 << 20,
                stream: StreamShare { index: 0, count: 1 },
            },
            Instant::now(),
        );
        let first = g.blocks_of_chunk(1).start;
        assert_eq!(r.cumulative, first, "chunk 1 is all to come");
        r.resume_chunks(&[(1, g.resume_point(1, 3 * block + 5))]);
        assert_eq!(
            r.cumulative,
            first + 3,
            "its first 3 blocks are there already"
        );
        assert!(!r.is_complete());
    }

    #[test]
    fn stream_conn_ids_are_consecutive_and_wrap() {
        assert_eq!(stream_conn_id(7, 0), 7);
        assert_eq!(stream_conn_id(7, 3), 10);
        assert_eq!(stream_conn_id(u64::MAX, 1), 0);
    }
}
