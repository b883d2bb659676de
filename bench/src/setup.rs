//! Machine preparation: the peer tools from Debian's packages, the congestion controls namespaces may use,
//! the binaries under test, and the machine description saved beside the results.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::procs::{run, version_of};

/// (binary that must exist, Debian package that provides it).
pub const NET_TOOLS: &[(&str, &str)] = &[
    ("/usr/bin/time", "time"),
    ("/usr/bin/iperf3", "iperf3"),
    ("/usr/bin/rsync", "rsync"),
    ("/usr/sbin/sshd", "openssh-server"),
    ("/usr/bin/scp", "openssh-client"),
    ("/usr/bin/ssh-keygen", "openssh-client"),
    ("/usr/bin/uftp", "uftp"),
    ("/usr/bin/uftpd", "uftp"),
    ("/usr/bin/ss", "iproute2"),
];
pub const LOCAL_TOOLS: &[(&str, &str)] = &[
    ("/usr/bin/time", "time"),
    ("/usr/bin/rsync", "rsync"),
    ("/usr/sbin/sshd", "openssh-server"),
    ("/usr/bin/scp", "openssh-client"),
    ("/usr/bin/ssh-keygen", "openssh-client"),
    ("/usr/bin/ss", "iproute2"),
];

/// Installs the packages whose binaries are missing (`apt-get update` once, then `apt-get install -y`).
pub fn ensure_tools(tools: &[(&str, &str)], allow_install: bool) -> Result<()> {
    let mut missing: Vec<&str> = tools
        .iter()
        .filter(|(bin, _)| !Path::new(bin).exists())
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    let cmd = format!("apt-get install -y {}", missing.join(" "));
    if !allow_install {
        bail!("missing tools; install them with `{cmd}` (or drop --no-install)");
    }
    eprintln!("installing {} from Debian's packages", missing.join(" "));
    let apt = |args: &[&str]| -> Result<()> {
        let st = std::process::Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        if !st.success() {
            bail!("`apt-get {}` failed ({st})", args.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-q"])
        .and_then(|_| {
            let mut args = vec!["install", "-y", "-q"];
            args.extend(&missing);
            apt(&args)
        })
        .with_context(|| {
            format!(
                "could not install the peer tools; run `apt-get update && {cmd}` as root and retry"
            )
        })?;
    for (bin, pkg) in tools {
        if !Path::new(bin).exists() {
            bail!("{bin} still missing after installing {pkg}");
        }
    }
    Ok(())
}

/// Makes the congestion controls usable inside namespaces: a namespace may only select one listed in the
/// (global) `net.ipv4.tcp_allowed_congestion_control`. Restores the original list when dropped.
#[derive(Debug)]
pub struct CongestionControls {
    original: Option<String>,
}

const ALLOWED_CC: &str = "net.ipv4.tcp_allowed_congestion_control";
const AVAILABLE_CC: &str = "net.ipv4.tcp_available_congestion_control";

impl CongestionControls {
    pub fn allow(ccs: &[String]) -> Result<CongestionControls> {
        let allowed = run(&["sysctl", "-n", ALLOWED_CC])?.trim().to_string();
        let mut list: Vec<String> = allowed.split_whitespace().map(String::from).collect();
        let mut changed = false;
        for cc in ccs {
            if list.contains(cc) {
                continue;
            }
            let available = run(&["sysctl", "-n", AVAILABLE_CC])?;
            if !available.split_whitespace().any(|a| a == cc) {
                // Not built in: try the module (tcp_cubic, tcp_bbr).
                let _ = run(&["modprobe", &format!("tcp_{cc}")]);
                let available = run(&["sysctl", "-n", AVAILABLE_CC])?;
                if !available.split_whitespace().any(|a| a == cc) {
                    bail!(
                        "congestion control {cc} is not available on this kernel (have: {})",
                        available.trim()
                    );
                }
            }
            list.push(cc.clone());
            changed = true;
        }
        if changed {
            run(&[
                "sysctl",
                "-q",
                "-w",
                &format!("{ALLOWED_CC}={}", list.join(" ")),
            ])?;
        }
        Ok(CongestionControls {
            original: changed.then_some(allowed),
        })
    }
}

impl Drop for CongestionControls {
    fn drop(&mut self) {
        if let Some(orig) = &self.original {
            let _ = run(&["sysctl", "-q", "-w", &format!("{ALLOWED_CC}={orig}")]);
        }
    }
}

/// The workspace root (this crate lives in `<root>/bench`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A binary from `target/release` unless given explicitly.
pub fn find_binary(explicit: Option<&Path>, name: &str) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if p.exists() {
            return Ok(p.canonicalize()?);
        }
        bail!("{} does not exist", p.display());
    }
    let p = workspace_root().join("target/release").join(name);
    if p.exists() {
        return Ok(p);
    }
    bail!(
        "{} not found; build it with `cargo build --release -p trackshift-cli -p trackshift-netlab` \
         (or pass its path)",
        p.display()
    )
}

fn meminfo_total_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Peer tools whose versions `machine.json` records: `net` runs them all, `local` rsync and OpenSSH.
pub const NET_PEERS: &[&str] = &["iperf3", "rsync", "openssh", "uftp"];
pub const LOCAL_PEERS: &[&str] = &["rsync", "openssh"];

fn peer_version(peer: &str) -> String {
    match peer {
        "iperf3" => version_of(&["iperf3", "--version"]),
        "rsync" => version_of(&["rsync", "--version"]),
        "openssh" => version_of(&["ssh", "-V"]),
        "uftp" => run(&["dpkg-query", "-W", "-f", "${Version}", "uftp"])
            .map(|v| format!("uftp {v} (Debian package)"))
            .unwrap_or_else(|_| "unknown".into()),
        other => format!("unknown peer {other}"),
    }
}

/// CPU, memory, kernel, OS and tool versions, saved as `machine.json`.
pub fn machine_description(
    trackshift: Option<&Path>,
    netlab: Option<&Path>,
    peers: &[&str],
) -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .unwrap_or("unknown")
        .trim_matches('"')
        .to_string();
    let mut tools = serde_json::Map::new();
    if let Some(t) = trackshift {
        tools.insert(
            "trackshift".into(),
            json!(version_of(&[&t.display().to_string(), "version"])),
        );
    }
    if let Some(n) = netlab {
        tools.insert(
            "trackshift-netlab".into(),
            json!(version_of(&[&n.display().to_string(), "--version"])),
        );
    }
    for peer in peers {
        tools.insert(peer.to_string(), json!(peer_version(peer)));
    }
    tools.insert("cp".into(), json!(version_of(&["cp", "--version"])));
    let git = version_of(&[
        "git",
        "-C",
        &workspace_root().display().to_string(),
        "rev-parse",
        "--short",
        "HEAD",
    ]);
    json!({
        "hostname": crate::util::hostname(),
        "cpu_model": cpu_model,
        "cores": cores,
        "mem_total_gib": (meminfo_total_kib() as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "kernel": version_of(&["uname", "-r"]),
        "os": os,
        "default_tcp_congestion_control": run(&["sysctl", "-n", "net.ipv4.tcp_congestion_control"]).unwrap_or_default().trim(),
        "workspace_commit": git,
        "tools": tools,
    })
}
