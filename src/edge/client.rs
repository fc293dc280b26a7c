//! One client session: its str0m `Rtc`, and the maps between the client's
//! m-lines and the core's streams and slots.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::bwe::Bitrate;
use str0m::channel::ChannelId;
use str0m::format::Codec;
use str0m::media::{KeyframeRequestKind, MediaKind as RtcKind, Mid};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, Ssrc};
use str0m::Rtc;

use crate::core::ids::{ConferenceKey, Layer, MediaKind, ParticipantId, SlotRef, StreamKey};
use crate::core::messages::ServerMessage;
use crate::core::pacing::Pacer;

use super::estimate::DownlinkEstimate;
use super::offer::OfferSummary;
use super::Owner;

/// The data channel label of `docs/contract.md` section 3.2.
pub const CHANNEL_LABEL: &str = "sft";

/// How long after DTLS a client without an open data channel waits for media.
const MEDIA_FALLBACK: Duration = Duration::from_secs(1);

/// One packet on its way into receive slots, from a local publisher or a
/// relay link: everything a slot needs, with the payload shared, not copied.
pub struct Media {
    pub stream: StreamKey,
    pub codec: Codec,
    pub seq: u64,
    pub timestamp: u32,
    pub marker: bool,
    pub keyframe: bool,
    /// RFC 6464: 0 loudest, 127 silence.
    pub audio_level: Option<u8>,
    pub voice_activity: bool,
    pub payload: Arc<[u8]>,
    /// When it reached this SFT.
    pub received: Instant,
}

/// How a received SSRC maps to the core's view, learned on its first packet.
#[derive(Debug, Clone, Copy)]
struct InboundStream {
    ssrc: Ssrc,
    stream: StreamKey,
}

/// A receive slot as the WebRTC stack sees it.
#[derive(Debug)]
struct SlotTx {
    mid: Mid,
    ssrc: Ssrc,
    /// The receiver's payload type for each codec it accepts in this slot.
    payload_types: Vec<(Codec, str0m::format::PayloadParams)>,
}

/// A session's id and who set it up.
#[derive(Debug)]
pub struct Session {
    pub sessid: String,
    pub userid: String,
    pub owner: Owner,
}

pub struct Client {
    pub id: ParticipantId,
    pub conference: ConferenceKey,
    /// The driver's number for `conference`.
    pub conference_number: u64,
    pub session: Session,
    pub rtc: Rtc,
    /// Our ICE ufrag in this session, which new addresses' STUN requests name.
    pub ufrag: String,
    /// Addresses this client's datagrams came from (ICE may use several),
    /// oldest first.
    pub remote_addrs: Vec<SocketAddr>,
    /// Where its last datagram came from: the path in use.
    pub last_source: Option<SocketAddr>,
    pub last_rx: Instant,
    pub next_timeout: Option<Instant>,
    /// Set while the client has output to poll; keeps it in the dirty list once.
    pub dirty: bool,
    /// RTP was written since this client's clock last moved. str0m sends a
    /// written packet only once time advances (an input), so the driver feeds
    /// a timeout before polling; without it the packet would wait for the
    /// client's next STUN or RTCP packet, up to a second later.
    pub media_queued: bool,
    /// When ICE and DTLS came up.
    pub connected_at: Option<Instant>,
    /// The client opened its `sft` data channel, the sign it is fully set up.
    pub media_started: bool,
    /// Which downlink estimate its layers follow.
    pub downlink: DownlinkEstimate,
    /// Data channel messages it may send (`limits.client_messages_per_second`).
    pub messages: Pacer,
    channel: Option<ChannelId>,
    /// Messages produced before the data channel opened. Only the newest
    /// of each type matters: each one carries the whole state.
    queued: Vec<ServerMessage>,
    audio_publish: Option<Mid>,
    video_publish: Option<Mid>,
    video_simulcast: bool,
    inbound: Vec<InboundStream>,
    audio_slots: Vec<SlotTx>,
    video_slots: Vec<SlotTx>,
}

impl Client {
    pub fn with_downlink(self, downlink: DownlinkEstimate) -> Self {
        Self { downlink, ..self }
    }

    /// At most `per_second` data channel messages a second, after a burst of twice that.
    pub fn with_message_limit(self, per_second: u32) -> Self {
        Self { messages: Pacer::new(per_second, per_second.saturating_mul(2)), ..self }
    }

