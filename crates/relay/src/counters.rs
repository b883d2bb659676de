//! What the relay counts: forwarded datagrams and bytes, and every drop or refusal by its reason.

use std::collections::BTreeMap;

/// Why a datagram was not forwarded, or a bind or hello was refused. Each has its own counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Neither a DCSP (0xDC) nor a relay (0xDB) datagram, or too short to carry a connection id.
    Junk,
    /// A relay datagram that does not parse.
    BadRelayDatagram,
    /// A relay datagram a peer has no business sending (Bound, Refused, Drain not from our next hop).
    UnexpectedRelayDatagram,
    /// A DCSP datagram for a connection id nobody bound.
    UnknownConn,
    /// A DCSP datagram for a bound connection id, from neither bound address.
    WrongAddress,
    /// The other end of the connection has not bound yet.
    NoPeerYet,
    /// The binding's token expired or it went idle.
    Expired,
    /// Over the session's rate cap.
    SessionRate,
    /// Over the relay's rate cap.
    GlobalRate,
    /// A token that does not verify (forged, another orchestrator's, not a token).
    TokenInvalid,
    /// A token past its expiry.
    TokenExpired,
    /// A token for another relay.
    TokenWrongRelay,
    /// A token chain (two-hop path) at a relay with no `--forward`.
    NoForward,
    /// A bind for a connection id another session holds.
    ConnIdTaken,
    /// At a session, binding, waiting or stream limit.
    Busy,
    /// Refused because the relay is draining.
    Draining,
    /// More token verifications than the relay allows per second.
    VerifyFlood,
    /// A TCP connection whose first bytes are not a relay hello, or that sent none in time.
    BadHello,
    /// A stream that waited for its other end in vain.
    NoPeer,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 19] = [
        DropReason::Junk,
        DropReason::BadRelayDatagram,
        DropReason::UnexpectedRelayDatagram,
        DropReason::UnknownConn,
        DropReason::WrongAddress,
        DropReason::NoPeerYet,
        DropReason::Expired,
        DropReason::SessionRate,
        DropReason::GlobalRate,
        DropReason::TokenInvalid,
        DropReason::TokenExpired,
        DropReason::TokenWrongRelay,
        DropReason::NoForward,
        DropReason::ConnIdTaken,
        DropReason::Busy,
        DropReason::Draining,
        DropReason::VerifyFlood,
        DropReason::BadHello,
        DropReason::NoPeer,
    ];

    /// The reason's name in heartbeats and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Junk => "junk",
            DropReason::BadRelayDatagram => "bad_relay_datagram",
            DropReason::UnexpectedRelayDatagram => "unexpected_relay_datagram",
            DropReason::UnknownConn => "unknown_conn",
            DropReason::WrongAddress => "wrong_address",
            DropReason::NoPeerYet => "no_peer_yet",
            DropReason::Expired => "expired",
            DropReason::SessionRate => "session_rate",
            DropReason::GlobalRate => "global_rate",
            DropReason::TokenInvalid => "token_invalid",
            DropReason::TokenExpired => "token_expired",
            DropReason::TokenWrongRelay => "token_wrong_relay",
            DropReason::NoForward => "no_forward",
            DropReason::ConnIdTaken => "conn_id_taken",
            DropReason::Busy => "busy",
            DropReason::Draining => "draining",
            DropReason::VerifyFlood => "verify_flood",
            DropReason::BadHello => "bad_hello",
            DropReason::NoPeer => "no_peer",
        }
    }

    fn index(self) -> usize {
        DropReason::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or_default()
    }
}

/// Counters, as plain numbers (the table owns one; the driver sums the table's and its streams').
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// DCSP and relay datagrams forwarded.
    pub datagrams_forwarded: u64,
    /// Their bytes.
    pub datagram_bytes_forwarded: u64,
    /// Bytes copied on paired streams, both ways.
    pub stream_bytes_forwarded: u64,
    /// Binds accepted (new or moved).
    pub binds: u64,
    /// Streams paired.
    pub pairs: u64,
    drops: [u64; DropReason::ALL.len()],
}

impl Counters {
    /// Counts one drop.
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason.index()] += 1;
    }

    /// Drops so far for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }

    /// All drops so far.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// The non-zero drop counters by name, as a heartbeat carries them.
    pub fn drop_map(&self) -> BTreeMap<String, u64> {
        DropReason::ALL
            .iter()
            .filter(|r| self.drops(**r) > 0)
            .map(|r| (r.as_str().to_owned(), self.drops(*r)))
            .collect()
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Counters) {
        self.datagrams_forwarded += other.datagrams_forwarded;
        self.datagram_bytes_forwarded += other.datagram_bytes_forwarded;
        self.stream_bytes_forwarded += other.stream_bytes_forwarded;
        self.binds += other.binds;
        self.pairs += other.pairs;
        for (mine, theirs) in self.drops.iter_mut().zip(other.drops.iter()) {
            *mine += theirs;
        }
    }
}
