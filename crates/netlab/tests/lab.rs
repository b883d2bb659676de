//! Integration tests: real namespaces, real TUN devices, the real `trackshift-netlab` binary.
//! Needs root and /dev/net/tun.
#![allow(
    clippy::unwrap_used,
    reason = "a test that unwraps fails with the error; clippy.toml's allow-unwrap-in-tests covers #[test] \
              functions only, not this file's helpers"
)]

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use trackshift_netlab::{Lab, LabConfig, LinkOverrides};

fn config(profile: Option<&str>, overrides: LinkOverrides, max: Duration) -> LabConfig {
    LabConfig {
        profile: profile.map(str::to_string),
        overrides,
        max_duration: max,
        binary: Some(env!("CARGO_BIN_EXE_trackshift-netlab").into()),
        ..LabConfig::default()
    }
}

fn netns_list() -> String {
    let out = Command::new("/usr/sbin/ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_gone(ns: &[String]) {
    let list = netns_list();
    for n in ns {
        assert!(
            !list.lines().any(|l| l.split_whitespace().next() == Some(n)),
            "{n} left behind:\n{list}"
        );
    }
}

/// A UDP echo server in namespace b that also reports each peer address it saw.
struct Echo {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    peers: std::sync::mpsc::Receiver<SocketAddr>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Echo {
    fn start(lab: &Lab) -> Echo {
        let sock = lab
            .run_in_b(|| UdpSocket::bind((lab.addr_b(), 0)))
            .unwrap()
            .unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, peers) = std::sync::mpsc::channel();
        let s = stop.clone();
        let handle = thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = tx.send(from);
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        Echo {
            addr,
            stop,
            peers,
            handle: Some(handle),
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[test]
fn lossy_link_delays_and_drops_udp_then_cleans_up() {
    let lab = Lab::start(
        "nl-lossy",
        config(
            Some("lossy"),
            LinkOverrides::default(),
            Duration::from_secs(60),
        ),
    )
    .unwrap();
    let names = [lab.ns_a().to_string(), lab.ns_b().to_string()];
    assert!(netns_list().contains(&names[0]));
    let echo = Echo::start(&lab);
    let client = lab
        .run_in_a(|| UdpSocket::bind("0.0.0.0:0"))
        .unwrap()
        .unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();

    // 400 probes, one every 5 ms, each carrying its index; a second thread collects the echoes.
    const N: usize = 400;
    let receiver = client.try_clone().unwrap();
    let collector = thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        let end = Instant::now() + Duration::from_millis(5 * N as u64 + 800);
        while Instant::now() < end {
            if let Ok((4, _)) = receiver.recv_from(&mut buf) {
                got.push((
                    u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize,
                    Instant::now(),
                ));
            }
        }
        got
    });
    let t0 = Instant::now();
    let mut sent_at = Vec::with_capacity(N);
    for i in 0..N {
        if let Some(d) =
            (t0 + Duration::from_millis(5 * i as u64)).checked_duration_since(Instant::now())
        {
            thread::sleep(d);
        }
        sent_at.push(Instant::now());
        client
            .send_to(&(i as u32).to_be_bytes(), echo.addr)
            .unwrap();
    }
    let mut rtts: Vec<Duration> = collector
        .join()
        .unwrap()
        .into_iter()
        .map(|(k, at)| at - sent_at[k])
        .collect();
    drop(echo);
    let got = rtts.len() as f64 / N as f64;
    rtts.sort();
    let median = rtts[rtts.len() / 2];
    eprintln!(
        "received {}/{N}, RTT min {:?} median {median:?} max {:?}",
        rtts.len(),
        rtts[0],
        rtts[rtts.len() - 1]
    );
    // 5% each way: ~90% of round trips survive.
    assert!((0.82..0.97).contains(&got), "delivered fraction {got}");
    // One-way 100 ms ±10 ms jitter (never reordered, so skewed a little upwards): RTT ~200-215 ms.
    assert!(
        median >= Duration::from_millis(195) && median <= Duration::from_millis(225),
        "median RTT {median:?}"
    );
    assert!(
        rtts[0] >= Duration::from_millis(180),
        "min RTT {:?}",
        rtts[0]
    );

    let c = lab.stop().unwrap();
    eprintln!("{c:?}");
    assert!(c.a_to_b.packets_in >= N as u64);
    assert!(c.a_to_b.dropped_random > 0 && c.b_to_a.dropped_random > 0);
    assert_eq!(c.a_to_b.forwarded + c.a_to_b.dropped(), c.a_to_b.packets_in);
    assert_gone(&names);
}

#[test]
fn address_change_moves_side_a() {
    let mut lab = Lab::start(
        "nl-roam",
        config(
            Some("clean"),
            LinkOverrides::default(),
            Duration::from_secs(60),
        ),
    )
    .unwrap();
    let echo = Echo::start(&lab);
    let client = lab
        .run_in_a(|| UdpSocket::bind("0.0.0.0:0"))
        .unwrap()
        .unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 16];

    client.send_to(b"one", echo.addr).unwrap();
    assert_eq!(client.recv_from(&mut buf).unwrap().0, 3);
    assert_eq!(
        echo.peers
            .recv_timeout(Duration::from_secs(2))
            .unwrap()
            .ip(),
        lab.addr_a()
    );
    assert_eq!(lab.addr_a().to_string(), "198.18.0.1");

    let new = lab.addr_change().unwrap();
    assert_eq!(new.to_string(), "198.18.0.2");
    assert_eq!(lab.addr_a(), new);
    // The same socket (bound to 0.0.0.0) now sends from the new address, and replies reach it.
    client.send_to(b"two", echo.addr).unwrap();
    assert_eq!(client.recv_from(&mut buf).unwrap().0, 3);
    assert_eq!(
        echo.peers
            .recv_timeout(Duration::from_secs(2))
            .unwrap()
            .ip(),
        new
    );
    let out = lab
        .command_in_a("/usr/sbin/ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("198.18.0.2/24") && !text.contains("198.18.0.1/"),
        "{text}"
    );
    drop(echo);
    lab.stop().unwrap();
}

#[test]
fn rate_limit_caps_throughput() {
    let o = LinkOverrides {
        rate: Some("20Mbit".into()),
        queue: Some("50ms".into()),
        ..Default::default()
    };
    let lab = Lab::start("nl-rate", config(None, o, Duration::from_secs(60))).unwrap();
    let rx = lab
        .run_in_b(|| UdpSocket::bind((lab.addr_b(), 0)))
        .unwrap()
        .unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let to = rx.local_addr().unwrap();
    let tx = lab
        .run_in_a(|| UdpSocket::bind("0.0.0.0:0"))
        .unwrap()
        .unwrap();
    // Offer ~40 Mbit/s for 1 s: 1 ms bursts of 4 x 1250 bytes.
    let sender = thread::spawn(move || {
        let t0 = Instant::now();
        let pkt = [0u8; 1222]; // + 28 bytes of headers = 1250-byte IP packets
        for ms in 0..1000u64 {
            for _ in 0..4 {
                let _ = tx.send_to(&pkt, to);
            }
            let next = t0 + Duration::from_millis(ms + 1);
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                thread::sleep(d);
            }
        }
    });
    let mut buf = [0u8; 2048];
    let (mut first, mut last, mut bytes) = (None, Instant::now(), 0u64);
    while let Ok(n) = rx.recv(&mut buf) {
        let now = Instant::now();
        if first.is_none() {
            first = Some(now);
        } else {
            bytes += n as u64 + 28;
        }
        last = now;
    }
    sender.join().unwrap();
    let secs = (last - first.unwrap()).as_secs_f64();
    let mbit = bytes as f64 * 8.0 / secs / 1e6;
    eprintln!("received {bytes} bytes in {secs:.3} s = {mbit:.2} Mbit/s");
    assert!(
        (18.0..21.0).contains(&mbit),
        "{mbit} Mbit/s through a 20 Mbit/s link"
    );
    let c = lab.stop().unwrap();
    assert!(c.a_to_b.dropped_queue > 1000, "{:?}", c.a_to_b);
}

