//! Deterministic simulations of whole conferences through the core's API.
#![allow(clippy::disallowed_methods)] // a simulation needs some starting instant

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::conference::{
    Conference, ConferenceConfig, Forward, IncomingRtp, Output, ParticipantSpec, RosterEntry, Routes,
};
use super::ids::{Identity, Layer, LinkId, MediaKind, Origin, ParticipantId, SlotRef, StreamKey};
use super::messages::{Quality, ServerMessage, StreamRequest};
use super::relay_demand::{LayerRate, PublisherLayers, RelayMode, Subscription};

fn spec(name: &str, layers: &[Layer], slots: usize) -> ParticipantSpec {
    ParticipantSpec {
        identity: Identity { userid: name.into(), clientid: "c".into(), domain: "a.example".into() },
        publishes_audio: true,
        video_layers: layers.to_vec(),
        audio_slot_mids: (0..slots).map(|i| format!("a{i}")).collect(),
        video_slot_mids: (0..slots).map(|i| format!("v{i}")).collect(),
    }
}

/// A conference plus a clock and the per-stream sequence counters of the
/// simulated publishers.
struct Sim {
    conf: Conference,
    now: Instant,
    seqs: HashMap<StreamKey, u64>,
    forwards: Vec<Forward>,
    links: Vec<LinkId>,
    outputs: Vec<Output>,
}

impl Sim {
    fn new() -> Self {
        Self::with_config(ConferenceConfig::default())
    }

    fn with_config(config: ConferenceConfig) -> Self {
        Self {
            conf: Conference::new(config),
            now: Instant::now(),
            seqs: HashMap::new(),
            forwards: Vec::new(),
            links: Vec::new(),
            outputs: Vec::new(),
        }
    }

    fn join(&mut self, id: u64, spec: ParticipantSpec) {
        self.conf.add_participant(self.now, ParticipantId(id), spec);
        self.drain();
    }

    fn send(&mut self, stream: StreamKey, keyframe: bool, audio_level: Option<u8>) -> Vec<Forward> {
        self.send_sized(stream, keyframe, audio_level, 1000)
    }

    fn send_sized(&mut self, stream: StreamKey, keyframe: bool, audio_level: Option<u8>, size: usize) -> Vec<Forward> {
        let seq = self.seqs.entry(stream).or_insert(1000 * stream.participant.0);
        *seq += 1;
        let packet = IncomingRtp { stream, seq: *seq, timestamp: (*seq as u32) * 3000, keyframe, size, audio_level };
        let mut routes = Routes::default();
        self.conf.handle_rtp(self.now, &packet, &mut routes);
        self.forwards.extend(routes.slots.iter().copied());
        self.links.extend(routes.links.iter().copied());
        self.drain();
        routes.slots
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.conf.handle_timeout(self.now);
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(o) = self.conf.poll_output() {
            self.outputs.push(o);
        }
    }

    fn last_confpart(&self, to: u64) -> Option<&ServerMessage> {
        self.outputs.iter().rev().find_map(|o| match o {
            Output::Send { to: t, message: m @ ServerMessage::ConfPart { .. } } if *t == ParticipantId(to) => Some(m),
            _ => None,
        })
    }

    /// Which participant's streams a receiver's video slots carry, per CONFPART.
    fn video_slot_users(&self, to: u64) -> Vec<(String, Option<Layer>)> {
        let Some(ServerMessage::ConfPart { slots, .. }) = self.last_confpart(to) else {
            return Vec::new();
        };
        let mut users: Vec<_> =
            slots.iter().filter(|s| s.kind == MediaKind::Video).map(|s| (s.userid.clone(), s.layer)).collect();
        users.sort();
        users
    }

    fn keyframe_requests(&self) -> Vec<StreamKey> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::RequestKeyframe(s) => Some(*s),
                _ => None,
            })
            .collect()
    }
}

const SIMULCAST: [Layer; 3] = [Layer::Low, Layer::Medium, Layer::High];

fn four_party() -> Sim {
    let mut sim = Sim::new();
    for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
        sim.join(i as u64 + 1, spec(name, &SIMULCAST, 3));
    }
    sim
}

#[test]
fn everyone_receives_everyone_else_and_never_themselves() {
    let mut sim = four_party();
    for p in 1..=4 {
        sim.send(StreamKey::video(ParticipantId(p), Layer::High), true, None);
        sim.send(StreamKey::audio(ParticipantId(p)), false, Some(30));
    }
    for p in 1..=4u64 {
        let users = sim.video_slot_users(p);
        assert_eq!(users.len(), 3, "receiver {p}: {users:?}");
        assert!(users.iter().all(|(_, layer)| *layer == Some(Layer::High)));
        let me = ["a", "b", "c", "d"][p as usize - 1];
        assert!(users.iter().all(|(u, _)| u != me));
        let Some(ServerMessage::ConfPart { participants, .. }) = sim.last_confpart(p) else { panic!() };
        assert_eq!(participants.len(), 4);
    }
    assert!(sim.forwards.iter().all(|f| f.receiver.0 != 0));
    // 4 video + 4 audio packets, each to 3 receivers.
    assert_eq!(sim.forwards.len(), 24);
}

