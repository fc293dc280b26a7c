use super::*;

fn offer(bundle: &str, body: &str) -> String {
    format!("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE {bundle}\r\n{body}")
}

fn audio(mid: &str, port: u16, direction: &str) -> String {
    format!(
        "m=audio {port} UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\na={direction}\r\na=rtcp-mux\r\n\
a=rtpmap:111 opus/48000/2\r\n"
    )
}

fn video(mid: &str, port: u16, direction: &str, rids: &[&str]) -> String {
    let mut line = format!(
        "m=video {port} UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\na={direction}\r\na=rtcp-mux\r\n\
a=rtpmap:96 VP8/90000\r\n"
    );
    for rid in rids {
        line.push_str(&format!("a=rid:{rid} send\r\n"));
    }
    if !rids.is_empty() {
        line.push_str(&format!("a=simulcast:send {}\r\n", rids.join(";")));
    }
    line
}

fn data(mid: &str, port: u16) -> String {
    format!("m=application {port} UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\na=sctp-port:5000\r\n")
}

fn full(port_after_first: u16) -> String {
    let p = port_after_first;
    [
        audio("0", 9, "sendonly"),
        video("1", p, "sendonly", &["l", "m", "h"]),
        audio("2", p, "recvonly"),
        video("3", p, "recvonly", &[]),
        data("4", p),
    ]
    .concat()
}

fn summary(sdp: &str) -> Result<OfferSummary, OfferError> {
    parse(sdp).map(|(_, summary)| summary)
}

#[test]
fn summarises_a_full_offer() {
    let summary = summary(&offer("0 1 2 3 4", &full(9))).unwrap();
    assert_eq!(summary.audio_publish.as_deref(), Some("0"));
    let video = summary.video_publish.unwrap();
    assert_eq!((video.mid.as_str(), video.simulcast), ("1", true));
    assert_eq!(video.layers, vec![Layer::Low, Layer::Medium, Layer::High]);
    assert_eq!(summary.audio_slots, vec!["2"]);
    assert_eq!(summary.video_slots, vec!["3"]);
}

#[test]
fn bundle_only_lines_are_live() {
    // Firefox under max-bundle: port 0 + a=bundle-only after the first m-line.
    let bundle_only = full(0).replace("a=rtcp-mux\r\n", "a=rtcp-mux\r\na=bundle-only\r\n");
    assert_eq!(summary(&offer("0 1 2 3 4", &bundle_only)), summary(&offer("0 1 2 3 4", &full(9))));
}

#[test]
fn rejected_m_lines_are_ignored() {
    let body = format!("{}{}", full(9), video("5", 0, "recvonly", &[]));
    assert_eq!(summary(&offer("0 1 2 3 4", &body)).unwrap().video_slots, vec!["3"]);
}

#[test]
fn single_encoding_video_is_one_high_layer() {
    let body = [video("0", 9, "sendonly", &[]), data("1", 9)].concat();
    let video = summary(&offer("0 1", &body)).unwrap().video_publish.unwrap();
    assert_eq!((video.layers, video.simulcast), (vec![Layer::High], false));
}

#[test]
fn rejects_what_the_contract_does_not_allow() {
    let good = full(9);
    assert!(matches!(summary("garbage"), Err(OfferError::Invalid(_))));
    let unbundled = offer("0 1 2 3 4", &good).replace("a=group:BUNDLE 0 1 2 3 4\r\n", "");
    assert_eq!(summary(&unbundled), Err(OfferError::NoBundle));
    assert_eq!(summary(&offer("0 1 2 4", &good)), Err(OfferError::NotBundled("3".into())));
    assert_eq!(
        summary(&offer("0 1 2 3 4", &good.replacen("a=rtcp-mux\r\n", "", 1))),
        Err(OfferError::NoRtcpMux("0".into()))
    );
    assert_eq!(
        summary(&offer("0 1 2 3 4", &good.replacen("a=sendonly", "a=sendrecv", 1))),
        Err(OfferError::Direction("0".into()))
    );
    assert_eq!(
        summary(&offer("0 1 2 3 4", &good.replace("a=recvonly", "a=sendonly"))),
        Err(OfferError::TwoPublications("audio"))
    );
    let bad_rid = good.replace("rid:m send", "rid:x send").replace("l;m;h", "l;x;h");
    assert!(matches!(summary(&offer("0 1 2 3 4", &bad_rid)), Err(OfferError::UnknownRid { .. })));
    let no_data = good.replace(&data("4", 9), "");
    assert_eq!(summary(&offer("0 1 2 3", &no_data)), Err(OfferError::NoDataChannel));
    let no_mid = good.replacen("a=mid:0\r\n", "", 1);
    let no_mid = summary(&offer("1 2 3 4", &no_mid));
    assert!(matches!(no_mid, Err(OfferError::Invalid(ref why)) if why.contains("a=mid")), "{no_mid:?}");
    let many = (0..65).map(|i| audio(&i.to_string(), 9, "recvonly")).collect::<String>();
    assert_eq!(summary(&offer("0", &many)), Err(OfferError::TooManyLines));
}

/// Offers captured from real clients (`tests/offers/README.md`), and one
/// Safari-shaped offer written from its documented SDP.
mod real_offers {
    use std::net::SocketAddr;
    use std::time::Instant;

