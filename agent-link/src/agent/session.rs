//! The loop that keeps a space linked: connect on the chosen transport, register,
//! serve, and reconnect with backoff; in `auto`, fall back to TCP when QUIC does not
//! connect and move back to QUIC when it does.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use super::config::{AgentConfig, ConfigError, TransportMode};
use super::connect::{Connector, LinkEnd, Session};
use super::serve::Offered;
use super::status::LinkStatus;
use super::Backoff;
use crate::proto::RejectReason;
use crate::transport::TransportKind;

/// A link that stayed up this long resets the reconnect backoff.
const STABLE_LINK: Duration = Duration::from_secs(30);

/// Why the agent stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The gateway refused the registration for a reason retrying cannot fix.
    #[error("the gateway rejected this agent ({reason:?}): {message}")]
    Rejected {
        /// The class of refusal.
        reason: RejectReason,
        /// The gateway's explanation.
        message: String,
    },
    /// The local UDP socket could not be set up.
    #[error("cannot create the QUIC endpoint: {0}")]
    Endpoint(std::io::Error),
}

/// Keeps a link to the gateway until a permanent error, and keeps `status` up to date.
///
/// When `stop` completes, the agent closes its links, so that the gateway learns at once
/// that the space is gone rather than after its silent-link limit, and returns `Ok`.
pub(super) async fn keep_linked(
    config: AgentConfig,
    mut connector: Connector,
    status: LinkStatus,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), RunError> {
    tokio::select! {
        end = link_loop(&config, &mut connector, &status) => return end,
        () = stop => {}
    }
    info!("stopping: closing the link");
    connector.close("agent stopping").await;
    Ok(())
}

async fn link_loop(
    config: &AgentConfig,
    connector: &mut Connector,
    status: &LinkStatus,
) -> Result<(), RunError> {
    let offered = Arc::new(Offered::new(&connector.services));
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let ports = offered.ports();
    info!(
        endpoint = %config.endpoint, transport = ?config.transport, services = ?ports,
        "agent starting"
    );

    loop {
        let started = Instant::now();
        let end = match establish(connector, config.transport).await {
            Ok(session) => serve(connector, config, session, &offered, status).await,
            Err(end) => end,
        };
        status.down(&end);
        match end {
            LinkEnd::Rejected { reason, message } if reason.is_permanent() => {
                return Err(RunError::Rejected { reason, message });
            }
            LinkEnd::Endpoint(e) => return Err(RunError::Endpoint(e)),
            LinkEnd::GoAway(reason) if reason.starts_with("draining") => {
                // The gateway is going away: reconnect at once so that new streams
                // find this space on another gateway without a gap.
                info!(%reason, "gateway draining; reconnecting now");
                continue;
            }
            LinkEnd::GoAway(reason) if reason.starts_with("replaced") => {
                // Another agent registered this space. Coming straight back would take
                // it over again, and the two would trade the space forever; wait long
                // enough that a live rival keeps it, and a dead one is replaced.
                let delay = config.replaced_wait.mul_f64(0.5 + fastrand::f64());
                warn!(
                    ?delay,
                    "another agent with this space's token took over; waiting before trying again"
                );
                tokio::time::sleep(delay).await;
                continue;
            }
            LinkEnd::Rejected {
                reason: RejectReason::Standby,
                message,
            } => {
                // The rival that took over is still alive: the gateway keeps it.
                let delay = config.replaced_wait.mul_f64(0.5 + fastrand::f64());
                warn!(?delay, %message, "standing by: a newer agent holds this space");
                tokio::time::sleep(delay).await;
                continue;
            }
            e => warn!(error = %e, "link down"),
        }
        if started.elapsed() >= STABLE_LINK {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        debug!(?delay, "waiting before reconnecting");
        tokio::time::sleep(delay).await;
    }
}

/// Connects and registers on the transport the mode allows, QUIC first.
async fn establish(connector: &mut Connector, mode: TransportMode) -> Result<Session, LinkEnd> {
    if mode != TransportMode::Tcp {
        match connector.quic().await {
            Ok(session) => return Ok(session),
            Err(e) if mode == TransportMode::Quic || !e.worth_another_transport() => return Err(e),
            Err(e) => info!(error = %e, "QUIC did not connect; trying TLS over TCP"),
        }
    }
    connector.tcp().await
}

/// Serves the current session; in `auto` on TCP, keeps trying QUIC and moves there
/// when it registers. Returns how the last session ended.
async fn serve(
    connector: &mut Connector,
    config: &AgentConfig,
    session: Session,
    offered: &Arc<Offered>,
    status: &LinkStatus,
) -> LinkEnd {
    let mut kind = session.kind();
    status.registered(session.link_up());
    let mut current = tokio::spawn(session.run(offered.clone()).in_current_span());
    loop {
        let probing = config.transport == TransportMode::Auto && kind == TransportKind::Tcp;
        tokio::select! {
            end = &mut current => {
                let failed = |e| LinkEnd::Protocol(format!("session task failed: {e}"));
                return end.unwrap_or_else(failed);
            }
            Some((link, addr)) = probe_quic(connector, config.quic_probe_interval), if probing => {
                // Registering happens here, outside the select, so that the TCP session
                // ending (with the GoAway this very registration causes) cannot cancel
                // it half way and drop a link the gateway has just registered.
                match connector.register(link, addr).await {
                    Ok(session) => {
                        // The gateway sent the TCP link GoAway; that session keeps
                        // serving its open streams until they end, on its own.
                        info!("QUIC works again; new streams use the QUIC link");
                        // The TCP session's end is never awaited once `current` is
                        // replaced, so its drain cannot mark the agent disconnected.
                        status.registered(session.link_up());
                        kind = session.kind();
                        current = tokio::spawn(session.run(offered.clone()).in_current_span());
                    }
                    Err(e) => debug!(error = %e, "QUIC registration failed; staying on TCP"),
                }
            }
        }
    }
}

/// Tries QUIC every `interval` (with jitter) until a connection is up.
async fn probe_quic(
    connector: &mut Connector,
    interval: Duration,
) -> Option<(crate::transport::Link, std::net::SocketAddr)> {
    loop {
        tokio::time::sleep(interval.mul_f64(0.75 + fastrand::f64() / 2.0)).await;
        match connector.connect_quic().await {
            Ok(connected) => return Some(connected),
            Err(e) => debug!(error = %e, "QUIC probe failed"),
        }
    }
}
