//! The OpenAPI document checked against the running server by schemathesis (from PyPI, installed on first
//! use into a venv under the target dir): a few generated requests per operation with a valid admin token;
//! every answer must be documented, match its schema, and none may be a 5xx.
//!
//! `POST /api/v1/relays/register` is left out: it probes the address in its body with a TCP connect, and
//! generated addresses (and their DNS lookups) could leave this machine. The API suite covers it on loopback.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Db, Relays, TestServer};
use trackshift_grid::api::ReceiverRegistration;
use trackshift_grid::Role;
use trackshift_orchestrator::RateLimit;

/// The schemathesis release line this test's command line is written for.
const SCHEMATHESIS: &str = "schemathesis>=4,<5";
/// Examples per operation: enough to hit every parameter and status, few enough for a 2-core CI machine.
const MAX_EXAMPLES: &str = "5";

/// The `st` program, installed into `<target>/tmp/schemathesis-venv` if it is not there yet.
fn schemathesis() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("schemathesis-venv");
    let st = venv.join("bin/st");
    if st.is_file() {
        return st;
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status();
    assert!(
        made.is_ok_and(|s| s.success()),
        "cannot create a Python venv: install Debian's python3-venv (apt-get install -y python3-venv)"
    );
    let pip = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", SCHEMATHESIS])
        .status();
    assert!(
        pip.is_ok_and(|s| s.success()),
        "pip install {SCHEMATHESIS} failed (PyPI unreachable?)"
    );
    assert!(
        st.is_file(),
        "schemathesis installed no `st` into {}",
        venv.display()
    );
    st
}

#[test]
fn the_openapi_document_matches_the_running_server() {
    let st = schemathesis();
    let dir = common::state_dir();
    let server = TestServer::start(dir.path().to_path_buf(), Db::Sqlite, RateLimit::default());
    // Something to find: relays, a receiver.
    let relays = Relays::new(&server);
    relays.add(&server, "r1");
    relays.add(&server, "r2");
    server
        .client(Role::Receiver, "lab")
        .register_receiver(&ReceiverRegistration {
            name: "lab".into(),
            relay_costs: vec![],
        })
        .unwrap();
    let admin = server.token(Role::Admin, "schemathesis");
    let out = Command::new(&st)
        .arg("run")
        .arg(format!("{}/api/v1/openapi.json", server.url))
        .args(["--header", &format!("Authorization: Bearer {admin}")])
        .args(["--max-examples", MAX_EXAMPLES, "--workers", "1", "--no-color"])
        .args(["--exclude-path", "/api/v1/relays/register"])
        .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"])
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}"
    );
    // Every operation but the excluded one was exercised (13 in the document).
    assert!(
        report.contains("Tested: 12"),
        "schemathesis did not test 12 operations:\n{report}"
    );
    drop(relays);
    server.stop();
}
