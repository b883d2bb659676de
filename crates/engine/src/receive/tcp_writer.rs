//! The receiver's writer for the TCP data path: one thread per transfer that decompresses each piece, writes it at
//! its offset (around the page cache), hashes the chunk and, in file order, the whole file, and hands verified
//! chunks to the committer. The connection's task has already checked every frame against the conversation
//! (`RecvSession`); this thread only carries out what it was told.

use tokio::sync::mpsc;
use trackshift_proto::compress::PieceDecompressor;
use trackshift_proto::frame::{DATA_BODY_OFFSET, DATA_PIECE};
use trackshift_proto::hashing::{Hasher, OrderedFileHasher};
use trackshift_proto::ErrorCode;
use trackshift_storage::DIRECT_IO_ALIGN;

use super::verify::{hash_from_disk, HashOp, Verifier, WriterEvent, WriterJob};
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

/// The writer's working parts.
struct TcpWriter {
    v: Verifier,
    decompressor: PieceDecompressor,
    aligned_pool: BufPool,
    unpacked: Vec<u8>,
    current: Option<Current>,
}

fn run(job: WriterJob, mut ops: mpsc::Receiver<TcpOp>) -> Result<(), ErrorReply> {
    // Hash the prefix verified in earlier runs now, while the sender re-reads its side of it.
    let mut hasher = OrderedFileHasher::new();
    let plan = job.plan;
    let prefix = job.verified.done_prefix();
    let prefix_end = if prefix == plan.chunk_count() {
        plan.file_size()
    } else {
        plan.offset(prefix)
    };
    hash_from_disk(&job.part, &mut hasher, prefix_end)?;
    let mut w = TcpWriter {
        v: job.start(hasher)?,
        decompressor: PieceDecompressor::new().map_err(|e| (ErrorCode::Internal, e.to_string()))?,
        aligned_pool: BufPool::new(DATA_PIECE + DIRECT_IO_ALIGN),
        unpacked: Vec::with_capacity(DATA_PIECE),
        current: None,
    };
    while let Some(op) = ops.blocking_recv() {
        match op {
            TcpOp::Begin { offset } => w.begin(offset)?,
            TcpOp::Data {
                offset,
                raw_len,
                compressed,
                body,
            } => w.write(offset, raw_len, compressed, body)?,
            TcpOp::End { index, expected } => w.end(index, expected)?,
            TcpOp::Finish { expected } => return w.v.finish(expected),
        }
    }
    w.v.close()
}

impl TcpWriter {
    fn begin(&mut self, offset: u64) -> Result<(), ErrorReply> {
        let in_order = offset == self.v.hash.position();
        if in_order {
            self.v.hash.send(HashOp::Mark)?;
        }
        self.current = Some(Current {
            offset,
            hasher: Hasher::new(),
            in_order,
        });
        Ok(())
    }

    /// One copy into a page-aligned buffer lets the write go around the page cache (direct I/O), which costs
    /// far less than the page cache's own copy; see `PartialFile::write_at`.
    fn write(
        &mut self,
        offset: u64,
        raw_len: u32,
        compressed: bool,
        body: PooledBuf,
    ) -> Result<(), ErrorReply> {
        let piece = &body[DATA_BODY_OFFSET..];
        let bytes = if compressed {
            self.decompressor
                .decompress(piece, raw_len as usize, &mut self.unpacked)
                .map_err(|e| (ErrorCode::Protocol, e.to_string()))?;
            self.aligned_pool
                .aligned_copy(&self.unpacked, DIRECT_IO_ALIGN)
        } else {
            self.aligned_pool.aligned_copy(piece, DIRECT_IO_ALIGN)
        };
        drop(body);
        self.v.part.write_at(offset, &bytes).map_err(store_reply)?;
        if let Some(c) = self.current.as_mut() {
            c.hasher.update(&bytes);
            if c.in_order {
                self.v.hash.send(HashOp::Bytes(bytes))?;
            }
        }
        Ok(())
    }

    /// The chunk is complete: commit it if it matches `expected`, else take back its part of the whole-file hash
    /// and have it sent again.
    fn end(&mut self, index: u32, expected: [u8; 32]) -> Result<(), ErrorReply> {
        let Some(c) = self.current.take() else {
            return Ok(());
        };
        let actual = c.hasher.finish();
        let ok = actual == expected;
        match (ok, c.in_order) {
            (true, true) => self.v.hash.send(HashOp::Release(c.offset))?,
            (false, true) => self.v.hash.send(HashOp::Rollback(c.offset))?,
            _ => {}
        }
        if ok {
            self.v.commit(index, actual)
        } else {
            self.v.failed(index);
            Ok(())
        }
    }
}
