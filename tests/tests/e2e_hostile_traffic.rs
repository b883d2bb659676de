//! Hostile traffic against the real receiver during a real UDP transfer (issue 20, point 5).
//!
//! A real `trackshift send` (DCSP, two streams) sends a file into a real `trackshift receive --json` (two UDP
//! sockets on its port) through a relay of this test's own: the sender is pointed at `127.0.0.2:PORT`, where
//! the relay listens on TCP and UDP and forwards to the receiver at `127.0.0.1:PORT`, so every datagram of the
//! transfer passes through it. Once the receiver has acknowledged a connection (it is registered), the relay
//! injects at the receiver's UDP port, besides forwarding:
//!
//! - forged datagrams: a real datagram's header and connection id under an unused packet number, with a
//!   flipped tag or ciphertext bit;
//! - datagrams sealed under a foreign key (`trackshift_dcsp`'s packet API, another secret, same connection id);
//! - truncated copies: cut to half, to 40 and 30 bytes (unauthentic), and to 20 bytes (too short for a shard
//!   header: malformed);
//! - copies under another DCSP version, and copies retyped as ACKs (a type the receiver never takes);
//! - replays: real datagrams sent again, right behind themselves from the relay's own address, and long after
//!   from another address;
//! - datagrams no connection can claim (too short to name one, or naming an unknown one);
//!
//! and, on the control (TCP) port, connections that send half a TLS record or half a frame after TLS and stay
//! open through the transfer, and, round after round while it runs, junk instead of TLS, an oversized TLS
//! record, an oversized frame length after TLS, a broken SPAKE2 message and a wrong secret.
//!
//! The transfer must complete byte-identical, and the receiver's `--json` summary must count what was sent:
//! `packets_unauthentic` the forged, foreign and long truncated ones, `packets_replayed` the replays,
//! `packets_dropped` those plus the malformed, wrong-version and ACK-typed ones; `path_changes` stays 0
//! (nothing moved the receiver's ACKs). The counts are exact; the only slack allowed is what the kernel itself
//! dropped on the receiver's sockets (read from `/proc/net/udp`, reported in the failure message), since a
//! datagram the kernel drops never reaches a counter (and a replay whose original it dropped is taken as the
//! original). Datagrams that name no connection are only required not to disturb the transfer: the summary
//! is per session and cannot count them. Everything is on loopback and bounded in time.

#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is a failing test, with its message

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trackshift_dcsp::packet::{peek_conn_id, Header};
use trackshift_dcsp::{DirectionKeys, PacketType, Role};
use trackshift_proto::Frame;
use trackshift_scenarios::*;
use trackshift_transport::{authenticate_client, connect, exporter_of};

const NET_TIMEOUT: Duration = Duration::from_secs(40);
/// Large enough that every injection lands while data still flows (2 streams of ~1500 datagrams of 16 KiB).
const FILE_SIZE: u64 = 48 * MIB;
/// Hostile datagrams of each kind per DCSP connection.
const PER_KIND: u64 = 16;
/// Packet numbers no real datagram of this transfer reaches (the sender starts at 0).
const UNUSED_PN: u64 = 1 << 47;

/// What the relay injects, one kind per real datagram in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    ForgedTag,
    ForgedPayload,
    ForeignKey,
    TruncatedHalf,
    Truncated40,
    Truncated30,
    Truncated20,
    OtherVersion,
    AckTyped,
    ReplayedNow,
    ReplayedLater,
    Unclaimable,
}

const KINDS: [Kind; 12] = [
    Kind::ForgedTag,
    Kind::ForgedPayload,
    Kind::ForeignKey,
    Kind::TruncatedHalf,
    Kind::Truncated40,
    Kind::Truncated30,
    Kind::Truncated20,
    Kind::OtherVersion,
    Kind::AckTyped,
    Kind::ReplayedNow,
    Kind::ReplayedLater,
    Kind::Unclaimable,
];

#[derive(Default)]
struct Conn {
    /// The sender's socket for this connection.
    sender: Option<SocketAddr>,
    /// The receiver has sent an ACK: the connection is registered.
    acked: bool,
    /// Real DATA/PARITY datagrams forwarded since then.
    seen: u64,
    /// The first few of them, to replay much later.
    early: Vec<Vec<u8>>,
}