#[test]
fn video_waits_for_a_keyframe_and_asks_for_one() {
    let mut sim = Sim::new();
    sim.join(1, spec("a", &[Layer::High], 1));
    sim.join(2, spec("b", &[Layer::High], 1));
    let a_video = StreamKey::video(ParticipantId(1), Layer::High);
    assert!(sim.keyframe_requests().contains(&a_video));
    assert!(sim.send(a_video, false, None).is_empty(), "inter frame before any keyframe");
    let out = sim.send(a_video, true, None);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].receiver, ParticipantId(2));
    assert_eq!(out[0].slot, SlotRef { kind: MediaKind::Video, index: 0 });
    assert_eq!(sim.send(a_video, false, None)[0].seq, out[0].seq + 1);
}

#[test]
fn slot_switch_keeps_sequence_continuous() {
    // Receiver 1 has one video slot; 2 and 3 publish. REQSTREAMS moves the slot.
    let mut sim = Sim::new();
    sim.join(1, spec("r", &[], 1));
    sim.join(2, spec("x", &[Layer::High], 0));
    sim.join(3, spec("y", &[Layer::High], 0));
    let x = StreamKey::video(ParticipantId(2), Layer::High);
    let y = StreamKey::video(ParticipantId(3), Layer::High);
    sim.send(x, true, None);
    let mut last = sim.send(x, false, None)[0].seq;
    let request =
        |user: &str| StreamRequest { userid: user.into(), clientid: "c".into(), domain: None, quality: Quality::High };
    sim.conf.handle_request_streams(sim.now, ParticipantId(1), vec![request("y")]);
    sim.drain();
    assert!(sim.keyframe_requests().contains(&y));
    // Until y's keyframe, the slot keeps carrying x.
    assert!(sim.send(y, false, None).is_empty());
    let held = sim.send(x, false, None);
    assert_eq!(held[0].seq, last + 1);
    last = held[0].seq;
    sim.advance(Duration::from_millis(20));
    let switched = sim.send(y, true, None);
    assert_eq!(switched[0].seq, last + 1);
    assert!(sim.send(x, false, None).is_empty(), "old source no longer forwarded");
    assert_eq!(sim.video_slot_users(1), vec![("y".to_string(), Some(Layer::High))]);
}

#[test]
fn requested_layers_and_off() {
    let mut sim = four_party();
    let req = |user: &str, quality| StreamRequest {
        userid: user.into(),
        clientid: "c".into(),
        domain: Some("a.example".into()),
        quality,
    };
    sim.conf.handle_request_streams(
        sim.now,
        ParticipantId(1),
        vec![req("b", Quality::Low), req("c", Quality::High), req("d", Quality::Off)],
    );
    sim.drain();
    for p in 2..=4 {
        for layer in SIMULCAST {
            sim.send(StreamKey::video(ParticipantId(p), layer), true, None);
        }
    }
    assert_eq!(
        sim.video_slot_users(1),
        vec![("b".to_string(), Some(Layer::Low)), ("c".to_string(), Some(Layer::High))]
    );
    let to_1: Vec<_> = sim.forwards.iter().filter(|f| f.receiver == ParticipantId(1)).collect();
    assert_eq!(to_1.len(), 2, "only b/l and c/h reach receiver 1: {to_1:?}");
}

#[test]
fn leaving_participant_disappears_from_confpart_and_slots() {
    let mut sim = four_party();
    for p in 1..=4 {
        sim.send(StreamKey::video(ParticipantId(p), Layer::High), true, None);
    }
    assert!(sim.conf.remove_participant(sim.now, ParticipantId(3)));
    assert!(!sim.conf.remove_participant(sim.now, ParticipantId(3)));
    sim.drain();
    for p in [1, 2, 4] {
        let Some(ServerMessage::ConfPart { participants, slots, .. }) = sim.last_confpart(p) else { panic!() };
        assert_eq!(participants.len(), 3);
        assert!(participants.iter().all(|x| x.userid != "c"));
        assert!(slots.iter().all(|s| s.userid != "c"));
    }
}

#[test]
fn audio_slots_carry_the_loudest_when_there_are_more_senders_than_slots() {
    let mut sim = Sim::new();
    sim.join(1, spec("r", &[], 2));
    for (id, name) in [(2, "quiet"), (3, "loud"), (4, "medium")] {
        sim.join(id, spec(name, &[], 0));
    }
    for _ in 0..5 {
        sim.send(StreamKey::audio(ParticipantId(2)), false, Some(100));
        sim.send(StreamKey::audio(ParticipantId(3)), false, Some(10));
        sim.send(StreamKey::audio(ParticipantId(4)), false, Some(40));
    }
    sim.advance(Duration::from_millis(300));
    // One round lets the slots switch (audio needs no keyframe), the next shows the result.
    for _ in 0..2 {
        sim.send(StreamKey::audio(ParticipantId(3)), false, Some(10));
        sim.send(StreamKey::audio(ParticipantId(4)), false, Some(40));
    }
    assert!(sim.send(StreamKey::audio(ParticipantId(2)), false, Some(100)).is_empty(), "quiet one dropped");
    assert_eq!(sim.send(StreamKey::audio(ParticipantId(3)), false, Some(10)).len(), 1);
    assert_eq!(sim.send(StreamKey::audio(ParticipantId(4)), false, Some(40)).len(), 1);
    let speakers = sim.outputs.iter().rev().find_map(|o| match o {
        Output::Send { message: ServerMessage::Speakers { speakers }, .. } => Some(speakers.clone()),
        _ => None,
    });
    let names: Vec<String> = speakers.unwrap().iter().map(|s| s.userid.clone()).collect();
    assert_eq!(names, vec!["loud", "medium", "quiet"]);
}

