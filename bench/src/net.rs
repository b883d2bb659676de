//! `trackshift-bench net`: for each link profile, the same random file from namespace A to namespace B with
//! TrackShift and the peers, each run on a freshly started link.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::link::{Link, LinkKind};
use crate::procs::{run, sync_file, wait_listening, Proc, Spec};
use crate::report::{Family, ProfileResult, Row, Status, MB};
use crate::util::{bytes_on_disk, fmt_size, sha256_file, slug, tail};

pub const ALL_PROFILES: &[&str] = &[
    "clean", "clean-1g", "fast", "wan", "lossy", "sat", "burst", "flaky",
];
pub const ALL_TOOLS: &[&str] = &[
    "trackshift-tcp",
    "trackshift-udp",
    "iperf3",
    "rsync",
    "scp",
    "uftp",
];

/// Fixed ports inside the fresh namespaces (non-standard, so nothing of the host's is confused with them).
const PORT_TRACKSHIFT: u16 = 17_000;
const PORT_IPERF: u16 = 15_201;
const PORT_RSYNC: u16 = 18_873;
const PORT_SSH: u16 = 12_222;
const PORT_UFTP: u16 = 11_044;
/// How long a server may take to listen.
const SERVER_READY: Duration = Duration::from_secs(20);
/// After a sender exits 0, how long the delivered file may take to appear (uftpd moves it from its temp dir).
const DELIVERY_SETTLE: Duration = Duration::from_secs(10);
/// A self-terminating receiver (`trackshift receive --once`, `iperf3 -s -1`) gets this long to exit.
const SERVER_EXIT_WAIT: Duration = Duration::from_secs(10);
/// After a self-terminating receiver exits, how long the sender gets to finish before the run is failed.
const RECEIVER_GONE_GRACE: Duration = Duration::from_secs(10);
/// UDP socket buffers for uftp/uftpd: enough for a long fat pipe (300 ms × 200 Mbit/s is 7.5 MB).
const UFTP_BUFFER: &str = "8388608";
/// uftp's fixed rate as a fraction of the link rate ("near the link rate": just under, so queues drain).
const UFTP_FIXED_FRACTION: f64 = 0.95;
/// The shared secret for TrackShift runs (fresh state dirs each run, so nothing persists).
pub(crate) const SECRET: &str = "trackshift-bench-secret";

/// Nominal per-direction rate (Mbit/s) and random loss of the named profiles (see crates/netlab).
pub fn nominal(profile: &str) -> Option<(f64, f64)> {
    match profile {
        "clean-1g" => Some((1000.0, 0.0)),
        "fast" => Some((1000.0, 0.005)),
        "wan" => Some((200.0, 0.01)),
        "lossy" => Some((100.0, 0.05)),
        "sat" => Some((50.0, 0.02)),
        "burst" => Some((100.0, 0.03)),
        "flaky" => Some((100.0, 0.01)),
        _ => None,
    }
}

#[derive(Debug, Clone)]
pub struct NetConfig {
    pub profiles: Vec<String>,
    pub size: u64,
    pub timeout: Duration,
    pub iperf_seconds: u64,
    pub tools: Vec<String>,
    pub ccs: Vec<String>,
    pub link: LinkKind,
    pub trackshift: Option<PathBuf>,
    pub work_dir: PathBuf,
    pub out_dir: PathBuf,
    /// `sync` the delivered file after the sender exits, inside the measured time (`local`: like cp + sync).
    pub sync_delivered: bool,
}

/// The order a profile's tools run in: iperf3 first (uftp's fixed rate may come from its rate).
const RUN_ORDER: &[&str] = &[
    "iperf3",
    "trackshift-tcp",
    "trackshift-udp",
    "rsync",
    "scp",
    "uftp",
];
/// Tools that run once per congestion control.
const TCP_TOOLS: &[&str] = &["iperf3", "trackshift-tcp", "rsync", "scp"];

struct SshFiles {
    key: PathBuf,
    host_key: PathBuf,
    authorized: PathBuf,
}

