//! Receivers whose certificate fingerprint the sender has seen (like ssh's known_hosts).

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::dirs::{sync_dir, unique_name, StateDir, PRIVATE_FILE_MODE};
use crate::error::io_error;
use crate::StorageError;

/// `<state>/known_receivers`: a text file, one `<to> <fingerprint>` a line (`#` comments and blank lines are
/// ignored), rewritten atomically on every change (write a temp file, fsync, rename, fsync the dir).
#[derive(Debug, Clone)]
pub struct KnownReceivers {
    path: PathBuf,
    entries: BTreeMap<String, String>,
}

impl KnownReceivers {
    /// File name inside the state dir.
    pub const FILE_NAME: &'static str = "known_receivers";

    /// Loads the file (a missing file means no receiver is known yet).
    pub fn open(state: &StateDir) -> Result<Self, StorageError> {
        let path = state.path().join(Self::FILE_NAME);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(StorageError::BadKnownReceivers {
                    path,
                    line: 0,
                    detail: "the file is not UTF-8".into(),
                })
            }
            Err(e) => return Err(io_error("read", &path, e)),
        };
        let mut entries = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(to), Some(fp), None) => {
                    entries.insert(to.to_owned(), fp.to_owned());
                }
                _ => {
                    return Err(StorageError::BadKnownReceivers {
                        path,
                        line: i + 1,
                        detail: "expected `<to> <fingerprint>`".into(),
                    })
                }
            }
        }
        Ok(Self { path, entries })
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The fingerprint remembered for `to`, if any.
    pub fn get(&self, to: &str) -> Option<String> {
        self.entries.get(to).cloned()
    }

    /// Remembers (or replaces) the fingerprint for `to` and rewrites the file atomically.
    /// Neither value may be empty or contain whitespace.
    pub fn remember(&mut self, to: &str, fingerprint: &str) -> Result<(), StorageError> {
        let bad = |s: &str| s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control());
        if bad(to) || to.starts_with('#') {
            return Err(StorageError::BadKnownReceiverEntry {
                to: to.to_owned(),
                detail: "the destination must be non-empty, contain no whitespace and not start with '#'",
            });
        }
        if bad(fingerprint) {
            return Err(StorageError::BadKnownReceiverEntry {
                to: to.to_owned(),
                detail: "the fingerprint must be non-empty and contain no whitespace",
            });
        }
        if self.entries.get(to).map(String::as_str) == Some(fingerprint) {
            return Ok(());
        }
        let mut next = self.entries.clone();
        next.insert(to.to_owned(), fingerprint.to_owned());
        self.write(&next)?;
        self.entries = next;
        Ok(())
    }

    fn write(&self, entries: &BTreeMap<String, String>) -> Result<(), StorageError> {
        let mut text =
            String::from("# trackshift known receivers: <to> <certificate fingerprint>\n");
        for (to, fp) in entries {
            text.push_str(to);
            text.push(' ');
            text.push_str(fp);
            text.push('\n');
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(unique_name("known-receivers"));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(PRIVATE_FILE_MODE)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)
                .map_err(|e| io_error("create", &tmp, e))?;
            f.write_all(text.as_bytes())
                .map_err(|e| io_error("write", &tmp, e))?;
            f.sync_all().map_err(|e| io_error("sync", &tmp, e))?;
            fs::rename(&tmp, &self.path).map_err(|e| io_error("replace", &self.path, e))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result?;
        sync_dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn remembers_across_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path()).unwrap();
        let mut k = KnownReceivers::open(&state).unwrap();
        assert_eq!(k.path(), tmp.path().join("known_receivers"));
        assert_eq!(k.get("h:1"), None);
        k.remember("h:1", "sha256:aa").unwrap();
        k.remember("[::1]:9", "sha256:bb").unwrap();
        k.remember("h:1", "sha256:cc").unwrap();
        assert_eq!(k.get("h:1").as_deref(), Some("sha256:cc"));

        let k2 = KnownReceivers::open(&state).unwrap();
        assert_eq!(k2.get("h:1").as_deref(), Some("sha256:cc"));
        assert_eq!(k2.get("[::1]:9").as_deref(), Some("sha256:bb"));
        assert_eq!(
            fs::metadata(k2.path()).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // No temp files left.
        let names: Vec<String> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            names.iter().all(|n| !n.starts_with(".trackshift-")),
            "{names:?}"
        );
    }

    #[test]
    fn rejects_bad_entries_and_bad_files() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path()).unwrap();
        let mut k = KnownReceivers::open(&state).unwrap();
        assert!(k.remember("h 1", "fp").is_err());
        assert!(k.remember("h:1", "f\np").is_err());
        assert!(k.remember("", "fp").is_err());
        assert!(k.remember("h:1", "").is_err());

        fs::write(k.path(), "# c\n\nh:1 fp\nbroken\n").unwrap();
        let err = KnownReceivers::open(&state).unwrap_err();
        assert!(err.to_string().contains("line 4"), "{err}");
    }
}
