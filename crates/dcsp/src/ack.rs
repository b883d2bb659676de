//! The ACK body (encrypted): what the receiver got, which blocks are complete, which are missing shards.
//!
//! ```text
//!  u48 largest packet number received     u32 ack delay (µs since that packet arrived)
//!  u64 receiver clock (µs)                u64 packets received   u64 bytes received
//!  u32 FEC-recovered blocks               u32 cumulative block (every block below it is complete)
//!  u32 highest block seen (0xFFFFFFFF: none yet)
//!  u16 n, then n × (u32 first, u32 count) complete ranges above the cumulative block
//!  u16 n, then n × (u32 block, u8 shards needed, ceil(k/8) bytes: which original shards arrived)   NACKs
//! ```
//! `k` of a NACKed block follows from the block geometry, so the bitmap's length is implicit.

use crate::geometry::BlockGeometry;
use crate::packet::{Reader, WireError, PN_LEN};

/// Most complete ranges one ACK carries. With [`MAX_NACKS`], this keeps a full ACK for blocks of 64 shards
/// (`--parity auto`) at 1,220 bytes, within IPv6's minimum MTU of 1,280 with its headers: never fragmented.
pub const MAX_RANGES: usize = 64;
/// Most NACK entries one ACK carries (see [`MAX_RANGES`]).
pub const MAX_NACKS: usize = 48;

/// One missing-shards report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    pub block: u32,
    /// Shards (any of them) still needed to rebuild the block.
    pub needed: u8,
    /// Original shards the receiver has, bit `i % 8` of byte `i / 8`.
    pub have: Vec<u8>,
}

impl Nack {
    pub fn has(&self, shard: u8) -> bool {
        self.have
            .get(usize::from(shard) / u8::BITS as usize)
            .is_some_and(|b| b & (1 << (u32::from(shard) % u8::BITS)) != 0)
    }
}

/// A decoded ACK.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ack {
    pub largest_pn: u64,
    pub ack_delay_us: u32,
    pub receiver_time_us: u64,
    pub packets_received: u64,
    pub bytes_received: u64,
    pub fec_recovered: u32,
    pub cumulative_block: u32,
    /// The highest block any shard arrived for; blocks above it were lost whole (or not sent yet).
    pub highest_block: Option<u32>,
    pub ranges: Vec<(u32, u32)>,
    pub nacks: Vec<Nack>,
}

impl Ack {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.largest_pn.to_be_bytes()[size_of::<u64>() - PN_LEN..]);
        out.extend_from_slice(&self.ack_delay_us.to_be_bytes());
        out.extend_from_slice(&self.receiver_time_us.to_be_bytes());
        out.extend_from_slice(&self.packets_received.to_be_bytes());
        out.extend_from_slice(&self.bytes_received.to_be_bytes());
        out.extend_from_slice(&self.fec_recovered.to_be_bytes());
        out.extend_from_slice(&self.cumulative_block.to_be_bytes());
        out.extend_from_slice(&self.highest_block.unwrap_or(u32::MAX).to_be_bytes());
        let ranges = &self.ranges[..self.ranges.len().min(MAX_RANGES)];
        out.extend_from_slice(&(ranges.len() as u16).to_be_bytes());
        for (first, count) in ranges {
            out.extend_from_slice(&first.to_be_bytes());
            out.extend_from_slice(&count.to_be_bytes());
        }
        let nacks = &self.nacks[..self.nacks.len().min(MAX_NACKS)];
        out.extend_from_slice(&(nacks.len() as u16).to_be_bytes());
        for n in nacks {
            out.extend_from_slice(&n.block.to_be_bytes());
            out.push(n.needed);
            out.extend_from_slice(&n.have);
        }
    }

    /// Decodes an ACK body; NACK bitmaps are sized from `geometry`. Never panics, whatever the bytes.
    pub fn decode(body: &[u8], geometry: &BlockGeometry) -> Result<Self, WireError> {
        let mut r = Reader::new(body, "ACK");
        let mut ack = Ack {
            largest_pn: r.u48()?,
            ack_delay_us: r.u32()?,
            receiver_time_us: r.u64()?,
            packets_received: r.u64()?,
            bytes_received: r.u64()?,
            fec_recovered: r.u32()?,
            cumulative_block: r.u32()?,
            highest_block: Some(r.u32()?).filter(|h| *h != u32::MAX),
            ..Ack::default()
        };
        let n = usize::from(r.u16()?);
        if n > MAX_RANGES {
            return Err(WireError::Malformed("ACK range count"));
        }
        for _ in 0..n {
            ack.ranges.push((r.u32()?, r.u32()?));
        }
        let n = usize::from(r.u16()?);
        if n > MAX_NACKS {
            return Err(WireError::Malformed("ACK NACK count"));
        }
        for _ in 0..n {
            let block = r.u32()?;
            let needed = r.u8()?;
            let span = geometry
                .span(block)
                .ok_or(WireError::Malformed("ACK NACK block"))?;
            let have = r
                .bytes(usize::from(span.data_shards).div_ceil(u8::BITS as usize))?
                .to_vec();
            ack.nacks.push(Nack {
                block,
                needed,
                have,
            });
        }
        if !r.is_empty() {
            return Err(WireError::Malformed("ACK trailing bytes"));
        }
        Ok(ack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn geometry() -> BlockGeometry {
        BlockGeometry::new(1 << 20, 1 << 16, 64, 10).unwrap()
    }

    #[test]
    fn round_trip() {
        let g = geometry();
        let ack = Ack {
            largest_pn: 123_456,
            ack_delay_us: 250,
            receiver_time_us: 99,
            packets_received: 1000,
            bytes_received: 1_400_000,
            fec_recovered: 3,
            cumulative_block: 40,
            highest_block: Some(50),
            ranges: vec![(42, 3), (50, 1)],
            nacks: vec![Nack {
                block: 41,
                needed: 2,
                have: vec![0b1111_0111, 0b01],
            }],
        };
        let mut out = Vec::new();
        ack.encode(&mut out);
        let back = Ack::decode(&out, &g).unwrap();
        assert_eq!(back, ack);
        assert!(back.nacks[0].has(0) && !back.nacks[0].has(3) && back.nacks[0].has(8));
        assert!(Ack::decode(&out[..out.len() - 1], &g).is_err());
    }

    #[test]
    fn a_full_ack_for_64_shard_blocks_fits_ipv6s_minimum_mtu() {
        let ack = Ack {
            ranges: vec![(1, 1); MAX_RANGES],
            nacks: vec![
                Nack {
                    block: 1,
                    needed: 1,
                    have: vec![0; 64 / 8],
                };
                MAX_NACKS
            ],
            ..Ack::default()
        };
        let mut body = Vec::new();
        ack.encode(&mut body);
        let datagram = crate::packet::HEADER_LEN + body.len() + crate::packet::TAG_LEN;
        assert_eq!(datagram, 1220);
        assert!(datagram + 40 + 8 <= 1280, "IPv6 and UDP headers included");
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Ack::decode(&bytes, &geometry());
        }
    }
}
