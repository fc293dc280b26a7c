//! Which media worker each relay frame and control message goes to.
//!
//! A relay link carries many conferences, each on a channel, and each
//! conference lives on one worker. The task reading a link holds a
//! [`LinkRouter`]: its own map from channel to worker, so routing a
//! datagram is one lookup in a map nobody else touches (no lock).
//!
//! Who names a channel decides its route, and both sides of a link name
//! some. The peer names those of the conferences it attaches here (anchored
//! here): the router places each attached conference ([`Placement`]) and
//! routes its channel before the worker sees the attach. This SFT's workers
//! name those of the conferences they attach to the peer (a federated
//! conference's number) and tell the router with [`RouteUpdate`]s, before
//! they send the `attach` that makes the peer use the channel. Either way a
//! worker that lets a channel go says so, and the router drops the route
//! only if it still points at that worker. An attach naming one of this
//! SFT's own channels is refused: it would take a conference's route away.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::core::ids::{ConfId, ConferenceKey, LinkId};
use crate::metrics::Rejection;
use crate::wire::{Control, MediaFrame};

use super::links::in_half_of;
use super::placement::Placement;
use super::Command;

/// A worker's word to a link's reader about one of the link's channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteUpdate {
    /// Frames on `channel` go to `worker` from now on.
    Route { channel: u32, worker: usize },
    /// `worker` no longer has a conference on `channel`.
    Unroute { channel: u32, worker: usize },
}

/// The sending half, one clone per worker.
pub type RouteSender = mpsc::UnboundedSender<RouteUpdate>;

/// What every link's router shares.
pub struct RouterConfig {
    /// This SFT's domain: a peer attaches conferences anchored here.
    pub domain: String,
    /// Conferences one link may carry (`federation.max_conferences_per_link`).
    pub max_conferences: usize,
    /// On a `sft-relay/2` link, the peer's domain: its attaches must name
    /// channels in its half of the numbers.
    pub halves_with: Option<String>,
    pub workers: Arc<[mpsc::Sender<Command>]>,
    pub placement: Arc<Placement>,
}

/// Routes what one link's peer sends to the workers.
pub struct LinkRouter {
    link: LinkId,
    config: RouterConfig,
    routes: HashMap<u32, usize>,
    /// The channels this SFT's workers named (the rest the peer attached).
    own: HashSet<u32>,
    updates: mpsc::UnboundedReceiver<RouteUpdate>,
}

/// A command on its way to one worker.
pub struct Delivery {
    worker: usize,
    command: Command,
}

/// The workers' command queues, for [`Delivery::send`]: taken once per
/// link with [`LinkRouter::workers`], so a datagram costs no clone.
#[derive(Clone)]
pub struct Workers(Arc<[mpsc::Sender<Command>]>);

impl Delivery {
    /// Waits for room in the worker's queue (control messages).
    pub async fn send(self, workers: &Workers) {
        // A stopped worker drops it; the process is on its way out then.
        let _ = workers.0[self.worker].send(self.command).await;
    }

    /// Hands it over if the worker's queue has room; `false` if it was
    /// dropped (media: one busy worker must not hold up the link's others).
    pub fn try_send(self, workers: &Workers) -> bool {
        workers.0[self.worker].try_send(self.command).is_ok()
    }
}

/// What a control message from the peer comes to.
pub struct Routing {
    pub deliveries: Vec<Delivery>,
    /// The answer to an `attach` refused here, and why.
    pub refused: Option<(Control, Rejection)>,
}

impl LinkRouter {
    pub(super) fn new(link: LinkId, config: RouterConfig, updates: mpsc::UnboundedReceiver<RouteUpdate>) -> Self {
        Self { link, config, routes: HashMap::new(), own: HashSet::new(), updates }
    }

    pub fn workers(&self) -> Workers {
        Workers(self.config.workers.clone())
    }

    /// Where a relay datagram goes; `None` drops it (an unknown channel,
    /// or too short to name one).
    pub fn datagram(&mut self, datagram: Bytes) -> Option<Delivery> {
        self.apply_updates();
        let worker = *self.routes.get(&MediaFrame::peek_channel(&datagram)?)?;
        Some(Delivery { worker, command: Command::RelayDatagram { link: self.link, datagram } })
    }

