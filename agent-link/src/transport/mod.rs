//! What the gateway and the agent see of a link, whatever transport carries it.
//!
//! A [`Link`] opens and accepts [`DataStream`]s; a data stream is a pair of halves that
//! read and write bytes with half-close. Routing and the relay use only these types.

pub mod cc;
pub mod join;
pub mod mux;
pub mod quic;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use mux::{MuxLink, MuxRecv, MuxSend, MuxStream};

use crate::proto::StreamClass;

/// Which transport carries a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// QUIC (ALPN `agent-link/1`).
    Quic,
    /// TLS over TCP with yamux (ALPN `agent-link-mux/1`).
    Tcp,
}

impl TransportKind {
    /// The name shown in logs and listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quic => "quic",
            Self::Tcp => "tcp",
        }
    }
}

/// Opening or accepting a stream failed; the link is usually gone.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The QUIC connection ended or refused the stream.
    #[error("link closed: {0}")]
    Quic(#[from] quinn::ConnectionError),
    /// The yamux connection ended.
    #[error("link closed: {0}")]
    Mux(#[from] yamux::ConnectionError),
}

/// Why a yamux link closed, as far as this end knows.
const MUX_CLOSED: &str = "the TLS/TCP connection ended";

fn describe_close(e: &quinn::ConnectionError) -> String {
    match e {
        // A stateless reset: the peer no longer knows this connection, as after a
        // restart, and said so at this end's first packet since.
        quinn::ConnectionError::Reset => {
            "reset by peer: it no longer knows this link (restarted?)".to_owned()
        }
        e => e.to_string(),
    }
}

/// One agent's link to the gateway.
#[derive(Debug, Clone)]
pub enum Link {
    /// A QUIC connection.
    Quic(quinn::Connection),
    /// yamux over TLS over TCP.
    Mux(MuxLink),
}

impl Link {
    /// Opens a stream to the peer. The peer sees it when the first bytes arrive.
    pub async fn open(&self) -> Result<DataStream, LinkError> {
        match self {
            Self::Quic(conn) => {
                let (send, recv) = conn.open_bi().await?;
                Ok(DataStream {
                    send: SendHalf::Quic(QuicSend::new(send)),
                    recv: RecvHalf::Quic(recv),
                })
            }
            Self::Mux(link) => Ok(DataStream::from_mux(link.open().await?)),
        }
    }

    /// The next stream the peer opened, or `None` once the link has closed.
    pub async fn accept(&self) -> Option<DataStream> {
        match self {
            Self::Quic(conn) => {
                let (send, recv) = conn.accept_bi().await.ok()?;
                Some(DataStream {
                    send: SendHalf::Quic(QuicSend::new(send)),
                    recv: RecvHalf::Quic(recv),
                })
            }
            Self::Mux(link) => link.accept().await.map(DataStream::from_mux),
        }
    }

    /// Waits until the link has closed; why it did.
    pub async fn closed(&self) -> String {
        match self {
            Self::Quic(conn) => describe_close(&conn.closed().await),
            Self::Mux(link) => {
                link.closed().await;
                MUX_CLOSED.to_owned()
            }
        }
    }

    /// Why the link closed, if it has.
    pub fn close_reason(&self) -> Option<String> {
        match self {
            Self::Quic(conn) => conn.close_reason().map(|e| describe_close(&e)),
            Self::Mux(link) => link.is_closed().then(|| MUX_CLOSED.to_owned()),
        }
    }

    /// Closes the link at once; open streams are cut.
    pub fn close(&self, reason: &str) {
        match self {
            Self::Quic(conn) => conn.close(0u32.into(), reason.as_bytes()),
            Self::Mux(link) => link.close(),
        }
    }

    /// The peer's address.
    pub fn remote_addr(&self) -> SocketAddr {
        match self {
            Self::Quic(conn) => conn.remote_address(),
            Self::Mux(link) => link.remote_addr(),
        }
    }

    /// The transport's own round-trip estimate, where it keeps one (QUIC does; over
    /// TCP the control stream's pings measure it).
    pub fn rtt(&self) -> Option<Duration> {
        match self {
            Self::Quic(conn) => Some(conn.rtt()),
            Self::Mux(_) => None,
        }
    }

    /// UDP datagrams received from the peer so far, acknowledgements included, where
    /// the transport counts them (QUIC).
    pub fn datagrams_received(&self) -> Option<u64> {
        match self {
            Self::Quic(conn) => Some(conn.stats().udp_rx.datagrams),
            Self::Mux(_) => None,
        }
    }

    /// Identifies the link among this process's links of the same transport.
    pub fn id(&self) -> (TransportKind, u64) {
        match self {
            Self::Quic(conn) => (TransportKind::Quic, conn.stable_id() as u64),
            Self::Mux(link) => (TransportKind::Tcp, link.id()),
        }
    }

    /// Which transport this is.
    pub fn kind(&self) -> TransportKind {
        match self {
            Self::Quic(_) => TransportKind::Quic,
            Self::Mux(_) => TransportKind::Tcp,
        }
    }
}

/// A bidirectional byte stream on a link.
#[derive(Debug)]
pub struct DataStream {
    /// Bytes to the peer.
    pub send: SendHalf,
    /// Bytes from the peer.
    pub recv: RecvHalf,
}

impl DataStream {
    fn from_mux(stream: MuxStream) -> Self {
        let (recv, send) = mux::split(stream);
        Self {
            send: SendHalf::Mux(send),
            recv: RecvHalf::Mux(recv),
        }
    }

    /// Sends this stream's bytes ahead of, or after, other streams on the same link.
    pub fn set_class(&mut self, class: StreamClass) {
        match &mut self.send {
            SendHalf::Quic(s) => {
                let priority = match class {
                    StreamClass::Interactive => 1,
                    StreamClass::Bulk => 0,
                };
                s.set_priority(priority);
            }
            // yamux has no priorities; it sends frames in the order they are written.
            SendHalf::Mux(_) => {}
        }
    }

    /// Sends this stream ahead of every other: for the control stream, whose pings
    /// must get through while data streams are busy.
    pub fn set_control(&mut self) {
        if let SendHalf::Quic(s) = &mut self.send {
            s.set_priority(2);
        }
    }

    /// Aborts both directions: the peer sees a reset, not a clean end, so a cut
    /// transfer cannot pass for a complete one.
    pub fn reset(&mut self) {
        self.send.reset();
        self.recv.stop();
    }
}

/// The sending half of a data stream. Shutdown ends this direction only; dropped
/// without a shutdown, it is reset.
#[derive(Debug)]
pub enum SendHalf {
    /// A QUIC send stream.
    Quic(QuicSend),
    /// The writing half of a yamux stream.
    Mux(MuxSend),
}

impl SendHalf {
    /// Abandons this direction: the peer reads an error, not end-of-file.
    pub fn reset(&mut self) {
        match self {
            Self::Quic(s) => s.reset(),
            // yamux resets a stream that is dropped before it was closed; the halves
            // are dropped right after this, so nothing more is needed here.
            Self::Mux(_) => {}
        }
    }
}

/// A QUIC send stream that is reset, not finished, when it is dropped before it was
/// shut down. quinn finishes a dropped stream: the peer would read end-of-file, and a
/// transfer cut short by a failure on this side would pass for a whole one.
#[derive(Debug)]
pub struct QuicSend {
    inner: quinn::SendStream,
    /// Shut down or reset: nothing is left to do when it is dropped.
    ended: bool,
}

impl QuicSend {
    fn new(inner: quinn::SendStream) -> Self {
        Self {
            inner,
            ended: false,
        }
    }

    /// Writes `chunk` whole, handing quinn the buffer rather than a copy of it.
    pub async fn write_chunk(&mut self, chunk: bytes::Bytes) -> Result<(), quinn::WriteError> {
        self.inner.write_chunk(chunk).await
    }

    /// Sets the stream's priority among the connection's streams (higher first).
    pub fn set_priority(&mut self, priority: i32) {
        let _ = self.inner.set_priority(priority);
    }

    /// Abandons the stream (`RESET_STREAM` with code 1).
    pub fn reset(&mut self) {
        self.ended = true;
        let _ = self.inner.reset(1u32.into());
    }
}

impl Drop for QuicSend {
    fn drop(&mut self) {
        if !self.ended {
            let _ = self.inner.reset(1u32.into());
        }
    }
}

/// The receiving half of a data stream.
#[derive(Debug)]
pub enum RecvHalf {
    /// A QUIC receive stream.
    Quic(quinn::RecvStream),
    /// The reading half of a yamux stream.
    Mux(MuxRecv),
}

impl RecvHalf {
    /// Tells the peer to stop sending: nothing more will be read.
    pub fn stop(&mut self) {
        match self {
            Self::Quic(r) => {
                let _ = r.stop(1u32.into());
            }
            Self::Mux(_) => {}
        }
    }
}

impl AsyncWrite for SendHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Quic(s) => Pin::new(&mut s.inner)
                .poll_write(cx, buf)
                .map_err(Into::into),
            Self::Mux(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Quic(s) => Pin::new(&mut s.inner).poll_flush(cx),
            Self::Mux(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Quic(s) => {
                // quinn finishes the stream at once; what was written is still sent.
                s.ended = true;
                Pin::new(&mut s.inner).poll_shutdown(cx)
            }
            Self::Mux(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl AsyncRead for RecvHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Quic(r) => Pin::new(r).poll_read(cx, buf),
            Self::Mux(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncRead for DataStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for DataStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().send).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().send).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().send).poll_shutdown(cx)
    }
}
