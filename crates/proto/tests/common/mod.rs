//! An in-memory world for the control conversation: one [`SendSession`] (and the sender's driver around it) and
//! a receiver (its driver, one [`RecvSession`] per control connection, and a session store that survives
//! connections and restarts), in virtual time, like quinn-proto's `Pair` and `crates/dcsp/tests/sim.rs`.
//!
//! Only the harness models I/O; the sessions are the real ones:
//! - a control connection is two in-order byte streams with latency. Frames are really encoded and decoded
//!   (`frame::parse_header`, `Frame::decode`); a cut drops what is in flight and ends both streams, a
//!   truncation delivers a partial frame and then the end of the stream;
//! - the sender's driver: connection attempts, the reader (it walks the `first_pass`, sends or checks each chunk,
//!   then hashes the whole file; serves `Resend`; hashes the file for `HashWholeFile`), the TCP data path
//!   (`ChunkBegin` / `Data` / `ChunkEnd` frames on the control stream; `Data` is `compressed` with a small
//!   payload, a slice of the chunk's content, since the sessions never decompress) and the DCSP data path (a
//!   loss-free datagram channel tagged with the connection id and the port; datagrams of a connection id the
//!   receiver has not registered are held for 5 s, as the real receiver does);
//! - the receiver's driver: the answer to `Offered` (the store, injected refusals, a takeover of a session an
//!   older connection still holds), `StartDcsp`, a writer that verifies each chunk against the hash it was
//!   given (optionally corrupting it first), commits it to the store and only then gives the verdict, and
//!   `FinishFile`.
//!
//! Chunk contents are short byte strings derived from the chunk index and the source version; the plan still
//! has real sizes (5 MiB chunks), which the `Data` frames' `raw_len` add up to.
//!
//! Every step is recorded in [`World::trace`]; tests assert on it.

#![allow(dead_code)] // not every test uses every probe of the world

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// SHA-256 of `data` in one call, with the crate's own incremental hasher.
fn sha256(data: &[u8]) -> [u8; 32] {
    let mut h = hashing::Hasher::new();
    h.update(data);
    h.finish()
}

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use trackshift_proto::frame::{
    self, verified_entries, ErrorCode, Frame, DATA_PIECE, HEADER_LEN, PROTOCOL_VERSION,
};
use trackshift_proto::hashing::{self, ChunkListHasher, Hasher};
use trackshift_proto::plan::MIN_CHUNK_SIZE;
use trackshift_proto::session::{
    DataPath, Delivered, RecvAction, RecvConfig, RecvOutcome, RecvSession, SendAction, SendConfig,
    SendError, SendEvent, SendSession, UdpLink,
};
use trackshift_proto::{ChunkPlan, FirstPass, Incoming, SessionId};

/// Chunk size of every plan here: the smallest the protocol allows.
pub const CHUNK: u64 = MIN_CHUNK_SIZE;
/// How long the receiver holds datagrams of a connection it has not registered (the real receiver's hold).
pub const EARLY_HOLD: Duration = Duration::from_secs(5);
/// How long the sender's DCSP plane waits for an answer before it reports UDP unusable.
pub const UDP_PROBE: Duration = Duration::from_secs(3);
/// The DCSP version both sides speak unless a test says otherwise.
pub const DCSP_VERSION: u8 = 1;
pub const FILE_NAME: &str = "big.tar";

/// What chunk `index` of version `version` of the source contains.
pub fn content(index: u32, version: u32) -> Vec<u8> {
    format!("<chunk {index} of version {version}>").into_bytes()
}

/// The file being sent: its plan, and which version of its bytes it holds now.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    pub plan: ChunkPlan,
    pub version: u32,
}

impl Source {
    pub fn new(file_size: u64, version: u32) -> Self {
        Self {
            plan: ChunkPlan::new(file_size, CHUNK).expect("plan"),
            version,
        }
    }

    pub fn content(&self, index: u32) -> Vec<u8> {
        content(index, self.version)
    }

    pub fn chunk_sha(&self, index: u32) -> [u8; 32] {
        sha256(&self.content(index))
    }

    pub fn bytes(&self) -> Vec<u8> {
        (0..self.plan.chunk_count())
            .flat_map(|i| self.content(i))
            .collect()
    }

    pub fn sha(&self) -> [u8; 32] {
        sha256(&self.bytes())
    }
}

/// A frame as its recipient decoded it, owned, for the trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wire {
    Offer { session: SessionId },
    Accept { verified_count: u32 },
    VerifiedList { indexes: Vec<u32> },
    PartialList { chunks: Vec<(u32, u64)> },
    ChunkBegin { index: u32 },
    ChunkResume { index: u32, from: u64 },
    Data { raw_len: u32, compressed: bool },
    ChunkEnd,
    ChunkDone { index: u32, ok: bool },
    ChunkHash { index: u32 },
    FileEnd,
    ChunkListHash,
    FileDone { ok: bool, final_name: String },
    Error { code: ErrorCode, message: String },
    KeepAlive,
    UdpStart { conn_id: u64, dcsp_version: u8 },
    UdpReady { port: u16 },
    Other(&'static str),
}

impl Wire {
    fn of(f: &Frame<'_>) -> Self {
        match *f {
            Frame::Offer(o) => Wire::Offer {
                session: o.session_id,
            },
            Frame::Accept { verified_count } => Wire::Accept { verified_count },
            Frame::VerifiedList { entries } => Wire::VerifiedList {
                indexes: verified_entries(entries).map(|(i, _)| i).collect(),
            },
            Frame::PartialList { entries } => Wire::PartialList {
                chunks: frame::partial_entries(entries).collect(),
            },
            Frame::ChunkResume { index, from } => Wire::ChunkResume { index, from },
            Frame::ChunkBegin { index } => Wire::ChunkBegin { index },
            Frame::Data {
                raw_len,
                compressed,
                ..
            } => Wire::Data {
                raw_len,
                compressed,
            },
            Frame::ChunkEnd { .. } => Wire::ChunkEnd,
            Frame::ChunkDone { index, ok } => Wire::ChunkDone { index, ok },
            Frame::ChunkHash { index, .. } => Wire::ChunkHash { index },
            Frame::FileEnd { .. } => Wire::FileEnd,
            Frame::ChunkListHash { .. } => Wire::ChunkListHash,
            Frame::FileDone { ok, final_name, .. } => Wire::FileDone {
                ok,
                final_name: final_name.to_owned(),
            },
            Frame::Error { code, message } => Wire::Error {
                code,
                message: message.to_owned(),
            },
            Frame::KeepAlive => Wire::KeepAlive,
            Frame::UdpStart {
                conn_id,
                dcsp_version,
                ..
            } => Wire::UdpStart {
                conn_id,
                dcsp_version,
            },
            Frame::UdpReady { port } => Wire::UdpReady { port },
            ref f => Wire::Other(f.name()),
        }
    }
}

/// One thing that happened, for the tests to look for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ev {
    /// A frame the receiver decoded on connection `conn`.
    AtReceiver {
        conn: u32,
        frame: Wire,
    },
    /// A frame the sender decoded on connection `conn`.
    AtSender {
        conn: u32,
        frame: Wire,
    },
    /// The end of a stream reached its reader, after `partial` bytes of an incomplete frame.
    Eof {
        conn: u32,
        at_receiver: bool,
        partial: usize,
    },
    /// Everything the sender's session asked its driver.
    Send(SendAction),
    /// Everything a receiver's session asked its driver.
    Recv {
        conn: u32,
        action: RecvAction,
    },
    Connected {
        conn: u32,
        run: u32,
    },
    ConnectFailed {
        error: String,
    },
    /// The sender's data path put chunk `index` of `session` on the wire (`udp`: as a datagram).
    ChunkOut {
        session: SessionId,
        index: u32,
        conn: u32,
        udp: Option<(u64, u16)>,
    },
    /// The reader re-read a chunk the receiver verified earlier.
    ChunkChecked {
        index: u32,
    },
    DatagramHeld {
        conn_id: u64,
        index: u32,
    },
    DatagramDropped {
        conn_id: u64,
        index: u32,
        why: &'static str,
    },
    /// The receiver's writer made chunk `index` of `session` durable and recorded it.
    Commit {
        session: SessionId,
        index: u32,
    },
    /// The receiver's writer found chunk `index` not matching its hash.
    BadChunk {
        conn: u32,
        index: u32,
    },
    FileInPlace {
        session: SessionId,
        name: String,
    },
    Cut {
        conn: u32,
    },
    Truncated {
        conn: u32,
    },
    BlackHole {
        conn: u32,
    },
    SourceChanged {
        version: u32,
    },
    ReceiverDown,
    ReceiverUp,
    SenderRestart {
        run: u32,
    },
}

