//! The orchestrator's REST API bodies (`/api/v1`), shared by the server and every client.
//!
//! The server derives its OpenAPI schemas from these types (feature `openapi`); clients (relay, `send`,
//! `receive`, scripts) use the same structs, so the two cannot drift. Paths, in `../shared/spec/cli-contract.md`:
//!
//! | method and path | role | body → answer |
//! |---|---|---|
//! | `POST /api/v1/relays/register` | relay | [`RelayRegistration`] → [`RelayRegistered`] |
//! | `POST /api/v1/relays/{relay_id}/heartbeat` | relay | [`RelayHeartbeat`] → 204 (404: register again) |
//! | `GET /api/v1/relays` | any | → `[`[`RelayInfo`]`]` |
//! | `POST /api/v1/receivers/register` | receiver (own name), admin | [`ReceiverRegistration`] → [`ReceiverRegistered`] |
//! | `GET /api/v1/receivers` | any | → `[`[`ReceiverInfo`]`]` |
//! | `GET /api/v1/receivers/{name}/sessions?after=SEQ&wait=SECS` | receiver (own name), admin | → [`ReceiverSessions`] (long poll) |
//! | `POST /api/v1/session` | sender, admin | [`CreateSession`] → [`SessionCreated`] |
//! | `GET /api/v1/session/{id}` | its sender or receiver, admin | → [`SessionRecord`] |
//! | `PUT /api/v1/session/{id}/chunk/{chunk_id}` | its sender or receiver, admin | [`ChunkUpdate`] → 204 |
//! | `POST /api/v1/session/{id}/path` | its sender or receiver, admin | [`PathReport`] → [`SessionPath`] |
//! | `GET /api/v1/sessions` | sender (own), receiver (to it), admin (all) | → `[`[`SessionRecord`]`]` |
//! | `GET /api/v1/metrics` | any | → [`SystemMetrics`] |
//!
//! Errors are `{"error": "..."}` ([`ApiError`]) with 401, 403, 404, 409, 422 or 429 (with `Retry-After`).

use serde::{Deserialize, Serialize};

#[cfg(feature = "openapi")]
use utoipa::ToSchema;

/// Every error answer's body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ApiError {
    /// What went wrong and what to do, one line.
    pub error: String,
}

/// What a sender or receiver measured to one relay (a relay it never reached is left out).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RelayCost {
    /// The relay.
    pub relay_id: String,
    /// Round trip to it, milliseconds.
    pub rtt_ms: f64,
    /// Fraction of probes lost, 0 to 1.
    pub loss: f64,
}

/// A relay announcing itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RelayRegistration {
    /// Its id (the relay token's subject unless the token is an admin's).
    pub relay_id: String,
    /// Where peers reach it, `HOST:PORT` (UDP and TCP on the same port).
    pub addr: String,
    /// A free-form region name, for the dashboard and for selection.
    #[serde(default)]
    pub region: String,
    /// The relay's own rate cap in bytes per second, if it has one.
    #[serde(default)]
    pub max_rate: Option<u64>,
    /// Where this relay forwards to (`--forward`), for two-hop paths.
    #[serde(default)]
    pub forward: Option<String>,
}

/// The orchestrator's answer to a relay registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RelayRegistered {
    /// The id it was registered under.
    pub relay_id: String,
    /// The Ed25519 public key that admission tokens verify with, 64 hex digits.
    pub admission_key: String,
    /// How often to send heartbeats; three missed ones and the relay is unhealthy.
    pub heartbeat_interval_secs: u64,
}

/// A relay's periodic report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RelayHeartbeat {
    /// Sessions with at least one bound connection or paired stream.
    pub sessions: u32,
    /// Load from 0 (idle) to 1 (at its rate cap or CPU limit).
    pub load: f64,
    /// Bytes forwarded since it started (datagrams and streams).
    pub bytes_forwarded: u64,
    /// Datagrams forwarded since it started.
    pub datagrams_forwarded: u64,
    /// Datagrams and connections dropped since it started, by reason.
    #[serde(default)]
    pub drops: std::collections::BTreeMap<String, u64>,
    /// True once it is shutting down: give its sessions another relay.
    #[serde(default)]
    pub draining: bool,
}

/// A relay as the orchestrator sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RelayInfo {
    pub relay_id: String,
    pub addr: String,
    pub region: String,
    /// Probed, heartbeating and not draining.
    pub healthy: bool,
    /// RFC 3339.
    pub last_heartbeat: String,
    /// Sessions it carries, from its last heartbeat.
    pub sessions: u32,
    pub load: f64,
    pub draining: bool,
    pub bytes_forwarded: u64,
}

/// A receiver announcing itself under a name senders use with `--to`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ReceiverRegistration {
    /// Letters, digits, `-`, `_`, `.`; 1 to 64 bytes.
    pub name: String,
    /// What it measured to the relays it knows.
    #[serde(default)]
    pub relay_costs: Vec<RelayCost>,
}

/// The orchestrator's answer to a receiver registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ReceiverRegistered {
    pub name: String,
    /// The key admission tokens and drain tokens verify with, 64 hex digits.
    pub admission_key: String,
}

/// A receiver as the orchestrator sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ReceiverInfo {
    pub name: String,
    /// RFC 3339 time of its last registration or poll.
    pub last_seen: String,
    /// True if it polled within the last 60 s.
    pub online: bool,
}

