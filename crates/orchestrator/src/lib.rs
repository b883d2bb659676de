//! The orchestrator of the edge grid: an HTTP API (axum) that knows the relays, receivers and sessions, picks
//! each session's relay path, and hands out the tokens that let relays forward it.
//!
//! Owns: the REST API under `/api/v1` (the table in [`trackshift_grid::api`]) with `/healthz`, the OpenAPI
//! document ([`openapi`], `/api/v1/openapi.json`) and its docs page (`/api/docs`, Swagger UI built into the
//! binary); bearer-token checks and roles ([`auth`]), per-client rate limits ([`ratelimit`]), input checks
//! ([`validate`]); the store ([`store`]: SQLite or PostgreSQL through sqlx, versioned migrations); relay
//! health (probe on registration, eviction after missed heartbeats) and the pure path selection
//! ([`select`]); the signing key in the state dir ([`keyfile`]); HTTP or HTTPS with optional mutual TLS.
//!
//! Must not: touch the data a transfer carries, or any relay or peer socket beyond the registration probe (a
//! TCP connect); print or exit (the CLI does); parse command lines.
//!
//! ```no_run
//! # async fn demo() -> Result<(), trackshift_orchestrator::OrchestratorError> {
//! let running = trackshift_orchestrator::start(trackshift_orchestrator::Config::new(
//!     "127.0.0.1:7070",
//!     "/var/lib/trackshift",
//! ))
//! .await?;
//! println!("listening on {}", running.url());
//! running.stop().await
//! # }
//! ```

#![forbid(unsafe_code)]

pub mod auth;
pub mod clock;
pub mod error;
pub mod extract;
pub mod keyfile;
pub mod openapi;
pub mod ratelimit;
pub mod routes;
pub mod select;
pub mod server;
pub mod store;
pub mod tls;
pub mod validate;

pub use error::{ApiFailure, OrchestratorError};
pub use keyfile::load_or_create as signing_key;
pub use ratelimit::RateLimit;
pub use server::{start, Config, Running, TlsFiles};
pub use store::{Backend, Store, StoreError};
