//! `trackshift-bench local`: `cp` against `trackshift send --protocol tcp|udp` over loopback to a receiver on the
//! same disk, for one or more file sizes (issue 2, item 11: ≥ 70% of cp, < 150 MiB RSS, flat in size; issue 4
//! for DCSP: ≥ 1 GB/s or ≥ 80% of cp, ≤ 256 MiB RSS).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{json, Value};

use crate::procs::{Proc, Spec, Usage};
use crate::report::{Status, MB};
use crate::util::{fmt_size, sha256_file, tail};

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
/// "The same RSS" across sizes: within this many MiB (allocator noise, page tables).
const RSS_FLAT_TOLERANCE_MIB: f64 = 8.0;
const RECEIVER_READY: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct LocalConfig {
    pub sizes: Vec<u64>,
    pub dir: PathBuf,
    pub drop_caches: bool,
    pub timeout: Duration,
    pub trackshift: Option<PathBuf>,
    pub out_dir: PathBuf,
    /// TrackShift's data path: `tcp` or `udp` (DCSP).
    pub protocol: String,
    /// cp/TrackShift pairs per size; the verdict is on the median ratio.
    pub repeat: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct LocalRow {
    pub size: u64,
    /// 1-based run number within the size (several with `--repeat`).
    pub run: usize,
    pub cp_seconds: f64,
    pub sync_seconds: f64,
    pub cp_mbs: f64,
    pub cp_sync_mbs: f64,
    pub cp: Option<Usage>,
    pub trackshift_status: Status,
    pub trackshift_seconds: Option<f64>,
    pub trackshift_mbs: Option<f64>,
    pub ratio_cp: Option<f64>,
    pub ratio_cp_sync: Option<f64>,
    pub sender: Option<Usage>,
    pub receiver: Option<Usage>,
    pub note: String,
}

fn drop_caches() -> Result<()> {
    crate::procs::run(&["sync"])?;
    std::fs::write("/proc/sys/vm/drop_caches", "3\n")
        .context("dropping the page cache (needs root)")?;
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One file size: the random file is made once, then `cfg.repeat` cp/TrackShift pairs run on it.
fn one_size(cfg: &LocalConfig, size: u64, idx: usize) -> Result<Vec<LocalRow>> {
    let work = tempfile::Builder::new()
        .prefix("trackshift-bench-local-")
        .tempdir_in(&cfg.dir)
        .with_context(|| format!("creating a work dir in {}", cfg.dir.display()))?;
    let src = work.path().join("payload.bin");
    eprintln!("[local {}] creating the random file", fmt_size(size));
    let src_sha = crate::util::make_random_file(&src, size, 0x10ca1 + idx as u64)?;
    let mut rows = Vec::new();
    for run in 1..=cfg.repeat.max(1) {
        let name = if cfg.repeat > 1 {
            format!("{idx:02}-{}-run{run}", fmt_size(size))
        } else {
            format!("{idx:02}-{}", fmt_size(size))
        };
        let logs = cfg.out_dir.join("logs").join(name);
        std::fs::create_dir_all(&logs)?;
        let run_dir = work.path().join(format!("run{run}"));
        std::fs::create_dir_all(&run_dir)?;
        let row = one_run(cfg, size, run, &src, &src_sha, &run_dir, &logs)?;
        // The received copy and the state dirs go before the next run: same free space, same disk.
        std::fs::remove_dir_all(&run_dir)?;
        eprintln!(
            "[local {} run {run}] cp {:.1} MB/s, trackshift {}",
            fmt_size(size),
            row.cp_mbs,
            row.trackshift_mbs
                .map_or(row.trackshift_status.as_str().to_string(), |m| format!(
                    "{m:.1} MB/s"
                ))
        );
        rows.push(row);
    }
    Ok(rows)
}

/// One cp (+ sync) of `src`, then one TrackShift transfer of it, both into `run_dir`.
fn one_run(
    cfg: &LocalConfig,
    size: u64,
    run: usize,
    src: &Path,
    src_sha: &str,
    run_dir: &Path,
    logs: &Path,
) -> Result<LocalRow> {
    // cp, then sync of the copy: the receiver fsyncs before its rename, so cp+sync is the like-for-like figure.
    if cfg.drop_caches {
        drop_caches()?;
    }
    let cp_dst = run_dir.join("copy.bin");
    eprintln!("[local {}] cp", fmt_size(size));
    let mut cp = Proc::spawn(
        &Spec::new(
            "cp",
            &[
                "cp",
                &src.display().to_string(),
                &cp_dst.display().to_string(),
            ],
        ),
        logs,
    )?;
    let st = cp.wait_timeout(cfg.timeout)?;
    anyhow::ensure!(
        st.is_some_and(|s| s.success()),
        "cp failed or timed out: {}",
        tail(&cp.stderr_log, 2)
    );
    let cp_seconds = cp.elapsed();
    let mut sync = Proc::spawn(
        &Spec::new("sync", &["sync", &cp_dst.display().to_string()]).untimed(),
        logs,
    )?;
    sync.wait_timeout(cfg.timeout)?;
    let sync_seconds = sync.elapsed();
    let cp_usage = cp.usage();
    std::fs::remove_file(&cp_dst)?;

    let mut row = LocalRow {
        size,
        run,
        cp_seconds,
        sync_seconds,
        cp_mbs: size as f64 / cp_seconds / MB,
        cp_sync_mbs: size as f64 / (cp_seconds + sync_seconds) / MB,
        cp: cp_usage,
        trackshift_status: Status::NotAvailable,
        trackshift_seconds: None,
        trackshift_mbs: None,
        ratio_cp: None,
        ratio_cp_sync: None,
        sender: None,
        receiver: None,
        note: String::new(),
    };
    let Some(bin) = &cfg.trackshift else {
        row.note = "trackshift binary not built (cargo build --release -p trackshift-cli)".into();
        return Ok(row);
    };
    if cfg.drop_caches {
        drop_caches()?;
    }
    eprintln!(
        "[local {}] trackshift send --protocol {}",
        fmt_size(size),
        cfg.protocol
    );
    let bin = bin.display().to_string();
    let out = run_dir.join("received");
    let (state_a, state_b) = (run_dir.join("state-send"), run_dir.join("state-recv"));
    for d in [&out, &state_a, &state_b] {
        std::fs::create_dir_all(d)?;
    }
    let listen = format!("127.0.0.1:{}", free_port()?);
    let secret = "trackshift-bench-local";
    let mut recv = Proc::spawn(
        &Spec::new(
            "trackshift-receive",
            &[
                &bin,
                "receive",
                "--listen",
                &listen,
                "--output-dir",
                &out.display().to_string(),
                "--secret",
                secret,
                "--state-dir",
                &state_b.display().to_string(),
                "--once",
                "--json",
            ],
        )
        .stdout_lines(),
        logs,
    )?;
    recv.wait_line(RECEIVER_READY, |l| l.contains("\"listening\""))?;
    let mut send = Proc::spawn(
        &Spec::new(
            "trackshift-send",
            &[
                &bin,
                "send",
                &src.display().to_string(),
                "--to",
                &listen,
                "--secret",
                secret,
                "--state-dir",
                &state_a.display().to_string(),
                "--protocol",
                &cfg.protocol,
                "--json",
            ],
        ),
        logs,
    )?;
    let st = send.wait_timeout(cfg.timeout)?;
    let seconds = send.elapsed();
    if st.is_none() {
        send.stop();
    }
    recv.wait_timeout(Duration::from_secs(10))?;
    recv.stop();
    row.sender = send.usage();
    row.receiver = recv.usage();
    match st {
        None => {
            row.trackshift_status = Status::TimedOut;
            row.note = format!("timed out after {seconds:.0} s");
        }
        Some(s) if !s.success() => {
            row.trackshift_status = Status::Failed;
            row.note = format!("sender exit {s}: {}", tail(&send.stderr_log, 2));
        }
        Some(_) => {
            let delivered = out.join("payload.bin");
            if delivered.exists() && sha256_file(&delivered)? == src_sha {
                row.trackshift_status = Status::Ok;
                let mbs = size as f64 / seconds / MB;
                row.trackshift_seconds = Some(seconds);
                row.trackshift_mbs = Some(mbs);
                row.ratio_cp = Some(mbs / row.cp_mbs);
                row.ratio_cp_sync = Some(mbs / row.cp_sync_mbs);
            } else {
                row.trackshift_status = Status::Failed;
                row.note = "delivered file missing or SHA-256 mismatch".into();
            }
        }
    }
    Ok(row)
}

/// SHA-256 throughput of one core on this machine, and what it allows a transfer between two processes here.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct HashCeiling {
    /// MB/s of one core hashing a warm in-memory buffer (sha2, the crate TrackShift uses).
    pub sha256_mbs: f64,
    pub cores: usize,
    /// SHA-256 passes over the file a transfer needs: chunk and whole-file hash on each side (issue 2, item 3).
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

/// The runs of one size, summarised by medians (the paired ratio of each run, then its median).
#[derive(Debug, Clone, Serialize)]
pub struct SizeSummary {
    pub size: u64,
    pub runs: usize,
    pub ok_runs: usize,
    pub median_cp_mbs: f64,
    pub median_cp_sync_mbs: f64,
    pub median_trackshift_mbs: Option<f64>,
    pub median_ratio_cp: Option<f64>,
    pub median_ratio_cp_sync: Option<f64>,
    /// Runs whose own ratio met the target.
    pub runs_meeting_ratio: usize,
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

fn summarise(rows: &[LocalRow], targets: &Targets) -> Vec<SizeSummary> {
    let mut sizes: Vec<u64> = rows.iter().map(|r| r.size).collect();
    sizes.dedup();
    sizes
        .into_iter()
        .map(|size| {
            let runs: Vec<&LocalRow> = rows.iter().filter(|r| r.size == size).collect();
            let ok: Vec<&LocalRow> = runs
                .iter()
                .copied()
                .filter(|r| r.trackshift_mbs.is_some())
                .collect();
            let max_rss = |f: fn(&LocalRow) -> Option<Usage>| {
                runs.iter()
                    .filter_map(|r| f(r).map(|u| u.rss_mib()))
                    .reduce(f64::max)
            };
            SizeSummary {
                size,
                runs: runs.len(),
                ok_runs: ok.len(),
                median_cp_mbs: median(runs.iter().map(|r| r.cp_mbs).collect()).unwrap_or(0.0),
                median_cp_sync_mbs: median(runs.iter().map(|r| r.cp_sync_mbs).collect())
                    .unwrap_or(0.0),
                median_trackshift_mbs: median(ok.iter().filter_map(|r| r.trackshift_mbs).collect()),
                median_ratio_cp: median(ok.iter().filter_map(|r| r.ratio_cp).collect()),
                median_ratio_cp_sync: median(ok.iter().filter_map(|r| r.ratio_cp_sync).collect()),
                runs_meeting_ratio: ok
                    .iter()
                    .filter(|r| match (r.trackshift_mbs, r.ratio_cp) {
                        (Some(mbs), Some(ratio)) => targets.goodput_met(mbs, ratio),
                        _ => false,
                    })
                    .count(),
                max_sender_rss_mib: max_rss(|r| r.sender),
                max_receiver_rss_mib: max_rss(|r| r.receiver),
            }
        })
        .collect()
}

fn markdown(rows: &[LocalRow], cfg: &LocalConfig, ceiling: &HashCeiling) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Local: cp vs trackshift over loopback (same disk: {}; caches {})\n",
        cfg.dir.display(),
        if cfg.drop_caches {
            "dropped before each copy"
        } else {
            "warm"
        }
    );
    s.push_str(
        "| size | run | cp MB/s | cp+sync MB/s | trackshift MB/s | ts/cp | ts/(cp+sync) | cp RSS MiB | sender RSS MiB \
         | receiver RSS MiB | sender CPU s | receiver CPU s | status | note |\n",
    );
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n");
    let f2 = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.2}"));
    let f1 = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.1}"));
    let targets = Targets::for_protocol(&cfg.protocol);
    let summaries = summarise(rows, &targets);
    for (i, r) in rows.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            fmt_size(r.size),
            r.run,
            r.cp_mbs,
            r.cp_sync_mbs,
            f1(r.trackshift_mbs),
            f2(r.ratio_cp),
            f2(r.ratio_cp_sync),
            f1(r.cp.map(|u| u.rss_mib())),
            f1(r.sender.map(|u| u.rss_mib())),
            f1(r.receiver.map(|u| u.rss_mib())),
            f2(r.sender.map(|u| u.cpu_s)),
            f2(r.receiver.map(|u| u.cpu_s)),
            r.trackshift_status.as_str(),
            r.note.replace('|', "/"),
        );
        let last_of_size = rows.get(i + 1).is_none_or(|next| next.size != r.size);
        if cfg.repeat > 1 && last_of_size {
            if let Some(m) = summaries.iter().find(|m| m.size == r.size) {
                let _ = writeln!(
                    s,
                    "| **{}** | **median** | **{:.1}** | **{:.1}** | **{}** | **{}** | **{}** | | {} | {} | | | {}/{} ok | max RSS |",
                    fmt_size(m.size),
                    m.median_cp_mbs,
                    m.median_cp_sync_mbs,
                    f1(m.median_trackshift_mbs),
                    f2(m.median_ratio_cp),
                    f2(m.median_ratio_cp_sync),
                    f1(m.max_sender_rss_mib),
                    f1(m.max_receiver_rss_mib),
                    m.ok_runs,
                    m.runs,
                );
            }
        }
    }
    s.push('\n');
    let versus_cp = summaries
        .iter()
        .filter(|m| m.median_cp_mbs > 0.0)
        .map(|m| {
            format!(
                "{:.2} × cp's median at {} ({:.0} MB/s)",
                ceiling.ceiling_mbs / m.median_cp_mbs,
                fmt_size(m.size),
                m.median_cp_mbs
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        s,
        "Hashing ceiling: SHA-256 runs at {:.0} MB/s on one core here. A transfer hashes the file {} times \
         (chunk and whole-file hash, on each side), so on {} cores shared by sender and receiver no transfer can \
         exceed {} × {:.0} / {} = **{:.0} MB/s**: {versus_cp}.\n",
        ceiling.sha256_mbs,
        ceiling.passes,
        ceiling.cores,
        ceiling.cores,
        ceiling.sha256_mbs,
        ceiling.passes,
        ceiling.ceiling_mbs,
    );
    for line in verdicts(&summaries, cfg.repeat, &targets) {
        let _ = writeln!(s, "- {line}");
    }
    s
}

/// The issue's three targets, each as a PASS/FAIL line (on the medians when runs were repeated).
fn verdicts(summaries: &[SizeSummary], repeat: usize, targets: &Targets) -> Vec<String> {
    let mut v = Vec::new();
    let pf = |ok: bool| if ok { "PASS" } else { "FAIL" };
    for m in summaries {
        if let Some(ratio) = m.median_ratio_cp {
            let how = if repeat > 1 {
                format!(
                    "median of {} runs; {} of {} met it on their own; ",
                    m.ok_runs, m.runs_meeting_ratio, m.ok_runs
                )
            } else {
                String::new()
            };
            let mbs = m.median_trackshift_mbs.unwrap_or(0.0);
            v.push(format!(
                "{}: {} goodput {mbs:.0} MB/s, {:.0}% of cp (issue {} target {}; {how}{:.0}% of cp+sync)",
                pf(targets.goodput_met(mbs, ratio)),
                fmt_size(m.size),
                ratio * 100.0,
                targets.issue,
                targets.describe(),
                m.median_ratio_cp_sync.unwrap_or(0.0) * 100.0
            ));
        }
        if let (Some(snd), Some(rcv)) = (m.max_sender_rss_mib, m.max_receiver_rss_mib) {
            v.push(format!(
                "{}: {} peak RSS sender {snd:.1} MiB, receiver {rcv:.1} MiB (target ≤ {:.0} MiB)",
                pf(snd.max(rcv) <= targets.rss_mib),
                fmt_size(m.size),
                targets.rss_mib,
            ));
        }
    }
    let measured: Vec<&SizeSummary> = summaries
        .iter()
        .filter(|m| m.max_sender_rss_mib.is_some() && m.max_receiver_rss_mib.is_some())
        .collect();
    if let (Some(first), Some(last)) = (measured.first(), measured.last()) {
        if measured.len() > 1 {
            let grow = |a: Option<f64>, b: Option<f64>| b.unwrap_or(0.0) - a.unwrap_or(0.0);
            let gs = grow(first.max_sender_rss_mib, last.max_sender_rss_mib);
            let gr = grow(first.max_receiver_rss_mib, last.max_receiver_rss_mib);
            v.push(format!(
                "{}: RSS from {} to {}: sender {gs:+.1} MiB, receiver {gr:+.1} MiB (target: flat, within {RSS_FLAT_TOLERANCE_MIB:.0} MiB)",
                pf(gs.abs() <= RSS_FLAT_TOLERANCE_MIB && gr.abs() <= RSS_FLAT_TOLERANCE_MIB),
                fmt_size(first.size),
                fmt_size(last.size)
            ));
        }
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
    let targets = Targets::for_protocol(&cfg.protocol);
    let summaries = summarise(&rows, &targets);
    std::fs::write(
        cfg.out_dir.join("local.json"),
        serde_json::to_string_pretty(&json!({
            "machine": machine,
            "dir": cfg.dir,
            "drop_caches": cfg.drop_caches,
            "repeat": cfg.repeat,
            "hash_ceiling": ceiling,
            "rows": rows,
            "summaries": summaries,
            "targets": targets,
            "verdicts": verdicts(&summaries, cfg.repeat, &targets),
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

    fn row(size: u64, run: usize, cp: f64, ts: f64) -> LocalRow {
        LocalRow {
            size,
            run,
            cp_seconds: 1.0,
            sync_seconds: 0.0,
            cp_mbs: cp,
            cp_sync_mbs: cp,
            cp: None,
            trackshift_status: Status::Ok,
            trackshift_seconds: Some(1.0),
            trackshift_mbs: Some(ts),
            ratio_cp: Some(ts / cp),
            ratio_cp_sync: Some(ts / cp),
            sender: None,
            receiver: None,
            note: String::new(),
        }
    }

    #[test]
    fn medians_are_of_each_runs_own_ratio() {
        let rows = vec![
            row(1, 1, 400.0, 440.0),
            row(1, 2, 2000.0, 400.0),
            row(1, 3, 800.0, 420.0),
            row(2, 1, 500.0, 450.0),
        ];
        let tcp = Targets::for_protocol("tcp");
        let m = summarise(&rows, &tcp);
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[0].runs, m[0].ok_runs, m[0].runs_meeting_ratio),
            (3, 3, 1)
        );
        assert_eq!(m[0].median_cp_mbs, 800.0);
        assert_eq!(m[0].median_trackshift_mbs, Some(420.0));
        assert_eq!(m[0].median_ratio_cp, Some(420.0 / 800.0));
        assert_eq!(m[1].median_ratio_cp, Some(0.9));
        let v = verdicts(&m, 3, &tcp);
        assert!(
            v[0].starts_with("FAIL: 1B goodput 420 MB/s, 52% of cp"),
            "{v:?}"
        );
        assert!(v[0].contains("1 of 3 met it on their own"), "{v:?}");
        // DCSP's target also passes at 1 GB/s whatever cp does.
        let udp = Targets::for_protocol("udp");
        let fast = summarise(&[row(1, 1, 4000.0, 1100.0)], &udp);
        assert!(verdicts(&fast, 1, &udp)[0].starts_with("PASS"));
        assert!(verdicts(&fast, 1, &tcp)[0].starts_with("FAIL"));
        assert_eq!(median(vec![3.0, 1.0, 2.0, 10.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }
}
