//! The edge grid in network namespaces, every part a real binary: `trackshift send` in side a, the lab's
//! emulated link (a mild `wan`: 100 Mbit/s, 10 ms one way, 0.5% random loss), `trackshift orchestrator` (SQLite
//! in a temp state dir) and two or three `trackshift relay`s in side b, each on an address of its own, and
//! `trackshift receive --orchestrator` with no `--listen` in side c, which hangs off side b by a plain veth:
//!
//! ```text
//!   ns a: sender 198.18.0.1 ══ emulated link ══ ns b: orchestrator 198.18.1.10:7070, relays 198.18.1.11.. :7100
//!                                               ns b 198.18.2.1 ── veth ── ns c: receiver 198.18.2.2
//! ```
//!
//! Sides a and c have no route to each other and side b forwards nothing (each test checks it first), so the
//! file can only go through the relays. Each test has its own lab, names and dirs; each arrives byte-identical:
//! through one relay, striped over two, through the standby after the busy relay is SIGKILLed, across an
//! orchestrator SIGKILLed and restarted mid-transfer, and through a two-hop chain (relay → relay `--forward`). Correctness only, no speed assertions; every wait is
//! bounded and everything (processes, namespaces, files) is cleaned up on failure.
//!
//! Needs root, /dev/net/tun and the binaries built (`cargo build -p trackshift-cli -p trackshift-netlab`).
#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is a failing test, with its message

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use trackshift_grid::api::{RelayInfo, SessionRecord};
use trackshift_grid_client::OrchestratorClient;
use trackshift_netlab::{in_netns, Lab, LabConfig, LinkOverrides};
use trackshift_scenarios::grid::{relay, relays_of, Orchestrator};
use trackshift_scenarios::{
    assert_same_file, random_file, trackshift_in, wait_until, Output, Proc, Scratch, MIB,
};

const SECRET: &str = "netlab grid secret";
/// The bound on any one wait (a transfer, a process start, an event).
const WAIT: Duration = Duration::from_secs(90);
/// The lab stops by itself after this, whatever happens to the test.
const LAB_LIFETIME: Duration = Duration::from_secs(180);
/// The orchestrator's address in side b (a fixed port: the namespaces are the test's own).
const ORCHESTRATOR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
const ORCHESTRATOR_PORT: u16 = 7070;
/// Relay `i` listens on 198.18.1.(11 + i), UDP and TCP.
const FIRST_RELAY_HOST: u8 = 11;
const RELAY_PORT: u16 = 7100;
/// Small chunks, so progress (verified chunks) comes several times a second.
const CHUNK: &str = "5MiB";
/// A cap for the transfers something happens in the middle of: 48 MiB take about 10 s.
const SLOW: &str = "40Mbit";

/// One grid: the lab (sides a, b, c), the orchestrator and the relays in side b, an admin token.
struct Grid {
    /// Declared first, dropped first: the processes die before the lab removes their namespaces.
    relays: Vec<(String, Proc)>,
    orchestrator: Orchestrator,
    admin: String,
    lab: Lab,
    scratch: Scratch,
    tag: String,
}

impl Grid {
    /// A lab with side c, checked to be isolated, then the orchestrator and `relays` relays in side b.
    fn start(tag: &str, relays: usize) -> Grid {
        let lab = Lab::start(tag, lab_config()).unwrap();
        assert_isolated(&lab);
        let scratch = Scratch::new(tag);
        lab.add_addr_b(ORCHESTRATOR).unwrap();
        let listen = format!("{ORCHESTRATOR}:{ORCHESTRATOR_PORT}");
        let orchestrator = Orchestrator::start(Some(lab.ns_b()), &listen, &scratch.dir("orch"));
        let admin = orchestrator.token("admin", "netlab-test");
        let mut grid = Grid {
            relays: Vec::new(),
            orchestrator,
            admin,
            lab,
            scratch,
            tag: tag.to_owned(),
        };
        for i in 0..relays {
            grid.add_relay(i, &[]);
        }
        grid
    }

    /// Relay `i` (`<tag>-r<i>`) on its own address in side b, with `extra` arguments.
    fn add_relay(&mut self, i: usize, extra: &[&str]) -> String {
        let addr = relay_addr(i);
        self.lab.add_addr_b(addr).unwrap();
        let id = format!("{}-r{i}", self.tag);
        let listen = format!("{addr}:{RELAY_PORT}");
        let (proc, _) = relay(
            Some(self.lab.ns_b()),
            &listen,
            &self.orchestrator,
            &id,
            extra,
        );
        self.relays.push((id.clone(), proc));
        id
    }

    fn relay_ids(&self) -> Vec<String> {
        self.relays.iter().map(|(id, _)| id.clone()).collect()
    }

