//! HTTP through `USER--SPACE--PORT.DOMAIN` to a real nginx in the space, with curl.

// Helpers outside #[test] functions unwrap too: a failure is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use support::servers::{sha256_file, write_random_file, Nginx, TempDir};
use support::{curl, get, Agent, Gateway, Transport};

struct Setup {
    gw: Gateway,
    _agent: Agent,
    _nginx: Nginx,
    root: TempDir,
    port: u16,
}

fn setup(transport: Transport) -> Setup {
    let root = TempDir::new("test-www");
    std::fs::write(
        root.path().join("index.html"),
        "<h1>hello from the space</h1>\n",
    )
    .unwrap();
    let nginx = Nginx::start(root.path());
    let gw = Gateway::start();
    let agent = Agent::start(
        &gw,
        transport,
        "alice",
        "web",
        &[("KNOT_HTTP_PORT", nginx.port().to_string())],
    );
    let port = nginx.port();
    Setup {
        gw,
        _agent: agent,
        _nginx: nginx,
        root,
        port,
    }
}

fn curl_gets_the_page_that_nginx_serves(transport: Transport) {
    let s = setup(transport);
    let token = s.gw.user_token("alice", &["alice--web"]);
    let (status, body) = get(
        &s.gw,
        &s.gw.space_url(&format!("alice--web--{}", s.port), "/"),
        Some(&token),
    );
    assert_eq!(status, 200, "{body}\n{}", s.gw.log());
    assert_eq!(body, "<h1>hello from the space</h1>\n");
}

fn a_256_mib_download_arrives_with_the_same_sha256(transport: Transport) {
    let s = setup(transport);
    let file = s.root.path().join("big.bin");
    write_random_file(&file, 256 << 20);
    let out_dir = TempDir::new("test-download");
    let out = out_dir.path().join("big.bin");
    let token = s.gw.user_token("alice", &["alice--web"]);
    let result = curl(
        &s.gw,
        &[
            "--fail",
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-o",
            out.to_str().unwrap(),
            &s.gw
                .space_url(&format!("alice--web--{}", s.port), "/big.bin"),
        ],
    );
    assert!(
        result.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 256 << 20);
    assert_eq!(sha256_file(&out), sha256_file(&file));
}

fn three_requests_on_one_keep_alive_connection_all_succeed(transport: Transport) {
    let s = setup(transport);
    let token = s.gw.user_token("alice", &["alice--web"]);
    let url =
        s.gw.space_url(&format!("alice--web--{}", s.port), "/index.html");
    // One curl invocation with three URLs reuses its connection; num_connects says
    // how many new connections each transfer needed.
    let result = curl(
        &s.gw,
        &[
            "--fail",
            "-H",
            &format!("Authorization: Bearer {token}"),
            "--write-out",
            "%{http_code}:%{num_connects}\n",
            "-o",
            "/dev/null",
            &url,
            "-o",
            "/dev/null",
            &url,
            "-o",
            "/dev/null",
            &url,
        ],
    );
    assert!(
        result.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    let lines: Vec<String> = String::from_utf8_lossy(&result.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        lines,
        ["200:1", "200:0", "200:0"],
        "every request succeeds and only the first connects"
    );
}

fn a_public_port_needs_no_token_and_a_private_one_does(transport: Transport) {
    let root = TempDir::new("test-www");
    std::fs::write(root.path().join("index.html"), "public page\n").unwrap();
    let (public, private) = (Nginx::start(root.path()), Nginx::start(root.path()));
    let gw = Gateway::start();
    let _agent = Agent::start(
        &gw,
        transport,
        "alice",
        "web",
        &[
            (
                "KNOT_HTTP_PORT",
                format!("{},{}", public.port(), private.port()),
            ),
            ("KNOT_PUBLIC_HTTP_PORT", public.port().to_string()),
        ],
    );
    let (status, body) = get(
        &gw,
        &gw.space_url(&format!("alice--web--{}", public.port()), "/"),
        None,
    );
    assert_eq!((status, body.as_str()), (200, "public page\n"));
    let (status, _) = get(
        &gw,
        &gw.space_url(&format!("alice--web--{}", private.port()), "/"),
        None,
    );
    assert_eq!(status, 401);
}

/// nginx refuses an upload over its 1 MiB body limit with 413 before it has read the
/// body; the user must get that answer, not a reset connection.
fn an_upload_nginx_refuses_early_gets_its_413(transport: Transport) {
    let s = setup(transport);
    let token = s.gw.user_token("alice", &["alice--web"]);
    let body = s.root.path().join("upload.bin");
    write_random_file(&body, 64 << 20);
    let url =
        s.gw.space_url(&format!("alice--web--{}", s.port), "/upload");
    let auth = format!("Authorization: Bearer {token}");
    let data = format!("@{}", body.display());
    let out = curl(
        &s.gw,
        &[
            "--write-out",
            "\n%{http_code}",
            "-o",
            "/dev/null",
            "-H",
            &auth,
            "--data-binary",
            &data,
            &url,
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.trim_end().ends_with("413"),
        "curl: {stdout} {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.gw.log()
    );
}

on_both_transports!(
    curl_gets_the_page_that_nginx_serves,
    an_upload_nginx_refuses_early_gets_its_413,
    a_256_mib_download_arrives_with_the_same_sha256,
    three_requests_on_one_keep_alive_connection_all_succeed,
    a_public_port_needs_no_token_and_a_private_one_does,
);
