//! The lossy mode: the spaces (agents and sources) run in a network namespace joined to
//! this one by a veth pair whose packets are dropped at random (an nftables `numgen`
//! rule, each way) and whose rate is capped (a `tbf` qdisc, each way). The gateway and
//! the users stay here. Agents are in-process, so this binary runs itself again inside
//! the namespace in a hidden "space side" role, which starts the sources and agents and
//! reports their addresses as one JSON line on standard output. Frames are stamped with
//! CLOCK_MONOTONIC, which both processes share. With `--delay` two TUN devices take the
//! veth pair's place, and this process carries the packets between them late (delay.rs).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::cli::Cli;
use crate::delay::{self, DelayLine};
use crate::gateway::Target;
use crate::spaces::{start_agents, LinkTarget, Sources, Space, Transport};

/// A namespace with its veth pair (or TUN pair), loss rule and rate limit; deleted on
/// drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    /// This side's address: the gateway's agent listener binds it.
    pub gateway_ip: IpAddr,
    /// The namespace's address: users reach sources there on the direct path.
    pub space_ip: IpAddr,
    pub loss: f64,
    pub rate_mbit: u32,
    /// The round trip `--delay` adds, half each way; `None`: a veth pair, no delay.
    pub delay: Option<Duration>,
    /// With a delay: the threads carrying packets between the TUN devices.
    line: Option<DelayLine>,
    /// The link's device here and its device in the namespace.
    outer: String,
    inner: String,
}

