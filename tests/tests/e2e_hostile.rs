//! A hostile peer talking to the real receiver: unsafe file names in a hand-made `Offer` and from the real sender
//! (over UDP and TCP), garbage instead of TLS, garbage instead of the handshake, truncated frames, and an
//! oversized frame header. Each is refused or dropped, nothing is written where it should not be, and the
//! receiver keeps serving a good transfer.

#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is a failing test, with its message

use std::io::{Read, Write};
use std::net::TcpStream;

use tokio::io::{split, AsyncReadExt, AsyncWriteExt};
use trackshift_proto::{ErrorCode, Frame, Offer, SessionId};
use trackshift_scenarios::peer::{authed, block_on, NET_TIMEOUT};
use trackshift_scenarios::*;
use trackshift_transport::{connect, FrameReader, FrameWriter};

fn offer(id: SessionId, name: &str, size: u64) -> Frame<'_> {
    Frame::Offer(Offer {
        session_id: id,
        file_name: name,
        file_size: size,
        chunk_size: 5 * MIB,
        mtime_ns: 0,
    })
}

/// Offers `name` on a fresh authenticated connection (over UDP with `UdpStart` in the same flight, as
/// `trackshift send` does); returns the receiver's `Error` frame.
async fn offer_name(addr: &str, name: &str, p: Protocol) -> (ErrorCode, String) {
    let (rd, wr) = split(authed(addr).await);
    let (mut r, mut w) = (FrameReader::new(rd), FrameWriter::new(wr));
    w.send(&offer(SessionId::random(), name, 1024))
        .await
        .unwrap();
    if p == Protocol::Udp {
        w.send(&Frame::UdpStart {
            conn_id: rand::random(),
            shard_size: 1200,
            data_shards: 8,
            dcsp_version: trackshift_dcsp::VERSION,
            streams: 1,
        })
        .await
        .unwrap();
    }
    w.flush().await.unwrap();
    match r.next().await {
        Ok(Frame::Error { code, message }) => (code, message.to_owned()),
        other => panic!("offer of {name:?}: expected an Error frame, got {other:?}"),
    }
}

fn encode(frames: &[Frame<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        f.encode(&mut out);
    }
    out
}

/// The receiver's answer to a fresh session's offer: `Accept(0)`, then (protocol version 2) an empty
/// `PartialList`.
async fn expect_accept<R: tokio::io::AsyncRead + Unpin>(r: &mut FrameReader<R>) {
    match r.next().await {
        Ok(Frame::Accept { verified_count: 0 }) => {}
        other => panic!("expected Accept of a fresh session, got {other:?}"),
    }
    match r.next().await {
        Ok(Frame::PartialList { entries: &[] }) => {}
        other => panic!("expected the empty PartialList of a fresh session, got {other:?}"),
    }
}

