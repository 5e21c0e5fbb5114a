//! Replays the inputs of the link-protocol fuzz targets (`fuzz/`, docs/fuzzing.md)
//! through the same code as the targets, so that CI keeps them passing without a
//! fuzzer: the seed corpus in `fuzz/seeds/TARGET`, every crashing input a fuzzer ever
//! found in `fuzz/regressions/TARGET`, and hand-written hostile inputs whose error is
//! known.
//!
//! The seeds of these two targets are encoded by the codec itself; after a change to
//! the wire format, rewrite them with
//! `FUZZ_WRITE_SEEDS=1 cargo test -p agent-link --test fuzz_regressions`.

// Helpers outside #[test] functions unwrap too: a failure is a failed test.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use agent_link::io::{read_frame, ControlReader, ReadError};
use agent_link::proto::{
    frame_len, ClientAddr, ControlMessage, DecodeError, FrameDecoder, RefuseReason, RejectReason,
    RequestId, Service, ServiceKind, StreamAnswer, StreamClass, StreamOpen, MAX_FRAME_LEN,
};
use bytes::{BufMut, BytesMut};

/// How a sequence of control messages ended.
#[derive(Debug, Clone, PartialEq)]
enum End {
    /// Between two messages, at the end of the input.
    Clean,
    /// Inside a frame.
    Truncated,
    /// On a frame or message that does not decode.
    Invalid(DecodeError),
}

/// What the `control_message` target does with one input: the messages it holds and
/// how they end, through the frame decoder (checking each message's round trip) and
/// through `ControlReader`, which must agree.
fn control_message(data: &[u8]) -> (Vec<ControlMessage>, End) {
    let decoded = decode_control(data);
    assert_eq!(read_control(data), decoded);
    decoded
}

fn decode_control(data: &[u8]) -> (Vec<ControlMessage>, End) {
    let mut buf = BytesMut::from(data);
    let mut frames = FrameDecoder::new();
    let mut messages = Vec::new();
    loop {
        let body = match frames.decode(&mut buf) {
            Ok(Some(body)) => body,
            Ok(None) if buf.is_empty() => return (messages, End::Clean),
            Ok(None) => return (messages, End::Truncated),
            Err(e) => return (messages, End::Invalid(e)),
        };
        match ControlMessage::decode(&body) {
            Ok(msg) => {
                let mut out = BytesMut::new();
                msg.encode(&mut out);
                assert_eq!(ControlMessage::decode(&body_of(&mut out)), Ok(msg.clone()));
                messages.push(msg);
            }
            Err(e) => return (messages, End::Invalid(e)),
        }
    }
}

fn read_control(data: &[u8]) -> (Vec<ControlMessage>, End) {
    let mut reader = ControlReader::new(data);
    let mut messages = Vec::new();
    loop {
        match ready(reader.next()) {
            Ok(Some(msg)) => messages.push(msg),
            Ok(None) => return (messages, End::Clean),
            Err(ReadError::Truncated) => return (messages, End::Truncated),
            Err(ReadError::Decode(e)) => return (messages, End::Invalid(e)),
            Err(ReadError::Io(e)) => panic!("reading from memory failed: {e}"),
        }
    }
}

/// What the `stream_header` target does with one input: both decoders on the input as
/// a frame body, and `read_frame` on it as a stream, which must take exactly the frame
/// the frame decoder sees and leave the rest. Returns the body decoders' results.
fn stream_header(
    data: &[u8],
) -> (
    Result<StreamOpen, DecodeError>,
    Result<StreamAnswer, DecodeError>,
) {
    if let Some(prefix) = data.first_chunk::<4>() {
        if let Ok(len) = frame_len(*prefix) {
            assert!((1..=MAX_FRAME_LEN).contains(&len));
        }
    }
    let decoded = decode_stream_body(data);

    let mut rest = data;
    let expected = FrameDecoder::new().decode(&mut BytesMut::from(data));
    match ready(read_frame(&mut rest)) {
        Ok(Some(body)) => {
            assert_eq!(expected, Ok(Some(body.clone())));
            assert_eq!(
                rest.len(),
                data.len() - 4 - body.len(),
                "read past the frame"
            );
            let _ = decode_stream_body(&body);
        }
        Ok(None) => assert!(data.is_empty()),
        Err(ReadError::Truncated) => assert_eq!(expected, Ok(None)),
        Err(ReadError::Decode(e)) => assert_eq!(expected, Err(e)),
        Err(ReadError::Io(e)) => panic!("reading from memory failed: {e}"),
    }
    decoded
}

