//! The relay's side of the orchestrator: registration (which brings the admission key), heartbeats with load
//! and counters, re-registration after a 404 or an outage, and the draining heartbeat.
//!
//! The HTTP calls are behind [`Orchestrator`], so this crate speaks no HTTP itself: `trackshift relay`
//! implements it with `trackshift-grid-client`, tests with an in-memory fake. The link runs on its own thread
//! (the client is blocking); forwarding never waits for it, and goes on with the key it has while the
//! orchestrator is away.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use trackshift_grid::api::{RelayHeartbeat, RelayRegistered, RelayRegistration};
use trackshift_grid::TokenVerifier;

use crate::driver::{RelayHandle, RelayStats};

/// Why an orchestrator call failed, as far as the link cares.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The orchestrator does not know this relay (it restarted, or evicted us): register again.
    #[error("the orchestrator does not know this relay")]
    NotFound,
    /// Anything else: unreachable, timed out, refused. The message says what.
    #[error("{0}")]
    Other(String),
}

/// The two calls a relay makes.
pub trait Orchestrator: Send + 'static {
    /// `POST /api/v1/relays/register`.
    fn register(&self, body: &RelayRegistration) -> Result<RelayRegistered, LinkError>;
    /// `POST /api/v1/relays/{relay_id}/heartbeat`.
    fn heartbeat(&self, relay_id: &str, body: &RelayHeartbeat) -> Result<(), LinkError>;
}

/// The first wait between failed registrations; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// The longest wait between registration attempts.
const MAX_RETRY: Duration = Duration::from_secs(10);
/// The heartbeat interval when the orchestrator names none (0), or while it is unreachable.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// The key an orchestrator's registration answer hands out.
pub fn verifier_of(registered: &RelayRegistered) -> Result<TokenVerifier, LinkError> {
    TokenVerifier::from_hex(&registered.admission_key)
        .map_err(|e| LinkError::Other(format!("the orchestrator's admission key: {e}")))
}

/// Registers, retrying with backoff until it works or `give_up` passes. Returns the answer and its key.
pub fn register(
    orchestrator: &dyn Orchestrator,
    body: &RelayRegistration,
    give_up: Duration,
) -> Result<(RelayRegistered, TokenVerifier), LinkError> {
    let deadline = Instant::now() + give_up;
    let mut wait = FIRST_RETRY;
    loop {
        let result = orchestrator
            .register(body)
            .and_then(|r| verifier_of(&r).map(|v| (r, v)));
        match result {
            Ok(done) => return Ok(done),
            Err(e) if Instant::now() + wait >= deadline => return Err(e),
            Err(e) => tracing::warn!("relay registration failed, retrying in {wait:?}: {e}"),
        }
        std::thread::sleep(wait);
        wait = (wait * 2).min(MAX_RETRY);
    }
}

#[derive(Debug, Default)]
struct Signals {
    draining: bool,
    stop: bool,
}