/// How the receiver's driver answers `StartDcsp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DcspAnswer {
    Ready,
    Refuse(ErrorCode),
    /// Never: the set-up hangs (and the driver feeds no further frame of that connection).
    Never,
}

/// The world's knobs.
#[derive(Debug, Clone)]
pub struct Cfg {
    pub seed: u64,
    pub file_size: u64,
    pub data_path: DataPath,
    /// One-way latency of every stream and datagram.
    pub latency: Duration,
    /// Random extra latency per write (order is kept).
    pub jitter: Duration,
    pub retry_for: Duration,
    pub connect_timeout: Duration,
    pub control_port: u16,
    /// The port the receiver's DCSP socket is on (and names in `UdpReady`).
    pub dcsp_port: u16,
    pub sender_dcsp_version: u8,
    /// Pick among the due tasks at random (else the earliest, in a fixed order).
    pub random: bool,
    /// Time one reader step takes (random up to twice this with `random`).
    pub read_time: Duration,
    /// Time the writer takes per chunk (random up to twice this with `random`).
    pub write_time: Duration,
    /// Time the receiver takes to check the whole file and put it in place.
    pub finish_time: Duration,
    /// The first offers are refused with these.
    pub refusals: Vec<(ErrorCode, String)>,
    pub dcsp_answer: DcspAnswer,
    /// Datagrams never arrive; the sender's plane reports UDP unusable after [`UDP_PROBE`].
    pub udp_blocked: bool,
    /// Connection attempts fail (nothing answers at the receiver's address).
    pub unreachable: bool,
    /// The first verification of these chunks sees corrupted bytes.
    pub corrupt_once: BTreeSet<u32>,
    /// With `random`: chance that a verification sees corrupted bytes (while the chaos budget lasts).
    pub corrupt_prob: f64,
    /// With `random`: chance per step of a chaos event (cut, truncation, restarts), and how many at most.
    pub chaos_prob: f64,
    pub chaos_budget: u32,
    /// With `random`: chance that a takeover of a session still held by another connection is refused as busy.
    pub busy_prob: f64,
    /// With `random`: chance that the source changed when the sender is restarted.
    pub change_source_prob: f64,
    /// The receiver's whole-file check finds another hash than the sender announced.
    pub final_mismatch: bool,
    /// The control protocol version both ends agree on in `Hello`.
    pub protocol_version: u16,
}

impl Cfg {
    pub fn new(data_path: DataPath, chunks: u32) -> Self {
        Self {
            seed: 1,
            // The last chunk is short.
            file_size: u64::from(chunks.saturating_sub(1)) * CHUNK
                + if chunks > 0 { CHUNK / 2 + 7 } else { 0 },
            data_path,
            latency: Duration::from_millis(20),
            jitter: Duration::ZERO,
            retry_for: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(30),
            control_port: 7700,
            dcsp_port: 7700,
            sender_dcsp_version: DCSP_VERSION,
            random: false,
            read_time: Duration::from_millis(10),
            write_time: Duration::from_millis(15),
            finish_time: Duration::from_millis(50),
            refusals: Vec::new(),
            dcsp_answer: DcspAnswer::Ready,
            udp_blocked: false,
            unreachable: false,
            corrupt_once: BTreeSet::new(),
            corrupt_prob: 0.0,
            chaos_prob: 0.0,
            chaos_budget: 0,
            busy_prob: 0.0,
            change_source_prob: 0.0,
            final_mismatch: false,
            protocol_version: PROTOCOL_VERSION,
        }
    }

    pub fn tcp(chunks: u32) -> Self {
        Self::new(DataPath::Tcp, chunks)
    }

