//! A real websocket client (tokio-tungstenite over rustls) for the gateway's routes,
//! with a byte-stream view of binary messages for protocols such as RFB.

use std::collections::VecDeque;
use std::sync::Arc;

use agent_link::tls::Trust;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::WebSocketStream;

use super::Gateway;

/// An open websocket through the gateway.
pub type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// Opens `url` (a `wss://` URL under the gateway's domain) with an optional bearer
/// token and subprotocol. An HTTP refusal comes back as `Err(status)`.
pub async fn connect(
    gw: &Gateway,
    url: &str,
    token: Option<&str>,
    protocol: Option<&str>,
) -> Result<Ws, u16> {
    let mut headers = Vec::new();
    if let Some(t) = token {
        headers.push(("authorization", format!("Bearer {t}")));
    }
    if let Some(p) = protocol {
        headers.push(("sec-websocket-protocol", p.to_owned()));
    }
    connect_with_headers(gw, url, &headers).await
}

/// Opens `url` with extra request headers (a cookie, a subprotocol...).
pub async fn connect_with_headers(
    gw: &Gateway,
    url: &str,
    headers: &[(&'static str, String)],
) -> Result<Ws, u16> {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().unwrap());
    }
    let host = request.uri().host().unwrap().to_owned();
    let tls = tls_connect(gw, &host).await;
    match tokio_tungstenite::client_async(request, tls).await {
        Ok((ws, _)) => Ok(ws),
        Err(Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("websocket handshake failed: {e}"),
    }
}

/// A TLS connection to the gateway's front door, for the name `host`.
pub async fn tls_connect(gw: &Gateway, host: &str) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", gw.public_port))
        .await
        .unwrap();
    let config = Trust::CaFile(gw.cacert())
        .client_config(&[b"http/1.1"])
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap()
}

/// Reads a websocket's binary messages as one byte stream.
#[derive(Debug)]
pub struct ByteStream {
    pub ws: Ws,
    pending: VecDeque<u8>,
}

impl ByteStream {
    pub fn new(ws: Ws) -> Self {
        Self {
            ws,
            pending: VecDeque::new(),
        }
    }

    /// Exactly `n` bytes, across as many messages as it takes.
    pub async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        while self.pending.len() < n {
            match self.ws.next().await {
                Some(Ok(Message::Binary(b))) => self.pending.extend(b.iter()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected binary data, got {other:?}"),
            }
        }
        self.pending.drain(..n).collect()
    }

    /// Sends bytes as one binary message.
    pub async fn write(&mut self, bytes: &[u8]) {
        self.ws
            .send(Message::Binary(bytes.to_vec().into()))
            .await
            .unwrap();
    }
}
