//! Signed tokens: API bearer tokens and relay admission tokens, both JWTs signed with Ed25519 (`EdDSA`).
//!
//! One key pair, kept by the orchestrator in its state dir, signs both kinds; the audience (`aud`) keeps them
//! apart, so an admission token is never accepted as an API token or the other way round. Relays hold only
//! the public half ([`TokenVerifier`]), which the orchestrator hands out when a relay registers: a relay can
//! check an admission token but never mint one. Expiry is checked against the `now` the caller passes (Unix
//! seconds), not a clock read in here.

use std::fmt;
use std::str::FromStr;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// The audience of API bearer tokens.
pub const API_AUDIENCE: &str = "trackshift-api";
/// The audience of relay admission tokens.
pub const ADMISSION_AUDIENCE: &str = "trackshift-relay";
/// The longest token any TrackShift process reads, in bytes (a JWT of ours is about 300).
pub const MAX_TOKEN_LEN: usize = 4096;

/// The separator between the admission tokens of a two-hop path's chain (a character no JWT contains).
pub const CHAIN_SEPARATOR: char = ',';

/// The token chain a sender presents to the first relay of a multi-hop path: each relay's admission token, in
/// path order. The first relay checks the first token and hands the rest on (`trackshift relay --forward`).
pub fn chain<'a>(tokens: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for token in tokens {
        if !out.is_empty() {
            out.push(CHAIN_SEPARATOR);
        }
        out.push_str(token);
    }
    out
}

/// What a bearer token lets its holder do on the orchestrator's API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Creates sessions and reports their chunks.
    Sender,
    /// Registers under a name and receives sessions sent to it.
    Receiver,
    /// Registers a relay and sends its heartbeats.
    Relay,
    /// Everything, including other subjects' sessions.
    Admin,
}

impl Role {
    /// The role's name as on the command line and in tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Sender => "sender",
            Role::Receiver => "receiver",
            Role::Relay => "relay",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, TokenError> {
        match s {
            "sender" => Ok(Role::Sender),
            "receiver" => Ok(Role::Receiver),
            "relay" => Ok(Role::Relay),
            "admin" => Ok(Role::Admin),
            other => Err(TokenError::UnknownRole(other.to_owned())),
        }
    }
}

/// The claims of an API bearer token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiClaims {
    /// Who holds it: a user, a receiver's name or a relay id.
    pub sub: String,
    /// What it may do.
    pub role: Role,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds.
    pub exp: u64,
    /// Always [`API_AUDIENCE`].
    pub aud: String,
}

/// The claims of an admission token: the orchestrator lets relay `relay` forward session `sub` until `exp`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmissionClaims {
    /// The session id, 32 lowercase hex digits.
    pub sub: String,
    /// The relay id this token is for; any other relay refuses it.
    pub relay: String,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds.
    pub exp: u64,
    /// Always [`ADMISSION_AUDIENCE`].
    pub aud: String,
}

/// Why a token was not accepted. Every variant is a refusal: nothing is acted on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not a JWT, not ours, or the signature does not verify (forged or from another orchestrator).
    #[error("token is malformed or its signature does not verify: get a new one with `trackshift orchestrator token`")]
    Invalid,
    /// Past its `exp`.
    #[error("token expired: get a new one with `trackshift orchestrator token`")]
    Expired,
    /// Longer than [`MAX_TOKEN_LEN`].
    #[error("token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    /// An admission token for another relay.
    #[error("admission token is for relay `{0}`, not this one")]
    WrongRelay(String),
    /// A role name that is not sender, receiver, relay or admin.
    #[error("unknown role `{0}`: expected sender, receiver, relay or admin")]
    UnknownRole(String),
    /// The key bytes are not an Ed25519 key.
    #[error("not an Ed25519 key: {0}")]
    BadKey(&'static str),
}

/// The orchestrator's signing key (Ed25519, PKCS#8 v2 DER as *ring* writes it).
pub struct TokenKey {
    pkcs8: Vec<u8>,
    public: [u8; 32],
    encoding: EncodingKey,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKey")
            .field("public", &hex::encode(self.public))
            .finish_non_exhaustive()
    }
}

impl TokenKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, TokenError> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| TokenError::BadKey("the system random source failed"))?;
        Self::from_pkcs8(pkcs8.as_ref())
    }

    /// The key from its PKCS#8 DER bytes (what [`TokenKey::pkcs8`] returns).
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, TokenError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|_| TokenError::BadKey("PKCS#8 does not parse"))?;
        let mut public = [0u8; 32];
        public.copy_from_slice(pair.public_key().as_ref());
        Ok(Self {
            pkcs8: pkcs8.to_vec(),
            public,
            encoding: EncodingKey::from_ed_der(pkcs8),
        })
    }

    /// The PKCS#8 DER bytes, to store (mode 0600).
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The verifying half, to hand to relays and to check tokens.
    pub fn verifier(&self) -> TokenVerifier {
        TokenVerifier::from_public(&self.public)
    }

    /// An API token for `sub` with `role`, valid from `now` for `ttl_secs`.
    pub fn sign_api(
        &self,
        sub: &str,
        role: Role,
        now: u64,
        ttl_secs: u64,
    ) -> Result<String, TokenError> {
        let claims = ApiClaims {
            sub: sub.to_owned(),
            role,
            iat: now,
            exp: now + ttl_secs,
            aud: API_AUDIENCE.into(),
        };
        self.sign(&claims)
    }

    /// An admission token letting `relay` forward session `session` (hex id), from `now` for `ttl_secs`.
    pub fn sign_admission(
        &self,
        session: &str,
        relay: &str,
        now: u64,
        ttl_secs: u64,
    ) -> Result<String, TokenError> {
        let claims = AdmissionClaims {
            sub: session.to_owned(),
            relay: relay.to_owned(),
            iat: now,
            exp: now + ttl_secs,
            aud: ADMISSION_AUDIENCE.into(),
        };
        self.sign(&claims)
    }

    fn sign<C: Serialize>(&self, claims: &C) -> Result<String, TokenError> {
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &self.encoding)
            .map_err(|_| TokenError::Invalid)
    }
}

