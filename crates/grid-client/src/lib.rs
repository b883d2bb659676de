//! A small blocking client of the orchestrator's REST API (`/api/v1`), for the relay, `send` and `receive`.
//!
//! Owns: one [`OrchestratorClient`] with a method per endpoint of the table in [`trackshift_grid::api`] (the
//! receivers' long poll included), each returning the shared body types, and one [`ClientError`] that keeps the
//! HTTP status, the server's `{"error"}` message and what to do about it. Every call has a connect timeout and
//! an overall timeout (the long poll's is its `wait` plus a margin), so a dead orchestrator costs a bounded wait,
//! never a hang; nothing here panics on what the network sends.
//!
//! Must not: hold any grid logic (which relay, when to re-register, how to back off are the callers' choices),
//! or start threads or runtimes of its own.
//!
//! Built on `ureq` 3 with rustls (*ring*, like the rest of the workspace): it is blocking, small (no async
//! runtime, no hyper), well kept, and its TLS roots can be set to one CA file (`--orchestrator-ca`). The relay
//! and the engine call the orchestrator a few times a second at most, from threads of their own or through
//! `spawn_blocking`, where a blocking client is the simplest thing that works.
//!
//! ```no_run
//! use trackshift_grid_client::OrchestratorClient;
//! let client = OrchestratorClient::new("http://127.0.0.1:7070", "eyJ…", None)?;
//! for relay in client.relays()? {
//!     println!("{} {} healthy={}", relay.relay_id, relay.addr, relay.healthy);
//! }
//! # Ok::<(), trackshift_grid_client::ClientError>(())
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use trackshift_grid::api::{
    ApiError, ChunkStatus, ChunkUpdate, CreateSession, PathReport, ReceiverInfo,
    ReceiverRegistered, ReceiverRegistration, ReceiverSessions, RelayHeartbeat, RelayInfo,
    RelayRegistered, RelayRegistration, SessionCreated, SessionPath, SessionRecord, SystemMetrics,
};
use ureq::http::Response;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};
use ureq::{Agent, Body};

/// How long a TCP (and TLS) connect to the orchestrator may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long any call but the long poll may take from start to the last byte of the answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// What the long poll's timeout adds to its `wait`: the server answers at `wait` at the latest, so this only
/// covers a slow network or a busy server.
pub const LONG_POLL_MARGIN: Duration = Duration::from_secs(10);
/// The longest `wait` the server accepts for the long poll.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// The largest answer read (a session list with big chunk maps); anything longer is a bad answer.
const MAX_ANSWER_BYTES: u64 = 64 << 20;
/// The most of an error body kept in a [`ClientError::Refused`] message.
const MAX_ERROR_BYTES: u64 = 16 << 10;

/// What went wrong talking to the orchestrator, and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The base URL is not `http://HOST:PORT` or `https://HOST:PORT`.
    #[error("orchestrator URL `{url}` is not usable: {reason}: give http://HOST:PORT or https://HOST:PORT")]
    BadUrl { url: String, reason: &'static str },
    /// The CA file could not be read or holds no certificate.
    #[error("cannot use {} as the orchestrator's CA: {reason}", path.display())]
    CaFile { path: PathBuf, reason: String },
    /// No answer within the call's timeout.
    #[error("no answer from the orchestrator at {url} within {} s to {what}: check that it runs and is reachable", timeout.as_secs())]
    Timeout {
        what: String,
        url: String,
        timeout: Duration,
    },
    /// No connection, TLS failed, or the connection broke.
    #[error("cannot reach the orchestrator at {url} ({what}): {reason}: check the URL, that it runs, and its certificate (--orchestrator-ca)")]
    Unreachable {
        what: String,
        url: String,
        reason: String,
    },
    /// The server answered with an error status; `message` is its `{"error"}` text.
    #[error("the orchestrator refused {what} with HTTP {status}: {message}{}", hint(*.status))]
    Refused {
        what: String,
        status: u16,
        message: String,
        /// From a 429's `Retry-After`: wait this long before trying again.
        retry_after: Option<Duration>,
    },
    /// A success status with a body this client cannot read.
    #[error("the orchestrator's answer to {what} is not what this version expects: {reason}: are both the same TrackShift version?")]
    BadAnswer { what: String, reason: String },
}

