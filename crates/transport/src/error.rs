use trackshift_proto::{ErrorCode, WireError};

/// Everything that can go wrong on the control channel. Messages are one line and say what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach {addr}: {source}")]
    Unreachable {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error(
        "receiver {to} presented certificate fingerprint {seen}, but {expected} is expected; \
         if the receiver's identity really changed, remove its line from {known_file} or pass --fingerprint {seen}"
    )]
    FingerprintMismatch {
        to: String,
        seen: String,
        expected: String,
        known_file: String,
    },
    #[error("authentication refused: the receiver did not accept the secret (check --secret / TRACKSHIFT_SECRET)")]
    SecretRefused,
    #[error("authentication failed: the secrets do not match (check --secret / TRACKSHIFT_SECRET), or the peer is an impostor")]
    PeerNotAuthentic,
    #[error("no common protocol version: we speak {ours}, the peer speaks {min}..={max}; upgrade the older side")]
    Version { ours: u16, min: u16, max: u16 },
    #[error("bad frame from peer: {0}")]
    Wire(#[from] WireError),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("peer refused: {message}")]
    Peer { code: ErrorCode, message: String },
    #[error("connection closed by peer")]
    Closed,
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("identity in {path}: {message}")]
    Identity { path: String, message: String },
}

impl TransportError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        if matches!(
            source.kind(),
            std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
        ) {
            return Self::Closed;
        }
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether retrying the connection later could help (as opposed to a refusal or bad configuration).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Io { .. } | Self::Unreachable { .. } | Self::Closed | Self::Timeout(_) => true,
            Self::Peer { code, .. } => matches!(code, ErrorCode::Busy | ErrorCode::Internal),
            _ => false,
        }
    }

    /// Whether this is an authentication failure (exit code 3).
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            Self::FingerprintMismatch { .. } | Self::SecretRefused | Self::PeerNotAuthentic
        ) || matches!(
            self,
            Self::Peer {
                code: ErrorCode::Auth,
                ..
            }
        )
    }
}