/// Checks tokens with the orchestrator's public key.
#[derive(Clone)]
pub struct TokenVerifier {
    public: [u8; 32],
    decoding: DecodingKey,
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TokenVerifier")
            .field(&self.public_hex())
            .finish()
    }
}

impl TokenVerifier {
    /// The verifier for a raw 32-byte Ed25519 public key.
    pub fn from_public(public: &[u8; 32]) -> Self {
        Self {
            public: *public,
            decoding: DecodingKey::from_ed_der(public),
        }
    }

    /// The verifier for a public key written as 64 hex digits (as the orchestrator hands it out).
    pub fn from_hex(text: &str) -> Result<Self, TokenError> {
        let bytes =
            hex::decode(text.trim()).map_err(|_| TokenError::BadKey("public key is not hex"))?;
        let public: [u8; 32] = bytes
            .try_into()
            .map_err(|_| TokenError::BadKey("public key is not 32 bytes"))?;
        Ok(Self::from_public(&public))
    }

    /// The public key as 64 hex digits.
    pub fn public_hex(&self) -> String {
        hex::encode(self.public)
    }

    /// The claims of an API token, if it verifies and has not expired at `now`.
    pub fn verify_api(&self, token: &str, now: u64) -> Result<ApiClaims, TokenError> {
        let claims: ApiClaims = self.verify(token, API_AUDIENCE)?;
        check_expiry(claims.exp, now)?;
        Ok(claims)
    }

    /// The claims of an admission token for relay `relay_id`, if it verifies and has not expired at `now`.
    pub fn verify_admission(
        &self,
        token: &str,
        relay_id: &str,
        now: u64,
    ) -> Result<AdmissionClaims, TokenError> {
        let claims: AdmissionClaims = self.verify(token, ADMISSION_AUDIENCE)?;
        check_expiry(claims.exp, now)?;
        if claims.relay != relay_id {
            return Err(TokenError::WrongRelay(claims.relay));
        }
        Ok(claims)
    }

    fn verify<C: DeserializeOwned>(&self, token: &str, audience: &str) -> Result<C, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[audience]);
        validation.validate_exp = false; // checked against the caller's `now` in `check_expiry`
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        jsonwebtoken::decode::<C>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|_| TokenError::Invalid)
    }
}

fn check_expiry(exp: u64, now: u64) -> Result<(), TokenError> {
    if now >= exp {
        Err(TokenError::Expired)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly on purpose

    use super::*;

    #[test]
    fn api_tokens_round_trip_and_expire() {
        let key = TokenKey::generate().unwrap();
        let token = key.sign_api("alice", Role::Sender, 1_000, 60).unwrap();
        let claims = key.verifier().verify_api(&token, 1_030).unwrap();
        assert_eq!((claims.sub.as_str(), claims.role), ("alice", Role::Sender));
        assert_eq!(
            key.verifier().verify_api(&token, 1_060),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn another_key_or_a_changed_byte_is_refused() {
        let key = TokenKey::generate().unwrap();
        let other = TokenKey::generate().unwrap();
        let token = key.sign_api("alice", Role::Admin, 1_000, 60).unwrap();
        assert_eq!(
            other.verifier().verify_api(&token, 1_001),
            Err(TokenError::Invalid)
        );
        let mut forged = token.into_bytes();
        let at = forged.len() / 2;
        forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        assert_eq!(
            key.verifier().verify_api(&forged, 1_001),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn audiences_keep_the_two_kinds_apart() {
        let key = TokenKey::generate().unwrap();
        let admission = key
            .sign_admission("00".repeat(16).as_str(), "r1", 1_000, 60)
            .unwrap();
        let api = key.sign_api("r1", Role::Relay, 1_000, 60).unwrap();
        assert_eq!(
            key.verifier().verify_api(&admission, 1_001),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            key.verifier().verify_admission(&api, "r1", 1_001),
            Err(TokenError::Invalid)
        );
        assert!(key
            .verifier()
            .verify_admission(&admission, "r1", 1_001)
            .is_ok());
        assert_eq!(
            key.verifier().verify_admission(&admission, "r2", 1_001),
            Err(TokenError::WrongRelay("r1".into()))
        );
    }

    #[test]
    fn a_chain_joins_tokens_in_path_order() {
        assert_eq!(chain(["a.b.c", "d.e.f"]), "a.b.c,d.e.f");
        assert_eq!(chain(["a.b.c"]), "a.b.c");
    }

    #[test]
    fn keys_survive_storage_and_hex() {
        let key = TokenKey::generate().unwrap();
        let again = TokenKey::from_pkcs8(key.pkcs8()).unwrap();
        let token = again.sign_api("bob", Role::Receiver, 5, 10).unwrap();
        let verifier = TokenVerifier::from_hex(&key.verifier().public_hex()).unwrap();
        assert_eq!(verifier.verify_api(&token, 6).unwrap().sub, "bob");
        assert!(TokenKey::from_pkcs8(b"not a key").is_err());
        assert!(TokenVerifier::from_hex("abcd").is_err());
    }
}
