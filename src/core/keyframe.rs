//! Keyframe detection in RTP payloads, and the throttle for keyframe requests.
//!
//! A slot may only switch to a new video source on a keyframe: a decoder
//! fed inter frames of a stream it has never seen shows garbage or nothing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::ids::StreamKey;

/// Where the VP8 frame starts in the first RTP packet of a frame: the
/// length of its RFC 7741 payload descriptor. `None` for any other packet
/// (S=0 or a partition other than 0) and for a truncated descriptor.
pub fn vp8_frame_start(payload: &[u8]) -> Option<usize> {
    let first = *payload.first()?;
    let start_of_partition = first & 0x10 != 0;
    let partition_id = first & 0x07;
    if !start_of_partition || partition_id != 0 {
        return None;
    }
    let mut offset = 1;
    if first & 0x80 != 0 {
        let extension = *payload.get(1)?;
        offset += 1;
        if extension & 0x80 != 0 {
            // PictureID: one byte, or two when its M bit is set.
            offset += if payload.get(offset)? & 0x80 != 0 { 2 } else { 1 };
        }
        if extension & 0x40 != 0 {
            offset += 1; // TL0PICIDX
        }
        if extension & 0x30 != 0 {
            offset += 1; // TID / KEYIDX
        }
    }
    Some(offset)
}

/// Whether a VP8 RTP payload (RFC 7741) starts a keyframe.
///
/// Only the first packet of a frame (S=1, partition 0) carries the VP8
/// payload header whose P bit tells inter (1) from key (0) frames.
pub fn is_vp8_keyframe(payload: &[u8]) -> bool {
    vp8_frame_start(payload).and_then(|start| payload.get(start)).is_some_and(|header| header & 0x01 == 0)
}

/// Keeps keyframe requests to one source stream at most one per interval.
///
/// Encoders answer every PLI with a keyframe, which is several times the
/// size of an inter frame: unthrottled requests from many receivers would
/// flood every receiver of that source.
#[derive(Debug)]
pub struct KeyframeThrottle {
    interval: Duration,
    last_sent: HashMap<StreamKey, Instant>,
}

impl KeyframeThrottle {
    pub fn new(interval: Duration) -> Self {
        Self { interval, last_sent: HashMap::new() }
    }

    /// Records and allows a request to `source`, unless one went out less
    /// than the interval ago.
    pub fn allow(&mut self, now: Instant, source: StreamKey) -> bool {
        match self.last_sent.get(&source) {
            Some(&last) if now.saturating_duration_since(last) < self.interval => false,
            _ => {
                self.last_sent.insert(source, now);
                true
            }
        }
    }

    /// Forgets the streams of a participant that left.
    pub fn forget(&mut self, participant: super::ids::ParticipantId) {
        self.last_sent.retain(|key, _| key.participant != participant);
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a test needs some starting instant
mod tests {
    use super::*;
    use crate::core::ids::{Layer, ParticipantId};

    #[test]
    fn detects_keyframe_with_and_without_extensions() {
        // S=1, PID=0, no extension; VP8 header P=0.
        assert!(is_vp8_keyframe(&[0x10, 0x00, 0x9d, 0x01, 0x2a]));
        // Inter frame: P=1.
        assert!(!is_vp8_keyframe(&[0x10, 0x01]));
        // X=1, I=1 with a 15-bit picture id (M=1), then the VP8 header.
        assert!(is_vp8_keyframe(&[0x90, 0x80, 0x81, 0x23, 0x00]));
        // X=1, I=1, L=1, T=1: picture id (1 byte), tl0picidx, tid.
        assert!(is_vp8_keyframe(&[0x90, 0xe0, 0x05, 0x07, 0x20, 0x00]));
        assert!(!is_vp8_keyframe(&[0x90, 0xe0, 0x05, 0x07, 0x20, 0x01]));
    }

    #[test]
    fn continuation_packets_and_garbage_are_not_keyframes() {
        assert!(!is_vp8_keyframe(&[0x00, 0x00])); // S=0
        assert!(!is_vp8_keyframe(&[0x11, 0x00])); // partition 1
        assert!(!is_vp8_keyframe(&[]));
        assert!(!is_vp8_keyframe(&[0x90]));
        assert!(!is_vp8_keyframe(&[0x90, 0x80, 0x81]));
    }

    #[test]
    fn throttle_allows_one_request_per_interval_per_stream() {
        let t0 = Instant::now();
        let mut throttle = KeyframeThrottle::new(Duration::from_millis(300));
        let a = StreamKey::video(ParticipantId(1), Layer::High);
        let b = StreamKey::video(ParticipantId(1), Layer::Low);
        assert!(throttle.allow(t0, a));
        assert!(!throttle.allow(t0 + Duration::from_millis(100), a));
        assert!(throttle.allow(t0, b));
        assert!(throttle.allow(t0 + Duration::from_millis(300), a));
        throttle.forget(ParticipantId(1));
        assert!(throttle.allow(t0 + Duration::from_millis(301), a));
    }
}
