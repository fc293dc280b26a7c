//! Forwarding cost with SRTP, against a raw UDP relay measured in the same
//! run. `cargo bench --bench forwarding` prints, per receiver count, the CPU
//! each spends per output packet and the SFT's throughput as a share of the
//! baseline's (same input rate, same payload, same socket batching).
//!
//! The SFT is the release binary as a child process, its CPU time read from
//! `/proc/<pid>/task/*/schedstat` (nanoseconds). Its clients are str0m
//! instances driven from this process (one publisher, N receivers, each with
//! ICE, DTLS-SRTP and the `sft` data channel), on loopback only. The
//! baseline is a thread that receives each datagram with the SFT's own
//! `MediaSocket` (recvmmsg + GRO) and re-sends it to N sockets (GSO runs),
//! its CPU time read from `/proc/thread-self/schedstat`.
#![allow(clippy::disallowed_methods)] // a benchmark measures real time

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sft::edge::udp::{Datagram, MediaSocket};
use sft::load::peer::setup_body;
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

/// Input packets per second from the one publisher.
const RATE: u32 = 1000;
const MEASURE: Duration = Duration::from_secs(3);
/// One VP8 frame per packet, well under the MTU.
const FRAME_BYTES: usize = 1000;
const RECEIVER_COUNTS: [usize; 2] = [4, 16];
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);

/// CPU nanoseconds of every thread of `pid` (`self` for this process).
fn process_cpu_ns(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc is readable");
    tasks.filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok()).map(|s| first_number(&s)).sum()
}

fn thread_cpu_ns() -> u64 {
    first_number(&std::fs::read_to_string("/proc/thread-self/schedstat").expect("/proc is readable"))
}

fn first_number(text: &str) -> u64 {
    text.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

struct SftProcess {
    child: Child,
    signalling: SocketAddr,
}

impl SftProcess {
    fn start() -> Self {
        let free = || TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let (signalling, metrics) = (free(), free());
        let media = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sft"))
            .env("SFT_SIGNALLING__LISTEN", signalling.to_string())
            .env("SFT_METRICS__LISTEN", metrics.to_string())
            .env("SFT_MEDIA__LISTEN", media.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the sft binary starts");
        let deadline = Instant::now() + SETUP_TIMEOUT;
        while reqwest::blocking::get(format!("http://{metrics}/healthz")).is_err() {
            assert!(Instant::now() < deadline, "the SFT never answered");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, signalling }
    }
}

impl Drop for SftProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A str0m client of the SFT: the publisher (frame mode, one VP8 m-line) or
/// a receiver (RTP mode, one video slot).
struct Client {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    next_timeout: Instant,
    publish: Option<Mid>,
    channel_open: bool,
    received: u64,
}

impl Client {
    fn join(sft: &SftProcess, conf: &str, name: &str, publish: bool) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let local = socket.local_addr().unwrap();
        let mut rtc = Rtc::builder().set_rtp_mode(!publish).clear_codecs().enable_vp8(true).build(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
        let mut change = rtc.sdp_api();
        let direction = if publish { Direction::SendOnly } else { Direction::RecvOnly };
        let mid = change.add_media(MediaKind::Video, direction, None, None, None);
        change.add_channel("sft".into());
        let (offer, pending): (_, SdpPendingOffer) = change.apply().unwrap();
        let body = setup_body(name, name, "bench", &offer.to_sdp_string(), None);
        let url = format!("http://{}/sft/{conf}", sft.signalling);
        let answer: serde_json::Value =
            reqwest::blocking::Client::new().post(url).json(&body).send().unwrap().json().unwrap();
        let sdp = answer["props"]["sdp"].as_str().unwrap_or_else(|| panic!("no answer: {answer}"));
        rtc.sdp_api().accept_answer(pending, SdpAnswer::from_sdp_string(sdp).unwrap()).unwrap();
        let now = Instant::now();
        Self {
            rtc,
            socket,
            local,
            next_timeout: now,
            publish: publish.then_some(mid),
            channel_open: false,
            received: 0,
        }
    }

    /// Feeds whatever arrived, ticks the clock, sends whatever is due.
    fn drive(&mut self, now: Instant, buffer: &mut [u8]) {
        loop {
            match self.socket.recv_from(buffer) {
                Ok((n, source)) => {
                    if let Ok(receive) = Receive::new(Protocol::Udp, source, self.local, &buffer[..n]) {
                        let _ = self.rtc.handle_input(Input::Receive(now, receive));
                    }
                    self.poll();
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("client socket: {e}"),
            }
        }
        if now >= self.next_timeout {
            let _ = self.rtc.handle_input(Input::Timeout(now));
        }
        self.poll();
    }

    fn poll(&mut self) {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(at)) => {
                    self.next_timeout = at;
                    return;
                }
                Ok(Output::Transmit(t)) => {
                    let _ = self.socket.send_to(&t.contents, t.destination);
                }
                Ok(Output::Event(Event::ChannelOpen(..))) => self.channel_open = true,
                Ok(Output::Event(Event::RtpPacket(_))) => self.received += 1,
                Ok(Output::Event(_)) => {}
                Err(e) => panic!("client: {e}"),
            }
        }
    }

    /// Writes one VP8 keyframe-shaped frame (one packet).
    fn publish(&mut self, now: Instant, frame: u64, payload: &Arc<[u8]>) {
        let Some(mid) = self.publish else { return };
        let Some(writer) = self.rtc.writer(mid) else { return };
        let Some(pt) = writer.payload_params().next().map(|p| p.pt()) else { return };
        let time = MediaTime::from_90khz(frame * 90);
        let _ = writer.write(pt, now, time, payload.clone());
        self.poll();
    }
}

