//! Limits, each with a clear answer when hit, and clients that try to exhaust the
//! gateway: slow heads, endless headers, thousands of idle connections. Other users
//! go on being served.

// Helpers outside #[test] functions unwrap too: a failure is a failed test. The
// processes under test run on the real clock, so the test measures with it too, and
// prints what it measured.
#![allow(clippy::unwrap_used, clippy::disallowed_methods, clippy::print_stdout)]

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use support::servers::{
    echo_after_eof_server, sha256_file, silent_server, stream_server, write_random_file, Nginx,
    TempDir,
};
use support::{gateway_bin, ws, Agent, Gateway, Transport};

/// A space serving nginx's page, and a token for it.
struct Web {
    _root: TempDir,
    nginx: Nginx,
    _agent: Agent,
    token: String,
}

fn web(gw: &Gateway) -> Web {
    let root = TempDir::new("test-www");
    std::fs::write(root.path().join("index.html"), "hello from the space\n").unwrap();
    let nginx = Nginx::start(root.path());
    let agent = Agent::start(
        gw,
        Transport::Quic,
        "alice",
        "web",
        &[("KNOT_HTTP_PORT", nginx.port().to_string())],
    );
    let token = gw.user_token("alice", &["alice--web"]);
    Web {
        _root: root,
        nginx,
        _agent: agent,
        token,
    }
}

/// Another user's request: it must be served, and how long it took.
fn served(gw: &Gateway, web: &Web) -> Duration {
    let url = gw.space_url(&format!("alice--web--{}", web.nginx.port()), "/");
    let started = Instant::now();
    let (code, body) = support::get(gw, &url, Some(&web.token));
    assert_eq!((code, body.as_str()), (200, "hello from the space\n"));
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_head_gets_408_while_others_are_served() {
    let gw = Gateway::start_configured("[public]\nhead_timeout_secs = 2\n", &[]);
    let web = tokio::task::block_in_place(|| web(&gw));

    // A slow-loris client: a header line now and then, never the end of the head.
    let tls = ws::tls_connect(&gw, "gateway.localhost").await;
    let (mut read, mut write) = tokio::io::split(tls);
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        let _ = write
            .write_all(b"GET / HTTP/1.1\r\nHost: gateway.localhost\r\n")
            .await;
        for i in 0..40 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if write
                .write_all(format!("X-Slow-{i}: a\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let meanwhile = tokio::task::block_in_place(|| served(&gw, &web));
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), read.read_to_end(&mut answer)).await;
    let took = started.elapsed();
    trickle.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "answer after {took:?}: {answer:?}"
    );
    assert!(answer.contains("within 2 s"), "{answer}");
    println!("slow head answered 408 after {took:?}; another user was served in {meanwhile:?}");
}

#[test]
fn an_endless_header_gets_431_and_the_next_request_is_served() {
    let gw = Gateway::start();
    let web = web(&gw);
    let long = "a".repeat(100 * 1024);
    let out = support::curl(
        &gw,
        &[
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_code}",
            "-H",
            &format!("X-Endless: {long}"),
            &gw.url(),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "431");
    served(&gw, &web);
}

