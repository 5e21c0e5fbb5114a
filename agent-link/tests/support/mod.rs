//! What more than one test binary needs: a gateway's side of a QUIC link.

use std::net::SocketAddr;

use agent_link::proto::ALPN_QUIC;
use agent_link::transport::quic::{server_endpoint, LinkTuning};

/// A QUIC endpoint on an ephemeral loopback port with a new self-signed certificate,
/// set up as the gateway's, and the certificate's fingerprint for the agent to pin.
pub fn gateway_endpoint() -> (quinn::Endpoint, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("a self-signed certificate");
    let fingerprint = agent_link::tls::fingerprint(cert.cert.der());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let mut tls = rustls::ServerConfig::builder_with_provider(agent_link::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("the certificate and its key");
    tls.alpn_protocols = vec![ALPN_QUIC.to_vec()];
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("literal address");
    let endpoint = server_endpoint(addr, tls, &LinkTuning::gateway(), &[7u8; 32])
        .expect("a QUIC endpoint on 127.0.0.1");
    (endpoint, fingerprint)
}
