//! Test support for the end-to-end scenarios in `tests/tests/e2e_*.rs`: they start the real `trackshift` binary
//! on loopback and check what arrives. The edge grid's orchestrator and relays are in [`grid`]; `netlab_*` scenarios
//! run the binary inside the lab's network namespaces ([`trackshift_in`]).
//!
//! Everything here is bounded in time: every wait on a child process has a deadline, and a child that misses it
//! is killed and the test fails with what the child printed. Every child is killed when its guard drops, so a
//! failing test leaves no process behind.
//!
//! The binary is the one `cargo build -p trackshift-cli` put next to the test executable
//! (`target/<profile>/trackshift`); the tests do not build it themselves.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test support: failing loudly is its job

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub mod grid;

/// The shared secret the scenarios use.
pub const SECRET: &str = "e2e-shared-secret";

/// 1 MiB.
pub const MIB: u64 = 1024 * 1024;

/// How long one whole transfer may take in a test (generous: all scenarios share two cores).
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);

/// How long a short command (`status`, `list`, a refused `send`) may take.
pub const SHORT_TIMEOUT: Duration = Duration::from_secs(60);

/// The `trackshift` binary built by `cargo build -p trackshift-cli`, found next to this test executable:
/// `…/target/debug/deps/e2e_x-hash` → `…/target/debug/trackshift`.
pub fn bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe
        .parent()
        .expect("test executable has a parent dir")
        .to_path_buf();
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir.pop();
    }
    let path = dir.join("trackshift");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p trackshift-cli` first",
        path.display()
    );
    path
}

/// A `trackshift` command with an environment that cannot leak into the test: no secret, state dir or log
/// filter from the caller's environment, and a private XDG state home.
pub fn trackshift<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(bin());
    cmd.args(args);
    sealed(cmd)
}

/// [`trackshift`] run inside network namespace `ns` (`ip netns exec NS …/trackshift ARGS`; `ip` execs the
/// binary, so the child's pid is the binary's), or as [`trackshift`] with `None`.
pub fn trackshift_in<I, S>(ns: Option<&str>, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let Some(ns) = ns else {
        return trackshift(args);
    };
    let mut cmd = trackshift_netlab::command_in(ns, bin());
    cmd.args(args);
    sealed(cmd)
}

/// The environment of every `trackshift` the tests run (see [`trackshift`]).
fn sealed(mut cmd: Command) -> Command {
    cmd.env_remove("TRACKSHIFT_SECRET")
        .env_remove("TRACKSHIFT_STATE_DIR")
        .env_remove("TRACKSHIFT_LOG")
        .env(
            "XDG_STATE_HOME",
            std::env::temp_dir().join("trackshift-e2e-xdg-state-unused"),
        );
    cmd
}

// ---------------------------------------------------------------------------------------------------------------
// Files, hashes, directories

/// A per-test scratch directory (removed on drop) with named subdirectories.
#[derive(Debug)]
pub struct Scratch {
    root: tempfile::TempDir,
}

impl Scratch {
    pub fn new(test: &str) -> Self {
        let root = tempfile::Builder::new()
            .prefix(&format!("trackshift-e2e-{test}-"))
            .tempdir()
            .expect("tempdir");
        Self { root }
    }

    pub fn path(&self) -> &Path {
        self.root.path()
    }

    /// `<root>/<name>`, created if missing.
    pub fn dir(&self, name: &str) -> PathBuf {
        let p = self.root.path().join(name);
        fs::create_dir_all(&p).expect("create scratch subdir");
        p
    }

    /// `<root>/<name>` (not created).
    pub fn file(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }
}

/// Writes `size` pseudo-random (incompressible) bytes derived from `seed` to `path`, 1 MiB at a time.
pub fn random_file(path: &Path, size: u64, seed: u64) -> PathBuf {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut f = std::io::BufWriter::with_capacity(
        MIB as usize,
        File::create(path).expect("create random file"),
    );
    let mut block = vec![0u8; MIB as usize];
    let mut left = size;
    while left > 0 {
        let n = left.min(MIB) as usize;
        rng.fill_bytes(&mut block[..n]);
        f.write_all(&block[..n]).expect("write random file");
        left -= n as u64;
    }
    f.flush().expect("flush random file");
    path.to_path_buf()
}

/// The SHA-256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> String {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    loop {
        let n = f.read(&mut buf).expect("read for hashing");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// Asserts that `received` exists and has the same SHA-256 as `source`; returns that hash.
pub fn assert_same_file(source: &Path, received: &Path) -> String {
    assert!(
        received.is_file(),
        "{} was not delivered",
        received.display()
    );
    let (a, b) = (sha256_file(source), sha256_file(received));
    assert_eq!(
        a,
        b,
        "{} differs from {}",
        received.display(),
        source.display()
    );
    a
}

/// The names in a directory, sorted.
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

/// The receiver's partial files (`.trackshift-*.part`) in an output dir.
pub fn part_files(dir: &Path) -> Vec<String> {
    dir_names(dir)
        .into_iter()
        .filter(|n| n.starts_with(".trackshift-") && n.ends_with(".part"))
        .collect()
}

/// A free TCP port on 127.0.0.1 (bound then released; a later bind by the receiver may in theory race).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local_addr").port()
}

/// Polls `f` every `every` until it returns `Some`, or panics after `timeout` with `what`.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(every);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Child processes

/// What a finished command printed and how it ended.
#[derive(Debug, Clone)]
pub struct Output {
    /// The exit code (`-1` when killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// The NDJSON events: every stdout line of a `send`/`receive`/`resume --json` (each checked to be one JSON
    /// object with an `event`); for other commands, the lines that happen to parse as JSON.
    pub events: Vec<Value>,
}

impl Output {
    /// The last event named `name`, if any.
    pub fn event(&self, name: &str) -> Option<&Value> {
        self.events.iter().rev().find(|e| e["event"] == name)
    }

    /// The `summary` event; panics with the output when there is none.
    pub fn summary(&self) -> &Value {
        self.event("summary")
            .unwrap_or_else(|| panic!("no summary event in {self:#?}"))
    }

    /// stderr without blank lines.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

/// A running `trackshift` process: stdout is read line by line on a thread (JSON lines become events), stderr is
/// collected on another. Killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    lines: mpsc::Receiver<Line>,
    stdout_seen: Vec<String>,
    stdout_closed: bool,
    stderr: Arc<Mutex<String>>,
    threads: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
    /// `send`, `receive` or `resume` with `--json`: every stdout line must be an event (see [`ndjson_event`]).
    ndjson: bool,
    /// The first stdout line that broke the NDJSON rule (reported by the next call that looks at the output).
    bad_line: Option<String>,
    /// We killed it (SIGKILL): a last line cut short by the kill is not the program's fault.
    killed: bool,
    /// A last stdout line without its newline (the process ended mid-line).
    unterminated: Option<String>,
}

/// One stdout line, and whether it ended with a newline.
struct Line {
    text: String,
    terminated: bool,
}

fn pump_stdout(out: ChildStdout, tx: mpsc::Sender<Line>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        loop {
            let mut buf = Vec::new();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let terminated = buf.last() == Some(&b'\n');
                    if terminated {
                        buf.pop();
                    }
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if tx.send(Line { text, terminated }).is_err() {
                        return;
                    }
                }
            }
        }
    })
}

/// One line of `--json` output as the contract has it: a single JSON object with a string `event`. The error
/// says what is wrong with the line.
pub fn ndjson_event(line: &str) -> Result<Value, String> {
    match serde_json::from_str::<Value>(line) {
        Ok(v) if v.is_object() && v["event"].is_string() => Ok(v),
        Ok(v) if v.is_object() => Err(format!(
            "a JSON object without a string \"event\": {line:?}"
        )),
        Ok(_) => Err(format!("JSON but not an object: {line:?}")),
        Err(e) => Err(format!("not JSON ({e}): {line:?}")),
    }
}

/// Whether a command prints NDJSON events on stdout: `send`, `receive` or `resume` with `--json` (`list --json`
/// prints one array and `status --json` one object, see the contract).
fn prints_ndjson(cmd: &Command) -> bool {
    let args: Vec<&OsStr> = cmd.get_args().collect();
    // `ip netns exec NS …/trackshift ARGS` (see [`trackshift_in`]): the command's own arguments follow the binary.
    let bin = bin();
    let args = match args.iter().position(|a| Path::new(a) == bin) {
        Some(at) => &args[at + 1..],
        None => &args[..],
    };
    let event_command = args.first().is_some_and(|a| {
        ["send", "receive", "resume"]
            .iter()
            .any(|c| OsStr::new(c) == *a)
    });
    event_command && args.iter().any(|a| *a == OsStr::new("--json"))
}

impl Proc {
    /// Starts `cmd` with stdout and stderr piped (stdin closed). `name` labels failure messages.
    pub fn spawn(name: &str, mut cmd: Command) -> Self {
        let ndjson = prints_ndjson(&cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let (tx, lines) = mpsc::channel();
        let mut threads = vec![pump_stdout(child.stdout.take().expect("piped stdout"), tx)];
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match err.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => sink
                        .lock()
                        .expect("stderr lock")
                        .push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
        }));
        Self {
            name: name.to_owned(),
            child,
            lines,
            stdout_seen: Vec::new(),
            stdout_closed: false,
            stderr,
            threads,
            status: None,
            ndjson,
            bad_line: None,
            killed: false,
            unterminated: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// Records a stdout line; a line that breaks the NDJSON rule is remembered for [`Self::check_ndjson`].
    fn record(&mut self, line: Line) -> Option<String> {
        if !line.terminated {
            // Only the last line can lack its newline; whether that is a fault depends on how the process ended.
            self.unterminated = Some(line.text);
            return None;
        }
        if self.ndjson && self.bad_line.is_none() {
            if let Err(e) = ndjson_event(&line.text) {
                self.bad_line = Some(e);
            }
        }
        self.stdout_seen.push(line.text.clone());
        Some(line.text)
    }

    fn take_line(&mut self, timeout: Duration) -> Option<String> {
        if self.stdout_closed {
            return None;
        }
        match self.lines.recv_timeout(timeout) {
            Ok(l) => self.record(l),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                self.stdout_closed = true;
                None
            }
        }
    }

    fn drain_lines(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            self.record(l);
        }
    }

    /// Fails the test (killing the process) if a stdout line under `--json` was not one JSON object with an
    /// `event`, or if the process ended in the middle of a line it was not killed in.
    fn check_ndjson(&mut self) {
        if !self.ndjson {
            return;
        }
        let finished = self.status.is_some() && self.stdout_closed;
        let bad =
            self.bad_line
                .take()
                .or_else(|| match (&self.unterminated, finished && !self.killed) {
                    (Some(tail), true) => {
                        Some(format!("a last line without its newline: {tail:?}"))
                    }
                    _ => None,
                });
        if let Some(bad) = bad {
            self.ndjson = false; // report once
            let name = self.name.clone();
            let out = self.kill();
            panic!(
                "{name}: stdout under --json must be one JSON object per line, each with an \"event\"; got {bad}\n\
                 --- stdout ---\n{}\n--- stderr ---\n{}",
                out.stdout, out.stderr
            );
        }
    }

    fn parsed_events(&self) -> Vec<Value> {
        self.stdout_seen
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect()
    }

    /// All events (JSON lines on stdout) printed so far.
    pub fn events(&mut self) -> Vec<Value> {
        self.drain_lines();
        self.check_ndjson();
        self.parsed_events()
    }

    /// Waits for the first event (already printed or still to come) for which `pred` holds. Panics (killing the
    /// process) after `timeout`, or when the process closes stdout without printing it.
    pub fn wait_event(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        if let Some(v) = self.events().into_iter().find(|v| pred(v)) {
            return v;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.fail(&format!("timed out after {timeout:?} waiting for {what}"));
            }
            if self.stdout_closed {
                self.fail(&format!("exited without printing {what}"));
            }
            let line = self.take_line(left.min(Duration::from_millis(200)));
            self.check_ndjson();
            if let Some(line) = line {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if pred(&v) {
                        return v;
                    }
                }
            }
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        if self.status.is_some() {
            return false;
        }
        match self.child.try_wait().expect("try_wait") {
            Some(st) => {
                self.status = Some(st);
                false
            }
            None => true,
        }
    }

    /// Waits for the process to exit by itself; kills it and panics after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        while self.is_running() {
            if Instant::now() >= deadline {
                self.fail(&format!("did not exit within {timeout:?}"));
            }
            // Keep the pipe flowing (the reader thread does; this only collects).
            self.drain_lines();
            self.check_ndjson();
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = self.finish();
        self.check_ndjson();
        out
    }

    /// SIGKILL, then reap. Returns what it printed.
    pub fn kill(&mut self) -> Output {
        if self.is_running() {
            self.killed = true;
            let _ = self.child.kill();
            self.status = Some(self.child.wait().expect("wait after kill"));
        }
        let out = self.finish();
        self.check_ndjson();
        out
    }

    /// SIGTERM (graceful stop), then wait up to `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> Output {
        if self.is_running() {
            let st = Command::new("kill")
                .args(["-TERM", &self.pid().to_string()])
                .status()
                .expect("run kill");
            assert!(st.success(), "kill -TERM {} failed", self.pid());
        }
        self.wait(timeout)
    }

    fn finish(&mut self) -> Output {
        let status = self.status.expect("finished process has a status");
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.drain_lines();
        self.stdout_closed = true;
        let mut stdout = self.stdout_seen.join("\n");
        if let Some(tail) = &self.unterminated {
            stdout.push('\n');
            stdout.push_str(tail);
        }
        Output {
            code: status.code().unwrap_or(-1),
            events: self.parsed_events(),
            stdout,
            stderr: self.stderr(),
        }
    }

    /// Kills the process and panics with everything it printed.
    pub fn fail(&mut self, why: &str) -> ! {
        let name = self.name.clone();
        let out = self.kill();
        panic!(
            "{name}: {why}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.stdout, out.stderr
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a command to completion within `timeout` (killed and failing the test otherwise).
pub fn run(name: &str, cmd: Command, timeout: Duration) -> Output {
    Proc::spawn(name, cmd).wait(timeout)
}

// ---------------------------------------------------------------------------------------------------------------
// Receiver

/// A `trackshift receive --json` process, killed on drop.
#[derive(Debug)]
pub struct Receiver {
    pub proc: Proc,
    /// `127.0.0.1:PORT` from the `listening` event.
    pub addr: String,
    pub fingerprint: String,
    pub output_dir: PathBuf,
    pub state_dir: PathBuf,
    /// The whole `listening` event.
    pub listening: Value,
}

/// How to start a receiver.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    pub listen: String,
    pub output_dir: PathBuf,
    pub state_dir: PathBuf,
    pub secret: Option<String>,
    pub extra: Vec<String>,
}

impl ReceiverConfig {
    /// On an ephemeral loopback port with [`SECRET`].
    pub fn new(output_dir: &Path, state_dir: &Path) -> Self {
        Self {
            listen: "127.0.0.1:0".into(),
            output_dir: output_dir.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            secret: Some(SECRET.into()),
            extra: Vec::new(),
        }
    }

    /// More flags for `trackshift receive`.
    pub fn extra(mut self, args: &[&str]) -> Self {
        self.extra.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    pub fn listen(mut self, addr: &str) -> Self {
        self.listen = addr.into();
        self
    }

    pub fn command(&self) -> Command {
        let mut cmd = trackshift(["receive", "--json", "--listen", &self.listen]);
        cmd.arg("--output-dir")
            .arg(&self.output_dir)
            .arg("--state-dir")
            .arg(&self.state_dir);
        if let Some(s) = &self.secret {
            cmd.args(["--secret", s]);
        }
        cmd.args(&self.extra);
        cmd
    }

    /// Starts the receiver and waits (bounded) for its `listening` line.
    pub fn start(&self) -> Receiver {
        let mut proc = Proc::spawn("receiver", self.command());
        let listening = proc.wait_event("the `listening` event", Duration::from_secs(60), |v| {
            v["event"] == "listening"
        });
        let addr = listening["addr"]
            .as_str()
            .expect("listening.addr")
            .to_owned();
        let fingerprint = listening["fingerprint"]
            .as_str()
            .expect("listening.fingerprint")
            .to_owned();
        assert!(
            fingerprint.starts_with("sha256:"),
            "fingerprint {fingerprint}"
        );
        Receiver {
            proc,
            addr,
            fingerprint,
            output_dir: self.output_dir.clone(),
            state_dir: self.state_dir.clone(),
            listening,
        }
    }
}

impl Receiver {
    /// A receiver on an ephemeral loopback port with [`SECRET`].
    pub fn start(output_dir: &Path, state_dir: &Path) -> Self {
        ReceiverConfig::new(output_dir, state_dir).start()
    }

    /// Waits for the receiver's `summary` event of `session_id`.
    pub fn wait_summary(&mut self, session_id: &str, timeout: Duration) -> Value {
        let id = session_id.to_owned();
        self.proc.wait_event(
            &format!("the receiver's summary of {id}"),
            timeout,
            move |v| v["event"] == "summary" && v["session_id"] == id.as_str(),
        )
    }

    /// Asserts the receiver process is still serving.
    pub fn assert_running(&mut self) {
        if !self.proc.is_running() {
            let out = self.proc.kill();
            panic!(
                "the receiver exited ({}) but should keep serving\n{}\n{}",
                out.code, out.stdout, out.stderr
            );
        }
    }

    /// `trackshift status <id>` on the receiver's state dir.
    pub fn status(&self, session_id: &str) -> Option<Value> {
        status(session_id, &self.state_dir)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Sender and the other commands

/// `trackshift send FILE --to ADDR --state-dir D --json [--secret S] EXTRA…`. Without `--protocol` in `extra`
/// this is the default path users run: DCSP over UDP (falling back to TCP only if UDP gets no answer).
pub fn send_command(
    file: &Path,
    to: &str,
    state_dir: &Path,
    secret: Option<&str>,
    extra: &[&str],
) -> Command {
    let mut cmd = trackshift(["send"]);
    cmd.arg(file)
        .args(["--to", to, "--json"])
        .arg("--state-dir")
        .arg(state_dir);
    if let Some(s) = secret {
        cmd.args(["--secret", s]);
    }
    cmd.args(extra);
    cmd
}

/// Runs a send to completion (bounded by [`TRANSFER_TIMEOUT`]): exit code, events (`summary()`), stderr.
pub fn send(file: &Path, to: &str, state_dir: &Path, extra: &[&str]) -> Output {
    run(
        "sender",
        send_command(file, to, state_dir, Some(SECRET), extra),
        TRANSFER_TIMEOUT,
    )
}

/// Starts a send in the background (for killing it mid-transfer).
pub fn spawn_send(file: &Path, to: &str, state_dir: &Path, extra: &[&str]) -> Proc {
    Proc::spawn(
        "sender",
        send_command(file, to, state_dir, Some(SECRET), extra),
    )
}

/// The one line `trackshift status` prints on stderr for a session its state dir does not know, with exit 2
/// (`crates/cli/src/sessions.rs`, `status`).
pub fn unknown_session_line(session_id: &str, state_dir: &Path) -> String {
    format!(
        "trackshift: error: no session {session_id} in {}: see `trackshift list`",
        state_dir.display()
    )
}

/// `trackshift status <id> --state-dir D --json`, or `None` when the state dir does not know the session (yet):
/// exit 2 with exactly [`unknown_session_line`] on stderr. Any other failure (a panic, a locked or broken store,
/// output that is not one JSON object) fails the test.
pub fn status(session_id: &str, state_dir: &Path) -> Option<Value> {
    let mut cmd = trackshift(["status", session_id, "--json"]);
    cmd.arg("--state-dir").arg(state_dir);
    let out = run("status", cmd, SHORT_TIMEOUT);
    if out.code == 2
        && out.stdout.is_empty()
        && out.stderr_lines() == [unknown_session_line(session_id, state_dir).as_str()]
    {
        return None;
    }
    assert_eq!(
        out.code, 0,
        "`trackshift status {session_id}` failed, and not because the session is unknown: {out:#?}"
    );
    let v: Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("status output {:?}: {e}", out.stdout));
    assert!(
        v.is_object() && out.stdout.trim().lines().count() == 1,
        "status --json prints one JSON object: {:?}",
        out.stdout
    );
    assert_eq!(v["id"], session_id, "status of another session: {v}");
    Some(v)
}

/// `chunks_done` from `trackshift status` (0 while the session is unknown).
pub fn chunks_done(session_id: &str, state_dir: &Path) -> u64 {
    status(session_id, state_dir)
        .and_then(|v| v["chunks_done"].as_u64())
        .unwrap_or(0)
}

/// `trackshift list --json --state-dir D`: the JSON array.
pub fn list(state_dir: &Path) -> Vec<Value> {
    let mut cmd = trackshift(["list", "--json"]);
    cmd.arg("--state-dir").arg(state_dir);
    let out = run("list", cmd, SHORT_TIMEOUT);
    assert_eq!(out.code, 0, "list failed: {out:#?}");
    match serde_json::from_str(out.stdout.trim()) {
        Ok(Value::Array(v)) => v,
        other => panic!(
            "list --json printed {:?}, not a JSON array ({other:?})",
            out.stdout
        ),
    }
}

/// The session id from a sender's `start` event (waiting for it, bounded).
pub fn session_id_of(sender: &mut Proc) -> String {
    let start = sender.wait_event("the sender's `start` event", Duration::from_secs(60), |v| {
        v["event"] == "start"
    });
    start["session_id"]
        .as_str()
        .expect("start.session_id")
        .to_owned()
}

/// A summary field as u64 (panics with the summary when absent).
pub fn field(summary: &Value, name: &str) -> u64 {
    summary[name]
        .as_u64()
        .unwrap_or_else(|| panic!("summary has no integer {name}: {summary}"))
}

/// Waits (bounded) until the state dir `rs` shows at least `n` verified chunks of `id`; returns the count seen.
pub fn wait_verified(id: &str, rs: &Path, n: u64) -> u64 {
    wait_until(
        &format!("{n} chunks of {id} verified"),
        TRANSFER_TIMEOUT,
        Duration::from_millis(50),
        || {
            let done = chunks_done(id, rs);
            (done >= n).then_some(done)
        },
    )
}

/// Asserts that a command printed exactly one line on stderr, mentioning `must_contain` (case-insensitive).
pub fn assert_one_line(out: &Output, must_contain: &str) {
    let lines = out.stderr_lines();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one line on stderr, got {:?}",
        out.stderr
    );
    assert!(
        lines[0]
            .to_lowercase()
            .contains(&must_contain.to_lowercase()),
        "stderr {:?} does not mention {must_contain:?}",
        lines[0]
    );
}

/// Whether an error line says the disk is full.
pub fn mentions_space(line: &str) -> bool {
    let s = line.to_lowercase();
    s.contains("space") || s.contains("full")
}

// ---------------------------------------------------------------------------------------------------------------
// Data paths

/// The data path a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// DCSP over UDP, the default: no `--protocol` flag at all (what users run). A scenario asserts that the
    /// summary says `udp`, so a silent fallback to TCP fails it.
    Udp,
    /// `--protocol tcp`.
    Tcp,
}

impl Protocol {
    /// As the summary's `protocol` field names it.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
        }
    }

    /// The sender flags that choose this path: none for the default (UDP), `--protocol tcp` for TCP.
    pub fn args(self) -> &'static [&'static str] {
        match self {
            Protocol::Udp => &[],
            Protocol::Tcp => &["--protocol", "tcp"],
        }
    }

    /// `args` followed by this path's flags.
    pub fn with(self, args: &[&'static str]) -> Vec<&'static str> {
        let mut v = args.to_vec();
        v.extend_from_slice(self.args());
        v
    }

    /// Asserts a summary (sender's or receiver's) ran on this path.
    pub fn assert_used(self, summary: &Value) {
        assert_eq!(
            summary["protocol"],
            self.name(),
            "the transfer did not run over {}: {summary}",
            self.name()
        );
    }
}

/// For each `fn name(p: Protocol)`, two tests: `name::udp` (the default path) and `name::tcp`.
#[macro_export]
macro_rules! over_both_protocols {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[test]
            fn udp() {
                super::$name($crate::Protocol::Udp)
            }
            #[test]
            fn tcp() {
                super::$name($crate::Protocol::Tcp)
            }
        }
    )+};
}

