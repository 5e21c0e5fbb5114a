//! The gateway's resource use, from `/proc`, and its registration count, from the
//! admin listener's Prometheus `/metrics`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::clock::{now_ns, secs_since};

/// CPU seconds (user + system) of a process so far.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which sits in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ')'.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// Resident set size in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// What the gateway used while a workload ran.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    pub wall_secs: f64,
    pub cpu_secs: f64,
    /// CPU seconds per wall second, in percent of one core.
    pub cpu_percent: f64,
    pub rss_start_mib: f64,
    pub rss_peak_mib: f64,
    pub rss_end_mib: f64,
}

/// Samples a process every 200 ms until stopped. The pid may change (a restart).
#[derive(Debug)]
pub struct Sampler {
    pid: Arc<AtomicU32>,
    task: tokio::task::JoinHandle<Usage>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Sampler {
    pub fn start(pid: Arc<AtomicU32>) -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let shared = pid.clone();
        let task = tokio::spawn(async move {
            let start = now_ns();
            let mut usage = Usage::default();
            let mut cpu_base: Option<(u32, f64)> = None;
            let mut cpu_done = 0.0;
            loop {
                let pid = shared.load(Ordering::Relaxed);
                if let (Some(cpu), Some(rss)) = (cpu_secs(pid), rss_kib(pid)) {
                    let rss = rss as f64 / 1024.0;
                    match cpu_base {
                        Some((p, base)) if p == pid => usage.cpu_secs = cpu_done + cpu - base,
                        _ => {
                            // A new process: bank what the old one used.
                            cpu_done = usage.cpu_secs;
                            cpu_base = Some((pid, cpu));
                        }
                    }
                    if usage.rss_start_mib == 0.0 {
                        usage.rss_start_mib = rss;
                    }
                    usage.rss_peak_mib = usage.rss_peak_mib.max(rss);
                    usage.rss_end_mib = rss;
                }
                let tick = tokio::time::sleep(Duration::from_millis(200));
                tokio::select! {
                    _ = tick => {}
                    _ = stopped.changed() => break,
                }
            }
            usage.wall_secs = secs_since(start);
            usage.cpu_percent = 100.0 * usage.cpu_secs / usage.wall_secs.max(1e-9);
            usage
        });
        Self { pid, task, stop }
    }

    /// Stops sampling and returns the usage.
    pub async fn finish(self) -> Usage {
        let _ = self.stop.send(true);
        let _ = self.pid;
        self.task.await.unwrap_or_default()
    }
}

/// Successful registrations since the gateway started (a counter, so stale links that
/// the gateway has not yet dropped do not blur it).
pub async fn registrations(admin: SocketAddr) -> anyhow::Result<u64> {
    metric_sum(admin, "gateway_registrations_total{result=\"ok\"}").await
}

/// The sum of the series whose lines start with `prefix`.
async fn metric_sum(admin: SocketAddr, prefix: &str) -> anyhow::Result<u64> {
    let text = get(admin, "/metrics").await?;
    let mut total = 0.0;
    for line in text.lines().filter(|l| l.starts_with(prefix)) {
        if let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            total += v;
        }
    }
    Ok(total as u64)
}

/// A plain HTTP/1.0 GET on the admin listener; the body.
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let fetch = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n").as_bytes())
            .await?;
        let mut body = String::new();
        tcp.read_to_string(&mut body).await?;
        anyhow::Ok(body)
    };
    let text = tokio::time::timeout(Duration::from_secs(5), fetch).await??;
    let (_, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP response from the admin listener"))?;
    Ok(body.to_owned())
}
