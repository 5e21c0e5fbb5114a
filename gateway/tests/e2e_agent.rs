//! The agent's own duties, checked on the real binaries: the HTTPS `/ping` that a
//! scheduler's health check calls, `/status`, and the startup scripts.

// Helpers outside #[test] functions unwrap too: a failure is a failed test.
#![allow(clippy::unwrap_used)]
// Real processes run on the real clock; tokio's pausable time does not apply.
#![allow(clippy::disallowed_methods)]

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use support::servers::{free_port, TempDir};
use support::{Agent, Gateway, Transport};

/// Time for a QUIC agent to notice a gateway that vanished without a word: three
/// silent ping intervals of 5 s, on a loaded two-core machine.
const NOTICE_LIMIT: Duration = Duration::from_secs(60);

/// Time for anything else the agent does at start.
const START_LIMIT: Duration = Duration::from_secs(30);

/// Polls `probe` every 50 ms until it returns `Some`, for at most `limit`.
fn wait_until<T>(limit: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// `curl -k https://127.0.0.1:PORT/PATH`: the status and the body. Verification is
/// skipped, as a scheduler's check does: the agent's certificate is self-signed.
fn get_insecure(port: u16, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--insecure", "--max-time", "5"])
        .args(["--write-out", "\n%{http_code}"])
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl is installed by scripts/install-test-deps.sh");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// An agent for alice--NAME with `/ping` on a free port, and startup directories that
/// do not exist unless `extra` names others (so the machine's own never run).
fn start_agent(
    gw: &Gateway,
    transport: Transport,
    space: &str,
    extra: &[(&str, String)],
) -> (Agent, u16) {
    let port = free_port();
    let mut env = vec![
        ("KNOT_SSH_PORT", "22".to_owned()),
        ("KNOT_AGENT_PING_LISTEN", format!("127.0.0.1:{port}")),
        ("KNOT_SYSTEM_STARTUP_DIR", "/nonexistent/system".to_owned()),
        ("KNOT_USER_STARTUP_DIR", "/nonexistent/user".to_owned()),
    ];
    env.extend(extra.iter().cloned());
    (Agent::start(gw, transport, "alice", space, &env), port)
}

fn ping_answers_pong_while_linked_and_503_once_the_gateway_is_gone(transport: Transport) {
    let gw = Gateway::start();
    let (agent, port) = start_agent(&gw, transport, "ping", &[]);
    // The gateway logs the registration before the agent has read its Welcome.
    let pong = wait_until(START_LIMIT, "/ping 200", || {
        Some(get_insecure(port, "/ping")).filter(|(code, _)| *code == 200)
    });
    assert_eq!(pong.1, "pong");

    drop(gw);
    let (_, body) = wait_until(NOTICE_LIMIT, "/ping 503", || {
        Some(get_insecure(port, "/ping")).filter(|(code, _)| *code == 503)
    });
    assert!(body.contains("not linked"), "{body}\n{}", agent.log());
    assert_eq!(get_insecure(port, "/nowhere").0, 404);
}

fn status_reports_the_link_its_transport_and_the_services(transport: Transport) {
    let gw = Gateway::start();
    let (agent, port) = start_agent(&gw, transport, "status", &[]);
    let status: serde_json::Value = wait_until(START_LIMIT, "/status connected", || {
        let (code, body) = get_insecure(port, "/status");
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        (code == 200 && json["connected"] == true).then_some(json)
    });
    assert_eq!(status["transport"], transport.name(), "{status}");
    assert_eq!(
        status["endpoint"],
        format!("127.0.0.1:{}", gw.agent_port),
        "{status}"
    );
    assert_eq!(status["reconnects"], 0, "{status}");
    assert!(status["connected_since"].is_string(), "{status}");
    assert_eq!(status["services"][0]["name"], "ssh", "{status}");
    assert_eq!(status["services"][0]["port"], 22, "{status}");
    assert!(status["version"].is_string(), "{status}\n{}", agent.log());
}

on_both_transports!(
    ping_answers_pong_while_linked_and_503_once_the_gateway_is_gone,
    status_reports_the_link_its_transport_and_the_services,
);

fn script(dir: &Path, name: &str, mode: u32, body: &str) {
    let path = dir.join(name);
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
}

fn mkdir(path: PathBuf) -> PathBuf {
    fs::create_dir(&path).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Whom the user scripts run as: an unprivileged user when the test runs as root, so
/// that the switch of user is checked; otherwise the test's own user, the only one a
/// non-root agent can run them as.
fn script_user() -> (String, String) {
    let id = |arg: &str| {
        let out = Command::new("id").arg(arg).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let user = if id("-u") == "0" {
        "nobody".to_owned()
    } else {
        id("-un")
    };
    let entry = Command::new("getent")
        .args(["passwd", &user])
        .output()
        .unwrap();
    let entry = String::from_utf8(entry.stdout).unwrap();
    let home = entry.trim().split(':').nth(5).unwrap().to_owned();
    (user, home)
}

#[test]
fn startup_scripts_run_in_name_order_and_a_failing_one_does_not_stop_the_agent() {
    // The user scripts may run as `nobody`: the directories and the output file must
    // be open to it.
    let tmp = TempDir::new("test-startup");
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let system = mkdir(tmp.path().join("system"));
    let user_dir = mkdir(tmp.path().join("user"));
    let ran = tmp.path().join("ran");
    fs::write(&ran, "").unwrap();
    fs::set_permissions(&ran, fs::Permissions::from_mode(0o666)).unwrap();
    let append = |text: &str| format!("echo \"{text}\" >> {}", ran.display());

    script(&system, "20-second", 0o755, &append("second"));
    script(&system, "10-first", 0o755, &append("first"));
    script(
        &system,
        "15-not-executable",
        0o644,
        &append("not executable"),
    );
    script(
        &system,
        "30-fails",
        0o755,
        "echo 'cannot do it' >&2\nexit 3",
    );
    script(
        &system,
        "40-no-token",
        0o755,
        "echo \"token=${KNOT_AGENT_TOKEN:-none}\"",
    );
    script(&user_dir, "10-user", 0o755, &append("$(id -un) $HOME"));
    let (user, home) = script_user();

    let gw = Gateway::start();
    // Agent::start returns once the gateway has registered the agent: the failing
    // script did not stop it.
    let (agent, _) = start_agent(
        &gw,
        Transport::Quic,
        "scripts",
        &[
            ("KNOT_USER", user.clone()),
            ("KNOT_SYSTEM_STARTUP_DIR", system.display().to_string()),
            ("KNOT_USER_STARTUP_DIR", user_dir.display().to_string()),
        ],
    );
    let log = wait_until(START_LIMIT, "startup scripts done", || {
        Some(agent.log()).filter(|log| log.contains("startup scripts done"))
    });

    let order = fs::read_to_string(&ran).unwrap();
    assert_eq!(order, format!("first\nsecond\n{user} {home}\n"), "{log}");
    let line = |needle: &str| log.lines().find(|l| l.contains(needle)).unwrap_or("");
    assert!(line("cannot do it").contains("script=30-fails"), "{log}");
    assert!(
        line("startup script failed").contains("script=30-fails"),
        "{log}"
    );
    assert!(
        line("not an executable file").contains("15-not-executable"),
        "{log}"
    );
    assert!(log.contains("token=none"), "the agent token leaked:\n{log}");
}