// ---------------------------------------------------------------------------------------------------------------
// A hand-made peer

/// Support for tests that speak the wire protocol to a real receiver by hand (`e2e_hostile`, `e2e_dcsp_peer`).
pub mod peer {
    use std::future::Future;
    use std::time::Duration;

    use trackshift_transport::{
        authenticate_client, authenticate_client_up_to, connect, exporter_of, ClientTls,
    };

    use crate::SECRET;

    /// How long one exchange with the receiver may take.
    pub const NET_TIMEOUT: Duration = Duration::from_secs(40);

    /// Runs `f` on `rt`, failing the test with `what` after [`NET_TIMEOUT`].
    pub fn block_on<T>(rt: &tokio::runtime::Runtime, what: &str, f: impl Future<Output = T>) -> T {
        rt.block_on(async { tokio::time::timeout(NET_TIMEOUT, f).await })
            .unwrap_or_else(|_| panic!("timed out after {NET_TIMEOUT:?}: {what}"))
    }

    /// TLS (trusting the receiver's certificate on first use) and the secret handshake with [`SECRET`], as
    /// `trackshift send` does.
    pub async fn authed(addr: &str) -> ClientTls {
        let (mut tls, _fp) = connect(addr, None, "known", &[])
            .await
            .expect("TLS connect");
        let ekm = exporter_of(tls.get_ref().1).expect("TLS exporter");
        authenticate_client(&mut tls, ekm, SECRET)
            .await
            .expect("authenticate");
        tls
    }