    use super::*;
    use crate::edge::answer::{answer, Estimation};
    use crate::edge::estimate::DownlinkEstimate;

    const FIREFOX: &str = include_str!("../../../tests/offers/firefox.sdp");
    const CHROMIUM: &str = include_str!("../../../tests/offers/chromium.sdp");
    const SAFARI: &str = include_str!("../../../tests/offers/safari.sdp");
    const AIORTC: &str = include_str!("../../../tests/offers/aiortc.sdp");
    const WEBRTC_RS: &str = include_str!("../../../tests/offers/webrtc-rs.sdp");

    struct Expected {
        video: Option<(&'static str, bool)>,
        audio_slots: usize,
        video_slots: usize,
    }

    const CASES: [(&str, &str, Expected); 5] = [
        // The demo page: simulcast l/m/h, 3 audio and 4 video slots.
        ("firefox", FIREFOX, Expected { video: Some(("1", true)), audio_slots: 3, video_slots: 4 }),
        ("chromium", CHROMIUM, Expected { video: Some(("1", true)), audio_slots: 3, video_slots: 4 }),
        ("safari", SAFARI, Expected { video: Some(("1", true)), audio_slots: 2, video_slots: 2 }),
        // tests/aiortc/client.py: one VP8 encoding, 2 and 2 slots.
        ("aiortc", AIORTC, Expected { video: Some(("1", false)), audio_slots: 2, video_slots: 2 }),
        // The test harness's peer: simulcast, 3 and 3 slots.
        ("webrtc-rs", WEBRTC_RS, Expected { video: Some(("1", true)), audio_slots: 3, video_slots: 3 }),
    ];

    #[test]
    fn every_client_offer_is_summarised() {
        for (client, sdp, expected) in CASES {
            let summary = summary(sdp).unwrap_or_else(|e| panic!("{client}: {e}"));
            assert_eq!(summary.audio_publish.as_deref(), Some("0"), "{client}");
            let video = summary.video_publish.as_ref().map(|v| (v.mid.as_str(), v.simulcast));
            assert_eq!(video, expected.video, "{client}");
            if expected.video.is_some_and(|(_, simulcast)| simulcast) {
                let layers = &summary.video_publish.as_ref().unwrap().layers;
                assert_eq!(layers, &[Layer::Low, Layer::Medium, Layer::High], "{client}");
            }
            assert_eq!(summary.audio_slots.len(), expected.audio_slots, "{client}");
            assert_eq!(summary.video_slots.len(), expected.video_slots, "{client}");
        }
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // any instant will do as the session's start
    fn every_client_gets_an_answer_with_every_line_live_and_candidates_everywhere() {
        let media: SocketAddr = "127.0.0.1:20000".parse().unwrap();
        let candidate = str0m::Candidate::host(media, "udp").unwrap();
        for (client, sdp, _) in CASES {
            let (offer, _) = parse(sdp).unwrap();
            let offered = offer.media_lines.len();
            let (_, answer_sdp) = answer(
                Instant::now(),
                candidate.clone(),
                offer,
                Estimation { enabled: true, downlink: DownlinkEstimate::new(None) },
            )
            .unwrap_or_else(|e| panic!("{client}: {e}"));
            let sections: Vec<&str> = answer_sdp.split("\r\nm=").skip(1).collect();
            assert_eq!(sections.len(), offered, "{client}: one answer m-line per offered m-line");
            for (index, section) in sections.iter().enumerate() {
                // Firefox's bundle-only lines (port 0 in the offer) are accepted, not rejected.
                assert!(section.split(' ').nth(1).is_none_or(|port| port != "0"), "{client}: m-line {index} rejected");
                assert!(
                    section.contains("a=candidate:") && section.contains("127.0.0.1 20000 typ host"),
                    "{client}: m-line {index} has no candidate"
                );
                assert!(section.contains("a=end-of-candidates"), "{client}: m-line {index}");
            }
            let bundle = answer_sdp.lines().find(|l| l.starts_with("a=group:BUNDLE")).unwrap();
            assert_eq!(bundle.split(' ').count() - 1, offered, "{client}: {bundle}");
        }
    }

    /// Mutated real offers get a clear error or a summary, never a panic;
    /// every twentieth that passes the check is also answered (an answer
    /// costs a DTLS certificate, too slow for all of them).
    #[test]
    #[allow(clippy::disallowed_methods)] // any instant will do as the session's start
    fn fuzzed_offers_are_refused_or_answered() {
        let media: SocketAddr = "127.0.0.1:20000".parse().unwrap();
        let candidate = str0m::Candidate::host(media, "udp").unwrap();
        let samples = [FIREFOX, CHROMIUM, SAFARI, AIORTC, WEBRTC_RS].map(str::as_bytes);
        let mut accepted = 0;
        crate::fuzz::run(11, &samples, |input| {
            let Ok(sdp) = std::str::from_utf8(input) else { return };
            let Ok((offer, _)) = parse(sdp) else { return };
            accepted += 1;
            if accepted % 20 == 1 {
                let estimation = Estimation { enabled: true, downlink: DownlinkEstimate::new(None) };
                let _ = answer(Instant::now(), candidate.clone(), offer, estimation);
            }
        });
        assert!(accepted > 0, "some mutations keep an offer valid");
    }
}
