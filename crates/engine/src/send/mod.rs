//! `send` and `resume`: the sender. One task drives the sender's side of the conversation
//! (`trackshift_proto::session::SendSession`): it opens control connections when the session asks, writes the
//! frames the session queues, feeds it the receiver's frames, the source reader's progress ([`reader`]) and the
//! DCSP data planes' failures ([`dcsp`]), and keeps the session store up to date.

mod dcsp;
mod pace;
mod reader;
mod relayed;

pub use pace::RateCap;

use std::path::PathBuf;
use std::sync::mpsc::{self as std_mpsc};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{split, WriteHalf};
use tokio::sync::mpsc;
use trackshift_dcsp::{
    stream_conn_id, BlockGeometry, DelayRateFactory, ParityMode, RateControllerFactory,
    SenderStats, DATA_OVERHEAD,
};
use trackshift_proto::compress::CompressMode;
use trackshift_proto::frame::DATA_PIECE;
use trackshift_proto::hashing::Hasher;
use trackshift_proto::session::{
    DataPath, Delivered, SendAction, SendConfig, SendEvent, SendSession, UdpLink,
};
use trackshift_proto::{ChunkPlan, FirstPass, Frame, SessionId};
use trackshift_storage::{
    ChunkSource, FileSource, KnownReceivers, OutgoingSession, SessionState, SessionStore, StateDir,
};
use trackshift_transport::{
    connect, connect_over, dcsp_secret_of, exporter_of, normalize_fingerprint, ClientAuth,
    ClientTls, FrameReader, FrameWriter, PumpedFrame, TransportError,
};

use crate::error::EngineError;
use crate::event::{
    mbps, rounded, DcspFigures, Event, EventSink, SendSummary, SummaryCore, FIGURE_DECIMALS,
};
use dcsp::{
    ip_udp_headers, plane_queue_len, shard_size_for, DataPlane, PlaneFailure, PlaneSpec, Planes,
    SharedCap,
};
use reader::{Outlet, ReadEvent, Reader, READ_AHEAD};

/// How long authentication may take after the TLS handshake.
const AUTH_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the sender records confirmed progress in its own store (for `trackshift status`).
const PROGRESS_SAVE_EVERY: Duration = Duration::from_secs(2);
/// How often the DCSP planes' figures are reported while they run.
const FIGURES_EVERY: Duration = Duration::from_millis(250);
/// Bytes of a `Data` frame's header and fields beyond its payload (what the wire carries per piece).
const DATA_FRAME_OVERHEAD: u64 = 10;

/// Transfer tuning shared by `send` and `resume`.
#[derive(Debug, Clone)]
pub struct TransferOptions {
    pub secret: Option<String>,
    pub protocol: DataPath,
    pub parity: ParityMode,
    /// DCSP streams (sockets, threads, rate controllers) to spread the data plane over.
    pub streams: u8,
    /// Cap on the sending rate, bytes per second on the wire (IP headers included), for the whole transfer
    /// whatever the streams; keep a clone to change it while the transfer runs.
    pub max_rate: RateCap,
    /// The receiver's expected certificate fingerprint (`sha256:…`) instead of trust on first use.
    pub fingerprint: Option<String>,
    pub retry_for: Duration,
    pub connect_timeout: Duration,
    pub state_dir: PathBuf,
    /// Makes each DCSP stream's rate controller; `None`: `DelayRate`, each stream capped at `max_rate` (a
    /// budget the streams share holds their sum to it). The seam an optimizer plugs into.
    pub rate_controllers: Option<Arc<dyn RateControllerFactory>>,
}

/// Everything `send` needs.
#[derive(Debug, Clone)]
pub struct SendOptions {
    pub path: PathBuf,
    /// The receiver, `HOST:PORT` (through relays: its name, for messages and certificate pinning).
    pub to: String,
    pub chunk_size: u64,
    pub compress: CompressMode,
    pub transfer: TransferOptions,
    /// Through the edge grid's relays instead of to `to` directly; the session id is the path's.
    pub relay: Option<crate::relay::RelayRoute>,
}

/// A send that the receiver confirmed.
#[derive(Debug, Clone)]
pub struct SendReport {
    pub summary: SendSummary,
}

/// Sends one file (resuming an interrupted session of the same file and receiver), on a runtime of its own.
pub fn send(opts: SendOptions, sink: Arc<dyn EventSink>) -> Result<SendReport, EngineError> {
    crate::runtime()?.block_on(run(opts, None, sink))
}

/// Resumes the outgoing session `id` from the state dir.
pub fn resume(
    id: SessionId,
    transfer: TransferOptions,
    sink: Arc<dyn EventSink>,
) -> Result<Option<SendReport>, EngineError> {
    let Some(opts) = resume_options(id, transfer, sink.clone())? else {
        return Ok(None);
    };
    crate::runtime()?
        .block_on(run(opts, Some(id), sink))
        .map(Some)
}

