//! Sending and receiving through relays, in-process on loopback: the engine's `send` with a `RelayRoute` and
//! `serve_relayed` with no listening port, through `trackshift-relay`'s driver (each relay on a runtime of its
//! own, so killing one closes every socket it holds, as a SIGKILL would). What the real binaries do over
//! namespaces is in `tests/tests/grid.rs`.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use trackshift_engine::{
    serve_relayed, CompressMode, DataPath, Event, ParityMode, RateCap, ReceiveOptions, RelayFeed,
    RelayHop, RelayPath, RelayRoute, SendOptions, SessionId, TransferOptions, VerifyMode,
    MIN_CHUNK_SIZE,
};
use trackshift_grid::TokenKey;
use trackshift_relay::{Limits, Relay, RelayConfig, TapEvent};

const SECRET: &str = "relay test secret";
/// The longest any of these transfers may take.
const DEADLINE: Duration = Duration::from_secs(90);

fn unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Everything a relay forwarded, if tapped.
type Capture = Arc<Mutex<Vec<u8>>>;

/// A relay on a runtime of its own.
struct TestRelay {
    id: String,
    addr: String,
    relay: Option<Relay>,
    rt: Option<tokio::runtime::Runtime>,
}

impl TestRelay {
    fn start(key: &TokenKey, id: &str, capture: Option<Capture>) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let tap = capture.map(|c| {
            let tap: trackshift_relay::Tap = Arc::new(move |_: TapEvent, bytes: &[u8]| {
                c.lock().unwrap().extend_from_slice(bytes);
            });
            tap
        });
        let config = RelayConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            relay_id: id.into(),
            verifier: key.verifier(),
            forward: None,
            limits: Limits::default(),
            tap,
        };
        let relay = rt.block_on(Relay::start(config)).unwrap();
        Self {
            id: id.into(),
            addr: relay.local_addr().to_string(),
            relay: Some(relay),
            rt: Some(rt),
        }
    }

    fn hop(&self, key: &TokenKey, session: SessionId) -> RelayHop {
        RelayHop {
            relay_id: self.id.clone(),
            addr: self.addr.clone(),
            token: key
                .sign_admission(&session.to_hex(), &self.id, unix(), 600)
                .unwrap(),
        }
    }

    fn forwarded(&self) -> u64 {
        self.relay
            .as_ref()
            .map_or(0, |r| r.stats().counters.datagrams_forwarded)
    }

    /// Every socket closed at once, no goodbye: what SIGKILL does to a relay process.
    fn kill(&mut self) {
        let rt = self.rt.take().unwrap();
        let relay = self.relay.take();
        rt.block_on(async move { drop(relay) });
        rt.shutdown_background();
    }

    /// The relay's drain (notices to every bound end, `Draining` to hellos), then its end.
    fn drain(&mut self) {
        let rt = self.rt.as_ref().unwrap();
        let relay = self.relay.as_ref().unwrap();
        let _ = rt.block_on(relay.drain(Duration::from_secs(10)));
        self.kill();
    }
}

/// A file of `len` bytes: `marker` again and again between pseudo-random bytes.
fn write_file(dir: &Path, len: usize, marker: &[u8]) -> PathBuf {
    let mut data = Vec::with_capacity(len);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while data.len() < len {
        data.extend_from_slice(marker);
        for _ in 0..64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.extend_from_slice(&x.to_le_bytes());
        }
    }
    data.truncate(len);
    let path = dir.join("payload.bin");
    std::fs::write(&path, &data).unwrap();
    path
}

/// A receiver with no listening port serving `path`'s session through its relays, on a thread of its own;
/// the receiver's result arrives on the returned channel.
fn start_receiver(
    dir: &Path,
    path: RelayPath,
) -> std_mpsc::Receiver<Result<(), trackshift_engine::EngineError>> {
    let opts = ReceiveOptions {
        listen: String::new(),
        output_dir: dir.join("out"),
        secret: Some(SECRET.into()),
        state_dir: dir.join("recv-state"),
        once: true,
        udp_sockets: 1,
        verify: VerifyMode::Chunks,
    };
    std::fs::create_dir_all(&opts.output_dir).unwrap();
    let (paths_tx, paths) = mpsc::unbounded_channel();
    paths_tx.send(path).unwrap();
    let (done_tx, done) = std_mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let feed = RelayFeed {
            paths,
            updates: None,
        };
        let sink = Arc::new(trackshift_engine::NoEvents);
        let _keep = paths_tx;
        let r = rt.block_on(serve_relayed(
            opts,
            sink,
            async { tokio::time::sleep(DEADLINE).await },
            Some(feed),
        ));
        let _ = done_tx.send(r);
    });
    done
}

