//! Closing relayed connections that have gone idle: no byte either way for a set time.
//!
//! Each relay counts what it moves in an [`Activity`]; [`until_idle`] runs the relay
//! and checks the count a few times per limit, so a connection is closed between one
//! and one and a quarter limits after its last byte. Checking a counter costs the
//! relay one relaxed atomic add per read or write, and no timer per byte.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes a relay has moved, both ways together.
#[derive(Debug, Clone, Default)]
pub struct Activity(Arc<AtomicU64>);

impl Activity {
    /// A new counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts `n` bytes moved.
    pub fn moved(&self, n: usize) {
        self.0.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn total(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The relay was idle for the whole limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idle(pub Duration);

/// Runs `relay` to its end, or until `activity` stays still for `limit` (never, if
/// `limit` is `None`).
pub async fn until_idle<F: Future>(
    relay: F,
    activity: &Activity,
    limit: Option<Duration>,
) -> Result<F::Output, Idle> {
    let Some(limit) = limit else {
        return Ok(relay.await);
    };
    let watch = async {
        let step = limit / 4;
        let (mut last, mut still) = (activity.total(), Duration::ZERO);
        loop {
            tokio::time::sleep(step).await;
            let now = activity.total();
            if now == last {
                still += step;
                if still >= limit {
                    return Idle(limit);
                }
            } else {
                (last, still) = (now, Duration::ZERO);
            }
        }
    };
    tokio::select! {
        out = relay => Ok(out),
        idle = watch => Err(idle),
    }
}

/// A byte stream that counts what passes through it in an [`Activity`].
#[derive(Debug)]
pub struct Watched<T> {
    inner: T,
    activity: Activity,
}

impl<T> Watched<T> {
    /// Counts the bytes read from and written to `inner` in `activity`.
    pub fn new(inner: T, activity: Activity) -> Self {
        Self { inner, activity }
    }

    /// The stream inside.
    pub fn inner_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.activity.moved(buf.filled().len() - before);
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &result {
            this.activity.moved(*n);
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

/// How long an upload may make no progress once the space has ended its side.
pub const UPLOAD_STALL: Duration = Duration::from_secs(20);

/// Writes all of `buf` to the space. Once the space has ended its side (`space_ended`),
/// a service that reads on still takes the upload, but one that has closed altogether
/// may never say so: over a TLS/TCP link the agent cannot tell the gateway to stop
/// sending, and the write waits for room forever. So a write that makes no progress
/// for [`UPLOAD_STALL`] then fails (`TimedOut`), and the user is told.
pub async fn write_all_while_taken<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut buf: &[u8],
    space_ended: &std::sync::atomic::AtomicBool,
) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    const TICK: Duration = Duration::from_secs(1);
    while !buf.is_empty() {
        let mut stalled = Duration::ZERO;
        let n = loop {
            // A pending write has written nothing, so it may be dropped and retried.
            match tokio::time::timeout(TICK, w.write(buf)).await {
                Ok(written) => break written?,
                Err(_) if space_ended.load(Ordering::Relaxed) => {
                    stalled += TICK;
                    if stalled >= UPLOAD_STALL {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "the space ended its side and took none of the upload for {} s",
                                UPLOAD_STALL.as_secs()
                            ),
                        ));
                    }
                }
                Err(_) => {}
            }
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_still_relay_is_ended_after_the_limit() {
        let activity = Activity::new();
        let limit = Some(Duration::from_secs(60));
        let started = tokio::time::Instant::now();
        let out = until_idle(std::future::pending::<()>(), &activity, limit).await;
        assert_eq!(out, Err(Idle(Duration::from_secs(60))));
        let took = started.elapsed();
        assert!(took >= Duration::from_secs(60) && took <= Duration::from_secs(75));
    }

    #[tokio::test(start_paused = true)]
    async fn a_relay_that_keeps_moving_is_not_ended() {
        let activity = Activity::new();
        let busy = async {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_secs(30)).await;
                activity.moved(1);
            }
        };
        let out = until_idle(busy, &activity, Some(Duration::from_secs(60))).await;
        assert_eq!(out, Ok(()));
    }
}
