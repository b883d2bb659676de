//! The receiver's writer for the TCP data path: one thread per transfer that decompresses each piece, writes it at
//! its offset (around the page cache), hashes the chunk and, in file order, the whole file, and hands verified
//! chunks to the committer. The connection's task has already checked every frame against the conversation
//! (`RecvSession`); this thread only carries out what it was told.

use std::sync::Arc;

use tokio::sync::mpsc;
use trackshift_proto::compress::PieceDecompressor;
use trackshift_proto::frame::{DATA_BODY_OFFSET, DATA_PIECE};
use trackshift_proto::hashing::{Hasher, OrderedFileHasher};
use trackshift_proto::{ChunkMap, ChunkPlan, ErrorCode};
use trackshift_storage::{PartialFile, SessionStore, DIRECT_IO_ALIGN};

use super::verify::{
    finish_file, hash_from_disk, Committer, Destination, HashOp, HashThread, WriterEvent,
    WriterEvents,
};
use crate::error::{store_reply, ErrorReply};
use crate::pool::{BufPool, PooledBuf};
use crate::threads;

/// Pieces queued between the connection's task and the writer: bounds receiver memory to a few MiB per transfer.
pub(crate) const TCP_WRITER_QUEUE: usize = 8;

/// What the connection's task asks of the writer, in the order the frames came.
#[derive(Debug)]
pub(crate) enum TcpOp {
    Begin {
        offset: u64,
    },
    /// A `Data` frame's body (the piece starts at `DATA_BODY_OFFSET`), for file offset `offset`.
    Data {
        offset: u64,
        raw_len: u32,
        compressed: bool,
        body: PooledBuf,
    },
    End {
        index: u32,
        expected: [u8; 32],
    },
    Finish {
        expected: [u8; 32],
    },
}

/// What a writer needs for one transfer (both data paths).
#[derive(Debug)]
pub(crate) struct WriterJob {
    pub(crate) plan: ChunkPlan,
    pub(crate) part: PartialFile,
    /// Chunks verified before this connection.
    pub(crate) verified: ChunkMap,
    pub(crate) dest: Destination,
    pub(crate) store: Arc<SessionStore>,
    pub(crate) events: WriterEvents,
}

pub(crate) fn spawn(
    job: WriterJob,
    ops: mpsc::Receiver<TcpOp>,
) -> Result<std::thread::JoinHandle<()>, String> {
    threads::spawn("tcp-write", move || {
        let events = job.events.clone();
        if let Err((code, message)) = run(job, ops) {
            let _ = events.send(WriterEvent::Fatal { code, message });
        }
    })
}

/// The chunk being written.
#[derive(Debug)]
struct Current {
    offset: u64,
    hasher: Hasher,
    /// It continues the whole-file hash (else it is read back from disk at the end).
    in_order: bool,
}

fn run(job: WriterJob, mut ops: mpsc::Receiver<TcpOp>) -> Result<(), ErrorReply> {
    let WriterJob {
        plan,
        part,
        verified,
        dest,
        store,
        events,
    } = job;
    let part = Arc::new(part);
    let mut committer = Committer::start(part.clone(), store.clone(), dest.id, events.clone())?;
    // Hash the prefix verified in earlier runs now, while the sender re-reads its side of it.
    let mut hasher = OrderedFileHasher::new();
    let prefix = verified.done_prefix();
    let prefix_end = if prefix == plan.chunk_count() {
        plan.file_size()
    } else {
        plan.offset(prefix)
    };
    hash_from_disk(&*part, &mut hasher, prefix_end)?;
    let mut hash = HashThread::start(hasher)?;
    let mut decompressor =
        PieceDecompressor::new().map_err(|e| (ErrorCode::Internal, e.to_string()))?;
    let aligned_pool = BufPool::new(DATA_PIECE + DIRECT_IO_ALIGN);
    let mut unpacked = Vec::with_capacity(DATA_PIECE);
    let mut current: Option<Current> = None;
    while let Some(op) = ops.blocking_recv() {
        match op {
            TcpOp::Begin { offset } => {
                let in_order = offset == hash.position();
                if in_order {
                    hash.send(HashOp::Mark)?;
                }
                current = Some(Current {
                    offset,
                    hasher: Hasher::new(),
                    in_order,
                });
            }
            TcpOp::Data {
                offset,
                raw_len,
                compressed,
                body,
            } => {
                // One copy into a page-aligned buffer lets the write go around the page cache (direct I/O),
                // which costs far less than the page cache's own copy; see `PartialFile::write_at`.
                let piece = &body[DATA_BODY_OFFSET..];
                let bytes = if compressed {
                    decompressor
                        .decompress(piece, raw_len as usize, &mut unpacked)
                        .map_err(|e| (ErrorCode::Protocol, e.to_string()))?;
                    aligned_pool.aligned_copy(&unpacked, DIRECT_IO_ALIGN)
                } else {
                    aligned_pool.aligned_copy(piece, DIRECT_IO_ALIGN)
                };
                drop(body);
                part.write_at(offset, &bytes).map_err(store_reply)?;
                if let Some(c) = current.as_mut() {
                    c.hasher.update(&bytes);
                    if c.in_order {
                        hash.send(HashOp::Bytes(bytes))?;
                    }
                }
            }
            TcpOp::End { index, expected } => {
                let Some(c) = current.take() else { continue };
                let actual = c.hasher.finish();
                if actual == expected {
                    if c.in_order {
                        hash.send(HashOp::Release(c.offset))?;
                    }
                    committer.commit(index, actual, plan.len(index))?;
                } else {
                    tracing::warn!(
                        "chunk {index} of session {} failed verification; asking for it again",
                        dest.id
                    );
                    if c.in_order {
                        hash.send(HashOp::Rollback(c.offset))?;
                    }
                    let _ = events.send(WriterEvent::ChunkDone {
                        index,
                        ok: false,
                        len: plan.len(index),
                    });
                }
            }
            TcpOp::Finish { expected } => {
                return finish_file(committer, hash, part, expected, &store, &dest, &events);
            }
        }
    }
    committer.finish()
}
