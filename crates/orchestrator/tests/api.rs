//! One API suite, run against both backends: SQLite in a temporary state dir, and a real PostgreSQL server
//! the test starts itself. Every call goes through `trackshift-grid-client` (or raw HTTP where the point is a
//! malformed request), against the real server on a loopback port.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod common;

use std::time::{Duration, Instant};

use common::{Db, Relays, TestServer};
use trackshift_grid::api::{
    ChunkStatus, CreateSession, PathReport, ReceiverRegistration, RelayCost, RelayRegistration,
    SessionState,
};
use trackshift_grid::{Role, TokenKey};
use trackshift_grid_client::ClientError;
use trackshift_orchestrator::RateLimit;

#[test]
fn api_suite_on_sqlite() {
    let dir = common::state_dir();
    suite(dir.path().to_path_buf(), Db::Sqlite);
}

#[test]
fn api_suite_on_postgres() {
    let pg = common::pg::Postgres::start();
    let dir = common::state_dir();
    suite(dir.path().to_path_buf(), Db::Postgres(pg.url()));
}

fn suite(state_dir: std::path::PathBuf, db: Db) {
    let server = TestServer::start(state_dir.clone(), db.clone(), RateLimit::default());
    unauthenticated_endpoints(&server);
    tokens_are_checked(&server);
    let relays = Relays::new(&server);
    relays_register_probe_and_heartbeat(&server, &relays);
    receivers_register(&server);
    let session = sessions_pick_paths_and_track_chunks(&server);
    failover_keeps_what_works(&server, &session);
    the_long_poll_wakes_on_a_new_session(&server);
    bad_input_is_a_4xx_never_a_500(&server, &session);
    metrics_and_audit(&server);
    a_silent_relay_becomes_unhealthy(&server, &relays);
    drop(relays);
    // Restart on the same database and state dir: sessions and chunk maps are still there.
    server.stop();
    let server = TestServer::start(state_dir.clone(), db.clone(), RateLimit::default());
    a_restart_keeps_sessions_and_chunk_maps(&server, &session);
    server.stop();
    // A strict limit, to see a flood refused while another client goes on.
    let server = TestServer::start(
        state_dir,
        db,
        RateLimit {
            per_second: 20,
            burst: 20,
        },
    );
    a_flood_gets_429_and_others_go_on(&server);
    server.stop();
}

