//! The control conversation of a transfer, as sans-IO state machines: [`SendSession`] for a `send` run (every
//! connection it makes, its retries, its fallback from UDP to TCP, a source that changed) and [`RecvSession`]
//! for one control connection on the receiver. Both take frames, local events (a chunk read and hashed, a chunk
//! verified on disk) and timer ticks with the current `Instant`, and hand back encoded frames to write
//! ([`SendSession::poll_transmit`]) and actions for their driver to carry out (`poll_action`). They never read
//! a clock, touch a socket or a file, or draw randomness the caller did not seed.
//!
//! ```text
//!  driver (engine)                         SendSession                       RecvSession             driver
//!  connect, read file ──── events ───►  Offer, UdpStart, ChunkHash ══ TLS ══► Accept, VerifiedList ◄── store
//!  reader, DCSP planes ◄── actions ───  ChunkDone, FileDone ◄═══════════════ ChunkDone, FileDone  ◄── writer
//! ```
//!
//! Both the TCP and the DCSP data paths run through the same bookkeeping: the sender's
//! [`OutgoingTransfer`](crate::OutgoingTransfer) and the receiver's [`IncomingTransfer`](crate::IncomingTransfer).

mod backoff;
mod outbox;
mod recv;
mod send;

pub use backoff::Backoff;
pub use recv::{
    RecvAction, RecvConfig, RecvOutcome, RecvSession, OFFER_TIMEOUT, RECEIVER_KEEPALIVE,
    SENDER_SILENCE,
};
pub use send::{
    DataPath, Delivered, SendAction, SendConfig, SendError, SendEvent, SendSession, SendStats,
    UdpLink, CONTROL_SILENCE, FINAL_WAIT, KEEPALIVE_EVERY, UDP_READY_TIMEOUT,
};
