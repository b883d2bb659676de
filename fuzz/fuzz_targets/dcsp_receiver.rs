//! A DCSP receiver fed datagrams that pass authentication, not only junk: honest DATA and PARITY shards of a
//! file (parity computed as a sender would), PINGs, authentic datagrams with arbitrary headers and payloads (a
//! sender that holds the keys but lies), raw bytes, replays, bit-flipped copies, packet-number jumps, chunk
//! resets (a chunk that failed its hash), ACK polls as time passes and recycled buffers, under a layout, a
//! stream share, skipped chunks and a memory bound taken from the input. Checked: every block delivered lies
//! where the layout says, belongs to this stream and to no skipped chunk, comes once (until its chunk is reset)
//! and, when only honest shards reached it, holds exactly the file's bytes; every ACK opens under the sender's
//! key, decodes under the layout, and its cumulative block never claims a block that was not delivered.
//! Covers `DcspReceiver` (replay window, AEAD, `BlockAssembly`, Reed-Solomon decoding, ACK and NACK
//! building) and `ReplayWindow`.
#![no_main]

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use trackshift_dcsp::ack::Ack;
use trackshift_dcsp::fec::{encode_parity, ParityEncoder, MAX_PARITY};
use trackshift_dcsp::packet::{Header, ShardHeader, MAX_PACKET_NUMBER};
use trackshift_dcsp::{
    BlockGeometry, DcspReceiver, DirectionKeys, PacketType, ReceiverConfig, ReceiverEvent, Role,
    StreamShare,
};

#[derive(Arbitrary, Debug)]
enum Op {
    Data {
        block: u16,
        shard: u8,
    },
    Parity {
        block: u16,
        m: u8,
        index: u8,
    },
    Ping,
    /// Authentic, with whatever header fields and payload length.
    Lie {
        ty: u8,
        flags: u8,
        block: u32,
        index: u8,
        m: u8,
        len: u16,
        fill: u8,
    },
    Raw(Vec<u8>),
    Replay(u8),
    Flip {
        which: u8,
        at: u16,
        bit: u8,
    },
    Jump(u32),
    Reset(u16),
    Tick(u16),
    Recycle(u16),
}

#[derive(Arbitrary, Debug)]
struct Input {
    size: u32,
    chunk: u16,
    shard_half: u16,
    k: u8,
    streams: u8,
    stream_index: u8,
    skip: Vec<u8>,
    max_blocks: u8,
    ops: Vec<Op>,
}

fn file_byte(offset: u64) -> u8 {
    (offset.wrapping_mul(31) ^ (offset >> 9)) as u8
}

struct Peer {
    keys: DirectionKeys,
    pn: u64,
    sent: Vec<Vec<u8>>,
}

impl Peer {
    fn seal(&mut self, header: &mut Header, payload: &[u8]) -> Vec<u8> {
        header.packet_number = self.pn.min(MAX_PACKET_NUMBER);
        self.pn += 1;
        let mut out = Vec::new();
        header.encode(&mut out);
        out.extend_from_slice(payload);
        self.keys
            .seal
            .seal(header.packet_number, header.len(), &mut out);
        if self.sent.len() < 256 {
            self.sent.push(out.clone());
        }
        out
    }
}

