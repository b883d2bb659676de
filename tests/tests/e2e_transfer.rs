//! Whole transfers over loopback with the real binary: a big random file, two senders at once and an empty file
//! (each over UDP, the default path, and over TCP), three UDP streams, a name collision, and the informational
//! commands (`version`, `completions`, `list`, `status`).

#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is a failing test, with its message

use std::time::Duration;

use trackshift_scenarios::*;

over_both_protocols!(
    a_500_mib_random_file_arrives_byte_identical,
    two_concurrent_senders_overlap_and_both_arrive,
    an_empty_file_arrives,
);

/// 500 MiB of random data arrives byte-identical. Over TCP `--compress auto` does not compress it; over UDP the
/// summary carries the data plane's figures.
fn a_500_mib_random_file_arrives_byte_identical(p: Protocol) {
    let t = Scratch::new(&format!("big-{}", p.name()));
    let size = 500 * MIB;
    let src = random_file(&t.file("big.bin"), size, 1);
    let out = t.dir("out");
    let mut rx = Receiver::start(&out, &t.dir("rs"));

    let res = send(
        &src,
        &rx.addr,
        &t.dir("ss"),
        &p.with(&["--compress", "auto"]),
    );
    assert_eq!(res.code, 0, "send failed: {}", res.stderr);
    let s = res.summary();
    assert_eq!(s["ok"], true, "{s}");
    p.assert_used(s);
    assert_eq!(s["file"], "big.bin");
    assert_eq!(field(s, "bytes"), size);
    let sha = assert_same_file(&src, &out.join("big.bin"));
    assert_eq!(s["sha256"], sha.as_str(), "summary sha256");
    // Default chunk size 50 MiB: 10 chunks, all sent once on one connection.
    let total = field(s, "chunks_total");
    assert_eq!(total, 10, "{s}");
    assert_eq!(field(s, "chunks_sent"), total, "{s}");
    assert_eq!(field(s, "chunks_skipped"), 0, "{s}");
    assert_eq!(field(s, "chunks_resent"), 0, "{s}");
    assert_eq!(field(s, "connections"), 1, "{s}");
    assert!(s["goodput_mbps"].as_f64().unwrap() > 0.0, "{s}");
    match p {
        Protocol::Tcp => {
            // Random data is incompressible: auto must send it raw (no chunk compressed, no growth on the wire).
            assert_eq!(field(s, "compressed_chunks"), 0, "{s}");
            assert!(field(s, "bytes_on_wire") <= size + size / 100, "{s}");
            assert!(s["packets_sent"].is_null(), "no UDP figures over TCP: {s}");
        }
        Protocol::Udp => {
            // Every byte went in datagrams of at most 16 KiB of payload (loopback's shard size).
            assert!(field(s, "packets_sent") >= size / (16 * 1024), "{s}");
            assert!(field(s, "bytes_on_wire") >= size, "{s}");
            for f in [
                "packets_retransmitted",
                "fec_recovered",
                "loss_pct",
                "rtt_ms",
            ] {
                assert!(s[f].is_number(), "summary lacks {f}: {s}");
            }
        }
    }

    let id = s["session_id"].as_str().unwrap();
    let r = rx.wait_summary(id, Duration::from_secs(60));
    assert_eq!(r["ok"], true, "{r}");
    p.assert_used(&r);
    assert_eq!(r["sha256"], sha.as_str(), "{r}");
    assert_eq!(
        std::path::Path::new(r["final_path"].as_str().unwrap()),
        out.join("big.bin")
    );
    assert_eq!(
        dir_names(&out),
        vec!["big.bin".to_owned()],
        "only the final file is left"
    );
}

/// DCSP over loopback with three streams (three sockets, three rate controllers) into a receiver with two
/// sockets on its port (the kernel steering each connection to one of them): the file arrives byte-identical
/// and the summary carries the data plane's figures.
#[test]
fn a_file_arrives_over_udp_on_three_streams() {
    let t = Scratch::new("udp-streams");
    let size = 200 * MIB + 777;
    let src = random_file(&t.file("s.bin"), size, 5);
    let out = t.dir("out");
    let mut rcfg = ReceiverConfig::new(&out, &t.dir("rs"));
    rcfg.extra = vec!["--streams".into(), "2".into()];
    let mut rx = rcfg.start();
    assert_eq!(rx.listening["udp_sockets"], 2, "{}", rx.listening);
    let res = send(
        &src,
        &rx.addr,
        &t.dir("ss"),
        &[
            "--protocol",
            "udp",
            "--streams",
            "3",
            "--chunk-size",
            "16MiB",
        ],
    );
    assert_eq!(res.code, 0, "send failed: {}", res.stderr);
    let s = res.summary();
    assert_eq!(s["ok"], true, "{s}");
    assert_eq!(s["protocol"], "udp", "{s}");
    for f in [
        "packets_sent",
        "packets_retransmitted",
        "fec_recovered",
        "loss_pct",
        "rtt_ms",
    ] {
        assert!(s[f].is_number(), "summary lacks {f}: {s}");
    }
    assert!(field(s, "packets_sent") >= size / 16384, "{s}");
    let sha = assert_same_file(&src, &out.join("s.bin"));
    assert_eq!(s["sha256"], sha.as_str());
    let r = rx.wait_summary(s["session_id"].as_str().unwrap(), Duration::from_secs(60));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["protocol"], "udp", "{r}");
    assert!(field(&r, "packets_received") > 0, "{r}");
}

