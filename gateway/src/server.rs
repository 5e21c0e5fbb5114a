//! Starting a gateway: keys, certificates, listeners, and the banner that tells a new
//! user what to do next.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent_link::transport::quic::{server_endpoint, LinkTuning};
use anyhow::Context;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::admin::{self, Admin};
use crate::agents::AgentListener;
use crate::auth::Verifier;
use crate::certs::{self, ensure_dev_cert, CertStore, Identity};
use crate::config::Config;
use crate::front::{self, Front};
use crate::keys::{SigningKey, VerifyingKey};
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::registry::Registry;

/// The private key file in a data directory.
pub fn signing_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("signing-key.pem")
}

/// The public key file in a data directory.
pub fn verifying_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("verify-key.pem")
}

/// Re-reads the configuration (file, environment and flags) on SIGHUP.
pub type Reload = Box<dyn Fn() -> anyhow::Result<Config> + Send + Sync>;

/// Raises the soft limit on open files to the hard one, as a server that holds a
/// socket per user connection needs (the soft limit is often 1024), and warns when even
/// the hard limit is below what the connection and link limits allow.
fn raise_open_file_limit(config: &Config) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            warn!(error = %e, "cannot raise the open-file limit");
        }
    }
    let have = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    // A user connection is one descriptor; a TCP agent link one more; then a margin
    // for listeners, logs and certificates.
    let want = (config.public.max_connections + config.agents.max_links + 256) as u64;
    if have < want {
        warn!(
            open_files = have,
            needed = want,
            "the open-file limit is below public.max_connections + agents.max_links; \
             raise it (LimitNOFILE=) or lower those"
        );
    }
}

