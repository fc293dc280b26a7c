//! What a second media worker buys: two conferences, each one publisher
//! and `RECEIVERS` receivers, offered more than one worker can forward;
//! `cargo bench --bench workers` prints the packets per second reaching
//! the receivers and the SFT's CPU per output packet with `media.workers`
//! 1 and 2, same run, rounds interleaved, and their ratio.
//!
//! Clients are str0m instances driven from this process (as in the
//! `forwarding` bench): on a 2-core machine they share the cores with the
//! SFT, so the ratio understates what two workers do on a bigger machine.
#![allow(clippy::disallowed_methods)] // a benchmark measures real time

mod common;
#[path = "../tests/common/str0m_client.rs"]
mod str0m_client;

use std::time::{Duration, Instant};

use common::{process_cpu_ns, SftProcess, SETUP_TIMEOUT};
use str0m_client::{connect_all, vp8_keyframe, Publishing, Str0mClient};

const CONFERENCES: usize = 2;
const RECEIVERS: usize = 12;
/// Input packets per second from each publisher: 2 × 12 × 14,000 = 336,000
/// output packets a second asked for, well past what one worker forwards
/// with a core of its own on this machine (about 170,000).
const RATE: u32 = 14000;
const FRAME_BYTES: usize = 1000;
const MEASURE: Duration = Duration::from_secs(3);
const REPEATS: usize = 3;

/// Output packets a second the SFT sent, and its CPU nanoseconds per
/// output packet, with `workers` media workers.
fn measure(workers: usize) -> Measurement {
    let workers = workers.to_string();
    // The receivers count packets without answering RTCP, so no estimate
    // would ever let a 80 Mbit/s stream through: forward without one.
    let settings = [("SFT_MEDIA__WORKERS", workers.as_str()), ("SFT_MEDIA__BANDWIDTH_ESTIMATION", "false")];
    let sft = SftProcess::start_with(&settings);
    let http = reqwest::blocking::Client::new();
    let mut clients = Vec::new();
    for conference in 0..CONFERENCES {
        let conf = format!("workers-{conference}");
        for i in 0..RECEIVERS {
            clients.push(Str0mClient::join(&http, sft.signalling, &conf, &format!("r{i}"), false));
        }
        clients.push(Str0mClient::join(&http, sft.signalling, &conf, "publisher", true));
    }
    let mut buffer = vec![0u8; 2048];
    connect_all(&mut clients, &mut buffer, SETUP_TIMEOUT);
    let publishers: Vec<usize> = (0..CONFERENCES).map(|c| c * (RECEIVERS + 1) + RECEIVERS).collect();
    let mut publishing = Publishing::new(publishers.clone(), RATE, vp8_keyframe(FRAME_BYTES));
    let mut run = |duration: Duration, clients: &mut Vec<Str0mClient>| publishing.run(clients, duration);
    let received = |clients: &[Str0mClient]| -> u64 {
        clients.iter().enumerate().filter(|(i, _)| !publishers.contains(i)).map(|(_, c)| c.packets).sum()
    };
    // Warm up: media starts once each receiver's slot got its publisher.
    run(Duration::from_secs(1), &mut clients);
    let forwarded = || sft.metric("sft_rtp_packets_forwarded_total");
    let (before, counted_before) = (forwarded(), received(&clients));
    let (cpu_before, start) = (process_cpu_ns(sft.child.id()), Instant::now());
    run(MEASURE, &mut clients);
    let (cpu, seconds) = (process_cpu_ns(sft.child.id()) - cpu_before, start.elapsed().as_secs_f64());
    let (sent, counted) = (forwarded() - before, received(&clients) - counted_before);
    assert!(sent > 0.0, "the SFT forwarded nothing");
    // On 2 cores two busy workers leave this process too little CPU to
    // drain every receiving socket: what the SFT sent is the measure.
    println!("  {workers} worker(s): forwarded {sent:.0} packets, the receivers counted {counted}");
    Measurement { packets_per_second: sent / seconds, cpu_ns_per_packet: cpu as f64 / sent }
}

struct Measurement {
    packets_per_second: f64,
    cpu_ns_per_packet: f64,
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs it too: only
    // measure when asked to bench.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    println!(
        "workers: {CONFERENCES} conferences × (1 publisher at {RATE} packets/s, {RECEIVERS} receivers), \
         {} s per measurement, median of {REPEATS} rounds",
        MEASURE.as_secs()
    );
    // Rounds interleave the two settings, so a noisy minute hits both.
    let mut rounds: Vec<(Measurement, Measurement)> = (0..REPEATS).map(|_| (measure(1), measure(2))).collect();
    let ratio = |(one, two): &(Measurement, Measurement)| two.packets_per_second / one.packets_per_second;
    rounds.sort_by(|a, b| ratio(a).total_cmp(&ratio(b)));
    for (round, label) in rounds.iter().zip(["low", "median", "high"]) {
        let (one, two) = round;
        println!(
            "{label:>6}: 1 worker {:>8.0} packets/s out ({:>5.0} ns CPU each); 2 workers {:>8.0} packets/s out \
             ({:>5.0} ns each); 2/1 = {:.2}×",
            one.packets_per_second,
            one.cpu_ns_per_packet,
            two.packets_per_second,
            two.cpu_ns_per_packet,
            ratio(round)
        );
    }
}
