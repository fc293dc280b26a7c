//! The measured bitrate of one published stream (a simulcast layer, or an
//! audio stream), so layer allocation spends estimates on what sources
//! really send rather than on constants.

use std::time::{Duration, Instant};

/// Bytes are counted over windows of this length.
const WINDOW: Duration = Duration::from_secs(1);

/// Bits per second over the last two complete windows, so a keyframe's
/// burst is spread rather than taken for the stream's rate. Allocation-free;
/// one addition per packet.
#[derive(Debug, Clone, Copy, Default)]
pub struct BitrateMeter {
    window_start: Option<Instant>,
    bytes: u64,
    /// The rate of the window before the last one.
    previous: Option<u32>,
    /// The rate of the last complete window, and when it ended.
    last: Option<(u32, Instant)>,
}

impl BitrateMeter {
    pub fn record(&mut self, now: Instant, bytes: usize) {
        self.roll(now);
        self.bytes = self.bytes.saturating_add(bytes as u64);
    }

    /// The measured rate, `None` before a first complete window or once the
    /// stream has sent nothing for three windows.
    pub fn rate(&self, now: Instant) -> Option<u32> {
        let (last, ended) = self.last?;
        let silent = self.window_start.map_or(ended, |start| start.max(ended));
        let rate = self.previous.map_or(last, |previous| ((u64::from(previous) + u64::from(last)) / 2) as u32);
        (now.saturating_duration_since(silent) < 3 * WINDOW).then_some(rate)
    }

    fn roll(&mut self, now: Instant) {
        let Some(start) = self.window_start else {
            self.window_start = Some(now);
            return;
        };
        let elapsed = now.saturating_duration_since(start);
        if elapsed < WINDOW {
            return;
        }
        // A gap longer than a window counts as silence in the average.
        let millis = elapsed.as_millis().max(1) as u64;
        let rate = self.bytes.saturating_mul(8 * 1000) / millis;
        self.previous = self.last.map(|(rate, _)| rate);
        self.last = Some((u32::try_from(rate).unwrap_or(u32::MAX), now));
        self.window_start = Some(now);
        self.bytes = 0;
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a test needs some starting instant
mod tests {
    use super::*;

    #[test]
    fn measures_a_steady_stream() {
        let start = Instant::now();
        let mut meter = BitrateMeter::default();
        assert_eq!(meter.rate(start), None);
        // 1000 bytes every 10 ms: 800 kbit/s.
        for tick in 0..=300u64 {
            meter.record(start + Duration::from_millis(tick * 10), 1000);
        }
        let rate = meter.rate(start + Duration::from_millis(3000)).unwrap();
        assert!((790_000..=810_000).contains(&rate), "{rate}");
    }

    #[test]
    fn a_burst_is_spread_over_two_windows() {
        let start = Instant::now();
        let mut meter = BitrateMeter::default();
        // 100 bytes every 10 ms (80 kbit/s), and one 10 kB keyframe in the second window.
        let send = |meter: &mut BitrateMeter, ticks: std::ops::RangeInclusive<u64>| {
            for tick in ticks {
                let size = if tick == 150 { 10_000 } else { 100 };
                meter.record(start + Duration::from_millis(tick * 10), size);
            }
        };
        send(&mut meter, 0..=200);
        // Half of the burst's window: 80 + 80 / 2 kbit/s.
        let after_burst = meter.rate(start + Duration::from_millis(2000)).unwrap();
        assert!((110_000..=130_000).contains(&after_burst), "{after_burst}");
        send(&mut meter, 201..=400);
        let settled = meter.rate(start + Duration::from_millis(4000)).unwrap();
        assert!((75_000..=85_000).contains(&settled), "{settled}");
    }

    #[test]
    fn a_silent_stream_has_no_rate() {
        let start = Instant::now();
        let mut meter = BitrateMeter::default();
        for tick in 0..=110u64 {
            meter.record(start + Duration::from_millis(tick * 10), 1000);
        }
        assert!(meter.rate(start + Duration::from_millis(1200)).is_some());
        assert_eq!(meter.rate(start + Duration::from_secs(5)), None);
    }
}
