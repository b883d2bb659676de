//! SIGKILL of either side mid-transfer, then resume: the file arrives byte-identical and only the chunks that
//! were not yet verified travel again (asserted on the counts the sender's summary reports).
//!
//! `--max-rate` makes the transfers slow enough to interrupt; the kill happens once the receiver's own state
//! dir (`trackshift status`) shows chunks verified, so nothing depends on wall-clock timing. The two kills run
//! over UDP (the default path) and TCP; the retry window and the takeover run on the default path.

#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is a failing test, with its message

use std::time::Duration;

use trackshift_scenarios::*;

const CHUNK_ARGS: [&str; 4] = ["--chunk-size", "5MiB", "--max-rate", "100Mbit"];

over_both_protocols!(
    sigkill_of_the_sender_then_rerun_resumes_and_skips_verified_chunks,
    sigkill_of_the_receiver_then_restart_and_the_sender_reconnects_by_itself,
);

fn sigkill_of_the_sender_then_rerun_resumes_and_skips_verified_chunks(p: Protocol) {
    kill_sender_then_resume(p);
}

fn sigkill_of_the_receiver_then_restart_and_the_sender_reconnects_by_itself(p: Protocol) {
    kill_receiver_then_reconnect(p);
}

fn kill_sender_then_resume(p: Protocol) {
    let t = Scratch::new(&format!("kill-sender-{}", p.name()));
    let args = p.with(&CHUNK_ARGS);
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
    p.assert_used(s);
    let r = rx.wait_summary(&id, Duration::from_secs(60));
    assert_eq!(r["ok"], true, "{r}");
    assert!(part_files(&out).is_empty(), "{:?}", dir_names(&out));
}

/// The chunk size of the receiver-kill scenario; with [`KILL_RECEIVER_SENDER_ARGS`] and a receiver started with
/// `--streams 1`, what [`in_flight_bound`] is derived from.
const KILL_RECEIVER_CHUNK: u64 = 50 * MIB;
const KILL_RECEIVER_SENDER_ARGS: [&str; 8] = [
    "--chunk-size",
    "50MiB",
    "--streams",
    "1",
    "--max-rate",
    "400Mbit",
    "--retry-for",
    "2m",
];

/// How many chunks the sender may count as sent that a SIGKILLed receiver had not verified (and so sends
/// again after the restart), derived from the product's queue bounds with this scenario's flags. It depends on
/// neither the core count (every `--streams` is pinned to 1) nor speed or load (every term is a queue's bound,
/// not a rate times a time).
///
/// The sender counts a chunk as sent (`chunks_sent`) once its last byte has left the reader: over UDP when the
/// reader has put the chunk's last block into the data plane's queue and sent its `ChunkHash`
/// (`crates/engine/src/send/mod.rs`, `Sender::on_read`); over TCP once its last `Data` frame and `ChunkEnd` are
/// written to the TLS stream (the same function). Those counted but not verified are the chunks whose last byte lies in the
/// `X` bytes between the end of the receiver's verified prefix (one stream on loopback verifies in order) and
/// that point: at most `floor(X / C)` of them, with `C` = 50 MiB. What `X` can hold, with the constants restated
/// from where they live (the test drives the binary and cannot read them):
///
/// UDP, one data plane on each side; a block `B` is 64 data shards (`AUTO_DATA_SHARDS`, crates/dcsp/src/fec.rs)
/// of 16 KiB (`MAX_SHARD`, crates/engine/src/send/dcsp.rs; loopback's MTU is 65536) = 1 MiB:
/// - the plane's read-ahead queue: `plane_queue_len(B)` = clamp(`PLANE_QUEUE_BYTES` 8 MiB / 1 MiB, 2, 16) = 8
///   blocks = 8 MiB (crates/engine/src/send/dcsp.rs);
/// - blocks the `DcspSender` holds until they are acknowledged: it takes one only while it holds less than its
///   window, which is clamped to `MAX_BUFFERED` = 64 MiB (crates/dcsp/src/sender.rs `window`/`wants_block`,
///   crates/engine/src/send/dcsp.rs): at most 64 MiB + 1 block = 65 MiB;
/// - acknowledged blocks not yet verified at the receiver: its writer queue, `BLOCK_QUEUE` = 32 blocks
///   (crates/engine/src/receive/dcsp_writer.rs; the plane thread blocks when it is full, and so stops acknowledging), the one
///   block the blocked plane thread holds, blocks held ahead of the hashing cursor while a lost datagram is
///   repaired, at most `MAX_HELD` = 32 MiB in memory (crates/engine/src/receive/dcsp_writer.rs), and the chunk being
///   verified, less than `C`.
///
/// So X < C + 8 + 65 + 33 + 32 MiB = C + 138 MiB, and at most floor((50 + 138) / 50) = 3 chunks are sent again.
/// (With the 5 MiB chunks this scenario used before, the same queues allow floor((5 + 138) / 5) = 28: a bound of
/// 3 held there only while the receiver kept up and the window stayed near its 2 MiB floor, which CI load broke.)
///
/// TCP: the `FrameWriter`'s buffer, `WRITE_BUFFER` = 64 KiB (crates/transport/src/framed.rs); the sender's
/// socket send buffer and the receiver's receive buffer, each asked for `SOCKET_BUFFER` = 8 MiB
/// (crates/transport/src/tls.rs), which the kernel caps at `net.core.wmem_max`/`rmem_max` and doubles: at most
/// 16 MiB each; rustls's record buffers (under 0.1 MiB); the receiver's reader task's piece, `DATA_PIECE` = 1 MiB,
/// its queue to the connection task, `FRAME_QUEUE` = 4 pieces (crates/engine/src/receive/connection.rs), and that
/// task's queue to the writer thread, `TCP_WRITER_QUEUE` = 8 pieces (crates/engine/src/receive/tcp_writer.rs); the
/// chunk being verified, less than `C`. So X < C + 0.1 + 32 + 1 + 4 + 8 MiB = C + 45.1 MiB, and
/// floor((50 + 45.1) / 50) = 1.
fn in_flight_bound(p: Protocol) -> u64 {
    let c = (KILL_RECEIVER_CHUNK / MIB) as f64;
    let beyond_the_chunk_mib = match p {
        Protocol::Udp => 8.0 + 65.0 + 33.0 + 32.0,
        Protocol::Tcp => 0.1 + 32.0 + 1.0 + 4.0 + 8.0,
    };
    ((c + beyond_the_chunk_mib) / c).floor() as u64
}

