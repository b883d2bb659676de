//! The relay on real loopback sockets, in-process: plain sockets play sender and receiver, speaking the hello
//! and the Bind formats, and push random bytes and datagrams through it.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::{rngs::StdRng, Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;
use trackshift_grid::datagram::RelayDatagram;
use trackshift_grid::{HelloAnswer, PeerRole, RefusalCode, RelayHello, TokenKey};
use trackshift_relay::{DropReason, Limits, Relay, RelayConfig, TapEvent};

const SESSION: &str = "00112233445566778899aabbccddeeff";
const WAIT: Duration = Duration::from_secs(5);

fn unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn config(key: &TokenKey, relay_id: &str) -> RelayConfig {
    RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        relay_id: relay_id.into(),
        verifier: key.verifier(),
        forward: None,
        limits: Limits::default(),
        tap: None,
    }
}

fn token(key: &TokenKey, relay: &str) -> String {
    key.sign_admission(SESSION, relay, unix(), 600).unwrap()
}

fn dcsp(conn_id: u64, payload: &[u8]) -> Vec<u8> {
    let mut d = vec![0xDC, 1, 1, 0];
    d.extend_from_slice(&conn_id.to_be_bytes());
    d.extend_from_slice(&[0; 6]);
    d.extend_from_slice(payload);
    d
}

async fn udp_peer() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

async fn recv(socket: &UdpSocket) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 70_000];
    let n = timeout(Duration::from_millis(500), socket.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    buf.truncate(n);
    Some(buf)
}

