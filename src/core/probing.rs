//! When to probe a receiver's downlink, and toward what rate.
//!
//! str0m's send-side estimate probes above itself when the desired rate it
//! is given rises above the estimate (an "allocation probe"), or every 5 s
//! while the sender uses little of the estimate. A receiver held below its
//! wishes by a bottleneck that has since gone is sent close to its estimate
//! (the allocation spends it), so neither happens, and the estimate creeps
//! up by a few percent a second. So while a receiver gets more than 10 %
//! less than it wishes, every `interval` (counted from when it started
//! getting less, or from the last rise) the desired rate is lowered to what
//! it gets and, on an update at least 100 ms later, raised back to the wish:
//! str0m answers the rise with probes at once and twice the wish (at most
//! twice the estimate).

use std::time::{Duration, Instant};

/// How long the lowered desired rate stands before the rise, so str0m has
/// seen it: its probe controller compares rates between its own timeouts.
const REARM: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct ProbeSchedule {
    interval: Duration,
    /// The desired rate last handed out.
    desired: Option<u64>,
    phase: Option<Phase>,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Desired at the wish since this instant.
    AtWish(Instant),
    /// Desired lowered to what the receiver gets, at this instant.
    Lowered(Instant),
}

impl ProbeSchedule {
    pub fn new(interval: Duration) -> Self {
        Self { interval, desired: None, phase: None }
    }

    /// `wish` is what all the receiver's wishes cost and `gets` what its
    /// current layers cost (bits/s, both with headroom). Returns the desired
    /// rate to give str0m when it should change: a wobble of the measured
    /// rates under 10 % is not passed on.
    pub fn update(&mut self, now: Instant, wish: u64, gets: u64) -> Option<u64> {
        let wants_more = gets.saturating_mul(10) < wish.saturating_mul(9);
        // The interval counts from when the receiver started getting less.
        let phase = match self.phase {
            Some(phase) if wants_more => phase,
            _ => Phase::AtWish(now),
        };
        self.phase = Some(phase);
        let desired = match phase {
            Phase::Lowered(at) if now.saturating_duration_since(at) < REARM => gets,
            Phase::AtWish(since) if wants_more && now.saturating_duration_since(since) >= self.interval => {
                self.phase = Some(Phase::Lowered(now));
                gets
            }
            Phase::Lowered(_) => {
                self.phase = Some(Phase::AtWish(now));
                wish
            }
            Phase::AtWish(_) => wish,
        };
        let changed = self.desired.is_none_or(|last| desired.abs_diff(last) * 10 > last);
        if !changed {
            return None;
        }
        // str0m probes on any rise above its estimate: a raised wish is a
        // probe of its own, and the next one is an interval away.
        if self.desired.is_some_and(|last| desired > last) {
            self.phase = Some(Phase::AtWish(now));
        }
        self.desired = Some(desired);
        Some(desired)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a test needs some starting instant
mod tests {
    use super::*;

    fn ms(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn a_receiver_at_its_wish_is_given_the_wish_once() {
        let start = Instant::now();
        let mut schedule = ProbeSchedule::new(Duration::from_secs(3));
        assert_eq!(schedule.update(start, 1_000_000, 1_000_000), Some(1_000_000));
        for t in 1..100 {
            // Measured rates wobble by a few percent: nothing to pass on.
            let wobble = 1_000_000 + (t % 3) * 20_000;
            assert_eq!(schedule.update(ms(start, t * 300), wobble, wobble), None, "at {t}");
        }
    }

    #[test]
    fn a_receiver_below_its_wish_is_probed_every_interval() {
        let start = Instant::now();
        let mut schedule = ProbeSchedule::new(Duration::from_secs(3));
        let (wish, gets) = (1_000_000, 400_000);
        assert_eq!(schedule.update(start, wish, wish), Some(wish));
        // It gets less from here on: the interval counts from now.
        assert_eq!(schedule.update(start, wish, gets), None);
        assert_eq!(schedule.update(ms(start, 2_900), wish, gets), None);
        // Lowered to what it gets, then (not before 100 ms) raised: a probe.
        assert_eq!(schedule.update(ms(start, 3_000), wish, gets), Some(gets));
        assert_eq!(schedule.update(ms(start, 3_050), wish, gets), None);
        assert_eq!(schedule.update(ms(start, 3_300), wish, gets), Some(wish));
        // The next probe an interval after the rise.
        assert_eq!(schedule.update(ms(start, 6_200), wish, gets), None);
        assert_eq!(schedule.update(ms(start, 6_300), wish, gets), Some(gets));
        assert_eq!(schedule.update(ms(start, 6_600), wish, gets), Some(wish));
        // Once it gets what it wishes, no more probes.
        for t in 0..30 {
            assert_eq!(schedule.update(ms(start, 6_900 + t * 300), wish, wish), None);
        }
    }

    #[test]
    fn the_interval_counts_from_when_the_receiver_started_getting_less() {
        let start = Instant::now();
        let mut schedule = ProbeSchedule::new(Duration::from_secs(3));
        assert_eq!(schedule.update(start, 1_000_000, 1_000_000), Some(1_000_000));
        // At its wish for a minute (updated every 300 ms, as the conference
        // ticks), then held back: no probe at once into the queue that just
        // overflowed.
        for t in 1..200 {
            assert_eq!(schedule.update(ms(start, t * 300), 1_000_000, 1_000_000), None);
        }
        // Last at its wish at 59.7 s: the first lowering comes 3 s later.
        assert_eq!(schedule.update(ms(start, 60_000), 1_000_000, 400_000), None);
        assert_eq!(schedule.update(ms(start, 62_600), 1_000_000, 400_000), None);
        assert_eq!(schedule.update(ms(start, 62_700), 1_000_000, 400_000), Some(400_000));
        // A raised wish is a probe of its own: the next lowering waits.
        assert_eq!(schedule.update(ms(start, 62_900), 2_000_000, 400_000), Some(2_000_000));
        assert_eq!(schedule.update(ms(start, 65_800), 2_000_000, 400_000), None);
        assert_eq!(schedule.update(ms(start, 65_900), 2_000_000, 400_000), Some(400_000));
    }

    #[test]
    fn a_receiver_close_to_its_wish_is_not_probed() {
        let start = Instant::now();
        let mut schedule = ProbeSchedule::new(Duration::from_secs(3));
        assert_eq!(schedule.update(start, 1_000_000, 950_000), Some(1_000_000));
        for t in 1..40 {
            assert_eq!(schedule.update(ms(start, t * 300), 1_000_000, 950_000), None);
        }
    }
}
