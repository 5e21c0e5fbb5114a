//! Browser login: a link that carries a user token becomes a cookie for that one space
//! host and a redirect to the same page without the token.
//!
//! A browser cannot add `Authorization: Bearer` to a navigation, and a token left in the
//! address bar ends up in history, bookmarks, screenshots and shared links. So a GET to
//! a space host (`USER--SPACE--PORT.DOMAIN`, `USER--SPACE--vnc.DOMAIN`) with
//! `?access_token=TOKEN` is answered by the gateway itself: the token is checked like on
//! any request (401, 403), then `303 See Other` sends the browser to the same path and
//! query without the token, and `Set-Cookie` leaves the token in the
//! [`TOKEN_COOKIE`] cookie, which [`super::auth::token`] reads on every later request
//! (and [`super::auth::strip_credentials`] removes before the space sees it).

use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use tracing::info;

use super::auth::{self, TOKEN_COOKIE};
use super::reply::{self, Body};
use super::Front;
use crate::auth::{now, Grant};
use crate::registry::SpaceKey;

/// Whether `req` is a login: a GET (or HEAD) with `?access_token=`, without
/// `Authorization` and not asking for an upgrade.
///
/// Websocket clients cannot follow redirects, so an upgrade with `?access_token=` is
/// authorized by the query token as before. A request with `Authorization` comes from
/// a program that sends its token every time and has no use for a cookie. Other
/// methods are forwarded as before: a 303 would turn them into a GET without a body.
pub(super) fn is_login<B>(req: &Request<B>) -> bool {
    (req.method() == Method::GET || req.method() == Method::HEAD)
        && !req.headers().contains_key(header::UPGRADE)
        && !req.headers().contains_key(header::AUTHORIZATION)
        && auth::query_token(req).is_some()
}

/// Answers a login for `grant` in `space`: the refusal that any request with this token
/// would get, or the redirect that sets the cookie.
pub(super) fn login(
    req: &Request<Incoming>,
    tls: bool,
    front: &Front,
    space: &SpaceKey,
    grant: Grant,
) -> Response<Body> {
    // `authorize` writes and logs the refusals; without `Authorization` it checks
    // exactly the query token (see `is_login`).
    if let Err(resp) = super::authorize(req, front, space, grant) {
        return resp;
    }
    let Some(token) = auth::query_token(req) else {
        return reply::unauthorized("the login link has no access_token");
    };
    // Verified again only to read its expiry; it may just have expired in between.
    let claims = match front.verifier.user(&token) {
        Ok(claims) => claims,
        Err(e) => return reply::unauthorized(e.to_string()),
    };
    let secure = tls || forwarded_https(req);
    let max_age = claims.exp.saturating_sub(now());
    let (Ok(location), Ok(cookie)) = (
        HeaderValue::from_str(&location(req.uri())),
        HeaderValue::from_str(&cookie(&token, max_age, secure)),
    ) else {
        return reply::text(
            StatusCode::BAD_REQUEST,
            "the login link's address or token cannot be put in a header",
        );
    };
    info!(%space, user = %claims.sub, service = grant.as_str(), "browser login");
    redirect(location, cookie)
}

/// `303 See Other` to `location`, setting `cookie`.
fn redirect(location: HeaderValue, cookie: HeaderValue) -> Response<Body> {
    let mut resp = reply::text(StatusCode::SEE_OTHER, "signed in; continue to the page");
    let headers = resp.headers_mut();
    headers.insert(header::LOCATION, location);
    headers.insert(header::SET_COOKIE, cookie);
    // `reply::text` already says `Cache-Control: no-store`: a cached copy of this
    // response would replay the token. No `Referer` leaves with the token in it either.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// The same path and query without `access_token`, relative to the same host.
fn location(uri: &Uri) -> String {
    let path = uri.path();
    // Browsers read `//other` and `/\other` as another host (a network-path
    // reference): that would be an open redirect. `/.` keeps the same path on this host.
    let path = if path.starts_with("//") || path.starts_with("/\\") {
        format!("/.{path}")
    } else {
        path.to_owned()
    };
    match uri.query().and_then(auth::query_without_token) {
        Some(query) => format!("{path}?{query}"),
        None => path,
    }
}

/// The `Set-Cookie` value that keeps `token` for `max_age` seconds.
///
/// - No `Domain`: the cookie is host-only, sent back to this one space host and never
///   to another space's host, whose web app the user may not trust; a token that
///   grants many spaces is not sprayed over all of them. It also keeps one cookie per
///   host, so a login to one space does not replace the cookie of another.
/// - `SameSite=Lax`: the login link is followed from the control plane, another site.
///   With `Strict` the browser would withhold the cookie on the navigation that this
///   redirect continues, and the page would answer 401. `Lax` sends it on top-level
///   navigations and still withholds it from other sites' subrequests and POSTs.
/// - `HttpOnly`: the space's own pages cannot read the token from script.
/// - `Max-Age`: the cookie goes when the token expires, never outliving it.
/// - `Secure` when the browser's connection is TLS, so the token never travels in clear.
fn cookie(token: &str, max_age: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{TOKEN_COOKIE}={token}; Path=/; Max-Age={max_age}; HttpOnly{secure}; SameSite=Lax")
}

/// Whether a load balancer in front of the plain listener says the browser's connection
/// is TLS. A client that forges it only makes its own cookie stricter.
fn forwarded_https<B>(req: &Request<B>) -> bool {
    req.headers()
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn only_plain_gets_with_a_query_token_are_logins() {
        assert!(is_login(&req(Method::GET, "/?access_token=T", &[])));
        assert!(is_login(&req(Method::HEAD, "/a?x=1&access_token=T", &[])));
        assert!(!is_login(&req(Method::GET, "/?x=1", &[])));
        assert!(!is_login(&req(Method::POST, "/?access_token=T", &[])));
        let upgrade = [("connection", "Upgrade"), ("upgrade", "websocket")];
        assert!(!is_login(&req(Method::GET, "/?access_token=T", &upgrade)));
        let bearer = [("authorization", "Bearer T")];
        assert!(!is_login(&req(Method::GET, "/?access_token=T", &bearer)));
    }

    #[test]
    fn location_drops_the_token_and_stays_on_this_host() {
        let loc = |s: &str| location(&s.parse().unwrap());
        assert_eq!(loc("/?access_token=T"), "/");
        assert_eq!(loc("/a/b?x=1&access_token=T&y=2"), "/a/b?x=1&y=2");
        assert_eq!(loc("//evil.example/x?access_token=T"), "/.//evil.example/x");
        assert_eq!(
            loc("https://h.example/p?access_token=T&z=3"),
            "/p?z=3",
            "absolute-form requests redirect by path too"
        );
    }

    #[test]
    fn cookie_is_host_only_http_only_and_lax() {
        assert_eq!(
            cookie("T", 60, true),
            "space_gateway_token=T; Path=/; Max-Age=60; HttpOnly; Secure; SameSite=Lax"
        );
        assert!(!cookie("T", 60, false).contains("Secure"));
        assert!(!cookie("T", 60, true).contains("Domain"));
    }
}
