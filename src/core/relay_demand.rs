//! Which published streams cross a relay link: all of them, or only what
//! the SFT at the other end subscribed to.
//!
//! In `all` mode (the default) every stream crosses every link and each SFT
//! chooses per client from there. In `demand` mode an SFT subscribes, per
//! link, to the video layers it uses of each publisher behind that link:
//! the layers its receivers' slots carry *or are switching to* (so a new
//! layer flows, and its keyframe can arrive, before the old one is let go),
//! plus what its other links subscribed to (an anchor relays between
//! federated SFTs). Audio always crosses: every SFT ranks speakers from it,
//! and it costs little.
//!
//! A link that never subscribed gets everything, so an SFT in `all` mode
//! needs no support from its peer, and a peer in `all` mode simply never
//! subscribes. A subscriber cannot measure layers it no longer gets, so the
//! side that has them reports every publisher's flowing layers, with their
//! measured rates, to subscribed links once a second
//! ([`PublisherLayers`]); the receiving side's allocation counts those as
//! flowing and priced.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::ids::{Layer, ParticipantId, StreamKey};

/// How often a subscribed link is told the publishers' flowing layers.
pub const LAYER_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Whether this SFT subscribes its relay links to only what it uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RelayMode {
    /// Every published stream crosses every link.
    #[default]
    All,
    /// Each link carries the video layers this side subscribed to.
    Demand,
}

/// The video layers of one publisher wanted over a link. `publisher` is in
/// the numbering of the SFT the subscription is sent to (its roster ids).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub publisher: u64,
    pub layers: Vec<Layer>,
}

/// The video layers flowing from one publisher on the sending side, with
/// their measured rates. `publisher` is in the sender's numbering.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublisherLayers {
    pub publisher: u64,
    pub layers: Vec<LayerRate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRate {
    pub layer: Layer,
    /// Bits per second; absent before a first measurement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bps: Option<u32>,
}

/// One relay link as a conference sees it.
#[derive(Debug, Default)]
pub struct RelayLink {
    /// When it was lost; `None` while it is up.
    pub lost: Option<Instant>,
    /// The video layers the other side subscribed to; `None`: everything.
    subscribed: Option<BTreeSet<(ParticipantId, Layer)>>,
    /// What this side last subscribed to over it.
    requested: Option<Vec<Subscription>>,
}

impl RelayLink {
    /// The link is (back) up: the other side starts again from getting
    /// everything, and is sent this side's subscription again.
    pub fn reattach(&mut self) {
        *self = Self::default();
    }

    /// Whether a packet of `stream` crosses this link (its publisher being
    /// on another one).
    pub fn carries(&self, stream: StreamKey) -> bool {
        if self.lost.is_some() {
            return false;
        }
        match (&self.subscribed, stream.layer) {
            (Some(subscribed), Some(layer)) => subscribed.contains(&(stream.participant, layer)),
            _ => true,
        }
    }

    /// Whether the other side subscribes (and so wants layer reports).
    pub fn is_subscribed(&self) -> bool {
        self.lost.is_none() && self.subscribed.is_some()
    }

    /// Of `published`, the layers of `publisher` this link carries.
    pub fn wanted_layers<'a>(
        &'a self,
        publisher: ParticipantId,
        published: &'a [Layer],
    ) -> impl Iterator<Item = Layer> + 'a {
        let up = self.lost.is_none();
        published
            .iter()
            .copied()
            .filter(move |&layer| up && self.subscribed.as_ref().is_none_or(|s| s.contains(&(publisher, layer))))
    }

    /// The other side's subscription, already checked against the publishers
    /// it may name.
    pub fn subscribe(&mut self, streams: impl IntoIterator<Item = (ParticipantId, Layer)>) {
        self.subscribed = Some(streams.into_iter().collect());
    }

    /// Records `wanted` as this side's subscription over the link; returns
    /// it when it differs from what was last sent.
    pub fn request(&mut self, wanted: Vec<Subscription>) -> Option<Vec<Subscription>> {
        if self.lost.is_some() || self.requested.as_ref() == Some(&wanted) {
            return None;
        }
        self.requested = Some(wanted.clone());
        Some(wanted)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a lost link needs some instant
mod tests {
    use super::*;

    const P: ParticipantId = ParticipantId(3);

    #[test]
    fn a_link_without_a_subscription_carries_everything_and_audio_always() {
        let mut link = RelayLink::default();
        assert!(link.carries(StreamKey::video(P, Layer::High)));
        link.subscribe([(P, Layer::Low)]);
        assert!(link.carries(StreamKey::video(P, Layer::Low)));
        assert!(!link.carries(StreamKey::video(P, Layer::High)));
        assert!(!link.carries(StreamKey::video(ParticipantId(4), Layer::Low)));
        assert!(link.carries(StreamKey::audio(P)));
        assert_eq!(link.wanted_layers(P, &Layer::ALL).collect::<Vec<_>>(), vec![Layer::Low]);
        link.lost = Some(Instant::now());
        assert!(!link.carries(StreamKey::audio(P)), "a lost link carries nothing");
        link.reattach();
        assert!(link.carries(StreamKey::video(P, Layer::High)), "a re-attached link starts from everything");
    }

    #[test]
    fn a_subscription_is_sent_again_only_when_it_changes_or_the_link_returns() {
        let mut link = RelayLink::default();
        let low = || vec![Subscription { publisher: 9, layers: vec![Layer::Low] }];
        assert_eq!(link.request(low()), Some(low()));
        assert_eq!(link.request(low()), None);
        assert_eq!(link.request(Vec::new()), Some(Vec::new()));
        link.lost = Some(Instant::now());
        assert_eq!(link.request(low()), None, "nothing goes over a lost link");
        link.reattach();
        assert_eq!(link.request(Vec::new()), Some(Vec::new()));
    }
}
