//! `trackshift-bench soak`: one long transfer through the emulated link while a seeded schedule ([`plan`])
//! kills the sender and the receiver, cuts the link, moves the sender to a new address and fills the
//! receiver's disk; the link corrupts, duplicates and reorders datagrams throughout. At the end the file must be
//! byte-identical, the output dir hold nothing else, and both state dirs list the session completed; every
//! fault goes into a table with what it cost ([`report`]).
//!
//! How it runs: `trackshift-netlab up` (namespaces A and B, unique name per run), a tmpfs output dir for the
//! receiver in B, the receiver (`receive`, a daemon, restarted as a new process on the same state dir and port
//! after each kill), the sender in A (`send`, run again after each kill or exit). One loop every
//! [`TICK`] watches both processes, samples the receiver's `trackshift status --json` (its durable progress:
//! `bytes_done + bytes_partial`), carries out the schedule, and undoes each fault when its time is up. A fault
//! fires a planned gap after the transfer moved again following the previous one (or, for a chained kill,
//! after the previous fault), so each fault's cost is measured on its own: the seconds until the durable
//! progress passed what it was at the fault, and the bytes side A put on the link meanwhile beyond that
//! progress (the TUN device's counter in namespace A).
//!
//! Everything is undone on failure and on Ctrl+C: processes (their guards), the link (namespaces), the mount.

pub mod plan;
mod report;

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use serde::Serialize;
use serde_json::Value;

use crate::link::{Link, LinkKind};
use crate::procs::{run_in, Proc, Spec};
use crate::util::{check_interrupted, fmt_size, sha256_file, sleep_checked, tail};
use plan::{Fault, Path as DataPath, Plan, Trigger};

/// The receiver's port inside the fresh namespaces.
const PORT: u16 = 17_100;
const SECRET: &str = "trackshift-soak-secret";
/// The file's name, in the source dir and then in the output dir.
const FILE_NAME: &str = "payload.bin";
/// How often the loop looks at the processes, the timers and the schedule.
const TICK: Duration = Duration::from_millis(100);
/// How often the receiver's durable progress is sampled (`trackshift status`, a process each time).
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// A sender that exited by itself (not killed: a full disk, retries exhausted) is run again after this.
const RERUN_AFTER: Duration = Duration::from_secs(1);
/// A receiver that exited by itself (a defect: it should keep serving) is restarted after this.
const RESTART_AFTER: Duration = Duration::from_secs(1);
/// How long a SIGKILLed process may take to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long a receiver may take to say it listens.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one `trackshift status`/`list` may take.
const SHORT_TIMEOUT: Duration = Duration::from_secs(20);
/// The soak fails when the durable progress has not moved for this long (whatever the schedule is doing: the
/// longest planned fault is 12 s).
const STALL_LIMIT: Duration = Duration::from_secs(180);
/// The tmpfs output dir holds the file plus this much: room for the metadata of a partial file, and a full
/// disk always comes from the filler.
const TMPFS_MARGIN: u64 = 32 << 20;
/// The filler that fills the receiver's disk, in the output dir (removed before the end checks).
const FILLER: &str = "soak-filler";
/// The sender's rate cap leaves the transfer this share of the file to move during the schedule's gaps, so the
/// schedule always ends before the file does.
const SCHEDULE_SHARE: f64 = 0.6;
/// Lowest rate cap the soak derives (a tiny file over a long duration).
const MIN_RATE_BPS: f64 = 1e6;
/// After the sender's last run succeeded, how long the receiver's store may take to say completed.
const COMPLETION_SETTLE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub struct SoakConfig {
    pub seed: u64,
    pub kills: u32,
    pub size: u64,
    pub duration: Duration,
    pub chunk_size: String,
    /// `--max-rate` of every sender run; `None`: derived from the size and the duration.
    pub max_rate: Option<String>,
    /// The emulator's profile.
    pub profile: String,
    /// More `trackshift-netlab up` flags for the link (impairments); `--seed` is added.
    pub link_flags: Vec<String>,
    pub trackshift: PathBuf,
    pub netlab: PathBuf,
    /// Parent of the run's work dir (source file, state dirs, the tmpfs mount point).
    pub work_dir: PathBuf,
    /// Keep the work dir (state dirs and a copy of what the output dir held) for inspection.
    pub keep: bool,
    /// The emulator's run name (namespaces NAME-a, NAME-b).
    pub name: String,
    pub out_dir: PathBuf,
    /// Bound on the whole soak.
    pub timeout: Duration,
}

impl SoakConfig {
    /// The rate cap every sender run gets: as given, or [`SCHEDULE_SHARE`] of the file over the duration.
    pub fn rate(&self) -> String {
        self.max_rate.clone().unwrap_or_else(|| {
            let bps = (self.size as f64 * 8.0 * SCHEDULE_SHARE / self.duration.as_secs_f64())
                .max(MIN_RATE_BPS);
            format!("{}kbit", (bps / 1e3).round() as u64)
        })
    }
}

