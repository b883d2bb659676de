//! The `trackshift` command-line tool: argument parsing, output and exit codes over `trackshift-engine`.
//!
//! Everything here is the edge: clap turns the command line into the engine's options, [`output`]'s two sinks
//! turn the engine's events into a progress bar and human lines, or NDJSON, and [`exit`] turns its errors into the
//! contract's exit codes (`../shared/spec/cli-contract.md`). The transfer logic is all in the engine. Errors are
//! the engine's typed `EngineError` to the end rather than an `anyhow` chain, because each must keep the
//! [`trackshift_engine::ErrorKind`] its exit code comes from.

#![forbid(unsafe_code)]

mod exit;
mod grid;
mod orchestrator;
mod output;
mod relay;
mod sessions;
mod units;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use trackshift_engine::{
    CompressMode, DataPath, EngineError, ParityMode, ReceiveOptions, SendOptions, SessionId,
    TransferOptions, VerifyMode, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE,
};

use output::Output;

#[derive(Parser, Debug)]
#[command(
    name = "trackshift",
    version,
    about = "Moves very large files fast and intact across bad networks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Flags every command takes.
#[derive(Args, Debug, Clone)]
struct Common {
    /// Where sessions, identity and known receivers live [default: $XDG_STATE_HOME/trackshift or ~/.local/state/trackshift]
    #[arg(long, env = "TRACKSHIFT_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// One JSON object per line on stdout (NDJSON)
    #[arg(long)]
    json: bool,
    /// No progress or messages (errors still go to stderr)
    #[arg(long, short)]
    quiet: bool,
    /// Log details to stderr (repeat for more)
    #[arg(long, short, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Send one file to a receiver
    Send(SendArgs),
    /// Receive files into a directory
    Receive(ReceiveArgs),
    /// Resume an interrupted outgoing session
    Resume(ResumeArgs),
    /// List the sessions in the state dir
    List(ListArgs),
    /// Show one session's state and progress
    Status(StatusArgs),
    /// Forward sessions between senders and receivers that both dial out to it (edge grid)
    Relay(relay::RelayArgs),
    /// Run the edge grid's orchestrator (REST API), or issue a token with `orchestrator token`
    Orchestrator(orchestrator::OrchestratorArgs),
    /// Print the version
    Version,
    /// Print a shell completion script
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Udp,
    Tcp,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Compress {
    Auto,
    Zstd,
    None,
}

/// How `receive` checks a whole file once every chunk verified.
#[derive(ValueEnum, Clone, Copy, Debug)]
enum Verify {
    /// Every chunk by its SHA-256 and the file by the hash of its chunk list
    Chunks,
    /// Also read the file back from disk after the final fsync and check its SHA-256 before the rename
    Full,
}

impl From<Verify> for VerifyMode {
    fn from(v: Verify) -> Self {
        match v {
            Verify::Chunks => VerifyMode::Chunks,
            Verify::Full => VerifyMode::Full,
        }
    }
}

impl From<Compress> for CompressMode {
    fn from(c: Compress) -> Self {
        match c {
            Compress::Auto => CompressMode::Auto,
            Compress::Zstd => CompressMode::Zstd,
            Compress::None => CompressMode::None,
        }
    }
}

fn chunk_size(s: &str) -> Result<u64, String> {
    let v = units::parse_size(s)?;
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&v) {
        return Err(format!("{s} is out of range: use 5MiB to 200MiB"));
    }
    Ok(v)
}

/// Transfer tuning shared by `send` and `resume`.
#[derive(Args, Debug, Clone)]
struct TransferArgs {
    /// The shared secret the receiver printed (or was started with)
    #[arg(long, env = "TRACKSHIFT_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Data path: udp (DCSP) or tcp [default: udp, falling back to tcp if UDP gets no answer]
    #[arg(long, value_enum)]
    protocol: Option<Protocol>,
    /// Forward error correction (UDP): auto (from the measured loss) or K+M data+parity shards, e.g. 10+3
    #[arg(long, default_value = "auto", value_parser = ParityMode::parse, value_name = "auto|K+M")]
    parity: ParityMode,
    /// Parallel UDP streams, each with its own socket, thread and rate controller [default: half the cores, 1 to 8]
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=64))]
    streams: Option<u8>,
    /// Cap on the sending rate, e.g. 100Mbit, 1Gbit, 50MB/s
    #[arg(long, value_parser = units::parse_rate, value_name = "RATE")]
    max_rate: Option<u64>,
    /// Expected certificate fingerprint of the receiver (sha256:…), instead of trust on first use
    #[arg(long)]
    fingerprint: Option<String>,
    /// Keep retrying a dropped connection for this long, e.g. 5m, 30s
    #[arg(long, value_parser = units::parse_duration, default_value = "5m")]
    retry_for: Duration,
    /// Give up on an unreachable receiver (never connected in this run) after this long
    #[arg(long, value_parser = units::parse_duration, default_value = "30s")]
    connect_timeout: Duration,
}

impl TransferArgs {
    fn into_options(self, state_dir: PathBuf) -> TransferOptions {
        TransferOptions {
            secret: self.secret,
            protocol: match self.protocol {
                Some(Protocol::Tcp) => DataPath::Tcp,
                Some(Protocol::Udp) => DataPath::Udp { explicit: true },
                None => DataPath::Udp { explicit: false },
            },
            parity: self.parity,
            streams: self
                .streams
                .unwrap_or_else(trackshift_engine::default_streams),
            max_rate: trackshift_engine::RateCap::new(self.max_rate),
            fingerprint: self.fingerprint,
            retry_for: self.retry_for,
            connect_timeout: self.connect_timeout,
            state_dir,
            rate_controllers: None,
        }
    }
}

