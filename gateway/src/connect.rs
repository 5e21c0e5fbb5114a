//! `gateway connect`: standard input and output over a space's SSH (or TCP) websocket,
//! for OpenSSH's `ProxyCommand`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use agent_link::tls::Trust;
use anyhow::{bail, Context};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::certs::dev_paths;

/// Where to connect, and with what credentials.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// The space, as `USER/SPACE`.
    pub target: String,
    /// A TCP port of the space instead of its SSH server.
    #[arg(long)]
    pub port: Option<u16>,
    /// The gateway's public address.
    #[arg(
        long,
        env = "GATEWAY_URL",
        default_value = "https://gateway.localhost:8443"
    )]
    pub server: String,
    /// A user token with access to the space.
    #[arg(long, env = "GATEWAY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificates (PEM) that the gateway's certificate chains to.
    #[arg(long, env = "GATEWAY_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// SHA-256 fingerprint of the gateway's certificate.
    #[arg(long, env = "GATEWAY_FINGERPRINT")]
    pub fingerprint: Option<String>,
}

/// Runs the copy until both directions are done. `data_dir` supplies the development
/// certificate when neither a CA file nor a fingerprint is given.
pub async fn run(args: ConnectArgs, data_dir: PathBuf) -> anyhow::Result<()> {
    let uri: http::Uri = args
        .server
        .parse()
        .with_context(|| format!("--server {:?} is not a URL", args.server))?;
    let host = uri.host().context("--server has no host")?.to_owned();
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        other => bail!("--server must start with https:// or http://, not {other:?}"),
    };
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let (user, space) = args
        .target
        .split_once('/')
        .context("the target is USER/SPACE")?;
    let path = match args.port {
        Some(p) => format!("/tcp/{user}/{space}/{p}"),
        None => format!("/ssh/{user}/{space}"),
    };

    let mut request = format!("{}://{host}:{port}{path}", if tls { "wss" } else { "ws" })
        .into_client_request()?;
    if let Some(token) = &args.token {
        request.headers_mut().insert(
            http::header::AUTHORIZATION,
            format!("Bearer {token}").parse()?,
        );
    }
    let addr = agent_link::net::resolve(&host, port)
        .await
        .with_context(|| format!("cannot resolve {host}"))?;
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot reach {host}:{port} ({addr})"))?;
    tcp.set_nodelay(true)?;
    if !tls {
        return pump(tcp, request).await;
    }
    let trust = trust(&args, &data_dir, &host)?;
    let config = trust.client_config(&[b"http/1.1"])?;
    let name = rustls::pki_types::ServerName::try_from(host.clone())?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS with {host}:{port} failed"))?;
    pump(stream, request).await
}

fn trust(args: &ConnectArgs, data_dir: &std::path::Path, host: &str) -> anyhow::Result<Trust> {
    if let Some(path) = &args.ca_file {
        return Ok(Trust::CaFile(path.clone()));
    }
    if let Some(fp) = &args.fingerprint {
        return Ok(Trust::fingerprint(fp)?);
    }
    let (dev_cert, _) = dev_paths(data_dir, host);
    if dev_cert.exists() {
        return Ok(Trust::CaFile(dev_cert));
    }
    bail!(
        "no way to trust the gateway: give --ca-file or --fingerprint \
         (no development certificate at {})",
        dev_cert.display()
    )
}

async fn pump<S>(stream: S, request: http::Request<()>) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (ws, _) = match tokio_tungstenite::client_async(request, stream).await {
        Ok(ok) => ok,
        Err(WsError::Http(resp)) => {
            let body = resp
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            bail!("the gateway answered {}: {}", resp.status(), body.trim());
        }
        Err(e) => return Err(e).context("websocket handshake failed"),
    };
    let (mut sink, mut source) = ws.split();

    // Standard input to the space; end-of-file is sent as an empty message so that the
    // space sees a half-close and can still answer.
    let upstream = async {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = stdin.read(&mut buf).await?;
            sink.send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                .await?;
            if n == 0 {
                return anyhow::Ok(());
            }
        }
    };

    // The space to standard output. The space's end-of-file (an empty message) closes
    // standard output, so that whatever reads it sees the end (OpenSSH then exits and
    // closes our input), while standard input goes on to the space until its own end:
    // a service that answers early and reads on gets the whole upload. Typed input is
    // the exception: a person at a terminal expects the session to end with the
    // space's. The gateway's Close ends the session.
    let interactive = std::io::stdin().is_terminal();
    let downstream = async {
        let mut stdout = tokio::io::stdout();
        while let Some(msg) = source.next().await {
            match msg? {
                Message::Binary(b) if b.is_empty() && interactive => break,
                Message::Binary(b) if b.is_empty() => {
                    stdout.flush().await?;
                    let null = std::fs::File::open("/dev/null").context("open /dev/null")?;
                    rustix::stdio::dup2_stdout(&null).context("close standard output")?;
                }
                Message::Binary(b) => {
                    stdout.write_all(&b).await?;
                    stdout.flush().await?;
                }
                // The gateway closes with another code when the stream was cut (the
                // agent or the space's service died), was idle too long or a message
                // was too large: that must not look like a finished session to
                // whatever reads our output.
                Message::Close(Some(close)) if close.code != CloseCode::Normal => {
                    bail!(
                        "the gateway ended the connection ({}): {}",
                        close.code,
                        close.reason
                    )
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        anyhow::Ok(())
    };

    // The gateway closes the websocket once both directions are over, which ends
    // `downstream`; standard input may still be open then (a service that closed
    // altogether), so that is the end.
    tokio::pin!(upstream, downstream);
    tokio::select! {
        down = &mut downstream => down,
        up = &mut upstream => {
            up?;
            downstream.await
        }
    }
}
