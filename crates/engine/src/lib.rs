//! The TrackShift engine: sending, receiving and resuming files as library calls.
//!
//! [`send()`], [`resume()`] and [`receive()`] take typed options and an [`EventSink`], and return a typed result or
//! an [`EngineError`] whose [`ErrorKind`] the command line turns into its exit code. The engine wires the
//! sans-IO protocol (`trackshift-proto`'s `SendSession` and `RecvSession`, `trackshift-dcsp`'s state machines)
//! to the disk (`trackshift-storage`), the control channel (`trackshift-transport`) and the UDP sockets
//! (`trackshift-udp`): it owns the threads, tasks, sockets and clocks, and decides nothing the protocol crates
//! decide.
//!
//! It never prints and never exits: everything a user or another program should know arrives as an
//! [`Event`]. It does not parse command lines or know about terminals (that is the `trackshift` binary).
//!
//! ```no_run
//! use std::sync::Arc;
//! use trackshift_engine::{send, Event, SendOptions};
//! # fn options() -> SendOptions { unimplemented!() }
//! let sink = Arc::new(|e: &Event| eprintln!("{e:?}"));
//! match send(options(), sink) {
//!     Ok(report) => println!("delivered as {:?}", report.summary.final_name),
//!     Err(e) => eprintln!("{e} ({:?})", e.kind()),
//! }
//! ```

#![forbid(unsafe_code)]

mod error;
mod event;
mod pool;
mod receive;
mod relay;
mod secret;
mod send;
pub mod sessions;
mod threads;

pub use error::{EngineError, ErrorKind};
pub use event::{
    DcspFigures, Event, EventSink, NoEvents, ReceiveSummary, ReceiverFigures, SendSummary,
    SummaryCore,
};
pub use receive::{
    receive, receive_relayed, serve, serve_relayed, PathSender, ReceiveOptions, RelayFeed,
    VerifyMode,
};
pub use relay::{PathUpdates, RelayHop, RelayPath, RelayRoute};
pub use send::{resume, resume_options, send, RateCap, SendOptions, SendReport, TransferOptions};
pub use trackshift_dcsp::ParityMode;
pub use trackshift_proto::compress::CompressMode;
pub use trackshift_proto::frame::PROTOCOL_VERSION;
pub use trackshift_proto::plan::{DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
pub use trackshift_proto::session::DataPath;
pub use trackshift_proto::SessionId;

/// Worker threads of the async runtime: the network side is a handful of long-lived connections; the CPU-heavy
/// work (hashing, zstd, AEAD, disk) runs on threads of its own.
const RUNTIME_THREADS: usize = 2;
/// Most `--streams` a default picks, however many cores there are.
const MAX_DEFAULT_STREAMS: usize = 8;

/// `--streams` when not given, on either side: half the cores, 1 to 8.
pub fn default_streams() -> u8 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / 2).clamp(1, MAX_DEFAULT_STREAMS) as u8
}

fn runtime() -> Result<tokio::runtime::Runtime, EngineError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RUNTIME_THREADS)
        .enable_all()
        .build()
        .map_err(|e| EngineError::Failed(format!("cannot start the async runtime: {e}")))
}

/// Sleeps until `deadline`; forever without one (a `select!` branch that never fires).
async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
