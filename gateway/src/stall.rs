//! Streams whose users have stopped reading, and cutting them before they fill a link.
//!
//! A stream's unread bytes wait in the gateway, up to the stream's window, while its
//! user does not read. On QUIC the link's window over all streams (its budget,
//! `agents.max_unread_mib_per_link`) is shared with the space's other streams and its
//! control stream, so enough stalled users, even strangers on a public port, could
//! block the whole link. Each stream therefore carries a [`Stall`] mark, set while its
//! relay has handed the user data and is waiting for the user to take it, and counts
//! what the user took. At each ping tick the link's control loop cuts the slow streams
//! (waited on, and little taken since the last tick) beyond the number whose windows
//! fit in half the budget, and all slow streams when the link's window is full.

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
    /// Bytes handed to the user so far, and as many at the last [`Stalls::cut_slow`].
    moved: AtomicU64,
    moved_then: AtomicU64,
    /// Milliseconds the relay waited on the user since the last [`Stalls::cut_slow`],
    /// in spans that have ended.
    waited_ms: AtomicU64,
    cut: CancellationToken,
}

impl Stall {
    /// The relay reads from the space again: the user took what it was handed.
    pub fn reading(&self) {
        let since = self.since.swap(0, Ordering::Relaxed);
        if since != 0 {
            let waited = now_ms().saturating_sub(since);
            self.waited_ms.fetch_add(waited, Ordering::Relaxed);
        }
    }

    /// The relay read `n` bytes from the space for the user.
    pub fn handed(&self, n: usize) {
        self.since.store(now_ms(), Ordering::Relaxed);
        self.moved.fetch_add(n as u64, Ordering::Relaxed);
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

    /// Called once per `interval` (a tick): cuts the slow streams, slowest first, until
    /// `keep` are left; returns how many were cut. A stream is slow when its relay
    /// waited on the user for half the interval or more and the user took fewer than
    /// `min_moved` bytes in it. A user who reads a little now and then keeps its
    /// stream's whole window full; one who reads at a steady pace, or a session that
    /// sends a little and is read at once, is not slow.
    pub fn cut_slow(&self, interval: Duration, min_moved: u64, keep: usize) -> usize {
        let now = now_ms();
        let half = u64::try_from(interval.as_millis() / 2).unwrap_or(u64::MAX);
        let mut slow: Vec<(u64, u64, Arc<Stall>)> = self
            .live()
            .into_iter()
            .filter_map(|s| {
                let moved = s.moved.load(Ordering::Relaxed);
                let delta = moved - s.moved_then.swap(moved, Ordering::Relaxed);
                // The span still open counts up to now, and from now for the next tick
                // (unless the relay ended it meanwhile).
                let since = s.since.load(Ordering::Relaxed);
                let mut waited = s.waited_ms.swap(0, Ordering::Relaxed);
                if since != 0
                    && s.since
                        .compare_exchange(since, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    waited += now.saturating_sub(since);
                }
                (waited >= half && delta < min_moved).then_some((delta, since, s))
            })
            .collect();
        Self::cut(&mut slow, keep)
    }

    /// Cuts every stream whose user is being waited on now, whatever its pace: the
    /// last resort before a link whose window is full is given up.
    pub fn cut_waiting(&self) -> usize {
        let mut waiting: Vec<(u64, u64, Arc<Stall>)> = self
            .live()
            .into_iter()
            .filter_map(|s| {
                let since = s.since.load(Ordering::Relaxed);
                (since != 0).then_some((0, since, s))
            })
            .collect();
        Self::cut(&mut waiting, 0)
    }

    /// The marks of the streams still open and not cut, forgetting closed ones.
    fn live(&self) -> Vec<Arc<Stall>> {
        let mut streams = self.streams.write().unwrap_or_else(PoisonError::into_inner);
        streams.retain(|s| s.strong_count() > 0);
        streams
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|s| !s.cut.is_cancelled())
            .collect()
    }

    /// Cuts all of `streams` (bytes moved, waited on since, mark) but the `keep` that
    /// moved most, the longest waited on first among equals.
    fn cut(streams: &mut [(u64, u64, Arc<Stall>)], keep: usize) -> usize {
        if streams.len() <= keep {
            return 0;
        }
        streams.sort_unstable_by_key(|(moved, since, _)| (*moved, *since));
        let excess = streams.len() - keep;
        for (_, _, s) in &streams[..excess] {
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
    fn the_slowest_streams_beyond_the_kept_number_are_cut() {
        // Ticks 4 ms apart: a stream waited on for 2 ms or more of one is waited on.
        let tick = Duration::from_millis(4);
        let wait = || std::thread::sleep(Duration::from_millis(6));
        let stalls = Stalls::default();
        let marks: Vec<_> = (0..5).map(|_| stalls.register()).collect();
        // 0 and 2 took little and are waited on, 3 took a lot; 4 took little and was
        // read at once (a session with a little output); 1 sent nothing (idle).
        marks[0].handed(100);
        marks[2].handed(10);
        marks[3].handed(1 << 20);
        marks[4].handed(10);
        marks[4].reading();
        wait();
        assert_eq!(stalls.cut_slow(tick, 64 * 1024, 1), 1);
        let cut: Vec<bool> = marks.iter().map(|m| m.cut.is_cancelled()).collect();
        assert_eq!(
            cut,
            [false, false, true, false, false],
            "the slowest, 2, goes"
        );
        // Next tick: 0 took nothing more, so it is slow, while 3 took another MiB; and
        // none are kept now.
        marks[3].handed(1 << 20);
        wait();
        assert_eq!(stalls.cut_slow(tick, 64 * 1024, 0), 1);
        assert!(marks[0].cut.is_cancelled() && !marks[3].cut.is_cancelled());
        // The last resort takes whoever is waited on, however fast.
        assert_eq!(stalls.cut_waiting(), 1);
        assert!(marks[3].cut.is_cancelled() && !marks[1].cut.is_cancelled());
        // A closed stream's mark is forgotten.
        drop(marks);
        assert_eq!(stalls.cut_waiting(), 0);
        assert!(stalls.streams.read().expect("not poisoned").is_empty());
    }
}
