//! The soak's schedule: which faults, in which order, with which gaps and lengths, all drawn from one seed
//! (`StdRng`, rand 0.8's ChaCha12), so the same `--seed`, `--kills` and `--duration` give the same schedule on
//! every machine. Pure: no clock, no process; `mod.rs` carries it out.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// One kill in this many is a link cut, one in [`KILLS_PER_ADDR_CHANGE`] an address change, one in
/// [`KILLS_PER_DISK_FULL`] a full disk (at least one of each, whatever `--kills`): 50 kills bring 4 link cuts,
/// 3 address changes and 3 full disks, so kills stay the bulk of the schedule as the issue asks.
const KILLS_PER_LINK_CUT: u32 = 12;
const KILLS_PER_ADDR_CHANGE: u32 = 16;
const KILLS_PER_DISK_FULL: u32 = 16;
/// Share of sender re-runs that go over `--protocol tcp` (the others take the default path, UDP).
const TCP_SHARE: f64 = 0.3;
/// Share of kills that follow a kill without waiting for the transfer to move again: a kill while the other
/// side restarts, reconnects or resumes.
const CHAINED_SHARE: f64 = 0.15;
/// How soon a chained kill follows the previous fault.
const CHAINED_GAP_S: (f64, f64) = (0.2, 2.0);
/// How long a killed sender stays dead before it is run again, and a killed receiver before it restarts.
const SENDER_DOWN_S: (f64, f64) = (0.0, 2.0);
const RECEIVER_DOWN_S: (f64, f64) = (0.2, 3.0);
/// A link cut's length: from shorter than a reconnect to longer than DCSP's 8 s control silence.
const LINK_CUT_S: (f64, f64) = (1.0, 12.0);
/// How long the receiver's disk stays full.
const DISK_FULL_S: (f64, f64) = (2.0, 8.0);

/// The data path of a sender run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    /// No `--protocol` flag: DCSP over UDP, what users run.
    Udp,
    /// `--protocol tcp`.
    Tcp,
}

impl Path {
    pub fn name(self) -> &'static str {
        match self {
            Path::Udp => "udp",
            Path::Tcp => "tcp",
        }
    }
}

/// What is done to the transfer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// SIGKILL the sender; run the same `send` again after `down`, over `path`.
    KillSender {
        #[serde(serialize_with = "secs")]
        down: Duration,
        path: Path,
    },
    /// SIGKILL the receiver; start a new one on the same state dir and port after `down`.
    KillReceiver {
        #[serde(serialize_with = "secs")]
        down: Duration,
    },
    /// Drop everything arriving in either namespace for `down`.
    LinkCut {
        #[serde(serialize_with = "secs")]
        down: Duration,
    },
    /// The sender's namespace moves to its next address.
    AddrChange,
    /// Fill the receiver's output filesystem; free it after `down`.
    DiskFull {
        #[serde(serialize_with = "secs")]
        down: Duration,
    },
}

impl Fault {
    pub fn label(&self) -> &'static str {
        match self {
            Fault::KillSender { .. } => "kill sender",
            Fault::KillReceiver { .. } => "kill receiver",
            Fault::LinkCut { .. } => "link cut",
            Fault::AddrChange => "address change",
            Fault::DiskFull { .. } => "disk full",
        }
    }

    pub fn is_kill(&self) -> bool {
        matches!(self, Fault::KillSender { .. } | Fault::KillReceiver { .. })
    }

    /// How long the fault itself lasts (a dead process, a cut link, a full disk); zero for an address change.
    pub fn down(&self) -> Duration {
        match *self {
            Fault::KillSender { down, .. }
            | Fault::KillReceiver { down }
            | Fault::LinkCut { down }
            | Fault::DiskFull { down } => down,
            Fault::AddrChange => Duration::ZERO,
        }
    }
}