    fn relay_proc(&mut self, id: &str) -> &mut Proc {
        let at = self.relays.iter().position(|(i, _)| i == id);
        &mut self.relays[at.unwrap_or_else(|| panic!("no relay {id}"))].1
    }

    /// `trackshift receive --orchestrator … --name NAME --once` in side c (no `--listen`), once it is up.
    fn receiver(&self, name: &str) -> Proc {
        let token = self.orchestrator.token("receiver", name);
        let ns = self.lab.ns_c().unwrap();
        let mut cmd = trackshift_in(
            Some(ns),
            [
                "receive",
                "--orchestrator",
                &self.orchestrator.url,
                "--token",
                &token,
                "--name",
                name,
                "--secret",
                SECRET,
                "--once",
                "--json",
            ],
        );
        cmd.arg("--output-dir")
            .arg(self.out_dir())
            .arg("--state-dir")
            .arg(self.scratch.dir("recv-state"));
        let mut receiver = Proc::spawn("receiver", cmd);
        receiver.wait_event("the receiver's listening line", WAIT, |v| {
            v["event"] == "listening"
        });
        receiver
    }

    /// `trackshift send FILE --to NAME --orchestrator …` in side a, started.
    fn sender(&self, file: &Path, to: &str, extra: &[&str]) -> Proc {
        let token = self.orchestrator.token("sender", "netlab-sender");
        let mut cmd = trackshift_in(
            Some(self.lab.ns_a()),
            [
                "send",
                file.to_str().unwrap(),
                "--to",
                to,
                "--orchestrator",
                &self.orchestrator.url,
                "--token",
                &token,
                "--secret",
                SECRET,
                "--chunk-size",
                CHUNK,
                "--json",
            ],
        );
        cmd.args(extra)
            .arg("--state-dir")
            .arg(self.scratch.dir("send-state"));
        Proc::spawn("sender", cmd)
    }

    fn out_dir(&self) -> PathBuf {
        self.scratch.dir("out")
    }

    /// A random file of `mib` MiB in the scratch dir.
    fn file(&self, name: &str, mib: u64, seed: u64) -> PathBuf {
        random_file(&self.scratch.file(name), mib * MIB, seed)
    }

    /// Calls the orchestrator's API as admin, from side b (the test process itself is outside the lab).
    fn api<T: Send>(
        &self,
        call: impl FnOnce(&OrchestratorClient) -> Result<T, trackshift_grid_client::ClientError> + Send,
    ) -> T {
        let (url, token) = (self.orchestrator.url.clone(), self.admin.clone());
        in_netns(self.lab.ns_b(), move || {
            let client = OrchestratorClient::new(&url, &token, None).unwrap();
            call(&client).unwrap()
        })
        .unwrap()
    }

    fn session(&self, id: &str) -> SessionRecord {
        let id = id.to_owned();
        self.api(move |c| c.session(&id))
    }

    fn relays_listed(&self) -> Vec<RelayInfo> {
        self.api(|c| c.relays())
    }

    /// Waits for the sender and the receiver to finish, checks both succeeded and the file arrived whole;
    /// returns the sender's output.
    fn finish(&self, mut sender: Proc, mut receiver: Proc, file: &Path) -> Output {
        let sent = sender.wait(WAIT);
        assert_eq!(sent.code, 0, "send failed: {}", sent.stderr);
        let received = receiver.wait(WAIT);
        assert_eq!(received.code, 0, "receive failed: {}", received.stderr);
        assert_same_file(file, &self.out_dir().join(file.file_name().unwrap()));
        sent
    }
}

/// A mild `wan`: delay and some loss, fast enough that the tests stay short.
fn lab_config() -> LabConfig {
    LabConfig {
        overrides: LinkOverrides {
            rate: Some("100Mbit".into()),
            delay: Some("10ms".into()),
            loss: Some("0.5%".into()),
            ..LinkOverrides::default()
        },
        max_duration: LAB_LIFETIME,
        side_c: true,
        ..LabConfig::profile("wan")
    }
}

fn relay_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, FIRST_RELAY_HOST + u8::try_from(i).unwrap())
}

/// Sender (a) and receiver (c) cannot reach each other, and side b forwards nothing: only the relays join them.
fn assert_isolated(lab: &Lab) {
    let c = lab.addr_c().unwrap();
    let ns_c = lab.ns_c().unwrap();
    for (ns, to) in [(lab.ns_a(), c), (ns_c, lab.addr_a())] {
        let to = SocketAddr::from((to, RELAY_PORT));
        let tried = in_netns(ns, || {
            TcpStream::connect_timeout(&to, Duration::from_secs(2))
        })
        .unwrap();
        let err = tried.expect_err("a connection across the grid without a relay");
        assert_eq!(
            err.kind(),
            ErrorKind::NetworkUnreachable,
            "{ns} -> {to}: {err}"
        );
    }
    let forwarding = in_netns(lab.ns_b(), || {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
    })
    .unwrap()
    .unwrap();
    assert_eq!(forwarding.trim(), "0", "side b must not forward");
}

