//! Test harness: an in-process SFT on loopback, and synthetic WebRTC peers
//! built with webrtc-rs (a second, independent WebRTC stack).
#![allow(clippy::disallowed_methods)] // tests read the real clock to bound their waits
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod counting;
pub mod fed;
pub mod ivf;
pub mod netns;
pub mod process;
pub mod proxy;
pub mod simulcast_conference;
pub mod str0m_client;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sft::config::Config;
use sft::load::impair::ImpairedPath;
use sft::load::rtc::{self, KeyframeRequests, VideoTrack};
use sft::server::Server;
use webrtc::data_channel::data_channel_message::DataChannelMessage;
use webrtc::data_channel::RTCDataChannel;
use webrtc::media::Sample;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtp::extension::audio_level_extension::AudioLevelExtension;
use webrtc::rtp::extension::HeaderExtension;
use webrtc::track::track_local::track_local_static_sample::TrackLocalStaticSample;

/// For tests whose calls are big enough that two at once starve the CPU of
/// this 2-core machine, which bandwidth estimates read as congestion: one
/// such call at a time within a test binary.
pub async fn one_big_call_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static CALLS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    CALLS.lock().await
}

/// Both rustls backends are in the test build (aws-lc-rs from sft, ring from
/// webrtc-rs), so rustls cannot pick one by itself: the tests pick sft's.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Every wait in the tests is bounded by this.
pub const TIMEOUT: Duration = Duration::from_secs(20);

pub struct TestSft {
    pub server: Server,
}

impl TestSft {
    /// An SFT on loopback with OS-chosen ports; `extra` is TOML merged over
    /// the embedded default (it may not repeat the listen keys).
    pub async fn start(extra: &str) -> Self {
        Self::start_with_media(extra, "127.0.0.1:0").await
    }

    /// An SFT whose media socket listens on `media` (a fixed port is
    /// needed with `media.public_ip`).
    pub async fn start_with_media(extra: &str, media: &str) -> Self {
        install_crypto_provider();
        let path = std::env::temp_dir().join(format!("sft-test-{}.toml", rand_suffix()));
        std::fs::write(&path, extra).unwrap();
        let listen = [
            ("SFT_SIGNALLING__LISTEN", "127.0.0.1:0"),
            ("SFT_MEDIA__LISTEN", media),
            ("SFT_METRICS__LISTEN", "127.0.0.1:0"),
        ]
        .map(|(key, addr)| (key.to_string(), format!("\"{addr}\"")));
        // tests/run.sh runs some suites again with one media worker.
        let workers = std::env::var("SFT_MEDIA__WORKERS").ok().map(|n| ("SFT_MEDIA__WORKERS".to_string(), n));
        let config = Config::load(Some(&path), listen.into_iter().chain(workers)).expect("test config is valid");
        std::fs::remove_file(&path).unwrap();
        let server = Server::start(&config).await.expect("SFT starts");
        Self { server }
    }

    pub async fn metrics(&self) -> String {
        metrics_at(self.server.metrics_addr).await
    }

    /// The value of one sample line of `/metrics`, e.g. `sft_participants{role="local"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_at(self.server.metrics_addr, series).await
    }

    /// Polls `series` every 100 ms until `accept` holds; panics after
    /// [`TIMEOUT`], saying `what` was awaited and the last value.
    pub async fn wait_for_metric(&self, series: &str, what: &str, accept: impl Fn(f64) -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let value = self.metric(series).await;
            if accept(value) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {series} is {value}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Where a peer sends its SETUP: an in-process SFT or a child process.
pub trait Signalling {
    fn url(&self, path: &str) -> String;
}

impl Signalling for TestSft {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.signalling_addr)
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

/// What a peer publishes as video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Video {
    None,
    Single,
    Simulcast,
}

#[derive(Debug, Clone)]
pub struct PeerOptions {
    pub conf: String,
    pub userid: String,
    /// Put into every audio payload, so receivers know whose audio they got.
    pub marker: u8,
    pub audio: bool,
    pub video: Video,
    pub audio_slots: usize,
    pub video_slots: usize,
    /// RFC 6464 level this peer "speaks" at.
    pub audio_level: u8,
    /// The anchor domain to name in SETUP, for a federated conference.
    pub anchor: Option<String>,
}

impl PeerOptions {
    pub fn new(conf: &str, userid: &str, marker: u8) -> Self {
        Self {
            conf: conf.into(),
            userid: userid.into(),
            marker,
            audio: true,
            video: Video::Simulcast,
            audio_slots: 3,
            video_slots: 3,
            audio_level: 40,
            anchor: None,
        }
    }
}

