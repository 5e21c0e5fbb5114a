//! OpenSSH through the gateway: `ssh` with `ProxyCommand gateway connect` into a real
//! sshd in the space.

// Helpers outside #[test] functions unwrap too: a failure is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Command, Output, Stdio};

use support::servers::{sha256_file, write_random_file, Sshd, TempDir};
use support::{Agent, Gateway, Transport};

struct Setup {
    gw: Gateway,
    sshd: Sshd,
    _agent: Agent,
    token: String,
}

fn setup(transport: Transport) -> Setup {
    let sshd = Sshd::start();
    let gw = Gateway::start();
    let agent = Agent::start(
        &gw,
        transport,
        "alice",
        "dev",
        &[("KNOT_SSH_PORT", sshd.port().to_string())],
    );
    let token = gw.user_token_for("alice", "alice--dev", "ssh");
    Setup {
        gw,
        sshd,
        _agent: agent,
        token,
    }
}

impl Setup {
    /// `ssh` or `scp` with the test key and the gateway as ProxyCommand. The host name
    /// is only a label: the ProxyCommand decides where the bytes go.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(self.sshd.ssh_base_args()).arg("-o").arg(format!(
            "ProxyCommand={}",
            self.gw.proxy_command("alice/dev", &self.token)
        ));
        cmd
    }

    fn ssh(&self, remote: &str, stdin: Stdio) -> Output {
        self.command("ssh")
            .arg(format!("{}@space", self.sshd.user()))
            .arg(remote)
            .stdin(stdin)
            .output()
            .expect("ssh is installed by scripts/install-test-deps.sh")
    }
}

fn ssh_runs_a_command_and_returns_its_output(transport: Transport) {
    let s = setup(transport);
    let out = s.ssh("echo hello from $((40 + 2))", Stdio::null());
    assert!(
        out.status.success(),
        "ssh: {}\ngateway:\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.gw.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from 42\n");
}

fn scp_of_a_64_mib_file_arrives_with_the_same_sha256(transport: Transport) {
    let s = setup(transport);
    let dir = TempDir::new("test-scp");
    let (src, dst) = (dir.path().join("src.bin"), dir.path().join("dst.bin"));
    write_random_file(&src, 64 << 20);
    let out = s
        .command("scp")
        .arg(&src)
        .arg(format!("{}@space:{}", s.sshd.user(), dst.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scp: {}\ngateway:\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.gw.log()
    );
    assert_eq!(sha256_file(&dst), sha256_file(&src));
}

fn ssh_cat_stores_the_whole_file_when_the_client_half_closes_first(transport: Transport) {
    let s = setup(transport);
    let dir = TempDir::new("test-cat");
    let (src, dst) = (dir.path().join("src.bin"), dir.path().join("dst.bin"));
    write_random_file(&src, 8 << 20);
    let stdin = std::fs::File::open(&src).unwrap();
    let out = s.ssh(&format!("cat > {}", dst.display()), Stdio::from(stdin));
    assert!(
        out.status.success(),
        "ssh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256_file(&dst), sha256_file(&src));
}

on_both_transports!(
    ssh_runs_a_command_and_returns_its_output,
    scp_of_a_64_mib_file_arrives_with_the_same_sha256,
    ssh_cat_stores_the_whole_file_when_the_client_half_closes_first,
);

/// Guards against `gateway connect` outliving the space's end of the connection:
/// when the session's sshd dies, ssh must exit as it does on a direct connection,
/// not hang waiting for its ProxyCommand.
fn ssh_exits_when_the_spaces_sshd_dies(transport: Transport) {
    let s = setup(transport);
    let mut child = s
        .command("ssh")
        .arg(format!("{}@space", s.sshd.user()))
        .arg("kill -9 $PPID; sleep 60")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A hang guard, not a measurement: the remote command would run for 60 s.
    for _ in 0..300 {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("ssh still running 30 s after the space's sshd died");
}

on_both_transports!(ssh_exits_when_the_spaces_sshd_dies);
