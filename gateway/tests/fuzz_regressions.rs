//! Replays the inputs of the gateway's fuzz targets (`fuzz/`, docs/fuzzing.md) through
//! the same code as the targets, so that CI keeps them passing without a fuzzer: the
//! seed corpus in `fuzz/seeds/TARGET`, every crashing input a fuzzer ever found in
//! `fuzz/regressions/TARGET`, and hand-written hostile inputs whose outcome is known.
//!
//! One difference: the `http_head` target parses heads with `httparse`, which the
//! gateway does not depend on directly, so here its inputs go to a real hyper HTTP/1.1
//! connection (which parses with `httparse` underneath) whose handler routes the way
//! the front door does.

// Helpers outside #[test] functions unwrap too: a failure is a failed test.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::fs;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use gateway::auth::{Minter, TokenError, Verifier, ADMIN_AUDIENCE, AGENT_AUDIENCE, USER_AUDIENCE};
use gateway::front::route::{route, Route, RouteError};
use gateway::keys::SigningKey;
use gateway::registry::SpaceKey;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

const DOMAIN: &str = "gateway.localhost";

/// The gateway's websocket `MAX_MESSAGE` (gateway/src/front/ws.rs).
const MAX_MESSAGE: usize = 1 << 20;

fn fuzz_dir(kind: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(kind)
        .join(target)
}

/// Every file saved for `target` under `fuzz/KIND`, sorted; a missing folder holds none.
fn saved_inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(dir) = fs::read_dir(fuzz_dir(kind, target)) else {
        return Vec::new();
    };
    let mut paths: Vec<_> = dir
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let data = fs::read(&p).unwrap();
            (p, data)
        })
        .collect()
}

/// Runs `check` on the seeds and the saved crashes of `target`, naming a file that
/// panics; there must be seeds.
fn replay_saved(target: &str, check: impl Fn(&[u8])) {
    let seeds = saved_inputs("seeds", target);
    assert!(!seeds.is_empty(), "no seeds in fuzz/seeds/{target}");
    for (path, data) in seeds.iter().chain(&saved_inputs("regressions", target)) {
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| check(data)));
        assert!(run.is_ok(), "{} panics", path.display());
    }
}

// ---- route ---------------------------------------------------------------------------

/// What the `route` target does: the first byte is the host's length.
fn route_input(data: &[u8]) -> Option<Result<Route, RouteError>> {
    let (&split, rest) = data.split_first()?;
    let (host, path) = rest.split_at(usize::from(split).min(rest.len()));
    let host = String::from_utf8_lossy(host);
    let path = String::from_utf8_lossy(path);
    let found = route(Some(&host), &path, DOMAIN);
    if let Ok(found) = &found {
        let space = match found {
            Route::Port { space, port } | Route::Tcp { space, port } => {
                assert_ne!(*port, 0, "{found:?}");
                space
            }
            Route::Vnc { space } | Route::Ssh { space } => space,
        };
        assert_valid(space);
    }
    Some(found)
}

fn assert_valid(space: &SpaceKey) {
    for name in [&space.user, &space.space] {
        assert!(!name.is_empty() && name.len() <= 63, "{space:?}");
        assert!(!name.contains("--"), "{space:?}");
        assert!(!name.starts_with('-') && !name.ends_with('-'), "{space:?}");
        let allowed =
            |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_';
        assert!(name.bytes().all(allowed), "{space:?}");
    }
}

#[test]
fn saved_route_inputs_replay_without_panic() {
    replay_saved("route", |data| {
        let _ = route_input(data);
    });
}

