//! The sender's side of the control conversation, across every connection of one `send` run: what to say when a
//! connection opens, what the receiver's answers mean, when the file's end may be announced, when to reconnect
//! and when to give up, when to fall back from DCSP to TCP, and what a changed source costs.
//!
//! The driver opens connections when asked ([`SendAction::Connect`]), reads the file when asked
//! ([`SendAction::StartData`]) and reports back: [`SendSession::connected`], [`SendSession::chunk_sent`],
//! [`SendSession::file_hashed`], [`SendSession::handle_frame`], [`SendSession::connection_lost`], and so on.
//! Errors the driver cannot hand to the session (a refused TLS handshake, an unreadable source) end the run in the
//! driver; everything the protocol decides ends it here, with [`SendAction::Finished`].

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::backoff::Backoff;
use super::outbox::Outbox;
use crate::frame::{
    partial_entries, verified_entries, ErrorCode, Frame, Offer, CHUNK_LIST_VERSION,
    PARTIAL_CHUNKS_VERSION,
};
use crate::plan::ChunkPlan;
use crate::transfer::{FirstPass, OutgoingTransfer};
use crate::SessionId;

/// How often the sender says `KeepAlive` while it waits on the receiver (DCSP: always; TCP: after `FileEnd`),
/// so NAT bindings stay fresh and the receiver's silence limit is never reached.
pub const KEEPALIVE_EVERY: Duration = Duration::from_secs(5);
/// With DCSP, how long the control connection may stay silent before the sender reconnects: the receiver says
/// something at least every [`super::RECEIVER_KEEPALIVE`] (2 s), so 8 s is four missed keep-alives, and a control
/// connection that died under a changed address is replaced within seconds instead of when TCP gives up.
pub const CONTROL_SILENCE: Duration = Duration::from_secs(8);
/// Over TCP, how long to wait for the receiver's final word after `FileEnd`: it re-reads and hashes what it could
/// not hash in order, which can take a while for a huge resumed file. While the first pass writes the file the
/// socket's `TCP_USER_TIMEOUT` catches a dead receiver (one chunk can legitimately take minutes on a slow link,
/// so no silence limit applies there); between the end of the first pass and `FileEnd`, `PEER_SILENCE` (60 s).
pub const FINAL_WAIT: Duration = Duration::from_secs(3600);
/// Over TCP, once the first pass is over and the sender waits for verdicts: the longest silence from the receiver
/// before the connection counts as dead (PROTOCOL.md §3: 60 s while chunks are in flight), as the CLI driver had.
const PEER_SILENCE: Duration = Duration::from_secs(60);
/// How long the receiver has to answer `UdpStart` with `UdpReady` after its verified list.
pub const UDP_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Which data path carries the file's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPath {
    /// `Data` frames on the control connection.
    Tcp,
    /// DCSP over UDP; `explicit` when the user asked for it (no fallback to TCP then).
    Udp { explicit: bool },
}

impl DataPath {
    /// The name the command line and the summary use.
    pub fn name(self) -> &'static str {
        match self {
            DataPath::Tcp => "tcp",
            DataPath::Udp { .. } => "udp",
        }
    }
}

/// What a `send` run needs to know about its file and its peer.
#[derive(Debug, Clone)]
pub struct SendConfig {
    pub plan: ChunkPlan,
    pub file_name: String,
    /// Source modification time, nanoseconds since the Unix epoch (sent in the offer).
    pub mtime_ns: i64,
    pub data_path: DataPath,
    /// DCSP connections (`UdpStart`'s `streams`).
    pub streams: u8,
    /// DCSP data shards per block (`UdpStart`'s `data_shards`).
    pub data_shards: u8,
    /// The DCSP wire version this sender speaks.
    pub dcsp_version: u8,
    /// How long to keep reconnecting a connection that was lost.
    pub retry_for: Duration,
    /// How long to keep trying a receiver this run never reached.
    pub connect_timeout: Duration,
    /// Seeds the backoff jitter and new session ids (random in a real run, fixed in tests).
    pub rng_seed: u64,
}

