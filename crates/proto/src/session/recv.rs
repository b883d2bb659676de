//! The receiver's side of the control conversation on one connection: the offer, the answer with what is
//! verified already, the data path the sender chose (DCSP's `UdpStart`, or `Data` frames), which frames are legal
//! when, the verdict on every chunk and on the whole file, keep-alives and silence.
//!
//! The driver looks things up when asked ([`RecvAction::Offered`]: the session store, free space, the partial
//! file) and answers with [`RecvSession::accept`], [`RecvSession::already_complete`] or [`RecvSession::refuse`];
//! it sets up the data path when asked and reports what its writer decided ([`RecvSession::chunk_verified`],
//! [`RecvSession::file_in_place`], [`RecvSession::file_mismatch`]). Both data paths share one chunk bookkeeping,
//! [`IncomingTransfer`].

use std::time::{Duration, Instant};

use super::outbox::Outbox;
use crate::frame::{
    encode_partial_entries, encode_verified_entries, ErrorCode, Frame, CHUNK_LIST_VERSION,
    MAX_PARTIAL_ENTRIES, MAX_VERIFIED_PER_FRAME, PARTIAL_CHUNKS_VERSION,
};
use crate::plan::{ChunkMap, ChunkPlan};
use crate::transfer::{Incoming, IncomingTransfer};
use crate::SessionId;

/// A connection must make its offer within this after authenticating, or it is refused.
pub const OFFER_TIMEOUT: Duration = Duration::from_secs(30);
/// A sender silent for this long on the TCP data path (no data, no keep-alive), or before it chose a data path,
/// is taken to be gone; its session stays resumable.
pub const SENDER_SILENCE: Duration = Duration::from_secs(120);
/// Once the data path is chosen the receiver says `KeepAlive` this often on the control connection: over DCSP it
/// is otherwise quiet, and the sender tells a dead one (its address changed) from a quiet one within seconds (see
/// [`super::CONTROL_SILENCE`]); over TCP the sender waits for verdicts after its first pass, and a chunk can take
/// minutes on a slow link, so without these it could not tell a slow receiver from a frozen one.
pub const RECEIVER_KEEPALIVE: Duration = Duration::from_secs(2);

/// What a receiver speaks.
#[derive(Debug, Clone, Copy)]
pub struct RecvConfig {
    /// The DCSP wire version this receiver speaks (a sender naming another one is refused).
    pub dcsp_version: u8,
    /// The control protocol version agreed with this sender in `Hello`.
    pub protocol_version: u16,
}

/// How the conversation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecvOutcome {
    /// The whole file verified and is in place under `final_name`.
    Completed {
        final_name: String,
        sha256: [u8; 32],
    },
    /// The session had completed before; the sender was told again.
    AlreadyComplete,
    /// Every chunk verified but the whole file did not: the session is discarded.
    Mismatch { sha256: [u8; 32] },
    /// The session ends here; the sender was told why.
    Failed { code: ErrorCode, message: String },
    /// The sender went away, or a newer connection took the session over; it stays resumable.
    Dropped,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecvAction {
    /// The sender offers a file: check the name, the session store and the space, then answer with
    /// [`RecvSession::accept`], [`RecvSession::already_complete`] or [`RecvSession::refuse`] before feeding
    /// the next frame.
    Offered {
        session_id: SessionId,
        file_name: String,
        plan: ChunkPlan,
        mtime_ns: i64,
    },
    /// The file's bytes come as frames on this connection: start the writer (it receives the frames'
    /// [`Incoming`] instructions that follow).
    StartTcp,
    /// The file's bytes come over DCSP on `streams` connections from `conn_id`: set them up and answer with
    /// [`RecvSession::dcsp_ready`] or [`RecvSession::refuse`] before feeding the next frame.
    StartDcsp {
        conn_id: u64,
        shard_size: u32,
        data_shards: u8,
        streams: u8,
    },
    /// Every chunk verified and the sender's whole-file hash is known: check the whole file, put it in place and
    /// answer with [`RecvSession::file_in_place`] or [`RecvSession::file_mismatch`]. From protocol version 3 the
    /// sender also announced `chunk_list`, the digest of its chunks' hashes in order
    /// ([`crate::hashing::ChunkListHasher`]): the whole file is checked against that (and, if the receiver was
    /// asked to, read back and hashed against `expected`); before, the driver hashes the whole file.
    FinishFile {
        expected: [u8; 32],
        chunk_list: Option<[u8; 32]>,
    },
    /// The conversation is over: close the connection.
    Finished(RecvOutcome),
}

