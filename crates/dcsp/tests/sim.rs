//! A deterministic network simulator in virtual time: it drives the sans-IO `DcspSender` and `DcspReceiver`
//! through seeded loss, bursts, delay, jitter, reordering, duplication, corruption, rate limits with queues,
//! outages, an address change and replays, and checks that exactly the file's bytes arrive.
//!
//! Every failure prints its seed; add the seed to `REGRESSIONS` to keep it. `DCSP_SIM_SEEDS=N` runs more.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use trackshift_dcsp::crypto::test_keys;
use trackshift_dcsp::{
    BlockGeometry, DcspReceiver, DcspSender, DelayRate, ParityMode, ReceiverConfig, ReceiverEvent,
    Role, SenderConfig,
};

/// Seeds that failed on a bug; they run first, always (even with `DCSP_SIM_SEEDS` below them), and all lie beyond
/// the 1000 that `a_thousand_seeded_scenarios` runs by default.
///
/// No seed ever failed on a committed version: the simulator's first commit (04c60e4) passes seeds 0..20000;
/// 6f3a5d4, eb0a87d~1, d166857~1 and f7548d9 (each before a later fix) pass 0..5000; 0c82a13's product code
/// passes 0..50000 (with the check on copies). So these are a generated set that found bugs: each guard below
/// was taken out of a scratch copy of 0c82a13 in turn (each comment says how), `random_scenario` seeds 0..3000
/// were run against it in release, and the first seeds from 1000 up that failed are kept (with how many of the
/// 3000 failed). One guard found no seed: `ShardQueue::push` forgetting what was left of a block pushed again.
const REGRESSIONS: &[u64] = &[
    // DcspReceiver::reset_chunk leaves the cumulative ACK past the chunk it reset: the sender is told the
    // chunk is complete and never sends it again ("block missing or wrong at the end"; 119 of 3000).
    1026, 1068,
    // The receiver keeps ACKing the sender's first address after an address change: the sender hears
    // nothing and the transfer never ends (125 of 3000).
    1015, 1022,
    // A packet number seen before is accepted again (no replay check): a duplicated or replayed datagram is
    // taken twice, caught by `run`'s check on copies (565 of 3000).
    1000, 1001,
    // A resumed session's verified chunks (`skip_chunks`) are not counted as complete: the receiver waits
    // for blocks nobody sends ("stuck", 266 of 3000).
    1002, 1007,
    // BlockGeometry::span rounds a block's data shards down, so a short last shard is never sent (2544 of
    // 3000; these two fail on it alone).
    1005, 1006,
    // DcspSender ignores the ACK's highest-block field, so blocks lost whole (every shard) are never sent
    // again: the transfer hangs (25 of 3000).
    1249, 1381, 1424,
];

#[derive(Debug, Clone, Default)]
struct LinkCfg {
    /// Bytes per second; `None` for no limit.
    rate: Option<f64>,
    queue_bytes: usize,
    delay: Duration,
    jitter: Duration,
    loss: f64,
    /// Gilbert-Elliott: P(good→bad), P(bad→good), loss in bad.
    burst: Option<(f64, f64, f64)>,
    duplicate: f64,
    reorder: f64,
    reorder_delay: Duration,
    corrupt: f64,
    /// Replays an old datagram (captured earlier) now and then.
    replay: f64,
    /// Down between these offsets from the start.
    outages: Vec<(Duration, Duration)>,
    /// `Outcome::max_queue` counts from this offset from the start (to leave startup's overshoot out).
    queue_watch_from: Duration,
}

#[derive(Debug)]
struct Link {
    cfg: LinkCfg,
    rng: StdRng,
    bad: bool,
    busy_until: Option<Instant>,
    last_at: Option<Instant>,
    seq: u64,
    queue: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    slots: Vec<Option<(SocketAddr, SocketAddr, Vec<u8>)>>,
    captured: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    start: Instant,
    corrupted: u64,
    /// Old datagrams sent again (`LinkCfg::replay`) and datagrams doubled (`LinkCfg::duplicate`).
    replayed: u64,
    duplicated: u64,
    /// Since `LinkCfg::queue_watch_from`: datagrams the bottleneck's queue had no room for, and the longest the
    /// queue got (as delay).
    queue_drops: u64,
    max_queue: Duration,
}

impl Link {
    fn new(cfg: LinkCfg, seed: u64, start: Instant) -> Self {
        Self {
            cfg,
            rng: StdRng::seed_from_u64(seed),
            bad: false,
            busy_until: None,
            last_at: None,
            seq: 0,
            queue: BinaryHeap::new(),
            slots: Vec::new(),
            captured: Vec::new(),
            start,
            corrupted: 0,
            replayed: 0,
            duplicated: 0,
            queue_drops: 0,
            max_queue: Duration::ZERO,
        }
    }

