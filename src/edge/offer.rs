//! Checks a client's SDP offer against contract section 3.1 before it is
//! handed to the WebRTC stack, and summarises what the client publishes and
//! where it receives.

use thiserror::Error;

use crate::core::ids::{Layer, MediaKind};

/// At most this many m-lines; a client needs a handful, not hundreds.
const MAX_MEDIA_LINES: usize = 64;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum OfferError {
    #[error("not an SDP offer (must start with v=0)")]
    NotSdp,
    #[error("the offer has no a=group:BUNDLE line")]
    NoBundle,
    #[error("m-line {0} is not in the BUNDLE group")]
    NotBundled(String),
    #[error("m-line {0} has no a=mid")]
    NoMid(usize),
    #[error("m-line {0} lacks a=rtcp-mux")]
    NoRtcpMux(String),
    #[error("m-line {0} is sendrecv or inactive: offer sendonly or recvonly m-lines")]
    Direction(String),
    #[error("more than one sendonly {0} m-line")]
    TwoPublications(&'static str),
    #[error("m-line {mid}: simulcast rid {rid:?} is not one of l, m, h")]
    UnknownRid { mid: String, rid: String },
    #[error("more than {MAX_MEDIA_LINES} m-lines")]
    TooManyLines,
    #[error("the offer has no data channel (m=application) line")]
    NoDataChannel,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoPublication {
    pub mid: String,
    /// Ascending; `[High]` without simulcast.
    pub layers: Vec<Layer>,
    pub simulcast: bool,
}

/// What the offer asks for, in m-line order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OfferSummary {
    pub audio_publish: Option<String>,
    pub video_publish: Option<VideoPublication>,
    pub audio_slots: Vec<String>,
    pub video_slots: Vec<String>,
}

struct MediaSection<'a> {
    kind: &'a str,
    port_zero: bool,
    mid: Option<&'a str>,
    direction: Option<&'a str>,
    rtcp_mux: bool,
    send_rids: Vec<&'a str>,
}

pub fn inspect(sdp: &str) -> Result<OfferSummary, OfferError> {
    let mut lines = sdp.lines().map(|l| l.trim_end_matches('\r'));
    if lines.next() != Some("v=0") {
        return Err(OfferError::NotSdp);
    }
    let mut bundle: Option<Vec<&str>> = None;
    let mut sections: Vec<MediaSection> = Vec::new();
    for line in lines {
        if let Some(m) = line.strip_prefix("m=") {
            if sections.len() == MAX_MEDIA_LINES {
                return Err(OfferError::TooManyLines);
            }
            let mut fields = m.split(' ');
            let kind = fields.next().unwrap_or("");
            let port_zero = fields.next() == Some("0");
            sections.push(MediaSection {
                kind,
                port_zero,
                mid: None,
                direction: None,
                rtcp_mux: false,
                send_rids: Vec::new(),
            });
            continue;
        }
        let Some(attr) = line.strip_prefix("a=") else {
            continue;
        };
        let Some(section) = sections.last_mut() else {
            if let Some(group) = attr.strip_prefix("group:BUNDLE") {
                bundle = Some(group.split_whitespace().collect());
            }
            continue;
        };
        match attr {
            "sendonly" | "recvonly" | "sendrecv" | "inactive" => section.direction = Some(attr),
            "rtcp-mux" => section.rtcp_mux = true,
            _ => {
                if let Some(mid) = attr.strip_prefix("mid:") {
                    section.mid = Some(mid.trim());
                } else if let Some(rid) = attr.strip_prefix("rid:") {
                    let mut parts = rid.split_whitespace();
                    if let (Some(id), Some("send")) = (parts.next(), parts.next()) {
                        section.send_rids.push(id);
                    }
                }
            }
        }
    }
    let bundle = bundle.ok_or(OfferError::NoBundle)?;
    let mut summary = OfferSummary::default();
    let mut has_data_channel = false;
    for (index, section) in sections.iter().enumerate() {
        if section.port_zero {
            continue;
        }
        let mid = section.mid.ok_or(OfferError::NoMid(index))?;
        if !bundle.contains(&mid) {
            return Err(OfferError::NotBundled(mid.to_owned()));
        }
        let kind = match section.kind {
            "audio" => MediaKind::Audio,
            "video" => MediaKind::Video,
            "application" => {
                has_data_channel = true;
                continue;
            }
            _ => continue,
        };
        if !section.rtcp_mux {
            return Err(OfferError::NoRtcpMux(mid.to_owned()));
        }
        match (section.direction, kind) {
            (Some("recvonly"), MediaKind::Audio) => summary.audio_slots.push(mid.to_owned()),
            (Some("recvonly"), MediaKind::Video) => summary.video_slots.push(mid.to_owned()),
            (Some("sendonly"), MediaKind::Audio) => {
                if summary.audio_publish.replace(mid.to_owned()).is_some() {
                    return Err(OfferError::TwoPublications("audio"));
                }
            }
            (Some("sendonly"), MediaKind::Video) => {
                let publication = VideoPublication {
                    mid: mid.to_owned(),
                    layers: simulcast_layers(mid, &section.send_rids)?,
                    simulcast: !section.send_rids.is_empty(),
                };
                if summary.video_publish.replace(publication).is_some() {
                    return Err(OfferError::TwoPublications("video"));
                }
            }
            _ => return Err(OfferError::Direction(mid.to_owned())),
        }
    }
    if !has_data_channel {
        return Err(OfferError::NoDataChannel);
    }
    Ok(summary)
}

