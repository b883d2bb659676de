//! A hostile peer's frames, in any order and at any time, against both sides of the control conversation:
//! `RecvSession` (what a sender may send a receiver) and `SendSession` (what a receiver may answer a sender),
//! each driven by a minimal driver that answers its actions (accepts or refuses an offer, reports verdicts, data
//! path failures and lost connections). Neither may panic, and each keeps the protocol's promises whatever it is
//! fed: the receiver asks to finish the file only with every chunk verified and a whole-file hash (and, from
//! version 3, a chunk list hash) announced, a session that finished stays finished, and the sender's confirmed
//! bytes never exceed the file.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use trackshift_proto::frame::HEADER_LEN;
use trackshift_proto::session::{
    DataPath, RecvAction, RecvConfig, RecvSession, SendAction, SendConfig, SendSession, UdpLink,
};
use trackshift_proto::{ChunkPlan, ErrorCode, Frame, SessionId};

/// Smallest chunk the plan takes: small files keep the chunk counts the fuzzer reaches low.
const CHUNK: u64 = 5 * 1024 * 1024;

#[derive(Debug, Arbitrary)]
enum Op {
    /// A frame from the peer, as raw type and body (most fail to decode; the rest reach the session).
    Frame { frame_type: u8, body: Vec<u8> },
    /// A well-formed frame naming a chunk, for reaching deep states.
    ChunkFrame { kind: u8, index: u8, sha: [u8; 32] },
    /// Time passes (milliseconds, up to a few minutes).
    Wait(u16),
    /// The driver's verdict on a chunk (receiver), or its reader's report (sender).
    Local { index: u8, ok: bool, sha: [u8; 32] },
    /// The connection failed.
    Lost,
    /// The DCSP data path does not get through (sender).
    NoUdp,
    /// The sender's first pass is over: the whole-file hash and the chunk list hash (sender).
    Hashed([u8; 32]),
}

#[derive(Debug, Arbitrary)]
struct Input {
    file_chunks: u8,
    udp: bool,
    accept: bool,
    /// The control protocol version agreed (1 to 3 are real; others must not panic either).
    version: u16,
    listed: Vec<(u8, [u8; 32])>,
    partial: Vec<(u8, u64)>,
    recv_ops: Vec<Op>,
    send_ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let chunks = u64::from(input.file_chunks % 8);
    let Ok(plan) = ChunkPlan::new(chunks * CHUNK, CHUNK) else {
        return;
    };
    receiver(&input, plan);
    sender(&input, plan);
});

