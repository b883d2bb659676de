//! The sender through relays: its control connection dialled through the route's first stripe, each DCSP
//! stream aimed at its stripe's relay, and the move to the standby when a relay dies, drains or stops
//! forwarding (a reconnect, which resumes from the verified chunks as after any broken connection).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;

use super::Sender;
use crate::error::EngineError;
use crate::event::Event;
use crate::relay::route::{Failover, Route};
use crate::relay::{dial_as_sender, udp_addr, PathUpdates, RelayBind, RelayRoute};
use trackshift_proto::SessionId;

/// A sender's relays: the route now and who to ask for a new one.
pub(super) struct Relayed {
    route: Route,
    updates: Option<Arc<dyn PathUpdates>>,
}

/// What dialling gave the control connection.
pub(super) enum Dialled {
    /// No relays: connect to the receiver directly.
    Direct,
    /// Paired with the receiver through the relay.
    Relay(TcpStream),
    /// Not this time; the session was told and retries.
    Retry,
}

impl Relayed {
    pub(super) fn new(route: Option<RelayRoute>) -> Result<Option<Self>, EngineError> {
        let Some(RelayRoute { path, updates }) = route else {
            return Ok(None);
        };
        let route = Route::new(path)
            .ok_or_else(|| EngineError::BadInput("the session's relay path has no relay".into()))?;
        Ok(Some(Self { route, updates }))
    }

    pub(super) fn session_id(&self) -> SessionId {
        self.route.path().session_id
    }

    /// The relay ids that carried part of the session.
    pub(super) fn used(&self) -> Vec<String> {
        self.route.used().to_vec()
    }
}

impl Sender {
    /// Through relays: a connection to the receiver through the control relay. A refusal of the session's
    /// token ends the run; a relay that is down, full or draining is replaced by the standby before the
    /// session's next attempt; a relay where the receiver is not attached yet is simply tried again.
    pub(super) async fn dial_relay(&mut self) -> Result<Dialled, EngineError> {
        let Some(hop) = self.relay.as_ref().map(|r| r.route.control().clone()) else {
            return Ok(Dialled::Direct);
        };
        let e = match dial_as_sender(&hop).await {
            Ok(tcp) => return Ok(Dialled::Relay(tcp)),
            Err(e) => e,
        };
        if e.refused() {
            return Err(EngineError::Failed(e.to_string()));
        }
        let why = e.to_string();
        if e.relay_lost() {
            self.relay_lost(&hop.relay_id, &why).await;
        }
        self.session.connect_failed(Instant::now(), &why);
        Ok(Dialled::Retry)
    }

    /// `relay_id` is lost: the route moves its streams (to the standby, or the other stripes) and the caller's
    /// orchestrator, if any, is asked for a new path. The caller then reconnects.
    pub(super) async fn relay_lost(&mut self, relay_id: &str, why: &str) {
        let session = self.session.session_id();
        let Some(relayed) = self.relay.as_mut() else {
            return;
        };
        let moved = match relayed.route.fail(relay_id) {
            Failover::NotOnPath => return,
            Failover::Standby { to } => format!("to the standby relay {to}"),
            Failover::Narrowed => "to the other stripes".to_owned(),
            Failover::NoSpare => "nowhere (no standby): trying it again".to_owned(),
        };
        if let Some(updates) = relayed.updates.clone() {
            let lost = relay_id.to_owned();
            let asked = tokio::task::spawn_blocking(move || updates.failed(session, &lost)).await;
            if let Ok(Some(path)) = asked {
                relayed.route.adopt(path);
            }
        }
        self.sink.event(&Event::RelayFailover {
            lost: relay_id.to_owned(),
            moved,
            control: relayed.route.control().relay_id.clone(),
            stripes: relayed
                .route
                .path()
                .stripes
                .iter()
                .map(|h| h.relay_id.clone())
                .collect(),
            reason: why.to_owned(),
        });
    }

    /// Where each of `streams` DCSP streams sends: directly, all to `direct`; through relays, stream `s` to
    /// stripe `s mod N`'s relay, where it binds its connection id.
    pub(super) fn stream_targets(
        &self,
        direct: SocketAddr,
        streams: u8,
    ) -> Result<Vec<(SocketAddr, Option<RelayBind>)>, EngineError> {
        let Some(relayed) = self.relay.as_ref() else {
            return Ok(vec![(direct, None); usize::from(streams)]);
        };
        (0..streams)
            .map(|s| {
                let hop = relayed.route.stripe_of(s);
                let addr = udp_addr(hop).map_err(EngineError::Failed)?;
                let bind = RelayBind {
                    relay_id: hop.relay_id.clone(),
                    addr,
                    token: hop.token.clone(),
                };
                Ok((addr, Some(bind)))
            })
            .collect()
    }
}
