//! The running orchestrator: its shared state, the router, HTTP or HTTPS serving, the background tasks
//! (relay eviction, counter flushing, the audit writer) and graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use axum::Router;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use trackshift_grid::api::{PathExit, PathRelay, SessionPath};
use trackshift_grid::{token, TokenKey, TokenVerifier};
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::error::{ApiFailure, OrchestratorError};
use crate::ratelimit::{Limiter, RateLimit};
use crate::routes::{self, sessions::reuse_token};
use crate::select::{self, Candidate, Chosen, Listed};
use crate::store::{AuditEntry, RelayRow, Store};
use crate::{auth, clock, keyfile, openapi::ApiDoc, tls};

/// The largest request body: the biggest real one (a session request with 256 relay measurements) is
/// about 20 KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The default heartbeat interval handed to relays.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(2);
/// Heartbeats a relay may miss before it counts as unhealthy.
pub const MISSED_HEARTBEATS: u32 = 3;
/// How long admission tokens are valid: a day, longer than any one transfer's expected run.
pub const DEFAULT_ADMISSION_TTL: Duration = Duration::from_secs(24 * 3600);
/// How often counters go to the `metrics` table.
const FLUSH_EVERY: Duration = Duration::from_secs(5);
/// Audit entries waiting for the writer; past this they are dropped (and counted in the log), so a slow
/// database cannot make requests wait on the audit log.
const AUDIT_QUEUE: usize = 10_000;
/// How long in-flight requests may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How to run an orchestrator.
#[derive(Debug, Clone)]
pub struct Config {
    /// `ADDR:PORT` to listen on (port 0 picks a free one).
    pub listen: String,
    /// Holds `token-key.pk8` and, without `database`, `orchestrator.sqlite3`.
    pub state_dir: PathBuf,
    /// `postgres://…` or `sqlite:…`; `None` for SQLite in the state dir.
    pub database: Option<String>,
    /// HTTPS instead of HTTP.
    pub tls: Option<TlsFiles>,
    pub heartbeat_interval: Duration,
    pub rate_limit: RateLimit,
    pub admission_ttl: Duration,
}

impl Config {
    /// Plain HTTP on `listen`, SQLite in `state_dir`, default intervals and limits.
    pub fn new(listen: impl Into<String>, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: listen.into(),
            state_dir: state_dir.into(),
            database: None,
            tls: None,
            heartbeat_interval: DEFAULT_HEARTBEAT,
            rate_limit: RateLimit::default(),
            admission_ttl: DEFAULT_ADMISSION_TTL,
        }
    }
}

/// PEM files for HTTPS, and optionally the CA that client certificates must chain to (mutual TLS).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// What handlers need from [`Config`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub heartbeat_interval: Duration,
    pub admission_ttl: Duration,
}

/// Shared by every request.
#[derive(Debug)]
pub struct AppState {
    pub store: Store,
    pub key: TokenKey,
    pub verifier: TokenVerifier,
    pub limiter: Limiter,
    pub settings: Settings,
    /// The `seq` of the newest session, for the receivers' long polls.
    pub new_sessions: watch::Sender<u64>,
    /// True once the server is shutting down (long polls answer at once).
    pub shutdown: watch::Receiver<bool>,
    chunk_updates: AtomicU64,
    audit: mpsc::Sender<AuditEntry>,
}

impl AppState {
    /// True if the relay passed its probe, heartbeats, and is not draining.
    pub fn is_healthy(&self, r: &RelayRow, now: i64) -> bool {
        let window = self.settings.heartbeat_interval * MISSED_HEARTBEATS;
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        r.probed && r.healthy && !r.draining && now - r.last_heartbeat <= window_ms
    }

    /// The healthy relays as selection candidates, two-hop stripes among them ([`select::candidates`]).
    pub async fn candidates(&self) -> Result<Vec<Candidate>, ApiFailure> {
        let now = clock::now_ms();
        let relays = self.store.relays().await?;
        let listed: Vec<Listed<'_>> = relays
            .iter()
            .map(|r| Listed {
                relay_id: &r.relay_id,
                addr: &r.addr,
                forward: r.forward.as_deref(),
                load: r.load,
                healthy: self.is_healthy(r, now),
            })
            .collect();
        Ok(select::candidates(&listed))
    }

