//! Sending and receiving through the edge grid's relays (`docs/PROTOCOL.md` §7.1): the path a caller hands the
//! engine ([`RelayPath`]), dialling a relay with the hello ([`dial`]), the relay datagrams a DCSP socket sends
//! and takes ([`bind_datagram`], [`RelayNotice`]), and, sans-IO, the bind and silence timers ([`timers`]) and
//! the sender's failover decisions ([`route`]).
//!
//! A relay has no key: the control connection's TLS and every datagram's AEAD stay end to end, so through a
//! relay the conversation is exactly the direct one. Only where bytes go changes.

pub(crate) mod route;
pub(crate) mod timers;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trackshift_grid::datagram::{is_relay_datagram, RelayDatagram};
use trackshift_grid::{HelloAnswer, PeerRole, RefusalCode, RelayHello};
use trackshift_proto::SessionId;

/// One relay of a session's path: where it is and the admission token that lets it forward the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayHop {
    pub relay_id: String,
    /// `HOST:PORT`, TCP and UDP.
    pub addr: String,
    pub token: String,
}

/// The relays one session goes through: the orchestrator's `SessionPath` for the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayPath {
    /// The session id both ends use (the orchestrator's; the admission tokens name it).
    pub session_id: SessionId,
    /// Stream `s` goes through `stripes[s mod N]`; `stripes[0]` also carries the control connection.
    pub stripes: Vec<RelayHop>,
    /// Where a stripe's streams go when its relay dies or drains.
    pub standby: Option<RelayHop>,
}

impl RelayPath {
    /// Every relay of the path, stripes first, each once.
    pub fn hops(&self) -> Vec<&RelayHop> {
        let mut all: Vec<&RelayHop> = Vec::new();
        for hop in self.stripes.iter().chain(self.standby.as_ref()) {
            if !all.iter().any(|h| h.relay_id == hop.relay_id) {
                all.push(hop);
            }
        }
        all
    }
}

/// Where the engine asks for a new path when a relay fails (the command line asks its orchestrator). Called on a
/// blocking thread: it may take its time, and its answer is a hint (`None` is fine: the engine then moves to
/// the path's standby, or to the other stripes, on its own).
pub trait PathUpdates: Send + Sync {
    /// The sender lost `failed_relay` (it died, stopped forwarding or drains): the session's new path.
    fn failed(&self, session: SessionId, failed_relay: &str) -> Option<RelayPath>;
    /// The receiver lost `failed_relay`: the session's current path (the sender may have moved it already).
    fn current(&self, session: SessionId, failed_relay: &str) -> Option<RelayPath>;
}

/// A sender's relay set-up: the path, and who to ask for a new one.
#[derive(Clone)]
pub struct RelayRoute {
    pub path: RelayPath,
    pub updates: Option<Arc<dyn PathUpdates>>,
}

impl std::fmt::Debug for RelayRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayRoute")
            .field("path", &self.path)
            .field("updates", &self.updates.is_some())
            .finish()
    }
}

/// A relay's TCP connect: a relay that does not accept within this is taken to be down.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a sender waits for the relay's answer to its hello (the relay answers at once when the
/// receiver waits there, and `NoPeer` after its own wait when it does not).
const SENDER_ANSWER_WAIT: Duration = Duration::from_secs(20);
/// How long a receiver's waiting connection waits for a sender before it is dialled afresh (a relay that
/// vanished without closing the connection is noticed by then).
pub(crate) const RECEIVER_ANSWER_WAIT: Duration = Duration::from_secs(300);

/// Why dialling a relay gave no paired connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    /// The relay cannot be reached (refused, timed out, unresolvable): it is down, or the path is cut.
    #[error("relay {relay} ({addr}) is unreachable: {why}")]
    Unreachable {
        relay: String,
        addr: String,
        why: String,
    },
    /// The relay answered the hello with something other than `Paired`.
    #[error("relay {relay} ({addr}) answered {answer}")]
    Answer {
        relay: String,
        addr: String,
        answer: &'static str,
        kind: HelloAnswer,
    },
    /// The connection broke, or no answer came in time.
    #[error("relay {relay} ({addr}): {why}")]
    Broken {
        relay: String,
        addr: String,
        why: String,
    },
}

impl DialError {
    /// Whether the relay is gone for this session (dead, draining or full): time for the standby.
    pub(crate) fn relay_lost(&self) -> bool {
        match self {
            DialError::Unreachable { .. } => true,
            DialError::Answer { kind, .. } => {
                matches!(kind, HelloAnswer::Draining | HelloAnswer::Busy)
            }
            DialError::Broken { .. } => false,
        }
    }

    /// Whether the relay refused the session's token: retrying cannot help.
    pub(crate) fn refused(&self) -> bool {
        matches!(
            self,
            DialError::Answer {
                kind: HelloAnswer::Refused,
                ..
            }
        )
    }
}

fn answer_name(answer: HelloAnswer) -> &'static str {
    match answer {
        HelloAnswer::Paired => "paired",
        HelloAnswer::Refused => {
            "refused (the admission token did not verify, expired, or is for another relay)"
        }
        HelloAnswer::NoPeer => "no peer (the other end is not attached yet)",
        HelloAnswer::Busy => "busy (at its session limit)",
        HelloAnswer::Draining => "draining (shutting down)",
    }
}

