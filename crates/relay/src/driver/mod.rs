//! The relay's driver: the sockets and threads that carry out what [`RelayTable`] and [`Pairing`] decide.
//!
//! ```text
//!  UDP port ══ recvmmsg/GRO ══► trackshift-relay-udp thread ── RelayTable::handle ──► GSO sends
//!  TCP port ── accept task ──► one task per connection: hello (5 s, ≤ 4 KiB) → Pairing::offer → wait / pair /
//!                              forward to the next hop / refuse; paired streams copied with 64 KiB buffers
//! ```
//!
//! [`Relay::start`] is the library entry point tests call in-process; `trackshift relay` wraps it with the
//! orchestrator link and the SIGTERM drain.

mod tcp;
mod udp;

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use trackshift_grid::TokenVerifier;
use trackshift_udp::UdpEndpoint;

use crate::counters::Counters;
use crate::limits::Limits;
use crate::pairing::Pairing;
use crate::table::RelayTable;

pub use tcp::HELLO_TIMEOUT;

/// After a drain starts, a binding with no datagram for this long counts as moved away.
pub const DRAIN_IDLE: Duration = Duration::from_secs(2);
/// How often a drain looks whether its sessions have left.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// Which kind of forwarded bytes a tap sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TapEvent {
    /// One forwarded datagram, whole.
    Datagram,
    /// A piece of a paired stream.
    Stream,
}

/// A hook that sees every byte the relay forwards (for tests that check what a relay carries).
pub type Tap = Arc<dyn Fn(TapEvent, &[u8]) + Send + Sync>;

/// What the relay needs to run.
#[derive(Clone)]
pub struct RelayConfig {
    /// The address for both UDP and TCP (port 0: any free port, the same for both).
    pub listen: SocketAddr,
    /// This relay's id: admission tokens must name it.
    pub relay_id: String,
    /// The orchestrator's admission key.
    pub verifier: TokenVerifier,
    /// The next relay of a two-hop path (`--forward`).
    pub forward: Option<SocketAddr>,
    /// Bounds and rate caps.
    pub limits: Limits,
    /// Sees every forwarded byte, if set.
    pub tap: Option<Tap>,
}

impl fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayConfig")
            .field("listen", &self.listen)
            .field("relay_id", &self.relay_id)
            .field("forward", &self.forward)
            .field("limits", &self.limits)
            .field("tap", &self.tap.is_some())
            .finish_non_exhaustive()
    }
}

/// A snapshot of what the relay carries and has counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Datagram and stream counters, drops by reason.
    pub counters: Counters,
    /// Distinct sessions with a binding, a waiting or a paired stream.
    pub sessions: usize,
    /// Bound connection ids.
    pub bindings: usize,
    /// Streams being copied.
    pub streams: usize,
    /// Streams waiting for their other end.
    pub waiting: usize,
    /// Datagrams the socket would not take (full send buffer): dropped, not queued.
    pub send_drops: u64,
    /// Whether the relay is draining.
    pub draining: bool,
}

pub(crate) struct Shared {
    table: Mutex<RelayTable>,
    pairing: Mutex<Pairing<tcp::Handoff>>,
    forward: Option<SocketAddr>,
    limits: Limits,
    tap: Option<Tap>,
    stop: AtomicBool,
    send_drops: AtomicU64,
}

impl Shared {
    fn lock_table(&self) -> MutexGuard<'_, RelayTable> {
        // A panic while holding the lock leaves counters, not broken invariants: keep going.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_pairing(&self) -> MutexGuard<'_, Pairing<tcp::Handoff>> {
        self.pairing.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A cheap handle on a running relay, for other threads.
#[derive(Clone)]
pub struct RelayHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayHandle").finish_non_exhaustive()
    }
}