    /// A fresh session id: 16 random bytes as 32 lowercase hex digits.
    pub fn new_session_id(&self) -> Result<String, ApiFailure> {
        let mut bytes = [0u8; 16];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| ApiFailure::internal(&"the system random source failed"))?;
        Ok(hex::encode(bytes))
    }

    /// The path for `chosen` (from `candidates`), version `version`: relays already in `old` keep their
    /// tokens, others get theirs; a two-hop stripe gets its exit's token too, and the sender's chain of both.
    pub async fn sign_path(
        &self,
        session_id: &str,
        chosen: &Chosen,
        candidates: &[Candidate],
        old: Option<&SessionPath>,
        version: u32,
    ) -> Result<SessionPath, ApiFailure> {
        let relays = self.store.relays().await?;
        let now = clock::now_secs();
        let addr_of = |relay_id: &str| {
            relays
                .iter()
                .find(|r| r.relay_id == relay_id)
                .map(|r| r.addr.clone())
                .unwrap_or_default()
        };
        let admit = |relay_id: &str| {
            self.key
                .sign_admission(
                    session_id,
                    relay_id,
                    now,
                    self.settings.admission_ttl.as_secs(),
                )
                .map_err(|e| ApiFailure::internal(&e))
        };
        let sign = |relay_id: &str| -> Result<PathRelay, ApiFailure> {
            let addr = addr_of(relay_id);
            if let Some(kept) = reuse_token(old, relay_id) {
                return Ok(PathRelay { addr, ..kept });
            }
            let token = admit(relay_id)?;
            let exit = candidates
                .iter()
                .find(|c| c.relay_id == relay_id)
                .and_then(|c| c.exit.as_deref());
            let Some(exit_id) = exit else {
                return Ok(PathRelay {
                    relay_id: relay_id.to_owned(),
                    addr,
                    token,
                    exit: None,
                });
            };
            let exit = PathExit {
                relay_id: exit_id.to_owned(),
                addr: addr_of(exit_id),
                token: admit(exit_id)?,
            };
            Ok(PathRelay {
                relay_id: relay_id.to_owned(),
                addr,
                token: token::chain([token.as_str(), exit.token.as_str()]),
                exit: Some(exit),
            })
        };
        Ok(SessionPath {
            stripes: chosen
                .stripes
                .iter()
                .map(|id| sign(id))
                .collect::<Result<_, _>>()?,
            standby: chosen.standby.as_deref().map(sign).transpose()?,
            reason: chosen.reason.clone(),
            version,
        })
    }

    pub fn count_chunk_update(&self) {
        self.chunk_updates.fetch_add(1, Ordering::Relaxed);
    }

    pub fn chunk_updates(&self) -> u64 {
        self.chunk_updates.load(Ordering::Relaxed)
    }

    /// Queues an audit entry for the writer task (dropped with a warning if the queue is full).
    pub fn record(&self, entry: AuditEntry) {
        if self.audit.try_send(entry).is_err() {
            tracing::warn!("audit queue full: an audit entry was dropped");
        }
    }
}

/// A started orchestrator.
#[derive(Debug)]
pub struct Running {
    local_addr: SocketAddr,
    scheme: &'static str,
    backend: crate::store::Backend,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), OrchestratorError>>,
}

impl Running {
    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://ADDR:PORT` or `https://ADDR:PORT`.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.local_addr)
    }

    pub fn backend(&self) -> crate::store::Backend {
        self.backend
    }

    /// Asks it to stop: no new connections, long polls answer, requests in flight finish.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }

    /// Waits until it stopped (after [`Running::shutdown`] or a failure), counters and audit log flushed.
    pub async fn wait(self) -> Result<(), OrchestratorError> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(OrchestratorError::Serve(e.to_string())),
        }
    }

    /// Shuts down and waits.
    pub async fn stop(self) -> Result<(), OrchestratorError> {
        self.shutdown();
        self.wait().await
    }
}

/// Opens the state dir, key and database, binds `config.listen` and starts serving in the background.
pub async fn start(config: Config) -> Result<Running, OrchestratorError> {
    let key = keyfile::load_or_create(&config.state_dir)?;
    let url = match &config.database {
        Some(url) => url.clone(),
        None => Store::sqlite_url(&config.state_dir.join(keyfile::DATABASE_FILE)),
    };
    let store = Store::open(&url).await?;
    let tls = config.tls.as_ref().map(tls::server_config).transpose()?;
    let listener = std::net::TcpListener::bind(&config.listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| OrchestratorError::Listen {
            addr: config.listen.clone(),
            reason: e.to_string(),
        })?;
    let local_addr = listener
        .local_addr()
        .map_err(|e| OrchestratorError::Listen {
            addr: config.listen.clone(),
            reason: e.to_string(),
        })?;
    let (stop, stopped) = watch::channel(false);
    let (audit, audit_rx) = mpsc::channel(AUDIT_QUEUE);
    let state = Arc::new(AppState {
        chunk_updates: AtomicU64::new(store.metric("chunk_updates_total").await?),
        store,
        verifier: key.verifier(),
        key,
        limiter: Limiter::new(config.rate_limit),
        settings: Settings {
            heartbeat_interval: config.heartbeat_interval,
            admission_ttl: config.admission_ttl,
        },
        new_sessions: watch::channel(0).0,
        shutdown: stopped.clone(),
        audit,
    });
    let backend = state.store.backend();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let task = tokio::spawn(run(state, listener, tls, stopped, audit_rx));
    Ok(Running {
        local_addr,
        scheme,
        backend,
        stop,
        task,
    })
}

