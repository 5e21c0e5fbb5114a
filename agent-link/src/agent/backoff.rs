//! Reconnect delays: exponential with full jitter and a cap, so that agents cut off
//! together do not all return to a restarted gateway in the same second.

use std::time::Duration;

/// The delay before each reconnect attempt.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Delays drawn from `[0, min(cap, base * 2^attempt))`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The next delay; each call widens the range until it reaches the cap.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(fastrand::f64())
    }

    /// Back to the shortest delays, after a link that stayed up.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_never_exceed_it() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        for _ in 0..40 {
            assert!(b.next_delay() < Duration::from_secs(5));
        }
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(100));
    }
}
