//! TLS 1.3 configurations: the receiver's server side and the sender's pinning client side.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

use crate::identity::fingerprint_of;
use crate::{Identity, TransportError};

pub use tokio_rustls::TlsAcceptor;

/// The sender's TLS stream.
pub type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;
/// The receiver's TLS stream.
pub type ServerTls = tokio_rustls::server::TlsStream<TcpStream>;

/// How long a TCP connect plus TLS handshake may take before the attempt counts as failed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// A peer that acknowledges nothing we sent for this long is gone (TCP_USER_TIMEOUT): the connection fails
/// and the sender reconnects. Progress of any size resets it, so a slow but live link is never cut.
const UNACKED_TIMEOUT: Duration = Duration::from_secs(90);
/// Socket buffers large enough for a long fat pipe (the kernel caps them at net.core.*mem_max).
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The receiver's TLS configuration: TLS 1.3 only, its own identity, no client certificates (the shared secret
/// authenticates the sender).
pub fn server_config(identity: &Identity) -> Result<Arc<rustls::ServerConfig>, TransportError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())?;
    // Senders never resume TLS sessions (each connection runs the secret's proof afresh), so no tickets: they
    // would be one more segment to lose in front of the receiver's authentication flight.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Checks the receiver's certificate against a pinned fingerprint, and records what it saw.
#[derive(Debug)]
struct PinningVerifier {
    expected: Option<String>,
    seen: Arc<Mutex<Option<String>>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fp = fingerprint_of(end_entity);
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(fp.clone());
        }
        match &self.expected {
            Some(expected) if *expected != fp => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
            // Pinned and equal, or first contact (trust on first use; the caller records it).
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The handshake signature proves the receiver holds the certificate's key: pinning means nothing without it.
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The sender's TLS configuration pinned to `expected` (a canonical fingerprint), or open to any certificate on
/// first contact. `seen` receives the fingerprint the receiver presented.
pub fn client_config(
    expected: Option<String>,
    seen: Arc<Mutex<Option<String>>>,
) -> Result<Arc<rustls::ClientConfig>, TransportError> {
    let provider = provider();
    let verifier = PinningVerifier {
        expected,
        seen,
        provider: provider.clone(),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let sock = socket2_ref(stream);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_tcp_user_timeout(Some(UNACKED_TIMEOUT));
}

fn socket2_ref(stream: &TcpStream) -> socket2::SockRef<'_> {
    socket2::SockRef::from(stream)
}

/// The TCP payload of one full segment on `stream` (`TCP_MAXSEG`: 1448 on a 1500-byte path with timestamps).
pub fn segment_payload(stream: &TcpStream) -> Option<usize> {
    socket2_ref(stream).tcp_mss().ok().map(|m| m as usize)
}

/// Tunes an accepted connection like an outgoing one.
pub fn tune_accepted(stream: &TcpStream) {
    tune(stream);
}

/// Connects to `addr` and runs the TLS handshake. On a pinning failure the error names both fingerprints.
/// `first_flight` (may be empty) is application data TLS sends right behind its Finished, in the same TCP
/// segment, once the handshake has verified the receiver (never as 0-RTT data).
pub async fn connect(
    addr: &str,
    expected: Option<String>,
    known_file: &str,
    first_flight: &[u8],
) -> Result<(ClientTls, String), TransportError> {
    let attempt = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| TransportError::Unreachable {
                addr: addr.to_owned(),
                source,
            })?;
        connect_over(tcp, addr, expected, known_file, first_flight).await
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt)
        .await
        .map_err(|_| TransportError::Timeout("connecting"))?
}

/// The TLS handshake of [`connect`] on a TCP connection the caller opened (a relay's, once it paired this
/// connection with the receiver's: from then on its bytes are the receiver's). `addr` names the receiver in
/// errors.
pub async fn connect_over(
    tcp: TcpStream,
    addr: &str,
    expected: Option<String>,
    known_file: &str,
    first_flight: &[u8],
) -> Result<(ClientTls, String), TransportError> {
    let seen = Arc::new(Mutex::new(None));
    let config = client_config(expected.clone(), seen.clone())?;
    let attempt = async {
        tune(&tcp);
        let name = ServerName::try_from("trackshift")
            .map_err(|e| TransportError::Protocol(e.to_string()))?;
        tokio_rustls::TlsConnector::from(config)
            .connect_with(name, tcp, |conn| {
                // rustls holds plaintext written before the handshake completes (64 KiB at most; the
                // flight is ~100 bytes) and sends it right behind the client's Finished.
                if !first_flight.is_empty() {
                    let _ = std::io::Write::write_all(&mut conn.writer(), first_flight);
                }
            })
            .await
            .map_err(|e| {
                let seen = seen.lock().ok().and_then(|s| s.clone());
                match (seen, &expected) {
                    (Some(seen), Some(exp)) if seen != *exp => {
                        TransportError::FingerprintMismatch {
                            to: addr.to_owned(),
                            seen,
                            expected: exp.clone(),
                            known_file: known_file.to_owned(),
                        }
                    }
                    _ => TransportError::io(format!("TLS handshake with {addr}"), e),
                }
            })
    };
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt)
        .await
        .map_err(|_| TransportError::Timeout("connecting"))??;
    let fp = seen
        .lock()
        .ok()
        .and_then(|s| s.clone())
        .ok_or_else(|| TransportError::Protocol("no certificate".into()))?;
    Ok((tls, fp))
}