fn decoded(frame_type: u8, body: &[u8], f: impl FnOnce(&Frame<'_>)) {
    if let Ok(frame) = Frame::decode(frame_type, body) {
        f(&frame);
    }
}

/// A well-formed frame of one of the kinds that name a chunk, encoded (type byte, body).
fn chunk_frame(kind: u8, index: u8, sha: [u8; 32]) -> (u8, Vec<u8>) {
    let index = u32::from(index % 10);
    let frame = match kind % 8 {
        0 => Frame::ChunkBegin { index },
        1 => Frame::ChunkEnd { sha256: sha },
        2 => Frame::ChunkHash { index, sha256: sha },
        3 => Frame::ChunkDone {
            index,
            ok: sha[0] & 1 == 0,
        },
        4 => Frame::FileEnd { sha256: sha },
        5 => Frame::ChunkListHash { sha256: sha },
        _ => Frame::UdpReady { port: 7700 },
    };
    let mut buf = Vec::new();
    frame.encode(&mut buf);
    (buf[4], buf[HEADER_LEN..].to_vec())
}

fn receiver(input: &Input, plan: ChunkPlan) {
    let mut now = Instant::now();
    let mut r = RecvSession::new(
        RecvConfig {
            dcsp_version: 1,
            protocol_version: input.version,
        },
        now,
    );
    let mut out = Vec::new();
    let mut finished = false;
    let mut file_hash_announced = false;
    for op in &input.recv_ops {
        match op {
            Op::Frame { frame_type, body } => decoded(*frame_type, body, |f| {
                file_hash_announced |= matches!(f, Frame::FileEnd { .. });
                r.handle_frame(now, f);
            }),
            Op::ChunkFrame { kind, index, sha } => {
                let (t, body) = chunk_frame(*kind, *index, *sha);
                decoded(t, &body, |f| {
                    file_hash_announced |= matches!(f, Frame::FileEnd { .. });
                    r.handle_frame(now, f);
                });
            }
            Op::Wait(ms) => {
                now += Duration::from_millis(u64::from(*ms) * 8);
                r.handle_timeout(now);
            }
            Op::Local { index, ok, .. } => r.chunk_verified(u32::from(*index % 10), *ok),
            Op::Lost | Op::NoUdp => r.connection_lost(),
            Op::Hashed(_) => {}
        }
        while let Some(a) = r.poll_action() {
            assert!(!finished, "an action after Finished: {a:?}");
            match a {
                RecvAction::Offered { .. } if input.accept => {
                    let listed: Vec<(u32, [u8; 32])> = input
                        .listed
                        .iter()
                        .map(|(i, s)| (u32::from(*i), *s))
                        .collect();
                    let partial: Vec<(u32, u64)> = input
                        .partial
                        .iter()
                        .map(|(i, b)| (u32::from(*i), *b))
                        .collect();
                    r.accept(now, &listed, &partial);
                }
                RecvAction::Offered { .. } => r.refuse(ErrorCode::Busy, "busy"),
                RecvAction::StartDcsp { .. } => r.dcsp_ready(now, 7700),
                RecvAction::FinishFile {
                    expected,
                    chunk_list,
                } => {
                    assert!(file_hash_announced, "FinishFile without FileEnd");
                    assert_eq!(
                        chunk_list.is_some(),
                        input.version >= 3,
                        "a chunk list hash from version 3 on only"
                    );
                    let complete = r.verified().is_some_and(|m| m.is_complete());
                    assert!(complete, "FinishFile with chunks unverified");
                    r.file_in_place("f", expected);
                }
                RecvAction::Finished(_) => finished = true,
                _ => {}
            }
        }
        r.poll_transmit(&mut out);
        assert_eq!(r.is_finished(), finished);
    }
    let _ = plan;
}

fn sender(input: &Input, plan: ChunkPlan) {
    let mut now = Instant::now();
    let data_path = if input.udp {
        DataPath::Udp { explicit: false }
    } else {
        DataPath::Tcp
    };
    let cfg = SendConfig {
        plan,
        file_name: "f".into(),
        mtime_ns: 0,
        data_path,
        streams: 1,
        data_shards: 64,
        dcsp_version: 1,
        retry_for: Duration::from_secs(300),
        connect_timeout: Duration::from_secs(30),
        rng_seed: 7,
    };
    let mut s = SendSession::new(cfg, SessionId([1; 16]), true, now);
    let mut out = Vec::new();
    let mut finished = false;
    for op in &input.send_ops {
        while let Some(a) = s.poll_action() {
            assert!(!finished, "an action after Finished: {a:?}");
            match a {
                SendAction::Connect => s.connected(
                    now,
                    7700,
                    Some(UdpLink {
                        conn_id: 9,
                        shard_size: 1400,
                    }),
                    input.version,
                ),
                SendAction::HashWholeFile => s.file_hashed(now, [0; 32], None),
                SendAction::Finished(_) => finished = true,
                _ => {}
            }
        }
        match op {
            Op::Frame { frame_type, body } => {
                decoded(*frame_type, body, |f| s.handle_frame(now, f))
            }
            Op::ChunkFrame { kind, index, sha } => {
                let (t, body) = chunk_frame(*kind, *index, *sha);
                decoded(t, &body, |f| s.handle_frame(now, f));
            }
            Op::Wait(ms) => {
                now += Duration::from_millis(u64::from(*ms) * 8);
                s.handle_timeout(now);
            }
            Op::Local {
                index,
                ok: true,
                sha,
            } => s.chunk_sent(now, u32::from(*index % 10), *sha),
            Op::Local {
                index,
                ok: false,
                sha,
            } => s.chunk_checked(now, u32::from(*index % 10), *sha),
            Op::Lost => s.connection_lost(now, "lost"),
            Op::NoUdp => s.udp_unusable(now, "blocked"),
            Op::Hashed(sha) => s.file_hashed(now, *sha, Some(*sha)),
        }
        s.poll_transmit(&mut out);
        assert!(s.stats().bytes_confirmed <= plan.file_size());
    }
}
