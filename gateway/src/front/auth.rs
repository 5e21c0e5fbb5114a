//! Finding and checking the user token on a request.

use http::{header, Request};

use crate::auth::{Grant, TokenError, UserClaims, Verifier};
use crate::registry::SpaceKey;

/// The cookie that carries a user token in browsers.
pub const TOKEN_COOKIE: &str = "space_gateway_token";

/// The query parameter that carries a user token on a websocket upgrade.
pub const TOKEN_PARAM: &str = "access_token";

/// The outcome of checking a request's token for one space and service.
#[derive(Debug)]
pub enum Access {
    /// Allowed.
    Granted(UserClaims),
    /// No token at all (401).
    Missing,
    /// A token that is not valid (401).
    Invalid(TokenError),
    /// A valid token without access to this space or service (403).
    Forbidden(UserClaims),
}

/// Checks the request's token for `service` in `space`.
pub fn check<B>(req: &Request<B>, verifier: &Verifier, space: &SpaceKey, service: Grant) -> Access {
    let Some(token) = token(req) else {
        return Access::Missing;
    };
    match verifier.user(&token) {
        Err(e) => Access::Invalid(e),
        Ok(claims) if claims.allows(space, service) => Access::Granted(claims),
        Ok(claims) => Access::Forbidden(claims),
    }
}

/// The token from `Authorization: Bearer`, else `?access_token=`, else the cookie.
pub fn token<B>(req: &Request<B>) -> Option<String> {
    bearer(req)
        .or_else(|| query_token(req))
        .or_else(|| cookie_token(req))
}

fn bearer<B>(req: &Request<B>) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// The token in `?access_token=`, if any (the first, should there be several).
pub fn query_token<B>(req: &Request<B>) -> Option<String> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        // JWTs are base64url and dots: nothing in them needs percent-decoding.
        (k == TOKEN_PARAM).then(|| v.to_owned())
    })
}

fn cookie_token<B>(req: &Request<B>) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            v.split(';').find_map(|c| {
                let (k, v) = c.trim().split_once('=')?;
                (k == TOKEN_COOKIE).then(|| v.to_owned())
            })
        })
}

/// Removes the gateway's credentials from a request before it goes to a space, so that
/// a space's web app never sees the user's gateway token.
pub fn strip_credentials<B>(req: &mut Request<B>) {
    if bearer(req).is_some() {
        req.headers_mut().remove(header::AUTHORIZATION);
    }
    strip_query_token(req);
    strip_cookie(req);
}

fn strip_query_token<B>(req: &mut Request<B>) {
    let Some(query) = req.uri().query() else {
        return;
    };
    if !has_token_param(query) {
        return;
    }
    let path = req.uri().path();
    let pq = match query_without_token(query) {
        Some(kept) => format!("{path}?{kept}"),
        None => path.to_owned(),
    };
    if let Ok(uri) = pq.parse() {
        *req.uri_mut() = uri;
    }
}

/// `query` without its `access_token=` parameters, in the same order; `None` when
/// nothing else is left.
pub fn query_without_token(query: &str) -> Option<String> {
    let kept: Vec<&str> = query.split('&').filter(|p| !is_token_param(p)).collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

fn has_token_param(query: &str) -> bool {
    query.split('&').any(is_token_param)
}

fn is_token_param(pair: &str) -> bool {
    pair.strip_prefix(TOKEN_PARAM)
        .is_some_and(|rest| rest.starts_with('='))
}

fn strip_cookie<B>(req: &mut Request<B>) {
    let values: Vec<String> = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .map(str::trim)
                .filter(|c| !c.starts_with(&format!("{TOKEN_COOKIE}=")))
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|v| !v.is_empty())
        .collect();
    req.headers_mut().remove(header::COOKIE);
    for v in values {
        if let Ok(v) = header::HeaderValue::from_str(&v) {
            req.headers_mut().append(header::COOKIE, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_sources_in_order_and_stripping() {
        let mut req = Request::builder()
            .uri("/a?x=1&access_token=QQ&y=2")
            .header(header::COOKIE, format!("a=b; {TOKEN_COOKIE}=CC"))
            .body(())
            .unwrap();
        assert_eq!(token(&req).as_deref(), Some("QQ"));
        strip_credentials(&mut req);
        assert_eq!(req.uri().to_string(), "/a?x=1&y=2");
        assert_eq!(req.headers()[header::COOKIE], "a=b");
        assert_eq!(token(&req), None);

        let req = Request::builder()
            .header(header::AUTHORIZATION, "Bearer BB")
            .body(())
            .unwrap();
        assert_eq!(token(&req).as_deref(), Some("BB"));
    }

    #[test]
    fn query_without_the_token_keeps_the_rest_in_order() {
        assert_eq!(
            query_without_token("x=1&access_token=T&y=2").as_deref(),
            Some("x=1&y=2")
        );
        assert_eq!(query_without_token("access_token=T"), None);
        assert_eq!(
            query_without_token("access_token_x=1&access_token=T&access_token=U").as_deref(),
            Some("access_token_x=1")
        );
    }
}