/// What `UdpStart` announces, chosen by the driver for each connection (a random id, a shard that fits the path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpLink {
    pub conn_id: u64,
    pub shard_size: u32,
}

/// The receiver confirmed the whole file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The name the file landed under at the receiver (`name (1).ext` after a collision).
    pub final_name: String,
    pub sha256: [u8; 32],
}

/// Why the protocol ended a `send` run without the file delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The receiver said no for good (`Error` frame with a final code).
    #[error("{}", refusal(*.code, .message))]
    Refused { code: ErrorCode, message: String },
    /// The connection kept failing for longer than `--retry-for` / `--connect-timeout`.
    #[error("giving up: {0}")]
    GaveUp(String),
    /// UDP does not get through and the user asked for UDP only.
    #[error("{0} (--protocol udp was given; use --protocol tcp)")]
    NoUdp(String),
    /// The receiver broke the protocol.
    #[error("{0}")]
    Protocol(String),
    /// Every chunk verified at the receiver but the whole file did not.
    #[error("the receiver's whole-file check found {}, which does not match; the session was discarded, re-run to send again", hex::encode(.0))]
    FileMismatch([u8; 32]),
    /// The receiver confirmed a hash that is not the source's.
    #[error("receiver confirmed a different SHA-256 than the source's")]
    WrongConfirmation,
}

fn refusal(code: ErrorCode, message: &str) -> String {
    match code {
        ErrorCode::NoSpace => format!("receiver storage full: {message}"),
        _ => format!("peer refused: {message}"),
    }
}

/// Counters of the whole run, over every connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendStats {
    /// Control connections that got past authentication.
    pub connections: u32,
    /// Chunks put on the wire (their `ChunkEnd` or `ChunkHash` sent), re-sends included.
    pub chunks_sent: u32,
    /// Chunks sent again after failing verification.
    pub chunks_resent: u32,
    /// Chunks the receiver already had when this run's first connection was accepted, and their bytes.
    pub chunks_skipped: u32,
    pub bytes_skipped: u64,
    /// File bytes the receiver has confirmed so far (all runs).
    pub bytes_confirmed: u64,
}

/// Something the user may want to know.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendEvent {
    /// A connection attempt failed (`lost` false) or a connection was lost (`lost` true); the next attempt
    /// follows after `delay`.
    Retry {
        error: String,
        delay: Duration,
        lost: bool,
    },
    /// UDP is unusable (`reason`); the run goes on over TCP.
    Fallback { reason: String },
    /// Chunk `index` of the source differs from what the receiver verified earlier: the old session is
    /// abandoned and the file goes again as `new_session`.
    SourceChanged {
        index: u32,
        old_session: SessionId,
        new_session: SessionId,
    },
    /// The receiver accepted the offer, holding `chunks_verified` chunks (`bytes_verified` bytes) already.
    Accepted {
        chunks_verified: u32,
        bytes_verified: u64,
    },
    /// Chunk `index` failed verification at the receiver; it is sent again.
    ChunkFailed(u32),
    /// The receiver has verified `bytes_verified` bytes of the file.
    Progress { bytes_verified: u64 },
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendAction {
    /// Open a control connection (TCP, TLS, authentication), then call [`SendSession::connected`] or
    /// [`SendSession::connect_failed`].
    Connect,
    /// Read the file once in order, doing with each chunk what `first_pass` says, and hash it whole; with
    /// `udp_port`, the bytes go over DCSP to that port of the receiver's address, else as `Data` frames.
    StartData {
        first_pass: Vec<FirstPass>,
        udp_port: Option<u16>,
    },
    /// Stop the running data path and its reader (a new one may follow).
    StopData,
    /// Read chunk `index` again and send it.
    Resend(u32),
    /// Hash the whole source and call [`SendSession::file_hashed`] (the receiver already holds the file).
    HashWholeFile,
    /// Close the control connection; the session says what comes next.
    Disconnect,
    /// Tell the user.
    Event(SendEvent),
    /// The run is over: close the connection (cleanly when delivered).
    Finished(Result<Delivered, SendError>),
}