/// What arrived in one receive slot (m-line).
#[derive(Debug, Default, Clone)]
pub struct SlotStats {
    pub packets: u64,
    pub ssrcs: HashSet<u32>,
    /// Steps between consecutive packets that were not +1.
    pub seq_jumps: u64,
    pub jumps: Vec<(u16, u16)>,
    last_seq: Option<u16>,
    /// Widths of the VP8 keyframes seen (which layer / which file).
    pub keyframe_widths: Vec<u16>,
    /// Audio markers seen, in order of arrival.
    pub markers: Vec<u8>,
    /// Every packet's arrival time and sequence number.
    pub arrivals: Vec<(Instant, u16)>,
}

#[derive(Debug, Default)]
pub struct PeerState {
    pub confparts: Vec<Value>,
    pub speakers: Vec<Value>,
    pub slots: HashMap<String, SlotStats>,
    pub channel_open: bool,
}

pub struct Peer {
    pub options: PeerOptions,
    pub sessid: String,
    pub pc: Arc<RTCPeerConnection>,
    pub channel: Arc<RTCDataChannel>,
    pub state: Arc<Mutex<PeerState>>,
    publishing: Arc<AtomicBool>,
    /// PLIs this peer received as a publisher.
    keyframe_requests: Option<Arc<KeyframeRequests>>,
    pub answer_sdp: String,
}

/// The SETUP body for `sdp`.
pub fn setup_body(sessid: &str, userid: &str, sdp: &str) -> Value {
    sft::load::peer::setup_body(sessid, userid, &format!("{userid}-client"), sdp, None)
}

impl Peer {
    /// Audio packets received from the peer with `marker`, over all slots.
    pub fn heard(&self, marker: u8) -> usize {
        self.all_slot_stats().values().map(|s| s.markers.iter().filter(|m| **m == marker).count()).sum()
    }

    /// This peer's SETUP body, naming its anchor when it has one.
    pub fn setup_body(&self, sdp: &str) -> Value {
        let userid = &self.options.userid;
        let clientid = format!("{userid}-client");
        sft::load::peer::setup_body(&self.sessid, userid, &clientid, sdp, self.options.anchor.as_deref())
    }
}

impl Peer {
    /// Builds the offer, SETUPs at `sft` and waits for the data channel.
    pub async fn join(sft: &impl Signalling, options: PeerOptions) -> Self {
        Self::join_authorized(sft, options, None).await
    }

    /// Like [`join`](Self::join), with an `Authorization` header.
    pub async fn join_authorized(sft: &impl Signalling, options: PeerOptions, authorization: Option<String>) -> Self {
        let peer = Self::offer_only(options).await;
        let (status, answer) = peer.post_setup(sft, authorization).await;
        assert_eq!(status, 200, "SETUP of {}: {answer}", peer.options.userid);
        peer.accept_answer(answer["props"]["sdp"].as_str().unwrap().to_owned()).await
    }

