//! The light participant of `sft-load --engine str0m`: real ICE, DTLS-SRTP
//! and the `sft` data channel, but one str0m `Rtc` in RTP mode on one task
//! and one socket per participant. It packetizes its synthetic frames itself
//! and reads what it receives as RTP packets (decrypted, never depacketized
//! or decoded), so one load process drives hundreds of participants where
//! webrtc-rs peers, with their interceptor chains and tasks per track, run
//! out of CPU at a few dozen.
#![allow(clippy::disallowed_methods)] // a load peer measures real time

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpPacket, RtpWrite};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

use super::impair::ImpairedPath;
use super::peer::{self, layer_frame, PeerPlan, AUDIO_FRAME_BYTES, AUDIO_INTERVAL, FRAME_INTERVAL, KEYFRAME_EVERY};
use super::rtc::SIMULCAST_RIDS;
use super::stats::{ReceiveStats, Received};
use super::synthetic::{self, Tag};
use super::LoadError;

/// Payload bytes per RTP packet: frames larger than this are split.
const MAX_PAYLOAD: usize = 1100;
/// Datagrams read in one go before str0m is polled.
const READ_BURST: usize = 64;

/// A joined light participant; dropping it drops the session silently
/// (the SFT notices after its idle timeout), [`LightSession::close`] says
/// goodbye first.
pub struct LightSession {
    stop: Option<oneshot::Sender<()>>,
    driver: tokio::task::JoinHandle<()>,
    /// Between the peer and the SFT, when the plan impairs it.
    _path: Option<ImpairedPath>,
}

impl LightSession {
    pub async fn close(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut self.driver).await;
    }
}

impl Drop for LightSession {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Offers, joins through SETUP and drives the session until its data
/// channel opens; returns the session and how long the join took.
pub async fn join(
    plan: &PeerPlan,
    epoch: Instant,
    http: &reqwest::Client,
    stats: Arc<Mutex<ReceiveStats>>,
) -> Result<(LightSession, Duration), LoadError> {
    let fail = |why: String| LoadError::Join(plan.userid.clone(), why);
    let socket = UdpSocket::bind("127.0.0.1:0").await.map_err(|e| fail(format!("a loopback UDP port: {e}")))?;
    let local = socket.local_addr().map_err(|e| fail(e.to_string()))?;
    let mut rtc = Rtc::builder()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_vp8(true)
        .enable_opus(true, false)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").map_err(|e| fail(e.to_string()))?);
    let (offer, pending, media) = offer(&mut rtc, plan);
    let (answer, path, started) = peer::negotiate(plan, http, &offer.to_sdp_string()).await?;
    let answer = SdpAnswer::from_sdp_string(&answer).map_err(|e| fail(format!("the SETUP answer: {e}")))?;
    rtc.sdp_api().accept_answer(pending, answer).map_err(|e| fail(format!("the SETUP answer: {e}")))?;
    let publisher = media.publish.map(|mids| Publisher::new(&rtc, mids, plan, epoch));
    let (opened_tx, opened) = oneshot::channel();
    let (stop, stopped) = oneshot::channel();
    let driver = Driver {
        rtc,
        socket,
        local,
        epoch,
        stats,
        publisher,
        kinds: HashMap::new(),
        opened: Some(opened_tx),
        next_timeout: Instant::now(),
    };
    let driver = tokio::spawn(driver.run(stopped));
    let session = LightSession { stop: Some(stop), driver, _path: path };
    tokio::time::timeout(peer::JOIN_TIMEOUT.saturating_sub(started.elapsed()), opened)
        .await
        .map_err(|_| fail("the data channel never opened".into()))?
        .map_err(|_| fail("the connection closed".into()))?;
    Ok((session, started.elapsed()))
}

/// The m-lines a participant offers: what it publishes (audio, then video
/// with or without simulcast), its receive slots, and the data channel.
struct OfferedMedia {
    publish: Option<(Mid, Mid)>,
}

fn offer(rtc: &mut Rtc, plan: &PeerPlan) -> (SdpOffer, SdpPendingOffer, OfferedMedia) {
    let mut change = rtc.sdp_api();
    let publish = plan.publish.then(|| {
        let stream_id = Some(plan.userid.clone());
        let audio = change.add_media(MediaKind::Audio, Direction::SendOnly, stream_id.clone(), None, None);
        let simulcast = plan.simulcast.then(|| {
            let mut simulcast = Simulcast::new();
            SIMULCAST_RIDS.into_iter().for_each(|rid| simulcast.add_send_layer(SimulcastLayer::new(rid)));
            simulcast
        });
        let video = change.add_media(MediaKind::Video, Direction::SendOnly, stream_id, None, simulcast);
        (audio, video)
    });
    for (kind, count) in [(MediaKind::Audio, plan.audio_slots), (MediaKind::Video, plan.video_slots)] {
        for _ in 0..count {
            change.add_media(kind, Direction::RecvOnly, None, None, None);
        }
    }
    change.add_channel("sft".into());
    let (offer, pending) = change.apply().expect("an offer with m-lines changes something");
    (offer, pending, OfferedMedia { publish })
}

/// The payload type the answer settled on for `codec` in m-line `mid`.
fn payload_type(rtc: &Rtc, mid: Mid, codec: Codec) -> Option<Pt> {
    let remote = rtc.media(mid)?.remote_pts().to_vec();
    rtc.codec_config().iter().find(|p| remote.contains(&p.pt()) && p.spec().codec == codec).map(|p| p.pt())
}

/// One stream this participant sends: its sequence numbers, and for video
/// its frame count (a keyframe every [`KEYFRAME_EVERY`]) and picture ids.
struct SendStream {
    mid: Mid,
    rid: Option<Rid>,
    /// The rid whose share of `--video-kbps` this layer sends.
    shape: &'static str,
    pt: Pt,
    seq: u64,
    frame: usize,
    picture_id: u16,
}

impl SendStream {
    fn new(mid: Mid, rid: Option<&'static str>, pt: Pt) -> Self {
        Self { mid, rid: rid.map(Rid::from), shape: rid.unwrap_or("h"), pt, seq: 1, frame: 0, picture_id: 0 }
    }

