//! Checks a client's SDP offer against `docs/contract.md` section 3.1 and
//! summarises what the client publishes and where it receives.
//!
//! The offer is parsed once, by str0m; this module reads str0m's parsed
//! `SdpOffer` rather than the text. str0m keeps its SDP model crate-private
//! but reachable through `SdpOffer`'s `Deref`: fields and methods are used
//! where they exist, and the two facts str0m does not expose (the BUNDLE
//! group and `a=rtcp-mux`) are read from the attributes' own SDP rendering.

use str0m::change::SdpOffer;
use str0m::media::{Direction, MediaKind as StreamKind};
use thiserror::Error;

use crate::core::ids::{Layer, MediaKind};

/// At most this many m-lines; a client needs a handful, not hundreds.
const MAX_MEDIA_LINES: usize = 64;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum OfferError {
    #[error("invalid SDP: {0}")]
    Invalid(String),
    #[error("{0}")]
    Inconsistent(String),
    #[error("the offer has no a=group:BUNDLE line")]
    NoBundle,
    #[error("m-line {0} is not in the BUNDLE group")]
    NotBundled(String),
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

/// Parses `sdp` and checks it against `docs/contract.md`: the parsed offer for
/// str0m's `accept_offer`, and what it asks of the SFT.
pub fn parse(sdp: &str) -> Result<(SdpOffer, OfferSummary), OfferError> {
    let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| OfferError::Invalid(e.to_string()))?;
    let summary = inspect(&offer)?;
    Ok((offer, summary))
}

fn inspect(offer: &SdpOffer) -> Result<OfferSummary, OfferError> {
    if offer.media_lines.len() > MAX_MEDIA_LINES {
        return Err(OfferError::TooManyLines);
    }
    let bundle = bundle_group(offer).ok_or(OfferError::NoBundle)?;
    let mut summary = OfferSummary::default();
    let mut has_data_channel = false;
    for line in &offer.media_lines {
        // Unreachable with str0m 0.25, whose parser rejects such lines
        // already; asked again because `mid()` panics without an a=mid.
        if let Some(problem) = line.check_consistent() {
            return Err(OfferError::Inconsistent(problem));
        }
        let mid = line.mid().to_string();
        let bundled = bundle.contains(&mid);
        // Port 0 rejects an m-line unless it is in the BUNDLE group: then it
        // is `a=bundle-only` (RFC 8843 section 6), as Firefox offers every
        // m-line after the first under max-bundle, and just as live.
        if line.disabled && !bundled {
            continue;
        }
        if !bundled {
            return Err(OfferError::NotBundled(mid));
        }
        if line.typ.is_channel() {
            has_data_channel = true;
            continue;
        }
        let kind = if line.typ == StreamKind::Audio.into() {
            MediaKind::Audio
        } else if line.typ == StreamKind::Video.into() {
            MediaKind::Video
        } else {
            continue;
        };
        if !line.attrs.iter().any(|a| a.to_string() == "a=rtcp-mux\r\n") {
            return Err(OfferError::NoRtcpMux(mid));
        }
        match (line.direction(), kind) {
            (Direction::RecvOnly, MediaKind::Audio) => summary.audio_slots.push(mid),
            (Direction::RecvOnly, MediaKind::Video) => summary.video_slots.push(mid),
            (Direction::SendOnly, MediaKind::Audio) => {
                if summary.audio_publish.replace(mid).is_some() {
                    return Err(OfferError::TwoPublications("audio"));
                }
            }
            (Direction::SendOnly, MediaKind::Video) => {
                let rids: Vec<String> = line
                    .simulcast()
                    .map(|s| s.send.iter().map(|layer| layer.restriction_id.0.clone()).collect())
                    .unwrap_or_default();
                let publication =
                    VideoPublication { layers: simulcast_layers(&mid, &rids)?, simulcast: !rids.is_empty(), mid };
                if summary.video_publish.replace(publication).is_some() {
                    return Err(OfferError::TwoPublications("video"));
                }
            }
            _ => return Err(OfferError::Direction(mid)),
        }
    }
    if !has_data_channel {
        return Err(OfferError::NoDataChannel);
    }
    Ok(summary)
}

/// The mids of the session-level `a=group:BUNDLE`.
fn bundle_group(offer: &SdpOffer) -> Option<Vec<String>> {
    offer.session.attrs.iter().find_map(|attr| {
        let line = attr.to_string();
        let group = line.trim_end().strip_prefix("a=group:BUNDLE")?;
        let mids = if group.is_empty() { group } else { group.strip_prefix(' ')? };
        Some(mids.split_whitespace().map(str::to_owned).collect())
    })
}

fn simulcast_layers(mid: &str, rids: &[String]) -> Result<Vec<Layer>, OfferError> {
    if rids.is_empty() {
        return Ok(vec![Layer::High]);
    }
    let mut layers = rids
        .iter()
        .map(|rid| Layer::from_rid(rid).ok_or_else(|| OfferError::UnknownRid { mid: mid.to_owned(), rid: rid.clone() }))
        .collect::<Result<Vec<_>, _>>()?;
    layers.sort();
    layers.dedup();
    Ok(layers)
}

#[cfg(test)]
mod tests;
