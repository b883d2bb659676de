//! `trackshift-netlab`: the user-space link emulator between two network namespaces (test support).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use trackshift_netlab::config::{self, describe, LinkOverrides, PROFILES};

/// Exit code for a bad profile or link setting, as for bad usage (clap's own exit code for bad arguments).
const EXIT_USAGE: u8 = 2;
use trackshift_netlab::emulator::{self, UpOptions};

#[derive(Debug, Parser)]
#[command(
    name = "trackshift-netlab",
    version,
    about = "User-space link emulator between two network namespaces"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create namespaces NAME-a and NAME-b joined by an emulated link (and NAME-c off side b with --side-c); run
    /// until SIGTERM/SIGINT or --max-duration.
    Up(UpArgs),
    /// Remove leftovers (namespaces, devices) of a run. Idempotent.
    Down {
        #[arg(long)]
        name: String,
    },
    /// List the profiles and their values.
    Profiles,
}

#[derive(Debug, Args)]
struct UpArgs {
    /// Run name: namespaces are NAME-a and NAME-b.
    #[arg(long)]
    name: String,
    /// Named profile (see `profiles`); flags below override or extend it.
    #[arg(long)]
    profile: Option<String>,
    #[command(flatten)]
    link: LinkFlags,
    /// RNG seed (each direction derives its own stream).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop by itself after this long (every run is bounded).
    #[arg(long, default_value = "600s", value_parser = config::parse_duration)]
    max_duration: Duration,
    /// Change side a's address this long after start (as SIGUSR1 does).
    #[arg(long, value_parser = config::parse_duration)]
    addr_change_at: Option<Duration>,
    /// Also create namespace NAME-c (198.18.2.2), joined to side b by a plain veth pair: it reaches side b
    /// only, side a cannot reach it, and nothing forwards between them.
    #[arg(long)]
    side_c: bool,
}

/// Link flags, applied to both directions.
#[derive(Debug, Args)]
struct LinkFlags {
    /// Rate limit: 100Mbit, 1Gbit, 250kbit, 100Mbps, 12MB/s; `none` for no limit.
    #[arg(long)]
    rate: Option<String>,
    /// Drop-tail queue limit as time at the rate (default 100ms).
    #[arg(long)]
    queue: Option<String>,
    /// One-way delay: 50ms.
    #[arg(long)]
    delay: Option<String>,
    /// Jitter: uniform ±J around the delay.
    #[arg(long)]
    jitter: Option<String>,
    /// Let jitter reorder packets (default: a packet never leaves before the previous one).
    #[arg(long)]
    jitter_reorders: bool,
    /// Random loss: 1% (a plain number is a percentage).
    #[arg(long)]
    loss: Option<String>,
    /// Gilbert-Elliott burst loss, mean rate: 3%.
    #[arg(long)]
    burst_loss: Option<String>,
    /// Mean burst length in packets (time in the bad state; default 5).
    #[arg(long)]
    burst_len: Option<f64>,
    /// Loss in the bad state (default 100%).
    #[arg(long)]
    burst_bad_loss: Option<String>,
    /// Fraction of packets held back by --reorder-delay: 1%.
    #[arg(long)]
    reorder: Option<String>,
    /// Extra delay of reordered packets (default 10ms).
    #[arg(long)]
    reorder_delay: Option<String>,
    /// Fraction of packets duplicated.
    #[arg(long)]
    duplicate: Option<String>,
    /// Fraction of packets with one bit flipped in the IP payload.
    #[arg(long)]
    corrupt: Option<String>,
    /// Recompute the UDP/TCP checksum after corrupting (so the damage reaches the application).
    #[arg(long)]
    fix_checksum: bool,
    /// Scheduled outage DOWN/EVERY, both directions: 3s/20s (`none` to disable).
    #[arg(long)]
    outage: Option<String>,
}

impl LinkFlags {
    fn overrides(self) -> LinkOverrides {
        LinkOverrides {
            rate: self.rate,
            queue: self.queue,
            delay: self.delay,
            jitter: self.jitter,
            jitter_reorders: self.jitter_reorders,
            loss: self.loss,
            burst_loss: self.burst_loss,
            burst_len: self.burst_len,
            burst_bad_loss: self.burst_bad_loss,
            reorder: self.reorder,
            reorder_delay: self.reorder_delay,
            duplicate: self.duplicate,
            corrupt: self.corrupt,
            fix_checksum: self.fix_checksum,
            outage: self.outage,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Profiles => {
            for p in PROFILES {
                let link = config::profile(p.name).unwrap_or_default();
                println!(
                    "{:<8}  {}\n          {}",
                    p.name,
                    p.summary,
                    describe(&link)
                );
            }
            Ok(())
        }
        Cmd::Down { name } => emulator::down(&name).map(|removed| {
            for r in removed {
                eprintln!("removed {r}");
            }
        }),
        Cmd::Up(a) => {
            let link = match config::resolve(a.profile.as_deref(), &a.link.overrides()) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("trackshift-netlab: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            eprintln!(
                "trackshift-netlab: link (each direction): {}",
                describe(&link)
            );
            emulator::up(UpOptions {
                name: a.name,
                a_to_b: link.clone(),
                b_to_a: link,
                seed: a.seed,
                max_duration: a.max_duration,
                addr_change_at: a.addr_change_at,
                side_c: a.side_c,
            })
            .map(|_| ())
        }
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trackshift-netlab: {e:#}");
            ExitCode::FAILURE
        }
    }
}
