//! Result rows and their renderings: a Markdown table, JSON, and an SVG bar chart (hand-written SVG: no
//! fonts, no native dependencies).

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use crate::procs::Usage;

/// Decimal megabyte: goodput is reported in MB/s = 10^6 bytes per second, like link rates.
pub const MB: f64 = 1e6;
/// Decimal gigabyte: CPU cost is reported in CPU seconds per GB = 10^9 bytes moved.
pub const GB: f64 = 1e9;

/// CPU seconds (user + system) per GB moved, of each end's process tree and of both together.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CpuPerGb {
    pub sender: Option<f64>,
    pub receiver: Option<f64>,
    /// Sender plus receiver; `None` unless both were measured (cp: its one process).
    pub both: Option<f64>,
}

impl CpuPerGb {
    /// `None` when nothing moved or neither end was measured.
    pub fn of(sender: Option<Usage>, receiver: Option<Usage>, bytes: u64) -> Option<CpuPerGb> {
        if bytes == 0 || (sender.is_none() && receiver.is_none()) {
            return None;
        }
        let per_gb = |u: Option<Usage>| u.map(|u| u.cpu_s / (bytes as f64 / GB));
        let (sender, receiver) = (per_gb(sender), per_gb(receiver));
        let both = match (sender, receiver) {
            (Some(s), Some(r)) => Some(s + r),
            _ => None,
        };
        Some(CpuPerGb {
            sender,
            receiver,
            both,
        })
    }
}

/// Two decimals, or `–` when there is no value (table cells).
pub fn f2(v: Option<f64>) -> String {
    v.map_or("–".to_string(), |v| format!("{v:.2}"))
}

/// Three decimals, or `–`.
pub fn f3(v: Option<f64>) -> String {
    v.map_or("–".to_string(), |v| format!("{v:.3}"))
}

/// One decimal, or `–`.
pub fn f1(v: Option<f64>) -> String {
    v.map_or("–".to_string(), |v| format!("{v:.1}"))
}

/// The three CPU-per-GB cells of a table row: sender, receiver, both.
pub fn cpu_cells(c: Option<CpuPerGb>) -> String {
    format!(
        "{} | {} | {}",
        f2(c.and_then(|c| c.sender)),
        f2(c.and_then(|c| c.receiver)),
        f2(c.and_then(|c| c.both))
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Status {
    #[serde(rename = "ok")]
    Ok,
    #[serde(rename = "timed out")]
    TimedOut,
    #[serde(rename = "failed")]
    Failed,
    #[serde(rename = "n/a")]
    NotAvailable,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::TimedOut => "timed out",
            Status::Failed => "failed",
            Status::NotAvailable => "n/a",
        }
    }
}

/// What a row is compared against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// TrackShift itself.
    Trackshift,
    /// iperf3: the TCP ceiling of the link, not a file transfer.
    Reference,
    /// The tools a user would pick instead (rsync, scp, uftp).
    Peer,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub label: String,
    pub tool: String,
    pub family: Family,
    pub congestion_control: Option<String>,
    pub status: Status,
    /// MB/s of file bytes delivered intact (iperf3: its measured receiver rate). For a timed-out row: the
    /// bytes that arrived over the time allowed, an upper bound.
    pub goodput_mbs: Option<f64>,
    pub ratio_capacity: Option<f64>,
    pub ratio_best_peer: Option<f64>,
    pub file_bytes: u64,
    pub bytes_arrived: u64,
    pub seconds: f64,
    pub sha256_ok: Option<bool>,
    pub sender: Option<Usage>,
    pub receiver: Option<Usage>,
    /// Each end's CPU seconds per GB moved (filled with the ratios, once the row is final).
    pub cpu_per_gb: Option<CpuPerGb>,
    /// Seconds of the `sync` after the transfer, included in `seconds` (`local` only; 0 when not run).
    pub sync_seconds: f64,
    pub note: String,
    pub link_counters: Option<Value>,
    pub logs: String,
}

impl Row {
    /// CPU seconds the link emulator used during this row's run (its `counters` event).
    pub fn link_cpu_seconds(&self) -> Option<f64> {
        self.link_counters
            .as_ref()?
            .get("cpu_seconds")?
            .as_f64()
            .filter(|s| *s > 0.0)
    }

    /// IP bytes the sending side put on the emulated link (its `a_to_b.bytes_in`: dropped packets, headers,
    /// parity, retransmissions and ACK-less overhead included) per byte of the file, for a delivered file.
    pub fn wire_per_file_byte(&self) -> Option<f64> {
        if self.status != Status::Ok || self.file_bytes == 0 {
            return None;
        }
        let sent = self
            .link_counters
            .as_ref()?
            .get("a_to_b")?
            .get("bytes_in")?
            .as_f64()?;
        Some(sent / self.file_bytes as f64).filter(|r| *r > 0.0)
    }

