//! Browser login: `?access_token=` on a space host becomes a host-only cookie and a
//! redirect to the same page without the token. Checked with curl, with a real headless
//! Chromium, and on the VNC host with a websocket that carries only the cookie.

// Helpers outside #[test] functions unwrap too: a failure is a failed test.
#![allow(clippy::unwrap_used)]
// Real processes run on the real clock; tokio's pausable time does not apply.
#![allow(clippy::disallowed_methods)]

mod support;

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use support::servers::{Nginx, TempDir, VncDesktop};
use support::ws::{connect_with_headers, ByteStream, Ws};
use support::{curl, Agent, Gateway, Transport};

/// A user token's default lifetime (`gateway token user` without `--ttl`).
const TOKEN_TTL_SECS: u64 = 12 * 3600;

/// How long headless Chromium may take to load one page on a loaded two-core machine.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);

/// A page that shows the address it was loaded from, so that a DOM dump tells whether
/// the token is still in the address bar.
const PAGE: &str = "<!doctype html>\n<html><body>\n<h1>hello from the space</h1>\n\
    <p id=\"url\"></p>\n\
    <script>document.getElementById('url').textContent = 'loaded from ' + location.href;</script>\n\
    </body></html>\n";

struct Web {
    gw: Gateway,
    _agent: Agent,
    _nginx: Nginx,
    _root: TempDir,
    port: u16,
}

impl Web {
    /// nginx serving [`PAGE`] as alice--web's HTTP port.
    fn start() -> Web {
        let root = TempDir::new("test-www");
        fs::write(root.path().join("index.html"), PAGE).unwrap();
        let nginx = Nginx::start(root.path());
        let gw = Gateway::start();
        let port = nginx.port();
        let agent = Agent::start(
            &gw,
            Transport::Quic,
            "alice",
            "web",
            &[("KNOT_HTTP_PORT", port.to_string())],
        );
        Web {
            gw,
            _agent: agent,
            _nginx: nginx,
            _root: root,
            port,
        }
    }

    fn host(&self) -> String {
        format!("alice--web--{}.gateway.localhost", self.port)
    }

    fn url(&self, path: &str) -> String {
        self.gw
            .space_url(&format!("alice--web--{}", self.port), path)
    }
}

/// A response's status and headers.
#[derive(Debug)]
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The head of the answer to a GET of `url` (not following redirects).
fn head(gw: &Gateway, url: &str, extra: &[&str]) -> Head {
    let mut args = vec!["-D", "-", "-o", "/dev/null", "--max-time", "30"];
    args.extend(extra);
    args.push(url);
    let out = curl(gw, &args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?} {out:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Head { status, headers }
}

/// The `space_gateway_token=...` pair of a `Set-Cookie` value.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().trim().to_owned()
}

