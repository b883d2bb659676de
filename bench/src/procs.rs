//! Child processes: each runs in its own process group (optionally inside a network namespace and under
//! `/usr/bin/time`), is bounded in time, and is stopped with its whole group when dropped.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::Serialize;

use crate::util::check_interrupted;

/// GNU time format: wall seconds, user CPU seconds, system CPU seconds, peak RSS in KiB.
const TIME_FORMAT: &str = "%e %U %S %M";
const TIME_BIN: &str = "/usr/bin/time";
/// How long a stopped process gets to exit on SIGINT before its group is killed.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Resource use of one side, as `/usr/bin/time` measured it (the process and every child it reaped).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    pub wall_s: f64,
    pub cpu_s: f64,
    pub user_s: f64,
    pub sys_s: f64,
    pub max_rss_kib: u64,
}

impl Usage {
    pub fn parse_file(path: &Path) -> Option<Usage> {
        let text = std::fs::read_to_string(path).ok()?;
        // GNU time may write "Command exited with non-zero status N" or "Command terminated by signal" first.
        let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 4 {
            return None;
        }
        let user_s: f64 = f[1].parse().ok()?;
        let sys_s: f64 = f[2].parse().ok()?;
        Some(Usage {
            wall_s: f[0].parse().ok()?,
            cpu_s: user_s + sys_s,
            user_s,
            sys_s,
            max_rss_kib: f[3].parse().ok()?,
        })
    }

    pub fn rss_mib(&self) -> f64 {
        self.max_rss_kib as f64 / 1024.0
    }
}

/// What to start: argv, optional namespace, whether to measure with `/usr/bin/time`, whether to read stdout.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub argv: Vec<String>,
    pub netns: Option<String>,
    pub timed: bool,
    pub capture_stdout: bool,
    pub env: Vec<(String, String)>,
}

impl Spec {
    pub fn new<S: AsRef<str>>(name: &str, argv: &[S]) -> Spec {
        Spec {
            name: name.to_string(),
            argv: argv.iter().map(|s| s.as_ref().to_string()).collect(),
            netns: None,
            timed: true,
            capture_stdout: false,
            env: Vec::new(),
        }
    }
    pub fn netns(mut self, ns: &str) -> Spec {
        self.netns = Some(ns.to_string());
        self
    }
    pub fn untimed(mut self) -> Spec {
        self.timed = false;
        self
    }
    pub fn stdout_lines(mut self) -> Spec {
        self.capture_stdout = true;
        self
    }
}

/// A running child. Dropping it stops its process group (SIGINT, then SIGKILL).
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Child,
    status: Option<ExitStatus>,
    started: Instant,
    pub ended: Option<Instant>,
    time_file: Option<PathBuf>,
    pub stdout_log: PathBuf,
    pub stderr_log: PathBuf,
    lines: Option<Receiver<String>>,
}

