//! What a session hands its driver: encoded frames to write, actions to carry out, and its timers (as quinn-proto
//! keeps them: one slot per kind of timer, and the driver only ever asks for the earliest).

use std::collections::VecDeque;
use std::time::Instant;

use crate::frame::Frame;

/// A table of optional deadlines indexed by a timer enum `T` (`T as usize` < `N`).
#[derive(Debug, Clone)]
pub(crate) struct TimerTable<const N: usize> {
    at: [Option<Instant>; N],
}

impl<const N: usize> Default for TimerTable<N> {
    fn default() -> Self {
        Self { at: [None; N] }
    }
}

impl<const N: usize> TimerTable<N> {
    pub(crate) fn set(&mut self, timer: usize, at: Instant) {
        self.at[timer] = Some(at);
    }

    pub(crate) fn stop(&mut self, timer: usize) {
        self.at[timer] = None;
    }

    pub(crate) fn stop_all(&mut self) {
        self.at = [None; N];
    }

    /// The earliest deadline set.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.at.iter().flatten().min().copied()
    }

    /// Whether `timer` is set and due at `now`; a due timer is cleared.
    pub(crate) fn expire(&mut self, timer: usize, now: Instant) -> bool {
        match self.at[timer] {
            Some(t) if t <= now => {
                self.at[timer] = None;
                true
            }
            _ => false,
        }
    }
}

/// A session's output: frames encoded in the order they must go, actions in the order they must be carried out,
/// and its `N` timers.
#[derive(Debug)]
pub(crate) struct Outbox<A, const N: usize> {
    transmit: Vec<u8>,
    actions: VecDeque<A>,
    pub(crate) timers: TimerTable<N>,
}

impl<A, const N: usize> Default for Outbox<A, N> {
    fn default() -> Self {
        Self {
            transmit: Vec::new(),
            actions: VecDeque::new(),
            timers: TimerTable::default(),
        }
    }
}

impl<A, const N: usize> Outbox<A, N> {
    /// Queues a frame to write.
    pub(crate) fn frame(&mut self, f: &Frame<'_>) {
        f.encode(&mut self.transmit);
    }

    /// Drops the frames not yet written (their connection is gone).
    pub(crate) fn clear_frames(&mut self) {
        self.transmit.clear();
    }

    /// Queues an action for the driver.
    pub(crate) fn push(&mut self, action: A) {
        self.actions.push_back(action);
    }

    pub(crate) fn poll_action(&mut self) -> Option<A> {
        self.actions.pop_front()
    }

    /// Appends the frames to write to `out`; false when there are none.
    pub(crate) fn poll_transmit(&mut self, out: &mut Vec<u8>) -> bool {
        if self.transmit.is_empty() {
            return false;
        }
        out.append(&mut self.transmit);
        true
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }
}
