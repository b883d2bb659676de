//! `soak.md`: the verdict, the faults with what each cost, the totals, the sender runs and the link's counters.

use std::fmt::Write as _;

use serde_json::Value;

use super::{Injected, SoakReport};
use crate::util::fmt_size;

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1u64 << 20) as f64)
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map(f).unwrap_or_else(|| "—".into())
}

fn stalled(f: &Injected) -> String {
    match f.stalled_s {
        Some(s) => format!("{s:.1}"),
        None if f.superseded => "— (next fault first)".into(),
        None => "—".into(),
    }
}

/// Sums a field over the receivers' transfer summaries.
fn receiver_sum(r: &SoakReport, key: &str) -> u64 {
    r.receiver_runs
        .iter()
        .flat_map(|p| &p.transfers)
        .filter(|v| v["event"] == "summary")
        .filter_map(|v| v[key].as_u64())
        .sum()
}

pub fn markdown(r: &SoakReport) -> String {
    let mut md = String::new();
    let m = &r.machine;
    let _ = writeln!(md, "# TrackShift fault soak, seed {}\n", r.seed);
    let _ = writeln!(
        md,
        "Machine: {} ({} cores, {} GiB, kernel {}), commit {}.\n",
        m["cpu_model"].as_str().unwrap_or("?"),
        m["cores"],
        m["mem_total_gib"],
        m["kernel"].as_str().unwrap_or("?"),
        m["workspace_commit"].as_str().unwrap_or("?"),
    );
    let _ = writeln!(
        md,
        "One {} random file, chunks of {}, every sender run capped at `--max-rate {}`, through \
         `trackshift-netlab up --profile {} {}`; the receiver's output dir a tmpfs of the file's size plus 32 MiB. \
         Schedule: {} faults, gaps adding up to {:.0} s. Command: `{}`.\n",
        fmt_size(r.size),
        r.chunk_size,
        r.rate,
        r.profile,
        r.link_flags.join(" "),
        r.plan.faults.len(),
        r.plan.moving_time().as_secs_f64(),
        r.command,
    );
    let verdict = if r.passed() { "PASS" } else { "FAIL" };
    let _ = writeln!(md, "**{verdict}** after {:.0} s.\n", r.seconds);
    if let Some(e) = &r.error {
        let _ = writeln!(md, "- stopped: {e}");
    }
    for a in &r.anomalies {
        let _ = writeln!(md, "- anomaly: {a}");
    }
    for f in &r.end.failures {
        let _ = writeln!(md, "- end check failed: {f}");
    }
    if r.passed() {
        let _ = writeln!(
            md,
            "- the delivered file is byte-identical (SHA-256 {})\n- the output dir holds only {:?}\n\
             - `trackshift list --json` shows session {} completed on both sides",
            r.end.source_sha256,
            r.end.output_dir,
            r.end.session_id.as_deref().unwrap_or("?"),
        );
    }

    let _ = writeln!(
        md,
        "\n## Faults\n\n\
         *at*: seconds since the first sender run started. *progress before*: the receiver's durable bytes \
         (`status --json` `bytes_done + bytes_partial`). *down*: how long the fault itself lasted (a dead \
         process, a cut link, a full disk). *stalled*: from the fault until the durable progress passed what \
         it was before. *link A→B*: bytes side A sent over those seconds (the TUN counter in its namespace, \
         IP headers included). *re-sent*: those bytes less the progress made meanwhile: bytes sent again, \
         or lost with a process or the link.\n"
    );
    let _ = writeln!(
        md,
        "| # | at s | fault | what was done | progress before MiB | down s | stalled s | link A→B MiB | re-sent MiB |\n\
         |---:|---:|---|---|---:|---:|---:|---:|---:|"
    );
    for f in &r.faults {
        let _ = writeln!(
            md,
            "| {} | {:.1} | {} | {} | {} | {:.1} | {} | {} | {} |",
            f.no,
            f.at_s,
            f.fault.label(),
            f.detail,
            mib(f.done_before + f.partial_before),
            f.fault.down().as_secs_f64(),
            stalled(f),
            opt(f.wire_a_to_b, mib),
            opt(f.resent(), mib),
        );
    }
    let kills = r.faults.iter().filter(|f| f.fault.is_kill()).count();
    let down: f64 = r.faults.iter().map(|f| f.fault.down().as_secs_f64()).sum();
    let stall: f64 = r.faults.iter().filter_map(|f| f.stalled_s).sum();
    let resent: u64 = r.faults.iter().filter_map(Injected::resent).sum();
    let wire: u64 = r.faults.iter().filter_map(|f| f.wire_a_to_b).sum();
    let _ = writeln!(
        md,
        "| **total** | | **{} faults, {kills} kills** | | | **{down:.1}** | **{stall:.1}** | **{}** | **{}** |\n",
        r.faults.len(),
        mib(wire),
        mib(resent),
    );

    let count = |label: &str| r.faults.iter().filter(|f| f.fault.label() == label).count();
    let _ = writeln!(md, "## Totals\n");
    let _ = writeln!(
        md,
        "- faults injected: {} of {} planned: {} sender kills, {} receiver kills, {} link cuts, {} address \
         changes, {} full disks",
        r.faults.len(),
        r.plan.faults.len(),
        count("kill sender"),
        count("kill receiver"),
        count("link cut"),
        count("address change"),
        count("disk full"),
    );
    let _ = writeln!(
        md,
        "- stalled {stall:.1} s in all (the faults themselves lasted {down:.1} s); re-sent or lost {} MiB \
         ({:.3}× the file)",
        mib(resent),
        resent as f64 / r.size.max(1) as f64
    );
    let _ = writeln!(
        md,
        "- link A→B carried {} MiB for a {} MiB file ({:.3}×), B→A {} MiB",
        mib(r.wire_end.a_to_b),
        mib(r.size),
        r.wire_end.a_to_b as f64 / r.size.max(1) as f64,
        mib(r.wire_end.b_to_a),
    );
    let runs = &r.sender_runs;
    let on = |p: &str| {
        runs.iter()
            .filter(|x| x.protocol.as_deref() == Some(p))
            .count()
    };
    let ends = |e: &str| runs.iter().filter(|x| x.end == e).count();
    let exits: Vec<String> = {
        let mut codes: Vec<&str> = runs
            .iter()
            .map(|x| x.end.as_str())
            .filter(|e| *e != "killed")
            .collect();
        codes.sort();
        codes.dedup();
        codes.iter().map(|c| format!("{} {c}", ends(c))).collect()
    };
    let summarized: Vec<u64> = runs.iter().filter_map(|x| x.bytes_on_wire).collect();
    let _ = writeln!(
        md,
        "- sender runs: {} ({} over UDP, {} over TCP{}); {} killed, {}; the {} that printed a summary \
         put {} MiB on the wire by their own count (`bytes_on_wire`)",
        runs.len(),
        on("udp"),
        on("tcp"),
        match runs.len() - on("udp") - on("tcp") {
            0 => String::new(),
            n => format!(", {n} before choosing"),
        },
        ends("killed"),
        if exits.is_empty() {
            "none exited by itself".to_string()
        } else {
            exits.join(", ")
        },
        summarized.len(),
        mib(summarized.iter().sum()),
    );
    let _ = writeln!(
        md,
        "- receiver processes: {}; their summaries counted {} unauthentic datagrams dropped (corrupted), {} \
         replayed or stale (duplicated), {} recovered by FEC, {} path changes",
        r.receiver_runs.len(),
        receiver_sum(r, "packets_unauthentic"),
        receiver_sum(r, "packets_replayed"),
        receiver_sum(r, "fec_recovered"),
        receiver_sum(r, "path_changes"),
    );
    if !r.progress_drops.is_empty() {
        let _ = writeln!(
            md,
            "- the durable progress went down {} times between samples (an unfinished chunk's record shrank; \
             verified bytes never did): {}",
            r.progress_drops.len(),
            r.progress_drops.join("; ")
        );
    }
    if let Some(c) = &r.link_counters {
        let _ = writeln!(md, "\n## Link counters (emulator)\n");
        let _ = writeln!(md, "| counter | A→B | B→A |\n|---|---:|---:|");
        if let (Some(ab), Some(ba)) = (c["a_to_b"].as_object(), c["b_to_a"].as_object()) {
            for (k, v) in ab {
                let _ = writeln!(md, "| {k} | {v} | {} |", ba.get(k).unwrap_or(&Value::Null));
            }
        }
    }

    let _ = writeln!(
        md,
        "\n## Sender runs\n\n| run | asked | ran over | start s | end s | end | retries | note |\n\
         |---:|---|---|---:|---:|---|---:|---|"
    );
    for x in runs {
        let note = match (&x.error, x.bytes_on_wire) {
            (Some(e), _) => e.clone(),
            (None, Some(b)) => format!(
                "ok: {} MiB on the wire, {} connections",
                mib(b),
                x.connections.unwrap_or(0)
            ),
            _ => String::new(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.1} | {} | {} | {} | {} |",
            x.no,
            x.path.name(),
            x.protocol.as_deref().unwrap_or("—"),
            x.started_s,
            opt(x.ended_s, |s| format!("{s:.1}")),
            x.end,
            x.retries,
            note.replace('|', "/"),
        );
    }
    md
}
