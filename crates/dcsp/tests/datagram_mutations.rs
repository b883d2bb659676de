//! Structured property tests of DCSP's wire format and its checks: strategies build valid datagrams (DATA,
//! PARITY and PING shards sealed under the connection's keys, ACKs with bodies that fit the block geometry),
//! then mutate them (bit flips, truncation, extension, swapped fields, another type, another key, a replay).
//! A valid datagram is taken by a `DcspReceiver` (or `DcspSender`) and its header and ACK body round-trip; a
//! mutated one is dropped and counted exactly once, delivers nothing, and does not spoil the valid original
//! that follows it. An ACK body that still decodes after a mutation re-encodes to exactly its bytes. Each
//! property runs `CASES` cases.

#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is a failing test, with its message

use std::net::SocketAddr;
use std::time::Instant;

use proptest::prelude::*;
use trackshift_dcsp::ack::{Ack, Nack, MAX_NACKS, MAX_RANGES};
use trackshift_dcsp::packet::{peek_conn_id, Header, ShardHeader, MAX_PACKET_NUMBER};
use trackshift_dcsp::{
    BlockGeometry, DcspReceiver, DcspSender, DelayRate, DirectionKeys, PacketType, ParityMode,
    ReceiverConfig, ReceiverEvent, Role, SenderConfig,
};

/// Cases per property.
const CASES: u32 = 4096;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        ..ProptestConfig::default()
    }
}

/// A small file's block layout: sizes that make short last chunks and short last blocks common.
fn geometry() -> impl Strategy<Value = BlockGeometry> {
    (1u64..400_000, 1_000u64..150_000, 1u32..=600, 1u8..=32)
        .prop_map(|(size, chunk, half, k)| BlockGeometry::new(size, chunk, half * 2, k).unwrap())
}

/// One connection: its id, the secret its keys come from, and its layout.
#[derive(Debug, Clone)]
struct Conn {
    conn_id: u64,
    secret: [u8; 32],
    geometry: BlockGeometry,
}

fn conn() -> impl Strategy<Value = Conn> {
    (any::<u64>(), any::<[u8; 32]>(), geometry()).prop_map(|(conn_id, secret, geometry)| Conn {
        conn_id,
        secret,
        geometry,
    })
}

impl Conn {
    fn receiver(&self) -> DcspReceiver {
        DcspReceiver::new(
            ReceiverConfig {
                conn_id: self.conn_id,
                keys: DirectionKeys::derive(&self.secret, self.conn_id, Role::Receiver),
                geometry: self.geometry,
                skip_chunks: Vec::new(),
                max_assembly_bytes: 1 << 24,
                stream: Default::default(),
            },
            Instant::now(),
        )
    }

    fn sender(&self) -> DcspSender {
        DcspSender::new(
            SenderConfig {
                conn_id: self.conn_id,
                keys: DirectionKeys::derive(&self.secret, self.conn_id, Role::Sender),
                geometry: self.geometry,
                parity: ParityMode::Auto,
                controller: Box::new(DelayRate::new(None)),
                max_buffered: 1 << 22,
            },
            Instant::now(),
        )
    }
}

/// A sender-to-receiver datagram before sealing.
#[derive(Debug, Clone)]
struct Shard {
    header: Header,
    payload: Vec<u8>,
}

/// A valid DATA, PARITY or PING datagram of `c` (DATA for an existing block and shard, PARITY for an index below
/// its parity count, payloads of exactly one shard).
fn shard_of(c: Conn) -> impl Strategy<Value = (Conn, Shard)> {
    let g = c.geometry;
    let chunks = g.chunk_count().max(1);
    (
        0..chunks,
        any::<prop::sample::Index>(),
        0u8..3,
        any::<u8>(),
        1u8..=64,
        0..=MAX_PACKET_NUMBER,
        proptest::collection::vec(any::<u8>(), g.shard_size() as usize),
    )
        .prop_map(move |(chunk, pick, kind, index, m, pn, payload)| {
            let blocks = g.blocks_of_chunk(chunk);
            let (packet_type, shard) = if blocks.is_empty() || kind == 2 {
                (PacketType::Ping, None)
            } else {
                let block = blocks.start + pick.index(blocks.len()) as u32;
                let span = g.span(block).unwrap();
                if kind == 0 {
                    let index = index % span.data_shards;
                    (PacketType::Data, Some((block, index, m)))
                } else {
                    (PacketType::Parity, Some((block, index % m, m)))
                }
            };
            let header = Header {
                packet_type,
                flags: 0,
                conn_id: c.conn_id,
                packet_number: pn,
                shard: shard.map(|(block, index, parity_count)| ShardHeader {
                    block,
                    index,
                    parity_count,
                }),
            };
            let payload = if shard.is_some() { payload } else { Vec::new() };
            (c.clone(), Shard { header, payload })
        })
}

