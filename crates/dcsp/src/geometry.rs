//! How a file is cut into FEC blocks and shards.
//!
//! Each chunk of the file (the unit that is hashed and made durable, see `trackshift_proto::ChunkPlan`) is cut
//! into blocks of `data_shards × shard_size` bytes, the last block of a chunk possibly shorter (with fewer
//! shards, the last one zero-padded for the code). Blocks have global numbers: block `b` is block
//! `b % blocks_per_chunk` of chunk `b / blocks_per_chunk`, so both ends compute the same layout from the offer
//! alone and a packet only needs to carry the block number. Numbers past the end of a short last chunk are
//! unused.

use std::ops::Range;

use trackshift_proto::ChunkPlan;

use crate::fec::MAX_DATA_SHARDS;
use crate::DcspError;

/// Bytes of a Reed-Solomon symbol over GF(2^16): a shard is a whole number of them.
const SYMBOL_BYTES: u32 = 2;
/// Largest shard: a DATA datagram (shard and DCSP's 40 bytes) must fit the 65,507-byte payload of one IPv4
/// UDP datagram, with room to spare.
const MAX_SHARD_SIZE: u32 = 65_000;

/// The block layout of one file, identical on both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockGeometry {
    file_size: u64,
    chunk_size: u64,
    shard_size: u32,
    data_shards: u8,
    blocks_per_chunk: u32,
    chunk_count: u32,
}

/// Where a block sits in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSpan {
    pub chunk: u32,
    pub offset: u64,
    pub len: u32,
    /// Original shards of this block (the last one may be partly padding).
    pub data_shards: u8,
}

impl BlockGeometry {
    /// A layout for `file_size` bytes in chunks of `chunk_size`, blocks of `data_shards` shards of
    /// `shard_size` bytes (even, as Reed-Solomon over GF(2^16) needs). Drivers use [`Self::for_plan`]; this
    /// also takes the chunk sizes a `ChunkPlan` refuses (the simulator's small files).
    pub fn new(
        file_size: u64,
        chunk_size: u64,
        shard_size: u32,
        data_shards: u8,
    ) -> Result<Self, DcspError> {
        if shard_size < SYMBOL_BYTES
            || !shard_size.is_multiple_of(SYMBOL_BYTES)
            || shard_size > MAX_SHARD_SIZE
        {
            return Err(DcspError::Config(format!(
                "shard size {shard_size} must be even and between {SYMBOL_BYTES} and {MAX_SHARD_SIZE} bytes"
            )));
        }
        if data_shards == 0 || data_shards > MAX_DATA_SHARDS {
            return Err(DcspError::Config(format!(
                "{data_shards} data shards per block: use 1 to {MAX_DATA_SHARDS}"
            )));
        }
        if chunk_size == 0 {
            return Err(DcspError::Config("chunk size 0".into()));
        }
        let block_bytes = u64::from(shard_size) * u64::from(data_shards);
        let blocks_per_chunk = chunk_size.div_ceil(block_bytes);
        let chunk_count = file_size.div_ceil(chunk_size);
        if blocks_per_chunk.saturating_mul(chunk_count) > u64::from(u32::MAX)
            || chunk_count > u64::from(u32::MAX)
        {
            return Err(DcspError::Config(format!(
                "{file_size} bytes need more than 2^32 blocks of {block_bytes} bytes: use larger shards or chunks"
            )));
        }
        Ok(Self {
            file_size,
            chunk_size,
            shard_size,
            data_shards,
            blocks_per_chunk: blocks_per_chunk as u32,
            chunk_count: chunk_count as u32,
        })
    }

    /// The layout of the file `plan` cuts into chunks: each chunk in blocks of `data_shards` shards of
    /// `shard_size` bytes. Both ends build it from the `Offer` (the plan) and `UdpStart` (the shards).
    pub fn for_plan(plan: &ChunkPlan, shard_size: u32, data_shards: u8) -> Result<Self, DcspError> {
        Self::new(plan.file_size(), plan.chunk_size(), shard_size, data_shards)
    }

    pub fn shard_size(&self) -> u32 {
        self.shard_size
    }

    /// Original shards of a full block.
    pub fn data_shards(&self) -> u8 {
        self.data_shards
    }

    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    pub fn chunk_count(&self) -> u32 {
        self.chunk_count
    }

    /// Bytes of a full block.
    pub fn block_bytes(&self) -> u64 {
        u64::from(self.shard_size) * u64::from(self.data_shards)
    }