#[derive(Default)]
struct Relayed {
    conns: HashMap<u64, Conn>,
    /// Hostile datagrams sent, by kind.
    sent: HashMap<Kind, u64>,
    forwarded: u64,
    first_ack: bool,
}

/// The UDP half of the relay: forwards between the sender and the receiver, and injects.
fn udp_relay(
    relay: UdpSocket,
    receiver: SocketAddr,
    stop: Arc<AtomicBool>,
    state: Arc<Mutex<Relayed>>,
    first_ack: mpsc::Sender<()>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        // Injected datagrams come from another address than the relay's (the sender's, as the receiver sees it).
        let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
        relay
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let foreign = [0x42u8; 32];
        let mut buf = vec![0u8; 65536];
        let mut fresh_pn = UNUSED_PN;
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, from)) = relay.recv_from(&mut buf) else {
                continue;
            };
            let d = &buf[..n];
            let mut st = state.lock().unwrap();
            let Some(id) = peek_conn_id(d) else { continue };
            if from == receiver {
                // An ACK: back to the sender of that connection.
                let c = st.conns.entry(id).or_default();
                c.acked = true;
                if let Some(to) = c.sender {
                    let _ = relay.send_to(d, to);
                }
                if !st.first_ack {
                    st.first_ack = true;
                    let _ = first_ack.send(());
                }
                continue;
            }
            st.conns.entry(id).or_default().sender = Some(from);
            if relay.send_to(d, receiver).is_ok() {
                st.forwarded += 1;
            }
            let Ok(h) = Header::decode(d) else { continue };
            let c = st.conns.get_mut(&id).unwrap();
            if !c.acked || !h.packet_type.has_shard_header() {
                continue;
            }
            let i = c.seen;
            c.seen += 1;
            if c.early.len() < 8 {
                c.early.push(d.to_vec());
            }
            let kind = KINDS[(i % KINDS.len() as u64) as usize];
            if i / KINDS.len() as u64 >= PER_KIND {
                continue;
            }
            let (bytes, via_relay): (Vec<Vec<u8>>, bool) = match kind {
                Kind::ForgedTag => {
                    let mut x = renumbered(d, &mut fresh_pn);
                    *x.last_mut().unwrap() ^= 0x01;
                    (vec![x], false)
                }
                Kind::ForgedPayload => {
                    let mut x = renumbered(d, &mut fresh_pn);
                    x[h.len() + 5] ^= 0x80;
                    (vec![x], false)
                }
                Kind::ForeignKey => {
                    let mut head = Header {
                        packet_number: fresh_pn,
                        ..h
                    };
                    fresh_pn += 1;
                    head.flags = 0;
                    let mut x = Vec::new();
                    head.encode(&mut x);
                    x.extend_from_slice(&d[h.len()..n - 16]);
                    DirectionKeys::derive(&foreign, id, Role::Sender).seal.seal(
                        head.packet_number,
                        head.len(),
                        &mut x,
                    );
                    (vec![x], false)
                }
                Kind::TruncatedHalf => (vec![renumbered(&d[..n / 2], &mut fresh_pn)], false),
                Kind::Truncated40 => (vec![renumbered(&d[..40], &mut fresh_pn)], false),
                Kind::Truncated30 => (vec![renumbered(&d[..30], &mut fresh_pn)], false),
                Kind::Truncated20 => (vec![d[..20].to_vec()], false),
                Kind::OtherVersion => {
                    let mut x = d.to_vec();
                    x[1] = 2;
                    (vec![x], false)
                }
                Kind::AckTyped => {
                    let mut x = d.to_vec();
                    x[2] = PacketType::Ack as u8;
                    (vec![x], false)
                }
                // Right behind the original, from the same address (a man in the middle repeating it).
                Kind::ReplayedNow => (vec![d.to_vec()], true),
                // Much later (at least 12 × PER_KIND datagrams after it), from another address.
                Kind::ReplayedLater => {
                    let j = (i / KINDS.len() as u64) as usize % c.early.len().min(4);
                    (vec![c.early[j].clone()], false)
                }
                Kind::Unclaimable => {
                    let mut unknown = d.to_vec();
                    unknown[4..12].copy_from_slice(&(id ^ 0x5555_0000_0000_0000).to_be_bytes());
                    (vec![d[..10].to_vec(), vec![0u8; 900], unknown], false)
                }
            };
            if kind == Kind::ReplayedLater && i < (KINDS.len() as u64) * PER_KIND / 2 {
                continue; // not "later" yet: only the second half of the injections replay early datagrams
            }
            let socket = if via_relay { &relay } else { &attacker };
            let all_sent = bytes
                .iter()
                .all(|x| socket.send_to(x, receiver).is_ok_and(|m| m == x.len()));
            if all_sent {
                *st.sent.entry(kind).or_default() += 1;
            }
        }
    })
}

