//! TrackShift's network lab: a user-space link emulator for tests and benchmarks.
//!
//! This machine class has no `tc netem`, so the lab emulates bad links itself: it creates two network
//! namespaces (`<name>-a`, `<name>-b`), puts a TUN device in each (198.18.0.1/24 on side a,
//! 198.18.1.1/24 on side b, routed to each other through the TUN), and forwards every IP packet between
//! the two TUN fds through a per-direction [`LinkModel`]: one-way delay, jitter, random and
//! Gilbert-Elliott burst loss, reordering, duplication, bit corruption, a rate limit with a drop-tail
//! queue, scheduled outages, plus an "address change" of side a for roaming tests. Optionally a third
//! namespace, side c (`<name>-c`, 198.18.2.2), hangs off side b by a plain veth pair: it reaches side b only,
//! and nothing forwards between it and side a (the edge-grid tests put a receiver there, relays in side b).
//!
//! What it owns:
//! - the sans-IO impairment core ([`model`]), unit-tested with virtual time;
//! - named profiles and value parsing ([`config`]);
//! - the `trackshift-netlab` binary (`up`, `down`, `profiles`) and its namespaces/devices, which it
//!   removes on every exit path (normal end, SIGTERM/SIGINT, `--max-duration`, errors, panics);
//! - [`Lab`], the handle tests use to run that binary as a child process.
//!
//! What it must not touch: TrackShift's own crates (`trackshift-proto`, `-storage`, `-transport`,
//! the `trackshift` binary) — it is test support, never linked into the shipped binary, and it
//! treats the binary under test as a black box run inside the namespaces. It also never touches the
//! root namespace's addresses or routes, and only uses addresses from 198.18.0.0/15.

pub mod config;
pub mod emulator;
pub mod lab;
pub mod model;
mod sys;

pub use config::{parse_duration, parse_percent, parse_rate, profile, LinkOverrides, PROFILES};
pub use emulator::{direction_seeds, LabCounters, ADDR_A, ADDR_B, ADDR_B_TO_C, ADDR_C};
pub use lab::{command_in, in_netns, locate_binary, Lab, LabConfig};
pub use model::{
    Counters, DelayLine, DropCause, Forward, GilbertElliott, LinkConfig, LinkModel, Outage, Verdict,
};
