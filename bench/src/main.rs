//! `trackshift-bench`: the benchmark harness. It owns the orchestration of benchmark runs (namespaces, peer
//! tools, timing, reports) and depends on no TrackShift crate: it drives the released `trackshift` and
//! `trackshift-netlab` binaries exactly as a user or script would. See `bench/README.md`.

mod link;
mod linkcheck;
mod local;
mod net;
mod procs;
mod ratecap;
mod report;
mod setup;
mod soak;
mod util;

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::link::LinkKind;

#[derive(Debug, Parser)]
#[command(
    name = "trackshift-bench",
    version,
    about = "Benchmark TrackShift against the tools users would pick instead"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Each profile on the emulated link: TrackShift, iperf3, rsync, scp and uftp on the same file.
    Net(NetArgs),
    /// Over loopback, on the same disk: cp, TrackShift (udp and tcp), rsync (daemon) and scp, alternating.
    Local(LocalArgs),
    /// Each profile's emulated link measured in wall-clock time: UDP round trips and what a flood at twice the
    /// link rate gets through (what the emulator delivers on this machine, beside what the profile says).
    Link(LinkArgs),
    /// Whether `--max-rate` holds: asked against delivered, each protocol and stream count, on loopback and
    /// through the emulator, every 5 s window judged from outside TrackShift.
    Ratecap(RateCapArgs),
    /// One long transfer through the emulated link under a seeded schedule of faults (kills of either side,
    /// link cuts, address changes, a full disk), with corruption, duplication and reordering throughout;
    /// checks the end state and writes a table of what each fault cost.
    Soak(SoakArgs),
    /// Install the peer tools from Debian's packages (done automatically by `net` too).
    Setup,
    /// (`link`'s far end, run in namespace B) echo probes, count the flood.
    #[command(hide = true)]
    UdpPeer {
        #[arg(long)]
        bind: std::net::SocketAddr,
        #[arg(long, value_parser = util::parse_duration)]
        idle: std::time::Duration,
        #[arg(long, value_parser = util::parse_duration)]
        max: std::time::Duration,
    },
    /// (`link`'s near end, run in namespace A) send probes, then the flood.
    #[command(hide = true)]
    UdpProbe {
        #[arg(long)]
        to: std::net::SocketAddr,
        #[arg(long)]
        count: u32,
        #[arg(long, value_parser = util::parse_duration)]
        gap: std::time::Duration,
        #[arg(long, value_parser = util::parse_duration)]
        wait: std::time::Duration,
        #[arg(long)]
        flood_mbit: f64,
        #[arg(long, value_parser = util::parse_duration)]
        flood: std::time::Duration,
    },
}

