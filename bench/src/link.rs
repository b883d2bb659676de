//! The link between namespace A (sender) and namespace B (receiver): the `trackshift-netlab` emulator
//! (default), a plain veth pair (debugging, no impairment), or one namespace's own loopback (A and B the same
//! namespace, so its `lo` counters see only the run). Dropping a `Link` kills every process left in either
//! namespace and removes them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::procs::{run, Proc, Spec};

/// Addresses the emulator uses; the veth link copies them so the harness does not care which one runs.
const ADDR_A: &str = "198.18.0.1";
const ADDR_B: &str = "198.18.1.1";
/// How long `trackshift-netlab up` may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the emulator may take to move side A to a new address (a few `ip` commands).
const ADDR_CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub enum LinkKind {
    Netlab {
        bin: PathBuf,
    },
    Veth,
    /// 127.0.0.1 inside one fresh namespace.
    Loopback,
}

#[derive(Debug)]
pub struct Link {
    pub name: String,
    pub ns_a: String,
    pub ns_b: String,
    pub addr_a: String,
    pub addr_b: String,
    kind: LinkKind,
    emulator: Option<Proc>,
    /// The emulator's `counters` event, once it has been stopped.
    pub counters: Option<Value>,
    closed: bool,
}

impl Link {
    /// Brings up a fresh link for one tool run. `name` must be short (interface names are 15 bytes).
    pub fn up(
        kind: &LinkKind,
        name: &str,
        profile: &str,
        max_duration: Duration,
        log_dir: &Path,
    ) -> Result<Link> {
        Link::up_with(kind, name, profile, &[], max_duration, log_dir)
    }

    /// [`Link::up`] with more `trackshift-netlab up` flags after the profile (`--rate 1Gbit`, `--delay 5ms`).
    pub fn up_with(
        kind: &LinkKind,
        name: &str,
        profile: &str,
        emulator_flags: &[String],
        max_duration: Duration,
        log_dir: &Path,
    ) -> Result<Link> {
        let mut link = Link {
            name: name.to_string(),
            ns_a: format!("{name}-a"),
            ns_b: format!("{name}-b"),
            addr_a: ADDR_A.into(),
            addr_b: ADDR_B.into(),
            kind: kind.clone(),
            emulator: None,
            counters: None,
            closed: false,
        };
        if matches!(kind, LinkKind::Loopback) {
            link.ns_b = link.ns_a.clone();
            link.addr_a = "127.0.0.1".into();
            link.addr_b = "127.0.0.1".into();
        }
        link.remove_leftovers();
        match kind {
            LinkKind::Veth => link.veth_up()?,
            LinkKind::Loopback => {
                run(&["ip", "netns", "add", &link.ns_a])?;
                run(&["ip", "-n", &link.ns_a, "link", "set", "lo", "up"])?;
            }
            LinkKind::Netlab { bin } => {
                let mut argv = vec![
                    bin.display().to_string(),
                    "up".into(),
                    "--name".into(),
                    name.into(),
                    "--profile".into(),
                    profile.into(),
                    "--max-duration".into(),
                    format!("{}s", max_duration.as_secs()),
                ];
                argv.extend(emulator_flags.iter().cloned());
                let spec = Spec::new("netlab", &argv).untimed().stdout_lines();
                let mut p = Proc::spawn(&spec, log_dir)?;
                let line = p
                    .wait_line(READY_TIMEOUT, |l| l.contains("\"ready\""))
                    .context("trackshift-netlab up")?;
                let v: Value = serde_json::from_str(&line)
                    .with_context(|| format!("netlab ready line is not JSON: {line}"))?;
                let field = |k: &str, dflt: &str| {
                    v.get(k).and_then(Value::as_str).unwrap_or(dflt).to_string()
                };
                link.ns_a = field("ns_a", &link.ns_a);
                link.ns_b = field("ns_b", &link.ns_b);
                link.addr_a = field("addr_a", ADDR_A);
                link.addr_b = field("addr_b", ADDR_B);
                link.emulator = Some(p);
            }
        }
        Ok(link)
    }

