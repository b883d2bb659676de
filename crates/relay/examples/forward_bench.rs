//! How many datagrams a relay forwards on loopback: `bench/relay-forward.sh` runs this.
//!
//! `forward_bench load SECONDS SIZE` starts itself again as `forward_bench relay KEY_HEX` on core 0 (`taskset
//! -c 0`), binds a sender and a receiver socket there with an admission token, pushes DCSP-shaped datagrams of
//! SIZE bytes as fast as GSO sends go for SECONDS, counts what arrives, and prints one JSON line: datagrams/s,
//! Gbit/s, the relay's CPU seconds (from /proc) and its CPU seconds per GB forwarded.

#![allow(clippy::unwrap_used)] // a benchmark tool: failing loudly is the point

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use trackshift_grid::datagram::RelayDatagram;
use trackshift_grid::{PeerRole, TokenKey, TokenVerifier};
use trackshift_relay::{Limits, Relay, RelayConfig};
use trackshift_udp::{RecvBatch, UdpEndpoint};

const CONN_ID: u64 = 0x0102_0304_0506_0708;
const SESSION: &str = "beefbeefbeefbeefbeefbeefbeefbeef";
/// Clock ticks per second in /proc/<pid>/stat (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("relay") => relay(&args[2]),
        Some("load") => load(
            args[2].parse().unwrap(),
            args[3].parse().unwrap(),
            args.get(4).map_or(0.0, |r| r.parse().unwrap()),
        ),
        _ => eprintln!("usage: forward_bench load SECONDS SIZE [DATAGRAMS_PER_SEC]"),
    }
}

fn relay(key_hex: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let relay = Relay::start(RelayConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            relay_id: "bench".into(),
            verifier: TokenVerifier::from_hex(key_hex).unwrap(),
            forward: None,
            limits: Limits::default(),
            tap: None,
        })
        .await
        .unwrap();
        println!("{}", relay.local_addr());
        // Until the parent closes our stdin.
        tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        })
        .await
        .unwrap();
        let c = relay.stats().counters;
        eprintln!(
            "relay forwarded {} datagrams, dropped {:?}",
            c.datagrams_forwarded,
            c.drop_map()
        );
    });
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the state field.
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / USER_HZ
}

/// Offers `rate` datagrams/s (0: as fast as the sends go) of `size` bytes for `seconds`.
fn load(seconds: u64, size: usize, rate: f64) {
    let key = TokenKey::generate().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new("taskset")
        .args(["-c", "0"])
        .arg(&exe)
        .args(["relay", &key.verifier().public_hex()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let at: SocketAddr = line.trim().parse().unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut tx = UdpEndpoint::bind(any, false).unwrap();
    let mut rx = UdpEndpoint::bind(any, false).unwrap();
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = key.sign_admission(SESSION, "bench", unix, 3600).unwrap();
    bind(&mut tx, at, PeerRole::Sender, &token);
    bind(&mut rx, at, PeerRole::Receiver, &token);

    let stop = Arc::new(AtomicBool::new(false));
    let counting = stop.clone();
    let counter = std::thread::spawn(move || count(rx, counting));
    let mut train = Vec::new();
    for _ in 0..tx.max_gso_segments().clamp(1, 64).min(65_000 / size) {
        let mut d = vec![0u8; size];
        d[0] = 0xDC;
        d[1] = 1;
        d[4..12].copy_from_slice(&CONN_ID.to_be_bytes());
        train.extend_from_slice(&d);
    }
    let cpu0 = cpu_seconds(child.id());
    let t0 = Instant::now();
    let mut sent = 0u64;
    while t0.elapsed() < Duration::from_secs(seconds) {
        if rate > 0.0 {
            let due = t0 + Duration::from_secs_f64(sent as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        match tx.send_batch(at, &train, size) {
            Ok(n) => sent += (n / size) as u64,
            Err(_) => std::thread::yield_now(),
        }
    }
    let cpu = cpu_seconds(child.id()) - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let received = counter.join().unwrap();
    drop(child.stdin.take());
    let _ = child.wait();
    let bytes = received as f64 * size as f64;
    println!(
        "{}",
        serde_json::json!({
            "size": size, "offered_per_sec": rate, "seconds": wall, "sent": sent, "forwarded": received,
            "loss": 1.0 - received as f64 / sent.max(1) as f64,
            "datagrams_per_sec": (received as f64 / wall).round(),
            "gbit_per_sec": bytes * 8.0 / wall / 1e9,
            "relay_cpu_seconds": cpu, "relay_cpu_share": cpu / wall,
            "relay_cpu_seconds_per_gb": cpu / (bytes / 1e9),
        })
    );
}

fn bind(socket: &mut UdpEndpoint, at: SocketAddr, role: PeerRole, token: &str) {
    let bind = RelayDatagram::Bind {
        role,
        conn_id: CONN_ID,
        token: token.into(),
    }
    .encode();
    socket.send_batch(at, &bind, bind.len()).unwrap();
    let mut batch = RecvBatch::new();
    assert!(
        socket.wait_readable(Some(Duration::from_secs(2))).unwrap(),
        "no answer to a bind"
    );
    socket.recv_batch(&mut batch).unwrap();
    let (_, answer) = batch.iter().next().unwrap();
    assert_eq!(
        RelayDatagram::decode(answer),
        Ok(RelayDatagram::Bound { conn_id: CONN_ID })
    );
}

fn count(mut rx: UdpEndpoint, stop: Arc<AtomicBool>) -> u64 {
    let mut batch = RecvBatch::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if rx
            .wait_readable(Some(Duration::from_millis(50)))
            .unwrap_or(false)
        {
            while let Ok(k) = rx.recv_batch(&mut batch) {
                n += k as u64;
            }
        }
    }
    n
}