#[derive(Debug)]
enum State {
    AwaitOffer,
    /// `Offered` is with the driver.
    AwaitDecision,
    AwaitDataPath,
    /// `StartDcsp` is with the driver.
    DcspSetup,
    Dcsp,
    Tcp,
    /// `FinishFile` is with the driver.
    Finishing,
    Done,
}

#[derive(Debug, Clone)]
struct OfferedFile {
    session_id: SessionId,
    file_name: String,
    plan: ChunkPlan,
}

#[derive(Debug, Clone, Copy)]
enum Timer {
    Offer,
    Silence,
    KeepAlive,
}
const TIMERS: usize = 3;

/// The receiver's control conversation on one connection. See the module doc.
#[derive(Debug)]
pub struct RecvSession {
    cfg: RecvConfig,
    state: State,
    offer: Option<OfferedFile>,
    transfer: Option<IncomingTransfer>,
    /// The unverified prefixes this receiver listed (`PartialList`, protocol version 2): what the sender may skip.
    partial: Vec<(u32, u64)>,
    file_sha: Option<[u8; 32]>,
    /// The sender's `ChunkListHash` (protocol version 3).
    chunk_list: Option<[u8; 32]>,
    out: Outbox<RecvAction, TIMERS>,
}

impl RecvSession {
    /// A conversation on a connection that has just authenticated at `now`.
    pub fn new(cfg: RecvConfig, now: Instant) -> Self {
        let mut out = Outbox::default();
        out.timers.set(Timer::Offer as usize, now + OFFER_TIMEOUT);
        Self {
            cfg,
            state: State::AwaitOffer,
            offer: None,
            transfer: None,
            partial: Vec::new(),
            file_sha: None,
            chunk_list: None,
            out,
        }
    }

    /// The offered session, once the offer arrived.
    pub fn session_id(&self) -> Option<SessionId> {
        self.offer.as_ref().map(|o| o.session_id)
    }

