//! The core's share of the packet path allocates nothing per packet: a
//! counting global allocator around routing video and audio packets through
//! a 10-participant conference, after the first packets set things up.
//! (str0m's share still allocates; see docs/performance.md.)
#![allow(clippy::disallowed_methods)] // the core takes time as input; a test supplies it

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sft::core::conference::{Conference, ConferenceConfig, IncomingRtp, ParticipantSpec, Routes};
use sft::core::ids::{Identity, Layer, ParticipantId, StreamKey};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards its arguments unchanged to `System`, which
// upholds `GlobalAlloc`'s contract; counting touches only an atomic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same layout the caller gave us, as `System::alloc` requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc`/`realloc` above, i.e. from `System`, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `dealloc`; `new_size` is passed on as given.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn conference(size: u64, now: Instant) -> Conference {
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

#[test]
fn routing_a_packet_through_the_core_allocates_nothing() {
    let start = Instant::now();
    let mut conf = conference(10, start);
    let mut routes = Routes::default();
    let publishers: Vec<ParticipantId> = (1..=4).map(ParticipantId).collect();
    let packet = |stream, seq: u64, keyframe| IncomingRtp {
        stream,
        seq,
        timestamp: seq as u32 * 3000,
        keyframe,
        audio_level: Some(30),
    };
    // Set-up: keyframes on every layer so slots switch to their sources,
    // and audio so the speaker list forms.
    for publisher in &publishers {
        for layer in [Layer::Low, Layer::Medium, Layer::High] {
            conf.handle_rtp(start, &packet(StreamKey::video(*publisher, layer), 1, true), &mut routes);
        }
        conf.handle_rtp(start, &packet(StreamKey::audio(*publisher), 1, false), &mut routes);
    }
    while conf.poll_output().is_some() {}
    routes.clear();

    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let mut forwarded = 0;
    for seq in 2..2_000u64 {
        // Wall time advances 1 ms per packet but stays within speaker and
        // layer timeouts, so no output is due.
        let now = start + Duration::from_millis(seq);
        for publisher in &publishers {
            conf.handle_rtp(now, &packet(StreamKey::video(*publisher, Layer::High), seq, false), &mut routes);
            conf.handle_rtp(now, &packet(StreamKey::audio(*publisher), seq, false), &mut routes);
            forwarded += routes.slots.len();
            routes.clear();
        }
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert!(forwarded > 10_000, "packets were routed ({forwarded} forwards)");
    assert_eq!(allocations, 0, "{allocations} allocations for {forwarded} forwards");
}
