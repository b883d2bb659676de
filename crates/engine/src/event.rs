//! What the engine tells whoever runs it, as typed events through one [`EventSink`].
//!
//! Each event serialises (serde, `"event"` tag) to the object the command line's `--json` prints, field for
//! field; a few exist for people only ([`Event::in_ndjson`] is false for them) and carry what a human line
//! needs. The command line's progress bar and its NDJSON are two sinks; relays, the orchestrator and metrics
//! plug in more.

use std::time::Duration;

use serde::Serialize;

/// Receives the engine's events, from any thread.
pub trait EventSink: Send + Sync {
    fn event(&self, event: &Event);
}

impl<F: Fn(&Event) + Send + Sync> EventSink for F {
    fn event(&self, event: &Event) {
        self(event)
    }
}

/// A sink that drops everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEvents;

impl EventSink for NoEvents {
    fn event(&self, _: &Event) {}
}

/// One thing that happened.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    // ---- send ----
    /// A send run starts.
    Start {
        session_id: String,
        file: String,
        bytes: u64,
        to: String,
        protocol: &'static str,
        chunk_size: u64,
        chunks: u32,
    },
    /// An interrupted session of the same file and receiver goes on.
    Resuming { session_id: String },
    /// The source changed since an unfinished session (`session_id`): a fresh session starts.
    ChangedSince { path: String, session_id: String },
    /// First contact with a receiver: its certificate fingerprint is now pinned in `known_file`.
    Identified {
        to: String,
        fingerprint: String,
        known_file: String,
    },
    /// A connection attempt failed (`lost` false) or a connection was lost (`lost` true); the next attempt
    /// follows in `delay_s` seconds.
    Retry {
        error: String,
        delay_s: f64,
        #[serde(skip)]
        lost: bool,
    },
    /// UDP is unusable: the run goes on over `protocol` (TCP).
    Fallback {
        protocol: &'static str,
        reason: String,
    },
    /// Chunk `index` of `path` differs from what the receiver verified earlier: a fresh session starts.
    SourceChanged { index: u32, path: String },
    /// The receiver accepted the offer, holding this much already.
    Accepted {
        chunks_verified: u32,
        bytes_verified: u64,
        #[serde(skip)]
        bytes_total: u64,
    },
    /// Bytes the receiver has verified (all runs), and the goodput of this run since `accepted`.
    Progress {
        bytes_done: u64,
        bytes_total: u64,
        goodput_mbps: f64,
    },
    /// File bytes put on the wire so far (smoother than verified chunks; for progress displays), and what the
    /// sender really sends over about the last second (TCP: frames; DCSP: datagrams), in megabits: under
    /// `--max-rate`, the cap less the IP headers it counts.
    Sending { bytes: u64, sending_mbps: f64 },
    /// The DCSP data plane's figures (every quarter second while it runs).
    Dcsp(DcspFigures),
    /// Chunk `index` failed verification at the receiver and is sent again.
    ChunkFailed { index: u32 },
    /// A send run ended.
    #[serde(rename = "summary")]
    SendSummary(Box<SendSummary>),
    /// The file went and was confirmed.
    Sent {
        file: String,
        bytes: u64,
        final_name: String,
        seconds: f64,
        sha256: String,
    },
    /// `resume` of a session that completed already.
    AlreadyCompleted { session_id: String },
    /// The receiver verified chunk `index` (for progress reports to an orchestrator; not in `--json`).
    ChunkVerified { index: u32 },
    /// Through relays: relay `lost` died, drains or stopped forwarding; its streams moved (`moved` says
    /// where), the control connection now goes through `control`, the streams through `stripes`.
    RelayFailover {
        lost: String,
        moved: String,
        control: String,
        stripes: Vec<String>,
        reason: String,
    },

    // ---- receive ----
    /// The receiver is up.
    Listening {
        /// The listening port's address; None (JSON null) for a receiver served only through relays, which
        /// has no listening port (`receive --orchestrator` without `--listen`).
        addr: Option<String>,
        fingerprint: String,
        output_dir: String,
        /// The secret senders need, when the receiver generated it (or loaded the one it generated earlier).
        secret: Option<String>,
        /// UDP sockets on the port (None: no UDP, TCP senders only).
        udp_sockets: Option<usize>,
    },
    /// UDP could not be bound: only TCP senders can be served.
    NoUdp { addr: String, error: String },
    /// A connection failed authentication or spoke no common version.
    Refused { peer: String, reason: String },
    /// A transfer starts (or resumes) on a connection.
    SessionStart {
        session_id: String,
        file: String,
        bytes: u64,
        peer: String,
        chunks_verified: usize,
    },
    /// A transfer from `peer` ended in failure (its summary or interruption follows, if it had started).
    TransferFailed { peer: String, message: String },
    /// A transfer ended on its connection.
    #[serde(rename = "summary")]
    ReceiveSummary(Box<ReceiveSummary>),
    /// A transfer's connection went away; the session is kept for a resume.
    Interrupted {
        session_id: String,
        file: String,
        peer: String,
        /// DCSP: the address changes this connection's data plane followed (a resumed session's summary has only
        /// the last connection's counters).
        path_changes: Option<u64>,
    },
    /// The receiver stopped (SIGTERM, Ctrl+C, or `--once`).
    Stopped,
}

