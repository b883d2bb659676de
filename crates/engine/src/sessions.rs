//! `list` and `status`: what the state dir knows about sessions, with their progress.

use std::path::Path;

use serde::Serialize;
use trackshift_proto::SessionId;
use trackshift_storage::{FileSource, SessionRecord, SessionState, SessionStore, StateDir};

use crate::error::EngineError;
use crate::send::same_source;

/// One session and how far it got.
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    #[serde(flatten)]
    pub record: SessionRecord,
    pub bytes_done: u64,
    /// Incoming: bytes of unverified chunks already on disk (a resume sends only the rest).
    pub bytes_partial: u64,
    pub percent: f64,
    pub chunks_done: u32,
    pub chunks_total: u32,
}

fn open(state_dir: &Path) -> Result<SessionStore, EngineError> {
    Ok(SessionStore::open(&StateDir::open(state_dir)?)?)
}

/// Every session in the state dir.
pub fn list(state_dir: &Path) -> Result<Vec<SessionView>, EngineError> {
    let store = open(state_dir)?;
    store
        .list()?
        .into_iter()
        .map(|rec| describe(&store, rec))
        .collect()
}

/// The unfinished outgoing session of `file` to `to` that a send with `chunk_size` would resume (same size,
/// modification time and chunk size), if any: `send --orchestrator` asks the orchestrator to resume it.
pub fn resumable(
    state_dir: &Path,
    file: &Path,
    to: &str,
    chunk_size: u64,
) -> Result<Option<SessionId>, EngineError> {
    let source = FileSource::open(file)?;
    let store = open(state_dir)?;
    Ok(store
        .find_outgoing(source.path(), to)?
        .filter(|s| s.state != SessionState::Completed && same_source(s, &source, chunk_size))
        .map(|s| s.id))
}

/// One session, by id.
pub fn status(state_dir: &Path, id: SessionId) -> Result<SessionView, EngineError> {
    let store = open(state_dir)?;
    let rec = store
        .list()?
        .into_iter()
        .find(|r| *r.id() == id)
        .ok_or_else(|| {
            EngineError::BadInput(format!(
                "no session {id} in {}: see `trackshift list`",
                state_dir.display()
            ))
        })?;
    describe(&store, rec)
}

fn describe(store: &SessionStore, record: SessionRecord) -> Result<SessionView, EngineError> {
    let bytes_partial = match &record {
        SessionRecord::Incoming(s) => store.partial_chunks(&s.id)?.iter().map(|(_, b)| b).sum(),
        SessionRecord::Outgoing(_) => 0,
    };
    let (bytes_done, total, chunks_done, chunks_total) = match &record {
        SessionRecord::Incoming(s) => {
            let verified = store.verified_chunks(&s.id)?;
            let done: u64 = verified
                .iter()
                .map(|(i, _)| {
                    s.chunk_size
                        .min(s.size.saturating_sub(u64::from(*i) * s.chunk_size))
                })
                .sum();
            (done, s.size, verified.len() as u32, s.chunk_count)
        }
        SessionRecord::Outgoing(s) => {
            let chunks_done = if s.size == 0 {
                s.chunk_count
            } else {
                s.bytes_confirmed.div_ceil(s.chunk_size.max(1)) as u32
            };
            (s.bytes_confirmed, s.size, chunks_done, s.chunk_count)
        }
    };
    let percent = if total == 0 {
        100.0
    } else {
        bytes_done as f64 * 100.0 / total as f64
    };
    Ok(SessionView {
        record,
        bytes_done,
        bytes_partial,
        percent,
        chunks_done,
        chunks_total,
    })
}
