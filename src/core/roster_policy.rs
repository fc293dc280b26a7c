//! What a relay peer may announce: a peer is trusted for its own domain
//! only, and no roster makes a conference larger than its limit.

use super::conference::RosterEntry;

/// Whose participants a relay link may announce in a conference.
#[derive(Debug, Clone, Copy)]
pub enum RosterSource<'a> {
    /// A federated SFT that attached the conference here: only participants
    /// of its own domain (the domain its certificate is for).
    FederatedPeer { domain: &'a str },
    /// The conference's anchor: its own participants and those of the other
    /// SFTs it relays, but never this SFT's domain, whose participants only
    /// this SFT announces.
    Anchor { own_domain: &'a str },
}

impl RosterSource<'_> {
    fn may_announce(self, domain: &str) -> bool {
        match self {
            Self::FederatedPeer { domain: peer } => domain.eq_ignore_ascii_case(peer),
            Self::Anchor { own_domain } => !domain.eq_ignore_ascii_case(own_domain),
        }
    }
}

/// A roster after the checks, with what they dropped.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AdmittedRoster {
    pub entries: Vec<RosterEntry>,
    /// Entries of a domain the source may not announce.
    pub foreign: usize,
    /// Entries beyond the room the conference has left.
    pub over_capacity: usize,
}

/// Keeps the entries `source` may announce, the first `room` of them (the
/// conference's size limit minus the participants not behind this link),
/// and the first of any repeated id.
pub fn admit(entries: Vec<RosterEntry>, source: RosterSource<'_>, room: usize) -> AdmittedRoster {
    let mut admitted = AdmittedRoster::default();
    for entry in entries {
        if !source.may_announce(&entry.identity.domain) {
            admitted.foreign += 1;
        } else if admitted.entries.iter().any(|e| e.id == entry.id) {
            continue;
        } else if admitted.entries.len() >= room {
            admitted.over_capacity += 1;
        } else {
            admitted.entries.push(entry);
        }
    }
    admitted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ids::Identity;

    fn entry(id: u64, domain: &str) -> RosterEntry {
        RosterEntry {
            id,
            identity: Identity { userid: format!("u{id}"), clientid: "c".into(), domain: domain.into() },
            audio: true,
            layers: Vec::new(),
        }
    }

    fn ids(admitted: &AdmittedRoster) -> Vec<u64> {
        admitted.entries.iter().map(|e| e.id).collect()
    }

    #[test]
    fn a_federated_peer_announces_only_its_own_domain() {
        let source = RosterSource::FederatedPeer { domain: "b.example" };
        let roster = vec![entry(1, "b.example"), entry(2, "a.example"), entry(3, "B.Example"), entry(4, "c.example")];
        let admitted = admit(roster, source, 100);
        assert_eq!(ids(&admitted), vec![1, 3]);
        assert_eq!((admitted.foreign, admitted.over_capacity), (2, 0));
    }

    #[test]
    fn an_anchor_announces_anyone_but_our_own_domain() {
        let source = RosterSource::Anchor { own_domain: "b.example" };
        let roster = vec![entry(1, "a.example"), entry(2, "b.example"), entry(3, "c.example")];
        let admitted = admit(roster, source, 100);
        assert_eq!(ids(&admitted), vec![1, 3]);
        assert_eq!(admitted.foreign, 1);
    }

    #[test]
    fn a_roster_fills_only_the_room_left() {
        let source = RosterSource::FederatedPeer { domain: "b.example" };
        let roster: Vec<RosterEntry> = (0..10_000).map(|id| entry(id, "b.example")).collect();
        let admitted = admit(roster, source, 3);
        assert_eq!(ids(&admitted), vec![0, 1, 2]);
        assert_eq!(admitted.over_capacity, 9_997);
        assert_eq!(admit(vec![entry(1, "b.example")], source, 0).over_capacity, 1);
    }

    #[test]
    fn a_repeated_id_keeps_its_first_entry() {
        let source = RosterSource::FederatedPeer { domain: "b.example" };
        let admitted = admit(vec![entry(1, "b.example"), entry(1, "b.example"), entry(2, "b.example")], source, 2);
        assert_eq!(ids(&admitted), vec![1, 2]);
        assert_eq!(admitted.over_capacity, 0);
    }
}
