//! Who is speaking, from the RFC 6464 audio levels senders put in their RTP.
//!
//! Levels are averaged over one evaluation window (the SPEAKERS interval),
//! so a single loud packet does not reorder the audio and video slots.

use std::collections::HashMap;

use super::ids::ParticipantId;

/// RFC 6464: 127 is silence (-127 dBov), 0 the loudest.
pub const SILENCE: u8 = 127;

/// A window average at or below this counts as speaking (-60 dBov).
pub const SPEAKING_LEVEL: u8 = 60;

#[derive(Debug, Default)]
pub struct SpeakerTracker {
    windows: HashMap<ParticipantId, Window>,
    /// The levels of the last closed window, loudest first.
    ranking: Vec<(ParticipantId, u8)>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Window {
    sum: u64,
    count: u32,
}

impl SpeakerTracker {
    /// Records the level of one audio packet.
    pub fn observe(&mut self, participant: ParticipantId, level: u8) {
        let window = self.windows.entry(participant).or_default();
        window.sum += u64::from(level.min(SILENCE));
        window.count += 1;
    }

    pub fn forget(&mut self, participant: ParticipantId) {
        self.windows.remove(&participant);
        self.ranking.retain(|(p, _)| *p != participant);
    }

    /// Closes the window: ranks everyone heard in it, loudest first (ties by
    /// join order), and starts a new window.
    pub fn close_window(&mut self) -> &[(ParticipantId, u8)] {
        self.ranking.clear();
        for (participant, window) in self.windows.drain() {
            if window.count > 0 {
                let average = (window.sum / u64::from(window.count)) as u8;
                self.ranking.push((participant, average));
            }
        }
        self.ranking.sort_by_key(|&(participant, level)| (level, participant));
        &self.ranking
    }

    /// The last closed window's ranking, loudest first.
    pub fn ranking(&self) -> &[(ParticipantId, u8)] {
        &self.ranking
    }

    /// The last closed window's level of one participant; silence if unheard.
    pub fn level(&self, participant: ParticipantId) -> u8 {
        self.ranking.iter().find(|(p, _)| *p == participant).map_or(SILENCE, |&(_, level)| level)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_by_window_average_loudest_first() {
        let mut tracker = SpeakerTracker::default();
        let (a, b, c) = (ParticipantId(1), ParticipantId(2), ParticipantId(3));
        tracker.observe(a, 40);
        tracker.observe(a, 60); // average 50
        tracker.observe(b, 10);
        tracker.observe(c, 127);
        let ranking = tracker.close_window().to_vec();
        assert_eq!(ranking, vec![(b, 10), (a, 50), (c, 127)]);
        assert_eq!(tracker.level(a), 50);
    }

    #[test]
    fn a_new_window_starts_empty() {
        let mut tracker = SpeakerTracker::default();
        tracker.observe(ParticipantId(1), 3);
        tracker.close_window();
        assert!(tracker.close_window().is_empty());
        assert_eq!(tracker.level(ParticipantId(1)), SILENCE);
    }

    #[test]
    fn out_of_range_levels_count_as_silence() {
        let mut tracker = SpeakerTracker::default();
        tracker.observe(ParticipantId(1), 200);
        assert_eq!(tracker.close_window(), &[(ParticipantId(1), SILENCE)]);
    }
}
