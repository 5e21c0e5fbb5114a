//! The agent listener: accepts links on QUIC and on TLS/TCP, checks the `Hello`,
//! registers the space, and runs the control loop until the link ends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent_link::heartbeat::Heartbeat;
use agent_link::io::{send_control, ControlReader, ReadError};
use agent_link::proto::{ControlMessage, RejectReason, Service, ALPN_MUX, PROTOCOL_VERSION};
use agent_link::transport::mux::MuxLink;
use agent_link::transport::{Link, RecvHalf, SendHalf, TransportKind};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::auth::{AgentClaims, TokenError, Verifier};
use crate::front::route::space_key;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
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
    /// Counters and histograms.
    pub metrics: Arc<Metrics>,
    /// Registration attempts per source address.
    pub limiter: RateLimiter,
    /// Links served at once, past which new links are rejected.
    pub max_links: usize,
    /// Links being served now, from accept to close.
    pub links: AtomicUsize,
    /// Bytes of a link's streams that its users may leave unread
    /// (`agents.max_unread_mib_per_link`); stalled streams may hold half.
    pub unread_budget: u64,
}

/// Counts a link in [`AgentListener::links`] while it lives.
struct LinkCount<'a>(&'a AtomicUsize);

impl<'a> LinkCount<'a> {
    fn new(links: &'a AtomicUsize) -> Self {
        links.fetch_add(1, Ordering::Relaxed);
        Self(links)
    }
}

