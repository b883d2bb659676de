//! SHA-256 of chunks and of the whole file, computed while the bytes stream by.
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
    fn bytes_from_disk_continue_the_hash() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut h = OrderedFileHasher::new();
        h.update(&data[..30]);
        h.update(&data[30..]);
        assert_eq!(h.position(), 100);
        assert_eq!(h.finish(), sha256(&data));
    }
}
