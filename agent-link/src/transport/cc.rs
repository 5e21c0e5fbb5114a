//! QUIC congestion control: CUBIC, with the data in flight capped near what the path's
//! shortest round trip can carry.
//!
//! CUBIC grows its window until a packet is lost. Where the sender outruns the receiver's
//! CPU rather than a wire (loopback, a fast LAN), nothing is lost: the gateway's QUIC
//! endpoint takes every datagram off the socket and queues it for the connection, the
//! window grows to megabytes, and a desktop frame sent behind a download waits for all
//! of it. Measured with `loadtest -w mixed` on loopback: frames beside a download took
//! 4 ms at the median with plain CUBIC, 1 ms with the window capped at 256 KiB.
//!
//! The cap is the shortest round trip seen times [`LINK_RATE`], and never below
//! [`MIN_CAP`]: on a wide-area path (50 ms) it is megabytes, far above what CUBIC
//! reaches, so CUBIC alone decides; on loopback it is [`MIN_CAP`]. While the cap holds,
//! CUBIC is told the connection is application-limited, so that its own window does not
//! grow beyond the cap and still reacts to a loss from where it is.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory, CubicConfig};
use quinn_proto::RttEstimator;

/// The fastest one link is expected to carry, bytes per second (10 Gbit/s).
pub const LINK_RATE: u64 = 1_250_000_000;

/// The smallest cap on data in flight: enough for 1 Gbit/s at 1 ms.
pub const MIN_CAP: u64 = 128 * 1024;

/// The cap on data in flight for a path whose shortest round trip is `min_rtt`.
pub fn cap_for(min_rtt: Duration) -> u64 {
    let bytes = u128::from(LINK_RATE) * min_rtt.as_nanos() / 1_000_000_000;
    u64::try_from(bytes).unwrap_or(u64::MAX).max(MIN_CAP)
}

/// Builds [`Capped`] controllers.
#[derive(Debug, Default)]
pub struct CappedCubic {
    cubic: Arc<CubicConfig>,
}

impl ControllerFactory for CappedCubic {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Capped {
            inner: self.cubic.clone().build(now, current_mtu),
            cap: None,
        })
    }
}

/// CUBIC whose window is capped by [`cap_for`] the shortest round trip seen.
struct Capped {
    inner: Box<dyn Controller>,
    /// No cap until the first round trip is measured.
    cap: Option<u64>,
}

impl Capped {
    fn at_cap(&self) -> bool {
        self.cap.is_some_and(|cap| self.inner.window() >= cap)
    }
}

impl Controller for Capped {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.cap = Some(cap_for(rtt.min()));
        let limited = app_limited || self.at_cap();
        self.inner.on_ack(now, sent, bytes, limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        let limited = app_limited || self.at_cap();
        self.inner
            .on_end_acks(now, in_flight, limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        // CUBIC's window stays near the cap while the cap holds, so it reduces from there.
        self.inner
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        match self.cap {
            Some(cap) => self.inner.window().min(cap),
            None => self.inner.window(),
        }
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Capped {
            inner: self.inner.clone_box(),
            cap: self.cap,
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_the_floor_on_loopback_and_out_of_the_way_on_a_wide_area_path() {
        assert_eq!(cap_for(Duration::from_micros(60)), MIN_CAP);
        // 100 Mbit/s at 50 ms needs 625 kB in flight; the cap leaves CUBIC 100 times that.
        let need = 100_000_000 / 8 * 50 / 1000;
        assert_eq!(cap_for(Duration::from_millis(50)), 100 * need);
        assert_eq!(cap_for(Duration::from_secs(u64::MAX)), u64::MAX);
    }
}
