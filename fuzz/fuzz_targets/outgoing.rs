//! A hostile receiver's answers against the sender's transfer state machine: the verified list it sends at
//! the start (decoded from raw `VerifiedList` bodies or built from entries) and any `ChunkDone` verdicts, for
//! chunks in flight or not. Checked against a model: a verdict is accepted exactly for a chunk in flight,
//! the verified byte count and completeness always agree with
//! the chunks verified, and a list naming a chunk the file does not have is refused. Covers
//! `OutgoingTransfer` and `verified_entries`.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use trackshift_proto::frame::{encode_verified_entries, ty, verified_entries};
use trackshift_proto::{ChunkPlan, FirstPass, Frame, OutgoingTransfer, ProtocolViolation};

#[derive(Arbitrary, Debug)]
enum List {
    /// A `VerifiedList` body as the network delivers it.
    Raw(Vec<u8>),
    /// Entries for small chunk numbers (mostly ones that exist).
    Entries(Vec<(u8, [u8; 32])>),
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// The driver put chunk `i` on the wire.
    Sent(u8),
    /// The receiver's verdict on chunk `i`.
    ChunkDone(u32, bool),
    ChunkDoneNear(u8, bool),
    /// The driver re-read a skipped chunk and got this hash.
    CheckSkipped(u8, Option<[u8; 32]>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// In MiB plus bytes: up to about 200 chunks.
    file_mib: u16,
    file_extra: u32,
    lists: Vec<List>,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let chunk = 5u64 << 20;
    let size = (u64::from(input.file_mib) % 1024 << 20) + u64::from(input.file_extra % (1 << 20));
    let Ok(plan) = ChunkPlan::new(size, chunk) else {
        return;
    };
    let n = plan.chunk_count();
    let mut list = Vec::new();
    for l in &input.lists {
        match l {
            List::Raw(body) => {
                if let Ok(Frame::VerifiedList { entries }) = Frame::decode(ty::VERIFIED_LIST, body)
                {
                    list.extend(verified_entries(entries));
                }
            }
            List::Entries(e) => {
                let e: Vec<(u32, [u8; 32])> = e.iter().map(|(i, s)| (u32::from(*i), *s)).collect();
                let body = encode_verified_entries(&e);
                let Ok(Frame::VerifiedList { entries }) = Frame::decode(ty::VERIFIED_LIST, &body)
                else {
                    continue; // more entries than one frame holds
                };
                assert_eq!(verified_entries(entries).collect::<Vec<_>>(), e);
                list.extend(e);
            }
        }
    }
    let mut t = match OutgoingTransfer::new(plan, &list) {
        Ok(t) => t,
        Err(ProtocolViolation::NoSuchChunk(i)) => {
            assert!(i >= n && list.iter().any(|(j, _)| *j == i));
            return;
        }
        Err(e) => panic!("unexpected {e:?}"),
    };
    assert!(
        list.iter().all(|(i, _)| *i < n),
        "a list naming a chunk beyond the file was taken"
    );
    // Model. The last hash listed for a chunk wins.
    let mut earlier: Vec<Option<[u8; 32]>> = vec![None; n as usize];
    for (i, sha) in &list {
        earlier[*i as usize] = Some(*sha);
    }
    let mut verified: BTreeSet<u32> = list.iter().map(|(i, _)| *i).collect();
    let mut in_flight = BTreeSet::new();
    let pass = t.first_pass();
    assert_eq!(pass.len(), n as usize);
    for (i, p) in pass.iter().enumerate() {
        match earlier[i] {
            Some(expected) => assert_eq!(*p, FirstPass::Check { expected }),
            None => assert_eq!(*p, FirstPass::Send),
        }
    }
    assert_eq!(t.chunks_skipped as usize, verified.len());
    for op in input.ops {
        match op {
            Op::Sent(i) => {
                let i = u32::from(i);
                if i < n {
                    t.on_sent(i);
                    in_flight.insert(i);
                }
            }
            Op::ChunkDone(i, ok) => verdict(&mut t, &mut in_flight, &mut verified, i, ok),
            Op::ChunkDoneNear(d, ok) => {
                let i = n.saturating_sub(2).wrapping_add(u32::from(d % 4));
                verdict(&mut t, &mut in_flight, &mut verified, i, ok)
            }
            Op::CheckSkipped(i, sha) => {
                let i = u32::from(i);
                let actual = sha
                    .or(earlier.get(i as usize).copied().flatten())
                    .unwrap_or([0; 32]);
                let same = earlier.get(i as usize).copied().flatten() == Some(actual);
                assert_eq!(t.check_skipped(i, actual).is_ok(), same);
            }
        }
        assert_eq!(t.in_flight(), in_flight.len());
        assert_eq!(t.verified().count() as usize, verified.len());
        assert_eq!(
            t.bytes_verified(),
            verified.iter().map(|i| plan.len(*i)).sum::<u64>()
        );
        assert_eq!(t.is_complete(), verified.len() == n as usize);
        assert!(t.bytes_verified() <= plan.file_size());
    }
});

fn verdict(
    t: &mut OutgoingTransfer,
    in_flight: &mut BTreeSet<u32>,
    verified: &mut BTreeSet<u32>,
    i: u32,
    ok: bool,
) {
    let r = t.on_chunk_done(i, ok);
    if in_flight.remove(&i) {
        assert_eq!(r, Ok(()));
        // A failed chunk is no longer in flight: the driver sends it again.
        if ok {
            verified.insert(i);
        }
    } else {
        assert_eq!(
            r,
            Err(ProtocolViolation::NotInFlight(i)),
            "a verdict for a chunk not in flight was taken"
        );
    }
}
