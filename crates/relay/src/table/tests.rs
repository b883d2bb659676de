#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use trackshift_grid::datagram::RelayDatagram;
use trackshift_grid::{PeerRole, RefusalCode, TokenKey};

use super::*;

pub(crate) const UNIX: u64 = 1_800_000_000;
pub(crate) const SESSION: &str = "0123456789abcdef0123456789abcdef";

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn dcsp(conn_id: u64, body: &[u8]) -> Vec<u8> {
    let mut d = vec![DCSP_MAGIC, 1, 1, 0];
    d.extend_from_slice(&conn_id.to_be_bytes());
    d.extend_from_slice(&[0; 6]);
    d.extend_from_slice(body);
    d
}

fn bind(role: PeerRole, conn_id: u64, token: &str) -> Vec<u8> {
    RelayDatagram::Bind {
        role,
        conn_id,
        token: token.into(),
    }
    .encode()
}

struct Fixture {
    key: TokenKey,
    table: RelayTable,
    t0: Instant,
}

fn fixture(limits: Limits, forward: Option<SocketAddr>) -> Fixture {
    let key = TokenKey::generate().unwrap();
    let t0 = Instant::now();
    let table = RelayTable::new("r1".into(), key.verifier(), forward, limits, t0);
    Fixture { key, table, t0 }
}

impl Fixture {
    fn token(&self) -> String {
        self.key.sign_admission(SESSION, "r1", UNIX, 600).unwrap()
    }

    fn send(&mut self, from: SocketAddr, datagram: &[u8]) -> Action {
        self.table.handle(self.t0, UNIX + 1, from, datagram)
    }

    fn bind_both(&mut self, conn_id: u64) {
        let token = self.token();
        let bound = RelayDatagram::Bound { conn_id }.encode();
        let a = self.send(addr(1000), &bind(PeerRole::Sender, conn_id, &token));
        assert_eq!(a, Action::Send(addr(1000), bound.clone()));
        let a = self.send(addr(2000), &bind(PeerRole::Receiver, conn_id, &token));
        assert_eq!(a, Action::Send(addr(2000), bound));
    }
}

fn refused(conn_id: u64, code: RefusalCode) -> Vec<u8> {
    RelayDatagram::Refused { conn_id, code }.encode()
}

#[test]
fn bound_ends_are_forwarded_both_ways_and_nothing_else() {
    let mut f = fixture(Limits::default(), None);
    f.bind_both(7);
    assert_eq!(
        f.send(addr(1000), &dcsp(7, b"x")),
        Action::Forward(addr(2000))
    );
    assert_eq!(
        f.send(addr(2000), &dcsp(7, b"y")),
        Action::Forward(addr(1000))
    );
    assert_eq!(
        f.send(addr(3000), &dcsp(7, b"z")),
        Action::Drop(DropReason::WrongAddress)
    );
    assert_eq!(
        f.send(addr(1000), &dcsp(8, b"z")),
        Action::Drop(DropReason::UnknownConn)
    );
    assert_eq!(
        f.send(addr(1000), b"\xdc\x01"),
        Action::Drop(DropReason::Junk)
    );
    assert_eq!(f.send(addr(1000), b"hello"), Action::Drop(DropReason::Junk));
    let c = f.table.counters();
    assert_eq!((c.datagrams_forwarded, c.binds), (2, 2));
    assert_eq!(c.drops(DropReason::WrongAddress), 1);
    assert_eq!(c.drops(DropReason::Junk), 2);
}

#[test]
fn one_end_alone_is_not_forwarded() {
    let mut f = fixture(Limits::default(), None);
    let token = f.token();
    f.send(addr(1000), &bind(PeerRole::Sender, 7, &token));
    assert_eq!(
        f.send(addr(1000), &dcsp(7, b"x")),
        Action::Drop(DropReason::NoPeerYet)
    );
}

#[test]
fn bad_tokens_are_refused_by_reason() {
    let mut f = fixture(Limits::default(), None);
    let other = TokenKey::generate().unwrap();
    let cases = [
        (
            other.sign_admission(SESSION, "r1", UNIX, 600).unwrap(),
            DropReason::TokenInvalid,
        ),
        (
            f.key
                .sign_admission(SESSION, "r1", UNIX - 700, 600)
                .unwrap(),
            DropReason::TokenExpired,
        ),
        (
            f.key.sign_admission(SESSION, "r2", UNIX, 600).unwrap(),
            DropReason::TokenWrongRelay,
        ),
        (
            f.key
                .sign_api("r1", trackshift_grid::Role::Relay, UNIX, 600)
                .unwrap(),
            DropReason::TokenInvalid,
        ),
        (
            format!("{},{}", f.token(), f.token()),
            DropReason::NoForward,
        ),
    ];
    for (token, reason) in cases {
        let before = f.table.counters().drops(reason);
        let a = f.send(addr(1000), &bind(PeerRole::Sender, 7, &token));
        assert_eq!(a, Action::Send(addr(1000), refused(7, RefusalCode::Token)));
        assert_eq!(f.table.counters().drops(reason), before + 1, "{reason:?}");
    }
    assert_eq!(f.table.bindings(), 0);
}

