//! One run: the gateway (started or given), then each path in turn (direct once, then
//! through the gateway per transport), then the report.

use std::path::PathBuf;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::cli::{Cli, Front};
use crate::client::Via;
use crate::gateway::{GatewayProc, Minter, Target};
use crate::procstat::Sampler;
use crate::progress::with_bar;
use crate::report::{Ratio, Report, Row};
use crate::spaces::{self, Agents, LinkTarget, Sources, Space, Transport, LOOPBACK, USER};
use crate::stats::Summary;
use crate::workload::{self, fleet, Kind, Opts};

/// Where the spaces of one phase live, kept alive while it runs.
enum Host {
    Local(#[allow(dead_code)] Agents),
    Netns(#[allow(dead_code)] crate::lossy::SpaceSide),
}

pub async fn main(cli: Cli) -> anyhow::Result<()> {
    check(&cli)?;
    let netns = match cli.loss {
        Some(loss) => {
            let rate = cli.rate.unwrap_or(100);
            Some(crate::lossy::Netns::create(loss, rate, cli.delay())?)
        }
        None => None,
    };
    let bin = gateway_bin(&cli);
    let front_tls = cli.front == Front::Tls;
    let agent_ip = netns.as_ref().map(|n| n.gateway_ip);
    let (mut proc, target) = match cli.given.gateway_agent {
        Some(agent) => (None, given(&cli, agent, &bin)?),
        None => {
            // A port taken between choosing it and the gateway binding it: try again.
            let mut started = GatewayProc::start(&bin, front_tls, USER, agent_ip, cli.links);
            for _ in 0..2 {
                if started.is_ok() {
                    break;
                }
                started = GatewayProc::start(&bin, front_tls, USER, agent_ip, cli.links);
            }
            let p = started?;
            let t = p.target.clone();
            (Some(p), t)
        }
    };
    let target = Arc::new(target);
    let mut report = Report {
        workload: cli.workload.name().to_owned(),
        unit: cli.workload.unit().to_owned(),
        settings: settings(&cli),
        rows: Vec::new(),
        notes: Vec::new(),
    };
    if let Some(n) = &netns {
        report.notes.push(n.describe());
    }
    let result = match cli.workload {
        Kind::Idle | Kind::Storm => fleet_phases(&cli, proc.as_mut(), &mut report).await,
        _ => user_phases(&cli, &target, proc.as_ref(), netns.as_ref(), &mut report).await,
    };
    if let (Err(_), Some(p)) = (&result, &proc) {
        report
            .notes
            .push(format!("gateway log: {}", p.log().display()));
    }
    result?;
    if let Some(p) = &proc {
        gateway_warnings(&p.log(), &mut report.notes);
    }
    if let Some(counts) = netns.as_ref().and_then(|n| n.delay_counts()) {
        report.notes.push(counts);
    }
    report.compare();
    println!("{}", report.table());
    if let Some(file) = &cli.json {
        std::fs::write(file, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", file.display()))?;
    }
    if let Some(file) = &cli.plot {
        crate::plot::draw(&report, file)?;
    }
    drop(proc);
    drop(netns);
    // The report is out either way; a run in which operations failed is a failed run.
    let errors: u64 = report
        .rows
        .iter()
        .map(|r| {
            let extra = |s: &Option<Summary>| s.as_ref().map_or(0, |s| s.errors);
            r.summary.errors + extra(&r.bulk) + extra(&r.alone)
        })
        .sum();
    if errors > 0 {
        bail!("{errors} operations failed (the first error of each path is under its row)");
    }
    Ok(())
}

/// Notes each distinct warning or error the gateway logged (without its timestamp),
/// with how often, up to five.
fn gateway_warnings(log: &std::path::Path, notes: &mut Vec<String>) {
    let log = std::fs::read_to_string(log).unwrap_or_default();
    let mut seen: Vec<(String, usize)> = Vec::new();
    for line in log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
    {
        let text = line.split_once(' ').map_or(line, |(_, rest)| rest).trim();
        match seen.iter_mut().find(|(t, _)| t == text) {
            Some((_, n)) => *n += 1,
            None => seen.push((text.to_owned(), 1)),
        }
    }
    for (text, n) in seen.iter().take(5) {
        notes.push(format!("the gateway logged ({n}×): {text}"));
    }
}

fn check(cli: &Cli) -> anyhow::Result<()> {
    // A gateway given by address is named by --gateway-agent; its other options alone
    // would be ignored, and the run would measure a gateway of its own instead.
    let g = &cli.given;
    if g.gateway_agent.is_none()
        && (g.gateway_front.is_some()
            || g.gateway_admin.is_some()
            || g.fingerprint.is_some()
            || g.signing_key.is_some())
    {
        bail!(
            "--gateway-front, --gateway-admin, --fingerprint and --signing-key describe a \
             gateway given by address, which --gateway-agent names; without it this run \
             starts a gateway of its own"
        );
    }
    if let Some(fp) = &g.fingerprint {
        let hex = fp.replace(':', "");
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("--fingerprint is a SHA-256 fingerprint: 64 hex digits (colons allowed)");
        }
    }
    // Output files are checked before the run, not after minutes of it.
    if let Some(plot) = &cli.plot {
        if plot.extension().and_then(|e| e.to_str()) != Some("png") {
            bail!("--plot writes a PNG: name the file FILE.png");
        }
    }
    for file in [&cli.json, &cli.plot].into_iter().flatten() {
        let dir = match file.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        if !dir.is_dir() {
            bail!(
                "{}: no directory {} to write it in",
                file.display(),
                dir.display()
            );
        }
    }
    if cli.frame_size > 16 << 20 {
        bail!("--frame-size is at most 16MiB");
    }
    if !(0.0..=100.0).contains(&cli.down) {
        bail!("--down is 0 to 100 seconds");
    }
    if matches!(cli.workload, Kind::Idle | Kind::Storm) && cli.direct {
        bail!("--direct has no meaning for idle and storm (there is no direct path)");
    }
    if cli.workload == Kind::Storm && cli.given.gateway_agent.is_some() {
        bail!("storm kills and restarts the gateway: only a gateway this run starts");
    }
    if cli.loss.is_some() && cli.given.gateway_agent.is_some() {
        bail!("--loss needs a gateway this run starts (it listens on the namespace's veth)");
    }
    if cli.loss.is_some() && matches!(cli.workload, Kind::Idle | Kind::Storm) {
        bail!("--loss applies to the user workloads (desktop, interactive, http, bulk, mixed)");
    }
    Ok(())
}

/// `target/release/gateway` beside this binary, else from the source tree.
fn gateway_bin(cli: &Cli) -> PathBuf {
    if let Some(bin) = &cli.gateway_bin {
        return bin.clone();
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("gateway")))
        .filter(|p| p.exists());
    sibling.unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/gateway")
    })
}