/// A copy of a datagram under a packet number no real one has (so it is checked, not taken for a replay).
fn renumbered(d: &[u8], fresh_pn: &mut u64) -> Vec<u8> {
    let mut x = d.to_vec();
    x[12..18].copy_from_slice(&fresh_pn.to_be_bytes()[2..]);
    *fresh_pn += 1;
    x
}

/// The TCP half of the relay: each connection to `127.0.0.2:PORT` is piped to the receiver.
fn tcp_relay(listener: TcpListener, receiver: SocketAddr, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        while !stop.load(Ordering::Relaxed) {
            let Ok((a, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            a.set_nonblocking(false).unwrap();
            let Ok(b) = TcpStream::connect(receiver) else {
                continue;
            };
            for (mut from, mut to) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    })
}

/// The receiver's UDP sockets on 127.0.0.1:`port`: datagrams the kernel dropped for want of buffer (the last
/// column of /proc/net/udp, summed over the sockets of the port).
fn kernel_drops(port: u16) -> u64 {
    let local = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/udp")
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| l.split_whitespace().nth(1) == Some(local.as_str()))
        .map(|l| l.split_whitespace().last().unwrap().parse::<u64>().unwrap())
        .sum()
}

fn block_on<T>(rt: &tokio::runtime::Runtime, what: &str, f: impl Future<Output = T>) -> T {
    rt.block_on(async { tokio::time::timeout(NET_TIMEOUT, f).await })
        .unwrap_or_else(|_| panic!("timed out after {NET_TIMEOUT:?}: {what}"))
}

/// Reads until the peer closes (EOF or reset); panics after `NET_TIMEOUT`.
fn closed_by_receiver(s: &mut TcpStream, what: &str) {
    s.set_read_timeout(Some(NET_TIMEOUT)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                panic!("{what}: the receiver kept the connection open for {NET_TIMEOUT:?}")
            }
            Err(_) => return,
        }
    }
}

async fn tls_closed_by_receiver<R: tokio::io::AsyncRead + Unpin>(r: &mut R) {
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Connections to the receiver's control port that stop half-way and stay open (the receiver gives them its
/// handshake timeout, 30 s): half a TLS record, and half a frame after TLS. Opened before the transfer, closed
/// after it.
fn half_open(
    addr: &str,
    rt: &tokio::runtime::Runtime,
) -> (TcpStream, trackshift_transport::ClientTls) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .unwrap();
    let tls = block_on(rt, "half a frame", async {
        let (mut tls, _) = connect(addr, None, "known", &[]).await.unwrap();
        tls.write_all(&[0, 0, 0, 40, 0x01, b'T', b'S', b'H', b'F', 0])
            .await
            .unwrap();
        tls.flush().await.unwrap();
        tls
    });
    (s, tls)
}

