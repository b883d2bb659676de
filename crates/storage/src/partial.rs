//! The receiver's partial file and the final, no-overwrite move into place.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use trackshift_proto::SessionId;

use crate::dirs::{sync_dir, PERMISSION_BITS, PRIVATE_FILE_MODE};
use crate::error::io_error;
use crate::names::{candidate_name, validate_file_name, RESERVED_PREFIX};
use crate::{ChunkSink, StorageError};

/// Mode of a finished file: what most umasks give a new file.
const FINISHED_MODE: u32 = 0o644;

/// How many alternative names `finalize` tries (`name (1)` … `name (9999)`) before giving up: far more copies of
/// one name than anyone keeps, while a directory that full still fails in bounded time.
pub(crate) const MAX_CANDIDATES: u32 = 9999;

/// The receiver's partial file for one session: `<output_dir>/.trackshift-<session hex>.part`, mode 0600.
///
/// It is opened with `O_NOFOLLOW`, so a symlink planted at that name is never followed, and anything there
/// that is not a plain regular file with one link is refused. All I/O methods take `&self` and use positioned
/// reads and writes, so one `PartialFile` can be shared by several threads (e.g. in an `Arc`).
#[derive(Debug)]
pub struct PartialFile {
    file: File,
    /// The same file opened with `O_DIRECT`, where the filesystem supports it: aligned writes go around the
    /// page cache, which on large files is cheaper in CPU than copying every byte into it (and keeps a 100 GB
    /// transfer from evicting everything else). Unaligned writes and all reads use `file`.
    direct: Option<File>,
    path: PathBuf,
}

/// The unit of `st_blocks` (always 512 bytes, whatever the filesystem's block size).
const STAT_BLOCK: u64 = 512;

/// Offset, length and memory alignment a write needs to go through the `O_DIRECT` descriptor. 4096 covers the
/// logical block size of every common disk and filesystem.
pub const DIRECT_IO_ALIGN: usize = 4096;

fn is_aligned(offset: u64, data: &[u8]) -> bool {
    let a = DIRECT_IO_ALIGN as u64;
    offset.is_multiple_of(a)
        && (data.len() as u64).is_multiple_of(a)
        && (data.as_ptr() as usize).is_multiple_of(DIRECT_IO_ALIGN)
        && !data.is_empty()
}

impl PartialFile {
    /// `<output_dir>/.trackshift-<session hex>.part`.
    pub fn path_for(output_dir: &Path, id: &SessionId) -> PathBuf {
        output_dir.join(format!("{RESERVED_PREFIX}{}.part", id.to_hex()))
    }

    /// Bytes the partial file for `id` already occupies on disk (its allocated blocks, at most its length); 0
    /// when there is none (or something else has its name). Writing the rest of the file needs only the space
    /// beyond these.
    pub fn bytes_on_disk(output_dir: &Path, id: &SessionId) -> u64 {
        match fs::symlink_metadata(Self::path_for(output_dir, id)) {
            Ok(m) if m.is_file() => m.blocks().saturating_mul(STAT_BLOCK).min(m.len()),
            _ => 0,
        }
    }

