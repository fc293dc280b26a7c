//! The shell around a relay link's [`LinkMachine`]: the keeper of a link
//! this SFT needs to an anchor dials it (or rides the connection the peer
//! dialled), watches it, asks the anchor again for conferences it refuses,
//! and gives the link up when the machine says so. It moves bytes and
//! reads the clock; the machine decides.
#![allow(clippy::disallowed_methods)] // the shell reads the clock for the machine

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{relay, Federation, FederationError, Rejection, BAD_TOKEN_REASON};
use crate::core::ids::LinkId;
use crate::core::link::{GiveUpReason, LinkAction, LinkMachine, Refused, SILENCE_LIMIT};
use crate::edge::{LinkLease, LinkUsers, Refusal};

/// How often a keeper checks that its link still brings packets and is
/// still used.
const LINK_CHECK: Duration = Duration::from_millis(250);

/// A link to an anchor, kept by one keeper, and the conferences using it.
pub(super) struct Outbound {
    pub link: LinkId,
    pub users: LinkUsers,
}

/// What a rejoin's `join` answered: a fresh token, or why not.
type Rejoined = (u32, Result<String, FederationError>);

impl Federation {
    /// A lease on the link to `domain`, which a keeper dials first if there
    /// is none. Concurrent first joins wait for the first dial and share its
    /// link. Run it in a task of its own: a SETUP given up half-way must not
    /// leave a keeper that nobody knows of.
    pub(super) async fn lease_link(
        self: Arc<Self>,
        domain: String,
        relay: String,
    ) -> Result<(LinkId, LinkLease), FederationError> {
        let dial_lock = self.dial_locks.lock().expect("links lock").entry(domain.clone()).or_default().clone();
        let _dialling = dial_lock.lock().await;
        // Under the map's lock: a keeper gives its link up under the same
        // lock, and only with no lease held.
        if let Some(existing) =
            self.outbound.lock().expect("links lock").get(&domain).map(|o| (o.link, o.users.lease()))
        {
            return Ok(existing);
        }
        let link = self.link_id(&domain, true);
        let (users, refusals) = LinkUsers::new();
        let (first, dialled) = oneshot::channel();
        let (rejoined, answers) = mpsc::unbounded_channel();
        let keeper = Keeper {
            machine: LinkMachine::new(self.link_linger),
            federation: self.clone(),
            link,
            domain: domain.clone(),
            relay: relay.clone(),
            users,
            held: None,
            first: Some(first),
            refused: HashMap::new(),
            rejoined,
            heard: 0,
        };
        tokio::spawn(keeper.run(refusals, answers));
        match dialled.await {
            Ok(Ok(lease)) => Ok((link, lease)),
            Ok(Err(why)) => Err(FederationError::Unreachable(why)),
            Err(_) => {
                Err(FederationError::Unreachable(format!("relay of {domain} at {relay}: the dial was abandoned")))
            }
        }
    }
}

/// The connection a keeper holds, and what tells it the connection ended.
struct Held {
    connection: quinn::Connection,
    ended: JoinHandle<()>,
    /// The peer dialled it (it anchors conferences here): not ours to close
    /// when this side no longer needs the link.
    borrowed: bool,
}

struct Keeper {
    federation: Arc<Federation>,
    link: LinkId,
    domain: String,
    /// The anchor's relay address, from the `join` that made the link.
    relay: String,
    users: LinkUsers,
    machine: LinkMachine,
    held: Option<Held>,
    /// The SETUP waiting for the first dial: it gets the first lease.
    first: Option<oneshot::Sender<Result<LinkLease, String>>>,
    /// The refusal behind each channel the machine may rejoin.
    refused: HashMap<u32, Refusal>,
    rejoined: mpsc::UnboundedSender<Rejoined>,
    /// The connection's received-datagram count at the last check.
    heard: u64,
}

