//! Everything the orchestrator keeps: sessions, their chunk maps, relays, receivers, counters and the audit log,
//! in SQLite or PostgreSQL through one code path.
//!
//! One [`Store`] over sqlx's `Any` pool rather than two pools behind a trait: every query is written once, in the
//! SQL both databases speak (`$1` placeholders, `ON CONFLICT … DO UPDATE`, `RETURNING`), so the two backends
//! cannot drift; only the schema files differ (identity columns, `REAL` vs `DOUBLE PRECISION`). Queries are
//! checked at run time by the tests against both, not at compile time (no macros, no database at build time).
//! Migrations are versioned SQL files applied in order and recorded in `schema_migrations`.
//!
//! SQLite runs in WAL mode with `synchronous=NORMAL`: a crash of the orchestrator loses nothing committed, a
//! power cut may lose the last moments of chunk updates, which the senders report again (the engine's own
//! store at each end is what resumes a transfer; the orchestrator's chunk map is the grid's view of it).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{install_default_drivers, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};
use trackshift_grid::api::{ChunkStatus, RelayCost, RelayHeartbeat, SessionPath, SessionState};

/// How long a query waits for a connection from the pool before it fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long SQLite waits on a lock held by another connection before it fails a statement.
const SQLITE_BUSY_MS: u32 = 5_000;

/// One versioned migration, with its SQL for each backend.
struct Migration {
    version: i64,
    description: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "sessions, chunks, relays, receivers, metrics, audit_log",
        sqlite: include_str!("../migrations/0001_initial.sqlite.sql"),
        postgres: include_str!("../migrations/0001_initial.postgres.sql"),
    },
    Migration {
        version: 2,
        description: "sessions.chunks_verified, kept by chunk updates",
        sqlite: include_str!("../migrations/0002_chunks_verified.sqlite.sql"),
        postgres: include_str!("../migrations/0002_chunks_verified.postgres.sql"),
    },
];

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// `--database` is neither `sqlite:` nor `postgres://`.
    #[error("database URL `{0}` is not supported: use postgres://USER@HOST:PORT/DB or leave --database out for SQLite in the state dir")]
    BadUrl(String),
    /// The database could not be opened.
    #[error("cannot open the database {url}: {source}: check that it runs and the URL, user and password")]
    Open { url: String, source: sqlx::Error },
    /// A migration failed, or the database is newer than this orchestrator.
    #[error("database schema: {0}")]
    Migrate(String),
    /// A query failed.
    #[error("database query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// A stored value does not parse (hand-edited, or written by a newer version).
    #[error("stored {0} does not parse: the database was changed outside the orchestrator")]
    Corrupt(&'static str),
}

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The orchestrator's database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite's chunk updates take turns here (see [`Store::sqlite_chunk_turn`]); shared by the clones.
    chunk_turn: Arc<tokio::sync::Mutex<()>>,
}

/// A session as stored.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub seq: u64,
    pub session_id: String,
    pub sender: String,
    pub receiver: String,
    pub file_name: String,
    pub file_size: u64,
    pub chunk_size: u64,
    pub num_chunks: u32,
    pub streams: u8,
    pub stripes_wanted: u8,
    pub state: SessionState,
    pub path: SessionPath,
    pub sender_costs: Vec<RelayCost>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A relay as stored.
#[derive(Debug, Clone)]
pub struct RelayRow {
    pub relay_id: String,
    pub addr: String,
    pub region: String,
    pub max_rate: Option<u64>,
    pub forward: Option<String>,
    /// The TCP probe at its last registration succeeded.
    pub probed: bool,
    /// Cleared by the eviction task after missed heartbeats, set again by a heartbeat.
    pub healthy: bool,
    pub last_heartbeat: i64,
    pub sessions: u32,
    pub load: f64,
    pub draining: bool,
    pub bytes_forwarded: u64,
}

/// A receiver as stored.
#[derive(Debug, Clone)]
pub struct ReceiverRow {
    pub name: String,
    pub relay_costs: Vec<RelayCost>,
    pub last_seen: i64,
}

/// Whose sessions a list shows.
#[derive(Debug, Clone, Copy)]
pub enum Owner<'a> {
    All,
    Sender(&'a str),
    Receiver(&'a str),
}

/// One audited request.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub at: i64,
    pub subject: String,
    pub role: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub peer: String,
}

