//! One conference: its participants, their receive slots, and the state
//! machine that routes every published packet into the right slots.
//!
//! Sans-IO in the style of str0m: time comes in with every input, packets
//! are routed into a caller-owned buffer, and everything else (data channel
//! messages, keyframe requests) is drained with [`Conference::poll_output`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::allocation::{cost, wish_cost, Hysteresis, SlotDemand};
use super::bitrate::BitrateMeter;
use super::ids::{Identity, Layer, LinkId, MediaKind, Origin, ParticipantId, SlotRef, StreamKey};
use super::keyframe::KeyframeThrottle;
use super::messages::{ParticipantInfo, ServerMessage, SlotInfo, SpeakerInfo, StreamRequest};
use super::probing::ProbeSchedule;
use super::relay_demand::{LayerRate, PublisherLayers, RelayLink, RelayMode, Subscription, LAYER_REPORT_INTERVAL};
use super::rewrite::SlotRewriter;
use super::selection::{assign_stable, choose_layer};
use super::speakers::{SpeakerTracker, SILENCE, SPEAKING_LEVEL};

const AUDIO_CLOCK_RATE: u32 = 48_000;
const VIDEO_CLOCK_RATE: u32 = 90_000;
/// The most entries of a REQSTREAMS list that are looked at.
const MAX_STREAM_REQUESTS: usize = 64;

#[derive(Debug, Clone)]
pub struct ConferenceConfig {
    /// How often speakers are ranked, SPEAKERS sent and slots re-chosen.
    pub speaker_interval: Duration,
    /// The least time between two keyframe requests to one source stream.
    pub keyframe_interval: Duration,
    /// A simulcast layer with no packet for this long counts as stopped.
    pub layer_timeout: Duration,
    /// How many speakers a SPEAKERS message lists at most.
    pub max_speakers: usize,
    /// How long the participants of a lost relay link stay before they leave.
    pub link_timeout: Duration,
    /// How long a receiver's estimate must pay for higher layers before it gets them.
    pub upgrade_hold: Duration,
    /// How much estimate (percent) higher layers must leave unused to be chosen.
    pub upgrade_headroom_percent: u32,
    /// How often a receiver that gets less than it wishes is probed.
    pub probe_interval: Duration,
    /// Whether relay links carry everything or what this side subscribes to.
    pub relay: RelayMode,
}

impl Default for ConferenceConfig {
    fn default() -> Self {
        Self {
            speaker_interval: Duration::from_millis(300),
            keyframe_interval: Duration::from_millis(300),
            layer_timeout: Duration::from_secs(2),
            max_speakers: 5,
            link_timeout: Duration::from_secs(10),
            upgrade_hold: Duration::from_secs(2),
            upgrade_headroom_percent: 15,
            probe_interval: Duration::from_secs(2),
            relay: RelayMode::All,
        }
    }
}

/// What a joining participant publishes and which slots it receives in.
#[derive(Debug, Clone)]
pub struct ParticipantSpec {
    pub identity: Identity,
    pub publishes_audio: bool,
    /// Empty when it publishes no video; one entry (`High`) without simulcast.
    pub video_layers: Vec<Layer>,
    pub audio_slot_mids: Vec<String>,
    pub video_slot_mids: Vec<String>,
}

/// One RTP packet of a published stream, already parsed by the edge.
#[derive(Debug, Clone, Copy)]
pub struct IncomingRtp {
    pub stream: StreamKey,
    /// Extended (rollover-free) sequence number.
    pub seq: u64,
    pub timestamp: u32,
    pub keyframe: bool,
    /// RTP payload bytes, for the layer's measured bitrate.
    pub size: usize,
    /// RFC 6464 level (0 loudest, 127 silence), when the packet carries one.
    pub audio_level: Option<u8>,
}

/// One participant as a relay link announces it: `id` is in the namespace of
/// the SFT that sends the roster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterEntry {
    pub id: u64,
    pub identity: Identity,
    pub audio: bool,
    pub layers: Vec<Layer>,
}

/// Where one published packet goes.
#[derive(Debug, Default)]
pub struct Routes {
    /// Into these local receive slots.
    pub slots: Vec<Forward>,
    /// Over these relay links, once each.
    pub links: Vec<LinkId>,
}

impl Routes {
    pub fn clear(&mut self) {
        self.slots.clear();
        self.links.clear();
    }
}

