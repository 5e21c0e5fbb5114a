//! Joins each small write with the write after it, so that a yamux frame's header and
//! its body leave as one write.
//!
//! yamux writes every frame as two writes, the 12-byte header and then the body. On a
//! TLS stream each write is sealed into a record of its own and sent at once: two
//! records and two system calls per frame, and a lone 12-byte record for every
//! keystroke. [`JoinSmall`] holds a write of at most [`HELD`] bytes back and sends it
//! with the start of the next one; a flush sends what it holds. Unlike a write buffer
//! it costs an idle link nothing but those few bytes.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The longest write held back: one yamux frame header.
pub const HELD: usize = 12;

/// The most bytes joined into one write: the held bytes and the start of the next
/// write, up to one full TLS record (16 KiB of plaintext).
const JOINED: usize = 16 * 1024;

/// A byte stream whose small writes wait for the next write or a flush.
#[derive(Debug)]
pub struct JoinSmall<T> {
    inner: T,
    held: [u8; HELD],
    held_len: usize,
}

impl<T> JoinSmall<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            held: [0; HELD],
            held_len: 0,
        }
    }
}

impl<T: AsyncWrite + Unpin> JoinSmall<T> {
    /// Writes what is held, joined with the start of `next`. Returns how many bytes of
    /// `next` were written; 0 means only held bytes went, and nothing is held any more.
    fn poll_write_held(&mut self, cx: &mut Context<'_>, next: &[u8]) -> Poll<io::Result<usize>> {
        while self.held_len > 0 {
            let held = self.held_len;
            let take = next.len().min(JOINED - held);
            let mut joined = [0u8; JOINED];
            joined[..held].copy_from_slice(&self.held[..held]);
            joined[held..held + take].copy_from_slice(&next[..take]);
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &joined[..held + take]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n < held {
                self.held.copy_within(n..held, 0);
                self.held_len -= n;
                continue;
            }
            self.held_len = 0;
            return Poll::Ready(Ok(n - held));
        }
        Poll::Ready(Ok(0))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JoinSmall<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.held_len == 0 && buf.len() <= HELD {
            this.held[..buf.len()].copy_from_slice(buf);
            this.held_len = buf.len();
            return Poll::Ready(Ok(buf.len()));
        }
        match ready!(this.poll_write_held(cx, buf))? {
            0 => Pin::new(&mut this.inner).poll_write(cx, buf),
            n => Poll::Ready(Ok(n)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_held(cx, &[]))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_held(cx, &[]))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JoinSmall<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_io::Writes;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_header_and_its_body_leave_as_one_write() {
        let mut j = JoinSmall::new(Writes::default());
        j.write_all(&[1; HELD]).await.unwrap();
        assert!(j.inner.writes.is_empty(), "the header waits for its body");
        j.write_all(b"keystroke").await.unwrap();
        j.flush().await.unwrap();
        assert_eq!(j.inner.writes.len(), 1);
        assert_eq!(&j.inner.writes[0][..HELD], &[1; HELD]);
        assert_eq!(&j.inner.writes[0][HELD..], b"keystroke");
    }

    #[tokio::test]
    async fn a_flush_sends_what_is_held() {
        let mut j = JoinSmall::new(Writes::default());
        j.write_all(b"window").await.unwrap();
        j.flush().await.unwrap();
        assert_eq!(j.inner.writes, vec![b"window".to_vec()]);
        j.write_all(b"fin").await.unwrap();
        j.shutdown().await.unwrap();
        assert_eq!(j.inner.sent(), b"windowfin");
    }

    #[tokio::test]
    async fn a_large_body_fills_the_first_write_and_goes_on_unjoined() {
        let mut j = JoinSmall::new(Writes::default());
        let body: Vec<u8> = (0..64 * 1024).map(|i| i as u8).collect();
        j.write_all(&[7; HELD]).await.unwrap();
        j.write_all(&body).await.unwrap();
        j.flush().await.unwrap();
        assert_eq!(j.inner.writes[0].len(), JOINED);
        let mut want = vec![7; HELD];
        want.extend_from_slice(&body);
        assert_eq!(j.inner.sent(), want, "no byte lost, repeated or reordered");
    }

    #[tokio::test]
    async fn short_writes_underneath_lose_nothing() {
        for limit in [1, 5, HELD, HELD + 1, 1000] {
            let mut j = JoinSmall::new(Writes::short(limit));
            let mut want = Vec::new();
            for (i, len) in [HELD, 3, HELD, 0, 2000, 1, HELD, HELD]
                .into_iter()
                .enumerate()
            {
                let chunk = vec![i as u8; len];
                j.write_all(&chunk).await.unwrap();
                want.extend_from_slice(&chunk);
            }
            j.flush().await.unwrap();
            assert_eq!(j.inner.sent(), want, "limit {limit}");
        }
    }
}
