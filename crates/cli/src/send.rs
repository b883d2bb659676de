//! `trackshift send`: the sender's driver. It owns the file reader thread, the connection and the retries;
//! `trackshift_proto::OutgoingTransfer` decides what goes.

use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tokio::io::split;
use tokio::sync::mpsc;
use trackshift_dcsp::fec::ParityMode;
use trackshift_dcsp::{DelayRateFactory, RateControllerFactory};
use trackshift_proto::compress::{CompressMode, PieceCompressor};
use trackshift_proto::frame::{verified_entries, DATA_PIECE};
use trackshift_proto::hashing::Hasher;
use trackshift_proto::session::Backoff;
use trackshift_proto::{
    ChunkPlan, ErrorCode, FirstPass, Frame, Offer, OutgoingTransfer, SessionId,
};
use trackshift_storage::{
    ChunkSource, FileSource, KnownReceivers, OutgoingSession, SessionState, SessionStore, StateDir,
};
use trackshift_transport::{
    connect, dcsp_secret_of, exporter_of, normalize_fingerprint, ClientAuth, FrameReader,
    FrameWriter, TransportError,
};

use crate::failure::{exit, Failure};
use crate::output::Reporter;
use crate::pool::{BufPool, PooledBuf};

/// Pieces the reader thread may run ahead of the network: bounds the sender's memory to a few MiB.
const READ_AHEAD: usize = 8;
/// How long to wait for the receiver's final word after the last chunk (it re-reads and hashes what it could
/// not hash in order, which can take a while for a huge resumed file).
const FINAL_WAIT: Duration = Duration::from_secs(3600);
/// How often the sender records confirmed progress in its own store (for `trackshift status`).
const PROGRESS_SAVE_EVERY: Duration = Duration::from_secs(2);
/// With DCSP, how long the control connection may stay silent (the receiver sends a keep-alive every
/// `dcsp_recv::CONTROL_KEEPALIVE`) before the sender reconnects.
const CONTROL_SILENCE: Duration = Duration::from_secs(8);
/// Longest silence from the receiver while chunks are in flight before the connection counts as dead.
const PEER_SILENCE: Duration = Duration::from_secs(60);

/// Everything `send` and `resume` need.
#[derive(Debug, Clone)]
pub struct SendOptions {
    pub path: PathBuf,
    pub to: String,
    pub secret: Option<String>,
    pub chunk_size: u64,
    pub compress: CompressMode,
    pub max_rate: Option<u64>,
    pub state_dir: PathBuf,
    pub fingerprint: Option<String>,
    pub retry_for: Duration,
    pub connect_timeout: Duration,
    pub resume_id: Option<SessionId>,
    pub protocol: DataPath,
    pub parity: ParityMode,
    /// DCSP streams (sockets and threads) to spread the data plane over.
    pub streams: u8,
}

/// Which data path carries the file's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPath {
    Tcp,
    /// DCSP over UDP; `explicit` when the user asked for it (no fallback to TCP then).
    Udp {
        explicit: bool,
    },
}

impl DataPath {
    fn name(self) -> &'static str {
        match self {
            DataPath::Tcp => "tcp",
            DataPath::Udp { .. } => "udp",
        }
    }
}

/// Counters for the summary.
#[derive(Debug, Default, Clone)]
struct Stats {
    bytes_on_wire: u64,
    chunks_sent: u32,
    chunks_resent: u32,
    chunks_skipped: u32,
    bytes_skipped: u64,
    /// File bytes the receiver has confirmed so far (all runs).
    bytes_confirmed: u64,
    compressed_chunks: u32,
    connections: u32,
    accepted_once: bool,
    /// The data plane's counters (DCSP), summed over connections.
    udp: Option<trackshift_dcsp::SenderStats>,
    udp_totals: (u64, u64),
}

/// Why one connection's attempt ended.
enum AttemptError {
    /// Worth another connection.
    Transient(TransportError),
    /// The source changed under an earlier session: start a fresh one.
    SourceChanged(u32),
    /// Final.
    Fatal(Failure),
    /// UDP got no answer (or the receiver cannot do DCSP): try TCP instead, if allowed.
    NoUdp(String),
}

impl From<TransportError> for AttemptError {
    fn from(e: TransportError) -> Self {
        if e.is_transient() {
            AttemptError::Transient(e)
        } else {
            AttemptError::Fatal(e.into())
        }
    }
}

