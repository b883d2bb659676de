//! Sessions: create one with its relay path, read one or a list, update a chunk, and re-pick the path after a
//! relay failed.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use trackshift_grid::api::{
    ChunkStatus, ChunkUpdate, CreateSession, PathRelay, PathReport, SessionCreated, SessionPath,
    SessionRecord, SessionState,
};
use trackshift_grid::Role;
use trackshift_proto::ChunkPlan;

use super::Refusals;
use crate::auth::Caller;
use crate::clock;
use crate::error::ApiFailure;
use crate::extract::{ApiJson, ApiPath};
use crate::select::{self, Chosen, Measured};
use crate::server::AppState;
use crate::store::{Owner, SessionRow};
use crate::validate;

/// The most chunks a session may have: its chunk map is one JSON array in every answer (1 Mi chunks is 5 TiB
/// at the smallest chunk size, 200 TiB at the largest).
pub const MAX_SESSION_CHUNKS: u32 = 1 << 20;
/// The most relays one transfer stripes over.
pub const MAX_STRIPES: u8 = 8;
/// The most DCSP streams a sender may announce (as `send --streams` allows).
pub const MAX_STREAMS: u8 = 64;
/// The most sessions a list shows (the newest).
pub const LIST_LIMIT: u32 = 500;

/// Create a session to a registered receiver: the orchestrator picks its id, its relay path (the cheapest
/// healthy relays by measured cost, plus a standby) and signs one admission token per relay.
#[utoipa::path(post, path = "/api/v1/session", tag = "sessions", security(("bearer" = [])),
    request_body = CreateSession,
    responses((status = 200, description = "The session and its path", body = SessionCreated), Refusals))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateSession>,
) -> Result<Json<SessionCreated>, ApiFailure> {
    caller.require(&[Role::Sender])?;
    let num_chunks = check_request(&body)?;
    let receiver = state.store.receiver(&body.receiver).await?.ok_or_else(|| {
        ApiFailure::not_found(format!(
            "receiver `{}` is not registered: start `trackshift receive --orchestrator … --name {}` first",
            body.receiver, body.receiver
        ))
    })?;
    if let Some(resumed) = resumed(&state, &caller, &body).await? {
        tracing::info!(session = %resumed.session_id, "session resumed");
        return Ok(Json(resumed));
    }
    let candidates = state.candidates().await?;
    let measured = Measured {
        sender: &body.relay_costs,
        receiver: &receiver.relay_costs,
    };
    let chosen = select::pick(&candidates, measured, usize::from(body.relays))
        .map_err(|e| ApiFailure::conflict(e.to_string()))?;
    let session_id = state.new_session_id()?;
    let path = state
        .sign_path(&session_id, &chosen, &candidates, None, 1)
        .await?;
    let now = clock::now_ms();
    let mut row = SessionRow {
        seq: 0,
        session_id: session_id.clone(),
        sender: caller.subject,
        receiver: body.receiver,
        file_name: body.file_name,
        file_size: body.file_size,
        chunk_size: body.chunk_size,
        num_chunks,
        streams: body.streams,
        stripes_wanted: body.relays,
        state: SessionState::Pending,
        path: path.clone(),
        sender_costs: body.relay_costs,
        created_at: now,
        updated_at: now,
    };
    row.seq = state.store.insert_session(&row).await?;
    state.new_sessions.send_replace(row.seq);
    tracing::info!(session = %session_id, receiver = %row.receiver, reason = %path.reason, "session created");
    Ok(Json(SessionCreated {
        session_id,
        path,
        admission_key: state.verifier.public_hex(),
    }))
}

/// The session `body.resume` names, with its current path, if it is the caller's, to the same receiver, of the
/// same file and still open; None for a new session (an unknown, finished or different one is not an error:
/// the sender's local state is what it resumes from, and a fresh session starts over).
async fn resumed(
    state: &AppState,
    caller: &Caller,
    body: &CreateSession,
) -> Result<Option<SessionCreated>, ApiFailure> {
    let Some(id) = &body.resume else {
        return Ok(None);
    };
    let id = validate::session_id(id)?;
    let Some(row) = state.store.session(&id).await? else {
        return Ok(None);
    };
    let same = row.sender == caller.subject
        && row.receiver == body.receiver
        && row.file_size == body.file_size
        && row.chunk_size == body.chunk_size
        && matches!(row.state, SessionState::Pending | SessionState::Active);
    Ok(same.then(|| SessionCreated {
        session_id: row.session_id,
        path: row.path,
        admission_key: state.verifier.public_hex(),
    }))
}

