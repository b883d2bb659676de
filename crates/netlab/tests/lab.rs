//! Integration tests: real namespaces, real TUN devices, the real `trackshift-netlab` binary.
//! Needs root and /dev/net/tun.
#![allow(
    clippy::unwrap_used,
    reason = "a test that unwraps fails with the error; clippy.toml's allow-unwrap-in-tests covers #[test] \
              functions only, not this file's helpers"
)]

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use trackshift_netlab::{
    direction_seeds, Lab, LabConfig, LinkConfig, LinkModel, LinkOverrides, Verdict,
};

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

/// What the emulator's two models decide, replayed in virtual time with the same link and seeds: `n` probes
/// of `len` bytes (IP packets) from a to b, one every `gap`, each forwarded probe echoed back by b as it arrives.
/// Returns the models (for their counters) and the indices of the probes whose echo comes back.
///
/// The emulator decides each packet from its seeded RNG in the order packets arrive, and on this link the
/// number of draws per packet does not depend on when it arrives (no queue fills with 400 small probes, no
/// outage, no reordering), so the real run must give the same counters and the same echoes, whatever the load.
fn replay_echo_run(
    link: &LinkConfig,
    seed: u64,
    n: usize,
    len: usize,
    gap: Duration,
) -> (LinkModel, LinkModel, Vec<usize>) {
    let (seed_ab, seed_ba) = direction_seeds(seed);
    let t0 = Instant::now();
    let mut ab = LinkModel::new(link.clone(), seed_ab, t0);
    let mut ba = LinkModel::new(link.clone(), seed_ba, t0);
    let mut packet = vec![0u8; len];
    let mut arrived = Vec::new();
    for k in 0..n {
        if let Verdict::Forward(f) = ab.process(&mut packet, t0 + gap * k as u32) {
            arrived.push((k, f.release));
        }
    }
    let mut echoed = Vec::new();
    for (k, at) in arrived {
        if let Verdict::Forward(_) = ba.process(&mut packet, at) {
            echoed.push(k);
        }
    }
    (ab, ba, echoed)
}

