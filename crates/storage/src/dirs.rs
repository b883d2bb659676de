//! The output dir checks, free space, and the state dir.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{io_error, is_permission_io};
use crate::names::RESERVED_PREFIX;
use crate::StorageError;

/// Checks that `dir` exists, is a directory and is writable, by creating and removing a probe file
/// (`.trackshift-probe-…`, never following a symlink).
///
/// Errors: "output dir /x does not exist", "output dir /x is not a directory",
/// "output dir /x is not writable: permission denied" (each with what to do).
pub fn check_output_dir(dir: &Path) -> Result<(), StorageError> {
    let meta = match fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StorageError::OutputDirMissing {
                dir: dir.to_path_buf(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
            return Err(StorageError::OutputDirMissing {
                dir: dir.to_path_buf(),
            })
        }
        Err(e) => return Err(io_error("inspect output dir", dir, e)),
    };
    if !meta.is_dir() {
        return Err(StorageError::OutputDirNotDirectory {
            dir: dir.to_path_buf(),
        });
    }
    let probe = dir.join(unique_name("probe"));
    let opened = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&probe);
    match opened {
        Ok(file) => {
            drop(file);
            fs::remove_file(&probe).map_err(|e| io_error("remove probe file", &probe, e))?;
            Ok(())
        }
        Err(e) => {
            let detail = if e.kind() == io::ErrorKind::ReadOnlyFilesystem
                || e.raw_os_error() == Some(libc::EROFS)
            {
                "read-only file system".to_owned()
            } else if is_permission_io(&e) {
                "permission denied".to_owned()
            } else {
                return Err(io_error("create a probe file in", dir, e));
            };
            Err(StorageError::OutputDirNotWritable {
                dir: dir.to_path_buf(),
                detail,
            })
        }
    }
}

/// Bytes available to an unprivileged writer on the filesystem holding `dir` (`f_bavail * f_frsize`).
pub fn available_space(dir: &Path) -> Result<u64, StorageError> {
    let st =
        rustix::fs::statvfs(dir).map_err(|e| io_error("query free space of", dir, e.into()))?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Fails with [`StorageError::InsufficientSpace`] (`is_no_space()` is true) when fewer than `needed` bytes
/// are available on the filesystem holding `dir`.
pub fn ensure_space(dir: &Path, needed: u64) -> Result<(), StorageError> {
    let available = available_space(dir)?;
    if available < needed {
        return Err(StorageError::InsufficientSpace {
            dir: dir.to_path_buf(),
            needed,
            available,
        });
    }
    Ok(())
}

/// Seconds since the Unix epoch, for `created_unix` / `updated_unix`.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Mode of every file this crate creates before it is finished (partial data, the session store, the known
/// receivers, probes): owner read and write only, since they name the user's files, peers and secrets' hosts.
pub(crate) const PRIVATE_FILE_MODE: u32 = 0o600;
/// Mode of the state dir and its identity dir: owner only, for the same reason and for the TLS key inside.
const PRIVATE_DIR_MODE: u32 = 0o700;
/// The permission bits of a mode (what `PRIVATE_FILE_MODE` is compared with).
pub(crate) const PERMISSION_BITS: u32 = 0o777;

/// A name under the reserved prefix that no other call (in this or another process) uses at the same time.
pub(crate) fn unique_name(kind: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{RESERVED_PREFIX}{kind}-{}-{n}-{nanos}", std::process::id())
}

/// Opens `dir` and fsyncs it, so a rename or link in it survives a power cut.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    let d = fs::File::open(dir).map_err(|e| io_error("open directory", dir, e))?;
    d.sync_all().map_err(|e| io_error("sync directory", dir, e))
}

/// The state dir (session store, known receivers, TLS identity). Created with mode 0700 if missing;
/// resolving the default location is the CLI's job.
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// Opens `path` as the state dir, creating it (and `identity/` inside it) with mode 0700 if missing.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        create_private_dir(path, true)?;
        create_private_dir(&path.join("identity"), false)?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// The state dir itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `<state>/identity`, for the transport crate's TLS identity files. Already created (0700) by [`StateDir::open`].
    pub fn identity_dir(&self) -> PathBuf {
        self.path.join("identity")
    }
}