impl Drop for LinkCount<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A `Hello` that passed its checks.
struct CheckedHello {
    key: SpaceKey,
    claims: AgentClaims,
    services: Vec<Service>,
    instance: u64,
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
    /// Silent on the control stream while the agent's packets kept coming: the link's
    /// flow-control window is most likely full of data users have not read.
    #[error(
        "no pong for {0:?}, though the agent's packets kept coming: users of the space may \
         have stalled downloads worth the link's window (agents.max_unread_mib_per_link)"
    )]
    Blocked(Duration),
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

    /// Accepts TLS/TCP links (yamux) on the same port number as QUIC.
    pub async fn serve_tcp(self: Arc<Self>, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        loop {
            let (tcp, addr) = crate::front::accept(&listener, "agents").await;
            if let Err(e) = agent_link::transport::mux::tune_socket(&tcp) {
                debug!(error = %e, "could not tune a link socket");
            }
            let (this, acceptor) = (self.clone(), acceptor.clone());
            let span = info_span!("link", agent.addr = %addr, transport = "tcp");
            tokio::spawn(
                async move {
                    match tokio::time::timeout(this.hello_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) if tls.get_ref().1.alpn_protocol() == Some(ALPN_MUX) => {
                            this.serve_link(Link::Mux(MuxLink::new(tls, true, addr)))
                                .await
                        }
                        Ok(Ok(_)) => debug!("TLS link without the agent-link-mux ALPN"),
                        Ok(Err(e)) => debug!(error = %e, "TLS handshake failed"),
                        Err(_) => debug!("TLS handshake timed out"),
                    }
                }
                .instrument(span),
            );
        }
    }

    /// Runs one link from handshake to end.
    async fn serve_link(&self, link: Link) {
        let _counted = LinkCount::new(&self.links);
        if let Err(e) = self.register(&link).await {
            info!(error = %e, "link not registered");
            // Give the Reject a moment to be delivered before the close cuts it.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        link.close("link ended");
    }

    async fn register(&self, link: &Link) -> Result<(), LinkEnd> {
        // 1. The agent's first stream is the control stream; its first message is
        //    Hello. Both must arrive within one deadline.
        let deadline = Instant::now() + self.hello_timeout;
        let Ok(Some(mut stream)) = tokio::time::timeout_at(deadline, link.accept()).await else {
            return Err(LinkEnd::NoControlStream);
        };
        stream.set_control();
        let (mut send, mut control) = (stream.send, ControlReader::new(stream.recv));
        let hello = match tokio::time::timeout_at(deadline, control.next()).await {
            Ok(Ok(Some(msg))) => msg,
            Ok(Ok(None)) => {
                return Err(LinkEnd::Protocol(
                    "control stream ended before Hello".into(),
                ))
            }
            Ok(Err(e)) => {
                reject(
                    &mut send,
                    RejectReason::Protocol,
                    &format!("expected Hello: {e}"),
                )
                .await;
                return Err(e.into());
            }
            Err(_) => {
                reject(&mut send, RejectReason::Protocol, "no Hello in time").await;
                return Err(LinkEnd::NoControlStream);
            }
        };

        // 2. Room for one more link; not too often from one address; then version and
        //    token. The space's identity comes from the token alone.
        if self.links.load(Ordering::Relaxed) > self.max_links {
            self.metrics.registration("link_limit");
            let message = format!(
                "the gateway is serving its limit of {} links; retry later",
                self.max_links
            );
            reject(&mut send, RejectReason::Unavailable, &message).await;
            return Err(LinkEnd::Rejected(message));
        }
        //    A good token is never limited: the spaces behind one address must not be
        //    kept out by a neighbour's bad ones. An address that keeps failing is told
        //    only to wait, whatever was wrong, until its failures are forgiven.
        let source = link.remote_addr().ip();
        let CheckedHello {
            key,
            claims,
            services,
            instance,
        } = match self.check_hello(hello) {
            Ok(ok) => ok,
            Err((reason, message)) => {
                if !self.limiter.allows(source, Instant::now()) {
                    self.metrics.registration("rate_limited");
                    let message = "too many failed registrations from this address; \
                                   retry in a few seconds";
                    reject(&mut send, RejectReason::Unavailable, message).await;
                    return Err(LinkEnd::Rejected(message.to_owned()));
                }
                self.metrics.registration(reason_label(reason));
                self.limiter.failed(source, Instant::now());
                reject(&mut send, reason, &message).await;
                return Err(LinkEnd::Rejected(message));
            }
        };

        // 3. An agent that lost this space to a second agent, which still holds it,
        //    stands by: two live agents with one token must not trade the space.
        if let Some(first) = self.registry.standby(&key, instance) {
            self.metrics.registration("standby");
            if first {
                warn!(
                    space = %key, agent.addr = %link.remote_addr(),
                    "two live agents use this space's token; keeping the one that took \
                     over last, the other stands by"
                );
            }
            let message = "another agent with this space's token took it over and is \
                           still linked; standing by";
            reject(&mut send, RejectReason::Standby, message).await;
            return Err(LinkEnd::Rejected(message.to_owned()));
        }

        // 4. Welcome, then register, replacing any older link of the same space. The
        //    old one is told to go away and keeps its open streams until they end.
        let session = self.registry.next_session();
        let (control_tx, control_rx) = mpsc::channel(8);
        let entry = Arc::new(Entry::new(
            session,
            claims.sub.clone(),
            link.clone(),
            services,
            control_tx,
            instance,
        ));
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
        self.metrics.registration("ok");
        self.metrics.link(link.kind().as_str(), 1);
        if let Some(old) = self.registry.insert(key.clone(), entry.clone()) {
            self.metrics.links_replaced.inc();
            let old_transport = old.link.kind().as_str();
            info!(
                space = %key, old_session = %old.session, old_transport, new_session = %session,
                "link replaced by a newer one"
            );
            let _ = old.control.try_send(Box::new(ControlMessage::GoAway {
                reason: "replaced by a newer link".into(),
            }));
        }
        let transport = link.kind().as_str();
        info!(space = %key, space_id = %claims.sub, %session, transport, "space registered");

        // 5. The control loop, then cleanup unless a newer link already took over.
        let span = info_span!("space", space = %key, %session);
        let end = self
            .control_loop(&entry, send, control, control_rx)
            .instrument(span)
            .await;
        self.metrics.link(link.kind().as_str(), -1);
        let reason = end
            .as_ref()
            .err()
            .map_or_else(|| "closed".to_owned(), ToString::to_string);
        if self.registry.remove(&key, session) {
            info!(space = %key, %session, %reason, "space unregistered");
        } else {
            debug!(space = %key, %session, %reason, "replaced link ended");
        }
        Ok(())
    }

    fn check_hello(&self, hello: ControlMessage) -> Result<CheckedHello, (RejectReason, String)> {
        let ControlMessage::Hello {
            version,
            token,
            services,
            agent_version,
            instance,
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
                format!(
                    "agent speaks protocol {version}, this gateway speaks {PROTOCOL_VERSION}: \
                     upgrade the agent"
                ),
            ));
        }
        let claims = self.verifier.agent(&token).map_err(|e| match e {
            TokenError::Expired => (RejectReason::ExpiredToken, format!("agent token: {e}")),
            TokenError::NotYetValid => (RejectReason::NotYetValid, format!("agent token: {e}")),
            other => (RejectReason::BadToken, format!("agent token: {other}")),
        })?;
        let Some(key) = space_key(&claims.usr, &claims.spc) else {
            let message = format!(
                "agent token names user {:?} and space {:?}, which cannot be routed: \
                 names are lower-case letters, digits, - and _",
                claims.usr, claims.spc
            );
            return Err((RejectReason::BadToken, message));
        };
        debug!(agent_version, services = services.len(), instance, "hello");
        Ok(CheckedHello {
            key,
            claims,
            services,
            instance,
        })
    }

    /// Answers and sends pings until the link ends or goes silent. After a `GoAway`
    /// the loop goes on, so that the old link keeps serving its open streams, until
    /// the agent closes it.
    async fn control_loop(
        &self,
        entry: &Entry,
        mut send: SendHalf,
        mut control: ControlReader<RecvHalf>,
        mut outbox: mpsc::Receiver<Box<ControlMessage>>,
    ) -> Result<(), LinkEnd> {
        let mut heartbeat = Heartbeat::new(self.ping_interval, Instant::now());
        let mut ticker = tokio::time::interval(heartbeat.interval());
        // Slow streams are looked for every second while any stream is open, so that
        // they are cut before they fill the link, not a ping interval later.
        let mut stall_ticker = tokio::time::interval(STALL_TICK);
        stall_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Datagrams from the agent by the last tick: more by this one, and yet silence
        // on the control stream, means the agent is there but its stream cannot pass.
        let mut datagrams_then = entry.link.datagrams_received();
        // Whether the agent said anything on the control stream since the last tick.
        let mut heard = true;
        loop {
            let outgoing = tokio::select! {
                msg = control.next() => {
                    heard = true;
                    let now = Instant::now();
                    heartbeat.on_message(now);
                    match msg? {
                        Some(ControlMessage::Ping { nonce }) => ControlMessage::Pong { nonce },
                        Some(ControlMessage::Pong { nonce }) => {
                            if let Some(measured) = heartbeat.on_pong(nonce, now) {
                                self.record_rtt(entry, measured);
                            }
                            continue;
                        }
                        Some(ControlMessage::ServicesUpdate { services }) => {
                            info!(count = services.len(), "services updated");
                            *entry.services.write().expect("services lock poisoned") = services;
                            continue;
                        }
                        Some(other) => {
                            let message = format!("unexpected {other:?} from an agent");
                            return Err(LinkEnd::Protocol(message));
                        }
                        None => return Ok(()),
                    }
                }
                Some(msg) = outbox.recv() => *msg,
                // Agents open no streams but the control stream. Refused here rather
                // than in a task of their own, which every link would carry.
                Some(mut stream) = entry.link.accept() => {
                    debug!("agent opened an unexpected stream; resetting it");
                    stream.reset();
                    continue;
                }
                _ = stall_ticker.tick(), if entry.open_streams.load(Ordering::Relaxed) > 0 => {
                    self.cut_slow(entry, STALL_TICK, false);
                    continue;
                }
                _ = ticker.tick() => {
                    let now = Instant::now();
                    let datagrams = entry.link.datagrams_received();
                    let arriving = datagrams.zip(datagrams_then).is_some_and(|(n, then)| n > then);
                    datagrams_then = datagrams;
                    // A whole interval without a word on the control stream (an answer
                    // to the last ping at least), while the agent's packets come: its
                    // streams cannot pass, the link's window is full. Every stream whose
                    // user is not reading is cut now, not at the heartbeat's limit.
                    // The window-full cut: every stream waited on at all since the
                    // last stall tick that took little; the rest is left to those ticks.
                    if !heard && arriving {
                        self.cut_slow(entry, Duration::from_millis(2), true);
                    }
                    heard = false;
                    match heartbeat.on_tick(now) {
                        Ok(ping) => ping,
                        // The agent is there but its stream cannot pass: the link's
                        // window is full. Every stream whose user is not reading is cut
                        // to free it, and the link gets another limit's time; with none
                        // to cut, it is given up.
                        Err(silent) if arriving => {
                            if cut_every_waiting(entry) == 0 {
                                return Err(LinkEnd::Blocked(silent.0));
                            }
                            heartbeat.on_message(now);
                            heartbeat.on_tick(now).map_err(|s| LinkEnd::Blocked(s.0))?
                        }
                        // A cut network or a hung agent sends nothing, not even the
                        // acknowledgements of our pings, which quinn sends in its
                        // process.
                        Err(silent) => return Err(LinkEnd::Silent(silent.0)),
                    }
                }
                _ = entry.link.closed() => return Ok(()),
            };
            send_control(&mut send, &outgoing).await?;
        }
    }

    /// Cuts the slow streams, those whose users are being waited on and took less than
    /// [`SLOW_RATE`] over the last `interval`, slowest first, beyond as many as half the
    /// link's unread budget holds windows for; all of them when the link's window is
    /// `full`. Users who stop reading, strangers on a public port among them, cannot
    /// fill the link, and those who read at a steady pace are left alone.
    fn cut_slow(&self, entry: &Entry, interval: Duration, full: bool) {
        let window = match entry.link.kind() {
            TransportKind::Quic => u64::from(agent_link::transport::quic::STREAM_WINDOW),
            TransportKind::Tcp => agent_link::transport::mux::STREAM_WINDOW as u64,
        };
        let kept = if full {
            0
        } else {
            usize::try_from(self.unread_budget / 2 / window)
                .unwrap_or(usize::MAX)
                .max(1)
        };
        let min_moved = SLOW_RATE.saturating_mul(interval.as_secs().max(1));
        let cut = entry.stalls.cut_slow(interval, min_moved, kept);
        if cut > 0 && full {
            warn!(
                cut,
                "the link's window was full: cut every stream whose user was reading \
                 slower than {} KiB/s",
                SLOW_RATE / 1024
            );
        } else if cut > 0 {
            info!(
                cut,
                kept,
                "cut streams whose users were reading slower than {} KiB/s: more than half \
                 the link's unread budget (agents.max_unread_mib_per_link) could wait for them",
                SLOW_RATE / 1024
            );
        }
    }

    /// The transport's own estimate where it has one (QUIC), else the pong's.
    fn record_rtt(&self, entry: &Entry, measured: Duration) {
        let rtt = entry.link.rtt().unwrap_or(measured);
        let micros = rtt.as_micros().try_into().unwrap_or(u64::MAX);
        entry.rtt_micros.store(micros, Ordering::Relaxed);
        self.metrics.rtt_seconds.observe(rtt.as_secs_f64());
    }
}