/// The `Max-Age` of a `Set-Cookie` value.
fn max_age(set_cookie: &str) -> u64 {
    set_cookie
        .split(';')
        .find_map(|a| a.trim().strip_prefix("Max-Age="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Max-Age in {set_cookie:?}"))
}

#[test]
fn curl_login_sets_a_host_only_cookie_and_redirects_without_the_token() {
    let web = Web::start();
    let gw = &web.gw;
    let token = gw.user_token("alice", &["alice--web"]);

    // 1. The login answer itself.
    let login = web.url(&format!("/?access_token={token}&x=1"));
    let resp = head(gw, &login, &[]);
    assert_eq!(resp.status, 303, "{resp:?}\n{}", gw.log());
    assert_eq!(resp.get("location"), Some("/?x=1"));
    assert_eq!(resp.get("cache-control"), Some("no-store"));
    assert_eq!(resp.get("referrer-policy"), Some("no-referrer"));
    let set_cookie = resp.get("set-cookie").unwrap();
    assert_eq!(
        cookie_pair(set_cookie),
        format!("space_gateway_token={token}")
    );
    let attributes: Vec<&str> = set_cookie.split(';').map(str::trim).collect();
    for wanted in ["Path=/", "HttpOnly", "Secure", "SameSite=Lax"] {
        assert!(attributes.contains(&wanted), "{wanted} in {set_cookie:?}");
    }
    assert!(
        !set_cookie.contains("Domain"),
        "host-only cookie: {set_cookie:?}"
    );
    let age = max_age(set_cookie);
    assert!(
        (TOKEN_TTL_SECS - 120..=TOKEN_TTL_SECS).contains(&age),
        "Max-Age {age} is the token's remaining lifetime"
    );

    // 2. Following it with a cookie jar reaches nginx; the last address has no token.
    let jar_dir = TempDir::new("test-jar");
    let jar = jar_dir.path().join("jar").to_str().unwrap().to_owned();
    let out = curl(
        gw,
        &[
            "-L",
            "-c",
            &jar,
            "-b",
            &jar,
            "--max-time",
            "30",
            "--write-out",
            "\n%{http_code} %{url_effective}",
            &login,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, last) = text.rsplit_once('\n').unwrap();
    assert!(
        body.contains("hello from the space"),
        "{text}\n{}",
        gw.log()
    );
    assert_eq!(last, format!("200 {}", web.url("/?x=1")));
    // Netscape jar format: a host-only cookie has its exact host and FALSE for
    // "include subdomains".
    let jar_text = fs::read_to_string(&jar).unwrap();
    let line = jar_text
        .lines()
        .find(|l| l.contains("space_gateway_token"))
        .unwrap_or_else(|| panic!("no cookie in the jar:\n{jar_text}"));
    let fields: Vec<&str> = line.split('\t').collect();
    assert_eq!(fields[0], format!("#HttpOnly_{}", web.host()), "{line}");
    assert_eq!(fields[1], "FALSE", "not sent to subdomains: {line}");
    assert_eq!(fields[3], "TRUE", "secure: {line}");

    // 3. A bad token and a token for another space: the usual refusals, no cookie.
    let resp = head(gw, &web.url("/?access_token=not.a.token"), &[]);
    assert_eq!(resp.status, 401, "{resp:?}");
    assert_eq!(resp.get("set-cookie"), None);
    let other = gw.user_token("alice", &["alice--other"]);
    let resp = head(gw, &web.url(&format!("/?access_token={other}")), &[]);
    assert_eq!(resp.status, 403, "{resp:?}");
    assert_eq!(resp.get("set-cookie"), None);

    // 4. Space A's cookie does not open space B: curl's jar does not send it to B's
    //    host (401, no token at all), and sent by hand it does not grant B (403).
    let space_b = gw.space_url(&format!("alice--other--{}", web.port), "/");
    let resp = head(gw, &space_b, &["-b", &jar]);
    assert_eq!(resp.status, 401, "{resp:?}");
    let by_hand = format!("Cookie: {}", cookie_pair(set_cookie));
    let resp = head(gw, &space_b, &["-H", &by_hand]);
    assert_eq!(resp.status, 403, "{resp:?}");

    // 5. The same cookie, sent by hand, does open A.
    let resp = head(gw, &web.url("/"), &["-H", &by_hand]);
    assert_eq!(resp.status, 200, "{resp:?}");
}

#[test]
fn headless_chromium_follows_the_login_link_to_the_page() {
    let web = Web::start();
    let token = web.gw.user_token_for("alice", "alice--web", "http");
    let dom = chromium_dump_dom(&web.url(&format!("/?access_token={token}&x=1")));
    assert!(
        dom.contains("hello from the space"),
        "the page did not load:\n{dom}\n{}",
        web.gw.log()
    );
    // The script wrote the address the page was finally loaded from.
    let expected = format!("loaded from {}", web.url("/?x=1"));
    assert!(dom.contains(&expected), "{expected:?} in\n{dom}");
    assert!(
        !dom.contains("access_token"),
        "token left in the URL:\n{dom}"
    );
    assert!(web.gw.log().contains("browser login"), "{}", web.gw.log());
}

/// Loads `url` in headless Chromium (Debian's package, no downloaded browser) with a
/// fresh profile and returns the DOM after the page's scripts ran. The whole process
/// group is killed after [`BROWSER_TIMEOUT`] or when done, since Chromium leaves
/// helper processes behind.
fn chromium_dump_dom(url: &str) -> String {
    let dir = TempDir::new("test-chromium");
    let (dom, log) = (dir.path().join("dom.html"), dir.path().join("chromium.log"));
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            // Root in a container has no user namespaces for the sandbox.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--no-proxy-server",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // The gateway's development certificate is self-signed.
            "--ignore-certificate-errors",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .args(["--dump-dom", url])
        .env("HOME", dir.path())
        .stdout(File::create(&dom).unwrap())
        .stderr(File::create(&log).unwrap())
        .process_group(0)
        .spawn()
        .expect("chromium is installed by scripts/install-test-deps.sh");
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.wait();
    let log = fs::read_to_string(&log).unwrap_or_default();
    match status {
        Some(s) if s.success() => fs::read_to_string(&dom).unwrap(),
        Some(s) => panic!("chromium exited with {s}:\n{log}"),
        None => panic!("chromium did not finish within {BROWSER_TIMEOUT:?}:\n{log}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vnc_login_cookie_alone_opens_the_desktop_websocket() {
    let desktop = VncDesktop::start();
    let gw = Gateway::start();
    let _agent = Agent::start(
        &gw,
        Transport::Quic,
        "alice",
        "desk",
        &[("KNOT_VNC_HTTP_PORT", desktop.websockify_port().to_string())],
    );
    let token = gw.user_token_for("alice", "alice--desk", "vnc");

    // 1. The login on the VNC host.
    let login = gw.space_url("alice--desk--vnc", &format!("/?access_token={token}"));
    let resp = head(&gw, &login, &[]);
    assert_eq!(resp.status, 303, "{resp:?}\n{}", gw.log());
    assert_eq!(resp.get("location"), Some("/"));
    let cookie = cookie_pair(resp.get("set-cookie").unwrap());
    assert_eq!(cookie, format!("space_gateway_token={token}"));

    // 2. A websocket with only the cookie reaches websockify, which relays x11vnc's
    //    greeting (RFC 6143 section 7.1.1); without it the gateway refuses.
    let url = format!(
        "wss://alice--desk--vnc.gateway.localhost:{}/websockify",
        gw.public_port
    );
    let ws = connect(&gw, &url, Some(&cookie))
        .await
        .unwrap_or_else(|s| panic!("status {s}\n{}", gw.log()));
    assert_eq!(ByteStream::new(ws).read_exact(12).await, b"RFB 003.008\n");
    assert_eq!(connect(&gw, &url, None).await.err(), Some(401));

    // 3. A websocket with ?access_token= is still authorized directly, not redirected.
    let with_token = format!("{url}?access_token={token}");
    let ws = connect(&gw, &with_token, None)
        .await
        .unwrap_or_else(|s| panic!("status {s}\n{}", gw.log()));
    assert_eq!(ByteStream::new(ws).read_exact(12).await, b"RFB 003.008\n");
}

/// Opens `url` with an optional `Cookie` header and the `binary` subprotocol.
async fn connect(gw: &Gateway, url: &str, cookie: Option<&str>) -> Result<Ws, u16> {
    let mut headers = vec![("sec-websocket-protocol", "binary".to_owned())];
    if let Some(c) = cookie {
        headers.push(("cookie", c.to_owned()));
    }
    connect_with_headers(gw, url, &headers).await
}
