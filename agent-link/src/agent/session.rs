//! One link's life on the agent, and the loop that keeps a link up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use super::config::{AgentConfig, ConfigError};
use super::serve::{serve_stream, Offered};
use super::Backoff;
use crate::io::{send_control, ControlReader, ReadError};
use crate::proto::{ControlMessage, RejectReason, ALPN_QUIC, PROTOCOL_VERSION};
use crate::transport::quic::{client_endpoint, LinkTuning};
use crate::transport::{Link, RecvHalf, SendHalf};

/// How long the agent waits for `Welcome` after `Hello`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// How one link attempt ended.
#[derive(Debug, thiserror::Error)]
enum LinkEnd {
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, std::io::Error),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("control stream: {0}")]
    Control(#[from] ReadError),
    #[error("control stream: {0}")]
    Io(#[from] std::io::Error),
    #[error("rejected ({reason:?}): {message}")]
    Rejected {
        reason: RejectReason,
        message: String,
    },
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("link closed")]
    Closed,
    #[error("cannot create the QUIC endpoint: {0}")]
    Endpoint(std::io::Error),
}

/// Keeps a link to the gateway until a permanent error: reconnects with backoff
/// whenever the link ends.
pub async fn run(config: AgentConfig) -> Result<(), RunError> {
    let services = config.services()?;
    let trust = config.trust()?;
    let (host, port) = config.host_port()?;
    let server_name = config.server_name.clone().unwrap_or_else(|| host.clone());
    let tls = trust
        .client_config(&[ALPN_QUIC])
        .map_err(ConfigError::from)?;
    let offered = Arc::new(Offered::new(&services));
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut endpoint = None;

    info!(endpoint = %config.endpoint, services = ?offered.ports(), "agent starting");
    loop {
        let started = Instant::now();
        let attempt = Attempt {
            host: &host,
            port,
            server_name: &server_name,
            token: &config.token,
            services: &services,
        };
        let end = attempt.run(&mut endpoint, &tls, &offered).await;
        match end {
            Err(LinkEnd::Rejected { reason, message }) if reason.is_permanent() => {
                return Err(RunError::Rejected { reason, message });
            }
            Err(LinkEnd::Endpoint(e)) => return Err(RunError::Endpoint(e)),
            Err(e) => warn!(error = %e, "link down"),
            Ok(()) => info!("link ended; reconnecting"),
        }
        if started.elapsed() >= STABLE_LINK {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        debug!(?delay, "waiting before reconnecting");
        tokio::time::sleep(delay).await;
    }
}

/// The inputs of one connection attempt.
struct Attempt<'a> {
    host: &'a str,
    port: u16,
    server_name: &'a str,
    token: &'a str,
    services: &'a [crate::proto::Service],
}

impl Attempt<'_> {
    async fn run(
        &self,
        endpoint: &mut Option<quinn::Endpoint>,
        tls: &rustls::ClientConfig,
        offered: &Arc<Offered>,
    ) -> Result<(), LinkEnd> {
        let addr = resolve(self.host, self.port).await?;
        if endpoint.is_none() {
            *endpoint = Some(
                client_endpoint(addr, tls.clone(), &LinkTuning::agent())
                    .map_err(LinkEnd::Endpoint)?,
            );
        }
        let endpoint = endpoint.as_ref().expect("endpoint was just created");
        let conn = endpoint
            .connect(addr, self.server_name)
            .map_err(|e| LinkEnd::Connect(e.to_string()))?
            .await
            .map_err(|e| LinkEnd::Connect(e.to_string()))?;
        let link = Link::Quic(conn);
        let (send, recv) = match &link {
            Link::Quic(c) => c
                .open_bi()
                .await
                .map_err(|e| LinkEnd::Connect(e.to_string()))?,
        };
        let (mut send, mut control) = (
            SendHalf::Quic(send),
            ControlReader::new(RecvHalf::Quic(recv)),
        );
        let (session, ping_interval) = self.handshake(&mut send, &mut control).await?;

        let span =
            tracing::info_span!("link", session, gateway = %addr, transport = link.kind().as_str());
        info!(parent: &span, "registered");
        run_link(link, send, control, offered.clone(), ping_interval)
            .instrument(span)
            .await
    }

    async fn handshake(
        &self,
        send: &mut SendHalf,
        control: &mut ControlReader<RecvHalf>,
    ) -> Result<(u64, Duration), LinkEnd> {
        let hello = ControlMessage::Hello {
            version: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            token: self.token.to_owned(),
            services: self.services.to_vec(),
        };
        send_control(send, &hello).await?;
        match control.next_within(HANDSHAKE_TIMEOUT).await? {
            Some(ControlMessage::Welcome {
                session,
                ping_interval_ms,
                ..
            }) => Ok((
                session,
                Duration::from_millis(ping_interval_ms.clamp(100, 600_000).into()),
            )),
            Some(ControlMessage::Reject { reason, message }) => {
                Err(LinkEnd::Rejected { reason, message })
            }
            Some(other) => Err(LinkEnd::Protocol(format!(
                "expected Welcome, got {other:?}"
            ))),
            None => Err(LinkEnd::Closed),
        }
    }
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr, LinkEnd> {
    crate::net::resolve(host, port)
        .await
        .map_err(|e| LinkEnd::Resolve(format!("{host}:{port}"), e))
}

/// Serves one registered link until it ends: answers pings, serves streams.
async fn run_link(
    link: Link,
    mut send: SendHalf,
    mut control: ControlReader<RecvHalf>,
    offered: Arc<Offered>,
    ping_interval: Duration,
) -> Result<(), LinkEnd> {
    let accept = tokio::spawn(accept_streams(link.clone(), offered).in_current_span());
    let mut ticker = tokio::time::interval(ping_interval);
    let mut nonce = 0u64;
    let result = loop {
        tokio::select! {
            msg = control.next() => match msg {
                Ok(Some(ControlMessage::Ping { nonce })) => send_control(&mut send, &ControlMessage::Pong { nonce }).await?,
                Ok(Some(ControlMessage::Pong { .. })) => debug!(rtt = ?link.rtt(), "pong"),
                Ok(Some(ControlMessage::GoAway { reason })) => {
                    info!(%reason, "gateway asked this link to go away");
                    break Ok(());
                }
                Ok(Some(other)) => break Err(LinkEnd::Protocol(format!("unexpected {other:?}"))),
                Ok(None) => break Err(LinkEnd::Closed),
                Err(e) => break Err(e.into()),
            },
            _ = ticker.tick() => {
                nonce += 1;
                send_control(&mut send, &ControlMessage::Ping { nonce }).await?;
            }
            _ = link.closed() => break Err(LinkEnd::Closed),
        }
    };
    accept.abort();
    link.close("agent leaving");
    result
}

async fn accept_streams(link: Link, offered: Arc<Offered>) {
    while let Some(stream) = link.accept().await {
        tokio::spawn(serve_stream(stream, offered.clone()).in_current_span());
    }
}
