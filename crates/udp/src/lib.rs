//! TrackShift's UDP sockets for the DCSP data plane, like quinn's `quinn-udp`: socket setup (non-blocking,
//! `SO_REUSEPORT`, 32 MiB kernel buffers, path-MTU lookup), batched I/O (runs of equal-size datagrams in one
//! GSO `sendmsg`, `recvmmsg` + GRO on receive, both through `quinn-udp`), a `SO_REUSEPORT` group whose kernel
//! steering program sends each datagram to the socket its connection id picks ([`UdpEndpoint::bind_steered`],
//! [`steered_index`]), and `ppoll` waits with nanosecond timeouts for pacing ([`UdpEndpoint::wait_readable`]).
//!
//! ```text
//!  driver thread ── sealed datagrams ──► UdpEndpoint::send_batch ══ GSO sendmsg ══► network
//!  driver thread ◄── RecvBatch::iter_mut ◄── UdpEndpoint::recv_batch ◄══ recvmmsg + GRO ══ network
//! ```
//!
//! This crate only moves datagrams. It must not hold protocol logic (framing, packet numbers, pacing,
//! retransmission and rate decisions belong to `trackshift-dcsp`), crypto (callers hand it bytes already
//! sealed and get back bytes they still have to open), files, sessions or the TLS control channel (that is
//! `trackshift-transport`). The calls are blocking-thread style, with no async runtime: the socket is
//! non-blocking and a driver thread sleeps in [`UdpEndpoint::wait_readable`] between batches.
//!
//! Outside the network lab, this is the only TrackShift crate with `unsafe`: the few socket calls neither std
//! nor socket2 wrap, all in one private module, each function opting out of the workspace's
//! `unsafe_code = "deny"` with its reason and each unsafe block carrying a `// SAFETY:` line.

mod endpoint;
mod sys;

pub use endpoint::{steered_index, RecvBatch, UdpEndpoint};
