//! Per-chunk zstd compression, used only when it pays.

use crate::frame::DATA_PIECE;

/// How the sender treats chunk bytes (`--compress`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompressMode {
    /// Compress a chunk only when a trial on its first piece shrinks it enough.
    Auto,
    /// Compress every piece that shrinks.
    Zstd,
    /// Never compress.
    None,
}

impl CompressMode {
    /// The name `--compress` and the session store use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Zstd => "zstd",
            Self::None => "none",
        }
    }

    /// The mode a stored name stands for (anything unknown is `Auto`).
    pub fn from_name(name: &str) -> Self {
        match name {
            "zstd" => Self::Zstd,
            "none" => Self::None,
            _ => Self::Auto,
        }
    }
}

/// zstd level: level 1 runs at several hundred MB/s per core, so compression rarely slows a transfer down.
pub const ZSTD_LEVEL: i32 = 1;
/// A trial must shrink the sample to at most this fraction of its size for `Auto` to compress the chunk;
/// below 10% savings the CPU is better spent sending.
const AUTO_MAX_RATIO: f64 = 0.9;
/// Bytes of a chunk's first piece compressed as a trial. Cheap (well under a millisecond) next to sending
/// a chunk of at least 5 MiB.
const AUTO_SAMPLE: usize = 128 * 1024;

/// A compression error (the peer sent a piece that does not decompress to what it claims).
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error("compressed piece does not decompress to its declared {expected} bytes")]
    BadPiece { expected: usize },
    #[error("zstd failed: {0}")]
    Zstd(#[from] std::io::Error),
}

/// A reusable zstd compression context and output buffer for the sender.
pub struct PieceCompressor {
    ctx: zstd::bulk::Compressor<'static>,
    out: Vec<u8>,
}

impl std::fmt::Debug for PieceCompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PieceCompressor").finish_non_exhaustive()
    }
}

impl PieceCompressor {
    pub fn new() -> Result<Self, CompressError> {
        Ok(Self {
            ctx: zstd::bulk::Compressor::new(ZSTD_LEVEL)?,
            out: Vec::with_capacity(zstd::zstd_safe::compress_bound(DATA_PIECE)),
        })
    }

    /// Whether a chunk whose first piece is `first_piece` should be compressed under `mode`.
    pub fn should_compress(&mut self, mode: CompressMode, first_piece: &[u8]) -> bool {
        match mode {
            CompressMode::None => false,
            CompressMode::Zstd => true,
            CompressMode::Auto => {
                let sample = &first_piece[..first_piece.len().min(AUTO_SAMPLE)];
                match self.compress(sample) {
                    Some(c) => (c.len() as f64) <= (sample.len() as f64) * AUTO_MAX_RATIO,
                    None => false,
                }
            }
        }
    }

    /// Compresses `raw`; returns the compressed bytes only if they are smaller.
    pub fn compress(&mut self, raw: &[u8]) -> Option<&[u8]> {
        self.out.clear();
        self.out.reserve(zstd::zstd_safe::compress_bound(raw.len()));
        match self.ctx.compress_to_buffer(raw, &mut self.out) {
            Ok(n) if n < raw.len() => Some(&self.out[..n]),
            _ => None,
        }
    }
}

/// A reusable zstd decompression context for the receiver.
pub struct PieceDecompressor {
    ctx: zstd::bulk::Decompressor<'static>,
}

impl std::fmt::Debug for PieceDecompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PieceDecompressor").finish_non_exhaustive()
    }
}

impl PieceDecompressor {
    pub fn new() -> Result<Self, CompressError> {
        Ok(Self {
            ctx: zstd::bulk::Decompressor::new()?,
        })
    }

    /// Decompresses `payload` into `out` (cleared first), which must come to exactly `raw_len` bytes
    /// (at most `DATA_PIECE`, checked by the frame decoder), so allocation stays bounded.
    pub fn decompress(
        &mut self,
        payload: &[u8],
        raw_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), CompressError> {
        out.clear();
        out.reserve(raw_len);
        // A frame claiming more than raw_len output fails here instead of allocating.
        let n = self
            .ctx
            .decompress_to_buffer(payload, out)
            .map_err(|_| CompressError::BadPiece { expected: raw_len })?;
        if n != raw_len {
            return Err(CompressError::BadPiece { expected: raw_len });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_skips_random_and_takes_text() {
        let mut c = PieceCompressor::new().unwrap();
        let random: Vec<u8> = (0..DATA_PIECE).map(|_| rand::random()).collect();
        let text = b"the quick brown fox jumps over the lazy dog ".repeat(20_000);
        assert!(!c.should_compress(CompressMode::Auto, &random));
        assert!(c.should_compress(CompressMode::Auto, &text));
        assert!(!c.should_compress(CompressMode::None, &text));
        assert!(c.should_compress(CompressMode::Zstd, &random));
    }

    #[test]
    fn round_trip_and_bounds() {
        let mut c = PieceCompressor::new().unwrap();
        let mut d = PieceDecompressor::new().unwrap();
        let text = b"abcabcabc".repeat(1000);
        let packed = c.compress(&text).unwrap().to_vec();
        let mut out = Vec::new();
        d.decompress(&packed, text.len(), &mut out).unwrap();
        assert_eq!(out, text);
        // Claiming fewer bytes than the payload expands to is refused.
        assert!(d.decompress(&packed, 10, &mut out).is_err());
        assert!(d.decompress(b"garbage", 10, &mut out).is_err());
    }
}
