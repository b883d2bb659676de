//! The sender's one source reader: a thread that reads the file once in file order, hashing every chunk and the
//! whole file (on a thread of its own), handing the chunks the receiver lacks to the data path, then reads chunks
//! again when asked to re-send them. The data path is either `Data` frames (1 MiB pieces, zstd where it pays,
//! written by the control task) or the DCSP data planes (blocks, stream `s` of `n` carrying the blocks numbered
//! `s` modulo `n`). Everything between threads is bounded, so memory stays flat whatever the file size.

use std::sync::mpsc::{self as std_mpsc, SyncSender};
use std::sync::Arc;

use tokio::sync::mpsc;
use trackshift_dcsp::BlockGeometry;
use trackshift_proto::compress::{CompressMode, PieceCompressor};
use trackshift_proto::frame::DATA_PIECE;
use trackshift_proto::hashing::{ChunkListHasher, Hasher};
use trackshift_proto::{ChunkPlan, FirstPass};
use trackshift_storage::ChunkSource;

use crate::pool::{BufPool, PooledBuf};
use crate::threads;

/// Events the reader may run ahead of the control task (each at most one 1 MiB piece): bounds the sender's
/// memory to a few MiB.
pub(crate) const READ_AHEAD: usize = 8;
/// Pieces or blocks queued for the whole-file hash.
const FILE_HASH_QUEUE: usize = 16;
/// zstd's worst case on a 1 MiB piece that does not shrink is a little larger than the piece.
const PACKED_SLACK: usize = DATA_PIECE / 64;

/// What the reader tells the control task.
#[derive(Debug)]
pub(crate) enum ReadEvent {
    /// `Data` frames: chunk `index` begins.
    Begin(u32),
    /// `Data` frames: chunk `index` goes on from byte `from` (the receiver holds what is before).
    Resume(u32, u64),
    /// `Data` frames: the next piece of the current chunk, `raw_len` file bytes.
    Piece {
        raw_len: u32,
        compressed: bool,
        buf: Arc<PooledBuf>,
    },
    /// Every byte of chunk `index` went to the data path; its SHA-256.
    Sent(u32, [u8; 32]),
    /// A chunk the receiver verified earlier, read again: its SHA-256 now.
    Checked(u32, [u8; 32]),
    /// The whole file has been read once: its SHA-256, and the digest of its chunks' hashes in order.
    FileHash {
        sha256: [u8; 32],
        chunk_list: Option<[u8; 32]>,
    },
    Failed(String),
}

/// A piece of a chunk as the reader reads it.
#[derive(Debug, Clone, Copy)]
struct Span {
    /// Its DCSP block number (planes only).
    block: Option<u32>,
    len: usize,
    /// It goes to the data path (else it is only hashed).
    send: bool,
}

/// `[from, to)` of a chunk in pieces of at most 1 MiB.
fn pieces(from: u64, to: u64, send: bool) -> Vec<Span> {
    let mut out = Vec::new();
    let mut at = from;
    while at < to {
        let n = (to - at).min(DATA_PIECE as u64);
        out.push(Span {
            block: None,
            len: n as usize,
            send,
        });
        at += n;
    }
    out
}

/// Where the chunks that go are handed.
#[derive(Debug)]
pub(crate) enum Outlet {
    /// As `Data` frames through the control task (the TCP data path).
    Frames { compress: CompressMode },
    /// As blocks to the DCSP data planes, one queue per stream.
    Planes {
        geometry: BlockGeometry,
        streams: Vec<SyncSender<(u32, Arc<PooledBuf>)>>,
    },
}

