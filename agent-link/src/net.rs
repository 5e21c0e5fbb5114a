//! Name resolution with the one rule the system resolver may lack.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

/// Resolves `host:port` to its first address. Names under `localhost` are loopback
/// without asking DNS (RFC 6761 section 6.3), as browsers and curl already treat them,
/// so that a development gateway at `gateway.localhost` works everywhere.
pub async fn resolve(host: &str, port: u16) -> io::Result<SocketAddr> {
    let lower = host.to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn localhost_names_are_loopback() {
        for host in [
            "localhost",
            "gateway.localhost",
            "A--B--80.Gateway.Localhost",
        ] {
            assert_eq!(
                resolve(host, 8443).await.unwrap(),
                "127.0.0.1:8443".parse().unwrap()
            );
        }
        assert_eq!(
            resolve("127.0.0.2", 1).await.unwrap(),
            "127.0.0.2:1".parse().unwrap()
        );
    }
}
