//! Network namespaces for tests that change how packets flow: a test runs itself again
//! inside a namespace of its own, so that its nftables rules touch nothing outside.
//! This needs root, as CI has.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Set, to the namespace's name, when a test runs inside its namespace.
const NETNS_ENV: &str = "SPACE_GATEWAY_TEST_NETNS";

/// The nftables table the rules go in.
const TABLE: &str = "space_gateway_test";

/// Whether this process is the copy running inside the namespace.
pub fn inside() -> bool {
    std::env::var_os(NETNS_ENV).is_some()
}

/// Runs the test `name` (its full path, as `--exact` takes it) again inside a new
/// network namespace and asserts that it passed there.
pub fn rerun_inside(name: &str) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let netns = Netns::create(&format!("sgw-{}-{n}", std::process::id()));
    let status = Command::new("ip")
        .args(["netns", "exec", &netns.0])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .env(NETNS_ENV, &netns.0)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "{name} failed inside its network namespace (output above)"
    );
}

/// Drops UDP to `port`, which is what some networks do to QUIC.
pub fn drop_udp_to(port: u16) {
    add_rules(&[&["udp", "dport", &port.to_string(), "drop"]]);
}

/// Drops every packet to or from `port`, TCP and UDP: the link goes silent, as
/// when a network disappears, with no reset or error on either end.
pub fn silence_port(port: u16) {
    let port = port.to_string();
    add_rules(&[
        &[
            "meta",
            "l4proto",
            "{ tcp, udp }",
            "th",
            "dport",
            &port,
            "drop",
        ],
        &[
            "meta",
            "l4proto",
            "{ tcp, udp }",
            "th",
            "sport",
            &port,
            "drop",
        ],
    ]);
}

/// Deletes every rule added by this module.
pub fn restore() {
    nft(&["delete", "table", "inet", TABLE]);
}

fn add_rules(rules: &[&[&str]]) {
    nft(&["add", "table", "inet", TABLE]);
    nft(&[
        "add",
        "chain",
        "inet",
        TABLE,
        "input",
        "{ type filter hook input priority 0; }",
    ]);
    for rule in rules {
        let mut args = vec!["add", "rule", "inet", TABLE, "input"];
        args.extend_from_slice(rule);
        nft(&args);
    }
}

fn nft(args: &[&str]) {
    let out = Command::new("nft")
        .args(args)
        .output()
        .expect("nft is installed by scripts/install-test-deps.sh");
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with its loopback up, deleted on drop.
struct Netns(String);

impl Netns {
    fn create(name: &str) -> Netns {
        let run = |args: &[&str]| {
            let out = Command::new("ip")
                .args(args)
                .output()
                .expect("ip is installed by scripts/install-test-deps.sh");
            assert!(
                out.status.success(),
                "ip {args:?} (this test needs root): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["netns", "add", name]);
        let netns = Netns(name.to_owned());
        run(&["netns", "exec", name, "ip", "link", "set", "lo", "up"]);
        netns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}