    /// Bytes the CPU figures are divided by: the file for a delivered one, else what arrived (iperf3's
    /// stream, a timed-out transfer's part); nothing for a failed row.
    pub fn moved_bytes(&self) -> u64 {
        match self.status {
            Status::Ok if self.file_bytes > 0 => self.file_bytes,
            Status::Ok | Status::TimedOut => self.bytes_arrived,
            Status::Failed | Status::NotAvailable => 0,
        }
    }

    /// Fills [`Row::cpu_per_gb`] from the two ends' usage and the bytes moved.
    pub fn fill_cpu_per_gb(&mut self) {
        self.cpu_per_gb = CpuPerGb::of(self.sender, self.receiver, self.moved_bytes());
    }

    pub fn new(label: &str, tool: &str, family: Family, cc: Option<&str>) -> Row {
        Row {
            label: label.to_string(),
            tool: tool.to_string(),
            family,
            congestion_control: cc.map(String::from),
            status: Status::Failed,
            goodput_mbs: None,
            ratio_capacity: None,
            ratio_best_peer: None,
            file_bytes: 0,
            bytes_arrived: 0,
            seconds: 0.0,
            sha256_ok: None,
            sender: None,
            receiver: None,
            cpu_per_gb: None,
            sync_seconds: 0.0,
            note: String::new(),
            link_counters: None,
            logs: String::new(),
        }
    }
}

/// Issue 4's target on `clean`: this fraction of iperf3's goodput.
const CLEAN_TARGET: f64 = 0.90;

#[derive(Debug, Clone, Serialize)]
pub struct ProfileResult {
    pub profile: String,
    pub link: String,
    /// Nominal per-direction rate in Mbit/s and loss fraction, when the profile is known.
    pub rate_mbit: Option<f64>,
    pub loss: Option<f64>,
    /// Payload capacity in MB/s: rate × (1 − loss) / 8; for `clean`/unknown, iperf3's best measured rate.
    pub capacity_mbs: Option<f64>,
    pub capacity_source: String,
    pub best_peer_mbs: Option<f64>,
    pub file_size: u64,
    pub timeout_s: f64,
    pub rows: Vec<Row>,
    /// Cores the emulator, sender and receiver share, and one core's SHA-256 rate: with the emulator's own
    /// CPU time per row they bound what a verified transfer can reach on this machine.
    pub cores: usize,
    pub sha256_mbs: f64,
}

