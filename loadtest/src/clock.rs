//! One clock for every timestamp: `CLOCK_MONOTONIC` in nanoseconds. It is the same
//! clock in every process on the machine (network namespaces do not change it), so a
//! frame stamped by the space side of the lossy mode can be timed by the viewer in
//! another process.

use std::time::Duration;

/// Nanoseconds on `CLOCK_MONOTONIC`.
pub fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64) * 1_000_000_000 + t.tv_nsec as u64
}

/// A point in time on [`now_ns`]'s clock after which a loop stops.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(u64);

impl Deadline {
    /// `after` from now.
    pub fn after(after: Duration) -> Self {
        Self(now_ns() + after.as_nanos() as u64)
    }

    /// Whether the deadline has passed.
    pub fn passed(self) -> bool {
        now_ns() >= self.0
    }

    /// Time left, zero once passed.
    pub fn left(self) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(now_ns()))
    }

    /// Runs `fut` until the deadline; `None` if the deadline came first.
    pub async fn run<F: std::future::Future>(self, fut: F) -> Option<F::Output> {
        tokio::time::timeout(self.left(), fut).await.ok()
    }
}

/// Seconds since `start_ns`.
pub fn secs_since(start_ns: u64) -> f64 {
    now_ns().saturating_sub(start_ns) as f64 / 1e9
}
