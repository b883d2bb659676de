//! `trackshift-bench local`: `cp` against `trackshift send --protocol tcp|udp` over loopback to a receiver on the
//! same disk, for one or more file sizes (issue 2, item 11: ≥ 70% of cp, < 150 MiB RSS, flat in size).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{json, Value};

use crate::procs::{Proc, Spec, Usage};
use crate::report::{Status, MB};
use crate::util::{fmt_size, sha256_file, tail};

/// Target from issue 2: TrackShift's goodput at least this fraction of cp's.
const TARGET_RATIO: f64 = 0.70;
/// Target from issue 2: peak RSS of each side below this.
const TARGET_RSS_MIB: f64 = 150.0;
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
}

#[derive(Debug, Clone, Serialize)]
pub struct LocalRow {
    pub size: u64,
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

fn one_size(cfg: &LocalConfig, size: u64, idx: usize) -> Result<LocalRow> {
    let work = tempfile::Builder::new()
        .prefix("trackshift-bench-local-")
        .tempdir_in(&cfg.dir)
        .with_context(|| format!("creating a work dir in {}", cfg.dir.display()))?;
    let logs = cfg
        .out_dir
        .join("logs")
        .join(format!("{idx:02}-{}", fmt_size(size)));
    std::fs::create_dir_all(&logs)?;
    let src = work.path().join("payload.bin");
    eprintln!("[local {}] creating the random file", fmt_size(size));
    let src_sha = crate::util::make_random_file(&src, size, 0x10ca1 + idx as u64)?;

    // cp, then sync of the copy: the receiver fsyncs before its rename, so cp+sync is the like-for-like figure.
    if cfg.drop_caches {
        drop_caches()?;
    }
    let cp_dst = work.path().join("copy.bin");
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
        &logs,
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
        &logs,
    )?;
    sync.wait_timeout(cfg.timeout)?;
    let sync_seconds = sync.elapsed();
    let cp_usage = cp.usage();
    std::fs::remove_file(&cp_dst)?;

    let mut row = LocalRow {
        size,
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
    let out = work.path().join("received");
    let (state_a, state_b) = (
        work.path().join("state-send"),
        work.path().join("state-recv"),
    );
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
        &logs,
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
        &logs,
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

fn markdown(rows: &[LocalRow], cfg: &LocalConfig) -> String {
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
        "| size | cp MB/s | cp+sync MB/s | trackshift MB/s | ts/cp | ts/(cp+sync) | cp RSS MiB | sender RSS MiB \
         | receiver RSS MiB | sender CPU s | receiver CPU s | status | note |\n",
    );
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n");
    let f2 = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.2}"));
    let f1 = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.1}"));
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            fmt_size(r.size),
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
    }
    s.push('\n');
    for line in verdicts(rows) {
        let _ = writeln!(s, "- {line}");
    }
    s
}

/// The three targets, each as a PASS/FAIL line.
fn verdicts(rows: &[LocalRow]) -> Vec<String> {
    let mut v = Vec::new();
    let pf = |ok: bool| if ok { "PASS" } else { "FAIL" };
    for r in rows {
        if let Some(ratio) = r.ratio_cp {
            v.push(format!(
                "{}: {} goodput {:.0}% of cp (target ≥ {:.0}%; {:.0}% of cp+sync)",
                pf(ratio >= TARGET_RATIO),
                fmt_size(r.size),
                ratio * 100.0,
                TARGET_RATIO * 100.0,
                r.ratio_cp_sync.unwrap_or(0.0) * 100.0
            ));
        }
        if let (Some(s), Some(rc)) = (r.sender, r.receiver) {
            let worst = s.rss_mib().max(rc.rss_mib());
            v.push(format!(
                "{}: {} peak RSS sender {:.1} MiB, receiver {:.1} MiB (target < {TARGET_RSS_MIB:.0} MiB)",
                pf(worst < TARGET_RSS_MIB),
                fmt_size(r.size),
                s.rss_mib(),
                rc.rss_mib()
            ));
        }
    }
    let measured: Vec<&LocalRow> = rows
        .iter()
        .filter(|r| r.sender.is_some() && r.receiver.is_some())
        .collect();
    if let (Some(first), Some(last)) = (measured.first(), measured.last()) {
        if measured.len() > 1 {
            let grow = |a: Option<Usage>, b: Option<Usage>| {
                b.map_or(0.0, |u| u.rss_mib()) - a.map_or(0.0, |u| u.rss_mib())
            };
            let gs = grow(first.sender, last.sender);
            let gr = grow(first.receiver, last.receiver);
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
    let mut rows = Vec::new();
    for (i, size) in cfg.sizes.iter().enumerate() {
        let row = one_size(&cfg, *size, i + 1)?;
        eprintln!(
            "[local {}] cp {:.1} MB/s, trackshift {}",
            fmt_size(*size),
            row.cp_mbs,
            row.trackshift_mbs
                .map_or(row.trackshift_status.as_str().to_string(), |m| format!(
                    "{m:.1} MB/s"
                ))
        );
        rows.push(row);
    }
    let md = markdown(&rows, &cfg);
    let header = format!(
        "# TrackShift local benchmark\n\nMachine: {} ({} cores, {} GiB, kernel {}).\n\n",
        machine["cpu_model"].as_str().unwrap_or("?"),
        machine["cores"],
        machine["mem_total_gib"],
        machine["kernel"].as_str().unwrap_or("?"),
    );
    std::fs::write(cfg.out_dir.join("local.md"), format!("{header}{md}"))?;
    std::fs::write(
        cfg.out_dir.join("local.json"),
        serde_json::to_string_pretty(&json!({
            "machine": machine,
            "dir": cfg.dir,
            "drop_caches": cfg.drop_caches,
            "rows": rows,
            "verdicts": verdicts(&rows),
        }))?,
    )?;
    Ok(md)
}

/// Default work dir: `/var/tmp` is disk-backed on Debian (unlike a tmpfs `/tmp`), so cp measures the disk.
pub fn default_dir() -> PathBuf {
    Path::new("/var/tmp").to_path_buf()
}