/// Send the packet into `receiver`'s `slot` with these numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub receiver: ParticipantId,
    pub slot: SlotRef,
    pub seq: u64,
    pub timestamp: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send this message on the participant's `sft` data channel.
    Send { to: ParticipantId, message: ServerMessage },
    /// Ask the publisher of this stream for a keyframe (PLI); for a remote
    /// publisher, over its relay link.
    RequestKeyframe(StreamKey),
    /// Tell the SFT at the other end of `link` who is in the conference here
    /// (everyone except the participants that link brought).
    Roster { link: LinkId, participants: Vec<RosterEntry> },
    /// Give the estimator of `receiver`'s downlink this desired rate
    /// (bits/s): what all its wishes cost, with upgrade headroom, so probes
    /// aim at what it asked for, not at layers it did not; briefly lowered
    /// to what it gets, to make str0m probe again (see [`super::probing`]).
    ProbeToward { receiver: ParticipantId, bits_per_second: u64 },
    /// Ask the SFT at the other end of `link` for only these video layers
    /// (`demand` mode; see [`super::relay_demand`]).
    Subscribe { link: LinkId, streams: Vec<Subscription> },
    /// Tell the SFT at the other end of `link`, which subscribes, what its
    /// publishers' layers measure here.
    ReportLayers { link: LinkId, publishers: Vec<PublisherLayers> },
}

#[derive(Debug)]
pub struct Conference {
    config: ConferenceConfig,
    participants: BTreeMap<ParticipantId, Participant>,
    speakers: SpeakerTracker,
    throttle: KeyframeThrottle,
    /// The speakers named in the last SPEAKERS message, loudest first.
    announced_speakers: Vec<ParticipantId>,
    next_tick: Option<Instant>,
    outputs: VecDeque<Output>,
    /// Relay links attached to this conference.
    links: BTreeMap<LinkId, RelayLink>,
    /// When subscribed links are next told what the layers measure.
    next_layer_report: Option<Instant>,
}

#[derive(Debug)]
struct Participant {
    identity: Identity,
    origin: Origin,
    publishes_audio: bool,
    video_layers: Vec<Layer>,
    audio_slots: Vec<Slot>,
    video_slots: Vec<Slot>,
    requests: Option<Vec<StreamRequest>>,
    last_spoke: Option<Instant>,
    layer_seen: [Option<Instant>; 3],
    /// What each published video layer, and the audio, measure.
    layer_rates: [BitrateMeter; 3],
    /// What the SFT behind a relay link last reported each layer measures
    /// there, and when (for layers this side may not be getting).
    reported_rates: [Option<(u32, Instant)>; 3],
    audio_rate: BitrateMeter,
    /// The receiver's downlink estimate (bits/s), once the edge has one.
    estimate: Option<u32>,
    allocation: Hysteresis,
    /// When its downlink is probed above what it gets.
    probing: ProbeSchedule,
    confpart_seq: u64,
    /// Set when a slot's source changed and CONFPART must tell the client.
    slots_changed: bool,
}

#[derive(Debug)]
struct Slot {
    mid: String,
    /// The stream this slot should carry; it keeps carrying its current
    /// source until the target's first keyframe arrives.
    target: Option<StreamKey>,
    /// The stream the slot would carry if the receiver's estimate paid for
    /// its lowest layer; CONFPART lists the slot as paused.
    paused: Option<StreamKey>,
    rewriter: SlotRewriter,
}

impl Slot {
    fn new(mid: String, clock_rate: u32) -> Self {
        Self { mid, target: None, paused: None, rewriter: SlotRewriter::new(clock_rate) }
    }

    fn is_pending(&self) -> bool {
        self.target.is_some() && self.target != self.rewriter.source()
    }
}

impl Conference {
    pub fn new(config: ConferenceConfig) -> Self {
        let throttle = KeyframeThrottle::new(config.keyframe_interval);
        Self {
            config,
            participants: BTreeMap::new(),
            speakers: SpeakerTracker::default(),
            throttle,
            announced_speakers: Vec::new(),
            next_tick: None,
            outputs: VecDeque::new(),
            links: BTreeMap::new(),
            next_layer_report: None,
        }
    }

    /// No participants here and no relay link: the conference can go.
    pub fn is_empty(&self) -> bool {
        self.participants.is_empty() && self.links.is_empty()
    }

    /// Participants on this SFT and on others.
    pub fn counts(&self) -> (usize, usize) {
        let local = self.participants.values().filter(|p| p.origin == Origin::Local).count();
        (local, self.participants.len() - local)
    }

    /// Participants here that are not behind `link`: the ones a roster
    /// from `link` adds to.
    pub fn participants_not_behind(&self, link: LinkId) -> usize {
        let behind = |p: &&Participant| matches!(p.origin, Origin::Remote { link: l, .. } if l == link);
        self.participants.values().filter(|p| !behind(p)).count()
    }

    pub fn origin(&self, id: ParticipantId) -> Option<Origin> {
        self.participants.get(&id).map(|p| p.origin)
    }

    /// The participant a relay link calls `remote_id`.
    pub fn remote_participant(&self, link: LinkId, remote_id: u64) -> Option<ParticipantId> {
        let origin = Origin::Remote { link, remote_id };
        self.participants.iter().find(|(_, p)| p.origin == origin).map(|(id, _)| *id)
    }

    pub fn add_participant(&mut self, now: Instant, id: ParticipantId, spec: ParticipantSpec) {
        self.insert_participant(now, id, spec, Origin::Local);
    }