    fn push(&mut self, at: Instant, src: SocketAddr, dst: SocketAddr, bytes: Vec<u8>) {
        let slot = match self.slots.iter().position(Option::is_none) {
            Some(i) => {
                self.slots[i] = Some((src, dst, bytes));
                i
            }
            None => {
                self.slots.push(Some((src, dst, bytes)));
                self.slots.len() - 1
            }
        };
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, slot)));
    }

    fn send(&mut self, now: Instant, src: SocketAddr, dst: SocketAddr, bytes: &[u8]) {
        let t = now.saturating_duration_since(self.start);
        if self.cfg.outages.iter().any(|(a, b)| t >= *a && t < *b) {
            return;
        }
        if self.rng.gen_bool(self.cfg.loss) {
            return;
        }
        if let Some((p, r, bad_loss)) = self.cfg.burst {
            self.bad = if self.bad {
                !self.rng.gen_bool(r)
            } else {
                self.rng.gen_bool(p)
            };
            if self.bad && self.rng.gen_bool(bad_loss) {
                return;
            }
        }
        let mut depart = now;
        if let Some(rate) = self.cfg.rate {
            let busy = self.busy_until.unwrap_or(now).max(now);
            let waiting = busy.saturating_duration_since(now);
            if waiting.as_secs_f64() * rate > self.cfg.queue_bytes as f64 {
                if t >= self.cfg.queue_watch_from {
                    self.queue_drops += 1;
                }
                return; // drop-tail
            }
            if t >= self.cfg.queue_watch_from {
                self.max_queue = self.max_queue.max(waiting);
            }
            depart = busy + Duration::from_secs_f64(bytes.len() as f64 / rate);
            self.busy_until = Some(depart);
        }
        let mut at = depart + self.cfg.delay;
        if !self.cfg.jitter.is_zero() {
            let j = self
                .rng
                .gen_range(0..=self.cfg.jitter.as_micros() as u64 * 2);
            at = (at + Duration::from_micros(j))
                .checked_sub(self.cfg.jitter)
                .unwrap_or(at)
                .max(depart);
        }
        // Jitter alone never reorders (as in trackshift-netlab); `reorder` does.
        at = at.max(self.last_at.unwrap_or(at));
        self.last_at = Some(at);
        if self.rng.gen_bool(self.cfg.reorder) {
            at += self.cfg.reorder_delay;
        }
        let mut data = bytes.to_vec();
        if self.rng.gen_bool(self.cfg.corrupt) && !data.is_empty() {
            let i = self.rng.gen_range(0..data.len());
            data[i] ^= 1 << self.rng.gen_range(0..8);
            self.corrupted += 1;
        }
        if self.rng.gen_bool(self.cfg.replay) {
            self.captured.push((src, dst, data.clone()));
        }
        if self.rng.gen_bool(self.cfg.duplicate) {
            self.push(at + Duration::from_micros(1), src, dst, data.clone());
            self.duplicated += 1;
        }
        if !self.captured.is_empty() && self.rng.gen_bool(self.cfg.replay) {
            let i = self.rng.gen_range(0..self.captured.len());
            let (s, d, old) = self.captured[i].clone();
            self.push(at, s, d, old);
            self.replayed += 1;
        }
        self.push(at, src, dst, data);
    }

    fn next_arrival(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((at, _, _))| *at)
    }

    fn pop_due(&mut self, now: Instant) -> Option<(SocketAddr, SocketAddr, Vec<u8>)> {
        match self.queue.peek() {
            Some(Reverse((at, _, _))) if *at <= now => {
                let Reverse((_, _, slot)) = self.queue.pop()?;
                self.slots[slot].take()
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Scenario {
    seed: u64,
    file_size: usize,
    chunk_size: u64,
    shard_size: u32,
    parity: ParityMode,
    fwd: LinkCfg,
    back: LinkCfg,
    address_change: Option<Duration>,
    skip_chunks: Vec<u32>,
    /// The harness fails this chunk's verification once (as a corrupt disk would), forcing a re-send.
    fail_chunk_once: Option<u32>,
    max_rate: Option<u64>,
    /// Record the sender's pacing rate and the receiver's byte count this often (`Outcome::series`).
    series_every: Option<Duration>,
}

/// One point of `Outcome::series`: time since the start, the sender's pacing rate (bytes/s) and phase, and the
/// datagram bytes the receiver had taken.
#[derive(Debug, Clone, Copy)]
struct SeriesPoint {
    at: Duration,
    rate: u64,
    phase: &'static str,
    bytes_received: u64,
}

#[derive(Debug)]
struct Outcome {
    virtual_time: Duration,
    packets: u64,
    bytes: u64,
    retransmitted: u64,
    fec_recovered: u64,
    dropped: u64,
    path_changes: u64,
    corrupted: u64,
    tail_probes: u64,
    queue_drops: u64,
    max_queue: Duration,
    /// Old datagrams the forward link sent again (`LinkCfg::replay`), and datagrams it doubled.
    replays_injected: u64,
    duplicates_injected: u64,
    /// Datagrams handed to the receiver that were byte-for-byte copies of one it had already accepted (tracked
    /// when the forward link replays or duplicates). `run` fails unless each of them was dropped and counted
    /// as a replay (or as too old to check).
    copies_delivered: u64,
    /// The receiver's own count of datagrams dropped as replayed or stale.
    dropped_as_replay: u64,
    /// Chunk verifications the harness failed on purpose (`Scenario::fail_chunk_once`), and the blocks of that
    /// chunk the receiver delivered again afterwards.
    hash_failures_injected: u64,
    blocks_redelivered: u64,
    /// Empty unless `Scenario::series_every` asked for it.
    series: Vec<SeriesPoint>,
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a socket address")
}

fn run(s: &Scenario) -> Result<Outcome, String> {
    let mut rng = StdRng::seed_from_u64(s.seed ^ 0x5eed);
    let mut file = vec![0u8; s.file_size];
    rng.fill_bytes(&mut file);
    let geometry = BlockGeometry::new(
        s.file_size as u64,
        s.chunk_size,
        s.shard_size,
        s.parity.data_shards(),
    )
    .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let conn_id = rng.gen();
    let mut sender = DcspSender::new(
        SenderConfig {
            conn_id,
            keys: test_keys(Role::Sender),
            geometry,
            parity: s.parity,
            controller: Box::new(DelayRate::new(s.max_rate)),
            max_buffered: 64 << 20,
        },
        start,
    );
    let mut receiver = DcspReceiver::new(
        ReceiverConfig {
            conn_id,
            keys: test_keys(Role::Receiver),
            geometry,
            skip_chunks: s.skip_chunks.clone(),
            max_assembly_bytes: 96 << 20,
            stream: Default::default(),
        },
        start,
    );
    let mut fwd = Link::new(s.fwd.clone(), s.seed.wrapping_mul(3), start);
    let mut back = Link::new(s.back.clone(), s.seed.wrapping_mul(7), start);
    let receiver_addr = addr("198.18.1.1:4000");
    let mut sender_addr = addr("198.18.0.1:5000");
    let mut moved = false;

    let mut to_push: std::collections::VecDeque<u32> = (0..geometry.chunk_count())
        .filter(|c| !s.skip_chunks.contains(c))
        .flat_map(|c| geometry.blocks_of_chunk(c))
        .collect();
    let mut received = vec![false; s.file_size];
    let mut out = vec![0u8; s.file_size];
    let mut chunk_blocks_done: Vec<u32> = vec![0; geometry.chunk_count() as usize];
    let mut failed_once = false;
    let mut blocks_redelivered = 0u64;
    // Hashes of the datagrams the receiver accepted, to tell copies (replays, duplicates) of them apart.
    let track_copies = s.fwd.replay > 0.0 || s.fwd.duplicate > 0.0;
    let mut accepted = std::collections::HashSet::new();
    let mut copies_delivered = 0u64;
    let mut buf = Vec::new();
    let mut now = start;
    let limit = Duration::from_secs(900);
    let trace = std::env::var_os("DCSP_SIM_TRACE").is_some();
    let mut next_trace = start;
    let mut series = Vec::new();
    let mut next_point = start;
    for _step in 0..20_000_000u64 {
        if let Some(at) = s.address_change {
            if !moved && now >= start + at {
                moved = true;
                sender_addr = addr("198.18.0.77:5999");
            }
        }
        while sender.wants_block() {
            let Some(b) = to_push.pop_front() else { break };
            let span = geometry.span(b).ok_or("no span")?;
            let range = span.offset as usize..span.offset as usize + span.len as usize;
            sender
                .push_block(b, &file[range])
                .map_err(|e| e.to_string())?;
        }
        while sender.poll_transmit(now, &mut buf) {
            fwd.send(now, sender_addr, receiver_addr, &buf);
        }
        while let Some(t) = receiver.poll_transmit(now, &mut buf) {
            back.send(now, receiver_addr, t.destination, &buf);
        }
        while let Some(ev) = receiver.poll_event() {
            if let ReceiverEvent::Block {
                chunk,
                offset,
                data,
                block,
            } = ev
            {
                let o = offset as usize;
                if o + data.len() > file.len() || data[..] != file[o..o + data.len()] {
                    return Err(format!("block {block} delivered wrong bytes at {offset}"));
                }
                if failed_once && s.fail_chunk_once == Some(chunk) {
                    blocks_redelivered += 1;
                }
                out[o..o + data.len()].copy_from_slice(&data);
                received[o..o + data.len()]
                    .iter_mut()
                    .for_each(|r| *r = true);
                chunk_blocks_done[chunk as usize] += 1;
                let all = geometry.blocks_of_chunk(chunk).len() as u32;
                if s.fail_chunk_once == Some(chunk)
                    && !failed_once
                    && chunk_blocks_done[chunk as usize] == all
                {
                    // The chunk "failed its hash": the receiver forgets it and the sender pushes it again. The
                    // harness forgets its bytes too, so the final check proves they came again.
                    failed_once = true;
                    chunk_blocks_done[chunk as usize] = 0;
                    receiver.reset_chunk(chunk);
                    for b in geometry.blocks_of_chunk(chunk) {
                        let span = geometry.span(b).ok_or("span")?;
                        let r = span.offset as usize..(span.offset + u64::from(span.len)) as usize;
                        received[r].iter_mut().for_each(|x| *x = false);
                        to_push.push_front(b);
                    }
                }
            }
        }
        if receiver.is_complete() && sender.is_idle() && to_push.is_empty() {
            for c in 0..geometry.chunk_count() {
                if s.skip_chunks.contains(&c) {
                    continue;
                }
                for b in geometry.blocks_of_chunk(c) {
                    let span = geometry.span(b).ok_or("span")?;
                    let r = span.offset as usize..(span.offset + u64::from(span.len)) as usize;
                    if out[r.clone()] != file[r.clone()] || !received[r].iter().all(|x| *x) {
                        return Err(format!("block {b} missing or wrong at the end"));
                    }
                }
            }
            let st = sender.stats();
            let rs = receiver.stats();
            return Ok(Outcome {
                virtual_time: now - start,
                packets: st.packets_sent,
                bytes: st.bytes_sent,
                retransmitted: st.packets_retransmitted,
                fec_recovered: rs.fec_recovered,
                dropped: rs.dropped(),
                path_changes: rs.path_changes,
                corrupted: fwd.corrupted,
                tail_probes: st.tail_probes,
                queue_drops: fwd.queue_drops,
                max_queue: fwd.max_queue,
                replays_injected: fwd.replayed,
                duplicates_injected: fwd.duplicated,
                copies_delivered,
                dropped_as_replay: rs.dropped_replayed + rs.dropped_stale,
                hash_failures_injected: u64::from(failed_once),
                blocks_redelivered,
                series,
            });
        }
        if let Some(every) = s.series_every {
            while next_point <= now {
                series.push(SeriesPoint {
                    at: next_point - start,
                    rate: sender.stats().rate,
                    phase: sender.stats().phase,
                    bytes_received: receiver.stats().bytes_received,
                });
                next_point += every;
            }
        }
        if trace && now >= next_trace {
            next_trace = now + Duration::from_millis(50);
            let st = sender.stats();
            eprintln!(
                "t {:>6.2}s {} rate {:>6.2} MB/s srtt {:?} sent {} rtx {} in flight {} blocks",
                (now - start).as_secs_f64(),
                st.phase,
                st.rate as f64 / 1e6,
                st.srtt.unwrap_or_default(),
                st.packets_sent,
                st.packets_retransmitted,
                sender.blocks_in_flight()
            );
        }
        let next = [
            sender.poll_timeout(),
            receiver.poll_timeout(),
            fwd.next_arrival(),
            back.next_arrival(),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else {
            return Err(format!(
                "stuck at {:?}: nothing scheduled (receiver complete {}, sender idle {}, {} blocks to push)",
                now - start,
                receiver.is_complete(),
                sender.is_idle(),
                to_push.len()
            ));
        };
        now = now.max(next);
        if now - start > limit {
            return Err(format!(
                "not done after {limit:?} of virtual time: sender {:?}, receiver {:?}",
                sender.stats(),
                receiver.stats()
            ));
        }
        while let Some((src, _dst, mut d)) = fwd.pop_due(now) {
            if !track_copies {
                receiver.handle_datagram(now, src, &mut d);
                continue;
            }
            let key = {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                d.hash(&mut h);
                h.finish()
            };
            let before = receiver.stats().clone();
            receiver.handle_datagram(now, src, &mut d);
            let after = receiver.stats();
            let took = after.packets_received > before.packets_received;
            if accepted.contains(&key) {
                copies_delivered += 1;
                let as_replay = after.dropped_replayed + after.dropped_stale
                    == before.dropped_replayed + before.dropped_stale + 1;
                if took || !as_replay {
                    return Err(format!(
                        "a copy of an accepted datagram was {} at {:?}: {after:?}",
                        if took {
                            "accepted again"
                        } else {
                            "not counted as a replay"
                        },
                        now - start
                    ));
                }
            } else if took {
                accepted.insert(key);
            }
        }
        while let Some((_src, dst, mut d)) = back.pop_due(now) {
            if dst == sender_addr {
                sender.handle_datagram(now, &mut d);
            }
        }
        sender.handle_timeout(now);
    }
    Err("too many steps".into())
}

fn random_link(rng: &mut StdRng) -> LinkCfg {
    let mut l = LinkCfg {
        delay: Duration::from_millis(rng.gen_range(0..=300)),
        ..LinkCfg::default()
    };
    if rng.gen_bool(0.7) {
        let rate = rng.gen_range(200_000.0..50_000_000.0);
        l.rate = Some(rate);
        l.queue_bytes = (rate * rng.gen_range(0.005..0.2)) as usize + 3000;
    }
    if rng.gen_bool(0.3) {
        l.jitter = Duration::from_millis(rng.gen_range(1..=20));
    }
    if rng.gen_bool(0.6) {
        l.loss = rng.gen_range(0.0..0.2);
    }
    if rng.gen_bool(0.2) {
        l.burst = Some((
            rng.gen_range(0.001..0.02),
            rng.gen_range(0.1..0.5),
            rng.gen_range(0.3..1.0),
        ));
    }
    if rng.gen_bool(0.2) {
        l.duplicate = rng.gen_range(0.0..0.05);
    }
    if rng.gen_bool(0.2) {
        l.reorder = rng.gen_range(0.0..0.1);
        l.reorder_delay = Duration::from_millis(rng.gen_range(1..=30));
    }
    if rng.gen_bool(0.2) {
        l.corrupt = rng.gen_range(0.0..0.05);
    }
    if rng.gen_bool(0.1) {
        l.replay = rng.gen_range(0.0..0.02);
    }
    if rng.gen_bool(0.1) {
        let at = Duration::from_millis(rng.gen_range(0..2000));
        l.outages
            .push((at, at + Duration::from_millis(rng.gen_range(100..4000))));
    }
    l
}

fn random_scenario(seed: u64) -> Scenario {
    let mut rng = StdRng::seed_from_u64(seed);
    let shard_size = rng.gen_range(16..=600) * 2;
    let parity = if rng.gen_bool(0.5) {
        ParityMode::Auto
    } else {
        ParityMode::Fixed {
            data: rng.gen_range(1..=32),
            parity: rng.gen_range(0..=8),
        }
    };
    let file_size = match rng.gen_range(0..10) {
        0 => rng.gen_range(0..3),
        1..=7 => rng.gen_range(1..200_000),
        _ => rng.gen_range(200_000..600_000),
    };
    let chunk_size = rng.gen_range(8_000..200_000u64);
    let chunks = (file_size as u64).div_ceil(chunk_size) as u32;
    let mut fwd = random_link(&mut rng);
    let mut back = if rng.gen_bool(0.5) {
        fwd.clone()
    } else {
        random_link(&mut rng)
    };
    // A link whose outages outlast everything would be a test of patience, not of the protocol.
    fwd.outages.truncate(1);
    back.outages.truncate(1);
    Scenario {
        seed,
        file_size,
        chunk_size,
        shard_size,
        parity,
        fwd,
        back,
        address_change: rng
            .gen_bool(0.15)
            .then(|| Duration::from_millis(rng.gen_range(0..3000))),
        skip_chunks: if chunks > 1 && rng.gen_bool(0.2) {
            (0..chunks).filter(|_| rng.gen_bool(0.4)).collect()
        } else {
            Vec::new()
        },
        fail_chunk_once: (chunks > 0 && rng.gen_bool(0.1)).then(|| rng.gen_range(0..chunks)),
        max_rate: rng
            .gen_bool(0.1)
            .then(|| rng.gen_range(100_000..20_000_000)),
        series_every: None,
    }
}

fn check(s: &Scenario) {
    if let Err(e) = run(s) {
        panic!("seed {} failed: {e}\nscenario: {s:#?}", s.seed);
    }
}

#[test]
fn regressions() {
    for &seed in REGRESSIONS {
        check(&random_scenario(seed));
    }
}

#[test]
fn a_thousand_seeded_scenarios() {
    let n: u64 = std::env::var("DCSP_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let mut failures = Vec::new();
    for seed in 0..n {
        let s = random_scenario(seed);
        if let Err(e) = run(&s) {
            failures.push(format!("seed {seed}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {n} scenarios failed (add their seeds to REGRESSIONS once fixed):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn base(seed: u64) -> Scenario {
    Scenario {
        seed,
        file_size: 3_000_000,
        chunk_size: 1 << 20,
        shard_size: 1200,
        parity: ParityMode::Auto,
        fwd: LinkCfg {
            rate: Some(12_500_000.0),
            queue_bytes: 1_250_000,
            delay: Duration::from_millis(50),
            ..LinkCfg::default()
        },
        back: LinkCfg {
            delay: Duration::from_millis(50),
            ..LinkCfg::default()
        },
        address_change: None,
        skip_chunks: Vec::new(),
        fail_chunk_once: None,
        max_rate: None,
        series_every: None,
    }
}

#[test]
fn clean_link_sends_no_parity_and_little_else() {
    let s = base(1);
    let o = run(&s).unwrap();
    assert_eq!(o.fec_recovered, 0);
    let data_packets = 3_000_000u64.div_ceil(1200);
    assert!(o.packets < data_packets + data_packets / 50, "{o:?}");
}

#[test]
fn five_percent_loss_is_repaired_mostly_by_parity() {
    let mut s = base(2);
    s.fwd.loss = 0.05;
    let o = run(&s).unwrap();
    assert!(o.fec_recovered > 0, "{o:?}");
}

#[test]
fn corrupted_and_replayed_packets_are_dropped_and_counted() {
    let mut s = base(3);
    s.fwd.corrupt = 0.02;
    s.fwd.replay = 0.01;
    let o = run(&s).unwrap();
    assert!(o.corrupted > 0 && o.dropped >= o.corrupted, "{o:?}");
    // Replays were injected and reached the receiver as copies of datagrams it had accepted; `run` checked each
    // of them was dropped and counted as a replay, and the receiver's own count shows at least those.
    assert!(o.replays_injected > 0, "{o:?}");
    assert!(o.copies_delivered > 0, "{o:?}");
    assert!(o.dropped_as_replay >= o.copies_delivered, "{o:?}");
}

#[test]
fn duplicated_datagrams_are_dropped_as_replays() {
    let mut s = base(10);
    s.fwd.duplicate = 0.05;
    let o = run(&s).unwrap();
    // Each copy of an accepted datagram was dropped and counted as a replay (`run` checks it one by one).
    assert!(o.duplicates_injected > 0, "{o:?}");
    assert!(o.copies_delivered > 0, "{o:?}");
    assert!(o.dropped_as_replay >= o.copies_delivered, "{o:?}");
}

#[test]
fn an_outage_pauses_and_the_transfer_goes_on() {
    let mut s = base(4);
    s.fwd.outages = vec![(Duration::from_millis(500), Duration::from_millis(3500))];
    s.back.outages = s.fwd.outages.clone();
    let o = run(&s).unwrap();
    assert!(o.virtual_time > Duration::from_secs(3), "{o:?}");
}

#[test]
fn the_receiver_follows_an_address_change() {
    let mut s = base(5);
    s.address_change = Some(Duration::from_millis(300));
    let o = run(&s).unwrap();
    assert_eq!(o.path_changes, 1, "{o:?}");
}

#[test]
fn the_tail_is_probed_one_reorder_window_after_the_last_shard() {
    let mut s = base(8);
    s.fwd.loss = 0.03;
    s.fwd.delay = Duration::from_millis(100);
    s.back.delay = Duration::from_millis(100);
    let o = run(&s).unwrap();
    assert!(o.tail_probes >= 1, "{o:?}");
}

#[test]
fn a_long_transfer_keeps_its_standing_queue_from_creeping_up() {
    // Like the `sat` profile, for ~45 s of virtual time: several 10 s minimum-RTT windows. Without the drain at
    // each new window the minimum was re-learned over the flow's own standing queue and crept up by α each
    // time, until the 100 ms buffer overflowed (on the emulator: a 5% loss burst and 64+16 parity after ~60 s).
    let rate = 50e6 / 8.0;
    let link = LinkCfg {
        rate: Some(rate),
        queue_bytes: (rate * 0.1) as usize,
        delay: Duration::from_millis(300),
        loss: 0.02,
        queue_watch_from: Duration::from_secs(15),
        ..LinkCfg::default()
    };
    let mut s = base(12);
    s.file_size = 256 << 20;
    s.chunk_size = 8 << 20;
    s.back = LinkCfg {
        rate: None,
        queue_watch_from: Duration::ZERO,
        ..link.clone()
    };
    s.fwd = link;
    let o = run(&s).unwrap();
    assert!(o.virtual_time > Duration::from_secs(40), "{o:?}");
    assert!(o.max_queue < Duration::from_millis(60), "{o:?}");
    assert_eq!(o.queue_drops, 0, "{o:?}");
}

#[test]
fn a_chunk_that_fails_its_hash_is_sent_again() {
    let mut s = base(6);
    s.fail_chunk_once = Some(1);
    let o = run(&s).unwrap();
    // The failure was injected (chunk 1 was complete once and then reset), and every block of the chunk came
    // again: the harness forgot the chunk's bytes at the reset, so `run` also checked they arrived anew.
    assert_eq!(o.hash_failures_injected, 1, "{o:?}");
    let geometry = BlockGeometry::new(
        s.file_size as u64,
        s.chunk_size,
        s.shard_size,
        s.parity.data_shards(),
    )
    .unwrap();
    assert_eq!(
        o.blocks_redelivered,
        geometry.blocks_of_chunk(1).len() as u64,
        "{o:?}"
    );
}

/// From the `dcsp_sender` fuzz target's first 10-minute run: at a cap of 1 kB/s a block of 18 shards takes
/// seconds, longer than its fixed horizon; the sender was right, paced at the cap, and finished.
#[test]
fn a_sender_capped_at_a_kilobyte_a_second_paces_there_and_finishes() {
    let mut s = base(11);
    s.file_size = 8_680;
    s.chunk_size = 6_000;
    s.shard_size = 310;
    s.parity = ParityMode::Fixed {
        data: 14,
        parity: 4,
    };
    s.max_rate = Some(1_000);
    let o = run(&s).unwrap();
    let rate = o.bytes as f64 / o.virtual_time.as_secs_f64();
    assert!(rate <= 1_050.0, "{rate} B/s under a 1000 B/s cap: {o:?}");
}

#[test]
fn fixed_ten_plus_three_survives_burst_loss() {
    let mut s = base(7);
    s.parity = ParityMode::Fixed {
        data: 10,
        parity: 3,
    };
    s.fwd.burst = Some((0.01, 0.2, 1.0));
    let o = run(&s).unwrap();
    assert!(o.fec_recovered > 0, "{o:?}");
}

/// The emulator's profiles, one direction each way, in virtual time: goodput against the payload capacity and
/// bytes on the wire against the file, each held to a floor.
///
/// These figures are deterministic: the clock is virtual, every random draw comes from the seed, and nothing
/// in `DcspSender`/`DcspReceiver` reads a clock or iterates a hash map, so a seed gives the same figures to the
/// last digit on any machine, under any load, in debug or release (`a_seed_replays_exactly` checks the same
/// thing on a small scenario). So they are asserted here, not measured in the bench. The floors are issue 4's
/// targets where the simulator meets them (goodput at least 85% of `rate × (1 − loss)` on wan, lossy, sat and
/// burst; at most `1 + loss + 0.05` bytes on the wire per file byte, 1.03 on a clean link); `fastclean`'s goodput
/// floor is today's level less a little (the target there, 90% of iperf3, is a known miss). The figures hold for
/// the default seed and size; `SIM_SEED` / `SIM_MIB` explore others, where the report still prints and the
/// floors still apply.
#[test]
fn profile_efficiency() {
    struct P {
        name: &'static str,
        rate_mbit: f64,
        one_way_us: u64,
        /// The bottleneck's drop-tail queue, as time at its rate.
        queue_ms: u64,
        loss: f64,
        jitter_ms: u64,
        burst: Option<(f64, f64, f64)>,
        /// Floors: goodput as a fraction of the payload capacity, and bytes on the wire per file byte.
        min_goodput: f64,
        max_wire: f64,
    }
    let profiles = [
        // Like the emulator's `clean` profile on this VM: no delay, ~3 Gbit/s, a queue of a few ms (1.5 MB).
        // 63.0% at seed 11 while FAST kept 4.5 ms of queue in a 4 ms buffer; 75.2% with 2.5 ms, 81.3% with
        // startup's ×2 on short paths (issue 13).
        P {
            name: "fastclean",
            rate_mbit: 3000.0,
            one_way_us: 0,
            queue_ms: 4,
            loss: 0.0,
            jitter_ms: 0,
            burst: None,
            min_goodput: 0.70,
            max_wire: 1.03,
        },
        // The emulator's clean link capped at 1 Gbit/s (50 µs each way, a 100 ms drop-tail queue). 85.6% of the
        // rate at seed 11 when startup's exit left a window of `rate × base` (less than an ACK's worth); 91.7%
        // (96.5% with 1 GiB) with the ACK clock, 93.1% (96.7%) with startup's ×2 on short paths (issue 13).
        // The goodput is of file bytes: 1.028x on the wire.
        P {
            name: "clean1g",
            rate_mbit: 1000.0,
            one_way_us: 50,
            queue_ms: 100,
            loss: 0.0,
            jitter_ms: 0,
            burst: None,
            min_goodput: 0.90,
            max_wire: 1.03,
        },
        // The `fast` profile: 1 Gbit/s, 30 ms each way, 0.5% random loss. 128 MiB is mostly startup here: 58.1%
        // at seed 11 (56.6% before issue 13); with 1 GiB (`SIM_MIB=1024`) 89.8% (80.5% while the refill went
        // back to startup).
        P {
            name: "fast",
            rate_mbit: 1000.0,
            one_way_us: 30_000,
            queue_ms: 100,
            loss: 0.005,
            jitter_ms: 0,
            burst: None,
            min_goodput: 0.55,
            max_wire: 1.06,
        },
        P {
            name: "wan",
            rate_mbit: 200.0,
            one_way_us: 50_000,
            queue_ms: 100,
            loss: 0.01,
            jitter_ms: 0,
            burst: None,
            min_goodput: 0.85,
            max_wire: 1.06,
        },
        P {
            name: "lossy",
            rate_mbit: 100.0,
            one_way_us: 100_000,
            queue_ms: 100,
            loss: 0.05,
            jitter_ms: 10,
            burst: None,
            min_goodput: 0.85,
            max_wire: 1.10,
        },
        P {
            name: "sat",
            rate_mbit: 50.0,
            one_way_us: 300_000,
            queue_ms: 100,
            loss: 0.02,
            jitter_ms: 0,
            burst: None,
            min_goodput: 0.85,
            max_wire: 1.07,
        },
        P {
            name: "burst",
            rate_mbit: 100.0,
            one_way_us: 40_000,
            queue_ms: 100,
            loss: 0.0,
            jitter_ms: 0,
            burst: Some((0.00617, 0.2, 1.0)),
            min_goodput: 0.85,
            // 1 + the mean burst loss (3%) + 0.05.
            max_wire: 1.08,
        },
    ];
    let mut report = String::new();
    let mut missed = Vec::new();
    // SIM_ONLY=name,name runs only those profiles when exploring by hand.
    let only = std::env::var("SIM_ONLY").ok();
    for p in profiles {
        if only
            .as_ref()
            .is_some_and(|o| !o.split(',').any(|n| n == p.name))
        {
            continue;
        }
        let rate = p.rate_mbit * 1e6 / 8.0;
        let link = LinkCfg {
            rate: Some(rate),
            queue_bytes: (rate * p.queue_ms as f64 / 1e3) as usize,
            delay: Duration::from_micros(p.one_way_us),
            jitter: Duration::from_millis(p.jitter_ms),
            loss: p.loss,
            burst: p.burst,
            ..LinkCfg::default()
        };
        // SIM_MIB sizes the file (default 128 MiB) when exploring by hand.
        let size = std::env::var("SIM_MIB")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(128)
            << 20;
        // SIM_SEED picks another seed (default 11).
        let seed = std::env::var("SIM_SEED")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(11);
        let s = Scenario {
            seed,
            file_size: size,
            chunk_size: 8 << 20,
            shard_size: 1432,
            parity: ParityMode::Auto,
            fwd: link.clone(),
            back: LinkCfg { rate: None, ..link },
            address_change: None,
            skip_chunks: Vec::new(),
            fail_chunk_once: None,
            max_rate: None,
            series_every: None,
        };
        let o = run(&s).unwrap();
        let loss = p.loss + p.burst.map_or(0.0, |(a, b, _)| a / (a + b));
        let capacity = rate * (1.0 - loss);
        let goodput = size as f64 / o.virtual_time.as_secs_f64();
        let wire = o.bytes as f64 / size as f64;
        report += &format!(
            "{}: goodput {:.2} MB/s = {:.1}% of capacity (floor {:.0}%); wire {:.3}x (at most {:.3}x); {} repairs, {} FEC blocks; queue at most {:?}, {} overflow drops\n",
            p.name,
            goodput / 1e6,
            100.0 * goodput / capacity,
            100.0 * p.min_goodput,
            wire,
            p.max_wire,
            o.retransmitted,
            o.fec_recovered,
            o.max_queue,
            o.queue_drops
        );
        if goodput / capacity < p.min_goodput {
            missed.push(format!("{}: goodput below its floor", p.name));
        }
        if wire > p.max_wire {
            missed.push(format!("{}: more bytes on the wire than allowed", p.name));
        }
    }
    println!("{report}");
    assert!(missed.is_empty(), "{missed:?}\n{report}");
}

/// The same scenario twice gives the same outcome to the last counter and nanosecond: what lets
/// `profile_efficiency` assert its figures and `REGRESSIONS` replay a seed.
#[test]
fn a_seed_replays_exactly() {
    let mut s = base(9);
    s.fwd.loss = 0.03;
    s.fwd.jitter = Duration::from_millis(5);
    s.fwd.replay = 0.01;
    let a = format!("{:?}", run(&s).unwrap());
    let b = format!("{:?}", run(&s).unwrap());
    assert_eq!(a, b);
}

/// One flow of [`run_shared`]: when its receiver delivered bytes (time since the start, bytes), and when it
/// finished.
type FlowOutcome = (Vec<(Duration, usize)>, Duration);

/// Per flow, the bytes its receiver delivered in `[from, to)`.
fn bytes_between(out: &[FlowOutcome], from: Duration, to: Duration) -> Vec<f64> {
    out.iter()
        .map(|(delivered, _)| {
            delivered
                .iter()
                .filter(|(t, _)| *t >= from && *t < to)
                .map(|(_, n)| *n as f64)
                .sum()
        })
        .collect()
}

/// Several transfers, each its own sender and receiver (and connection id), through one shared link each way.
/// Returns, per flow, the virtual times at which its receiver delivered bytes (time since the start, bytes)
/// and when it finished.
fn run_shared(
    seed: u64,
    fwd: LinkCfg,
    back: LinkCfg,
    flows: &[(Duration, usize)],
) -> Result<Vec<FlowOutcome>, String> {
    struct Flow {
        start_at: Duration,
        file: Vec<u8>,
        geometry: BlockGeometry,
        sender: Option<DcspSender>,
        receiver: Option<DcspReceiver>,
        conn_id: u64,
        to_push: std::collections::VecDeque<u32>,
        sender_addr: SocketAddr,
        receiver_addr: SocketAddr,
        delivered: Vec<(Duration, usize)>,
        done: Option<Duration>,
    }
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let start = Instant::now();
    let mut fs = Vec::new();
    for (i, &(start_at, size)) in flows.iter().enumerate() {
        let mut file = vec![0u8; size];
        rng.fill_bytes(&mut file);
        let geometry =
            BlockGeometry::new(size as u64, 8 << 20, 1432, ParityMode::Auto.data_shards())
                .map_err(|e| e.to_string())?;
        fs.push(Flow {
            start_at,
            file,
            geometry,
            sender: None,
            receiver: None,
            conn_id: rng.gen(),
            to_push: (0..geometry.chunk_count())
                .flat_map(|c| geometry.blocks_of_chunk(c))
                .collect(),
            sender_addr: addr(&format!("198.18.0.{}:5000", i + 1)),
            receiver_addr: addr(&format!("198.18.1.{}:4000", i + 1)),
            delivered: Vec::new(),
            done: None,
        });
    }
    let mut fwd = Link::new(fwd, seed.wrapping_mul(3), start);
    let mut back = Link::new(back, seed.wrapping_mul(7), start);
    let mut buf = Vec::new();
    let mut now = start;
    for _step in 0..50_000_000u64 {
        for f in fs.iter_mut() {
            if f.done.is_some() || now < start + f.start_at {
                continue;
            }
            if f.sender.is_none() {
                f.sender = Some(DcspSender::new(
                    SenderConfig {
                        conn_id: f.conn_id,
                        keys: test_keys(Role::Sender),
                        geometry: f.geometry,
                        parity: ParityMode::Auto,
                        controller: Box::new(DelayRate::new(None)),
                        max_buffered: 64 << 20,
                    },
                    now,
                ));
                f.receiver = Some(DcspReceiver::new(
                    ReceiverConfig {
                        conn_id: f.conn_id,
                        keys: test_keys(Role::Receiver),
                        geometry: f.geometry,
                        skip_chunks: Vec::new(),
                        max_assembly_bytes: 96 << 20,
                        stream: Default::default(),
                    },
                    now,
                ));
            }
            let (Some(sender), Some(receiver)) = (f.sender.as_mut(), f.receiver.as_mut()) else {
                continue;
            };
            while sender.wants_block() {
                let Some(b) = f.to_push.pop_front() else {
                    break;
                };
                let span = f.geometry.span(b).ok_or("no span")?;
                let range = span.offset as usize..span.offset as usize + span.len as usize;
                sender
                    .push_block(b, &f.file[range])
                    .map_err(|e| e.to_string())?;
            }
            while sender.poll_transmit(now, &mut buf) {
                fwd.send(now, f.sender_addr, f.receiver_addr, &buf);
            }
            while let Some(t) = receiver.poll_transmit(now, &mut buf) {
                back.send(now, f.receiver_addr, t.destination, &buf);
            }
            while let Some(ev) = receiver.poll_event() {
                if let ReceiverEvent::Block { offset, data, .. } = ev {
                    let o = offset as usize;
                    if data[..] != f.file[o..o + data.len()] {
                        return Err(format!("wrong bytes at {offset}"));
                    }
                    f.delivered.push((now - start, data.len()));
                }
            }
            if receiver.is_complete() && sender.is_idle() && f.to_push.is_empty() {
                f.done = Some(now - start);
            }
        }
        if fs.iter().all(|f| f.done.is_some()) {
            return Ok(fs
                .into_iter()
                .map(|f| (f.delivered, f.done.unwrap_or_default()))
                .collect());
        }
        let mut next: Option<Instant> = [fwd.next_arrival(), back.next_arrival()]
            .into_iter()
            .flatten()
            .min();
        for f in &fs {
            let t = if f.done.is_some() {
                None
            } else if let (Some(s), Some(r)) = (&f.sender, &f.receiver) {
                [s.poll_timeout(), r.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min()
            } else {
                Some(start + f.start_at)
            };
            next = match (next, t) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        let Some(next) = next else {
            return Err(format!("stuck at {:?}", now - start));
        };
        now = now.max(next);
        if now - start > Duration::from_secs(300) {
            return Err("not done after 300 s".into());
        }
        while let Some((src, dst, mut d)) = fwd.pop_due(now) {
            if let Some(r) = fs
                .iter_mut()
                .find(|f| f.receiver_addr == dst)
                .and_then(|f| f.receiver.as_mut())
            {
                r.handle_datagram(now, src, &mut d);
            }
        }
        while let Some((_src, dst, mut d)) = back.pop_due(now) {
            if let Some(s) = fs
                .iter_mut()
                .find(|f| f.sender_addr == dst)
                .and_then(|f| f.sender.as_mut())
            {
                s.handle_datagram(now, &mut d);
            }
        }
        for f in fs.iter_mut() {
            if let Some(s) = f.sender.as_mut() {
                s.handle_timeout(now);
            }
        }
    }
    Err("too many steps".into())
}

/// Two transfers share one wan-like bottleneck (25 MB/s, 50 ms each way, 100 ms queue): started together and
/// one 2 s after the other, each gets a fair share of what the link delivers while both are active.
#[test]
fn two_transfers_share_a_bottleneck_fairly() {
    let rate = 25_000_000.0;
    let fwd = LinkCfg {
        rate: Some(rate),
        queue_bytes: (rate * 0.1) as usize,
        delay: Duration::from_millis(50),
        ..LinkCfg::default()
    };
    let back = LinkCfg {
        delay: Duration::from_millis(50),
        ..LinkCfg::default()
    };
    let size = 96 << 20;
    let mut report = String::new();
    for (name, second_at) in [
        ("together", Duration::ZERO),
        ("2 s later", Duration::from_secs(2)),
    ] {
        let out = run_shared(
            21,
            fwd.clone(),
            back.clone(),
            &[(Duration::ZERO, size), (second_at, size)],
        )
        .unwrap();
        // Both active: from the later start (plus a second to settle in) until the first finishes.
        let from = second_at + Duration::from_secs(1);
        let to = out[0].1.min(out[1].1);
        let bytes = bytes_between(&out, from, to);
        let total: f64 = bytes.iter().sum();
        let shares: Vec<f64> = bytes.iter().map(|b| b / total).collect();
        let secs = (to - from).as_secs_f64();
        report += &format!(
            "{name}: shares {:.1}% / {:.1}% over {secs:.1} s, together {:.1}% of the link; done at {:?} and {:?}\n",
            100.0 * shares[0],
            100.0 * shares[1],
            100.0 * total / secs / rate,
            out[0].1,
            out[1].1
        );
        assert!(secs > 2.0, "{report}");
        for s in &shares {
            assert!((0.30..=0.70).contains(s), "{report}");
        }
    }
    println!("{report}");
}

/// The `lossy` profile's link (100 Mbit/s, 100 ms each way, 5% random loss, 10 ms jitter, a 100 ms queue).
fn lossy_link() -> LinkCfg {
    let rate = 100e6 / 8.0;
    LinkCfg {
        rate: Some(rate),
        queue_bytes: (rate * 0.1) as usize,
        delay: Duration::from_millis(100),
        jitter: Duration::from_millis(10),
        loss: 0.05,
        ..LinkCfg::default()
    }
}

/// Issue 13's start: a 48 MiB file over `lossy` within 1.2x of (3.5 round trips + size / capacity), capacity
/// being the link's rate less its loss. The simulator has no control channel, so its round trips are all
/// startup and tail; through the emulator the handshake takes its share of them (seed 13: 5.72 s, 1.16x).
#[test]
fn a_short_transfer_over_lossy_is_not_mostly_ramp() {
    let mut s = base(13);
    s.file_size = 48 << 20;
    s.chunk_size = 8 << 20;
    s.shard_size = 1432;
    s.fwd = lossy_link();
    s.back = LinkCfg {
        rate: None,
        ..lossy_link()
    };
    s.series_every = Some(Duration::from_millis(100));
    let o = run(&s).unwrap();
    let capacity = 100e6 / 8.0 * (1.0 - 0.05);
    let ideal = 3.5 * 0.2 + s.file_size as f64 / capacity;
    let took = o.virtual_time.as_secs_f64();
    let ramp: Vec<String> = o
        .series
        .iter()
        .take(12)
        .map(|p| format!("{:.1}s {:.1}", p.at.as_secs_f64(), p.rate as f64 * 8e-6))
        .collect();
    println!(
        "48 MiB over lossy: {took:.2} s, {:.2}x of 3.5 RTT + size/capacity ({ideal:.2} s); pacing Mbit/s: {}",
        took / ideal,
        ramp.join(", ")
    );
    assert!(took <= 1.2 * ideal, "{took} s against {ideal} s: {o:?}");
}

/// Issue 13's outages: `flaky`'s link (100 Mbit/s, 20 ms each way, 1% loss) goes down both ways for a while
/// in the middle of a transfer (2.6, 3.0 and 3.4 s, so the link comes back at different points of the probe
/// schedule). Within one round trip plus half a second of the link's return (virtual time) the sender paces at
/// the rate it had before, and the receiver takes bytes at the rate it did. Prints the series around 3 s.
#[test]
fn after_an_outage_the_rate_is_back_within_a_round_trip_and_half_a_second() {
    let secs = Duration::from_secs_f64;
    let mut report = String::new();
    for down in [2.6, 3.0, 3.4] {
        let (line, series) = outage_run(secs(4.0), secs(4.0 + down)).unwrap();
        report += &line;
        if down == 3.0 {
            println!("{series}");
        }
    }
    println!("{report}");
    assert!(!report.contains("SLOW"), "{report}");
}

/// One transfer of [`after_an_outage_the_rate_is_back_within_a_round_trip_and_half_a_second`]: its report line
/// (with "SLOW" in it if the rate was not back in time) and its series from half a second before the outage.
fn outage_run(from: Duration, to: Duration) -> Result<(String, String), String> {
    let rate = 100e6 / 8.0;
    let link = LinkCfg {
        rate: Some(rate),
        queue_bytes: (rate * 0.1) as usize,
        delay: Duration::from_millis(20),
        loss: 0.01,
        outages: vec![(from, to)],
        ..LinkCfg::default()
    };
    let mut s = base(14);
    s.file_size = 96 << 20;
    s.chunk_size = 8 << 20;
    s.shard_size = 1432;
    s.back = LinkCfg {
        rate: None,
        ..link.clone()
    };
    s.fwd = link;
    let every = Duration::from_millis(50);
    s.series_every = Some(every);
    let o = run(&s)?;
    let at = |t: Duration| o.series[(t.as_nanos() / every.as_nanos()) as usize];
    // Mean pacing rate and delivery rate (bytes/s) over [a, b).
    let mean = |a: Duration, b: Duration| {
        let pts: Vec<&SeriesPoint> = o.series.iter().filter(|p| p.at >= a && p.at < b).collect();
        let pacing = pts.iter().map(|p| p.rate as f64).sum::<f64>() / pts.len() as f64;
        let got = (at(b).bytes_received - at(a).bytes_received) as f64;
        (pacing, got / (b - a).as_secs_f64())
    };
    let second = Duration::from_secs(1);
    let (rate_before, got_before) = mean(from - second, from);
    let back = to + Duration::from_millis(40 + 500);
    let (rate_after, got_after) = mean(back, back + second / 2);
    // The first point after the return at 0.8 of the rate before (the series' resolution is 50 ms).
    let regained = o
        .series
        .iter()
        .find(|p| p.at >= to && p.rate as f64 >= 0.8 * rate_before)
        .map_or(f64::NAN, |p| (p.at - to).as_secs_f64() * 1e3);
    let slow = (at(back).rate as f64) < 0.8 * rate_before
        || rate_after < 0.8 * rate_before
        || got_after < 0.8 * got_before;
    let line = format!(
        "down {:.1}-{:.1} s: before {:.1} Mbit/s paced, {:.1} delivered; 0.8 of it again {regained:.0} ms after the return; {:.0} ms after it {:.1} paced, then {:.1} paced and {:.1} delivered over 0.5 s{}\n",
        from.as_secs_f64(),
        to.as_secs_f64(),
        rate_before * 8e-6,
        got_before * 8e-6,
        (back - to).as_secs_f64() * 1e3,
        at(back).rate as f64 * 8e-6,
        rate_after * 8e-6,
        got_after * 8e-6,
        if slow { " SLOW" } else { "" }
    );
    let series = o
        .series
        .iter()
        .filter(|p| p.at + second / 2 >= from && p.at < back + second)
        .map(|p| {
            format!(
                "{:.2} s: {:.1} Mbit/s paced, {}, {} bytes received",
                p.at.as_secs_f64(),
                p.rate as f64 * 8e-6,
                p.phase,
                p.bytes_received
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    Ok((line, series))
}

/// Issue 13 D (and issue point 6's bound): eight transfers through one `wan` bottleneck (25 MB/s, 50 ms each
/// way, 1% random loss, a 100 ms queue), started 100 ms apart, each get within ±50% of an eighth of what the
/// link delivers while all are active, and together at least 0.85 of the link. Seed 31: shares 10.8-18.1%
/// (the two started last highest), together 97.5% (before issue 13's changes: 11.0-16.7%, 96.5%).
#[test]
fn eight_transfers_share_a_lossy_bottleneck() {
    let rate = 25_000_000.0;
    let fwd = LinkCfg {
        rate: Some(rate),
        queue_bytes: (rate * 0.1) as usize,
        delay: Duration::from_millis(50),
        loss: 0.01,
        ..LinkCfg::default()
    };
    let back = LinkCfg {
        delay: Duration::from_millis(50),
        loss: 0.01,
        ..LinkCfg::default()
    };
    let flows: Vec<(Duration, usize)> = (0..8)
        .map(|i| (Duration::from_millis(100 * i), 24 << 20))
        .collect();
    let out = run_shared(31, fwd, back, &flows).unwrap();
    let from = Duration::from_secs(2);
    let to = out.iter().map(|(_, done)| *done).min().unwrap_or_default();
    let bytes = bytes_between(&out, from, to);
    let total: f64 = bytes.iter().sum();
    let secs = (to - from).as_secs_f64();
    let shares: Vec<String> = bytes
        .iter()
        .map(|b| format!("{:.1}%", 100.0 * b / total))
        .collect();
    let report = format!(
        "eight flows: shares {} over {secs:.1} s, together {:.1}% of the link",
        shares.join(" "),
        100.0 * total / secs / rate
    );
    println!("{report}");
    assert!(secs > 2.0, "{report}");
    for b in &bytes {
        let share = b / total;
        assert!((0.5 / 8.0..=1.5 / 8.0).contains(&share), "{report}");
    }
    assert!(total / secs / rate >= 0.85, "{report}");
}
