//! `trackshift relay`, the real binary, on loopback: plain sockets play sender and receiver (hello and Bind by
//! hand, random bytes and datagrams), a small in-test HTTP server plays the orchestrator's two relay endpoints
//! (register, heartbeat) until the real orchestrator is merged. SIGTERM: Drain notices, a draining heartbeat,
//! exit 0.

#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is a failing test, with its message

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use trackshift_grid::datagram::RelayDatagram;
use trackshift_grid::{HelloAnswer, PeerRole, RefusalCode, RelayHello, Role, TokenKey};
use trackshift_scenarios::{trackshift, Proc};

const SESSION: &str = "0f0e0d0c0b0a09080706050403020100";

fn unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The relay endpoints of an orchestrator: `register` answers with `key`'s public half, `heartbeat` records.
fn fake_orchestrator(key: &TokenKey) -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let public = key.verifier().public_hex();
    let beats = Arc::new(Mutex::new(Vec::new()));
    let seen = beats.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (public, seen) = (public.clone(), seen.clone());
            std::thread::spawn(move || serve_http(stream, &public, &seen));
        }
    });
    (url, beats)
}

fn serve_http(stream: TcpStream, public: &str, beats: &Mutex<Vec<Value>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            if header.trim().is_empty() {
                break;
            }
            if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let answer = if request.contains("/api/v1/relays/register") {
            let reply = json!({"relay_id": body["relay_id"], "admission_key": public, "heartbeat_interval_secs": 1});
            let text = reply.to_string();
            format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}", text.len())
        } else {
            beats.lock().unwrap().push(body);
            "HTTP/1.1 204 No Content\r\n\r\n".to_owned()
        };
        out.write_all(answer.as_bytes()).unwrap();
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
    let key = TokenKey::generate().unwrap();
    let (url, beats) = fake_orchestrator(&key);
    let api_token = key
        .sign_api("relay-e2e", Role::Relay, unix(), 3600)
        .unwrap();
    let mut relay = Proc::spawn(
        "relay",
        trackshift([
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--orchestrator",
            &url,
            "--token",
            &api_token,
            "--json",
        ]),
    );
    let ready = relay.wait_event("relay_ready", Duration::from_secs(60), |v| {
        v["event"] == "relay_ready"
    });
    assert_eq!(
        ready["relay_id"], "relay-e2e",
        "the id is the token's subject"
    );
    let at: SocketAddr = ready["listen"].as_str().unwrap().parse().unwrap();

    // UDP: two bound ends, random datagrams both ways, byte for byte.
    let admission = key
        .sign_admission(SESSION, "relay-e2e", unix(), 600)
        .unwrap();
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
    let forged = TokenKey::generate()
        .unwrap()
        .sign_admission(SESSION, "relay-e2e", unix(), 600)
        .unwrap();
    let expired = key
        .sign_admission(SESSION, "relay-e2e", unix() - 700, 600)
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

    // Heartbeats carry the counters by reason.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let last = beats.lock().unwrap().last().cloned();
        if let Some(b) = last.filter(|b| b["drops"]["token_invalid"] == 2) {
            assert_eq!(b["datagrams_forwarded"], 100, "{b}");
            assert_eq!(b["drops"]["token_expired"], 1, "{b}");
            assert_eq!(b["drops"]["token_wrong_relay"], 1, "{b}");
            assert_eq!(b["drops"]["wrong_address"], 1, "{b}");
            assert_eq!(b["drops"]["unknown_conn"], 2, "{b}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no heartbeat with the counters: {:?}",
            beats.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

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
    assert!(beats.lock().unwrap().iter().any(|b| b["draining"] == true));
}
