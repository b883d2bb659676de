//! The command-line contract (`../shared/spec/cli-contract.md`), walked end to end with the real binary: every
//! command (`send`, `receive`, `resume`, `list`, `status`, `version`, `completions`), every exit code provoked
//! for real, `--json` as one event per line with the summary's fields (both data paths), sizes, rates and
//! durations as the contract writes them, `resume <ID>`, a receiver's generated secret, SIGTERM of `receive`,
//! `receive --once` succeeding and failing, completions for every shell, certificate pinning and a changed
//! receiver identity, and zstd on the wire.
//!
//! The harness already fails any test whose `send`/`receive`/`resume --json` prints a line that is not one JSON
//! object with an `event` (see `Proc` in `tests/src/lib.rs`); the tests here also check the raw stdout.

#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is a failing test, with its message

use std::time::Duration;

use serde_json::Value;
use trackshift_scenarios::*;

/// A fingerprint no receiver has.
const WRONG_FINGERPRINT: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// A closed port on loopback (connections are refused at once).
fn closed_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// Asserts every stdout line is an NDJSON event and returns them (what the harness checks, spelled out).
fn ndjson_lines(out: &Output) -> Vec<Value> {
    out.stdout
        .lines()
        .map(|l| ndjson_event(l).unwrap_or_else(|e| panic!("stdout line {e}\n{out:#?}")))
        .collect()
}

/// The one `summary` event, which is also the last line.
fn the_summary(out: &Output) -> Value {
    let events = ndjson_lines(out);
    let summaries: Vec<&Value> = events.iter().filter(|e| e["event"] == "summary").collect();
    assert_eq!(summaries.len(), 1, "exactly one summary: {out:#?}");
    assert_eq!(
        events.last(),
        Some(summaries[0]),
        "the summary is the last line: {out:#?}"
    );
    summaries[0].clone()
}

