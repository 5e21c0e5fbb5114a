//! Bad cases, answered as the design says, and garbage that must not hurt anyone.

// Helpers outside #[test] functions unwrap too: a failure is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use support::servers::{Nginx, TempDir};
use support::{get, Agent, Gateway, Transport};

fn page_server() -> (TempDir, Nginx) {
    let root = TempDir::new("test-www");
    std::fs::write(root.path().join("index.html"), "ok\n").unwrap();
    let nginx = Nginx::start(root.path());
    (root, nginx)
}

#[test]
fn a_space_that_is_not_connected_is_503_with_retry_after() {
    let gw = Gateway::start();
    let token = gw.user_token("alice", &["alice--gone"]);
    let out = support::curl(
        &gw,
        &[
            "-i",
            "-H",
            &format!("Authorization: Bearer {token}"),
            &gw.space_url("alice--gone--8080", "/"),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(text.starts_with("http/1.1 503"), "{text}");
    assert!(text.contains("retry-after: 5"), "{text}");
    assert!(text.contains("not connected"), "{text}");
}

fn errors_for_ports_tokens_and_spaces(transport: Transport) {
    let (_root, nginx) = page_server();
    let gw = Gateway::start();
    let _agent = Agent::start(
        &gw,
        transport,
        "alice",
        "web",
        &[("KNOT_HTTP_PORT", nginx.port().to_string())],
    );
    let url = gw.space_url(&format!("alice--web--{}", nginx.port()), "/");
    let good = gw.user_token("alice", &["alice--web"]);

    let (status, body) = get(&gw, &gw.space_url("alice--web--9", "/"), Some(&good));
    assert_eq!(status, 404, "port not offered: {body}");
    assert!(body.contains("port 9 is not offered"), "{body}");

    let (status, body) = get(&gw, &url, None);
    assert_eq!(status, 401, "no token: {body}");

    let (status, _) = get(&gw, &url, Some("not.a.token"));
    assert_eq!(status, 401, "garbage token");

    let other = gw.user_token("bob", &["bob--web"]);
    let (status, body) = get(&gw, &url, Some(&other));
    assert_eq!(status, 403, "token for another space: {body}");

    let ssh_only = gw.user_token_for("alice", "alice--web", "ssh");
    let (status, _) = get(&gw, &url, Some(&ssh_only));
    assert_eq!(status, 403, "token without the http service");

    let agent_token = gw.agent_token("alice", "web");
    let (status, _) = get(&gw, &url, Some(&agent_token));
    assert_eq!(status, 401, "an agent token is not a user token");

    let (status, body) = get(&gw, &gw.space_url("nonsense", "/"), Some(&good));
    assert_eq!(status, 404, "unknown host form: {body}");

    let (status, body) = get(&gw, &url, Some(&good));
    assert_eq!(
        (status, body.as_str()),
        (200, "ok\n"),
        "the good request still works"
    );
}

fn a_port_offered_but_not_listening_is_502_with_the_reason(transport: Transport) {
    let gw = Gateway::start();
    let dead = support::servers::free_port();
    let _agent = Agent::start(
        &gw,
        transport,
        "alice",
        "web",
        &[("KNOT_HTTP_PORT", dead.to_string())],
    );
    let token = gw.user_token("alice", &["alice--web"]);
    let (status, body) = get(
        &gw,
        &gw.space_url(&format!("alice--web--{dead}"), "/"),
        Some(&token),
    );
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("nothing is listening"), "{body}");
}

#[test]
fn an_agent_token_signed_by_another_key_is_rejected_at_registration() {
    let gw = Gateway::start();
    let stranger = Gateway::start();
    let forged = stranger.agent_token("alice", "web");
    let (_root, nginx) = page_server();
    let mut agent = Agent::spawn(
        &gw,
        &forged,
        &[("KNOT_HTTP_PORT", nginx.port().to_string())],
    );

    let code = agent.wait_exit(Duration::from_secs(20));
    assert_eq!(
        code,
        Some(3),
        "the agent stops with the rejection; log:\n{}",
        agent.log()
    );
    assert!(
        agent.log().contains("agent token: the token is invalid"),
        "{}",
        agent.log()
    );
    gw.wait_for_log("registration rejected", 1);
    let token = gw.user_token("alice", &["alice--web"]);
    let (status, _) = get(
        &gw,
        &gw.space_url(&format!("alice--web--{}", nginx.port()), "/"),
        Some(&token),
    );
    assert_eq!(status, 503, "the space was not registered");
}

fn garbage_on_the_public_port_does_not_stop_the_next_good_request(transport: Transport) {
    let (_root, nginx) = page_server();
    let mut gw = Gateway::start();
    let _agent = Agent::start(
        &gw,
        transport,
        "alice",
        "web",
        &[("KNOT_HTTP_PORT", nginx.port().to_string())],
    );

    // Not TLS at all.
    let mut raw = TcpStream::connect(("127.0.0.1", gw.public_port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(b"\x16\x03\x01\xff\xffgarbage\r\n\r\nGET / HTTP/1.1\r\n\r\n")
        .unwrap();
    let mut sink = Vec::new();
    let _ = raw.read_to_end(&mut sink);

    // TLS, then bytes that are not HTTP: the gateway answers 400.
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-connect",
            &format!("127.0.0.1:{}", gw.public_port),
        ])
        .args(["-servername", "gateway.localhost"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .and_then(|mut child| {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(b"\x00\x01\x02 not http at all\r\n\r\n")?;
            child.wait_with_output()
        })
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    assert!(gw.is_running());
    let token = gw.user_token("alice", &["alice--web"]);
    let (status, body) = get(
        &gw,
        &gw.space_url(&format!("alice--web--{}", nginx.port()), "/"),
        Some(&token),
    );
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

fn garbage_on_the_agent_port_does_not_stop_the_next_agent(transport: Transport) {
    let (_root, nginx) = page_server();
    let mut gw = Gateway::start();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    for size in [1, 20, 1200, 1500, 9000] {
        let junk: Vec<u8> = (0..size).map(|i| (i * 7 + 3) as u8).collect();
        udp.send_to(&junk, ("127.0.0.1", gw.agent_port)).unwrap();
    }
    // A QUIC-looking long header with a bogus version and connection ids.
    let mut fake = vec![0xc0, 0xde, 0xad, 0xbe, 0xef, 8];
    fake.extend_from_slice(&[1; 8]);
    fake.extend_from_slice(&[8; 1200]);
    udp.send_to(&fake, ("127.0.0.1", gw.agent_port)).unwrap();

    let _agent = Agent::start(
        &gw,
        transport,
        "alice",
        "web",
        &[("KNOT_HTTP_PORT", nginx.port().to_string())],
    );
    assert!(gw.is_running());
    let token = gw.user_token("alice", &["alice--web"]);
    let (status, body) = get(
        &gw,
        &gw.space_url(&format!("alice--web--{}", nginx.port()), "/"),
        Some(&token),
    );
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

/// An agent's own link, opened by hand and registered for alice--raw.
async fn raw_agent_link(
    gw: &Gateway,
    transport: Transport,
) -> (agent_link::transport::Link, Option<quinn::Endpoint>) {
    use agent_link::proto::{ALPN_MUX, ALPN_QUIC};
    use agent_link::transport::{mux, quic, Link};
    let trust = agent_link::tls::Trust::fingerprint(&gw.fingerprint).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", gw.agent_port).parse().unwrap();
    let (link, endpoint) = match transport {
        Transport::Quic => {
            let tls = trust.client_config(&[ALPN_QUIC]).unwrap();
            let endpoint = quic::client_endpoint(addr, tls, &quic::LinkTuning::agent()).unwrap();
            let conn = endpoint
                .connect(addr, "gateway.localhost")
                .unwrap()
                .await
                .unwrap();
            (Link::Quic(conn), Some(endpoint))
        }
        Transport::Tcp => {
            let tls = std::sync::Arc::new(trust.client_config(&[ALPN_MUX]).unwrap());
            let stream = mux::connect_tls(addr, "gateway.localhost", tls)
                .await
                .unwrap();
            (Link::Mux(mux::MuxLink::new(stream, false, addr)), None)
        }
    };
    (link, endpoint)
}

/// Agents only answer streams; one that opens a stream of its own gets it reset, and
/// its link, its space and every other stream go on.
fn an_agent_that_opens_a_stream_has_it_reset_and_stays_linked(transport: Transport) {
    use agent_link::io::{send_control, ControlReader};
    use agent_link::proto::{ControlMessage, PROTOCOL_VERSION};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut gw = Gateway::start();
    let token = gw.agent_token("alice", "raw");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (link, _endpoint) = raw_agent_link(&gw, transport).await;
        let mut control = link.open().await.unwrap();
        let hello = ControlMessage::Hello {
            version: PROTOCOL_VERSION,
            agent_version: "test".into(),
            token,
            services: Vec::new(),
            instance: 1,
        };
        send_control(&mut control.send, &hello).await.unwrap();
        let mut reader = ControlReader::new(control.recv);
        let welcome = reader.next_within(Duration::from_secs(10)).await.unwrap();
        assert!(
            matches!(welcome, Some(ControlMessage::Welcome { .. })),
            "{welcome:?}"
        );

        let mut rogue = link.open().await.unwrap();
        rogue
            .send
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(10), rogue.recv.read_to_end(&mut answer))
                .await
                .expect("the gateway answers an agent's stream at once");
        assert!(
            read.is_err(),
            "an agent's stream ended cleanly with {answer:?}, not reset"
        );

        // The link is still up: the gateway still answers its pings.
        send_control(&mut control.send, &ControlMessage::Ping { nonce: 7 })
            .await
            .unwrap();
        loop {
            match reader.next_within(Duration::from_secs(10)).await.unwrap() {
                Some(ControlMessage::Pong { nonce: 7 }) => break,
                Some(ControlMessage::Ping { .. }) => continue,
                other => panic!("expected the pong, got {other:?}"),
            }
        }
    });
    assert!(gw.is_running());
}

on_both_transports!(
    an_agent_that_opens_a_stream_has_it_reset_and_stays_linked,
    errors_for_ports_tokens_and_spaces,
    a_port_offered_but_not_listening_is_502_with_the_reason,
    garbage_on_the_public_port_does_not_stop_the_next_good_request,
    garbage_on_the_agent_port_does_not_stop_the_next_agent,
);

/// Guards against a token reaching a service its grants exclude by naming the
/// service's port on another route (the desktop by number, SSH through `/tcp`).
#[test]
fn the_service_reached_decides_the_grant_not_the_route() {
    let gw = Gateway::start();
    let (ssh, vnc) = (support::servers::free_port(), support::servers::free_port());
    let _agent = Agent::start(
        &gw,
        Transport::Quic,
        "alice",
        "web",
        &[
            ("KNOT_SSH_PORT", ssh.to_string()),
            ("KNOT_VNC_HTTP_PORT", vnc.to_string()),
        ],
    );
    let http_only = gw.user_token_for("alice", "alice--web", "http");
    let (status, body) = get(
        &gw,
        &gw.space_url(&format!("alice--web--{vnc}"), "/"),
        Some(&http_only),
    );
    assert_eq!(
        status, 403,
        "an http grant opened the desktop by port: {body}"
    );

    let tcp_only = gw.user_token_for("alice", "alice--web", "tcp");
    let (status, body) = get(
        &gw,
        &format!("{}/tcp/alice/web/{ssh}", gw.url()),
        Some(&tcp_only),
    );
    assert_eq!(status, 403, "a tcp grant reached SSH: {body}");

    // With the right grant the same request passes authorization and is refused only
    // for not being a websocket upgrade.
    let ssh_grant = gw.user_token_for("alice", "alice--web", "ssh");
    let (status, _) = get(
        &gw,
        &format!("{}/tcp/alice/web/{ssh}", gw.url()),
        Some(&ssh_grant),
    );
    assert_eq!(status, 400);
}