/// A frame whose VP8 header says keyframe, so the SFT may switch to it.
fn keyframe() -> Arc<[u8]> {
    let mut frame = vec![0u8; FRAME_BYTES];
    frame[..10].copy_from_slice(&[0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00]);
    frame.into()
}

/// CPU nanoseconds the SFT spent per packet it sent to `receivers` clients.
fn measure_sft(receivers: usize) -> (f64, u64) {
    let sft = SftProcess::start();
    let conf = format!("bench-{receivers}");
    let mut clients: Vec<Client> = (0..receivers).map(|i| Client::join(&sft, &conf, &format!("r{i}"), false)).collect();
    clients.push(Client::join(&sft, &conf, "publisher", true));
    let mut buffer = vec![0u8; 2048];
    let deadline = Instant::now() + SETUP_TIMEOUT;
    while !clients.iter().all(|c| c.channel_open) {
        assert!(Instant::now() < deadline, "clients never connected");
        let now = Instant::now();
        clients.iter_mut().for_each(|c| c.drive(now, &mut buffer));
        std::thread::sleep(Duration::from_millis(1));
    }
    let payload = keyframe();
    let interval = Duration::from_secs(1) / RATE;
    let mut run = |duration: Duration, clients: &mut Vec<Client>, frame: &mut u64| {
        let start = Instant::now();
        let mut next_send = start;
        while start.elapsed() < duration {
            let now = Instant::now();
            while next_send <= now {
                *frame += 1;
                clients.last_mut().unwrap().publish(now, *frame, &payload);
                next_send += interval;
            }
            clients.iter_mut().for_each(|c| c.drive(now, &mut buffer));
            std::thread::sleep(Duration::from_micros(200));
        }
    };
    let mut frame = 0;
    // Warm up: media starts once each receiver's slot got the publisher.
    run(Duration::from_secs(1), &mut clients, &mut frame);
    let received_before: u64 = clients.iter().map(|c| c.received).sum();
    let cpu_before = process_cpu_ns(sft.child.id());
    run(MEASURE, &mut clients, &mut frame);
    let cpu = process_cpu_ns(sft.child.id()) - cpu_before;
    let sent = clients.iter().map(|c| c.received).sum::<u64>() - received_before;
    assert!(sent > 0, "no media reached the receivers");
    (cpu as f64 / sent as f64, sent)
}

/// CPU nanoseconds the raw relay spent per packet it sent to `receivers`.
fn measure_baseline(receivers: usize) -> (f64, u64) {
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
    let interval = Duration::from_secs(1) / RATE;
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
    println!("forwarding: {RATE} packets/s in, {FRAME_BYTES}-byte payloads, {} s", MEASURE.as_secs());
    println!("{:>9}  {:>16}  {:>16}  {:>10}", "receivers", "SFT ns/packet", "raw ns/packet", "SFT/raw");
    for receivers in RECEIVER_COUNTS {
        let (baseline, baseline_sent) = measure_baseline(receivers);
        let (sft, sft_sent) = measure_sft(receivers);
        println!(
            "{receivers:>9}  {sft:>16.0}  {baseline:>16.0}  {:>9.1}%   ({sft_sent} and {baseline_sent} packets out)",
            baseline / sft * 100.0
        );
    }
}
