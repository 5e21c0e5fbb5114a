//! The agent's own HTTPS listener: `GET /ping` for the scheduler's health check, and
//! `GET /status` for a person or a script that wants to know how the link is doing.
//!
//! The certificate is self-signed and made afresh at every start: health checks run
//! with verification skipped, and nothing here is secret.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info_span, warn, Instrument};

use super::report::{status_json, AgentFacts};
use super::status::LinkStatus;
use crate::tls::provider;

/// Time for a client to finish the TLS handshake, and then to send its request head.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PingError {
    /// The address is taken or not ours.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// The self-signed certificate could not be made.
    #[error("cannot make the self-signed certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// rustls refused the certificate or key.
    #[error("cannot configure TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// A bound listener with its TLS configuration, ready to serve.
#[derive(Debug)]
pub(super) struct PingListener {
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
}

/// What every request handler reads.
#[derive(Debug)]
struct Shared {
    status: LinkStatus,
    facts: AgentFacts,
}

impl PingListener {
    /// Makes the certificate and binds `addr`.
    pub(super) async fn bind(addr: SocketAddr) -> Result<Self, PingError> {
        let tls = Arc::new(server_config()?);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| PingError::Bind { addr, source })?;
        Ok(Self { listener, tls })
    }

    /// The address actually bound (the port is chosen when the configured one is 0).
    pub(super) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves connections until the process ends.
    pub(super) async fn serve(self, status: LinkStatus, facts: AgentFacts) {
        let shared = Arc::new(Shared { status, facts });
        loop {
            let (tcp, client) = accept(&self.listener).await;
            let (acceptor, shared) = (TlsAcceptor::from(self.tls.clone()), shared.clone());
            let span = info_span!("ping_conn", client.addr = %client);
            tokio::spawn(serve_conn(tcp, acceptor, shared).instrument(span));
        }
    }
}

fn server_config() -> Result<rustls::ServerConfig, PingError> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let key = PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der());
    // TLS 1.2 as well as 1.3: health checkers are not always recent.
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], PrivateKeyDer::Pkcs8(key))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The next connection. Errors such as running out of file descriptors are logged and
/// waited out rather than retried in a tight loop.
async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(conn) => return conn,
            Err(e) => {
                warn!(error = %e, "cannot accept a /ping connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_conn(tcp: TcpStream, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    let tls = match tokio::time::timeout(CLIENT_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return debug!(error = %e, "TLS handshake failed"),
        Err(_) => return debug!("TLS handshake timed out"),
    };
    let service = service_fn(move |req| {
        let response = respond(&req, &shared);
        async move { Ok::<_, std::convert::Infallible>(response) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(CLIENT_TIMEOUT);
    if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
        // Health checkers hang up as they please; nothing for an operator here.
        debug!(error = %e, "connection ended with an error");
    }
}

fn respond<B>(req: &Request<B>, shared: &Shared) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/ping" => ping(shared),
        "/status" => {
            let body = status_json(&shared.status.snapshot(), &shared.facts);
            reply(StatusCode::OK, "application/json", body + "\n")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /ping or /status\n".into(),
        ),
    }
}

/// 200 `pong` while the link is registered, so that the check fails (and the scheduler
/// acts) while the space cannot be reached through the gateway.
fn ping(shared: &Shared) -> Response<Full<Bytes>> {
    let state = shared.status.snapshot();
    if state.up.is_some() {
        return text(StatusCode::OK, "pong".into());
    }
    let reason = state.last_error.as_deref().unwrap_or("not linked yet");
    let body = format!("not linked to the gateway: {reason}\n");
    text(StatusCode::SERVICE_UNAVAILABLE, body)
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    reply(status, "text/plain; charset=utf-8", body)
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Every answer describes this instant; a cached one would be a lie.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::agent::status::LinkUp;
    use crate::transport::TransportKind;

    fn shared() -> Shared {
        let facts = AgentFacts {
            endpoint: "gw.example:7443".into(),
            services: Vec::new(),
        };
        Shared {
            status: LinkStatus::new(),
            facts,
        }
    }

    fn get(shared: &Shared, path: &str) -> StatusCode {
        let req = Request::get(path).body(()).unwrap();
        respond(&req, shared).status()
    }

    #[test]
    fn ping_is_503_until_a_link_registers_then_200() {
        let shared = shared();
        assert_eq!(get(&shared, "/ping"), StatusCode::SERVICE_UNAVAILABLE);
        shared.status.registered(LinkUp {
            transport: TransportKind::Quic,
            gateway: SocketAddr::from(([127, 0, 0, 1], 7443)),
            session: 1,
            since: SystemTime::now(),
        });
        assert_eq!(get(&shared, "/ping"), StatusCode::OK);
        shared.status.down(&"link closed");
        assert_eq!(get(&shared, "/ping"), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn other_paths_are_404_and_status_is_200_either_way() {
        let shared = shared();
        assert_eq!(get(&shared, "/"), StatusCode::NOT_FOUND);
        assert_eq!(get(&shared, "/ping/"), StatusCode::NOT_FOUND);
        assert_eq!(get(&shared, "/status"), StatusCode::OK);
    }
}
