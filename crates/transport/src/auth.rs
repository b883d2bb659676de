//! Version negotiation and mutual authentication by the shared secret (SPAKE2 + key confirmation bound to the
//! TLS session).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use spake2::{Ed25519Group, Identity as PakeIdentity, Password, Spake2};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use trackshift_proto::frame::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use trackshift_proto::{ErrorCode, Frame};

use crate::framed::{read_raw, write_frame, write_frames};
use crate::TransportError;

/// Our software name and version, sent in `Hello`.
pub const SOFTWARE: &str = concat!("trackshift ", env!("CARGO_PKG_VERSION"));
/// TLS exporter label (RFC 8446 §7.5): binds the secret's proof to this TLS session.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-trackshift-auth-v1";
/// TLS exporter label of the secret the DCSP keys derive from ([`dcsp_secret_of`]): another label than
/// [`EXPORTER_LABEL`], so the data plane's keys tell nothing about the authentication's proof. It is the one
/// `trackshift_dcsp::crypto::EXPORTER_LABEL` names (PROTOCOL.md §6.2), spelled again since this crate does
/// not depend on DCSP's.
const DCSP_EXPORTER_LABEL: &[u8] = b"EXPORTER-trackshift-dcsp-v1";
/// SPAKE2 identity shared by both sides (symmetric mode: both ends know the same secret).
const PAKE_IDENTITY: &[u8] = b"trackshift control channel v1";
/// Bytes reserved for the sender's first flight: `Hello` (with the software name) and `Pake` (SPAKE2's 33-byte
/// message) come to well under this, so the flight is built without growing its buffer.
const FLIGHT_CAPACITY: usize = 128;

type HmacSha256 = Hmac<Sha256>;

/// The `Hello` both sides send: the versions this build speaks.
const OUR_HELLO: Frame<'static> = Frame::Hello {
    min_version: MIN_PROTOCOL_VERSION,
    max_version: PROTOCOL_VERSION,
    software: SOFTWARE,
};

/// The version two peers speak: the newest both know, if their ranges meet.
fn agreed_version(min_version: u16, max_version: u16) -> Option<u16> {
    (min_version <= PROTOCOL_VERSION && max_version >= MIN_PROTOCOL_VERSION)
        .then(|| max_version.min(PROTOCOL_VERSION))
}

fn confirmation(key: &[u8], role: &[u8], exporter: &[u8; 32]) -> [u8; 32] {
    // HMAC accepts keys of any length; the SPAKE2 key is 32 bytes.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(role);
    mac.update(exporter);
    mac.finalize().into_bytes().into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn expect<'b, S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &'b mut Vec<u8>,
) -> Result<Frame<'b>, TransportError> {
    let t = read_raw(s, buf).await?;
    let f = Frame::decode(t, buf)?;
    if let Frame::Error { code, message } = f {
        return Err(match code {
            ErrorCode::Auth => TransportError::SecretRefused,
            _ => TransportError::Peer {
                code,
                message: message.to_owned(),
            },
        });
    }
    Ok(f)
}

fn unexpected(f: &Frame<'_>, wanted: &str) -> TransportError {
    TransportError::Protocol(format!("expected {wanted}, got {}", f.name()))
}

/// The sender's side of the authentication (see PROTOCOL.md §3), in two steps so that both of its flights
/// travel with other bytes: [`ClientAuth::start`] gives the first flight (`Hello` + `Pake`), which
/// [`crate::connect`] hands to TLS to send right behind its Finished (one TCP segment instead of two);
/// [`ClientAuth::finish`] reads the receiver's `Hello` + `Pake` + `Confirm` and returns our `Confirm`, which the
/// caller sends in front of its `Offer`, without waiting for anything after it.
pub struct ClientAuth {
    pake: Spake2<Ed25519Group>,
    /// The newest version this side offers (this build's, except for a test speaking as an older sender).
    max_version: u16,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientAuth")
    }
}

impl ClientAuth {
    /// Starts SPAKE2 with `secret`; returns the first flight's bytes (frames `Hello` and `Pake`).
    pub fn start(secret: &str) -> (Self, Vec<u8>) {
        Self::start_up_to(secret, PROTOCOL_VERSION)
    }

