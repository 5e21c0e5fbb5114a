//! The data-stream header (agent side) and its answer (gateway side) on arbitrary
//! bytes, with a round trip for each that decodes; the length-prefix check on the
//! first four bytes; and `agent_link::io::read_frame`, which both sides read the one
//! framed header or answer with, and which must take exactly one frame from the
//! stream and leave the payload behind it.

#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use agent_link::io::{read_frame, ReadError};
use agent_link::proto::{frame_len, FrameDecoder, StreamAnswer, StreamOpen, MAX_FRAME_LEN};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(prefix) = data.first_chunk::<4>() {
        if let Ok(len) = frame_len(*prefix) {
            assert!((1..=MAX_FRAME_LEN).contains(&len));
        }
    }
    decode_body(data);

    let mut rest = data;
    match ready(read_frame(&mut rest)) {
        Ok(Some(body)) => {
            let expected = FrameDecoder::new().decode(&mut BytesMut::from(data));
            assert_eq!(expected, Ok(Some(body.clone())));
            assert_eq!(
                rest.len(),
                data.len() - 4 - body.len(),
                "read past the frame"
            );
            decode_body(&body);
        }
        Ok(None) => assert!(data.is_empty()),
        Err(ReadError::Truncated) => {
            assert_eq!(
                FrameDecoder::new().decode(&mut BytesMut::from(data)),
                Ok(None)
            )
        }
        Err(ReadError::Decode(e)) => {
            assert_eq!(
                FrameDecoder::new().decode(&mut BytesMut::from(data)),
                Err(e)
            )
        }
        Err(ReadError::Io(e)) => panic!("reading from memory failed: {e}"),
    }
});

/// Both decoders on one frame body, and a round trip for what decodes.
fn decode_body(body: &[u8]) {
    if let Ok(open) = StreamOpen::decode(body) {
        let mut out = BytesMut::new();
        open.encode(&mut out);
        assert_eq!(StreamOpen::decode(&frame_body(&mut out)), Ok(open));
    }
    if let Ok(answer) = StreamAnswer::decode(body) {
        let mut out = BytesMut::new();
        answer.encode(&mut out);
        assert_eq!(StreamAnswer::decode(&frame_body(&mut out)), Ok(answer));
    }
}

fn frame_body(frame: &mut BytesMut) -> BytesMut {
    FrameDecoder::new()
        .decode(frame)
        .expect("an encoded header has a valid length prefix")
        .expect("an encoded header is one whole frame")
}

/// Reading from a slice never waits, so one poll finishes the future.
fn ready<F: Future>(fut: F) -> F::Output {
    match pin!(fut).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("reading from memory waited"),
    }
}
