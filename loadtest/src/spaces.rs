//! Simulated spaces: each has its own in-process sources, and, per transport, an
//! in-process agent (the `agent-link` library) that links it to the gateway.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use serde::Serialize;

use crate::clock::Deadline;
use crate::gateway::Target;
use crate::sources;

/// The user every simulated space belongs to.
pub const USER: &str = "lt";

/// The link transport of an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Quic,
    Tcp,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::Tcp => "tcp",
        }
    }
}

/// One space's services, reachable on loopback.
#[derive(Debug, Clone)]
pub struct Sources {
    pub desktop: SocketAddr,
    pub echo: SocketAddr,
    pub http: SocketAddr,
}

/// Where sources listen when agents and users share this process's network.
pub const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

impl Sources {
    /// Starts a space's sources on `ip` (loopback, or every address in the lossy mode's
    /// namespace, where users reach them from outside).
    pub async fn start(ip: IpAddr, body_size: u64) -> anyhow::Result<Self> {
        Ok(Self {
            desktop: sources::desktop(ip).await?,
            echo: sources::echo(ip).await?,
            http: sources::http(ip, body_size).await?,
        })
    }
}

/// What an agent needs of the gateway.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct LinkTarget {
    pub agent: SocketAddr,
    pub fingerprint: String,
}

impl LinkTarget {
    pub fn of(target: &Target) -> Self {
        Self {
            agent: target.agent,
            fingerprint: target.fingerprint.clone(),
        }
    }
}

/// A space as users name it, with its sources.
#[derive(Debug, Clone)]
pub struct Space {
    pub name: String,
    pub sources: Sources,
}

/// In-process agents on a runtime of their own, so that dropping this ends every task
/// they spawned (their sessions too) and so drops their links.
#[derive(Debug)]
pub struct Agents {
    runtime: Option<tokio::runtime::Runtime>,
    failed: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Agents {
    /// Agents that stopped for good (the gateway rejected them).
    pub fn failed(&self) -> u64 {
        self.failed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The agent's settings for one space, as the `agent-link` binary would parse them.
fn agent_config(
    target: &LinkTarget,
    transport: Transport,
    token: &str,
    sources: &Sources,
) -> anyhow::Result<agent_link::agent::AgentConfig> {
    let args = [
        "agent-link".to_owned(),
        format!("--endpoint={}", target.agent),
        format!("--token={token}"),
        format!("--gateway-fingerprint={}", target.fingerprint),
        format!("--transport={}", transport.name()),
        format!("--ssh-port={}", sources.echo.port()),
        format!("--http-port={}", sources.http.port()),
        format!("--vnc-http-port={}", sources.desktop.port()),
        "--ping-listen=127.0.0.1:0".to_owned(),
        "--system-startup-dir=/nonexistent/loadtest".to_owned(),
        "--user-startup-dir=/nonexistent/loadtest".to_owned(),
    ];
    agent_link::agent::AgentConfig::try_parse_from(args).context("agent configuration")
}

/// Starts one agent per space; `tokens[i]` is space `i`'s agent token.
pub fn start_agents(
    target: &LinkTarget,
    transport: Transport,
    spaces: &[Space],
    tokens: &[String],
) -> anyhow::Result<Agents> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("agents")
        .enable_all()
        .build()?;
    let failed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    for (space, token) in spaces.iter().zip(tokens) {
        let config = agent_config(target, transport, token, &space.sources)?;
        let failed = failed.clone();
        runtime.spawn(async move {
            // The agent returns only on a permanent error (a rejected token).
            if agent_link::agent::run_link_only(config).await.is_err() {
                failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
    Ok(Agents {
        runtime: Some(runtime),
        failed,
    })
}

/// Successful registrations so far, or 0 without an admin listener.
pub async fn registrations(target: &Target) -> u64 {
    match target.admin {
        Some(admin) => crate::procstat::registrations(admin).await.unwrap_or(0),
        None => 0,
    }
}

/// Waits until the gateway has registered `want` more links than `base`, polling its
/// admin listener; without one, waits a fixed 3 s. Returns the seconds it took.
pub async fn wait_registered(
    target: &Target,
    base: u64,
    want: u64,
    limit: Duration,
) -> anyhow::Result<f64> {
    let start = crate::clock::now_ns();
    let Some(admin) = target.admin else {
        tokio::time::sleep(Duration::from_secs(3)).await;
        return Ok(crate::clock::secs_since(start));
    };
    let deadline = Deadline::after(limit);
    loop {
        let done = crate::procstat::registrations(admin).await.unwrap_or(0);
        if done >= base + want {
            return Ok(crate::clock::secs_since(start));
        }
        if deadline.passed() {
            let got = done.saturating_sub(base);
            anyhow::bail!("only {got} of {want} agents registered within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
