//! Any bytes from the network as a stream of control frames: the header and body decoders return a frame or an
//! error, never panic; whatever decodes re-encodes to exactly the bytes read (the one exception the protocol
//! makes: an unknown error code reads as 10) and decodes again to itself; a `VerifiedList`'s entries read back
//! as the bytes say. Covers `parse_header`, `Frame::decode` (every type), `verified_entries`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trackshift_proto::frame::{parse_header, ty, verified_entries, HEADER_LEN, VERIFIED_ENTRY_LEN};
use trackshift_proto::Frame;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while rest.len() >= HEADER_LEN {
        let header: [u8; HEADER_LEN] = rest[..HEADER_LEN].try_into().expect("length checked");
        let Ok((len, frame_type)) = parse_header(header) else {
            return;
        };
        let Some(body) = rest.get(HEADER_LEN..HEADER_LEN + len) else {
            return;
        };
        let frame_bytes = &rest[..HEADER_LEN + len];
        rest = &rest[HEADER_LEN + len..];
        let Ok(frame) = Frame::decode(frame_type, body) else {
            continue;
        };
        let mut out = Vec::new();
        frame.encode(&mut out);
        let mut expected = frame_bytes.to_vec();
        if frame_type == ty::ERROR && !(1..=10).contains(&expected[HEADER_LEN]) {
            expected[HEADER_LEN] = 10;
        }
        assert_eq!(out, expected, "re-encoding changed {frame:?}");
        assert_eq!(
            Frame::decode(out[4], &out[HEADER_LEN..]),
            Ok(frame),
            "decodes again to itself"
        );
        if let Frame::VerifiedList { entries } = frame {
            let read: Vec<_> = verified_entries(entries).collect();
            assert_eq!(read.len(), entries.len() / VERIFIED_ENTRY_LEN);
            for ((index, sha), e) in read.iter().zip(entries.chunks(VERIFIED_ENTRY_LEN)) {
                assert_eq!(&index.to_be_bytes()[..], &e[..4]);
                assert_eq!(&sha[..], &e[4..]);
            }
        }
    }
});
