//! The crash-safe session store (`<state>/sessions.sqlite3`).

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use trackshift_proto::SessionId;

use crate::dirs::{StateDir, PRIVATE_FILE_MODE};
use crate::error::io_error;
use crate::StorageError;

/// How long a statement waits for another connection (in this or another process) to release its lock before
/// failing with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The schema, created on every open if missing. `incoming` / `outgoing`: session id bytes → JSON of
/// [`IncomingSession`] / [`OutgoingSession`] (`created` mirrors `created_unix`); `incoming_chunks`: verified
/// chunks of incoming sessions, (session id bytes, chunk index) → SHA-256 of the chunk; `partial_chunks`: chunks
/// not verified yet of which a prefix is durable in the partial file, (session id bytes, chunk index) → its
/// length in bytes.
const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS incoming (id BLOB PRIMARY KEY, created INTEGER, json TEXT);
    CREATE TABLE IF NOT EXISTS outgoing (id BLOB PRIMARY KEY, created INTEGER, json TEXT);
    CREATE TABLE IF NOT EXISTS incoming_chunks (
        id BLOB, idx INTEGER, sha256 BLOB, PRIMARY KEY (id, idx)
    );
    CREATE TABLE IF NOT EXISTS partial_chunks (
        id BLOB, idx INTEGER, bytes INTEGER, PRIMARY KEY (id, idx)
    );
";

/// Where a session stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Active,
    Interrupted,
    Failed,
    Completed,
    Abandoned,
}

impl SessionState {
    /// The lowercase name used in JSON and in `trackshift list`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Interrupted => "interrupted",
            Self::Failed => "failed",
            Self::Completed => "completed",
            Self::Abandoned => "abandoned",
        }
    }
}

impl std::fmt::Display for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The receiver's record of one incoming transfer. `id` is stored (and shown in JSON) as 32 hex digits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncomingSession {
    #[serde(with = "id_hex")]
    pub id: SessionId,
    pub file_name: String,
    pub size: u64,
    pub chunk_size: u64,
    pub chunk_count: u32,
    /// The sender's mtime of the source, in ns since the epoch; informative.
    pub source_mtime_ns: i128,
    pub output_dir: PathBuf,
    /// The last peer address.
    pub peer: String,
    pub state: SessionState,
    pub created_unix: u64,
    pub updated_unix: u64,
    pub final_path: Option<PathBuf>,
    pub sha256_hex: Option<String>,
    pub error: Option<String>,
}

/// The sender's record of one outgoing transfer. `id` is stored (and shown in JSON) as 32 hex digits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingSession {
    #[serde(with = "id_hex")]
    pub id: SessionId,
    /// Canonical path of the source file.
    pub source: PathBuf,
    /// As given to `--to`.
    pub to: String,
    pub receiver_fingerprint: Option<String>,
    pub size: u64,
    pub mtime_ns: i128,
    pub chunk_size: u64,
    pub chunk_count: u32,
    /// "tcp" / "udp".
    pub protocol: String,
    /// "auto" / "zstd" / "none".
    pub compress: String,
    pub state: SessionState,
    pub created_unix: u64,
    pub updated_unix: u64,
    /// File bytes the receiver confirmed, for `status`.
    pub bytes_confirmed: u64,
    pub sha256_hex: Option<String>,
    pub error: Option<String>,
}

/// One row of `trackshift list`: JSON has `"direction": "incoming" | "outgoing"` beside the record's fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "direction", rename_all = "snake_case")]
pub enum SessionRecord {
    Incoming(IncomingSession),
    Outgoing(OutgoingSession),
}

impl SessionRecord {
    pub fn id(&self) -> &SessionId {
        match self {
            Self::Incoming(r) => &r.id,
            Self::Outgoing(r) => &r.id,
        }
    }

    pub fn state(&self) -> SessionState {
        match self {
            Self::Incoming(r) => r.state,
            Self::Outgoing(r) => r.state,
        }
    }

    pub fn created_unix(&self) -> u64 {
        match self {
            Self::Incoming(r) => r.created_unix,
            Self::Outgoing(r) => r.created_unix,
        }
    }

