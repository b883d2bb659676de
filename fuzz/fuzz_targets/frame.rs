//! Any bytes from the network: the frame header and body decoders return a value or an error, never panic,
//! and whatever decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trackshift_proto::frame::{parse_header, HEADER_LEN};
use trackshift_proto::Frame;

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER_LEN {
        return;
    }
    let header: [u8; HEADER_LEN] = data[..HEADER_LEN].try_into().expect("length checked");
    let Ok((len, frame_type)) = parse_header(header) else { return };
    let body = &data[HEADER_LEN..];
    let body = &body[..len.min(body.len())];
    if let Ok(frame) = Frame::decode(frame_type, body) {
        let mut out = Vec::new();
        frame.encode(&mut out);
        assert_eq!(&out[HEADER_LEN..], body, "re-encoding changed the frame");
    }
});