#[test]
fn drop_and_max_duration_leave_nothing_behind() {
    // Dropped without stop(): SIGTERM, then cleanup.
    let lab = Lab::start(
        "nl-drop",
        config(
            Some("wan"),
            LinkOverrides::default(),
            Duration::from_secs(60),
        ),
    )
    .unwrap();
    let names = [lab.ns_a().to_string(), lab.ns_b().to_string()];
    drop(lab);
    assert_gone(&names);

    // The emulator ends by itself at --max-duration and cleans up.
    let lab = Lab::start(
        "nl-max",
        config(
            Some("sat"),
            LinkOverrides::default(),
            Duration::from_secs(2),
        ),
    )
    .unwrap();
    let names = [lab.ns_a().to_string(), lab.ns_b().to_string()];
    let t0 = Instant::now();
    while names
        .iter()
        .any(|n| std::path::Path::new("/run/netns").join(n).exists())
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "still there after max-duration"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let c = lab.stop().unwrap();
    // The emulator counts its seconds from when the link is up, a little after the clock of --max-duration
    // starts; on a loaded 2-core machine that gap reaches a few hundred ms.
    assert!(c.seconds >= 1.0 && c.seconds < 5.0, "{c:?}");

    // SIGKILLed emulator: `down` removes the leftovers.
    let bin = env!("CARGO_BIN_EXE_trackshift-netlab");
    let name = format!("nl-kill-{}", std::process::id());
    let mut child = Command::new(bin)
        .args(["up", "--name", &name, "--max-duration", "30s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with(r#"{"event":"ready""#), "{line}");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(netns_list().contains(&format!("{name}-a")));
    let st = Command::new(bin)
        .args(["down", "--name", &name])
        .status()
        .unwrap();
    assert!(st.success());
    let st = Command::new(bin)
        .args(["down", "--name", &name])
        .status()
        .unwrap();
    assert!(st.success(), "down is idempotent");
    assert_gone(&[format!("{name}-a"), format!("{name}-b")]);
}

#[test]
fn bad_flags_fail_fast_without_leftovers() {
    let bin = env!("CARGO_BIN_EXE_trackshift-netlab");
    let out = Command::new(bin)
        .args(["up", "--name", "nl-bad", "--profile", "moon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown profile"));
    let out = Command::new(bin)
        .args(["up", "--name", "no/slash"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!netns_list().contains("nl-bad"));
}
