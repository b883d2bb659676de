//! CI scenarios through the user-space link emulator, with the real `trackshift` binary: a random file crosses
//! the emulated `lossy` link (100 Mbit/s, 100 ms one-way, 5% random loss, 10 ms jitter) over TCP and over DCSP
//! (UDP), DCSP crosses a `flaky` link with outages, and DCSP carries on when the sender's address changes
//! mid-transfer. Each arrives byte-identical. Correctness tests: no speed assertions. Each is bounded in time
//! and cleans up (namespaces, processes, files) on failure.
//!
//! Needs root, /dev/net/tun and both binaries built (`cargo build -p trackshift-cli -p trackshift-netlab`,
//! or a plain `cargo build` at the workspace root).
#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is a failing test, with its message

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use trackshift_netlab::{locate_binary, Lab, LabConfig};

const SECRET: &str = "netlab-correctness";
/// Whole-test budget; the lab itself stops by itself a little later.
const BUDGET: Duration = Duration::from_secs(80);

/// A temp directory removed on drop (no extra dependencies in this shared package).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "ts-netlab-{tag}-{}-{}",
            std::process::id(),
            nanos()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Kills the child on drop (test failure or panic), so nothing outlives the test.
struct Reaped(Child, &'static str);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            eprintln!("killing {}", self.1);
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Incompressible pseudo-random bytes (xorshift64*), so `--compress auto` cannot shortcut the link.
fn random_file(path: &Path, len: usize, mut seed: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut block = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        for c in block.chunks_exact_mut(8) {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            c.copy_from_slice(&seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        let n = left.min(block.len());
        f.write_all(&block[..n]).unwrap();
        left -= n;
    }
    f.flush().unwrap();
}

/// The `addr` of a `{"event":"listening","addr":"IP:PORT",...}` line (kept dependency-free).
fn listening_addr(line: &str) -> Option<String> {
    let compact: String = line.chars().filter(|c| !c.is_whitespace()).collect();
    if !compact.contains(r#""event":"listening""#) {
        return None;
    }
    let rest = &compact[compact.find(r#""addr":""#)? + 8..];
    Some(rest[..rest.find('"')?].to_string())
}

fn wait_bounded(child: &mut Reaped, deadline: Instant) -> std::process::ExitStatus {
    loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "{} still running at the deadline",
            child.1
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn drain(mut r: impl Read + Send + 'static, tag: &'static str) {
    thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        for l in s.lines() {
            eprintln!("[{tag}] {l}");
        }
    });
}

/// A child's stdout, line by line as it comes (a reader thread feeds them), every line kept in order.
struct Lines {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
    /// Lines before this one were looked at by [`Lines::wait_event`].
    cursor: usize,
    /// The child closed its stdout (it exited).
    closed: bool,
}

impl Lines {
    fn read(stdout: impl Read + Send + 'static, tag: &'static str) -> Lines {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("[{tag}] {l}");
                let _ = tx.send(l);
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
            cursor: 0,
            closed: false,
        }
    }

    /// Takes the next line, waiting until `deadline`; false when none came or the stream ended.
    fn next(&mut self, deadline: Instant) -> bool {
        if self.closed {
            return false;
        }
        match self
            .rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(l) => {
                self.seen.push(l);
                true
            }
            Err(mpsc::RecvTimeoutError::Timeout) => false,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                self.closed = true;
                false
            }
        }
    }

    /// The next JSON event after those already looked at that `pred` accepts, waiting for it until `deadline`.
    fn wait_event(
        &mut self,
        deadline: Instant,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        loop {
            while self.cursor < self.seen.len() {
                self.cursor += 1;
                if let Ok(v) =
                    serde_json::from_str::<serde_json::Value>(&self.seen[self.cursor - 1])
                {
                    if pred(&v) {
                        return Some(v);
                    }
                }
            }
            if !self.next(deadline) {
                return None;
            }
        }
    }

    /// Reads to the end of the stream (the child exited and its reader saw EOF), bounded by `deadline`.
    fn read_to_end(&mut self, deadline: Instant, what: &str) {
        while self.next(deadline) {}
        assert!(self.closed, "{what}: stdout still open at the deadline");
    }

    /// What arrived so far, without waiting.
    fn take_ready(&mut self) {
        self.seen.extend(self.rx.try_iter());
    }

    fn events(&self) -> Vec<serde_json::Value> {
        self.seen
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn summary(&self) -> serde_json::Value {
        self.events()
            .into_iter()
            .rev()
            .find(|v| v["event"] == "summary")
            .unwrap_or(serde_json::Value::Null)
    }
}

/// What a transfer's `during` hook gets while the transfer runs.
struct Running<'a> {
    lab: &'a mut Lab,
    sender: &'a mut Lines,
    /// The receiver's output dir (the final file appears there only once its whole-file hash verified).
    out: &'a Path,
    deadline: Instant,
}

