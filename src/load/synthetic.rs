//! Synthetic media for load peers: Opus-shaped audio and VP8-shaped video
//! frames whose first RTP packet carries who sent it and when, so a
//! receiver can tell the sender apart and measure end-to-end latency.
//!
//! The frames are not decodable pictures, but their headers are real: the
//! SFT sees VP8 keyframes (RFC 7741 descriptor, then a key frame tag) and
//! Opus TOC bytes exactly as from a browser.

use crate::core::keyframe::vp8_frame_start;

/// Marks a payload as ours, right after the codec header.
const MAGIC: [u8; 4] = *b"SFTL";
/// `MAGIC`, the sender (u32) and the send time in µs (u64), big-endian.
pub const TAG_LEN: usize = 16;
/// Opus TOC: CELT fullband 20 ms, mono, one frame.
const OPUS_TOC: u8 = 0xf8;
/// VP8 frame tag (3 bytes) + start code + width + height of a keyframe.
const VP8_KEY_HEADER: usize = 10;
const VP8_INTER_HEADER: usize = 3;

/// Who sent a payload, and when (µs on the sender's clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    pub sender: u32,
    pub sent_micros: u64,
}

impl Tag {
    fn write(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.sender.to_be_bytes());
        out.extend_from_slice(&self.sent_micros.to_be_bytes());
    }

    fn read(bytes: &[u8]) -> Option<Self> {
        let tag = bytes.get(..TAG_LEN)?;
        if tag[..4] != MAGIC {
            return None;
        }
        Some(Self {
            sender: u32::from_be_bytes(tag[4..8].try_into().ok()?),
            sent_micros: u64::from_be_bytes(tag[8..16].try_into().ok()?),
        })
    }
}

/// One 20 ms Opus-shaped audio frame of `size` bytes (at least the tag).
pub fn audio_frame(tag: Tag, size: usize) -> Vec<u8> {
    let mut frame = Vec::with_capacity(size.max(1 + TAG_LEN));
    frame.push(OPUS_TOC);
    tag.write(&mut frame);
    frame.resize(size.max(frame.len()), 0);
    frame
}

/// One VP8-shaped video frame of `size` bytes; a keyframe names its
/// picture size so receivers can tell simulcast layers apart.
pub fn video_frame(tag: Tag, keyframe: bool, width: u16, height: u16, size: usize) -> Vec<u8> {
    let header = if keyframe { VP8_KEY_HEADER } else { VP8_INTER_HEADER };
    let size = size.max(header + TAG_LEN);
    // Frame tag: bit 0 = inter frame, version 0, show_frame, then the first
    // partition's size (19 bits), here the whole rest of the frame.
    let first_partition = (size - header) as u32 & 0x7_ffff;
    let frame_tag = u32::from(!keyframe) | 0x10 | (first_partition << 5);
    let mut frame = Vec::with_capacity(size);
    frame.extend_from_slice(&frame_tag.to_le_bytes()[..3]);
    if keyframe {
        frame.extend_from_slice(&[0x9d, 0x01, 0x2a]);
        frame.extend_from_slice(&width.to_le_bytes());
        frame.extend_from_slice(&height.to_le_bytes());
    }
    tag.write(&mut frame);
    frame.resize(size, 0);
    frame
}

/// The picture width named by a VP8 keyframe whose first RTP packet this is
/// (RFC 7741 payload descriptor, then the VP8 frame header); `None` for any
/// other packet. Receivers tell simulcast layers apart by it.
pub fn keyframe_width(payload: &[u8]) -> Option<u16> {
    let frame = payload.get(vp8_frame_start(payload)?..)?;
    if frame.len() < VP8_KEY_HEADER || frame[0] & 0x01 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    Some(u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff)
}

/// The tag in a received RTP payload, if it starts a synthetic frame:
/// an Opus packet, or the first packet of a VP8 frame.
pub fn read_tag(payload: &[u8], video: bool) -> Option<Tag> {
    if !video {
        return (payload.first() == Some(&OPUS_TOC)).then(|| Tag::read(&payload[1..])).flatten();
    }
    let frame = payload.get(vp8_frame_start(payload)?..)?;
    let header = if frame.first()? & 0x01 == 0 { VP8_KEY_HEADER } else { VP8_INTER_HEADER };
    Tag::read(frame.get(header..)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::keyframe::is_vp8_keyframe;

    const TAG: Tag = Tag { sender: 7, sent_micros: 1_234_567_890 };

    #[test]
    fn audio_frames_carry_their_tag() {
        let frame = audio_frame(TAG, 80);
        assert_eq!(frame.len(), 80);
        assert_eq!(read_tag(&frame, false), Some(TAG));
        assert_eq!(read_tag(&frame[..10], false), None, "a cut tag is no tag");
    }

    #[test]
    fn video_frames_carry_their_tag_behind_any_descriptor() {
        for keyframe in [true, false] {
            let frame = video_frame(TAG, keyframe, 320, 180, 1000);
            assert_eq!(frame.len(), 1000);
            for descriptor in [&[0x10][..], &[0x90, 0x80, 0x05][..], &[0x90, 0xe0, 0x81, 0x02, 0x03, 0x04][..]] {
                let payload = [descriptor, &frame[..]].concat();
                assert_eq!(read_tag(&payload, true), Some(TAG), "{descriptor:?}");
                assert_eq!(is_vp8_keyframe(&payload), keyframe, "the SFT sees the frame type");
                assert_eq!(keyframe_width(&payload), keyframe.then_some(320));
            }
            // A continuation packet (S=0) carries no tag.
            assert_eq!(read_tag(&[&[0x00][..], &frame[..]].concat(), true), None);
        }
    }

    #[test]
    fn tiny_sizes_still_fit_header_and_tag() {
        assert_eq!(video_frame(TAG, true, 80, 48, 0).len(), VP8_KEY_HEADER + TAG_LEN);
        assert_eq!(audio_frame(TAG, 0).len(), 1 + TAG_LEN);
    }

    #[test]
    fn foreign_payloads_have_no_tag() {
        assert_eq!(read_tag(&[0xf8, 1, 2, 3], false), None);
        assert_eq!(read_tag(&[], true), None);
        assert_eq!(read_tag(&[0x10, 0x00, 0x00, 0x00, b'X'], true), None);
        assert_eq!(read_tag(&[0x90, 0x40], true), None, "a descriptor longer than the packet");
    }
}
