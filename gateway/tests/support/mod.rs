//! What the end-to-end tests share: real servers (`servers`), and the gateway and
//! agent binaries started as processes exactly as a user starts them.

#![allow(dead_code)]
// Test support: a failed unwrap is a failed test with a backtrace.
#![allow(clippy::unwrap_used)]
// Real processes run on the real clock; tokio's pausable time does not apply.
#![allow(clippy::disallowed_methods)]

pub mod netns;
pub mod servers;
pub mod ws;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use servers::{free_port, TempDir};

/// How long a process may take to come up on a loaded two-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The `gateway` binary under test.
pub fn gateway_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gateway"))
}

/// The `agent-link` binary beside `gateway`. `cargo test -p gateway` builds only the
/// gateway, so the first call in each test process builds the agent too (in the same
/// profile), and a changed agent is never tested stale.
pub fn agent_bin() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let path = gateway_bin().with_file_name("agent-link");
    BUILT.call_once(|| {
        let mut build = Command::new(env!("CARGO"));
        build.args([
            "build",
            "--quiet",
            "-p",
            "agent-link",
            "--bin",
            "agent-link",
        ]);
        if path.parent().is_some_and(|dir| dir.ends_with("release")) {
            build.arg("--release");
        }
        let built = build.status().expect("cargo runs");
        assert!(built.success(), "cargo build -p agent-link failed");
    });
    assert!(path.exists(), "{} is missing", path.display());
    path
}

/// A running gateway with its own data directory and ports.
#[derive(Debug)]
pub struct Gateway {
    child: Option<Child>,
    dir: TempDir,
    pub agent_port: u16,
    pub public_port: u16,
    pub admin_port: u16,
    pub fingerprint: String,
    extra: Vec<String>,
    starts: usize,
    config_dir: Option<TempDir>,
}

impl Gateway {
    /// Starts `gateway run` on fresh loopback ports with extra flags.
    pub fn start_with(extra: &[&str]) -> Gateway {
        let dir = TempDir::new("test-gateway");
        let (agent_port, public_port, admin_port) = (free_port(), free_port(), free_port());
        let mut gw = Gateway {
            child: None,
            dir,
            agent_port,
            public_port,
            admin_port,
            fingerprint: String::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            starts: 0,
            config_dir: None,
        };
        gw.spawn();
        let banner = gw.wait_for_file("stdout.log", "fingerprint", 1);
        gw.fingerprint = banner
            .lines()
            .find_map(|l| l.trim().strip_prefix("fingerprint"))
            .expect("fingerprint line")
            .trim()
            .to_owned();
        gw
    }

    /// Runs the gateway process on this gateway's ports and data directory, appending
    /// to its logs.
    fn spawn(&mut self) {
        let (dir, extra) = (self.dir.path(), &self.extra);
        let log = |name: &str| {
            fs::File::options()
                .create(true)
                .append(true)
                .open(dir.join(name))
                .unwrap()
        };
        let child = Command::new(gateway_bin())
            .args(["--data-dir", dir.to_str().unwrap()])
            .arg("run")
            .args(["--agent-listen", &format!("127.0.0.1:{}", self.agent_port)])
            .args([
                "--public-listen",
                &format!("127.0.0.1:{}", self.public_port),
            ])
            .args(["--admin-listen", &format!("127.0.0.1:{}", self.admin_port)])
            .args(extra)
            .env("RUST_LOG", "info,gateway=debug")
            .stdout(log("stdout.log"))
            .stderr(log("stderr.log"))
            .spawn()
            .expect("start gateway");
        self.child = Some(child);
        self.starts += 1;
    }