#[test]
fn receiver_keyframe_requests_reach_the_source_throttled() {
    let mut sim = Sim::new();
    sim.join(1, spec("a", &[Layer::High], 1));
    sim.join(2, spec("b", &[], 1));
    let a_video = StreamKey::video(ParticipantId(1), Layer::High);
    sim.send(a_video, true, None);
    sim.advance(Duration::from_secs(1));
    sim.outputs.clear();
    let slot = SlotRef { kind: MediaKind::Video, index: 0 };
    for _ in 0..10 {
        sim.conf.handle_keyframe_request(sim.now, ParticipantId(2), slot);
    }
    sim.drain();
    assert_eq!(sim.keyframe_requests(), vec![a_video]);
}

#[test]
fn relayed_keyframe_requests_share_the_throttle_and_name_only_others() {
    let mut sim = Sim::new();
    sim.join(1, spec("a", &[Layer::High], 0));
    let b = LinkId(1);
    sim.conf.attach_link(sim.now, b);
    sim.conf.handle_roster(sim.now, b, vec![roster_entry(7, "bob", "b.example")], || ParticipantId(50));
    let a_video = StreamKey::video(ParticipantId(1), Layer::High);
    sim.advance(Duration::from_secs(1));
    sim.outputs.clear();
    // A flood from the peer reaches the publisher once per throttle interval.
    for _ in 0..1000 {
        sim.conf.handle_relayed_keyframe_request(sim.now, b, a_video);
    }
    sim.drain();
    assert_eq!(sim.keyframe_requests(), vec![a_video]);
    sim.outputs.clear();
    // Its own participant, someone unknown, and audio: nothing.
    sim.advance(Duration::from_secs(1));
    sim.outputs.clear();
    sim.conf.handle_relayed_keyframe_request(sim.now, b, StreamKey::video(ParticipantId(50), Layer::High));
    sim.conf.handle_relayed_keyframe_request(sim.now, b, StreamKey::video(ParticipantId(99), Layer::High));
    sim.conf.handle_relayed_keyframe_request(sim.now, b, StreamKey::audio(ParticipantId(1)));
    sim.drain();
    assert_eq!(sim.keyframe_requests(), vec![]);
}

#[test]
fn simulcast_falls_back_to_flowing_layers() {
    let mut sim = Sim::new();
    sim.join(1, spec("a", &SIMULCAST, 0));
    sim.join(2, spec("b", &[], 1));
    // Only the low layer ever flows: after the layer timeout the slot takes it.
    for _ in 0..3 {
        sim.send(StreamKey::video(ParticipantId(1), Layer::Low), true, None);
        sim.advance(Duration::from_millis(300));
    }
    sim.send(StreamKey::video(ParticipantId(1), Layer::Low), true, None);
    assert_eq!(sim.video_slot_users(2), vec![("a".to_string(), Some(Layer::Low))]);
}

/// Random joins, leaves, requests and packets; checks the invariants that
/// must hold whatever happens.
#[test]
fn random_conferences_keep_invariants() {
    for seed in 0..40 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut sim = Sim::new();
        let mut present: Vec<u64> = Vec::new();
        let mut last_seq: HashMap<(ParticipantId, SlotRef), u64> = HashMap::new();
        let mut next_id = 1;
        for _ in 0..600 {
            match rng.gen_range(0..100) {
                0..=4 if present.len() < 8 => {
                    let layers: &[Layer] = if rng.gen_bool(0.5) { &SIMULCAST } else { &[Layer::High] };
                    sim.join(next_id, spec(&format!("u{next_id}"), layers, rng.gen_range(0..4)));
                    present.push(next_id);
                    next_id += 1;
                }
                5..=7 if !present.is_empty() => {
                    let gone = present.swap_remove(rng.gen_range(0..present.len()));
                    assert!(sim.conf.remove_participant(sim.now, ParticipantId(gone)));
                    last_seq.retain(|(r, _), _| r.0 != gone);
                }
                8..=9 if !present.is_empty() => {
                    let who = present[rng.gen_range(0..present.len())];
                    let target = present[rng.gen_range(0..present.len())];
                    let quality = [Quality::Low, Quality::Medium, Quality::High, Quality::Off][rng.gen_range(0..4)];
                    let req =
                        StreamRequest { userid: format!("u{target}"), clientid: "c".into(), domain: None, quality };
                    sim.conf.handle_request_streams(sim.now, ParticipantId(who), vec![req]);
                }
                10..=14 => sim.advance(Duration::from_millis(rng.gen_range(1..400))),
                _ if !present.is_empty() => {
                    let who = ParticipantId(present[rng.gen_range(0..present.len())]);
                    let stream = if rng.gen_bool(0.3) {
                        StreamKey::audio(who)
                    } else {
                        StreamKey::video(who, SIMULCAST[rng.gen_range(0..3)])
                    };
                    let level = (stream.kind == MediaKind::Audio).then(|| rng.gen_range(0..=127));
                    for f in sim.send(stream, rng.gen_bool(0.2), level) {
                        assert_ne!(f.receiver, who, "seed {seed}: own media forwarded back");
                        let previous = last_seq.insert((f.receiver, f.slot), f.seq);
                        if let Some(previous) = previous {
                            assert_eq!(f.seq, previous + 1, "seed {seed}: slot sequence must be continuous");
                        }
                    }
                }
                _ => {}
            }
            sim.drain();
        }
    }
}