    /// [`authed`] as a sender of an older build, which speaks control protocol versions up to `max_version`
    /// (and the receiver must agree on that one).
    pub async fn authed_up_to(addr: &str, max_version: u16) -> ClientTls {
        let (mut tls, _fp) = connect(addr, None, "known", &[])
            .await
            .expect("TLS connect");
        let ekm = exporter_of(tls.get_ref().1).expect("TLS exporter");
        let agreed = authenticate_client_up_to(&mut tls, ekm, SECRET, max_version)
            .await
            .expect("authenticate");
        assert_eq!(agreed, max_version, "the version agreed");
        tls
    }
}

// ---------------------------------------------------------------------------------------------------------------
// tmpfs mounts (the tests run as root)

/// A tmpfs mounted on a directory; unmounted on drop (also when the test panics).
#[derive(Debug)]
pub struct TmpfsMount {
    dir: PathBuf,
}

fn mount_cmd(args: &[&str], dir: &Path) -> Output {
    let mut cmd = Command::new("mount");
    cmd.args(args).arg(dir);
    run("mount", cmd, SHORT_TIMEOUT)
}

impl TmpfsMount {
    /// `mount -t tmpfs -o <options> tmpfs <dir>` (e.g. `size=40M` or `size=1M,ro`).
    pub fn new(dir: &Path, options: &str) -> Self {
        fs::create_dir_all(dir).expect("mount point");
        let out = mount_cmd(&["-t", "tmpfs", "-o", options, "tmpfs"], dir);
        assert_eq!(out.code, 0, "mounting a tmpfs needs root: {out:#?}");
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// `mount -o remount,<options> <dir>` (e.g. `size=200M`).
    pub fn remount(&self, options: &str) {
        let out = mount_cmd(&["-o", &format!("remount,{options}")], &self.dir);
        assert_eq!(out.code, 0, "remount failed: {out:#?}");
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let st = Command::new("umount")
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status();
        if !matches!(st, Ok(s) if s.success()) {
            // Busy (a child still has a file open): detach it lazily so the temp dir can go.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Writes zeros to `path` until the filesystem is full (ENOSPC); returns the bytes written.
pub fn fill_until_full(path: &Path) -> u64 {
    let mut f = File::create(path).expect("create filler");
    let block = vec![0u8; 256 * 1024];
    let mut written = 0u64;
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // tmpfs reports ENOSPC on write; sync_all is a no-op there but keeps the helper honest elsewhere.
    let _ = f.sync_all();
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ndjson_line_is_one_object_with_a_string_event() {
        assert!(ndjson_event(r#"{"event":"summary","ok":true}"#).is_ok());
        for bad in [
            "",
            "sending 12 MiB",
            r#"{"ok":true}"#,
            r#"{"event":3}"#,
            r#"[{"event":"x"}]"#,
            r#"{"event":"a"} {"event":"b"}"#,
        ] {
            assert!(ndjson_event(bad).is_err(), "{bad:?} passed");
        }
    }

    #[test]
    fn only_send_receive_and_resume_with_json_print_events() {
        assert!(prints_ndjson(&trackshift(["send", "f", "--json"])));
        assert!(prints_ndjson(&trackshift(["receive", "--json"])));
        assert!(prints_ndjson(&trackshift(["resume", "id", "--json"])));
        assert!(!prints_ndjson(&trackshift(["send", "f"])));
        assert!(!prints_ndjson(&trackshift(["list", "--json"])));
        assert!(!prints_ndjson(&trackshift(["status", "id", "--json"])));
    }

    /// `echo send --json …` prints a line that is not JSON, as a `send --json` must never do.
    #[test]
    #[should_panic(expected = "must be one JSON object per line")]
    fn a_stray_line_under_json_fails_the_test() {
        let mut cmd = Command::new("echo");
        cmd.args(["send", "--json", "sending…"]);
        run("echo", cmd, SHORT_TIMEOUT);
    }

    #[test]
    fn status_of_an_unknown_session_is_none() {
        let t = Scratch::new("status-unknown");
        assert!(status("0123456789abcdef0123456789abcdef", &t.dir("st")).is_none());
    }

    /// Exit 2 with another message (here: the state dir is a file) is a failure, not "unknown".
    #[test]
    #[should_panic(expected = "not because the session is unknown")]
    fn status_failing_otherwise_fails_the_test() {
        let t = Scratch::new("status-broken");
        let not_a_dir = t.file("state");
        fs::write(&not_a_dir, b"").unwrap();
        status("0123456789abcdef0123456789abcdef", &not_a_dir);
    }
}
