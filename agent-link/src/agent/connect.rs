//! Dialing the gateway on either transport, registering, and one session's life.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tracing::{debug, info, info_span, Instrument};

use super::config::{AgentConfig, ConfigError};
use super::serve::{serve_stream, Offered};
use super::status::LinkUp;
use crate::heartbeat::{Heartbeat, Silent};
use crate::io::{send_control, ControlReader, ReadError};
use crate::proto::{ControlMessage, RejectReason, Service, ALPN_MUX, ALPN_QUIC, PROTOCOL_VERSION};
use crate::transport::mux::{connect_tls, MuxLink};
use crate::transport::quic::{client_endpoint, LinkTuning};
use crate::transport::{Link, RecvHalf, SendHalf, TransportKind};

/// How long the agent waits for `Welcome` after `Hello`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a link that was told to go away may keep serving its open streams.
const DRAIN_LIMIT: Duration = Duration::from_secs(3600);

/// How one link attempt or session ended.
#[derive(Debug, thiserror::Error)]
pub(super) enum LinkEnd {
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, std::io::Error),
    #[error("cannot connect over {0}: {1}")]
    Connect(&'static str, String),
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
    #[error("the gateway asked this link to go away: {0}")]
    GoAway(String),
    #[error("no answer to pings for {0:?}")]
    Silent(Duration),
    #[error("link closed: {0}")]
    Closed(String),
    #[error("cannot create the QUIC endpoint: {0}")]
    Endpoint(std::io::Error),
}

impl LinkEnd {
    /// Whether trying the other transport could help: not for a refusal by the gateway.
    pub(super) fn worth_another_transport(&self) -> bool {
        matches!(
            self,
            Self::Connect(..) | Self::Closed(_) | Self::Control(_) | Self::Io(_)
        )
    }
}

/// What every connection attempt needs; keeps one QUIC endpoint across attempts.
#[derive(Debug)]
pub(super) struct Connector {
    host: String,
    port: u16,
    server_name: String,
    token: String,
    pub(super) services: Vec<Service>,
    quic_tls: rustls::ClientConfig,
    mux_tls: Arc<rustls::ClientConfig>,
    quic_timeout: Duration,
    endpoint: Option<(bool, quinn::Endpoint)>,
    /// Sent in every `Hello`: the same for all links of this process.
    instance: u64,
}

impl Connector {
    pub(super) fn new(config: &AgentConfig) -> Result<Self, ConfigError> {
        let services = config.services()?;
        let trust = config.trust()?;
        let (host, port) = config.host_port()?;
        Ok(Self {
            server_name: config.server_name.clone().unwrap_or_else(|| host.clone()),
            host,
            port,
            token: config.token.clone(),
            services,
            quic_tls: trust.client_config(&[ALPN_QUIC])?,
            mux_tls: Arc::new(trust.client_config(&[ALPN_MUX])?),
            quic_timeout: config.quic_timeout,
            endpoint: None,
            instance: fastrand::u64(1..),
        })
    }

    async fn resolve(&self) -> Result<SocketAddr, LinkEnd> {
        let (host, port) = (&self.host, self.port);
        crate::net::resolve(host, port)
            .await
            .map_err(|e| LinkEnd::Resolve(format!("{host}:{port}"), e))
    }

    /// Connects over QUIC and registers.
    pub(super) async fn quic(&mut self) -> Result<Session, LinkEnd> {
        let (link, addr) = self.connect_quic().await?;
        self.register(link, addr).await
    }

    /// Connects over QUIC without registering: safe to abandon at any point.
    pub(super) async fn connect_quic(&mut self) -> Result<(Link, SocketAddr), LinkEnd> {
        let addr = self.resolve().await?;
        let endpoint = self.endpoint_for(addr)?;
        let connecting = endpoint
            .connect(addr, &self.server_name)
            .map_err(|e| LinkEnd::Connect("QUIC", e.to_string()))?;
        // A blackholed UDP port gives no error, only silence: bound the wait.
        let conn = match tokio::time::timeout(self.quic_timeout, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(LinkEnd::Connect("QUIC", e.to_string())),
            Err(_) => {
                return Err(LinkEnd::Connect(
                    "QUIC",
                    format!("no answer within {:?}", self.quic_timeout),
                ))
            }
        };
        Ok((Link::Quic(conn), addr))
    }

