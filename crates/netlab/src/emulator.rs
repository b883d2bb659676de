//! The `up` and `down` commands: namespaces, TUN devices, the two forwarding threads, address change,
//! and cleanup on every exit path.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::model::{Counters, DelayLine, LinkConfig, LinkModel, Verdict};
use crate::sys;

/// Address of side a (and the one it moves to on the first address change: .2, then .3 ...).
pub const ADDR_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Address of side b.
pub const ADDR_B: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// Address of side c (with `--side-c`), on the veth pair to side b.
pub const ADDR_C: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
/// Side b's end of the veth pair to side c.
pub const ADDR_B_TO_C: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
const PREFIX_LEN: u8 = 24;
/// The network mask of [`PREFIX_LEN`].
const NETMASK: u32 = u32::MAX << (u32::BITS - PREFIX_LEN as u32);
const MTU: usize = 1500;
/// Packets the kernel queues on each TUN device for the forwarding thread (its `txqueuelen`). This hand-off is
/// not part of the emulated link (each direction's `queue` is): it stands for a NIC's ring and qdisc, which
/// hold thousands of packets. At 1000 packets (4.5 ms at the `clean` rate) a forwarding thread descheduled
/// for a few ms on a 2-core machine dropped datagrams of a fast UDP sender before the emulator saw them.
const TUN_QUEUE_PACKETS: u32 = 4096;
/// Longest run name: it becomes part of namespace names and of every log line, and 40 characters keep them
/// readable (Linux itself allows far longer namespace names).
const MAX_NAME_LEN: usize = 40;
/// Longest network device name: `IFNAMSIZ` (16) less the terminating NUL.
const MAX_DEVICE_NAME: usize = libc::IFNAMSIZ - 1;
/// FNV-1a's 64-bit offset basis and prime, for device names derived from a long run name.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x100_0000_01b3;
/// A read buffer for one packet: the largest IP packet a TUN device hands over (64 KiB).
const MAX_PACKET: usize = 64 * 1024;
/// Side a's address moves through the /24's hosts `.2` to this one, then starts over at [`FIRST_MOVED_HOST`]
/// (`.1` is where it starts, `.255` is the broadcast address).
const LAST_HOST: u8 = 254;
const FIRST_MOVED_HOST: u8 = 2;
/// How often the supervising loop looks at its signals, timers and forwarding threads: quick enough for a
/// test's address change or stop, and negligible CPU.
const SUPERVISE_TICK: Duration = Duration::from_millis(10);

/// Names a run derives from its prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunNames {
    pub ns_a: String,
    pub ns_b: String,
    pub dev_a: String,
    pub dev_b: String,
    /// Side c (only with `--side-c`): its namespace and the two ends of its veth pair (in c, in b).
    pub ns_c: String,
    pub dev_c: String,
    pub dev_bc: String,
}

/// Checks a run name prefix: 1..=40 chars of `[A-Za-z0-9_-]`, starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if !ok {
        bail!("bad --name `{name}`: use 1 to {MAX_NAME_LEN} characters of A-Z a-z 0-9 _ - (starting with a letter or digit)");
    }
    Ok(())
}

/// Namespaces `PFX-a`/`PFX-b`/`PFX-c`; devices `PFX-ta`/`PFX-tb` (TUN) and `PFX-vc`/`PFX-vb` (side c's veth
/// pair) when that fits in 15 chars, else a hash in place of `PFX`.
pub fn run_names(name: &str) -> RunNames {
    let stem = if name.len() + "-ta".len() <= MAX_DEVICE_NAME {
        name.to_string()
    } else {
        // FNV-1a: stable across runs so `down` finds the same names.
        let h = name
            .bytes()
            .fold(FNV_OFFSET, |h, b| (h ^ b as u64).wrapping_mul(FNV_PRIME));
        format!("nl{:08x}", h as u32)
    };
    RunNames {
        ns_a: format!("{name}-a"),
        ns_b: format!("{name}-b"),
        dev_a: format!("{stem}-ta"),
        dev_b: format!("{stem}-tb"),
        ns_c: format!("{name}-c"),
        dev_c: format!("{stem}-vc"),
        dev_bc: format!("{stem}-vb"),
    }
}

