//! `trackshift-bench local`: over loopback, on the same disk and the same random file, `cp`, `trackshift send`
//! (`--protocol udp` and `--protocol tcp`), rsync to its daemon and scp (aes128-gcm) to sshd, one of each per
//! run, alternating, for one or more file sizes. Each is timed to its end plus a `sync` of the copy, with the CPU
//! seconds per GB of each end. Judged against issue 13 (≥ 1.5 × scp, ≥ 0.9 × rsync, ≤ 2.5 CPU s per GB for both
//! ends), issue 2 for the TCP data path (≥ 70% of cp, < 150 MiB RSS, flat in size) and issue 4 for DCSP (≥ 1 GB/s
//! or ≥ 80% of cp, ≤ 256 MiB RSS). TrackShift, rsync and scp run through `net`'s code on a fresh namespace's
//! loopback ([`LinkKind::Loopback`]), so their daemons start exactly as in `net`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{json, Value};

use crate::link::LinkKind;
use crate::net::{NetBench, NetConfig};
use crate::procs::{sync_file, Proc, Spec, Usage};
use crate::report::{cpu_cells, f1, f2, CpuPerGb, Family, Row, Status, MB};
use crate::util::{fmt_size, tail};

/// The tools `local` knows, in their default order.
pub const ALL_TOOLS: &[&str] = &["cp", "trackshift-udp", "trackshift-tcp", "rsync", "scp"];

/// The targets a run is judged against: issue 2's for the TCP data path, issue 4's for DCSP.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Targets {
    pub issue: u32,
    /// TrackShift's goodput at least this fraction of cp's ...
    pub ratio: f64,
    /// ... or at least this many MB/s, when set.
    pub or_mbs: Option<f64>,
    /// Peak RSS of each side at most this.
    pub rss_mib: f64,
}

impl Targets {
    pub fn for_protocol(protocol: &str) -> Targets {
        match protocol {
            "udp" => Targets {
                issue: 4,
                ratio: 0.80,
                or_mbs: Some(1000.0),
                rss_mib: 256.0,
            },
            _ => Targets {
                issue: 2,
                ratio: 0.70,
                or_mbs: None,
                rss_mib: 150.0,
            },
        }
    }

    fn goodput_met(&self, mbs: f64, ratio: f64) -> bool {
        ratio >= self.ratio || self.or_mbs.is_some_and(|m| mbs >= m)
    }

    fn describe(&self) -> String {
        match self.or_mbs {
            Some(m) => format!("≥ {m:.0} MB/s or ≥ {:.0}% of cp", self.ratio * 100.0),
            None => format!("≥ {:.0}%", self.ratio * 100.0),
        }
    }
}
/// Issue 13 on loopback: TrackShift at least this many times scp's MB/s ...
const VS_SCP: f64 = 1.5;
/// ... and rsync's (daemon) ...
const VS_RSYNC: f64 = 0.9;
/// ... at most this many CPU seconds per GB for both ends together.
const CPU_BOTH_PER_GB: f64 = 2.5;
/// "The same RSS" across sizes: within this many MiB (allocator noise, page tables).
const RSS_FLAT_TOLERANCE_MIB: f64 = 8.0;

#[derive(Debug, Clone)]
pub struct LocalConfig {
    pub sizes: Vec<u64>,
    pub dir: PathBuf,
    pub drop_caches: bool,
    pub timeout: std::time::Duration,
    pub trackshift: Option<PathBuf>,
    pub out_dir: PathBuf,
    /// Names of [`ALL_TOOLS`], in the order of the first run (each later run starts one further on).
    pub tools: Vec<String>,
    /// Runs per size (one of each tool per run); the summary is of medians.
    pub repeat: usize,
}

/// One tool's run, with its MB/s against cp's, scp's and rsync's in the same run.
#[derive(Debug, Clone, Serialize)]
pub struct LocalRow {
    pub size: u64,
    /// 1-based run number within the size.
    pub run: usize,
    #[serde(flatten)]
    pub row: Row,
    pub ratio_cp: Option<f64>,
    pub ratio_scp: Option<f64>,
    pub ratio_rsync: Option<f64>,
}

fn drop_caches() -> Result<()> {
    crate::procs::run(&["sync"])?;
    std::fs::write("/proc/sys/vm/drop_caches", "3\n")
        .context("dropping the page cache (needs root)")?;
    Ok(())
}

