//! The receiver's DCSP writer thread: writes complete blocks at their offsets (around the page cache when
//! aligned), hashes the file in order as blocks arrive (chunk hashes here, the whole-file hash on a thread of
//! its own), verifies each chunk against the hash the sender sent, and finishes the file.
//!
//! Blocks mostly arrive in file order, so hashing follows one cursor through the file. A block ahead of the
//! cursor waits in memory (at most [`MAX_HELD`] bytes), or only on disk beyond that and is read back when the
//! cursor reaches it. A chunk that fails its hash is forgotten (the plane thread drops its blocks, the sender
//! sends it again) and the whole-file hash rolls back to the chunk's start.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{self as std_mpsc, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use trackshift_proto::frame::DATA_PIECE;
use trackshift_proto::hashing::Hasher;
use trackshift_proto::{ChunkMap, ChunkPlan, ErrorCode};
use trackshift_storage::{PartialFile, SessionStore, StorageError, WriteStage};

use crate::dcsp_recv::{UdpWriterJob, WriterMsg};
use crate::pool::{BufPool, SharedBytes};
use crate::receive::{finish_file, storage_code, Committer, ErrorReply, WorkerEvent};

/// Most bytes of blocks ahead of the hashing cursor kept in memory.
pub const MAX_HELD: usize = 32 * 1024 * 1024;
/// Largest block the pool is sized for (128 shards of 16 KiB).
const MAX_BLOCK: usize = 2 * 1024 * 1024;

/// What the whole-file hashing thread is asked, always in file order.
enum FeedOp {
    Bytes(SharedBytes),
    /// Remember the hash state here (a chunk starts).
    Mark,
    /// Go back to the state remembered at this offset (the chunk starting there failed).
    Rollback(u64),
}

/// The whole-file SHA-256 on a thread of its own.
struct FileFeed {
    tx: Option<std_mpsc::SyncSender<FeedOp>>,
    handle: Option<std::thread::JoinHandle<(Hasher, u64)>>,
}