    pub fn updated_unix(&self) -> u64 {
        match self {
            Self::Incoming(r) => r.updated_unix,
            Self::Outgoing(r) => r.updated_unix,
        }
    }
}

/// Serde helpers: a [`SessionId`] as 32 lowercase hex digits.
pub mod id_hex {
    use serde::{Deserialize, Deserializer, Serializer};
    use trackshift_proto::SessionId;

    pub fn serialize<S: Serializer>(id: &SessionId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&id.to_hex())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SessionId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Crash-safe session store: one SQLite database at `<state>/sessions.sqlite3`.
///
/// Several processes may open the same state dir at once (a `trackshift receive` daemon, `status` / `list` from
/// another shell, a `send` on the same machine): each [`SessionStore::open`] is one SQLite connection, SQLite's
/// file locks serialise writers across connections and processes, and a write waits up to 5 s (the busy
/// timeout) for another writer instead of failing. Every store sees the others' committed writes.
///
/// The database runs in WAL journal mode with `synchronous=FULL`: every write method is one transaction whose
/// commit is fsynced to the write-ahead log before the method returns, so a crash or power cut at any instant
/// leaves either the old or the new state, never a mix, and a returned write is never lost. Records are JSON
/// values keyed by the session id bytes; verified chunks are rows keyed by (session id, chunk index). Besides
/// the database file SQLite keeps `sessions.sqlite3-wal` and `sessions.sqlite3-shm` next to it while in use.
///
/// The store is `Send + Sync` and all methods take `&self`; share it in an `Arc`. The connection sits behind a
/// mutex, so calls on one store run one at a time.
#[derive(Debug)]
pub struct SessionStore {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl SessionStore {
    /// File name of the store inside the state dir.
    pub const FILE_NAME: &'static str = "sessions.sqlite3";

    /// Opens (creating if missing) `<state>/sessions.sqlite3`. Other stores on the same state dir, in this
    /// process or others, may be open at the same time.
    pub fn open(state: &StateDir) -> Result<Self, StorageError> {
        let path = state.path().join(Self::FILE_NAME);
        // Create the file ourselves (owner-only) so that a missing permission or a full disk is reported as such
        // rather than as SQLite's generic "unable to open database file".
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(PRIVATE_FILE_MODE)
            .open(&path)
            .map_err(|e| io_error("open session store", &path, e))?;
        let conn = Connection::open(&path).map_err(|e| db_error(&path, e))?;
        Self::configure(&conn).map_err(|e| db_error(&path, e))?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(|e| db_error(&path, e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StorageError::Database {
                path,
                detail: format!("cannot switch to WAL journal mode (got {mode:?})"),
            });
        }
        let store = Self {
            conn: Mutex::new(conn),
            path,
        };
        store.write(|txn| txn.execute_batch(SCHEMA))?;
        Ok(store)
    }

    /// Per-connection settings: wait for other writers, fsync every commit.
    fn configure(conn: &Connection) -> rusqlite::Result<()> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        Ok(())
    }

    /// Inserts or replaces an incoming record.
    pub fn put_incoming(&self, rec: &IncomingSession) -> Result<(), StorageError> {
        let json = self.encode(rec)?;
        self.write(|txn| {
            txn.execute(
                "INSERT OR REPLACE INTO incoming (id, created, json) VALUES (?1, ?2, ?3)",
                params![&rec.id.0[..], sql_int(rec.created_unix), json],
            )
            .map(drop)
        })
    }

    /// The incoming record for `id`, if any.
    pub fn incoming(&self, id: &SessionId) -> Result<Option<IncomingSession>, StorageError> {
        self.get_json("SELECT json FROM incoming WHERE id = ?1", id)
    }