    pub fn udp(chunks: u32) -> Self {
        Self::new(DataPath::Udp { explicit: false }, chunks)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The network

/// One direction of a control connection: in-order bytes with latency, then maybe the end of the stream.
#[derive(Debug, Default)]
struct Pipe {
    segs: VecDeque<(Instant, Vec<u8>)>,
    eof_at: Option<Instant>,
    /// The writer closed it (or the connection broke): later writes vanish.
    write_closed: bool,
    /// The reader stopped reading: nothing is delivered any more.
    read_closed: bool,
    last_at: Option<Instant>,
    /// Delivered bytes not yet decoded (a frame's beginning).
    rx: Vec<u8>,
}

enum Delivery {
    Bytes(Vec<u8>),
    Eof,
}

impl Pipe {
    fn after(&self, at: Instant) -> Instant {
        self.last_at.map_or(at, |l| l.max(at))
    }

    fn write(&mut self, at: Instant, bytes: Vec<u8>) {
        if self.write_closed || bytes.is_empty() {
            return;
        }
        let at = self.after(at);
        self.last_at = Some(at);
        self.segs.push_back((at, bytes));
    }

    /// A clean close: what was written arrives, then the end.
    fn close(&mut self, at: Instant) {
        if self.write_closed {
            return;
        }
        self.write_closed = true;
        self.eof_at = Some(self.after(at));
    }

    /// The connection broke: what is in flight is lost.
    fn cut(&mut self, at: Instant) {
        self.segs.clear();
        self.write_closed = true;
        self.eof_at = Some(self.eof_at.map_or(at, |e| e.min(at)));
    }

    /// The connection broke inside a frame: its reader gets a partial frame, then the end.
    fn truncate(&mut self, at: Instant, rng: &mut StdRng) {
        if self.write_closed {
            return;
        }
        let mut pending: Vec<u8> = self.segs.drain(..).flat_map(|(_, b)| b).collect();
        // Writes are whole frames, so what is pending starts at a frame's start.
        let mut frames = Vec::new();
        let mut at_byte = 0;
        while at_byte + HEADER_LEN <= pending.len() {
            let len = u32::from_be_bytes([
                pending[at_byte],
                pending[at_byte + 1],
                pending[at_byte + 2],
                pending[at_byte + 3],
            ]) as usize
                + 4;
            frames.push((at_byte, len));
            at_byte += len;
        }
        let cut = match frames.is_empty() {
            // Nothing in flight: the connection dies while the next frame's header is being written.
            true => {
                pending = vec![0, 0, 0];
                3
            }
            false => {
                let (start, len) = frames[rng.gen_range(0..frames.len())];
                start + rng.gen_range(1..len)
            }
        };
        pending.truncate(cut);
        self.write(at, pending);
        self.write_closed = true;
        self.eof_at = Some(self.after(at));
    }

    /// Nothing will ever come out of it again.
    fn dead(&self) -> bool {
        self.read_closed || (self.write_closed && self.next_due().is_none())
    }

    fn next_due(&self) -> Option<Instant> {
        if self.read_closed {
            return None;
        }
        self.segs.front().map(|s| s.0).or(self.eof_at)
    }

    fn pop(&mut self, now: Instant) -> Option<Delivery> {
        if self.read_closed {
            return None;
        }
        match self.segs.front() {
            Some((at, _)) if *at <= now => self.segs.pop_front().map(|(_, b)| Delivery::Bytes(b)),
            Some(_) => None,
            None => match self.eof_at {
                Some(at) if at <= now => {
                    self.eof_at = None;
                    self.read_closed = true;
                    Some(Delivery::Eof)
                }
                _ => None,
            },
        }
    }

    /// The next whole frame in `rx`: `Ok(None)` when incomplete.
    fn take_frame(&mut self) -> Result<Option<(u8, Vec<u8>)>, frame::WireError> {
        if self.rx.len() < HEADER_LEN {
            return Ok(None);
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.rx[..HEADER_LEN]);
        let (len, ty) = frame::parse_header(header)?;
        if self.rx.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let body = self.rx[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.rx.drain(..HEADER_LEN + len);
        Ok(Some((ty, body)))
    }
}

#[derive(Debug)]
struct Conn {
    /// Sender → receiver.
    up: Pipe,
    /// Receiver → sender.
    down: Pipe,
}

#[derive(Debug, Clone)]
struct Datagram {
    at: Instant,
    conn_id: u64,
    port: u16,
    index: u32,
    content: Vec<u8>,
}

// ---------------------------------------------------------------------------------------------------------------
// The sender's driver

#[derive(Debug)]
struct TcpChunk {
    index: u32,
    next_piece: u32,
    pieces: u32,
    content: Vec<u8>,
    sha: [u8; 32],
}

/// The reader and the data path of one `StartData`.
#[derive(Debug)]
struct Reader {
    first_pass: Vec<FirstPass>,
    pos: usize,
    /// DCSP: connection id and port.
    udp: Option<(u64, u16)>,
    resend: VecDeque<u32>,
    cur: Option<TcpChunk>,
    /// Until the first pass is over.
    /// The first pass's whole-file hash and chunk list hash, until the pass is over.
    hasher: Option<(Hasher, ChunkListHasher)>,
    next_at: Instant,
}

impl Reader {
    fn busy(&self) -> bool {
        self.cur.is_some()
            || !self.resend.is_empty()
            || self.pos < self.first_pass.len()
            || self.hasher.is_some()
    }
}

#[derive(Debug, Clone, Copy)]
struct SenderConn {
    id: u32,
    link: Option<UdpLink>,
}

#[derive(Debug)]
pub struct SenderDrv {
    pub session: SendSession,
    /// Which run of `send` this is (0, then 1 after a restart, …).
    pub run: u32,
    conn: Option<SenderConn>,
    /// A connection attempt, resolved at this time.
    attempt: Option<Instant>,
    reader: Option<Reader>,
    hash_job: Option<Instant>,
    /// The DCSP plane reports UDP unusable at this time.
    probe: Option<Instant>,
    pub result: Option<Result<Delivered, SendError>>,
}

// ---------------------------------------------------------------------------------------------------------------
// The receiver's driver and store

/// One chunk for the writer: verify, commit, verdict.
#[derive(Debug)]
struct Job {
    due: Instant,
    index: u32,
    content: Vec<u8>,
    expected: [u8; 32],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecvPath {
    Tcp,
    Dcsp,
}

#[derive(Debug)]
struct RecvConn {
    session: RecvSession,
    /// The control connection is open at the receiver.
    live: bool,
    path: Option<RecvPath>,
    offered: Option<SessionId>,
    /// `StartDcsp` was never answered: no further frame is fed.
    stalled: bool,
    tcp_cur: Option<(u32, Vec<u8>)>,
    /// DCSP: chunk contents and announced hashes, paired up into writer jobs.
    content: BTreeMap<u32, Vec<u8>>,
    hashes: BTreeMap<u32, [u8; 32]>,
    jobs: VecDeque<Job>,
    /// When the writer finishes the file, what the sender announced: its hash and (version 3) chunk list hash.
    finish: Option<(Instant, [u8; 32], Option<[u8; 32]>)>,
    dcsp_ids: Vec<u64>,
}

impl RecvConn {
    fn idle(&self) -> bool {
        !self.live && self.jobs.is_empty() && self.finish.is_none()
    }

    fn writer_free_at(&self, now: Instant) -> Instant {
        self.jobs.back().map_or(now, |j| j.due.max(now))
    }
}

/// One incoming session in the receiver's store.
#[derive(Debug, Clone)]
pub struct Record {
    pub file_name: String,
    pub plan: ChunkPlan,
    /// Verified chunks: their hash and content.
    pub chunks: BTreeMap<u32, ([u8; 32], Vec<u8>)>,
    /// How often each chunk was committed.
    pub commits: BTreeMap<u32, u32>,
    pub completed: Option<(String, [u8; 32])>,
}

/// What survives connections and receiver restarts: the sessions and the output dir.
#[derive(Debug, Default)]
pub struct Store {
    pub sessions: BTreeMap<SessionId, Record>,
    pub files: BTreeMap<String, Vec<u8>>,
}

impl Store {
    pub fn verified(&self, id: SessionId) -> usize {
        self.sessions.get(&id).map_or(0, |r| r.chunks.len())
    }

    fn free_name(&self, name: &str) -> String {
        if !self.files.contains_key(name) {
            return name.to_owned();
        }
        let (stem, ext) = name.split_once('.').unwrap_or((name, ""));
        (1..)
            .map(|n| match ext {
                "" => format!("{stem} ({n})"),
                _ => format!("{stem} ({n}).{ext}"),
            })
            .find(|n| !self.files.contains_key(n))
            .unwrap_or_default()
    }
}

#[derive(Debug)]
pub struct Receiver {
    pub store: Store,
    pub up: bool,
    back_at: Option<Instant>,
    conns: BTreeMap<u32, RecvConn>,
    /// DCSP connection ids registered, and the control connection they belong to.
    ids: BTreeMap<u64, u32>,
    held: VecDeque<(Instant, Datagram)>,
    refusals: VecDeque<(ErrorCode, String)>,
    corrupted: BTreeSet<u32>,
}

// ---------------------------------------------------------------------------------------------------------------
// The world

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Task {
    Up(u32),
    Down(u32),
    Datagram,
    Attempt,
    SenderTimer,
    Reader,
    Hash,
    Probe,
    RecvTimer(u32),
    Job(u32),
    Finish(u32),
    ReceiverBack,
}

#[derive(Debug)]
pub struct World {
    pub cfg: Cfg,
    pub start: Instant,
    pub now: Instant,
    rng: StdRng,
    pub source: Source,
    conns: BTreeMap<u32, Conn>,
    next_conn: u32,
    datagrams: VecDeque<Datagram>,
    pub snd: SenderDrv,
    pub rcv: Receiver,
    pub trace: Vec<(Duration, Ev)>,
    /// Broken rules the harness noticed (a chunk committed twice, a `Resend` with no data path, …).
    pub violations: Vec<String>,
    pub steps: u64,
    chaos_left: u32,
    /// The largest `bytes_confirmed` the sender ever reported, in any run.
    pub max_confirmed: u64,
}

impl World {
    /// A world whose sender starts a fresh session now.
    pub fn new(cfg: Cfg) -> Self {
        let start = Instant::now();
        let id = SessionId(StdRng::seed_from_u64(cfg.seed ^ 0x5e55_1011).gen());
        let source = Source::new(cfg.file_size, 1);
        let session = SendSession::new(send_config(&cfg, source.plan, 0), id, true, start);
        let mut w = Self {
            rng: StdRng::seed_from_u64(cfg.seed),
            start,
            now: start,
            source,
            conns: BTreeMap::new(),
            next_conn: 1,
            datagrams: VecDeque::new(),
            snd: SenderDrv::new(session, 0),
            rcv: Receiver {
                store: Store::default(),
                up: true,
                back_at: None,
                conns: BTreeMap::new(),
                ids: BTreeMap::new(),
                held: VecDeque::new(),
                refusals: cfg.refusals.iter().cloned().collect(),
                corrupted: BTreeSet::new(),
            },
            trace: Vec::new(),
            violations: Vec::new(),
            steps: 0,
            chaos_left: cfg.chaos_budget,
            max_confirmed: 0,
            cfg,
        };
        w.sender_pump();
        w
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    fn log(&mut self, ev: Ev) {
        self.trace.push((self.now - self.start, ev));
    }

    fn violation(&mut self, what: String) {
        self.violations
            .push(format!("{:?}: {what}", self.now - self.start));
    }

    fn lat(&mut self) -> Duration {
        let j = self.cfg.jitter;
        let extra = if j.is_zero() {
            Duration::ZERO
        } else {
            j.mul_f64(self.rng.gen::<f64>())
        };
        self.cfg.latency + extra
    }

    fn work(&mut self, base: Duration) -> Duration {
        if self.cfg.random {
            base.mul_f64(2.0 * self.rng.gen::<f64>())
        } else {
            base
        }
    }

    // -----------------------------------------------------------------------------------------------------------
    // Running

    /// Runs one task that is due, or moves the clock to the next one; false when nothing is left to happen.
    pub fn step(&mut self) -> bool {
        self.steps += 1;
        if self.cfg.random && self.chaos_left > 0 && self.rng.gen_bool(self.cfg.chaos_prob) {
            self.chaos_left -= 1;
            self.random_chaos();
        }
        let tasks = self.tasks();
        let Some(earliest) = tasks.iter().map(|t| t.0).min() else {
            return false;
        };
        if earliest > self.now {
            self.now = earliest;
            return true;
        }
        let ready: Vec<Task> = tasks
            .iter()
            .filter(|t| t.0 <= self.now)
            .map(|t| t.1)
            .collect();
        let task = if self.cfg.random {
            ready[self.rng.gen_range(0..ready.len())]
        } else {
            tasks
                .iter()
                .filter(|t| t.0 == earliest)
                .map(|t| t.1)
                .next()
                .unwrap_or(ready[0])
        };
        self.run_task(task);
        if let Task::Up(id) | Task::Down(id) = task {
            if self
                .conns
                .get(&id)
                .is_some_and(|c| c.up.dead() && c.down.dead())
            {
                self.conns.remove(&id);
            }
        }
        let confirmed = self.snd.session.stats().bytes_confirmed;
        self.max_confirmed = self.max_confirmed.max(confirmed);
        if confirmed > self.source.plan.file_size() {
            self.violation(format!(
                "bytes_confirmed {confirmed} exceeds the file's {} bytes",
                self.source.plan.file_size()
            ));
        }
        true
    }

    /// Steps until `done` holds (true), the world stops, or `max_steps` pass (false).
    pub fn run_until(&mut self, max_steps: u64, mut done: impl FnMut(&World) -> bool) -> bool {
        for _ in 0..max_steps {
            if done(self) {
                return true;
            }
            if !self.step() {
                return done(self);
            }
        }
        done(self)
    }

    /// Steps until the sender's run ended; panics (with the trace's tail) if it does not within `max_steps`.
    pub fn run(&mut self, max_steps: u64) -> &Result<Delivered, SendError> {
        if !self.run_until(max_steps, |w| w.snd.result.is_some()) {
            panic!(
                "the sender did not finish within {max_steps} steps ({:?} virtual)\n{}",
                self.elapsed(),
                self.tail(60)
            );
        }
        self.snd.result.as_ref().expect("finished")
    }

    /// Runs to the end and returns what was delivered; panics unless the run delivered the source.
    pub fn run_ok(&mut self, max_steps: u64) -> Delivered {
        let result = self.run(max_steps).clone();
        match result {
            Ok(d) => {
                self.assert_delivered(&d);
                d
            }
            Err(e) => panic!("the run failed: {e}\n{}", self.tail(60)),
        }
    }

    /// The delivered file is the source, under the name the sender was told, and nothing broke a rule.
    pub fn assert_delivered(&self, d: &Delivered) {
        assert!(self.violations.is_empty(), "{:#?}", self.violations);
        assert_eq!(d.sha256, self.source.sha(), "delivered hash");
        let file = self
            .rcv
            .store
            .files
            .get(&d.final_name)
            .unwrap_or_else(|| panic!("no file {} at the receiver", d.final_name));
        assert!(
            *file == self.source.bytes(),
            "the file at the receiver is not the source"
        );
    }

    fn tasks(&self) -> Vec<(Instant, Task)> {
        let mut t = Vec::new();
        for (&id, c) in &self.conns {
            if let Some(at) = c.up.next_due() {
                t.push((at, Task::Up(id)));
            }
            if let Some(at) = c.down.next_due() {
                t.push((at, Task::Down(id)));
            }
        }
        if let Some(d) = self.datagrams.front() {
            t.push((d.at, Task::Datagram));
        }
        if self.snd.result.is_none() {
            if let Some(at) = self.snd.attempt {
                t.push((at, Task::Attempt));
            }
            if let Some(at) = self.snd.session.poll_timeout() {
                t.push((at, Task::SenderTimer));
            }
            if let Some(r) = self.snd.reader.as_ref().filter(|r| r.busy()) {
                t.push((r.next_at, Task::Reader));
            }
            if let Some(at) = self.snd.hash_job {
                t.push((at, Task::Hash));
            }
            if let Some(at) = self.snd.probe {
                t.push((at, Task::Probe));
            }
        }
        for (&id, c) in &self.rcv.conns {
            if c.live && !c.stalled {
                if let Some(at) = c.session.poll_timeout() {
                    t.push((at, Task::RecvTimer(id)));
                }
            }
            if let Some(j) = c.jobs.front() {
                t.push((j.due, Task::Job(id)));
            } else if let Some((at, _, _)) = c.finish {
                t.push((at, Task::Finish(id)));
            }
        }
        if let Some(at) = self.rcv.back_at {
            t.push((at, Task::ReceiverBack));
        }
        t
    }

    fn run_task(&mut self, task: Task) {
        match task {
            Task::Up(id) => self.deliver_up(id),
            Task::Down(id) => self.deliver_down(id),
            Task::Datagram => self.deliver_datagram(),
            Task::Attempt => self.resolve_attempt(),
            Task::SenderTimer => {
                self.snd.session.handle_timeout(self.now);
                self.sender_pump();
            }
            Task::Reader => self.reader_step(),
            Task::Hash => {
                self.snd.hash_job = None;
                let sha = self.source.sha();
                self.snd.session.file_hashed(self.now, sha, None);
                self.sender_pump();
            }
            Task::Probe => {
                self.snd.probe = None;
                self.snd
                    .session
                    .udp_unusable(self.now, "no UDP answer within 3 s");
                self.sender_pump();
            }
            Task::RecvTimer(id) => {
                if let Some(c) = self.rcv.conns.get_mut(&id) {
                    c.session.handle_timeout(self.now);
                }
                self.recv_pump(id);
            }
            Task::Job(id) => self.writer_step(id),
            Task::Finish(id) => self.finish_step(id),
            Task::ReceiverBack => {
                self.rcv.back_at = None;
                self.rcv.up = true;
                self.log(Ev::ReceiverUp);
            }
        }
    }

    // -----------------------------------------------------------------------------------------------------------
    // Chaos, by hand or at random

    /// The sender's current control connection.
    pub fn current_conn(&self) -> Option<u32> {
        self.snd.conn.map(|c| c.id)
    }

    /// Connection `id` breaks: what is in flight either way is lost, both ends see it end.
    pub fn cut(&mut self, id: u32) {
        let at = self.now + self.cfg.latency;
        if let Some(c) = self.conns.get_mut(&id) {
            c.up.cut(at);
            c.down.cut(at);
            self.log(Ev::Cut { conn: id });
        }
    }

    /// Connection `id` goes silent: nothing gets through any more, and each end notices only after a while (the
    /// sender after `sender_after`, by TCP's user timeout; the receiver after `receiver_after`), unless a
    /// silence limit of its own ends it first.
    pub fn black_hole(&mut self, id: u32, sender_after: Duration, receiver_after: Duration) {
        let now = self.now;
        if let Some(c) = self.conns.get_mut(&id) {
            c.up.cut(now + receiver_after);
            c.down.cut(now + sender_after);
            self.log(Ev::BlackHole { conn: id });
        }
    }

    /// Connection `id` breaks inside a frame each way: both ends get a partial frame, then the end.
    pub fn truncate(&mut self, id: u32) {
        let at = self.now + self.cfg.latency;
        if let Some(c) = self.conns.get_mut(&id) {
            c.up.truncate(at, &mut self.rng);
            c.down.truncate(at, &mut self.rng);
            self.log(Ev::Truncated { conn: id });
        }
    }

    /// Bytes in flight on connection `id` towards the receiver (to pick the moment of a truncation).
    pub fn in_flight_up(&self, id: u32) -> usize {
        self.conns
            .get(&id)
            .map_or(0, |c| c.up.segs.iter().map(|s| s.1.len()).sum())
    }

    pub fn in_flight_down(&self, id: u32) -> usize {
        self.conns
            .get(&id)
            .map_or(0, |c| c.down.segs.iter().map(|s| s.1.len()).sum())
    }

    /// The receiver process dies and is back after `down`: its connections break, its writer's queue and
    /// its DCSP registrations are gone; the store stays.
    pub fn restart_receiver(&mut self, down: Duration) {
        let at = self.now + self.cfg.latency;
        for id in std::mem::take(&mut self.rcv.conns).into_keys() {
            if let Some(c) = self.conns.get_mut(&id) {
                c.up.read_closed = true;
                c.down.cut(at);
            }
        }
        self.rcv.ids.clear();
        self.rcv.held.clear();
        self.rcv.up = false;
        self.rcv.back_at = Some(self.now + down);
        self.log(Ev::ReceiverDown);
    }

    /// The sender process dies and `send` runs again on the session it was sending (a new `SendSession`,
    /// not fresh), from the source as it is now.
    pub fn restart_sender(&mut self) {
        if let Some(c) = self.snd.conn.take() {
            let at = self.now + self.cfg.latency;
            if let Some(conn) = self.conns.get_mut(&c.id) {
                conn.up.cut(at);
                conn.down.read_closed = true;
            }
        }
        let run = self.snd.run + 1;
        let id = self.snd.session.session_id();
        let session = SendSession::new(
            send_config(&self.cfg, self.source.plan, run),
            id,
            false,
            self.now,
        );
        self.snd = SenderDrv::new(session, run);
        self.log(Ev::SenderRestart { run });
        self.sender_pump();
    }

    fn random_chaos(&mut self) {
        let live: Vec<u32> = self.current_conn().into_iter().collect();
        match self.rng.gen_range(0..10) {
            0..=2 => {
                if let Some(&id) = live.first() {
                    self.cut(id);
                }
            }
            3..=5 => {
                if let Some(&id) = live.first() {
                    self.truncate(id);
                }
            }
            6 => {
                if let Some(&id) = live.first() {
                    let s = Duration::from_millis(self.rng.gen_range(5_000..40_000));
                    let r = Duration::from_millis(self.rng.gen_range(5_000..200_000));
                    self.black_hole(id, s, r);
                }
            }
            7 => {
                if self.rcv.up {
                    let down = Duration::from_millis(self.rng.gen_range(50..3000));
                    self.restart_receiver(down);
                }
            }
            _ => {
                if self.snd.result.is_none() {
                    if self.rng.gen_bool(self.cfg.change_source_prob) {
                        self.source.version += 1;
                        let version = self.source.version;
                        self.log(Ev::SourceChanged { version });
                    }
                    self.restart_sender();
                }
            }
        }
    }

    // -----------------------------------------------------------------------------------------------------------
    // The sender's driver

    fn sender_pump(&mut self) {
        loop {
            let mut out = Vec::new();
            if self.snd.session.poll_transmit(&mut out) {
                if let Some(c) = self.snd.conn {
                    let at = self.now + self.lat();
                    if let Some(conn) = self.conns.get_mut(&c.id) {
                        conn.up.write(at, out);
                    }
                }
            }
            let Some(action) = self.snd.session.poll_action() else {
                break;
            };
            self.log(Ev::Send(action.clone()));
            match action {
                SendAction::Connect => {
                    if self.snd.attempt.is_some() {
                        self.violation("Connect while an attempt is under way".into());
                    }
                    if self.snd.conn.is_some() {
                        self.violation("Connect while connected (no Disconnect first)".into());
                    }
                    let delay = if self.cfg.unreachable {
                        Duration::from_secs(1)
                    } else if !self.rcv.up {
                        2 * self.cfg.latency
                    } else {
                        6 * self.cfg.latency
                    };
                    self.snd.attempt = Some(self.now + delay);
                }
                SendAction::StartData {
                    first_pass,
                    udp_port,
                } => {
                    let link = self.snd.conn.and_then(|c| c.link);
                    let udp = match (udp_port, link) {
                        (Some(port), Some(l)) => Some((l.conn_id, port)),
                        (Some(_), None) => {
                            self.violation(
                                "StartData over DCSP on a connection without a UdpLink".into(),
                            );
                            None
                        }
                        (None, _) => None,
                    };
                    if self.snd.reader.is_some() {
                        self.violation("StartData while a data path runs".into());
                    }
                    if self.snd.conn.is_none() {
                        self.violation("StartData without a connection".into());
                    }
                    self.snd.reader = Some(Reader {
                        first_pass,
                        pos: 0,
                        udp,
                        resend: VecDeque::new(),
                        cur: None,
                        hasher: Some((
                            Hasher::new(),
                            ChunkListHasher::new(self.snd.session.plan()),
                        )),
                        next_at: self.now,
                    });
                    if udp.is_some() && self.cfg.udp_blocked {
                        self.snd.probe = Some(self.now + UDP_PROBE);
                    }
                }
                SendAction::StopData => {
                    self.snd.reader = None;
                    self.snd.probe = None;
                }
                SendAction::Resend(index) => match self.snd.reader.as_mut() {
                    Some(r) => r.resend.push_back(index),
                    None => self.violation(format!("Resend({index}) with no data path running")),
                },
                SendAction::HashWholeFile => {
                    let t = self.work(self.cfg.read_time);
                    self.snd.hash_job = Some(self.now + t);
                }
                SendAction::Disconnect => self.sender_close(),
                SendAction::Finished(result) => {
                    self.snd.result = Some(result);
                    self.snd.reader = None;
                    self.snd.probe = None;
                    self.snd.hash_job = None;
                    self.snd.attempt = None;
                    self.sender_close();
                }
                _ => {}
            }
        }
    }

    /// The sender closes its connection: what it wrote still arrives, then the end; it reads no more.
    fn sender_close(&mut self) {
        if let Some(c) = self.snd.conn.take() {
            let at = self.now + self.cfg.latency;
            if let Some(conn) = self.conns.get_mut(&c.id) {
                conn.up.close(at);
                conn.down.read_closed = true;
            }
        }
    }

    fn resolve_attempt(&mut self) {
        self.snd.attempt = None;
        if self.cfg.unreachable || !self.rcv.up {
            let error = if self.cfg.unreachable {
                "connection timed out"
            } else {
                "connection refused"
            };
            self.log(Ev::ConnectFailed {
                error: error.into(),
            });
            self.snd.session.connect_failed(self.now, error);
            self.sender_pump();
            return;
        }
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            id,
            Conn {
                up: Pipe::default(),
                down: Pipe::default(),
            },
        );
        self.rcv.conns.insert(
            id,
            RecvConn {
                session: RecvSession::new(
                    RecvConfig {
                        dcsp_version: DCSP_VERSION,
                        protocol_version: self.cfg.protocol_version,
                    },
                    self.now,
                ),
                live: true,
                path: None,
                offered: None,
                stalled: false,
                tcp_cur: None,
                content: BTreeMap::new(),
                hashes: BTreeMap::new(),
                jobs: VecDeque::new(),
                finish: None,
                dcsp_ids: Vec::new(),
            },
        );
        let link = matches!(self.snd.session.data_path(), DataPath::Udp { .. }).then(|| UdpLink {
            conn_id: self.rng.gen(),
            shard_size: 1200,
        });
        self.snd.conn = Some(SenderConn { id, link });
        self.log(Ev::Connected {
            conn: id,
            run: self.snd.run,
        });
        self.snd.session.connected(
            self.now,
            self.cfg.control_port,
            link,
            self.cfg.protocol_version,
        );
        self.sender_pump();
    }

    fn deliver_down(&mut self, id: u32) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(d) = conn.down.pop(self.now) else {
            return;
        };
        let current = self.snd.conn.is_some_and(|c| c.id == id) && self.snd.result.is_none();
        match d {
            Delivery::Bytes(b) => {
                conn.down.rx.extend_from_slice(&b);
                if !current {
                    return;
                }
                loop {
                    if self.snd.conn.is_none_or(|c| c.id != id) {
                        break;
                    }
                    let Some(conn) = self.conns.get_mut(&id) else {
                        break;
                    };
                    let (ty, body) = match conn.down.take_frame() {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(e) => {
                            self.snd.session.connection_lost(self.now, &e.to_string());
                            self.sender_pump();
                            break;
                        }
                    };
                    match Frame::decode(ty, &body) {
                        Ok(f) => {
                            self.log(Ev::AtSender {
                                conn: id,
                                frame: Wire::of(&f),
                            });
                            self.snd.session.handle_frame(self.now, &f);
                        }
                        Err(e) => self.snd.session.connection_lost(self.now, &e.to_string()),
                    }
                    self.sender_pump();
                }
            }
            Delivery::Eof => {
                let partial = conn.down.rx.len();
                self.log(Ev::Eof {
                    conn: id,
                    at_receiver: false,
                    partial,
                });
                if current {
                    let why = if partial > 0 {
                        "connection closed inside a frame"
                    } else {
                        "connection closed"
                    };
                    self.snd.session.connection_lost(self.now, why);
                    self.sender_pump();
                }
            }
        }
    }

    fn reader_step(&mut self) {
        let step = self.work(self.cfg.read_time);
        let now = self.now;
        let source = self.source;
        let session_id = self.snd.session.session_id();
        let conn = self.snd.conn.map_or(0, |c| c.id);
        let Some(r) = self.snd.reader.as_mut() else {
            return;
        };
        r.next_at = now + step;
        // A TCP chunk under way goes on, piece by piece.
        if let Some(mut cur) = r.cur.take() {
            let last = self.tcp_piece(&mut cur);
            if last {
                self.log(Ev::ChunkOut {
                    session: session_id,
                    index: cur.index,
                    conn,
                    udp: None,
                });
                self.snd.session.chunk_sent(now, cur.index, cur.sha);
                self.sender_pump();
            } else if let Some(r) = self.snd.reader.as_mut() {
                r.cur = Some(cur);
            }
            return;
        }
        let (index, send, udp) = if let Some(i) = r.resend.pop_front() {
            (i, true, r.udp)
        } else if r.pos < r.first_pass.len() {
            let i = r.pos as u32;
            r.pos += 1;
            if let Some((h, list)) = r.hasher.as_mut() {
                h.update(&source.content(i));
                list.push(&source.chunk_sha(i));
            }
            (
                i,
                matches!(r.first_pass[i as usize], FirstPass::Send),
                r.udp,
            )
        } else if let Some((h, list)) = r.hasher.take() {
            self.snd.session.file_hashed(now, h.finish(), list.finish());
            self.sender_pump();
            return;
        } else {
            return;
        };
        let sha = source.chunk_sha(index);
        if !send {
            self.log(Ev::ChunkChecked { index });
            self.snd.session.chunk_checked(now, index, sha);
            self.sender_pump();
            return;
        }
        match udp {
            Some((conn_id, port)) => {
                self.log(Ev::ChunkOut {
                    session: session_id,
                    index,
                    conn,
                    udp: Some((conn_id, port)),
                });
                let at = now + self.lat();
                let at = self.datagrams.back().map_or(at, |d| d.at.max(at));
                if self.cfg.udp_blocked {
                    self.log(Ev::DatagramDropped {
                        conn_id,
                        index,
                        why: "UDP blocked",
                    });
                } else {
                    self.datagrams.push_back(Datagram {
                        at,
                        conn_id,
                        port,
                        index,
                        content: source.content(index),
                    });
                }
                self.snd.session.chunk_sent(now, index, sha);
                self.sender_pump();
            }
            None => {
                let len = source.plan.len(index);
                let mut cur = TcpChunk {
                    index,
                    next_piece: 0,
                    pieces: len.div_ceil(DATA_PIECE as u64) as u32,
                    content: source.content(index),
                    sha,
                };
                let mut out = Vec::new();
                Frame::ChunkBegin { index }.encode(&mut out);
                self.write_up(out);
                if self.tcp_piece(&mut cur) {
                    self.log(Ev::ChunkOut {
                        session: session_id,
                        index,
                        conn,
                        udp: None,
                    });
                    self.snd.session.chunk_sent(now, index, sha);
                    self.sender_pump();
                } else if let Some(r) = self.snd.reader.as_mut() {
                    r.cur = Some(cur);
                }
            }
        }
    }

    /// Writes the next `Data` frame of a TCP chunk (and its `ChunkEnd` after the last); true when it ended.
    fn tcp_piece(&mut self, cur: &mut TcpChunk) -> bool {
        let plan = self.source.plan;
        let len = plan.len(cur.index);
        let p = u64::from(cur.next_piece);
        let raw_len = (len - p * DATA_PIECE as u64).min(DATA_PIECE as u64) as u32;
        let n = cur.content.len();
        let (a, b) = (
            n * p as usize / cur.pieces as usize,
            n * (p as usize + 1) / cur.pieces as usize,
        );
        let mut out = Vec::new();
        Frame::Data {
            raw_len,
            compressed: true,
            payload: &cur.content[a..b],
        }
        .encode(&mut out);
        cur.next_piece += 1;
        let last = cur.next_piece == cur.pieces;
        if last {
            Frame::ChunkEnd { sha256: cur.sha }.encode(&mut out);
        }
        self.write_up(out);
        last
    }

    fn write_up(&mut self, out: Vec<u8>) {
        if let Some(c) = self.snd.conn {
            let at = self.now + self.lat();
            if let Some(conn) = self.conns.get_mut(&c.id) {
                conn.up.write(at, out);
            }
        }
    }

    // -----------------------------------------------------------------------------------------------------------
    // The receiver's driver

    fn recv_pump(&mut self, id: u32) {
        loop {
            let Some(c) = self.rcv.conns.get_mut(&id) else {
                return;
            };
            let mut out = Vec::new();
            if c.session.poll_transmit(&mut out) {
                let at = self.now + self.lat();
                if let Some(conn) = self.conns.get_mut(&id) {
                    conn.down.write(at, out);
                }
            }
            let Some(c) = self.rcv.conns.get_mut(&id) else {
                return;
            };
            let Some(action) = c.session.poll_action() else {
                break;
            };
            self.log(Ev::Recv {
                conn: id,
                action: action.clone(),
            });
            match action {
                RecvAction::Offered {
                    session_id,
                    file_name,
                    plan,
                    ..
                } => self.offered(id, session_id, file_name, plan),
                RecvAction::StartTcp => {
                    if let Some(c) = self.rcv.conns.get_mut(&id) {
                        c.path = Some(RecvPath::Tcp);
                    }
                }
                RecvAction::StartDcsp {
                    conn_id, streams, ..
                } => self.start_dcsp(id, conn_id, streams),
                RecvAction::FinishFile {
                    expected,
                    chunk_list,
                } => {
                    let t = self.work(self.cfg.finish_time);
                    if let Some(c) = self.rcv.conns.get_mut(&id) {
                        c.finish = Some((c.writer_free_at(self.now) + t, expected, chunk_list));
                    }
                }
                RecvAction::Finished(_) => self.recv_close(id),
                _ => {}
            }
        }
        if self.rcv.conns.get(&id).is_some_and(RecvConn::idle) {
            self.rcv.conns.remove(&id);
        }
    }

    /// The receiver ends the connection: what it wrote still arrives, then the end; its writer finishes its
    /// queue on its own.
    fn recv_close(&mut self, id: u32) {
        let at = self.now + self.cfg.latency;
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.down.close(at);
            conn.up.read_closed = true;
        }
        if let Some(c) = self.rcv.conns.get_mut(&id) {
            c.live = false;
            for cid in std::mem::take(&mut c.dcsp_ids) {
                self.rcv.ids.remove(&cid);
            }
        }
    }

    fn offered(&mut self, id: u32, session_id: SessionId, file_name: String, plan: ChunkPlan) {
        // A sender runs one connection per session: an older one still holding it is dead, and is made to
        // step aside (its writer finishing first), unless that takes too long (busy).
        let holders: Vec<u32> = self
            .rcv
            .conns
            .iter()
            .filter(|(&k, c)| k != id && c.offered == Some(session_id) && !c.idle())
            .map(|(&k, _)| k)
            .collect();
        for old in holders {
            let live = self.rcv.conns.get(&old).is_some_and(|c| c.live);
            if live && self.cfg.random && self.rng.gen_bool(self.cfg.busy_prob) {
                return self.refuse(
                    id,
                    ErrorCode::Busy,
                    "session is still being received on another connection",
                );
            }
            if let Some(c) = self.rcv.conns.get_mut(&old) {
                c.session.connection_lost();
            }
            self.recv_pump(old);
            while self.rcv.conns.get(&old).is_some_and(|c| !c.jobs.is_empty()) {
                self.writer_job(old);
            }
            if self.rcv.conns.get(&old).is_some_and(|c| c.finish.is_some()) {
                self.finish_step(old);
            }
            self.recv_pump(old);
        }
        if let Some((code, message)) = self.rcv.refusals.pop_front() {
            return self.refuse(id, code, &message);
        }
        let Some(c) = self.rcv.conns.get_mut(&id) else {
            return;
        };
        c.offered = Some(session_id);
        match self.rcv.store.sessions.get(&session_id) {
            Some(rec) if rec.file_name != file_name || rec.plan != plan => c.session.refuse(
                ErrorCode::SessionMismatch,
                "session belongs to another file",
            ),
            Some(Record {
                completed: Some((name, sha)),
                ..
            }) => c.session.already_complete(Some(*sha), name),
            Some(rec) => {
                let verified: Vec<(u32, [u8; 32])> =
                    rec.chunks.iter().map(|(&i, (sha, _))| (i, *sha)).collect();
                c.session.accept(self.now, &verified, &[]);
            }
            None => {
                self.rcv.store.sessions.insert(
                    session_id,
                    Record {
                        file_name,
                        plan,
                        chunks: BTreeMap::new(),
                        commits: BTreeMap::new(),
                        completed: None,
                    },
                );
                c.session.accept(self.now, &[], &[]);
            }
        }
    }

    fn refuse(&mut self, id: u32, code: ErrorCode, message: &str) {
        if let Some(c) = self.rcv.conns.get_mut(&id) {
            c.session.refuse(code, message);
        }
    }

    fn start_dcsp(&mut self, id: u32, conn_id: u64, streams: u8) {
        match self.cfg.dcsp_answer {
            DcspAnswer::Never => {
                if let Some(c) = self.rcv.conns.get_mut(&id) {
                    c.stalled = true;
                }
            }
            DcspAnswer::Refuse(code) => self.refuse(id, code, "this receiver cannot take DCSP"),
            DcspAnswer::Ready => {
                let ids: Vec<u64> = (0..u64::from(streams))
                    .map(|s| conn_id.wrapping_add(s))
                    .collect();
                for &cid in &ids {
                    self.rcv.ids.insert(cid, id);
                }
                if let Some(c) = self.rcv.conns.get_mut(&id) {
                    c.path = Some(RecvPath::Dcsp);
                    c.dcsp_ids = ids.clone();
                }
                // Datagrams that came before the registration go to the connection now, in arrival order.
                self.expire_held();
                let held = std::mem::take(&mut self.rcv.held);
                let (mine, others): (VecDeque<_>, VecDeque<_>) = held
                    .into_iter()
                    .partition(|(_, d)| ids.contains(&d.conn_id));
                self.rcv.held = others;
                for (_, d) in mine {
                    self.dcsp_content(id, d.index, d.content);
                }
                let port = self.cfg.dcsp_port;
                if let Some(c) = self.rcv.conns.get_mut(&id) {
                    c.session.dcsp_ready(self.now, port);
                }
            }
        }
    }

    fn expire_held(&mut self) {
        while let Some((at, d)) = self.rcv.held.front() {
            if self.now.saturating_duration_since(*at) < EARLY_HOLD {
                break;
            }
            let (conn_id, index) = (d.conn_id, d.index);
            self.rcv.held.pop_front();
            self.log(Ev::DatagramDropped {
                conn_id,
                index,
                why: "held too long",
            });
        }
    }

    fn deliver_datagram(&mut self) {
        let Some(d) = self.datagrams.pop_front() else {
            return;
        };
        if !self.rcv.up {
            return self.log(Ev::DatagramDropped {
                conn_id: d.conn_id,
                index: d.index,
                why: "receiver down",
            });
        }
        if d.port != self.cfg.dcsp_port {
            return self.log(Ev::DatagramDropped {
                conn_id: d.conn_id,
                index: d.index,
                why: "no socket on that port",
            });
        }
        match self.rcv.ids.get(&d.conn_id) {
            Some(&id) => self.dcsp_content(id, d.index, d.content),
            None => {
                self.expire_held();
                self.log(Ev::DatagramHeld {
                    conn_id: d.conn_id,
                    index: d.index,
                });
                self.rcv.held.push_back((self.now, d));
            }
        }
    }

    fn dcsp_content(&mut self, id: u32, index: u32, content: Vec<u8>) {
        if let Some(c) = self.rcv.conns.get_mut(&id) {
            c.content.insert(index, content);
        }
        self.dcsp_pair(id, index);
    }

    /// DCSP: a chunk whose bytes and hash are both there goes to the writer.
    fn dcsp_pair(&mut self, id: u32, index: u32) {
        let t = self.work(self.cfg.write_time);
        let now = self.now;
        let Some(c) = self.rcv.conns.get_mut(&id) else {
            return;
        };
        if !(c.content.contains_key(&index) && c.hashes.contains_key(&index)) {
            return;
        }
        let (Some(content), Some(expected)) = (c.content.remove(&index), c.hashes.remove(&index))
        else {
            return;
        };
        let due = c.writer_free_at(now) + t;
        c.jobs.push_back(Job {
            due,
            index,
            content,
            expected,
        });
    }

    fn deliver_up(&mut self, id: u32) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(d) = conn.up.pop(self.now) else {
            return;
        };
        let live = self.rcv.conns.get(&id).is_some_and(|c| c.live);
        match d {
            Delivery::Bytes(b) => {
                conn.up.rx.extend_from_slice(&b);
                if live {
                    self.recv_parse(id);
                }
            }
            Delivery::Eof => {
                let partial = conn.up.rx.len();
                self.log(Ev::Eof {
                    conn: id,
                    at_receiver: true,
                    partial,
                });
                if live {
                    if let Some(c) = self.rcv.conns.get_mut(&id) {
                        c.session.connection_lost();
                    }
                    self.recv_pump(id);
                }
            }
        }
    }

    fn recv_parse(&mut self, id: u32) {
        loop {
            let Some(c) = self.rcv.conns.get(&id) else {
                return;
            };
            if !c.live || c.stalled {
                return;
            }
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            let (ty, body) = match conn.up.take_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => {
                    if let Some(c) = self.rcv.conns.get_mut(&id) {
                        c.session.fail(ErrorCode::Protocol, &e.to_string());
                    }
                    return self.recv_pump(id);
                }
            };
            match Frame::decode(ty, &body) {
                Ok(f) => {
                    self.log(Ev::AtReceiver {
                        conn: id,
                        frame: Wire::of(&f),
                    });
                    self.recv_frame(id, &f);
                }
                Err(e) => {
                    if let Some(c) = self.rcv.conns.get_mut(&id) {
                        c.session.fail(ErrorCode::Protocol, &e.to_string());
                    }
                    self.recv_pump(id);
                }
            }
        }
    }

