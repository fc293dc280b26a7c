//! The relay's wire format, versioned by the ALPN: `sft-relay/1`, and
//! `sft-relay/2`, the same framing with conferences attached both ways on
//! one connection per pair of SFTs (see [`RelayVersion`]).
//!
//! Media travels as QUIC datagrams, one RTP packet each, in a fixed binary
//! header followed by the RTP payload (the relay carries payloads, not SRTP:
//! QUIC already encrypts, and each SFT re-encrypts for its own clients):
//!
//! ```text
//!  0      1      2..6       6..14      14     15     16..24   24..28     28..
//! +------+------+----------+----------+------+------+--------+----------+---------+
//! | 0x01 |flags | channel  | publisher|stream|level | seq    | timestamp| payload |
//! +------+------+----------+----------+------+------+--------+----------+---------+
//!  type   bits   u32 BE     u64 BE     kind/  RFC    u64 BE   u32 BE
//!                                      layer/ 6464   extended
//!                                      codec
//! ```
//!
//! flags: bit 0 marker, bit 1 keyframe, bit 2 audio level present, bit 3
//! voice activity. stream: bit 7 video, bits 4..6 layer (0 l, 1 m, 2 h),
//! bits 0..3 codec (0 Opus, 1 VP8).
//!
//! Control messages travel on one bidirectional stream that the federated
//! SFT opens: each a 4-byte big-endian length, then that many bytes of JSON
//! ([`Control`]), at most [`MAX_CONTROL_FRAME`] bytes.

use bytes::BufMut;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::core::conference::RosterEntry;
use crate::core::ids::{Layer, MediaKind};
use crate::core::relay_demand::{PublisherLayers, Subscription};

/// The relay's ALPNs, preferred first.
pub const ALPNS: [&[u8]; 2] = [b"sft-relay/2", b"sft-relay/1"];

/// What a relay connection's two SFTs agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayVersion {
    /// Only the dialler attaches conferences.
    V1,
    /// Either side attaches conferences the other anchors, each naming
    /// channels in its own half (the domain that sorts first below 2^31):
    /// one connection per pair of SFTs.
    V2,
}

impl RelayVersion {
    /// The version of a negotiated ALPN (none: a peer from before ALPNs
    /// were checked would not connect at all, so this is version 1).
    pub fn of_alpn(alpn: Option<&[u8]>) -> Self {
        if alpn == Some(ALPNS[0]) {
            Self::V2
        } else {
            Self::V1
        }
    }
}
const MEDIA: u8 = 0x01;
const HEADER_LEN: usize = 28;
pub const MAX_CONTROL_FRAME: usize = 256 * 1024;

/// The codecs the relay carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayCodec {
    Opus,
    Vp8,
}

/// One RTP packet on the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaFrame<'a> {
    /// The conference, as the federated SFT numbered it when it attached.
    pub channel: u32,
    /// The publisher, in the sending SFT's numbering (its roster ids).
    pub publisher: u64,
    pub kind: MediaKind,
    pub layer: Option<Layer>,
    pub codec: RelayCodec,
    pub marker: bool,
    pub keyframe: bool,
    pub audio_level: Option<u8>,
    pub voice_activity: bool,
    pub seq: u64,
    pub timestamp: u32,
    pub payload: &'a [u8],
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("datagram shorter than the {HEADER_LEN}-byte header")]
    Truncated,
    #[error("unknown datagram type {0:#04x}")]
    UnknownType(u8),
    #[error("unknown codec {0}")]
    UnknownCodec(u8),
    #[error("unknown layer {0}")]
    UnknownLayer(u8),
}

impl MediaFrame<'_> {
    /// Appends the encoded frame to `out`.
    /// The size of the encoded frame.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Appends the frame to `out` (a `Vec<u8>`, or the `BytesMut` arena the
    /// edge sends from).
    pub fn encode(&self, out: &mut impl BufMut) {
        let flags = u8::from(self.marker)
            | u8::from(self.keyframe) << 1
            | u8::from(self.audio_level.is_some()) << 2
            | u8::from(self.voice_activity) << 3;
        let layer = self.layer.map_or(0, |l| l.index() as u8);
        let codec = match self.codec {
            RelayCodec::Opus => 0,
            RelayCodec::Vp8 => 1,
        };
        let stream = u8::from(self.kind == MediaKind::Video) << 7 | layer << 4 | codec;
        out.put_u8(MEDIA);
        out.put_u8(flags);
        out.put_u32(self.channel);
        out.put_u64(self.publisher);
        out.put_u8(stream);
        out.put_u8(self.audio_level.unwrap_or(127));
        out.put_u64(self.seq);
        out.put_u32(self.timestamp);
        out.put_slice(self.payload);
    }
}