/// One round of garbage on the receiver's control port: junk instead of TLS, an oversized TLS record, an
/// oversized frame length after TLS (each closed by the receiver), a broken SPAKE2 message and a wrong secret
/// (each refused). Returns how many refusals the receiver must report.
fn garbage_round(addr: &str, rt: &tokio::runtime::Runtime) -> u32 {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut junk = b"GET / HTTP/1.1\r\nHost: trackshift\r\n\r\n".to_vec();
    junk.extend(std::iter::repeat_n(0xABu8, 64 * 1024));
    let _ = s.write_all(&junk);
    closed_by_receiver(&mut s, "junk instead of TLS");
    // A TLS record header announcing the largest length, then some bytes: rustls refuses it.
    let mut s = TcpStream::connect(addr).unwrap();
    let mut big = vec![0x16, 0x03, 0x03, 0xFF, 0xFF];
    big.extend(std::iter::repeat_n(0x01u8, 1024));
    let _ = s.write_all(&big);
    closed_by_receiver(&mut s, "an oversized TLS record");
    // After TLS: a frame header announcing 4 GiB: the receiver drops the peer without allocating it.
    block_on(rt, "an oversized frame length", async {
        let (mut tls, _) = connect(addr, None, "known", &[]).await.unwrap();
        tls.write_all(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01])
            .await
            .unwrap();
        tls.flush().await.unwrap();
        tls_closed_by_receiver(&mut tls).await;
    });
    // After TLS: a good Hello, then a SPAKE2 message that is not one.
    block_on(rt, "a broken SPAKE2 message", async {
        let (mut tls, _) = connect(addr, None, "known", &[]).await.unwrap();
        let mut flight = Vec::new();
        Frame::Hello {
            min_version: 1,
            max_version: 1,
            software: "hostile",
        }
        .encode(&mut flight);
        Frame::Pake {
            message: &[0xFF; 33],
        }
        .encode(&mut flight);
        tls.write_all(&flight).await.unwrap();
        tls.flush().await.unwrap();
        tls_closed_by_receiver(&mut tls).await;
    });
    // The whole handshake with a wrong secret.
    block_on(rt, "a wrong secret", async {
        let (mut tls, _) = connect(addr, None, "known", &[]).await.unwrap();
        let ekm = exporter_of(tls.get_ref().1).unwrap();
        assert!(authenticate_client(&mut tls, ekm, "not the secret")
            .await
            .is_err());
    });
    2
}