fn given(cli: &Cli, agent: std::net::SocketAddr, bin: &std::path::Path) -> anyhow::Result<Target> {
    let g = &cli.given;
    let minter = Minter {
        binary: bin.to_owned(),
        data_dir: None,
        key: g.signing_key.clone(),
    };
    Target::given(
        agent,
        g.gateway_front.context("--gateway-front is required")?,
        cli.front == Front::Tls,
        g.gateway_admin,
        g.domain.clone(),
        g.fingerprint.clone().context("--fingerprint is required")?,
        minter,
        USER,
    )
}

fn opts(cli: &Cli) -> Opts {
    Opts {
        duration: cli.duration(),
        fps: cli.fps,
        frame_size: cli.frame_size as u32,
        keys_per_sec: cli.keys_per_sec,
        concurrency: cli.concurrency as usize,
        bulk_size: cli.bulk_size,
    }
}

fn settings(cli: &Cli) -> serde_json::Value {
    serde_json::json!({
        "workload": cli.workload.name(),
        "transports": cli.transport.list(),
        "direct": cli.direct,
        "spaces": cli.spaces,
        "links": cli.links,
        "duration_secs": cli.duration,
        "fps": cli.fps,
        "frame_size": cli.frame_size,
        "keys_per_sec": cli.keys_per_sec,
        "concurrency": cli.concurrency,
        "body_size": cli.body_size,
        "bulk_size": cli.bulk_size,
        "front": if cli.front == Front::Tls { "tls" } else { "plain" },
        "loss_percent": cli.loss,
        "rate_mbit": cli.rate,
        "delay_ms": cli.delay,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
    })
}

