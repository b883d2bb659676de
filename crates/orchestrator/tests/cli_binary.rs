//! The real `trackshift orchestrator` binary: started with `--json`, it prints its listening event; a token
//! from `trackshift orchestrator token` (same state dir, so the same key) is accepted; SIGTERM stops it with
//! exit code 0. Needs the binary built first (`cargo build -p trackshift-cli`; `scripts/test.sh` does).

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use trackshift_grid_client::OrchestratorClient;

fn trackshift(args: &[&str]) -> Command {
    let mut cmd = Command::new(trackshift_scenarios::bin());
    cmd.args(args)
        .env_remove("TRACKSHIFT_STATE_DIR")
        .env_remove("TRACKSHIFT_DATABASE")
        .env_remove("TRACKSHIFT_LOG");
    cmd
}

#[test]
fn the_binary_serves_accepts_its_tokens_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state = state.to_str().unwrap();
    // A token first: it creates the key the server then uses.
    let out = trackshift(&[
        "orchestrator",
        "token",
        "--role",
        "admin",
        "--subject",
        "ops",
        "--state-dir",
        state,
    ])
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(token.lines().count(), 1, "one line: the JWT");
    let token = token.trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT");

    let mut child = trackshift(&[
        "orchestrator",
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        state,
        "--json",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let event: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(event["event"], "listening", "{first}");
    assert_eq!(event["database"], "sqlite");
    let url = event["url"].as_str().unwrap().to_owned();
    assert!(dir.path().join("state/orchestrator.sqlite3").is_file());

    let client = OrchestratorClient::new(&url, &token, None).unwrap();
    client.healthz().unwrap();
    assert!(client.relays().unwrap().is_empty());
    let metrics = client.metrics().unwrap();
    assert_eq!(metrics.sessions_total, 0);
    let stranger = OrchestratorClient::new(&url, "not-a-token", None).unwrap();
    assert_eq!(stranger.relays().unwrap_err().status(), Some(401));

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        assert!(
            Instant::now() < deadline,
            "the orchestrator did not stop within 20 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(0));
}

#[test]
fn bad_flags_are_usage_errors() {
    let out = trackshift(&["orchestrator", "token", "--role", "king", "--subject", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let dir = tempfile::tempdir().unwrap();
    let out = trackshift(&[
        "orchestrator",
        "token",
        "--role",
        "admin",
        "--subject",
        "../x",
        "--state-dir",
    ])
    .arg(dir.path())
    .output()
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = trackshift(&[
        "orchestrator",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        "/nonexistent",
    ])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "--tls-cert needs --tls-key");
    let out = trackshift(&[
        "orchestrator",
        "--listen",
        "127.0.0.1:0",
        "--database",
        "mysql://x",
        "--state-dir",
    ])
    .arg(dir.path())
    .output()
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
