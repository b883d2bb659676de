//! [`Pairing`]: the sans-IO side of the relay's TCP port. Each connection's hello is offered to it; it answers
//! whether to wait for the other end, pair with a waiting one, pass the stream on to the next hop, or refuse.
//!
//! A receiver keeps a stream waiting per session (it dials again when one is used or times out); a sender's
//! stream pairs with the oldest waiting receiver stream of its session, or waits [`Limits::sender_wait`] for
//! one. Waiting streams are bounded per session and per role ([`Limits::max_waiting_per_session`]) and in all
//! ([`Limits::max_waiting`]); paired streams in all ([`Limits::max_streams`]). The payload `T` is whatever the
//! driver needs to hand a stream to its waiting peer (a channel's sending half).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use trackshift_grid::{HelloAnswer, PeerRole, RelayHello, TokenVerifier};

use crate::admit::admit;
use crate::counters::{Counters, DropReason};
use crate::limits::{Limits, TokenBucket};

/// What to do with a connection whose hello was offered.
#[derive(Debug)]
pub enum Offer<T> {
    /// Wait for the other end until `deadline`; [`Pairing::cancel`] with `ticket` if the stream closes or the
    /// deadline passes (then answer `NoPeer`).
    Wait { ticket: u64, deadline: Instant },
    /// The other end was waiting: hand this stream to it with its payload.
    Paired { peer: T, session: String },
    /// Pass the stream on to the next hop, with this token (the rest of the chain) in the same role.
    Forward { token: String, session: String },
    /// Answer this and close.
    Refuse(HelloAnswer),
}

#[derive(Debug)]
struct Waiter<T> {
    ticket: u64,
    deadline: Instant,
    payload: T,
}

#[derive(Debug)]
struct SessionWait<T> {
    senders: VecDeque<Waiter<T>>,
    receivers: VecDeque<Waiter<T>>,
}

impl<T> SessionWait<T> {
    fn queue(&mut self, role: PeerRole) -> &mut VecDeque<Waiter<T>> {
        match role {
            PeerRole::Sender => &mut self.senders,
            PeerRole::Receiver => &mut self.receivers,
        }
    }

    fn is_empty(&self) -> bool {
        self.senders.is_empty() && self.receivers.is_empty()
    }
}

/// The TCP pairing state of one relay.
#[derive(Debug)]
pub struct Pairing<T> {
    relay_id: String,
    verifier: TokenVerifier,
    forwards: bool,
    limits: Limits,
    waiting: HashMap<String, SessionWait<T>>,
    tickets: HashMap<u64, String>,
    next_ticket: u64,
    streams: HashMap<String, usize>,
    stream_total: usize,
    verifications: TokenBucket,
    counters: Counters,
    draining: bool,
}

impl<T> Pairing<T> {
    /// An empty pairing for relay `relay_id`; `forwards` says whether it has a next hop.
    pub fn new(
        relay_id: String,
        verifier: TokenVerifier,
        forwards: bool,
        limits: Limits,
        now: Instant,
    ) -> Self {
        let per_sec = limits.verifications_per_sec as f64;
        Self {
            relay_id,
            verifier,
            forwards,
            verifications: TokenBucket::new(per_sec, per_sec.max(1.0), now),
            limits,
            waiting: HashMap::new(),
            tickets: HashMap::new(),
            next_ticket: 0,
            streams: HashMap::new(),
            stream_total: 0,
            counters: Counters::default(),
            draining: false,
        }
    }

    /// Swaps the key tokens verify with.
    pub fn set_verifier(&mut self, verifier: TokenVerifier) {
        self.verifier = verifier;
    }

    /// Decides what to do with a connection that sent `hello` at `now` (Unix time `unix`).
    pub fn offer(&mut self, now: Instant, unix: u64, hello: &RelayHello, payload: T) -> Offer<T> {
        match self.try_offer(now, unix, hello, payload) {
            Ok(offer) => offer,
            Err(reason) => {
                self.counters.drop(reason);
                Offer::Refuse(match reason {
                    DropReason::Busy | DropReason::VerifyFlood => HelloAnswer::Busy,
                    DropReason::Draining => HelloAnswer::Draining,
                    _ => HelloAnswer::Refused,
                })
            }
        }
    }

    fn try_offer(
        &mut self,
        now: Instant,
        unix: u64,
        hello: &RelayHello,
        payload: T,
    ) -> Result<Offer<T>, DropReason> {
        if self.draining {
            return Err(DropReason::Draining);
        }
        if !self.verifications.take(1, now) {
            return Err(DropReason::VerifyFlood);
        }
        let admission = admit(
            &self.verifier,
            &self.relay_id,
            &hello.token,
            unix,
            self.forwards,
        )?;
        let session = admission.session;
        self.check_stream_room(&session)?;
        if let Some(token) = admission.next {
            return Ok(Offer::Forward { token, session });
        }
        if let Some(peer) = self.take_waiting(&session, hello.role.peer()) {
            return Ok(Offer::Paired { peer, session });
        }
        let wait = match hello.role {
            PeerRole::Sender => self.limits.sender_wait,
            PeerRole::Receiver => self.limits.receiver_wait,
        };
        let until_exp = Duration::from_secs(admission.exp.saturating_sub(unix));
        let deadline = now + wait.min(until_exp);
        self.push_waiting(session, hello.role, deadline, payload)
    }