fn sh(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Netns {
    /// Builds the namespace. Needs root, `ip`, `nft` and `tc`.
    pub fn create(loss: f64, rate_mbit: u32, delay: Option<Duration>) -> anyhow::Result<Self> {
        if !rustix::process::geteuid().is_root() {
            bail!("--loss needs root: it creates a network namespace, nftables rules and a qdisc");
        }
        if !(0.0..=100.0).contains(&loss) || rate_mbit == 0 || rate_mbit > 100_000 {
            bail!("--loss is 0 to 100 (percent) and --rate 1 to 100000 (Mbit/s)");
        }
        let pid = std::process::id();
        let net = (pid % 250) as u8 + 1;
        let mut me = Self {
            name: format!("loadtest-{pid}"),
            gateway_ip: IpAddr::V4(Ipv4Addr::new(10, 213, net, 1)),
            space_ip: IpAddr::V4(Ipv4Addr::new(10, 213, net, 2)),
            loss,
            rate_mbit,
            delay,
            line: None,
            outer: format!("lta{pid}"),
            inner: format!("ltb{pid}"),
        };
        // From here on, drop removes whatever was made.
        me.build(pid)?;
        Ok(me)
    }

    /// Runs `args` inside the namespace.
    fn exec(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    fn build(&mut self, pid: u32) -> anyhow::Result<()> {
        let (outer, inner) = (self.outer.clone(), self.inner.clone());
        sh(&["ip", "netns", "add", &self.name])?;
        match self.delay {
            None => self.veth(&outer, &inner)?,
            Some(rtt) => self.tun_pair(&outer, &inner, rtt)?,
        }
        self.exec(&["ip", "link", "set", "lo", "up"])?;
        self.loss_rules(pid, &inner)?;
        self.rate_limit(&outer, &inner)
    }

    /// A veth pair, `outer` here and `inner` in the namespace, on one /24.
    fn veth(&self, outer: &str, inner: &str) -> anyhow::Result<()> {
        let ns = self.name.as_str();
        sh(&[
            "ip", "link", "add", outer, "type", "veth", "peer", "name", inner,
        ])?;
        sh(&["ip", "link", "set", inner, "netns", ns])?;
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", self.gateway_ip),
            "dev",
            outer,
        ])?;
        sh(&["ip", "link", "set", outer, "up"])?;
        self.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", self.space_ip),
            "dev",
            inner,
        ])?;
        self.exec(&["ip", "link", "set", inner, "up"])
    }

    /// Two TUN devices, `outer` here and `inner` in the namespace, each addressed
    /// point-to-point to the other's address, and a thread each way that writes what
    /// one device reads to the other half a round trip later.
    fn tun_pair(&mut self, outer: &str, inner: &str, rtt: Duration) -> anyhow::Result<()> {
        let one_way = rtt / 2;
        let (outer_in, outer_out) = delay::open(outer)?;
        let (inner_in, inner_out) = delay::open(inner)?;
        let queue = delay::queue_len(self.rate_mbit, one_way);
        let mut line = DelayLine::new();
        line.way("to-spaces", outer_in, inner_out, one_way, queue)?;
        line.way("from-spaces", inner_in, outer_out, one_way, queue)?;
        // From here on, drop stops the threads and so closes (and removes) the devices.
        self.line = Some(line);

        // The open file stays attached to the device when it changes namespace.
        sh(&["ip", "link", "set", "dev", inner, "netns", &self.name])?;
        let (here, there) = (self.gateway_ip.to_string(), self.space_ip.to_string());
        sh(&["ip", "addr", "add", &here, "peer", &there, "dev", outer])?;
        sh(&["ip", "link", "set", outer, "up"])?;
        self.exec(&["ip", "addr", "add", &there, "peer", &here, "dev", inner])?;
        self.exec(&["ip", "link", "set", inner, "up"])
    }

    fn loss_rules(&self, pid: u32, inner: &str) -> anyhow::Result<()> {
        // Loss: in hundredths of a percent, so that 0.5% works; each way, inside the
        // namespace only, so nothing outside it is touched.
        let cut = (self.loss * 100.0).round() as u32;
        let rules = format!(
            "table inet loadtest {{\n\
             chain input {{ type filter hook input priority 0; \
             iifname \"{inner}\" numgen random mod 10000 < {cut} drop; }}\n\
             chain output {{ type filter hook output priority 0; \
             oifname \"{inner}\" numgen random mod 10000 < {cut} drop; }}\n}}\n"
        );
        let file = std::env::temp_dir().join(format!("loadtest-{pid}.nft"));
        std::fs::write(&file, rules)?;
        let applied = self.exec(&["nft", "-f", &file.display().to_string()]);
        let _ = std::fs::remove_file(&file);
        applied
    }

    fn rate_limit(&self, outer: &str, inner: &str) -> anyhow::Result<()> {
        // Rate: a token bucket each way; the burst holds a few milliseconds at the rate
        // (at least 32 KiB), the queue at most 50 ms.
        let rate = format!("{}mbit", self.rate_mbit);
        let burst = format!("{}", (self.rate_mbit as u64 * 125_000 / 200).max(32 * 1024));
        let tbf = |dev: &str| -> Vec<String> {
            [
                "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", &rate, "burst", &burst,
            ]
            .iter()
            .map(|s| s.to_string())
            .chain(["latency".to_owned(), "50ms".to_owned()])
            .collect()
        };
        let outer_tbf = tbf(outer);
        sh(&outer_tbf.iter().map(String::as_str).collect::<Vec<_>>())?;
        let inner_tbf = tbf(inner);
        self.exec(&inner_tbf.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// How the link is made, for the report.
    pub fn describe(&self) -> String {
        let link = match self.delay {
            None => "a veth pair".to_owned(),
            Some(rtt) => format!(
                "two TUN devices with a {} ms round trip added ({} ms each way, by loadtest's \
                 forwarding threads)",
                rtt.as_secs_f64() * 1e3,
                rtt.as_secs_f64() * 5e2,
            ),
        };
        format!(
            "lossy: spaces in network namespace {} behind {link}, {}% loss each way \
             (nftables numgen), {} Mbit/s each way (tbf)",
            self.name, self.loss, self.rate_mbit
        )
    }

    /// With a delay: what the forwarding threads did, including any packet a full queue
    /// or a device dropped (a TUN device drops when this process reads too slowly).
    pub fn delay_counts(&self) -> Option<String> {
        let line = self.line.as_ref()?;
        let devices = [
            self.tx_dropped(&self.outer, false),
            self.tx_dropped(&self.inner, true),
        ];
        let ways: Vec<String> = ["to the spaces", "from the spaces"]
            .iter()
            .zip(line.counts())
            .zip(devices)
            .map(|((way, c), device)| {
                let device = device.map_or("?".to_owned(), |n| n.to_string());
                format!(
                    "{way} {} forwarded, {} dropped by a full delay queue, {device} by the \
                     TUN device's own queue, {} refused",
                    c.forwarded.load(Ordering::Relaxed),
                    c.overflowed.load(Ordering::Relaxed),
                    c.failed.load(Ordering::Relaxed),
                )
            })
            .collect();
        Some(format!("delay: packets {}", ways.join("; ")))
    }

    /// Packets `dev` dropped on their way out (`ip -s link`), or `None` if unreadable.
    fn tx_dropped(&self, dev: &str, inside: bool) -> Option<u64> {
        let mut ip = Command::new("ip");
        if inside {
            ip.args(["-n", &self.name]);
        }
        let out = ip
            .args(["-j", "-s", "link", "show", "dev", dev])
            .output()
            .ok()?;
        let links: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        links[0]["stats64"]["tx"]["dropped"].as_u64()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // The threads first: they hold the TUN devices, which go when their files close.
        drop(self.line.take());
        // Deleting the namespace deletes its end of the veth pair, and so the pair.
        let _ = sh(&["ip", "netns", "del", &self.name]);
    }
}

/// What the parent sends the space side on standard input.
#[derive(Debug, Serialize, Deserialize)]
struct Orders {
    link: LinkTarget,
    names: Vec<String>,
    tokens: Vec<String>,
}

/// What the space side answers: each space's source addresses.
#[derive(Debug, Serialize, Deserialize)]
struct Ready {
    spaces: Vec<(String, SocketAddr, SocketAddr, SocketAddr)>,
}

/// The space side's process, ended when dropped.
#[derive(Debug)]
pub struct SpaceSide {
    child: tokio::process::Child,
    /// Kept open: the space side runs until it reads end-of-file.
    _stdin: tokio::process::ChildStdin,
    pub spaces: Vec<Space>,
}

impl SpaceSide {
    /// Runs this binary in the namespace as the space side for `transport`.
    pub async fn start(
        ns: &Netns,
        cli: &Cli,
        target: &Target,
        transport: Transport,
        names: &[String],
        tokens: &[String],
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut child = tokio::process::Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(exe)
            .args(["--space-side", "--transport", transport.name()])
            .args(["--body-size", &cli.body_size.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the space side in the namespace")?;
        let orders = Orders {
            link: LinkTarget::of(target),
            names: names.to_vec(),
            tokens: tokens.to_vec(),
        };
        let mut stdin = child.stdin.take().context("space side stdin")?;
        stdin
            .write_all(serde_json::to_string(&orders)?.as_bytes())
            .await?;
        stdin.write_all(b"\n").await?;
        let stdout = child.stdout.take().context("space side stdout")?;
        let mut line = String::new();
        let mut stdout = BufReader::new(stdout);
        let read = stdout.read_line(&mut line);
        tokio::time::timeout(std::time::Duration::from_secs(30), read)
            .await
            .context("the space side did not report ready within 30 s")??;
        let ready: Ready = serde_json::from_str(&line).context("the space side's report")?;
        let at = |a: SocketAddr| SocketAddr::new(ns.space_ip, a.port());
        let spaces = ready
            .spaces
            .into_iter()
            .map(|(name, desktop, echo, http)| Space {
                name,
                sources: Sources {
                    desktop: at(desktop),
                    echo: at(echo),
                    http: at(http),
                },
            })
            .collect();
        Ok(Self {
            child,
            _stdin: stdin,
            spaces,
        })
    }
}

impl Drop for SpaceSide {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The hidden role: read orders, start sources and agents, report, run until stdin ends.
pub async fn space_side(cli: Cli) -> anyhow::Result<()> {
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut line = String::new();
    stdin.read_line(&mut line).await?;
    let orders: Orders = serde_json::from_str(&line).context("orders on standard input")?;
    let transport = cli.transport.list()[0];
    let every = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let mut spaces = Vec::new();
    for name in &orders.names {
        let sources = Sources::start(every, cli.body_size).await?;
        spaces.push(Space {
            name: name.clone(),
            sources,
        });
    }
    let _agents = start_agents(&orders.link, transport, &spaces, &orders.tokens)?;
    let ready = Ready {
        spaces: spaces
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    s.sources.desktop,
                    s.sources.echo,
                    s.sources.http,
                )
            })
            .collect(),
    };
    let mut stdout = tokio::io::stdout();
    stdout
        .write_all(serde_json::to_string(&ready)?.as_bytes())
        .await?;
    stdout.write_all(b"\n").await?;
    stdout.flush().await?;
    // Until the parent closes standard input (or dies): bounded by the parent's run.
    let mut rest = Vec::new();
    let _ = stdin.read_to_end(&mut rest).await;
    Ok(())
}
