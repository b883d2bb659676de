//! HTTPS: the server's rustls configuration from `--tls-cert`/`--tls-key`, with client certificates required
//! when `--client-ca` is given (mutual TLS). rustls with *ring*, like the rest of the workspace.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::error::OrchestratorError;
use crate::server::TlsFiles;

/// The server configuration for `files`.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, OrchestratorError> {
    let fail = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        OrchestratorError::Tls(format!("{what} {}: {e}", path.display()))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect())
        .map_err(|e| fail("cannot read the certificate chain", &files.cert, &e))?;
    if certs.is_empty() {
        return Err(fail(
            "no certificate in",
            &files.cert,
            &"expected PEM `CERTIFICATE` blocks",
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| fail("cannot read the private key", &files.key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| OrchestratorError::Tls(e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .map_err(|e| fail("cannot read the client CA", ca, &e))?
            {
                let cert = cert.map_err(|e| fail("cannot read the client CA", ca, &e))?;
                roots
                    .add(cert)
                    .map_err(|e| fail("bad certificate in the client CA", ca, &e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| fail("cannot use the client CA", ca, &e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| fail("the key does not match the certificate in", &files.cert, &e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