/// A running relay. Dropping it stops the UDP thread and the accept task.
pub struct Relay {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    udp: Option<JoinHandle<()>>,
    accept: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Binds TCP and UDP on `config.listen` and starts forwarding. Call inside a tokio runtime.
    pub async fn start(config: RelayConfig) -> io::Result<Relay> {
        let (listener, endpoint) = bind_both(config.listen).await?;
        let local_addr = listener.local_addr()?;
        let now = Instant::now();
        let forwards = config.forward.is_some();
        let shared = Arc::new(Shared {
            table: Mutex::new(RelayTable::new(
                config.relay_id.clone(),
                config.verifier.clone(),
                config.forward,
                config.limits.clone(),
                now,
            )),
            pairing: Mutex::new(Pairing::new(
                config.relay_id,
                config.verifier,
                forwards,
                config.limits.clone(),
                now,
            )),
            forward: config.forward,
            limits: config.limits,
            tap: config.tap,
            stop: AtomicBool::new(false),
            send_drops: AtomicU64::new(0),
        });
        let udp_shared = shared.clone();
        let udp = std::thread::Builder::new()
            .name("trackshift-relay-udp".into())
            .spawn(move || udp::run(endpoint, udp_shared))?;
        let accept = tokio::spawn(tcp::accept_loop(listener, shared.clone()));
        Ok(Relay {
            local_addr,
            shared,
            udp: Some(udp),
            accept,
        })
    }

    /// The address it listens on (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle for another thread (the orchestrator link): stats and the key.
    pub fn handle(&self) -> RelayHandle {
        RelayHandle {
            shared: self.shared.clone(),
        }
    }

    /// Swaps the admission key (a re-registration may bring a new one).
    pub fn set_verifier(&self, verifier: TokenVerifier) {
        self.handle().set_verifier(verifier);
    }

    /// Counters and load now.
    pub fn stats(&self) -> RelayStats {
        self.handle().stats()
    }
}

impl RelayHandle {
    /// Swaps the admission key (a re-registration may bring a new one).
    pub fn set_verifier(&self, verifier: TokenVerifier) {
        self.shared.lock_table().set_verifier(verifier.clone());
        self.shared.lock_pairing().set_verifier(verifier);
    }

    /// Counters and load now.
    pub fn stats(&self) -> RelayStats {
        let table = self.shared.lock_table();
        let pairing = self.shared.lock_pairing();
        let mut counters = table.counters().clone();
        counters.add(pairing.counters());
        let sessions: HashSet<&str> = table.session_ids().chain(pairing.session_ids()).collect();
        RelayStats {
            counters,
            sessions: sessions.len(),
            bindings: table.bindings(),
            streams: pairing.streams(),
            waiting: pairing.waiting(),
            send_drops: self.shared.send_drops.load(Ordering::Relaxed),
            draining: table.draining(),
        }
    }
}

impl Relay {
    /// Drains: refuses new binds and hellos with `Draining`, sends a Drain notice to every bound end, answers
    /// waiting streams `Draining`, then waits until no binding is active and no stream is copied, or `wait`.
    /// Returns whether everything left in time.
    pub async fn drain(&self, wait: Duration) -> bool {
        self.shared.lock_table().start_drain();
        drop(self.shared.lock_pairing().start_drain());
        let deadline = Instant::now() + wait;
        loop {
            let left = {
                let mut table = self.shared.lock_table();
                table.expire_idle(Instant::now(), unix_now(), DRAIN_IDLE);
                table.bindings() == 0 && self.shared.lock_pairing().streams() == 0
            };
            if left {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }

    /// Stops forwarding and waits for the UDP thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.accept.abort();
        if let Some(udp) = self.udp.take() {
            let _ = udp.join();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP listener and a UDP socket on one port number. With port 0 the UDP port is the one the kernel gave
/// TCP; if that UDP port is taken, a few more tries.
async fn bind_both(listen: SocketAddr) -> io::Result<(TcpListener, UdpEndpoint)> {
    let tries = if listen.port() == 0 { 8 } else { 1 };
    let mut last = None;
    for _ in 0..tries {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        match UdpEndpoint::bind(addr, false) {
            Ok(endpoint) => return Ok((listener, endpoint)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)))
}

/// Seconds since the Unix epoch, for token expiry.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