fn send_options(dir: &Path, file: PathBuf, path: RelayPath, streams: u8, rate: u64) -> SendOptions {
    SendOptions {
        path: file,
        to: "lab-receiver".into(),
        chunk_size: MIN_CHUNK_SIZE,
        compress: CompressMode::None,
        transfer: TransferOptions {
            secret: Some(SECRET.into()),
            protocol: DataPath::Udp { explicit: true },
            parity: ParityMode::parse("auto").unwrap(),
            streams,
            max_rate: RateCap::new(Some(rate)),
            fingerprint: None,
            retry_for: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(30),
            state_dir: dir.join("send-state"),
            rate_controllers: None,
        },
        relay: Some(RelayRoute {
            path,
            updates: None,
        }),
    }
}

/// What a send run told its sink, stamped.
#[derive(Default)]
struct Seen {
    progress: Vec<(Instant, u64)>,
    failovers: Vec<(Instant, String)>,
}

/// Sends `opts`, calling `mid` (once) when the receiver has verified at least `at` bytes; checks the file
/// arrived whole; what the sink saw.
fn send_and_check(
    dir: &Path,
    opts: SendOptions,
    received: std_mpsc::Receiver<Result<(), trackshift_engine::EngineError>>,
    at: u64,
    mid: impl FnOnce() + Send + 'static,
) -> (trackshift_engine::SendReport, Seen) {
    let file = opts.path.clone();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (mid_tx, mid_rx) = std_mpsc::channel::<()>();
    let sink_seen = seen.clone();
    let mid_tx = Mutex::new(Some(mid_tx));
    let sink = Arc::new(move |e: &Event| match e {
        Event::Progress { bytes_done, .. } => {
            sink_seen
                .lock()
                .unwrap()
                .progress
                .push((Instant::now(), *bytes_done));
            if *bytes_done >= at {
                if let Some(tx) = mid_tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
            }
        }
        Event::RelayFailover { reason, .. } => sink_seen
            .lock()
            .unwrap()
            .failovers
            .push((Instant::now(), reason.clone())),
        _ => {}
    });
    let midway = std::thread::spawn(move || {
        if mid_rx.recv_timeout(DEADLINE).is_ok() {
            mid();
        }
    });
    let report = trackshift_engine::send(opts, sink).unwrap();
    received
        .recv_timeout(DEADLINE)
        .expect("the receiver ends")
        .unwrap();
    midway.join().unwrap();
    let got = std::fs::read(dir.join("out/payload.bin")).unwrap();
    assert!(
        got == std::fs::read(file).unwrap(),
        "the file arrived byte for byte"
    );
    let seen = Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap();
    (report, seen)
}

fn session() -> SessionId {
    SessionId(rand_bytes())
}

fn rand_bytes() -> [u8; 16] {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut b = [0u8; 16];
    b.copy_from_slice(&t.to_le_bytes());
    b[15] ^= std::process::id() as u8;
    b
}

const MARKER: &[u8] = b"TRACKSHIFT-RELAY-MARKER-7f3a9c";

#[test]
fn a_file_goes_through_one_relay_which_never_sees_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let key = TokenKey::generate().unwrap();
    let capture: Capture = Arc::default();
    let relay = TestRelay::start(&key, "r1", Some(capture.clone()));
    let id = session();
    let path = RelayPath {
        session_id: id,
        stripes: vec![relay.hop(&key, id)],
        standby: None,
    };
    let file = write_file(dir.path(), 12 << 20, MARKER);
    let received = start_receiver(dir.path(), path.clone());
    let opts = send_options(dir.path(), file, path, 1, 200 << 20);
    let (report, _) = send_and_check(dir.path(), opts, received, u64::MAX, || {});
    assert_eq!(report.summary.relays, Some(vec!["r1".to_string()]));
    let forwarded = relay.forwarded();
    eprintln!(
        "datagrams forwarded: {forwarded}; summary {:?}",
        report.summary
    );
    // 12 MiB in 16 KiB shards on loopback: about 770 datagrams, plus the ACKs.
    assert!(forwarded > 700, "the datagrams went through the relay");
    let capture = capture.lock().unwrap();
    assert!(
        capture.len() > 12 << 20,
        "the capture holds the whole transfer"
    );
    let hits = capture
        .windows(MARKER.len())
        .filter(|w| *w == MARKER)
        .count();
    assert_eq!(hits, 0, "the relay forwarded the marker in clear");
}

#[test]
fn a_transfer_stripes_over_two_relays() {
    let dir = tempfile::tempdir().unwrap();
    let key = TokenKey::generate().unwrap();
    let (r1, r2) = (
        TestRelay::start(&key, "r1", None),
        TestRelay::start(&key, "r2", None),
    );
    let id = session();
    let path = RelayPath {
        session_id: id,
        stripes: vec![r1.hop(&key, id), r2.hop(&key, id)],
        standby: None,
    };
    let file = write_file(dir.path(), 16 << 20, MARKER);
    let received = start_receiver(dir.path(), path.clone());
    let opts = send_options(dir.path(), file, path, 2, 200 << 20);
    let (report, _) = send_and_check(dir.path(), opts, received, u64::MAX, || {});
    let (f1, f2) = (r1.forwarded(), r2.forwarded());
    eprintln!("datagrams forwarded: r1 {f1}, r2 {f2}");
    assert!(
        f1 > 300 && f2 > 300,
        "both stripes carried datagrams: {f1}, {f2}"
    );
    assert_eq!(report.summary.relays, Some(vec!["r1".into(), "r2".into()]));
}

