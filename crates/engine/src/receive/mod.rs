//! `receive`: the receiver. An accept loop on the control port, one task per connection running the receiver's
//! side of the conversation (`trackshift_proto::session::RecvSession`, in [`connection`]), one writer thread per
//! transfer (TCP: [`tcp_writer`]; DCSP: [`dcsp_writer`], fed by the UDP sockets' plane threads in
//! [`dcsp_plane`]), and [`verify`] for what both writers share.

mod connection;
mod dcsp_plane;
mod dcsp_writer;
mod relayed;
mod tcp_writer;
mod verify;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use trackshift_proto::{ErrorCode, SessionId};
use trackshift_storage::{check_output_dir, unix_now, SessionState, SessionStore, StateDir};
use trackshift_transport::{
    authenticate_server, dcsp_secret_of, exporter_of, server_config, tune_accepted, Identity,
    TlsAcceptor, TransportError,
};

use crate::error::{EngineError, ErrorKind, ErrorReply};
use crate::event::{Event, EventSink};
use crate::secret::load_or_create_secret;
use dcsp_plane::UdpPlane;
pub use relayed::{PathSender, RelayFeed};

/// A TLS handshake plus authentication must finish within this, or the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a new connection for a session waits for the old one to step aside.
const TAKEOVER_WAIT: Duration = Duration::from_secs(15);
/// How often a connection waiting to take a session over asks the old one again.
const TAKEOVER_POLL: Duration = Duration::from_millis(100);
/// After a failed `accept()` (out of file descriptors, say), a pause before the next, so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Everything `receive` needs.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    /// `ADDR:PORT` for the control channel (TCP); DCSP listens on UDP at the same port. Empty: no listening
    /// port (a receiver served only through relays; its UDP sockets take a free port).
    pub listen: String,
    /// Where finished files go.
    pub output_dir: PathBuf,
    /// The secret senders must know; generated (and kept in the state dir) when absent.
    pub secret: Option<String>,
    pub state_dir: PathBuf,
    /// End after the first transfer ends: Ok if it verified.
    pub once: bool,
    /// UDP sockets (and plane threads) on the port.
    pub udp_sockets: usize,
    /// How a finished file is checked before it is put in place.
    pub verify: VerifyMode,
}

/// How a receiver checks a whole file once every chunk verified (each chunk is always checked by its SHA-256).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VerifyMode {
    /// By the sender's chunk list hash (protocol version 3; an older sender's file is hashed whole, in memory,
    /// as it arrives): no second pass over the bytes.
    #[default]
    Chunks,
    /// Also, after the final fsync, read the file back from disk and check its SHA-256 against the sender's
    /// before the rename: an end-to-end check of what the disk holds.
    Full,
}

/// Runs a receiver until SIGTERM or SIGINT (or, with `once`, until the first transfer ended), on a runtime of
/// its own. Partial transfers stay in the state dir and resume when their senders run again.
pub fn receive(opts: ReceiveOptions, sink: Arc<dyn EventSink>) -> Result<(), EngineError> {
    receive_relayed(opts, sink, None)
}

/// [`receive`], also serving the sessions `relays` hands over through their relays.
pub fn receive_relayed(
    opts: ReceiveOptions,
    sink: Arc<dyn EventSink>,
    relays: Option<RelayFeed>,
) -> Result<(), EngineError> {
    crate::runtime()?.block_on(async {
        let stop = terminate_signal()?;
        serve_relayed(opts, sink, stop, relays).await
    })
}

/// SIGTERM or SIGINT, whichever comes first.
fn terminate_signal() -> Result<impl Future<Output = ()>, EngineError> {
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| EngineError::Failed(format!("cannot install the SIGTERM handler: {e}")))?;
    Ok(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm.recv() => {}
        }
    })
}

/// What every connection of a receiver shares.
struct Ctx {
    store: Arc<SessionStore>,
    /// DCSP's UDP sockets on the listening port (None if they could not be bound).
    udp: Option<UdpPlane>,
    output_dir: PathBuf,
    secret: String,
    acceptor: TlsAcceptor,
    sink: Arc<dyn EventSink>,
    /// Sessions being received, each with a way to ask its connection to step aside.
    busy: Mutex<HashMap<SessionId, Arc<Notify>>>,
    verify: VerifyMode,
}