/// What one transfer through the lab produced.
struct Transfer {
    sender_summary: serde_json::Value,
    receiver_summary: serde_json::Value,
    /// Every JSON event each side printed, in order.
    sender_events: Vec<serde_json::Value>,
    receiver_events: Vec<serde_json::Value>,
    counters: trackshift_netlab::LabCounters,
}

/// Sends a `size`-byte random file from side a to side b with `send_args`; `during` runs once the transfer is
/// under way (e.g. to change the sender's address). Asserts success and byte identity.
fn transfer_through(
    tag: &str,
    cfg: LabConfig,
    size: usize,
    send_args: &[&str],
    during: impl FnOnce(Running<'_>),
) -> Transfer {
    transfer_through_with(tag, cfg, size, send_args, |_| {}, during, true)
}

/// [`transfer_through`] with a hook run on the lab before anything starts, and the sender's success optional
/// (when `expect_success` is false, the sender must fail and nothing is compared).
fn transfer_through_with(
    tag: &str,
    cfg: LabConfig,
    size: usize,
    send_args: &[&str],
    setup: impl FnOnce(&Lab),
    during: impl FnOnce(Running<'_>),
    expect_success: bool,
) -> Transfer {
    let deadline = Instant::now() + BUDGET;
    let trackshift = locate_binary("trackshift");
    let cfg = LabConfig {
        max_duration: BUDGET + Duration::from_secs(10),
        ..cfg
    };
    let mut lab = Lab::start(tag, cfg).unwrap();
    setup(&lab);

    // Kernel TCP under 5% random loss and 200 ms RTT: loss-based CUBIC would crawl (Mathis: ~0.3 Mbit/s);
    // pin BBR (this machine's default) in both namespaces so the TCP test stays well under a minute.
    for ns in [lab.ns_a(), lab.ns_b()] {
        let _ = trackshift_netlab::in_netns(ns, || {
            std::fs::write("/proc/sys/net/ipv4/tcp_congestion_control", "bbr")
        });
    }

    let work = TempDir::new("work");
    let src = work.path().join("random.bin");
    random_file(&src, size, 0x7ac5_41f7 ^ size as u64);
    let (state_a, state_b, out) = (
        TempDir::new("state-a"),
        TempDir::new("state-b"),
        TempDir::new("out"),
    );

    let mut rx = lab.command_in_b(&trackshift);
    rx.args([
        "receive",
        "--listen",
        &format!("{}:0", lab.addr_b()),
        "--output-dir",
    ])
    .arg(out.path())
    .args(["--secret", SECRET, "--state-dir"])
    .arg(state_b.path())
    .args(["--once", "--json", "--quiet"])
    // Two UDP sockets on the port, as a multi-core receiver runs by default: every transfer here also goes
    // through the kernel's steering by connection id (the address-change test from a new source address).
    .args(["--streams", "2"])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut receiver = Reaped(rx.spawn().unwrap(), "trackshift receive");
    drain(receiver.0.stderr.take().unwrap(), "receive stderr");

    // The `listening` line gives the port (bounded wait); every line is kept for the summary.
    let mut receiver_lines = Lines::read(receiver.0.stdout.take().unwrap(), "receive");
    receiver_lines
        .wait_event(
            deadline.min(Instant::now() + Duration::from_secs(15)),
            |v| v["event"] == "listening",
        )
        .expect("receiver never printed its listening line");
    let listen_addr = receiver_lines
        .seen
        .iter()
        .find_map(|l| listening_addr(l))
        .unwrap();

    let mut tx_cmd = lab.command_in_a(&trackshift);
    tx_cmd
        .arg("send")
        .arg(&src)
        .args(["--to", &listen_addr, "--secret", SECRET])
        .args(send_args)
        .arg("--state-dir")
        .arg(state_a.path())
        .args(["--json", "--quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut sender = Reaped(tx_cmd.spawn().unwrap(), "trackshift send");
    let mut sender_lines = Lines::read(sender.0.stdout.take().unwrap(), "send");
    drain(sender.0.stderr.take().unwrap(), "send stderr");
    during(Running {
        lab: &mut lab,
        sender: &mut sender_lines,
        out: out.path(),
        deadline,
    });

    let st = wait_bounded(&mut sender, deadline);
    eprintln!("send exited {st} after {:.1} s", t0.elapsed().as_secs_f64());
    if expect_success {
        assert!(st.success(), "trackshift send failed: {st}");
        let st = wait_bounded(&mut receiver, deadline);
        assert!(st.success(), "trackshift receive --once failed: {st}");

        let got = std::fs::read(out.path().join("random.bin")).expect("no file in the output dir");
        let want = std::fs::read(&src).unwrap();
        assert_eq!(got.len(), want.len(), "size differs");
        assert!(got == want, "content differs");
    } else {
        assert_eq!(
            st.code(),
            Some(1),
            "trackshift send should have failed with exit 1: {st}"
        );
    }

    // Both summaries are the last lines their processes printed: read each stdout to its end (the sender has
    // exited; so has the receiver when the transfer was to succeed, else what it printed so far is enough).
    sender_lines.read_to_end(deadline, "trackshift send");
    if expect_success {
        receiver_lines.read_to_end(deadline, "trackshift receive");
    } else {
        receiver_lines.take_ready();
    }
    let counters = lab.stop().unwrap();
    eprintln!("link counters: {counters:?}");
    Transfer {
        sender_summary: sender_lines.summary(),
        receiver_summary: receiver_lines.summary(),
        sender_events: sender_lines.events(),
        receiver_events: receiver_lines.events(),
        counters,
    }
}

#[test]
fn tcp_file_crosses_lossy_link_byte_identical() {
    let t = transfer_through(
        "ts-ltcp",
        LabConfig::profile("lossy"),
        32 << 20,
        &["--protocol", "tcp"],
        |_| {},
    );
    assert!(
        t.counters.a_to_b.dropped_random > 0,
        "the link should have dropped something: {:?}",
        t.counters.a_to_b
    );
}

#[test]
fn udp_file_crosses_lossy_link_byte_identical() {
    let t = transfer_through(
        "ts-ludp",
        LabConfig::profile("lossy"),
        64 << 20,
        &["--protocol", "udp"],
        |_| {},
    );
    assert!(
        t.counters.a_to_b.dropped_random > 0,
        "{:?}",
        t.counters.a_to_b
    );
    assert_eq!(t.sender_summary["protocol"], "udp", "{}", t.sender_summary);
    assert!(
        t.sender_summary["packets_retransmitted"]
            .as_u64()
            .unwrap_or(0)
            > 0
            || t.sender_summary["fec_recovered"].as_u64().unwrap_or(0) > 0,
        "5% loss must have been repaired somehow: {}",
        t.sender_summary
    );
}

#[test]
fn udp_file_crosses_outages_byte_identical() {
    // The flaky profile with its outages made frequent: 1.5 s down every 4 s, so a 64 MiB transfer at
    // 100 Mbit/s meets at least one.
    let mut cfg = LabConfig::profile("flaky");
    cfg.overrides.outage = Some("1500ms/4s".into());
    let t = transfer_through("ts-fudp", cfg, 64 << 20, &["--protocol", "udp"], |_| {});
    assert!(
        t.counters.a_to_b.dropped_outage > 0,
        "the transfer should have met an outage: {:?}",
        t.counters.a_to_b
    );
    assert_eq!(t.sender_summary["protocol"], "udp", "{}", t.sender_summary);
}

#[test]
fn udp_transfer_survives_an_address_change() {
    // 5 MiB chunks (the smallest), so the sender reports verified progress a few times a second at 80 Mbit/s.
    const SIZE: usize = 64 << 20;
    const CHUNKS: u64 = 13;
    let mut moved = None;
    let t = transfer_through(
        "ts-audp",
        LabConfig::profile("wan"),
        SIZE,
        &[
            "--protocol",
            "udp",
            "--max-rate",
            "80Mbit",
            "--streams",
            "2",
            "--chunk-size",
            "5MiB",
        ],
        |run| {
            // Data is flowing: the receiver verified a chunk (the sender's progress says so) but not all.
            let p = run
                .sender
                .wait_event(run.deadline, |v| {
                    v["event"] == "progress" && v["bytes_done"].as_u64().unwrap_or(0) > 0
                })
                .expect("no progress before the deadline");
            assert!(p["bytes_done"].as_u64().unwrap() < SIZE as u64, "{p}");
            let new = run.lab.addr_change().unwrap();
            eprintln!("side a moved to {new} after {p}");
            // The change is done and the file is not complete yet (it appears only once it verified whole).
            assert!(
                !run.out.join("random.bin").exists(),
                "the transfer ended before the address change"
            );
            moved = Some(new);
        },
    );
    let new = moved.unwrap().to_string();
    assert_eq!(t.sender_summary["protocol"], "udp", "{}", t.sender_summary);
    let peer_ip = |v: &serde_json::Value| {
        v["peer"]
            .as_str()
            .and_then(|p| p.rsplit_once(':'))
            .map(|(ip, _)| ip.to_string())
    };
    // The receiver finished the session with the sender at its new address.
    assert_eq!(
        peer_ip(&t.receiver_summary).as_deref(),
        Some(new.as_str()),
        "{}",
        t.receiver_summary
    );
    // The receiver followed the sender: the DCSP connection that saw the new address counted a path change.
    // When the control connection (TCP, bound to the old address) died with the change, the sender reconnected
    // and resumed the session on a new DCSP connection, started at the new address (path_changes 0 in the
    // summary); the path change is then in the `interrupted` event of the connection it replaced.
    let connections = t.sender_summary["connections"].as_u64().unwrap_or(0);
    let followed = t
        .receiver_events
        .iter()
        .filter(|v| v["event"] == "summary" || v["event"] == "interrupted")
        .map(|v| v["path_changes"].as_u64().unwrap_or(0))
        .max()
        .unwrap_or(0);
    assert!(
        followed >= 1,
        "no DCSP connection of the receiver followed the sender to {new}: {:?}",
        t.receiver_events
    );
    if connections > 1 {
        // The session resumed from the new address with what was verified before the change kept, and the rest
        // still to come: the change happened mid-transfer, and only unverified chunks travelled again.
        let resumed = t
            .receiver_events
            .iter()
            .find(|v| v["event"] == "session_start" && peer_ip(v).as_deref() == Some(new.as_str()))
            .unwrap_or_else(|| panic!("no session resumed from {new}: {:?}", t.receiver_events));
        let kept = resumed["chunks_verified"].as_u64().unwrap_or(0);
        assert!((1..CHUNKS).contains(&kept), "{resumed}");
        // The sender reconnected after a control-channel timeout and was told the same.
        assert!(
            t.sender_events.iter().any(|v| v["event"] == "retry"),
            "{:?}",
            t.sender_events
        );
        let accepted: Vec<u64> = t
            .sender_events
            .iter()
            .filter(|v| v["event"] == "accepted")
            .map(|v| v["chunks_verified"].as_u64().unwrap_or(0))
            .collect();
        assert_eq!(accepted.len() as u64, connections, "{accepted:?}");
        assert_eq!(accepted.last(), Some(&kept), "{accepted:?}");
    } else {
        assert!(
            t.receiver_summary["path_changes"].as_u64().unwrap_or(0) >= 1,
            "{}",
            t.receiver_summary
        );
    }
    // Progress went on after the change: the sender reported verified bytes beyond what it was told at its last
    // (re)connection, which for a resumed session came from the new address, so after the change.
    let last_accept = t
        .sender_events
        .iter()
        .rposition(|v| v["event"] == "accepted")
        .unwrap();
    let at_accept = t.sender_events[last_accept]["bytes_verified"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        t.sender_events[last_accept..]
            .iter()
            .any(|v| v["event"] == "progress" && v["bytes_done"].as_u64().unwrap_or(0) > at_accept),
        "no progress after the last connection: {:?}",
        t.sender_events
    );
    eprintln!(
        "connections {connections}, receiver summary: {}",
        t.receiver_summary
    );
}

/// Drops every UDP datagram arriving in side b (the receiver's namespace).
fn block_udp(lab: &Lab) {
    let st = lab
        .command_in_b("iptables")
        .args(["-A", "INPUT", "-p", "udp", "-j", "DROP"])
        .status()
        .expect("iptables is missing: run scripts/deps.sh (apt-get install iptables)");
    assert!(st.success(), "iptables failed: {st}");
}

#[test]
fn blocked_udp_falls_back_to_tcp_unless_udp_was_asked_for() {
    // Default protocol: DCSP gets no answer, the sender says so in one line and finishes over TCP.
    let t = transfer_through_with(
        "ts-fb",
        LabConfig::profile("clean"),
        8 << 20,
        &[],
        block_udp,
        |_| {},
        true,
    );
    assert_eq!(t.sender_summary["protocol"], "tcp", "{}", t.sender_summary);
    // Explicit --protocol udp: exit 1 with a clear error instead.
    let t = transfer_through_with(
        "ts-nofb",
        LabConfig::profile("clean"),
        8 << 20,
        &["--protocol", "udp", "--retry-for", "20s"],
        block_udp,
        |_| {},
        false,
    );
    let error = t.sender_summary["error"].as_str().unwrap_or_default();
    assert!(error.contains("no UDP answer"), "{}", t.sender_summary);
}