#[derive(Debug, clap::Args)]
struct LinkArgs {
    /// Comma-separated profiles: clean, clean-1g, fast, wan, lossy, sat, burst, flaky.
    #[arg(long, value_delimiter = ',', default_value = "wan,lossy,sat,burst")]
    profiles: Vec<String>,
    /// All eight named profiles (overrides --profiles).
    #[arg(long)]
    all: bool,
    /// Round-trip probes, one every 5 ms.
    #[arg(long, default_value_t = 400)]
    probes: u32,
    /// How long the flood at twice the link rate lasts.
    #[arg(long, default_value = "3s", value_parser = util::parse_duration)]
    flood: std::time::Duration,
    /// The `trackshift-netlab` binary (default: target/release/trackshift-netlab).
    #[arg(long)]
    netlab: Option<PathBuf>,
    /// Results root; each run writes <out>/<date>-<hostname>-<label>/.
    #[arg(long, default_value_os_t = setup::workspace_root().join("bench/results"))]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
struct SoakArgs {
    /// Seed of the schedule, the file's bytes and the emulator: the same seed gives the same schedule.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// SIGKILLs (sender and receiver); link cuts, address changes and full disks come in proportion.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(2..=10_000))]
    kills: u32,
    /// Size of the random file.
    #[arg(long, default_value = "2GiB", value_parser = util::parse_size)]
    size: u64,
    /// The schedule's gaps (time left to the transfer between recovering from a fault and the next one)
    /// add up to this; the sender's rate cap makes the file last longer.
    #[arg(long, default_value = "10m", value_parser = util::parse_duration)]
    duration: std::time::Duration,
    /// The session's chunk size.
    #[arg(long, default_value = "50MiB")]
    chunk_size: String,
    /// Every sender run's `--max-rate` (default: 60% of the file over --duration).
    #[arg(long)]
    max_rate: Option<String>,
    /// The emulator's profile (`trackshift-netlab profiles`).
    #[arg(long, default_value = "wan")]
    profile: String,
    /// More `trackshift-netlab up` flags after the profile (the soak adds `--seed`).
    #[arg(
        long,
        allow_hyphen_values = true,
        default_value = "--corrupt 0.01% --fix-checksum --duplicate 0.5% --reorder 1%"
    )]
    link_flags: String,
    /// Where the source file, the state dirs and the tmpfs mount point go (a fresh dir inside; default: the
    /// system temp dir).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep that dir at the end (state dirs, and a copy of what the output dir held in `delivered/`).
    #[arg(long)]
    keep: bool,
    /// The emulator's run name (namespaces NAME-a and NAME-b; default: soak and the process id).
    #[arg(long)]
    name: Option<String>,
    /// Bound on the whole soak (default: three times --duration plus 10 minutes).
    #[arg(long, value_parser = util::parse_duration)]
    timeout: Option<std::time::Duration>,
    /// Print the schedule as JSON and exit.
    #[arg(long)]
    dry_run: bool,
    /// The `trackshift` binary (default: target/release/trackshift).
    #[arg(long)]
    trackshift: Option<PathBuf>,
    /// The `trackshift-netlab` binary (default: target/release/trackshift-netlab).
    #[arg(long)]
    netlab: Option<PathBuf>,
    /// Results root; the run writes <out>/<date>-<hostname>-soak-<seed>/.
    #[arg(long, default_value_os_t = setup::workspace_root().join("bench/results"))]
    out: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LinkArg {
    /// The trackshift-netlab user-space emulator (a fresh `up` per tool run).
    Emulator,
    /// A plain veth pair between the two namespaces: no impairment; for debugging the harness.
    Veth,
}

#[derive(Debug, clap::Args)]
struct Common {
    /// The `trackshift` binary (default: target/release/trackshift).
    #[arg(long)]
    trackshift: Option<PathBuf>,
    /// Results root; each run writes <out>/<date>-<hostname>-<label>/.
    #[arg(long, default_value_os_t = setup::workspace_root().join("bench/results"))]
    out: PathBuf,
    /// Label in the results folder name (default: the command and its profiles or sizes).
    #[arg(long)]
    label: Option<String>,
    /// Bound for each transfer; one that does not finish is killed and reported as timed out.
    #[arg(long, default_value = "240s", value_parser = util::parse_duration)]
    timeout: std::time::Duration,
}

#[derive(Debug, clap::Args)]
struct NetArgs {
    /// Comma-separated profiles: clean, clean-1g, fast, wan, lossy, sat, burst, flaky (or any custom name netlab
    /// accepts).
    #[arg(long, value_delimiter = ',', default_value = "wan,lossy")]
    profiles: Vec<String>,
    /// All eight named profiles (overrides --profiles).
    #[arg(long)]
    all: bool,
    /// Size of the random file.
    #[arg(long, default_value = "256MiB", value_parser = util::parse_size)]
    size: u64,
    /// Comma-separated tools: trackshift-tcp, trackshift-udp, iperf3, rsync, scp, uftp.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "trackshift-tcp,trackshift-udp,iperf3,rsync,scp,uftp"
    )]
    tools: Vec<String>,
    /// TCP congestion controls to run the TCP tools with (each gets its own row).
    #[arg(long, value_delimiter = ',', default_value = "cubic,bbr")]
    cc: Vec<String>,
    /// Seconds of each iperf3 run.
    #[arg(long, default_value_t = 30)]
    iperf_seconds: u64,
    /// The link between the namespaces.
    #[arg(long, value_enum, default_value_t = LinkArg::Emulator)]
    link: LinkArg,
    /// The `trackshift-netlab` binary (default: target/release/trackshift-netlab).
    #[arg(long)]
    netlab: Option<PathBuf>,
    /// Where the random file and receivers' outputs go (a temp dir is made inside and removed).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Fail instead of installing missing tools with apt-get.
    #[arg(long)]
    no_install: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Args)]
