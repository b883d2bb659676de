//! The orchestrator's files in its state dir: the token signing key, shared by the server and
//! `trackshift orchestrator token`, and the SQLite database's name.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use trackshift_grid::TokenKey;

use crate::error::OrchestratorError;

/// The signing key (Ed25519, PKCS#8 DER), mode 0600.
pub const KEY_FILE: &str = "token-key.pk8";
/// The SQLite database when no `--database` is given.
pub const DATABASE_FILE: &str = "orchestrator.sqlite3";

/// The key in `state_dir`, created (with the dir, mode 0700) on first use.
pub fn load_or_create(state_dir: &Path) -> Result<TokenKey, OrchestratorError> {
    let fail = |reason: String| OrchestratorError::StateDir {
        path: state_dir.to_owned(),
        reason,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(|e| fail(format!("cannot create it: {e}")))?;
    let path = state_dir.join(KEY_FILE);
    match fs::read(&path) {
        Ok(bytes) => {
            return TokenKey::from_pkcs8(&bytes).map_err(|e| fail(format!("{KEY_FILE}: {e}")))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(fail(format!("cannot read {KEY_FILE}: {e}"))),
    }
    let key = TokenKey::generate().map_err(|e| fail(e.to_string()))?;
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(key.pkcs8()).and_then(|()| f.sync_all()));
    match written {
        Ok(()) => Ok(key),
        // Another process (a `token` command, a second server) created it first: use that one.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let bytes =
                fs::read(&path).map_err(|e| fail(format!("cannot read {KEY_FILE}: {e}")))?;
            TokenKey::from_pkcs8(&bytes).map_err(|e| fail(format!("{KEY_FILE}: {e}")))
        }
        Err(e) => Err(fail(format!("cannot write {KEY_FILE}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly on purpose

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_key_is_created_once_private_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = load_or_create(&state).unwrap();
        let mode = fs::metadata(state.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_create(&state).unwrap();
        assert_eq!(first.verifier().public_hex(), again.verifier().public_hex());
    }
}
