//! Forwarding cost with SRTP, against a raw UDP relay measured in the same
//! run. `cargo bench --bench forwarding` prints, per receiver count and input
//! rate, the CPU each spends per output packet and the SFT's throughput (output
//! packets per CPU-second) as a share of the baseline's (same input rate,
//! same payload, same socket batching). At the low rate every packet is a
//! wake-up of its own; at the high rate packets arrive in bursts, as a
//! loaded server sees them.
//!
//! The SFT is the release binary as a child process, its CPU time read from
//! `/proc/<pid>/task/*/schedstat` (nanoseconds). Its clients are str0m
//! instances driven from this process (one publisher, N receivers, each with
//! ICE, DTLS-SRTP and the `sft` data channel), on loopback only; once set
//! up, receivers count SRTP datagrams instead of decrypting them, so this
//! process keeps up at the high rate. The
//! baseline is a thread that receives each datagram with the SFT's own
//! `MediaSocket` (recvmmsg + GRO) and re-sends it to N sockets (GSO runs),
//! its CPU time read from `/proc/thread-self/schedstat`.
#![allow(clippy::disallowed_methods)] // a benchmark measures real time

mod common;
#[path = "../tests/common/str0m_client.rs"]
mod str0m_client;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{process_cpu_ns, SftProcess, SETUP_TIMEOUT};
use sft::edge::udp::{Datagram, MediaSocket};
use str0m_client::{connect_all, vp8_keyframe, Publishing, Str0mClient};

/// Input packets per second from the one publisher.
const RATES: [u32; 2] = [1000, 5000];
const MEASURE: Duration = Duration::from_secs(3);
/// One VP8 frame per packet, well under the MTU.
const FRAME_BYTES: usize = 1000;
const RECEIVER_COUNTS: [usize; 2] = [4, 16];
/// Rounds per receiver count; the median is reported (this machine's noise
/// moves single runs by ±10 %).
const REPEATS: usize = 3;

fn thread_cpu_ns() -> u64 {
    sft::process::thread_cpu_nanos().expect("/proc/thread-self/schedstat is readable")
}

/// CPU nanoseconds the SFT spent per packet it sent to `receivers` clients,
/// and how many it sent, at each of `RATES`.
fn measure_sft(receivers: usize) -> Vec<(f64, u64)> {
    // The receivers count packets without decrypting them, so they send no
    // transport-cc feedback: an estimate would hold them at its starting
    // rate. Forward without one (its cost is measured on its own, see
    // docs/performance.md, "The cost of bandwidth estimation").
    let sft = SftProcess::start_with(&[("SFT_MEDIA__BANDWIDTH_ESTIMATION", "false")]);
    let conf = format!("bench-{receivers}");
    let http = reqwest::blocking::Client::new();
    let join = |name: &str, publish| Str0mClient::join(&http, sft.signalling, &conf, name, publish);
    let mut clients: Vec<Str0mClient> = (0..receivers).map(|i| join(&format!("r{i}"), false)).collect();
    clients.push(join("publisher", true));
    let mut buffer = vec![0u8; 2048];
    connect_all(&mut clients, &mut buffer, SETUP_TIMEOUT);
    let mut publishing = Publishing::new(vec![receivers], RATES[0], vp8_keyframe(FRAME_BYTES));
    let mut run = |rate: u32, duration: Duration, clients: &mut Vec<Str0mClient>| {
        publishing.rate = rate;
        publishing.run(clients, duration);
    };
    RATES
        .iter()
        .map(|&rate| {
            // Warm up: media starts once each receiver's slot got the publisher.
            run(rate, Duration::from_secs(1), &mut clients);
            let received_before: u64 = clients[..receivers].iter().map(|c| c.packets).sum();
            let cpu_before = process_cpu_ns(sft.child.id());
            run(rate, MEASURE, &mut clients);
            let cpu = process_cpu_ns(sft.child.id()) - cpu_before;
            let sent = clients[..receivers].iter().map(|c| c.packets).sum::<u64>() - received_before;
            assert!(sent > 0, "no media reached the receivers");
            (cpu as f64 / sent as f64, sent)
        })
        .collect()
}