/// One file size: the random file is made once, then `cfg.repeat` runs of every tool on it.
fn one_size(cfg: &LocalConfig, size: u64, idx: usize) -> Result<Vec<LocalRow>> {
    let work = tempfile::Builder::new()
        .prefix("trackshift-bench-local-")
        .tempdir_in(&cfg.dir)
        .with_context(|| format!("creating a work dir in {}", cfg.dir.display()))?;
    let src = work.path().join("payload.bin");
    eprintln!("[local {}] creating the random file", fmt_size(size));
    let src_sha = crate::util::make_random_file(&src, size, 0x10ca1 + idx as u64)?;
    let net = NetConfig {
        profiles: Vec::new(),
        size,
        timeout: cfg.timeout,
        iperf_seconds: 0,
        tools: cfg.tools.clone(),
        ccs: Vec::new(),
        link: LinkKind::Loopback,
        trackshift: cfg.trackshift.clone(),
        work_dir: work.path().join("net"),
        out_dir: cfg.out_dir.clone(),
        sync_delivered: true,
    };
    let mut bench = NetBench::for_file(net, src.clone(), src_sha)?;
    let mut rows = Vec::new();
    for run in 1..=cfg.repeat.max(1) {
        rows.extend(one_run(cfg, &mut bench, size, run, &src, work.path())?);
    }
    Ok(rows)
}

/// One run of every tool, the order turned by one place each run so no tool always follows the same one.
fn one_run(
    cfg: &LocalConfig,
    bench: &mut NetBench,
    size: u64,
    run: usize,
    src: &Path,
    work: &Path,
) -> Result<Vec<LocalRow>> {
    let group = format!("{}-run{run}", fmt_size(size));
    let mut order = cfg.tools.clone();
    let turn = (run - 1) % order.len().max(1);
    order.rotate_left(turn);
    let mut rows = Vec::new();
    for tool in &order {
        if cfg.drop_caches {
            drop_caches()?;
        }
        let row = match tool.as_str() {
            "cp" => {
                let logs = cfg.out_dir.join("logs").join(&group).join("cp");
                cp_row(cfg, size, src, work, &logs)?
            }
            t => bench.run_tool(&group, t, None)?,
        };
        rows.push(LocalRow {
            size,
            run,
            row,
            ratio_cp: None,
            ratio_scp: None,
            ratio_rsync: None,
        });
    }
    fill_ratios(&mut rows);
    Ok(rows)
}

/// `cp` of the file, then `sync` of the copy: the like-for-like figure for a receiver that fsyncs.
fn cp_row(cfg: &LocalConfig, size: u64, src: &Path, work: &Path, logs: &Path) -> Result<Row> {
    std::fs::create_dir_all(logs)?;
    eprintln!("[local {}] cp", fmt_size(size));
    let dst = work.join("copy.bin");
    let mut row = Row::new("cp + sync", "cp", Family::Reference, None);
    (row.file_bytes, row.logs) = (size, logs.display().to_string());
    let (s, d) = (src.display().to_string(), dst.display().to_string());
    let mut cp = Proc::spawn(&Spec::new("cp", &["cp", &s, &d]), logs)?;
    if !cp.wait_timeout(cfg.timeout)?.is_some_and(|st| st.success()) {
        cp.stop();
        row.note = format!("cp failed or timed out: {}", tail(&cp.stderr_log, 2));
        return Ok(row);
    }
    row.sync_seconds = sync_file(&dst, logs, cfg.timeout)?;
    row.seconds = cp.elapsed() + row.sync_seconds;
    (row.status, row.bytes_arrived) = (Status::Ok, size);
    row.goodput_mbs = Some(size as f64 / row.seconds / MB);
    row.sender = cp.usage();
    row.fill_cpu_per_gb();
    // cp is both ends in one process.
    if let Some(c) = row.cpu_per_gb.as_mut() {
        c.both = c.sender;
    }
    std::fs::remove_file(&dst)?;
    Ok(row)
}

