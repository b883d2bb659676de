//! [`Lab`]: the test-support handle that runs `trackshift-netlab up` as a child process.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::config::LinkOverrides;
use crate::emulator::{self, LabCounters};
use crate::sys;

/// A lab's default lifetime: the emulator exits by itself after this, so a test that dies without stopping
/// it leaves no namespaces behind for long; longer than any one test's transfer.
const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(120);
/// Default wait for the emulator's ready line: creating two namespaces and TUN devices takes well under a
/// second, but a 2-core machine running several test binaries can be slow.
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Directories above the test executable where workspace binaries are looked for: `target/<profile>/deps/`
/// holds the tests, `target/<profile>/` the binaries.
const BINARY_SEARCH_DEPTH: usize = 2;
/// Characters of a test's name prefix kept in the run name: the pid and a counter follow, and the whole must
/// stay within the emulator's 40-character names.
const NAME_PREFIX_LEN: usize = 16;
/// How long the emulator has to move side a to its new address (a few `ip` commands).
const ADDR_CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopped emulator has to print its counters (it joins its forwarding threads first)...
const COUNTERS_TIMEOUT: Duration = Duration::from_secs(15);
/// ...and to exit before it is killed and its namespaces removed by `down`.
const EXIT_GRACE: Duration = Duration::from_secs(10);
/// How often a stopping emulator is checked for having exited.
const EXIT_POLL: Duration = Duration::from_millis(20);

/// How to start a [`Lab`]. `LabConfig::from("lossy")` is the `lossy` profile with defaults.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// A named profile (`clean`, `clean-1g`, `fast`, `wan`, `lossy`, `sat`, `burst`, `flaky`) or none (then only overrides).
    pub profile: Option<String>,
    /// Values on top of the profile.
    pub overrides: LinkOverrides,
    pub seed: u64,
    /// The emulator stops by itself after this (a safety bound; default 120 s).
    pub max_duration: Duration,
    /// Change side a's address this long after start.
    pub addr_change_at: Option<Duration>,
    /// Also create side c (`<name>-c`, 198.18.2.2), hung off side b by a plain veth pair, unreachable from a.
    pub side_c: bool,
    /// How long to wait for the ready line (default 20 s).
    pub ready_timeout: Duration,
    /// The `trackshift-netlab` binary; default: `$TRACKSHIFT_NETLAB_BIN`, else next to the test executable.
    pub binary: Option<PathBuf>,
}

impl Default for LabConfig {
    fn default() -> Self {
        Self {
            profile: None,
            overrides: LinkOverrides::default(),
            seed: 1,
            max_duration: DEFAULT_MAX_DURATION,
            addr_change_at: None,
            side_c: false,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            binary: None,
        }
    }
}

impl LabConfig {
    /// A profile with default settings.
    pub fn profile(name: &str) -> Self {
        Self {
            profile: Some(name.to_string()),
            ..Self::default()
        }
    }

    /// The `up` arguments after `--name`.
    pub fn up_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(p) = &self.profile {
            a.extend(["--profile".to_string(), p.clone()]);
        }
        a.extend(self.overrides.to_args());
        a.extend(["--seed".to_string(), self.seed.to_string()]);
        a.extend([
            "--max-duration".to_string(),
            format!("{}ms", self.max_duration.as_millis()),
        ]);
        if let Some(t) = self.addr_change_at {
            a.extend([
                "--addr-change-at".to_string(),
                format!("{}ms", t.as_millis()),
            ]);
        }
        if self.side_c {
            a.push("--side-c".to_string());
        }
        a
    }
}

impl From<&str> for LabConfig {
    fn from(profile: &str) -> Self {
        Self::profile(profile)
    }
}

impl From<&LabConfig> for LabConfig {
    fn from(c: &LabConfig) -> Self {
        c.clone()
    }
}

/// Finds a workspace binary built next to the running test: `current_exe()/../../<name>` (tests live in
/// `target/<profile>/deps/`), or `current_exe()/../<name>`. Panics with a hint to build it if absent.
pub fn locate_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut tried = Vec::new();
    for dir in exe.ancestors().skip(1).take(BINARY_SEARCH_DEPTH) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
        tried.push(p);
    }
    panic!(
        "binary `{name}` not found (looked at {tried:?}); build it first: `cargo build -p {}`",
        if name == "trackshift-netlab" {
            "trackshift-netlab"
        } else {
            name
        }
    );
}

fn netlab_binary(cfg: &LabConfig) -> PathBuf {
    if let Some(b) = &cfg.binary {
        return b.clone();
    }
    if let Some(b) = std::env::var_os("TRACKSHIFT_NETLAB_BIN") {
        return PathBuf::from(b);
    }
    locate_binary("trackshift-netlab")
}

