//! The agent listener: accepts links, checks the `Hello`, registers the space, and
//! runs the control loop until the link ends.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agent_link::io::{send_control, ControlReader, ReadError};
use agent_link::proto::{ControlMessage, RejectReason, Service, PROTOCOL_VERSION};
use agent_link::transport::{Link, RecvHalf, SendHalf};
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::auth::{AgentClaims, TokenError, Verifier};
use crate::registry::{Entry, Registry, SpaceKey};

/// What the agent listener needs.
#[derive(Debug)]
pub struct AgentListener {
    /// Where spaces are registered.
    pub registry: Arc<Registry>,
    /// Checks agent tokens.
    pub verifier: Verifier,
    /// How often to ping each agent.
    pub ping_interval: Duration,
    /// How long an agent has to open its control stream and send `Hello`.
    pub hello_timeout: Duration,
}

/// Why a link was not registered or ended.
#[derive(Debug, thiserror::Error)]
enum LinkEnd {
    #[error("no control stream in time")]
    NoControlStream,
    #[error("control stream: {0}")]
    Control(#[from] ReadError),
    #[error("control stream: {0}")]
    Io(#[from] std::io::Error),
    #[error("rejected: {0}")]
    Rejected(String),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("no pong for {0:?}")]
    Silent(Duration),
}

impl AgentListener {
    /// Accepts QUIC links until the endpoint closes.
    pub async fn serve_quic(self: Arc<Self>, endpoint: quinn::Endpoint) {
        while let Some(incoming) = endpoint.accept().await {
            let this = self.clone();
            let span =
                info_span!("link", agent.addr = %incoming.remote_address(), transport = "quic");
            tokio::spawn(
                async move {
                    match incoming.await {
                        Ok(conn) => this.serve_link(Link::Quic(conn)).await,
                        Err(e) => debug!(error = %e, "QUIC handshake failed"),
                    }
                }
                .instrument(span),
            );
        }
    }

    /// Runs one link from handshake to end.
    async fn serve_link(&self, link: Link) {
        match self.register(&link).await {
            Ok(()) => {}
            Err(e) => {
                info!(error = %e, "link not registered");
                // Give the Reject a moment to be delivered before the close cuts it.
                tokio::time::sleep(Duration::from_millis(100)).await;
                link.close("not registered");
            }
        }
    }

    async fn register(&self, link: &Link) -> Result<(), LinkEnd> {
        // 1. The agent's first stream is the control stream; its first message is Hello.
        let stream = tokio::time::timeout(self.hello_timeout, link.accept()).await;
        let Ok(Some(stream)) = stream else {
            return Err(LinkEnd::NoControlStream);
        };
        let (mut send, recv) = (stream.send, stream.recv);
        let mut control = ControlReader::new(recv);
        let hello = match control.next_within(self.hello_timeout).await {
            Ok(Some(msg)) => msg,
            Ok(None) => {
                return Err(LinkEnd::Protocol(
                    "control stream ended before Hello".into(),
                ))
            }
            Err(e) => {
                let message = format!("expected Hello: {e}");
                reject(&mut send, RejectReason::Protocol, &message).await;
                return Err(e.into());
            }
        };

        // 2. Version and token; the space's identity comes from the token alone.
        let (claims, services) = match self.check_hello(hello) {
            Ok(ok) => ok,
            Err((reason, message)) => {
                reject(&mut send, reason, &message).await;
                return Err(LinkEnd::Rejected(message));
            }
        };

        // 3. Register, replacing any older link of the same space.
        let key = SpaceKey {
            user: claims.usr.clone(),
            space: claims.spc.clone(),
        };
        let session = self.registry.next_session();
        let (control_tx, control_rx) = mpsc::channel(8);
        let entry = Arc::new(Entry {
            session,
            space_id: claims.sub.clone(),
            link: link.clone(),
            services: std::sync::RwLock::new(services),
            control: control_tx,
            since: SystemTime::now(),
        });
        let welcome = ControlMessage::Welcome {
            version: PROTOCOL_VERSION,
            session: session.0,
            ping_interval_ms: self
                .ping_interval
                .as_millis()
                .try_into()
                .unwrap_or(u32::MAX),
        };
        send_control(&mut send, &welcome).await?;
        if let Some(old) = self.registry.insert(key.clone(), entry.clone()) {
            info!(space = %key, old_session = %old.session, new_session = %session, "link replaced by a newer one");
            let _ = old.control.try_send(ControlMessage::GoAway {
                reason: "replaced by a newer link".into(),
            });
        }
        info!(space = %key, space_id = %claims.sub, %session, transport = link.kind().as_str(), "space registered");

        // 4. The control loop, then cleanup unless a newer link already took over.
        let span = info_span!("space", space = %key, %session);
        let end = self
            .control_loop(&entry, send, control, control_rx)
            .instrument(span)
            .await;
        if self.registry.remove(&key, session) {
            info!(space = %key, %session, reason = %end.as_ref().err().map_or("closed".to_owned(), |e| e.to_string()), "space unregistered");
        }
        link.close("link ended");
        Ok(())
    }

