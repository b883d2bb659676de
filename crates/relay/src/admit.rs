//! Admission: whether a token lets this relay carry a session, and what it hands the next hop.
//!
//! A one-hop path's token is one admission token (a JWT) for this relay. A two-hop path (`--forward`) carries
//! a chain: the tokens of every relay on the path in order, joined by `,` (a character no JWT contains). Each
//! relay checks the first token against its own id and hands the rest to the next hop; the last relay sees a
//! single token and pairs or binds locally. Every token in a chain is signed by the orchestrator for one relay
//! and one session, so a relay can neither extend a path nor reuse a token for another session.

use trackshift_grid::token::TokenError;
use trackshift_grid::TokenVerifier;

use crate::counters::DropReason;

/// The separator between the tokens of a chain.
pub use trackshift_grid::token::CHAIN_SEPARATOR;

/// What an accepted token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    /// The session id (the token's `sub`).
    pub session: String,
    /// When this relay's admission ends, Unix seconds.
    pub exp: u64,
    /// The rest of the chain, for the next hop; None when the path ends here.
    pub next: Option<String>,
}

/// Checks `token` (one token or a chain) for relay `relay_id` at Unix time `unix`. `forwards` says whether
/// this relay has a next hop; a chain at a relay without one is refused.
pub fn admit(
    verifier: &TokenVerifier,
    relay_id: &str,
    token: &str,
    unix: u64,
    forwards: bool,
) -> Result<Admission, DropReason> {
    let (mine, rest) = match token.split_once(CHAIN_SEPARATOR) {
        Some((mine, rest)) => (mine, Some(rest)),
        None => (token, None),
    };
    let claims = verifier
        .verify_admission(mine, relay_id, unix)
        .map_err(|e| match e {
            TokenError::Expired => DropReason::TokenExpired,
            TokenError::WrongRelay(_) => DropReason::TokenWrongRelay,
            _ => DropReason::TokenInvalid,
        })?;
    if rest.is_some() && !forwards {
        return Err(DropReason::NoForward);
    }
    if rest.is_some_and(str::is_empty) {
        return Err(DropReason::TokenInvalid);
    }
    Ok(Admission {
        session: claims.sub,
        exp: claims.exp,
        next: rest.map(str::to_owned),
    })
}
