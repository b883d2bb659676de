//! The relay's UDP thread: one socket through `trackshift-udp` (recvmmsg + GRO in, GSO runs out), the
//! [`RelayTable`] deciding each datagram's fate.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use trackshift_udp::{RecvBatch, UdpEndpoint};

use super::{unix_now, Shared, TapEvent};
use crate::table::Action;

/// How long the thread sleeps in one wait when nothing arrives: the bound on how late it notices a stop or a
/// drain, and the period of its housekeeping when idle.
const IDLE_WAIT: Duration = Duration::from_millis(50);
/// How often bindings are checked for idleness and expiry.
const EXPIRE_EVERY: Duration = Duration::from_secs(1);
/// Receive batches handled before the thread looks at its housekeeping again under load.
const BATCHES_PER_ROUND: usize = 64;
/// The most datagrams gathered into one GSO send (the kernel's own limit is 64).
const MAX_RUN: usize = 64;

/// Runs of equal-size datagrams to one address, gathered from a receive batch for GSO sends.
#[derive(Debug, Default)]
struct Outgoing {
    arena: Vec<u8>,
    /// (destination, segment size, start, end, datagrams, closed by a shorter last datagram)
    runs: Vec<Run>,
}

#[derive(Debug)]
struct Run {
    dst: SocketAddr,
    segment: usize,
    start: usize,
    count: usize,
    closed: bool,
}

impl Outgoing {
    fn push(&mut self, dst: SocketAddr, datagram: &[u8]) {
        let len = datagram.len();
        let extends = self.runs.last_mut().filter(|run| {
            run.dst == dst && !run.closed && run.count < MAX_RUN && len <= run.segment
        });
        match extends {
            Some(run) => {
                run.count += 1;
                run.closed = len < run.segment;
            }
            None => self.runs.push(Run {
                dst,
                segment: len.max(1),
                start: self.arena.len(),
                count: 1,
                closed: false,
            }),
        }
        self.arena.extend_from_slice(datagram);
    }

    /// Sends every run; a run the socket refuses (full buffer) is dropped, not queued. Returns the datagrams
    /// that could not be sent.
    fn flush(&mut self, endpoint: &mut UdpEndpoint) -> u64 {
        let mut unsent = 0;
        for (i, run) in self.runs.iter().enumerate() {
            let end = self.runs.get(i + 1).map_or(self.arena.len(), |r| r.start);
            let data = &self.arena[run.start..end];
            let sent = endpoint.send_batch(run.dst, data, run.segment).unwrap_or(0);
            if sent < data.len() {
                unsent += (data.len() - sent).div_ceil(run.segment) as u64;
            }
        }
        self.arena.clear();
        self.runs.clear();
        unsent
    }
}

/// The thread's loop: until `shared.stop`, receive, decide, send.
pub(super) fn run(mut endpoint: UdpEndpoint, shared: Arc<Shared>) {
    let mut batch = RecvBatch::new();
    let mut out = Outgoing::default();
    let mut last_expire = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        if let Err(e) = endpoint.wait_readable(Some(IDLE_WAIT)) {
            tracing::warn!("relay UDP wait failed: {e}");
            std::thread::sleep(IDLE_WAIT);
        }
        for _ in 0..BATCHES_PER_ROUND {
            match endpoint.recv_batch(&mut batch) {
                Ok(_) => handle_batch(&batch, &shared, &mut out),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ICMP errors (a peer's port closed) surface here; they concern one peer only.
                Err(e) => tracing::debug!("relay UDP receive: {e}"),
            }
            let unsent = out.flush(&mut endpoint);
            shared.send_drops.fetch_add(unsent, Ordering::Relaxed);
        }
        housekeeping(&shared, &mut out, &mut last_expire);
        let unsent = out.flush(&mut endpoint);
        shared.send_drops.fetch_add(unsent, Ordering::Relaxed);
    }
}

fn handle_batch(batch: &RecvBatch, shared: &Shared, out: &mut Outgoing) {
    let now = Instant::now();
    let unix = unix_now();
    let mut table = shared.lock_table();
    for (from, datagram) in batch.iter() {
        match table.handle(now, unix, from, datagram) {
            Action::Forward(to) => {
                if let Some(tap) = &shared.tap {
                    tap(TapEvent::Datagram, datagram);
                }
                out.push(to, datagram);
            }
            Action::Send(to, bytes) => out.push(to, &bytes),
            Action::Drop(_) => {}
        }
    }
}

fn housekeeping(shared: &Shared, out: &mut Outgoing, last_expire: &mut Instant) {
    let now = Instant::now();
    let mut table = shared.lock_table();
    for (to, bytes) in table.take_outbox() {
        out.push(to, &bytes);
    }
    if now.saturating_duration_since(*last_expire) >= EXPIRE_EVERY {
        table.expire(now, unix_now());
        *last_expire = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn runs_gather_equal_sizes_to_one_address() {
        let mut out = Outgoing::default();
        for _ in 0..3 {
            out.push(addr(1), &[0; 100]);
        }
        out.push(addr(1), &[0; 40]); // a shorter last datagram closes the run
        out.push(addr(1), &[0; 100]);
        out.push(addr(2), &[0; 100]);
        let shape: Vec<(u16, usize, usize)> = out
            .runs
            .iter()
            .map(|r| (r.dst.port(), r.segment, r.count))
            .collect();
        assert_eq!(shape, vec![(1, 100, 4), (1, 100, 1), (2, 100, 1)]);
        assert_eq!(out.arena.len(), 540);
    }
}