/// A receiver started in B and a sender started in A, bounded by the run's timeout.
struct Transfer {
    server: Spec,
    ready: Ready,
    /// The receiver exits by itself when the transfer ends (else it is a daemon we stop).
    server_exits: bool,
    client: Spec,
    delivered: PathBuf,
    count_dirs: Vec<PathBuf>,
}

enum Ready {
    Tcp(u16),
    Udp(u16),
    Line(&'static str),
}

struct RunDirs {
    dst: PathBuf,
    state_a: PathBuf,
    state_b: PathBuf,
    scratch: PathBuf,
    logs: PathBuf,
}

pub struct NetBench {
    cfg: NetConfig,
    src: PathBuf,
    src_sha: String,
    ssh: Option<SshFiles>,
    link_name: String,
    run_no: usize,
    cores: usize,
    sha256_mbs: f64,
}

impl NetBench {
    pub fn new(cfg: NetConfig) -> Result<NetBench> {
        std::fs::create_dir_all(&cfg.work_dir)?;
        let src = cfg.work_dir.join("payload.bin");
        eprintln!(
            "creating a {} random file at {}",
            fmt_size(cfg.size),
            src.display()
        );
        let src_sha = crate::util::make_random_file(&src, cfg.size, 0x7ac5)?;
        NetBench::for_file(cfg, src, src_sha)
    }

    /// A bench over an existing file of `cfg.size` bytes whose SHA-256 is `src_sha`.
    pub fn for_file(cfg: NetConfig, src: PathBuf, src_sha: String) -> Result<NetBench> {
        let ssh = if cfg.tools.iter().any(|t| t == "scp") {
            Some(make_ssh_keys(&cfg.work_dir.join("ssh"))?)
        } else {
            None
        };
        Ok(NetBench {
            link_name: format!("tsb{}", std::process::id() % 100_000),
            cfg,
            src,
            src_sha,
            ssh,
            run_no: 0,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            sha256_mbs: crate::util::sha256_core_mbs(),
        })
    }

    fn wants(&self, tool: &str) -> bool {
        self.cfg.tools.iter().any(|t| t == tool)
    }

    pub fn run_profile(&mut self, profile: &str) -> Result<ProfileResult> {
        let link_desc = match &self.cfg.link {
            LinkKind::Netlab { .. } => "trackshift-netlab".to_string(),
            LinkKind::Veth => "veth, no emulation".to_string(),
            LinkKind::Loopback => "loopback, no emulation".to_string(),
        };
        let nominal = match self.cfg.link {
            LinkKind::Netlab { .. } => nominal(profile),
            LinkKind::Veth | LinkKind::Loopback => None,
        };
        let mut rows: Vec<Row> = Vec::new();
        let ccs = self.cfg.ccs.clone();
        let tools: Vec<&str> = RUN_ORDER
            .iter()
            .copied()
            .filter(|t| self.wants(t))
            .collect();
        for tool in tools {
            let ccs: Vec<Option<&str>> = if TCP_TOOLS.contains(&tool) {
                ccs.iter().map(|c| Some(c.as_str())).collect()
            } else {
                vec![None]
            };
            for cc in ccs {
                rows.push(self.run_tool(profile, tool, cc)?);
            }
        }
        let iperf_best = rows
            .iter()
            .filter(|r| r.family == Family::Reference && r.status == Status::Ok)
            .filter_map(|r| r.goodput_mbs)
            .fold(None, |m: Option<f64>, g| Some(m.map_or(g, |m| m.max(g))));
        if self.wants("uftp") {
            let (kbps, why) = match (nominal, iperf_best) {
                (Some((rate, _)), _) => (
                    (rate * 1000.0 * UFTP_FIXED_FRACTION) as u64,
                    "of the link rate",
                ),
                (None, Some(mbs)) => (
                    (mbs * 8.0 * 1000.0 * UFTP_FIXED_FRACTION) as u64,
                    "of iperf3's rate",
                ),
                (None, None) => (500_000, "guess: no rate known"),
            };
            let label = format!("uftp (fixed {:.0} Mbit/s)", kbps as f64 / 1000.0);
            let mut row =
                self.with_link(profile, &label, "uftp", Family::Peer, None, |b, l, d, r| {
                    b.uftp(l, d, r, Some(kbps))
                })?;
            append_note(
                &mut row,
                &format!("{:.0}% {why}", UFTP_FIXED_FRACTION * 100.0),
            );
            rows.push(row);
        }

        let (capacity, source) = match (nominal, iperf_best) {
            (Some((rate, loss)), _) => (
                Some(rate * (1.0 - loss) * 1e6 / 8.0 / MB),
                format!("{rate} Mbit/s × (1 − {loss})"),
            ),
            (None, Some(best)) => (Some(best), "iperf3's best measured rate".to_string()),
            (None, None) => (
                None,
                "unknown: no nominal rate and no iperf3 run".to_string(),
            ),
        };
        let mut result = ProfileResult {
            profile: profile.to_string(),
            link: link_desc,
            rate_mbit: nominal.map(|n| n.0),
            loss: nominal.map(|n| n.1),
            capacity_mbs: capacity,
            capacity_source: source,
            best_peer_mbs: None,
            file_size: self.cfg.size,
            timeout_s: self.cfg.timeout.as_secs_f64(),
            rows,
            cores: self.cores,
            sha256_mbs: self.sha256_mbs,
        };
        result.compute_ratios();
        Ok(result)
    }

