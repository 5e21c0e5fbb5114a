//! Faults a long-running gateway meets: an agent killed mid-download, a second agent
//! taking a space over, and clients that half-close. Nothing is lost or invented: a
//! cut transfer is an error for the user, and end-of-file travels one way only.

// Helpers outside #[test] functions unwrap too: a failure is a failed test. The
// processes under test run on the real clock, so deadlines use it too.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod support;

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use support::servers::{
    answer_then_close_server, echo_after_eof_server, half_close_then_read_server, pattern_byte,
    read_some_then_close_server, sha256_file, stream_server, upgrade_answer_then_close_server,
    upgrade_half_close_then_read_server, upgrade_sink_server, write_random_file, Sshd, TempDir,
    EARLY_ANSWER, HALF_CLOSE_ANSWER, STREAM_BODY,
};
use support::{gateway_bin, Agent, Gateway, Transport};

fn download(gw: &Gateway, url: &str, token: &str, out: &Path, rate: Option<&str>) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args(["--silent", "--show-error", "--fail"])
        .args(["--cacert", gw.cacert().to_str().unwrap()])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["-o", out.to_str().unwrap(), url])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(rate) = rate {
        cmd.args(["--limit-rate", rate]);
    }
    cmd
}

/// A gateway, and alice's agent for her space `dev` over `transport`, offering `port`
/// as the service that the `KNOT_*` variable `var` names.
fn space_offering(transport: Transport, var: &str, port: u16) -> (Gateway, Agent) {
    let gw = Gateway::start();
    let agent = Agent::start(&gw, transport, "alice", "dev", &[(var, port.to_string())]);
    (gw, agent)
}