fn roster_entry(id: u64, name: &str, domain: &str) -> RosterEntry {
    RosterEntry {
        id,
        identity: Identity { userid: name.into(), clientid: "c".into(), domain: domain.into() },
        audio: true,
        layers: SIMULCAST.to_vec(),
    }
}

impl Sim {
    fn rosters(&self, link: LinkId) -> Vec<Vec<String>> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::Roster { link: l, participants } if *l == link => {
                    Some(participants.iter().map(|p| p.identity.userid.clone()).collect())
                }
                _ => None,
            })
            .collect()
    }
}

#[test]
fn anchor_relays_between_links_and_tells_each_link_the_others() {
    let mut sim = Sim::new();
    sim.join(1, spec("local", &SIMULCAST, 3));
    let (b, c) = (LinkId(1), LinkId(2));
    sim.conf.attach_link(sim.now, b);
    sim.conf.attach_link(sim.now, c);
    let mut next = 100;
    sim.conf.handle_roster(sim.now, b, vec![roster_entry(7, "bob", "b.example")], || {
        next += 1;
        ParticipantId(next)
    });
    sim.conf.handle_roster(sim.now, c, vec![roster_entry(7, "carol", "c.example")], || {
        next += 1;
        ParticipantId(next)
    });
    sim.drain();
    // Each link hears of everyone but its own participants.
    assert_eq!(sim.rosters(b).last().unwrap(), &vec!["local".to_string(), "carol".to_string()]);
    assert_eq!(sim.rosters(c).last().unwrap(), &vec!["local".to_string(), "bob".to_string()]);
    let bob = sim.conf.remote_participant(b, 7).unwrap();
    assert_eq!(sim.conf.origin(bob), Some(Origin::Remote { link: b, remote_id: 7 }));
    assert_eq!(sim.conf.counts(), (1, 2));
    // The local client sees all three, sorted by identity.
    let Some(ServerMessage::ConfPart { participants, .. }) = sim.last_confpart(1) else { panic!() };
    let names: Vec<&str> = participants.iter().map(|p| p.domain.as_str()).collect();
    assert_eq!(names, vec!["a.example", "b.example", "c.example"]);

    // Bob's packet goes to the local slot and to link c only; the local one to both links.
    sim.links.clear();
    let forwards = sim.send(StreamKey::video(bob, Layer::Low), true, None);
    assert_eq!(sim.links, vec![c]);
    assert!(forwards.is_empty(), "the local receiver gets h, not l");
    sim.links.clear();
    sim.send(StreamKey::video(ParticipantId(1), Layer::High), true, None);
    assert_eq!(sim.links, vec![b, c]);
}

#[test]
fn lost_link_participants_leave_after_the_timeout_unless_it_returns() {
    let mut sim = Sim::new();
    sim.join(1, spec("local", &[Layer::High], 1));
    let b = LinkId(1);
    sim.conf.attach_link(sim.now, b);
    sim.conf.handle_roster(sim.now, b, vec![roster_entry(7, "bob", "b.example")], || ParticipantId(50));
    sim.drain();
    assert_eq!(sim.conf.counts(), (1, 1));
    sim.conf.link_lost(sim.now, b);
    sim.advance(Duration::from_secs(5));
    assert_eq!(sim.conf.counts(), (1, 1), "still there within the timeout");
    sim.conf.attach_link(sim.now, b);
    sim.advance(Duration::from_secs(10));
    assert_eq!(sim.conf.counts(), (1, 1), "the link came back");
    sim.conf.link_lost(sim.now, b);
    for _ in 0..40 {
        sim.advance(Duration::from_millis(300));
    }
    assert_eq!(sim.conf.counts(), (1, 0));
    let Some(ServerMessage::ConfPart { participants, .. }) = sim.last_confpart(1) else { panic!() };
    assert_eq!(participants.len(), 1);
    assert!(!sim.conf.is_empty(), "the link is still attached");
}

/// A conference with one local participant and relay link `link` attached.
fn with_link(link: LinkId) -> Sim {
    let mut sim = Sim::new();
    sim.join(1, spec("local", &[], 1));
    sim.conf.attach_link(sim.now, link);
    sim
}

/// Participant ids for remote participants, from 11 on.
fn remote_ids() -> impl FnMut() -> ParticipantId {
    let mut next = 10;
    move || {
        next += 1;
        ParticipantId(next)
    }
}

#[test]
fn a_roster_without_someone_removes_them() {
    let b = LinkId(3);
    let mut sim = with_link(b);
    let mut ids = remote_ids();
    sim.conf.handle_roster(sim.now, b, vec![roster_entry(1, "x", "b"), roster_entry(2, "y", "b")], &mut ids);
    assert_eq!(sim.conf.counts(), (1, 2));
    sim.conf.handle_roster(sim.now, b, vec![roster_entry(2, "y", "b")], &mut ids);
    assert_eq!(sim.conf.counts(), (1, 1));
    assert!(sim.conf.remote_participant(b, 1).is_none());
    // A roster from a link that is not attached is ignored.
    sim.conf.handle_roster(sim.now, LinkId(9), vec![roster_entry(5, "z", "c")], &mut ids);
    assert_eq!(sim.conf.counts(), (1, 1));
}