    /// One run of `tool` (a name of [`ALL_TOOLS`]; uftp with its own congestion control) on a fresh link,
    /// under `cc` for the TCP tools.
    pub(crate) fn run_tool(&mut self, profile: &str, tool: &str, cc: Option<&str>) -> Result<Row> {
        let label = |name: &str| cc.map_or(name.to_string(), |cc| format!("{name} ({cc})"));
        match tool {
            "iperf3" => self.with_link(
                profile,
                &format!(
                    "iperf3 (TCP{})",
                    cc.map(|c| format!(" {c}")).unwrap_or_default()
                ),
                tool,
                Family::Reference,
                cc,
                |b, l, d, r| b.iperf3(l, d, r),
            ),
            "trackshift-tcp" => self.with_link(
                profile,
                &label("trackshift tcp"),
                tool,
                Family::Trackshift,
                cc,
                |b, l, d, r| b.trackshift(l, d, r, "tcp"),
            ),
            "trackshift-udp" => self.with_link(
                profile,
                "trackshift udp",
                tool,
                Family::Trackshift,
                None,
                |b, l, d, r| b.trackshift(l, d, r, "udp"),
            ),
            "rsync" => self.with_link(
                profile,
                &label("rsync daemon"),
                tool,
                Family::Peer,
                cc,
                |b, l, d, r| b.rsync(l, d, r),
            ),
            "scp" => self.with_link(
                profile,
                &label("scp aes128-gcm"),
                tool,
                Family::Peer,
                cc,
                |b, l, d, r| b.scp(l, d, r),
            ),
            "uftp" => self.with_link(
                profile,
                "uftp (tfmcc)",
                tool,
                Family::Peer,
                None,
                |b, l, d, r| b.uftp(l, d, r, None),
            ),
            other => bail!("unknown tool `{other}` (known: {})", ALL_TOOLS.join(", ")),
        }
    }

