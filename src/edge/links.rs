//! The edge's view of relay links: which conference travels on which link
//! under which channel number, and the glue between relay frames and the
//! packets the driver routes; and the hold a federated conference keeps on
//! the link to its anchor ([`LinkLease`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use prometheus::IntCounter;
use tokio::sync::mpsc;

use crate::core::ids::LinkId;
use crate::wire::{Control, MediaFrame, RelayCodec};

use super::relay_routes::RouteSender;

/// The federated conferences using one relay link to an anchor, and the way
/// their refusals get back to the link's keeper (`federation/keeper.rs`),
/// which gives the link up once no conference has used it for a while and
/// asks the anchor again for a conference it refused.
#[derive(Clone)]
pub struct LinkUsers {
    count: Arc<AtomicUsize>,
    refusals: mpsc::UnboundedSender<Refusal>,
}

impl LinkUsers {
    /// The users of a new link, and where their refusals arrive.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Refusal>) {
        let (refusals, arrive) = mpsc::unbounded_channel();
        (Self { count: Arc::new(AtomicUsize::new(0)), refusals }, arrive)
    }

    /// One more conference uses the link until the lease is dropped.
    pub fn lease(&self) -> LinkLease {
        self.count.fetch_add(1, Ordering::AcqRel);
        LinkLease { users: self.clone() }
    }

    /// Whether `other` counts the same link's users.
    pub fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.count, &other.count)
    }

    /// How many leases are held now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }
}

/// A federated conference's hold on the relay link to its anchor: the
/// worker keeps it with the conference's attachment.
pub struct LinkLease {
    users: LinkUsers,
}

impl LinkLease {
    /// The anchor refused the attach: tell the link's keeper.
    pub fn refused(&self, refusal: Refusal) {
        // The keeper has stopped only if the link was given up: nothing to do then.
        let _ = self.users.refusals.send(refusal);
    }
}

impl Drop for LinkLease {
    fn drop(&mut self) {
        self.users.count.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for LinkLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkLease").field("users", &self.users.count()).finish()
    }
}

/// An anchor's `refused` for a conference this SFT attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The worker the conference lives on.
    pub worker: usize,
    pub channel: u32,
    pub conf_id: String,
    pub reason: String,
}

/// How a federated conference attaches, kept by its worker so it can attach
/// again when the link comes back or a fresh token arrives.
#[derive(Debug)]
pub struct Attachment {
    pub conf_id: String,
    pub token: String,
    pub lease: LinkLease,
}

impl Attachment {
    /// The `attach` message for `channel`.
    pub fn attach(&self, channel: u32) -> Control {
        Control::Attach { channel, conf_id: self.conf_id.clone(), relay_token: self.token.clone() }
    }
}

/// How much the relay send arena takes at a time: some 50 video frames.
const RELAY_ARENA_BYTES: usize = 64 * 1024;

pub struct Link {
    pub peer_domain: String,
    /// `None` while the link is down.
    pub connection: Option<quinn::Connection>,
    pub control: Option<mpsc::Sender<Control>>,
    /// Tells the link's reader which channels this worker carries.
    pub routes: Option<RouteSender>,
    pub bytes_out: IntCounter,
}

impl Link {
    pub fn send_control(&self, message: Control) {
        if let Some(control) = &self.control {
            if control.try_send(message).is_err() {
                tracing::warn!(peer = %self.peer_domain, "relay control queue full; message dropped");
            }
        }
    }

    /// Encodes and sends one media frame; a down or congested link drops it.
    ///
    /// Frames are encoded into `arena` and split off it: quinn keeps each
    /// datagram (as `Bytes`) until it is sent, and once all of an arena's
    /// datagrams are gone, `reserve` takes the same memory back, so a
    /// frame costs one copy and no allocation of its own.
    pub fn send_media(&self, frame: &MediaFrame<'_>, arena: &mut BytesMut) {
        let Some(connection) = &self.connection else { return };
        if arena.capacity() < frame.encoded_len() {
            arena.reserve(frame.encoded_len().max(RELAY_ARENA_BYTES));
        }
        frame.encode(arena);
        let datagram = arena.split().freeze();
        let len = datagram.len() as u64;
        if connection.send_datagram(datagram).is_ok() {
            self.bytes_out.inc_by(len);
        }
    }
}

/// The channel a federated conference is attached as, on the link to its
/// anchor: its number, in this SFT's half of the channel numbers. Both
/// SFTs of a link attach conferences on it (each those the other anchors),
/// so the one whose domain sorts first names channels below 2^31 and the
/// other from 2^31 up. Truncation on purpose: a channel must only be
/// unique among the conferences live on one link.
pub fn channel_of(number: u64, own_domain: &str, anchor_domain: &str) -> u32 {
    let half = if own_domain < anchor_domain { 0 } else { 1 << 31 };
    (number as u32 & !(1 << 31)) | half
}

