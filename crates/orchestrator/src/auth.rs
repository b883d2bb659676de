//! Who is asking: the gate every request passes (bearer token checked, rate limit taken, mutating requests
//! audited) and the [`Caller`] extractor the handlers use to require a role.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use trackshift_grid::{ApiClaims, Role};

use crate::clock;
use crate::error::ApiFailure;
use crate::server::AppState;
use crate::store::AuditEntry;

/// What the gate found in the `Authorization` header, for the handlers.
#[derive(Debug, Clone)]
enum Credential {
    Missing,
    Refused(String),
    Valid(ApiClaims),
}

/// An authenticated caller: the token's subject and role.
#[derive(Debug, Clone)]
pub struct Caller {
    pub subject: String,
    pub role: Role,
}

impl Caller {
    /// Ok if the caller has one of `roles` (admin always may).
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiFailure> {
        if self.role == Role::Admin || roles.contains(&self.role) {
            return Ok(());
        }
        let wanted: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        Err(ApiFailure::forbidden(format!(
            "this needs a {} or admin token; this one is a {} token",
            wanted.join(" or "),
            self.role
        )))
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Ok if the caller is `subject` with `role`, or an admin.
    pub fn require_own(&self, role: Role, subject: &str, what: &str) -> Result<(), ApiFailure> {
        self.require(&[role])?;
        if self.is_admin() || self.subject == subject {
            Ok(())
        } else {
            Err(ApiFailure::forbidden(format!(
                "this token is for `{}`, not {what} `{subject}`",
                self.subject
            )))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiFailure> {
        match parts.extensions.get::<Credential>() {
            Some(Credential::Valid(claims)) => Ok(Caller {
                subject: claims.sub.clone(),
                role: claims.role,
            }),
            Some(Credential::Refused(why)) => Err(ApiFailure::unauthorized(why.clone())),
            Some(Credential::Missing) | None => Err(ApiFailure::unauthorized(
                "no bearer token: send `Authorization: Bearer <JWT>` (get one with `trackshift orchestrator token`)",
            )),
        }
    }
}

/// The gate: reads the bearer token, takes one request from the client's rate-limit bucket (429 with
/// `Retry-After` when empty), runs the request, and audits it if it was an authenticated change.
pub async fn gate(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into());
    let credential = credential(&state, &request);
    let key = match &credential {
        Credential::Valid(c) => format!("{}:{}", c.role, c.sub),
        _ => format!("ip:{peer}"),
    };
    if let Err(wait) = state.limiter.check(&key, Instant::now()) {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        return ApiFailure::too_many(secs.max(1)).into_response();
    }
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let mut request = request;
    request.extensions_mut().insert(credential.clone());
    let response = next.run(request).await;
    let mutating = matches!(
        method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if let (true, Credential::Valid(claims)) = (mutating, credential) {
        state.record(AuditEntry {
            at: clock::now_ms(),
            subject: claims.sub,
            role: claims.role.to_string(),
            method: method.to_string(),
            path,
            status: response.status().as_u16(),
            peer,
        });
    }
    response
}

fn credential(state: &AppState, request: &Request) -> Credential {
    let Some(value) = request.headers().get(header::AUTHORIZATION) else {
        return Credential::Missing;
    };
    let Some(token) = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) else {
        return Credential::Refused("the Authorization header is not `Bearer <JWT>`".into());
    };
    match state.verifier.verify_api(token.trim(), clock::now_secs()) {
        Ok(claims) => Credential::Valid(claims),
        Err(e) => Credential::Refused(e.to_string()),
    }
}