fn simulcast_layers(mid: &str, rids: &[&str]) -> Result<Vec<Layer>, OfferError> {
    if rids.is_empty() {
        return Ok(vec![Layer::High]);
    }
    let mut layers = rids
        .iter()
        .map(|rid| {
            Layer::from_rid(rid).ok_or_else(|| OfferError::UnknownRid { mid: mid.to_owned(), rid: (*rid).to_owned() })
        })
        .collect::<Result<Vec<_>, _>>()?;
    layers.sort();
    layers.dedup();
    Ok(layers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(body: &str) -> String {
        format!("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1 2 3 4\r\n{body}")
    }

    const FULL: &str = "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\na=rtcp-mux\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=sendonly\r\na=rtcp-mux\r\na=rid:l send\r\na=rid:m send\r\na=rid:h send\r\na=simulcast:send l;m;h\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:2\r\na=recvonly\r\na=rtcp-mux\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:3\r\na=recvonly\r\na=rtcp-mux\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:4\r\n";

    #[test]
    fn summarises_a_full_offer() {
        let summary = inspect(&offer(FULL)).unwrap();
        assert_eq!(summary.audio_publish.as_deref(), Some("0"));
        let video = summary.video_publish.unwrap();
        assert_eq!((video.mid.as_str(), video.simulcast), ("1", true));
        assert_eq!(video.layers, vec![Layer::Low, Layer::Medium, Layer::High]);
        assert_eq!(summary.audio_slots, vec!["2"]);
        assert_eq!(summary.video_slots, vec!["3"]);
    }

    #[test]
    fn rejects_what_the_contract_does_not_allow() {
        assert_eq!(inspect("garbage"), Err(OfferError::NotSdp));
        assert_eq!(inspect(&offer(FULL).replace("a=group:BUNDLE 0 1 2 3 4\r\n", "")), Err(OfferError::NoBundle));
        assert_eq!(
            inspect(&offer(FULL).replace("BUNDLE 0 1 2 3 4", "BUNDLE 0 1 2 4")),
            Err(OfferError::NotBundled("3".into()))
        );
        assert_eq!(inspect(&offer(&FULL.replacen("a=rtcp-mux\r\n", "", 1))), Err(OfferError::NoRtcpMux("0".into())));
        assert_eq!(
            inspect(&offer(&FULL.replacen("a=sendonly", "a=sendrecv", 1))),
            Err(OfferError::Direction("0".into()))
        );
        assert_eq!(
            inspect(&offer(&FULL.replace("a=recvonly", "a=sendonly"))),
            Err(OfferError::TwoPublications("audio"))
        );
        assert!(matches!(
            inspect(&offer(&FULL.replace("rid:m send", "rid:x send"))),
            Err(OfferError::UnknownRid { .. })
        ));
        let no_data = FULL.replace("m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:4\r\n", "");
        assert_eq!(inspect(&offer(&no_data)), Err(OfferError::NoDataChannel));
        let many = "m=audio 9 X 1\r\n".repeat(65);
        assert_eq!(inspect(&offer(&many)), Err(OfferError::TooManyLines));
    }

    #[test]
    fn rejected_m_lines_are_ignored() {
        let body = format!("{FULL}m=video 0 UDP/TLS/RTP/SAVPF 96\r\n");
        assert!(inspect(&offer(&body)).is_ok());
    }
}