    /// Kills the gateway with SIGKILL: no drain, no goodbye to anyone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the gateway again, after [`kill`](Self::kill) or an exit, on the same
    /// ports with the same keys, and waits until it is listening.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_for_file("stdout.log", "fingerprint", self.starts);
    }

    /// Starts a gateway with `toml` as its configuration file and extra flags.
    pub fn start_configured(toml: &str, extra: &[&str]) -> Gateway {
        let dir = TempDir::new("test-config");
        let config = dir.path().join("gateway.toml");
        fs::write(&config, toml).unwrap();
        let mut args = vec!["--config", config.to_str().unwrap()];
        args.extend(extra);
        let mut gw = Self::start_with(&args);
        gw.config_dir = Some(dir);
        gw
    }

    /// A gateway that pings agents every second, so that a dead link is noticed in
    /// about three seconds.
    pub fn start_quick() -> Gateway {
        Self::start_configured("[agents]\nping_interval_secs = 1\n", &[])
    }

    /// Starts a gateway with defaults.
    pub fn start() -> Gateway {
        Self::start_with(&[])
    }

    /// The data directory (keys, certificate).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The development certificate, for `curl --cacert`.
    pub fn cacert(&self) -> PathBuf {
        self.dir.path().join("gateway.localhost.crt.pem")
    }

    /// `https://gateway.localhost:PORT`.
    pub fn url(&self) -> String {
        format!("https://gateway.localhost:{}", self.public_port)
    }

    /// `https://HOST_LABEL.gateway.localhost:PORT`.
    pub fn space_url(&self, label: &str, path: &str) -> String {
        format!(
            "https://{label}.gateway.localhost:{}{path}",
            self.public_port
        )
    }

    /// Runs the gateway binary's tools against this data directory.
    pub fn tool(&self, args: &[&str]) -> Output {
        Command::new(gateway_bin())
            .args(["--data-dir", self.dir.path().to_str().unwrap()])
            .args(args)
            .output()
            .expect("run gateway tool")
    }

    fn tool_stdout(&self, args: &[&str]) -> String {
        let out = self.tool(args);
        assert!(
            out.status.success(),
            "gateway {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// An agent token for USER--SPACE.
    pub fn agent_token(&self, user: &str, space: &str) -> String {
        self.tool_stdout(&["token", "agent", "--user", user, "--space", space])
    }

    /// A user token for `spaces` (patterns) and all services.
    pub fn user_token(&self, user: &str, spaces: &[&str]) -> String {
        let mut args = vec!["token", "user", "--user", user];
        for s in spaces {
            args.extend(["--space", s]);
        }
        self.tool_stdout(&args)
    }

    /// A user token with explicit services.
    pub fn user_token_for(&self, user: &str, space: &str, services: &str) -> String {
        self.tool_stdout(&[
            "token",
            "user",
            "--user",
            user,
            "--space",
            space,
            "--service",
            services,
        ])
    }

    /// The gateway's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Waits until `needle` has appeared `count` times in the log.
    pub fn wait_for_log(&self, needle: &str, count: usize) -> String {
        self.wait_for_file("stderr.log", needle, count)
    }

    fn wait_for_file(&self, file: &str, needle: &str, count: usize) -> String {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let text = fs::read_to_string(self.dir.path().join(file)).unwrap_or_default();
            if text.matches(needle).count() >= count {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "gateway never logged {needle:?} ({count}x); log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The gateway's process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the gateway is running").id()
    }

    /// Sends `signal` (such as `HUP`) to the gateway with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// `http://127.0.0.1:ADMIN_PORT`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    /// Waits up to `limit` for the gateway to exit; its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let child = self.child.as_mut().expect("the gateway was started");
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        let child = self.child.as_mut().expect("the gateway was started");
        child.try_wait().unwrap().is_none()
    }

    /// A `ProxyCommand` for OpenSSH that reaches USER/SPACE through this gateway.
    pub fn proxy_command(&self, target: &str, token: &str) -> String {
        format!(
            "{} --data-dir {} connect --server {} --token {token} {target}",
            gateway_bin().display(),
            self.dir.path().display(),
            self.url()
        )
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The link transport an agent is told to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// QUIC (`--transport quic`).
    Quic,
    /// TLS over TCP with yamux (`--transport tcp`).
    Tcp,
}

impl Transport {
    /// The `--transport` value and the gateway log's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Quic => "quic",
            Self::Tcp => "tcp",
        }
    }
}