    /// Where a control message goes: an `attach` to the worker its
    /// conference lives on (placing it if new), the rest to their channel's.
    pub fn control(&mut self, message: Control) -> Routing {
        self.apply_updates();
        let link = self.link;
        let mut routing = Routing { deliveries: Vec::new(), refused: None };
        if let Control::Attach { channel, conf_id, .. } = &message {
            let Ok(conf_id) = ConfId::parse(conf_id) else { return routing };
            let channel = *channel;
            let attached = self.routes.len() - self.own.len();
            let outside_half =
                self.config.halves_with.as_ref().is_some_and(|peer| !in_half_of(channel, peer, &self.config.domain));
            let refusal = if outside_half || self.own.contains(&channel) {
                Some(Rejection::ChannelInUse)
            } else if !self.routes.contains_key(&channel) && attached >= self.config.max_conferences {
                Some(Rejection::ConferenceCapacity)
            } else {
                None
            };
            if let Some(rejection) = refusal {
                routing.refused = Some((Control::Refused { channel, reason: rejection.label().into() }, rejection));
                return routing;
            }
            let key = ConferenceKey { anchor_domain: self.config.domain.clone(), conf_id };
            let reservation = self.config.placement.reserve(&key);
            let worker = reservation.worker();
            // Whichever worker had this channel (a peer that restarted
            // numbers its channels afresh) lets it go; a new connection's
            // router does not know which one that was, so it asks them all.
            let previous: Vec<usize> = match self.routes.insert(channel, worker) {
                Some(previous) => vec![previous],
                None => (0..self.config.workers.len()).collect(),
            };
            for other in previous.into_iter().filter(|w| *w != worker) {
                let detach = Command::RelayControl { link, message: Control::Detach { channel } };
                routing.deliveries.push(Delivery { worker: other, command: detach });
            }
            let attach = Command::RelayAttach { link, channel, key, reservation };
            routing.deliveries.push(Delivery { worker, command: attach });
            return routing;
        }
        if let Some(worker) = message.channel().and_then(|channel| self.routes.get(&channel).copied()) {
            routing.deliveries.push(Delivery { worker, command: Command::RelayControl { link, message } });
        }
        routing
    }

    /// How many channels the link carries, both sides' conferences.
    pub fn carried(&self) -> usize {
        self.routes.len()
    }

    /// Waits for a worker's route change and applies it (and any queued
    /// behind it). Cancel-safe.
    pub async fn next_update(&mut self) {
        match self.updates.recv().await {
            Some(update) => self.apply(update),
            // Every worker's sender is gone: the process is ending.
            None => std::future::pending().await,
        }
        self.apply_updates();
    }

    fn apply_updates(&mut self) {
        while let Ok(update) = self.updates.try_recv() {
            self.apply(update);
        }
    }

