//! The sender's DCSP data planes: one thread per stream that owns a UDP socket and a `DcspSender` (parity,
//! pacing, AEAD, ACKs), fed blocks by the source reader over a bounded queue.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self as std_mpsc, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use trackshift_dcsp::{
    BlockGeometry, DcspSender, DirectionKeys, ParityMode, RateController, Role, SenderConfig,
    SenderStats, DATA_OVERHEAD,
};
use trackshift_grid::PeerRole;
use trackshift_udp::{RecvBatch, UdpEndpoint};

use super::pace::{share_of_cap, RateCap, WireBudget};
use crate::pool::PooledBuf;
use crate::relay::timers::{BindTimer, SilenceWatch};
use crate::relay::{bind_datagram, RelayBind, RelayNotice};
use crate::threads;

/// Largest shard: datagrams of up to ~16 KiB where the path allows (loopback), fewer per-packet costs. Larger
/// ones gain nothing measurable: GSO and GRO already move three 16 KiB datagrams per syscall, and 60 KiB
/// shards on loopback left the data planes' CPU per byte as it was (bench/results/2026-12-02-0700-vm-cpu-profile),
/// while a block of 64 of them would hold 4 MiB on both ends.
const MAX_SHARD: u32 = 16 * 1024;
/// Smallest shard, whatever the path MTU says: below this per-datagram costs dominate.
const MIN_SHARD: u32 = 256;
/// Path MTU assumed when the kernel cannot tell (no route yet, not Linux): Ethernet's.
const DEFAULT_MTU: usize = 1500;
/// IP and UDP headers in front of every datagram.
const IPV4_UDP_HEADERS: usize = 28;
const IPV6_UDP_HEADERS: usize = 48;
/// Most block bytes a plane holds (sent, not yet acknowledged): its memory bound.
const MAX_BUFFERED: usize = 64 * 1024 * 1024;
/// Bytes of blocks read ahead for a data plane. Every chunk read counts as sent (its hash leaves at once), so
/// this is also what a crash makes the sender send again: bounded in bytes, not blocks, since a block is ~90 KiB
/// on a 1500-byte path but 1 MiB on loopback.
pub(crate) const PLANE_QUEUE_BYTES: u64 = 8 * 1024 * 1024;
/// Fewest and most blocks queued ahead of a plane, whatever their size: two keep it busy, sixteen are plenty.
const PLANE_QUEUE_BLOCKS: (u64, u64) = (2, 16);
/// Datagrams handed to the kernel in one batch.
const SEND_BATCH: usize = 64;
/// With no ACK at all this long after starting, UDP is taken to be blocked (directly) or the stream's relay
/// lost (through relays).
pub(crate) const UDP_PROBE: Duration = Duration::from_secs(5);
/// A receiver silent this long mid-transfer counts as gone (the control channel reconnects).
const UDP_SILENCE: Duration = Duration::from_secs(60);
/// How often a plane publishes its counters for the control task.
const STATS_EVERY: Duration = Duration::from_millis(100);
/// Longest a plane sleeps between looks at its socket and its queue.
const MAX_WAIT: Duration = Duration::from_millis(5);
/// How long a plane whose reader has not caught up waits before looking at its queue again.
const STARVED_WAIT: Duration = Duration::from_micros(200);
/// How far ahead of the shared `--max-rate` budget a plane may send, so that datagrams still leave in batches.
const CAP_BURST: Duration = Duration::from_micros(500);
/// A full socket buffer: how often, and how long apart, a batch is offered again before it counts as lost.
const SEND_RETRIES: u32 = 100;
const SEND_RETRY_PAUSE: Duration = Duration::from_micros(100);

/// How many blocks of `block_bytes` to queue ahead of a data plane: [`PLANE_QUEUE_BYTES`], 2 to 16 blocks.
pub(crate) fn plane_queue_len(block_bytes: u64) -> usize {
    (PLANE_QUEUE_BYTES / block_bytes.max(1)).clamp(PLANE_QUEUE_BLOCKS.0, PLANE_QUEUE_BLOCKS.1)
        as usize
}

/// The largest shard whose datagram fits the path MTU towards `peer`.
pub(crate) fn shard_size_for(peer: SocketAddr) -> u32 {
    let mtu = UdpEndpoint::path_mtu(peer).unwrap_or(DEFAULT_MTU);
    let room = mtu.saturating_sub(ip_udp_headers(peer) + DATA_OVERHEAD) as u32;
    (room.min(MAX_SHARD) & !1).max(MIN_SHARD)
}

/// The IP and UDP headers of every datagram to `peer`.
pub(crate) fn ip_udp_headers(peer: SocketAddr) -> usize {
    if peer.is_ipv4() {
        IPV4_UDP_HEADERS
    } else {
        IPV6_UDP_HEADERS
    }
}