/// What resuming the outgoing session `id` sends (its file, receiver, chunk size and compression, with
/// `transfer`), for a caller that sends it another way (through the grid's relays, say); `None` after an
/// [`Event::AlreadyCompleted`] when the session had finished.
pub fn resume_options(
    id: SessionId,
    transfer: TransferOptions,
    sink: Arc<dyn EventSink>,
) -> Result<Option<SendOptions>, EngineError> {
    let store = SessionStore::open(&StateDir::open(&transfer.state_dir)?)?;
    let rec = store.outgoing(&id)?.ok_or_else(|| {
        EngineError::BadInput(format!(
            "no outgoing session {id} in {}: see `trackshift list`",
            transfer.state_dir.display()
        ))
    })?;
    drop(store);
    if rec.state == SessionState::Completed {
        sink.event(&Event::AlreadyCompleted {
            session_id: rec.id.to_hex(),
        });
        return Ok(None);
    }
    Ok(Some(SendOptions {
        path: rec.source.clone(),
        to: rec.to.clone(),
        chunk_size: rec.chunk_size,
        compress: CompressMode::from_name(&rec.compress),
        transfer,
        relay: None,
    }))
}

async fn run(
    opts: SendOptions,
    resume_id: Option<SessionId>,
    sink: Arc<dyn EventSink>,
) -> Result<SendReport, EngineError> {
    let mut sender = Sender::prepare(opts, resume_id, sink)?;
    let result = sender.drive().await;
    sender.conclude(result)
}

/// A live control connection.
struct Conn {
    frames: mpsc::Receiver<PumpedFrame>,
    pump: tokio::task::JoinHandle<()>,
    writer: FrameWriter<WriteHalf<ClientTls>>,
    peer: std::net::SocketAddr,
    udp: Option<UdpLink>,
    dcsp_secret: [u8; 32],
    /// `--max-rate` over TCP.
    pace: pace::Pacer,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

/// A running data path's reader.
struct DataRun {
    reader: Option<Reader>,
    events: mpsc::Receiver<ReadEvent>,
    reader_done: bool,
    /// TCP: file bytes put on the wire by this run, and whether the current chunk was compressed.
    wire_progress: u64,
    chunk_compressed: bool,
    /// TCP: what this run really puts on the wire (frames, headers included).
    meter: RateMeter,
}

/// The DCSP data planes of a running UDP data path.
struct PlaneSet {
    planes: Planes,
    /// What the planes really send, as opposed to the rate they are allowed.
    meter: RateMeter,
    failures: mpsc::UnboundedReceiver<PlaneFailure>,
    /// The receiver's DCSP socket.
    peer: std::net::SocketAddr,
    block_bytes: u64,
}

/// What the summary adds up besides the session's own counters.
#[derive(Debug, Default)]
struct WireStats {
    bytes_on_wire: u64,
    compressed_chunks: u32,
    /// The last data run's DCSP counters, and the packets of the runs before it.
    udp: Option<SenderStats>,
    earlier_packets: (u64, u64),
}

struct Sender {
    opts: SendOptions,
    sink: Arc<dyn EventSink>,
    source: Arc<FileSource>,
    plan: ChunkPlan,
    secret: String,
    pinned: Option<String>,
    store: SessionStore,
    known: KnownReceivers,
    record: OutgoingSession,
    session: SendSession,
    conn: Option<Conn>,
    data: Option<DataRun>,
    planes: Option<PlaneSet>,
    wire: WireStats,
    started: Instant,
    /// Bytes the receiver had verified when the current connection was accepted (progress counts from there).
    base: u64,
    last_saved: Instant,
    out: Vec<u8>,
    /// Through relays: the route and who to ask for a new one.
    relay: Option<relayed::Relayed>,
}

impl Sender {
    /// Opens the source and the state, finds the session to resume or starts a new one.
    fn prepare(
        opts: SendOptions,
        resume_id: Option<SessionId>,
        sink: Arc<dyn EventSink>,
    ) -> Result<Self, EngineError> {
        let source = FileSource::open(&opts.path)?;
        let plan = ChunkPlan::new(source.size(), opts.chunk_size)
            .map_err(|e| EngineError::BadInput(e.to_string()))?;
        let Some(secret) = opts.transfer.secret.clone().filter(|s| !s.is_empty()) else {
            return Err(EngineError::Auth(
                "no secret given: pass --secret or set TRACKSHIFT_SECRET (the receiver prints its secret when it starts)".into(),
            ));
        };
        let pinned = match &opts.transfer.fingerprint {
            Some(f) => Some(normalize_fingerprint(f).ok_or_else(|| {
                EngineError::BadInput(format!(
                    "--fingerprint `{f}` is not a SHA-256 fingerprint (sha256:<64 hex digits>)"
                ))
            })?),
            None => None,
        };
        let state = StateDir::open(&opts.transfer.state_dir)?;
        let store = SessionStore::open(&state)?;
        let known = KnownReceivers::open(&state)?;
        let relay = relayed::Relayed::new(opts.relay.clone())?;
        let resume_id = resume_id.or(relay.as_ref().map(relayed::Relayed::session_id));
        let (record, fresh) = find_session(&store, &source, plan, &opts, resume_id, &*sink)?;
        store.put_outgoing(&record)?;
        sink.event(&Event::Start {
            session_id: record.id.to_hex(),
            file: source.name().to_owned(),
            bytes: source.size(),
            to: opts.to.clone(),
            protocol: opts.transfer.protocol.name(),
            chunk_size: opts.chunk_size,
            chunks: plan.chunk_count(),
        });
        let now = Instant::now();
        let session = SendSession::new(
            SendConfig {
                plan,
                file_name: source.name().to_owned(),
                mtime_ns: source.mtime_ns(),
                data_path: opts.transfer.protocol,
                streams: opts.transfer.streams.max(1),
                data_shards: opts.transfer.parity.data_shards(),
                dcsp_version: trackshift_dcsp::VERSION,
                retry_for: opts.transfer.retry_for,
                connect_timeout: opts.transfer.connect_timeout,
                rng_seed: rand::random(),
            },
            record.id,
            fresh,
            now,
        );
        Ok(Self {
            source: Arc::new(source),
            plan,
            secret,
            pinned,
            store,
            known,
            record,
            session,
            conn: None,
            data: None,
            planes: None,
            wire: WireStats::default(),
            started: now,
            base: 0,
            last_saved: now,
            out: Vec::new(),
            relay,
            opts,
            sink,
        })
    }

