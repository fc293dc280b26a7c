//! Building webrtc-rs peer connections that stay on loopback, and the
//! tracks a participant publishes and receives with. Shared by `sft-load`
//! and the integration tests, so both speak to the SFT the same way.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MediaEngine, MIME_TYPE_OPUS, MIME_TYPE_VP8};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::APIBuilder;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RTPCodecType,
};
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
use webrtc::track::track_local::track_local_static_sample::TrackLocalStaticSample;
use webrtc::track::track_local::TrackLocal;

/// The payload type webrtc-rs gives VP8 among its default codecs.
const VP8_PAYLOAD_TYPE: u8 = 96;

/// Simulcast layers from lowest to highest, as `rid`s.
pub const SIMULCAST_RIDS: [&str; 3] = ["l", "m", "h"];

/// A peer connection that gathers loopback candidates only: no packet of a
/// test or load run may leave the machine.
pub async fn loopback_peer_connection() -> Result<Arc<RTCPeerConnection>, webrtc::Error> {
    let mut media = MediaEngine::default();
    media.register_default_codecs()?;
    // RTX, as browsers offer it: repairs and bandwidth probes on a stream
    // webrtc-rs binds (and reports in its transport-cc feedback).
    let rtx = RTCRtpCodecCapability {
        mime_type: "video/rtx".into(),
        clock_rate: 90_000,
        sdp_fmtp_line: format!("apt={VP8_PAYLOAD_TYPE}"),
        ..Default::default()
    };
    media.register_codec(
        RTCRtpCodecParameters { capability: rtx, payload_type: VP8_PAYLOAD_TYPE + 1, ..Default::default() },
        RTPCodecType::Video,
    )?;
    for (uri, kind) in [
        ("urn:ietf:params:rtp-hdrext:ssrc-audio-level", RTPCodecType::Audio),
        ("urn:ietf:params:rtp-hdrext:sdes:mid", RTPCodecType::Audio),
        ("urn:ietf:params:rtp-hdrext:sdes:mid", RTPCodecType::Video),
        ("urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id", RTPCodecType::Video),
    ] {
        media.register_header_extension(RTCRtpHeaderExtensionCapability { uri: uri.into() }, kind, None)?;
    }
    let registry = register_default_interceptors(Registry::new(), &mut media)?;
    let mut settings = SettingEngine::default();
    settings.set_ip_filter(Box::new(|ip: IpAddr| ip.is_loopback()));
    settings.set_include_loopback_candidate(true);
    settings.set_network_types(vec![NetworkType::Udp4]);
    // mDNS would open multicast sockets on every interface.
    settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
    let api = APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .build();
    Ok(Arc::new(api.new_peer_connection(RTCConfiguration::default()).await?))
}

fn codec(mime: &str) -> RTCRtpCodecCapability {
    let (clock_rate, channels) = if mime == MIME_TYPE_OPUS { (48_000, 2) } else { (90_000, 0) };
    RTCRtpCodecCapability { mime_type: mime.into(), clock_rate, channels, ..Default::default() }
}

fn send_only() -> Option<RTCRtpTransceiverInit> {
    Some(RTCRtpTransceiverInit { direction: RTCRtpTransceiverDirection::Sendonly, send_encodings: vec![] })
}

/// Adds a send-only Opus track.
pub async fn add_audio(pc: &RTCPeerConnection, stream_id: &str) -> Result<Arc<TrackLocalStaticSample>, webrtc::Error> {
    let track = Arc::new(TrackLocalStaticSample::new(codec(MIME_TYPE_OPUS), "audio".into(), stream_id.into()));
    pc.add_transceiver_from_track(track.clone() as Arc<dyn TrackLocal + Send + Sync>, send_only()).await?;
    Ok(track)
}