/// Where iproute2's `ip` is.
pub(crate) fn ip_bin() -> &'static str {
    for p in ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"] {
        if Path::new(p).exists() {
            return p;
        }
    }
    "ip"
}

/// Runs `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new(ip_bin())
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether a named network namespace exists.
pub fn netns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

/// Removes leftovers of a run: its namespaces (side c's too) and, if still in the root namespace, its
/// devices. Idempotent; returns what it removed.
pub fn down(name: &str) -> Result<Vec<String>> {
    validate_name(name)?;
    let n = run_names(name);
    let mut removed = Vec::new();
    for ns in [&n.ns_a, &n.ns_b, &n.ns_c] {
        if netns_exists(ns) {
            ip(&["netns", "del", ns])?;
            removed.push(format!("netns {ns}"));
        }
    }
    for dev in [&n.dev_a, &n.dev_b, &n.dev_c, &n.dev_bc] {
        if Path::new("/sys/class/net").join(dev).exists() && ip(&["link", "del", dev]).is_ok() {
            removed.push(format!("link {dev}"));
        }
    }
    Ok(removed)
}

/// Deletes the namespaces this run created, whatever way the run ends (return, error, panic).
struct Cleanup {
    namespaces: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = ip(&["netns", "del", &ns]) {
                eprintln!("trackshift-netlab: cleanup of {ns}: {e:#}");
            }
        }
    }
}

