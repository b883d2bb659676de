//! `send` and `receive` through the edge grid (cli-contract.md, "`receive` and `send` through the grid"): the
//! orchestrator's calls around the engine's relay mode. The engine moves the file through the relays it is
//! given; this asks the orchestrator for them, for a new path when one fails, and tells it the chunks verified.
//!
//! Threads: `trackshift-grid-poll` (`receive`: the long poll of the receiver's new sessions) and
//! `trackshift-grid-chunks` (`send`: chunk progress, fed by the engine's events through an unbounded queue, so
//! a slow orchestrator never holds the transfer back).

use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use trackshift_engine::{
    EngineError, Event, EventSink, PathSender, PathUpdates, ReceiveOptions, RelayFeed, RelayHop,
    RelayPath, RelayRoute, SendOptions, SessionId, TransferOptions,
};
use trackshift_grid::api::{
    ChunkStatus, CreateSession, PathRelay, PathReport, ReceiverRegistration, SessionPath,
};
use trackshift_grid::PeerRole;
use trackshift_grid_client::{ClientError, OrchestratorClient};

use crate::output::Output;

/// The long poll's wait: the orchestrator answers at once when a session is there, else after this.
const POLL_WAIT: Duration = Duration::from_secs(25);
/// After a failed poll (the orchestrator restarting, say), a pause before the next, unless it asked for more.
const POLL_RETRY: Duration = Duration::from_secs(2);
/// After a send, how long the last chunk updates may take before the command ends anyway.
const CHUNK_FLUSH: Duration = Duration::from_secs(5);

/// Flags of `send` and `receive` that put them on the grid.
#[derive(Args, Debug, Clone)]
pub(crate) struct GridArgs {
    /// The orchestrator's URL (http://HOST:PORT or https://HOST:PORT): send and receive through its relays
    #[arg(long, env = "TRACKSHIFT_ORCHESTRATOR", value_name = "URL")]
    pub(crate) orchestrator: Option<String>,
    /// The bearer token (JWT) for the orchestrator, from `trackshift orchestrator token`
    #[arg(
        long,
        env = "TRACKSHIFT_TOKEN",
        hide_env_values = true,
        value_name = "JWT"
    )]
    token: Option<String>,
    /// Trust this CA certificate (PEM) for the orchestrator's HTTPS
    #[arg(long, value_name = "FILE")]
    orchestrator_ca: Option<PathBuf>,
}

/// `send`'s and `resume`'s flags on the grid: the orchestrator, and how many relays a transfer takes.
#[derive(Args, Debug, Clone)]
pub(crate) struct GridSendArgs {
    /// With --orchestrator: stripe the transfer's streams over this many relays
    #[arg(long, default_value = "1", value_parser = clap::value_parser!(u8).range(1..=16), value_name = "N")]
    relays: u8,
    #[command(flatten)]
    grid: GridArgs,
}

impl GridArgs {
    /// The orchestrator's client, if `--orchestrator` was given.
    fn client(&self) -> Result<Option<OrchestratorClient>, EngineError> {
        let Some(url) = &self.orchestrator else {
            return Ok(None);
        };
        let token = self.token.as_deref().unwrap_or_default();
        if token.is_empty() {
            return Err(EngineError::BadInput(
                "--orchestrator needs --token (or TRACKSHIFT_TOKEN): get one with `trackshift orchestrator token`"
                    .into(),
            ));
        }
        OrchestratorClient::new(url, token, self.orchestrator_ca.as_deref())
            .map(Some)
            .map_err(api_error)
    }
}

/// An orchestrator error as the engine's, so it keeps its exit code: a refused token is 3, an unknown
/// receiver or a refused request 2, the rest (unreachable, timeouts) 1.
fn api_error(e: ClientError) -> EngineError {
    match e.status() {
        Some(401 | 403) => EngineError::Auth(e.to_string()),
        Some(400..=499) => EngineError::BadInput(e.to_string()),
        _ => match e {
            ClientError::BadUrl { .. } | ClientError::CaFile { .. } => {
                EngineError::BadInput(e.to_string())
            }
            e => EngineError::Failed(e.to_string()),
        },
    }
}