struct LocalArgs {
    /// Comma-separated file sizes; two or more show whether RSS grows with size.
    #[arg(long, value_delimiter = ',', default_value = "2GiB,8GiB", value_parser = util::parse_size)]
    sizes: Vec<u64>,
    /// One size only (overrides --sizes).
    #[arg(long, value_parser = util::parse_size)]
    size: Option<u64>,
    /// Directory for the file, cp's copy and the receiver's output (all on the same disk).
    #[arg(long, default_value_os_t = local::default_dir())]
    dir: PathBuf,
    /// Drop the page cache before each copy (sync; echo 3 > /proc/sys/vm/drop_caches).
    #[arg(long)]
    drop_caches: bool,
    /// Comma-separated tools: cp, trackshift-udp, trackshift-tcp, rsync, scp (one of each per run).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "cp,trackshift-udp,trackshift-tcp,rsync,scp"
    )]
    tools: Vec<String>,
    /// Runs per size, one of each tool (cp's rate here swings 3x between runs); verdicts use the medians.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=20))]
    repeat: u16,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Args)]
struct RateCapArgs {
    /// Caps on loopback.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10Mbit,100Mbit,1Gbit,2Gbit,3Gbit,5Gbit"
    )]
    caps: Vec<String>,
    /// Caps through the emulator (below its rate).
    #[arg(long, value_delimiter = ',', default_value = "10Mbit,100Mbit,500Mbit")]
    emulator_caps: Vec<String>,
    /// The emulated link (`trackshift-netlab up` flags); `--no-emulator` skips it.
    #[arg(
        long,
        default_value = "--rate 1Gbit --delay 10ms",
        allow_hyphen_values = true
    )]
    emulator: String,
    #[arg(long)]
    no_emulator: bool,
    #[arg(long, value_delimiter = ',', default_value = "udp,tcp")]
    protocols: Vec<String>,
    /// Stream counts (UDP only; TCP runs once).
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    streams: Vec<u8>,
    /// How long each run sends.
    #[arg(long, default_value = "14s", value_parser = util::parse_duration)]
    seconds: std::time::Duration,
    /// The file (a run that delivers it before the time is up ends there).
    #[arg(long, default_value = "4GiB", value_parser = util::parse_size)]
    size: u64,
    /// The `trackshift-netlab` binary (default: target/release/trackshift-netlab).
    #[arg(long)]
    netlab: Option<PathBuf>,
    /// Where the file and the receivers' outputs go (a temp dir is made inside and removed).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

fn results_dir(common: &Common, default_label: &str) -> PathBuf {
    let label = common
        .label
        .clone()
        .unwrap_or_else(|| default_label.to_string());
    common.out.join(format!(
        "{}-{}-{}",
        util::utc_stamp(),
        util::slug(&util::hostname()),
        util::slug(&label)
    ))
}