/// The user workloads: direct once (if asked), then each transport.
async fn user_phases(
    cli: &Cli,
    target: &Arc<Target>,
    proc: Option<&GatewayProc>,
    netns: Option<&crate::lossy::Netns>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let opts = opts(cli);
    let kind = cli.workload;
    // `mixed` runs the desktop alone first, for as long again.
    let phases = if kind == Kind::Mixed { 2 } else { 1 };
    let expected = opts.duration * phases + Duration::from_millis(500);
    let mut direct_done = !cli.direct;
    for transport in cli.transport.list() {
        let (spaces, _host) = host(cli, target, transport, netns).await?;
        if !direct_done {
            let m = with_bar(
                "direct",
                expected,
                workload::run(kind, &opts, &Via::Direct, &spaces),
            )
            .await;
            report
                .rows
                .push(row("direct", kind.direct_stack(), &m, None));
            direct_done = true;
        }
        let pid = Arc::new(AtomicU32::new(proc.and_then(GatewayProc::pid).unwrap_or(0)));
        let sampler = proc.map(|_| Sampler::start(pid));
        let via = Via::gateway(target.clone())?;
        let label = format!("via gateway, {}", transport.name());
        let m = with_bar(&label, expected, workload::run(kind, &opts, &via, &spaces)).await;
        let usage = match sampler {
            Some(s) => Some(s.finish().await),
            None => None,
        };
        let stack = gateway_stack(kind, cli.front, transport);
        let path = format!("gateway/{}", transport.name());
        report.rows.push(row(&path, &stack, &m, usage));
    }
    Ok(())
}

/// Starts one phase's spaces: sources, tokens and agents, in this process or in the
/// lossy mode's namespace; returns once every agent has registered.
async fn host(
    cli: &Cli,
    target: &Arc<Target>,
    transport: Transport,
    netns: Option<&crate::lossy::Netns>,
) -> anyhow::Result<(Vec<Space>, Host)> {
    let names: Vec<String> = (0..cli.spaces)
        .map(|i| format!("{}-{i}", transport.name()))
        .collect();
    let tokens = target.agent_tokens(USER, &names).await?;
    let base = spaces::registrations(target).await;
    let (spaces, host) = match netns {
        Some(ns) => {
            let side =
                crate::lossy::SpaceSide::start(ns, cli, target, transport, &names, &tokens).await?;
            (side.spaces.clone(), Host::Netns(side))
        }
        None => {
            let mut spaces = Vec::with_capacity(names.len());
            for name in names {
                let sources = Sources::start(LOOPBACK, cli.body_size).await?;
                spaces.push(Space { name, sources });
            }
            let link = LinkTarget::of(target);
            let agents = spaces::start_agents(&link, transport, &spaces, &tokens)?;
            (spaces, Host::Local(agents))
        }
    };
    let want = spaces.len() as u64;
    let waited = spaces::wait_registered(target, base, want, Duration::from_secs(30)).await;
    if let (Err(e), Host::Local(agents)) = (&waited, &host) {
        let hint = if cli.given.gateway_agent.is_some() {
            "check that --gateway-agent reaches the gateway's agent listener (UDP for \
             QUIC, TCP for TLS/TCP), that --fingerprint is its certificate's, and that \
             --signing-key is the key its tokens are checked with; RUST_LOG=info shows \
             the agents' errors"
        } else {
            "see the gateway log; is target/release/gateway built from this tree? \
             RUST_LOG=info shows the agents' errors"
        };
        bail!(
            "{e}; {} agents were rejected for good; {hint}",
            agents.failed()
        );
    }
    waited?;
    Ok((spaces, host))
}