    /// One tool run on a fresh link: up, congestion control, run, tear down. A failure becomes a `failed`
    /// row; only an interruption stops the benchmark.
    #[allow(clippy::too_many_arguments)] // the run's coordinates, each a different thing; a struct would only name them again
    fn with_link(
        &mut self,
        profile: &str,
        label: &str,
        tool: &str,
        family: Family,
        cc: Option<&str>,
        f: impl FnOnce(&Self, &Link, &RunDirs, &mut Row) -> Result<()>,
    ) -> Result<Row> {
        self.run_no += 1;
        let run_name = format!("{:02}-{}", self.run_no, slug(label));
        let logs = self.cfg.out_dir.join("logs").join(profile).join(&run_name);
        let scratch = self.cfg.work_dir.join("runs").join(&run_name);
        let dirs = RunDirs {
            dst: scratch.join("dst"),
            state_a: scratch.join("state-a"),
            state_b: scratch.join("state-b"),
            scratch: scratch.clone(),
            logs: logs.clone(),
        };
        for d in [&dirs.dst, &dirs.state_a, &dirs.state_b, &dirs.logs] {
            std::fs::create_dir_all(d)?;
        }
        let mut row = Row::new(label, tool, family, cc);
        row.file_bytes = self.cfg.size;
        row.logs = logs.display().to_string();
        eprintln!("[{profile}] {label} ...");
        let max_dur = self.cfg.timeout + Duration::from_secs(self.cfg.iperf_seconds + 120);
        let outcome = Link::up(&self.cfg.link, &self.link_name, profile, max_dur, &logs).and_then(
            |mut link| {
                let res = match cc {
                    Some(cc) => link.set_congestion_control(cc),
                    None => Ok(()),
                }
                .and_then(|_| f(self, &link, &dirs, &mut row));
                link.close();
                row.link_counters = link.counters.take();
                res
            },
        );
        let _ = std::fs::remove_dir_all(&scratch);
        if let Err(e) = outcome {
            crate::util::check_interrupted()?;
            row.status = Status::Failed;
            row.note = format!("{e:#}");
        }
        row.fill_cpu_per_gb();
        eprintln!(
            "[{profile}] {label}: {}{}{}",
            row.status.as_str(),
            row.goodput_mbs
                .map(|g| format!(", {g:.2} MB/s"))
                .unwrap_or_default(),
            if row.note.is_empty() {
                String::new()
            } else {
                format!(" ({})", row.note)
            }
        );
        Ok(row)
    }

    fn iperf3(&self, link: &Link, d: &RunDirs, row: &mut Row) -> Result<()> {
        let port = PORT_IPERF.to_string();
        let server = Spec::new(
            "iperf3-server",
            &["iperf3", "-s", "-1", "-p", &port, "-B", &link.addr_b],
        )
        .netns(&link.ns_b);
        let mut server = Proc::spawn(&server, &d.logs)?;
        wait_listening(&link.ns_b, PORT_IPERF, true, SERVER_READY, &mut server)?;
        let secs = self.cfg.iperf_seconds.to_string();
        let client = Spec::new(
            "iperf3-client",
            &[
                "iperf3",
                "-c",
                &link.addr_b,
                "-p",
                &port,
                "-t",
                &secs,
                "-J",
                "--connect-timeout",
                "10000",
            ],
        )
        .netns(&link.ns_a);
        let mut client = Proc::spawn(&client, &d.logs)?;
        let finished = client.wait_timeout(Duration::from_secs(self.cfg.iperf_seconds + 30))?;
        if finished.is_none() {
            client.stop();
            row.status = Status::TimedOut;
        }
        server.wait_timeout(SERVER_EXIT_WAIT)?;
        server.stop();
        row.sender = client.usage();
        row.receiver = server.usage();
        let out = client.stdout_text();
        let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        let recv = &v["end"]["sum_received"];
        match recv["bits_per_second"].as_f64() {
            Some(bps) if finished.is_some() => {
                row.status = Status::Ok;
                row.goodput_mbs = Some(bps / 8.0 / MB);
                row.bytes_arrived = recv["bytes"].as_u64().unwrap_or(0);
                row.seconds = recv["seconds"].as_f64().unwrap_or(0.0);
                row.file_bytes = 0;
                let retrans = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
                row.note = format!(
                    "{}s memory-to-memory, {retrans} retransmits",
                    self.cfg.iperf_seconds
                );
            }
            _ => {
                if row.status != Status::TimedOut {
                    row.status = Status::Failed;
                }
                row.note = v["error"]
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| tail(&client.stderr_log, 2));
            }
        }
        Ok(())
    }