fuzz_target!(|input: Input| {
    let shard = u32::from(input.shard_half % 600 + 1) * 2;
    let Ok(g) = BlockGeometry::new(
        u64::from(input.size % (256 << 10)),
        u64::from(input.chunk) + 1000,
        shard,
        input.k % 128 + 1,
    ) else {
        return;
    };
    let streams = input.streams % 4 + 1;
    let stream = StreamShare {
        index: input.stream_index % streams,
        count: streams,
    };
    let skip: BTreeSet<u32> = input
        .skip
        .iter()
        .map(|c| u32::from(*c))
        .filter(|c| *c < g.chunk_count())
        .collect();
    let conn_id = 0x1234_5678_9abc_def0;
    let secret = [9u8; 32];
    let start = Instant::now();
    let mut now = start;
    let mut r = DcspReceiver::new(
        ReceiverConfig {
            conn_id,
            keys: DirectionKeys::derive(&secret, conn_id, Role::Receiver),
            geometry: g,
            skip_chunks: skip.iter().copied().collect(),
            max_assembly_bytes: (usize::from(input.max_blocks) + 1) * g.block_bytes() as usize,
            stream,
        },
        now,
    );
    let ack_keys = DirectionKeys::derive(&secret, conn_id, Role::Sender);
    let mut peer = Peer {
        keys: DirectionKeys::derive(&secret, conn_id, Role::Sender),
        pn: 0,
        sent: Vec::new(),
    };
    let from: SocketAddr = "198.18.0.1:7000".parse().expect("addr");
    let limit = g.block_limit();
    let mut encoder = ParityEncoder::default();
    let mut delivered: HashSet<u32> = HashSet::new();
    let mut tainted: HashSet<u32> = HashSet::new();
    let mut out = Vec::new();
    for op in input.ops {
        let datagram = match op {
            Op::Data { block, shard } => {
                let b = u32::from(block) % limit.max(1);
                let Some(span) = g.span(b) else { continue };
                let i = shard % span.data_shards;
                let s = g.shard_size() as usize;
                let payload: Vec<u8> = (0..s as u64)
                    .map(|j| {
                        let at = i as u64 * s as u64 + j;
                        if at < u64::from(span.len) {
                            file_byte(span.offset + at)
                        } else {
                            0
                        }
                    })
                    .collect();
                let mut h = shard_header(PacketType::Data, conn_id, b, i, 0);
                peer.seal(&mut h, &payload)
            }
            Op::Parity { block, m, index } => {
                let b = u32::from(block) % limit.max(1);
                let Some(span) = g.span(b) else { continue };
                let m = m % MAX_PARITY + 1;
                let s = g.shard_size() as usize;
                let mut data: Vec<u8> = (0..u64::from(span.len))
                    .map(|j| file_byte(span.offset + j))
                    .collect();
                data.resize(usize::from(span.data_shards) * s, 0);
                let mut parity = Vec::new();
                encode_parity(&mut encoder, &data, span.data_shards, m, s, &mut parity);
                let i = index % m;
                let Some(p) = parity.get(usize::from(i) * s..(usize::from(i) + 1) * s) else {
                    continue;
                };
                let p = p.to_vec();
                let mut h = shard_header(PacketType::Parity, conn_id, b, i, m);
                peer.seal(&mut h, &p)
            }
            Op::Ping => {
                let mut h = Header {
                    packet_type: PacketType::Ping,
                    flags: 0,
                    conn_id,
                    packet_number: 0,
                    shard: None,
                };
                peer.seal(&mut h, &[])
            }
            Op::Lie {
                ty,
                flags,
                block,
                index,
                m,
                len,
                fill,
            } => {
                let packet_type = match ty % 4 {
                    0 => PacketType::Data,
                    1 => PacketType::Parity,
                    2 => PacketType::Ping,
                    _ => PacketType::Ack,
                };
                let block = if ty & 0x80 != 0 {
                    block % limit.max(1)
                } else {
                    block
                };
                tainted.insert(block);
                let mut h = Header {
                    packet_type,
                    flags,
                    conn_id,
                    packet_number: 0,
                    shard: packet_type.has_shard_header().then_some(ShardHeader {
                        block,
                        index,
                        parity_count: m,
                    }),
                };
                let n = if len & 0x8000 != 0 {
                    g.shard_size() as usize
                } else {
                    usize::from(len % 2048)
                };
                peer.seal(&mut h, &vec![fill; n])
            }
            Op::Raw(bytes) => bytes,
            Op::Replay(i) => match peer.sent.get(usize::from(i)) {
                Some(d) => d.clone(),
                None => continue,
            },
            Op::Flip { which, at, bit } => match peer.sent.get(usize::from(which)) {
                Some(d) if !d.is_empty() => {
                    let mut d = d.clone();
                    let at = usize::from(at) % d.len();
                    d[at] ^= 1 << (bit % 8);
                    d
                }
                _ => continue,
            },
            Op::Jump(n) => {
                peer.pn = peer.pn.saturating_add(u64::from(n));
                continue;
            }
            Op::Reset(chunk) => {
                let c = u32::from(chunk) % g.chunk_count().max(1);
                if g.chunk_count() == 0 || skip.contains(&c) {
                    continue; // the driver only resets a chunk it received in this run
                }
                r.reset_chunk(c);
                for b in g.blocks_of_chunk(c) {
                    delivered.remove(&b);
                    tainted.remove(&b);
                }
                continue;
            }
            Op::Tick(us) => {
                now += Duration::from_micros(u64::from(us) * 10);
                while r.poll_transmit(now, &mut out).is_some() {
                    check_ack(&ack_keys, &g, &mut out, &delivered, &skip, stream);
                }
                continue;
            }
            Op::Recycle(len) => {
                r.recycle(vec![0xEE; usize::from(len)]);
                continue;
            }
        };
        let mut d = datagram;
        r.handle_datagram(now, from, &mut d);
        while let Some(ev) = r.poll_event() {
            let ReceiverEvent::Block {
                block,
                chunk,
                offset,
                data,
            } = ev
            else {
                continue;
            };
            let span = g.span(block).expect("a delivered block exists");
            assert_eq!(
                (chunk, offset, data.len()),
                (span.chunk, span.offset, span.len as usize)
            );
            assert!(
                stream.owns(block),
                "block {block} belongs to another stream"
            );
            assert!(
                !skip.contains(&chunk),
                "block {block} of a chunk verified earlier"
            );
            assert!(delivered.insert(block), "block {block} delivered twice");
            if !tainted.contains(&block) {
                let want: Vec<u8> = (0..u64::from(span.len))
                    .map(|j| file_byte(span.offset + j))
                    .collect();
                assert!(
                    data == want,
                    "block {block} rebuilt from honest shards differs from the file"
                );
            }
            r.recycle(data);
        }
    }
    let everything = (0..limit).all(|b| {
        g.span(b)
            .is_none_or(|s| !stream.owns(b) || skip.contains(&s.chunk) || delivered.contains(&b))
    });
    assert_eq!(r.is_complete(), everything);
});