impl Event {
    /// Whether `--json` prints this event (the others are for people only).
    pub fn in_ndjson(&self) -> bool {
        matches!(
            self,
            Event::Start { .. }
                | Event::Retry { .. }
                | Event::Fallback { .. }
                | Event::RelayFailover { .. }
                | Event::Accepted { .. }
                | Event::Progress { .. }
                | Event::Sending { .. }
                | Event::Dcsp(_)
                | Event::SendSummary(_)
                | Event::Listening { .. }
                | Event::Refused { .. }
                | Event::SessionStart { .. }
                | Event::ReceiveSummary(_)
                | Event::Interrupted { .. }
        )
    }

    pub(crate) fn retry(error: String, delay: Duration, lost: bool) -> Self {
        Event::Retry {
            error,
            delay_s: delay.as_secs_f64(),
            lost,
        }
    }
}

/// The DCSP sender's live figures.
#[derive(Debug, Clone, Serialize)]
pub struct DcspFigures {
    /// What the data planes sent over about the last second (datagram bytes, without IP/UDP headers), in
    /// megabits.
    pub sending_mbps: f64,
    /// The rate the controllers allow (under `--max-rate`, at most the cap).
    pub rate_mbps: f64,
    pub loss_pct: f64,
    pub rtt_ms: f64,
    /// `data+parity` shards per block.
    pub parity: String,
    pub packets_sent: u64,
    pub packets_retransmitted: u64,
    pub fec_recovered: u64,
    pub phase: &'static str,
}

/// What every summary says (the fields the command-line contract names for both sides).
#[derive(Debug, Clone, Serialize)]
pub struct SummaryCore {
    pub session_id: String,
    pub file: String,
    pub bytes: u64,
    pub seconds: f64,
    /// File bytes this run delivered (not those verified in an earlier run) per second, in megabits.
    pub goodput_mbps: f64,
    pub protocol: &'static str,
    /// The whole file's SHA-256, when it verified.
    pub sha256: Option<String>,
    pub ok: bool,
    pub error: Option<String>,
}

/// How a send run ended.
#[derive(Debug, Clone, Serialize)]
pub struct SendSummary {
    #[serde(flatten)]
    pub core: SummaryCore,
    pub final_name: Option<String>,
    pub packets_sent: Option<u64>,
    pub packets_retransmitted: Option<u64>,
    pub fec_recovered: Option<u64>,
    pub loss_pct: Option<f64>,
    pub rtt_ms: Option<f64>,
    pub parity: Option<String>,
    pub rate_mbps: Option<f64>,
    pub chunks_total: u32,
    pub chunks_sent: u32,
    pub chunks_resent: u32,
    pub chunks_skipped: u32,
    pub compressed_chunks: u32,
    pub bytes_on_wire: u64,
    pub connections: u32,
    /// Through relays: the ids of the relays that carried part of the transfer (absent when direct).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relays: Option<Vec<String>>,
}

/// How one transfer ended at the receiver.
#[derive(Debug, Clone, Serialize)]
pub struct ReceiveSummary {
    #[serde(flatten)]
    pub core: SummaryCore,
    pub final_path: Option<String>,
    pub peer: String,
    pub bytes_received: u64,
    /// The DCSP figures (all null over TCP).
    #[serde(flatten)]
    pub dcsp: ReceiverFigures,
    /// Through relays: the ids of the relays its connections were paired at and its datagrams came through,
    /// over every connection of the session (absent when direct).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relays: Option<Vec<String>>,
}

/// What a receiver's DCSP connections counted, summed over the transfer's streams.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReceiverFigures {
    /// The ACKs this receiver sent (it re-sends nothing, so `packets_retransmitted` is 0).
    pub packets_sent: Option<u64>,
    pub packets_retransmitted: Option<u64>,
    /// The share of the sender's numbered datagrams that never arrived, in percent.
    pub loss_pct: Option<f64>,
    /// The round trip this receiver measured on the control connection (its authentication flight).
    pub rtt_ms: Option<f64>,
    pub packets_received: Option<u64>,
    pub fec_recovered: Option<u64>,
    pub packets_dropped: Option<u64>,
    pub packets_unauthentic: Option<u64>,
    pub packets_replayed: Option<u64>,
    pub path_changes: Option<u64>,
}

impl ReceiverFigures {
    /// The figures of `stats`, with `rtt` the control connection's round trip; all null without DCSP.
    pub(crate) fn of(stats: Option<&trackshift_dcsp::ReceiverStats>, rtt: Duration) -> Self {
        let Some(u) = stats else {
            return Self::default();
        };
        Self {
            packets_sent: Some(u.acks_sent),
            packets_retransmitted: Some(0),
            loss_pct: Some(rounded(u.loss() * 100.0, FIGURE_DECIMALS)),
            rtt_ms: Some(rounded(rtt.as_secs_f64() * 1e3, FIGURE_DECIMALS)),
            packets_received: Some(u.packets_received),
            fec_recovered: Some(u.fec_recovered),
            packets_dropped: Some(u.dropped()),
            packets_unauthentic: Some(u.dropped_unauthentic),
            packets_replayed: Some(u.dropped_replayed + u.dropped_stale),
            path_changes: Some(u.path_changes),
        }
    }
}

/// Decimals of the figures in events (rates, loss, RTT): finer than anyone reads, coarse enough to be readable.
pub(crate) const FIGURE_DECIMALS: i32 = 3;

/// `x` rounded to `places` decimals, for figures people read (no `1.4e-62` loss).
pub(crate) fn rounded(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

/// Megabits per second of `bytes` over `seconds` (0 for no time).
pub(crate) fn mbps(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 * 8.0 / seconds / 1e6
    } else {
        0.0
    }
}