#[test]
fn hostile_hosts_and_paths_have_no_route() {
    let long = "a".repeat(64);
    let cases = [
        ("[", "/"),
        ("[]", "/"),
        ("[::1", "/"),
        (":", "/"),
        ("", "/"),
        (".", "/"),
        ("..gateway.localhost", "/"),
        ("a--b--80..gateway.localhost", "/"),
        ("a--b--65536.gateway.localhost", "/"),
        ("a--b--+80.gateway.localhost", "/"),
        ("a-\u{0}--b--80.gateway.localhost", "/"),
        ("ａ--b--80.gateway.localhost", "/"),
        ("gateway.localhost", "/tcp/a/b/0"),
        ("gateway.localhost", "/tcp/a/b/65536"),
        ("gateway.localhost", "/ssh/a-/b"),
        ("gateway.localhost", "/ssh/a/b/c"),
        ("gateway.localhost", "//ssh/a//b"),
        ("gateway.localhost", "/ssh/\u{fffd}/b"),
    ];
    for (host, path) in cases.into_iter().chain([("gateway.localhost", "/ssh/a")]) {
        let mut data = vec![host.len() as u8];
        data.extend_from_slice(host.as_bytes());
        data.extend_from_slice(path.as_bytes());
        assert!(route_input(&data).unwrap().is_err(), "{host:?} {path:?}");
    }
    let path = format!("/ssh/{long}/b");
    assert!(route(Some(DOMAIN), &path, DOMAIN).is_err());
}

#[test]
fn upper_case_names_route_to_the_lower_case_space() {
    let found = route_input(b"\x11GATEWAY.localhost/SSH/Alice/Web");
    assert!(found.unwrap().is_err(), "path segments are case-sensitive");
    let found = route_input(b"\x11GATEWAY.localhost/ssh/Alice/Web").unwrap();
    let Ok(Route::Ssh { space }) = found else {
        panic!("{found:?}");
    };
    assert_eq!(
        (space.user.as_str(), space.space.as_str()),
        ("alice", "web")
    );
}

// ---- token ---------------------------------------------------------------------------

fn keys() -> &'static (Minter, Verifier) {
    static KEYS: OnceLock<(Minter, Verifier)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let key = SigningKey::generate().unwrap();
        let verifier = Verifier::new(&key.verifying_key());
        (Minter::new(key), verifier)
    })
}

/// What the `token` target does; returns the user check of the signed claims, if the
/// input was JSON.
fn token_input(data: &[u8]) -> Option<Result<String, TokenError>> {
    let (minter, verifier) = keys();
    let text = String::from_utf8_lossy(data);
    assert!(verifier.user(&text).is_err(), "forged user token accepted");
    assert!(
        verifier.agent(&text).is_err(),
        "forged agent token accepted"
    );
    assert!(
        verifier.admin(&text).is_err(),
        "forged admin token accepted"
    );

    let claims = serde_json::from_slice::<serde_json::Value>(data).ok()?;
    let token = minter.sign(&claims);
    if let Ok(agent) = verifier.agent(&token) {
        assert_eq!(agent.aud, AGENT_AUDIENCE);
    }
    if let Ok(admin) = verifier.admin(&token) {
        assert_eq!(admin.aud, ADMIN_AUDIENCE);
    }
    let user = verifier.user(&token).map(|user| {
        assert_eq!(user.aud, USER_AUDIENCE);
        user.sub
    });
    Some(user)
}

#[test]
fn saved_token_inputs_replay_without_panic() {
    replay_saved("token", |data| {
        let _ = token_input(data);
    });
}

#[test]
fn hostile_token_texts_are_refused() {
    let big = "A".repeat(100_000);
    let texts = [
        "",
        ".",
        "..",
        "a.b.c",
        "a.b.c.d",
        "\u{0}.\u{0}.\u{0}",
        "eyJhbGciOiJFZERTQSJ9..",
        "eyJhbGciOiJFZERTQSJ9.e30.",
        "eyJhbGciOiJFZERTQSJ9.e30.====",
        "eyJhbGciOiJub25lIn0.eyJhdWQiOiJ1c2VyIn0.",
        big.as_str(),
    ];
    for text in texts {
        assert_eq!(token_input(text.as_bytes()), None, "{text:.40}");
    }
    let header = "eyJhbGciOiJFZERTQSJ9.";
    let long_token = format!("{header}{big}.{big}");
    assert_eq!(token_input(long_token.as_bytes()), None);
}