fn unauthenticated_endpoints(server: &TestServer) {
    let client = server.client(Role::Sender, "alice");
    client.healthz().unwrap();
    let doc = server.raw("GET", "/api/v1/openapi.json", None, None);
    assert_eq!(doc.status, 200);
    assert!(doc.json["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/session",
        "/api/v1/session/{id}/chunk/{chunk_id}",
        "/api/v1/receivers/{name}/sessions",
    ] {
        assert!(
            doc.json["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    let docs = server.raw("GET", "/api/docs/", None, None);
    assert_eq!(docs.status, 200, "{docs:?}");
    assert!(docs.text.contains("swagger"), "the docs page is Swagger UI");
    assert!(
        !docs.text.contains("https://"),
        "the docs page loads nothing from the internet"
    );
    let script = server.raw("GET", "/api/docs/swagger-ui-bundle.js", None, None);
    assert_eq!(script.status, 200, "Swagger UI's script is built in");
}

fn tokens_are_checked(server: &TestServer) {
    server
        .raw("GET", "/api/v1/relays", None, None)
        .assert_error(401, "no token");
    server
        .raw("GET", "/api/v1/relays", Some("not.a.jwt"), None)
        .assert_error(401, "garbage token");
    let forged = TokenKey::generate()
        .unwrap()
        .sign_api("alice", Role::Admin, common::now(), 60)
        .unwrap();
    server
        .raw("GET", "/api/v1/relays", Some(&forged), None)
        .assert_error(401, "another key's token");
    let expired = server
        .key
        .sign_api("alice", Role::Admin, common::now() - 120, 60)
        .unwrap();
    let answer = server.raw("GET", "/api/v1/relays", Some(&expired), None);
    answer.assert_error(401, "expired token");
    assert!(answer.json["error"].as_str().unwrap().contains("expired"));
    let receiver = server.token(Role::Receiver, "lab");
    let body =
        br#"{"receiver":"lab","file_name":"a","file_size":1,"chunk_size":5242880,"streams":1}"#;
    server
        .raw(
            "POST",
            "/api/v1/session",
            Some(&receiver),
            Some(("application/json", body)),
        )
        .assert_error(403, "a receiver creating a session");
    let err = server
        .client(Role::Sender, "alice")
        .register_receiver(&ReceiverRegistration {
            name: "alice".into(),
            relay_costs: vec![],
        });
    assert_eq!(
        err.unwrap_err().status(),
        Some(403),
        "a sender registering a receiver"
    );
}

fn relays_register_probe_and_heartbeat(server: &TestServer, relays: &Relays) {
    for id in ["r1", "r2", "r3", "r4"] {
        relays.add(server, id);
    }
    let listed = server.client(Role::Sender, "alice").relays().unwrap();
    assert_eq!(listed.len(), 4);
    assert!(
        listed.iter().all(|r| r.healthy && r.region == "lab"),
        "{listed:?}"
    );
    assert!(listed[0].last_heartbeat.ends_with('Z'));
    // A relay token may only register and heartbeat its own id.
    let r1 = server.client(Role::Relay, "r1");
    let stolen = r1.register_relay(&RelayRegistration {
        relay_id: "r2".into(),
        addr: "127.0.0.1:9".into(),
        region: String::new(),
        max_rate: None,
        forward: None,
    });
    assert_eq!(stolen.unwrap_err().status(), Some(403));
    // A heartbeat for a relay nobody registered: 404, so it registers again.
    let ghost = server.client(Role::Relay, "ghost");
    assert!(ghost
        .heartbeat("ghost", &Default::default())
        .unwrap_err()
        .is_not_found());
    // A relay the orchestrator cannot reach: 422, recorded as unhealthy, its heartbeats refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dead = server.client(Role::Relay, "dead");
    let answer = dead.register_relay(&RelayRegistration {
        relay_id: "dead".into(),
        addr: closed.to_string(),
        region: String::new(),
        max_rate: None,
        forward: None,
    });
    assert_eq!(answer.unwrap_err().status(), Some(422));
    assert!(dead
        .heartbeat("dead", &Default::default())
        .unwrap_err()
        .is_not_found());
    let listed = server.client(Role::Admin, "ops").relays().unwrap();
    assert!(
        !listed
            .iter()
            .find(|r| r.relay_id == "dead")
            .unwrap()
            .healthy
    );
}

fn costs(pairs: &[(&str, f64)]) -> Vec<RelayCost> {
    pairs
        .iter()
        .map(|(id, rtt)| RelayCost {
            relay_id: (*id).into(),
            rtt_ms: *rtt,
            loss: 0.0,
        })
        .collect()
}

fn receivers_register(server: &TestServer) {
    let lab = server.client(Role::Receiver, "lab");
    let registered = lab
        .register_receiver(&ReceiverRegistration {
            name: "lab".into(),
            relay_costs: costs(&[("r1", 10.0), ("r2", 12.0), ("r3", 14.0), ("r4", 30.0)]),
        })
        .unwrap();
    assert_eq!(registered.admission_key, server.key.verifier().public_hex());
    let other = lab.register_receiver(&ReceiverRegistration {
        name: "other".into(),
        relay_costs: vec![],
    });
    assert_eq!(
        other.unwrap_err().status(),
        Some(403),
        "a receiver token registers only its own name"
    );
    let listed = server.client(Role::Sender, "alice").receivers().unwrap();
    assert!(listed.iter().any(|r| r.name == "lab" && r.online));
}

fn new_session(receiver: &str, relays: u8) -> CreateSession {
    CreateSession {
        resume: None,
        receiver: receiver.into(),
        file_name: "big.bin".into(),
        file_size: 3 * 5_242_880 + 1,
        chunk_size: 5_242_880,
        streams: 2,
        relays,
        relay_costs: costs(&[("r1", 10.0), ("r2", 12.0), ("r3", 14.0), ("r4", 30.0)]),
    }
}

/// Creates a striped session, checks its path and drives its chunk map to complete; returns its id.
fn sessions_pick_paths_and_track_chunks(server: &TestServer) -> String {
    let alice = server.client(Role::Sender, "alice");
    let created = alice.create_session(&new_session("lab", 2)).unwrap();
    let id = created.session_id.clone();
    assert_eq!(id.len(), 32);
    let stripes: Vec<&str> = created
        .path
        .stripes
        .iter()
        .map(|r| r.relay_id.as_str())
        .collect();
    assert_eq!(
        stripes,
        ["r1", "r2"],
        "the two cheapest: {}",
        created.path.reason
    );
    assert_eq!(created.path.standby.as_ref().unwrap().relay_id, "r3");
    assert!(
        created.path.reason.contains("r1="),
        "{}",
        created.path.reason
    );
    // Each admission token lets exactly its relay forward exactly this session.
    let verifier = trackshift_grid::TokenVerifier::from_hex(&created.admission_key).unwrap();
    for relay in created.path.stripes.iter().chain(&created.path.standby) {
        let claims = verifier
            .verify_admission(&relay.token, &relay.relay_id, common::now())
            .unwrap();
        assert_eq!(claims.sub, id);
    }
    let record = alice.session(&id).unwrap();
    assert_eq!(
        (record.state, record.chunks.len()),
        (SessionState::Pending, 4)
    );
    assert_eq!(record.sender, "alice");
    // Its receiver sees it too; another sender does not.
    let lab = server.client(Role::Receiver, "lab");
    assert_eq!(lab.session(&id).unwrap().session_id, id);
    assert_eq!(
        server
            .client(Role::Sender, "mallory")
            .session(&id)
            .unwrap_err()
            .status(),
        Some(403)
    );
    assert!(server
        .client(Role::Sender, "mallory")
        .sessions()
        .unwrap()
        .is_empty());
    assert_eq!(alice.sessions().unwrap().len(), 1);
    assert_eq!(lab.sessions().unwrap().len(), 1);
    // Chunks: active on the first update, complete when all are verified.
    alice.update_chunk(&id, 0, ChunkStatus::InFlight).unwrap();
    assert_eq!(alice.session(&id).unwrap().state, SessionState::Active);
    for chunk in 0..4 {
        lab.update_chunk(&id, chunk, ChunkStatus::Verified).unwrap();
    }
    let done = alice.session(&id).unwrap();
    assert_eq!(done.state, SessionState::Complete);
    assert_eq!(
        (done.chunks_verified, done.bytes_verified),
        (4, 3 * 5_242_880 + 1)
    );
    assert!(done.chunks.iter().all(|c| *c == ChunkStatus::Verified));
    lab.update_chunk(&id, 3, ChunkStatus::Verified).unwrap(); // a late duplicate is fine
    assert_eq!(
        lab.update_chunk(&id, 3, ChunkStatus::Failed)
            .unwrap_err()
            .status(),
        Some(409)
    );
    assert_eq!(
        alice
            .update_chunk(&id, 4, ChunkStatus::Verified)
            .unwrap_err()
            .status(),
        Some(404)
    );
    id
}

fn failover_keeps_what_works(server: &TestServer, striped: &str) {
    let alice = server.client(Role::Sender, "alice");
    // r1 fails: the standby r3 takes its place, r2 stays, r4 becomes standby; r2's token is kept.
    let before = alice.session(striped).unwrap().path;
    let after = alice
        .report_path(
            striped,
            &PathReport {
                failed_relay: "r1".into(),
            },
        )
        .unwrap();
    let ids: Vec<&str> = after.stripes.iter().map(|r| r.relay_id.as_str()).collect();
    assert_eq!(ids, ["r3", "r2"], "{}", after.reason);
    assert_eq!(after.standby.as_ref().unwrap().relay_id, "r4");
    assert_eq!(after.version, before.version + 1);
    assert_eq!(after.stripes[1].token, before.stripes[1].token);
    assert!(after.reason.starts_with("r1 failed"), "{}", after.reason);
    // The receiver reports the same failure a moment later: it gets the same path, not a second change.
    let again = server
        .client(Role::Receiver, "lab")
        .report_path(
            striped,
            &PathReport {
                failed_relay: "r1".into(),
            },
        )
        .unwrap();
    assert_eq!(again, after);
    assert_eq!(
        alice.session(striped).unwrap().path,
        after,
        "the record shows the new path and why"
    );
    // Hysteresis: a single-relay session on r1 (sender r1=1, r2=12, r3=8 ms; receiver 10, 12, 14) has the
    // standby r3 (22) before r2 (24). The receiver then measures r2 closer (12 + 7 = 19): cheaper than r3, but
    // not by more than 20 %, so when r1 fails the standby r3 is promoted all the same.
    let mut request = new_session("lab", 1);
    request.relay_costs = costs(&[("r1", 1.0), ("r2", 12.0), ("r3", 8.0), ("r4", 30.0)]);
    let single = alice.create_session(&request).unwrap();
    assert_eq!(
        single.path.stripes[0].relay_id, "r1",
        "{}",
        single.path.reason
    );
    assert_eq!(
        single.path.standby.as_ref().unwrap().relay_id,
        "r3",
        "{}",
        single.path.reason
    );
    let lab = server.client(Role::Receiver, "lab");
    let measured = |r2: f64| ReceiverRegistration {
        name: "lab".into(),
        relay_costs: costs(&[("r1", 10.0), ("r2", r2), ("r3", 14.0), ("r4", 30.0)]),
    };
    lab.register_receiver(&measured(7.0)).unwrap();
    let moved = alice
        .report_path(
            &single.session_id,
            &PathReport {
                failed_relay: "r1".into(),
            },
        )
        .unwrap();
    assert_eq!(moved.stripes[0].relay_id, "r3", "{}", moved.reason);
    assert!(moved.reason.contains("kept r3"), "{}", moved.reason);
    assert_eq!(
        moved.standby.as_ref().unwrap().relay_id,
        "r2",
        "{}",
        moved.reason
    );
    lab.register_receiver(&measured(12.0)).unwrap();
    let unknown = alice.report_path(
        &single.session_id,
        &PathReport {
            failed_relay: "../x".into(),
        },
    );
    assert_eq!(unknown.unwrap_err().status(), Some(422));
}

fn the_long_poll_wakes_on_a_new_session(server: &TestServer) {
    let lab = server.client(Role::Receiver, "lab");
    let now = lab.receiver_sessions("lab", 0, Duration::ZERO).unwrap();
    let after = now.next;
    // Nothing new: an empty answer after about the wait.
    let started = Instant::now();
    let empty = lab
        .receiver_sessions("lab", after, Duration::from_secs(1))
        .unwrap();
    assert!(empty.sessions.is_empty() && empty.next == after);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    // A session created while the poll waits wakes it at once.
    let alice = server.client(Role::Sender, "alice");
    let creator = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        alice
            .create_session(&new_session("lab", 1))
            .unwrap()
            .session_id
    });
    let started = Instant::now();
    let woke = lab
        .receiver_sessions("lab", after, Duration::from_secs(20))
        .unwrap();
    let created = creator.join().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(woke.sessions.len(), 1);
    assert_eq!(woke.sessions[0].session_id, created);
    assert!(woke.next > after);
    // Only its own name, and at most 30 s.
    assert_eq!(
        lab.receiver_sessions("other", 0, Duration::ZERO)
            .unwrap_err()
            .status(),
        Some(403)
    );
    let token = server.token(Role::Receiver, "lab");
    server
        .raw(
            "GET",
            "/api/v1/receivers/lab/sessions?wait=31",
            Some(&token),
            None,
        )
        .assert_error(422, "wait 31");
    server
        .raw(
            "GET",
            "/api/v1/receivers/lab/sessions?after=-1",
            Some(&token),
            None,
        )
        .assert_client_error("after -1");
}

/// A raw request's body: its content type and bytes.
type Body<'a> = Option<(&'a str, &'a [u8])>;

fn bad_input_is_a_4xx_never_a_500(server: &TestServer, session: &str) {
    let sender = server.token(Role::Sender, "alice");
    let admin = server.token(Role::Admin, "ops");
    let json = |b: &'static [u8]| Some(("application/json", b));
    let cases: Vec<(&str, String, Body<'_>, &str)> = vec![
        ("POST", "/api/v1/session".into(), json(b"{not json"), "malformed JSON"),
        ("POST", "/api/v1/session".into(), json(b"[]"), "JSON of the wrong shape"),
        ("POST", "/api/v1/session".into(), Some(("text/plain", b"{}")), "wrong content type"),
        ("POST", "/api/v1/session".into(), None, "no body"),
        ("POST", "/api/v1/session".into(), json(br#"{"receiver":"../x","file_name":"a","file_size":1,"chunk_size":5242880,"streams":1}"#), "traversal in a name"),
        ("POST", "/api/v1/session".into(), json(b"{\"receiver\":\"a\\u0001b\",\"file_name\":\"a\",\"file_size\":1,\"chunk_size\":5242880,\"streams\":1}"), "control character in a name"),
        ("POST", "/api/v1/session".into(), json(br#"{"receiver":"lab","file_name":"../../etc/passwd","file_size":1,"chunk_size":5242880,"streams":1}"#), "traversal in a file name"),
        ("POST", "/api/v1/session".into(), json(br#"{"receiver":"lab","file_name":"a","file_size":1,"chunk_size":1,"streams":1}"#), "chunk size out of range"),
        ("POST", "/api/v1/session".into(), json(br#"{"receiver":"lab","file_name":"a","file_size":1,"chunk_size":5242880,"streams":0}"#), "no streams"),
        ("POST", "/api/v1/session".into(), json(br#"{"receiver":"lab","file_name":"a","file_size":1,"chunk_size":5242880,"streams":1,"relays":99}"#), "too many stripes"),
        ("POST", "/api/v1/session".into(), json(br#"{"receiver":"nobody-here","file_name":"a","file_size":1,"chunk_size":5242880,"streams":1}"#), "unknown receiver"),
        ("GET", "/api/v1/session/00000000000000000000000000000000".into(), None, "unknown session"),
        ("GET", "/api/v1/session/xyz".into(), None, "bad session id"),
        ("GET", "/api/v1/session/..%2F..%2Fetc".into(), None, "traversal in a session id"),
        ("PUT", format!("/api/v1/session/{session}/chunk/abc"), json(br#"{"status":"verified"}"#), "chunk id not a number"),
        ("PUT", format!("/api/v1/session/{session}/chunk/99999999999"), json(br#"{"status":"verified"}"#), "chunk id too big"),
        ("PUT", format!("/api/v1/session/{session}/chunk/0"), json(br#"{"status":"eaten"}"#), "unknown chunk status"),
        ("GET", "/api/v1/receivers/..%2Fx/sessions".into(), None, "traversal in a receiver name"),
        ("GET", format!("/api/v1/receivers/{}/sessions", "x".repeat(65)), None, "receiver name too long"),
        ("POST", "/api/v1/relays/a%0Ab/heartbeat".into(), json(b"{}"), "control character in a relay id"),
        ("GET", "/api/v1/no-such-thing".into(), None, "unknown path"),
        ("DELETE", "/api/v1/relays".into(), None, "wrong method"),
    ];
    for (method, path, body, what) in cases {
        let token = if method == "GET" && path.contains("/receivers/") {
            &admin
        } else {
            &sender
        };
        server
            .raw(method, &path, Some(token), body)
            .assert_client_error(what);
    }
    let big = vec![b' '; 100 * 1024];
    let answer = server.raw(
        "POST",
        "/api/v1/session",
        Some(&sender),
        Some(("application/json", &big)),
    );
    answer.assert_error(413, "oversized body");
    let relay = server.token(Role::Relay, "r1");
    let beat = br#"{"sessions":1,"load":7.5,"bytes_forwarded":0,"datagrams_forwarded":0}"#;
    server
        .raw(
            "POST",
            "/api/v1/relays/r1/heartbeat",
            Some(&relay),
            json(beat),
        )
        .assert_error(422, "load out of range");
    // The server is still fine.
    server.client(Role::Sender, "alice").healthz().unwrap();
}

fn metrics_and_audit(server: &TestServer) {
    let metrics = server.client(Role::Relay, "r1").metrics().unwrap();
    assert!(metrics.sessions_total >= 3, "{metrics:?}");
    assert_eq!(metrics.relays_total, 5);
    assert!(metrics.relays_healthy >= 4);
    assert!(metrics.receivers_online >= 1);
    assert!(metrics.chunk_updates_total >= 5);
    assert!(metrics.bytes_verified_total > 3 * 5_242_880);
    // The audit log holds who changed what (written in the background: give it a moment).
    let url = match &server.db {
        Db::Sqlite => trackshift_orchestrator::Store::sqlite_url(
            &server.state_dir.join("orchestrator.sqlite3"),
        ),
        Db::Postgres(url) => url.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let entries = server.runtime.block_on(async {
            let store = trackshift_orchestrator::Store::open(&url).await.unwrap();
            let tail = store.audit_tail(1000).await.unwrap();
            store.close().await;
            tail
        });
        let found = entries.iter().any(|e| {
            e.subject == "alice"
                && e.method == "POST"
                && e.path == "/api/v1/session"
                && e.status == 200
        });
        if found {
            assert!(
                entries.iter().all(|e| e.method != "GET"),
                "only changes are audited"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no audit entry for alice's POST /api/v1/session: {entries:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn a_silent_relay_becomes_unhealthy(server: &TestServer, relays: &Relays) {
    relays.silence("r4");
    let deadline = Instant::now() + Duration::from_secs(10);
    let admin = server.client(Role::Admin, "ops");
    loop {
        let r4 = admin
            .relays()
            .unwrap()
            .into_iter()
            .find(|r| r.relay_id == "r4")
            .unwrap();
        if !r4.healthy {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "r4 still healthy 10 s after its last heartbeat (interval 1 s)"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // And it is no longer chosen.
    let created = server
        .client(Role::Sender, "alice")
        .create_session(&new_session("lab", 4))
        .unwrap();
    assert!(created
        .path
        .stripes
        .iter()
        .chain(&created.path.standby)
        .all(|r| r.relay_id != "r4"));
}

fn a_restart_keeps_sessions_and_chunk_maps(server: &TestServer, session: &str) {
    let alice = server.client(Role::Sender, "alice");
    let record = alice.session(session).unwrap();
    assert_eq!(record.state, SessionState::Complete);
    assert!(record.chunks.iter().all(|c| *c == ChunkStatus::Verified));
    assert_eq!(record.path.version, 2, "the failover's path survived");
    assert!(alice.sessions().unwrap().len() >= 4);
    // Relays and receivers are still known; a relay's heartbeat goes on without a new registration.
    let relays = alice.relays().unwrap();
    assert_eq!(relays.len(), 5);
    server
        .client(Role::Relay, "r1")
        .heartbeat("r1", &Default::default())
        .unwrap();
    assert!(alice.receivers().unwrap().iter().any(|r| r.name == "lab"));
    assert!(
        alice.metrics().unwrap().chunk_updates_total >= 5,
        "the counters were saved"
    );
}

fn a_flood_gets_429_and_others_go_on(server: &TestServer) {
    let flooder = server.client(Role::Sender, "flood");
    let mut refused = None;
    for _ in 0..200 {
        match flooder.relays() {
            Ok(_) => {}
            Err(e @ ClientError::Refused { status: 429, .. }) => {
                refused = Some(e);
                break;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    let refused = refused.expect("200 requests at once were all allowed by a 20/s limit");
    assert!(refused
        .retry_after()
        .is_some_and(|d| d >= Duration::from_secs(1)));
    let raw = server.raw(
        "GET",
        "/api/v1/relays",
        Some(&server.token(Role::Sender, "flood")),
        None,
    );
    raw.assert_error(429, "still flooded");
    assert!(raw.retry_after.is_some());
    // Another client is not affected.
    server.client(Role::Sender, "bob").relays().unwrap();
}
