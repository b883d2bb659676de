//! HTTPS with rustls: the client trusts the server through `--orchestrator-ca`'s file; with a client CA the
//! server refuses a client that has no certificate (mutual TLS).

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::time::Duration;

use trackshift_grid::Role;
use trackshift_grid_client::{ClientError, OrchestratorClient};
use trackshift_orchestrator::{Config, TlsFiles};

fn start(
    state: &std::path::Path,
    tls: TlsFiles,
) -> (tokio::runtime::Runtime, trackshift_orchestrator::Running) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut config = Config::new("127.0.0.1:0", state);
    config.tls = Some(tls);
    let running = runtime
        .block_on(trackshift_orchestrator::start(config))
        .unwrap();
    (runtime, running)
}

#[test]
fn https_with_a_pinned_ca_and_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    let files = TlsFiles {
        cert: cert_file.clone(),
        key: key_file.clone(),
        client_ca: None,
    };

    let (runtime, running) = start(&dir.path().join("a"), files.clone());
    assert!(running.url().starts_with("https://"));
    let key = trackshift_orchestrator::signing_key(&dir.path().join("a")).unwrap();
    let token = key
        .sign_api(
            "ops",
            Role::Admin,
            trackshift_orchestrator::clock::now_secs(),
            60,
        )
        .unwrap();
    let client = OrchestratorClient::new(&running.url(), &token, Some(&cert_file)).unwrap();
    client.healthz().unwrap();
    assert!(client.relays().unwrap().is_empty());
    // Without the CA file the public roots do not know this certificate.
    let untrusting = OrchestratorClient::new(&running.url(), &token, None).unwrap();
    assert!(matches!(
        untrusting.healthz(),
        Err(ClientError::Unreachable { .. })
    ));
    // Plain HTTP to the HTTPS port is not answered as HTTP.
    let plain =
        OrchestratorClient::new(&running.url().replace("https", "http"), &token, None).unwrap();
    assert!(plain.healthz().is_err());
    runtime.block_on(running.stop()).unwrap();

    // Mutual TLS: a client without a certificate is refused in the handshake.
    let mutual = TlsFiles {
        client_ca: Some(cert_file.clone()),
        ..files
    };
    let (runtime, running) = start(&dir.path().join("b"), mutual);
    let client = OrchestratorClient::new(&running.url(), &token, Some(&cert_file)).unwrap();
    let refused = client.healthz();
    assert!(
        matches!(refused, Err(ClientError::Unreachable { .. })),
        "{refused:?}"
    );
    runtime.block_on(running.stop()).unwrap();
    std::thread::sleep(Duration::from_millis(10));
}

#[test]
fn bad_tls_files_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("junk.pem"), "not a certificate").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut config = Config::new("127.0.0.1:0", dir.path().join("state"));
    config.tls = Some(TlsFiles {
        cert: dir.path().join("junk.pem"),
        key: dir.path().join("junk.pem"),
        client_ca: None,
    });
    let err = runtime
        .block_on(trackshift_orchestrator::start(config))
        .unwrap_err();
    assert!(err.is_usage(), "{err}");
}
