//! `trackshift orchestrator` (serve the grid's API) and `trackshift orchestrator token` (issue a bearer
//! token signed with the state dir's key), over `trackshift-orchestrator`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use trackshift_grid::Role;
use trackshift_orchestrator::{Config, OrchestratorError, RateLimit, TlsFiles};

use crate::{exit, units, Common};

/// `trackshift orchestrator …`
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct OrchestratorArgs {
    #[command(subcommand)]
    command: Option<OrchestratorCommand>,
    /// Address to serve the API on, ADDR:PORT
    #[arg(long, value_name = "ADDR:PORT", required = true)]
    listen: Option<String>,
    /// PostgreSQL, postgres://USER[:PASSWORD]@HOST:PORT/DB [default: SQLite at <state-dir>/orchestrator.sqlite3]
    #[arg(
        long,
        value_name = "URL",
        env = "TRACKSHIFT_DATABASE",
        hide_env_values = true
    )]
    database: Option<String>,
    /// Serve HTTPS with this certificate chain (PEM)
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM)
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM): mutual TLS
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Serve Prometheus metrics on ADDR:PORT (not yet supported)
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_listen: Option<String>,
    /// Requests per second each client may make (by token subject, or IP without a token)
    #[arg(long, value_name = "N", default_value_t = trackshift_orchestrator::ratelimit::DEFAULT_PER_SECOND,
          value_parser = clap::value_parser!(u32).range(1..))]
    rate_limit: u32,
    /// How often relays send heartbeats; three missed ones and a relay is unhealthy
    #[arg(long, value_parser = units::parse_duration, default_value = "2s", value_name = "DURATION")]
    heartbeat_interval: Duration,
    #[command(flatten)]
    common: Common,
}

#[derive(Subcommand, Debug)]
enum OrchestratorCommand {
    /// Print a bearer token (a JWT) signed with the orchestrator's key from its state dir
    Token(TokenArgs),
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum RoleArg {
    Sender,
    Receiver,
    Relay,
    Admin,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Sender => Role::Sender,
            RoleArg::Receiver => Role::Receiver,
            RoleArg::Relay => Role::Relay,
            RoleArg::Admin => Role::Admin,
        }
    }
}

#[derive(Args, Debug)]
struct TokenArgs {
    /// What the token may do
    #[arg(long, value_enum)]
    role: RoleArg,
    /// Who holds it: a user, a receiver's name (for receiver tokens) or a relay id (for relay tokens)
    #[arg(long, value_name = "NAME")]
    subject: String,
    /// How long it is valid, e.g. 24h, 30m, 168h
    #[arg(long, value_parser = units::parse_duration, default_value = "24h", value_name = "DURATION")]
    ttl: Duration,
    /// Where the orchestrator's key lives [default: $XDG_STATE_HOME/trackshift or ~/.local/state/trackshift]
    #[arg(long, env = "TRACKSHIFT_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

/// Runs the command; returns the exit code.
pub fn run(args: OrchestratorArgs) -> i32 {
    match args.command {
        Some(OrchestratorCommand::Token(t)) => token(t),
        None => serve(args),
    }
}

fn token(args: TokenArgs) -> i32 {
    if trackshift_orchestrator::validate::name("subject", &args.subject).is_err() {
        eprintln!("trackshift: error: subject `{}` is not a name: use 1 to 64 letters, digits, `-`, `_` or `.`", args.subject);
        return exit::USAGE;
    }
    let state_dir = args.state_dir.unwrap_or_else(crate::default_state_dir);
    let key = match trackshift_orchestrator::signing_key(&state_dir) {
        Ok(key) => key,
        Err(e) => {
            eprintln!("trackshift: error: {e}");
            return exit::STORAGE;
        }
    };
    let now = trackshift_orchestrator::clock::now_secs();
    match key.sign_api(
        &args.subject,
        args.role.into(),
        now,
        args.ttl.as_secs().max(1),
    ) {
        Ok(jwt) => {
            println!("{jwt}");
            exit::OK
        }
        Err(e) => {
            eprintln!("trackshift: error: {e}");
            exit::FAILED
        }
    }
}

fn serve(args: OrchestratorArgs) -> i32 {
    crate::init_logging(args.common.verbose);
    if args.metrics_listen.is_some() {
        eprintln!("trackshift: error: --metrics-listen is not yet supported by the orchestrator");
        return exit::USAGE;
    }
    let Some(listen) = args.listen else {
        eprintln!("trackshift: error: --listen ADDR:PORT is required");
        return exit::USAGE;
    };
    let mut config = Config::new(
        listen,
        args.common
            .state_dir
            .clone()
            .unwrap_or_else(crate::default_state_dir),
    );
    config.database = args.database;
    config.rate_limit = RateLimit::per_second(args.rate_limit);
    config.heartbeat_interval = args.heartbeat_interval.max(Duration::from_secs(1));
    config.tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert,
            key,
            client_ca: args.client_ca,
        }),
        _ => None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trackshift: error: cannot start the runtime: {e}");
            return exit::FAILED;
        }
    };
    match runtime.block_on(serve_until_signal(config, &args.common)) {
        Ok(()) => exit::OK,
        Err(e) => {
            if args.common.json {
                println!(
                    "{}",
                    serde_json::json!({"event": "error", "message": e.to_string()})
                );
            }
            eprintln!("trackshift: error: {e}");
            if e.is_usage() {
                exit::USAGE
            } else {
                exit::FAILED
            }
        }
    }
}

async fn serve_until_signal(config: Config, common: &Common) -> Result<(), OrchestratorError> {
    let state_dir = config.state_dir.clone();
    let running = trackshift_orchestrator::start(config).await?;
    let database = match running.backend() {
        trackshift_orchestrator::Backend::Sqlite => "sqlite",
        trackshift_orchestrator::Backend::Postgres => "postgres",
    };
    if common.json {
        let event = serde_json::json!({
            "event": "listening", "addr": running.local_addr().to_string(), "url": running.url(),
            "database": database, "state_dir": state_dir,
        });
        println!("{event}");
    } else if !common.quiet {
        eprintln!(
            "orchestrator listening on {} ({database}, state dir {})",
            running.url(),
            state_dir.display()
        );
    }
    wait_for_signal().await;
    if !common.quiet && !common.json {
        eprintln!("orchestrator stopping");
    }
    running.stop().await
}

/// Ctrl-C or SIGTERM.
async fn wait_for_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