#[test]
fn a_conn_id_belongs_to_one_session() {
    let mut f = fixture(Limits::default(), None);
    f.bind_both(7);
    let other = f
        .key
        .sign_admission(&"f".repeat(32), "r1", UNIX, 600)
        .unwrap();
    let a = f.send(addr(3000), &bind(PeerRole::Sender, 7, &other));
    assert_eq!(
        a,
        Action::Send(addr(3000), refused(7, RefusalCode::ConnIdTaken))
    );
    assert_eq!(
        f.send(addr(1000), &dcsp(7, b"x")),
        Action::Forward(addr(2000))
    );
}

#[test]
fn a_rebind_moves_the_end() {
    let mut f = fixture(Limits::default(), None);
    f.bind_both(7);
    let token = f.token();
    f.send(addr(1001), &bind(PeerRole::Sender, 7, &token));
    assert_eq!(
        f.send(addr(1000), &dcsp(7, b"x")),
        Action::Drop(DropReason::WrongAddress)
    );
    assert_eq!(
        f.send(addr(1001), &dcsp(7, b"x")),
        Action::Forward(addr(2000))
    );
    assert_eq!(
        f.send(addr(2000), &dcsp(7, b"x")),
        Action::Forward(addr(1001))
    );
}

#[test]
fn bindings_expire_when_idle_and_with_their_token() {
    let mut f = fixture(Limits::default(), None);
    f.bind_both(7);
    let late = f.t0 + Duration::from_secs(61);
    assert_eq!(
        f.table.handle(late, UNIX + 1, addr(1000), &dcsp(7, b"x")),
        Action::Drop(DropReason::Expired)
    );
    assert_eq!(
        f.table.handle(f.t0, UNIX + 600, addr(1000), &dcsp(7, b"x")),
        Action::Drop(DropReason::Expired)
    );
    f.table.expire(late, UNIX + 1);
    assert_eq!(f.table.bindings(), 0);
    assert_eq!(f.table.session_ids().count(), 0);
}

#[test]
fn limits_refuse_as_busy() {
    let limits = Limits {
        max_bindings_per_session: 2,
        ..Limits::default()
    };
    let mut f = fixture(limits, None);
    f.bind_both(1);
    f.bind_both(2);
    let a = f.send(addr(1000), &bind(PeerRole::Sender, 3, &f.token()));
    assert_eq!(a, Action::Send(addr(1000), refused(3, RefusalCode::Busy)));
}

#[test]
fn rates_are_capped_per_session_and_globally() {
    for (limits, reason) in [
        (
            Limits {
                session_rate: Some(1000),
                ..Limits::default()
            },
            DropReason::SessionRate,
        ),
        (
            Limits {
                max_rate: Some(1000),
                ..Limits::default()
            },
            DropReason::GlobalRate,
        ),
    ] {
        let mut f = fixture(limits, None);
        f.bind_both(7);
        let big = dcsp(7, &[0u8; 60_000]);
        let mut passed = 0;
        for _ in 0..10 {
            if f.send(addr(1000), &big) == Action::Forward(addr(2000)) {
                passed += 1;
            }
        }
        // 256 KiB of burst: four of the ten.
        assert_eq!(passed, 4);
        assert_eq!(f.table.counters().drops(reason), 6);
        let later = f.t0 + Duration::from_secs(60);
        assert_eq!(
            f.table.handle(later, UNIX + 1, addr(1000), &big),
            Action::Forward(addr(2000))
        );
    }
}

#[test]
fn draining_refuses_binds_and_notifies_bound_ends() {
    let mut f = fixture(Limits::default(), None);
    f.bind_both(7);
    f.table.start_drain();
    let mut out = f.table.take_outbox();
    out.sort();
    let drain = RelayDatagram::Drain {
        conn_id: 7,
        token: String::new(),
    }
    .encode();
    assert_eq!(out, vec![(addr(1000), drain.clone()), (addr(2000), drain)]);
    let a = f.send(addr(1000), &bind(PeerRole::Sender, 8, &f.token()));
    assert_eq!(
        a,
        Action::Send(addr(1000), refused(8, RefusalCode::Draining))
    );
    // Bound connections keep flowing while their ends move.
    assert_eq!(
        f.send(addr(1000), &dcsp(7, b"x")),
        Action::Forward(addr(2000))
    );
}

#[test]
fn a_chain_binds_the_next_hop_and_passes_the_rest_on() {
    let hop = addr(9000);
    let mut f = fixture(Limits::default(), Some(hop));
    let second = f.key.sign_admission(SESSION, "r2", UNIX, 600).unwrap();
    let chain = format!("{},{second}", f.token());
    let a = f.send(addr(1000), &bind(PeerRole::Sender, 7, &chain));
    assert_eq!(a, Action::Send(hop, bind(PeerRole::Sender, 7, &second)));
    // The next hop's answer goes back to the sender; a stranger's does not.
    let bound = RelayDatagram::Bound { conn_id: 7 }.encode();
    assert_eq!(f.send(hop, &bound), Action::Forward(addr(1000)));
    assert_eq!(
        f.send(addr(3000), &bound),
        Action::Drop(DropReason::UnexpectedRelayDatagram)
    );
    assert_eq!(f.send(addr(1000), &dcsp(7, b"x")), Action::Forward(hop));
    assert_eq!(f.send(hop, &dcsp(7, b"y")), Action::Forward(addr(1000)));
    // A refresh goes on to the next hop again.
    let a = f.send(addr(1000), &bind(PeerRole::Sender, 7, &chain));
    assert_eq!(a, Action::Send(hop, bind(PeerRole::Sender, 7, &second)));
}