    fn trackshift(&self, link: &Link, d: &RunDirs, row: &mut Row, protocol: &str) -> Result<()> {
        let Some(bin) = &self.cfg.trackshift else {
            row.status = Status::NotAvailable;
            row.note =
                "trackshift binary not built (cargo build --release -p trackshift-cli)".into();
            return Ok(());
        };
        let bin = bin.display().to_string();
        let listen = format!("{}:{PORT_TRACKSHIFT}", link.addr_b);
        let (dst, sb, sa) = (
            d.dst.display().to_string(),
            d.state_b.display().to_string(),
            d.state_a.display().to_string(),
        );
        let src = self.src.display().to_string();
        let t = Transfer {
            server: trackshift_receiver(&bin, &listen, &dst, &sb)
                .netns(&link.ns_b)
                .stdout_lines(),
            ready: Ready::Line("\"listening\""),
            server_exits: true,
            client: Spec::new(
                "trackshift-send",
                &[
                    &bin,
                    "send",
                    &src,
                    "--to",
                    &listen,
                    "--secret",
                    SECRET,
                    "--state-dir",
                    &sa,
                    "--protocol",
                    protocol,
                    "--json",
                ],
            )
            .netns(&link.ns_a),
            delivered: d.dst.join("payload.bin"),
            count_dirs: vec![d.dst.clone(), d.state_b.clone()],
        };
        let code = self.transfer(t, d, row)?;
        if code == Some(2) && row.status == Status::Failed {
            // Exit 2 is "bad usage": today that is `--protocol udp` answering "not yet available".
            row.status = Status::NotAvailable;
            row.note = tail(&d.logs.join("trackshift-send.stderr"), 1)
                .trim_start_matches("trackshift: error: ")
                .to_string();
            row.goodput_mbs = None;
            row.sender = None;
            row.receiver = None;
            row.seconds = 0.0;
        }
        // The receiver's reason when it failed the transfer.
        if let Some(summary) = last_summary(&d.logs.join("trackshift-receive.stdout")) {
            if summary["ok"] == false {
                if let Some(err) = summary["error"].as_str() {
                    append_note(row, &format!("receiver: {err}"));
                }
            }
        }
        // The summary's own figures, for the note (the table's goodput is wall time of the sender process).
        if let Some(summary) = last_summary(&d.logs.join("trackshift-send.stdout")) {
            let mut extra = String::new();
            if let Some(g) = summary["goodput_mbps"].as_f64() {
                let _ = write!(extra, "summary {g:.1} Mbit/s");
            }
            for k in ["loss_pct", "packets_retransmitted", "fec_recovered"] {
                if let Some(v) = summary.get(k).filter(|v| !v.is_null()) {
                    let _ = write!(extra, ", {k} {v}");
                }
            }
            if !extra.is_empty() {
                append_note(row, &extra);
            }
        }
        Ok(())
    }

    fn rsync(&self, link: &Link, d: &RunDirs, row: &mut Row) -> Result<()> {
        let cfg = d.scratch.join("rsyncd.conf");
        std::fs::write(
            &cfg,
            format!(
                "pid file = {}/rsyncd.pid\nuse chroot = no\nuid = root\ngid = root\n\n[bench]\n  path = {}\n  read only = no\n",
                d.scratch.display(),
                d.dst.display()
            ),
        )?;
        let port = PORT_RSYNC.to_string();
        let t = Transfer {
            server: Spec::new(
                "rsyncd",
                &[
                    "rsync",
                    "--daemon",
                    "--no-detach",
                    &format!("--config={}", cfg.display()),
                    &format!("--port={port}"),
                    &format!("--address={}", link.addr_b),
                    &format!("--log-file={}", d.logs.join("rsyncd.log").display()),
                ],
            )
            .netns(&link.ns_b),
            ready: Ready::Tcp(PORT_RSYNC),
            server_exits: false,
            client: Spec::new(
                "rsync",
                &[
                    "rsync",
                    "-a",
                    &self.src.display().to_string(),
                    &format!("rsync://{}:{port}/bench/", link.addr_b),
                ],
            )
            .netns(&link.ns_a),
            delivered: d.dst.join("payload.bin"),
            count_dirs: vec![d.dst.clone()],
        };
        self.transfer(t, d, row)?;
        Ok(())
    }