    /// Records chunk `index` of session `id` as verified with its SHA-256, durably (one commit). Idempotent.
    pub fn mark_chunk_verified(
        &self,
        id: &SessionId,
        index: u32,
        sha256: [u8; 32],
    ) -> Result<(), StorageError> {
        self.write(|txn| {
            txn.execute(
                "INSERT OR REPLACE INTO incoming_chunks (id, idx, sha256) VALUES (?1, ?2, ?3)",
                params![&id.0[..], index, &sha256[..]],
            )?;
            // A verified chunk is no longer partial.
            txn.execute(
                "DELETE FROM partial_chunks WHERE id = ?1 AND idx = ?2",
                params![&id.0[..], index],
            )
            .map(drop)
        })
    }

    /// Records that the first `bytes` bytes of chunk `index` of session `id` are durable in the partial file
    /// (the caller synced them first), so a resume needs only the rest. `bytes` 0 forgets the chunk's prefix
    /// (it failed verification and goes again whole).
    pub fn set_partial_chunk(
        &self,
        id: &SessionId,
        index: u32,
        bytes: u64,
    ) -> Result<(), StorageError> {
        let bytes = i64::try_from(bytes).map_err(|_| self.bad_record(format!("{bytes} bytes")))?;
        self.write(|txn| {
            if bytes == 0 {
                txn.execute(
                    "DELETE FROM partial_chunks WHERE id = ?1 AND idx = ?2",
                    params![&id.0[..], index],
                )
            } else {
                txn.execute(
                    "INSERT OR REPLACE INTO partial_chunks (id, idx, bytes) VALUES (?1, ?2, ?3)",
                    params![&id.0[..], index, bytes],
                )
            }
            .map(drop)
        })
    }

    /// The chunks of session `id` with a durable prefix and no verdict yet, sorted by index.
    pub fn partial_chunks(&self, id: &SessionId) -> Result<Vec<(u32, u64)>, StorageError> {
        let conn = self.lock();
        let rows = (|| -> rusqlite::Result<Vec<(i64, i64)>> {
            let mut stmt = conn.prepare_cached(
                "SELECT idx, bytes FROM partial_chunks WHERE id = ?1 ORDER BY idx",
            )?;
            let rows = stmt.query_map(params![&id.0[..]], |row| Ok((row.get(0)?, row.get(1)?)))?;
            rows.collect()
        })()
        .map_err(|e| db_error(&self.path, e))?;
        drop(conn);
        rows.into_iter()
            .map(|(idx, bytes)| {
                let idx = u32::try_from(idx)
                    .map_err(|_| self.bad_record(format!("chunk index {idx}")))?;
                let bytes = u64::try_from(bytes)
                    .map_err(|_| self.bad_record(format!("chunk {idx} has {bytes} bytes")))?;
                Ok((idx, bytes))
            })
            .collect()
    }

    /// Verified chunks of session `id`, sorted by index.
    pub fn verified_chunks(&self, id: &SessionId) -> Result<Vec<(u32, [u8; 32])>, StorageError> {
        let conn = self.lock();
        let rows = (|| -> rusqlite::Result<Vec<(i64, Vec<u8>)>> {
            let mut stmt = conn.prepare_cached(
                "SELECT idx, sha256 FROM incoming_chunks WHERE id = ?1 ORDER BY idx",
            )?;
            let rows = stmt.query_map(params![&id.0[..]], |row| Ok((row.get(0)?, row.get(1)?)))?;
            rows.collect()
        })()
        .map_err(|e| db_error(&self.path, e))?;
        drop(conn);
        rows.into_iter()
            .map(|(idx, sha)| {
                let idx = u32::try_from(idx)
                    .map_err(|_| self.bad_record(format!("chunk index {idx}")))?;
                let sha = <[u8; 32]>::try_from(sha.as_slice()).map_err(|_| {
                    self.bad_record(format!("chunk {idx} has a {}-byte SHA-256", sha.len()))
                })?;
                Ok((idx, sha))
            })
            .collect()
    }

    /// Deletes the incoming record for `id` and all its chunk rows, in one commit.
    pub fn remove_incoming(&self, id: &SessionId) -> Result<(), StorageError> {
        self.write(|txn| {
            txn.execute("DELETE FROM incoming WHERE id = ?1", params![&id.0[..]])?;
            txn.execute(
                "DELETE FROM incoming_chunks WHERE id = ?1",
                params![&id.0[..]],
            )?;
            txn.execute(
                "DELETE FROM partial_chunks WHERE id = ?1",
                params![&id.0[..]],
            )?;
            Ok(())
        })
    }