impl FileFeed {
    fn start() -> Result<Self, ErrorReply> {
        let (tx, rx) = std_mpsc::sync_channel::<FeedOp>(16);
        let handle = std::thread::Builder::new()
            .name("trackshift-filehash".into())
            .spawn(move || {
                let mut hasher = Hasher::new();
                let mut pos = 0u64;
                let mut marks: Vec<(u64, Hasher)> = Vec::new();
                for op in rx {
                    match op {
                        FeedOp::Bytes(b) => {
                            hasher.update(&b);
                            pos += b.len() as u64;
                        }
                        FeedOp::Mark => {
                            marks.retain(|(p, _)| *p != pos);
                            marks.push((pos, hasher.clone()));
                            if marks.len() > 256 {
                                marks.remove(0);
                            }
                        }
                        FeedOp::Rollback(to) => {
                            if let Some(i) = marks.iter().position(|(p, _)| *p == to) {
                                let (p, h) = marks[i].clone();
                                marks.truncate(i + 1);
                                pos = p;
                                hasher = h;
                            }
                        }
                    }
                }
                (hasher, pos)
            })
            .map_err(|e| {
                (
                    ErrorCode::Internal,
                    format!("cannot start the hashing thread: {e}"),
                )
            })?;
        Ok(Self {
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    fn send(&self, op: FeedOp) -> Result<(), ErrorReply> {
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(op).ok())
            .ok_or((ErrorCode::Internal, "the hashing thread stopped".into()))
    }

    fn finish(mut self) -> Result<(Hasher, u64), ErrorReply> {
        self.tx = None;
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .ok_or((ErrorCode::Internal, "the hashing thread panicked".into()))
    }
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

pub(crate) fn run_writer(
    job: UdpWriterJob,
    store: Arc<SessionStore>,
    msgs: std_mpsc::Receiver<WriterMsg>,
    events: &mpsc::UnboundedSender<WorkerEvent>,
) -> Result<(), ErrorReply> {
    let UdpWriterJob {
        id,
        conn_id,
        streams,
        plan,
        part,
        mut map,
        output_dir,
        name,
        plane,
        spare,
    } = job;
    let store_err = |e: StorageError| (storage_code(&e), e.to_string());
    let part = Arc::new(part);
    let mut committer = Committer::start(part.clone(), store.clone(), id, events.clone())?;
    let feed = FileFeed::start()?;
    let pool = BufPool::new(MAX_BLOCK + 1);
    let mut cur = Cursor {
        plan,
        at: 0,
        chunk: None,
        held: BTreeMap::new(),
        held_bytes: 0,
        spilled: BTreeMap::new(),
        hashed: HashMap::new(),
        expected: HashMap::new(),
    };
    let mut stage = WriteStage::new();
    let mut scratch = vec![0u8; DATA_PIECE];
    let mut file_sha: Option<[u8; 32]> = None;
    skip_verified(&mut cur, &map, &part, &feed, &pool, &mut scratch)?;
    loop {
        let msg = match msgs.recv_timeout(Duration::from_secs(1)) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let to_check = match msg {
            WriterMsg::Block {
                chunk,
                offset,
                data,
            } => {
                if map.get(chunk) || !plan.contains(chunk) || offset < cur.at {
                    continue;
                }
                // Blocks wait in memory until the cursor reaches them and are written then, in file order,
                // through the stage (large aligned writes around the page cache). Beyond MAX_HELD they are
                // written at once and read back later.
                if cur.held_bytes + data.len() <= MAX_HELD || offset == cur.at {
                    cur.held_bytes += data.len();
                    cur.held.insert(offset, BufPool::adopt(data, &spare));
                } else {
                    part.write_at(offset, &data).map_err(store_err)?;
                    cur.spilled.insert(offset, data.len() as u32);
                }
                None
            }
            WriterMsg::ChunkHash(index, sha) => {
                if !plan.contains(index) {
                    return Err((
                        ErrorCode::Protocol,
                        format!("hash for chunk {index}, which does not exist"),
                    ));
                }
                cur.expected.insert(index, sha);
                Some(index)
            }
            WriterMsg::FileEnd(sha) => {
                // The sender announces the end once every chunk went out; chunks may still be verifying.
                file_sha = Some(sha);
                None
            }
        };
        // Hash what is now in order.
        let mut done_chunks: Vec<u32> = to_check.into_iter().collect();
        loop {
            skip_verified(&mut cur, &map, &part, &feed, &pool, &mut scratch)?;
            if cur.at >= plan.file_size() {
                break;
            }
            let bytes = if let Some(b) = cur.held.remove(&cur.at) {
                cur.held_bytes -= b.len();
                stage.write(&part, cur.at, &b).map_err(store_err)?;
                b
            } else if let Some(len) = cur.spilled.remove(&cur.at) {
                // Already on disk.
                stage.flush(&part).map_err(store_err)?;
                let len = len as usize;
                part.read_at(cur.at, &mut scratch[..len.min(DATA_PIECE)])
                    .map_err(store_err)?;
                if len > DATA_PIECE {
                    // Blocks are at most 2 MiB; read the rest into a second piece.
                    let mut whole = scratch[..DATA_PIECE].to_vec();
                    whole.resize(len, 0);
                    part.read_at(cur.at + DATA_PIECE as u64, &mut whole[DATA_PIECE..])
                        .map_err(store_err)?;
                    pool.aligned_copy(&whole, 1)
                } else {
                    pool.aligned_copy(&scratch[..len], 1)
                }
            } else {
                break;
            };
            let c = cur.chunk_of(cur.at);
            if cur.chunk.is_none() {
                feed.send(FeedOp::Mark)?;
                cur.chunk = Some((c, Hasher::new()));
            }
            if let Some((_, h)) = cur.chunk.as_mut() {
                h.update(&bytes);
            }
            cur.at += bytes.len() as u64;
            feed.send(FeedOp::Bytes(bytes))?;
            if cur.at >= cur.chunk_end(c) {
                if let Some((c, h)) = cur.chunk.take() {
                    cur.hashed.insert(c, h.finish());
                    done_chunks.push(c);
                }
            }
        }
        for c in done_chunks {
            let (Some(got), Some(want)) = (cur.hashed.get(&c), cur.expected.get(&c)) else {
                continue;
            };
            // A verified chunk must be on disk before it is committed; a failed one is read back by rollback.
            stage.flush(&part).map_err(store_err)?;
            let (got, ok) = (*got, got == want);
            cur.hashed.remove(&c);
            cur.expected.remove(&c);
            if ok {
                map.insert(c);
                committer.commit(c, got, plan.len(c))?;
            } else {
                tracing::warn!(
                    "chunk {c} of session {id} failed verification; asking for it again"
                );
                rollback(&mut cur, c, &feed)?;
                for s in 0..streams.max(1) {
                    plane.reset_chunk(trackshift_dcsp::stream_conn_id(conn_id, s), c);
                }
                let _ = events.send(WorkerEvent::ChunkDone {
                    index: c,
                    ok: false,
                    len: plan.len(c),
                });
            }
        }
        if let Some(sha) = file_sha.filter(|_| map.is_complete()) {
            stage.flush(&part).map_err(store_err)?;
            return finish(
                committer,
                feed,
                part,
                plan,
                sha,
                &store,
                id,
                &output_dir,
                &name,
                events,
            );
        }
    }
    stage.flush(&part).map_err(store_err)?;
    committer.finish()
}

/// Every chunk verified and the sender's whole-file hash known: check it and put the file in place.
#[allow(clippy::too_many_arguments)]
fn finish(
    mut committer: Committer,
    feed: FileFeed,
    part: Arc<PartialFile>,
    plan: ChunkPlan,
    sha: [u8; 32],
    store: &SessionStore,
    id: trackshift_proto::SessionId,
    output_dir: &std::path::Path,
    name: &str,
    events: &mpsc::UnboundedSender<WorkerEvent>,
) -> Result<(), ErrorReply> {
    committer.finish()?;
    let (hasher, pos) = feed.finish()?;
    if pos != plan.file_size() {
        return Err((
            ErrorCode::Internal,
            format!("whole-file hash stopped at {pos} of {}", plan.file_size()),
        ));
    }
    let part = Arc::try_unwrap(part)
        .map_err(|_| (ErrorCode::Internal, "partial file still shared".to_owned()))?;
    finish_file(
        part,
        hasher.finish(),
        sha,
        store,
        id,
        output_dir,
        name,
        events,
    )
}

/// Feeds the whole-file hash with chunks verified earlier (an earlier run, or before an earlier chunk failed)
/// that sit at the cursor, read back from disk, and moves the cursor past them.
fn skip_verified(
    cur: &mut Cursor,
    map: &ChunkMap,
    part: &PartialFile,
    feed: &FileFeed,
    pool: &BufPool,
    scratch: &mut [u8],
) -> Result<(), ErrorReply> {
    let store_err = |e: StorageError| (storage_code(&e), e.to_string());
    while cur.at < cur.plan.file_size() && cur.chunk.is_none() {
        let c = cur.chunk_of(cur.at);
        if !map.get(c) || cur.at != cur.plan.offset(c) {
            break;
        }
        let end = cur.chunk_end(c);
        while cur.at < end {
            let n = (end - cur.at).min(scratch.len() as u64) as usize;
            part.read_at(cur.at, &mut scratch[..n]).map_err(store_err)?;
            feed.send(FeedOp::Bytes(pool.aligned_copy(&scratch[..n], 1)))?;
            cur.at += n as u64;
        }
    }
    Ok(())
}

/// Chunk `c` failed: the cursor and the whole-file hash go back to its start; what later chunks had hashed is
/// hashed again from disk when the cursor passes it again.
fn rollback(cur: &mut Cursor, c: u32, feed: &FileFeed) -> Result<(), ErrorReply> {
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
    feed.send(FeedOp::Rollback(start))
}