fn shard_header(
    packet_type: PacketType,
    conn_id: u64,
    block: u32,
    index: u8,
    parity_count: u8,
) -> Header {
    Header {
        packet_type,
        flags: 0,
        conn_id,
        packet_number: 0,
        shard: Some(ShardHeader {
            block,
            index,
            parity_count,
        }),
    }
}

fn check_ack(
    keys: &DirectionKeys,
    g: &BlockGeometry,
    out: &mut [u8],
    delivered: &HashSet<u32>,
    skip: &BTreeSet<u32>,
    stream: StreamShare,
) {
    let h = Header::decode(out).expect("our ACK's header");
    assert_eq!(h.packet_type, PacketType::Ack);
    let n = keys
        .open
        .open(h.packet_number, h.len(), out)
        .expect("our ACK opens");
    let ack = Ack::decode(&out[h.len()..h.len() + n], g).expect("our ACK decodes");
    assert!(ack.cumulative_block <= g.block_limit());
    for b in 0..ack.cumulative_block {
        let owed = g
            .span(b)
            .is_some_and(|s| stream.owns(b) && !skip.contains(&s.chunk));
        assert!(
            !owed || delivered.contains(&b),
            "ACK claims block {b}, never delivered"
        );
    }
    for (first, count) in &ack.ranges {
        for b in *first..first.saturating_add(*count) {
            let owed = g
                .span(b)
                .is_some_and(|s| stream.owns(b) && !skip.contains(&s.chunk));
            assert!(
                !owed || delivered.contains(&b),
                "ACK range claims block {b}, never delivered"
            );
        }
    }
    for nack in &ack.nacks {
        assert!(
            !delivered.contains(&nack.block),
            "NACK for delivered block {}",
            nack.block
        );
    }
}