    fn scp(&self, link: &Link, d: &RunDirs, row: &mut Row) -> Result<()> {
        let ssh = self.ssh.as_ref().context("ssh keys were not generated")?;
        let cfg = d.scratch.join("sshd_config");
        std::fs::write(
            &cfg,
            format!(
                "Port {PORT_SSH}\nListenAddress {}\nHostKey {}\nPidFile {}/sshd.pid\nAuthorizedKeysFile {}\n\
                 PermitRootLogin yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 StrictModes no\nSubsystem sftp internal-sftp\nLogLevel ERROR\n",
                link.addr_b,
                ssh.host_key.display(),
                d.scratch.display(),
                ssh.authorized.display()
            ),
        )?;
        // sshd refuses to start without its privilege separation directory.
        std::fs::create_dir_all("/run/sshd")?;
        let port = PORT_SSH.to_string();
        let t = Transfer {
            server: Spec::new(
                "sshd",
                &[
                    "/usr/sbin/sshd",
                    "-D",
                    "-e",
                    "-f",
                    &cfg.display().to_string(),
                ],
            )
            .netns(&link.ns_b),
            ready: Ready::Tcp(PORT_SSH),
            server_exits: false,
            client: Spec::new(
                "scp",
                &[
                    "scp",
                    "-q",
                    "-F",
                    "/dev/null",
                    "-i",
                    &ssh.key.display().to_string(),
                    "-P",
                    &port,
                    "-c",
                    "aes128-gcm@openssh.com",
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "LogLevel=ERROR",
                    &self.src.display().to_string(),
                    &format!("root@{}:{}/", link.addr_b, d.dst.display()),
                ],
            )
            .netns(&link.ns_a),
            delivered: d.dst.join("payload.bin"),
            count_dirs: vec![d.dst.clone()],
        };
        self.transfer(t, d, row)?;
        Ok(())
    }