    /// Wraps an `Rtc` that has accepted the offer `summary` describes.
    pub fn new(
        id: ParticipantId,
        conference: ConferenceKey,
        conference_number: u64,
        session: Session,
        mut rtc: Rtc,
        summary: &OfferSummary,
        now: Instant,
    ) -> Self {
        let audio_slots = summary.audio_slots.iter().filter_map(|mid| slot_tx(&mut rtc, mid)).collect();
        let video_slots = summary.video_slots.iter().filter_map(|mid| slot_tx(&mut rtc, mid)).collect();
        let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        Self {
            id,
            conference,
            conference_number,
            session,
            rtc,
            ufrag,
            remote_addrs: Vec::new(),
            last_source: None,
            last_rx: now,
            next_timeout: Some(now),
            dirty: false,
            media_queued: false,
            connected_at: None,
            media_started: false,
            downlink: DownlinkEstimate::new(None),
            // Unlimited until `with_message_limit`.
            messages: Pacer::new(u32::MAX, u32::MAX),
            channel: None,
            queued: Vec::new(),
            audio_publish: summary.audio_publish.as_deref().map(Mid::from),
            video_publish: summary.video_publish.as_ref().map(|v| Mid::from(v.mid.as_str())),
            video_simulcast: summary.video_publish.as_ref().is_some_and(|v| v.simulcast),
            inbound: Vec::new(),
            audio_slots,
            video_slots,
        }
    }

    /// The core's stream key and the codec of a received packet; `None` when
    /// it belongs to no publication this client announced.
    pub fn classify(&mut self, packet: &RtpPacket) -> Option<(StreamKey, Codec)> {
        let ssrc = packet.header.ssrc;
        let stream = match self.inbound.iter().find(|s| s.ssrc == ssrc) {
            Some(known) => known.stream,
            None => {
                let stream = self.learn_inbound(ssrc)?;
                self.inbound.push(InboundStream { ssrc, stream });
                stream
            }
        };
        let codec = self.rtc.codec_config().iter().find(|p| p.pt() == packet.header.payload_type)?.spec().codec;
        Some((stream, codec))
    }

    fn learn_inbound(&mut self, ssrc: Ssrc) -> Option<StreamKey> {
        let mut api = self.rtc.direct_api();
        let rx = api.stream_rx(&ssrc)?;
        let (mid, rid) = (rx.mid(), rx.rid());
        if Some(mid) == self.audio_publish {
            return Some(StreamKey::audio(self.id));
        }
        if Some(mid) != self.video_publish {
            return None;
        }
        // str0m NACKs gaps only on streams whose offer named an RTX SSRC
        // (ssrc-group FID). Senders that resend on the main SSRC (webrtc-rs,
        // for one) name none, yet repair what the SFT asks for: ask them all,
        // so one lossy uplink does not become loss for every receiver.
        rx.suppress_nack(false);
        let layer = match rid {
            Some(rid) => Layer::from_rid(&rid)?,
            None => Layer::High,
        };
        Some(StreamKey::video(self.id, layer))
    }

    /// Writes a forwarded packet into one of this client's receive slots.
    /// Returns false when the slot cannot carry the codec.
    pub fn write_rtp(&mut self, slot: SlotRef, seq: u64, timestamp: u32, media: &Media) -> bool {
        let slots = match slot.kind {
            MediaKind::Audio => &self.audio_slots,
            MediaKind::Video => &self.video_slots,
        };
        let Some(tx) = slots.get(slot.index) else {
            return false;
        };
        let Some((_, params)) = tx.payload_types.iter().find(|(c, _)| *c == media.codec) else {
            return false;
        };
        let pt = params.pt();
        let ssrc = tx.ssrc;
        let ext_vals = ExtensionValues {
            // str0m keeps RFC 6464 levels as negative dBov.
            audio_level: media.audio_level.map(|level| -(level.min(127) as i8)),
            voice_activity: media.audio_level.map(|_| media.voice_activity),
            ..Default::default()
        };
        let mut api = self.rtc.direct_api();
        let Some(stream) = api.stream_tx(&ssrc) else {
            return false;
        };
        let write = RtpWrite::new(pt, seq.into(), timestamp, media.received, media.payload.clone())
            .marker(media.marker)
            .ext_vals(ext_vals)
            .nackable(slot.kind == MediaKind::Video);
        stream.write_rtp(write);
        self.media_queued = true;
        true
    }

    /// Whether media may flow to this client. Not before DTLS is up (queued
    /// packets would arrive as a stale burst), and not before the client
    /// opened its data channel: some WebRTC stacks start their RTP
    /// receivers only after DTLS and lose streams whose packets come first.
    /// A client that never opens the channel gets media a second after DTLS.
    pub fn media_ready(&self, now: Instant) -> bool {
        self.media_started || self.connected_at.is_some_and(|t| now.saturating_duration_since(t) >= MEDIA_FALLBACK)
    }