/// The request's checks; returns its number of chunks.
fn check_request(body: &CreateSession) -> Result<u32, ApiFailure> {
    validate::name("receiver", &body.receiver)?;
    validate::file_name(&body.file_name)?;
    validate::relay_costs(&body.relay_costs)?;
    if !(1..=MAX_STREAMS).contains(&body.streams) {
        return Err(ApiFailure::unprocessable(format!(
            "streams must be 1 to {MAX_STREAMS}"
        )));
    }
    if !(1..=MAX_STRIPES).contains(&body.relays) {
        return Err(ApiFailure::unprocessable(format!(
            "relays must be 1 to {MAX_STRIPES}"
        )));
    }
    let plan = ChunkPlan::new(body.file_size, body.chunk_size)
        .map_err(|e| ApiFailure::unprocessable(e.to_string()))?;
    if plan.chunk_count() > MAX_SESSION_CHUNKS {
        return Err(ApiFailure::unprocessable(format!(
            "{} chunks: a session has at most {MAX_SESSION_CHUNKS}; use a larger chunk size",
            plan.chunk_count()
        )));
    }
    Ok(plan.chunk_count())
}

/// One session with its chunk map and counts.
#[utoipa::path(get, path = "/api/v1/session/{id}", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "The session id, 32 hex digits")),
    responses((status = 200, description = "The session", body = SessionRecord), Refusals))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SessionRecord>, ApiFailure> {
    let row = own_session(&state, &caller, &id).await?;
    Ok(Json(record(&state, &row).await?))
}

/// A sender's own sessions, a receiver's incoming ones, or every session for an admin (the newest 500).
#[utoipa::path(get, path = "/api/v1/sessions", tag = "sessions", security(("bearer" = [])),
    responses((status = 200, description = "The sessions, oldest first", body = Vec<SessionRecord>), Refusals))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Vec<SessionRecord>>, ApiFailure> {
    caller.require(&[Role::Sender, Role::Receiver])?;
    let owner = match caller.role {
        Role::Sender => Owner::Sender(&caller.subject),
        Role::Receiver => Owner::Receiver(&caller.subject),
        _ => Owner::All,
    };
    let rows = state.store.sessions(owner, LIST_LIMIT).await?;
    let mut records = Vec::with_capacity(rows.len());
    for row in &rows {
        records.push(record(&state, row).await?);
    }
    Ok(Json(records))
}

/// Set one chunk's status. The first update makes a pending session active; the session is complete once
/// every chunk is verified (after which only `verified` is accepted, as a no-op).
#[utoipa::path(put, path = "/api/v1/session/{id}/chunk/{chunk_id}", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "The session id, 32 hex digits"),
           ("chunk_id" = u32, Path, description = "The chunk's index, from 0")),
    request_body = ChunkUpdate,
    responses((status = 204, description = "Recorded"), Refusals))]
