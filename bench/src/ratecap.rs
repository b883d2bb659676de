//! `ratecap`: does `trackshift send --max-rate` hold? For each link, protocol, stream count and cap, one run of
//! a few seconds' sending, sampled from outside TrackShift ten times a second: the sender namespace's interface
//! counters (what went on the wire, IP headers included) and the receiver's `write` count (file bytes that
//! arrived). Once data flows and a second has passed, every 5 s window's wire rate is compared with the cap.
//! One uncapped run per link, protocol and stream count gives the ceiling a cap can be compared with.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};

use crate::link::{Link, LinkKind};
use crate::net::{trackshift_receiver, SECRET};
use crate::procs::{Proc, Spec};
use crate::util::{check_interrupted, fmt_size, slug, tail};

const PORT: u16 = 47400;
/// How often the counters are read.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Skipped after the first data arrives (key exchange, first chunk read, controllers settling).
const WARM_UP: Duration = Duration::from_secs(1);
/// The window the issue judges a cap over.
const WINDOW: Duration = Duration::from_secs(5);
/// A cap holds when every window's wire rate is within this of it.
const TOLERANCE: f64 = 0.05;
/// How long the receiver may take to listen.
const READY: Duration = Duration::from_secs(30);

/// One link the runs go over.
#[derive(Debug, Clone)]
pub struct CapLink {
    /// Shown in the table: `loopback`, `emulator 1Gbit 10ms`.
    pub label: String,
    pub kind: LinkKind,
    /// `trackshift-netlab up` flags (emulator only).
    pub flags: Vec<String>,
    /// The caps to try on this link (`none`: the uncapped ceiling, always run first).
    pub caps: Vec<String>,
}

#[derive(Debug)]
pub struct RateCapConfig {
    pub trackshift: PathBuf,
    pub links: Vec<CapLink>,
    pub protocols: Vec<String>,
    pub streams: Vec<u8>,
    /// How long each run sends before it is stopped (a run whose file arrives earlier ends there).
    pub seconds: Duration,
    pub size: u64,
    pub work_dir: PathBuf,
    pub out_dir: PathBuf,
}

/// One run's figures; rates in Mbit/s.
#[derive(Debug, Clone, Serialize)]
pub struct CapRow {
    pub link: String,
    pub protocol: String,
    pub streams: u8,
    pub cap: String,
    pub cap_mbit: Option<f64>,
    pub status: String,
    /// Seconds judged (from first data plus the warm-up to the last sample with data arriving).
    pub judged_s: f64,
    pub wire_mbit: Option<f64>,
    pub goodput_mbit: Option<f64>,
    pub window_min_mbit: Option<f64>,
    pub window_max_mbit: Option<f64>,
    /// The median of the `sending_mbps` the sender printed (`--json` `sending` events) while judged.
    pub reported_mbit: Option<f64>,
    pub verdict: String,
    pub logs: String,
}

/// One counter reading: seconds since the sender started, wire bytes, file bytes written.
#[derive(Debug, Clone, Copy)]
struct Sample {
    t: f64,
    wire: u64,
    file: u64,
}

pub fn run_all(cfg: RateCapConfig, machine: Value) -> Result<String> {
    std::fs::create_dir_all(&cfg.out_dir)?;
    std::fs::create_dir_all(&cfg.work_dir)?;
    let src = cfg.work_dir.join("payload.bin");
    eprintln!("creating a {} random file", fmt_size(cfg.size));
    crate::util::make_random_file(&src, cfg.size, 0x7a7e)?;
    let mut rows = Vec::new();
    for link in &cfg.links {
        for protocol in &cfg.protocols {
            for &streams in &cfg.streams {
                if protocol == "tcp" && streams > 1 {
                    continue; // --streams spreads the DCSP data plane only
                }
                let mut ceiling = None;
                for cap in std::iter::once("none").chain(link.caps.iter().map(String::as_str)) {
                    let row = one_run(&cfg, &src, link, protocol, streams, cap, ceiling)?;
                    if cap == "none" {
                        ceiling = row
                            .wire_mbit
                            .filter(|_| row.judged_s >= WINDOW.as_secs_f64());
                    }
                    eprintln!(
                        "[{}] {protocol} x{streams} cap {cap}: {} ({})",
                        link.label,
                        row.wire_mbit
                            .map_or("-".into(), |w| format!("{w:.1} Mbit/s")),
                        row.verdict
                    );
                    rows.push(row);
                }
            }
        }
    }
    let md = markdown(&rows, &cfg, &machine);
    std::fs::write(cfg.out_dir.join("results.md"), &md)?;
    std::fs::write(
        cfg.out_dir.join("results.json"),
        serde_json::to_string_pretty(&json!({ "machine": machine, "rows": rows }))?,
    )?;
    Ok(md)
}

