//! How one receiver's downlink estimate is spent across its video slots.
//!
//! Pure and allocation-light: the conference calls [`allocate`] with the
//! slots in priority order (REQSTREAMS order, else the most recent speaker
//! first) and the measured bitrate of each layer their sources publish, and
//! [`Hysteresis`] decides when a new allocation may replace the current one:
//! at once when it is lower, and when higher only as far as the lowest
//! estimate of the last while pays for.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::ids::Layer;

/// What one video slot asks for: whose stream (`source`, any id unique
/// among the slots), the best layer it wants and, ascending, the layers its
/// source sends with their measured bitrates (bits/s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotDemand {
    pub source: u64,
    pub wanted: Layer,
    pub layers: Vec<(Layer, u32)>,
}

/// What a slot gets: a layer, or nothing because even its lowest layer does
/// not fit (the slot is paused, and CONFPART says so).
pub type Allocation = Vec<Option<Layer>>;

/// Spends `budget` bits/s over `slots` (priority order) in two passes:
/// first every slot, in order, gets its lowest layer if that still fits
/// (so a lower-priority slot is not starved by a higher one's top layer);
/// then, in order, each slot is raised to the best layer up to its wish
/// that the rest of the budget pays for. Audio is not in the budget: the
/// caller subtracts it first, so it is never starved.
pub fn allocate(budget: u32, slots: &[SlotDemand]) -> Allocation {
    let mut left = u64::from(budget);
    let mut allocation: Allocation = slots
        .iter()
        .map(|slot| {
            let &(lowest, rate) = slot.layers.first()?;
            let rate = u64::from(rate);
            (rate <= left).then(|| {
                left -= rate;
                lowest
            })
        })
        .collect();
    for (slot, chosen) in slots.iter().zip(allocation.iter_mut()) {
        let Some(current) = *chosen else { continue };
        let paid = u64::from(rate_of(slot, current));
        let best = slot
            .layers
            .iter()
            .rev()
            .find(|&&(layer, rate)| layer <= slot.wanted.max(current) && u64::from(rate) <= left + paid);
        if let Some(&(layer, rate)) = best {
            left = left + paid - u64::from(rate);
            *chosen = Some(layer);
        }
    }
    allocation
}

/// What `allocation` spends on `slots`.
pub fn cost(slots: &[SlotDemand], allocation: &[Option<Layer>]) -> u64 {
    slots.iter().zip(allocation).map(|(slot, layer)| layer.map_or(0, |l| u64::from(rate_of(slot, l)))).sum()
}

/// What `slots` would spend if each got its wish: the best layer its
/// source sends at or below the wish (or its lowest).
pub fn wish_cost(slots: &[SlotDemand]) -> u64 {
    slots.iter().filter_map(|slot| clamp(slot, slot.wanted).map(|layer| u64::from(rate_of(slot, layer)))).sum()
}

fn rate_of(slot: &SlotDemand, layer: Layer) -> u32 {
    slot.layers.iter().find(|(l, _)| *l == layer).map_or(0, |(_, rate)| *rate)
}

/// The best layer `slot` sends at or below `layer`, else its lowest.
fn clamp(slot: &SlotDemand, layer: Layer) -> Option<Layer> {
    let below = slot.layers.iter().rev().find(|(l, _)| *l <= layer);
    below.or(slot.layers.first()).map(|(l, _)| *l)
}

/// Decides when a new allocation takes over. Lower: a slot whose wish fell
/// below what it has, at once; every slot, only when what the slots have
/// now costs more than the estimate, and then no slot goes up.
/// Higher: to what the lowest estimate of the last `hold` pays for with
/// `headroom` to spare, and only when no slot goes down by it. So a rise of
/// the estimate waits out the hold, while a layer that starts flowing (or
/// gets measured) under an estimate that has long paid for it is taken at
/// once. A source new to the slots starts at what that held estimate pays
/// for. State is kept per source, so speakers moving between slots carry
/// nothing to each other.
#[derive(Debug, Clone)]
pub struct Hysteresis {
    hold: Duration,
    /// Percent of extra estimate an upgrade must leave unused.
    headroom_percent: u32,
    /// Per source: the layer it gets, `None` while paused.
    current: Vec<(u64, Option<Layer>)>,
    /// The estimates of (at least) the last `hold`, oldest first, each with
    /// the instant it took effect; only changes are kept.
    estimates: VecDeque<(Instant, u32)>,
}

