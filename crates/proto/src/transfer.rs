//! The sender's and the receiver's bookkeeping for one file: which chunks go, which are in flight, which are
//! verified, and which frames are legal when. Drivers move the bytes; these types decide.

use std::collections::{BTreeMap, BTreeSet};

use crate::frame::Frame;
use crate::plan::{ChunkMap, ChunkPlan};

/// The peer broke the transfer protocol.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolViolation {
    #[error("unexpected {0} frame")]
    Unexpected(&'static str),
    #[error("chunk {0} does not exist in this file")]
    NoSuchChunk(u32),
    #[error("chunk {index} carries more than its {len} bytes")]
    Overrun { index: u32, len: u64 },
    #[error("chunk {index} ended after {got} of its {len} bytes")]
    ShortChunk { index: u32, got: u64, len: u64 },
    #[error("acknowledgement for chunk {0}, which is not in flight")]
    NotInFlight(u32),
    #[error(
        "chunk {index} resumed at byte {from}, beyond the {have} bytes this receiver holds of it"
    )]
    ResumeBeyond { index: u32, from: u64, have: u64 },
}

/// What the sender does with a chunk on its first, in-order pass over the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstPass {
    /// The receiver lacks it: read, hash and send.
    Send,
    /// The receiver verified it earlier with this SHA-256: read and hash only (for the whole-file hash), and
    /// check that the source still has the same bytes.
    Check { expected: [u8; 32] },
    /// The receiver has the chunk's first `have` bytes on disk, unverified (protocol version 2): read and hash
    /// it all, send from there on (the data path picks the exact point, at most `have`).
    Resume { have: u64 },
}

/// The source no longer matches what the receiver verified in an earlier run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("chunk {index} of the source changed since the receiver verified it")]
pub struct SourceChanged {
    pub index: u32,
}

/// Sender-side state of one transfer.
#[derive(Debug)]
pub struct OutgoingTransfer {
    plan: ChunkPlan,
    /// Verified by the receiver, in an earlier run or in this one.
    verified: ChunkMap,
    /// Hashes the receiver reported for chunks verified before this run.
    earlier: Vec<Option<[u8; 32]>>,
    /// Bytes of unverified chunks the receiver already holds (the start of each).
    partial: BTreeMap<u32, u64>,
    /// Chunks put on the wire whose verdict has not come yet.
    in_flight: BTreeSet<u32>,
    verified_bytes: u64,
    /// Chunks the receiver already had when this connection started.
    pub chunks_skipped: u32,
}

impl OutgoingTransfer {
    /// Starts from the receiver's list of verified chunks (`Accept` + `VerifiedList`).
    pub fn new(
        plan: ChunkPlan,
        receiver_verified: &[(u32, [u8; 32])],
    ) -> Result<Self, ProtocolViolation> {
        let n = plan.chunk_count();
        let mut verified = ChunkMap::new(n);
        let mut earlier = vec![None; n as usize];
        for &(index, sha) in receiver_verified {
            if !plan.contains(index) {
                return Err(ProtocolViolation::NoSuchChunk(index));
            }
            verified.insert(index);
            earlier[index as usize] = Some(sha);
        }
        let chunks_skipped = verified.count();
        let verified_bytes = (0..n)
            .filter(|&i| verified.get(i))
            .map(|i| plan.len(i))
            .sum();
        Ok(Self {
            verified_bytes,
            plan,
            verified,
            earlier,
            partial: BTreeMap::new(),
            in_flight: BTreeSet::new(),
            chunks_skipped,
        })
    }

    pub fn plan(&self) -> &ChunkPlan {
        &self.plan
    }

    /// Adds the receiver's `PartialList`: chunks it holds the start of, unverified. Chunks it also listed as
    /// verified, empty prefixes and prefixes as long as the chunk (nothing would be sent) are left out.
    pub fn with_partial(mut self, partial: &[(u32, u64)]) -> Result<Self, ProtocolViolation> {
        for &(index, have) in partial {
            if !self.plan.contains(index) {
                return Err(ProtocolViolation::NoSuchChunk(index));
            }
            if !self.verified.get(index) && have > 0 && have < self.plan.len(index) {
                self.partial.insert(index, have);
            }
        }
        Ok(self)
    }

