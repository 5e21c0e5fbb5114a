//! `idle` and `storm`: many agent links at once, seen from the gateway's side. Each
//! link's registration is timed by polling the gateway's live-link count every 10 ms
//! (so to within about 10 ms), from the moment the agents start (idle) or the gateway
//! is started again (storm).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::clock::{now_ns, Deadline};
use crate::gateway::GatewayProc;
use crate::procstat::{registrations, rss_kib};
use crate::spaces::{start_agents, Agents, LinkTarget, Sources, Space, Transport, LOOPBACK, USER};
use crate::stats::Stats;

/// What `idle` or `storm` measured on one transport.
#[derive(Debug)]
pub struct FleetResult {
    /// Per link: seconds from the start to its registration, as a histogram.
    pub register: Stats,
    /// Seconds until every link (or as many as made it) registered.
    pub secs: f64,
    pub facts: FleetFacts,
}

/// The figures beside the histogram.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FleetFacts {
    pub links: u64,
    /// Links registered per second, over the whole registration.
    pub registrations_per_sec: f64,
    /// Gateway RSS before the agents and with every link up, MiB.
    pub rss_before_mib: f64,
    pub rss_after_mib: f64,
    /// (after - before) / links.
    pub kib_per_link: f64,
    /// Storm: time from the first to the last re-registration.
    pub spread_secs: Option<f64>,
    /// Storm: seconds the gateway was down.
    pub down_secs: Option<f64>,
}

/// `n` spaces sharing one set of sources (idle links carry nothing).
async fn fleet(gw: &GatewayProc, transport: Transport, n: usize) -> anyhow::Result<(Agents, u64)> {
    let sources = Sources::start(LOOPBACK, 1024).await?;
    let spaces: Vec<Space> = (0..n)
        .map(|i| Space {
            name: format!("fleet-{}-{i}", transport.name()),
            sources: sources.clone(),
        })
        .collect();
    let names: Vec<String> = spaces.iter().map(|s| s.name.clone()).collect();
    let tokens = gw.target.agent_tokens(USER, &names).await?;
    let start = now_ns();
    let agents = start_agents(&LinkTarget::of(&gw.target), transport, &spaces, &tokens)?;
    Ok((agents, start))
}

type Watched = (Stats, f64, Vec<u64>);

/// Polls the registration count until `want` links are up or `limit` passes; records each
/// new link's time since `t0`.
/// `base` is the registration counter before the agents started (zero for a gateway
/// just restarted).
async fn watch(gw: &GatewayProc, base: u64, want: u64, t0: u64, limit: Duration) -> Watched {
    let admin = gw
        .target
        .admin
        .expect("a started gateway has an admin listener");
    let deadline = Deadline::after(limit);
    let mut stats = Stats::default();
    let mut seen = 0u64;
    let mut times = Vec::new();
    while seen < want && !deadline.passed() {
        let live = registrations(admin)
            .await
            .map_or(seen, |r| r.saturating_sub(base))
            .min(want);
        let now = now_ns();
        for _ in seen..live {
            stats.record_ns(now - t0);
            times.push(now - t0);
        }
        seen = seen.max(live);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stats.error(want - seen, || {
        format!(
            "{} of {want} links not registered within {limit:?}",
            want - seen
        )
    });
    let secs = times.last().copied().unwrap_or(0) as f64 / 1e9;
    (stats, secs, times)
}

async fn base(gw: &GatewayProc) -> u64 {
    crate::spaces::registrations(&gw.target).await
}

/// `idle`: `n` links opened at once and held for `hold`.
pub async fn idle(
    gw: &GatewayProc,
    transport: Transport,
    n: usize,
    hold: Duration,
) -> anyhow::Result<FleetResult> {
    let pid = gw.pid().context("the gateway is not running")?;
    let rss_before = rss_kib(pid).unwrap_or(0) as f64 / 1024.0;
    let base = base(gw).await;
    let (agents, t0) = fleet(gw, transport, n).await?;
    let (register, secs, _) = watch(gw, base, n as u64, t0, Duration::from_secs(60)).await;
    tokio::time::sleep(hold).await;
    let rss_after = rss_kib(pid).unwrap_or(0) as f64 / 1024.0;
    drop(agents);
    let links = register.hist.len();
    Ok(FleetResult {
        facts: FleetFacts {
            links,
            registrations_per_sec: links as f64 / secs.max(1e-9),
            rss_before_mib: rss_before,
            rss_after_mib: rss_after,
            kib_per_link: (rss_after - rss_before) * 1024.0 / links.max(1) as f64,
            spread_secs: None,
            down_secs: None,
        },
        register,
        secs,
    })
}

/// `storm`: `n` links up, the gateway killed (SIGKILL) and started again after
/// `down`; every link's time back, from the restart.
pub async fn storm(
    gw: &mut GatewayProc,
    pid_cell: &Arc<AtomicU32>,
    transport: Transport,
    n: usize,
    down: Duration,
    limit: Duration,
) -> anyhow::Result<FleetResult> {
    let base = base(gw).await;
    let (agents, t0) = fleet(gw, transport, n).await?;
    let (first, _, _) = watch(gw, base, n as u64, t0, Duration::from_secs(60)).await;
    anyhow::ensure!(
        first.errors == 0,
        "not every link registered before the storm"
    );
    let rss_before = gw.pid().and_then(rss_kib).unwrap_or(0) as f64 / 1024.0;

    let killed = now_ns();
    gw.kill();
    tokio::time::sleep(down).await;
    gw.spawn()?;
    let restarted = now_ns();
    pid_cell.store(gw.pid().unwrap_or(0), Ordering::Relaxed);

    let (register, secs, times) = watch(gw, 0, n as u64, restarted, limit).await;
    let rss_after = gw.pid().and_then(rss_kib).unwrap_or(0) as f64 / 1024.0;
    drop(agents);
    let links = register.hist.len();
    let spread = match (times.first(), times.last()) {
        (Some(a), Some(b)) => Some((b - a) as f64 / 1e9),
        _ => None,
    };
    Ok(FleetResult {
        facts: FleetFacts {
            links,
            registrations_per_sec: links as f64 / secs.max(1e-9),
            rss_before_mib: rss_before,
            rss_after_mib: rss_after,
            kib_per_link: 0.0,
            spread_secs: spread,
            down_secs: Some((restarted - killed) as f64 / 1e9),
        },
        register,
        secs,
    })
}
