//! Resuming inside a chunk (control protocol version 2): what a killed sender's receiver, or a killed receiver,
//! had written of a chunk that never verified is not sent again; the chunk still counts only once its SHA-256
//! verified, and the file arrives byte-identical.
//!
//! The chunks are large (50 MiB) and the first run is paced, so every kill lands inside a chunk. The kill waits
//! for the receiver's own state dir to show a durable prefix (`trackshift status`'s `bytes_partial`) and no
//! chunk verified, so nothing depends on wall-clock timing; the assertions are on what the resumed run put on
//! the wire (its summary's `bytes_on_wire`) against what was missing.

#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is a failing test, with its message

use std::time::Duration;

use trackshift_scenarios::*;

/// Two chunks, the second short: both kills land in the first.
const SIZE: u64 = 80 * MIB;
const CHUNK: [&str; 2] = ["--chunk-size", "50MiB"];
/// Paced so the first chunk takes about 5 s; one stream on both sides, whatever the core count.
const SLOW: [&str; 4] = ["--max-rate", "80Mbit", "--streams", "1"];
/// How much of the first chunk must be durable before the kill: enough that sending it again would show far
/// beyond the slack the bounds below allow (data path framing, what was in flight).
const PREFIX: u64 = 32 * MIB;

over_both_protocols!(
    a_killed_sender_resumes_inside_the_chunk,
    a_killed_receiver_resumes_inside_the_chunk,
);

/// The receiver's durable prefix of session `id`'s unverified chunks, once it is at least `at_least` bytes and
/// no chunk verified yet.
fn wait_partial(id: &str, state_dir: &std::path::Path, at_least: u64) -> u64 {
    wait_until(
        "a durable prefix of the first chunk at the receiver",
        TRANSFER_TIMEOUT,
        Duration::from_millis(100),
        || {
            let st = status(id, state_dir)?;
            let partial = st["bytes_partial"].as_u64()?;
            assert_eq!(
                st["chunks_done"], 0,
                "a chunk verified before the kill (the pacing is too fast): {st}"
            );
            (partial >= at_least).then_some(partial)
        },
    )
}

/// What the resumed run may put on the wire: what was missing, plus the data path's framing (headers, parity)
/// and one block or piece that straddles the prefix's end.
fn assert_resumed_inside(summary: &serde_json::Value, partial: u64) {
    assert_eq!(
        field(summary, "chunks_skipped"),
        0,
        "nothing was verified at the kill: {summary}"
    );
    let wire = field(summary, "bytes_on_wire");
    let missing = SIZE - partial;
    assert!(
        wire <= missing + missing / 10 + 2 * MIB,
        "the resumed run put {wire} bytes on the wire; {missing} were missing: {summary}"
    );
    assert!(
        wire + PREFIX / 2 < SIZE,
        "the receiver's {partial} bytes of the first chunk were sent again: {summary}"
    );
}

fn a_killed_sender_resumes_inside_the_chunk(p: Protocol) {
    let t = Scratch::new(&format!("partial-sender-{}", p.name()));
    let src = random_file(&t.file("p.bin"), SIZE, 31);
    let (out, rs, ss) = (t.dir("out"), t.dir("rs"), t.dir("ss"));
    let mut rx = ReceiverConfig::new(&out, &rs)
        .extra(&["--streams", "1"])
        .start();
    let mut args = p.with(&CHUNK);
    args.extend_from_slice(&SLOW);
    let mut tx = spawn_send(&src, &rx.addr, &ss, &args);
    let id = session_id_of(&mut tx);
    let partial = wait_partial(&id, &rs, PREFIX);
    tx.kill();
    rx.proc.wait_event(
        "the receiver's `interrupted` event",
        Duration::from_secs(60),
        |v| v["event"] == "interrupted" && v["session_id"] == id.as_str(),
    );
    // The prefix may have grown until the receiver noticed; what it holds now is what the resume may skip.
    let partial = status(&id, &rs)
        .and_then(|st| st["bytes_partial"].as_u64())
        .unwrap_or(partial)
        .max(partial);

    let res = send(
        &src,
        &rx.addr,
        &ss,
        &p.with(&["--chunk-size", "50MiB", "--streams", "1"]),
    );
    assert_eq!(res.code, 0, "{res:#?}");
    let s = res.summary();
    assert_eq!(
        s["session_id"],
        id.as_str(),
        "the same session resumed: {s}"
    );
    assert_eq!(s["protocol"], p.name(), "{s}");
    assert_resumed_inside(s, partial);
    assert_same_file(&src, &out.join("p.bin"));
    let done = rx.status(&id).expect("the receiver knows the session");
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["bytes_partial"], 0, "no prefix left behind: {done}");
    assert_eq!(part_files(&out), Vec::<String>::new());
}

fn a_killed_receiver_resumes_inside_the_chunk(p: Protocol) {
    let t = Scratch::new(&format!("partial-receiver-{}", p.name()));
    let src = random_file(&t.file("p.bin"), SIZE, 32);
    let (out, rs, ss) = (t.dir("out"), t.dir("rs"), t.dir("ss"));
    let listen = format!("127.0.0.1:{}", free_port());
    let cfg = ReceiverConfig::new(&out, &rs)
        .listen(&listen)
        .extra(&["--streams", "1"]);
    let mut rx = cfg.start();
    let mut args = p.with(&CHUNK);
    args.extend_from_slice(&SLOW);
    let mut tx = spawn_send(&src, &listen, &ss, &args);
    let id = session_id_of(&mut tx);
    wait_partial(&id, &rs, PREFIX);
    rx.proc.kill();
    // What the killed receiver made durable is what it will list.
    let partial = status(&id, &rs)
        .and_then(|st| st["bytes_partial"].as_u64())
        .expect("the prefix survives the kill");
    assert!(partial >= PREFIX, "{partial}");
    tx.wait_event("the sender's `retry` event", SHORT_TIMEOUT, |v| {
        v["event"] == "retry"
    });
    let mut rx2 = cfg.start();
    let res = tx.wait(TRANSFER_TIMEOUT);
    assert_eq!(res.code, 0, "{res:#?}");
    let s = res.summary();
    assert_eq!(s["protocol"], p.name(), "{s}");
    assert_eq!(field(s, "connections"), 2, "{s}");
    // The sender's bytes cover both connections. Resumed: about the file once, plus the framing and what was in
    // flight at the kill (under 10% and 8 MiB here). Sent again from the chunk's start: the file plus the
    // first connection's bytes, at least `partial` more.
    let wire = field(s, "bytes_on_wire");
    assert!(
        wire <= SIZE + SIZE / 10 + 8 * MIB,
        "{wire} bytes on the wire for a {SIZE}-byte file whose first {partial} bytes survived the kill: {s}"
    );
    let r = rx2.wait_summary(&id, SHORT_TIMEOUT);
    assert_eq!(r["ok"], true, "{r}");
    assert_same_file(&src, &out.join("p.bin"));
    assert_eq!(part_files(&out), Vec::<String>::new());
}