    /// Inserts or replaces an outgoing record.
    pub fn put_outgoing(&self, rec: &OutgoingSession) -> Result<(), StorageError> {
        let json = self.encode(rec)?;
        self.write(|txn| {
            txn.execute(
                "INSERT OR REPLACE INTO outgoing (id, created, json) VALUES (?1, ?2, ?3)",
                params![&rec.id.0[..], sql_int(rec.created_unix), json],
            )
            .map(drop)
        })
    }

    /// The outgoing record for `id`, if any.
    pub fn outgoing(&self, id: &SessionId) -> Result<Option<OutgoingSession>, StorageError> {
        self.get_json("SELECT json FROM outgoing WHERE id = ?1", id)
    }

    /// The newest outgoing session (largest `created_unix`) for this canonical `source` path and `to` string,
    /// in any state.
    pub fn find_outgoing(
        &self,
        source: &Path,
        to: &str,
    ) -> Result<Option<OutgoingSession>, StorageError> {
        let (_, outgoing) = self.all_json(false)?;
        Ok(outgoing
            .into_iter()
            .filter(|r| r.source == source && r.to == to)
            .max_by_key(|r| (r.created_unix, r.updated_unix)))
    }

    /// Every session, incoming and outgoing, newest first (by `created_unix`, then `updated_unix`).
    pub fn list(&self) -> Result<Vec<SessionRecord>, StorageError> {
        let (incoming, outgoing) = self.all_json(true)?;
        let mut all: Vec<SessionRecord> = incoming
            .into_iter()
            .map(SessionRecord::Incoming)
            .chain(outgoing.into_iter().map(SessionRecord::Outgoing))
            .collect();
        all.sort_by(|a, b| {
            (b.created_unix(), b.updated_unix()).cmp(&(a.created_unix(), a.updated_unix()))
        });
        Ok(all)
    }

    fn encode<T: Serialize>(&self, rec: &T) -> Result<String, StorageError> {
        serde_json::to_string(rec).map_err(|e| self.bad_record(e.to_string()))
    }

    fn decode<T: for<'de> Deserialize<'de>>(&self, json: &str) -> Result<T, StorageError> {
        serde_json::from_str(json).map_err(|e| self.bad_record(e.to_string()))
    }

    fn bad_record(&self, detail: String) -> StorageError {
        StorageError::BadRecord {
            path: self.path.clone(),
            detail,
        }
    }

    /// The connection. A panic while it was held (in a caller's thread) cannot leave a transaction open — a
    /// dropped `Transaction` rolls back — so a poisoned mutex is still usable.
    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        sql: &str,
        id: &SessionId,
    ) -> Result<Option<T>, StorageError> {
        let json: Option<String> = self
            .lock()
            .query_row(sql, params![&id.0[..]], |row| row.get(0))
            .optional()
            .map_err(|e| db_error(&self.path, e))?;
        json.map(|j| self.decode(&j)).transpose()
    }

    /// The JSON of every outgoing record, and of every incoming one if `with_incoming`, read from one snapshot.
    fn all_json(
        &self,
        with_incoming: bool,
    ) -> Result<(Vec<IncomingSession>, Vec<OutgoingSession>), StorageError> {
        let mut conn = self.lock();
        let (incoming, outgoing) = (|| {
            let txn = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
            let incoming = if with_incoming {
                select_all_json(&txn, "SELECT json FROM incoming")?
            } else {
                Vec::new()
            };
            let outgoing = select_all_json(&txn, "SELECT json FROM outgoing")?;
            txn.commit()?;
            Ok((incoming, outgoing))
        })()
        .map_err(|e| db_error(&self.path, e))?;
        drop(conn);
        let incoming = incoming
            .iter()
            .map(|j| self.decode(j))
            .collect::<Result<_, _>>()?;
        let outgoing = outgoing
            .iter()
            .map(|j| self.decode(j))
            .collect::<Result<_, _>>()?;
        Ok((incoming, outgoing))
    }

