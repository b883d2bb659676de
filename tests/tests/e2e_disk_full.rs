//! The receiver's disk fills up: the sender exits 4 with a clear message, the receiver keeps serving and keeps
//! its state, and the same `send` completes once there is room. The output dir is a small tmpfs (the tests run
//! as root); the receiver's state dir stays on the normal disk. Both scenarios run over UDP (the default path)
//! and TCP.

#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is a failing test, with its message

use trackshift_scenarios::*;

over_both_protocols!(
    not_enough_space_up_front_exits_4_and_resumes_after_the_fs_grows,
    the_disk_filling_up_mid_transfer_exits_4_keeps_state_and_resumes,
    a_resume_with_room_for_just_the_file_is_not_refused,
);

fn not_enough_space_up_front_exits_4_and_resumes_after_the_fs_grows(p: Protocol) {
    let t = Scratch::new(&format!("full-upfront-{}", p.name()));
    let (rs, ss) = (t.dir("rs"), t.dir("ss"));
    let src = random_file(&t.file("sixty.bin"), 60 * MIB, 31);
    let mnt = TmpfsMount::new(&t.file("out"), "size=40M");
    let out = mnt.path().to_path_buf();
    let mut rx = Receiver::start(&out, &rs);
    let args = p.with(&["--chunk-size", "5MiB"]);

    let full = send(&src, &rx.addr, &ss, &args);
    assert_eq!(full.code, 4, "{full:#?}");
    let lines = full.stderr_lines();
    assert_eq!(lines.len(), 1, "{:?}", full.stderr);
    assert!(
        mentions_space(lines[0]),
        "the error does not say the disk is full: {}",
        lines[0]
    );
    eprintln!("disk full up front: {}", lines[0]);
    let first = full.summary();
    assert_eq!(first["ok"], false);
    rx.assert_running();
    assert!(!out.join("sixty.bin").exists());

    mnt.remount("size=200M");
    let res = send(&src, &rx.addr, &ss, &args);
    assert_eq!(res.code, 0, "{}", res.stderr);
    p.assert_used(res.summary());
    assert_eq!(
        res.summary()["session_id"],
        first["session_id"],
        "the re-run resumes the same session"
    );
    assert_same_file(&src, &out.join("sixty.bin"));
    assert!(part_files(&out).is_empty(), "{:?}", dir_names(&out));
}

fn the_disk_filling_up_mid_transfer_exits_4_keeps_state_and_resumes(p: Protocol) {
    let t = Scratch::new(&format!("full-midway-{}", p.name()));
    let (rs, ss) = (t.dir("rs"), t.dir("ss"));
    let src = random_file(&t.file("fortyeight.bin"), 48 * MIB, 32);
    let mnt = TmpfsMount::new(&t.file("out"), "size=64M");
    let out = mnt.path().to_path_buf();
    let mut rx = Receiver::start(&out, &rs);
    let args = p.with(&["--chunk-size", "5MiB", "--max-rate", "100Mbit"]);

    let mut tx = spawn_send(&src, &rx.addr, &ss, &args);
    let id = session_id_of(&mut tx);
    let seen = wait_verified(&id, &rs, 2);
    let filler = out.join("filler");
    let filled = fill_until_full(&filler);
    assert!(filled > 0);

    let res = tx.wait(TRANSFER_TIMEOUT);
    assert_eq!(
        res.code, 4,
        "the sender should stop with exit 4 when the receiver's disk is full: {res:#?}"
    );
    let lines = res.stderr_lines();
    assert_eq!(lines.len(), 1, "{:?}", res.stderr);
    assert!(mentions_space(lines[0]), "{}", lines[0]);
    eprintln!("disk full midway: {}", lines[0]);
    rx.assert_running();
    let verified = chunks_done(&id, &rs);
    assert!(
        verified >= seen,
        "the receiver lost verified chunks: {verified} < {seen}"
    );
    assert!(verified < 10, "the file completed despite the full disk");
    assert!(!out.join("fortyeight.bin").exists());

    std::fs::remove_file(&filler).unwrap();
    let res = send(&src, &rx.addr, &ss, &args);
    assert_eq!(res.code, 0, "{}", res.stderr);
    let s = res.summary();
    assert_eq!(s["session_id"], id.as_str(), "{s}");
    p.assert_used(s);
    let skipped = field(s, "chunks_skipped");
    assert!(skipped >= 2 && skipped >= seen, "{s}");
    assert_eq!(
        field(s, "chunks_sent"),
        field(s, "chunks_total") - skipped,
        "{s}"
    );
    assert_same_file(&src, &out.join("fortyeight.bin"));
    assert!(part_files(&out).is_empty(), "{:?}", dir_names(&out));
}

/// The output dir has room for the file and 4 MiB more. A sender killed 16+ MiB into the first (40 MiB) chunk
/// leaves that much of the partial file on disk, unverified; the resumed run must count it as already there
/// (before, the receiver wanted room for everything not verified, 60 MiB, beside its own partial file, and
/// refused with exit 4 on every run: found by the fault soak on a tmpfs of the file's size plus 32 MiB).
fn a_resume_with_room_for_just_the_file_is_not_refused(p: Protocol) {
    let t = Scratch::new(&format!("full-resume-{}", p.name()));
    let (rs, ss) = (t.dir("rs"), t.dir("ss"));
    let src = random_file(&t.file("sixty.bin"), 60 * MIB, 33);
    let mnt = TmpfsMount::new(&t.file("out"), "size=64M");
    let out = mnt.path().to_path_buf();
    let rx = ReceiverConfig::new(&out, &rs)
        .extra(&["--streams", "1"])
        .start();
    let chunk = ["--chunk-size", "40MiB", "--streams", "1"];
    let mut slow = p.with(&chunk);
    slow.extend_from_slice(&["--max-rate", "80Mbit"]);
    let mut tx = spawn_send(&src, &rx.addr, &ss, &slow);
    let id = session_id_of(&mut tx);
    let partial = wait_until(
        "16 MiB of the first chunk on the receiver's disk",
        TRANSFER_TIMEOUT,
        std::time::Duration::from_millis(100),
        || {
            let st = status(&id, &rs)?;
            assert_eq!(st["chunks_done"], 0, "{st}");
            let partial = st["bytes_partial"].as_u64()?;
            (partial >= 16 * MIB).then_some(partial)
        },
    );
    tx.kill();

    let res = send(&src, &rx.addr, &ss, &p.with(&chunk));
    assert_eq!(
        res.code, 0,
        "the resume was refused with {partial} bytes on disk: {}",
        res.stderr
    );
    assert_eq!(res.summary()["session_id"], id.as_str());
    assert_same_file(&src, &out.join("sixty.bin"));
    assert!(part_files(&out).is_empty(), "{:?}", dir_names(&out));
}