fn decode_stream_body(
    body: &[u8],
) -> (
    Result<StreamOpen, DecodeError>,
    Result<StreamAnswer, DecodeError>,
) {
    let open = StreamOpen::decode(body);
    if let Ok(open) = &open {
        let mut out = BytesMut::new();
        open.encode(&mut out);
        assert_eq!(StreamOpen::decode(&body_of(&mut out)).as_ref(), Ok(open));
    }
    let answer = StreamAnswer::decode(body);
    if let Ok(answer) = &answer {
        let mut out = BytesMut::new();
        answer.encode(&mut out);
        assert_eq!(
            StreamAnswer::decode(&body_of(&mut out)).as_ref(),
            Ok(answer)
        );
    }
    (open, answer)
}

fn body_of(frame: &mut BytesMut) -> BytesMut {
    FrameDecoder::new().decode(frame).unwrap().unwrap()
}

/// Reading from a slice never waits, so one poll finishes the future.
fn ready<F: Future>(fut: F) -> F::Output {
    match pin!(fut).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("reading from memory waited"),
    }
}

fn fuzz_dir(kind: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(kind)
        .join(target)
}

/// The files saved for `target` under `fuzz/KIND`; a missing folder holds none.
fn saved_inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(dir) = fs::read_dir(fuzz_dir(kind, target)) else {
        return Vec::new();
    };
    let mut inputs: Vec<_> = dir
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let data = fs::read(&p).unwrap();
            (p, data)
        })
        .collect();
    inputs.sort();
    inputs
}

fn services(n: usize) -> Vec<Service> {
    (0..n)
        .map(|i| Service {
            name: format!("s{i}"),
            port: i as u16 + 1,
            kind: [
                ServiceKind::Tcp,
                ServiceKind::Http,
                ServiceKind::Https,
                ServiceKind::Vnc,
            ][i % 4],
            public: i % 2 == 0,
        })
        .collect()
}

fn control_seeds() -> Vec<(&'static str, ControlMessage)> {
    vec![
        (
            "hello",
            ControlMessage::Hello {
                version: 1,
                agent_version: "0.1.0".into(),
                token: "eyJhbGciOiJFZERTQSJ9.e30.c2ln".into(),
                services: services(4),
                instance: 42,
            },
        ),
        (
            "welcome",
            ControlMessage::Welcome {
                version: 1,
                session: 7,
                ping_interval_ms: 15_000,
            },
        ),
        (
            "reject",
            ControlMessage::Reject {
                reason: RejectReason::NotYetValid,
                message: "the token is not valid yet".into(),
            },
        ),
        ("ping", ControlMessage::Ping { nonce: u64::MAX }),
        ("pong", ControlMessage::Pong { nonce: 1 }),
        (
            "services-update",
            ControlMessage::ServicesUpdate {
                services: services(2),
            },
        ),
        (
            "go-away",
            ControlMessage::GoAway {
                reason: "draining".into(),
            },
        ),
    ]
}

/// The seed corpus of both targets, as the encoders write it today.
fn encoded_seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let mut all = BytesMut::new();
    for (name, msg) in control_seeds() {
        let mut one = BytesMut::new();
        msg.encode(&mut one);
        all.extend_from_slice(&one);
        seeds.push(("control_message", name.to_owned(), one.to_vec()));
    }
    seeds.push(("control_message", "all-in-one".to_owned(), all.to_vec()));

    // The largest frame a peer may send: type, version, two string lengths, a count
    // and the instance take 17 bytes beside the strings' text.
    let largest = ControlMessage::Hello {
        version: 1,
        agent_version: "v".repeat(100),
        token: "t".repeat(MAX_FRAME_LEN - 17 - 100),
        services: Vec::new(),
        instance: u64::MAX,
    };
    let mut frame = BytesMut::new();
    largest.encode(&mut frame);
    assert_eq!(frame.len(), 4 + MAX_FRAME_LEN);
    seeds.push((
        "control_message",
        "hello-largest-frame".to_owned(),
        frame.to_vec(),
    ));

    let opens = [
        ("open-v4", "192.0.2.1:4000", StreamClass::Interactive),
        ("open-v6", "[2001:db8::1]:443", StreamClass::Bulk),
    ];
    for (name, addr, class) in opens {
        let open = StreamOpen {
            port: 22,
            client: ClientAddr(addr.parse().unwrap()),
            request_id: RequestId(0x0123_4567_89ab_cdef),
            class,
        };
        let mut frame = BytesMut::new();
        open.encode(&mut frame);
        seeds.push(("stream_header", format!("{name}-frame"), frame.to_vec()));
        seeds.push((
            "stream_header",
            name.to_owned(),
            body_of(&mut frame).to_vec(),
        ));
    }
    let answers = [
        ("answer-ok", StreamAnswer::Ok),
        (
            "answer-refused",
            StreamAnswer::Refused {
                reason: RefuseReason::ConnectionRefused,
                message: "connection refused (port 5432)".into(),
            },
        ),
    ];
    for (name, answer) in answers {
        let mut frame = BytesMut::new();
        answer.encode(&mut frame);
        seeds.push((
            "stream_header",
            name.to_owned(),
            body_of(&mut frame).to_vec(),
        ));
    }

    // The largest answer: type, reason and the string's length take 4 bytes.
    let largest = StreamAnswer::Refused {
        reason: RefuseReason::ConnectFailed,
        message: "m".repeat(MAX_FRAME_LEN - 4),
    };
    let mut frame = BytesMut::new();
    largest.encode(&mut frame);
    assert_eq!(frame.len(), 4 + MAX_FRAME_LEN);
    seeds.push((
        "stream_header",
        "answer-largest-frame".to_owned(),
        frame.to_vec(),
    ));
    seeds
}

