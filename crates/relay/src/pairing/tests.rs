#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::time::{Duration, Instant};

use trackshift_grid::{HelloAnswer, PeerRole, RelayHello, TokenKey};

use super::*;

const UNIX: u64 = 1_800_000_000;
const SESSION: &str = "0123456789abcdef0123456789abcdef";

fn hello(role: PeerRole, token: &str) -> RelayHello {
    RelayHello {
        role,
        token: token.into(),
    }
}

fn setup(limits: Limits, forwards: bool) -> (TokenKey, Pairing<u32>, Instant) {
    let key = TokenKey::generate().unwrap();
    let t0 = Instant::now();
    let pairing = Pairing::new("r1".into(), key.verifier(), forwards, limits, t0);
    (key, pairing, t0)
}

#[test]
fn a_sender_pairs_with_the_oldest_waiting_receiver() {
    let (key, mut p, t0) = setup(Limits::default(), false);
    let token = key.sign_admission(SESSION, "r1", UNIX, 600).unwrap();
    let Offer::Wait { deadline, .. } = p.offer(t0, UNIX, &hello(PeerRole::Receiver, &token), 1)
    else {
        panic!("receiver should wait");
    };
    assert_eq!(deadline, t0 + Duration::from_secs(300));
    assert!(matches!(
        p.offer(t0, UNIX, &hello(PeerRole::Receiver, &token), 2),
        Offer::Wait { .. }
    ));
    let Offer::Paired { peer, session } = p.offer(t0, UNIX, &hello(PeerRole::Sender, &token), 3)
    else {
        panic!("sender should pair");
    };
    assert_eq!((peer, session.as_str()), (1, SESSION));
    assert_eq!(p.waiting(), 1);
}

#[test]
fn a_lone_sender_waits_ten_seconds_then_gets_no_peer() {
    let (key, mut p, t0) = setup(Limits::default(), false);
    let token = key.sign_admission(SESSION, "r1", UNIX, 600).unwrap();
    let Offer::Wait { ticket, deadline } = p.offer(t0, UNIX, &hello(PeerRole::Sender, &token), 1)
    else {
        panic!("sender should wait");
    };
    assert_eq!(deadline, t0 + Duration::from_secs(10));
    assert!(p.expire(t0 + Duration::from_secs(9)).is_empty());
    assert_eq!(p.expire(t0 + Duration::from_secs(10)), vec![1]);
    assert_eq!(p.cancel(ticket), None);
    assert_eq!(p.counters().drops(DropReason::NoPeer), 1);
    // The receiver that comes later waits instead of pairing with nobody.
    assert!(matches!(
        p.offer(t0, UNIX, &hello(PeerRole::Receiver, &token), 2),
        Offer::Wait { .. }
    ));
}

#[test]
fn bad_tokens_busy_and_draining_are_refused() {
    let limits = Limits {
        max_waiting_per_session: 1,
        ..Limits::default()
    };
    let (key, mut p, t0) = setup(limits, false);
    let token = key.sign_admission(SESSION, "r1", UNIX, 600).unwrap();
    let wrong = key.sign_admission(SESSION, "r2", UNIX, 600).unwrap();
    let forged = TokenKey::generate()
        .unwrap()
        .sign_admission(SESSION, "r1", UNIX, 600)
        .unwrap();
    let expired = key.sign_admission(SESSION, "r1", UNIX - 601, 600).unwrap();
    for t in [&wrong, &forged, &expired, &format!("{token},{token}")] {
        assert!(matches!(
            p.offer(t0, UNIX, &hello(PeerRole::Receiver, t), 0),
            Offer::Refuse(HelloAnswer::Refused)
        ));
    }
    assert!(matches!(
        p.offer(t0, UNIX, &hello(PeerRole::Receiver, &token), 1),
        Offer::Wait { .. }
    ));
    assert!(matches!(
        p.offer(t0, UNIX, &hello(PeerRole::Receiver, &token), 2),
        Offer::Refuse(HelloAnswer::Busy)
    ));
    assert_eq!(p.start_drain(), vec![1]);
    assert!(matches!(
        p.offer(t0, UNIX, &hello(PeerRole::Sender, &token), 3),
        Offer::Refuse(HelloAnswer::Draining)
    ));
    let c = p.counters();
    assert_eq!(
        [
            DropReason::TokenWrongRelay,
            DropReason::TokenInvalid,
            DropReason::TokenExpired
        ]
        .map(|r| c.drops(r)),
        [1, 1, 1]
    );
}

#[test]
fn a_chain_is_forwarded_with_the_rest_of_its_tokens() {
    let (key, mut p, t0) = setup(Limits::default(), true);
    let mine = key.sign_admission(SESSION, "r1", UNIX, 600).unwrap();
    let next = key.sign_admission(SESSION, "r2", UNIX, 600).unwrap();
    let Offer::Forward { token, session } = p.offer(
        t0,
        UNIX,
        &hello(PeerRole::Sender, &format!("{mine},{next}")),
        1,
    ) else {
        panic!("chain should be forwarded");
    };
    assert_eq!((token, session.as_str()), (next, SESSION));
    p.stream_started(SESSION);
    assert_eq!(p.session_ids().count(), 1);
    p.stream_ended(SESSION, 100);
    assert_eq!((p.streams(), p.counters().stream_bytes_forwarded), (0, 100));
}