impl<'a> MediaFrame<'a> {
    /// The channel of an encoded frame, read without decoding the rest
    /// (to pick the worker a datagram goes to).
    pub fn peek_channel(datagram: &[u8]) -> Option<u32> {
        let bytes = datagram.get(2..6)?;
        Some(u32::from_be_bytes(bytes.try_into().ok()?))
    }

    pub fn decode(datagram: &'a [u8]) -> Result<Self, FrameError> {
        let header = datagram.get(..HEADER_LEN).ok_or(FrameError::Truncated)?;
        if header[0] != MEDIA {
            return Err(FrameError::UnknownType(header[0]));
        }
        let flags = header[1];
        let stream = header[14];
        let kind = if stream & 0x80 != 0 { MediaKind::Video } else { MediaKind::Audio };
        let layer = match kind {
            MediaKind::Audio => None,
            MediaKind::Video => {
                let index = (stream >> 4) & 0x07;
                Some(*Layer::ALL.get(index as usize).ok_or(FrameError::UnknownLayer(index))?)
            }
        };
        let codec = match stream & 0x0f {
            0 => RelayCodec::Opus,
            1 => RelayCodec::Vp8,
            other => return Err(FrameError::UnknownCodec(other)),
        };
        let u32_at = |at: usize| u32::from_be_bytes(header[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_be_bytes(header[at..at + 8].try_into().expect("8 bytes"));
        Ok(Self {
            channel: u32_at(2),
            publisher: u64_at(6),
            kind,
            layer,
            codec,
            marker: flags & 0x01 != 0,
            keyframe: flags & 0x02 != 0,
            audio_level: (flags & 0x04 != 0).then_some(header[15].min(127)),
            voice_activity: flags & 0x08 != 0,
            seq: u64_at(16),
            timestamp: u32_at(24),
            payload: &datagram[HEADER_LEN..],
        })
    }
}

/// Messages on the relay's control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// The first message of the dialling SFT: which domain it is. Checked
    /// against its client certificate and the strategy.
    Hello { domain: String },
    /// Federated → anchor: put this conference on the link as `channel`.
    Attach { channel: u32, conf_id: String, relay_token: String },
    /// Anchor → federated: the attach was refused.
    Refused { channel: u32, reason: String },
    /// Federated → anchor: the conference has no participants here any more.
    Detach { channel: u32 },
    /// Either way: who is in the conference on the sender's side.
    Roster { channel: u32, participants: Vec<RosterEntry> },
    /// Either way: ask the publisher `publisher` (sender's numbering is the
    /// receiver's roster id) for a keyframe of `layer`.
    Keyframe { channel: u32, publisher: u64, layer: Option<Layer> },
    /// Either way, from an SFT in `demand` mode: send only these video layers
    /// (publishers in the receiver's numbering); audio always.
    Subscribe { channel: u32, streams: Vec<Subscription> },
    /// Either way, to a link that subscribed: the sender's publishers'
    /// flowing layers and what they measure (bits/s).
    Layers { channel: u32, publishers: Vec<PublisherLayers> },
}

impl Control {
    /// The conference channel the message is about (`None` for `hello`).
    pub fn channel(&self) -> Option<u32> {
        match self {
            Self::Hello { .. } => None,
            Self::Attach { channel, .. }
            | Self::Refused { channel, .. }
            | Self::Detach { channel }
            | Self::Roster { channel, .. }
            | Self::Keyframe { channel, .. }
            | Self::Subscribe { channel, .. }
            | Self::Layers { channel, .. } => Some(*channel),
        }
    }

    /// What reading the message costs, in messages: one, or a roster's
    /// entries (what the receiver has to check and apply).
    pub fn cost(&self) -> u32 {
        match self {
            Self::Roster { participants, .. } => u32::try_from(participants.len()).unwrap_or(u32::MAX),
            _ => 1,
        }
    }
}

/// Reads one control message's JSON (the bytes after its length prefix).
pub fn decode_control(body: &[u8]) -> Result<Control, serde_json::Error> {
    serde_json::from_slice(body)
}

/// Length-prefixes an encoded control message.
pub fn encode_control(message: &Control) -> Vec<u8> {
    let json = serde_json::to_vec(message).expect("control messages serialize");
    let mut out = Vec::with_capacity(4 + json.len());
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ids::Identity;

    fn frame(payload: &[u8]) -> MediaFrame<'_> {
        MediaFrame {
            channel: 7,
            publisher: u64::MAX - 3,
            kind: MediaKind::Video,
            layer: Some(Layer::Medium),
            codec: RelayCodec::Vp8,
            marker: true,
            keyframe: true,
            audio_level: None,
            voice_activity: false,
            seq: 1 << 40,
            timestamp: 0xdead_beef,
            payload,
        }
    }