#[test]
fn seed_files_match_the_encoders() {
    let write = std::env::var_os("FUZZ_WRITE_SEEDS").is_some();
    for (target, name, data) in encoded_seeds() {
        let path = fuzz_dir("seeds", target).join(&name);
        if write {
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, &data).unwrap();
        }
        let saved = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            saved,
            data,
            "{} is stale: rewrite the seeds",
            path.display()
        );
    }
}

/// Runs `check` on every file saved for `target` under `fuzz/KIND`, naming the file
/// that panics; returns how many there were.
fn replay(kind: &str, target: &str, check: impl Fn(&[u8])) -> usize {
    let inputs = saved_inputs(kind, target);
    for (path, data) in &inputs {
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| check(data)));
        assert!(run.is_ok(), "{} panics", path.display());
    }
    inputs.len()
}

#[test]
fn saved_control_message_inputs_replay_without_panic() {
    let seeds = replay("seeds", "control_message", |data| {
        let (decoded, end) = control_message(data);
        assert!(!decoded.is_empty() && end == End::Clean);
    });
    assert!(seeds > 0, "no seeds in fuzz/seeds/control_message");
    replay("regressions", "control_message", |data| {
        let _ = control_message(data);
    });
}

#[test]
fn saved_stream_header_inputs_replay_without_panic() {
    let seeds = replay("seeds", "stream_header", |data| {
        let (open, answer) = stream_header(data);
        let framed = data
            .first_chunk::<4>()
            .is_some_and(|p| frame_len(*p).is_ok());
        assert!(open.is_ok() || answer.is_ok() || framed);
    });
    assert!(seeds > 0, "no seeds in fuzz/seeds/stream_header");
    replay("regressions", "stream_header", |data| {
        let _ = stream_header(data);
    });
}

/// One frame around `body`, whatever `body` holds.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// A `Hello` body up to (not including) its service count.
fn hello_head() -> BytesMut {
    let mut body = BytesMut::new();
    body.put_u8(0x01);
    body.put_u16(1);
    body.put_u16(3);
    body.put_slice(b"0.1");
    body.put_u16(5);
    body.put_slice(b"a.b.c");
    body
}

fn put_services(body: &mut BytesMut, n: usize) {
    body.put_u16(n as u16);
    for i in 0..n {
        body.put_u16(1);
        body.put_u8(b'a' + (i % 26) as u8);
        body.put_u16(i as u16);
        body.put_u8(0);
        body.put_u8(0);
    }
}

fn control_error(data: &[u8]) -> DecodeError {
    match control_message(data) {
        (decoded, End::Invalid(e)) if decoded.is_empty() => e,
        other => panic!("expected one error, got {other:?}"),
    }
}

#[test]
fn a_frame_cut_short_waits_for_more_and_decodes_nothing() {
    let mut whole = BytesMut::new();
    ControlMessage::Ping { nonce: 9 }.encode(&mut whole);
    for cut in 0..whole.len() {
        assert_eq!(
            control_message(&whole[..cut]),
            (vec![], if cut == 0 { End::Clean } else { End::Truncated }),
            "cut at {cut}"
        );
    }
}

#[test]
fn hostile_length_prefixes_are_refused_before_any_body() {
    assert_eq!(
        control_error(&[0xff; 4]),
        DecodeError::FrameTooLarge(0xffff_ffff)
    );
    assert_eq!(
        control_error(&(MAX_FRAME_LEN as u32 + 1).to_be_bytes()),
        DecodeError::FrameTooLarge(MAX_FRAME_LEN + 1)
    );
    assert_eq!(control_error(&[0; 4]), DecodeError::EmptyFrame);
    assert_eq!(
        frame_len([0xff; 4]),
        Err(DecodeError::FrameTooLarge(0xffff_ffff))
    );
    assert_eq!(
        stream_header(&[0xff; 4]).0,
        Err(DecodeError::UnknownType(0xff))
    );
}

