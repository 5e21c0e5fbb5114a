//! The gateway's settings. Precedence, lowest first: the defaults written here, the
//! TOML file given with `--config`, environment variables, flags. With nothing given
//! at all the gateway runs a local development setup on 127.0.0.1.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Every setting. Field docs state the default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where generated keys and certificates are kept. Default: `$XDG_DATA_HOME/space-gateway`,
    /// else `~/.local/share/space-gateway`.
    pub data_dir: PathBuf,
    /// The agent listener.
    pub agents: AgentsConfig,
    /// The public front door.
    pub public: PublicConfig,
    /// Token verification.
    pub auth: AuthConfig,
    /// The admin listener.
    pub admin: AdminConfig,
    /// Logging.
    pub log: LogConfig,
}

/// `[admin]`: metrics, health and the admin API, for operators.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Plain-HTTP address of `/metrics`, `/healthz`, `/readyz` and `/api/`. Default
    /// `127.0.0.1:9090`; keep it off the public network.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 9090).into(),
        }
    }
}

/// `[log]`: how log lines are written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`. Default `text`.
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[agents]`: where agents link.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentsConfig {
    /// Address for agent links: QUIC on UDP and TLS/TCP (yamux) on TCP, same port.
    /// Default `127.0.0.1:7443`.
    pub listen: SocketAddr,
    /// Interval at which the gateway pings each agent, in seconds. Default 5.
    pub ping_interval_secs: u64,
    /// Time an agent has to send `Hello` after connecting, in seconds. Default 10.
    pub hello_timeout_secs: u64,
    /// Agent links served at once, counting links still in their handshake; past it a
    /// new link is rejected as unavailable and its agent retries later. Default 10000.
    pub max_links: usize,
    /// Streams open at once on one link (user connections into one space); past it a
    /// user gets 503. Default 1024.
    pub max_streams_per_link: usize,
    /// Bytes from one space that its users have not read yet which the gateway holds
    /// for a QUIC link, in MiB: the link's flow-control window. When users stall
    /// downloads worth this much, the space's other streams wait with them until the
    /// link is given up and made again. Default 64 (32 streams' windows).
    pub max_unread_mib_per_link: u64,
}

/// `[public]`: where users connect.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublicConfig {
    /// TLS address. Default `127.0.0.1:8443`.
    pub listen: SocketAddr,
    /// Optional plain-HTTP address, for a load balancer that terminates TLS. Default: none.
    pub plain_listen: Option<SocketAddr>,
    /// The domain: spaces are `USER--SPACE--PORT.DOMAIN`. Default `gateway.localhost`
    /// (every name under `.localhost` resolves to loopback, and TLS clients refuse a
    /// wildcard directly under a top-level name).
    pub domain: String,
    /// Certificate chain (PEM) for `DOMAIN` and `*.DOMAIN`. Default: a self-signed
    /// certificate generated in the data directory.
    pub cert: Option<PathBuf>,
    /// The certificate's private key (PEM). Default: generated with the certificate.
    pub key: Option<PathBuf>,
    /// Size of the buffer a request head must fit in, in bytes; a head that overflows
    /// it gets 431. Default 65536.
    pub max_head_bytes: usize,
    /// On SIGTERM, how long open streams may go on before the gateway exits anyway,
    /// in seconds. Default 30.
    pub drain_timeout_secs: u64,
    /// Time a client has to send a whole request head, in seconds; a client that is
    /// slower gets 408 and is disconnected. Default 30.
    pub head_timeout_secs: u64,
    /// Front-door connections served at once (both listeners), counting those still in
    /// their TLS handshake; past it a new connection is answered 503 and closed.
    /// Default 16384.
    pub max_connections: usize,
    /// A relayed connection (websocket, upgraded, or a proxied HTTP request waiting for
    /// its answer) that moves no byte either way for this long is closed, in seconds; 0
    /// never closes one. Default 3600.
    pub stream_idle_timeout_secs: u64,
    /// Largest websocket message a client may send on the SSH and TCP routes, in bytes;
    /// a larger one closes the websocket with code 1009. Default 1048576.
    pub max_message_bytes: usize,
}

/// `[auth]`: token verification.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The deployment's Ed25519 public key (PEM). Default: generated with its private
    /// key in the data directory (development only: production gateways get only the
    /// public key).
    pub public_key: Option<PathBuf>,
    /// Whether HTTP ports that an agent declares public may be reached without a token.
    /// Default true.
    pub allow_public_ports: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            agents: AgentsConfig::default(),
            public: PublicConfig::default(),
            auth: AuthConfig::default(),
            admin: AdminConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 7443).into(),
            ping_interval_secs: 5,
            hello_timeout_secs: 10,
            max_links: 10_000,
            max_streams_per_link: 1024,
            max_unread_mib_per_link: 64,
        }
    }
}

impl Default for PublicConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 8443).into(),
            plain_listen: None,
            domain: "gateway.localhost".into(),
            cert: None,
            key: None,
            max_head_bytes: 64 * 1024,
            head_timeout_secs: 30,
            drain_timeout_secs: 30,
            max_connections: 16_384,
            stream_idle_timeout_secs: 3600,
            max_message_bytes: 1 << 20,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            public_key: None,
            allow_public_ports: true,
        }
    }
}

impl PublicConfig {
    /// The relay idle limit, if any.
    pub fn stream_idle_timeout(&self) -> Option<Duration> {
        (self.stream_idle_timeout_secs > 0)
            .then(|| Duration::from_secs(self.stream_idle_timeout_secs))
    }
}

impl AgentsConfig {
    /// The ping interval as a duration.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_secs.max(1))
    }

    /// The `Hello` deadline as a duration.
    pub fn hello_timeout(&self) -> Duration {
        Duration::from_secs(self.hello_timeout_secs.max(1))
    }
}

/// The configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for these settings.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file; settings it does not name keep their defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.into(),
            message,
        })
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let domain = &self.public.domain;
        if domain.is_empty()
            || domain.starts_with('.')
            || domain.contains("--")
            || domain.contains('/')
        {
            return Err(ConfigError::Invalid(format!(
                "public.domain {domain:?} is not a domain name"
            )));
        }
        if self.public.cert.is_some() != self.public.key.is_some() {
            return Err(ConfigError::Invalid(
                "public.cert and public.key go together".into(),
            ));
        }
        if self.public.max_head_bytes < 8192 {
            return Err(ConfigError::Invalid(
                "public.max_head_bytes must be at least 8192".into(),
            ));
        }
        let at_least_one = [
            ("agents.max_links", self.agents.max_links),
            (
                "agents.max_streams_per_link",
                self.agents.max_streams_per_link,
            ),
            ("public.max_connections", self.public.max_connections),
        ];
        if let Some((name, _)) = at_least_one.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
        }
        if self.public.max_message_bytes < MIN_MESSAGE_BYTES {
            return Err(ConfigError::Invalid(format!(
                "public.max_message_bytes must be at least {MIN_MESSAGE_BYTES}: \
                 `gateway connect` sends messages of up to 32 KiB"
            )));
        }
        if !(MIN_UNREAD_MIB..=MAX_UNREAD_MIB).contains(&self.agents.max_unread_mib_per_link) {
            return Err(ConfigError::Invalid(format!(
                "agents.max_unread_mib_per_link must be {MIN_UNREAD_MIB} to {MAX_UNREAD_MIB}: \
                 at least two streams' windows, so that one stalled download cannot stop \
                 a space"
            )));
        }
        if self.agents.ping_interval_secs == 0 {
            return Err(ConfigError::Invalid(
                "agents.ping_interval_secs must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// The bounds of `agents.max_unread_mib_per_link`: two streams' windows (2 MiB each),
/// and 1 TiB.
const MIN_UNREAD_MIB: u64 = 4;
const MAX_UNREAD_MIB: u64 = 1 << 20;

/// The smallest `public.max_message_bytes`: twice the largest message `gateway connect`
/// sends, so that the project's own client always fits.
pub const MIN_MESSAGE_BYTES: usize = 64 * 1024;

fn default_data_dir() -> PathBuf {
    // An empty or relative XDG_DATA_HOME is to be ignored (XDG Base Directory spec).
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("space-gateway")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_means_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.public.listen, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(c.agents.listen, "127.0.0.1:7443".parse().unwrap());
        assert_eq!(c.public.domain, "gateway.localhost");
        assert!(c.auth.allow_public_ports);
    }

    #[test]
    fn unknown_settings_are_errors_not_ignored() {
        let err = Config::parse("[public]\nlisten_addr = \"0.0.0.0:1\"\n").unwrap_err();
        assert!(err.contains("listen_addr"), "{err}");
    }

    /// Guards against a setting that the code has and the configuration reference
    /// lacks, or documents with a default the code does not use.
    #[test]
    fn every_setting_is_in_the_reference_with_its_default() {
        let doc = include_str!("../../docs/configuration.md");
        // The data directory's default depends on the environment; the reference
        // describes it in words.
        let config = Config {
            data_dir: PathBuf::from("(see the reference)"),
            ..Config::default()
        };
        let value = toml::Value::try_from(&config).unwrap();
        let mut missing = Vec::new();
        for (key, default) in leaves(&value, "") {
            if key == "data_dir" {
                continue;
            }
            let row = doc.lines().find(|l| l.starts_with(&format!("| `{key}` |")));
            match row {
                Some(row) if row.contains(&format!("`{default}`")) => {}
                Some(row) => missing.push(format!("{key}: default {default} not in {row:?}")),
                None => missing.push(format!("{key}: no row")),
            }
        }
        assert!(
            missing.is_empty(),
            "docs/configuration.md is out of date:\n{}",
            missing.join("\n")
        );
    }

    /// Every leaf setting as (`section.key`, default as written in TOML, unquoted).
    fn leaves(value: &toml::Value, prefix: &str) -> Vec<(String, String)> {
        match value {
            toml::Value::Table(t) => t
                .iter()
                .flat_map(|(k, v)| {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(v, &key)
                })
                .collect(),
            toml::Value::String(s) => vec![(prefix.to_owned(), s.clone())],
            other => vec![(prefix.to_owned(), other.to_string())],
        }
    }

    #[test]
    fn a_message_limit_below_what_connect_sends_and_a_zero_ping_interval_are_refused() {
        let small = Config::parse("[public]\nmax_message_bytes = 1024\n").unwrap();
        let e = small.validate().unwrap_err().to_string();
        assert!(e.contains("at least 65536"), "{e}");
        let zero = Config::parse("[agents]\nping_interval_secs = 0\n").unwrap();
        let e = zero.validate().unwrap_err().to_string();
        assert!(
            e.contains("agents.ping_interval_secs must be at least 1"),
            "{e}"
        );
    }

    #[test]
    fn an_unread_budget_below_two_streams_windows_is_refused() {
        for bad in ["0", "3", "1048577"] {
            let c = Config::parse(&format!("[agents]\nmax_unread_mib_per_link = {bad}\n"));
            let e = c.unwrap().validate().unwrap_err().to_string();
            assert!(
                e.contains("agents.max_unread_mib_per_link must be 4 to"),
                "{e}"
            );
        }
        let c = Config::parse("[agents]\nmax_unread_mib_per_link = 4\n").unwrap();
        assert!(c.validate().is_ok());
    }

    #[test]
    fn a_cert_without_a_key_is_invalid() {
        let c = Config::parse("[public]\ncert = \"/x.pem\"\n").unwrap();
        assert!(c.validate().is_err());
    }
}
