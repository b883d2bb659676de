//! The receiver's writer for the DCSP data path: one thread per transfer that writes complete blocks at their
//! offsets (around the page cache when aligned), hashes the file in order as blocks arrive (chunk hashes here;
//! for a sender older than protocol version 3 also the whole-file hash, on its thread), verifies each chunk
//! against the hash the sender announced, and finishes the file when the conversation says every chunk
//! verified.
//!
//! Blocks mostly arrive in file order, so hashing follows one cursor through the file. A block ahead of the
//! cursor waits in memory (at most [`MAX_HELD`] bytes), or only on disk beyond that and is read back when the
//! cursor reaches it. A chunk that fails its hash is forgotten (the plane threads drop its blocks, the sender
//! sends it again) and the cursor and the whole-file hash go back to the chunk's start.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{self as std_mpsc, RecvTimeoutError};
use std::time::Duration;

use trackshift_dcsp::stream_conn_id;
use trackshift_proto::frame::DATA_PIECE;
use trackshift_proto::hashing::{Hasher, OrderedFileHasher};
use trackshift_proto::{ChunkPlan, ErrorCode};
use trackshift_storage::WriteStage;

use super::dcsp_plane::UdpPlane;
use super::verify::{FileClaim, HashOp, Verifier, WriterEvent, WriterJob};
use crate::error::{store_reply, ErrorReply};
use crate::pool::{BufPool, SharedBytes, SpareBufs};
use crate::threads;

/// Most bytes of blocks ahead of the hashing cursor kept in memory.
pub(crate) const MAX_HELD: usize = 32 * 1024 * 1024;
/// Largest block the read-back pool is sized for: 128 shards of 16 KiB (see `BlockGeometry`).
const MAX_BLOCK: usize = 2 * 1024 * 1024;
/// Complete blocks queued between the plane threads and a session's writer (each at most a few hundred KiB).
const BLOCK_QUEUE: usize = 32;
/// How often the writer looks up from an empty queue (it has nothing to do on a timeout; this only bounds how
/// long a stuck peer keeps it parked in one call).
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// What a DCSP writer is told.
#[derive(Debug)]
pub(crate) enum DcspWriterMsg {
    /// A complete block, from a plane thread.
    Block {
        chunk: u32,
        offset: u64,
        data: Vec<u8>,
    },
    /// From the conversation: the expected hash of a chunk.
    ChunkHash(u32, [u8; 32]),
    /// From the conversation: every chunk verified; check the whole file against what the sender announced.
    Finish(FileClaim),
}

/// The writer's queue: the plane threads and the connection's task both send to it.
pub(crate) fn writer_channel() -> (
    std_mpsc::SyncSender<DcspWriterMsg>,
    std_mpsc::Receiver<DcspWriterMsg>,
) {
    std_mpsc::sync_channel(BLOCK_QUEUE)
}

/// Where a DCSP transfer's blocks come from, so a failed chunk can be forgotten there too.
#[derive(Debug)]
pub(crate) struct DcspFeed {
    pub(crate) plane: UdpPlane,
    /// The first stream's connection id; the transfer uses `streams` consecutive ones.
    pub(crate) conn_id: u64,
    pub(crate) streams: u8,
    /// Where the writer hands block buffers back to the plane thread, for reuse.
    pub(crate) spare: SpareBufs,
}

impl DcspFeed {
    fn reset_chunk(&self, chunk: u32) {
        for s in 0..self.streams.max(1) {
            self.plane
                .reset_chunk(stream_conn_id(self.conn_id, s), chunk);
        }
    }
}

pub(crate) fn spawn(
    job: WriterJob,
    feed: DcspFeed,
    msgs: std_mpsc::Receiver<DcspWriterMsg>,
) -> Result<std::thread::JoinHandle<()>, String> {
    threads::spawn("dcsp-write", move || {
        let events = job.events.clone();
        if let Err((code, message)) = run(job, feed, msgs) {
            let _ = events.send(WriterEvent::Fatal { code, message });
        }
    })
}

/// The ordered-hashing state of one transfer.
struct Cursor {
    plan: ChunkPlan,
    /// Next file offset to hash.
    at: u64,
    /// The hash of the chunk the cursor is in.
    chunk: Option<(u32, Hasher)>,
    /// Blocks ahead of the cursor, in memory.
    held: BTreeMap<u64, SharedBytes>,
    held_bytes: usize,
    /// Blocks ahead of the cursor, on disk only (offset → length).
    spilled: BTreeMap<u64, u32>,
    /// Chunks hashed whole, waiting for the sender's hash.
    hashed: HashMap<u32, [u8; 32]>,
    expected: HashMap<u32, [u8; 32]>,
}

impl Cursor {
    fn chunk_of(&self, offset: u64) -> u32 {
        (offset / self.plan.chunk_size()) as u32
    }