#[test]
fn hostile_control_bodies_fail_with_their_own_error() {
    let mut bad_utf8 = BytesMut::new();
    bad_utf8.put_u8(0x01);
    bad_utf8.put_u16(1);
    bad_utf8.put_u16(2);
    bad_utf8.put_slice(&[0xc3, 0x28]);

    let mut too_many = hello_head();
    put_services(&mut too_many, 257);
    let mut huge_count = hello_head();
    huge_count.put_u16(u16::MAX);
    let mut string_past_end = hello_head();
    string_past_end.truncate(3);
    string_past_end.put_u16(u16::MAX);

    let mut bad_kind = hello_head();
    put_services(&mut bad_kind, 1);
    let kind_at = bad_kind.len() - 2;
    bad_kind[kind_at] = 9;
    let mut bad_bool = hello_head();
    put_services(&mut bad_bool, 1);
    let last = bad_bool.len() - 1;
    bad_bool[last] = 2;

    let cases: [(&[u8], DecodeError); 10] = [
        (&bad_utf8, DecodeError::InvalidUtf8),
        (&too_many, invalid("service count", 257)),
        (&huge_count, invalid("service count", 65535)),
        (&string_past_end, DecodeError::Truncated),
        (&bad_kind, invalid("service kind", 9)),
        (&bad_bool, invalid("bool", 2)),
        (&[0x7f], DecodeError::UnknownType(0x7f)),
        (&[0x10], DecodeError::UnknownType(0x10)),
        (&[0x03, 0, 0, 0], invalid("reject reason", 0)),
        (
            &[0x05, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            DecodeError::TrailingBytes(1),
        ),
    ];
    for (body, expected) in cases {
        assert_eq!(control_error(&frame(body)), expected, "{body:02x?}");
    }
}

#[test]
fn a_hello_with_the_most_services_round_trips() {
    let mut body = hello_head();
    put_services(&mut body, 256);
    let (decoded, end) = control_message(&frame(&body));
    assert_eq!(end, End::Clean);
    let [ControlMessage::Hello { services, .. }] = decoded.as_slice() else {
        panic!("{decoded:?}");
    };
    assert_eq!(services.len(), 256);
}

#[test]
fn hostile_stream_headers_fail_with_their_own_error() {
    let cases: [(&[u8], DecodeError); 6] = [
        (&[], DecodeError::EmptyFrame),
        (&[0x10, 0, 22, 5], invalid("address family", 5)),
        (&[0x10, 0, 22, 6, 0x20, 0x01], DecodeError::Truncated),
        (
            &[
                0x10, 0, 22, 4, 127, 0, 0, 1, 0, 80, 0, 0, 0, 0, 0, 0, 0, 1, 2,
            ],
            invalid("stream class", 2),
        ),
        (
            &[
                0x10, 0, 22, 4, 127, 0, 0, 1, 0, 80, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0,
            ],
            DecodeError::TrailingBytes(1),
        ),
        (&[0x04], DecodeError::UnknownType(0x04)),
    ];
    for (body, expected) in cases {
        assert_eq!(stream_header(body).0, Err(expected), "{body:02x?}");
    }

    let answers: [(&[u8], DecodeError); 4] = [
        (&[0x12, 0], invalid("refuse reason", 0)),
        (&[0x12, 1, 0, 9, b'x'], DecodeError::Truncated),
        (&[0x12, 1, 0, 1, 0xff], DecodeError::InvalidUtf8),
        (&[0x11, 0], DecodeError::TrailingBytes(1)),
    ];
    for (body, expected) in answers {
        assert_eq!(stream_header(body).1, Err(expected), "{body:02x?}");
    }
}

#[test]
fn read_frame_takes_one_header_and_leaves_the_payload() {
    let mut open = BytesMut::new();
    StreamOpen {
        port: 22,
        client: ClientAddr("192.0.2.1:4000".parse().unwrap()),
        request_id: RequestId(1),
        class: StreamClass::Interactive,
    }
    .encode(&mut open);
    let mut data = open.to_vec();
    data.extend_from_slice(b"SSH-2.0-OpenSSH_9.6\r\n");
    let (open_result, _) = stream_header(&data);
    assert_eq!(open_result, Err(DecodeError::UnknownType(0)));

    let mut rest = data.as_slice();
    let body = ready(read_frame(&mut rest)).unwrap().unwrap();
    assert!(StreamOpen::decode(&body).is_ok());
    assert_eq!(rest, b"SSH-2.0-OpenSSH_9.6\r\n");
    let cut = &data[..open.len() - 1];
    assert!(matches!(
        ready(read_frame(&mut &cut[..])),
        Err(ReadError::Truncated)
    ));
}

fn invalid(field: &'static str, value: u64) -> DecodeError {
    DecodeError::InvalidValue { field, value }
}
