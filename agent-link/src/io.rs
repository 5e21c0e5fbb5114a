//! Protocol messages over async byte streams, and the byte relay.

use std::io::{self, IoSlice};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tracing::debug;

use crate::proto::{frame_len, ControlMessage, DecodeError, FrameDecoder};
use crate::transport::{DataStream, RecvHalf, SendHalf};

/// Relay buffer size per direction. 64 KiB exactly is pathological on a loopback whose
/// MTU is 65536 (a write of one full MTU plus headers splits badly); 60 KiB is not.
pub const RELAY_BUFFER: usize = 60 * 1024;

/// Reading a message failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stream failed.
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
    /// The bytes were not a valid message.
    #[error("malformed message: {0}")]
    Decode(#[from] DecodeError),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame")]
    Truncated,
}

/// Reads exactly one frame body and not a byte more, so that payload which follows the
/// frame on the same stream stays in the stream for the relay.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<BytesMut>, ReadError> {
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < prefix.len() {
        match r.read(&mut prefix[got..]).await? {
            0 if got == 0 => return Ok(None),
            0 => return Err(ReadError::Truncated),
            n => got += n,
        }
    }
    let len = frame_len(prefix)?;
    let mut body = BytesMut::zeroed(len);
    r.read_exact(&mut body).await.map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => ReadError::Truncated,
        _ => ReadError::Io(e),
    })?;
    Ok(Some(body))
}

/// Writes pre-encoded frames and flushes them: control messages must not wait in a
/// buffer for more data that may never come.
pub async fn write_frames<W: AsyncWrite + Unpin>(w: &mut W, frames: &[u8]) -> io::Result<()> {
    w.write_all(frames).await?;
    w.flush().await
}

/// Reads control messages from a stream that carries nothing else, with buffering.
#[derive(Debug)]
pub struct ControlReader<R> {
    inner: R,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl<R: AsyncRead + Unpin> ControlReader<R> {
    /// Wraps the receiving half of a control stream.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            // Control messages are tens of bytes; the buffer grows for a larger one.
            // Every link keeps one, idle links too.
            buf: BytesMut::with_capacity(512),
            decoder: FrameDecoder::new(),
        }
    }

    /// The next message, or `None` when the peer finished the stream between messages.
    pub async fn next(&mut self) -> Result<Option<ControlMessage>, ReadError> {
        loop {
            if let Some(body) = self.decoder.decode(&mut self.buf)? {
                return Ok(Some(ControlMessage::decode(&body)?));
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::Truncated)
                };
            }
        }
    }

    /// Like [`next`](Self::next), but gives up after `limit`.
    pub async fn next_within(
        &mut self,
        limit: Duration,
    ) -> Result<Option<ControlMessage>, ReadError> {
        tokio::time::timeout(limit, self.next())
            .await
            .map_err(|_| {
                ReadError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no message in time",
                ))
            })?
    }
}

/// Encodes one control message and sends it.
pub async fn send_control<W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &ControlMessage,
) -> io::Result<()> {
    let mut buf = BytesMut::with_capacity(128);
    msg.encode(&mut buf);
    write_frames(w, &buf).await
}

/// Copies bytes both ways until both directions have ended. End-of-file on one side
/// becomes a shutdown of the other side's write half only, so a half-close travels.
pub async fn relay<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(a, b, RELAY_BUFFER, RELAY_BUFFER).await
}

/// Copies bytes both ways between a link stream and a local socket until both
/// directions have ended, like [`relay`]; end-of-file on one side shuts down the other
/// side's write half only.
///
/// A service may answer and close while the user is still sending (an HTTP server
/// refusing an upload, say). Its answer is whole, so only the user's direction is
/// stopped (the gateway is told to send no more) and the answer goes on to its end: a
/// reset of the whole stream would let the gateway throw away the part of the answer
/// it has not passed on yet.
///
/// On QUIC no byte is copied between the socket and the link: chunks read from the
/// stream are written to the socket as quinn holds them, and bytes read from the socket
/// are handed to quinn in the buffer they were read into, which quinn keeps until they
/// are acknowledged. A new buffer is taken only when the last one is nearly full and
/// quinn still holds some of it.
pub async fn relay_stream(
    stream: &mut DataStream,
    socket: &mut tokio::net::TcpStream,
) -> io::Result<(u64, u64)> {
    let (mut from_socket, mut to_socket) = socket.split();
    let DataStream { send, recv } = stream;
    tokio::try_join!(
        link_to_socket(recv, &mut to_socket),
        socket_to_link(&mut from_socket, send),
    )
}

/// A read into a buffer with less room than this takes a new buffer first.
const MIN_READ: usize = 16 * 1024;