/// Runs a send to completion. Returns the exit code (the summary has been printed).
pub fn run(opts: SendOptions, reporter: &mut Reporter) -> Result<(), Failure> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::failed(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(send(opts, reporter))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn send(mut opts: SendOptions, reporter: &mut Reporter) -> Result<(), Failure> {
    let source = FileSource::open(&opts.path)?;
    let plan = ChunkPlan::new(source.size(), opts.chunk_size)
        .map_err(|e| Failure::usage(e.to_string()))?;
    let Some(secret) = opts.secret.clone().filter(|s| !s.is_empty()) else {
        return Err(Failure::new(
            exit::AUTH,
            "no secret given: pass --secret or set TRACKSHIFT_SECRET (the receiver prints its secret when it starts)",
        ));
    };
    let expected_fp = match &opts.fingerprint {
        Some(f) => Some(normalize_fingerprint(f).ok_or_else(|| {
            Failure::usage(format!(
                "--fingerprint `{f}` is not a SHA-256 fingerprint (sha256:<64 hex digits>)"
            ))
        })?),
        None => None,
    };
    let state = StateDir::open(&opts.state_dir)?;
    let store = SessionStore::open(&state)?;
    let mut known = KnownReceivers::open(&state)?;

    let compress_name = match opts.compress {
        CompressMode::Auto => "auto",
        CompressMode::Zstd => "zstd",
        CompressMode::None => "none",
    };
    let same_source = |s: &OutgoingSession| {
        s.size == source.size()
            && s.mtime_ns == i128::from(source.mtime_ns())
            && s.chunk_size == opts.chunk_size
    };
    let previous = match opts.resume_id {
        Some(id) => store.outgoing(&id)?,
        None => store.find_outgoing(source.path(), &opts.to)?,
    };
    // A session no receiver has heard of yet (see `transfer_once`'s early start).
    let mut fresh = true;
    let mut record = match previous {
        Some(p) if p.state != SessionState::Completed && same_source(&p) => {
            reporter.info(&format!("resuming session {}", p.id));
            fresh = false;
            p
        }
        p => {
            if let Some(p) = p.filter(|p| p.state != SessionState::Completed) {
                reporter.info(&format!(
                    "{} changed since session {}: starting a fresh session",
                    source.path().display(),
                    p.id
                ));
            }
            OutgoingSession {
                id: SessionId::random(),
                source: source.path().to_path_buf(),
                to: opts.to.clone(),
                receiver_fingerprint: None,
                size: source.size(),
                mtime_ns: i128::from(source.mtime_ns()),
                chunk_size: opts.chunk_size,
                chunk_count: plan.chunk_count(),
                protocol: opts.protocol.name().into(),
                compress: compress_name.into(),
                state: SessionState::Active,
                created_unix: unix_now(),
                updated_unix: unix_now(),
                bytes_confirmed: 0,
                sha256_hex: None,
                error: None,
            }
        }
    };
    record.state = SessionState::Active;
    record.updated_unix = unix_now();
    store.put_outgoing(&record)?;

    reporter.event(json!({
        "event": "start", "session_id": record.id.to_hex(), "file": source.name(), "bytes": source.size(),
        "to": opts.to, "protocol": opts.protocol.name(), "chunk_size": opts.chunk_size, "chunks": plan.chunk_count(),
    }));
    let started = Instant::now();
    let mut stats = Stats::default();
    let mut backoff = Backoff::new(opts.retry_for);
    let mut ever_connected = false;
    // When the current run of failed attempts began: the start (never connected yet) or the lost connection.
    // `--retry-for` / `--connect-timeout` count from here, not from the start of a long transfer.
    let mut retrying_since = started;
    let mut progress_started = false;
    let known_path = known.path().display().to_string();

    let result: Result<(String, [u8; 32]), Failure> = loop {
        let expected = expected_fp.clone().or_else(|| known.get(&opts.to));
        let attempt = async {
            // Our first authentication flight rides with TLS's Finished, our `Confirm` with the offer.
            let (auth, flight) = ClientAuth::start(&secret);
            let (mut tls, fp) = connect(&opts.to, expected.clone(), &known_path, &flight).await?;
            let ekm = exporter_of(tls.get_ref().1)?;
            let confirm = tokio::time::timeout(Duration::from_secs(30), auth.finish(&mut tls, ekm))
                .await
                .map_err(|_| TransportError::Timeout("authenticating"))??;
            Ok::<_, TransportError>((tls, fp, confirm))
        };
        let (tls, fp, confirm) = match attempt.await {
            Ok(ok) => ok,
            Err(e) if e.is_transient() => {
                let limit = if ever_connected {
                    opts.retry_for
                } else {
                    opts.connect_timeout
                };
                match retry_delay(&mut backoff, retrying_since, limit) {
                    Some(d) => {
                        reporter.info(&format!("{e}; retrying in {:.1}s", d.as_secs_f64()));
                        reporter.event(json!({"event": "retry", "error": e.to_string(), "delay_s": d.as_secs_f64()}));
                        tokio::time::sleep(d).await;
                        continue;
                    }
                    None => break Err(Failure::failed(format!("giving up: {e}"))),
                }
            }
            Err(e) => break Err(e.into()),
        };
        if expected.is_none() {
            known.remember(&opts.to, &fp)?;
            reporter.info(&format!(
                "receiver {} identified as {fp} (remembered in {known_path})",
                opts.to
            ));
        }
        if record.receiver_fingerprint.as_deref() != Some(fp.as_str()) {
            record.receiver_fingerprint = Some(fp.clone());
            store.put_outgoing(&record)?;
        }
        ever_connected = true;
        stats.connections += 1;
        let outcome = transfer_once(
            tls,
            confirm,
            &source,
            plan,
            &record,
            &store,
            &opts,
            reporter,
            &mut stats,
            started,
            &mut progress_started,
            fresh,
        )
        .await;
        fresh = false;
        match outcome {
            Ok(done) => break Ok(done),
            Err(AttemptError::Fatal(f)) => break Err(f),
            Err(AttemptError::NoUdp(why)) => match opts.protocol {
                DataPath::Udp { explicit: false } => {
                    reporter.info(&format!("{why}; falling back to TCP"));
                    reporter.event(json!({"event": "fallback", "protocol": "tcp", "reason": why}));
                    opts.protocol = DataPath::Tcp;
                    continue;
                }
                _ => {
                    break Err(Failure::failed(format!(
                        "{why} (--protocol udp was given; use --protocol tcp)"
                    )))
                }
            },
            Err(AttemptError::SourceChanged(index)) => {
                reporter.info(&format!(
                    "chunk {index} of {} differs from what the receiver verified earlier: starting a fresh session",
                    source.path().display()
                ));
                record.state = SessionState::Abandoned;
                store.put_outgoing(&record)?;
                record.id = SessionId::random();
                fresh = true;
                record.state = SessionState::Active;
                record.created_unix = unix_now();
                record.bytes_confirmed = 0;
                store.put_outgoing(&record)?;
                continue;
            }
            Err(AttemptError::Transient(e)) => {
                backoff.reset();
                retrying_since = Instant::now();
                match retry_delay(&mut backoff, retrying_since, opts.retry_for) {
                    Some(d) => {
                        reporter.info(&format!(
                            "connection lost ({e}); reconnecting in {:.1}s",
                            d.as_secs_f64()
                        ));
                        reporter.event(json!({"event": "retry", "error": e.to_string(), "delay_s": d.as_secs_f64()}));
                        tokio::time::sleep(d).await;
                    }
                    None => break Err(Failure::failed(format!("giving up: {e}"))),
                }
            }
        }
    };
    reporter.progress_finish();
    let seconds = started.elapsed().as_secs_f64();
    let (ok, sha_hex, final_name) = match &result {
        Ok((name, sha)) => (true, Some(hex::encode(sha)), Some(name.clone())),
        Err(_) => (false, None, None),
    };
    record.state = match &result {
        Ok(_) => SessionState::Completed,
        Err(f) if f.code == exit::AUTH || f.code == exit::USAGE => SessionState::Failed,
        Err(_) => SessionState::Interrupted,
    };
    record.updated_unix = unix_now();
    record.sha256_hex = sha_hex.clone();
    record.error = result.as_ref().err().map(|f| f.message.clone());
    record.bytes_confirmed = if ok {
        source.size()
    } else {
        stats.bytes_confirmed.max(record.bytes_confirmed)
    };
    let _ = store.put_outgoing(&record);
    // File bytes this run delivered (chunks verified in an earlier run do not count).
    let sent_bytes = if ok {
        source.size().saturating_sub(stats.bytes_skipped)
    } else {
        0
    };
    reporter.event(json!({
        "event": "summary",
        "session_id": record.id.to_hex(),
        "file": source.name(),
        "final_name": final_name,
        "bytes": source.size(),
        "seconds": seconds,
        "goodput_mbps": if seconds > 0.0 { sent_bytes as f64 * 8.0 / seconds / 1e6 } else { 0.0 },
        "protocol": opts.protocol.name(),
        "sha256": sha_hex,
        "ok": ok,
        "packets_sent": stats.udp.as_ref().map(|u| u.packets_sent + stats.udp_totals.0),
        "packets_retransmitted": stats.udp.as_ref().map(|u| u.packets_retransmitted + stats.udp_totals.1),
        "fec_recovered": stats.udp.as_ref().map(|u| u.fec_recovered),
        "loss_pct": stats.udp.as_ref().map(|u| rounded(u.loss * 100.0, 3)),
        "rtt_ms": stats.udp.as_ref().map(|u| rounded(u.srtt.unwrap_or_default().as_secs_f64() * 1e3, 3)),
        "parity": stats.udp.as_ref().map(|u| format!("{}+{}", u.data_shards, u.parity)),
        "rate_mbps": stats.udp.as_ref().map(|u| rounded(u.rate as f64 * 8.0 / 1e6, 3)),
        "chunks_total": plan.chunk_count(),
        "chunks_sent": stats.chunks_sent,
        "chunks_resent": stats.chunks_resent,
        "chunks_skipped": stats.chunks_skipped,
        "compressed_chunks": stats.compressed_chunks,
        "bytes_on_wire": stats.bytes_on_wire,
        "connections": stats.connections,
        "error": result.as_ref().err().map(|f| f.message.clone()),
    }));
    match result {
        Ok((name, sha)) => {
            reporter.info(&format!(
                "sent {} ({} bytes) as {name} in {seconds:.1}s, sha256 {}",
                source.name(),
                source.size(),
                hex::encode(sha)
            ));
            Ok(())
        }
        Err(f) => Err(f),
    }
}

fn retry_delay(backoff: &mut Backoff, since: Instant, limit: Duration) -> Option<Duration> {
    if since.elapsed() >= limit {
        return None;
    }
    backoff
        .next_delay(Instant::now(), rand::random::<f64>())
        .map(|d| d.min(limit.saturating_sub(since.elapsed())))
}

/// What the reader thread hands the network task.
enum ReadMsg {
    Begin(u32),
    Piece {
        raw_len: u32,
        compressed: bool,
        buf: Arc<PooledBuf>,
    },
    End(u32, [u8; 32]),
    /// A chunk the receiver already had, re-read: its current hash.
    Checked(u32, [u8; 32]),
    /// The whole file has been read once: its SHA-256.
    FileHash([u8; 32]),
    Failed(String),
}

/// Hashes the whole file on a thread of its own, fed the reader's buffers in file order.
struct FileHashThread {
    tx: std_mpsc::SyncSender<Arc<PooledBuf>>,
    handle: std::thread::JoinHandle<[u8; 32]>,
}

impl FileHashThread {
    fn start() -> Result<Self, String> {
        let (tx, rx) = std_mpsc::sync_channel::<Arc<PooledBuf>>(READ_AHEAD);
        let handle = std::thread::Builder::new()
            .name("trackshift-filehash".into())
            .spawn(move || {
                let mut h = Hasher::new();
                for buf in rx {
                    h.update(&buf);
                }
                h.finish()
            })
            .map_err(|e| format!("cannot start the hashing thread: {e}"))?;
        Ok(Self { tx, handle })
    }

    fn finish(self) -> Result<[u8; 32], String> {
        drop(self.tx);
        self.handle
            .join()
            .map_err(|_| "the hashing thread panicked".to_owned())
    }
}

/// Reads the file: one in-order pass (hashing everything, sending what the receiver lacks), then re-sends on
/// request. Runs on its own thread (with the whole-file hash on another) so hashing and compression stay off
/// the network task.
fn reader_thread(
    file: FileSource,
    plan: ChunkPlan,
    first_pass: Vec<FirstPass>,
    mode: CompressMode,
    out: mpsc::Sender<ReadMsg>,
    resend: std_mpsc::Receiver<u32>,
) {
    if let Err(e) = read_file(&file, plan, &first_pass, mode, &out, &resend) {
        let _ = out.blocking_send(ReadMsg::Failed(e));
    }
}

fn read_file(
    file: &dyn ChunkSource,
    plan: ChunkPlan,
    first_pass: &[FirstPass],
    mode: CompressMode,
    out: &mpsc::Sender<ReadMsg>,
    resend: &std_mpsc::Receiver<u32>,
) -> Result<(), String> {
    let stopped = || "stopped".to_owned();
    let mut compressor = PieceCompressor::new().map_err(|e| e.to_string())?;
    let pool = BufPool::new(DATA_PIECE);
    let packed_pool = BufPool::new(DATA_PIECE + DATA_PIECE / 64);
    let file_hash = FileHashThread::start()?;
    let mut read_chunk =
        |index: u32, send: bool, file_hash: Option<&FileHashThread>| -> Result<[u8; 32], String> {
            let (start, len) = (plan.offset(index), plan.len(index));
            let mut chunk_hasher = Hasher::new();
            let mut compress = None;
            if send {
                out.blocking_send(ReadMsg::Begin(index))
                    .map_err(|_| stopped())?;
            }
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(DATA_PIECE as u64) as usize;
                let mut buf = pool.get();
                buf.data_mut().resize(n, 0);
                file.read_exact_at(start + done, buf.data_mut())
                    .map_err(|e| e.to_string())?;
                chunk_hasher.update(&buf);
                let shared = Arc::new(buf);
                if let Some(fh) = file_hash {
                    fh.tx.send(shared.clone()).map_err(|_| stopped())?;
                }
                if send {
                    let use_zstd =
                        *compress.get_or_insert_with(|| compressor.should_compress(mode, &shared));
                    let packed = use_zstd.then(|| compressor.compress(&shared)).flatten();
                    let msg = match packed {
                        Some(packed) => {
                            let mut p = packed_pool.get();
                            p.data_mut().extend_from_slice(packed);
                            ReadMsg::Piece {
                                raw_len: n as u32,
                                compressed: true,
                                buf: Arc::new(p),
                            }
                        }
                        None => ReadMsg::Piece {
                            raw_len: n as u32,
                            compressed: false,
                            buf: shared,
                        },
                    };
                    out.blocking_send(msg).map_err(|_| stopped())?;
                }
                done += n as u64;
            }
            let sha = chunk_hasher.finish();
            if send {
                out.blocking_send(ReadMsg::End(index, sha))
                    .map_err(|_| stopped())?;
            }
            Ok(sha)
        };
    for (index, what) in first_pass.iter().enumerate() {
        let index = index as u32;
        match what {
            FirstPass::Send => {
                read_chunk(index, true, Some(&file_hash))?;
            }
            FirstPass::Check { .. } => {
                let sha = read_chunk(index, false, Some(&file_hash))?;
                out.blocking_send(ReadMsg::Checked(index, sha))
                    .map_err(|_| stopped())?;
            }
        }
    }
    let digest = file_hash.finish()?;
    out.blocking_send(ReadMsg::FileHash(digest))
        .map_err(|_| stopped())?;
    while let Ok(index) = resend.recv() {
        read_chunk(index, true, None)?;
    }
    Ok(())
}

