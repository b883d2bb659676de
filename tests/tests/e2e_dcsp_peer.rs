//! A hand-made DCSP sender against the real receiver: the sans-IO `DcspSender` over a real UDP socket, the
//! control frames written by hand. It does what `trackshift send` never does: announce a DCSP version the
//! receiver does not speak, and send a chunk whose bytes do not match the hash it claims for them. The first
//! gets a clear `Error` on the control channel; the second gets `ChunkDone(i, false)`, the chunk is written
//! nowhere final, and the same chunk sent again with its true hash completes the file. A chunk list hash that
//! does not match the verified chunks (protocol version 3) discards the session: every chunk verified, nothing
//! final.

#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is a failing test, with its message

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{split, AsyncRead, ReadHalf, WriteHalf};
use trackshift_dcsp::{
    BlockGeometry, DcspSender, DelayRate, DirectionKeys, ParityMode, Role, SenderConfig, VERSION,
};
use trackshift_proto::hashing::ChunkListHasher;
use trackshift_proto::{ChunkPlan, ErrorCode, Frame, Offer, SessionId};
use trackshift_scenarios::peer::{authed, block_on, NET_TIMEOUT};
use trackshift_scenarios::*;
use trackshift_transport::{dcsp_secret_of, ClientTls, FrameReader, FrameWriter};

const CHUNK: u64 = 5 * MIB;
const SHARD: u32 = 1200;
const DATA_SHARDS: u8 = 8;

type Reader = FrameReader<ReadHalf<ClientTls>>;
type Writer = FrameWriter<WriteHalf<ClientTls>>;

/// TLS, the secret handshake, then `Offer` and `UdpStart` in one flight, as `trackshift send` does. Returns the
/// control channel's halves and the DCSP secret both ends derive from it.
async fn offer_over_udp(
    addr: &str,
    name: &str,
    size: u64,
    conn_id: u64,
    dcsp_version: u8,
) -> (Reader, Writer, [u8; 32]) {
    let tls = authed(addr).await;
    let secret = dcsp_secret_of(tls.get_ref().1).unwrap();
    let (rd, wr) = split(tls);
    let (r, mut w) = (FrameReader::new(rd), FrameWriter::new(wr));
    w.send(&Frame::Offer(Offer {
        session_id: SessionId::random(),
        file_name: name,
        file_size: size,
        chunk_size: CHUNK,
        mtime_ns: 0,
    }))
    .await
    .unwrap();
    w.send(&Frame::UdpStart {
        conn_id,
        shard_size: SHARD,
        data_shards: DATA_SHARDS,
        dcsp_version,
        streams: 1,
    })
    .await
    .unwrap();
    w.flush().await.unwrap();
    (r, w, secret)
}

/// A session offered over DCSP and accepted: the control channel, the sans-IO sender and its socket, and the
/// receiver's DCSP address.
struct UdpSession {
    r: Reader,
    w: Writer,
    sender: DcspSender,
    socket: UdpSocket,
    to: SocketAddr,
}

fn udp_session(rt: &tokio::runtime::Runtime, addr: &str, name: &str, size: u64) -> UdpSession {
    let conn_id: u64 = rand::random();
    let (mut r, w, secret) = block_on(rt, "offer", async {
        let (mut r, w, secret) = offer_over_udp(addr, name, size, conn_id, VERSION).await;
        assert_eq!(next_said(&mut r).await, Said::Accept(0));
        (r, w, secret)
    });
    let port = match block_on(rt, "UdpReady", next_said(&mut r)) {
        Said::UdpReady(p) => p,
        other => panic!("expected UdpReady, got {other:?}"),
    };
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_nonblocking(true).unwrap();
    let geometry = BlockGeometry::new(size, CHUNK, SHARD, DATA_SHARDS).unwrap();
    let sender = DcspSender::new(
        SenderConfig {
            conn_id,
            keys: DirectionKeys::derive(&secret, conn_id, Role::Sender),
            geometry,
            parity: ParityMode::Auto,
            controller: Box::new(DelayRate::new(None)),
            max_buffered: 8 << 20,
        },
        Instant::now(),
    );
    let to = format!("127.0.0.1:{port}").parse().unwrap();
    UdpSession {
        r,
        w,
        sender,
        socket,
        to,
    }
}

/// What the receiver said, owned, keep-alives and the (empty) partial list skipped.
#[derive(Debug, PartialEq)]
enum Said {
    Accept(u32),
    UdpReady(u16),
    ChunkDone(u32, bool),
    FileDone(bool, String),
    Error(ErrorCode, String),
    Other(String),
}

