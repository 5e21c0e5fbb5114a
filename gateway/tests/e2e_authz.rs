//! The authorization table: every route, both transports, every kind of bad token.
//! Each row is a request a stranger or a confused client could make, and the status
//! the gateway must answer.

// Helpers outside #[test] functions unwrap too: a failure is a failed test.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod support;

use std::time::Duration;

use gateway::auth::{now, Grant, Minter, UserClaims};
use gateway::keys::SigningKey;
use serde_json::json;
use support::servers::{free_port, Nginx, TempDir};
use support::{get, Agent, Gateway, Transport};

/// A route and the grant it needs, with the status of an allowed plain GET (the
/// websocket routes answer 400 to a GET that is not an upgrade, after authorization).
const ROUTES: [(&str, Grant, u16); 4] = [
    ("http", Grant::Http, 200),
    ("vnc", Grant::Vnc, 200),
    ("ssh", Grant::Ssh, 400),
    ("tcp", Grant::Tcp, 400),
];

struct Space {
    name: &'static str,
    http: u16,
    tcp: u16,
}

fn url(gw: &Gateway, space: &Space, route: &str) -> String {
    match route {
        "http" => gw.space_url(&format!("alice--{}--{}", space.name, space.http), "/"),
        "vnc" => gw.space_url(&format!("alice--{}--vnc", space.name), "/"),
        "ssh" => format!("{}/ssh/alice/{}", gw.url(), space.name),
        _ => format!("{}/tcp/alice/{}/{}", gw.url(), space.name, space.tcp),
    }
}

fn minter(gw: &Gateway) -> Minter {
    Minter::new(SigningKey::load(&gw.data_dir().join("signing-key.pem")).unwrap())
}

fn user_token(m: &Minter, spaces: &[&str], grants: &[Grant]) -> String {
    m.user(
        "alice",
        spaces.iter().map(|s| s.to_string()).collect(),
        grants.to_vec(),
        Duration::from_secs(600),
    )
}

#[test]
fn every_route_refuses_every_bad_token_on_both_transports() {
    let root = TempDir::new("test-www");
    std::fs::write(root.path().join("index.html"), "ok\n").unwrap();
    let (web, desk) = (Nginx::start(root.path()), Nginx::start(root.path()));
    let gw = Gateway::start();
    let stranger = Gateway::start();
    let spaces = [
        Space {
            name: "q",
            http: web.port(),
            tcp: free_port(),
        },
        Space {
            name: "t",
            http: web.port(),
            tcp: free_port(),
        },
    ];
    let mut agents = Vec::new();
    for (space, transport) in spaces.iter().zip([Transport::Quic, Transport::Tcp]) {
        let env = [
            ("KNOT_HTTP_PORT", space.http.to_string()),
            ("KNOT_VNC_HTTP_PORT", desk.port().to_string()),
            ("KNOT_SSH_PORT", free_port().to_string()),
            ("KNOT_TCP_PORT", space.tcp.to_string()),
        ];
        agents.push(Agent::start(&gw, transport, "alice", space.name, &env));
    }

    let m = minter(&gw);
    let expired = m.sign(&UserClaims {
        aud: "user".into(),
        sub: "alice".into(),
        spaces: vec!["*".into()],
        svc: Grant::ALL.to_vec(),
        iat: now() - 7200,
        exp: now() - 3600,
    });
    let not_yet = m.sign(&json!({
        "aud": "user", "sub": "alice", "spaces": ["*"], "svc": ["ssh", "vnc", "http", "tcp"],
        "iat": now(), "nbf": now() + 3600, "exp": now() + 7200,
    }));
    let good = user_token(&m, &["*"], &Grant::ALL);
    let payload = good.split('.').nth(1).unwrap();
    // {"alg":"none","typ":"JWT"}, the same claims, no signature.
    let alg_none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    let other_key = user_token(&minter(&stranger), &["*"], &Grant::ALL);
    let agent_token = gw.agent_token("alice", "q");
    let other_space = user_token(&m, &["alice--elsewhere", "bob--*"], &Grant::ALL);

    let mut failures = Vec::new();
    let mut check = |what: &str, url: &str, token: Option<&str>, want: u16| {
        let (status, body) = get(&gw, url, token);
        if status != want {
            failures.push(format!(
                "{what}: {url} answered {status}, want {want}: {}",
                body.trim()
            ));
        }
    };
    for space in &spaces {
        for (route, grant, allowed) in ROUTES {
            let url = url(&gw, space, route);
            let row = |what: &str| format!("{route} on {}: {what}", space.name);
            check(&row("no token"), &url, None, 401);
            check(&row("garbage"), &url, Some("not.a.token"), 401);
            check(&row("expired"), &url, Some(&expired), 401);
            check(&row("not yet valid"), &url, Some(&not_yet), 401);
            check(&row("signed by another key"), &url, Some(&other_key), 401);
            check(&row("alg none"), &url, Some(&alg_none), 401);
            check(&row("agent token"), &url, Some(&agent_token), 401);
            check(&row("another space"), &url, Some(&other_space), 403);
            let others: Vec<Grant> = Grant::ALL.into_iter().filter(|g| *g != grant).collect();
            check(
                &row("without this service"),
                &url,
                Some(&user_token(&m, &["alice--*"], &others)),
                403,
            );
            check(
                &row("only this service"),
                &url,
                Some(&user_token(&m, &["alice--*"], &[grant])),
                allowed,
            );
        }
    }
    assert!(
        failures.is_empty(),
        "authorization table:\n{}",
        failures.join("\n")
    );

    // Nothing secret reaches the logs.
    let log = gw.log();
    for secret in [&good, &other_space, &agent_token] {
        assert!(!log.contains(secret.as_str()), "a token was logged");
    }
}