    fn chunk_end(&self, c: u32) -> u64 {
        self.plan.offset(c) + self.plan.len(c)
    }
}

/// The writer's working parts.
struct Writer {
    cur: Cursor,
    v: Verifier,
    stage: WriteStage,
    pool: BufPool,
    scratch: Vec<u8>,
}

fn run(
    job: WriterJob,
    feed: DcspFeed,
    msgs: std_mpsc::Receiver<DcspWriterMsg>,
) -> Result<(), ErrorReply> {
    let plan = job.plan;
    let mut w = Writer {
        v: job.start(OrderedFileHasher::new())?,
        cur: Cursor {
            plan,
            at: 0,
            chunk: None,
            held: BTreeMap::new(),
            held_bytes: 0,
            spilled: BTreeMap::new(),
            hashed: HashMap::new(),
            expected: HashMap::new(),
        },
        stage: WriteStage::new(),
        pool: BufPool::new(MAX_BLOCK + 1),
        scratch: vec![0u8; DATA_PIECE],
    };
    w.skip_verified()?;
    loop {
        let msg = match msgs.recv_timeout(IDLE_WAKE) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut done_chunks = Vec::new();
        match msg {
            DcspWriterMsg::Block {
                chunk,
                offset,
                data,
            } => w.take_block(chunk, offset, data, &feed.spare)?,
            DcspWriterMsg::ChunkHash(index, sha) => {
                w.cur.expected.insert(index, sha);
                done_chunks.push(index);
            }
            DcspWriterMsg::Finish(expected) => {
                w.stage.flush(&w.v.part).map_err(store_reply)?;
                return w.v.finish(expected);
            }
        }
        w.hash_in_order(&mut done_chunks)?;
        for c in done_chunks {
            w.judge(c, &feed)?;
        }
        w.record_progress()?;
    }
    w.stage.flush(&w.v.part).map_err(store_reply)?;
    w.v.close()
}

impl Writer {
    /// Blocks wait in memory until the cursor reaches them and are written then, in file order, through the
    /// stage (large aligned writes around the page cache). Beyond `MAX_HELD` they are written at once and read
    /// back later.
    fn take_block(
        &mut self,
        chunk: u32,
        offset: u64,
        data: Vec<u8>,
        spare: &SpareBufs,
    ) -> Result<(), ErrorReply> {
        let cur = &mut self.cur;
        if self.v.verified.get(chunk) || !cur.plan.contains(chunk) || offset < cur.at {
            return Ok(());
        }
        if cur.held_bytes + data.len() <= MAX_HELD || offset == cur.at {
            cur.held_bytes += data.len();
            cur.held.insert(offset, BufPool::adopt(data, spare));
        } else {
            self.v.part.write_at(offset, &data).map_err(store_reply)?;
            cur.spilled.insert(offset, data.len() as u32);
        }
        Ok(())
    }

    /// Every [`super::verify::PROGRESS_EVERY`]: how far the chunk at the cursor got, written and (by the commit
    /// thread) synced before it is recorded.
    fn record_progress(&mut self) -> Result<(), ErrorReply> {
        let Some((c, _)) = self.cur.chunk.as_ref() else {
            return Ok(());
        };
        let c = *c;
        if !self.v.progress_due() {
            return Ok(());
        }
        self.stage.flush(&self.v.part).map_err(store_reply)?;
        let bytes = self.cur.at - self.cur.plan.offset(c);
        self.v.progress(c, bytes)
    }

    /// A chunk at the cursor whose first bytes the sender does not send again (they were on disk from an earlier
    /// connection): they are read back into its hash and the whole-file hash.
    fn resume_prefix(&mut self) -> Result<(), ErrorReply> {
        let c = self.cur.chunk_of(self.cur.at);
        if self.cur.chunk.is_some() || self.cur.at != self.cur.plan.offset(c) {
            return Ok(());
        }
        let Some(restart) = self.v.resume.remove(&c) else {
            return Ok(());
        };
        self.v.hash.send(HashOp::Mark)?;
        let mut hasher = Hasher::new();
        let end = self.cur.at + restart;
        while self.cur.at < end {
            let n = (end - self.cur.at).min(self.scratch.len() as u64) as usize;
            self.v
                .part
                .read_at(self.cur.at, &mut self.scratch[..n])
                .map_err(store_reply)?;
            hasher.update(&self.scratch[..n]);
            if self.v.hash.is_on() {
                let copy = self.pool.aligned_copy(&self.scratch[..n], 1);
                self.v.hash.send(HashOp::Bytes(copy))?;
            }
            self.cur.at += n as u64;
        }
        self.cur.chunk = Some((c, hasher));
        Ok(())
    }