/// Agents open only the control stream; any further stream they open is dropped at
/// once so that it cannot pile up unread.
async fn reject(send: &mut SendHalf, reason: RejectReason, message: &str) {
    match reason {
        // The gateway's own state (full, draining, a failing address told to wait, an
        // agent standing by): every retry would log again, thousands at once at scale.
        // They are counted in gateway_registrations_total{result}.
        RejectReason::Unavailable | RejectReason::Standby => {
            debug!(?reason, %message, "registration rejected");
        }
        // Something wrong with the agent that an operator should see; bad tokens from
        // one address are bounded by the rate limiter.
        _ => warn!(?reason, %message, "registration rejected"),
    }
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

/// How often a link with open streams is searched for slow ones.
const STALL_TICK: Duration = Duration::from_secs(1);

/// Bytes a second below which a user who is being waited on is slow (16 KiB/s, 128
/// kbit/s): slower, its stream's window stays full.
const SLOW_RATE: u64 = 16 * 1024;

/// Cuts every stream of the link whose user is being waited on, the last resort for a
/// link whose window is still full; returns how many.
fn cut_every_waiting(entry: &Entry) -> usize {
    let cut = entry.stalls.cut_waiting();
    if cut > 0 {
        warn!(
            cut,
            "the link's window stayed full: cut every stream whose user was being waited on"
        );
    }
    cut
}

/// The `result` label of a rejected registration.
fn reason_label(reason: RejectReason) -> &'static str {
    match reason {
        RejectReason::BadToken => "bad_token",
        RejectReason::ExpiredToken => "expired_token",
        RejectReason::NotYetValid => "not_yet_valid",
        RejectReason::Standby => "standby",
        RejectReason::Version => "version",
        RejectReason::Protocol => "protocol",
        RejectReason::Unavailable => "unavailable",
    }
}
