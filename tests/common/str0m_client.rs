//! A light client of the SFT built on str0m and driven by the caller's
//! thread: the forwarding bench and the memory test use it where many
//! sessions must be cheap. One VP8 m-line (publisher in frame mode, or a
//! receive slot in RTP mode) and `docs/contract.md`'s `sft` data channel.
//!
//! Once its data channel is open, a receiver counts SRTP datagrams instead
//! of decrypting them, so the client side stays far cheaper than the SFT.
#![allow(clippy::disallowed_methods)] // the caller drives it with real time
#![allow(dead_code)] // each user takes a different part

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sft::load::peer::setup_body;
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

pub struct Str0mClient {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    next_timeout: Instant,
    publish: Option<Mid>,
    pub channel_open: bool,
    /// RTP packets received (receivers) or sent (the publisher).
    pub packets: u64,
    /// The SFT's ICE ufrag in this session (from its answer).
    pub server_ufrag: String,
}

impl Str0mClient {
    /// Joins `conf` through the signalling server at `signalling` (`host:port`)
    /// with `name` as its user, client and session id.
    pub fn join(
        http: &reqwest::blocking::Client,
        signalling: SocketAddr,
        conf: &str,
        name: &str,
        publish: bool,
    ) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("a loopback UDP port");
        socket.set_nonblocking(true).expect("non-blocking socket");
        let local = socket.local_addr().expect("bound socket has an address");
        let mut rtc = Rtc::builder().set_rtp_mode(!publish).clear_codecs().enable_vp8(true).build(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, "udp").expect("loopback host candidate"));
        let mut change = rtc.sdp_api();
        let direction = if publish { Direction::SendOnly } else { Direction::RecvOnly };
        let mid = change.add_media(MediaKind::Video, direction, None, None, None);
        change.add_channel("sft".into());
        let (offer, pending): (_, SdpPendingOffer) = change.apply().expect("an offer");
        let body = setup_body(name, name, name, &offer.to_sdp_string(), None);
        let answer: serde_json::Value = http
            .post(format!("http://{signalling}/sft/{conf}"))
            .json(&body)
            .send()
            .and_then(|r| r.json())
            .expect("SETUP answered");
        let sdp = answer["props"]["sdp"].as_str().unwrap_or_else(|| panic!("no answer: {answer}"));
        let server_ufrag = sdp.lines().find_map(|l| l.strip_prefix("a=ice-ufrag:")).unwrap_or_default().to_owned();
        rtc.sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(sdp).expect("answer parses"))
            .expect("answer accepted");
        Self {
            rtc,
            socket,
            local,
            next_timeout: Instant::now(),
            publish: publish.then_some(mid),
            channel_open: false,
            packets: 0,
            server_ufrag,
        }
    }

    /// Feeds whatever arrived, ticks the clock, sends whatever is due.
    pub fn drive(&mut self, now: Instant, buffer: &mut [u8]) {
        loop {
            match self.socket.recv_from(buffer) {
                Ok((n, _)) if self.channel_open && self.publish.is_none() && is_srtp(&buffer[..n]) => {
                    self.packets += 1;
                }
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
        // Polling walks every stream: only when the clock moved past a
        // timeout, so that idle receivers cost the driving loop nothing.
        if now >= self.next_timeout {
            let _ = self.rtc.handle_input(Input::Timeout(now));
            self.poll();
        }
    }

    fn poll(&mut self) {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(at)) => {
                    self.next_timeout = at;
                    return;
                }
                Ok(Output::Transmit(t)) => {
                    if self.publish.is_some() && is_srtp(&t.contents) {
                        self.packets += 1;
                    }
                    let _ = self.socket.send_to(&t.contents, t.destination);
                }
                Ok(Output::Event(Event::ChannelOpen(..))) => self.channel_open = true,
                Ok(Output::Event(_)) => {}
                Err(e) => panic!("client: {e}"),
            }
        }
    }

    /// Writes one frame (one packet when it fits the MTU).
    pub fn publish(&mut self, now: Instant, frame: u64, payload: &Arc<[u8]>) {
        let Some(mid) = self.publish else { return };
        let Some(writer) = self.rtc.writer(mid) else { return };
        let Some(pt) = writer.payload_params().next().map(|p| p.pt()) else { return };
        let time = MediaTime::from_90khz(frame * 90);
        let _ = writer.write(pt, now, time, payload.clone());
        // str0m sends what was written once its clock moves.
        let _ = self.rtc.handle_input(Input::Timeout(now));
        self.poll();
    }
}

/// Drives `clients` until every one has its data channel open (ICE, DTLS and
/// SCTP are up); panics after `limit`.
pub fn connect_all(clients: &mut [Str0mClient], buffer: &mut [u8], limit: Duration) {
    let deadline = Instant::now() + limit;
    while !clients.iter().all(|c| c.channel_open) {
        assert!(Instant::now() < deadline, "clients never connected");
        let now = Instant::now();
        clients.iter_mut().for_each(|c| c.drive(now, buffer));
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Frames sent at a steady rate by some of the clients while all of them
/// are driven: the benches' load.
pub struct Publishing {
    /// Indexes of the publishing clients.
    pub publishers: Vec<usize>,
    /// Frames (one packet each) a second from every publisher.
    pub rate: u32,
    pub payload: Arc<[u8]>,
    frame: u64,
    buffer: Vec<u8>,
}

impl Publishing {
    pub fn new(publishers: Vec<usize>, rate: u32, payload: Arc<[u8]>) -> Self {
        Self { publishers, rate, payload, frame: 0, buffer: vec![0; 2048] }
    }

    /// Publishes and drives `clients` for `duration`.
    pub fn run(&mut self, clients: &mut [Str0mClient], duration: Duration) {
        let interval = Duration::from_secs(1) / self.rate;
        let start = Instant::now();
        let mut next_send = start;
        while start.elapsed() < duration {
            let now = Instant::now();
            while next_send <= now {
                self.frame += 1;
                for &p in &self.publishers {
                    clients[p].publish(now, self.frame, &self.payload);
                }
                next_send += interval;
            }
            clients.iter_mut().for_each(|c| c.drive(now, &mut self.buffer));
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// RTP rather than RTCP, STUN or DTLS (RFC 7983 and RFC 5761 demultiplexing).
fn is_srtp(datagram: &[u8]) -> bool {
    matches!(datagram, [128..=191, second, ..] if !(192..=223).contains(second))
}

/// A `bytes`-long frame whose VP8 header says keyframe, so the SFT may
/// switch a receiver to it at once.
pub fn vp8_keyframe(bytes: usize) -> Arc<[u8]> {
    let mut frame = vec![0u8; bytes.max(10)];
    frame[..10].copy_from_slice(&[0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00]);
    frame.into()
}