/// When a fault fires.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "after", rename_all = "snake_case")]
pub enum Trigger {
    /// `gap` after the transfer moved again following the previous fault (or after it first moved).
    Recovery {
        #[serde(serialize_with = "secs")]
        gap: Duration,
    },
    /// `gap` after the previous fault was injected, moving or not.
    Previous {
        #[serde(serialize_with = "secs")]
        gap: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Planned {
    pub trigger: Trigger,
    pub fault: Fault,
}

/// The whole schedule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub seed: u64,
    pub faults: Vec<Planned>,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

fn uniform(rng: &mut StdRng, (lo, hi): (f64, f64)) -> Duration {
    Duration::from_secs_f64(rng.gen_range(lo..=hi))
}

impl Plan {
    /// `kills` kills (sender and receiver, at least one of each when there are two or more), plus link cuts,
    /// address changes and full disks in proportion, shuffled; the gaps between recovery and the next fault
    /// add up to `duration` (exponentially distributed: many short, a few long).
    pub fn new(seed: u64, kills: u32, duration: Duration) -> Plan {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut kinds: Vec<u8> = Vec::new();
        // 0 sender kill, 1 receiver kill, 2 link cut, 3 address change, 4 disk full.
        for i in 0..kills {
            kinds.push(match i {
                0 => 0,
                1 => 1,
                _ => u8::from(rng.gen_bool(0.5)),
            });
        }
        let extra = |per: u32| (kills / per).max(1);
        kinds.extend(std::iter::repeat_n(2, extra(KILLS_PER_LINK_CUT) as usize));
        kinds.extend(std::iter::repeat_n(
            3,
            extra(KILLS_PER_ADDR_CHANGE) as usize,
        ));
        kinds.extend(std::iter::repeat_n(4, extra(KILLS_PER_DISK_FULL) as usize));
        kinds.shuffle(&mut rng);

        let mut faults: Vec<Fault> = kinds
            .iter()
            .map(|k| match k {
                0 => Fault::KillSender {
                    down: uniform(&mut rng, SENDER_DOWN_S),
                    path: if rng.gen_bool(TCP_SHARE) {
                        Path::Tcp
                    } else {
                        Path::Udp
                    },
                },
                1 => Fault::KillReceiver {
                    down: uniform(&mut rng, RECEIVER_DOWN_S),
                },
                2 => Fault::LinkCut {
                    down: uniform(&mut rng, LINK_CUT_S),
                },
                3 => Fault::AddrChange,
                _ => Fault::DiskFull {
                    down: uniform(&mut rng, DISK_FULL_S),
                },
            })
            .collect();
        // Both data paths, whatever the draw: the middle sender kill switches to TCP if none did.
        let sender_kills: Vec<usize> = (0..faults.len())
            .filter(|&i| matches!(faults[i], Fault::KillSender { .. }))
            .collect();
        let on = |f: &Fault, p: Path| matches!(f, Fault::KillSender { path, .. } if *path == p);
        if !sender_kills.iter().any(|&i| on(&faults[i], Path::Tcp)) {
            if let Some(&i) = sender_kills.get(sender_kills.len() / 2) {
                if let Fault::KillSender { path, .. } = &mut faults[i] {
                    *path = Path::Tcp;
                }
            }
        }

        move_addr_changes_to_udp(&mut faults);

        // Which faults are chained, then the gaps: those that wait for a recovery share `duration`.
        let chained: Vec<bool> = (0..faults.len())
            .map(|i| {
                i > 0
                    && faults[i].is_kill()
                    && faults[i - 1].is_kill()
                    && rng.gen_bool(CHAINED_SHARE)
            })
            .collect();
        let weights: Vec<f64> = chained
            .iter()
            .map(|&c| {
                if c {
                    0.0
                } else {
                    -(1.0 - rng.gen::<f64>()).ln()
                }
            })
            .collect();
        let total: f64 = weights.iter().sum::<f64>().max(f64::MIN_POSITIVE);
        let mut planned = Vec::with_capacity(faults.len());
        for ((fault, w), c) in faults.into_iter().zip(weights).zip(chained) {
            let trigger = if c {
                Trigger::Previous {
                    gap: uniform(&mut rng, CHAINED_GAP_S),
                }
            } else {
                Trigger::Recovery {
                    gap: duration.mul_f64(w / total),
                }
            };
            planned.push(Planned { trigger, fault });
        }
        Plan {
            seed,
            faults: planned,
        }
    }

    pub fn count(&self, pred: impl Fn(&Fault) -> bool) -> usize {
        self.faults.iter().filter(|p| pred(&p.fault)).count()
    }

    /// The planned gaps that wait for a recovery, added up: the time the transfer is left to move.
    pub fn moving_time(&self) -> Duration {
        self.faults
            .iter()
            .filter_map(|p| match p.trigger {
                Trigger::Recovery { gap } => Some(gap),
                Trigger::Previous { .. } => None,
            })
            .sum()
    }
}

/// The data path of the sender run each fault hits: UDP until a sender kill picks another for the next run.
fn paths(faults: &[Fault]) -> Vec<Path> {
    let mut path = Path::Udp;
    faults
        .iter()
        .map(|f| {
            let now = path;
            if let Fault::KillSender { path: next, .. } = f {
                path = *next;
            }
            now
        })
        .collect()
}

/// An address change moves the sender's namespace to a new address: DCSP (UDP) follows it, but a TCP
/// connection cannot, and the sender only notices when `TCP_USER_TIMEOUT` (90 s, trackshift-transport) gives
/// up on it; that stall would dwarf the rest of a short soak. So each address change that would hit a TCP run
/// moves to just before the sender kill that started that run, until all hit UDP runs (the first run is UDP,
/// so this ends).
fn move_addr_changes_to_udp(faults: &mut Vec<Fault>) {
    while let Some(i) = paths(faults)
        .iter()
        .zip(faults.iter())
        .position(|(p, f)| *p == Path::Tcp && matches!(f, Fault::AddrChange))
    {
        let opener = faults[..i]
            .iter()
            .rposition(|f| matches!(f, Fault::KillSender { .. }))
            .expect("a TCP run is started by a sender kill");
        let f = faults.remove(i);
        faults.insert(opener, f);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    const TEN_MIN: Duration = Duration::from_secs(600);

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        assert_eq!(Plan::new(7, 50, TEN_MIN), Plan::new(7, 50, TEN_MIN));
        assert_ne!(Plan::new(7, 50, TEN_MIN), Plan::new(8, 50, TEN_MIN));
    }

    #[test]
    fn every_kind_of_fault_and_both_paths_are_scheduled() {
        for seed in 0..200 {
            for kills in [2, 4, 50, 80] {
                let p = Plan::new(seed, kills, TEN_MIN);
                let n = |f: fn(&Fault) -> bool| p.count(f);
                assert_eq!(n(Fault::is_kill), kills as usize, "seed {seed}");
                assert!(n(|f| matches!(f, Fault::KillSender { .. })) >= 1);
                assert!(n(|f| matches!(f, Fault::KillReceiver { .. })) >= 1);
                assert!(n(|f| matches!(f, Fault::LinkCut { .. })) >= 1);
                assert!(n(|f| matches!(f, Fault::AddrChange)) >= 1);
                assert!(n(|f| matches!(f, Fault::DiskFull { .. })) >= 1);
                assert!(
                    n(|f| matches!(
                        f,
                        Fault::KillSender {
                            path: Path::Tcp,
                            ..
                        }
                    )) >= 1,
                    "seed {seed} kills {kills}: no TCP run"
                );
                // Chained faults only follow kills, and the gaps that wait for recovery fill the duration.
                for w in p.faults.windows(2) {
                    if let Trigger::Previous { .. } = w[1].trigger {
                        assert!(w[0].fault.is_kill() && w[1].fault.is_kill());
                    }
                }
                assert!(matches!(p.faults[0].trigger, Trigger::Recovery { .. }));
                let faults: Vec<Fault> = p.faults.iter().map(|f| f.fault).collect();
                for (path, f) in paths(&faults).iter().zip(&faults) {
                    if matches!(f, Fault::AddrChange) {
                        assert_eq!(*path, Path::Udp, "seed {seed} kills {kills}: {faults:?}");
                    }
                }
                let moving = p.moving_time().as_secs_f64();
                assert!((moving - 600.0).abs() < 1e-6, "{moving}");
            }
        }
    }

    #[test]
    fn fifty_kills_bring_the_other_faults_in_proportion() {
        let p = Plan::new(1, 50, TEN_MIN);
        assert_eq!(p.count(|f| matches!(f, Fault::LinkCut { .. })), 4);
        assert_eq!(p.count(|f| matches!(f, Fault::AddrChange)), 3);
        assert_eq!(p.count(|f| matches!(f, Fault::DiskFull { .. })), 3);
        assert_eq!(p.faults.len(), 60);
    }
}
