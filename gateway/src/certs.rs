//! Certificates and TLS settings for the front door and the agent listener.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use agent_link::proto::{ALPN_MUX, ALPN_QUIC};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;

use crate::keys::{write_private, KeyError};

/// A certificate chain and its key, as loaded from PEM files.
#[derive(Debug)]
pub struct Identity {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// Certificates could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read or parsed.
    #[error("{path}: {detail}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// Writing a generated file failed.
    #[error(transparent)]
    Write(#[from] KeyError),
    /// The certificate and key do not make a usable TLS configuration.
    #[error("certificate and key are not usable together: {0}")]
    Tls(#[from] rustls::Error),
    /// Generating a certificate failed.
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

impl Identity {
    /// Loads a PEM chain and a PEM private key.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, CertError> {
        let file_err = |path: &Path, detail: String| CertError::File {
            path: path.to_owned(),
            detail,
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| file_err(cert, e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file_err(cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(file_err(cert, "no certificate in the file".into()));
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e.to_string()))?;
        Ok(Self { chain, key })
    }

    /// The leaf certificate's SHA-256 fingerprint, for agents that pin it.
    pub fn fingerprint(&self) -> String {
        agent_link::tls::fingerprint(&self.chain[0])
    }

    /// The certificate and key in the form rustls serves them.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, CertError> {
        let signer = agent_link::tls::provider()
            .key_provider
            .load_private_key(self.key.clone_key())?;
        Ok(Arc::new(CertifiedKey::new(self.chain.clone(), signer)))
    }
}

/// The certificate every listener serves, replaceable while they run (SIGHUP), so that
/// a renewed certificate takes effect without dropping links.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    /// A store serving `identity`.
    pub fn new(identity: &Identity) -> Result<Arc<Self>, CertError> {
        Ok(Arc::new(Self {
            current: RwLock::new(identity.certified_key()?),
        }))
    }

    /// Serves `identity` from the next handshake on.
    pub fn replace(&self, identity: &Identity) -> Result<(), CertError> {
        let key = identity.certified_key()?;
        *self.current.write().expect("certificate lock poisoned") = key;
        Ok(())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .expect("certificate lock poisoned")
                .clone(),
        )
    }
}

/// The front door: TLS 1.2 and 1.3 with rustls's modern suites, HTTP/1.1.
pub fn front_door(certs: &Arc<CertStore>) -> Result<Arc<ServerConfig>, CertError> {
    let mut config = ServerConfig::builder_with_provider(agent_link::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(certs.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Agent links over TCP: TLS 1.3 only, ALPN `agent-link-mux/1`.
pub fn agent_listener_tcp(certs: &Arc<CertStore>) -> Result<Arc<ServerConfig>, CertError> {
    let mut config = agent_listener(certs)?;
    config.alpn_protocols = vec![ALPN_MUX.to_vec()];
    Ok(Arc::new(config))
}

/// Agent links over QUIC: TLS 1.3 only, ALPN `agent-link/1`.
pub fn agent_listener(certs: &Arc<CertStore>) -> Result<ServerConfig, CertError> {
    let mut config = ServerConfig::builder_with_provider(agent_link::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(certs.clone());
    config.alpn_protocols = vec![ALPN_QUIC.to_vec()];
    Ok(config)
}

/// The paths of the development certificate for `domain` in `data_dir`.
pub fn dev_paths(data_dir: &Path, domain: &str) -> (PathBuf, PathBuf) {
    (
        data_dir.join(format!("{domain}.crt.pem")),
        data_dir.join(format!("{domain}.key.pem")),
    )
}

/// Makes a self-signed certificate for `domain`, `*.domain`, localhost and the loopback
/// addresses, unless one is already in `data_dir`; returns its paths.
pub fn ensure_dev_cert(data_dir: &Path, domain: &str) -> Result<(PathBuf, PathBuf), CertError> {
    let (cert_path, key_path) = dev_paths(data_dir, domain);
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let mut names = vec![domain.to_owned(), format!("*.{domain}")];
    for extra in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|n| n == extra) {
            names.push(extra.to_owned());
        }
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(names)?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("space gateway development ({domain})"),
    );
    let cert = params.self_signed(&key)?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, cert.pem()).map_err(|e| CertError::File {
        path: cert_path.clone(),
        detail: e.to_string(),
    })?;
    Ok((cert_path, key_path))
}
