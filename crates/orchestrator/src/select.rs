//! Relay selection, a pure function of what was measured: which relays carry a session's stripes, which one
//! stands by, and why.
//!
//! A relay's cost is the round trip through it (the sender's measured RTT to it plus the receiver's; a side
//! that did not measure it counts [`DEFAULT_RTT_MS`]) times a loss penalty, plus a load penalty. A new path
//! takes the cheapest healthy relays as stripes and the next one as standby. A re-pick after a failure changes
//! as little as it can: stripes that still work stay whatever their cost, the failed one is replaced by the
//! standby, and a relay already in the path (the standby, when it has to be chosen again) keeps its place
//! unless another is cheaper by more than [`HYSTERESIS`], so paths do not flap between near-equal relays.
//!
//! Two-hop paths ([`candidates`]): a relay registered with `--forward ADDR`, where ADDR is another registered
//! relay's address, is an entry, and that relay is its exit. A stripe on an entry always goes on to its exit:
//! the sender binds at the entry, the receiver at the exit, and the stripe costs the sender's leg to the entry
//! plus the receiver's leg to the exit, at the busier relay's load. An exit carries sessions only behind an
//! entry, never as a first hop, and an entry whose exit is unknown or unhealthy is no candidate at all.

use std::fmt::Write as _;

use trackshift_grid::api::RelayCost;

/// The one-way leg's round trip assumed for a relay a side did not measure: a long continental path, so a
/// relay somebody measured as near wins over one nobody knows.
pub const DEFAULT_RTT_MS: f64 = 100.0;
/// Multiplies the combined loss: 1 % loss makes a relay 10 % dearer, 10 % loss twice as dear (loss costs
/// retransmissions and parity, and hints at a congested relay).
pub const LOSS_WEIGHT: f64 = 10.0;
/// Added at full load (1.0), in milliseconds of round trip: a busy relay is worth a somewhat longer path.
pub const LOAD_WEIGHT_MS: f64 = 50.0;
/// A relay in the path is replaced by another only if the other costs less than this fraction of it (20 %
/// better).
pub const HYSTERESIS: f64 = 0.8;

/// A healthy relay that could carry the session.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub relay_id: String,
    /// From its last heartbeat, 0 to 1 (of a two-hop stripe: the busier relay's).
    pub load: f64,
    /// The exit relay a two-hop stripe goes on to, where the receiver binds; None for one hop.
    pub exit: Option<String>,
}

/// A registered relay as selection sees it.
#[derive(Debug, Clone, Copy)]
pub struct Listed<'a> {
    pub relay_id: &'a str,
    pub addr: &'a str,
    /// Its `--forward` address, if it has one.
    pub forward: Option<&'a str>,
    pub load: f64,
    /// Probed, heartbeating and not draining.
    pub healthy: bool,
}

/// The candidates among the registered `relays`: each healthy relay that is nobody's exit, as one hop, and
/// each healthy entry with a healthy exit, as a two-hop stripe (see the module docs).
pub fn candidates(relays: &[Listed<'_>]) -> Vec<Candidate> {
    let exit_of = |entry: &Listed<'_>| {
        let forward = entry.forward?;
        relays
            .iter()
            .find(|r| r.relay_id != entry.relay_id && same_addr(r.addr, forward))
    };
    let is_exit = |r: &Listed<'_>| {
        relays
            .iter()
            .any(|e| exit_of(e).is_some_and(|x| x.relay_id == r.relay_id))
    };
    relays
        .iter()
        .filter(|r| r.healthy && !is_exit(r))
        .filter_map(|r| match (r.forward, exit_of(r)) {
            (None, _) => Some(Candidate {
                relay_id: r.relay_id.to_owned(),
                load: r.load,
                exit: None,
            }),
            (Some(_), Some(exit)) if exit.healthy => Some(Candidate {
                relay_id: r.relay_id.to_owned(),
                load: r.load.max(exit.load),
                exit: Some(exit.relay_id.to_owned()),
            }),
            (Some(_), _) => None,
        })
        .collect()
}

/// Whether two `HOST:PORT` strings name the same socket (as addresses when both parse, else as text).
fn same_addr(a: &str, b: &str) -> bool {
    match (
        a.parse::<std::net::SocketAddr>(),
        b.parse::<std::net::SocketAddr>(),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => a.eq_ignore_ascii_case(b),
    }
}

/// What both ends measured to the relays they know.
#[derive(Debug, Clone, Copy)]
pub struct Measured<'a> {
    pub sender: &'a [RelayCost],
    pub receiver: &'a [RelayCost],
}

