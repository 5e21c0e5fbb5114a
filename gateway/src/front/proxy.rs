//! HTTP over a stream to a space: one upstream HTTP/1.1 connection per request, with
//! protocol upgrades (the VNC page's websocket) joined byte for byte.

use agent_link::proto::ClientAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::{debug, Instrument};

use super::auth::{strip_credentials, TOKEN_COOKIE};
use super::reply::{self, Body};
use crate::idle::{until_idle, Activity, Idle, Watched};
use crate::metrics::Metrics;
use crate::open::{Counted, Opened};

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
    let Opened { stream, guard, .. } = opened;
    let guard = Arc::new(guard);
    let stream = Counted::new(stream, metrics.from_space.clone(), metrics.to_space.clone());
    // A space's service that stops answering mid-request (or never starts) is cut after
    // the idle limit like any relayed connection, so it cannot hold a stream forever.
    let activity = Activity::new();
    let stream = Watched::new(stream, activity.clone());
    // 1. Take the client's upgrade future before the request is moved upstream; it
    //    resolves once our 101 response has been written to the client.
    let client_upgrade = is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
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
    tokio::spawn(
        async move {
            match until_idle(conn.with_upgrades(), &activity, idle).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(error = %e, "upstream connection failed"),
                Err(Idle(limit)) => debug!(?limit, "upstream connection closed: idle"),
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
                    join_upgraded(client_upgrade, upstream, idle).await;
                    drop(guard);
                }
                .in_current_span(),
            );
        }
    }
    drop_gateway_cookies(resp.headers_mut());
    resp.map(|body| body.boxed())
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(header::UPGRADE)
}

async fn join_upgraded(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    idle: Option<Duration>,
) {
    let (client, upstream) = match tokio::join!(client, upstream) {
        (Ok(c), Ok(u)) => (c, u),
        (Err(e), _) | (_, Err(e)) => return debug!(error = %e, "upgrade failed"),
    };
    let activity = Activity::new();
    let mut client = Watched::new(TokioIo::new(client), activity.clone());
    let mut upstream = TokioIo::new(upstream);
    let relay = agent_link::io::relay(&mut client, &mut upstream);
    match until_idle(relay, &activity, idle).await {
        Ok(Ok((up, down))) => debug!(bytes_up = up, bytes_down = down, "upgraded connection done"),
        Ok(Err(e)) => debug!(error = %e, "upgraded connection aborted"),
        Err(Idle(limit)) => debug!(?limit, "upgraded connection closed: idle"),
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
