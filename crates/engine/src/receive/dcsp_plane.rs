//! The receiver's DCSP sockets: one or more UDP sockets on the listening port (`receive --streams N`), each with a
//! plane thread that feeds the `DcspReceiver`s of the connections steered to it (the kernel picks the socket from
//! the connection id, so a connection always meets the same thread), hands complete blocks to the session's
//! writer and sends the ACKs. No state is shared between plane threads.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::mpsc::{self as std_mpsc, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use trackshift_dcsp::packet::{peek_conn_id, steering_key, CONN_ID_STEERING_OFFSET};
use trackshift_dcsp::{DcspReceiver, ReceiverEvent, ReceiverStats};
use trackshift_udp::{steered_index, RecvBatch, UdpEndpoint};

use super::dcsp_writer::DcspWriterMsg;
use crate::pool::SpareBufs;
use crate::relay::timers::BindTimer;
use crate::relay::{bind_datagram, RelayBind, RelayNotice, UsedRelays};
use crate::threads;
use trackshift_grid::PeerRole;

/// Longest the plane thread sleeps before looking at its commands again.
const IDLE_WAIT: Duration = Duration::from_millis(5);
/// A new session's sender starts its datagrams right behind `UdpStart` (PROTOCOL.md §6.1), so the first ones can
/// arrive before the control task has registered the connection: the plane keeps datagrams for unknown
/// connections this long and up to this many bytes, and hands them over when the connection registers.
const EARLY_HOLD: Duration = Duration::from_secs(5);
const EARLY_BYTES: usize = 16 * 1024 * 1024;

/// What the control side asks of the plane thread.
enum PlaneCmd {
    Register {
        conn_id: u64,
        receiver: Box<DcspReceiver>,
        writer: std_mpsc::SyncSender<DcspWriterMsg>,
        stats: Arc<Mutex<ReceiverStats>>,
        spare: SpareBufs,
        /// Through relays: where to bind the connection id (every relay of the session's path, so the
        /// sender's streams find this receiver at whichever relay they use).
        binds: Vec<RelayBind>,
        /// Through relays: where the relays its datagrams come through are noted.
        used: Option<Arc<UsedRelays>>,
    },
    /// Forget a connection; its final counters are in its stats when `done` hears back.
    Unregister(u64, std_mpsc::Sender<()>),
    ResetChunk(u64, u32),
}

/// The receiver's UDP sockets and their threads. Cloning shares them.
#[derive(Clone, Debug)]
pub(crate) struct UdpPlane {
    /// One command channel per plane thread, in the order of the steering group's sockets.
    txs: Vec<std_mpsc::Sender<PlaneCmdBox>>,
    port: u16,
}

/// `PlaneCmd` holds a `DcspReceiver`, which is large; boxing keeps the channel's slots small.
struct PlaneCmdBox(PlaneCmd);

impl std::fmt::Debug for PlaneCmdBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PlaneCmd")
    }
}

