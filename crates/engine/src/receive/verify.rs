//! What both receiving writers (TCP and DCSP) share: the commit of verified chunks off the write path, the final
//! check that puts a file in place (by the sender's chunk list hash, or for an older sender by the whole-file hash
//! on a thread of its own).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self as std_mpsc, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use trackshift_proto::frame::DATA_PIECE;
use trackshift_proto::hashing::{ChunkListHasher, OrderedFileHasher};
use trackshift_proto::{ChunkMap, ChunkPlan, ErrorCode, SessionId};
use trackshift_storage::{unix_now, ChunkSink, PartialFile, SessionState, SessionStore};

use super::VerifyMode;
use crate::error::{store_reply, ErrorReply};
use crate::pool::SharedBytes;
use crate::threads;

/// What a writer tells the connection's task.
#[derive(Debug)]
pub(crate) enum WriterEvent {
    /// Chunk `index` (`len` bytes) verified and durable (`ok`), or failed its hash.
    ChunkDone { index: u32, ok: bool, len: u64 },
    /// The whole file verified and is in place at `final_path`.
    FileDone { sha: [u8; 32], final_path: PathBuf },
    /// Every chunk verified but the whole file hashed to `sha`: the session was discarded.
    FileMismatch { sha: [u8; 32] },
    /// The writer cannot go on.
    Fatal { code: ErrorCode, message: String },
}

pub(crate) type WriterEvents = mpsc::UnboundedSender<WriterEvent>;

/// How often a writer records how far the unverified chunk it is writing got: about what a crash or a kill of
/// either side costs at most (one fdatasync and one store commit each time, cheap next to half a second of data).
pub(crate) const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// Queued ahead of the whole-file hashing thread: enough to ride over a slow moment, bounded in memory.
const HASH_QUEUE: usize = 16;

/// What the whole-file hashing thread is asked, always in file order.
#[derive(Debug)]
pub(crate) enum HashOp {
    Bytes(SharedBytes),
    /// A chunk starts here.
    Mark,
    /// The chunk starting at this offset verified.
    Release(u64),
    /// The chunk starting at this offset failed: back to its start.
    Rollback(u64),
}

/// The receiver's [`OrderedFileHasher`] on a thread of its own, so the whole-file hash does not slow the writer
/// that writes and verifies chunks; or, for a sender of protocol version 3 (which announces its chunk list
/// hash), no whole-file hash at all ([`HashThread::off`]): then every operation is only counted.
#[derive(Debug)]
pub(crate) struct HashThread {
    worker: Option<HashWorker>,
    /// File offset the bytes sent so far reach.
    position: u64,
}

#[derive(Debug)]
struct HashWorker {
    tx: SyncSender<HashOp>,
    handle: std::thread::JoinHandle<Result<OrderedFileHasher, String>>,
}

impl HashThread {
    pub(crate) fn start(mut hasher: OrderedFileHasher) -> Result<Self, ErrorReply> {
        let position = hasher.position();
        let (tx, rx) = std_mpsc::sync_channel::<HashOp>(HASH_QUEUE);
        let handle = threads::spawn("recv-filehash", move || {
            for op in rx {
                match op {
                    HashOp::Bytes(b) => hasher.update(&b),
                    HashOp::Mark => hasher.mark(),
                    HashOp::Release(at) => hasher.release(at),
                    HashOp::Rollback(at) if hasher.rollback(at) => {}
                    HashOp::Rollback(at) => {
                        return Err(format!("the whole-file hash has no mark at offset {at}"))
                    }
                }
            }
            Ok(hasher)
        })
        .map_err(internal)?;
        Ok(Self {
            worker: Some(HashWorker { tx, handle }),
            position,
        })
    }

    /// No whole-file hash: the file is checked by its chunk list hash.
    pub(crate) fn off() -> Self {
        Self {
            worker: None,
            position: 0,
        }
    }

    /// Whether bytes sent here are hashed (else the writers need not read or copy anything for it).
    pub(crate) fn is_on(&self) -> bool {
        self.worker.is_some()
    }

    /// Where the next bytes must start to be hashed in order.
    pub(crate) fn position(&self) -> u64 {
        self.position
    }