impl ProfileResult {
    /// Fills both ratio columns once all rows are in.
    pub fn compute_ratios(&mut self) {
        self.best_peer_mbs = self
            .rows
            .iter()
            .filter(|r| r.family == Family::Peer && r.status == Status::Ok)
            .filter_map(|r| r.goodput_mbs)
            .fold(None, |m: Option<f64>, g| Some(m.map_or(g, |m| m.max(g))));
        for r in &mut self.rows {
            let Some(g) = r.goodput_mbs else { continue };
            r.ratio_capacity = self.capacity_mbs.filter(|c| *c > 0.0).map(|c| g / c);
            if r.family != Family::Reference {
                r.ratio_best_peer = self.best_peer_mbs.filter(|b| *b > 0.0).map(|b| g / b);
            }
        }
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "### Profile `{}` ({})\n", self.profile, self.link);
        let cap = match self.capacity_mbs {
            Some(c) => format!("{c:.2} MB/s ({})", self.capacity_source),
            None => "unknown".into(),
        };
        let best = self
            .best_peer_mbs
            .map_or("none finished".into(), |b| format!("{b:.2} MB/s"));
        let _ = writeln!(
            s,
            "File {} ({} bytes), timeout {:.0} s per transfer. Payload capacity: {cap}. Best peer: {best}.\n",
            crate::util::fmt_size(self.file_size),
            self.file_size,
            self.timeout_s
        );
        s.push_str(
            "| tool | status | goodput MB/s | × capacity | × best peer | time s | wire × file | link CPU s | sender CPU s/GB \
             | receiver CPU s/GB | both CPU s/GB | sender peak RSS MiB | receiver peak RSS MiB | note |\n",
        );
        s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for r in &self.rows {
            let goodput = match (r.status, r.goodput_mbs) {
                (Status::TimedOut, Some(g)) => format!("≤ {g:.2}"),
                (_, g) => f2(g),
            };
            let secs = if r.seconds > 0.0 {
                format!("{:.1}", r.seconds)
            } else {
                "–".into()
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.label,
                r.status.as_str(),
                goodput,
                f2(r.ratio_capacity),
                f2(r.ratio_best_peer),
                secs,
                f3(r.wire_per_file_byte()),
                f2(r.link_cpu_seconds()),
                cpu_cells(r.cpu_per_gb),
                f1(r.sender.map(|u| u.rss_mib())),
                f1(r.receiver.map(|u| u.rss_mib())),
                r.note.replace('|', "/"),
            );
        }
        if let Some(line) = self.cpu_ceiling() {
            let _ = writeln!(s, "\n{line}");
        }
        s
    }

    /// When the link has no rate limit (`clean`), the programs and the emulator share the machine's cores and
    /// CPU decides the rate: the emulator's CPU per file MB (measured on TrackShift's own run) plus the SHA-256
    /// passes bound TrackShift's goodput before any of its other work is counted.
    fn cpu_ceiling(&self) -> Option<String> {
        if self.rate_mbit.is_some() || self.sha256_mbs <= 0.0 {
            return None;
        }
        let ts = self.rows.iter().find(|r| {
            r.family == Family::Trackshift
                && r.status == Status::Ok
                && r.link_cpu_seconds().is_some()
        })?;
        let file_mb = self.file_size as f64 / MB;
        let link_per_mb = ts.link_cpu_seconds()? / file_mb;
        let passes = crate::util::TRANSFER_SHA256_PASSES as f64;
        let hash_per_mb = passes / self.sha256_mbs;
        let ceiling = self.cores as f64 / (link_per_mb + hash_per_mb);
        let reference = self
            .capacity_mbs
            .map(|c| format!(", {:.2} × the payload capacity ({c:.1} MB/s)", ceiling / c))
            .unwrap_or_default();
        let mut line = format!(
            "CPU ceiling: the emulator spent {:.2} CPU ms per file MB forwarding {}'s datagrams, and the \
             {passes:.0} SHA-256 passes a transfer makes cost {:.2} CPU ms per MB at {:.0} MB/s per core. On {} \
             shared cores these two alone bound its goodput at {} / ({:.2} + {:.2} ms) = **{ceiling:.1} MB/s**\
             {reference}; the programs' own other work (AEAD, socket calls, writes) comes on top.",
            link_per_mb * 1e3,
            ts.label,
            hash_per_mb * 1e3,
            self.sha256_mbs,
            self.cores,
            self.cores,
            link_per_mb * 1e3,
            hash_per_mb * 1e3,
        );
        if let Some(budget) = self.iperf3_budget(link_per_mb + hash_per_mb) {
            line.push(' ');
            line.push_str(&budget);
        }
        Some(line)
    }

    /// What the fastest iperf3 run spent per MB in all (emulator and both ends), and what reaching
    /// [`CLEAN_TARGET`] of its rate on the same cores would leave TrackShift once `fixed_per_mb` is paid.
    fn iperf3_budget(&self, fixed_per_mb: f64) -> Option<String> {
        let best = self
            .rows
            .iter()
            .filter(|r| r.family == Family::Reference && r.status == Status::Ok && r.seconds > 0.0)
            .max_by(|a, b| {
                a.goodput_mbs
                    .unwrap_or(0.0)
                    .total_cmp(&b.goodput_mbs.unwrap_or(0.0))
            })?;
        let moved_mb = best.goodput_mbs? * best.seconds;
        let link = best.link_cpu_seconds()? / moved_mb;
        let ends = (best.sender?.cpu_s + best.receiver?.cpu_s) / moved_mb;
        let budget = (link + ends) / CLEAN_TARGET;
        Some(format!(
            "{} used {:.2} CPU ms per MB in all (emulator {:.2}, its two ends {:.2}); {:.0}% of its rate on the \
             same cores leaves TrackShift {:.2} ms per MB, **{:.2} ms** after the emulator and the hashing, for \
             AEAD, sockets and disk.",
            best.label,
            (link + ends) * 1e3,
            link * 1e3,
            ends * 1e3,
            CLEAN_TARGET * 100.0,
            budget * 1e3,
            (budget - fixed_per_mb) * 1e3,
        ))
    }

    /// Horizontal bars of goodput per row, with the payload capacity as a dashed reference line.
    pub fn svg(&self) -> String {
        const W: f64 = 960.0;
        const LEFT: f64 = 230.0;
        const RIGHT: f64 = 150.0;
        const TOP: f64 = 60.0;
        const BAR: f64 = 22.0;
        const GAP: f64 = 10.0;
        let n = self.rows.len().max(1) as f64;
        let h = TOP + n * (BAR + GAP) + 50.0;
        let max_val = self
            .rows
            .iter()
            .filter_map(|r| r.goodput_mbs)
            .chain(self.capacity_mbs)
            .fold(0.0f64, f64::max)
            .max(1e-9)
            * 1.08;
        let plot_w = W - LEFT - RIGHT;
        let x = |v: f64| LEFT + v / max_val * plot_w;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="13">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="24" font-size="16" font-weight="bold" text-anchor="middle">Goodput on profile "{}" ({}, {}), MB/s</text>"#,
            W / 2.0,
            xml(&self.profile),
            xml(&self.link),
            crate::util::fmt_size(self.file_size)
        );
        // Axis ticks.
        let step = nice_step(max_val / 6.0);
        let mut t = 0.0;
        while t <= max_val {
            let tx = x(t);
            let _ = writeln!(
                s,
                r##"<line x1="{tx:.1}" y1="{TOP}" x2="{tx:.1}" y2="{:.1}" stroke="#ddd"/><text x="{tx:.1}" y="{:.1}" text-anchor="middle" fill="#555">{}</text>"##,
                h - 40.0,
                h - 24.0,
                fmt_tick(t)
            );
            t += step;
        }
        for (i, r) in self.rows.iter().enumerate() {
            let y = TOP + i as f64 * (BAR + GAP);
            let color = match (r.family, r.status) {
                (_, Status::Failed | Status::NotAvailable) => "#bbbbbb",
                (Family::Trackshift, _) => "#1f77b4",
                (Family::Reference, _) => "#7f7f7f",
                (Family::Peer, _) => "#ff7f0e",
            };
            let opacity = if r.status == Status::TimedOut {
                0.45
            } else {
                1.0
            };
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                LEFT - 8.0,
                y + BAR * 0.7,
                xml(&r.label)
            );
            let g = r.goodput_mbs.unwrap_or(0.0);
            let _ = writeln!(
                s,
                r#"<rect x="{LEFT}" y="{y:.1}" width="{:.1}" height="{BAR}" fill="{color}" fill-opacity="{opacity}"/>"#,
                (x(g) - LEFT).max(0.0)
            );
            let text = match r.status {
                Status::Ok => format!("{g:.2}"),
                Status::TimedOut => format!("≤ {g:.2} (timed out)"),
                other => other.as_str().to_string(),
            };
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
                x(g) + 6.0,
                y + BAR * 0.7,
                xml(&text)
            );
        }
        if let Some(c) = self.capacity_mbs {
            let cx = x(c);
            let _ = writeln!(
                s,
                r##"<line x1="{cx:.1}" y1="{:.1}" x2="{cx:.1}" y2="{:.1}" stroke="#d62728" stroke-width="2" stroke-dasharray="6,4"/><text x="{cx:.1}" y="{:.1}" text-anchor="middle" fill="#d62728">capacity {c:.1} MB/s</text>"##,
                TOP - 12.0,
                h - 40.0,
                TOP - 16.0
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

fn nice_step(raw: f64) -> f64 {
    let mag = 10f64.powf(raw.max(1e-9).log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * mag >= raw {
            return m * mag;
        }
    }
    10.0 * mag
}

fn fmt_tick(v: f64) -> String {
    if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn row(label: &str, family: Family, status: Status, g: f64) -> Row {
        let mut r = Row::new(label, label, family, None);
        r.status = status;
        r.goodput_mbs = Some(g);
        r
    }

    #[test]
    fn ratios_use_finished_peers_only() {
        let mut p = ProfileResult {
            profile: "wan".into(),
            link: "veth".into(),
            rate_mbit: Some(200.0),
            loss: Some(0.01),
            capacity_mbs: Some(24.75),
            capacity_source: "test".into(),
            best_peer_mbs: None,
            file_size: 1,
            timeout_s: 1.0,
            rows: vec![
                row("ts", Family::Trackshift, Status::Ok, 20.0),
                row("iperf3", Family::Reference, Status::Ok, 24.0),
                row("rsync", Family::Peer, Status::Ok, 10.0),
                row("scp", Family::Peer, Status::TimedOut, 15.0),
            ],
            cores: 2,
            sha256_mbs: 1000.0,
        };
        p.compute_ratios();
        assert_eq!(p.best_peer_mbs, Some(10.0));
        assert_eq!(p.rows[0].ratio_best_peer, Some(2.0));
        assert_eq!(p.rows[1].ratio_best_peer, None);
        assert!(p.markdown().contains("| ts | ok | 20.00 |"));
        assert!(p.svg().starts_with("<svg"));
        assert!(
            !p.markdown().contains("CPU ceiling"),
            "only for a link without a rate"
        );
    }

    fn usage(cpu_s: f64) -> crate::procs::Usage {
        crate::procs::Usage {
            wall_s: 10.0,
            cpu_s,
            user_s: cpu_s,
            sys_s: 0.0,
            max_rss_kib: 1024,
        }
    }

    #[test]
    fn cpu_per_gb_is_per_end_and_summed() {
        let mut r = row("ts", Family::Trackshift, Status::Ok, 100.0);
        (r.file_bytes, r.sender, r.receiver) = (2_000_000_000, Some(usage(2.0)), Some(usage(3.0)));
        r.fill_cpu_per_gb();
        let c = r.cpu_per_gb.unwrap();
        assert_eq!(
            (c.sender, c.receiver, c.both),
            (Some(1.0), Some(1.5), Some(2.5))
        );
        assert_eq!(cpu_cells(r.cpu_per_gb), "1.00 | 1.50 | 2.50");
        // One end unmeasured: no sum; a failed row moved nothing.
        r.receiver = None;
        r.fill_cpu_per_gb();
        assert_eq!(cpu_cells(r.cpu_per_gb), "1.00 | – | –");
        r.status = Status::Failed;
        r.fill_cpu_per_gb();
        assert_eq!(r.cpu_per_gb, None);
        // iperf3 moves no file: its stream's bytes count.
        let mut i = row("iperf3", Family::Reference, Status::Ok, 100.0);
        (i.bytes_arrived, i.sender, i.receiver) = (500_000_000, Some(usage(1.0)), Some(usage(1.0)));
        i.fill_cpu_per_gb();
        assert_eq!(i.cpu_per_gb.unwrap().both, Some(4.0));
    }

    #[test]
    fn wire_bytes_are_what_the_sender_put_on_the_link_per_file_byte() {
        let mut r = row("ts", Family::Trackshift, Status::Ok, 50.0);
        r.file_bytes = 1_000_000;
        assert_eq!(r.wire_per_file_byte(), None, "no emulator, no figure");
        r.link_counters =
            Some(serde_json::json!({"a_to_b": {"bytes_in": 1_050_000}, "cpu_seconds": 1.0}));
        assert_eq!(r.wire_per_file_byte(), Some(1.05));
        assert_eq!(f3(r.wire_per_file_byte()), "1.050");
        r.status = Status::Failed;
        assert_eq!(
            r.wire_per_file_byte(),
            None,
            "a failed row delivered no file to divide by"
        );
    }

    #[test]
    fn cpu_ceiling_adds_link_and_hash_cost_per_mb() {
        let mut ts = row("ts", Family::Trackshift, Status::Ok, 50.0);
        ts.link_counters = Some(serde_json::json!({"event": "counters", "cpu_seconds": 1.0}));
        let mut p = ProfileResult {
            profile: "clean".into(),
            link: "netlab".into(),
            rate_mbit: None,
            loss: None,
            capacity_mbs: Some(100.0),
            capacity_source: "iperf3".into(),
            best_peer_mbs: None,
            file_size: 100_000_000,
            timeout_s: 1.0,
            rows: vec![ts],
            cores: 2,
            sha256_mbs: 1000.0,
        };
        p.compute_ratios();
        // Link 1 s / 100 MB = 10 ms/MB; 3 passes at 1000 MB/s = 3 ms/MB; 2 cores / 13 ms per MB.
        let md = p.markdown();
        assert!(!md.contains("in all"), "no iperf3 row, no budget: {md}");
        // iperf3: 100 MB/s for 10 s = 1000 MB; emulator 4 s and ends 1 + 1 s: 6 ms/MB in all; / 0.9 = 6.67.
        let mut iperf = row("iperf3", Family::Reference, Status::Ok, 100.0);
        iperf.seconds = 10.0;
        iperf.link_counters = Some(serde_json::json!({"cpu_seconds": 4.0}));
        (iperf.sender, iperf.receiver) = (Some(usage(1.0)), Some(usage(1.0)));
        p.rows.push(iperf);
        let md = p.markdown();
        assert!(
            md.contains("iperf3 used 6.00 CPU ms per MB in all (emulator 4.00, its two ends 2.00); 90% of its rate on the same cores leaves TrackShift 6.67 ms per MB, **-6.33 ms**"),
            "{md}"
        );
        assert!(
            md.contains("**153.8 MB/s**, 1.54 × the payload capacity"),
            "{md}"
        );
        assert!(
            md.contains("| ts | ok | 50.00 | 0.50 | – | – | – | 1.00 |"),
            "{md}"
        );
    }
}