/// Each delivered row's MB/s against cp's, scp's and rsync's of the same run.
fn fill_ratios(rows: &mut [LocalRow]) {
    let rate_of = |tool: &str| {
        rows.iter()
            .find(|r| r.row.tool == tool && r.row.status == Status::Ok)
            .and_then(|r| r.row.goodput_mbs)
            .filter(|g| *g > 0.0)
    };
    let (cp, scp, rsync) = (rate_of("cp"), rate_of("scp"), rate_of("rsync"));
    for r in rows.iter_mut().filter(|r| r.row.status == Status::Ok) {
        let Some(g) = r.row.goodput_mbs else { continue };
        let ratio = |base: Option<f64>| base.map(|b| g / b);
        (r.ratio_cp, r.ratio_scp, r.ratio_rsync) = (ratio(cp), ratio(scp), ratio(rsync));
    }
}

/// SHA-256 throughput of one core on this machine, and what it allows a transfer between two processes here.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct HashCeiling {
    /// MB/s of one core hashing a warm in-memory buffer (sha2, the crate TrackShift uses).
    pub sha256_mbs: f64,
    pub cores: usize,
    /// SHA-256 passes over the file a transfer needs ([`crate::util::TRANSFER_SHA256_PASSES`]).
    pub passes: usize,
    /// `cores × sha256_mbs / passes`: no same-machine transfer can go faster, whatever else it costs.
    pub ceiling_mbs: f64,
}

fn hash_ceiling(cores: usize) -> HashCeiling {
    let sha256_mbs = crate::util::sha256_core_mbs();
    let passes = crate::util::TRANSFER_SHA256_PASSES;
    HashCeiling {
        sha256_mbs,
        cores,
        passes,
        ceiling_mbs: cores as f64 * sha256_mbs / passes as f64,
    }
}

/// One tool's runs of one size, summarised by medians (the ratios: each run's own, then their median).
#[derive(Debug, Clone, Serialize)]
pub struct ToolSummary {
    pub size: u64,
    pub tool: String,
    pub label: String,
    pub runs: usize,
    pub ok_runs: usize,
    pub median_mbs: Option<f64>,
    /// The median of each field on its own.
    pub median_cpu_per_gb: CpuPerGb,
    pub median_ratio_cp: Option<f64>,
    pub median_ratio_scp: Option<f64>,
    pub median_ratio_rsync: Option<f64>,
    pub max_sender_rss_mib: Option<f64>,
    pub max_receiver_rss_mib: Option<f64>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn summarise(rows: &[LocalRow]) -> Vec<ToolSummary> {
    let mut keys: Vec<(u64, &str)> = Vec::new();
    for r in rows {
        if !keys.contains(&(r.size, r.row.tool.as_str())) {
            keys.push((r.size, r.row.tool.as_str()));
        }
    }
    keys.into_iter()
        .map(|(size, tool)| summarise_tool(rows, size, tool))
        .collect()
}

fn summarise_tool(rows: &[LocalRow], size: u64, tool: &str) -> ToolSummary {
    let runs: Vec<&LocalRow> = rows
        .iter()
        .filter(|r| r.size == size && r.row.tool == tool)
        .collect();
    let ok: Vec<&LocalRow> = runs
        .iter()
        .copied()
        .filter(|r| r.row.status == Status::Ok)
        .collect();
    let med = |f: fn(&LocalRow) -> Option<f64>| median(ok.iter().filter_map(|r| f(r)).collect());
    let cpu = |f: fn(&CpuPerGb) -> Option<f64>| {
        median(
            ok.iter()
                .filter_map(|r| r.row.cpu_per_gb.as_ref().and_then(f))
                .collect(),
        )
    };
    let max_rss = |f: fn(&Row) -> Option<Usage>| {
        runs.iter()
            .filter_map(|r| f(&r.row).map(|u| u.rss_mib()))
            .reduce(f64::max)
    };
    ToolSummary {
        size,
        tool: tool.to_string(),
        label: runs
            .first()
            .map_or(tool.to_string(), |r| r.row.label.clone()),
        runs: runs.len(),
        ok_runs: ok.len(),
        median_mbs: med(|r| r.row.goodput_mbs),
        median_cpu_per_gb: CpuPerGb {
            sender: cpu(|c| c.sender),
            receiver: cpu(|c| c.receiver),
            both: cpu(|c| c.both),
        },
        median_ratio_cp: med(|r| r.ratio_cp),
        median_ratio_scp: med(|r| r.ratio_scp),
        median_ratio_rsync: med(|r| r.ratio_rsync),
        max_sender_rss_mib: max_rss(|r| r.sender),
        max_receiver_rss_mib: max_rss(|r| r.receiver),
    }
}

const CPU_HEAD: &str = "sender CPU s/GB | receiver CPU s/GB | both CPU s/GB";

fn summary_table(summaries: &[ToolSummary]) -> String {
    let mut s = format!(
        "| size | tool | ok runs | MB/s | {CPU_HEAD} | × cp | × scp | × rsync | max sender RSS MiB \
         | max receiver RSS MiB |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for m in summaries {
        let _ = writeln!(
            s,
            "| {} | {} | {}/{} | {} | {} | {} | {} | {} | {} | {} |",
            fmt_size(m.size),
            m.label,
            m.ok_runs,
            m.runs,
            f1(m.median_mbs),
            cpu_cells(Some(m.median_cpu_per_gb)),
            f2(m.median_ratio_cp),
            f2(m.median_ratio_scp),
            f2(m.median_ratio_rsync),
            f1(m.max_sender_rss_mib),
            f1(m.max_receiver_rss_mib),
        );
    }
    s
}

fn runs_table(rows: &[LocalRow]) -> String {
    let mut s = format!(
        "| size | run | tool | status | MB/s | time s | of it sync s | {CPU_HEAD} | × cp | × scp | × rsync \
         | sender RSS MiB | receiver RSS MiB | note |\n\
         |---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} | {} |",
            fmt_size(r.size),
            r.run,
            r.row.label,
            r.row.status.as_str(),
            f1(r.row.goodput_mbs),
            r.row.seconds,
            r.row.sync_seconds,
            cpu_cells(r.row.cpu_per_gb),
            f2(r.ratio_cp),
            f2(r.ratio_scp),
            f2(r.ratio_rsync),
            f1(r.row.sender.map(|u| u.rss_mib())),
            f1(r.row.receiver.map(|u| u.rss_mib())),
            r.row.note.replace('|', "/"),
        );
    }
    s
}