/// Runs a gateway until SIGINT or SIGTERM.
pub async fn run(config: Config, reload: Reload) -> anyhow::Result<()> {
    config.validate()?;
    raise_open_file_limit(&config);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;

    // 1. Keys and certificates: configured, or generated once in the data directory.
    let verifying = verifying_key(&config)?;
    let (cert, identity) = load_identity(&config)?;
    let certs = CertStore::new(&identity)?;
    let registry = Arc::new(Registry::new());
    let verifier = Verifier::new(&verifying);
    let metrics = Arc::new(Metrics::new());

    // 2. Listeners, bound before anything is announced so that a port in use fails
    //    the start instead of a later connection.
    let reset_key =
        crate::keys::load_or_create_reset_key(&crate::keys::reset_key_path(&config.data_dir))?;
    let endpoint = server_endpoint(
        config.agents.listen,
        certs::agent_listener(&certs)?,
        &LinkTuning {
            receive_window: Some(config.agents.max_unread_mib_per_link << 20),
            ..LinkTuning::gateway()
        },
        &reset_key,
    )
    .with_context(|| format!("cannot listen for agents on udp/{}", config.agents.listen))?;
    let agents_tcp = bind(config.agents.listen, "agents").await?;
    let public = bind(config.public.listen, "users").await?;
    let plain = match config.public.plain_listen {
        Some(addr) => Some(bind(addr, "users (plain HTTP)").await?),
        None => None,
    };
    let admin_listener = bind(config.admin.listen, "admin").await?;

    // 3. Serve.
    let agents = Arc::new(AgentListener {
        registry: registry.clone(),
        verifier: verifier.clone(),
        ping_interval: config.agents.ping_interval(),
        hello_timeout: config.agents.hello_timeout(),
        metrics: metrics.clone(),
        limiter: RateLimiter::new(),
        max_links: config.agents.max_links,
        links: std::sync::atomic::AtomicUsize::new(0),
        unread_budget: config.agents.max_unread_mib_per_link << 20,
    });
    let front = Arc::new(Front {
        registry: registry.clone(),
        verifier: verifier.clone(),
        domain: config.public.domain.to_ascii_lowercase(),
        allow_public_ports: AtomicBool::new(config.auth.allow_public_ports),
        max_head_bytes: config.public.max_head_bytes,
        head_timeout: Duration::from_secs(config.public.head_timeout_secs.max(1)),
        metrics: metrics.clone(),
        draining: AtomicBool::new(false),
        drain: tokio::sync::watch::Sender::new(false),
        stop: tokio::sync::watch::Sender::new(false),
        connections: std::sync::atomic::AtomicUsize::new(0),
        limits: front::Limits::from_config(&config),
    });
    let admin = Arc::new(Admin {
        registry: registry.clone(),
        verifier,
        metrics: metrics.clone(),
        draining: AtomicBool::new(false),
    });
    let mut listeners = vec![
        tokio::spawn(agents.clone().serve_quic(endpoint.clone())),
        tokio::spawn(agents.serve_tcp(agents_tcp, certs::agent_listener_tcp(&certs)?)),
        tokio::spawn(front::serve_tls(
            public,
            certs::front_door(&certs)?,
            front.clone(),
        )),
    ];
    if let Some(plain) = plain {
        listeners.push(tokio::spawn(front::serve_plain(plain, front.clone())));
    }
    tokio::spawn(admin::serve(admin_listener, admin.clone()));
    info!(
        agents = %config.agents.listen, public = %config.public.listen,
        admin = %config.admin.listen,
        "gateway listening"
    );
    print_banner(&config, &identity, &cert);

    // 4. Until told to stop: SIGHUP reloads, SIGINT or SIGTERM ends.
    let drain_timeout = Duration::from_secs(config.public.drain_timeout_secs);
    let live = Live {
        config,
        certs,
        front: front.clone(),
    };
    signals(live, &reload).await;

    // 5. Drain: fail readiness, stop accepting, tell agents to go elsewhere, let open
    //    streams finish up to the deadline, then close every link.
    admin.draining.store(true, Ordering::Relaxed);
    front.draining.store(true, Ordering::Relaxed);
    front.drain.send_replace(true);
    endpoint.set_server_config(None);
    for listener in &listeners {
        listener.abort();
    }
    info!(spaces = registry.len(), "draining");
    for (_, entry) in registry.snapshot() {
        let reason = "draining: the gateway is shutting down".to_owned();
        let goaway = agent_link::proto::ControlMessage::GoAway { reason };
        if entry.control.try_send(Box::new(goaway)).is_ok() {
            metrics.links_drained.inc();
        }
    }
    let deadline = Instant::now() + drain_timeout;
    let streams = || {
        registry
            .snapshot()
            .iter()
            .map(|(_, e)| e.open_streams.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let connections = || front.connections.load(Ordering::Relaxed);
    while (streams() > 0 || connections() > 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    info!(
        open_streams = streams(),
        connections = connections(),
        "drained; closing links"
    );
    // Websockets still open past the deadline are told why they end.
    front.stop.send_replace(true);
    if streams() > 0 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    endpoint.close(0u32.into(), b"gateway shutting down");
    for (_, entry) in registry.snapshot() {
        entry.link.close("gateway shutting down");
    }
    // Let the close frames leave before the process does.
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

/// A TCP listener with a backlog of [`LISTEN_BACKLOG`] (the kernel caps it at
/// `net.core.somaxconn`).
async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    let listen = || {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().with_context(|| format!("cannot listen for {what} on tcp/{addr}"))
}

/// Connections the kernel may queue before the accept loop takes them. A burst of
/// users (or of agents after a restart) beyond the default 1024 would otherwise see
/// their SYNs dropped and retried a second or more later.
const LISTEN_BACKLOG: u32 = 4096;

/// The configured certificate, or the development one in the data directory.
fn load_identity(config: &Config) -> anyhow::Result<(PathBuf, Identity)> {
    let (cert, key) = match (&config.public.cert, &config.public.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => ensure_dev_cert(&config.data_dir, &config.public.domain)?,
    };
    let identity = Identity::load(&cert, &key)?;
    Ok((cert, identity))
}

/// What a reload may change while the gateway runs.
struct Live {
    config: Config,
    certs: Arc<CertStore>,
    front: Arc<Front>,
}

async fn signals(mut live: Live, reload: &Reload) {
    let mut term =
        signal(SignalKind::terminate()).expect("installing a signal handler cannot fail");
    let mut hup = signal(SignalKind::hangup()).expect("installing a signal handler cannot fail");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            _ = hup.recv() => match apply_reload(&mut live, reload) {
                Ok(()) => info!("configuration and certificates reloaded"),
                Err(e) => {
                    let error = format!("{e:#}");
                    warn!(%error, "reload rejected; the running configuration is kept");
                }
            },
        }
    }
}

/// Applies a new configuration if it is valid and changes only what can change while
/// running: certificates and the public-ports policy. Listen addresses, keys and the
/// domain need a restart, and a change to them rejects the whole reload.
fn apply_reload(live: &mut Live, reload: &Reload) -> anyhow::Result<()> {
    let new = reload()?;
    new.validate()?;
    let old = &live.config;
    let fixed = [
        ("agents.listen", old.agents.listen != new.agents.listen),
        ("public.listen", old.public.listen != new.public.listen),
        (
            "public.plain_listen",
            old.public.plain_listen != new.public.plain_listen,
        ),
        ("public.domain", old.public.domain != new.public.domain),
        ("admin.listen", old.admin.listen != new.admin.listen),
        (
            "auth.public_key",
            old.auth.public_key != new.auth.public_key,
        ),
        ("data_dir", old.data_dir != new.data_dir),
    ];
    if let Some((name, _)) = fixed.iter().find(|(_, changed)| *changed) {
        anyhow::bail!("{name} changed; that takes a restart");
    }
    let (_, identity) = load_identity(&new)?;
    live.certs.replace(&identity)?;
    live.front
        .allow_public_ports
        .store(new.auth.allow_public_ports, Ordering::Relaxed);
    info!(fingerprint = %identity.fingerprint(), "serving certificate");
    live.config = new;
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