/// Connects to `hop`, writes the hello as `role` and waits up to `wait` for the relay's answer. On `Paired` the
/// connection is the other end's from the next byte on: TLS runs over it as over a direct connection.
pub(crate) async fn dial(
    hop: &RelayHop,
    role: PeerRole,
    wait: Duration,
) -> Result<TcpStream, DialError> {
    let unreachable = |why: String| DialError::Unreachable {
        relay: hop.relay_id.clone(),
        addr: hop.addr.clone(),
        why,
    };
    let broken = |why: String| DialError::Broken {
        relay: hop.relay_id.clone(),
        addr: hop.addr.clone(),
        why,
    };
    let mut tcp = match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(&hop.addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(unreachable(e.to_string())),
        Err(_) => return Err(unreachable(format!("no answer within {DIAL_TIMEOUT:?}"))),
    };
    let _ = tcp.set_nodelay(true);
    let hello = RelayHello {
        role,
        token: hop.token.clone(),
    };
    tcp.write_all(&hello.encode())
        .await
        .map_err(|e| broken(format!("writing the hello: {e}")))?;
    let answer = match tokio::time::timeout(wait, tcp.read_u8()).await {
        Ok(Ok(byte)) => HelloAnswer::from_byte(byte),
        Ok(Err(e)) => return Err(broken(format!("waiting for its answer: {e}"))),
        Err(_) => return Err(broken(format!("no answer within {wait:?}"))),
    };
    if answer != HelloAnswer::Paired {
        return Err(DialError::Answer {
            relay: hop.relay_id.clone(),
            addr: hop.addr.clone(),
            answer: answer_name(answer),
            kind: answer,
        });
    }
    Ok(tcp)
}

/// A sender's control connection through `hop`.
pub(crate) async fn dial_as_sender(hop: &RelayHop) -> Result<TcpStream, DialError> {
    dial(hop, PeerRole::Sender, SENDER_ANSWER_WAIT).await
}

/// The UDP address of a relay (the first its name resolves to).
pub(crate) fn udp_addr(hop: &RelayHop) -> Result<SocketAddr, String> {
    hop.addr
        .to_socket_addrs()
        .map_err(|e| format!("relay {} address {}: {e}", hop.relay_id, hop.addr))?
        .next()
        .ok_or_else(|| {
            format!(
                "relay {} address {} resolves to nothing",
                hop.relay_id, hop.addr
            )
        })
}

/// Where one DCSP connection binds at one relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RelayBind {
    pub(crate) relay_id: String,
    pub(crate) addr: SocketAddr,
    pub(crate) token: String,
}

/// The relay ids that carried part of a session at the receiver, each once, in the order first seen (for the
/// summary's `relays`).
#[derive(Debug, Default)]
pub(crate) struct UsedRelays(std::sync::Mutex<Vec<String>>);

impl UsedRelays {
    pub(crate) fn note(&self, relay_id: &str) {
        if let Ok(mut ids) = self.0.lock() {
            if !ids.iter().any(|id| id == relay_id) {
                ids.push(relay_id.to_owned());
            }
        }
    }

    pub(crate) fn ids(&self) -> Vec<String> {
        self.0.lock().map(|ids| ids.clone()).unwrap_or_default()
    }
}

/// The `Bind` datagram for `conn_id` as `role`.
pub(crate) fn bind_datagram(role: PeerRole, conn_id: u64, token: &str) -> Vec<u8> {
    RelayDatagram::Bind {
        role,
        conn_id,
        token: token.to_owned(),
    }
    .encode()
}

/// What a relay's datagram tells a DCSP socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RelayNotice {
    Bound(u64),
    Refused(u64, RefusalCode),
    Drain(u64),
}

impl RelayNotice {
    /// `None` for a DCSP datagram; `Some(None)` for a relay datagram that says nothing a peer acts on (or is
    /// damaged: it is dropped, never counted as DCSP junk).
    pub(crate) fn of(datagram: &[u8]) -> Option<Option<Self>> {
        if !is_relay_datagram(datagram) {
            return None;
        }
        Some(match RelayDatagram::decode(datagram) {
            Ok(RelayDatagram::Bound { conn_id }) => Some(RelayNotice::Bound(conn_id)),
            Ok(RelayDatagram::Refused { conn_id, code }) => {
                Some(RelayNotice::Refused(conn_id, code))
            }
            Ok(RelayDatagram::Drain { conn_id, .. }) => Some(RelayNotice::Drain(conn_id)),
            Ok(RelayDatagram::Bind { .. }) | Err(_) => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_datagrams_are_told_from_dcsp_ones() {
        assert_eq!(RelayNotice::of(&[0xDC, 1, 1, 0]), None);
        let bound = RelayDatagram::Bound { conn_id: 9 }.encode();
        assert_eq!(RelayNotice::of(&bound), Some(Some(RelayNotice::Bound(9))));
        let drain = RelayDatagram::Drain {
            conn_id: 3,
            token: String::new(),
        }
        .encode();
        assert_eq!(RelayNotice::of(&drain), Some(Some(RelayNotice::Drain(3))));
        assert_eq!(RelayNotice::of(&[0xDB, 1]), Some(None), "damaged: dropped");
        let echo = bind_datagram(PeerRole::Sender, 4, "t");
        assert_eq!(
            RelayNotice::of(&echo),
            Some(None),
            "a Bind is not for peers"
        );
    }

    #[test]
    fn a_path_lists_each_relay_once() {
        let hop = |id: &str| RelayHop {
            relay_id: id.into(),
            addr: "127.0.0.1:1".into(),
            token: String::new(),
        };
        let path = RelayPath {
            session_id: SessionId([1; 16]),
            stripes: vec![hop("a"), hop("b"), hop("a")],
            standby: Some(hop("c")),
        };
        let ids: Vec<&str> = path.hops().iter().map(|h| h.relay_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
    }
}
