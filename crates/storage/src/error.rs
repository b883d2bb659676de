//! The one error type of this crate, and the mapping from `std::io::Error` to it.

use std::io;
use std::path::{Path, PathBuf};

use crate::partial::MAX_CANDIDATES;
use crate::SourceError;

/// Everything that can go wrong on disk. Every message is one line saying what failed and what to do.
///
/// The CLI maps [`StorageError::is_no_space`] and [`StorageError::is_permission`] to exit code 4 (a local storage
/// problem), and [`StorageError::is_bad_input`] (the file to send, [`StorageError::Source`]) to exit code 2.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The filesystem is full (ENOSPC) or the user's quota is exhausted (EDQUOT).
    #[error("no space left on device writing {}: free space and re-run to resume", path.display())]
    NoSpace { path: PathBuf },

    /// A free-space check before writing found too little room.
    #[error(
        "not enough free space in {}: need {needed} bytes, {available} available; free space and re-run",
        dir.display()
    )]
    InsufficientSpace {
        dir: PathBuf,
        needed: u64,
        available: u64,
    },

    /// EACCES, EPERM or a read-only filesystem.
    #[error("cannot {action} {}: permission denied; fix its permissions or pick another directory", path.display())]
    PermissionDenied { path: PathBuf, action: &'static str },

    /// Any other I/O failure.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },

    /// A file name from the network that must not be used as a local name.
    #[error("refusing unsafe file name {name:?} from the sender: {reason}")]
    UnsafeName { name: String, reason: &'static str },

    /// `--output-dir` does not exist.
    #[error("output dir {} does not exist: create it or pass another --output-dir", dir.display())]
    OutputDirMissing { dir: PathBuf },

    /// `--output-dir` exists but is not a directory.
    #[error("output dir {} is not a directory: pass a directory to --output-dir", dir.display())]
    OutputDirNotDirectory { dir: PathBuf },

    /// `--output-dir` exists but a probe file could not be created in it.
    #[error(
        "output dir {} is not writable: {detail}; fix its permissions or pass another --output-dir",
        dir.display()
    )]
    OutputDirNotWritable { dir: PathBuf, detail: String },

    /// The state dir path exists but is not a directory.
    #[error("state dir {} is not a directory: pass a directory to --state-dir", dir.display())]
    StateDirNotDirectory { dir: PathBuf },

    /// A path this crate creates itself is occupied by a symlink or by something other than a regular file.
    #[error("refusing to use {}: {reason}; remove it and re-run", path.display())]
    UnsafePath { path: PathBuf, reason: &'static str },

    /// Every candidate name for the finished file is taken.
    #[error(
        "cannot place {name:?} in {}: every candidate name up to \"({})\" is taken; clean up the directory and re-run",
        dir.display(),
        MAX_CANDIDATES
    )]
    NoFreeName { dir: PathBuf, name: String },

    /// The session store failed for a reason other than I/O.
    #[error("session store {} failed: {detail}; if it persists, move the file aside and re-run", path.display())]
    Database { path: PathBuf, detail: String },

    /// A stored record could not be decoded (or encoded).
    #[error("session store {} holds an unreadable record: {detail}; move the file aside and re-run", path.display())]
    BadRecord { path: PathBuf, detail: String },

    /// A malformed line in the known receivers file.
    #[error("{} line {line} is malformed: {detail}; fix or delete that line", path.display())]
    BadKnownReceivers {
        path: PathBuf,
        line: usize,
        detail: String,
    },

    /// A value that cannot be written into the known receivers file.
    #[error("cannot remember receiver {to:?}: {detail}")]
    BadKnownReceiverEntry { to: String, detail: &'static str },

    /// The file to send cannot be opened or read: bad input, not a local storage problem (even when the cause
    /// is a permission or an I/O error), see [`StorageError::is_bad_input`].
    #[error(transparent)]
    Source(#[from] SourceError),
}

impl StorageError {
    /// True when the disk (or quota) is full: the CLI exits with code 4.
    pub fn is_no_space(&self) -> bool {
        matches!(self, Self::NoSpace { .. } | Self::InsufficientSpace { .. })
    }

    /// True when the OS refused access (EACCES, EPERM, read-only filesystem): the CLI exits with code 4.
    pub fn is_permission(&self) -> bool {
        matches!(
            self,
            Self::PermissionDenied { .. } | Self::OutputDirNotWritable { .. }
        )
    }

    /// True when the input the user named cannot be sent ([`StorageError::Source`]: a directory, a missing or
    /// unreadable file, a name that is not UTF-8, a read of it that failed): the CLI exits with code 2, as for
    /// bad usage. Such an error is never [`Self::is_no_space`] or [`Self::is_permission`].
    pub fn is_bad_input(&self) -> bool {
        matches!(self, Self::Source(_))
    }
}

/// Classifies an I/O error: disk full, permission, or other.
pub(crate) fn io_error(action: &'static str, path: &Path, err: io::Error) -> StorageError {
    if is_no_space_io(&err) {
        StorageError::NoSpace {
            path: path.to_path_buf(),
        }
    } else if is_permission_io(&err) {
        StorageError::PermissionDenied {
            path: path.to_path_buf(),
            action,
        }
    } else {
        StorageError::Io {
            path: path.to_path_buf(),
            action,
            source: err,
        }
    }
}

pub(crate) fn is_no_space_io(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::StorageFull
        || matches!(err.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

pub(crate) fn is_permission_io(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
    ) || matches!(
        err.raw_os_error(),
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_classified() {
        let p = Path::new("/x/y");
        let e = io_error("write", p, io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(e.is_no_space());
        assert_eq!(
            e.to_string(),
            "no space left on device writing /x/y: free space and re-run to resume"
        );
        assert!(io_error("write", p, io::Error::from_raw_os_error(libc::EDQUOT)).is_no_space());
        assert!(io_error("write", p, io::Error::from(io::ErrorKind::StorageFull)).is_no_space());
        for code in [libc::EACCES, libc::EPERM, libc::EROFS] {
            let e = io_error("create", p, io::Error::from_raw_os_error(code));
            assert!(e.is_permission(), "{code}");
            assert!(!e.is_no_space());
        }
        let e = io_error("read", p, io::Error::from_raw_os_error(libc::EIO));
        assert!(!e.is_permission() && !e.is_no_space());
        assert!(!e.to_string().contains('\n'));
    }
}