fn markdown(rows: &[LocalRow], cfg: &LocalConfig, ceiling: &HashCeiling) -> String {
    let summaries = summarise(rows);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Local: over loopback, same disk ({}), caches {}; {} run(s) per size, medians\n",
        cfg.dir.display(),
        if cfg.drop_caches {
            "dropped before each copy"
        } else {
            "warm"
        },
        cfg.repeat
    );
    s.push_str(&summary_table(&summaries));
    s.push('\n');
    for line in verdicts(&summaries) {
        let _ = writeln!(s, "- {line}");
    }
    let _ = writeln!(
        s,
        "\nHashing ceiling: SHA-256 runs at {:.0} MB/s on one core here. A transfer hashes the file {} times \
         (chunk and whole-file hash at the sender, chunk hash at the receiver), so on {} cores shared by sender and receiver no TrackShift \
         transfer can exceed {} × {:.0} / {} = **{:.0} MB/s**.\n\n#### Every run\n",
        ceiling.sha256_mbs,
        ceiling.passes,
        ceiling.cores,
        ceiling.cores,
        ceiling.sha256_mbs,
        ceiling.passes,
        ceiling.ceiling_mbs,
    );
    s.push_str(&runs_table(rows));
    s
}

fn pf(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

/// Every target as a PASS/FAIL line, on the medians.
fn verdicts(summaries: &[ToolSummary]) -> Vec<String> {
    let mut v = Vec::new();
    for m in summaries
        .iter()
        .filter(|m| m.tool.starts_with("trackshift"))
    {
        v.extend(issue13_verdicts(m));
        v.extend(cp_and_rss_verdicts(m));
    }
    v.extend(rss_flat_verdicts(summaries));
    v
}

/// Issue 13's loopback targets: against scp and rsync, and the CPU of both ends.
fn issue13_verdicts(m: &ToolSummary) -> Vec<String> {
    let what = format!("{} {}", fmt_size(m.size), m.label);
    let mut v = Vec::new();
    if let Some(r) = m.median_ratio_scp {
        v.push(format!(
            "{}: {what} {r:.2} × scp (issue 13: ≥ {VS_SCP})",
            pf(r >= VS_SCP)
        ));
    }
    if let Some(r) = m.median_ratio_rsync {
        v.push(format!(
            "{}: {what} {r:.2} × rsync daemon (issue 13: ≥ {VS_RSYNC})",
            pf(r >= VS_RSYNC)
        ));
    }
    if let Some(c) = m.median_cpu_per_gb.both {
        v.push(format!(
            "{}: {what} {c:.2} CPU s per GB, both ends (issue 13: ≤ {CPU_BOTH_PER_GB})",
            pf(c <= CPU_BOTH_PER_GB)
        ));
    }
    v
}

/// Issue 2's (TCP) or issue 4's (DCSP) targets: against cp + sync, and each side's peak RSS.
fn cp_and_rss_verdicts(m: &ToolSummary) -> Vec<String> {
    let protocol = m.tool.trim_start_matches("trackshift-");
    let t = Targets::for_protocol(protocol);
    let what = format!("{} {}", fmt_size(m.size), m.label);
    let mut v = Vec::new();
    if let (Some(ratio), Some(mbs)) = (m.median_ratio_cp, m.median_mbs) {
        v.push(format!(
            "{}: {what} {mbs:.0} MB/s, {:.0}% of cp + sync (issue {}: {})",
            pf(t.goodput_met(mbs, ratio)),
            ratio * 100.0,
            t.issue,
            t.describe()
        ));
    }
    if let (Some(snd), Some(rcv)) = (m.max_sender_rss_mib, m.max_receiver_rss_mib) {
        v.push(format!(
            "{}: {what} peak RSS sender {snd:.1} MiB, receiver {rcv:.1} MiB (issue {}: ≤ {:.0} MiB)",
            pf(snd.max(rcv) <= t.rss_mib),
            t.issue,
            t.rss_mib,
        ));
    }
    v
}

/// With two sizes or more: TrackShift's peak RSS from the smallest to the largest, which must stay flat.
fn rss_flat_verdicts(summaries: &[ToolSummary]) -> Vec<String> {
    let mut v = Vec::new();
    for tool in ["trackshift-udp", "trackshift-tcp"] {
        let measured: Vec<&ToolSummary> = summaries
            .iter()
            .filter(|m| m.tool == tool && m.max_sender_rss_mib.is_some())
            .filter(|m| m.max_receiver_rss_mib.is_some())
            .collect();
        let (Some(first), Some(last)) = (measured.first(), measured.last()) else {
            continue;
        };
        if measured.len() < 2 {
            continue;
        }
        let grow = |a: Option<f64>, b: Option<f64>| b.unwrap_or(0.0) - a.unwrap_or(0.0);
        let gs = grow(first.max_sender_rss_mib, last.max_sender_rss_mib);
        let gr = grow(first.max_receiver_rss_mib, last.max_receiver_rss_mib);
        v.push(format!(
            "{}: {} RSS from {} to {}: sender {gs:+.1} MiB, receiver {gr:+.1} MiB (flat: within {RSS_FLAT_TOLERANCE_MIB:.0} MiB)",
            pf(gs.abs() <= RSS_FLAT_TOLERANCE_MIB && gr.abs() <= RSS_FLAT_TOLERANCE_MIB),
            first.label,
            fmt_size(first.size),
            fmt_size(last.size)
        ));
    }
    v
}

pub fn run_local(cfg: LocalConfig, machine: Value) -> Result<String> {
    std::fs::create_dir_all(&cfg.out_dir)?;
    std::fs::create_dir_all(&cfg.dir)?;
    std::fs::write(
        cfg.out_dir.join("machine.json"),
        serde_json::to_string_pretty(&machine)?,
    )?;
    let cores = machine["cores"].as_u64().map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |c| c as usize,
    );
    let ceiling = hash_ceiling(cores);
    let mut rows = Vec::new();
    for (i, size) in cfg.sizes.iter().enumerate() {
        rows.extend(one_size(&cfg, *size, i + 1)?);
    }
    let md = markdown(&rows, &cfg, &ceiling);
    let header = format!(
        "# TrackShift local benchmark\n\nMachine: {} ({} cores, {} GiB, kernel {}).\n\n",
        machine["cpu_model"].as_str().unwrap_or("?"),
        machine["cores"],
        machine["mem_total_gib"],
        machine["kernel"].as_str().unwrap_or("?"),
    );
    std::fs::write(cfg.out_dir.join("local.md"), format!("{header}{md}"))?;
    let summaries = summarise(&rows);
    std::fs::write(
        cfg.out_dir.join("local.json"),
        serde_json::to_string_pretty(&json!({
            "machine": machine,
            "dir": cfg.dir,
            "drop_caches": cfg.drop_caches,
            "repeat": cfg.repeat,
            "tools": cfg.tools,
            "hash_ceiling": ceiling,
            "rows": rows,
            "summaries": summaries,
            "verdicts": verdicts(&summaries),
        }))?,
    )?;
    Ok(md)
}