/// Writes sysctls inside a namespace (from a thread that entered it).
fn ns_sysctls(ns: &str, kv: &[(String, &'static str)]) -> Result<()> {
    let ns = ns.to_string();
    let kv: Vec<(String, &'static str)> = kv.to_vec();
    thread::spawn(move || -> Result<()> {
        sys::enter_netns(&ns)?;
        for (k, v) in &kv {
            let path = format!("/proc/sys/{}", k.replace('.', "/"));
            std::fs::write(&path, v).with_context(|| format!("sysctl {k}={v} in {ns}"))?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("sysctl thread panicked"))?
}

/// The seeds of the a -> b and b -> a [`LinkModel`]s of a run started with `--seed seed`: a test can replay a
/// direction's verdicts in virtual time with the same model and seed.
pub fn direction_seeds(seed: u64) -> (u64, u64) {
    (seed, seed ^ 0x9e37_79b9_7f4a_7c15)
}

/// Options of `up` beyond the link itself.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub name: String,
    /// Link of the a -> b direction and of b -> a.
    pub a_to_b: LinkConfig,
    pub b_to_a: LinkConfig,
    pub seed: u64,
    pub max_duration: Duration,
    pub addr_change_at: Option<Duration>,
    /// Also create side c, hung off side b by a plain veth pair (see [`add_side_c`]).
    pub side_c: bool,
}

/// The `{"event":"counters"}` line printed at exit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LabCounters {
    pub a_to_b: Counters,
    pub b_to_a: Counters,
    /// How long the link ran, in seconds.
    pub seconds: f64,
    /// CPU time (user + system) the emulator process used: forwarding costs CPU that the programs under
    /// test cannot use on a small machine, and benchmarks report it.
    #[serde(default)]
    pub cpu_seconds: f64,
}

fn emit_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn configure_side(ns: &str, dev: &str, addr: Ipv4Addr, peer_net: &str) -> Result<()> {
    ns_sysctls(
        ns,
        &[
            // No side routes between the others (side c reaches side a only through programs in b).
            ("net.ipv4.ip_forward".into(), "0"),
            ("net.ipv6.conf.all.disable_ipv6".into(), "1"),
            ("net.ipv6.conf.default.disable_ipv6".into(), "1"),
            ("net.ipv4.conf.all.rp_filter".into(), "0"),
            ("net.ipv4.conf.default.rp_filter".into(), "0"),
            (format!("net.ipv4.conf.{dev}.rp_filter"), "0"),
            (format!("net.ipv4.conf.{dev}.promote_secondaries"), "1"),
        ],
    )?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    ip(&[
        "-n",
        ns,
        "link",
        "set",
        dev,
        "mtu",
        &MTU.to_string(),
        "txqueuelen",
        &TUN_QUEUE_PACKETS.to_string(),
        "up",
    ])?;
    ip(&[
        "-n",
        ns,
        "addr",
        "add",
        &format!("{addr}/{PREFIX_LEN}"),
        "dev",
        dev,
    ])?;
    ip(&[
        "-n",
        ns,
        "route",
        "add",
        peer_net,
        "dev",
        dev,
        "src",
        &addr.to_string(),
    ])?;
    Ok(())
}

/// Side c: namespace `<name>-c`, joined to side b by a plain veth pair (no emulation, no TUN): 198.18.2.2/24 in
/// c, 198.18.2.1/24 in b, and in c a route to side b's /24 only. Side b does not forward (`ip_forward` 0, set
/// for every side), so c and a cannot reach each other: whatever passes between them goes through a program
/// in b (a relay). Both veth ends are created inside their namespaces, so deleting the namespaces removes them.
fn add_side_c(run: &str, names: &RunNames, cleanup: &mut Cleanup) -> Result<()> {
    let (ns_b, ns_c) = (names.ns_b.as_str(), names.ns_c.as_str());
    new_netns(ns_c, run, cleanup)?;
    ip(&[
        "link",
        "add",
        &names.dev_c,
        "netns",
        ns_c,
        "type",
        "veth",
        "peer",
        "name",
        &names.dev_bc,
        "netns",
        ns_b,
    ])?;
    let net_b = format!(
        "{}/{PREFIX_LEN}",
        Ipv4Addr::from(u32::from(ADDR_B) & NETMASK)
    );
    ns_sysctls(
        ns_c,
        &[
            ("net.ipv4.ip_forward".into(), "0"),
            ("net.ipv6.conf.all.disable_ipv6".into(), "1"),
            ("net.ipv6.conf.default.disable_ipv6".into(), "1"),
        ],
    )?;
    let c_addr = format!("{ADDR_C}/{PREFIX_LEN}");
    let b_addr = format!("{ADDR_B_TO_C}/{PREFIX_LEN}");
    ip(&["-n", ns_c, "link", "set", "lo", "up"])?;
    ip(&["-n", ns_c, "addr", "add", &c_addr, "dev", &names.dev_c])?;
    ip(&["-n", ns_c, "link", "set", &names.dev_c, "up"])?;
    ip(&["-n", ns_b, "addr", "add", &b_addr, "dev", &names.dev_bc])?;
    ip(&["-n", ns_b, "link", "set", &names.dev_bc, "up"])?;
    ip(&[
        "-n",
        ns_c,
        "route",
        "add",
        &net_b,
        "via",
        &ADDR_B_TO_C.to_string(),
        "dev",
        &names.dev_c,
    ])?;
    Ok(())
}

/// Creates namespace `ns` of run `run`, which must not exist yet, and has `cleanup` delete it.
fn new_netns(ns: &str, run: &str, cleanup: &mut Cleanup) -> Result<()> {
    if netns_exists(ns) {
        bail!("namespace {ns} already exists (another run named `{run}`, or leftovers: `trackshift-netlab down --name {run}`)");
    }
    ip(&["netns", "add", ns])?;
    cleanup.namespaces.push(ns.to_string());
    Ok(())
}

/// One direction: read from `input`, decide with the model, release into `output` on time.
fn forward(input: RawFd, output: RawFd, mut model: LinkModel, stop: Arc<AtomicBool>) -> Counters {
    sys::fine_timer_slack();
    let mut line = DelayLine::new();
    let mut buf = vec![0u8; MAX_PACKET];
    /// Packets read per wake-up before the delay line gets its turn again, so releases stay on time under load.
    const BATCH: usize = 64;
    /// Longest sleep with nothing to release, so a stop request is seen within it.
    const IDLE: Duration = Duration::from_millis(20);
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        line.release_due(now, |p| {
            if sys::write_packet(output, p).is_err() {
                model.note_write_error();
            }
        });
        let timeout = line
            .next_release()
            .map_or(IDLE, |t| t.saturating_duration_since(now).min(IDLE));
        match sys::wait_readable(input, timeout) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                eprintln!("trackshift-netlab: poll: {e}");
                break;
            }
        }
        for _ in 0..BATCH {
            let n = match sys::read_packet(input, &mut buf) {
                Ok(Some(n)) if n > 0 => n,
                Ok(_) => break,
                Err(e) => {
                    eprintln!("trackshift-netlab: read: {e}");
                    stop.store(true, Ordering::Relaxed);
                    break;
                }
            };
            let now = Instant::now();
            let pkt = &mut buf[..n];
            if let Verdict::Forward(f) = model.process(pkt, now) {
                let copies = 1 + f.duplicate as usize;
                if f.release <= now && line.is_empty() {
                    // Fast path (no delay, nothing queued): straight through.
                    for _ in 0..copies {
                        if sys::write_packet(output, pkt).is_err() {
                            model.note_write_error();
                        }
                    }
                } else {
                    for _ in 0..copies {
                        line.push(f.release, pkt);
                    }
                }
            }
        }
    }
    *model.counters()
}

