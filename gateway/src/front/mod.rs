//! The public front door: one TLS listener (and optionally a plain one behind a load
//! balancer that terminates TLS), HTTP/1.1 with upgrades, routing by host and path.

mod auth;
mod head;
mod login;
mod proxy;
mod reply;
pub mod route;
mod ws;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent_link::proto::{ClientAddr, Service, ServiceKind, StreamClass};
use http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, info_span, warn, Instrument};

pub use auth::{TOKEN_COOKIE, TOKEN_PARAM};
pub use reply::Body;

use crate::auth::{Grant, Verifier};
use crate::metrics::Metrics;
use crate::open::{open_stream, OpenError};
use crate::registry::{Entry, Registry, SpaceKey};
use auth::Access;
use route::Route;

/// How long a client has to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What every request handler needs.
#[derive(Debug)]
pub struct Front {
    /// The live spaces.
    pub registry: Arc<Registry>,
    /// Checks user tokens.
    pub verifier: Verifier,
    /// `DOMAIN`.
    pub domain: String,
    /// Whether declared-public HTTP ports skip the token check (reloadable).
    pub allow_public_ports: AtomicBool,
    /// Counters and histograms.
    pub metrics: Arc<Metrics>,
    /// Set when the gateway drains: new requests are refused, open streams go on.
    pub draining: AtomicBool,
    /// Tells every front-door connection to finish its response and close.
    pub drain: tokio::sync::watch::Sender<bool>,
    /// Set at the drain deadline: websockets still open close with 1001 and a reason.
    pub stop: tokio::sync::watch::Sender<bool>,
    /// Front-door connections being served.
    pub connections: std::sync::atomic::AtomicUsize,
    /// Largest request head, bytes.
    pub max_head_bytes: usize,
    /// Time to send a request head.
    pub head_timeout: Duration,
    /// Connection, stream and message limits.
    pub limits: Limits,
}

/// What the front door allows each user and all of them together.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Front-door connections at once, counting TLS handshakes.
    pub max_connections: usize,
    /// Streams open at once on one agent link.
    pub max_streams_per_link: usize,
    /// Largest websocket message from a client.
    pub max_message: usize,
    /// Longest time a relayed connection may move no byte.
    pub idle: Option<Duration>,
}

impl Limits {
    /// The limits `config` sets.
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            max_connections: config.public.max_connections,
            max_streams_per_link: config.agents.max_streams_per_link,
            max_message: config.public.max_message_bytes,
            idle: config.public.stream_idle_timeout(),
        }
    }
}

/// Accepts TLS connections on `listener` until the task is dropped.
pub async fn serve_tls(listener: TcpListener, tls: Arc<rustls::ServerConfig>, front: Arc<Front>) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, addr) = accept(&listener, "public").await;
        let Some(counted) = admit(&front) else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, front) = (acceptor.clone(), front.clone());
        let span = info_span!("conn", client.addr = %addr, tls = true);
        tokio::spawn(
            async move {
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => serve_conn(stream, addr, true, front, counted).await,
                    Ok(Err(e)) => debug!(error = %e, "TLS handshake failed"),
                    Err(_) => debug!("TLS handshake timed out"),
                }
            }
            .instrument(span),
        );
    }
}

/// Accepts plain HTTP connections (TLS terminated in front of the gateway).
pub async fn serve_plain(listener: TcpListener, front: Arc<Front>) {
    loop {
        let (tcp, addr) = accept(&listener, "public").await;
        let Some(counted) = admit(&front) else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let front = front.clone();
        let span = info_span!("conn", client.addr = %addr, tls = false);
        tokio::spawn(serve_conn(tcp, addr, false, front, counted).instrument(span));
    }
}

/// Counts a new connection, or refuses it. Up to the limit, a connection is served;
/// past it, for an eighth of the limit more, it is answered 503 so that a client or a
/// load balancer learns why; past that it is closed at once, so that a flood costs
/// the gateway nothing more than an accept.
fn admit(front: &Arc<Front>) -> Option<ConnectionGuard> {
    let guard = ConnectionGuard::new(front);
    let max = front.limits.max_connections;
    let open = guard.open;
    if open <= max {
        return Some(guard);
    }
    front.metrics.connections_refused.inc();
    if open <= max + max / 8 + 1 {
        Some(guard.over_limit())
    } else {
        debug!(
            open,
            max, "connection closed: far over the connection limit"
        );
        None
    }
}

