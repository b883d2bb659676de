-- TrackShift orchestrator, schema version 1 (sqlite). Times are Unix milliseconds; booleans are 0/1 BIGINTs so
-- the SQLite and PostgreSQL schemas read the same through sqlx's Any driver.

CREATE TABLE sessions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL UNIQUE,
    sender TEXT NOT NULL,
    receiver TEXT NOT NULL,
    file_name TEXT NOT NULL,
    file_size BIGINT NOT NULL,
    chunk_size BIGINT NOT NULL,
    num_chunks BIGINT NOT NULL,
    streams BIGINT NOT NULL,
    stripes_wanted BIGINT NOT NULL,
    state TEXT NOT NULL,
    path TEXT NOT NULL,          -- the SessionPath as JSON, admission tokens included
    path_version BIGINT NOT NULL,
    sender_costs TEXT NOT NULL,  -- the sender's relay measurements as JSON, for re-picks
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX sessions_by_receiver ON sessions (receiver, seq);
CREATE INDEX sessions_by_sender ON sessions (sender, seq);

-- Sparse: a chunk with no row is missing.
CREATE TABLE chunks (
    session_id TEXT NOT NULL,
    chunk_idx BIGINT NOT NULL,
    status TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (session_id, chunk_idx)
);

CREATE TABLE relays (
    relay_id TEXT PRIMARY KEY,
    addr TEXT NOT NULL,
    region TEXT NOT NULL,
    max_rate BIGINT,
    forward TEXT,
    probed BIGINT NOT NULL,
    healthy BIGINT NOT NULL,
    registered_at BIGINT NOT NULL,
    last_heartbeat BIGINT NOT NULL,
    sessions BIGINT NOT NULL,
    load REAL NOT NULL,
    draining BIGINT NOT NULL,
    bytes_forwarded BIGINT NOT NULL,
    datagrams_forwarded BIGINT NOT NULL,
    drops TEXT NOT NULL
);

CREATE TABLE receivers (
    name TEXT PRIMARY KEY,
    relay_costs TEXT NOT NULL,
    registered_at BIGINT NOT NULL,
    last_seen BIGINT NOT NULL
);

CREATE TABLE metrics (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);

CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at BIGINT NOT NULL,
    subject TEXT NOT NULL,
    role TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status BIGINT NOT NULL,
    peer TEXT NOT NULL
);
CREATE INDEX audit_log_by_time ON audit_log (at);
