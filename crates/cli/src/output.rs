//! What the user sees of the engine's events: NDJSON on stdout with `--json`, else a progress bar and one-line
//! messages on stderr, nothing but errors with `--quiet`.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use trackshift_engine::{Event, EventSink};

/// How often a `progress`, `sending` or `dcsp` event is printed with `--json`.
const JSON_EVERY: Duration = Duration::from_secs(1);

/// What the command line's sinks add to the engine's: the closing `error` object of a failed `send --json`.
pub trait Output: EventSink {
    /// A `send` failed with `message` and `exit_code` (printed only where the sink prints JSON).
    fn error_event(&self, _message: &str, _exit_code: i32) {}
}

/// The sink for `--json`, `--quiet` and neither.
pub fn output(json: bool, quiet: bool) -> Arc<dyn Output> {
    if json {
        Arc::new(Ndjson::default())
    } else {
        Arc::new(Terminal {
            quiet,
            bar: Mutex::default(),
        })
    }
}

/// `--json`: one object per line on stdout, `progress`, `sending` and `dcsp` each at most once a second.
#[derive(Debug, Default)]
struct Ndjson {
    state: Mutex<JsonState>,
}

#[derive(Debug, Default)]
struct JsonState {
    last_progress: Option<Instant>,
    last_sending: Option<Instant>,
    last_dcsp: Option<Instant>,
    /// A `summary` was printed: it stays the last line of a `send`.
    summary_printed: bool,
}

impl EventSink for Ndjson {
    fn event(&self, event: &Event) {
        if !event.in_ndjson() {
            return;
        }
        let mut state = lock(&self.state);
        if matches!(event, Event::SendSummary(_)) {
            state.summary_printed = true;
        }
        let last = match event {
            Event::Progress { .. } => Some(&mut state.last_progress),
            Event::Sending { .. } => Some(&mut state.last_sending),
            Event::Dcsp(_) => Some(&mut state.last_dcsp),
            _ => None,
        };
        if let Some(last) = last {
            let now = Instant::now();
            if last.is_some_and(|t| now.duration_since(t) < JSON_EVERY) {
                return;
            }
            *last = Some(now);
        }
        drop(state);
        match serde_json::to_value(event) {
            Ok(v) => print_line(&v),
            Err(e) => eprintln!("trackshift: cannot print an event: {e}"),
        }
    }
}

impl Output for Ndjson {
    /// After a summary, which already says why, nothing may follow it (cli-contract.md, `--json`): the `error`
    /// object is only for a failure before the summary (a missing file, no secret).
    fn error_event(&self, message: &str, exit_code: i32) {
        if !lock(&self.state).summary_printed {
            print_line(
                &serde_json::json!({"event": "error", "message": message, "exit_code": exit_code}),
            );
        }
    }
}

/// A person's terminal: a progress bar (when stderr is one) and one-line messages on stderr; with `--quiet`,
/// nothing.
#[derive(Debug)]
struct Terminal {
    quiet: bool,
    bar: Mutex<BarState>,
}

#[derive(Debug, Default)]
struct BarState {
    bar: Option<ProgressBar>,
    /// The bar was started once (a reconnect does not start another).
    started: bool,
    /// DCSP figures arrived: they, not `Sending`, write the bar's message.
    dcsp: bool,
}

impl EventSink for Terminal {
    fn event(&self, event: &Event) {
        if self.quiet || self.drive_bar(event) {
            return;
        }
        if let Some(line) = human_line(event) {
            match &lock(&self.bar).bar {
                Some(bar) => bar.println(line),
                None => eprintln!("{line}"),
            }
        }
    }
}

impl Output for Terminal {}