fn valid_shard() -> impl Strategy<Value = (Conn, Shard)> {
    conn().prop_flat_map(shard_of)
}

fn seal(keys: &DirectionKeys, header: &Header, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    header.encode(&mut out);
    out.extend_from_slice(body);
    keys.seal.seal(header.packet_number, header.len(), &mut out);
    out
}

fn sealed(c: &Conn, s: &Shard) -> Vec<u8> {
    seal(
        &DirectionKeys::derive(&c.secret, c.conn_id, Role::Sender),
        &s.header,
        &s.payload,
    )
}

/// What can happen to a datagram on the way. Positions are taken modulo the length.
#[derive(Debug, Clone)]
enum Mutation {
    BitFlip(usize, u8),
    BitFlips(Vec<(usize, u8)>),
    Truncate(usize),
    Extend(Vec<u8>),
    /// Swap two equal windows (fields moved around, header and ciphertext alike).
    SwapFields(usize, usize, usize),
    /// Overwrite one header byte (type, flags, version, a byte of the connection id or packet number...).
    SetHeaderByte(usize, u8),
    /// Another packet number, the rest unchanged.
    Renumber(u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(p, b)| Mutation::BitFlip(p, b)),
        proptest::collection::vec((any::<usize>(), 0u8..8), 2..8).prop_map(Mutation::BitFlips),
        any::<usize>().prop_map(Mutation::Truncate),
        proptest::collection::vec(any::<u8>(), 1..40).prop_map(Mutation::Extend),
        (any::<usize>(), any::<usize>(), 1usize..24)
            .prop_map(|(a, b, n)| Mutation::SwapFields(a, b, n)),
        (0usize..24, any::<u8>()).prop_map(|(i, v)| Mutation::SetHeaderByte(i, v)),
        (0..=MAX_PACKET_NUMBER).prop_map(Mutation::Renumber),
    ]
}

fn apply(mut d: Vec<u8>, m: &Mutation) -> Vec<u8> {
    let n = d.len();
    match m {
        Mutation::BitFlip(p, bit) => d[p % n] ^= 1 << bit,
        Mutation::BitFlips(flips) => {
            for (p, bit) in flips {
                d[p % n] ^= 1 << bit;
            }
        }
        Mutation::Truncate(k) => d.truncate(k % n),
        Mutation::Extend(extra) => d.extend_from_slice(extra),
        Mutation::SwapFields(a, b, w) => {
            let w = (*w).min(n / 2);
            let (a, b) = (a % (n - w + 1), b % (n - w + 1));
            let (a, b) = (a.min(b), a.max(b));
            if b >= a + w {
                let (head, tail) = d.split_at_mut(b);
                head[a..a + w].swap_with_slice(&mut tail[..w]);
            }
        }
        Mutation::SetHeaderByte(i, v) => d[i % n.min(24)] = *v,
        Mutation::Renumber(pn) => d[12..18].copy_from_slice(&pn.to_be_bytes()[2..]),
    }
    d
}

fn from() -> SocketAddr {
    "198.18.0.1:4000".parse().unwrap()
}

fn events(r: &mut DcspReceiver) -> Vec<ReceiverEvent> {
    std::iter::from_fn(|| r.poll_event()).collect()
}

fn blocks(evs: &[ReceiverEvent]) -> usize {
    evs.iter()
        .filter(|e| matches!(e, ReceiverEvent::Block { .. }))
        .count()
}

