//! Errors at the binary's edge, each with its exit code from the command-line contract.

use std::fmt;

use trackshift_proto::ErrorCode;
use trackshift_storage::StorageError;
use trackshift_transport::TransportError;

/// Exit codes (cli-contract.md).
pub mod exit {
    pub const OK: i32 = 0;
    /// The transfer failed: network, verification, peer refused.
    pub const FAILED: i32 = 1;
    /// Bad usage or bad input.
    pub const USAGE: i32 = 2;
    /// Authentication refused.
    pub const AUTH: i32 = 3;
    /// Local storage problem (disk full, permission).
    pub const STORAGE: i32 = 4;
}

/// A failure the user sees as one line and an exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(exit::USAGE, message)
    }

    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(exit::FAILED, message)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl From<StorageError> for Failure {
    fn from(e: StorageError) -> Self {
        let code = if e.is_no_space() || e.is_permission() {
            exit::STORAGE
        } else if matches!(
            e,
            StorageError::OutputDirMissing { .. }
                | StorageError::OutputDirNotDirectory { .. }
                | StorageError::StateDirNotDirectory { .. }
        ) {
            // A directory flag naming nothing usable is bad input, like a missing file.
            exit::USAGE
        } else {
            exit::FAILED
        };
        Self::new(code, e.to_string())
    }
}

impl From<TransportError> for Failure {
    fn from(e: TransportError) -> Self {
        let code = match &e {
            e if e.is_auth() => exit::AUTH,
            TransportError::Peer {
                code: ErrorCode::NoSpace | ErrorCode::Permission,
                ..
            } => exit::STORAGE,
            TransportError::Peer {
                code: ErrorCode::BadName,
                ..
            } => exit::USAGE,
            _ => exit::FAILED,
        };
        let message = match &e {
            TransportError::Peer {
                code: ErrorCode::NoSpace,
                message,
            } => format!("receiver storage full: {message}"),
            _ => e.to_string(),
        };
        Self::new(code, message)
    }
}
