//! Refusals with a clear one-line error and the contract's exit code: wrong or missing secret (3, over UDP and
//! TCP), bad input (2), an unreachable receiver (1), an output dir that cannot be written (4) or is missing (2).

#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is a failing test, with its message

use trackshift_scenarios::*;

over_both_protocols!(a_wrong_or_missing_secret_is_refused_with_exit_3_and_nothing_written);

fn a_wrong_or_missing_secret_is_refused_with_exit_3_and_nothing_written(p: Protocol) {
    let t = Scratch::new(&format!("secret-{}", p.name()));
    let args = p.args();
    let src = random_file(&t.file("secret.bin"), 12 * MIB, 11);
    let (out, rs, ss) = (t.dir("out"), t.dir("rs"), t.dir("ss"));
    let mut rx = Receiver::start(&out, &rs);

    // Wrong secret on the command line.
    let wrong = run(
        "sender",
        send_command(&src, &rx.addr, &ss, Some("not-the-secret"), args),
        SHORT_TIMEOUT,
    );
    assert_eq!(wrong.code, 3, "{wrong:#?}");
    assert_one_line(&wrong, "secret");
    assert_eq!(wrong.summary()["ok"], false);
    rx.proc
        .wait_event("the receiver's `refused` event", SHORT_TIMEOUT, |v| {
            v["event"] == "refused"
        });

    // Wrong secret from the environment (TRACKSHIFT_SECRET is the same thing as --secret).
    let mut cmd = send_command(&src, &rx.addr, &ss, None, args);
    cmd.env("TRACKSHIFT_SECRET", "also-wrong");
    let wrong_env = run("sender", cmd, SHORT_TIMEOUT);
    assert_eq!(wrong_env.code, 3, "{wrong_env:#?}");
    assert_one_line(&wrong_env, "secret");

    // No secret at all (send_command never inherits TRACKSHIFT_SECRET).
    let missing = run(
        "sender",
        send_command(&src, &rx.addr, &ss, None, args),
        SHORT_TIMEOUT,
    );
    assert_eq!(missing.code, 3, "{missing:#?}");
    assert_one_line(&missing, "secret");

    // Nothing was written: no final file, no partial file, no incoming session.
    assert!(
        dir_names(&out).is_empty(),
        "the output dir is not empty: {:?}",
        dir_names(&out)
    );
    assert!(
        list(&rs).is_empty(),
        "the receiver recorded a session for a refused sender"
    );
    rx.assert_running();

    // The right secret through the environment works, with the same receiver.
    let mut cmd = send_command(&src, &rx.addr, &ss, None, args);
    cmd.env("TRACKSHIFT_SECRET", SECRET);
    let ok = run("sender", cmd, TRANSFER_TIMEOUT);
    assert_eq!(ok.code, 0, "{ok:#?}");
    p.assert_used(ok.summary());
    assert_same_file(&src, &out.join("secret.bin"));
}

#[test]
fn bad_input_is_refused_with_exit_2() {
    let t = Scratch::new("bad-input");
    let ss = t.dir("ss");
    let src = random_file(&t.file("ok.bin"), MIB, 12);
    // Nothing listens there: a bad input must be refused before any connection is tried anyway.
    let to = format!("127.0.0.1:{}", free_port());

    let missing = run(
        "sender",
        send_command(&t.file("no-such-file.bin"), &to, &ss, Some(SECRET), &[]),
        SHORT_TIMEOUT,
    );
    assert_eq!(missing.code, 2, "{missing:#?}");
    assert_one_line(&missing, "no-such-file.bin");

    let dir = run(
        "sender",
        send_command(&t.dir("a-directory"), &to, &ss, Some(SECRET), &[]),
        SHORT_TIMEOUT,
    );
    assert_eq!(dir.code, 2, "{dir:#?}");
    assert_one_line(&dir, "directory");

    for bad in ["1MiB", "300MiB", "abc", "4MiB", "201MiB"] {
        let out = run(
            "sender",
            send_command(&src, &to, &ss, Some(SECRET), &["--chunk-size", bad]),
            SHORT_TIMEOUT,
        );
        assert_eq!(out.code, 2, "--chunk-size {bad}: {out:#?}");
        assert!(
            out.stderr.contains("chunk-size") || out.stderr.contains(bad),
            "{:?}",
            out.stderr
        );
    }
    for good_edge in ["5MiB", "200MiB"] {
        // Accepted sizes get past parsing (and then fail to connect: exit 1, not 2).
        let out = run(
            "sender",
            send_command(
                &src,
                &to,
                &ss,
                Some(SECRET),
                &["--chunk-size", good_edge, "--connect-timeout", "1s"],
            ),
            SHORT_TIMEOUT,
        );
        assert_eq!(out.code, 1, "--chunk-size {good_edge}: {out:#?}");
    }

    for parity in ["0+3", "10+300", "lots"] {
        let out = run(
            "sender",
            send_command(&src, &to, &ss, Some(SECRET), &["--parity", parity]),
            SHORT_TIMEOUT,
        );
        assert_eq!(out.code, 2, "--parity {parity}: {out:#?}");
        assert!(out.stderr.contains("--parity"), "{out:#?}");
    }

    let rate = run(
        "sender",
        send_command(&src, &to, &ss, Some(SECRET), &["--max-rate", "fast"]),
        SHORT_TIMEOUT,
    );
    assert_eq!(rate.code, 2, "{rate:#?}");
}

#[test]
fn an_unreachable_receiver_fails_with_exit_1_after_the_connect_timeout() {
    let t = Scratch::new("unreachable");
    let src = random_file(&t.file("x.bin"), MIB, 13);
    let closed = format!("127.0.0.1:{}", free_port());
    let out = run(
        "sender",
        send_command(
            &src,
            &closed,
            &t.dir("ss"),
            Some(SECRET),
            &["--connect-timeout", "2s"],
        ),
        SHORT_TIMEOUT,
    );
    assert_eq!(out.code, 1, "{out:#?}");
    assert_one_line(&out, &closed);
    assert_eq!(out.summary()["ok"], false);
}

#[test]
fn a_read_only_output_dir_is_refused_with_exit_4() {
    let t = Scratch::new("readonly");
    let rs = t.dir("rs");
    let mnt = TmpfsMount::new(&t.file("ro"), "size=1M,ro");
    let out = run(
        "receiver",
        ReceiverConfig::new(mnt.path(), &rs).command(),
        SHORT_TIMEOUT,
    );
    assert_eq!(out.code, 4, "{out:#?}");
    assert_one_line(&out, "not writable");
    assert!(out.stderr.contains("read-only"), "{:?}", out.stderr);
    assert!(dir_names(mnt.path()).is_empty());

    // A missing output dir is bad input (exit 2, one line naming it), and is not created.
    let missing = t.file("missing-out");
    let out = run(
        "receiver",
        ReceiverConfig::new(&missing, &rs).command(),
        SHORT_TIMEOUT,
    );
    assert_eq!(out.code, 2, "{out:#?}");
    assert_one_line(&out, "missing-out");
    assert!(!missing.exists());
}
