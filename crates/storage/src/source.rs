//! [`FileSource`]: the local file a sender sends, behind [`ChunkSource`].

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::{ChunkSource, StorageError};

/// Nanoseconds per second, to express a file's mtime in ns since the epoch.
const NANOS_PER_SEC: i64 = 1_000_000_000;

/// Why the file to send cannot be sent. These are the user's input failing (exit code 2 in the CLI, see
/// [`StorageError::is_bad_input`]), never a problem of the local storage TrackShift writes to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The path cannot be inspected or opened (missing, no permission, …).
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{} is a directory: trackshift sends one file at a time", path.display())]
    Directory { path: PathBuf },

    /// A device, socket, FIFO, …
    #[error("{} is not a regular file", path.display())]
    NotRegularFile { path: PathBuf },

    /// The receiver stores the file under its name, which travels as UTF-8.
    #[error("{}: the file name must be valid UTF-8", path.display())]
    NameNotUtf8 { path: PathBuf },

    /// The canonical path (the key that finds an earlier session of this file) cannot be resolved.
    #[error("{}: {source}", path.display())]
    NoCanonicalPath {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Reading the open file failed (it shrank, the disk under it failed, …).
    #[error("reading the source file: {source}")]
    Read {
        #[source]
        source: io::Error,
    },

    /// A second descriptor for another reader thread could not be had.
    #[error("source file: {source}")]
    Clone {
        #[source]
        source: io::Error,
    },
}

/// One local regular file to send, opened for positional reads, with what the session record and the `Offer`
/// need to know about it.
#[derive(Debug)]
pub struct FileSource {
    file: File,
    /// Canonical: the same file reached by another path is the same source.
    path: PathBuf,
    name: String,
    size: u64,
    mtime_ns: i64,
}

impl FileSource {
    /// Opens `path` for reading. It must be a regular file (not a directory, device or FIFO) whose name is
    /// valid UTF-8; the size and mtime are taken from its metadata at this moment.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        let unreadable = |source| SourceError::Unreadable {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(unreadable)?;
        if meta.is_dir() {
            return Err(SourceError::Directory {
                path: path.to_path_buf(),
            }
            .into());
        }
        if !meta.is_file() {
            return Err(SourceError::NotRegularFile {
                path: path.to_path_buf(),
            }
            .into());
        }
        let file = File::open(path).map_err(unreadable)?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| SourceError::NameNotUtf8 {
                path: path.to_path_buf(),
            })?
            .to_owned();
        let canonical =
            std::fs::canonicalize(path).map_err(|source| SourceError::NoCanonicalPath {
                path: path.to_path_buf(),
                source,
            })?;
        let mtime_ns = meta
            .mtime()
            .saturating_mul(NANOS_PER_SEC)
            .saturating_add(meta.mtime_nsec());
        Ok(Self {
            file,
            path: canonical,
            name,
            size: meta.len(),
            mtime_ns,
        })
    }

    /// The canonical path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's name (the last part of the path it was opened by), as the receiver will store it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Modification time when opened, nanoseconds since the Unix epoch (saturating).
    pub fn mtime_ns(&self) -> i64 {
        self.mtime_ns
    }

    /// The same source on a second descriptor, for a reader thread of its own.
    pub fn try_clone(&self) -> Result<Self, StorageError> {
        let file = self
            .file
            .try_clone()
            .map_err(|source| SourceError::Clone { source })?;
        Ok(Self {
            file,
            path: self.path.clone(),
            name: self.name.clone(),
            size: self.size,
            mtime_ns: self.mtime_ns,
        })
    }
}

impl ChunkSource for FileSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| SourceError::Read { source }.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_opens_with_its_metadata_and_reads_at_offsets() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("data.bin");
        std::fs::write(&path, b"0123456789").unwrap();
        let source = FileSource::open(&tmp.path().join(".").join("data.bin")).unwrap();
        assert_eq!(source.size(), 10);
        assert_eq!(source.name(), "data.bin");
        assert_eq!(source.path(), std::fs::canonicalize(&path).unwrap());
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(
            i128::from(source.mtime_ns()),
            i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())
        );
        let mut buf = [0u8; 4];
        source.read_exact_at(3, &mut buf).unwrap();
        assert_eq!(&buf, b"3456");
        let clone = source.try_clone().unwrap();
        clone.read_exact_at(6, &mut buf).unwrap();
        assert_eq!(&buf, b"6789");
        let err = source.read_exact_at(8, &mut buf).unwrap_err();
        assert!(err.is_bad_input(), "{err}");
        assert!(
            err.to_string().starts_with("reading the source file: "),
            "{err}"
        );
    }

    #[test]
    fn what_cannot_be_sent_is_bad_input_with_todays_messages() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("missing.bin");
        let dir = tmp.path().join("a-dir");
        std::fs::create_dir(&dir).unwrap();
        let cases = [
            (
                missing.clone(),
                format!(
                    "cannot read {}: No such file or directory (os error 2)",
                    missing.display()
                ),
            ),
            (
                dir.clone(),
                format!(
                    "{} is a directory: trackshift sends one file at a time",
                    dir.display()
                ),
            ),
            (
                PathBuf::from("/dev/null"),
                "/dev/null is not a regular file".to_owned(),
            ),
        ];
        for (path, message) in cases {
            let err = FileSource::open(&path).unwrap_err();
            assert!(err.is_bad_input(), "{err}");
            assert!(!err.is_permission() && !err.is_no_space(), "{err}");
            assert_eq!(err.to_string(), message);
        }
    }

    #[test]
    fn a_name_that_is_not_utf8_is_refused() {
        use std::os::unix::ffi::OsStrExt;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(std::ffi::OsStr::from_bytes(b"bad\xff.bin"));
        std::fs::write(&path, b"x").unwrap();
        let err = FileSource::open(&path).unwrap_err();
        assert!(err.is_bad_input());
        assert_eq!(
            err.to_string(),
            format!("{}: the file name must be valid UTF-8", path.display())
        );
    }
}
