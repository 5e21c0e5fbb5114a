//! TLS for the link: the crypto provider, and how an agent decides to trust a gateway.
//!
//! The agent never skips verification. It trusts either the CA certificates in a file
//! (production: the gateway's certificate chains to them and names the endpoint), or a
//! pinned SHA-256 fingerprint of the gateway's certificate (development with a
//! self-signed certificate). A pinned certificate must still prove possession of its
//! key in the handshake, so the signatures are verified either way.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, Error as TlsError, SignatureScheme};
use rustls_pki_types::pem::PemObject;

/// The one crypto provider of the whole workspace (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate's SHA-256 fingerprint, lower-case hex without separators.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, cert.as_ref()).as_ref())
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Whom the agent trusts as its gateway.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Certificates chaining to the CA certificates in this PEM file.
    CaFile(PathBuf),
    /// Exactly the certificate with this SHA-256 fingerprint.
    Fingerprint([u8; 32]),
}

/// A trust setting could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The CA file could not be read or holds no certificate.
    #[error("cannot use CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The fingerprint is not 64 hex digits.
    #[error("a certificate fingerprint is 64 hex digits (colons allowed), got {0:?}")]
    Fingerprint(String),
}

impl Trust {
    /// Parses a fingerprint as printed by the gateway (hex, colons optional).
    pub fn fingerprint(text: &str) -> Result<Self, TrustError> {
        let digits: String = text.chars().filter(|c| *c != ':').collect();
        let bad = || TrustError::Fingerprint(text.to_owned());
        if digits.len() != 64 || !digits.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self::Fingerprint(out))
    }

    /// A rustls client configuration that trusts exactly this, for TLS 1.3 only
    /// (agent links and the SSH client mode need nothing older).
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<rustls::ClientConfig, TrustError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("the ring provider supports TLS 1.3");
        let mut config = match self {
            Self::CaFile(path) => builder
                .with_root_certificates(load_roots(path)?)
                .with_no_client_auth(),
            Self::Fingerprint(pin) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedCert {
                    pin: *pin,
                    provider: provider(),
                }))
                .with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

fn load_roots(path: &Path) -> Result<rustls::RootCertStore, TrustError> {
    let err = |reason: String| TrustError::CaFile {
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    Ok(roots)
}

/// Accepts exactly one certificate, named by its SHA-256 fingerprint.
#[derive(Debug)]
struct PinnedCert {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let digest = ring::digest::digest(&ring::digest::SHA256, end_entity.as_ref());
        if digest.as_ref() == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(TlsError::General(format!(
                "gateway certificate fingerprint {} does not match the pinned {}",
                fingerprint(end_entity),
                hex(&self.pin)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        // The configuration allows TLS 1.3 only, so a TLS 1.2 handshake cannot get here.
        Err(TlsError::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let hexed = "ab".repeat(32);
        let coloned = vec!["ab"; 32].join(":");
        for text in [hexed.as_str(), coloned.as_str()] {
            assert!(
                matches!(Trust::fingerprint(text), Ok(Trust::Fingerprint(p)) if p == [0xab; 32])
            );
        }
        assert!(Trust::fingerprint("abc").is_err());
        assert!(Trust::fingerprint(&"zz".repeat(32)).is_err());
        assert!(
            Trust::fingerprint(&format!("€{}", "a".repeat(61))).is_err(),
            "no panic on non-ASCII"
        );
    }
}