pub async fn update_chunk(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath((id, chunk_id)): ApiPath<(String, u32)>,
    ApiJson(body): ApiJson<ChunkUpdate>,
) -> Result<StatusCode, ApiFailure> {
    let row = own_session(&state, &caller, &id).await?;
    if chunk_id >= row.num_chunks {
        return Err(ApiFailure::not_found(format!(
            "chunk {chunk_id} does not exist: the session has {} chunks (0 to {})",
            row.num_chunks,
            row.num_chunks.saturating_sub(1)
        )));
    }
    match (row.state, body.status) {
        (SessionState::Complete, ChunkStatus::Verified) => return Ok(StatusCode::NO_CONTENT),
        (SessionState::Complete | SessionState::Failed, _) => {
            return Err(ApiFailure::conflict(format!(
                "session {} is {}: its chunks no longer change",
                row.session_id,
                if row.state == SessionState::Complete {
                    "complete"
                } else {
                    "failed"
                }
            )))
        }
        _ => {}
    }
    let now = clock::now_ms();
    state
        .store
        .set_chunk(&row.session_id, chunk_id, body.status, now)
        .await?;
    state.count_chunk_update();
    if body.status == ChunkStatus::Verified
        && state.store.complete_if_done(&row.session_id, now).await?
    {
        tracing::info!(session = %row.session_id, "session complete");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A relay of the path failed or drains: the answer is the new path, with only that relay replaced (the
/// standby promoted, a new standby chosen). A relay that is no longer in the path (the other end reported it
/// first) gets the current path back unchanged.
#[utoipa::path(post, path = "/api/v1/session/{id}/path", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "The session id, 32 hex digits")),
    request_body = PathReport,
    responses((status = 200, description = "The path to use now", body = SessionPath), Refusals))]
pub async fn report_path(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<PathReport>,
) -> Result<Json<SessionPath>, ApiFailure> {
    validate::name("failed_relay", &body.failed_relay)?;
    // Two tries: if the other end replaced the path at the same moment, the second sees its result.
    for _ in 0..2 {
        let row = own_session(&state, &caller, &id).await?;
        let in_path = row
            .path
            .stripes
            .iter()
            .chain(&row.path.standby)
            .any(|r| r.relay_id == body.failed_relay);
        if !in_path {
            return Ok(Json(row.path));
        }
        let receiver_costs = state
            .store
            .receiver(&row.receiver)
            .await?
            .map(|r| r.relay_costs)
            .unwrap_or_default();
        let measured = Measured {
            sender: &row.sender_costs,
            receiver: &receiver_costs,
        };
        let current = Chosen {
            stripes: row
                .path
                .stripes
                .iter()
                .map(|r| r.relay_id.clone())
                .collect(),
            standby: row.path.standby.as_ref().map(|r| r.relay_id.clone()),
            reason: row.path.reason.clone(),
        };
        let candidates = state.candidates().await?;
        let chosen = select::repick(&candidates, measured, &current, &body.failed_relay)
            .map_err(|e| ApiFailure::conflict(e.to_string()))?;
        let version = row.path.version.saturating_add(1);
        let path = state
            .sign_path(
                &row.session_id,
                &chosen,
                &candidates,
                Some(&row.path),
                version,
            )
            .await?;
        if state
            .store
            .replace_path(&row.session_id, &path, row.path.version, clock::now_ms())
            .await?
        {
            tracing::info!(session = %row.session_id, reason = %path.reason, "path changed");
            return Ok(Json(path));
        }
    }
    let row = own_session(&state, &caller, &id).await?;
    Ok(Json(row.path))
}

/// The session `id` if the caller may see it: its sender, its receiver, or an admin.
async fn own_session(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<SessionRow, ApiFailure> {
    let id = validate::session_id(id)?;
    caller.require(&[Role::Sender, Role::Receiver])?;
    let row = state
        .store
        .session(&id)
        .await?
        .ok_or_else(|| ApiFailure::not_found(format!("no session {id}")))?;
    let mine = match caller.role {
        Role::Sender => row.sender == caller.subject,
        Role::Receiver => row.receiver == caller.subject,
        _ => caller.is_admin(),
    };
    if mine {
        Ok(row)
    } else {
        Err(ApiFailure::forbidden(format!(
            "session {id} is not one of `{}`'s: only its sender, its receiver or an admin may see it",
            caller.subject
        )))
    }
}

/// The API's view of a stored session: its chunk map and counts added.
pub async fn record(state: &AppState, row: &SessionRow) -> Result<SessionRecord, ApiFailure> {
    let chunks = state
        .store
        .chunk_map(&row.session_id, row.num_chunks)
        .await?;
    let (chunks_verified, bytes_verified) = state.store.verified(row).await?;
    Ok(SessionRecord {
        session_id: row.session_id.clone(),
        sender: row.sender.clone(),
        receiver: row.receiver.clone(),
        file_name: row.file_name.clone(),
        file_size: row.file_size,
        chunk_size: row.chunk_size,
        streams: row.streams,
        state: row.state,
        chunks,
        chunks_verified,
        bytes_verified,
        path: row.path.clone(),
        created_at: clock::rfc3339(row.created_at),
        updated_at: clock::rfc3339(row.updated_at),
        seq: row.seq,
    })
}

/// Keeps the admission tokens of the relays that stay in the path.
pub fn reuse_token(old: Option<&SessionPath>, relay_id: &str) -> Option<PathRelay> {
    old?.stripes
        .iter()
        .chain(&old?.standby)
        .find(|r| r.relay_id == relay_id)
        .cloned()
}