/// The trackshift binary if present; its absence only turns its rows into `n/a`.
fn optional_trackshift(explicit: Option<&std::path::Path>) -> Result<Option<PathBuf>> {
    match setup::find_binary(explicit, "trackshift") {
        Ok(p) => Ok(Some(p)),
        Err(e) if explicit.is_none() => {
            eprintln!("warning: {e:#}; TrackShift rows will say n/a");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn net(a: NetArgs) -> Result<()> {
    for t in &a.tools {
        if !net::ALL_TOOLS.contains(&t.as_str()) {
            bail!("unknown tool `{t}` (known: {})", net::ALL_TOOLS.join(", "));
        }
    }
    let profiles: Vec<String> = if a.all {
        net::ALL_PROFILES.iter().map(|s| s.to_string()).collect()
    } else {
        a.profiles.clone()
    };
    setup::ensure_tools(setup::NET_TOOLS, !a.no_install)?;
    let trackshift = if a.tools.iter().any(|t| t.starts_with("trackshift")) {
        optional_trackshift(a.common.trackshift.as_deref())?
    } else {
        None
    };
    let (link, netlab) = match a.link {
        LinkArg::Veth => (LinkKind::Veth, None),
        LinkArg::Emulator => {
            let bin = setup::find_binary(a.netlab.as_deref(), "trackshift-netlab")?;
            (LinkKind::Netlab { bin: bin.clone() }, Some(bin))
        }
    };
    let _cc = setup::CongestionControls::allow(&a.cc)?;
    let work = tempfile::Builder::new()
        .prefix("trackshift-bench-net-")
        .tempdir_in(a.work_dir.clone().unwrap_or_else(std::env::temp_dir))?;
    let label = if a.all {
        "net-all".to_string()
    } else {
        format!("net-{}", profiles.join("-"))
    };
    let out_dir = results_dir(&a.common, &label);
    let mut machine =
        setup::machine_description(trackshift.as_deref(), netlab.as_deref(), setup::NET_PEERS);
    machine["link"] = serde_json::json!(format!("{:?}", a.link).to_lowercase());
    machine["command"] = serde_json::json!(std::env::args().collect::<Vec<_>>().join(" "));
    let cfg = net::NetConfig {
        profiles,
        size: a.size,
        timeout: a.common.timeout,
        iperf_seconds: a.iperf_seconds,
        tools: a.tools,
        ccs: a.cc,
        link,
        trackshift,
        work_dir: work.path().to_path_buf(),
        out_dir: out_dir.clone(),
        sync_delivered: false,
    };
    net::run_all(cfg, machine)?;
    eprintln!("results written to {}", out_dir.display());
    Ok(())
}

fn local(a: LocalArgs) -> Result<()> {
    for t in &a.tools {
        if !local::ALL_TOOLS.contains(&t.as_str()) {
            bail!(
                "unknown tool `{t}` (known: {})",
                local::ALL_TOOLS.join(", ")
            );
        }
    }
    setup::ensure_tools(setup::LOCAL_TOOLS, true)?;
    let sizes = a.size.map_or(a.sizes.clone(), |s| vec![s]);
    let trackshift = optional_trackshift(a.common.trackshift.as_deref())?;
    let label = format!(
        "local-{}",
        sizes
            .iter()
            .map(|s| util::fmt_size(*s))
            .collect::<Vec<_>>()
            .join("-")
    );
    let out_dir = results_dir(&a.common, &label);
    let mut machine = setup::machine_description(trackshift.as_deref(), None, setup::LOCAL_PEERS);
    machine["command"] = serde_json::json!(std::env::args().collect::<Vec<_>>().join(" "));
    let cfg = local::LocalConfig {
        sizes,
        dir: a.dir,
        drop_caches: a.drop_caches,
        timeout: a.common.timeout,
        trackshift,
        out_dir: out_dir.clone(),
        tools: a.tools,
        repeat: usize::from(a.repeat),
    };
    let md = local::run_local(cfg, machine)?;
    println!("{md}");
    eprintln!("results written to {}", out_dir.display());
    Ok(())
}

fn ratecap(a: RateCapArgs) -> Result<()> {
    for c in a.caps.iter().chain(&a.emulator_caps) {
        ratecap::parse_rate_mbit(c)?;
    }
    let trackshift = setup::find_binary(a.common.trackshift.as_deref(), "trackshift")?;
    let netlab = if a.no_emulator {
        None
    } else {
        Some(setup::find_binary(
            a.netlab.as_deref(),
            "trackshift-netlab",
        )?)
    };
    let flags: Vec<String> = a.emulator.split_whitespace().map(String::from).collect();
    let links = ratecap::default_links(netlab.clone(), &a.caps, &a.emulator_caps, &flags)?;
    let work = tempfile::Builder::new()
        .prefix("trackshift-bench-ratecap-")
        .tempdir_in(a.work_dir.clone().unwrap_or_else(local::default_dir))?;
    let out_dir = results_dir(&a.common, "ratecap");
    let mut machine = setup::machine_description(Some(&trackshift), netlab.as_deref(), &[]);
    machine["command"] = serde_json::json!(std::env::args().collect::<Vec<_>>().join(" "));
    let cfg = ratecap::RateCapConfig {
        trackshift,
        links,
        protocols: a.protocols,
        streams: a.streams,
        seconds: a.seconds,
        size: a.size,
        work_dir: work.path().to_path_buf(),
        out_dir: out_dir.clone(),
    };
    let md = ratecap::run_all(cfg, machine)?;
    println!("{md}");
    eprintln!("results written to {}", out_dir.display());
    Ok(())
}

fn link_check(a: LinkArgs) -> Result<()> {
    let profiles: Vec<String> = if a.all {
        net::ALL_PROFILES.iter().map(|s| s.to_string()).collect()
    } else {
        a.profiles
    };
    let bin = setup::find_binary(a.netlab.as_deref(), "trackshift-netlab")?;
    let me = std::env::current_exe()?;
    let out_dir = a.out.join(format!(
        "{}-{}-link-{}",
        util::utc_stamp(),
        util::slug(&util::hostname()),
        util::slug(&profiles.join("-"))
    ));
    std::fs::create_dir_all(&out_dir)?;
    let mut machine = setup::machine_description(None, Some(&bin), &[]);
    machine["command"] = serde_json::json!(std::env::args().collect::<Vec<_>>().join(" "));
    let md = linkcheck::run_all(
        &LinkKind::Netlab { bin },
        &me,
        &profiles,
        a.probes,
        a.flood,
        &out_dir,
        machine,
    )?;
    println!("{md}");
    eprintln!("results written to {}", out_dir.display());
    Ok(())
}

fn soak(a: SoakArgs) -> Result<()> {
    if a.dry_run {
        let plan = soak::plan::Plan::new(a.seed, a.kills, a.duration);
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(());
    }
    let trackshift = setup::find_binary(a.trackshift.as_deref(), "trackshift")?;
    let netlab = setup::find_binary(a.netlab.as_deref(), "trackshift-netlab")?;
    let out_dir = a.out.join(format!(
        "{}-{}-soak-{}",
        util::utc_stamp(),
        util::slug(&util::hostname()),
        a.seed
    ));
    let mut machine = setup::machine_description(Some(&trackshift), Some(&netlab), &[]);
    machine["command"] = serde_json::json!(std::env::args().collect::<Vec<_>>().join(" "));
    let cfg = soak::SoakConfig {
        seed: a.seed,
        kills: a.kills,
        size: a.size,
        duration: a.duration,
        chunk_size: a.chunk_size,
        max_rate: a.max_rate,
        profile: a.profile,
        link_flags: a.link_flags.split_whitespace().map(String::from).collect(),
        trackshift,
        netlab,
        work_dir: a.work_dir.unwrap_or_else(std::env::temp_dir),
        keep: a.keep,
        name: a
            .name
            .unwrap_or_else(|| format!("soak{}", std::process::id() % 100_000)),
        out_dir: out_dir.clone(),
        timeout: a
            .timeout
            .unwrap_or(a.duration * 3 + std::time::Duration::from_secs(600)),
    };
    let report = soak::run_soak(cfg, machine)?;
    eprintln!("results written to {}", out_dir.display());
    if !report.passed() {
        bail!("the soak failed: see {}", out_dir.join("soak.md").display());
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    ctrlc::set_handler(|| {
        eprintln!("interrupted: stopping children and cleaning up");
        util::INTERRUPTED.store(true, Ordering::SeqCst);
    })?;
    match cli.cmd {
        Cmd::Net(a) => net(a),
        Cmd::Local(a) => local(a),
        Cmd::Link(a) => link_check(a),
        Cmd::Ratecap(a) => ratecap(a),
        Cmd::Soak(a) => soak(a),
        Cmd::Setup => setup::ensure_tools(setup::NET_TOOLS, true),
        Cmd::UdpPeer { bind, idle, max } => linkcheck::peer(bind, idle, max),
        Cmd::UdpProbe {
            to,
            count,
            gap,
            wait,
            flood_mbit,
            flood,
        } => linkcheck::probe(to, count, gap, wait, flood_mbit, flood),
    }
}
