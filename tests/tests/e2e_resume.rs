//! SIGKILL of either side mid-transfer, then resume: the file arrives byte-identical and only the chunks that
//! were not yet verified travel again (asserted on the counts the sender's summary reports).
//!
//! `--max-rate` makes the transfers slow enough to interrupt; the kill happens once the receiver's own state
//! dir (`trackshift status`) shows chunks verified, so nothing depends on wall-clock timing.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use trackshift_scenarios::*;

const CHUNK_ARGS: [&str; 4] = ["--chunk-size", "5MiB", "--max-rate", "100Mbit"];

/// [`CHUNK_ARGS`] with a data path.
fn chunk_args(protocol: &'static str) -> Vec<&'static str> {
    let mut a = CHUNK_ARGS.to_vec();
    a.extend(["--protocol", protocol]);
    a
}
/// Chunks that may be on the way (sent but not yet verified) when a side dies: socket buffers plus the
/// receiver's queue, with 5 MiB chunks at a capped rate.
const IN_FLIGHT_BOUND: u64 = 3;

/// Waits until the receiver's state dir shows at least `n` verified chunks of `id`; returns the count seen.
fn wait_verified(id: &str, rs: &std::path::Path, n: u64) -> u64 {
    wait_until(
        &format!("{n} chunks of {id} verified"),
        Duration::from_secs(120),
        Duration::from_millis(50),
        || {
            let done = chunks_done(id, rs);
            (done >= n).then_some(done)
        },
    )
}

#[test]
fn sigkill_of_the_sender_then_rerun_resumes_and_skips_verified_chunks() {
    kill_sender_then_resume("tcp");
}

#[test]
fn udp_sigkill_of_the_sender_then_rerun_resumes_and_skips_verified_chunks() {
    kill_sender_then_resume("udp");
}

fn kill_sender_then_resume(protocol: &'static str) {
    let t = Scratch::new(&format!("kill-sender-{protocol}"));
    let args = chunk_args(protocol);
    let size = 100 * MIB;
    let src = random_file(&t.file("data.bin"), size, 2);
    let (out, rs, ss) = (t.dir("out"), t.dir("rs"), t.dir("ss"));
    let mut rx = Receiver::start(&out, &rs);

    let mut tx = spawn_send(&src, &rx.addr, &ss, &args);
    let id = session_id_of(&mut tx);
    let seen = wait_verified(&id, &rs, 3);
    let killed = tx.kill();
    assert!(
        killed.event("summary").is_none(),
        "the sender finished before it could be killed: {killed:#?}"
    );
    assert!(seen < 20, "all chunks were verified before the kill");

    // The receiver notices, keeps the session and its partial file, and keeps serving.
    rx.proc.wait_event(
        "the receiver's `interrupted` event",
        Duration::from_secs(60),
        |v| v["event"] == "interrupted" && v["session_id"] == id.as_str(),
    );
    rx.assert_running();
    let verified = chunks_done(&id, &rs);
    assert!(
        verified >= seen,
        "verified chunks went backwards: {verified} < {seen}"
    );
    assert!(
        !out.join("data.bin").exists(),
        "a final file appeared before the transfer completed"
    );
    assert_eq!(part_files(&out).len(), 1, "{:?}", dir_names(&out));

    // Same command again: same session, only the missing chunks travel.
    let res = send(&src, &rx.addr, &ss, &args);
    assert_eq!(res.code, 0, "resumed send failed: {}", res.stderr);
    let s = res.summary();
    assert_eq!(
        s["session_id"],
        id.as_str(),
        "the re-run did not resume the same session: {s}"
    );
    let (total, sent, skipped) = (
        field(s, "chunks_total"),
        field(s, "chunks_sent"),
        field(s, "chunks_skipped"),
    );
    eprintln!(
        "sender killed with {seen} chunks verified ({verified} after the drain); re-run: {s}"
    );
    assert_eq!(total, 20);
    assert!(
        skipped >= seen,
        "skipped {skipped} chunks but {seen} were verified before the kill: {s}"
    );
    assert_eq!(
        skipped, verified,
        "the receiver offered exactly what its store had verified: {s}"
    );
    assert_eq!(
        sent,
        total - skipped,
        "only chunks not yet verified may travel again: {s}"
    );
    assert_eq!(skipped + sent, total, "{s}");
    assert_eq!(field(s, "chunks_resent"), 0, "{s}");
    let sha = assert_same_file(&src, &out.join("data.bin"));
    assert_eq!(s["sha256"], sha.as_str());
    assert_eq!(s["protocol"], protocol, "{s}");
    let r = rx.wait_summary(&id, Duration::from_secs(60));
    assert_eq!(r["ok"], true, "{r}");
    assert!(part_files(&out).is_empty(), "{:?}", dir_names(&out));
}

#[test]
fn sigkill_of_the_receiver_then_restart_and_the_sender_reconnects_by_itself() {
    kill_receiver_then_reconnect("tcp");
}

#[test]
fn udp_sigkill_of_the_receiver_then_restart_and_the_sender_reconnects_by_itself() {
    kill_receiver_then_reconnect("udp");
}

fn kill_receiver_then_reconnect(protocol: &'static str) {
    let t = Scratch::new(&format!("kill-receiver-{protocol}"));
    let size = 100 * MIB;
    let src = random_file(&t.file("data.bin"), size, 3);
    let (out, rs, ss) = (t.dir("out"), t.dir("rs"), t.dir("ss"));
    let listen = format!("127.0.0.1:{}", free_port());
    let cfg = ReceiverConfig::new(&out, &rs).listen(&listen);
    let mut rx = cfg.start();
    let fingerprint = rx.fingerprint.clone();

    let mut args = chunk_args(protocol);
    args.extend(["--retry-for", "2m"]);
    let mut tx = spawn_send(&src, &listen, &ss, &args);
    let id = session_id_of(&mut tx);
    let seen = wait_verified(&id, &rs, 3);
    rx.proc.kill();

    // The dead receiver's store says what it verified.
    let verified = chunks_done(&id, &rs);
    assert!(
        verified >= seen && verified < 20,
        "verified {verified}, seen {seen}"
    );
    assert!(!out.join("data.bin").exists());
    // The sender notices the loss and retries on its own.
    tx.wait_event(
        "the sender's `retry` event",
        Duration::from_secs(120),
        |v| v["event"] == "retry",
    );

    // Same port, same state dir, same output dir: same identity, the partial state survives.
    let mut rx2 = cfg.start();
    assert_eq!(rx2.addr, listen);
    assert_eq!(
        rx2.fingerprint, fingerprint,
        "the receiver's identity must persist in its state dir"
    );
    let res = tx.wait(TRANSFER_TIMEOUT);
    assert_eq!(
        res.code, 0,
        "the sender did not finish after the receiver came back: {}",
        res.stderr
    );
    let s = res.summary();
    assert_eq!(s["session_id"], id.as_str());
    let (total, sent) = (field(s, "chunks_total"), field(s, "chunks_sent"));
    eprintln!("receiver killed with {seen} chunks seen, {verified} in its store; sender: {s}");
    assert_eq!(total, 20);
    assert!(field(s, "connections") >= 2, "{s}");
    assert!(
        sent >= total,
        "every chunk is sent at least once in this run: {s}"
    );
    assert!(
        sent <= total + IN_FLIGHT_BOUND,
        "at most the in-flight chunks may be re-sent: {s}"
    );
    let start2 = rx2.proc.wait_event(
        "session_start after restart",
        Duration::from_secs(10),
        |v| v["event"] == "session_start" && v["session_id"] == id.as_str(),
    );
    assert_eq!(
        field(&start2, "chunks_verified"),
        verified,
        "the restarted receiver resumed from its store"
    );
    let sha = assert_same_file(&src, &out.join("data.bin"));
    assert_eq!(s["sha256"], sha.as_str());
    let r = rx2.wait_summary(&id, Duration::from_secs(60));
    assert_eq!(r["ok"], true, "{r}");
    assert!(
        part_files(&out).is_empty(),
        "a partial file was left: {:?}",
        dir_names(&out)
    );
}

/// `--retry-for` is how long a *lost connection* is retried, however long the transfer had been running.
/// The transfer runs longer than the retry window before the receiver dies (guaranteed by `--max-rate`); the
/// sender must still retry (more than once) and finish once the receiver is back.
#[test]
fn the_retry_window_counts_from_the_loss_not_from_the_start() {
    let t = Scratch::new("retry-window");
    let src = random_file(&t.file("data.bin"), 75 * MIB, 4);
    let (out, rs, ss) = (t.dir("out"), t.dir("rs"), t.dir("ss"));
    let listen = format!("127.0.0.1:{}", free_port());
    let cfg = ReceiverConfig::new(&out, &rs).listen(&listen);
    let mut rx = cfg.start();

    // 40 Mbit/s with 5 MiB chunks: 12 verified chunks take more than 12 s, longer than the 10 s retry window.
    let args = [
        "--chunk-size",
        "5MiB",
        "--max-rate",
        "40Mbit",
        "--retry-for",
        "10s",
    ];
    let mut tx = spawn_send(&src, &listen, &ss, &args);
    let id = session_id_of(&mut tx);
    wait_verified(&id, &rs, 12);
    rx.proc.kill();
    // Two retry events: the loss itself, then at least one failed reconnection that is retried again.
    wait_until(
        "two retry events from the sender",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || {
            if !tx.is_running() {
                let out = tx.wait(SHORT_TIMEOUT);
                panic!("the sender gave up instead of retrying: {}", out.stderr);
            }
            (tx.events().iter().filter(|e| e["event"] == "retry").count() >= 2).then_some(())
        },
    );
    let _rx2 = cfg.start();
    let res = tx.wait(TRANSFER_TIMEOUT);
    assert_eq!(res.code, 0, "{}", res.stderr);
    assert!(field(res.summary(), "connections") >= 2);
    assert_same_file(&src, &out.join("data.bin"));
}

#[test]
fn a_new_connection_takes_over_a_session_whose_old_connection_went_silent() {
    // A sender frozen mid-transfer (SIGSTOP) holds its connection open but says nothing, as a sender behind a
    // dead link or a changed address would. Re-running the same send must take the session over at once
    // instead of being told "busy" until the receiver notices the old connection is gone.
    let t = Scratch::new("takeover");
    let size = 60 * MIB;
    let src = random_file(&t.file("data.bin"), size, 7);
    let (out, rs, ss) = (t.dir("out"), t.dir("rs"), t.dir("ss"));
    let mut rx = Receiver::start(&out, &rs);

    let mut frozen = spawn_send(&src, &rx.addr, &ss, &CHUNK_ARGS);
    let id = session_id_of(&mut frozen);
    let seen = wait_verified(&id, &rs, 2);
    let pid = frozen.pid().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());

    let res = send(&src, &rx.addr, &ss, &["--chunk-size", "5MiB"]);
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status();
    frozen.kill();
    assert_eq!(
        res.code, 0,
        "the second connection did not take over: {}",
        res.stderr
    );
    let s = res.summary();
    assert_eq!(
        s["session_id"],
        id.as_str(),
        "the re-run did not resume the same session: {s}"
    );
    assert!(
        field(s, "chunks_skipped") >= seen,
        "verified chunks were sent again: {s}"
    );
    assert_same_file(&src, &out.join("data.bin"));
    rx.assert_running();
}