fn one_run(
    cfg: &RateCapConfig,
    src: &Path,
    link: &CapLink,
    protocol: &str,
    streams: u8,
    cap: &str,
    ceiling: Option<f64>,
) -> Result<CapRow> {
    check_interrupted()?;
    let name = format!("{}-{protocol}-x{streams}-{cap}", link.label);
    let logs = cfg.out_dir.join("logs").join(slug(&name));
    let scratch = cfg.work_dir.join(slug(&name));
    std::fs::create_dir_all(&logs)?;
    let cap_mbit = parse_rate_mbit(cap)?;
    let mut row = CapRow {
        link: link.label.clone(),
        protocol: protocol.into(),
        streams,
        cap: cap.into(),
        cap_mbit,
        status: "failed".into(),
        judged_s: 0.0,
        wire_mbit: None,
        goodput_mbit: None,
        window_min_mbit: None,
        window_max_mbit: None,
        reported_mbit: None,
        verdict: String::new(),
        logs: logs.display().to_string(),
    };
    let outcome = measure(cfg, src, link, protocol, streams, cap, &scratch, &logs);
    let _ = std::fs::remove_dir_all(&scratch);
    match outcome {
        Ok((samples, reported)) => judge(&mut row, &samples, &reported, ceiling),
        Err(e) => {
            check_interrupted()?;
            row.verdict = format!("{e:#}");
        }
    }
    Ok(row)
}

/// One run: link up, receiver, sender with the cap, counters sampled until the file arrives or the time is up.
#[allow(clippy::too_many_arguments)] // the run's coordinates, each a different thing
fn measure(
    cfg: &RateCapConfig,
    src: &Path,
    link: &CapLink,
    protocol: &str,
    streams: u8,
    cap: &str,
    scratch: &Path,
    logs: &Path,
) -> Result<(Vec<Sample>, Vec<f64>)> {
    let name = format!("tsrc{}", std::process::id() % 100_000);
    let bound = cfg.seconds + Duration::from_secs(120);
    let mut net = Link::up_with(&link.kind, &name, "clean", &link.flags, bound, logs)?;
    let bin = cfg.trackshift.display().to_string();
    let listen = format!("{}:{PORT}", net.addr_b);
    let dir = |d: &str| -> Result<String> {
        let p = scratch.join(d);
        std::fs::create_dir_all(&p)?;
        Ok(p.display().to_string())
    };
    let (dst, sb, sa) = (dir("dst")?, dir("state-b")?, dir("state-a")?);
    let receiver = trackshift_receiver(&bin, &listen, &dst, &sb)
        .netns(&net.ns_b)
        .untimed()
        .stdout_lines();
    let mut receiver = Proc::spawn(&receiver, logs)?;
    receiver.wait_line(READY, |l| l.contains("\"listening\""))?;
    let mut argv = vec![
        bin.clone(),
        "send".into(),
        src.display().to_string(),
        "--to".into(),
        listen.clone(),
        "--secret".into(),
        SECRET.into(),
        "--state-dir".into(),
        sa,
        "--protocol".into(),
        protocol.into(),
        "--streams".into(),
        streams.to_string(),
        "--json".into(),
    ];
    if cap != "none" {
        argv.extend(["--max-rate".to_string(), cap.to_string()]);
    }
    let sender = Spec::new("trackshift-send", &argv)
        .netns(&net.ns_a)
        .untimed()
        .stdout_lines();
    let mut sender = Proc::spawn(&sender, logs)?;
    let samples = sample_until_done(&mut sender, &receiver, &net, cfg.seconds)?;
    sender.stop();
    receiver.stop();
    net.close();
    let reported = reported_rates(&sender.drain_lines());
    if samples.len() < 2 {
        bail!(
            "no samples: {}",
            tail(&logs.join("trackshift-send.stderr"), 2)
        );
    }
    Ok((samples, reported))
}

