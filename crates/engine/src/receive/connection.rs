//! One authenticated connection at the receiver: the driver of its `RecvSession`. It reads frames (on a task of
//! its own, since reading a frame is not cancel-safe), feeds them to the session, carries out what the session
//! asks (look the offer up in the store, start a writer, finish the file), relays the writer's verdicts, and
//! records and reports how the transfer ended.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{split, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use trackshift_dcsp::{
    stream_conn_id, BlockGeometry, DcspReceiver, DirectionKeys, ReceiverConfig, ReceiverStats,
    Role, StreamShare,
};
use trackshift_proto::frame::{CHUNK_LIST_VERSION, DATA_PIECE};
use trackshift_proto::session::{RecvAction, RecvConfig, RecvOutcome, RecvSession};
use trackshift_proto::{ChunkMap, ChunkPlan, ErrorCode, Frame, Incoming, SessionId};
use trackshift_storage::{
    check_output_dir, ensure_space, unix_now, validate_file_name, IncomingSession, PartialFile,
    SessionState,
};
use trackshift_transport::{FrameReader, FrameWriter, ServerTls, TransportError};

use super::dcsp_plane::{ConnRelays, UdpPlane};
use super::dcsp_writer::{self, DcspFeed, DcspWriterMsg};
use super::relayed::RelaySession;
use super::tcp_writer::{self, TcpOp, TCP_WRITER_QUEUE};
use super::verify::{Destination, FileClaim, WriterEvent, WriterJob};
use super::{claim_session, BusyGuard, ConnOutcome, Ctx};
use crate::error::{storage_code, ErrorKind, ErrorReply};
use crate::event::{mbps, Event, ReceiveSummary, ReceiverFigures, SummaryCore};
use crate::pool::{BufPool, PooledBuf};

/// After our last word (`FileDone`, or an `Error`), how long to keep reading what the sender still sends (a
/// keep-alive, the `UdpStart` behind its offer) until it closes: closing with unread data would reset the
/// connection, and a reset can destroy our last frame before the sender has read it (seen on the `lossy`
/// profile: a `receive --once` that exited at once left its sender retrying a receiver that had the file).
const CLOSE_DRAIN: Duration = Duration::from_secs(3);
/// Frames read ahead of the conversation (each at most one 1 MiB piece).
const FRAME_QUEUE: usize = 4;
/// Room in a frame buffer beyond the largest piece: the `Data` frame's own header fields.
const FRAME_SLACK: usize = 64;
/// Most bytes one transfer's DCSP receivers may hold in incomplete blocks (split over its streams).
const MAX_ASSEMBLY_BYTES: usize = 96 * 1024 * 1024;
/// Most DCSP streams one transfer may use: the most `send --streams` asks for.
const MAX_DCSP_STREAMS: u8 = 64;
/// Most block numbers, summed over a transfer's streams, its DCSP receivers keep one bit each for (16 MiB): a
/// 1 TB file in the default 64-shard blocks of a 1500-byte path over 8 streams needs 93 million. Tiny blocks or
/// hundreds of streams would make a sender with the secret cost the receiver gigabytes and minutes of CPU.
const MAX_BLOCK_BITS: u64 = 1 << 27;

type Writer = FrameWriter<WriteHalf<ServerTls>>;
type FrameRead = Result<(u8, PooledBuf), TransportError>;

/// What authenticating established about a connection.
#[derive(Debug, Clone)]
pub(super) struct Link {
    pub(super) peer: SocketAddr,
    /// The secret this connection's DCSP keys derive from.
    pub(super) dcsp_secret: [u8; 32],
    /// The round trip measured while authenticating (our flight out, the sender's `Confirm` back).
    pub(super) control_rtt: Duration,
    /// The control protocol version agreed in `Hello`.
    pub(super) version: u16,
    /// Dialled through a relay of this session's path (`peer` is then the relay).
    pub(super) relay: Option<Arc<RelaySession>>,
}