/// How one connection ended, for `once`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ConnOutcome {
    Completed,
    /// A definite failure of this kind, and why.
    Failed(ErrorKind, String),
    /// The sender went away or never got going; a resume may follow.
    Dropped,
}

/// The receiver on the caller's runtime, until `stop` completes (or, with `once`, the first transfer ended).
pub async fn serve(
    opts: ReceiveOptions,
    sink: Arc<dyn EventSink>,
    stop: impl Future<Output = ()>,
) -> Result<(), EngineError> {
    serve_relayed(opts, sink, stop, None).await
}

/// [`serve`], also serving the sessions `relays` hands over: for each, a connection waits at every relay of
/// its path until a sender arrives, and is then handled exactly as an accepted one.
pub async fn serve_relayed(
    opts: ReceiveOptions,
    sink: Arc<dyn EventSink>,
    stop: impl Future<Output = ()>,
    relays: Option<RelayFeed>,
) -> Result<(), EngineError> {
    let (ctx, listener) = set_up(&opts, sink).await?;
    let ctx = Arc::new(ctx);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<ConnOutcome>();
    let dialler =
        relays.map(|feed| tokio::spawn(relayed::serve_paths(ctx.clone(), feed, done_tx.clone())));
    tokio::pin!(stop);
    let result = loop {
        tokio::select! {
            accepted = accept(listener.as_ref()) => match accepted {
                Ok((tcp, peer)) => {
                    let ctx = ctx.clone();
                    let done_tx = done_tx.clone();
                    tokio::spawn(async move {
                        let _ = done_tx.send(handle_conn(&ctx, tcp, peer, None).await);
                    });
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            _ = &mut stop => break Ok(()),
            Some(outcome) = done_rx.recv(), if opts.once => match outcome {
                ConnOutcome::Completed => break Ok(()),
                ConnOutcome::Failed(kind, why) => break Err(EngineError::TransferFailed(kind, why)),
                ConnOutcome::Dropped => {}
            },
        }
    };
    if let Some(d) = dialler {
        d.abort();
    }
    interrupt_active(&ctx);
    ctx.sink.event(&Event::Stopped);
    result
}

/// The next connection on the listening port; never, without one.
async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// The receiver stops with transfers under way: their sessions are recorded as interrupted (resumable), not left
/// active.
fn interrupt_active(ctx: &Ctx) {
    let ids: Vec<SessionId> = match ctx.busy.lock() {
        Ok(busy) => busy.keys().copied().collect(),
        Err(_) => return,
    };
    for id in ids {
        if let Ok(Some(mut rec)) = ctx.store.incoming(&id) {
            if rec.state == SessionState::Active {
                rec.state = SessionState::Interrupted;
                rec.updated_unix = unix_now();
                let _ = ctx.store.put_incoming(&rec);
            }
        }
    }
}

/// Opens the state, the identity and the sockets, and announces the receiver.
async fn set_up(
    opts: &ReceiveOptions,
    sink: Arc<dyn EventSink>,
) -> Result<(Ctx, Option<TcpListener>), EngineError> {
    check_output_dir(&opts.output_dir)?;
    let state = StateDir::open(&opts.state_dir)?;
    let store = SessionStore::open(&state)?;
    let identity = Identity::load_or_create(&state.identity_dir())
        .map_err(|e| EngineError::LocalStorage(e.to_string()))?;
    let (secret, generated) = match opts.secret.clone().filter(|s| !s.is_empty()) {
        Some(s) => (s, false),
        None => load_or_create_secret(&state)?,
    };
    let config = server_config(&identity).map_err(|e| EngineError::Failed(e.to_string()))?;
    let (listener, local) = listen(&opts.listen).await?;
    let udp = match UdpPlane::start(local, opts.udp_sockets) {
        Ok(p) => Some(p),
        Err(e) => {
            sink.event(&Event::NoUdp {
                addr: local.to_string(),
                error: e.to_string(),
            });
            None
        }
    };
    sink.event(&Event::Listening {
        addr: listener.as_ref().map(|_| local.to_string()),
        fingerprint: identity.fingerprint(),
        output_dir: opts.output_dir.display().to_string(),
        secret: (generated || opts.secret.is_none()).then(|| secret.clone()),
        udp_sockets: udp.as_ref().map(UdpPlane::planes),
    });
    let ctx = Ctx {
        store: Arc::new(store),
        udp,
        output_dir: opts.output_dir.clone(),
        secret,
        acceptor: TlsAcceptor::from(config),
        sink,
        busy: Mutex::new(HashMap::new()),
        verify: opts.verify,
    };
    Ok((ctx, listener))
}

/// The listening socket on `addr` and its address; without an address, none, and the address UDP takes a
/// free port on.
async fn listen(addr: &str) -> Result<(Option<TcpListener>, SocketAddr), EngineError> {
    if addr.is_empty() {
        return Ok((None, SocketAddr::from(([0, 0, 0, 0], 0))));
    }
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| EngineError::Failed(format!("cannot listen on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| EngineError::Failed(e.to_string()))?;
    Ok((Some(listener), local))
}

/// One connection (accepted, or paired through a relay of `relay`'s session): TLS, authentication, then the
/// conversation.
async fn handle_conn(
    ctx: &Ctx,
    tcp: TcpStream,
    peer: SocketAddr,
    relay: Option<Arc<relayed::RelaySession>>,
) -> ConnOutcome {
    tune_accepted(&tcp);
    let mut tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, ctx.acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!("TLS handshake with {peer} failed: {e}");
            return ConnOutcome::Dropped;
        }
        Err(_) => return ConnOutcome::Dropped,
    };
    // The sender's first flight came with its TLS Finished; ours goes out now and its `Confirm` answers it: the
    // wait is one round trip (and two SPAKE2 computations, well under a millisecond).
    let auth_started = Instant::now();
    let auth = async {
        let ekm = exporter_of(tls.get_ref().1)?;
        authenticate_server(&mut tls, ekm, &ctx.secret).await
    };
    let version = match tokio::time::timeout(HANDSHAKE_TIMEOUT, auth).await {
        Ok(Ok(version)) => version,
        Ok(Err(e @ (TransportError::PeerNotAuthentic | TransportError::Version { .. }))) => {
            let kind = if matches!(e, TransportError::PeerNotAuthentic) {
                ErrorKind::Auth
            } else {
                ErrorKind::Failed
            };
            let reason = e.to_string();
            ctx.sink.event(&Event::Refused {
                peer: peer.to_string(),
                reason: reason.clone(),
            });
            return ConnOutcome::Failed(kind, format!("refused {peer}: {reason}"));
        }
        Ok(Err(e)) => {
            tracing::debug!("connection from {peer} ended during authentication: {e}");
            return ConnOutcome::Dropped;
        }
        Err(_) => return ConnOutcome::Dropped,
    };
    let Ok(dcsp_secret) = dcsp_secret_of(tls.get_ref().1) else {
        return ConnOutcome::Dropped;
    };
    let control_rtt = auth_started.elapsed();
    let link = connection::Link {
        peer,
        dcsp_secret,
        control_rtt,
        version,
        relay,
    };
    connection::converse(ctx, tls, link).await
}

/// Releases a session's busy mark when the connection ends (unless a newer connection already took it over).
struct BusyGuard<'a> {
    ctx: &'a Ctx,
    id: SessionId,
    cancel: Arc<Notify>,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut b) = self.ctx.busy.lock() {
            if b.get(&self.id)
                .is_some_and(|n| Arc::ptr_eq(n, &self.cancel))
            {
                b.remove(&self.id);
            }
        }
    }
}

/// Claims session `id` for this connection. A sender runs one connection per session, so an older connection
/// still holding it is a dead one the receiver has not noticed yet (a stalled link, a changed address): it is
/// asked to stop, and this waits until its writer has finished before taking over.
async fn claim_session(ctx: &Ctx, id: SessionId) -> Result<BusyGuard<'_>, ErrorReply> {
    let cancel = Arc::new(Notify::new());
    let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
    loop {
        let old = {
            let mut busy = ctx
                .busy
                .lock()
                .map_err(|_| (ErrorCode::Internal, "lock poisoned".to_owned()))?;
            match busy.get(&id) {
                Some(old) => old.clone(),
                None => {
                    busy.insert(id, cancel.clone());
                    return Ok(BusyGuard { ctx, id, cancel });
                }
            }
        };
        old.notify_one();
        if tokio::time::Instant::now() >= deadline {
            return Err((
                ErrorCode::Busy,
                format!("session {id} is still being received on another connection"),
            ));
        }
        tokio::time::sleep(TAKEOVER_POLL).await;
    }
}
