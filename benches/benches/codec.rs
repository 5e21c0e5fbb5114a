//! How long the link protocol's codec takes per message: the stream header and its
//! answer are on the path of every user connection, and pings on every link.
//!
//! Run with `cargo bench -p benches --bench codec`. Tunables: `ROUNDS` (messages per
//! sample) and `SAMPLES`; the median and the spread of the samples are printed.

// A benchmark measures wall time by definition.
#![allow(clippy::disallowed_methods, clippy::print_stdout)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agent_link::proto::{
    ClientAddr, ControlMessage, FrameDecoder, RequestId, StreamAnswer, StreamClass, StreamOpen,
};
use bytes::BytesMut;

/// Messages encoded and decoded per sample.
const ROUNDS: u32 = 100_000;
/// Samples per case; the median is reported.
const SAMPLES: usize = 15;

fn main() {
    let client: SocketAddr = "203.0.113.9:51234".parse().expect("literal address");
    let open = StreamOpen {
        port: 22,
        client: ClientAddr(client),
        request_id: RequestId(0x1234_5678),
        class: StreamClass::Interactive,
    };
    bench("stream header encode+decode", || {
        let mut buf = BytesMut::with_capacity(64);
        open.encode(&mut buf);
        let body = FrameDecoder::new()
            .decode(&mut buf)
            .expect("valid")
            .expect("whole");
        black_box(StreamOpen::decode(&body).expect("valid"));
    });
    bench("answer Ok encode+decode", || {
        let mut buf = BytesMut::with_capacity(16);
        StreamAnswer::Ok.encode(&mut buf);
        let body = FrameDecoder::new()
            .decode(&mut buf)
            .expect("valid")
            .expect("whole");
        black_box(StreamAnswer::decode(&body).expect("valid"));
    });
    bench("ping encode+decode", || {
        let mut buf = BytesMut::with_capacity(16);
        ControlMessage::Ping { nonce: 7 }.encode(&mut buf);
        let body = FrameDecoder::new()
            .decode(&mut buf)
            .expect("valid")
            .expect("whole");
        black_box(ControlMessage::decode(&body).expect("valid"));
    });
}

fn bench(name: &str, mut f: impl FnMut()) {
    let mut per_message: Vec<Duration> = (0..SAMPLES)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..ROUNDS {
                f();
            }
            start.elapsed() / ROUNDS
        })
        .collect();
    per_message.sort();
    let (low, median, high) = (
        per_message[0],
        per_message[SAMPLES / 2],
        per_message[SAMPLES - 1],
    );
    println!("{name:32} median {median:>8.1?}  (min {low:.1?}, max {high:.1?}) per message");
}