impl UdpPlane {
    /// Binds UDP on `addr` (the control channel's address and port) with `planes` sockets, the kernel steering
    /// each datagram by its connection id, and starts a plane thread per socket.
    /// A kernel that refuses the steering program gets one socket and a log line, not a receiver without UDP.
    pub(crate) fn start(addr: SocketAddr, planes: usize) -> std::io::Result<Self> {
        let endpoints =
            match UdpEndpoint::bind_steered(addr, planes.max(1), CONN_ID_STEERING_OFFSET) {
                Err(e) if planes > 1 => {
                    tracing::warn!("cannot spread UDP over {planes} sockets ({e}); using one");
                    UdpEndpoint::bind_steered(addr, 1, CONN_ID_STEERING_OFFSET)?
                }
                r => r?,
            };
        let port = endpoints[0].local_addr()?.port();
        let mut txs = Vec::with_capacity(endpoints.len());
        for (i, endpoint) in endpoints.into_iter().enumerate() {
            let (tx, rx) = std_mpsc::channel();
            threads::spawn(&format!("dcsp-recv-{i}"), move || {
                plane_thread(endpoint, rx)
            })
            .map_err(std::io::Error::other)?;
            txs.push(tx);
        }
        Ok(Self { txs, port })
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// How many sockets (and plane threads) serve the port.
    pub(crate) fn planes(&self) -> usize {
        self.txs.len()
    }

    /// Sends a command to the plane thread whose socket the kernel steers `conn_id`'s datagrams to.
    fn send(&self, conn_id: u64, cmd: PlaneCmd) {
        let i = steered_index(steering_key(conn_id), self.txs.len());
        let _ = self.txs[i].send(PlaneCmdBox(cmd));
    }

    pub(crate) fn register(
        &self,
        conn_id: u64,
        receiver: DcspReceiver,
        writer: std_mpsc::SyncSender<DcspWriterMsg>,
        stats: Arc<Mutex<ReceiverStats>>,
        spare: SpareBufs,
        relays: ConnRelays,
    ) {
        self.send(
            conn_id,
            PlaneCmd::Register {
                conn_id,
                receiver: Box::new(receiver),
                writer,
                stats,
                spare,
                binds: relays.binds,
                used: relays.used,
            },
        );
    }

    /// Forgets a connection and waits (briefly) until the plane thread has, so its counters are final.
    pub(crate) fn unregister(&self, conn_id: u64) {
        let (done, wait) = std_mpsc::channel();
        self.send(conn_id, PlaneCmd::Unregister(conn_id, done));
        let _ = wait.recv_timeout(Duration::from_secs(1));
    }

    pub(crate) fn reset_chunk(&self, conn_id: u64, chunk: u32) {
        self.send(conn_id, PlaneCmd::ResetChunk(conn_id, chunk));
    }
}

/// Datagrams for connections not registered yet (see `EARLY_HOLD`), oldest first. Nothing in them is trusted:
/// they are opened (authenticated) only when their connection registers, like any other datagram.
#[derive(Default)]
struct EarlyDatagrams {
    held: std::collections::VecDeque<(Instant, u64, SocketAddr, Vec<u8>)>,
    bytes: usize,
    /// Datagrams dropped because no connection claimed them in time (or the hold was full).
    unclaimed: u64,
}

impl EarlyDatagrams {
    fn hold(&mut self, now: Instant, conn_id: u64, from: SocketAddr, datagram: &[u8]) {
        self.expire(now);
        while self.bytes + datagram.len() > EARLY_BYTES {
            let Some((_, _, _, d)) = self.held.pop_front() else {
                self.unclaimed += 1;
                return;
            };
            self.bytes -= d.len();
            self.unclaimed += 1;
        }
        self.bytes += datagram.len();
        self.held.push_back((now, conn_id, from, datagram.to_vec()));
    }

    fn expire(&mut self, now: Instant) {
        while let Some((t, _, _, d)) = self.held.front() {
            if now.duration_since(*t) < EARLY_HOLD {
                break;
            }
            self.bytes -= d.len();
            self.held.pop_front();
            self.unclaimed += 1;
        }
    }

    /// Takes out, in arrival order, the datagrams held for `conn_id`.
    fn claim(&mut self, conn_id: u64) -> Vec<(SocketAddr, Vec<u8>)> {
        if self.held.is_empty() {
            return Vec::new();
        }
        let mut claimed = Vec::new();
        self.held.retain_mut(|(_, id, from, d)| {
            if *id != conn_id {
                return true;
            }
            claimed.push((*from, std::mem::take(d)));
            false
        });
        self.bytes -= claimed.iter().map(|(_, d)| d.len()).sum::<usize>();
        claimed
    }
}

/// Through relays: where a connection binds, and where to note the relays its datagrams came through.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnRelays {
    pub(crate) binds: Vec<RelayBind>,
    pub(crate) used: Option<Arc<UsedRelays>>,
}

struct Session {
    receiver: Box<DcspReceiver>,
    used: Option<Arc<UsedRelays>>,
    spare: SpareBufs,
    writer: std_mpsc::SyncSender<DcspWriterMsg>,
    stats: Arc<Mutex<ReceiverStats>>,
    writer_gone: bool,
}

/// Room for one ACK datagram: a full ACK of 64-shard blocks is 1,220 bytes (see trackshift-dcsp's `ack`).
const ACK_BUFFER: usize = 2048;
/// How often a plane thread publishes its connections' counters and expires held datagrams.
const STATS_EVERY: Duration = Duration::from_millis(200);

/// One plane thread's socket and the connections steered to it.
struct Plane {
    endpoint: UdpEndpoint,
    sessions: HashMap<u64, Session>,
    batch: RecvBatch,
    out: Vec<u8>,
    early: EarlyDatagrams,
    last_stats: Instant,
    /// Through relays: each connection id's binding at each relay of its session.
    binds: Vec<Binding>,
}

/// One connection id bound at one relay.
struct Binding {
    conn_id: u64,
    relay: RelayBind,
    timer: BindTimer,
}

