//! `trackshift relay`, the real binary, on loopback, registered with the real `trackshift orchestrator` (SQLite in
//! a temp state dir, the relay's bearer token from `trackshift orchestrator token`): plain sockets play sender and
//! receiver (hello and Bind by hand, random bytes and datagrams, admission tokens signed with the orchestrator's
//! key from its state dir). The heartbeats' counters are read where the orchestrator keeps them (its SQLite
//! database). SIGTERM: Drain notices, a draining heartbeat, exit 0.

#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is a failing test, with its message

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use trackshift_grid::datagram::RelayDatagram;
use trackshift_grid::{HelloAnswer, PeerRole, RefusalCode, RelayHello};
use trackshift_scenarios::grid::{Orchestrator, START_TIMEOUT};
use trackshift_scenarios::{trackshift, Proc, Scratch};

const SESSION: &str = "0f0e0d0c0b0a09080706050403020100";
const RELAY_ID: &str = "relay-e2e";

fn unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// What the orchestrator recorded from the relay's last heartbeat.
#[derive(Debug, Clone)]
struct Recorded {
    datagrams_forwarded: u64,
    bytes_forwarded: u64,
    draining: bool,
    drops: Value,
}

/// The relay's row in the orchestrator's SQLite database (the API lists no drop counters), if there is one yet.
fn recorded_heartbeat(state_dir: &Path, relay_id: &str) -> Option<Recorded> {
    let db = rusqlite::Connection::open_with_flags(
        state_dir.join("orchestrator.sqlite3"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .ok()?;
    db.query_row(
        "SELECT datagrams_forwarded, bytes_forwarded, draining, drops FROM relays WHERE relay_id = ?1",
        [relay_id],
        |r| {
            Ok(Recorded {
                datagrams_forwarded: r.get::<_, i64>(0)?.try_into().unwrap_or(0),
                bytes_forwarded: r.get::<_, i64>(1)?.try_into().unwrap_or(0),
                draining: r.get::<_, i64>(2)? != 0,
                drops: serde_json::from_str(&r.get::<_, String>(3)?).unwrap_or(Value::Null),
            })
        },
    )
    .ok()
}

/// Polls [`recorded_heartbeat`] until `pred` holds (bounded).
fn wait_heartbeat(state_dir: &Path, what: &str, pred: impl Fn(&Recorded) -> bool) -> Recorded {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let last = recorded_heartbeat(state_dir, RELAY_ID);
        if let Some(hb) = last.as_ref().filter(|hb| pred(hb)) {
            return hb.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no heartbeat with {what} recorded: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn bind(
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
    socket.send_to(&bind.encode(), relay).unwrap();
    RelayDatagram::decode(&recv(socket).expect("an answer to a bind")).unwrap()
}

fn recv(socket: &UdpSocket) -> Option<Vec<u8>> {
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = vec![0u8; 70_000];
    let n = socket.recv(&mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

fn peer() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").unwrap()
}

fn dcsp(conn_id: u64, payload: &[u8]) -> Vec<u8> {
    let mut d = vec![0xDC, 1, 1, 0];
    d.extend_from_slice(&conn_id.to_be_bytes());
    d.extend_from_slice(&[0; 6]);
    d.extend_from_slice(payload);
    d
}

fn hello(at: SocketAddr, role: PeerRole, token: &str) -> TcpStream {
    let mut stream = TcpStream::connect(at).unwrap();
    stream
        .write_all(
            &RelayHello {
                role,
                token: token.into(),
            }
            .encode(),
        )
        .unwrap();
    stream
}

fn answer(stream: &mut TcpStream) -> HelloAnswer {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).unwrap();
    HelloAnswer::from_byte(byte[0])
}

#[test]
fn the_relay_binary_forwards_refuses_and_drains_on_sigterm() {
    let scratch = Scratch::new("relay-e2e");
    let state_dir = scratch.dir("orch");
    let orchestrator = Orchestrator::start(None, "127.0.0.1:0", &state_dir);
    let key = trackshift_orchestrator::signing_key(&state_dir).unwrap();
    let api_token = orchestrator.token("relay", RELAY_ID);
    // No --relay-id: the relay takes its token's subject.
    let mut relay = Proc::spawn(
        "relay",
        trackshift([
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--orchestrator",
            &orchestrator.url,
            "--token",
            &api_token,
            "--json",
        ]),
    );
    let ready = relay.wait_event("relay_ready", START_TIMEOUT, |v| {
        v["event"] == "relay_ready"
    });
    assert_eq!(ready["relay_id"], RELAY_ID, "the id is the token's subject");
    let at: SocketAddr = ready["listen"].as_str().unwrap().parse().unwrap();

    // UDP: two bound ends, random datagrams both ways, byte for byte.
    let admission = key.sign_admission(SESSION, RELAY_ID, unix(), 600).unwrap();
    let (sender, receiver, stranger) = (peer(), peer(), peer());
    assert_eq!(
        bind(&sender, at, PeerRole::Sender, 11, &admission),
        RelayDatagram::Bound { conn_id: 11 }
    );
    assert_eq!(
        bind(&receiver, at, PeerRole::Receiver, 11, &admission),
        RelayDatagram::Bound { conn_id: 11 }
    );
    for i in 0..100u32 {
        let body: Vec<u8> = (0..(i * 97 % 9000)).map(|k| (k * 31 + i) as u8).collect();
        let d = dcsp(11, &body);
        let (from, to) = if i % 3 == 0 {
            (&receiver, &sender)
        } else {
            (&sender, &receiver)
        };
        from.send_to(&d, at).unwrap();
        assert_eq!(recv(to).as_deref(), Some(&d[..]), "datagram {i}");
    }
    // Forged, expired, for another relay, for an unknown session: refused or dropped, never forwarded.
    let forged = trackshift_grid::TokenKey::generate()
        .unwrap()
        .sign_admission(SESSION, RELAY_ID, unix(), 600)
        .unwrap();
    let expired = key
        .sign_admission(SESSION, RELAY_ID, unix() - 700, 600)
        .unwrap();
    let foreign = key
        .sign_admission(SESSION, "relay-other", unix(), 600)
        .unwrap();
    for t in [&forged, &expired, &foreign] {
        let refused = RelayDatagram::Refused {
            conn_id: 11,
            code: RefusalCode::Token,
        };
        assert_eq!(bind(&stranger, at, PeerRole::Receiver, 11, t), refused);
    }
    stranger.send_to(&dcsp(11, b"inject"), at).unwrap();
    stranger.send_to(&dcsp(99, b"no such session"), at).unwrap();
    sender.send_to(&dcsp(12, b"not bound"), at).unwrap();
    assert_eq!(recv(&receiver), None);

    // TCP: a waiting receiver and a sender pair; bytes both ways.
    let mut rx = hello(at, PeerRole::Receiver, &admission);
    std::thread::sleep(Duration::from_millis(200));
    let mut tx = hello(at, PeerRole::Sender, &admission);
    assert_eq!(answer(&mut tx), HelloAnswer::Paired);
    assert_eq!(answer(&mut rx), HelloAnswer::Paired);
    tx.write_all(b"end-to-end TLS would be here").unwrap();
    let mut got = [0u8; 28];
    rx.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"end-to-end TLS would be here");
    let mut bad = hello(at, PeerRole::Sender, &forged);
    assert_eq!(answer(&mut bad), HelloAnswer::Refused);
    drop((tx, rx));

    // The heartbeats carry the counters by reason to the orchestrator.
    let hb = wait_heartbeat(&state_dir, "the drops", |hb| hb.drops["token_invalid"] == 2);
    let drops = &hb.drops;
    assert_eq!(hb.datagrams_forwarded, 100, "{hb:?}");
    assert!(hb.bytes_forwarded > 0 && !hb.draining, "{hb:?}");
    assert_eq!(drops["token_expired"], 1, "{drops}");
    assert_eq!(drops["token_wrong_relay"], 1, "{drops}");
    assert_eq!(drops["wrong_address"], 1, "{drops}");
    assert_eq!(drops["unknown_conn"], 2, "{drops}");

    // SIGTERM: both bound ends get a Drain notice, the orchestrator a draining heartbeat, and it exits 0.
    let out = {
        let pid = relay.pid().to_string();
        assert!(std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let notice = RelayDatagram::Drain {
            conn_id: 11,
            token: String::new(),
        };
        assert_eq!(
            RelayDatagram::decode(&recv(&sender).unwrap()),
            Ok(notice.clone())
        );
        assert_eq!(RelayDatagram::decode(&recv(&receiver).unwrap()), Ok(notice));
        relay.wait(Duration::from_secs(30))
    };
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("relay_draining") && out.stdout.contains("relay_stopped"),
        "{}",
        out.stdout
    );
    wait_heartbeat(&state_dir, "draining", |hb| hb.draining);
}
