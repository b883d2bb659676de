//! CI scenario: a 32 MiB random file crosses the emulated `lossy` link (100 Mbit/s, 100 ms one-way,
//! 5% random loss, 10 ms jitter) with the real `trackshift` binary, TCP data path, and arrives
//! byte-identical. A correctness test: no speed assertion. Bounded (~50 s), cleans up on failure.
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

const FILE_SIZE: usize = 32 << 20;
const SECRET: &str = "netlab-lossy-correctness";
/// Whole-test budget; the lab itself stops by itself a little later.
const BUDGET: Duration = Duration::from_secs(50);

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

#[test]
fn file_crosses_lossy_link_byte_identical() {
    let deadline = Instant::now() + BUDGET;
    let trackshift = locate_binary("trackshift");
    let cfg = LabConfig {
        max_duration: BUDGET + Duration::from_secs(10),
        ..LabConfig::profile("lossy")
    };
    let lab = Lab::start("ts-lossy", cfg).unwrap();

    // Kernel TCP under 5% random loss and 200 ms RTT: loss-based CUBIC would crawl (Mathis: ~0.3 Mbit/s);
    // pin BBR (this machine's default) in both namespaces so the test stays well under a minute.
    for ns in [lab.ns_a(), lab.ns_b()] {
        let _ = trackshift_netlab::in_netns(ns, || {
            std::fs::write("/proc/sys/net/ipv4/tcp_congestion_control", "bbr")
        });
    }

    let work = TempDir::new("work");
    let src = work.path().join("random-32MiB.bin");
    random_file(&src, FILE_SIZE, 0x7ac5_41f7);
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
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut receiver = Reaped(rx.spawn().unwrap(), "trackshift receive");
    drain(receiver.0.stderr.take().unwrap(), "receive stderr");

    // The `listening` line gives the port (bounded wait).
    let (tx, lines) = mpsc::channel();
    let stdout = receiver.0.stdout.take().unwrap();
    thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("[receive] {l}");
            let _ = tx.send(l);
        }
    });
    let listen_addr = loop {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(15));
        let line = lines
            .recv_timeout(left)
            .expect("receiver never printed its listening line");
        if let Some(addr) = listening_addr(&line) {
            break addr;
        }
    };

    let mut tx_cmd = lab.command_in_a(&trackshift);
    tx_cmd
        .arg("send")
        .arg(&src)
        .args([
            "--to",
            &listen_addr,
            "--secret",
            SECRET,
            "--protocol",
            "tcp",
            "--state-dir",
        ])
        .arg(state_a.path())
        .args(["--json", "--quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut sender = Reaped(tx_cmd.spawn().unwrap(), "trackshift send");
    drain(sender.0.stdout.take().unwrap(), "send");
    drain(sender.0.stderr.take().unwrap(), "send stderr");

    let st = wait_bounded(&mut sender, deadline);
    eprintln!("send exited {st} after {:.1} s", t0.elapsed().as_secs_f64());
    assert!(st.success(), "trackshift send failed: {st}");
    let st = wait_bounded(&mut receiver, deadline);
    assert!(st.success(), "trackshift receive --once failed: {st}");

    let got =
        std::fs::read(out.path().join("random-32MiB.bin")).expect("no file in the output dir");
    let want = std::fs::read(&src).unwrap();
    assert_eq!(got.len(), want.len(), "size differs");
    assert!(got == want, "content differs");

    let c = lab.stop().unwrap();
    eprintln!("link counters: {c:?}");
    assert!(
        c.a_to_b.dropped_random > 0,
        "the link should have dropped something: {:?}",
        c.a_to_b
    );
}