    pub(crate) fn send(&mut self, op: HashOp) -> Result<(), ErrorReply> {
        match &op {
            HashOp::Bytes(b) => self.position += b.len() as u64,
            HashOp::Rollback(at) => self.position = *at,
            HashOp::Mark | HashOp::Release(_) => {}
        }
        match &self.worker {
            Some(w) => {
                w.tx.send(op)
                    .map_err(|_| internal("the hashing thread stopped".into()))
            }
            None => Ok(()),
        }
    }

    /// Everything sent so far hashed: the hasher, to finish from disk (`None` when off).
    pub(crate) fn finish(self) -> Result<Option<OrderedFileHasher>, ErrorReply> {
        let Some(HashWorker { tx, handle }) = self.worker else {
            return Ok(None);
        };
        drop(tx);
        handle
            .join()
            .map_err(|_| internal("the hashing thread panicked".into()))?
            .map_err(internal)
            .map(Some)
    }
}

fn internal(message: String) -> ErrorReply {
    (ErrorCode::Internal, message)
}

/// Reads `[hasher.position(), to)` of the partial file into the whole-file hasher.
pub(crate) fn hash_from_disk(
    part: &dyn ChunkSink,
    hasher: &mut OrderedFileHasher,
    to: u64,
) -> Result<(), ErrorReply> {
    let mut buf = vec![0u8; DATA_PIECE];
    while hasher.position() < to {
        let n = (to - hasher.position()).min(DATA_PIECE as u64) as usize;
        part.read_at(hasher.position(), &mut buf[..n])
            .map_err(store_reply)?;
        hasher.update(&buf[..n]);
    }
    Ok(())
}

/// What the commit thread is asked, in the order the writer decided it.
#[derive(Debug)]
enum CommitOp {
    /// Chunk `index` (`len` bytes) matched `sha`: durable, recorded, then the sender is told.
    Verified { index: u32, sha: [u8; 32], len: u64 },
    /// The first `bytes` bytes of unverified chunk `index` are written: durable, then recorded, so a resume needs
    /// only the rest.
    Progress { index: u32, bytes: u64 },
    /// Chunk `index` failed its hash: its recorded prefix is forgotten (it goes again whole).
    Forget(u32),
}

/// Makes verified chunks (and the written prefixes of unverified ones) durable off the writer's path, so
/// writing and hashing the next chunk overlaps the previous chunk's fdatasync: data synced first, then the
/// store's record, then the sender is told.
#[derive(Debug)]
struct Committer {
    tx: Option<std_mpsc::Sender<CommitOp>>,
    handle: Option<std::thread::JoinHandle<Result<(), ErrorReply>>>,
}

