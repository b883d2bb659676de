//! The engine's one error type. Every message is one line that says what failed and, where it helps, what to do.

use trackshift_proto::session::SendError;
use trackshift_proto::ErrorCode;
use trackshift_storage::StorageError;
use trackshift_transport::TransportError;

/// Why a send or a receive did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Bad usage or bad input: a missing or unreadable source, a bad option value, an unknown session.
    #[error("{0}")]
    BadInput(String),
    /// No secret, or the secret or the receiver's identity was refused.
    #[error("{0}")]
    Auth(String),
    /// Local storage: the state dir, the session store, the output dir, free space.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Other local state the run needs and could not keep: the receiver's identity or its generated secret.
    #[error("{0}")]
    LocalStorage(String),
    /// The control channel: connecting, TLS, authentication, frames.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The protocol ended the run: refused by the receiver, gave up reconnecting, verification failed.
    #[error(transparent)]
    Send(#[from] SendError),
    /// Anything else that ends a transfer (a DCSP data plane error, a thread that cannot start).
    #[error("{0}")]
    Failed(String),
    /// `receive --once`: the transfer failed, in this way, for this reason.
    #[error("the transfer failed: {1}")]
    TransferFailed(ErrorKind, String),
}

/// What kind of failure an [`EngineError`] is: the command line turns each into its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The transfer failed: network, verification, peer refused.
    Failed,
    /// Bad usage or bad input.
    BadInput,
    /// Authentication refused.
    Auth,
    /// A local storage problem: disk full, permission.
    Storage,
}

impl ErrorKind {
    /// The kind a peer's (or our own) protocol error code stands for.
    pub fn of_code(code: ErrorCode) -> Self {
        match code {
            ErrorCode::NoSpace | ErrorCode::Permission => Self::Storage,
            ErrorCode::Auth => Self::Auth,
            ErrorCode::BadName => Self::BadInput,
            _ => Self::Failed,
        }
    }

    fn of_storage(e: &StorageError) -> Self {
        // A directory flag naming nothing usable is bad input, like a missing file.
        let bad_dir = matches!(
            e,
            StorageError::OutputDirMissing { .. }
                | StorageError::OutputDirNotDirectory { .. }
                | StorageError::StateDirNotDirectory { .. }
        );
        if e.is_bad_input() || bad_dir {
            Self::BadInput
        } else if e.is_no_space() || e.is_permission() {
            Self::Storage
        } else {
            Self::Failed
        }
    }
}

impl EngineError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::BadInput(_) => ErrorKind::BadInput,
            Self::Auth(_) => ErrorKind::Auth,
            Self::Storage(e) => ErrorKind::of_storage(e),
            Self::LocalStorage(_) => ErrorKind::Storage,
            Self::Transport(e) if e.is_auth() => ErrorKind::Auth,
            Self::Transport(TransportError::Peer { code, .. }) => ErrorKind::of_code(*code),
            Self::Transport(_) => ErrorKind::Failed,
            Self::Send(SendError::Refused { code, .. }) => ErrorKind::of_code(*code),
            Self::Send(_) | Self::Failed(_) => ErrorKind::Failed,
            Self::TransferFailed(kind, _) => *kind,
        }
    }

    /// Whether re-running the same command cannot help (bad input, refused authentication): the session is
    /// marked failed rather than interrupted.
    pub(crate) fn is_final_for_session(&self) -> bool {
        matches!(self.kind(), ErrorKind::BadInput | ErrorKind::Auth)
    }
}

/// The error code to tell a peer for a storage failure.
pub(crate) fn storage_code(e: &StorageError) -> ErrorCode {
    if e.is_no_space() {
        ErrorCode::NoSpace
    } else if e.is_permission() {
        ErrorCode::Permission
    } else {
        ErrorCode::Internal
    }
}

/// A failure to tell the peer: its code and one line.
pub(crate) type ErrorReply = (ErrorCode, String);

/// A storage failure as the reply the peer gets.
pub(crate) fn store_reply(e: StorageError) -> ErrorReply {
    (storage_code(&e), e.to_string())
}
