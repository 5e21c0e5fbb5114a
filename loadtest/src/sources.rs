//! The space's services, in process on loopback: a VNC-like websocket source that
//! pushes stamped frames, an echo server (the SSH stand-in), and an HTTP server.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::clock::now_ns;
use crate::frame;

/// What a viewer asks the desktop source for, in its first binary message.
#[derive(Debug, Clone, Copy)]
pub struct FrameRequest {
    pub fps: u32,
    pub size: u32,
    pub count: u64,
}

impl FrameRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        out.extend_from_slice(&self.fps.to_be_bytes());
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        out
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let fps = u32::from_be_bytes(b.get(0..4)?.try_into().ok()?);
        let size = u32::from_be_bytes(b.get(4..8)?.try_into().ok()?);
        let count = u64::from_be_bytes(b.get(8..16)?.try_into().ok()?);
        let ok = (1..=1000).contains(&fps) && (frame::HEADER as u32..=16 << 20).contains(&size);
        ok.then_some(Self { fps, size, count })
    }
}

async fn listen(ip: IpAddr) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind((ip, 0)).await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Serves each accepted connection with `serve` in its own task, forever.
fn accept_loop<F, Fut>(listener: TcpListener, serve: F)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(serve(tcp));
        }
    });
}

/// The desktop: a websocket server (as websockify is) that, once asked, sends `count`
/// frames at `fps`, each stamped the moment it is written, then closes.
pub async fn desktop(ip: IpAddr) -> anyhow::Result<SocketAddr> {
    let (listener, addr) = listen(ip).await?;
    accept_loop(listener, |tcp| async move {
        let _ = push_frames(tcp).await;
    });
    Ok(addr)
}

async fn push_frames(tcp: TcpStream) -> anyhow::Result<()> {
    let mut ws = tokio_tungstenite::accept_async(tcp).await?;
    let ask = loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => break FrameRequest::decode(&b),
            Some(Ok(_)) => continue,
            _ => return Ok(()),
        }
    };
    let Some(ask) = ask else {
        return Ok(());
    };
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / ask.fps as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; ask.size as usize];
    for seq in 0..ask.count {
        tick.tick().await;
        frame::fill(&mut buf, seq, 0);
        frame::stamp(&mut buf, now_ns());
        ws.send(Message::Binary(buf.clone().into())).await?;
    }
    ws.close(None).await?;
    // Let the close handshake finish so the viewer sees a clean end.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    Ok(())
}

/// Echoes every byte back (the SSH server's stand-in: keystrokes come back as echo).
pub async fn echo(ip: IpAddr) -> anyhow::Result<SocketAddr> {
    let (listener, addr) = listen(ip).await?;
    accept_loop(listener, |mut tcp| async move {
        let (mut r, mut w) = tcp.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    });
    Ok(addr)
}

/// HTTP/1.1 with keep-alive: `GET /bulk/N` answers N bytes, anything else
/// `body_size` bytes.
pub async fn http(ip: IpAddr, body_size: u64) -> anyhow::Result<SocketAddr> {
    let (listener, addr) = listen(ip).await?;
    accept_loop(listener, move |tcp| async move {
        let _ = serve_http(tcp, body_size).await;
    });
    Ok(addr)
}

async fn serve_http(tcp: TcpStream, body_size: u64) -> anyhow::Result<()> {
    let (r, mut w) = tcp.into_split();
    let mut r = BufReader::new(r);
    let chunk = vec![0x5au8; 60 * 1024];
    let mut line = String::new();
    loop {
        // Request line, then headers up to the empty line; no request body is expected.
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let size = line
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.strip_prefix("/bulk/"))
            .and_then(|n| n.parse().ok())
            .unwrap_or(body_size);
        loop {
            let mut header = String::new();
            if r.read_line(&mut header).await? == 0 {
                return Ok(());
            }
            if header == "\r\n" || header == "\n" {
                break;
            }
        }
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n");
        w.write_all(head.as_bytes()).await?;
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            w.write_all(&chunk[..n]).await?;
            left -= n as u64;
        }
    }
}