impl Proc {
    pub fn spawn(spec: &Spec, log_dir: &Path) -> Result<Proc> {
        check_interrupted()?;
        let mut argv: Vec<String> = Vec::new();
        if let Some(ns) = &spec.netns {
            argv.extend(["ip", "netns", "exec", ns].map(String::from));
        }
        let time_file = log_dir.join(format!("{}.time", spec.name));
        if spec.timed {
            argv.extend([TIME_BIN, "-f", TIME_FORMAT, "-o"].map(String::from));
            argv.push(time_file.display().to_string());
        }
        argv.extend(spec.argv.iter().cloned());
        let stdout_log = log_dir.join(format!("{}.stdout", spec.name));
        let stderr_log = log_dir.join(format!("{}.stderr", spec.name));
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stderr(File::create(&stderr_log)?)
            .process_group(0);
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        if spec.capture_stdout {
            cmd.stdout(Stdio::piped());
        } else {
            cmd.stdout(File::create(&stdout_log)?);
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_dir.join("commands.log"))?;
        writeln!(f, "[{}] {}", spec.name, argv.join(" "))?;
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} ({})", spec.name, argv[0]))?;
        let lines = if spec.capture_stdout {
            let out = child.stdout.take().context("stdout pipe")?;
            let (tx, rx) = mpsc::channel();
            let log_path = stdout_log.clone();
            std::thread::spawn(move || {
                let mut log = File::create(log_path).ok();
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if let Some(l) = log.as_mut() {
                        let _ = writeln!(l, "{line}");
                    }
                    if tx.send(line).is_err() {
                        // Nobody listens any more; keep draining into the log so the child never blocks.
                        continue;
                    }
                }
            });
            Some(rx)
        } else {
            None
        };
        Ok(Proc {
            name: spec.name.clone(),
            child,
            status: None,
            started: Instant::now(),
            ended: None,
            time_file: spec.timed.then_some(time_file),
            stdout_log,
            stderr_log,
            lines,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Seconds from spawn to exit (or to now while running).
    pub fn elapsed(&self) -> f64 {
        self.ended
            .unwrap_or_else(Instant::now)
            .duration_since(self.started)
            .as_secs_f64()
    }

    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            if let Some(st) = self.child.try_wait()? {
                self.status = Some(st);
                self.ended = Some(Instant::now());
            }
        }
        Ok(self.status)
    }

    /// Waits until the process exits or `timeout` passes (`None`: still running).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_status()? {
                return Ok(Some(st));
            }
            check_interrupted()?;
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Next stdout line matching `pred`, or an error when the process exits or `timeout` passes first.
    pub fn wait_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            check_interrupted()?;
            let rx = self.lines.as_ref().context("stdout is not captured")?;
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) if pred(&line) => return Ok(line),
                Ok(_) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    bail!(
                        "{} exited before it was ready: {}",
                        self.name,
                        crate::util::tail(&self.stderr_log, 3)
                    )
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} not ready after {:?}: {}",
                    self.name,
                    timeout,
                    crate::util::tail(&self.stderr_log, 3)
                );
            }
        }
    }

    /// Lines printed so far and not yet consumed (non-blocking).
    pub fn drain_lines(&mut self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(rx) = &self.lines {
            while let Ok(l) = rx.try_recv() {
                v.push(l);
            }
        }
        v
    }

    /// Sends `sig` to the process itself (not its group).
    pub fn signal(&self, sig: Signal) -> Result<()> {
        nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), sig)
            .with_context(|| format!("sending {sig} to {}", self.name))
    }

    /// Sends `sig` to the whole process group.
    pub fn signal_group(&self, sig: Signal) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), sig);
    }

    /// Stops the process group: `first` (SIGINT by default: `/usr/bin/time` ignores it, so it still writes
    /// its figures after the measured command exits), then SIGKILL after a grace period.
    pub fn stop_with(&mut self, first: Signal) -> Option<ExitStatus> {
        if let Ok(Some(st)) = self.try_status() {
            // The leader exited; stray members of its group (if any) go too.
            self.signal_group(Signal::SIGKILL);
            return Some(st);
        }
        self.signal_group(first);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.try_status() {
                self.signal_group(Signal::SIGKILL);
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Still running: kill the group's members except the leader first, so that `/usr/bin/time` (the
        // leader of a timed process) sees its command die and still writes the figures.
        if self.time_file.is_some() {
            self.kill_members_except_leader();
            let deadline = Instant::now() + Duration::from_secs(1);
            while Instant::now() < deadline {
                if let Ok(Some(st)) = self.try_status() {
                    return Some(st);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.signal_group(Signal::SIGKILL);
        let st = self.child.wait().ok();
        self.status = st;
        self.ended.get_or_insert_with(Instant::now);
        st
    }

    /// SIGKILL to every process of our group but its leader (found by scanning `/proc/*/stat`).
    fn kill_members_except_leader(&self) {
        let leader = self.child.id() as i32;
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if pid == leader {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // Fields after the parenthesised command name: state, ppid, pgrp, ...
            let pgrp = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(2))
                .and_then(|f| f.parse::<i32>().ok());
            if pgrp == Some(leader) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }

    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.stop_with(Signal::SIGINT)
    }

    pub fn usage(&self) -> Option<Usage> {
        self.time_file.as_deref().and_then(Usage::parse_file)
    }

    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout_log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs a short command to completion (setup steps: `ip`, `sysctl`, `ssh-keygen`); error with its stderr.
/// Deliberately ignores an interruption: cleanup (namespace removal, sysctl restore) runs through it.
pub fn run(argv: &[&str]) -> Result<String> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", argv.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `sync FILE` (its data and metadata to disk), in the run's logs; returns the seconds it took.
pub fn sync_file(path: &Path, log_dir: &Path, timeout: Duration) -> Result<f64> {
    let spec = Spec::new("sync", &["sync", &path.display().to_string()]).untimed();
    let mut sync = Proc::spawn(&spec, log_dir)?;
    let st = sync.wait_timeout(timeout)?;
    anyhow::ensure!(
        st.is_some_and(|s| s.success()),
        "sync {} failed or timed out: {}",
        path.display(),
        crate::util::tail(&sync.stderr_log, 2)
    );
    Ok(sync.elapsed())
}

/// Like `run`, but inside a namespace.
pub fn run_in(ns: &str, argv: &[&str]) -> Result<String> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(argv);
    run(&full)
}

/// First line of a command's combined output, for version strings; never fails.
pub fn version_of(argv: &[&str]) -> String {
    match Command::new(argv[0]).args(&argv[1..]).output() {
        Ok(out) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            text.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string()
        }
        Err(e) => format!("not available ({e})"),
    }
}

/// Polls until something listens on `port` (TCP or UDP) inside `ns`.
pub fn wait_listening(
    ns: &str,
    port: u16,
    tcp: bool,
    timeout: Duration,
    p: &mut Proc,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let flags = if tcp { "-Hltn" } else { "-Hlun" };
    let filter = format!("sport = :{port}");
    loop {
        if let Some(st) = p.try_status()? {
            bail!(
                "{} exited ({st}) before listening: {}",
                p.name,
                crate::util::tail(&p.stderr_log, 3)
            );
        }
        let out = run_in(ns, &["ss", flags, &filter]).unwrap_or_default();
        if !out.trim().is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{} not listening on port {port} after {timeout:?}", p.name);
        }
        crate::util::sleep_checked(Duration::from_millis(100))?;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn parses_gnu_time_output_after_a_status_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(
            &p,
            "Command terminated by signal 2\n60.03 0.09 0.05 19104\n",
        )
        .unwrap();
        let u = Usage::parse_file(&p).unwrap();
        assert_eq!(u.max_rss_kib, 19104);
        assert!((u.cpu_s - 0.14).abs() < 1e-9);
        std::fs::write(&p, "garbage\n").unwrap();
        assert!(Usage::parse_file(&p).is_none());
    }
}
