//! The gateway and the agents, in this process, on loopback ports.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::Path;

use agent_link::agent::AgentConfig;
use clap::Parser;
use gateway::auth::Minter;
use gateway::certs::{ensure_dev_cert, Identity};
use gateway::config::Config;
use gateway::keys::SigningKey;
use gateway::server::{self, signing_key_path, verifying_key_path};

use crate::{DOMAIN, USER};

/// What the bench needs of the running gateway.
pub struct Gateway {
    agents: SocketAddr,
    /// The front door's plain-HTTP port (the relay bench's way in).
    #[allow(dead_code)] // the idle bench, which shares this file, has no users
    pub plain: u16,
    /// The admin listener (`/metrics`).
    #[allow(dead_code)] // read by the idle bench, which shares this file
    pub admin: SocketAddr,
    fingerprint: String,
    pub minter: Minter,
}

/// Makes the key pair and certificate in `data` (so that tokens can be minted and the
/// certificate pinned), then runs the gateway on loopback ports.
pub async fn start_gateway(data: &Path) -> Gateway {
    std::fs::create_dir_all(data).unwrap();
    let key = SigningKey::generate().unwrap();
    key.save(&signing_key_path(data)).unwrap();
    key.save_public(&verifying_key_path(data)).unwrap();
    let (cert, cert_key) = ensure_dev_cert(data, DOMAIN).unwrap();
    let fingerprint = Identity::load(&cert, &cert_key).unwrap().fingerprint();

    let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let mut config = Config {
        data_dir: data.to_owned(),
        ..Config::default()
    };
    config.agents.listen = loopback(free_port());
    config.public.listen = loopback(0);
    let plain = free_port();
    config.public.plain_listen = Some(loopback(plain));
    let admin = loopback(free_port());
    config.admin.listen = admin;
    let agents = config.agents.listen;
    let reload_config = config.clone();
    let reload: server::Reload = Box::new(move || Ok(reload_config.clone()));
    tokio::spawn(async move {
        if let Err(e) = server::run(config, reload).await {
            panic!("the gateway stopped: {e:#}");
        }
    });
    Gateway {
        agents,
        plain,
        admin,
        fingerprint,
        minter: Minter::new(key),
    }
}

impl Gateway {
    /// An agent for space `bench--TRANSPORT` (`quic` or `tcp`) that offers `source` as
    /// an HTTP port. The agent's own flags make its configuration, so that settings
    /// added later keep their defaults; `KNOT_*` variables set around the bench apply.
    pub fn agent_config(&self, transport: &str, source: u16, data: &Path) -> AgentConfig {
        let token = self
            .minter
            .agent(&format!("{USER}--{transport}"), USER, transport, None);
        let no_scripts = data.join("no-startup-scripts");
        let no_scripts = no_scripts.to_str().unwrap();
        let (endpoint, source) = (self.agents.to_string(), source.to_string());
        AgentConfig::try_parse_from([
            "agent-link",
            "--endpoint",
            &endpoint,
            "--token",
            &token,
            "--gateway-fingerprint",
            &self.fingerprint,
            "--transport",
            transport,
            "--http-port",
            &source,
            "--ping-listen",
            "127.0.0.1:0",
            "--system-startup-dir",
            no_scripts,
            "--user-startup-dir",
            no_scripts,
        ])
        .unwrap()
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
