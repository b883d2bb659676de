//! The receiver through relays: no listening port. For every session the caller hands over (its
//! [`RelayPath`]), one connection waits at each relay of the path (the stripes and the standby) until the relay
//! pairs it with the sender's; a paired connection is handled exactly as an accepted one (`handle_conn`), and
//! a new one takes its place at once, so a sender that moves to another relay, or reconnects, finds the
//! receiver there. The DCSP connections of such a session bind at every relay of its path
//! (`dcsp_plane`), so wherever the sender's streams go, the relay there knows where this receiver is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use trackshift_grid::PeerRole;
use trackshift_proto::SessionId;
use trackshift_storage::SessionState;

use super::{handle_conn, ConnOutcome, Ctx};
use crate::relay::RECEIVER_ANSWER_WAIT;
use crate::relay::{
    dial, udp_addr, DialError, PathUpdates, RelayBind, RelayHop, RelayPath, UsedRelays,
};

/// After a waiting connection ended without a sender (the relay's own wait ran out, or it broke), a pause
/// before the next, so a relay that answers at once cannot make the loop spin.
const REDIAL_PAUSE: Duration = Duration::from_millis(100);
/// A relay that cannot be reached is tried again after this, doubling up to [`UNREACHABLE_MAX`] (it may be
/// restarting; meanwhile the path's other relays serve the session).
const UNREACHABLE_FIRST: Duration = Duration::from_millis(500);
const UNREACHABLE_MAX: Duration = Duration::from_secs(10);

/// The sessions to serve through relays, and who to ask for a session's current path when a relay of it
/// fails.
pub struct RelayFeed {
    /// Each session's path, and again whenever it changes.
    pub paths: mpsc::UnboundedReceiver<RelayPath>,
    pub updates: Option<Arc<dyn PathUpdates>>,
}

impl RelayFeed {
    /// A feed, and the handle that hands it sessions from any thread (a caller without a tokio runtime of its
    /// own, such as a thread long-polling an orchestrator).
    pub fn new(updates: Option<Arc<dyn PathUpdates>>) -> (PathSender, Self) {
        let (tx, paths) = mpsc::unbounded_channel();
        (PathSender(tx), Self { paths, updates })
    }
}

/// Hands a [`RelayFeed`] the sessions to serve.
#[derive(Debug, Clone)]
pub struct PathSender(mpsc::UnboundedSender<RelayPath>);

impl PathSender {
    /// Serve `path`'s session (again, with a changed path); false once the receiver has stopped.
    pub fn send(&self, path: RelayPath) -> bool {
        self.0.send(path).is_ok()
    }
}

impl std::fmt::Debug for RelayFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayFeed")
            .field("updates", &self.updates.is_some())
            .finish_non_exhaustive()
    }
}

/// What a connection dialled through a relay knows of its session.
#[derive(Debug)]
pub(super) struct RelaySession {
    pub(super) session_id: SessionId,
    /// Every relay of the session's latest path, where its DCSP connections bind.
    binds: Mutex<Vec<RelayBind>>,
    /// The relays its connections were paired at and its datagrams came through, over every connection.
    pub(super) used: Arc<UsedRelays>,
}

impl RelaySession {
    pub(super) fn binds(&self) -> Vec<RelayBind> {
        self.binds.lock().map(|b| b.clone()).unwrap_or_default()
    }

    fn set_path(&self, path: &RelayPath) {
        let binds = path
            .hops()
            .into_iter()
            .filter_map(|hop| match udp_addr(hop) {
                Ok(addr) => Some(RelayBind {
                    relay_id: hop.relay_id.clone(),
                    addr,
                    token: hop.token.clone(),
                }),
                Err(e) => {
                    tracing::warn!("{e}");
                    None
                }
            })
            .collect();
        if let Ok(mut b) = self.binds.lock() {
            *b = binds;
        }
    }
}

/// One session served through relays: its waiting connections, one per relay.
struct Served {
    relay: Arc<RelaySession>,
    /// Per relay id: the token it waits with, and its task.
    waiting: HashMap<String, (String, JoinHandle<()>)>,
    /// True once the session completed: its waiting connections stop.
    finished: watch::Sender<bool>,
}

/// What every waiting connection shares.
#[derive(Clone)]
struct Dialler {
    ctx: Arc<Ctx>,
    done: mpsc::UnboundedSender<ConnOutcome>,
    /// A relay of a session failed: ask for the session's current path.
    failed: mpsc::UnboundedSender<(SessionId, String)>,
}

