//! The OpenAPI 3 document, generated from the handlers' annotations and the shared body types of
//! `trackshift_grid::api`; served at `/api/v1/openapi.json`, shown at `/api/docs` (Swagger UI, built in).

use trackshift_grid::api;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes;

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "TrackShift orchestrator",
        description = "The edge grid's REST API: relays, receivers, sessions and their chunk maps. \
            Every /api/v1 endpoint takes `Authorization: Bearer <JWT>` (from `trackshift orchestrator token`); \
            errors are `{\"error\": \"...\"}`."
    ),
    paths(
        routes::healthz,
        routes::metrics,
        routes::relays::register,
        routes::relays::heartbeat,
        routes::relays::list,
        routes::receivers::register,
        routes::receivers::list,
        routes::receivers::sessions,
        routes::sessions::create,
        routes::sessions::get,
        routes::sessions::list,
        routes::sessions::update_chunk,
        routes::sessions::report_path,
    ),
    components(schemas(
        api::ApiError, api::RelayCost, api::RelayRegistration, api::RelayRegistered, api::RelayHeartbeat,
        api::RelayInfo, api::ReceiverRegistration, api::ReceiverRegistered, api::ReceiverInfo,
        api::CreateSession, api::PathRelay, api::PathExit, api::SessionPath, api::SessionCreated, api::PathReport,
        api::ChunkStatus, api::ChunkUpdate, api::SessionState, api::SessionRecord, api::ReceiverSessions,
        api::SystemMetrics,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "relays", description = "Relays register, heartbeat, and are listed"),
        (name = "receivers", description = "Receivers register and long-poll for their sessions"),
        (name = "sessions", description = "Sessions, their relay paths and chunk maps"),
        (name = "system", description = "Health and system-wide counts"),
    )
)]
pub struct ApiDoc;

/// Declares the `bearer` security scheme (JWT) the endpoints refer to.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}