#[test]
fn ten_thousand_idle_connections_do_not_slow_other_users() {
    const IDLE: usize = 10_000;
    let gw = Gateway::start();
    let web = web(&gw);
    let before = served(&gw, &web);

    // Connections that never say anything: the gateway holds each in its TLS
    // handshake until the handshake's deadline.
    let started = Instant::now();
    let port = gw.public_port;
    let openers: Vec<_> = (0..10)
        .map(|_| {
            thread::spawn(move || {
                (0..IDLE / 10)
                    .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let idle: Vec<TcpStream> = openers
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let opened = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(30);
    while gauge(&gw, "gateway_connections") < IDLE as f64 {
        assert!(
            Instant::now() < deadline,
            "the gateway holds {} of {IDLE} connections",
            gauge(&gw, "gateway_connections")
        );
        thread::sleep(Duration::from_millis(50));
    }
    let during: Vec<Duration> = (0..5).map(|_| served(&gw, &web)).collect();
    println!(
        "{IDLE} idle connections opened in {opened:?}; a request took {before:?} before, \
         {during:?} during"
    );
    assert!(
        during.iter().all(|d| *d < Duration::from_secs(5)),
        "requests slowed to {during:?} by idle connections"
    );
    drop(idle);
}

/// A gauge's value from `/metrics`.
fn gauge(gw: &Gateway, name: &str) -> f64 {
    let out = support::curl(gw, &[&gw.admin_url("/metrics")]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn past_the_connection_limit_a_client_gets_503_and_then_service_again() {
    let gw = Gateway::start_configured("[public]\nmax_connections = 4\n", &[]);
    let web = web(&gw);
    let held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(("127.0.0.1", gw.public_port)).unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while gauge(&gw, "gateway_connections") < 4.0 {
        assert!(
            Instant::now() < deadline,
            "the held connections never counted"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let url = gw.space_url(&format!("alice--web--{}", web.nginx.port()), "/");
    let (code, body) = support::get(&gw, &url, Some(&web.token));
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("limit of 4 connections"), "{body}");

    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while gauge(&gw, "gateway_connections") > 0.0 {
        assert!(
            Instant::now() < deadline,
            "closed connections still counted"
        );
        thread::sleep(Duration::from_millis(20));
    }
    served(&gw, &web);
    assert!(gauge(&gw, "gateway_connections_refused_total") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_stream_limit_of_a_link_a_user_gets_503() {
    let echo = echo_after_eof_server();
    let gw = Gateway::start_configured("[agents]\nmax_streams_per_link = 2\n", &[]);
    let _agent = tokio::task::block_in_place(|| {
        Agent::start(
            &gw,
            Transport::Quic,
            "alice",
            "dev",
            &[("KNOT_TCP_PORT", echo.to_string())],
        )
    });
    let token = tokio::task::block_in_place(|| gw.user_token_for("alice", "alice--dev", "tcp"));
    let url = format!(
        "wss://gateway.localhost:{}/tcp/alice/dev/{echo}",
        gw.public_port
    );
    let first = ws::connect(&gw, &url, Some(&token), None).await.unwrap();
    let _second = ws::connect(&gw, &url, Some(&token), None).await.unwrap();
    assert_eq!(
        ws::connect(&gw, &url, Some(&token), None).await.err(),
        Some(503),
        "a third stream on a link limited to two"
    );
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ws::connect(&gw, &url, Some(&token), None).await {
            Ok(_) => break,
            Err(503) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(code) => panic!("after a stream closed: {code}"),
        }
    }
}

#[test]
fn past_the_link_limit_an_agent_is_told_and_the_first_space_works_on() {
    let gw = Gateway::start_configured("[agents]\nmax_links = 1\n", &[]);
    let web = web(&gw);
    let second = Agent::spawn(
        &gw,
        &gw.agent_token("bob", "other"),
        &[("KNOT_HTTP_PORT", "8080".to_owned())],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !second.log().contains("limit of 1 links") {
        assert!(
            Instant::now() < deadline,
            "the second agent was not told; its log:\n{}",
            second.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
    let metrics = support::curl(&gw, &[&gw.admin_url("/metrics")]);
    assert!(String::from_utf8_lossy(&metrics.stdout)
        .contains("gateway_registrations_total{result=\"link_limit\"}"));
    served(&gw, &web);
}

#[test]
fn an_idle_relay_is_closed_with_a_reason() {
    let echo = echo_after_eof_server();
    let gw = Gateway::start_configured("[public]\nstream_idle_timeout_secs = 2\n", &[]);
    let _agent = Agent::start(
        &gw,
        Transport::Tcp,
        "alice",
        "dev",
        &[("KNOT_TCP_PORT", echo.to_string())],
    );
    let token = gw.user_token_for("alice", "alice--dev", "tcp");
    let started = Instant::now();
    let mut client = Command::new(gateway_bin())
        .args(["--data-dir", gw.data_dir().to_str().unwrap()])
        .args(["connect", "--server", &gw.url(), "--token", &token])
        .args(["--port", &echo.to_string(), "alice/dev"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = client.stdin.take().unwrap();
    stdin.write_all(b"one message, then silence").unwrap();
    let out = client.wait_with_output().unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an idle close is not a clean end");
    assert!(stderr.contains("no data either way for 2 s"), "{stderr}");
    assert!(took >= Duration::from_secs(2), "closed after {took:?}");
    println!("idle relay closed after {took:?}: {}", stderr.trim());
    drop(stdin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_message_over_the_limit_closes_with_1009() {
    let echo = echo_after_eof_server();
    let gw = Gateway::start();
    let _agent = tokio::task::block_in_place(|| {
        Agent::start(
            &gw,
            Transport::Quic,
            "alice",
            "dev",
            &[("KNOT_TCP_PORT", echo.to_string())],
        )
    });
    let token = tokio::task::block_in_place(|| gw.user_token_for("alice", "alice--dev", "tcp"));
    let url = format!(
        "wss://gateway.localhost:{}/tcp/alice/dev/{echo}",
        gw.public_port
    );
    let mut ws = ws::connect(&gw, &url, Some(&token), None).await.unwrap();
    let _ = ws.send(Message::Binary(vec![7u8; 2 << 20].into())).await;
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => {}
            other => panic!("expected a Close, got {other:?}"),
        }
    };
    let close = close.expect("a close frame with a code");
    assert_eq!(close.code, CloseCode::Size);
    assert_eq!(close.reason.as_str(), "message larger than 1048576 bytes");
}

/// A web service in the space that takes a request and never answers does not hold the
/// user, or the link's stream, forever: after the idle limit the user gets 502.
#[test]
fn a_request_the_space_never_answers_gets_502_after_the_idle_limit() {
    let port = silent_server();
    let gw = Gateway::start_configured("[public]\nstream_idle_timeout_secs = 2\n", &[]);
    let _agent = Agent::start(
        &gw,
        Transport::Quic,
        "alice",
        "dev",
        &[("KNOT_HTTP_PORT", port.to_string())],
    );
    let token = gw.user_token("alice", &["alice--dev"]);
    let started = Instant::now();
    let (status, body) = support::get(
        &gw,
        &gw.space_url(&format!("alice--dev--{port}"), "/"),
        Some(&token),
    );
    let took = started.elapsed();
    assert_eq!(status, 502, "{body}");
    assert!(took >= Duration::from_secs(2), "answered after {took:?}");
    println!("unanswered request: 502 after {took:?}: {}", body.trim());
}

/// Strangers on a declared-public port can fill only half of the link's streams: the
/// space's owner still gets in, and the stranger past the half is told why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_on_a_public_port_cannot_take_every_stream() {
    let public = silent_server();
    let echo = echo_after_eof_server();
    let gw = Gateway::start_configured("[agents]\nmax_streams_per_link = 4\n", &[]);
    let _agent = tokio::task::block_in_place(|| {
        Agent::start(
            &gw,
            Transport::Quic,
            "alice",
            "dev",
            &[
                ("KNOT_HTTP_PORT", public.to_string()),
                ("KNOT_PUBLIC_HTTP_PORT", public.to_string()),
                ("KNOT_TCP_PORT", echo.to_string()),
            ],
        )
    });
    let url = gw.space_url(&format!("alice--dev--{public}"), "/");
    let stranger = || {
        Command::new("curl")
            .args([
                "--silent",
                "--max-time",
                "30",
                "--write-out",
                "\n%{http_code}",
            ])
            .args(["--cacert", gw.cacert().to_str().unwrap(), &url])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Two requests the public service never answers hold two of the four streams.
    let mut hung = [stranger(), stranger()];
    tokio::time::sleep(Duration::from_secs(2)).await;
    let third = stranger().wait_with_output().unwrap();
    let third = String::from_utf8_lossy(&third.stdout);
    assert!(third.ends_with("\n503"), "{third}");
    assert!(third.contains("requests without a token"), "{third}");

    // The owner, with a token, is served.
    let token = tokio::task::block_in_place(|| gw.user_token_for("alice", "alice--dev", "tcp"));
    let ws_url = format!(
        "wss://gateway.localhost:{}/tcp/alice/dev/{echo}",
        gw.public_port
    );
    ws::connect(&gw, &ws_url, Some(&token), None).await.unwrap();
    for h in &mut hung {
        let _ = h.kill();
        let _ = h.wait();
    }
}

/// The most memory the gateway has used, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Users of one space who stop reading more downloads than half its link's unread
/// budget holds windows for (an 8 MiB budget: 2 streams of 2 MiB on QUIC, 16 of 256 KiB
/// on TCP) have the longest-stalled of them cut. The gateway holds no more than the
/// budget, the link stays up, and the space's other users, like other spaces, are
/// served all along.
fn stalled_downloads_are_cut_before_they_fill_the_link(transport: Transport) {
    let source = stream_server();
    let gw = Gateway::start_configured(
        "[agents]\nmax_unread_mib_per_link = 8\nping_interval_secs = 1\n",
        &[],
    );
    let web = web(&gw);
    let ports = format!("{source},{}", web.nginx.port());
    let agent = Agent::start(&gw, transport, "bob", "dl", &[("KNOT_HTTP_PORT", ports)]);
    let token = gw.user_token("bob", &["bob--dl"]);
    let auth = format!("Authorization: Bearer {token}");
    let url = gw.space_url(&format!("bob--dl--{source}"), "/");
    let page = gw.space_url(&format!("bob--dl--{}", web.nginx.port()), "/");
    let before = peak_rss_kib(gw.pid());

    // 32 downloads read at 1 KB/s. Unbounded, each could leave its stream's window in
    // the gateway, and on QUIC they would block the link.
    let _stalled = Stalled(
        (0..32)
            .map(|_| {
                Command::new("curl")
                    .args(["--silent", "--limit-rate", "1K", "-o", "/dev/null"])
                    .args(["--cacert", gw.cacert().to_str().unwrap()])
                    .args(["-H", &auth, &url])
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect(),
    );
    // Two users who read at a steady 300 KB/s beside them are not cut.
    let moving_file = web._root.path().join("moving.bin");
    write_random_file(&moving_file, 4 << 20);
    let moving_url = gw.space_url(&format!("bob--dl--{}", web.nginx.port()), "/moving.bin");
    let moving_dir = TempDir::new("test-moving");
    let moving: Vec<_> = (0..2)
        .map(|i| {
            let out = moving_dir.path().join(format!("{i}.bin"));
            let child = Command::new("curl")
                .args(["--silent", "--show-error", "--fail", "--limit-rate", "300K"])
                .args(["--cacert", gw.cacert().to_str().unwrap()])
                .args(["-H", &auth, "-o", out.to_str().unwrap(), &moving_url])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (out, child)
        })
        .collect();
    let kept = match transport {
        Transport::Quic => 2,
        Transport::Tcp => 16,
    };
    // The same space's page, over the same link, every half second while the
    // downloads stall and are cut.
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let cut = loop {
        let asked = Instant::now();
        let (code, body) = support::get(&gw, &page, Some(&token));
        assert_eq!(
            (code, body.as_str()),
            (200, "hello from the space\n"),
            "the space's page was not served beside the stalled downloads\n{}",
            gw.log()
        );
        slowest = slowest.max(asked.elapsed());
        // Each round of cuts is logged with its count. (A cut user's curl reports the
        // cut only once it has read what its socket holds, at 1 KB/s.)
        let cut: usize = gw
            .log()
            .lines()
            .filter(|l| l.contains("cut streams whose users") || l.contains("cut every stream"))
            .filter_map(|l| {
                l.split(" cut=")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .sum();
        if cut >= 32 - kept || started.elapsed() > Duration::from_secs(30) {
            break cut;
        }
        thread::sleep(Duration::from_millis(500));
    };
    println!("{cut} downloads cut; the space's page served in {slowest:?} at the slowest");
    let log = format!("gateway:\n{}\nagent:\n{}", gw.log(), agent.log());
    assert!(
        cut >= 32 - kept,
        "{cut} of 32 stalled downloads were cut, where {kept} may stay\n{log}"
    );
    assert!(
        !log.contains("space unregistered space=bob--dl"),
        "the link was dropped\n{log}"
    );
    let grew = peak_rss_kib(gw.pid()).saturating_sub(before);
    println!("the gateway's peak memory grew by {grew} KiB");
    // The budget, and what 32 users' connections buffer at the front door on their
    // own (hyper's write buffer, about 400 KB each, held until each user reads it or
    // the connection ends). Unbounded, the windows alone would be 64 MiB on QUIC.
    assert!(
        grew < 56 * 1024,
        "the gateway's peak memory grew by {grew} KiB with an 8 MiB budget"
    );
    for (out, child) in moving {
        let done = child.wait_with_output().unwrap();
        assert!(
            done.status.success() && sha256_file(&out) == sha256_file(&moving_file),
            "a download read at 300 KB/s was cut: {}\n{log}",
            String::from_utf8_lossy(&done.stderr)
        );
    }
    println!("another space served in {:?}", served(&gw, &web));
}

on_both_transports!(stalled_downloads_are_cut_before_they_fill_the_link);

/// Clients killed when the test ends, however it ends.
struct Stalled(Vec<std::process::Child>);

impl Drop for Stalled {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