#[derive(Args, Debug)]
struct SendArgs {
    /// The file to send
    path: PathBuf,
    /// The receiver, HOST:PORT; with --orchestrator, its registered name
    #[arg(long, value_name = "HOST:PORT|NAME")]
    to: String,
    #[command(flatten)]
    grid: grid::GridSendArgs,
    /// Chunk size: the unit of verification and resume (5MiB to 200MiB)
    #[arg(long, value_parser = chunk_size, default_value = "50MiB", value_name = "SIZE")]
    chunk_size: u64,
    /// zstd per chunk: auto (only when it pays), zstd, or none
    #[arg(long, value_enum, default_value = "auto")]
    compress: Compress,
    #[command(flatten)]
    transfer: TransferArgs,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct ReceiveArgs {
    /// Address to listen on, ADDR:PORT (TCP control channel; UDP on the same port); optional with --orchestrator
    #[arg(
        long,
        value_name = "ADDR:PORT",
        required_unless_present = "orchestrator"
    )]
    listen: Option<String>,
    /// With --orchestrator: the name this receiver registers, which senders give as --to
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    #[command(flatten)]
    grid: grid::GridArgs,
    /// Where finished files go
    #[arg(long, value_name = "DIR")]
    output_dir: PathBuf,
    /// The shared secret senders must know (generated and printed when absent)
    #[arg(long, env = "TRACKSHIFT_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Exit after the first transfer ends: 0 if it verified, non-zero if it failed
    #[arg(long)]
    once: bool,
    /// UDP sockets and threads on the port, DCSP connections spread over them by connection id
    /// (SO_REUSEPORT) [default: half the cores, 1 to 8]
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=64))]
    streams: Option<u8>,
    /// How a finished file is checked before it is put in place
    #[arg(long, value_enum, default_value = "chunks")]
    verify: Verify,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct ResumeArgs {
    /// The session id, as `trackshift list` shows it
    session_id: SessionId,
    /// A session sent through the grid resumes through it (the same flags as `send`'s)
    #[command(flatten)]
    grid: grid::GridSendArgs,
    #[command(flatten)]
    transfer: TransferArgs,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct ListArgs {
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct StatusArgs {
    session_id: SessionId,
    #[command(flatten)]
    common: Common,
}

fn default_state_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("trackshift");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/state/trackshift")
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info,trackshift=debug",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRACKSHIFT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Logging, the output and the state dir of a command.
fn setup(common: &Common) -> (Arc<dyn Output>, PathBuf) {
    init_logging(common.verbose);
    (
        output::output(common.json, common.quiet),
        common.state_dir.clone().unwrap_or_else(default_state_dir),
    )
}

fn run(cli: Cli) -> Result<(), (EngineError, Option<Arc<dyn Output>>)> {
    match cli.command {
        Command::Send(a) => {
            let (reporter, state_dir) = setup(&a.common);
            let opts = SendOptions {
                path: a.path,
                to: a.to,
                chunk_size: a.chunk_size,
                compress: a.compress.into(),
                transfer: a.transfer.into_options(state_dir),
                relay: None,
            };
            grid::send(opts.clone(), &a.grid, reporter.clone())
                .unwrap_or_else(|| trackshift_engine::send(opts, reporter.clone()).map(drop))
                .map_err(|e| (e, Some(reporter)))
        }
        Command::Resume(a) => {
            let (reporter, state_dir) = setup(&a.common);
            let transfer = a.transfer.into_options(state_dir);
            grid::resume(a.session_id, transfer.clone(), &a.grid, reporter.clone())
                .unwrap_or_else(|| {
                    trackshift_engine::resume(a.session_id, transfer, reporter.clone()).map(drop)
                })
                .map_err(|e| (e, Some(reporter)))
        }
        Command::Receive(a) => {
            let (reporter, state_dir) = setup(&a.common);
            let opts = ReceiveOptions {
                listen: a.listen.unwrap_or_default(),
                output_dir: a.output_dir,
                secret: a.secret,
                state_dir,
                once: a.once,
                udp_sockets: usize::from(
                    a.streams.unwrap_or_else(trackshift_engine::default_streams),
                ),
                verify: a.verify.into(),
            };
            grid::receive(opts.clone(), &a.grid, a.name, reporter.clone())
                .unwrap_or_else(|| trackshift_engine::receive(opts, reporter))
                .map_err(|e| (e, None))
        }
        Command::List(a) => {
            let (_, state_dir) = setup(&a.common);
            sessions::list(&state_dir, a.common.json).map_err(|e| (e, None))
        }
        Command::Status(a) => {
            let (_, state_dir) = setup(&a.common);
            sessions::status(&state_dir, a.session_id, a.common.json).map_err(|e| (e, None))
        }
        Command::Relay(a) => std::process::exit(relay::run(a)),
        Command::Orchestrator(a) => std::process::exit(orchestrator::run(a)),
        Command::Version => {
            println!(
                "trackshift {} (control protocol v{})",
                env!("CARGO_PKG_VERSION"),
                trackshift_engine::PROTOCOL_VERSION
            );
            Ok(())
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "trackshift",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(()) => exit::OK,
        Err((e, reporter)) => {
            let code = exit::code(&e);
            // `send` and `resume` end their NDJSON with the error and its exit code.
            if let Some(r) = reporter {
                r.error_event(&e.to_string(), code);
            }
            eprintln!("trackshift: error: {e}");
            code
        }
    };
    std::process::exit(code);
}