/// The stall: from `t` to the first progress after it.
fn stall_after(seen: &Seen, t: Instant, bytes_before: u64) -> Duration {
    seen.progress
        .iter()
        .find(|(at, b)| *at > t && *b > bytes_before)
        .map(|(at, _)| *at - t)
        .expect("progress after the failover")
}

/// A relay killed or drained at 8 MiB of a 40 MiB transfer at 20 MB/s: it completes through the standby.
fn fail_over(how: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let key = TokenKey::generate().unwrap();
    let primary = Arc::new(Mutex::new(TestRelay::start(&key, "r1", None)));
    let standby = TestRelay::start(&key, "r2", None);
    let id = session();
    let path = RelayPath {
        session_id: id,
        stripes: vec![primary.lock().unwrap().hop(&key, id)],
        standby: Some(standby.hop(&key, id)),
    };
    let file = write_file(dir.path(), 40 << 20, MARKER);
    let received = start_receiver(dir.path(), path.clone());
    let opts = send_options(dir.path(), file, path, 1, 20 << 20);
    let when = Arc::new(Mutex::new(None));
    let (p, w) = (primary.clone(), when.clone());
    let (report, seen) = send_and_check(dir.path(), opts, received, 8 << 20, move || {
        *w.lock().unwrap() = Some(Instant::now());
        match how {
            "kill" => p.lock().unwrap().kill(),
            _ => p.lock().unwrap().drain(),
        }
    });
    let t = when
        .lock()
        .unwrap()
        .expect("the relay went away mid-transfer");
    let before = seen
        .progress
        .iter()
        .filter(|(at, _)| *at <= t)
        .map(|(_, b)| *b)
        .max()
        .unwrap_or(0);
    let stall = stall_after(&seen, t, before);
    eprintln!(
        "{how}: first verified chunk through the standby {:.2} s after the relay went; failovers: {:?}",
        stall.as_secs_f64(),
        seen.failovers.iter().map(|(_, r)| r).collect::<Vec<_>>()
    );
    assert!(
        !seen.failovers.is_empty(),
        "the sender moved to the standby"
    );
    assert!(standby.forwarded() > 100, "the standby carried the rest");
    assert_eq!(report.summary.relays, Some(vec!["r1".into(), "r2".into()]));
    assert!(stall < Duration::from_secs(10), "stall {stall:?}");
}

#[test]
fn a_killed_relay_fails_over_to_the_standby() {
    fail_over("kill");
}

#[test]
fn a_draining_relay_hands_over_to_the_standby() {
    fail_over("drain");
}

/// Striped over two relays with a standby: the relay of the second stripe (not the control connection's) is
/// killed; its stream notices the silence and the transfer completes with the standby in its place.
#[test]
fn a_striped_transfer_survives_the_loss_of_one_stripe() {
    let dir = tempfile::tempdir().unwrap();
    let key = TokenKey::generate().unwrap();
    let r1 = TestRelay::start(&key, "r1", None);
    let r2 = Arc::new(Mutex::new(TestRelay::start(&key, "r2", None)));
    let r3 = TestRelay::start(&key, "r3", None);
    let id = session();
    let path = RelayPath {
        session_id: id,
        stripes: vec![r1.hop(&key, id), r2.lock().unwrap().hop(&key, id)],
        standby: Some(r3.hop(&key, id)),
    };
    let file = write_file(dir.path(), 40 << 20, MARKER);
    let received = start_receiver(dir.path(), path.clone());
    let opts = send_options(dir.path(), file, path, 2, 20 << 20);
    let when = Arc::new(Mutex::new(None));
    let (r, w) = (r2.clone(), when.clone());
    let (report, seen) = send_and_check(dir.path(), opts, received, 8 << 20, move || {
        *w.lock().unwrap() = Some(Instant::now());
        r.lock().unwrap().kill();
    });
    let t = when.lock().unwrap().expect("the relay died mid-transfer");
    let failover = seen.failovers.first().expect("the sender moved the stripe");
    eprintln!(
        "stripe lost: moved {:.2} s after the kill ({}); standby forwarded {}",
        (failover.0 - t).as_secs_f64(),
        failover.1,
        r3.forwarded()
    );
    assert!(
        r3.forwarded() > 100,
        "the standby carried the lost stripe's share"
    );
    assert_eq!(
        report.summary.relays,
        Some(vec!["r1".into(), "r2".into(), "r3".into()])
    );
}