    fn write(&mut self, rtc: &mut Rtc, now: Instant, time: u32, marker: bool, payload: Vec<u8>) {
        let mut api = rtc.direct_api();
        let Some(stream) = api.stream_tx_by_mid(self.mid, self.rid) else { return };
        let payload: Arc<[u8]> = payload.into();
        let write = RtpWrite::new(self.pt, self.seq.into(), time, now, payload).marker(marker).nackable(true);
        stream.write_rtp(write);
        self.seq += 1;
    }
}

/// Writes audio every [`AUDIO_INTERVAL`] and a frame per video layer every
/// [`FRAME_INTERVAL`], tagged like the webrtc-rs peers' frames.
struct Publisher {
    sender: u32,
    video_kbps: u32,
    audio: Option<SendStream>,
    video: Vec<SendStream>,
    next_audio: Instant,
    next_video: Instant,
}

impl Publisher {
    fn new(rtc: &Rtc, (audio_mid, video_mid): (Mid, Mid), plan: &PeerPlan, epoch: Instant) -> Self {
        let audio = payload_type(rtc, audio_mid, Codec::Opus).map(|pt| SendStream::new(audio_mid, None, pt));
        let video = payload_type(rtc, video_mid, Codec::Vp8).map_or_else(Vec::new, |pt| {
            if plan.simulcast {
                SIMULCAST_RIDS.into_iter().map(|rid| SendStream::new(video_mid, Some(rid), pt)).collect()
            } else {
                vec![SendStream::new(video_mid, None, pt)]
            }
        });
        Self { sender: plan.sender, video_kbps: plan.video_kbps, audio, video, next_audio: epoch, next_video: epoch }
    }

    fn next_due(&self) -> Instant {
        self.next_audio.min(self.next_video)
    }

    /// Restarts every layer at a keyframe, as the webrtc-rs peers do (see
    /// `peer.rs` for why every layer and not only the one named).
    fn keyframe_wanted(&mut self) {
        self.video.iter_mut().for_each(|stream| stream.frame = 0);
    }

