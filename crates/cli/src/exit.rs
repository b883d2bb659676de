//! Exit codes (cli-contract.md), in one place: every error the engine returns has an [`ErrorKind`], and each kind
//! has its code.

use trackshift_engine::{EngineError, ErrorKind};

pub const OK: i32 = 0;
/// The transfer failed: network, verification, peer refused.
pub const FAILED: i32 = 1;
/// Bad usage or bad input.
pub const USAGE: i32 = 2;
/// Authentication refused.
pub const AUTH: i32 = 3;
/// Local storage problem (disk full, permission).
pub const STORAGE: i32 = 4;

/// The exit code for an error.
pub fn code(e: &EngineError) -> i32 {
    match e.kind() {
        ErrorKind::Failed => FAILED,
        ErrorKind::BadInput => USAGE,
        ErrorKind::Auth => AUTH,
        ErrorKind::Storage => STORAGE,
    }
}
