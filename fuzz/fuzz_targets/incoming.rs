//! A hostile sender's frame sequence against the receiver's transfer state machine: never a panic, never a
//! write outside the file, never more bytes in a chunk than the chunk holds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trackshift_proto::frame::HEADER_LEN;
use trackshift_proto::{ChunkMap, ChunkPlan, Frame, Incoming, IncomingTransfer};

fuzz_target!(|data: &[u8]| {
    let plan = ChunkPlan::new(12 * 1024 * 1024 + 7, 5 * 1024 * 1024).expect("valid plan");
    let mut t = IncomingTransfer::new(plan, ChunkMap::new(plan.chunk_count()));
    let mut rest = data;
    while rest.len() > HEADER_LEN {
        let len = (u16::from_be_bytes([rest[0], rest[1]]) as usize).min(rest.len() - 3);
        let (frame_type, body) = (rest[2], &rest[3..3 + len]);
        rest = &rest[3 + len..];
        let Ok(frame) = Frame::decode(frame_type, body) else { continue };
        match t.on_frame(&frame) {
            Ok(Incoming::Data { offset, raw_len }) => {
                assert!(offset + u64::from(raw_len) <= plan.file_size());
            }
            Ok(Incoming::ChunkEnd { index, .. }) => t.chunk_result(index, true),
            Ok(_) => {}
            Err(_) => break,
        }
    }
});
