//! The fault soak's short version (issue 18 point 4), in CI: `trackshift-bench soak` over a 32 MiB file through
//! the emulated link (`wan` with corrupted, duplicated and reordered datagrams), with a few kills of either
//! side, a link cut, an address change of the sender, the receiver's disk filled mid-chunk, and a run over TCP.
//! The soak checks the end state itself; this test checks it again from what the soak kept: the delivered file
//! byte-identical, nothing else in the output dir, `trackshift list --json` showing the session completed on
//! both sides, every kind of fault injected, both data paths run, and nothing left behind (namespaces, mount).
//!
//! Bounded: the soak stops itself after `SOAK_TIMEOUT`, and is stopped here (SIGTERM, then SIGKILL) if it
//! overruns; whatever it left is removed on the way out (`trackshift-netlab down`, a lazy umount).
//!
//! Needs root, /dev/net/tun, iptables and the three binaries (`cargo build -p trackshift-cli -p trackshift-netlab
//! -p trackshift-bench`, or `cargo build --workspace --bins` as scripts/test.sh does).
#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is a failing test, with its message

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use trackshift_netlab::locate_binary;
use trackshift_scenarios::{bin, dir_names, list, sha256_file, Scratch};

/// The schedule: 4 kills bring one link cut, one address change and one full disk (bench/src/soak/plan.rs).
const SEED: &str = "3";
const KILLS: &str = "4";
const SIZE: &str = "32MiB";
/// The gaps the schedule leaves the transfer between faults; the rate cap makes the file last longer.
const DURATION: &str = "20s";
/// The soak's own bound, and this test's beyond it (the soak's cleanup after a SIGTERM included).
const SOAK_TIMEOUT: &str = "110s";
const HARD_LIMIT: Duration = Duration::from_secs(140);
const TERM_GRACE: Duration = Duration::from_secs(20);

