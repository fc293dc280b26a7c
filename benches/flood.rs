//! A call under a junk flood, against the same call without it, same run.
//! `cargo bench --bench flood` prints, for each, the call's forwarding loss
//! and the SFT's CPU per forwarded packet, and how many flood datagrams the
//! SFT dropped.
//!
//! The call: one publisher at 1,000 packets/s and four receivers (str0m
//! clients driven from this process, as in the forwarding bench), the SFT
//! the release binary. The flood, from a thread of its own on four source
//! ports: random bytes, STUN Binding requests naming unknown ufrags, and
//! Binding requests naming a live session's ufrag with a wrong
//! MESSAGE-INTEGRITY (the expensive kind: the SFT finds the session and
//! checks the HMAC). Loopback only.
#![allow(clippy::disallowed_methods)] // a benchmark measures real time

mod common;
#[path = "../tests/common/str0m_client.rs"]
mod str0m_client;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{process_cpu_ns, SftProcess, SETUP_TIMEOUT};
use rand::{Rng, SeedableRng};
use str0m_client::{connect_all, vp8_keyframe, Str0mClient};

const RECEIVERS: usize = 4;
const PACKETS_PER_SECOND: u32 = 1000;
const MEASURE: Duration = Duration::from_secs(3);
/// Flood datagrams a second (sent in bursts of 100).
const FLOOD_RATE: u64 = 50_000;
const REPEATS: usize = 3;

/// A STUN Binding request with `username` and a MESSAGE-INTEGRITY that is
/// random bytes.
fn binding_request(rng: &mut impl Rng, username: &str) -> Vec<u8> {
    let mut attributes = Vec::new();
    attributes.extend_from_slice(&0x0006u16.to_be_bytes());
    attributes.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attributes.extend_from_slice(username.as_bytes());
    attributes.resize(attributes.len().div_ceil(4) * 4, 0);
    attributes.extend_from_slice(&0x0008u16.to_be_bytes());
    attributes.extend_from_slice(&20u16.to_be_bytes());
    attributes.extend((0..20).map(|_| rng.gen::<u8>()));
    let mut message = vec![0x00, 0x01];
    message.extend_from_slice(&(attributes.len() as u16).to_be_bytes());
    message.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    message.extend((0..12).map(|_| rng.gen::<u8>()));
    message.extend_from_slice(&attributes);
    message
}

