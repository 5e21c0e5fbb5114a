//! The responses the gateway itself writes: errors a person can read.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

use agent_link::proto::RefuseReason;

use crate::open::OpenError;

/// Every response body the front door returns.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// A plain-text response with `status` and a one-line explanation.
pub fn text(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut body = message.into();
    body.push('\n');
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .body(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("a static status and headers make a valid response")
}

/// 503 with `Retry-After`: the space has no link right now.
pub fn not_connected(space: &crate::registry::SpaceKey) -> Response<Body> {
    let mut resp = text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "space {space} is not connected to the gateway; \
             start it or wait for its agent to reconnect"
        ),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
    resp
}

/// The answer for a stream that could not be opened: 404 when the space does not
/// offer the port (its agent knows better than our copy of its services), 504 when the
/// agent did not answer, 503 at the link's stream limit, 502 otherwise.
pub fn open_failed(err: &OpenError) -> Response<Body> {
    if let OpenError::TooManyStreams(_) | OpenError::PublicBusy(_) = err {
        let mut resp = text(StatusCode::SERVICE_UNAVAILABLE, err.to_string());
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return resp;
    }
    let status = match err {
        OpenError::Refused {
            reason: RefuseReason::PortNotOffered,
            ..
        } => StatusCode::NOT_FOUND,
        OpenError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    text(status, err.to_string())
}

/// 503 for a connection past `public.max_connections`, closing the connection.
pub fn over_connection_limit(max: usize) -> Response<Body> {
    let mut resp = text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the gateway is serving its limit of {max} connections; retry shortly"),
    );
    let headers = resp.headers_mut();
    headers.insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    resp
}

/// 401 with a `WWW-Authenticate` challenge (RFC 6750 section 3).
pub fn unauthorized(message: impl Into<String>) -> Response<Body> {
    let mut resp = text(StatusCode::UNAUTHORIZED, message);
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"space gateway\""),
    );
    resp
}
