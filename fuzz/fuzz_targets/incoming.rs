//! A hostile sender's frame sequence against the receiver's transfer state machine (the TCP data path), checked
//! against a model of the protocol: each frame is accepted exactly when PROTOCOL.md §3 allows it, with the
//! offsets the chunk plan gives; never a panic, never a write outside the file or past a chunk's end, never a
//! chunk ending short. Frames go through the real codec (encoded, then decoded) before the state machine
//! sees them, mixed with raw frames of any type and body. Covers `IncomingTransfer` and `ChunkPlan`.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use trackshift_proto::frame::{DATA_PIECE, HEADER_LEN};
use trackshift_proto::{ChunkMap, ChunkPlan, Frame, Incoming, IncomingTransfer};

#[derive(Arbitrary, Debug)]
enum Op {
    ChunkBegin(u32),
    /// Close to the chunk indices that exist, to reach the interesting states more often.
    ChunkBeginNear(u8),
    Data {
        raw_len: u32,
        compressed: bool,
    },
    /// A piece sized to fit (or just miss) what is left of the chunk.
    DataRest {
        minus: u8,
    },
    ChunkEnd([u8; 32]),
    FileEnd([u8; 32]),
    KeepAlive,
    /// Any frame type and body, through the decoder.
    Raw {
        frame_type: u8,
        body: Vec<u8>,
    },
    /// The driver's verdict on the chunk that just ended.
    Verdict(bool),
}

#[derive(Arbitrary, Debug)]
struct Input {
    file_size: u64,
    chunk_mib: u8,
    verified: Vec<u16>,
    ops: Vec<Op>,
}

/// What the protocol allows, independently of the implementation.
struct Model {
    plan: ChunkPlan,
    current: Option<(u32, u64)>,
    ended: Option<u32>,
    verified: ChunkMap,
}

fuzz_target!(|input: Input| {
    static ZEROS: [u8; DATA_PIECE] = [0; DATA_PIECE];
    // Chunk counts up to 2^24 (the plan's limit) make the maps large; keep files to at most 4096 chunks.
    let chunk = (u64::from(input.chunk_mib) % 196 + 5) << 20;
    let file_size = input.file_size % (4096 * chunk + 1);
    let Ok(plan) = ChunkPlan::new(file_size, chunk) else {
        return;
    };
    let mut map = ChunkMap::new(plan.chunk_count());
    for v in &input.verified {
        map.insert(u32::from(*v));
    }
    let mut t = IncomingTransfer::new(plan, map.clone());
    let mut m = Model {
        plan,
        current: None,
        ended: None,
        verified: map,
    };
    for op in input.ops {
        let mut buf = Vec::new();
        let frame = match op {
            Op::ChunkBegin(index) => Frame::ChunkBegin { index },
            Op::ChunkBeginNear(d) => Frame::ChunkBegin {
                index: plan
                    .chunk_count()
                    .saturating_sub(4)
                    .wrapping_add(u32::from(d % 8)),
            },
            Op::Data {
                raw_len,
                compressed,
            } => {
                let raw_len = raw_len % (DATA_PIECE as u32 + 2);
                let payload = if compressed {
                    &ZEROS[..7]
                } else {
                    ZEROS.get(..raw_len as usize).unwrap_or(&[])
                };
                Frame::Data {
                    raw_len,
                    compressed,
                    payload,
                }
            }
            Op::DataRest { minus } => {
                let left = m.current.map_or(1, |(i, got)| plan.len(i) - got);
                let raw_len = (left.min(DATA_PIECE as u64) as u32)
                    .wrapping_sub(u32::from(minus % 3))
                    .wrapping_add(1);
                Frame::Data {
                    raw_len,
                    compressed: true,
                    payload: &ZEROS[..3],
                }
            }
            Op::ChunkEnd(sha256) => Frame::ChunkEnd { sha256 },
            Op::FileEnd(sha256) => Frame::FileEnd { sha256 },
            Op::KeepAlive => Frame::KeepAlive,
            Op::Raw { frame_type, body } => {
                let Ok(f) = Frame::decode(frame_type, &body) else {
                    continue;
                };
                f.encode(&mut buf);
                let f = Frame::decode(frame_type, &buf[HEADER_LEN..])
                    .expect("re-encoded frame decodes");
                if !check(&mut t, &mut m, &f) {
                    return;
                }
                continue;
            }
            Op::Verdict(ok) => {
                if let Some(index) = m.ended.take() {
                    t.chunk_result(index, ok);
                    if ok {
                        m.verified.insert(index);
                    }
                    assert_eq!(t.is_complete(), m.verified.is_complete());
                    assert_eq!(t.verified(), &m.verified);
                }
                continue;
            }
        };
        // Through the codec, as the driver gets it.
        frame.encode(&mut buf);
        let Ok(f) = Frame::decode(buf[4], &buf[HEADER_LEN..]) else {
            continue;
        };
        if !check(&mut t, &mut m, &f) {
            return; // the driver ends the connection at the first violation
        }
    }
});

/// Feeds one frame; panics when the state machine and the model disagree. Returns whether it was accepted.
fn check(t: &mut IncomingTransfer, m: &mut Model, f: &Frame<'_>) -> bool {
    let plan = m.plan;
    let expected = match (*f, m.current) {
        (Frame::ChunkBegin { index }, None) if index < plan.chunk_count() => {
            m.current = Some((index, 0));
            Some(Incoming::ChunkBegin {
                index,
                offset: u64::from(index) * plan.chunk_size(),
            })
        }
        // Nothing was listed as held (no `with_partial`): a resume may only start at the chunk's first byte.
        (Frame::ChunkResume { index, from: 0 }, None) if index < plan.chunk_count() => {
            m.current = Some((index, 0));
            Some(Incoming::ChunkResume {
                index,
                offset: u64::from(index) * plan.chunk_size(),
                from: 0,
            })
        }
        (Frame::Data { raw_len, .. }, Some((i, got)))
            if got + u64::from(raw_len) <= plan.len(i) =>
        {
            m.current = Some((i, got + u64::from(raw_len)));
            Some(Incoming::Data {
                offset: plan.offset(i) + got,
                raw_len,
            })
        }
        (Frame::ChunkEnd { sha256 }, Some((i, got))) if got == plan.len(i) => {
            m.current = None;
            m.ended = Some(i);
            Some(Incoming::ChunkEnd {
                index: i,
                expected: sha256,
            })
        }
        (Frame::FileEnd { sha256 }, None) => Some(Incoming::FileEnd { expected: sha256 }),
        (Frame::KeepAlive, _) => Some(Incoming::Nothing),
        _ => None,
    };
    let got = t.on_frame(f);
    match (got, expected) {
        (Ok(g), Some(e)) => {
            assert_eq!(g, e, "{f:?}");
            if let Incoming::Data { offset, raw_len } = g {
                assert!(
                    offset + u64::from(raw_len) <= plan.file_size(),
                    "a write past the end of the file"
                );
            }
            true
        }
        (Err(_), None) => false,
        (g, e) => panic!("{f:?}: the state machine said {g:?}, the protocol says {e:?}"),
    }
}