/// Runs the conversation on an authenticated connection.
pub(super) async fn converse(ctx: &Ctx, tls: ServerTls, link: Link) -> ConnOutcome {
    let Link {
        peer,
        dcsp_secret,
        control_rtt,
        version,
        relay,
    } = link;
    let (rd, wr) = split(tls);
    let (frames, reader_task) = spawn_reader(rd);
    let (events_tx, events) = mpsc::unbounded_channel();
    let mut conn = Connection {
        ctx,
        peer,
        dcsp_secret,
        control_rtt,
        version,
        relay,
        session: RecvSession::new(
            RecvConfig {
                dcsp_version: trackshift_dcsp::VERSION,
                protocol_version: version,
            },
            Instant::now(),
        ),
        writer: FrameWriter::new(wr),
        frames,
        events,
        events_tx,
        transfer: None,
        ended: None,
        out: Vec::new(),
    };
    let outcome = conn.run().await;
    reader_task.abort();
    outcome
}

/// Reads frames into pooled buffers and hands them over; ends after the first error.
fn spawn_reader(rd: ReadHalf<ServerTls>) -> (mpsc::Receiver<FrameRead>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(FRAME_QUEUE);
    let task = tokio::spawn(async move {
        let pool = BufPool::new(DATA_PIECE + FRAME_SLACK);
        let mut reader = FrameReader::new(rd);
        loop {
            let mut buf = pool.get();
            let r = reader.next_into(buf.data_mut()).await.map(|t| (t, buf));
            let failed = r.is_err();
            if tx.send(r).await.is_err() || failed {
                return;
            }
        }
    });
    (rx, task)
}

/// The transfer this connection accepted.
struct Transfer<'a> {
    record: IncomingSession,
    plan: ChunkPlan,
    _guard: BusyGuard<'a>,
    cancel: Arc<tokio::sync::Notify>,
    started: Instant,
    /// Chunks verified before this connection (handed to the writer).
    verified: ChunkMap,
    /// The partial file, until a writer takes it.
    part: Option<PartialFile>,
    data: Option<DataPath>,
    /// File bytes verified on this connection.
    bytes_now: u64,
    final_path: Option<PathBuf>,
}

/// The running writer and what feeds it.
enum DataPath {
    Tcp {
        ops: mpsc::Sender<TcpOp>,
        writer: std::thread::JoinHandle<()>,
    },
    Dcsp {
        msgs: SyncSender<DcspWriterMsg>,
        writer: std::thread::JoinHandle<()>,
        plane: UdpPlane,
        conn_id: u64,
        stats: Vec<Arc<Mutex<ReceiverStats>>>,
    },
}

struct Connection<'a> {
    ctx: &'a Ctx,
    peer: SocketAddr,
    dcsp_secret: [u8; 32],
    /// The round trip measured while authenticating (our flight out, the sender's `Confirm` back).
    control_rtt: Duration,
    /// The control protocol version agreed in `Hello`.
    version: u16,
    relay: Option<Arc<RelaySession>>,
    session: RecvSession,
    writer: Writer,
    frames: mpsc::Receiver<FrameRead>,
    events: mpsc::UnboundedReceiver<WriterEvent>,
    /// Kept so the writer's channel never closes under the loop (a writer gone quiet is a writer done).
    events_tx: mpsc::UnboundedSender<WriterEvent>,
    transfer: Option<Transfer<'a>>,
    ended: Option<RecvOutcome>,
    out: Vec<u8>,
}

impl<'a> Connection<'a> {
    async fn run(&mut self) -> ConnOutcome {
        let outcome = loop {
            self.carry_out().await;
            if let Some(outcome) = self.ended.take() {
                break outcome;
            }
            self.flush().await;
            let deadline = self.session.poll_timeout();
            let cancel = self.transfer.as_ref().map(|t| t.cancel.clone());
            tokio::select! {
                biased;
                Some(ev) = self.events.recv() => self.on_writer_event(ev),
                frame = self.frames.recv() => self.on_frame(frame).await,
                _ = notified(cancel) => self.session.connection_lost(),
                _ = crate::sleep_until(deadline) => self.session.handle_timeout(Instant::now()),
            }
        };
        self.flush().await;
        self.drain(&outcome).await;
        let udp = self.stop_data().await;
        self.conclude(outcome, udp)
    }

    /// Writes what the session queued; a failed write means the connection is gone.
    async fn flush(&mut self) {
        self.out.clear();
        if !self.session.poll_transmit(&mut self.out) {
            return;
        }
        let sent = async {
            self.writer.send_raw(&self.out).await?;
            self.writer.flush().await
        };
        if sent.await.is_err() {
            self.session.connection_lost();
        }
    }