    /// Runs the conversation until the session (or a failure it cannot handle) ends it.
    async fn drive(&mut self) -> Result<Delivered, EngineError> {
        let mut figures = tokio::time::interval(FIGURES_EVERY);
        loop {
            if let Some(end) = self.carry_out().await {
                return end;
            }
            if let Err(e) = self.flush().await {
                self.transport_failed(e)?;
                continue;
            }
            let deadline = self.session.poll_timeout();
            let planes_up = self.planes.is_some();
            tokio::select! {
                biased;
                frame = next_frame(&mut self.conn) => self.on_frame(frame)?,
                failure = next_failure(&mut self.planes) => self.on_plane_failure(failure).await?,
                ev = next_read(&mut self.data) => self.on_read(ev).await?,
                _ = crate::sleep_until(deadline) => self.session.handle_timeout(Instant::now()),
                _ = figures.tick(), if planes_up => self.report_figures(),
            }
        }
    }

    /// Carries out the session's actions; `Some` when the run is over.
    async fn carry_out(&mut self) -> Option<Result<Delivered, EngineError>> {
        while let Some(action) = self.session.poll_action() {
            let done = match action {
                SendAction::Connect => self.connect().await.err(),
                SendAction::StartData {
                    first_pass,
                    udp_port,
                } => self.start_data(first_pass, udp_port).err(),
                SendAction::StopData => {
                    self.stop_data();
                    None
                }
                SendAction::Resend(index) => {
                    if let Some(r) = self.data.as_ref().and_then(|d| d.reader.as_ref()) {
                        r.resend(index);
                    }
                    None
                }
                SendAction::HashWholeFile => self.hash_whole_file().await.err(),
                SendAction::Disconnect => {
                    self.conn = None;
                    None
                }
                SendAction::Event(e) => self.on_session_event(e).err(),
                SendAction::Finished(result) => return Some(self.finished(result).await),
                _ => None,
            };
            if let Some(e) = done {
                return Some(Err(e));
            }
        }
        None
    }

    /// Writes the frames the session queued (after the data frames already written).
    async fn flush(&mut self) -> Result<(), TransportError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        self.out.clear();
        if self.session.poll_transmit(&mut self.out) {
            conn.writer.send_raw(&self.out).await?;
            conn.writer.flush().await?;
        }
        Ok(())
    }

    /// A failure on the control connection: worth a reconnect when transient, the end of the run otherwise.
    fn transport_failed(&mut self, e: TransportError) -> Result<(), EngineError> {
        if e.is_transient() {
            self.session.connection_lost(Instant::now(), &e.to_string());
            Ok(())
        } else {
            Err(e.into())
        }
    }

