//! The seams between a transfer and its bytes: a [`ChunkSource`] the sender reads chunks from. The local
//! implementation is [`FileSource`](crate::FileSource); a folder or an S3 object will plug in behind the trait.
//!
//! It is positional (every call names its offset) and takes `&self`, so one source can serve several threads
//! at once (a reader thread, a hashing thread, a re-read for a resend).

use std::fmt;

use crate::StorageError;

/// Bytes a sender cuts into chunks: a source of fixed size, read at any offset.
pub trait ChunkSource: Send + Sync + fmt::Debug {
    /// Size in bytes, fixed when the source was opened.
    fn size(&self) -> u64;

    /// Fills all of `buf` with the bytes at `offset`; reading past the end is an error.
    ///
    /// A failed read of a local source is the user's input failing ([`StorageError::is_bad_input`]), not a
    /// local storage problem.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError>;
}
