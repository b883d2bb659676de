//! [`RelayTable`]: the sans-IO heart of the relay's UDP side. It takes `(now, unix, from, datagram)` and
//! answers with one [`Action`]; the driver does the sending.
//!
//! A connection id is bound per role: a peer's `Bind{role, conn_id, token}` with an admission token for this
//! relay records the address it came from as that role's end of the connection. From then on a DCSP datagram
//! (first byte 0xDC, `conn_id` at bytes 4..12) from one bound end goes, unchanged, to the other bound end, and
//! nothing else is forwarded: no key is needed or held. A bind that chains to a next hop (`--forward`) binds
//! the next hop as the other end and passes the rest of the token chain on there.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use trackshift_grid::datagram::{is_relay_datagram, RelayDatagram};
use trackshift_grid::{PeerRole, RefusalCode, TokenVerifier};

use crate::admit::admit;
use crate::counters::{Counters, DropReason};
use crate::limits::{Limits, TokenBucket};

/// The first byte of a DCSP datagram.
pub const DCSP_MAGIC: u8 = 0xDC;
/// Bytes of DCSP's routing header (PROTOCOL.md §6.3): anything shorter is not a DCSP datagram.
pub const DCSP_HEADER_LEN: usize = 18;
/// The most control datagrams (Drain notices) queued for the driver; more are dropped, not buffered.
const OUTBOX_LIMIT: usize = 65_536;

/// What to do with one received datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send the datagram, unchanged, to this address.
    Forward(SocketAddr),
    /// Send these bytes (a relay datagram of our own) to this address.
    Send(SocketAddr, Vec<u8>),
    /// Send nothing; the reason has been counted.
    Drop(DropReason),
}

/// One end of a bound connection.
#[derive(Clone, Debug)]
struct Side {
    addr: SocketAddr,
    /// When its admission ends, Unix seconds.
    exp: u64,
    /// The token it bound with (None for a next hop we bound ourselves): a bind repeating it is a refresh.
    token: Option<String>,
    /// The rest of the token chain, sent to the next hop on every refresh.
    next: Option<String>,
}

#[derive(Debug)]
struct Binding {
    session: String,
    sender: Option<Side>,
    receiver: Option<Side>,
    last_active: Instant,
}

impl Binding {
    fn side_mut(&mut self, role: PeerRole) -> &mut Option<Side> {
        match role {
            PeerRole::Sender => &mut self.sender,
            PeerRole::Receiver => &mut self.receiver,
        }
    }

    fn sides(&self) -> impl Iterator<Item = &Side> {
        self.sender.iter().chain(self.receiver.iter())
    }
}

#[derive(Debug)]
struct SessionEntry {
    bucket: Option<TokenBucket>,
    bindings: usize,
}

/// The UDP forwarding state of one relay.
#[derive(Debug)]
pub struct RelayTable {
    relay_id: String,
    verifier: TokenVerifier,
    forward: Option<SocketAddr>,
    limits: Limits,
    bindings: HashMap<u64, Binding>,
    sessions: HashMap<String, SessionEntry>,
    global: Option<TokenBucket>,
    verifications: TokenBucket,
    counters: Counters,
    draining: bool,
    outbox: Vec<(SocketAddr, Vec<u8>)>,
}

impl RelayTable {
    /// An empty table for relay `relay_id`, checking tokens with `verifier`, chaining to `forward` if set.
    pub fn new(
        relay_id: String,
        verifier: TokenVerifier,
        forward: Option<SocketAddr>,
        limits: Limits,
        now: Instant,
    ) -> Self {
        let per_sec = limits.verifications_per_sec as f64;
        Self {
            relay_id,
            verifier,
            forward,
            global: limits.max_rate.map(|r| TokenBucket::bytes_per_sec(r, now)),
            verifications: TokenBucket::new(per_sec, per_sec.max(1.0), now),
            limits,
            bindings: HashMap::new(),
            sessions: HashMap::new(),
            counters: Counters::default(),
            draining: false,
            outbox: Vec::new(),
        }
    }

    /// Swaps the key tokens verify with (the orchestrator may hand out a new one on re-registration).
    pub fn set_verifier(&mut self, verifier: TokenVerifier) {
        self.verifier = verifier;
    }

    /// What to do with `datagram`, received at `now` (Unix time `unix`, for token expiry) from `from`.
    pub fn handle(&mut self, now: Instant, unix: u64, from: SocketAddr, datagram: &[u8]) -> Action {
        let action = if is_relay_datagram(datagram) {
            self.handle_relay(now, unix, from, datagram)
        } else if datagram.first() == Some(&DCSP_MAGIC) && datagram.len() >= DCSP_HEADER_LEN {
            self.handle_dcsp(now, unix, from, datagram)
        } else {
            Action::Drop(DropReason::Junk)
        };
        match &action {
            Action::Drop(reason) => self.counters.drop(*reason),
            Action::Forward(_) => {
                self.counters.datagrams_forwarded += 1;
                self.counters.datagram_bytes_forwarded += datagram.len() as u64;
            }
            Action::Send(..) => {}
        }
        action
    }