impl Terminal {
    /// The progress bar's part of an event; true when the event was only for the bar.
    fn drive_bar(&self, event: &Event) -> bool {
        let mut state = lock(&self.bar);
        match event {
            Event::Accepted {
                bytes_verified,
                bytes_total,
                ..
            } => {
                if !state.started && std::io::stderr().is_terminal() {
                    state.bar = Some(new_bar(*bytes_total, *bytes_verified));
                }
                state.started = true;
            }
            Event::Progress { bytes_done, .. } => {
                if let Some(bar) = &state.bar {
                    bar.set_position(*bytes_done);
                }
            }
            Event::Sending {
                bytes,
                sending_mbps,
            } => {
                if let Some(bar) = &state.bar {
                    if *bytes > bar.position() {
                        bar.set_position((*bytes).min(bar.length().unwrap_or(*bytes)));
                    }
                    if !state.dcsp {
                        bar.set_message(format!("sending · {sending_mbps:.0} Mbit/s"));
                    }
                }
            }
            Event::Dcsp(f) => {
                state.dcsp = true;
                if let Some(bar) = &state.bar {
                    bar.set_message(format!(
                        "sending · {:.0} Mbit/s, loss {:.1}%, rtt {:.0} ms, parity {}",
                        f.sending_mbps, f.loss_pct, f.rtt_ms, f.parity
                    ));
                }
            }
            Event::SendSummary(_) => {
                if let Some(bar) = state.bar.take() {
                    bar.finish_and_clear();
                }
                return false;
            }
            _ => return false,
        }
        true
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn print_line(v: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn new_bar(total: u64, done: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message("sending");
    bar.set_position(done);
    bar.reset_eta();
    bar
}

/// The line a person reads for an event (None: nothing to say).
fn human_line(event: &Event) -> Option<String> {
    send_line(event).or_else(|| receive_line(event))
}

/// What a sender says.
fn send_line(event: &Event) -> Option<String> {
    Some(match event {
        Event::Resuming { session_id } => format!("resuming session {session_id}"),
        Event::ChangedSince { path, session_id } => {
            format!("{path} changed since session {session_id}: starting a fresh session")
        }
        Event::Identified {
            to,
            fingerprint,
            known_file,
        } => format!("receiver {to} identified as {fingerprint} (remembered in {known_file})"),
        Event::Retry {
            error,
            delay_s,
            lost: true,
        } => format!("connection lost ({error}); reconnecting in {delay_s:.1}s"),
        Event::Retry { error, delay_s, .. } => format!("{error}; retrying in {delay_s:.1}s"),
        Event::Fallback { reason, .. } => format!("{reason}; falling back to TCP"),
        Event::RelayFailover {
            lost,
            moved,
            reason,
            ..
        } => format!("relay {lost} lost ({reason}): its streams move {moved}"),
        Event::SourceChanged { index, path } => format!(
            "chunk {index} of {path} differs from what the receiver verified earlier: starting a fresh session"
        ),
        Event::ChunkFailed { index } => {
            format!("chunk {index} failed verification at the receiver; sending it again")
        }
        Event::Sent {
            file,
            bytes,
            final_name,
            seconds,
            sha256,
        } => format!("sent {file} ({bytes} bytes) as {final_name} in {seconds:.1}s, sha256 {sha256}"),
        Event::AlreadyCompleted { session_id } => format!("session {session_id} already completed"),
        _ => return None,
    })
}

/// What a receiver says.
fn receive_line(event: &Event) -> Option<String> {
    Some(match event {
        Event::Listening {
            addr,
            fingerprint,
            secret,
            udp_sockets,
            ..
        } => {
            let paths = match udp_sockets {
                Some(n) if *n > 1 => format!("TCP and UDP, {n} UDP sockets"),
                Some(_) => "TCP and UDP".to_owned(),
                None => "TCP".to_owned(),
            };
            let mut line = match addr {
                Some(addr) => format!("listening on {addr} ({paths}), certificate {fingerprint}"),
                None => format!(
                    "receiving through relays (no listening port), certificate {fingerprint}"
                ),
            };
            if let Some(s) = secret {
                line.push_str(&format!(
                    "\nsecret: {s}  (senders pass it with --secret or TRACKSHIFT_SECRET)"
                ));
            }
            line
        }
        Event::NoUdp { addr, error } => format!(
            "cannot listen on UDP {addr} ({error}): only --protocol tcp senders can be served"
        ),
        Event::Refused { peer, reason } => format!("refused {peer}: {reason}"),
        Event::SessionStart {
            session_id,
            file,
            bytes,
            peer,
            chunks_verified,
        } => {
            let resuming = match chunks_verified {
                0 => String::new(),
                n => format!(", resuming with {n} chunks verified"),
            };
            format!("receiving {file} ({bytes} bytes) from {peer}, session {session_id}{resuming}")
        }
        Event::TransferFailed { peer, message } => {
            format!("transfer from {peer} failed: {message}")
        }
        Event::ReceiveSummary(s) => {
            let path = s.final_path.as_ref().filter(|_| s.core.ok)?;
            format!(
                "received {} → {path} in {:.1}s",
                s.core.file, s.core.seconds
            )
        }
        Event::Interrupted {
            session_id,
            file,
            peer,
            ..
        } => format!("{file} from {peer}: connection lost; session {session_id} kept for resume"),
        Event::Stopped => {
            "stopped; partial transfers are kept and resume when their senders re-run".to_owned()
        }
        _ => return None,
    })
}
