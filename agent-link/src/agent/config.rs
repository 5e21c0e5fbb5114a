//! The agent's configuration, from the environment that space job templates pass
//! (`KNOT_*`), overridden by flags.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::proto::{Service, ServiceKind};
use crate::tls::{Trust, TrustError};

/// Command line and environment of `agent-link`.
#[derive(Debug, Clone, Parser)]
#[command(name = "agent-link", version, about = "Links a space to its gateway")]
pub struct AgentConfig {
    /// The gateway's agent endpoint, `HOST:PORT`.
    #[arg(long, env = "KNOT_AGENT_ENDPOINT")]
    pub endpoint: String,

    /// The agent token that the control plane minted for this space.
    #[arg(long, env = "KNOT_AGENT_TOKEN", hide_env_values = true)]
    pub token: String,

    /// The space's id (informational: the gateway takes identity from the token).
    #[arg(long, env = "KNOT_SPACEID")]
    pub space_id: Option<String>,

    /// The space's user: the user startup scripts run as. (The gateway takes the
    /// identity from the token.)
    #[arg(long, env = "KNOT_USER")]
    pub user: Option<String>,

    /// The SSH server's port, offered as service `ssh`.
    #[arg(long, env = "KNOT_SSH_PORT")]
    pub ssh_port: Option<u16>,

    /// HTTP ports, comma separated, each offered as an `http` service.
    #[arg(long, env = "KNOT_HTTP_PORT", value_delimiter = ',')]
    pub http_port: Vec<u16>,

    /// The web IDE's port, offered as service `code-server`.
    #[arg(long, env = "KNOT_CODE_SERVER_PORT")]
    pub code_server_port: Option<u16>,

    /// The VNC web service's port (page and websocket), offered as service `vnc`.
    #[arg(long, env = "KNOT_VNC_HTTP_PORT")]
    pub vnc_http_port: Option<u16>,

    /// Further raw TCP ports, comma separated, reachable through the TCP websocket route.
    #[arg(long, env = "KNOT_TCP_PORT", value_delimiter = ',')]
    pub tcp_port: Vec<u16>,

    /// HTTP ports (among `--http-port`) that anyone may open by URL without a token.
    #[arg(long, env = "KNOT_PUBLIC_HTTP_PORT", value_delimiter = ',')]
    pub public_http_port: Vec<u16>,

    /// PEM file of CA certificates that the gateway's certificate chains to.
    #[arg(
        long,
        env = "KNOT_AGENT_CA_FILE",
        conflicts_with = "gateway_fingerprint"
    )]
    pub ca_file: Option<PathBuf>,

    /// SHA-256 fingerprint of the gateway's certificate (development, self-signed).
    #[arg(long, env = "KNOT_AGENT_GATEWAY_FINGERPRINT")]
    pub gateway_fingerprint: Option<String>,

    /// The TLS server name to verify; defaults to the endpoint's host.
    #[arg(long, env = "KNOT_AGENT_SERVER_NAME")]
    pub server_name: Option<String>,

    /// Which transport to use: `auto` tries QUIC and falls back to TLS over TCP (and
    /// keeps probing QUIC to move back), `quic` or `tcp` use only that one.
    #[arg(long, env = "KNOT_AGENT_TRANSPORT", value_enum, default_value_t = TransportMode::Auto)]
    pub transport: TransportMode,

    /// How long a QUIC connection attempt may take before `auto` falls back to TCP.
    #[arg(long, env = "KNOT_AGENT_QUIC_TIMEOUT", value_parser = parse_secs, default_value = "3")]
    pub quic_timeout: Duration,

    /// While on TCP in `auto`, how often to try QUIC again (seconds; jittered).
    #[arg(
        long,
        env = "KNOT_AGENT_QUIC_PROBE_INTERVAL",
        value_parser = parse_secs,
        default_value = "10"
    )]
    pub quic_probe_interval: Duration,

    /// After another agent with this space's token took the space over, how long to
    /// wait before trying again (seconds; each wait is drawn from 0.5 to 1.5 times this).
    #[arg(
        long,
        env = "KNOT_AGENT_REPLACED_WAIT",
        value_parser = parse_secs,
        default_value = "120"
    )]
    pub replaced_wait: Duration,

    /// Address of the HTTPS `/ping` and `/status` listener. All interfaces by default:
    /// the scheduler's health check comes from outside the space's container.
    #[arg(long, env = "KNOT_AGENT_PING_LISTEN", default_value = "0.0.0.0:3000")]
    pub ping_listen: SocketAddr,

    /// Scripts run at start, as the agent's own user (root in a space), in name order.
    #[arg(
        long,
        env = "KNOT_SYSTEM_STARTUP_DIR",
        default_value = "/etc/knot-startup.d"
    )]
    pub system_startup_dir: PathBuf,

    /// Scripts run after the system ones, as the space's user (`--user`); a leading
    /// `~` is that user's home directory.
    #[arg(
        long,
        env = "KNOT_USER_STARTUP_DIR",
        default_value = "~/.knot-startup.d"
    )]
    pub user_startup_dir: PathBuf,
}

/// The agent's choice of transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportMode {
    /// QUIC first, TLS over TCP when QUIC does not connect, and back to QUIC when it does.
    Auto,
    /// QUIC only.
    Quic,
    /// TLS over TCP with yamux only.
    Tcp,
}

