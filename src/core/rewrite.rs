//! SSRC/sequence/timestamp rewriting for one receive slot.
//!
//! A slot keeps one outgoing SSRC for the whole session while its source
//! changes underneath. The receiver must see one continuous stream: sequence
//! numbers that go up by one across a switch (or its jitter buffer would
//! count the gap as loss and NACK it) and timestamps that move forward by
//! roughly the wall-clock time that passed (or it would mis-time playout).

use std::time::Instant;

use super::ids::StreamKey;

/// The first outgoing sequence number. Kept below 2^16 so the receiver's
/// SRTP rollover counter starts at zero without out-of-band signalling.
const FIRST_SEQ: u64 = 1;

#[derive(Debug)]
pub struct SlotRewriter {
    clock_rate: u32,
    current: Option<Mapping>,
    last_out: Option<LastOut>,
}

#[derive(Debug, Clone, Copy)]
struct Mapping {
    source: StreamKey,
    /// The first source sequence number forwarded since the switch; anything
    /// older belongs to the time before the switch and is dropped.
    first_in_seq: u64,
    seq_offset: u64,
    ts_offset: u32,
}

#[derive(Debug, Clone, Copy)]
struct LastOut {
    seq: u64,
    ts: u32,
    at: Instant,
}

impl SlotRewriter {
    pub fn new(clock_rate: u32) -> Self {
        Self { clock_rate, current: None, last_out: None }
    }

    /// The source currently forwarded into this slot.
    pub fn source(&self) -> Option<StreamKey> {
        self.current.map(|m| m.source)
    }

    /// Starts forwarding `source` from the packet `(in_seq, in_ts)` on.
    pub fn switch_to(&mut self, now: Instant, source: StreamKey, in_seq: u64, in_ts: u32) {
        let (out_seq, out_ts) = match self.last_out {
            None => (FIRST_SEQ, in_ts),
            Some(last) => {
                let elapsed = now.saturating_duration_since(last.at);
                let ticks = (elapsed.as_secs_f64() * f64::from(self.clock_rate)) as u64;
                // At least one tick, so the first frame of the new source is
                // never "the same frame" as the last one of the old source.
                let ticks = ticks.clamp(1, u64::from(u32::MAX / 2)) as u32;
                // Wrapping on purpose: a relay peer supplies the sequence numbers.
                (last.seq.wrapping_add(1), last.ts.wrapping_add(ticks))
            }
        };
        self.current = Some(Mapping {
            source,
            first_in_seq: in_seq,
            seq_offset: out_seq.wrapping_sub(in_seq),
            ts_offset: out_ts.wrapping_sub(in_ts),
        });
    }

    /// Stops forwarding; the next `switch_to` continues the numbering.
    pub fn clear(&mut self) {
        self.current = None;
    }

    /// Maps a packet of the current source to the slot's numbering, or
    /// `None` when it is from before the last switch.
    pub fn rewrite(&mut self, now: Instant, in_seq: u64, in_ts: u32) -> Option<(u64, u32)> {
        let mapping = self.current?;
        if in_seq < mapping.first_in_seq {
            return None;
        }
        let out_seq = in_seq.wrapping_add(mapping.seq_offset);
        let out_ts = in_ts.wrapping_add(mapping.ts_offset);
        let newest = self.last_out.is_none_or(|last| out_seq > last.seq);
        if newest {
            self.last_out = Some(LastOut { seq: out_seq, ts: out_ts, at: now });
        }
        Some((out_seq, out_ts))
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a test needs some starting instant
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::core::ids::{Layer, ParticipantId};

    fn key(p: u64) -> StreamKey {
        StreamKey::video(ParticipantId(p), Layer::High)
    }

    #[test]
    fn first_source_starts_at_one_and_keeps_its_timestamps() {
        let now = Instant::now();
        let mut rw = SlotRewriter::new(90_000);
        rw.switch_to(now, key(1), 5000, 777);
        assert_eq!(rw.rewrite(now, 5000, 777), Some((1, 777)));
        assert_eq!(rw.rewrite(now, 5001, 3777), Some((2, 3777)));
    }

    #[test]
    fn switch_continues_sequence_and_advances_time() {
        let t0 = Instant::now();
        let mut rw = SlotRewriter::new(90_000);
        rw.switch_to(t0, key(1), 100, 1000);
        for i in 0..10 {
            rw.rewrite(t0, 100 + i, 1000);
        }
        let t1 = t0 + Duration::from_millis(100);
        rw.switch_to(t1, key(2), 60_000, 4_000_000_000);
        let (seq, ts) = rw.rewrite(t1, 60_000, 4_000_000_000).unwrap();
        assert_eq!(seq, 11);
        assert_eq!(ts, 1000 + 9000);
        assert_eq!(rw.rewrite(t1, 60_001, 4_000_000_090), Some((12, 1000 + 9090)));
    }

    #[test]
    fn packets_from_before_the_switch_are_dropped() {
        let now = Instant::now();
        let mut rw = SlotRewriter::new(90_000);
        rw.switch_to(now, key(1), 100, 0);
        assert_eq!(rw.rewrite(now, 99, 0), None);
    }

    #[test]
    fn reordered_packet_keeps_its_place_and_does_not_rewind() {
        let now = Instant::now();
        let mut rw = SlotRewriter::new(48_000);
        rw.switch_to(now, key(1), 10, 0);
        rw.rewrite(now, 10, 0);
        rw.rewrite(now, 12, 1920);
        assert_eq!(rw.rewrite(now, 11, 960), Some((2, 960)));
        // The next switch continues after the highest number sent (3), not 2.
        rw.switch_to(now, key(2), 500, 0);
        assert_eq!(rw.rewrite(now, 500, 0).unwrap().0, 4);
    }

    #[test]
    fn timestamps_wrap_around() {
        let now = Instant::now();
        let mut rw = SlotRewriter::new(90_000);
        rw.switch_to(now, key(1), 1, u32::MAX - 10);
        assert_eq!(rw.rewrite(now, 2, 5).unwrap().1, 5);
    }

    /// Arbitrary scripts of switches and packets, numbers from a peer
    /// included (any u64 sequence, any timestamp): never a panic, and the
    /// first packet after a switch always continues the slot's numbering.
    #[test]
    fn fuzzed_sequences_never_panic_and_switches_continue_the_numbering() {
        let samples: [&[u8]; 2] = [&[0; 64], &[0xff; 64]];
        crate::fuzz::run(5, &samples, |script| {
            let mut now = Instant::now();
            let mut rw = SlotRewriter::new(90_000);
            let mut highest: Option<u64> = None;
            for op in script.chunks(14) {
                let number = |at: usize, len: usize| {
                    op.get(at..at + len).map_or(0, |b| b.iter().fold(0u64, |n, byte| n << 8 | u64::from(*byte)))
                };
                let (seq, ts) = (number(1, 8), number(9, 4) as u32);
                now += Duration::from_millis(number(13, 1));
                if op[0] % 4 == 0 {
                    rw.switch_to(now, key(u64::from(op[0])), seq, ts);
                    let (out, _) = rw.rewrite(now, seq, ts).expect("the switch packet itself goes through");
                    assert_eq!(out, highest.map_or(FIRST_SEQ, |h| h.wrapping_add(1)));
                }
                if let Some((out, _)) = rw.rewrite(now, seq, ts) {
                    highest = Some(highest.map_or(out, |h| h.max(out)));
                }
            }
        });
    }
}
