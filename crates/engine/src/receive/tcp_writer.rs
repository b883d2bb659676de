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

use super::verify::{hash_from_disk, FileClaim, HashOp, Verifier, WriterEvent, WriterJob};
use crate::error::{store_reply, ErrorReply};
use crate::pool::{BufPool, PooledBuf, SharedBytes};
use crate::threads;

/// Pieces queued between the connection's task and the writer: bounds receiver memory to a few MiB per transfer.
pub(crate) const TCP_WRITER_QUEUE: usize = 8;

/// What the connection's task asks of the writer, in the order the frames came.
#[derive(Debug)]
pub(crate) enum TcpOp {
    Begin {
        index: u32,
        offset: u64,
    },
    /// A chunk whose first `from` bytes are on disk already (`ChunkResume`).
    Resume {
        index: u32,
        offset: u64,
        from: u64,
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
    /// Every chunk verified: check the whole file against what the sender announced.
    Finish(FileClaim),
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
    index: u32,
    offset: u64,
    /// Bytes of it written (or on disk from an earlier connection).
    written: u64,
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
    if job.whole_file_hash {
        hash_from_disk(&job.part, &mut hasher, prefix_end)?;
    }
    let mut w = TcpWriter {
        v: job.start(hasher)?,
        decompressor: PieceDecompressor::new().map_err(|e| (ErrorCode::Internal, e.to_string()))?,
        aligned_pool: BufPool::new(DATA_PIECE + DIRECT_IO_ALIGN),
        unpacked: Vec::with_capacity(DATA_PIECE),
        current: None,
    };
    while let Some(op) = ops.blocking_recv() {
        match op {
            TcpOp::Begin { index, offset } => w.begin(index, offset)?,
            TcpOp::Resume {
                index,
                offset,
                from,
            } => w.resume(index, offset, from)?,
            TcpOp::Data {
                offset,
                raw_len,
                compressed,
                body,
            } => w.write(offset, raw_len, compressed, body)?,
            TcpOp::End { index, expected } => w.end(index, expected)?,
            TcpOp::Finish(claim) => return w.v.finish(claim),
        }
    }
    w.v.close()
}

impl TcpWriter {
    fn begin(&mut self, index: u32, offset: u64) -> Result<(), ErrorReply> {
        let in_order = self.v.hash.is_on() && offset == self.v.hash.position();
        if in_order {
            self.v.hash.send(HashOp::Mark)?;
        }
        self.current = Some(Current {
            index,
            offset,
            written: 0,
            hasher: Hasher::new(),
            in_order,
        });
        Ok(())
    }

    /// A chunk resumed at byte `from`: what is before is read back from disk into its hashes.
    fn resume(&mut self, index: u32, offset: u64, from: u64) -> Result<(), ErrorReply> {
        self.begin(index, offset)?;
        let mut buf = vec![0u8; DATA_PIECE];
        let mut done = 0u64;
        while done < from {
            let n = (from - done).min(DATA_PIECE as u64) as usize;
            self.v
                .part
                .read_at(offset + done, &mut buf[..n])
                .map_err(store_reply)?;
            self.take(&buf[..n], None)?;
            done += n as u64;
        }
        Ok(())
    }

    /// Bytes of the current chunk, in order, into its hash and (in order) the whole-file hash: `shared` when
    /// they are already in an aligned pooled buffer, else copied into one.
    fn take(&mut self, bytes: &[u8], shared: Option<SharedBytes>) -> Result<(), ErrorReply> {
        let Some(c) = self.current.as_mut() else {
            return Ok(());
        };
        c.hasher.update(bytes);
        c.written += bytes.len() as u64;
        if c.in_order {
            let b = shared.unwrap_or_else(|| self.aligned_pool.aligned_copy(bytes, 1));
            self.v.hash.send(HashOp::Bytes(b))?;
        }
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
        let piece = bytes.clone();
        self.take(&piece, Some(bytes))?;
        match &self.current {
            Some(c) => self.v.progress(c.index, c.written),
            None => Ok(()),
        }
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
            self.v.failed(index)
        }
    }
}
