//! An `auto` agent on a network that drops UDP: it links over TLS/TCP, and moves back
//! to QUIC once UDP gets through again, without a restart. The test runs itself again
//! inside a network namespace it creates (`support::netns`).

// Helpers outside #[test] functions unwrap too: a failure is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::servers::Sshd;
use support::{netns, wait_for_registrations, Agent, Gateway, Transport};

#[test]
fn auto_agent_falls_back_to_tcp_and_returns_to_quic() {
    if netns::inside() {
        return in_namespace();
    }
    netns::rerun_inside("auto_agent_falls_back_to_tcp_and_returns_to_quic");
}

fn in_namespace() {
    let sshd = Sshd::start();
    let gw = Gateway::start();
    netns::drop_udp_to(gw.agent_port);

    // 1. UDP is dropped: the agent comes up on TCP and serves SSH.
    let env = [
        ("KNOT_SSH_PORT", sshd.port().to_string()),
        ("KNOT_AGENT_TRANSPORT", "auto".to_owned()),
        ("KNOT_AGENT_QUIC_TIMEOUT", "1".to_owned()),
        ("KNOT_AGENT_QUIC_PROBE_INTERVAL", "2".to_owned()),
    ];
    let _agent = Agent::spawn(&gw, &gw.agent_token("alice", "dev"), &env);
    wait_for_registrations(
        &gw,
        "alice",
        "dev",
        Transport::Tcp,
        1,
        Duration::from_secs(30),
    );
    let token = gw.user_token_for("alice", "alice--dev", "ssh");
    assert_eq!(ssh(&gw, &sshd, &token, "echo over tcp"), "over tcp\n");

    // 2. A session open across the move back to QUIC.
    let long = ssh_command(&gw, &sshd, &token, "sleep 4; echo still here")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));

    // 3. UDP gets through again: the link is back on QUIC within a bounded time, with
    //    nothing restarted, and new sessions work.
    netns::restore();
    wait_for_registrations(
        &gw,
        "alice",
        "dev",
        Transport::Quic,
        1,
        Duration::from_secs(30),
    );
    assert!(gw.log().contains("link replaced by a newer one"));
    assert_eq!(ssh(&gw, &sshd, &token, "echo over quic"), "over quic\n");

    // 4. The session that was open on TCP finished there.
    let out = long.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the session open during the move failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still here\n");
}

fn ssh_command(gw: &Gateway, sshd: &Sshd, token: &str, remote: &str) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(sshd.ssh_base_args())
        .arg("-o")
        .arg(format!(
            "ProxyCommand={}",
            gw.proxy_command("alice/dev", token)
        ))
        .arg(format!("{}@space", sshd.user()))
        .arg(remote)
        .stdin(Stdio::null());
    cmd
}

fn ssh(gw: &Gateway, sshd: &Sshd, token: &str, remote: &str) -> String {
    let out = ssh_command(gw, sshd, token, remote).output().unwrap();
    assert!(
        out.status.success(),
        "ssh: {}\ngateway:\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
    String::from_utf8(out.stdout).unwrap()
}