/// Reads until the receiver closes the connection (EOF or reset).
async fn until_closed<R: tokio::io::AsyncRead + Unpin>(r: &mut R) {
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Peak resident memory of a process, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn good_transfer(t: &Scratch, rx: &mut Receiver, name: &str, seed: u64) {
    let src = random_file(&t.dir(&format!("src-{seed}")).join(name), 12 * MIB, seed);
    let res = send(&src, &rx.addr, &t.dir("ss"), &["--chunk-size", "5MiB"]);
    assert_eq!(
        res.code, 0,
        "a good transfer after hostile peers failed: {}",
        res.stderr
    );
    assert_same_file(&src, &rx.output_dir.join(name));
    rx.assert_running();
}

over_both_protocols!(hostile_file_names_are_refused_and_nothing_is_written);

/// Unsafe names in a hand-made `Offer`, then the real `trackshift send` of files whose names are legal on disk
/// but not as a received file's name: each is refused (`BadName`; the sender exits 2 with one clean line),
/// nothing is written, and a good transfer on the same path follows.
fn hostile_file_names_are_refused_and_nothing_is_written(p: Protocol) {
    let t = Scratch::new(&format!("names-{}", p.name()));
    let (out, rs) = (t.dir("out"), t.dir("rs"));
    let mut rx = Receiver::start(&out, &rs);
    let passwd_before = std::fs::read("/etc/passwd").ok();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let long = "x".repeat(256);
    let names: Vec<&str> = vec![
        "",
        ".",
        "..",
        "../evil",
        "a/b",
        "/etc/passwd",
        "a\\b",
        "nul\0byte",
        "ctl\x07",
        "esc\x1b[31mred",
        "line\nbreak",
        "c1\u{85}control",
        ".trackshift-x.part",
        long.as_str(),
    ];
    for name in &names {
        let (code, message) = block_on(
            &rt,
            &format!("offer {name:?}"),
            offer_name(&rx.addr, name, p),
        );
        assert_eq!(
            code,
            ErrorCode::BadName,
            "offer of {name:?} answered {code:?}: {message}"
        );
        assert!(
            !message.contains('\n') && !message.contains('\x1b'),
            "the refusal echoes raw bytes: {message:?}"
        );
        eprintln!("refused {name:?}: {message}");
    }

    // The real sender, with names a file on disk can have.
    let src_dir = t.dir("src");
    let ss = t.dir("ss");
    for name in [
        "a\\b",
        "ctl\x07",
        "esc\x1b[31mred",
        "line\nbreak",
        "c1\u{85}control",
        ".trackshift-x.part",
    ] {
        let src = src_dir.join(name);
        std::fs::write(&src, b"hostile").unwrap();
        let res = send(&src, &rx.addr, &ss, p.args());
        assert_eq!(res.code, 2, "sending {name:?}: {res:#?}");
        let lines = res.stderr_lines();
        assert_eq!(lines.len(), 1, "sending {name:?}: {:?}", res.stderr);
        assert!(
            !lines[0].contains('\x1b') && !lines[0].contains('\x07'),
            "the sender's error echoes raw bytes: {:?}",
            lines[0]
        );
        assert_eq!(res.summary()["ok"], false, "{name:?}");
        std::fs::remove_file(&src).unwrap();
    }

    assert!(
        dir_names(&out).is_empty(),
        "the output dir is not empty: {:?}",
        dir_names(&out)
    );
    assert_eq!(
        dir_names(t.path()),
        vec!["out", "rs", "src", "ss"],
        "something was written beside the output dir"
    );
    assert_eq!(std::fs::read("/etc/passwd").ok(), passwd_before);
    assert!(
        list(&rs).is_empty(),
        "a refused offer left a session behind"
    );
    rx.assert_running();

    let src = random_file(&src_dir.join("fine name (ok).bin"), 12 * MIB, 21);
    let res = send(&src, &rx.addr, &ss, &p.with(&["--chunk-size", "5MiB"]));
    assert_eq!(
        res.code, 0,
        "a good transfer after hostile names failed: {}",
        res.stderr
    );
    p.assert_used(res.summary());
    assert_same_file(&src, &out.join("fine name (ok).bin"));
    assert_eq!(dir_names(&out), vec!["fine name (ok).bin"]);
    rx.assert_running();
}

#[test]
fn garbage_truncated_and_oversized_frames_drop_the_peer_and_the_receiver_keeps_serving() {
    let t = Scratch::new("garbage");
    let (out, rs) = (t.dir("out"), t.dir("rs"));
    let mut rx = Receiver::start(&out, &rs);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = rx.addr.clone();

    // 1. Not TLS at all: the receiver closes the connection.
    {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(NET_TIMEOUT)).unwrap();
        let mut junk = b"GET / HTTP/1.1\r\nHost: trackshift\r\n\r\n".to_vec();
        junk.extend(std::iter::repeat_n(0xABu8, 64 * 1024));
        let _ = s.write_all(&junk); // may fail once the receiver has hung up
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    panic!("the receiver kept a non-TLS peer open for {NET_TIMEOUT:?}")
                }
                Err(_) => break, // reset
            }
        }
    }

    // 2. TLS, then garbage instead of the handshake's Hello.
    block_on(&rt, "garbage instead of Hello", async {
        let (mut tls, _) = connect(&addr, None, "known", &[]).await.unwrap();
        tls.write_all(&[0u8, 0, 0, 9, 0x55, 1, 2, 3, 4, 5, 6, 7, 8])
            .await
            .unwrap();
        tls.flush().await.unwrap();
        until_closed(&mut tls).await;
    });

    // 3. Authenticated, then a truncated Offer and a clean close.
    block_on(&rt, "truncated Offer", async {
        let mut tls = authed(&addr).await;
        tls.write_all(&[0, 0, 0, 100, 0x10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
            .await
            .unwrap();
        tls.shutdown().await.unwrap();
        until_closed(&mut tls).await;
    });

    // 4. Authenticated, then a frame header announcing 4 GiB: refused before any allocation.
    block_on(&rt, "oversized header", async {
        let (rd, wr) = split(authed(&addr).await);
        let mut r = FrameReader::new(rd);
        let mut w = wr;
        w.write_all(&[0xFF, 0xFF, 0xFF, 0xFF, 0x10]).await.unwrap();
        w.flush().await.unwrap();
        match r.next().await {
            Ok(Frame::Error { code, message }) => {
                assert_eq!(code, ErrorCode::Protocol, "{message}");
                assert!(message.contains("exceeds"), "{message}");
            }
            other => panic!("expected an Error frame for an oversized header, got {other:?}"),
        }
    });

    // 5. Mid-transfer: a valid offer and one piece of a chunk, then a Data frame cut short and a clean close.
    let cut_id = SessionId::random();
    block_on(&rt, "truncated Data mid-chunk", async {
        let (rd, mut w) = split(authed(&addr).await);
        let mut r = FrameReader::new(rd);
        w.write_all(&encode(&[offer(cut_id, "cut.bin", 10 * MIB)]))
            .await
            .unwrap();
        w.flush().await.unwrap();
        expect_accept(&mut r).await;
        let piece = vec![7u8; MIB as usize];
        let data = Frame::Data {
            raw_len: MIB as u32,
            compressed: false,
            payload: &piece,
        };
        let mut bytes = encode(&[Frame::ChunkBegin { index: 0 }, data, data]);
        bytes.truncate(bytes.len() - MIB as usize + 100); // the second Data frame loses all but 100 bytes
        w.write_all(&bytes).await.unwrap();
        w.shutdown().await.unwrap();
        while r.next().await.is_ok() {}
    });
    rx.proc
        .wait_event("`interrupted` for the cut transfer", NET_TIMEOUT, |v| {
            v["event"] == "interrupted" && v["session_id"] == cut_id.to_hex().as_str()
        });

    // 6. Mid-transfer: a Data frame header announcing 4 GiB.
    let big_id = SessionId::random();
    block_on(&rt, "oversized header mid-chunk", async {
        let (rd, mut w) = split(authed(&addr).await);
        let mut r = FrameReader::new(rd);
        w.write_all(&encode(&[offer(big_id, "big.bin", 10 * MIB)]))
            .await
            .unwrap();
        w.flush().await.unwrap();
        expect_accept(&mut r).await;
        let mut bytes = encode(&[Frame::ChunkBegin { index: 0 }]);
        bytes.extend([0xFF, 0xFF, 0xFF, 0xFF, 0x21, 0, 0x10, 0, 0, 0]);
        w.write_all(&bytes).await.unwrap();
        w.flush().await.unwrap();
        match r.next().await {
            Ok(Frame::Error { code, message }) => {
                assert_eq!(code, ErrorCode::Protocol, "{message}");
                assert!(message.contains("exceeds"), "{message}");
            }
            other => panic!("expected an Error frame for an oversized Data header, got {other:?}"),
        }
    });
    let failed = rx.wait_summary(&big_id.to_hex(), NET_TIMEOUT);
    assert_eq!(failed["ok"], false, "{failed}");

    assert!(
        peak_rss_kib(rx.proc.pid()) < 300 * 1024,
        "the receiver's memory was not bounded"
    );
    rx.assert_running();
    good_transfer(&t, &mut rx, "after-garbage.bin", 22);
    let names = dir_names(&out);
    assert!(
        names
            .iter()
            .all(|n| n == "after-garbage.bin"
                || (n.starts_with(".trackshift-") && n.ends_with(".part"))),
        "unexpected files in the output dir: {names:?}"
    );
}
