//! The gateway under test: started here from the release binary (and killed, and
//! started again for the storm), or one already running, given by address.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::clock::Deadline;

/// Where and how to reach a gateway, and how to mint its tokens.
#[derive(Debug, Clone)]
pub struct Target {
    pub agent: SocketAddr,
    pub front: SocketAddr,
    /// Whether the front door address speaks TLS (else plain HTTP).
    pub front_tls: bool,
    pub admin: Option<SocketAddr>,
    pub domain: String,
    pub fingerprint: String,
    pub user_token: String,
    minter: Minter,
}

/// Mints tokens with `gateway token ...`, from a data directory or a signing key.
#[derive(Debug, Clone)]
pub struct Minter {
    pub binary: PathBuf,
    pub data_dir: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Minter {
    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(&self.binary);
        if let Some(dir) = &self.data_dir {
            cmd.arg("--data-dir").arg(dir);
        }
        cmd.args(args);
        if let Some(key) = &self.key {
            cmd.arg("--key").arg(key);
        }
        let out = cmd.output().context("running `gateway token`")?;
        if !out.status.success() {
            bail!(
                "`gateway token` failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }

    /// An agent token for space `user--space`.
    pub fn agent(&self, user: &str, space: &str) -> anyhow::Result<String> {
        self.run(&["token", "agent", "--user", user, "--space", space])
    }

    /// A user token reaching every space of `user`.
    pub fn user(&self, user: &str) -> anyhow::Result<String> {
        self.run(&[
            "token",
            "user",
            "--user",
            user,
            "--space",
            &format!("{user}--*"),
        ])
    }
}

impl Target {
    /// A target for a gateway already running.
    #[allow(clippy::too_many_arguments)]
    pub fn given(
        agent: SocketAddr,
        front: SocketAddr,
        front_tls: bool,
        admin: Option<SocketAddr>,
        domain: String,
        fingerprint: String,
        minter: Minter,
        user: &str,
    ) -> anyhow::Result<Self> {
        let user_token = minter.user(user)?;
        Ok(Self {
            agent,
            front,
            front_tls,
            admin,
            domain,
            fingerprint,
            user_token,
            minter,
        })
    }

    /// Agent tokens for `spaces` of `user`, minted a few at a time.
    pub async fn agent_tokens(&self, user: &str, spaces: &[String]) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::with_capacity(spaces.len());
        for chunk in spaces.chunks(8) {
            let tasks: Vec<_> = chunk
                .iter()
                .map(|space| {
                    let (minter, user, space) =
                        (self.minter.clone(), user.to_owned(), space.clone());
                    tokio::task::spawn_blocking(move || minter.agent(&user, &space))
                })
                .collect();
            for t in tasks {
                out.push(t.await??);
            }
        }
        Ok(out)
    }
}

/// A gateway process this run started; killed on drop, its data directory removed.
#[derive(Debug)]
pub struct GatewayProc {
    child: Option<Child>,
    binary: PathBuf,
    args: Vec<String>,
    pub dir: PathBuf,
    pub target: Target,
    plain: SocketAddr,
}

/// The gateway's defaults (10,000 links, 16,384 front-door connections) need more open
/// files than many machines allow (the gateway warns), and `--links` may ask for more
/// links than the default. The started gateway gets room for `links` agent links, and
/// front-door connections to fill the rest of this process's open-file limit.
fn limits_config(links: u32) -> String {
    let links = u64::from(links).max(10_000);
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .unwrap_or(u64::MAX);
    // The gateway's own reserve for everything else (listeners, logs) is 256 files.
    let connections = nofile.saturating_sub(links + 256).clamp(1024, 16_384);
    format!("[agents]\nmax_links = {links}\n\n[public]\nmax_connections = {connections}\n")
}

impl GatewayProc {
    /// Starts `binary` on free loopback ports with a fresh data directory; the agent
    /// listener on `agent_ip` when given (the lossy mode's veth address).
    pub fn start(
        binary: &Path,
        front_tls: bool,
        user: &str,
        agent_ip: Option<std::net::IpAddr>,
        links: u32,
    ) -> anyhow::Result<Self> {
        if !binary.exists() {
            bail!(
                "{} is missing: build it with `cargo build --release --bins -p gateway`",
                binary.display()
            );
        }
        let dir = std::env::temp_dir().join(format!("loadtest-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let [public, plain, admin] = [0; 3].map(|_| free_port());
        let mut agent = free_agent_port();
        if let Some(ip) = agent_ip {
            agent.set_ip(ip);
        }
        let config = dir.join("gateway.toml");
        std::fs::write(&config, limits_config(links))?;
        let args = vec![
            "--data-dir".to_owned(),
            dir.display().to_string(),
            "run".to_owned(),
            "--config".to_owned(),
            config.display().to_string(),
            "--agent-listen".to_owned(),
            agent.to_string(),
            "--public-listen".to_owned(),
            public.to_string(),
            "--plain-listen".to_owned(),
            plain.to_string(),
            "--admin-listen".to_owned(),
            admin.to_string(),
        ];
        let minter = Minter {
            binary: binary.to_owned(),
            data_dir: Some(dir.clone()),
            key: None,
        };
        let mut me = Self {
            child: None,
            binary: binary.to_owned(),
            args,
            dir: dir.clone(),
            target: Target {
                agent,
                front: if front_tls { public } else { plain },
                front_tls,
                admin: Some(admin),
                domain: "gateway.localhost".to_owned(),
                fingerprint: String::new(),
                user_token: String::new(),
                minter,
            },
            plain,
        };
        me.spawn()?;
        me.target.fingerprint = fingerprint(&dir.join("gateway.localhost.crt.pem"))?;
        me.target.user_token = me.target.minter.user(user)?;
        Ok(me)
    }

    /// Starts the process with the same arguments and waits until it listens.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("gateway.log"))?;
        // Warnings go to gateway.log, summarised in the report. With RUST_LOG set, the
        // gateway logs at that level to this process's standard error instead.
        let (level, stderr) = match std::env::var("RUST_LOG") {
            Ok(level) => (level, Stdio::inherit()),
            Err(_) => ("warn".to_owned(), Stdio::from(log)),
        };
        let child = Command::new(&self.binary)
            .args(&self.args)
            .env("RUST_LOG", level)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("starting the gateway")?;
        self.child = Some(child);
        let deadline = Deadline::after(Duration::from_secs(30));
        while std::net::TcpStream::connect(self.plain).is_err() {
            if deadline.passed() {
                bail!(
                    "the gateway did not listen within 30 s; see {}",
                    self.log().display()
                );
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok())
                .flatten()
            {
                let log = std::fs::read_to_string(self.log()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(3).collect();
                bail!("the gateway exited ({status}): {}", tail.join(" | "));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The gateway's log file (stderr, level warn).
    pub fn log(&self) -> PathBuf {
        self.dir.join("gateway.log")
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// SHA-256 fingerprint of the first certificate in a PEM file.
pub fn fingerprint(pem: &Path) -> anyhow::Result<String> {
    let cert = CertificateDer::from_pem_file(pem)
        .with_context(|| format!("reading the certificate {}", pem.display()))?;
    Ok(agent_link::tls::fingerprint(&cert))
}

/// A loopback port free a moment ago for both TCP and UDP (the agent listener's).
fn free_agent_port() -> SocketAddr {
    for _ in 0..100 {
        let addr = free_port();
        if std::net::UdpSocket::bind(addr).is_ok() {
            return addr;
        }
    }
    free_port()
}

/// A loopback address with a port that was free a moment ago.
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("loopback has free ports")
}
