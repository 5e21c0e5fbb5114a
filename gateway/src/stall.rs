//! Streams whose users have stopped reading, and cutting them before they fill a link.
//!
//! A stream's unread bytes wait in the gateway, up to the stream's window, while its
//! user does not read. On QUIC the link's window over all streams (its budget,
//! `agents.max_unread_mib_per_link`) is shared with the space's other streams and its
//! control stream, so enough stalled users, even strangers on a public port, could
//! block the whole link. Each stream therefore carries a [`Stall`] mark, set while its
//! relay has handed the user data and is waiting for the user to take it; the link's
//! control loop cuts the longest-stalled streams beyond the number whose windows fit
//! in half the budget, and all stalled streams when the link is blocked already.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock, Weak};
use std::time::Duration;

use tokio::time::Instant;

use tokio_util::sync::CancellationToken;

/// One stream's mark.
#[derive(Debug, Default)]
pub struct Stall {
    /// When (see [`now_ms`]) the relay last handed the user data that the user has not
    /// come back for; 0 while the relay is not waiting on the user.
    since: AtomicU64,
    cut: CancellationToken,
}

impl Stall {
    /// The relay reads from the space again: the user took what it was handed.
    pub fn reading(&self) {
        self.since.store(0, Ordering::Relaxed);
    }

    /// The relay read data from the space for the user.
    pub fn handed(&self) {
        self.since.store(now_ms(), Ordering::Relaxed);
    }

    /// Resolves when the stream is to be cut.
    pub async fn cut(&self) {
        self.cut.cancelled().await;
    }
}

/// The marks of one link's streams.
#[derive(Debug, Default)]
pub struct Stalls {
    /// Only ever locked to write, briefly, and never across a panic's reach: a
    /// poisoned lock is taken as it is.
    streams: RwLock<Vec<Weak<Stall>>>,
}

impl Stalls {
    /// A mark for a new stream on the link.
    pub fn register(&self) -> Arc<Stall> {
        let stall = Arc::new(Stall::default());
        let mut streams = self.streams.write().unwrap_or_else(PoisonError::into_inner);
        streams.retain(|s| s.strong_count() > 0);
        streams.push(Arc::downgrade(&stall));
        stall
    }

    /// Cuts the streams stalled for `after` or longer, longest-stalled first, until
    /// `keep` are left; returns how many were cut.
    pub fn cut_beyond(&self, after: Duration, keep: usize) -> usize {
        let now = now_ms();
        let after = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        let mut stalled: Vec<(u64, Arc<Stall>)> = {
            let mut streams = self.streams.write().unwrap_or_else(PoisonError::into_inner);
            streams.retain(|s| s.strong_count() > 0);
            streams
                .iter()
                .filter_map(Weak::upgrade)
                .filter(|s| !s.cut.is_cancelled())
                .filter_map(|s| {
                    let since = s.since.load(Ordering::Relaxed);
                    (since != 0 && now.saturating_sub(since) >= after).then_some((since, s))
                })
                .collect()
        };
        if stalled.len() <= keep {
            return 0;
        }
        stalled.sort_unstable_by_key(|(since, _)| *since);
        let excess = stalled.len() - keep;
        for (_, s) in &stalled[..excess] {
            s.cut.cancel();
        }
        excess
    }
}

/// Milliseconds on a monotonic clock, never 0.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_stalled_streams_beyond_the_kept_number_are_cut() {
        let stalls = Stalls::default();
        let marks: Vec<_> = (0..4).map(|_| stalls.register()).collect();
        // Stalled in the order 2, 0, 3; stream 1 is reading.
        for i in [2, 0, 3] {
            marks[i].handed();
            std::thread::sleep(Duration::from_millis(3));
        }
        marks[1].reading();
        assert_eq!(stalls.cut_beyond(Duration::ZERO, 1), 2);
        let cut: Vec<bool> = marks.iter().map(|m| m.cut.is_cancelled()).collect();
        assert_eq!(cut, [true, false, true, false]);
        // Nothing stalled long enough: nothing more is cut.
        assert_eq!(stalls.cut_beyond(Duration::from_secs(60), 0), 0);
        // A closed stream's mark is forgotten.
        drop(marks);
        assert_eq!(stalls.cut_beyond(Duration::ZERO, 0), 0);
        assert!(stalls.streams.read().expect("not poisoned").is_empty());
    }
}
