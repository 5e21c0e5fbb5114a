//! The websocket routes that carry raw TCP (SSH and other ports).
//!
//! Binary messages carry bytes in order (RFC 6455 section 5.6). TCP has half-close and
//! websockets do not, so these routes give one meaning to an otherwise meaningless
//! message: an empty binary message says "no more bytes from me" (end-of-file on that
//! direction only). A Close frame ends both directions.

use agent_link::transport::DataStream;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{
    frame::coding::CloseCode, CloseFrame, Role, WebSocketConfig,
};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, Instrument, Span};

use super::reply::{self, Body};
use crate::metrics::Metrics;
use crate::open::Opened;
use std::sync::Arc;

/// Largest websocket message accepted from a client (1 MiB); a client streams bytes in
/// many messages, so there is no reason to buffer more than this for one.
const MAX_MESSAGE: usize = 1 << 20;

/// Buffer for reads from the space; each read becomes one binary message.
const READ_BUFFER: usize = 60 * 1024;

/// Checks that the request is a websocket upgrade this route can accept (RFC 6455
/// section 4.2.1), before any stream to the space is opened.
pub(super) fn check_upgrade(req: &Request<Incoming>) -> Result<(), Response<Body>> {
    let has = |name: header::HeaderName, token: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if req.method() != http::Method::GET
        || !has(header::UPGRADE, "websocket")
        || !has(header::CONNECTION, "upgrade")
    {
        return Err(reply::text(
            StatusCode::BAD_REQUEST,
            "this route takes a websocket upgrade (GET with Upgrade: websocket)",
        ));
    }
    if req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        let mut resp = reply::text(
            StatusCode::UPGRADE_REQUIRED,
            "websocket version 13 is required",
        );
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Err(resp);
    }
    if !req.headers().contains_key(header::SEC_WEBSOCKET_KEY) {
        return Err(reply::text(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Key is missing",
        ));
    }
    Ok(())
}

/// Answers 101 and relays between the upgraded connection and `stream`.
pub(super) fn accept(
    mut req: Request<Incoming>,
    opened: Opened,
    span: Span,
    metrics: Arc<Metrics>,
) -> Response<Body> {
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()))
        .unwrap_or_default();
    let wants_binary = req
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|p| p.trim() == "binary"));
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(
        async move {
            match upgrade.await {
                Ok(upgraded) => {
                    let Opened { stream, guard, .. } = opened;
                    relay(upgraded, stream, &metrics).await;
                    drop(guard);
                }
                Err(e) => debug!(error = %e, "websocket upgrade failed"),
            }
        }
        .instrument(span),
    );

    let mut resp = reply::text(StatusCode::SWITCHING_PROTOCOLS, "");
    *resp.body_mut() = BodyExt::boxed(BodyExt::map_err(
        Empty::<Bytes>::new(),
        |never| match never {},
    ));
    let h = resp.headers_mut();
    h.remove(header::CONTENT_TYPE);
    h.remove(header::CACHE_CONTROL);
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&key).expect("base64 is a valid header value"),
    );
    if wants_binary {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("binary"),
        );
    }
    resp
}

/// How one direction of the relay ended.
#[derive(Debug)]
enum Ended {
    /// End-of-file in this direction; the other may go on.
    HalfClose,
    /// The whole connection is over.
    Close,
}

async fn relay(upgraded: hyper::upgrade::Upgraded, stream: DataStream, metrics: &Metrics) {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let ws =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
    let (mut sink, mut source) = ws.split();
    let DataStream { mut send, mut recv } = stream;

    // Client to space: binary messages become bytes. An empty message ends this
    // direction only; a Close (or the connection's end) ends both.
    let upstream = async {
        let result = loop {
            match source.next().await {
                Some(Ok(Message::Binary(b))) if b.is_empty() => break Ok(Ended::HalfClose),
                Some(Ok(Message::Binary(b))) => {
                    metrics.to_space.inc_by(b.len() as u64);
                    if let Err(e) = send.write_all(&b).await {
                        break Err(e.to_string());
                    }
                }
                Some(Ok(Message::Close(_))) | None => break Ok(Ended::Close),
                Some(Ok(Message::Text(_))) => break Err("text message on a byte stream".to_owned()),
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(e.to_string()),
            }
        };
        // A clean end travels as end-of-file; a failure is left for the reset below,
        // so that the space cannot take a cut stream for a finished one.
        if result.is_ok() {
            let _ = send.shutdown().await;
        }
        result
    };

    // Space to client: each read becomes a binary message; end-of-file becomes an
    // empty one.
    let downstream = async {
        let mut buf = vec![0u8; READ_BUFFER];
        loop {
            match recv.read(&mut buf).await {
                Ok(0) => {
                    let _ = sink.send(Message::Binary(Bytes::new())).await;
                    break Ok(Ended::HalfClose);
                }
                Ok(n) => {
                    metrics.from_space.inc_by(n as u64);
                    if let Err(e) = sink
                        .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                        .await
                    {
                        break Err(e.to_string());
                    }
                }
                Err(e) => break Err(e.to_string()),
            }
        }
    };

    // The relay ends when both directions have ended, or at once when the client
    // closes the websocket or either side fails.
    let (up, down) = {
        tokio::pin!(upstream, downstream);
        tokio::select! {
            up = &mut upstream => match up {
                Ok(Ended::HalfClose) => (up, downstream.await),
                _ => (up, Ok(Ended::Close)),
            },
            down = &mut downstream => match down {
                Ok(_) => (upstream.await, down),
                Err(_) => (Ok(Ended::Close), down),
            },
        }
    };
    if down.is_err() || up.is_err() {
        // A failed direction must reach the space as an abort, not a clean end.
        recv.stop();
        send.reset();
    }
    let code = if up.is_ok() && down.is_ok() {
        CloseCode::Normal
    } else {
        CloseCode::Error
    };
    debug!(?up, ?down, "websocket relay done");
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: "".into(),
        })))
        .await;
    let _ = sink.close().await;
}
