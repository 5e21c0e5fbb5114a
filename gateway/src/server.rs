//! Starting a gateway: keys, certificates, listeners, and the banner that tells a new
//! user what to do next.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use agent_link::transport::quic::{server_endpoint, LinkTuning};
use anyhow::Context;
use tokio::net::TcpListener;
use tracing::info;

use crate::agents::AgentListener;
use crate::auth::Verifier;
use crate::certs::{ensure_dev_cert, Identity};
use crate::config::Config;
use crate::front::{self, Front};
use crate::keys::{SigningKey, VerifyingKey};
use crate::registry::Registry;

/// The private key file in a data directory.
pub fn signing_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("signing-key.pem")
}

/// The public key file in a data directory.
pub fn verifying_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("verify-key.pem")
}

/// Runs a gateway until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;

    // 1. Keys and certificates: configured, or generated once in the data directory.
    let verifying = verifying_key(&config)?;
    let (cert, key) = match (&config.public.cert, &config.public.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => ensure_dev_cert(&config.data_dir, &config.public.domain)?,
    };
    let identity = Identity::load(&cert, &key)?;
    let registry = Arc::new(Registry::new());
    let verifier = Verifier::new(&verifying);

    // 2. Listeners, bound before anything is announced so that a port in use fails
    //    the start instead of a later connection.
    let endpoint = server_endpoint(
        config.agents.listen,
        identity.agent_listener()?,
        &LinkTuning::gateway(),
    )
    .with_context(|| format!("cannot listen for agents on udp/{}", config.agents.listen))?;
    let agents_tcp = TcpListener::bind(config.agents.listen)
        .await
        .with_context(|| format!("cannot listen for agents on tcp/{}", config.agents.listen))?;
    let public = TcpListener::bind(config.public.listen)
        .await
        .with_context(|| format!("cannot listen on tcp/{}", config.public.listen))?;
    let plain = match config.public.plain_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on tcp/{addr}"))?,
        ),
        None => None,
    };

    // 3. Serve.
    let agents = Arc::new(AgentListener {
        registry: registry.clone(),
        verifier: verifier.clone(),
        ping_interval: config.agents.ping_interval(),
        hello_timeout: config.agents.hello_timeout(),
    });
    let front = Arc::new(Front {
        registry: registry.clone(),
        verifier,
        domain: config.public.domain.to_ascii_lowercase(),
        allow_public_ports: config.auth.allow_public_ports,
        max_head_bytes: config.public.max_head_bytes,
        head_timeout: std::time::Duration::from_secs(config.public.head_timeout_secs.max(1)),
    });
    tokio::spawn(agents.clone().serve_quic(endpoint.clone()));
    tokio::spawn(agents.serve_tcp(agents_tcp, identity.agent_listener_tcp()?));
    tokio::spawn(front::serve_tls(
        public,
        identity.front_door()?,
        front.clone(),
    ));
    if let Some(plain) = plain {
        tokio::spawn(front::serve_plain(plain, front));
    }
    info!(agents = %config.agents.listen, public = %config.public.listen, "gateway listening");
    print_banner(&config, &identity, &cert);

    shutdown_signal().await;
    info!(spaces = registry.len(), "shutting down");
    for (_, entry) in registry.snapshot() {
        let _ = entry
            .control
            .try_send(agent_link::proto::ControlMessage::GoAway {
                reason: "gateway shutting down".into(),
            });
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    endpoint.close(0u32.into(), b"gateway shutting down");
    Ok(())
}

fn verifying_key(config: &Config) -> anyhow::Result<VerifyingKey> {
    if let Some(path) = &config.auth.public_key {
        return Ok(VerifyingKey::load(path)?);
    }
    // Development: the key pair in the data directory, made on first start. A data
    // directory that holds only the public key (as production gateways should) is
    // used as it is, never overwritten.
    let (private, public) = (
        signing_key_path(&config.data_dir),
        verifying_key_path(&config.data_dir),
    );
    if private.exists() {
        return Ok(SigningKey::load(&private)?.verifying_key());
    }
    if public.exists() {
        return Ok(VerifyingKey::load(&public)?);
    }
    let key = SigningKey::generate()?;
    key.save(&private)?;
    key.save_public(&public)?;
    info!(path = %private.display(), "generated a development key pair");
    Ok(key.verifying_key())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler cannot fail in a running process");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[allow(clippy::print_stdout)]
fn print_banner(config: &Config, identity: &Identity, cert: &Path) {
    let domain = &config.public.domain;
    let url = format!("https://{domain}:{}", config.public.listen.port());
    let gw = format!("gateway --data-dir {}", config.data_dir.display());
    let fp = identity.fingerprint();
    // A wildcard listen address is not somewhere to dial: show a placeholder host.
    let endpoint = match config.agents.listen.ip().is_unspecified() {
        true => format!("GATEWAY_HOST:{}", config.agents.listen.port()),
        false => config.agents.listen.to_string(),
    };
    let lines = [
        format!("space gateway {} is running", env!("CARGO_PKG_VERSION")),
        String::new(),
        format!(
            "  agents link to    {} (QUIC on UDP, TLS on TCP)",
            config.agents.listen
        ),
        format!("  users connect to  {url}"),
        format!(
            "  spaces are at     https://USER--SPACE--PORT.{domain}:{}",
            config.public.listen.port()
        ),
        format!("  certificate       {}", cert.display()),
        format!("  fingerprint       {fp}"),
        format!("  data directory    {}", config.data_dir.display()),
        String::new(),
        "Start an agent for user alice, space demo, offering SSH on 22 and HTTP on 8080:".into(),
        String::new(),
        format!("  KNOT_AGENT_ENDPOINT={endpoint} \\"),
        format!("  KNOT_AGENT_GATEWAY_FINGERPRINT={fp} \\"),
        format!("  KNOT_AGENT_TOKEN=$({gw} token agent --user alice --space demo) \\"),
        "  KNOT_SSH_PORT=22 KNOT_HTTP_PORT=8080 agent-link".into(),
        String::new(),
        "Then reach it:".into(),
        String::new(),
        format!("  export GATEWAY_TOKEN=$({gw} token user --user alice --space 'alice--*')"),
        format!("  curl --cacert {} \\", cert.display()),
        "    -H \"Authorization: Bearer $GATEWAY_TOKEN\" \\".into(),
        format!(
            "    https://alice--demo--8080.{domain}:{}/",
            config.public.listen.port()
        ),
        format!("  ssh -o ProxyCommand='{gw} connect --server {url} alice/demo' \\"),
        "    $(id -un)@demo".into(),
    ];
    println!("{}", lines.join("\n"));
}