fn parse_secs(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(0.1..=3600.0).contains(&secs) {
        return Err(format!("{text} seconds is outside 0.1 to 3600"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The configuration cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Neither a CA file nor a fingerprint was given.
    #[error(
        "no way to trust the gateway: give --ca-file (KNOT_AGENT_CA_FILE) \
         or --gateway-fingerprint (KNOT_AGENT_GATEWAY_FINGERPRINT)"
    )]
    NoTrust,
    /// The trust setting is unusable.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The endpoint is not `HOST:PORT`.
    #[error("endpoint {0:?} is not HOST:PORT")]
    Endpoint(String),
    /// No service at all: the link would be useless.
    #[error(
        "no service to offer: set at least one of KNOT_SSH_PORT, KNOT_HTTP_PORT, \
         KNOT_CODE_SERVER_PORT, KNOT_VNC_HTTP_PORT, KNOT_TCP_PORT"
    )]
    NoServices,
    /// A public port that is not an HTTP port.
    #[error("public port {0} is not one of the HTTP ports (KNOT_HTTP_PORT)")]
    PublicNotHttp(u16),
    /// The token cannot be a real token.
    #[error("the agent token is {0} bytes; tokens are well under 8 KiB")]
    TokenSize(usize),
    /// The same port declared twice.
    #[error("port {0} is declared twice")]
    DuplicatePort(u16),
}

impl AgentConfig {
    /// The trust setting for the gateway's certificate.
    pub fn trust(&self) -> Result<Trust, ConfigError> {
        match (&self.ca_file, &self.gateway_fingerprint) {
            (Some(path), _) => Ok(Trust::CaFile(path.clone())),
            (None, Some(fp)) => Ok(Trust::fingerprint(fp)?),
            (None, None) => Err(ConfigError::NoTrust),
        }
    }

    /// The endpoint split into host and port.
    pub fn host_port(&self) -> Result<(String, u16), ConfigError> {
        let bad = || ConfigError::Endpoint(self.endpoint.clone());
        let text = self.endpoint.trim();
        let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = port.parse().map_err(|_| bad())?;
        if host.is_empty() {
            return Err(bad());
        }
        Ok((host.to_owned(), port))
    }

    /// The services this agent offers, exactly as configured.
    pub fn services(&self) -> Result<Vec<Service>, ConfigError> {
        let mut out: Vec<Service> = Vec::new();
        let mut add = |name: &str, port: u16, kind: ServiceKind, public: bool| {
            out.push(Service {
                name: name.to_owned(),
                port,
                kind,
                public,
            })
        };
        if let Some(port) = self.ssh_port {
            add("ssh", port, ServiceKind::Tcp, false);
        }
        for &port in &self.http_port {
            add(
                "http",
                port,
                ServiceKind::Http,
                self.public_http_port.contains(&port),
            );
        }
        if let Some(port) = self.code_server_port {
            add("code-server", port, ServiceKind::Http, false);
        }
        if let Some(port) = self.vnc_http_port {
            add("vnc", port, ServiceKind::Vnc, false);
        }
        for &port in &self.tcp_port {
            add("tcp", port, ServiceKind::Tcp, false);
        }
        validate(&out, &self.public_http_port, &self.http_port)?;
        // The Hello must fit in one 64 KiB frame with up to 256 services.
        if self.token.is_empty() || self.token.len() > 8192 {
            return Err(ConfigError::TokenSize(self.token.len()));
        }
        Ok(out)
    }
}

fn validate(services: &[Service], public: &[u16], http: &[u16]) -> Result<(), ConfigError> {
    if services.is_empty() {
        return Err(ConfigError::NoServices);
    }
    if let Some(&port) = public.iter().find(|p| !http.contains(p)) {
        return Err(ConfigError::PublicNotHttp(port));
    }
    let mut seen = HashMap::new();
    for s in services {
        if seen.insert(s.port, s.kind).is_some() {
            return Err(ConfigError::DuplicatePort(s.port));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> AgentConfig {
        let base = [
            "agent-link",
            "--endpoint",
            "gw.example:7443",
            "--token",
            "t",
        ];
        AgentConfig::try_parse_from(base.iter().chain(args)).unwrap()
    }

    #[test]
    fn offers_exactly_the_ports_given() {
        let c = parse(&[
            "--ssh-port",
            "22",
            "--http-port",
            "8080,3000",
            "--vnc-http-port",
            "6080",
        ]);
        let ports: Vec<_> = c
            .services()
            .unwrap()
            .iter()
            .map(|s| (s.name.clone(), s.port))
            .collect();
        assert_eq!(
            ports,
            [
                ("ssh".into(), 22),
                ("http".into(), 8080),
                ("http".into(), 3000),
                ("vnc".into(), 6080)
            ]
        );
    }

    #[test]
    fn a_port_declared_twice_is_an_error() {
        let c = parse(&["--ssh-port", "22", "--tcp-port", "22"]);
        assert!(matches!(c.services(), Err(ConfigError::DuplicatePort(22))));
    }

    #[test]
    fn endpoint_forms() {
        assert_eq!(parse(&[]).host_port().unwrap(), ("gw.example".into(), 7443));
        let mut c = parse(&[]);
        c.endpoint = "[::1]:7443".into();
        assert_eq!(c.host_port().unwrap(), ("::1".into(), 7443));
        c.endpoint = "nohost".into();
        assert!(c.host_port().is_err());
    }

    #[test]
    fn trust_is_required() {
        assert!(matches!(parse(&[]).trust(), Err(ConfigError::NoTrust)));
    }
}
