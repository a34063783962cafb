//! Token buckets: [`TokenBucket`] (one budget: a relay session's bytes, the
//! relay's total) and [`SourceLimiter`] (one bucket per source address for
//! requests). Sans-IO: `now` is passed in.
//!
//! A source is an IPv4 address or an IPv6 /64 ([`SourceKey`]): one host
//! usually holds a whole /64, so limiting single IPv6 addresses would limit
//! nothing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Who a limit applies to: an IPv4 address, or the /64 of an IPv6 address
/// (an IPv4-mapped IPv6 address counts as its IPv4 address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKey {
    /// An IPv4 address.
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address.
    V6([u8; 8]),
}

impl SourceKey {
    /// The source `ip` counts as.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => SourceKey::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey::V4(v4.octets()),
                None => {
                    let o = v6.octets();
                    SourceKey::V6([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]])
                }
            },
        }
    }
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
/// Spending may run into debt; the debt says how long to wait.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. A `rate` of 0 means unlimited.
    pub fn new(now: Instant, rate: f64, burst: f64) -> Self {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// Tokens added per second (0: unlimited).
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Spends `cost` tokens (going into debt if need be) and returns how
    /// long the caller must wait before the spending is covered.
    pub fn spend(&mut self, now: Instant, cost: f64) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        self.refill(now);
        self.tokens -= cost;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// Spends `cost` tokens if there are that many; otherwise spends nothing
    /// and returns how long until there will be.
    pub fn try_spend(&mut self, now: Instant, cost: f64) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        self.refill(now);
        if self.tokens >= cost {
            self.tokens -= cost;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((cost - self.tokens) / self.rate))
        }
    }

    /// Whether the bucket has refilled completely by `now` (forgetting it
    /// loses nothing).
    fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }
}

/// One request budget per source, bounded in how many sources it tracks.
#[derive(Debug)]
pub struct SourceLimiter {
    rate: f64,
    burst: f64,
    max_sources: usize,
    buckets: HashMap<SourceKey, TokenBucket>,
}

impl SourceLimiter {
    /// `rate` requests per second per source with bursts of `burst`,
    /// tracking at most `max_sources` sources at once.
    pub fn new(rate: f64, burst: f64, max_sources: usize) -> Self {
        SourceLimiter {
            rate,
            burst,
            max_sources,
            buckets: HashMap::new(),
        }
    }

    /// Takes `cost` from the bucket of `ip`'s source, or says how long to
    /// wait. When the table is full of sources with spent budgets, new
    /// sources are refused too (fails closed).
    pub fn check(&mut self, now: Instant, ip: IpAddr, cost: f64) -> Result<(), Duration> {
        let key = SourceKey::of(ip);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.max_sources {
            self.buckets.retain(|_, b| !b.is_full(now));
            if self.buckets.len() >= self.max_sources {
                return Err(Duration::from_secs(1));
            }
        }
        self.buckets
            .entry(key)
            .or_insert_with(|| TokenBucket::new(now, self.rate, self.burst))
            .try_spend(now, cost)
    }

    /// Forgets sources whose buckets are full again.
    pub fn sweep(&mut self, now: Instant) {
        self.buckets.retain(|_, b| !b.is_full(now));
    }

    /// How many sources are tracked.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(t0, 10.0, 5.0);
        for _ in 0..5 {
            assert!(b.try_spend(t0, 1.0).is_ok());
        }
        let wait = b.try_spend(t0, 1.0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6);
        assert!(b.try_spend(t0 + Duration::from_millis(100), 1.0).is_ok());
    }

    #[test]
    fn spending_into_debt_says_how_long_to_wait() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(t0, 1000.0, 1000.0);
        assert_eq!(b.spend(t0, 1000.0), Duration::ZERO);
        let wait = b.spend(t0, 500.0);
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6);
        assert_eq!(
            TokenBucket::new(t0, 0.0, 0.0).spend(t0, 1e12),
            Duration::ZERO,
            "rate 0: unlimited"
        );
    }

    #[test]
    fn sources_are_limited_separately_and_v6_per_64() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(1.0, 2.0, 100);
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let b: IpAddr = "198.51.100.2".parse().unwrap();
        assert!(l.check(t0, a, 2.0).is_ok());
        assert!(l.check(t0, a, 1.0).is_err());
        assert!(l.check(t0, b, 1.0).is_ok());
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::2".parse().unwrap();
        assert!(l.check(t0, v6a, 2.0).is_ok());
        assert!(l.check(t0, v6b, 1.0).is_err(), "same /64");
        let mapped: IpAddr = "::ffff:198.51.100.1".parse().unwrap();
        assert!(l.check(t0, mapped, 1.0).is_err(), "mapped is the v4 source");
    }

    #[test]
    fn the_source_table_is_bounded_and_fails_closed() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(1.0, 1.0, 2);
        for ip in ["192.0.2.1", "192.0.2.2"] {
            assert!(l.check(t0, ip.parse().unwrap(), 1.0).is_ok());
        }
        assert!(l.check(t0, "192.0.2.3".parse().unwrap(), 1.0).is_err());
        assert_eq!(l.tracked(), 2);
        // Once the others' buckets refill, they are forgotten to make room.
        let later = t0 + Duration::from_secs(2);
        assert!(l.check(later, "192.0.2.3".parse().unwrap(), 1.0).is_ok());
        l.sweep(later + Duration::from_secs(2));
        assert_eq!(l.tracked(), 0);
    }
}
