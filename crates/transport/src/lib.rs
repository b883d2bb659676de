//! TrackShift's control channel: TCP + TLS 1.3, the receiver's identity, and mutual authentication by the
//! shared secret.
//!
//! This crate owns sockets and TLS: it turns a TCP connection into an authenticated, encrypted stream of
//! [`trackshift_proto::Frame`]s. It knows nothing of files, chunks or the session store (that is
//! `trackshift-storage`), and decides nothing about a transfer (that is `trackshift-proto`).
//!
//! Trust model, as in SSH: the receiver creates a key and self-signed certificate on first run; the sender pins
//! the certificate's SHA-256 fingerprint on first contact (or from `--fingerprint`) and refuses a changed one.
//! On top of TLS both sides run SPAKE2 with the shared secret and confirm the resulting key with an HMAC over
//! the TLS exporter value, so the secret never crosses the wire, a fake receiver learns nothing it could
//! brute-force offline, and the two confirmations bind the secret to this very TLS session.
//!
//! The DCSP data plane's UDP sockets are not here: they are `trackshift-udp`.
#![forbid(unsafe_code)] // only trackshift-udp (and the netlab test support) may have unsafe: see ARCHITECTURE.md

mod auth;
mod error;
mod framed;
mod identity;
mod tls;

pub use auth::{
    authenticate_client, authenticate_client_up_to, authenticate_server, dcsp_secret_of,
    exporter_of, ClientAuth, SOFTWARE,
};

pub use error::TransportError;
pub use framed::{FrameReader, FrameWriter, PumpedFrame};
pub use identity::{fingerprint_of, normalize_fingerprint, Identity};
pub use tls::{
    client_config, connect, connect_over, segment_payload, server_config, tune_accepted, ClientTls,
    ServerTls, TlsAcceptor,
};
