//! One-stream download throughput through the gateway on each link transport, beside
//! a direct connection to the same source in the same run.
//!
//! Run with `cargo build --release --bins && cargo bench -p benches --bench transport`.
//! It starts the release `gateway` (plain-HTTP listener, so that the link and the relay
//! are measured rather than the front door's TLS) and two `agent-link`s, one per
//! transport, all on loopback. The source is an HTTP server in this process that
//! answers every request with `SIZE` bytes. Tunables: `SIZE` and `ROUNDS`; the median
//! of the rounds is reported, and the ratio to direct.

// A benchmark measures wall time and prints its results.
#![allow(clippy::disallowed_methods, clippy::print_stdout, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Bytes per download.
const SIZE: u64 = 256 << 20;
/// Downloads per case.
const ROUNDS: usize = 5;

fn main() {
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release");
    let (gateway, agent) = (bin.join("gateway"), bin.join("agent-link"));
    assert!(
        gateway.exists() && agent.exists(),
        "build the release binaries first: cargo build --release --bins"
    );

    let source = serve_source();
    let data = std::env::temp_dir().join(format!("bench-transport-{}", std::process::id()));
    let (agent_port, tls_port, plain_port) = (free_port(), free_port(), free_port());
    let _gw = Proc(
        Command::new(&gateway)
            .args(["--data-dir", data.to_str().unwrap(), "run"])
            .args(["--agent-listen", &format!("127.0.0.1:{agent_port}")])
            .args(["--public-listen", &format!("127.0.0.1:{tls_port}")])
            .args(["--plain-listen", &format!("127.0.0.1:{plain_port}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(plain_port);
    let fingerprint = cert_fingerprint(&gateway, &data);
    let tool = |args: &[&str]| {
        let out = Command::new(&gateway)
            .args(["--data-dir", data.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let token = tool(&["token", "user", "--user", "bench", "--space", "bench--*"]);
    let mut agents = Vec::new();
    for transport in ["quic", "tcp"] {
        agents.push(Proc(
            Command::new(&agent)
                .env("KNOT_AGENT_ENDPOINT", format!("127.0.0.1:{agent_port}"))
                .env("KNOT_AGENT_GATEWAY_FINGERPRINT", &fingerprint)
                .env(
                    "KNOT_AGENT_TOKEN",
                    tool(&["token", "agent", "--user", "bench", "--space", transport]),
                )
                .env("KNOT_AGENT_TRANSPORT", transport)
                .env("KNOT_HTTP_PORT", source.to_string())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        ));
    }
    std::thread::sleep(Duration::from_secs(2));

    println!(
        "one stream, {} MiB per download, median of {ROUNDS}",
        SIZE >> 20
    );
    let direct = median(|| download(source, &format!("127.0.0.1:{source}"), None));
    println!("{:10} {:>9.0} MiB/s  ratio 1.00", "direct", direct);
    for transport in ["quic", "tcp"] {
        let host = format!("bench--{transport}--{source}.gateway.localhost");
        let rate = median(|| download(plain_port, &host, Some(&token)));
        println!(
            "{:10} {:>9.0} MiB/s  ratio {:.2}",
            format!("via {transport}"),
            rate,
            rate / direct
        );
    }
    let _ = std::fs::remove_dir_all(&data);
}

/// Median MiB/s over `ROUNDS` downloads.
fn median(mut f: impl FnMut() -> Duration) -> f64 {
    let mut rates: Vec<f64> = (0..ROUNDS)
        .map(|_| (SIZE as f64 / (1 << 20) as f64) / f().as_secs_f64())
        .collect();
    rates.sort_by(|a, b| a.partial_cmp(b).unwrap());
    rates[ROUNDS / 2]
}

/// GETs `SIZE` bytes from `host` through `port`; returns the time to the last byte.
fn download(port: u16, host: &str, token: Option<&str>) -> Duration {
    let start = Instant::now();
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_nodelay(true).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        conn,
        "GET / HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::with_capacity(256 * 1024, conn);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    while line != "\r\n" {
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    while total < SIZE {
        let n = reader.read(&mut buf).unwrap();
        assert!(n > 0, "download cut at {total} bytes");
        total += n as u64;
    }
    start.elapsed()
}

/// An HTTP server that answers every request with `SIZE` bytes.
fn serve_source() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                conn.set_nodelay(true).unwrap();
                let mut head = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                while head.read_line(&mut line).unwrap_or(0) > 2 {
                    line.clear();
                }
                let chunk = vec![0x5au8; 60 * 1024];
                let _ = write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\n\r\n");
                let mut left = SIZE;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    if conn.write_all(&chunk[..n]).is_err() {
                        return;
                    }
                    left -= n as u64;
                }
            });
        }
    });
    port
}

fn cert_fingerprint(gateway: &std::path::Path, data: &std::path::Path) -> String {
    let _ = gateway;
    let cert = data.join("gateway.localhost.crt.pem");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -in {} -outform der | sha256sum | cut -d' ' -f1",
            cert.display()
        ))
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
