//! `trackshift relay`: the command line over `trackshift-relay`, with the orchestrator reached through
//! `trackshift-grid-client`.
//!
//! Start-up: bind UDP and TCP on `--listen` (refusing every token until registered), register with the
//! orchestrator (which hands out the admission key), print one ready line (a `relay_ready` event with
//! `--json`), heartbeat in the background. SIGTERM or SIGINT: announce the drain to the orchestrator, send
//! Drain notices, wait up to 10 s for sessions to leave, exit 0.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use trackshift_grid::api::{RelayHeartbeat, RelayRegistered, RelayRegistration};
use trackshift_grid::TokenKey;
use trackshift_grid_client::{ClientError, OrchestratorClient};
use trackshift_relay::orchestrator::{self, Link, LinkError, Orchestrator};
use trackshift_relay::{Limits, Relay, RelayConfig, Tap};

use crate::exit;

/// How long a relay keeps trying to register at start before it gives up (exit 1).
const REGISTER_FOR: Duration = Duration::from_secs(60);
/// How long a drain waits for sessions to leave.
const DRAIN_WAIT: Duration = Duration::from_secs(10);
/// Test hook: every byte the relay forwards is appended to this file (the "relay cannot read" tests look for a
/// marker in it). Not for production: it slows forwarding down.
const CAPTURE_ENV: &str = "TRACKSHIFT_RELAY_CAPTURE";

#[derive(Args, Debug)]
pub struct RelayArgs {
    /// Address for UDP and TCP, ADDR:PORT (the same port number for both)
    #[arg(long, value_name = "ADDR:PORT")]
    listen: String,
    /// The orchestrator's base URL, e.g. http://10.0.0.1:7070
    #[arg(long, env = "TRACKSHIFT_ORCHESTRATOR", value_name = "URL")]
    orchestrator: String,
    /// A relay (or admin) API token from `trackshift orchestrator token --role relay`
    #[arg(
        long,
        env = "TRACKSHIFT_TOKEN",
        hide_env_values = true,
        value_name = "JWT"
    )]
    token: String,
    /// This relay's id [default: the token's subject]
    #[arg(long, value_name = "ID")]
    relay_id: Option<String>,
    /// A region name for the orchestrator's choice and dashboard
    #[arg(long, value_name = "NAME", default_value = "")]
    region: String,
    /// Where peers reach this relay, if not the listen address (behind NAT, or listening on 0.0.0.0)
    #[arg(long, value_name = "ADDR:PORT")]
    public_addr: Option<String>,
    /// Forward toward this next relay (two-hop paths) instead of to local receivers
    #[arg(long, value_name = "ADDR:PORT")]
    forward: Option<String>,
    /// Cap on everything forwarded, e.g. 1Gbit, 100MB/s
    #[arg(long, value_parser = crate::units::parse_rate, value_name = "RATE")]
    max_rate: Option<u64>,
    /// Serve Prometheus metrics here (not yet supported by `relay`)
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_listen: Option<String>,
    /// One JSON object per line on stdout (NDJSON)
    #[arg(long)]
    json: bool,
    /// No messages (errors still go to stderr)
    #[arg(long, short)]
    quiet: bool,
    /// Log details to stderr (repeat for more)
    #[arg(long, short, action = clap::ArgAction::Count)]
    verbose: u8,
}

/// Runs the relay until SIGTERM; returns the exit code.
pub fn run(args: RelayArgs) -> i32 {
    crate::init_logging(args.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(exit::FAILED, &format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => exit::OK,
        Err((code, message)) => fail(code, &message),
    }
}

fn fail(code: i32, message: &str) -> i32 {
    eprintln!("trackshift: error: {message}");
    code
}

type Failure = (i32, String);

fn usage(message: String) -> Failure {
    (exit::USAGE, message)
}

async fn serve(args: RelayArgs) -> Result<(), Failure> {
    let listen = resolve(&args.listen, "--listen")?;
    let forward = args
        .forward
        .as_deref()
        .map(|f| resolve(f, "--forward"))
        .transpose()?;
    let relay_id = match &args.relay_id {
        Some(id) => id.clone(),
        None => token_subject(&args.token).ok_or_else(|| {
            usage("--token is not a JWT with a subject: pass --relay-id, or a token from `trackshift orchestrator token --role relay`".into())
        })?,
    };
    if args.metrics_listen.is_some() {
        eprintln!("trackshift: warning: --metrics-listen is not yet supported by `relay`; going on without it");
    }
    let client = OrchestratorClient::new(&args.orchestrator, &args.token, None)
        .map_err(|e| usage(e.to_string()))?;
    let relay = start_relay(listen, &relay_id, forward, args.max_rate).await?;
    let addr = match &args.public_addr {
        Some(a) => a.clone(),
        None => relay.local_addr().to_string(),
    };
    let body = RelayRegistration {
        relay_id: relay_id.clone(),
        addr: addr.clone(),
        region: args.region.clone(),
        max_rate: args.max_rate,
        forward: args.forward.clone(),
    };
    let client = Client(client);
    let (registered, verifier) = {
        let (client, body) = (client.clone(), body.clone());
        tokio::task::spawn_blocking(move || orchestrator::register(&client, &body, REGISTER_FOR))
            .await
            .map_err(|e| (exit::FAILED, e.to_string()))?
            .map_err(|e| {
                (
                    exit::FAILED,
                    format!("cannot register with the orchestrator: {e}"),
                )
            })?
    };
    relay.set_verifier(verifier);
    let link = Link::spawn(Box::new(client), body, &registered, relay.handle()).map_err(|e| {
        (
            exit::FAILED,
            format!("cannot start the heartbeat thread: {e}"),
        )
    })?;
    announce(&args, "relay_ready", &relay_id, relay.local_addr(), &addr);
    wait_for_signal().await?;
    link.draining();
    announce(
        &args,
        "relay_draining",
        &relay_id,
        relay.local_addr(),
        &addr,
    );
    let left = relay.drain(DRAIN_WAIT).await;
    let stats = relay.stats();
    drop(link);
    relay.shutdown();
    stopped(&args, &relay_id, left, &stats);
    Ok(())
}

async fn start_relay(
    listen: SocketAddr,
    relay_id: &str,
    forward: Option<SocketAddr>,
    max_rate: Option<u64>,
) -> Result<Relay, Failure> {
    // Until the orchestrator hands out its key, a key nobody has: every token is refused.
    let placeholder = TokenKey::generate()
        .map_err(|e| (exit::FAILED, e.to_string()))?
        .verifier();
    let config = RelayConfig {
        listen,
        relay_id: relay_id.to_owned(),
        verifier: placeholder,
        forward,
        limits: Limits {
            max_rate,
            ..Limits::default()
        },
        tap: capture_tap()?,
    };
    Relay::start(config).await.map_err(|e| {
        (
            exit::FAILED,
            format!("cannot listen on {listen} (UDP and TCP): {e}"),
        )
    })
}

fn resolve(addr: &str, flag: &str) -> Result<SocketAddr, Failure> {
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| usage(format!("{flag} {addr} is not an ADDR:PORT")))
}

