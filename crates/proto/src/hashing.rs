//! SHA-256 of chunks, of the ordered list of chunk hashes, and of the whole file, computed while the bytes stream
//! by.
//!
//! `sha2` picks the SHA-NI (x86) or ARMv8 SHA instructions at run time when the CPU has them.

use sha2::{Digest, Sha256};

/// An incremental SHA-256.
#[derive(Clone, Default)]
pub struct Hasher(Sha256);

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hasher")
    }
}

impl Hasher {
    pub fn new() -> Self {
        Self(Sha256::new())
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

/// Domain separation for [`ChunkListHasher`]: a chunk list digest is never the SHA-256 of any other message.
const CHUNK_LIST_DOMAIN: &[u8] = b"trackshift chunk list v1\0";

/// The SHA-256 over the ordered list of a file's chunk hashes (protocol version 3, the `ChunkListHash` frame):
/// `SHA-256("trackshift chunk list v1\0" ‖ file_size: u64 BE ‖ chunk_size: u64 BE ‖ sha_0 ‖ … ‖ sha_{n−1})`.
/// With every chunk verified by its own SHA-256, it binds the chunks to their places and their number, so the
/// receiver checks the whole file from 32 bytes a chunk instead of hashing every byte a second time.
#[derive(Debug, Clone)]
pub struct ChunkListHasher {
    hasher: Hasher,
    next: u32,
    count: u32,
}

impl ChunkListHasher {
    pub fn new(plan: &crate::ChunkPlan) -> Self {
        let mut hasher = Hasher::new();
        hasher.update(CHUNK_LIST_DOMAIN);
        hasher.update(&plan.file_size().to_be_bytes());
        hasher.update(&plan.chunk_size().to_be_bytes());
        Self {
            hasher,
            next: 0,
            count: plan.chunk_count(),
        }
    }

    /// The hash of the next chunk, in index order.
    pub fn push(&mut self, sha256: &[u8; 32]) {
        self.hasher.update(sha256);
        self.next += 1;
    }

    /// The digest, once every chunk was pushed (`None` if there were fewer or more).
    pub fn finish(self) -> Option<[u8; 32]> {
        (self.next == self.count).then(|| self.hasher.finish())
    }

    /// The digest of `hashes` (index, SHA-256), which must be every chunk of `plan` in index order.
    pub fn digest(plan: &crate::ChunkPlan, hashes: &[(u32, [u8; 32])]) -> Option<[u8; 32]> {
        let mut h = Self::new(plan);
        for (i, (index, sha)) in hashes.iter().enumerate() {
            if *index as usize != i {
                return None;
            }
            h.push(sha);
        }
        h.finish()
    }
}

/// The whole-file SHA-256 on the receiving side, fed with bytes in file order as they arrive, whichever data path
/// brought them. A chunk's bytes count only once the chunk verified: [`OrderedFileHasher::mark`] remembers the
/// state where a chunk starts, [`OrderedFileHasher::rollback`] goes back there when the chunk fails, and
/// [`OrderedFileHasher::release`] forgets the mark once it verified. Bytes that could not be fed in order
/// (verified in an earlier run, or re-sent) the driver reads back from disk at [`OrderedFileHasher::position`].
#[derive(Debug, Default)]
pub struct OrderedFileHasher {
    hasher: Hasher,
    position: u64,
    /// The hash state at the start of each chunk hashed but not yet verified.
    marks: std::collections::BTreeMap<u64, Hasher>,
}

impl OrderedFileHasher {
    pub fn new() -> Self {
        Self::default()
    }

    /// File offset up to which bytes have been hashed.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The bytes at [`Self::position`].
    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.position += data.len() as u64;
    }

    /// A chunk starts at the current position: remember the state, to go back to if it fails.
    pub fn mark(&mut self) {
        self.marks.insert(self.position, self.hasher.clone());
    }

    /// The chunk that starts at `offset` verified: its mark is no longer needed.
    pub fn release(&mut self, offset: u64) {
        self.marks.remove(&offset);
    }

    /// The chunk that starts at `offset` failed: back to the state remembered there, forgetting what it and
    /// everything after it contributed. False (and nothing changes) when no mark is there.
    pub fn rollback(&mut self, offset: u64) -> bool {
        let Some(h) = self.marks.remove(&offset) else {
            return false;
        };
        self.marks.split_off(&offset);
        self.hasher = h;
        self.position = offset;
        true
    }

    pub fn finish(self) -> [u8; 32] {
        self.hasher.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SHA-256 of `data` in one call: what the incremental hashers must agree with.
    fn sha256(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    #[test]
    fn ordered_hasher_rolls_back_failed_chunks() {
        let data: Vec<u8> = (0..150u8).collect();
        let mut h = OrderedFileHasher::new();
        h.mark();
        h.update(&data[..50]);
        h.release(0);
        h.mark();
        h.update(&[0; 50]); // corrupted
        h.mark();
        h.update(&data[100..]); // the next chunk, hashed before the verdict on the one before
        assert!(!h.rollback(0), "a released mark is gone");
        assert!(h.rollback(50));
        assert_eq!(h.position(), 50);
        assert!(!h.rollback(100), "rolling back drops the marks after it");
        h.mark();
        h.update(&data[50..]);
        assert_eq!(h.finish(), sha256(&data));
    }

    #[test]
    fn the_chunk_list_digest_binds_every_chunk_to_its_place() {
        let plan = crate::ChunkPlan::new(12 << 20, 5 << 20).unwrap();
        let list = [(0, [1; 32]), (1, [2; 32]), (2, [3; 32])];
        let d = ChunkListHasher::digest(&plan, &list).unwrap();
        let mut h = ChunkListHasher::new(&plan);
        for (_, sha) in &list {
            h.push(sha);
        }
        assert_eq!(h.finish(), Some(d));
        let swapped = [(0, [2; 32]), (1, [1; 32]), (2, [3; 32])];
        assert_ne!(ChunkListHasher::digest(&plan, &swapped), Some(d));
        assert_eq!(
            ChunkListHasher::digest(&plan, &list[..2]),
            None,
            "a chunk missing"
        );
        assert_eq!(
            ChunkListHasher::digest(&plan, &[list[0], list[2], list[1]]),
            None
        );
        let other = crate::ChunkPlan::new((12 << 20) - 1, 5 << 20).unwrap();
        assert_ne!(
            ChunkListHasher::digest(&other, &list),
            Some(d),
            "the size counts"
        );
    }

    #[test]
    fn bytes_from_disk_continue_the_hash() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut h = OrderedFileHasher::new();
        h.update(&data[..30]);
        h.update(&data[30..]);
        assert_eq!(h.position(), 100);
        assert_eq!(h.finish(), sha256(&data));
    }
}