    /// Runs `f` in one write transaction and commits it (durably: `synchronous=FULL`). The transaction starts
    /// `IMMEDIATE`, taking the write lock up front so that waiting for another writer goes through the busy
    /// timeout. On error the transaction is dropped, which rolls it back.
    fn write<F>(&self, f: F) -> Result<(), StorageError>
    where
        F: FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>,
    {
        let mut conn = self.lock();
        (|| {
            let txn = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            f(&txn)?;
            txn.commit()
        })()
        .map_err(|e| db_error(&self.path, e))
    }
}

/// Every `json` column value of `sql`'s rows.
fn select_all_json(conn: &Connection, sql: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map([], |row| row.get(0))?;
    rows.collect()
}

/// A `u64` as an SQLite integer (saturating; only used for the informative `created` column).
fn sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Maps any SQLite error: a full disk and refused access are classified like the same I/O errors, the rest
/// becomes [`StorageError::Database`].
fn db_error(path: &Path, e: rusqlite::Error) -> StorageError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StorageError::NoSpace {
            path: path.to_path_buf(),
        },
        Some(ErrorCode::PermissionDenied | ErrorCode::ReadOnly) => StorageError::PermissionDenied {
            path: path.to_path_buf(),
            action: "write session store",
        },
        _ => StorageError::Database {
            path: path.to_path_buf(),
            detail: e.to_string().replace('\n', " "),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn incoming(id: SessionId, created: u64) -> IncomingSession {
        IncomingSession {
            id,
            file_name: "a.bin".into(),
            size: 10_000_000,
            chunk_size: 1 << 20,
            chunk_count: 10,
            source_mtime_ns: 1_700_000_000_123_456_789,
            output_dir: "/tmp/out".into(),
            peer: "127.0.0.1:4000".into(),
            state: SessionState::Active,
            created_unix: created,
            updated_unix: created,
            final_path: None,
            sha256_hex: None,
            error: None,
        }
    }

    fn outgoing(id: SessionId, source: &str, to: &str, created: u64) -> OutgoingSession {
        OutgoingSession {
            id,
            source: source.into(),
            to: to.into(),
            receiver_fingerprint: Some("ab:cd".into()),
            size: 5,
            mtime_ns: -5,
            chunk_size: 4,
            chunk_count: 2,
            protocol: "tcp".into(),
            compress: "auto".into(),
            state: SessionState::Interrupted,
            created_unix: created,
            updated_unix: created + 1,
            bytes_confirmed: 4,
            sha256_hex: Some("00ff".into()),
            error: Some("peer went away".into()),
        }
    }

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn store_is_send_sync() {
        assert_send_sync::<SessionStore>();
    }

    #[test]
    fn round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path()).unwrap();
        let store = SessionStore::open(&state).unwrap();
        assert!(tmp.path().join(SessionStore::FILE_NAME).is_file());
        let a = SessionId([1; 16]);
        assert!(store.incoming(&a).unwrap().is_none());

        let mut rec = incoming(a, 100);
        store.put_incoming(&rec).unwrap();
        assert_eq!(store.incoming(&a).unwrap().unwrap(), rec);
        rec.state = SessionState::Completed;
        rec.final_path = Some("/tmp/out/a.bin".into());
        store.put_incoming(&rec).unwrap();
        assert_eq!(store.incoming(&a).unwrap().unwrap(), rec);

        let o = outgoing(SessionId([2; 16]), "/src/f", "host:1", 50);
        store.put_outgoing(&o).unwrap();
        assert_eq!(store.outgoing(&o.id).unwrap().unwrap(), o);
        assert!(store.outgoing(&a).unwrap().is_none());
    }

    #[test]
    fn partial_chunks_are_kept_until_verified_forgotten_or_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path()).unwrap();
        let id = SessionId([7; 16]);
        {
            let store = SessionStore::open(&state).unwrap();
            store.put_incoming(&incoming(id, 1)).unwrap();
            store.set_partial_chunk(&id, 3, 1 << 20).unwrap();
            store.set_partial_chunk(&id, 3, 2 << 20).unwrap();
            store.set_partial_chunk(&id, 5, 7).unwrap();
        }
        // Durable: a new process (a restarted receiver) reads them back.
        let store = SessionStore::open(&state).unwrap();
        assert_eq!(
            store.partial_chunks(&id).unwrap(),
            vec![(3, 2 << 20), (5, 7)]
        );
        store.mark_chunk_verified(&id, 3, [1; 32]).unwrap();
        assert_eq!(store.partial_chunks(&id).unwrap(), vec![(5, 7)]);
        store.set_partial_chunk(&id, 5, 0).unwrap();
        assert!(store.partial_chunks(&id).unwrap().is_empty());
        store.set_partial_chunk(&id, 6, 9).unwrap();
        store.remove_incoming(&id).unwrap();
        assert!(store.partial_chunks(&id).unwrap().is_empty());
    }

    #[test]
    fn json_shape() {
        let rec = incoming(SessionId([0xab; 16]), 1);
        let v = serde_json::to_value(SessionRecord::Incoming(rec)).unwrap();
        assert_eq!(v["direction"], "incoming");
        assert_eq!(v["id"], "ab".repeat(16));
        assert_eq!(v["state"], "active");
        let o = outgoing(SessionId([1; 16]), "/s", "h:1", 1);
        let v = serde_json::to_value(SessionRecord::Outgoing(o)).unwrap();
        assert_eq!(v["direction"], "outgoing");
        assert_eq!(v["state"], "interrupted");
    }

    #[test]
    fn chunks_persist_across_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path()).unwrap();
        let a = SessionId([1; 16]);
        let b = SessionId([2; 16]);
        {
            let store = SessionStore::open(&state).unwrap();
            store.put_incoming(&incoming(a, 1)).unwrap();
            for i in [3u32, 0, u32::MAX] {
                store.mark_chunk_verified(&a, i, [i as u8; 32]).unwrap();
            }
            store.mark_chunk_verified(&a, 3, [3; 32]).unwrap(); // idempotent
            store.mark_chunk_verified(&b, 1, [9; 32]).unwrap();
        }
        let store = SessionStore::open(&state).unwrap();
        assert_eq!(
            store.verified_chunks(&a).unwrap(),
            vec![(0, [0; 32]), (3, [3; 32]), (u32::MAX, [u8::MAX; 32])]
        );
        assert_eq!(store.verified_chunks(&b).unwrap(), vec![(1, [9; 32])]);
        assert!(store.incoming(&a).unwrap().is_some());

        store.remove_incoming(&a).unwrap();
        assert!(store.incoming(&a).unwrap().is_none());
        assert!(store.verified_chunks(&a).unwrap().is_empty());
        assert_eq!(
            store.verified_chunks(&b).unwrap().len(),
            1,
            "other sessions untouched"
        );
    }

    #[test]
    fn two_stores_on_one_dir_share_state() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path()).unwrap();
        let first = SessionStore::open(&state).unwrap();
        let second = SessionStore::open(&state).unwrap();
        let a = SessionId([1; 16]);
        let o = outgoing(SessionId([2; 16]), "/s/f", "h:1", 5);

        first.put_incoming(&incoming(a, 10)).unwrap();
        first.mark_chunk_verified(&a, 4, [4; 32]).unwrap();
        second.put_outgoing(&o).unwrap();
        assert_eq!(second.incoming(&a).unwrap().unwrap(), incoming(a, 10));
        assert_eq!(second.verified_chunks(&a).unwrap(), vec![(4, [4; 32])]);
        assert_eq!(first.outgoing(&o.id).unwrap().unwrap(), o);
        assert_eq!(first.list().unwrap(), second.list().unwrap());

        second.remove_incoming(&a).unwrap();
        assert!(first.incoming(&a).unwrap().is_none());
        assert!(first.verified_chunks(&a).unwrap().is_empty());
    }

    #[test]
    fn two_stores_write_concurrently() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path()).unwrap();
        let id = SessionId([7; 16]);
        let handles: Vec<_> = (0..4u32)
            .map(|t| {
                // One store (one SQLite connection) per thread: writers contend on the file lock.
                let store = SessionStore::open(&state).unwrap();
                std::thread::spawn(move || {
                    for i in 0..25u32 {
                        store.mark_chunk_verified(&id, t * 25 + i, [0; 32]).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let store = SessionStore::open(&state).unwrap();
        assert_eq!(store.verified_chunks(&id).unwrap().len(), 100);
    }

    /// Set by [`another_process_sees_writes`] for the child it starts.
    const CHILD_DIR_ENV: &str = "TRACKSHIFT_STORAGE_TEST_CHILD_DIR";

    /// Does nothing in a normal run; in the child of [`another_process_sees_writes`] it writes a record and a
    /// chunk through its own store and checks it sees the parent's record.
    #[test]
    fn child_process_writer() {
        let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
            return;
        };
        let store = SessionStore::open(&StateDir::open(Path::new(&dir)).unwrap()).unwrap();
        assert!(store.incoming(&SessionId([1; 16])).unwrap().is_some());
        store
            .put_outgoing(&outgoing(SessionId([2; 16]), "/s/f", "h:1", 5))
            .unwrap();
        store
            .mark_chunk_verified(&SessionId([1; 16]), 9, [9; 32])
            .unwrap();
    }

    #[test]
    fn another_process_sees_writes() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path()).unwrap();
        let store = SessionStore::open(&state).unwrap();
        store
            .put_incoming(&incoming(SessionId([1; 16]), 1))
            .unwrap();

        // Re-run this test binary, only the child test, while `store` stays open here.
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::tests::child_process_writer",
                "--test-threads=1",
            ])
            .env(CHILD_DIR_ENV, tmp.path())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "child failed: {status}");

        let o = store.outgoing(&SessionId([2; 16])).unwrap().unwrap();
        assert_eq!(o, outgoing(SessionId([2; 16]), "/s/f", "h:1", 5));
        assert_eq!(
            store.verified_chunks(&SessionId([1; 16])).unwrap(),
            vec![(9, [9; 32])]
        );
    }

    #[test]
    fn find_and_list() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SessionStore::open(&StateDir::open(tmp.path()).unwrap()).unwrap();
        store
            .put_outgoing(&outgoing(SessionId([1; 16]), "/s/f", "h:1", 10))
            .unwrap();
        store
            .put_outgoing(&outgoing(SessionId([2; 16]), "/s/f", "h:1", 30))
            .unwrap();
        store
            .put_outgoing(&outgoing(SessionId([3; 16]), "/s/f", "h:2", 40))
            .unwrap();
        store
            .put_outgoing(&outgoing(SessionId([4; 16]), "/s/g", "h:1", 50))
            .unwrap();
        store
            .put_incoming(&incoming(SessionId([5; 16]), 20))
            .unwrap();

        let found = store
            .find_outgoing(Path::new("/s/f"), "h:1")
            .unwrap()
            .unwrap();
        assert_eq!(found.id, SessionId([2; 16]));
        assert!(store
            .find_outgoing(Path::new("/s/x"), "h:1")
            .unwrap()
            .is_none());

        let ids: Vec<u8> = store.list().unwrap().iter().map(|r| r.id().0[0]).collect();
        assert_eq!(ids, vec![4, 3, 2, 5, 1]);
    }

    #[test]
    fn concurrent_marks_from_threads() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(SessionStore::open(&StateDir::open(tmp.path()).unwrap()).unwrap());
        let id = SessionId([7; 16]);
        let handles: Vec<_> = (0..4u32)
            .map(|t| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for i in 0..10u32 {
                        store.mark_chunk_verified(&id, t * 10 + i, [0; 32]).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let idx: Vec<u32> = store
            .verified_chunks(&id)
            .unwrap()
            .iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(idx, (0..40).collect::<Vec<_>>());
    }
}