    /// The first pass over the file, in order: what to do with each chunk.
    pub fn first_pass(&self) -> Vec<FirstPass> {
        self.earlier
            .iter()
            .enumerate()
            .map(|(i, e)| match (e, self.partial.get(&(i as u32))) {
                (Some(expected), _) => FirstPass::Check {
                    expected: *expected,
                },
                (None, Some(&have)) => FirstPass::Resume { have },
                (None, None) => FirstPass::Send,
            })
            .collect()
    }

    /// A chunk the receiver had verified was read again; its hash must be unchanged.
    pub fn check_skipped(&self, index: u32, actual: [u8; 32]) -> Result<(), SourceChanged> {
        match self.earlier.get(index as usize) {
            Some(Some(expected)) if *expected == actual => Ok(()),
            _ => Err(SourceChanged { index }),
        }
    }

    /// Chunk `index` was put on the wire completely.
    pub fn on_sent(&mut self, index: u32) {
        self.in_flight.insert(index);
    }

    /// The receiver's verdict on chunk `index`; a failed chunk is the driver's to send again.
    pub fn on_chunk_done(&mut self, index: u32, ok: bool) -> Result<(), ProtocolViolation> {
        if !self.in_flight.remove(&index) {
            return Err(ProtocolViolation::NotInFlight(index));
        }
        if ok && self.verified.insert(index) {
            self.verified_bytes += self.plan.len(index);
        }
        Ok(())
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// File bytes the receiver has verified.
    pub fn bytes_verified(&self) -> u64 {
        self.verified_bytes
    }

    pub fn verified(&self) -> &ChunkMap {
        &self.verified
    }

    /// Every chunk verified by the receiver.
    pub fn is_complete(&self) -> bool {
        self.verified.is_complete()
    }
}

/// What a frame means to the receiver, once checked against the transfer state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// Chunk `index` starts at file offset `offset`.
    ChunkBegin { index: u32, offset: u64 },
    /// Chunk `index` starts at file offset `offset`, and its first `from` bytes are on disk already: its
    /// `Data` frames carry the rest.
    ChunkResume { index: u32, offset: u64, from: u64 },
    /// A piece of the current chunk, to be written at `offset` after decompressing to `raw_len` bytes.
    Data { offset: u64, raw_len: u32 },
    /// The current chunk is complete; verify it against `expected`.
    ChunkEnd { index: u32, expected: [u8; 32] },
    /// The sender is done; once every chunk verified, check the whole file against `expected`.
    FileEnd { expected: [u8; 32] },
    /// Nothing to do.
    Nothing,
}

#[derive(Clone, Copy, Debug)]
struct Current {
    index: u32,
    received: u64,
}

/// Receiver-side state of one transfer, whichever data path carries it: the TCP path's chunk framing
/// (`ChunkBegin`, `Data`, `ChunkEnd`), the hashes DCSP announces (`ChunkHash`), and the verdicts.
#[derive(Debug)]
pub struct IncomingTransfer {
    plan: ChunkPlan,
    verified: ChunkMap,
    current: Option<Current>,
    /// Chunks whose expected hash arrived and whose verdict has not been given yet.
    awaiting: BTreeMap<u32, [u8; 32]>,
    /// What this receiver told the sender it holds of unverified chunks (`PartialList`).
    partial: BTreeMap<u32, u64>,
}

impl IncomingTransfer {
    pub fn new(plan: ChunkPlan, verified: ChunkMap) -> Self {
        Self {
            plan,
            verified,
            current: None,
            awaiting: BTreeMap::new(),
            partial: BTreeMap::new(),
        }
    }

    /// What the receiver lists in its `PartialList`: a `ChunkResume` may start at most that far in.
    pub fn with_partial(mut self, partial: &[(u32, u64)]) -> Self {
        self.partial = partial
            .iter()
            .filter(|(i, have)| self.plan.contains(*i) && !self.verified.get(*i) && *have > 0)
            .copied()
            .collect();
        self
    }

    pub fn plan(&self) -> &ChunkPlan {
        &self.plan
    }

    pub fn verified(&self) -> &ChunkMap {
        &self.verified
    }