    /// Like [`Self::start`], offering versions only up to `max_version`: how a peer of an older build speaks
    /// (the compatibility tests use it).
    pub fn start_up_to(secret: &str, max_version: u16) -> (Self, Vec<u8>) {
        let (pake, outbound) = Spake2::<Ed25519Group>::start_symmetric(
            &Password::new(secret.as_bytes()),
            &PakeIdentity::new(PAKE_IDENTITY),
        );
        let mut flight = Vec::with_capacity(FLIGHT_CAPACITY);
        let max_version = max_version.clamp(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION);
        let hello = Frame::Hello {
            min_version: MIN_PROTOCOL_VERSION,
            max_version,
            software: SOFTWARE,
        };
        hello.encode(&mut flight);
        Frame::Pake { message: &outbound }.encode(&mut flight);
        (Self { pake, max_version }, flight)
    }

    /// Reads the receiver's flight and checks its confirmation; returns the `Confirm` frame to send next and
    /// the protocol version the connection speaks. `exporter` is the TLS exporter value for `EXPORTER_LABEL`.
    pub async fn finish<S: AsyncRead + AsyncWrite + Unpin>(
        self,
        s: &mut S,
        exporter: [u8; 32],
    ) -> Result<(Frame<'static>, u16), TransportError> {
        let mut buf = Vec::new();
        let version = match expect(s, &mut buf).await? {
            Frame::Hello {
                min_version,
                max_version,
                ..
            } => agreed_version(min_version, max_version)
                .map(|v| v.min(self.max_version))
                .ok_or(TransportError::Version {
                    ours: self.max_version,
                    min: min_version,
                    max: max_version,
                })?,
            f => return Err(unexpected(&f, "Hello")),
        };
        let key = match expect(s, &mut buf).await? {
            Frame::Pake { message } => self
                .pake
                .finish(message)
                .map_err(|_| TransportError::PeerNotAuthentic)?,
            f => return Err(unexpected(&f, "Pake")),
        };
        match expect(s, &mut buf).await? {
            Frame::Confirm { mac }
                if constant_time_eq(&mac, &confirmation(&key, b"receiver", &exporter)) =>
            {
                let confirm = Frame::Confirm {
                    mac: confirmation(&key, b"sender", &exporter),
                };
                Ok((confirm, version))
            }
            Frame::Confirm { .. } => {
                // Tell the receiver why we hang up, so it can report the refusal.
                let _ = write_frame(
                    s,
                    &Frame::Error {
                        code: ErrorCode::Auth,
                        message: "wrong secret",
                    },
                )
                .await;
                Err(TransportError::PeerNotAuthentic)
            }
            f => Err(unexpected(&f, "Confirm")),
        }
    }
}

/// Sender side in one go, on a connection whose TLS did not carry the first flight: writes it, checks the
/// receiver's flight, and writes and flushes our `Confirm`; the protocol version agreed.
pub async fn authenticate_client<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    exporter: [u8; 32],
    secret: &str,
) -> Result<u16, TransportError> {
    authenticate_client_up_to(s, exporter, secret, PROTOCOL_VERSION).await
}

/// [`authenticate_client`] offering versions only up to `max_version` (see [`ClientAuth::start_up_to`]).
pub async fn authenticate_client_up_to<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    exporter: [u8; 32],
    secret: &str,
    max_version: u16,
) -> Result<u16, TransportError> {
    let (auth, flight) = ClientAuth::start_up_to(secret, max_version);
    s.write_all(&flight)
        .await
        .map_err(|e| TransportError::io("writing to peer", e))?;
    s.flush()
        .await
        .map_err(|e| TransportError::io("writing to peer", e))?;
    let (confirm, version) = auth.finish(s, exporter).await?;
    write_frame(s, &confirm).await?;
    Ok(version)
}

