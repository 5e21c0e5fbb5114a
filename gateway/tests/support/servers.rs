//! Real servers (sshd, nginx, Xvfb + x11vnc + websockify) started on
//! 127.0.0.1 for end-to-end tests.
//!
//! Every server lives in its own temporary directory (config, keys, logs,
//! pid files) and runs in its own process group, so dropping the handle stops
//! the server together with any children it forked and removes the directory.
//! `start` returns only once the server accepts TCP connections; on failure it
//! panics with the server's log so the cause shows up in the test output.
//!
//! Only std is used, so the module can be included by any integration test.
//! The system binaries come from `scripts/install-test-deps.sh`.

// Each integration-test binary uses only part of this module.
#![allow(dead_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a server may take to start accepting connections. Generous
/// because CI machines have two cores shared with the compiler.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server gets to exit after SIGTERM before it is SIGKILLed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
const POLL_INTERVAL: Duration = Duration::from_millis(25);

// ---------------------------------------------------------------------------
// Temporary directories and ports
// ---------------------------------------------------------------------------

/// A directory under `std::env::temp_dir()`, removed with its contents on
/// drop. Mode 0700 because it holds private keys.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("{label}-{}-{n}-{nanos}", std::process::id());
        let path = std::env::temp_dir().join(name);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .unwrap_or_else(|e| panic!("create temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago. The kernel may hand
/// the same port out again once our probe socket is closed, so ports already
/// given to a server of this process are skipped: parallel tests would
/// otherwise race for them.
pub fn free_port() -> u16 {
    // One bit per port; lock-free so parallel tests never wait on each other.
    static HANDED_OUT: [AtomicU64; 1024] = [const { AtomicU64::new(0) }; 1024];
    loop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        let bit = 1u64 << (port % 64);
        if HANDED_OUT[usize::from(port / 64)].fetch_or(bit, Ordering::Relaxed) & bit == 0 {
            return port;
        }
    }
}

/// The workspace bans `Instant::now` in favour of tokio's pausable clock,
/// but these are real processes that run on the real clock.
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

/// How a server is stopped on drop.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Stop {
    /// SIGTERM to the server, giving it time to clean up (Xvfb removes its
    /// lock file and socket only then), and SIGKILL if it does not exit.
    Graceful,
    /// SIGKILL at once, for servers with nothing to clean up.
    Kill,
}

/// A spawned server process, stopped and reaped on drop. Its process group
/// is SIGKILLed last so no forked helper outlives it.
#[derive(Debug)]
struct ServerProcess {
    name: String,
    child: Child,
    log: PathBuf,
    stop: Stop,
}

impl ServerProcess {
    /// Spawns `command` with stdout and stderr appended to `log`.
    fn spawn(name: &str, mut command: Command, log: &Path, stop: Stop) -> ServerProcess {
        let out = open_log(log);
        let err = out.try_clone().expect("clone log file handle");
        command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Own process group, so drop can also kill forked helpers
            // (websockify handlers). The price: servers outlive a test run
            // that is interrupted with Ctrl-C, since no drop runs then.
            .process_group(0);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({command:?}): {e}"));
        ServerProcess {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            stop,
        }
    }

    fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits until `ready` holds, polling. Fails if the process exits first
    /// or the deadline passes; the error carries the log for the panic.
    fn wait_until(&mut self, what: &str, mut ready: impl FnMut() -> bool) -> Result<(), String> {
        let deadline = now() + START_TIMEOUT;
        loop {
            if ready() {
                return Ok(());
            }
            if self.has_exited() {
                return Err(self.failure(&format!("exited before {what}")));
            }
            if now() >= deadline {
                return Err(self.failure(&format!("not {what} after {START_TIMEOUT:?}")));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits until 127.0.0.1:`port` accepts connections, else panics.
    fn wait_for_port(&mut self, port: u16) {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let accepting = || TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok();
        if let Err(message) = self.wait_until(&format!("accepting on {addr}"), accepting) {
            panic!("{message}");
        }
    }

    fn failure(&self, what: &str) -> String {
        format!(
            "{} {what}\n--- {} ---\n{}",
            self.name,
            self.log.display(),
            read_log(&self.log)
        )
    }

    /// Sends `signal` to the process, or with `group` to its whole group.
    fn signal(&self, signal: &str, group: bool) {
        let pid = self.child.id();
        let target = if group {
            format!("-{pid}")
        } else {
            pid.to_string()
        };
        // `kill` from procps: std can only SIGKILL a single child.
        let _ = Command::new("kill")
            .args([signal, "--", &target])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let started = now();
        if self.stop == Stop::Graceful {
            // Only the leader: it stops its own children, and a group-wide
            // signal would race their exit against its shutdown.
            self.signal("-TERM", false);
            while !self.has_exited() && started.elapsed() < STOP_TIMEOUT {
                thread::sleep(POLL_INTERVAL);
            }
        }
        // Sweep up anything left in the group (stuck leader or children).
        self.signal("-KILL", true);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn open_log(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open log {}: {e}", path.display()))
}

fn read_log(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("(cannot read log: {e})"),
    }
}

/// Runs a short helper command to completion and returns its stdout.
fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

fn write_file(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Absolute path of a system program. sshd and nginx live in /usr/sbin,
/// which ordinary users' PATH often lacks; sshd also re-executes itself and
/// so insists on an absolute path.
fn system_program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let sbin = ["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(sbin)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{name} not found; run scripts/install-test-deps.sh"))
}

fn is_root() -> bool {
    run("id", &["-u"]).trim() == "0"
}

// ---------------------------------------------------------------------------
// sshd
// ---------------------------------------------------------------------------

/// An OpenSSH server on 127.0.0.1 that accepts the current user with a
/// throwaway ed25519 key (no passwords).
#[derive(Debug)]
pub struct Sshd {
    process: ServerProcess,
    port: u16,
    user: String,
    identity: PathBuf,
    host_public_key: String,
    dir: TempDir,
}

impl Sshd {
    pub fn start() -> Sshd {
        let dir = TempDir::new("test-sshd");
        let port = free_port();
        let host_key = dir.path().join("host_ed25519");
        let identity = dir.path().join("id_ed25519");
        generate_key(&host_key);
        generate_key(&identity);
        let authorized_keys = dir.path().join("authorized_keys");
        fs::copy(identity.with_extension("pub"), &authorized_keys).expect("authorized_keys");

        let config = dir.path().join("sshd_config");
        write_file(&config, &sshd_config(dir.path(), port, &host_key));
        ensure_privsep_dir();

        let log = dir.path().join("sshd.log");
        let mut command = Command::new(system_program("sshd"));
        // -D: stay in the foreground so we own the process;
        // -e -E: log to the file rather than syslog, which tests never see.
        command.args(["-D", "-e", "-E", path_str(&log), "-f", path_str(&config)]);
        let mut process = ServerProcess::spawn("sshd", command, &log, Stop::Graceful);
        process.wait_for_port(port);

        let host_public_key = fs::read_to_string(host_key.with_extension("pub"))
            .expect("host public key")
            .trim()
            .to_string();
        Sshd {
            process,
            port,
            user: run("id", &["-un"]).trim().to_string(),
            identity,
            host_public_key,
            dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user sshd lets in: whoever runs the tests.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Private key accepted by this sshd.
    pub fn identity_file(&self) -> &Path {
        &self.identity
    }

    /// Home directory of `user()`, where relative scp/sftp paths land.
    pub fn home_dir(&self) -> PathBuf {
        let entry = run("getent", &["passwd", &self.user]);
        let home = entry
            .trim()
            .split(':')
            .nth(5)
            .expect("home field in passwd");
        PathBuf::from(home)
    }

    /// A known_hosts line for this server under `host_alias`, e.g.
    /// `"[127.0.0.1]:2222"`, for tests that want strict host key checking.
    pub fn known_hosts_line(&self, host_alias: &str) -> String {
        format!("{host_alias} {}", self.host_public_key)
    }

    /// Options for `ssh`/`scp` to log in non-interactively with
    /// `identity_file()`; callers add the port and e.g. `-o ProxyCommand=`.
    /// `-F /dev/null` keeps the machine's ssh_config out of the tests.
    pub fn ssh_base_args(&self) -> Vec<String> {
        let mut args = vec![
            "-F".to_string(),
            "/dev/null".to_string(),
            "-i".to_string(),
            path_str(&self.identity).to_string(),
        ];
        for option in [
            "IdentitiesOnly=yes",
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "BatchMode=yes",
            "LogLevel=ERROR",
        ] {
            args.push("-o".to_string());
            args.push(option.to_string());
        }
        args
    }

    /// sshd's log so far (useful in assertion messages).
    pub fn log(&self) -> String {
        read_log(&self.process.log)
    }
}

fn generate_key(path: &Path) {
    let no_passphrase = ["-q", "-t", "ed25519", "-N", "", "-C", "test"];
    run(
        "ssh-keygen",
        &[&no_passphrase[..], &["-f", path_str(path)]].concat(),
    );
}

fn sshd_config(dir: &Path, port: u16, host_key: &Path) -> String {
    let in_dir = |name: &str| path_str(&dir.join(name)).to_string();
    format!(
        "ListenAddress 127.0.0.1\n\
         Port {port}\n\
         HostKey \"{host_key}\"\n\
         PidFile \"{pid}\"\n\
         AuthorizedKeysFile \"{authorized_keys}\"\n\
         # The temp dir and keys are not laid out the way StrictModes wants.\n\
         StrictModes no\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         # PAM needs root and the system's service config; keys suffice.\n\
         UsePAM no\n\
         PermitRootLogin prohibit-password\n\
         # Built into sshd, so no distribution-specific sftp-server path;\n\
         # modern scp speaks SFTP.\n\
         Subsystem sftp internal-sftp\n\
         PrintMotd no\n\
         PrintLastLog no\n\
         LogLevel VERBOSE\n",
        host_key = path_str(host_key),
        pid = in_dir("sshd.pid"),
        authorized_keys = in_dir("authorized_keys"),
    )
}

/// sshd refuses to start as root without its privilege separation directory,
/// which only the system service normally creates. Unprivileged runs neither
/// need nor can create it, so errors are ignored.
fn ensure_privsep_dir() {
    let _ = fs::DirBuilder::new()
        .mode(0o755)
        .recursive(true)
        .create("/run/sshd");
}

// ---------------------------------------------------------------------------
// nginx
// ---------------------------------------------------------------------------

/// nginx serving a directory over plain HTTP on 127.0.0.1.
#[derive(Debug)]
pub struct Nginx {
    process: ServerProcess,
    port: u16,
    dir: TempDir,
}

impl Nginx {
    pub fn start(root: &Path) -> Nginx {
        let dir = TempDir::new("test-nginx");
        let port = free_port();
        let root = root
            .canonicalize()
            .unwrap_or_else(|e| panic!("nginx root {}: {e}", root.display()));
        let config = dir.path().join("nginx.conf");
        write_file(&config, &nginx_config(dir.path(), port, &root));

        let log = dir.path().join("error.log");
        let mut command = Command::new(system_program("nginx"));
        // -e: without it nginx first opens /var/log/nginx/error.log, which
        // fails for non-root users before the config is even read.
        command.args(["-p", path_str(dir.path()), "-c", path_str(&config)]);
        command.args(["-e", path_str(&log)]);
        let mut process = ServerProcess::spawn("nginx", command, &log, Stop::Graceful);
        process.wait_for_port(port);
        Nginx { process, port, dir }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn log(&self) -> String {
        read_log(&self.process.log)
    }
}

fn nginx_config(dir: &Path, port: u16, root: &Path) -> String {
    let in_dir = |name: &str| path_str(&dir.join(name)).to_string();
    // Temp paths default to /var/lib/nginx, which is root-only and shared.
    let temp_paths: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .map(|kind| format!("    {kind}_temp_path \"{}\";\n", in_dir(kind)))
        .collect();
    // Inert while master_process is off, but should it be turned on the
    // workers would otherwise run as "nobody", who cannot enter our 0700
    // temp dirs. Non-root nginx ignores `user` with a warning, so omit it.
    let user = if is_root() { "user root;\n" } else { "" };
    let mime = Path::new("/etc/nginx/mime.types");
    let mime = if mime.exists() {
        format!("    include {};\n", mime.display())
    } else {
        String::new()
    };
    format!(
        r#"{user}daemon off;
master_process off;
worker_processes 1;
pid "{pid}";
error_log "{error_log}" info;
events {{ worker_connections 256; }}
http {{
{temp_paths}{mime}    default_type application/octet-stream;
    access_log off;
    sendfile on;
    keepalive_timeout 65;
    server {{
        listen 127.0.0.1:{port};
        root "{root}";
    }}
}}
"#,
        pid = in_dir("nginx.pid"),
        error_log = in_dir("error.log"),
        root = path_str(root),
    )
}

// ---------------------------------------------------------------------------
// VNC desktop: Xvfb + x11vnc + websockify
// ---------------------------------------------------------------------------

/// A virtual X display served over VNC (x11vnc) and over WebSocket
/// (websockify in front of the VNC port), all on 127.0.0.1.
#[derive(Debug)]
pub struct VncDesktop {
    // Declared in stop order: fields drop top to bottom.
    websockify: ServerProcess,
    x11vnc: ServerProcess,
    xvfb: ServerProcess,
    display: u32,
    vnc_port: u16,
    websockify_port: u16,
    dir: TempDir,
}

impl VncDesktop {
    pub fn start() -> VncDesktop {
        let dir = TempDir::new("test-vnc");
        let (xvfb, display) = start_xvfb(dir.path());
        let vnc_port = free_port();
        let x11vnc = start_x11vnc(dir.path(), display, vnc_port);
        let websockify_port = free_port();
        let websockify = start_websockify(dir.path(), websockify_port, vnc_port);
        VncDesktop {
            websockify,
            x11vnc,
            xvfb,
            display,
            vnc_port,
            websockify_port,
            dir,
        }
    }

    pub fn vnc_port(&self) -> u16 {
        self.vnc_port
    }

    pub fn websockify_port(&self) -> u16 {
        self.websockify_port
    }

    /// X display name, e.g. ":90", for starting clients on the desktop.
    pub fn display(&self) -> String {
        format!(":{}", self.display)
    }
}

/// Starts Xvfb on the first display number, from 90 up, that is not in use.
/// The in-process counter keeps parallel tests apart; Xvfb's own lock file
/// catches other processes, in which case the next number is tried.
fn start_xvfb(dir: &Path) -> (ServerProcess, u32) {
    static NEXT_DISPLAY: AtomicU32 = AtomicU32::new(90);
    let mut failures = String::new();
    for _ in 0..50 {
        let display = NEXT_DISPLAY.fetch_add(1, Ordering::Relaxed);
        let socket = PathBuf::from(format!("/tmp/.X11-unix/X{display}"));
        let lock = PathBuf::from(format!("/tmp/.X{display}-lock"));
        if socket.exists() || lock.exists() {
            continue;
        }
        let log = dir.join(format!("xvfb-{display}.log"));
        let mut command = Command::new(system_program("Xvfb"));
        command.arg(format!(":{display}"));
        // -noreset: our readiness probe is the last client to disconnect,
        // which would otherwise make the server reset itself.
        command.args(["-screen", "0", "1024x768x24"]);
        command.args(["-nolisten", "tcp", "-noreset"]);
        let mut process = ServerProcess::spawn("Xvfb", command, &log, Stop::Graceful);
        match process.wait_until("listening", || UnixStream::connect(&socket).is_ok()) {
            Ok(()) => return (process, display),
            Err(message) => failures.push_str(&message),
        }
    }
    panic!("no free X display for Xvfb:\n{failures}");
}

fn start_x11vnc(dir: &Path, display: u32, port: u16) -> ServerProcess {
    let log = dir.join("x11vnc.log");
    let mut command = Command::new(system_program("x11vnc"));
    command.args(["-display", &format!(":{display}")]);
    command.args(["-rfbport", &port.to_string()]);
    // -noipv6: the port was only checked free on IPv4.
    command.args(["-localhost", "-noipv6", "-nopw", "-forever", "-shared"]);
    command.arg("-quiet");
    let mut process = ServerProcess::spawn("x11vnc", command, &log, Stop::Graceful);
    process.wait_for_port(port);
    process
}

fn start_websockify(dir: &Path, port: u16, vnc_port: u16) -> ServerProcess {
    let log = dir.join("websockify.log");
    let mut command = Command::new(system_program("websockify"));
    // Debian's websockify package ships no noVNC; serve it only if present.
    let web = Path::new("/usr/share/novnc");
    if web.is_dir() {
        command.arg(format!("--web={}", web.display()));
    }
    command.arg(format!("127.0.0.1:{port}"));
    command.arg(format!("127.0.0.1:{vnc_port}"));
    // websockify now and then ignores SIGTERM until the stop timeout (seen
    // in about one stop in ten) and keeps no state, so it is just killed.
    let mut process = ServerProcess::spawn("websockify", command, &log, Stop::Kill);
    process.wait_for_port(port);
    process
}

// ---------------------------------------------------------------------------
// File helpers
// ---------------------------------------------------------------------------

/// Writes `bytes` random bytes to `path`, so transfers cannot be faked by
/// compression or zero pages.
pub fn write_random_file(path: &Path, bytes: u64) {
    const CHUNK: usize = 1 << 20;
    let mut random = File::open("/dev/urandom").expect("open /dev/urandom");
    let mut out = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let mut buffer = vec![0u8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        random
            .read_exact(&mut buffer[..n])
            .expect("read /dev/urandom");
        out.write_all(&buffer[..n]).expect("write random file");
        left -= n as u64;
    }
}

/// The SHA-256 of a file as lowercase hex, computed by `sha256sum`.
pub fn sha256_file(path: &Path) -> String {
    let output = run("sha256sum", &[path_str(path)]);
    let hex = output.split_whitespace().next().unwrap_or_default();
    assert_eq!(hex.len(), 64, "unexpected sha256sum output: {output:?}");
    hex.to_string()
}

// ---------------------------------------------------------------------------
// Small in-process services
// ---------------------------------------------------------------------------

/// A TCP service in a thread of the test process, one thread per connection, that
/// lives as long as the test binary.
fn serve_in_thread(handle: fn(TcpStream)) -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("local_addr").port();
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            thread::spawn(move || handle(conn));
        }
    });
    port
}

/// The byte at `offset` of every [`stream_server`] body.
pub fn pattern_byte(offset: u64) -> u8 {
    (offset % 251) as u8
}

/// An HTTP/1.0 service whose every response is `STREAM_BODY` bytes of [`pattern_byte`]s with
/// neither a length nor chunking: the body ends when the connection does, so only a
/// reset can tell a cut body from a whole one. Returns the port.
pub fn stream_server() -> u16 {
    serve_in_thread(|mut conn| {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match conn.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let mut body = vec![0u8; 251 * 1024];
        for (i, b) in body.iter_mut().enumerate() {
            *b = pattern_byte(i as u64);
        }
        let _ = conn.write_all(b"HTTP/1.0 200 OK\r\n\r\n");
        let mut left = STREAM_BODY;
        while left > 0 {
            let n = left.min(body.len() as u64) as usize;
            if conn.write_all(&body[..n]).is_err() {
                return;
            }
            left -= n as u64;
        }
    })
}

/// Bytes in every [`stream_server`] response: 256 MiB.
pub const STREAM_BODY: u64 = 256 << 20;

/// A TCP service that never answers: it reads and drops what comes until the client
/// goes, like a hung web service. Returns the port.
pub fn silent_server() -> u16 {
    serve_in_thread(|mut conn| {
        let _ = std::io::copy(&mut conn, &mut std::io::sink());
    })
}

/// The `101` with which the upgrading test services accept any request.
const SWITCH: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: knot-test\r\n\r\n";

/// Bytes of every [`answer_then_close_server`] answer.
pub const EARLY_ANSWER: u64 = 5 << 20;

/// A TCP service that answers before the client has finished sending, as an HTTP
/// server refusing an upload does: after the client's first bytes it sends
/// `EARLY_ANSWER` bytes of [`pattern_byte`]s and its end-of-file, and a second later
/// closes without reading the rest, so the client's further bytes meet a reset.
/// Returns the port.
pub fn answer_then_close_server() -> u16 {
    serve_in_thread(answer_then_close)
}

/// An HTTP service that accepts any request as an upgrade (`101`), then behaves as
/// [`answer_then_close_server`] on the upgraded connection. Returns the port.
pub fn upgrade_answer_then_close_server() -> u16 {
    serve_in_thread(|mut conn| {
        if !read_head(&mut conn) {
            return;
        }
        if conn.write_all(SWITCH).is_ok() {
            answer_then_close(conn);
        }
    })
}

/// An HTTP service that accepts any request as an upgrade (`101`), then reads the
/// upgraded connection to its end; how each connection ended comes out of the
/// receiver (see [`reporting_server`]). Returns the port too.
pub fn upgrade_sink_server() -> (u16, std::sync::mpsc::Receiver<String>) {
    reporting_server(|conn| read_head(conn) && conn.write_all(SWITCH).is_ok())
}

/// A TCP service that answers at once with [`HALF_CLOSE_ANSWER`] bytes of `A`, ends
/// its side, and reads what the client sends to its end; how each connection ended
/// comes out of the receiver (see [`reporting_server`]). Returns the port too.
pub fn half_close_then_read_server() -> (u16, std::sync::mpsc::Receiver<String>) {
    reporting_server(|conn| {
        conn.write_all(&[b'A'; HALF_CLOSE_ANSWER]).is_ok()
            && conn.shutdown(std::net::Shutdown::Write).is_ok()
    })
}

/// [`half_close_then_read_server`] behind an HTTP upgrade: it accepts any request
/// with a `101` first. Returns the port and the receiver.
pub fn upgrade_half_close_then_read_server() -> (u16, std::sync::mpsc::Receiver<String>) {
    reporting_server(|conn| {
        read_head(conn)
            && conn.write_all(SWITCH).is_ok()
            && conn.write_all(&[b'A'; HALF_CLOSE_ANSWER]).is_ok()
            && conn.shutdown(std::net::Shutdown::Write).is_ok()
    })
}

/// Bytes of every [`half_close_then_read_server`] answer.
pub const HALF_CLOSE_ANSWER: usize = 1024;

/// A service that runs `start` on each connection, then reads it to its end and
/// sends how it ended: `end-of-file after N bytes`, or `KIND after N bytes` for a read
/// error.
fn reporting_server(start: fn(&mut TcpStream) -> bool) -> (u16, std::sync::mpsc::Receiver<String>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("local_addr").port();
    let (ends, ended) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let ends = ends.clone();
            thread::spawn(move || {
                if !start(&mut conn) {
                    return;
                }
                let mut buf = vec![0u8; 64 * 1024];
                let mut total = 0;
                let end = loop {
                    match conn.read(&mut buf) {
                        Ok(0) => break format!("end-of-file after {total} bytes"),
                        Ok(n) => total += n,
                        Err(e) => break format!("{:?} after {total} bytes", e.kind()),
                    }
                };
                let _ = ends.send(end);
            });
        }
    });
    (port, ended)
}