/// The reader thread's handle: ask for re-sends, stop it.
#[derive(Debug)]
pub(crate) struct Reader {
    resend: std_mpsc::Sender<u32>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Reader {
    /// Starts reading: `first_pass` says what to do with each chunk; events go to `events`.
    pub(crate) fn start(
        source: Arc<dyn ChunkSource>,
        plan: ChunkPlan,
        first_pass: Vec<FirstPass>,
        outlet: Outlet,
        events: mpsc::Sender<ReadEvent>,
    ) -> Result<Self, String> {
        let (resend, resend_rx) = std_mpsc::channel();
        let handle = threads::spawn("read", move || {
            let read = ReadJob::new(&*source, plan, outlet, &events)
                .and_then(|mut job| job.run(&first_pass, &resend_rx));
            match read {
                // Whoever it feeds went away first; they know why.
                Err(Stop::Stopped) | Ok(()) => {}
                Err(Stop::Failed(e)) => {
                    let _ = events.blocking_send(ReadEvent::Failed(e));
                }
            }
        })?;
        Ok(Self {
            resend,
            handle: Some(handle),
        })
    }

    /// Read chunk `index` again and send it.
    pub(crate) fn resend(&self, index: u32) {
        let _ = self.resend.send(index);
    }

    /// Waits for the thread, which ends once its events receiver was dropped (do that first).
    pub(crate) fn join(mut self) {
        if let Some(h) = self.handle.take() {
            drop(self.resend);
            let _ = h.join();
        }
    }
}

/// Why reading ended early.
enum Stop {
    /// Whoever the reader feeds has gone away.
    Stopped,
    Failed(String),
}

impl From<trackshift_storage::StorageError> for Stop {
    fn from(e: trackshift_storage::StorageError) -> Self {
        Stop::Failed(e.to_string())
    }
}

struct ReadJob<'a> {
    source: &'a dyn ChunkSource,
    plan: ChunkPlan,
    outlet: Outlet,
    events: &'a mpsc::Sender<ReadEvent>,
    /// Buffers come back to the pool once every user (data path, file hash) is done with them.
    pool: BufPool,
    compressor: Option<(CompressMode, PieceCompressor, BufPool)>,
}

impl<'a> ReadJob<'a> {
    fn new(
        source: &'a dyn ChunkSource,
        plan: ChunkPlan,
        outlet: Outlet,
        events: &'a mpsc::Sender<ReadEvent>,
    ) -> Result<Self, Stop> {
        let piece = match &outlet {
            Outlet::Planes { geometry, .. } => (geometry.block_bytes() as usize).max(DATA_PIECE),
            Outlet::Frames { .. } => DATA_PIECE,
        };
        let compressor = match &outlet {
            Outlet::Frames { compress } => Some((
                *compress,
                PieceCompressor::new().map_err(|e| Stop::Failed(e.to_string()))?,
                BufPool::new(DATA_PIECE + PACKED_SLACK),
            )),
            Outlet::Planes { .. } => None,
        };
        Ok(Self {
            source,
            plan,
            outlet,
            events,
            pool: BufPool::new(piece),
            compressor,
        })
    }

    fn emit(&self, ev: ReadEvent) -> Result<(), Stop> {
        self.events.blocking_send(ev).map_err(|_| Stop::Stopped)
    }

    /// The first pass in file order (hashing the whole file on the way), then re-sends until told to stop.
    fn run(
        &mut self,
        first_pass: &[FirstPass],
        resend: &std_mpsc::Receiver<u32>,
    ) -> Result<(), Stop> {
        let (file_tx, file_rx) = std_mpsc::sync_channel::<Arc<PooledBuf>>(FILE_HASH_QUEUE);
        let file_hash = threads::spawn("send-filehash", move || {
            let mut h = Hasher::new();
            for buf in file_rx {
                h.update(&buf);
            }
            h.finish()
        })
        .map_err(Stop::Failed)?;
        let mut chunk_list = ChunkListHasher::new(&self.plan);
        for (index, what) in first_pass.iter().enumerate() {
            let index = index as u32;
            let send_from = match what {
                FirstPass::Send => Some(0),
                FirstPass::Resume { have } => Some(*have),
                FirstPass::Check { .. } => None,
            };
            let sha = self.read_chunk(index, send_from, Some(&file_tx))?;
            chunk_list.push(&sha);
            self.emit(match send_from {
                Some(_) => ReadEvent::Sent(index, sha),
                None => ReadEvent::Checked(index, sha),
            })?;
        }
        drop(file_tx);
        let digest = file_hash
            .join()
            .map_err(|_| Stop::Failed("the hashing thread panicked".into()))?;
        self.emit(ReadEvent::FileHash {
            sha256: digest,
            chunk_list: chunk_list.finish(),
        })?;
        while let Ok(index) = resend.recv() {
            let sha = self.read_chunk(index, Some(0), None)?;
            self.emit(ReadEvent::Sent(index, sha))?;
        }
        Ok(())
    }

