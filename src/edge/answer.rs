//! Answers a client's offer: one str0m `Rtc` per client (ICE-lite, RTP mode,
//! Opus and VP8) and the complete answer SDP of `docs/contract.md` section 3.

use std::time::{Duration, Instant};

use str0m::bwe::Bitrate;
use str0m::change::SdpOffer;
use str0m::{Candidate, Rtc};
use thiserror::Error;

use super::estimate::DownlinkEstimate;

/// How often each session reports per-stream loss (`sft_stream_loss_ratio`).
const STATS_INTERVAL: Duration = Duration::from_secs(5);
/// Where a client's send-side estimate starts, before feedback: about what
/// one `h` and two `l` layers of a 720p simulcast need.
const INITIAL_ESTIMATE_KBPS: u64 = 1_000;
/// What the estimate probes toward (unless the ceiling is lower): the most
/// four video slots can use.
const DESIRED_KBPS: u64 = 8_000;

#[derive(Debug, Error)]
#[error("offer not accepted: {0}")]
pub struct AnswerError(String);

/// How a session estimates its client's downlink.
#[derive(Debug, Clone, Copy)]
pub struct Estimation {
    /// str0m's send-side estimate from the client's transport-cc feedback.
    pub enabled: bool,
    /// Its ceiling (`media.max_receive_kbps`): the initial and desired rates
    /// go no higher (str0m probes up to twice the desired rate).
    pub downlink: DownlinkEstimate,
}

impl Estimation {
    /// `kbps`, or the ceiling when that is lower.
    fn capped(&self, kbps: u64) -> Bitrate {
        Bitrate::bps(self.downlink.cap(kbps * 1000))
    }
}

/// A client's session state and the answer to send it, with `candidate`
/// (the host candidate on the media socket).
pub fn answer(
    now: Instant,
    candidate: Candidate,
    offer: SdpOffer,
    estimation: Estimation,
) -> Result<(Rtc, String), AnswerError> {
    let initial = estimation.enabled.then(|| estimation.capped(INITIAL_ESTIMATE_KBPS));
    let mut rtc = Rtc::builder()
        .set_ice_lite(true)
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true, false)
        .enable_vp8(true)
        .set_stats_interval(Some(STATS_INTERVAL))
        .enable_bwe(initial)
        .build(now);
    if estimation.enabled {
        rtc.bwe().set_bitrate(Bitrate::ZERO, estimation.capped(DESIRED_KBPS));
    }
    rtc.add_local_candidate(candidate);
    let answer = rtc.sdp_api().accept_offer(offer).map_err(|e| AnswerError(e.to_string()))?;
    Ok((rtc, candidates_in_every_section(&answer.to_sdp_string())))
}

/// str0m writes the candidates into the first m-section only, which is
/// enough for a BUNDLE-aware browser. aiortc takes a bundled transport's
/// candidates from the last m-section that shares it, so every live
/// m-section gets the candidates and `a=end-of-candidates` (as pion and
/// Janus write them); browsers ignore the repeats. A rejected (port 0)
/// m-section gets neither.
fn candidates_in_every_section(sdp: &str) -> String {
    let mut candidates: Vec<&str> = Vec::new();
    for line in sdp.split("\r\n").filter(|line| line.starts_with("a=candidate:")) {
        if !candidates.contains(&line) {
            candidates.push(line);
        }
    }
    let mut out = String::with_capacity(sdp.len() * 2);
    let mut live_section = false;
    for line in sdp.split_terminator("\r\n") {
        if line.starts_with("m=") {
            close_section(&mut out, live_section, &candidates);
            live_section = line.split(' ').nth(1) != Some("0");
        }
        if line.starts_with("a=candidate:") || line == "a=end-of-candidates" {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    close_section(&mut out, live_section, &candidates);
    out
}

fn close_section(out: &mut String, live: bool, candidates: &[&str]) {
    if !live {
        return;
    }
    for line in candidates.iter().chain(&["a=end-of-candidates"]) {
        out.push_str(line);
        out.push_str("\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=candidate:1 1 udp 2130706175 127.0.0.1 20000 typ host\r\na=mid:0\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\n\
m=video 0 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:2\r\n";

    #[test]
    fn every_live_section_carries_the_candidates_once() {
        let completed = candidates_in_every_section(ANSWER);
        let sections: Vec<&str> = completed.split("\r\nm=").collect();
        assert_eq!(sections.len(), 4);
        assert!(!sections[0].contains("a=candidate"), "no candidates at session level");
        for live in &sections[1..3] {
            assert_eq!(live.matches("a=candidate:1 1 udp 2130706175 127.0.0.1 20000 typ host\r\n").count(), 1);
            assert!(live.trim_end().ends_with("a=end-of-candidates"), "{live}");
        }
        assert!(!sections[3].contains("a=candidate") && !sections[3].contains("end-of-candidates"));
        assert!(completed.starts_with("v=0\r\n") && completed.ends_with("\r\n"));
    }

    #[test]
    fn completing_twice_changes_nothing() {
        let once = candidates_in_every_section(ANSWER);
        assert_eq!(candidates_in_every_section(&once), once);
    }
}