    fn check_hello(
        &self,
        hello: ControlMessage,
    ) -> Result<(AgentClaims, Vec<Service>), (RejectReason, String)> {
        let ControlMessage::Hello {
            version,
            token,
            services,
            agent_version,
        } = hello
        else {
            return Err((
                RejectReason::Protocol,
                "the first message must be Hello".into(),
            ));
        };
        if version != PROTOCOL_VERSION {
            return Err((
                RejectReason::Version,
                format!("agent speaks protocol {version}, this gateway speaks {PROTOCOL_VERSION}: upgrade the agent"),
            ));
        }
        let claims = self.verifier.agent(&token).map_err(|e| match e {
            TokenError::Expired | TokenError::NotYetValid => {
                (RejectReason::ExpiredToken, format!("agent token: {e}"))
            }
            other => (RejectReason::BadToken, format!("agent token: {other}")),
        })?;
        debug!(agent_version, services = services.len(), "hello");
        Ok((claims, services))
    }

    async fn control_loop(
        &self,
        entry: &Entry,
        mut send: SendHalf,
        mut control: ControlReader<RecvHalf>,
        mut outbox: mpsc::Receiver<ControlMessage>,
    ) -> Result<(), LinkEnd> {
        let mut ticker = tokio::time::interval(self.ping_interval);
        let silence_limit = self.ping_interval * 3;
        let mut last_heard = tokio::time::Instant::now();
        let mut nonce = 0u64;
        loop {
            tokio::select! {
                msg = control.next() => {
                    last_heard = tokio::time::Instant::now();
                    match msg? {
                        Some(ControlMessage::Ping { nonce }) => send_control(&mut send, &ControlMessage::Pong { nonce }).await?,
                        Some(ControlMessage::Pong { .. }) => debug!(rtt = ?entry.link.rtt(), "pong"),
                        Some(ControlMessage::ServicesUpdate { services }) => {
                            info!(count = services.len(), "services updated");
                            *entry.services.write().expect("services lock poisoned") = services;
                        }
                        Some(other) => return Err(LinkEnd::Protocol(format!("unexpected {other:?} from an agent"))),
                        None => return Ok(()),
                    }
                }
                Some(msg) = outbox.recv() => {
                    let going_away = matches!(msg, ControlMessage::GoAway { .. });
                    send_control(&mut send, &msg).await?;
                    if going_away {
                        return Ok(());
                    }
                }
                _ = ticker.tick() => {
                    if last_heard.elapsed() > silence_limit {
                        return Err(LinkEnd::Silent(silence_limit));
                    }
                    nonce += 1;
                    send_control(&mut send, &ControlMessage::Ping { nonce }).await?;
                }
                _ = entry.link.closed() => return Ok(()),
            }
        }
    }
}

async fn reject(send: &mut SendHalf, reason: RejectReason, message: &str) {
    warn!(?reason, %message, "registration rejected");
    let _ = send_control(
        send,
        &ControlMessage::Reject {
            reason,
            message: message.to_owned(),
        },
    )
    .await;
    let _ = tokio::io::AsyncWriteExt::shutdown(send).await;
}