    /// uftp in unicast mode; `fixed_kbps: None` uses its TFMCC congestion control.
    fn uftp(&self, link: &Link, d: &RunDirs, row: &mut Row, fixed_kbps: Option<u64>) -> Result<()> {
        let tmp = d.scratch.join("uftpd-tmp");
        std::fs::create_dir_all(&tmp)?;
        let port = PORT_UFTP.to_string();
        let mut client: Vec<String> = [
            "uftp",
            "-M",
            &link.addr_b,
            "-p",
            &port,
            "-Y",
            "none",
            "-B",
            UFTP_BUFFER,
            "-x",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        match fixed_kbps {
            None => client.extend(["-C".into(), "tfmcc".into()]),
            Some(k) => client.extend(["-C".into(), "none".into(), "-R".into(), k.to_string()]),
        }
        client.push(self.src.display().to_string());
        let t = Transfer {
            server: Spec::new(
                "uftpd",
                &[
                    "uftpd",
                    "-d",
                    "-p",
                    &port,
                    "-D",
                    &d.dst.display().to_string(),
                    "-T",
                    &tmp.display().to_string(),
                    "-B",
                    UFTP_BUFFER,
                    "-x",
                    "1",
                ],
            )
            .netns(&link.ns_b),
            ready: Ready::Udp(PORT_UFTP),
            server_exits: false,
            client: Spec::new("uftp", &client).netns(&link.ns_a),
            delivered: d.dst.join("payload.bin"),
            count_dirs: vec![d.dst.clone(), tmp],
        };
        self.transfer(t, d, row)?;
        Ok(())
    }

    /// Starts the receiver, waits until it is ready, runs the sender within the timeout, verifies the
    /// delivered file and fills the row. Returns the sender's exit code.
    fn transfer(&self, t: Transfer, d: &RunDirs, row: &mut Row) -> Result<Option<i32>> {
        let ns_b = t.server.netns.clone().unwrap_or_default();
        let mut server = Proc::spawn(&t.server, &d.logs)?;
        match t.ready {
            Ready::Tcp(p) => wait_listening(&ns_b, p, true, SERVER_READY, &mut server)?,
            Ready::Udp(p) => wait_listening(&ns_b, p, false, SERVER_READY, &mut server)?,
            Ready::Line(pat) => {
                server.wait_line(SERVER_READY, |l| l.contains(pat))?;
            }
        }
        let count_dirs: Vec<&Path> = t.count_dirs.iter().map(PathBuf::as_path).collect();
        let arrived = || bytes_on_disk(&count_dirs);
        let mut client = Proc::spawn(&t.client, &d.logs)?;
        let deadline = Instant::now() + self.cfg.timeout;
        let mut receiver_gone: Option<Instant> = None;
        let status = loop {
            if let Some(st) = client.wait_timeout(Duration::from_millis(200))? {
                break Some(st);
            }
            if Instant::now() >= deadline {
                break None;
            }
            // A receiver that exits on its own (`--once`) while the sender still runs has given up on the
            // transfer; the sender would only retry against a closed port until the timeout.
            if t.server_exits && receiver_gone.is_none() && server.try_status()?.is_some() {
                receiver_gone = Some(Instant::now());
            }
            if receiver_gone.is_some_and(|at| at.elapsed() >= RECEIVER_GONE_GRACE) {
                // Count before stopping: a receiver may delete its partial file when the sender vanishes
                // (rsync does).
                row.bytes_arrived = arrived();
                row.seconds = client.elapsed();
                client.stop();
                row.status = Status::Failed;
                row.note = format!(
                    "receiver exited mid-transfer: {}",
                    tail(&server.stderr_log, 1)
                );
                row.sender = client.usage();
                row.receiver = server.usage();
                return Ok(None);
            }
        };
        let code = status.and_then(|s| s.code());
        match status {
            None => {
                // Count before stopping: a receiver may delete its partial file when the sender vanishes
                // (rsync does).
                row.bytes_arrived = arrived();
                row.seconds = client.elapsed();
                client.stop();
                row.status = Status::TimedOut;
                row.goodput_mbs = Some(row.bytes_arrived as f64 / row.seconds / MB);
                row.note = format!(
                    "{} of {} arrived",
                    fmt_size(row.bytes_arrived),
                    fmt_size(self.cfg.size)
                );
            }
            Some(st) => {
                row.seconds = client.elapsed();
                if st.success() {
                    if self.cfg.sync_delivered {
                        row.sync_seconds = sync_file(&t.delivered, &d.logs, self.cfg.timeout)?;
                        row.seconds += row.sync_seconds;
                    }
                    self.verify(&t.delivered, row)?;
                } else {
                    row.status = Status::Failed;
                    row.bytes_arrived = arrived();
                    row.note = format!("sender exit {st}: {}", tail(&client.stderr_log, 2));
                }
            }
        }
        if t.server_exits {
            server.wait_timeout(SERVER_EXIT_WAIT)?;
        } else {
            // Let a daemon reap its per-connection child so its CPU and RSS are counted.
            crate::util::sleep_checked(Duration::from_millis(500))?;
        }
        server.stop();
        row.sender = client.usage();
        row.receiver = server.usage();
        Ok(code)
    }

    fn verify(&self, delivered: &Path, row: &mut Row) -> Result<()> {
        // The file may appear a moment after the sender exits (uftpd moves it out of its temp dir).
        let deadline = std::time::Instant::now() + DELIVERY_SETTLE;
        while std::time::Instant::now() < deadline {
            if std::fs::metadata(delivered)
                .map(|m| m.len() == self.cfg.size)
                .unwrap_or(false)
            {
                break;
            }
            crate::util::sleep_checked(Duration::from_millis(100))?;
        }
        if !delivered.exists() {
            row.status = Status::Failed;
            row.note = format!("sender exited 0 but {} is missing", delivered.display());
            return Ok(());
        }
        let sha = sha256_file(delivered)?;
        row.bytes_arrived = std::fs::metadata(delivered)?.len();
        if sha == self.src_sha {
            row.sha256_ok = Some(true);
            row.status = Status::Ok;
            row.goodput_mbs = Some(self.cfg.size as f64 / row.seconds / MB);
        } else {
            row.sha256_ok = Some(false);
            row.status = Status::Failed;
            row.note = format!("SHA-256 mismatch ({} bytes delivered)", row.bytes_arrived);
        }
        Ok(())
    }
}

fn append_note(row: &mut Row, text: &str) {
    if !row.note.is_empty() {
        row.note.push_str("; ");
    }
    row.note.push_str(text);
}

/// The last `{"event":"summary"}` object of a `--json` log.
fn last_summary(path: &Path) -> Option<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .rfind(|v| v["event"] == "summary")
}