    /// Writes what is due at `now`; returns whether anything was.
    fn publish_due(&mut self, rtc: &mut Rtc, now: Instant, epoch: Instant) -> bool {
        let due = now >= self.next_audio || now >= self.next_video;
        let micros = now.saturating_duration_since(epoch).as_micros() as u64;
        let tag = Tag { sender: self.sender, sent_micros: micros };
        if now >= self.next_audio {
            self.next_audio = next_send(self.next_audio, AUDIO_INTERVAL, now);
            if let Some(audio) = &mut self.audio {
                let time = (micros * 48 / 1000) as u32;
                audio.write(rtc, now, time, false, synthetic::audio_frame(tag, AUDIO_FRAME_BYTES));
            }
        }
        if now >= self.next_video {
            self.next_video = next_send(self.next_video, FRAME_INTERVAL, now);
            let time = (micros * 90 / 1000) as u32;
            for stream in &mut self.video {
                let keyframe = stream.frame.is_multiple_of(KEYFRAME_EVERY);
                let (width, height, size) = layer_frame(stream.shape, keyframe, self.video_kbps);
                let frame = synthetic::video_frame(tag, keyframe, width, height, size);
                let chunks = frame.chunks(MAX_PAYLOAD).count();
                for (index, chunk) in frame.chunks(MAX_PAYLOAD).enumerate() {
                    let payload = [&vp8_descriptor(index == 0, stream.picture_id)[..], chunk].concat();
                    stream.write(rtc, now, time, index + 1 == chunks, payload);
                }
                stream.frame += 1;
                stream.picture_id = (stream.picture_id + 1) & 0x7fff;
            }
        }
        due
    }
}

/// When to send next after a send due at `scheduled`: one `interval`
/// later, or one interval from `now` when the task fell a whole interval
/// behind, so a stall never turns into frames sent back to back.
fn next_send(scheduled: Instant, interval: Duration, now: Instant) -> Instant {
    let next = scheduled + interval;
    if next <= now {
        now + interval
    } else {
        next
    }
}

/// The RFC 7741 payload descriptor with a 15-bit picture id: X and I set,
/// S on a frame's first packet, partition 0.
fn vp8_descriptor(start: bool, picture_id: u16) -> [u8; 4] {
    let [high, low] = picture_id.to_be_bytes();
    [if start { 0x90 } else { 0x80 }, 0x80, 0x80 | (high & 0x7f), low]
}

/// One participant's session: the socket, str0m, and what it publishes.
struct Driver {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    epoch: Instant,
    stats: Arc<Mutex<ReceiveStats>>,
    publisher: Option<Publisher>,
    /// Per received SSRC: whether it is video.
    kinds: HashMap<u32, bool>,
    /// Told once the data channel opens.
    opened: Option<oneshot::Sender<()>>,
    next_timeout: Instant,
}

impl Driver {
    async fn run(mut self, mut stopped: oneshot::Receiver<()>) {
        let mut buffer = vec![0u8; 2048];
        loop {
            let mut wake = self.next_timeout;
            if let Some(publisher) = self.publisher.as_ref().filter(|_| self.opened.is_none()) {
                wake = wake.min(publisher.next_due());
            }
            tokio::select! {
                _ = &mut stopped => {
                    // RTCP BYE and DTLS close_notify: the SFT ends the
                    // session at once instead of after its idle timeout.
                    if self.rtc.close().is_ok() {
                        let _ = self.poll();
                    }
                    return;
                }
                readable = self.socket.readable() => {
                    if readable.is_err() {
                        return;
                    }
                    self.read(&mut buffer);
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
            }
            let now = Instant::now();
            let mut wrote = false;
            if let Some(publisher) = self.publisher.as_mut().filter(|_| self.opened.is_none()) {
                wrote = publisher.publish_due(&mut self.rtc, now, self.epoch);
            }
            // str0m releases written packets on a tick.
            if (wrote || now >= self.next_timeout) && self.rtc.handle_input(Input::Timeout(now)).is_err() {
                return;
            }
            // Closed by the SFT (or a fatal error): nothing more will flow,
            // and writes would only queue up.
            if self.poll().is_err() || !self.rtc.is_alive() {
                return;
            }
        }
    }

    /// Feeds str0m what arrived, a burst at a time.
    fn read(&mut self, buffer: &mut [u8]) {
        for _ in 0..READ_BURST {
            let (length, source) = match self.socket.try_recv_from(buffer) {
                Ok(received) => received,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => return,
            };
            let Ok(receive) = Receive::new(Protocol::Udp, source, self.local, &buffer[..length]) else { continue };
            if self.rtc.handle_input(Input::Receive(Instant::now(), receive)).is_err() || self.poll().is_err() {
                return;
            }
        }
    }

    /// Sends what str0m has for the network and handles its events, until
    /// it names its next timeout.
    fn poll(&mut self) -> Result<(), str0m::RtcError> {
        loop {
            match self.rtc.poll_output()? {
                Output::Timeout(at) => {
                    self.next_timeout = at;
                    return Ok(());
                }
                Output::Transmit(transmit) => {
                    // A full socket buffer drops the datagram, as a network would.
                    let _ = self.socket.try_send_to(&transmit.contents, transmit.destination);
                }
                Output::Event(event) => self.handle(event),
            }
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::ChannelOpen(..) => {
                if let Some(opened) = self.opened.take() {
                    let _ = opened.send(());
                }
            }
            Event::RtpPacket(packet) => self.account(&packet),
            Event::KeyframeRequest(_) => {
                if let Some(publisher) = &mut self.publisher {
                    publisher.keyframe_wanted();
                }
            }
            _ => {}
        }
    }

    fn account(&mut self, packet: &RtpPacket) {
        let ssrc = packet.header.ssrc;
        let rtc = &mut self.rtc;
        let video = *self.kinds.entry(*ssrc).or_insert_with(|| {
            let mid = rtc.direct_api().stream_rx(&ssrc).map(|rx| rx.mid());
            mid.and_then(|mid| rtc.media(mid)).is_some_and(|media| media.kind() == MediaKind::Video)
        });
        let now_micros = self.epoch.elapsed().as_micros() as u64;
        let received = Received::parse(
            *ssrc,
            packet.header.sequence_number,
            packet.header.marker,
            video,
            &packet.payload,
            now_micros,
        );
        self.stats.lock().expect("stats lock").record(&received);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::keyframe::{is_vp8_keyframe, vp8_frame_start};

    #[test]
    fn descriptors_mark_the_first_packet_of_a_frame_and_carry_the_picture_id() {
        let start = vp8_descriptor(true, 0x1234);
        assert_eq!(vp8_frame_start(&[&start[..], &[0x00]].concat()), Some(4));
        assert_eq!(vp8_frame_start(&vp8_descriptor(false, 0x1234)), None, "a continuation starts no frame");
        assert_eq!(u16::from_be_bytes([start[2] & 0x7f, start[3]]), 0x1234);
        let frame = synthetic::video_frame(Tag { sender: 3, sent_micros: 9 }, true, 320, 180, 400);
        let payload = [&start[..], &frame[..]].concat();
        assert!(is_vp8_keyframe(&payload), "the SFT sees a keyframe");
        assert_eq!(synthetic::read_tag(&payload, true), Some(Tag { sender: 3, sent_micros: 9 }));
    }

    #[test]
    fn a_late_schedule_restarts_from_now_instead_of_bursting() {
        let now = Instant::now();
        assert_eq!(next_send(now, FRAME_INTERVAL, now), now + FRAME_INTERVAL, "on time");
        let a_little_late = now + FRAME_INTERVAL / 2;
        assert_eq!(next_send(now, FRAME_INTERVAL, a_little_late), now + FRAME_INTERVAL, "keeps the beat");
        let stalled = now + Duration::from_secs(1);
        assert_eq!(next_send(now, FRAME_INTERVAL, stalled), stalled + FRAME_INTERVAL, "no burst after a stall");
    }
}