    fn recv_frame(&mut self, id: u32, f: &Frame<'_>) {
        let Some(c) = self.rcv.conns.get_mut(&id) else {
            return;
        };
        let incoming = c.session.handle_frame(self.now, f);
        // The actions first (an offer answered, a data path set up), then the instruction.
        self.recv_pump(id);
        let t = self.work(self.cfg.write_time);
        let now = self.now;
        let Some(c) = self.rcv.conns.get_mut(&id) else {
            return;
        };
        match incoming {
            Incoming::ChunkBegin { index, .. } => c.tcp_cur = Some((index, Vec::new())),
            Incoming::Data { .. } => {
                if let (Some((_, buf)), Frame::Data { payload, .. }) = (c.tcp_cur.as_mut(), f) {
                    buf.extend_from_slice(payload);
                }
            }
            Incoming::ChunkEnd { index, expected } => match c.path {
                Some(RecvPath::Dcsp) => {
                    c.hashes.insert(index, expected);
                    self.dcsp_pair(id, index);
                }
                _ => {
                    let content = match c.tcp_cur.take() {
                        Some((i, buf)) if i == index => buf,
                        _ => Vec::new(),
                    };
                    let due = c.writer_free_at(now) + t;
                    c.jobs.push_back(Job {
                        due,
                        index,
                        content,
                        expected,
                    });
                }
            },
            _ => {}
        }
    }

