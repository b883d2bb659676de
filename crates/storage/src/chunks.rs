//! The seams between a transfer and its bytes: a [`ChunkSource`] the sender reads chunks from and a
//! [`ChunkSink`] the receiver writes them into. The local implementations are [`FileSource`](crate::FileSource)
//! and [`PartialFile`](crate::PartialFile); a folder or an S3 object will plug in behind the same traits.
//!
//! Both are positional (every call names its offset) and take `&self`, so one source or sink can serve several
//! threads at once (a reader thread, a hashing thread, a re-read for a resend).

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

/// Where a receiver puts chunks: a destination of fixed size, written at any offset, read back to verify,
/// and made durable before a chunk counts as verified.
pub trait ChunkSink: Send + Sync + fmt::Debug {
    /// Writes all of `data` at `offset`.
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), StorageError>;

    /// Fills all of `buf` with the bytes at `offset`; reading past the end is an error.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError>;

    /// Everything written so far is durable when this returns (`fdatasync` for a local file).
    fn sync_data(&self) -> Result<(), StorageError>;
}
