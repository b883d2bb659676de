//! A receiver whose output dir it may not write is refused with exit 4 and one line saying permission denied,
//! for real although the tests run as root (whom mode bits do not stop): once as an unprivileged user on a dir
//! of root's (EACCES), once as root on an immutable dir (`chattr +i`: EPERM even for root). Not a read-only
//! mount: `e2e_refusals` has that one (EROFS).
//!
//! Needs root (CI always is), `chattr` (e2fsprogs) and a tmpfs that takes the immutable flag (Linux 6.0+).

#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is a failing test, with its message

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use trackshift_scenarios::*;

/// `nobody` on Debian; any uid without rights on root's dirs would do.
const NOBODY: u32 = 65534;

/// The receiver's refusal: exit 4 (local storage problem), one line on stderr naming the dir and saying
/// permission denied, nothing left in the dir.
fn assert_refused_for_permission(out: &Output, dir: &Path) {
    assert_eq!(out.code, 4, "{out:#?}");
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "expected one line on stderr: {out:#?}");
    let want = format!(
        "output dir {} is not writable: permission denied",
        dir.display()
    );
    assert!(lines[0].contains(&want), "{:?} lacks {want:?}", lines[0]);
    assert!(
        !lines[0].contains("read-only"),
        "{:?}: this is about permission, not a read-only mount",
        lines[0]
    );
    assert!(dir_names(dir).is_empty(), "{:?}", dir_names(dir));
}

/// `cfg`'s command with its program replaced by `program` (same arguments, same environment).
fn with_program(cfg: &ReceiverConfig, program: &Path) -> Command {
    let base = cfg.command();
    let mut cmd = Command::new(program);
    cmd.args(base.get_args());
    for (k, v) in base.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd
}

#[test]
fn an_unprivileged_receiver_on_a_dir_of_roots_exits_4() {
    let t = Scratch::new("perm-user");
    // `nobody` must reach everything it needs: the scratch root (0700 by default), a copy of the binary (the
    // build dir may be out of its reach), its own state dir. The output dir stays root's, 0755.
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin_copy: PathBuf = t.file("trackshift");
    std::fs::copy(bin(), &bin_copy).unwrap();
    std::fs::set_permissions(&bin_copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (out_dir, state) = (t.dir("out"), t.dir("state"));
    std::os::unix::fs::chown(&state, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&out_dir, std::fs::Permissions::from_mode(0o755)).unwrap();

    // As root the same dir is fine: the refusal below is the user's lack of permission, nothing else.
    let cfg = ReceiverConfig::new(&out_dir, &state);
    let mut cmd = with_program(&cfg, &bin_copy);
    cmd.uid(NOBODY).gid(NOBODY).current_dir("/");
    let out = run("receiver as nobody", cmd, SHORT_TIMEOUT);
    assert_refused_for_permission(&out, &out_dir);
}

/// Clears the immutable flag on drop, so the scratch dir can be removed even when the test fails.
struct Immutable(PathBuf);

impl Immutable {
    fn set(dir: &Path) -> Immutable {
        let out = run(
            "chattr +i",
            {
                let mut c = Command::new("chattr");
                c.arg("+i").arg(dir);
                c
            },
            SHORT_TIMEOUT,
        );
        assert_eq!(
            out.code,
            0,
            "chattr +i {} failed (needs root, e2fsprogs and Linux 6.0+ for tmpfs): {out:#?}",
            dir.display()
        );
        Immutable(dir.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
fn a_root_receiver_on_an_immutable_dir_exits_4() {
    let t = Scratch::new("perm-immutable");
    // On a tmpfs of its own, so the flag does not depend on the host's filesystem.
    let mnt = TmpfsMount::new(&t.file("fs"), "size=1M");
    let out_dir = mnt.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    std::fs::set_permissions(&out_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let state = t.dir("state");
    let _flag = Immutable::set(&out_dir);

    let out = run(
        "receiver as root",
        ReceiverConfig::new(&out_dir, &state).command(),
        SHORT_TIMEOUT,
    );
    assert_refused_for_permission(&out, &out_dir);
}