/// A sender asking for a session to a registered receiver.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CreateSession {
    /// The receiver's registered name.
    pub receiver: String,
    /// The file's name as the receiver will show it.
    pub file_name: String,
    pub file_size: u64,
    pub chunk_size: u64,
    /// DCSP streams the sender will open.
    pub streams: u8,
    /// Relays to stripe over (`--relays N`, default 1): each stream takes `stripes[stream mod N]`.
    #[serde(default = "one")]
    pub relays: u8,
    /// What the sender measured to the relays it knows.
    #[serde(default)]
    pub relay_costs: Vec<RelayCost>,
    /// An earlier session of this sender to this receiver that it resumes (its local state has the chunks
    /// verified): if it is still pending or active and describes the same file, the answer is that session
    /// (its id and current path) instead of a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<String>,
}

fn one() -> u8 {
    1
}

/// One relay of a session's path, with the admission token for it.
///
/// A two-hop stripe (its relay registered with `--forward` to another registered relay) names both: the
/// sender dials `addr` with `token`, here the chain `ENTRY_TOKEN,EXIT_TOKEN` ([`crate::token::chain`]), and the
/// receiver binds at [`PathRelay::exit`] with the exit's own token. `relay_id` is the entry relay either way:
/// it names the stripe in path reports and summaries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct PathRelay {
    pub relay_id: String,
    /// `HOST:PORT`, UDP and TCP.
    pub addr: String,
    /// Lets this relay forward this session (both ends present the same token on a one-hop stripe; on a
    /// two-hop one this is the sender's chain).
    pub token: String,
    /// The second relay of a two-hop stripe, where the receiver binds; absent on a one-hop stripe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<PathExit>,
}

/// The exit relay of a two-hop stripe: the entry forwards the sender's streams and datagrams to it, and the
/// receiver binds here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct PathExit {
    pub relay_id: String,
    /// `HOST:PORT`, UDP and TCP.
    pub addr: String,
    /// The exit's admission token (the receiver's; the same token ends the sender's chain).
    pub token: String,
}

impl PathRelay {
    /// Where the sender dials and what it presents: the entry and the whole chain.
    pub fn for_sender(&self) -> (&str, &str) {
        (&self.addr, &self.token)
    }

    /// Where the receiver binds and what it presents: the exit of a two-hop stripe, else the relay itself.
    pub fn for_receiver(&self) -> (&str, &str) {
        match &self.exit {
            Some(exit) => (&exit.addr, &exit.token),
            None => (&self.addr, &self.token),
        }
    }
}

/// The relays a session uses, and why these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SessionPath {
    /// The relays the streams use now: one, or several when striped. `stripes[0]` carries the control stream.
    pub stripes: Vec<PathRelay>,
    /// Where to go if a stripe's relay dies or drains, if there is a spare relay.
    pub standby: Option<PathRelay>,
    /// Why this path: the costs and loads compared, one line.
    pub reason: String,
    /// Bumped each time the path changes.
    pub version: u32,
}

/// The answer to [`CreateSession`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SessionCreated {
    /// 32 lowercase hex digits; the transfer's session id on both ends.
    pub session_id: String,
    pub path: SessionPath,
    /// The key admission and drain tokens verify with, 64 hex digits.
    pub admission_key: String,
}

/// A sender or receiver telling the orchestrator a relay of its path failed, to get a new path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct PathReport {
    /// The relay that stopped forwarding or sent a drain notice.
    pub failed_relay: String,
}

/// A chunk's state in the orchestrator's chunk map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ChunkStatus {
    Missing,
    InFlight,
    Verified,
    Failed,
}

/// A chunk's new state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ChunkUpdate {
    pub status: ChunkStatus,
}

/// A session's lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Created; the receiver has not picked it up.
    Pending,
    /// Chunks are moving.
    Active,
    /// Every chunk verified.
    Complete,
    /// Given up or cancelled.
    Failed,
}

/// A session with its chunk map and counts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SessionRecord {
    pub session_id: String,
    /// The sender token's subject.
    pub sender: String,
    pub receiver: String,
    pub file_name: String,
    pub file_size: u64,
    pub chunk_size: u64,
    pub streams: u8,
    pub state: SessionState,
    /// One entry per chunk, in order.
    pub chunks: Vec<ChunkStatus>,
    pub chunks_verified: u32,
    pub bytes_verified: u64,
    pub path: SessionPath,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// Order of creation, for [`ReceiverSessions`]'s `after`.
    pub seq: u64,
}

/// The long poll's answer: sessions to this receiver created after `after`, not complete or failed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ReceiverSessions {
    pub sessions: Vec<SessionRecord>,
    /// Pass as `after` next time.
    pub next: u64,
}

/// System-wide counts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SystemMetrics {
    pub sessions_total: u64,
    pub sessions_active: u64,
    pub relays_total: u64,
    pub relays_healthy: u64,
    pub receivers_online: u64,
    pub bytes_verified_total: u64,
    pub chunk_updates_total: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly on purpose

    use super::*;

    #[test]
    fn a_session_request_defaults_to_one_relay() {
        let body = r#"{"receiver":"lab","file_name":"a","file_size":1,"chunk_size":1,"streams":2}"#;
        let request: CreateSession = serde_json::from_str(body).unwrap();
        assert_eq!((request.relays, request.relay_costs.len()), (1, 0));
        assert_eq!(
            serde_json::to_string(&ChunkStatus::InFlight).unwrap(),
            r#""in_flight""#
        );
    }
}