    /// Carries out the session's actions until it has none.
    async fn carry_out(&mut self) {
        while let Some(action) = self.session.poll_action() {
            match action {
                RecvAction::Offered {
                    session_id,
                    file_name,
                    plan,
                    mtime_ns,
                } => self.offered(session_id, file_name, plan, mtime_ns).await,
                RecvAction::StartTcp => self.start_tcp(),
                RecvAction::StartDcsp {
                    conn_id,
                    shard_size,
                    data_shards,
                    streams,
                } => self.start_dcsp(conn_id, shard_size, data_shards, streams),
                RecvAction::FinishFile {
                    expected,
                    chunk_list,
                } => {
                    let claim = FileClaim {
                        sha256: expected,
                        chunk_list,
                    };
                    self.finish_file(claim).await
                }
                RecvAction::Finished(outcome) => self.ended = Some(outcome),
                _ => {}
            }
        }
    }

    async fn on_frame(&mut self, frame: Option<FrameRead>) {
        let (frame_type, body) = match frame {
            Some(Ok(f)) => f,
            Some(Err(e @ (TransportError::Wire(_) | TransportError::Protocol(_)))) => {
                return self.session.fail(ErrorCode::Protocol, &e.to_string())
            }
            Some(Err(_)) | None => return self.session.connection_lost(),
        };
        let (incoming, compressed) = match Frame::decode(frame_type, &body) {
            Ok(frame) => {
                let compressed = matches!(
                    frame,
                    Frame::Data {
                        compressed: true,
                        ..
                    }
                );
                (
                    self.session.handle_frame(Instant::now(), &frame),
                    compressed,
                )
            }
            Err(e) => return self.session.fail(ErrorCode::Protocol, &e.to_string()),
        };
        // What the frame asked (a writer to start) comes before what it carries.
        self.carry_out().await;
        if self.ended.is_none() && incoming != Incoming::Nothing {
            self.hand_to_writer(incoming, compressed, body).await;
        }
    }

    /// Hands the writer what a frame said: a chunk's start, a piece, or the hash to verify a chunk against.
    async fn hand_to_writer(&mut self, incoming: Incoming, compressed: bool, body: PooledBuf) {
        let Some(data) = self.transfer.as_ref().and_then(|t| t.data.as_ref()) else {
            return;
        };
        let sent = match (data, incoming) {
            (DataPath::Tcp { ops, .. }, incoming) => {
                let op = match incoming {
                    Incoming::ChunkBegin { index, offset } => TcpOp::Begin { index, offset },
                    Incoming::ChunkResume {
                        index,
                        offset,
                        from,
                    } => TcpOp::Resume {
                        index,
                        offset,
                        from,
                    },
                    Incoming::Data { offset, raw_len } => TcpOp::Data {
                        offset,
                        raw_len,
                        compressed,
                        body,
                    },
                    Incoming::ChunkEnd { index, expected } => TcpOp::End { index, expected },
                    _ => return,
                };
                // The writer's queue is short; waiting for room here is the back-pressure we want.
                ops.send(op).await.is_ok()
            }
            (DataPath::Dcsp { msgs, .. }, Incoming::ChunkEnd { index, expected }) => {
                let msg = DcspWriterMsg::ChunkHash(index, expected);
                tokio::task::block_in_place(|| msgs.send(msg)).is_ok()
            }
            (DataPath::Dcsp { .. }, _) => true,
        };
        if !sent {
            self.session
                .fail(ErrorCode::Internal, "the writer thread stopped");
        }
    }