impl Committer {
    fn start(
        part: Arc<PartialFile>,
        store: Arc<SessionStore>,
        id: SessionId,
        events: WriterEvents,
    ) -> Result<Self, ErrorReply> {
        let (tx, rx) = std_mpsc::channel::<CommitOp>();
        let handle = threads::spawn("commit", move || {
            while let Ok(first) = rx.recv() {
                // One fdatasync covers everything that was asked meanwhile.
                let mut batch = vec![first];
                batch.extend(rx.try_iter());
                part.sync_data().map_err(store_reply)?;
                for op in batch {
                    record(&store, &id, op, &events)?;
                }
            }
            Ok(())
        })
        .map_err(internal)?;
        Ok(Self {
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    /// Queues `op`; fails with the commit thread's error if it has stopped.
    fn send(&mut self, op: CommitOp) -> Result<(), ErrorReply> {
        match &self.tx {
            Some(tx) if tx.send(op).is_ok() => Ok(()),
            _ => self
                .finish()
                .and(Err(internal("the commit thread stopped".into()))),
        }
    }

    /// Waits until everything queued is durable and recorded.
    fn finish(&mut self) -> Result<(), ErrorReply> {
        self.tx = None;
        match self.handle.take() {
            Some(h) => h
                .join()
                .unwrap_or_else(|_| Err(internal("the commit thread panicked".into()))),
            None => Ok(()),
        }
    }
}

/// One synced operation into the store (and, for a verified chunk, the verdict to the connection's task).
fn record(
    store: &SessionStore,
    id: &SessionId,
    op: CommitOp,
    events: &WriterEvents,
) -> Result<(), ErrorReply> {
    match op {
        CommitOp::Verified { index, sha, len } => {
            store
                .mark_chunk_verified(id, index, sha)
                .map_err(store_reply)?;
            let _ = events.send(WriterEvent::ChunkDone {
                index,
                ok: true,
                len,
            });
        }
        CommitOp::Progress { index, bytes } => store
            .set_partial_chunk(id, index, bytes)
            .map_err(store_reply)?,
        CommitOp::Forget(index) => store.set_partial_chunk(id, index, 0).map_err(store_reply)?,
    }
    Ok(())
}

impl Drop for Committer {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Where a finished file goes and how the store knows it.
#[derive(Debug, Clone)]
pub(crate) struct Destination {
    pub(crate) id: SessionId,
    pub(crate) output_dir: PathBuf,
    pub(crate) name: String,
    /// The file's size.
    pub(crate) size: u64,
}

/// What a writer needs for one transfer (both data paths).
#[derive(Debug)]
pub(crate) struct WriterJob {
    pub(crate) plan: ChunkPlan,
    pub(crate) part: PartialFile,
    /// Chunks verified before this connection.
    pub(crate) verified: ChunkMap,
    /// DCSP: chunks whose first bytes are on disk and will not come again, and how many (a block boundary).
    pub(crate) resume: BTreeMap<u32, u64>,
    pub(crate) dest: Destination,
    pub(crate) store: Arc<SessionStore>,
    pub(crate) events: WriterEvents,
    /// Hash the whole file as it arrives: the sender speaks a protocol version before
    /// [`trackshift_proto::frame::CHUNK_LIST_VERSION`], so it announces no chunk list hash.
    pub(crate) whole_file_hash: bool,
    pub(crate) verify: VerifyMode,
}

impl WriterJob {
    /// Starts the transfer's commit thread and, for an older sender, its whole-file hashing thread, the hash going
    /// on from `hasher`.
    pub(crate) fn start(self, hasher: OrderedFileHasher) -> Result<Verifier, ErrorReply> {
        let part = Arc::new(self.part);
        let hash = match self.whole_file_hash {
            true => HashThread::start(hasher)?,
            false => HashThread::off(),
        };
        Ok(Verifier {
            committer: Committer::start(
                part.clone(),
                self.store.clone(),
                self.dest.id,
                self.events.clone(),
            )?,
            hash,
            verify: self.verify,
            part,
            plan: self.plan,
            verified: self.verified,
            resume: self.resume,
            store: self.store,
            dest: self.dest,
            events: self.events,
            last_progress: Instant::now(),
        })
    }
}

/// What both writers hand their chunks to: the partial file, the whole-file hash, the commit thread, and the
/// verdicts for the connection's task.
#[derive(Debug)]
pub(crate) struct Verifier {
    pub(crate) plan: ChunkPlan,
    /// Chunks verified (before this connection, and committed since).
    pub(crate) verified: ChunkMap,
    /// DCSP: chunks to pick up after their first bytes (see [`WriterJob::resume`]); taken when used.
    pub(crate) resume: BTreeMap<u32, u64>,
    pub(crate) part: Arc<PartialFile>,
    pub(crate) hash: HashThread,
    verify: VerifyMode,
    committer: Committer,
    store: Arc<SessionStore>,
    dest: Destination,
    events: WriterEvents,
    /// When the last prefix was recorded.
    last_progress: Instant,
}

impl Verifier {
    /// Chunk `index` matched its hash `sha`: durable and recorded next, then the sender is told.
    pub(crate) fn commit(&mut self, index: u32, sha: [u8; 32]) -> Result<(), ErrorReply> {
        self.verified.insert(index);
        let len = self.plan.len(index);
        self.committer.send(CommitOp::Verified { index, sha, len })
    }

    /// The first `bytes` bytes of unverified chunk `index` are written (and will be durable before they are
    /// recorded), at most every [`PROGRESS_EVERY`]: a resume after a crash or a kill then needs only the rest.
    pub(crate) fn progress(&mut self, index: u32, bytes: u64) -> Result<(), ErrorReply> {
        if bytes == 0 || !self.progress_due() {
            return Ok(());
        }
        self.last_progress = Instant::now();
        self.committer.send(CommitOp::Progress { index, bytes })
    }

    /// Whether [`Self::progress`] would record now (so a writer flushes what it buffers first).
    pub(crate) fn progress_due(&self) -> bool {
        self.last_progress.elapsed() >= PROGRESS_EVERY
    }

    /// Chunk `index` did not match its hash: its recorded prefix is forgotten, and the sender is told to send
    /// it again.
    pub(crate) fn failed(&mut self, index: u32) -> Result<(), ErrorReply> {
        tracing::warn!(
            "chunk {index} of session {} failed verification; asking for it again",
            self.dest.id
        );
        let _ = self.events.send(WriterEvent::ChunkDone {
            index,
            ok: false,
            len: self.plan.len(index),
        });
        self.committer.send(CommitOp::Forget(index))
    }

    /// The connection ended before the file: waits until every queued chunk is durable and recorded.
    pub(crate) fn close(mut self) -> Result<(), ErrorReply> {
        self.committer.finish()
    }

    /// Every chunk verified: waits for the last commits (and the hashing thread), checks the whole file against
    /// what the sender announced, and puts it in place if it matches (or discards the session).
    pub(crate) fn finish(mut self, claim: FileClaim) -> Result<(), ErrorReply> {
        self.committer.finish()?;
        drop(self.committer);
        let hasher = self.hash.finish()?;
        let part =
            Arc::try_unwrap(self.part).map_err(|_| internal("partial file still shared".into()))?;
        let check = WholeFileCheck {
            part: &part,
            store: &self.store,
            dest: &self.dest,
            plan: &self.plan,
        };
        let (sha, ok) = match hasher {
            Some(hasher) => check.by_bytes(hasher, claim.sha256)?,
            None => check.by_chunk_list(claim, self.verify)?,
        };
        if !ok {
            // Every chunk verified yet the whole does not: the partial data cannot be trusted.
            let _ = part.remove();
            let _ = self.store.remove_incoming(&self.dest.id);
            let _ = self.events.send(WriterEvent::FileMismatch { sha });
            return Ok(());
        }
        let final_path = part
            .finalize(&self.dest.output_dir, &self.dest.name)
            .map_err(store_reply)?;
        record_completed(&self.store, &self.dest.id, &final_path, sha)?;
        let _ = self.events.send(WriterEvent::FileDone { sha, final_path });
        Ok(())
    }
}

/// What the sender announced the whole file to be: its SHA-256 and, from protocol version 3, the hash of its
/// chunk list.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FileClaim {
    pub(crate) sha256: [u8; 32],
    pub(crate) chunk_list: Option<[u8; 32]>,
}

/// The final check of a file whose every chunk verified and is durable.
struct WholeFileCheck<'a> {
    part: &'a PartialFile,
    store: &'a SessionStore,
    dest: &'a Destination,
    plan: &'a ChunkPlan,
}

impl WholeFileCheck<'_> {
    /// An older sender: the whole-file hash, finished from disk where bytes could not be hashed in order. The
    /// hash found, and whether it is `expected`.
    fn by_bytes(
        &self,
        mut hasher: OrderedFileHasher,
        expected: [u8; 32],
    ) -> Result<([u8; 32], bool), ErrorReply> {
        hash_from_disk(self.part, &mut hasher, self.dest.size)?;
        let sha = hasher.finish();
        Ok((sha, sha == expected))
    }

    /// Protocol version 3: the hash of the verified chunks' hashes, in order, against the sender's; with
    /// [`VerifyMode::Full`] then the file read back from disk against the sender's SHA-256. The hash the
    /// receiver vouches for (the sender's, once checked; else what it found), and whether it matched.
    fn by_chunk_list(
        &self,
        claim: FileClaim,
        verify: VerifyMode,
    ) -> Result<([u8; 32], bool), ErrorReply> {
        let verified = self
            .store
            .verified_chunks(&self.dest.id)
            .map_err(store_reply)?;
        let ours = ChunkListHasher::digest(self.plan, &verified).unwrap_or_default();
        if Some(ours) != claim.chunk_list {
            return Ok((ours, false));
        }
        if verify == VerifyMode::Full {
            let mut hasher = OrderedFileHasher::new();
            hash_from_disk(self.part, &mut hasher, self.dest.size)?;
            let sha = hasher.finish();
            return Ok((sha, sha == claim.sha256));
        }
        Ok((claim.sha256, true))
    }
}

fn record_completed(
    store: &SessionStore,
    id: &SessionId,
    final_path: &Path,
    sha: [u8; 32],
) -> Result<(), ErrorReply> {
    if let Some(mut rec) = store.incoming(id).map_err(store_reply)? {
        rec.state = SessionState::Completed;
        rec.final_path = Some(final_path.to_path_buf());
        rec.sha256_hex = Some(hex::encode(sha));
        rec.updated_unix = unix_now();
        rec.error = None;
        store.put_incoming(&rec).map_err(store_reply)?;
    }
    Ok(())
}