async fn bind(
    socket: &UdpSocket,
    relay: SocketAddr,
    role: PeerRole,
    conn_id: u64,
    token: &str,
) -> RelayDatagram {
    let bind = RelayDatagram::Bind {
        role,
        conn_id,
        token: token.into(),
    };
    socket.send_to(&bind.encode(), relay).await.unwrap();
    RelayDatagram::decode(&recv(socket).await.expect("an answer to a bind")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_go_between_bound_ends_only() {
    let key = TokenKey::generate().unwrap();
    let relay = Relay::start(config(&key, "r1")).await.unwrap();
    let at = relay.local_addr();
    let (sender, receiver, stranger) = (udp_peer().await, udp_peer().await, udp_peer().await);
    let t = token(&key, "r1");
    assert_eq!(
        bind(&sender, at, PeerRole::Sender, 42, &t).await,
        RelayDatagram::Bound { conn_id: 42 }
    );
    assert_eq!(
        bind(&receiver, at, PeerRole::Receiver, 42, &t).await,
        RelayDatagram::Bound { conn_id: 42 }
    );

    let mut rng = StdRng::seed_from_u64(7);
    for i in 0..200 {
        let len = rng.gen_range(0..8000);
        let body: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        let (from, to) = if i % 2 == 0 {
            (&sender, &receiver)
        } else {
            (&receiver, &sender)
        };
        let d = dcsp(42, &body);
        from.send_to(&d, at).await.unwrap();
        assert_eq!(recv(to).await.as_deref(), Some(&d[..]), "datagram {i}");
    }
    // A stranger's datagrams, for the bound id or another, reach nobody.
    stranger.send_to(&dcsp(42, b"not yours"), at).await.unwrap();
    stranger.send_to(&dcsp(43, b"nobody's"), at).await.unwrap();
    stranger.send_to(b"junk", at).await.unwrap();
    assert_eq!(recv(&receiver).await, None);
    assert_eq!(recv(&sender).await, None);

    let stats = relay.stats();
    assert_eq!(stats.counters.datagrams_forwarded, 200);
    assert_eq!(stats.counters.drops(DropReason::WrongAddress), 1);
    assert_eq!(stats.counters.drops(DropReason::UnknownConn), 1);
    assert_eq!(stats.counters.drops(DropReason::Junk), 1);
    assert_eq!((stats.sessions, stats.bindings), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_foreign_tokens_are_refused_and_counted() {
    let key = TokenKey::generate().unwrap();
    let relay = Relay::start(config(&key, "r1")).await.unwrap();
    let at = relay.local_addr();
    let peer = udp_peer().await;
    let forged = TokenKey::generate()
        .unwrap()
        .sign_admission(SESSION, "r1", unix(), 600)
        .unwrap();
    let expired = key
        .sign_admission(SESSION, "r1", unix() - 700, 600)
        .unwrap();
    let foreign = token(&key, "r2");
    for t in [&forged, &expired, &foreign, &"not.a.token".to_owned()] {
        let answer = bind(&peer, at, PeerRole::Sender, 9, t).await;
        assert_eq!(
            answer,
            RelayDatagram::Refused {
                conn_id: 9,
                code: RefusalCode::Token
            }
        );
    }
    // Same on TCP.
    for t in [&forged, &expired, &foreign] {
        assert_eq!(
            hello(at, PeerRole::Receiver, t).await.1,
            Some(HelloAnswer::Refused)
        );
    }
    let c = relay.stats().counters;
    assert_eq!(c.drops(DropReason::TokenInvalid), 3);
    assert_eq!(c.drops(DropReason::TokenExpired), 2);
    assert_eq!(c.drops(DropReason::TokenWrongRelay), 2);
    assert_eq!(relay.stats().bindings, 0);
}

/// Opens a stream, writes a hello, and reads the answer byte (None: no answer within a short wait).
async fn hello(at: SocketAddr, role: PeerRole, token: &str) -> (TcpStream, Option<HelloAnswer>) {
    let mut stream = TcpStream::connect(at).await.unwrap();
    let hello = RelayHello {
        role,
        token: token.into(),
    };
    stream.write_all(&hello.encode()).await.unwrap();
    let answer = read_answer(&mut stream, Duration::from_millis(700)).await;
    (stream, answer)
}

async fn read_answer(stream: &mut TcpStream, wait: Duration) -> Option<HelloAnswer> {
    let mut byte = [0u8; 1];
    match timeout(wait, stream.read_exact(&mut byte)).await {
        Ok(Ok(_)) => Some(HelloAnswer::from_byte(byte[0])),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_pair_by_session_and_copy_both_ways() {
    let key = TokenKey::generate().unwrap();
    let seen = Arc::new(Mutex::new(0usize));
    let mut cfg = config(&key, "r1");
    let tap_seen = seen.clone();
    cfg.tap = Some(Arc::new(move |event, bytes| {
        assert_eq!(event, TapEvent::Stream);
        *tap_seen.lock().unwrap() += bytes.len();
    }));
    let relay = Relay::start(cfg).await.unwrap();
    let at = relay.local_addr();
    let t = token(&key, "r1");
    let (mut receiver, answer) = hello(at, PeerRole::Receiver, &t).await;
    assert_eq!(answer, None, "a receiver waits");
    // The sender writes its first bytes right behind the hello, as TLS would.
    let mut sender = TcpStream::connect(at).await.unwrap();
    let mut first = RelayHello {
        role: PeerRole::Sender,
        token: t.clone(),
    }
    .encode();
    first.extend_from_slice(b"client hello");
    sender.write_all(&first).await.unwrap();
    assert_eq!(
        read_answer(&mut sender, WAIT).await,
        Some(HelloAnswer::Paired)
    );
    assert_eq!(
        read_answer(&mut receiver, WAIT).await,
        Some(HelloAnswer::Paired)
    );

    let mut rng = StdRng::seed_from_u64(9);
    let up: Vec<u8> = (0..1_000_000).map(|_| rng.gen()).collect();
    let down: Vec<u8> = (0..300_000).map(|_| rng.gen()).collect();
    let (mut sr, mut sw) = sender.into_split();
    let (mut rr, mut rw) = receiver.into_split();
    let up2 = up.clone();
    let down2 = down.clone();
    let writers = tokio::spawn(async move {
        sw.write_all(&up2).await.unwrap();
        rw.write_all(&down2).await.unwrap();
        sw.shutdown().await.unwrap();
        (sw, rw)
    });
    let mut got_up = vec![0u8; 12 + up.len()];
    timeout(WAIT, rr.read_exact(&mut got_up))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got_up[..12], b"client hello");
    assert!(got_up[12..] == up[..]);
    let mut got_down = vec![0u8; down.len()];
    timeout(WAIT, sr.read_exact(&mut got_down))
        .await
        .unwrap()
        .unwrap();
    assert!(got_down == down);
    // The sender closed: the receiver sees the end.
    let mut rest = Vec::new();
    timeout(WAIT, rr.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());
    drop(writers.await.unwrap());
    assert_eq!(*seen.lock().unwrap(), up.len() + down.len());
    let stats = relay.stats();
    assert_eq!(stats.counters.pairs, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_slow_and_lonely_streams_are_closed() {
    let key = TokenKey::generate().unwrap();
    let mut cfg = config(&key, "r1");
    cfg.limits.sender_wait = Duration::from_millis(300);
    let relay = Relay::start(cfg).await.unwrap();
    let at = relay.local_addr();
    let mut junk = TcpStream::connect(at).await.unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    timeout(WAIT, junk.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty(), "junk gets no answer, only a close");
    let (_s, answer) = hello(at, PeerRole::Sender, &token(&key, "r1")).await;
    assert_eq!(answer, Some(HelloAnswer::NoPeer));
    let stats = relay.stats();
    assert_eq!(stats.counters.drops(DropReason::BadHello), 1);
    assert_eq!(stats.counters.drops(DropReason::NoPeer), 1);
    assert_eq!(stats.waiting, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_notifies_bound_ends_and_refuses_newcomers() {
    let key = TokenKey::generate().unwrap();
    let relay = Relay::start(config(&key, "r1")).await.unwrap();
    let at = relay.local_addr();
    let (sender, receiver) = (udp_peer().await, udp_peer().await);
    let t = token(&key, "r1");
    bind(&sender, at, PeerRole::Sender, 5, &t).await;
    bind(&receiver, at, PeerRole::Receiver, 5, &t).await;
    let (mut waiting, _) = hello(at, PeerRole::Receiver, &t).await;

    let drained = tokio::spawn(async move {
        let left = relay.drain(Duration::from_secs(10)).await;
        (relay, left)
    });
    let notice = RelayDatagram::Drain {
        conn_id: 5,
        token: String::new(),
    };
    assert_eq!(
        RelayDatagram::decode(&recv(&sender).await.unwrap()),
        Ok(notice.clone())
    );
    assert_eq!(
        RelayDatagram::decode(&recv(&receiver).await.unwrap()),
        Ok(notice)
    );
    assert_eq!(
        read_answer(&mut waiting, WAIT).await,
        Some(HelloAnswer::Draining)
    );
    assert_eq!(
        bind(&sender, at, PeerRole::Sender, 6, &t).await,
        RelayDatagram::Refused {
            conn_id: 6,
            code: RefusalCode::Draining
        }
    );
    assert_eq!(
        hello(at, PeerRole::Sender, &t).await.1,
        Some(HelloAnswer::Draining)
    );
    // The ends go quiet (they moved): the drain ends well before its 10 s.
    let (relay, left) = timeout(Duration::from_secs(6), drained)
        .await
        .unwrap()
        .unwrap();
    assert!(left);
    assert!(relay.stats().draining);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hops_carry_datagrams_and_streams() {
    let key = TokenKey::generate().unwrap();
    let far = Relay::start(config(&key, "r2")).await.unwrap();
    let mut near_cfg = config(&key, "r1");
    near_cfg.forward = Some(far.local_addr());
    let near = Relay::start(near_cfg).await.unwrap();
    let chain = format!("{},{}", token(&key, "r1"), token(&key, "r2"));
    let last = token(&key, "r2");

    // UDP: the sender binds at the near relay with the chain, the receiver at the far one.
    let (sender, receiver) = (udp_peer().await, udp_peer().await);
    assert_eq!(
        bind(&receiver, far.local_addr(), PeerRole::Receiver, 77, &last).await,
        RelayDatagram::Bound { conn_id: 77 }
    );
    assert_eq!(
        bind(&sender, near.local_addr(), PeerRole::Sender, 77, &chain).await,
        RelayDatagram::Bound { conn_id: 77 }
    );
    for i in 0..50u8 {
        let d = dcsp(77, &[i; 1200]);
        sender.send_to(&d, near.local_addr()).await.unwrap();
        assert_eq!(recv(&receiver).await.as_deref(), Some(&d[..]));
        let back = dcsp(77, &[i; 40]);
        receiver.send_to(&back, far.local_addr()).await.unwrap();
        assert_eq!(recv(&sender).await.as_deref(), Some(&back[..]));
    }

    // TCP: the receiver waits at the far relay; the sender's chain hello at the near one goes through.
    let (mut rx, _) = hello(far.local_addr(), PeerRole::Receiver, &last).await;
    let (mut tx, answer) = hello(near.local_addr(), PeerRole::Sender, &chain).await;
    assert_eq!(answer, Some(HelloAnswer::Paired));
    assert_eq!(read_answer(&mut rx, WAIT).await, Some(HelloAnswer::Paired));
    tx.write_all(b"through two relays").await.unwrap();
    let mut got = [0u8; 18];
    timeout(WAIT, rx.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"through two relays");
    // A chain at a relay with no next hop is refused.
    assert_eq!(
        hello(far.local_addr(), PeerRole::Sender, &chain).await.1,
        Some(HelloAnswer::Refused)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_cap_holds_streams_back() {
    let key = TokenKey::generate().unwrap();
    let mut cfg = config(&key, "r1");
    cfg.limits.max_rate = Some(2_000_000);
    let relay = Relay::start(cfg).await.unwrap();
    let at = relay.local_addr();
    let t = token(&key, "r1");
    let (mut rx, _) = hello(at, PeerRole::Receiver, &t).await;
    let (mut tx, answer) = hello(at, PeerRole::Sender, &t).await;
    assert_eq!(answer, Some(HelloAnswer::Paired));
    assert_eq!(read_answer(&mut rx, WAIT).await, Some(HelloAnswer::Paired));
    let data = vec![7u8; 3_000_000];
    let started = std::time::Instant::now();
    let writer = tokio::spawn(async move {
        tx.write_all(&data).await.unwrap();
        tx
    });
    let mut got = vec![0u8; 3_000_000];
    timeout(Duration::from_secs(20), rx.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    // 3 MB at 2 MB/s with a 256 KiB burst: about 1.4 s.
    assert!(took >= Duration::from_millis(1100), "took {took:?}");
    assert!(took < Duration::from_secs(6), "took {took:?}");
    drop(writer.await.unwrap());
}