/// Reads a request head byte by byte, up to its blank line; false if the connection
/// ended first.
fn read_head(conn: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return false,
        }
    }
    true
}

/// Waits for the client's first byte, sends [`EARLY_ANSWER`] bytes of
/// [`pattern_byte`]s, ends its side and closes a second later with the client's bytes
/// unread, which resets the connection.
fn answer_then_close(mut conn: TcpStream) {
    let mut first = [0u8; 1];
    if conn.read(&mut first).unwrap_or(0) == 0 {
        return;
    }
    let answer: Vec<u8> = (0..EARLY_ANSWER).map(pattern_byte).collect();
    if conn.write_all(&answer).is_err() {
        return;
    }
    let _ = conn.shutdown(std::net::Shutdown::Write);
    thread::sleep(Duration::from_secs(1));
}

/// A TCP service that says `ready`, reads 100 KB of what the client sends and closes
/// with the rest unread, which resets the connection. Returns the port.
pub fn read_some_then_close_server() -> u16 {
    serve_in_thread(|mut conn| {
        let _ = conn.write_all(b"ready\n");
        let mut some = vec![0u8; 100 * 1024];
        let _ = conn.read_exact(&mut some);
    })
}

/// A TCP service that reads until the client's end-of-file, then sends back everything
/// it read and closes: it answers only a client that half-closes. Returns the port.
pub fn echo_after_eof_server() -> u16 {
    serve_in_thread(|mut conn| {
        let mut all = Vec::new();
        if conn.read_to_end(&mut all).is_ok() {
            let _ = conn.write_all(&all);
        }
    })
}