/// `--max-rate` across a transfer's streams: the cap, the budget they all pay into, and what a datagram costs
/// on the wire beyond its own bytes.
#[derive(Debug, Clone)]
pub(crate) struct SharedCap {
    pub(crate) cap: RateCap,
    pub(crate) budget: Arc<WireBudget>,
    /// IP and UDP headers of each datagram.
    pub(crate) headers: usize,
    /// A whole data datagram (shard and DCSP overhead).
    pub(crate) datagram: usize,
}

impl SharedCap {
    /// What a wire cap leaves each stream's controller (datagram bytes per second): the whole of it, since the
    /// budget holds the streams' sum.
    pub(crate) fn controller_cap(&self, cap: Option<u64>) -> Option<u64> {
        cap.map(|c| share_of_cap(c, self.datagram, self.headers))
    }
}

/// The data-plane thread's handle: stop it, read its statistics, learn why it ended.
#[derive(Debug)]
pub(crate) struct DataPlane {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<SenderStats>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

/// What one stream's data plane sends, to whom, and how.
#[derive(Debug)]
pub(crate) struct PlaneSpec<'a> {
    /// The receiver's DCSP socket.
    pub(crate) peer: SocketAddr,
    pub(crate) conn_id: u64,
    /// The control connection's secret the stream's packet keys derive from.
    pub(crate) dcsp_secret: &'a [u8; 32],
    pub(crate) geometry: BlockGeometry,
    pub(crate) parity: ParityMode,
    pub(crate) controller: Box<dyn RateController>,
    pub(crate) cap: SharedCap,
    /// Through a relay (`peer` is then the relay's address): where the stream binds its connection id.
    pub(crate) relay: Option<RelayBind>,
}