/// Serves until `stopped` turns true, then stops the background tasks and flushes what they hold.
async fn run(
    state: Arc<AppState>,
    listener: std::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut stopped: watch::Receiver<bool>,
    audit_rx: mpsc::Receiver<AuditEntry>,
) -> Result<(), OrchestratorError> {
    let app = router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let evictor = tokio::spawn(evict_stale_relays(state.clone()));
    let flusher = tokio::spawn(flush_counters(state.clone()));
    let (finish_audit, audit_finished) = tokio::sync::oneshot::channel();
    let auditor = tokio::spawn(write_audit(state.store.clone(), audit_rx, audit_finished));
    let handle = axum_server::Handle::new();
    let watcher = {
        let handle = handle.clone();
        tokio::spawn(async move {
            while !*stopped.borrow_and_update() {
                if stopped.changed().await.is_err() {
                    break;
                }
            }
            handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
        })
    };
    let served = match tls {
        Some(config) => {
            let config = axum_server::tls_rustls::RustlsConfig::from_config(config);
            axum_server::from_tcp_rustls(listener, config)
                .handle(handle)
                .serve(app)
                .await
        }
        None => {
            axum_server::from_tcp(listener)
                .handle(handle)
                .serve(app)
                .await
        }
    };
    watcher.abort();
    evictor.abort();
    flusher.abort();
    // Requests in flight have finished: write what the audit queue still holds, then the counters.
    let _ = finish_audit.send(());
    let _ = auditor.await;
    if let Err(e) = state
        .store
        .set_metric("chunk_updates_total", state.chunk_updates())
        .await
    {
        tracing::warn!("could not save the chunk update count: {e}");
    }
    state.store.close().await;
    served.map_err(|e| OrchestratorError::Serve(e.to_string()))
}

/// Every endpoint, the OpenAPI document, the docs page, JSON fallbacks, the body limit and the gate.
fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/healthz", get(routes::healthz))
        .route("/api/v1/relays/register", post(routes::relays::register))
        .route(
            "/api/v1/relays/{relay_id}/heartbeat",
            post(routes::relays::heartbeat),
        )
        .route("/api/v1/relays", get(routes::relays::list))
        .route(
            "/api/v1/receivers/register",
            post(routes::receivers::register),
        )
        .route("/api/v1/receivers", get(routes::receivers::list))
        .route(
            "/api/v1/receivers/{name}/sessions",
            get(routes::receivers::sessions),
        )
        .route("/api/v1/session", post(routes::sessions::create))
        .route("/api/v1/session/{id}", get(routes::sessions::get))
        .route(
            "/api/v1/session/{id}/chunk/{chunk_id}",
            put(routes::sessions::update_chunk),
        )
        .route(
            "/api/v1/session/{id}/path",
            post(routes::sessions::report_path),
        )
        .route("/api/v1/sessions", get(routes::sessions::list))
        .route("/api/v1/metrics", get(routes::metrics))
        .with_state(state.clone());
    Router::new()
        .merge(SwaggerUi::new("/api/docs").url("/api/v1/openapi.json", ApiDoc::openapi()))
        .merge(api)
        .fallback(routes::no_route)
        .method_not_allowed_fallback(routes::wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(state, auth::gate))
}

/// Marks unhealthy, once per heartbeat interval, the relays that missed [`MISSED_HEARTBEATS`] heartbeats.
async fn evict_stale_relays(state: Arc<AppState>) {
    let interval = state.settings.heartbeat_interval;
    let window = i64::try_from((interval * MISSED_HEARTBEATS).as_millis()).unwrap_or(i64::MAX);
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        match state.store.evict_stale(clock::now_ms() - window).await {
            Ok(ids) => {
                for id in ids {
                    tracing::warn!(relay = %id, "relay missed {MISSED_HEARTBEATS} heartbeats: unhealthy");
                }
            }
            Err(e) => tracing::warn!("relay eviction failed: {e}"),
        }
    }
}

/// Saves the in-memory counters every [`FLUSH_EVERY`].
async fn flush_counters(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    let mut saved = u64::MAX;
    loop {
        tick.tick().await;
        let total = state.chunk_updates();
        if total != saved {
            match state.store.set_metric("chunk_updates_total", total).await {
                Ok(()) => saved = total,
                Err(e) => tracing::warn!("could not save the chunk update count: {e}"),
            }
        }
    }
}

/// Writes queued audit entries in batches; once `finish` fires, writes what is left and ends.
async fn write_audit(
    store: Store,
    mut queue: mpsc::Receiver<AuditEntry>,
    mut finish: tokio::sync::oneshot::Receiver<()>,
) {
    const BATCH: usize = 256;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            got = queue.recv_many(&mut batch, BATCH) => if got == 0 { break },
            _ = &mut finish => {
                queue.close();
                while queue.recv_many(&mut batch, BATCH).await > 0 {}
                write_batch(&store, &mut batch).await;
                break;
            }
        }
        write_batch(&store, &mut batch).await;
    }
}

async fn write_batch(store: &Store, batch: &mut Vec<AuditEntry>) {
    if batch.is_empty() {
        return;
    }
    if let Err(e) = store.audit(batch).await {
        tracing::warn!("could not write {} audit entries: {e}", batch.len());
    }
    batch.clear();
}