impl ClientError {
    /// The HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True for a 404: the relay, session or receiver is not known (a relay should register again).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// How long a 429 asked to wait.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// What to do about an error status, appended to its message.
fn hint(status: u16) -> &'static str {
    match status {
        401 => " (get a new token with `trackshift orchestrator token`)",
        403 => " (this token's role or subject may not do this)",
        429 => " (too many requests: wait for Retry-After)",
        500..=599 => " (the orchestrator failed: see its log)",
        _ => "",
    }
}

/// A client of one orchestrator, with one bearer token.
#[derive(Debug, Clone)]
pub struct OrchestratorClient {
    base_url: String,
    bearer: String,
    agent: Agent,
}

impl OrchestratorClient {
    /// A client of the orchestrator at `base_url` (`http://HOST:PORT` or `https://HOST:PORT`, no path),
    /// authenticating with `token`; with `ca_file` (PEM), HTTPS trusts only the certificates in it, otherwise
    /// the usual public roots.
    pub fn new(base_url: &str, token: &str, ca_file: Option<&Path>) -> Result<Self, ClientError> {
        let base_url = check_base_url(base_url)?;
        let mut tls = TlsConfig::builder();
        if let Some(path) = ca_file {
            tls = tls.root_certs(RootCerts::Specific(Arc::new(read_ca(path)?)));
        }
        let agent = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(CALL_TIMEOUT))
            .proxy(None) // the grid talks to its orchestrator directly, whatever HTTP_PROXY says
            .max_redirects(0)
            .user_agent(concat!("trackshift/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls.build())
            .build()
            .new_agent();
        Ok(Self {
            base_url,
            bearer: format!("Bearer {}", token.trim()),
            agent,
        })
    }

    /// The base URL, without a trailing `/`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `GET /healthz`: Ok if the orchestrator answers.
    pub fn healthz(&self) -> Result<(), ClientError> {
        let call = self.target("GET", "/healthz");
        let answer = self.agent.get(&call.url).call();
        call.expect_empty(answer)
    }

    /// `POST /api/v1/relays/register` (relay token): register or re-register a relay after the orchestrator
    /// probed its address.
    pub fn register_relay(&self, body: &RelayRegistration) -> Result<RelayRegistered, ClientError> {
        self.post("/api/v1/relays/register", body)
    }

    /// `POST /api/v1/relays/{relay_id}/heartbeat` (relay token). A 404 ([`ClientError::is_not_found`]) means
    /// the orchestrator does not know the relay (it restarted on a new database, or the probe failed):
    /// register again.
    pub fn heartbeat(&self, relay_id: &str, body: &RelayHeartbeat) -> Result<(), ClientError> {
        let path = format!("/api/v1/relays/{}/heartbeat", segment(relay_id));
        let call = self.target("POST", &path);
        let answer = self.authed(self.agent.post(&call.url)).send_json(body);
        call.expect_empty(answer)
    }

    /// `GET /api/v1/relays`: every relay the orchestrator knows.
    pub fn relays(&self) -> Result<Vec<RelayInfo>, ClientError> {
        self.get("/api/v1/relays")
    }

    /// `POST /api/v1/receivers/register` (receiver token whose subject is the name, or admin).
    pub fn register_receiver(
        &self,
        body: &ReceiverRegistration,
    ) -> Result<ReceiverRegistered, ClientError> {
        self.post("/api/v1/receivers/register", body)
    }

    /// `GET /api/v1/receivers`.
    pub fn receivers(&self) -> Result<Vec<ReceiverInfo>, ClientError> {
        self.get("/api/v1/receivers")
    }

    /// `GET /api/v1/receivers/{name}/sessions?after=SEQ&wait=SECS`: the sessions to `name` newer than `after`,
    /// waiting up to `wait` (at most [`MAX_WAIT`], whole seconds) for one to appear. Pass the answer's `next`
    /// as `after` next time.
    pub fn receiver_sessions(
        &self,
        name: &str,
        after: u64,
        wait: Duration,
    ) -> Result<ReceiverSessions, ClientError> {
        let wait = wait.min(MAX_WAIT);
        let path = format!(
            "/api/v1/receivers/{}/sessions?after={after}&wait={}",
            segment(name),
            wait.as_secs()
        );
        let mut call = self.target("GET", &path);
        call.timeout = wait + LONG_POLL_MARGIN;
        let answer = self
            .authed(self.agent.get(&call.url))
            .config()
            .timeout_global(Some(call.timeout))
            .build()
            .call();
        call.expect_json(answer)
    }

    /// `POST /api/v1/session` (sender token): a new session to a registered receiver, with its relay path and
    /// the admission tokens for it.
    pub fn create_session(&self, body: &CreateSession) -> Result<SessionCreated, ClientError> {
        self.post("/api/v1/session", body)
    }

    /// `GET /api/v1/session/{id}`: one session with its chunk map.
    pub fn session(&self, session_id: &str) -> Result<SessionRecord, ClientError> {
        self.get(&format!("/api/v1/session/{}", segment(session_id)))
    }

    /// `PUT /api/v1/session/{id}/chunk/{chunk_id}`: one chunk's new status.
    pub fn update_chunk(
        &self,
        session_id: &str,
        chunk_id: u32,
        status: ChunkStatus,
    ) -> Result<(), ClientError> {
        let path = format!("/api/v1/session/{}/chunk/{chunk_id}", segment(session_id));
        let call = self.target("PUT", &path);
        let answer = self
            .authed(self.agent.put(&call.url))
            .send_json(ChunkUpdate { status });
        call.expect_empty(answer)
    }

    /// `POST /api/v1/session/{id}/path`: a relay of the path failed or drains; the answer is the new path
    /// (only that relay replaced). Reporting a relay that is no longer in the path returns the current path.
    pub fn report_path(
        &self,
        session_id: &str,
        body: &PathReport,
    ) -> Result<SessionPath, ClientError> {
        self.post(
            &format!("/api/v1/session/{}/path", segment(session_id)),
            body,
        )
    }

    /// `GET /api/v1/sessions`: a sender's own sessions, a receiver's incoming ones, or all (admin).
    pub fn sessions(&self) -> Result<Vec<SessionRecord>, ClientError> {
        self.get("/api/v1/sessions")
    }

    /// `GET /api/v1/metrics`: system-wide counts.
    pub fn metrics(&self) -> Result<SystemMetrics, ClientError> {
        self.get("/api/v1/metrics")
    }

    fn target(&self, method: &str, path: &str) -> Call {
        let bare = path.split('?').next().unwrap_or(path);
        Call {
            what: format!("{method} {bare}"),
            url: format!("{}{path}", self.base_url),
            timeout: CALL_TIMEOUT,
        }
    }

    fn authed<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        request.header("authorization", &self.bearer)
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let call = self.target("GET", path);
        let answer = self.authed(self.agent.get(&call.url)).call();
        call.expect_json(answer)
    }

    fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, ClientError> {
        let call = self.target("POST", path);
        let answer = self.authed(self.agent.post(&call.url)).send_json(body);
        call.expect_json(answer)
    }
}

/// One request: what it is (for messages), where it goes, how long it may take.
struct Call {
    what: String,
    url: String,
    timeout: Duration,
}

impl Call {
    fn expect_json<T: DeserializeOwned>(
        &self,
        answer: Result<Response<Body>, ureq::Error>,
    ) -> Result<T, ClientError> {
        let mut response = self.success(answer)?;
        response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_json()
            .map_err(|e| match e {
                ureq::Error::Timeout(_) => self.timed_out(),
                other => ClientError::BadAnswer {
                    what: self.what.clone(),
                    reason: other.to_string(),
                },
            })
    }

    fn expect_empty(&self, answer: Result<Response<Body>, ureq::Error>) -> Result<(), ClientError> {
        self.success(answer).map(drop)
    }

    /// The response if its status is 2xx, else the error it stands for.
    fn success(
        &self,
        answer: Result<Response<Body>, ureq::Error>,
    ) -> Result<Response<Body>, ClientError> {
        let mut response = answer.map_err(|e| self.transport_error(e))?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_ERROR_BYTES)
            .read_to_string()
            .unwrap_or_default();
        Err(ClientError::Refused {
            what: self.what.clone(),
            status,
            message: error_message(&text, status),
            retry_after,
        })
    }

    fn timed_out(&self) -> ClientError {
        ClientError::Timeout {
            what: self.what.clone(),
            url: self.url.clone(),
            timeout: self.timeout,
        }
    }

    fn transport_error(&self, e: ureq::Error) -> ClientError {
        match e {
            ureq::Error::Timeout(_) => self.timed_out(),
            other => ClientError::Unreachable {
                what: self.what.clone(),
                url: self.url.clone(),
                reason: other.to_string(),
            },
        }
    }
}