    /// POSTs this peer's SETUP; returns the status and the JSON answer.
    pub async fn post_setup(&self, sft: &impl Signalling, authorization: Option<String>) -> (u16, Value) {
        let offer = self.pc.local_description().await.unwrap().sdp;
        let mut request =
            reqwest::Client::new().post(sft.url(&format!("/sft/{}", self.options.conf))).json(&self.setup_body(&offer));
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// A peer with its offer made (gathering complete), not yet sent anywhere.
    pub async fn offer_only(options: PeerOptions) -> Self {
        install_crypto_provider();
        let pc = rtc::loopback_peer_connection().await.unwrap();
        let state = Arc::new(Mutex::new(PeerState::default()));
        let publishing = Arc::new(AtomicBool::new(true));
        let mut keyframe_requests = None;
        if options.audio {
            let track = rtc::add_audio(&pc, &options.userid).await.unwrap();
            tokio::spawn(publish_audio(track, options.marker, options.audio_level, publishing.clone()));
        }
        if options.video != Video::None {
            let (tracks, sender) =
                rtc::add_video(&pc, &options.userid, options.video == Video::Simulcast).await.unwrap();
            let requests = rtc::watch_plis(&sender, &tracks);
            keyframe_requests = Some(requests.clone());
            tokio::spawn(publish_video(tracks, requests, publishing.clone()));
        }
        rtc::add_receive_slots(&pc, options.audio_slots, options.video_slots).await.unwrap();
        let reader_state = state.clone();
        pc.on_track(Box::new(move |track, _receiver, transceiver| {
            let state = reader_state.clone();
            Box::pin(async move {
                let mid = transceiver.mid().map(|m| m.to_string()).unwrap_or_default();
                tokio::spawn(async move {
                    while let Ok((packet, _)) = track.read_rtp().await {
                        record_packet(&state, &mid, &packet);
                    }
                });
            })
        }));
        let channel = pc.create_data_channel("sft", None).await.unwrap();
        let open_state = state.clone();
        channel.on_open(Box::new(move || {
            open_state.lock().unwrap().channel_open = true;
            Box::pin(async {})
        }));
        let message_state = state.clone();
        channel.on_message(Box::new(move |message: DataChannelMessage| {
            if let Ok(value) = serde_json::from_slice::<Value>(&message.data) {
                let mut state = message_state.lock().unwrap();
                match value["type"].as_str() {
                    Some("CONFPART") => state.confparts.push(value),
                    Some("SPEAKERS") => state.speakers.push(value),
                    _ => {}
                }
            }
            Box::pin(async {})
        }));
        let offer = pc.create_offer(None).await.unwrap();
        let mut gathered = pc.gathering_complete_promise().await;
        pc.set_local_description(offer).await.unwrap();
        let _ = gathered.recv().await;
        let sessid = format!("{}-{}", options.userid, rand_suffix() % 100_000);
        Self { options, sessid, pc, channel, state, publishing, keyframe_requests, answer_sdp: String::new() }
    }

    pub async fn accept_answer(mut self, sdp: String) -> Self {
        self.pc.set_remote_description(RTCSessionDescription::answer(sdp.clone()).unwrap()).await.unwrap();
        self.answer_sdp = sdp;
        let state = self.state.clone();
        wait_for(&format!("{}'s data channel to open", self.options.userid), || state.lock().unwrap().channel_open)
            .await;
        self
    }

    /// How many PLIs reached this peer's video layers so far.
    pub fn plis_received(&self) -> u64 {
        self.keyframe_requests.as_ref().map_or(0, |requests| requests.received())
    }

    pub fn confpart(&self) -> Option<Value> {
        self.state.lock().unwrap().confparts.last().cloned()
    }

    /// The userids in the newest CONFPART, sorted.
    pub fn participants(&self) -> Vec<String> {
        let Some(confpart) = self.confpart() else { return Vec::new() };
        let mut users: Vec<String> = confpart["participants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["userid"].as_str().unwrap().to_owned())
            .collect();
        users.sort();
        users
    }

    /// `(userid, layer)` per video slot in the newest CONFPART, sorted.
    pub fn video_slots(&self) -> Vec<(String, String)> {
        let Some(confpart) = self.confpart() else { return Vec::new() };
        let mut slots: Vec<(String, String)> = confpart["slots"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["kind"] == "video")
            .map(|s| (s["userid"].as_str().unwrap().to_owned(), s["layer"].as_str().unwrap_or("").to_owned()))
            .collect();
        slots.sort();
        slots
    }

    /// The mid of the video slot CONFPART says carries `userid`.
    pub fn slot_mid_of(&self, userid: &str, kind: &str) -> Option<String> {
        let confpart = self.confpart()?;
        confpart["slots"]
            .as_array()?
            .iter()
            .find(|s| s["userid"] == userid && s["kind"] == kind)
            .map(|s| s["mid"].as_str().unwrap().to_owned())
    }

    pub fn slot_stats(&self, mid: &str) -> SlotStats {
        self.state.lock().unwrap().slots.get(mid).cloned().unwrap_or_default()
    }

    /// Sends a PLI for the stream arriving in slot `mid`, as a decoder that
    /// lost the picture would.
    pub async fn send_pli(&self, mid: &str) {
        let ssrc = *self.slot_stats(mid).ssrcs.iter().next().expect("media arrived in the slot");
        let pli = PictureLossIndication { sender_ssrc: 0, media_ssrc: ssrc };
        self.pc.write_rtcp(&[Box::new(pli)]).await.unwrap();
    }

    pub fn all_slot_stats(&self) -> HashMap<String, SlotStats> {
        self.state.lock().unwrap().slots.clone()
    }

    pub async fn send(&self, message: Value) {
        self.channel.send_text(message.to_string()).await.unwrap();
    }

    /// Stops publishing (as a client that went silent would).
    pub fn stop_publishing(&self) {
        self.publishing.store(false, Ordering::SeqCst);
    }

    pub async fn close(&self) {
        self.stop_publishing();
        let _ = self.pc.close().await;
    }
}

fn record_packet(state: &Mutex<PeerState>, mid: &str, packet: &webrtc::rtp::packet::Packet) {
    let mut state = state.lock().unwrap();
    let slot = state.slots.entry(mid.to_owned()).or_default();
    slot.packets += 1;
    slot.ssrcs.insert(packet.header.ssrc);
    let seq = packet.header.sequence_number;
    if let Some(last) = slot.last_seq {
        if seq != last.wrapping_add(1) {
            slot.seq_jumps += 1;
            slot.jumps.push((last, seq));
        }
    }
    slot.last_seq = Some(seq);
    slot.arrivals.push((Instant::now(), seq));
    if let Some(width) = ivf::keyframe_width(&packet.payload) {
        slot.keyframe_widths.push(width);
    }
    if packet.payload.len() >= 2 && packet.payload[0] == OPUS_TOC {
        slot.markers.push(packet.payload[1]);
    }
}

/// Opus TOC byte: config 31 (CELT fullband 20 ms), mono, one frame. Any
/// bytes after it decode (to noise), so the marker keeps the packet valid.
const OPUS_TOC: u8 = 0xf8;

async fn publish_audio(track: Arc<TrackLocalStaticSample>, marker: u8, level: u8, publishing: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut counter: u8 = 0;
    while publishing.load(Ordering::SeqCst) {
        tick.tick().await;
        counter = counter.wrapping_add(1);
        let sample = Sample {
            data: vec![OPUS_TOC, marker, counter, 0, 0, 0, 0, 0].into(),
            duration: Duration::from_millis(20),
            ..Default::default()
        };
        let level = HeaderExtension::AudioLevel(AudioLevelExtension { level, voice: true });
        if track.write_sample_with_extensions(&sample, &[level]).await.is_err() {
            return;
        }
    }
}

/// Plays each layer's IVF file in a loop at 15 fps; a PLI restarts its
/// layer at the file's keyframe.
async fn publish_video(tracks: Vec<VideoTrack>, keyframes_wanted: Arc<KeyframeRequests>, publishing: Arc<AtomicBool>) {
    let files: Vec<Vec<Vec<u8>>> = tracks.iter().map(|(_, name)| ivf::layer_file(name)).collect();
    let mut tick = tokio::time::interval(Duration::from_millis(66));
    let mut frames = vec![0usize; tracks.len()];
    while publishing.load(Ordering::SeqCst) {
        tick.tick().await;
        for (layer, (((track, _), file), frame)) in tracks.iter().zip(&files).zip(&mut frames).enumerate() {
            if keyframes_wanted.take(layer) {
                *frame = 0;
            }
            let sample = Sample {
                data: file[*frame % file.len()].clone().into(),
                duration: Duration::from_millis(66),
                ..Default::default()
            };
            if track.write_sample(&sample).await.is_err() {
                return;
            }
            *frame = (*frame + 1) % file.len();
        }
    }
}

/// The `/metrics` text of the SFT whose metrics port is `addr`.
pub async fn metrics_at(addr: std::net::SocketAddr) -> String {
    reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap()
}

/// The value of one sample line of `/metrics` at `addr`.
pub async fn metric_at(addr: std::net::SocketAddr, series: &str) -> f64 {
    let text = metrics_at(addr).await;
    text.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{series} not in /metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Polls `condition` every 50 ms until it holds; panics after [`TIMEOUT`].
pub async fn wait_for(what: &str, condition: impl FnMut() -> bool) {
    wait_for_within(what, TIMEOUT, condition).await;
}

/// Polls `condition` every 50 ms until it holds; panics after `limit`.
pub async fn wait_for_within(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Joins one simulcast publisher per name (markers 1, 2, …) to conference
/// `conf`, each receiving nothing.
pub async fn join_publishers(sft: &TestSft, conf: &str, names: &[&str]) -> Vec<Peer> {
    let mut publishers = Vec::with_capacity(names.len());
    for (marker, name) in (1..).zip(names) {
        let options = PeerOptions { audio_slots: 0, video_slots: 0, ..PeerOptions::new(conf, name, marker) };
        publishers.push(Peer::join(sft, options).await);
    }
    publishers
}

impl Peer {
    /// Joins with all of the peer's media going through a [`proxy::udp_proxy`]
    /// the test can cut or impair.
    pub async fn join_via_proxy(sft: &TestSft, options: PeerOptions) -> (Self, ImpairedPath) {
        let proxy = proxy::udp_proxy(sft.server.media_addr).await;
        let peer = Self::offer_only(options).await;
        let (status, answer) = peer.post_setup(sft, None).await;
        assert_eq!(status, 200, "{answer}");
        let sdp = answer["props"]["sdp"].as_str().unwrap();
        let real = format!("{} {}", sft.server.media_addr.ip(), sft.server.media_addr.port());
        let proxied = format!("{} {}", proxy.addr.ip(), proxy.addr.port());
        assert!(sdp.contains(&real), "answer names the media address: {sdp}");
        (peer.accept_answer(sdp.replace(&real, &proxied)).await, proxy)
    }
}
