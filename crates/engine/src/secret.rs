//! The secret a receiver started without one uses: generated once, kept in the state dir (mode 0600), and the
//! same on every later start.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use trackshift_storage::StateDir;

use crate::error::EngineError;

/// Bytes of randomness in a generated secret (printed as hex): 128 bits, beyond any online guessing, and the
/// SPAKE2 exchange allows no offline guessing at all.
const GENERATED_SECRET_BYTES: usize = 16;

/// The receiver's generated secret, and whether it was generated just now.
pub(crate) fn load_or_create_secret(state: &StateDir) -> Result<(String, bool), EngineError> {
    let path = state.path().join("receiver.secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim().to_owned();
        if !s.is_empty() {
            return Ok((s, false));
        }
    }
    let secret = hex::encode(rand::random::<[u8; GENERATED_SECRET_BYTES]>());
    let save = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(secret.as_bytes())?;
        f.sync_all()
    };
    save().map_err(|e| {
        EngineError::LocalStorage(format!(
            "cannot save the generated secret in {}: {e}",
            path.display()
        ))
    })?;
    Ok((secret, true))
}
