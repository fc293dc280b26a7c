//! The relay connections with each peer domain: which one carries the
//! domain's link, which link id each gets, and what the link-state gauge
//! says about the domain.
//!
//! Peers that speak `sft-relay/2` keep one connection per pair of SFTs,
//! whichever side dialled it, and attach conferences both ways on it. A
//! `sft-relay/1` peer attaches only on connections it dialled and takes no
//! attach on them, so its connection is a link of its own and this SFT
//! dials its own to it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::Federation;
use crate::core::ids::LinkId;
use crate::core::link::takes_over;
use crate::wire::RelayVersion;

/// The connection carrying a peer domain's link.
pub(super) struct LiveConnection {
    connection: quinn::Connection,
    dialled_here: bool,
}

impl Federation {
    /// The link of `domain`: one for every `sft-relay/2` connection with it
    /// and those this SFT dials (`shared`), another for the connections a
    /// `sft-relay/1` peer dials.
    pub(crate) fn link_id(&self, domain: &str, shared: bool) -> LinkId {
        let mut ids = self.link_ids.lock().expect("links lock");
        let next = || LinkId(self.next_link.fetch_add(1, Ordering::Relaxed));
        *ids.entry((domain.to_owned(), shared)).or_insert_with(next)
    }

    /// The counter `connection`'s reader keeps of the channels it carries
    /// on `link`: from now on, the link's count.
    pub(crate) fn count_channels(&self, link: LinkId, connection: &quinn::Connection) -> Arc<AtomicUsize> {
        let counter = Arc::new(AtomicUsize::new(0));
        self.carried.lock().expect("links lock").insert(link, (connection.stable_id(), counter.clone()));
        counter
    }

    /// `connection` no longer carries `link` (unless a newer one took over).
    pub(crate) fn stop_counting(&self, link: LinkId, connection: &quinn::Connection) {
        let mut carried = self.carried.lock().expect("links lock");
        if carried.get(&link).is_some_and(|(id, _)| *id == connection.stable_id()) {
            carried.remove(&link);
        }
    }

    /// How many channels `link` carries now, both sides' conferences (none
    /// without a connection).
    pub(crate) fn carried(&self, link: LinkId) -> usize {
        let carried = self.carried.lock().expect("links lock");
        carried.get(&link).map_or(0, |(_, counter)| counter.load(Ordering::Acquire))
    }

    /// Whether a new connection with `domain` (`dialled_here` or accepted)
    /// may carry its link, as [`takes_over`] decides among `sft-relay/2`
    /// connections; a `sft-relay/1` one always may.
    pub(crate) fn admit_connection(
        &self,
        domain: &str,
        connection: &quinn::Connection,
        dialled_here: bool,
        version: RelayVersion,
    ) -> bool {
        if version == RelayVersion::V1 {
            return true;
        }
        let mut live = self.live.lock().expect("links lock");
        let current = live.get(domain).filter(|l| l.connection.close_reason().is_none()).map(|l| l.dialled_here);
        if !takes_over(current, dialled_here, &self.domain, domain) {
            return false;
        }
        live.insert(domain.to_owned(), LiveConnection { connection: connection.clone(), dialled_here });
        true
    }

    /// `connection` no longer carries `domain`'s link.
    pub(crate) fn connection_ended(&self, domain: &str, connection: &quinn::Connection) {
        let mut live = self.live.lock().expect("links lock");
        if live.get(domain).is_some_and(|l| l.connection.stable_id() == connection.stable_id()) {
            live.remove(domain);
        }
    }

    /// The live `sft-relay/2` connection the peer dialled, if `domain`'s
    /// link runs on one: a link this SFT needs rides it.
    pub(super) fn borrowable(&self, domain: &str) -> Option<quinn::Connection> {
        let live = self.live.lock().expect("links lock");
        let peers = live.get(domain).filter(|l| !l.dialled_here && l.connection.close_reason().is_none());
        peers.map(|l| l.connection.clone())
    }

    /// Whether any relay connection with `domain` is open.
    pub(crate) fn has_live_connection(&self, domain: &str) -> bool {
        let connections = self.connections.lock().expect("links lock");
        connections.values().any(|(d, c)| d == domain && c.close_reason().is_none())
    }
}