/// A running lab: two namespaces joined by the emulated link. Dropping it stops the emulator
/// (SIGTERM, bounded wait, SIGKILL) and runs `trackshift-netlab down` as a fallback.
#[derive(Debug)]
pub struct Lab {
    child: Option<Child>,
    binary: PathBuf,
    name: String,
    ns_a: String,
    ns_b: String,
    /// Side c's namespace and address, when the lab has one.
    side_c: Option<(String, Ipv4Addr)>,
    addr_a: Ipv4Addr,
    addr_b: Ipv4Addr,
    lines: Mutex<Receiver<serde_json::Value>>, // Mutex only to make Lab Sync
    stderr: Arc<Mutex<String>>,
}

static RUNS: AtomicU32 = AtomicU32::new(0);

fn unique_name(prefix: &str) -> String {
    let clean: String = prefix
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(NAME_PREFIX_LEN)
        .collect();
    let clean = if clean.is_empty() {
        "lab".to_string()
    } else {
        clean
    };
    let n = RUNS.fetch_add(1, Ordering::SeqCst);
    format!("{clean}-{}-{n}", std::process::id())
}

impl Lab {
    /// Starts a lab whose names begin with `name_prefix` (a process id and counter are appended so
    /// parallel tests never collide) and waits for it to be ready.
    pub fn start(name_prefix: &str, config: impl Into<LabConfig>) -> Result<Lab> {
        let cfg: LabConfig = config.into();
        let binary = netlab_binary(&cfg);
        if !binary.is_file() {
            bail!(
                "{} not found: build it with `cargo build -p trackshift-netlab`",
                binary.display()
            );
        }
        let name = unique_name(name_prefix);
        let mut child = Command::new(&binary)
            .arg("up")
            .arg("--name")
            .arg(&name)
            .args(cfg.up_args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str::<serde_json::Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                    Err(_) => eprintln!("[netlab stdout] {line}"),
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let err_pipe = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let buf = stderr.clone();
        thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines().map_while(Result::ok) {
                eprintln!("[netlab] {line}");
                if let Ok(mut b) = buf.lock() {
                    b.push_str(&line);
                    b.push('\n');
                }
            }
        });
        let mut lab = Lab {
            child: Some(child),
            binary,
            name: name.clone(),
            ns_a: format!("{name}-a"),
            ns_b: format!("{name}-b"),
            side_c: None,
            addr_a: emulator::ADDR_A,
            addr_b: emulator::ADDR_B,
            lines: Mutex::new(rx),
            stderr,
        };
        let ready = lab.wait_event("ready", cfg.ready_timeout)?;
        let field = |k: &str| ready.get(k).and_then(|v| v.as_str()).map(str::to_string);
        lab.ns_a = field("ns_a").ok_or_else(|| anyhow!("ready line without ns_a: {ready}"))?;
        lab.ns_b = field("ns_b").ok_or_else(|| anyhow!("ready line without ns_b: {ready}"))?;
        lab.addr_a = field("addr_a")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad addr_a: {ready}"))?;
        lab.addr_b = field("addr_b")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad addr_b: {ready}"))?;
        if cfg.side_c {
            let ns = field("ns_c").ok_or_else(|| anyhow!("ready line without ns_c: {ready}"))?;
            let addr = field("addr_c")
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| anyhow!("bad addr_c: {ready}"))?;
            lab.side_c = Some((ns, addr));
        }
        Ok(lab)
    }

    fn wait_event(&mut self, event: &str, timeout: Duration) -> Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let got = match self.lines.get_mut() {
                Ok(rx) => rx.recv_timeout(left),
                Err(poisoned) => poisoned.into_inner().recv_timeout(left),
            };
            match got {
                Ok(v) if v.get("event").and_then(|e| e.as_str()) == Some(event) => return Ok(v),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "no `{event}` from trackshift-netlab within {timeout:?}; stderr:\n{}",
                        self.stderr_text()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().and_then(|c| c.wait().ok());
                    bail!(
                        "trackshift-netlab exited ({status:?}) before `{event}`; stderr:\n{}",
                        self.stderr_text()
                    )
                }
            }
        }
    }

    /// Everything the emulator wrote on stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The run name (namespaces are `<name>-a` and `<name>-b`).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ns_a(&self) -> &str {
        &self.ns_a
    }

    pub fn ns_b(&self) -> &str {
        &self.ns_b
    }

    /// Side a's current address (changes after [`Lab::addr_change`]).
    pub fn addr_a(&self) -> Ipv4Addr {
        self.addr_a
    }

    pub fn addr_b(&self) -> Ipv4Addr {
        self.addr_b
    }

    /// Side c's namespace (`<name>-c`), when the lab was started with [`LabConfig::side_c`].
    pub fn ns_c(&self) -> Option<&str> {
        self.side_c.as_ref().map(|(ns, _)| ns.as_str())
    }

    /// Side c's address (198.18.2.2), when the lab has side c.
    pub fn addr_c(&self) -> Option<Ipv4Addr> {
        self.side_c.as_ref().map(|(_, addr)| *addr)
    }

    /// Adds `addr` (a /32 on `lo`) in side b, so several programs there listen on addresses of their own; side a
    /// reaches it through the emulated link when it is in side b's /24 (198.18.1.0/24), side c through its veth.
    /// It goes with the namespace.
    pub fn add_addr_b(&self, addr: Ipv4Addr) -> Result<()> {
        let out = Command::new(emulator::ip_bin())
            .args([
                "-n",
                &self.ns_b,
                "addr",
                "add",
                &format!("{addr}/32"),
                "dev",
                "lo",
            ])
            .output()
            .context("running ip addr add")?;
        if !out.status.success() {
            bail!(
                "ip addr add {addr}/32 dev lo in {}: {}",
                self.ns_b,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// `ip netns exec <ns_a> <program>`: add arguments, then spawn/output as usual.
    pub fn command_in_a(&self, program: impl AsRef<OsStr>) -> Command {
        command_in(&self.ns_a, program)
    }

    /// `ip netns exec <ns_b> <program>`.
    pub fn command_in_b(&self, program: impl AsRef<OsStr>) -> Command {
        command_in(&self.ns_b, program)
    }

    /// Runs `f` on a thread inside namespace a (sockets it opens live there). The scenarios run the real
    /// binaries with [`Self::command_in_a`]; this is for netlab's own tests (`tests/lab.rs`), which put sockets
    /// on both ends of the link.
    pub fn run_in_a<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> Result<T> {
        in_netns(&self.ns_a, f)
    }

    /// Runs `f` on a thread inside namespace b (see [`Self::run_in_a`]).
    pub fn run_in_b<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> Result<T> {
        in_netns(&self.ns_b, f)
    }

    /// Moves side a to a new address (SIGUSR1) and waits until done; returns the new address.
    pub fn addr_change(&mut self) -> Result<Ipv4Addr> {
        let pid = self
            .child
            .as_ref()
            .map(|c| c.id())
            .ok_or_else(|| anyhow!("lab stopped"))?;
        sys::kill(pid, libc::SIGUSR1)?;
        self.wait_addr_change(ADDR_CHANGE_TIMEOUT)
    }

    /// Waits for an `addr_change` line (e.g. from `addr_change_at`); returns the new address.
    pub fn wait_addr_change(&mut self, timeout: Duration) -> Result<Ipv4Addr> {
        let v = self.wait_event("addr_change", timeout)?;
        self.addr_a = v
            .get("addr_a")
            .and_then(|a| a.as_str())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad addr_change line: {v}"))?;
        Ok(self.addr_a)
    }

    /// Stops the emulator (SIGTERM) and returns its counters. Namespaces are gone when this returns.
    pub fn stop(mut self) -> Result<LabCounters> {
        let pid = self
            .child
            .as_ref()
            .map(|c| c.id())
            .ok_or_else(|| anyhow!("lab already stopped"))?;
        let _ = sys::kill(pid, libc::SIGTERM);
        let v = self.wait_event("counters", COUNTERS_TIMEOUT);
        self.reap(EXIT_GRACE);
        let v = v?;
        serde_json::from_value(v.clone()).with_context(|| format!("parsing counters line {v}"))
    }

    /// Waits for the child to exit (SIGKILL after `grace`), then runs `down` if namespaces remain.
    fn reap(&mut self, grace: Duration) {
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + grace;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => thread::sleep(EXIT_POLL),
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        let left = [
            Some(self.ns_a.as_str()),
            Some(self.ns_b.as_str()),
            self.ns_c(),
        ];
        if left.into_iter().flatten().any(emulator::netns_exists) {
            let _ = Command::new(&self.binary)
                .args(["down", "--name", &self.name])
                .stdout(Stdio::null())
                .status();
            let _ = emulator::down(&self.name);
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            let _ = sys::kill(c.id(), libc::SIGTERM);
        }
        self.reap(EXIT_GRACE);
    }
}

/// `ip netns exec <ns> <program>`.
pub fn command_in(ns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new(emulator::ip_bin());
    c.args(["netns", "exec", ns]).arg(program);
    c
}

/// Runs `f` on a fresh thread that first enters network namespace `ns` (`/run/netns/<ns>`); sockets
/// created by `f` belong to that namespace and keep working after the thread ends.
pub fn in_netns<T: Send, F: FnOnce() -> T + Send>(ns: &str, f: F) -> Result<T> {
    thread::scope(|s| {
        s.spawn(|| -> Result<T> {
            sys::enter_netns(ns).with_context(|| format!("entering netns {ns}"))?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow!("thread in netns {ns} panicked"))?
    })
}
