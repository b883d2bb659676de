//! A sender of an older build against this receiver: protocol version 2 announces no chunk list hash, so the
//! receiver checks the whole file by hashing its bytes, as it always did (PROTOCOL.md §5). A hand-made peer
//! speaks version 2 over the TCP data path: with the file's true SHA-256 the file completes and the receiver
//! confirms that hash; with another one every chunk verifies and the session is discarded, nothing final.

#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is a failing test, with its message

use sha2::{Digest, Sha256};
use tokio::io::split;
use trackshift_proto::frame::DATA_PIECE;
use trackshift_proto::{Frame, Offer, SessionId};
use trackshift_scenarios::peer::{authed_up_to, block_on};
use trackshift_scenarios::*;

const CHUNK: u64 = 5 * MIB;

/// What the receiver's last word was: `FileDone`'s `ok` and SHA-256.
async fn send_as_version_2(
    addr: &str,
    name: &str,
    file: &[u8],
    claimed: [u8; 32],
) -> (bool, [u8; 32]) {
    let (rd, wr) = split(authed_up_to(addr, 2).await);
    let (mut r, mut w) = (
        trackshift_transport::FrameReader::new(rd),
        trackshift_transport::FrameWriter::new(wr),
    );
    w.send(&Frame::Offer(Offer {
        session_id: SessionId::random(),
        file_name: name,
        file_size: file.len() as u64,
        chunk_size: CHUNK,
        mtime_ns: 0,
    }))
    .await
    .unwrap();
    let chunks: Vec<&[u8]> = file.chunks(CHUNK as usize).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        w.send(&Frame::ChunkBegin { index: i as u32 })
            .await
            .unwrap();
        for piece in chunk.chunks(DATA_PIECE) {
            let data = Frame::Data {
                raw_len: piece.len() as u32,
                compressed: false,
                payload: piece,
            };
            w.send(&data).await.unwrap();
        }
        let sha256 = Sha256::digest(chunk).into();
        w.send(&Frame::ChunkEnd { sha256 }).await.unwrap();
    }
    w.flush().await.unwrap();
    let mut verified = 0;
    loop {
        match r.next().await.unwrap() {
            Frame::ChunkDone { ok: true, .. } => verified += 1,
            Frame::Accept { .. } | Frame::PartialList { .. } | Frame::KeepAlive => {}
            Frame::FileDone { ok, sha256, .. } => return (ok, sha256),
            f => panic!("unexpected {f:?}"),
        }
        if verified == chunks.len() {
            verified = usize::MAX;
            w.send(&Frame::FileEnd { sha256: claimed }).await.unwrap();
            w.flush().await.unwrap();
        }
    }
}

#[test]
fn a_version_2_sender_gets_its_whole_file_hashed_by_the_receiver() {
    let t = Scratch::new("old-sender");
    let (out, rs) = (t.dir("out"), t.dir("rs"));
    let mut rx = Receiver::start(&out, &rs);
    let src = random_file(&t.file("old.bin"), 2 * CHUNK + 12_345, 91);
    let file = std::fs::read(&src).unwrap();
    let sha: [u8; 32] = Sha256::digest(&file).into();
    let rt = tokio::runtime::Runtime::new().unwrap();

    let (ok, confirmed) = block_on(
        &rt,
        "a true file",
        send_as_version_2(&rx.addr, "old.bin", &file, sha),
    );
    assert!(ok, "the file completes");
    assert_eq!(confirmed, sha, "the receiver confirms the hash it computed");
    assert_same_file(&src, &out.join("old.bin"));

    let mut wrong = sha;
    wrong[0] ^= 1;
    let (ok, found) = block_on(
        &rt,
        "a false claim",
        send_as_version_2(&rx.addr, "lie.bin", &file, wrong),
    );
    assert!(
        !ok,
        "a whole-file hash that does not match discards the session"
    );
    assert_eq!(found, sha, "the receiver says what it found");
    assert!(!out.join("lie.bin").exists(), "{:?}", dir_names(&out));
    rx.assert_running();
}