impl Hysteresis {
    pub fn new(hold: Duration, headroom_percent: u32) -> Self {
        Self { hold, headroom_percent, current: Vec::new(), estimates: VecDeque::new() }
    }

    /// Re-allocates for the estimate `budget` at `now`; returns, per slot of
    /// `slots`, the layer to use from now on.
    pub fn update(&mut self, now: Instant, budget: u32, slots: &[SlotDemand]) -> Allocation {
        let held = self.held_estimate(now, budget);
        let spare = u64::from(held) * 100 / u64::from(100 + self.headroom_percent);
        let target = allocate(u32::try_from(spare).unwrap_or(u32::MAX), slots);
        // What each slot has now: its source's layer (no higher than the
        // slot now wishes, clamped to what flows), or for a source new to the
        // slots, the target.
        let mut current: Allocation = slots
            .iter()
            .zip(&target)
            .map(|(slot, fresh)| match self.current.iter().find(|(source, _)| *source == slot.source) {
                Some((_, layer)) => layer.and_then(|l| clamp(slot, l.min(slot.wanted))),
                None => *fresh,
            })
            .collect();
        if cost(slots, &current) > u64::from(budget) {
            // Over the estimate: re-allocate with no slot above what it has.
            let capped: Vec<SlotDemand> = slots
                .iter()
                .zip(&current)
                .map(|(slot, layer)| {
                    let layers = match layer {
                        Some(layer) => slot.layers.iter().copied().filter(|(l, _)| l <= layer).collect(),
                        None => Vec::new(),
                    };
                    SlotDemand { layers, ..slot.clone() }
                })
                .collect();
            current = allocate(budget, &capped);
        } else if target.iter().zip(&current).all(|(t, c)| t >= c) {
            current = target;
        }
        self.current = slots.iter().map(|slot| slot.source).zip(current.iter().copied()).collect();
        current
    }