fn session_id(sender: &mut Proc) -> String {
    let start = sender.wait_event("the sender's start line", WAIT, |v| v["event"] == "start");
    start["session_id"].as_str().unwrap().to_owned()
}

/// Waits until the receiver verified some chunks but not all: the first `progress` with bytes done.
fn some_verified(sender: &mut Proc, size: u64) -> u64 {
    let p = sender.wait_event("verified chunks", WAIT, |v| {
        v["event"] == "progress" && v["bytes_done"].as_u64().unwrap_or(0) > 0
    });
    let done = p["bytes_done"].as_u64().unwrap();
    assert!(
        done < size,
        "the transfer ended before anything happened: {p}"
    );
    done
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The session went on where it was: one `start`, one session id, no fresh start, and no `progress` after
/// `from` (the bytes verified when something happened) fell back below it.
fn assert_same_session(out: &Output, id: &str, from: u64) {
    let starts = out.events.iter().filter(|v| v["event"] == "start").count();
    assert_eq!(starts, 1, "{:?}", out.events);
    assert_eq!(out.summary()["session_id"], id, "{}", out.summary());
    assert!(
        !out.events
            .iter()
            .any(|v| v["event"] == "changed_since" || v["event"] == "resuming"),
        "{:?}",
        out.events
    );
    let progress: Vec<u64> = out
        .events
        .iter()
        .filter(|v| v["event"] == "progress")
        .filter_map(|v| v["bytes_done"].as_u64())
        .skip_while(|&b| b < from)
        .collect();
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]) && progress.iter().all(|&b| b >= from),
        "progress fell back after {from}: {progress:?}"
    );
}

fn stripe_ids(record: &SessionRecord) -> Vec<String> {
    record
        .path
        .stripes
        .iter()
        .map(|s| s.relay_id.clone())
        .collect()
}

#[test]
fn a_file_arrives_through_one_relay() {
    let grid = Grid::start("ng-one", 2);
    let receiver = grid.receiver("ng-one-rx");
    let file = grid.file("one.bin", 32, 1);
    let mut sender = grid.sender(&file, "ng-one-rx", &["--streams", "1"]);
    let id = session_id(&mut sender);
    let out = grid.finish(sender, receiver, &file);
    let used = relays_of(out.summary());
    assert_eq!(used.len(), 1, "{}", out.summary());
    assert_eq!(
        used,
        stripe_ids(&grid.session(&id)),
        "the path it was given"
    );
    assert!(grid.relay_ids().contains(&used[0]), "{used:?}");
}

#[test]
fn a_file_is_striped_over_two_relays() {
    let grid = Grid::start("ng-stripe", 3);
    let receiver = grid.receiver("ng-stripe-rx");
    let file = grid.file("striped.bin", 32, 2);
    let mut sender = grid.sender(&file, "ng-stripe-rx", &["--streams", "2", "--relays", "2"]);
    let id = session_id(&mut sender);
    let out = grid.finish(sender, receiver, &file);
    let used = sorted(relays_of(out.summary()));
    assert_eq!(used.len(), 2, "both stripes carried it: {}", out.summary());
    assert_eq!(used, sorted(stripe_ids(&grid.session(&id))));
}

/// A transfer with something happening in the middle: 48 MiB capped at 40 Mbit/s (about 10 s) through a grid of
/// two relays, caught once the receiver verified some chunks.
struct Midway {
    /// Declared before the grid: dropped (killed) first.
    sender: Proc,
    receiver: Proc,
    grid: Grid,
    file: PathBuf,
    session_id: String,
    /// Bytes verified when it was caught.
    before: u64,
}

impl Midway {
    const MIB_SENT: u64 = 48;

    fn start(tag: &str, seed: u64) -> Midway {
        let grid = Grid::start(tag, 2);
        let rx = format!("{tag}-rx");
        let receiver = grid.receiver(&rx);
        let file = grid.file("big.bin", Self::MIB_SENT, seed);
        let mut sender = grid.sender(&file, &rx, &["--streams", "1", "--max-rate", SLOW]);
        let session_id = session_id(&mut sender);
        let before = some_verified(&mut sender, Self::MIB_SENT * MIB);
        Midway {
            sender,
            receiver,
            grid,
            file,
            session_id,
            before,
        }
    }

