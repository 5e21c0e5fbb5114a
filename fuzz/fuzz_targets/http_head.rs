//! The front door's routing path from raw bytes: an HTTP/1.1 request head parsed with
//! `httparse` (what hyper parses heads with), its target parsed as an `http::Uri` (what
//! hyper builds the request's URI with), then the host and path chosen the way
//! `gateway::front` chooses them, through `route`.
//!
//! Not reached: the token lookup (`Authorization`, `?access_token=`, cookie) lives in
//! the private module `gateway::front::auth`; see docs/fuzzing.md.

#![no_main]

use gateway::front::route::route;
use http::{HeaderValue, Uri};
use libfuzzer_sys::fuzz_target;

const DOMAIN: &str = "gateway.localhost";

/// hyper's default limit on the number of headers in a request head.
const MAX_HEADERS: usize = 100;

fuzz_target!(|data: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(data) else {
        return;
    };
    let Some(Ok(uri)) = req.path.map(Uri::try_from) else {
        return;
    };

    // The `Host` header when it is visible ASCII, else the host of an absolute target,
    // exactly as `front::handle` picks it.
    let host_header = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .and_then(|h| HeaderValue::from_bytes(h.value).ok());
    let host = host_header
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .or(uri.host());
    let _ = route(host, uri.path(), DOMAIN);
});
