//! The TrackShift protocol, without I/O.
//!
//! This crate owns the wire format of the control channel (and of the TCP data path), the chunk plan of a
//! file, the map of verified chunks, chunk and file hashing, per-chunk compression, and the sender and
//! receiver transfer state machines. It contains no networking code, opens no files and never reads a clock:
//! drivers feed it bytes and frames and carry out what it decides. It must not depend on tokio, rustls, SQLite
//! or any other I/O crate.
//!
//! ```text
//!  file bytes ──► OutgoingTransfer ──► Frame::encode ══ TLS ══► Frame::decode ──► IncomingTransfer ──► writes
//!                   ▲  (what to send)                                               (is it legal?) │
//!                   └──────────────── ChunkDone / FileDone ◄───────────────────────────────────────┘
//! ```
#![forbid(unsafe_code)] // only trackshift-udp (and the netlab test support) may have unsafe: see ARCHITECTURE.md

pub mod compress;
pub mod frame;
pub mod hashing;
pub mod plan;
pub mod session;
pub mod session_id;
pub mod transfer;

pub use frame::{ErrorCode, Frame, Offer, WireError};
pub use plan::{ChunkMap, ChunkPlan, PlanError};
pub use session_id::{BadSessionId, SessionId};
pub use transfer::{
    FirstPass, Incoming, IncomingTransfer, OutgoingTransfer, ProtocolViolation, SourceChanged,
};