    fn take_waiting(&mut self, session: &str, role: PeerRole) -> Option<T> {
        let wait = self.waiting.get_mut(session)?;
        let waiter = wait.queue(role).pop_front()?;
        if wait.is_empty() {
            self.waiting.remove(session);
        }
        self.tickets.remove(&waiter.ticket);
        self.counters.pairs += 1;
        Some(waiter.payload)
    }

    fn push_waiting(
        &mut self,
        session: String,
        role: PeerRole,
        deadline: Instant,
        payload: T,
    ) -> Result<Offer<T>, DropReason> {
        if self.tickets.len() >= self.limits.max_waiting {
            return Err(DropReason::Busy);
        }
        if !self.waiting.contains_key(&session) && self.session_count() >= self.limits.max_sessions
        {
            return Err(DropReason::Busy);
        }
        let max_per_session = self.limits.max_waiting_per_session;
        let queue = self
            .waiting
            .entry(session.clone())
            .or_insert_with(|| SessionWait {
                senders: VecDeque::new(),
                receivers: VecDeque::new(),
            })
            .queue(role);
        if queue.len() >= max_per_session {
            return Err(DropReason::Busy);
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        queue.push_back(Waiter {
            ticket,
            deadline,
            payload,
        });
        self.tickets.insert(ticket, session);
        Ok(Offer::Wait { ticket, deadline })
    }

    fn check_stream_room(&self, session: &str) -> Result<(), DropReason> {
        if self.stream_total >= self.limits.max_streams {
            return Err(DropReason::Busy);
        }
        if !self.streams.contains_key(session) && self.session_count() >= self.limits.max_sessions {
            return Err(DropReason::Busy);
        }
        Ok(())
    }

    /// Takes a waiting stream out (it closed, or its deadline passed): its payload, or None if it was
    /// already paired (then the payload is on its way to the stream's task).
    pub fn cancel(&mut self, ticket: u64) -> Option<T> {
        let session = self.tickets.remove(&ticket)?;
        let wait = self.waiting.get_mut(&session)?;
        let mut found = None;
        for queue in [&mut wait.senders, &mut wait.receivers] {
            if let Some(at) = queue.iter().position(|w| w.ticket == ticket) {
                found = queue.remove(at).map(|w| w.payload);
            }
        }
        if wait.is_empty() {
            self.waiting.remove(&session);
        }
        if found.is_some() {
            self.counters.drop(DropReason::NoPeer);
        }
        found
    }

    /// Removes every waiting stream past its deadline and returns their payloads (dropping a payload tells
    /// its task: no peer).
    pub fn expire(&mut self, now: Instant) -> Vec<T> {
        let late: Vec<u64> = self
            .waiting
            .values()
            .flat_map(|w| w.senders.iter().chain(w.receivers.iter()))
            .filter(|w| w.deadline <= now)
            .map(|w| w.ticket)
            .collect();
        late.into_iter().filter_map(|t| self.cancel(t)).collect()
    }

    /// Records a stream being copied for `session` (paired or forwarded), until [`Self::stream_ended`].
    pub fn stream_started(&mut self, session: &str) {
        *self.streams.entry(session.to_owned()).or_default() += 1;
        self.stream_total += 1;
    }

    /// A stream of `session` ended, having carried `bytes` both ways.
    pub fn stream_ended(&mut self, session: &str, bytes: u64) {
        self.counters.stream_bytes_forwarded += bytes;
        self.stream_total = self.stream_total.saturating_sub(1);
        if let Some(n) = self.streams.get_mut(session) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.streams.remove(session);
            }
        }
    }

    /// Counts a connection whose hello never came or did not parse.
    pub fn bad_hello(&mut self) {
        self.counters.drop(DropReason::BadHello);
    }

    /// Starts draining: every later hello is answered `Draining`; returns the waiting streams' payloads
    /// (their tasks answer `Draining` too). Streams being copied go on until their ends leave.
    pub fn start_drain(&mut self) -> Vec<T> {
        self.draining = true;
        let tickets: Vec<u64> = self.tickets.keys().copied().collect();
        tickets.into_iter().filter_map(|t| self.cancel(t)).collect()
    }

    /// Whether the relay is draining.
    pub fn draining(&self) -> bool {
        self.draining
    }

    /// Streams waiting for their other end.
    pub fn waiting(&self) -> usize {
        self.tickets.len()
    }

    /// Streams being copied.
    pub fn streams(&self) -> usize {
        self.stream_total
    }

    /// The counters so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Sessions with a waiting or a copied stream.
    pub fn session_ids(&self) -> impl Iterator<Item = &str> {
        self.waiting
            .keys()
            .chain(
                self.streams
                    .keys()
                    .filter(|k| !self.waiting.contains_key(*k)),
            )
            .map(String::as_str)
    }

    fn session_count(&self) -> usize {
        self.waiting.len()
            + self
                .streams
                .keys()
                .filter(|k| !self.waiting.contains_key(*k))
                .count()
    }
}

#[cfg(test)]
mod tests;