#[test]
fn a_refresh_skips_verification_but_not_draining() {
    let limits = Limits {
        verifications_per_sec: 1,
        ..Limits::default()
    };
    let mut f = fixture(limits, None);
    let token = f.token();
    let bound = RelayDatagram::Bound { conn_id: 7 }.encode();
    for _ in 0..5 {
        let a = f.send(addr(1000), &bind(PeerRole::Sender, 7, &token));
        assert_eq!(a, Action::Send(addr(1000), bound.clone()));
    }
    let a = f.send(addr(2000), &bind(PeerRole::Receiver, 7, &token));
    assert_eq!(a, Action::Drop(DropReason::VerifyFlood));
}

/// Throws random, forged and replayed datagrams at a table with four bound connections, between legitimate
/// traffic, and checks that every forward goes from one bound end to the other, unchanged, and only then.
#[test]
fn seeded_abuse_never_forwards_anything_unauthorised() {
    use rand::{rngs::StdRng, Rng, SeedableRng};

    for seed in [1u64, 2, 3, 0xdead_beef] {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut f = fixture(Limits::default(), None);
        let ends = |cid: u64| (addr(1000 + cid as u16), addr(2000 + cid as u16));
        let token = f.token();
        for cid in 1..=4u64 {
            let (s, r) = ends(cid);
            f.send(s, &bind(PeerRole::Sender, cid, &token));
            f.send(r, &bind(PeerRole::Receiver, cid, &token));
        }
        let bad_tokens = [
            TokenKey::generate()
                .unwrap()
                .sign_admission(SESSION, "r1", UNIX, 600)
                .unwrap(),
            f.key
                .sign_admission(SESSION, "r1", UNIX - 900, 600)
                .unwrap(),
            f.key.sign_admission(SESSION, "r9", UNIX, 600).unwrap(),
            f.key
                .sign_admission(&"e".repeat(32), "r1", UNIX - 900, 600)
                .unwrap(),
        ];
        let mut captured: Vec<Vec<u8>> = Vec::new();
        let mut forwards = 0;
        for _ in 0..20_000 {
            let cid = rng.gen_range(0..=6u64);
            let attacker = addr(rng.gen_range(3000..3100));
            let (from, datagram, legit) = match rng.gen_range(0..7) {
                0 => {
                    let len = rng.gen_range(0..64);
                    let mut junk: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                    if rng.gen_bool(0.5) && !junk.is_empty() {
                        junk[0] = if rng.gen() { DCSP_MAGIC } else { 0xDB };
                    }
                    (attacker, junk, false)
                }
                1 => (attacker, dcsp(cid, b"forged"), false),
                2 if !captured.is_empty() => {
                    let at = rng.gen_range(0..captured.len());
                    (attacker, captured[at].clone(), false)
                }
                3 => {
                    let t = &bad_tokens[rng.gen_range(0..bad_tokens.len())];
                    let role = if rng.gen() {
                        PeerRole::Sender
                    } else {
                        PeerRole::Receiver
                    };
                    (attacker, bind(role, cid, t), false)
                }
                4 => {
                    // A legitimate bind with one token byte changed, from a stranger.
                    let mut b = bind(PeerRole::Sender, cid, &token);
                    let at = rng.gen_range(14..b.len());
                    b[at] = if b[at] == b'A' { b'B' } else { b'A' };
                    (attacker, b, false)
                }
                5 => {
                    // A legitimate end sending for a conn id that is not its own.
                    let own = rng.gen_range(1..=4);
                    let (s, _) = ends(own);
                    (s, dcsp(cid, b"cross"), own == cid)
                }
                _ if (1..=4).contains(&cid) => {
                    let (s, r) = ends(cid);
                    let from = if rng.gen() { s } else { r };
                    (from, dcsp(cid, &rng.gen::<[u8; 16]>()), true)
                }
                _ => (attacker, dcsp(cid, b"nobody"), false),
            };
            let action = f.send(from, &datagram);
            if let Action::Forward(to) = action {
                forwards += 1;
                assert!(
                    legit,
                    "seed {seed}: forwarded {datagram:02x?} from {from} to {to}"
                );
                let (s, r) = ends(cid);
                assert_eq!(to, if from == s { r } else { s }, "seed {seed}");
                captured.push(datagram);
            } else {
                assert!(
                    !legit,
                    "seed {seed}: legitimate datagram dropped: {action:?}"
                );
            }
        }
        assert!(
            forwards > 1000,
            "seed {seed}: only {forwards} legitimate forwards"
        );
        assert!(f.table.counters().total_drops() > 10_000, "seed {seed}");
    }
}