/// The heartbeat thread. Dropping it stops the thread.
#[derive(Debug)]
pub struct Link {
    signals: Arc<(Mutex<Signals>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Link {
    /// Starts heartbeats for a relay registered with `registered`.
    pub fn spawn(
        orchestrator: Box<dyn Orchestrator>,
        body: RelayRegistration,
        registered: &RelayRegistered,
        relay: RelayHandle,
    ) -> std::io::Result<Link> {
        let signals = Arc::new((Mutex::new(Signals::default()), Condvar::new()));
        let mut beat = Heartbeats {
            orchestrator,
            body,
            interval: interval_of(registered),
            relay,
            signals: signals.clone(),
            last: None,
            reachable: true,
        };
        let thread = std::thread::Builder::new()
            .name("trackshift-relay-link".into())
            .spawn(move || beat.run())?;
        Ok(Link {
            signals,
            thread: Some(thread),
        })
    }

    /// Sends a heartbeat with `draining: true` now (and every later one says so).
    pub fn draining(&self) {
        self.signal(|s| s.draining = true);
    }

    fn signal(&self, f: impl FnOnce(&mut Signals)) {
        let (lock, wake) = &*self.signals;
        f(&mut lock.lock().unwrap_or_else(|p| p.into_inner()));
        wake.notify_all();
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.signal(|s| s.stop = true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn interval_of(registered: &RelayRegistered) -> Duration {
    match registered.heartbeat_interval_secs {
        0 => DEFAULT_INTERVAL,
        secs => Duration::from_secs(secs),
    }
}

struct Heartbeats {
    orchestrator: Box<dyn Orchestrator>,
    body: RelayRegistration,
    interval: Duration,
    relay: RelayHandle,
    signals: Arc<(Mutex<Signals>, Condvar)>,
    /// The previous beat's time and bytes, for the load.
    last: Option<(Instant, u64)>,
    /// Whether the last call got through; a failure followed by success means an outage ended.
    reachable: bool,
}

impl Heartbeats {
    fn run(&mut self) {
        let mut announced_drain = false;
        loop {
            let Some(draining) = self.sleep(announced_drain) else {
                return;
            };
            announced_drain |= draining;
            self.beat(draining);
        }
    }

    /// Waits one interval, or less when a drain is signalled; None when told to stop.
    fn sleep(&self, announced_drain: bool) -> Option<bool> {
        let (lock, wake) = &*self.signals;
        let deadline = Instant::now() + self.interval;
        let mut signals = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            // A drain not yet announced goes out even when a stop follows right behind it.
            if signals.draining && !announced_drain {
                return Some(true);
            }
            if signals.stop {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Some(signals.draining);
            }
            signals = wake
                .wait_timeout(signals, left)
                .map(|(s, _)| s)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    fn beat(&mut self, draining: bool) {
        let stats = self.relay.stats();
        let body = self.heartbeat_body(&stats, draining);
        let result = self.orchestrator.heartbeat(&self.body.relay_id, &body);
        let outage_ended = result.is_ok() && !self.reachable;
        self.reachable = result.is_ok();
        match result {
            Ok(()) if !outage_ended => return,
            Ok(()) => tracing::info!("the orchestrator is back: registering again"),
            Err(LinkError::NotFound) => {
                tracing::info!("the orchestrator forgot this relay: registering again")
            }
            Err(LinkError::Other(e)) => {
                tracing::warn!(
                    "relay heartbeat failed (forwarding goes on with the key it has): {e}"
                );
                return;
            }
        }
        self.reregister(draining, &body);
    }

    fn reregister(&mut self, draining: bool, body: &RelayHeartbeat) {
        match self
            .orchestrator
            .register(&self.body)
            .and_then(|r| verifier_of(&r).map(|v| (r, v)))
        {
            Ok((registered, verifier)) => {
                self.relay.set_verifier(verifier);
                self.interval = interval_of(&registered);
                self.reachable = true;
                if draining {
                    let _ = self.orchestrator.heartbeat(&self.body.relay_id, body);
                }
            }
            Err(e) => {
                self.reachable = false;
                tracing::warn!("relay re-registration failed: {e}");
            }
        }
    }

    fn heartbeat_body(&mut self, stats: &RelayStats, draining: bool) -> RelayHeartbeat {
        let c = &stats.counters;
        let bytes = c.datagram_bytes_forwarded + c.stream_bytes_forwarded;
        let now = Instant::now();
        let load = match (self.last, self.body.max_rate) {
            (Some((then, before)), Some(cap)) if cap > 0 => {
                let secs = now.saturating_duration_since(then).as_secs_f64().max(1e-3);
                ((bytes.saturating_sub(before)) as f64 / secs / cap as f64).clamp(0.0, 1.0)
            }
            _ => 0.0,
        };
        self.last = Some((now, bytes));
        let mut drops = c.drop_map();
        if stats.send_drops > 0 {
            drops.insert("send_buffer_full".into(), stats.send_drops);
        }
        RelayHeartbeat {
            sessions: u32::try_from(stats.sessions).unwrap_or(u32::MAX),
            load,
            bytes_forwarded: bytes,
            datagrams_forwarded: c.datagrams_forwarded,
            drops,
            draining: draining || stats.draining,
        }
    }
}