/// The receiver's durable progress, from `trackshift status --json`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Sample {
    done: u64,
    partial: u64,
    completed: bool,
}

impl Sample {
    fn progress(&self) -> u64 {
        self.done + self.partial
    }
}

/// Bytes through the TUN devices: what side A sent (`a_to_b`) and side B sent (`b_to_a`), headers included.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Wire {
    a_to_b: u64,
    b_to_a: u64,
}

/// One fault as it was carried out.
#[derive(Debug, Clone, Serialize)]
pub struct Injected {
    no: usize,
    fault: Fault,
    trigger: Trigger,
    /// Seconds since the transfer started.
    at_s: f64,
    /// The receiver's durable progress just before (verified bytes, and bytes of unfinished chunks).
    done_before: u64,
    partial_before: u64,
    detail: String,
    /// Seconds from the fault until the durable progress passed `done_before + partial_before`.
    stalled_s: Option<f64>,
    /// What side A put on the link over those seconds, and the progress made meanwhile.
    wire_a_to_b: Option<u64>,
    progress_made: Option<u64>,
    /// The next fault came before the transfer moved again (its cost includes this one's).
    superseded: bool,
    #[serde(skip)]
    wire_before: Wire,
    #[serde(skip)]
    at: Option<Instant>,
}

impl Injected {
    /// Bytes on the link that did not become progress: re-sent, or lost with a process or the link.
    fn resent(&self) -> Option<u64> {
        Some(self.wire_a_to_b?.saturating_sub(self.progress_made?))
    }
}

/// One `send` run.
#[derive(Debug, Clone, Serialize)]
struct SenderRun {
    no: u32,
    /// The path asked for (`udp`: no flag, the default).
    path: DataPath,
    /// The path it ran on (`start`, then `fallback`, then the summary).
    protocol: Option<String>,
    started_s: f64,
    ended_s: Option<f64>,
    /// `killed`, or `exit N`.
    end: String,
    retries: u32,
    ok: Option<bool>,
    error: Option<String>,
    bytes_on_wire: Option<u64>,
    connections: Option<u64>,
}

/// One receiver process.
#[derive(Debug, Clone, Serialize)]
struct ReceiverRun {
    no: u32,
    started_s: f64,
    ended_s: Option<f64>,
    end: String,
    /// Its `summary` and `interrupted` events (DCSP figures of the connections it served).
    transfers: Vec<Value>,
}

/// What the end checks saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EndState {
    pub source_sha256: String,
    pub delivered_sha256: Option<String>,
    /// Every name in the output dir after the transfer.
    pub output_dir: Vec<String>,
    pub sender_list: Value,
    pub receiver_list: Value,
    pub session_id: Option<String>,
    /// Each check that failed, in words (empty: the soak passed).
    pub failures: Vec<String>,
}

/// The whole soak's record: `soak.json`, and the source of `soak.md`.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    seed: u64,
    size: u64,
    chunk_size: String,
    rate: String,
    duration_s: f64,
    profile: String,
    link_flags: Vec<String>,
    plan: Plan,
    faults: Vec<Injected>,
    sender_runs: Vec<SenderRun>,
    receiver_runs: Vec<ReceiverRun>,
    /// Things that should not happen and fail the soak (a receiver that exits by itself, verified bytes lost).
    anomalies: Vec<String>,
    /// Times the durable progress went down between samples (an unfinished chunk's record shrank).
    progress_drops: Vec<String>,
    wire_end: Wire,
    link_counters: Option<Value>,
    seconds: f64,
    end: EndState,
    error: Option<String>,
    work_dir: Option<String>,
    machine: Value,
    command: String,
}

impl SoakReport {
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.end.failures.is_empty() && self.anomalies.is_empty()
    }
}

/// A tmpfs mounted on a directory; unmounted on drop (lazily if something still holds it).
#[derive(Debug)]
struct TmpfsMount {
    dir: PathBuf,
}