/// Runs each named test function (taking a [`Transport`]) once per transport, as
/// `NAME::quic` and `NAME::tcp`.
#[macro_export]
macro_rules! on_both_transports {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn quic() {
                super::$name($crate::support::Transport::Quic)
            }
            #[test]
            fn tcp() {
                super::$name($crate::support::Transport::Tcp)
            }
        }
    )*};
}

/// A running `agent-link`.
#[derive(Debug)]
pub struct Agent {
    child: Child,
    dir: TempDir,
}

impl Agent {
    /// Starts an agent for USER--SPACE with its services given as `KNOT_*` variables,
    /// and waits until the gateway has registered it.
    pub fn start(
        gw: &Gateway,
        transport: Transport,
        user: &str,
        space: &str,
        env: &[(&str, String)],
    ) -> Agent {
        let before = registrations(gw, user, space, transport);
        let mut env = env.to_vec();
        env.push(("KNOT_AGENT_TRANSPORT", transport.name().to_owned()));
        let agent = Self::spawn(gw, &gw.agent_token(user, space), &env);
        wait_for_registrations(gw, user, space, transport, before + 1, START_TIMEOUT);
        agent
    }

    /// Starts an agent with an arbitrary token and does not wait for anything.
    pub fn spawn(gw: &Gateway, token: &str, env: &[(&str, String)]) -> Agent {
        Self::spawn_with_fingerprint(gw, &gw.fingerprint, token, env)
    }

    /// Like [`spawn`](Self::spawn), pinning `fingerprint` instead of the gateway's.
    pub fn spawn_with_fingerprint(
        gw: &Gateway,
        fingerprint: &str,
        token: &str,
        env: &[(&str, String)],
    ) -> Agent {
        let dir = TempDir::new("test-agent");
        let child = Command::new(agent_bin())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info,agent_link=debug")
            .env(
                "KNOT_AGENT_ENDPOINT",
                format!("127.0.0.1:{}", gw.agent_port),
            )
            .env("KNOT_AGENT_GATEWAY_FINGERPRINT", fingerprint)
            .env("KNOT_AGENT_TOKEN", token)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .expect("start agent-link");
        Agent { child, dir }
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Sends `signal` (such as `TERM`) to the agent with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Kills the agent with SIGKILL: its link ends without a word.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the agent process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the agent to exit and returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The gateway's log line fragment for a registration of USER--SPACE.
pub fn registered(user: &str, space: &str) -> String {
    format!("space registered space={user}--{space} ")
}

/// How many registrations of USER--SPACE on `transport` the gateway has logged.
pub fn registrations(gw: &Gateway, user: &str, space: &str, transport: Transport) -> usize {
    let (prefix, suffix) = (
        registered(user, space),
        format!("transport=\"{}\"", transport.name()),
    );
    gw.log()
        .lines()
        .filter(|l| l.contains(&prefix) && l.contains(&suffix))
        .count()
}

/// Waits until the gateway has logged `count` registrations of USER--SPACE on
/// `transport`, for at most `limit`.
pub fn wait_for_registrations(
    gw: &Gateway,
    user: &str,
    space: &str,
    transport: Transport,
    count: usize,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    while registrations(gw, user, space, transport) < count {
        assert!(
            Instant::now() < deadline,
            "no registration of {user}--{space} on {transport:?} within {limit:?}; log:\n{}",
            gw.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `curl` with the gateway's CA and returns its output.
pub fn curl(gw: &Gateway, args: &[&str]) -> Output {
    Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--cacert",
            gw.cacert().to_str().unwrap(),
        ])
        .args(args)
        .output()
        .expect("curl is installed by scripts/install-test-deps.sh")
}

/// The status code `curl` got for a GET of `url` with optional bearer `token`, and the body.
pub fn get(gw: &Gateway, url: &str, token: Option<&str>) -> (u16, String) {
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut args = vec!["--write-out", "\n%{http_code}", url];
    if let Some(h) = &auth {
        args.extend(["-H", h]);
    }
    let out = curl(gw, &args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}