#[test]
fn a_roster_naming_an_id_as_someone_else_replaces_the_participant() {
    // A restarted SFT numbers its participants afresh: its id 1 may now be
    // another person than the one this side knew as 1.
    let b = LinkId(3);
    let mut sim = with_link(b);
    let mut ids = remote_ids();
    sim.conf.handle_roster(sim.now, b, vec![roster_entry(1, "old", "b")], &mut ids);
    let old = sim.conf.remote_participant(b, 1).unwrap();
    sim.conf.handle_roster(sim.now, b, vec![roster_entry(1, "new", "b")], &mut ids);
    let new = sim.conf.remote_participant(b, 1).unwrap();
    assert_ne!(old, new, "a new participant, not the old one renamed");
    assert_eq!(sim.conf.counts(), (1, 1));
    sim.drain();
    let Some(ServerMessage::ConfPart { participants, .. }) = sim.last_confpart(1) else { panic!() };
    let names: Vec<&str> = participants.iter().map(|p| p.userid.as_str()).collect();
    assert_eq!(names, vec!["local", "new"]);
}

/// Payload bytes per 10 ms of each test layer: 80, 240 and 800 kbit/s.
const LAYER_BYTES: [(Layer, usize); 3] = [(Layer::Low, 100), (Layer::Medium, 300), (Layer::High, 1000)];

/// `publishers` send every layer every 10 ms (a keyframe every 500 ms) and
/// 50 bytes of audio every 20 ms (20 kbit/s), for `duration`.
fn traffic(sim: &mut Sim, publishers: &[u64], duration: Duration) {
    let ticks = duration.as_millis() / 10;
    for tick in 0..ticks {
        for &p in publishers {
            let id = ParticipantId(p);
            for (layer, bytes) in LAYER_BYTES {
                sim.send_sized(StreamKey::video(id, layer), tick % 50 == 0, None, bytes);
            }
            if tick % 2 == 0 {
                sim.send_sized(StreamKey::audio(id), false, Some(40), 50);
            }
        }
        sim.advance(Duration::from_millis(10));
    }
}

/// `(userid, layer, paused)` per video slot of the newest CONFPART to `to`.
fn video_slots_with_pause(sim: &Sim, to: u64) -> Vec<(String, Option<Layer>, bool)> {
    let Some(ServerMessage::ConfPart { slots, .. }) = sim.last_confpart(to) else {
        return Vec::new();
    };
    let mut slots: Vec<_> =
        slots.iter().filter(|s| s.kind == MediaKind::Video).map(|s| (s.userid.clone(), s.layer, s.paused)).collect();
    slots.sort();
    slots
}

#[test]
fn the_estimate_sizes_layers_pauses_what_does_not_fit_and_raises_only_after_the_hold() {
    use Layer::*;
    let mut sim = Sim::new();
    sim.join(1, spec("a", &SIMULCAST, 0));
    sim.join(2, spec("b", &SIMULCAST, 0));
    sim.join(3, spec("r", &[], 2));
    traffic(&mut sim, &[1, 2], Duration::from_secs(2));
    let both_at = |layer| vec![("a".to_string(), Some(layer), false), ("b".to_string(), Some(layer), false)];
    assert_eq!(video_slots_with_pause(&sim, 3), both_at(High), "no estimate: the best layer");

    // 800 kbit/s, 40 of them audio: m for both (480), even with 15 % to spare.
    sim.conf.set_receiver_estimate(sim.now, ParticipantId(3), 800_000);
    traffic(&mut sim, &[1, 2], Duration::from_millis(600));
    assert_eq!(video_slots_with_pause(&sim, 3), both_at(Medium));

    // 150 kbit/s: one `l` (80) fits after the audio; the other slot pauses.
    sim.conf.set_receiver_estimate(sim.now, ParticipantId(3), 150_000);
    traffic(&mut sim, &[1, 2], Duration::from_millis(600));
    let slots = video_slots_with_pause(&sim, 3);
    assert_eq!(slots.iter().filter(|(_, layer, paused)| *layer == Some(Low) && !paused).count(), 1, "{slots:?}");
    assert_eq!(slots.iter().filter(|(_, layer, paused)| layer.is_none() && *paused).count(), 1, "{slots:?}");
    // Audio is never starved: both audio slots still get packets.
    let before = sim.forwards.len();
    let to_r_audio = |sim: &Sim| {
        sim.forwards[before..]
            .iter()
            .filter(|f| f.receiver == ParticipantId(3) && f.slot.kind == MediaKind::Audio)
            .count()
    };
    traffic(&mut sim, &[1, 2], Duration::from_millis(200));
    assert_eq!(to_r_audio(&sim), 20, "10 audio packets from each of two publishers");

    // Plenty again: nothing rises before the hold (2 s) ends, everything after.
    for _ in 0..3 {
        sim.conf.set_receiver_estimate(sim.now, ParticipantId(3), 10_000_000);
        traffic(&mut sim, &[1, 2], Duration::from_millis(500));
    }
    assert_eq!(video_slots_with_pause(&sim, 3), slots, "raised before the hold ended");
    for _ in 0..3 {
        sim.conf.set_receiver_estimate(sim.now, ParticipantId(3), 10_000_000);
        traffic(&mut sim, &[1, 2], Duration::from_millis(500));
    }
    assert_eq!(video_slots_with_pause(&sim, 3), both_at(High));
}