#[test]
fn signed_claims_are_judged_by_their_content() {
    let far = 4_102_444_800u64;
    let cases = [
        (
            format!(
                r#"{{"aud":"user","sub":"a","spaces":["*"],"svc":["ssh"],"iat":0,"exp":{far}}}"#
            ),
            Ok("a".to_owned()),
        ),
        (
            r#"{"aud":"user","sub":"a","spaces":[],"svc":[],"exp":1}"#.to_owned(),
            Err(TokenError::Expired),
        ),
        (
            format!(r#"{{"aud":"user","sub":"a","exp":{far},"nbf":{far}}}"#),
            Err(TokenError::NotYetValid),
        ),
        (
            format!(r#"{{"aud":"agent","sub":"a","exp":{far}}}"#),
            Err(TokenError::WrongAudience {
                expected: USER_AUDIENCE,
            }),
        ),
    ];
    for (claims, expected) in cases {
        assert_eq!(token_input(claims.as_bytes()), Some(expected), "{claims}");
    }

    let invalid = [
        format!(r#"{{"aud":"user","sub":"a","exp":{far}}}"#),
        format!(r#"{{"aud":["user","admin"],"sub":"a","spaces":[],"svc":[],"exp":{far}}}"#),
        format!(r#"{{"aud":"user","sub":"a","spaces":[],"svc":["root"],"exp":{far}}}"#),
        r#"{"aud":"user","sub":"a","spaces":[],"svc":[],"exp":-1}"#.to_owned(),
        r#"{"aud":"user","sub":"a","spaces":[],"svc":[],"exp":1e300}"#.to_owned(),
        r#"{"aud":"user","sub":"a","spaces":[],"svc":[],"exp":"never"}"#.to_owned(),
        r#"{"aud":"user","sub":"a","exp":18446744073709551615,"nbf":18446744073709551615}"#
            .to_owned(),
        r#"{"aud":5}"#.to_owned(),
        "[]".to_owned(),
        "null".to_owned(),
    ];
    for claims in invalid {
        let outcome = token_input(claims.as_bytes()).unwrap();
        assert!(outcome.is_err(), "{claims}: {outcome:?}");
    }
}

// ---- http_head -----------------------------------------------------------------------

/// Routes the way `front::handle` does, and answers with the outcome.
async fn route_request(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or(req.uri().host());
    let (status, text) = match route(host, req.uri().path(), DOMAIN) {
        Ok(found) => (StatusCode::OK, format!("{found:?}")),
        Err(RouteError::NoHost) => (StatusCode::BAD_REQUEST, String::new()),
        Err(e) => (StatusCode::NOT_FOUND, e.to_string()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    Ok(resp)
}

/// Writes `head` to an HTTP/1.1 connection, ends the request side, and returns all
/// that the connection answered.
async fn http_head(head: &[u8]) -> Vec<u8> {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    // Half-close: the request side ends right after the head, and the answer must
    // still be written.
    let conn = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .serve_connection(TokioIo::new(server), service_fn(route_request));
    let serve = tokio::spawn(conn);
    client.write_all(head).await.unwrap();
    client.shutdown().await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut answer));
    read.await.expect("the connection ends").unwrap();
    let _ = serve.await.unwrap();
    answer
}

#[tokio::test]
async fn saved_http_head_inputs_replay_without_panic() {
    let seeds = saved_inputs("seeds", "http_head");
    assert!(!seeds.is_empty(), "no seeds in fuzz/seeds/http_head");
    for (path, data) in seeds {
        let answer = http_head(&data).await;
        assert!(answer.starts_with(b"HTTP/1.1 "), "{}", path.display());
    }
    for (_, data) in saved_inputs("regressions", "http_head") {
        http_head(&data).await;
    }
}

#[tokio::test]
async fn hostile_request_heads_get_an_answer_and_no_route() {
    let heads: [&[u8]; 7] = [
        b"GET / HTTP/1.1\r\nHost: [\r\n\r\n",
        b"GET /ssh/a/b HTTP/1.1\r\nHost: gateway.localhost\xff\r\n\r\n",
        b"GET http://[::1]:80/ssh/a/b HTTP/1.1\r\n\r\n",
        b"GET /ssh/a/b HTTP/1.1\r\nHost: \r\nHost: gateway.localhost\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: gateway.localhost\r\n\r\n",
        b"GET /tcp/a/b/99999 HTTP/1.1\r\nHost: gateway.localhost\r\n\r\n",
        b"\x00\x00\x00\x05\x04garbage\r\n\r\n",
    ];
    for head in heads {
        let answer = http_head(head).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(!text.starts_with("HTTP/1.1 200"), "{text}");
    }
    let ok = http_head(b"GET /ssh/a/b HTTP/1.1\r\nHost: GATEWAY.localhost.:443\r\n\r\n").await;
    assert!(
        ok.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&ok)
    );
}

// ---- websocket_frames ----------------------------------------------------------------

/// What the `websocket_frames` target does: the server side of a websocket with the
/// gateway's limits reads `data` to its end. Returns the messages and how reading ended.
async fn websocket_frames(data: &[u8]) -> (Vec<Message>, Option<WsError>) {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let io = tokio::io::join(data, tokio::io::sink());
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    let mut messages = Vec::new();
    while let Some(next) = ws.next().await {
        match next {
            Ok(msg) => {
                assert!(msg.len() <= MAX_MESSAGE, "message of {} bytes", msg.len());
                messages.push(msg);
            }
            Err(e) => return (messages, Some(e)),
        }
    }
    (messages, None)
}

#[tokio::test]
async fn saved_websocket_inputs_replay_without_panic() {
    let inputs: Vec<_> = saved_inputs("seeds", "websocket_frames")
        .into_iter()
        .chain(saved_inputs("regressions", "websocket_frames"))
        .collect();
    assert!(
        !inputs.is_empty(),
        "no seeds in fuzz/seeds/websocket_frames"
    );
    for (_, data) in inputs {
        websocket_frames(&data).await;
    }
}

/// A client frame (RFC 6455 section 5.2), masked with a fixed key.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut out = vec![first];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=65535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    out
}

#[tokio::test]
async fn hostile_websocket_frames_end_the_read_with_an_error() {
    let announce = |len: u64| {
        let mut out = vec![0x82, 0x80 | 127];
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        out
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "frame over 1 MiB announced",
            announce(MAX_MESSAGE as u64 + 1),
        ),
        ("length with the top bit set", announce(u64::MAX)),
        ("unmasked client frame", b"\x82\x03abc".to_vec()),
        ("reserved bits", frame(0xf2, b"x")),
        ("reserved opcode", frame(0x83, b"x")),
        ("control frame over 125 bytes", frame(0x89, &[0; 126])),
        ("fragmented control frame", frame(0x09, b"p")),
        ("continuation without a start", frame(0x80, b"x")),
        ("text that is not UTF-8", frame(0x81, &[0xc3, 0x28])),
        ("close with one byte", frame(0x88, &[3])),
        ("message over 1 MiB in fragments", {
            let chunk = vec![0; MAX_MESSAGE / 2 + 1];
            let mut out = frame(0x02, &chunk);
            out.extend(frame(0x80, &chunk));
            out
        }),
    ];
    for (what, data) in cases {
        let (messages, end) = websocket_frames(&data).await;
        assert!(end.is_some(), "{what}: read {messages:?} and no error");
        assert!(messages.is_empty(), "{what}: read {messages:?}");
    }
}

#[tokio::test]
async fn a_message_of_exactly_1_mib_is_read() {
    let chunk = vec![7; MAX_MESSAGE / 2];
    let mut data = frame(0x02, &chunk);
    data.extend(frame(0x80, &chunk));
    let (messages, _) = websocket_frames(&data).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].len(), MAX_MESSAGE);
}