    fn insert_participant(&mut self, now: Instant, id: ParticipantId, spec: ParticipantSpec, origin: Origin) {
        let mut video_layers = spec.video_layers;
        video_layers.sort();
        video_layers.dedup();
        let participant = Participant {
            identity: spec.identity,
            origin,
            publishes_audio: spec.publishes_audio,
            video_layers,
            audio_slots: spec.audio_slot_mids.into_iter().map(|m| Slot::new(m, AUDIO_CLOCK_RATE)).collect(),
            video_slots: spec.video_slot_mids.into_iter().map(|m| Slot::new(m, VIDEO_CLOCK_RATE)).collect(),
            requests: None,
            last_spoke: None,
            layer_seen: [None; 3],
            layer_rates: [BitrateMeter::default(); 3],
            reported_rates: [None; 3],
            audio_rate: BitrateMeter::default(),
            estimate: None,
            allocation: Hysteresis::new(self.config.upgrade_hold, self.config.upgrade_headroom_percent),
            probing: ProbeSchedule::new(self.config.probe_interval),
            confpart_seq: 0,
            slots_changed: false,
        };
        self.participants.insert(id, participant);
        self.next_tick.get_or_insert(now + self.config.speaker_interval);
        self.reselect_all(now);
        self.announce_to_all();
    }

    /// Removes a participant; returns whether it was there.
    pub fn remove_participant(&mut self, now: Instant, id: ParticipantId) -> bool {
        if self.participants.remove(&id).is_none() {
            return false;
        }
        self.speakers.forget(id);
        self.throttle.forget(id);
        self.announced_speakers.retain(|p| *p != id);
        for receiver in self.participants.values_mut() {
            for slot in receiver.audio_slots.iter_mut().chain(receiver.video_slots.iter_mut()) {
                if slot.target.is_some_and(|t| t.participant == id) {
                    slot.target = None;
                }
                if slot.paused.is_some_and(|t| t.participant == id) {
                    slot.paused = None;
                }
                if slot.rewriter.source().is_some_and(|s| s.participant == id) {
                    slot.rewriter.clear();
                }
            }
        }
        if self.participants.is_empty() && self.links.is_empty() {
            self.next_tick = None;
        }
        self.reselect_all(now);
        self.announce_to_all();
        true
    }

    /// A relay link joined this conference (or came back): it gets the roster.
    pub fn attach_link(&mut self, now: Instant, link: LinkId) {
        self.links.entry(link).or_default().reattach();
        self.next_tick.get_or_insert(now + self.config.speaker_interval);
        self.send_roster(link);
        self.refresh_subscriptions();
    }

    /// A relay link dropped; its participants stay for `link_timeout` in
    /// case it comes back.
    pub fn link_lost(&mut self, now: Instant, link: LinkId) {
        if let Some(state) = self.links.get_mut(&link) {
            state.lost.get_or_insert(now);
        }
        // What that link's side wanted is no longer wanted from the others.
        self.refresh_subscriptions();
    }