    /// One past the highest block number (some numbers below it may be unused).
    pub fn block_limit(&self) -> u32 {
        self.blocks_per_chunk * self.chunk_count
    }

    fn chunk_len(&self, chunk: u32) -> u64 {
        let start = u64::from(chunk) * self.chunk_size;
        self.file_size.saturating_sub(start).min(self.chunk_size)
    }

    /// The block numbers of `chunk` (all used).
    pub fn blocks_of_chunk(&self, chunk: u32) -> Range<u32> {
        let first = chunk * self.blocks_per_chunk;
        let n = self.chunk_len(chunk).div_ceil(self.block_bytes()) as u32;
        first..first + n
    }

    /// Where chunk `chunk` starts in the file.
    pub fn chunk_offset(&self, chunk: u32) -> u64 {
        u64::from(chunk) * self.chunk_size
    }

    /// Where a resumed chunk's data starts again (bytes from the chunk's start) when the receiver holds its first
    /// `have` bytes: the start of its first block not entirely within them. Sender and receiver both compute it,
    /// so they agree on the blocks that are not sent again.
    pub fn resume_point(&self, chunk: u32, have: u64) -> u64 {
        let whole_blocks = have.min(self.chunk_len(chunk)) / self.block_bytes();
        whole_blocks * self.block_bytes()
    }

    /// Where block `block` sits, or `None` for an unused or out-of-range number.
    pub fn span(&self, block: u32) -> Option<BlockSpan> {
        let chunk = block / self.blocks_per_chunk;
        if chunk >= self.chunk_count {
            return None;
        }
        let within = u64::from(block % self.blocks_per_chunk);
        let chunk_len = self.chunk_len(chunk);
        let start = within * self.block_bytes();
        if start >= chunk_len {
            return None;
        }
        let len = (chunk_len - start).min(self.block_bytes()) as u32;
        Some(BlockSpan {
            chunk,
            offset: u64::from(chunk) * self.chunk_size + start,
            len,
            data_shards: len.div_ceil(self.shard_size) as u8,
        })
    }

    /// Checks that `block` exists; the error names it.
    pub fn require(&self, block: u32) -> Result<BlockSpan, DcspError> {
        self.span(block).ok_or(DcspError::NoSuchBlock(block))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plans_geometry_is_the_one_of_its_size_and_chunks() {
        let plan = ChunkPlan::new(123_456_789, 8 << 20).unwrap();
        let g = BlockGeometry::for_plan(&plan, 1432, 64).unwrap();
        assert_eq!(
            g,
            BlockGeometry::new(123_456_789, 8 << 20, 1432, 64).unwrap()
        );
        assert_eq!(g.chunk_count(), plan.chunk_count());
        for c in [0, plan.chunk_count() - 1] {
            let blocks = g.blocks_of_chunk(c);
            assert_eq!(g.span(blocks.start).unwrap().offset, plan.offset(c));
            let last = g.span(blocks.end - 1).unwrap();
            assert_eq!(
                last.offset + u64::from(last.len),
                plan.offset(c) + plan.len(c)
            );
        }
        assert!(BlockGeometry::for_plan(&plan, 3, 64).is_err());
    }

    #[test]
    fn blocks_tile_the_file_exactly() {
        for (size, chunk, shard, k) in [
            (0u64, 1000u64, 10u32, 4u8),
            (1, 1000, 10, 4),
            (999, 100, 8, 3),
            (1000, 100, 10, 10),
            (12_345, 1000, 64, 7),
        ] {
            let g = BlockGeometry::new(size, chunk, shard, k).unwrap();
            let mut next = 0u64;
            for c in 0..g.chunk_count() {
                for b in g.blocks_of_chunk(c) {
                    let s = g.span(b).unwrap();
                    assert_eq!(s.offset, next, "{size} {chunk} {shard} {k} block {b}");
                    assert_eq!(s.chunk, c);
                    assert!(s.len > 0 && u64::from(s.len) <= g.block_bytes());
                    assert!(s.data_shards >= 1 && s.data_shards <= k);
                    next += u64::from(s.len);
                }
            }
            assert_eq!(next, size);
            assert!(g.span(g.block_limit()).is_none());
        }
    }

    #[test]
    fn odd_shard_sizes_are_refused() {
        assert!(BlockGeometry::new(10, 10, 3, 2).is_err());
        assert!(BlockGeometry::new(10, 10, 4, 0).is_err());
    }
}