fn make_ssh_keys(dir: &Path) -> Result<SshFiles> {
    std::fs::create_dir_all(dir)?;
    let key = dir.join("client_ed25519");
    let host_key = dir.join("host_ed25519");
    for k in [&key, &host_key] {
        let ks = k.display().to_string();
        run(&[
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "trackshift-bench",
            "-f",
            &ks,
        ])?;
    }
    let authorized = dir.join("authorized_keys");
    std::fs::copy(dir.join("client_ed25519.pub"), &authorized)?;
    Ok(SshFiles {
        key,
        host_key,
        authorized,
    })
}

/// Runs every profile and writes the results folder; returns the rendered Markdown.
pub fn run_all(cfg: NetConfig, machine: Value) -> Result<String> {
    if cfg.profiles.is_empty() {
        bail!("no profiles selected");
    }
    std::fs::create_dir_all(&cfg.out_dir)?;
    std::fs::write(
        cfg.out_dir.join("machine.json"),
        serde_json::to_string_pretty(&machine)?,
    )?;
    let out_dir = cfg.out_dir.clone();
    let mut bench = NetBench::new(cfg.clone())?;
    let mut all = Vec::new();
    let mut md = format!(
        "# TrackShift network benchmark\n\nMachine: {} ({} cores, {} GiB, kernel {}). Link: {}. File {}.\n\n",
        machine["cpu_model"].as_str().unwrap_or("?"),
        machine["cores"],
        machine["mem_total_gib"],
        machine["kernel"].as_str().unwrap_or("?"),
        match cfg.link {
            LinkKind::Netlab { .. } => "trackshift-netlab emulator, restarted for every run",
            LinkKind::Veth => "plain veth pair (no emulation; debugging)",
            LinkKind::Loopback => "one namespace's loopback (no emulation)",
        },
        fmt_size(cfg.size)
    );
    for profile in &cfg.profiles {
        let res = bench.run_profile(profile)?;
        let table = res.markdown();
        println!("{table}");
        std::fs::write(out_dir.join(format!("{profile}.md")), &table)?;
        std::fs::write(
            out_dir.join(format!("{profile}.json")),
            serde_json::to_string_pretty(&res)?,
        )?;
        std::fs::write(out_dir.join(format!("{profile}.svg")), res.svg())?;
        md.push_str(&table);
        let _ = writeln!(md, "\n![{profile}]({profile}.svg)\n");
        all.push(res);
        // Keep partial results if a later profile is interrupted.
        std::fs::write(out_dir.join("results.md"), &md)?;
    }
    let json = json!({ "machine": machine, "size": cfg.size, "timeout_s": cfg.timeout.as_secs_f64(), "profiles": all });
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    std::fs::write(out_dir.join("results.md"), &md)?;
    Ok(md)
}

/// `trackshift receive` for one transfer (`--once`, `--json`), with the bench's secret.
pub(crate) fn trackshift_receiver(bin: &str, listen: &str, out_dir: &str, state_dir: &str) -> Spec {
    Spec::new(
        "trackshift-receive",
        &[
            bin,
            "receive",
            "--listen",
            listen,
            "--output-dir",
            out_dir,
            "--secret",
            SECRET,
            "--state-dir",
            state_dir,
            "--once",
            "--json",
        ],
    )
}