    fn on_writer_event(&mut self, ev: WriterEvent) {
        match ev {
            WriterEvent::ChunkDone { index, ok, len } => {
                if let Some(t) = self.transfer.as_mut().filter(|_| ok) {
                    t.bytes_now += len;
                }
                self.session.chunk_verified(index, ok);
            }
            WriterEvent::FileDone { sha, final_path } => {
                let name = final_path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_owned);
                if let Some(t) = self.transfer.as_mut() {
                    let name = name.unwrap_or_else(|| t.record.file_name.clone());
                    t.final_path = Some(final_path);
                    self.session.file_in_place(&name, sha);
                }
            }
            WriterEvent::FileMismatch { sha } => self.session.file_mismatch(sha),
            WriterEvent::Fatal { code, message } => self.session.fail(code, &message),
        }
    }

    /// The offer: claim the session, look it up, check the space, open the partial file, and answer.
    async fn offered(&mut self, id: SessionId, name: String, plan: ChunkPlan, mtime_ns: i64) {
        if let Err(e) = validate_file_name(&name) {
            return self.session.refuse(ErrorCode::BadName, &e.to_string());
        }
        if let Some(r) = self.relay.as_ref().filter(|r| r.session_id != id) {
            let message = format!(
                "this connection came through the relays of session {}, not {id}",
                r.session_id
            );
            return self.session.refuse(ErrorCode::Protocol, &message);
        }
        let guard = match claim_session(self.ctx, id).await {
            Ok(g) => g,
            Err((code, message)) => return self.session.refuse(code, &message),
        };
        match self.open_session(id, &name, plan, mtime_ns) {
            Ok(Opened::Complete { sha, final_name }) => {
                self.session.already_complete(sha, &final_name)
            }
            Ok(Opened::Resumable {
                record,
                verified,
                partial,
                part,
            }) => {
                self.session.accept(Instant::now(), &verified, &partial);
                let mut map = ChunkMap::new(plan.chunk_count());
                for (i, _) in &verified {
                    map.insert(*i);
                }
                self.ctx.sink.event(&Event::SessionStart {
                    session_id: id.to_hex(),
                    file: name,
                    bytes: plan.file_size(),
                    peer: self.peer.to_string(),
                    chunks_verified: verified.len(),
                });
                let cancel = guard.cancel.clone();
                self.transfer = Some(Transfer {
                    record,
                    plan,
                    _guard: guard,
                    cancel,
                    started: Instant::now(),
                    verified: map,
                    part: Some(part),
                    data: None,
                    bytes_now: 0,
                    final_path: None,
                });
            }
            Err((code, message)) => self.session.refuse(code, &message),
        }
    }

    /// Finds or creates the session's record, checks the free space and opens the partial file.
    fn open_session(
        &self,
        id: SessionId,
        name: &str,
        plan: ChunkPlan,
        mtime_ns: i64,
    ) -> Result<Opened, ErrorReply> {
        let store = &self.ctx.store;
        let store_err = |e: trackshift_storage::StorageError| (storage_code(&e), e.to_string());
        let mut record = match store.incoming(&id).map_err(store_err)? {
            Some(rec)
                if rec.file_name != name
                    || rec.size != plan.file_size()
                    || rec.chunk_size != plan.chunk_size() =>
            {
                return Err((
                    ErrorCode::SessionMismatch,
                    format!("session {id} belongs to another file ({})", rec.file_name),
                ));
            }
            // The sender missed our confirmation (it was interrupted at the very end): confirm again.
            Some(rec) if rec.state == SessionState::Completed => {
                return Ok(Opened::completed(&rec))
            }
            Some(rec) => rec,
            None => {
                check_output_dir(&self.ctx.output_dir).map_err(store_err)?;
                self.new_record(id, name, plan, mtime_ns)
            }
        };
        let verified: Vec<(u32, [u8; 32])> = store
            .verified_chunks(&id)
            .map_err(store_err)?
            .into_iter()
            .filter(|(i, _)| plan.contains(*i))
            .collect();
        let verified_bytes: u64 = verified.iter().map(|(i, _)| plan.len(*i)).sum();
        // What the partial file holds already (verified chunks, and the prefixes of unfinished ones that a
        // resume keeps) needs no new space; counting only the verified chunks refused a resume on a disk with
        // just room for the file.
        let on_disk = PartialFile::bytes_on_disk(&record.output_dir, &id).max(verified_bytes);
        if let Err(e) = ensure_space(&record.output_dir, plan.file_size().saturating_sub(on_disk)) {
            record.state = SessionState::Interrupted;
            record.error = Some(e.to_string());
            let _ = store.put_incoming(&record);
            return Err(store_err(e));
        }
        let part =
            PartialFile::open(&record.output_dir, &id, plan.file_size()).map_err(store_err)?;
        record.state = SessionState::Active;
        record.peer = self.peer.to_string();
        record.updated_unix = unix_now();
        record.error = None;
        store.put_incoming(&record).map_err(store_err)?;
        let partial = store.partial_chunks(&id).map_err(store_err)?;
        Ok(Opened::Resumable {
            record,
            verified,
            partial,
            part,
        })
    }

    fn new_record(
        &self,
        id: SessionId,
        name: &str,
        plan: ChunkPlan,
        mtime_ns: i64,
    ) -> IncomingSession {
        IncomingSession {
            id,
            file_name: name.to_owned(),
            size: plan.file_size(),
            chunk_size: plan.chunk_size(),
            chunk_count: plan.chunk_count(),
            source_mtime_ns: i128::from(mtime_ns),
            output_dir: self.ctx.output_dir.clone(),
            peer: self.peer.to_string(),
            state: SessionState::Active,
            created_unix: unix_now(),
            updated_unix: unix_now(),
            final_path: None,
            sha256_hex: None,
            error: None,
        }
    }

    /// What a writer of the accepted transfer needs (the partial file moves into it); `resume`: the DCSP
    /// chunks it picks up after their first bytes.
    fn writer_job(&mut self, resume: BTreeMap<u32, u64>) -> Option<WriterJob> {
        let t = self.transfer.as_mut()?;
        Some(WriterJob {
            plan: t.plan,
            part: t.part.take()?,
            verified: t.verified.clone(),
            resume,
            dest: Destination {
                id: t.record.id,
                output_dir: t.record.output_dir.clone(),
                name: t.record.file_name.clone(),
                size: t.plan.file_size(),
            },
            store: self.ctx.store.clone(),
            events: self.events_tx.clone(),
            whole_file_hash: self.version < CHUNK_LIST_VERSION,
            verify: self.ctx.verify,
        })
    }

    fn start_tcp(&mut self) {
        let Some(job) = self.writer_job(BTreeMap::new()) else {
            return;
        };
        let (ops, rx) = mpsc::channel(TCP_WRITER_QUEUE);
        match tcp_writer::spawn(job, rx) {
            Ok(writer) => self.set_data(DataPath::Tcp { ops, writer }),
            Err(e) => self.session.fail(ErrorCode::Internal, &e),
        }
    }

    fn start_dcsp(&mut self, conn_id: u64, shard_size: u32, data_shards: u8, streams: u8) {
        let Some(plane) = self.ctx.udp.clone() else {
            return self.session.refuse(
                ErrorCode::Protocol,
                "this receiver has no UDP socket (see its log); use --protocol tcp",
            );
        };
        let Some(t) = self.transfer.as_ref() else {
            return;
        };
        let geometry = match BlockGeometry::for_plan(&t.plan, shard_size, data_shards) {
            Ok(g) => g,
            Err(e) => return self.session.refuse(ErrorCode::Protocol, &e.to_string()),
        };
        let bits = u64::from(streams) * u64::from(geometry.block_limit());
        if streams > MAX_DCSP_STREAMS || bits > MAX_BLOCK_BITS {
            return self.session.refuse(
                ErrorCode::Protocol,
                &format!(
                    "{streams} streams of {} blocks of {} bytes are more than this receiver keeps track of (at most {MAX_DCSP_STREAMS} streams, {MAX_BLOCK_BITS} block numbers in all): use larger shards or fewer streams",
                    geometry.block_limit(),
                    geometry.block_bytes()
                ),
            );
        }
        let skip_chunks: Vec<u32> = (0..t.plan.chunk_count())
            .filter(|c| t.verified.get(*c))
            .collect();
        // What the sender will not send again of the chunks this receiver holds the start of.
        let resume: BTreeMap<u32, u64> = self
            .session
            .partial()
            .iter()
            .map(|&(c, have)| (c, geometry.resume_point(c, have)))
            .filter(|&(_, restart)| restart > 0)
            .collect();
        let resume_list: Vec<(u32, u64)> = resume.iter().map(|(&c, &r)| (c, r)).collect();
        let Some(job) = self.writer_job(resume) else {
            return;
        };
        let (msgs, rx) = dcsp_writer::writer_channel();
        let spare = crate::pool::SpareBufs::default();
        let mut stats = Vec::with_capacity(usize::from(streams));
        let relays = ConnRelays {
            binds: self.relay.as_ref().map(|r| r.binds()).unwrap_or_default(),
            used: self.relay.as_ref().map(|r| r.used.clone()),
        };
        for s in 0..streams {
            let id = stream_conn_id(conn_id, s);
            let config = ReceiverConfig {
                conn_id: id,
                keys: DirectionKeys::derive(&self.dcsp_secret, id, Role::Receiver),
                geometry,
                skip_chunks: skip_chunks.clone(),
                max_assembly_bytes: MAX_ASSEMBLY_BYTES / usize::from(streams),
                stream: StreamShare {
                    index: s,
                    count: streams,
                },
            };
            // Marking the blocks it need not wait for takes a moment on a huge file: off the async workers.
            let receiver = tokio::task::block_in_place(|| {
                let mut r = DcspReceiver::new(config, Instant::now());
                r.resume_chunks(&resume_list);
                r
            });
            let st = Arc::new(Mutex::new(ReceiverStats::default()));
            plane.register(
                id,
                receiver,
                msgs.clone(),
                st.clone(),
                spare.clone(),
                relays.clone(),
            );
            stats.push(st);
        }
        let feed = DcspFeed {
            plane: plane.clone(),
            conn_id,
            streams,
            spare,
        };
        // Through a relay the sender's datagrams go to the relay's port: the one this connection came from.
        let port = match self.relay {
            Some(_) => self.peer.port(),
            None => plane.port(),
        };
        match dcsp_writer::spawn(job, feed, rx) {
            Ok(writer) => {
                self.set_data(DataPath::Dcsp {
                    msgs,
                    writer,
                    plane,
                    conn_id,
                    stats,
                });
                self.session.dcsp_ready(Instant::now(), port);
            }
            Err(e) => {
                unregister(&plane, conn_id, stats.len());
                self.session.fail(ErrorCode::Internal, &e);
            }
        }
    }

    fn set_data(&mut self, data: DataPath) {
        if let Some(t) = self.transfer.as_mut() {
            t.data = Some(data);
        }
    }

    async fn finish_file(&mut self, claim: FileClaim) {
        let Some(data) = self.transfer.as_ref().and_then(|t| t.data.as_ref()) else {
            return;
        };
        let sent = match data {
            DataPath::Tcp { ops, .. } => ops.send(TcpOp::Finish(claim)).await.is_ok(),
            DataPath::Dcsp { msgs, .. } => {
                let msg = DcspWriterMsg::Finish(claim);
                tokio::task::block_in_place(|| msgs.send(msg)).is_ok()
            }
        };
        if !sent {
            self.session
                .fail(ErrorCode::Internal, "the writer thread stopped");
        }
    }

    /// After our last word, closes our side and reads on (discarding) until the sender closes its side, for at
    /// most [`CLOSE_DRAIN`], so the last frame reaches the sender before the connection goes.
    async fn drain(&mut self, outcome: &RecvOutcome) {
        if matches!(outcome, RecvOutcome::Dropped) {
            return;
        }
        let _ = self.writer.shutdown().await;
        let frames = &mut self.frames;
        let _ = tokio::time::timeout(CLOSE_DRAIN, async {
            while let Some(Ok(_)) = frames.recv().await {}
        })
        .await;
    }

    /// Stops the writer (and the DCSP streams) and waits for them; the DCSP counters, summed.
    async fn stop_data(&mut self) -> Option<ReceiverStats> {
        let data = self.transfer.as_mut().and_then(|t| t.data.take())?;
        match data {
            DataPath::Tcp { ops, writer } => {
                drop(ops);
                let _ = tokio::task::spawn_blocking(move || writer.join()).await;
                None
            }
            DataPath::Dcsp {
                msgs,
                writer,
                plane,
                conn_id,
                stats,
            } => {
                tokio::task::block_in_place(|| unregister(&plane, conn_id, stats.len()));
                drop(msgs);
                let _ = tokio::task::spawn_blocking(move || writer.join()).await;
                let mut total = ReceiverStats::default();
                for st in &stats {
                    total += st.lock().unwrap_or_else(|p| p.into_inner()).clone();
                }
                Some(total)
            }
        }
    }

    /// Records how the transfer ended and reports it (a summary, or an interruption).
    fn conclude(&mut self, outcome: RecvOutcome, udp: Option<ReceiverStats>) -> ConnOutcome {
        let conn_outcome = match &outcome {
            RecvOutcome::Completed { .. } | RecvOutcome::AlreadyComplete => ConnOutcome::Completed,
            RecvOutcome::Mismatch { sha256 } => ConnOutcome::Failed(
                ErrorKind::Failed,
                format!(
                    "the whole file hashed to {}, not what the sender announced",
                    hex::encode(sha256)
                ),
            ),
            RecvOutcome::Failed {
                code: ErrorCode::Busy,
                ..
            } => ConnOutcome::Dropped,
            RecvOutcome::Failed { code, message } => {
                ConnOutcome::Failed(ErrorKind::of_code(*code), message.clone())
            }
            _ => ConnOutcome::Dropped,
        };
        let peer = self.peer.to_string();
        let error = match &outcome {
            RecvOutcome::Failed { message, .. } => Some(message.clone()),
            _ => None,
        };
        if let Some(message) = &error {
            self.ctx.sink.event(&Event::TransferFailed {
                peer: peer.clone(),
                message: message.clone(),
            });
        }
        let Some(t) = self.transfer.take() else {
            return conn_outcome;
        };
        let completed = match &outcome {
            RecvOutcome::Completed { sha256, .. } => Some(*sha256),
            _ => None,
        };
        if completed.is_none() {
            self.record_end(&t.record, &conn_outcome, error.clone());
        }
        if conn_outcome == ConnOutcome::Dropped {
            self.ctx.sink.event(&Event::Interrupted {
                session_id: t.record.id.to_hex(),
                file: t.record.file_name.clone(),
                peer,
                path_changes: udp.as_ref().map(|u| u.path_changes),
            });
            return conn_outcome;
        }
        let seconds = t.started.elapsed().as_secs_f64();
        let summary = ReceiveSummary {
            core: SummaryCore {
                session_id: t.record.id.to_hex(),
                file: t.record.file_name.clone(),
                bytes: t.record.size,
                seconds,
                goodput_mbps: mbps(t.bytes_now, seconds),
                protocol: if udp.is_some() { "udp" } else { "tcp" },
                sha256: completed.map(hex::encode),
                ok: completed.is_some(),
                error,
            },
            final_path: completed.and(t.final_path.as_ref().map(|p| p.display().to_string())),
            peer,
            bytes_received: t.bytes_now,
            dcsp: ReceiverFigures::of(udp.as_ref(), self.control_rtt),
            relays: self.relay.as_ref().map(|r| r.used.ids()),
        };
        self.ctx
            .sink
            .event(&Event::ReceiveSummary(Box::new(summary)));
        conn_outcome
    }

    /// A transfer that did not complete on this connection: failed for good, or interrupted and resumable
    /// (unless the store already knows it completed).
    fn record_end(&self, record: &IncomingSession, outcome: &ConnOutcome, error: Option<String>) {
        let store = &self.ctx.store;
        let mut record = store
            .incoming(&record.id)
            .ok()
            .flatten()
            .unwrap_or_else(|| record.clone());
        if record.state == SessionState::Completed {
            return;
        }
        record.state = match outcome {
            ConnOutcome::Failed(..) => SessionState::Failed,
            _ => SessionState::Interrupted,
        };
        record.error = error;
        record.updated_unix = unix_now();
        let _ = store.put_incoming(&record);
    }
}