/// Whether `channel` lies in the half of the channel numbers that the SFT
/// of domain `namer` names on its link with `other` (see [`channel_of`]).
pub fn in_half_of(channel: u32, namer: &str, other: &str) -> bool {
    (channel >> 31 == 1) == (namer > other)
}

/// Which conference (driver number) each (link, channel) carries, and back.
#[derive(Default)]
pub struct Channels {
    by_channel: HashMap<(LinkId, u32), u64>,
    by_conference: HashMap<(u64, LinkId), u32>,
}

impl Channels {
    /// Maps `(link, channel)` to `conference`, replacing whatever either
    /// side was mapped to: a peer that restarted numbers its channels
    /// afresh, so its channel may now carry another conference. Returns the
    /// conference that lost its channel on `link`, if any.
    pub fn insert(&mut self, link: LinkId, channel: u32, conference: u64) -> Option<u64> {
        if let Some(old_channel) = self.by_conference.insert((conference, link), channel) {
            if old_channel != channel {
                self.by_channel.remove(&(link, old_channel));
            }
        }
        let displaced = self.by_channel.insert((link, channel), conference).filter(|old| *old != conference);
        if let Some(old) = displaced {
            self.by_conference.remove(&(old, link));
        }
        displaced
    }

    pub fn conference(&self, link: LinkId, channel: u32) -> Option<u64> {
        self.by_channel.get(&(link, channel)).copied()
    }

    pub fn channel(&self, conference: u64, link: LinkId) -> Option<u32> {
        self.by_conference.get(&(conference, link)).copied()
    }

    /// The (conference, channel) pairs a link carries.
    pub fn on_link(&self, link: LinkId) -> Vec<(u64, u32)> {
        self.by_channel.iter().filter(|((l, _), _)| *l == link).map(|((_, channel), conf)| (*conf, *channel)).collect()
    }

    /// The links a conference travels on.
    pub fn links_of(&self, conference: u64) -> Vec<LinkId> {
        self.by_conference.keys().filter(|(c, _)| *c == conference).map(|(_, link)| *link).collect()
    }

    pub fn remove(&mut self, link: LinkId, channel: u32) {
        if let Some(conference) = self.by_channel.remove(&(link, channel)) {
            self.by_conference.remove(&(conference, link));
        }
    }
}

pub fn relay_codec(codec: str0m::format::Codec) -> Option<RelayCodec> {
    match codec {
        str0m::format::Codec::Opus => Some(RelayCodec::Opus),
        str0m::format::Codec::Vp8 => Some(RelayCodec::Vp8),
        _ => None,
    }
}

pub fn str0m_codec(codec: RelayCodec) -> str0m::format::Codec {
    match codec {
        RelayCodec::Opus => str0m::format::Codec::Opus,
        RelayCodec::Vp8 => str0m::format::Codec::Vp8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_count_the_conferences_using_a_link_and_carry_their_refusals() {
        let (users, mut refusals) = LinkUsers::new();
        let first = users.lease();
        let second = users.lease();
        assert_eq!(users.count(), 2);
        let refusal = Refusal { worker: 1, channel: 7, conf_id: "c".into(), reason: "bad relay token".into() };
        second.refused(refusal.clone());
        assert_eq!(refusals.try_recv().ok(), Some(refusal));
        drop(first);
        drop(second);
        assert_eq!(users.count(), 0);
    }

    #[test]
    fn the_two_sfts_of_a_link_name_channels_in_different_halves() {
        assert_eq!(channel_of(7, "a.example", "b.example"), 7);
        assert_eq!(channel_of(7, "b.example", "a.example"), 7 | 1 << 31);
        assert_eq!(channel_of(u64::from(u32::MAX) + 8, "a.example", "b.example"), 7, "wraps within its half");
        for (own, peer) in [("a.example", "b.example"), ("b.example", "a.example")] {
            let channel = channel_of(12, own, peer);
            assert!(in_half_of(channel, own, peer) && !in_half_of(channel, peer, own), "{own}'s channel");
        }
    }

    #[test]
    fn a_channel_reused_for_another_conference_displaces_the_old_one() {
        let mut channels = Channels::default();
        let link = LinkId(1);
        assert_eq!(channels.insert(link, 1, 10), None);
        assert_eq!(channels.insert(link, 1, 10), None, "the same mapping again");
        assert_eq!(channels.insert(link, 1, 20), Some(10));
        assert_eq!(channels.conference(link, 1), Some(20));
        assert_eq!(channels.channel(10, link), None, "conference 10 no longer travels on the link");
        // A conference that moves to another channel leaves its old one.
        assert_eq!(channels.insert(link, 2, 20), None);
        assert_eq!(channels.conference(link, 1), None);
        assert_eq!(channels.on_link(link), vec![(20, 2)]);
    }
}
