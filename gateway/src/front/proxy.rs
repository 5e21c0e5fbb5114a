//! HTTP over a stream to a space: one upstream HTTP/1.1 connection per request, with
//! protocol upgrades (the VNC page's websocket) joined byte for byte.

use agent_link::io::RELAY_BUFFER;
use agent_link::proto::ClientAddr;
use agent_link::transport::DataStream;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tracing::{debug, Instrument};

use super::auth::{strip_credentials, TOKEN_COOKIE};
use super::reply::{self, Body};
use crate::idle::{until_idle, write_all_while_taken, Activity, Idle, Watched};
use crate::metrics::Metrics;
use crate::open::{Counted, Opened};
use crate::stall::Stall;

/// Sends `req` to the space over `stream` and returns the space's response.
pub(super) async fn forward(
    mut req: Request<Incoming>,
    opened: Opened,
    client: ClientAddr,
    tls: bool,
    metrics: &Metrics,
    idle: Option<Duration>,
) -> Response<Body> {
    // The guard counts the stream as open until both the connection task and, after an
    // upgrade, the joined relay are done with it.
    let Opened {
        stream,
        guard,
        stall,
        ..
    } = opened;
    let guard = Arc::new(guard);
    let stream = Counted::new(
        stream,
        metrics.from_space.clone(),
        metrics.to_space.clone(),
        stall.clone(),
    );
    // A space's service that stops answering mid-request (or never starts) is cut after
    // the idle limit like any relayed connection, so it cannot hold a stream forever.
    let activity = Activity::new();
    let stream = Watched::new(stream, activity.clone());
    // 1. Take the client's upgrade future before the request is moved upstream; it
    //    resolves once our 101 response has been written to the client.
    let client_upgrade = is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let version = req.version();
    strip_credentials(&mut req);
    add_forwarded(&mut req, client, tls);

    // 2. A fresh HTTP/1.1 client connection over the stream. The connection task ends
    //    when the response body has been read, or carries the upgraded stream after 101.
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(pair) => pair,
        Err(e) => {
            return reply::text(
                StatusCode::BAD_GATEWAY,
                format!("cannot talk HTTP to the space: {e}"),
            )
        }
    };
    let conn_guard = guard.clone();
    let conn_stall = stall.clone();
    tokio::spawn(
        async move {
            tokio::select! {
                done = until_idle(conn.with_upgrades(), &activity, idle) => match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!(error = %e, "upstream connection failed"),
                    Err(Idle(limit)) => debug!(?limit, "upstream connection closed: idle"),
                },
                // Dropping the connection resets the stream; the user's response is
                // cut, not ended.
                () = conn_stall.cut() => {
                    debug!("upstream connection cut: its user had stopped reading");
                }
            }
            drop(conn_guard);
        }
        .in_current_span(),
    );

    // 3. The response, and on 101 the join of both upgraded connections.
    let mut resp = match sender.send_request(req).await {
        Ok(resp) => resp,
        Err(e) => {
            return reply::text(
                StatusCode::BAD_GATEWAY,
                format!("the space's service failed to answer: {e}"),
            )
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream = hyper::upgrade::on(&mut resp);
            let guard = guard.clone();
            tokio::spawn(
                async move {
                    join_upgraded(client_upgrade, upstream, idle, &stall).await;
                    drop(guard);
                }
                .in_current_span(),
            );
        }
    }
    drop_gateway_cookies(resp.headers_mut());
    // The client's HTTP version, not the service's: an HTTP/1.0 service's body of
    // unknown length then reaches an HTTP/1.1 client chunked, so that a cut is seen as
    // one. Ended by the connection's close instead, a cut would look like the end to
    // clients that accept a TLS connection closed without close_notify (curl does).
    *resp.version_mut() = version;
    resp.map(|body| body.boxed())
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(header::UPGRADE)
}

/// The upstream connection's transport, as hyper hands it back after a `101`.
type Upstream = TokioIo<Watched<Counted<DataStream>>>;

/// How long a client whose upload the space refused has to stop sending, once the
/// space's answer has reached it, before its connection is closed.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Why the client's direction of an upgraded connection ended early.
enum Cut {
    /// The space took no more of the client's bytes (its service closed while the
    /// client was still sending): what the space sends is still relayed to its end.
    Refused(io::Error),
    /// The client or the link failed: the whole connection is cut.
    Failed(io::Error),
}