fn gateway_stack(kind: Kind, front: Front, transport: Transport) -> String {
    let front = match front {
        Front::Tls => "TLS",
        Front::Plain => "plain TCP",
    };
    let user = match kind {
        Kind::Desktop | Kind::Mixed => "websocket (VNC route, joined byte for byte)",
        Kind::Interactive => "websocket /ssh route (binary messages ⇄ bytes)",
        _ => "HTTP/1.1 (proxied per request)",
    };
    let link = match transport {
        Transport::Quic => "QUIC stream",
        Transport::Tcp => "yamux stream over TLS/TCP",
    };
    format!(
        "{user} over {front} to the gateway, then a {link} to the agent, then TCP to the source"
    )
}

fn row(
    path: &str,
    stack: &str,
    m: &workload::Measured,
    gateway: Option<crate::procstat::Usage>,
) -> Row {
    let summary = m.main.summary(m.secs);
    let alone = m.alone.as_ref().map(|(s, secs)| s.summary(*secs));
    Row {
        path: path.to_owned(),
        stack: stack.to_owned(),
        beside_alone: alone.as_ref().map(|a| Ratio::of(&summary, a)),
        summary,
        ratio: None,
        bulk: m.bulk.as_ref().map(|(s, secs)| s.summary(*secs)),
        bulk_ratio: None,
        alone,
        fleet: None,
        gateway,
    }
}

/// `idle` and `storm`, once per transport, on a gateway this run started.
async fn fleet_phases(
    cli: &Cli,
    proc: Option<&mut GatewayProc>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let Some(gw) = proc else {
        bail!("idle and storm read the gateway's memory and restart it: start it here");
    };
    let n = cli.links as usize;
    for (i, transport) in cli.transport.list().into_iter().enumerate() {
        // Links of the previous transport were dropped without a close, and the memory
        // they held stays with the process: a fresh gateway measures each transport alone.
        if i > 0 {
            gw.kill();
            gw.spawn()?;
        }
        let pid = Arc::new(AtomicU32::new(gw.pid().unwrap_or(0)));
        let sampler = Sampler::start(pid.clone());
        let label = format!("{} {}", cli.workload.name(), transport.name());
        let result = match cli.workload {
            Kind::Idle => {
                let hold = cli.duration();
                let expected = hold + Duration::from_secs(2);
                with_bar(&label, expected, fleet::idle(gw, transport, n, hold)).await?
            }
            _ => {
                let down = Duration::from_secs_f64(cli.down);
                let limit = Duration::from_secs(cli.storm_limit);
                let expected = Duration::from_secs(20);
                let storm = fleet::storm(gw, &pid, transport, n, down, limit);
                with_bar(&label, expected, storm).await?
            }
        };
        let usage = sampler.finish().await;
        let stack = match transport {
            Transport::Quic => "agent links over QUIC",
            Transport::Tcp => "agent links over TLS/TCP + yamux",
        };
        report.rows.push(Row {
            path: format!("gateway/{}", transport.name()),
            stack: format!("{stack}; latency = time to register"),
            summary: result.register.summary(result.secs.max(1e-3)),
            ratio: None,
            bulk: None,
            bulk_ratio: None,
            alone: None,
            beside_alone: None,
            fleet: Some(result.facts),
            gateway: Some(usage),
        });
    }
    Ok(())
}