    /// Records `budget` as the estimate from `now` on and returns the lowest
    /// estimate in effect at any time during the last `hold`.
    fn held_estimate(&mut self, now: Instant, budget: u32) -> u32 {
        if self.estimates.back().is_none_or(|&(_, last)| last != budget) {
            self.estimates.push_back((now, budget));
        }
        // An estimate replaced before the hold began no longer counts.
        let hold_began = now.checked_sub(self.hold);
        while self.estimates.get(1).is_some_and(|&(next, _)| hold_began.is_some_and(|began| next <= began)) {
            self.estimates.pop_front();
        }
        self.estimates.iter().map(|&(_, estimate)| estimate).min().unwrap_or(budget)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a test needs some starting instant
mod tests {
    use super::Layer::*;
    use super::*;

    const RATES: [(Layer, u32); 3] = [(Low, 150_000), (Medium, 500_000), (High, 1_500_000)];

    fn simulcast(source: u64, wanted: Layer) -> SlotDemand {
        SlotDemand { source, wanted, layers: RATES.to_vec() }
    }

    fn single(source: u64, rate: u32) -> SlotDemand {
        SlotDemand { source, wanted: High, layers: vec![(High, rate)] }
    }

    #[test]
    fn a_generous_budget_gives_every_slot_its_wish() {
        let slots = [simulcast(1, High), simulcast(2, Medium), simulcast(3, Low)];
        assert_eq!(allocate(10_000_000, &slots), vec![Some(High), Some(Medium), Some(Low)]);
    }

    #[test]
    fn every_slot_gets_its_lowest_layer_before_any_gets_more() {
        let slots = [simulcast(1, High), simulcast(2, High)];
        // 1.6 Mbit/s would pay for h in the first slot alone; m for both is chosen.
        assert_eq!(allocate(1_600_000, &slots), vec![Some(Medium), Some(Medium)]);
        // Enough for h and l: the first slot, in priority order, gets h.
        assert_eq!(allocate(1_650_000, &slots), vec![Some(High), Some(Low)]);
        assert_eq!(allocate(300_000, &slots), vec![Some(Low), Some(Low)]);
    }

    #[test]
    fn slots_that_do_not_fit_even_at_low_are_paused_from_the_lowest_priority() {
        let slots = [simulcast(1, High), simulcast(2, High), simulcast(3, High)];
        assert_eq!(allocate(320_000, &slots), vec![Some(Low), Some(Low), None]);
        assert_eq!(allocate(100_000, &slots), vec![None, None, None]);
    }

    #[test]
    fn a_single_encoding_source_is_all_or_nothing() {
        assert_eq!(allocate(1_000_000, &[single(1, 800_000)]), vec![Some(High)]);
        assert_eq!(allocate(700_000, &[single(1, 800_000)]), vec![None]);
    }

    #[test]
    fn a_wish_below_the_lowest_layer_still_gets_the_lowest() {
        let slot = SlotDemand { source: 1, wanted: Low, layers: vec![(Medium, 500_000), (High, 1_500_000)] };
        assert_eq!(allocate(5_000_000, &[slot]), vec![Some(Medium)]);
    }

    #[test]
    fn the_wish_costs_the_best_layer_at_or_below_each_wish() {
        let slots = [simulcast(1, High), simulcast(2, Medium), single(3, 700_000), simulcast(4, Low)];
        assert_eq!(wish_cost(&slots), 1_500_000 + 500_000 + 700_000 + 150_000);
        let unmeasured = SlotDemand { source: 5, wanted: Low, layers: vec![(Medium, 500_000)] };
        assert_eq!(wish_cost(&[unmeasured]), 500_000);
    }

    #[test]
    fn lower_at_once_higher_only_after_the_hold() {
        let start = Instant::now();
        let slots = [simulcast(1, High)];
        let mut hysteresis = Hysteresis::new(Duration::from_secs(3), 20);
        assert_eq!(hysteresis.update(start, 2_000_000, &slots), [Some(High)]);
        // The estimate drops: down at the very next update.
        assert_eq!(hysteresis.update(start + Duration::from_millis(100), 400_000, &slots), [Some(Low)]);
        // It recovers: the upgrade waits for the hold...
        let recovered = start + Duration::from_secs(1);
        assert_eq!(hysteresis.update(recovered, 2_000_000, &slots), [Some(Low)]);
        assert_eq!(hysteresis.update(recovered + Duration::from_secs(2), 2_000_000, &slots), [Some(Low)]);
        // ...and happens once the estimate has held for it.
        assert_eq!(hysteresis.update(recovered + Duration::from_secs(3), 2_000_000, &slots), [Some(High)]);
    }

    #[test]
    fn an_upgrade_needs_headroom() {
        let start = Instant::now();
        let slots = [simulcast(1, High)];
        let mut hysteresis = Hysteresis::new(Duration::from_secs(1), 20);
        hysteresis.update(start, 400_000, &slots);
        // 1.6 Mbit/s pays for h but leaves under 20 % spare: m (after the hold), never h.
        for second in 1..10 {
            let now = start + Duration::from_secs(second);
            let expected = if second < 2 { Low } else { Medium };
            assert_eq!(hysteresis.update(now, 1_600_000, &slots), [Some(expected)], "second {second}");
        }
    }

    #[test]
    fn a_dip_during_the_hold_restarts_it() {
        let start = Instant::now();
        let slots = [simulcast(1, High)];
        let mut hysteresis = Hysteresis::new(Duration::from_secs(3), 20);
        hysteresis.update(start, 400_000, &slots);
        hysteresis.update(start + Duration::from_secs(1), 2_000_000, &slots);
        hysteresis.update(start + Duration::from_secs(2), 400_000, &slots);
        hysteresis.update(start + Duration::from_secs(3), 2_000_000, &slots);
        assert_eq!(hysteresis.update(start + Duration::from_secs(5), 2_000_000, &slots), [Some(Low)]);
        assert_eq!(hysteresis.update(start + Duration::from_secs(6), 2_000_000, &slots), [Some(High)]);
    }

    /// A rising estimate that a fresh allocation would share out differently
    /// (h + l instead of m + m) changes nothing: no slot is lowered by it.
    #[test]
    fn a_rising_estimate_never_lowers_a_slot() {
        let start = Instant::now();
        let slots = [simulcast(1, High), simulcast(2, High)];
        let mut hysteresis = Hysteresis::new(Duration::from_secs(3), 15);
        assert_eq!(hysteresis.update(start, 1_200_000, &slots), [Some(Medium), Some(Medium)]);
        for tick in 1..40 {
            let now = start + Duration::from_millis(300 * tick);
            assert_eq!(hysteresis.update(now, 1_700_000, &slots), [Some(Medium), Some(Medium)], "tick {tick}");
        }
    }

    /// A single-encoding source taking over a slot that held another
    /// source's `l` gets what fits for itself, not the old source's layer.
    #[test]
    fn a_new_source_in_a_slot_inherits_nothing() {
        let start = Instant::now();
        let mut hysteresis = Hysteresis::new(Duration::from_secs(3), 15);
        assert_eq!(hysteresis.update(start, 400_000, &[simulcast(1, High)]), [Some(Low)]);
        let now = start + Duration::from_millis(300);
        assert_eq!(hysteresis.update(now, 400_000, &[single(2, 300_000)]), [Some(High)]);
        assert_eq!(hysteresis.update(now, 250_000, &[single(2, 300_000)]), [None]);
    }

    /// A layer that gets measured under an estimate that has long paid for
    /// it is taken at once: only a rise of the estimate waits out the hold.
    #[test]
    fn a_newly_measured_layer_under_a_held_estimate_is_taken_at_once() {
        let start = Instant::now();
        let mut hysteresis = Hysteresis::new(Duration::from_secs(3), 15);
        let unmeasured = SlotDemand { source: 1, wanted: High, layers: vec![(Low, 0)] };
        assert_eq!(hysteresis.update(start, 4_000_000, &[unmeasured]), [Some(Low)]);
        let measured = start + Duration::from_millis(1500);
        assert_eq!(hysteresis.update(measured, 4_000_000, &[simulcast(1, High)]), [Some(High)]);
    }

    /// What an upgrade may spend is the lowest estimate in effect at any
    /// moment of the hold, however the estimate moved in between.
    #[test]
    fn the_held_estimate_is_the_lowest_of_the_whole_hold() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut hysteresis = Hysteresis::new(Duration::from_secs(2), 0);
        let slots = [simulcast(1, High)];
        hysteresis.update(at(0), 300_000, &slots);
        hysteresis.update(at(1000), 900_000, &slots);
        // 300k was in effect until 1 s: still inside the hold at 2.5 s.
        assert_eq!(hysteresis.update(at(2000), 600_000, &slots), [Some(Low)]);
        assert_eq!(hysteresis.update(at(2500), 600_000, &slots), [Some(Low)]);
        // At 3.2 s the hold covers 900k and 600k only: m (500k) fits.
        assert_eq!(hysteresis.update(at(3200), 600_000, &slots), [Some(Medium)]);
    }

    /// A lower wish is followed at once, and does not hold back another
    /// slot's raise (REQSTREAMS swapping two sources' qualities).
    #[test]
    fn a_lower_wish_is_followed_at_once() {
        let start = Instant::now();
        let mut hysteresis = Hysteresis::new(Duration::from_secs(3), 15);
        let before = [simulcast(1, Low), simulcast(2, High)];
        assert_eq!(hysteresis.update(start, 4_000_000, &before), [Some(Low), Some(High)]);
        let swapped = [simulcast(2, Medium), simulcast(1, High)];
        let now = start + Duration::from_millis(300);
        assert_eq!(hysteresis.update(now, 4_000_000, &swapped), [Some(Medium), Some(High)]);
    }

    /// A seeded random estimate trace: whatever the allocation holds never
    /// costs more than the estimate it was last updated with, and the same
    /// estimate held for a while gives the same allocation at every update.
    #[test]
    fn never_over_budget_and_steady_under_a_steady_estimate() {
        let start = Instant::now();
        let slots = [simulcast(1, High), simulcast(2, Medium), single(3, 700_000), simulcast(4, Low)];
        let mut hysteresis = Hysteresis::new(Duration::from_secs(2), 15);
        let mut state: u64 = 0x5eed;
        let mut now = start;
        for segment in 0..300 {
            // xorshift: a cheap deterministic sequence.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let budget = (state % 5_000_000) as u32;
            let mut seen = Vec::new();
            // Each estimate holds for 4 s, updated every 300 ms.
            for _ in 0..14 {
                now += Duration::from_millis(300);
                let allocation = hysteresis.update(now, budget, &slots);
                let spent = cost(&slots, &allocation);
                assert!(spent <= u64::from(budget), "segment {segment}: {allocation:?} spends {spent} of {budget}");
                seen.push(allocation);
            }
            // After the hold, nothing moves any more.
            let settled = &seen[8..];
            assert!(settled.windows(2).all(|w| w[0] == w[1]), "segment {segment} flaps: {settled:?}");
        }
    }
}
