//! `send` and `receive` through the edge grid with the real binaries: a `trackshift orchestrator` process
//! (its tokens from `trackshift orchestrator token`), `trackshift relay` processes, a
//! `trackshift receive --orchestrator` with no listening port and a `trackshift send --orchestrator`, on
//! loopback. Each test has its own orchestrator, relays, names and dirs.
#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is a failing test, with its message

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use trackshift_grid::Role;
use trackshift_scenarios::grid::relays_of;
use trackshift_scenarios::{assert_same_file, random_file, run, trackshift, Proc, Scratch};

const SECRET: &str = "grid e2e secret";
const WAIT: Duration = Duration::from_secs(120);

/// A `trackshift orchestrator --listen 127.0.0.1:0` process (killed with the test), SQLite in its state dir,
/// heartbeats every second so a dead relay is unhealthy within 3 s.
struct Orchestrator {
    _proc: Proc,
    url: String,
    state_dir: PathBuf,
}

impl Orchestrator {
    fn start(state_dir: &Path) -> Self {
        let dir = state_dir.to_str().unwrap();
        let mut proc = Proc::spawn(
            "orchestrator",
            trackshift([
                "orchestrator",
                "--listen",
                "127.0.0.1:0",
                "--state-dir",
                dir,
                "--heartbeat-interval",
                "1s",
                "--json",
            ]),
        );
        let listening = proc.wait_event("listening", WAIT, |v| v["event"] == "listening");
        Self {
            url: listening["url"].as_str().unwrap().to_owned(),
            _proc: proc,
            state_dir: state_dir.to_owned(),
        }
    }

    /// A bearer token from `trackshift orchestrator token` (same state dir, so the server's key), valid 1 h.
    fn token(&self, role: Role, subject: &str) -> String {
        let out = run(
            "orchestrator token",
            trackshift([
                "orchestrator",
                "token",
                "--role",
                role.as_str(),
                "--subject",
                subject,
                "--ttl",
                "1h",
                "--state-dir",
                self.state_dir.to_str().unwrap(),
            ]),
            WAIT,
        );
        assert_eq!(out.code, 0, "orchestrator token failed: {}", out.stderr);
        out.stdout.trim().to_owned()
    }

    /// A `trackshift relay` registered here; with `capture`, everything it forwards is written there.
    fn relay(&self, id: &str, capture: Option<&Path>) -> Proc {
        self.relay_with(id, capture, &[]).0
    }

    /// [`Orchestrator::relay`] with `extra` flags (`--forward ADDR`, say); also returns the address it
    /// registered.
    fn relay_with(&self, id: &str, capture: Option<&Path>, extra: &[&str]) -> (Proc, String) {
        let token = self.token(Role::Relay, id);
        let mut args = vec![
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--orchestrator",
            &self.url,
            "--token",
            &token,
            "--relay-id",
            id,
            "--json",
        ];
        args.extend_from_slice(extra);
        let mut cmd = trackshift(args);
        if let Some(path) = capture {
            cmd.env("TRACKSHIFT_RELAY_CAPTURE", path);
        }
        let mut relay = Proc::spawn(id, cmd);
        let ready = relay.wait_event("relay_ready", WAIT, |v| v["event"] == "relay_ready");
        let addr = ready["addr"].as_str().unwrap().to_owned();
        (relay, addr)
    }

    /// The session the sender's `start` event names, as an admin reads it.
    fn session(&self, start: &Value) -> trackshift_grid::api::SessionRecord {
        let admin = trackshift_grid_client::OrchestratorClient::new(
            &self.url,
            &self.token(Role::Admin, "test"),
            None,
        )
        .unwrap();
        admin
            .session(start["session_id"].as_str().unwrap())
            .unwrap()
    }