impl DataPlane {
    /// Binds a UDP socket and starts stream `stream`'s thread sending the blocks it is given; `failed` hears why
    /// the plane gave up, if it does.
    pub(crate) fn start(
        spec: PlaneSpec<'_>,
        stream: u8,
        blocks: std_mpsc::Receiver<(u32, Arc<PooledBuf>)>,
        failed: mpsc::UnboundedSender<PlaneFailure>,
    ) -> Result<Self, String> {
        let peer = spec.peer;
        let bind = SocketAddr::new(
            if peer.is_ipv4() {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            },
            0,
        );
        let endpoint =
            UdpEndpoint::bind(bind, false).map_err(|e| format!("cannot open a UDP socket: {e}"))?;
        let sender = DcspSender::new(
            SenderConfig {
                conn_id: spec.conn_id,
                keys: DirectionKeys::derive(spec.dcsp_secret, spec.conn_id, Role::Sender),
                geometry: spec.geometry,
                parity: spec.parity,
                controller: spec.controller,
                max_buffered: MAX_BUFFERED,
            },
            Instant::now(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(sender.stats()));
        let cap = spec.cap;
        let relay = spec.relay.map(|bind| RelayLink {
            bind,
            conn_id: spec.conn_id,
            timer: BindTimer::new(Instant::now()),
            watch: SilenceWatch::default(),
            lost: None,
        });
        let handle = {
            let (stop, stats) = (stop.clone(), stats.clone());
            threads::spawn(&format!("dcsp-send-{stream}"), move || {
                let mut l = SendLoop::new(endpoint, peer, sender, blocks, cap);
                l.relay = relay;
                if let Err(f) = run_plane(l, &stop, &stats) {
                    let _ = failed.send(f);
                }
            })?
        };
        Ok(Self {
            stop,
            stats,
            handle: Some(handle),
        })
    }

    pub(crate) fn stats(&self) -> SenderStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stops the thread and waits for it.
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The data planes of all streams of one transfer.
#[derive(Debug)]
pub(crate) struct Planes(pub(crate) Vec<DataPlane>);

impl Planes {
    /// All streams' counters together (RTT, loss and parity from the first stream).
    pub(crate) fn stats(&self) -> SenderStats {
        let mut all = self.0.iter().map(DataPlane::stats);
        let mut t = all.next().unwrap_or_default();
        for s in all {
            t += s;
        }
        t
    }

    pub(crate) fn stop(&mut self) {
        for p in &mut self.0 {
            p.stop();
        }
    }
}

/// Why the data plane gave up.
#[derive(Debug)]
pub(crate) enum PlaneFailure {
    /// No ACK ever on a direct path: UDP is probably blocked on the way (through a relay: `RelayLost`).
    NoAnswer,
    /// The receiver went silent mid-transfer.
    Silent,
    /// The stream's relay refused it, drains, or stopped forwarding: its streams should move.
    RelayLost {
        relay_id: String,
        why: String,
    },
    Fatal(String),
}

/// A stream's relay: its binding, and whether it still forwards.
struct RelayLink {
    bind: RelayBind,
    conn_id: u64,
    timer: BindTimer,
    watch: SilenceWatch,
    /// Why the relay is lost, once it is (a refusal or a drain notice).
    lost: Option<String>,
}

/// Room for one batch of datagrams of a 1500-byte path (larger ones grow it once).
const BATCH_BYTES: usize = SEND_BATCH * 1500;

/// One stream's sending loop: its socket, its `DcspSender`, and where its blocks come from.
struct SendLoop {
    endpoint: UdpEndpoint,
    peer: SocketAddr,
    sender: DcspSender,
    blocks: std_mpsc::Receiver<(u32, Arc<PooledBuf>)>,
    reader_done: bool,
    started: Instant,
    batch: RecvBatch,
    /// The datagrams of one batch back to back, built and sealed in place, sent from here.
    out: Vec<u8>,
    cap: SharedCap,
    /// The cap the controller was last given (wire bytes per second).
    cap_seen: Option<u64>,
    /// Through a relay: its binding.
    relay: Option<RelayLink>,
}

fn run_plane(
    mut l: SendLoop,
    stop: &AtomicBool,
    stats: &Mutex<SenderStats>,
) -> Result<(), PlaneFailure> {
    let mut last_stats = l.started;
    while !stop.load(Ordering::Relaxed) {
        l.take_acks();
        l.follow_cap();
        let now = Instant::now();
        l.sender.handle_timeout(now);
        l.check_peer(now)?;
        l.keep_bound(now);
        let starved = l.take_blocks()?;
        let sent = l.transmit(now);
        if now.duration_since(last_stats) >= STATS_EVERY {
            last_stats = now;
            if let Ok(mut s) = stats.lock() {
                *s = l.sender.stats();
            }
        }
        if sent < SEND_BATCH {
            l.wait(starved);
        }
    }
    if let Ok(mut s) = stats.lock() {
        *s = l.sender.stats();
    }
    Ok(())
}

impl SendLoop {
    fn new(
        endpoint: UdpEndpoint,
        peer: SocketAddr,
        sender: DcspSender,
        blocks: std_mpsc::Receiver<(u32, Arc<PooledBuf>)>,
        cap: SharedCap,
    ) -> Self {
        let cap_seen = cap.cap.get();
        SendLoop {
            endpoint,
            peer,
            sender,
            blocks,
            reader_done: false,
            started: Instant::now(),
            batch: RecvBatch::new(),
            out: Vec::with_capacity(BATCH_BYTES),
            cap,
            cap_seen,
            relay: None,
        }
    }

    /// A cap changed while the transfer runs goes to the controller.
    fn follow_cap(&mut self) {
        let now = self.cap.cap.get();
        if now != self.cap_seen {
            self.cap_seen = now;
            self.sender.set_max_rate(self.cap.controller_cap(now));
        }
    }

    /// How long the shared budget holds this plane back, if it does.
    fn held_by_cap(&self, now: Instant) -> Option<Duration> {
        self.cap_seen?;
        let free_at = self.cap.budget.ready_at().checked_sub(CAP_BURST)?;
        (free_at > now).then(|| free_at - now)
    }

    /// Every ACK waiting on the socket.
    fn take_acks(&mut self) {
        loop {
            match self.endpoint.recv_batch(&mut self.batch) {
                Ok(_) => {
                    let now = Instant::now();
                    for (_, d) in self.batch.iter_mut() {
                        match RelayNotice::of(d) {
                            None => self.sender.handle_datagram(now, d),
                            Some(notice) => {
                                if let (Some(relay), Some(n)) = (self.relay.as_mut(), notice) {
                                    relay.heard(now, n);
                                }
                            }
                        }
                    }
                }
                // ICMP errors (port unreachable) surface here too; the silence checks decide.
                Err(_) => return,
            }
        }
    }

    /// No ACK ever (UDP blocked), or none for too long (the receiver is gone): the plane gives up. Through a
    /// relay, no ACK ever means the relay is lost (it died before the stream's first ACK, or does not forward):
    /// its streams move to the standby, since there is no direct TCP path to a receiver behind relays.
    fn check_peer(&mut self, now: Instant) -> Result<(), PlaneFailure> {
        let heard = self.sender.heard_from_peer();
        if !heard && now.duration_since(self.started) > UDP_PROBE {
            return Err(match &self.relay {
                Some(relay) => PlaneFailure::RelayLost {
                    relay_id: relay.bind.relay_id.clone(),
                    why: format!(
                        "no acknowledgement came through it within {} s of the stream's start",
                        UDP_PROBE.as_secs()
                    ),
                },
                None => PlaneFailure::NoAnswer,
            });
        }
        if heard && self.sender.silence(now) > UDP_SILENCE {
            return Err(PlaneFailure::Silent);
        }
        if let Some(relay) = self.relay.as_mut() {
            let in_flight = self.sender.blocks_in_flight() > 0;
            if heard && relay.watch.lost(now, in_flight, self.sender.silence(now)) {
                relay.lost.get_or_insert_with(|| {
                    "no acknowledgement came through it with blocks in flight".into()
                });
            }
            if let Some(why) = relay.lost.take() {
                return Err(PlaneFailure::RelayLost {
                    relay_id: relay.bind.relay_id.clone(),
                    why,
                });
            }
        }
        Ok(())
    }

    /// Through a relay: the stream's `Bind` when one is due (until `Bound`, then as a keep-alive).
    fn keep_bound(&mut self, now: Instant) {
        let Some(relay) = self.relay.as_mut() else {
            return;
        };
        if relay.timer.poll(now) {
            let datagram = bind_datagram(PeerRole::Sender, relay.conn_id, &relay.bind.token);
            // A lost Bind is sent again by the timer.
            let _ = self
                .endpoint
                .send_batch(relay.bind.addr, &datagram, datagram.len());
        }
    }

    /// New blocks, while the sender has room; true when it wanted more than the reader had ready.
    fn take_blocks(&mut self) -> Result<bool, PlaneFailure> {
        while self.sender.wants_block() {
            match self.blocks.try_recv() {
                Ok((b, bytes)) => self
                    .sender
                    .push_shared_block(b, bytes)
                    .map_err(|e| PlaneFailure::Fatal(e.to_string()))?,
                Err(TryRecvError::Empty) => return Ok(!self.reader_done),
                Err(TryRecvError::Disconnected) => {
                    self.reader_done = true;
                    return Ok(false);
                }
            }
        }
        Ok(false)
    }

    /// The datagrams that are due, in batches of equal-size segments (one GSO send each); how many went.
    fn transmit(&mut self, now: Instant) -> usize {
        let mut sent = 0;
        let mut segment = 0;
        self.out.clear();
        while sent < SEND_BATCH && self.held_by_cap(now).is_none() {
            let start = self.out.len();
            let Some(len) = self.sender.poll_transmit_into(now, &mut self.out) else {
                break;
            };
            self.charge_cap(now, len);
            if start > 0 && len != segment {
                // A datagram of another size (a PING) ends the batch before it and starts the next one.
                flush(&mut self.endpoint, self.peer, &self.out[..start], segment);
                self.out.drain(..start);
            }
            segment = len;
            sent += 1;
        }
        if !self.out.is_empty() {
            flush(&mut self.endpoint, self.peer, &self.out, segment);
        }
        sent
    }

    /// A datagram of `len` bytes pays into the shared `--max-rate` budget.
    fn charge_cap(&self, now: Instant, len: usize) {
        if let Some(cap) = self.cap_seen {
            self.cap.budget.charge(now, len + self.cap.headers, cap);
        }
    }

    /// Sleeps until the next datagram is due or an ACK arrives (briefly when the reader is behind).
    fn wait(&self, starved: bool) {
        let mut wait = self
            .sender
            .poll_timeout()
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(MAX_WAIT)
            .min(MAX_WAIT);
        if starved {
            wait = wait.min(STARVED_WAIT);
        }
        if let Some(held) = self.held_by_cap(Instant::now()) {
            wait = wait.max(held).min(MAX_WAIT);
        }
        if !wait.is_zero() {
            let _ = self.endpoint.wait_readable(Some(wait));
        }
    }
}

fn flush(endpoint: &mut UdpEndpoint, peer: SocketAddr, data: &[u8], segment: usize) {
    let mut off = 0;
    let mut tries = 0;
    while off < data.len() {
        match endpoint.send_batch(peer, &data[off..], segment) {
            Ok(n) => off += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock && tries < SEND_RETRIES => {
                tries += 1;
                std::thread::sleep(SEND_RETRY_PAUSE);
            }
            // Anything else (e.g. an ICMP error from an earlier datagram): these datagrams count as lost;
            // NACKs and probes take it from there.
            Err(_) => return,
        }
    }
}

impl RelayLink {
    /// What the relay said about this stream's connection (about another one: nothing to do).
    fn heard(&mut self, now: Instant, notice: RelayNotice) {
        match notice {
            RelayNotice::Bound(id) if id == self.conn_id => self.timer.bound(now),
            RelayNotice::Refused(id, code) if id == self.conn_id => {
                self.lost = Some(format!("it refused the stream ({code:?})"));
            }
            RelayNotice::Drain(id) if id == self.conn_id => {
                self.lost = Some("it drains (shutting down)".into());
            }
            _ => {}
        }
    }
}