    /// Checks a data-path frame from the sender against the state and says what to do with it.
    pub fn on_frame(&mut self, frame: &Frame<'_>) -> Result<Incoming, ProtocolViolation> {
        match (*frame, self.current) {
            (Frame::ChunkBegin { index }, None) => {
                if !self.plan.contains(index) {
                    return Err(ProtocolViolation::NoSuchChunk(index));
                }
                self.current = Some(Current { index, received: 0 });
                Ok(Incoming::ChunkBegin {
                    index,
                    offset: self.plan.offset(index),
                })
            }
            (Frame::ChunkResume { index, from }, None) => {
                if !self.plan.contains(index) {
                    return Err(ProtocolViolation::NoSuchChunk(index));
                }
                let have = self.partial.get(&index).copied().unwrap_or(0);
                if from > have {
                    return Err(ProtocolViolation::ResumeBeyond { index, from, have });
                }
                self.current = Some(Current {
                    index,
                    received: from,
                });
                Ok(Incoming::ChunkResume {
                    index,
                    offset: self.plan.offset(index),
                    from,
                })
            }
            (Frame::Data { raw_len, .. }, Some(mut cur)) => {
                let len = self.plan.len(cur.index);
                if cur.received + u64::from(raw_len) > len {
                    return Err(ProtocolViolation::Overrun {
                        index: cur.index,
                        len,
                    });
                }
                let offset = self.plan.offset(cur.index) + cur.received;
                cur.received += u64::from(raw_len);
                self.current = Some(cur);
                Ok(Incoming::Data { offset, raw_len })
            }
            (Frame::ChunkEnd { sha256 }, Some(cur)) => {
                let len = self.plan.len(cur.index);
                if cur.received != len {
                    return Err(ProtocolViolation::ShortChunk {
                        index: cur.index,
                        got: cur.received,
                        len,
                    });
                }
                self.current = None;
                self.awaiting.insert(cur.index, sha256);
                Ok(Incoming::ChunkEnd {
                    index: cur.index,
                    expected: sha256,
                })
            }
            (Frame::FileEnd { sha256 }, None) => Ok(Incoming::FileEnd { expected: sha256 }),
            (Frame::KeepAlive, _) => Ok(Incoming::Nothing),
            (f, _) => Err(ProtocolViolation::Unexpected(f.name())),
        }
    }

    /// DCSP: the sender's hash of chunk `index`, whose bytes come as datagrams; the writer verifies the chunk
    /// against it once they all arrived.
    pub fn on_chunk_hash(
        &mut self,
        index: u32,
        sha256: [u8; 32],
    ) -> Result<Incoming, ProtocolViolation> {
        if !self.plan.contains(index) {
            return Err(ProtocolViolation::NoSuchChunk(index));
        }
        self.awaiting.insert(index, sha256);
        Ok(Incoming::ChunkEnd {
            index,
            expected: sha256,
        })
    }

    /// The driver's verdict on a chunk after hashing (and, when ok, making it durable). False when no hash was
    /// announced for it, so there was nothing to verify against.
    pub fn chunk_result(&mut self, index: u32, ok: bool) -> bool {
        if self.awaiting.remove(&index).is_none() {
            return false;
        }
        if ok {
            self.verified.insert(index);
        }
        true
    }

