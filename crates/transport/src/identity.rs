//! The receiver's long-lived TLS identity: a key and a self-signed certificate kept in the state dir.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::TransportError;

const CERT_FILE: &str = "cert.pem";
const KEY_FILE: &str = "key.pem";
/// Mode of the identity files: owner read and write only, since the key is the receiver's identity.
const PRIVATE_MODE: u32 = 0o600;

/// A key pair and its self-signed certificate.
#[derive(Debug)]
pub struct Identity {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    dir: PathBuf,
}

impl Identity {
    /// Loads the identity from `dir`, creating it on first run (key file mode 0600).
    pub fn load_or_create(dir: &Path) -> Result<Self, TransportError> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        let err = |message: String| TransportError::Identity {
            path: dir.display().to_string(),
            message,
        };
        if !cert_path.exists() || !key_path.exists() {
            let generated = rcgen::generate_simple_self_signed(vec!["trackshift".to_owned()])
                .map_err(|e| err(e.to_string()))?;
            fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            write_private(&key_path, generated.signing_key.serialize_pem().as_bytes())
                .map_err(|e| err(e.to_string()))?;
            write_private(&cert_path, generated.cert.pem().as_bytes())
                .map_err(|e| err(e.to_string()))?;
        }
        let cert = CertificateDer::from_pem_file(&cert_path)
            .map_err(|e| err(format!("{CERT_FILE}: {e}")))?;
        let key =
            PrivateKeyDer::from_pem_file(&key_path).map_err(|e| err(format!("{KEY_FILE}: {e}")))?;
        Ok(Self {
            cert,
            key,
            dir: dir.to_owned(),
        })
    }

    /// The certificate's fingerprint, as the sender pins it.
    pub fn fingerprint(&self) -> String {
        fingerprint_of(&self.cert)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE_MODE)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

/// `sha256:` and the lowercase hex SHA-256 of a DER certificate.
pub fn fingerprint_of(cert: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(cert)))
}

/// Accepts a fingerprint as printed (`sha256:ab12…`), bare hex, or hex with colons; returns the canonical form,
/// or `None` when it is not 32 bytes of hex.
pub fn normalize_fingerprint(s: &str) -> Option<String> {
    let hexpart: String = s
        .trim()
        .trim_start_matches("sha256:")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    let bytes = hex::decode(hexpart.to_ascii_lowercase()).ok()?;
    (bytes.len() == Sha256::output_size()).then(|| format!("sha256:{}", hex::encode(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        let b = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn fingerprints_normalize() {
        let fp = fingerprint_of(b"x");
        assert_eq!(normalize_fingerprint(&fp).unwrap(), fp);
        let bare = fp.trim_start_matches("sha256:").to_ascii_uppercase();
        assert_eq!(normalize_fingerprint(&bare).unwrap(), fp);
        assert!(normalize_fingerprint("abc").is_none());
    }
}