    /// Both ends succeed, the file arrives whole, in the same session; returns the sender's output.
    fn finish(self) -> (Grid, Output) {
        let out = self.grid.finish(self.sender, self.receiver, &self.file);
        assert_same_session(&out, &self.session_id, self.before);
        (self.grid, out)
    }
}

#[test]
fn a_killed_relay_fails_over_to_the_standby_in_the_same_session() {
    let mut run = Midway::start("ng-kill", 3);
    let path = run.grid.session(&run.session_id).path;
    let busy = path.stripes[0].relay_id.clone();
    let standby = path.standby.expect("a standby relay").relay_id;
    assert_ne!(busy, standby);
    run.grid.relay_proc(&busy).kill();
    let failover = run
        .sender
        .wait_event("relay_failover", WAIT, |v| v["event"] == "relay_failover");
    assert_eq!(failover["lost"], busy.as_str(), "{failover}");
    let before = run.before;
    run.sender
        .wait_event("progress through the standby", WAIT, |v| {
            v["event"] == "progress" && v["bytes_done"].as_u64().unwrap_or(0) > before
        });
    let (_grid, out) = run.finish();
    assert_eq!(
        sorted(relays_of(out.summary())),
        sorted(vec![busy, standby]),
        "both relays carried part"
    );
}

#[test]
fn a_transfer_goes_on_across_an_orchestrator_restart() {
    let mut run = Midway::start("ng-orch", 4);
    let verified_before = run.grid.session(&run.session_id).chunks_verified;
    let old = run.grid.orchestrator.kill();
    assert_eq!(old.code, -1, "SIGKILLed");
    // Down until every relay noticed (a heartbeat failed), then back on the same address and state dir.
    wait_until(
        "every relay missing the orchestrator",
        WAIT,
        Duration::from_millis(200),
        || {
            run.grid
                .relays
                .iter()
                .all(|(_, r)| r.stderr().contains("relay heartbeat failed"))
                .then_some(())
        },
    );
    run.grid.orchestrator.restart();
    // Every relay finds the orchestrator back and registers again with the new process.
    let ids = sorted(run.grid.relay_ids());
    wait_until(
        "the relays registering again",
        WAIT,
        Duration::from_millis(200),
        || {
            let mut seen = run.grid.orchestrator.registered_relays();
            seen.sort();
            seen.dedup();
            (seen == ids).then_some(())
        },
    );
    let id = run.session_id.clone();
    let (grid, _) = run.finish();
    // The restarted orchestrator still has the session, and the chunks verified since were reported to it.
    let record = grid.session(&id);
    assert!(
        record.chunks_verified > verified_before,
        "{verified_before} chunks verified before the restart, {} after: {record:?}",
        record.chunks_verified
    );
    let listed = grid.relays_listed();
    assert_eq!(
        listed.iter().filter(|r| r.healthy).count(),
        ids.len(),
        "{listed:?}"
    );
}

/// A two-hop path, as the orchestrator makes one: the exit relay registers first, then the entry with `--forward`
/// to the exit's address, and every session goes entry → exit. The sender (side a) binds at the entry, the
/// receiver (side c) at the exit; the entry reaches the exit inside side b.
#[test]
fn a_file_arrives_through_a_two_hop_chain() {
    let mut grid = Grid::start("ng-2hop", 0);
    let exit = grid.add_relay(0, &[]);
    let exit_addr = format!("{}:{RELAY_PORT}", relay_addr(0));
    let entry = grid.add_relay(1, &["--forward", &exit_addr]);
    let receiver = grid.receiver("ng-2hop-rx");
    let file = grid.file("chained.bin", 32, 5);
    let mut sender = grid.sender(&file, "ng-2hop-rx", &["--streams", "2"]);
    let id = session_id(&mut sender);
    let out = grid.finish(sender, receiver, &file);
    assert_eq!(
        relays_of(out.summary()),
        [entry.as_str()],
        "the stripe is named by its entry"
    );
    let path = grid.session(&id).path;
    let hop = path.stripes[0].exit.as_ref().expect("the exit hop");
    assert_eq!(path.stripes[0].relay_id, entry);
    assert_eq!(
        (hop.relay_id.as_str(), hop.addr.as_str()),
        (exit.as_str(), exit_addr.as_str())
    );
    assert!(
        path.reason.contains(&format!("two hops {entry}>{exit}")),
        "{}",
        path.reason
    );
    // Both relays carried the whole file.
    for id in [&entry, &exit] {
        let stopped = grid.relay_proc(id).terminate(WAIT);
        let line = stopped.event("relay_stopped").expect("relay_stopped");
        let bytes = line["bytes_forwarded"].as_u64().unwrap_or(0);
        assert!(bytes > 32 * MIB, "{id} forwarded {bytes} bytes: {line}");
    }
}
