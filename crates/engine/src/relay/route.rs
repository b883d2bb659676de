//! A sender's relay path and its failover decisions, sans-IO: which relay carries the control connection and
//! each DCSP stream, and where a stream goes when its relay dies or drains.

use super::{RelayHop, RelayPath};

/// What losing a relay changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failover {
    /// The standby took the lost relay's place.
    Standby { to: String },
    /// No standby: the other stripes carry the lost relay's streams.
    Narrowed,
    /// The relay was not (or no longer) on the path: nothing to do.
    NotOnPath,
    /// It was the last relay and there is no standby: keep trying it (it may come back).
    NoSpare,
}

/// The relays a sender's session uses now.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    path: RelayPath,
    /// Every relay that carried part of the session, in the order they were first used (for the summary).
    used: Vec<String>,
}

impl Route {
    /// A route along `path`; `None` without a stripe.
    pub(crate) fn new(path: RelayPath) -> Option<Self> {
        if path.stripes.is_empty() {
            return None;
        }
        let mut route = Self {
            path,
            used: Vec::new(),
        };
        route.note_used();
        Some(route)
    }

    /// The relay the control connection goes through: the first stripe.
    pub(crate) fn control(&self) -> &RelayHop {
        &self.path.stripes[0]
    }

    /// The relay DCSP stream `stream` goes through: stripe `stream mod N`.
    pub(crate) fn stripe_of(&self, stream: u8) -> &RelayHop {
        &self.path.stripes[usize::from(stream) % self.path.stripes.len()]
    }

    pub(crate) fn path(&self) -> &RelayPath {
        &self.path
    }

    /// Relay ids that carried part of the session so far.
    pub(crate) fn used(&self) -> &[String] {
        &self.used
    }

    /// `relay_id` died or drains: its place goes to the standby, or its streams to the other stripes.
    pub(crate) fn fail(&mut self, relay_id: &str) -> Failover {
        let Some(at) = self
            .path
            .stripes
            .iter()
            .position(|h| h.relay_id == relay_id)
        else {
            return Failover::NotOnPath;
        };
        if let Some(standby) = self.path.standby.take() {
            let to = standby.relay_id.clone();
            self.path.stripes[at] = standby;
            self.note_used();
            return Failover::Standby { to };
        }
        if self.path.stripes.len() > 1 {
            self.path.stripes.remove(at);
            return Failover::Narrowed;
        }
        Failover::NoSpare
    }

    /// A new path for the same session (the orchestrator's answer to a failure report).
    pub(crate) fn adopt(&mut self, path: RelayPath) {
        if path.stripes.is_empty() || path.session_id != self.path.session_id {
            return;
        }
        self.path = path;
        self.note_used();
    }

    fn note_used(&mut self) {
        for hop in &self.path.stripes {
            if !self.used.contains(&hop.relay_id) {
                self.used.push(hop.relay_id.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trackshift_proto::SessionId;

    fn hop(id: &str) -> RelayHop {
        RelayHop {
            relay_id: id.into(),
            addr: format!("{id}:4000"),
            token: format!("token-{id}"),
        }
    }

    fn path(stripes: &[&str], standby: Option<&str>) -> RelayPath {
        RelayPath {
            session_id: SessionId([7; 16]),
            stripes: stripes.iter().map(|s| hop(s)).collect(),
            standby: standby.map(hop),
        }
    }

    #[test]
    fn streams_take_stripes_in_turn_and_the_first_carries_control() {
        let r = Route::new(path(&["a", "b"], None)).unwrap();
        assert_eq!(r.control().relay_id, "a");
        let ids: Vec<&str> = (0..5).map(|s| r.stripe_of(s).relay_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "a", "b", "a"]);
        assert!(Route::new(path(&[], Some("c"))).is_none());
    }

    #[test]
    fn a_lost_relay_gives_its_place_to_the_standby_then_to_the_other_stripes() {
        let mut r = Route::new(path(&["a", "b"], Some("c"))).unwrap();
        assert_eq!(r.fail("b"), Failover::Standby { to: "c".into() });
        assert_eq!(
            r.stripe_of(1).relay_id,
            "c",
            "stream 1 moved to the standby"
        );
        assert_eq!(r.control().relay_id, "a", "the control relay stays");
        assert_eq!(
            r.fail("b"),
            Failover::NotOnPath,
            "a second report changes nothing"
        );
        assert_eq!(r.fail("a"), Failover::Narrowed);
        assert_eq!(r.control().relay_id, "c");
        assert_eq!(r.fail("c"), Failover::NoSpare);
        assert_eq!(
            r.control().relay_id,
            "c",
            "the last relay is kept and retried"
        );
        assert_eq!(r.used(), ["a", "b", "c"]);
    }

    #[test]
    fn a_new_path_from_the_orchestrator_replaces_the_old_one() {
        let mut r = Route::new(path(&["a"], Some("b"))).unwrap();
        r.fail("a");
        r.adopt(path(&["b"], Some("d")));
        assert_eq!(r.path().standby.as_ref().unwrap().relay_id, "d");
        let mut other = path(&["x"], None);
        other.session_id = SessionId([8; 16]);
        r.adopt(other);
        assert_eq!(
            r.control().relay_id,
            "b",
            "another session's path is ignored"
        );
        assert_eq!(r.used(), ["a", "b"]);
    }
}