#[test]
fn hostile_datagrams_and_control_garbage_during_a_real_udp_transfer_are_dropped_and_counted() {
    let t = Scratch::new("hostile-traffic");
    let (out, rs, ss) = (t.dir("out"), t.dir("rs"), t.dir("ss"));
    let src = random_file(&t.file("traffic.bin"), FILE_SIZE, 2020);
    let mut cfg = ReceiverConfig::new(&out, &rs);
    cfg.extra = vec!["--streams".into(), "2".into()];
    let mut rx = cfg.start();
    let receiver: SocketAddr = rx.addr.parse().unwrap();
    let port = receiver.port();
    let relay_addr = format!("127.0.0.2:{port}");
    let udp = UdpSocket::bind(&relay_addr)
        .unwrap_or_else(|e| panic!("binding the relay at {relay_addr} (UDP): {e}"));
    let tcp = TcpListener::bind(&relay_addr)
        .unwrap_or_else(|e| panic!("binding the relay at {relay_addr} (TCP): {e}"));
    let stop = Arc::new(AtomicBool::new(false));
    let state = Arc::new(Mutex::new(Relayed::default()));
    let (ack_tx, ack_rx) = mpsc::channel();
    let relays = [
        udp_relay(udp, receiver, stop.clone(), state.clone(), ack_tx),
        tcp_relay(tcp, receiver, stop.clone()),
    ];
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop = StopOnDrop(stop.clone());

    let rt = tokio::runtime::Runtime::new().unwrap();
    let held = half_open(&rx.addr, &rt);
    let started = Instant::now();
    // Paced (20 MB/s) so that the transfer lasts a few seconds: the garbage rounds below overlap it.
    let mut sender = spawn_send(
        &src,
        &relay_addr,
        &ss,
        &[
            "--protocol",
            "udp",
            "--streams",
            "2",
            "--max-rate",
            "160Mbit",
        ],
    );
    let id = session_id_of(&mut sender);
    ack_rx
        .recv_timeout(NET_TIMEOUT)
        .unwrap_or_else(|_| sender.fail("no ACK from the receiver through the relay"));
    // The relay injects datagrams meanwhile; garbage on the control port, round after round, until the
    // sender is done (the first round starts while data flows).
    let garbage = {
        let (addr, stop) = (rx.addr.clone(), Arc::new(AtomicBool::new(false)));
        let flag = stop.clone();
        let h = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            let (mut rounds, mut refusals) = (0, 0);
            while rounds == 0 || (!flag.load(Ordering::Relaxed) && rounds < 20) {
                refusals += garbage_round(&addr, &rt);
                rounds += 1;
            }
            (rounds, refusals)
        });
        (h, stop)
    };

    let sent = sender.wait(TRANSFER_TIMEOUT);
    garbage.1.store(true, Ordering::Relaxed);
    let (rounds, refusals) = garbage.0.join().expect("the garbage rounds");
    assert_eq!(
        sent.code, 0,
        "the sender failed: {}\n{}",
        sent.stdout, sent.stderr
    );
    let summary = rx.wait_summary(&id, TRANSFER_TIMEOUT);
    let drops = kernel_drops(port);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for r in relays {
        r.join().unwrap();
    }
    drop(held);

    // The transfer: complete, over DCSP, byte-identical.
    assert_eq!(sent.summary()["protocol"], "udp", "{}", sent.stdout);
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(summary["protocol"], "udp", "{summary}");
    let sha = assert_same_file(&src, &out.join("traffic.bin"));
    assert_eq!(summary["sha256"], sha.as_str(), "{summary}");
    assert_eq!(dir_names(&out), vec!["traffic.bin"]);

    // The relay did inject every kind, on both connections.
    let st = state.lock().unwrap();
    let n = |k: Kind| st.sent.get(&k).copied().unwrap_or(0);
    let conns: Vec<_> = st.conns.values().filter(|c| c.acked).collect();
    assert_eq!(
        conns.len(),
        2,
        "two DCSP connections through the relay, acknowledged"
    );
    for k in KINDS {
        let want = if k == Kind::ReplayedLater {
            PER_KIND / 2
        } else {
            PER_KIND
        };
        assert!(
            n(k) >= want,
            "only {} {k:?} datagrams were injected (at least {want} per connection expected): {:?}",
            n(k),
            st.sent
        );
    }
    let unauthentic = n(Kind::ForgedTag)
        + n(Kind::ForgedPayload)
        + n(Kind::ForeignKey)
        + n(Kind::TruncatedHalf)
        + n(Kind::Truncated40)
        + n(Kind::Truncated30);
    let replayed = n(Kind::ReplayedNow) + n(Kind::ReplayedLater);
    let dropped =
        unauthentic + replayed + n(Kind::Truncated20) + n(Kind::OtherVersion) + n(Kind::AckTyped);
    let report = format!(
        "injected {:?}; the kernel dropped {drops} datagrams on the receiver's sockets; summary {summary}",
        st.sent
    );
    println!(
        "{} datagrams forwarded in {elapsed:.1?}, {rounds} rounds of control-port garbage; {report}",
        st.forwarded
    );
    let within = |got: u64, sent: u64| got <= sent && got + drops >= sent;
    let got = |name: &str| field(&summary, name);
    assert!(
        within(got("packets_unauthentic"), unauthentic),
        "packets_unauthentic {} for {unauthentic} forged, foreign-key and truncated datagrams: {report}",
        got("packets_unauthentic")
    );
    assert!(
        within(got("packets_replayed"), replayed),
        "packets_replayed {} for {replayed} replays: {report}",
        got("packets_replayed")
    );
    assert!(
        within(got("packets_dropped"), dropped),
        "packets_dropped {} for {dropped} hostile datagrams a connection could claim: {report}",
        got("packets_dropped")
    );
    assert_eq!(
        got("path_changes"),
        0,
        "a hostile datagram moved the receiver's ACKs: {report}"
    );

    // The control port: each broken SPAKE2 or wrong secret reported as refused, nothing else disturbed.
    let events = rx.proc.events();
    let refused: Vec<_> = events.iter().filter(|e| e["event"] == "refused").collect();
    assert_eq!(refused.len() as u32, refusals, "refused peers: {refused:?}");
    let summaries: HashSet<_> = events
        .iter()
        .filter(|e| e["event"] == "summary")
        .map(|e| e["session_id"].to_string())
        .collect();
    assert_eq!(
        summaries.len(),
        1,
        "one session only (garbage created none): {events:?}"
    );
    rx.assert_running();
}