#[test]
fn the_downlink_is_probed_toward_what_the_wishes_cost_and_no_further() {
    let mut sim = Sim::new();
    sim.join(1, spec("a", &SIMULCAST, 0));
    sim.join(2, spec("b", &SIMULCAST, 0));
    sim.join(3, spec("r", &[], 2));
    traffic(&mut sim, &[1, 2], Duration::from_secs(2));
    let probe_target = |sim: &Sim| {
        sim.outputs.iter().rev().find_map(|o| match o {
            Output::ProbeToward { receiver, bits_per_second } if *receiver == ParticipantId(3) => {
                Some(*bits_per_second)
            }
            _ => None,
        })
    };
    // Measured payload: l 80, h 800 and audio 20 kbit/s.
    let (l, h, audio) = (80_000.0, 800_000.0, 20_000.0);
    let near = |target: u64, expected: f64| (target as f64 - expected).abs() < expected * 0.05;
    // 500 kbit/s pays for `l` twice; the probes aim at `h` twice, with 15 % headroom.
    sim.conf.set_receiver_estimate(sim.now, ParticipantId(3), 500_000);
    sim.drain();
    let target = probe_target(&sim).expect("a probe target once there is an estimate");
    let expected = (2.0 * h + 2.0 * audio) * 1.15;
    assert!(near(target, expected), "{target} vs {expected}");

    // Asked for `l` only: no probing above what that costs.
    let low =
        |user: &str| StreamRequest { userid: user.into(), clientid: "c".into(), domain: None, quality: Quality::Low };
    sim.conf.handle_request_streams(sim.now, ParticipantId(3), vec![low("a"), low("b")]);
    sim.drain();
    let target = probe_target(&sim).unwrap();
    let expected = (2.0 * l + 2.0 * audio) * 1.15;
    assert!(near(target, expected), "{target} vs {expected}");

    // The rates wobble as they are measured; the target is not re-sent for that.
    let sent = sim.outputs.iter().filter(|o| matches!(o, Output::ProbeToward { .. })).count();
    traffic(&mut sim, &[1, 2], Duration::from_secs(2));
    assert_eq!(sim.outputs.iter().filter(|o| matches!(o, Output::ProbeToward { .. })).count(), sent);
}

/// A conference in `demand` mode with link `b` attached, which brings `bob`
/// (publishing all three layers; numbered 7 there).
fn demand_with_bob() -> (Sim, LinkId, ParticipantId) {
    let mut sim = Sim::with_config(ConferenceConfig { relay: RelayMode::Demand, ..ConferenceConfig::default() });
    let b = LinkId(1);
    sim.conf.attach_link(sim.now, b);
    sim.conf.handle_roster(sim.now, b, vec![roster_entry(7, "bob", "b.example")], || ParticipantId(50));
    sim.drain();
    (sim, b, ParticipantId(50))
}

impl Sim {
    /// The newest subscription sent over `link`, as (publisher, layers).
    fn subscription(&self, link: LinkId) -> Option<Vec<(u64, Vec<Layer>)>> {
        self.outputs.iter().rev().find_map(|o| match o {
            Output::Subscribe { link: l, streams } if *l == link => {
                Some(streams.iter().map(|s| (s.publisher, s.layers.clone())).collect())
            }
            _ => None,
        })
    }
}

#[test]
fn in_demand_mode_a_link_is_asked_for_what_local_slots_carry_and_switch_to() {
    use Layer::*;
    let (mut sim, b, bob) = demand_with_bob();
    assert_eq!(sim.subscription(b), Some(Vec::new()), "nobody here receives video yet");
    sim.join(1, spec("r", &[], 1));
    assert_eq!(sim.subscription(b), Some(vec![(7, vec![High])]), "the slot's target");
    sim.send(StreamKey::video(bob, High), true, None);
    // b says all three flow there, so `l` can be chosen though it does not arrive.
    let layers = SIMULCAST.iter().map(|&layer| LayerRate { layer, bps: None }).collect();
    sim.conf.handle_layer_report(sim.now, b, vec![PublisherLayers { publisher: 7, layers }]);
    let ask_low = StreamRequest { userid: "bob".into(), clientid: "c".into(), domain: None, quality: Quality::Low };
    sim.conf.handle_request_streams(sim.now, ParticipantId(1), vec![ask_low]);
    sim.drain();
    assert_eq!(sim.subscription(b), Some(vec![(7, vec![Low, High])]), "h stays until l's keyframe");
    sim.send(StreamKey::video(bob, Low), false, None);
    assert_eq!(sim.subscription(b), Some(vec![(7, vec![Low, High])]));
    sim.send(StreamKey::video(bob, Low), true, None);
    assert_eq!(sim.subscription(b), Some(vec![(7, vec![Low])]), "switched: h let go");
    let sent = sim.outputs.iter().filter(|o| matches!(o, Output::Subscribe { .. })).count();
    traffic_from(&mut sim, bob, Duration::from_secs(1));
    assert_eq!(sim.outputs.iter().filter(|o| matches!(o, Output::Subscribe { .. })).count(), sent, "no repeats");
    // The link returns: the subscription is sent again.
    sim.conf.link_lost(sim.now, b);
    sim.conf.attach_link(sim.now, b);
    sim.drain();
    assert_eq!(sim.outputs.iter().filter(|o| matches!(o, Output::Subscribe { .. })).count(), sent + 1);
    assert_eq!(sim.subscription(b), Some(vec![(7, vec![Low])]));
}

