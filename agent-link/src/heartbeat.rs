//! Liveness on the control stream, without I/O: when to ping, whether the peer has
//! gone silent, and the round-trip time a pong measures. Both the agent and the
//! gateway run one per link; the caller supplies the time.

use std::time::Duration;

use tokio::time::Instant;

use crate::proto::ControlMessage;

/// A link whose peer has said nothing for this many ping intervals is dead.
pub const SILENT_INTERVALS: u32 = 3;

/// The heartbeat state of one link.
#[derive(Debug)]
pub struct Heartbeat {
    interval: Duration,
    last_heard: Instant,
    nonce: u64,
    ping_sent: Instant,
}

/// The peer has been silent past the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no message from the peer for {0:?}")]
pub struct Silent(pub Duration);

impl Heartbeat {
    /// Starts at `now`, as if the peer had just spoken.
    pub fn new(interval: Duration, now: Instant) -> Self {
        Self {
            interval,
            last_heard: now,
            nonce: 0,
            ping_sent: now,
        }
    }

    /// How often to call [`on_tick`](Self::on_tick).
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Any message from the peer proves it alive.
    pub fn on_message(&mut self, now: Instant) {
        self.last_heard = now;
    }

    /// A tick of the interval: the next ping to send, or [`Silent`] when the peer has
    /// said nothing for [`SILENT_INTERVALS`] intervals.
    pub fn on_tick(&mut self, now: Instant) -> Result<ControlMessage, Silent> {
        let limit = self.interval * SILENT_INTERVALS;
        if now.saturating_duration_since(self.last_heard) > limit {
            return Err(Silent(limit));
        }
        self.nonce += 1;
        self.ping_sent = now;
        Ok(ControlMessage::Ping { nonce: self.nonce })
    }

    /// A pong: the round-trip time if it answers the latest ping.
    pub fn on_pong(&mut self, nonce: u64, now: Instant) -> Option<Duration> {
        (nonce == self.nonce && nonce != 0).then(|| now.saturating_duration_since(self.ping_sent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_count_up_and_pongs_measure_the_latest() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(Duration::from_secs(5), t0);
        assert_eq!(hb.on_tick(t0), Ok(ControlMessage::Ping { nonce: 1 }));
        let later = t0 + Duration::from_millis(40);
        assert_eq!(hb.on_pong(1, later), Some(Duration::from_millis(40)));
        assert_eq!(hb.on_tick(later), Ok(ControlMessage::Ping { nonce: 2 }));
        assert_eq!(hb.on_pong(1, later), None, "a stale pong measures nothing");
    }

    #[test]
    fn silence_past_three_intervals_is_death_and_any_message_is_life() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(Duration::from_secs(5), t0);
        assert!(hb.on_tick(t0 + Duration::from_secs(15)).is_ok());
        hb.on_message(t0 + Duration::from_secs(14));
        assert!(hb.on_tick(t0 + Duration::from_secs(29)).is_ok());
        assert_eq!(
            hb.on_tick(t0 + Duration::from_secs(30)),
            Err(Silent(Duration::from_secs(15)))
        );
    }
}