/// The server's `{"error"}` text, or the start of whatever else it sent.
fn error_message(body: &str, status: u16) -> String {
    if let Ok(ApiError { error }) = serde_json::from_str::<ApiError>(body) {
        return error;
    }
    let text: String = body.trim().chars().take(200).collect();
    if text.is_empty() {
        format!("no error message (HTTP {status})")
    } else {
        text
    }
}

fn check_base_url(url: &str) -> Result<String, ClientError> {
    let bad = |reason| ClientError::BadUrl {
        url: url.to_owned(),
        reason,
    };
    let trimmed = url.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .ok_or_else(|| bad("it does not start with http:// or https://"))?;
    if rest.is_empty() {
        return Err(bad("it has no host"));
    }
    if rest.contains(['/', '?', '#']) {
        return Err(bad("it has a path, query or fragment"));
    }
    if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("it has spaces or control characters"));
    }
    Ok(trimmed.to_owned())
}

fn read_ca(path: &Path) -> Result<Vec<Certificate<'static>>, ClientError> {
    let fail = |reason: String| ClientError::CaFile {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let PemItem::Certificate(cert) = item.map_err(|e| fail(e.to_string()))? {
            certs.push(cert);
        }
    }
    if certs.is_empty() {
        return Err(fail("it holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// `text` as one URL path segment: unreserved bytes as they are, every other byte percent-encoded, so a name
/// can never add a segment (`../x`) or a query.
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    // `.` and `..` alone are still dot segments: encode them too.
    if out == "." || out == ".." {
        return out.replace('.', "%2E");
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly on purpose

    use super::*;

    #[test]
    fn base_urls_are_checked() {
        assert_eq!(
            check_base_url("http://127.0.0.1:7070/").unwrap(),
            "http://127.0.0.1:7070"
        );
        assert!(check_base_url("https://orch.example:443").is_ok());
        for bad in [
            "127.0.0.1:7070",
            "ftp://x",
            "http://",
            "http://h/api",
            "http://h x",
        ] {
            assert!(
                matches!(check_base_url(bad), Err(ClientError::BadUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn segments_cannot_escape_their_place() {
        assert_eq!(segment("lab-1_a.b"), "lab-1_a.b");
        assert_eq!(segment("../x"), "..%2Fx");
        assert_eq!(segment(".."), "%2E%2E");
        assert_eq!(segment("a?b#c d"), "a%3Fb%23c%20d");
    }

    #[test]
    fn error_bodies_keep_the_servers_message() {
        assert_eq!(
            error_message(r#"{"error":"no such relay"}"#, 404),
            "no such relay"
        );
        assert_eq!(error_message("", 502), "no error message (HTTP 502)");
        assert_eq!(error_message("<html>bad gateway", 502), "<html>bad gateway");
        let e = ClientError::Refused {
            what: "GET /api/v1/relays".into(),
            status: 401,
            message: "token expired".into(),
            retry_after: None,
        };
        assert!(e.to_string().contains("trackshift orchestrator token"));
    }

    #[test]
    fn a_dead_orchestrator_is_an_error_not_a_hang() {
        // A port nobody listens on (bound, then closed): the connect is refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client =
            OrchestratorClient::new(&format!("http://127.0.0.1:{port}"), "t", None).unwrap();
        assert!(matches!(
            client.relays(),
            Err(ClientError::Unreachable { .. })
        ));
    }

    #[test]
    fn a_silent_orchestrator_times_out() {
        // Accepts the connection and never answers: the long poll's timeout (wait + margin) ends it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _held = std::thread::spawn(move || {
            let conn = listener.accept();
            std::thread::sleep(Duration::from_secs(15));
            drop(conn);
        });
        let client =
            OrchestratorClient::new(&format!("http://127.0.0.1:{port}"), "t", None).unwrap();
        let started = std::time::Instant::now();
        let answer = client.receiver_sessions("lab", 0, Duration::from_secs(1));
        assert!(
            matches!(answer, Err(ClientError::Timeout { .. })),
            "{answer:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(14));
    }
}
