//! Per-source token buckets on SETUP and DELETE (`limits.signalling_rate`,
//! `limits.signalling_burst`): a client that asks faster than the rate, once
//! its burst is spent, is told when to come back (429 `rate-limited` with
//! `Retry-After`).
//!
//! Pure: the caller passes the time. IPv6 sources are keyed by their /64,
//! the block one subscriber usually gets, so a host cannot dodge its bucket
//! by cycling addresses. The table is bounded: past [`MAX_SOURCES`], full
//! buckets (sources quiet long enough to have refilled) are forgotten; if
//! every bucket is in use, a new source goes unlimited rather than locking
//! out everyone new during a flood from many addresses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Sources tracked at once.
const MAX_SOURCES: usize = 65_536;
/// How often a full table is swept at most: a sweep walks every bucket.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: HashMap<IpAddr, Bucket>,
    last_sweep: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_second.max(1)),
            burst: f64::from(burst.max(1)),
            buckets: HashMap::new(),
            last_sweep: None,
        }
    }

    /// Takes a token from `source`'s bucket; `Err` with how long until one
    /// is back when it is empty.
    pub fn check(&mut self, now: Instant, source: IpAddr) -> Result<(), Duration> {
        let key = source_key(source);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= MAX_SOURCES {
            self.forget_full(now);
            if self.buckets.len() >= MAX_SOURCES {
                return Ok(());
            }
        }
        let (per_second, burst) = (self.per_second, self.burst);
        let bucket = self.buckets.entry(key).or_insert(Bucket { tokens: burst, updated: now });
        bucket.refill(now, per_second, burst);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
        }
    }

    fn forget_full(&mut self, now: Instant) {
        if self.last_sweep.is_some_and(|last| now.saturating_duration_since(last) < SWEEP_INTERVAL) {
            return;
        }
        self.last_sweep = Some(now);
        let (per_second, burst) = (self.per_second, self.burst);
        self.buckets.retain(|_, bucket| {
            bucket.refill(now, per_second, burst);
            bucket.tokens < burst
        });
    }
}

impl Bucket {
    fn refill(&mut self, now: Instant, per_second: f64, burst: f64) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_second).min(burst);
        self.updated = now;
    }
}

/// Who a source counts as: IPv4 addresses as they are, IPv6 by their /64
/// (IPv4-mapped ones as IPv4).
pub fn source_key(source: IpAddr) -> IpAddr {
    match source {
        IpAddr::V4(_) => source,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn a_burst_then_the_rate_and_each_source_on_its_own() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(2, 5);
        for _ in 0..5 {
            assert!(limiter.check(start, A).is_ok());
        }
        let wait = limiter.check(start, A).expect_err("the burst is spent");
        assert_eq!(wait, Duration::from_millis(500), "one token comes back every 500 ms");
        assert!(limiter.check(start, B).is_ok(), "another source has its own bucket");
        assert!(limiter.check(start + Duration::from_millis(499), A).is_err());
        assert!(limiter.check(start + Duration::from_millis(500), A).is_ok());
        // Quiet for long: back to a full burst, no more.
        let later = start + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| limiter.check(later, A).is_ok()).count(), 5);
    }

    #[test]
    fn ipv6_hosts_share_their_slash_64() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(1, 1);
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(limiter.check(start, one).is_ok());
        assert!(limiter.check(start, same_64).is_err());
        assert!(limiter.check(start, other_64).is_ok());
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert!(limiter.check(start, A).is_ok());
        assert!(limiter.check(start, mapped).is_err(), "an IPv4-mapped address is its IPv4 address");
    }

    #[test]
    fn the_table_stays_bounded_under_a_flood_of_sources() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(1, 2);
        for n in 0..(MAX_SOURCES as u32 + 1000) {
            let source = IpAddr::V4(n.into());
            assert!(limiter.check(start, source).is_ok());
        }
        assert!(limiter.buckets.len() <= MAX_SOURCES);
        // Once the first ones have refilled, they make room.
        let later = start + Duration::from_secs(5);
        assert!(limiter.check(later, IpAddr::V4(u32::MAX.into())).is_ok());
        assert!(limiter.buckets.len() <= MAX_SOURCES);
    }
}
