//! How a data stream's end looks to the peer, on both transports: after a shutdown, every
//! byte and then end-of-file; dropped without one (a relay that failed, a task that was
//! cancelled), a reset, never an end-of-file that would make a cut transfer look whole.

// Helpers outside #[test] functions unwrap too: a failure is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use agent_link::proto::ALPN_QUIC;
use agent_link::tls::Trust;
use agent_link::transport::mux::MuxLink;
use agent_link::transport::quic::{client_endpoint, LinkTuning};
use agent_link::transport::{DataStream, Link};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Both ends of one link, and what must stay alive while it is used.
struct Pair {
    opener: Link,
    acceptor: Link,
    _endpoints: Option<(quinn::Endpoint, quinn::Endpoint)>,
}

async fn quic_pair() -> Pair {
    let (server, fingerprint) = support::gateway_endpoint();
    let addr = server.local_addr().unwrap();
    let client_tls = Trust::fingerprint(&fingerprint)
        .unwrap()
        .client_config(&[ALPN_QUIC])
        .unwrap();
    let client = client_endpoint(addr, client_tls, &LinkTuning::agent()).unwrap();
    let (opener, acceptor) = tokio::join!(
        async { client.connect(addr, "localhost").unwrap().await.unwrap() },
        async { server.accept().await.unwrap().await.unwrap() },
    );
    Pair {
        opener: Link::Quic(opener),
        acceptor: Link::Quic(acceptor),
        _endpoints: Some((client, server)),
    }
}

fn mux_pair() -> Pair {
    let (a, b) = tokio::io::duplex(1 << 20);
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    Pair {
        opener: Link::Mux(MuxLink::new(a, false, addr)),
        acceptor: Link::Mux(MuxLink::new(b, true, addr)),
        _endpoints: None,
    }
}

/// Everything the peer reads from the stream, and how its reading ended.
async fn read_all(stream: &mut DataStream) -> (Vec<u8>, std::io::Result<usize>) {
    let mut got = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(10), stream.recv.read_to_end(&mut got))
        .await
        .expect("the stream did not end within 10 s");
    (got, end)
}

async fn a_stream_dropped_before_its_end_is_a_reset_for_the_peer(pair: Pair) {
    let mut stream = pair.opener.open().await.unwrap();
    stream
        .send
        .write_all(b"the first half of it")
        .await
        .unwrap();
    stream.send.flush().await.unwrap();
    let mut accepted = pair.acceptor.accept().await.unwrap();
    drop(stream);
    let (got, end) = read_all(&mut accepted).await;
    assert!(
        end.is_err(),
        "a dropped stream read as a clean end after {:?}",
        String::from_utf8_lossy(&got)
    );
}

async fn a_stream_shut_down_then_dropped_delivers_every_byte_and_ends(pair: Pair) {
    let body: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let mut stream = pair.opener.open().await.unwrap();
    let reader = async {
        let mut accepted = pair.acceptor.accept().await.unwrap();
        read_all(&mut accepted).await
    };
    let writer = async {
        stream.send.write_all(&body).await.unwrap();
        stream.send.shutdown().await.unwrap();
        drop(stream);
    };
    let ((got, end), ()) = tokio::join!(reader, writer);
    assert!(end.is_ok(), "the stream ended in {end:?}");
    assert!(
        got == body,
        "{} of {} bytes arrived, or changed",
        got.len(),
        body.len()
    );
}

#[tokio::test]
async fn quic_a_stream_dropped_before_its_end_is_a_reset_for_the_peer() {
    a_stream_dropped_before_its_end_is_a_reset_for_the_peer(quic_pair().await).await;
}

#[tokio::test]
async fn tcp_a_stream_dropped_before_its_end_is_a_reset_for_the_peer() {
    a_stream_dropped_before_its_end_is_a_reset_for_the_peer(mux_pair()).await;
}

#[tokio::test]
async fn quic_a_stream_shut_down_then_dropped_delivers_every_byte_and_ends() {
    a_stream_shut_down_then_dropped_delivers_every_byte_and_ends(quic_pair().await).await;
}

#[tokio::test]
async fn tcp_a_stream_shut_down_then_dropped_delivers_every_byte_and_ends() {
    a_stream_shut_down_then_dropped_delivers_every_byte_and_ends(mux_pair()).await;
}