/// The relays of a path, by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub stripes: Vec<String>,
    pub standby: Option<String>,
    /// The costs compared, one line.
    pub reason: String,
}

/// No healthy relay could take the place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no healthy relay is available{0}: start `trackshift relay` or wait for one to register")]
pub struct NoRelay(String);

impl Measured<'_> {
    /// The relay's cost: (sender RTT + receiver RTT) × (1 + LOSS_WEIGHT × combined loss) + load penalty. The
    /// receiver's leg of a two-hop stripe is the one to its exit.
    pub fn cost(&self, candidate: &Candidate) -> f64 {
        let find = |costs: &[RelayCost], id: &str| {
            costs
                .iter()
                .find(|c| c.relay_id == id)
                .map_or((DEFAULT_RTT_MS, 0.0), |c| (c.rtt_ms, c.loss))
        };
        let receiver_end = candidate.exit.as_deref().unwrap_or(&candidate.relay_id);
        let (sender_rtt, sender_loss) = find(self.sender, &candidate.relay_id);
        let (receiver_rtt, receiver_loss) = find(self.receiver, receiver_end);
        let loss = 1.0 - (1.0 - sender_loss) * (1.0 - receiver_loss);
        let load = candidate.load.clamp(0.0, 1.0);
        (sender_rtt + receiver_rtt) * (1.0 + LOSS_WEIGHT * loss) + LOAD_WEIGHT_MS * load
    }

    /// The candidates cheapest first (ties by id, so the order is stable).
    fn ranked<'c>(&self, candidates: &'c [Candidate]) -> Vec<(&'c Candidate, f64)> {
        let mut ranked: Vec<_> = candidates.iter().map(|c| (c, self.cost(c))).collect();
        ranked.sort_by(|a, b| {
            a.1.total_cmp(&b.1)
                .then_with(|| a.0.relay_id.cmp(&b.0.relay_id))
        });
        ranked
    }
}

/// A new path: the `stripes` cheapest candidates (fewer if fewer are healthy, at least one), the next as standby.
pub fn pick(
    candidates: &[Candidate],
    measured: Measured<'_>,
    stripes: usize,
) -> Result<Chosen, NoRelay> {
    let ranked = measured.ranked(candidates);
    if ranked.is_empty() {
        return Err(NoRelay(String::new()));
    }
    let take = stripes.clamp(1, ranked.len());
    let mut reason = String::from("cheapest of");
    for (c, cost) in &ranked {
        let _ = write!(reason, " {}={cost:.1}", hops(c));
    }
    for (c, _) in &ranked[..take] {
        if let Some(exit) = &c.exit {
            let _ = write!(
                reason,
                "; two hops {}: {} forwards to {exit} (--forward), the sender binds at {}, the receiver at {exit}",
                hops(c),
                c.relay_id,
                c.relay_id
            );
        }
    }
    if take < stripes {
        let _ = write!(
            reason,
            "; only {take} of {stripes} stripes: not enough healthy relays"
        );
    }
    Ok(Chosen {
        stripes: ranked[..take]
            .iter()
            .map(|(c, _)| c.relay_id.clone())
            .collect(),
        standby: ranked.get(take).map(|(c, _)| c.relay_id.clone()),
        reason,
    })
}

/// A candidate's hops for a reason line: `a`, or `a>b` for a two-hop stripe through entry a to exit b.
fn hops(c: &Candidate) -> String {
    match &c.exit {
        Some(exit) => format!("{}>{exit}", c.relay_id),
        None => c.relay_id.clone(),
    }
}

/// A new path after `failed` stopped (it may also be a relay that is no longer among the healthy
/// `candidates`): working stripes stay, each lost one is replaced by the standby or the cheapest spare, and the
/// standby is chosen again with [`HYSTERESIS`].
pub fn repick(
    candidates: &[Candidate],
    measured: Measured<'_>,
    current: &Chosen,
    failed: &str,
) -> Result<Chosen, NoRelay> {
    let usable: Vec<Candidate> = candidates
        .iter()
        .filter(|c| c.relay_id != failed)
        .cloned()
        .collect();
    let healthy = |id: &str| usable.iter().any(|c| c.relay_id == id);
    let mut notes = vec![format!("{failed} failed")];
    let mut standby = current.standby.clone().filter(|id| healthy(id));
    let mut stripes: Vec<String> = Vec::with_capacity(current.stripes.len());
    for id in &current.stripes {
        if healthy(id) && !stripes.contains(id) {
            stripes.push(id.clone());
            continue;
        }
        let (spare, note) = sticky(&usable, measured, &stripes, standby.as_deref())
            .ok_or_else(|| NoRelay(format!(" to replace `{id}`")))?;
        if standby.as_deref() == Some(spare.as_str()) {
            standby = None; // promoted
        }
        notes.push(format!("{id} replaced by {spare} ({note})"));
        stripes.push(spare);
    }
    let standby = match sticky(&usable, measured, &stripes, standby.as_deref()) {
        Some((id, note)) => {
            notes.push(format!("standby {id} ({note})"));
            Some(id)
        }
        None => {
            notes.push("no standby: no spare healthy relay".into());
            None
        }
    };
    Ok(Chosen {
        stripes,
        standby,
        reason: notes.join("; "),
    })
}

