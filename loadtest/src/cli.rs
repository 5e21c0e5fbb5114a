//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::spaces::Transport;
use crate::workload::Kind;

/// Simulated agents and users against the space gateway, each workload measured
/// through the gateway and (with --direct) straight to the same sources in one run.
#[derive(Debug, Clone, Parser)]
#[command(name = "loadtest", version)]
pub struct Cli {
    /// What the simulated users do.
    #[arg(long, short, value_enum, default_value_t = Kind::Desktop)]
    pub workload: Kind,

    /// The agents' link transport; `both` runs the workload once per transport.
    #[arg(long, value_enum, default_value_t = Transports::Both)]
    pub transport: Transports,

    /// Also run the workload without the gateway (users straight to the sources), and
    /// report every result as a ratio to it.
    #[arg(long)]
    pub direct: bool,

    /// Spaces (each with its own agent, link, sources and user) for the user workloads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub spaces: u16,

    /// Agent links for `idle` and `storm`.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=20000))]
    pub links: u32,

    /// How long each path's workload runs, seconds (`idle`: how long links are held).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub duration: u64,

    /// Desktop frames per second.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=240))]
    pub fps: u32,

    /// Desktop frame size: bytes, or with a KiB / MiB suffix (4KiB, 60KiB, 256KiB).
    #[arg(long, default_value = "60KiB", value_parser = parse_size)]
    pub frame_size: u64,

    /// Keystrokes per second per terminal (`interactive`).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub keys_per_sec: u32,

    /// Keep-alive connections per space (`http`).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,

    /// Response body of `http` requests.
    #[arg(long, default_value = "1KiB", value_parser = parse_size)]
    pub body_size: u64,

    /// Size of each `bulk` (and `mixed`) download.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub bulk_size: u64,

    /// `storm`: seconds the gateway stays down between kill and restart.
    #[arg(long, default_value_t = 1.0)]
    pub down: f64,

    /// `storm`: seconds allowed for every link to come back.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub storm_limit: u64,

    /// How users reach the gateway's front door: TLS (as people do) or its plain-HTTP
    /// listener (as behind a TLS-terminating load balancer).
    #[arg(long, value_enum, default_value_t = Front::Tls)]
    pub front: Front,

    /// The gateway binary to start (and to mint tokens with).
    #[arg(long)]
    pub gateway_bin: Option<PathBuf>,

    #[command(flatten)]
    pub given: Given,

    /// Write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Draw the latency percentile curves (gateway paths against direct) as a PNG.
    #[arg(long)]
    pub plot: Option<PathBuf>,

    /// Drop this percentage of packets (each way) between the spaces and the gateway:
    /// agents and sources run in a network namespace. Needs root.
    #[arg(long, requires = "rate")]
    pub loss: Option<f64>,

    /// With --loss: the spaces' link rate, Mbit/s (a tbf qdisc each way).
    #[arg(long, requires = "loss")]
    pub rate: Option<u32>,

    /// With --loss and --rate: a round trip to add between the spaces and the gateway,
    /// ms, half each way (two TUN devices replace the veth pair, and this process holds
    /// each packet between them).
    #[arg(
        long,
        requires_all = ["loss", "rate"],
        value_parser = clap::value_parser!(u32).range(0..=1000),
    )]
    pub delay: Option<u32>,

    /// Internal: run as the space side of the lossy mode (inside its namespace).
    #[arg(long, hide = true)]
    pub space_side: bool,
}

/// A gateway already running, instead of one this run starts.
#[derive(Debug, Clone, clap::Args)]
pub struct Given {
    /// The running gateway's agent listener (UDP and TCP).
    #[arg(long, requires_all = ["gateway_front", "fingerprint", "signing_key"])]
    pub gateway_agent: Option<SocketAddr>,

    /// Its front door (TLS, or plain with --front plain).
    #[arg(long)]
    pub gateway_front: Option<SocketAddr>,

    /// Its admin listener (for registration counts); without it, agents get 3 s.
    #[arg(long)]
    pub gateway_admin: Option<SocketAddr>,

    /// Its domain.
    #[arg(long, default_value = "gateway.localhost")]
    pub domain: String,

    /// SHA-256 fingerprint of its certificate.
    #[arg(long)]
    pub fingerprint: Option<String>,

    /// The deployment's signing key (PEM) to mint agent and user tokens with.
    #[arg(long)]
    pub signing_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transports {
    Quic,
    Tcp,
    Both,
}

impl Transports {
    pub fn list(self) -> Vec<Transport> {
        match self {
            Transports::Quic => vec![Transport::Quic],
            Transports::Tcp => vec![Transport::Tcp],
            Transports::Both => vec![Transport::Quic, Transport::Tcp],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Front {
    Tls,
    Plain,
}

impl Cli {
    pub fn duration(&self) -> Duration {
        Duration::from_secs(self.duration)
    }

    /// `--delay` as a round trip.
    pub fn delay(&self) -> Option<Duration> {
        self.delay.map(|ms| Duration::from_millis(ms.into()))
    }
}

/// `4096`, `4KiB`, `60KiB`, `1MiB`.
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("KiB") {
        (n, 1u64 << 10)
    } else if let Some(n) = t.strip_suffix("MiB") {
        (n, 1 << 20)
    } else if let Some(n) = t.strip_suffix("GiB") {
        (n, 1 << 30)
    } else {
        (t, 1)
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 4096, 60KiB or 64MiB"))?;
    let bytes = n.saturating_mul(mult);
    if !(24..=(4u64 << 30)).contains(&bytes) {
        return Err(format!("{text} is outside 24 bytes to 4 GiB"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes_and_stay_in_bounds() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("60KiB"), Ok(60 * 1024));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert!(parse_size("8").is_err());
        assert!(parse_size("5GiB").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("18014398509482044KiB").is_err());
    }

    #[test]
    fn the_command_line_parses_with_defaults() {
        let cli = Cli::try_parse_from(["loadtest", "--direct"]).unwrap();
        assert_eq!(cli.workload, Kind::Desktop);
        assert_eq!(cli.frame_size, 60 * 1024);
        assert_eq!(cli.transport.list().len(), 2);
        assert!(Cli::try_parse_from(["loadtest", "--loss", "1"]).is_err());
        assert!(Cli::try_parse_from(["loadtest", "--delay", "50"]).is_err());
        assert!(Cli::try_parse_from(["loadtest", "--loss", "0", "--delay", "50"]).is_err());
        let lossy = ["loadtest", "--loss", "0", "--rate", "100", "--delay"];
        let cli = Cli::try_parse_from(lossy.iter().chain(&["50"])).unwrap();
        assert_eq!(cli.delay, Some(50));
        assert!(Cli::try_parse_from(lossy.iter().chain(&["1001"])).is_err());
    }
}
