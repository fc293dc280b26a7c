//! Which media worker each relay frame and control message goes to.
//!
//! A relay link carries many conferences, each on a channel, and each
//! conference lives on one worker. The task reading a link holds a
//! [`LinkRouter`]: its own map from channel to worker, so routing a
//! datagram is one lookup in a map nobody else touches (no lock). Workers
//! keep it current with [`RouteUpdate`]s as they put conferences on the
//! link or take them off; an `attach` from the peer is routed (and the
//! route set) here, through [`Placement`], before the worker sees it.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::core::ids::{ConfId, ConferenceKey, LinkId};
use crate::wire::{Control, MediaFrame};

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

/// Routes what one link's peer sends to the workers.
pub struct LinkRouter {
    link: LinkId,
    /// This SFT's domain: a peer attaches conferences anchored here.
    domain: String,
    workers: Arc<[mpsc::Sender<Command>]>,
    placement: Arc<Placement>,
    routes: HashMap<u32, usize>,
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
    pub async fn send(self, workers: &Workers) {
        // A stopped worker drops it; the process is on its way out then.
        let _ = workers.0[self.worker].send(self.command).await;
    }
}

impl LinkRouter {
    pub(super) fn new(
        link: LinkId,
        domain: String,
        workers: Arc<[mpsc::Sender<Command>]>,
        placement: Arc<Placement>,
        updates: mpsc::UnboundedReceiver<RouteUpdate>,
    ) -> Self {
        Self { link, domain, workers, placement, routes: HashMap::new(), updates }
    }

    /// Where a relay datagram goes; `None` drops it (an unknown channel,
    /// or too short to name one).
    pub fn datagram(&mut self, datagram: Bytes) -> Option<Delivery> {
        self.apply_updates();
        let worker = *self.routes.get(&MediaFrame::peek_channel(&datagram)?)?;
        Some(self.deliver(worker, Command::RelayDatagram { link: self.link, datagram }))
    }

    /// Where a control message goes: an `attach` to the worker its
    /// conference lives on (placing it if new), the rest to their channel's.
    /// An `attach` that moves a channel to another worker also detaches
    /// the conference the channel carried there.
    pub fn control(&mut self, message: Control) -> Vec<Delivery> {
        self.apply_updates();
        let link = self.link;
        if let Control::Attach { channel, conf_id, .. } = &message {
            let Ok(conf_id) = ConfId::parse(conf_id) else { return Vec::new() };
            let channel = *channel;
            let key = ConferenceKey { anchor_domain: self.domain.clone(), conf_id };
            let worker = self.placement.reserve(&key);
            let mut deliveries = Vec::with_capacity(2);
            if let Some(previous) = self.routes.insert(channel, worker).filter(|w| *w != worker) {
                let detach = Command::RelayControl { link, message: Control::Detach { channel } };
                deliveries.push(self.deliver(previous, detach));
            }
            deliveries.push(self.deliver(worker, Command::RelayAttach { link, key, message }));
            return deliveries;
        }
        let Some(worker) = message.channel().and_then(|channel| self.routes.get(&channel).copied()) else {
            return Vec::new();
        };
        vec![self.deliver(worker, Command::RelayControl { link, message })]
    }

    fn deliver(&self, worker: usize, command: Command) -> Delivery {
        Delivery { worker, command }
    }

    pub fn workers(&self) -> Workers {
        Workers(self.workers.clone())
    }

    fn apply_updates(&mut self) {
        while let Ok(update) = self.updates.try_recv() {
            match update {
                RouteUpdate::Route { channel, worker } => {
                    self.routes.insert(channel, worker);
                }
                // Only the worker the channel is routed to may take the
                // route away: another may have taken the channel over since.
                RouteUpdate::Unroute { channel, worker } => {
                    if self.routes.get(&channel) == Some(&worker) {
                        self.routes.remove(&channel);
                    }
                }
            }
        }
    }
}