    pub fn is_complete(&self) -> bool {
        self.verified.is_complete()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn sender_skips_verified_and_resends_failed() {
        let plan = ChunkPlan::new(12 * MIB, 5 * MIB).unwrap();
        let mut t = OutgoingTransfer::new(plan, &[(1, [7; 32])]).unwrap();
        assert_eq!(
            t.first_pass(),
            vec![
                FirstPass::Send,
                FirstPass::Check { expected: [7; 32] },
                FirstPass::Send
            ]
        );
        assert!(t.check_skipped(1, [7; 32]).is_ok());
        assert_eq!(t.check_skipped(1, [8; 32]), Err(SourceChanged { index: 1 }));
        t.on_sent(0);
        t.on_sent(2);
        assert_eq!(
            t.on_chunk_done(1, true),
            Err(ProtocolViolation::NotInFlight(1))
        );
        t.on_chunk_done(0, true).unwrap();
        t.on_chunk_done(2, false).unwrap();
        assert!(!t.is_complete());
        assert_eq!(
            t.on_chunk_done(2, true),
            Err(ProtocolViolation::NotInFlight(2)),
            "a failed chunk is no longer in flight until it is sent again"
        );
        t.on_sent(2);
        t.on_chunk_done(2, true).unwrap();
        assert!(t.is_complete());
        assert_eq!(t.chunks_skipped, 1);
        assert_eq!(t.bytes_verified(), 12 * MIB);
    }

    #[test]
    fn a_partial_chunk_is_resumed_where_the_receiver_has_it() {
        let plan = ChunkPlan::new(12 * MIB, 5 * MIB).unwrap();
        let t = OutgoingTransfer::new(plan, &[(0, [7; 32])])
            .unwrap()
            .with_partial(&[(0, MIB), (1, 3 * MIB), (2, 0)])
            .unwrap();
        assert_eq!(
            t.first_pass(),
            vec![
                FirstPass::Check { expected: [7; 32] },
                FirstPass::Resume { have: 3 * MIB },
                FirstPass::Send
            ],
            "a verified chunk is checked, an empty prefix is sent whole"
        );
        assert!(OutgoingTransfer::new(plan, &[])
            .unwrap()
            .with_partial(&[(3, 1)])
            .is_err());

        let mut r = IncomingTransfer::new(plan, ChunkMap::new(3)).with_partial(&[(1, 3 * MIB)]);
        assert_eq!(
            r.on_frame(&Frame::ChunkResume {
                index: 1,
                from: 4 * MIB
            }),
            Err(ProtocolViolation::ResumeBeyond {
                index: 1,
                from: 4 * MIB,
                have: 3 * MIB
            })
        );
        assert_eq!(
            r.on_frame(&Frame::ChunkResume {
                index: 1,
                from: 2 * MIB
            })
            .unwrap(),
            Incoming::ChunkResume {
                index: 1,
                offset: 5 * MIB,
                from: 2 * MIB
            }
        );
        let piece = vec![0u8; MIB as usize];
        for _ in 0..3 {
            r.on_frame(&Frame::Data {
                raw_len: MIB as u32,
                compressed: false,
                payload: &piece,
            })
            .unwrap();
        }
        assert!(matches!(
            r.on_frame(&Frame::ChunkEnd { sha256: [0; 32] }),
            Ok(Incoming::ChunkEnd { index: 1, .. })
        ));
    }

    #[test]
    fn receiver_enforces_chunk_framing() {
        let plan = ChunkPlan::new(6 * MIB, 5 * MIB).unwrap();
        let mut r = IncomingTransfer::new(plan, ChunkMap::new(2));
        let piece = vec![0u8; MIB as usize];
        assert!(r
            .on_frame(&Frame::Data {
                raw_len: 1,
                compressed: false,
                payload: &piece[..1]
            })
            .is_err());
        assert_eq!(
            r.on_frame(&Frame::ChunkBegin { index: 1 }).unwrap(),
            Incoming::ChunkBegin {
                index: 1,
                offset: 5 * MIB
            }
        );
        assert!(r.on_frame(&Frame::ChunkBegin { index: 0 }).is_err());
        assert_eq!(
            r.on_frame(&Frame::Data {
                raw_len: MIB as u32,
                compressed: false,
                payload: &piece
            })
            .unwrap(),
            Incoming::Data {
                offset: 5 * MIB,
                raw_len: MIB as u32
            }
        );
        assert!(matches!(
            r.on_frame(&Frame::Data {
                raw_len: 1,
                compressed: false,
                payload: &piece[..1]
            }),
            Err(ProtocolViolation::Overrun { .. })
        ));
        assert_eq!(
            r.on_frame(&Frame::ChunkEnd { sha256: [1; 32] }).unwrap(),
            Incoming::ChunkEnd {
                index: 1,
                expected: [1; 32]
            }
        );
        assert!(r.chunk_result(1, true));
        assert!(!r.chunk_result(1, true), "one verdict per announced hash");
        assert!(matches!(
            r.on_frame(&Frame::ChunkBegin { index: 2 }),
            Err(ProtocolViolation::NoSuchChunk(2))
        ));
        r.on_frame(&Frame::ChunkBegin { index: 0 }).unwrap();
        assert!(matches!(
            r.on_frame(&Frame::ChunkEnd { sha256: [0; 32] }),
            Err(ProtocolViolation::ShortChunk { .. })
        ));
    }
}
