//! Pacing events to a rate: a token bucket that tells the caller how long
//! to wait rather than dropping, for inputs that must not be lost (a relay
//! peer's control messages) but must not run faster than a limit either.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Pacer {
    per_second: f64,
    burst: f64,
    /// Tokens left after the last event; negative while events wait.
    tokens: f64,
    updated: Option<Instant>,
}

impl Pacer {
    /// At most `per_second` events a second on average (at least 1), after
    /// a burst of up to `burst`.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self { per_second: f64::from(per_second.max(1)), burst, tokens: burst, updated: None }
    }

    /// Takes one event's token at `now` if there is one: for inputs that
    /// are dropped, not delayed, beyond the rate (a refused event costs
    /// nothing, so a client that slows down is served again at once).
    pub fn try_take(&mut self, now: Instant) -> bool {
        let wait = self.wait_for_next(now, 1);
        if wait > Duration::ZERO {
            self.tokens += 1.0;
        }
        wait == Duration::ZERO
    }

    /// Counts an event worth `cost` events (at least one) at `now`; returns
    /// how long it must wait to keep to the rate (zero while the burst lasts).
    pub fn wait_for_next(&mut self, now: Instant, cost: u32) -> Duration {
        if let Some(updated) = self.updated {
            let refill = now.saturating_duration_since(updated).as_secs_f64() * self.per_second;
            self.tokens = (self.tokens + refill).min(self.burst);
        }
        self.updated = Some(now);
        self.tokens -= f64::from(cost.max(1));
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.per_second)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::disallowed_methods)] // a test needs some starting instant
    fn start() -> Instant {
        Instant::now()
    }

    #[test]
    fn try_take_refuses_beyond_the_rate_without_running_into_debt() {
        let now = start();
        let mut pacer = Pacer::new(10, 2);
        assert!(pacer.try_take(now) && pacer.try_take(now));
        for _ in 0..100 {
            assert!(!pacer.try_take(now), "a flood is refused");
        }
        assert!(pacer.try_take(now + Duration::from_millis(100)), "one token back after 100 ms, flood or not");
    }

    #[test]
    fn a_burst_passes_then_events_wait_their_turn() {
        let now = start();
        let mut pacer = Pacer::new(100, 10);
        for _ in 0..10 {
            assert_eq!(pacer.wait_for_next(now, 1), Duration::ZERO);
        }
        assert_eq!(pacer.wait_for_next(now, 1), Duration::from_millis(10));
        assert_eq!(pacer.wait_for_next(now, 1), Duration::from_millis(20));
    }

    #[test]
    fn a_flood_runs_at_the_rate_whatever_its_size() {
        // 1,000 events at once at 200 a second: the last waits about 5 s
        // (less the burst), so a second of flooding costs the flooder 5 s.
        let now = start();
        let mut pacer = Pacer::new(200, 20);
        let last = (0..1000).map(|_| pacer.wait_for_next(now, 1)).last().unwrap();
        assert_eq!(last.as_millis(), 4900);
        // Time that passes pays the debt back; a quiet link gets its burst again.
        assert_eq!(pacer.wait_for_next(now + Duration::from_secs(60), 1), Duration::ZERO);
    }

    #[test]
    fn a_costly_event_waits_as_long_as_that_many_events() {
        let now = start();
        let mut pacer = Pacer::new(1000, 1000);
        assert_eq!(pacer.wait_for_next(now, 0), Duration::ZERO, "at least one");
        assert_eq!(pacer.wait_for_next(now, 2999).as_millis(), 2000);
    }
}