    fn apply(&mut self, update: RouteUpdate) {
        match update {
            RouteUpdate::Route { channel, worker } => {
                self.routes.insert(channel, worker);
                self.own.insert(channel);
            }
            // Only the worker the channel is routed to may take the
            // route away: another may have taken the channel over since.
            RouteUpdate::Unroute { channel, worker } => {
                if self.routes.get(&channel) == Some(&worker) {
                    self.routes.remove(&channel);
                    self.own.remove(&channel);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(workers: usize, max_conferences: usize) -> (LinkRouter, mpsc::UnboundedSender<RouteUpdate>) {
        let senders: Vec<mpsc::Sender<Command>> = (0..workers).map(|_| mpsc::channel(8).0).collect();
        let (updates_tx, updates) = mpsc::unbounded_channel();
        let config = RouterConfig {
            domain: "a.example".into(),
            max_conferences,
            halves_with: None,
            workers: senders.into(),
            placement: Arc::new(Placement::new(workers)),
        };
        (LinkRouter::new(LinkId(1), config, updates), updates_tx)
    }

    fn attach(channel: u32, conf: &str) -> Control {
        Control::Attach { channel, conf_id: conf.into(), relay_token: String::new() }
    }

    /// (worker, what) for each delivery: "attach", "detach" or "other".
    fn summary(routing: &Routing) -> Vec<(usize, &'static str)> {
        let what = |command: &Command| match command {
            Command::RelayAttach { .. } => "attach",
            Command::RelayControl { message: Control::Detach { .. }, .. } => "detach",
            _ => "other",
        };
        routing.deliveries.iter().map(|d| (d.worker, what(&d.command))).collect()
    }

    fn frame(channel: u32) -> Bytes {
        let mut datagram = vec![0x01, 0];
        datagram.extend_from_slice(&channel.to_be_bytes());
        Bytes::from(datagram)
    }

    fn datagram_worker(router: &mut LinkRouter, channel: u32) -> Option<usize> {
        router.datagram(frame(channel)).map(|d| d.worker)
    }

    #[test]
    fn attaches_place_conferences_and_route_their_channels() {
        let (mut router, _updates) = router(2, usize::MAX);
        let first = router.control(attach(5, "x"));
        // A channel new to this connection: any other worker that had it lets go.
        assert_eq!(summary(&first), vec![(1, "detach"), (0, "attach")]);
        let second = router.control(attach(6, "y"));
        assert_eq!(summary(&second), vec![(0, "detach"), (1, "attach")], "the idle worker takes the new conference");
        assert_eq!(datagram_worker(&mut router, 5), Some(0));
        assert_eq!(datagram_worker(&mut router, 6), Some(1));
        assert_eq!(datagram_worker(&mut router, 7), None, "an unknown channel is dropped");
        let roster = Control::Roster { channel: 6, participants: Vec::new() };
        assert_eq!(summary(&router.control(roster)), vec![(1, "other")]);
    }

    #[test]
    fn a_channel_reused_for_a_conference_on_another_worker_detaches_the_old_one() {
        let (mut router, _updates) = router(2, usize::MAX);
        let _x = router.control(attach(5, "x"));
        let _y = router.control(attach(6, "y"));
        // The peer restarted and now names channel 5 for conference y.
        let moved = router.control(attach(5, "y"));
        assert_eq!(summary(&moved), vec![(0, "detach"), (1, "attach")]);
        assert_eq!(datagram_worker(&mut router, 5), Some(1));
    }

    #[test]
    fn only_the_worker_a_channel_is_routed_to_can_take_the_route_away() {
        let (mut router, updates) = router(2, usize::MAX);
        updates.send(RouteUpdate::Route { channel: 9, worker: 1 }).unwrap();
        assert_eq!(datagram_worker(&mut router, 9), Some(1));
        updates.send(RouteUpdate::Unroute { channel: 9, worker: 0 }).unwrap();
        assert_eq!(datagram_worker(&mut router, 9), Some(1), "worker 0 no longer owns it");
        updates.send(RouteUpdate::Unroute { channel: 9, worker: 1 }).unwrap();
        assert_eq!(datagram_worker(&mut router, 9), None);
    }

    #[test]
    fn on_a_version_2_link_an_attach_outside_the_peers_half_is_refused() {
        let (mut router, _updates) = router(1, usize::MAX);
        router.config.halves_with = Some("b.example".into());
        // b.example sorts after a.example: its channels have bit 31 set.
        let refused = router.control(attach(7, "x"));
        assert!(matches!(refused.refused, Some((Control::Refused { channel: 7, .. }, Rejection::ChannelInUse))));
        assert!(router.control(attach(7 | 1 << 31, "x")).refused.is_none());
    }

    #[test]
    fn an_attach_naming_a_channel_of_this_sfts_own_is_refused() {
        let (mut router, updates) = router(2, usize::MAX);
        updates.send(RouteUpdate::Route { channel: 7, worker: 1 }).unwrap();
        let refused = router.control(attach(7, "x"));
        assert!(refused.deliveries.is_empty(), "the worker with conference 7 keeps it");
        assert!(matches!(refused.refused, Some((Control::Refused { channel: 7, .. }, Rejection::ChannelInUse))));
        assert_eq!(datagram_worker(&mut router, 7), Some(1));
        // Once that conference let its channel go, the peer may name it.
        updates.send(RouteUpdate::Unroute { channel: 7, worker: 1 }).unwrap();
        assert!(router.control(attach(7, "x")).refused.is_none());
    }

    #[test]
    fn attaches_beyond_the_links_conference_cap_are_refused_across_workers() {
        let (mut router, updates) = router(2, 1);
        // This SFT's own conferences on the link do not count against the peer's cap.
        updates.send(RouteUpdate::Route { channel: 1 << 31, worker: 1 }).unwrap();
        updates.send(RouteUpdate::Route { channel: (1 << 31) + 1, worker: 0 }).unwrap();
        let x = router.control(attach(1, "x"));
        assert!(x.refused.is_none());
        let refused = router.control(attach(2, "y"));
        assert!(refused.deliveries.is_empty());
        assert!(matches!(refused.refused, Some((Control::Refused { channel: 2, .. }, Rejection::ConferenceCapacity))));
        let again = router.control(attach(1, "x"));
        assert!(again.refused.is_none(), "a re-attach adds nothing to the count");

        assert!(router.control(attach(3, "bad id with spaces")).deliveries.is_empty());
    }
}
