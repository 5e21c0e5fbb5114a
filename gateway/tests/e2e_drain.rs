//! SIGTERM drains: readiness fails, nothing new is accepted, a download and an SSH
//! session already under way finish whole, the agent is told to reconnect at once, and
//! the process exits 0.

// Helpers outside #[test] functions unwrap too: a failure is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::servers::{sha256_file, write_random_file, Nginx, Sshd, TempDir};
use support::{Agent, Gateway, Transport};

#[test]
fn sigterm_lets_an_open_download_and_ssh_session_finish_and_exits_zero() {
    let root = TempDir::new("test-www");
    let file = root.path().join("big.bin");
    write_random_file(&file, 12 << 20);
    let nginx = Nginx::start(root.path());
    let sshd = Sshd::start();
    let mut gw = Gateway::start();
    let agent = Agent::start(
        &gw,
        Transport::Quic,
        "alice",
        "web",
        &[
            ("KNOT_HTTP_PORT", nginx.port().to_string()),
            ("KNOT_SSH_PORT", sshd.port().to_string()),
        ],
    );
    let token = gw.user_token("alice", &["alice--web"]);
    let out_dir = TempDir::new("test-drain");
    let out = out_dir.path().join("big.bin");

    // A download paced to take about four seconds.
    let url = gw.space_url(&format!("alice--web--{}", nginx.port()), "/big.bin");
    let download = Command::new("curl")
        .args(["--silent", "--show-error", "--fail", "--limit-rate", "3M"])
        .args(["--cacert", gw.cacert().to_str().unwrap()])
        .args([
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-o",
            out.to_str().unwrap(),
            &url,
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // An SSH session that ends three seconds from now, with output at its end.
    let session = Command::new("ssh")
        .args(sshd.ssh_base_args())
        .arg("-o")
        .arg(format!(
            "ProxyCommand={}",
            gw.proxy_command("alice/web", &token)
        ))
        .arg(format!("{}@space", sshd.user()))
        .arg("sleep 3; echo session finished")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));

    gw.signal("TERM");
    gw.wait_for_log("draining", 1);
    let ready = support::curl(
        &gw,
        &[
            "--write-out",
            "%{http_code}",
            "-o",
            "/dev/null",
            &gw.admin_url("/readyz"),
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&ready.stdout),
        "503",
        "readiness fails while draining"
    );
    let late = support::curl(
        &gw,
        &[
            "-H",
            &format!("Authorization: Bearer {token}"),
            &url,
            "-o",
            "/dev/null",
        ],
    );
    assert!(
        !late.status.success(),
        "no new request is served while draining"
    );

    let result = download.wait_with_output().unwrap();
    assert!(
        result.status.success(),
        "the open download failed: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert_eq!(
        sha256_file(&out),
        sha256_file(&file),
        "the open download finished whole"
    );
    let session = session.wait_with_output().unwrap();
    assert!(
        session.status.success(),
        "the open SSH session failed: {}",
        String::from_utf8_lossy(&session.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&session.stdout),
        "session finished\n"
    );
    assert!(
        agent.log().contains("gateway draining; reconnecting now"),
        "the agent was not told to reconnect at once; its log:\n{}",
        agent.log()
    );
    assert_eq!(
        gw.wait_exit(Duration::from_secs(30)),
        Some(0),
        "log:\n{}",
        gw.log()
    );
}

/// A session still open at the drain deadline is ended with a websocket close that
/// says why, which `gateway connect` shows, and the gateway still exits 0.
#[test]
fn a_session_open_past_the_drain_deadline_is_told_the_gateway_is_shutting_down() {
    let sshd = Sshd::start();
    let mut gw = Gateway::start_configured("[public]\ndrain_timeout_secs = 1\n", &[]);
    let _agent = Agent::start(
        &gw,
        Transport::Tcp,
        "alice",
        "dev",
        &[("KNOT_SSH_PORT", sshd.port().to_string())],
    );
    let token = gw.user_token("alice", &["alice--dev"]);
    let session = Command::new("ssh")
        .args(sshd.ssh_base_args())
        .arg("-o")
        .arg(format!(
            "ProxyCommand={}",
            gw.proxy_command("alice/dev", &token)
        ))
        .arg(format!("{}@space", sshd.user()))
        .arg("echo started; sleep 60")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    gw.signal("TERM");
    assert_eq!(
        gw.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        gw.log()
    );
    let out = session.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a cut session is not a clean end");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "started\n");
    assert!(stderr.contains("the gateway is shutting down"), "{stderr}");
}