/// Receiver side: answers the sender's `Hello` + `Pake` with `Hello` + `Pake` + `Confirm` in one flight, then
/// checks the sender's `Confirm`. On a wrong secret it tells the sender (an `Error` frame with code `Auth`)
/// and fails. (Confirming first reveals nothing testable offline: SPAKE2 allows one password guess per run,
/// whichever side confirms first.) Returns the protocol version agreed: the newest both speak.
pub async fn authenticate_server<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    exporter: [u8; 32],
    secret: &str,
) -> Result<u16, TransportError> {
    let mut buf = Vec::new();
    let version = match expect(s, &mut buf).await? {
        Frame::Hello {
            min_version,
            max_version,
            ..
        } => {
            let Some(version) = agreed_version(min_version, max_version) else {
                let message = format!(
                    "receiver speaks protocol versions {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}, sender {min_version}..={max_version}; upgrade the older side"
                );
                write_frame(
                    s,
                    &Frame::Error {
                        code: ErrorCode::Version,
                        message: &message,
                    },
                )
                .await?;
                return Err(TransportError::Version {
                    ours: PROTOCOL_VERSION,
                    min: min_version,
                    max: max_version,
                });
            };
            version
        }
        f => return Err(unexpected(&f, "Hello")),
    };
    let (pake, outbound) = Spake2::<Ed25519Group>::start_symmetric(
        &Password::new(secret.as_bytes()),
        &PakeIdentity::new(PAKE_IDENTITY),
    );
    let key = match expect(s, &mut buf).await? {
        Frame::Pake { message } => pake
            .finish(message)
            .map_err(|_| TransportError::PeerNotAuthentic)?,
        f => return Err(unexpected(&f, "Pake")),
    };
    write_frames(
        s,
        &[
            OUR_HELLO,
            Frame::Pake { message: &outbound },
            Frame::Confirm {
                mac: confirmation(&key, b"receiver", &exporter),
            },
        ],
    )
    .await?;
    match expect(s, &mut buf).await {
        Ok(Frame::Confirm { mac })
            if constant_time_eq(&mac, &confirmation(&key, b"sender", &exporter)) =>
        {
            Ok(version)
        }
        Ok(Frame::Confirm { .. }) => {
            write_frame(
                s,
                &Frame::Error {
                    code: ErrorCode::Auth,
                    message: "wrong secret",
                },
            )
            .await?;
            Err(TransportError::PeerNotAuthentic)
        }
        // The sender found our confirmation wrong: it has another secret.
        Err(TransportError::SecretRefused) => Err(TransportError::PeerNotAuthentic),
        Ok(f) => Err(unexpected(&f, "Confirm")),
        Err(e) => Err(e),
    }
}

/// The TLS exporter value both ends feed into the key confirmation.
pub fn exporter_of<D>(conn: &rustls::ConnectionCommon<D>) -> Result<[u8; 32], TransportError> {
    Ok(conn.export_keying_material([0u8; 32], EXPORTER_LABEL, None)?)
}

/// The secret this control connection's DCSP keys are derived from (see `trackshift_dcsp::crypto`, which
/// mixes in the DCSP connection id): both ends export it from the same TLS session, so it never crosses the
/// network.
pub fn dcsp_secret_of<D>(conn: &rustls::ConnectionCommon<D>) -> Result<[u8; 32], TransportError> {
    Ok(conn.export_keying_material([0u8; 32], DCSP_EXPORTER_LABEL, None)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(
        client_secret: &str,
        server_secret: &str,
        client_ekm: [u8; 32],
    ) -> (Result<u16, TransportError>, Result<u16, TransportError>) {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let ss = server_secret.to_owned();
        let server = tokio::spawn(async move { authenticate_server(&mut b, [1; 32], &ss).await });
        let c = authenticate_client(&mut a, client_ekm, client_secret).await;
        (c, server.await.unwrap())
    }

    #[tokio::test]
    async fn same_secret_authenticates_both_ways() {
        let (c, s) = run("hunter2", "hunter2", [1; 32]).await;
        assert_eq!(
            c.unwrap(),
            PROTOCOL_VERSION,
            "both speak the newest version"
        );
        assert_eq!(s.unwrap(), PROTOCOL_VERSION);
    }

    #[test]
    fn the_newest_common_version_is_agreed() {
        assert_eq!(
            agreed_version(1, 1),
            Some(1),
            "an older peer speaks version 1"
        );
        assert_eq!(agreed_version(1, 9), Some(PROTOCOL_VERSION));
        assert_eq!(agreed_version(PROTOCOL_VERSION + 1, 9), None);
        assert_eq!(agreed_version(0, 0), None);
    }

    #[tokio::test]
    async fn wrong_secret_is_refused() {
        let (c, s) = run("wrong", "hunter2", [1; 32]).await;
        assert!(matches!(c, Err(TransportError::PeerNotAuthentic)), "{c:?}");
        assert!(matches!(s, Err(TransportError::PeerNotAuthentic)));
    }

    #[tokio::test]
    async fn a_relayed_handshake_from_another_tls_session_fails() {
        // Same secret, but the two ends see different TLS exporter values (a man in the middle).
        let (c, s) = run("hunter2", "hunter2", [2; 32]).await;
        assert!(c.is_err());
        assert!(s.is_err());
    }
}
