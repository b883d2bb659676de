//! The chunk-update path (`PUT /api/v1/session/{id}/chunk/{chunk_id}`) on both backends. Completion comes from
//! the count of verified chunks each update keeps in the session's row (schema version 2), not from counting
//! the session's chunk rows again on every update: these tests hold that count to every transition a chunk
//! can take, to concurrent updates of one session, and to a version-1 database that the migration fills in.
//! (How the cost stays flat as a session grows is measured by bench/api-load.sh, not asserted here.)

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod common;

use common::{Db, Relays, TestServer};
use trackshift_grid::api::{ChunkStatus, CreateSession, ReceiverRegistration, SessionState};
use trackshift_grid::Role;
use trackshift_orchestrator::RateLimit;

const CHUNK: u64 = 5_242_880;

/// A server with one healthy relay and receiver `lab` registered.
fn server(db: Db, dir: &std::path::Path) -> (TestServer, Relays) {
    let server = TestServer::start(dir.to_path_buf(), db, RateLimit::default());
    let relays = Relays::new(&server);
    relays.add(&server, "r1");
    server
        .client(Role::Receiver, "lab")
        .register_receiver(&ReceiverRegistration {
            name: "lab".into(),
            relay_costs: Vec::new(),
        })
        .unwrap();
    (server, relays)
}

/// A new session of `chunks` chunks (the last one short) from sender `alice` to `lab`.
fn session(server: &TestServer, chunks: u64) -> String {
    let body = CreateSession {
        receiver: "lab".into(),
        file_name: "counted.bin".into(),
        file_size: chunks * CHUNK - 7,
        chunk_size: CHUNK,
        streams: 1,
        relays: 1,
        relay_costs: Vec::new(),
        resume: None,
    };
    server
        .client(Role::Sender, "alice")
        .create_session(&body)
        .unwrap()
        .session_id
}

fn state(server: &TestServer, id: &str) -> SessionState {
    server
        .client(Role::Sender, "alice")
        .session(id)
        .unwrap()
        .state
}

/// Verified, failed again, in flight, verified twice: complete exactly when the last chunk is verified, and a
/// verified chunk that fails again is taken off the count.
fn every_transition(db: Db) {
    let dir = common::state_dir();
    let (server, _relays) = server(db, dir.path());
    let lab = server.client(Role::Receiver, "lab");
    let id = session(&server, 40);
    // Every chunk once, in a scrambled order (17 is prime to 40), some of them twice and some failing first.
    for step in 0..39_u32 {
        let chunk = step * 17 % 40;
        if chunk % 5 == 0 {
            lab.update_chunk(&id, chunk, ChunkStatus::Failed).unwrap();
        }
        lab.update_chunk(&id, chunk, ChunkStatus::InFlight).unwrap();
        lab.update_chunk(&id, chunk, ChunkStatus::Verified).unwrap();
        if chunk % 3 == 0 {
            lab.update_chunk(&id, chunk, ChunkStatus::Verified).unwrap();
        }
        assert_eq!(state(&server, &id), SessionState::Active, "chunk {chunk}");
    }
    let last = 39 * 17 % 40;
    // A verified chunk fails its check again: the last one verified must not complete the session now.
    lab.update_chunk(&id, 0, ChunkStatus::Failed).unwrap();
    lab.update_chunk(&id, last, ChunkStatus::Verified).unwrap();
    assert_eq!(state(&server, &id), SessionState::Active);
    lab.update_chunk(&id, 0, ChunkStatus::Verified).unwrap();
    let record = server.client(Role::Sender, "alice").session(&id).unwrap();
    assert_eq!(record.state, SessionState::Complete);
    assert_eq!(record.chunks_verified, 40);
    server.stop();
}

/// Eight clients at once on one session, two on each chunk and every chunk reported twice by each: the kept
/// count loses none and counts none twice, so the session completes (and not before its last chunk).
fn concurrent_updates(db: Db) {
    let dir = common::state_dir();
    let (server, _relays) = server(db, dir.path());
    let id = session(&server, 160);
    std::thread::scope(|s| {
        for worker in 0..8_u32 {
            let client = server.client(Role::Receiver, "lab");
            let id = &id;
            s.spawn(move || {
                // Workers w and w + 4 report the same chunks at the same time, each twice: duplicates that
                // race, counted once.
                for chunk in (worker % 4..160).step_by(4).filter(|c| *c != 159) {
                    client
                        .update_chunk(id, chunk, ChunkStatus::Verified)
                        .unwrap();
                    client
                        .update_chunk(id, chunk, ChunkStatus::Verified)
                        .unwrap();
                }
            });
        }
    });
    assert_eq!(state(&server, &id), SessionState::Active);
    server
        .client(Role::Receiver, "lab")
        .update_chunk(&id, 159, ChunkStatus::Verified)
        .unwrap();
    assert_eq!(state(&server, &id), SessionState::Complete);
    server.stop();
}

#[test]
fn the_verified_count_follows_every_transition_on_sqlite() {
    every_transition(Db::Sqlite);
}

#[test]
fn the_verified_count_follows_every_transition_on_postgres() {
    let pg = common::pg::Postgres::start();
    every_transition(Db::Postgres(pg.url()));
}

#[test]
fn concurrent_updates_of_one_session_are_all_counted_on_sqlite() {
    concurrent_updates(Db::Sqlite);
}

#[test]
fn concurrent_updates_of_one_session_are_all_counted_on_postgres() {
    let pg = common::pg::Postgres::start();
    concurrent_updates(Db::Postgres(pg.url()));
}

/// A database of schema version 1 (no kept count) with two of three chunks verified: the migration to version
/// 2 counts them, so verifying the third completes the session.
#[test]
fn the_migration_counts_the_chunks_a_version_1_database_holds() {
    let dir = common::state_dir();
    let (server, relays) = server(Db::Sqlite, dir.path());
    let lab = server.client(Role::Receiver, "lab");
    let id = session(&server, 3);
    lab.update_chunk(&id, 0, ChunkStatus::Verified).unwrap();
    lab.update_chunk(&id, 1, ChunkStatus::Verified).unwrap();
    drop(relays);
    server.stop();
    // Back to version 1's shape, chunk rows kept.
    let db = rusqlite::Connection::open(dir.path().join("orchestrator.sqlite3")).unwrap();
    db.execute_batch(
        "ALTER TABLE sessions DROP COLUMN chunks_verified; DELETE FROM schema_migrations WHERE version = 2;",
    )
    .unwrap();
    drop(db);
    let (server, _relays) = {
        let server = TestServer::start(dir.path().to_path_buf(), Db::Sqlite, RateLimit::default());
        let relays = Relays::new(&server);
        (server, relays)
    };
    let lab = server.client(Role::Receiver, "lab");
    lab.update_chunk(&id, 2, ChunkStatus::Verified).unwrap();
    assert_eq!(state(&server, &id), SessionState::Complete);
    server.stop();
}
