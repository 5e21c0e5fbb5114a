//! Failed registrations per source address: a token bucket each. Only failures spend
//! from the bucket, and a good token is accepted whatever its address's bucket holds, so
//! agents with good tokens are never slowed or kept out (many spaces behind one NAT
//! address all reconnect at once after a gateway restart, and one of them may present
//! bad tokens), while an address that keeps presenting bad tokens is told only to wait.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::RwLock;
use std::time::Duration;

use tokio::time::Instant;

/// Failures an address may have in a row before it is refused.
pub const BURST: f64 = 10.0;
/// Failures an address is forgiven per second.
pub const REFILL_PER_SEC: f64 = 0.5;
/// Addresses tracked before idle ones are forgotten; bounds the memory an attacker
/// with many addresses can take.
const MAX_TRACKED: usize = 100_000;

/// Per-address token buckets.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: RwLock<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// An empty limiter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `addr` may attempt a registration at `now`.
    pub fn allows(&self, addr: IpAddr, now: Instant) -> bool {
        let buckets = self.buckets.read().expect("rate limiter lock poisoned");
        buckets.get(&addr).is_none_or(|b| b.refilled(now) >= 1.0)
    }

    /// Records a failed registration from `addr` at `now`.
    pub fn failed(&self, addr: IpAddr, now: Instant) {
        let mut buckets = self.buckets.write().expect("rate limiter lock poisoned");
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&addr) {
            forget_full(&mut buckets, now);
        }
        let bucket = buckets.entry(addr).or_insert(Bucket {
            tokens: BURST,
            at: now,
        });
        bucket.tokens = (bucket.refilled(now) - 1.0).max(0.0);
        bucket.at = now;
    }
}

impl Bucket {
    fn refilled(&self, now: Instant) -> f64 {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * REFILL_PER_SEC;
        (self.tokens + earned).min(BURST)
    }
}

/// Drops the buckets that have refilled completely: forgetting them changes nothing.
fn forget_full(buckets: &mut HashMap<IpAddr, Bucket>, now: Instant) {
    let full = Duration::from_secs_f64(BURST / REFILL_PER_SEC);
    buckets.retain(|_, b| now.saturating_duration_since(b.at) < full);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_failures_then_one_attempt_per_two_seconds() {
        let limiter = RateLimiter::new();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(limiter.allows(a, t0));
            limiter.failed(a, t0);
        }
        assert!(!limiter.allows(a, t0), "ten failures spend the burst");
        assert!(limiter.allows(b, t0), "another address is not affected");
        assert!(
            !limiter.allows(a, t0 + Duration::from_secs(1)),
            "half an attempt earned"
        );
        assert!(limiter.allows(a, t0 + Duration::from_secs(2)));
    }

    #[test]
    fn successes_cost_nothing() {
        let limiter = RateLimiter::new();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        assert!((0..1000).all(|_| limiter.allows(a, t0)));
    }
}