    fn writer_step(&mut self, id: u32) {
        self.writer_job(id);
        self.recv_pump(id);
    }

    /// The writer's next chunk: hashed, and when it matches, made durable and recorded, then the verdict.
    fn writer_job(&mut self, id: u32) {
        let Some(c) = self.rcv.conns.get_mut(&id) else {
            return;
        };
        let Some(mut job) = c.jobs.pop_front() else {
            return;
        };
        let Some(session) = c.offered else {
            return;
        };
        let corrupt = if self.cfg.corrupt_once.contains(&job.index)
            && !self.rcv.corrupted.contains(&job.index)
        {
            self.rcv.corrupted.insert(job.index);
            true
        } else {
            self.cfg.random
                && self.chaos_left > 0
                && self.cfg.corrupt_prob > 0.0
                && self.rng.gen_bool(self.cfg.corrupt_prob)
        };
        if corrupt {
            if let Some(b) = job.content.first_mut() {
                *b ^= 0x20;
            } else {
                job.content.push(0);
            }
        }
        let ok = sha256(&job.content) == job.expected;
        if ok {
            let dup = match self.rcv.store.sessions.get_mut(&session) {
                Some(rec) => {
                    let dup = rec.chunks.contains_key(&job.index);
                    rec.chunks.insert(job.index, (job.expected, job.content));
                    *rec.commits.entry(job.index).or_default() += 1;
                    dup
                }
                None => false,
            };
            if dup {
                self.violation(format!(
                    "chunk {} of session {session} committed twice",
                    job.index
                ));
            }
            self.log(Ev::Commit {
                session,
                index: job.index,
            });
        } else {
            self.log(Ev::BadChunk {
                conn: id,
                index: job.index,
            });
        }
        if let Some(c) = self.rcv.conns.get_mut(&id) {
            c.session.chunk_verified(job.index, ok);
        }
    }

