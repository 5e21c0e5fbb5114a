//! The link over TLS 1.3 on TCP with yamux, for networks that drop UDP.
//!
//! yamux is poll-based: one driver task owns the `Connection`. It must be polled for
//! any byte to move, so it polls for inbound streams continuously (handing them to
//! [`MuxLink::accept`]) and serves outbound opens that arrive on a channel.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use super::join::JoinSmall;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};
use tokio_util::sync::CancellationToken;
use tracing::debug;
use yamux::{Config, Connection, ConnectionError, Mode, Stream};

/// Largest data frame yamux sends. Measured one-stream throughput (docs/performance.md):
/// 16 KiB, yamux's default, 295 MiB/s; 64 KiB 360 MiB/s; 256 KiB 310 MiB/s. Larger
/// frames also hold an interactive stream behind a bulk one longer: one 64 KiB frame is
/// 5 ms at 100 Mbit/s.
const SPLIT_SEND_SIZE: usize = 64 * 1024;

/// Overrides [`SPLIT_SEND_SIZE`] for measurements (bytes, 1 KiB to 1 MiB).
pub const SPLIT_SEND_SIZE_ENV: &str = "AGENT_LINK_YAMUX_SPLIT_SEND_SIZE";

fn split_send_size() -> usize {
    std::env::var(SPLIT_SEND_SIZE_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| (1024..=1 << 20).contains(n))
        .unwrap_or(SPLIT_SEND_SIZE)
}

/// Bytes a stream's peer may send ahead of what this end has read: yamux's window,
/// which it keeps at this size on these links (docs/performance.md says why).
pub const STREAM_WINDOW: usize = 256 * 1024;

/// Streams allowed on one link at once (user connections into one space). yamux
/// requires the connection window to cover 256 KiB for each.
const MAX_STREAMS: usize = 4096;

/// A yamux stream as a tokio byte stream, with what its reading half needs to tell a
/// clean end from a cut one.
#[derive(Debug)]
pub struct MuxStream {
    stream: Compat<Stream>,
    link_closed: CancellationToken,
}

enum Command {
    Open(oneshot::Sender<Result<Stream, ConnectionError>>),
    Close,
}

/// One yamux link; clones share it.
#[derive(Debug, Clone)]
pub struct MuxLink {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    commands: mpsc::UnboundedSender<Command>,
    /// Boxed, as the channel allocates its first 32 slots at once, on every link.
    inbound: Mutex<mpsc::UnboundedReceiver<Box<Stream>>>,
    closed: CancellationToken,
    remote: SocketAddr,
    id: u64,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Open(_) => "Open",
            Self::Close => "Close",
        })
    }
}

impl MuxLink {
    /// Starts yamux over an established TLS stream; `server` on the gateway's side.
    pub fn new<T>(io: T, server: bool, remote: SocketAddr) -> Self
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut config = Config::default();
        config.set_split_send_size(split_send_size());
        config.set_max_num_streams(MAX_STREAMS);
        config.set_max_connection_receive_window(Some(MAX_STREAMS * STREAM_WINDOW));
        let mode = if server { Mode::Server } else { Mode::Client };
        // yamux writes each frame as two writes, header then body, and flushes after
        // every frame; straight onto TLS that is two records and two system calls per
        // frame. Joined, a frame of up to 16 KiB is one record. (A 16 KiB write buffer
        // did the same, but cost every link, idle ones too, 16 KiB of heap.)
        let io = JoinSmall::new(io);
        let conn = Connection::new(io.compat(), config, mode);

        let (commands, command_rx) = mpsc::unbounded_channel();
        let (inbound_tx, inbound) = mpsc::unbounded_channel();
        let closed = CancellationToken::new();
        let driver = Driver {
            conn,
            commands: command_rx,
            pending: None,
            inbound: inbound_tx,
            closing: false,
        };
        let done = closed.clone();
        tokio::spawn(async move {
            driver.await;
            done.cancel();
        });
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self {
            shared: Arc::new(Shared {
                commands,
                inbound: Mutex::new(inbound),
                closed,
                remote,
                id,
            }),
        }
    }

    /// Opens a stream.
    pub async fn open(&self) -> Result<MuxStream, ConnectionError> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .commands
            .send(Command::Open(tx))
            .map_err(|_| ConnectionError::Closed)?;
        let stream = rx.await.map_err(|_| ConnectionError::Closed)??;
        Ok(self.wrap(stream))
    }

    fn wrap(&self, stream: Stream) -> MuxStream {
        MuxStream {
            stream: stream.compat(),
            link_closed: self.shared.closed.clone(),
        }
    }

    /// The next stream the peer opened, or `None` once the link is gone.
    pub async fn accept(&self) -> Option<MuxStream> {
        self.shared
            .inbound
            .lock()
            .await
            .recv()
            .await
            .map(|stream| self.wrap(*stream))
    }

    /// Waits until the link has closed.
    pub async fn closed(&self) {
        self.shared.closed.cancelled().await
    }

    /// Whether the link has closed.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }

    /// Closes the link: yamux sends GoAway and the TCP connection ends.
    pub fn close(&self) {
        let _ = self.shared.commands.send(Command::Close);
    }

    /// The peer's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.shared.remote
    }

    /// Identifies this link among the process's links.
    pub fn id(&self) -> u64 {
        self.shared.id
    }
}

/// Owns the yamux connection and moves its bytes.
struct Driver<T> {
    conn: Connection<T>,
    commands: mpsc::UnboundedReceiver<Command>,
    pending: Option<oneshot::Sender<Result<Stream, ConnectionError>>>,
    inbound: mpsc::UnboundedSender<Box<Stream>>,
    closing: bool,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Future for Driver<Compat<T>> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();