/// `gateway connect` to `port` of alice/dev, with its standard streams piped.
fn connect_piped(gw: &Gateway, token: &str, port: u16) -> Child {
    Command::new(gateway_bin())
        .args(["--data-dir", gw.data_dir().to_str().unwrap()])
        .args(["connect", "--server", &gw.url(), "--token", token])
        .args(["--port", &port.to_string(), "alice/dev"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_with_limit(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the client did not finish within {limit:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// Asserts that `path` holds a prefix of the stream server's body, of `len` bytes.
fn assert_pattern(path: &Path, len: u64) {
    let mut file = fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        for (i, b) in buf[..n].iter().enumerate() {
            let at = offset + i as u64;
            assert_eq!(*b, pattern_byte(at), "byte {at} differs from the source");
        }
        offset += n as u64;
    }
    assert_eq!(offset, len, "length of {}", path.display());
}

fn kill_9_agent_mid_download_is_an_error_and_a_new_agent_serves(transport: Transport) {
    // The source sends its body without a length, ended by closing the connection:
    // only an abort can tell the user that the body was cut.
    let source = stream_server();
    let gw = Gateway::start_quick();
    let env = [("KNOT_HTTP_PORT", source.to_string())];
    let mut agent = Agent::start(&gw, transport, "alice", "web", &env);
    let token = gw.user_token("alice", &["alice--web"]);
    let url = gw.space_url(&format!("alice--web--{source}"), "/big.bin");
    let dir = TempDir::new("test-faults");
    let cut = dir.path().join("cut.bin");

    let client = download(&gw, &url, &token, &cut, Some("16M"))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while fs::metadata(&cut).map(|m| m.len()).unwrap_or(0) < 4 << 20 {
        assert!(Instant::now() < deadline, "the download never got going");
        thread::sleep(Duration::from_millis(20));
    }
    agent.kill();

    let out = wait_with_limit(client, Duration::from_secs(60));
    let got = fs::metadata(&cut).unwrap().len();
    assert!(
        !out.status.success(),
        "curl reported success for {got} of {STREAM_BODY} bytes"
    );
    assert!(got < STREAM_BODY, "the whole body arrived after the kill");
    assert_pattern(&cut, got);

    // A new agent for the space serves the next download whole.
    let _agent = Agent::start(&gw, transport, "alice", "web", &env);
    let whole = dir.path().join("whole.bin");
    let out = download(&gw, &url, &token, &whole, None).output().unwrap();
    assert!(
        out.status.success(),
        "download after the restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_pattern(&whole, STREAM_BODY);
}

fn ssh(gw: &Gateway, sshd: &Sshd, token: &str, remote: &str) -> Output {
    Command::new("ssh")
        .args(sshd.ssh_base_args())
        .arg("-o")
        .arg(format!(
            "ProxyCommand={}",
            gw.proxy_command("alice/dev", token)
        ))
        .arg(format!("{}@space", sshd.user()))
        .arg(remote)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn a_second_agent_takes_the_space_over_and_the_first_stands_by(transport: Transport) {
    let sshd = Sshd::start();
    let gw = Gateway::start_quick();
    let env = [
        ("KNOT_SSH_PORT", sshd.port().to_string()),
        ("KNOT_AGENT_REPLACED_WAIT", "1".to_owned()),
    ];
    let first = Agent::start(&gw, transport, "alice", "dev", &env);
    let mut second = Agent::start(&gw, transport, "alice", "dev", &env);
    gw.wait_for_log("link replaced by a newer one", 1);
    let token = gw.user_token_for("alice", "alice--dev", "ssh");

    // The first agent is told, comes back after its wait, and is told to stand by:
    // the two do not trade the space.
    wait_for_agent_log(&first, "took over");
    wait_for_agent_log(&first, "standing by");
    gw.wait_for_log("two live agents use this space's token", 1);
    thread::sleep(Duration::from_secs(3));
    assert_eq!(
        support::registrations(&gw, "alice", "dev", transport),
        2,
        "the space changed hands again; gateway log:\n{}",
        gw.log()
    );
    assert_ssh_works(&gw, &sshd, &token);

    // A third agent takes over in turn; neither earlier one takes the space back.
    let mut third = Agent::start(&gw, transport, "alice", "dev", &env);
    wait_for_agent_log(&second, "standing by");
    thread::sleep(Duration::from_secs(4));
    assert_eq!(
        support::registrations(&gw, "alice", "dev", transport),
        3,
        "the space changed hands again among three agents; gateway log:\n{}",
        gw.log()
    );
    assert_ssh_works(&gw, &sshd, &token);

    // Once the agent holding the space is gone, one standing by takes it.
    third.kill();
    support::wait_for_registrations(&gw, "alice", "dev", transport, 4, Duration::from_secs(30));
    assert_ssh_works(&gw, &sshd, &token);
    second.kill();
}

fn wait_for_agent_log(agent: &Agent, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !agent.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "the agent never logged {needle:?}; its log:\n{}",
            agent.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn assert_ssh_works(gw: &Gateway, sshd: &Sshd, token: &str) {
    let out = ssh(gw, sshd, token, "echo through the gateway");
    assert!(
        out.status.success(),
        "ssh: {}\ngateway:\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "through the gateway\n"
    );
}

fn a_raw_tcp_client_that_half_closes_gets_the_whole_reply(transport: Transport) {
    // The service answers only after the client's end-of-file, so the reply proves the
    // end-of-file arrived while the other direction stayed open.
    let echo = echo_after_eof_server();
    let gw = Gateway::start();
    let _agent = Agent::start(
        &gw,
        transport,
        "alice",
        "dev",
        &[("KNOT_TCP_PORT", echo.to_string())],
    );
    let token = gw.user_token_for("alice", "alice--dev", "tcp");
    let dir = TempDir::new("test-halfclose");
    let input = dir.path().join("in.bin");
    let output = dir.path().join("out.bin");
    write_random_file(&input, 8 << 20);

    let out = Command::new(gateway_bin())
        .args(["--data-dir", gw.data_dir().to_str().unwrap()])
        .args(["connect", "--server", &gw.url(), "--token", &token])
        .args(["--port", &echo.to_string(), "alice/dev"])
        .stdin(fs::File::open(&input).unwrap())
        .stdout(fs::File::create(&output).unwrap())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gateway connect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256_file(&output), sha256_file(&input));
}

fn a_service_that_answers_and_closes_mid_upload_has_its_answer_delivered_whole(
    transport: Transport,
) {
    let service = answer_then_close_server();
    let (gw, agent) = space_offering(transport, "KNOT_TCP_PORT", service);
    let token = gw.user_token_for("alice", "alice--dev", "tcp");
    let mut client = connect_piped(&gw, &token, service);
    // The user keeps uploading (up to 256 MiB) while the service answers and closes.
    let mut stdin = client.stdin.take().unwrap();
    let uploader = thread::spawn(move || {
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..4096 {
            if std::io::Write::write_all(&mut stdin, &chunk).is_err() {
                break;
            }
        }
    });
    // Nothing is read until the service has closed, so that when the upload meets the
    // service's reset, the part of the answer that the socket buffers on the way to the
    // user cannot hold still waits in the gateway.
    thread::sleep(Duration::from_millis(1500));
    let mut stdout = client.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        let mut got = Vec::new();
        let _ = stdout.read_to_end(&mut got);
        got
    });
    let out = wait_with_limit(client, Duration::from_secs(60));
    let got = reader.join().unwrap();
    uploader.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let reported_cut = !out.status.success() && stderr.contains("cut");
    let ending = format!("exit {}: {stderr}", out.status);
    check_early_answer(transport, &got, reported_cut, &ending, &gw, &agent);
}

/// A service that answers, ends its side and goes on reading: the user's upload after
/// that still reaches it whole, as over a direct TCP connection, and the session ends
/// well once the upload has.
fn a_service_that_answers_and_half_closes_gets_the_whole_upload(transport: Transport) {
    const UPLOAD: usize = 8 << 20;
    let (service, ends) = half_close_then_read_server();
    let (gw, agent) = space_offering(transport, "KNOT_TCP_PORT", service);
    let token = gw.user_token_for("alice", "alice--dev", "tcp");
    let mut client = connect_piped(&gw, &token, service);
    let mut stdin = client.stdin.take().unwrap();
    let uploader = thread::spawn(move || {
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..UPLOAD / chunk.len() {
            std::io::Write::write_all(&mut stdin, &chunk)?;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut stdout = client.stdout.take().unwrap();
    let mut got = Vec::new();
    stdout.read_to_end(&mut got).unwrap();
    let out = wait_with_limit(client, Duration::from_secs(60));
    let uploaded = uploader.join().unwrap();
    let log = || format!("gateway:\n{}\nagent:\n{}", gw.log(), agent.log());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(got, [b'A'; HALF_CLOSE_ANSWER], "{stderr}\n{}", log());
    assert!(
        uploaded.is_ok() && out.status.success(),
        "upload {uploaded:?}, exit {}: {stderr}\n{}",
        out.status,
        log()
    );
    the_service_read_the_whole_upload(&ends, UPLOAD, &log());
}

/// The same through an HTTP upgrade: after the space's end (TLS close_notify), the
/// client's upload still reaches the service whole.
fn a_service_that_answers_an_upgrade_and_half_closes_gets_the_whole_upload(transport: Transport) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const UPLOAD: usize = 8 << 20;
    let (service, ends) = upgrade_half_close_then_read_server();
    let (gw, agent) = space_offering(transport, "KNOT_HTTP_PORT", service);
    let token = gw.user_token("alice", &["alice--dev"]);
    let host = format!("alice--dev--{service}.gateway.localhost");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (got, end, uploaded) = runtime.block_on(async {
        let (mut from_gw, mut to_gw) = tokio::io::split(upgraded(&gw, &host, &token).await);
        let mut got = Vec::new();
        let end = from_gw.read_to_end(&mut got).await;
        // Only now, after the space's end, the upload.
        let uploaded = async {
            let chunk = vec![7u8; 64 * 1024];
            for _ in 0..UPLOAD / chunk.len() {
                to_gw.write_all(&chunk).await?;
            }
            to_gw.shutdown().await
        }
        .await;
        (got, end, uploaded)
    });
    let log = || format!("gateway:\n{}\nagent:\n{}", gw.log(), agent.log());
    assert_eq!(got, [b'A'; HALF_CLOSE_ANSWER], "{end:?}\n{}", log());
    assert!(
        end.is_ok() && uploaded.is_ok(),
        "{end:?} {uploaded:?}\n{}",
        log()
    );
    the_service_read_the_whole_upload(&ends, UPLOAD, &log());
}

/// A service that stops reading and closes while the user's upload is still on its
/// way: the user is told, never left waiting, and never told that all went well.
fn a_service_that_closes_mid_upload_ends_the_session_with_an_error(transport: Transport) {
    let service = read_some_then_close_server();
    let (gw, agent) = space_offering(transport, "KNOT_TCP_PORT", service);
    let token = gw.user_token_for("alice", "alice--dev", "tcp");
    let mut client = connect_piped(&gw, &token, service);
    let mut stdin = client.stdin.take().unwrap();
    // 1 MiB, more than the link's stream window and the service reads, then the end.
    let _ = std::io::Write::write_all(&mut stdin, &vec![7u8; 1 << 20]);
    drop(stdin);
    let out = wait_with_limit(client, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ready\n");
    assert!(
        !out.status.success() && stderr.contains("1011"),
        "exit {}: {stderr}\ngateway:\n{}\nagent:\n{}",
        out.status,
        gw.log(),
        agent.log()
    );
}

/// The service behind `ends` read `upload` bytes and then end-of-file.
fn the_service_read_the_whole_upload(
    ends: &std::sync::mpsc::Receiver<String>,
    upload: usize,
    log: &str,
) {
    let end = ends.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(end, format!("end-of-file after {upload} bytes"), "{log}");
}

/// What a user must get from [`answer_then_close_server`]: the bytes it sent, unchanged;
/// if fewer than all of them, a cut reported as one (`reported_cut`); over QUIC all of
/// them, not reported as cut. Over QUIC the agent's stream window lets it take the
/// whole answer from the service before the reset. Over yamux the window the agent
/// starts with is smaller, the service's reset throws away the end of its own answer,
/// and the user must be told the stream was cut.
fn check_early_answer(
    transport: Transport,
    got: &[u8],
    reported_cut: bool,
    ending: &str,
    gw: &Gateway,
    agent: &Agent,
) {
    let log = || format!("gateway:\n{}\nagent:\n{}", gw.log(), agent.log());
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, b)| *b == pattern_byte(i as u64)),
        "bytes arrived changed"
    );
    if (got.len() as u64) < EARLY_ANSWER {
        assert!(
            reported_cut,
            "{} of {EARLY_ANSWER} bytes arrived as if whole ({ending})\n{}",
            got.len(),
            log()
        );
    }
    if transport == Transport::Quic {
        assert_eq!(
            got.len() as u64,
            EARLY_ANSWER,
            "the answer arrived cut ({ending})\n{}",
            log()
        );
        assert!(
            !reported_cut,
            "the whole answer was reported cut ({ending})"
        );
    }
}

/// A TLS connection through the gateway to `host` (a space's web port) that asked
/// for an upgrade and got the space's `101`.
async fn upgraded(
    gw: &Gateway,
    host: &str,
    token: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = support::ws::tls_connect(gw, host).await;
    let request = format!(
        "GET /feed HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
         Connection: Upgrade\r\nUpgrade: knot-test\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tls.read_u8().await.unwrap());
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}\n{}", gw.log());
    tls
}

/// The same through an HTTP upgrade on the space's web port (the route a VNC page's
/// websocket takes), which the gateway relays byte for byte.
fn a_service_that_answers_an_upgrade_and_closes_mid_upload_has_its_answer_delivered_whole(
    transport: Transport,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let service = upgrade_answer_then_close_server();
    let (gw, agent) = space_offering(transport, "KNOT_HTTP_PORT", service);
    let token = gw.user_token("alice", &["alice--dev"]);
    let host = format!("alice--dev--{service}.gateway.localhost");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (got, end) = runtime.block_on(async {
        let (mut from_gw, mut to_gw) = tokio::io::split(upgraded(&gw, &host, &token).await);
        // The user keeps uploading (up to 256 MiB) while the service answers and
        // closes, and reads nothing until the service has closed (as above).
        let uploader = tokio::spawn(async move {
            let chunk = vec![7u8; 64 * 1024];
            for _ in 0..4096 {
                if to_gw.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut got = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(60), from_gw.read_to_end(&mut got))
            .await
            .expect("the answer did not end within 60 s");
        uploader.abort();
        (got, end)
    });
    // A cut must end in an error (no TLS close_notify), never in a clean end.
    let ending = format!("{end:?}");
    check_early_answer(transport, &got, end.is_err(), &ending, &gw, &agent);
}

/// A user whose connection is cut mid-upload through an HTTP upgrade: the space's
/// service must see its connection reset, not ended as if the upload were whole.
fn a_user_cut_off_mid_upgrade_is_a_reset_for_the_space_not_an_end(transport: Transport) {
    use tokio::io::AsyncWriteExt;
    let (service, ends) = upgrade_sink_server();
    let (gw, agent) = space_offering(transport, "KNOT_HTTP_PORT", service);
    let token = gw.user_token("alice", &["alice--dev"]);
    let host = format!("alice--dev--{service}.gateway.localhost");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut tls = upgraded(&gw, &host, &token).await;
        tls.write_all(&vec![7u8; 1 << 20]).await.unwrap();
        tls.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Cut: the connection is reset, with neither TLS's close_notify nor a FIN.
        tls.get_ref().0.set_zero_linger().unwrap();
    });
    let end = ends
        .recv_timeout(Duration::from_secs(30))
        .expect("the service's connection did not end within 30 s");
    assert!(
        !end.starts_with("end-of-file"),
        "the space's service saw {end} where the user was cut off\ngateway:\n{}\nagent:\n{}",
        gw.log(),
        agent.log()
    );
}

fn kill_9_agent_mid_stream_makes_gateway_connect_fail(transport: Transport) {
    let source = stream_server();
    let gw = Gateway::start_quick();
    let env = [("KNOT_TCP_PORT", source.to_string())];
    let mut agent = Agent::start(&gw, transport, "alice", "dev", &env);
    let token = gw.user_token_for("alice", "alice--dev", "tcp");
    let mut client = connect_piped(&gw, &token, source);
    let mut stdin = client.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut stdout = client.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0;
    while got < 4 << 20 {
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended before the kill");
        got += n;
    }
    agent.kill();
    // Reading stops being slow once the stream is cut; whatever was in flight drains.
    let reader = thread::spawn(move || {
        let mut rest = 0;
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            rest += n;
        }
        rest
    });
    let out = wait_with_limit(client, Duration::from_secs(60));
    let total = got + reader.join().unwrap();
    assert!(
        (total as u64) < STREAM_BODY,
        "everything arrived after the kill"
    );
    assert!(
        !out.status.success(),
        "gateway connect exited 0 after a cut stream ({total} bytes)"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cut"), "stderr: {stderr}");
    drop(stdin);
}

on_both_transports!(
    kill_9_agent_mid_download_is_an_error_and_a_new_agent_serves,
    kill_9_agent_mid_stream_makes_gateway_connect_fail,
    a_second_agent_takes_the_space_over_and_the_first_stands_by,
    a_raw_tcp_client_that_half_closes_gets_the_whole_reply,
    a_service_that_answers_and_closes_mid_upload_has_its_answer_delivered_whole,
    a_service_that_answers_an_upgrade_and_closes_mid_upload_has_its_answer_delivered_whole,
    a_user_cut_off_mid_upgrade_is_a_reset_for_the_space_not_an_end,
    a_service_that_answers_and_half_closes_gets_the_whole_upload,
    a_service_that_answers_an_upgrade_and_half_closes_gets_the_whole_upload,
    a_service_that_closes_mid_upload_ends_the_session_with_an_error,
);