    fn handle_dcsp(
        &mut self,
        now: Instant,
        unix: u64,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Action {
        let conn_id = conn_id_of(datagram);
        let Some(binding) = self.bindings.get_mut(&conn_id) else {
            return Action::Drop(DropReason::UnknownConn);
        };
        let (src, dst) = match (&binding.sender, &binding.receiver) {
            (Some(s), r) if s.addr == from => (s, r),
            (s, Some(r)) if r.addr == from => (r, s),
            _ => return Action::Drop(DropReason::WrongAddress),
        };
        let Some(dst) = dst else {
            return Action::Drop(DropReason::NoPeerYet);
        };
        if src.exp <= unix
            || dst.exp <= unix
            || now.saturating_duration_since(binding.last_active) > self.limits.idle_timeout
        {
            return Action::Drop(DropReason::Expired);
        }
        let to = dst.addr;
        let len = datagram.len() as u64;
        if let Some(global) = &mut self.global {
            if !global.would_pass(len, now) {
                return Action::Drop(DropReason::GlobalRate);
            }
        }
        let session = self.sessions.get_mut(&binding.session);
        if let Some(bucket) = session.and_then(|s| s.bucket.as_mut()) {
            if !bucket.take(len, now) {
                return Action::Drop(DropReason::SessionRate);
            }
        }
        if let Some(global) = &mut self.global {
            global.take(len, now);
        }
        binding.last_active = now;
        Action::Forward(to)
    }

    fn handle_relay(
        &mut self,
        now: Instant,
        unix: u64,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Action {
        let Ok(parsed) = RelayDatagram::decode(datagram) else {
            return Action::Drop(DropReason::BadRelayDatagram);
        };
        match parsed {
            RelayDatagram::Bind {
                role,
                conn_id,
                token,
            } => self.handle_bind(now, unix, from, role, conn_id, token),
            // The next hop's answers and notices go back to the end that bound through us.
            other => match self.downstream_of_hop(from, other.conn_id()) {
                Some(to) => Action::Forward(to),
                None => Action::Drop(DropReason::UnexpectedRelayDatagram),
            },
        }
    }

    /// The downstream end's address, if `from` is our next hop and is bound as one end of `conn_id`.
    fn downstream_of_hop(&self, from: SocketAddr, conn_id: u64) -> Option<SocketAddr> {
        if self.forward != Some(from) {
            return None;
        }
        let binding = self.bindings.get(&conn_id)?;
        match (&binding.sender, &binding.receiver) {
            (Some(s), Some(r)) if s.addr == from && s.token.is_none() => Some(r.addr),
            (Some(s), Some(r)) if r.addr == from && r.token.is_none() => Some(s.addr),
            _ => None,
        }
    }

    fn handle_bind(
        &mut self,
        now: Instant,
        unix: u64,
        from: SocketAddr,
        role: PeerRole,
        conn_id: u64,
        token: String,
    ) -> Action {
        if self.draining {
            return self.refuse(from, conn_id, DropReason::Draining);
        }
        if let Some(action) = self.refresh(now, unix, from, role, conn_id, &token) {
            return action;
        }
        if !self.verifications.take(1, now) {
            return Action::Drop(DropReason::VerifyFlood);
        }
        let admission = match admit(
            &self.verifier,
            &self.relay_id,
            &token,
            unix,
            self.forward.is_some(),
        ) {
            Ok(admission) => admission,
            Err(reason) => return self.refuse(from, conn_id, reason),
        };
        if let Err(reason) = self.make_room(conn_id, &admission.session, now) {
            return self.refuse(from, conn_id, reason);
        }
        let exp = admission.exp;
        let next = admission.next.clone();
        let upstream = next.as_ref().and(self.forward);
        let binding = self.bindings.entry(conn_id).or_insert_with(|| Binding {
            session: admission.session,
            sender: None,
            receiver: None,
            last_active: now,
        });
        *binding.side_mut(role) = Some(Side {
            addr: from,
            exp,
            token: Some(token),
            next: next.clone(),
        });
        if let Some(hop) = upstream {
            *binding.side_mut(role.peer()) = Some(Side {
                addr: hop,
                exp,
                token: None,
                next: None,
            });
        }
        binding.last_active = now;
        self.counters.binds += 1;
        self.answer_bind(from, role, conn_id, next)
    }

    /// A bind repeating the token its role is bound with: no verification, only the address may move.
    fn refresh(
        &mut self,
        now: Instant,
        unix: u64,
        from: SocketAddr,
        role: PeerRole,
        conn_id: u64,
        token: &str,
    ) -> Option<Action> {
        let binding = self.bindings.get_mut(&conn_id)?;
        let side = binding.side_mut(role).as_mut()?;
        if side.token.as_deref() != Some(token) || side.exp <= unix {
            return None;
        }
        side.addr = from;
        let next = side.next.clone();
        binding.last_active = now;
        Some(self.answer_bind(from, role, conn_id, next))
    }

    fn answer_bind(
        &self,
        from: SocketAddr,
        role: PeerRole,
        conn_id: u64,
        next: Option<String>,
    ) -> Action {
        match (next, self.forward) {
            (Some(token), Some(hop)) => Action::Send(
                hop,
                RelayDatagram::Bind {
                    role,
                    conn_id,
                    token,
                }
                .encode(),
            ),
            _ => Action::Send(from, RelayDatagram::Bound { conn_id }.encode()),
        }
    }

    /// Checks the limits for binding `conn_id` to `session`, creating the session's entry if needed.
    fn make_room(&mut self, conn_id: u64, session: &str, now: Instant) -> Result<(), DropReason> {
        if let Some(existing) = self.bindings.get(&conn_id) {
            return if existing.session == session {
                Ok(())
            } else {
                Err(DropReason::ConnIdTaken)
            };
        }
        if self.bindings.len() >= self.limits.max_bindings {
            return Err(DropReason::Busy);
        }
        if !self.sessions.contains_key(session) && self.sessions.len() >= self.limits.max_sessions {
            return Err(DropReason::Busy);
        }
        let rate = self.limits.session_rate;
        let entry = self
            .sessions
            .entry(session.to_owned())
            .or_insert_with(|| SessionEntry {
                bucket: rate.map(|r| TokenBucket::bytes_per_sec(r, now)),
                bindings: 0,
            });
        if entry.bindings >= self.limits.max_bindings_per_session {
            return Err(DropReason::Busy);
        }
        entry.bindings += 1;
        Ok(())
    }

    fn refuse(&mut self, to: SocketAddr, conn_id: u64, reason: DropReason) -> Action {
        self.counters.drop(reason);
        let code = match reason {
            DropReason::ConnIdTaken => RefusalCode::ConnIdTaken,
            DropReason::Busy => RefusalCode::Busy,
            DropReason::Draining => RefusalCode::Draining,
            _ => RefusalCode::Token,
        };
        Action::Send(to, RelayDatagram::Refused { conn_id, code }.encode())
    }

    /// Charges `len` bytes of a paired stream to the relay's rate cap (`--max-rate` covers streams and
    /// datagrams together); returns how long the stream should pause before it reads again.
    pub fn charge_stream(&mut self, len: u64, now: Instant) -> Duration {
        self.global
            .as_mut()
            .map_or(Duration::ZERO, |bucket| bucket.debit(len, now))
    }

    /// Forgets bindings idle past the limit or whose admissions all expired, and sessions left with none.
    pub fn expire(&mut self, now: Instant, unix: u64) {
        self.expire_idle(now, unix, self.limits.idle_timeout);
    }

    /// Like [`Self::expire`] with a shorter idle time (a drain counts a binding quiet that long as moved).
    pub fn expire_idle(&mut self, now: Instant, unix: u64, idle: Duration) {
        let idle = idle.min(self.limits.idle_timeout);
        let sessions = &mut self.sessions;
        self.bindings.retain(|_, b| {
            let live = now.saturating_duration_since(b.last_active) <= idle
                && b.sides().any(|s| s.exp > unix);
            if !live {
                if let Some(entry) = sessions.get_mut(&b.session) {
                    entry.bindings = entry.bindings.saturating_sub(1);
                }
            }
            live
        });
        self.sessions.retain(|_, s| s.bindings > 0);
    }

    /// Starts draining: every later bind is refused, and each bound end (not a next hop) gets a Drain
    /// notice, queued for [`Self::take_outbox`].
    pub fn start_drain(&mut self) {
        self.draining = true;
        for (conn_id, binding) in &self.bindings {
            for side in binding.sides().filter(|s| s.token.is_some()) {
                if self.outbox.len() < OUTBOX_LIMIT {
                    let notice = RelayDatagram::Drain {
                        conn_id: *conn_id,
                        token: String::new(),
                    };
                    self.outbox.push((side.addr, notice.encode()));
                }
            }
        }
    }

    /// Whether the relay is draining.
    pub fn draining(&self) -> bool {
        self.draining
    }

    /// Control datagrams waiting to be sent (Drain notices).
    pub fn take_outbox(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        std::mem::take(&mut self.outbox)
    }

    /// The counters so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Bound connection ids.
    pub fn bindings(&self) -> usize {
        self.bindings.len()
    }

    /// The sessions with at least one binding.
    pub fn session_ids(&self) -> impl Iterator<Item = &str> {
        self.sessions.keys().map(String::as_str)
    }
}

/// The connection id at bytes 4..12 (big-endian) of a datagram at least [`DCSP_HEADER_LEN`] long.
fn conn_id_of(datagram: &[u8]) -> u64 {
    let mut id = [0u8; 8];
    id.copy_from_slice(&datagram[4..12]);
    u64::from_be_bytes(id)
}

#[cfg(test)]
mod tests;