    /// `trackshift receive --orchestrator --name NAME --once`, no `--listen`, once it is registered.
    fn receiver(&self, scratch: &Scratch, name: &str) -> Proc {
        let token = self.token(Role::Receiver, name);
        let out = scratch.dir("out");
        let state = scratch.dir("recv-state");
        let mut receiver = Proc::spawn(
            "receiver",
            trackshift([
                "receive",
                "--orchestrator",
                &self.url,
                "--token",
                &token,
                "--name",
                name,
                "--output-dir",
                out.to_str().unwrap(),
                "--state-dir",
                state.to_str().unwrap(),
                "--secret",
                SECRET,
                "--once",
                "--json",
            ]),
        );
        let listening = receiver.wait_event("listening", WAIT, |v| v["event"] == "listening");
        assert!(
            listening["addr"].is_null(),
            "no listening port, so no address (not 0.0.0.0:0): {listening}"
        );
        receiver
    }

    /// `trackshift send FILE --to NAME --orchestrator …`, started.
    fn sender(&self, scratch: &Scratch, file: &Path, to: &str, extra: &[&str]) -> Proc {
        let file = file.to_str().unwrap();
        let send = ["send", file, "--to", to, "--chunk-size", "5MiB"];
        self.outgoing(scratch, &send, extra)
    }

    /// `trackshift resume ID --orchestrator …`, started.
    fn resumer(&self, scratch: &Scratch, session_id: &str) -> Proc {
        self.outgoing(scratch, &["resume", session_id], &[])
    }

    /// `command` (`send …` or `resume …`) with the grid's flags, the secret, the sender's state dir and
    /// `extra`, started.
    fn outgoing(&self, scratch: &Scratch, command: &[&str], extra: &[&str]) -> Proc {
        let token = self.token(Role::Sender, "alice");
        let state = scratch.dir("send-state");
        let mut args: Vec<String> = command.iter().map(|s| s.to_string()).collect();
        for flag in [
            "--orchestrator",
            &self.url,
            "--token",
            &token,
            "--secret",
            SECRET,
            "--state-dir",
            state.to_str().unwrap(),
            "--json",
        ]
        .iter()
        .chain(extra)
        {
            args.push(flag.to_string());
        }
        Proc::spawn("sender", trackshift(args))
    }
}

/// A file with `marker` written into it again and again.
fn marked_file(path: PathBuf, len: usize, marker: &[u8]) -> PathBuf {
    let mut data = Vec::with_capacity(len);
    let mut i: u32 = 0;
    while data.len() < len {
        data.extend_from_slice(marker);
        data.extend_from_slice(&i.to_le_bytes().repeat(64));
        i = i.wrapping_mul(2_654_435_761).wrapping_add(1);
    }
    data.truncate(len);
    std::fs::write(&path, &data).unwrap();
    path
}

const MARKER: &[u8] = b"GRID-E2E-MARKER-4c1d7e";

#[test]
fn a_file_arrives_through_one_relay_that_never_sees_its_bytes() {
    let scratch = Scratch::new("grid-one-relay");
    let orch = Orchestrator::start(&scratch.dir("orch"));
    let capture = scratch.file("relay-capture.bin");
    let mut relay = orch.relay("grid1-r1", Some(&capture));
    let mut receiver = orch.receiver(&scratch, "grid1-rx");
    let file = marked_file(scratch.file("marked.bin"), 24 << 20, MARKER);
    let out = orch
        .sender(&scratch, &file, "grid1-rx", &["--streams", "1"])
        .wait(WAIT);
    assert_eq!(out.code, 0, "send failed: {}", out.stderr);
    assert_eq!(relays_of(out.summary()), ["grid1-r1"]);
    let received = receiver.wait(WAIT);
    assert_eq!(received.code, 0, "receive failed: {}", received.stderr);
    assert_same_file(&file, &scratch.dir("out").join("marked.bin"));
    assert_forwarded_blind(&mut relay, &capture, 24 << 20);
}

/// Everything a relay forwarded, read once it stopped: more than `at_least` bytes, and never the marker.
fn assert_forwarded_blind(relay: &mut Proc, capture: &Path, at_least: usize) {
    relay.terminate(WAIT);
    let seen = std::fs::read(capture).unwrap();
    assert!(
        seen.len() > at_least,
        "the capture holds the transfer ({} bytes)",
        seen.len()
    );
    let hits = seen.windows(MARKER.len()).filter(|w| *w == MARKER).count();
    assert_eq!(hits, 0, "the relay forwarded the marker in clear");
}

