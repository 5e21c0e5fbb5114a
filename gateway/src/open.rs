//! Opening a stream to a port in a space: the header, and the agent's one answer.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use agent_link::io::{read_frame, write_frames, ReadError};
use agent_link::proto::{
    ClientAddr, RefuseReason, RequestId, StreamAnswer, StreamClass, StreamOpen,
};
use agent_link::transport::DataStream;
use bytes::BytesMut;
use prometheus::IntCounter as Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::registry::Entry;
use crate::stall::Stall;

/// How long the agent has to answer a stream header. Connecting to a local port is
/// fast; a slow answer means the link or the agent is in trouble.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a stream could not be opened; each maps to what the user is told.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The agent refused: the port is not offered, or nothing listens on it.
    #[error("the space refused the connection: {message}")]
    Refused {
        /// The agent's class of refusal.
        reason: RefuseReason,
        /// The agent's explanation.
        message: String,
    },
    /// The link failed while opening the stream.
    #[error("the space's link failed: {0}")]
    Link(String),
    /// The agent did not answer in time.
    #[error("the space's agent did not answer in time")]
    Timeout,
    /// The agent's answer was not a valid message.
    #[error("the space's agent answered with a malformed message: {0}")]
    Protocol(String),
    /// The link already carries as many streams as the gateway allows one link.
    #[error(
        "the space already has {0} open connections through the gateway, its limit; \
         close some and retry"
    )]
    TooManyStreams(usize),
    /// A request without a token, to a public port, while the link is half full: the
    /// other half is kept for the space's owner.
    #[error(
        "the space is busy: requests without a token are served while it has fewer than \
         {0} open connections through the gateway (half its limit); retry shortly"
    )]
    PublicBusy(usize),
}

impl OpenError {
    /// The outcome label for metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Refused { .. } => "refused",
            Self::Timeout => "timeout",
            Self::TooManyStreams(_) | Self::PublicBusy(_) => "limit",
            Self::Link(_) | Self::Protocol(_) => "failed",
        }
    }
}

/// Counts a stream as open on its link for as long as it lives.
#[derive(Debug)]
pub struct StreamGuard {
    entry: Arc<Entry>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.entry.open_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An open stream to a space, ready for payload both ways.
#[derive(Debug)]
pub struct Opened {
    /// The stream.
    pub stream: DataStream,
    /// Correlates the gateway's and the agent's logs.
    pub id: RequestId,
    /// Keeps the link's open-stream count; drop it with the stream.
    pub guard: StreamGuard,
    /// Marks the stream while its user is not reading; cuts it when the link's
    /// control loop says so.
    pub stall: Arc<Stall>,
}

/// Opens a stream to `port` in the space behind `entry` and waits for the agent's
/// answer; refused at once when the link already has `limit` streams.
pub async fn open_stream(
    entry: &Arc<Entry>,
    port: u16,
    client: ClientAddr,
    class: StreamClass,
    limit: usize,
) -> Result<Opened, OpenError> {
    // The stream counts from here, so that opens in flight count against the limit;
    // the guard uncounts it however this ends.
    let open = entry.open_streams.fetch_add(1, Ordering::Relaxed);
    let guard = StreamGuard {
        entry: entry.clone(),
    };
    if open >= limit as u64 {
        return Err(OpenError::TooManyStreams(limit));
    }
    let request_id = RequestId(fastrand::u64(..));
    let mut stream = entry
        .link
        .open()
        .await
        .map_err(|e| OpenError::Link(e.to_string()))?;
    stream.set_class(class);

    let mut header = BytesMut::with_capacity(64);
    StreamOpen {
        port,
        client,
        request_id,
        class,
    }
    .encode(&mut header);
    write_frames(&mut stream.send, &header)
        .await
        .map_err(|e| OpenError::Link(e.to_string()))?;

    let body = match tokio::time::timeout(ANSWER_TIMEOUT, read_frame(&mut stream.recv)).await {
        Err(_) => return Err(OpenError::Timeout),
        Ok(Err(ReadError::Decode(e))) => return Err(OpenError::Protocol(e.to_string())),
        Ok(Err(e)) => return Err(OpenError::Link(e.to_string())),
        Ok(Ok(None)) => return Err(OpenError::Link("stream closed before the answer".into())),
        Ok(Ok(Some(body))) => body,
    };
    match StreamAnswer::decode(&body).map_err(|e| OpenError::Protocol(e.to_string()))? {
        StreamAnswer::Ok => Ok(Opened {
            stream,
            id: request_id,
            guard,
            stall: entry.stalls.register(),
        }),
        StreamAnswer::Refused { reason, message } => Err(OpenError::Refused { reason, message }),
    }
}

/// A byte stream from a space that counts what passes through it, for
/// `relayed_bytes`, and marks its [`Stall`] while what it read waits for the user.
#[derive(Debug)]
pub struct Counted<T> {
    inner: T,
    read: Counter,
    written: Counter,
    stall: Arc<Stall>,
}

impl<T> Counted<T> {
    /// Counts bytes read from `inner` in `read`, and bytes written in `written`.
    pub fn new(inner: T, read: Counter, written: Counter, stall: Arc<Stall>) -> Self {
        Self {
            inner,
            read,
            written,
            stall,
        }
    }

    /// The stream inside.
    pub fn inner_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.stall.reading();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        this.read.inc_by(n as u64);
        if n > 0 {
            this.stall.handed(n);
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &result {
            this.written.inc_by(*n as u64);
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