/// The `sub` of a JWT, read without verifying it (the relay cannot verify its own API token; the
/// orchestrator does).
fn token_subject(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let json = base64url_decode(payload)?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    claims["sub"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn capture_tap() -> Result<Option<Tap>, Failure> {
    let Some(path) = std::env::var_os(CAPTURE_ENV).map(PathBuf::from) else {
        return Ok(None);
    };
    let file = File::create(&path).map_err(|e| {
        (
            exit::FAILED,
            format!("cannot create {}: {e}", path.display()),
        )
    })?;
    let writer = Mutex::new(BufWriter::new(file));
    Ok(Some(Arc::new(move |_, bytes: &[u8]| {
        let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
        let _ = w.write_all(bytes).and_then(|_| w.flush());
    })))
}

async fn wait_for_signal() -> Result<(), Failure> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| (exit::FAILED, format!("cannot watch SIGTERM: {e}")))?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

fn announce(args: &RelayArgs, event: &str, relay_id: &str, listen: SocketAddr, addr: &str) {
    if args.json {
        let line = serde_json::json!({
            "event": event, "relay_id": relay_id, "listen": listen.to_string(), "addr": addr,
            "orchestrator": args.orchestrator, "forward": args.forward,
        });
        println!("{line}");
    } else if !args.quiet {
        match event {
            "relay_ready" => println!(
                "relay {relay_id} listening on {listen} (UDP and TCP), registered with {} as {addr}",
                args.orchestrator
            ),
            _ => println!("relay {relay_id} draining: telling its sessions to move"),
        }
    }
}

fn stopped(args: &RelayArgs, relay_id: &str, left: bool, stats: &trackshift_relay::RelayStats) {
    let c = &stats.counters;
    if args.json {
        let line = serde_json::json!({
            "event": "relay_stopped", "relay_id": relay_id, "sessions_left_in_time": left,
            "datagrams_forwarded": c.datagrams_forwarded,
            "bytes_forwarded": c.datagram_bytes_forwarded + c.stream_bytes_forwarded,
            "drops": c.drop_map(),
        });
        println!("{line}");
    } else if !args.quiet {
        let how = if left {
            "all sessions left"
        } else {
            "some sessions were still there"
        };
        println!(
            "relay {relay_id} stopped ({how}); forwarded {} datagrams",
            c.datagrams_forwarded
        );
    }
}

/// The orchestrator client as the relay link's [`Orchestrator`].
#[derive(Clone)]
struct Client(OrchestratorClient);

fn link_error(e: ClientError) -> LinkError {
    if e.is_not_found() {
        LinkError::NotFound
    } else {
        LinkError::Other(e.to_string())
    }
}

impl Orchestrator for Client {
    fn register(&self, body: &RelayRegistration) -> Result<RelayRegistered, LinkError> {
        self.0.register_relay(body).map_err(link_error)
    }

    fn heartbeat(&self, relay_id: &str, body: &RelayHeartbeat) -> Result<(), LinkError> {
        self.0.heartbeat(relay_id, body).map_err(link_error)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly on purpose

    use super::*;

    #[test]
    fn the_relay_id_defaults_to_the_token_subject() {
        let key = TokenKey::generate().unwrap();
        let token = key
            .sign_api("edge-7", trackshift_grid::Role::Relay, 1, 60)
            .unwrap();
        assert_eq!(token_subject(&token).as_deref(), Some("edge-7"));
        assert_eq!(token_subject("not a jwt"), None);
        assert_eq!(token_subject("a.!!.c"), None);
    }
}