#[test]
fn all_mode_never_subscribes_and_a_link_that_never_subscribed_gets_everything() {
    let mut sim = Sim::new();
    sim.join(1, spec("r", &SIMULCAST, 1));
    let b = LinkId(1);
    sim.conf.attach_link(sim.now, b);
    sim.conf.handle_roster(sim.now, b, vec![roster_entry(7, "bob", "b.example")], || ParticipantId(50));
    traffic_from(&mut sim, ParticipantId(1), Duration::from_secs(1));
    assert!(!sim.outputs.iter().any(|o| matches!(o, Output::Subscribe { .. } | Output::ReportLayers { .. })));
    sim.links.clear();
    for layer in SIMULCAST {
        sim.send(StreamKey::video(ParticipantId(1), layer), false, None);
    }
    assert_eq!(sim.links, vec![b, b, b]);
}

/// Every layer and the audio of `publisher`, every 10 ms, for `duration`.
fn traffic_from(sim: &mut Sim, publisher: ParticipantId, duration: Duration) {
    for tick in 0..duration.as_millis() / 10 {
        for (layer, bytes) in LAYER_BYTES {
            sim.send_sized(StreamKey::video(publisher, layer), tick % 50 == 0, None, bytes);
        }
        sim.send_sized(StreamKey::audio(publisher), false, Some(40), 50);
        sim.advance(Duration::from_millis(10));
    }
}

#[test]
fn a_subscribed_link_gets_its_layers_and_all_audio_and_is_told_what_every_layer_measures() {
    use Layer::*;
    let (mut sim, b, bob) = demand_with_bob();
    sim.join(1, spec("local", &SIMULCAST, 1));
    let local = ParticipantId(1);
    // b wants the local publisher's `m`, names bob (who is its own) and a stranger: both ignored.
    let streams = vec![
        Subscription { publisher: 1, layers: vec![Medium] },
        Subscription { publisher: bob.0, layers: vec![Low] },
        Subscription { publisher: 999, layers: vec![Low] },
    ];
    sim.conf.handle_subscription(b, streams);
    sim.links.clear();
    for layer in SIMULCAST {
        sim.send(StreamKey::video(local, layer), false, None);
    }
    sim.send(StreamKey::audio(local), false, Some(30));
    assert_eq!(sim.links, vec![b, b], "m and the audio");

    traffic_from(&mut sim, local, Duration::from_millis(2500));
    let report = sim.outputs.iter().rev().find_map(|o| match o {
        Output::ReportLayers { link, publishers } if *link == b => Some(publishers.clone()),
        _ => None,
    });
    let report = report.expect("a subscribed link is told what the layers measure");
    assert_eq!(report.len(), 1, "only the local publisher, not bob: {report:?}");
    let rates: Vec<(Layer, u32)> = report[0].layers.iter().map(|l| (l.layer, l.bps.unwrap())).collect();
    // The single packets sent above count too (one `l` packet: 8 kbit/s).
    let near = |bps: u32, expected: u32| bps.abs_diff(expected) <= expected / 5;
    assert_eq!(rates.iter().map(|(l, _)| *l).collect::<Vec<_>>(), SIMULCAST.to_vec());
    assert!(near(rates[0].1, 80_000) && near(rates[2].1, 800_000), "{rates:?}");
}

#[test]
fn an_anchor_asks_a_publishers_link_for_what_its_other_links_want() {
    use Layer::*;
    let (mut sim, b, bob) = demand_with_bob();
    assert_eq!(sim.subscription(b), Some(Vec::new()), "nobody wants bob's video yet");
    // c has not subscribed: it gets everything, so b is asked for everything.
    let c = LinkId(2);
    sim.conf.attach_link(sim.now, c);
    sim.drain();
    assert_eq!(sim.subscription(b), Some(vec![(7, SIMULCAST.to_vec())]));
    sim.conf.handle_subscription(c, vec![Subscription { publisher: bob.0, layers: vec![Medium] }]);
    sim.drain();
    assert_eq!(sim.subscription(b), Some(vec![(7, vec![Medium])]));
    sim.links.clear();
    sim.send(StreamKey::video(bob, Medium), false, None);
    sim.send(StreamKey::video(bob, High), false, None);
    assert_eq!(sim.links, vec![c], "m crosses to c, h goes nowhere");
    // c goes quiet: nothing of bob's video is wanted any more.
    sim.conf.link_lost(sim.now, c);
    sim.drain();
    assert_eq!(sim.subscription(b), Some(Vec::new()));
}