    /// A relay link left for good: its participants leave now.
    pub fn detach_link(&mut self, now: Instant, link: LinkId) {
        self.links.remove(&link);
        self.refresh_subscriptions();
        let gone: Vec<ParticipantId> = self
            .participants
            .iter()
            .filter(|(_, p)| matches!(p.origin, Origin::Remote { link: l, .. } if l == link))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.remove_participant(now, id);
        }
    }

    /// The SFT behind `link` says who is in the conference there. New ids
    /// get a participant id from `next_id`.
    pub fn handle_roster(
        &mut self,
        now: Instant,
        link: LinkId,
        entries: Vec<RosterEntry>,
        mut next_id: impl FnMut() -> ParticipantId,
    ) {
        if !self.links.contains_key(&link) {
            return;
        }
        // Gone: every participant of this link the roster no longer names,
        // or names as someone else (a restarted SFT may reuse an id).
        let still_here =
            |remote_id: u64, identity: &Identity| entries.iter().any(|e| e.id == remote_id && e.identity == *identity);
        let gone: Vec<ParticipantId> = self
            .participants
            .iter()
            .filter(|(_, p)| matches!(p.origin, Origin::Remote { link: l, remote_id } if l == link && !still_here(remote_id, &p.identity)))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.remove_participant(now, id);
        }
        for entry in entries {
            if self.remote_participant(link, entry.id).is_some() {
                continue;
            }
            let spec = ParticipantSpec {
                identity: entry.identity,
                publishes_audio: entry.audio,
                video_layers: entry.layers,
                audio_slot_mids: Vec::new(),
                video_slot_mids: Vec::new(),
            };
            self.insert_participant(now, next_id(), spec, Origin::Remote { link, remote_id: entry.id });
        }
    }

    /// Routes one published packet: into every local slot that carries it,
    /// and over every relay link other than the one it came from. Allocates
    /// nothing once `out` has grown to size.
    pub fn handle_rtp(&mut self, now: Instant, packet: &IncomingRtp, out: &mut Routes) {
        let source = packet.stream;
        let Some(publisher) = self.participants.get_mut(&source.participant) else {
            return;
        };
        let arrived_over = match publisher.origin {
            Origin::Local => None,
            Origin::Remote { link, .. } => Some(link),
        };
        for (&link, state) in &self.links {
            if Some(link) != arrived_over && state.carries(source) {
                out.links.push(link);
            }
        }
        match source.layer {
            Some(layer) => {
                publisher.layer_seen[layer.index()] = Some(now);
                publisher.layer_rates[layer.index()].record(now, packet.size);
            }
            None => publisher.audio_rate.record(now, packet.size),
        }
        if let Some(level) = packet.audio_level {
            self.speakers.observe(source.participant, level);
        }
        let mut any_switch = false;
        for (&receiver_id, receiver) in self.participants.iter_mut() {
            if receiver_id == source.participant {
                continue;
            }
            let slots = match source.kind {
                MediaKind::Audio => &mut receiver.audio_slots,
                MediaKind::Video => &mut receiver.video_slots,
            };
            for (index, slot) in slots.iter_mut().enumerate() {
                let is_current = slot.rewriter.source() == Some(source);
                if slot.target == Some(source) && !is_current {
                    let can_switch = source.kind == MediaKind::Audio || packet.keyframe;
                    if !can_switch {
                        continue;
                    }
                    slot.rewriter.switch_to(now, source, packet.seq, packet.timestamp);
                    slot.paused = None;
                    receiver.slots_changed = true;
                    any_switch = true;
                } else if !is_current {
                    continue;
                }
                if let Some((seq, timestamp)) = slot.rewriter.rewrite(now, packet.seq, packet.timestamp) {
                    let slot = SlotRef { kind: source.kind, index };
                    out.slots.push(Forward { receiver: receiver_id, slot, seq, timestamp });
                }
            }
        }
        if any_switch {
            self.announce_changed_slots();
        }
    }

    /// A receiver lost a picture in `slot` (PLI/FIR): ask its source.
    pub fn handle_keyframe_request(&mut self, now: Instant, receiver: ParticipantId, slot: SlotRef) {
        let source = self
            .participants
            .get(&receiver)
            .and_then(|r| r.slots(slot.kind).get(slot.index))
            .and_then(|s| s.rewriter.source());
        if let Some(source) = source {
            self.request_keyframe(now, source);
        }
    }

    /// The SFT behind `link` asks for a keyframe of `stream` for its
    /// receivers. It passes the same per-stream throttle as local requests,
    /// so a peer cannot flood a publisher with PLIs; a stream of the
    /// link's own participants, or of nobody here, is ignored.
    pub fn handle_relayed_keyframe_request(&mut self, now: Instant, link: LinkId, stream: StreamKey) {
        let known = self.participants.get(&stream.participant).is_some_and(|p| match p.origin {
            Origin::Local => true,
            Origin::Remote { link: from, .. } => from != link,
        });
        if known && stream.kind == MediaKind::Video {
            self.request_keyframe(now, stream);
        }
    }

    /// REQSTREAMS: the receiver chooses its video slots from now on.
    pub fn handle_request_streams(&mut self, now: Instant, receiver: ParticipantId, mut streams: Vec<StreamRequest>) {
        let Some(participant) = self.participants.get_mut(&receiver) else {
            return;
        };
        streams.truncate(MAX_STREAM_REQUESTS);
        participant.requests = Some(streams);
        self.reselect(now, receiver);
        self.announce_changed_slots();
    }

    /// The edge's latest estimate of what `receiver`'s downlink carries
    /// (bits/s): its video slots get the layers that fit, lowered at once,
    /// raised only once the estimate has held (see [`super::allocation`]).
    pub fn set_receiver_estimate(&mut self, now: Instant, receiver: ParticipantId, bits_per_second: u32) {
        let Some(participant) = self.participants.get_mut(&receiver) else {
            return;
        };
        participant.estimate = Some(bits_per_second);
        self.reselect(now, receiver);
        self.announce_changed_slots();
    }

    /// The SFT behind `link` wants only these video layers of the
    /// publishers it names (in this side's numbering); others get nothing
    /// but their audio over it.
    pub fn handle_subscription(&mut self, link: LinkId, streams: Vec<Subscription>) {
        let participants = &self.participants;
        let Some(state) = self.links.get_mut(&link) else {
            return;
        };
        let allowed = streams.into_iter().filter_map(|s| {
            let id = ParticipantId(s.publisher);
            let publisher = participants.get(&id)?;
            // Never back over the link a publisher came from.
            let behind_link = matches!(publisher.origin, Origin::Remote { link: l, .. } if l == link);
            let layers = s.layers.into_iter().filter(|l| publisher.video_layers.contains(l));
            (!behind_link).then(|| layers.map(move |layer| (id, layer)))
        });
        state.subscribe(allowed.flatten());
        // An anchor asks the publishers' own links for what this one wants.
        self.refresh_subscriptions();
    }

    /// The SFT behind `link` says which layers of its publishers flow there,
    /// and what they measure: layers this side does not get still count as
    /// flowing and priced.
    pub fn handle_layer_report(&mut self, now: Instant, link: LinkId, publishers: Vec<PublisherLayers>) {
        for report in publishers {
            let Some(id) = self.remote_participant(link, report.publisher) else { continue };
            let publisher = self.participants.get_mut(&id).expect("found above");
            for LayerRate { layer, bps } in report.layers {
                if !publisher.video_layers.contains(&layer) {
                    continue;
                }
                publisher.layer_seen[layer.index()] = Some(now);
                if let Some(bps) = bps {
                    publisher.reported_rates[layer.index()] = Some((bps, now));
                }
            }
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_tick
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(tick) = self.next_tick else {
            return;
        };
        if now < tick {
            return;
        }
        self.next_tick = Some(now + self.config.speaker_interval);
        self.expire_lost_links(now);
        self.rank_speakers(now);
        self.reselect_all(now);
        self.rerequest_pending_keyframes(now);
        self.announce_changed_slots();
        self.report_layers(now);
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    fn expire_lost_links(&mut self, now: Instant) {
        let timeout = self.config.link_timeout;
        let expired: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, state)| state.lost.is_some_and(|t| now.saturating_duration_since(t) >= timeout))
            .map(|(link, _)| *link)
            .collect();
        for link in expired {
            self.detach_link(now, link);
        }
    }

    fn send_roster(&mut self, link: LinkId) {
        let participants = self
            .participants
            .iter()
            .filter(|(_, p)| !matches!(p.origin, Origin::Remote { link: l, .. } if l == link))
            .map(|(id, p)| RosterEntry {
                id: id.0,
                identity: p.identity.clone(),
                audio: p.publishes_audio,
                layers: p.video_layers.clone(),
            })
            .collect();
        self.outputs.push_back(Output::Roster { link, participants });
    }

    fn rank_speakers(&mut self, now: Instant) {
        let ranking = self.speakers.close_window();
        for &(id, level) in ranking {
            if level <= SPEAKING_LEVEL {
                if let Some(p) = self.participants.get_mut(&id) {
                    p.last_spoke = Some(now);
                }
            }
        }
        let loudest: Vec<(ParticipantId, u8)> =
            ranking.iter().filter(|(_, level)| *level < SILENCE).take(self.config.max_speakers).copied().collect();
        let ids: Vec<ParticipantId> = loudest.iter().map(|(id, _)| *id).collect();
        if ids == self.announced_speakers {
            return;
        }
        self.announced_speakers = ids;
        let speakers: Vec<SpeakerInfo> = loudest
            .iter()
            .filter_map(|(id, level)| {
                let identity = &self.participants.get(id)?.identity;
                Some(SpeakerInfo {
                    userid: identity.userid.clone(),
                    clientid: identity.clientid.clone(),
                    domain: identity.domain.clone(),
                    level: *level,
                })
            })
            .collect();
        let local = self.participants.iter().filter(|(_, p)| p.origin == Origin::Local).map(|(id, _)| *id);
        for to in local.collect::<Vec<_>>() {
            let message = ServerMessage::Speakers { speakers: speakers.clone() };
            self.outputs.push_back(Output::Send { to, message });
        }
    }

    fn reselect_all(&mut self, now: Instant) {
        let ids: Vec<ParticipantId> = self.participants.keys().copied().collect();
        for id in ids {
            self.reselect(now, id);
        }
    }

    /// Re-chooses the targets of one receiver's slots.
    fn reselect(&mut self, now: Instant, receiver_id: ParticipantId) {
        let Some(receiver) = self.participants.get(&receiver_id) else {
            return;
        };
        let audio = self.audio_targets(receiver_id, receiver);
        let wishes = self.video_wishes(receiver_id, receiver);
        let video = self.fit_to_estimate(now, receiver_id, &audio, &wishes);
        let mut keyframes_needed = Vec::new();
        let receiver = self.participants.get_mut(&receiver_id).expect("looked up above");
        for (slot, target) in receiver.audio_slots.iter_mut().zip(audio) {
            retarget(slot, target, &mut receiver.slots_changed);
        }
        for (slot, (target, paused)) in receiver.video_slots.iter_mut().zip(video) {
            // A resuming slot stays listed as paused until its keyframe switches it.
            let resuming = target.is_some() && slot.rewriter.source().is_none();
            let paused = paused.or(slot.paused.filter(|_| resuming));
            if slot.paused != paused {
                slot.paused = paused;
                receiver.slots_changed = true;
            }
            if retarget(slot, target, &mut receiver.slots_changed) {
                keyframes_needed.extend(target);
            }
        }
        for stream in keyframes_needed {
            self.request_keyframe(now, stream);
        }
    }

    /// Each video slot's stream: the wished layer or the best flowing one
    /// below it; with an estimate, what the estimate pays for (after the
    /// audio slots, which always get theirs), or paused.
    fn fit_to_estimate(
        &mut self,
        now: Instant,
        receiver_id: ParticipantId,
        audio: &[Option<StreamKey>],
        wishes: &[Option<(ParticipantId, Layer)>],
    ) -> Vec<(Option<StreamKey>, Option<StreamKey>)> {
        let timeout = self.config.layer_timeout;
        let participants = &self.participants;
        let available = |id: ParticipantId| participants.get(&id).map(|p| p.available_layers(now, timeout));
        let Some(estimate) = participants.get(&receiver_id).and_then(|r| r.estimate) else {
            return wishes
                .iter()
                .map(|wish| {
                    let (id, wanted) = (*wish)?;
                    Some(StreamKey::video(id, choose_layer(wanted, &available(id)?)?))
                })
                .map(|target| (target, None))
                .collect();
        };
        let audio_rate: u32 = audio
            .iter()
            .flatten()
            .filter_map(|stream| participants.get(&stream.participant)?.audio_rate.rate(now))
            .sum();
        // Priority: REQSTREAMS order, else the most recent speaker first.
        let by_request = participants.get(&receiver_id).is_some_and(|r| r.requests.is_some());
        let mut order: Vec<usize> = (0..wishes.len()).filter(|&i| wishes[i].is_some()).collect();
        if !by_request {
            order.sort_by_key(|&i| {
                let id = wishes[i].map(|(id, _)| id);
                (std::cmp::Reverse(id.and_then(|id| participants.get(&id)?.last_spoke)), id)
            });
        }
        // Which slot and source each demand is for, in the same order.
        let mut ranked: Vec<(usize, ParticipantId)> = Vec::with_capacity(order.len());
        let mut demands: Vec<SlotDemand> = Vec::with_capacity(order.len());
        for i in order {
            let Some((id, wanted)) = wishes[i] else { continue };
            let Some(publisher) = participants.get(&id) else { continue };
            let Some(flowing) = available(id) else { continue };
            let rate = |layer: Layer| publisher.layer_rate(now, layer, timeout);
            // A layer not measured yet is not chosen, but for the lowest,
            // which costs nothing until it is: no `h` on a guess.
            let layers = flowing
                .iter()
                .enumerate()
                .filter_map(|(n, &layer)| match rate(layer) {
                    Some(bits) => Some((layer, bits)),
                    None => (n == 0).then_some((layer, 0)),
                })
                .collect();
            ranked.push((i, id));
            demands.push(SlotDemand { source: id.0, wanted, layers });
        }
        let receiver = self.participants.get_mut(&receiver_id).expect("has an estimate");
        let allocation = receiver.allocation.update(now, estimate.saturating_sub(audio_rate), &demands);
        let headroom = |bits: u64| bits * u64::from(100 + self.config.upgrade_headroom_percent) / 100;
        let wish = headroom(u64::from(audio_rate) + wish_cost(&demands));
        let gets = headroom(u64::from(audio_rate) + cost(&demands, &allocation));
        if let Some(bits_per_second) = receiver.probing.update(now, wish, gets) {
            self.outputs.push_back(Output::ProbeToward { receiver: receiver_id, bits_per_second });
        }
        let mut video = vec![(None, None); wishes.len()];
        for ((i, id), layer) in ranked.into_iter().zip(allocation) {
            video[i] = match layer {
                Some(layer) => (Some(StreamKey::video(id, layer)), None),
                None => (None, Some(StreamKey::video(id, Layer::Low))),
            };
        }
        video
    }

    /// Audio slots carry the loudest other speakers, or everyone when there
    /// are no more senders than slots.
    fn audio_targets(&self, receiver_id: ParticipantId, receiver: &Participant) -> Vec<Option<StreamKey>> {
        let mut senders: Vec<ParticipantId> = self
            .participants
            .iter()
            .filter(|(id, p)| **id != receiver_id && p.publishes_audio)
            .map(|(id, _)| *id)
            .collect();
        senders.sort_by_key(|id| (self.speakers.level(*id), *id));
        senders.truncate(receiver.audio_slots.len());
        let current: Vec<Option<ParticipantId>> =
            receiver.audio_slots.iter().map(|s| s.target.map(|t| t.participant)).collect();
        assign_stable(&current, &senders).into_iter().map(|p| p.map(StreamKey::audio)).collect()
    }

    /// Video slots follow the receiver's REQSTREAMS, or else the most
    /// recent active speakers (wishing for `h`): who and which layer at best.
    fn video_wishes(&self, receiver_id: ParticipantId, receiver: &Participant) -> Vec<Option<(ParticipantId, Layer)>> {
        let slot_count = receiver.video_slots.len();
        if let Some(requests) = &receiver.requests {
            return (0..slot_count)
                .map(|i| {
                    let request = requests.get(i)?;
                    let wanted = request.quality.layer()?;
                    let (&id, _) = self.participants.iter().find(|(id, p)| {
                        **id != receiver_id
                            && !p.video_layers.is_empty()
                            && p.identity.userid == request.userid
                            && p.identity.clientid == request.clientid
                            && request.domain.as_ref().is_none_or(|d| *d == p.identity.domain)
                    })?;
                    Some((id, wanted))
                })
                .collect();
        }
        let mut publishers: Vec<(&ParticipantId, &Participant)> =
            self.participants.iter().filter(|(id, p)| **id != receiver_id && !p.video_layers.is_empty()).collect();
        // Most recent speaker first; never-spoken ones after, in join order.
        publishers.sort_by_key(|(id, p)| (std::cmp::Reverse(p.last_spoke), **id));
        publishers.truncate(slot_count);
        let desired: Vec<ParticipantId> = publishers.iter().map(|(id, _)| **id).collect();
        let current: Vec<Option<ParticipantId>> =
            receiver.video_slots.iter().map(|s| s.target.or(s.paused).map(|t| t.participant)).collect();
        assign_stable(&current, &desired).into_iter().map(|p| p.map(|id| (id, Layer::High))).collect()
    }

    fn rerequest_pending_keyframes(&mut self, now: Instant) {
        let pending: Vec<StreamKey> = self
            .participants
            .values()
            .flat_map(|p| p.video_slots.iter())
            .filter(|s| s.is_pending())
            .filter_map(|s| s.target)
            .collect();
        for stream in pending {
            self.request_keyframe(now, stream);
        }
    }

    fn request_keyframe(&mut self, now: Instant, stream: StreamKey) {
        if self.throttle.allow(now, stream) {
            self.outputs.push_back(Output::RequestKeyframe(stream));
        }
    }

    /// Membership changed: every local client gets CONFPART, every link the roster.
    fn announce_to_all(&mut self) {
        for participant in self.participants.values_mut() {
            participant.slots_changed = participant.origin == Origin::Local;
        }
        self.announce_changed_slots();
        let links: Vec<LinkId> = self.links.keys().copied().collect();
        for link in links {
            self.send_roster(link);
        }
    }

    fn announce_changed_slots(&mut self) {
        // Sorted by identity, so every SFT of a federated conference lists them alike.
        let mut participants: Vec<ParticipantInfo> = self.participants.values().map(Participant::info).collect();
        participants.sort_by(|a, b| (&a.domain, &a.userid, &a.clientid).cmp(&(&b.domain, &b.userid, &b.clientid)));
        let changed: Vec<ParticipantId> =
            self.participants.iter().filter(|(_, p)| p.slots_changed).map(|(id, _)| *id).collect();
        for id in changed {
            let slots = self.slot_infos(id);
            let receiver = self.participants.get_mut(&id).expect("listed above");
            receiver.slots_changed = false;
            receiver.confpart_seq += 1;
            let message =
                ServerMessage::ConfPart { seq: receiver.confpart_seq, participants: participants.clone(), slots };
            self.outputs.push_back(Output::Send { to: id, message });
        }
        // Wherever slots may have changed, so may what the relay must bring.
        self.refresh_subscriptions();
    }

    /// `demand` mode: subscribes every link to what this side uses of the
    /// publishers behind it, when that changed.
    fn refresh_subscriptions(&mut self) {
        if self.config.relay != RelayMode::Demand {
            return;
        }
        let up: Vec<LinkId> = self.links.iter().filter(|(_, l)| l.lost.is_none()).map(|(id, _)| *id).collect();
        for link in up {
            let wanted = self.wanted_over(link);
            if let Some(streams) = self.links.get_mut(&link).and_then(|l| l.request(wanted)) {
                self.outputs.push_back(Output::Subscribe { link, streams });
            }
        }
    }

    /// Of the publishers behind `link` (numbered as that side numbers them),
    /// the layers some local slot carries or is switching to, and those
    /// another link carries.
    fn wanted_over(&self, link: LinkId) -> Vec<Subscription> {
        let mut wanted: BTreeMap<u64, BTreeSet<Layer>> = BTreeMap::new();
        let behind = |id: ParticipantId| match self.participants.get(&id)?.origin {
            Origin::Remote { link: l, remote_id } if l == link => Some(remote_id),
            _ => None,
        };
        let slots = self.participants.values().flat_map(|p| p.video_slots.iter());
        for stream in slots.flat_map(|s| [s.rewriter.source(), s.target]).flatten() {
            if let (Some(remote_id), Some(layer)) = (behind(stream.participant), stream.layer) {
                wanted.entry(remote_id).or_default().insert(layer);
            }
        }
        for (_, other) in self.links.iter().filter(|(l, _)| **l != link) {
            for (&id, publisher) in &self.participants {
                let Some(remote_id) = behind(id) else { continue };
                for layer in other.wanted_layers(id, &publisher.video_layers) {
                    wanted.entry(remote_id).or_default().insert(layer);
                }
            }
        }
        wanted
            .into_iter()
            .map(|(publisher, layers)| Subscription { publisher, layers: layers.into_iter().collect() })
            .collect()
    }

    /// Tells each subscribed link, once a second, which layers of the
    /// publishers it does not bring flow here and what they measure.
    fn report_layers(&mut self, now: Instant) {
        if self.next_layer_report.is_some_and(|next| now < next) {
            return;
        }
        self.next_layer_report = Some(now + LAYER_REPORT_INTERVAL);
        let timeout = self.config.layer_timeout;
        let subscribed: Vec<LinkId> = self.links.iter().filter(|(_, l)| l.is_subscribed()).map(|(id, _)| *id).collect();
        for link in subscribed {
            let publishers = self
                .participants
                .iter()
                .filter(|(_, p)| !matches!(p.origin, Origin::Remote { link: l, .. } if l == link))
                .filter_map(|(id, p)| {
                    let layers = p.flowing_layer_rates(now, timeout);
                    (!layers.is_empty()).then_some(PublisherLayers { publisher: id.0, layers })
                })
                .collect();
            self.outputs.push_back(Output::ReportLayers { link, publishers });
        }
    }

    fn slot_infos(&self, receiver: ParticipantId) -> Vec<SlotInfo> {
        let Some(receiver) = self.participants.get(&receiver) else {
            return Vec::new();
        };
        let all_slots = receiver.audio_slots.iter().map(|s| (s, MediaKind::Audio));
        let all_slots = all_slots.chain(receiver.video_slots.iter().map(|s| (s, MediaKind::Video)));
        all_slots
            .filter_map(|(slot, kind)| {
                let (source, paused) = match (slot.rewriter.source(), slot.paused) {
                    (Some(source), _) => (source, false),
                    (None, Some(paused)) => (paused, true),
                    (None, None) => return None,
                };
                let identity = &self.participants.get(&source.participant)?.identity;
                Some(SlotInfo {
                    mid: slot.mid.clone(),
                    kind,
                    userid: identity.userid.clone(),
                    clientid: identity.clientid.clone(),
                    domain: identity.domain.clone(),
                    layer: if paused { None } else { source.layer },
                    paused,
                })
            })
            .collect()
    }
}