fn plane_thread(endpoint: UdpEndpoint, cmds: std_mpsc::Receiver<PlaneCmdBox>) {
    let mut plane = Plane {
        endpoint,
        sessions: HashMap::new(),
        batch: RecvBatch::new(),
        out: Vec::with_capacity(ACK_BUFFER),
        early: EarlyDatagrams::default(),
        last_stats: Instant::now(),
        binds: Vec::new(),
    };
    while plane.take_commands(&cmds) {
        plane.receive();
        plane.keep_bound();
        let next = plane.transmit();
        plane.publish_stats();
        let wait = next
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(IDLE_WAIT)
            .min(IDLE_WAIT);
        if !wait.is_zero() {
            let _ = plane.endpoint.wait_readable(Some(wait));
        }
    }
}

impl Plane {
    /// Carries out what the control side asked; false once it has gone (the receiver is stopping).
    fn take_commands(&mut self, cmds: &std_mpsc::Receiver<PlaneCmdBox>) -> bool {
        loop {
            match cmds.try_recv() {
                Ok(PlaneCmdBox(PlaneCmd::Register {
                    conn_id,
                    receiver,
                    writer,
                    stats,
                    spare,
                    binds,
                    used,
                })) => {
                    let now = Instant::now();
                    self.binds.extend(binds.into_iter().map(|relay| Binding {
                        conn_id,
                        relay,
                        timer: BindTimer::new(now),
                    }));
                    let mut s = Session {
                        receiver,
                        used,
                        spare,
                        writer,
                        stats,
                        writer_gone: false,
                    };
                    for (from, mut datagram) in self.early.claim(conn_id) {
                        s.receiver.handle_datagram(now, from, &mut datagram);
                        drain_events(&mut s, &self.binds, conn_id);
                    }
                    self.sessions.insert(conn_id, s);
                }
                Ok(PlaneCmdBox(PlaneCmd::Unregister(id, done))) => {
                    self.binds.retain(|b| b.conn_id != id);
                    if let Some(s) = self.sessions.remove(&id) {
                        *lock(&s.stats) = s.receiver.stats().clone();
                    }
                    let _ = done.send(());
                }
                Ok(PlaneCmdBox(PlaneCmd::ResetChunk(id, chunk))) => {
                    if let Some(s) = self.sessions.get_mut(&id) {
                        s.receiver.reset_chunk(chunk);
                    }
                }
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    /// Everything waiting on the socket, each datagram to its connection (or held, if it is not known yet).
    fn receive(&mut self) {
        loop {
            match self.endpoint.recv_batch(&mut self.batch) {
                Ok(_) => {
                    let now = Instant::now();
                    for (from, datagram) in self.batch.iter_mut() {
                        if let Some(notice) = RelayNotice::of(datagram) {
                            relay_notice(&mut self.binds, now, from, notice);
                            continue;
                        }
                        let Some(id) = peek_conn_id(datagram) else {
                            self.early.unclaimed += 1;
                            continue;
                        };
                        let Some(s) = self.sessions.get_mut(&id) else {
                            self.early.hold(now, id, from, datagram);
                            continue;
                        };
                        // Opened in place, in the receive buffer.
                        s.receiver.handle_datagram(now, from, datagram);
                        drain_events(s, &self.binds, id);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!("UDP receive error: {e}");
                    return;
                }
            }
        }
    }

    /// Through relays: the `Bind`s that are due (until `Bound`, then as keep-alives).
    fn keep_bound(&mut self) {
        let now = Instant::now();
        for b in &mut self.binds {
            if b.timer.poll(now) {
                let datagram = bind_datagram(PeerRole::Receiver, b.conn_id, &b.relay.token);
                // A lost Bind is sent again by its timer.
                let _ = self
                    .endpoint
                    .send_batch(b.relay.addr, &datagram, datagram.len());
            }
        }
    }

    /// Sends the ACKs that are due; when the next one will be.
    fn transmit(&mut self) -> Option<Instant> {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for s in self.sessions.values_mut() {
            while let Some(t) = s.receiver.poll_transmit(now, &mut self.out) {
                if let Err(e) = self
                    .endpoint
                    .send_batch(t.destination, &self.out, self.out.len())
                {
                    tracing::debug!("UDP send to {} failed: {e}", t.destination);
                }
            }
            if let Some(t) = s.receiver.poll_timeout() {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        next
    }

    /// Every [`STATS_EVERY`]: the connections' counters for their control tasks, and old held datagrams dropped.
    fn publish_stats(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.last_stats) < STATS_EVERY {
            return;
        }
        self.last_stats = now;
        for s in self.sessions.values() {
            *lock(&s.stats) = s.receiver.stats().clone();
        }
        self.early.expire(now);
        if self.early.unclaimed > 0 {
            tracing::debug!(
                "{} datagrams for unknown DCSP connections dropped",
                self.early.unclaimed
            );
        }
    }
}

/// What a relay said about a binding. A refusal or a drain ends the binding at that relay (the sender's streams
/// move to another relay of the path, where this receiver is bound too); nothing here touches a connection.
fn relay_notice(
    binds: &mut Vec<Binding>,
    now: Instant,
    from: SocketAddr,
    notice: Option<RelayNotice>,
) {
    let at = |id: u64, b: &Binding| b.conn_id == id && b.relay.addr == from;
    match notice {
        Some(RelayNotice::Bound(id)) => {
            for b in binds.iter_mut().filter(|b| at(id, b)) {
                b.timer.bound(now);
            }
        }
        Some(RelayNotice::Refused(id, code)) => {
            tracing::warn!("relay at {from} refused DCSP connection {id:016x} ({code:?})");
            binds.retain(|b| !at(id, b));
        }
        Some(RelayNotice::Drain(id)) => {
            tracing::info!("relay at {from} drains: DCSP connection {id:016x} moves on");
            binds.retain(|b| !at(id, b));
        }
        None => {}
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The connection `conn_id`'s events: blocks to its writer; a new sender address noted as a relay used when it
/// is one of the connection's relays.
fn drain_events(s: &mut Session, binds: &[Binding], conn_id: u64) {
    while let Some(ev) = s.receiver.poll_event() {
        match ev {
            ReceiverEvent::Block {
                chunk,
                offset,
                data,
                ..
            } => {
                if !s.writer_gone
                    && s.writer
                        .send(DcspWriterMsg::Block {
                            chunk,
                            offset,
                            data,
                        })
                        .is_err()
                {
                    s.writer_gone = true;
                }
                while s.receiver.wants_spare() {
                    match s.spare.take() {
                        Some(buf) => s.receiver.recycle(buf),
                        None => break,
                    }
                }
            }
            ReceiverEvent::PathChanged { from, to } => {
                note_relay(s.used.as_deref(), binds, conn_id, to);
                match from {
                    Some(from) => tracing::info!("DCSP sender moved from {from} to {to}"),
                    None => tracing::debug!("DCSP sender at {to}"),
                }
            }
        }
    }
}

/// The relay at `addr`, if it is one `conn_id` binds at, goes into `used`.
fn note_relay(used: Option<&UsedRelays>, binds: &[Binding], conn_id: u64, addr: SocketAddr) {
    let Some(used) = used else {
        return;
    };
    if let Some(b) = binds
        .iter()
        .find(|b| b.conn_id == conn_id && b.relay.addr == addr)
    {
        used.note(&b.relay.relay_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "198.18.0.1:4000".parse().unwrap()
    }

    #[test]
    fn early_datagrams_go_to_their_connection_in_arrival_order() {
        let mut early = EarlyDatagrams::default();
        let t = Instant::now();
        early.hold(t, 7, addr(), &[1]);
        early.hold(t, 8, addr(), &[2]);
        early.hold(t, 7, addr(), &[3]);
        let got: Vec<Vec<u8>> = early.claim(7).into_iter().map(|(_, d)| d).collect();
        assert_eq!(got, vec![vec![1], vec![3]]);
        assert_eq!(early.bytes, 1);
        assert!(early.claim(7).is_empty());
        assert_eq!(early.unclaimed, 0);
    }

    #[test]
    fn early_datagrams_expire_and_stay_within_their_byte_bound() {
        let mut early = EarlyDatagrams::default();
        let t = Instant::now();
        early.hold(t, 1, addr(), &[0; 10]);
        early.hold(t + EARLY_HOLD, 2, addr(), &[0; 10]);
        assert_eq!(early.unclaimed, 1, "the first one expired");
        assert!(early.claim(1).is_empty());
        let big = vec![0u8; EARLY_BYTES / 2];
        for _ in 0..5 {
            early.hold(t + EARLY_HOLD, 3, addr(), &big);
        }
        assert!(early.bytes <= EARLY_BYTES);
        assert_eq!(
            early.claim(3).len(),
            2,
            "the oldest made room for the newest"
        );
        assert_eq!(early.unclaimed, 1 + 1 + 3);
        // A datagram larger than the whole hold is not kept.
        early.hold(t + EARLY_HOLD, 4, addr(), &vec![0u8; EARLY_BYTES + 1]);
        assert!(early.claim(4).is_empty());
    }
}