/// One connection: offer, learn what the receiver has, stream the rest, wait for the verdict.
#[allow(clippy::too_many_arguments)]
async fn transfer_once(
    tls: trackshift_transport::ClientTls,
    confirm: Frame<'static>,
    source: &FileSource,
    plan: ChunkPlan,
    record: &OutgoingSession,
    store: &SessionStore,
    opts: &SendOptions,
    reporter: &mut Reporter,
    stats: &mut Stats,
    started: Instant,
    progress_started: &mut bool,
    fresh: bool,
) -> Result<(String, [u8; 32]), AttemptError> {
    let mut last_saved = Instant::now();
    let dcsp_secret = dcsp_secret_of(tls.get_ref().1)?;
    let peer_addr = tls.get_ref().0.peer_addr().map_err(|e| {
        AttemptError::Transient(TransportError::Io {
            context: "the receiver's address".into(),
            source: e,
        })
    })?;
    let (rd, wr) = split(tls);
    let mut reader = FrameReader::new(rd);
    let mut writer = FrameWriter::new(wr);
    // The authentication's last frame, then the offer: one flight.
    writer.send(&confirm).await?;
    writer
        .send(&Frame::Offer(Offer {
            session_id: record.id,
            file_name: source.name(),
            file_size: source.size(),
            chunk_size: plan.chunk_size(),
            mtime_ns: source.mtime_ns(),
        }))
        .await?;
    // With DCSP, `UdpStart` follows the offer at once (it does not depend on the answer): one round trip less
    // before the first datagram.
    let udp = match opts.protocol {
        DataPath::Udp { .. } => {
            let u = UdpLink {
                peer: peer_addr,
                dcsp_secret,
                conn_id: rand::random(),
                shard_size: crate::dcsp_send::shard_size_for(peer_addr),
            };
            writer
                .send(&Frame::UdpStart {
                    conn_id: u.conn_id,
                    shard_size: u.shard_size,
                    data_shards: opts.parity.data_shards(),
                    dcsp_version: trackshift_dcsp::VERSION,
                    streams: opts.streams,
                })
                .await?;
            Some(u)
        }
        DataPath::Tcp => None,
    };
    writer.flush().await?;
    // A new session has nothing at the receiver yet, so its datagrams need not wait for the answer: they leave
    // now, to the control port's number (where the receiver's plane listens, PROTOCOL.md §6.1), and the receiver
    // holds those that arrive before it has registered the connection. One round trip less before the first
    // datagram arrives.
    let early = match &udp {
        Some(link) if fresh => {
            let all = OutgoingTransfer::new(plan, &[])
                .map_err(|e| AttemptError::Fatal(Failure::failed(e.to_string())))?
                .first_pass();
            Some(UdpRun::start(
                link,
                peer_addr.port(),
                all,
                source,
                plan,
                opts,
            )?)
        }
        _ => None,
    };

    // Accept, then the verified list.
    let count = match reader.next().await? {
        Frame::Accept { verified_count } => verified_count as usize,
        Frame::Error { code, message } => return Err(peer_error(code, message)),
        Frame::FileDone {
            ok: true,
            sha256,
            final_name,
        } => {
            // The receiver completed this session before we heard so (we were interrupted at the very end).
            let ours =
                hash_whole_file(source).map_err(|e| AttemptError::Fatal(Failure::usage(e)))?;
            if ours == sha256 {
                return Ok((final_name.to_owned(), sha256));
            }
            return Err(AttemptError::SourceChanged(0));
        }
        f => {
            return Err(AttemptError::Fatal(Failure::failed(format!(
                "receiver sent {} instead of Accept",
                f.name()
            ))))
        }
    };
    let mut verified = Vec::with_capacity(count.min(plan.chunk_count() as usize));
    while verified.len() < count {
        match reader.next().await? {
            Frame::VerifiedList { entries } => verified.extend(verified_entries(entries)),
            Frame::Error { code, message } => return Err(peer_error(code, message)),
            f => {
                return Err(AttemptError::Fatal(Failure::failed(format!(
                    "receiver sent {} inside its verified list",
                    f.name()
                ))))
            }
        }
    }
    let mut transfer = OutgoingTransfer::new(plan, &verified).map_err(|e| {
        AttemptError::Fatal(Failure::failed(format!(
            "receiver's chunk list is invalid: {e}"
        )))
    })?;
    let base = transfer.bytes_verified();
    // Not new after all: the blocks already under way include chunks the receiver has; start over after
    // `UdpReady` with only the missing ones.
    let early = early.filter(|_| transfer.chunks_skipped == 0);
    if !stats.accepted_once {
        // What the receiver had when this run started (later connections also count this run's chunks).
        stats.accepted_once = true;
        stats.chunks_skipped = transfer.chunks_skipped;
        stats.bytes_skipped = base;
    }
    if !*progress_started {
        reporter.progress_start("sending", source.size(), base);
        *progress_started = true;
    }
    reporter.event(json!({"event": "accepted", "chunks_verified": transfer.chunks_skipped, "bytes_verified": base}));
    if let Some(link) = udp {
        return udp_stream(
            link, early, reader, writer, transfer, source, plan, record, store, opts, reporter,
            stats, started, base,
        )
        .await;
    }

    let (read_tx, mut read_rx) = mpsc::channel(READ_AHEAD);
    let (resend_tx, resend_rx) = std_mpsc::channel();
    let file = source
        .try_clone()
        .map_err(|e| AttemptError::Fatal(e.into()))?;
    let first_pass = transfer.first_pass();
    let mode = opts.compress;
    let reader_handle = std::thread::Builder::new()
        .name("trackshift-read".into())
        .spawn(move || reader_thread(file, plan, first_pass, mode, read_tx, resend_rx))
        .map_err(|e| {
            AttemptError::Fatal(Failure::failed(format!("cannot start reader thread: {e}")))
        })?;

    // Frames from the receiver arrive through a task of their own: reading a frame is not cancel-safe, so it
    // must not sit in the `select!` below.
    let (mut peer_rx, peer_task) = reader.pump();
    let mut file_hash: Option<[u8; 32]> = None;
    let mut wire_progress = 0u64;
    let mut file_end_sent = false;
    let mut reader_done = false;
    let mut chunk_compressed = false;
    let mut pace = opts.max_rate.map(|r| (r, tokio::time::Instant::now()));
    let mut last_heard = Instant::now();
    let outcome = loop {
        if !file_end_sent && transfer.is_complete() {
            if let Some(sha) = file_hash {
                writer.send(&Frame::FileEnd { sha256: sha }).await?;
                writer.flush().await?;
                file_end_sent = true;
                // No more re-sends: let the reader thread finish.
                drop_resend(&resend_tx);
            }
        }
        let silence_limit = if file_end_sent {
            FINAL_WAIT
        } else {
            PEER_SILENCE
        };
        let waiting_on_peer = reader_done || file_end_sent;
        tokio::select! {
            biased;
            msg = peer_rx.recv() => {
                last_heard = Instant::now();
                let (frame_type, body) = msg.unwrap_or(Err(TransportError::Closed))?;
                let frame = Frame::decode(frame_type, &body).map_err(TransportError::from)?;
                let progress = Progress { record, store, started, base, last_saved: &mut last_saved };
                match on_receiver_frame(frame, &mut transfer, &resend_tx, file_hash, source, progress, reporter, stats) {
                    Ok(PeerSaid::Continue) => {}
                    Ok(PeerSaid::Done(done)) => break Ok(done),
                    Err(e) => break Err(e),
                }
            }
            msg = read_rx.recv(), if !reader_done => {
                match msg {
                    None => { reader_done = true; }
                    Some(ReadMsg::Begin(index)) => {
                        writer.send(&Frame::ChunkBegin { index }).await?;
                        chunk_compressed = false;
                    }
                    Some(ReadMsg::Piece { raw_len, compressed, buf }) => {
                        if let Some((rate, next)) = &mut pace {
                            tokio::time::sleep_until(*next).await;
                            *next = (*next).max(tokio::time::Instant::now() - Duration::from_millis(50))
                                + Duration::from_secs_f64(buf.len() as f64 / *rate as f64);
                        }
                        // A receiver that stops acknowledging (gone without a reset) is caught by the socket's
                        // TCP_USER_TIMEOUT (see trackshift-transport), not by timing this write: on a lossy link
                        // one MiB can legitimately take minutes.
                        writer.send_data(raw_len, compressed, &buf).await?;
                        stats.bytes_on_wire += buf.len() as u64 + 10;
                        chunk_compressed |= compressed;
                        wire_progress += u64::from(raw_len);
                        reporter.bar_position(base + wire_progress);
                    }
                    Some(ReadMsg::End(index, sha)) => {
                        writer.send(&Frame::ChunkEnd { sha256: sha }).await?;
                        writer.flush().await?;
                        transfer.on_sent(index);
                        stats.chunks_sent += 1;
                        if chunk_compressed { stats.compressed_chunks += 1; }
                    }
                    Some(ReadMsg::Checked(index, sha)) => {
                        if transfer.check_skipped(index, sha).is_err() {
                            break Err(AttemptError::SourceChanged(index));
                        }
                    }
                    Some(ReadMsg::FileHash(sha)) => { file_hash = Some(sha); writer.flush().await?; }
                    Some(ReadMsg::Failed(e)) => break Err(AttemptError::Fatal(Failure::usage(e))),
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(5)), if waiting_on_peer => {
                if last_heard.elapsed() > silence_limit {
                    break Err(AttemptError::Transient(TransportError::Timeout("waiting for the receiver")));
                }
                writer.send(&Frame::KeepAlive).await?;
                writer.flush().await?;
            }
        }
    };
    peer_task.abort();
    drop(read_rx);
    drop(resend_tx);
    let _ = reader_handle.join();
    if outcome.is_ok() {
        let _ = writer.shutdown().await;
    }
    outcome
}

fn drop_resend(_tx: &std_mpsc::Sender<u32>) {
    // The sender half is dropped with the loop; nothing to do until then.
}

fn hash_whole_file(source: &dyn ChunkSource) -> Result<[u8; 32], String> {
    let size = source.size();
    let mut h = Hasher::new();
    let mut buf = vec![0u8; DATA_PIECE];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(DATA_PIECE as u64) as usize;
        source
            .read_exact_at(off, &mut buf[..n])
            .map_err(|e| e.to_string())?;
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(h.finish())
}

fn peer_error(code: ErrorCode, message: &str) -> AttemptError {
    let e = TransportError::Peer {
        code,
        message: message.to_owned(),
    };
    if e.is_transient() {
        AttemptError::Transient(e)
    } else {
        AttemptError::Fatal(e.into())
    }
}

/// Where DCSP goes, the secret its keys derive from (both from the control connection), and what `UdpStart`
/// announced.
struct UdpLink {
    peer: std::net::SocketAddr,
    dcsp_secret: [u8; 32],
    conn_id: u64,
    shard_size: u32,
}

/// A running DCSP data path: one plane (socket, thread, `DcspSender`) per stream, and the thread that reads
/// the file into them.
struct UdpRun {
    plane: crate::dcsp_send::Planes,
    udp_peer: std::net::SocketAddr,
    geometry: trackshift_dcsp::BlockGeometry,
    fail_rx: mpsc::UnboundedReceiver<crate::dcsp_send::PlaneFailure>,
    ev_rx: mpsc::Receiver<crate::dcsp_send::ReadEvent>,
    resend_tx: std_mpsc::Sender<u32>,
    reader_handle: std::thread::JoinHandle<()>,
    /// Chunks the first pass sends.
    to_send: usize,
}

impl UdpRun {
    /// Starts sending the chunks `first_pass` names to `port` on the receiver's address.
    fn start(
        link: &UdpLink,
        port: u16,
        first_pass: Vec<FirstPass>,
        source: &FileSource,
        plan: ChunkPlan,
        opts: &SendOptions,
    ) -> Result<Self, AttemptError> {
        use crate::dcsp_send::{reader_thread, DataPlane};
        let fatal = |m: String| AttemptError::Fatal(Failure::failed(m));
        let geometry = trackshift_dcsp::BlockGeometry::for_plan(
            &plan,
            link.shard_size,
            opts.parity.data_shards(),
        )
        .map_err(|e| fatal(e.to_string()))?;
        let udp_peer = std::net::SocketAddr::new(link.peer.ip(), port);
        let (fail_tx, fail_rx) = mpsc::unbounded_channel();
        // One data plane (socket, thread, DcspSender, rate controller) per stream; each paces at most its share
        // of --max-rate (bytes on the wire, DCSP's headers included).
        let rates = DelayRateFactory::new(opts.max_rate);
        let mut block_txs = Vec::new();
        let mut planes = Vec::new();
        for s in 0..opts.streams.max(1) {
            let (block_tx, block_rx) =
                std_mpsc::sync_channel(crate::dcsp_send::plane_queue_len(geometry.block_bytes()));
            block_txs.push(block_tx);
            planes.push(
                DataPlane::start(
                    udp_peer,
                    trackshift_dcsp::stream_conn_id(link.conn_id, s),
                    &link.dcsp_secret,
                    geometry,
                    opts.parity,
                    rates.build(s, opts.streams.max(1)),
                    block_rx,
                    fail_tx.clone(),
                )
                .map_err(|e| fatal(format!("cannot open a UDP socket: {e}")))?,
            );
        }
        let (ev_tx, ev_rx) = mpsc::channel(64);
        let (resend_tx, resend_rx) = std_mpsc::channel();
        let file = source
            .try_clone()
            .map_err(|e| AttemptError::Fatal(e.into()))?;
        let to_send = first_pass
            .iter()
            .filter(|p| matches!(p, FirstPass::Send))
            .count();
        let reader_handle = std::thread::Builder::new()
            .name("trackshift-read".into())
            .spawn(move || {
                reader_thread(
                    file, plan, geometry, first_pass, block_txs, ev_tx, resend_rx,
                )
            })
            .map_err(|e| fatal(format!("cannot start reader thread: {e}")))?;
        Ok(Self {
            plane: crate::dcsp_send::Planes(planes),
            udp_peer,
            geometry,
            fail_rx,
            ev_rx,
            resend_tx,
            reader_handle,
            to_send,
        })
    }
}

/// Reads the receiver's `UdpReady`: the UDP port its DCSP plane listens on.
async fn udp_ready(
    reader: &mut FrameReader<tokio::io::ReadHalf<trackshift_transport::ClientTls>>,
) -> Result<u16, AttemptError> {
    match tokio::time::timeout(Duration::from_secs(30), reader.next()).await {
        Ok(Ok(Frame::UdpReady { port })) => Ok(port),
        Ok(Ok(Frame::Error { message, .. })) => Err(AttemptError::NoUdp(format!(
            "the receiver cannot take DCSP: {message}"
        ))),
        Ok(Ok(f)) => Err(AttemptError::Fatal(Failure::failed(format!(
            "receiver sent {} instead of UdpReady",
            f.name()
        )))),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(AttemptError::Transient(TransportError::Timeout(
            "waiting for the receiver's UDP port",
        ))),
    }
}

/// Streams the chunks the receiver lacks over DCSP, with chunk hashes and verdicts on the control channel.
/// `early` is the data path a new session started before the receiver's answer (see `transfer_once`).
#[allow(clippy::too_many_arguments)]
async fn udp_stream(
    link: UdpLink,
    early: Option<UdpRun>,
    mut reader: FrameReader<tokio::io::ReadHalf<trackshift_transport::ClientTls>>,
    mut writer: FrameWriter<tokio::io::WriteHalf<trackshift_transport::ClientTls>>,
    mut transfer: OutgoingTransfer,
    source: &FileSource,
    plan: ChunkPlan,
    record: &OutgoingSession,
    store: &SessionStore,
    opts: &SendOptions,
    reporter: &mut Reporter,
    stats: &mut Stats,
    started: Instant,
    base: u64,
) -> Result<(String, [u8; 32]), AttemptError> {
    use crate::dcsp_send::{PlaneFailure, ReadEvent};
    let fatal = |m: String| AttemptError::Fatal(Failure::failed(m));
    let port = udp_ready(&mut reader).await?;
    let run = match early {
        Some(run) if run.udp_peer.port() == port => run,
        // The receiver's plane is not on the control port (PROTOCOL.md says it is): start over at its port.
        _ => UdpRun::start(&link, port, transfer.first_pass(), source, plan, opts)?,
    };
    let UdpRun {
        mut plane,
        udp_peer,
        geometry,
        mut fail_rx,
        mut ev_rx,
        resend_tx,
        reader_handle,
        to_send,
    } = run;
    let mut hashes_sent = std::collections::HashSet::new();
    let (mut peer_rx, peer_task) = reader.pump();
    let mut file_hash: Option<[u8; 32]> = None;
    let mut file_end_sent = false;
    let mut reader_done = false;
    let mut last_saved = Instant::now();
    let mut last_keepalive = Instant::now();
    let mut control_heard = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut ticks = 0u64;
    let outcome = loop {
        // The end is announced once every chunk went out (the receiver finishes when they all verified),
        // which saves a round trip over waiting for the last verdict.
        if !file_end_sent && (transfer.is_complete() || hashes_sent.len() >= to_send) {
            if let Some(sha) = file_hash {
                writer.send(&Frame::FileEnd { sha256: sha }).await?;
                writer.flush().await?;
                file_end_sent = true;
            }
        }
        tokio::select! {
            biased;
            msg = peer_rx.recv() => {
                control_heard = Instant::now();
                let (frame_type, body) = msg.unwrap_or(Err(TransportError::Closed))?;
                let frame = Frame::decode(frame_type, &body).map_err(TransportError::from)?;
                let progress = Progress { record, store, started, base, last_saved: &mut last_saved };
                match on_receiver_frame(frame, &mut transfer, &resend_tx, file_hash, source, progress, reporter, stats) {
                    Ok(PeerSaid::Continue) => {}
                    Ok(PeerSaid::Done(done)) => break Ok(done),
                    Err(e) => break Err(e),
                }
            }
            failure = fail_rx.recv() => match failure {
                Some(PlaneFailure::NoAnswer) => break Err(AttemptError::NoUdp(format!(
                    "no UDP answer from {udp_peer} within {} s (is UDP blocked on the way?)",
                    crate::dcsp_send::UDP_PROBE.as_secs()
                ))),
                Some(PlaneFailure::Silent) => break Err(AttemptError::Transient(TransportError::Timeout("waiting for the receiver's UDP acknowledgements"))),
                Some(PlaneFailure::Fatal(e)) => break Err(fatal(format!("DCSP: {e}"))),
                None => {}
            },
            ev = ev_rx.recv(), if !reader_done => match ev {
                Some(ReadEvent::ChunkHash(index, sha256)) => {
                    hashes_sent.insert(index);
                    writer.send(&Frame::ChunkHash { index, sha256 }).await?;
                    writer.flush().await?;
                    transfer.on_sent(index);
                    stats.chunks_sent += 1;
                }
                Some(ReadEvent::Checked(index, sha)) => {
                    if transfer.check_skipped(index, sha).is_err() {
                        break Err(AttemptError::SourceChanged(index));
                    }
                }
                Some(ReadEvent::FileHash(sha)) => file_hash = Some(sha),
                Some(ReadEvent::Failed(e)) => break Err(AttemptError::Fatal(Failure::usage(e))),
                None => reader_done = true,
            },
            _ = tick.tick() => {
                let u = plane.stats();
                let acked = (u.blocks_acked * geometry.block_bytes()).min(source.size().saturating_sub(base));
                reporter.bar_position(base + acked);
                reporter.bar_message(&format!(
                    "{:.0} Mbit/s, loss {:.1}%, rtt {:.0} ms, parity {}+{}",
                    u.rate as f64 * 8.0 / 1e6,
                    u.loss * 100.0,
                    u.srtt.unwrap_or_default().as_secs_f64() * 1e3,
                    u.data_shards,
                    u.parity
                ));
                ticks += 1;
                if ticks.is_multiple_of(4) {
                    reporter.event(json!({
                        "event": "dcsp", "rate_mbps": rounded(u.rate as f64 * 8.0 / 1e6, 3),
                        "loss_pct": rounded(u.loss * 100.0, 3),
                        "rtt_ms": rounded(u.srtt.unwrap_or_default().as_secs_f64() * 1e3, 3),
                        "parity": format!("{}+{}", u.data_shards, u.parity), "packets_sent": u.packets_sent,
                        "packets_retransmitted": u.packets_retransmitted, "fec_recovered": u.fec_recovered,
                        "phase": u.phase,
                    }));
                }
                if last_keepalive.elapsed() >= Duration::from_secs(5) {
                    last_keepalive = Instant::now();
                    writer.send(&Frame::KeepAlive).await?;
                    writer.flush().await?;
                }
                // The receiver says something at least every CONTROL_KEEPALIVE; a control connection silent much
                // longer is dead (e.g. our address changed under it): reconnect and resume at once instead of
                // waiting for TCP to give up.
                if control_heard.elapsed() >= CONTROL_SILENCE {
                    break Err(AttemptError::Transient(TransportError::Timeout(
                        "waiting for the receiver on the control connection",
                    )));
                }
            }
        }
    };
    plane.stop();
    let u = plane.stats();
    if let Some(prev) = stats.udp.take() {
        stats.udp_totals.0 += prev.packets_sent;
        stats.udp_totals.1 += prev.packets_retransmitted;
    }
    stats.bytes_on_wire += u.bytes_sent;
    stats.udp = Some(u);
    peer_task.abort();
    drop(ev_rx);
    drop(resend_tx);
    let _ = tokio::task::block_in_place(|| reader_handle.join());
    if outcome.is_ok() {
        let _ = writer.shutdown().await;
    }
    outcome
}

/// What the sender needs to record and show progress.
struct Progress<'a> {
    record: &'a OutgoingSession,
    store: &'a SessionStore,
    started: Instant,
    base: u64,
    last_saved: &'a mut Instant,
}

