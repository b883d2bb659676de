//! A DCSP sender against a receiver's datagrams: the honest `DcspReceiver`'s ACKs over a lossy link the input
//! controls, authentic ACKs with arbitrary contents (a receiver that holds the keys but lies: counters, clocks,
//! ranges, NACKs), raw bytes and replays, while the driver pushes blocks, re-pushes a chunk that failed its
//! hash and lets time pass. Checked: every datagram the sender writes has the next packet number, names a
//! pushed block, opens under the receiver's key, and every block the receiver rebuilds from them holds exactly
//! the file's bytes; with honest ACKs only, a lossless link then finishes every pushed block in bounded
//! (virtual) time. Covers `DcspSender::handle_datagram` (ACK opening, `Ack::decode`, loss and RTT
//! estimation, NACK repairs) and the `DelayRate` controller fed what ACKs report.
#![no_main]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use trackshift_dcsp::ack::{Ack, Nack};
use trackshift_dcsp::packet::{Header, MAX_PACKET_NUMBER};
use trackshift_dcsp::{
    BlockGeometry, DcspReceiver, DcspSender, DelayRate, DirectionKeys, PacketType, ParityMode,
    ReceiverConfig, ReceiverEvent, Role, SenderConfig,
};

#[derive(Arbitrary, Debug)]
struct LieAck {
    pn: u64,
    largest_pn: u64,
    ack_delay_us: u32,
    receiver_time_us: u64,
    packets_received: u64,
    bytes_received: u64,
    fec_recovered: u32,
    cumulative_block: u32,
    highest_block: Option<u32>,
    ranges: Vec<(u32, u32)>,
    nacks: Vec<(u16, u8, u8)>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Push(u16),
    /// Send what is due; datagram `i` is lost when bit `i % 64` of the mask is set.
    Transmit {
        lose: u64,
    },
    /// Let time pass; the receiver's ACKs travel unless `lose_acks`.
    Tick {
        us: u16,
        lose_acks: bool,
    },
    Lie(LieAck),
    Raw(Vec<u8>),
    ReplayAck(u8),
    /// Chunk `c` failed its hash: the receiver forgets it, the driver pushes its blocks again.
    Reset(u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    size: u16,
    shard_half: u8,
    k: u8,
    fixed_parity: Option<u8>,
    max_rate: Option<u32>,
    ops: Vec<Op>,
}

fn file_byte(offset: u64) -> u8 {
    (offset.wrapping_mul(131) ^ (offset >> 7)) as u8
}

struct World {
    g: BlockGeometry,
    conn_id: u64,
    s: DcspSender,
    r: DcspReceiver,
    now: Instant,
    next_pn: u64,
    pushed: BTreeSet<u32>,
    acks: Vec<Vec<u8>>,
    lie_keys: DirectionKeys,
}

impl World {
    fn push(&mut self, b: u32) {
        let Some(span) = self.g.span(b) else { return };
        let bytes: Vec<u8> = (0..u64::from(span.len))
            .map(|j| file_byte(span.offset + j))
            .collect();
        self.s
            .push_block(b, &bytes)
            .expect("a block of the layout, at its length");
        self.pushed.insert(b);
    }

    fn transmit(&mut self, lose: u64) {
        let mut out = Vec::new();
        let from: SocketAddr = "198.18.0.1:7000".parse().expect("addr");
        for i in 0..10_000 {
            if !self.s.poll_transmit(self.now, &mut out) {
                break;
            }
            let h = Header::decode(&out).expect("the sender's header");
            assert_eq!((h.conn_id, h.packet_number), (self.conn_id, self.next_pn));
            self.next_pn += 1;
            match h.packet_type {
                PacketType::Data | PacketType::Parity => {
                    let shard = h.shard.expect("a shard header");
                    assert!(
                        self.pushed.contains(&shard.block),
                        "block {} was never pushed",
                        shard.block
                    );
                    assert_eq!(out.len(), h.len() + self.g.shard_size() as usize + 16);
                }
                PacketType::Ping => assert_eq!(out.len(), h.len() + 16),
                PacketType::Ack => panic!("the sender wrote an ACK"),
            }
            if lose & (1 << (i % 64)) == 0 {
                self.r.handle_datagram(self.now, from, &mut out);
                while let Some(ev) = self.r.poll_event() {
                    if let ReceiverEvent::Block {
                        block,
                        offset,
                        data,
                        ..
                    } = ev
                    {
                        let want: Vec<u8> = (0..data.len() as u64)
                            .map(|j| file_byte(offset + j))
                            .collect();
                        assert!(
                            data == want,
                            "block {block} rebuilt from the sender's datagrams differs"
                        );
                    }
                }
            }
        }
    }