/// The engine's path from the orchestrator's, for the end `role` plays: on a two-hop stripe the sender dials
/// the entry with the token chain and the receiver binds at the exit; either way the hop keeps the entry's id,
/// which names the stripe to the orchestrator.
fn relay_path(
    session_id: &str,
    path: SessionPath,
    role: PeerRole,
) -> Result<RelayPath, EngineError> {
    let session_id: SessionId = session_id.parse().map_err(|_| {
        EngineError::Failed(format!(
            "the orchestrator's session id `{session_id}` is not 32 hex digits"
        ))
    })?;
    let hop = |r: PathRelay| {
        let (addr, token) = match role {
            PeerRole::Sender => r.for_sender(),
            PeerRole::Receiver => r.for_receiver(),
        };
        RelayHop {
            addr: addr.to_owned(),
            token: token.to_owned(),
            relay_id: r.relay_id,
        }
    };
    Ok(RelayPath {
        session_id,
        stripes: path.stripes.into_iter().map(hop).collect(),
        standby: path.standby.map(hop),
    })
}

/// A new path from the orchestrator when a relay fails, for the end `.1` plays.
struct Orchestrated(Arc<OrchestratorClient>, PeerRole);

impl PathUpdates for Orchestrated {
    fn failed(&self, session: SessionId, failed_relay: &str) -> Option<RelayPath> {
        let report = PathReport {
            failed_relay: failed_relay.to_owned(),
        };
        let id = session.to_hex();
        match self.0.report_path(&id, &report) {
            Ok(path) => relay_path(&id, path, self.1).ok(),
            Err(e) => {
                tracing::warn!("{e}; going on with the standby relay");
                None
            }
        }
    }

    fn current(&self, session: SessionId, _failed_relay: &str) -> Option<RelayPath> {
        let id = session.to_hex();
        match self.0.session(&id) {
            Ok(record) => relay_path(&id, record.path, self.1).ok(),
            Err(e) => {
                tracing::warn!("{e}");
                None
            }
        }
    }
}

/// `send --orchestrator`: the session and its path from the orchestrator, then the engine's send through it,
/// the chunks verified reported as they come. `None` without `--orchestrator` (a direct send).
pub(crate) fn send(
    mut opts: SendOptions,
    grid: &GridSendArgs,
    out: Arc<dyn Output>,
) -> Option<Result<(), EngineError>> {
    with_client(&grid.grid, |client| {
        send_through(&mut opts, client, grid.relays, out)
    })
}

/// `resume ID` of an outgoing session through the grid: the session's file and receiver from the state dir,
/// sent as `send` sends them (the orchestrator hands back the same session); `None` without `--orchestrator`.
pub(crate) fn resume(
    id: SessionId,
    transfer: TransferOptions,
    grid: &GridSendArgs,
    out: Arc<dyn Output>,
) -> Option<Result<(), EngineError>> {
    with_client(
        &grid.grid,
        |client| match trackshift_engine::resume_options(id, transfer, out.clone())? {
            Some(mut opts) => send_through(&mut opts, client, grid.relays, out),
            None => Ok(()),
        },
    )
}

/// `f` with the orchestrator's client; `None` without `--orchestrator`.
fn with_client(
    grid: &GridArgs,
    f: impl FnOnce(Arc<OrchestratorClient>) -> Result<(), EngineError>,
) -> Option<Result<(), EngineError>> {
    match grid.client() {
        Ok(Some(client)) => Some(f(Arc::new(client))),
        Ok(None) => None,
        Err(e) => Some(Err(e)),
    }
}

fn send_through(
    opts: &mut SendOptions,
    client: Arc<OrchestratorClient>,
    relays: u8,
    out: Arc<dyn Output>,
) -> Result<(), EngineError> {
    let meta = std::fs::metadata(&opts.path)
        .map_err(|e| EngineError::BadInput(format!("cannot read {}: {e}", opts.path.display())))?;
    let file_name = opts
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let created = client
        .create_session(&CreateSession {
            receiver: opts.to.clone(),
            file_name,
            file_size: meta.len(),
            chunk_size: opts.chunk_size,
            streams: opts.transfer.streams.max(1),
            relays: relays.max(1),
            relay_costs: Vec::new(),
            resume: earlier_session(opts),
        })
        .map_err(api_error)?;
    let session = created.session_id.clone();
    opts.relay = Some(RelayRoute {
        path: relay_path(&created.session_id, created.path, PeerRole::Sender)?,
        updates: Some(Arc::new(Orchestrated(client.clone(), PeerRole::Sender))),
    });
    let (chunks, reporter) = start_chunk_reporter(client, session)?;
    let sink = Arc::new(Tee { out, chunks });
    let result = trackshift_engine::send(opts.clone(), sink);
    // The sink (and with it the queue's sender) is gone with the engine: the reporter ends once it is empty.
    let _ = reporter.recv_timeout(CHUNK_FLUSH);
    result.map(drop)
}

