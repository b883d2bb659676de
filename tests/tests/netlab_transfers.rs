//! CI scenarios through the user-space link emulator, with the real `trackshift` binary: a random file crosses
//! the emulated `lossy` link (100 Mbit/s, 100 ms one-way, 5% random loss, 10 ms jitter) over TCP and over DCSP
//! (UDP), DCSP crosses a `flaky` link with outages, and DCSP carries on when the sender's address changes
//! mid-transfer. Each arrives byte-identical. Correctness tests: no speed assertions. Each is bounded in time
//! and cleans up (namespaces, processes, files) on failure.
//!
//! Needs root, /dev/net/tun and both binaries built (`cargo build -p trackshift-cli -p trackshift-netlab`,
//! or a plain `cargo build` at the workspace root).
#![allow(clippy::unwrap_used)]

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

/// What one transfer through the lab produced.
struct Transfer {
    sender_summary: serde_json::Value,
    receiver_summary: serde_json::Value,
    counters: trackshift_netlab::LabCounters,
}

fn summary_of(lines: &[String]) -> serde_json::Value {
    lines
        .iter()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "summary")
        .unwrap_or(serde_json::Value::Null)
}

/// Sends a `size`-byte random file from side a to side b with `send_args`; `during` runs once the transfer is
/// under way (e.g. to change the sender's address). Asserts success and byte identity.
fn transfer_through(
    tag: &str,
    cfg: LabConfig,
    size: usize,
    send_args: &[&str],
    during: impl FnOnce(&mut Lab),
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
    during: impl FnOnce(&mut Lab),
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
    let (tx, lines) = mpsc::channel();
    let stdout = receiver.0.stdout.take().unwrap();
    thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("[receive] {l}");
            let _ = tx.send(l);
        }
    });
    let mut receiver_lines = Vec::new();
    let listen_addr = loop {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(15));
        let line = lines
            .recv_timeout(left)
            .expect("receiver never printed its listening line");
        let addr = listening_addr(&line);
        receiver_lines.push(line);
        if let Some(addr) = addr {
            break addr;
        }
    };

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
    let (stx, sender_lines) = mpsc::channel();
    let sout = sender.0.stdout.take().unwrap();
    thread::spawn(move || {
        for l in BufReader::new(sout).lines().map_while(Result::ok) {
            eprintln!("[send] {l}");
            let _ = stx.send(l);
        }
    });
    drain(sender.0.stderr.take().unwrap(), "send stderr");
    during(&mut lab);

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

    thread::sleep(Duration::from_millis(200));
    receiver_lines.extend(lines.try_iter());
    let sender_lines: Vec<String> = sender_lines.try_iter().collect();
    let counters = lab.stop().unwrap();
    eprintln!("link counters: {counters:?}");
    Transfer {
        sender_summary: summary_of(&sender_lines),
        receiver_summary: summary_of(&receiver_lines),
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
    let t = transfer_through(
        "ts-audp",
        LabConfig::profile("wan"),
        64 << 20,
        &[
            "--protocol",
            "udp",
            "--max-rate",
            "80Mbit",
            "--streams",
            "2",
        ],
        |lab| {
            thread::sleep(Duration::from_secs(2));
            let new = lab.addr_change().unwrap();
            eprintln!("side a moved to {new}");
        },
    );
    assert_eq!(t.sender_summary["protocol"], "udp", "{}", t.sender_summary);
    // Either the data plane followed the sender (a path change) or the control channel reconnected and the
    // session resumed on a new DCSP connection; both must deliver the same bytes.
    eprintln!("receiver summary: {}", t.receiver_summary);
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