/// Default work dir: `/var/tmp` is disk-backed on Debian (unlike a tmpfs `/tmp`), so cp measures the disk.
pub fn default_dir() -> PathBuf {
    Path::new("/var/tmp").to_path_buf()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn usage(cpu_s: f64, rss_mib: u64) -> Usage {
        Usage {
            wall_s: 1.0,
            cpu_s,
            user_s: cpu_s,
            sys_s: 0.0,
            max_rss_kib: rss_mib * 1024,
        }
    }

    /// A delivered 1 GB row of `tool` at `mbs`, each end spending `cpu_s`.
    fn row(run: usize, tool: &str, mbs: f64, cpu_s: f64) -> LocalRow {
        let mut r = Row::new(tool, tool, Family::Peer, None);
        (r.status, r.file_bytes, r.goodput_mbs) = (Status::Ok, 1_000_000_000, Some(mbs));
        (r.sender, r.receiver) = (Some(usage(cpu_s, 40)), Some(usage(cpu_s, 60)));
        r.fill_cpu_per_gb();
        LocalRow {
            size: 1_000_000_000,
            run,
            row: r,
            ratio_cp: None,
            ratio_scp: None,
            ratio_rsync: None,
        }
    }

    fn run_of(run: usize, ts: f64, scp: f64, rsync: f64) -> Vec<LocalRow> {
        let mut rows = vec![
            row(run, "trackshift-udp", ts, 1.0),
            row(run, "scp", scp, 2.0),
            row(run, "rsync", rsync, 0.5),
        ];
        fill_ratios(&mut rows);
        rows
    }

    #[test]
    fn ratios_are_within_a_run_and_summaries_take_medians() {
        let mut rows = run_of(1, 600.0, 300.0, 800.0);
        rows.extend(run_of(2, 500.0, 400.0, 500.0));
        rows.extend(run_of(3, 900.0, 300.0, 600.0));
        assert_eq!(rows[0].ratio_scp, Some(2.0));
        assert_eq!(rows[0].ratio_cp, None, "no cp in the run");
        let m = summarise(&rows);
        assert_eq!(m.len(), 3);
        let ts = &m[0];
        assert_eq!((ts.runs, ts.ok_runs, ts.median_mbs), (3, 3, Some(600.0)));
        // Each run's own ratio (2.0, 1.25, 3.0), then the median.
        assert_eq!(ts.median_ratio_scp, Some(2.0));
        assert_eq!(ts.median_ratio_rsync, Some(1.0));
        assert_eq!(ts.median_cpu_per_gb.both, Some(2.0));
        assert_eq!(ts.max_receiver_rss_mib, Some(60.0));
        let v = verdicts(&m);
        assert!(
            v[0].starts_with("PASS: 953.7MiB trackshift-udp 2.00 × scp"),
            "{v:?}"
        );
        assert!(
            v[1].starts_with("PASS") && v[1].contains("1.00 × rsync"),
            "{v:?}"
        );
        assert!(
            v[2].starts_with("PASS") && v[2].contains("2.00 CPU s per GB"),
            "{v:?}"
        );
        assert!(
            v[3].contains("peak RSS sender 40.0 MiB, receiver 60.0 MiB"),
            "{v:?}"
        );
        let md = summary_table(&m);
        assert!(
            md.contains("| scp | 3/3 | 300.0 | 2.00 | 2.00 | 4.00 |"),
            "{md}"
        );
        assert_eq!(median(vec![3.0, 1.0, 2.0, 10.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn a_failed_run_has_no_ratio_and_counts_as_not_ok() {
        let mut rows = run_of(1, 600.0, 300.0, 800.0);
        rows[0].row.status = Status::Failed;
        rows[0].row.fill_cpu_per_gb();
        rows[0].ratio_scp = None;
        fill_ratios(&mut rows);
        assert_eq!(rows[0].ratio_scp, None);
        let m = summarise(&rows);
        assert_eq!((m[0].ok_runs, m[0].median_mbs), (0, None));
        assert!(issue13_verdicts(&m[0]).is_empty());
    }
}
