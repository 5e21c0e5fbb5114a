//! The users' side: connections to the gateway's front door (TLS or plain) or straight
//! to a source, websockets over them, and a small keep-alive HTTP/1.1 client.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::WebSocketStream;

use crate::gateway::Target;

/// Any byte stream: plain TCP or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A websocket over either kind of stream.
pub type Ws = WebSocketStream<Box<dyn Io>>;

/// How a user reaches a service: through the gateway by name, or straight to the source.
#[derive(Debug, Clone)]
pub enum Via {
    Gateway {
        target: Arc<Target>,
        tls: Arc<rustls::ClientConfig>,
    },
    Direct,
}

impl Via {
    /// Through `target`'s front door, trusting its pinned certificate.
    pub fn gateway(target: Arc<Target>) -> anyhow::Result<Self> {
        let tls = agent_link::tls::Trust::fingerprint(&target.fingerprint)?
            .client_config(&[b"http/1.1"])?;
        Ok(Self::Gateway {
            target,
            tls: Arc::new(tls),
        })
    }

    /// Opens a byte stream: to the front door for `host`, or to `direct`.
    pub async fn connect(&self, host: &str, direct: SocketAddr) -> anyhow::Result<Box<dyn Io>> {
        let addr = match self {
            Via::Gateway { target, .. } => target.front,
            Via::Direct => direct,
        };
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        tcp.set_nodelay(true)?;
        match self {
            Via::Gateway { target, tls } if target.front_tls => {
                let name = rustls_pki_types::ServerName::try_from(host.to_owned())?;
                let tls = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .context("TLS handshake with the front door")?;
                Ok(Box::new(tls))
            }
            _ => Ok(Box::new(tcp)),
        }
    }

    /// The user token to send, on the gateway path.
    pub fn token(&self) -> Option<&str> {
        match self {
            Via::Gateway { target, .. } => Some(&target.user_token),
            Via::Direct => None,
        }
    }

    /// The gateway's domain (the direct path uses it only as a Host value).
    pub fn domain(&self) -> &str {
        match self {
            Via::Gateway { target, .. } => &target.domain,
            Via::Direct => "direct.localhost",
        }
    }

    /// Opens a websocket to `host` + `path`.
    pub async fn websocket(
        &self,
        host: &str,
        path: &str,
        direct: SocketAddr,
    ) -> anyhow::Result<Ws> {
        let io = self.connect(host, direct).await?;
        let mut request = format!("ws://{host}{path}").into_client_request()?;
        if let Some(token) = self.token() {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse()?);
        }
        let (ws, _) = tokio_tungstenite::client_async(request, io)
            .await
            .with_context(|| format!("websocket handshake with {host}{path}"))?;
        Ok(ws)
    }
}

/// One keep-alive HTTP/1.1 connection.
pub struct HttpConn {
    io: BufReader<Box<dyn Io>>,
    host: String,
    auth: String,
    buf: Vec<u8>,
    /// How far the current request got, for the message when it is cut short.
    progress: Progress,
}

/// How far a request got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Sent; no status line yet.
    Sent,
    /// The head arrived; the body's bytes so far, of the announced length.
    Body { got: u64, of: u64 },
    /// The whole response arrived.
    Done,
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Progress::Sent => f.write_str("no response head"),
            Progress::Body { got, of } => write!(f, "{got} of {of} body bytes"),
            Progress::Done => f.write_str("complete"),
        }
    }
}

impl std::fmt::Debug for HttpConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConn")
            .field("host", &self.host)
            .finish()
    }
}

impl HttpConn {
    pub async fn open(via: &Via, host: &str, direct: SocketAddr) -> anyhow::Result<Self> {
        let io = via.connect(host, direct).await?;
        Ok(Self {
            io: BufReader::with_capacity(64 * 1024, io),
            host: host.to_owned(),
            auth: via
                .token()
                .map(|t| format!("Authorization: Bearer {t}\r\n"))
                .unwrap_or_default(),
            buf: vec![0u8; 64 * 1024],
            progress: Progress::Done,
        })
    }

    /// How far the last request got.
    pub fn progress(&self) -> Progress {
        self.progress
    }

    /// GETs `path`; checks the status is 200 and the body has its announced length.
    /// Returns the body's length.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<u64> {
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\n{}\r\n",
            self.host, self.auth
        );
        self.progress = Progress::Sent;
        // TLS may keep what it could not send at once until a flush.
        let io = self.io.get_mut();
        io.write_all(head.as_bytes()).await?;
        io.flush().await?;
        let mut line = String::new();
        self.io.read_line(&mut line).await?;
        if !line.starts_with("HTTP/1.1 200") {
            bail!("status line {:?}", line.trim_end());
        }
        let mut length = None;
        loop {
            line.clear();
            if self.io.read_line(&mut line).await? == 0 {
                bail!("connection closed inside the response head");
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<u64>().ok();
                }
            }
        }
        let length = length.context("response without Content-Length")?;
        let mut left = length;
        self.progress = Progress::Body { got: 0, of: length };
        while left > 0 {
            let want = left.min(self.buf.len() as u64) as usize;
            let n = self.io.read(&mut self.buf[..want]).await?;
            if n == 0 {
                bail!("body cut after {} of {length} bytes", length - left);
            }
            left -= n as u64;
            self.progress = Progress::Body {
                got: length - left,
                of: length,
            };
        }
        self.progress = Progress::Done;
        Ok(length)
    }
}