    #[test]
    fn media_round_trips() {
        let mut buf = Vec::new();
        frame(b"vp8 bytes").encode(&mut buf);
        assert_eq!(buf.len(), HEADER_LEN + 9);
        assert_eq!(MediaFrame::decode(&buf), Ok(frame(b"vp8 bytes")));
        assert_eq!(MediaFrame::peek_channel(&buf), Some(7));
        assert_eq!(MediaFrame::peek_channel(&buf[..5]), None, "too short to name a channel");
        let audio = MediaFrame {
            kind: MediaKind::Audio,
            layer: None,
            codec: RelayCodec::Opus,
            audio_level: Some(33),
            voice_activity: true,
            marker: false,
            keyframe: false,
            ..frame(b"")
        };
        buf.clear();
        audio.encode(&mut buf);
        assert_eq!(MediaFrame::decode(&buf), Ok(audio));
    }

    #[test]
    fn bad_datagrams_are_errors_not_panics() {
        let mut good = Vec::new();
        frame(b"x").encode(&mut good);
        for len in 0..HEADER_LEN {
            assert_eq!(MediaFrame::decode(&good[..len]), Err(FrameError::Truncated));
        }
        let mut wrong_type = good.clone();
        wrong_type[0] = 9;
        assert_eq!(MediaFrame::decode(&wrong_type), Err(FrameError::UnknownType(9)));
        let mut wrong_codec = good.clone();
        wrong_codec[14] = 0x8f;
        assert_eq!(MediaFrame::decode(&wrong_codec), Err(FrameError::UnknownCodec(15)));
        let mut wrong_layer = good;
        wrong_layer[14] = 0xf1;
        assert_eq!(MediaFrame::decode(&wrong_layer), Err(FrameError::UnknownLayer(7)));
    }

    #[test]
    fn control_messages_are_length_prefixed_json() {
        let message = Control::Roster {
            channel: 1,
            participants: vec![RosterEntry {
                id: 4,
                identity: Identity { userid: "u".into(), clientid: "c".into(), domain: "b.example".into() },
                audio: true,
                layers: vec![Layer::Low, Layer::High],
            }],
        };
        let bytes = encode_control(&message);
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 4);
        assert_eq!(serde_json::from_slice::<Control>(&bytes[4..]).unwrap(), message);
    }

    #[test]
    fn subscriptions_and_layer_reports_read_as_documented() {
        let subscribe = r#"{"type":"subscribe","channel":2,"streams":[{"publisher":5,"layers":["l","h"]}]}"#;
        let Ok(Control::Subscribe { channel: 2, streams }) = serde_json::from_str(subscribe) else { panic!() };
        assert_eq!(streams, vec![Subscription { publisher: 5, layers: vec![Layer::Low, Layer::High] }]);
        let layers = r#"{"type":"layers","channel":2,"publishers":[{"publisher":5,"layers":[{"layer":"m","bps":300000},{"layer":"h"}]}]}"#;
        let Ok(Control::Layers { publishers, .. }) = serde_json::from_str(layers) else { panic!() };
        let rates: Vec<_> = publishers[0].layers.iter().map(|l| (l.layer, l.bps)).collect();
        assert_eq!(rates, vec![(Layer::Medium, Some(300_000)), (Layer::High, None)]);
        let bad = r#"{"type":"subscribe","channel":2,"streams":[{"publisher":5,"layers":["x"]}]}"#;
        assert!(serde_json::from_str::<Control>(bad).is_err());
    }

    /// Mutated media frames and control messages: decoded or refused, never
    /// a panic, and what decodes encodes back to a frame that decodes the same.
    #[test]
    fn fuzzed_frames_and_control_messages_are_decoded_or_refused() {
        let payload = [0x90, 0xe0, 1, 2, 3];
        let mut media = Vec::new();
        frame(&payload).encode(&mut media);
        let roster = encode_control(&Control::Roster {
            channel: 1,
            participants: vec![RosterEntry {
                id: u64::MAX,
                identity: Identity { userid: "u".into(), clientid: "c".into(), domain: "b.example".into() },
                audio: true,
                layers: vec![Layer::Low, Layer::High],
            }],
        });
        let keyframe = encode_control(&Control::Keyframe { channel: 9, publisher: 3, layer: Some(Layer::Medium) });
        let samples = [media.as_slice(), &roster[4..], &keyframe[4..]];
        let mut decoded = 0;
        crate::fuzz::run(29, &samples, |input| {
            if let Ok(frame) = MediaFrame::decode(input) {
                decoded += 1;
                let mut again = Vec::new();
                frame.encode(&mut again);
                let twice = MediaFrame::decode(&again).expect("a decoded frame encodes to a valid one");
                assert_eq!(
                    (twice.channel, twice.publisher, twice.seq, twice.payload),
                    (frame.channel, frame.publisher, frame.seq, frame.payload)
                );
            }
            if let Ok(message) = decode_control(input) {
                decoded += 1;
                assert_eq!(decode_control(&encode_control(&message)[4..]).unwrap(), message);
            }
        });
        assert!(decoded > 0);
    }
}