    /// Opens the partial file for `id`, creating it if absent and keeping its contents if present (resume),
    /// then sets its length to `size` (sparse when new).
    ///
    /// Fails with [`StorageError::UnsafePath`] when the name is taken by a symlink, a non-regular file, or a
    /// file with more than one hard link.
    pub fn open(output_dir: &Path, id: &SessionId, size: u64) -> Result<Self, StorageError> {
        let path = Self::path_for(output_dir, id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(PRIVATE_FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    StorageError::UnsafePath {
                        path: path.clone(),
                        reason: "it is a symlink",
                    }
                } else {
                    io_error("open partial file", &path, e)
                }
            })?;
        let meta = file
            .metadata()
            .map_err(|e| io_error("inspect partial file", &path, e))?;
        if !meta.is_file() {
            return Err(StorageError::UnsafePath {
                path,
                reason: "it is not a regular file",
            });
        }
        if meta.nlink() > 1 {
            return Err(StorageError::UnsafePath {
                path,
                reason: "it has other hard links",
            });
        }
        if meta.permissions().mode() & PERMISSION_BITS != PRIVATE_FILE_MODE {
            file.set_permissions(fs::Permissions::from_mode(PRIVATE_FILE_MODE))
                .map_err(|e| io_error("set permissions of", &path, e))?;
        }
        if meta.len() != size {
            file.set_len(size)
                .map_err(|e| io_error("set the length of", &path, e))?;
        }
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .ok()
            // Only if it is the very file we checked above (nothing swapped in between).
            .filter(|d| {
                d.metadata()
                    .is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino())
            });
        Ok(Self { file, direct, path })
    }

    /// Writes all of `data` at `offset`; around the page cache when `offset`, the length and the buffer are all
    /// aligned to [`DIRECT_IO_ALIGN`] and the filesystem supports it.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        if let Some(direct) = self.direct.as_ref().filter(|_| is_aligned(offset, data)) {
            match direct.write_all_at(data, offset) {
                Ok(()) => return Ok(()),
                // The filesystem refused this direct write after all: write it through the page cache.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(io_error("write", &self.path, e)),
            }
        }
        self.file
            .write_all_at(data, offset)
            .map_err(|e| io_error("write", &self.path, e))
    }

    /// Fills all of `buf` from `offset`; reading past the end is an error.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| io_error("read", &self.path, e))
    }

    /// `fdatasync`: the written data is on disk when this returns.
    pub fn sync_data(&self) -> Result<(), StorageError> {
        self.file
            .sync_data()
            .map_err(|e| io_error("sync", &self.path, e))
    }

    /// Moves the verified file into place in `output_dir` under `name`, never overwriting anything.
    ///
    /// Call only after the whole-file hash verified. Steps: validate `name`; fsync the file; hard-link it to
    /// the first free candidate name; remove the partial name; fsync the directory. Returns the final path.
    ///
    /// Collision policy: if `<dir>/<name>` exists (as anything, including a dangling symlink), try
    /// `<stem> (1)<ext>`, `<stem> (2)<ext>`, … up to `(9999)`, where the name is split at its LAST dot unless
    /// that dot is the first character: `a.bin` → `a (1).bin`, `a.tar.gz` → `a.tar (1).gz`, `archive` →
    /// `archive (1)`, `.cfg` → `.cfg (1)`. Each attempt is `link(2)`, which fails atomically when the
    /// destination exists and never follows a symlink there, so an existing file or a symlink's target is
    /// never touched. On filesystems without hard links it falls back to `renameat2(RENAME_NOREPLACE)`, which
    /// gives the same guarantee.
    pub fn finalize(self, output_dir: &Path, name: &str) -> Result<PathBuf, StorageError> {
        let name = validate_file_name(name)?;
        // Partial data is private (0600); a finished file gets the usual mode of a new file.
        self.file
            .set_permissions(fs::Permissions::from_mode(FINISHED_MODE))
            .map_err(|e| io_error("set permissions of", &self.path, e))?;
        self.file
            .sync_all()
            .map_err(|e| io_error("sync", &self.path, e))?;
        for n in 0..=MAX_CANDIDATES {
            let candidate = output_dir.join(candidate_name(name, n));
            match fs::hard_link(&self.path, &candidate) {
                Ok(()) => {
                    fs::remove_file(&self.path)
                        .map_err(|e| io_error("remove partial file", &self.path, e))?;
                    sync_dir(output_dir)?;
                    return Ok(candidate);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) if link_unsupported(&e) => match rename_noreplace(&self.path, &candidate) {
                    Ok(()) => {
                        sync_dir(output_dir)?;
                        return Ok(candidate);
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(io_error("move the finished file to", &candidate, e)),
                },
                Err(e) => return Err(io_error("move the finished file to", &candidate, e)),
            }
        }
        Err(StorageError::NoFreeName {
            dir: output_dir.to_path_buf(),
            name: name.to_owned(),
        })
    }

    /// Deletes the partial file (abandoned session). A partial file that is already gone is not an error.
    pub fn remove(self) -> Result<(), StorageError> {
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("remove partial file", &self.path, e)),
        }
    }
}

/// The partial file is where a receiver's chunks go; the inherent methods of the same names are these.
impl ChunkSink for PartialFile {
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        PartialFile::write_at(self, offset, data)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        PartialFile::read_at(self, offset, buf)
    }

    fn sync_data(&self) -> Result<(), StorageError> {
        PartialFile::sync_data(self)
    }
}

/// `link(2)` errors that mean "this filesystem has no hard links" (vfat, some FUSE mounts).
fn link_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPERM) | Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
    )
}

fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        from,
        rustix::fs::CWD,
        to,
        rustix::fs::RenameFlags::NOREPLACE,
    )
    .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::sync::Arc;

    fn id(b: u8) -> SessionId {
        SessionId([b; 16])
    }

    #[test]
    fn aligned_and_unaligned_writes_both_land() {
        let tmp = tempfile::tempdir().unwrap();
        let p = PartialFile::open(tmp.path(), &id(9), 3 * 4096 + 10).unwrap();
        // A page-aligned buffer (may go through O_DIRECT) and an unaligned tail (page cache).
        let mut backing = vec![0u8; 3 * 4096];
        let pad = backing.as_ptr().align_offset(DIRECT_IO_ALIGN);
        backing.resize(pad + 2 * 4096, 0);
        let aligned = &mut backing[pad..pad + 2 * 4096];
        aligned
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (i % 251) as u8);
        p.write_at(0, aligned).unwrap();
        p.write_at(2 * 4096, &[7u8; 4096 + 10]).unwrap();
        p.sync_data().unwrap();
        let mut back = vec![0u8; 3 * 4096 + 10];
        p.read_at(0, &mut back).unwrap();
        assert_eq!(&back[..2 * 4096], &aligned[..]);
        assert!(back[2 * 4096..].iter().all(|&b| b == 7));
    }

    #[test]
    fn the_partial_file_is_a_chunk_sink() {
        let tmp = tempfile::tempdir().unwrap();
        let p = PartialFile::open(tmp.path(), &id(8), 8).unwrap();
        let sink: &dyn ChunkSink = &p;
        sink.write_at(2, b"abcd").unwrap();
        sink.sync_data().unwrap();
        let mut back = [0u8; 6];
        sink.read_at(1, &mut back).unwrap();
        assert_eq!(&back, b"\0abcd\0");
        assert!(sink.read_at(6, &mut back).is_err());
    }

    #[test]
    fn open_creates_sparse_private_file_and_keeps_data() {
        let tmp = tempfile::tempdir().unwrap();
        let p = PartialFile::open(tmp.path(), &id(1), 1 << 20).unwrap();
        assert_eq!(p.path, PartialFile::path_for(tmp.path(), &id(1)));
        assert_eq!(
            p.path.file_name().unwrap().to_str().unwrap(),
            format!(".trackshift-{}.part", id(1).to_hex())
        );
        let meta = fs::metadata(&p.path).unwrap();
        assert_eq!(meta.len(), 1 << 20);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        p.write_at(1000, b"hello").unwrap();
        p.sync_data().unwrap();
        drop(p);

        // Reopen (resume): data kept, not truncated.
        let p = PartialFile::open(tmp.path(), &id(1), 1 << 20).unwrap();
        let mut buf = [0u8; 5];
        p.read_at(1000, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        let mut past = [0u8; 4];
        assert!(p.read_at((1 << 20) - 2, &mut past).is_err());
        p.remove().unwrap();
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn bytes_on_disk_counts_what_was_written() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(PartialFile::bytes_on_disk(tmp.path(), &id(4)), 0);
        let p = PartialFile::open(tmp.path(), &id(4), 64 << 20).unwrap();
        // Sparse when new: (almost) nothing allocated.
        assert!(PartialFile::bytes_on_disk(tmp.path(), &id(4)) < 1 << 20);
        p.write_at(4 << 20, &vec![1u8; 8 << 20]).unwrap();
        p.sync_data().unwrap();
        let n = PartialFile::bytes_on_disk(tmp.path(), &id(4));
        assert!((8 << 20..=64 << 20).contains(&n), "{n}");
    }

    #[test]
    fn writes_from_several_threads() {
        let tmp = tempfile::tempdir().unwrap();
        let p = Arc::new(PartialFile::open(tmp.path(), &id(2), 4 * 1024).unwrap());
        let handles: Vec<_> = (0..4u8)
            .map(|i| {
                let p = Arc::clone(&p);
                std::thread::spawn(move || p.write_at(u64::from(i) * 1024, &[i; 1024]).unwrap())
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let p = Arc::into_inner(p).unwrap();
        let out = p.finalize(tmp.path(), "t.bin").unwrap();
        let data = fs::read(out).unwrap();
        for i in 0..4u8 {
            assert!(data[usize::from(i) * 1024..(usize::from(i) + 1) * 1024]
                .iter()
                .all(|&b| b == i));
        }
    }

    #[test]
    fn symlink_at_part_path_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        symlink(&victim, PartialFile::path_for(tmp.path(), &id(3))).unwrap();
        let err = PartialFile::open(tmp.path(), &id(3), 100).unwrap_err();
        assert!(matches!(err, StorageError::UnsafePath { .. }), "{err}");
        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(fs::read(&victim).unwrap(), b"precious");

        // A dangling symlink must not create its target either.
        let target = tmp.path().join("would-be-created");
        symlink(&target, PartialFile::path_for(tmp.path(), &id(4))).unwrap();
        assert!(PartialFile::open(tmp.path(), &id(4), 100).is_err());
        assert!(!target.exists());
    }

    #[test]
    fn hard_link_or_directory_at_part_path_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        fs::hard_link(&victim, PartialFile::path_for(tmp.path(), &id(5))).unwrap();
        let err = PartialFile::open(tmp.path(), &id(5), 100).unwrap_err();
        assert!(err.to_string().contains("hard links"), "{err}");
        assert_eq!(fs::read(&victim).unwrap(), b"precious");

        fs::create_dir(PartialFile::path_for(tmp.path(), &id(6))).unwrap();
        assert!(PartialFile::open(tmp.path(), &id(6), 100).is_err());
    }

    fn finished(dir: &Path, b: u8, body: &[u8]) -> PartialFile {
        let p = PartialFile::open(dir, &id(b), body.len() as u64).unwrap();
        p.write_at(0, body).unwrap();
        p
    }

    #[test]
    fn finalize_picks_free_names() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::write(dir.join("a.bin"), b"old").unwrap();

        let out = finished(dir, 10, b"one").finalize(dir, "a.bin").unwrap();
        assert_eq!(out, dir.join("a (1).bin"));
        let out = finished(dir, 11, b"two").finalize(dir, "a.bin").unwrap();
        assert_eq!(out, dir.join("a (2).bin"));
        assert_eq!(fs::read(dir.join("a.bin")).unwrap(), b"old");
        assert_eq!(fs::read(dir.join("a (1).bin")).unwrap(), b"one");
        assert_eq!(fs::read(dir.join("a (2).bin")).unwrap(), b"two");

        let out = finished(dir, 12, b"cfg").finalize(dir, ".cfg").unwrap();
        assert_eq!(out, dir.join(".cfg"));
        let out = finished(dir, 13, b"cfg2").finalize(dir, ".cfg").unwrap();
        assert_eq!(out, dir.join(".cfg (1)"));

        let out = finished(dir, 14, b"x").finalize(dir, "archive").unwrap();
        assert_eq!(out, dir.join("archive"));
        let out = finished(dir, 15, b"y").finalize(dir, "archive").unwrap();
        assert_eq!(out, dir.join("archive (1)"));

        // No partial files left behind, and the final file is not a link any more.
        let leftovers: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(RESERVED_PREFIX))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        assert_eq!(fs::metadata(dir.join("archive (1)")).unwrap().nlink(), 1);
    }

    #[test]
    fn finalize_does_not_follow_a_symlink_at_the_destination() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out");
        fs::create_dir(&dir).unwrap();
        let victim = tmp.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        symlink(&victim, dir.join("a.bin")).unwrap();
        let dangling = tmp.path().join("dangling-target");
        symlink(&dangling, dir.join("a (1).bin")).unwrap();

        let out = finished(&dir, 20, b"new").finalize(&dir, "a.bin").unwrap();
        assert_eq!(out, dir.join("a (2).bin"));
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert!(!dangling.exists());
        assert!(fs::symlink_metadata(dir.join("a.bin"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(out).unwrap(), b"new");
    }

    #[test]
    fn finalize_rejects_unsafe_names() {
        let tmp = tempfile::tempdir().unwrap();
        let p = finished(tmp.path(), 30, b"x");
        let part = p.path.clone();
        let err = p.finalize(tmp.path(), "../escape").unwrap_err();
        assert!(matches!(err, StorageError::UnsafeName { .. }), "{err}");
        assert!(part.exists(), "the partial file is kept for a retry");
        assert!(!tmp.path().parent().unwrap().join("escape").exists());
    }

    #[test]
    fn rename_noreplace_fallback_refuses_to_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        fs::write(&a, b"a").unwrap();
        fs::write(&b, b"b").unwrap();
        match rename_noreplace(&a, &b) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {} // fs without RENAME_NOREPLACE
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::AlreadyExists),
            Ok(()) => panic!("overwrote"),
        }
        assert_eq!(fs::read(&b).unwrap(), b"b");
        let c = tmp.path().join("c");
        if rename_noreplace(&a, &c).is_ok() {
            assert_eq!(fs::read(&c).unwrap(), b"a");
        }
    }
}