async fn next_said<R: AsyncRead + Unpin>(r: &mut FrameReader<R>) -> Said {
    loop {
        return match r.next().await {
            Ok(Frame::KeepAlive | Frame::PartialList { .. }) => continue,
            Ok(Frame::Accept { verified_count }) => Said::Accept(verified_count),
            Ok(Frame::UdpReady { port }) => Said::UdpReady(port),
            Ok(Frame::ChunkDone { index, ok }) => Said::ChunkDone(index, ok),
            Ok(Frame::FileDone { ok, final_name, .. }) => Said::FileDone(ok, final_name.to_owned()),
            Ok(Frame::Error { code, message }) => Said::Error(code, message.to_owned()),
            Ok(f) => Said::Other(f.name().to_owned()),
            Err(e) => Said::Other(format!("read error: {e}")),
        };
    }
}

/// Drives the sans-IO sender over a real socket until every block pushed has been acknowledged.
fn deliver(
    sender: &mut DcspSender,
    socket: &UdpSocket,
    to: SocketAddr,
    file: &[u8],
    blocks: impl Iterator<Item = u32>,
) {
    let deadline = Instant::now() + NET_TIMEOUT;
    let mut packet = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut pump = |sender: &mut DcspSender| {
        assert!(Instant::now() < deadline, "DCSP delivery timed out");
        let now = Instant::now();
        sender.handle_timeout(now);
        while let Ok((n, _)) = socket.recv_from(&mut buf) {
            sender.handle_datagram(now, &mut buf[..n]);
        }
        while sender.poll_transmit(now, &mut packet) {
            socket.send_to(&packet, to).unwrap();
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    for b in blocks {
        while !sender.wants_block() {
            pump(sender);
        }
        let span = sender.geometry().span(b).unwrap();
        let start = span.offset as usize;
        let end = start + span.len as usize;
        sender.push_block(b, &file[start..end]).unwrap();
    }
    while !sender.is_idle() {
        pump(sender);
    }
}

/// `ChunkHash` frames in one flight, as the sender announces them.
async fn send_chunk_hashes(w: &mut Writer, hashes: &[(u32, [u8; 32])]) {
    for &(index, sha256) in hashes {
        w.send(&Frame::ChunkHash { index, sha256 }).await.unwrap();
    }
    w.flush().await.unwrap();
}

fn sha(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The end of the file as a version 3 sender says it: the chunk list hash of `file` (flipped when `lie`), then
/// `FileEnd` with the whole file's SHA-256; what the receiver answers.
async fn end_file(w: &mut Writer, r: &mut Reader, file: &[u8], lie: bool) -> Said {
    let plan = ChunkPlan::new(file.len() as u64, CHUNK).unwrap();
    let hashes: Vec<(u32, [u8; 32])> = (0..plan.chunk_count())
        .map(|c| {
            let start = plan.offset(c) as usize;
            (c, sha(&file[start..start + plan.len(c) as usize]))
        })
        .collect();
    let mut list = ChunkListHasher::digest(&plan, &hashes).unwrap();
    list[0] ^= u8::from(lie);
    w.send(&Frame::ChunkListHash { sha256: list })
        .await
        .unwrap();
    w.send(&Frame::FileEnd { sha256: sha(file) }).await.unwrap();
    w.flush().await.unwrap();
    next_said(r).await
}

#[test]
fn a_dcsp_version_the_receiver_does_not_speak_is_refused_on_the_control_channel() {
    let t = Scratch::new("dcsp-version");
    let (out, rs) = (t.dir("out"), t.dir("rs"));
    let mut rx = Receiver::start(&out, &rs);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let said = block_on(&rt, "an unknown DCSP version", async {
        let (mut r, _w, _) = offer_over_udp(&rx.addr, "v.bin", MIB, rand::random(), 99).await;
        let mut said = Vec::new();
        loop {
            let s = next_said(&mut r).await;
            let last = matches!(s, Said::Error(..) | Said::Other(_));
            said.push(s);
            if last {
                return said;
            }
        }
    });
    let Some(Said::Error(code, message)) = said.last() else {
        panic!("expected an Error frame, got {said:?}");
    };
    assert_eq!(*code, ErrorCode::Version, "{said:?}");
    assert!(
        message.contains("DCSP version 99") && message.contains("--protocol tcp"),
        "one clear line naming the version and the way out: {message}"
    );
    assert!(
        dir_names(&out).iter().all(|n| n.ends_with(".part")),
        "{:?}",
        dir_names(&out)
    );
    rx.assert_running();
}

#[test]
fn a_dcsp_chunk_whose_hash_does_not_match_is_asked_again_and_never_finalised() {
    let t = Scratch::new("dcsp-wrong-hash");
    let (out, rs) = (t.dir("out"), t.dir("rs"));
    let mut rx = Receiver::start(&out, &rs);
    let size = CHUNK + MIB + 123; // two chunks
    let src = random_file(&t.file("lie.bin"), size, 77);
    let file = std::fs::read(&src).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let UdpSession {
        mut r,
        mut w,
        mut sender,
        socket,
        to,
    } = udp_session(&rt, &rx.addr, "lie.bin", size);
    let geometry = *sender.geometry();
    let chunk_bytes = |c: u64| &file[(c * CHUNK) as usize..((c + 1) * CHUNK).min(size) as usize];

    // Every byte arrives intact, but chunk 0 is announced with a hash its bytes do not have.
    let all = (0..geometry.chunk_count()).flat_map(|c| geometry.blocks_of_chunk(c));
    deliver(&mut sender, &socket, to, &file, all);
    let mut lie = sha(chunk_bytes(0));
    lie[0] ^= 1;
    let verdict = block_on(&rt, "the verdict on the lie", async {
        send_chunk_hashes(&mut w, &[(0, lie), (1, sha(chunk_bytes(1)))]).await;
        next_said(&mut r).await
    });
    // (Chunk 1's verdict waits: the receiver hashes the file in order, and its cursor went back to chunk 0.)
    assert_eq!(
        verdict,
        Said::ChunkDone(0, false),
        "the lying chunk is asked again"
    );
    assert!(
        !out.join("lie.bin").exists(),
        "nothing final before every chunk verified: {:?}",
        dir_names(&out)
    );

    // The same chunk again, with its true hash: both chunks verify, and the file completes.
    deliver(&mut sender, &socket, to, &file, geometry.blocks_of_chunk(0));
    let (verdicts, file_done) = block_on(&rt, "the file", async {
        send_chunk_hashes(&mut w, &[(0, sha(chunk_bytes(0)))]).await;
        let mut verdicts = vec![next_said(&mut r).await, next_said(&mut r).await];
        verdicts.sort_by_key(|s| format!("{s:?}"));
        (verdicts, end_file(&mut w, &mut r, &file, false).await)
    });
    assert_eq!(
        verdicts,
        vec![Said::ChunkDone(0, true), Said::ChunkDone(1, true)]
    );
    assert_eq!(file_done, Said::FileDone(true, "lie.bin".into()));
    assert_same_file(&src, &out.join("lie.bin"));
    rx.assert_running();
}

#[test]
fn a_chunk_list_hash_that_does_not_match_discards_the_session() {
    let t = Scratch::new("dcsp-wrong-list");
    let (out, rs) = (t.dir("out"), t.dir("rs"));
    let mut rx = Receiver::start(&out, &rs);
    let size = CHUNK + 321; // two chunks
    let src = random_file(&t.file("list.bin"), size, 78);
    let file = std::fs::read(&src).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let UdpSession {
        mut r,
        mut w,
        mut sender,
        socket,
        to,
    } = udp_session(&rt, &rx.addr, "list.bin", size);
    let geometry = *sender.geometry();
    let all = (0..geometry.chunk_count()).flat_map(|c| geometry.blocks_of_chunk(c));
    deliver(&mut sender, &socket, to, &file, all);
    let chunk = |c: u64| &file[(c * CHUNK) as usize..((c + 1) * CHUNK).min(size) as usize];
    let (mut verdicts, done) = block_on(&rt, "the file", async {
        send_chunk_hashes(&mut w, &[(0, sha(chunk(0))), (1, sha(chunk(1)))]).await;
        let verdicts = vec![next_said(&mut r).await, next_said(&mut r).await];
        (verdicts, end_file(&mut w, &mut r, &file, true).await)
    });
    verdicts.sort_by_key(|s| format!("{s:?}"));
    assert_eq!(
        verdicts,
        vec![Said::ChunkDone(0, true), Said::ChunkDone(1, true)]
    );
    assert_eq!(done, Said::FileDone(false, "list.bin".into()));
    assert!(
        !out.join("list.bin").exists(),
        "a file whose chunk list does not match is never final: {:?}",
        dir_names(&out)
    );
    rx.assert_running();
}
