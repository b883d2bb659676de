//! The deadlines of one conversation, as quinn-proto keeps them: one slot per kind of timer, and the driver only
//! ever asks for the earliest.

use std::time::Instant;

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
