//! Serving one data stream: read the header, connect to the local port, answer once,
//! then relay bytes.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tracing::{debug, info_span, warn, Instrument};

use crate::io::{read_frame, relay_stream, write_frames};
use crate::proto::{RefuseReason, Service, StreamAnswer, StreamOpen};
use crate::transport::DataStream;

/// How long the gateway has to send the header after opening a stream.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long connecting to a local port may take before the stream is refused.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The ports this agent offers; a stream for any other port is refused.
#[derive(Debug)]
pub(super) struct Offered {
    ports: HashSet<u16>,
}

impl Offered {
    pub(super) fn new(services: &[Service]) -> Self {
        Self {
            ports: services.iter().map(|s| s.port).collect(),
        }
    }

    pub(super) fn ports(&self) -> Vec<u16> {
        let mut v: Vec<_> = self.ports.iter().copied().collect();
        v.sort_unstable();
        v
    }
}

/// Serves one stream to its end. Every failure is answered to the gateway when the
/// protocol still allows an answer, and logged.
pub(super) async fn serve_stream(mut stream: DataStream, offered: std::sync::Arc<Offered>) {
    let open = match tokio::time::timeout(HEADER_TIMEOUT, read_frame(&mut stream.recv)).await {
        Ok(Ok(Some(body))) => StreamOpen::decode(&body),
        Ok(Ok(None)) => return,
        Ok(Err(e)) => return refuse(&mut stream, RefuseReason::BadHeader, e.to_string()).await,
        Err(_) => {
            return refuse(
                &mut stream,
                RefuseReason::BadHeader,
                "no header in time".into(),
            )
            .await
        }
    };
    let open = match open {
        Ok(open) => open,
        Err(e) => return refuse(&mut stream, RefuseReason::BadHeader, e.to_string()).await,
    };
    let span =
        info_span!("stream", request = %open.request_id, port = open.port, client = %open.client);
    serve_open(stream, open, &offered).instrument(span).await
}

async fn serve_open(mut stream: DataStream, open: StreamOpen, offered: &Offered) {
    if !offered.ports.contains(&open.port) {
        let msg = format!("port {} is not offered by this space", open.port);
        return refuse(&mut stream, RefuseReason::PortNotOffered, msg).await;
    }
    stream.set_class(open.class);

    // Only loopback: the gateway must not be a way into the space's network.
    let target = SocketAddr::from((Ipv4Addr::LOCALHOST, open.port));
    let mut tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            let msg = format!("nothing is listening on port {} in the space", open.port);
            return refuse(&mut stream, RefuseReason::ConnectionRefused, msg).await;
        }
        Ok(Err(e)) => return refuse(&mut stream, RefuseReason::ConnectFailed, e.to_string()).await,
        Err(_) => {
            let msg = format!("connecting to port {} timed out", open.port);
            return refuse(&mut stream, RefuseReason::ConnectFailed, msg).await;
        }
    };
    let _ = tcp.set_nodelay(true);

    if answer(&mut stream, &StreamAnswer::Ok).await.is_err() {
        return;
    }
    match relay_stream(&mut stream, &mut tcp).await {
        Ok((up, down)) => debug!(bytes_in = up, bytes_out = down, "stream done"),
        Err(e) => {
            // The local service or the link failed mid-stream: reset, so the user
            // sees an aborted transfer rather than a clean end.
            debug!(error = %e, "stream aborted");
            stream.reset();
            // And the other way: the local service sees a reset, not end-of-file.
            let _ = tcp.set_zero_linger();
        }
    }
}

async fn refuse(stream: &mut DataStream, reason: RefuseReason, message: String) {
    warn!(?reason, %message, "stream refused");
    let _ = answer(stream, &StreamAnswer::Refused { reason, message }).await;
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream.send).await;
}

async fn answer(stream: &mut DataStream, answer: &StreamAnswer) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(64);
    answer.encode(&mut buf);
    write_frames(&mut stream.send, &buf).await
}