async fn link_to_socket<W: AsyncWrite + Unpin>(recv: &mut RecvHalf, w: &mut W) -> io::Result<u64> {
    let mut copied = 0;
    // A failed read is the link's failure and ends the relay; a failed write may be the
    // service's refusal of more bytes, which ends this direction only (below).
    let refused = match recv {
        RecvHalf::Quic(r) => {
            // quinn keeps what it received as one chunk per packet; taken many at a
            // time, they go to the socket in one vectored write rather than one each.
            let mut chunks: [Bytes; CHUNKS] = std::array::from_fn(|_| Bytes::new());
            loop {
                let Some(n) = r.read_chunks(&mut chunks).await? else {
                    break None;
                };
                match write_all_chunks(w, &mut chunks[..n]).await {
                    Ok(written) => copied += written,
                    Err(e) => break Some(e),
                }
                // A written chunk still holds quinn's whole receive batch (up to
                // 64 KiB) until it is replaced; an idle stream must not keep it.
                chunks[..n].fill(Bytes::new());
            }
        }
        RecvHalf::Mux(r) => {
            let mut r = BufReader::with_capacity(RELAY_BUFFER, r);
            loop {
                let buf = r.fill_buf().await?;
                if buf.is_empty() {
                    break None;
                }
                let n = buf.len();
                if let Err(e) = w.write_all(buf).await {
                    break Some(e);
                }
                r.consume(n);
                copied += n as u64;
            }
        }
    };
    let ended = match refused {
        None => w.shutdown().await,
        Some(e) => Err(e),
    };
    match ended {
        Ok(()) => {}
        // Linux reports a reset that came after the service's end-of-file as a broken
        // pipe: its answer is whole in our receive queue, and only the user's direction
        // is over. A reset before it ("connection reset") may have thrown away the end
        // of the answer, and the reading direction would then see a clean end (the
        // error is reported once, to this write): the whole stream must be cut.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
            debug!(error = %e, bytes = copied, "the service took no more from the user");
            recv.stop();
        }
        Err(e) => return Err(e),
    }
    Ok(copied)
}

/// Chunks taken from quinn at once.
const CHUNKS: usize = 64;

/// Writes every byte of `chunks`, in as few vectored writes as the socket allows.
async fn write_all_chunks<W: AsyncWrite + Unpin>(
    w: &mut W,
    chunks: &mut [Bytes],
) -> io::Result<u64> {
    let mut written = 0;
    let mut first = 0;
    while first < chunks.len() {
        let mut slices = [IoSlice::new(&[]); CHUNKS];
        let live = &chunks[first..];
        for (slice, chunk) in slices.iter_mut().zip(live) {
            *slice = IoSlice::new(chunk);
        }
        let mut n = w.write_vectored(&slices[..live.len()]).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        written += n as u64;
        while n > 0 {
            let len = chunks[first].len();
            if n >= len {
                n -= len;
                first += 1;
            } else {
                chunks[first].advance(n);
                n = 0;
            }
        }
    }
    Ok(written)
}

async fn socket_to_link<R: AsyncRead + Unpin>(r: &mut R, send: &mut SendHalf) -> io::Result<u64> {
    let copied = match send {
        SendHalf::Quic(s) => {
            let mut copied = 0;
            let mut buf = BytesMut::new();
            loop {
                // Reclaimed once quinn has let go of every chunk of it (all acknowledged).
                if buf.capacity() < MIN_READ && !buf.try_reclaim(RELAY_BUFFER) {
                    buf = BytesMut::with_capacity(RELAY_BUFFER);
                }
                let n = r.read_buf(&mut buf).await?;
                if n == 0 {
                    break;
                }
                s.write_chunk(buf.split().freeze()).await?;
                copied += n as u64;
            }
            copied
        }
        SendHalf::Mux(s) => {
            tokio::io::copy_buf(&mut BufReader::with_capacity(RELAY_BUFFER, r), s).await?
        }
    };
    send.shutdown().await?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::StreamAnswer;

    #[tokio::test]
    async fn read_frame_leaves_the_payload_behind() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let mut buf = BytesMut::new();
        StreamAnswer::Ok.encode(&mut buf);
        buf.extend_from_slice(b"SSH-2.0-banner");
        a.write_all(&buf).await.unwrap();
        drop(a);

        let body = read_frame(&mut b).await.unwrap().unwrap();
        assert_eq!(StreamAnswer::decode(&body).unwrap(), StreamAnswer::Ok);
        let mut rest = Vec::new();
        b.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"SSH-2.0-banner");
    }

    #[tokio::test]
    async fn chunks_are_written_whole_and_in_order_through_short_writes() {
        let mut chunks: Vec<Bytes> = (0..CHUNKS as u8)
            .map(|i| Bytes::from(vec![i; usize::from(i) % 13 + 1]))
            .collect();
        let want: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let mut w = crate::test_io::Writes::short(7);
        let n = write_all_chunks(&mut w, &mut chunks).await.unwrap();
        assert_eq!(n, want.len() as u64);
        assert_eq!(w.sent(), want);
    }

    #[tokio::test]
    async fn a_stream_cut_inside_a_frame_is_truncated_not_empty() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&[0, 0, 0, 10, 0x10]).await.unwrap();
        drop(a);
        assert!(matches!(
            read_frame(&mut b).await,
            Err(ReadError::Truncated)
        ));
    }

    #[tokio::test]
    async fn garbage_length_is_refused_without_reading_the_body() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let err = read_frame(&mut b).await.unwrap_err();
        assert!(
            matches!(err, ReadError::Decode(DecodeError::FrameTooLarge(_))),
            "{err}"
        );
    }
}