    /// Connects over TLS/TCP with yamux and registers.
    pub(super) async fn tcp(&mut self) -> Result<Session, LinkEnd> {
        let addr = self.resolve().await?;
        let tls = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            connect_tls(addr, &self.server_name, self.mux_tls.clone()),
        )
        .await
        .map_err(|_| LinkEnd::Connect("TCP", "TLS handshake timed out".into()))?
        .map_err(|e| LinkEnd::Connect("TCP", e.to_string()))?;
        self.register(Link::Mux(MuxLink::new(tls, false, addr)), addr)
            .await
    }

    /// Closes every QUIC link at once, telling the gateway why, and waits a moment for
    /// the close to be sent. TLS/TCP links close with the process.
    pub(super) async fn close(&mut self, reason: &str) {
        if let Some((_, endpoint)) = self.endpoint.take() {
            endpoint.close(0u32.into(), reason.as_bytes());
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
    }

    /// One endpoint per address family, made on first use.
    fn endpoint_for(&mut self, addr: SocketAddr) -> Result<quinn::Endpoint, LinkEnd> {
        match &self.endpoint {
            Some((v6, endpoint)) if *v6 == addr.is_ipv6() => Ok(endpoint.clone()),
            _ => {
                let endpoint = client_endpoint(addr, self.quic_tls.clone(), &LinkTuning::agent())
                    .map_err(LinkEnd::Endpoint)?;
                self.endpoint = Some((addr.is_ipv6(), endpoint.clone()));
                Ok(endpoint)
            }
        }
    }

    pub(super) async fn register(&self, link: Link, addr: SocketAddr) -> Result<Session, LinkEnd> {
        let result = self.handshake(&link).await;
        if result.is_err() {
            link.close("registration failed");
        }
        let (send, control, session, ping_interval) = result?;
        let span = info_span!("link", session, gateway = %addr, transport = link.kind().as_str());
        info!(parent: &span, "registered");
        let up = LinkUp {
            transport: link.kind(),
            gateway: addr,
            session,
            since: SystemTime::now(),
        };
        Ok(Session {
            link,
            send,
            control,
            ping_interval,
            span,
            up,
        })
    }

    async fn handshake(
        &self,
        link: &Link,
    ) -> Result<(SendHalf, ControlReader<RecvHalf>, u64, Duration), LinkEnd> {
        let stream = link
            .open()
            .await
            .map_err(|e| LinkEnd::Connect("link", e.to_string()))?;
        let (mut send, mut control) = (stream.send, ControlReader::new(stream.recv));
        let hello = ControlMessage::Hello {
            version: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            token: self.token.clone(),
            services: self.services.clone(),
            instance: self.instance,
        };
        send_control(&mut send, &hello).await?;
        match control.next_within(HANDSHAKE_TIMEOUT).await? {
            Some(ControlMessage::Welcome {
                session,
                ping_interval_ms,
                ..
            }) => {
                let ping = Duration::from_millis(ping_interval_ms.clamp(100, 600_000).into());
                Ok((send, control, session, ping))
            }
            Some(ControlMessage::Reject { reason, message }) => {
                Err(LinkEnd::Rejected { reason, message })
            }
            Some(other) => Err(LinkEnd::Protocol(format!(
                "expected Welcome, got {other:?}"
            ))),
            None => Err(LinkEnd::Closed(
                "the gateway ended the control stream before answering".to_owned(),
            )),
        }
    }
}

/// A registered link.
#[derive(Debug)]
pub(super) struct Session {
    link: Link,
    send: SendHalf,
    control: ControlReader<RecvHalf>,
    ping_interval: Duration,
    span: tracing::Span,
    up: LinkUp,
}

impl Session {
    pub(super) fn kind(&self) -> TransportKind {
        self.link.kind()
    }