/// A two-hop path, as a test asks for one: the exit relay starts first, then the entry with `--forward` to the
/// exit's registered address. The orchestrator then routes every session through entry → exit (the exit
/// alone is no candidate): the sender binds at the entry, the receiver at the exit.
#[test]
fn a_file_arrives_through_a_two_hop_chain() {
    let scratch = Scratch::new("grid-two-hop");
    let orch = Orchestrator::start(&scratch.dir("orch"));
    let captures = [scratch.file("entry.bin"), scratch.file("exit.bin")];
    let (mut exit, exit_addr) = orch.relay_with("grid3-exit", Some(&captures[1]), &[]);
    let (mut entry, _) = orch.relay_with(
        "grid3-entry",
        Some(&captures[0]),
        &["--forward", &exit_addr],
    );
    let mut receiver = orch.receiver(&scratch, "grid3-rx");
    let file = marked_file(scratch.file("chained.bin"), 24 << 20, MARKER);
    let mut sender = orch.sender(&scratch, &file, "grid3-rx", &["--streams", "2"]);
    let start = sender.wait_event("start", WAIT, |v| v["event"] == "start");
    let out = sender.wait(WAIT);
    assert_eq!(out.code, 0, "send failed: {}", out.stderr);
    assert_eq!(
        relays_of(out.summary()),
        ["grid3-entry"],
        "the stripe is named by its entry"
    );
    let received = receiver.wait(WAIT);
    assert_eq!(received.code, 0, "receive failed: {}", received.stderr);
    assert_same_file(&file, &scratch.dir("out").join("chained.bin"));
    let record = orch.session(&start);
    let stripe = &record.path.stripes[0];
    assert_eq!(stripe.relay_id, "grid3-entry");
    let hop = stripe.exit.as_ref().expect("the record shows the exit hop");
    assert_eq!(
        (hop.relay_id.as_str(), hop.addr.as_str()),
        ("grid3-exit", exit_addr.as_str())
    );
    assert!(
        record
            .path
            .reason
            .contains("two hops grid3-entry>grid3-exit"),
        "the record says why: {}",
        record.path.reason
    );
    // Both relays carried the whole file, and neither could read it.
    assert_forwarded_blind(&mut entry, &captures[0], 24 << 20);
    assert_forwarded_blind(&mut exit, &captures[1], 24 << 20);
}

#[test]
fn a_file_is_striped_over_two_relays() {
    let scratch = Scratch::new("grid-striped");
    let orch = Orchestrator::start(&scratch.dir("orch"));
    let _r1 = orch.relay("grid2-r1", None);
    let _r2 = orch.relay("grid2-r2", None);
    let mut receiver = orch.receiver(&scratch, "grid2-rx");
    let file = random_file(&scratch.file("striped.bin"), 32 << 20, 2);
    let out = orch
        .sender(
            &scratch,
            &file,
            "grid2-rx",
            &["--streams", "2", "--relays", "2"],
        )
        .wait(WAIT);
    assert_eq!(out.code, 0, "send failed: {}", out.stderr);
    let mut relays = relays_of(out.summary());
    relays.sort();
    assert_eq!(relays, ["grid2-r1", "grid2-r2"], "both stripes carried it");
    let received = receiver.wait(WAIT);
    assert_eq!(received.code, 0);
    let mut relays = relays_of(received.summary());
    relays.sort();
    assert_eq!(relays, ["grid2-r1", "grid2-r2"], "the receive summary too");
    assert_same_file(&file, &scratch.dir("out").join("striped.bin"));
}