impl Keeper {
    async fn run(
        mut self,
        mut refusals: mpsc::UnboundedReceiver<Refusal>,
        mut answers: mpsc::UnboundedReceiver<Rejoined>,
    ) {
        let mut ticks = tokio::time::interval(LINK_CHECK);
        loop {
            while let Some(action) = self.machine.poll_action() {
                if let LinkAction::GiveUp(reason) = action {
                    return self.give_up(reason);
                }
                self.act(action).await;
            }
            // Only now: an `Abandon` just handled needed its refusal.
            self.refused.retain(|channel, _| self.machine.is_rejoining(*channel));
            let wake = self.machine.poll_timeout();
            let ended = async {
                match self.held.as_mut() {
                    Some(held) => {
                        let _ = (&mut held.ended).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = ended => {
                    self.held = None;
                    self.machine.handle_closed(Instant::now());
                }
                Some(refusal) = refusals.recv() => {
                    let (channel, kind) = (refusal.channel, refusal_kind(&refusal.reason));
                    self.refused.insert(channel, refusal);
                    self.machine.handle_refused(Instant::now(), channel, kind);
                }
                Some((channel, answer)) = answers.recv() => self.rejoined(channel, answer).await,
                _ = ticks.tick() => {}
                () = sleep_until(wake) => {}
            }
            self.observe(Instant::now());
        }
    }

    /// Tells the machine what the connection and the users did since the
    /// last look, and lets time pass for it.
    fn observe(&mut self, now: Instant) {
        if let Some(held) = &self.held {
            let received = held.connection.stats().udp_rx.datagrams;
            if received != self.heard {
                self.heard = received;
                self.machine.handle_heard(now);
            }
        }
        // Under the map's lock, so that no SETUP takes a lease on a link
        // being given up (`lease_link` leases under the same lock).
        let mut outbound = self.federation.outbound.lock().expect("links lock");
        let in_use = self.users.count() > 0 || self.federation.carried(self.link) > 0;
        self.machine.handle_in_use(now, in_use);
        self.machine.handle_timeout(now, self.federation.allows(&self.domain));
        if self.machine.gave_up() && outbound.get(&self.domain).is_some_and(|o| o.users.same(&self.users)) {
            outbound.remove(&self.domain);
        }
    }

    async fn act(&mut self, action: LinkAction) {
        let (domain, link) = (&self.domain, self.link);
        match action {
            LinkAction::Dial { timeout } => match self.federation.borrowable(domain) {
                Some(connection) => {
                    tracing::info!(peer = %domain, %link, "relay link rides the connection the peer dialled");
                    let watched = connection.clone();
                    let ended = tokio::spawn(async move {
                        watched.closed().await;
                    });
                    self.up(Held { connection, ended, borrowed: true });
                }
                None => self.dial(timeout).await,
            },
            LinkAction::Close => {
                if let Some(held) = &self.held {
                    tracing::info!(peer = %domain, %link, "relay link silent for {SILENCE_LIMIT:?}: dialling anew");
                    held.connection.close(0u32.into(), b"silent");
                }
            }
            LinkAction::Rejoin { channel } => {
                let Some(refusal) = self.refused.get(&channel) else { return };
                tracing::info!(peer = %domain, channel, conf = refusal.conf_id, "asking the anchor again for the conference");
                let (federation, answers) = (self.federation.clone(), self.rejoined.clone());
                let (anchor, conf_id) = (domain.clone(), refusal.conf_id.clone());
                tokio::spawn(async move {
                    let answer = federation.join(&anchor, &conf_id).await.map(|answer| answer.relay_token);
                    let _ = answers.send((channel, answer));
                });
            }
            LinkAction::Abandon { channel } => {
                if let Some(refusal) = self.refused.remove(&channel) {
                    self.federation.edge.abandon(refusal.worker, link, channel).await;
                }
            }
            LinkAction::GiveUp(_) => unreachable!("handled by run"),
        }
    }

    async fn dial(&mut self, timeout: Duration) {
        let federation = &self.federation;
        if !federation.has_live_connection(&self.domain) {
            federation.metrics.link_state(&self.domain, "connecting");
        }
        let credentials = federation.credentials.current();
        let dial = relay::dial(&federation.endpoint, &credentials.trust, &self.domain, &self.relay);
        let dialled = tokio::time::timeout(timeout, dial)
            .await
            .unwrap_or_else(|_| Err(format!("relay {}: no answer within {timeout:?}", self.relay)));
        drop(credentials);
        match dialled {
            Ok((connection, send, recv)) => {
                let run = relay::run_link(
                    federation.clone(),
                    self.link,
                    self.domain.clone(),
                    connection.clone(),
                    send,
                    recv,
                    false,
                );
                self.up(Held { connection, ended: tokio::spawn(run), borrowed: false });
            }
            Err(why) => {
                if self.first.is_none() {
                    let failures = self.machine.failures() + 1;
                    tracing::info!(peer = %self.domain, failures, "relay redial failed: {why}");
                }
                self.machine.handle_dialled(Instant::now(), Err(why));
            }
        }
    }

    /// The link is up on `held`; the first time, the SETUP that asked gets
    /// its lease, and the link is there for every later one.
    fn up(&mut self, held: Held) {
        self.machine.handle_dialled(Instant::now(), Ok(()));
        self.heard = held.connection.stats().udp_rx.datagrams;
        self.held = Some(held);
        if let Some(first) = self.first.take() {
            let lease = {
                let mut outbound = self.federation.outbound.lock().expect("links lock");
                outbound.insert(self.domain.clone(), Outbound { link: self.link, users: self.users.clone() });
                self.users.lease()
            };
            // A SETUP gone meanwhile drops the lease: the link then lingers unused.
            let _ = first.send(Ok(lease));
        }
    }

    async fn rejoined(&mut self, channel: u32, answer: Result<String, FederationError>) {
        match (answer, self.refused.get(&channel)) {
            (Ok(token), Some(refusal)) => {
                self.federation.edge.reattach(refusal.worker, self.link, channel, token).await
            }
            (Err(why), _) => {
                tracing::info!(peer = %self.domain, channel, "asking the anchor again failed: {why}");
                self.machine.handle_refused(Instant::now(), channel, Refused::Token);
            }
            (Ok(_), None) => {}
        }
    }

    fn give_up(self, reason: GiveUpReason) {
        let (domain, link) = (&self.domain, self.link);
        match reason {
            GiveUpReason::FirstDialFailed(why) => {
                if let Some(first) = self.first {
                    let _ = first.send(Err(why));
                }
            }
            // Its conferences lose the link; a later SETUP dials anew.
            GiveUpReason::Disallowed => {
                tracing::info!(peer = %domain, "not redialling: the domain is no longer allowed")
            }
            GiveUpReason::Unneeded => {
                tracing::info!(peer = %domain, %link, "relay link given up: no conference uses it")
            }
        }
        match self.held {
            // The peer's connection stays for its own conferences; only
            // the watch on it ends.
            Some(held) if held.borrowed => held.ended.abort(),
            Some(held) => held.connection.close(0u32.into(), b"link given up"),
            None => {}
        }
        if !self.federation.has_live_connection(domain) {
            self.federation.metrics.link_state(domain, "down");
        }
    }
}

/// What a `refused` message's reason comes to.
fn refusal_kind(reason: &str) -> Refused {
    if reason == BAD_TOKEN_REASON || reason == Rejection::BadToken.label() {
        Refused::Token
    } else {
        Refused::Final
    }
}

/// Sleeps until `wake`, or for ever without one.
async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