/// Reads the counters every [`SAMPLE_EVERY`] until the sender exits or `seconds` have passed.
fn sample_until_done(
    sender: &mut Proc,
    receiver: &Proc,
    net: &Link,
    seconds: Duration,
) -> Result<Vec<Sample>> {
    let mut samples = Vec::new();
    let wire_of = |pid: u32| wire_bytes(pid, net.ns_a == net.ns_b);
    loop {
        let t = sender.elapsed();
        let (Some(wire), Some(file)) = (wire_of(sender.pid()), written_bytes(receiver.pid()))
        else {
            break; // a process is gone
        };
        samples.push(Sample { t, wire, file });
        if sender.try_status()?.is_some() || t >= seconds.as_secs_f64() {
            break;
        }
        crate::util::sleep_checked(SAMPLE_EVERY)?;
    }
    Ok(samples)
}

/// Bytes sent by the interfaces of `pid`'s network namespace: `lo` when the run is on loopback (it carries both
/// directions), else every other interface.
fn wire_bytes(pid: u32, loopback: bool) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).ok()?;
    let mut sum = 0;
    for line in text.lines().skip(2) {
        let (iface, counters) = line.split_once(':')?;
        if (iface.trim() == "lo") != loopback {
            continue;
        }
        // rx: bytes packets errs drop fifo frame compressed multicast; then tx bytes.
        sum += counters.split_whitespace().nth(8)?.parse::<u64>().ok()?;
    }
    Some(sum)
}

/// Bytes `pid` has passed to `write`-like calls (`wchar` in `/proc/PID/io`): the file bytes a receiver wrote.
fn written_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The `sending_mbps` of the sender's `sending` events (about one a second), in order.
fn reported_rates(lines: &[String]) -> Vec<f64> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "sending")
        .filter_map(|v| v["sending_mbps"].as_f64())
        .collect()
}

/// Fills the row's rates and verdict from the samples.
fn judge(row: &mut CapRow, samples: &[Sample], reported: &[f64], ceiling: Option<f64>) {
    let first_data = samples
        .iter()
        .find(|s| s.file > samples[0].file + (1 << 20));
    let last_data = samples
        .windows(2)
        .rev()
        .find(|w| w[1].file > w[0].file)
        .map(|w| w[1]);
    let (Some(first), Some(last)) = (first_data, last_data) else {
        row.verdict = "no data arrived".into();
        return;
    };
    let from = first.t + WARM_UP.as_secs_f64();
    let judged: Vec<Sample> = samples
        .iter()
        .copied()
        .filter(|s| s.t >= from && s.t <= last.t)
        .collect();
    let (Some(a), Some(b)) = (judged.first(), judged.last()) else {
        row.verdict = "too short to judge".into();
        return;
    };
    let span = b.t - a.t;
    row.judged_s = span;
    row.status = "ok".into();
    row.wire_mbit = Some(rate(a.wire, b.wire, span));
    row.goodput_mbit = Some(rate(a.file, b.file, span));
    let windows = window_rates(&judged);
    row.window_min_mbit = windows.iter().copied().reduce(f64::min);
    row.window_max_mbit = windows.iter().copied().reduce(f64::max);
    // The events printed while judged: drop the first and last seconds' worth (ramp and tail).
    let r = if reported.len() > 4 {
        &reported[2..reported.len() - 1]
    } else {
        reported
    };
    row.reported_mbit = median(r.to_vec());
    row.verdict = verdict(row, windows.is_empty(), ceiling);
}

fn verdict(row: &CapRow, no_window: bool, ceiling: Option<f64>) -> String {
    let (Some(cap), Some(lo), Some(hi)) = (row.cap_mbit, row.window_min_mbit, row.window_max_mbit)
    else {
        return if no_window {
            format!("shorter than a {}s window", WINDOW.as_secs())
        } else {
            "uncapped: the ceiling".into()
        };
    };
    if ceiling.is_some_and(|c| cap > c * (1.0 - TOLERANCE)) {
        return format!(
            "cap above the uncapped ceiling ({:.0} Mbit/s): not binding here",
            ceiling.unwrap_or_default()
        );
    }
    let (lo_r, hi_r) = (lo / cap, hi / cap);
    let held = (1.0 - TOLERANCE..=1.0 + TOLERANCE).contains(&lo_r)
        && (1.0 - TOLERANCE..=1.0 + TOLERANCE).contains(&hi_r);
    format!(
        "{}: every 5 s window {:.3}-{:.3}x the cap",
        if held { "holds" } else { "OUT OF ±5%" },
        lo_r,
        hi_r
    )
}