/// A relay goes away (`kill`: SIGKILL; else SIGTERM, its drain) once 10 MiB of a 60 MiB transfer at 20 MB/s
/// verified: the sender moves to the standby and the file arrives whole.
fn fail_over(test: &str, kill: bool) {
    let scratch = Scratch::new(test);
    let orch = Orchestrator::start(&scratch.dir("orch"));
    let ids = [format!("{test}-a"), format!("{test}-b")];
    let mut relays = [orch.relay(&ids[0], None), orch.relay(&ids[1], None)];
    let rx = format!("{test}-rx");
    let mut receiver = orch.receiver(&scratch, &rx);
    let file = random_file(&scratch.file("big.bin"), 60 << 20, 3);
    let mut sender = orch.sender(
        &scratch,
        &file,
        &rx,
        &["--streams", "1", "--max-rate", "20MB/s"],
    );
    let start = sender.wait_event("start", WAIT, |v| v["event"] == "start");
    assert!(start["session_id"].is_string());
    let before = sender.wait_event("10 MiB verified", WAIT, |v| {
        v["event"] == "progress" && v["bytes_done"].as_u64().unwrap_or(0) >= 10 << 20
    });
    let before = before["bytes_done"].as_u64().unwrap();
    // The relay the session goes through now: its path's first stripe, as the orchestrator chose it.
    let record = orch.session(&start);
    let first = &record.path.stripes[0].relay_id;
    let busy = ids.iter().position(|id| id == first).unwrap();
    let went = Instant::now();
    let victim = &mut relays[busy];
    if kill {
        victim.kill();
    } else {
        // SIGTERM without waiting: the relay drains while the sender moves, and exits once it has.
        let pid = victim.pid().to_string();
        let st = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(st.success());
    }
    let failover = sender.wait_event("relay_failover", WAIT, |v| v["event"] == "relay_failover");
    let moved = went.elapsed();
    sender.wait_event("progress through the standby", WAIT, |v| {
        v["event"] == "progress" && v["bytes_done"].as_u64().unwrap_or(0) > before
    });
    let stall = went.elapsed();
    eprintln!(
        "{test}: moved {:.2} s after the relay went ({}), progress again after {:.2} s (progress lines come once a second)",
        moved.as_secs_f64(),
        failover["reason"],
        stall.as_secs_f64()
    );
    let out = sender.wait(WAIT);
    assert_eq!(out.code, 0, "send failed: {}", out.stderr);
    assert_eq!(
        relays_of(out.summary()).len(),
        2,
        "both relays carried part"
    );
    let received = receiver.wait(WAIT);
    assert_eq!(received.code, 0);
    assert_eq!(
        relays_of(received.summary()).len(),
        2,
        "the receive summary names both too: {}",
        received.summary()
    );
    assert_same_file(&file, &scratch.dir("out").join("big.bin"));
    assert!(stall < Duration::from_secs(15), "stall {stall:?}");
    if !kill {
        assert_eq!(relays[busy].wait(WAIT).code, 0, "a drained relay exits 0");
    }
}

#[test]
fn a_killed_relay_fails_over_to_the_standby() {
    fail_over("grid-kill", true);
}

#[test]
fn a_draining_relay_hands_its_session_to_the_standby() {
    fail_over("grid-drain", false);
}

