//! The first request head's deadline, answered with 408.
//!
//! hyper closes a connection whose head is late without a word. A client that is merely
//! slow (a phone on a bad network) deserves to be told, so the connection's reading
//! side is wrapped: until the first request has arrived, a read that finds the deadline
//! past writes a 408 response itself and then reads end-of-file, which ends the
//! connection. hyper is waiting for head bytes at that moment and writes nothing, so
//! the two never interleave. Later requests on a kept-alive connection are left to
//! hyper's own timer (set a little longer), which closes without an answer.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Set by the service when the first request has arrived.
#[derive(Debug, Clone, Default)]
pub(super) struct FirstRequest(Arc<AtomicBool>);

impl FirstRequest {
    pub(super) fn arrived(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn has_arrived(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A connection whose first request head has a deadline.
#[derive(Debug)]
pub(super) struct HeadDeadline<T> {
    inner: T,
    first: FirstRequest,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Waiting for the first request; the deadline runs.
    Waiting(Pin<Box<Sleep>>, Duration),
    /// The deadline passed: `response[written..]` is still to be sent.
    Answering { response: Vec<u8>, written: usize },
    /// The 408 is out; every read is end-of-file.
    Answered,
    /// The first request arrived in time: reads pass through.
    Passed,
}

impl<T> HeadDeadline<T> {
    /// Wraps `inner`; `first` is told by the service when a request arrives.
    pub(super) fn new(inner: T, first: FirstRequest, limit: Duration) -> Self {
        Self {
            inner,
            first,
            state: State::Waiting(Box::pin(tokio::time::sleep(limit)), limit),
        }
    }
}

fn response(limit: Duration) -> Vec<u8> {
    let body = format!(
        "the request head did not arrive within {} s\n",
        limit.as_secs()
    );
    format!(
        "HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for HeadDeadline<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Passed => return Pin::new(&mut this.inner).poll_read(cx, buf),
                State::Waiting(sleep, limit) => {
                    if this.first.has_arrived() {
                        this.state = State::Passed;
                        continue;
                    }
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Pin::new(&mut this.inner).poll_read(cx, buf);
                    }
                    this.state = State::Answering {
                        response: response(*limit),
                        written: 0,
                    };
                }
                State::Answering { response, written } => {
                    while *written < response.len() {
                        let inner = Pin::new(&mut this.inner);
                        match ready!(inner.poll_write(cx, &response[*written..])) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => *written += n,
                        }
                    }
                    let _ = ready!(Pin::new(&mut this.inner).poll_flush(cx));
                    this.state = State::Answered;
                }
                State::Answered => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeadDeadline<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_late_head_gets_408_and_end_of_file() {
        let (server, mut client) = tokio::io::duplex(4096);
        let mut conn = HeadDeadline::new(server, FirstRequest::default(), Duration::from_secs(30));
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\nHost: x\r\n");
        // No more bytes: the next read waits out the deadline, answers, and ends.
        assert_eq!(conn.read(&mut buf).await.unwrap(), 0);
        let mut answer = vec![0u8; 512];
        let n = client.read(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(
            answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{answer}"
        );
        assert!(answer.ends_with("within 30 s\n"), "{answer}");
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_first_request_reads_pass_through() {
        let (server, mut client) = tokio::io::duplex(4096);
        let first = FirstRequest::default();
        let mut conn = HeadDeadline::new(server, first.clone(), Duration::from_secs(30));
        first.arrived();
        tokio::time::sleep(Duration::from_secs(60)).await;
        client.write_all(b"more").await.unwrap();
        let mut buf = [0u8; 16];
        let n = conn.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"more");
    }
}