    fn finish_step(&mut self, id: u32) {
        let Some(c) = self.rcv.conns.get_mut(&id) else {
            return;
        };
        let (Some((_, expected, chunk_list)), Some(session)) = (c.finish.take(), c.offered) else {
            return;
        };
        let Some(rec) = self.rcv.store.sessions.get(&session) else {
            return self.recv_pump(id);
        };
        let n = rec.plan.chunk_count();
        if rec.chunks.len() != n as usize {
            self.violation(format!(
                "FinishFile for session {session} with {} of {n} chunks verified",
                rec.chunks.len()
            ));
            return self.recv_pump(id);
        }
        let bytes: Vec<u8> = rec.chunks.values().flat_map(|(_, b)| b.clone()).collect();
        // Version 3: the chunk list hash decides and the sender's whole-file hash is confirmed; before, the
        // whole file is hashed.
        let (sha, ok) = match chunk_list {
            Some(announced) => {
                let hashes: Vec<(u32, [u8; 32])> =
                    rec.chunks.iter().map(|(&i, (sha, _))| (i, *sha)).collect();
                let mut ours = ChunkListHasher::digest(&rec.plan, &hashes).unwrap_or_default();
                if self.cfg.final_mismatch {
                    ours[0] ^= 1;
                }
                (expected, ours == announced)
            }
            None => {
                let mut sha = sha256(&bytes);
                if self.cfg.final_mismatch {
                    sha[0] ^= 1;
                }
                (sha, sha == expected)
            }
        };
        if ok {
            let name = self.rcv.store.free_name(&rec.file_name);
            self.rcv.store.files.insert(name.clone(), bytes);
            if let Some(rec) = self.rcv.store.sessions.get_mut(&session) {
                rec.completed = Some((name.clone(), sha));
            }
            self.log(Ev::FileInPlace {
                session,
                name: name.clone(),
            });
            if let Some(c) = self.rcv.conns.get_mut(&id) {
                c.session.file_in_place(&name, sha);
            }
        } else {
            self.rcv.store.sessions.remove(&session);
            if let Some(c) = self.rcv.conns.get_mut(&id) {
                c.session.file_mismatch(sha);
            }
        }
        self.recv_pump(id);
    }

