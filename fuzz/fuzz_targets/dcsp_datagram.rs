//! Any datagram from the network reaching a DCSP receiver or sender: the header and ACK decoders and both
//! state machines drop it (and count it) or accept it, never panic, and nothing unauthenticated is delivered.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use trackshift_dcsp::ack::Ack;
use trackshift_dcsp::crypto::test_keys;
use trackshift_dcsp::packet::Header;
use trackshift_dcsp::rate::DelayRate;
use trackshift_dcsp::{
    BlockGeometry, DcspReceiver, DcspSender, ParityMode, ReceiverConfig, Role, SenderConfig,
};

fuzz_target!(|data: &[u8]| {
    let _ = Header::decode(data);
    let geometry = BlockGeometry::new(1 << 20, 1 << 18, 512, 16).expect("valid geometry");
    let _ = Ack::decode(data, &geometry);
    let now = Instant::now();
    let mut receiver = DcspReceiver::new(
        ReceiverConfig {
            conn_id: 0,
            keys: test_keys(Role::Receiver),
            geometry,
            skip_chunks: Vec::new(),
            max_assembly_bytes: 1 << 20,
            stream: Default::default(),
        },
        now,
    );
    let mut d = data.to_vec();
    receiver.handle_datagram(now, "127.0.0.1:1".parse().expect("addr"), &mut d);
    // Unauthenticated bytes never complete a block.
    assert!(receiver.poll_event().is_none_or(|e| !matches!(e, trackshift_dcsp::ReceiverEvent::Block { .. })));
    let mut sender = DcspSender::new(
        SenderConfig {
            conn_id: 0,
            keys: test_keys(Role::Sender),
            geometry,
            parity: ParityMode::Auto,
            controller: Box::new(DelayRate::new(None)),
            max_buffered: 1 << 20,
        },
        now,
    );
    let mut d = data.to_vec();
    sender.handle_datagram(now, &mut d);
});