/// Points a slot at a new target. Returns whether the slot needs a keyframe
/// of the new target before it can switch.
fn retarget(slot: &mut Slot, target: Option<StreamKey>, slots_changed: &mut bool) -> bool {
    if slot.target == target {
        return false;
    }
    slot.target = target;
    if target.is_none() && slot.rewriter.source().is_some() {
        slot.rewriter.clear();
        *slots_changed = true;
    }
    slot.is_pending()
}

impl Participant {
    fn slots(&self, kind: MediaKind) -> &[Slot] {
        match kind {
            MediaKind::Audio => &self.audio_slots,
            MediaKind::Video => &self.video_slots,
        }
    }

    /// The published layers that are flowing. Before any video arrived, and
    /// when all layers stopped, every published layer counts, so slots keep
    /// their target and resume when video comes back.
    fn available_layers(&self, now: Instant, timeout: Duration) -> Vec<Layer> {
        let flowing: Vec<Layer> =
            self.video_layers.iter().copied().filter(|&layer| self.is_flowing(layer, now, timeout)).collect();
        if flowing.is_empty() {
            self.video_layers.clone()
        } else {
            flowing
        }
    }

    /// What a layer measures: as the SFT behind its relay link last
    /// reported it (which sees every layer), else as measured here.
    fn layer_rate(&self, now: Instant, layer: Layer, timeout: Duration) -> Option<u32> {
        let reported = self.reported_rates[layer.index()]
            .filter(|(_, at)| now.saturating_duration_since(*at) < timeout)
            .map(|(bps, _)| bps);
        reported.or_else(|| self.layer_rates[layer.index()].rate(now))
    }

    /// Whether a packet of `layer` arrived (or was reported flowing) within `timeout`.
    fn is_flowing(&self, layer: Layer, now: Instant, timeout: Duration) -> bool {
        self.layer_seen[layer.index()].is_some_and(|seen| now.saturating_duration_since(seen) < timeout)
    }

    /// The layers that flow here, with what each measures.
    fn flowing_layer_rates(&self, now: Instant, timeout: Duration) -> Vec<LayerRate> {
        self.video_layers
            .iter()
            .filter(|&&layer| self.is_flowing(layer, now, timeout))
            .map(|&layer| LayerRate { layer, bps: self.layer_rate(now, layer, timeout) })
            .collect()
    }

    fn info(&self) -> ParticipantInfo {
        ParticipantInfo {
            userid: self.identity.userid.clone(),
            clientid: self.identity.clientid.clone(),
            domain: self.identity.domain.clone(),
            audio: self.publishes_audio,
            video: !self.video_layers.is_empty(),
            layers: self.video_layers.clone(),
        }
    }
}