    /// The chunks verified so far (those the store had, and those verified on this connection).
    pub fn verified(&self) -> Option<&ChunkMap> {
        self.transfer.as_ref().map(IncomingTransfer::verified)
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Done)
    }

    pub fn poll_action(&mut self) -> Option<RecvAction> {
        self.out.poll_action()
    }

    /// Appends the frames to write to `out`; false when there are none.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> bool {
        self.out.poll_transmit(out)
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.out.poll_timeout()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.out.timers.expire(Timer::Offer as usize, now) {
            self.fail(ErrorCode::Protocol, "no offer within 30 s");
        }
        if self.out.timers.expire(Timer::Silence as usize, now) {
            self.finish(RecvOutcome::Dropped);
        }
        if self.out.timers.expire(Timer::KeepAlive as usize, now) {
            self.send_frame(&Frame::KeepAlive);
            self.out
                .timers
                .set(Timer::KeepAlive as usize, now + RECEIVER_KEEPALIVE);
        }
    }

    /// A frame from the sender. Carry out the actions it queued first, then the returned instruction for the
    /// TCP writer (a chunk begins, a piece to write with the frame's payload, a chunk to verify) or, over DCSP,
    /// the chunk hash to hand the writer.
    pub fn handle_frame(&mut self, now: Instant, frame: &Frame<'_>) -> Incoming {
        match &self.state {
            State::AwaitOffer => self.on_offer(frame),
            State::AwaitDataPath => return self.on_data_path(now, frame),
            State::Dcsp => return self.on_dcsp_frame(frame),
            State::Tcp => return self.on_tcp_frame(now, frame),
            State::AwaitDecision | State::DcspSetup => self.fail(
                ErrorCode::Internal,
                &format!("{} frame read before the offer was answered", frame.name()),
            ),
            // After `FileEnd` the sender only keeps the connection alive; after the end, nothing matters.
            State::Finishing | State::Done => {}
        }
        Incoming::Nothing
    }

    fn on_offer(&mut self, frame: &Frame<'_>) {
        let Frame::Offer(o) = frame else {
            return self.fail(
                ErrorCode::Protocol,
                &format!("expected Offer, got {}", frame.name()),
            );
        };
        self.out.timers.stop(Timer::Offer as usize);
        let plan = match ChunkPlan::new(o.file_size, o.chunk_size) {
            Ok(p) => p,
            Err(e) => return self.fail(ErrorCode::Protocol, &e.to_string()),
        };
        let offer = OfferedFile {
            session_id: o.session_id,
            file_name: o.file_name.to_owned(),
            plan,
        };
        self.out.push(RecvAction::Offered {
            session_id: o.session_id,
            file_name: offer.file_name.clone(),
            plan,
            mtime_ns: o.mtime_ns,
        });
        self.offer = Some(offer);
        self.state = State::AwaitDecision;
    }

    /// The prefixes of unverified chunks the sender was told this receiver holds (empty before protocol
    /// version 2): a resumed chunk's data starts within them.
    pub fn partial(&self) -> &[(u32, u64)] {
        &self.partial
    }

    /// Accepts the offer; `verified` are the chunks the store holds for this session (with their SHA-256),
    /// `partial` the durable prefixes of unverified ones (with their length).
    pub fn accept(&mut self, now: Instant, verified: &[(u32, [u8; 32])], partial: &[(u32, u64)]) {
        let (State::AwaitDecision, Some(offer)) = (&self.state, &self.offer) else {
            return;
        };
        let plan = offer.plan;
        let mut map = ChunkMap::new(plan.chunk_count());
        let mut listed = Vec::with_capacity(verified.len());
        for &(index, sha) in verified.iter().filter(|(i, _)| plan.contains(*i)) {
            if map.insert(index) {
                listed.push((index, sha));
            }
        }
        self.send_frame(&Frame::Accept {
            verified_count: listed.len() as u32,
        });
        for batch in listed.chunks(MAX_VERIFIED_PER_FRAME) {
            self.send_frame(&Frame::VerifiedList {
                entries: &encode_verified_entries(batch),
            });
        }
        if self.cfg.protocol_version >= PARTIAL_CHUNKS_VERSION {
            self.partial = listable_partial(&plan, &map, partial);
            self.send_frame(&Frame::PartialList {
                entries: &encode_partial_entries(&self.partial),
            });
        }
        self.transfer = Some(IncomingTransfer::new(plan, map).with_partial(&self.partial));
        self.state = State::AwaitDataPath;
        self.out
            .timers
            .set(Timer::Silence as usize, now + SENDER_SILENCE);
    }

    /// The offered session completed in an earlier run (the sender missed the confirmation): confirm it again,
    /// with the hash and name recorded then (`sha256` None if the record lost it).
    pub fn already_complete(&mut self, sha256: Option<[u8; 32]>, final_name: &str) {
        if !matches!(self.state, State::AwaitDecision) {
            return;
        }
        self.send_frame(&Frame::FileDone {
            ok: sha256.is_some(),
            sha256: sha256.unwrap_or([0; 32]),
            final_name,
        });
        self.finish(RecvOutcome::AlreadyComplete);
    }

    /// Refuses what was asked (the offer, or the DCSP set-up): the sender hears `code` and `message`.
    pub fn refuse(&mut self, code: ErrorCode, message: &str) {
        self.fail(code, message);
    }

    /// The DCSP set-up is done; its socket is on UDP port `port`.
    pub fn dcsp_ready(&mut self, now: Instant, port: u16) {
        if !matches!(self.state, State::DcspSetup) {
            return;
        }
        self.send_frame(&Frame::UdpReady { port });
        self.state = State::Dcsp;
        self.out
            .timers
            .set(Timer::KeepAlive as usize, now + RECEIVER_KEEPALIVE);
    }

    fn on_data_path(&mut self, now: Instant, frame: &Frame<'_>) -> Incoming {
        match frame {
            Frame::UdpStart {
                conn_id,
                shard_size,
                data_shards,
                dcsp_version,
                streams,
            } => {
                self.out.timers.stop(Timer::Silence as usize);
                if *dcsp_version != self.cfg.dcsp_version {
                    self.fail(
                        ErrorCode::Version,
                        &format!(
                            "DCSP version {dcsp_version} is not supported by this receiver (it speaks {}): upgrade one side or use --protocol tcp",
                            self.cfg.dcsp_version
                        ),
                    );
                    return Incoming::Nothing;
                }
                self.state = State::DcspSetup;
                self.out.push(RecvAction::StartDcsp {
                    conn_id: *conn_id,
                    shard_size: *shard_size,
                    data_shards: *data_shards,
                    streams: (*streams).max(1),
                });
                Incoming::Nothing
            }
            Frame::KeepAlive => {
                self.heard(now);
                Incoming::Nothing
            }
            _ => {
                self.state = State::Tcp;
                self.out.push(RecvAction::StartTcp);
                self.out
                    .timers
                    .set(Timer::KeepAlive as usize, now + RECEIVER_KEEPALIVE);
                self.on_tcp_frame(now, frame)
            }
        }
    }

    fn on_tcp_frame(&mut self, now: Instant, frame: &Frame<'_>) -> Incoming {
        self.heard(now);
        match frame {
            Frame::FileEnd { sha256 } => self.file_end(*sha256, true),
            Frame::ChunkListHash { sha256 } => self.chunk_list_hash(*sha256),
            Frame::Error { message, .. } => self.fail_sender_error(message),
            _ => {
                let Some(transfer) = self.transfer.as_mut() else {
                    return Incoming::Nothing;
                };
                match transfer.on_frame(frame) {
                    Ok(incoming) => return incoming,
                    Err(e) => self.fail(ErrorCode::Protocol, &e.to_string()),
                }
            }
        }
        Incoming::Nothing
    }

    fn on_dcsp_frame(&mut self, frame: &Frame<'_>) -> Incoming {
        match frame {
            Frame::ChunkHash { index, sha256 } => {
                let Some(transfer) = self.transfer.as_mut() else {
                    return Incoming::Nothing;
                };
                match transfer.on_chunk_hash(*index, *sha256) {
                    Ok(incoming) => return incoming,
                    Err(_) => self.fail(
                        ErrorCode::Protocol,
                        &format!("hash for chunk {index}, which does not exist"),
                    ),
                }
            }
            Frame::FileEnd { sha256 } => self.file_end(*sha256, false),
            Frame::ChunkListHash { sha256 } => self.chunk_list_hash(*sha256),
            Frame::KeepAlive => {}
            Frame::Error { message, .. } => self.fail_sender_error(message),
            f => self.fail(
                ErrorCode::Protocol,
                &format!("unexpected {} frame during a DCSP transfer", f.name()),
            ),
        }
        Incoming::Nothing
    }

    /// The sender is done sending. Over TCP it waits for every verdict first, so chunks still missing then are a
    /// protocol violation; over DCSP it does not wait, and the file is finished once the last chunk verified.
    fn file_end(&mut self, sha256: [u8; 32], tcp: bool) {
        if self.cfg.protocol_version >= CHUNK_LIST_VERSION && self.chunk_list.is_none() {
            return self.fail(
                ErrorCode::Protocol,
                "sender ended the file without announcing its chunk list hash",
            );
        }
        self.file_sha = Some(sha256);
        let complete = self
            .transfer
            .as_ref()
            .is_some_and(IncomingTransfer::is_complete);
        if complete {
            self.finish_file();
        } else if tcp {
            self.fail(
                ErrorCode::Protocol,
                "sender ended the file with chunks still missing",
            );
        }
    }

    /// Version 3: the digest of the sender's chunk hashes, announced right before `FileEnd` (once).
    fn chunk_list_hash(&mut self, sha256: [u8; 32]) {
        if self.cfg.protocol_version < CHUNK_LIST_VERSION || self.chunk_list.is_some() {
            return self.fail(ErrorCode::Protocol, "unexpected ChunkListHash frame");
        }
        self.chunk_list = Some(sha256);
    }

    /// The writer's verdict on chunk `index`: verified and durable (`ok`), or failed (to be sent again).
    pub fn chunk_verified(&mut self, index: u32, ok: bool) {
        if !matches!(self.state, State::Dcsp | State::Tcp) {
            return;
        }
        let Some(transfer) = self.transfer.as_mut() else {
            return;
        };
        if !transfer.chunk_result(index, ok) {
            return self.fail(
                ErrorCode::Internal,
                &format!("a verdict on chunk {index}, whose hash never came"),
            );
        }
        let complete = transfer.is_complete();
        self.send_frame(&Frame::ChunkDone { index, ok });
        if complete && self.file_sha.is_some() {
            self.finish_file();
        }
    }

    /// The whole file verified and is in place under `final_name`.
    pub fn file_in_place(&mut self, final_name: &str, sha256: [u8; 32]) {
        if !matches!(self.state, State::Finishing) {
            return;
        }
        self.send_frame(&Frame::FileDone {
            ok: true,
            sha256,
            final_name,
        });
        self.finish(RecvOutcome::Completed {
            final_name: final_name.to_owned(),
            sha256,
        });
    }

    /// Every chunk verified but the whole file hashed to `sha256`, not what the sender announced: the session is
    /// discarded.
    pub fn file_mismatch(&mut self, sha256: [u8; 32]) {
        if !matches!(self.state, State::Finishing) {
            return;
        }
        let name = self
            .offer
            .as_ref()
            .map(|o| o.file_name.clone())
            .unwrap_or_default();
        self.send_frame(&Frame::FileDone {
            ok: false,
            sha256,
            final_name: &name,
        });
        self.finish(RecvOutcome::Mismatch { sha256 });
    }

    /// The session cannot go on (a disk error, a broken frame): the sender hears `code` and `message`.
    pub fn fail(&mut self, code: ErrorCode, message: &str) {
        if matches!(self.state, State::Done) {
            return;
        }
        self.send_frame(&Frame::Error { code, message });
        self.finish(RecvOutcome::Failed {
            code,
            message: message.to_owned(),
        });
    }

    /// The connection closed, failed or went silent, or a newer connection took the session over.
    pub fn connection_lost(&mut self) {
        if !matches!(self.state, State::Done) {
            self.finish(RecvOutcome::Dropped);
        }
    }

    fn fail_sender_error(&mut self, message: &str) {
        self.fail(ErrorCode::Protocol, &format!("sender: {message}"));
    }

    fn finish_file(&mut self) {
        if let Some(expected) = self.file_sha {
            self.state = State::Finishing;
            // The sender has nothing more to say, but over DCSP it takes a quiet control connection for a dead
            // one within seconds: the keep-alives go on while the whole file is checked (which can take minutes).
            self.out.timers.stop(Timer::Offer as usize);
            self.out.timers.stop(Timer::Silence as usize);
            self.out.push(RecvAction::FinishFile {
                expected,
                chunk_list: self.chunk_list,
            });
        }
    }

    fn heard(&mut self, now: Instant) {
        self.out
            .timers
            .set(Timer::Silence as usize, now + SENDER_SILENCE);
    }

    fn finish(&mut self, outcome: RecvOutcome) {
        self.state = State::Done;
        self.out.timers.stop_all();
        self.out.push(RecvAction::Finished(outcome));
    }

    fn send_frame(&mut self, f: &Frame<'_>) {
        self.out.frame(f);
    }
}

/// The prefixes worth listing: of chunks of the file, not verified, neither empty nor whole; the furthest along
/// first if there are more than one frame takes; in chunk order.
fn listable_partial(
    plan: &ChunkPlan,
    verified: &ChunkMap,
    partial: &[(u32, u64)],
) -> Vec<(u32, u64)> {
    let mut listed: Vec<(u32, u64)> = partial
        .iter()
        .filter(|&&(i, have)| {
            plan.contains(i) && !verified.get(i) && have > 0 && have < plan.len(i)
        })
        .copied()
        .collect();
    listed.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    listed.truncate(MAX_PARTIAL_ENTRIES);
    listed.sort();
    listed
}