/// What the store says of an offered session.
enum Opened {
    /// It completed before: confirm it again.
    Complete {
        sha: Option<[u8; 32]>,
        final_name: String,
    },
    /// New or resumable: its record, the chunks verified so far, the durable prefixes of others, the partial
    /// file.
    Resumable {
        record: IncomingSession,
        verified: Vec<(u32, [u8; 32])>,
        partial: Vec<(u32, u64)>,
        part: PartialFile,
    },
}

impl Opened {
    fn completed(rec: &IncomingSession) -> Self {
        let sha = rec
            .sha256_hex
            .as_deref()
            .and_then(|h| hex::decode(h).ok())
            .and_then(|v| <[u8; 32]>::try_from(v).ok());
        let final_name = rec
            .final_path
            .as_ref()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .unwrap_or(&rec.file_name)
            .to_owned();
        Opened::Complete { sha, final_name }
    }
}

/// Forgets a transfer's DCSP connections on their plane threads (their counters are final afterwards).
fn unregister(plane: &UdpPlane, conn_id: u64, streams: usize) {
    for s in 0..streams {
        plane.unregister(stream_conn_id(conn_id, s as u8));
    }
}

async fn notified(cancel: Option<Arc<tokio::sync::Notify>>) {
    match cancel {
        Some(c) => c.notified().await,
        None => std::future::pending().await,
    }
}