/// The unfinished session of this file to this receiver in the state dir, to resume through the orchestrator
/// (a state dir that cannot be read just means a new session; the engine reports that error itself).
fn earlier_session(opts: &SendOptions) -> Option<String> {
    trackshift_engine::sessions::resumable(
        &opts.transfer.state_dir,
        &opts.path,
        &opts.to,
        opts.chunk_size,
    )
    .ok()
    .flatten()
    .map(|id| id.to_hex())
}

/// The engine's events to the command line's output, and each verified chunk to the reporter.
struct Tee {
    out: Arc<dyn Output>,
    chunks: std_mpsc::Sender<u32>,
}

impl EventSink for Tee {
    fn event(&self, event: &Event) {
        if let Event::ChunkVerified { index } = event {
            let _ = self.chunks.send(*index);
        }
        self.out.event(event);
    }
}

/// A thread that tells the orchestrator each chunk the receiver verified, in the order they come; what it
/// returns hears once the queue closed and emptied.
fn start_chunk_reporter(
    client: Arc<OrchestratorClient>,
    session: String,
) -> Result<(std_mpsc::Sender<u32>, std_mpsc::Receiver<()>), EngineError> {
    let (tx, rx) = std_mpsc::channel::<u32>();
    let (done_tx, done) = std_mpsc::channel();
    std::thread::Builder::new()
        .name("trackshift-grid-chunks".into())
        .spawn(move || {
            for index in rx {
                report_chunk(&client, &session, index);
            }
            let _ = done_tx.send(());
        })
        .map_err(|e| EngineError::Failed(format!("cannot start a thread: {e}")))?;
    Ok((tx, done))
}

/// One chunk update, waiting out one 429 (the orchestrator's rate limit); other failures are logged: the
/// chunk map is a view, the receiver's store is what counts.
fn report_chunk(client: &OrchestratorClient, session: &str, index: u32) {
    let mut r = client.update_chunk(session, index, ChunkStatus::Verified);
    if let Err(Some(wait)) = r.as_ref().map_err(ClientError::retry_after) {
        std::thread::sleep(wait.min(CHUNK_FLUSH));
        r = client.update_chunk(session, index, ChunkStatus::Verified);
    }
    if let Err(e) = r {
        tracing::warn!("chunk {index}: {e}");
    }
}

/// `receive --orchestrator`: registers `name`, long-polls its new sessions and serves each through its
/// relays. `None` without `--orchestrator` (a plain listening receiver).
pub(crate) fn receive(
    opts: ReceiveOptions,
    grid: &GridArgs,
    name: Option<String>,
    out: Arc<dyn Output>,
) -> Option<Result<(), EngineError>> {
    with_client(grid, |client| {
        let name = name.filter(|n| !n.is_empty()).ok_or_else(|| {
            EngineError::BadInput(
                "receive --orchestrator needs --name: the name senders use with --to".into(),
            )
        })?;
        receive_through(opts, client, name, out)
    })
}

fn receive_through(
    opts: ReceiveOptions,
    client: Arc<OrchestratorClient>,
    name: String,
    out: Arc<dyn Output>,
) -> Result<(), EngineError> {
    client
        .register_receiver(&ReceiverRegistration {
            name: name.clone(),
            relay_costs: Vec::new(),
        })
        .map_err(api_error)?;
    let (paths, feed) = RelayFeed::new(Some(Arc::new(Orchestrated(
        client.clone(),
        PeerRole::Receiver,
    ))));
    std::thread::Builder::new()
        .name("trackshift-grid-poll".into())
        .spawn(move || poll_sessions(&client, &name, &paths))
        .map_err(|e| EngineError::Failed(format!("cannot start a thread: {e}")))?;
    trackshift_engine::receive_relayed(opts, out, Some(feed))
}

/// Hands the receiver every new session to `name`, until the receiver stops.
fn poll_sessions(client: &OrchestratorClient, name: &str, paths: &PathSender) {
    let mut after = 0;
    loop {
        match client.receiver_sessions(name, after, POLL_WAIT) {
            Ok(answer) => {
                for record in answer.sessions {
                    match relay_path(&record.session_id, record.path, PeerRole::Receiver) {
                        Ok(path) => {
                            if !paths.send(path) {
                                return;
                            }
                        }
                        Err(e) => tracing::warn!("{e}"),
                    }
                }
                after = answer.next.max(after);
            }
            Err(e) => {
                tracing::warn!("{e}");
                std::thread::sleep(e.retry_after().unwrap_or(POLL_RETRY));
            }
        }
    }
}
