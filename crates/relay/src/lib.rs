//! TrackShift's relay: it forwards a session's DCSP datagrams and its end-to-end TLS control stream between a
//! sender and a receiver that both dialled out to it, for sessions the orchestrator admitted.
//!
//! ```text
//!  sender ──TCP: RelayHello, then TLS bytes──► relay ◄──TCP: RelayHello, then TLS bytes── receiver
//!  sender ══UDP: Bind, then DCSP datagrams═══► relay ◄══UDP: Bind, then DCSP datagrams═══ receiver
//!                       Pairing (TCP) and RelayTable (UDP): sans-IO, take `now`, return actions
//! ```
//!
//! Owns: the sans-IO forwarding state ([`RelayTable`] for datagrams, [`Pairing`] for streams), admission
//! checks and token chains for two-hop paths ([`admit`]), the bounds and rate buckets ([`limits`]), the drop
//! counters ([`counters`]), the socket driver that carries them out ([`driver`]: one UDP socket through
//! `trackshift-udp`, a tokio TCP listener on the same port, drain on shutdown), and the orchestrator link
//! ([`orchestrator`]: registration, heartbeats, re-registration; the HTTP client is the caller's, behind a
//! trait).
//!
//! Must not touch: any data key or the contents of what it forwards (the TLS 1.3 stream and DCSP's AES-256-GCM
//! stay end to end: a relay routes on the clear `conn_id` and session, and forwards bytes unchanged), files,
//! or the engine. The sans-IO modules read no clock and touch no socket.

pub mod admit;
pub mod counters;
pub mod driver;
pub mod limits;
pub mod orchestrator;
pub mod pairing;
pub mod table;

pub use counters::{Counters, DropReason};
pub use driver::{Relay, RelayConfig, RelayHandle, RelayStats, Tap, TapEvent};
pub use limits::{Limits, TokenBucket};
pub use pairing::{Offer, Pairing};
pub use table::{Action, RelayTable};
