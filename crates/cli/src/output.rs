//! What the user sees: a progress bar on a terminal, NDJSON events with `--json`, nothing with `--quiet`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

/// How often a `progress` event is printed with `--json`.
const JSON_PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Output settings shared by every command.
#[derive(Debug, Clone, Copy)]
pub struct OutputMode {
    pub json: bool,
    pub quiet: bool,
}

/// Prints events, messages and progress according to the output mode.
#[derive(Debug)]
pub struct Reporter {
    mode: OutputMode,
    bar: Option<ProgressBar>,
    last_json_progress: Option<Instant>,
    /// A `summary` event has been printed (it must stay the last line of a `send`).
    summary_printed: std::sync::atomic::AtomicBool,
}

impl Reporter {
    pub fn new(mode: OutputMode) -> Self {
        Self {
            mode,
            bar: None,
            last_json_progress: None,
            summary_printed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn mode(&self) -> OutputMode {
        self.mode
    }

    /// Whether a `summary` event has been printed.
    pub fn summary_printed(&self) -> bool {
        self.summary_printed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// One NDJSON object on stdout (with `--json` only).
    pub fn event(&self, value: Value) {
        if value["event"] == "summary" {
            self.summary_printed
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if self.mode.json {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{value}");
            let _ = out.flush();
        }
    }

    /// A human line on stderr (not with `--json` or `--quiet`).
    pub fn info(&self, message: &str) {
        if self.mode.json || self.mode.quiet {
            return;
        }
        match &self.bar {
            Some(bar) => bar.println(message),
            None => eprintln!("{message}"),
        }
    }

    /// Starts a byte progress display of `total` bytes, `done` of which are already there.
    pub fn progress_start(&mut self, label: &str, total: u64, done: u64) {
        if self.mode.json || self.mode.quiet || !std::io::stderr().is_terminal() {
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(label.to_owned());
        bar.set_position(done);
        bar.reset_eta();
        self.bar = Some(bar);
    }

    /// Bytes confirmed so far; prints a `progress` event at most once a second with `--json`.
    pub fn progress(&mut self, done: u64, total: u64, started: Instant, base: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
        if self.mode.json {
            let now = Instant::now();
            if self
                .last_json_progress
                .is_none_or(|t| now.duration_since(t) >= JSON_PROGRESS_EVERY)
            {
                self.last_json_progress = Some(now);
                let secs = now.duration_since(started).as_secs_f64().max(1e-9);
                self.event(serde_json::json!({
                    "event": "progress",
                    "bytes_done": done,
                    "bytes_total": total,
                    "goodput_mbps": (done.saturating_sub(base)) as f64 * 8.0 / secs / 1e6,
                }));
            }
        }
    }

    /// Moves the bar to `pos` bytes put on the wire (smoother than confirmed chunks); JSON is unaffected.
    pub fn bar_position(&self, pos: u64) {
        if let Some(bar) = &self.bar {
            if pos > bar.position() {
                bar.set_position(pos.min(bar.length().unwrap_or(pos)));
            }
        }
    }

    /// Live data-plane figures next to the bar (rate, loss, RTT, parity).
    pub fn bar_message(&self, m: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("sending · {m}"));
        }
    }

    pub fn progress_finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