const SESSION_COLUMNS: &str =
    "seq, session_id, sender, receiver, file_name, file_size, chunk_size, num_chunks, \
     streams, stripes_wanted, state, path, sender_costs, created_at, updated_at";

impl Store {
    /// Opens (creating a SQLite file if needed) and migrates the database at `url` (`sqlite:PATH` or
    /// `postgres://…`).
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        install_default_drivers();
        let backend: Backend = url.parse()?;
        let options = match backend {
            // Writes are serialised by SQLite anyway; a few connections let reads go on beside them.
            Backend::Sqlite => AnyPoolOptions::new()
                .max_connections(4)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute(sqlx::AssertSqlSafe(format!(
                            "PRAGMA busy_timeout = {SQLITE_BUSY_MS}"
                        )))
                        .await?;
                        Ok(())
                    })
                }),
            Backend::Postgres => AnyPoolOptions::new().max_connections(8),
        };
        let pool = options
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await
            .map_err(|source| StoreError::Open {
                url: redact(url),
                source,
            })?;
        let store = Self {
            pool,
            backend,
            chunk_turn: Arc::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The SQLite URL of a file (created if missing).
    pub fn sqlite_url(path: &std::path::Path) -> String {
        format!("sqlite://{}?mode=rwc", path.display())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes the pool, waiting for queries in flight.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let fail = |e: sqlx::Error| StoreError::Migrate(e.to_string());
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, \
             description TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        )
        .execute(&self.pool)
        .await
        .map_err(fail)?;
        let applied: Vec<i64> = sqlx::query("SELECT version FROM schema_migrations")
            .fetch_all(&self.pool)
            .await
            .map_err(fail)?
            .iter()
            .map(|r| r.try_get::<i64, _>(0))
            .collect::<Result<_, _>>()
            .map_err(fail)?;
        let latest = MIGRATIONS.last().map_or(0, |m| m.version);
        if let Some(newer) = applied.iter().find(|v| **v > latest) {
            return Err(StoreError::Migrate(format!(
                "the database is at version {newer}, newer than this orchestrator's {latest}: run a newer trackshift"
            )));
        }
        for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
            let sql = match self.backend {
                Backend::Sqlite => m.sqlite,
                Backend::Postgres => m.postgres,
            };
            let mut tx = self.pool.begin().await.map_err(fail)?;
            sqlx::raw_sql(sql).execute(&mut *tx).await.map_err(fail)?;
            sqlx::query("INSERT INTO schema_migrations (version, description, applied_at) VALUES ($1, $2, $3)")
                .bind(m.version)
                .bind(m.description)
                .bind(crate::clock::now_ms())
                .execute(&mut *tx)
                .await
                .map_err(fail)?;
            tx.commit().await.map_err(fail)?;
            tracing::info!(
                "database migrated to version {}: {}",
                m.version,
                m.description
            );
        }
        Ok(())
    }

    // ---- sessions ----

    /// Stores a new session; returns its `seq`.
    pub async fn insert_session(&self, s: &SessionRow) -> Result<u64, StoreError> {
        let row = sqlx::query(
            "INSERT INTO sessions (session_id, sender, receiver, file_name, file_size, chunk_size, num_chunks, \
             streams, stripes_wanted, state, path, path_version, sender_costs, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) RETURNING seq",
        )
        .bind(&s.session_id)
        .bind(&s.sender)
        .bind(&s.receiver)
        .bind(&s.file_name)
        .bind(i(s.file_size))
        .bind(i(s.chunk_size))
        .bind(i64::from(s.num_chunks))
        .bind(i64::from(s.streams))
        .bind(i64::from(s.stripes_wanted))
        .bind(state_text(s.state))
        .bind(to_json(&s.path))
        .bind(i64::from(s.path.version))
        .bind(to_json(&s.sender_costs))
        .bind(s.created_at)
        .bind(s.updated_at)
        .fetch_one(&self.pool)
        .await?;
        Ok(u(row.try_get(0)?))
    }

    pub async fn session(&self, session_id: &str) -> Result<Option<SessionRow>, StoreError> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = $1"
        ));
        let row = sqlx::query(sql)
            .bind(session_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(session_row).transpose()
    }

    /// The newest `limit` sessions of `owner`, oldest first.
    pub async fn sessions(
        &self,
        owner: Owner<'_>,
        limit: u32,
    ) -> Result<Vec<SessionRow>, StoreError> {
        let (filter, who) = match owner {
            Owner::All => ("$1 = ''", ""),
            Owner::Sender(s) => ("sender = $1", s),
            Owner::Receiver(r) => ("receiver = $1", r),
        };
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE {filter} ORDER BY seq DESC LIMIT $2"
        ));
        let rows = sqlx::query(sql)
            .bind(who)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        let mut sessions = rows
            .iter()
            .map(session_row)
            .collect::<Result<Vec<_>, _>>()?;
        sessions.reverse();
        Ok(sessions)
    }

    /// Pending or active sessions to `receiver` with `seq > after`, oldest first.
    pub async fn open_sessions_after(
        &self,
        receiver: &str,
        after: u64,
    ) -> Result<Vec<SessionRow>, StoreError> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE receiver = $1 AND seq > $2 \
             AND state IN ('pending', 'active') ORDER BY seq LIMIT 100"
        ));
        let rows = sqlx::query(sql)
            .bind(receiver)
            .bind(i(after))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(session_row).collect()
    }

    /// A session's chunk map: every chunk, missing unless a status was reported.
    pub async fn chunk_map(
        &self,
        session_id: &str,
        num_chunks: u32,
    ) -> Result<Vec<ChunkStatus>, StoreError> {
        let rows = sqlx::query("SELECT chunk_idx, status FROM chunks WHERE session_id = $1")
            .bind(session_id)
            .fetch_all(&self.pool)
            .await?;
        let mut map = vec![ChunkStatus::Missing; num_chunks as usize];
        for row in rows {
            let idx = usize::try_from(row.try_get::<i64, _>(0)?)
                .map_err(|_| StoreError::Corrupt("chunk index"))?;
            let status = parse_chunk(&row.try_get::<String, _>(1)?)?;
            if let Some(slot) = map.get_mut(idx) {
                *slot = status;
            }
        }
        Ok(map)
    }

    /// Records one chunk's status, keeps the session's count of verified chunks and marks a pending session
    /// active, in one transaction. Costs O(log chunks): nothing counts the chunk rows. The chunk's row is
    /// written first (each statement atomic on that row, so concurrent reports of one chunk count once); the
    /// session's row last, so PostgreSQL holds that row's lock, which every update of the session waits for,
    /// only for one statement and the commit.
    pub async fn set_chunk(
        &self,
        session_id: &str,
        idx: u32,
        status: ChunkStatus,
        now: i64,
    ) -> Result<(), StoreError> {
        let _turn = self.sqlite_chunk_turn().await;
        let mut tx = self.pool.begin().await?;
        let delta = write_chunk(&mut tx, session_id, idx, status, now).await?;
        sqlx::query(
            "UPDATE sessions SET updated_at = $2, chunks_verified = chunks_verified + $3, \
             state = CASE WHEN state = 'pending' THEN 'active' ELSE state END WHERE session_id = $1",
        )
        .bind(session_id)
        .bind(now)
        .bind(delta)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Marks the session complete if every chunk is verified (its kept count, see [`Store::set_chunk`]); true
    /// if it just became complete. Run after [`Store::set_chunk`] committed, so of two last updates at once at
    /// least the later one sees both.
    pub async fn complete_if_done(&self, session_id: &str, now: i64) -> Result<bool, StoreError> {
        let _turn = self.sqlite_chunk_turn().await;
        let done = sqlx::query(
            "UPDATE sessions SET state = 'complete', updated_at = $2 WHERE session_id = $1 AND state <> 'complete' \
             AND chunks_verified >= num_chunks",
        )
        .bind(session_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// On SQLite, chunk updates take turns in this process before they write. SQLite has one writer at a time
    /// anyway, and a writer that finds the lock taken sleeps in SQLite's busy handler (1, 2, 5, 10, 15, 20, 25
    /// ms ... between tries), which put ~35 ms on the slowest 1% of updates at 1,000/s (bench/api-load.sh;
    /// 8-10 ms with this queue): a queue in front of it wakes each one as soon as the one before finished.
    /// The queue is this store's (one database), not the process's. PostgreSQL updates of different sessions
    /// go on at once, so there it is `None`.
    async fn sqlite_chunk_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.backend {
            Backend::Sqlite => Some(self.chunk_turn.lock().await),
            Backend::Postgres => None,
        }
    }

    /// Replaces the path if it is still at `old_version`; false if someone else changed it first.
    pub async fn replace_path(
        &self,
        session_id: &str,
        path: &SessionPath,
        old_version: u32,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE sessions SET path = $2, path_version = $3, updated_at = $4 WHERE session_id = $1 AND path_version = $5",
        )
        .bind(session_id)
        .bind(to_json(path))
        .bind(i64::from(path.version))
        .bind(now)
        .bind(i64::from(old_version))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    // ---- relays ----

    /// Registers or re-registers a relay (its counters start again).
    pub async fn upsert_relay(&self, r: &RelayRow, now: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO relays (relay_id, addr, region, max_rate, forward, probed, healthy, registered_at, \
             last_heartbeat, sessions, load, draining, bytes_forwarded, datagrams_forwarded, drops) \
             VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $7, 0, 0.0, 0, 0, 0, '{}') \
             ON CONFLICT (relay_id) DO UPDATE SET addr = excluded.addr, region = excluded.region, \
             max_rate = excluded.max_rate, forward = excluded.forward, probed = excluded.probed, \
             healthy = excluded.healthy, registered_at = excluded.registered_at, \
             last_heartbeat = excluded.last_heartbeat, sessions = 0, load = 0.0, draining = 0",
        )
        .bind(&r.relay_id)
        .bind(&r.addr)
        .bind(&r.region)
        .bind(r.max_rate.map(i))
        .bind(r.forward.clone())
        .bind(i64::from(r.probed))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a heartbeat; false if no probed relay has this id (it must register again).
    pub async fn heartbeat(
        &self,
        relay_id: &str,
        hb: &RelayHeartbeat,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE relays SET last_heartbeat = $2, healthy = 1, sessions = $3, load = $4, draining = $5, \
             bytes_forwarded = $6, datagrams_forwarded = $7, drops = $8 WHERE relay_id = $1 AND probed = 1",
        )
        .bind(relay_id)
        .bind(now)
        .bind(i64::from(hb.sessions))
        .bind(hb.load)
        .bind(i64::from(hb.draining))
        .bind(i(hb.bytes_forwarded))
        .bind(i(hb.datagrams_forwarded))
        .bind(to_json(&hb.drops))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn relays(&self) -> Result<Vec<RelayRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT relay_id, addr, region, max_rate, forward, probed, healthy, last_heartbeat, sessions, load, \
             draining, bytes_forwarded FROM relays ORDER BY relay_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(relay_row).collect()
    }

    /// Marks unhealthy the relays whose last heartbeat is older than `cutoff`; returns their ids.
    pub async fn evict_stale(&self, cutoff: i64) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("UPDATE relays SET healthy = 0 WHERE healthy = 1 AND last_heartbeat < $1 RETURNING relay_id")
            .bind(cutoff)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>(0)?))
            .collect()
    }

    // ---- receivers ----

    pub async fn upsert_receiver(
        &self,
        name: &str,
        costs: &[RelayCost],
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO receivers (name, relay_costs, registered_at, last_seen) VALUES ($1, $2, $3, $3) \
             ON CONFLICT (name) DO UPDATE SET relay_costs = excluded.relay_costs, \
             registered_at = excluded.registered_at, last_seen = excluded.last_seen",
        )
        .bind(name)
        .bind(to_json(&costs))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records that `name` polled; false if it never registered.
    pub async fn touch_receiver(&self, name: &str, now: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE receivers SET last_seen = $2 WHERE name = $1")
            .bind(name)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn receiver(&self, name: &str) -> Result<Option<ReceiverRow>, StoreError> {
        let row = sqlx::query("SELECT name, relay_costs, last_seen FROM receivers WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(receiver_row).transpose()
    }

    pub async fn receivers(&self) -> Result<Vec<ReceiverRow>, StoreError> {
        let rows = sqlx::query("SELECT name, relay_costs, last_seen FROM receivers ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(receiver_row).collect()
    }

    // ---- counts, counters, audit ----

    /// (all sessions, active ones, bytes verified over all sessions).
    pub async fn session_counts(&self) -> Result<(u64, u64, u64), StoreError> {
        let row = sqlx::query(
            "SELECT CAST(COUNT(*) AS BIGINT), CAST(COALESCE(SUM(CASE WHEN state = 'active' THEN 1 ELSE 0 END), 0) AS BIGINT) \
             FROM sessions",
        )
        .fetch_one(&self.pool)
        .await?;
        let bytes = sqlx::query(
            "SELECT CAST(COALESCE(SUM(CASE WHEN c.chunk_idx = s.num_chunks - 1 \
             THEN s.file_size - c.chunk_idx * s.chunk_size ELSE s.chunk_size END), 0) AS BIGINT) \
             FROM chunks c JOIN sessions s ON s.session_id = c.session_id WHERE c.status = 'verified'",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((u(row.try_get(0)?), u(row.try_get(1)?), u(bytes.try_get(0)?)))
    }

    /// (chunks verified, bytes verified) of one session.
    pub async fn verified(&self, s: &SessionRow) -> Result<(u32, u64), StoreError> {
        let row = sqlx::query(
            "SELECT CAST(COUNT(*) AS BIGINT), CAST(COALESCE(MAX(chunk_idx), -1) AS BIGINT) FROM chunks \
             WHERE session_id = $1 AND status = 'verified'",
        )
        .bind(&s.session_id)
        .fetch_one(&self.pool)
        .await?;
        let count = u32::try_from(row.try_get::<i64, _>(0)?).unwrap_or(0);
        let last = i64::from(s.num_chunks) - 1;
        let has_last = row.try_get::<i64, _>(1)? == last;
        let bytes = if has_last {
            u64::from(count.saturating_sub(1)) * s.chunk_size
                + (s.file_size - u(last) * s.chunk_size)
        } else {
            u64::from(count) * s.chunk_size
        };
        Ok((count, bytes))
    }

    pub async fn metric(&self, name: &str) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT value FROM metrics WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .map(|r| r.try_get::<i64, _>(0))
            .transpose()?
            .map_or(0, u))
    }

    pub async fn set_metric(&self, name: &str, value: u64) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO metrics (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value")
            .bind(name)
            .bind(i(value))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Writes audit entries in one transaction.
    pub async fn audit(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for e in entries {
            sqlx::query(
                "INSERT INTO audit_log (at, subject, role, method, path, status, peer) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(e.at)
            .bind(&e.subject)
            .bind(&e.role)
            .bind(&e.method)
            .bind(&e.path)
            .bind(i64::from(e.status))
            .bind(&e.peer)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The newest audit entries, newest first (for tests and admins).
    pub async fn audit_tail(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, subject, role, method, path, status, peer FROM audit_log ORDER BY id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    at: r.try_get(0)?,
                    subject: r.try_get(1)?,
                    role: r.try_get(2)?,
                    method: r.try_get(3)?,
                    path: r.try_get(4)?,
                    status: u16::try_from(r.try_get::<i64, _>(5)?).unwrap_or(0),
                    peer: r.try_get(6)?,
                })
            })
            .collect()
    }
}

/// Writes chunk `idx`'s status for [`Store::set_chunk`]; returns how the session's count of verified chunks
/// changes: +1 when it becomes verified, -1 when a verified chunk is reported otherwise, else 0. A report that
/// is not `verified` and meets a concurrent `verified` of the same chunk leaves it verified, as if it came first.
async fn write_chunk(
    tx: &mut sqlx::AnyConnection,
    session_id: &str,
    idx: u32,
    status: ChunkStatus,
    now: i64,
) -> Result<i64, StoreError> {
    let (flip, delta) = if status == ChunkStatus::Verified {
        ("status <> 'verified'", 1)
    } else {
        ("status = 'verified'", -1)
    };
    let row = (session_id, idx, status, now);
    let flip = format!(
        "UPDATE chunks SET status = $3, updated_at = $4 WHERE session_id = $1 AND chunk_idx = $2 AND {flip}"
    );
    if chunk_statement(tx, flip, row).await? > 0 {
        return Ok(delta);
    }
    // New, or already on the same side of verified: insert it, or change it without crossing that line.
    let upsert = "INSERT INTO chunks (session_id, chunk_idx, status, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (session_id, chunk_idx) DO UPDATE SET status = excluded.status, updated_at = excluded.updated_at \
         WHERE chunks.status <> 'verified'";
    let written = chunk_statement(tx, upsert.to_owned(), row).await?;
    Ok(i64::from(status == ChunkStatus::Verified && written > 0))
}

/// Runs `sql` with the chunk's ($1 session, $2 index, $3 status, $4 time); returns the rows it changed.
async fn chunk_statement(
    tx: &mut sqlx::AnyConnection,
    sql: String,
    (session_id, idx, status, now): (&str, u32, ChunkStatus, i64),
) -> Result<u64, StoreError> {
    let done = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(session_id)
        .bind(i64::from(idx))
        .bind(chunk_text(status))
        .bind(now)
        .execute(&mut *tx)
        .await?;
    Ok(done.rows_affected())
}

fn session_row(r: &AnyRow) -> Result<SessionRow, StoreError> {
    let small = |v: i64, what| u8::try_from(v).map_err(|_| StoreError::Corrupt(what));
    Ok(SessionRow {
        seq: u(r.try_get("seq")?),
        session_id: r.try_get("session_id")?,
        sender: r.try_get("sender")?,
        receiver: r.try_get("receiver")?,
        file_name: r.try_get("file_name")?,
        file_size: u(r.try_get("file_size")?),
        chunk_size: u(r.try_get("chunk_size")?),
        num_chunks: u32::try_from(r.try_get::<i64, _>("num_chunks")?)
            .map_err(|_| StoreError::Corrupt("chunk count"))?,
        streams: small(r.try_get("streams")?, "streams")?,
        stripes_wanted: small(r.try_get("stripes_wanted")?, "stripes")?,
        state: parse_state(&r.try_get::<String, _>("state")?)?,
        path: from_json(&r.try_get::<String, _>("path")?, "path")?,
        sender_costs: from_json(&r.try_get::<String, _>("sender_costs")?, "relay costs")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn relay_row(r: &AnyRow) -> Result<RelayRow, StoreError> {
    Ok(RelayRow {
        relay_id: r.try_get("relay_id")?,
        addr: r.try_get("addr")?,
        region: r.try_get("region")?,
        max_rate: r.try_get::<Option<i64>, _>("max_rate")?.map(u),
        forward: r.try_get("forward")?,
        probed: r.try_get::<i64, _>("probed")? != 0,
        healthy: r.try_get::<i64, _>("healthy")? != 0,
        last_heartbeat: r.try_get("last_heartbeat")?,
        sessions: u32::try_from(r.try_get::<i64, _>("sessions")?).unwrap_or(u32::MAX),
        load: r.try_get("load")?,
        draining: r.try_get::<i64, _>("draining")? != 0,
        bytes_forwarded: u(r.try_get("bytes_forwarded")?),
    })
}

fn receiver_row(r: &AnyRow) -> Result<ReceiverRow, StoreError> {
    Ok(ReceiverRow {
        name: r.try_get("name")?,
        relay_costs: from_json(&r.try_get::<String, _>("relay_costs")?, "relay costs")?,
        last_seen: r.try_get("last_seen")?,
    })
}

/// A stored count as unsigned (negative values cannot be written through this store).
fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// An unsigned value for a BIGINT column: the API bounds sizes and counters far below 2^63.
fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    // Serialising our own plain structs (strings, numbers, vectors, maps with string keys) cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

fn from_json<T: serde::de::DeserializeOwned>(
    text: &str,
    what: &'static str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|_| StoreError::Corrupt(what))
}

fn state_text(s: SessionState) -> &'static str {
    match s {
        SessionState::Pending => "pending",
        SessionState::Active => "active",
        SessionState::Complete => "complete",
        SessionState::Failed => "failed",
    }
}

fn parse_state(text: &str) -> Result<SessionState, StoreError> {
    serde_json::from_value(serde_json::Value::from(text))
        .map_err(|_| StoreError::Corrupt("session state"))
}

fn chunk_text(s: ChunkStatus) -> &'static str {
    match s {
        ChunkStatus::Missing => "missing",
        ChunkStatus::InFlight => "in_flight",
        ChunkStatus::Verified => "verified",
        ChunkStatus::Failed => "failed",
    }
}

fn parse_chunk(text: &str) -> Result<ChunkStatus, StoreError> {
    serde_json::from_value(serde_json::Value::from(text))
        .map_err(|_| StoreError::Corrupt("chunk status"))
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}://{user}@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

impl FromStr for Backend {
    type Err = StoreError;
    fn from_str(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(StoreError::BadUrl(url.to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u@h:5432/db"
        );
        assert_eq!(redact("sqlite:///x.db"), "sqlite:///x.db");
    }

    #[test]
    fn states_and_statuses_round_trip() {
        for s in [
            SessionState::Pending,
            SessionState::Active,
            SessionState::Complete,
            SessionState::Failed,
        ] {
            assert_eq!(parse_state(state_text(s)).ok(), Some(s));
        }
        for c in [
            ChunkStatus::Missing,
            ChunkStatus::InFlight,
            ChunkStatus::Verified,
            ChunkStatus::Failed,
        ] {
            assert_eq!(parse_chunk(chunk_text(c)).ok(), Some(c));
        }
    }
}