    /// What the agent's status shows while this session is the current one.
    pub(super) fn link_up(&self) -> LinkUp {
        self.up.clone()
    }

    /// Serves the link until it ends. On `GoAway` it returns at once, and the link
    /// keeps serving the streams already open, in the background, until they end.
    pub(super) async fn run(self, offered: Arc<Offered>) -> LinkEnd {
        let span = self.span.clone();
        self.serve(offered).instrument(span).await
    }

    async fn serve(mut self, offered: Arc<Offered>) -> LinkEnd {
        let active = Arc::new(AtomicUsize::new(0));
        let accept = tokio::spawn(
            accept_streams(self.link.clone(), offered, active.clone()).in_current_span(),
        );
        let end = self.control_loop().await;
        match end {
            LinkEnd::GoAway(_) => {
                tokio::spawn(
                    drain(self.link.clone(), accept, active, self.send, self.control)
                        .in_current_span(),
                );
            }
            _ => {
                accept.abort();
                self.link.close("agent leaving");
            }
        }
        end
    }

    async fn control_loop(&mut self) -> LinkEnd {
        let mut heartbeat = Heartbeat::new(self.ping_interval, Instant::now());
        let mut ticker = tokio::time::interval(heartbeat.interval());
        loop {
            let reply = tokio::select! {
                msg = self.control.next() => {
                    heartbeat.on_message(Instant::now());
                    match msg {
                        Ok(Some(ControlMessage::Ping { nonce })) => ControlMessage::Pong { nonce },
                        Ok(Some(ControlMessage::Pong { .. })) => continue,
                        Ok(Some(ControlMessage::GoAway { reason })) => {
                            return LinkEnd::GoAway(reason);
                        }
                        Ok(Some(other)) => {
                            return LinkEnd::Protocol(format!("unexpected {other:?}"));
                        }
                        Ok(None) => {
                            return LinkEnd::Closed("the gateway ended the control stream".into());
                        }
                        // The control stream fails with its link: say why the link went.
                        Err(e) => return self.link.close_reason().map_or(e.into(), LinkEnd::Closed),
                    }
                }
                _ = ticker.tick() => match heartbeat.on_tick(Instant::now()) {
                    Ok(ping) => ping,
                    Err(Silent(limit)) => return LinkEnd::Silent(limit),
                },
                why = self.link.closed() => return LinkEnd::Closed(why),
            };
            if let Err(e) = send_control(&mut self.send, &reply).await {
                return self.link.close_reason().map_or(e.into(), LinkEnd::Closed);
            }
        }
    }
}

async fn accept_streams(link: Link, offered: Arc<Offered>, active: Arc<AtomicUsize>) {
    while let Some(stream) = link.accept().await {
        let (offered, active) = (offered.clone(), active.clone());
        active.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(
            async move {
                serve_stream(stream, offered).await;
                active.fetch_sub(1, Ordering::SeqCst);
            }
            .in_current_span(),
        );
    }
}

/// Lets a link that was told to go away finish its open streams, then closes it.
/// The gateway's pings are still answered so that it does not take the link for dead
/// while streams finish.
async fn drain(
    link: Link,
    accept: tokio::task::JoinHandle<()>,
    active: Arc<AtomicUsize>,
    mut send: SendHalf,
    mut control: ControlReader<RecvHalf>,
) {
    let deadline = tokio::time::Instant::now() + DRAIN_LIMIT;
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = poll.tick() => {
                if active.load(Ordering::SeqCst) == 0 || tokio::time::Instant::now() >= deadline {
                    break;
                }
            }
            msg = control.next() => match msg {
                Ok(Some(ControlMessage::Ping { nonce })) => {
                    if send_control(&mut send, &ControlMessage::Pong { nonce }).await.is_err() {
                        break;
                    }
                }
                Ok(Some(_)) => {}
                _ => break,
            },
            _ = link.closed() => break,
        }
    }
    debug!(
        open_streams = active.load(Ordering::SeqCst),
        "old link drained"
    );
    accept.abort();
    link.close("drained");
}