/// Removes what a soak that was stopped here may have left: its namespaces, its mount.
struct Leftovers {
    netlab: PathBuf,
    name: String,
    work: PathBuf,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let _ = Command::new(&self.netlab)
            .args(["down", "--name", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        for m in mounts_under(&self.work) {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
    }
}

/// Mount points at or below `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.display().to_string();
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .filter(|m| m.starts_with(&d))
        .collect()
}

fn require(ok: bool, what: &str) {
    assert!(ok, "the soak cannot run here: {what}");
}

fn has_command(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_short_fault_soak_delivers_the_file_intact() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Uid:")
                .map(|r| r.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    require(uid, "it needs root (network namespaces, a tmpfs mount)");
    require(
        Path::new("/dev/net/tun").exists(),
        "/dev/net/tun is missing (modprobe tun)",
    );
    for (cmd, pkg) in [
        ("ip", "iproute2"),
        ("iptables", "iptables"),
        ("mount", "util-linux"),
    ] {
        require(
            has_command(cmd),
            &format!("`{cmd}` is missing: apt-get install -y {pkg} (scripts/deps.sh)"),
        );
    }
    let trackshift = bin();
    let netlab = locate_binary("trackshift-netlab");
    let bench = locate_binary("trackshift-bench");

    let t = Scratch::new("soak");
    let (work, results) = (t.dir("work"), t.dir("results"));
    let name = format!("tssoak{}", std::process::id() % 100_000);
    let _leftovers = Leftovers {
        netlab: netlab.clone(),
        name: name.clone(),
        work: work.clone(),
    };
    let (stdout, stderr) = (t.file("soak.stdout"), t.file("soak.stderr"));
    let started = Instant::now();
    let mut soak = Command::new(&bench)
        .args(["soak", "--seed", SEED, "--kills", KILLS, "--size", SIZE])
        .args(["--duration", DURATION, "--chunk-size", "5MiB", "--keep"])
        .args(["--timeout", SOAK_TIMEOUT, "--name", &name])
        .arg("--trackshift")
        .arg(&trackshift)
        .arg("--netlab")
        .arg(&netlab)
        .arg("--work-dir")
        .arg(&work)
        .arg("--out")
        .arg(&results)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(st) = soak.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() >= HARD_LIMIT {
            // SIGTERM lets the soak unwind through its guards (processes, link, mount); SIGKILL if it cannot.
            let _ = Command::new("kill")
                .args(["-TERM", &soak.id().to_string()])
                .status();
            let term = Instant::now();
            while soak.try_wait().unwrap().is_none() && term.elapsed() < TERM_GRACE {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = soak.kill();
            let _ = soak.wait();
            panic!(
                "the soak still ran after {HARD_LIMIT:?}:\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let took = started.elapsed();
    let err = std::fs::read_to_string(&stderr).unwrap_or_default();
    let table = std::fs::read_to_string(&stdout).unwrap_or_default();
    eprintln!(
        "{err}\n{table}\nthe short soak took {:.1} s",
        took.as_secs_f64()
    );
    assert!(status.success(), "the soak failed ({status}):\n{err}");

    let dirs = dir_names(&results);
    assert_eq!(dirs.len(), 1, "one results dir: {dirs:?}");
    let out = results.join(&dirs[0]);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("soak.json")).unwrap()).unwrap();
    assert!(out.join("soak.md").is_file());
    assert!(report["error"].is_null(), "{}", report["error"]);
    assert_eq!(
        report["anomalies"],
        serde_json::json!([]),
        "{}",
        report["anomalies"]
    );
    assert_eq!(
        report["end"]["failures"],
        serde_json::json!([]),
        "{}",
        report["end"]
    );

    // Every planned fault was injected, of every kind, and both data paths ran.
    let planned = report["plan"]["faults"].as_array().unwrap().len();
    let faults = report["faults"].as_array().unwrap();
    assert_eq!(faults.len(), planned, "{faults:?}");
    let kinds: Vec<&str> = faults
        .iter()
        .map(|f| f["fault"]["kind"].as_str().unwrap())
        .collect();
    for k in [
        "kill_sender",
        "kill_receiver",
        "link_cut",
        "addr_change",
        "disk_full",
    ] {
        assert!(kinds.contains(&k), "no {k} in {kinds:?}");
    }
    let kills = kinds.iter().filter(|k| k.starts_with("kill")).count();
    assert_eq!(kills.to_string(), KILLS);
    let paths: Vec<&str> = report["sender_runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["protocol"].as_str())
        .collect();
    assert!(
        paths.contains(&"udp") && paths.contains(&"tcp"),
        "both data paths should have run: {paths:?}"
    );
    // A full disk is filled mid-chunk: part of an unfinished chunk was on disk.
    let disk = faults
        .iter()
        .find(|f| f["fault"]["kind"] == "disk_full")
        .unwrap();
    assert!(disk["partial_before"].as_u64().unwrap() > 0, "{disk}");

    // The end state again, from what the soak kept.
    let kept = PathBuf::from(report["work_dir"].as_str().unwrap());
    assert!(kept.starts_with(&work), "{}", kept.display());
    let source = kept.join("src/payload.bin");
    assert_eq!(
        dir_names(&kept.join("delivered")),
        ["payload.bin"],
        "the output dir held something besides the file"
    );
    assert_eq!(
        sha256_file(&kept.join("delivered/payload.bin")),
        sha256_file(&source),
        "the delivered file differs from the source"
    );
    let id = report["end"]["session_id"].as_str().unwrap();
    for side in ["state-a", "state-b"] {
        let sessions = list(&kept.join(side));
        assert_eq!(sessions.len(), 1, "{side}: {sessions:?}");
        assert_eq!(sessions[0]["id"], id, "{side}: {sessions:?}");
        assert_eq!(sessions[0]["state"], "completed", "{side}: {sessions:?}");
    }
    // Nothing left behind: the namespaces and the mount are gone.
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let netns = String::from_utf8_lossy(&netns.stdout);
    assert!(
        !netns.lines().any(|l| l.starts_with(&format!("{name}-"))),
        "namespaces left behind: {netns}"
    );
    assert_eq!(
        mounts_under(&work),
        Vec::<String>::new(),
        "mounts left behind"
    );
}