/// Two senders with different files to one receiver at the same time: the receiver's event stream shows the
/// second session starting while the first is still running, and both complete and verify.
///
/// Sender A is paced (`--max-rate 20Mbit`: its 30 MiB take at least 12.6 s whatever the machine's speed) and
/// sender B starts as soon as the receiver has started A's session, so the two overlap unless starting B (a
/// process, TLS, SPAKE2, an offer; well under a second) takes over ten times as long as usual. The order is
/// read from the receiver's own stdout: one process's events, in the order it printed them.
fn two_concurrent_senders_overlap_and_both_arrive(p: Protocol) {
    let t = Scratch::new(&format!("two-{}", p.name()));
    let a = random_file(&t.file("a.bin"), 30 * MIB, 71);
    let b = random_file(&t.file("b.bin"), 36 * MIB + 12345, 72);
    let out = t.dir("out");
    let ss = t.dir("ss"); // one sender state dir shared by both (their sessions differ)
    let mut rx = Receiver::start(&out, &t.dir("rs"));

    let mut sa = spawn_send(
        &a,
        &rx.addr,
        &ss,
        &p.with(&["--chunk-size", "5MiB", "--max-rate", "20Mbit"]),
    );
    let id_a = session_id_of(&mut sa);
    rx.proc
        .wait_event("the receiver starting A's session", SHORT_TIMEOUT, |v| {
            v["event"] == "session_start" && v["session_id"] == id_a.as_str()
        });
    let mut sb = spawn_send(&b, &rx.addr, &ss, &p.with(&["--chunk-size", "5MiB"]));
    let id_b = session_id_of(&mut sb);
    let ra = sa.wait(TRANSFER_TIMEOUT);
    let rb = sb.wait(TRANSFER_TIMEOUT);
    assert_eq!(ra.code, 0, "sender a: {}", ra.stderr);
    assert_eq!(rb.code, 0, "sender b: {}", rb.stderr);
    let (sa, sb) = (ra.summary(), rb.summary());
    assert_ne!(id_a, id_b, "each transfer is its own session");
    p.assert_used(sa);
    p.assert_used(sb);
    let ha = assert_same_file(&a, &out.join("a.bin"));
    let hb = assert_same_file(&b, &out.join("b.bin"));
    assert_eq!(sa["sha256"], ha.as_str());
    assert_eq!(sb["sha256"], hb.as_str());
    for id in [&id_a, &id_b] {
        let r = rx.wait_summary(id, Duration::from_secs(60));
        assert_eq!(r["ok"], true, "{r}");
    }
    // The overlap, from the receiver's events: B's session started after A's and before A's summary.
    let ev = rx.proc.events();
    let at = |name: &str, id: &str| {
        ev.iter()
            .position(|e| e["event"] == name && e["session_id"] == id)
            .unwrap_or_else(|| panic!("no {name} of {id} in {ev:#?}"))
    };
    let (start_a, start_b) = (at("session_start", &id_a), at("session_start", &id_b));
    let (end_a, end_b) = (at("summary", &id_a), at("summary", &id_b));
    assert!(
        start_a < start_b && start_b < end_a && start_a < end_b,
        "the two transfers did not overlap at the receiver (A {start_a}..{end_a}, B {start_b}..{end_b}): {ev:#?}"
    );
    assert!(part_files(&out).is_empty(), "{:?}", dir_names(&out));
    rx.assert_running();
}

/// An empty file is a valid transfer too.
fn an_empty_file_arrives(p: Protocol) {
    let t = Scratch::new(&format!("empty-{}", p.name()));
    let src = t.file("empty.txt");
    std::fs::write(&src, b"").unwrap();
    let out = t.dir("out");
    let rx = Receiver::start(&out, &t.dir("rs"));
    let res = send(&src, &rx.addr, &t.dir("ss"), p.args());
    assert_eq!(res.code, 0, "{res:#?}");
    assert_eq!(res.summary()["ok"], true);
    p.assert_used(res.summary());
    assert_same_file(&src, &out.join("empty.txt"));
    assert!(part_files(&out).is_empty());
}

