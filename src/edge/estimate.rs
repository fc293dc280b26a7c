//! Which downlink estimate a client's video layers are sized to: the SFT's
//! own send-side estimate (transport-cc feedback, str0m's BWE with probing)
//! when the client gives feedback, else the client's REMB reports, each
//! capped by `media.max_receive_kbps`, which alone serves clients that give
//! neither.

use str0m::bwe::BweKind;

use crate::metrics::EstimateSource;

#[derive(Debug, Clone, Copy)]
pub struct DownlinkEstimate {
    ceiling: Option<u32>,
    /// The client gives transport-cc feedback: REMB, if any, is ignored.
    has_twcc: bool,
}

impl DownlinkEstimate {
    pub fn new(ceiling: Option<u32>) -> Self {
        Self { ceiling, has_twcc: false }
    }

    /// The estimate before any feedback: the ceiling, if one is set.
    pub fn initial(&self) -> Option<(EstimateSource, u32)> {
        self.ceiling.map(|ceiling| (EstimateSource::Ceiling, ceiling))
    }

    /// `bits_per_second`, or the ceiling when that is lower.
    pub fn cap(&self, bits_per_second: u64) -> u64 {
        self.ceiling.map_or(bits_per_second, |ceiling| bits_per_second.min(u64::from(ceiling)))
    }

    /// The estimate to use after str0m reported `kind`, or `None` when the
    /// report changes nothing.
    pub fn update(&mut self, kind: &BweKind) -> Option<(EstimateSource, u32)> {
        let (source, bits) = match kind {
            // Without probing, str0m repeats its last estimate once: nothing new.
            BweKind::Twcc { can_probe: false, .. } => return None,
            BweKind::Twcc { estimate, .. } => {
                self.has_twcc = true;
                (EstimateSource::Twcc, estimate.as_u64())
            }
            BweKind::Remb { .. } if self.has_twcc => return None,
            BweKind::Remb { estimate, .. } => (EstimateSource::Remb, estimate.as_u64()),
            _ => return None,
        };
        let bits = u32::try_from(bits).unwrap_or(u32::MAX);
        Some(match self.ceiling {
            Some(ceiling) if ceiling < bits => (EstimateSource::Ceiling, ceiling),
            _ => (source, bits),
        })
    }
}

#[cfg(test)]
mod tests {
    use str0m::bwe::Bitrate;
    use str0m::media::Mid;

    use super::*;

    fn twcc(kbps: u64, can_probe: bool) -> BweKind {
        BweKind::Twcc { estimate: Bitrate::kbps(kbps), can_probe }
    }

    fn remb(kbps: u64) -> BweKind {
        BweKind::Remb { estimate: Bitrate::kbps(kbps), mid: Mid::from("0") }
    }

    #[test]
    fn transport_cc_wins_over_remb_and_a_stale_estimate_changes_nothing() {
        let mut estimate = DownlinkEstimate::new(None);
        assert_eq!(estimate.initial(), None);
        assert_eq!(estimate.update(&remb(300)), Some((EstimateSource::Remb, 300_000)));
        assert_eq!(estimate.update(&twcc(900, true)), Some((EstimateSource::Twcc, 900_000)));
        assert_eq!(estimate.update(&remb(300)), None);
        assert_eq!(estimate.update(&twcc(900, false)), None);
    }

    #[test]
    fn the_ceiling_caps_every_source_and_stands_alone_without_feedback() {
        let mut estimate = DownlinkEstimate::new(Some(600_000));
        assert_eq!(estimate.initial(), Some((EstimateSource::Ceiling, 600_000)));
        assert_eq!(estimate.update(&remb(2_000)), Some((EstimateSource::Ceiling, 600_000)));
        assert_eq!(estimate.update(&twcc(400, true)), Some((EstimateSource::Twcc, 400_000)));
    }
}