fn print_table(c: &LabCounters) {
    let mut s = format!(
        "trackshift-netlab: counters after {:.1} s ({:.2} CPU s)\n",
        c.seconds, c.cpu_seconds
    );
    s += &format!("  {:<16} {:>14} {:>14}\n", "cause", "a -> b", "b -> a");
    for ((name, ab), (_, ba)) in c.a_to_b.fields().iter().zip(c.b_to_a.fields().iter()) {
        s += &format!("  {name:<16} {ab:>14} {ba:>14}\n");
    }
    eprint!("{s}");
}

/// Moves side a to its next address; returns it.
fn addr_change(names: &RunNames, current: Ipv4Addr) -> Result<Ipv4Addr> {
    let o = current.octets();
    let host = if o[3] >= LAST_HOST {
        FIRST_MOVED_HOST
    } else {
        o[3] + 1
    };
    let next = Ipv4Addr::new(o[0], o[1], o[2], host);
    let (ns, dev) = (names.ns_a.as_str(), names.dev_a.as_str());
    let peer_net = format!(
        "{}/{PREFIX_LEN}",
        Ipv4Addr::from(u32::from(ADDR_B) & NETMASK)
    );
    ip(&[
        "-n",
        ns,
        "addr",
        "add",
        &format!("{next}/{PREFIX_LEN}"),
        "dev",
        dev,
    ])?;
    ip(&[
        "-n",
        ns,
        "route",
        "replace",
        &peer_net,
        "dev",
        dev,
        "src",
        &next.to_string(),
    ])?;
    ip(&[
        "-n",
        ns,
        "addr",
        "del",
        &format!("{current}/{PREFIX_LEN}"),
        "dev",
        dev,
    ])?;
    Ok(next)
}