    fn veth_up(&self) -> Result<()> {
        let (va, vb) = (format!("{}-va", self.name), format!("{}-vb", self.name));
        let (a, b) = (self.ns_a.as_str(), self.ns_b.as_str());
        let (pa, pb) = (format!("{}/15", self.addr_a), format!("{}/15", self.addr_b));
        let steps: [&[&str]; 10] = [
            &["ip", "netns", "add", a],
            &["ip", "netns", "add", b],
            &[
                "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb,
            ],
            &["ip", "link", "set", &va, "netns", a],
            &["ip", "link", "set", &vb, "netns", b],
            &["ip", "-n", a, "addr", "add", &pa, "dev", &va],
            &["ip", "-n", b, "addr", "add", &pb, "dev", &vb],
            &["ip", "-n", a, "link", "set", &va, "up"],
            &["ip", "-n", b, "link", "set", &vb, "up"],
            &["ip", "-n", a, "link", "set", "lo", "up"],
        ];
        for s in steps {
            run(s)?;
        }
        run(&["ip", "-n", b, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Sets the TCP congestion control of both namespaces (`cubic`, `bbr`).
    pub fn set_congestion_control(&self, cc: &str) -> Result<()> {
        let kv = format!("net.ipv4.tcp_congestion_control={cc}");
        for ns in [&self.ns_a, &self.ns_b] {
            crate::procs::run_in(ns, &["sysctl", "-q", "-w", &kv])
                .with_context(|| format!("setting {cc} in {ns}"))?;
            let now =
                crate::procs::run_in(ns, &["sysctl", "-n", "net.ipv4.tcp_congestion_control"])?;
            if now.trim() != cc {
                bail!("{ns} still uses {} after setting {cc}", now.trim());
            }
        }
        Ok(())
    }

    /// Moves side A to its next address (`trackshift-netlab`'s SIGUSR1) and returns it, once the emulator
    /// says it is done.
    pub fn addr_change(&mut self) -> Result<String> {
        let p = self
            .emulator
            .as_mut()
            .context("an address change needs the emulator (not --link veth)")?;
        p.signal(Signal::SIGUSR1)?;
        let line = p
            .wait_line(ADDR_CHANGE_TIMEOUT, |l| l.contains("\"addr_change\""))
            .context("trackshift-netlab address change")?;
        let v: Value = serde_json::from_str(&line)
            .with_context(|| format!("netlab addr_change line is not JSON: {line}"))?;
        let addr = v["addr_a"]
            .as_str()
            .with_context(|| format!("no addr_a in {line}"))?
            .to_string();
        self.addr_a = addr.clone();
        Ok(addr)
    }

    fn kill_namespace_processes(&self) {
        // Never the emulator itself: it must get SIGTERM to clean up.
        let emulator = self.emulator.as_ref().map(|p| p.pid() as i32);
        for ns in [&self.ns_a, &self.ns_b] {
            if let Ok(out) = run(&["ip", "netns", "pids", ns]) {
                for pid in out
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                    .filter(|p| Some(*p) != emulator)
                {
                    let _ =
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }

    fn remove_leftovers(&self) {
        match &self.kind {
            LinkKind::Netlab { bin } => {
                let _ = std::process::Command::new(bin)
                    .args(["down", "--name", &self.name])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status();
            }
            LinkKind::Veth | LinkKind::Loopback => {}
        }
        let existing = run(&["ip", "netns", "list"]).unwrap_or_default();
        for ns in [&self.ns_a, &self.ns_b] {
            if existing
                .lines()
                .any(|l| l.split_whitespace().next() == Some(ns.as_str()))
            {
                if let Ok(out) = run(&["ip", "netns", "pids", ns]) {
                    for pid in out.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            Signal::SIGKILL,
                        );
                    }
                }
                let _ = run(&["ip", "netns", "del", ns]);
            }
        }
    }

    /// Tears the link down; keeps the emulator's counters. Safe to call more than once.
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.kill_namespace_processes();
        if let Some(mut p) = self.emulator.take() {
            p.stop_with(Signal::SIGTERM);
            // The reader thread may still hold the last lines for a moment.
            std::thread::sleep(Duration::from_millis(100));
            for l in p.drain_lines() {
                if l.contains("\"counters\"") {
                    self.counters = serde_json::from_str(&l).ok();
                }
            }
        }
        self.remove_leftovers();
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.close();
    }
}
