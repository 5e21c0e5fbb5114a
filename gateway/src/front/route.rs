//! Where a request goes, from its host and path alone.
//!
//! | request                              | route           |
//! |--------------------------------------|-----------------|
//! | host `USER--SPACE--PORT.DOMAIN`      | [`Route::Port`] |
//! | host `USER--SPACE--vnc.DOMAIN`       | [`Route::Vnc`]  |
//! | host `DOMAIN`, path `/ssh/USER/SPACE` | [`Route::Ssh`] |
//! | host `DOMAIN`, path `/tcp/USER/SPACE/PORT` | [`Route::Tcp`] |

use crate::registry::SpaceKey;

/// A parsed destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// An HTTP (or HTTPS) port of a space, by subdomain.
    Port {
        /// The space.
        space: SpaceKey,
        /// The port in the space.
        port: u16,
    },
    /// The space's VNC web service, by subdomain.
    Vnc {
        /// The space.
        space: SpaceKey,
    },
    /// The SSH websocket.
    Ssh {
        /// The space.
        space: SpaceKey,
    },
    /// Any TCP port through a websocket.
    Tcp {
        /// The space.
        space: SpaceKey,
        /// The port in the space.
        port: u16,
    },
}

/// Why a request has no route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The host is not the domain and not a space's subdomain.
    #[error("unknown host {0:?}: expected USER--SPACE--PORT.{1}, USER--SPACE--vnc.{1} or {1}")]
    UnknownHost(String, String),
    /// The host is the domain but the path is not a route.
    #[error("no route for path {0:?}: expected /ssh/USER/SPACE or /tcp/USER/SPACE/PORT")]
    UnknownPath(String),
    /// The request carries no host at all.
    #[error("the request has no Host header")]
    NoHost,
}

/// Maps a request's host (with or without a port) and path to a route.
pub fn route(host: Option<&str>, path: &str, domain: &str) -> Result<Route, RouteError> {
    let host = host.ok_or(RouteError::NoHost)?;
    let name = strip_port(host).trim_end_matches('.').to_ascii_lowercase();
    if name.eq_ignore_ascii_case(domain) {
        return path_route(path);
    }
    let unknown = || RouteError::UnknownHost(host.to_owned(), domain.to_owned());
    let label = name
        .strip_suffix(domain)
        .and_then(|rest| rest.strip_suffix('.'))
        .filter(|label| !label.contains('.'))
        .ok_or_else(unknown)?;
    let mut parts = label.split("--");
    let (Some(user), Some(space), Some(target), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(unknown());
    };
    let space = space_key(user, space).ok_or_else(unknown)?;
    if target == "vnc" {
        return Ok(Route::Vnc { space });
    }
    let port = parse_port(target).ok_or_else(unknown)?;
    Ok(Route::Port { space, port })
}

fn path_route(path: &str) -> Result<Route, RouteError> {
    let unknown = || RouteError::UnknownPath(path.to_owned());
    let path = path.split('?').next().unwrap_or_default();
    let segments: Vec<&str> = path
        .trim_start_matches('/')
        .trim_end_matches('/')
        .split('/')
        .collect();
    match segments.as_slice() {
        ["ssh", user, space] => Ok(Route::Ssh {
            space: space_key(user, space).ok_or_else(unknown)?,
        }),
        ["tcp", user, space, port] => Ok(Route::Tcp {
            space: space_key(user, space).ok_or_else(unknown)?,
            port: parse_port(port).ok_or_else(unknown)?,
        }),
        _ => Err(unknown()),
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split(']').next().map(|h| &h[1..]).unwrap_or(host);
    }
    host.rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h)
}

/// A port number 1 to 65535, digits only (no sign, no leading zero).
fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || text.starts_with('0') || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// User and space names: lower-case letters, digits, `-` and `_`, not starting or
/// ending with `-` (so that `--` can only be the separator), at most 63 bytes (one
/// DNS label).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The space named by `user` and `space`, lower-cased, if both are valid names.
pub fn space_key(user: &str, space: &str) -> Option<SpaceKey> {
    let user = user.to_ascii_lowercase();
    let space = space.to_ascii_lowercase();
    (valid_name(&user) && valid_name(&space)).then_some(SpaceKey { user, space })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(u: &str, s: &str) -> SpaceKey {
        SpaceKey {
            user: u.into(),
            space: s.into(),
        }
    }

    #[test]
    fn subdomain_routes() {
        let d = "example.dev";
        assert_eq!(
            route(Some("alice--web--8080.example.dev"), "/", d),
            Ok(Route::Port {
                space: key("alice", "web"),
                port: 8080
            })
        );
        assert_eq!(
            route(Some("Alice--Web--VNC.example.dev:443"), "/x", d),
            Ok(Route::Vnc {
                space: key("alice", "web")
            })
        );
    }

    #[test]
    fn path_routes() {
        let d = "example.dev";
        assert_eq!(
            route(Some("example.dev:8443"), "/ssh/alice/web", d),
            Ok(Route::Ssh {
                space: key("alice", "web")
            })
        );
        assert_eq!(
            route(Some("example.dev"), "/tcp/alice/web/5432?access_token=x", d),
            Ok(Route::Tcp {
                space: key("alice", "web"),
                port: 5432
            })
        );
        assert!(matches!(
            route(Some("example.dev"), "/", d),
            Err(RouteError::UnknownPath(_))
        ));
        assert!(matches!(
            route(Some("example.dev"), "/tcp/alice/web/0", d),
            Err(RouteError::UnknownPath(_))
        ));
    }

    #[test]
    fn malformed_hosts_are_unknown() {
        let d = "example.dev";
        for host in [
            "other.dev",
            "a--b.example.dev",
            "a--b--c--d.example.dev",
            "a--b--99999.example.dev",
            "a--b--080.example.dev",
            "x.a--b--80.example.dev",
            "a---b--80.example.dev",
            "--b--80.example.dev",
            "evil-example.dev",
            "a--b--80.evilexample.dev",
        ] {
            assert!(
                matches!(route(Some(host), "/", d), Err(RouteError::UnknownHost(..))),
                "{host}"
            );
        }
        assert_eq!(route(None, "/", d), Err(RouteError::NoHost));
    }
}