/// Relays an upgraded connection byte for byte. End-of-file travels in each direction
/// on its own. A service that answers and closes while the client still sends has its
/// answer delivered whole, and the client's further bytes are then read and dropped
/// for a while so that closing its connection does not reset it and take the end of
/// the answer with it. A failure cuts the stream to the space with a reset, never with
/// an end-of-file that would pass a cut connection off as a finished one.
async fn join_upgraded(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    idle: Option<Duration>,
    stall: &Stall,
) {
    let (client, upstream) = match tokio::join!(client, upstream) {
        (Ok(c), Ok(u)) => (c, u),
        (Err(e), _) | (_, Err(e)) => return debug!(error = %e, "upgrade failed"),
    };
    // hyper gives back the transport it was handed, with what it read past the
    // response head.
    let Ok(upstream) = upstream.downcast::<Upstream>() else {
        return debug!("upgrade failed: the upstream transport is not the space's stream");
    };
    let early = upstream.read_buf;
    let mut space = upstream.io.into_inner();
    let activity = Activity::new();
    let mut client = Watched::new(TokioIo::new(client), activity.clone());

    let outcome = tokio::select! {
        outcome = relay(&mut client, &mut space, &early, &activity, idle) => outcome,
        () = stall.cut() => {
            debug!("upgraded connection cut: its user had stopped reading");
            return space.inner_mut().inner_mut().reset();
        }
    };
    let whole = match outcome {
        Ok((Ok(up), Ok(down))) => {
            debug!(bytes_up = up, bytes_down = down, "upgraded connection done");
            true
        }
        Ok((Err(Cut::Refused(e)), Ok(down))) => {
            debug!(
                error = %e,
                bytes_down = down,
                "the space took no more of the upload; its answer was delivered"
            );
            linger(&mut client).await;
            true
        }
        Ok((Err(Cut::Failed(e)), _) | (_, Err(e))) => {
            debug!(error = %e, "upgraded connection cut");
            false
        }
        Err(Idle(limit)) => {
            debug!(?limit, "upgraded connection closed: idle");
            false
        }
    };
    if !whole {
        // The space must see a cut, not an end-of-file (a dropped QUIC stream would
        // send one).
        space.inner_mut().inner_mut().reset();
    }
}

/// Bytes relayed each way (client to space, space to client), or why a direction
/// ended early.
type Relayed = (Result<u64, Cut>, io::Result<u64>);

/// Both directions of an upgraded connection, `early` (bytes the space sent with its
/// `101`) first; each runs to its end, except that a failure ends both at once.
async fn relay(
    client: &mut Watched<TokioIo<hyper::upgrade::Upgraded>>,
    space: &mut Watched<Counted<DataStream>>,
    early: &[u8],
    activity: &Activity,
    idle: Option<Duration>,
) -> Result<Relayed, Idle> {
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut space_read, mut space_write) = tokio::io::split(space);
    let space_ended = std::sync::atomic::AtomicBool::new(false);
    let up = async {
        let mut buf = vec![0u8; RELAY_BUFFER];
        let mut copied = 0u64;
        loop {
            let n = client_read.read(&mut buf).await.map_err(Cut::Failed)?;
            if n == 0 {
                break;
            }
            write_all_while_taken(&mut space_write, &buf[..n], &space_ended)
                .await
                .map_err(Cut::Refused)?;
            copied += n as u64;
        }
        space_write.shutdown().await.map_err(Cut::Refused)?;
        Ok(copied)
    };
    let down = async {
        client_write.write_all(early).await?;
        let mut buf = vec![0u8; RELAY_BUFFER];
        let mut copied = early.len() as u64;
        loop {
            let n = space_read.read(&mut buf).await?;
            if n == 0 {
                space_ended.store(true, std::sync::atomic::Ordering::Relaxed);
                break;
            }
            client_write.write_all(&buf[..n]).await?;
            copied += n as u64;
        }
        client_write.shutdown().await?;
        Ok::<_, io::Error>(copied)
    };
    let both = async {
        tokio::pin!(up, down);
        tokio::select! {
            up_done = &mut up => match up_done {
                Ok(_) | Err(Cut::Refused(_)) => (up_done, down.await),
                Err(_) => (up_done, Ok(0)),
            },
            down_done = &mut down => match down_done {
                Ok(_) => (up.await, down_done),
                Err(_) => (Ok(0), down_done),
            },
        }
    };
    until_idle(both, activity, idle).await
}

/// Reads and drops what the client still sends, until its end-of-file or for
/// [`CLOSE_WAIT`] at most.
async fn linger<T: AsyncRead + Unpin>(client: &mut T) {
    let mut buf = vec![0u8; 16 * 1024];
    let drained = tokio::time::timeout(CLOSE_WAIT, async {
        while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    if drained.await.is_err() {
        debug!(
            ?CLOSE_WAIT,
            "the client was still sending when its connection was closed"
        );
    }
}

/// `X-Forwarded-For`, `-Proto` and `-Host`, as proxies conventionally add them.
fn add_forwarded<B>(req: &mut Request<B>, client: ClientAddr, tls: bool) {
    let headers = req.headers_mut();
    let ip = client.0.ip().to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.insert("x-forwarded-host", host);
    }
}

/// Removes any `Set-Cookie` for the gateway's own cookie from a space's response: a web
/// app in one space could otherwise plant a token cookie for the whole domain, which the
/// browser would then send to every other space.
fn drop_gateway_cookies(headers: &mut http::HeaderMap) {
    let prefix = format!("{TOKEN_COOKIE}=");
    let kept: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|v| {
            !v.to_str()
                .is_ok_and(|v| v.trim_start().starts_with(&prefix))
        })
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    for v in kept {
        headers.append(header::SET_COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_space_cannot_set_the_gateways_cookie() {
        let mut headers = http::HeaderMap::new();
        headers.append(
            header::SET_COOKIE,
            HeaderValue::from_static("app=1; Path=/"),
        );
        let planted = format!("{TOKEN_COOKIE}=planted; Domain=gateway.localhost");
        headers.append(header::SET_COOKIE, HeaderValue::from_str(&planted).unwrap());
        drop_gateway_cookies(&mut headers);
        let left: Vec<_> = headers.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(left, ["app=1; Path=/"]);
    }
}
