//! A `Data` frame's zstd payload (TCP path, `compressed = 1`) from a hostile sender: the receiver decompresses
//! it into a buffer of the declared `raw_len` (at most 1 MiB, what `Frame::decode` lets through) and takes it
//! only if it yields exactly that many bytes; a decompression bomb never gets more room. Whatever the
//! compressor makes of a piece decompresses back to the same bytes. Covers `PieceDecompressor::decompress`.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use trackshift_proto::compress::{PieceCompressor, PieceDecompressor};
use trackshift_proto::frame::DATA_PIECE;

#[derive(Arbitrary, Debug)]
struct Input {
    raw_len: u32,
    payload: Vec<u8>,
    /// A piece to compress and decompress (repeated to make it compressible).
    piece: Vec<u8>,
    repeat: u8,
}

fuzz_target!(|input: Input| {
    let raw_len = input.raw_len as usize % (DATA_PIECE + 1);
    let mut d = PieceDecompressor::new().expect("decompressor");
    let mut out = Vec::new();
    if d.decompress(&input.payload, raw_len, &mut out).is_ok() {
        assert_eq!(out.len(), raw_len);
    }
    assert!(
        out.capacity() <= DATA_PIECE.max(raw_len) * 2,
        "the piece's buffer grew to {}",
        out.capacity()
    );
    let piece = input.piece.repeat(usize::from(input.repeat % 64) + 1);
    let piece = &piece[..piece.len().min(DATA_PIECE)];
    let mut c = PieceCompressor::new().expect("compressor");
    if let Some(packed) = c.compress(piece) {
        let packed = packed.to_vec();
        assert!(packed.len() < piece.len());
        d.decompress(&packed, piece.len(), &mut out)
            .expect("own output decompresses");
        assert_eq!(out, piece);
        // Announced one byte short or long, the same payload is refused.
        assert!(d.decompress(&packed, piece.len() - 1, &mut out).is_err());
        assert!(d.decompress(&packed, piece.len() + 1, &mut out).is_err());
    }
});