/// Floods `target` until `stop`; returns the datagrams sent.
fn flood(target: SocketAddr, live_ufrag: String, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) {
    let sockets: Vec<UdpSocket> = (0..4).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let start = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        for n in 0..100u64 {
            let datagram = match n % 3 {
                0 => (0..rng.gen_range(20..1200)).map(|_| rng.gen::<u8>()).collect(),
                1 => {
                    let unknown = format!("{:08x}:evil", rng.gen::<u32>());
                    binding_request(&mut rng, &unknown)
                }
                _ => binding_request(&mut rng, &format!("{live_ufrag}:evil")),
            };
            let _ = sockets[n as usize % sockets.len()].send_to(&datagram, target);
        }
        let total = sent.fetch_add(100, Ordering::Relaxed) + 100;
        // Keep to the rate: sleep until this many datagrams are due.
        let due = Duration::from_secs_f64(total as f64 / FLOOD_RATE as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

/// One measurement of the call.
struct Round {
    loss: f64,
    /// SFT CPU nanoseconds, in all and per forwarded packet.
    cpu_ns: u64,
    per_packet_ns: f64,
    flood_sent: u64,
}

fn measure(sft: &SftProcess, clients: &mut [Str0mClient], flooded: bool, frame: &mut u64) -> Round {
    let mut buffer = vec![0u8; 2048];
    let payload = vp8_keyframe(1000);
    let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let flooder = flooded.then(|| {
        let (stop, sent, target, ufrag) = (stop.clone(), sent.clone(), sft.media, clients[0].server_ufrag.clone());
        std::thread::spawn(move || flood(target, ufrag, stop, sent))
    });
    let received_before: u64 = clients[..RECEIVERS].iter().map(|c| c.packets).sum();
    let cpu_before = process_cpu_ns(sft.child.id());
    let (interval, start) = (Duration::from_secs(1) / PACKETS_PER_SECOND, Instant::now());
    let (mut next_send, mut published) = (start, 0u64);
    while start.elapsed() < MEASURE {
        let now = Instant::now();
        while next_send <= now {
            *frame += 1;
            published += 1;
            clients[RECEIVERS].publish(now, *frame, &payload);
            next_send += interval;
        }
        clients.iter_mut().for_each(|c| c.drive(now, &mut buffer));
        std::thread::sleep(Duration::from_micros(200));
    }
    let cpu = process_cpu_ns(sft.child.id()) - cpu_before;
    stop.store(true, Ordering::Relaxed);
    if let Some(flooder) = flooder {
        flooder.join().unwrap();
    }
    // What is still in flight arrives within a few milliseconds.
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(5));
        clients.iter_mut().for_each(|c| c.drive(Instant::now(), &mut buffer));
    }
    let received = clients[..RECEIVERS].iter().map(|c| c.packets).sum::<u64>() - received_before;
    let expected = published * RECEIVERS as u64;
    let loss = 1.0 - received as f64 / expected as f64;
    Round {
        loss: loss.max(0.0),
        cpu_ns: cpu,
        per_packet_ns: cpu as f64 / received.max(1) as f64,
        flood_sent: sent.load(Ordering::Relaxed),
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs it too: only
    // measure when asked to bench.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    // The receivers give no transport-cc feedback: without estimation the
    // SFT forwards everything, so loss is the flood's doing alone.
    let sft = SftProcess::start_with(&[("SFT_MEDIA__BANDWIDTH_ESTIMATION", "false")]);
    let http = reqwest::blocking::Client::new();
    let join = |name: &str, publish| Str0mClient::join(&http, sft.signalling, "flood", name, publish);
    let mut clients: Vec<Str0mClient> = (0..RECEIVERS).map(|i| join(&format!("r{i}"), false)).collect();
    clients.push(join("publisher", true));
    connect_all(&mut clients, &mut vec![0u8; 2048], SETUP_TIMEOUT);
    let mut frame = 0;
    // Warm up: media starts once each receiver's slot got the publisher.
    measure(&sft, &mut clients, false, &mut frame);
    println!(
        "flood: 1 publisher at {PACKETS_PER_SECOND} packets/s, {RECEIVERS} receivers, {} s per round; flood {FLOOD_RATE} datagrams/s",
        MEASURE.as_secs()
    );
    println!(
        "{:>5}  {:>10}  {:>10}  {:>18}  {:>18}  {:>6}  {:>14}",
        "round", "calm loss", "flood loss", "calm ns/forwarded", "flood ns/forwarded", "ratio", "ns/flood dgram"
    );
    let dropped = || {
        ["unknown-source", "malformed", "rejected"]
            .map(|reason| sft.metric(&format!("sft_media_dropped_total{{reason=\"{reason}\"}}")))
            .iter()
            .sum::<f64>()
    };
    let dropped_before = dropped();
    let mut ratios = Vec::new();
    for round in 0..REPEATS {
        // Interleaved, so a noisy minute hits both.
        let calm = measure(&sft, &mut clients, false, &mut frame);
        let flood = measure(&sft, &mut clients, true, &mut frame);
        let ratio = flood.per_packet_ns / calm.per_packet_ns;
        let per_datagram = flood.cpu_ns.saturating_sub(calm.cpu_ns) as f64 / flood.flood_sent.max(1) as f64;
        println!(
            "{round:>5}  {:>9.2}%  {:>9.2}%  {:>18.0}  {:>18.0}  {ratio:>6.2}  {per_datagram:>14.0}",
            calm.loss * 100.0,
            flood.loss * 100.0,
            calm.per_packet_ns,
            flood.per_packet_ns
        );
        ratios.push(ratio);
    }
    let dropped = dropped() - dropped_before;
    ratios.sort_by(f64::total_cmp);
    println!(
        "CPU per forwarded packet, flood / calm: median {:.2} (range {:.2}-{:.2}); {dropped} datagrams dropped and counted",
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    );
}