#[test]
fn lossy_link_delays_and_drops_udp_then_cleans_up() {
    const SEED: u64 = 20;
    const N: usize = 400;
    const GAP: Duration = Duration::from_millis(5);
    let mut cfg = config(
        Some("lossy"),
        LinkOverrides::default(),
        Duration::from_secs(90),
    );
    cfg.seed = SEED;
    let lab = Lab::start("nl-lossy", cfg).unwrap();
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

    // 400 probes, one every 5 ms, each carrying its index (4 bytes + 28 of headers = 32-byte IP packets).
    let link = trackshift_netlab::profile("lossy").unwrap();
    let (want_ab, want_ba, want_echoed) = replay_echo_run(&link, SEED, N, 32, GAP);
    assert!(
        want_ab.counters().dropped_random > 0 && want_ba.counters().dropped_random > 0,
        "seed {SEED} should lose probes both ways"
    );

    // A second thread collects the echoes until it has all it may get, or a deadline (only a bound: load can
    // delay echoes, never change which come back).
    let receiver = client.try_clone().unwrap();
    let expected = want_echoed.len();
    let collector = thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        let end = Instant::now() + Duration::from_secs(45);
        while got.len() < expected && Instant::now() < end {
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
        if let Some(d) = (t0 + GAP * i as u32).checked_duration_since(Instant::now()) {
            thread::sleep(d);
        }
        sent_at.push(Instant::now());
        client
            .send_to(&(i as u32).to_be_bytes(), echo.addr)
            .unwrap();
    }
    let got = collector.join().unwrap();
    drop(echo);
    let c = lab.stop().unwrap();
    eprintln!("{c:?}");

    // The emulator's counters are the model's, packet for packet, in both directions.
    assert_eq!(c.a_to_b, *want_ab.counters(), "a -> b");
    assert_eq!(c.b_to_a, *want_ba.counters(), "b -> a");
    assert_eq!(c.a_to_b.packets_in, N as u64);
    // Every probe b got was echoed, and exactly the probes the models let through both ways came back.
    assert_eq!(c.b_to_a.packets_in, c.a_to_b.forwarded);
    let mut echoed: Vec<usize> = got.iter().map(|(k, _)| *k).collect();
    echoed.sort_unstable();
    assert_eq!(echoed, want_echoed);
    // Held, never early: each way at least the one-way delay less the jitter (100 - 10 ms). Load can only add.
    let rtts: Vec<Duration> = got.iter().map(|(k, at)| *at - sent_at[*k]).collect();
    let min = rtts.iter().min().copied().unwrap();
    eprintln!(
        "received {}/{N}, RTT min {min:?} max {:?}",
        rtts.len(),
        rtts.iter().max().unwrap()
    );
    assert!(min >= Duration::from_millis(180), "min RTT {min:?}");
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
    // 20 Mbit/s with a 50 ms drop-tail queue: 1250-byte IP packets take 0.5 ms each, and the empty queue takes
    // at least 50 ms / 0.5 ms + 1 = 101 of them however fast they come.
    const RATE: f64 = 20e6;
    const PACKET: usize = 1250;
    const BURST: usize = 2000;
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
    // Only ends the count: the link drains its queue within 50 ms of the last packet it took.
    rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let to = rx.local_addr().unwrap();
    let tx = lab
        .run_in_a(|| UdpSocket::bind("0.0.0.0:0"))
        .unwrap()
        .unwrap();
    // 2000 packets (2.5 MB, a second at the rate) offered as fast as the socket takes them.
    let t0 = Instant::now();
    let sender = thread::spawn(move || {
        let pkt = [0u8; PACKET - 28];
        (0..BURST).filter(|_| tx.send_to(&pkt, to).is_ok()).count()
    });
    let mut buf = [0u8; 2048];
    let (mut received, mut last) = (0u64, t0);
    while let Ok(n) = rx.recv(&mut buf) {
        assert_eq!(n + 28, PACKET);
        received += 1;
        last = Instant::now();
    }
    let sent = sender.join().unwrap() as u64;
    let c = lab.stop().unwrap();
    let l = &c.a_to_b;
    eprintln!(
        "sent {sent}, received {received} in {:?}: {:.2} Mbit/s; {l:?}",
        last - t0,
        (received * PACKET as u64 * 8) as f64 / (last - t0).as_secs_f64() / 1e6
    );
    // Every packet met the model once: forwarded whole, or dropped at the full queue, nothing else.
    assert_eq!(l.packets_in, sent, "{l:?}");
    assert_eq!(l.forwarded + l.dropped_queue, l.packets_in, "{l:?}");
    assert_eq!(l.bytes, l.forwarded * PACKET as u64, "{l:?}");
    assert!(l.dropped_queue > 0, "the burst outpaces the link: {l:?}");
    assert!(
        l.forwarded >= 101,
        "an empty 50 ms queue takes 101 packets: {l:?}"
    );
    assert!(received <= l.forwarded, "{l:?}");
    // The cap, as a bound no load can break: the packets that arrived were serialized one after another at 20
    // Mbit/s (each 0.5 ms, truncated to whole ns), all after the first was sent and before the last arrived.
    let serialized = received as f64 * (PACKET as f64 * 8.0 / RATE - 1e-9);
    assert!(
        serialized <= (last - t0).as_secs_f64(),
        "{received} packets arrived in {:?}, faster than 20 Mbit/s",
        last - t0
    );
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

/// A UDP socket bound to `addr` (port 0) in namespace `ns`, with a short read timeout.
fn udp_in(ns: &str, addr: Ipv4Addr) -> UdpSocket {
    let sock = trackshift_netlab::in_netns(ns, || UdpSocket::bind((addr, 0)))
        .unwrap()
        .unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    sock
}

/// `ip -n NS route add NET via GW`.
fn add_route(ns: &str, net: &str, via: Ipv4Addr) {
    let st = Command::new("/usr/sbin/ip")
        .args(["-n", ns, "route", "add", net, "via", &via.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "ip -n {ns} route add {net} via {via}");
}

/// Whether a datagram from `from` reaches `to` (and `to` answers it back, when it can).
fn reaches(from: &UdpSocket, to: &UdpSocket) -> bool {
    let _ = from.send_to(b"hello", to.local_addr().unwrap());
    let mut buf = [0u8; 16];
    matches!(to.recv_from(&mut buf), Ok((5, _)))
}

#[test]
fn side_c_reaches_side_b_only() {
    let mut cfg = config(
        Some("clean"),
        LinkOverrides::default(),
        Duration::from_secs(60),
    );
    cfg.side_c = true;
    let lab = Lab::start("nl-sidec", cfg).unwrap();
    let ns_c = lab.ns_c().unwrap().to_string();
    let names = [lab.ns_a().to_string(), lab.ns_b().to_string(), ns_c.clone()];
    let addr_c = lab.addr_c().unwrap();
    assert_eq!(addr_c.to_string(), "198.18.2.2");
    // A second address in side b: both a (through the emulator) and c (through the veth) reach it.
    let extra = Ipv4Addr::new(198, 18, 1, 7);
    lab.add_addr_b(extra).unwrap();
    let in_b = udp_in(lab.ns_b(), extra);
    let in_a = udp_in(lab.ns_a(), lab.addr_a());
    let in_c = udp_in(&ns_c, addr_c);
    assert!(reaches(&in_a, &in_b), "a -> b");
    assert!(reaches(&in_c, &in_b), "c -> b");
    assert!(reaches(&in_b, &in_a), "b -> a");
    assert!(reaches(&in_b, &in_c), "b -> c");
    // a and c have no route to each other...
    for (from, to) in [(&in_a, addr_c), (&in_c, lab.addr_a())] {
        let err = from.send_to(b"x", (to, 9)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NetworkUnreachable, "{err}");
    }
    // ...and with one through b, b does not forward: nothing arrives either way.
    let forwarding = lab
        .run_in_b(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward"))
        .unwrap()
        .unwrap();
    assert_eq!(forwarding.trim(), "0");
    add_route(lab.ns_a(), "198.18.2.0/24", lab.addr_b());
    add_route(&ns_c, "198.18.0.0/24", trackshift_netlab::ADDR_B_TO_C);
    assert!(!reaches(&in_a, &in_c), "a -> c through b");
    assert!(!reaches(&in_c, &in_a), "c -> a through b");
    let c = lab.stop().unwrap();
    // The datagram from a to c crossed the emulated link and died in b.
    assert!(c.a_to_b.forwarded >= 2, "{c:?}");
    assert_gone(&names);
}
