//! Any datagram from the network at a DCSP receiver or sender, as raw bytes: the header decoder, the relay's
//! `peek_conn_id` and the kernel's steering word agree with each other, a decoded header re-encodes to exactly
//! the bytes it came from, an ACK body decodes (under a layout from the input) only to something that
//! re-encodes to the same bytes, and both state machines drop anything unauthenticated, count it once, and
//! deliver nothing. Covers `Header::decode`, `peek_conn_id`, `steering_key`, `Ack::decode`, and the first
//! checks of `DcspReceiver::handle_datagram` / `DcspSender::handle_datagram`.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use trackshift_dcsp::ack::Ack;
use trackshift_dcsp::crypto::test_keys;
use trackshift_dcsp::packet::{peek_conn_id, steering_key, Header, CONN_ID_STEERING_OFFSET};
use trackshift_dcsp::rate::DelayRate;
use trackshift_dcsp::{
    BlockGeometry, DcspReceiver, DcspSender, ParityMode, ReceiverConfig, ReceiverEvent, Role,
    SenderConfig,
};

fuzz_target!(|data: &[u8]| {
    let header = Header::decode(data);
    let peeked = peek_conn_id(data);
    if let Ok(h) = header {
        assert_eq!(peeked, Some(h.conn_id));
        let at = CONN_ID_STEERING_OFFSET as usize;
        assert_eq!(
            u32::from_be_bytes(data[at..at + 4].try_into().expect("4 bytes")),
            steering_key(h.conn_id)
        );
        let mut out = Vec::new();
        h.encode(&mut out);
        assert_eq!(out, data[..h.len()], "re-encoding changed {h:?}");
    }

    // An ACK body under a layout taken from the first bytes (small files, any shard count).
    if data.len() >= 8 {
        let size =
            u64::from(u32::from_be_bytes(data[..4].try_into().expect("4 bytes")) % (1 << 22));
        let shard = 2 * (u32::from(u16::from_be_bytes([data[4], data[5]])) % 600 + 1);
        let chunk = 1000 + u64::from(data[6]) * 4000;
        if let Ok(g) = BlockGeometry::new(size, chunk, shard, data[7] % 128 + 1) {
            if let Ok(ack) = Ack::decode(&data[8..], &g) {
                let mut out = Vec::new();
                ack.encode(&mut out);
                assert_eq!(out, data[8..], "re-encoding changed {ack:?}");
            }
        }
    }

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
    // Unauthenticated bytes are dropped and counted once, and deliver nothing.
    let st = receiver.stats();
    assert_eq!((st.packets_received, st.dropped()), (0, 1), "{st:?}");
    assert!(receiver
        .poll_event()
        .is_none_or(|e| !matches!(e, ReceiverEvent::Block { .. })));
    assert!(receiver.peer().is_none());
    if data.first() != Some(&trackshift_dcsp::MAGIC) {
        return; // the sender's check of the first byte needs no new sender each time (it is slow to make)
    }
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
    assert_eq!(
        (sender.stats().acks_received, sender.stats().packets_dropped),
        (0, 1)
    );
});