/// Runs the lab until a signal or `max_duration`. Prints the ready line, the counters line, and cleans up.
pub fn up(opts: UpOptions) -> Result<LabCounters> {
    validate_name(&opts.name)?;
    if !sys::is_root() {
        bail!("trackshift-netlab up needs root (network namespaces and /dev/net/tun)");
    }
    sys::install_signal_flags().context("installing signal handlers")?;
    let names = run_names(&opts.name);
    let deadline = Instant::now() + opts.max_duration;
    let mut cleanup = Cleanup {
        namespaces: Vec::new(),
    };
    for ns in [&names.ns_a, &names.ns_b] {
        new_netns(ns, &opts.name, &mut cleanup)?;
    }
    let tun_a =
        sys::open_tun(&names.dev_a).with_context(|| format!("creating TUN {}", names.dev_a))?;
    ip(&["link", "set", &names.dev_a, "netns", &names.ns_a])?;
    let tun_b =
        sys::open_tun(&names.dev_b).with_context(|| format!("creating TUN {}", names.dev_b))?;
    ip(&["link", "set", &names.dev_b, "netns", &names.ns_b])?;
    let net = |a: Ipv4Addr| format!("{}/{PREFIX_LEN}", Ipv4Addr::from(u32::from(a) & NETMASK));
    configure_side(&names.ns_a, &names.dev_a, ADDR_A, &net(ADDR_B))?;
    configure_side(&names.ns_b, &names.dev_b, ADDR_B, &net(ADDR_A))?;
    if opts.side_c {
        add_side_c(&opts.name, &names, &mut cleanup)?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let (seed_ab, seed_ba) = direction_seeds(opts.seed);
    let model_ab = LinkModel::new(opts.a_to_b.clone(), seed_ab, start);
    let model_ba = LinkModel::new(opts.b_to_a.clone(), seed_ba, start);
    let (fa, fb) = (tun_a.as_raw_fd(), tun_b.as_raw_fd());
    let s1 = stop.clone();
    let t_ab = thread::Builder::new()
        .name("a->b".into())
        .spawn(move || forward(fa, fb, model_ab, s1))?;
    let s2 = stop.clone();
    let t_ba = thread::Builder::new()
        .name("b->a".into())
        .spawn(move || forward(fb, fa, model_ba, s2))?;

    // Field order as documented: "event" first.
    let side_c = if opts.side_c {
        format!(
            r#","ns_c":{},"addr_c":"{ADDR_C}""#,
            serde_json::Value::from(names.ns_c.as_str())
        )
    } else {
        String::new()
    };
    emit_line(&format!(
        r#"{{"event":"ready","ns_a":{},"ns_b":{},"addr_a":"{ADDR_A}","addr_b":"{ADDR_B}"{side_c}}}"#,
        serde_json::Value::from(names.ns_a.as_str()),
        serde_json::Value::from(names.ns_b.as_str()),
    ));
    eprintln!(
        "trackshift-netlab: {} <-> {} ready (seed {})",
        names.ns_a, names.ns_b, opts.seed
    );

    let mut addr_a = ADDR_A;
    let mut change_at = opts.addr_change_at.map(|d| start + d);
    let mut result = Ok(());
    while !sys::STOP.load(Ordering::SeqCst) && !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= deadline {
            eprintln!("trackshift-netlab: --max-duration reached, stopping");
            break;
        }
        let timed = change_at.is_some_and(|t| now >= t);
        if timed || sys::USR1.swap(false, Ordering::SeqCst) {
            if timed {
                change_at = None;
            }
            match addr_change(&names, addr_a) {
                Ok(new) => {
                    addr_a = new;
                    emit_line(&format!(r#"{{"event":"addr_change","addr_a":"{new}"}}"#));
                }
                Err(e) => {
                    result = Err(e.context("address change"));
                    break;
                }
            }
        }
        thread::sleep(SUPERVISE_TICK);
    }
    stop.store(true, Ordering::SeqCst);
    let ab = t_ab
        .join()
        .map_err(|_| anyhow::anyhow!("a->b thread panicked"))?;
    let ba = t_ba
        .join()
        .map_err(|_| anyhow::anyhow!("b->a thread panicked"))?;
    let counters = LabCounters {
        a_to_b: ab,
        b_to_a: ba,
        seconds: start.elapsed().as_secs_f64(),
        cpu_seconds: crate::sys::process_cpu_seconds(),
    };
    let body = serde_json::to_string(&counters)?;
    emit_line(&format!(
        r#"{{"event":"counters",{}"#,
        body.trim_start_matches('{')
    ));
    print_table(&counters);
    drop(tun_a);
    drop(tun_b);
    drop(cleanup);
    result.map(|()| counters)
}