/// CPU nanoseconds the raw relay spent per packet it sent to `receivers`.
fn measure_baseline(receivers: usize, rate: u32) -> (f64, u64) {
    let sockets: Vec<UdpSocket> = (0..receivers).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    sockets.iter().for_each(|s| s.set_nonblocking(true).unwrap());
    let destinations: Vec<SocketAddr> = sockets.iter().map(|s| s.local_addr().unwrap()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let relay_stop = stop.clone();
    let relay = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let mut socket = MediaSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            addr_tx.send(socket.local_addr().unwrap()).unwrap();
            let mut queue: Vec<Datagram> = Vec::new();
            let mut cpu_start = None;
            while !relay_stop.load(Ordering::Relaxed) {
                if tokio::time::timeout(Duration::from_millis(50), socket.readable()).await.is_err() {
                    continue;
                }
                cpu_start.get_or_insert_with(thread_cpu_ns);
                socket
                    .recv_batch(|_, datagram| {
                        for destination in &destinations {
                            queue.push(Datagram { destination: *destination, contents: datagram.to_vec() });
                        }
                    })
                    .unwrap();
                socket.send_all(&mut queue);
            }
            thread_cpu_ns() - cpu_start.unwrap_or_else(thread_cpu_ns)
        })
    });
    let relay_addr = addr_rx.recv().unwrap();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let payload = vec![0u8; FRAME_BYTES + 40]; // SRTP and RTP headers the SFT's packets carry
    let interval = Duration::from_secs(1) / rate;
    let mut buffer = vec![0u8; 2048];
    let mut received = 0u64;
    let start = Instant::now();
    let mut next_send = start;
    while start.elapsed() < MEASURE {
        let now = Instant::now();
        while next_send <= now {
            sender.send_to(&payload, relay_addr).unwrap();
            next_send += interval;
        }
        for socket in &sockets {
            while socket.recv_from(&mut buffer).is_ok() {
                received += 1;
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    std::thread::sleep(Duration::from_millis(50));
    for socket in &sockets {
        while socket.recv_from(&mut buffer).is_ok() {
            received += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let cpu = relay.join().unwrap();
    assert!(received > 0, "the relay forwarded nothing");
    (cpu as f64 / received as f64, received)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs it too: only
    // measure when asked to bench.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    println!(
        "forwarding: {FRAME_BYTES}-byte payloads, {} s per measurement, median of {REPEATS} rounds (range)",
        MEASURE.as_secs()
    );
    println!(
        "{:>9}  {:>11}  {:>14}  {:>14}  {:>8}",
        "receivers", "packets/s in", "SFT ns/packet", "raw ns/packet", "SFT/raw"
    );
    for receivers in RECEIVER_COUNTS {
        // Rounds interleave baseline and SFT, so a noisy minute hits both.
        let rounds: Vec<Vec<Sample>> = (0..REPEATS)
            .map(|_| {
                let baselines: Vec<(f64, u64)> = RATES.iter().map(|&rate| measure_baseline(receivers, rate)).collect();
                let sfts = measure_sft(receivers);
                baselines.into_iter().zip(sfts).map(|(raw, sft)| Sample { raw, sft }).collect()
            })
            .collect();
        for (i, rate) in RATES.iter().enumerate() {
            let mut samples: Vec<&Sample> = rounds.iter().map(|round| &round[i]).collect();
            samples.sort_by(|a, b| a.ratio().total_cmp(&b.ratio()));
            let (low, median, high) = (samples[0], samples[samples.len() / 2], samples[samples.len() - 1]);
            println!(
                "{receivers:>9}  {rate:>11}  {:>14.0}  {:>14.0}  {:>7.1}%   ({:.1}-{:.1} %; {} and {} packets out)",
                median.sft.0,
                median.raw.0,
                median.ratio() * 100.0,
                low.ratio() * 100.0,
                high.ratio() * 100.0,
                median.sft.1,
                median.raw.1,
            );
        }
    }
}

/// One round's figures at one rate: (CPU ns per output packet, packets out).
struct Sample {
    raw: (f64, u64),
    sft: (f64, u64),
}

impl Sample {
    /// The SFT's throughput per core as a share of the raw relay's.
    fn ratio(&self) -> f64 {
        self.raw.0 / self.sft.0
    }
}
