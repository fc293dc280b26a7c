//! Which session a datagram is for, by the address it came from, and for
//! an address not seen before, by the ufrag its STUN request names.
//!
//! Both lookups are one hash probe, so a flood from unknown addresses
//! costs the same with one session or ten thousand. The state is bounded:
//! one ufrag per session, and at most [`MAX_ADDRESSES_PER_SESSION`]
//! addresses per session (a session that gets a new one forgets its
//! oldest but the one it last heard from, the path media takes), so a peer
//! that passes a session's ICE checks cannot grow the table without end.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::core::ids::ParticipantId;

use super::stun;

/// Addresses one session is reached at: ICE checks from a few candidate
/// pairs, and a NAT rebinding now and then.
pub const MAX_ADDRESSES_PER_SESSION: usize = 8;

#[derive(Debug, Default)]
pub struct Sources {
    by_addr: HashMap<SocketAddr, ParticipantId>,
    by_ufrag: HashMap<String, ParticipantId>,
}

impl Sources {
    /// The session datagrams from `source` belong to, if it is known.
    pub fn known(&self, source: &SocketAddr) -> Option<ParticipantId> {
        self.by_addr.get(source).copied()
    }

    /// The session a datagram from a new address asks for: the one whose
    /// ufrag its STUN Binding request names. The session still checks the
    /// request itself before the address is learnt.
    pub fn claimed(&self, datagram: &[u8]) -> Option<ParticipantId> {
        self.by_ufrag.get(stun::requested_ufrag(datagram)?).copied()
    }

    /// Routes `source` to `id` from now on. `addresses` are the session's
    /// own, oldest first; past the limit the oldest is forgotten, except
    /// `in_use` (where the session's datagrams last came from).
    pub fn learn(
        &mut self,
        source: SocketAddr,
        id: ParticipantId,
        addresses: &mut Vec<SocketAddr>,
        in_use: Option<SocketAddr>,
    ) {
        if addresses.contains(&source) {
            return;
        }
        if addresses.len() >= MAX_ADDRESSES_PER_SESSION {
            let oldest = addresses.iter().position(|a| Some(*a) != in_use).unwrap_or(0);
            self.by_addr.remove(&addresses.remove(oldest));
        }
        addresses.push(source);
        self.by_addr.insert(source, id);
    }

    pub fn add_session(&mut self, ufrag: String, id: ParticipantId) {
        self.by_ufrag.insert(ufrag, id);
    }

    pub fn remove_session(&mut self, ufrag: &str, addresses: &[SocketAddr]) {
        self.by_ufrag.remove(ufrag);
        for address in addresses {
            self.by_addr.remove(address);
        }
    }

    /// Entries held: (addresses, ufrags).
    #[cfg(test)]
    fn entries(&self) -> (usize, usize) {
        (self.by_addr.len(), self.by_ufrag.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_keeps_only_its_newest_addresses() {
        let mut sources = Sources::default();
        let id = ParticipantId(1);
        sources.add_session("u".into(), id);
        let mut addresses = Vec::new();
        let media_path = SocketAddr::from(([127, 0, 0, 1], 1000));
        for port in 1000..1100 {
            sources.learn(SocketAddr::from(([127, 0, 0, 1], port)), id, &mut addresses, Some(media_path));
        }
        assert_eq!(sources.entries(), (MAX_ADDRESSES_PER_SESSION, 1));
        assert_eq!(sources.known(&SocketAddr::from(([127, 0, 0, 1], 1099))), Some(id));
        assert_eq!(sources.known(&SocketAddr::from(([127, 0, 0, 1], 1001))), None, "the oldest is forgotten");
        assert_eq!(sources.known(&media_path), Some(id), "but not the one in use");
        sources.remove_session("u", &addresses);
        assert_eq!(sources.entries(), (0, 0));
    }
}
