//! The admin listener: `/metrics`, `/healthz`, `/readyz`, and a small JSON API behind
//! an admin token (audience `admin`) to list spaces, show one, and disconnect one.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tracing::{debug, info};

use crate::auth::Verifier;
use crate::front::route::space_key;
use crate::front::Body;
use crate::metrics::Metrics;
use crate::registry::{Entry, Registry, SpaceKey};

/// What the admin handlers need.
#[derive(Debug)]
pub struct Admin {
    /// The live spaces.
    pub registry: Arc<Registry>,
    /// Checks admin tokens.
    pub verifier: Verifier,
    /// What `/metrics` shows.
    pub metrics: Arc<Metrics>,
    /// Set when the gateway has begun to shut down: `/readyz` then fails, so that a
    /// load balancer stops sending new agents and users here.
    pub draining: AtomicBool,
}

/// Serves the admin listener until the task is dropped.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    loop {
        let (tcp, addr) = crate::front::accept(&listener, "admin").await;
        let admin = admin.clone();
        let service = service_fn(move |req| {
            let admin = admin.clone();
            async move { Ok::<_, Infallible>(handle(req, addr, &admin)) }
        });
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service);
            if let Err(e) = conn.await {
                debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

fn handle(req: Request<Incoming>, client: SocketAddr, admin: &Admin) -> Response<Body> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/metrics") => {
            // Prometheus text exposition, version 0.0.4, as the client library writes it.
            respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                admin.metrics.encode(),
            )
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
        (&Method::GET, "/readyz") if admin.draining.load(Ordering::Relaxed) => {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining")
        }
        (&Method::GET, "/readyz") => text(StatusCode::OK, "ready"),
        (_, p) if p == "/api" || p.starts_with("/api/") => match authorize(&req, admin) {
            Ok(operator) => api(req.method(), p, &operator, client, admin),
            Err(resp) => resp,
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "no such path: try /metrics, /healthz, /readyz or /api/spaces",
        ),
    }
}

fn authorize(req: &Request<Incoming>, admin: &Admin) -> Result<String, Response<Body>> {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            json_error(
                StatusCode::UNAUTHORIZED,
                "an admin token is required: Authorization: Bearer TOKEN",
            )
        })?;
    match admin.verifier.admin(token.trim()) {
        Ok(claims) => Ok(claims.sub),
        Err(e) => Err(json_error(
            StatusCode::UNAUTHORIZED,
            &format!("admin token refused: {e}"),
        )),
    }
}

fn api(
    method: &Method,
    path: &str,
    operator: &str,
    client: SocketAddr,
    admin: &Admin,
) -> Response<Body> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::GET, ["api", "spaces"]) => {
            let mut spaces: Vec<Value> = admin
                .registry
                .snapshot()
                .iter()
                .map(|(k, e)| describe(k, e))
                .collect();
            spaces.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
            json_response(StatusCode::OK, json!({ "spaces": spaces }))
        }
        (&Method::GET, ["api", "spaces", user, space]) => match lookup(admin, user, space) {
            Some((key, entry)) => json_response(StatusCode::OK, describe(&key, &entry)),
            None => json_error(
                StatusCode::NOT_FOUND,
                &format!("space {user}--{space} is not connected"),
            ),
        },
        (&Method::DELETE, ["api", "spaces", user, space]) => {
            match lookup(admin, user, space) {
                Some((key, entry)) => {
                    info!(
                        space = %key, session = %entry.session, %operator, admin.addr = %client,
                        "space disconnected by an operator"
                    );
                    let reason = "disconnected by an operator".to_owned();
                    let _ = entry.control.try_send(Box::new(
                        agent_link::proto::ControlMessage::GoAway { reason },
                    ));
                    entry.link.close("disconnected by an operator");
                    admin.registry.remove(&key, entry.session);
                    json_response(StatusCode::OK, json!({ "disconnected": key.to_string() }))
                }
                None => json_error(
                    StatusCode::NOT_FOUND,
                    &format!("space {user}--{space} is not connected"),
                ),
            }
        }
        _ => json_error(
            StatusCode::NOT_FOUND,
            "no such API call: GET /api/spaces, GET or DELETE /api/spaces/USER/SPACE",
        ),
    }
}

fn lookup(admin: &Admin, user: &str, space: &str) -> Option<(SpaceKey, Arc<Entry>)> {
    let key = space_key(user, space)?;
    admin.registry.get(&key).map(|e| (key, e))
}

fn describe(key: &SpaceKey, entry: &Entry) -> Value {
    let services: Vec<Value> = entry
        .services
        .read()
        .expect("services lock poisoned")
        .iter()
        .map(|s| {
            json!({ "name": s.name, "port": s.port, "kind": s.kind.as_str(), "public": s.public })
        })
        .collect();
    let rtt_micros = entry.rtt_micros.load(Ordering::Relaxed);
    json!({
        "name": key.to_string(),
        "user": key.user,
        "space": key.space,
        "space_id": entry.space_id,
        "session": entry.session.0,
        "transport": entry.link.kind().as_str(),
        "agent_addr": entry.link.remote_addr().to_string(),
        "rtt_ms": (rtt_micros > 0).then(|| rtt_micros as f64 / 1000.0),
        "open_streams": entry.open_streams.load(Ordering::Relaxed),
        "services": services,
        "connected_since": entry.since.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    })
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-store")
        .body(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("a static status and headers make a valid response")
}

fn text(status: StatusCode, message: &str) -> Response<Body> {
    respond(status, "text/plain; charset=utf-8", format!("{message}\n"))
}

fn json_response(status: StatusCode, value: Value) -> Response<Body> {
    respond(status, "application/json", format!("{value:#}\n"))
}

fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, json!({ "error": message }))
}
