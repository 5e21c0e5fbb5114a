//! The client's connections and the echo source, both speaking HTTP/1.1 up to an
//! `Upgrade` and raw bytes after it.

use std::io;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{DOMAIN, SIZES, USER};

/// Where a client connects to reach the source.
pub struct Target {
    pub name: &'static str,
    port: u16,
    host: String,
    auth: String,
}

impl Target {
    pub fn direct(source: u16) -> Self {
        Self {
            name: "direct",
            port: source,
            host: format!("127.0.0.1:{source}"),
            auth: String::new(),
        }
    }

    pub fn through(transport: &'static str, plain: u16, source: u16, token: &str) -> Self {
        Self {
            name: transport,
            port: plain,
            host: format!("{USER}--{transport}--{source}.{DOMAIN}"),
            auth: format!("Authorization: Bearer {token}\r\n"),
        }
    }
}

/// One upgraded connection to the echo source, and a buffer for the echo.
pub struct Echo {
    stream: TcpStream,
    pub buf: Vec<u8>,
}

impl Echo {
    /// Opens the path, retrying while the gateway answers that the space has no link.
    pub async fn open_when_linked(path: &Target) -> Self {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Self::open(path).await {
                Ok(echo) => return echo,
                Err(e) if Instant::now() > deadline => panic!("{}: {e}", path.name),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    async fn open(path: &Target) -> io::Result<Self> {
        let mut stream = TcpStream::connect(("127.0.0.1", path.port)).await?;
        stream.set_nodelay(true)?;
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {}\r\n{}Connection: upgrade\r\nUpgrade: echo\r\n\r\n",
            path.host, path.auth
        );
        stream.write_all(request.as_bytes()).await?;
        let head = read_head(&mut stream).await?;
        if !head.starts_with(b"HTTP/1.1 101") {
            let line = String::from_utf8_lossy(&head)
                .lines()
                .next()
                .map(str::to_owned);
            return Err(io::Error::other(format!("answered {line:?}")));
        }
        let buf = vec![0; SIZES[SIZES.len() - 1]];
        Ok(Self { stream, buf })
    }

    /// Writes `frame` and reads its echo, both at once: a large frame would fill the
    /// socket buffers both ways if the client wrote all of it before reading.
    pub async fn round_trip(&mut self, frame: &[u8]) {
        let (mut read, mut write) = self.stream.split();
        let echo = &mut self.buf[..frame.len()];
        let (sent, received) = tokio::join!(write.write_all(frame), read.read_exact(echo));
        sent.unwrap();
        received.unwrap();
    }

    pub async fn timed(&mut self, frame: &[u8], iters: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            self.round_trip(frame).await;
        }
        start.elapsed()
    }
}

/// Reads an HTTP head, up to its blank line. Past a request head, or a `101` head,
/// nothing comes until it is answered, so only an error response is read beyond its
/// head (its body), and that connection is dropped.
async fn read_head(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Ok(head)
}

/// The source: `101` to any request, then every byte back.
pub async fn serve_echo() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(echo(conn));
        }
    });
    port
}

async fn echo(mut conn: TcpStream) -> io::Result<()> {
    conn.set_nodelay(true)?;
    read_head(&mut conn).await?;
    conn.write_all(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await?;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        conn.write_all(&buf[..n]).await?;
    }
}
