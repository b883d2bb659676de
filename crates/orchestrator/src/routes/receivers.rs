//! `POST /api/v1/receivers/register`, `GET /api/v1/receivers`, and the receivers' long poll
//! `GET /api/v1/receivers/{name}/sessions`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use trackshift_grid::api::{
    ReceiverInfo, ReceiverRegistered, ReceiverRegistration, ReceiverSessions,
};
use trackshift_grid::Role;

use super::sessions::record;
use super::Refusals;
use crate::auth::Caller;
use crate::clock;
use crate::error::ApiFailure;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::server::AppState;
use crate::store::ReceiverRow;
use crate::validate;

/// The longest long poll, seconds: short enough that proxies and NAT boxes keep the connection open.
pub const MAX_WAIT_SECS: u64 = 30;
/// A receiver that polled or registered this recently counts as online.
const ONLINE_MS: i64 = 60_000;

/// True if `r` polled or registered within the last minute.
pub fn online(r: &ReceiverRow, now: i64) -> bool {
    now - r.last_seen <= ONLINE_MS
}

/// Register a receiver under its name (the receiver token's subject), with what it measured to the relays.
#[utoipa::path(post, path = "/api/v1/receivers/register", tag = "receivers", security(("bearer" = [])),
    request_body = ReceiverRegistration,
    responses((status = 200, description = "Registered", body = ReceiverRegistered), Refusals))]
pub async fn register(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<ReceiverRegistration>,
) -> Result<Json<ReceiverRegistered>, ApiFailure> {
    validate::name("receiver name", &body.name)?;
    caller.require_own(Role::Receiver, &body.name, "receiver")?;
    validate::relay_costs(&body.relay_costs)?;
    state
        .store
        .upsert_receiver(&body.name, &body.relay_costs, clock::now_ms())
        .await?;
    Ok(Json(ReceiverRegistered {
        name: body.name,
        admission_key: state.verifier.public_hex(),
    }))
}

/// Every registered receiver.
#[utoipa::path(get, path = "/api/v1/receivers", tag = "receivers", security(("bearer" = [])),
    responses((status = 200, description = "The receivers", body = Vec<ReceiverInfo>), Refusals))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
) -> Result<Json<Vec<ReceiverInfo>>, ApiFailure> {
    let now = clock::now_ms();
    let receivers = state.store.receivers().await?;
    Ok(Json(
        receivers
            .iter()
            .map(|r| ReceiverInfo {
                name: r.name.clone(),
                last_seen: clock::rfc3339(r.last_seen),
                online: online(r, now),
            })
            .collect(),
    ))
}

/// The long poll's query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PollQuery {
    /// Only sessions with a larger `seq` (pass the last answer's `next`); default 0.
    #[serde(default)]
    after: u64,
    /// Seconds to wait for one if there is none yet, 0 to 30; default 0 (answer at once).
    #[serde(default)]
    wait: u64,
}

/// The sessions to this receiver that are pending or active and newer than `after`, at once if there are any,
/// else as soon as one is created or when `wait` seconds have passed. Marks the receiver online.
#[utoipa::path(get, path = "/api/v1/receivers/{name}/sessions", tag = "receivers", security(("bearer" = [])),
    params(("name" = String, Path, description = "The receiver's registered name"), PollQuery),
    responses((status = 200, description = "New sessions (possibly none)", body = ReceiverSessions), Refusals))]
pub async fn sessions(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<PollQuery>,
) -> Result<Json<ReceiverSessions>, ApiFailure> {
    validate::name("receiver name", &name)?;
    caller.require_own(Role::Receiver, &name, "receiver")?;
    if query.wait > MAX_WAIT_SECS {
        return Err(ApiFailure::unprocessable(format!(
            "wait must be 0 to {MAX_WAIT_SECS} seconds"
        )));
    }
    if !state.store.touch_receiver(&name, clock::now_ms()).await? {
        return Err(ApiFailure::not_found(format!(
            "receiver `{name}` is not registered: POST /api/v1/receivers/register first"
        )));
    }
    // Subscribe before the first look, so a session created in between still wakes this poll.
    let mut created = state.new_sessions.subscribe();
    let mut shutdown = state.shutdown.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(query.wait);
    let mut stopping = *shutdown.borrow();
    loop {
        let found = state.store.open_sessions_after(&name, query.after).await?;
        if !found.is_empty() || tokio::time::Instant::now() >= deadline || stopping {
            let next = found.iter().map(|s| s.seq).max().unwrap_or(query.after);
            let mut sessions = Vec::with_capacity(found.len());
            for row in &found {
                sessions.push(record(&state, row).await?);
            }
            return Ok(Json(ReceiverSessions { sessions, next }));
        }
        // A closed channel means the server is going away: one last look, then answer.
        stopping = tokio::select! {
            changed = created.changed() => changed.is_err(),
            _ = shutdown.changed() => true,
            _ = tokio::time::sleep_until(deadline) => false,
        };
    }
}
