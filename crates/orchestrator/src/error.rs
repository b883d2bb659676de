//! The two error types: [`ApiFailure`], what a request gets back (a status and `{"error"}`), and
//! [`OrchestratorError`], why the orchestrator could not start or went down.

use std::path::PathBuf;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use trackshift_grid::api::ApiError;

/// A request's failure: its HTTP status and a one-line message saying what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub message: String,
    /// Seconds, for a 429's `Retry-After`.
    pub retry_after: Option<u64>,
}

impl ApiFailure {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    pub fn too_many(retry_after: u64) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!("too many requests from this client: retry after {retry_after} s"),
            retry_after: Some(retry_after),
        }
    }

    /// The store failed: logged here with its cause, answered as a 500 without it.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!("request failed in the store: {cause}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the orchestrator's database failed: see the orchestrator's log",
        )
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(ApiError {
                error: self.message,
            }),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<crate::store::StoreError> for ApiFailure {
    fn from(e: crate::store::StoreError) -> Self {
        ApiFailure::internal(&e)
    }
}

/// Why the orchestrator could not start, or stopped serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OrchestratorError {
    /// The state dir or the signing key in it.
    #[error("state dir {}: {reason}", path.display())]
    StateDir { path: PathBuf, reason: String },
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// `--tls-cert`, `--tls-key` or `--client-ca` could not be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The listening address.
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    /// The server failed while serving.
    #[error("the HTTP server failed: {0}")]
    Serve(String),
}

impl OrchestratorError {
    /// True when the user's input (a flag, a file) is the cause, for exit code 2.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            OrchestratorError::Tls(_)
                | OrchestratorError::Store(crate::store::StoreError::BadUrl(_))
        )
    }
}
