//! `trackshift-storage`: everything TrackShift keeps on disk, except the TLS identity files.
//!
//! This crate owns:
//! - the seams between a transfer and its bytes: [`ChunkSource`] (what a sender reads chunks from; the local
//!   [`FileSource`] today, a folder or an S3 object later) and [`ChunkSink`] (what a receiver writes them into;
//!   [`PartialFile`] today);
//! - the receiver's partial files (`<output_dir>/.trackshift-<session>.part`, opened with `O_NOFOLLOW`) and the
//!   final, never-overwriting move of a verified file into place ([`PartialFile`]);
//! - validation of file names that come from the network ([`validate_file_name`]);
//! - output-dir and free-space checks ([`check_output_dir`], [`available_space`], [`ensure_space`]);
//! - the state dir ([`StateDir`]), the crash-safe session store ([`SessionStore`], one SQLite database) and the
//!   sender's known receivers file ([`KnownReceivers`]).
//!
//! The session store is SQLite (bundled, via `rusqlite`) because several processes share one state dir at once:
//! a long-running `trackshift receive`, `trackshift status` / `list` from another shell, and a `trackshift send`
//! on the same machine. SQLite lets them all open the database together and serialises their writes with
//! file locks; WAL journal mode with `synchronous=FULL` makes every commit durable and crash-safe.
//!
//! It must not touch: the network (no sockets, no protocol logic: that is `trackshift-proto` and
//! `trackshift-transport`), the TLS identity files under [`StateDir::identity_dir`] (the transport crate owns
//! them; this crate only creates the directory), default path resolution (the CLI passes paths in), and any
//! file outside the output dir and state dir it is given. All failures are one [`StorageError`].
#![forbid(unsafe_code)] // only trackshift-udp (and the netlab test support) may have unsafe: see ARCHITECTURE.md

mod chunks;
mod dirs;
mod error;
mod known;
mod names;
mod partial;
mod source;
mod stage;
mod store;

pub use trackshift_proto::SessionId;

pub use chunks::{ChunkSink, ChunkSource};
pub use dirs::{available_space, check_output_dir, ensure_space, unix_now, StateDir};
pub use error::StorageError;
pub use known::KnownReceivers;
pub use names::{validate_file_name, MAX_NAME_BYTES, RESERVED_PREFIX};
pub use partial::{PartialFile, DIRECT_IO_ALIGN};
pub use source::{FileSource, SourceError};
pub use stage::{WriteStage, STAGE_BYTES};
pub use store::{
    id_hex, IncomingSession, OutgoingSession, SessionRecord, SessionState, SessionStore,
};
