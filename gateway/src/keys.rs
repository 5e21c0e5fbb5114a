//! The deployment's Ed25519 key pair. The control plane keeps the private key and signs
//! tokens; a gateway needs only the public key, so a compromised gateway cannot mint
//! access. Both are PEM files: PKCS#8 for the private key, SubjectPublicKeyInfo for the
//! public key.

use std::fs;
use std::path::{Path, PathBuf};

use agent_link::transport::quic::RESET_KEY_LEN;
use rcgen::{KeyPair, PKCS_ED25519};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410 section 4); the 32-byte
/// key follows it.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// A key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a PEM key of the expected kind.
    #[error("{path}: not an Ed25519 {what} in PEM form ({detail})")]
    Format {
        /// The file.
        path: PathBuf,
        /// "private key" or "public key".
        what: &'static str,
        /// What the parser said.
        detail: String,
    },
    /// The QUIC reset key file has the wrong length.
    #[error(
        "{path}: {len} bytes where a QUIC reset key has {RESET_KEY_LEN}; \
         delete the file and the gateway makes a new key"
    )]
    ResetKey {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// Key generation failed.
    #[error("cannot generate a key pair: {0}")]
    Generate(String),
}

/// The private half: signs tokens.
#[derive(Clone)]
pub struct SigningKey {
    pkcs8: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

/// The public half: verifies tokens.
#[derive(Debug, Clone)]
pub struct VerifyingKey {
    raw: [u8; 32],
}

impl SigningKey {
    /// A new random key.
    pub fn generate() -> Result<Self, KeyError> {
        let pair =
            KeyPair::generate_for(&PKCS_ED25519).map_err(|e| KeyError::Generate(e.to_string()))?;
        Ok(Self {
            pkcs8: pair.serialize_der(),
        })
    }

    /// Reads a PKCS#8 PEM file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let der = PrivatePkcs8KeyDer::from_pem_file(path).map_err(|e| KeyError::Format {
            path: path.to_owned(),
            what: "private key",
            detail: e.to_string(),
        })?;
        let key = Self {
            pkcs8: der.secret_pkcs8_der().to_vec(),
        };
        key.verifying_key_checked()
            .map_err(|detail| KeyError::Format {
                path: path.to_owned(),
                what: "private key",
                detail,
            })?;
        Ok(key)
    }

    /// The PKCS#8 DER bytes, as the JWT library takes them.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The matching public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.verifying_key_checked()
            .expect("a SigningKey always holds a valid Ed25519 key")
    }

    fn verifying_key_checked(&self) -> Result<VerifyingKey, String> {
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&self.pkcs8)
            .map_err(|e| e.to_string())?;
        let raw = ring::signature::KeyPair::public_key(&pair).as_ref();
        let raw: [u8; 32] = raw
            .try_into()
            .map_err(|_| "public key is not 32 bytes".to_owned())?;
        Ok(VerifyingKey { raw })
    }

    fn pair(&self) -> Result<KeyPair, KeyError> {
        let der = PrivatePkcs8KeyDer::from(self.pkcs8.as_slice());
        KeyPair::try_from(&der).map_err(|e| KeyError::Generate(e.to_string()))
    }

    /// Writes the public half as PEM.
    pub fn save_public(&self, path: &Path) -> Result<(), KeyError> {
        let pem = self.pair()?.public_key_pem();
        fs::write(path, pem).map_err(|source| KeyError::Io {
            path: path.to_owned(),
            source,
        })
    }

    /// Writes the key as PEM, readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        write_private(path, self.pair()?.serialize_pem().as_bytes())
    }
}

impl VerifyingKey {
    /// Reads a SubjectPublicKeyInfo PEM file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let format = |detail: String| KeyError::Format {
            path: path.to_owned(),
            what: "public key",
            detail,
        };
        let spki =
            SubjectPublicKeyInfoDer::from_pem_file(path).map_err(|e| format(e.to_string()))?;
        let der = spki.as_ref();
        if der.len() != 44 || der[..12] != ED25519_SPKI_PREFIX {
            return Err(format("the key is not Ed25519".into()));
        }
        let mut raw = [0u8; 32];
        raw.copy_from_slice(&der[12..]);
        Ok(Self { raw })
    }

    /// The raw 32-byte key, as the JWT library takes it.
    pub fn raw(&self) -> &[u8; 32] {
        &self.raw
    }
}

/// The file in the data directory that keeps the QUIC stateless-reset key.
pub fn reset_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("quic-reset-key")
}

/// The QUIC stateless-reset key kept in `path` (32 random bytes, mode 0600), made on
/// first start. The same key after a restart lets the gateway answer the packets of
/// links it lost with a reset the agents can verify, so they reconnect at once.
pub fn load_or_create_reset_key(path: &Path) -> Result<[u8; RESET_KEY_LEN], KeyError> {
    match fs::read(path) {
        Ok(bytes) => {
            let len = bytes.len();
            bytes.try_into().map_err(|_| KeyError::ResetKey {
                path: path.to_owned(),
                len,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use ring::rand::SecureRandom;
            let mut key = [0u8; RESET_KEY_LEN];
            ring::rand::SystemRandom::new()
                .fill(&mut key)
                .map_err(|_| KeyError::Generate("no system randomness".to_owned()))?;
            write_private(path, &key)?;
            Ok(key)
        }
        Err(source) => Err(KeyError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes a secret file with mode 0600 from the start, so it is never readable by others.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> Result<(), KeyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(contents).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reset_key_is_made_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("gw-reset-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = reset_key_path(&dir);
        let _ = fs::remove_file(&path);
        let made = load_or_create_reset_key(&path).unwrap();
        assert_ne!(made, [0u8; RESET_KEY_LEN]);
        assert_eq!(load_or_create_reset_key(&path).unwrap(), made);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::write(&path, b"short").unwrap();
        let e = load_or_create_reset_key(&path).unwrap_err().to_string();
        assert!(e.contains("5 bytes where a QUIC reset key has 32"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keys_survive_a_round_trip_through_pem_files() {
        let dir = std::env::temp_dir().join(format!("gw-keys-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let key = SigningKey::generate().unwrap();
        key.save(&dir.join("s.pem")).unwrap();
        key.save_public(&dir.join("v.pem")).unwrap();
        let loaded = SigningKey::load(&dir.join("s.pem")).unwrap();
        assert_eq!(loaded.verifying_key().raw(), key.verifying_key().raw());
        assert_eq!(
            VerifyingKey::load(&dir.join("v.pem")).unwrap().raw(),
            key.verifying_key().raw()
        );
        assert!(VerifyingKey::load(&dir.join("s.pem")).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