fn kill_receiver_then_reconnect(p: Protocol) {
    let t = Scratch::new(&format!("kill-receiver-{}", p.name()));
    // 10 chunks; the kill comes once 4 are verified, so a sender that started over instead of resuming would
    // send at least 4 chunks again, more than either bound.
    let size = 10 * KILL_RECEIVER_CHUNK;
    let src = random_file(&t.file("data.bin"), size, 3);
    let (out, rs, ss) = (t.dir("out"), t.dir("rs"), t.dir("ss"));
    let listen = format!("127.0.0.1:{}", free_port());
    let mut cfg = ReceiverConfig::new(&out, &rs).listen(&listen);
    cfg.extra = vec!["--streams".into(), "1".into()];
    let mut rx = cfg.start();
    let fingerprint = rx.fingerprint.clone();
    let bound = in_flight_bound(p);
    assert_eq!(bound, if p == Protocol::Udp { 3 } else { 1 });

    let mut tx = spawn_send(&src, &listen, &ss, &p.with(&KILL_RECEIVER_SENDER_ARGS));
    let id = session_id_of(&mut tx);
    let seen = wait_verified(&id, &rs, 4);
    rx.proc.kill();

    // The dead receiver's store says what it verified.
    let verified = chunks_done(&id, &rs);
    assert!(
        verified >= seen && verified < 10,
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
    p.assert_used(s);
    let (total, sent) = (field(s, "chunks_total"), field(s, "chunks_sent"));
    eprintln!("receiver killed with {seen} chunks seen, {verified} in its store; sender: {s}");
    assert_eq!(total, 10);
    assert!(field(s, "connections") >= 2, "{s}");
    assert_eq!(
        field(s, "chunks_resent"),
        0,
        "no chunk failed verification: {s}"
    );
    // The last connection was offered exactly what the store had, so it sent `total - verified` chunks and the
    // first connections `verified` plus those in flight: `sent - total` is what the kill cost.
    let accepted: Vec<u64> = res
        .events
        .iter()
        .filter(|e| e["event"] == "accepted")
        .map(|e| field(e, "chunks_verified"))
        .collect();
    assert_eq!(
        accepted.last(),
        Some(&verified),
        "the reconnection resumed from the receiver's store: {accepted:?}"
    );
    assert!(
        sent >= total,
        "every chunk is sent at least once in this run: {s}"
    );
    assert!(
        sent - total <= bound,
        "{} chunks were sent again, more than the {bound} that can be in flight: {s}",
        sent - total
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