fn is_hex(s: &Value, len: usize) -> bool {
    s.as_str()
        .is_some_and(|s| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The fields every summary has (sender's and receiver's), with their types.
fn assert_summary_fields(s: &Value, file: &str, bytes: u64, p: Protocol, ok: bool) {
    assert!(is_hex(&s["session_id"], 32), "session_id: {s}");
    assert_eq!(s["file"], file, "{s}");
    assert_eq!(s["bytes"].as_u64(), Some(bytes), "bytes: {s}");
    assert!(
        s["seconds"].as_f64().is_some_and(|x| x >= 0.0),
        "seconds: {s}"
    );
    assert!(
        s["goodput_mbps"].as_f64().is_some_and(|x| x >= 0.0),
        "goodput_mbps: {s}"
    );
    p.assert_used(s);
    assert_eq!(s["ok"], ok, "ok: {s}");
    if ok {
        assert!(is_hex(&s["sha256"], 64), "sha256: {s}");
    } else {
        assert!(
            s.get("sha256").is_some(),
            "sha256 (null when it failed): {s}"
        );
    }
}

/// The fields the contract adds for `udp`.
const UDP_FIELDS: [&str; 5] = [
    "packets_sent",
    "packets_retransmitted",
    "fec_recovered",
    "loss_pct",
    "rtt_ms",
];

// ---------------------------------------------------------------------------------------------------------------
// --json

over_both_protocols!(
    json_is_one_event_per_line_and_the_summaries_carry_the_contracts_fields,
    resume_by_session_id_finishes_an_interrupted_send,
);

/// `send --json` and `receive --json`: one JSON object with an `event` per line, one `summary` at the end of
/// the send (its last line) and one per transfer of the receiver, with every field the contract names, and over
/// UDP the sender's data-plane fields.
fn json_is_one_event_per_line_and_the_summaries_carry_the_contracts_fields(p: Protocol) {
    let t = Scratch::new(&format!("json-{}", p.name()));
    let size = 12 * MIB + 3;
    let src = random_file(&t.file("j.bin"), size, 41);
    let out = t.dir("out");
    let mut rx = Receiver::start(&out, &t.dir("rs"));
    let res = send(
        &src,
        &rx.addr,
        &t.dir("ss"),
        &p.with(&["--chunk-size", "5MiB"]),
    );
    assert_eq!(res.code, 0, "{res:#?}");
    let s = the_summary(&res);
    assert_summary_fields(&s, "j.bin", size, p, true);
    assert_eq!(
        s["sha256"],
        assert_same_file(&src, &out.join("j.bin")).as_str()
    );
    let events = ndjson_lines(&res);
    assert_eq!(
        events[0]["event"], "start",
        "the first event is `start`: {res:#?}"
    );
    for f in UDP_FIELDS {
        match p {
            Protocol::Udp => assert!(s[f].is_number(), "a udp summary has {f}: {s}"),
            Protocol::Tcp => assert!(s[f].is_null(), "a tcp summary has no {f}: {s}"),
        }
    }

    let id = s["session_id"].as_str().unwrap().to_owned();
    let r = rx.wait_summary(&id, SHORT_TIMEOUT);
    assert_summary_fields(&r, "j.bin", size, p, true);
    assert_eq!(r["sha256"], s["sha256"], "{r}");
    // The receiver's stdout so far: events only, the first `listening`, one summary for this transfer.
    let out_rx = rx.proc.kill();
    let rx_events = ndjson_lines(&out_rx);
    assert_eq!(rx_events[0]["event"], "listening", "{out_rx:#?}");
    assert_eq!(
        rx_events
            .iter()
            .filter(|e| e["event"] == "summary" && e["session_id"] == id.as_str())
            .count(),
        1,
        "{out_rx:#?}"
    );
}

/// The contract names `packets_sent`, `packets_retransmitted`, `fec_recovered`, `loss_pct` and `rtt_ms` for
/// every `udp` summary, the receiver's included: there they are the receiver's own figures (the ACKs it sent,
/// none re-sent, the loss it saw in the sender's packet numbers, the round trip of its authentication flight).
#[test]
fn the_receivers_udp_summary_has_the_contracts_udp_fields() {
    let t = Scratch::new("json-rx-udp");
    let src = random_file(&t.file("u.bin"), 6 * MIB, 42);
    let mut rx = Receiver::start(&t.dir("out"), &t.dir("rs"));
    let res = send(&src, &rx.addr, &t.dir("ss"), &["--chunk-size", "5MiB"]);
    assert_eq!(res.code, 0, "{res:#?}");
    let r = rx.wait_summary(res.summary()["session_id"].as_str().unwrap(), SHORT_TIMEOUT);
    for f in UDP_FIELDS {
        assert!(
            r[f].is_number(),
            "the receiver's udp summary lacks {f}: {r}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Exit codes

/// 0 success, 1 the transfer failed, 2 bad usage or input, 3 authentication refused, 4 local storage problem:
/// each provoked for real, each with one line on stderr, and under `--json` the failure's event carries it.
#[test]
fn every_exit_code_is_the_contracts() {
    let t = Scratch::new("exit-codes");
    let (rs, ss) = (t.dir("rs"), t.dir("ss"));
    let src = random_file(&t.file("e.bin"), 8 * MIB, 43);
    let mnt = TmpfsMount::new(&t.file("out"), "size=4M");
    let mut rx = Receiver::start(mnt.path(), &rs);

    // 4: the receiver's disk cannot hold the file.
    let full = send(&src, &rx.addr, &ss, &["--chunk-size", "5MiB"]);
    assert_eq!(full.code, 4, "{full:#?}");
    assert_one_line(&full, "space");
    assert_eq!(the_summary(&full)["ok"], false);
    assert_eq!(
        full.summary()["error"].as_str().map(str::is_empty),
        Some(false)
    );

    // 3: a wrong secret.
    let wrong = run(
        "sender",
        send_command(&src, &rx.addr, &ss, Some("wrong"), &[]),
        SHORT_TIMEOUT,
    );
    assert_eq!(wrong.code, 3, "{wrong:#?}");
    assert_one_line(&wrong, "secret");
    assert_eq!(the_summary(&wrong)["ok"], false);

    // 2: a missing file, a bad size, an unknown flag, a missing argument.
    let missing = send(&t.file("nope.bin"), &rx.addr, &ss, &[]);
    assert_eq!(missing.code, 2, "{missing:#?}");
    assert_one_line(&missing, "nope.bin");
    let err = ndjson_lines(&missing)
        .into_iter()
        .find(|e| e["event"] == "error")
        .unwrap_or_else(|| panic!("no error event: {missing:#?}"));
    assert_eq!(err["exit_code"], 2, "{err}");
    for args in [
        vec!["send", "x", "--to", "127.0.0.1:1", "--chunk-size", "lots"],
        vec!["send", "x", "--to", "127.0.0.1:1", "--no-such-flag"],
        vec!["send", "x"],
        vec!["receive", "--output-dir", "/tmp"],
        vec!["status", "not-a-session-id"],
        vec!["frobnicate"],
    ] {
        let out = run("trackshift", trackshift(&args), SHORT_TIMEOUT);
        assert_eq!(out.code, 2, "{args:?}: {out:#?}");
        assert!(out.stdout.is_empty(), "{args:?}: {out:#?}");
        assert!(!out.stderr.trim().is_empty(), "{args:?}: {out:#?}");
    }

    // 1: the transfer failed (nothing answers there).
    let closed = closed_addr();
    let unreachable = send(&src, &closed, &ss, &["--connect-timeout", "1s"]);
    assert_eq!(unreachable.code, 1, "{unreachable:#?}");
    assert_one_line(&unreachable, &closed);
    assert_eq!(the_summary(&unreachable)["ok"], false);

    // 0: the same file once there is room.
    mnt.remount("size=64M");
    let ok = send(&src, &rx.addr, &ss, &["--chunk-size", "5MiB"]);
    assert_eq!(ok.code, 0, "{ok:#?}");
    assert!(
        ok.stderr_lines().is_empty(),
        "a success prints nothing on stderr with --json: {ok:#?}"
    );
    assert_eq!(the_summary(&ok)["ok"], true);
    assert_same_file(&src, &mnt.path().join("e.bin"));
    rx.assert_running();
}

/// Sizes (`B`, `KiB`, `MiB`, `GiB`, `TiB`, plain bytes), rates (`Mbit`, `Gbit`, `kbit`, `Mbps`, `Gbps`, `MB/s`)
/// and durations (`ms`, `s`, `m`, `h`) as the contract writes them get past parsing (the send then fails to
/// connect, exit 1); malformed ones are usage errors (exit 2).
#[test]
fn sizes_rates_and_durations_parse_as_the_contract_writes_them() {
    let t = Scratch::new("units");
    let src = random_file(&t.file("u.bin"), MIB, 44);
    let ss = t.dir("ss");
    let closed = closed_addr();
    let attempt = |extra: &[&str]| {
        let mut args = vec!["--connect-timeout", "300ms"];
        args.extend_from_slice(extra);
        send(&src, &closed, &ss, &args).code
    };
    for good in [
        ["--chunk-size", "50MiB"],
        ["--chunk-size", "52428800"],
        ["--chunk-size", "5242880B"],
        ["--chunk-size", "5120KiB"],
        ["--max-rate", "100Mbit"],
        ["--max-rate", "1Gbit"],
        ["--max-rate", "250kbit"],
        ["--max-rate", "100Mbps"],
        ["--max-rate", "1Gbps"],
        ["--max-rate", "50MB/s"],
        ["--retry-for", "500ms"],
        ["--retry-for", "10s"],
        ["--retry-for", "2m"],
        ["--retry-for", "1h"],
    ] {
        assert_eq!(attempt(&good), 1, "{good:?} should parse");
    }
    // GiB and TiB parse too; they are only out of the chunk size's range (5 MiB to 200 MiB).
    for big in ["1GiB", "1TiB"] {
        let out = send(&src, &closed, &ss, &["--chunk-size", big]);
        assert_eq!(out.code, 2, "{out:#?}");
        assert!(
            out.stderr.contains("out of range"),
            "{big}: {:?}",
            out.stderr
        );
    }
    for bad in [
        ["--chunk-size", "50 parsecs"],
        ["--max-rate", "fast"],
        ["--retry-for", "soon"],
    ] {
        assert_eq!(attempt(&bad), 2, "{bad:?} should be refused");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Commands

/// `version`, `list` and `status` on an empty and on a used state dir.
#[test]
fn version_list_and_status() {
    let v = run("version", trackshift(["version"]), SHORT_TIMEOUT);
    assert_eq!(v.code, 0, "{v:#?}");
    let line = v.stdout.trim();
    assert!(
        line.starts_with(&format!("trackshift {} ", env!("CARGO_PKG_VERSION")))
            && line.contains("control protocol v"),
        "{line:?}"
    );

    let t = Scratch::new("commands");
    let (rs, ss) = (t.dir("rs"), t.dir("ss"));
    assert!(list(&ss).is_empty());
    let mut plain = trackshift(["list"]);
    plain.arg("--state-dir").arg(&ss);
    let empty = run("list", plain, SHORT_TIMEOUT);
    assert_eq!(empty.code, 0, "{empty:#?}");
    assert!(empty.stdout.starts_with("no sessions in "), "{empty:#?}");
    let unknown = "0123456789abcdef0123456789abcdef";
    assert!(status(unknown, &ss).is_none());

    let src = random_file(&t.file("c.bin"), 11 * MIB, 45);
    let rx = Receiver::start(&t.dir("out"), &rs);
    let res = send(&src, &rx.addr, &ss, &["--chunk-size", "5MiB"]);
    assert_eq!(res.code, 0, "{res:#?}");
    let id = res.summary()["session_id"].as_str().unwrap().to_owned();
    for (dir, direction) in [(&ss, "outgoing"), (&rs, "incoming")] {
        let l = list(dir);
        assert_eq!(l.len(), 1, "{l:?}");
        assert_eq!(l[0]["id"], id.as_str());
        assert_eq!(l[0]["direction"], direction);
        let st = status(&id, dir).expect("status of a known session");
        assert_eq!(st["direction"], direction, "{st}");
        assert_eq!(st["state"], "completed", "{st}");
        assert_eq!(st["chunks_total"], 3, "{st}");
        assert_eq!(st["chunks_done"], 3, "{st}");
        assert_eq!(st["percent"].as_f64(), Some(100.0), "{st}");
        // Without --json: one line for the session in `list`, and its fields in `status`.
        let mut plain = trackshift(["list"]);
        plain.arg("--state-dir").arg(dir);
        let text = run("list", plain, SHORT_TIMEOUT);
        assert_eq!(text.code, 0, "{text:#?}");
        assert_eq!(text.stdout.lines().count(), 1, "{text:#?}");
        assert!(
            text.stdout.starts_with(&id) && text.stdout.contains(direction),
            "{text:#?}"
        );
        let mut plain = trackshift(["status", &id]);
        plain.arg("--state-dir").arg(dir);
        let text = run("status", plain, SHORT_TIMEOUT);
        assert_eq!(text.code, 0, "{text:#?}");
        assert!(text.stdout.contains("chunks_done: 3"), "{text:#?}");
    }
}

/// `completions <bash|zsh|fish|powershell>`: a non-empty script naming every subcommand; another shell is a
/// usage error.
#[test]
fn completions_for_every_shell_name_every_subcommand() {
    for shell in ["bash", "zsh", "fish", "powershell"] {
        let c = run(
            "completions",
            trackshift(["completions", shell]),
            SHORT_TIMEOUT,
        );
        assert_eq!(c.code, 0, "{shell}: {c:#?}");
        assert!(
            c.stdout.len() > 500,
            "{shell}: a {}-byte script",
            c.stdout.len()
        );
        assert!(c.stdout.contains("trackshift"), "{shell}");
        for sub in [
            "send",
            "receive",
            "resume",
            "list",
            "status",
            "version",
            "completions",
        ] {
            assert!(
                c.stdout.contains(sub),
                "the {shell} script does not name `{sub}`"
            );
        }
    }
    let bad = run(
        "completions",
        trackshift(["completions", "tcsh"]),
        SHORT_TIMEOUT,
    );
    assert_eq!(bad.code, 2, "{bad:#?}");
}

/// `trackshift resume <ID>` after a send was killed: same session, only the chunks the receiver had not
/// verified travel; a finished session resumes to nothing; an unknown one is a usage error.
fn resume_by_session_id_finishes_an_interrupted_send(p: Protocol) {
    let t = Scratch::new(&format!("resume-id-{}", p.name()));
    let src = random_file(&t.file("r.bin"), 40 * MIB, 46);
    let (out, rs, ss) = (t.dir("out"), t.dir("rs"), t.dir("ss"));
    let rx = Receiver::start(&out, &rs);
    let mut tx = spawn_send(
        &src,
        &rx.addr,
        &ss,
        &p.with(&["--chunk-size", "5MiB", "--max-rate", "100Mbit"]),
    );
    let id = session_id_of(&mut tx);
    let seen = wait_verified(&id, &rs, 2);
    let killed = tx.kill();
    assert!(
        killed.event("summary").is_none(),
        "finished before the kill"
    );
    let verified = chunks_done(&id, &rs);
    assert!(verified >= seen && verified < 8, "verified {verified}");

    let resume = |id: &str| {
        let mut cmd = trackshift(["resume", id, "--json", "--secret", SECRET]);
        cmd.arg("--state-dir").arg(&ss).args(p.args());
        run("resume", cmd, TRANSFER_TIMEOUT)
    };
    let res = resume(&id);
    assert_eq!(res.code, 0, "{res:#?}");
    let s = the_summary(&res);
    assert_summary_fields(&s, "r.bin", 40 * MIB, p, true);
    assert_eq!(s["session_id"], id.as_str(), "{s}");
    assert_eq!(field(&s, "chunks_skipped"), verified, "{s}");
    assert_eq!(field(&s, "chunks_sent"), 8 - verified, "{s}");
    assert_same_file(&src, &out.join("r.bin"));
    assert_eq!(status(&id, &ss).unwrap()["state"], "completed");

    let again = resume(&id);
    assert_eq!(
        again.code, 0,
        "a completed session resumes to nothing: {again:#?}"
    );
    assert_eq!(dir_names(&out), vec!["r.bin"], "nothing was sent again");
    let unknown = resume("0123456789abcdef0123456789abcdef");
    assert_eq!(unknown.code, 2, "{unknown:#?}");
    assert_one_line(&unknown, "no outgoing session");
}

/// A receiver started without a secret generates one, prints it (in its `listening` event with `--json`, on
/// stderr without), keeps it across restarts, and requires it: a sender with it succeeds, without it or with
/// another one exits 3.
#[test]
fn a_receiver_without_a_secret_generates_one_prints_it_and_requires_it() {
    let t = Scratch::new("gen-secret");
    let (out, rs, ss) = (t.dir("out"), t.dir("rs"), t.dir("ss"));
    let src = random_file(&t.file("g.bin"), 6 * MIB, 47);
    let mut cfg = ReceiverConfig::new(&out, &rs);
    cfg.secret = None;
    let rx = cfg.start();
    let secret = rx.listening["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("no secret in {}", rx.listening))
        .to_owned();
    assert!(secret.len() >= 16, "a guessable secret: {secret:?}");

    for (given, code) in [(None, 3), (Some(SECRET), 3), (Some(secret.as_str()), 0)] {
        let res = run(
            "sender",
            send_command(&src, &rx.addr, &ss, given, &["--chunk-size", "5MiB"]),
            TRANSFER_TIMEOUT,
        );
        assert_eq!(res.code, code, "secret {given:?}: {res:#?}");
    }
    assert_same_file(&src, &out.join("g.bin"));
    drop(rx);

    // Without --json it is on stderr; a restart keeps the same secret.
    let mut plain = trackshift(["receive", "--listen", "127.0.0.1:0"]);
    plain
        .arg("--output-dir")
        .arg(&out)
        .arg("--state-dir")
        .arg(&rs);
    let mut rx2 = Proc::spawn("receiver", plain);
    let shown = wait_until(
        "the receiver printing its secret",
        SHORT_TIMEOUT,
        Duration::from_millis(50),
        || {
            rx2.stderr().lines().find_map(|l| {
                l.strip_prefix("secret: ")
                    .map(|s| s.split_whitespace().next().unwrap_or("").to_owned())
            })
        },
    );
    assert_eq!(
        shown, secret,
        "the generated secret changed across a restart"
    );
    rx2.kill();
}

/// SIGTERM of `receive` mid-transfer: it stops, exits 0, and keeps what it verified; the sender retries, and
/// once a receiver is back on the same port and state dir the session resumes from there.
#[test]
fn sigterm_of_receive_saves_state_exits_0_and_the_session_resumes() {
    let t = Scratch::new("sigterm");
    let size = 60 * MIB;
    let src = random_file(&t.file("s.bin"), size, 48);
    let (out, rs, ss) = (t.dir("out"), t.dir("rs"), t.dir("ss"));
    let listen = format!("127.0.0.1:{}", free_port());
    let cfg = ReceiverConfig::new(&out, &rs).listen(&listen);
    let mut rx = cfg.start();
    let mut tx = spawn_send(
        &src,
        &listen,
        &ss,
        &["--chunk-size", "5MiB", "--max-rate", "100Mbit"],
    );
    let id = session_id_of(&mut tx);
    let seen = wait_verified(&id, &rs, 2);
    let stopped = rx.proc.terminate(SHORT_TIMEOUT);
    assert_eq!(stopped.code, 0, "SIGTERM must exit 0: {stopped:#?}");
    let st = status(&id, &rs).expect("the session is in the receiver's state dir");
    let verified = field(&st, "chunks_done");
    assert!(verified >= seen && verified < 12, "{st}");
    assert_eq!(
        st["state"], "interrupted",
        "a stopped receiver records the transfer under way as interrupted (resumable): {st}"
    );
    assert!(!out.join("s.bin").exists());
    assert_eq!(
        part_files(&out).len(),
        1,
        "the partial file is kept: {:?}",
        dir_names(&out)
    );

    tx.wait_event("the sender's `retry` event", SHORT_TIMEOUT, |v| {
        v["event"] == "retry"
    });
    let mut rx2 = cfg.start();
    let res = tx.wait(TRANSFER_TIMEOUT);
    assert_eq!(res.code, 0, "{res:#?}");
    let accepted: Vec<u64> = res
        .events
        .iter()
        .filter(|e| e["event"] == "accepted")
        .map(|e| field(e, "chunks_verified"))
        .collect();
    assert_eq!(accepted.last(), Some(&verified), "{accepted:?}");
    let start = rx2.proc.wait_event("session_start", SHORT_TIMEOUT, |v| {
        v["event"] == "session_start" && v["session_id"] == id.as_str()
    });
    assert_eq!(field(&start, "chunks_verified"), verified, "{start}");
    assert_same_file(&src, &out.join("s.bin"));
    assert_eq!(rx2.wait_summary(&id, SHORT_TIMEOUT)["ok"], true);
}

/// `receive --once` exits after the first transfer: 0 when it verified; when it failed, non-zero with that
/// failure's code (4 for a full disk, 3 for a refused secret).
#[test]
fn receive_once_exits_with_the_first_transfers_outcome() {
    let t = Scratch::new("once");
    let ss = t.dir("ss");
    let src = random_file(&t.file("o.bin"), 12 * MIB, 49);
    let once = |out: &std::path::Path, rs: &std::path::Path| {
        let mut cfg = ReceiverConfig::new(out, rs);
        cfg.extra = vec!["--once".into()];
        cfg.start()
    };

    let out = t.dir("out-ok");
    let mut rx = once(&out, &t.dir("rs-ok"));
    let res = send(&src, &rx.addr, &ss, &["--chunk-size", "5MiB"]);
    assert_eq!(res.code, 0, "{res:#?}");
    let done = rx.proc.wait(SHORT_TIMEOUT);
    assert_eq!(done.code, 0, "{done:#?}");
    assert_same_file(&src, &out.join("o.bin"));

    let mnt = TmpfsMount::new(&t.file("out-full"), "size=4M");
    let mut rx = once(mnt.path(), &t.dir("rs-full"));
    let res = send(&src, &rx.addr, &ss, &["--chunk-size", "5MiB"]);
    assert_eq!(res.code, 4, "{res:#?}");
    let done = rx.proc.wait(SHORT_TIMEOUT);
    assert_eq!(done.code, 4, "--once after a full disk: {done:#?}");
    assert_one_line(&done, "failed");

    let mut rx = once(&t.dir("out-auth"), &t.dir("rs-auth"));
    let res = run(
        "sender",
        send_command(&src, &rx.addr, &ss, Some("wrong"), &[]),
        SHORT_TIMEOUT,
    );
    assert_eq!(res.code, 3, "{res:#?}");
    let done = rx.proc.wait(SHORT_TIMEOUT);
    assert_eq!(done.code, 3, "--once after a refused secret: {done:#?}");
}

/// Certificate pinning: `--fingerprint` with the receiver's fingerprint works; another one is refused (exit 3,
/// one line naming both, nothing written); and after trust on first use, a receiver at the same address with a
/// new identity is refused the same way.
#[test]
fn a_pinned_fingerprint_is_checked_and_a_changed_identity_is_refused() {
    let t = Scratch::new("pinning");
    let src = random_file(&t.file("p.bin"), 6 * MIB, 50);
    let out = t.dir("out");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut rx = ReceiverConfig::new(&out, &t.dir("rs"))
        .listen(&listen)
        .start();
    let fp = rx.fingerprint.clone();

    let pinned = send(
        &src,
        &listen,
        &t.dir("ss-pinned"),
        &["--fingerprint", fp.as_str()],
    );
    assert_eq!(pinned.code, 0, "{pinned:#?}");
    let wrong = send(
        &src,
        &listen,
        &t.dir("ss-wrong"),
        &["--fingerprint", WRONG_FINGERPRINT],
    );
    assert_eq!(wrong.code, 3, "{wrong:#?}");
    assert_one_line(&wrong, &fp);
    assert_one_line(&wrong, WRONG_FINGERPRINT);
    assert_eq!(the_summary(&wrong)["ok"], false);
    assert_eq!(
        dir_names(&out),
        vec!["p.bin"],
        "a refused sender wrote something"
    );

    // Trust on first use: the first contact remembers the fingerprint.
    let ss = t.dir("ss-tofu");
    let first = send(&src, &listen, &ss, &[]);
    assert_eq!(first.code, 0, "{first:#?}");
    let known = std::fs::read_to_string(ss.join("known_receivers")).unwrap();
    assert!(known.contains(&format!("{listen} {fp}")), "{known}");
    // Another receiver (another state dir: another identity) at the same address.
    rx.proc.kill();
    let out2 = t.dir("out2");
    let rx2 = ReceiverConfig::new(&out2, &t.dir("rs2"))
        .listen(&listen)
        .start();
    assert_ne!(rx2.fingerprint, fp);
    let changed = send(&src, &listen, &ss, &[]);
    assert_eq!(changed.code, 3, "{changed:#?}");
    assert_one_line(&changed, &fp);
    assert_one_line(&changed, &rx2.fingerprint);
    assert!(dir_names(&out2).is_empty(), "{:?}", dir_names(&out2));
    assert_eq!(
        std::fs::read_to_string(ss.join("known_receivers")).unwrap(),
        known,
        "a refused identity must not replace the pinned one"
    );
}

/// `--protocol tcp --compress zstd` on a compressible file: byte-identical, every chunk compressed, and fewer
/// bytes on the wire than in the file.
#[test]
fn zstd_on_the_wire_shrinks_a_compressible_file_and_it_arrives_identical() {
    let t = Scratch::new("zstd");
    let size = 24 * MIB;
    let src = t.file("log.txt");
    let line = b"2026-11-01T12:00:00Z INFO trackshift chunk verified, moving on to the next one\n";
    let text: Vec<u8> = line.iter().copied().cycle().take(size as usize).collect();
    std::fs::write(&src, &text).unwrap();
    let out = t.dir("out");
    let mut rx = Receiver::start(&out, &t.dir("rs"));
    let res = send(
        &src,
        &rx.addr,
        &t.dir("ss"),
        &[
            "--protocol",
            "tcp",
            "--compress",
            "zstd",
            "--chunk-size",
            "8MiB",
        ],
    );
    assert_eq!(res.code, 0, "{res:#?}");
    let s = the_summary(&res);
    assert_summary_fields(&s, "log.txt", size, Protocol::Tcp, true);
    assert_eq!(field(&s, "compressed_chunks"), 3, "{s}");
    let wire = field(&s, "bytes_on_wire");
    assert!(
        wire < size / 10,
        "{wire} bytes on the wire for a {size}-byte repetitive file: {s}"
    );
    assert_same_file(&src, &out.join("log.txt"));
    let r = rx.wait_summary(s["session_id"].as_str().unwrap(), SHORT_TIMEOUT);
    assert_eq!(r["ok"], true, "{r}");
}
