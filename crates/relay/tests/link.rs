//! The orchestrator link against an in-memory orchestrator: heartbeats carry the counters, a 404 and the end
//! of an outage bring a re-registration (with a new key taking effect), a drain is announced at once.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use trackshift_grid::api::{RelayHeartbeat, RelayRegistered, RelayRegistration};
use trackshift_grid::datagram::RelayDatagram;
use trackshift_grid::{PeerRole, TokenKey};
use trackshift_relay::orchestrator::{register, Link, LinkError, Orchestrator};
use trackshift_relay::{Limits, Relay, RelayConfig};

#[derive(Default)]
struct State {
    key_hex: String,
    registrations: usize,
    beats: Vec<RelayHeartbeat>,
    /// Next heartbeat answers: 404 (true) or unreachable (false); empty: OK.
    failures: Vec<bool>,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<State>>);

impl Orchestrator for Fake {
    fn register(&self, _body: &RelayRegistration) -> Result<RelayRegistered, LinkError> {
        let mut s = self.0.lock().unwrap();
        s.registrations += 1;
        Ok(RelayRegistered {
            relay_id: "r1".into(),
            admission_key: s.key_hex.clone(),
            heartbeat_interval_secs: 1,
        })
    }

    fn heartbeat(&self, _relay_id: &str, body: &RelayHeartbeat) -> Result<(), LinkError> {
        let mut s = self.0.lock().unwrap();
        s.beats.push(body.clone());
        match s.failures.pop() {
            Some(true) => Err(LinkError::NotFound),
            Some(false) => Err(LinkError::Other("connection refused".into())),
            None => Ok(()),
        }
    }
}

fn unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn wait_for(fake: &Fake, what: impl Fn(&State) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !what(&fake.0.lock().unwrap()) {
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_beats_reregisters_and_announces_a_drain() {
    let first = TokenKey::generate().unwrap();
    let fake = Fake::default();
    fake.0.lock().unwrap().key_hex = first.verifier().public_hex();
    let body = RelayRegistration {
        relay_id: "r1".into(),
        addr: "127.0.0.1:1".into(),
        region: String::new(),
        max_rate: None,
        forward: None,
    };
    let (registered, verifier) = register(&fake, &body, Duration::from_secs(5)).unwrap();
    let relay = Relay::start(RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        relay_id: "r1".into(),
        verifier,
        forward: None,
        limits: Limits::default(),
        tap: None,
    })
    .await
    .unwrap();
    let link = Link::spawn(Box::new(fake.clone()), body, &registered, relay.handle()).unwrap();
    let f = fake.clone();
    tokio::task::spawn_blocking(move || wait_for(&f, |s| !s.beats.is_empty()))
        .await
        .unwrap();

    // The orchestrator restarted with a new key and forgot us: 404, then a registration with the new key.
    let second = TokenKey::generate().unwrap();
    {
        let mut s = fake.0.lock().unwrap();
        s.key_hex = second.verifier().public_hex();
        s.failures = vec![true];
    }
    let f = fake.clone();
    tokio::task::spawn_blocking(move || wait_for(&f, |s| s.registrations == 2))
        .await
        .unwrap();
    // The new key is the one tokens verify with now.
    let at = relay.local_addr();
    let token = second
        .sign_admission(&"ab".repeat(16), "r1", unix(), 600)
        .unwrap();
    let answer = tokio::task::spawn_blocking(move || {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let bind = RelayDatagram::Bind {
            role: PeerRole::Sender,
            conn_id: 1,
            token,
        };
        socket.send_to(&bind.encode(), at).unwrap();
        let mut buf = [0u8; 64];
        let n = socket.recv(&mut buf).unwrap();
        RelayDatagram::decode(&buf[..n]).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(answer, RelayDatagram::Bound { conn_id: 1 });
    // An outage, then the orchestrator is back: a registration again.
    fake.0.lock().unwrap().failures = vec![false, false];
    let f = fake.clone();
    tokio::task::spawn_blocking(move || wait_for(&f, |s| s.registrations == 3))
        .await
        .unwrap();

    let t0 = Instant::now();
    link.draining();
    let f = fake.clone();
    tokio::task::spawn_blocking(move || {
        wait_for(&f, |s| s.beats.last().is_some_and(|b| b.draining))
    })
    .await
    .unwrap();
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "the drain is announced at once"
    );
    drop(link);
    let _ = relay;
}
