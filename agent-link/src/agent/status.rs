//! What the agent knows about its link right now. The link loop writes it when a
//! session registers and when the current one ends; the `/ping` and `/status`
//! handlers read it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use crate::transport::TransportKind;

/// The registered link, while there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkUp {
    /// What carries it.
    pub transport: TransportKind,
    /// The gateway address it was made to (the endpoint, resolved).
    pub gateway: SocketAddr,
    /// The session number the gateway gave it in `Welcome`.
    pub session: u64,
    /// When it registered.
    pub since: SystemTime,
}

/// A snapshot of the link's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkState {
    /// The current link; `None` while the agent is (re)connecting.
    pub up: Option<LinkUp>,
    /// Registrations since the agent started, moves between transports included.
    pub registrations: u64,
    /// Why the last link ended or the last attempt failed, until the next registration.
    pub last_error: Option<String>,
}

impl LinkState {
    /// Registrations after the first one.
    pub fn reconnects(&self) -> u64 {
        self.registrations.saturating_sub(1)
    }
}

/// The shared, cheaply cloned handle on the link's state.
///
/// A watch channel rather than a lock: writers never wait on readers, nothing can be
/// poisoned, and a reader can wait for the next change.
#[derive(Debug, Clone)]
pub struct LinkStatus(Arc<watch::Sender<LinkState>>);

impl Default for LinkStatus {
    fn default() -> Self {
        Self::new()
    }
}

impl LinkStatus {
    /// Not linked yet.
    pub fn new() -> Self {
        Self(Arc::new(watch::Sender::new(LinkState::default())))
    }

    /// A session registered and is now the one new streams arrive on.
    ///
    /// Only the link loop calls this and [`down`](Self::down), for the session it
    /// serves: a replaced session that drains on its own never touches the state.
    pub(super) fn registered(&self, up: LinkUp) {
        self.0.send_modify(|state| {
            state.up = Some(up);
            state.registrations += 1;
            state.last_error = None;
        });
    }

    /// The current session ended, or an attempt to make one failed.
    pub(super) fn down(&self, reason: &impl std::fmt::Display) {
        self.0.send_modify(|state| {
            state.up = None;
            state.last_error = Some(reason.to_string());
        });
    }

    /// The state now.
    pub fn snapshot(&self) -> LinkState {
        self.0.borrow().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(transport: TransportKind, session: u64) -> LinkUp {
        LinkUp {
            transport,
            gateway: SocketAddr::from(([127, 0, 0, 1], 7443)),
            session,
            since: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn starts_down_with_no_registration() {
        let state = LinkStatus::new().snapshot();
        assert_eq!(state.up, None);
        assert_eq!(state.reconnects(), 0);
    }

    #[test]
    fn a_move_to_quic_counts_as_a_reconnect_and_stays_up() {
        let status = LinkStatus::new();
        status.registered(up(TransportKind::Tcp, 1));
        status.registered(up(TransportKind::Quic, 2));
        let state = status.snapshot();
        assert_eq!(state.up, Some(up(TransportKind::Quic, 2)));
        assert_eq!(state.reconnects(), 1);
    }

    #[test]
    fn down_keeps_the_reason_until_the_next_registration() {
        let status = LinkStatus::new();
        status.registered(up(TransportKind::Quic, 1));
        status.down(&"link closed");
        assert_eq!(status.snapshot().up, None);
        assert_eq!(status.snapshot().last_error.as_deref(), Some("link closed"));
        status.registered(up(TransportKind::Quic, 2));
        assert_eq!(status.snapshot().last_error, None);
    }
}