/// A second file of the same name is not overwritten: it arrives as `name (1).ext` (default path).
#[test]
fn a_name_collision_is_written_beside_the_existing_file() {
    let t = Scratch::new("collide");
    let out = t.dir("out");
    let existing = out.join("report.bin");
    std::fs::write(&existing, b"precious").unwrap();
    let src = random_file(&t.dir("src").join("report.bin"), 6 * MIB, 5);
    let rx = Receiver::start(&out, &t.dir("rs"));
    let res = send(&src, &rx.addr, &t.dir("ss"), &["--chunk-size", "5MiB"]);
    assert_eq!(res.code, 0, "{res:#?}");
    assert_eq!(
        std::fs::read(&existing).unwrap(),
        b"precious",
        "the existing file was overwritten"
    );
    assert_same_file(&src, &out.join("report (1).bin"));
    assert_eq!(res.summary()["final_name"], "report (1).bin");
}

/// `version`, `completions bash`, and `list --json` / `status --json` after a transfer (default path).
#[test]
fn version_completions_list_and_status() {
    let v = run("version", trackshift(["version"]), SHORT_TIMEOUT);
    assert_eq!(v.code, 0, "{v:#?}");
    assert!(v.stdout.starts_with("trackshift "), "{:?}", v.stdout);

    let c = run(
        "completions",
        trackshift(["completions", "bash"]),
        SHORT_TIMEOUT,
    );
    assert_eq!(c.code, 0, "{c:#?}");
    assert!(
        c.stdout.contains("trackshift") && c.stdout.contains("complete"),
        "not a bash completion script"
    );
    let bad = run(
        "completions",
        trackshift(["completions", "tcsh"]),
        SHORT_TIMEOUT,
    );
    assert_eq!(bad.code, 2, "unknown shell is a usage error: {bad:#?}");

    let t = Scratch::new("list");
    let (rs, ss) = (t.dir("rs"), t.dir("ss"));
    assert!(list(&ss).is_empty(), "a fresh state dir lists no sessions");
    let src = random_file(&t.file("small.bin"), 7 * MIB, 9);
    let out = t.dir("out");
    let rx = Receiver::start(&out, &rs);
    let res = send(&src, &rx.addr, &ss, &["--chunk-size", "5MiB"]);
    assert_eq!(res.code, 0, "{res:#?}");
    let id = res.summary()["session_id"].as_str().unwrap().to_owned();

    let sent = list(&ss);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["id"], id.as_str());
    assert_eq!(sent[0]["direction"], "outgoing");
    assert_eq!(sent[0]["state"], "completed");
    let got = list(&rs);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["id"], id.as_str());
    assert_eq!(got[0]["direction"], "incoming");
    assert_eq!(got[0]["state"], "completed");
    assert_eq!(got[0]["file_name"], "small.bin");

    let st = status(&id, &rs).expect("status of the received session");
    assert_eq!(st["chunks_total"], 2);
    assert_eq!(st["chunks_done"], 2);
    assert_eq!(st["state"], "completed");
    let st = status(&id, &ss).expect("status of the sent session");
    assert_eq!(st["direction"], "outgoing");
    assert_eq!(st["chunks_done"], 2);
    // An unknown session: exit 2 with the one line `status()` recognises (anything else fails inside it).
    let unknown = status("00000000000000000000000000000000", &rs);
    assert!(unknown.is_none(), "an unknown session is an error");
}

/// Bytes a process read through `read`/`pread` so far (`rchar` of `/proc/PID/io`; DCSP's datagrams arrive by
/// `recvmmsg`, which it does not count).
fn bytes_read(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    let line = io.lines().find(|l| l.starts_with("rchar:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A version 3 receiver checks the whole file by the chunk list hash, without reading it a second time;
/// `--verify full` reads it back from disk after the last fsync and checks its SHA-256 before the rename. Both
/// confirm the file's true SHA-256.
#[test]
fn verify_full_reads_the_file_back_and_the_default_does_not() {
    let t = Scratch::new("verify-full");
    let size = 64 * MIB + 99;
    let src = random_file(&t.file("v.bin"), size, 12);
    for (mode, reads_back) in [("chunks", false), ("full", true)] {
        let out = t.dir(&format!("out-{mode}"));
        let mut rcfg = ReceiverConfig::new(&out, &t.dir(&format!("rs-{mode}")));
        rcfg.extra = vec!["--verify".into(), mode.into()];
        let mut rx = rcfg.start();
        let before = bytes_read(rx.proc.pid());
        let ss = t.dir(&format!("ss-{mode}"));
        let res = send(
            &src,
            &rx.addr,
            &ss,
            &["--protocol", "udp", "--chunk-size", "16MiB"],
        );
        assert_eq!(res.code, 0, "send failed: {}", res.stderr);
        let s = res.summary();
        let summary = rx.wait_summary(s["session_id"].as_str().unwrap(), Duration::from_secs(30));
        assert_eq!(
            summary["sha256"].as_str(),
            Some(sha256_file(&src).as_str()),
            "{summary}"
        );
        assert_same_file(&src, &out.join("v.bin"));
        let read = bytes_read(rx.proc.pid()) - before;
        match reads_back {
            true => assert!(read >= size, "--verify full read {read} bytes of {size}"),
            false => assert!(
                read < size / 4,
                "--verify chunks read {read} bytes of {size}"
            ),
        }
        rx.assert_running();
    }
}
