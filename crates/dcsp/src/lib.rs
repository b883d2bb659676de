//! DCSP, the Dynamic Chunk Swarm Protocol: TrackShift's UDP data plane, without I/O.
//!
//! This crate owns the DCSP wire format ([`packet`]), per-packet AES-256-GCM and replay protection
//! ([`crypto`]), the cut of a file into FEC blocks ([`geometry`]), Reed-Solomon parity ([`fec`]), the
//! acknowledgement format ([`ack`]), rate control ([`rate`]) and the two state machines, [`DcspSender`] and
//! [`DcspReceiver`]. Like quinn-proto, it never touches a socket, a file, a thread or a clock: drivers hand it
//! datagrams, file bytes and the current `Instant`, and carry out what it returns (datagrams to send, blocks
//! to write). That is what lets `tests/sim.rs` run thousands of seeded network scenarios in virtual time.
//!
//! It must not depend on tokio, sockets or storage. Chunk hashes, the whole-file hash and session state stay
//! with the control channel (`trackshift-proto`) and the drivers.
//!
//! ```text
//!  file blocks ─► DcspSender ─► DATA/PARITY datagrams ═══ UDP ═══► DcspReceiver ─► decoded blocks (write at offset)
//!                    ▲                                                  │
//!                    └──────────── ACK (cumulative + ranges + NACKs) ◄──┘
//! ```
#![forbid(unsafe_code)] // only trackshift-udp (and the netlab test support) may have unsafe: see ARCHITECTURE.md

pub mod ack;
pub mod crypto;
pub mod fec;
pub mod geometry;
pub mod packet;
pub mod rate;
mod receiver;
mod sender;

pub use crypto::{DirectionKeys, PacketKey, Role};
pub use fec::ParityMode;
pub use geometry::BlockGeometry;
pub use packet::{PacketType, WireError, DATA_OVERHEAD, MAGIC, VERSION};
pub use rate::{DelayRate, DelayRateFactory, RateController, RateControllerFactory, RateSample};
pub use receiver::{
    stream_conn_id, DcspReceiver, ReceiverConfig, ReceiverEvent, ReceiverStats, StreamShare,
    Transmit,
};
pub use sender::{DcspSender, SenderConfig, SenderStats, SharedBlock};

/// A DCSP state machine refused what its driver asked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DcspError {
    #[error("block {0} is outside this file's block geometry")]
    NoSuchBlock(u32),
    #[error("block {block} should carry {expected} bytes, got {got}")]
    BlockLength {
        block: u32,
        expected: usize,
        got: usize,
    },
    #[error("invalid DCSP parameters: {0}")]
    Config(String),
}