    // -----------------------------------------------------------------------------------------------------------
    // Probes for the tests

    /// The trace entries matching `pred`, with their times.
    pub fn find<'a>(
        &'a self,
        pred: impl Fn(&Ev) -> bool + 'a,
    ) -> impl Iterator<Item = (Duration, &'a Ev)> + 'a {
        self.trace
            .iter()
            .filter(move |(_, e)| pred(e))
            .map(|(t, e)| (*t, e))
    }

    pub fn count(&self, pred: impl Fn(&Ev) -> bool) -> usize {
        self.trace.iter().filter(|(_, e)| pred(e)).count()
    }

    /// How often each chunk of `session` went on the wire.
    pub fn chunks_out(&self, session: SessionId) -> BTreeMap<u32, usize> {
        let mut m = BTreeMap::new();
        for (_, e) in &self.trace {
            if let Ev::ChunkOut {
                session: s, index, ..
            } = e
            {
                if *s == session {
                    *m.entry(*index).or_default() += 1;
                }
            }
        }
        m
    }

    /// The events the sender's session reported.
    pub fn events(&self) -> Vec<SendEvent> {
        self.trace
            .iter()
            .filter_map(|(_, e)| match e {
                Ev::Send(SendAction::Event(ev)) => Some(ev.clone()),
                _ => None,
            })
            .collect()
    }

    /// The frames the receiver decoded on connection `conn`.
    pub fn at_receiver(&self, conn: u32) -> Vec<Wire> {
        self.trace
            .iter()
            .filter_map(|(_, e)| match e {
                Ev::AtReceiver { conn: c, frame } if *c == conn => Some(frame.clone()),
                _ => None,
            })
            .collect()
    }

    /// The frames the sender decoded on connection `conn`.
    pub fn at_sender(&self, conn: u32) -> Vec<Wire> {
        self.trace
            .iter()
            .filter_map(|(_, e)| match e {
                Ev::AtSender { conn: c, frame } if *c == conn => Some(frame.clone()),
                _ => None,
            })
            .collect()
    }

    /// The connections the sender made, in order.
    pub fn connections(&self) -> Vec<u32> {
        self.trace
            .iter()
            .filter_map(|(_, e)| match e {
                Ev::Connected { conn, .. } => Some(*conn),
                _ => None,
            })
            .collect()
    }

    /// The last `n` trace entries, one a line.
    pub fn tail(&self, n: usize) -> String {
        let mut s = String::new();
        for (t, e) in self.trace.iter().rev().take(n).rev() {
            let _ = writeln!(s, "{:>10.3}s {e:?}", t.as_secs_f64());
        }
        s
    }
}

impl SenderDrv {
    fn new(session: SendSession, run: u32) -> Self {
        Self {
            session,
            run,
            conn: None,
            attempt: None,
            reader: None,
            hash_job: None,
            probe: None,
            result: None,
        }
    }
}

/// The sender's configuration for run `run` of a world.
pub fn send_config(cfg: &Cfg, plan: ChunkPlan, run: u32) -> SendConfig {
    SendConfig {
        plan,
        file_name: FILE_NAME.to_owned(),
        mtime_ns: 1_700_000_000_000_000_000,
        data_path: cfg.data_path,
        streams: 1,
        data_shards: 32,
        dcsp_version: cfg.sender_dcsp_version,
        retry_for: cfg.retry_for,
        connect_timeout: cfg.connect_timeout,
        rng_seed: cfg.seed.wrapping_mul(31).wrapping_add(u64::from(run)),
    }
}

/// The receiver's outcome on connection `conn`, if it ended.
pub fn outcome_of(w: &World, conn: u32) -> Option<RecvOutcome> {
    w.trace.iter().find_map(|(_, e)| match e {
        Ev::Recv {
            conn: c,
            action: RecvAction::Finished(o),
        } if *c == conn => Some(o.clone()),
        _ => None,
    })
}