/// A stripe's relay is dead for UDP from the very start, before its stream's first ACK, while the
/// orchestrator still counts it healthy: relay `b` registers with `--public-addr` pointing at a TCP port the
/// test holds open (so the registration probe passes) where nothing takes UDP. The control connection goes
/// through stripe `a`; stream 1 through `b` never hears an ACK. Through relays there is no TCP path to the
/// receiver to fall back to: the stream must move to the standby `c` and the transfer stay on UDP.
#[test]
fn a_stream_whose_relay_is_dead_before_its_first_ack_moves_to_the_standby() {
    let scratch = Scratch::new("grid-dead-start");
    let orch = Orchestrator::start(&scratch.dir("orch"));
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole_addr = hole.local_addr().unwrap().to_string();
    let _a = orch.relay("grid4-a", None);
    let _b = orch.relay_with("grid4-b", None, &["--public-addr", &hole_addr]);
    let _c = orch.relay("grid4-c", None);
    let mut receiver = orch.receiver(&scratch, "grid4-rx");
    let file = random_file(&scratch.file("dead.bin"), 24 << 20, 4);
    let mut sender = orch.sender(
        &scratch,
        &file,
        "grid4-rx",
        &["--streams", "2", "--relays", "2"],
    );
    let start = sender.wait_event("start", WAIT, |v| v["event"] == "start");
    let path = orch.session(&start).path;
    let stripes: Vec<&str> = path.stripes.iter().map(|r| r.relay_id.as_str()).collect();
    assert_eq!(stripes, ["grid4-a", "grid4-b"], "equal costs: by id");
    assert_eq!(path.standby.unwrap().relay_id, "grid4-c");
    let failover = sender.wait_event("relay_failover", WAIT, |v| v["event"] == "relay_failover");
    assert_eq!(failover["lost"], "grid4-b", "{failover}");
    let out = sender.wait(WAIT);
    assert_eq!(out.code, 0, "send failed: {}", out.stderr);
    assert!(
        out.event("fallback").is_none(),
        "no fallback to TCP through relays: {:?}",
        out.event("fallback")
    );
    let summary = out.summary();
    assert_eq!(summary["protocol"], "udp", "{summary}");
    assert!(
        relays_of(summary).iter().any(|r| r == "grid4-c"),
        "the standby carried stream 1: {summary}"
    );
    assert_eq!(receiver.wait(WAIT).code, 0);
    assert_same_file(&file, &scratch.dir("out").join("dead.bin"));
    drop(hole);
}

/// The sender is killed once 10 MiB of 40 MiB verified; `send` run again (or `resume ID`, with `by_id`)
/// resumes through the relay: the same session, and only the chunks not verified travel.
fn killed_sender_resumes(test: &str, by_id: bool) {
    let scratch = Scratch::new(test);
    let orch = Orchestrator::start(&scratch.dir("orch"));
    let _relay = orch.relay(&format!("{test}-r1"), None);
    let name = format!("{test}-rx");
    let mut receiver = orch.receiver(&scratch, &name);
    let file = random_file(&scratch.file("resumed.bin"), 40 << 20, 5);
    let args = ["--streams", "1", "--max-rate", "20MB/s"];
    let mut first = orch.sender(&scratch, &file, &name, &args);
    let start = first.wait_event("start", WAIT, |v| v["event"] == "start");
    first.wait_event("10 MiB verified", WAIT, |v| {
        v["event"] == "progress" && v["bytes_done"].as_u64().unwrap_or(0) >= 10 << 20
    });
    first.kill();
    let mut again = if by_id {
        orch.resumer(&scratch, start["session_id"].as_str().unwrap())
    } else {
        orch.sender(&scratch, &file, &name, &[])
    };
    let out = again.wait(WAIT);
    assert_eq!(out.code, 0, "the second run failed: {}", out.stderr);
    let summary = out.summary();
    assert_eq!(summary["session_id"], start["session_id"], "{summary}");
    assert_eq!(relays_of(summary), [format!("{test}-r1")], "{summary}");
    assert!(
        summary["chunks_skipped"].as_u64().unwrap_or(0) >= 2,
        "the verified chunks stayed: {summary}"
    );
    assert!(
        summary["chunks_sent"].as_u64().unwrap() < summary["chunks_total"].as_u64().unwrap(),
        "only the missing chunks travelled: {summary}"
    );
    eprintln!(
        "resumed: {} of {} chunks sent, {} skipped",
        summary["chunks_sent"], summary["chunks_total"], summary["chunks_skipped"]
    );
    assert_eq!(receiver.wait(WAIT).code, 0);
    assert_same_file(&file, &scratch.dir("out").join("resumed.bin"));
}

#[test]
fn a_killed_sender_resumes_through_the_relay() {
    killed_sender_resumes("grid5", false);
}

#[test]
fn trackshift_resume_goes_through_the_relay() {
    killed_sender_resumes("grid6", true);
}
