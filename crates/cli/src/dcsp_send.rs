//! The sender's DCSP driver: a reader thread that cuts chunks into blocks (hashing each chunk and the whole
//! file on the way), a data-plane thread that runs `DcspSender` on a UDP socket (pacing, batched sends,
//! ACKs), and the control-channel loop that sends chunk hashes and receives the receiver's verdicts.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self as std_mpsc, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use trackshift_dcsp::fec::ParityMode;
use trackshift_dcsp::{
    BlockGeometry, DcspSender, DirectionKeys, RateController, Role, SenderConfig, SenderStats,
    DATA_OVERHEAD,
};
use trackshift_proto::hashing::Hasher;
use trackshift_proto::{ChunkPlan, FirstPass};
use trackshift_storage::{ChunkSource, FileSource};
use trackshift_udp::{RecvBatch, UdpEndpoint};

use crate::pool::{BufPool, PooledBuf};

/// Largest shard: datagrams of up to ~16 KiB where the path allows (loopback), fewer per-packet costs.
const MAX_SHARD: u32 = 16 * 1024;
/// Most block bytes the sender holds (sent, not yet acknowledged): its memory bound.
const MAX_BUFFERED: usize = 64 * 1024 * 1024;
/// Blocks queued between the reader thread and the file-hash thread.
const BLOCK_QUEUE: usize = 16;
/// Bytes of blocks read ahead for a data plane. Every chunk read counts as sent (its hash leaves at once), so
/// this is also what a crash makes the sender send again: bounded in bytes, not blocks, since a block is ~90 KiB
/// on a 1500-byte path but 1 MiB on loopback.
const PLANE_QUEUE_BYTES: u64 = 8 * 1024 * 1024;

/// How many blocks of `block_bytes` to queue ahead of a data plane: [`PLANE_QUEUE_BYTES`], 2 to 16 blocks.
pub fn plane_queue_len(block_bytes: u64) -> usize {
    (PLANE_QUEUE_BYTES / block_bytes.max(1)).clamp(2, 16) as usize
}
/// Datagrams handed to the kernel in one batch.
const SEND_BATCH: usize = 64;
/// With no ACK at all this long after starting, UDP is taken to be blocked.
pub const UDP_PROBE: Duration = Duration::from_secs(5);
/// A receiver silent this long mid-transfer counts as gone (the control channel reconnects).
pub const UDP_SILENCE: Duration = Duration::from_secs(60);

/// Shard size and blocks for a path: the largest shard whose datagram fits the path MTU.
pub fn shard_size_for(peer: SocketAddr) -> u32 {
    let mtu = UdpEndpoint::path_mtu(peer).unwrap_or(1500);
    let ip = if peer.is_ipv4() { 28 } else { 48 };
    let room = mtu.saturating_sub(ip + DATA_OVERHEAD) as u32;
    (room.min(MAX_SHARD) & !1).max(256)
}

/// The reader's "error" when whoever it feeds has gone away.
const STOPPED: &str = "stopped";

/// What the reader thread tells the control loop.
#[derive(Debug)]
pub enum ReadEvent {
    /// Every block of chunk `index` went to the data plane; its SHA-256.
    ChunkHash(u32, [u8; 32]),
    /// A chunk the receiver already had, re-read: its current hash.
    Checked(u32, [u8; 32]),
    /// The whole file has been read once: its SHA-256.
    FileHash([u8; 32]),
    Failed(String),
}

/// Reads the file once in order (hashing it whole), sending the blocks of chunks the receiver lacks, then
/// re-reads chunks on request.
pub fn reader_thread(
    file: FileSource,
    plan: ChunkPlan,
    geometry: BlockGeometry,
    first_pass: Vec<FirstPass>,
    blocks: Vec<std_mpsc::SyncSender<(u32, Arc<PooledBuf>)>>,
    events: mpsc::Sender<ReadEvent>,
    resend: std_mpsc::Receiver<u32>,
) {
    match read_blocks(
        &file,
        plan,
        geometry,
        &first_pass,
        &blocks,
        &events,
        &resend,
    ) {
        // The data plane or the control loop ended first; they report why.
        Err(e) if e == STOPPED => {}
        Err(e) => {
            let _ = events.blocking_send(ReadEvent::Failed(e));
        }
        Ok(()) => {}
    }
}

