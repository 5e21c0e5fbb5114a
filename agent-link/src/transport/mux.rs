//! The link over TLS 1.3 on TCP with yamux, for networks that drop UDP.
//!
//! yamux is poll-based: one driver task owns the `Connection`. It must be polled for
//! any byte to move, so it polls for inbound streams continuously (handing them to
//! [`MuxLink::accept`]) and serves outbound opens that arrive on a channel.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};
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

/// Streams allowed on one link at once (user connections into one space). yamux
/// requires the connection window to cover 256 KiB for each.
const MAX_STREAMS: usize = 4096;

/// A yamux stream as a tokio byte stream.
pub type MuxStream = Compat<Stream>;

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
    inbound: Mutex<mpsc::UnboundedReceiver<Stream>>,
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
        config.set_max_connection_receive_window(Some(MAX_STREAMS * 256 * 1024));
        let mode = if server { Mode::Server } else { Mode::Client };
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
        rx.await
            .map_err(|_| ConnectionError::Closed)?
            .map(FuturesAsyncReadCompatExt::compat)
    }

    /// The next stream the peer opened, or `None` once the link is gone.
    pub async fn accept(&self) -> Option<MuxStream> {
        self.shared
            .inbound
            .lock()
            .await
            .recv()
            .await
            .map(FuturesAsyncReadCompatExt::compat)
    }

    /// Waits until the link has closed.
    pub async fn closed(&self) {
        self.shared.closed.cancelled().await
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
    inbound: mpsc::UnboundedSender<Stream>,
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
                    let _ = this.inbound.send(stream);
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

/// Connects to `addr` over TCP and completes TLS with `tls`, without yamux yet.
pub async fn connect_tls(
    addr: SocketAddr,
    server_name: &str,
    tls: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
}