fn create_private_dir(path: &Path, recursive: bool) -> Result<(), StorageError> {
    match DirBuilder::new()
        .recursive(recursive)
        .mode(PRIVATE_DIR_MODE)
        .create(path)
    {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_error("create state dir", path, e)),
    }
    let meta = fs::metadata(path).map_err(|e| io_error("inspect state dir", path, e))?;
    if !meta.is_dir() {
        return Err(StorageError::StateDirNotDirectory {
            dir: path.to_path_buf(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn output_dir_checks() {
        let tmp = tempfile::tempdir().unwrap();
        check_output_dir(tmp.path()).unwrap();
        assert_eq!(
            fs::read_dir(tmp.path()).unwrap().count(),
            0,
            "probe file left behind"
        );

        let missing = tmp.path().join("nope");
        let err = check_output_dir(&missing).unwrap_err();
        assert!(err
            .to_string()
            .starts_with(&format!("output dir {} does not exist", missing.display())));

        let file = tmp.path().join("f");
        fs::write(&file, b"x").unwrap();
        let err = check_output_dir(&file).unwrap_err();
        assert!(err.to_string().contains("is not a directory"), "{err}");
    }

    /// Set (to the dir to probe) in the child that [`unwritable_output_dir`] runs as an unprivileged user.
    const PROBE_AS_CHILD: &str = "TRACKSHIFT_TEST_PROBE_UNWRITABLE";
    /// `nobody` on Debian; any uid without rights on a dir of root's would do.
    const NOBODY: u32 = 65534;

    fn assert_refused_with_permission_denied(dir: &Path) {
        let err = check_output_dir(dir).unwrap_err();
        assert!(err.is_permission(), "{err}");
        assert!(
            err.to_string().starts_with(&format!(
                "output dir {} is not writable: permission denied",
                dir.display()
            )),
            "{err}"
        );
    }

    /// Permission denied (EACCES) is refused as such, for real when the tests run as root (CI always does),
    /// whose writes no mode bits stop: this test then runs itself again as `nobody` in a child process (the
    /// kernel's setgid/setuid before exec, through `CommandExt::uid`), on a dir of root's that only root may
    /// write. Not as root, it checks a 0555 dir of its own directly.
    #[test]
    fn unwritable_output_dir() {
        use std::os::unix::fs::MetadataExt;
        use std::os::unix::process::CommandExt;
        if let Some(dir) = std::env::var_os(PROBE_AS_CHILD) {
            assert_ne!(
                fs::metadata("/proc/self").unwrap().uid(),
                0,
                "child runs as root"
            );
            assert_refused_with_permission_denied(Path::new(&dir));
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out");
        fs::create_dir(&dir).unwrap();
        if fs::metadata("/proc/self").unwrap().uid() != 0 {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o555)).unwrap();
            assert_refused_with_permission_denied(&dir);
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
            return;
        }
        // Root: everything on the way is readable and searchable by others, the dir writable by root only,
        // and the child is a copy of this test binary where `nobody` may run it (the build dir may not be).
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        check_output_dir(&dir).unwrap();
        let exe = tmp.path().join("storage-tests");
        fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        let out = std::process::Command::new(&exe)
            .args([
                "--exact",
                "dirs::tests::unwritable_output_dir",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(PROBE_AS_CHILD, &dir)
            .current_dir("/")
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success()
                && stdout.contains("test dirs::tests::unwritable_output_dir ... ok"),
            "the check as uid {NOBODY} failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            0,
            "the refused probe left something behind"
        );
    }

    #[test]
    fn free_space_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(available_space(tmp.path()).unwrap() > 0);
        ensure_space(tmp.path(), 1).unwrap();
        let err = ensure_space(tmp.path(), u64::MAX).unwrap_err();
        assert!(err.is_no_space(), "{err}");
        assert!(available_space(&tmp.path().join("missing")).is_err());
    }

    #[test]
    fn state_dir_is_private() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a/b/state");
        let state = StateDir::open(&path).unwrap();
        assert_eq!(state.path(), path);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let id = state.identity_dir();
        assert_eq!(id, path.join("identity"));
        assert_eq!(
            fs::metadata(&id).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // Reopening an existing one is fine.
        StateDir::open(&path).unwrap();

        let file = tmp.path().join("file");
        fs::write(&file, b"").unwrap();
        let err = StateDir::open(&file).unwrap_err();
        assert!(
            matches!(err, StorageError::StateDirNotDirectory { .. })
                || err.to_string().contains("state dir"),
            "{err}"
        );
    }
}
