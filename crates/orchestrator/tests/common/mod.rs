//! Test support: a real orchestrator on a loopback port (in this process, on a runtime of its own), tokens
//! signed with its key, clients, raw HTTP, and relays that are real listening sockets.

#![allow(dead_code)] // each test binary uses a part of this
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

pub mod pg;

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use trackshift_grid::api::{RelayHeartbeat, RelayRegistration};
use trackshift_grid::{Role, TokenKey};
use trackshift_grid_client::OrchestratorClient;
use trackshift_orchestrator::{Config, RateLimit, Running};

/// Which database a server uses.
#[derive(Clone, Debug)]
pub enum Db {
    /// SQLite in the state dir.
    Sqlite,
    Postgres(String),
}

/// A running orchestrator and what the tests need around it.
pub struct TestServer {
    pub runtime: tokio::runtime::Runtime,
    pub running: Option<Running>,
    pub url: String,
    pub state_dir: PathBuf,
    pub db: Db,
    pub key: TokenKey,
}

impl TestServer {
    /// Starts an orchestrator on a free loopback port with `state_dir` and `db`, heartbeats every second.
    pub fn start(state_dir: PathBuf, db: Db, rate_limit: RateLimit) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut config = Config::new("127.0.0.1:0", &state_dir);
        config.heartbeat_interval = Duration::from_secs(1);
        config.rate_limit = rate_limit;
        if let Db::Postgres(url) = &db {
            config.database = Some(url.clone());
        }
        let running = runtime
            .block_on(trackshift_orchestrator::start(config))
            .unwrap();
        let url = running.url();
        let key = trackshift_orchestrator::signing_key(&state_dir).unwrap();
        Self {
            runtime,
            running: Some(running),
            url,
            state_dir,
            db,
            key,
        }
    }

    /// Stops it and waits (counters and audit log flushed).
    pub fn stop(mut self) {
        if let Some(running) = self.running.take() {
            self.runtime.block_on(running.stop()).unwrap();
        }
    }

    pub fn token(&self, role: Role, subject: &str) -> String {
        self.key.sign_api(subject, role, now(), 3600).unwrap()
    }

    pub fn client(&self, role: Role, subject: &str) -> OrchestratorClient {
        OrchestratorClient::new(&self.url, &self.token(role, subject), None).unwrap()
    }

    /// A raw request: `(status, Retry-After, body as JSON or null)`.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, &[u8])>,
    ) -> Raw {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(40)))
            .proxy(None)
            .build()
            .into();
        let url = format!("{}{path}", self.url);
        let request = http_request(method, &url, token, body.map(|b| b.0));
        let answer = match body {
            Some((_, bytes)) => agent.run(request.body(bytes.to_vec()).unwrap()),
            None => agent.run(request.body(()).unwrap()),
        };
        let mut response = answer.unwrap();
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Raw {
            status,
            retry_after,
            content_type,
            text,
            json,
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = self.runtime.block_on(running.stop());
        }
    }
}

fn http_request(
    method: &str,
    url: &str,
    token: Option<&str>,
    content_type: Option<&str>,
) -> ureq::http::request::Builder {
    let mut builder = ureq::http::Request::builder().method(method).uri(url);
    if let Some(t) = token {
        builder = builder.header("authorization", format!("Bearer {t}"));
    }
    if let Some(ct) = content_type {
        builder = builder.header("content-type", ct);
    }
    builder
}

/// A raw answer.
#[derive(Debug)]
pub struct Raw {
    pub status: u16,
    pub retry_after: Option<String>,
    pub content_type: Option<String>,
    pub text: String,
    pub json: serde_json::Value,
}

impl Raw {
    /// Asserts the status and that the body is `{"error": "<non-empty>"}`.
    pub fn assert_error(&self, status: u16, context: &str) {
        assert_eq!(self.status, status, "{context}: {self:?}");
        let message = self
            .json
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("");
        assert!(
            !message.is_empty(),
            "{context}: no JSON error body: {self:?}"
        );
    }

    /// Asserts a 4xx with a JSON error body.
    pub fn assert_client_error(&self, context: &str) {
        assert!(
            (400..500).contains(&self.status),
            "{context}: expected a 4xx: {self:?}"
        );
        self.assert_error(self.status, context);
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A relay for the orchestrator's probe: a real listening TCP socket (the kernel completes the handshake; no
/// one needs to accept), with heartbeats sent every 300 ms while `beating` holds its id.
pub struct Relays {
    pub listeners: Mutex<Vec<(String, TcpListener)>>,
    pub beating: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Relays {
    pub fn new(server: &TestServer) -> Self {
        let beating: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (beating, stop) = (beating.clone(), stop.clone());
            let url = server.url.clone();
            let admin = server.token(Role::Admin, "heart");
            std::thread::spawn(move || {
                let client = OrchestratorClient::new(&url, &admin, None).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let ids = beating.lock().unwrap().clone();
                    for id in ids {
                        let _ = client.heartbeat(&id, &RelayHeartbeat::default());
                    }
                    std::thread::sleep(Duration::from_millis(300));
                }
            })
        };
        Self {
            listeners: Mutex::default(),
            beating,
            stop,
            thread: Some(thread),
        }
    }

    /// Registers relay `id` (with its own relay token) on a new listening port and keeps it heartbeating.
    pub fn add(&self, server: &TestServer, id: &str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let client = server.client(Role::Relay, id);
        let registered = client
            .register_relay(&RelayRegistration {
                relay_id: id.into(),
                addr: addr.clone(),
                region: "lab".into(),
                max_rate: None,
                forward: None,
            })
            .unwrap();
        assert_eq!(registered.admission_key, server.key.verifier().public_hex());
        self.listeners
            .lock()
            .unwrap()
            .push((id.to_owned(), listener));
        self.beating.lock().unwrap().push(id.to_owned());
        addr
    }

    /// Stops heartbeating `id`.
    pub fn silence(&self, id: &str) {
        self.beating.lock().unwrap().retain(|b| b != id);
    }
}

impl Drop for Relays {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A fresh state dir.
pub fn state_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("trackshift-orch-")
        .tempdir()
        .unwrap()
}