        // 1. Commands: opens wait for yamux one at a time; a close wins over all.
        while !this.closing {
            if this.pending.is_none() {
                match this.commands.poll_recv(cx) {
                    Poll::Ready(Some(Command::Open(tx))) => this.pending = Some(tx),
                    Poll::Ready(Some(Command::Close)) => this.closing = true,
                    Poll::Ready(None) | Poll::Pending => break,
                }
                continue;
            }
            match this.conn.poll_new_outbound(cx) {
                Poll::Ready(result) => {
                    let tx = this.pending.take().expect("an open is pending here");
                    let _ = tx.send(result);
                }
                Poll::Pending => break,
            }
        }
        if this.closing {
            return this.conn.poll_close(cx).map(|r| {
                if let Err(e) = r {
                    debug!(error = %e, "yamux close failed");
                }
            });
        }

        // 2. Inbound streams; polling here is also what reads and writes the socket.
        loop {
            match this.conn.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    let _ = this.inbound.send(Box::new(stream));
                }
                Poll::Ready(Some(Err(e))) => {
                    debug!(error = %e, "yamux link failed");
                    return Poll::Ready(());
                }
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Unsent bytes a link's TCP socket may hold: see [`tune_socket`].
pub const NOTSENT_LOWAT: u32 = 128 * 1024;

/// Sets what a link's TCP socket needs, on either end: no Nagle delay, and little
/// unsent data in the kernel. The kernel sends a socket's queue in order, so a desktop
/// frame written behind a download waits for every byte of it already queued; by
/// default that queue grows to megabytes (`net.ipv4.tcp_wmem`). With `TCP_NOTSENT_LOWAT`
/// the socket stops taking writes once this much is waiting to be sent, and the rest of
/// a download waits in yamux, which takes frames from its streams in turn, so a frame
/// queues behind at most this much and whatever is in flight.
pub fn tune_socket(tcp: &tokio::net::TcpStream) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    match notsent_lowat() {
        0 => Ok(()),
        lowat => socket2::SockRef::from(tcp).set_tcp_notsent_lowat(lowat),
    }
}

/// Overrides [`NOTSENT_LOWAT`] for measurements (bytes; 0 leaves the kernel's default).
pub const NOTSENT_LOWAT_ENV: &str = "AGENT_LINK_TCP_NOTSENT_LOWAT";

fn notsent_lowat() -> u32 {
    std::env::var(NOTSENT_LOWAT_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(NOTSENT_LOWAT)
}

/// Connects to `addr` over TCP and completes TLS with `tls`, without yamux yet.
pub async fn connect_tls(
    addr: SocketAddr,
    server_name: &str,
    tls: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tune_socket(&tcp)?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
}

/// Splits a yamux stream into its reading and writing halves.
pub fn split(stream: MuxStream) -> (MuxRecv, MuxSend) {
    let shared = Arc::new(Halves {
        stream: Mutex::new(stream.stream),
        link_closed: stream.link_closed,
        fin_sent: AtomicBool::new(false),
    });
    (MuxRecv(shared.clone()), MuxSend(shared))
}

/// What both halves of a yamux stream share.
///
/// yamux reads end-of-file alike for the peer's FIN, the peer's reset and the end of
/// the whole link, so a cut download would pass for a complete one. The reading half
/// therefore looks at the stream's state at end-of-file: a stream that is fully closed
/// although this side never sent its FIN was reset or lost with its link, and reads an
/// error. After this side's FIN both ends look the same; then only the link's end
/// tells. (One case stays invisible: a peer that drops a stream after the FIN it
/// received sends FIN, not reset; yamux offers no way to reset such a stream.)
#[derive(Debug)]
struct Halves {
    stream: Mutex<Compat<Stream>>,
    link_closed: CancellationToken,
    fin_sent: AtomicBool,
}

impl Halves {
    /// The stream, for one poll. The other half holds it only within a poll of its
    /// own, so a busy lock is retried at once rather than waited for.
    fn lock(&self, cx: &mut Context<'_>) -> Poll<tokio::sync::MutexGuard<'_, Compat<Stream>>> {
        match self.stream.try_lock() {
            Ok(guard) => Poll::Ready(guard),
            Err(_) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }
}

/// The reading half of a yamux stream.
#[derive(Debug)]
pub struct MuxRecv(Arc<Halves>);

/// The writing half of a yamux stream.
#[derive(Debug)]
pub struct MuxSend(Arc<Halves>);

impl AsyncRead for MuxRecv {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let halves = &self.0;
        let mut stream = ready!(halves.lock(cx));
        let before = buf.filled().len();
        ready!(Pin::new(&mut *stream).poll_read(cx, buf))?;
        let eof = buf.filled().len() == before && buf.remaining() > 0;
        if eof && stream.get_ref().is_closed() {
            let cut = if halves.fin_sent.load(Ordering::Acquire) {
                halves.link_closed.is_cancelled()
            } else {
                true
            };
            if cut {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "the stream was reset or its link was lost",
                )));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for MuxSend {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut stream = ready!(self.0.lock(cx));
        Pin::new(&mut *stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut stream = ready!(self.0.lock(cx));
        Pin::new(&mut *stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut stream = ready!(self.0.lock(cx));
        // Marked before the FIN can reach the peer, so that the peer's answering FIN
        // is never read while this still says "not sent".
        self.0.fin_sent.store(true, Ordering::Release);
        Pin::new(&mut *stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_link_socket_holds_little_unsent() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        tune_socket(&tcp).unwrap();
        assert!(tcp.nodelay().unwrap());
        if std::env::var_os(NOTSENT_LOWAT_ENV).is_none() {
            let lowat = socket2::SockRef::from(&tcp).tcp_notsent_lowat().unwrap();
            assert_eq!(lowat, NOTSENT_LOWAT);
        }
    }
}
