//! The HTTP endpoints, one file per resource, each handler documented for the OpenAPI document.

pub mod receivers;
pub mod relays;
pub mod sessions;

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use trackshift_grid::api::{ApiError, SystemMetrics};

use crate::auth::Caller;
use crate::error::ApiFailure;
use crate::server::AppState;

/// The error answers any authenticated endpoint may give, for the OpenAPI document.
#[derive(Debug, utoipa::IntoResponses)]
#[allow(dead_code)] // never built: it only describes the error answers in the OpenAPI document
pub enum Refusals {
    /// A path or query that does not parse, or malformed JSON.
    #[response(status = 400)]
    BadRequest(ApiError),
    /// No token, or an expired or forged one.
    #[response(status = 401)]
    Unauthorized(ApiError),
    /// The token's role or subject may not do this.
    #[response(status = 403)]
    Forbidden(ApiError),
    /// No such session, relay, receiver or chunk.
    #[response(status = 404)]
    NotFound(ApiError),
    /// The request conflicts with the current state (e.g. no healthy relay).
    #[response(status = 409)]
    Conflict(ApiError),
    /// The body is over the size limit.
    #[response(status = 413)]
    TooLarge(ApiError),
    /// The body is not `application/json`.
    #[response(status = 415)]
    UnsupportedMediaType(ApiError),
    /// A value out of range, or a name or id that is not valid.
    #[response(status = 422)]
    Unprocessable(ApiError),
    /// Too many requests from this client: see `Retry-After`.
    #[response(status = 429)]
    TooMany(ApiError),
    /// The orchestrator's database failed.
    #[response(status = 500)]
    Internal(ApiError),
}

/// Liveness: 200 with `ok` while the server runs (no token needed).
#[utoipa::path(get, path = "/healthz", tag = "system",
    responses((status = 200, description = "The orchestrator runs", body = String, content_type = "text/plain"),
              (status = 429, description = "Too many requests", body = ApiError)))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// System-wide counts.
#[utoipa::path(get, path = "/api/v1/metrics", tag = "system", security(("bearer" = [])),
    responses((status = 200, description = "Counts over the whole grid", body = SystemMetrics), Refusals))]
pub async fn metrics(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
) -> Result<Json<SystemMetrics>, ApiFailure> {
    let (sessions_total, sessions_active, bytes_verified_total) =
        state.store.session_counts().await?;
    let now = crate::clock::now_ms();
    let relays = state.store.relays().await?;
    let receivers = state.store.receivers().await?;
    Ok(Json(SystemMetrics {
        sessions_total,
        sessions_active,
        relays_total: relays.len() as u64,
        relays_healthy: relays.iter().filter(|r| state.is_healthy(r, now)).count() as u64,
        receivers_online: receivers
            .iter()
            .filter(|r| receivers::online(r, now))
            .count() as u64,
        bytes_verified_total,
        chunk_updates_total: state.chunk_updates(),
    }))
}

/// Unknown paths: a JSON 404.
pub async fn no_route() -> ApiFailure {
    ApiFailure::not_found("no such endpoint: see /api/v1/openapi.json")
}

/// A known path with the wrong method: a JSON 405.
pub async fn wrong_method() -> ApiFailure {
    ApiFailure::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "this endpoint does not take that method: see /api/v1/openapi.json",
    )
}