/// What a frame from the receiver means for the transfer.
enum PeerSaid {
    Continue,
    /// The receiver confirmed the whole file: its final name and SHA-256.
    Done((String, [u8; 32])),
}

/// Handles the receiver's verdicts (chunk done or failed, file done), its errors and keep-alives; shared by
/// the TCP and DCSP paths.
#[allow(clippy::too_many_arguments)]
fn on_receiver_frame(
    frame: Frame<'_>,
    transfer: &mut OutgoingTransfer,
    resend_tx: &std_mpsc::Sender<u32>,
    file_hash: Option<[u8; 32]>,
    source: &FileSource,
    p: Progress<'_>,
    reporter: &mut Reporter,
    stats: &mut Stats,
) -> Result<PeerSaid, AttemptError> {
    let fatal = |m: String| AttemptError::Fatal(Failure::failed(m));
    match frame {
        Frame::ChunkDone { index, ok } => {
            transfer
                .on_chunk_done(index, ok)
                .map_err(|e| fatal(format!("receiver: {e}")))?;
            if !ok {
                reporter.info(&format!(
                    "chunk {index} failed verification at the receiver; sending it again"
                ));
                let _ = resend_tx.send(index);
                stats.chunks_resent += 1;
            }
            stats.bytes_confirmed = transfer.bytes_verified();
            if p.last_saved.elapsed() >= PROGRESS_SAVE_EVERY {
                // So `trackshift status` on the sender shows progress; the receiver's record is the
                // authoritative one, so a failure here only costs the display.
                *p.last_saved = Instant::now();
                let mut progress = p.record.clone();
                progress.bytes_confirmed = stats.bytes_confirmed;
                progress.updated_unix = unix_now();
                let _ = p.store.put_outgoing(&progress);
            }
            reporter.progress(stats.bytes_confirmed, source.size(), p.started, p.base);
            Ok(PeerSaid::Continue)
        }
        Frame::FileDone {
            ok,
            sha256,
            final_name,
        } => {
            if !ok {
                return Err(fatal(format!(
                    "the receiver's whole-file SHA-256 {} does not match; the session was discarded, re-run to send again",
                    hex::encode(sha256)
                )));
            }
            match file_hash {
                Some(ours) if ours == sha256 => Ok(PeerSaid::Done((final_name.to_owned(), sha256))),
                Some(_) => Err(fatal(
                    "receiver confirmed a different SHA-256 than the source's".into(),
                )),
                // Receiver had the whole file already (completed earlier): trust only a match.
                None => {
                    let ours = hash_whole_file(source)
                        .map_err(|e| AttemptError::Fatal(Failure::usage(e)))?;
                    if ours == sha256 {
                        Ok(PeerSaid::Done((final_name.to_owned(), sha256)))
                    } else {
                        Err(AttemptError::SourceChanged(0))
                    }
                }
            }
        }
        Frame::Error { code, message } => Err(peer_error(code, message)),
        Frame::KeepAlive => Ok(PeerSaid::Continue),
        f => Err(fatal(format!(
            "receiver sent an unexpected {} frame",
            f.name()
        ))),
    }
}

/// `x` rounded to `places` decimals, for JSON figures people read (no `1.4e-62` loss).
fn rounded(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}
