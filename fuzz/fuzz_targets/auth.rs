//! The authentication handshake (PROTOCOL.md §3) against a peer that sends anything: both sides of
//! `crates/transport/src/auth.rs` driven without sockets, over an in-memory stream that yields the fuzzer's
//! bytes and records what our side writes. The receiver side (`authenticate_server`) and the sender side
//! (`ClientAuth::finish`) read the peer's `Hello`, SPAKE2 message and `Confirm` from those bytes, sometimes
//! behind a genuine first flight made with the right or a wrong secret so that the SPAKE2 and confirmation
//! checks are reached. Never a panic, never a wait on anything but the peer, never success without the
//! secret's proof (which the fuzzer cannot compute), and everything our side writes is well-formed frames.
#![no_main]

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use trackshift_proto::frame::{parse_header, HEADER_LEN};
use trackshift_proto::Frame;
use trackshift_transport::{authenticate_server, ClientAuth};

const SECRET: &str = "fuzz secret";

#[derive(Arbitrary, Debug)]
enum Msg {
    Hello {
        min: u16,
        max: u16,
        software: String,
    },
    /// A version range that includes ours.
    GoodHello,
    Pake(Vec<u8>),
    Confirm([u8; 32]),
    Error {
        code: u8,
        message: String,
    },
    KeepAlive,
    Frame {
        frame_type: u8,
        body: Vec<u8>,
    },
    /// Bytes as they come (half frames, oversized lengths, junk).
    Bytes(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Our side: the receiver (true) or the sender.
    server: bool,
    /// Behind a genuine first flight (`Hello` + SPAKE2 message) made with the right secret, a wrong one, or
    /// none.
    genuine: Option<bool>,
    exporter: [u8; 32],
    msgs: Vec<Msg>,
}

/// The peer: reads come from the fuzzer's bytes (then end of stream), writes are kept.
struct Peer<'a> {
    input: &'a [u8],
    written: Vec<u8>,
}

impl AsyncRead for Peer<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = buf.remaining().min(self.input.len());
        buf.put_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Peer<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Runs a future whose every read is ready: it must finish without ever waiting.
fn run<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..64 {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
    panic!("the handshake waits on something other than the peer's bytes");
}

fn encode(msgs: &[Msg], out: &mut Vec<u8>) {
    for m in msgs {
        match m {
            Msg::Hello { min, max, software } => Frame::Hello {
                min_version: *min,
                max_version: *max,
                software,
            }
            .encode(out),
            Msg::GoodHello => Frame::Hello {
                min_version: 1,
                max_version: 1,
                software: "peer",
            }
            .encode(out),
            Msg::Pake(message) => Frame::Pake { message }.encode(out),
            Msg::Confirm(mac) => Frame::Confirm { mac: *mac }.encode(out),
            Msg::Error { code, message } => {
                let m = &message.as_bytes()[..message.len().min(100)];
                out.extend_from_slice(&(4 + m.len() as u32).to_be_bytes());
                out.extend_from_slice(&[0x7e, *code]);
                out.extend_from_slice(&(m.len() as u16).to_be_bytes());
                out.extend_from_slice(m);
            }
            Msg::KeepAlive => Frame::KeepAlive.encode(out),
            Msg::Frame { frame_type, body } => {
                out.extend_from_slice(&(body.len() as u32 + 1).to_be_bytes());
                out.push(*frame_type);
                out.extend_from_slice(body);
            }
            Msg::Bytes(b) => out.extend_from_slice(b),
        }
    }
}

fuzz_target!(|input: Input| {
    let mut bytes = Vec::new();
    if let Some(right) = input.genuine {
        // A first flight is a Hello and a SPAKE2 message; in symmetric mode the receiver's looks the same.
        bytes = ClientAuth::start(if right { SECRET } else { "another secret" }).1;
    }
    encode(&input.msgs, &mut bytes);
    let mut peer = Peer {
        input: &bytes,
        written: Vec::new(),
    };
    let result = if input.server {
        run(authenticate_server(&mut peer, input.exporter, SECRET)).map(|_| ())
    } else {
        let (auth, _flight) = ClientAuth::start(SECRET);
        run(auth.finish(&mut peer, input.exporter)).map(|_| ())
    };
    assert!(result.is_err(), "authenticated without the secret's proof");
    // What we told the peer: whole, valid frames, and only handshake ones.
    let mut rest = &peer.written[..];
    while !rest.is_empty() {
        let header: [u8; HEADER_LEN] = rest[..HEADER_LEN].try_into().expect("a whole frame header");
        let (len, t) = parse_header(header).expect("a valid header");
        let f = Frame::decode(t, &rest[HEADER_LEN..HEADER_LEN + len]).expect("a valid frame");
        assert!(
            matches!(
                f,
                Frame::Hello { .. }
                    | Frame::Pake { .. }
                    | Frame::Confirm { .. }
                    | Frame::Error { .. }
            ),
            "{f:?} during the handshake"
        );
        rest = &rest[HEADER_LEN + len..];
    }
});