#[test]
fn a_user_token_cannot_register_an_agent_and_agents_check_the_gateway() {
    let gw = Gateway::start();
    let port = free_port().to_string();
    let user = user_token(&minter(&gw), &["*"], &Grant::ALL);
    let mut agent = Agent::spawn(&gw, &user, &[("KNOT_HTTP_PORT", port.clone())]);
    assert_eq!(
        agent.wait_exit(Duration::from_secs(20)),
        Some(3),
        "rejected for good:\n{}",
        agent.log()
    );
    assert!(
        agent.log().contains("is not meant for this use"),
        "{}",
        agent.log()
    );

    // An agent pinned to another certificate never links, and says why.
    let mut pinned = Agent::spawn_with_fingerprint(
        &gw,
        &"ab".repeat(32),
        &gw.agent_token("alice", "web"),
        &[("KNOT_HTTP_PORT", port)],
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        pinned.is_running(),
        "it keeps retrying rather than giving up"
    );
    assert!(!gw.log().contains("space registered"), "{}", gw.log());
    assert!(
        pinned.log().contains("does not match the pinned"),
        "{}",
        pinned.log()
    );
}

#[test]
fn public_ports_need_the_gateway_to_allow_them() {
    let root = TempDir::new("test-www");
    std::fs::write(root.path().join("index.html"), "public\n").unwrap();
    let web = Nginx::start(root.path());
    let dir = TempDir::new("test-config");
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, "[auth]\nallow_public_ports = false\n").unwrap();
    let gw = Gateway::start_with(&["--config", config.to_str().unwrap()]);
    let env = [
        ("KNOT_HTTP_PORT", web.port().to_string()),
        ("KNOT_PUBLIC_HTTP_PORT", web.port().to_string()),
    ];
    let _agent = Agent::start(&gw, Transport::Quic, "alice", "web", &env);
    let (status, _) = get(
        &gw,
        &gw.space_url(&format!("alice--web--{}", web.port()), "/"),
        None,
    );
    assert_eq!(
        status, 401,
        "a declared-public port is private when the gateway forbids public ports"
    );
}

#[test]
fn bad_registrations_from_one_address_are_told_to_wait_and_good_ones_are_not() {
    let gw = Gateway::start();
    let stranger = Gateway::start();
    let forged = stranger.agent_token("alice", "web");
    let port = free_port().to_string();
    let bad = || {
        let mut agent = Agent::spawn(&gw, &forged, &[("KNOT_HTTP_PORT", port.clone())]);
        agent.wait_exit(Duration::from_secs(20));
    };
    let refused = |gw: &Gateway| {
        gw.log()
            .matches("too many failed registrations from this address")
            .count()
    };
    for _ in 0..11 {
        bad();
    }
    assert!(refused(&gw) >= 1, "{}", gw.log());

    // A neighbour behind the same address keeps presenting bad tokens; a good agent
    // registers all the same: only failures count, and a good token is not limited.
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                bad();
            }
        });
        let before = refused(&gw);
        let _good = Agent::start(
            &gw,
            Transport::Quic,
            "alice",
            "web",
            &[("KNOT_HTTP_PORT", port.clone())],
        );
        // The neighbour is still being refused after the good agent got in.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while refused(&gw) <= before {
            assert!(std::time::Instant::now() < deadline, "{}", gw.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}