impl TmpfsMount {
    fn new(dir: &Path, bytes: u64) -> Result<TmpfsMount> {
        fs::create_dir_all(dir)?;
        let d = dir.display().to_string();
        crate::procs::run(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={bytes}"),
            "tmpfs",
            &d,
        ])
        .context("mounting the receiver's tmpfs output dir (needs root)")?;
        Ok(TmpfsMount {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let d = self.dir.display().to_string();
        if crate::procs::run(&["umount", &d]).is_err() {
            let _ = crate::procs::run(&["umount", "-l", &d]);
        }
    }
}

/// Runs a command with a bound; its stdout, or an error with its stderr.
fn run_bounded(argv: &[String], timeout: Duration) -> Result<(i32, String, String)> {
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", argv.join(" ")))?;
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            let out = child.wait_with_output()?;
            return Ok((
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{}` still running after {timeout:?}", argv.join(" "));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Fails with a clear message when something the soak needs is missing.
pub fn preflight() -> Result<()> {
    let uid = fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_default();
    if uid != "0" {
        bail!("the soak creates network namespaces and a tmpfs mount: run it as root");
    }
    if !Path::new("/dev/net/tun").exists() {
        bail!("/dev/net/tun is missing: the link emulator needs TUN (modprobe tun)");
    }
    for (cmd, pkg) in [
        ("ip", "iproute2"),
        ("iptables", "iptables"),
        ("mount", "util-linux"),
        ("umount", "util-linux"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {cmd}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            bail!("`{cmd}` is missing: apt-get install -y {pkg} (or run scripts/deps.sh)");
        }
    }
    Ok(())
}

fn parse_sample(stdout: &str) -> Option<Sample> {
    let v: Value = serde_json::from_str(stdout.trim()).ok()?;
    Some(Sample {
        done: v["bytes_done"].as_u64()?,
        partial: v["bytes_partial"].as_u64().unwrap_or(0),
        completed: v["state"] == "completed",
    })
}

struct Soak {
    cfg: SoakConfig,
    plan: Plan,
    logs: PathBuf,
    src: PathBuf,
    state_a: PathBuf,
    state_b: PathBuf,
    out: PathBuf,
    t0: Instant,
    rate: String,
    path: DataPath,
    sender: Option<(Proc, usize)>,
    sender_due: Option<Instant>,
    receiver: Option<(Proc, usize)>,
    receiver_due: Option<Instant>,
    cut_until: Option<Instant>,
    full_until: Option<Instant>,
    session: Option<String>,
    last: Sample,
    last_sampled: Option<Instant>,
    last_moved: Instant,
    /// When the transfer moved again after the latest fault (or first moved).
    recovered_at: Option<Instant>,
    report_faults: Vec<Injected>,
    sender_runs: Vec<SenderRun>,
    receiver_runs: Vec<ReceiverRun>,
    anomalies: Vec<String>,
    progress_drops: Vec<String>,
    finished: bool,
}

impl Soak {
    fn secs(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn trackshift(&self) -> String {
        self.cfg.trackshift.display().to_string()
    }

    fn wire(&self, link: &Link) -> Wire {
        let tx = |ns: &str| -> Option<u64> {
            let out = crate::procs::run(&["ip", "-n", ns, "-j", "-s", "link", "show"]).ok()?;
            let v: Value = serde_json::from_str(&out).ok()?;
            v.as_array()?
                .iter()
                .find(|d| d["ifname"] != "lo")
                .and_then(|d| d["stats64"]["tx"]["bytes"].as_u64())
        };
        Wire {
            a_to_b: tx(&link.ns_a).unwrap_or(0),
            b_to_a: tx(&link.ns_b).unwrap_or(0),
        }
    }

    fn start_receiver(&mut self, link: &Link) -> Result<()> {
        let no = self.receiver_runs.len() + 1;
        let bin = self.trackshift();
        let listen = format!("{}:{PORT}", link.addr_b);
        let (out, sb) = (
            self.out.display().to_string(),
            self.state_b.display().to_string(),
        );
        let spec = Spec::new(
            &format!("receive-{no:03}"),
            &[
                bin.as_str(),
                "receive",
                "--listen",
                &listen,
                "--output-dir",
                &out,
                "--secret",
                SECRET,
                "--state-dir",
                &sb,
                "--json",
            ],
        )
        .netns(&link.ns_b)
        .untimed()
        .stdout_lines();
        let mut p = Proc::spawn(&spec, &self.logs)?;
        p.wait_line(LISTEN_TIMEOUT, |l| l.contains("\"listening\""))
            .with_context(|| format!("receiver {no}"))?;
        self.receiver_runs.push(ReceiverRun {
            no: no as u32,
            started_s: self.secs(),
            ended_s: None,
            end: "running".into(),
            transfers: Vec::new(),
        });
        self.receiver = Some((p, no - 1));
        Ok(())
    }

    fn start_sender(&mut self, link: &Link) -> Result<()> {
        let no = self.sender_runs.len() + 1;
        let bin = self.trackshift();
        let to = format!("{}:{PORT}", link.addr_b);
        let (src, sa) = (
            self.src.display().to_string(),
            self.state_a.display().to_string(),
        );
        let mut argv: Vec<String> = [
            bin.as_str(),
            "send",
            &src,
            "--to",
            &to,
            "--secret",
            SECRET,
            "--state-dir",
            &sa,
            "--max-rate",
            &self.rate,
            "--chunk-size",
            &self.cfg.chunk_size,
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if self.path == DataPath::Tcp {
            argv.extend(["--protocol".to_string(), "tcp".to_string()]);
        }
        let spec = Spec::new(&format!("send-{no:03}"), &argv)
            .netns(&link.ns_a)
            .untimed()
            .stdout_lines();
        let p = Proc::spawn(&spec, &self.logs)?;
        self.sender_runs.push(SenderRun {
            no: no as u32,
            path: self.path,
            protocol: None,
            started_s: self.secs(),
            ended_s: None,
            end: "running".into(),
            retries: 0,
            ok: None,
            error: None,
            bytes_on_wire: None,
            connections: None,
        });
        self.sender = Some((p, no - 1));
        Ok(())
    }

    /// Reads what the sender printed; notes its end when it exited.
    fn poll_sender(&mut self) -> Result<()> {
        let Some((p, i)) = self.sender.as_mut() else {
            return Ok(());
        };
        let i = *i;
        let lines = p.drain_lines();
        let status = p.try_status()?;
        let run = &mut self.sender_runs[i];
        for l in lines {
            let Ok(v) = serde_json::from_str::<Value>(&l) else {
                continue;
            };
            match v["event"].as_str() {
                Some("start") => {
                    run.protocol = v["protocol"].as_str().map(String::from);
                    if self.session.is_none() {
                        self.session = v["session_id"].as_str().map(String::from);
                    }
                }
                Some("fallback") => run.protocol = v["protocol"].as_str().map(String::from),
                Some("retry") => run.retries += 1,
                Some("summary") => {
                    run.protocol = v["protocol"].as_str().map(String::from);
                    run.ok = v["ok"].as_bool();
                    run.error = v["error"].as_str().map(String::from);
                    run.bytes_on_wire = v["bytes_on_wire"].as_u64();
                    run.connections = v["connections"].as_u64();
                }
                _ => {}
            }
        }
        let Some(st) = status else {
            return Ok(());
        };
        let ended = self.t0.elapsed().as_secs_f64();
        let run = &mut self.sender_runs[i];
        run.ended_s = Some(ended);
        let code = st.code();
        run.end = match code {
            Some(c) => format!("exit {c}"),
            None => format!("{st}"),
        };
        let stderr = tail(&p.stderr_log, 2);
        self.sender = None;
        match code {
            Some(0) => self.finished = true,
            Some(2) | Some(3) => bail!(
                "sender run {} exited {} (bad usage or authentication: not a fault the soak injects): {stderr}",
                i + 1,
                code.unwrap_or(-1)
            ),
            _ => self.sender_due = Some(Instant::now() + RERUN_AFTER),
        }
        Ok(())
    }

    /// Reads what the receiver printed; a receiver that exited by itself is an anomaly (restarted).
    fn poll_receiver(&mut self) -> Result<()> {
        let Some((p, i)) = self.receiver.as_mut() else {
            return Ok(());
        };
        let i = *i;
        let (lines, status) = (p.drain_lines(), p.try_status()?);
        let stderr = status.map(|_| tail(&p.stderr_log, 2));
        self.note_receiver_lines(i, lines);
        if let (Some(st), Some(stderr)) = (status, stderr) {
            self.receiver = None;
            let ended = self.secs();
            let run = &mut self.receiver_runs[i];
            run.ended_s = Some(ended);
            run.end = format!("{st}");
            self.anomalies.push(format!(
                "receiver {} exited by itself at {ended:.1} s ({st}): {stderr}",
                i + 1
            ));
            self.receiver_due = Some(Instant::now() + RESTART_AFTER);
        }
        Ok(())
    }

    /// SIGKILLs the sender; `None` when it had exited by itself just before (its end is noted instead).
    fn kill_sender(&mut self) -> Result<Option<usize>> {
        // Its last lines first: it may have finished or exited a moment ago.
        self.poll_sender()?;
        let Some((_, i)) = kill(&mut self.sender) else {
            return Ok(None);
        };
        let ended = self.secs();
        let run = &mut self.sender_runs[i];
        (run.ended_s, run.end) = (Some(ended), "killed".into());
        Ok(Some(i))
    }

    /// SIGKILLs the receiver; `None` when it had exited by itself just before.
    fn kill_receiver(&mut self) -> Result<Option<usize>> {
        self.poll_receiver()?;
        let Some((mut p, i)) = kill(&mut self.receiver) else {
            return Ok(None);
        };
        self.note_receiver_lines(i, p.drain_lines());
        let ended = self.secs();
        let run = &mut self.receiver_runs[i];
        (run.ended_s, run.end) = (Some(ended), "killed".into());
        Ok(Some(i))
    }

    /// Keeps receiver `i`'s `summary` and `interrupted` events.
    fn note_receiver_lines(&mut self, i: usize, lines: Vec<String>) {
        for l in lines {
            if let Ok(v) = serde_json::from_str::<Value>(&l) {
                if v["event"] == "summary" || v["event"] == "interrupted" {
                    self.receiver_runs[i].transfers.push(v);
                }
            }
        }
    }

    /// `trackshift status <session> --json` on the receiver's state dir (`None` until it knows the session).
    fn sample(&mut self) -> Result<Option<Sample>> {
        let Some(id) = self.session.clone() else {
            return Ok(None);
        };
        let argv = [
            self.trackshift(),
            "status".into(),
            id,
            "--json".into(),
            "--state-dir".into(),
            self.state_b.display().to_string(),
        ];
        let (code, stdout, stderr) = run_bounded(&argv, SHORT_TIMEOUT)?;
        if code == 2 && stderr.contains("no session") {
            return Ok(None);
        }
        if code != 0 {
            bail!(
                "`trackshift status` on the receiver failed ({code}): {}",
                stderr.trim()
            );
        }
        let s = parse_sample(&stdout)
            .with_context(|| format!("`trackshift status --json` printed {stdout:?}"))?;
        let now = Instant::now();
        if s.done < self.last.done {
            self.anomalies.push(format!(
                "verified bytes went down at {:.1} s: {} -> {}",
                self.secs(),
                self.last.done,
                s.done
            ));
        } else if s.progress() < self.last.progress() {
            self.progress_drops.push(format!(
                "{:.1} s: {} -> {} (partial {} -> {})",
                self.secs(),
                self.last.progress(),
                s.progress(),
                self.last.partial,
                s.partial
            ));
        }
        if s.progress() != self.last.progress() {
            self.last_moved = now;
        }
        self.last = s;
        self.last_sampled = Some(now);
        Ok(Some(s))
    }

    /// Marks the latest open fault recovered once the durable progress passed where it stood at the fault.
    fn check_recovery(&mut self, link: &Link) {
        let s = self.last;
        if self.recovered_at.is_none() && self.report_faults.is_empty() && s.progress() > 0 {
            self.recovered_at = Some(Instant::now());
            return;
        }
        let Some(f) = self.report_faults.last() else {
            return;
        };
        if f.stalled_s.is_some() || f.superseded {
            return;
        }
        if s.progress() > f.done_before + f.partial_before || s.completed {
            let w = self.wire(link);
            let f = self.report_faults.last_mut().expect("checked above");
            let at = f.at.unwrap_or_else(Instant::now);
            f.stalled_s = Some(at.elapsed().as_secs_f64());
            f.wire_a_to_b = Some(w.a_to_b.saturating_sub(f.wire_before.a_to_b));
            f.progress_made = Some(
                s.progress()
                    .saturating_sub(f.done_before + f.partial_before),
            );
            self.recovered_at = Some(Instant::now());
        }
    }

    /// Whether the next planned fault is due, and its target ready.
    fn due(&self, k: usize) -> bool {
        let p = &self.plan.faults[k];
        let since = match p.trigger {
            Trigger::Recovery { gap } => self.recovered_at.map(|t| t + gap),
            Trigger::Previous { gap } => self
                .report_faults
                .last()
                .and_then(|f| f.at)
                .or(self.recovered_at)
                .map(|t| t + gap),
        };
        let Some(at) = since else {
            return false;
        };
        if Instant::now() < at {
            return false;
        }
        match p.fault {
            Fault::KillSender { .. } => self.sender.is_some(),
            Fault::KillReceiver { .. } => self.receiver.is_some(),
            Fault::LinkCut { .. } => self.cut_until.is_none(),
            // Mid-chunk: the receiver has recorded part of an unfinished chunk.
            Fault::DiskFull { .. } => self.full_until.is_none() && self.last.partial > 0,
            Fault::AddrChange => true,
        }
    }

    /// Carries out planned fault `k`; false when its target went away just before (it is tried again).
    fn inject(&mut self, k: usize, link: &mut Link) -> Result<bool> {
        let planned = self.plan.faults[k];
        let before = self.sample()?.unwrap_or(self.last);
        let wire_before = self.wire(link);
        let at = Instant::now();
        let now_s = self.secs();
        let detail = match planned.fault {
            Fault::KillSender { down, path } => {
                let Some(run) = self.kill_sender()? else {
                    return Ok(false);
                };
                let was = self.sender_runs[run].protocol.clone().unwrap_or("?".into());
                self.path = path;
                self.sender_due = Some(at + down);
                format!(
                    "run {} ({was}) killed; next run over {} after {:.1} s",
                    run + 1,
                    path.name(),
                    down.as_secs_f64()
                )
            }
            Fault::KillReceiver { down } => {
                let Some(run) = self.kill_receiver()? else {
                    return Ok(false);
                };
                self.receiver_due = Some(at + down);
                format!(
                    "receiver {} killed; new process after {:.1} s",
                    run + 1,
                    down.as_secs_f64()
                )
            }
            Fault::LinkCut { down } => {
                for ns in [&link.ns_a, &link.ns_b] {
                    run_in(
                        ns,
                        &[
                            "iptables", "-w", "5", "-I", "INPUT", "1", "!", "-i", "lo", "-j",
                            "DROP",
                        ],
                    )
                    .context("cutting the link")?;
                }
                self.cut_until = Some(at + down);
                format!(
                    "everything dropped on arrival for {:.1} s",
                    down.as_secs_f64()
                )
            }
            Fault::AddrChange => {
                let from = link.addr_a.clone();
                let to = link.addr_change()?;
                format!("side A {from} -> {to}")
            }
            Fault::DiskFull { down } => {
                let filled = fill_until_full(&self.out.join(FILLER))?;
                self.full_until = Some(at + down);
                format!(
                    "{} written to fill it, {} of an unfinished chunk on disk; freed after {:.1} s",
                    fmt_size(filled),
                    fmt_size(before.partial),
                    down.as_secs_f64()
                )
            }
        };
        if let Some(prev) = self.report_faults.last_mut() {
            if prev.stalled_s.is_none() {
                prev.superseded = true;
            }
        }
        // The next fault that waits for a recovery waits for this one's.
        self.recovered_at = None;
        eprintln!(
            "[soak {now_s:7.1} s] #{} {}: {detail}",
            k + 1,
            planned.fault.label()
        );
        self.report_faults.push(Injected {
            no: k + 1,
            fault: planned.fault,
            trigger: planned.trigger,
            at_s: now_s,
            done_before: before.done,
            partial_before: before.partial,
            detail,
            stalled_s: None,
            wire_a_to_b: None,
            progress_made: None,
            superseded: false,
            wire_before,
            at: Some(at),
        });
        Ok(true)
    }

    /// Undoes what is due: restarts, the end of a link cut or of a full disk.
    fn restore(&mut self, link: &Link) -> Result<()> {
        let now = Instant::now();
        if self.cut_until.is_some_and(|t| now >= t) {
            let mut dropped = Vec::new();
            for ns in [&link.ns_a, &link.ns_b] {
                let listing = run_in(
                    ns,
                    &["iptables", "-w", "5", "-L", "INPUT", "-v", "-x", "-n"],
                )
                .unwrap_or_default();
                if let Some((pkts, bytes)) = drop_counters(&listing) {
                    dropped.push(format!("{pkts} packets ({}) into {ns}", fmt_size(bytes)));
                }
                run_in(
                    ns,
                    &[
                        "iptables", "-w", "5", "-D", "INPUT", "!", "-i", "lo", "-j", "DROP",
                    ],
                )
                .context("ending the link cut")?;
            }
            self.cut_until = None;
            if let Some(f) = self
                .report_faults
                .iter_mut()
                .rev()
                .find(|f| matches!(f.fault, Fault::LinkCut { .. }))
            {
                f.detail
                    .push_str(&format!("; dropped {}", dropped.join(", ")));
            }
        }
        if self.full_until.is_some_and(|t| now >= t) {
            fs::remove_file(self.out.join(FILLER)).context("freeing the receiver's disk")?;
            self.full_until = None;
        }
        if self.receiver.is_none() && self.receiver_due.is_some_and(|t| now >= t) {
            self.receiver_due = None;
            self.start_receiver(link)?;
        }
        if self.sender.is_none() && !self.finished && self.sender_due.is_some_and(|t| now >= t) {
            self.sender_due = None;
            self.start_sender(link)?;
        }
        Ok(())
    }

    fn run(&mut self, link: &mut Link) -> Result<()> {
        self.start_receiver(link)?;
        self.start_sender(link)?;
        self.last_moved = Instant::now();
        let deadline = self.t0 + self.cfg.timeout;
        let mut next = 0;
        while !self.finished {
            check_interrupted()?;
            if Instant::now() >= deadline {
                bail!(
                    "the soak did not finish within {:?} ({} of {} faults injected)",
                    self.cfg.timeout,
                    self.report_faults.len(),
                    self.plan.faults.len()
                );
            }
            self.poll_sender()?;
            self.poll_receiver()?;
            self.restore(link)?;
            if self
                .last_sampled
                .is_none_or(|t| t.elapsed() >= SAMPLE_EVERY)
            {
                self.sample()?;
                self.check_recovery(link);
            }
            if self.last_moved.elapsed() >= STALL_LIMIT {
                bail!(
                    "the transfer has not moved for {} s (durable progress {} of {}; last fault: {})",
                    STALL_LIMIT.as_secs(),
                    fmt_size(self.last.progress()),
                    fmt_size(self.cfg.size),
                    self.report_faults
                        .last()
                        .map(|f| format!("#{} {} at {:.1} s", f.no, f.fault.label(), f.at_s))
                        .unwrap_or_else(|| "none".into())
                );
            }
            if next < self.plan.faults.len()
                && !self.finished
                && self.due(next)
                && self.inject(next, link)?
            {
                next += 1;
            }
            sleep_checked(TICK)?;
        }
        // The sender's last run succeeded: the receiver's store says completed too (its last sample).
        let settle = Instant::now() + COMPLETION_SETTLE;
        while !self.last.completed && Instant::now() < settle {
            self.sample()?;
            sleep_checked(SAMPLE_EVERY)?;
        }
        self.check_recovery(link);
        if next < self.plan.faults.len() {
            self.anomalies.push(format!(
                "the file completed before the schedule did: {} of {} faults injected (a longer --duration, a larger --size or a lower --max-rate)",
                next,
                self.plan.faults.len()
            ));
        }
        Ok(())
    }

    /// The end checks: file, output dir, both state dirs.
    fn end_state(&mut self, src_sha: &str) -> EndState {
        let mut e = EndState {
            source_sha256: src_sha.to_string(),
            session_id: self.session.clone(),
            ..EndState::default()
        };
        let delivered = self.out.join(FILE_NAME);
        match sha256_file(&delivered) {
            Ok(h) => {
                if h != src_sha {
                    e.failures.push(format!(
                        "{} differs from the source ({h})",
                        delivered.display()
                    ));
                }
                e.delivered_sha256 = Some(h);
            }
            Err(err) => e.failures.push(format!("no delivered file: {err:#}")),
        }
        e.output_dir = fs::read_dir(&self.out)
            .map(|rd| {
                let mut v: Vec<String> = rd
                    .flatten()
                    .map(|d| d.file_name().to_string_lossy().into_owned())
                    .collect();
                v.sort();
                v
            })
            .unwrap_or_default();
        if e.output_dir != [FILE_NAME] {
            e.failures.push(format!(
                "the output dir should hold only {FILE_NAME}: {:?}",
                e.output_dir
            ));
        }
        for (side, dir) in [("sender", &self.state_a), ("receiver", &self.state_b)] {
            let argv = [
                self.trackshift(),
                "list".into(),
                "--json".into(),
                "--state-dir".into(),
                dir.display().to_string(),
            ];
            let listed = run_bounded(&argv, SHORT_TIMEOUT)
                .ok()
                .and_then(|(code, out, _)| (code == 0).then_some(out))
                .and_then(|out| serde_json::from_str::<Value>(out.trim()).ok())
                .unwrap_or(Value::Null);
            let sessions = listed.as_array().cloned().unwrap_or_default();
            let ok = sessions.len() == 1
                && sessions[0]["state"] == "completed"
                && sessions[0]["id"].as_str() == self.session.as_deref();
            if !ok {
                e.failures.push(format!(
                    "`trackshift list --json` on the {side}'s state dir should show one session, {}, completed: {listed}",
                    self.session.as_deref().unwrap_or("?")
                ));
            }
            if side == "sender" {
                e.sender_list = listed;
            } else {
                e.receiver_list = listed;
            }
        }
        e
    }
}

/// SIGKILLs the process in `slot` (its whole group) and waits for it to be gone.
fn kill(slot: &mut Option<(Proc, usize)>) -> Option<(Proc, usize)> {
    let (mut p, i) = slot.take()?;
    p.signal_group(Signal::SIGKILL);
    let _ = p.wait_timeout(KILL_WAIT);
    Some((p, i))
}

/// `pkts bytes` of the first DROP rule in an `iptables -L -v -x -n` listing.
fn drop_counters(listing: &str) -> Option<(u64, u64)> {
    listing.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 3 && f[2] == "DROP").then(|| Some((f[0].parse().ok()?, f[1].parse().ok()?)))?
    })
}

/// Writes zeros to `path` until the filesystem is full; returns the bytes written.
fn fill_until_full(path: &Path) -> Result<u64> {
    let mut f = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let block = vec![0u8; 1 << 20];
    let mut written = 0u64;
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
            Err(e) => return Err(e).with_context(|| format!("filling {}", path.display())),
        }
    }
    Ok(written)
}

/// Runs the soak and writes `soak.md`, `soak.json` (and `machine.json`, `logs/`) into `cfg.out_dir`, also
/// when it fails. Ok(report) when it ran to the end (passed or not: see [`SoakReport::passed`]).
pub fn run_soak(cfg: SoakConfig, machine: Value) -> Result<SoakReport> {
    preflight()?;
    let plan = Plan::new(cfg.seed, cfg.kills, cfg.duration);
    fs::create_dir_all(&cfg.out_dir)?;
    fs::write(
        cfg.out_dir.join("machine.json"),
        serde_json::to_string_pretty(&machine)?,
    )?;
    let logs = cfg.out_dir.join("logs");
    fs::create_dir_all(&logs)?;
    fs::create_dir_all(&cfg.work_dir)?;
    let work = tempfile::Builder::new()
        .prefix("trackshift-soak-")
        .tempdir_in(&cfg.work_dir)?;
    let src = work.path().join("src").join(FILE_NAME);
    fs::create_dir_all(src.parent().context("source dir")?)?;
    eprintln!(
        "soak seed {}: {} faults ({} kills); creating a {} random file",
        cfg.seed,
        plan.faults.len(),
        plan.count(Fault::is_kill),
        fmt_size(cfg.size)
    );
    let src_sha = crate::util::make_random_file(&src, cfg.size, cfg.seed)?;
    let state_a = work.path().join("state-a");
    let state_b = work.path().join("state-b");
    for d in [&state_a, &state_b] {
        fs::create_dir_all(d)?;
    }
    let out = work.path().join("out");
    // Declared before the link and the processes, so it is dropped (unmounted) after they are gone.
    let mount = TmpfsMount::new(&out, cfg.size + TMPFS_MARGIN)?;
    let mut flags = cfg.link_flags.clone();
    flags.extend(["--seed".to_string(), cfg.seed.to_string()]);
    let max_link = cfg.timeout + Duration::from_secs(120);
    let mut link = Link::up_with(
        &LinkKind::Netlab {
            bin: cfg.netlab.clone(),
        },
        &cfg.name,
        &cfg.profile,
        &flags,
        max_link,
        &logs,
    )?;
    let rate = cfg.rate();
    let mut soak = Soak {
        plan: plan.clone(),
        logs,
        src,
        state_a,
        state_b,
        out: out.clone(),
        t0: Instant::now(),
        rate: rate.clone(),
        path: DataPath::Udp,
        sender: None,
        sender_due: None,
        receiver: None,
        receiver_due: None,
        cut_until: None,
        full_until: None,
        session: None,
        last: Sample::default(),
        last_sampled: None,
        last_moved: Instant::now(),
        recovered_at: None,
        report_faults: Vec::new(),
        sender_runs: Vec::new(),
        receiver_runs: Vec::new(),
        anomalies: Vec::new(),
        progress_drops: Vec::new(),
        finished: false,
        cfg: cfg.clone(),
    };
    let result = soak.run(&mut link);
    let seconds = soak.secs();
    let wire_end = soak.wire(&link);
    // Stop the receiver (SIGINT: it records what is under way) before looking at its state dir.
    if let Some((mut p, i)) = soak.receiver.take() {
        p.stop();
        let _ = p.drain_lines();
        soak.receiver_runs[i].ended_s = Some(seconds);
        soak.receiver_runs[i].end = "stopped at the end".into();
    }
    if let Some((mut p, _)) = soak.sender.take() {
        p.stop();
    }
    if soak.full_until.take().is_some() {
        let _ = fs::remove_file(out.join(FILLER));
    }
    let end = if result.is_ok() {
        soak.end_state(&src_sha)
    } else {
        EndState {
            source_sha256: src_sha.clone(),
            session_id: soak.session.clone(),
            failures: vec!["the soak stopped before the end checks".into()],
            ..EndState::default()
        }
    };
    let work_dir = if cfg.keep {
        let kept = work.path().join("delivered");
        fs::create_dir_all(&kept)?;
        for name in &end.output_dir {
            let _ = fs::copy(out.join(name), kept.join(name));
        }
        Some(work.path().display().to_string())
    } else {
        None
    };
    link.close();
    drop(mount);
    if cfg.keep {
        let _ = work.keep();
    }
    let report = SoakReport {
        seed: cfg.seed,
        size: cfg.size,
        chunk_size: cfg.chunk_size.clone(),
        rate,
        duration_s: cfg.duration.as_secs_f64(),
        profile: cfg.profile.clone(),
        link_flags: flags,
        plan,
        faults: soak.report_faults,
        sender_runs: soak.sender_runs,
        receiver_runs: soak.receiver_runs,
        anomalies: soak.anomalies,
        progress_drops: soak.progress_drops,
        wire_end,
        link_counters: link.counters.take(),
        seconds,
        end,
        error: result.as_ref().err().map(|e| format!("{e:#}")),
        work_dir,
        command: machine["command"].as_str().unwrap_or_default().to_string(),
        machine,
    };
    fs::write(
        cfg.out_dir.join("soak.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let md = report::markdown(&report);
    fs::write(cfg.out_dir.join("soak.md"), &md)?;
    println!("{md}");
    check_interrupted()?;
    Ok(report)
}