    pub fn video_slot_count(&self) -> usize {
        self.video_slots.len()
    }

    /// The slot a keyframe request from this client (as a receiver) is about.
    pub fn slot_of(&self, mid: Mid) -> Option<SlotRef> {
        let find =
            |slots: &[SlotTx], kind| slots.iter().position(|s| s.mid == mid).map(|index| SlotRef { kind, index });
        find(&self.video_slots, MediaKind::Video).or_else(|| find(&self.audio_slots, MediaKind::Audio))
    }

    /// Lets the send-side estimate probe this client's downlink up to
    /// `bits_per_second`, never past the configured ceiling.
    pub fn probe_toward(&mut self, bits_per_second: u64) {
        let desired = self.downlink.cap(bits_per_second);
        self.rtc.bwe().set_bitrate(Bitrate::ZERO, Bitrate::bps(desired));
    }

    /// Asks this client (as a publisher) for a keyframe of one stream.
    pub fn request_keyframe(&mut self, stream: StreamKey) {
        let mid = match stream.kind {
            MediaKind::Audio => return,
            MediaKind::Video => self.video_publish,
        };
        let Some(mid) = mid else {
            return;
        };
        let rid = stream.layer.filter(|_| self.video_simulcast).map(|l| l.rid().into());
        if let Some(rx) = self.rtc.direct_api().stream_rx_by_mid(mid, rid) {
            rx.request_keyframe(KeyframeRequestKind::Pli);
        }
    }

    pub fn channel_opened(&mut self, id: ChannelId, label: &str) {
        if label != CHANNEL_LABEL {
            return;
        }
        self.channel = Some(id);
        for message in std::mem::take(&mut self.queued) {
            self.send_text(&message);
        }
    }

    /// Sends a message on the `sft` channel, or queues it until it opens.
    pub fn send_message(&mut self, message: ServerMessage) {
        if self.channel.is_some() {
            self.send_text(&message);
        } else {
            let kind = std::mem::discriminant(&message);
            self.queued.retain(|queued| std::mem::discriminant(queued) != kind);
            self.queued.push(message);
        }
    }

    fn send_text(&mut self, message: &ServerMessage) {
        let Some(id) = self.channel else {
            return;
        };
        let json = serde_json::to_string(message).expect("server messages serialize");
        if let Some(mut channel) = self.rtc.channel(id) {
            if !matches!(channel.write(false, json.as_bytes()), Ok(true)) {
                tracing::debug!(participant = %self.id, "data channel full; message dropped");
            }
        }
    }

    pub fn is_sft_channel(&self, id: ChannelId) -> bool {
        self.channel == Some(id)
    }
}

/// How many sent video packets, and for how long, a receive slot keeps to
/// answer NACKs with: what str0m keeps by default.
const RESEND_CACHE_PACKETS: usize = 2000;
const RESEND_CACHE_AGE: Duration = Duration::from_secs(3);
/// The largest share of a slot's bytes in the last second that may be
/// resends before str0m drops the queued ones. str0m's default, 15 %, is
/// one or two packets a second at a low layer's 25 packets a second: with
/// 5 % loss, and a NACK repeated each time a resend is late or lost, the
/// cap was hit often enough that a lost packet stayed lost and the video
/// froze until the next keyframe. Half was too much the other way: behind
/// a congested link, resends took bandwidth from fresh packets and loss
/// fed on itself (27–41 % loss in two of three runs). 30 % passed both.
const RESEND_SHARE_CAP: Option<f32> = Some(0.3);

fn slot_tx(rtc: &mut Rtc, mid: &str) -> Option<SlotTx> {
    let mid = Mid::from(mid);
    let media = rtc.media(mid)?;
    let kind = media.kind();
    let remote_pts = media.remote_pts().to_vec();
    let payload_types = rtc
        .codec_config()
        .iter()
        .filter(|p| remote_pts.contains(&p.pt()))
        .filter(|p| match kind {
            RtcKind::Audio => p.spec().codec.is_audio(),
            RtcKind::Video => p.spec().codec.is_video(),
        })
        .map(|p| (p.spec().codec, *p))
        .collect();
    let mut api = rtc.direct_api();
    let stream = api.stream_tx_by_mid(mid, None)?;
    if kind == RtcKind::Video {
        stream.set_rtx_cache(RESEND_CACHE_PACKETS, RESEND_CACHE_AGE, RESEND_SHARE_CAP);
    }
    let ssrc = stream.ssrc();
    Some(SlotTx { mid, ssrc, payload_types })
}
