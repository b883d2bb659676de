//! The edge grid's own processes for the scenarios: a real `trackshift orchestrator` (SQLite in a state dir,
//! bearer tokens from `trackshift orchestrator token`) and `trackshift relay`s registered with it, on loopback or
//! inside a network namespace of the lab ([`trackshift_in`]). Every one is a [`Proc`]: bounded waits, killed on
//! drop.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::{run, trackshift, trackshift_in, Output, Proc, SHORT_TIMEOUT};

/// How long an orchestrator or relay may take to start (a debug build on a loaded 2-core machine).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The orchestrator's heartbeat interval in the scenarios: a relay that dies is noticed within a few seconds.
const HEARTBEAT: &str = "1s";
/// What the orchestrator logs: its info lines say which relays registered and which sessions were created.
const ORCHESTRATOR_LOG: &str = "warn,trackshift_orchestrator=info";

/// A running `trackshift orchestrator --json` process.
#[derive(Debug)]
pub struct Orchestrator {
    pub proc: Proc,
    /// `http://ADDR:PORT`.
    pub url: String,
    /// The address it listens on: a port picked at the first start is kept, so a restart takes the same one.
    pub addr: String,
    state_dir: PathBuf,
    ns: Option<String>,
}

impl Orchestrator {
    /// Starts `trackshift orchestrator --listen LISTEN --state-dir DIR` (in namespace `ns`, if given) and waits
    /// for its `listening` line.
    pub fn start(ns: Option<&str>, listen: &str, state_dir: &Path) -> Self {
        let (proc, listening) = spawn_orchestrator(ns, listen, state_dir);
        let field = |k: &str| {
            listening[k]
                .as_str()
                .unwrap_or_else(|| panic!("orchestrator `listening` without {k}: {listening}"))
                .to_owned()
        };
        Self {
            proc,
            url: field("url"),
            addr: field("addr"),
            state_dir: state_dir.to_path_buf(),
            ns: ns.map(str::to_owned),
        }
    }

    /// A bearer token for `role` (`sender`, `receiver`, `relay`, `admin`) and `subject`, from `trackshift
    /// orchestrator token` with this orchestrator's state dir (and so its key).
    pub fn token(&self, role: &str, subject: &str) -> String {
        let mut cmd = trackshift([
            "orchestrator",
            "token",
            "--role",
            role,
            "--subject",
            subject,
        ]);
        cmd.arg("--state-dir").arg(&self.state_dir);
        let out = run("orchestrator token", cmd, SHORT_TIMEOUT);
        assert_eq!(out.code, 0, "orchestrator token failed: {}", out.stderr);
        out.stdout.trim().to_owned()
    }

    /// SIGKILL (no goodbye). Returns what it printed.
    pub fn kill(&mut self) -> Output {
        self.proc.kill()
    }

    /// A new orchestrator on the same address and state dir (after [`Self::kill`]).
    pub fn restart(&mut self) {
        assert!(!self.proc.is_running(), "restart of a running orchestrator");
        let (proc, _) = spawn_orchestrator(self.ns.as_deref(), &self.addr, &self.state_dir);
        self.proc = proc;
    }

    /// The relays that registered with the running process (its `relay registered` log lines), in order.
    pub fn registered_relays(&self) -> Vec<String> {
        without_ansi(&self.proc.stderr())
            .lines()
            .filter(|l| l.contains("relay registered"))
            .filter_map(|l| l.split("relay=").nth(1))
            .filter_map(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
            .collect()
    }
}

/// `text` without ANSI escape sequences (`ESC [ … letter`), which a log line may colour its fields with.
fn without_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            out.push(c);
        }
    }
    out
}

fn spawn_orchestrator(ns: Option<&str>, listen: &str, state_dir: &Path) -> (Proc, Value) {
    let mut cmd = trackshift_in(
        ns,
        [
            "orchestrator",
            "--listen",
            listen,
            "--heartbeat-interval",
            HEARTBEAT,
            "--json",
        ],
    );
    cmd.arg("--state-dir")
        .arg(state_dir)
        .env("TRACKSHIFT_LOG", ORCHESTRATOR_LOG)
        .env("NO_COLOR", "1");
    let mut proc = Proc::spawn("orchestrator", cmd);
    let listening = proc.wait_event("orchestrator listening", START_TIMEOUT, |v| {
        v["event"] == "listening"
    });
    (proc, listening)
}

/// Starts `trackshift relay --listen LISTEN --relay-id ID --json` registered with `orchestrator` (with a relay
/// token for `id`), in namespace `ns` if given, plus `extra` arguments; waits for its `relay_ready` line and
/// returns the process and that line.
pub fn relay(
    ns: Option<&str>,
    listen: &str,
    orchestrator: &Orchestrator,
    id: &str,
    extra: &[&str],
) -> (Proc, Value) {
    let token = orchestrator.token("relay", id);
    let mut cmd = trackshift_in(
        ns,
        [
            "relay",
            "--listen",
            listen,
            "--orchestrator",
            &orchestrator.url,
            "--token",
            &token,
            "--relay-id",
            id,
            "--json",
        ],
    );
    cmd.args(extra);
    let mut proc = Proc::spawn(id, cmd);
    let ready = proc.wait_event("relay_ready", START_TIMEOUT, |v| {
        v["event"] == "relay_ready"
    });
    (proc, ready)
}

/// The relay ids in a send or receive summary's `relays`.
pub fn relays_of(summary: &Value) -> Vec<String> {
    summary["relays"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