    /// TCP, TLS (pinning the receiver's certificate) and authentication; the session hears how it went.
    async fn connect(&mut self) -> Result<(), EngineError> {
        let to = self.opts.to.clone();
        let expected = self.pinned.clone().or_else(|| self.known.get(&to));
        let known_file = self.known.path().display().to_string();
        let relayed = match self.dial_relay().await? {
            relayed::Dialled::Direct => None,
            relayed::Dialled::Relay(tcp) => Some(tcp),
            relayed::Dialled::Retry => return Ok(()),
        };
        let attempt = async {
            // Our first authentication flight rides with TLS's Finished, our `Confirm` with the offer.
            let (auth, flight) = ClientAuth::start(&self.secret);
            let (mut tls, fp) = match relayed {
                Some(tcp) => connect_over(tcp, &to, expected.clone(), &known_file, &flight).await?,
                None => connect(&to, expected.clone(), &known_file, &flight).await?,
            };
            let ekm = exporter_of(tls.get_ref().1)?;
            let (confirm, version) = tokio::time::timeout(AUTH_TIMEOUT, auth.finish(&mut tls, ekm))
                .await
                .map_err(|_| TransportError::Timeout("authenticating"))??;
            Ok::<_, TransportError>((tls, fp, confirm, version))
        };
        let (tls, fp, confirm, version) = match attempt.await {
            Ok(ok) => ok,
            Err(e) if e.is_transient() => {
                self.session.connect_failed(Instant::now(), &e.to_string());
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        if expected.is_none() {
            self.known.remember(&to, &fp)?;
            self.sink.event(&Event::Identified {
                to,
                fingerprint: fp.clone(),
                known_file,
            });
        }
        if self.record.receiver_fingerprint.as_deref() != Some(fp.as_str()) {
            self.record.receiver_fingerprint = Some(fp);
            self.store.put_outgoing(&self.record)?;
        }
        self.open_conn(tls, confirm, version).await
    }

    /// The authenticated connection: its frame pump, its writer (with our `Confirm` queued), and what
    /// `UdpStart` will announce on it.
    async fn open_conn(
        &mut self,
        tls: ClientTls,
        confirm: Frame<'static>,
        version: u16,
    ) -> Result<(), EngineError> {
        let dcsp_secret = dcsp_secret_of(tls.get_ref().1)?;
        let peer = match tls.get_ref().0.peer_addr() {
            Ok(p) => p,
            Err(e) => {
                let e = TransportError::Io {
                    context: "the receiver's address".into(),
                    source: e,
                };
                return self.transport_failed(e);
            }
        };
        let mss = trackshift_transport::segment_payload(tls.get_ref().0);
        let (rd, wr) = split(tls);
        let (frames, pump) = FrameReader::new(rd).pump();
        let mut writer = FrameWriter::new(wr);
        if let Err(e) = writer.send(&confirm).await {
            return self.transport_failed(e);
        }
        let udp = matches!(self.session.data_path(), DataPath::Udp { .. }).then(|| UdpLink {
            conn_id: rand::random(),
            shard_size: shard_size_for(peer),
        });
        self.conn = Some(Conn {
            frames,
            pump,
            writer,
            peer,
            udp,
            dcsp_secret,
            pace: pace::Pacer::new(self.opts.transfer.max_rate.clone(), mss, peer.is_ipv4()),
        });
        self.session
            .connected(Instant::now(), peer.port(), udp, version);
        Ok(())
    }

    /// Starts the reader (and, to `udp_port`, the DCSP planes).
    fn start_data(
        &mut self,
        first_pass: Vec<FirstPass>,
        udp_port: Option<u16>,
    ) -> Result<(), EngineError> {
        self.stop_data();
        let (events_tx, events) = mpsc::channel(READ_AHEAD);
        let outlet = match udp_port {
            Some(port) => self.start_planes(port)?,
            None => Outlet::Frames {
                compress: self.opts.compress,
            },
        };
        let reader = Reader::start(
            self.source.clone(),
            self.plan,
            first_pass,
            outlet,
            events_tx,
        )
        .map_err(EngineError::Failed)?;
        self.data = Some(DataRun {
            reader: Some(reader),
            events,
            reader_done: false,
            wire_progress: 0,
            chunk_compressed: false,
            meter: RateMeter::default(),
        });
        Ok(())
    }

    /// One data plane (socket, thread, `DcspSender`, rate controller) per stream, to `port` at the receiver;
    /// the reader's outlet that feeds them.
    fn start_planes(&mut self, port: u16) -> Result<Outlet, EngineError> {
        let conn = self
            .conn
            .as_ref()
            .ok_or_else(|| EngineError::Failed("no connection to send over".into()))?;
        let link = conn
            .udp
            .ok_or_else(|| EngineError::Failed("no DCSP link on this connection".into()))?;
        let t = &self.opts.transfer;
        let geometry = BlockGeometry::for_plan(&self.plan, link.shard_size, t.parity.data_shards())
            .map_err(|e| EngineError::Failed(e.to_string()))?;
        let streams = t.streams.max(1);
        let targets =
            self.stream_targets(std::net::SocketAddr::new(conn.peer.ip(), port), streams)?;
        let peer = targets[0].0;
        let (fail_tx, fail_rx) = mpsc::unbounded_channel();
        let cap = SharedCap {
            cap: t.max_rate.clone(),
            budget: Arc::new(pace::WireBudget::new(pace::DCSP_SLACK)),
            headers: ip_udp_headers(peer),
            datagram: link.shard_size as usize + DATA_OVERHEAD,
        };
        let delay_rate = DelayRateFactory::new(cap.controller_cap(t.max_rate.get()));
        let factory: &dyn RateControllerFactory = match &t.rate_controllers {
            Some(f) => &**f,
            None => &delay_rate,
        };
        let mut queues = Vec::with_capacity(usize::from(streams));
        let mut planes = Vec::with_capacity(usize::from(streams));
        for s in 0..streams {
            let (tx, rx) = std_mpsc::sync_channel(plane_queue_len(geometry.block_bytes()));
            queues.push(tx);
            let (peer, relay) = targets[usize::from(s)].clone();
            let spec = PlaneSpec {
                peer,
                relay,
                conn_id: stream_conn_id(link.conn_id, s),
                dcsp_secret: &conn.dcsp_secret,
                geometry,
                parity: t.parity,
                controller: factory.build(s, streams),
                cap: cap.clone(),
            };
            planes
                .push(DataPlane::start(spec, s, rx, fail_tx.clone()).map_err(EngineError::Failed)?);
        }
        self.planes = Some(PlaneSet {
            planes: Planes(planes),
            meter: RateMeter::default(),
            failures: fail_rx,
            peer,
            block_bytes: geometry.block_bytes(),
        });
        Ok(Outlet::Planes {
            geometry,
            streams: queues,
        })
    }

    /// Stops the data path, keeping its DCSP counters for the summary.
    fn stop_data(&mut self) {
        if let Some(mut set) = self.planes.take() {
            set.planes.stop();
            let u = set.planes.stats();
            self.wire.bytes_on_wire += u.bytes_sent;
            if let Some(prev) = self.wire.udp.replace(u) {
                self.wire.earlier_packets.0 += prev.packets_sent;
                self.wire.earlier_packets.1 += prev.packets_retransmitted;
            }
        }
        let Some(mut data) = self.data.take() else {
            return;
        };
        drop(data.events);
        if let Some(reader) = data.reader.take() {
            tokio::task::block_in_place(|| reader.join());
        }
    }

    async fn hash_whole_file(&mut self) -> Result<(), EngineError> {
        let source = self.source.clone();
        let sha = tokio::task::spawn_blocking(move || hash_source(&*source))
            .await
            .map_err(|e| EngineError::Failed(e.to_string()))??;
        self.session.file_hashed(Instant::now(), sha, None);
        Ok(())
    }

    fn on_frame(&mut self, frame: Option<PumpedFrame>) -> Result<(), EngineError> {
        let (frame_type, body) = match frame.unwrap_or(Err(TransportError::Closed)) {
            Ok(f) => f,
            Err(e) => return self.transport_failed(e),
        };
        let frame = Frame::decode(frame_type, &body).map_err(TransportError::from)?;
        if let Frame::ChunkDone { index, ok: true } = frame {
            self.sink.event(&Event::ChunkVerified { index });
        }
        self.session.handle_frame(Instant::now(), &frame);
        Ok(())
    }

    async fn on_plane_failure(&mut self, failure: Option<PlaneFailure>) -> Result<(), EngineError> {
        let now = Instant::now();
        match failure {
            Some(PlaneFailure::NoAnswer) => {
                let peer = self.planes.as_ref().map(|p| p.peer);
                let why = format!(
                    "no UDP answer from {} within {} s (is UDP blocked on the way?)",
                    peer.map(|p| p.to_string()).unwrap_or_default(),
                    dcsp::UDP_PROBE.as_secs()
                );
                self.session.udp_unusable(now, &why);
            }
            Some(PlaneFailure::Silent) => self.session.connection_lost(
                now,
                "timed out waiting for the receiver's UDP acknowledgements",
            ),
            Some(PlaneFailure::RelayLost { relay_id, why }) => {
                let why = format!("relay {relay_id}: {why}");
                self.relay_lost(&relay_id, &why).await;
                self.session.connection_lost(Instant::now(), &why);
            }
            Some(PlaneFailure::Fatal(e)) => return Err(EngineError::Failed(format!("DCSP: {e}"))),
            None => {}
        }
        Ok(())
    }

    /// What the reader did: over TCP, the chunk's frames go out here.
    async fn on_read(&mut self, ev: Option<ReadEvent>) -> Result<(), EngineError> {
        let now = Instant::now();
        let Some(ev) = ev else {
            if let Some(d) = self.data.as_mut() {
                d.reader_done = true;
            }
            return Ok(());
        };
        let written = match ev {
            ReadEvent::Begin(index) => self.write_frame(&Frame::ChunkBegin { index }).await,
            ReadEvent::Resume(index, from) => {
                self.write_frame(&Frame::ChunkResume { index, from }).await
            }
            ReadEvent::Piece {
                raw_len,
                compressed,
                buf,
            } => self.write_piece(raw_len, compressed, &buf).await,
            ReadEvent::Sent(index, sha256) => {
                let tcp = self.planes.is_none();
                let mut r = Ok(());
                if tcp {
                    r = self.write_frame(&Frame::ChunkEnd { sha256 }).await;
                    if let Some(d) = self.data.as_mut().filter(|d| d.chunk_compressed) {
                        d.chunk_compressed = false;
                        self.wire.compressed_chunks += 1;
                    }
                }
                self.session.chunk_sent(now, index, sha256);
                r
            }
            ReadEvent::Checked(index, sha) => {
                self.session.chunk_checked(now, index, sha);
                Ok(())
            }
            ReadEvent::FileHash { sha256, chunk_list } => {
                self.session.file_hashed(now, sha256, chunk_list);
                Ok(())
            }
            ReadEvent::Failed(e) => return Err(EngineError::BadInput(e)),
        };
        match written {
            Err(e) => self.transport_failed(e),
            Ok(()) => Ok(()),
        }
    }

    async fn write_frame(&mut self, frame: &Frame<'_>) -> Result<(), TransportError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        conn.writer.send(frame).await?;
        conn.writer.flush().await
    }

    /// One `Data` frame, paced to `--max-rate`.
    async fn write_piece(
        &mut self,
        raw_len: u32,
        compressed: bool,
        payload: &[u8],
    ) -> Result<(), TransportError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        // A receiver that stops acknowledging (gone without a reset) is caught by the socket's
        // TCP_USER_TIMEOUT (see trackshift-transport), not by timing this write: on a lossy link one MiB can
        // legitimately take minutes.
        let pacer = &mut conn.pace;
        if pacer.part_len() >= payload.len() {
            pacer.wait(payload.len()).await;
            conn.writer.send_data(raw_len, compressed, payload).await?;
        } else {
            conn.writer
                .start_data(raw_len, compressed, payload.len())
                .await?;
            for part in payload.chunks(pacer.part_len()) {
                pacer.wait(part.len()).await;
                conn.writer.send_data_part(part).await?;
            }
        }
        self.wire.bytes_on_wire += payload.len() as u64 + DATA_FRAME_OVERHEAD;
        if let Some(d) = self.data.as_mut() {
            d.chunk_compressed |= compressed;
            d.wire_progress += u64::from(raw_len);
            self.sink.event(&Event::Sending {
                bytes: self.base + d.wire_progress,
                sending_mbps: rounded(
                    d.meter.sample(Instant::now(), self.wire.bytes_on_wire),
                    FIGURE_DECIMALS,
                ),
            });
        }
        Ok(())
    }

    /// The DCSP planes' live figures (and how much they got acknowledged, for progress displays).
    fn report_figures(&mut self) {
        let Some(set) = self.planes.as_mut() else {
            return;
        };
        let u = set.planes.stats();
        let acked =
            (u.blocks_acked * set.block_bytes).min(self.source.size().saturating_sub(self.base));
        let sending_mbps = set.meter.sample(Instant::now(), u.bytes_sent);
        self.sink.event(&Event::Sending {
            bytes: self.base + acked,
            sending_mbps: rounded(sending_mbps, FIGURE_DECIMALS),
        });
        self.sink.event(&Event::Dcsp(figures(&u, sending_mbps)));
    }

    fn on_session_event(&mut self, e: SendEvent) -> Result<(), EngineError> {
        let event = match e {
            SendEvent::Retry { error, delay, lost } => Event::retry(error, delay, lost),
            SendEvent::Fallback { reason } => Event::Fallback {
                protocol: DataPath::Tcp.name(),
                reason,
            },
            SendEvent::SourceChanged {
                index, new_session, ..
            } => {
                self.start_new_session(new_session)?;
                Event::SourceChanged {
                    index,
                    path: self.source.path().display().to_string(),
                }
            }
            SendEvent::Accepted {
                chunks_verified,
                bytes_verified,
            } => {
                self.base = bytes_verified;
                Event::Accepted {
                    chunks_verified,
                    bytes_verified,
                    bytes_total: self.source.size(),
                }
            }
            SendEvent::ChunkFailed(index) => Event::ChunkFailed { index },
            SendEvent::Progress { bytes_verified } => {
                self.save_progress(bytes_verified);
                let secs = self.started.elapsed().as_secs_f64().max(f64::MIN_POSITIVE);
                Event::Progress {
                    bytes_done: bytes_verified,
                    bytes_total: self.source.size(),
                    goodput_mbps: mbps(bytes_verified.saturating_sub(self.base), secs),
                }
            }
            _ => return Ok(()),
        };
        self.sink.event(&event);
        Ok(())
    }

    /// The source changed under the old session: it is abandoned, and the file goes as `id`.
    fn start_new_session(&mut self, id: SessionId) -> Result<(), EngineError> {
        self.record.state = SessionState::Abandoned;
        self.store.put_outgoing(&self.record)?;
        self.record.id = id;
        self.record.state = SessionState::Active;
        self.record.created_unix = trackshift_storage::unix_now();
        self.record.bytes_confirmed = 0;
        self.store.put_outgoing(&self.record)?;
        Ok(())
    }

    /// So `trackshift status` on the sender shows progress; the receiver's record is the authoritative one, so
    /// a failure here only costs the display.
    fn save_progress(&mut self, bytes_confirmed: u64) {
        if self.last_saved.elapsed() < PROGRESS_SAVE_EVERY {
            return;
        }
        self.last_saved = Instant::now();
        let mut progress = self.record.clone();
        progress.bytes_confirmed = bytes_confirmed;
        progress.updated_unix = trackshift_storage::unix_now();
        let _ = self.store.put_outgoing(&progress);
    }

    /// The session ended the run: close the connection (cleanly when delivered) and stop the data path.
    async fn finished(
        &mut self,
        result: Result<Delivered, trackshift_proto::session::SendError>,
    ) -> Result<Delivered, EngineError> {
        self.stop_data();
        if let Some(mut conn) = self.conn.take() {
            if result.is_ok() {
                let _ = conn.writer.shutdown().await;
            }
        }
        result.map_err(EngineError::from)
    }

    /// Records how the run ended and reports it.
    fn conclude(
        mut self,
        result: Result<Delivered, EngineError>,
    ) -> Result<SendReport, EngineError> {
        self.stop_data();
        let seconds = self.started.elapsed().as_secs_f64();
        let stats = self.session.stats().clone();
        let size = self.source.size();
        let sha_hex = result.as_ref().ok().map(|d| hex::encode(d.sha256));
        self.record.id = self.session.session_id();
        self.record.state = match &result {
            Ok(_) => SessionState::Completed,
            Err(e) if e.is_final_for_session() => SessionState::Failed,
            Err(_) => SessionState::Interrupted,
        };
        self.record.updated_unix = trackshift_storage::unix_now();
        self.record.sha256_hex = sha_hex.clone();
        self.record.error = result.as_ref().err().map(|e| e.to_string());
        self.record.bytes_confirmed = match &result {
            Ok(_) => size,
            Err(_) => stats.bytes_confirmed.max(self.record.bytes_confirmed),
        };
        let _ = self.store.put_outgoing(&self.record);
        // File bytes this run delivered (chunks verified in an earlier run do not count).
        let sent_bytes = match &result {
            Ok(_) => size.saturating_sub(stats.bytes_skipped),
            Err(_) => 0,
        };
        let udp = self.wire.udp.as_ref();
        let summary = SendSummary {
            core: SummaryCore {
                session_id: self.record.id.to_hex(),
                file: self.source.name().to_owned(),
                bytes: size,
                seconds,
                goodput_mbps: mbps(sent_bytes, seconds),
                protocol: self.session.data_path().name(),
                sha256: sha_hex.clone(),
                ok: result.is_ok(),
                error: result.as_ref().err().map(|e| e.to_string()),
            },
            final_name: result.as_ref().ok().map(|d| d.final_name.clone()),
            packets_sent: udp.map(|u| u.packets_sent + self.wire.earlier_packets.0),
            packets_retransmitted: udp
                .map(|u| u.packets_retransmitted + self.wire.earlier_packets.1),
            fec_recovered: udp.map(|u| u.fec_recovered),
            loss_pct: udp.map(|u| rounded(u.loss * 100.0, FIGURE_DECIMALS)),
            rtt_ms: udp.map(|u| {
                rounded(
                    u.srtt.unwrap_or_default().as_secs_f64() * 1e3,
                    FIGURE_DECIMALS,
                )
            }),
            parity: udp.map(|u| format!("{}+{}", u.data_shards, u.parity)),
            rate_mbps: udp.map(|u| rounded(u.rate as f64 * 8.0 / 1e6, FIGURE_DECIMALS)),
            chunks_total: self.plan.chunk_count(),
            chunks_sent: stats.chunks_sent,
            chunks_resent: stats.chunks_resent,
            chunks_skipped: stats.chunks_skipped,
            compressed_chunks: self.wire.compressed_chunks,
            bytes_on_wire: self.wire.bytes_on_wire,
            connections: stats.connections,
            relays: self.relay.as_ref().map(relayed::Relayed::used),
        };
        self.sink
            .event(&Event::SendSummary(Box::new(summary.clone())));
        let delivered = result?;
        self.sink.event(&Event::Sent {
            file: summary.core.file.clone(),
            bytes: size,
            final_name: delivered.final_name,
            seconds,
            sha256: sha_hex.unwrap_or_default(),
        });
        Ok(SendReport { summary })
    }
}

/// The session to send: the unfinished one of the same source and receiver (or the one to resume), if the source
/// is unchanged, else a new one. True when the session is new.
/// Whether `s` is a session of `source` as it is now (size, modification time) with `chunk_size`: one a send
/// resumes.
pub(crate) fn same_source(s: &OutgoingSession, source: &FileSource, chunk_size: u64) -> bool {
    s.size == source.size()
        && s.mtime_ns == i128::from(source.mtime_ns())
        && s.chunk_size == chunk_size
}

fn find_session(
    store: &SessionStore,
    source: &FileSource,
    plan: ChunkPlan,
    opts: &SendOptions,
    resume_id: Option<SessionId>,
    sink: &dyn EventSink,
) -> Result<(OutgoingSession, bool), EngineError> {
    let previous = match resume_id {
        Some(id) => store.outgoing(&id)?,
        None => store.find_outgoing(source.path(), &opts.to)?,
    };
    let same_source = |s: &OutgoingSession| same_source(s, source, opts.chunk_size);
    let now = trackshift_storage::unix_now();
    let (mut record, fresh) = match previous {
        Some(p) if p.state != SessionState::Completed && same_source(&p) => {
            sink.event(&Event::Resuming {
                session_id: p.id.to_hex(),
            });
            (p, false)
        }
        p => {
            if let Some(p) = p.filter(|p| p.state != SessionState::Completed) {
                sink.event(&Event::ChangedSince {
                    path: source.path().display().to_string(),
                    session_id: p.id.to_hex(),
                });
            }
            let record = OutgoingSession {
                // Through relays the session's id is the path's: the admission tokens name it.
                id: opts
                    .relay
                    .as_ref()
                    .map_or_else(SessionId::random, |r| r.path.session_id),
                source: source.path().to_path_buf(),
                to: opts.to.clone(),
                receiver_fingerprint: None,
                size: source.size(),
                mtime_ns: i128::from(source.mtime_ns()),
                chunk_size: opts.chunk_size,
                chunk_count: plan.chunk_count(),
                protocol: opts.transfer.protocol.name().into(),
                compress: opts.compress.name().into(),
                state: SessionState::Active,
                created_unix: now,
                updated_unix: now,
                bytes_confirmed: 0,
                sha256_hex: None,
                error: None,
            };
            (record, true)
        }
    };
    record.state = SessionState::Active;
    record.updated_unix = now;
    Ok((record, fresh))
}

/// The SHA-256 of the whole source.
fn hash_source(source: &dyn ChunkSource) -> Result<[u8; 32], EngineError> {
    let mut h = Hasher::new();
    let mut buf = vec![0u8; DATA_PIECE];
    let mut off = 0;
    while off < source.size() {
        let n = (source.size() - off).min(DATA_PIECE as u64) as usize;
        source.read_exact_at(off, &mut buf[..n])?;
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(h.finish())
}

/// How far back [`RateMeter`] looks.
const METER_WINDOW: Duration = Duration::from_secs(1);

/// The rate of a growing byte count over about the last [`METER_WINDOW`].
#[derive(Debug, Default)]
struct RateMeter {
    /// The oldest sample is the newest one at least a window old (when there is one).
    samples: std::collections::VecDeque<(Instant, u64)>,
}

impl RateMeter {
    /// Adds the count `bytes` at `now`; the rate over about the last second, in megabits per second.
    fn sample(&mut self, now: Instant, bytes: u64) -> f64 {
        self.samples.push_back((now, bytes));
        while self
            .samples
            .get(1)
            .is_some_and(|&(t, _)| now.duration_since(t) >= METER_WINDOW)
        {
            self.samples.pop_front();
        }
        match (self.samples.front(), self.samples.back()) {
            (Some(&(t0, b0)), Some(&(t1, b1))) => {
                mbps(b1.saturating_sub(b0), t1.duration_since(t0).as_secs_f64())
            }
            _ => 0.0,
        }
    }
}

fn figures(u: &SenderStats, sending_mbps: f64) -> DcspFigures {
    DcspFigures {
        sending_mbps: rounded(sending_mbps, FIGURE_DECIMALS),
        rate_mbps: rounded(u.rate as f64 * 8.0 / 1e6, FIGURE_DECIMALS),
        loss_pct: rounded(u.loss * 100.0, FIGURE_DECIMALS),
        rtt_ms: rounded(
            u.srtt.unwrap_or_default().as_secs_f64() * 1e3,
            FIGURE_DECIMALS,
        ),
        parity: format!("{}+{}", u.data_shards, u.parity),
        packets_sent: u.packets_sent,
        packets_retransmitted: u.packets_retransmitted,
        fec_recovered: u.fec_recovered,
        phase: u.phase,
    }
}

async fn next_frame(conn: &mut Option<Conn>) -> Option<PumpedFrame> {
    match conn {
        Some(c) => c.frames.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_read(data: &mut Option<DataRun>) -> Option<ReadEvent> {
    match data {
        Some(d) if !d.reader_done => d.events.recv().await,
        _ => std::future::pending().await,
    }
}

async fn next_failure(planes: &mut Option<PlaneSet>) -> Option<PlaneFailure> {
    match planes {
        Some(set) => set.failures.recv().await,
        None => std::future::pending().await,
    }
}