/// Where the current connection stands.
#[derive(Debug)]
enum Conn {
    /// No connection; a `Connect` follows when the retry timer fires.
    Down,
    /// `Connect` was asked for.
    Connecting,
    AwaitAccept,
    AwaitVerified {
        count: usize,
        verified: Vec<(u32, [u8; 32])>,
    },
    /// Protocol version 2: the verified list is in, its `PartialList` follows.
    AwaitPartial {
        verified: Vec<(u32, [u8; 32])>,
    },
    AwaitUdpReady,
    Streaming,
    /// The receiver holds the whole file already: waiting for our whole-file hash to compare with its.
    AwaitWholeHash {
        final_name: String,
        sha256: [u8; 32],
    },
    Finished,
}

/// The session's timers (indexes into its [`TimerTable`]).
#[derive(Debug, Clone, Copy)]
enum Timer {
    Retry,
    UdpReady,
    KeepAlive,
    Silence,
}
const TIMERS: usize = 4;

/// State of the current connection's data path, reset by every `StartData`.
#[derive(Debug, Default)]
struct DataRun {
    running: bool,
    /// A new session's data, started before the receiver answered, to the control port's number.
    early_port: Option<u16>,
    /// Chunks the first pass sends.
    to_send: usize,
    /// Chunk hashes sent (DCSP), to know when every chunk went out.
    hashes_sent: BTreeSet<u32>,
    /// Chunks read before the conversation got to streaming (a new session's early data).
    pending: VecDeque<(u32, [u8; 32])>,
    file_hash: Option<[u8; 32]>,
    /// The digest of the first pass's chunk hashes, in order (announced from protocol version 3).
    chunk_list: Option<[u8; 32]>,
    file_end_sent: bool,
}

/// The sender's control conversation of one `send` run. See the module doc.
#[derive(Debug)]
pub struct SendSession {
    cfg: SendConfig,
    session_id: SessionId,
    /// No receiver can know this session yet: its data may start before the receiver answers.
    fresh: bool,
    data_path: DataPath,
    conn: Conn,
    /// The control protocol version the current connection speaks.
    peer_version: u16,
    udp: Option<UdpLink>,
    transfer: Option<OutgoingTransfer>,
    data: DataRun,
    backoff: Backoff,
    ever_connected: bool,
    /// When the current run of failed attempts began: the start, or the loss of the last connection.
    retrying_since: Instant,
    accepted_once: bool,
    stats: SendStats,
    rng: StdRng,
    out: Outbox<SendAction, TIMERS>,
}

impl SendSession {
    /// A run of session `session_id` (`fresh` when no earlier run knew it); its first action is `Connect`.
    pub fn new(cfg: SendConfig, session_id: SessionId, fresh: bool, now: Instant) -> Self {
        let mut s = Self {
            backoff: Backoff::new(cfg.retry_for),
            rng: StdRng::seed_from_u64(cfg.rng_seed),
            data_path: cfg.data_path,
            cfg,
            session_id,
            fresh,
            conn: Conn::Connecting,
            peer_version: crate::frame::MIN_PROTOCOL_VERSION,
            udp: None,
            transfer: None,
            data: DataRun::default(),
            ever_connected: false,
            retrying_since: now,
            accepted_once: false,
            stats: SendStats::default(),
            out: Outbox::default(),
        };
        s.out.push(SendAction::Connect);
        s
    }

    /// The session being sent (it changes when the source changed under an earlier session).
    pub fn session_id(&self) -> SessionId {
        self.session_id
    }

    /// The data path in use (it becomes TCP after a fallback).
    pub fn data_path(&self) -> DataPath {
        self.data_path
    }

    pub fn stats(&self) -> &SendStats {
        &self.stats
    }