    /// Reads chunk `index` whole, feeding `whole` in file order, and sends it from byte `send_from` on (the
    /// receiver holds what is before; `None`: nothing is sent); its SHA-256.
    fn read_chunk(
        &mut self,
        index: u32,
        send_from: Option<u64>,
        whole: Option<&SyncSender<Arc<PooledBuf>>>,
    ) -> Result<[u8; 32], Stop> {
        let (start, len) = (self.plan.offset(index), self.plan.len(index));
        let mut chunk = Hasher::new();
        if matches!(self.outlet, Outlet::Frames { .. }) {
            match send_from {
                Some(0) => self.emit(ReadEvent::Begin(index))?,
                Some(from) => self.emit(ReadEvent::Resume(index, from))?,
                None => {}
            }
        }
        let mut compress: Option<bool> = None;
        let mut done = 0u64;
        for span in self.spans(index, send_from)? {
            // Read over whatever the reused buffer held: no memset of every byte first.
            let mut buf = self.pool.get_len(span.len);
            self.source.read_exact_at(start + done, buf.data_mut())?;
            chunk.update(&buf);
            done += span.len as u64;
            let buf = Arc::new(buf);
            if let Some(w) = whole {
                w.send(buf.clone()).map_err(|_| Stop::Stopped)?;
            }
            if span.send {
                self.hand_over(span.block, buf, &mut compress)?;
            }
        }
        debug_assert_eq!(done, len);
        Ok(chunk.finish())
    }

    /// The pieces chunk `index` is read in, in order, and which of them go: its blocks when it goes to the DCSP
    /// planes (those before the geometry's resume point stay home), else 1 MiB pieces (the bytes before
    /// `send_from` in pieces of their own, which stay home).
    fn spans(&self, index: u32, send_from: Option<u64>) -> Result<Vec<Span>, Stop> {
        let len = self.plan.len(index);
        match (&self.outlet, send_from) {
            (Outlet::Planes { geometry, .. }, Some(have)) => {
                let restart = geometry.chunk_offset(index) + geometry.resume_point(index, have);
                geometry
                    .blocks_of_chunk(index)
                    .map(|b| {
                        let s = geometry
                            .span(b)
                            .ok_or_else(|| Stop::Failed("block layout mismatch".into()))?;
                        Ok(Span {
                            block: Some(b),
                            len: s.len as usize,
                            send: s.offset >= restart,
                        })
                    })
                    .collect()
            }
            (_, from) => {
                let from = from.map(|f| f.min(len));
                let mut spans = pieces(0, from.unwrap_or(len), false);
                if let Some(from) = from {
                    spans.extend(pieces(from, len, true));
                }
                Ok(spans)
            }
        }
    }

    /// Gives one piece (frames) or block (planes) to the data path.
    fn hand_over(
        &mut self,
        block: Option<u32>,
        buf: Arc<PooledBuf>,
        compress: &mut Option<bool>,
    ) -> Result<(), Stop> {
        if let Outlet::Planes { streams, .. } = &self.outlet {
            let b = block.unwrap_or_default();
            // Stream `s` of `n` carries the blocks numbered `s` modulo `n`.
            let stream = &streams[b as usize % streams.len().max(1)];
            return stream.send((b, buf)).map_err(|_| Stop::Stopped);
        }
        let raw_len = buf.len() as u32;
        let packed = match self.compressor.as_mut() {
            Some((mode, c, packed_pool)) => {
                let use_zstd = *compress.get_or_insert_with(|| c.should_compress(*mode, &buf));
                use_zstd.then(|| c.compress(&buf)).flatten().map(|p| {
                    let mut out = packed_pool.get();
                    out.data_mut().extend_from_slice(p);
                    Arc::new(out)
                })
            }
            None => None,
        };
        let (compressed, buf) = match packed {
            Some(p) => (true, p),
            None => (false, buf),
        };
        self.emit(ReadEvent::Piece {
            raw_len,
            compressed,
            buf,
        })
    }
}