fn read_blocks(
    file: &dyn ChunkSource,
    plan: ChunkPlan,
    geometry: BlockGeometry,
    first_pass: &[FirstPass],
    blocks: &[std_mpsc::SyncSender<(u32, Arc<PooledBuf>)>],
    events: &mpsc::Sender<ReadEvent>,
    resend: &std_mpsc::Receiver<u32>,
) -> Result<(), String> {
    let stopped = || STOPPED.to_owned();
    let (file_tx, file_rx) = std_mpsc::sync_channel::<Arc<PooledBuf>>(BLOCK_QUEUE);
    // Buffers come back to the pool once both the data plane and the file hash are done with them.
    let pool = BufPool::new(geometry.block_bytes() as usize);
    let file_hash = std::thread::Builder::new()
        .name("trackshift-filehash".into())
        .spawn(move || {
            let mut h = Hasher::new();
            for buf in file_rx {
                h.update(&buf);
            }
            h.finish()
        })
        .map_err(|e| format!("cannot start the hashing thread: {e}"))?;
    let read_chunk =
        |index: u32, send: bool, whole: Option<&std_mpsc::SyncSender<Arc<PooledBuf>>>| {
            let mut h = Hasher::new();
            let mut done = 0u64;
            let (start, len) = (plan.offset(index), plan.len(index));
            // Blocks when sending (their exact spans); 1 MiB pieces when only hashing.
            let mut spans = geometry.blocks_of_chunk(index);
            while done < len {
                let (block, n) = if send {
                    let b = spans.next().ok_or("block layout ended early")?;
                    let span = geometry.span(b).ok_or("block layout mismatch")?;
                    (Some(b), span.len as usize)
                } else {
                    (None, (len - done).min(1 << 20) as usize)
                };
                let mut buf = pool.get();
                buf.data_mut().resize(n, 0);
                file.read_exact_at(start + done, buf.data_mut())
                    .map_err(|e| e.to_string())?;
                h.update(&buf);
                done += n as u64;
                let buf = Arc::new(buf);
                if let Some(w) = whole {
                    w.send(buf.clone()).map_err(|_| stopped())?;
                }
                if let Some(b) = block {
                    // Stream `s` of `n` carries the blocks numbered `s` modulo `n`.
                    let stream = &blocks[b as usize % blocks.len().max(1)];
                    stream.send((b, buf)).map_err(|_| stopped())?;
                }
            }
            Ok::<_, String>(h.finish())
        };
    for (index, what) in first_pass.iter().enumerate() {
        let index = index as u32;
        match what {
            FirstPass::Send => {
                let sha = read_chunk(index, true, Some(&file_tx))?;
                events
                    .blocking_send(ReadEvent::ChunkHash(index, sha))
                    .map_err(|_| stopped())?;
            }
            FirstPass::Check { .. } => {
                let sha = read_chunk(index, false, Some(&file_tx))?;
                events
                    .blocking_send(ReadEvent::Checked(index, sha))
                    .map_err(|_| stopped())?;
            }
        }
    }
    drop(file_tx);
    let digest = file_hash
        .join()
        .map_err(|_| "the hashing thread panicked".to_owned())?;
    events
        .blocking_send(ReadEvent::FileHash(digest))
        .map_err(|_| stopped())?;
    while let Ok(index) = resend.recv() {
        let sha = read_chunk(index, true, None)?;
        events
            .blocking_send(ReadEvent::ChunkHash(index, sha))
            .map_err(|_| stopped())?;
    }
    Ok(())
}

