//! Sans-IO pieces of the edge grid that more than one process must agree on.
//!
//! Owns: the signed tokens ([`token`]: API bearer tokens with a role, and the short-lived admission tokens
//! that let a relay forward one session), the hello a peer writes on a relay's TCP port before its TLS
//! handshake ([`hello`]), and the relay's own datagrams on its UDP port ([`datagram`]: bind, bound, refused,
//! drain); and the REST API's request and answer bodies ([`api`]). Byte layouts are in `docs/PROTOCOL.md` §7.
//!
//! Must not touch: sockets, files, clocks (callers pass `now` as Unix seconds), or the contents of the
//! end-to-end TLS and DCSP traffic a relay carries: nothing here has, or needs, a data key.

pub mod api;
pub mod datagram;
pub mod hello;
pub mod token;

pub use datagram::{RefusalCode, RelayDatagram};
pub use hello::{HelloAnswer, PeerRole, RelayHello};
pub use token::{AdmissionClaims, ApiClaims, Role, TokenError, TokenKey, TokenVerifier};
