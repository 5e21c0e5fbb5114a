//! The control stream as the gateway reads it from an agent (and the agent from the
//! gateway): arbitrary bytes through the frame decoder, each frame through
//! `ControlMessage::decode`. Every message that decodes must re-encode to a frame that
//! decodes to the same value.
//!
//! The same bytes also go through `agent_link::io::ControlReader`, the buffered reader
//! both daemons use, which must read the same messages and end the same way.

#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use agent_link::io::{ControlReader, ReadError};
use agent_link::proto::{ControlMessage, DecodeError, FrameDecoder};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

/// How a sequence of control messages ended.
#[derive(Debug, PartialEq)]
enum End {
    /// Between two messages, at the end of the input.
    Clean,
    /// Inside a frame.
    Truncated,
    /// On a frame or message that does not decode.
    Invalid(DecodeError),
}

fuzz_target!(|data: &[u8]| {
    let decoded = decode(data);
    assert_eq!(read(data), decoded);
});

/// The sans-IO path, checking each message's round trip.
fn decode(data: &[u8]) -> (Vec<ControlMessage>, End) {
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
                round_trip(&msg);
                messages.push(msg);
            }
            Err(e) => return (messages, End::Invalid(e)),
        }
    }
}

fn round_trip(msg: &ControlMessage) {
    let mut out = BytesMut::new();
    msg.encode(&mut out);
    let body = FrameDecoder::new()
        .decode(&mut out)
        .expect("an encoded message has a valid length prefix")
        .expect("an encoded message is one whole frame");
    assert!(out.is_empty(), "an encoded message is exactly one frame");
    assert_eq!(ControlMessage::decode(&body).as_ref(), Ok(msg));
}

/// The async reader over the same bytes.
fn read(data: &[u8]) -> (Vec<ControlMessage>, End) {
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

/// Reading from a slice never waits, so one poll finishes the future.
fn ready<F: Future>(fut: F) -> F::Output {
    match pin!(fut).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("reading from memory waited"),
    }
}
