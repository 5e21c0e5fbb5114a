//! The admin listener as an operator uses it: health, readiness, Prometheus metrics
//! checked by promtool, the admin API, SIGHUP reload, and JSON logs.

// Helpers outside #[test] functions unwrap too: a failure is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::servers::{Nginx, TempDir};
use support::{curl, get, wait_for_registrations, Agent, Gateway, Transport};

fn page_server() -> (TempDir, Nginx) {
    let root = TempDir::new("test-www");
    std::fs::write(root.path().join("index.html"), "ok\n").unwrap();
    let nginx = Nginx::start(root.path());
    (root, nginx)
}

/// `curl` against the admin listener: (status, body).
fn admin(gw: &Gateway, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut args = vec!["-X", method, "--write-out", "\n%{http_code}"];
    if let Some(h) = &auth {
        args.extend(["-H", h]);
    }
    let url = gw.admin_url(path);
    args.push(&url);
    let out = curl(gw, &args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_owned())
}

#[test]
fn health_metrics_and_the_admin_api() {
    let (_root, nginx) = page_server();
    let gw = Gateway::start();
    let port = nginx.port().to_string();
    let _quic = Agent::start(
        &gw,
        Transport::Quic,
        "alice",
        "one",
        &[("KNOT_HTTP_PORT", port.clone())],
    );
    let _tcp = Agent::start(
        &gw,
        Transport::Tcp,
        "alice",
        "two",
        &[("KNOT_HTTP_PORT", port.clone())],
    );
    let user = gw.user_token("alice", &["alice--*"]);
    let (status, _) = get(
        &gw,
        &gw.space_url(&format!("alice--one--{port}"), "/"),
        Some(&user),
    );
    assert_eq!(status, 200);

    assert_eq!(admin(&gw, "GET", "/healthz", None), (200, "ok\n".into()));
    assert_eq!(admin(&gw, "GET", "/readyz", None), (200, "ready\n".into()));

    // Metrics: valid for promtool, and they say what happened.
    let (_, metrics) = admin(&gw, "GET", "/metrics", None);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed by scripts/install-test-deps.sh");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "gateway_links{transport=\"quic\"} 1",
        "gateway_links{transport=\"tcp\"} 1",
        "gateway_registrations_total{result=\"ok\"} 2",
        "gateway_streams_total{outcome=\"ok\",route=\"http\"} 1",
        "gateway_stream_open_seconds_count 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "metrics lack {line:?}:\n{metrics}"
        );
    }
    let from_space: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("gateway_relayed_bytes_total{direction=\"from_space\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        from_space >= 3,
        "the page's bytes were counted: {from_space}"
    );

    // The API wants an admin token, not a user token.
    assert_eq!(admin(&gw, "GET", "/api/spaces", None).0, 401);
    assert_eq!(admin(&gw, "GET", "/api/spaces", Some(&user)).0, 401);
    let token =
        String::from_utf8(gw.tool(&["token", "admin", "--operator", "ops"]).stdout).unwrap();
    let token = token.trim();

    let (status, body) = admin(&gw, "GET", "/api/spaces", Some(token));
    assert_eq!(status, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    let spaces = list["spaces"].as_array().unwrap();
    let names: Vec<(&str, &str)> = spaces
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap(),
                s["transport"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(names, [("alice--one", "quic"), ("alice--two", "tcp")]);
    assert_eq!(spaces[0]["services"][0]["port"], nginx.port());

    let (status, body) = admin(&gw, "GET", "/api/spaces/alice/two", Some(token));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        admin(&gw, "GET", "/api/spaces/alice/none", Some(token)).0,
        404
    );

    // Disconnect: the link is dropped; the agent comes back by itself.
    let (status, body) = admin(&gw, "DELETE", "/api/spaces/alice/two", Some(token));
    assert_eq!(status, 200, "{body}");
    gw.wait_for_log("space disconnected by an operator", 1);
    wait_for_registrations(
        &gw,
        "alice",
        "two",
        Transport::Tcp,
        2,
        Duration::from_secs(30),
    );
}

#[test]
fn sighup_reloads_the_certificate_without_dropping_links_and_keeps_a_bad_config_out() {
    // A configuration file naming its own certificate, so that the test can replace it.
    let dir = TempDir::new("test-reload");
    let make_cert = |name: &str| {
        let (cert, key) = (
            dir.path().join(format!("{name}.crt")),
            dir.path().join(format!("{name}.key")),
        );
        let status = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
            ])
            .args([
                "-subj",
                "/CN=gateway.localhost",
                "-addext",
                "subjectAltName=DNS:gateway.localhost,DNS:*.gateway.localhost",
            ])
            .args([
                "-keyout",
                key.to_str().unwrap(),
                "-out",
                cert.to_str().unwrap(),
            ])
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        (cert, key)
    };
    let (cert, key) = make_cert("first");
    let config = dir.path().join("gateway.toml");
    let write_config = |cert: &std::path::Path, key: &std::path::Path| {
        let text = format!(
            "[public]\ncert = {:?}\nkey = {:?}\n",
            cert.to_str().unwrap(),
            key.to_str().unwrap()
        );
        std::fs::write(&config, text).unwrap();
    };
    write_config(&cert, &key);
    let gw = Gateway::start_with(&["--config", config.to_str().unwrap()]);
    let (_root, nginx) = page_server();
    let _agent = Agent::start(
        &gw,
        Transport::Quic,
        "alice",
        "web",
        &[("KNOT_HTTP_PORT", nginx.port().to_string())],
    );
    let first = served_fingerprint(&gw);

    // A new certificate: served after SIGHUP, and the agent's link stays up.
    let (cert2, key2) = make_cert("second");
    write_config(&cert2, &key2);
    gw.signal("HUP");
    gw.wait_for_log("configuration and certificates reloaded", 1);
    let second = served_fingerprint(&gw);
    assert_ne!(first, second, "the new certificate is served");
    assert_eq!(
        support::registrations(&gw, "alice", "web", Transport::Quic),
        1,
        "the link was not dropped"
    );

    // A broken configuration is rejected, and the running one stays.
    std::fs::write(&config, "[public\nthis is not toml").unwrap();
    gw.signal("HUP");
    gw.wait_for_log("reload rejected", 1);
    assert_eq!(served_fingerprint(&gw), second);
    let user = gw.user_token("alice", &["alice--web"]);
    let url = gw.space_url(&format!("alice--web--{}", nginx.port()), "/");
    let out = Command::new("curl")
        .args(["--silent", "--fail", "--cacert", cert2.to_str().unwrap()])
        .args(["-H", &format!("Authorization: Bearer {user}"), &url])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok\n",
        "the space is still served"
    );
}

/// The SHA-256 of the certificate the front door serves now.
fn served_fingerprint(gw: &Gateway) -> String {
    let script = format!(
        "openssl s_client -connect 127.0.0.1:{} -servername gateway.localhost </dev/null 2>/dev/null \
         | openssl x509 -outform der | sha256sum",
        gw.public_port
    );
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn json_logs_are_one_object_per_line() {
    let gw = Gateway::start_with(&["--log-format", "json"]);
    let log = gw.wait_for_log("gateway listening", 1);
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            value["level"].is_string() && value["fields"]["message"].is_string(),
            "{line}"
        );
    }
}