#[test]
fn reported_layers_count_as_flowing_and_priced_though_they_do_not_arrive() {
    use Layer::*;
    let (mut sim, b, bob) = demand_with_bob();
    sim.join(1, spec("r", &[], 1));
    let report = |bps: [u32; 3]| {
        let layers = SIMULCAST.iter().zip(bps).map(|(&layer, bps)| LayerRate { layer, bps: Some(bps) }).collect();
        vec![PublisherLayers { publisher: 7, layers }]
    };
    // Only `l` arrives; without a report `m` and `h` would count as stopped.
    let only_low = |sim: &mut Sim, duration: Duration| {
        for tick in 0..duration.as_millis() / 10 {
            sim.send_sized(StreamKey::video(bob, Low), tick % 50 == 0, None, 100);
            if tick % 100 == 0 {
                sim.conf.handle_layer_report(sim.now, b, report([125_000, 285_000, 845_000]));
            }
            sim.advance(Duration::from_millis(10));
        }
    };
    sim.conf.set_receiver_estimate(sim.now, ParticipantId(1), 400_000);
    only_low(&mut sim, Duration::from_secs(4));
    // 400 kbit/s pays for the reported `m` (285 + 15 %), not `h`.
    let medium = StreamKey::video(bob, Medium);
    assert_eq!(sim.subscription(b), Some(vec![(7, vec![Low, Medium])]), "m asked for, l kept until m's keyframe");
    assert!(sim.keyframe_requests().contains(&medium));
    // Without reports the layers stop counting once the layer timeout passes.
    for tick in 0..300 {
        sim.send_sized(StreamKey::video(bob, Low), tick % 50 == 0, None, 100);
        sim.advance(Duration::from_millis(10));
    }
    assert_eq!(sim.subscription(b), Some(vec![(7, vec![Low])]));
}

/// One step of what peers send the core, for the fuzz test below.
#[derive(Debug, serde::Deserialize)]
#[serde(tag = "op")]
enum PeerInput {
    Roster { entries: Vec<RosterEntry> },
    Subscribe { streams: Vec<Subscription> },
    Layers { publishers: Vec<PublisherLayers> },
    Request { streams: Vec<StreamRequest> },
    Rtp { publisher: u64, layer: Option<Layer>, seq: u64, ts: u32, keyframe: bool, size: usize, level: Option<u8> },
    Keyframe { publisher: u64, layer: Option<Layer> },
    Advance { ms: u16 },
}

/// Scripts of what a relay peer (rosters, subscriptions, layer reports,
/// media with any sequence number) and a client (REQSTREAMS) send, mutated,
/// into a conference with local and remote participants: never a panic.
#[test]
fn fuzzed_peer_and_client_input_never_panics_the_core() {
    let script = r#"[
        {"op":"Roster","entries":[{"id":7,"identity":{"userid":"bob","clientid":"c","domain":"b.example"},"audio":true,"layers":["l","m","h"]}]},
        {"op":"Subscribe","streams":[{"publisher":1,"layers":["m","h"]}]},
        {"op":"Layers","publishers":[{"publisher":7,"layers":[{"layer":"l","bps":90000},{"layer":"h"}]}]},
        {"op":"Request","streams":[{"userid":"bob","clientid":"c","domain":"b.example","quality":"high"}]},
        {"op":"Rtp","publisher":7,"layer":"h","seq":18446744073709551615,"ts":4294967295,"keyframe":true,"size":1200,"level":null},
        {"op":"Rtp","publisher":1,"layer":null,"seq":0,"ts":0,"keyframe":false,"size":60,"level":3},
        {"op":"Keyframe","publisher":1,"layer":"m"},
        {"op":"Advance","ms":700}
    ]"#;
    let (mut sim, b, _bob) = demand_with_bob();
    sim.join(1, spec("local", &SIMULCAST, 2));
    sim.join(2, spec("viewer", &[], 3));
    let mut next_remote = 1_000;
    crate::fuzz::run(23, &[script.as_bytes()], |input| {
        let Ok(steps) = serde_json::from_slice::<Vec<PeerInput>>(input) else { return };
        for step in steps {
            match step {
                PeerInput::Roster { entries } => {
                    sim.conf.handle_roster(sim.now, b, entries, || {
                        next_remote += 1;
                        ParticipantId(next_remote)
                    });
                }
                PeerInput::Subscribe { streams } => sim.conf.handle_subscription(b, streams),
                PeerInput::Layers { publishers } => sim.conf.handle_layer_report(sim.now, b, publishers),
                PeerInput::Request { streams } => sim.conf.handle_request_streams(sim.now, ParticipantId(2), streams),
                PeerInput::Rtp { publisher, layer, seq, ts, keyframe, size, level } => {
                    let participant = ParticipantId(publisher);
                    let stream = layer.map_or(StreamKey::audio(participant), |l| StreamKey::video(participant, l));
                    let packet = IncomingRtp { stream, seq, timestamp: ts, keyframe, size, audio_level: level };
                    sim.conf.handle_rtp(sim.now, &packet, &mut Routes::default());
                }
                PeerInput::Keyframe { publisher, layer } => {
                    let participant = ParticipantId(publisher);
                    let stream = layer.map_or(StreamKey::audio(participant), |l| StreamKey::video(participant, l));
                    sim.conf.handle_relayed_keyframe_request(sim.now, b, stream);
                }
                PeerInput::Advance { ms } => sim.advance(Duration::from_millis(u64::from(ms))),
            }
            sim.drain();
        }
        sim.outputs.clear();
    });
}