/// Serves every session `feed` hands over until the receiver stops (the caller aborts this task).
pub(super) async fn serve_paths(
    ctx: Arc<Ctx>,
    mut feed: RelayFeed,
    done: mpsc::UnboundedSender<ConnOutcome>,
) {
    let (failed_tx, mut failed) = mpsc::unbounded_channel();
    let dialler = Dialler {
        ctx,
        done,
        failed: failed_tx,
    };
    let (paths_tx, mut paths) = mpsc::unbounded_channel::<RelayPath>();
    let mut served: HashMap<SessionId, Served> = HashMap::new();
    loop {
        let path = tokio::select! {
            Some(path) = feed.paths.recv() => path,
            Some(path) = paths.recv() => path,
            Some((session, relay_id)) = failed.recv() => {
                ask_current(feed.updates.clone(), session, relay_id, paths_tx.clone());
                continue;
            }
            else => return,
        };
        served.retain(|_, s| !*s.finished.borrow());
        serve_path(&dialler, &mut served, path);
    }
}

/// Asks the caller, off the async workers, for `session`'s current path after `relay_id` failed.
fn ask_current(
    updates: Option<Arc<dyn PathUpdates>>,
    session: SessionId,
    relay_id: String,
    paths: mpsc::UnboundedSender<RelayPath>,
) {
    let Some(updates) = updates else {
        return;
    };
    tokio::spawn(async move {
        let asked = tokio::task::spawn_blocking(move || updates.current(session, &relay_id)).await;
        if let Ok(Some(path)) = asked {
            let _ = paths.send(path);
        }
    });
}

/// Starts (or updates) `path`'s session: a waiting connection at each of its relays not waited at yet with
/// the same token.
fn serve_path(dialler: &Dialler, served: &mut HashMap<SessionId, Served>, path: RelayPath) {
    if session_completed(&dialler.ctx, &path.session_id) {
        return;
    }
    let s = served.entry(path.session_id).or_insert_with(|| Served {
        relay: Arc::new(RelaySession {
            session_id: path.session_id,
            binds: Mutex::new(Vec::new()),
            used: Arc::default(),
        }),
        waiting: HashMap::new(),
        finished: watch::channel(false).0,
    });
    s.relay.set_path(&path);
    for hop in path.hops() {
        let same = s
            .waiting
            .get(&hop.relay_id)
            .is_some_and(|(token, task)| *token == hop.token && !task.is_finished());
        if same {
            continue;
        }
        let task = tokio::spawn(wait_at(
            dialler.clone(),
            hop.clone(),
            s.relay.clone(),
            s.finished.clone(),
        ));
        if let Some((_, old)) = s
            .waiting
            .insert(hop.relay_id.clone(), (hop.token.clone(), task))
        {
            old.abort();
        }
    }
}

fn session_completed(ctx: &Ctx, id: &SessionId) -> bool {
    matches!(ctx.store.incoming(id), Ok(Some(rec)) if rec.state == SessionState::Completed)
}

/// Keeps one connection waiting at `hop` for `session`'s sender, until the session completed or the relay
/// refused or drains.
async fn wait_at(
    dialler: Dialler,
    hop: RelayHop,
    session: Arc<RelaySession>,
    finished: watch::Sender<bool>,
) {
    let mut done = finished.subscribe();
    let mut unreachable = UNREACHABLE_FIRST;
    while !*done.borrow() && !session_completed(&dialler.ctx, &session.session_id) {
        let dialled = tokio::select! {
            d = dial(&hop, PeerRole::Receiver, RECEIVER_ANSWER_WAIT) => d,
            _ = done.changed() => return,
        };
        match dialled {
            Ok(tcp) => {
                unreachable = UNREACHABLE_FIRST;
                session.used.note(&hop.relay_id);
                let peer = match tcp.peer_addr() {
                    Ok(p) => p,
                    Err(_) => continue,
                };
                let (d, s, f) = (dialler.clone(), session.clone(), finished.clone());
                tokio::spawn(async move {
                    let outcome = handle_conn(&d.ctx, tcp, peer, Some(s)).await;
                    if outcome == ConnOutcome::Completed {
                        let _ = f.send(true);
                    }
                    let _ = d.done.send(outcome);
                });
            }
            Err(e) => {
                if !on_dial_error(&dialler, &session, &e) {
                    return;
                }
                let pause = if matches!(e, DialError::Unreachable { .. }) {
                    let p = unreachable;
                    unreachable = (unreachable * 2).min(UNREACHABLE_MAX);
                    p
                } else {
                    REDIAL_PAUSE
                };
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// What a failed dial means for the waiting at that relay: false to stop waiting there.
fn on_dial_error(dialler: &Dialler, session: &RelaySession, e: &DialError) -> bool {
    if e.refused() {
        tracing::warn!(
            "session {}: {e}; no longer waiting there",
            session.session_id
        );
        return false;
    }
    if !e.relay_lost() {
        return true;
    }
    tracing::info!("session {}: {e}", session.session_id);
    let relay_id = match e {
        DialError::Unreachable { relay, .. }
        | DialError::Answer { relay, .. }
        | DialError::Broken { relay, .. } => relay.clone(),
    };
    let _ = dialler.failed.send((session.session_id, relay_id));
    !matches!(
        e,
        DialError::Answer {
            kind: trackshift_grid::HelloAnswer::Draining,
            ..
        }
    )
}