    /// Hashes what is now in order at the cursor; chunks hashed whole are added to `done`.
    fn hash_in_order(&mut self, done: &mut Vec<u32>) -> Result<(), ErrorReply> {
        loop {
            self.skip_verified()?;
            if self.cur.at < self.cur.plan.file_size() {
                self.resume_prefix()?;
            }
            if self.cur.at >= self.cur.plan.file_size() {
                return Ok(());
            }
            let Some(bytes) = self.next_in_order()? else {
                return Ok(());
            };
            let c = self.cur.chunk_of(self.cur.at);
            if self.cur.chunk.is_none() {
                self.v.hash.send(HashOp::Mark)?;
                self.cur.chunk = Some((c, Hasher::new()));
            }
            if let Some((_, h)) = self.cur.chunk.as_mut() {
                h.update(&bytes);
            }
            self.cur.at += bytes.len() as u64;
            self.v.hash.send(HashOp::Bytes(bytes))?;
            if self.cur.at >= self.cur.chunk_end(c) {
                if let Some((c, h)) = self.cur.chunk.take() {
                    self.cur.hashed.insert(c, h.finish());
                    done.push(c);
                }
            }
        }
    }

    /// The block at the cursor, from memory (written through the stage now) or read back from disk.
    fn next_in_order(&mut self) -> Result<Option<SharedBytes>, ErrorReply> {
        let at = self.cur.at;
        if let Some(b) = self.cur.held.remove(&at) {
            self.cur.held_bytes -= b.len();
            self.stage
                .write(&self.v.part, at, &b)
                .map_err(store_reply)?;
            return Ok(Some(b));
        }
        let Some(len) = self.cur.spilled.remove(&at) else {
            return Ok(None);
        };
        // Already on disk.
        self.stage.flush(&self.v.part).map_err(store_reply)?;
        let mut whole = vec![0u8; len as usize];
        self.v.part.read_at(at, &mut whole).map_err(store_reply)?;
        Ok(Some(self.pool.aligned_copy(&whole, 1)))
    }

    /// Chunk `c` is hashed whole and its expected hash known: commit it, or forget it and ask for it again.
    fn judge(&mut self, c: u32, feed: &DcspFeed) -> Result<(), ErrorReply> {
        let (Some(&got), Some(&want)) = (self.cur.hashed.get(&c), self.cur.expected.get(&c)) else {
            return Ok(());
        };
        // A verified chunk must be on disk before it is committed; a failed one is read back by rollback.
        self.stage.flush(&self.v.part).map_err(store_reply)?;
        self.cur.hashed.remove(&c);
        self.cur.expected.remove(&c);
        let start = self.cur.plan.offset(c);
        if got == want {
            self.v.hash.send(HashOp::Release(start))?;
            return self.v.commit(c, got);
        }
        self.rollback(c)?;
        feed.reset_chunk(c);
        self.v.failed(c)
    }

    /// Feeds the whole-file hash with chunks verified earlier (an earlier run, or before an earlier chunk failed)
    /// that sit at the cursor, read back from disk, and moves the cursor past them.
    fn skip_verified(&mut self) -> Result<(), ErrorReply> {
        let cur = &mut self.cur;
        while cur.at < cur.plan.file_size() && cur.chunk.is_none() {
            let c = cur.chunk_of(cur.at);
            if !self.v.verified.get(c) || cur.at != cur.plan.offset(c) {
                break;
            }
            let end = cur.chunk_end(c);
            if !self.v.hash.is_on() {
                cur.at = end;
                continue;
            }
            while cur.at < end {
                let n = (end - cur.at).min(self.scratch.len() as u64) as usize;
                self.v
                    .part
                    .read_at(cur.at, &mut self.scratch[..n])
                    .map_err(store_reply)?;
                self.v
                    .hash
                    .send(HashOp::Bytes(self.pool.aligned_copy(&self.scratch[..n], 1)))?;
                cur.at += n as u64;
            }
        }
        Ok(())
    }

    /// Chunk `c` failed: the cursor and the whole-file hash go back to its start; what later chunks had hashed is
    /// hashed again from disk when the cursor passes it again.
    fn rollback(&mut self, c: u32) -> Result<(), ErrorReply> {
        let cur = &mut self.cur;
        let start = cur.plan.offset(c);
        let mut off = cur.chunk_end(c);
        while off < cur.at {
            let len = (cur.at - off).min(DATA_PIECE as u64);
            cur.spilled.insert(off, len as u32);
            off += len;
        }
        for later in c + 1..=cur.chunk_of(cur.at.saturating_sub(1)).max(c) {
            cur.hashed.remove(&later);
        }
        cur.hashed.remove(&c);
        cur.chunk = None;
        cur.at = start;
        if self.v.hash.position() < start {
            return Err((
                ErrorCode::Internal,
                format!("rolling back chunk {c} ahead of the whole-file hash"),
            ));
        }
        self.v.hash.send(HashOp::Rollback(start))
    }
}
