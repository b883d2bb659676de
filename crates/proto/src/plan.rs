//! How a file is cut into chunks, and which of them are done.

/// Smallest chunk size accepted (`--chunk-size`): below this, per-chunk overhead (a durable commit and an
/// acknowledgement per chunk) starts to show on fast links.
pub const MIN_CHUNK_SIZE: u64 = 5 * 1024 * 1024;
/// Largest chunk size accepted: a chunk is the unit of re-sending after an interruption, so larger chunks waste
/// more on every resume.
pub const MAX_CHUNK_SIZE: u64 = 200 * 1024 * 1024;
/// Default chunk size, the original plan's choice: about a second of transfer on a 400 Mbit/s link. No code
/// reads it (`--chunk-size` defaults to the string "50MiB"); the CLI's unit test checks the two agree.
pub const DEFAULT_CHUNK_SIZE: u64 = 50 * 1024 * 1024;
/// Most chunks a file may have, so a chunk index fits in `u32` and a chunk map stays small.
pub const MAX_CHUNKS: u64 = 1 << 24;

/// A chunk size outside the accepted range, or a file too large for it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("chunk size {0} bytes is out of range: use 5MiB to 200MiB")]
    ChunkSize(u64),
    #[error("a file of {size} bytes needs more than {MAX_CHUNKS} chunks of {chunk_size} bytes: use a larger --chunk-size")]
    TooManyChunks { size: u64, chunk_size: u64 },
}

/// The fixed cut of one file into chunks: every chunk is `chunk_size` bytes except possibly the last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkPlan {
    file_size: u64,
    chunk_size: u64,
}

impl ChunkPlan {
    /// A plan for `file_size` bytes in chunks of `chunk_size`, checking the accepted range.
    pub fn new(file_size: u64, chunk_size: u64) -> Result<Self, PlanError> {
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(PlanError::ChunkSize(chunk_size));
        }
        let plan = Self {
            file_size,
            chunk_size,
        };
        if plan.chunk_count_u64() > MAX_CHUNKS {
            return Err(PlanError::TooManyChunks {
                size: file_size,
                chunk_size,
            });
        }
        Ok(plan)
    }

    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    fn chunk_count_u64(&self) -> u64 {
        self.file_size.div_ceil(self.chunk_size)
    }

    /// Number of chunks; an empty file has none.
    pub fn chunk_count(&self) -> u32 {
        // Bounded by MAX_CHUNKS in `new`.
        self.chunk_count_u64() as u32
    }

    /// Byte offset of chunk `index` in the file.
    pub fn offset(&self, index: u32) -> u64 {
        u64::from(index) * self.chunk_size
    }

    /// Length of chunk `index` (only the last may be shorter).
    pub fn len(&self, index: u32) -> u64 {
        let start = self.offset(index);
        self.chunk_size.min(self.file_size.saturating_sub(start))
    }

    /// Whether `index` names a chunk of this plan.
    pub fn contains(&self, index: u32) -> bool {
        index < self.chunk_count()
    }
}

/// Chunks per word of a [`ChunkMap`]'s bitmap.
const WORD_BITS: u32 = u64::BITS;

/// Which chunks are done, one bit each.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ChunkMap {
    bits: Vec<u64>,
    len: u32,
    set: u32,
}

impl ChunkMap {
    /// A map of `len` chunks, none done.
    pub fn new(len: u32) -> Self {
        Self {
            bits: vec![0; len.div_ceil(WORD_BITS) as usize],
            len,
            set: 0,
        }
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of chunks marked done.
    pub fn count(&self) -> u32 {
        self.set
    }

    pub fn is_complete(&self) -> bool {
        self.set == self.len
    }

    pub fn get(&self, index: u32) -> bool {
        index < self.len
            && self.bits[(index / WORD_BITS) as usize] & (1 << (index % WORD_BITS)) != 0
    }

    /// Marks `index` done; returns false when it was already done or out of range.
    pub fn insert(&mut self, index: u32) -> bool {
        if index >= self.len || self.get(index) {
            return false;
        }
        self.bits[(index / WORD_BITS) as usize] |= 1 << (index % WORD_BITS);
        self.set += 1;
        true
    }

    /// Marks `index` not done; returns false when it was not done.
    pub fn remove(&mut self, index: u32) -> bool {
        if !self.get(index) {
            return false;
        }
        self.bits[(index / WORD_BITS) as usize] &= !(1 << (index % WORD_BITS));
        self.set -= 1;
        true
    }

    /// The first chunk not done at or after `from`.
    pub fn first_missing_from(&self, from: u32) -> Option<u32> {
        (from..self.len).find(|&i| !self.get(i))
    }

    /// Number of leading chunks that are all done.
    pub fn done_prefix(&self) -> u32 {
        self.first_missing_from(0).unwrap_or(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn plan_cuts_file_into_chunks() {
        let plan = ChunkPlan::new(12 * MIB + 3, 5 * MIB).unwrap();
        assert_eq!(plan.chunk_count(), 3);
        assert_eq!(plan.offset(2), 10 * MIB);
        assert_eq!(plan.len(0), 5 * MIB);
        assert_eq!(plan.len(2), 2 * MIB + 3);
        assert!(!plan.contains(3));
        assert_eq!(ChunkPlan::new(0, 5 * MIB).unwrap().chunk_count(), 0);
        assert_eq!(ChunkPlan::new(10 * MIB, 5 * MIB).unwrap().chunk_count(), 2);
    }

    #[test]
    fn plan_rejects_out_of_range_chunk_sizes() {
        assert_eq!(ChunkPlan::new(1, MIB), Err(PlanError::ChunkSize(MIB)));
        assert!(ChunkPlan::new(1, 201 * MIB).is_err());
        assert!(ChunkPlan::new(1, 200 * MIB).is_ok());
        assert!(ChunkPlan::new(u64::MAX, 5 * MIB).is_err());
    }

    #[test]
    fn chunk_map_counts_and_prefix() {
        let mut map = ChunkMap::new(130);
        assert!(map.insert(0));
        assert!(!map.insert(0));
        assert!(map.insert(1));
        assert!(map.insert(129));
        assert!(!map.insert(130));
        assert_eq!(map.count(), 3);
        assert_eq!(map.done_prefix(), 2);
        assert_eq!(map.first_missing_from(2), Some(2));
        assert!(map.remove(1));
        assert_eq!(map.done_prefix(), 1);
        assert!(!map.is_complete());
    }
}
