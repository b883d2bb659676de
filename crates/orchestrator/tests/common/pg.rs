//! A real PostgreSQL server for the tests: `initdb` in a temporary directory, `postgres` on a free loopback
//! port with its unix socket in that directory, stopped when dropped (also when the test panics).
//!
//! PostgreSQL refuses to run as root, so as root the server runs as the `postgres` OS user if there is one,
//! else `nobody` (`Command::uid`/`gid`, so the child is the server itself), and the temporary directory is
//! handed to that user.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the server may take to accept connections after it started.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running PostgreSQL server; stopped on drop.
pub struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl Postgres {
    /// Starts a fresh cluster. Panics, saying what to install, if PostgreSQL's programs are missing.
    pub fn start() -> Self {
        let bin = find_bin_dir().unwrap_or_else(|| {
            panic!(
                "PostgreSQL is not installed: the API suite runs against a real server. Install Debian's \
                 `postgresql` package (apt-get install -y postgresql, or run scripts/deps.sh), which puts \
                 initdb and postgres in /usr/lib/postgresql/<version>/bin"
            )
        });
        let dir = tempfile::Builder::new()
            .prefix("trackshift-pg-")
            .tempdir()
            .expect("temp dir");
        let user = os_user();
        if let Some((uid, gid)) = user.as_ref().map(|u| ids(u)) {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the temp dir");
        }
        let data = dir.path().join("data");
        let out = as_user(&user, &bin.join("initdb"))
            .args([
                "-D",
                path(&data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("postgres.log")).expect("log file");
        if let Some((uid, gid)) = user.as_ref().map(|u| ids(u)) {
            std::os::unix::fs::chown(dir.path().join("postgres.log"), Some(uid), Some(gid))
                .expect("chown log");
        }
        let child = as_user(&user, &bin.join("postgres"))
            .args([
                "-D",
                path(&data),
                "-p",
                &port.to_string(),
                "-k",
                path(dir.path()),
            ])
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=50",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        let pg = Postgres { dir, port, child };
        pg.wait_ready();
        pg
    }

    /// The URL of its `postgres` database as the `postgres` user.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn wait_ready(&self) {
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < START_TIMEOUT,
                "postgres did not listen within {START_TIMEOUT:?}: {}",
                std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Listening comes a moment before accepting queries; one more breath avoids "starting up" errors.
        std::thread::sleep(Duration::from_millis(300));
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGTERM is a "smart" shutdown that waits for clients; SIGINT ("fast") does not. The server is our
        // child, so its pid is known.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The directory with initdb and postgres: on PATH, or Debian's /usr/lib/postgresql/<version>/bin.
fn find_bin_dir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    debian.sort();
    debian.reverse(); // the newest version first
    on_path
        .into_iter()
        .chain(debian)
        .find(|d| d.join("initdb").is_file() && d.join("postgres").is_file())
}

/// The OS user to run PostgreSQL as when we are root.
fn os_user() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return None;
    }
    let exists = |u: &str| {
        Command::new("id")
            .arg(u)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    Some(
        if exists("postgres") {
            "postgres"
        } else {
            "nobody"
        }
        .to_owned(),
    )
}

fn ids(user: &str) -> (u32, u32) {
    let id = |flag: &str| {
        let out = Command::new("id").args([flag, user]).output().expect("id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u32>()
            .expect("numeric id")
    };
    (id("-u"), id("-g"))
}

fn as_user(user: &Option<String>, program: &Path) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(program);
    if let Some(u) = user {
        let (uid, gid) = ids(u);
        cmd.uid(uid).gid(gid).current_dir("/");
    }
    cmd
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}
