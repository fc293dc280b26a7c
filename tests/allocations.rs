//! What the packet path allocates, counted by a global allocator:
//! - the conference core routes video and audio through a 10-participant
//!   conference without a single allocation, once the first packets set
//!   things up;
//! - the whole media edge (socket, str0m sessions, core, SRTP) allocates
//!   only what str0m's API makes it: one buffer per packet it sends and one
//!   per RTP packet it hands over. The sft-media thread's allocations are
//!   counted while str0m clients, driven by the test thread, publish and
//!   receive over loopback.
#![allow(clippy::disallowed_methods)] // the core takes time as input; a test supplies it

mod common;

use std::time::{Duration, Instant};

use common::counting::{allocations, set_thread_scope, Counting, Scope};
use common::str0m_client::{connect_all, vp8_keyframe, Str0mClient};
use common::{TestSft, TIMEOUT};

use common::simulcast_conference::simulcast_conference;
use sft::core::conference::{IncomingRtp, Routes};
use sft::core::ids::{Layer, ParticipantId, StreamKey};

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn routing_a_packet_through_the_core_allocates_nothing() {
    set_thread_scope(Scope::Marked);
    let start = Instant::now();
    let mut conf = simulcast_conference(10, start);
    let mut routes = Routes::default();
    let publishers: Vec<ParticipantId> = (1..=4).map(ParticipantId).collect();
    let packet = |stream, seq: u64, keyframe| IncomingRtp {
        stream,
        seq,
        timestamp: seq as u32 * 3000,
        keyframe,
        size: 1000,
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

    let before = allocations(Scope::Marked);
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
    let allocated = allocations(Scope::Marked) - before;
    assert!(forwarded > 10_000, "packets were routed ({forwarded} forwards)");
    assert_eq!(allocated, 0, "{allocated} allocations for {forwarded} forwards");
}

/// str0m 0.25 returns each datagram it sends as a fresh `Vec` (SRTP output),
/// and each RTP packet it receives as an event owning its payload: the
/// allocations per packet no caller of its API can avoid. Everything the SFT
/// adds on top (socket batches, routing, rewriting, queues) must be zero.
const STR0M_ALLOCATIONS_PER_SENT_PACKET: u64 = 1;
const STR0M_ALLOCATIONS_PER_RECEIVED_PACKET: u64 = 2;
/// Timers allocate too: str0m's RTCP reports and transport-wide congestion
/// feedback, the core's layer and speaker checks. Measured at about 450 a
/// second for this call; they scale with time, not packets.
const TIMER_ALLOCATIONS_PER_SECOND: f64 = 600.0;
const RECEIVERS: usize = 4;
const PACKETS: u64 = 2_000;

#[test]
fn the_media_edge_allocates_only_what_str0m_does() {
    // The clients run on this thread; only the SFT's threads are counted.
    set_thread_scope(Scope::Ignored);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    // The publisher sends far more than a real one (16 Mbit/s, to count many
    // packets quickly); a downlink estimate would rightly pause the slots.
    // This test counts the forwarding path's allocations, so estimation is off.
    let sft = runtime.block_on(TestSft::start("[media]\nbandwidth_estimation = false\n"));
    let http = reqwest::blocking::Client::new();
    let join = |name: &str, publish| Str0mClient::join(&http, sft.server.signalling_addr, "alloc", name, publish);
    let mut clients: Vec<Str0mClient> = (0..RECEIVERS).map(|i| join(&format!("r{i}"), false)).collect();
    clients.push(join("publisher", true));
    let mut buffer = vec![0u8; 2048];
    connect_all(&mut clients, &mut buffer, TIMEOUT);
    let payload = vp8_keyframe(1000);
    let mut frame = 0;
    let mut publish = |clients: &mut Vec<Str0mClient>, packets: u64| {
        for _ in 0..packets {
            frame += 1;
            let now = Instant::now();
            clients[RECEIVERS].publish(now, frame, &payload);
            clients.iter_mut().for_each(|c| c.drive(now, &mut buffer));
            std::thread::sleep(Duration::from_micros(500));
        }
    };
    // Warm-up: slots switch to the publisher, queues and caches reach size.
    publish(&mut clients, 500);
    let received_before: u64 = clients[..RECEIVERS].iter().map(|c| c.packets).sum();
    let (before, window) = (allocations(Scope::Other), Instant::now());
    publish(&mut clients, PACKETS);
    // What is still in flight arrives within a few milliseconds.
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(5));
        clients.iter_mut().for_each(|c| c.drive(Instant::now(), &mut buffer));
    }
    let (allocated, window) = (allocations(Scope::Other) - before, window.elapsed());
    let sent = clients[..RECEIVERS].iter().map(|c| c.packets).sum::<u64>() - received_before;
    assert!(sent >= PACKETS * RECEIVERS as u64 * 9 / 10, "only {sent} packets were forwarded");
    let str0m_share = sent * STR0M_ALLOCATIONS_PER_SENT_PACKET + PACKETS * STR0M_ALLOCATIONS_PER_RECEIVED_PACKET;
    let timers = (window.as_secs_f64() * TIMER_ALLOCATIONS_PER_SECOND) as u64;
    println!(
        "{allocated} allocations in {window:?} for {PACKETS} packets in and {sent} out; str0m's share {str0m_share}"
    );
    assert!(
        allocated <= str0m_share + timers,
        "{allocated} allocations in {window:?} for {PACKETS} packets in and {sent} out: \
         more than str0m's {str0m_share} and {timers} for timers"
    );
}
