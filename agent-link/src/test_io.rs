//! Byte streams for unit tests.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

/// Records each write it is given, taking at most `limit` bytes of each (all without
/// one); vectored writes take the first non-empty slice, as tokio's default does.
#[derive(Debug, Default)]
pub struct Writes {
    pub writes: Vec<Vec<u8>>,
    pub limit: Option<usize>,
}

impl Writes {
    /// Takes at most `limit` bytes of each write.
    pub fn short(limit: usize) -> Self {
        Self {
            limit: Some(limit),
            ..Self::default()
        }
    }

    /// Every byte written, in order.
    pub fn sent(&self) -> Vec<u8> {
        self.writes.concat()
    }
}

impl AsyncWrite for Writes {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = this.limit.map_or(buf.len(), |l| l.min(buf.len()));
        this.writes.push(buf[..n].to_vec());
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
