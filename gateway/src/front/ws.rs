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
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, Instrument, Span};

use super::reply::{self, Body};
use super::Limits;
use crate::idle::{until_idle, write_all_while_taken, Activity, Idle};
use crate::metrics::Metrics;
use crate::open::Opened;
use crate::stall::Stall;
use std::sync::Arc;

/// Buffer for reads from the space; each read becomes one binary message.
const READ_BUFFER: usize = 60 * 1024;

/// How long the client has to answer our Close before its connection is closed.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

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
    limits: Limits,
    stop: tokio::sync::watch::Receiver<bool>,
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
                    let Opened {
                        stream,
                        guard,
                        stall,
                        ..
                    } = opened;
                    relay(upgraded, stream, &stall, &metrics, limits, stop).await;
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

/// Why a direction of the relay failed.
#[derive(Debug)]
enum Cut {
    /// The client sent a message over the limit.
    TooBig,
    /// The space stopped taking the client's bytes (its service closed, or the stream
    /// was stopped or lost). What the space still sends is relayed to its end.
    Refused(String),
    /// Anything else: I/O, protocol, a reset by the space.
    Failed(String),
}

async fn relay(
    upgraded: hyper::upgrade::Upgraded,
    stream: DataStream,
    stall: &Stall,
    metrics: &Metrics,
    limits: Limits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let config = WebSocketConfig::default()
        .max_message_size(Some(limits.max_message))
        .max_frame_size(Some(limits.max_message));
    let ws =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
    let (mut sink, mut source) = ws.split();
    let DataStream { mut send, mut recv } = stream;
    let activity = Activity::new();
    let space_ended = std::sync::atomic::AtomicBool::new(false);

    // Client to space: binary messages become bytes. An empty message ends this
    // direction only; a Close (or the connection's end) ends both.
    let upstream = async {
        let result = loop {
            match source.next().await {
                Some(Ok(Message::Binary(b))) if b.is_empty() => break Ok(Ended::HalfClose),
                Some(Ok(Message::Binary(b))) => {
                    metrics.to_space.inc_by(b.len() as u64);
                    activity.moved(b.len());
                    if let Err(e) = write_all_while_taken(&mut send, &b, &space_ended).await {
                        break Err(Cut::Refused(e.to_string()));
                    }
                }
                Some(Ok(Message::Close(_))) | None => break Ok(Ended::Close),
                Some(Ok(Message::Text(_))) => {
                    break Err(Cut::Failed("text message on a byte stream".to_owned()))
                }
                Some(Ok(_)) => {}
                Some(Err(WsError::Capacity(_))) => break Err(Cut::TooBig),
                Some(Err(e)) => break Err(Cut::Failed(e.to_string())),
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
            stall.reading();
            match recv.read(&mut buf).await {
                Ok(0) => {
                    space_ended.store(true, std::sync::atomic::Ordering::Relaxed);
                    let _ = sink.send(Message::Binary(Bytes::new())).await;
                    break Ok(Ended::HalfClose);
                }
                Ok(n) => {
                    stall.handed(n);
                    metrics.from_space.inc_by(n as u64);
                    activity.moved(n);
                    if let Err(e) = sink
                        .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                        .await
                    {
                        break Err(Cut::Failed(e.to_string()));
                    }
                }
                Err(e) => break Err(Cut::Failed(e.to_string())),
            }
        }
    };

    // The relay ends when both directions have ended, or at once when the client
    // closes the websocket or either side fails, or when nothing moves for too long.
    let both = async {
        tokio::pin!(upstream, downstream);
        tokio::select! {
            up = &mut upstream => match up {
                // A service that answers and closes while the client is still sending
                // has its answer delivered whole; a lost link fails the other way too.
                Ok(Ended::HalfClose) | Err(Cut::Refused(_)) => (up, downstream.await),
                _ => (up, Ok(Ended::Close)),
            },
            down = &mut downstream => match down {
                Ok(_) => (upstream.await, down),
                Err(_) => (Ok(Ended::Close), down),
            },
        }
    };
    // The gateway stopping at its drain deadline ends the relay too.
    let stopped = async {
        if stop.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let outcome = tokio::select! {
        outcome = until_idle(both, &activity, limits.idle) => Some(Some(outcome)),
        () = stopped => None,
        () = stall.cut() => Some(None),
    };
    let (code, reason) = match outcome {
        Some(None) => {
            debug!("websocket relay cut: its user had stopped reading");
            (
                CloseCode::Again,
                "cut: you had stopped reading while the space's link was full".to_owned(),
            )
        }
        None => {
            debug!("websocket relay stopped: the gateway is shutting down");
            (
                CloseCode::Away,
                "the gateway is shutting down; reconnect".to_owned(),
            )
        }
        Some(Some(Ok((Ok(up), Ok(down))))) => {
            debug!(?up, ?down, "websocket relay done");
            (CloseCode::Normal, String::new())
        }
        Some(Some(Ok((up, down)))) => {
            debug!(?up, ?down, "websocket relay aborted");
            match (up, down) {
                (Err(Cut::TooBig), _) => (
                    CloseCode::Size,
                    format!("message larger than {} bytes", limits.max_message),
                ),
                (_, Err(Cut::Failed(why))) | (Err(Cut::Failed(why)), _) => (
                    CloseCode::Error,
                    close_reason(&format!("stream cut: {why}")),
                ),
                (Err(Cut::Refused(why)), _) => (
                    CloseCode::Error,
                    close_reason(&format!("the space took no more of the upload: {why}")),
                ),
                _ => (CloseCode::Error, "stream cut".to_owned()),
            }
        }
        Some(Some(Err(Idle(limit)))) => {
            debug!(?limit, "websocket relay idle");
            (
                CloseCode::Away,
                format!("no data either way for {} s", limit.as_secs()),
            )
        }
    };
    if code != CloseCode::Normal {
        // A failed or abandoned relay must reach the space as an abort, not a clean
        // end.
        recv.stop();
        send.reset();
    }
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
    // The closing handshake: what the client still sends is read and dropped until
    // its own Close, for a while at most. Closing the socket with those bytes unread
    // would reset the connection, and a reset can take from the client the end of what
    // we sent that it has not read yet.
    let drained = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(Ok(msg)) = source.next().await {
            if msg.is_close() {
                break;
            }
        }
    });
    if drained.await.is_err() {
        debug!(?CLOSE_WAIT, "no Close from the client in time");
    }
    let _ = sink.close().await;
}

/// `text` cut to what a Close frame's reason may hold (123 bytes), on a character
/// boundary.
fn close_reason(text: &str) -> String {
    let mut end = text.len().min(123);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}