/// A valid ACK for `g`: NACKs name existing blocks with bitmaps of their length, counts within the limits.
fn ack_for(g: BlockGeometry) -> impl Strategy<Value = Ack> {
    let limit = g.block_limit().max(1);
    let nack = (0..limit, any::<u8>(), any::<[u8; 16]>()).prop_filter_map(
        "unused block number",
        move |(block, needed, bits)| {
            let span = g.span(block)?;
            Some(Nack {
                block,
                needed,
                have: bits[..usize::from(span.data_shards).div_ceil(8)].to_vec(),
            })
        },
    );
    (
        0..=MAX_PACKET_NUMBER,
        any::<(u32, u64, u64, u64, u32, u32)>(),
        prop_oneof![Just(None), (0..u32::MAX).prop_map(Some)],
        proptest::collection::vec(any::<(u32, u32)>(), 0..=MAX_RANGES),
        proptest::collection::vec(nack, 0..=MAX_NACKS.min(12)),
    )
        .prop_map(
            |(
                largest_pn,
                (delay, time, packets, bytes, fec, cumulative),
                highest,
                ranges,
                nacks,
            )| {
                Ack {
                    largest_pn,
                    ack_delay_us: delay,
                    receiver_time_us: time,
                    packets_received: packets,
                    bytes_received: bytes,
                    fec_recovered: fec,
                    cumulative_block: cumulative,
                    highest_block: highest,
                    ranges,
                    nacks,
                }
            },
        )
}

fn valid_ack() -> impl Strategy<Value = (Conn, Ack, u64)> {
    conn().prop_flat_map(|c| {
        let g = c.geometry;
        (Just(c), ack_for(g), 0..=MAX_PACKET_NUMBER)
    })
}

fn ack_datagram(c: &Conn, ack: &Ack, pn: u64) -> Vec<u8> {
    let header = Header {
        packet_type: PacketType::Ack,
        flags: 0,
        conn_id: c.conn_id,
        packet_number: pn,
        shard: None,
    };
    let mut body = Vec::new();
    ack.encode(&mut body);
    seal(
        &DirectionKeys::derive(&c.secret, c.conn_id, Role::Receiver),
        &header,
        &body,
    )
}