/// Every [`WINDOW`]-long rate between samples (sliding by one sample), in Mbit/s.
fn window_rates(s: &[Sample]) -> Vec<f64> {
    let w = WINDOW.as_secs_f64();
    let mut out = Vec::new();
    let mut j = 0;
    for i in 0..s.len() {
        while j < s.len() && s[j].t - s[i].t < w {
            j += 1;
        }
        if j == s.len() {
            break;
        }
        out.push(rate(s[i].wire, s[j].wire, s[j].t - s[i].t));
    }
    out
}

fn rate(a: u64, b: u64, seconds: f64) -> f64 {
    b.saturating_sub(a) as f64 * 8.0 / 1e6 / seconds.max(f64::MIN_POSITIVE)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

fn markdown(rows: &[CapRow], cfg: &RateCapConfig, machine: &Value) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# `--max-rate`: asked against delivered\n\nMachine: {} ({} cores). {} random file; each run sends for \
         up to {} s. Rates in Mbit/s. *wire*: bytes the sender's namespace put on its interface (IP headers \
         included; on loopback `lo` also carries the receiver's acknowledgements); *goodput*: file bytes the \
         receiver wrote; both over the judged span (from a second after the first data to the last). *5 s \
         windows*: the lowest and highest wire rate over any 5 s of that span. *reported*: the median \
         `sending_mbps` of the sender's `--json` `sending` events.\n\nCommand: `{}`\n",
        machine["cpu_model"].as_str().unwrap_or("?"),
        machine["cores"],
        fmt_size(cfg.size),
        cfg.seconds.as_secs(),
        machine["command"].as_str().unwrap_or("?"),
    );
    md.push_str(
        "| link | protocol | streams | cap | wire | goodput | 5 s windows | reported | judged s | verdict |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    let f = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.1}"));
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {}–{} | {} | {:.1} | {} |",
            r.link,
            r.protocol,
            r.streams,
            r.cap,
            f(r.wire_mbit),
            f(r.goodput_mbit),
            f(r.window_min_mbit),
            f(r.window_max_mbit),
            f(r.reported_mbit),
            r.judged_s,
            r.verdict
        );
    }
    md
}

/// The links `ratecap` runs over by default.
pub fn default_links(
    netlab: Option<PathBuf>,
    loopback_caps: &[String],
    emulator_caps: &[String],
    emulator_flags: &[String],
) -> Result<Vec<CapLink>> {
    let mut links = vec![CapLink {
        label: "loopback".into(),
        kind: LinkKind::Loopback,
        flags: Vec::new(),
        caps: loopback_caps.to_vec(),
    }];
    if let Some(bin) = netlab {
        links.push(CapLink {
            label: format!("emulator {}", emulator_flags.join(" ")),
            kind: LinkKind::Netlab { bin },
            flags: emulator_flags.to_vec(),
            caps: emulator_caps.to_vec(),
        });
    }
    if links.iter().all(|l| l.caps.is_empty()) {
        bail!("no caps to try");
    }
    Ok(links)
}

/// `10Mbit`, `5Gbit`, `250kbit` (also `Mbps`, `Gbps`) in Mbit/s; `none` is no cap.
pub fn parse_rate_mbit(s: &str) -> Result<Option<f64>> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .with_context(|| format!("`{s}` has no unit (10Mbit, 1Gbit)"))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .with_context(|| format!("`{s}`: not a number before the unit"))?;
    let scale = match unit.to_ascii_lowercase().as_str() {
        "kbit" | "kbps" => 1e-3,
        "mbit" | "mbps" => 1.0,
        "gbit" | "gbps" => 1e3,
        other => bail!("`{s}`: unknown unit `{other}` (kbit, Mbit, Gbit)"),
    };
    Ok(Some(n * scale))
}