    pub fn plan(&self) -> &ChunkPlan {
        &self.cfg.plan
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.conn, Conn::Finished)
    }

    /// The next thing the driver must do.
    pub fn poll_action(&mut self) -> Option<SendAction> {
        self.out.poll_action()
    }

    /// Appends the frames to write on the current connection to `out`; false when there are none.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> bool {
        self.out.poll_transmit(out)
    }

    /// When [`Self::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.out.poll_timeout()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.out.timers.expire(Timer::Retry as usize, now) && matches!(self.conn, Conn::Down) {
            self.connect();
        }
        if self.out.timers.expire(Timer::UdpReady as usize, now) {
            self.connection_lost(now, "timed out waiting for the receiver's UDP port");
        }
        if self.out.timers.expire(Timer::Silence as usize, now) {
            let what = match self.data_path {
                DataPath::Udp { .. } => {
                    "timed out waiting for the receiver on the control connection"
                }
                DataPath::Tcp => "timed out waiting for the receiver",
            };
            self.connection_lost(now, what);
        }
        if self.out.timers.expire(Timer::KeepAlive as usize, now) {
            self.send_frame(&Frame::KeepAlive);
            self.out
                .timers
                .set(Timer::KeepAlive as usize, now + KEEPALIVE_EVERY);
        }
    }

    /// The connection asked for is up and authenticated, speaking control protocol `version` (what both ends
    /// agreed in `Hello`); `control_port` is the port it reached, `udp` what `UdpStart` announces (required on
    /// the DCSP path).
    pub fn connected(
        &mut self,
        _now: Instant,
        control_port: u16,
        udp: Option<UdpLink>,
        version: u16,
    ) {
        if !matches!(self.conn, Conn::Connecting) {
            return;
        }
        self.peer_version = version;
        self.ever_connected = true;
        self.stats.connections += 1;
        self.transfer = None;
        self.data = DataRun::default();
        self.udp = udp.filter(|_| matches!(self.data_path, DataPath::Udp { .. }));
        let plan = self.cfg.plan;
        let offer = Frame::Offer(Offer {
            session_id: self.session_id,
            file_name: &self.cfg.file_name,
            file_size: plan.file_size(),
            chunk_size: plan.chunk_size(),
            mtime_ns: self.cfg.mtime_ns,
        });
        self.out.frame(&offer);
        if let Some(link) = self.udp {
            // `UdpStart` does not depend on the answer: it follows the offer at once (one round trip less).
            self.send_frame(&Frame::UdpStart {
                conn_id: link.conn_id,
                shard_size: link.shard_size,
                data_shards: self.cfg.data_shards,
                dcsp_version: self.cfg.dcsp_version,
                streams: self.cfg.streams,
            });
            if self.fresh {
                // Nothing of a new session is at the receiver: its datagrams leave now, to the control port's
                // number, where the receiver's DCSP socket listens (PROTOCOL.md §6.1).
                let all = vec![FirstPass::Send; plan.chunk_count() as usize];
                self.start_data(all, Some(control_port));
                self.data.early_port = Some(control_port);
            }
        }
        self.fresh = false;
        self.conn = Conn::AwaitAccept;
    }

    /// A connection attempt failed in a way worth retrying (unreachable, reset, timed out).
    pub fn connect_failed(&mut self, now: Instant, error: &str) {
        if !matches!(self.conn, Conn::Connecting) {
            return;
        }
        let limit = if self.ever_connected {
            self.cfg.retry_for
        } else {
            self.cfg.connect_timeout
        };
        self.retry(now, error, limit, false);
    }

    /// The current connection failed in a way worth retrying (closed, reset, timed out, the data plane went
    /// silent): reconnect with a fresh backoff, for up to `--retry-for`.
    pub fn connection_lost(&mut self, now: Instant, error: &str) {
        if !self.has_connection() {
            return;
        }
        self.end_connection();
        self.backoff.reset();
        self.retrying_since = now;
        self.retry(now, error, self.cfg.retry_for, true);
    }

    /// DCSP does not get through (`why`): fall back to TCP unless the user asked for UDP.
    pub fn udp_unusable(&mut self, _now: Instant, why: &str) {
        if !self.has_connection() {
            return;
        }
        match self.data_path {
            DataPath::Udp { explicit: false } => {
                self.end_connection();
                self.event(SendEvent::Fallback {
                    reason: why.to_owned(),
                });
                self.data_path = DataPath::Tcp;
                self.connect();
            }
            _ => self.finish(Err(SendError::NoUdp(why.to_owned()))),
        }
    }

    /// Every byte of chunk `index` went to the data path; `sha256` is its hash. Over TCP the driver has written
    /// the `ChunkEnd`; over DCSP the session sends `ChunkHash`.
    pub fn chunk_sent(&mut self, now: Instant, index: u32, sha256: [u8; 32]) {
        if !self.data.running {
            return;
        }
        if !matches!(self.conn, Conn::Streaming) {
            self.data.pending.push_back((index, sha256));
            return;
        }
        if self.udp.is_some() {
            self.send_frame(&Frame::ChunkHash { index, sha256 });
            self.data.hashes_sent.insert(index);
        }
        if let Some(t) = self.transfer.as_mut() {
            t.on_sent(index);
        }
        self.stats.chunks_sent += 1;
        self.maybe_end_file(now);
    }

    /// A chunk the receiver verified in an earlier run was read again; `sha256` is its hash now.
    pub fn chunk_checked(&mut self, now: Instant, index: u32, sha256: [u8; 32]) {
        let changed = match &self.transfer {
            Some(t) => t.check_skipped(index, sha256).is_err(),
            None => false,
        };
        if changed {
            self.source_changed(now, index);
        }
    }

    /// The whole source has been read once: its SHA-256, and (after a first pass, not after
    /// [`SendAction::HashWholeFile`]) the digest of its chunks' hashes in order
    /// ([`crate::hashing::ChunkListHasher`]).
    pub fn file_hashed(&mut self, now: Instant, sha256: [u8; 32], chunk_list: Option<[u8; 32]>) {
        if let Conn::AwaitWholeHash {
            final_name,
            sha256: theirs,
        } = &self.conn
        {
            if *theirs == sha256 {
                let final_name = final_name.clone();
                self.finish(Ok(Delivered { final_name, sha256 }));
            } else {
                self.source_changed(now, 0);
            }
            return;
        }
        if self.data.running {
            self.data.file_hash = Some(sha256);
            self.data.chunk_list = chunk_list;
            if self.udp.is_none() {
                // Over TCP the first pass is over: the sender now waits on the receiver, keeps saying KeepAlive
                // (the receiver drops a sender silent for 120 s) and counts the receiver's silence (the receiver
                // says KeepAlive every 2 s, so a slow chunk is not taken for a dead receiver).
                self.heard(now);
                self.out
                    .timers
                    .set(Timer::KeepAlive as usize, now + KEEPALIVE_EVERY);
            }
            self.maybe_end_file(now);
        }
    }

    /// A frame from the receiver.
    pub fn handle_frame(&mut self, now: Instant, frame: &Frame<'_>) {
        match self.conn {
            Conn::AwaitAccept => self.on_accept(now, frame),
            Conn::AwaitVerified { .. } => self.on_verified_list(now, frame),
            Conn::AwaitPartial { .. } => self.on_partial_list(now, frame),
            Conn::AwaitUdpReady => self.on_udp_ready(now, frame),
            Conn::Streaming => self.on_streaming_frame(now, frame),
            // Nothing is expected outside a live conversation (a late frame of a connection just closed).
            _ => {}
        }
    }

    fn on_verified_list(&mut self, now: Instant, frame: &Frame<'_>) {
        let chunks = self.cfg.plan.chunk_count() as usize;
        match frame {
            Frame::VerifiedList { entries } => {
                let Conn::AwaitVerified { count, verified } = &mut self.conn else {
                    return;
                };
                verified.extend(verified_entries(entries));
                let (listed, done) = (verified.len(), verified.len() >= *count);
                if listed > chunks {
                    return self.protocol(format!(
                        "receiver listed {listed} verified chunks of a file of {chunks}"
                    ));
                }
                if done {
                    let verified = std::mem::take(verified);
                    self.verified_listed(now, verified);
                }
            }
            Frame::Error { code, message } => self.refused(now, *code, message),
            f => self.protocol(format!(
                "receiver sent {} inside its verified list",
                f.name()
            )),
        }
    }

    fn on_udp_ready(&mut self, now: Instant, frame: &Frame<'_>) {
        match frame {
            Frame::UdpReady { port } => self.start_streaming(now, Some(*port)),
            Frame::Error { message, .. } => {
                self.udp_unusable(now, &format!("the receiver cannot take DCSP: {message}"))
            }
            f => self.protocol(format!("receiver sent {} instead of UdpReady", f.name())),
        }
    }

    fn on_accept(&mut self, now: Instant, frame: &Frame<'_>) {
        match frame {
            Frame::Accept { verified_count } => {
                let count = *verified_count as usize;
                if count == 0 {
                    self.verified_listed(now, Vec::new());
                } else {
                    let cap = count.min(self.cfg.plan.chunk_count() as usize);
                    self.conn = Conn::AwaitVerified {
                        count,
                        verified: Vec::with_capacity(cap),
                    };
                }
            }
            Frame::Error { code, message } => self.refused(now, *code, message),
            Frame::FileDone {
                ok: true,
                sha256,
                final_name,
            } => {
                // The receiver completed this session before we heard so (we were interrupted at the very end).
                self.await_whole_hash(final_name, *sha256);
            }
            f => self.protocol(format!("receiver sent {} instead of Accept", f.name())),
        }
    }

    /// The verified list is complete: over protocol version 2 the partial list follows, else that is all.
    fn verified_listed(&mut self, now: Instant, verified: Vec<(u32, [u8; 32])>) {
        if self.peer_version >= PARTIAL_CHUNKS_VERSION {
            self.conn = Conn::AwaitPartial { verified };
        } else {
            self.on_verified(now, &verified, &[]);
        }
    }

    fn on_partial_list(&mut self, now: Instant, frame: &Frame<'_>) {
        match frame {
            Frame::PartialList { entries } => {
                let Conn::AwaitPartial { verified } = &mut self.conn else {
                    return;
                };
                let verified = std::mem::take(verified);
                let partial: Vec<(u32, u64)> = partial_entries(entries).collect();
                self.on_verified(now, &verified, &partial);
            }
            Frame::Error { code, message } => self.refused(now, *code, message),
            f => self.protocol(format!(
                "receiver sent {} instead of its partial list",
                f.name()
            )),
        }
    }

    /// The receiver said what it holds (verified chunks, and unverified prefixes): decide what goes.
    fn on_verified(&mut self, now: Instant, verified: &[(u32, [u8; 32])], partial: &[(u32, u64)]) {
        let transfer = match OutgoingTransfer::new(self.cfg.plan, verified)
            .and_then(|t| t.with_partial(partial))
        {
            Ok(t) => t,
            Err(e) => return self.protocol(format!("receiver's chunk list is invalid: {e}")),
        };
        let (skipped, base) = (transfer.chunks_skipped, transfer.bytes_verified());
        if self.data.early_port.is_some() && skipped > 0 {
            // Not new after all: the early data includes chunks the receiver has; start over with the rest.
            self.stop_data();
        }
        if !self.accepted_once {
            self.accepted_once = true;
            self.stats.chunks_skipped = skipped;
            self.stats.bytes_skipped = base;
        }
        self.transfer = Some(transfer);
        // What the receiver listed is confirmed too (it may be all of the file: no verdict will follow then).
        self.stats.bytes_confirmed = base;
        self.event(SendEvent::Accepted {
            chunks_verified: skipped,
            bytes_verified: base,
        });
        if self.udp.is_some() {
            self.conn = Conn::AwaitUdpReady;
            self.out
                .timers
                .set(Timer::UdpReady as usize, now + UDP_READY_TIMEOUT);
        } else {
            self.start_streaming(now, None);
        }
    }

    /// The receiver is ready for the file's bytes (on DCSP at `udp_port`).
    fn start_streaming(&mut self, now: Instant, udp_port: Option<u16>) {
        self.out.timers.stop(Timer::UdpReady as usize);
        let keep_early = udp_port.is_some() && self.data.early_port == udp_port;
        if !keep_early {
            self.stop_data();
            let first_pass = self
                .transfer
                .as_ref()
                .map(OutgoingTransfer::first_pass)
                .unwrap_or_default();
            self.start_data(first_pass, udp_port);
        }
        self.conn = Conn::Streaming;
        if udp_port.is_some() {
            self.out
                .timers
                .set(Timer::KeepAlive as usize, now + KEEPALIVE_EVERY);
            self.out
                .timers
                .set(Timer::Silence as usize, now + CONTROL_SILENCE);
        }
        while let Some((index, sha)) = self.data.pending.pop_front() {
            self.chunk_sent(now, index, sha);
        }
        self.maybe_end_file(now);
    }

    fn on_streaming_frame(&mut self, now: Instant, frame: &Frame<'_>) {
        self.heard(now);
        match frame {
            Frame::ChunkDone { index, ok } => self.on_chunk_done(now, *index, *ok),
            Frame::FileDone {
                ok,
                sha256,
                final_name,
            } => {
                if !ok {
                    return self.finish(Err(SendError::FileMismatch(*sha256)));
                }
                match self.data.file_hash {
                    Some(ours) if ours == *sha256 => self.finish(Ok(Delivered {
                        final_name: (*final_name).to_owned(),
                        sha256: *sha256,
                    })),
                    Some(_) => self.finish(Err(SendError::WrongConfirmation)),
                    // The receiver had the whole file already: trust only a match.
                    None => self.await_whole_hash(final_name, *sha256),
                }
            }
            Frame::Error { code, message } => self.refused(now, *code, message),
            Frame::KeepAlive => {}
            f => self.protocol(format!("receiver sent an unexpected {} frame", f.name())),
        }
    }

    fn on_chunk_done(&mut self, now: Instant, index: u32, ok: bool) {
        let Some(transfer) = self.transfer.as_mut() else {
            return;
        };
        if let Err(e) = transfer.on_chunk_done(index, ok) {
            return self.protocol(format!("receiver: {e}"));
        }
        self.stats.bytes_confirmed = transfer.bytes_verified();
        if !ok {
            self.stats.chunks_resent += 1;
            self.event(SendEvent::ChunkFailed(index));
            self.out.push(SendAction::Resend(index));
        }
        self.event(SendEvent::Progress {
            bytes_verified: self.stats.bytes_confirmed,
        });
        self.maybe_end_file(now);
    }

    /// Announces the end once the whole-file hash is known and every chunk went out (DCSP: the receiver
    /// finishes when they all verified, which saves a round trip) or was confirmed (TCP).
    fn maybe_end_file(&mut self, now: Instant) {
        if !matches!(self.conn, Conn::Streaming) || self.data.file_end_sent {
            return;
        }
        let (Some(sha256), Some(transfer)) = (self.data.file_hash, &self.transfer) else {
            return;
        };
        let all_out = self.udp.is_some() && self.data.hashes_sent.len() >= self.data.to_send;
        if !(transfer.is_complete() || all_out) {
            return;
        }
        if self.peer_version >= CHUNK_LIST_VERSION {
            let Some(list) = self.data.chunk_list else {
                return self.protocol("the chunk list hash is missing".into());
            };
            self.send_frame(&Frame::ChunkListHash { sha256: list });
        }
        self.send_frame(&Frame::FileEnd { sha256 });
        self.data.file_end_sent = true;
        if self.udp.is_none() {
            self.out
                .timers
                .set(Timer::KeepAlive as usize, now + KEEPALIVE_EVERY);
            self.out
                .timers
                .set(Timer::Silence as usize, now + FINAL_WAIT);
        }
    }

    /// Any frame from the receiver shows the connection alive.
    fn heard(&mut self, now: Instant) {
        let limit = match self.data_path {
            DataPath::Udp { .. } => CONTROL_SILENCE,
            DataPath::Tcp if self.data.file_end_sent => FINAL_WAIT,
            DataPath::Tcp if self.data.file_hash.is_some() => PEER_SILENCE,
            DataPath::Tcp => return,
        };
        self.out.timers.set(Timer::Silence as usize, now + limit);
    }

    fn await_whole_hash(&mut self, final_name: &str, sha256: [u8; 32]) {
        self.stop_data();
        // The receiver has said its last word (it closes the connection now): only our own hash is missing, and
        // the connection is not needed for it. Losing it is no reason to reconnect (which would hear `FileDone`
        // and start the hash over, forever when hashing takes longer than a reconnect).
        self.out.timers.stop_all();
        self.conn = Conn::AwaitWholeHash {
            final_name: final_name.to_owned(),
            sha256,
        };
        self.out.push(SendAction::HashWholeFile);
        self.out.push(SendAction::Disconnect);
    }

    /// An `Error` frame: busy or internal trouble at the receiver is worth a retry, the rest is final.
    fn refused(&mut self, now: Instant, code: ErrorCode, message: &str) {
        if matches!(code, ErrorCode::Busy | ErrorCode::Internal) {
            self.connection_lost(now, &format!("peer refused: {message}"));
        } else {
            self.finish(Err(SendError::Refused {
                code,
                message: message.to_owned(),
            }));
        }
    }

    fn protocol(&mut self, message: String) {
        self.finish(Err(SendError::Protocol(message)));
    }

    /// The source no longer matches what the receiver verified: abandon the session, send the file afresh.
    fn source_changed(&mut self, _now: Instant, index: u32) {
        self.end_connection();
        let old_session = self.session_id;
        self.session_id = SessionId(self.rng.gen());
        self.fresh = true;
        self.event(SendEvent::SourceChanged {
            index,
            old_session,
            new_session: self.session_id,
        });
        self.connect();
    }

    /// After a failure at `now`: the next attempt after a backoff delay, or give up once `limit` has passed since
    /// the failures began.
    fn retry(&mut self, now: Instant, error: &str, limit: Duration, lost: bool) {
        let elapsed = now.saturating_duration_since(self.retrying_since);
        let jitter = self.rng.gen::<f64>();
        let delay = (elapsed < limit)
            .then(|| self.backoff.next_delay(now, jitter))
            .flatten()
            .map(|d| d.min(limit - elapsed));
        match delay {
            Some(delay) => {
                self.conn = Conn::Down;
                self.out.timers.set(Timer::Retry as usize, now + delay);
                self.event(SendEvent::Retry {
                    error: error.to_owned(),
                    delay,
                    lost,
                });
            }
            None => self.finish(Err(SendError::GaveUp(error.to_owned()))),
        }
    }

    fn has_connection(&self) -> bool {
        !matches!(
            self.conn,
            Conn::Down | Conn::Connecting | Conn::AwaitWholeHash { .. } | Conn::Finished
        )
    }

    fn connect(&mut self) {
        self.conn = Conn::Connecting;
        self.out.push(SendAction::Connect);
    }

    fn start_data(&mut self, first_pass: Vec<FirstPass>, udp_port: Option<u16>) {
        self.data = DataRun {
            running: true,
            to_send: first_pass
                .iter()
                .filter(|p| matches!(p, FirstPass::Send))
                .count(),
            ..DataRun::default()
        };
        self.out.push(SendAction::StartData {
            first_pass,
            udp_port,
        });
    }

    fn stop_data(&mut self) {
        if self.data.running {
            self.out.push(SendAction::StopData);
        }
        self.data = DataRun::default();
    }

    /// Stops the data path and closes the connection (frames not yet written are dropped with it).
    fn end_connection(&mut self) {
        self.stop_data();
        self.out.clear_frames();
        self.out.timers.stop_all();
        self.transfer = None;
        self.conn = Conn::Down;
        self.out.push(SendAction::Disconnect);
    }

    fn finish(&mut self, result: Result<Delivered, SendError>) {
        if result.is_ok() {
            self.stats.bytes_confirmed = self.cfg.plan.file_size();
        }
        self.stop_data();
        self.out.timers.stop_all();
        self.conn = Conn::Finished;
        self.out.push(SendAction::Finished(result));
    }

    fn event(&mut self, e: SendEvent) {
        self.out.push(SendAction::Event(e));
    }

    fn send_frame(&mut self, f: &Frame<'_>) {
        self.out.frame(f);
    }
}