proptest! {
    #![proptest_config(config())]

    /// A valid shard datagram: its header round-trips and names its connection; the receiver takes it
    /// (counted received, nothing dropped), a one-shard block comes out whole with exactly the file's bytes,
    /// and a PING is answered with an ACK the sender's keys open and the geometry decodes.
    #[test]
    fn valid_datagrams_are_taken(cs in valid_shard()) {
        let (c, s) = cs;
        let d = sealed(&c, &s);
        prop_assert_eq!(Header::decode(&d), Ok(s.header));
        prop_assert_eq!(peek_conn_id(&d), Some(c.conn_id));
        let mut r = c.receiver();
        r.handle_datagram(Instant::now(), from(), &mut d.clone());
        prop_assert_eq!(r.stats().packets_received, 1);
        prop_assert_eq!(r.stats().dropped(), 0, "{:?}", r.stats());
        let evs = events(&mut r);
        if let Some(sh) = s.header.shard {
            let span = c.geometry.span(sh.block).unwrap();
            if s.header.packet_type == PacketType::Data && span.data_shards == 1 {
                let block = evs.iter().find_map(|e| match e {
                    ReceiverEvent::Block { block, offset, data, .. } => Some((*block, *offset, data.clone())),
                    _ => None,
                });
                prop_assert_eq!(block, Some((sh.block, span.offset, s.payload[..span.len as usize].to_vec())));
            } else if span.data_shards == 1 {
                // One recovery shard rebuilds a one-shard block (into whatever its bytes decode to: the chunk
                // hash, not DCSP, judges a key holder's lies).
                prop_assert_eq!(blocks(&evs), 1);
            } else {
                prop_assert_eq!(blocks(&evs), 0);
            }
        } else {
            let mut out = Vec::new();
            prop_assert!(r.poll_transmit(Instant::now(), &mut out).is_some(), "a PING is answered at once");
            let h = Header::decode(&out).unwrap();
            let keys = DirectionKeys::derive(&c.secret, c.conn_id, Role::Sender);
            let n = keys.open.open(h.packet_number, h.len(), &mut out).unwrap();
            let ack = Ack::decode(&out[h.len()..h.len() + n], &c.geometry).unwrap();
            prop_assert_eq!(ack.largest_pn, s.header.packet_number);
        }
    }

    /// Any change to a sealed datagram gets it dropped and counted once (never received, never delivered), and
    /// the genuine datagram arriving after it is still taken: a forgery cannot burn a packet number.
    #[test]
    fn mutated_datagrams_are_dropped_and_do_not_spoil_the_original(cs in valid_shard(), m in mutation()) {
        let (c, s) = cs;
        let d = sealed(&c, &s);
        let bad = apply(d.clone(), &m);
        prop_assume!(bad != d);
        let mut r = c.receiver();
        r.handle_datagram(Instant::now(), from(), &mut bad.clone());
        prop_assert_eq!(r.stats().packets_received, 0, "{:?}: {:?}", m, r.stats());
        prop_assert_eq!(r.stats().dropped(), 1, "{:?}: {:?}", m, r.stats());
        prop_assert!(events(&mut r).is_empty());
        prop_assert!(r.peer().is_none(), "a forgery moved the ACKs");
        r.handle_datagram(Instant::now(), from(), &mut d.clone());
        prop_assert_eq!(r.stats().packets_received, 1, "{:?}", r.stats());
        prop_assert_eq!(r.stats().dropped(), 1);
    }

    /// The same header and payload sealed under another secret (or the other direction's key) is
    /// unauthentic; a genuine datagram sent twice is a replay the second time.
    #[test]
    fn foreign_keys_and_replays_are_counted_as_such(cs in valid_shard(), other in any::<[u8; 32]>(), reverse in any::<bool>()) {
        let (c, s) = cs;
        let foreign = if reverse {
            seal(&DirectionKeys::derive(&c.secret, c.conn_id, Role::Receiver), &s.header, &s.payload)
        } else {
            prop_assume!(other != c.secret);
            seal(&DirectionKeys::derive(&other, c.conn_id, Role::Sender), &s.header, &s.payload)
        };
        let d = sealed(&c, &s);
        let mut r = c.receiver();
        r.handle_datagram(Instant::now(), from(), &mut foreign.clone());
        prop_assert_eq!(r.stats().dropped_unauthentic, 1);
        r.handle_datagram(Instant::now(), from(), &mut d.clone());
        r.handle_datagram(Instant::now(), from(), &mut d.clone());
        let st = r.stats();
        prop_assert_eq!((st.packets_received, st.dropped_replayed, st.dropped()), (1, 1, 2), "{:?}", st);
    }

    /// Valid ACK bodies round-trip; a mutated body is refused or re-encodes to exactly the bytes read.
    #[test]
    fn ack_bodies_round_trip_and_mutants_re_encode_exactly(ca in valid_ack(), m in mutation()) {
        let (c, ack, _) = ca;
        let mut body = Vec::new();
        ack.encode(&mut body);
        prop_assert_eq!(Ack::decode(&body, &c.geometry), Ok(ack));
        let bad = apply(body, &m);
        if let Ok(a) = Ack::decode(&bad, &c.geometry) {
            let mut again = Vec::new();
            a.encode(&mut again);
            prop_assert_eq!(again, bad);
        }
    }

    /// A sealed ACK is taken by the sender; any change to it is dropped and counted, and the genuine ACK after
    /// it is still taken.
    #[test]
    fn the_sender_takes_valid_acks_and_drops_mutated_ones(ca in valid_ack(), m in mutation()) {
        let (c, ack, pn) = ca;
        let d = ack_datagram(&c, &ack, pn);
        let bad = apply(d.clone(), &m);
        prop_assume!(bad != d);
        let mut s = c.sender();
        s.handle_datagram(Instant::now(), &mut bad.clone());
        prop_assert_eq!((s.stats().acks_received, s.stats().packets_dropped), (0, 1), "{:?}", m);
        s.handle_datagram(Instant::now(), &mut d.clone());
        prop_assert_eq!((s.stats().acks_received, s.stats().packets_dropped), (1, 1));
        s.handle_datagram(Instant::now(), &mut d.clone());
        prop_assert_eq!((s.stats().acks_received, s.stats().packets_dropped), (1, 2), "a replayed ACK is dropped");
    }
}

/// Found by the `dcsp_receiver` fuzz target: resetting a chunk none of whose blocks this stream carries left
/// the cumulative block at the chunk's start, so the receiver never reported complete again.
#[test]
fn resetting_a_chunk_without_blocks_of_this_stream_keeps_the_receiver_complete() {
    // Three blocks of one chunk; stream 3 of 4 carries none of them.
    let g = BlockGeometry::new(3 * 1000, 1 << 20, 500, 2).unwrap();
    let mut r = DcspReceiver::new(
        ReceiverConfig {
            conn_id: 1,
            keys: DirectionKeys::derive(&[1; 32], 1, Role::Receiver),
            geometry: g,
            skip_chunks: Vec::new(),
            max_assembly_bytes: 1 << 20,
            stream: trackshift_dcsp::StreamShare { index: 3, count: 4 },
        },
        Instant::now(),
    );
    assert!(r.is_complete());
    r.reset_chunk(0);
    assert!(r.is_complete());
}