/// One VP8 track a publisher writes frames to, with its `rid` (or
/// `"single"` without simulcast).
pub type VideoTrack = (Arc<TrackLocalStaticSample>, &'static str);

/// Adds a send-only VP8 transceiver: one track, or the three simulcast
/// layers of [`SIMULCAST_RIDS`]. The sender is where PLIs arrive.
pub async fn add_video(
    pc: &RTCPeerConnection,
    stream_id: &str,
    simulcast: bool,
) -> Result<(Vec<VideoTrack>, Arc<RTCRtpSender>), webrtc::Error> {
    let tracks: Vec<VideoTrack> = if simulcast {
        SIMULCAST_RIDS
            .into_iter()
            .map(|rid| {
                let track = TrackLocalStaticSample::new_with_rid(
                    codec(MIME_TYPE_VP8),
                    "video".into(),
                    rid.into(),
                    stream_id.into(),
                );
                (Arc::new(track), rid)
            })
            .collect()
    } else {
        vec![(Arc::new(TrackLocalStaticSample::new(codec(MIME_TYPE_VP8), "video".into(), stream_id.into())), "single")]
    };
    let transceiver =
        pc.add_transceiver_from_track(tracks[0].0.clone() as Arc<dyn TrackLocal + Send + Sync>, send_only()).await?;
    let sender = transceiver.sender().await;
    for (track, _) in &tracks[1..] {
        sender.add_encoding(track.clone() as Arc<dyn TrackLocal + Send + Sync>).await?;
    }
    Ok((tracks, sender))
}

/// The keyframe requests (PLIs) that reached a publisher, layer by layer.
#[derive(Debug, Default)]
pub struct KeyframeRequests {
    wanted: Vec<AtomicBool>,
    received: AtomicU64,
}

impl KeyframeRequests {
    /// Whether a PLI reached layer `layer` (its index in the tracks) since
    /// the last call; clears the request.
    pub fn take(&self, layer: usize) -> bool {
        self.wanted.get(layer).is_some_and(|wanted| wanted.swap(false, Ordering::Relaxed))
    }

    /// How many PLIs reached any layer so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// Reads the RTCP of each of `tracks`' layers and records its PLIs.
///
/// webrtc-rs's `read_rtcp` reads only the first encoding's RTCP: each
/// simulcast layer has a reader of its own, and its interceptors (the NACK
/// responder among them) see RTCP only while it is read. Reading only the
/// first left PLIs for `m` and `h` unanswered until the next periodic
/// keyframe, and NACKs for them unrepaired. A PLI names one layer, so only
/// that layer restarts at a keyframe (real encoders do the same; restarting
/// all three would add two needless keyframes to the uplink).
pub fn watch_plis(sender: &Arc<RTCRtpSender>, tracks: &[VideoTrack]) -> Arc<KeyframeRequests> {
    let requests = Arc::new(KeyframeRequests {
        wanted: tracks.iter().map(|_| AtomicBool::new(false)).collect(),
        received: AtomicU64::new(0),
    });
    let simulcast = tracks.len() > 1;
    for (layer, &(_, rid)) in tracks.iter().enumerate() {
        let (sender, requests) = (sender.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let read = if simulcast { sender.read_rtcp_simulcast(rid).await } else { sender.read_rtcp().await };
                let Ok((packets, _)) = read else { return };
                let plis = packets.iter().filter(|p| p.as_any().downcast_ref::<PictureLossIndication>().is_some());
                let plis = plis.count() as u64;
                if plis > 0 {
                    requests.received.fetch_add(plis, Ordering::Relaxed);
                    requests.wanted[layer].store(true, Ordering::Relaxed);
                }
            }
        });
    }
    requests
}

/// Adds the receive slots (`docs/contract.md` section 3.1: one recvonly m-line per slot).
pub async fn add_receive_slots(pc: &RTCPeerConnection, audio: usize, video: usize) -> Result<(), webrtc::Error> {
    for (kind, count) in [(RTPCodecType::Audio, audio), (RTPCodecType::Video, video)] {
        for _ in 0..count {
            let init =
                RTCRtpTransceiverInit { direction: RTCRtpTransceiverDirection::Recvonly, send_encodings: vec![] };
            pc.add_transceiver_from_kind(kind, Some(init)).await?;
        }
    }
    Ok(())
}
