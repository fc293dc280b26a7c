//! A conference core with `size` participants that each publish audio and
//! three simulcast layers and receive in 3 audio and 4 video slots: what the
//! core bench and the allocation test route packets through.

use std::time::Instant;

use sft::core::conference::{Conference, ConferenceConfig, ParticipantSpec};
use sft::core::ids::{Identity, Layer, ParticipantId};

/// Participants are numbered 1..=`size`; the announcements their joins
/// produced are already drained.
pub fn simulcast_conference(size: u64, now: Instant) -> Conference {
    let mut conference = Conference::new(ConferenceConfig::default());
    for id in 1..=size {
        let spec = ParticipantSpec {
            identity: Identity { userid: format!("u{id}"), clientid: "c".into(), domain: "a.example".into() },
            publishes_audio: true,
            video_layers: vec![Layer::Low, Layer::Medium, Layer::High],
            audio_slot_mids: (0..3).map(|i| format!("a{i}")).collect(),
            video_slot_mids: (0..4).map(|i| format!("v{i}")).collect(),
        };
        conference.add_participant(now, ParticipantId(id), spec);
    }
    while conference.poll_output().is_some() {}
    conference
}
