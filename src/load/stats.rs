//! What one load peer received: per-stream packet accounting (loss from
//! sequence numbers), frames, bytes, who was heard, and latency samples.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::synthetic;

/// Latency samples kept per peer; later ones are dropped (a run is bounded,
/// so is its memory).
const MAX_LATENCY_SAMPLES: usize = 200_000;

/// One received RTP stream (one receive slot: the SFT keeps its SSRC and
/// sequence numbers continuous across source switches).
#[derive(Debug, Default, Clone)]
struct Stream {
    /// First and highest extended sequence number seen.
    first: Option<u64>,
    highest: u64,
    packets: u64,
    /// For video: the picture width of the newest keyframe (which layer the
    /// slot carries).
    width: Option<u16>,
}

impl Stream {
    fn record(&mut self, seq: u16) {
        self.packets += 1;
        let Some(first) = self.first else {
            self.first = Some(u64::from(seq));
            self.highest = u64::from(seq);
            return;
        };
        // Extend the 16-bit number to the value nearest the highest so far.
        let delta = seq.wrapping_sub(self.highest as u16) as i16;
        let extended = (self.highest as i64 + i64::from(delta)).max(first as i64) as u64;
        self.highest = self.highest.max(extended);
    }

    fn expected(&self) -> u64 {
        self.first.map_or(0, |first| self.highest - first + 1)
    }
}

/// Totals over a peer's receive streams; subtract two to get a window.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub packets: u64,
    pub expected: u64,
    pub bytes: u64,
    pub video_frames: u64,
}

impl Totals {
    pub fn since(self, earlier: Totals) -> Totals {
        Totals {
            packets: self.packets - earlier.packets,
            expected: self.expected.saturating_sub(earlier.expected),
            bytes: self.bytes - earlier.bytes,
            video_frames: self.video_frames - earlier.video_frames,
        }
    }

    pub fn lost(self) -> u64 {
        self.expected.saturating_sub(self.packets)
    }
}

#[derive(Debug, Default)]
pub struct ReceiveStats {
    streams: HashMap<u32, Stream>,
    bytes: u64,
    video_frames: u64,
    heard: HashSet<u32>,
    latencies_micros: Vec<u32>,
    video_ssrcs: BTreeSet<u32>,
}

/// One video receive slot, as sampled for the layers-over-time report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoSlot {
    pub ssrc: u32,
    pub packets: u64,
    /// The width of its newest keyframe.
    pub width: Option<u16>,
}

/// One received RTP packet, as the stats need it.
pub struct Received {
    pub ssrc: u32,
    pub seq: u16,
    pub marker: bool,
    pub video: bool,
    pub payload_len: usize,
    /// The picture width, when the packet starts a VP8 keyframe.
    pub keyframe_width: Option<u16>,
    /// Sender and latency, when the packet starts a tagged frame.
    pub tagged: Option<(u32, u64)>,
}

impl Received {
    /// What a packet whose payload is `payload` tells, `now_micros` after
    /// the run's epoch (the clock of the senders' tags).
    pub fn parse(ssrc: u32, seq: u16, marker: bool, video: bool, payload: &[u8], now_micros: u64) -> Self {
        Self {
            ssrc,
            seq,
            marker,
            video,
            payload_len: payload.len(),
            keyframe_width: video.then(|| synthetic::keyframe_width(payload)).flatten(),
            tagged: synthetic::read_tag(payload, video)
                .map(|tag| (tag.sender, now_micros.saturating_sub(tag.sent_micros))),
        }
    }
}

impl ReceiveStats {
    pub fn record(&mut self, packet: &Received) {
        let stream = self.streams.entry(packet.ssrc).or_default();
        stream.record(packet.seq);
        if packet.video {
            stream.width = packet.keyframe_width.or(stream.width);
            self.video_ssrcs.insert(packet.ssrc);
        }
        self.bytes += packet.payload_len as u64;
        if packet.video && packet.marker {
            self.video_frames += 1;
        }
        if let Some((sender, latency_micros)) = packet.tagged {
            self.heard.insert(sender);
            if self.latencies_micros.len() < MAX_LATENCY_SAMPLES {
                self.latencies_micros.push(latency_micros.min(u64::from(u32::MAX)) as u32);
            }
        }
    }

    pub fn totals(&self) -> Totals {
        Totals {
            packets: self.streams.values().map(|s| s.packets).sum(),
            expected: self.streams.values().map(Stream::expected).sum(),
            bytes: self.bytes,
            video_frames: self.video_frames,
        }
    }

    /// Every video slot that received anything, in SSRC order.
    pub fn video_slots(&self) -> Vec<VideoSlot> {
        self.video_ssrcs
            .iter()
            .filter_map(|&ssrc| {
                let stream = self.streams.get(&ssrc)?;
                Some(VideoSlot { ssrc, packets: stream.packets, width: stream.width })
            })
            .collect()
    }

    /// The senders whose tagged frames arrived.
    pub fn heard(&self) -> &HashSet<u32> {
        &self.heard
    }

    /// Takes the latency samples gathered so far.
    pub fn take_latencies(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.latencies_micros)
    }
}

/// The `p`-th percentile (0..=100, nearest rank) of `samples`, sorting them.
pub fn percentile<T: Copy + Ord>(samples: &mut [T], p: f64) -> Option<T> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * samples.len() as f64).ceil().max(1.0) as usize;
    Some(samples[rank.min(samples.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(ssrc: u32, seq: u16) -> Received {
        Received { ssrc, seq, marker: true, video: true, payload_len: 100, keyframe_width: None, tagged: None }
    }

    #[test]
    fn a_video_slot_carries_the_width_of_its_newest_keyframe() {
        let mut stats = ReceiveStats::default();
        stats.record(&Received { keyframe_width: Some(1280), ..packet(9, 1) });
        stats.record(&packet(9, 2));
        stats.record(&packet(4, 1));
        let slots = stats.video_slots();
        assert_eq!(slots[0], VideoSlot { ssrc: 4, packets: 1, width: None });
        assert_eq!(slots[1], VideoSlot { ssrc: 9, packets: 2, width: Some(1280) });
        stats.record(&Received { keyframe_width: Some(320), ..packet(9, 3) });
        assert_eq!(stats.video_slots()[1].width, Some(320));
    }

    #[test]
    fn losses_are_counted_across_sequence_wraparound() {
        let mut stats = ReceiveStats::default();
        for seq in [65_530u16, 65_531, 65_533, 65_535, 0, 1, 3] {
            stats.record(&packet(1, seq));
        }
        let totals = stats.totals();
        assert_eq!((totals.packets, totals.expected, totals.lost()), (7, 10, 3));
    }

    #[test]
    fn reordering_is_not_loss_and_streams_are_separate() {
        let mut stats = ReceiveStats::default();
        for seq in [10u16, 12, 11, 13] {
            stats.record(&packet(1, seq));
        }
        stats.record(&packet(2, 500));
        let totals = stats.totals();
        assert_eq!((totals.packets, totals.lost(), totals.video_frames, totals.bytes), (5, 0, 5, 500));
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut samples: Vec<u32> = (1..=100).rev().collect();
        assert_eq!(percentile(&mut samples, 50.0), Some(50));
        assert_eq!(percentile(&mut samples, 99.0), Some(99));
        assert_eq!(percentile(&mut samples, 100.0), Some(100));
        assert_eq!(percentile(&mut [7u32], 1.0), Some(7));
        assert_eq!(percentile::<u32>(&mut [], 50.0), None);
    }
}
