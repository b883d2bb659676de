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

/// The whole-file SHA-256 on the receiving side, fed with bytes as they arrive as long as they arrive in file
/// order. Bytes of a chunk count only once the chunk verified: a chunk that fails rolls the hash back to the
/// chunk's start. Whatever could not be fed in order (after a resume or a re-sent chunk) the driver reads back
/// from disk from [`OrderedFileHasher::position`] at the end.
#[derive(Debug, Default)]
pub struct OrderedFileHasher {
    hasher: Hasher,
    position: u64,
    checkpoint: Option<(u64, Hasher)>,
}

impl OrderedFileHasher {
    pub fn new() -> Self {
        Self::default()
    }

    /// File offset up to which bytes have been hashed.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// A chunk starting at `offset` begins to arrive.
    pub fn begin_chunk(&mut self, offset: u64) {
        self.checkpoint = (offset == self.position).then(|| (self.position, self.hasher.clone()));
    }

    /// Bytes at `offset` arrived; hashed only when they continue the hashed prefix.
    pub fn update(&mut self, offset: u64, data: &[u8]) {
        if offset == self.position && self.checkpoint.is_some() {
            self.hasher.update(data);
            self.position += data.len() as u64;
        }
    }

    /// Bytes read back from disk at the hashed position (resume, or the tail at the end).
    pub fn update_from_disk(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.position += data.len() as u64;
    }

    /// The current chunk verified: keep what it contributed.
    pub fn chunk_verified(&mut self) {
        self.checkpoint = None;
    }

    /// The current chunk failed: forget what it contributed.
    pub fn chunk_failed(&mut self) {
        if let Some((pos, h)) = self.checkpoint.take() {
            self.position = pos;
            self.hasher = h;
        }
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
        let data: Vec<u8> = (0..100u8).collect();
        let mut h = OrderedFileHasher::new();
        h.begin_chunk(0);
        h.update(0, &data[..50]);
        h.chunk_verified();
        h.begin_chunk(50);
        h.update(50, &[0; 50]); // corrupted
        h.chunk_failed();
        assert_eq!(h.position(), 50);
        h.begin_chunk(50);
        h.update(50, &data[50..]);
        h.chunk_verified();
        assert_eq!(h.finish(), sha256(&data));
    }

    #[test]
    fn out_of_order_bytes_wait_for_disk() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut h = OrderedFileHasher::new();
        h.begin_chunk(50);
        h.update(50, &data[50..]);
        h.chunk_verified();
        assert_eq!(h.position(), 0);
        h.update_from_disk(&data);
        assert_eq!(h.finish(), sha256(&data));
    }
}