/// The data-plane thread's handle: stop it, read its statistics, learn why it ended.
#[derive(Debug)]
pub struct DataPlane {
    stop: Arc<AtomicBool>,
    pub stats: Arc<Mutex<SenderStats>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl DataPlane {
    /// Binds a UDP socket and starts sending to `peer`, paced by `controller`; `failed` hears why the plane gave
    /// up, if it does.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        peer: SocketAddr,
        conn_id: u64,
        dcsp_secret: &[u8; 32],
        geometry: BlockGeometry,
        parity: ParityMode,
        controller: Box<dyn RateController>,
        blocks: std_mpsc::Receiver<(u32, Arc<PooledBuf>)>,
        failed: mpsc::UnboundedSender<PlaneFailure>,
    ) -> std::io::Result<Self> {
        let bind: SocketAddr = if peer.is_ipv4() {
            "0.0.0.0:0".parse().unwrap_or(peer)
        } else {
            "[::]:0".parse().unwrap_or(peer)
        };
        let endpoint = UdpEndpoint::bind(bind, false)?;
        let sender = DcspSender::new(
            SenderConfig {
                conn_id,
                keys: DirectionKeys::derive(dcsp_secret, conn_id, Role::Sender),
                geometry,
                parity,
                controller,
                max_buffered: MAX_BUFFERED,
            },
            Instant::now(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(sender.stats()));
        let handle = {
            let (stop, stats) = (stop.clone(), stats.clone());
            std::thread::Builder::new()
                .name("trackshift-dcsp-send".into())
                .spawn(move || {
                    if let Err(f) = run_plane(endpoint, peer, sender, blocks, &stop, &stats) {
                        let _ = failed.send(f);
                    }
                })?
        };
        Ok(Self {
            stop,
            stats,
            handle: Some(handle),
        })
    }

    pub fn stats(&self) -> SenderStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The data planes of all streams of one transfer.
#[derive(Debug)]
pub struct Planes(pub Vec<DataPlane>);

impl Planes {
    /// All streams' counters together (RTT, loss and parity from the first stream).
    pub fn stats(&self) -> SenderStats {
        let mut all = self.0.iter().map(DataPlane::stats);
        let mut t = all.next().unwrap_or_default();
        for s in all {
            t += s;
        }
        t
    }

    pub fn stop(&mut self) {
        for p in &mut self.0 {
            p.stop();
        }
    }
}

/// Why the data plane gave up.
#[derive(Debug)]
pub enum PlaneFailure {
    /// No ACK ever: UDP is probably blocked on the way.
    NoAnswer,
    /// The receiver went silent mid-transfer.
    Silent,
    Fatal(String),
}

fn run_plane(
    mut endpoint: UdpEndpoint,
    peer: SocketAddr,
    mut sender: DcspSender,
    blocks: std_mpsc::Receiver<(u32, Arc<PooledBuf>)>,
    stop: &AtomicBool,
    stats: &Mutex<SenderStats>,
) -> Result<(), PlaneFailure> {
    let started = Instant::now();
    let mut batch = RecvBatch::new();
    let mut packet = Vec::with_capacity(65536);
    let mut out: Vec<u8> = Vec::with_capacity(SEND_BATCH * 1500);
    let mut last_stats = started;
    let mut reader_done = false;
    while !stop.load(Ordering::Relaxed) {
        // ACKs.
        loop {
            match endpoint.recv_batch(&mut batch) {
                Ok(_) => {
                    let now = Instant::now();
                    for (_, d) in batch.iter_mut() {
                        sender.handle_datagram(now, d);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // ICMP errors (port unreachable) surface here; the silence checks below decide.
                Err(_) => break,
            }
        }
        let now = Instant::now();
        sender.handle_timeout(now);
        if !sender.heard_from_peer() && now.duration_since(started) > UDP_PROBE {
            return Err(PlaneFailure::NoAnswer);
        }
        if sender.heard_from_peer() && sender.silence(now) > UDP_SILENCE {
            return Err(PlaneFailure::Silent);
        }
        // New blocks, while there is room.
        let mut starved = false;
        while sender.wants_block() {
            match blocks.try_recv() {
                Ok((b, bytes)) => sender
                    .push_block(b, &bytes)
                    .map_err(|e| PlaneFailure::Fatal(e.to_string()))?,
                Err(TryRecvError::Empty) => {
                    starved = !reader_done;
                    break;
                }
                Err(TryRecvError::Disconnected) => {
                    reader_done = true;
                    break;
                }
            }
        }
        // Datagrams that are due, in batches of equal-size segments.
        let mut sent = 0;
        let mut segment = 0;
        out.clear();
        while sent < SEND_BATCH && sender.poll_transmit(now, &mut packet) {
            if !out.is_empty() && (packet.len() != segment) {
                flush(&mut endpoint, peer, &out, segment);
                out.clear();
            }
            segment = packet.len();
            out.extend_from_slice(&packet);
            sent += 1;
        }
        if !out.is_empty() {
            flush(&mut endpoint, peer, &out, segment);
        }
        if now.duration_since(last_stats) >= Duration::from_millis(100) {
            last_stats = now;
            if let Ok(mut s) = stats.lock() {
                *s = sender.stats();
            }
        }
        if sent == SEND_BATCH {
            continue;
        }
        let mut wait = sender
            .poll_timeout()
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_millis(5))
            .min(Duration::from_millis(5));
        if starved {
            wait = wait.min(Duration::from_micros(200));
        }
        if !wait.is_zero() {
            let _ = endpoint.wait_readable(Some(wait));
        }
    }
    if let Ok(mut s) = stats.lock() {
        *s = sender.stats();
    }
    Ok(())
}

fn flush(endpoint: &mut UdpEndpoint, peer: SocketAddr, data: &[u8], segment: usize) {
    let mut off = 0;
    let mut tries = 0;
    while off < data.len() {
        match endpoint.send_batch(peer, &data[off..], segment) {
            Ok(n) => off += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_micros(100));
            }
            // Anything else (e.g. an ICMP error from an earlier datagram): these datagrams count as lost;
            // NACKs and probes take it from there.
            Err(_) => return,
        }
    }
}