/// The next connection on `listener`. Errors such as running out of file descriptors
/// are logged and waited out rather than retried in a tight loop.
pub(crate) async fn accept(
    listener: &TcpListener,
    what: &str,
) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(conn) => return conn,
            Err(e) => {
                warn!(error = %e, listener = what, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_conn<IO>(
    io: IO,
    client: SocketAddr,
    tls: bool,
    front: Arc<Front>,
    counted: ConnectionGuard,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut drain = front.drain.subscribe();
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The first head's deadline is ours (it answers 408); hyper's, a second later,
    // covers the heads of later requests on the connection.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(front.head_timeout + Duration::from_secs(1))
        .max_buf_size(front.max_head_bytes);
    let first = head::FirstRequest::default();
    let io = head::HeadDeadline::new(io, first.clone(), front.head_timeout);
    let handler = front.clone();
    let over_limit = counted.over_limit;
    let service = service_fn(move |req| {
        first.arrived();
        let front = handler.clone();
        async move {
            let resp = if over_limit {
                reply::over_connection_limit(front.limits.max_connections)
            } else {
                handle(req, client, tls, &front).await
            };
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);

    // On drain, hyper finishes the response in flight (a download keeps going to its
    // last byte) and then closes the connection instead of waiting for another request.
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = async { drop(drain.wait_for(|draining| *draining).await) } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // Clients that vanish mid-request are ordinary; nothing for an operator here.
        debug!(error = %e, "connection ended with an error");
    }
    drop(counted);
}

/// Counts a front-door connection, from its accept to its end, so that the connection
/// limit holds and a drain can wait for responses still being written.
struct ConnectionGuard {
    front: Arc<Front>,
    /// Connections open, this one included, when it was accepted.
    open: usize,
    /// Served only to be told that the gateway is full.
    over_limit: bool,
}

impl ConnectionGuard {
    fn new(front: &Arc<Front>) -> Self {
        let open = front.connections.fetch_add(1, Ordering::Relaxed) + 1;
        front.metrics.connections.inc();
        Self {
            front: front.clone(),
            open,
            over_limit: false,
        }
    }

    fn over_limit(mut self) -> Self {
        self.over_limit = true;
        self
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.front.connections.fetch_sub(1, Ordering::Relaxed);
        self.front.metrics.connections.dec();
    }
}

/// Routes one request and answers it; every failure becomes a response that says what
/// went wrong.
async fn handle(
    req: Request<Incoming>,
    client: SocketAddr,
    tls: bool,
    front: &Front,
) -> Response<Body> {
    // hyper's buffer limit holds a head to about the limit but not exactly (one read
    // can carry it past); the limit users are told is checked here, to the byte.
    let head = head_len(&req);
    if head > front.max_head_bytes {
        return reply::text(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "the request head is {head} bytes; this gateway takes at most {}",
                front.max_head_bytes
            ),
        );
    }
    if front.draining.load(Ordering::Relaxed) {
        let mut resp = reply::text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway is shutting down; retry",
        );
        resp.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return resp;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or(req.uri().host());
    let route = match route::route(host, req.uri().path(), &front.domain) {
        Ok(route) => route,
        Err(e @ route::RouteError::NoHost) => {
            return reply::text(StatusCode::BAD_REQUEST, e.to_string())
        }
        Err(e) => return reply::text(StatusCode::NOT_FOUND, e.to_string()),
    };
    let client = ClientAddr(client);
    match route {
        Route::Port { space, port } => http_port(req, client, tls, front, space, port).await,
        Route::Vnc { space } => vnc(req, client, tls, front, space).await,
        Route::Ssh { space } => tcp_socket(req, client, front, space, None).await,
        Route::Tcp { space, port } => tcp_socket(req, client, front, space, Some(port)).await,
    }
}

/// The size of `req`'s head as it came on the wire: request line, headers, blank line.
fn head_len<B>(req: &Request<B>) -> usize {
    // METHOD SP TARGET SP HTTP/1.1 CRLF
    let line = req.method().as_str().len()
        + 1
        + req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + " HTTP/1.1\r\n".len();
    let headers: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + ": \r\n".len())
        .sum();
    line + headers + 2
}

/// `USER--SPACE--PORT.DOMAIN`: an HTTP port, public ones without a token.
async fn http_port(
    req: Request<Incoming>,
    client: ClientAddr,
    tls: bool,
    front: &Front,
    space: SpaceKey,
    port: u16,
) -> Response<Body> {
    let entry = front.registry.get(&space);
    let service = entry.as_ref().and_then(|e| e.service(port));
    let public = front.allow_public_ports.load(Ordering::Relaxed)
        && service
            .as_ref()
            .is_some_and(|s| s.public && s.kind == ServiceKind::Http);
    if !public && login::is_login(&req) {
        let grant = grant_for(service.as_ref(), Grant::Http);
        return login::login(&req, tls, front, &space, grant);
    }
    if !public {
        if let Err(resp) = authorize(
            &req,
            front,
            &space,
            grant_for(service.as_ref(), Grant::Http),
        ) {
            return resp;
        }
    }
    let Some(entry) = entry else {
        return reply::not_connected(&space);
    };
    match service.as_ref().map(|s| s.kind) {
        Some(ServiceKind::Http | ServiceKind::Vnc) => {}
        Some(ServiceKind::Https) => {
            let message = format!(
                "port {port} serves HTTPS inside the space; \
                 the gateway proxies plain HTTP ports only"
            );
            return reply::text(StatusCode::NOT_IMPLEMENTED, message);
        }
        Some(ServiceKind::Tcp) => {
            return reply::text(
                StatusCode::NOT_FOUND,
                format!(
                    "port {port} is not an HTTP port; reach it through /tcp/{}/{}/{port}",
                    space.user, space.space
                ),
            );
        }
        None => {
            return reply::text(
                StatusCode::NOT_FOUND,
                format!("port {port} is not offered by space {space}"),
            )
        }
    }
    let class = class_for(service.as_ref());
    let route = if class == StreamClass::Interactive {
        "vnc"
    } else {
        "http"
    };
    // Requests without a token may fill only half of the link: strangers on a public
    // port cannot take every stream and keep the space's owner out.
    let limit = if public {
        Limit::Public((front.limits.max_streams_per_link / 2).max(1))
    } else {
        Limit::All(front.limits.max_streams_per_link)
    };
    forward(req, client, tls, front, &entry, port, class, route, limit).await
}

/// How many streams a request may find open on the link and still be served.
#[derive(Debug, Clone, Copy)]
enum Limit {
    /// The link's whole limit.
    All(usize),
    /// Half of it, for requests without a token.
    Public(usize),
}

/// The grant a service needs, whichever route reaches it: a token for HTTP ports must
/// not open the desktop or SSH by naming their port numbers.
fn grant_for(service: Option<&Service>, route_default: Grant) -> Grant {
    match service {
        Some(s) if s.name == "ssh" => Grant::Ssh,
        Some(s) => match s.kind {
            ServiceKind::Vnc => Grant::Vnc,
            ServiceKind::Http | ServiceKind::Https => Grant::Http,
            ServiceKind::Tcp => Grant::Tcp,
        },
        None => route_default,
    }
}

/// Keystrokes and screens go ahead of bulk transfers on the same link.
fn class_for(service: Option<&Service>) -> StreamClass {
    match service {
        Some(s) if s.name == "ssh" || s.kind == ServiceKind::Vnc => StreamClass::Interactive,
        _ => StreamClass::Bulk,
    }
}

/// `USER--SPACE--vnc.DOMAIN`: the VNC web service, page and websocket.
async fn vnc(
    req: Request<Incoming>,
    client: ClientAddr,
    tls: bool,
    front: &Front,
    space: SpaceKey,
) -> Response<Body> {
    if login::is_login(&req) {
        return login::login(&req, tls, front, &space, Grant::Vnc);
    }
    if let Err(resp) = authorize(&req, front, &space, Grant::Vnc) {
        return resp;
    }
    let Some(entry) = front.registry.get(&space) else {
        return reply::not_connected(&space);
    };
    let Some(service) = entry.service_of_kind(ServiceKind::Vnc) else {
        return reply::text(
            StatusCode::NOT_FOUND,
            format!("space {space} offers no VNC desktop"),
        );
    };
    let class = StreamClass::Interactive;
    let limit = Limit::All(front.limits.max_streams_per_link);
    forward(
        req,
        client,
        tls,
        front,
        &entry,
        service.port,
        class,
        "vnc",
        limit,
    )
    .await
}

/// `/ssh/USER/SPACE` and `/tcp/USER/SPACE/PORT`: a websocket carrying raw TCP bytes.
async fn tcp_socket(
    req: Request<Incoming>,
    client: ClientAddr,
    front: &Front,
    space: SpaceKey,
    port: Option<u16>,
) -> Response<Body> {
    // 1. The service asked for decides the grant: `/ssh` is the SSH server, and a port
    //    on `/tcp` needs whatever grant its service needs.
    let entry = front.registry.get(&space);
    let service = entry.as_ref().and_then(|e| match port {
        Some(port) => e.service(port),
        None => e
            .services
            .read()
            .expect("services lock poisoned")
            .iter()
            .find(|s| s.name == "ssh")
            .cloned(),
    });
    let route_default = if port.is_some() {
        Grant::Tcp
    } else {
        Grant::Ssh
    };
    if let Err(resp) = authorize(
        &req,
        front,
        &space,
        grant_for(service.as_ref(), route_default),
    ) {
        return resp;
    }
    if let Err(resp) = ws::check_upgrade(&req) {
        return resp;
    }

    // 2. Connected, and offering it.
    let Some(entry) = entry else {
        return reply::not_connected(&space);
    };
    let Some(service) = service else {
        let message = match port {
            Some(port) => format!("port {port} is not offered by space {space}"),
            None => format!("space {space} offers no SSH server"),
        };
        return reply::text(StatusCode::NOT_FOUND, message);
    };

    // 3. The stream, then the websocket.
    let route = if service.name == "ssh" { "ssh" } else { "tcp" };
    let started = Instant::now();
    let class = class_for(Some(&service));
    let limit = front.limits.max_streams_per_link;
    let opened = open_stream(&entry, service.port, client, class, limit).await;
    let outcome = opened.as_ref().map_or_else(OpenError::outcome, |_| "ok");
    front.metrics.stream(route, outcome, started.elapsed());
    match opened {
        Ok(opened) => {
            let span = info_span!("stream", %space, port = service.port, request = %opened.id);
            let stop = front.stop.subscribe();
            ws::accept(req, opened, span, front.metrics.clone(), front.limits, stop)
        }
        Err(e) => {
            info!(%space, port = service.port, error = %e, "stream not opened");
            reply::open_failed(&e)
        }
    }
}

/// Opens a stream to `port` and proxies the HTTP request over it.
#[allow(clippy::too_many_arguments)]
async fn forward(
    req: Request<Incoming>,
    client: ClientAddr,
    tls: bool,
    front: &Front,
    entry: &Arc<Entry>,
    port: u16,
    class: StreamClass,
    route: &'static str,
    limit: Limit,
) -> Response<Body> {
    let started = Instant::now();
    let opened = match limit {
        Limit::All(n) => open_stream(entry, port, client, class, n).await,
        Limit::Public(n) => open_stream(entry, port, client, class, n)
            .await
            .map_err(|e| match e {
                OpenError::TooManyStreams(n) => OpenError::PublicBusy(n),
                e => e,
            }),
    };
    let outcome = opened.as_ref().map_or_else(OpenError::outcome, |_| "ok");
    front.metrics.stream(route, outcome, started.elapsed());
    match opened {
        Ok(opened) => {
            let span = info_span!("stream", session = %entry.session, port, request = %opened.id);
            proxy::forward(req, opened, client, tls, &front.metrics, front.limits.idle)
                .instrument(span)
                .await
        }
        Err(e) => {
            info!(session = %entry.session, port, error = %e, "stream not opened");
            reply::open_failed(&e)
        }
    }
}

/// 401 without a valid token, 403 with one that does not reach this space or service.
fn authorize(
    req: &Request<Incoming>,
    front: &Front,
    space: &SpaceKey,
    grant: Grant,
) -> Result<(), Response<Body>> {
    match auth::check(req, &front.verifier, space, grant) {
        Access::Granted(claims) => {
            debug!(user = %claims.sub, service = grant.as_str(), "access granted");
            Ok(())
        }
        Access::Missing => Err(reply::unauthorized(
            "a user token is required: send Authorization: Bearer TOKEN, \
             or ?access_token=TOKEN on a websocket",
        )),
        Access::Invalid(e) => {
            info!(%space, error = %e, "token refused");
            Err(reply::unauthorized(format!("{e}")))
        }
        Access::Forbidden(claims) => {
            info!(%space, user = %claims.sub, service = grant.as_str(), "access denied");
            let message = format!(
                "this token does not grant {} access to space {space}",
                grant.as_str()
            );
            Err(reply::text(StatusCode::FORBIDDEN, message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_measured_as_it_came_on_the_wire() {
        let req = Request::get("/a").header("host", "x").body(()).unwrap();
        assert_eq!(head_len(&req), "GET /a HTTP/1.1\r\nhost: x\r\n\r\n".len());
    }
}