    fn tick(&mut self, us: u64, lose_acks: bool) {
        self.now += Duration::from_micros(us);
        self.s.handle_timeout(self.now);
        let mut out = Vec::new();
        while self.r.poll_transmit(self.now, &mut out).is_some() {
            if self.acks.len() < 64 {
                self.acks.push(out.clone());
            }
            if !lose_acks {
                self.s.handle_datagram(self.now, &mut out);
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let shard = u32::from(input.shard_half % 200 + 1) * 2;
    let k = input.k % 32 + 1;
    let Ok(g) = BlockGeometry::new(u64::from(input.size) + 1, 6000, shard, k) else {
        return;
    };
    let parity = match input.fixed_parity {
        Some(m) => ParityMode::Fixed {
            data: k,
            parity: m % 8,
        },
        None => ParityMode::Auto,
    };
    let cap = input.max_rate.map(|r| u64::from(r) + 1000);
    let conn_id = 77;
    let secret = [5u8; 32];
    let now = Instant::now();
    let mut w = World {
        g,
        conn_id,
        s: DcspSender::new(
            SenderConfig {
                conn_id,
                keys: DirectionKeys::derive(&secret, conn_id, Role::Sender),
                geometry: g,
                parity,
                controller: Box::new(DelayRate::new(cap)),
                max_buffered: 1 << 20,
            },
            now,
        ),
        r: DcspReceiver::new(
            ReceiverConfig {
                conn_id,
                keys: DirectionKeys::derive(&secret, conn_id, Role::Receiver),
                geometry: g,
                skip_chunks: Vec::new(),
                max_assembly_bytes: 1 << 22,
                stream: Default::default(),
            },
            now,
        ),
        now,
        next_pn: 0,
        pushed: BTreeSet::new(),
        acks: Vec::new(),
        lie_keys: DirectionKeys::derive(&secret, conn_id, Role::Receiver),
    };
    let limit = g.block_limit().max(1);
    let mut lied = false;
    for op in input.ops {
        match op {
            Op::Push(b) => w.push(u32::from(b) % limit),
            Op::Transmit { lose } => w.transmit(lose),
            Op::Tick { us, lose_acks } => w.tick(u64::from(us) * 20, lose_acks),
            Op::Lie(l) => {
                lied = true;
                let ack = Ack {
                    largest_pn: l.largest_pn & MAX_PACKET_NUMBER,
                    ack_delay_us: l.ack_delay_us,
                    receiver_time_us: l.receiver_time_us,
                    packets_received: l.packets_received,
                    bytes_received: l.bytes_received,
                    fec_recovered: l.fec_recovered,
                    cumulative_block: l.cumulative_block,
                    highest_block: l.highest_block.filter(|h| *h != u32::MAX),
                    ranges: l.ranges.into_iter().take(64).collect(),
                    nacks: l
                        .nacks
                        .into_iter()
                        .take(48)
                        .filter_map(|(b, needed, bits)| {
                            let block = u32::from(b) % limit;
                            let span = g.span(block)?;
                            Some(Nack {
                                block,
                                needed,
                                have: vec![bits; usize::from(span.data_shards).div_ceil(8)],
                            })
                        })
                        .collect(),
                };
                let h = Header {
                    packet_type: PacketType::Ack,
                    flags: 0,
                    conn_id,
                    packet_number: l.pn & MAX_PACKET_NUMBER,
                    shard: None,
                };
                let mut d = Vec::new();
                h.encode(&mut d);
                ack.encode(&mut d);
                w.lie_keys.seal.seal(h.packet_number, h.len(), &mut d);
                w.s.handle_datagram(w.now, &mut d);
            }
            Op::Raw(mut bytes) => {
                let before = w.s.stats().packets_dropped;
                w.s.handle_datagram(w.now, &mut bytes);
                assert_eq!(
                    w.s.stats().packets_dropped,
                    before + 1,
                    "raw bytes taken as an ACK"
                );
            }
            Op::ReplayAck(i) => {
                if let Some(mut d) = w.acks.get(usize::from(i)).cloned() {
                    w.s.handle_datagram(w.now, &mut d);
                }
            }
            Op::Reset(c) => {
                let c = u32::from(c) % g.chunk_count().max(1);
                w.r.reset_chunk(c);
                for b in g
                    .blocks_of_chunk(c)
                    .filter(|b| w.pushed.contains(b))
                    .collect::<Vec<_>>()
                {
                    w.push(b);
                }
            }
        }
    }
    if lied {
        return; // a receiver that lies about what it has may well never get it
    }
    // Honest ACKs on a clean link: everything pushed completes. Time moves from one deadline of either side
    // to the next (fixed steps of 500 µs for 10 s failed at a 1 kB/s cap, where two blocks take 13 s, and
    // longer fixed steps let the sender's probe timer fire before ACKs due earlier in the same step).
    for _ in 0..50_000 {
        if w.s.is_idle() {
            break;
        }
        w.transmit(0);
        let next = [w.s.poll_timeout(), w.r.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(w.now + Duration::from_millis(1));
        let us = next.saturating_duration_since(w.now).as_micros() as u64;
        w.tick(us.max(1), false);
    }
    assert!(
        w.s.is_idle(),
        "{} blocks still in flight after 50,000 deadlines on a clean link: {:?}",
        w.s.blocks_in_flight(),
        w.s.stats()
    );
});
