//! `POST /api/v1/relays/register`, `POST /api/v1/relays/{relay_id}/heartbeat`, `GET /api/v1/relays`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use trackshift_grid::api::{RelayHeartbeat, RelayInfo, RelayRegistered, RelayRegistration};
use trackshift_grid::Role;

use super::Refusals;
use crate::auth::Caller;
use crate::clock;
use crate::error::ApiFailure;
use crate::extract::{ApiJson, ApiPath};
use crate::server::AppState;
use crate::store::RelayRow;
use crate::validate;

/// How long the probe of a registering relay may take: a relay that cannot take a TCP connection from the
/// orchestrator in this time will not serve peers well either.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The most drop reasons a heartbeat may carry.
const MAX_DROP_REASONS: usize = 64;

/// Register (or re-register) a relay. The orchestrator first opens a TCP connection to `addr` (the probe,
/// within 2 s); a relay that cannot be reached is recorded as unhealthy and answered 422, and must register
/// again once it is reachable. Its heartbeats are refused (404) until then.
#[utoipa::path(post, path = "/api/v1/relays/register", tag = "relays", security(("bearer" = [])),
    request_body = RelayRegistration,
    responses((status = 200, description = "Probed and registered", body = RelayRegistered), Refusals))]
pub async fn register(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<RelayRegistration>,
) -> Result<Json<RelayRegistered>, ApiFailure> {
    caller.require_own(Role::Relay, &body.relay_id, "relay")?;
    validate::name("relay_id", &body.relay_id)?;
    validate::addr(&body.addr)?;
    if let Some(forward) = &body.forward {
        validate::addr(forward)?;
    }
    if !body.region.is_empty() {
        validate::name("region", &body.region)?;
    }
    let probed = probe(&body.addr).await;
    let row = RelayRow {
        relay_id: body.relay_id.clone(),
        addr: body.addr.clone(),
        region: body.region.clone(),
        max_rate: body.max_rate,
        forward: body.forward.clone(),
        probed: probed.is_ok(),
        healthy: probed.is_ok(),
        last_heartbeat: 0,
        sessions: 0,
        load: 0.0,
        draining: false,
        bytes_forwarded: 0,
    };
    state.store.upsert_relay(&row, clock::now_ms()).await?;
    if let Err(why) = probed {
        return Err(ApiFailure::unprocessable(format!(
            "relay `{}` at {} could not be reached from the orchestrator ({why}): it is recorded as unhealthy; \
             check its --public-addr and firewall (TCP), then register again",
            body.relay_id, body.addr
        )));
    }
    tracing::info!(relay = %body.relay_id, addr = %body.addr, "relay registered");
    Ok(Json(RelayRegistered {
        relay_id: body.relay_id,
        admission_key: state.verifier.public_hex(),
        heartbeat_interval_secs: state.settings.heartbeat_interval.as_secs().max(1),
    }))
}

/// A TCP connect to `addr` within [`PROBE_TIMEOUT`].
async fn probe(addr: &str) -> Result<(), String> {
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no TCP answer within {} s",
            PROBE_TIMEOUT.as_secs()
        )),
    }
}

/// A relay's periodic report of its load and counters. 404 means the orchestrator does not know the relay
/// (a new database, or its probe failed): register again.
#[utoipa::path(post, path = "/api/v1/relays/{relay_id}/heartbeat", tag = "relays", security(("bearer" = [])),
    params(("relay_id" = String, Path, description = "The relay's id")),
    request_body = RelayHeartbeat,
    responses((status = 204, description = "Recorded"), Refusals))]
pub async fn heartbeat(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(relay_id): ApiPath<String>,
    ApiJson(body): ApiJson<RelayHeartbeat>,
) -> Result<StatusCode, ApiFailure> {
    validate::name("relay_id", &relay_id)?;
    caller.require_own(Role::Relay, &relay_id, "relay")?;
    if !(0.0..=1.0).contains(&body.load) {
        return Err(ApiFailure::unprocessable("load must be from 0 to 1"));
    }
    if body.drops.len() > MAX_DROP_REASONS
        || body
            .drops
            .keys()
            .any(|k| validate::name("drop reason", k).is_err())
    {
        return Err(ApiFailure::unprocessable(format!(
            "drops: at most {MAX_DROP_REASONS} reasons, each a name of letters, digits, `-`, `_` or `.`"
        )));
    }
    if state
        .store
        .heartbeat(&relay_id, &body, clock::now_ms())
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiFailure::not_found(format!(
            "relay `{relay_id}` is not registered here: register again (POST /api/v1/relays/register)"
        )))
    }
}

/// Every relay the orchestrator knows, healthy or not.
#[utoipa::path(get, path = "/api/v1/relays", tag = "relays", security(("bearer" = [])),
    responses((status = 200, description = "The relays", body = Vec<RelayInfo>), Refusals))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
) -> Result<Json<Vec<RelayInfo>>, ApiFailure> {
    let now = clock::now_ms();
    let relays = state.store.relays().await?;
    Ok(Json(
        relays
            .iter()
            .map(|r| RelayInfo {
                relay_id: r.relay_id.clone(),
                addr: r.addr.clone(),
                region: r.region.clone(),
                healthy: state.is_healthy(r, now),
                last_heartbeat: clock::rfc3339(r.last_heartbeat),
                sessions: r.sessions,
                load: r.load,
                draining: r.draining,
                bytes_forwarded: r.bytes_forwarded,
            })
            .collect(),
    ))
}