/// The relay for one place and why: `incumbent` unless a candidate outside `taken` is cheaper by more than
/// [`HYSTERESIS`], or the cheapest such candidate when there is no incumbent.
fn sticky(
    candidates: &[Candidate],
    measured: Measured<'_>,
    taken: &[String],
    incumbent: Option<&str>,
) -> Option<(String, String)> {
    let ranked = measured.ranked(candidates);
    let mut free = ranked.iter().filter(|(c, _)| !taken.contains(&c.relay_id));
    let held = incumbent.and_then(|id| {
        ranked
            .iter()
            .find(|(c, _)| c.relay_id == id && !taken.contains(&c.relay_id))
    });
    let Some((held, held_cost)) = held else {
        let (best, cost) = free.next()?;
        return Some((
            best.relay_id.clone(),
            format!("cheapest spare {}={cost:.1}", best.relay_id),
        ));
    };
    let held_id = held.relay_id.clone();
    Some(match free.find(|(c, _)| c.relay_id != held_id) {
        Some((rival, cost)) if *cost < HYSTERESIS * held_cost => (
            rival.relay_id.clone(),
            format!(
                "{}={cost:.1} beats {held_id}={held_cost:.1} by more than 20%",
                rival.relay_id
            ),
        ),
        Some((rival, cost)) => (
            held_id.clone(),
            format!(
                "kept {held_id}={held_cost:.1}: {}={cost:.1} is not 20% better",
                rival.relay_id
            ),
        ),
        None => (held_id.clone(), format!("kept {held_id}={held_cost:.1}")),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly on purpose

    use super::*;

    fn relays(ids: &[&str]) -> Vec<Candidate> {
        ids.iter()
            .map(|id| Candidate {
                relay_id: (*id).into(),
                load: 0.0,
                exit: None,
            })
            .collect()
    }

    fn rtt(id: &str, rtt_ms: f64) -> RelayCost {
        RelayCost {
            relay_id: id.into(),
            rtt_ms,
            loss: 0.0,
        }
    }

    #[test]
    fn cost_adds_both_legs_and_penalises_loss_and_load() {
        let sender = [RelayCost {
            relay_id: "a".into(),
            rtt_ms: 10.0,
            loss: 0.1,
        }];
        let receiver = [rtt("a", 30.0)];
        let m = Measured {
            sender: &sender,
            receiver: &receiver,
        };
        let a = Candidate {
            relay_id: "a".into(),
            load: 0.5,
            exit: None,
        };
        assert!((m.cost(&a) - (40.0 * 2.0 + 25.0)).abs() < 1e-9);
        let unknown = Candidate {
            relay_id: "z".into(),
            load: 0.0,
            exit: None,
        };
        assert!((m.cost(&unknown) - 2.0 * DEFAULT_RTT_MS).abs() < 1e-9);
    }

    #[test]
    fn pick_takes_the_cheapest_as_stripes_and_the_next_as_standby() {
        let sender = [rtt("a", 50.0), rtt("b", 10.0), rtt("c", 20.0)];
        let m = Measured {
            sender: &sender,
            receiver: &[],
        };
        let one = pick(&relays(&["a", "b", "c"]), m, 1).unwrap();
        assert_eq!(
            (one.stripes, one.standby),
            (vec!["b".to_string()], Some("c".to_string()))
        );
        let two = pick(&relays(&["a", "b", "c"]), m, 2).unwrap();
        assert_eq!(
            (two.stripes, two.standby),
            (
                vec!["b".to_string(), "c".to_string()],
                Some("a".to_string())
            )
        );
        let short = pick(&relays(&["a"]), m, 3).unwrap();
        assert_eq!((short.stripes.len(), short.standby), (1, None));
        assert!(short.reason.contains("only 1 of 3"));
        assert!(pick(&[], m, 1).is_err());
    }

    #[test]
    fn a_failure_promotes_the_standby_and_keeps_the_other_stripes() {
        let sender = [
            rtt("a", 10.0),
            rtt("b", 11.0),
            rtt("c", 12.0),
            rtt("d", 13.0),
        ];
        let m = Measured {
            sender: &sender,
            receiver: &[],
        };
        let current = pick(&relays(&["a", "b", "c", "d"]), m, 2).unwrap();
        assert_eq!(
            (current.stripes.clone(), current.standby.clone()),
            (vec!["a".into(), "b".into()], Some("c".into()))
        );
        let next = repick(&relays(&["a", "b", "c", "d"]), m, &current, "a").unwrap();
        assert_eq!(next.stripes, vec!["c".to_string(), "b".to_string()]);
        assert_eq!(next.standby.as_deref(), Some("d"));
        assert!(next.reason.starts_with("a failed"), "{}", next.reason);
    }

    #[test]
    fn the_standby_stays_unless_another_is_more_than_20_percent_cheaper() {
        // The standby c got dearer, but d is only 10 % cheaper: c stays standby and is promoted.
        let current = Chosen {
            stripes: vec!["a".into()],
            standby: Some("c".into()),
            reason: String::new(),
        };
        let sender = [rtt("a", 10.0), rtt("c", 50.0), rtt("d", 40.0)];
        let receiver = [rtt("a", 10.0), rtt("c", 50.0), rtt("d", 50.0)];
        let m = Measured {
            sender: &sender,
            receiver: &receiver,
        };
        let next = repick(&relays(&["a", "c", "d"]), m, &current, "a").unwrap();
        assert_eq!(next.stripes, vec!["c".to_string()]);
        assert!(next.reason.contains("kept c"), "{}", next.reason);
        // Now d is far cheaper (more than 20 %): it takes the place instead of the standby.
        let sender = [rtt("a", 10.0), rtt("c", 50.0), rtt("d", 5.0)];
        let m = Measured {
            sender: &sender,
            receiver: &receiver,
        };
        let next = repick(&relays(&["a", "c", "d"]), m, &current, "a").unwrap();
        assert_eq!(next.stripes, vec!["d".to_string()]);
        assert_eq!(next.standby.as_deref(), Some("c"));
        assert!(next.reason.contains("beats c"), "{}", next.reason);
    }

    #[test]
    fn an_unhealthy_stripe_is_replaced_too_and_nothing_left_is_an_error() {
        let current = Chosen {
            stripes: vec!["a".into(), "b".into()],
            standby: None,
            reason: String::new(),
        };
        let m = Measured {
            sender: &[],
            receiver: &[],
        };
        // b vanished from the healthy set as well as a failing.
        let next = repick(&relays(&["a", "c", "d"]), m, &current, "a").unwrap();
        assert_eq!(next.stripes, vec!["c".to_string(), "d".to_string()]);
        assert_eq!(next.standby, None);
        assert!(repick(&relays(&["a"]), m, &current, "a").is_err());
    }

    fn listed<'a>(id: &'a str, addr: &'a str, forward: Option<&'a str>) -> Listed<'a> {
        Listed {
            relay_id: id,
            addr,
            forward,
            load: 0.1,
            healthy: true,
        }
    }

    #[test]
    fn an_entry_forwarding_to_a_registered_relay_makes_a_two_hop_stripe() {
        let relays = [
            listed("a", "127.0.0.1:1000", Some("127.0.0.1:2000")),
            listed("b", "127.0.0.1:2000", None),
            listed("c", "127.0.0.1:3000", None),
        ];
        let found = candidates(&relays);
        let view: Vec<(&str, Option<&str>)> = found
            .iter()
            .map(|c| (c.relay_id.as_str(), c.exit.as_deref()))
            .collect();
        assert_eq!(
            view,
            [("a", Some("b")), ("c", None)],
            "b serves only behind a"
        );
        // The receiver's leg of a>b is its RTT to the exit b, not to a.
        let receiver = [rtt("b", 5.0), rtt("a", 500.0)];
        let m = Measured {
            sender: &[rtt("a", 5.0)],
            receiver: &receiver,
        };
        assert!((m.cost(&found[0]) - (10.0 + LOAD_WEIGHT_MS * 0.1)).abs() < 1e-9);
        let chosen = pick(&found, m, 1).unwrap();
        assert_eq!(chosen.stripes, ["a"]);
        assert!(chosen.reason.contains("a>b="), "{}", chosen.reason);
    }

    #[test]
    fn an_entry_without_a_healthy_exit_is_no_candidate() {
        let mut exit = listed("b", "127.0.0.1:2000", None);
        exit.healthy = false;
        let relays = [
            listed("a", "127.0.0.1:1000", Some("127.0.0.1:2000")),
            exit,
            listed("d", "127.0.0.1:4000", Some("127.0.0.1:9999")),
        ];
        assert!(candidates(&relays).is_empty());
    }
}
